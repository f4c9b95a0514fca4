//! `recvmmsg` / `sendmmsg`: up to [`BATCH`] datagrams per system call, GSO groups as one
//! message each.

#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};

use socket2::Socket;

use crate::sys::{self, Control, RECV_CONTROL, SendScratch};
use crate::{Io, RecvBatch, SendBatch, SendOutcome, units};

/// Messages per system call.
const BATCH: usize = 64;

pub(crate) struct Mmsg {
    socket: Socket,
    // Scratch arrays, reused by every call; their pointers are rebuilt each time.
    names: Vec<libc::sockaddr_storage>,
    recv_controls: Vec<Control<RECV_CONTROL>>,
    iovs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    send: SendScratch,
}

// SAFETY: the raw pointers in the scratch arrays only point into this struct or into the
// batches of the current call, and are rewritten before each use; nothing is shared between
// threads.
unsafe impl Send for Mmsg {}

impl Mmsg {
    pub(crate) fn new(socket: Socket) -> io::Result<Self> {
        Ok(Self {
            socket,
            names: vec![sys::sockaddr_storage(); BATCH],
            recv_controls: vec![Control::default(); BATCH],
            iovs: Vec::with_capacity(BATCH),
            headers: Vec::with_capacity(BATCH),
            send: SendScratch::new(BATCH),
        })
    }

    /// Sends `headers[..]` (prepared) with as many `sendmmsg` calls as it takes.
    fn flush(&mut self, out: &mut SendOutcome) {
        let fd = self.socket.as_raw_fd();
        let mut at = 0;
        while at < self.headers.len() {
            let n = self.headers.len() - at;
            out.calls += 1;
            // SAFETY: `headers[at..]` are `n` initialised mmsghdrs whose names, iovecs and
            // controls point into `self.send` and the caller's send batch, all alive and
            // unmoved for the call.
            let rc = unsafe { libc::sendmmsg(fd, self.headers[at..].as_mut_ptr(), n as u32, 0) };
            if rc > 0 {
                let sent = rc as usize;
                out.sent += self.send.counts[at..at + sent]
                    .iter()
                    .map(|c| c.0)
                    .sum::<usize>();
                at += sent;
                continue;
            }
            let e = if rc == 0 {
                io::Error::from(io::ErrorKind::WriteZero)
            } else {
                io::Error::last_os_error()
            };
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if e.kind() == io::ErrorKind::WouldBlock {
                out.drop(self.send.datagrams_from(at), &e, false);
                break;
            }
            // The first message failed (an unreachable destination, EIO from GSO): drop
            // it and go on with the next.
            let (count, segmented) = self.send.counts[at];
            out.drop(count, &e, segmented);
            at += 1;
        }
        self.headers.clear();
        self.send.clear();
    }

    fn patch_iovs(&mut self) {
        self.send
            .patch(self.headers.iter_mut().map(|h| &mut h.msg_hdr));
    }
}

impl Io for Mmsg {
    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        let mut total = 0;
        while !batch.is_full() {
            let n = (batch.capacity() - batch.len()).min(BATCH);
            let slot_len = batch.slot_size();
            self.iovs.clear();
            self.iovs.extend(batch.free_slots().take(n).map(sys::iovec));
            self.headers.clear();
            for k in 0..n {
                let msg = sys::msghdr(
                    &mut self.names[k],
                    size_of::<libc::sockaddr_storage>() as u32,
                    &mut self.iovs[k],
                    self.recv_controls[k].0.as_mut_ptr(),
                    RECV_CONTROL,
                );
                self.headers.push(libc::mmsghdr {
                    msg_hdr: msg,
                    msg_len: 0,
                });
            }
            // SAFETY: `headers` holds `n` mmsghdrs whose names, iovecs and controls point
            // into `self` and into the batch's free slots, alive and exclusively borrowed for
            // the call; the null timeout means no timeout (the socket is non-blocking).
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    n as u32,
                    0,
                    std::ptr::null_mut(),
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                self.headers.clear();
                self.iovs.clear();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(total),
                    _ if total > 0 => Ok(total),
                    _ => Err(e),
                };
            }
            let got = rc as usize;
            let mut pushed = 0;
            for k in 0..got {
                let h = &self.headers[k];
                let control_len = sys::control_len(&h.msg_hdr, RECV_CONTROL);
                let meta = sys::recv_meta(
                    sys::name_bytes(&self.names[k], h.msg_hdr.msg_namelen),
                    &self.recv_controls[k].0[..control_len],
                    h.msg_hdr.msg_flags,
                    h.msg_len as usize,
                    slot_len,
                );
                // A source that is not an IP address is skipped; the slots after it move
                // up so the batch has no holes.
                if let Some(meta) = meta {
                    batch.push_from(k - pushed, meta);
                    pushed += 1;
                }
            }
            self.headers.clear();
            self.iovs.clear();
            total += pushed;
            if got < n {
                break;
            }
        }
        Ok(total)
    }

    fn send(&mut self, batch: &SendBatch, gso: bool, out: &mut SendOutcome) {
        for unit in units(batch, gso) {
            let msg_hdr = self.send.prepare(&unit);
            self.headers.push(libc::mmsghdr {
                msg_hdr,
                msg_len: 0,
            });
            if self.headers.len() == BATCH {
                self.patch_iovs();
                self.flush(out);
            }
        }
        if !self.headers.is_empty() {
            self.patch_iovs();
            self.flush(out);
        }
    }

    fn ready_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}
