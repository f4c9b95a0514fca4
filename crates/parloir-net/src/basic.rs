//! One `recvmsg` / `sendmsg` per datagram: works on any Linux, and is the baseline the
//! batched backends are measured against.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use socket2::Socket;

use crate::sys::{self, Control, RECV_CONTROL};
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
            let mut name = sys::sockaddr_storage();
            let mut control = Control::<RECV_CONTROL>::default();
            let slot = batch.free_slot();
            let slot_len = slot.len();
            let mut iov = sys::iovec(slot);
            let mut msg = sys::msghdr(
                &mut name,
                std::mem::size_of::<libc::sockaddr_storage>() as u32,
                &mut iov,
                control.0.as_mut_ptr(),
                RECV_CONTROL,
            );
            // SAFETY: every pointer in `msg` refers to a local or to the batch's free slot,
            // all alive and exclusively borrowed for the call, with their lengths.
            let rc = unsafe { libc::recvmsg(fd, &mut msg, 0) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(n),
                    _ if n > 0 => Ok(n),
                    _ => Err(e),
                };
            }
            let control_len = sys::control_len(&msg, RECV_CONTROL);
            let Some(meta) = sys::recv_meta(
                sys::name_bytes(&name, msg.msg_namelen),
                &control.0[..control_len],
                msg.msg_flags,
                rc as usize,
                slot_len,
            ) else {
                continue;
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
