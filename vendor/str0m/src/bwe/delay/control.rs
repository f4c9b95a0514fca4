use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::super::macros::{log_bitrate_estimate, log_delay_variation};
use super::super::{AckedPacket, BandwidthUsage};
use super::arrival_group::ArrivalGroupAccumulator;
use super::rate_control::RateControl;
use super::trendline::TrendlineEstimator;
use crate::rtp_::Bitrate;
use crate::util::{MovingAverage, already_happened};

const MAX_RTT_HISTORY_WINDOW: usize = 32;
const UPDATE_INTERVAL: Duration = Duration::from_millis(25);
/// The maximum time we keep updating our estimate without receiving a TWCC report.
const MAX_TWCC_GAP: Duration = Duration::from_millis(500);
/// RFC 6298: Exponentially Weighted Moving Average smoothing factor for RTT (alpha = 1/8)
const RTT_SMOOTHING_FACTOR: f64 = 0.125;

/// Delay controller for googcc inspired BWE.
///
/// This controller attempts to estimate the available send bandwidth by looking at the variations
/// in packet arrival times for groups of packets sent together. Broadly, if the delay variation is
/// increasing this indicates overuse.
pub struct DelayController {
    arrival_group_accumulator: ArrivalGroupAccumulator,
    trendline_estimator: TrendlineEstimator,
    rate_control: RateControl,
    /// Last estimate produced, unlike [`next_estimate`] this will always have a value after the
    /// first estimate.
    last_estimate: Option<Bitrate>,
    /// Smoothed RTT using EWMA (RFC 6298, alpha = 1/8).
    smoothed_rtt: MovingAverage,
    /// History of the max RTT derived for each TWCC report (kept for fallback).
    max_rtt_history: VecDeque<Duration>,

    /// The next time we should poll.
    next_timeout: Instant,
    /// The last time we ingested a TWCC report.
    last_twcc_report: Instant,
}

impl DelayController {
    pub fn new(initial_bitrate: Bitrate) -> Self {
        Self {
            arrival_group_accumulator: ArrivalGroupAccumulator::default(),
            trendline_estimator: TrendlineEstimator::new(20),
            rate_control: RateControl::new(initial_bitrate, Bitrate::kbps(40), Bitrate::gbps(10)),
            last_estimate: Some(initial_bitrate),
            smoothed_rtt: MovingAverage::new(RTT_SMOOTHING_FACTOR),
            max_rtt_history: VecDeque::default(),
            next_timeout: already_happened(),
            last_twcc_report: already_happened(),
        }
    }

    /// Record a packet from a TWCC report.
    pub fn update(
        &mut self,
        acked: &[AckedPacket],
        acked_bitrate: Option<Bitrate>,
        probe_bitrate: Option<Bitrate>,
        now: Instant,
    ) -> Option<Bitrate> {
        let mut max_rtt = None;
        // Parloir patch 79: the largest round trip without an `Instant` subtraction per
        // packet. Packets reported at one local instant (all of a report's) have theirs
        // largest at the earliest sent: that one's is taken, once per such instant.
        let mut earliest: Option<&AckedPacket> = None;

        for acked_packet in acked {
            match earliest {
                Some(e) if e.local_recv_time == acked_packet.local_recv_time => {
                    if acked_packet.local_send_time < e.local_send_time {
                        earliest = Some(acked_packet);
                    }
                }
                _ => {
                    max_rtt = max_rtt.max(earliest.map(AckedPacket::rtt));
                    earliest = Some(acked_packet);
                }
            }
            if let Some(delay_variation) = self
                .arrival_group_accumulator
                .accumulate_packet(acked_packet)
            {
                log_delay_variation!(delay_variation.arrival_delta);

                // Got a new delay variation, add it to the trendline.
                //
                // IMPORTANT: Match WebRTC's TrendlineEstimator time base.
                // WebRTC calls Detect/UpdateThreshold with `arrival_time_ms` (remote receive time),
                // not the local "time we processed this feedback". Using the remote receive time
                // avoids threshold adaptation artifacts when many deltas are processed in one
                // feedback batch (e.g. TWCC reports).
                //
                // Note: We use remote timestamps for relative timing only (computing time deltas
                // between packets). Clock skew doesn't matter since we're measuring trends in
                // delay variations, not absolute times.
                self.trendline_estimator
                    .add_delay_observation(delay_variation, delay_variation.last_remote_recv_time);
            }
        }

        max_rtt = max_rtt.max(earliest.map(AckedPacket::rtt));
        if let Some(rtt) = max_rtt {
            self.update_rtt(rtt);
        }

        let new_hypothesis = self.trendline_estimator.hypothesis();

        self.update_estimate(
            new_hypothesis,
            acked_bitrate,
            probe_bitrate,
            self.get_smoothed_rtt(),
            now,
        );
        self.last_twcc_report = now;

        self.last_estimate
    }

    pub fn poll_timeout(&self) -> Instant {
        self.next_timeout
    }

    pub fn handle_timeout(&mut self, acked_bitrate: Option<Bitrate>, now: Instant) {
        // Parloir patch 36: the rate control runs on its own schedule (every
        // `UPDATE_INTERVAL`, and at each feedback through `update`), not at every timeout of
        // the connection: with the leaky-bucket pacer that is one after every packet sent,
        // and how far the estimate moved depended on how many packets were sent.
        if now < self.next_timeout {
            return;
        }
        if !self.trendline_hypothesis_valid(now) {
            // We haven't received a TWCC report in a while. The trendline hypothesis can
            // no longer be considered valid. We need another TWCC report before we can update
            // estimates.
            let next_timeout_in = self
                .get_smoothed_rtt()
                .unwrap_or(MAX_TWCC_GAP)
                .min(UPDATE_INTERVAL);

            // Set this even if we didn't update, otherwise we get stuck in a poll -> handle loop
            // that starves the run loop.
            self.next_timeout = now + next_timeout_in;
            return;
        }

        self.update_estimate(
            self.trendline_estimator.hypothesis(),
            acked_bitrate,
            None,
            self.get_smoothed_rtt(),
            now,
        );
    }

    /// Get the latest estimate.
    pub fn last_estimate(&self) -> Option<Bitrate> {
        self.last_estimate
    }

    /// Whether the delay-based detector currently signals overuse.
    ///
    /// This is useful for gating behaviors (like probing) that would otherwise
    /// re-excite the system while we're already congested.
    pub fn is_overusing(&self) -> bool {
        self.trendline_estimator.hypothesis() == BandwidthUsage::Overuse
    }

    /// Update smoothed RTT using EWMA (RFC 6298, alpha = 1/8).
    fn update_rtt(&mut self, rtt: Duration) {
        // Keep history as fallback in case smoothed RTT is not yet available
        while self.max_rtt_history.len() >= MAX_RTT_HISTORY_WINDOW {
            self.max_rtt_history.pop_front();
        }
        self.max_rtt_history.push_back(rtt);

        // Update smoothed RTT using EWMA: smoothed = (7/8) * smoothed + (1/8) * sample
        self.smoothed_rtt.update(rtt.as_secs_f64());
    }

    /// Get the current smoothed RTT, with fallback to mean of history if not yet available.
    fn get_smoothed_rtt(&self) -> Option<Duration> {
        // Try smoothed RTT first (EWMA)
        if let Some(avg_secs) = self.smoothed_rtt.get() {
            return Some(Duration::from_secs_f64(avg_secs));
        }

        // Fallback to mean of history during initialization
        if self.max_rtt_history.is_empty() {
            return None;
        }

        let sum = self
            .max_rtt_history
            .iter()
            .fold(Duration::ZERO, |acc, rtt| acc + *rtt);
        Some(sum / self.max_rtt_history.len() as u32)
    }

    fn update_estimate(
        &mut self,
        hypothesis: BandwidthUsage,
        observed_bitrate: Option<Bitrate>,
        probe_bitrate: Option<Bitrate>,
        mean_max_rtt: Option<Duration>,
        now: Instant,
    ) {
        // WebRTC's logic from delay_based_bwe.cc MaybeUpdateEstimate():
        // - If we have a probe result, apply it directly and skip delay-based updates
        // - Otherwise, apply normal delay-based rate control
        //
        // This prevents probe results from being immediately overridden by delay-based
        // decreases caused by the probe itself (probes cause temporary queuing delay).

        if let Some(probe_rate) = probe_bitrate {
            // Apply probe result directly, bypassing delay-based updates
            self.rate_control.set_probe_result(probe_rate, now);
            let estimated_rate = self.rate_control.estimated_bitrate();
            log_bitrate_estimate!(estimated_rate.as_f64());
            self.last_estimate = Some(estimated_rate);
        } else if let Some(observed_bitrate) = observed_bitrate {
            // No probe result, apply normal delay-based rate control
            self.rate_control
                .update(hypothesis.into(), observed_bitrate, mean_max_rtt, now);
            let estimated_rate = self.rate_control.estimated_bitrate();

            log_bitrate_estimate!(estimated_rate.as_f64());
            self.last_estimate = Some(estimated_rate);
        }

        // Set this even if we didn't update, otherwise we get stuck in a poll -> handle loop
        // that starves the run loop.
        self.next_timeout = now + UPDATE_INTERVAL;
    }

    /// Whether the current trendline hypothesis is valid i.e. not too old.
    fn trendline_hypothesis_valid(&self, now: Instant) -> bool {
        now.duration_since(self.last_twcc_report)
            <= self
                .get_smoothed_rtt()
                .map(|rtt| rtt * 2)
                .unwrap_or(MAX_TWCC_GAP)
                .min(UPDATE_INTERVAL * 2)
    }
}

#[cfg(test)]
mod test {
    use std::time::{Duration, Instant};

    use super::DelayController;
    use crate::bwe_::AckedPacket;
    use crate::rtp_::{Bitrate, DataSize};

    /// Parloir patch 79: the round trip a report gives is its largest, taken per local
    /// receive instant from the earliest sent, as it was from every packet's.
    #[test]
    fn the_round_trip_recorded_is_the_largest() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let packet = |seq: u64, sent: u64, recv: u64| AckedPacket {
            seq_no: seq.into(),
            size: DataSize::bytes(1000),
            local_send_time: at(sent),
            remote_recv_time: at(sent + 20),
            local_recv_time: at(recv),
        };
        let largest = |acked: &[AckedPacket]| {
            let mut control = DelayController::new(Bitrate::kbps(300));
            control.update(acked, None, None, at(500));
            *control.max_rtt_history.back().unwrap()
        };
        // One receive instant: the earliest sent, wherever it is in the list.
        let one = [packet(1, 30, 100), packet(2, 10, 100), packet(3, 50, 100)];
        assert_eq!(largest(&one), Duration::from_millis(90));
        // Several: the largest of each instant's.
        let several = [
            packet(1, 30, 100),
            packet(2, 20, 100),
            packet(3, 40, 200),
            packet(4, 60, 200),
            packet(5, 70, 120),
        ];
        assert_eq!(largest(&several), Duration::from_millis(160));
        // Sent after the instant it was reported at (a clock that moved): none below zero.
        assert_eq!(largest(&[packet(1, 300, 100)]), Duration::ZERO);
    }

    /// Parloir patch 36: the connection's timeouts come as often as the host's other work
    /// (with the leaky-bucket pacer, one after every packet sent); the estimate must not move
    /// with how many there are, only with feedback and time.
    #[test]
    fn the_estimate_does_not_count_the_connections_timeouts() {
        let climb = |step: Duration| {
            let start = Instant::now();
            let mut control = DelayController::new(Bitrate::kbps(300));
            let mut t = Duration::ZERO;
            let mut next_report = Duration::ZERO;
            while t <= Duration::from_secs(3) {
                let now = start + t;
                if t >= next_report {
                    // A feedback report every 100 ms, nothing in it overusing.
                    control.update(&[], Some(Bitrate::kbps(2_000)), None, now);
                    next_report += Duration::from_millis(100);
                }
                control.handle_timeout(Some(Bitrate::kbps(2_000)), now);
                t += step;
            }
            control.last_estimate().unwrap().as_f64()
        };
        let every_ms = climb(Duration::from_millis(1));
        let every_25_ms = climb(Duration::from_millis(25));
        assert!(
            (every_ms - every_25_ms).abs() < 0.02 * every_25_ms,
            "timeouts every 1 ms: {every_ms}, every 25 ms: {every_25_ms}"
        );
    }
}
