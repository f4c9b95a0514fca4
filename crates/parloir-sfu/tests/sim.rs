//! Deterministic simulation of the SFU with in-process str0m clients.
//!
//! Clients speak to the SFU the way livekit-client does over `/rtc` (two peer connections):
//! join, answer the subscriber offer, AddTrack then offer on the publisher connection. Datagrams
//! travel through a seeded network model (delay, jitter, loss); time jumps to the next deadline,
//! so seconds of meeting run in milliseconds. The network's choices are seeded; str0m's own
//! randomness (DTLS keys, SSRCs) is not, so packet counts can differ slightly between runs and
//! assertions leave room for that rather than pinning exact figures.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parloir_sfu::{
    Command, JoinCommand, Layout, Output, ServiceCall, ServiceError, ServiceReply, SessionId, Sfu,
    SfuConfig, proto,
};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Rtc};

const SFU: &str = "10.0.0.1:7882";
const AUDIO_EVERY: Duration = Duration::from_millis(20);

/// Video frames span several packets so that loss hits inside frames.
const VIDEO_FRAME_BYTES: usize = 3000;

fn sfu_addr() -> SocketAddr {
    SFU.parse().expect("constant address")
}

/// A datagram in flight.
struct Packet {
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

struct Net {
    rng: StdRng,
    delay: Duration,
    loss: f64,
    seq: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: HashMap<u64, Packet>,
    sent: u64,
    lost: u64,
}

impl Net {
    fn send(&mut self, now: Instant, packet: Packet) {
        self.sent += 1;
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            self.lost += 1;
            return;
        }
        let jitter = Duration::from_micros(self.rng.random_range(0..1000));
        self.seq += 1;
        self.queue
            .push(Reverse((now + self.delay + jitter, self.seq)));
        self.packets.insert(self.seq, packet);
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Packet> {
        let Reverse((t, seq)) = *self.queue.peek()?;
        if t > now {
            return None;
        }
        self.queue.pop();
        self.packets.remove(&seq)
    }
}

struct Client {
    session: SessionId,
    identity: String,
    publisher: Rtc,
    publisher_addr: SocketAddr,
    publisher_deadline: Instant,
    subscriber: Rtc,
    subscriber_addr: SocketAddr,
    subscriber_deadline: Instant,
    pending: Option<SdpPendingOffer>,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    reliable: Option<ChannelId>,
    joined: Option<proto::JoinResponse>,
    published: HashMap<String, proto::TrackInfo>,
    /// Latest ParticipantInfo seen per identity.
    others: HashMap<String, proto::ParticipantInfo>,
    /// Subscriber m-line → msid track id (the `TR_` sid), from the SFU's offers.
    sub_tracks: HashMap<String, String>,
    /// Frames received per track sid: the counters carried in their first bytes.
    frames: HashMap<String, Vec<u32>>,
    data: Vec<proto::DataPacket>,
    offers: Vec<String>,
    left: Option<proto::LeaveRequest>,
    closed: bool,
    /// The room as the latest RoomUpdate described it.
    room: Option<proto::Room>,
    audio_sent: u32,
    video_sent: u32,
    /// `/rtc/v1`: everything rides on `publisher`; offers are numbered; a
    /// MediaSectionsRequirement that arrives while an offer is out waits here.
    single: bool,
    offer_id: u32,
    deferred: Option<(u32, u32)>,
}

impl Client {
    /// Adds receive-only m-lines (as livekit-client does for a MediaSectionsRequirement) and
    /// offers them.
    fn offer_receive_slots(&mut self, audios: u32, videos: u32) -> Option<Command> {
        let mut api = self.publisher.sdp_api();
        for _ in 0..audios {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        for _ in 0..videos {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply()?;
        self.pending = Some(pending);
        self.offer_id += 1;
        Some(Command::Offer {
            session: self.session,
            sdp: offer.to_sdp_string(),
            id: self.offer_id,
        })
    }
}

struct Sim {
    now: Instant,
    sfu: Sfu,
    sfu_deadline: Instant,
    net: Net,
    clients: Vec<Client>,
    commands: Vec<Command>,
    media_tick: Instant,
    replies: Vec<(u64, Result<ServiceReply, ServiceError>)>,
    webhooks: Vec<proto::WebhookEvent>,
}

impl Sim {
    fn new(seed: u64, loss: f64) -> Self {
        let now = Instant::now();
        let config = SfuConfig {
            candidates: vec![sfu_addr()],
            tcp_candidates: Vec::new(),
            seed,
            server_version: "1.13.5".into(),
            protocol: 17,
            node_id: "ND_sim".into(),
            ping_interval_s: 5,
            ping_timeout_s: 15,
        };
        Self {
            now,
            sfu: Sfu::new(config, now),
            sfu_deadline: now,
            net: Net {
                rng: StdRng::seed_from_u64(seed),
                delay: Duration::from_millis(10),
                loss,
                seq: 0,
                queue: BinaryHeap::new(),
                packets: HashMap::new(),
                sent: 0,
                lost: 0,
            },
            clients: Vec::new(),
            commands: Vec::new(),
            media_tick: now,
            replies: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    fn client(&self, identity: &str) -> &Client {
        self.clients
            .iter()
            .find(|c| c.identity == identity)
            .expect("a client of that identity")
    }

    fn join(&mut self, identity: &str) -> usize {
        self.join_with(identity, false)
    }

    /// Joins over `/rtc` (two peer connections) or, with `single`, over `/rtc/v1`: the join
    /// carries an offer with the data channels and three receive-only audio and video m-lines.
    fn join_with(&mut self, identity: &str, single: bool) -> usize {
        let n = self.clients.len() as u8 + 1;
        let publisher_addr: SocketAddr = format!("10.0.1.{n}:5000").parse().expect("address");
        let subscriber_addr: SocketAddr = format!("10.0.1.{n}:5001").parse().expect("address");
        let mut publisher = Rtc::builder().build(self.now);
        publisher.add_local_candidate(Candidate::host(publisher_addr, "udp").expect("host"));
        let mut subscriber = Rtc::builder().build(self.now);
        subscriber.add_local_candidate(Candidate::host(subscriber_addr, "udp").expect("host"));
        let session = SessionId(self.clients.len() as u64 + 100);
        let mut reliable = None;
        let mut pending = None;
        let mut offer = None;
        if single {
            let mut api = publisher.sdp_api();
            reliable = Some(api.add_channel("_reliable".into()));
            api.add_channel("_lossy".into());
            for kind in [MediaKind::Audio, MediaKind::Video] {
                for _ in 0..3 {
                    api.add_media(kind, Direction::RecvOnly, None, None, None);
                }
            }
            let (o, p) = api.apply().expect("an offer");
            offer = Some((o.to_sdp_string(), 1));
            pending = Some(p);
        }
        self.clients.push(Client {
            session,
            identity: identity.to_string(),
            publisher,
            publisher_addr,
            publisher_deadline: self.now,
            subscriber,
            subscriber_addr,
            subscriber_deadline: self.now,
            pending,
            audio_mid: None,
            video_mid: None,
            reliable,
            joined: None,
            published: HashMap::new(),
            others: HashMap::new(),
            sub_tracks: HashMap::new(),
            frames: HashMap::new(),
            data: Vec::new(),
            offers: Vec::new(),
            left: None,
            closed: false,
            room: None,
            audio_sent: 0,
            video_sent: 0,
            single,
            offer_id: u32::from(single),
            deferred: None,
        });
        self.commands.push(Command::Join(Box::new(JoinCommand {
            session,
            room: "sim".into(),
            identity: identity.to_string(),
            name: identity.to_uppercase(),
            metadata: String::new(),
            attributes: HashMap::new(),
            permission: proto::ParticipantPermission {
                can_publish: true,
                can_subscribe: true,
                can_publish_data: true,
                can_update_metadata: true,
                ..Default::default()
            },
            kind: 0,
            layout: if single {
                Layout::SinglePeerConnection
            } else {
                Layout::TwoPeerConnections
            },
            auto_subscribe: true,
            protocol: 17,
            client_protocol: 1,
            unix_ms: 1_700_000_000_000,
            offer,
        })));
        self.pump();
        self.clients.len() - 1
    }

    /// The client publishes a microphone and a camera, as livekit-client does: AddTrack for
    /// each, then an offer whose msid track ids are the cids.
    fn publish(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let mut api = c.publisher.sdp_api();
        let audio = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("stream".into()),
            Some(format!("{}-mic", c.identity)),
            None,
        );
        let video = api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("stream".into()),
            Some(format!("{}-cam", c.identity)),
            None,
        );
        if c.reliable.is_none() {
            c.reliable = Some(api.add_channel("_reliable".into()));
        }
        let (offer, pending) = api.apply().expect("changes to offer");
        c.audio_mid = Some(audio);
        c.video_mid = Some(video);
        c.pending = Some(pending);
        c.offer_id += 1;
        let offer_id = c.offer_id;
        for (cid, kind, source) in [
            (
                format!("{}-mic", c.identity),
                proto::TrackType::Audio,
                proto::TrackSource::Microphone,
            ),
            (
                format!("{}-cam", c.identity),
                proto::TrackType::Video,
                proto::TrackSource::Camera,
            ),
        ] {
            self.commands.push(Command::AddTrack {
                session: c.session,
                request: proto::AddTrackRequest {
                    cid,
                    name: "track".into(),
                    r#type: kind as i32,
                    source: source as i32,
                    width: 320,
                    height: 240,
                    ..Default::default()
                },
            });
        }
        self.commands.push(Command::Offer {
            session: c.session,
            sdp: offer.to_sdp_string(),
            id: offer_id,
        });
        self.pump();
    }

    fn send_data(&mut self, i: usize, payload: &[u8], to: &[&str]) {
        let c = &mut self.clients[i];
        let packet = proto::DataPacket {
            value: Some(proto::data_packet::Value::User(proto::UserPacket {
                payload: payload.to_vec(),
                ..Default::default()
            })),
            destination_identities: to.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let id = c.reliable.expect("published first");
        let mut channel = c
            .publisher
            .channel(id)
            .expect("the reliable channel is open");
        assert!(channel.write(true, &packet.encode_to_vec()).expect("write"));
        self.pump();
    }

    /// Delivers everything that is due now and drains every output, until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for command in std::mem::take(&mut self.commands) {
                self.sfu.handle_command(self.now, command);
                moved = true;
            }
            while let Some(p) = self.net.pop_due(self.now) {
                moved = true;
                self.deliver(p);
            }
            moved |= self.drain_sfu();
            for i in 0..self.clients.len() {
                moved |= self.drain_client(i);
            }
            if !moved && self.commands.is_empty() {
                return;
            }
        }
    }

    fn deliver(&mut self, p: Packet) {
        if p.to == sfu_addr() {
            self.sfu.handle_receive(self.now, p.from, p.to, &p.data);
            return;
        }
        let now = self.now;
        for c in &mut self.clients {
            let rtc = if p.to == c.publisher_addr {
                &mut c.publisher
            } else if p.to == c.subscriber_addr {
                &mut c.subscriber
            } else {
                continue;
            };
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source: p.from,
                    destination: p.to,
                    contents: p
                        .data
                        .as_slice()
                        .try_into()
                        .expect("a datagram str0m reads"),
                },
            );
            if rtc.is_alive() {
                rtc.handle_input(input).expect("client accepts input");
            }
            return;
        }
    }

    fn drain_sfu(&mut self) -> bool {
        let mut moved = false;
        loop {
            match self.sfu.poll_output() {
                Output::Transmit(t) => {
                    moved = true;
                    self.net.send(
                        self.now,
                        Packet {
                            from: t.source,
                            to: t.destination,
                            data: t.contents,
                        },
                    );
                }
                Output::Signal(session, message) => {
                    moved = true;
                    self.on_signal(session, *message);
                }
                Output::Webhook(event) => {
                    moved = true;
                    self.webhooks.push(*event);
                }
                Output::ServiceReply { id, result } => {
                    moved = true;
                    self.replies.push((id, *result));
                }
                Output::Close(session) => {
                    moved = true;
                    if let Some(c) = self.clients.iter_mut().find(|c| c.session == session) {
                        c.closed = true;
                    }
                }
                Output::Timeout(t) => {
                    self.sfu_deadline = t;
                    return moved;
                }
            }
        }
    }

    fn on_signal(&mut self, session: SessionId, message: proto::signal_response::Message) {
        use proto::signal_response::Message as M;
        let Some(c) = self.clients.iter_mut().find(|c| c.session == session) else {
            return;
        };
        match message {
            M::Join(j) => c.joined = Some(j),
            M::Offer(sd) => {
                c.sub_tracks.extend(msid_tracks(&sd.sdp));
                c.offers.push(sd.sdp.clone());
                let offer = SdpOffer::from_sdp_string(&sd.sdp).expect("the SFU's offer parses");
                let answer = c
                    .subscriber
                    .sdp_api()
                    .accept_offer(offer)
                    .expect("the SFU's offer is acceptable");
                self.commands.push(Command::Answer {
                    session,
                    sdp: answer.to_sdp_string(),
                });
            }
            M::Answer(sd) => {
                assert_eq!(sd.id, c.offer_id, "the answer echoes the offer id");
                let answer = SdpAnswer::from_sdp_string(&sd.sdp).expect("the SFU's answer parses");
                let pending = c.pending.take().expect("an offer was sent");
                c.publisher
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .expect("the SFU's answer is acceptable");
                if c.single {
                    // The answer names the stream of each track the SFU sends.
                    for (mid, track) in msid_tracks(&sd.sdp) {
                        if track.starts_with("TR_") {
                            assert_eq!(sd.mid_to_track_id.get(&mid), Some(&track));
                        }
                    }
                    c.sub_tracks.extend(sd.mid_to_track_id);
                    if let Some((a, v)) = c.deferred.take()
                        && let Some(command) = c.offer_receive_slots(a, v)
                    {
                        self.commands.push(command);
                    }
                }
            }
            M::MediaSectionsRequirement(r) => {
                assert!(
                    c.single,
                    "only single peer connection clients are asked for m-lines"
                );
                if c.pending.is_some() {
                    let (a, v) = c.deferred.unwrap_or_default();
                    c.deferred = Some((a + r.num_audios, v + r.num_videos));
                } else if let Some(command) = c.offer_receive_slots(r.num_audios, r.num_videos) {
                    self.commands.push(command);
                }
            }
            M::TrackPublished(r) => {
                let track = r.track.expect("TrackPublished carries the track");
                assert!(track.sid.starts_with("TR_"));
                c.published.insert(r.cid, track);
            }
            M::Update(u) => {
                for p in u.participants {
                    let newer = c
                        .others
                        .get(&p.identity)
                        .is_none_or(|old| old.sid != p.sid || p.version > old.version);
                    assert!(newer, "ParticipantUpdate versions rise");
                    c.others.insert(p.identity.clone(), p);
                }
            }
            M::Leave(l) => c.left = Some(l),
            M::RoomUpdate(u) => c.room = u.room,
            _ => {}
        }
    }

    fn drain_client(&mut self, i: usize) -> bool {
        let mut moved = false;
        let now = self.now;
        for publisher in [true, false] {
            loop {
                let c = &mut self.clients[i];
                let rtc = if publisher {
                    &mut c.publisher
                } else {
                    &mut c.subscriber
                };
                if !rtc.is_alive() {
                    break;
                }
                match rtc.poll_output().expect("client output") {
                    str0m::Output::Transmit(t) => {
                        moved = true;
                        self.net.send(
                            now,
                            Packet {
                                from: t.source,
                                to: t.destination,
                                data: t.contents.into(),
                            },
                        );
                    }
                    str0m::Output::Timeout(t) => {
                        if publisher {
                            c.publisher_deadline = t;
                        } else {
                            c.subscriber_deadline = t;
                        }
                        break;
                    }
                    str0m::Output::Event(e) => {
                        moved = true;
                        match e {
                            Event::MediaData(d) if !publisher || c.single => {
                                let sid = c
                                    .sub_tracks
                                    .get(&d.mid.to_string())
                                    .cloned()
                                    .unwrap_or_else(|| format!("mid-{}", d.mid));
                                let counter = u32::from_be_bytes(
                                    d.data[1..5].try_into().expect("frames carry a counter"),
                                );
                                c.frames.entry(sid).or_default().push(counter);
                            }
                            Event::ChannelData(d) if !publisher || c.single => {
                                c.data.push(
                                    proto::DataPacket::decode(&d.data[..])
                                        .expect("the SFU forwards DataPackets"),
                                );
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        moved
    }

    /// Writes the media that is due: 20 ms Opus-sized frames and multi-packet video frames.
    fn send_media(&mut self) {
        let now = self.now;
        for c in &mut self.clients {
            if !c.publisher.is_alive() {
                continue;
            }
            if let Some(mid) = c.audio_mid {
                let n = c.audio_sent;
                let pt = c.publisher.writer(mid).and_then(|w| {
                    w.payload_params()
                        .find(|p| p.spec().codec == Codec::Opus)
                        .map(|p| p.pt())
                });
                if let Some(pt) = pt
                    && let Some(w) = c.publisher.writer(mid)
                {
                    let mut frame = vec![0u8; 80];
                    frame[1..5].copy_from_slice(&n.to_be_bytes());
                    let time = MediaTime::new(n as u64 * 960, Frequency::FORTY_EIGHT_KHZ);
                    if w.write(pt, now, time, frame).is_ok() {
                        c.audio_sent += 1;
                    }
                }
            }
            if let Some(mid) = c.video_mid
                && c.audio_sent % 5 == 0
            {
                let n = c.video_sent;
                let pt = c.publisher.writer(mid).and_then(|w| {
                    w.payload_params()
                        .find(|p| p.spec().codec == Codec::Vp8)
                        .map(|p| p.pt())
                });
                if let Some(pt) = pt
                    && let Some(w) = c.publisher.writer(mid)
                {
                    let mut frame = vec![0x55u8; VIDEO_FRAME_BYTES];
                    // VP8: bit 0 of the first byte clear marks a key frame.
                    frame[0] = if n % 30 == 0 { 0x10 } else { 0x11 };
                    frame[1..5].copy_from_slice(&n.to_be_bytes());
                    let time = MediaTime::new(n as u64 * 4500, Frequency::NINETY_KHZ);
                    if w.write(pt, now, time, frame).is_ok() {
                        c.video_sent += 1;
                    }
                }
            }
        }
    }

    /// Runs the meeting for `duration` of simulated time, sending media every 20 ms.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.pump();
            let mut next = self.media_tick.min(self.sfu_deadline).min(end);
            if let Some(t) = self.net.next_due() {
                next = next.min(t);
            }
            for c in &self.clients {
                next = next.min(c.publisher_deadline).min(c.subscriber_deadline);
            }
            self.now = next.max(self.now);
            if self.now >= self.media_tick {
                self.send_media();
                self.media_tick = self.now + AUDIO_EVERY;
            }
            if self.now >= self.sfu_deadline {
                self.sfu.handle_timeout(self.now);
            }
            let now = self.now;
            for c in &mut self.clients {
                if now >= c.publisher_deadline && c.publisher.is_alive() {
                    c.publisher
                        .handle_input(Input::Timeout(now))
                        .expect("timeout");
                }
                if now >= c.subscriber_deadline && c.subscriber.is_alive() {
                    c.subscriber
                        .handle_input(Input::Timeout(now))
                        .expect("timeout");
                }
            }
            // Guarantee progress when every deadline is in the past.
            if next <= now && self.net.next_due().is_none_or(|t| t > now) {
                self.now += Duration::from_micros(100);
            }
        }
        self.pump();
    }

    fn track_sid(&self, publisher: &str, cid_suffix: &str) -> String {
        let c = self.client(publisher);
        c.published
            .get(&format!("{publisher}-{cid_suffix}"))
            .expect("the track was published")
            .sid
            .clone()
    }
}

fn msid_tracks(sdp: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut mid = None;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.trim().to_string());
        } else if let Some(msid) = line.strip_prefix("a=msid:")
            && let (Some(m), Some(track)) = (mid.clone(), msid.split_whitespace().nth(1))
        {
            out.insert(m, track.to_string());
        }
    }
    out
}

/// Counters `first..last` missing from `got`.
fn missing(got: &[u32], first: u32, last: u32) -> Vec<u32> {
    let have: std::collections::HashSet<u32> = got.iter().copied().collect();
    (first..last).filter(|n| !have.contains(n)).collect()
}

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

#[test]
fn nack_repairs_video_under_loss() {
    let mut sim = Sim::new(7, 0.0);
    sim.join("alice");
    sim.join("bob");
    sim.publish(0);
    sim.run_for(Duration::from_secs(1));
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

    let sid = sim.track_sid("alice", "cam");
    let got = &sim.client("bob").frames[&sid];
    assert_eq!(
        missing(got, start, end),
        Vec::<u32>::new(),
        "every video frame sent under 5% loss reached bob ({} packets lost)",
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
    let left: Vec<&str> = sim
        .webhooks
        .iter()
        .filter(|e| e.event == "participant_left")
        .filter_map(|e| e.participant.as_ref().map(|p| p.identity.as_str()))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}
