//! Deterministic simulation of the SFU with in-process str0m clients (see `harness/`).

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::*;
use parloir_sfu::{Command, OFFER_MLINES_PER_CALL, ServiceCall, ServiceError, ServiceReply, proto};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use str0m::media::Mid;

#[test]
fn three_participants_exchange_media_and_data() {
    let mut sim = Sim::new(1, 0.0);
    for name in ["alice", "bob", "carol"] {
        let i = sim.join(name);
        let join = sim.clients[i].joined.clone().expect("JoinResponse first");
        let me = join.participant.expect("the participant");
        assert!(me.sid.starts_with("PA_"));
        assert!(join.room.expect("the room").sid.starts_with("RM_"));
        assert!(join.ping_interval > 0 && join.ping_timeout > 0);
        assert_eq!(
            join.other_participants.len(),
            i,
            "earlier joiners are listed"
        );
    }
    for i in 0..3 {
        sim.publish(i);
    }
    sim.run_for(Duration::from_secs(3));

    for me in ["alice", "bob", "carol"] {
        let c = sim.client(me);
        for other in ["alice", "bob", "carol"].into_iter().filter(|o| *o != me) {
            let info = c
                .others
                .get(other)
                .expect("the other participant was announced");
            assert_eq!(info.tracks.len(), 2, "{me} sees both of {other}'s tracks");
            for (suffix, sent) in [
                ("mic", sim.client(other).audio_sent),
                ("cam", sim.client(other).video_sent),
            ] {
                let sid = sim.track_sid(other, suffix);
                let got = c.frames.get(&sid).map(Vec::as_slice).unwrap_or_default();
                assert!(
                    got.len() as f64 >= 0.7 * sent as f64,
                    "{me} got {} of {sent} {suffix} frames from {other}",
                    got.len()
                );
                // Once flowing, nothing is missing on a lossless network.
                let first = *got.first().expect("frames arrived");
                let last = *got.last().expect("frames arrived");
                assert_eq!(
                    missing(got, first, last),
                    Vec::<u32>::new(),
                    "{me}/{other}/{suffix}"
                );
            }
        }
    }

    // Data to everyone, then to one destination only.
    sim.send_data(0, b"hello all", &[]);
    sim.run_for(Duration::from_millis(200));
    sim.send_data(0, b"for carol", &["carol"]);
    sim.run_for(Duration::from_millis(200));
    let payloads = |who: &str| -> Vec<Vec<u8>> {
        sim.client(who)
            .data
            .iter()
            .map(|p| match &p.value {
                Some(proto::data_packet::Value::User(u)) => u.payload.clone(),
                _ => Vec::new(),
            })
            .collect()
    };
    assert_eq!(payloads("bob"), vec![b"hello all".to_vec()]);
    assert_eq!(
        payloads("carol"),
        vec![b"hello all".to_vec(), b"for carol".to_vec()]
    );
    assert!(payloads("alice").is_empty(), "no echo to the sender");
    let first = &sim.client("bob").data[0];
    assert_eq!(
        first.participant_identity, "alice",
        "the SFU stamps the sender"
    );
    assert!(first.participant_sid.starts_with("PA_"));

    for me in ["alice", "bob", "carol"] {
        let room = sim
            .client(me)
            .room
            .clone()
            .expect("RoomUpdate after the joins");
        assert_eq!(
            (room.num_participants, room.num_publishers),
            (3, 3),
            "{me}'s room counts"
        );
    }
    let stats = sim.sfu.stats();
    eprintln!(
        "{stats:?}; alice sent {} audio {} video; bob got {:?}",
        sim.client("alice").audio_sent,
        sim.client("alice").video_sent,
        sim.client("bob")
            .frames
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect::<Vec<_>>()
    );
    assert_eq!((stats.rooms, stats.participants, stats.tracks), (1, 3, 6));
    assert_eq!(stats.dropped_datagrams, 0);
}

/// One run of a small meeting with everything that draws on randomness or walks maps:
/// simulcast, bandwidth estimation with probes, loss and its repairs, speech. What it left:
/// the SFU's counters, per client every frame received (layer, publisher's counter, key),
/// and every datagram sent onto the network (when, from, to, length but for DTLS).
type Received = Vec<(String, Vec<(String, Vec<(u8, u32, bool)>)>)>;
type Datagrams = Vec<harness::Sent>;

fn small_meeting(seed: u64, loss: f64) -> (parloir_sfu::Stats, Received, Datagrams) {
    let mut sim = Sim::new(seed, loss);
    sim.net.log = Some((sim.now, Vec::new()));
    for name in ["a", "b", "c", "d"] {
        sim.join(name);
    }
    for i in 0..3 {
        sim.clients[i].simulcast = i < 2;
        sim.clients[i].audio_level = Some(if i == 0 { 20 } else { 90 });
        sim.publish(i);
    }
    sim.run_for(Duration::from_secs(5));
    let received = sim
        .clients
        .iter()
        .map(|c| {
            let mut tracks: Vec<_> = c
                .video_rx
                .iter()
                .map(|(sid, frames)| {
                    let frames = frames.iter().map(|f| (f.layer, f.counter, f.key));
                    (sid.clone(), frames.collect())
                })
                .collect();
            tracks.sort();
            (c.identity.clone(), tracks)
        })
        .collect();
    // Byte counts aside: the DTLS handshakes' ECDSA signatures take random nonces, so their
    // encodings vary by a byte or two.
    let stats = parloir_sfu::Stats {
        bytes_in: 0,
        bytes_out: 0,
        ..sim.sfu_of(0).stats()
    };
    let datagrams = sim.net.log.take().map(|(_, log)| log).unwrap_or_default();
    (stats, received, datagrams)
}

#[test]
fn a_seeded_simulation_repeats_exactly() {
    // The network, str0m's random draws (SSRCs, the pacer's jitter) and every hash map's
    // seed, the engine's and str0m's, come from the seed: a failure can be replayed, and a
    // cache-miss count compared between builds.
    let first = small_meeting(3, 0.02);
    assert!(
        first.0.frames_forwarded > 200 && first.0.nacks > 0,
        "a meeting took place: {:?}",
        first.0
    );
    let again = small_meeting(3, 0.02);
    // The first datagram that differs, if any: where a run left its course.
    let apart = first.2.iter().zip(&again.2).position(|(a, b)| a != b);
    assert!(
        apart.is_none() && first.2.len() == again.2.len(),
        "the same datagrams at the same instants ({} and {}), first apart: {:?}",
        first.2.len(),
        again.2.len(),
        apart.map(|i| (&first.2[i], &again.2[i]))
    );
    assert_eq!(first.0, again.0, "the same counters");
    assert!(first.1 == again.1, "the same frames at each client");
    assert_ne!(
        small_meeting(4, 0.02).0,
        first.0,
        "another seed, another run"
    );
}

#[test]
fn every_forwarded_stream_keeps_sending_sender_reports() {
    // Receivers map RTP time to wallclock (lip sync, recordings) through RTCP sender reports:
    // each forwarded stream that carries media must keep sending them, at str0m's intervals
    // (video every second, audio every five), however many streams a subscriber connection
    // carries and however few of them are busy at a time. (A stream that carries nothing
    // sends none: `a_stream_that_carries_nothing_sends_no_sender_reports`.)
    let mut sim = Sim::new(21, 0.0);
    const N: usize = 10;
    for i in 0..N {
        sim.join(&format!("p{i}"));
    }
    for i in 0..N {
        sim.publish(i);
    }
    sim.run_for(Duration::from_secs(3));
    let from = sim.now;
    // A track counts if it carried media through the 16 s: frames in its first two seconds
    // and in its last two.
    let got = |sim: &Sim| -> Vec<std::collections::HashMap<String, usize>> {
        sim.clients
            .iter()
            .map(|c| c.frames.iter().map(|(k, v)| (k.clone(), v.len())).collect())
            .collect()
    };
    let start = got(&sim);
    sim.run_for(Duration::from_secs(2));
    let early = got(&sim);
    sim.run_for(Duration::from_secs(12));
    let late = got(&sim);
    sim.run_for(Duration::from_secs(2));
    let at = [start, early, late];
    for (i, c) in sim.clients.iter().enumerate() {
        let mut lines = 0;
        for (mid, sid) in &c.sub_tracks {
            let mid = Mid::from(mid.as_str());
            let n = |k: usize| at[k][i].get(sid).copied().unwrap_or(0);
            let end = c.frames.get(sid).map_or(0, |f| f.len());
            if n(1) <= n(0) || end <= n(2) {
                continue;
            }
            lines += 1;
            let reports = c
                .sender_reports
                .get(&mid)
                .map_or(0, |r| r.iter().filter(|t| **t >= from).count());
            let video = c.video_rx.contains_key(sid);
            let least = if video { 12 } else { 2 };
            assert!(
                reports >= least,
                "{} got {reports} sender reports in 16 s on m-line {mid} ({})",
                c.identity,
                if video { "video" } else { "audio" }
            );
        }
        assert_eq!(lines, 2 * (N - 1), "{} receives everyone", c.identity);
    }
}

#[test]
fn a_stream_that_carries_nothing_sends_no_sender_reports() {
    // RFC 3550 6.4: a source that has sent nothing since the report before last reports as a
    // receiver only. In a large meeting most of a subscriber's m-lines carry nothing at a
    // time (tiles out of view, microphones outside the loudest three); a sender report for
    // each of them every second was bandwidth and work for nothing. A camera turned off by a
    // viewer gets no sender reports once two report intervals have passed, and gets them
    // again when it flows again.
    let mut sim = Sim::new(22, 0.0);
    for name in ["a", "b", "viewer"] {
        sim.join(name);
    }
    sim.publish(0);
    sim.publish(1);
    sim.run_for(Duration::from_secs(3));
    let cams = [sim.track_sid("a", "cam"), sim.track_sid("b", "cam")];
    let mid_of = |sim: &Sim, sid: &str| {
        let (mid, _) = sim
            .client("viewer")
            .sub_tracks
            .iter()
            .find(|(_, s)| s.as_str() == sid)
            .expect("the viewer subscribes to the camera");
        Mid::from(mid.as_str())
    };
    let mids = [mid_of(&sim, &cams[0]), mid_of(&sim, &cams[1])];
    let reports_since = |sim: &Sim, mid: Mid, from: std::time::Instant| {
        sim.client("viewer")
            .sender_reports
            .get(&mid)
            .map_or(0, |r| r.iter().filter(|t| **t >= from).count())
    };
    settings(
        &mut sim,
        "viewer",
        &cams[0],
        proto::UpdateTrackSettings {
            disabled: true,
            ..Default::default()
        },
    );
    // Two video report intervals and a margin.
    sim.run_for(Duration::from_millis(2500));
    let from = sim.now;
    sim.run_for(Duration::from_secs(5));
    assert_eq!(
        reports_since(&sim, mids[0], from),
        0,
        "a camera turned off gets no sender reports"
    );
    assert!(
        reports_since(&sim, mids[1], from) >= 5,
        "the other camera's go on: {}",
        reports_since(&sim, mids[1], from)
    );
    settings(&mut sim, "viewer", &cams[0], size(320, 180));
    let on = sim.now;
    sim.run_for(Duration::from_secs(3));
    assert!(
        reports_since(&sim, mids[0], on) >= 2,
        "turned on again, its reports are back: {}",
        reports_since(&sim, mids[0], on)
    );
}

/// Nothing is written to a subscriber's connection before it is up (DTLS done): what str0m
/// held until then went out in one burst when it came up (every microphone's frames since the
/// join, unpaced, then every camera's), old frames that overflowed a shallow queue at the
/// client's end (`single_layer_cameras_behind_a_shallow_queue_all_flow`). A late joiner on a
/// long path (150 ms each way: his connection comes up about a second after he joins) gets
/// media from then on, video from a key frame.
#[test]
fn a_late_joiner_gets_media_from_when_his_connection_is_up() {
    late_joiner(Duration::from_millis(150));
}

/// On a short path, too, video starts from a key frame within a round trip and a frame
/// interval of the audio.
#[test]
fn a_joiner_on_a_short_path_gets_video_as_soon_as_his_connection_is_up() {
    late_joiner(Duration::from_millis(10));
}

/// At 50 ms each way his connection comes up about 250 ms after his m-lines open: a key frame
/// asked for then has come and gone unsent, and one asked for only by his first frames would
/// wait for the half-second between requests for a track. It is asked for when his
/// connection comes up.
#[test]
fn a_joiner_on_a_medium_path_gets_video_as_soon_as_his_connection_is_up() {
    late_joiner(Duration::from_millis(50));
}

/// Bob joins a meeting where alice publishes, over a path of `delay` each way: his first
/// video frame is a key frame, fresh, and sent within a round trip and a frame interval of
/// his first audio frame.
fn late_joiner(delay: Duration) {
    let mut sim = Sim::new(11, 0.0);
    sim.net.delay = delay;
    sim.join("alice");
    sim.publish(0);
    sim.run_for(Duration::from_secs(2));
    let joined = sim.now;
    sim.join("bob");
    // When alice sent each of her microphone's frames.
    let mut sent_at = Vec::new();
    while sim.now < joined + Duration::from_secs(4) {
        sent_at.push((sim.client("alice").audio_sent, sim.now));
        sim.run_for(Duration::from_millis(20));
    }
    let cam = sim.track_sid("alice", "cam");
    let mic = sim.track_sid("alice", "mic");
    let bob = sim.client("bob");
    let first = bob
        .video_rx
        .get(&cam)
        .and_then(|f| f.first())
        .expect("bob gets video");
    assert!(first.key, "bob's first video frame is a key frame");
    let late = first.at - first.sent;
    assert!(
        late < delay + Duration::from_millis(250),
        "bob's first frame came {late:?} after it was sent"
    );
    let first_audio = *bob.frames[&mic].first().expect("bob gets audio");
    let (_, audio_sent) = sent_at
        .iter()
        .find(|(count, _)| *count > first_audio)
        .expect("sent while bob was there");
    // A key frame request reaches alice about a path's delay after his first audio frame left
    // her (it was forwarded as his connection came up), and her next frame (every 100 ms) is
    // the key frame.
    let bound = delay * 2 + Duration::from_millis(150);
    assert!(
        first.sent.saturating_duration_since(*audio_sent) < bound,
        "bob's first audio frame was sent {:?} after he joined, his first video frame {:?}",
        audio_sent.saturating_duration_since(joined),
        first.sent.saturating_duration_since(joined),
    );
}

#[test]
fn nack_repairs_video_under_loss() {
    nack_repairs_video(7, Duration::from_millis(10));
}

/// 300 ms round trips: resends still come from the SFU's send buffers, which keep a second
/// of each stream (`RESEND_WINDOW`; at 400 ms this passes, at 100 ms this and the test above
/// fail).
#[test]
fn nack_repairs_video_on_a_long_round_trip() {
    nack_repairs_video(8, Duration::from_millis(150));
}

/// Without bandwidth estimation, so that every resend leaves at once: this checks the NACK
/// path itself. With estimation on, subscriber connections are paced, and on the long round
/// trip a run in about 20 went wrong in one of three ways (300 runs, 2026-12-04): a resend
/// queued behind paced media came after the receiver stopped waiting (two frames lost); a
/// loss was repaired by a probe's padding (which resends recent packets), so no NACK
/// was counted; or the receiver's
/// depacketizer stopped delivering frames (2.7 s of them, while the SFU kept forwarding).
/// A browser asks for a key frame when it cannot decode; the harness's str0m receiver does
/// not. Estimation off: none in 300 runs. perf/README.md keeps the figures.
fn nack_repairs_video(seed: u64, delay: Duration) {
    let mut sim = Sim::with_options(seed, 0.0, 3, 0);
    sim.net.delay = delay;
    sim.join("alice");
    sim.join("bob");
    sim.publish(0);
    sim.run_for(Duration::from_secs(1));
    // Bob's media path is up, and video reaches him, before the loss begins: on the long
    // round trip that takes over a second, and no media is written to a connection before.
    let sid = sim.track_sid("alice", "cam");
    let until = sim.now + Duration::from_secs(5);
    while sim
        .client("bob")
        .frames
        .get(&sid)
        .is_none_or(|f| f.is_empty())
        && sim.now < until
    {
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_millis(500));
    sim.net.loss = 0.05;
    let start = sim.client("alice").video_sent;
    sim.run_for(Duration::from_secs(4));
    sim.net.loss = 0.0;
    let end = sim.client("alice").video_sent;
    sim.run_for(Duration::from_secs(1));
    assert!(
        sim.net.lost > 20,
        "the network dropped packets ({})",
        sim.net.lost
    );

    let got = &sim.client("bob").frames[&sid];
    // One frame of the 40 may be missing (a resend lost again, past the resend window).
    let lost_frames = missing(got, start, end);
    assert!(
        lost_frames.len() <= 1,
        "video frames sent under 5% loss reached bob ({} packets lost): missing {lost_frames:?}",
        sim.net.lost
    );
    eprintln!(
        "lost {} of {} datagrams; {} video frames {start}..{end}; stats {:?}",
        sim.net.lost,
        sim.net.sent,
        got.len(),
        sim.sfu.stats()
    );
    assert!(
        sim.sfu.stats().nacks > 0,
        "bob's losses were repaired by NACKs to the SFU"
    );
}

#[test]
fn leaving_unpublishes_and_renegotiates() {
    let mut sim = Sim::new(3, 0.0);
    sim.join("alice");
    sim.join("bob");
    sim.publish(0);
    sim.run_for(Duration::from_secs(1));
    let offers_before = sim.client("bob").offers.len();
    assert!(
        !sim.client("bob").frames.is_empty(),
        "bob receives alice's media"
    );

    let alice = sim.client("alice").session;
    sim.commands.push(Command::Leave { session: alice });
    sim.run_for(Duration::from_millis(500));

    let bob = sim.client("bob");
    let info = &bob.others["alice"];
    assert_eq!(
        info.state,
        proto::participant_info::State::Disconnected as i32
    );
    assert!(info.tracks.is_empty());
    assert!(
        bob.offers.len() > offers_before,
        "bob's subscriber connection is renegotiated"
    );
    let last = bob.offers.last().expect("an offer");
    assert!(
        last.contains("m=audio 0 ") && last.contains("m=video 0 "),
        "alice's m-lines are stopped:\n{last}"
    );
    let stats = sim.sfu.stats();
    assert_eq!((stats.participants, stats.tracks), (1, 0));

    // The webhooks tell the same story, in order.
    let story: Vec<(String, String, String)> = sim
        .webhooks
        .iter()
        .map(|e| {
            let who = e
                .participant
                .as_ref()
                .map(|p| p.identity.clone())
                .unwrap_or_default();
            let track = e
                .track
                .as_ref()
                .map(|t| t.r#type.to_string())
                .unwrap_or_default();
            (e.event.clone(), who, track)
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("room_started", "", ""),
        ("participant_joined", "alice", ""),
        ("participant_joined", "bob", ""),
        ("track_published", "alice", "0"),
        ("track_published", "alice", "1"),
        ("track_unpublished", "alice", "0"),
        ("track_unpublished", "alice", "1"),
        ("participant_left", "alice", ""),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    let mut got = story.clone();
    // Two tracks of one publisher have no order between them.
    got[3..5].sort();
    got[5..7].sort();
    assert_eq!(got, expected);
    assert!(
        sim.webhooks
            .iter()
            .all(|e| e.room.as_ref().is_some_and(|r| r.name == "sim"))
    );
}

/// The SFU finds a subscriber's outgoing track by its place in the subscriber's list. A
/// subscriber that drops one publisher's tracks and takes them again at once moves others
/// into their places, and the tracks taken again get the places those had, before the moved
/// tracks' next frames. Each track's media keeps reaching it on its own m-line, without a gap.
#[test]
fn a_subscriber_that_drops_and_takes_again_some_tracks_gets_the_others_unbroken() {
    let mut sim = Sim::new(41, 0.0);
    publishing_room(&mut sim, 5);
    sim.run_for(Duration::from_secs(2));
    let received = |sim: &Sim, sid: &str| sim.client("p1").frames.get(sid).map_or(0, Vec::len);
    let mut tracks = Vec::new();
    for publisher in ["p2", "p3", "p4"] {
        for suffix in ["mic", "cam"] {
            let sid = sim.track_sid(publisher, suffix);
            assert!(received(&sim, &sid) > 0, "p1 receives {publisher}/{suffix}");
            tracks.push((publisher, suffix, received(&sim, &sid), sid));
        }
    }
    let session = sim.client("p1").session;
    let p0 = [sim.track_sid("p0", "mic"), sim.track_sid("p0", "cam")];
    for subscribe in [false, true] {
        sim.commands.push(Command::UpdateSubscription {
            session,
            track_sids: p0.to_vec(),
            subscribe,
        });
    }
    // p0's tracks come back on new m-lines once negotiated.
    sim.run_for(Duration::from_secs(1));
    for (sid, suffix) in p0.into_iter().zip(["mic", "cam"]) {
        tracks.push(("p0", suffix, received(&sim, &sid), sid));
    }
    sim.run_for(Duration::from_secs(2));
    for (publisher, suffix, n, sid) in tracks {
        let got = &sim.client("p1").frames[&sid];
        let since = &got[n - 1..];
        // Two seconds at least: 100 microphone frames and 20 camera frames.
        let least = if suffix == "mic" { 90 } else { 15 };
        assert!(
            since.len() > least,
            "p1 receives {publisher}/{suffix}: {} frames",
            since.len() - 1
        );
        assert!(
            since.windows(2).all(|w| w[1] == w[0] + 1),
            "p1 gets {publisher}/{suffix} in order, without a gap or another's frames: {since:?}"
        );
    }
}

/// The sids of `who`'s published video tracks.
fn video_sids(sim: &Sim, who: &str) -> Vec<String> {
    sim.client(who)
        .published
        .values()
        .filter(|t| t.r#type == proto::TrackType::Video as i32)
        .map(|t| t.sid.clone())
        .collect()
}

/// `n` participants p0, p1, … join, then each publishes a microphone and a camera.
fn publishing_room(sim: &mut Sim, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    for name in &names {
        sim.join(name);
    }
    for i in 0..n {
        sim.publish(i);
    }
    names
}

#[test]
fn tracks_published_together_reach_each_subscriber_in_a_few_offers() {
    let mut sim = Sim::new(23, 0.0);
    const N: usize = 12;
    let names = publishing_room(&mut sim, N);
    sim.run_for(Duration::from_secs(2));
    for (i, name) in names.iter().enumerate() {
        // The offer made at join, then the tracks that arrive within one negotiation
        // interval of it together (one offer per track would be 2 × 11 more).
        let offers = sim.client(name).offers.len();
        assert!(offers <= 3, "{name} got {offers} subscriber offers");
        for (j, other) in names.iter().enumerate() {
            if i == j {
                continue;
            }
            for sid in video_sids(&sim, other) {
                assert!(
                    received(&sim, name, &sid) > 0,
                    "{name} receives {other}'s video"
                );
            }
        }
    }
    // A track published later, on its own, is offered at once, not held back.
    let before: Vec<usize> = names.iter().map(|n| sim.client(n).offers.len()).collect();
    sim.join("late");
    sim.run_for(Duration::from_millis(300));
    sim.publish(N);
    sim.run_for(Duration::from_millis(20));
    for (name, b) in names.iter().zip(&before) {
        assert_eq!(
            sim.client(name).offers.len(),
            b + 1,
            "{name} is offered the late publisher's tracks within 20 ms"
        );
    }
}

#[test]
fn a_track_published_into_a_large_room_is_offered_a_few_subscribers_per_call() {
    let mut sim = Sim::new(31, 0.0);
    const N: usize = 24;
    let names = publishing_room(&mut sim, N);
    sim.join("late");
    sim.run_for(Duration::from_secs(1));
    let before: Vec<usize> = names.iter().map(|n| sim.client(n).offers.len()).collect();
    let deferred = sim.sfu.stats().offers_deferred;
    sim.offers_per_call = 0;
    sim.publish(N);
    sim.run_for(Duration::from_millis(20));
    // Each offer lists the 2 × 23 m-lines of the room's other tracks at least: one call of the
    // SFU writes as many as its budget holds (at least one), the rest follow in the next calls.
    let per_call = (OFFER_MLINES_PER_CALL / (2 * (N - 1))).max(1);
    assert!(
        sim.offers_per_call <= per_call,
        "{} offers came out of one call (the budget holds {per_call})",
        sim.offers_per_call
    );
    assert!(sim.sfu.stats().offers_deferred > deferred);
    // The held-back offers are due at once: every subscriber still has it within 20 ms.
    for (name, b) in names.iter().zip(&before) {
        assert_eq!(
            sim.client(name).offers.len(),
            b + 1,
            "{name} is offered the late publisher's tracks within 20 ms"
        );
    }
    sim.run_for(Duration::from_secs(1));
    let late = video_sids(&sim, "late");
    for name in &names {
        for sid in &late {
            assert!(
                received(&sim, name, sid) > 0,
                "{name} receives late's video"
            );
        }
    }
}

/// Opus RED (RFC 2198), as livekit-client publishes by default: the SFU's answer puts RED
/// first (libwebrtc sends RED only then), takes a lost packet's frame from the redundant copy
/// in the next packet, and sends RED on to subscribers, so random loss on both legs costs the
/// listener only the frames lost twice in a row. A microphone published with `disable_red`
/// (end-to-end encryption) is answered with Opus first and sent on without RED. The answer asks
/// for DTX (`usedtx=1`) unless the track says `disable_dtx`.
#[test]
fn opus_red_recovers_lost_audio_on_both_legs() {
    // Audio frames alice sent under 10 % loss on every link that bob did not get.
    let lost = |red: bool, disable: bool| -> (usize, u32, String) {
        let mut sim = Sim::new(41, 0.0);
        sim.red = red;
        sim.join("alice");
        sim.join("bob");
        sim.publish_with(0, |r| {
            r.disable_red = disable;
            if disable {
                // As livekit-client says `dtx: false`.
                r.audio_features
                    .push(proto::AudioTrackFeature::TfNoDtx as i32);
            }
        });
        sim.run_for(Duration::from_secs(1));
        let answer = sim.client("alice").last_publisher_answer.clone();
        if disable {
            // The publisher turns RED off itself (str0m, unlike libwebrtc, would wrap anyway).
            let c = &mut sim.clients[0];
            let mid = c.audio_mid.expect("a microphone");
            c.publisher.direct_api().set_red_send(mid, false);
        }
        sim.net.loss = 0.10;
        let start = sim.client("alice").audio_sent;
        sim.run_for(Duration::from_secs(10));
        sim.net.loss = 0.0;
        let end = sim.client("alice").audio_sent;
        sim.run_for(Duration::from_millis(500));
        let sid = sim.track_sid("alice", "mic");
        let got = &sim.client("bob").frames[&sid];
        (missing(got, start, end).len(), end - start, answer)
    };
    let audio_line = |sdp: &str| -> String {
        sdp.lines()
            .find(|l| l.starts_with("m=audio"))
            .expect("an audio m-line")
            .to_string()
    };
    let (plain, sent, _) = lost(false, false);
    let (with_red, sent_red, answer) = lost(true, false);
    let (disabled, sent_disabled, answer_disabled) = lost(true, true);
    eprintln!(
        "missing at bob: {plain} of {sent} without RED, {with_red} of {sent_red} with, {disabled} of {sent_disabled} with disable_red"
    );
    assert!(
        audio_line(&answer).ends_with(" 63 111"),
        "RED goes first: {}",
        audio_line(&answer)
    );
    assert!(answer.contains("a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n"));
    assert!(!answer_disabled.contains("usedtx"));
    assert!(
        audio_line(&answer_disabled).ends_with(" 111 63"),
        "Opus goes first: {}",
        audio_line(&answer_disabled)
    );
    // Two legs of 10 % loss: about 19 % of frames missing without RED, about 2 % with it
    // (a frame is lost when two packets in a row are, on either leg).
    assert!(plain * 100 >= sent as usize * 10, "{plain} of {sent}");
    assert!(
        with_red * 100 <= sent_red as usize * 6,
        "{with_red} of {sent_red}"
    );
    assert!(
        disabled * 100 >= sent_disabled as usize * 10,
        "{disabled} of {sent_disabled}"
    );
}

#[test]
fn a_second_session_with_the_same_identity_evicts_the_first() {
    let mut sim = Sim::new(4, 0.0);
    sim.join("alice");
    sim.join("alice");
    let first = &sim.clients[0];
    let leave = first
        .left
        .as_ref()
        .expect("the first session is told to leave");
    assert_eq!(
        leave.reason,
        proto::DisconnectReason::DuplicateIdentity as i32
    );
    assert!(first.closed);
    assert!(!sim.clients[1].closed);
    assert_eq!(sim.sfu.stats().participants, 1);
}

#[test]
fn garbage_datagrams_are_dropped_and_counted() {
    let mut sim = Sim::new(5, 0.0);
    sim.join("alice");
    sim.publish(0);
    sim.run_for(Duration::from_millis(500));
    let before = sim.sfu.stats().dropped_datagrams;
    let mut rng = StdRng::seed_from_u64(99);
    let mut sent = 0;
    for n in 0..2000u32 {
        let len = rng.random_range(0..1500);
        let mut data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if n % 3 == 0 && data.len() >= 20 {
            // Looks like STUN: magic cookie, random attributes.
            data[0] = 0;
            data[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        }
        let from: SocketAddr = format!("10.9.{}.{}:{}", n % 200, n % 250, 1000 + n)
            .parse()
            .unwrap();
        sim.sfu.handle_receive(sim.now, from, sfu_addr(), &data);
        sent += 1;
    }
    sim.run_for(Duration::from_millis(500));
    assert_eq!(
        sim.sfu.stats().dropped_datagrams - before,
        sent,
        "every stray datagram counted"
    );
    // The meeting goes on.
    let audio_before = sim.client("alice").audio_sent;
    sim.run_for(Duration::from_millis(500));
    assert!(sim.client("alice").audio_sent > audio_before);
}

/// A caller that sends and recycles each datagram before it takes the next (as the media
/// worker and this harness do) gets a fan-out's datagrams encrypted into a few buffers, not
/// one each: the SFU takes a connection's datagrams from str0m as they are asked for (the
/// first of each connection woken by an input is queued), instead of draining every
/// connection into its queue first (which held a key frame's fan-out in a large room,
/// thousands of buffers, and emptied str0m's pool).
#[test]
fn a_fan_out_is_encrypted_as_it_is_taken() {
    let mut sim = Sim::new(21, 0.0);
    let n = 5;
    for i in 0..n {
        sim.join(&format!("p{i}"));
    }
    for i in 0..n {
        sim.publish(i);
    }
    sim.run_for(Duration::from_secs(2));
    sim.fan_out_buffers = Some(Vec::new());
    sim.run_for(Duration::from_secs(1));
    let seen = sim.fan_out_buffers.take().unwrap();
    // Each client's frame goes to the n - 1 others in several packets (two of video size);
    // every client sends at the same instant, so one drain of the harness follows the
    // inputs of the room's frames. Taken as they are sent, the first packet of each frame's
    // copy to a subscriber is held and the rest reuse the buffer recycled last (about half
    // as many buffers as datagrams); drained whole, every datagram had a buffer of its own.
    let fan_outs: Vec<_> = seen.iter().filter(|(large, _)| *large >= 6).collect();
    assert!(
        fan_outs.len() >= 10,
        "{} drains with a fan-out to measure: {seen:?}",
        fan_outs.len()
    );
    let few = fan_outs
        .iter()
        .filter(|&&&(large, buffers)| buffers * 2 <= large)
        .count();
    assert!(
        few * 4 >= fan_outs.len() * 3,
        "{few} of {} fan-outs encrypted into at most half as many buffers: {seen:?}",
        fan_outs.len()
    );
}

#[test]
fn single_and_two_peer_connection_clients_meet() {
    let mut sim = Sim::new(11, 0.0);
    sim.join_with("alice", true);
    sim.join_with("bob", false);
    sim.publish(0);
    sim.publish(1);
    sim.run_for(Duration::from_secs(1));
    // Carol joins after the tracks exist: they ride her join offer's receive m-lines.
    sim.join_with("carol", true);
    sim.publish(2);
    sim.run_for(Duration::from_secs(3));

    for me in ["alice", "bob", "carol"] {
        for other in ["alice", "bob", "carol"].into_iter().filter(|o| *o != me) {
            for (suffix, sent) in [
                ("mic", sim.client(other).audio_sent),
                ("cam", sim.client(other).video_sent),
            ] {
                let sid = sim.track_sid(other, suffix);
                let got = sim.client(me).frames.get(&sid).map(Vec::len).unwrap_or(0);
                assert!(
                    got as f64 >= 0.6 * sent as f64,
                    "{me} got {got} of {sent} {suffix} frames from {other}"
                );
            }
        }
    }
    sim.send_data(0, b"from a single connection", &[]);
    sim.send_data(1, b"from two connections", &["carol"]);
    sim.run_for(Duration::from_millis(300));
    let payloads = |who: &str| -> Vec<Vec<u8>> {
        sim.client(who)
            .data
            .iter()
            .filter_map(|p| match &p.value {
                Some(proto::data_packet::Value::User(u)) => Some(u.payload.clone()),
                _ => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    assert_eq!(payloads("bob"), vec![b"from a single connection".to_vec()]);
    // Two senders: no order between them.
    assert_eq!(
        payloads("carol"),
        vec![
            b"from a single connection".to_vec(),
            b"from two connections".to_vec()
        ]
    );
}

/// Chromium may trickle its TCP candidates (`tcptype active`, port 9) before its first STUN
/// check reaches the server. They pair with none of the server's UDP candidates, so the ICE
/// agent reports "disconnected: no possible pairs" until the check arrives; a connection that
/// never was up must not be closed for that (it was: in about one run in four of the browser
/// meeting test, the third joiner got "could not establish pc connection").
#[test]
fn candidates_that_pair_with_nothing_do_not_end_a_connection_before_its_first_check() {
    let mut sim = Sim::new(19, 0.0);
    sim.join_with("alice", true);
    sim.publish(0);
    // Bob's offers have no candidate, and his first check reaches the server 100 ms after the
    // TCP candidates he trickles.
    sim.offer_candidates = false;
    sim.net.delay = Duration::from_millis(100);
    let bob = sim.join_queued("bob", true);
    let session = sim.clients[bob].session;
    for address in ["192.0.2.2", "fd00::2"] {
        sim.commands.push(Command::Trickle {
            session,
            candidate_init: format!(
                r#"{{"candidate":"candidate:1 1 tcp 1518214911 {address} 9 typ host tcptype active","sdpMid":"0","sdpMLineIndex":0}}"#
            ),
            target: proto::SignalTarget::Publisher as i32,
        });
    }
    sim.run_for(Duration::from_millis(500));
    sim.publish(bob);
    sim.run_for(Duration::from_secs(2));
    let c = sim.client("bob");
    assert!(!c.closed && c.left.is_none(), "bob's connection was closed");
    let sid = sim.track_sid("alice", "mic");
    let got = c.frames.get(&sid).map(Vec::len).unwrap_or(0);
    assert!(got > 50, "bob got {got} of alice's audio frames");
    let sid = sim.track_sid("bob", "mic");
    let got = sim
        .client("alice")
        .frames
        .get(&sid)
        .map(Vec::len)
        .unwrap_or(0);
    assert!(got > 50, "alice got {got} of bob's audio frames");

    // Once connected, a client that goes silent is gone: its session ends when ICE gives up.
    sim.clients[bob].publisher.disconnect();
    sim.run_for(Duration::from_secs(10));
    assert!(
        !sim.client("bob").closed,
        "bob was dropped before ICE gave up"
    );
    sim.run_for(Duration::from_secs(10));
    assert!(
        sim.client("bob").closed,
        "a silent client's session is not ended"
    );
    assert_eq!(sim.sfu.stats().participants, 1);
}

/// livekit-client announces its microphone (AddTrack) right after joining, before its offer
/// carries the microphone's m-line; the join offer's receive-only lines must not be taken for
/// it (they were, when one was the only audio line new to the SFU: the microphone was then
/// unpublished by the next offer, where that line still did not send, and nobody heard it).
#[test]
fn a_microphone_announced_at_join_is_not_bound_to_a_receive_line() {
    let mut sim = Sim::new(17, 0.0);
    sim.join_with("alice", true);
    sim.publish(0);
    sim.run_for(Duration::from_secs(1));
    let bob = sim.join_queued("bob", true);
    sim.announce_mic(bob);
    sim.run_for(Duration::from_millis(500));
    let announced = sim.client("bob").published["bob-mic"].sid.clone();
    sim.publish(bob);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.client("bob").published["bob-mic"].sid, announced);
    let sent = sim.client("bob").audio_sent;
    let got = sim
        .client("alice")
        .frames
        .get(&announced)
        .map_or(0, Vec::len);
    assert!(
        got as f64 >= 0.6 * sent as f64,
        "alice got {got} of bob's {sent} microphone frames"
    );
}

#[test]
fn rooms_close_after_their_timeouts() {
    let mut sim = Sim::new(13, 0.0);
    sim.commands.push(Command::Service {
        id: 1,
        call: Box::new(ServiceCall::CreateRoom(proto::CreateRoomRequest {
            name: "later".into(),
            empty_timeout: 2,
            max_participants: 1,
            ..Default::default()
        })),
        unix_ms: 0,
    });
    sim.run_for(Duration::from_secs(1));
    let Some((1, Ok(ServiceReply::Room(room)))) = sim.replies.first().cloned() else {
        panic!("CreateRoom answers the room: {:?}", sim.replies);
    };
    assert!(room.sid.starts_with("RM_") && room.name == "later");
    assert_eq!(
        sim.sfu.stats().rooms,
        1,
        "a created room waits for its participants"
    );
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.sfu.stats().rooms, 0, "nobody came within empty_timeout");

    // A room everyone left closes after departure_timeout (20 s by default).
    sim.join("alice");
    let alice = sim.client("alice").session;
    sim.commands.push(Command::Leave { session: alice });
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.sfu.stats().rooms, 1);
    sim.run_for(Duration::from_secs(11));
    assert_eq!(sim.sfu.stats().rooms, 0);
    let finished: Vec<&str> = sim
        .webhooks
        .iter()
        .filter(|e| e.event == "room_finished")
        .filter_map(|e| e.room.as_ref().map(|r| r.name.as_str()))
        .collect();
    assert_eq!(finished, ["later", "sim"], "room_finished for both rooms");

    // Unknown rooms and participants are errors, not panics.
    sim.commands.push(Command::Service {
        id: 2,
        call: Box::new(ServiceCall::ListParticipants(
            proto::ListParticipantsRequest {
                room: "nope".into(),
            },
        )),
        unix_ms: 0,
    });
    sim.pump();
    assert!(matches!(
        sim.replies.last(),
        Some((2, Err(ServiceError::NotFound(_))))
    ));
}

#[test]
fn a_full_room_refuses_the_next_participant() {
    let mut sim = Sim::new(14, 0.0);
    sim.commands.push(Command::Service {
        id: 1,
        call: Box::new(ServiceCall::CreateRoom(proto::CreateRoomRequest {
            name: "sim".into(),
            max_participants: 1,
            ..Default::default()
        })),
        unix_ms: 0,
    });
    sim.pump();
    sim.join("alice");
    sim.join("bob");
    assert!(sim.client("alice").joined.is_some());
    let bob = sim.client("bob");
    assert!(bob.joined.is_none() && bob.closed, "bob is refused");
    assert_eq!(
        bob.left.as_ref().map(|l| l.reason),
        Some(proto::DisconnectReason::JoinFailure as i32)
    );
}

#[test]
fn a_lost_signal_connection_may_resume_within_the_window() {
    let mut sim = Sim::new(15, 0.0);
    sim.join("alice");
    sim.join("bob");
    sim.publish(0);
    sim.run_for(Duration::from_secs(1));
    let (alice, bob) = (sim.client("alice").session, sim.client("bob").session);

    // Alice's socket drops; her media keeps flowing while the server waits for her.
    sim.commands.push(Command::Disconnect { session: alice });
    let before = sim
        .client("bob")
        .frames
        .values()
        .map(Vec::len)
        .sum::<usize>();
    sim.run_for(Duration::from_secs(5));
    let after = sim
        .client("bob")
        .frames
        .values()
        .map(Vec::len)
        .sum::<usize>();
    assert!(
        after > before + 100,
        "media flows during the outage ({before} → {after})"
    );
    assert_eq!(sim.sfu.stats().participants, 2);

    // Someone else cannot take her session over.
    sim.commands.push(Command::Resume {
        session: alice,
        identity: "mallory".into(),
    });
    sim.pump();
    let refused = sim
        .client("alice")
        .left
        .clone()
        .expect("a refused resume is told to rejoin");
    assert_eq!(
        refused.action,
        proto::leave_request::Action::Reconnect as i32
    );

    // Bob's socket drops and does not come back: he leaves after the window.
    sim.commands.push(Command::Disconnect { session: bob });
    sim.run_for(parloir_sfu::RESUME_WINDOW + Duration::from_secs(1));
    assert_eq!(sim.sfu.stats().participants, 0, "neither resumed in time");
    let left = who_left(&sim);
    assert_eq!(left.len(), 2, "{left:?}");
}

/// The identities of the participant_left webhooks so far, oldest first.
fn who_left(sim: &Sim) -> Vec<&str> {
    sim.webhooks
        .iter()
        .filter(|e| e.event == "participant_left")
        .filter_map(|e| e.participant.as_ref().map(|p| p.identity.as_str()))
        .collect()
}

/// Frames `who` received of every track so far.
fn frames_at(sim: &Sim, who: &str) -> usize {
    sim.client(who).frames.values().map(Vec::len).sum()
}

/// Cuts client `i`'s UDP path (both peer connections' addresses) and runs until it is told to
/// leave or 30 s have passed; returns how long that took.
fn cut_until_told_to_resume(sim: &mut Sim, i: usize) -> Duration {
    let addrs = [
        sim.clients[i].publisher_addr,
        sim.clients[i].subscriber_addr,
    ];
    sim.net.cut.extend(addrs);
    let cut_at = sim.now;
    while sim.clients[i].left.is_none() && sim.now - cut_at < Duration::from_secs(30) {
        sim.run_for(Duration::from_millis(100));
    }
    sim.now - cut_at
}

#[test]
fn a_client_whose_media_path_fails_is_asked_to_resume_and_gets_its_media_back() {
    media_path_fails_then_resume(18, false);
}

#[test]
fn a_single_connection_client_whose_media_path_fails_resumes_too() {
    media_path_fails_then_resume(20, true);
}

fn media_path_fails_then_resume(seed: u64, single: bool) {
    let mut sim = Sim::new(seed, 0.0);
    sim.join_with("alice", single);
    sim.join_with("bob", single);
    sim.publish(0);
    sim.publish(1);
    sim.run_for(Duration::from_secs(2));
    let sid = sim
        .client("alice")
        .joined
        .clone()
        .expect("joined")
        .participant
        .expect("me")
        .sid;
    let cam = sim.track_sid("alice", "cam");

    // Alice's UDP path goes away (a firewall, a NAT that dropped its mapping); her signal
    // connection stays up.
    let after = cut_until_told_to_resume(&mut sim, 0);
    assert!(
        after > Duration::from_secs(5),
        "ICE gives the path time to come back: {after:?}"
    );
    let leave = sim
        .client("alice")
        .left
        .clone()
        .expect("alice is told to resume");
    assert_eq!(leave.action, proto::leave_request::Action::Resume as i32);
    assert_eq!(
        leave.reason,
        proto::DisconnectReason::ConnectionTimeout as i32
    );
    assert!(leave.can_reconnect);
    assert!(
        !sim.client("alice").closed,
        "her signal connection stays open"
    );
    assert_eq!(
        sim.sfu.stats().participants,
        2,
        "she stays in the room meanwhile"
    );
    assert!(who_left(&sim).is_empty(), "nobody left");

    // Her path is back; she resumes within the window, as livekit-client does at once.
    sim.net.cut.clear();
    sim.clients[0].left = None;
    sim.resume(0);
    let (alice_before, bob_before) = (frames_at(&sim, "alice"), received(&sim, "bob", &cam));
    sim.run_for(parloir_sfu::TRANSPORT_RESUME_WINDOW + Duration::from_secs(3));
    let me = sim
        .client("alice")
        .others
        .get("alice")
        .map(|p| p.sid.clone());
    assert_eq!(
        me.as_deref(),
        Some(sid.as_str()),
        "the same participant, not a new join"
    );
    assert_eq!(sim.sfu.stats().participants, 2);
    assert!(
        sim.client("alice").left.is_none(),
        "{:?}",
        sim.client("alice").left
    );
    let (alice_after, bob_after) = (frames_at(&sim, "alice"), received(&sim, "bob", &cam));
    assert!(
        alice_after > alice_before + 100,
        "Bob's media reaches Alice again ({alice_before} → {alice_after})"
    );
    assert!(
        bob_after > bob_before + 20,
        "Alice's camera reaches Bob again ({bob_before} → {bob_after})"
    );
    assert!(who_left(&sim).is_empty(), "nobody left");
}

#[test]
fn a_client_that_does_not_resume_after_its_media_path_failed_leaves() {
    let mut sim = Sim::new(19, 0.0);
    sim.join("alice");
    sim.join("bob");
    sim.publish(0);
    sim.publish(1);
    sim.run_for(Duration::from_secs(2));
    let addrs = [
        sim.clients[0].publisher_addr,
        sim.clients[0].subscriber_addr,
    ];
    sim.net.cut.extend(addrs);
    // Long enough for ICE to give up on her pairs and for the window after it.
    sim.run_for(
        Duration::from_secs(20) + parloir_sfu::TRANSPORT_RESUME_WINDOW + Duration::from_secs(2),
    );
    assert_eq!(sim.sfu.stats().participants, 1, "alice left");
    let leave = sim.client("alice").left.clone().expect("a leave");
    assert_eq!(
        leave.action,
        proto::leave_request::Action::Disconnect as i32
    );
    assert_eq!(
        leave.reason,
        proto::DisconnectReason::ConnectionTimeout as i32
    );
    assert!(sim.client("alice").closed);
    let left = who_left(&sim);
    assert_eq!(left, ["alice"]);
    let bob = sim
        .client("bob")
        .others
        .get("alice")
        .expect("bob knows of alice");
    assert_eq!(
        bob.state,
        proto::participant_info::State::Disconnected as i32,
        "bob hears that she left"
    );
}

#[test]
fn a_client_whose_media_path_comes_back_by_itself_stays_without_resuming() {
    let mut sim = Sim::new(21, 0.0);
    sim.join("alice");
    sim.join("bob");
    sim.publish(0);
    sim.publish(1);
    sim.run_for(Duration::from_secs(2));
    let cam = sim.track_sid("alice", "cam");
    cut_until_told_to_resume(&mut sim, 0);
    let leave = sim
        .client("alice")
        .left
        .clone()
        .expect("alice is told to resume");
    assert_eq!(leave.action, proto::leave_request::Action::Resume as i32);

    // Her path comes back; her client ignores the request to resume (an SDK without it)
    // and goes on checking its pairs, so ICE is up again.
    sim.net.cut.clear();
    let (alice_before, bob_before) = (frames_at(&sim, "alice"), received(&sim, "bob", &cam));
    sim.run_for(parloir_sfu::TRANSPORT_RESUME_WINDOW + Duration::from_secs(3));
    assert_eq!(sim.sfu.stats().participants, 2, "she is still in the room");
    assert!(who_left(&sim).is_empty(), "nobody left");
    assert!(
        !sim.client("alice").closed,
        "her signal connection stays open"
    );
    let (alice_after, bob_after) = (frames_at(&sim, "alice"), received(&sim, "bob", &cam));
    assert!(
        alice_after > alice_before + 100,
        "Bob's media reaches Alice again ({alice_before} → {alice_after})"
    );
    assert!(
        bob_after > bob_before + 20,
        "Alice's camera reaches Bob again ({bob_before} → {bob_after})"
    );
}

#[test]
fn a_client_that_lost_its_path_and_then_its_socket_leaves_even_if_the_path_comes_back() {
    let mut sim = Sim::new(22, 0.0);
    sim.join("alice");
    sim.join("bob");
    sim.publish(0);
    sim.run_for(Duration::from_secs(2));
    let alice = sim.client("alice").session;
    cut_until_told_to_resume(&mut sim, 0);
    let asked = sim.now;
    // Her socket goes too, then her path comes back: with no signal connection there is
    // nothing to resume on, and the media path alone does not keep her.
    sim.commands.push(Command::Disconnect { session: alice });
    sim.net.cut.clear();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.sfu.stats().participants, 2, "within the window");
    while who_left(&sim).is_empty() && sim.now - asked < Duration::from_secs(30) {
        sim.run_for(Duration::from_millis(100));
    }
    assert_eq!(who_left(&sim), ["alice"]);
    let after = sim.now - asked;
    assert!(
        after <= parloir_sfu::TRANSPORT_RESUME_WINDOW + Duration::from_secs(1),
        "the first loss's deadline holds: {after:?}"
    );
}

/// The layers a subscriber received since `from` (an index into its received video frames).
fn layers_since(sim: &Sim, who: &str, sid: &str, from: usize) -> Vec<u8> {
    sim.client(who)
        .video_rx
        .get(sid)
        .map(|v| v[from.min(v.len())..].iter().map(|f| f.layer).collect())
        .unwrap_or_default()
}

fn received(sim: &Sim, who: &str, sid: &str) -> usize {
    sim.client(who).video_rx.get(sid).map_or(0, Vec::len)
}

fn settings(sim: &mut Sim, who: &str, sid: &str, s: proto::UpdateTrackSettings) {
    let session = sim.client(who).session;
    sim.commands.push(Command::UpdateTrackSettings {
        session,
        settings: proto::UpdateTrackSettings {
            track_sids: vec![sid.to_string()],
            ..s
        },
    });
}

/// Adaptive stream's settings for a tile of `w`x`h`.
fn size(w: u32, h: u32) -> proto::UpdateTrackSettings {
    proto::UpdateTrackSettings {
        width: w,
        height: h,
        ..Default::default()
    }
}

/// Subscribers "small" and "large" show `cam` in a 320x180 and a 1280x720 tile (as adaptive
/// stream asks); the layers each received over 2 s once settled.
fn small_and_large_tiles(sim: &mut Sim, cam: &str) -> (Vec<u8>, Vec<u8>) {
    settings(sim, "small", cam, size(320, 180));
    settings(sim, "large", cam, size(1280, 720));
    sim.run_for(Duration::from_secs(4));
    let (s0, l0) = (received(sim, "small", cam), received(sim, "large", cam));
    sim.run_for(Duration::from_secs(2));
    let small = layers_since(sim, "small", cam, s0);
    let large = layers_since(sim, "large", cam, l0);
    assert!(
        small.len() >= 15 && large.len() >= 15,
        "{small:?} {large:?}"
    );
    (small, large)
}

#[test]
fn each_subscriber_gets_the_simulcast_layer_it_asks_for() {
    let mut sim = Sim::new(7, 0.0);
    for name in ["pub", "small", "large"] {
        sim.join(name);
    }
    sim.clients[0].simulcast = true;
    sim.publish(0);
    sim.run_for(Duration::from_secs(2));
    let cam = sim.track_sid("pub", "cam");
    let (small, large) = small_and_large_tiles(&mut sim, &cam);
    assert!(
        small.iter().all(|l| *l == 0),
        "the small tile gets q: {small:?}"
    );
    assert!(
        large.iter().all(|l| *l == 2),
        "the large tile gets f: {large:?}"
    );

    // The small tile becomes the large one: it moves up to f at a key frame.
    let before = received(&sim, "small", &cam);
    settings(&mut sim, "small", &cam, size(1280, 720));
    sim.run_for(Duration::from_secs(4));
    let after = layers_since(&sim, "small", &cam, before);
    let switched = after
        .iter()
        .position(|l| *l == 2)
        .expect("it switched to f");
    assert!(
        after[..switched].iter().all(|l| *l == 0) && after[switched..].iter().all(|l| *l == 2),
        "one switch, no flapping: {after:?}"
    );
    // One continuous stream for the receiver: RTP time only moves forward, by about the
    // frame interval (4500 at 90 kHz for 20 fps), across the switch too, although each
    // layer has its own timestamp base.
    let times: Vec<u64> = sim.client("small").video_rx[&cam]
        .iter()
        .map(|f| f.time)
        .collect();
    for w in times[before.saturating_sub(1)..].windows(2) {
        let step = w[1].wrapping_sub(w[0]);
        assert!(
            (1..=4 * 4500).contains(&step),
            "timestamps step by {step} at the switch: {:?}",
            &times[before.saturating_sub(1)..]
        );
    }

    // A tile scrolled out of view (disabled) gets nothing until it comes back.
    let off = received(&sim, "large", &cam);
    settings(
        &mut sim,
        "large",
        &cam,
        proto::UpdateTrackSettings {
            disabled: true,
            ..Default::default()
        },
    );
    sim.run_for(Duration::from_secs(2));
    assert!(
        received(&sim, "large", &cam) <= off + 1,
        "a disabled track is not forwarded"
    );
    settings(&mut sim, "large", &cam, size(320, 180));
    sim.run_for(Duration::from_secs(4));
    let back = layers_since(&sim, "large", &cam, off + 1);
    assert!(
        back.ends_with(&[0, 0, 0]),
        "back on the small layer: {back:?} (all: {:?}, off at {off})",
        sim.client("large").video_rx[&cam]
    );
}

#[test]
fn a_track_turned_off_and_on_again_resumes_at_a_key_frame() {
    // A simulcast camera, a single-layer camera and a microphone, turned off by a viewer (a
    // tile scrolled out of view, `setEnabled(false)`): none of them is forwarded to it. Turned
    // on again at the same size, each camera resumes at a key frame (the frames in between
    // never reached the decoder, so a delta frame would decode against stale references) and
    // the microphone at once.
    let mut sim = Sim::new(13, 0.0);
    for name in ["sc", "plain", "viewer"] {
        sim.join(name);
    }
    sim.clients[0].simulcast = true;
    sim.publish(0);
    sim.publish(1);
    sim.run_for(Duration::from_secs(2));
    let cams = [sim.track_sid("sc", "cam"), sim.track_sid("plain", "cam")];
    let mics = [sim.track_sid("sc", "mic"), sim.track_sid("plain", "mic")];
    for cam in &cams {
        settings(&mut sim, "viewer", cam, size(320, 180));
    }
    sim.run_for(Duration::from_secs(3));
    let heard = |sim: &Sim| {
        [
            audio_received(sim, "viewer", "sc"),
            audio_received(sim, "viewer", "plain"),
        ]
    };
    let seen = |sim: &Sim| cams.clone().map(|c| received(sim, "viewer", &c));
    let off = proto::UpdateTrackSettings {
        disabled: true,
        ..Default::default()
    };
    for sid in cams.iter().chain(&mics) {
        settings(&mut sim, "viewer", sid, off.clone());
    }
    sim.run_for(Duration::from_millis(100));
    let (seen_off, heard_off) = (seen(&sim), heard(&sim));
    sim.run_for(Duration::from_secs(2));
    assert_eq!(seen(&sim), seen_off, "turned-off cameras are not forwarded");
    assert_eq!(
        heard(&sim),
        heard_off,
        "turned-off microphones are not forwarded"
    );

    for cam in &cams {
        settings(&mut sim, "viewer", cam, size(320, 180));
    }
    for mic in &mics {
        settings(
            &mut sim,
            "viewer",
            mic,
            proto::UpdateTrackSettings::default(),
        );
    }
    sim.run_for(Duration::from_secs(3));
    for (cam, from) in cams.iter().zip(seen_off) {
        let frames = &sim.client("viewer").video_rx[cam][from..];
        assert!(frames.len() >= 20, "{cam} is back: {} frames", frames.len());
        assert!(
            frames[0].key,
            "{cam} resumes at a key frame: {:?}",
            &frames[..3]
        );
    }
    let back = heard(&sim);
    for (b, o) in back.iter().zip(heard_off) {
        assert!(
            b - o >= 140,
            "microphones are back at once: {back:?} from {heard_off:?}"
        );
    }
}

#[test]
fn svc_subscribers_get_the_spatial_layers_their_tiles_need() {
    // Without bandwidth estimation (the server's default): the layers follow the tiles only.
    let mut sim = Sim::with_options(23, 0.0, 3, 0);
    sim.layer_bytes = [400, 900, 2000];
    sim.join_svc("pub");
    for name in ["small", "large"] {
        sim.join(name);
    }
    sim.publish_svc(0);
    sim.run_for(Duration::from_secs(2));
    let cam = sim.track_sid("pub", "cam");
    let (small, large) = small_and_large_tiles(&mut sim, &cam);
    assert!(
        small.iter().all(|l| *l == 0),
        "the small tile gets the lowest spatial layer only: {small:?}"
    );
    assert!(
        large.iter().all(|l| *l == 2),
        "the large tile gets all three: {large:?}"
    );

    // The small tile grows: it goes up at a key picture, and only there.
    let before = received(&sim, "small", &cam);
    settings(&mut sim, "small", &cam, size(1280, 720));
    sim.run_for(Duration::from_secs(3));
    let frames = &sim.client("small").video_rx[&cam][before..];
    let up = frames.iter().position(|f| f.layer == 2).unwrap_or_else(|| {
        panic!(
            "it went up to the top layer: {frames:?}, {} key frame requests",
            sim.sfu.stats().keyframe_requests
        )
    });
    assert!(frames[up].key, "up on a key picture: {frames:?}");
    assert!(
        frames[..up].iter().all(|f| f.layer == 0) && frames[up..].iter().all(|f| f.layer == 2),
        "one switch: {frames:?}"
    );

    // The encoder drops its top layer for half a second, then sends it again: the grown tile
    // gets what comes meanwhile and the top layer again after, with no key picture asked for.
    let before = received(&sim, "small", &cam);
    let keys_asked = sim.sfu.stats().keyframe_requests;
    sim.clients[0].svc_layers = 2;
    sim.run_for(Duration::from_millis(500));
    sim.clients[0].svc_layers = 3;
    sim.run_for(Duration::from_secs(1));
    let layers = layers_since(&sim, "small", &cam, before);
    let dropped = layers.iter().filter(|l| **l == 1).count();
    assert!(
        (3..=6).contains(&dropped) && layers.ends_with(&[2; 5]),
        "the top layer went and came back: {layers:?}"
    );
    assert_eq!(sim.sfu.stats().keyframe_requests, keys_asked);

    // The large tile shrinks to the middle size: it goes down on the next picture, without
    // waiting for a key picture, and misses none.
    let before = received(&sim, "large", &cam);
    let keys_asked = sim.sfu.stats().keyframe_requests;
    settings(&mut sim, "large", &cam, size(640, 360));
    sim.run_for(Duration::from_secs(2));
    let frames = &sim.client("large").video_rx[&cam][before..];
    assert!(frames.len() >= 15, "{frames:?}");
    assert!(
        frames[1..].iter().all(|f| f.layer == 1),
        "down to the middle layer at once: {frames:?}"
    );
    assert_eq!(
        sim.sfu.stats().keyframe_requests,
        keys_asked,
        "going down needs no key picture"
    );
    // Every picture came, in order, to both: no gap in either stream across the switches.
    for who in ["small", "large"] {
        let counters = &sim.client(who).frames[&cam];
        for w in counters.windows(2) {
            assert_eq!(w[1], w[0] + 1, "{who} got every picture: {counters:?}");
        }
    }
}

#[test]
fn a_subscriber_that_asks_for_fewer_frames_per_second_gets_fewer_temporal_layers() {
    // An L3T3 camera at 25 pictures/s: layer 0 gives 6.25 of them, layers 0-1 12.5.
    let mut sim = Sim::with_options(29, 0.0, 3, 0);
    sim.layer_bytes = [400, 900, 2000];
    sim.video_every = 2;
    sim.join_svc("pub");
    sim.clients[0].svc_temporal = 3;
    for name in ["slow", "full"] {
        sim.join(name);
    }
    sim.publish_svc(0);
    sim.run_for(Duration::from_secs(3));
    let cam = sim.track_sid("pub", "cam");
    let fps = |fps| proto::UpdateTrackSettings {
        fps,
        ..size(1280, 720)
    };
    // The temporal layers of what `who` got over `secs` seconds, once a change settled.
    let window = |sim: &mut Sim, secs| {
        sim.run_for(Duration::from_secs(1));
        let from = ["slow", "full"].map(|w| received(sim, w, &cam));
        sim.run_for(Duration::from_secs(secs));
        let got = |w: usize, who| -> Vec<u8> {
            sim.client(who).video_rx[&cam][from[w]..]
                .iter()
                .map(|f| f.temporal)
                .collect()
        };
        (got(0, "slow"), got(1, "full"))
    };
    let count = |v: &[u8], t| v.iter().filter(|x| **x == t).count();

    let (slow, full) = window(&mut sim, 2);
    assert!(
        (45..=55).contains(&slow.len()),
        "everything at first: {slow:?}"
    );
    assert!(count(&slow, 2).abs_diff(slow.len() / 2) <= 1, "{slow:?}");

    let keys = sim.sfu.stats().keyframe_requests;
    settings(&mut sim, "slow", &cam, fps(12));
    let (slow, full_meanwhile) = window(&mut sim, 2);
    assert!(
        slow.iter().all(|t| *t <= 1) && (22..=28).contains(&slow.len()),
        "12 frames/s: layers 0 and 1, 12.5 pictures/s: {slow:?}"
    );
    assert!(count(&slow, 1).abs_diff(count(&slow, 0)) <= 1, "{slow:?}");
    assert_eq!(
        full_meanwhile.len(),
        full.len(),
        "the other subscriber is untouched"
    );

    settings(&mut sim, "slow", &cam, fps(6));
    let (slow, _) = window(&mut sim, 4);
    assert!(
        slow.iter().all(|t| *t == 0) && (22..=28).contains(&slow.len()),
        "6 frames/s: layer 0, 6.25 pictures/s: {slow:?}"
    );

    // Back to everything: up at a layer-0 picture, from which on nothing is missing.
    let before = received(&sim, "slow", &cam);
    settings(&mut sim, "slow", &cam, fps(0));
    sim.run_for(Duration::from_secs(2));
    let after = &sim.client("slow").video_rx[&cam][before..];
    let up = after
        .iter()
        .position(|f| f.temporal > 0)
        .unwrap_or_else(|| panic!("it went up: {after:?}"));
    assert_eq!(
        after[up - 1].temporal,
        0,
        "up right after a layer-0 picture"
    );
    for w in after[up - 1..].windows(2) {
        assert_eq!(
            w[1].counter,
            w[0].counter + 1,
            "every picture after: {after:?}"
        );
    }
    // Fewer frames never asked for a key frame, and the receiver saw one unbroken stream.
    assert_eq!(sim.sfu.stats().keyframe_requests, keys);
    let frames = &sim.client("slow").video_rx[&cam];
    assert!(
        frames.iter().skip(1).all(|f| f.contiguous),
        "no gap to wait on"
    );
    for w in frames.windows(2) {
        assert!(w[1].counter > w[0].counter && w[1].time > w[0].time);
    }
}

#[test]
fn a_resume_applies_the_answer_the_client_made_before_its_socket_dropped() {
    let mut sim = Sim::new(16, 0.0);
    sim.join("alice");
    sim.join("bob");
    sim.run_for(Duration::from_secs(1));
    // Bob publishes; the SFU offers his tracks to Alice, who applies the offer, but her answer
    // is lost with her socket.
    sim.clients[0].lose_answers = true;
    sim.publish(1);
    sim.run_for(Duration::from_millis(200));
    let alice = sim.client("alice").session;
    let offers = sim.client("alice").offers.len();
    let applied = sim
        .client("alice")
        .offers
        .last()
        .cloned()
        .expect("an offer");
    let answer = sim.client("alice").last_answer.clone().expect("an answer");
    assert!(applied.contains("m=audio") || applied.contains("m=video"));
    sim.commands.push(Command::Disconnect { session: alice });
    sim.run_for(Duration::from_millis(500));
    sim.clients[0].lose_answers = false;
    sim.commands.push(Command::Resume {
        session: alice,
        identity: "alice".into(),
    });
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.client("alice").offers.len(),
        offers,
        "no new offer before the client says what it applied"
    );
    // Her SyncState carries the offer she applied and her answer: the SFU takes the answer,
    // then restarts ICE with an offer that keeps the m-lines where they were.
    sim.commands.push(Command::SyncState {
        session: alice,
        offer: Some(applied.clone()),
        answer: Some(answer),
    });
    sim.run_for(Duration::from_secs(3));
    let restart = sim.client("alice").offers[offers..]
        .first()
        .cloned()
        .expect("an ICE-restart offer follows");
    let mids = |sdp: &str| -> Vec<String> {
        sdp.lines()
            .filter_map(|l| l.strip_prefix("a=mid:"))
            .map(str::to_string)
            .collect()
    };
    let (before, after) = (mids(&applied), mids(&restart));
    assert!(
        after.starts_with(&before),
        "the m-lines she has keep their order (new ones follow): {before:?} → {after:?}"
    );
    let cam = sim.track_sid("bob", "cam");
    let got = sim.client("alice").frames.get(&cam).map_or(0, Vec::len);
    assert!(got > 10, "Bob's video reaches Alice: {got} frames");
}

#[test]
fn a_resume_without_sync_state_offers_again_after_a_while() {
    let mut sim = Sim::new(17, 0.0);
    sim.join("alice");
    sim.join("bob");
    sim.run_for(Duration::from_secs(1));
    // The offer of Bob's tracks is lost with Alice's socket; her client never sees it.
    sim.clients[0].lose_offers = true;
    sim.publish(1);
    sim.run_for(Duration::from_millis(200));
    let alice = sim.client("alice").session;
    let offers = sim.client("alice").offers.len();
    sim.commands.push(Command::Disconnect { session: alice });
    sim.clients[0].lose_offers = false;
    sim.commands.push(Command::Resume {
        session: alice,
        identity: "alice".into(),
    });
    sim.run_for(Duration::from_secs(4));
    assert!(
        sim.client("alice").offers.len() > offers,
        "the SFU offers again once the wait for SyncState is over"
    );
    let cam = sim.track_sid("bob", "cam");
    let got = sim.client("alice").frames.get(&cam).map_or(0, Vec::len);
    assert!(got > 10, "Bob's video reaches Alice: {got} frames");
}

/// The qualities (low, medium, high) the latest dynacast update for `sid` enables.
fn enabled(sim: &Sim, publisher: &str, sid: &str) -> Vec<bool> {
    let update = sim
        .client(publisher)
        .quality_updates
        .iter()
        .rev()
        .find(|u| u.track_sid == sid)
        .expect("a SubscribedQualityUpdate for the camera");
    let codec = update.subscribed_codecs.first().expect("per codec");
    assert_eq!(codec.codec, "vp8");
    let mut q: Vec<(i32, bool)> = codec
        .qualities
        .iter()
        .map(|q| (q.quality, q.enabled))
        .collect();
    q.sort();
    q.into_iter().map(|(_, e)| e).collect()
}

#[test]
fn publishers_are_told_which_layers_their_subscribers_need() {
    let mut sim = Sim::new(9, 0.0);
    for name in ["pub", "a", "b"] {
        sim.join(name);
    }
    sim.clients[0].simulcast = true;
    sim.publish(0);
    sim.run_for(Duration::from_secs(2));
    let cam = sim.track_sid("pub", "cam");
    // Nobody said anything yet: everything may be needed.
    assert_eq!(enabled(&sim, "pub", &cam), [true, true, true]);
    // Both show it small: only the lowest layer is needed.
    settings(&mut sim, "a", &cam, size(320, 180));
    settings(&mut sim, "b", &cam, size(320, 180));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(enabled(&sim, "pub", &cam), [true, false, false]);
    let updates = sim.client("pub").quality_updates.len();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        sim.client("pub").quality_updates.len(),
        updates,
        "nothing changed, nothing is sent"
    );
    // One shows it at 640x360: the middle layer comes back.
    settings(&mut sim, "b", &cam, size(640, 360));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(enabled(&sim, "pub", &cam), [true, true, false]);
    // The one who wanted it leaves: the middle layer is needed no more.
    let b = sim.client("b").session;
    sim.commands.push(Command::Leave { session: b });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(enabled(&sim, "pub", &cam), [true, false, false]);
    // Someone joins and says nothing: everything may be needed again.
    sim.join("c");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(enabled(&sim, "pub", &cam), [true, true, true]);
    settings(&mut sim, "c", &cam, size(640, 360));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(enabled(&sim, "pub", &cam), [true, true, false]);
    // Turned off by both: the lowest layer stays, for the next subscriber to start at once.
    let off = proto::UpdateTrackSettings {
        disabled: true,
        ..Default::default()
    };
    settings(&mut sim, "a", &cam, off.clone());
    settings(&mut sim, "c", &cam, off);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(enabled(&sim, "pub", &cam), [true, false, false]);
}

/// Audio frames received from `publisher`'s microphone so far.
fn audio_received(sim: &Sim, who: &str, publisher: &str) -> usize {
    let mic = sim.track_sid(publisher, "mic");
    sim.client(who).frames.get(&mic).map_or(0, Vec::len)
}

#[test]
fn only_the_loudest_and_the_speaking_are_heard() {
    // One loudest participant plus anyone speaking.
    let mut sim = Sim::with_loudest_audio(11, 0.0, 1);
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        sim.join(name);
    }
    for i in 0..4 {
        sim.publish(i);
    }
    // Alice speaks loudly, Bob softly; Carol and Dave are silent (DTX-level frames).
    for (i, level) in [(0, -10), (1, -40), (2, -127), (3, -127)] {
        sim.clients[i].audio_level = Some(level);
    }
    sim.run_for(Duration::from_secs(3));
    let before: Vec<usize> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|p| audio_received(&sim, "erin", p))
        .collect();
    sim.run_for(Duration::from_secs(2));
    let during: Vec<usize> = ["alice", "bob", "carol", "dave"]
        .iter()
        .zip(&before)
        .map(|(p, b)| audio_received(&sim, "erin", p) - b)
        .collect();
    // 2 s of 20 ms frames: 100 each from the two speakers, none from the silent two.
    assert!(
        during[0] >= 95 && during[1] >= 95,
        "speakers are heard: {during:?}"
    );
    assert_eq!(
        (during[2], during[3]),
        (0, 0),
        "the silent are not forwarded: {during:?}"
    );

    // Bob stops speaking: after the hangover he is silent and not the loudest: not forwarded.
    sim.clients[1].audio_level = Some(-127);
    sim.run_for(Duration::from_secs(2));
    let b = audio_received(&sim, "erin", "bob");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(audio_received(&sim, "erin", "bob"), b, "bob went quiet");

    // Carol starts speaking: heard from her first loud frame on, with no gap.
    let c0 = audio_received(&sim, "erin", "carol");
    sim.clients[2].audio_level = Some(-20);
    sim.run_for(Duration::from_secs(2));
    let carol = audio_received(&sim, "erin", "carol") - c0;
    assert!(carol >= 95, "carol is heard at once: {carol}");
    // Publishers hear the others too (not themselves), and no audio was lost on the way.
    assert!(audio_received(&sim, "alice", "carol") > 0);
    let stats = sim.sfu.stats();
    assert!(stats.audio_gated > 0);
}

#[test]
fn small_rooms_and_audio_without_levels_are_all_heard() {
    // Three publishers with loudest-3: everyone is among the loudest, silent or not.
    let mut sim = Sim::with_loudest_audio(12, 0.0, 3);
    for name in ["a", "b", "c", "d"] {
        sim.join(name);
    }
    for i in 0..3 {
        sim.publish(i);
        sim.clients[i].audio_level = Some(-127);
    }
    // The fourth publishes without the level extension: always forwarded.
    sim.publish(3);
    sim.run_for(Duration::from_secs(3));
    let before: Vec<usize> = ["a", "b", "c"]
        .iter()
        .map(|p| audio_received(&sim, "d", p))
        .collect();
    let no_level = audio_received(&sim, "a", "d");
    sim.run_for(Duration::from_secs(2));
    for (p, b) in ["a", "b", "c"].iter().zip(before) {
        let got = audio_received(&sim, "d", p) - b;
        assert!(got >= 95, "{p} is among the 3 loudest: {got}");
    }
    assert!(audio_received(&sim, "a", "d") - no_level >= 95);
}

#[test]
fn a_150_person_room_costs_each_client_o_n_signal_messages() {
    let mut sim = Sim::new(13, 0.0);
    const N: usize = 150;
    let mut per_join_max = 0;
    for i in 0..N {
        let before: Vec<u64> = sim.clients.iter().map(|c| c.signals).collect();
        sim.join(&format!("p{i}"));
        sim.run_for(Duration::from_millis(50));
        // Each participant already in the room hears of the newcomer in a bounded number of
        // messages, whatever the room's size.
        let most = sim.clients[..i]
            .iter()
            .zip(&before)
            .map(|(c, b)| c.signals - b)
            .max()
            .unwrap_or(0);
        per_join_max = per_join_max.max(most);
    }
    // RoomUpdates go out on the 300 ms tick, not per join.
    sim.run_for(Duration::from_secs(1));
    assert!(
        per_join_max <= 3,
        "messages per join per client: {per_join_max}"
    );
    assert!(
        sim.clients.iter().all(|c| c.joined.is_some()),
        "everyone joined"
    );
    // And everyone knows everyone: the JoinResponse lists those before, updates those after.
    for c in &sim.clients {
        let known = c.joined.as_ref().map_or(0, |j| j.other_participants.len()) + c.others.len();
        assert!(known >= N - 1, "{} knows {known} others", c.identity);
    }
    let first = sim.clients[0].signals;
    assert!(
        first <= 3 * N as u64,
        "the first to join got {first} messages for {N} joins: O(N)"
    );
    // Everyone leaves: again a bounded number of messages per event for those still there.
    let mut per_leave_max = 0;
    for i in 0..N - 1 {
        let before: Vec<u64> = sim.clients.iter().map(|c| c.signals).collect();
        let session = sim.clients[i].session;
        sim.commands.push(Command::Leave { session });
        sim.run_for(Duration::from_millis(50));
        let most = sim.clients[i + 1..]
            .iter()
            .zip(&before[i + 1..])
            .map(|(c, b)| c.signals - b)
            .max()
            .unwrap_or(0);
        per_leave_max = per_leave_max.max(most);
    }
    assert!(
        per_leave_max <= 3,
        "messages per leave per client: {per_leave_max}"
    );
    // The last one was told of every departure.
    let gone = sim.clients[N - 1]
        .others
        .values()
        .filter(|p| p.state == proto::participant_info::State::Disconnected as i32)
        .count();
    assert_eq!(gone, N - 1, "every leave reached the last participant");
    let last = &sim.clients[N - 1];
    assert!(
        last.signals <= 4 * N as u64,
        "the last one saw {N} leaves in {} messages",
        last.signals
    );
}

#[test]
fn subtitles_reach_everyone_as_text_streams_and_transcription_packets() {
    let mut sim = Sim::new(21, 0.0);
    for name in ["alice", "bob", "carol"] {
        sim.join(name);
    }
    for i in 0..3 {
        sim.publish(i);
    }
    sim.run_for(Duration::from_secs(2));
    let track = sim.track_sid("alice", "mic");
    let subtitle = |text: &str, is_final: bool| parloir_sfu::Subtitle {
        room: "sim".into(),
        identity: "alice".into(),
        track_sid: track.clone(),
        segment_id: "SG_alice_1".into(),
        text: text.into(),
        is_final,
        language: "fr".into(),
        start_ms: 700,
        end_ms: 2500,
    };
    for (id, (text, fin)) in [("Bonjour à", false), ("Bonjour à tous.", true)]
        .into_iter()
        .enumerate()
    {
        sim.commands.push(Command::Service {
            id: 100 + id as u64,
            call: Box::new(ServiceCall::Subtitle(subtitle(text, fin))),
            unix_ms: 1_700_000_000_000,
        });
    }
    sim.run_for(Duration::from_secs(1));
    assert!(
        sim.replies
            .iter()
            .any(|(id, r)| *id == 101 && r == &Ok(ServiceReply::Empty))
    );
    let alice_sid = sim
        .client("alice")
        .joined
        .clone()
        .unwrap()
        .participant
        .unwrap()
        .sid;
    // Everyone, the speaker included, gets both updates both ways.
    for me in ["alice", "bob", "carol"] {
        let data = &sim.client(me).data;
        let legacy: Vec<&proto::Transcription> = data
            .iter()
            .filter_map(|p| match &p.value {
                Some(proto::data_packet::Value::Transcription(t)) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(legacy.len(), 2, "{me}: two Transcription packets");
        assert_eq!(legacy[1].transcribed_participant_identity, "alice");
        assert_eq!(legacy[1].track_id, track);
        let seg = &legacy[1].segments[0];
        assert!(seg.r#final && seg.text == "Bonjour à tous." && seg.language == "fr");
        assert_eq!(
            (seg.start_time, seg.end_time, seg.id.as_str()),
            (700, 2500, "SG_alice_1")
        );

        let headers: Vec<(&proto::DataPacket, &proto::data_stream::Header)> = data
            .iter()
            .filter_map(|p| match &p.value {
                Some(proto::data_packet::Value::StreamHeader(h)) => Some((p, h)),
                _ => None,
            })
            .collect();
        assert_eq!(headers.len(), 2, "{me}: one text stream per update");
        for (p, h) in &headers {
            // Sent as the speaker, sequence 0 (no duplicate check), on the reliable channel.
            assert_eq!(p.participant_identity, "alice");
            assert_eq!(p.participant_sid, alice_sid);
            assert_eq!(p.sequence, 0);
            assert_eq!(h.topic, "lk.transcription");
            assert_eq!(h.attributes["lk.transcribed_track_id"], track);
            assert_eq!(h.attributes["lk.segment_id"], "SG_alice_1");
        }
        assert_ne!(headers[0].1.stream_id, headers[1].1.stream_id);
        assert_eq!(headers[0].1.attributes["lk.transcription_final"], "false");
        assert_eq!(headers[1].1.attributes["lk.transcription_final"], "true");
        // Each stream: its whole text in chunk 0, then the trailer.
        let id = &headers[1].1.stream_id;
        let chunk = data.iter().find_map(|p| match &p.value {
            Some(proto::data_packet::Value::StreamChunk(c)) if &c.stream_id == id => Some(c),
            _ => None,
        });
        assert_eq!(
            chunk.map(|c| (c.chunk_index, &c.content[..])),
            Some((0, "Bonjour à tous.".as_bytes()))
        );
        assert_eq!(
            headers[1].1.total_length,
            Some("Bonjour à tous.".len() as u64)
        );
        assert!(data.iter().any(|p| matches!(&p.value,
            Some(proto::data_packet::Value::StreamTrailer(t)) if &t.stream_id == id)));
    }
    // A subtitle for a room that is not there is an error, not a panic.
    sim.commands.push(Command::Service {
        id: 200,
        call: Box::new(ServiceCall::Subtitle(parloir_sfu::Subtitle {
            room: "gone".into(),
            ..subtitle("x", true)
        })),
        unix_ms: 0,
    });
    sim.pump();
    assert!(matches!(
        sim.replies.last(),
        Some((200, Err(ServiceError::NotFound(_))))
    ));
}

/// Counts the frames the speech plane would get, per room.
#[derive(Clone, Default)]
struct CountingTap(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>);

impl parloir_sfu::AudioTap for CountingTap {
    fn frame(&mut self, frame: parloir_sfu::AudioFrame) {
        assert!(frame.room_sid.starts_with("RM_"));
        *self.0.lock().unwrap().entry(frame.room).or_default() += 1;
    }
}

#[test]
fn room_metadata_turns_the_speech_plane_off_and_on() {
    let mut sim = Sim::new(22, 0.0);
    let tap = CountingTap::default();
    sim.sfu.set_audio_tap(Box::new(tap.clone()));
    let count = || tap.0.lock().unwrap().get("sim").copied().unwrap_or(0);
    sim.join("alice");
    sim.publish(0);
    sim.run_for(Duration::from_secs(2));
    let on = count();
    assert!(on > 20, "rooms give their audio by default: {on} frames");

    let metadata = |id: u64, value: &str| Command::Service {
        id,
        call: Box::new(ServiceCall::UpdateRoomMetadata(
            proto::UpdateRoomMetadataRequest {
                room: "sim".into(),
                metadata: value.into(),
            },
        )),
        unix_ms: 0,
    };
    sim.commands
        .push(metadata(1, r#"{"theme":"dark","parloir.subtitles":false}"#));
    sim.run_for(Duration::from_millis(100));
    let at_off = count();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(count(), at_off, "no audio once the metadata says false");
    // Metadata that is not JSON, or without the key, leaves the server's default.
    sim.commands.push(metadata(2, "plain text"));
    sim.run_for(Duration::from_secs(1));
    assert!(count() > at_off + 20, "back to the default");
    sim.commands
        .push(metadata(3, r#"{"parloir.subtitles":true}"#));
    sim.run_for(Duration::from_millis(100));
    let before = count();
    sim.run_for(Duration::from_secs(1));
    assert!(count() > before + 20);
    assert!(sim.replies.iter().all(|(_, r)| r.is_ok()));
}

/// Keeps the languages of the frames the speech plane would get.
#[derive(Clone, Default)]
struct LanguageTap(std::sync::Arc<std::sync::Mutex<Vec<Option<Vec<String>>>>>);

impl parloir_sfu::AudioTap for LanguageTap {
    fn frame(&mut self, frame: parloir_sfu::AudioFrame) {
        self.0
            .lock()
            .unwrap()
            .push(frame.languages.map(|l| l.to_vec()));
    }
}

#[test]
fn room_metadata_names_the_languages_spoken() {
    let mut sim = Sim::new(23, 0.0);
    let tap = LanguageTap::default();
    sim.sfu.set_audio_tap(Box::new(tap.clone()));
    sim.join("alice");
    sim.publish(0);
    sim.run_for(Duration::from_secs(1));
    let last = || tap.0.lock().unwrap().last().cloned().flatten();
    assert_eq!(
        last(),
        None,
        "no languages named: the server's configuration applies"
    );
    for (id, metadata, expected) in [
        (1, r#"{"parloir.languages":"fr"}"#, Some(vec!["fr"])),
        (
            2,
            r#"{"parloir.languages":"fr, en"}"#,
            Some(vec!["fr", "en"]),
        ),
        (
            3,
            r#"{"parloir.languages":["de","en"]}"#,
            Some(vec!["de", "en"]),
        ),
        (4, r#"{"parloir.languages":["../x", ""]}"#, None),
        (5, "not json", None),
    ] {
        sim.commands.push(Command::Service {
            id,
            call: Box::new(ServiceCall::UpdateRoomMetadata(
                proto::UpdateRoomMetadataRequest {
                    room: "sim".into(),
                    metadata: metadata.into(),
                },
            )),
            unix_ms: 0,
        });
        sim.run_for(Duration::from_millis(300));
        let want = expected.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(last(), want, "{metadata}");
    }
}

/// `who`'s frames of `publisher`'s `suffix` track, and whether none is missing once flowing.
fn frames_without_gaps(sim: &Sim, who: &str, publisher: &str, suffix: &str) -> usize {
    let sid = sim.track_sid(publisher, suffix);
    let got = sim
        .client(who)
        .frames
        .get(&sid)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let (Some(first), Some(last)) = (got.first(), got.last()) {
        assert_eq!(
            missing(got, *first, *last),
            Vec::<u32>::new(),
            "{who} misses frames of {publisher}/{suffix}"
        );
    }
    got.len()
}

#[test]
fn a_room_spans_media_workers() {
    let mut sim = Sim::with_workers(21, 2);
    let home = parloir_sfu::home_worker("sim", 2) as u16;
    let other = 1 - home;
    // alice and carol on the room's home worker, bob and dave on the other.
    for (name, worker) in [
        ("alice", home),
        ("bob", other),
        ("carol", home),
        ("dave", other),
    ] {
        sim.next_worker = worker;
        sim.join(name);
    }
    sim.clients[0].simulcast = true;
    for i in 0..3 {
        sim.publish(i);
    }
    sim.run_for(Duration::from_secs(3));
    assert!(sim.relayed > 0);

    // Everyone sees everyone, wherever they are, with their tracks.
    for me in ["alice", "bob", "carol", "dave"] {
        for them in ["alice", "bob", "carol"].into_iter().filter(|t| *t != me) {
            let info = sim
                .client(me)
                .others
                .get(them)
                .unwrap_or_else(|| panic!("{me} was told of {them}"));
            assert_eq!(info.tracks.len(), 2, "{me} sees {them}'s tracks");
            for suffix in ["mic", "cam"] {
                // (alice's simulcast camera may skip frames at a layer switch.)
                let got = if them == "alice" && suffix == "cam" {
                    received(&sim, me, &sim.track_sid(them, suffix))
                } else {
                    frames_without_gaps(&sim, me, them, suffix)
                };
                let sent = match suffix {
                    "mic" => sim.client(them).audio_sent,
                    _ => sim.client(them).video_sent,
                };
                assert!(
                    got as f64 >= 0.6 * f64::from(sent),
                    "{me} got {got} of {sent} {suffix} frames from {them}"
                );
            }
        }
        let room = sim.client(me).room.clone().expect("a RoomUpdate");
        assert_eq!(
            (room.num_participants, room.num_publishers),
            (4, 3),
            "{me}'s room counts everyone"
        );
    }
    // One room: the home worker's sid everywhere. bob, the first on the other worker, joined
    // before it was known there: an empty sid (livekit-client waits for the RoomUpdate).
    let joined_sid = |me: &str| {
        sim.client(me)
            .joined
            .as_ref()
            .and_then(|j| j.room.clone())
            .map(|r| r.sid)
    };
    assert_eq!(joined_sid("bob").as_deref(), Some(""));
    assert!(joined_sid("alice").is_some_and(|s| s.starts_with("RM_")));
    assert_eq!(joined_sid("dave"), joined_sid("alice"));
    let sid = |me: &str| sim.client(me).room.as_ref().map(|r| r.sid.clone());
    assert_eq!(sid("bob"), sid("alice"));
    assert_eq!(sid("dave"), sid("carol"));

    // Simulcast across workers: bob (other worker) shows alice's camera small, dave large.
    let cam = sim.track_sid("alice", "cam");
    settings(&mut sim, "bob", &cam, size(320, 180));
    settings(&mut sim, "dave", &cam, size(1280, 720));
    sim.run_for(Duration::from_secs(4));
    let (b0, d0) = (received(&sim, "bob", &cam), received(&sim, "dave", &cam));
    sim.run_for(Duration::from_secs(2));
    let small = layers_since(&sim, "bob", &cam, b0);
    let large = layers_since(&sim, "dave", &cam, d0);
    assert!(
        small.len() >= 15 && small.iter().all(|l| *l == 0),
        "{small:?}"
    );
    assert!(
        large.len() >= 15 && large.iter().all(|l| *l == 2),
        "{large:?}"
    );
    // Dynacast counts the other worker's subscribers: carol shows it small too, so only
    // dave keeps the top layer on; once dave shrinks it, only the lowest is needed.
    settings(&mut sim, "carol", &cam, size(320, 180));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(enabled(&sim, "alice", &cam), [true, true, true]);
    settings(&mut sim, "dave", &cam, size(320, 180));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(enabled(&sim, "alice", &cam), [true, false, false]);

    // Data crosses workers, to everyone and to one named participant.
    sim.send_data(1, b"from bob", &[]);
    sim.send_data(0, b"for dave", &["dave"]);
    sim.run_for(Duration::from_millis(300));
    let payloads = |who: &str| -> Vec<Vec<u8>> {
        let mut p: Vec<Vec<u8>> = sim
            .client(who)
            .data
            .iter()
            .filter_map(|p| match &p.value {
                Some(proto::data_packet::Value::User(u)) => Some(u.payload.clone()),
                _ => None,
            })
            .collect();
        p.sort();
        p
    };
    assert_eq!(payloads("alice"), vec![b"from bob".to_vec()]);
    assert_eq!(payloads("carol"), vec![b"from bob".to_vec()]);
    assert_eq!(
        payloads("dave"),
        vec![b"for dave".to_vec(), b"from bob".to_vec()]
    );
    assert!(payloads("bob").is_empty(), "no echo to the sender");

    // RoomService at the room's home worker: it lists everyone; a call about a participant of
    // the other worker acts there; a recording records every worker's tracks.
    let call = |sim: &mut Sim, id: u64, call: ServiceCall| {
        sim.commands.push(Command::Service {
            id,
            call: Box::new(call),
            unix_ms: 0,
        });
        sim.run_for(Duration::from_millis(300));
        sim.replies
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, r)| r.clone())
            .expect("an answer")
    };
    let listed = call(
        &mut sim,
        1,
        ServiceCall::ListParticipants(proto::ListParticipantsRequest { room: "sim".into() }),
    );
    let Ok(ServiceReply::Participants(list)) = listed else {
        panic!("{listed:?}");
    };
    let mut names: Vec<String> = list
        .participants
        .iter()
        .map(|p| p.identity.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["alice", "bob", "carol", "dave"]);
    let bob_mic = sim.track_sid("bob", "mic");
    let muted = call(
        &mut sim,
        2,
        ServiceCall::MutePublishedTrack(proto::MuteRoomTrackRequest {
            room: "sim".into(),
            identity: "bob".into(),
            track_sid: bob_mic.clone(),
            muted: true,
        }),
    );
    assert!(matches!(muted, Ok(ServiceReply::Track(_))), "{muted:?}");
    let muted_for = |who: &str| {
        sim.client(who).others["bob"]
            .tracks
            .iter()
            .any(|t| t.sid == bob_mic && t.muted)
    };
    assert!(muted_for("alice") && muted_for("carol") && muted_for("dave"));
    let told_muted = |who: &str| {
        sim.client(who)
            .updates
            .iter()
            .filter(|p| p.identity == "bob" && p.tracks.iter().any(|t| t.sid == bob_mic && t.muted))
            .count()
    };
    for me in ["alice", "carol", "dave"] {
        assert_eq!(told_muted(me), 1, "{me} was told of bob's mute once");
    }
    // Renaming bob (a mirror here, acted on at his worker) tells each client once.
    let renamed = call(
        &mut sim,
        4,
        ServiceCall::UpdateParticipant(proto::UpdateParticipantRequest {
            room: "sim".into(),
            identity: "bob".into(),
            name: "Bob B.".into(),
            ..Default::default()
        }),
    );
    assert!(
        matches!(renamed, Ok(ServiceReply::Participant(_))),
        "{renamed:?}"
    );
    for me in ["alice", "bob", "carol", "dave"] {
        let told = sim
            .client(me)
            .updates
            .iter()
            .filter(|p| p.identity == "bob" && p.name == "Bob B.")
            .count();
        assert_eq!(told, 1, "{me} was told of bob's new name once");
    }
    call(
        &mut sim,
        3,
        ServiceCall::Record {
            room: "sim".into(),
            on: true,
        },
    )
    .expect("recording");
    for me in ["bob", "dave"] {
        assert!(
            sim.client(me)
                .room
                .as_ref()
                .is_some_and(|r| r.active_recording),
            "{me} is told the meeting is recorded"
        );
    }

    // bob leaves: the others see him go, and his tracks leave their connections.
    let bob = sim.client("bob").session;
    sim.commands.push(Command::Leave { session: bob });
    sim.run_for(Duration::from_millis(500));
    for me in ["alice", "carol", "dave"] {
        let info = &sim.client(me).others["bob"];
        assert_eq!(
            info.state,
            proto::participant_info::State::Disconnected as i32,
            "{me} saw bob leave"
        );
        let last = sim.client(me).offers.last().expect("an offer");
        assert!(
            last.contains("m=audio 0 ") && last.contains("m=video 0 "),
            "{me} renegotiated without bob's tracks"
        );
    }
    // Each worker counts its own; webhooks come once per event.
    let (h, o) = (sim.sfu_of(home).stats(), sim.sfu_of(other).stats());
    assert_eq!((h.rooms, o.rooms), (1, 0));
    assert_eq!((h.participants, o.participants), (2, 1));
    assert_eq!((h.tracks, o.tracks), (4, 0));
    assert!(h.frames_relayed_in > 0 && o.frames_relayed_in > 0);
    let count = |event: &str| sim.webhooks.iter().filter(|e| e.event == event).count();
    assert_eq!(count("room_started"), 1);
    assert_eq!(count("participant_joined"), 4);
    assert_eq!(count("track_published"), 6);
    assert_eq!(count("participant_left"), 1);
    assert_eq!(count("track_unpublished"), 2);
}

#[test]
fn a_participant_on_another_worker_meets_those_left_when_the_home_worker_empties() {
    let mut sim = Sim::with_workers(22, 2);
    let home = parloir_sfu::home_worker("sim", 2) as u16;
    let other = 1 - home;
    for (name, worker) in [("alice", home), ("bob", other)] {
        sim.next_worker = worker;
        sim.join(name);
    }
    sim.run_for(Duration::from_millis(500));
    // alice leaves: only bob is left, on the other worker, and the home worker keeps his
    // mirror (and the room).
    let alice = sim.client("alice").session;
    sim.commands.push(Command::Leave { session: alice });
    sim.run_for(Duration::from_millis(500));
    // carol joins on the other worker too, erin on the home worker: everyone meets.
    sim.next_worker = other;
    sim.join("carol");
    sim.next_worker = home;
    sim.join("erin");
    sim.publish(3);
    sim.run_for(Duration::from_secs(2));
    for me in ["bob", "carol"] {
        let c = sim.client(me);
        assert!(c.others.contains_key("erin"), "{me} sees erin");
        assert!(
            c.frames.contains_key(&sim.track_sid("erin", "mic")),
            "{me} hears erin"
        );
    }
    let e = sim.client("erin");
    assert!(e.others.contains_key("bob") && e.others.contains_key("carol"));
    assert_eq!(e.room.as_ref().map(|r| r.num_participants), Some(3));
    let count = |event: &str| sim.webhooks.iter().filter(|e| e.event == event).count();
    assert_eq!(count("room_started"), 1);
    assert_eq!(count("room_finished"), 0);
}

#[test]
fn timeouts_due_together_are_spread_over_calls() {
    // 30 publishers: each subscriber connection carries 58 m-lines of others' tracks.
    let mut sim = Sim::with_options(23, 0.0, 3, 0);
    for i in 0..30 {
        sim.join(&format!("p{i}"));
    }
    for i in 0..30 {
        sim.publish(i);
    }
    sim.run_for(Duration::from_secs(2));
    // Two seconds pass without a call: every connection's timers are due at once.
    sim.now += Duration::from_secs(2);
    let now = sim.now;
    let mut calls = Vec::new();
    loop {
        let before = sim.sfu.stats().rtc_timeouts;
        sim.sfu.handle_timeout(now);
        let served = sim.sfu.stats().rtc_timeouts - before;
        // Drain what the call produced (the datagrams are dropped: no time passes here).
        while !matches!(sim.sfu.poll_output(), parloir_sfu::Output::Timeout(_)) {}
        if served == 0 {
            break;
        }
        calls.push(served);
    }
    let total: u64 = calls.iter().sum();
    assert!(total >= 60, "every connection was served: {calls:?}");
    // About TIMEOUT_MLINES_PER_CALL (512) m-lines a call: 30 subscriber connections of 59
    // take at least four calls (the publishers' small connections fit many to a call).
    assert!(calls.len() >= 4, "spread over calls: {calls:?}");
}

#[test]
fn paced_timeouts_are_not_held_back_by_the_report_budget() {
    // The same room with bandwidth estimation on: each subscriber connection's pacer asks for
    // a timeout after every packet it lets out. A timeout with no report or statistics due
    // visits only what has work, so a call serves every connection it finds due. Counted by
    // their 59 m-lines, as report timeouts are, they were served nine a call, and in the
    // forwarding bench at 50 participants a third of the datagrams went out.
    let mut sim = Sim::with_options(23, 0.0, 3, 1000);
    for i in 0..30 {
        sim.join(&format!("p{i}"));
    }
    for i in 0..30 {
        sim.publish(i);
    }
    sim.run_for(Duration::from_secs(2));
    let mut served = Vec::new();
    for _ in 0..20 {
        // A few milliseconds on: pacers are due, reports (about one a second) seldom.
        sim.now += Duration::from_millis(3);
        let now = sim.now;
        let before = sim.sfu.stats().rtc_timeouts;
        sim.sfu.handle_timeout(now);
        served.push(sim.sfu.stats().rtc_timeouts - before);
        sim.run_for(Duration::from_millis(20));
    }
    // Charged by their size every call served 9 (20 of 20); now a call serves all that are
    // due (30 in 8 calls of 20, none due in 8).
    let whole = served.iter().filter(|&&n| n >= 20).count();
    assert!(whole >= 4, "calls that served 20 or more: {served:?}");
}

#[test]
fn a_subscriber_key_frame_request_on_a_scalable_track_reaches_its_publisher() {
    let mut sim = Sim::with_options(24, 0.0, 3, 0);
    sim.layer_bytes = [400, 900, 2000];
    sim.join_svc("pub");
    sim.join("small");
    sim.publish_svc(0);
    sim.run_for(Duration::from_secs(2));
    let cam = sim.track_sid("pub", "cam");
    settings(&mut sim, "small", &cam, size(320, 180));
    sim.run_for(Duration::from_secs(2));
    assert!(received(&sim, "small", &cam) > 10, "the camera flows");
    // The subscriber's decoder asks for a key frame (a PLI on its m-line): the publisher is
    // asked for one, for its one stream (a scalable track's layers are not simulcast rids).
    let mid = sim
        .client("small")
        .sub_tracks
        .iter()
        .find(|(_, sid)| **sid == cam)
        .map(|(mid, _)| Mid::from(mid.as_str()))
        .expect("the camera's m-line");
    let before = received(&sim, "small", &cam);
    sim.clients[1]
        .subscriber
        .direct_api()
        .stream_rx_by_mid(mid, None)
        .expect("the camera's receive stream")
        .request_keyframe(str0m::media::KeyframeRequestKind::Pli);
    sim.run_for(Duration::from_millis(400));
    let after = &sim.client("small").video_rx[&cam][before..];
    assert!(
        after.iter().any(|f| f.key),
        "a key picture came (the publisher sends one every 6 s unasked): {after:?}"
    );
}
