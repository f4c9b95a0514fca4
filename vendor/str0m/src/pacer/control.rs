use crate::rtp_::Bitrate;

// Parloir patch 39: libwebrtc's pacing factor (`kDefaultPaceMultiplier`, 2.5), not 1.1. An
// SFU's estimate of an application-limited connection stays within 1.5 times what it sends, so
// at 1.1 times the estimate a key frame, or a frame of every camera at once, waited in the
// pacer for tens of milliseconds (a 720p webinar's video latency p99 went from 5 to 30 ms).
const PACING_FACTOR: f64 = 2.5;

// Parloir patch 41: while the loss controller holds the estimate down, the link is full and
// its queue is dropping: bursts at 2.5 times an estimate at the link's rate overflow a shallow
// queue again and again (a 30 KB queue at 2 Mbit/s dropped 3.6 times as many packets with the
// estimate held at what was acknowledged, patch 40). str0m's own factor then, as before 39.
const LOSS_LIMITED_PACING_FACTOR: f64 = 1.1;

/// Automatic padding target when media is active. This maintains NAT bindings, RTX state,
/// and allows ALR periodic probes to discover higher bandwidth.
const PADDING_TARGET: Bitrate = Bitrate::bps(50_000);

pub(crate) struct PacingResult {
    /// The bitrate at which the pacer may emit padding **when there is no media queued**.
    ///
    /// This value is intentionally an *absolute* target used by the pacer, not a “delta to add
    /// on top of current media”. In practice the **effective padding** over time is the
    /// difference between this target and the media actually sent, because padding is only used
    /// to fill gaps (empty queues), not to continuously top-up while media is flowing.
    pub padding_rate: Bitrate,
    pub pacing_rate: Bitrate,
}

/// Controls the pacing and padding rates.
pub(crate) struct PacerControl {}

impl PacerControl {
    pub fn new() -> Self {
        Self {}
    }

    pub fn calculate(
        &self,
        has_active_media: bool,
        estimate: Bitrate,
        is_overuse: bool,
        loss_limited: bool,
        minimum: Bitrate,
    ) -> PacingResult {
        let padding_rate = if is_overuse {
            // No padding during overuse
            Bitrate::ZERO
        } else if has_active_media {
            // Sustain the requested minimum without exceeding estimated capacity.
            // Keep the automatic target for NAT bindings and RTX state.
            PADDING_TARGET.max(minimum).min(estimate)
        } else {
            // No padding when no media is being sent
            Bitrate::ZERO
        };

        // Set pacing rate to smooth out media transmission (burst avoidance).
        // Must be at least the current BWE estimate * factor, but also high enough
        // to allow the padding we want to send.
        let factor = if loss_limited {
            LOSS_LIMITED_PACING_FACTOR
        } else {
            PACING_FACTOR
        };
        let min_pacing_rate = estimate * factor;
        let pacing_rate = min_pacing_rate.max(padding_rate);

        PacingResult {
            padding_rate,
            pacing_rate,
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn padding_enabled_with_active_media() {
        let c = PacerControl::new();
        let estimate = Bitrate::kbps(1_000);

        let r = c.calculate(true, estimate, false, false, Bitrate::ZERO);

        assert_eq!(r.padding_rate, PADDING_TARGET);
    }

    #[test]
    fn no_padding_without_active_media() {
        let c = PacerControl::new();
        let estimate = Bitrate::kbps(1_000);

        let r = c.calculate(false, estimate, false, false, Bitrate::mbps(2));

        assert_eq!(r.padding_rate, Bitrate::ZERO);
    }

    #[test]
    fn overuse_suppresses_padding() {
        let c = PacerControl::new();
        let estimate = Bitrate::mbps(40);

        let r = c.calculate(true, estimate, true, false, Bitrate::mbps(2));
        assert_eq!(r.padding_rate, Bitrate::ZERO);
    }

    #[test]
    fn minimum_tracks_estimate_without_exceeding_target() {
        let c = PacerControl::new();
        let minimum = Bitrate::kbps(800);
        // Both increasing and decreasing estimates must immediately change the cap.
        for (estimate, expected) in [(450, 450), (700, 700), (1000, 800), (300, 300)] {
            let result = c.calculate(true, Bitrate::kbps(estimate), false, false, minimum);
            assert_eq!(result.padding_rate, Bitrate::kbps(expected));
            assert_eq!(result.pacing_rate, Bitrate::kbps(estimate) * PACING_FACTOR);
        }
    }

    /// Parloir patch 41.
    #[test]
    fn a_loss_limited_estimate_is_paced_at_str0ms_factor() {
        let c = PacerControl::new();
        let estimate = Bitrate::mbps(2);
        let full = c.calculate(true, estimate, false, true, Bitrate::ZERO);
        assert_eq!(full.pacing_rate, estimate * LOSS_LIMITED_PACING_FACTOR);
        let not = c.calculate(true, estimate, false, false, Bitrate::ZERO);
        assert_eq!(not.pacing_rate, estimate * PACING_FACTOR);
    }

    #[test]
    fn automatic_padding_is_also_capped_by_estimate() {
        let c = PacerControl::new();
        for estimate in [Bitrate::ZERO, Bitrate::kbps(20)] {
            let result = c.calculate(true, estimate, false, false, Bitrate::ZERO);
            assert_eq!(result.padding_rate, estimate);
        }
    }
}
