//! Each subscriber's video fitted to its link, in the simulation (see `harness/`): send-side
//! bandwidth estimation from TWCC feedback, layers chosen by priority, paused tracks.
//!
//! The bottleneck is a drop-tail queue of [`BUFFER`] bytes in front of the subscriber's address,
//! as cable modems and mobile base stations have (hundreds of kilobytes): what the SFU does
//! once it learns of a drop, rather than the size of the queue, decides whether audio is lost.
//! (No sender learns of a drop before its feedback has come back through the queue; until then
//! it overshoots, and a shallow queue would drop audio whatever the SFU does next.) Publishers send three
//! layers of realistic sizes at 25 frames a second: about 76 kbit/s, 425 kbit/s and
//! 1.6 Mbit/s on the wire, and 57 kbit/s of audio.

mod harness;

use std::time::Duration;

use harness::*;
use parloir_sfu::proto;

/// Bytes the bottleneck queues before it drops.
const BUFFER: usize = 256 * 1024;
const MBIT: u64 = 1_000_000;

fn meeting(seed: u64, publishers: &[&str]) -> Sim {
    meeting_with(Sim::new(seed, 0.0), publishers)
}

/// RUST_LOG=parloir_sfu=debug shows each estimate and stream state, in simulated time.
fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_timer(SimTime)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn meeting_with(mut sim: Sim, publishers: &[&str]) -> Sim {
    trace();
    sim.layer_bytes = [320, 2000, 7600];
    sim.video_every = 2;
    for name in publishers {
        let i = sim.join(name);
        sim.clients[i].simulcast = true;
    }
    let sub = sim.join("sub");
    for i in 0..publishers.len() {
        sim.publish(i);
    }
    // The subscriber publishes too (its uplink is not limited): a client whose subscriber
    // connection carries nothing at all never completes ICE in the harness.
    sim.publish(sub);
    sim
}

fn limit(sim: &mut Sim, who: &str, rate: u64) {
    limit_with(sim, who, rate, BUFFER);
}

fn limit_with(sim: &mut Sim, who: &str, rate: u64, buffer: usize) {
    let (now, to) = (sim.now, sim.client(who).subscriber_addr);
    sim.net.limit(now, to, rate, buffer);
}

/// Sixteen cameras (the first one speaking, with `layer_bytes` when given) and a subscriber
/// that, 250 ms in, shows them all in tiles of `width` x `height`: the simulation and the
/// cameras' track sids.
fn sixteen_cameras(
    seed: u64,
    layer_bytes: Option<[usize; 3]>,
    width: u32,
    height: u32,
) -> (Sim, Vec<String>) {
    let names: Vec<String> = (0..16).map(|i| format!("p{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sim = meeting(seed, &names);
    if let Some(bytes) = layer_bytes {
        sim.layer_bytes = bytes;
    }
    for (i, c) in sim.clients.iter_mut().take(16).enumerate() {
        c.audio_level = Some(if i == 0 { -20 } else { -127 });
    }
    sim.run_for(Duration::from_millis(250));
    let cams: Vec<String> = names.iter().map(|p| sim.track_sid(p, "cam")).collect();
    let session = sim.client("sub").session;
    sim.commands
        .push(parloir_sfu::Command::UpdateTrackSettings {
            session,
            settings: proto::UpdateTrackSettings {
                track_sids: cams.clone(),
                width,
                height,
                ..Default::default()
            },
        });
    (sim, cams)
}

fn frames(sim: &Sim, who: &str, sid: &str) -> Vec<VideoFrame> {
    sim.client(who)
        .video_rx
        .get(sid)
        .cloned()
        .unwrap_or_default()
}

/// Frames a decoder could not decode: not a key frame, and not the next frame of the layer of
/// a decodable frame just before it.
fn undecodable(frames: &[VideoFrame]) -> Vec<(u8, u32)> {
    let mut out = Vec::new();
    let mut chain: Option<(u8, u32)> = None;
    for f in frames {
        if f.key || chain == Some((f.layer, f.counter.wrapping_sub(1))) {
            chain = Some((f.layer, f.counter));
        } else {
            out.push((f.layer, f.counter));
            chain = None;
        }
    }
    out
}

/// Layer switches the receiver could not decode across: the first frame of a new layer that
/// is not a key frame.
fn bad_switches(frames: &[VideoFrame]) -> Vec<(u8, u32)> {
    frames
        .windows(2)
        .filter(|w| w[1].layer != w[0].layer && !w[1].key)
        .map(|w| (w[1].layer, w[1].counter))
        .collect()
}

/// Audio frames missing between the first and last received from `publisher`.
fn audio_gaps(sim: &Sim, who: &str, publisher: &str) -> (usize, Vec<u32>) {
    let mic = sim.track_sid(publisher, "mic");
    let got = sim
        .client(who)
        .frames
        .get(&mic)
        .cloned()
        .unwrap_or_default();
    let (first, last) = (
        got.iter().copied().min().unwrap_or(0),
        got.iter().copied().max().unwrap_or(0),
    );
    (got.len(), missing(&got, first, last))
}

fn participant_sid(sim: &Sim, who: &str) -> String {
    let joined = sim.client(who).joined.as_ref().expect("joined");
    joined.participant.as_ref().expect("its info").sid.clone()
}

/// How many of `cams` reached "sub" in the last 300 ms.
fn flowing(sim: &Sim, cams: &[String]) -> usize {
    cams.iter()
        .filter(|cam| {
            frames(sim, "sub", cam).last().is_some_and(|f| {
                sim.now.saturating_duration_since(f.at) < Duration::from_millis(300)
            })
        })
        .count()
}

fn last_layers(frames: &[VideoFrame], n: usize) -> Vec<u8> {
    frames[frames.len().saturating_sub(n)..]
        .iter()
        .map(|f| f.layer)
        .collect()
}

/// What the subscriber got: the SFU's counters (bytes aside: DTLS signatures vary), each
/// camera's frames (layer, counter) and how many of them came before the link widened, and
/// the stream states it was told.
type Workout = (parloir_sfu::Stats, Vec<Vec<(u8, u32)>>, Vec<usize>, String);

/// A subscriber's allocation at a tick goes through the tiles that took part the time before
/// (in a large meeting most tiles are off and stay so), and through all of them after
/// anything that could bring another in (its settings, a subscription added, opened or
/// removed) and every five seconds. A meeting that moves the allocation about: eight cameras
/// (two speakers taking turns), one of which leaves, and a ninth that comes late on a single
/// connection, tiles of several sizes and tiles turned off, turned on and off again, a link
/// that narrows then widens. With `check`, the SFU checks at each tick that every tile taking
/// part is on its list (`Sfu::set_alloc_check`: it panics otherwise); without, every tick's
/// pass goes through all outs.
fn allocation_workout(check: bool) -> Workout {
    let names: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sim = meeting(21, &names);
    if check {
        sim.sfu_of(0).set_alloc_check(true);
    } else {
        sim.sfu_of(0).set_alloc_full_every(Duration::ZERO);
    }
    for (i, c) in sim.clients.iter_mut().take(8).enumerate() {
        c.audio_level = Some(if i == 0 { -20 } else { -127 });
    }
    sim.run_for(Duration::from_millis(250));
    let mut cams: Vec<String> = names.iter().map(|p| sim.track_sid(p, "cam")).collect();
    let session = sim.client("sub").session;
    let tiles = |sim: &mut Sim, sids: &[String], width: u32, disabled: bool| {
        sim.commands
            .push(parloir_sfu::Command::UpdateTrackSettings {
                session,
                settings: proto::UpdateTrackSettings {
                    track_sids: sids.to_vec(),
                    width,
                    height: width * 9 / 16,
                    disabled,
                    ..Default::default()
                },
            });
    };
    tiles(&mut sim, &cams[..1], 1280, false);
    tiles(&mut sim, &cams[1..5], 320, false);
    tiles(&mut sim, &cams[5..], 0, true);
    limit(&mut sim, "sub", 300_000);
    sim.run_for(Duration::from_secs(3));
    // Another speaker; a hidden tile comes into view, a shown one leaves it; a late camera
    // (a subscription opened while the others' allocation runs, shown at its default size).
    sim.clients[0].audio_level = Some(-127);
    sim.clients[3].audio_level = Some(-20);
    tiles(&mut sim, &cams[5..6], 640, false);
    tiles(&mut sim, &cams[2..3], 0, true);
    // One who was shown leaves (the subscriber's outs of its tracks go, others move into
    // their places); the late one uses one connection both ways (LiveKit's `/rtc/v1`).
    let p1 = sim.client("p1").session;
    sim.commands
        .push(parloir_sfu::Command::Leave { session: p1 });
    let late = sim.join_with("late", true);
    sim.clients[late].simulcast = true;
    sim.publish(late);
    sim.run_for(Duration::from_secs(4));
    cams.push(sim.track_sid("late", "cam"));
    let before: Vec<usize> = cams
        .iter()
        .map(|sid| frames(&sim, "sub", sid).len())
        .collect();
    limit(&mut sim, "sub", 4 * MBIT);
    tiles(&mut sim, &cams[6..8], 320, false);
    sim.run_for(Duration::from_secs(12));
    let stats = parloir_sfu::Stats {
        bytes_in: 0,
        bytes_out: 0,
        ..sim.sfu_of(0).stats()
    };
    let frames: Vec<Vec<(u8, u32)>> = cams
        .iter()
        .map(|sid| {
            frames(&sim, "sub", sid)
                .iter()
                .map(|f| (f.layer, f.counter))
                .collect()
        })
        .collect();
    let states = format!("{:?}", sim.client("sub").stream_states);
    (stats, frames, before, states)
}

#[test]
fn allocation_at_a_tick_goes_through_every_tile_that_takes_part() {
    let (stats, frames, before, states) = allocation_workout(true);
    assert!(stats.video_paused > 0, "tracks were paused: {stats:?}");
    // After the link widened: shown, cameras 0, 3, 4 (small), 5 (medium), 6 and 7 (turned
    // on last) and the late one; 2 is off and 1 left.
    let got: Vec<usize> = frames
        .iter()
        .zip(&before)
        .map(|(f, b)| f.len() - b)
        .collect();
    for (i, n) in got.iter().enumerate() {
        if i == 1 || i == 2 {
            assert!(*n <= 1, "camera {i} is off or gone: {got:?}");
        } else {
            assert!(*n >= 20, "camera {i} is shown: {got:?}");
        }
    }
    // The same meeting with a pass through all outs at every tick decides the same: the
    // simulation repeats for a seed, so the subscriber gets the same frames and states.
    let (all_stats, all_frames, _, all_states) = allocation_workout(false);
    assert_eq!(stats, all_stats, "the same counters");
    assert_eq!(states, all_states, "the same stream states");
    for (i, (fast, full)) in frames.iter().zip(&all_frames).enumerate() {
        assert!(
            fast == full,
            "camera {i}: {} frames against {}",
            fast.len(),
            full.len()
        );
    }
}

#[test]
fn a_link_that_drops_to_300_kbits_moves_to_the_low_layer_and_keeps_its_audio() {
    let mut sim = meeting(21, &["pub"]);
    limit(&mut sim, "sub", 3 * MBIT);
    // From the 1 Mbit/s starting estimate, probing finds room for the top layer.
    sim.run_for(Duration::from_secs(12));
    let cam = sim.track_sid("pub", "cam");
    let before = frames(&sim, "sub", &cam);
    assert_eq!(
        last_layers(&before, 10),
        [2; 10],
        "3 Mbit/s carries the top layer: {:?}",
        last_layers(&before, 40)
    );

    // The link drops to 300 kbit/s.
    limit(&mut sim, "sub", 300_000);
    let dropped_at = sim.now;
    sim.run_for(Duration::from_secs(22));
    let after = frames(&sim, "sub", &cam);
    let since = &after[before.len()..];
    let low_from = since
        .iter()
        .position(|f| f.layer == 0)
        .expect("it moved to the low layer");
    // The SFU moved within 2 s: the first low-layer frame left the publisher (and, 10 ms
    // later, the SFU) by then. The receiver sees it once the bottleneck has sent what was
    // queued before it.
    let moved = since[low_from].sent - dropped_at;
    let seen = since[low_from].at - dropped_at;
    eprintln!("moved to the low layer after {moved:?}, seen after {seen:?}");
    assert!(
        moved <= Duration::from_secs(2),
        "the SFU moved to the low layer {moved:?} after the drop"
    );
    // It stays there. An upgrade the estimate allowed may be tried and undone (1 run in 15
    // tried the middle layer for 0.7 s, 6 s after the drop): at most 1 s of frames above the
    // low layer, none in the last 5 s; the bottleneck must still drop nothing (below).
    let above = since[low_from..].iter().filter(|f| f.layer > 0).count();
    assert!(
        above <= 10 && last_layers(since, 50).iter().all(|l| *l == 0),
        "it stays on the low layer: {:?}",
        since.iter().map(|f| f.layer).collect::<Vec<_>>()
    );
    assert!(
        since.len() - low_from >= 100,
        "video keeps flowing on the low layer: {} frames",
        since.len() - low_from
    );
    let states = &sim.client("sub").stream_states;
    assert!(
        states.is_empty(),
        "the low layer fits: nothing paused ({states:?})"
    );
    // Every frame the receiver got could be decoded: the switches happened on key frames.
    let link = &sim.net.links[&sim.client("sub").subscriber_addr];
    assert_eq!(link.dropped, 0, "the bottleneck dropped nothing");
    assert!(
        bad_switches(&after).is_empty(),
        "{:?}",
        bad_switches(&after)
    );
    let bad = undecodable(&after);
    assert!(bad.is_empty(), "undecodable frames: {bad:?}");
    // Audio is never paced, and what the SFU sends now fits the link: nothing was lost, and
    // the bottleneck's queue has drained (the last frames arrive without its delay).
    let (heard, gaps) = audio_gaps(&sim, "sub", "pub");
    assert!(heard >= 1400, "audio flowed throughout: {heard} frames");
    assert!(gaps.is_empty(), "audio frames lost: {gaps:?}");
    let latest = after.last().expect("frames");
    assert!(
        latest.at - latest.sent < Duration::from_secs(1),
        "the queue drained: the last frame took {:?}",
        latest.at - latest.sent
    );
}

#[test]
fn video_that_does_not_fit_pauses_and_resumes_when_the_link_recovers() {
    let mut sim = meeting(22, &["pub"]);
    limit(&mut sim, "sub", 3 * MBIT);
    sim.run_for(Duration::from_secs(5));
    let cam = sim.track_sid("pub", "cam");
    assert!(frames(&sim, "sub", &cam).len() >= 30, "video flows");

    // Down to 300 kbit/s first (the low layer), then to 100 kbit/s: not even the low layer
    // (76 kbit/s) fits beside the audio (57 kbit/s). Audio lost when the link first dropped
    // (the queue overflowing before anyone could know) is counted before the pause.
    limit(&mut sim, "sub", 300_000);
    sim.run_for(Duration::from_secs(20));
    assert!(sim.client("sub").stream_states.is_empty());
    let (_, lost_before) = audio_gaps(&sim, "sub", "pub");
    limit(&mut sim, "sub", 100_000);
    sim.run_for(Duration::from_secs(12));
    let states = sim.client("sub").stream_states.clone();
    let paused = states
        .iter()
        .position(|s| s.track_sid == cam && s.state == proto::StreamState::Paused as i32)
        .unwrap_or_else(|| panic!("the camera is paused for this subscriber: {states:?}"));
    assert_eq!(states[paused].participant_sid, participant_sid(&sim, "pub"));
    // Nothing sent after the pause reaches the subscriber (what the bottleneck queued before
    // still does).
    let paused_at = sim.now;
    sim.run_for(Duration::from_secs(5));
    let late: Vec<u32> = frames(&sim, "sub", &cam)
        .iter()
        .filter(|f| f.sent > paused_at)
        .map(|f| f.counter)
        .collect();
    assert!(late.is_empty(), "a paused track is not forwarded: {late:?}");
    let (_, gaps) = audio_gaps(&sim, "sub", "pub");
    assert_eq!(
        gaps, lost_before,
        "audio goes on without loss while video is paused"
    );

    // The link comes back: the estimate grows again (probing), the track resumes at a key
    // frame and climbs.
    limit(&mut sim, "sub", 3 * MBIT);
    let back_at = sim.now;
    // The track resumed 7 to 14 s after the link came back in five runs (2026-12-02); 45 s
    // leaves room for probes that fail (each doubles the hold, up to 8 s).
    sim.run_for(Duration::from_secs(45));
    let states = &sim.client("sub").stream_states;
    assert!(
        states[paused + 1..]
            .iter()
            .any(|s| s.track_sid == cam && s.state == proto::StreamState::Active as i32),
        "resumed: {states:?}"
    );
    let all = frames(&sim, "sub", &cam);
    let resumed: Vec<&VideoFrame> = all.iter().filter(|f| f.at > back_at).collect();
    if let (Some(first), Some(up)) = (resumed.first(), resumed.iter().find(|f| f.layer >= 1)) {
        eprintln!(
            "resumed {:?} after the link came back, up a layer after {:?}",
            first.sent - back_at,
            up.sent - back_at
        );
    }
    assert!(
        resumed.first().is_some_and(|f| f.key),
        "resumes on a key frame"
    );
    // Layer switches and the resume happen on key frames (frames lost at the bottleneck when
    // the link dropped to 300 kbit/s leave holes of their own, which are not the SFU's).
    let resumed_frames: Vec<VideoFrame> = resumed.iter().map(|f| **f).collect();
    let bad = bad_switches(&resumed_frames);
    assert!(bad.is_empty(), "switches without a key frame: {bad:?}");
    assert!(
        last_layers(&all, 5).iter().all(|l| *l >= 1),
        "climbs back up: {:?}",
        resumed.iter().map(|f| f.layer).collect::<Vec<_>>()
    );
    let (_, gaps) = audio_gaps(&sim, "sub", "pub");
    let link = &sim.net.links[&sim.client("sub").subscriber_addr];
    assert_eq!(
        gaps, lost_before,
        "audio frames lost ({} datagrams dropped at the bottleneck)",
        link.dropped
    );
}

/// Runs the meeting for `run`, then 2 s more so that what was sent by then has arrived, and
/// gives, per camera of `publishers`, the layers of the frames it sent in the last `window` of
/// `run`, as the subscriber received them.
fn run_and_read(
    sim: &mut Sim,
    run: Duration,
    window: Duration,
    publishers: &[&str],
) -> Vec<Vec<u8>> {
    sim.run_for(run);
    let until = sim.now;
    sim.run_for(Duration::from_secs(2));
    publishers
        .iter()
        .map(|p| {
            frames(sim, "sub", &sim.track_sid(p, "cam"))
                .iter()
                .filter(|f| f.sent <= until && f.sent > until - window)
                .map(|f| f.layer)
                .collect()
        })
        .collect()
}

/// The share of `layers` equal to `layer`.
fn share(layers: &[u8], layer: u8) -> f64 {
    layers.iter().filter(|l| **l == layer).count() as f64 / layers.len().max(1) as f64
}

#[test]
fn the_active_speaker_gets_the_better_layer_on_a_narrow_link() {
    let mut sim = meeting(23, &["alice", "bob"]);
    // Alice speaks, Bob is silent.
    sim.clients[0].audio_level = Some(-20);
    sim.clients[1].audio_level = Some(-127);
    // A 600 kbit/s middle layer, and room for both low layers and one middle one (790 kbit/s
    // with the audio), not two (1.3 Mbit/s).
    sim.layer_bytes[1] = 2800;
    limit(&mut sim, "sub", 1_300_000);
    let pair = ["alice", "bob"];
    let secs = Duration::from_secs;
    let [la, lb] = <[Vec<u8>; 2]>::try_from(run_and_read(&mut sim, secs(15), secs(10), &pair))
        .expect("two cameras");
    assert!(
        la.len() >= 200 && lb.len() >= 200,
        "{} {}",
        la.len(),
        lb.len()
    );
    assert!(
        share(&la, 1) >= 0.6,
        "the speaker gets the middle layer most of the time: {la:?}"
    );
    assert_eq!(share(&lb, 0), 1.0, "the silent one the low layer: {lb:?}");

    // Bob takes the floor.
    sim.clients[0].audio_level = Some(-127);
    sim.clients[1].audio_level = Some(-20);
    let [la, lb] = <[Vec<u8>; 2]>::try_from(run_and_read(&mut sim, secs(12), secs(9), &pair))
        .expect("two cameras");
    assert!(
        share(&lb, 1) >= 0.6,
        "the new speaker gets the middle layer most of the time: {lb:?}"
    );
    assert_eq!(share(&la, 0), 1.0, "the previous one the low layer: {la:?}");
    for p in pair {
        assert!(bad_switches(&frames(&sim, "sub", &sim.track_sid(p, "cam"))).is_empty());
    }
    assert!(sim.client("sub").stream_states.is_empty());
}

#[test]
fn silent_microphones_take_no_room_from_video() {
    // A speaker's camera and eleven participants with only a microphone, silent, with audio
    // forwarded for the loudest one only (plus anyone speaking). The speaker's middle layer
    // needs about 490 kbit/s with headroom, plus 57 for its audio: a 1 Mbit/s link's budget
    // holds it, but not beside all twelve microphones (680).
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
    let mut sim = meeting_with(Sim::with_options(25, 0.0, 1, 1000), &names[..1]);
    sim.clients[0].audio_level = Some(-20);
    for name in &names[1..] {
        let i = sim.join(name);
        sim.clients[i].camera = false;
        sim.clients[i].audio_level = Some(-127);
        sim.publish(i);
    }
    limit(&mut sim, "sub", 1_000_000);
    let secs = Duration::from_secs;
    let layers = run_and_read(&mut sim, secs(30), secs(8), &names[..1]);
    let speaker = &layers[0];
    assert!(
        share(speaker, 1) >= 0.6,
        "the speaker gets the middle layer most of the time: {speaker:?}"
    );
    assert!(sim.client("sub").stream_states.is_empty());
}

#[test]
fn a_wide_link_gets_what_the_tiles_ask_for() {
    // Without a bottleneck the estimate never limits: the top layer, nothing paused. From the
    // 1 Mbit/s start, probing brought the top layer 1.36 s after the first frame for every seed
    // from 1 to 30, in three runs each (perf/results/bwe/ramp-up.md); it was 2 to 26 s, or
    // never within 30 s, while the simulated network reordered datagrams sent less than 1 ms
    // apart (see the next test). 4 s leaves room for the joins and 20 frames of the top layer.
    let mut sim = meeting(24, &["pub"]);
    sim.run_for(Duration::from_secs(4));
    let cam = sim.track_sid("pub", "cam");
    let got = frames(&sim, "sub", &cam);
    assert_eq!(last_layers(&got, 20), [2; 20]);
    assert!(sim.client("sub").stream_states.is_empty());
}

#[test]
fn a_subscriber_whose_first_packets_were_lost_still_probes_up() {
    // On a network that reorders (each datagram draws its own jitter of up to 1 ms, so a
    // paced burst arrives in any order), the datagrams still on their way when the receiver
    // writes its TWCC feedback are reported lost there, and received in the next report. With
    // this seed, str0m's loss controller saw 24 % of the first packets to "sub" reported lost
    // in its first observation, so it starts out "loss limited" and the estimate falls to
    // 541 kbit/s: "sub" gets the low layer. With no loss after that the loss controller is
    // soon back to following the delay-based estimate, but the estimate itself stays at
    // 541 kbit/s, and str0m told its probe controller the cause only with a new estimate: the
    // controller kept "loss limited", which never probes, and an application-limited
    // subscriber cannot raise its estimate otherwise. It stayed on the low layer for as long
    // as the simulation ran (30 s, in every run). str0m patch 21 passes the cause on when it
    // changes alone; the top layer then came after 12 to 14.5 s in three runs. 20 s leaves
    // room. (2026-12-03: this seed now gets the top layer within 2.5 s on the reordering
    // network, with or without str0m patch 30, so it no longer reaches the state patch 21 is
    // about; a test with real loss at the start would.)
    let mut sim = Sim::new(26, 0.0);
    sim.net.reorder = true;
    let mut sim = meeting_with(sim, &["pub"]);
    sim.run_for(Duration::from_secs(20));
    let cam = sim.track_sid("pub", "cam");
    let got = frames(&sim, "sub", &cam);
    assert_eq!(last_layers(&got, 20), [2; 20]);
}

/// A subscriber far below its estimate for a while (a small tile) is application-limited;
/// str0m probes it now and then at twice the rate it is sent. Such a probe used to set the
/// estimate to its own rate, which left the subscriber unable to go up when its tile grew
/// (str0m patch 12).
#[test]
fn a_tile_that_grows_after_a_long_spell_small_goes_up_again() {
    let mut sim = Sim::new(23, 0.0);
    sim.layer_bytes = [320, 2000, 7600];
    sim.video_every = 2;
    let publisher = sim.join_svc("pub");
    let sub = sim.join("sub");
    sim.publish_svc(publisher);
    // As in `meeting_with`: without it, "pub"'s subscriber connection carries nothing and
    // never completes ICE in the harness; the SFU's DTLS handshake on it ran out of retries
    // (about 22 s in when it failed, after the test's 32 s in the runs that passed, by dimpl's
    // jitter), and closing it took "pub" and its camera away before the end of this test in
    // about 1 run in 40.
    sim.publish(sub);
    sim.run_for(Duration::from_secs(2));
    let cam = sim.track_sid("pub", "cam");
    let session = sim.client("sub").session;
    let size = |w: u32, h: u32| parloir_sfu::Command::UpdateTrackSettings {
        session,
        settings: proto::UpdateTrackSettings {
            track_sids: vec![cam.clone()],
            width: w,
            height: h,
            ..Default::default()
        },
    };
    sim.commands.push(size(320, 180));
    sim.run_for(Duration::from_secs(20));
    let small = frames(&sim, "sub", &cam);
    assert!(
        last_layers(&small, 25).iter().all(|l| *l == 0),
        "{:?}",
        last_layers(&small, 25)
    );
    sim.commands.push(size(1280, 720));
    sim.run_for(Duration::from_secs(10));
    let grown = frames(&sim, "sub", &cam);
    assert!(
        last_layers(&grown, 25).iter().all(|l| *l == 2),
        "the grown tile gets the top layer: {:?}",
        last_layers(&grown, 100)
    );
}

#[test]
fn video_with_temporal_layers_drops_frames_before_it_pauses() {
    // An L3T3 camera (VP9 SVC) at 25 pictures/s: its lowest spatial layer is about
    // 210 kbit/s on the wire, that layer's temporal layer 0 (a quarter of the pictures) about
    // 53 kbit/s.
    let mut sim = Sim::new(24, 0.0);
    trace();
    sim.layer_bytes = [1000, 2500, 8000];
    sim.video_every = 2;
    let publisher = sim.join_svc("pub");
    sim.clients[publisher].svc_temporal = 3;
    let sub = sim.join("sub");
    sim.publish_svc(publisher);
    sim.publish(sub);
    limit(&mut sim, "sub", 3 * MBIT);
    sim.run_for(Duration::from_secs(10));
    let cam = sim.track_sid("pub", "cam");
    let temporal = |frames: &[VideoFrame]| frames.iter().map(|f| f.temporal).collect::<Vec<_>>();
    let before = frames(&sim, "sub", &cam);
    assert!(
        temporal(&before[before.len() - 20..]).contains(&2),
        "3 Mbit/s carries every picture: {:?}",
        temporal(&before[before.len() - 20..])
    );

    // 120 kbit/s: not the lowest layer whole, but its temporal layer 0.
    limit(&mut sim, "sub", 120_000);
    let dropped_at = sim.now;
    sim.run_for(Duration::from_secs(20));
    let after = frames(&sim, "sub", &cam);
    let since: Vec<VideoFrame> = after[before.len()..]
        .iter()
        .filter(|f| f.sent > dropped_at + Duration::from_secs(8))
        .copied()
        .collect();
    assert!(
        since.iter().all(|f| f.temporal == 0 && f.layer == 0),
        "layer 0 pictures of the lowest layer: {:?}",
        since
            .iter()
            .map(|f| (f.layer, f.temporal))
            .collect::<Vec<_>>()
    );
    // 12 s of a quarter of 25 pictures/s: about 75 (the last ones may still be queued).
    assert!(
        (60..=80).contains(&since.len()),
        "video keeps flowing at a quarter of its rate: {} pictures",
        since.len()
    );
    let states = &sim.client("sub").stream_states;
    assert!(states.is_empty(), "nothing paused: {states:?}");
    assert!(
        after.iter().skip(1).all(|f| f.contiguous),
        "the receiver saw one unbroken stream"
    );

    // The link comes back: every picture again.
    limit(&mut sim, "sub", 3 * MBIT);
    let back_at = sim.now;
    sim.run_for(Duration::from_secs(30));
    let all = frames(&sim, "sub", &cam);
    let back: Vec<&VideoFrame> = all.iter().filter(|f| f.sent > back_at).collect();
    let last: Vec<u8> = back[back.len().saturating_sub(20)..]
        .iter()
        .map(|f| f.temporal)
        .collect();
    assert!(
        last.contains(&2) && last.contains(&1),
        "every picture again: {last:?}"
    );
    assert!(sim.client("sub").stream_states.is_empty());
}

#[test]
fn a_subscriber_joining_a_grid_of_sixteen_sees_every_tile_at_once() {
    // The shape of a large meeting as a newcomer sees it: sixteen cameras in small tiles
    // (the low layer, about 76 kbit/s each, 1.2 Mbit/s in all) above a 1 Mbit/s starting
    // estimate, one speaker, no bottleneck. The estimate must make room for all of them
    // before any is paused: in three seeds every tile was flowing 0.75 s in and nothing was
    // paused (with tracks paused as soon as the budget lacks room, not after `PAUSE_AFTER`,
    // this fails).
    let (mut sim, cams) = sixteen_cameras(31, None, 320, 180);
    let flowing = |sim: &Sim| flowing(sim, &cams);
    sim.run_for(Duration::from_millis(1250));
    for _ in 0..26 {
        assert_eq!(flowing(&sim), 16, "every tile flows");
        sim.run_for(Duration::from_millis(250));
    }
    assert!(sim.client("sub").stream_states.is_empty());
    for cam in &cams {
        let got = frames(&sim, "sub", cam);
        assert!(undecodable(&got).is_empty());
        assert_eq!(
            last_layers(&got, 20),
            [0; 20],
            "the low layer for a small tile"
        );
    }
}

#[test]
fn a_newcomer_whose_grid_needs_many_times_the_starting_estimate_gets_it_within_two_seconds() {
    // Sixteen cameras in medium tiles: their middle layers come to about 10 Mbit/s and even
    // their lowest to 5, against the 1 Mbit/s starting estimate; no bottleneck. After its
    // start a subscriber is probed for one upgrade's worth at a time and its tracks go up one
    // a second; at the start that kept a newcomer's tiles low for many seconds (with the
    // startup, now the first `RAMP`, at zero, no tile set was whole on the middle layer 6 s
    // in). Probed at the start for all that its tiles ask (with the headroom of their
    // upgrades), as a browser probes at the start of a call, and upgraded as far as the
    // estimate then allows once the layers' rates are measured, every tile is on its middle
    // layer within two seconds (0.8 s in eight runs; 1.1 or 3.0 s when the probing left out
    // the upgrades' headroom, which stopped it just short) and nothing is paused.
    let (mut sim, cams) = sixteen_cameras(33, Some([1400, 3000, 12000]), 640, 360);
    let start = sim.now;
    let mut all_mid = None;
    while sim.now - start < Duration::from_secs(6) {
        sim.run_for(Duration::from_millis(100));
        let mid = cams
            .iter()
            .filter(|cam| last_layers(&frames(&sim, "sub", cam), 3) == [1; 3])
            .count();
        if mid == 16 && all_mid.is_none() {
            all_mid = Some(sim.now - start);
        }
    }
    eprintln!("every tile on its middle layer after {all_mid:?}");
    assert!(
        all_mid.is_some_and(|t| t <= Duration::from_secs(2)),
        "every tile on its middle layer within 2 s: {all_mid:?}"
    );
    assert!(sim.client("sub").stream_states.is_empty(), "nothing paused");
    for cam in &cams {
        let got = frames(&sim, "sub", cam);
        assert!(undecodable(&got).is_empty());
        assert_eq!(last_layers(&got, 20), [1; 20]);
    }
}

#[test]
fn an_early_subscriber_whose_estimate_fell_makes_room_when_the_grid_fills() {
    // The first ones into a meeting see one tile, and the rest arrive together a few seconds
    // later (a meeting that starts at the hour). Here "sub" shows one small tile, and its
    // estimate falls while it does (the path's delay steps from 10 to 150 ms for 0.7 s, as a
    // busy moment in a loopback meeting of 18 did), which ends its startup; the link then has
    // room to spare. When all sixteen cameras come on screen their lowest layers need
    // 1.3 Mbit/s, about four times what the fallen estimate says. Probed for one tile's worth
    // per probe hold, and told of what a probe found as a 3 s average, "sub" paused some of
    // them after `PAUSE_AFTER` in 9 runs of 10; with a ramp for the grown demand and str0m
    // patch 38 (each alone passed 19 of 20 and 10 of 10), 20 of 20 had every tile flowing
    // within 0.1 to 0.2 s and nothing paused.
    let (mut sim, cams) = sixteen_cameras(35, None, 320, 180);
    let session = sim.client("sub").session;
    sim.commands
        .push(parloir_sfu::Command::UpdateTrackSettings {
            session,
            settings: proto::UpdateTrackSettings {
                track_sids: cams[1..].to_vec(),
                disabled: true,
                ..Default::default()
            },
        });
    sim.run_for(Duration::from_millis(1250));
    sim.net.delay = Duration::from_millis(150);
    sim.run_for(Duration::from_millis(700));
    sim.net.delay = Duration::from_millis(10);
    sim.run_for(Duration::from_secs(3));
    assert!(
        sim.client("sub").stream_states.is_empty(),
        "the one tile was not paused"
    );
    sim.commands
        .push(parloir_sfu::Command::UpdateTrackSettings {
            session,
            settings: proto::UpdateTrackSettings {
                track_sids: cams.clone(),
                width: 320,
                height: 180,
                ..Default::default()
            },
        });
    let shown = sim.now;
    let flowing = |sim: &Sim| flowing(sim, &cams);
    let mut all = None;
    while sim.now - shown < Duration::from_secs(10) {
        sim.run_for(Duration::from_millis(100));
        if all.is_none() && flowing(&sim) == 16 {
            all = Some(sim.now - shown);
        }
    }
    eprintln!("every tile flowing after {all:?}");
    let states = &sim.client("sub").stream_states;
    assert!(states.is_empty(), "nothing paused: {states:?}");
    assert!(
        all.is_some_and(|t| t <= Duration::from_secs(2)),
        "every tile flows within 2 s: {all:?}"
    );
    assert_eq!(flowing(&sim), 16);
}

#[test]
fn frames_on_a_wide_link_are_not_held_in_the_pacer() {
    // A large camera: 30 KB frames ten times a second (2.4 Mbit/s, 27 packets a frame). The
    // subscriber's estimate of an application-limited link stays near what it is sent, so the
    // pacer's rate is a multiple of that: at str0m's 1.1 every frame waited in the pacer for
    // about 20 ms (a 720p webinar's p99 read 30 ms); at libwebrtc's 2.5 (str0m patch 39) a
    // frame leaves in one burst.
    let mut sim = meeting(25, &["pub"]);
    sim.layer_bytes = [320, 2000, 30_000];
    sim.video_every = 5;
    sim.run_for(Duration::from_secs(8));
    let cam = sim.track_sid("pub", "cam");
    let got = frames(&sim, "sub", &cam);
    assert_eq!(last_layers(&got, 20), [2; 20], "the top layer flows");
    // Two network legs of 10 ms and up to 1 ms of jitter each: 22 ms without waiting.
    let mut waits: Vec<Duration> = got[got.len() - 40..]
        .iter()
        .map(|f| (f.at - f.sent).saturating_sub(Duration::from_millis(22)))
        .collect();
    waits.sort();
    let p90 = waits[waits.len() * 9 / 10];
    assert!(
        p90 < Duration::from_millis(5),
        "frames waited beyond the network's delay: p90 {p90:?}, all {waits:?}"
    );
}

/// Six participants with single-layer cameras (3 000-byte frames ten times a second, about
/// 250 kbit/s each) and subscribers behind 2 Mbit/s links with a shallow queue (30 KB, 120 ms).
/// Five cameras and five microphones need about 1.55 Mbit/s, which the link carries, and a
/// single layer that does not fit in the estimate can only pause. What made this fail, in
/// turn (perf/README.md, "Shallow queues"): the loss controller holding the estimate far below
/// what got through (str0m patch 40; 53 % of the frames missing, p99 1.6 s); then media
/// written to each subscriber connection before it was up, sent in one burst when it came up
/// (half a second of every microphone, then every camera's frames), which overflowed the
/// queue and left the loss controller holding the estimate for seconds (29 % missing). Now
/// about 4.5 % (one camera per subscriber paused from 3.6 to 5.7 s, until the estimate's
/// 3-second average climbs past what five cameras need).
#[test]
fn single_layer_cameras_behind_a_shallow_queue_all_flow() {
    trace();
    let n = 6;
    let mut sim = Sim::new(40, 0.0);
    sim.net.delay = Duration::from_millis(50);
    sim.media_slots = 5;
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    for name in &names {
        sim.join(name);
    }
    for name in &names {
        limit_with(&mut sim, name, 2 * MBIT, 30_000);
    }
    for i in 0..n {
        sim.publish(i);
    }
    sim.run_for(Duration::from_secs(3));
    let starts: Vec<u32> = (0..n).map(|i| sim.clients[i].video_sent).collect();
    sim.run_for(Duration::from_secs(10));
    let ends: Vec<u32> = (0..n).map(|i| sim.clients[i].video_sent).collect();
    sim.run_for(Duration::from_secs(1));
    let (mut lost, mut sent, mut late) = (0, 0, Vec::new());
    for p in 0..n {
        let cam = sim.track_sid(&names[p], "cam");
        for (s, sub) in names.iter().enumerate() {
            if s == p {
                continue;
            }
            let got = frames(&sim, sub, &cam);
            let counters: Vec<u32> = got.iter().map(|f| f.counter).collect();
            lost += missing(&counters, starts[p], ends[p]).len();
            sent += (ends[p] - starts[p]) as usize;
            late.extend(
                got.iter()
                    .filter(|f| (starts[p]..ends[p]).contains(&f.counter))
                    .map(|f| f.at - f.sent),
            );
        }
    }
    late.sort();
    let p99 = late.get(late.len() * 99 / 100).copied().unwrap_or_default();
    eprintln!("{lost} of {sent} frames missing; latency p99 {p99:?}");
    assert!(lost * 20 <= sent, "{lost} of {sent} frames missing");
    assert!(p99 < Duration::from_millis(500), "latency p99 {p99:?}");
}
