use std::time::{Duration, Instant};

/// Parloir patch 47: a sum of values over the last second, kept in 20 buckets of 50 ms.
///
/// This was a `VecDeque` with one entry per value (every packet a stream sent), purged from
/// the front: each purge read an entry written a second before, out of cache, for every
/// stream with packets. The buckets are a few lines inside the stream; the sum covers the
/// bucket of the last `push` or `purge_old` and the 19 before it, so between 950 ms and a
/// second.
#[derive(Debug)]
pub(crate) struct ValueHistory {
    /// The sum of the buckets.
    value: u64,
    /// Bytes of a stream in 50 ms fit in a `u32` (a value that would overflow its bucket
    /// counts up to the bucket's limit).
    buckets: [u32; BUCKETS],
    /// The bucket `start` falls in.
    current: u32,
    /// The start of the current bucket; `None` before the first value.
    start: Option<Instant>,
}

const BUCKETS: usize = 20;
const BUCKET: Duration = Duration::from_millis(50);

impl Default for ValueHistory {
    fn default() -> Self {
        Self {
            value: 0,
            buckets: [0; BUCKETS],
            current: 0,
            start: None,
        }
    }
}

impl ValueHistory {
    /// Adds a timed value. A time before the current bucket counts in it.
    pub fn push(&mut self, t: Instant, v: u64) {
        self.advance(t);
        if self.start.is_none() {
            self.start = Some(t);
        }
        let bucket = &mut self.buckets[self.current as usize];
        let add = v.min(u64::from(u32::MAX - *bucket)) as u32;
        *bucket += add;
        self.value += u64::from(add);
    }

    /// The sum of the values in the window. Might be stale unless
    /// [`ValueHistory::purge_old`] is called before.
    pub fn sum(&self) -> u64 {
        self.value
    }

    /// Moves the window on to `now`, dropping the buckets that fall out of it.
    pub fn purge_old(&mut self, now: Instant) {
        self.advance(now);
    }

    fn advance(&mut self, now: Instant) {
        let Some(start) = self.start else {
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < BUCKET {
            return;
        }
        if elapsed >= BUCKET * BUCKETS as u32 {
            *self = Self {
                start: Some(now),
                ..Self::default()
            };
            return;
        }
        let steps = (elapsed.as_nanos() / BUCKET.as_nanos()) as u64;
        for _ in 0..steps {
            self.current = (self.current + 1) % BUCKETS as u32;
            let bucket = &mut self.buckets[self.current as usize];
            self.value -= u64::from(*bucket);
            *bucket = 0;
        }
        self.start = Some(start + BUCKET * steps as u32);
    }
}

#[allow(clippy::unchecked_time_subtraction)]
#[cfg(test)]
mod test {
    use std::time::{Duration, Instant};

    use super::ValueHistory;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn sums_the_last_second() {
        let now = Instant::now();
        let mut h = ValueHistory::default();

        assert_eq!(h.sum(), 0);
        h.purge_old(now);
        assert_eq!(h.sum(), 0);
        h.push(now, 22);
        h.push(now + ms(300), 33);
        h.push(now + ms(310), 1);
        assert_eq!(h.sum(), 56);
        h.purge_old(now + ms(999));
        assert_eq!(h.sum(), 56);
        // The first value's bucket [0, 50) leaves the window at 1 s.
        h.purge_old(now + ms(1000));
        assert_eq!(h.sum(), 34);
        h.purge_old(now + ms(1299));
        assert_eq!(h.sum(), 34);
        h.purge_old(now + ms(1300));
        assert_eq!(h.sum(), 0);
        h.push(now + ms(1320), 5);
        assert_eq!(h.sum(), 5);
    }

    #[test]
    fn a_long_gap_empties_it() {
        let now = Instant::now();
        let mut h = ValueHistory::default();
        h.push(now, 7);
        h.push(now + ms(40), 7);
        h.push(now + ms(5000), 3);
        assert_eq!(h.sum(), 3);
        h.purge_old(now + ms(5999));
        assert_eq!(h.sum(), 3);
        h.purge_old(now + ms(6050));
        assert_eq!(h.sum(), 0);
    }

    #[test]
    fn agrees_with_an_exact_window_to_a_bucket() {
        // Values every 7 ms for 3 s; at each step the sum lies between the exact sums over
        // the last 950 ms and the last second.
        let now = Instant::now();
        let mut h = ValueHistory::default();
        let mut all: Vec<(Instant, u64)> = Vec::new();
        for i in 0..430u64 {
            let t = now + ms(7 * i);
            let v = 100 + (i * 37) % 1000;
            h.push(t, v);
            all.push((t, v));
            let exact = |window: Duration| {
                all.iter()
                    .filter(|(at, _)| t.duration_since(*at) < window)
                    .map(|(_, v)| v)
                    .sum::<u64>()
            };
            assert!(h.sum() >= exact(ms(950)), "at {i}");
            assert!(h.sum() <= exact(ms(1000)), "at {i}");
        }
    }

    #[test]
    fn a_value_beyond_a_bucket_counts_up_to_its_limit() {
        let now = Instant::now();
        let mut h = ValueHistory::default();
        h.push(now, u64::MAX);
        h.push(now, 5);
        assert_eq!(h.sum(), u64::from(u32::MAX));
        h.push(now + ms(50), 5);
        assert_eq!(h.sum(), u64::from(u32::MAX) + 5);
        h.purge_old(now + ms(1000));
        assert_eq!(h.sum(), 5);
    }

    #[test]
    fn an_earlier_time_counts_in_the_current_bucket() {
        let now = Instant::now();
        let mut h = ValueHistory::default();
        h.push(now + ms(100), 1);
        h.push(now, 2);
        assert_eq!(h.sum(), 3);
        h.purge_old(now + ms(1100));
        assert_eq!(h.sum(), 0);
    }
}
