//! Temporal layers: the frame rate each subscriber gets.
//!
//! Encoders that publish temporal layers tag each frame with a temporal id: with three layers
//! (libwebrtc's `L1T3`, the temporal part of `L3T3_KEY`, and Chrome's VP8 simulcast, which
//! encodes every simulcast layer with three), a quarter of the frames are on layer 0, a quarter
//! on layer 1 and half on layer 2, and a frame refers only to frames of its own layer or below.
//! Dropping every frame above layer `t` therefore leaves a stream the receiver decodes at a
//! lower rate: a half (`t = 1`) or a quarter (`t = 0`) of the full rate.
//!
//! The temporal id comes from the VP8 payload descriptor (TID), the VP9 payload descriptor's
//! layer indices, or an AV1 OBU extension header. A subscriber asks for a frame rate with
//! `UpdateTrackSettings.fps` (livekit-client's `setVideoFPS`); the SFU measures what each
//! temporal layer adds to the rate of each spatial layer ([`Rates`]) and forwards the fewest
//! layers that give at least that rate.
//!
//! Going down takes effect at once. Going up waits for a frame from which the higher layers
//! can be decoded with what the subscriber got: a key frame, a VP8 frame with the layer-sync
//! bit (it refers to layer 0 only), or, for VP9 and AV1, a layer-0 frame (in libwebrtc's
//! temporal structures every frame after a layer-0 frame refers only to it and to frames
//! after it). Frames are packetised for each subscriber with its own picture ids (str0m), so
//! the dropped frames leave no gap for the receiver to wait on.

use std::time::{Duration, Instant};

use str0m::format::CodecExtra;
use str0m::media::MediaData;

/// Temporal layers tracked (VP8's TID and AV1's temporal id have 2 and 3 bits; encoders use
/// up to 4 layers).
pub(crate) const MAX_TEMPORAL: usize = 4;
/// Spatial layers (simulcast ranks) whose frame rates are measured apart.
const RANKS: usize = 3;
/// A temporal layer counts as flowing while its last frame is younger than this.
const ACTIVE_WINDOW: Duration = Duration::from_millis(1000);
/// Frame rates are measured over windows of this length.
const WINDOW: Duration = Duration::from_millis(1000);
/// A layer set gives a wished frame rate when it reaches this share of it (an encoder's
/// 30 frames/s measure 29.7 in one window and 30.3 in the next).
const FPS_SLACK: f32 = 0.9;

/// The temporal layer of one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Its temporal id (0 when the codec or the frame says nothing about layers).
    pub tid: u8,
    /// Layers up to which a receiver may start or go up at this frame.
    pub up_to: UpTo,
}

/// Where a frame lets a receiver go up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpTo {
    /// Not here.
    None,
    /// To the frame's own layer (a VP8 layer-sync frame: it refers to layer 0 only).
    Own,
    /// To any layer (a key frame, or a layer-0 frame of VP9 or AV1).
    Any,
}

impl Frame {
    /// The temporal layer of `data`, from its codec's layer information.
    pub(crate) fn of(data: &MediaData) -> Frame {
        let key = data.is_keyframe();
        let (tid, up_to) = match data.codec_extra {
            CodecExtra::Vp8(e) => {
                // VP8 goes up at layer-sync frames (the Y bit), as its references across
                // cycles are the encoder's choice.
                let up = if key {
                    UpTo::Any
                } else if e.layer_index > 0 && e.sync {
                    UpTo::Own
                } else {
                    UpTo::None
                };
                (e.layer_index, up)
            }
            CodecExtra::Vp9(e) => {
                let tid = e.tid.unwrap_or(0);
                (
                    tid,
                    if key || tid == 0 {
                        UpTo::Any
                    } else {
                        UpTo::None
                    },
                )
            }
            CodecExtra::Av1(_) => {
                let tid = av1_temporal_id(&data.data);
                (
                    tid,
                    if key || tid == 0 {
                        UpTo::Any
                    } else {
                        UpTo::None
                    },
                )
            }
            _ => (0, UpTo::Any),
        };
        Frame {
            tid: tid.min(MAX_TEMPORAL as u8 - 1),
            up_to,
        }
    }
}

/// The temporal id of an AV1 temporal unit: the highest its OBU extension headers name (the
/// frames of one unit share it); 0 without extension headers. A malformed OBU ends the search.
fn av1_temporal_id(data: &[u8]) -> u8 {
    crate::svc::Obus::new(data)
        .map_while(Result::ok)
        .filter_map(|obu| obu.temporal)
        .max()
        .unwrap_or(0)
}

/// The temporal layers of one track as its frames arrive: which flow, and the frame rate each
/// adds per spatial layer.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    /// The arrival of the last frame of each temporal layer.
    seen: [Option<Instant>; MAX_TEMPORAL],
    /// Start of the current measuring window.
    start: Option<Instant>,
    /// Frames in the current window, per spatial rank and temporal layer.
    counts: [[u16; MAX_TEMPORAL]; RANKS],
    /// Frames per second in the last whole window, per spatial rank and temporal layer.
    fps: [[f32; MAX_TEMPORAL]; RANKS],
}

impl Rates {
    /// Counts a frame of temporal layer `tid` on spatial rank `rank` (0 for a scalable
    /// track's frames, which carry every spatial layer).
    pub(crate) fn frame(&mut self, rank: u8, tid: u8, now: Instant) {
        let t = usize::from(tid).min(MAX_TEMPORAL - 1);
        self.seen[t] = Some(now);
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            let secs = elapsed.as_secs_f32();
            for (fps, counts) in self.fps.iter_mut().zip(&mut self.counts) {
                for (f, c) in fps.iter_mut().zip(counts.iter_mut()) {
                    *f = f32::from(*c) / secs;
                    *c = 0;
                }
            }
            self.start = Some(now);
        }
        let c = &mut self.counts[usize::from(rank).min(RANKS - 1)][t];
        *c = c.saturating_add(1);
    }

    /// The highest temporal layer flowing (0 for a track without temporal layers).
    pub(crate) fn top(&self, now: Instant) -> u8 {
        self.seen
            .iter()
            .rposition(|at| at.is_some_and(|t| now.saturating_duration_since(t) < ACTIVE_WINDOW))
            .unwrap_or(0) as u8
    }

    /// The fewest temporal layers of spatial rank `rank` that give `fps` frames per second;
    /// all of them when none does, or before anything was measured.
    pub(crate) fn for_fps(&self, rank: u8, fps: u32, now: Instant) -> u8 {
        let top = self.top(now);
        let rates = &self.fps[usize::from(rank).min(RANKS - 1)];
        let want = fps as f32 * FPS_SLACK;
        let mut sum = 0.0;
        for t in 0..=top {
            sum += rates[usize::from(t)];
            if sum >= want {
                return t;
            }
        }
        top
    }
}

/// One subscriber's temporal layer of one track.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    /// The highest temporal layer forwarded now; `None` until the first frame decides.
    current: Option<u8>,
}

impl Filter {
    /// Whether to forward a frame (`frame`) when `target` is the highest layer the subscriber
    /// should get. Going down is immediate; going up waits for a frame that allows it.
    pub(crate) fn forward(&mut self, frame: Frame, target: u8) -> bool {
        let current = match self.current {
            None => target,
            Some(c) if target < c => target,
            Some(c) if target > c => match frame.up_to {
                UpTo::Any => target,
                UpTo::Own if frame.tid > c && frame.tid <= target => frame.tid,
                _ => c,
            },
            Some(c) => c,
        };
        self.current = Some(current);
        frame.tid <= current
    }

    /// The layer forwarded now, if decided.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Option<u8> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tid: u8, up_to: UpTo) -> Frame {
        Frame { tid, up_to }
    }

    /// libwebrtc's three-layer pattern: 0, 2, 1, 2.
    const PATTERN: [u8; 4] = [0, 2, 1, 2];

    #[test]
    fn frame_rates_are_measured_per_layer_and_a_wish_picks_the_fewest_layers() {
        let t0 = Instant::now();
        let mut r = Rates::default();
        // 30 frames/s on rank 2 and rank 0 (simulcast), for 3 s.
        for i in 0..90u64 {
            let at = t0 + Duration::from_micros(i * 33_333);
            for rank in [0, 2] {
                r.frame(rank, PATTERN[(i % 4) as usize], at);
            }
        }
        let now = t0 + Duration::from_millis(2990);
        assert_eq!(r.top(now), 2);
        assert_eq!(r.for_fps(2, 30, now), 2);
        assert_eq!(r.for_fps(2, 15, now), 1);
        assert_eq!(
            r.for_fps(2, 8, now),
            0,
            "7.5 frames/s is within the slack of 8"
        );
        assert_eq!(r.for_fps(2, 5, now), 0);
        assert_eq!(r.for_fps(0, 20, now), 2);
        assert_eq!(r.for_fps(2, 60, now), 2, "more than there is: everything");
        // Nothing measured on rank 1: everything.
        assert_eq!(r.for_fps(1, 5, now), 2);
        // Layer 2 stops: the top is 1.
        let later = now + Duration::from_secs(2);
        r.frame(2, 0, later);
        r.frame(2, 1, later);
        assert_eq!(r.top(later), 1);
        assert_eq!(r.for_fps(2, 30, later), 1);
        // A track without temporal layers.
        let mut plain = Rates::default();
        plain.frame(0, 0, t0);
        assert_eq!(plain.top(t0), 0);
        assert_eq!(plain.for_fps(0, 5, t0), 0);
    }

    #[test]
    fn down_at_once_up_at_a_switching_point() {
        let mut f = Filter::default();
        // Starts at the target.
        assert!(f.forward(frame(0, UpTo::Any), 2));
        assert!(f.forward(frame(2, UpTo::None), 2));
        // Down to 0: layers 1 and 2 stop at once.
        assert!(!f.forward(frame(1, UpTo::Own), 0));
        assert!(!f.forward(frame(2, UpTo::None), 0));
        assert!(f.forward(frame(0, UpTo::None), 0));
        assert_eq!(f.current(), Some(0));
        // Up to 2: not on a frame that does not allow it.
        assert!(!f.forward(frame(2, UpTo::None), 2));
        assert!(!f.forward(frame(1, UpTo::None), 2));
        assert_eq!(f.current(), Some(0));
        // A VP8 layer-sync frame of layer 1: up to 1, not yet 2.
        assert!(f.forward(frame(1, UpTo::Own), 2));
        assert_eq!(f.current(), Some(1));
        assert!(!f.forward(frame(2, UpTo::None), 2));
        // A sync frame above the target does not take it past the target.
        let mut g = Filter::default();
        assert!(g.forward(frame(0, UpTo::Any), 0));
        assert!(!g.forward(frame(2, UpTo::Own), 1));
        assert_eq!(g.current(), Some(0));
        // A layer-0 frame of VP9/AV1 (or a key frame) allows any layer.
        assert!(f.forward(frame(0, UpTo::Any), 2));
        assert!(f.forward(frame(2, UpTo::None), 2));
        assert_eq!(f.current(), Some(2));
    }

    #[test]
    fn av1_temporal_ids_come_from_the_extension_headers() {
        // A sequence header without extension, then a frame OBU with temporal id 2, spatial 1.
        let unit = [
            0x0a,
            0x01,
            0xee,
            0x36,
            (2 << 5) | (1 << 3),
            0x02,
            0x11,
            0x22,
        ];
        assert_eq!(av1_temporal_id(&unit), 2);
        assert_eq!(av1_temporal_id(&unit[..3]), 0, "no extension header");
        // Truncated: the whole OBUs before it count, nothing panics.
        assert_eq!(av1_temporal_id(&unit[..5]), 0);
        assert_eq!(av1_temporal_id(&[&unit[..], &[0x36, 1 << 5]].concat()), 2);
        assert_eq!(av1_temporal_id(&[0x36]), 0);
        assert_eq!(av1_temporal_id(&[]), 0);
    }
}
