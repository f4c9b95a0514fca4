//! Parloir patch 25: SRTP output buffers recycled.
//!
//! Every RTP packet str0m sends was encrypted into a fresh `vec![0; n]`: an allocation, a
//! zeroing of memory that the encryption then overwrites, and a free once the caller had
//! copied the datagram into its send buffer. In a large room that is fresh memory for every
//! datagram out, and the allocator hands back blocks last touched long ago (between blocks
//! freed by the resend windows a second after they were filled): cache misses that grow with
//! the room. A caller that is done with a [`Transmit`](crate::net::Transmit)'s contents may
//! hand them back with [`recycle`]; the next packet this thread encrypts goes into the buffer
//! handed back last, still in cache. A caller that never recycles gets what it got before.

use std::cell::{Cell, RefCell};

use super::DATAGRAM_MAX_PACKET_SIZE;

/// The capacity of a pooled buffer: enough for any datagram str0m sends, with the cipher's
/// scratch.
const CAPACITY: usize = DATAGRAM_MAX_PACKET_SIZE + 48;

/// At most this many buffers are kept per thread (`KEEP * CAPACITY` bytes, about half a
/// MiB): enough for the datagrams of a burst that still fit in a core's cache.
const KEEP: usize = 256;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Hands back a datagram's buffer (a [`DatagramSend`](crate::net::DatagramSend) turned into
/// its `Vec`) once its contents have been sent or copied, so that the next packet this thread
/// encrypts reuses it. Buffers too small for any datagram, and those beyond the pool's bound,
/// are dropped.
pub fn recycle(buf: Vec<u8>) {
    if buf.capacity() < CAPACITY {
        return;
    }
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < KEEP {
            spare.push(buf);
        }
    });
}

/// A buffer of `len` bytes: the buffer recycled last, or a new one. Its bytes are whatever
/// it held: the caller overwrites all `len` of them before anything reads them.
pub(crate) fn buffer(len: usize) -> Vec<u8> {
    let mut buf = SPARE
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(CAPACITY.max(len)));
    if buf.len() >= len {
        buf.truncate(len);
    } else {
        buf.resize(len, 0);
    }
    buf
}

/// Parloir patch 62: the buffer a packet's plaintext is written into (an RTP packet before
/// it is encrypted, one just decrypted), one per thread instead of one per connection. Each
/// connection kept its own (2 000 bytes to send, as many to receive): in a large room, writing
/// a packet into it missed the cache on every line, as the connections took turns; the
/// thread's one stays in cache. Taken with [`Scratch::take`] and handed back when dropped. Its
/// length is what it was handed back with (empty the first time). Taken again while taken (not
/// done today), the second is a new, empty one, and the one dropped last is kept.
pub(crate) struct Scratch(Vec<u8>);

impl Scratch {
    pub(crate) fn take() -> Scratch {
        Scratch(SCRATCH.take())
    }
}

impl std::ops::Deref for Scratch {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        SCRATCH.set(std::mem::take(&mut self.0));
    }
}

/// Buffers kept by this thread (tests).
#[cfg(test)]
pub(crate) fn kept() -> usize {
    SPARE.with(|spare| spare.borrow().len())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn the_buffer_recycled_last_comes_back_first() {
        let a = buffer(1200);
        let b = buffer(300);
        assert_eq!((a.len(), b.len()), (1200, 300));
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let before = kept();
        recycle(a);
        recycle(b);
        assert_eq!(kept(), before + 2);
        let c = buffer(1000);
        assert_eq!(c.as_ptr(), pb, "last in, first out");
        assert_eq!(c.len(), 1000, "grown to the length asked for");
        let d = buffer(64);
        assert_eq!(d.as_ptr(), pa);
        assert_eq!(d.len(), 64, "shortened to the length asked for");
        assert_eq!(kept(), before);
    }

    #[test]
    fn the_scratch_buffer_is_the_threads_own_and_comes_back() {
        let mut a = Scratch::take();
        if a.capacity() == 0 {
            a.resize(2000, 7);
        }
        a[0] = 9;
        let (pa, len) = (a.as_ptr(), a.len());
        drop(a);
        let b = Scratch::take();
        assert_eq!(b.as_ptr(), pa, "the same buffer again");
        assert_eq!((b.len(), b[0]), (len, 9), "as it was handed back");
        // Taken while taken: a new, empty one.
        assert!(Scratch::take().is_empty());
        let other = std::thread::spawn(|| Scratch::take().capacity())
            .join()
            .unwrap();
        assert_eq!(other, 0, "another thread's is its own");
        // The one dropped last is kept.
        drop(b);
        assert_eq!(Scratch::take().as_ptr(), pa);
    }

    #[test]
    fn small_buffers_are_not_kept_and_the_pool_is_bounded() {
        let before = kept();
        recycle(vec![0; 100]);
        assert_eq!(kept(), before, "too small for a datagram");
        for _ in 0..KEEP + 10 {
            recycle(Vec::with_capacity(CAPACITY));
        }
        assert_eq!(kept(), KEEP);
    }
}
