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
    /// The current bucket.
    current: u32,
    /// The end of the current bucket; `None` before the first value.
    ///
    /// Parloir patch 92: its end rather than its start, so that a value inside it (most of
    /// them: a stream sends many packets in 50 ms) costs a comparison, not `Instant`'s
    /// subtraction (a call of about 35 instructions) at each packet sent: every packet is
    /// pushed into a stream's history of bytes sent or of bytes resent.
    end: Option<Instant>,
}

const BUCKETS: usize = 20;
const BUCKET: Duration = Duration::from_millis(50);

impl Default for ValueHistory {
    fn default() -> Self {
        Self {
            value: 0,
            buckets: [0; BUCKETS],
            current: 0,
            end: None,
        }
    }
}

impl ValueHistory {
    /// Adds a timed value. A time before the current bucket counts in it.
    pub fn push(&mut self, t: Instant, v: u64) {
        self.advance(t);
        if self.end.is_none() {
            self.end = Some(t + BUCKET);
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
        let Some(end) = self.end else {
            return;
        };
        // Within the current bucket (or before it).
        if now < end {
            return;
        }
        // Whole buckets past the current one's start: one more than past its end.
        let past_end = now.duration_since(end);
        if past_end >= BUCKET * (BUCKETS as u32 - 1) {
            *self = Self {
                end: Some(now + BUCKET),
                ..Self::default()
            };
            return;
        }
        let steps = 1 + (past_end.as_nanos() / BUCKET.as_nanos()) as u64;
        for _ in 0..steps {
            self.current = (self.current + 1) % BUCKETS as u32;
            let bucket = &mut self.buckets[self.current as usize];
            self.value -= u64::from(*bucket);
            *bucket = 0;
        }
        self.end = Some(end + BUCKET * steps as u32);
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

    /// Parloir patch 92: the window kept by its current bucket's end moves as the one kept
    /// by its start did (the previous code, here), for values at uneven steps, at bucket
    /// boundaries to the nanosecond, earlier than the last, and after long gaps.
    #[test]
    fn the_end_of_the_bucket_moves_as_its_start_did() {
        #[derive(Default)]
        struct ByStart {
            value: u64,
            buckets: [u32; super::BUCKETS],
            current: u32,
            start: Option<Instant>,
        }
        impl ByStart {
            fn advance(&mut self, now: Instant) {
                let Some(start) = self.start else {
                    return;
                };
                let elapsed = now.saturating_duration_since(start);
                if elapsed < super::BUCKET {
                    return;
                }
                if elapsed >= super::BUCKET * super::BUCKETS as u32 {
                    *self = Self {
                        start: Some(now),
                        ..Self::default()
                    };
                    return;
                }
                let steps = (elapsed.as_nanos() / super::BUCKET.as_nanos()) as u64;
                for _ in 0..steps {
                    self.current = (self.current + 1) % super::BUCKETS as u32;
                    let bucket = &mut self.buckets[self.current as usize];
                    self.value -= u64::from(*bucket);
                    *bucket = 0;
                }
                self.start = Some(start + super::BUCKET * steps as u32);
            }
            fn push(&mut self, t: Instant, v: u64) {
                self.advance(t);
                if self.start.is_none() {
                    self.start = Some(t);
                }
                let bucket = &mut self.buckets[self.current as usize];
                let add = v.min(u64::from(u32::MAX - *bucket)) as u32;
                *bucket += add;
                self.value += u64::from(add);
            }
        }

        let base = Instant::now();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut h, mut r) = (ValueHistory::default(), ByStart::default());
        let mut t = base;
        for i in 0..20_000u64 {
            let step = match next() % 10 {
                // The same instant, a bucket's length exactly, a nanosecond either side.
                0 => Duration::ZERO,
                1 => ms(50),
                2 => ms(50) - Duration::from_nanos(1),
                3 => ms(50) + Duration::from_nanos(1),
                // A gap of about the window, or longer.
                4 if i % 7 == 0 => ms(950 + next() % 200),
                4 => ms(3000),
                _ => Duration::from_nanos(next() % 30_000_000),
            };
            t += step;
            // Now and then a value earlier than the last.
            let at = if next() % 13 == 0 {
                t - Duration::from_nanos(next() % 80_000_000)
            } else {
                t
            };
            let v = next() % 5000;
            if next() % 4 == 0 {
                h.purge_old(at);
                r.advance(at);
            } else {
                h.push(at, v);
                r.push(at, v);
            }
            assert_eq!(h.sum(), r.value, "at {i}");
            assert_eq!(h.current, r.current, "at {i}");
            assert_eq!(h.end, r.start.map(|s| s + super::BUCKET), "at {i}");
        }
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
