//! Where each frame goes on the recording's timeline.
//!
//! Each publisher stamps its audio and video with RTP times on separate clocks and, in RTCP
//! sender reports, says which wallclock (NTP) time goes with which RTP time. Mapping both
//! tracks of a participant through their sender reports onto the participant's NTP clock keeps
//! its audio and video in sync by construction, however long the recording; one offset per
//! participant then places that clock on the recording's timeline. The offset is the smallest
//! delay seen (the frame that came fastest), so network jitter never moves media earlier than
//! it could have arrived; it creeps up slowly so that a publisher whose clock runs slower than
//! ours does not eat the latency budget. Before the first sender report, a track's own RTP
//! clock is anchored the same way.

use std::time::SystemTime;

/// How fast an offset may grow, in seconds per second (100 ppm: ten times the drift of
/// ordinary crystal clocks).
const CREEP: f64 = 1e-4;

/// One clock's offset onto the timeline: the minimum of `arrival - media time`, allowed to
/// creep up by [`CREEP`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Offset {
    value: Option<f64>,
    at: f64,
}

impl Offset {
    /// Takes a frame with media time `media` (seconds on its clock) that arrived at
    /// `arrival` (seconds on the timeline); returns the offset to use.
    pub fn observe(&mut self, media: f64, arrival: f64) -> f64 {
        let sample = arrival - media;
        let v = match self.value {
            None => sample,
            Some(v) => (v + CREEP * (arrival - self.at).max(0.0)).min(sample),
        };
        self.value = Some(v);
        self.at = arrival;
        v
    }

    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// A track's RTP clock.
#[derive(Debug, Clone, Copy)]
pub struct TrackClock {
    rate: f64,
    first: u64,
    /// The offset of the track's own RTP clock (used until a sender report comes).
    own: Offset,
    /// Its last sender report: NTP seconds since the epoch and the RTP time with them.
    report: Option<(f64, u64)>,
}

impl TrackClock {
    pub fn new(rate: u32, first: u64) -> TrackClock {
        TrackClock {
            rate: f64::from(rate.max(1)),
            first,
            own: Offset::default(),
            report: None,
        }
    }

    /// Notes the frame's sender report, if it has one.
    pub fn report(&mut self, report: Option<(SystemTime, u64)>) {
        if let Some((ntp, rtp)) = report {
            let secs = ntp
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.report = Some((secs, rtp));
        }
    }

    /// The frame's time on its publisher's NTP clock, once a sender report came.
    pub fn ntp(&self, rtp: u64) -> Option<f64> {
        let (ntp, at) = self.report?;
        Some(ntp + (rtp as f64 - at as f64) / self.rate)
    }

    /// The frame's place on the timeline from this track's own clock (no sender report).
    pub fn own(&mut self, rtp: u64, arrival: f64) -> f64 {
        let media = (rtp as f64 - self.first as f64) / self.rate;
        media + self.own.observe(media, arrival)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fastest_frame_sets_the_offset_and_jitter_does_not_move_media() {
        let mut o = Offset::default();
        assert_eq!(o.observe(0.0, 1.05), 1.05);
        // Later frames arriving with more delay keep the offset (up to the creep).
        assert!((o.observe(1.0, 2.2) - 1.05).abs() < 1e-3);
        // A faster one lowers it.
        assert!((o.observe(2.0, 3.01) - 1.01).abs() < 1e-9);
    }

    #[test]
    fn a_slow_publisher_clock_is_followed() {
        // The publisher's clock runs 50 ppm slow: arrival - media grows by 50 µs a second.
        let mut o = Offset::default();
        let mut last = 0.0;
        for s in 0..7200 {
            let media = f64::from(s);
            last = o.observe(media, media * 1.000_05 + 0.02);
        }
        // After two hours the offset follows within a few milliseconds.
        let truth = 7199.0 * 0.000_05 + 0.02;
        assert!((last - truth).abs() < 0.005, "{last} vs {truth}");
    }

    #[test]
    fn sender_reports_map_both_tracks_to_one_clock() {
        let epoch = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let mut audio = TrackClock::new(48_000, 5_000);
        let mut video = TrackClock::new(90_000, 77_000);
        audio.report(Some((epoch, 48_000 + 5_000)));
        video.report(Some((epoch, 90_000 + 77_000)));
        // One second after the reports on both clocks is the same NTP time.
        let a = audio.ntp(2 * 48_000 + 5_000).unwrap();
        let v = video.ntp(2 * 90_000 + 77_000).unwrap();
        assert!((a - v).abs() < 1e-9);
    }
}
