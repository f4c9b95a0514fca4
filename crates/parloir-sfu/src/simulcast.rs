//! Simulcast layer choice per subscriber, and seamless switching between layers.
//!
//! A publisher sends up to three encodings of its camera (rids `q`, `h`, `f` as livekit-client
//! names them, or `l`, `m`, `h`). Each subscriber asks for a size or quality per track with
//! `UpdateTrackSettings` (adaptive stream sends the size of the tile showing it); the SFU forwards
//! one layer to it: the highest that is flowing and not above what it asked for.
//!
//! Forwarding is frame-level (str0m packetises each forwarded frame for the subscriber, with the
//! subscriber stream's own SSRC, sequence numbers and VP8 picture ids), so a switch needs only two
//! things to look like one continuous stream: it happens on a key frame of the new layer (the SFU
//! asks the publisher for one), and RTP timestamps continue from the old layer's (each layer has
//! its own random timestamp base).

use std::time::{Duration, Instant};

use livekit_protocol as proto;
use str0m::media::{MediaTime, Rid};

/// A layer counts as flowing while its last frame is younger than this.
const ACTIVE_WINDOW: Duration = Duration::from_millis(1000);

/// The layers of one simulcast track, as frames arrive.
#[derive(Debug, Default)]
pub(crate) struct Layers {
    /// Each rid seen, with the instant it stops counting as flowing (its last frame's arrival
    /// and [`ACTIVE_WINDOW`]): compared with `now` for each frame and subscriber, an instant
    /// cheaper to compare than a time gone by is to work out.
    seen: Vec<(Rid, Instant)>,
    /// The rids seen name the layers `l`/`m`/`h` (an `l` or `m`, and no `q` or `f`): `h` is
    /// then the top layer rather than livekit-client's middle one. Kept as rids come, since
    /// `rank` runs for each frame and subscriber.
    lmh: bool,
}

/// A one-letter rid's letter.
fn letter(rid: &Rid) -> Option<u8> {
    match rid.as_bytes() {
        [c] => Some(*c),
        _ => None,
    }
}

impl Layers {
    pub(crate) fn frame(&mut self, rid: Rid, now: Instant) {
        let until = now + ACTIVE_WINDOW;
        match self.seen.iter_mut().find(|(r, _)| *r == rid) {
            Some((_, u)) => *u = until,
            None => {
                self.seen.push((rid, until));
                let any = |names: &[u8]| {
                    self.seen
                        .iter()
                        .any(|(r, _)| letter(r).is_some_and(|c| names.contains(&c)))
                };
                self.lmh = any(b"lm") && !any(b"qf");
            }
        }
    }

    /// Spatial rank of `rid` (0 lowest, 2 highest) by the naming scheme the track uses:
    /// livekit-client's `q`/`h`/`f`, or `l`/`m`/`h`, or `0`/`1`/`2`.
    pub(crate) fn rank(&self, rid: &Rid) -> u8 {
        match letter(rid) {
            Some(b'q' | b'l' | b'0') => 0,
            Some(b'm' | b'1') => 1,
            Some(b'h') if self.lmh => 2,
            Some(b'h') => 1,
            _ => 2,
        }
    }

    /// Whether the track has simulcast layers (any frame with a rid came).
    pub(crate) fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The flowing layers with their ranks, in the order they were first seen.
    pub(crate) fn flowing(&self, now: Instant) -> impl Iterator<Item = (u8, Rid)> + '_ {
        self.seen
            .iter()
            .filter(move |(_, until)| now < *until)
            .map(|(r, _)| (self.rank(r), *r))
    }

    /// The flowing layers, lowest first, with their ranks.
    pub(crate) fn flowing_sorted(&self, now: Instant) -> Vec<(u8, Rid)> {
        let mut out: Vec<(u8, Rid)> = self.flowing(now).collect();
        out.sort_by_key(|(rank, _)| *rank);
        out
    }

    /// The flowing layer of rank `rank`.
    pub(crate) fn flowing_at(&self, rank: u8, now: Instant) -> Option<Rid> {
        self.flowing(now)
            .find(|(r, _)| *r == rank)
            .map(|(_, rid)| rid)
    }

    /// The layer to forward to a subscriber that wants `quality` (0 low, 1 medium, 2 high): the
    /// highest flowing layer not above it, else the lowest flowing one.
    pub(crate) fn choose(&self, quality: u8, now: Instant) -> Option<Rid> {
        self.flowing(now)
            .filter(|(rank, _)| *rank <= quality)
            .max_by_key(|(rank, _)| *rank)
            .or_else(|| self.flowing(now).min_by_key(|(rank, _)| *rank))
            .map(|(_, rid)| rid)
    }
}

/// The quality a subscriber wants for a track: `None` when it turned the track off.
///
/// A size (adaptive stream) picks the smallest published layer at least that wide or high; a
/// quality is taken as is; no settings at all mean the highest, as LiveKit does.
pub(crate) fn wanted_quality(
    settings: Option<&proto::UpdateTrackSettings>,
    published: &[proto::VideoLayer],
) -> Option<u8> {
    let Some(s) = settings else {
        return Some(2);
    };
    if s.disabled || s.quality == proto::VideoQuality::Off as i32 {
        return None;
    }
    if s.width > 0 || s.height > 0 {
        // The narrowest layer that covers the tile (the first published of equal widths),
        // else the widest (the last published of equal widths): what sorting the layers by
        // width would give, without a list for each frame and subscriber.
        let mut fit: Option<&proto::VideoLayer> = None;
        let mut top: Option<&proto::VideoLayer> = None;
        for l in published.iter().filter(|l| l.width > 0) {
            if top.is_none_or(|t| l.width >= t.width) {
                top = Some(l);
            }
            if (l.width >= s.width || l.height >= s.height) && fit.is_none_or(|f| l.width < f.width)
            {
                fit = Some(l);
            }
        }
        if let Some(l) = fit.or(top) {
            return Some(l.quality.clamp(0, 2) as u8);
        }
    }
    Some(s.quality.clamp(0, 2) as u8)
}

/// What to do with a frame for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Forward it with this RTP time.
    Forward(MediaTime),
    /// Drop it.
    Drop,
    /// Drop it, and ask the publisher for a key frame of this layer to switch to.
    NeedKeyFrame(Rid),
}

/// One subscriber's view of one simulcast track.
#[derive(Debug, Default)]
pub(crate) struct Switcher {
    current: Option<Rid>,
    /// Added (wrapping) to the current layer's RTP time.
    offset: u64,
    /// RTP time and arrival of the last frame forwarded.
    last: Option<(MediaTime, Instant)>,
}

impl Switcher {
    /// The layer being forwarded.
    pub(crate) fn current(&self) -> Option<Rid> {
        self.current
    }

    /// Whether it has forwarded anything yet.
    pub(crate) fn started(&self) -> bool {
        self.last.is_some()
    }

    /// Stops forwarding: the next frame forwarded will be a key frame (of whatever layer is
    /// the target then), its timestamps continuing from the last one sent.
    pub(crate) fn pause(&mut self) {
        self.current = None;
    }

    /// Decides for a frame of layer `rid` when `target` is the layer this subscriber should get.
    pub(crate) fn frame(
        &mut self,
        rid: Rid,
        target: Option<Rid>,
        key: bool,
        time: MediaTime,
        now: Instant,
    ) -> Decision {
        let Some(target) = target else {
            return Decision::Drop;
        };
        if self.current == Some(rid) && rid == target {
            return self.forward(time, now);
        }
        if rid == target {
            if !key {
                return Decision::NeedKeyFrame(target);
            }
            // Switch: the new layer's timestamps continue from the last frame sent, advanced by
            // the time that passed.
            self.offset = match self.last {
                Some((last, at)) => {
                    let hz = u64::from(time.denom());
                    let elapsed =
                        now.saturating_duration_since(at).as_micros() as u64 * hz / 1_000_000;
                    let continued = last.numer().wrapping_add(elapsed.max(1));
                    continued.wrapping_sub(time.numer())
                }
                None => 0,
            };
            self.current = Some(rid);
            return self.forward(time, now);
        }
        if self.current == Some(rid) {
            // Still on the old layer, waiting for the target's key frame.
            return self.forward(time, now);
        }
        // A third layer. With nothing forwarded yet, get the target started.
        if self.current.is_none() {
            return Decision::NeedKeyFrame(target);
        }
        Decision::Drop
    }

    /// Decides for a frame of a scalable track (one stream whose frames carry `present` spatial
    /// layers, `svc.rs`) when `target` is the spatial layer this subscriber should get.
    ///
    /// Returns the layer to forward the frame cut down to, with its RTP time (`None`: drop it),
    /// and whether to ask the publisher for a key frame: to start, or to go up a layer (the
    /// lower layers keep flowing meanwhile). Going down takes effect on this frame. A frame that
    /// lacks the current layer (the encoder dropped it for a while) is forwarded with what it
    /// has: what comes back refers only to frames this subscriber got.
    pub(crate) fn spatial_frame(
        &mut self,
        present: u8,
        target: Option<u8>,
        key: bool,
        time: MediaTime,
        now: Instant,
    ) -> (Option<(u8, MediaTime)>, bool) {
        let Some(target) = target else {
            return (None, false);
        };
        let current = self.current.as_ref().map(crate::svc::layer);
        let (layer, want_key) = match current {
            None if !key => return (None, true),
            Some(c) if target > c && !key => (c, true),
            _ => (target, false),
        };
        self.current = Some(crate::svc::rid(layer));
        let top = present.max(1) - 1;
        (Some((layer.min(top), self.advance(time, now))), want_key)
    }

    fn forward(&mut self, time: MediaTime, now: Instant) -> Decision {
        Decision::Forward(self.advance(time, now))
    }

    /// The RTP time to send a frame with, noted as the last one sent.
    fn advance(&mut self, time: MediaTime, now: Instant) -> MediaTime {
        let out = MediaTime::new(time.numer().wrapping_add(self.offset), time.frequency());
        self.last = Some((out, now));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::media::Frequency;

    fn t(n: u64) -> MediaTime {
        MediaTime::new(n, Frequency::NINETY_KHZ)
    }

    #[test]
    fn chooses_the_highest_flowing_layer_not_above_the_wish() {
        let now = Instant::now();
        let mut l = Layers::default();
        for rid in ["q", "h", "f"] {
            l.frame(rid.into(), now);
        }
        assert_eq!(l.choose(0, now), Some("q".into()));
        assert_eq!(l.choose(1, now), Some("h".into()));
        assert_eq!(l.choose(2, now), Some("f".into()));
        // A layer flows for a second after its last frame, not at the second itself.
        let edge = now + ACTIVE_WINDOW;
        assert_eq!(
            l.choose(2, edge - Duration::from_millis(1)),
            Some("f".into())
        );
        assert_eq!(l.choose(2, edge), None);
        assert_eq!(
            l.flowing_sorted(now),
            [(0, "q".into()), (1, "h".into()), (2, "f".into())]
        );
        // f stops (the publisher's encoder dropped it): high falls back to h.
        let later = now + Duration::from_secs(2);
        l.frame("q".into(), later);
        l.frame("h".into(), later);
        assert_eq!(l.choose(2, later), Some("h".into()));
        // Only f flows: even a low wish gets f rather than nothing.
        let mut only_f = Layers::default();
        only_f.frame("f".into(), now);
        assert_eq!(only_f.choose(0, now), Some("f".into()));
        // l/m/h naming: h is the top.
        let mut lmh = Layers::default();
        for rid in ["l", "m", "h"] {
            lmh.frame(rid.into(), now);
        }
        assert_eq!(lmh.choose(2, now), Some("h".into()));
        assert_eq!(lmh.choose(1, now), Some("m".into()));
    }

    #[test]
    fn ranks_follow_the_naming_scheme_as_rids_arrive() {
        let now = Instant::now();
        let ranks = |l: &Layers, rids: &[&str]| -> Vec<u8> {
            rids.iter().map(|r| l.rank(&(*r).into())).collect()
        };
        // livekit-client's q/h/f: h is the middle layer.
        let mut qhf = Layers::default();
        for rid in ["h", "q", "f"] {
            qhf.frame(rid.into(), now);
        }
        assert_eq!(ranks(&qhf, &["q", "h", "f"]), [0, 1, 2]);
        // l/m/h: h is the top once an l or m is seen, whatever came first.
        let mut lmh = Layers::default();
        lmh.frame("h".into(), now);
        assert_eq!(ranks(&lmh, &["h"]), [1]);
        lmh.frame("m".into(), now);
        assert_eq!(ranks(&lmh, &["l", "m", "h"]), [0, 1, 2]);
        // A q or f says livekit-client's naming again.
        lmh.frame("f".into(), now);
        assert_eq!(ranks(&lmh, &["h"]), [1]);
        // Digits; a rid of several letters or an unknown one counts as the top.
        let digits = Layers::default();
        assert_eq!(ranks(&digits, &["0", "1", "2", "hi", "x"]), [0, 1, 2, 2, 2]);
    }

    #[test]
    fn wishes_come_from_sizes_qualities_or_nothing() {
        let layer = |q: proto::VideoQuality, w, h| proto::VideoLayer {
            quality: q as i32,
            width: w,
            height: h,
            ..Default::default()
        };
        let published = [
            layer(proto::VideoQuality::Low, 320, 180),
            layer(proto::VideoQuality::Medium, 640, 360),
            layer(proto::VideoQuality::High, 1280, 720),
        ];
        let size = |w, h| proto::UpdateTrackSettings {
            width: w,
            height: h,
            ..Default::default()
        };
        assert_eq!(wanted_quality(None, &published), Some(2));
        assert_eq!(wanted_quality(Some(&size(320, 180)), &published), Some(0));
        assert_eq!(wanted_quality(Some(&size(400, 225)), &published), Some(1));
        assert_eq!(wanted_quality(Some(&size(1920, 1080)), &published), Some(2));
        let off = proto::UpdateTrackSettings {
            disabled: true,
            ..Default::default()
        };
        assert_eq!(wanted_quality(Some(&off), &published), None);
        let medium = proto::UpdateTrackSettings {
            quality: proto::VideoQuality::Medium as i32,
            ..Default::default()
        };
        assert_eq!(wanted_quality(Some(&medium), &[]), Some(1));
    }

    /// The rule as first written: sort the published layers by width (stably), take the first
    /// that covers the tile, else the widest.
    fn wanted_by_sorting(s: &proto::UpdateTrackSettings, published: &[proto::VideoLayer]) -> u8 {
        let mut layers: Vec<&proto::VideoLayer> =
            published.iter().filter(|l| l.width > 0).collect();
        layers.sort_by_key(|l| l.width);
        match layers.last() {
            Some(top) => {
                let fit = layers
                    .iter()
                    .find(|l| l.width >= s.width || l.height >= s.height)
                    .unwrap_or(top);
                fit.quality.clamp(0, 2) as u8
            }
            None => s.quality.clamp(0, 2) as u8,
        }
    }

    #[test]
    fn a_tile_size_picks_what_sorting_the_layers_would() {
        // Every list of up to three layers from a few widths and heights (ties, unordered,
        // unsized layers included), against tile sizes below, between and above them.
        let dims = [(0, 0), (320, 180), (640, 360), (640, 480), (1280, 720)];
        let mut lists: Vec<Vec<proto::VideoLayer>> = vec![Vec::new()];
        for _ in 0..3 {
            let mut longer = Vec::new();
            for list in &lists {
                for (q, &(width, height)) in dims.iter().enumerate() {
                    let mut l = list.clone();
                    l.push(proto::VideoLayer {
                        quality: (q % 3) as i32 + i32::from(l.len() as u8),
                        width,
                        height,
                        ..Default::default()
                    });
                    longer.push(l);
                }
            }
            lists.extend(longer);
        }
        let tiles = [
            (1, 1),
            (320, 180),
            (400, 225),
            (640, 200),
            (100, 400),
            (1920, 1080),
        ];
        let mut checked = 0;
        for published in &lists {
            for &(width, height) in &tiles {
                let s = proto::UpdateTrackSettings {
                    width,
                    height,
                    quality: proto::VideoQuality::Medium as i32,
                    ..Default::default()
                };
                assert_eq!(
                    wanted_quality(Some(&s), published),
                    Some(wanted_by_sorting(&s, published)),
                    "tile {width}x{height}, layers {published:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 500, "{checked} cases");
    }

    #[test]
    fn switches_on_a_key_frame_with_continuous_timestamps() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let (q, f): (Rid, Rid) = ("q".into(), "f".into());
        let mut s = Switcher::default();
        // Start on q: a delta frame asks for a key frame, the key frame starts the stream.
        assert_eq!(
            s.frame(q, Some(q), false, t(1000), ms(0)),
            Decision::NeedKeyFrame(q)
        );
        assert_eq!(
            s.frame(q, Some(q), true, t(4000), ms(33)),
            Decision::Forward(t(4000))
        );
        assert_eq!(
            s.frame(q, Some(q), false, t(7000), ms(66)),
            Decision::Forward(t(7000))
        );
        // The wish goes up to f: q keeps flowing until f's key frame; f's deltas ask for one.
        assert_eq!(
            s.frame(f, Some(f), false, t(900_000), ms(70)),
            Decision::NeedKeyFrame(f)
        );
        assert_eq!(
            s.frame(q, Some(f), false, t(10_000), ms(100)),
            Decision::Forward(t(10_000))
        );
        // f's key frame 33 ms later: its timestamps (another base) continue from q's.
        let Decision::Forward(out) = s.frame(f, Some(f), true, t(903_000), ms(133)) else {
            panic!("the key frame switches");
        };
        assert_eq!(out.numer(), 10_000 + 33 * 90);
        assert_eq!(s.current(), Some(f));
        assert_eq!(
            s.frame(q, Some(f), false, t(13_000), ms(166)),
            Decision::Drop
        );
        let Decision::Forward(next) = s.frame(f, Some(f), false, t(906_000), ms(166)) else {
            panic!("f flows");
        };
        assert_eq!(next.numer() - out.numer(), 3000);
        // Turned off: nothing.
        assert_eq!(s.frame(f, None, true, t(909_000), ms(200)), Decision::Drop);
    }
}
