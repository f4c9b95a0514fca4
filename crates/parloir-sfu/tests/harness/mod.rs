//! The simulation harness: in-process str0m clients, a seeded network, simulated time. Used by
//! the simulation tests (`tests/sim.rs`) and the forwarding bench (`benches/forward.rs`).
#![allow(dead_code, reason = "each user of the harness uses part of it")]
//!
//! Clients speak to the SFU the way livekit-client does over `/rtc` (two peer connections):
//! join, answer the subscriber offer, AddTrack then offer on the publisher connection. Datagrams
//! travel through a seeded network model (delay, jitter that keeps each path's order unless
//! told to reorder, loss, and bottleneck links with a rate and a drop-tail queue); time jumps
//! to the next deadline, so seconds of meeting run in milliseconds. The network's choices,
//! str0m's random draws, every hash map's seed and the DTLS handshakes' timers come from the
//! seed, the start is a whole period of the wall clock, and no part reads the system clock
//! (the data channel's SCTP association did, sctp-proto patch 1): a run repeats
//! (`a_seeded_simulation_repeats_exactly`), but for the bytes of the DTLS handshakes (random
//! keys and signatures, whose encodings vary by a byte or two; the same timings).
//! Assertions leave room around figures rather than pinning them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parloir_sfu::{
    Command, JoinCommand, Layout, Output, Relay, ServiceError, ServiceReply, SessionId, Sfu,
    SfuConfig, proto,
};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{
    Direction, Frequency, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Rtc};

pub const SFU: &str = "10.0.0.1:7882";
/// Simulcast layers, lowest first, as livekit-client names them.
pub const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];
pub const AUDIO_EVERY: Duration = Duration::from_millis(20);

/// Video frames span several packets so that loss hits inside frames.
pub const VIDEO_FRAME_BYTES: usize = 3000;

/// The port of every client's subscribing connection (`Client::subscriber_addr`); a client
/// on `/rtc/v1` never uses it.
pub const SUBSCRIBER_PORT: u16 = 5001;

pub fn sfu_addr() -> SocketAddr {
    SFU.parse().expect("constant address")
}

/// The address of media worker `w` (worker 0 is [`SFU`]).
pub fn worker_addr(w: u16) -> SocketAddr {
    let mut a = sfu_addr();
    a.set_port(a.port() + w);
    a
}

/// A media worker past the first (`Sim::with_workers`): an SFU of its own on its own port,
/// sharing rooms with the others through relays.
pub struct Extra {
    pub sfu: Sfu,
    pub deadline: Instant,
}

fn sfu_config(seed: u64, n: usize, bwe_kbps: u32, worker: u16, workers: u16) -> SfuConfig {
    SfuConfig {
        candidates: vec![worker_addr(worker)],
        tcp_candidates: Vec::new(),
        seed: seed.wrapping_add(u64::from(worker) * 0x9e37_79b9),
        server_version: "1.13.5".into(),
        protocol: 17,
        node_id: "ND_sim".into(),
        ping_interval_s: 5,
        ping_timeout_s: 15,
        loudest_audio: n,
        speech_all_rooms: true,
        bwe_initial_kbps: bwe_kbps,
        worker,
        workers,
    }
}

/// A datagram in flight.
pub struct Packet {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// A bottleneck in front of one address: datagrams leave it at `rate` bits per second (with
/// 28 bytes of IP and UDP headers each) after waiting their turn; one that would not fit in
/// `buffer` bytes of queue is dropped, as a drop-tail router queue does.
pub struct Link {
    pub rate: u64,
    pub buffer: usize,
    /// When the link has sent everything queued so far.
    pub free_at: Instant,
    /// What is queued: when each datagram leaves, and its size.
    pub queue: std::collections::VecDeque<(Instant, usize)>,
    pub queued: usize,
    pub dropped: u64,
}

pub struct Net {
    pub rng: StdRng,
    pub delay: Duration,
    pub loss: f64,
    /// Whether a datagram may overtake an earlier one on the same path. The jitter (up to 1 ms
    /// per datagram, drawn independently) models queueing, and queues keep their order: so by
    /// default a datagram that drew less jitter than the one before it waits for it. With
    /// `reorder` each datagram keeps its own draw, so datagrams sent less than 1 ms apart (a
    /// paced burst) arrive in any order.
    pub reorder: bool,
    /// When the last datagram on each path (from, to) arrives.
    pub arrivals: HashMap<(SocketAddr, SocketAddr), Instant>,
    pub seq: u64,
    pub queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pub packets: HashMap<u64, Packet>,
    pub sent: u64,
    pub lost: u64,
    /// Bottlenecks by destination address.
    pub links: HashMap<SocketAddr, Link>,
    /// Addresses cut off the network: datagrams from or to them are lost.
    pub cut: HashSet<SocketAddr>,
    /// Addresses whose incoming datagrams are dropped unread (counted in `sunk`): the
    /// forwarding bench's receivers, when their own work is kept out of the SFU's caches.
    pub sink: HashSet<SocketAddr>,
    pub sunk: u64,
    /// When set, every datagram sent onto the network, in order: when (from the log's start),
    /// from, to and its length (0 for DTLS, whose handshakes' lengths vary with their random
    /// signatures).
    pub log: Option<(Instant, Vec<Sent>)>,
}

/// A datagram in [`Net::log`]: when, from, to, length.
pub type Sent = (Duration, SocketAddr, SocketAddr, usize);

impl Net {
    pub fn send(&mut self, now: Instant, packet: Packet) {
        self.sent += 1;
        if let Some((start, log)) = &mut self.log {
            // RFC 7983: a first byte of 20 to 63 is DTLS.
            let dtls = matches!(packet.data.first(), Some(20..=63));
            let len = if dtls { 0 } else { packet.data.len() };
            log.push((now - *start, packet.from, packet.to, len));
        }
        if !self.cut.is_empty()
            && (self.cut.contains(&packet.from) || self.cut.contains(&packet.to))
        {
            self.lost += 1;
            return;
        }
        if !self.sink.is_empty() && self.sink.contains(&packet.to) {
            self.sunk += 1;
            return;
        }
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            self.lost += 1;
            return;
        }
        let mut leaves = now;
        if let Some(link) = self.links.get_mut(&packet.to) {
            while let Some(&(leaves, size)) = link.queue.front()
                && leaves <= now
            {
                link.queue.pop_front();
                link.queued -= size;
            }
            let size = packet.data.len() + 28;
            if link.queued + size > link.buffer {
                link.dropped += 1;
                return;
            }
            let start = link.free_at.max(now);
            let bits = (packet.data.len() as u64 + 28) * 8;
            link.free_at = start + Duration::from_nanos(bits * 1_000_000_000 / link.rate);
            leaves = link.free_at;
            link.queue.push_back((leaves, size));
            link.queued += size;
        }
        let jitter = Duration::from_micros(self.rng.random_range(0..1000));
        let mut arrives = leaves + self.delay + jitter;
        if !self.reorder {
            let last = self
                .arrivals
                .entry((packet.from, packet.to))
                .or_insert(arrives);
            // Equal instants leave the heap in sending order (`seq` breaks the tie).
            arrives = arrives.max(*last);
            *last = arrives;
        }
        self.seq += 1;
        self.queue.push(Reverse((arrives, self.seq)));
        self.packets.insert(self.seq, packet);
    }

    /// Puts a bottleneck of `rate` bits per second with a queue of `buffer` bytes in front of
    /// `to`, or changes the rate of the one there.
    pub fn limit(&mut self, now: Instant, to: SocketAddr, rate: u64, buffer: usize) {
        let link = self.links.entry(to).or_insert(Link {
            rate,
            buffer,
            free_at: now,
            queue: Default::default(),
            queued: 0,
            dropped: 0,
        });
        // What is queued keeps its place (first in, first out); the new rate applies after it.
        link.rate = rate;
        link.buffer = buffer;
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    pub fn pop_due(&mut self, now: Instant) -> Option<Packet> {
        let Reverse((t, seq)) = *self.queue.peek()?;
        if t > now {
            return None;
        }
        self.queue.pop();
        self.packets.remove(&seq)
    }
}

/// A video frame as a subscriber received it.
#[derive(Debug, Clone, Copy)]
pub struct VideoFrame {
    /// The simulcast layer it came from (0 lowest), carried in its payload.
    pub layer: u8,
    /// RTP time as received.
    pub time: u64,
    pub key: bool,
    /// The publisher's frame counter, carried in its payload.
    pub counter: u32,
    /// The temporal layer its publisher sent it on (SVC camera), carried in its payload.
    pub temporal: u8,
    /// Whether str0m found it contiguous with the frame before (no gap to wait on).
    pub contiguous: bool,
    /// When its publisher sent it, carried in its payload.
    pub sent: Instant,
    pub at: Instant,
}

pub struct Client {
    pub session: SessionId,
    pub identity: String,
    pub publisher: Rtc,
    pub publisher_addr: SocketAddr,
    pub publisher_deadline: Instant,
    pub subscriber: Rtc,
    pub subscriber_addr: SocketAddr,
    pub subscriber_deadline: Instant,
    pub pending: Option<SdpPendingOffer>,
    pub audio_mid: Option<Mid>,
    pub video_mid: Option<Mid>,
    pub reliable: Option<ChannelId>,
    pub joined: Option<proto::JoinResponse>,
    pub published: HashMap<String, proto::TrackInfo>,
    /// Latest ParticipantInfo seen per identity.
    pub others: HashMap<String, proto::ParticipantInfo>,
    /// Subscriber m-line → msid track id (the `TR_` sid), from the SFU's offers.
    pub sub_tracks: HashMap<String, String>,
    /// Frames received per track sid: the counters carried in their first bytes.
    pub frames: HashMap<String, Vec<u32>>,
    pub data: Vec<proto::DataPacket>,
    pub offers: Vec<String>,
    pub left: Option<proto::LeaveRequest>,
    pub closed: bool,
    /// The room as the latest RoomUpdate described it.
    pub room: Option<proto::Room>,
    /// Signal messages received.
    pub signals: u64,
    pub audio_sent: u32,
    /// The RFC 6464 level each audio frame carries (-dBov: 0 loudest, -127 silence); none
    /// when `None`.
    pub audio_level: Option<i8>,
    pub video_sent: u32,
    /// Publish the camera as three simulcast layers (`q`, `h`, `f`).
    pub simulcast: bool,
    /// Stop sending the simulcast layers that the latest SubscribedQualityUpdate turned off
    /// (and resume them when it turns them on), as livekit-client's publisher does with
    /// dynacast on.
    pub dynacast: bool,
    /// Publish the camera as VP9 with three spatial layers in one stream (`L3T1_KEY`), sent
    /// as raw RTP with the payload descriptors a browser writes; the publisher connection is
    /// in str0m's RTP mode, so this client sends no audio.
    pub svc: bool,
    /// The next RTP sequence number of the SVC camera.
    pub svc_seq: u64,
    /// Media ticks (20 ms) seen by the SVC camera.
    pub svc_ticks: u32,
    /// How many spatial layers the SVC camera sends (3; fewer as an encoder short of
    /// bandwidth or CPU drops its top layers).
    pub svc_layers: usize,
    /// How many temporal layers the SVC camera sends (1: `L3T1_KEY`; 3: `L3T3_KEY`, whose
    /// pictures go 0, 2, 1, 2 from each key picture on).
    pub svc_temporal: u8,
    /// Pictures since the SVC camera's last key picture, and its layer-0 pictures so far.
    pub svc_since_key: u32,
    pub svc_tl0: u8,
    /// Publish a camera at all (else the microphone only).
    pub camera: bool,
    /// StreamStateUpdates received (tracks paused or resumed for this subscriber), oldest
    /// first.
    pub stream_states: Vec<proto::StreamStateInfo>,
    /// SubscribedQualityUpdates received (dynacast), oldest first.
    pub quality_updates: Vec<proto::SubscribedQualityUpdate>,
    /// Every participant's info as ParticipantUpdates brought it, oldest first.
    pub updates: Vec<proto::ParticipantInfo>,
    /// Answers to the SFU's offers are made but lost (a socket dropping under them).
    pub lose_answers: bool,
    /// The SFU's offers are lost before the client sees them.
    pub lose_offers: bool,
    /// The last answer made to the SFU's offers, sent or lost.
    pub last_answer: Option<String>,
    /// The SFU's last answer to this client's publisher offers.
    pub last_publisher_answer: String,
    /// Layers a PLI asked a key frame for (all of them when the request names none).
    pub key_due: Vec<Option<Rid>>,
    /// RTCP sender reports received per subscribed m-line: when each arrived.
    pub sender_reports: HashMap<Mid, Vec<Instant>>,
    /// Video frames received per track sid, in arrival order.
    pub video_rx: HashMap<String, Vec<VideoFrame>>,
    /// `/rtc/v1`: everything rides on `publisher`; offers are numbered; a
    /// MediaSectionsRequirement that arrives while an offer is out waits here.
    pub single: bool,
    pub offer_id: u32,
    pub deferred: Option<(u32, u32)>,
    /// The media worker its connections are on.
    pub worker: u16,
}

impl Client {
    /// Adds receive-only m-lines (as livekit-client does for a MediaSectionsRequirement) and
    /// offers them.
    pub fn offer_receive_slots(&mut self, audios: u32, videos: u32) -> Option<Command> {
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

thread_local! {
    /// Simulated time since this thread's simulation began, in microseconds, as the last
    /// `run_for` step left it (tests run on threads of their own; tracing formats each line on
    /// the thread that logs it).
    static SIM_MICROS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Stamps trace lines with simulated time (`tracing_subscriber`'s `with_timer`), so a trace of
/// a simulated meeting reads in the meeting's seconds rather than the host's.
pub struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let us = SIM_MICROS.get();
        write!(w, "{:>4}.{:06}", us / 1_000_000, us % 1_000_000)
    }
}

pub struct Sim {
    pub now: Instant,
    pub sfu: Sfu,
    pub sfu_deadline: Instant,
    pub net: Net,
    pub clients: Vec<Client>,
    pub commands: Vec<Command>,
    pub media_tick: Instant,
    /// Clients send in this many phases spread over each 20 ms (client i in phase i mod
    /// slots); 1, the default, has every client send at the same instant, which makes the
    /// SFU forward the whole room's media in one burst.
    pub media_slots: u32,
    /// Whether sent datagrams' buffers go back to str0m (patch 25), as the media worker's do
    /// (true unless a bench turns it off to measure it).
    pub recycle: bool,
    /// When set, each drain of the SFU that sent video-sized datagrams (1000 bytes or more)
    /// adds how many it sent and into how many distinct buffers they were encrypted.
    pub fan_out_buffers: Option<Vec<(usize, usize)>>,
    media_slot: u32,
    pub replies: Vec<(u64, Result<ServiceReply, ServiceError>)>,
    /// Wall-clock time spent inside the SFU's own calls (for the forwarding bench).
    pub sfu_time: Duration,
    /// The longest of those calls (an input or a timeout, not counting the outputs' polls):
    /// the longest the media worker would hold its datagrams.
    pub sfu_longest: Duration,
    /// Which input that call was: "command", "receive" or "timeout".
    pub sfu_longest_kind: &'static str,
    /// The peers' timeouts that call handled.
    pub sfu_longest_peer_timeouts: u64,
    timeouts_seen: u64,
    /// The most subscriber offers that came out of one SFU input (a command, a datagram or a
    /// timeout).
    pub offers_per_call: usize,
    offers_seen: u64,
    /// Clients joining from now on offer Opus with RED (as browsers do).
    pub red: bool,
    /// Whether the offers of clients' publishing connections carry their candidates.
    /// Browsers trickle theirs after the offer instead: the SFU then learns the address
    /// from the client's first check.
    pub offer_candidates: bool,
    pub webhooks: Vec<proto::WebhookEvent>,
    /// Payload bytes of each simulcast layer's video frames, lowest first; a camera without
    /// simulcast sends the last.
    pub layer_bytes: [usize; 3],
    /// A video frame every this many 20 ms audio frames (5: 10 frames a second).
    pub video_every: u32,
    /// The simulation's start: video frames carry their send time from it.
    pub epoch: Instant,
    /// Clients joining from now on publish their camera as VP9 SVC (`Client::svc`).
    pub svc_next: bool,
    /// Media workers 1.. (worker 0 is `sfu`), and the relays between them not yet handed
    /// over: (from, to, message).
    pub extra: Vec<Extra>,
    pub relays: VecDeque<(u16, u16, Box<Relay>)>,
    /// Relay messages handed over so far.
    pub relayed: u64,
    /// The worker the next client joins on.
    pub next_worker: u16,
    /// Wall-clock time spent inside each worker's SFU calls (`sfu_time` is their sum).
    pub worker_time: Vec<Duration>,
    /// Of `sfu_time`, the SFU's calls that received a datagram from a subscribing
    /// connection (its reports, feedback and checks).
    pub feedback_time: Duration,
}

impl Sim {
    pub fn new(seed: u64, loss: f64) -> Self {
        Self::with_loudest_audio(seed, loss, 3)
    }

    /// A simulation whose SFU forwards the audio of the `n` loudest participants plus anyone
    /// speaking (0: everyone's).
    pub fn with_loudest_audio(seed: u64, loss: f64, n: usize) -> Self {
        Self::with_options(seed, loss, n, 1000)
    }

    /// A simulation whose SFU starts subscriber bandwidth estimates at `bwe_kbps` (0: no
    /// bandwidth estimation).
    pub fn with_options(seed: u64, loss: f64, n: usize, bwe_kbps: u32) -> Self {
        // str0m draws from fastrand's thread-local generator (its pacer's jitter and
        // overshoot, SSRCs), the engine's maps and str0m's take their seeds from the
        // thread's sequence, and so do the DTLS handshakes' generators (the jitter of their
        // retransmission timers): seeded, runs repeat (the simulation runs on this thread;
        // see the module's notes for what does not). Simulated time starts at a whole period
        // of the wall clock, so that the wall-clock times on the wire (send times, NTP times)
        // round the same way at every run.
        fastrand::seed(seed);
        parloir_sfu::ids::repeatable_maps(seed);
        str0m::repeatable::repeatable_dtls(seed);
        let now = str0m::repeatable::aligned_start(Instant::now());
        let config = sfu_config(seed, n, bwe_kbps, 0, 1);
        Self {
            now,
            sfu: Sfu::new(config, now),
            sfu_deadline: now,
            net: Net {
                rng: StdRng::seed_from_u64(seed),
                delay: Duration::from_millis(10),
                loss,
                reorder: false,
                arrivals: HashMap::new(),
                seq: 0,
                queue: BinaryHeap::new(),
                packets: HashMap::new(),
                sent: 0,
                lost: 0,
                links: HashMap::new(),
                cut: HashSet::new(),
                sink: HashSet::new(),
                sunk: 0,
                log: None,
            },
            clients: Vec::new(),
            commands: Vec::new(),
            media_tick: now,
            media_slots: 1,
            recycle: true,
            fan_out_buffers: None,
            media_slot: 0,
            replies: Vec::new(),
            sfu_time: Duration::ZERO,
            sfu_longest: Duration::ZERO,
            offers_per_call: 0,
            sfu_longest_kind: "",
            sfu_longest_peer_timeouts: 0,
            timeouts_seen: 0,
            offers_seen: 0,
            red: false,
            offer_candidates: true,
            webhooks: Vec::new(),
            layer_bytes: [VIDEO_FRAME_BYTES; 3],
            video_every: 5,
            epoch: now,
            svc_next: false,
            extra: Vec::new(),
            relays: VecDeque::new(),
            relayed: 0,
            next_worker: 0,
            worker_time: vec![Duration::ZERO],
            feedback_time: Duration::ZERO,
        }
    }

    /// A simulation with `workers` media workers (one SFU each, on ports 7882, 7883, ...);
    /// clients join on `next_worker`.
    pub fn with_workers(seed: u64, workers: u16) -> Self {
        Self::with_workers_bwe(seed, workers, 1000)
    }

    /// As [`Sim::with_workers`], with subscriber bandwidth estimation from `bwe_kbps` (0: off).
    pub fn with_workers_bwe(seed: u64, workers: u16, bwe_kbps: u32) -> Self {
        let mut sim = Self::with_options(seed, 0.0, 3, bwe_kbps);
        let now = sim.now;
        sim.worker_time = vec![Duration::ZERO; usize::from(workers)];
        sim.sfu = Sfu::new(sfu_config(seed, 3, bwe_kbps, 0, workers), now);
        for w in 1..workers {
            sim.extra.push(Extra {
                sfu: Sfu::new(sfu_config(seed, 3, bwe_kbps, w, workers), now),
                deadline: now,
            });
        }
        sim
    }

    pub fn workers(&self) -> u16 {
        self.extra.len() as u16 + 1
    }

    pub fn sfu_of(&mut self, w: u16) -> &mut Sfu {
        match w {
            0 => &mut self.sfu,
            w => &mut self.extra[usize::from(w) - 1].sfu,
        }
    }

    /// The worker a command goes to: its session's, or (a RoomService call) its room's home.
    fn worker_for(&self, command: &Command) -> u16 {
        if let Some(session) = command.session() {
            return self
                .clients
                .iter()
                .find(|c| c.session == session)
                .map_or(0, |c| c.worker);
        }
        match command {
            Command::Service { call, .. } => call.room().map_or(0, |room| {
                parloir_sfu::home_worker(room, usize::from(self.workers())) as u16
            }),
            _ => 0,
        }
    }

    pub fn client(&self, identity: &str) -> &Client {
        self.clients
            .iter()
            .find(|c| c.identity == identity)
            .expect("a client of that identity")
    }

    pub fn join(&mut self, identity: &str) -> usize {
        self.join_with(identity, false)
    }

    /// Joins over `/rtc` (two peer connections) or, with `single`, over `/rtc/v1`: the join
    /// carries an offer with the data channels and three receive-only audio and video m-lines.
    pub fn join_with(&mut self, identity: &str, single: bool) -> usize {
        let i = self.join_queued(identity, single);
        self.pump();
        i
    }

    /// The join, queued for the next pump (to put other commands right behind it).
    pub fn join_queued(&mut self, identity: &str, single: bool) -> usize {
        let n = self.clients.len() as u8 + 1;
        let publisher_addr: SocketAddr = format!("10.0.1.{n}:5000").parse().expect("address");
        let subscriber_addr: SocketAddr = format!("10.0.1.{n}:{SUBSCRIBER_PORT}")
            .parse()
            .expect("address");
        let builder = || {
            let b = Rtc::builder();
            if self.red {
                b.enable_opus(true, true)
            } else {
                b
            }
        };
        let mut publisher = builder().set_rtp_mode(self.svc_next).build(self.now);
        publisher.add_local_candidate(Candidate::host(publisher_addr, "udp").expect("host"));
        let mut subscriber = builder().build(self.now);
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
            offer = Some((self.client_sdp(o.to_sdp_string()), 1));
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
            signals: 0,
            audio_level: None,
            video_sent: 0,
            simulcast: false,
            dynacast: false,
            svc: self.svc_next,
            svc_seq: 1,
            svc_ticks: 0,
            svc_layers: 3,
            svc_temporal: 1,
            svc_since_key: 0,
            svc_tl0: 0,
            camera: true,
            quality_updates: Vec::new(),
            updates: Vec::new(),
            stream_states: Vec::new(),
            lose_answers: false,
            lose_offers: false,
            last_answer: None,
            last_publisher_answer: String::new(),
            key_due: Vec::new(),
            sender_reports: HashMap::new(),
            video_rx: HashMap::new(),
            single,
            offer_id: u32::from(single),
            deferred: None,
            worker: self.next_worker,
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
        self.clients.len() - 1
    }

    /// The client's AddTrack for its microphone alone (no offer yet), queued.
    pub fn announce_mic(&mut self, i: usize) {
        let c = &self.clients[i];
        self.commands.push(Command::AddTrack {
            session: c.session,
            request: proto::AddTrackRequest {
                cid: format!("{}-mic", c.identity),
                name: "track".into(),
                r#type: proto::TrackType::Audio as i32,
                source: proto::TrackSource::Microphone as i32,
                ..Default::default()
            },
        });
    }

    /// The client publishes a microphone and a camera, as livekit-client does: AddTrack for
    /// each, then an offer whose msid track ids are the cids.
    pub fn publish(&mut self, i: usize) {
        self.publish_with(i, |_| {});
    }

    /// [`Sim::publish`], with `edit` applied to each AddTrack request.
    pub fn publish_with(&mut self, i: usize, edit: impl Fn(&mut proto::AddTrackRequest)) {
        let c = &mut self.clients[i];
        let mut api = c.publisher.sdp_api();
        let audio = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("stream".into()),
            Some(format!("{}-mic", c.identity)),
            None,
        );
        let simulcast = c.simulcast.then(|| {
            let mut s = Simulcast::new();
            for rid in SIMULCAST_RIDS {
                s.add_send_layer(SimulcastLayer::new(rid));
            }
            s
        });
        let video = c.camera.then(|| {
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("stream".into()),
                Some(format!("{}-cam", c.identity)),
                simulcast,
            )
        });
        if c.reliable.is_none() {
            c.reliable = Some(api.add_channel("_reliable".into()));
        }
        let (offer, pending) = api.apply().expect("changes to offer");
        c.audio_mid = Some(audio);
        c.video_mid = video;
        c.pending = Some(pending);
        c.offer_id += 1;
        let offer_id = c.offer_id;
        let tracks = [
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
        ];
        let count = if c.camera { 2 } else { 1 };
        for (cid, kind, source) in tracks.into_iter().take(count) {
            let mut request = proto::AddTrackRequest {
                cid,
                name: "track".into(),
                r#type: kind as i32,
                source: source as i32,
                width: 320,
                height: 240,
                layers: if c.simulcast && kind == proto::TrackType::Video {
                    SIMULCAST_RIDS
                        .iter()
                        .enumerate()
                        .map(|(i, rid)| proto::VideoLayer {
                            quality: i as i32,
                            width: 320 << i,
                            height: 180 << i,
                            rid: rid.to_string(),
                            ..Default::default()
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                ..Default::default()
            };
            edit(&mut request);
            self.commands.push(Command::AddTrack {
                session: c.session,
                request,
            });
        }
        let session = c.session;
        let sdp = self.client_sdp(offer.to_sdp_string());
        self.commands.push(Command::Offer {
            session,
            sdp,
            id: offer_id,
        });
        self.pump();
    }

    /// Client `i` resumes as livekit-client does (`resumeConnection`): a new signal connection
    /// (`reconnect=1`), then an offer that restarts ICE on its publishing connection. The
    /// SFU restarts ICE on the subscribing one with its own offer.
    pub fn resume(&mut self, i: usize) {
        let c = &mut self.clients[i];
        self.commands.push(Command::Resume {
            session: c.session,
            identity: c.identity.clone(),
        });
        let mut api = c.publisher.sdp_api();
        api.ice_restart(true);
        let (offer, pending) = api.apply().expect("an ICE-restart offer");
        c.pending = Some(pending);
        c.offer_id += 1;
        let (session, id) = (c.session, c.offer_id);
        let sdp = self.client_sdp(offer.to_sdp_string());
        self.commands.push(Command::Offer { session, sdp, id });
        self.pump();
    }

    /// Joins a client that publishes its camera as VP9 SVC (`Client::svc`).
    pub fn join_svc(&mut self, name: &str) -> usize {
        self.svc_next = true;
        let i = self.join(name);
        self.svc_next = false;
        i
    }

    /// The client publishes its camera as livekit-client publishes VP9 by default: one
    /// encoding, announced as three layers without rids (for a client that joined with
    /// `svc_next`, which sends it as SVC).
    pub fn publish_svc(&mut self, i: usize) {
        self.publish_with(i, |r| {
            if r.r#type == proto::TrackType::Video as i32 {
                r.width = 1280;
                r.height = 720;
                r.simulcast_codecs = vec![proto::SimulcastCodec {
                    codec: "vp9".into(),
                    cid: r.cid.clone(),
                    ..Default::default()
                }];
                r.layers = SVC_SIZES
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(q, (w, h))| proto::VideoLayer {
                        quality: q as i32,
                        width: u32::from(*w),
                        height: u32::from(*h),
                        ..Default::default()
                    })
                    .collect();
            }
        });
    }

    /// A client's offer as it is signalled: without its candidates unless
    /// `offer_candidates`.
    fn client_sdp(&self, sdp: String) -> String {
        if self.offer_candidates {
            return sdp;
        }
        sdp.split_inclusive('\n')
            .filter(|line| !line.starts_with("a=candidate"))
            .collect()
    }

    pub fn send_data(&mut self, i: usize, payload: &[u8], to: &[&str]) {
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
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            for command in std::mem::take(&mut self.commands) {
                let t = Instant::now();
                let w = self.worker_for(&command);
                let now = self.now;
                self.sfu_of(w).handle_command(now, command);
                self.worker_time[usize::from(w)] += t.elapsed();
                self.timed(t, "command");
                moved = true;
            }
            while let Some(p) = self.net.pop_due(self.now) {
                moved = true;
                self.deliver(p);
            }
            moved |= self.drain_sfu();
            while let Some((from, to, relay)) = self.relays.pop_front() {
                moved = true;
                self.relayed += 1;
                let now = self.now;
                let t = Instant::now();
                self.sfu_of(to).handle_relay(now, from, *relay);
                let took = t.elapsed();
                self.worker_time[usize::from(to)] += took;
                self.sfu_time += took;
            }
            for i in 0..self.clients.len() {
                moved |= self.drain_client(i);
            }
            if !moved && self.commands.is_empty() {
                return;
            }
        }
    }

    pub fn deliver(&mut self, p: Packet) {
        if let Some(w) = (0..self.workers()).find(|w| p.to == worker_addr(*w)) {
            let t = Instant::now();
            let now = self.now;
            self.sfu_of(w).handle_receive(now, p.from, p.to, &p.data);
            let took = t.elapsed();
            self.worker_time[usize::from(w)] += took;
            self.timed(t, "receive");
            // A subscribing connection, told by its port (no walk over the clients, whose
            // state would pass through the caches the bench measures).
            if p.from.port() == SUBSCRIBER_PORT {
                self.feedback_time += took;
            }
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

    /// Counts an SFU input call of `kind` that started at `t`.
    fn timed(&mut self, t: Instant, kind: &'static str) {
        let took = t.elapsed();
        self.sfu_time += took;
        let stats = self.sfu.stats();
        if took > self.sfu_longest {
            self.sfu_longest = took;
            self.sfu_longest_kind = kind;
            self.sfu_longest_peer_timeouts = stats.rtc_timeouts - self.timeouts_seen;
        }
        self.timeouts_seen = stats.rtc_timeouts;
        let offers = stats.subscriber_offers;
        self.offers_per_call = self
            .offers_per_call
            .max((offers - self.offers_seen) as usize);
        self.offers_seen = offers;
    }

    pub fn drain_sfu(&mut self) -> bool {
        let mut moved = false;
        for w in 0..self.workers() {
            moved |= self.drain_worker(w);
        }
        moved
    }

    fn drain_worker(&mut self, w: u16) -> bool {
        let mut moved = false;
        let (mut large, mut buffers) = (0, HashSet::new());
        loop {
            let t = Instant::now();
            let output = self.sfu_of(w).poll_output();
            let took = t.elapsed();
            self.sfu_time += took;
            self.worker_time[usize::from(w)] += took;
            match output {
                Output::Relay { to, relay } => {
                    moved = true;
                    self.relays.push_back((w, to, relay));
                }
                Output::Transmit(t) => {
                    moved = true;
                    if self.fan_out_buffers.is_some() && t.contents.len() >= 1000 {
                        large += 1;
                        buffers.insert(t.contents.as_ptr() as usize);
                    }
                    // A copy goes on the wire and the buffer goes back, as the media worker
                    // copies each datagram into its send batch and recycles it.
                    self.net.send(
                        self.now,
                        Packet {
                            from: t.source,
                            to: t.destination,
                            data: t.contents.clone(),
                        },
                    );
                    if self.recycle {
                        t.recycle();
                    }
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
                    match w {
                        0 => self.sfu_deadline = t,
                        w => self.extra[usize::from(w) - 1].deadline = t,
                    }
                    if let Some(seen) = self.fan_out_buffers.as_mut()
                        && large > 0
                    {
                        seen.push((large, buffers.len()));
                    }
                    return moved;
                }
            }
        }
    }

    pub fn on_signal(&mut self, session: SessionId, message: proto::signal_response::Message) {
        use proto::signal_response::Message as M;
        let Some(c) = self.clients.iter_mut().find(|c| c.session == session) else {
            return;
        };
        c.signals += 1;
        match message {
            M::Join(j) => c.joined = Some(j),
            M::Offer(_) if c.lose_offers => {}
            M::Offer(sd) => {
                c.sub_tracks.extend(msid_tracks(&sd.sdp));
                c.offers.push(sd.sdp.clone());
                let offer = SdpOffer::from_sdp_string(&sd.sdp).expect("the SFU's offer parses");
                let answer = c
                    .subscriber
                    .sdp_api()
                    .accept_offer(offer)
                    .expect("the SFU's offer is acceptable");
                c.last_answer = Some(answer.to_sdp_string());
                if !c.lose_answers {
                    self.commands
                        .push(Command::answer(session, &answer.to_sdp_string()));
                }
            }
            M::Answer(sd) => {
                assert_eq!(sd.id, c.offer_id, "the answer echoes the offer id");
                c.last_publisher_answer = sd.sdp.clone();
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
                        .is_none_or(|old| old.sid != p.sid || p.version >= old.version);
                    // A resume re-sends the current state; nothing goes back in time.
                    assert!(newer, "ParticipantUpdate versions never go back");
                    c.updates.push(p.clone());
                    c.others.insert(p.identity.clone(), p);
                }
            }
            M::Leave(l) => c.left = Some(l),
            M::SubscribedQualityUpdate(u) => c.quality_updates.push(u),
            M::StreamStateUpdate(u) => c.stream_states.extend(u.stream_states),
            M::RoomUpdate(u) => c.room = u.room,
            _ => {}
        }
    }

    pub fn drain_client(&mut self, i: usize) -> bool {
        let mut moved = false;
        let now = self.now;
        let epoch = self.epoch;
        let layer_bytes = self.layer_bytes;
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
                        let data: Vec<u8> = t.contents.into();
                        self.net.send(
                            now,
                            Packet {
                                from: t.source,
                                to: t.destination,
                                data: data.clone(),
                            },
                        );
                        if self.recycle {
                            str0m::net::recycle(data);
                        }
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
                                if d.params.spec().codec == Codec::Vp8 {
                                    c.video_rx.entry(sid.clone()).or_default().push(VideoFrame {
                                        layer: d.data[5],
                                        time: d.time.numer(),
                                        key: d.data[0] & 1 == 0,
                                        counter,
                                        temporal: 0,
                                        contiguous: d.contiguous,
                                        sent: epoch
                                            + Duration::from_micros(u64::from_be_bytes(
                                                d.data[6..14].try_into().expect("a send time"),
                                            )),
                                        at: now,
                                    });
                                }
                                if d.params.spec().codec == Codec::Vp9 {
                                    c.video_rx.entry(sid.clone()).or_default().push(VideoFrame {
                                        layer: svc_layers(&d.data, layer_bytes),
                                        time: d.time.numer(),
                                        key: d.data[0] == 0x80,
                                        counter,
                                        temporal: d.data[14],
                                        contiguous: d.contiguous,
                                        sent: epoch
                                            + Duration::from_micros(u64::from_be_bytes(
                                                d.data[6..14].try_into().expect("a send time"),
                                            )),
                                        at: now,
                                    });
                                }
                                c.frames.entry(sid).or_default().push(counter);
                            }
                            Event::SenderFeedback(f) if !publisher || c.single => {
                                c.sender_reports.entry(f.mid).or_default().push(now);
                            }
                            Event::KeyframeRequest(r) if publisher || c.single => {
                                c.key_due.push(r.rid);
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
    pub fn send_media(&mut self) {
        let now = self.now;
        let layer_bytes = self.layer_bytes;
        let video_every = self.video_every;
        let since_epoch = (now - self.epoch).as_micros() as u64;
        let (slots, slot) = (self.media_slots.max(1) as usize, self.media_slot as usize);
        for (i, c) in self.clients.iter_mut().enumerate() {
            if !c.publisher.is_alive() || i % slots != slot {
                continue;
            }
            if c.svc {
                c.svc_ticks += 1;
                if (c.svc_ticks - 1).is_multiple_of(video_every) {
                    send_svc_frame(c, now, since_epoch, layer_bytes, video_every);
                }
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
                    && let Some(mut w) = c.publisher.writer(mid)
                {
                    if let Some(level) = c.audio_level {
                        w = w.audio_level(level, level > -55);
                    }
                    let mut frame = vec![0u8; 80];
                    frame[1..5].copy_from_slice(&n.to_be_bytes());
                    let time = MediaTime::new(n as u64 * 960, Frequency::FORTY_EIGHT_KHZ);
                    if w.write(pt, now, time, frame).is_ok() {
                        c.audio_sent += 1;
                    }
                }
            }
            if let Some(mid) = c.video_mid
                && c.audio_sent % video_every == 0
            {
                let n = c.video_sent;
                let pt = c.publisher.writer(mid).and_then(|w| {
                    w.payload_params()
                        .find(|p| p.spec().codec == Codec::Vp8)
                        .map(|p| p.pt())
                });
                let layers: Vec<Option<Rid>> = if c.simulcast {
                    SIMULCAST_RIDS.iter().map(|r| Some(Rid::from(*r))).collect()
                } else {
                    vec![None]
                };
                let mut off = [false; 3];
                if c.dynacast
                    && let Some(codec) = c
                        .quality_updates
                        .last()
                        .and_then(|u| u.subscribed_codecs.first())
                {
                    for q in &codec.qualities {
                        if let Some(o) =
                            usize::try_from(q.quality).ok().and_then(|i| off.get_mut(i))
                        {
                            *o = !q.enabled;
                        }
                    }
                }
                let mut sent = false;
                for (layer, rid) in layers.into_iter().enumerate() {
                    if c.simulcast && off[layer] {
                        continue;
                    }
                    let (Some(pt), Some(mut w)) = (pt, c.publisher.writer(mid)) else {
                        continue;
                    };
                    if let Some(rid) = rid {
                        w = w.rid(rid);
                    }
                    let bytes = if c.simulcast {
                        layer_bytes[layer]
                    } else {
                        layer_bytes[2]
                    };
                    let mut frame = vec![0x55u8; bytes];
                    // VP8: bit 0 of the first byte clear marks a key frame.
                    let asked = c.key_due.iter().any(|k| k.is_none() || *k == rid);
                    frame[0] = if n % 30 == 0 || asked { 0x10 } else { 0x11 };
                    frame[1..5].copy_from_slice(&n.to_be_bytes());
                    frame[5] = layer as u8;
                    frame[6..14].copy_from_slice(&since_epoch.to_be_bytes());
                    // Each layer has its own timestamp base, as real encoders' streams do.
                    let base = layer as u64 * 1_000_000_007;
                    let step = 1800 * u64::from(video_every);
                    let time = MediaTime::new(base + n as u64 * step, Frequency::NINETY_KHZ);
                    sent |= w.write(pt, now, time, frame).is_ok();
                }
                if sent {
                    c.video_sent += 1;
                    c.key_due.clear();
                }
            }
        }
    }

    /// Runs the meeting for `duration` of simulated time, sending media every 20 ms.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.pump();
            let mut next = self.media_tick.min(self.sfu_deadline).min(end);
            for e in &self.extra {
                next = next.min(e.deadline);
            }
            if let Some(t) = self.net.next_due() {
                next = next.min(t);
            }
            for c in &self.clients {
                next = next.min(c.publisher_deadline).min(c.subscriber_deadline);
            }
            self.now = next.max(self.now);
            let elapsed = self.now.saturating_duration_since(self.epoch).as_micros();
            SIM_MICROS.set(elapsed as u64);
            if self.now >= self.media_tick {
                self.send_media();
                self.media_slot = (self.media_slot + 1) % self.media_slots.max(1);
                self.media_tick = self.now + AUDIO_EVERY / self.media_slots.max(1);
            }
            if self.now >= self.sfu_deadline {
                let t = Instant::now();
                self.sfu.handle_timeout(self.now);
                self.worker_time[0] += t.elapsed();
                self.timed(t, "timeout");
            }
            let now = self.now;
            for (i, e) in self.extra.iter_mut().enumerate() {
                if now >= e.deadline {
                    let t = Instant::now();
                    e.sfu.handle_timeout(now);
                    let took = t.elapsed();
                    self.worker_time[i + 1] += took;
                    self.sfu_time += took;
                }
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

    pub fn track_sid(&self, publisher: &str, cid_suffix: &str) -> String {
        let c = self.client(publisher);
        c.published
            .get(&format!("{publisher}-{cid_suffix}"))
            .expect("the track was published")
            .sid
            .clone()
    }
}

pub fn msid_tracks(sdp: &str) -> HashMap<String, String> {
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
pub fn missing(got: &[u32], first: u32, last: u32) -> Vec<u32> {
    let have: std::collections::HashSet<u32> = got.iter().copied().collect();
    (first..last).filter(|n| !have.contains(n)).collect()
}

/// Spatial layer sizes of the SVC camera, lowest first.
pub const SVC_SIZES: [(u16, u16); 3] = [(320, 180), (640, 360), (1280, 720)];

/// Sends one picture of an SVC camera: a VP9 layer frame per spatial layer (`layer_bytes`
/// each), packetised in non-flexible mode as libwebrtc does for `L3T1_KEY` (or `L3T3_KEY` with
/// `Client::svc_temporal` at 3: temporal ids 0, 2, 1, 2 from each key picture): picture id, layer
/// indices with TL0PICIDX, the scalability structure (three layers and their sizes) on key
/// pictures, B and E per layer frame and the marker on the last packet of the picture. The
/// upper layers of a key picture are predicted from the layer below (D), the others only from
/// their own layer. Each layer frame starts with a VP9 frame header byte (key or inter), then
/// the picture counter, the layer and the send time, as the other cameras' frames do.
pub fn send_svc_frame(
    c: &mut Client,
    now: Instant,
    since_epoch: u64,
    layer_bytes: [usize; 3],
    video_every: u32,
) {
    let Some(mid) = c.video_mid else {
        return;
    };
    let Some(pt) = c.publisher.media(mid).and_then(|m| {
        m.remote_pts().iter().copied().find(|pt| {
            c.publisher
                .codec_config()
                .iter()
                .any(|p| p.pt() == *pt && p.spec().codec == Codec::Vp9)
        })
    }) else {
        return;
    };
    let n = c.video_sent;
    let key = n.is_multiple_of(60) || !c.key_due.is_empty();
    if key {
        c.svc_since_key = 0;
    }
    let tid: u8 = match c.svc_temporal {
        0 | 1 => 0,
        2 => (c.svc_since_key % 2) as u8,
        _ => [0, 2, 1, 2][(c.svc_since_key % 4) as usize],
    };
    c.svc_since_key += 1;
    if tid == 0 {
        c.svc_tl0 = c.svc_tl0.wrapping_add(1);
    }
    let time = (n as u64 * 1800 * u64::from(video_every)) as u32;
    let mut packets: Vec<(Vec<u8>, bool)> = Vec::new();
    let top = c.svc_layers.clamp(1, 3) - 1;
    for (layer, &bytes) in layer_bytes.iter().enumerate().take(top + 1) {
        let mut frame = vec![0x55u8; bytes];
        // frame_marker 0b10, profile 0, show_existing_frame 0, frame_type (0 key, 1 inter).
        frame[0] = if key && layer == 0 { 0x80 } else { 0x84 };
        frame[1..5].copy_from_slice(&n.to_be_bytes());
        frame[5] = layer as u8;
        frame[6..14].copy_from_slice(&since_epoch.to_be_bytes());
        frame[14] = tid;
        let chunks: Vec<&[u8]> = frame.chunks(1000).collect();
        for (j, chunk) in chunks.iter().enumerate() {
            let (first, last) = (j == 0, j + 1 == chunks.len());
            let ss = key && layer == 0 && first;
            let mut flags = 0xA0u8; // I, L
            if !key {
                flags |= 0x40; // P
            }
            if first {
                flags |= 0x08; // B
            }
            if last {
                flags |= 0x04; // E
            }
            if ss {
                flags |= 0x02; // V
            }
            let pid = (n & 0x7fff) as u16;
            let mut payload = vec![flags, 0x80 | (pid >> 8) as u8, pid as u8];
            // TID, U, SID, D (inter-layer prediction on key pictures).
            payload.push((tid << 5) | ((layer as u8) << 1) | u8::from(key && layer > 0));
            payload.push(c.svc_tl0); // TL0PICIDX
            if ss {
                payload.push(0x50); // N_S = 2 (three layers), Y, no picture group.
                for (w, h) in SVC_SIZES {
                    payload.extend_from_slice(&w.to_be_bytes());
                    payload.extend_from_slice(&h.to_be_bytes());
                }
            }
            payload.extend_from_slice(chunk);
            packets.push((payload, layer == top && last));
        }
    }
    let mut api = c.publisher.direct_api();
    let Some(stream) = api.stream_tx_by_mid(mid, None) else {
        return;
    };
    for (payload, marker) in packets {
        let seq = c.svc_seq;
        c.svc_seq += 1;
        stream.write_rtp(
            str0m::rtp::RtpWrite::new(pt, seq.into(), time, now, payload)
                .marker(marker)
                .nackable(true),
        );
    }
    c.video_sent += 1;
    c.key_due.clear();
}

/// The top spatial layer of a received SVC picture: its layer frames, of `layer_bytes` each,
/// must follow each other from layer 0 and carry the same picture counter; `u8::MAX` when they
/// do not.
pub fn svc_layers(data: &[u8], layer_bytes: [usize; 3]) -> u8 {
    let mut at = 0;
    let mut top = None;
    for (layer, &bytes) in layer_bytes.iter().enumerate() {
        if at == data.len() {
            break;
        }
        let Some(frame) = data.get(at..at + bytes) else {
            return u8::MAX;
        };
        if frame[5] != layer as u8 || frame[1..5] != data[1..5] {
            return u8::MAX;
        }
        top = Some(layer as u8);
        at += bytes;
    }
    match top {
        Some(top) if at == data.len() => top,
        _ => u8::MAX,
    }
}
