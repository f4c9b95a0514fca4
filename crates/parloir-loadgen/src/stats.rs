//! What the simulated participants count and time, shared across their tasks.
//!
//! Counters are atomics every task bumps; latency goes into per-task histograms merged into the
//! shared ones once a second, so the hot path takes no lock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The counters, by name. Packets are RTP packets seen on the participants' sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    JoinsStarted,
    Joined,
    Left,
    Dropped,
    RtpSent,
    BytesSent,
    RtpReceived,
    BytesReceived,
    AudioFramesSent,
    DtxFramesSent,
    VideoFramesSent,
    KeyFramesSent,
    AudioFramesReceived,
    VideoFramesReceived,
    /// Video frames received of the lowest, middle and highest simulcast layer.
    VideoFramesLayer1,
    VideoFramesLayer2,
    VideoFramesLayer3,
    FramesLost,
    Freezes,
    FrozenMs,
    NacksSent,
    NacksReceived,
    PlisReceived,
    SendDropped,
}

const COUNTERS: usize = Counter::SendDropped as usize + 1;

/// A snapshot of every counter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot([u64; COUNTERS]);

impl Snapshot {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Counts between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut d = [0; COUNTERS];
        for (i, v) in d.iter_mut().enumerate() {
            *v = self.0[i].saturating_sub(earlier.0[i]);
        }
        Snapshot(d)
    }
}

/// Latency histograms, in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    pub audio: Histogram<u64>,
    pub video: Histogram<u64>,
}

impl Latencies {
    pub fn new() -> Self {
        Self {
            audio: micros(),
            video: micros(),
        }
    }

    fn merge_from(&mut self, other: &mut Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.audio.add(&other.audio);
        let _ = self.video.add(&other.video);
        other.audio.reset();
        other.video.reset();
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes, three significant digits.
pub fn micros() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// Everything the participants share.
pub struct Shared {
    /// The clock publishers stamp frames with.
    pub epoch: Instant,
    measuring: AtomicBool,
    stop: AtomicBool,
    counters: [AtomicU64; COUNTERS],
    latencies: Mutex<Latencies>,
    /// Signal connect to join response, and signal connect to the first remote frame (µs).
    joins: Mutex<(Histogram<u64>, Histogram<u64>)>,
    failures: Mutex<BTreeMap<String, u32>>,
    drops: Mutex<BTreeMap<String, u32>>,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            latencies: Mutex::new(Latencies::new()),
            joins: Mutex::new((micros(), micros())),
            failures: Mutex::new(BTreeMap::new()),
            drops: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn add(&self, c: Counter, n: u64) {
        self.counters[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot(std::array::from_fn(|i| {
            self.counters[i].load(Ordering::Relaxed)
        }))
    }

    /// Microseconds since the epoch.
    pub fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    pub fn set_measuring(&self, on: bool) {
        self.measuring.store(on, Ordering::Relaxed);
    }

    pub fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Folds a task's latencies into the shared ones (and empties the task's).
    pub fn merge(&self, local: &mut Latencies) {
        if local.audio.is_empty() && local.video.is_empty() {
            return;
        }
        let mut shared = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        shared.merge_from(local);
    }

    pub fn latencies(&self) -> Latencies {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn reset_latencies(&self) {
        let mut l = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        l.audio.reset();
        l.video.reset();
    }

    pub fn record_join(&self, signal: Duration) {
        let mut j = self.joins.lock().unwrap_or_else(|e| e.into_inner());
        let _ = j.0.record(signal.as_micros().max(1) as u64);
    }

    pub fn record_first_frame(&self, after: Duration) {
        let mut j = self.joins.lock().unwrap_or_else(|e| e.into_inner());
        let _ = j.1.record(after.as_micros().max(1) as u64);
    }

    pub fn joins(&self) -> (Histogram<u64>, Histogram<u64>) {
        self.joins.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A participant could not join: `reason` says why (refused, timed out, ...).
    pub fn fail(&self, reason: impl Into<String>) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *f.entry(reason.into()).or_default() += 1;
    }

    /// The server ended a participant's session that had joined.
    pub fn dropped(&self, reason: impl Into<String>) {
        self.add(Counter::Dropped, 1);
        let mut f = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        *f.entry(reason.into()).or_default() += 1;
    }

    pub fn failures(&self) -> BTreeMap<String, u32> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn drops(&self) -> BTreeMap<String, u32> {
        self.drops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// Tracks one received stream (a subscription) for loss and freezes.
#[derive(Debug, Default)]
pub struct StreamWatch {
    last: Option<(u8, u32)>,
    last_at: Option<Instant>,
    /// Mean frame interval, exponentially smoothed (µs).
    mean_us: f64,
}

/// What one received frame taught.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FrameVerdict {
    pub lost: u64,
    pub frozen: Option<Duration>,
}

impl StreamWatch {
    /// Notes a frame of `stream` numbered `seq`. Frames missing in between count as lost when the
    /// stream (layer) did not change. A video gap longer than three mean frame intervals, and at
    /// least 150 ms longer than the mean, is a freeze (WebRTC's freeze definition).
    pub fn frame(&mut self, now: Instant, stream: u8, seq: u32, video: bool) -> FrameVerdict {
        let mut v = FrameVerdict::default();
        if let Some((s, last)) = self.last
            && s == stream
        {
            if seq <= last {
                return v; // duplicate or reordered frame: nothing new
            }
            v.lost = u64::from(seq - last - 1);
        }
        if video && let Some(at) = self.last_at {
            let gap = now.saturating_duration_since(at).as_micros() as f64;
            if self.mean_us > 0.0 && gap > (3.0 * self.mean_us).max(self.mean_us + 150_000.0) {
                v.frozen = Some(Duration::from_micros(gap as u64));
            }
            self.mean_us = if self.mean_us == 0.0 {
                gap
            } else {
                0.9 * self.mean_us + 0.1 * gap.min(1_000_000.0)
            };
        }
        self.last = Some((stream, seq));
        self.last_at = Some(now);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_as_loss_and_long_gaps_as_freezes() {
        let t0 = Instant::now();
        let mut w = StreamWatch::default();
        let ms = Duration::from_millis;
        for i in 0..10 {
            assert_eq!(
                w.frame(t0 + ms(33 * i), 3, i as u32, true),
                FrameVerdict::default()
            );
        }
        // Frames 10 and 11 missing, and a 400 ms pause.
        let v = w.frame(t0 + ms(33 * 9 + 400), 3, 12, true);
        assert_eq!(v.lost, 2);
        assert!(v.frozen.is_some());
        // A duplicate teaches nothing; a layer change is not loss.
        assert_eq!(w.frame(t0 + ms(800), 3, 12, true), FrameVerdict::default());
        assert_eq!(w.frame(t0 + ms(830), 1, 500, true).lost, 0);
    }

    #[test]
    fn snapshots_subtract() {
        let s = Shared::new();
        s.add(Counter::RtpReceived, 5);
        let a = s.snapshot();
        s.add(Counter::RtpReceived, 7);
        assert_eq!(s.snapshot().since(&a).get(Counter::RtpReceived), 7);
    }
}
