//! io_uring: one multishot `recvmsg` armed on the socket, filling buffers from a provided-buffer
//! ring; sends submitted as a batch of `sendmsg` entries (GSO groups with UDP_SEGMENT) and
//! reaped in the same call. Completion is signalled through an eventfd that the media worker's
//! poller watches, so the worker sleeps in one place for the socket, its commands and timers.
//!
//! Each received datagram is copied from its ring buffer into the caller's [`RecvBatch`] and the
//! buffer goes straight back to the ring: all backends share one surface, and the ring never
//! runs dry while the caller works. When it does run dry (a burst larger than the ring between
//! two receives) the kernel ends the multishot request with ENOBUFS and leaves the datagrams in
//! the socket's queue; the next receive re-arms it and nothing is lost.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, RecvMsgOut, Timespec};
use io_uring::{IoUring, cqueue, opcode};
use socket2::Socket;

use crate::sys::{self, RECV_CONTROL, SendScratch};
use crate::{GRO_SLOT, Io, MAX_DATAGRAM, RecvBatch, SendBatch, SendOutcome, units};

/// The buffer group of the receive ring.
const BGID: u16 = 0;
/// user_data of the multishot receive; sends use their message index.
const RECV: u64 = u64::MAX;
/// Send messages per submission.
const BATCH: usize = 64;
/// The name field reserved in each receive buffer: enough for IPv4 and IPv6.
const NAME: usize = size_of::<libc::sockaddr_in6>();
/// The header the kernel writes at the start of each receive buffer.
const HEADER: usize = 16; // struct io_uring_recvmsg_out

pub(crate) struct Uring {
    // Declared first so it is dropped first (after Drop cancelled the receive).
    ring: IoUring,
    bufs: BufRing,
    socket: Socket,
    eventfd: OwnedFd,
    /// The template of the multishot receive: only its name and control lengths matter, but
    /// the kernel reads it when the request is (re)armed.
    recv_msg: Box<libc::msghdr>,
    armed: bool,
    /// Receive completions met while reaping sends, handled by the next `recv`.
    pending: VecDeque<(i32, u32)>,
    /// Times the buffer ring ran dry (ENOBUFS) and the receive was re-armed.
    exhausted: u64,
    msgs: Vec<libc::msghdr>,
    send: SendScratch,
}

// SAFETY: the raw pointers (buffer ring, msghdr templates and send scratch) point only into
// memory this struct owns or into the batch of the current call; the ring is used from one
// thread at a time (the struct is moved, never shared).
unsafe impl Send for Uring {}

impl Uring {
    pub(crate) fn new(socket: Socket, buffers: u16, gro: bool) -> io::Result<Self> {
        let payload = if gro { GRO_SLOT } else { MAX_DATAGRAM };
        // GRO slots are 64 KiB: keep the ring's memory near 4 MiB.
        let buffers = if gro { buffers.min(64) } else { buffers };
        let entries = buffers.clamp(1, 32_768).next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(u32::from(entries) * 2 + 2 * BATCH as u32)
            .build(2 * BATCH as u32)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (name, code) in [
            ("RecvMsg", opcode::RecvMsg::CODE),
            ("SendMsg", opcode::SendMsg::CODE),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("this kernel's io_uring has no {name}"),
                ));
            }
        }
        let bufs = BufRing::new(entries, HEADER + NAME + RECV_CONTROL + payload)?;
        // SAFETY: `bufs.ring` is page-aligned memory of `entries` BufRingEntry, owned by
        // `bufs`, which lives as long as the ring (dropped after it, Drop cancels first).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.ring as u64, entries, BGID, 0)?
        };
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let mut recv_msg = Box::new(sys::msghdr(
            std::ptr::null_mut(),
            NAME as u32,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        ));
        recv_msg.msg_controllen = RECV_CONTROL as _;
        // The buffer comes from the ring: no iovec (the kernel would read a null one).
        recv_msg.msg_iovlen = 0;
        Ok(Self {
            ring,
            bufs,
            socket,
            eventfd,
            recv_msg,
            armed: false,
            pending: VecDeque::with_capacity(usize::from(entries) + 2 * BATCH),
            exhausted: 0,
            msgs: Vec::with_capacity(BATCH),
            send: SendScratch::new(BATCH),
        })
    }

    /// Arms the multishot receive. Done from `recv`, so the thread that receives is the one
    /// the kernel runs the receive's work on.
    fn arm(&mut self) -> io::Result<()> {
        let entry = opcode::RecvMsgMulti::new(Fd(self.socket.as_raw_fd()), &*self.recv_msg, BGID)
            .build()
            .user_data(RECV);
        // SAFETY: the entry points at `self.recv_msg` (boxed, alive as long as the ring) and
        // names the buffer group registered in `new`.
        unsafe { self.push(&entry)? };
        self.armed = true;
        self.submit()
    }

    /// Submits what is queued, retrying when a signal interrupts the call.
    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is full: the entries stay queued and go with
                    // the next submission, after `recv` reaps.
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Pushes one entry, submitting first when the submission queue is full.
    ///
    /// # Safety
    /// Whatever `entry` points at must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: forwarded to the caller.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "the io_uring submission queue stays full",
        ))
    }

    fn drain_eventfd(&self) {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into `count`; the descriptor is non-blocking, so an empty
        // counter returns EAGAIN, which is ignored like any other error here.
        let _ = unsafe {
            libc::read(
                self.eventfd.as_raw_fd(),
                (&mut count as *mut u64).cast(),
                size_of::<u64>(),
            )
        };
    }

    /// Handles one receive completion; returns whether a datagram went into `batch`.
    fn complete(&mut self, res: i32, flags: u32, batch: &mut RecvBatch) -> bool {
        if !cqueue::more(flags) {
            self.armed = false;
        }
        if res < 0 {
            if -res == libc::ENOBUFS {
                self.exhausted += 1;
            }
            return false;
        }
        let Some(bid) = cqueue::buffer_select(flags) else {
            return false;
        };
        let slot_len = batch.slot_size();
        let buffer = self.bufs.buffer(bid, res as usize);
        let mut pushed = false;
        if let Ok(out) = RecvMsgOut::parse(buffer, &self.recv_msg) {
            let payload = out.payload_data();
            let len = payload.len().min(slot_len);
            batch.free_slot()[..len].copy_from_slice(&payload[..len]);
            let received = out.incoming_payload_len() as usize;
            if let Some(mut meta) = sys::recv_meta(
                out.name_data(),
                out.control_data(),
                out.flags() as i32,
                received,
                slot_len,
            ) {
                meta.truncated |= out.is_payload_truncated();
                // What was copied: the ring's buffer may hold less than a larger slot.
                meta.len = len;
                batch.push(meta);
                pushed = true;
            }
        }
        self.bufs.recycle(bid);
        pushed
    }

    fn flush(&mut self, out: &mut SendOutcome) {
        let n = self.msgs.len();
        if n == 0 {
            return;
        }
        self.send.patch(self.msgs.iter_mut());
        let fd = Fd(self.socket.as_raw_fd());
        for k in 0..n {
            let entry = opcode::SendMsg::new(fd, &self.msgs[k])
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
                .user_data(k as u64);
            // SAFETY: `msgs[k]` and the name, iovec, control and batch bytes it points at stay
            // alive and unmoved until this function has reaped all `n` completions below.
            if let Err(e) = unsafe { self.push(&entry) } {
                out.drop(self.send.datagrams_from(k), &e, false);
                self.reap_sends(k, out);
                return;
            }
        }
        out.calls += 1;
        self.reap_sends(n, out);
    }

    /// Submits and waits until `n` send completions are reaped; receive completions met on
    /// the way are kept for `recv`.
    fn reap_sends(&mut self, n: usize, out: &mut SendOutcome) {
        let mut reaped = 0;
        let mut accounted = 0;
        while reaped < n {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                // Interrupted, or the completion queue is full: reap, then wait again.
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::Interrupted)
                        || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    // The ring itself failed. The messages must outlive the kernel's use of
                    // them: cancel everything and wait for that, then count what never
                    // completed as dropped.
                    let _ = self.ring.submitter().register_sync_cancel(
                        Some(Timespec::new().sec(1)),
                        CancelBuilder::any().all(),
                    );
                    self.armed = false;
                    let total = self.send.datagrams_from(0);
                    out.drop(total.saturating_sub(accounted), &e, false);
                    break;
                }
            }
            for cqe in self.ring.completion() {
                if cqe.user_data() == RECV {
                    self.pending.push_back((cqe.result(), cqe.flags()));
                    continue;
                }
                let k = cqe.user_data() as usize;
                let Some(&(count, segmented)) = self.send.counts.get(k) else {
                    continue;
                };
                reaped += 1;
                accounted += count;
                if cqe.result() >= 0 {
                    out.sent += count;
                } else {
                    out.drop(count, &sys::errno(-cqe.result()), segmented);
                }
            }
        }
        self.msgs.clear();
        self.send.clear();
    }
}

impl Io for Uring {
    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        self.drain_eventfd();
        let mut n = 0;
        while !batch.is_full() {
            let Some((res, flags)) = self.pending.pop_front() else {
                break;
            };
            n += usize::from(self.complete(res, flags, batch));
        }
        while !batch.is_full() {
            // One completion at a time: `complete` needs `self` whole.
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            if cqe.user_data() == RECV {
                n += usize::from(self.complete(cqe.result(), cqe.flags(), batch));
            }
        }
        if !self.armed {
            self.arm()?;
        }
        Ok(n)
    }

    fn send(&mut self, batch: &SendBatch, gso: bool, out: &mut SendOutcome) {
        for unit in units(batch, gso) {
            let msg = self.send.prepare(&unit);
            self.msgs.push(msg);
            if self.msgs.len() == BATCH {
                self.flush(out);
            }
        }
        self.flush(out);
    }

    fn ready_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    fn ring_exhausted(&self) -> u64 {
        self.exhausted
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Cancel the receive and wait for it, so that the kernel is done with the buffers
        // before they are freed.
        if self.armed {
            let _ = self
                .ring
                .submitter()
                .register_sync_cancel(Some(Timespec::new().sec(1)), CancelBuilder::user_data(RECV));
        }
    }
}

/// The provided-buffer ring: `entries` BufRingEntry in page-aligned memory, and the buffers
/// they hand out.
struct BufRing {
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    entries: u16,
    tail: u16,
    data: Vec<u8>,
    size: usize,
}

impl BufRing {
    fn new(entries: u16, size: usize) -> io::Result<Self> {
        let ring_bytes = usize::from(entries) * size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; the result is checked. mmap memory is
        // page-aligned and zeroed, as the kernel wants the ring.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut this = Self {
            ring: ring.cast(),
            ring_bytes,
            entries,
            tail: 0,
            data: vec![0; usize::from(entries) * size],
            size,
        };
        for bid in 0..entries {
            this.add(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The first `len` bytes of buffer `bid` (as the kernel filled it).
    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid % self.entries) * self.size;
        &self.data[start..start + len.min(self.size)]
    }

    /// Gives buffer `bid` back to the kernel.
    fn recycle(&mut self, bid: u16) {
        self.add(bid % self.entries);
        self.publish();
    }

    fn add(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.entries - 1));
        let addr = self.data[usize::from(bid) * self.size..].as_mut_ptr() as u64;
        // SAFETY: `index < entries`, inside the mapping; the kernel only reads entries
        // between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.ring.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lies inside the first entry of the mapping, is 2-aligned,
        // and the kernel reads it with acquire semantics; the release store orders the entry
        // writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast_mut();
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the ring that used it is gone.
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}

/// The io_uring opcodes that matter to a UDP media path, and whether this kernel has them.
/// Empty when io_uring cannot be set up at all.
pub(crate) fn opcodes() -> Vec<(&'static str, bool)> {
    let Ok(ring) = IoUring::new(2) else {
        return Vec::new();
    };
    let mut probe = io_uring::Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        return Vec::new();
    }
    [
        ("RecvMsg", opcode::RecvMsg::CODE),
        ("SendMsg", opcode::SendMsg::CODE),
        ("ProvideBuffers", opcode::ProvideBuffers::CODE),
        ("SendZc", opcode::SendZc::CODE),
        ("SendMsgZc", opcode::SendMsgZc::CODE),
        ("PollAdd", opcode::PollAdd::CODE),
    ]
    .into_iter()
    .map(|(name, code)| (name, probe.is_supported(code)))
    .collect()
}
