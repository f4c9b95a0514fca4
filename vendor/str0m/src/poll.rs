//! Readiness signalling threaded through the component tree.
//!
//! Everything below [`Rtc`][crate::Rtc] forms a tree, and both events and new
//! timeouts bubble up from the leaves. To avoid re-walking a quiescent tree on
//! every `poll_output`, each path that takes `&mut` access to a sub-component
//! is handed an armed [`Wake`] guard, threaded down like `&mut` state.
//!
//! A [`Wake`] defaults to re-polling *everything*: left untouched it signals
//! both a pending event drain and a timeout recompute. A component narrows it
//! locally — [`Wake::no_events`] / [`Wake::no_timeout`] — when it knows less
//! changed. The guard folds its (possibly narrowed) signal into the owning
//! [`Readiness`] on drop.
//!
//! The direction is deliberate: the safe default is to re-poll, and narrowing
//! is an opt-in optimization owned by the component that performed the
//! mutation. A forgotten narrowing or an over-broad wake costs at most one redundant
//! poll; it can never drop output. No component names another's scope, and
//! `Rtc` holds no knowledge of which mutation affects what.
//!
//! The app-facing API wrappers ([`DirectApi`][crate::change::DirectApi],
//! [`SdpApi`][crate::change::SdpApi], [`Channel`][crate::channel::Channel],
//! [`Bwe`][crate::bwe::Bwe]) hold an [`RtcMut`] instead of `&mut Rtc`. It arms
//! the readiness on *mutable* deref only, so a `&mut self` method that mutates
//! re-polls the tree while a `&self` reader never does — and neither has to
//! remember to call anything.

use std::ops::{Deref, DerefMut};

use crate::Rtc;

/// A `&mut Rtc` handle that re-polls the tree when it is used mutably.
///
/// Change detection, à la a dirty-flag on mutable access: `deref` is a plain
/// read and never arms; `deref_mut` arms both halves (the safe default).
/// Because a `&self` method can only reach `deref` and a mutating `&mut self`
/// method reaches `deref_mut`, "mutation re-polls, reads don't" is enforced by
/// the borrow checker — a new method can't forget, and a read-only method
/// can't accidentally arm.
///
/// Deliberately has no `Drop`: the API wrappers are held in `let` bindings
/// across other `Rtc` use, and a destructor would extend their borrow to the
/// end of scope. Arming therefore happens eagerly on the mutable access.
///
/// When a mutation only affects one half of the re-poll — and especially when
/// that isn't known until the mutation is underway — take it through
/// [`RtcMut::mutate`] and narrow the returned [`Mutation`] guard.
pub(crate) struct RtcMut<'a> {
    rtc: &'a mut Rtc,
}

impl<'a> RtcMut<'a> {
    pub(crate) fn new(rtc: &'a mut Rtc) -> Self {
        RtcMut { rtc }
    }

    /// Begin a mutation whose re-poll can be narrowed *after the fact*.
    ///
    /// The returned [`Mutation`] derefs to `Rtc`, so mutate through it, then
    /// (optionally, conditionally) call [`Mutation::no_events`] /
    /// [`Mutation::no_timeout`]. It folds its own — per-operation, never shared
    /// — signal into the readiness when it drops.
    ///
    /// Plain `&mut *` (via [`DerefMut`]) is the shorthand for "arm both": it's
    /// what methods that don't narrow, or that return a `&mut` borrowed from
    /// the tree (which can't outlive a guard), use instead.
    pub(crate) fn mutate(&mut self) -> Mutation<'_> {
        Mutation {
            rtc: self.rtc,
            events: true,
            timeout: true,
        }
    }
}

impl Deref for RtcMut<'_> {
    type Target = Rtc;

    fn deref(&self) -> &Rtc {
        self.rtc
    }
}

impl DerefMut for RtcMut<'_> {
    fn deref_mut(&mut self) -> &mut Rtc {
        self.rtc.readiness.wake();
        self.rtc
    }
}

/// A single mutation in progress, obtained from [`RtcMut::mutate`].
///
/// Derefs to `Rtc` for the actual change. Armed for both halves by default;
/// narrow with [`Mutation::no_events`] / [`Mutation::no_timeout`] at any point
/// before it drops — including conditionally, once the mutation has revealed
/// which half it touched. Folds the (possibly narrowed) signal into the
/// readiness on drop.
///
/// The signal is private to this one guard, so narrowing here can never
/// interfere with another method call's decision regardless of call order —
/// the property a long-lived shared guard could not offer.
pub(crate) struct Mutation<'a> {
    rtc: &'a mut Rtc,
    events: bool,
    timeout: bool,
}

impl Mutation<'_> {
    /// Assert this mutation queued no event or transmit.
    pub(crate) fn no_events(&mut self) {
        self.events = false;
    }

    /// Assert this mutation moved no timer.
    pub(crate) fn no_timeout(&mut self) {
        self.timeout = false;
    }
}

impl Deref for Mutation<'_> {
    type Target = Rtc;

    fn deref(&self) -> &Rtc {
        self.rtc
    }
}

impl DerefMut for Mutation<'_> {
    fn deref_mut(&mut self) -> &mut Rtc {
        self.rtc
    }
}

impl Drop for Mutation<'_> {
    fn drop(&mut self) {
        let mut wake = self.rtc.readiness.wake();
        if !self.events {
            wake.no_events();
        }
        if !self.timeout {
            wake.no_timeout();
        }
    }
}

/// The accumulated re-poll signal owned by [`Rtc`][crate::Rtc].
///
/// `poll_output` reads it to decide whether to walk the event pipeline and
/// whether to recompute the next timeout, clearing each half once it has
/// proven that part of the tree quiescent.
#[derive(Debug)]
pub(crate) struct Readiness {
    events: bool,
    timeout: bool,
    /// Parloir patch: the last pass of `poll_output` found every event source empty
    /// and nothing has asked for events since; only datagrams can be pending.
    quiet: bool,
    /// Parloir patch: only the pacer's and the estimator's timeouts may have moved (see
    /// [`Wake::pacer_only`]); the others computed with the last timeout still hold.
    pacer: bool,
}

impl Readiness {
    /// A fresh instance must poll the whole tree once.
    pub(crate) fn armed() -> Self {
        Readiness {
            events: true,
            timeout: true,
            quiet: false,
            pacer: true,
        }
    }

    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet
    }

    pub(crate) fn set_quiet(&mut self) {
        self.quiet = true;
    }

    pub(crate) fn clear_quiet(&mut self) {
        self.quiet = false;
    }

    pub(crate) fn wants_events(&self) -> bool {
        self.events
    }

    pub(crate) fn wants_timeout(&self) -> bool {
        self.timeout
    }

    pub(crate) fn clear_events(&mut self) {
        self.events = false;
    }

    pub(crate) fn clear_timeout(&mut self) {
        self.timeout = false;
        self.pacer = false;
    }

    /// Parloir patch: whether the pacer's and the estimator's timeouts need recomputing.
    pub(crate) fn wants_pacer_timeout(&self) -> bool {
        self.pacer
    }

    /// Hand out an armed guard for a mutable descent into the tree.
    pub(crate) fn wake(&mut self) -> Wake<'_> {
        Wake {
            readiness: self,
            events: true,
            timeout: true,
            datagrams_only: false,
            pacer: false,
        }
    }
}

/// An armed guard threaded into a component's mutating methods.
///
/// Narrowed locally by the component and folded into [`Readiness`] on drop.
/// See the [module docs][self].
///
/// Dropping it immediately (e.g. `self.rtc.readiness.wake();`) is the
/// conservative default: it re-polls everything. Narrow first to do less.
pub(crate) struct Wake<'a> {
    readiness: &'a mut Readiness,
    events: bool,
    timeout: bool,
    /// Parloir patch: what was queued is datagrams only (see `datagrams_only`).
    datagrams_only: bool,
    /// Parloir patch: only the pacer's and the estimator's timers moved (see `pacer_only`).
    pacer: bool,
}

impl Wake<'_> {
    /// Assert this path queued no event or transmit, so the event pipeline
    /// need not be walked on its behalf.
    pub(crate) fn no_events(&mut self) {
        self.events = false;
    }

    /// Assert this path did not move any timer, so the next timeout need not
    /// be recomputed on its behalf.
    pub(crate) fn no_timeout(&mut self) {
        self.timeout = false;
    }

    /// Parloir patch: assert this path queued datagrams of the session and no event, so
    /// `poll_output` must run, but a quiet tree stays quiet (its event sources are still
    /// empty): the datagrams go out through `poll_datagram_output`.
    pub(crate) fn datagrams_only(&mut self) {
        self.events = true;
        self.datagrams_only = true;
    }

    /// Parloir patch: assert this path moved no timer but the pacer's and the estimator's, so
    /// the next timeout recomputes those two only.
    pub(crate) fn pacer_only(&mut self) {
        self.timeout = false;
        self.pacer = true;
    }
}

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.readiness.events |= self.events;
        self.readiness.timeout |= self.timeout;
        self.readiness.pacer |= self.pacer;
        // Parloir patch: anything that may have queued an event ends a quiet spell.
        if self.events && !self.datagrams_only {
            self.readiness.quiet = false;
        }
    }
}

#[cfg(test)]
impl Readiness {
    pub(crate) fn idle() -> Self {
        Self {
            events: false,
            timeout: false,
            quiet: false,
            pacer: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::bwe::Bitrate;
    use crate::crypto::dtls::{KeyingMaterial, SrtpProfile};
    use crate::media::MediaKind;
    use crate::{Input, Output};
    use std::time::Instant;

    fn idle_rtc() -> Rtc {
        idle_rtc_with(false)
    }

    fn idle_rtc_with(raw_packets: bool) -> Rtc {
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .enable_bwe(Some(Bitrate::kbps(300)))
            .enable_raw_packets(raw_packets)
            .build(now);
        let profile = SrtpProfile::AEAD_AES_128_GCM;
        let mat = KeyingMaterial::new(&vec![0; profile.keying_material_len()]);
        rtc.session
            .set_keying_material(mat, crate::crypto::test_default_provider(), profile, true);
        rtc.direct_api()
            .declare_media("vid".into(), MediaKind::Video);
        rtc.direct_api()
            .declare_stream_tx(42.into(), None, "vid".into(), None);
        rtc.handle_input(Input::Timeout(now)).unwrap();
        while !matches!(rtc.poll_output().unwrap(), Output::Timeout(_)) {}
        assert!(!rtc.readiness.wants_events());
        assert!(!rtc.readiness.wants_timeout());
        rtc
    }

    #[test]
    fn readiness_bwe_set_bitrate_only_wakes_timeout() {
        let mut rtc = idle_rtc();
        rtc.bwe().set_bitrate(Bitrate::kbps(100), Bitrate::mbps(2));
        assert!(!rtc.readiness.wants_events());
        assert!(rtc.readiness.wants_timeout());
        assert!(
            rtc.session.poll_event().is_none(),
            "no hidden event behind the narrowed flag"
        );
        let expected = rtc.poll_timeout();
        assert!(matches!(rtc.poll_output().unwrap(), Output::Timeout(at) if at == expected));
    }

    #[test]
    fn readiness_bwe_reset_only_wakes_timeout() {
        let mut rtc = idle_rtc();
        rtc.bwe().reset(Bitrate::kbps(900));
        assert!(!rtc.readiness.wants_events());
        assert!(rtc.readiness.wants_timeout());
        assert!(
            rtc.session.poll_event().is_none(),
            "reset produces estimates on a later timeout"
        );
        let expected = rtc.poll_timeout();
        assert!(matches!(rtc.poll_output().unwrap(), Output::Timeout(at) if at == expected));
    }

    #[test]
    fn readiness_outgoing_app_feedback_only_wakes_events() {
        let mut rtc = idle_rtc();
        let before = rtc.session.poll_timeout();
        rtc.direct_api()
            .send_app_specific_feedback(42.into(), 43.into(), vec![1, 2, 3, 4]);
        assert!(rtc.readiness.wants_events());
        assert!(!rtc.readiness.wants_timeout());
        assert_eq!(rtc.session.poll_timeout(), before);
        assert!(
            rtc.session.poll_datagram(rtc.last_now).is_some(),
            "queued feedback must be sendable without a timeout"
        );
    }

    #[test]
    fn readiness_api_narrowing_preserves_other_mutations() {
        for feedback_first in [false, true] {
            let mut rtc = idle_rtc();
            if feedback_first {
                rtc.direct_api()
                    .send_app_specific_feedback(42.into(), 43.into(), vec![1, 2, 3, 4]);
                rtc.bwe().reset(Bitrate::kbps(900));
            } else {
                rtc.bwe().reset(Bitrate::kbps(900));
                rtc.direct_api()
                    .send_app_specific_feedback(42.into(), 43.into(), vec![1, 2, 3, 4]);
            }
            assert!(rtc.readiness.wants_events());
            assert!(rtc.readiness.wants_timeout());
        }
    }

    /// An `Rtc` with a send address, as after ICE nominated a pair.
    fn sending_rtc(raw_packets: bool) -> Rtc {
        let mut rtc = idle_rtc_with(raw_packets);
        rtc.send_addr = Some(crate::SendAddr {
            proto: crate::net::Protocol::Udp,
            source: "192.0.2.1:5000".parse().unwrap(),
            destination: "192.0.2.2:6000".parse().unwrap(),
        });
        rtc
    }

    fn feedback(rtc: &mut Rtc) {
        rtc.direct_api()
            .send_app_specific_feedback(42.into(), 43.into(), vec![1, 2, 3, 4]);
    }

    // Parloir patch 11.
    #[test]
    fn a_pass_that_finds_no_event_makes_the_tree_quiet_until_a_wake() {
        let mut rtc = sending_rtc(false);
        feedback(&mut rtc);
        assert!(!rtc.readiness.is_quiet(), "an event-arming mutation ends quiet");
        assert!(matches!(rtc.poll_output().unwrap(), Output::Transmit(_)));
        assert!(rtc.readiness.is_quiet(), "every event source was found empty");
        assert!(rtc.readiness.wants_events(), "a burst may still hold datagrams");

        // A mutation that may queue an event in the middle of a burst ends the quiet
        // spell, so the next poll walks every source again.
        feedback(&mut rtc);
        assert!(!rtc.readiness.is_quiet());
        assert!(matches!(rtc.poll_output().unwrap(), Output::Transmit(_)));
        assert!(matches!(rtc.poll_output().unwrap(), Output::Timeout(_)));
        assert!(!rtc.readiness.wants_events());

        // One that only moves a timer keeps it.
        rtc.bwe().reset(Bitrate::kbps(900));
        assert!(rtc.readiness.is_quiet());
        assert!(matches!(rtc.poll_output().unwrap(), Output::Timeout(_)));
    }

    // Parloir patch 13.
    #[test]
    fn a_frame_written_with_now_goes_out_on_the_next_poll_without_a_timeout() {
        use crate::format::Codec;
        use crate::rtp_::{Frequency, MediaTime};
        let now = Instant::now();
        // No bandwidth estimation: the null pacer.
        let mut rtc = Rtc::builder().build(now);
        let profile = SrtpProfile::AEAD_AES_128_GCM;
        let mat = KeyingMaterial::new(&vec![0; profile.keying_material_len()]);
        rtc.session
            .set_keying_material(mat, crate::crypto::test_default_provider(), profile, true);
        rtc.direct_api()
            .declare_media("vid".into(), MediaKind::Video);
        rtc.direct_api()
            .declare_stream_tx(42.into(), None, "vid".into(), None);
        rtc.send_addr = Some(crate::SendAddr {
            proto: crate::net::Protocol::Udp,
            source: "192.0.2.1:5000".parse().unwrap(),
            destination: "192.0.2.2:6000".parse().unwrap(),
        });
        rtc.handle_input(Input::Timeout(now)).unwrap();
        while !matches!(rtc.poll_output().unwrap(), Output::Timeout(_)) {}
        let pt = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
            .unwrap();
        let frame = |n: u64| (MediaTime::new(n * 3000, Frequency::NINETY_KHZ), vec![0x10u8; 3000]);
        let drain = |rtc: &mut Rtc| {
            let mut sent = 0;
            loop {
                match rtc.poll_output().unwrap() {
                    Output::Transmit(_) => sent += 1,
                    Output::Timeout(t) => return (sent, t),
                    Output::Event(_) => {}
                }
            }
        };

        // With the time: packetized at once, sent on the next polls; the tree stays quiet.
        let quiet = rtc.readiness.is_quiet();
        let (time, data) = frame(1);
        rtc.writer("vid".into())
            .unwrap()
            .now(now)
            .write(pt, now, time, data)
            .unwrap();
        assert_eq!(rtc.readiness.is_quiet(), quiet, "only datagrams were queued");
        assert!(
            !rtc.readiness.wants_timeout(),
            "no timer moved: the stream's first timeout ran before"
        );
        assert!(rtc.session.payload_pending.is_empty(), "nothing left to packetize");
        let (sent, _) = drain(&mut rtc);
        assert!(sent >= 3, "a 3000-byte frame is three packets or more: {sent}");

        // Parloir patch 20: packetized at write time, sent with the write's time. Two
        // frames written 30 ms apart with no timeout between: their abs-send-time (6.18
        // fixed-point seconds, the extension the direct API's default map puts at id 2) are
        // 30 ms apart, not both the time of the last timeout.
        let abs_send_time = |rtc: &mut Rtc, at: Instant, n: u64| {
            let (time, data) = frame(n);
            rtc.writer("vid".into())
                .unwrap()
                .now(at)
                .write(pt, at, time, data)
                .unwrap();
            let mut first = None;
            loop {
                match rtc.poll_output().unwrap() {
                    Output::Transmit(t) if first.is_none() => first = Some(t.contents.to_vec()),
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
            let p = first.expect("a datagram");
            // One-byte extensions after the 12-byte header and the 0xBEDE word.
            assert_eq!(&p[12..14], &[0xBE, 0xDE]);
            let words = u16::from_be_bytes([p[14], p[15]]) as usize;
            let mut i = 16;
            while i < 16 + 4 * words {
                let (id, len) = (p[i] >> 4, (p[i] & 0xF) as usize + 1);
                if id == 2 {
                    return u32::from_be_bytes([0, p[i + 1], p[i + 2], p[i + 3]]);
                }
                i += 1 + len.min(16);
                while i < p.len() && p[i] == 0 {
                    i += 1;
                }
            }
            panic!("no abs-send-time in {p:?}");
        };
        let later = now + std::time::Duration::from_millis(30);
        let a = abs_send_time(&mut rtc, now, 10);
        let b = abs_send_time(&mut rtc, later, 11);
        let apart = b.wrapping_sub(a) & 0xFF_FFFF;
        // 30 ms is 7 864 units of 1/262 144 s.
        assert!((7_860..=7_868).contains(&apart), "{a} {b}: {apart}");

        // Without it: nothing before the packetizing timeout, as before.
        let now = later;
        let (time, data) = frame(2);
        rtc.writer("vid".into())
            .unwrap()
            .write(pt, now, time, data)
            .unwrap();
        let (sent, at) = drain(&mut rtc);
        assert_eq!(sent, 0);
        assert!(at <= now, "the packetizing timeout is due");
        rtc.handle_input(Input::Timeout(now)).unwrap();
        assert!(drain(&mut rtc).0 >= 3);

        // Parloir patch 34: a frame written with the time while another waits for the
        // packetizing timeout is not packetized past it: it waits too, and the two go out
        // in the order they were written (RTP timestamps, in the clear in the header).
        for (n, with_now) in [(3, false), (4, true)] {
            let (time, data) = frame(n);
            let writer = rtc.writer("vid".into()).unwrap();
            let writer = if with_now { writer.now(now) } else { writer };
            writer.write(pt, now, time, data).unwrap();
        }
        let collect = |rtc: &mut Rtc, stamps: &mut Vec<u32>| loop {
            match rtc.poll_output().unwrap() {
                // RTP only: RTCP's second byte is 192 to 223 (RFC 5761).
                Output::Transmit(t) if !(192..=223).contains(&t.contents[1]) => {
                    let p = &t.contents[..];
                    stamps.push(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                Output::Transmit(_) => {}
                Output::Timeout(t) => return t,
                Output::Event(_) => {}
            }
        };
        let mut stamps = Vec::new();
        assert!(collect(&mut rtc, &mut stamps) <= now, "the packetizing timeout is due");
        assert!(stamps.is_empty(), "nothing packetized before it: {stamps:?}");
        for _ in 0..4 {
            rtc.handle_input(Input::Timeout(now)).unwrap();
            collect(&mut rtc, &mut stamps);
        }
        assert!(stamps.len() >= 6, "two frames of three packets or more: {stamps:?}");
        // RTP time may wrap: each packet's is at or after the one before it.
        let ordered = stamps.windows(2).all(|w| w[1].wrapping_sub(w[0]) < 1 << 31);
        assert!(ordered, "in the order written: {stamps:?}");
        assert_ne!(stamps.first(), stamps.last(), "both frames: {stamps:?}");
    }

    // Parloir patch 22.
    #[test]
    fn the_pacer_shortcuts_send_what_whole_timeouts_send() {
        use crate::format::Codec;
        use crate::rtp_::{Frequency, MediaTime};
        use std::time::Duration;
        let start = Instant::now();
        // Three seconds of 30 frames/s, 1 to 3 packets each, through the leaky-bucket pacer
        // (estimation on, from 300 kbit/s: it paces, probes, pads). Every datagram (RTP and
        // RTCP, byte for byte) and every event goes in the log, in order, with its time.
        let run = |whole_timeouts: bool| {
            // The same sequence numbers and payload-picture ids in both runs.
            fastrand::seed(7);
            let mut rtc = Rtc::builder()
                .enable_bwe(Some(Bitrate::kbps(300)))
                .build(start);
            rtc.session.shortcuts.whole_timeouts = whole_timeouts;
            let profile = SrtpProfile::AEAD_AES_128_GCM;
            let mat = KeyingMaterial::new(&vec![0; profile.keying_material_len()]);
            rtc.session
                .set_keying_material(mat, crate::crypto::test_default_provider(), profile, true);
            rtc.direct_api()
                .declare_media("vid".into(), MediaKind::Video);
            rtc.direct_api()
                .declare_stream_tx(42.into(), None, "vid".into(), None);
            rtc.send_addr = Some(crate::SendAddr {
                proto: crate::net::Protocol::Udp,
                source: "192.0.2.1:5000".parse().unwrap(),
                destination: "192.0.2.2:6000".parse().unwrap(),
            });
            let pt = rtc
                .codec_config()
                .params()
                .iter()
                .find(|p| p.spec().codec == Codec::Vp8)
                .map(|p| p.pt())
                .unwrap();
            let mut log = Vec::new();
            let mut now = start;
            let mut next_frame = start;
            let mut n = 0u64;
            rtc.handle_input(Input::Timeout(now)).unwrap();
            let mut turns = 0;
            while now < start + Duration::from_secs(3) {
                // A pacer that never lets its packets out would ask for timeouts at the same
                // instant for ever.
                turns += 1;
                assert!(turns < 100_000, "stuck at {:?}", now - start);
                let at = loop {
                    match rtc.poll_output().unwrap() {
                        Output::Transmit(t) => {
                            log.push(format!("{:?} {:?}", now - start, &t.contents[..]))
                        }
                        Output::Event(e) => log.push(format!("{:?} {e:?}", now - start)),
                        Output::Timeout(t) => break t,
                    }
                };
                if next_frame <= at {
                    now = next_frame;
                    let size = 1100 * (1 + n as usize % 3);
                    let mut data = vec![0x11u8; size];
                    data[0] = if n % 30 == 0 { 0x10 } else { 0x11 };
                    let time = MediaTime::new(n * 3000, Frequency::NINETY_KHZ);
                    rtc.writer("vid".into())
                        .unwrap()
                        .now(now)
                        .write(pt, now, time, data)
                        .unwrap();
                    n += 1;
                    next_frame = start + Duration::from_millis(33) * n as u32;
                } else {
                    now = at.max(now);
                    rtc.handle_input(Input::Timeout(now)).unwrap();
                }
            }
            (log, std::mem::take(&mut rtc.session.shortcuts))
        };
        let (with, used) = run(false);
        let (without, unused) = run(true);
        assert!(used.pacer_timeouts > 50, "{used:?}");
        assert_eq!(unused.pacer_timeouts, 0);
        let datagrams = without.iter().filter(|l| l.contains(" [")).count();
        assert!(datagrams > 150, "{datagrams} datagrams");
        assert_eq!(with.len(), without.len());
        for (i, (a, b)) in with.iter().zip(&without).enumerate() {
            assert_eq!(a, b, "entry {i} of the log");
        }
    }

    /// Parloir patch 35: the leaky bucket's bursts and frames packetized at write time send
    /// what a timeout after each packet and each frame sent: the same packets of each stream,
    /// in the same order, at the same times (within the microsecond steps of those timeouts),
    /// with far fewer timeouts.
    #[test]
    fn the_leaky_buckets_bursts_send_what_a_timeout_per_packet_sends() {
        use crate::format::Codec;
        use crate::pacer::PacerImpl;
        use crate::rtp_::{Frequency, MediaTime};
        use std::time::Duration;
        let start = Instant::now();
        // Three seconds of 30 frames/s, 1 to 6 packets each, from two streams, through the
        // leaky bucket (estimation on from 2 Mbit/s: no probe, no padding while it sends).
        let run = |shortcuts: bool| {
            fastrand::seed(7);
            let mut rtc = Rtc::builder().enable_bwe(Some(Bitrate::mbps(2))).build(start);
            if let PacerImpl::LeakyBucket(pacer) = &mut rtc.session.pacer {
                pacer.no_shortcuts = !shortcuts;
            }
            let profile = SrtpProfile::AEAD_AES_128_GCM;
            let mat = KeyingMaterial::new(&vec![0; profile.keying_material_len()]);
            rtc.session
                .set_keying_material(mat, crate::crypto::test_default_provider(), profile, true);
            for (mid, ssrc) in [("a", 42), ("b", 43)] {
                rtc.direct_api().declare_media(mid.into(), MediaKind::Video);
                rtc.direct_api()
                    .declare_stream_tx(ssrc.into(), None, mid.into(), None);
            }
            rtc.send_addr = Some(crate::SendAddr {
                proto: crate::net::Protocol::Udp,
                source: "192.0.2.1:5000".parse().unwrap(),
                destination: "192.0.2.2:6000".parse().unwrap(),
            });
            let pt = rtc
                .codec_config()
                .params()
                .iter()
                .find(|p| p.spec().codec == Codec::Vp8)
                .map(|p| p.pt())
                .unwrap();
            // Each RTP packet sent (SSRC, sequence number) and when.
            let mut sent: Vec<(u32, u16, Duration)> = Vec::new();
            let mut timeouts = 0;
            let mut now = start;
            let mut next_frame = start;
            let mut n = 0u64;
            rtc.handle_input(Input::Timeout(now)).unwrap();
            while now < start + Duration::from_secs(3) {
                assert!(timeouts < 100_000, "stuck at {:?}", now - start);
                let at = loop {
                    match rtc.poll_output().unwrap() {
                        Output::Transmit(t) => {
                            let p = &t.contents[..];
                            // RTP, not RTCP (whose second byte, 200-204, would read as
                            // payload types 72-76 with the marker bit).
                            if !(200..=204).contains(&p[1]) {
                                let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
                                let seq = u16::from_be_bytes([p[2], p[3]]);
                                sent.push((ssrc, seq, now - start));
                            }
                        }
                        Output::Event(_) => {}
                        Output::Timeout(t) => break t,
                    }
                };
                if next_frame <= at {
                    now = next_frame;
                    for (i, mid) in ["a", "b"].into_iter().enumerate() {
                        let size = 1100 * (1 + (n as usize + i) % 6);
                        let mut data = vec![0x11u8; size];
                        data[0] = if n.is_multiple_of(30) { 0x10 } else { 0x11 };
                        let time = MediaTime::new(n * 3000, Frequency::NINETY_KHZ);
                        rtc.writer(mid.into())
                            .unwrap()
                            .now(now)
                            .write(pt, now, time, data)
                            .unwrap();
                    }
                    n += 1;
                    next_frame = start + Duration::from_millis(33) * n as u32;
                } else {
                    now = at.max(now);
                    rtc.handle_input(Input::Timeout(now)).unwrap();
                    timeouts += 1;
                }
            }
            (sent, timeouts)
        };
        let (with, with_timeouts) = run(true);
        let (without, without_timeouts) = run(false);
        assert!(without.len() > 500, "{} packets", without.len());
        assert_eq!(with.len(), without.len());
        // Stream by stream: which of two streams goes first at one instant may differ (the
        // timeouts' microseconds made their last sends distinct), what each sends and when not.
        for ssrc in [42, 43] {
            let of = |log: &[(u32, u16, Duration)]| -> Vec<(u16, Duration)> {
                log.iter()
                    .filter(|p| p.0 == ssrc)
                    .map(|p| (p.1, p.2))
                    .collect()
            };
            let (a, b) = (of(&with), of(&without));
            assert_eq!(a.len(), b.len());
            for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                assert_eq!(a.0, b.0, "SSRC {ssrc}, packet {i}");
                let apart = a.1.abs_diff(b.1);
                assert!(
                    apart < Duration::from_millis(1),
                    "SSRC {ssrc}, packet {i}: {apart:?} apart"
                );
            }
        }
        assert!(
            with_timeouts * 4 < without_timeouts,
            "{with_timeouts} timeouts against {without_timeouts}"
        );
    }

    #[test]
    fn raw_packet_copies_end_a_quiet_spell_at_each_datagram() {
        let mut rtc = sending_rtc(true);
        feedback(&mut rtc);
        assert!(matches!(rtc.poll_output().unwrap(), Output::Transmit(_)));
        assert!(
            !rtc.readiness.is_quiet(),
            "a sent packet may have queued a RawPacket event"
        );
    }

    #[test]
    fn only_a_wake_for_events_ends_quiet() {
        for narrow in [false, true] {
            let mut readiness = Readiness::idle();
            readiness.set_quiet();
            {
                let mut wake = readiness.wake();
                if narrow {
                    wake.no_events();
                }
            }
            assert_eq!(readiness.is_quiet(), narrow);
        }
    }

    #[test]
    fn narrowing_preserves_other_operations() {
        for events in [false, true] {
            for timeout in [false, true] {
                let mut readiness = Readiness {
                    events,
                    timeout,
                    quiet: false,
                    pacer: false,
                };
                {
                    let mut wake = readiness.wake();
                    wake.no_events();
                    wake.no_timeout();
                }
                assert_eq!(readiness.wants_events(), events);
                assert_eq!(readiness.wants_timeout(), timeout);
            }
        }
    }
}
