//! Parloir patch 78: a `Vec` this thread lends to one use at a time.

use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

/// A `Vec` taken, empty, from the thread's `home`, and given back (emptied, its capacity kept)
/// when dropped. The lists a connection's work builds and drops (a report's records, for
/// instance) were allocated afresh each time, into memory the allocator hands out cold; the
/// thread's buffer was written a moment ago, for another connection, and is still in cache.
/// A second take while one is out gets an empty `Vec` of its own.
pub(crate) struct Reused<T: 'static> {
    vec: Vec<T>,
    home: &'static LocalKey<Cell<Vec<T>>>,
}

impl<T: 'static> Reused<T> {
    pub(crate) fn take(home: &'static LocalKey<Cell<Vec<T>>>) -> Self {
        // Given back emptied (`drop`), or never lent: empty.
        Reused {
            vec: home.take(),
            home,
        }
    }
}

impl<T: 'static> Deref for Reused<T> {
    type Target = Vec<T>;

    fn deref(&self) -> &Vec<T> {
        &self.vec
    }
}

impl<T: 'static> DerefMut for Reused<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.vec
    }
}

impl<T: 'static> Drop for Reused<T> {
    fn drop(&mut self) {
        self.vec.clear();
        let vec = std::mem::take(&mut self.vec);
        // Keep the larger of the two when a second one was out at the same time.
        let _ = self.home.try_with(|home| {
            let other = home.take();
            home.set(if other.capacity() > vec.capacity() {
                other
            } else {
                vec
            });
        });
    }
}

#[cfg(test)]
mod test {
    use super::*;

    thread_local! {
        static HOME: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    }

    #[test]
    fn a_reused_vec_comes_back_empty_with_its_room() {
        let mut a = Reused::take(&HOME);
        a.extend(0..100);
        let place = a.as_ptr();
        // A second one while the first is out is a Vec of its own.
        let mut b = Reused::take(&HOME);
        assert!(b.is_empty());
        b.push(9);
        assert_ne!(b.as_ptr(), place);
        drop(b);
        drop(a);
        let c = Reused::take(&HOME);
        assert!(c.is_empty(), "given back emptied");
        assert!(c.capacity() >= 100);
        assert_eq!(c.as_ptr(), place, "the larger buffer is kept");
    }
}
