use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rtp_::Bitrate;

/// Time window for averaging estimate changes.
const ESTIMATE_WINDOW: Duration = Duration::from_secs(3);

type TimeBitrate = (Instant, Bitrate);

const TOLERANCE: f64 = 0.05;

/// Parloir patch 38: an estimate this many times the window's average replaces the window.
const RISE_TAKEN_AT_ONCE: f64 = 1.5;

/// Smooths BWE estimates by averaging over a time window.
pub struct EstimateSmoother {
    estimates: VecDeque<TimeBitrate>,
    maybe_emit: bool,
    emitted: Option<Bitrate>,
}

impl EstimateSmoother {
    pub fn new() -> Self {
        Self {
            estimates: VecDeque::new(),
            maybe_emit: false,
            emitted: None,
        }
    }

    /// Record a new estimate and update the smoothed average.
    pub fn record(&mut self, now: Instant, estimate: Bitrate) {
        // Did value change from previous?
        let do_update = self.estimates.back().map(|b| b.1) != Some(estimate);

        if do_update {
            self.maybe_emit = true;
            // Parloir patch 38: a rise far above the average (a probe that got through) is
            // taken at once: averaged with the values before it over the window, an SFU
            // learnt of the room a probe found seconds later.
            if self
                .average()
                .is_some_and(|avg| estimate.as_f64() > avg * RISE_TAKEN_AT_ONCE)
            {
                self.estimates.clear();
            }
            self.estimates.push_back((now, estimate));
        }

        // Remove entries older than the window.
        while let Some((time, _)) = self.estimates.front() {
            if now.duration_since(*time) > ESTIMATE_WINDOW {
                // Keep last entry
                if self.estimates.len() == 1 {
                    break;
                }

                self.maybe_emit = true;
                self.estimates.pop_front();
            } else {
                break;
            }
        }
    }

    /// The average of the estimates in the window (each distinct value once).
    fn average(&self) -> Option<f64> {
        if self.estimates.is_empty() {
            return None;
        }
        let total: f64 = self.estimates.iter().map(|b| b.1.as_f64()).sum();
        Some(total / self.estimates.len() as f64)
    }

    /// Parloir patch: whether [`EstimateSmoother::poll`] may return an estimate.
    pub fn may_emit(&self) -> bool {
        self.maybe_emit
    }

    /// Poll for an estimate to emit. Returns Some only when there's a new value to emit.
    pub fn poll(&mut self) -> Option<Bitrate> {
        if !self.maybe_emit {
            return None;
        }

        if self.estimates.is_empty() {
            return None;
        }

        let avg = self.average()?;
        let rate: Bitrate = avg.into();

        // This forces emitting if we have the first ever value, or a last
        // where the rest of the window is gone (estimates stop coming).
        let force = self.estimates.len() == 1 && self.emitted != Some(rate);

        // Emit if we deviate enough from previously emitted.
        let deviate = if let Some(emitted) = self.emitted {
            !in_tolerance(emitted, rate)
        } else {
            true
        };

        self.maybe_emit = false;

        // Are we not to emit?
        if !force && !deviate {
            return None;
        }

        self.emitted = Some(rate);
        Some(rate)
    }
}

fn in_tolerance(b1: Bitrate, b2: Bitrate) -> bool {
    let min = b1 * (1.0 - TOLERANCE);
    let max = b1 * (1.0 + TOLERANCE);
    b2 > min && b2 < max
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parloir patch 38: a probe's result (here 2 Mbit/s after 3 s around 400 kbit/s) is what
    /// the application is told at once; the window's average of distinct values said about
    /// 460 kbit/s, and reached the probed rate only once the older values left the window.
    #[test]
    fn a_rise_far_above_the_average_is_emitted_at_once() {
        let start = Instant::now();
        let mut s = EstimateSmoother::new();
        for i in 0..30u64 {
            let at = start + Duration::from_millis(100 * i);
            s.record(at, Bitrate::bps(400_000 + (i % 3) * 10_000));
            s.poll();
        }
        let at = start + Duration::from_millis(3_000);
        s.record(at, Bitrate::bps(2_000_000));
        assert_eq!(s.poll(), Some(Bitrate::bps(2_000_000)));
    }

    /// Smaller moves, and falls, are still averaged over the window.
    #[test]
    fn small_rises_and_falls_are_averaged() {
        let start = Instant::now();
        let mut s = EstimateSmoother::new();
        let mut emitted = |at: u64, bps: u64| {
            s.record(start + Duration::from_millis(at), Bitrate::bps(bps));
            s.poll().map(|b| b.as_f64().round() as u64)
        };
        assert_eq!(emitted(0, 1_000_000), Some(1_000_000));
        assert_eq!(emitted(100, 1_400_000), Some(1_200_000));
        assert_eq!(emitted(200, 400_000), Some(933_333));
    }
}
