//! The receive budget of one subscriber: which video it gets when its link cannot carry
//! everything it asks for.
//!
//! Each subscriber connection estimates its downlink from TWCC feedback (str0m's send-side
//! estimator, GCC). The budget is that estimate less a margin and less the audio, which is
//! always sent and never paced. Video is then shared out by priority (screen share, then whoever
//! is speaking, then the others by how recently they spoke): first everyone's lowest layer, in
//! priority order, while it fits; then upgrades, in the same order, up to what each tile asked
//! for. A track whose lowest layer does not fit is paused; the client is told with a
//! StreamStateUpdate. Going up a layer needs [`UPGRADE_HEADROOM`] more room than the layer's
//! rate, so an estimate hovering at a boundary does not make the layer flap, and only as many
//! tracks go up at once as the caller allows. When to be careful (a falling estimate, a queue
//! on the path) and when to probe for more is the engine's part (`Sfu::allocate`).
//!
//! Rates are measured per layer from what the publisher sends ([`Meter`]), with packet
//! overhead, so the budget is spent in the same currency the estimator measures.

use std::time::{Duration, Instant};

/// Measuring window of a [`Meter`].
const WINDOW: Duration = Duration::from_millis(500);
/// A meter without data for this long reads zero.
const STALE: Duration = Duration::from_millis(1500);
/// Bytes on the wire per RTP packet beyond its payload: IPv4 + UDP (28), RTP header with
/// extensions (about 24) and the SRTP tag (10).
const PACKET_OVERHEAD: usize = 62;
/// Payload bytes per RTP packet when a frame is split.
const PACKET_PAYLOAD: usize = 1150;
/// Share of the estimate that may be allocated: the rest absorbs rate fluctuations.
pub(crate) const BUDGET_SHARE: f64 = 0.95;
/// The share while a queue stands at the bottleneck (round trips well above the path's
/// lowest): sending 15 % under the estimate drains it.
pub(crate) const DRAIN_SHARE: f64 = 0.85;
/// An upgrade must fit this many times the layer's rate.
pub(crate) const UPGRADE_HEADROOM: f64 = 1.15;

/// The rate of a stream of frames, in bits per second on the wire.
#[derive(Debug, Default, Clone)]
pub(crate) struct Meter {
    start: Option<Instant>,
    bytes: u64,
    last: Option<Instant>,
    rate: u64,
}

impl Meter {
    /// Counts a frame of `payload` bytes.
    pub(crate) fn frame(&mut self, payload: usize, now: Instant) {
        let packets = payload.div_ceil(PACKET_PAYLOAD).max(1);
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            let rate = self.bytes * 8 * 1_000_000 / elapsed.as_micros().max(1) as u64;
            // A fresh meter, or one that was idle, takes the new window as it is.
            let idle = self.rate == 0
                || self
                    .last
                    .is_some_and(|t| now.saturating_duration_since(t) >= STALE);
            self.rate = if idle { rate } else { (self.rate + rate) / 2 };
            self.start = Some(now);
            self.bytes = 0;
        }
        self.bytes += (payload + packets * PACKET_OVERHEAD) as u64;
        self.last = Some(now);
    }

    /// Bits per second; zero when nothing was measured or nothing came for a while.
    pub(crate) fn rate(&self, now: Instant) -> u64 {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < STALE => self.rate,
            _ => 0,
        }
    }
}

/// What LiveKit's presets send per quality when nothing was measured (180p, 360p, 720p).
pub(crate) fn default_rate(quality: u8) -> u64 {
    match quality {
        0 => 180_000,
        1 => 450_000,
        _ => 1_700_000,
    }
}

/// One video track a subscriber asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Want {
    /// The layers it may get, lowest first: (quality rank, bits per second). Empty when it
    /// wants nothing.
    pub layers: Vec<(u8, u64)>,
    /// The rank forwarded now, if any.
    pub current: Option<u8>,
    /// The rate of the quality it asks for, flowing yet or not (bits per second).
    pub top: u64,
    /// The rate of its lowest layer with only temporal layer 0 (a quarter or a half of the
    /// frames), for a track with temporal layers: where it goes before it pauses.
    pub base: Option<u64>,
    /// Whether it is forwarded at that rate now.
    pub reduced: bool,
}

/// The outcome for one subscriber.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Allocation {
    /// Per [`Want`], in the same order: the highest rank it may get, or `None`: paused.
    pub caps: Vec<Option<u8>>,
    /// Bits per second allocated.
    pub used: u64,
    /// Bits per second everything asked for would need, including layers not flowing yet.
    pub desired: u64,
    /// Bits per second of room beyond `used` that the next step up needs, if one is waiting
    /// for room: the same sum the step is checked against (with [`UPGRADE_HEADROOM`] where the
    /// step needs it), so that a budget of `used` plus this makes it.
    pub next_step: Option<u64>,
    /// Per [`Want`]: its lowest layer fitted only without [`UPGRADE_HEADROOM`], or not at all.
    pub tight: Vec<bool>,
    /// Per [`Want`]: only its lowest layer's temporal layer 0 fitted (its `base`).
    pub reduced: Vec<bool>,
}

/// Shares `budget` (bits per second for video) among `wants`, which come in priority order.
/// At most `steps` tracks go up beyond the layer they are forwarded now (each as far as fits):
/// raising several at once on an estimate that a probe just pushed up would overshoot the
/// link together; going back to a layer a track already has is free.
pub(crate) fn allocate(budget: u64, wants: &[Want], mut steps: usize) -> Allocation {
    let mut caps: Vec<Option<u8>> = vec![None; wants.len()];
    let mut chosen: Vec<Option<usize>> = vec![None; wants.len()];
    let mut tight = vec![false; wants.len()];
    let mut reduced = vec![false; wants.len()];
    let mut remaining = budget;
    let mut desired = 0u64;
    // Starting (or resuming) a track needs the headroom too, and so does the whole frame
    // rate for a track that has only layer 0.
    let start_cost = |want: &Want, low: u64| {
        if want.current.is_some() && !want.reduced {
            low
        } else {
            (low as f64 * UPGRADE_HEADROOM) as u64
        }
    };
    // Everyone's lowest layer first, by priority; a track with temporal layers whose lowest
    // layer does not fit gets its temporal layer 0 if that does.
    for (i, want) in wants.iter().enumerate() {
        let Some(&(_, low)) = want.layers.first() else {
            continue;
        };
        desired += want.top.max(want.layers.last().map_or(0, |(_, r)| *r));
        let comfortable = (low as f64 * UPGRADE_HEADROOM) as u64;
        tight[i] = comfortable > remaining;
        let cost = start_cost(want, low);
        if cost <= remaining {
            remaining -= low;
            chosen[i] = Some(0);
        } else if let Some(base) = want.base.filter(|b| *b < low) {
            let cost = if want.current.is_some() {
                base
            } else {
                (base as f64 * UPGRADE_HEADROOM) as u64
            };
            if cost <= remaining {
                remaining -= base;
                chosen[i] = Some(0);
                reduced[i] = true;
            }
        }
    }
    // The next step up: resuming the first paused track, else the whole frame rate for the
    // first reduced one, or else the first upgrade that did not fit.
    let mut next_step = wants
        .iter()
        .zip(&chosen)
        .find(|(w, c)| c.is_none() && !w.layers.is_empty())
        .map(|(w, _)| start_cost(w, w.layers[0].1))
        .or_else(|| {
            wants
                .iter()
                .zip(&reduced)
                .find(|(_, r)| **r)
                .map(|(w, _)| start_cost(w, w.layers[0].1).saturating_sub(w.base.unwrap_or(0)))
        });
    // Then upgrades, by priority, each as far as it fits.
    for (i, want) in wants.iter().enumerate() {
        let Some(at) = chosen[i] else {
            continue;
        };
        if reduced[i] {
            continue;
        }
        let have = want.layers[at].1;
        let mut stepped = false;
        for (j, &(rank, rate)) in want.layers.iter().enumerate().skip(at + 1) {
            let kept = want.current.is_some_and(|c| rank <= c);
            let cost = if kept {
                rate
            } else {
                (rate as f64 * UPGRADE_HEADROOM) as u64
            };
            let fits = cost.saturating_sub(have) <= remaining;
            if (kept || stepped || steps > 0) && fits {
                chosen[i] = Some(j);
                if !kept && !stepped {
                    stepped = true;
                    steps -= 1;
                }
            } else {
                // Waiting for room, not for its turn (`steps`).
                if next_step.is_none() && !fits {
                    let now = want.layers[chosen[i].unwrap_or(at)].1;
                    next_step = Some(cost.saturating_sub(now));
                }
                break;
            }
        }
        // Measured rates need not grow with the rank (a layer just resumed reads low), so
        // the layer kept may cost less than the lowest did.
        let got = want.layers[chosen[i].unwrap_or(at)].1;
        remaining = remaining + have - got;
    }
    let mut used = 0;
    for (i, want) in wants.iter().enumerate() {
        if let Some(j) = chosen[i] {
            caps[i] = Some(want.layers[j].0);
            used += match want.base {
                Some(base) if reduced[i] => base,
                _ => want.layers[j].1,
            };
        }
    }
    Allocation {
        caps,
        used,
        desired,
        next_step,
        tight,
        reduced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulcast(current: Option<u8>) -> Want {
        Want {
            layers: vec![(0, 150_000), (1, 500_000), (2, 1_500_000)],
            current,
            top: 1_500_000,
            base: None,
            reduced: false,
        }
    }

    /// The probing asks for `used` plus `next_step` (engine.rs): with that budget the step
    /// it waits for must be made. It was the layer's rate without the headroom, and a budget
    /// between the two made neither the step nor a probe (a subscriber held on its low layer
    /// for good in the simulation).
    #[test]
    fn a_budget_of_used_plus_the_next_step_makes_that_step() {
        let temporal = |current, reduced| Want {
            base: Some(40_000),
            reduced,
            ..simulcast(current)
        };
        let sets = [
            vec![simulcast(Some(0))],
            vec![simulcast(Some(1)), simulcast(Some(0))],
            vec![simulcast(None), simulcast(Some(2))],
            vec![simulcast(Some(0)), simulcast(None)],
            vec![temporal(Some(0), false), temporal(Some(0), true)],
            vec![temporal(None, false), simulcast(Some(0))],
        ];
        // Room, not turns: with one upgrade a turn, the room is there and the step comes at
        // the next turn.
        for wants in &sets {
            for budget in (20_000..4_000_000).step_by(10_000) {
                let a = allocate(budget, wants, usize::MAX);
                let Some(step) = a.next_step else {
                    continue;
                };
                let b = allocate(a.used + step, wants, usize::MAX);
                assert!(
                    (&b.caps, &b.reduced) != (&a.caps, &a.reduced),
                    "{wants:?}: budget {budget} gave {a:?}; {} gave the same",
                    a.used + step
                );
            }
        }
    }

    #[test]
    fn everyone_gets_the_top_when_the_link_is_wide() {
        let a = allocate(10_000_000, &[simulcast(Some(2)), simulcast(Some(2))], 3);
        assert_eq!(a.caps, vec![Some(2), Some(2)]);
        assert_eq!(a.used, 3_000_000);
        assert_eq!(a.desired, 3_000_000);
        assert_eq!(a.next_step, None);
    }

    #[test]
    fn the_first_in_priority_is_served_first_and_the_last_pauses_first() {
        let wants = [simulcast(Some(0)), simulcast(Some(0)), simulcast(Some(0))];
        // Room for the three lowest layers and one upgrade to the middle: the first gets it.
        let a = allocate(1_100_000, &wants, 3);
        assert_eq!(a.caps, vec![Some(1), Some(0), Some(0)]);
        assert_eq!(a.next_step, Some(1_224_999), "the first one's next layer");
        // Room for two lowest layers: the last pauses.
        let a = allocate(400_000, &wants, 3);
        assert_eq!(a.caps, vec![Some(0), Some(0), None]);
        assert_eq!(a.next_step, Some(150_000), "the paused track waits first");
        // Tighter: only the first gets anything.
        let a = allocate(200_000, &wants, 3);
        assert_eq!(a.caps, vec![Some(0), None, None]);
        // Nothing fits: everything pauses.
        let a = allocate(100_000, &wants, 3);
        assert_eq!(a.caps, vec![None, None, None]);
        assert_eq!(a.used, 0);
        assert_eq!(a.tight, vec![true, true, true]);
    }

    #[test]
    fn a_layer_measured_below_the_lowest_leaves_the_difference_to_the_others() {
        // The first track's middle layer was just resumed and reads less than its lowest.
        let resumed = Want {
            layers: vec![(0, 400_000), (1, 100_000)],
            current: Some(1),
            top: 500_000,
            base: None,
            reduced: false,
        };
        let a = allocate(1_000_000, &[resumed, simulcast(Some(0))], 3);
        // 400k + 150k for the lowest layers; keeping the middle one gives 300k back, which
        // lifts the second to its middle layer (575k with the headroom, 425k more).
        assert_eq!(a.caps, vec![Some(1), Some(1)]);
        assert_eq!(a.used, 600_000);
        assert_eq!(a.next_step, Some(1_224_999));
    }

    #[test]
    fn one_upgrade_at_a_time() {
        let wants = [simulcast(Some(0)), simulcast(Some(0))];
        // Room for both to go to the middle layer, but one track may go up: the first goes,
        // as far as fits.
        let a = allocate(2_000_000, &wants, 1);
        assert_eq!(a.caps, vec![Some(2), Some(0)]);
        assert_eq!(a.next_step, Some(425_000));
        let a = allocate(1_000_000, &wants, 1);
        assert_eq!(a.caps, vec![Some(1), Some(0)]);
        // Layers already forwarded are kept without steps.
        let a = allocate(2_000_000, &[simulcast(Some(2)), simulcast(Some(0))], 0);
        assert_eq!(a.caps, vec![Some(2), Some(0)]);
        let a = allocate(5_000_000, &wants, 0);
        assert_eq!(a.caps, vec![Some(0), Some(0)]);
    }

    #[test]
    fn a_paused_track_resumes_only_with_headroom() {
        // 160 kbit/s holds a 150 kbit/s layer that flows, but does not restart it.
        assert_eq!(
            allocate(160_000, &[simulcast(Some(0))], 3).caps,
            vec![Some(0)]
        );
        let a = allocate(160_000, &[simulcast(None)], 3);
        assert_eq!(a.caps, vec![None]);
        assert_eq!(a.tight, vec![true]);
        let a = allocate(200_000, &[simulcast(None)], 3);
        assert_eq!(a.caps, vec![Some(0)]);
        assert_eq!(a.tight, vec![false]);
    }

    #[test]
    fn upgrades_need_headroom_but_keeping_a_layer_does_not() {
        // Exactly the top layer's rate: not enough to go up to it...
        let a = allocate(1_500_000, &[simulcast(Some(1))], 3);
        assert_eq!(a.caps, vec![Some(1)]);
        assert_eq!(a.next_step, Some(1_224_999));
        // ... but enough to stay on it.
        let a = allocate(1_500_000, &[simulcast(Some(2))], 3);
        assert_eq!(a.caps, vec![Some(2)]);
    }

    #[test]
    fn a_track_that_wants_less_leaves_room_for_the_next() {
        let small = Want {
            layers: vec![(0, 150_000)],
            current: None,
            top: 150_000,
            base: None,
            reduced: false,
        };
        let a = allocate(1_800_000, &[small, simulcast(None)], 3);
        assert_eq!(a.caps, vec![Some(0), Some(1)]);
        let none = Want {
            layers: Vec::new(),
            current: None,
            top: 0,
            base: None,
            reduced: false,
        };
        let a = allocate(2_000_000, &[none, simulcast(Some(2))], 3);
        assert_eq!(a.caps, vec![None, Some(2)]);
    }

    #[test]
    fn a_track_with_temporal_layers_drops_frames_before_it_pauses() {
        let temporal = |current, reduced| Want {
            base: Some(40_000),
            reduced,
            ..simulcast(current)
        };
        // Room for the first's lowest layer and the second's layer 0 frames.
        let wants = [temporal(Some(0), false), temporal(Some(0), false)];
        let a = allocate(200_000, &wants, 3);
        assert_eq!(a.caps, vec![Some(0), Some(0)]);
        assert_eq!(a.reduced, vec![false, true]);
        assert_eq!(a.used, 190_000);
        assert_eq!(a.next_step, Some(110_000), "the second's whole frame rate");
        // Less: both reduced; less still: the second pauses.
        let a = allocate(100_000, &wants, 3);
        assert_eq!(
            (a.caps.clone(), a.reduced),
            (vec![Some(0), Some(0)], vec![true, true])
        );
        let a = allocate(60_000, &wants, 3);
        assert_eq!(a.caps, vec![Some(0), None]);
        // Back to the whole frame rate needs the headroom, as a resume does.
        let reduced = [temporal(Some(0), true)];
        assert_eq!(allocate(160_000, &reduced, 3).reduced, vec![true]);
        assert_eq!(allocate(180_000, &reduced, 3).reduced, vec![false]);
        // A reduced track goes no higher until its lowest layer fits whole.
        let a = allocate(3_000_000, &[temporal(Some(2), false)], 3);
        assert_eq!((a.caps, a.reduced), (vec![Some(2)], vec![false]));
        // Without temporal layers it pauses, as before.
        assert_eq!(allocate(100_000, &[simulcast(Some(0))], 3).caps, vec![None]);
    }

    #[test]
    fn meters_measure_bits_on_the_wire() {
        let t0 = Instant::now();
        let mut m = Meter::default();
        // 10 frames a second of 2300 bytes (2 packets each) for 3 s.
        for i in 0..30 {
            m.frame(2300, t0 + Duration::from_millis(100 * i));
        }
        let now = t0 + Duration::from_millis(2900);
        let expected = (2300 + 2 * PACKET_OVERHEAD) as u64 * 8 * 10;
        let rate = m.rate(now);
        assert!(
            rate.abs_diff(expected) < expected / 10,
            "{rate} against {expected}"
        );
        assert_eq!(m.rate(now + STALE), 0, "a stopped stream reads zero");
    }
}
