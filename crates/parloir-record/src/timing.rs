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

use std::collections::HashMap;
use std::time::SystemTime;

/// How fast an offset may grow, in seconds per second (100 ppm: ten times the drift of
/// ordinary crystal clocks).
const CREEP: f64 = 1e-4;
/// No network delays a frame by this much more than the fastest: beyond it, the clock jumped.
const RESET: f64 = 3.0;

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
            // A frame this much later than the clock allows means the clock jumped back (a
            // publisher that restarted its timestamps): start again from it rather than call
            // everything after it late.
            Some(v) if sample - v > RESET => sample,
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

/// Every stream's place on one recording's timeline.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Each participant's NTP clock.
    participants: HashMap<String, Offset>,
    /// Each RTP stream (a track's layer: each has its own RTP clock base).
    streams: HashMap<(String, Option<u8>), TrackClock>,
}

impl Timeline {
    /// The timeline time (seconds) of a frame of `participant`'s `track` (layer `layer`) with RTP
    /// time `rtp` at `clock_rate`, that arrived at `arrival` (timeline seconds), with the
    /// stream's last sender report if any.
    #[allow(clippy::too_many_arguments, reason = "one frame's timing fields")]
    pub fn place(
        &mut self,
        participant: &str,
        track: &str,
        layer: Option<u8>,
        clock_rate: u32,
        rtp: u64,
        report: Option<(SystemTime, u64)>,
        arrival: f64,
    ) -> f64 {
        let clock = self
            .streams
            .entry((track.to_string(), layer))
            .or_insert_with(|| TrackClock::new(clock_rate, rtp));
        clock.report(report);
        match clock.ntp(rtp) {
            Some(ntp) => {
                let offset = self
                    .participants
                    .entry(participant.to_string())
                    .or_default();
                ntp + offset.observe(ntp, arrival)
            }
            None => clock.own(rtp, arrival),
        }
    }

    /// Forgets a track's streams.
    pub fn forget_track(&mut self, track: &str) {
        self.streams.retain(|(t, _), _| t != track);
    }

    /// Forgets a participant's clock.
    pub fn forget_participant(&mut self, participant: &str) {
        self.participants.remove(participant);
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
    fn a_clock_that_jumps_back_is_followed_at_once() {
        let mut o = Offset::default();
        for s in 0..100 {
            o.observe(f64::from(s), f64::from(s) + 0.05);
        }
        // The publisher's timestamps restart 60 s back: the next frame is not 60 s late.
        let offset = o.observe(40.0, 100.05);
        assert!((40.0 + offset - 100.05).abs() < 1e-9);
        // A frame merely delayed (1 s of jitter) does not move the clock.
        let offset = o.observe(41.0, 102.05);
        assert!((41.0 + offset - 101.05).abs() < 1e-3);
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

#[cfg(test)]
mod drift {
    //! Two hours of one publisher's audio and video, through the timeline, with its clock off
    //! from ours, network jitter and sender reports every 5 s: the audio and video that were
    //! captured together stay together, and the timeline keeps up with arrivals.
    use super::*;
    use std::time::Duration;

    /// A deterministic jitter source (xorshift).
    struct Jitter(u64);
    impl Jitter {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % 10_000) as f64 / 10_000.0
        }
    }

    /// Returns the largest audio/video misalignment and the largest lag of the timeline behind
    /// arrivals over the last minute, and the largest lead of the timeline over an arrival.
    fn run(ppm: f64, reports: bool) -> (f64, f64, f64) {
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut timeline = Timeline::default();
        let mut jitter = Jitter(0x9e37_79b9_7f4a_7c15);
        // The publisher's capture clock in seconds; our clock runs `1 + ppm` times as fast.
        let rate = 1.0 + ppm * 1e-6;
        let (audio_base, video_base) = (1_234_567u64, 987_654u64);
        let mut worst_sync = 0.0f64;
        let mut worst_lag = 0.0f64;
        let mut worst_lead = 0.0f64;
        let end = 7_200.0;
        let mut t = 0.0f64;
        let mut last_report = -10.0;
        while t < end {
            // Every 20 ms an audio frame; every 40 ms a video frame captured at the same time.
            let report_due = reports && t - last_report >= 5.0;
            if report_due {
                last_report = t;
            }
            let sr = |rtp: u64| report_due.then(|| (epoch + Duration::from_secs_f64(t), rtp));
            let audio_rtp = audio_base + (t * 48_000.0).round() as u64;
            let arrival = t * rate + 0.02 + 0.04 * jitter.next();
            let a = timeline.place("P", "TA", None, 48_000, audio_rtp, sr(audio_rtp), arrival);
            worst_lead = worst_lead.max(a - arrival);
            let a_minus_capture = a - t * rate;
            if ((t * 1000.0).round() as u64).is_multiple_of(40) {
                let video_rtp = video_base + (t * 90_000.0).round() as u64;
                let arrival = t * rate + 0.03 + 0.06 * jitter.next();
                let v = timeline.place(
                    "P",
                    "TV",
                    Some(0),
                    90_000,
                    video_rtp,
                    sr(video_rtp),
                    arrival,
                );
                worst_lead = worst_lead.max(v - arrival);
                if t > end - 60.0 {
                    worst_sync = worst_sync.max((a - v).abs());
                    worst_lag = worst_lag.max(arrival - v);
                }
            }
            if t > end - 60.0 {
                worst_lag = worst_lag.max(a_minus_capture.abs());
            }
            t += 0.02;
        }
        (worst_sync, worst_lag, worst_lead)
    }

    #[test]
    fn audio_and_video_stay_in_sync_for_two_hours() {
        for ppm in [-50.0, 0.0, 50.0] {
            for reports in [true, false] {
                let (sync, lag, lead) = run(ppm, reports);
                println!(
                    "{ppm:+} ppm, sender reports {reports}: audio/video {:.2} ms apart, \
                     {:.1} ms behind arrival at most, after 2 h",
                    sync * 1e3,
                    lag * 1e3
                );
                // Frames captured together end within 40 ms of each other after 2 h.
                assert!(
                    sync < 0.040,
                    "{ppm} ppm, reports {reports}: audio/video apart by {sync:.4} s"
                );
                // The timeline never places media before it could have arrived (to within the
                // simulation's rounding of RTP times to whole samples)…
                assert!(
                    lead <= 1e-4,
                    "{ppm} ppm, reports {reports}: {lead:.6} s ahead of arrival"
                );
                // …and does not fall behind arrivals (that would eat the recording's latency).
                assert!(
                    lag < 0.15,
                    "{ppm} ppm, reports {reports}: {lag:.4} s behind arrival"
                );
            }
        }
    }
}
