//! One `recvmsg` / `sendmsg` per datagram: works on any Linux, and is the baseline the
//! batched backends are measured against.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use socket2::Socket;

use crate::sys;
use crate::{Io, RecvBatch, SendBatch, SendOutcome, units};

pub(crate) struct Basic {
    socket: Socket,
}

impl Basic {
    pub(crate) fn new(socket: Socket) -> Self {
        Self { socket }
    }
}

impl Io for Basic {
    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        let mut n = 0;
        while !batch.is_full() {
            let meta = match sys::recv_one(fd, batch.free_slot(), 0) {
                Ok(Some(meta)) => meta,
                Ok(None) => continue,
                Err(e) => {
                    return match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(n),
                        _ if n > 0 => Ok(n),
                        _ => Err(e),
                    };
                }
            };
            batch.push(meta);
            n += 1;
        }
        Ok(n)
    }

    fn send(&mut self, batch: &SendBatch, _gso: bool, out: &mut SendOutcome) {
        let fd = self.socket.as_raw_fd();
        // No GSO here: every datagram is its own call.
        let mut units = units(batch, false);
        while let Some(unit) = units.next() {
            let mut name = sys::sockaddr_storage();
            let name_len = sys::write_sockaddr(unit.destination, &mut name);
            out.calls += 1;
            // SAFETY: `contents` and `name` are alive for the call, with their lengths.
            let rc = unsafe {
                libc::sendto(
                    fd,
                    unit.contents.as_ptr().cast(),
                    unit.contents.len(),
                    0,
                    (&name as *const libc::sockaddr_storage).cast(),
                    name_len,
                )
            };
            if rc >= 0 {
                out.sent += 1;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                // The socket buffer is full: the rest would fail the same way.
                out.drop(1 + units.by_ref().count(), &e, false);
                return;
            }
            out.drop(1, &e, false);
        }
    }

    fn ready_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}
