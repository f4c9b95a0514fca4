//! The SFU state machine: rooms of participants, each with str0m peer connections; published
//! tracks forwarded to subscribers; data packets routed; speakers detected.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use prost::Message as _;
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::CodecSpec;
use str0m::ice::StunMessage;
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Rtc};

use crate::allocation::{self, Meter, Want};

use crate::ids::{FastIndexMap, FastMap, FastSet, IdGen, PeerId, SessionId};
pub use service::{ServiceCall, ServiceError, ServiceReply, Subtitle, TRANSCRIPTION_TOPIC};

mod relay;
mod service;
use crate::sdp_scan;
use crate::simulcast::{self, Decision, Layers, Switcher};
use crate::speakers::{self, Loudness, SPEAKER_TICK};
use crate::svc;
use crate::temporal;
pub use relay::{Relay, home_worker};

/// Static configuration of the SFU.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The UDP addresses advertised as ICE host candidates. Datagrams must be handed to
    /// [`Sfu::handle_receive`] with one of these as destination.
    pub candidates: Vec<SocketAddr>,
    /// ICE-TCP (RFC 6544) passive candidates, for networks that block UDP. The caller owns the
    /// listener and the RFC 4571 framing; packets come in through [`Sfu::handle_receive_on`].
    pub tcp_candidates: Vec<SocketAddr>,
    /// Seed for sids and ICE credentials (fixed in simulations, random in the server).
    pub seed: u64,
    /// `ServerInfo.version` reported to clients.
    pub server_version: String,
    /// `ServerInfo.protocol`.
    pub protocol: i32,
    /// `ServerInfo.node_id`.
    pub node_id: String,
    /// Seconds between client pings, and without any message before a client gives up.
    pub ping_interval_s: i32,
    pub ping_timeout_s: i32,
    /// Audio is forwarded for the room's N loudest participants plus anyone speaking now, as
    /// large-meeting SFUs do: a silent participant's frames (DTX comfort noise) go nowhere
    /// unless it is among the N. 0 forwards everyone's audio. Audio without the RFC 6464
    /// level extension is always forwarded.
    pub loudest_audio: usize,
    /// Whether rooms give their microphones to the speech plane (when there is an
    /// [`AudioTap`]) unless their metadata says otherwise: a room whose metadata is a JSON
    /// object with [`SUBTITLES_KEY`] true or false decides for itself (set at CreateRoom or by
    /// UpdateRoomMetadata, e.g. by a room administrator from the meeting page).
    pub speech_all_rooms: bool,
    /// Send-side bandwidth estimation on subscriber connections (TWCC feedback, str0m's GCC),
    /// starting from this estimate in kbit/s: each subscriber's video is then fitted to its
    /// estimate by priority (the `allocation` module). 0 turns it off, and every subscriber
    /// gets the layers its tiles ask for whatever its link. Its cost: str0m's estimator and
    /// leaky-bucket pacer per subscriber connection (about a quarter more SFU time per
    /// datagram out at 50 participants in the forwarding bench, perf/README.md).
    pub bwe_initial_kbps: u32,
    /// This SFU's index among the process's media workers, and how many there are: a room
    /// may span workers (`relay.rs`), each holding its own participants of the room and
    /// mirrors of the others'. One worker (the default) relays nothing.
    pub worker: u16,
    pub workers: u16,
}

/// The room metadata key (a JSON boolean) that turns the speech plane on or off for a room.
pub const SUBTITLES_KEY: &str = "parloir.subtitles";
/// The room metadata key with the languages spoken in the room: a code ("fr"), a
/// comma-separated list ("fr,en") or a JSON array of codes.
pub const LANGUAGES_KEY: &str = "parloir.languages";

impl Room {
    /// Reads the speech plane's settings from the room's metadata (parsed once): whether its
    /// audio goes to the speech plane, and the languages it names.
    fn apply_speech_metadata(&mut self, default: bool) {
        let v = serde_json::from_str::<serde_json::Value>(&self.info.metadata).ok();
        self.speech = v
            .as_ref()
            .and_then(|v| v.get(SUBTITLES_KEY)?.as_bool())
            .unwrap_or(default);
        self.languages = v.as_ref().and_then(room_languages);
    }
}

/// The languages a room's metadata names, if it names any.
fn room_languages(v: &serde_json::Value) -> Option<std::sync::Arc<[String]>> {
    let codes: Vec<String> = match v.get(LANGUAGES_KEY)? {
        serde_json::Value::String(s) => s.split(',').map(|c| c.trim().to_string()).collect(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|c| c.as_str())
            .map(|c| c.trim().to_string())
            .collect(),
        _ => return None,
    };
    let codes: Vec<String> = codes
        .into_iter()
        .filter(|c| {
            !c.is_empty() && c.len() <= 8 && c.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
        })
        .collect();
    (!codes.is_empty()).then(|| codes.into())
}

/// How a participant's media is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `/rtc`: the client publishes on one peer connection, the server offers a second one
    /// for what the client receives.
    TwoPeerConnections,
    /// `/rtc/v1`: one peer connection; the client always offers. The server asks for receive
    /// m-lines with `MediaSectionsRequirement` and names each track's stream in its answer.
    SinglePeerConnection,
}

/// A participant asks to join a room. The caller has verified its token.
#[derive(Debug, Clone)]
pub struct JoinCommand {
    pub session: SessionId,
    pub room: String,
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
    pub permission: proto::ParticipantPermission,
    /// `ParticipantInfo.Kind`.
    pub kind: i32,
    pub layout: Layout,
    pub auto_subscribe: bool,
    pub protocol: i32,
    pub client_protocol: i32,
    /// Wall clock at the join, for `joined_at` and room creation times.
    pub unix_ms: i64,
    /// `/rtc/v1`: the offer carried in the join request, with its id.
    pub offer: Option<(String, u32)>,
}

/// Input from signal sessions.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Command {
    Join(Box<JoinCommand>),
    /// The client's offer for its publisher peer connection; `id` is echoed in the answer
    /// (livekit-client matches answers to offers by it).
    Offer {
        session: SessionId,
        sdp: String,
        id: u32,
    },
    /// The client's answer to the server's subscriber offer, parsed where the command is made
    /// ([`Command::answer`], in the signal session's task), so that the media worker does not
    /// spend its time on it: an answer lists every m-line of the connection, about 2N in a
    /// room of N. The error says why it did not parse.
    Answer {
        session: SessionId,
        answer: Result<SdpAnswer, String>,
    },
    /// A client ICE candidate (`RTCIceCandidateInit` as JSON).
    Trickle {
        session: SessionId,
        candidate_init: String,
        target: i32,
    },
    AddTrack {
        session: SessionId,
        request: proto::AddTrackRequest,
    },
    Mute {
        session: SessionId,
        track_sid: String,
        muted: bool,
    },
    UpdateSubscription {
        session: SessionId,
        track_sids: Vec<String>,
        subscribe: bool,
    },
    /// What a subscriber's tile needs of tracks (size, quality, frame rate, or off): its
    /// simulcast layer, temporal layers and pausing follow from it.
    UpdateTrackSettings {
        session: SessionId,
        settings: proto::UpdateTrackSettings,
    },
    UpdateMetadata {
        session: SessionId,
        request: proto::UpdateParticipantMetadata,
    },
    /// The participant leaves: it said so.
    Leave {
        session: SessionId,
    },
    /// The session's WebSocket closed without a leave: the participant stays (its media keeps
    /// flowing) for [`RESUME_WINDOW`], waiting for the client to resume.
    Disconnect {
        session: SessionId,
    },
    /// A client resumes `session` on a new WebSocket (`reconnect=1`); `identity` comes from its
    /// token and must match.
    Resume {
        session: SessionId,
        identity: String,
    },
    /// After a resume, the client's view of its subscriber connection (`SyncState`): the last
    /// offer it applied and the answer it made, which may never have reached us.
    SyncState {
        session: SessionId,
        offer: Option<String>,
        answer: Option<String>,
    },
    /// The server is going away: everyone leaves (`SERVER_SHUTDOWN`) and every room closes.
    Shutdown,
    /// A RoomService call from a back end; answered by [`Output::ServiceReply`] with `id`.
    Service {
        id: u64,
        call: Box<ServiceCall>,
        unix_ms: i64,
    },
}

impl Command {
    /// The client's answer to the server's subscriber offer, parsed now (call it off the media
    /// worker: the signal session does).
    pub fn answer(session: SessionId, sdp: &str) -> Command {
        Command::Answer {
            session,
            answer: SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string()),
        }
    }

    /// The session the command concerns; `None` for `Shutdown` and RoomService calls.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Command::Join(j) => Some(j.session),
            Command::Offer { session, .. }
            | Command::Answer { session, .. }
            | Command::Trickle { session, .. }
            | Command::AddTrack { session, .. }
            | Command::Mute { session, .. }
            | Command::UpdateSubscription { session, .. }
            | Command::UpdateTrackSettings { session, .. }
            | Command::UpdateMetadata { session, .. }
            | Command::Leave { session }
            | Command::Disconnect { session }
            | Command::Resume { session, .. }
            | Command::SyncState { session, .. } => Some(*session),
            Command::Shutdown | Command::Service { .. } => None,
        }
    }
}

/// How a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    /// ICE-TCP: one RFC 4571-framed packet of a TCP connection.
    Tcp,
}

/// A datagram (or, over ICE-TCP, a framed packet) to send. Once its contents are sent or
/// copied, [`Transmit::recycle`] hands the buffer back for the next packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub transport: Transport,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

impl Transmit {
    /// Hands the contents' buffer back to str0m (patch 25) once they are sent or copied: the
    /// next packet this thread encrypts goes into it, still in cache, instead of a fresh
    /// allocation. Dropping a `Transmit` instead is correct, only slower.
    pub fn recycle(self) {
        str0m::net::recycle(self.contents);
    }
}

/// What the SFU asks of its caller.
#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    /// A message for one signal session.
    Signal(SessionId, Box<proto::signal_response::Message>),
    /// The session is over (evicted or refused): flush its messages and close it.
    Close(SessionId),
    /// A LiveKit webhook event (room_started, room_finished, participant_joined,
    /// participant_left, track_published, track_unpublished). The caller stamps its `id` and
    /// `created_at` (the SFU reads no clock) and delivers it.
    Webhook(Box<proto::WebhookEvent>),
    /// The answer to [`Command::Service`] `id`.
    ServiceReply {
        id: u64,
        result: Box<Result<ServiceReply, ServiceError>>,
    },
    /// A message for another media worker of the process, about a room both hold
    /// participants of: hand it to [`Sfu::handle_relay`] of worker `to`.
    Relay {
        to: u16,
        relay: Box<Relay>,
    },
    /// Nothing more until this instant, new input or a command.
    Timeout(Instant),
}

/// What a worker's maps hold for other workers (see [`Sfu::stats`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct Away {
    /// Rooms whose home is another worker.
    rooms: usize,
    /// Mirrors of other workers' participants, and of their tracks.
    participants: usize,
    tracks: usize,
}

/// Counters, cumulative since start, plus gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rooms: u64,
    pub participants: u64,
    pub tracks: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Datagrams that matched no peer or that a peer refused.
    pub dropped_datagrams: u64,
    /// Keyframe requests (PLI/FIR) relayed to publishers.
    pub keyframe_requests: u64,
    /// NACKs received from subscribers (retransmissions asked of the SFU).
    pub nacks: u64,
    /// Media frames forwarded to subscribers.
    pub frames_forwarded: u64,
    /// Data packets routed, and data packets dropped (undecodable or not allowed).
    pub data_packets: u64,
    pub data_dropped: u64,
    /// Audio frames not forwarded: their publisher was silent and not among the loudest.
    pub audio_gated: u64,
    /// Timeouts handed to peer connections (str0m's timers: pacing, RTCP, retransmissions).
    pub rtc_timeouts: u64,
    /// Video tracks paused for a subscriber whose link could not carry them (each pause
    /// counted once, until the track resumes).
    pub video_paused: u64,
    /// Subscriber offers written (SDP offers of the SFU's subscriber connections).
    pub subscriber_offers: u64,
    /// Subscriber offers held past the call that asked for them by the per-call offer budget
    /// ([`OFFER_MLINES_PER_CALL`]).
    pub offers_deferred: u64,
    /// Messages to other media workers (frames of rooms spanning workers among them), and
    /// frames relayed from them.
    pub relays_out: u64,
    pub frames_relayed_in: u64,
}

/// One published audio frame, as the speech plane takes it (before loudest-N gating: a
/// participant's speech is transcribed whether or not others hear it forwarded).
#[derive(Debug, Clone)]
pub struct AudioFrame {
    pub room: String,
    /// The room's sid: one meeting, where a room name may be used again later.
    pub room_sid: String,
    /// The languages the room's metadata names, if any (shared, not copied per frame).
    pub languages: Option<std::sync::Arc<[String]>>,
    pub participant_sid: String,
    pub identity: String,
    pub name: String,
    pub track_sid: String,
    /// The frame's RTP time in 48 kHz units.
    pub rtp_time: u64,
    /// The Opus payload (shared with the forwarded frame, not copied).
    pub data: std::sync::Arc<[u8]>,
}

/// Where published audio goes when the speech plane is on. `frame` is called on the media
/// worker for every published Opus frame: it must never block (a bounded queue with
/// `try_send`, dropping and counting on overflow).
pub trait AudioTap: Send {
    fn frame(&mut self, frame: AudioFrame);
}

/// One published media frame of a room being recorded, as the record plane takes it: every
/// layer of every track (the recorder keeps the ones its tiles need).
#[derive(Debug, Clone)]
pub struct RecordFrame {
    pub room: String,
    pub participant_sid: String,
    pub identity: String,
    pub name: String,
    /// When the participant joined (Unix ms): the order of a grid.
    pub joined_at_ms: i64,
    pub track_sid: String,
    pub video: bool,
    pub screen_share: bool,
    /// The codec's name as in its MIME type (`VP8`, `VP9`, `H264`, `AV1`, `opus`).
    pub codec: &'static str,
    /// The simulcast layer's rank (0 lowest, 2 highest); `None` without simulcast.
    pub layer: Option<u8>,
    pub keyframe: bool,
    /// False when frames were lost just before this one (a decoder needs a key frame).
    pub contiguous: bool,
    /// RTP time (extended, no wrap) at the codec's clock rate.
    pub rtp_time: u64,
    pub clock_rate: u32,
    /// When the frame's last packet arrived.
    pub arrival: Instant,
    /// The publisher's last sender report for this stream: its wallclock and the RTP time
    /// (extended, at `clock_rate`) that goes with it.
    pub sender_report: Option<(std::time::SystemTime, u64)>,
    /// The encoded frame (shared with the forwarded one, not copied).
    pub data: std::sync::Arc<[u8]>,
}

/// Where the media of recorded rooms goes. Called on the media worker for every frame: it
/// must never block (a bounded queue with `try_send`, dropping and counting on overflow).
pub trait RecordTap: Send {
    fn frame(&mut self, frame: RecordFrame);
}

/// The selective forwarding unit. See the crate documentation for how to drive it.
pub struct Sfu {
    audio_tap: Option<Box<dyn AudioTap>>,
    record_tap: Option<Box<dyn RecordTap>>,
    config: SfuConfig,
    ids: IdGen,
    rooms: FastMap<String, Room>,
    participants: FastMap<SessionId, Participant>,
    /// Boxed: the table stays small enough to stay in cache, and a peer's state does not
    /// move when the table grows.
    peers: FastMap<PeerId, Box<Peer>>,
    /// By sid. An index map: an [`Out`] keeps its track's place ([`Out::track_at`]) and
    /// allocation reads it there, without hashing and comparing the sid's text for every
    /// subscription at every pass.
    tracks: FastIndexMap<String, Track>,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    deadlines: BTreeSet<(Instant, PeerId)>,
    /// Subscriber negotiations held back by [`NEGOTIATION_INTERVAL`], or by the offer budget
    /// of a call (due at once, written by the next [`Sfu::handle_timeout`]).
    offers_due: BTreeSet<(Instant, PeerId)>,
    /// What is left of this call's [`OFFER_MLINES_PER_CALL`].
    offer_budget: usize,
    next_peer: u64,
    /// Peers with work to drain, and the str0m events drained but not yet handled.
    dirty: Vec<PeerId>,
    events: VecDeque<(PeerId, Event)>,
    out: VecDeque<Output>,
    /// Peers whose connections have datagrams to send, in the order they came: a drained
    /// peer's first datagram is in `out`, the rest, and all of a receiver's that a frame was
    /// written to, are taken from str0m as the caller asks for them ([`Sfu::poll_output`]).
    sending: VecDeque<PeerId>,
    /// The peer of `sending` polled last: a peer polled for the first time in a row has the
    /// next ones' first reads prefetched ([`prefetch_polls`]).
    polling: Option<PeerId>,
    /// The next periodic tick (speakers, room counts, expiries); `None` with no rooms.
    next_tick: Option<Instant>,
    /// [`ALLOC_FULL_EVERY`], or less for simulations that compare (`set_alloc_full_every`).
    alloc_full_every: Duration,
    /// Simulations: check each tick's list of outs against all of them (`set_alloc_check`).
    alloc_check: bool,
    /// The latest instant given by the caller.
    now: Instant,
    stats: Stats,
    /// What the maps hold for other media workers (rooms homed elsewhere, mirrors), kept as
    /// they change so that [`Sfu::stats`] counts this worker's own without walking the maps.
    away: Away,
    /// Cumulative NACK counts per (peer, mid, rid) from egress stats, to count deltas.
    nack_seen: FastMap<(PeerId, Mid, Option<Rid>), u64>,
    /// Subtitle updates sent, for unique text stream ids.
    subtitle_serial: u64,
    /// Makes each new track's [`Track::key`].
    track_keys: TrackKeys,
}

/// A publisher's m-line bound to a track: the track's sid, and where the m-line's frames last
/// found it in `Sfu::tracks` (its place, and its [`Track::key`] to check that it is still the
/// one there), so that each frame finds its track without hashing and comparing the sid.
struct InTrack {
    sid: Arc<str>,
    key: u64,
    at: usize,
}

/// What [`Sfu::poll_peer`] took from a connection.
enum Polled {
    Transmit(Output),
    Event,
    Done,
}

/// Counts out [`Track::key`]s.
#[derive(Default)]
struct TrackKeys(u64);

impl TrackKeys {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// A publisher's speech as allocation sees it (`Sfu::speech`).
#[derive(Clone, Copy)]
struct Speech {
    /// Speaking now.
    active: bool,
    /// When it was last loud.
    last_loud: Option<Instant>,
    /// Among the loudest, whose audio is forwarded even while silent.
    loudest: bool,
}

/// Whether a publisher's microphone is forwarded under loudest-N, by its speech (`None`: no
/// level heard from it, and such audio always goes).
fn audio_forwarded(speech: Option<Speech>) -> bool {
    speech.is_none_or(|s| s.active || s.loudest)
}

/// What the tick works out once for every subscriber's allocation.
struct TickView {
    /// Each publisher's speech.
    speech: FastMap<SessionId, Option<Speech>>,
    /// With loudest-N audio: the places in `Sfu::tracks` of the microphones that are
    /// forwarded (their publisher speaks, is among the loudest, or was never heard), whose
    /// rates a subscriber's budget reserves where it takes them.
    audio: Vec<usize>,
}

struct Room {
    info: proto::Room,
    members: Vec<SessionId>,
    loudness: FastMap<String, Loudness>,
    /// The participants (sids) whose audio is forwarded even while silent: the loudest
    /// `SfuConfig::loudest_audio`, as of the last speaker tick.
    loudest: FastSet<String>,
    /// Participant or publisher counts changed since the last RoomUpdate.
    counts_changed: bool,
    /// Since when nobody is in the room, and whether anyone ever was: an empty room closes
    /// after `departure_timeout` (someone left) or `empty_timeout` (nobody came).
    empty_since: Option<Instant>,
    ever_joined: bool,
    /// Whether its microphones go to the speech plane (see [`SfuConfig::speech_all_rooms`]).
    speech: bool,
    /// The languages its metadata names for the speech plane ([`LANGUAGES_KEY`]).
    languages: Option<std::sync::Arc<[String]>>,
    /// Recordings of the room under way: while any, its media goes to the record tap.
    recorders: u32,
    /// The other media workers that hold participants of the room (`relay.rs`).
    span: Vec<u16>,
    /// When this worker made it (a room away from its home worker that hears nothing from
    /// home within [`SID_WAIT`] makes a sid of its own).
    created: Instant,
}

struct Participant {
    info: proto::ParticipantInfo,
    room: String,
    auto_subscribe: bool,
    publisher: Option<PeerId>,
    subscriber: Option<PeerId>,
    /// AddTrack requests not yet matched to an m-line: cid → track sid.
    pending: HashMap<String, String>,
    /// Track settings last asked for, per track sid.
    settings: FastMap<String, proto::UpdateTrackSettings>,
    /// When the participant leaves unless it resumes first, and the reason it will leave
    /// with: its signal connection is gone ([`RESUME_WINDOW`]), or one of its peer
    /// connections lost its path and the client was asked to resume
    /// ([`TRANSPORT_RESUME_WINDOW`]). The first loss sets the deadline; a resume clears it,
    /// and so does a path that comes back while the signal connection stayed.
    resume_by: Option<(Instant, proto::DisconnectReason)>,
    /// A mirror of a participant of another media worker (`relay.rs`): no peers, no signal
    /// session here; its tracks' frames come from that worker.
    remote: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerRole {
    Publisher,
    Subscriber,
    /// One peer connection that publishes and receives (`/rtc/v1`).
    Both,
}

struct Peer {
    session: SessionId,
    role: PeerRole,
    rtc: Rtc,
    ufrag: String,
    /// ICE has had a nominated pair: from then on "disconnected" means the client is gone.
    ice_up: bool,
    /// DTLS is done and media can be protected (str0m's `Event::Connected`). Until then no
    /// media is written to it: what str0m held until then went out in one burst when the
    /// connection came up (half a second of every microphone, unpaced, then every camera's
    /// frames), old news that overflowed a shallow queue at the client's end.
    media_up: bool,
    deadline: Option<Instant>,
    queued: bool,
    /// In `Sfu::sending`: its connection has datagrams that [`Sfu::poll_output`] takes one at
    /// a time.
    in_sending: bool,
    /// Publisher side: mid → msid track id from the client's latest offer, and bound tracks.
    msids: HashMap<String, String>,
    /// Publisher side: mid → the sid of the track bound to it (shared: each frame takes a
    /// reference along, not a copy).
    mids_in: FastMap<Mid, InTrack>,
    /// Subscriber side: track sid → outgoing m-line, and the reverse. A track's receivers
    /// list holds each one's place ([`Track::receivers`]).
    outs: FastIndexMap<String, Out>,
    mids_out: FastMap<Mid, String>,
    pending_offer: Option<SdpPendingOffer>,
    needs_offer: bool,
    /// Changes for the next subscriber offer: str0m keeps changes in the `SdpApi` value, so
    /// they are collected here and applied together in `negotiate_subscriber`.
    add_channels: bool,
    to_stop: Vec<Mid>,
    /// The next subscriber offer restarts ICE (after a resume).
    ice_restart: bool,
    /// The SDP of the offer in `pending_offer`.
    pending_offer_sdp: Option<String>,
    /// After a resume with an offer out: wait this long for the client's SyncState to say
    /// whether it applied the offer, before offering again.
    resync_until: Option<Instant>,
    /// Subscriber offers sent so far; numbers the next one.
    offers_sent: u32,
    /// When the latest offer (or m-line request) went out, and when the next one is due if
    /// it waits for [`NEGOTIATION_INTERVAL`] (an entry of `Sfu::offers_due`).
    last_offer: Option<Instant>,
    offer_due: Option<Instant>,
    /// Single peer connection: mids str0m has created (their msid is fixed from then on), and
    /// whether a MediaSectionsRequirement is waiting for the client's next offer.
    known_mids: HashSet<String>,
    awaiting_offer: bool,
    /// Data channels by label (`_reliable`, `_lossy`).
    channels: HashMap<String, ChannelId>,
    channel_labels: HashMap<ChannelId, String>,
    /// Subscriber side: the send-side bandwidth estimate (bits/s), the estimate the last
    /// allocation used, and the (minimum, desired) rates last given to str0m's estimator.
    estimate: Option<u64>,
    allocated_for: Option<u64>,
    bwe_rates: (u64, u64),
    /// When the estimate last fell: the next probe waits `probe_hold` after it, and after the
    /// last probe. The hold doubles each time a probe made the estimate fall (up to
    /// [`MAX_PROBE_HOLD`]), and is back at [`PROBE_HOLD`] after an upgrade.
    last_fall: Option<Instant>,
    probe_hold: Duration,
    /// The highest estimate of the last [`PEAK_WINDOW`], and when it was seen.
    peak: (u64, Instant),
    /// Whether the current streak of falls began just after a probe.
    probe_fall: bool,
    /// What the last allocation sends it, audio included (bits/s).
    sending: u64,
    /// When a track last went up a layer for it (one step per [`UPGRADE_INTERVAL`]).
    last_upgrade: Option<Instant>,
    /// When the last probe was asked for.
    probed_at: Option<Instant>,
    /// When its current [`RAMP`] began: at its first bandwidth estimate (its startup), and
    /// again whenever its tiles came to ask for much more than the estimate ([`RAMP_GROWTH`]).
    ramp_since: Option<Instant>,
    /// When the ramp first asked for more than the estimate, and the estimate then.
    ramp_probe: Option<(Instant, u64)>,
    /// Its ramp ended early: the first probes did not get through ([`RAMP_VERDICT`]).
    ramp_over: bool,
    /// What its tiles asked for (`Sfu::allocate`'s `demand`, bits/s) during its last ramp, or
    /// the least they asked for since, if less: the next ramp begins when they ask for
    /// [`RAMP_GROWTH`] times that.
    ramp_demand: u64,
    /// Round trip of the packets the transport-wide feedback acknowledged (str0m's peer
    /// statistics), latest and lowest: the difference is the queue standing at the bottleneck,
    /// which the delay-based estimator does not see once it stops growing.
    rtt: Option<Duration>,
    rtt_min: Option<Duration>,
    /// When a growing standing queue was last seen (not just after a probe).
    delayed_at: Option<Instant>,
    /// Counts the SDP offers and answers applied: payload types matched before the last one
    /// are matched again.
    sdp_applied: u32,
    /// The places in `outs` of those that took part in the last allocation (video tiles not
    /// turned off and settled; microphones too without loudest-N): the next tick's pass goes
    /// through these only. `None` after whatever can make another take part (its settings,
    /// an out added, opened or removed), and the next pass goes through all.
    alloc_outs: Option<Vec<usize>>,
    /// When the last pass through all outs was: a tick's comes at least every
    /// [`ALLOC_FULL_EVERY`].
    alloc_full_at: Option<Instant>,
}

impl Peer {
    /// Whether it is in a [`RAMP`]: within that long of the ramp's beginning, before the
    /// estimate fell since, and unless the ramp's first probes did not get through.
    fn ramping(&self, now: Instant) -> bool {
        !self.ramp_over
            && self.ramp_since.is_some_and(|t| {
                now.saturating_duration_since(t) < RAMP && self.last_fall.is_none_or(|f| f < t)
            })
    }

    /// Whether the estimate is falling now: it fell within [`FALLING_WINDOW`], and it is
    /// below what is being sent, or more than [`FALLING_DEPTH`] below its peak of the last
    /// [`PEAK_WINDOW`] and within one more such step of what is sent ([`fall_threatens`]);
    /// unless the streak began just after a probe (the probe, not the media,
    /// overran the link). The estimator backs off in steps of 10 to 15 %, each after its
    /// feedback came back through a growing queue, so while it falls the link is worth much
    /// less than the estimate says. Also falling: a queue that grows on the path (the round
    /// trip of acknowledged packets rising above the path's lowest), which shows a link that
    /// dropped sooner than the estimator, whose overuse threshold adapts to noise, reacts.
    fn falling(&self, now: Instant) -> bool {
        let recent = self
            .last_fall
            .is_some_and(|t| now.saturating_duration_since(t) < FALLING_WINDOW);
        let fell_far = self
            .estimate
            .is_some_and(|e| fall_threatens(e, self.peak.0, self.sending));
        let delayed = self
            .delayed_at
            .is_some_and(|t| now.saturating_duration_since(t) < DELAY_WINDOW);
        (recent && !self.probe_fall && fell_far) || delayed
    }

    /// Whether a queue stands on the path to this subscriber.
    fn queued(&self) -> bool {
        match (self.rtt, self.rtt_min) {
            (Some(rtt), Some(min)) => rtt > min + STANDING_QUEUE,
            _ => false,
        }
    }
}

/// Whether a fall of a subscriber's estimate to `estimate` (bits/s) threatens what is sent to
/// it (`sending`): the estimate is below what is sent, or it fell more than [`FALLING_DEPTH`]
/// below its recent `peak` and one more such step would take it below. A deep fall that leaves
/// the estimate far above what is sent does not: in the application-limited region probes lift
/// the estimate well above the media (twice it, in the simulation), and the estimator's
/// back-off from there says nothing about the media's share of the link.
fn fall_threatens(estimate: u64, peak: u64, sending: u64) -> bool {
    let usable = |e: f64| e * allocation::BUDGET_SHARE;
    let estimate = estimate as f64;
    let sending = sending as f64;
    let below = usable(estimate) < sending;
    let deep = estimate < peak as f64 * (1.0 - FALLING_DEPTH)
        && usable(estimate * (1.0 - FALLING_DEPTH)) < sending;
    below || deep
}

impl Peer {
    /// Stops sending track `sid` here; its m-line goes away in the next negotiation.
    fn remove_out(&mut self, sid: &str) {
        // The last out takes the removed one's place.
        self.alloc_outs = None;
        if let Some(Out {
            state: OutState::Open(mid) | OutState::Negotiating(mid),
            ..
        }) = self.outs.swap_remove(sid)
        {
            self.mids_out.remove(&mid);
            self.to_stop.push(mid);
            self.needs_offer = true;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    /// Waiting for a negotiation that adds its m-line.
    Wanted,
    /// Offered; becomes `Open` when the answer arrives.
    Negotiating(Mid),
    Open(Mid),
}

struct Out {
    state: OutState,
    /// Which simulcast layer this subscriber gets, and its timestamp continuity.
    switcher: Switcher,
    /// The highest quality this subscriber's bandwidth allows for the track, or `None`: paused
    /// for lack of bandwidth (the client was told with a StreamStateUpdate).
    cap: Option<u8>,
    /// A video track without simulcast waits for a key frame: at first, and after a pause (an
    /// audio track has no use for it).
    key_wait: bool,
    /// Since when not even its lowest layer fits the budget.
    short_since: Option<Instant>,
    /// The wallclock of the last frame written.
    wallclock: Option<Instant>,
    /// Which temporal layers it gets (its frame rate).
    temporal: temporal::Filter,
    /// The payload type its frames go out with, matched under the peer's SDP then
    /// (`Peer::sdp_applied`) for the track's payload parameters then (`Track::params`):
    /// matching costs a scan of the connection's codecs, and a track's frames keep theirs.
    pt: Option<(u32, u32, Pt)>,
    /// The highest temporal layer its bandwidth allows (`None`: no limit): layer 0 when its
    /// lowest spatial layer does not fit whole.
    temporal_cap: Option<u8>,
    /// What its subscriber's settings ask of the track, as of the track's last
    /// [`Track::receivers`] pass: the quality its tile wants (`None`: turned off) and the
    /// frame rate (0: all).
    wanted: Option<u8>,
    fps: u32,
    /// Whether it was among the track's receivers then.
    receiving: bool,
    /// Where its m-line was in the connection's list when last written to: str0m finds it
    /// there without its map by mid (`Rtc::writer_hinted`, str0m patch 43), whose entries
    /// are cold at each write in a large room. Checked by str0m at each use.
    media_hint: usize,
    /// The [`Track::key`] of the track whose receivers pass last found it: a place in
    /// `Peer::outs` held in a receivers list is this `Out` only while they match.
    track: u64,
    /// That track's place in `Sfu::tracks` then: it is there while the key there matches.
    track_at: usize,
}

impl Out {
    fn new() -> Self {
        Self {
            state: OutState::Wanted,
            switcher: Switcher::default(),
            cap: Some(2),
            key_wait: true,
            short_since: None,
            wallclock: None,
            temporal: temporal::Filter::default(),
            temporal_cap: None,
            pt: None,
            wanted: None,
            fps: 0,
            receiving: false,
            media_hint: usize::MAX,
            track: 0,
            track_at: usize::MAX,
        }
    }
}

struct Track {
    /// Unique among the tracks this engine ever held (never 0), unlike a sid, which a mirror
    /// taken down and made again shares with its former self.
    key: u64,
    info: proto::TrackInfo,
    publisher: SessionId,
    peer: Option<PeerId>,
    mid: Option<Mid>,
    kind: MediaKind,
    /// Simulcast layers seen, and when each last sent a frame. A scalable track's spatial
    /// layers count here as layers named by `svc::rid`.
    layers: Layers,
    /// Whether it is scalable: VP9 or AV1 frames carrying spatial layers (`svc.rs`).
    svc: bool,
    /// Its temporal layers, and the frame rate each adds (`temporal.rs`).
    temporal: temporal::Rates,
    /// Which spatial layers of a scalable track the recorder gets.
    record_switch: Switcher,
    /// Subscriber peers of this track; media goes to those whose m-line is open.
    subscribers: Vec<PeerId>,
    /// Those of them its frames go to (see [`Track::receivers`]) with the place of their
    /// `Out` in `Peer::outs`, and whether that list must be worked out again before the next
    /// frame (set by whatever changes it: an m-line opening or going, settings, a bandwidth
    /// pause, the layers announced).
    receivers: Vec<(PeerId, usize)>,
    receivers_stale: bool,
    /// Dynacast: the highest quality this worker's subscribers want (`None`: none wants
    /// it), and whether it must be worked out again at the next pass. Set stale by the
    /// same changes as `receivers` ([`Track::changed`]): working it out visits every
    /// subscriber's settings, which for every track at every pass was O(N²) lookups.
    wanted_here: Option<u8>,
    wanted_stale: bool,
    /// Last key frame request, per layer (`None` without simulcast).
    last_keyframe_request: FastMap<Option<Rid>, Instant>,
    /// Dynacast: the highest quality any subscriber wants, as last told to the publisher.
    told_quality: Option<Option<u8>>,
    /// The quality the record plane wants of it (its tile's size), while recorded.
    record_quality: Option<u8>,
    /// The rate of each layer (`None` without simulcast), as received.
    meters: Vec<(Option<Rid>, Meter)>,
    /// The same for temporal layer 0 alone (frames with temporal id 0).
    base_meters: Vec<(Option<Rid>, Meter)>,
    /// The payload type and codec of its last frame, and how many times they changed.
    params: (Option<(Pt, CodecSpec)>, u32),
    /// A mirror of a track published on another media worker, which relays its frames.
    remote: Option<u16>,
    /// A track published here: the other workers with subscribers of it, and the highest
    /// quality those want (its frames are relayed to them).
    relays: Vec<(u16, Option<u8>)>,
    /// A mirror: whether it has subscribers here and the highest quality they want, as last
    /// told to its worker.
    relayed: Option<(bool, Option<u8>)>,
}

impl Track {
    fn new(key: u64, info: proto::TrackInfo, publisher: SessionId, remote: Option<u16>) -> Self {
        let kind = if info.r#type == proto::TrackType::Video as i32 {
            MediaKind::Video
        } else {
            MediaKind::Audio
        };
        Track {
            key,
            info,
            publisher,
            peer: None,
            mid: None,
            kind,
            layers: Layers::default(),
            svc: false,
            temporal: temporal::Rates::default(),
            record_switch: Switcher::default(),
            subscribers: Vec::new(),
            receivers: Vec::new(),
            receivers_stale: true,
            wanted_here: None,
            wanted_stale: true,
            last_keyframe_request: FastMap::default(),
            told_quality: None,
            record_quality: None,
            meters: Vec::new(),
            base_meters: Vec::new(),
            params: (None, 0),
            remote,
            relays: Vec::new(),
            relayed: None,
        }
    }

    /// Its subscribers, or what they ask of it, changed: its receivers and what they want
    /// are worked out again before they are next used.
    fn changed(&mut self) {
        self.receivers_stale = true;
        self.wanted_stale = true;
    }

    /// Works out which subscribers its frames go to: those whose m-line is open on a connection
    /// that is up (`Peer::media_up`), who have not turned it off, and, for video, whose
    /// bandwidth allows at least its lowest layer. The frame loop then visits only them (in a
    /// large meeting most subscribers show most cameras in no tile), and reads what each asked
    /// for from its `Out` instead of looking up its participant's settings for every frame. A
    /// subscriber that stops receiving is paused here: the frames it misses never reach its
    /// decoder, so video resumes at a key frame.
    fn receivers(
        &mut self,
        at: usize,
        sid: &str,
        peers: &mut FastMap<PeerId, Box<Peer>>,
        participants: &FastMap<SessionId, Participant>,
    ) {
        self.receivers_stale = false;
        self.receivers.clear();
        let video = self.kind == MediaKind::Video;
        for &sub in &self.subscribers {
            let Some(peer) = peers.get_mut(&sub) else {
                continue;
            };
            let Some((place, _, out)) = peer.outs.get_full_mut(sid) else {
                continue;
            };
            out.track = self.key;
            out.track_at = at;
            let settings = participants
                .get(&peer.session)
                .and_then(|p| p.settings.get(sid));
            out.wanted = simulcast::wanted_quality(settings, self.published_layers());
            out.fps = settings.map_or(0, |s| s.fps);
            let receiving = matches!(out.state, OutState::Open(_))
                && peer.media_up
                && out.wanted.is_some()
                && (!video || out.cap.is_some());
            if out.receiving && !receiving {
                out.switcher.pause();
                out.key_wait = video;
            }
            out.receiving = receiving;
            if receiving {
                self.receivers.push((sub, place));
            }
        }
    }

    /// Whether subscribers may have it: bound to its publisher's m-line here, or a mirror.
    fn published(&self) -> bool {
        self.mid.is_some() || self.remote.is_some()
    }

    /// The simulcast layers its publisher announced (none without simulcast).
    fn published_layers(&self) -> &[proto::VideoLayer] {
        self.info
            .codecs
            .first()
            .map(|c| c.layers.as_slice())
            .unwrap_or_default()
    }

    /// Counts a frame of `bytes` of layer `rid`, and in the layer's temporal layer 0 meter
    /// when it is one of its frames.
    fn meter(&mut self, rid: Option<Rid>, bytes: usize, base: bool, now: Instant) {
        fn of(meters: &mut Vec<(Option<Rid>, Meter)>, rid: Option<Rid>) -> &mut Meter {
            let i = match meters.iter().position(|(r, _)| *r == rid) {
                Some(i) => i,
                None => {
                    meters.push((rid, Meter::default()));
                    meters.len() - 1
                }
            };
            &mut meters[i].1
        }
        of(&mut self.meters, rid).frame(bytes, now);
        if base {
            of(&mut self.base_meters, rid).frame(bytes, now);
        }
    }

    /// The measured rate of spatial layer `rank` with its temporal layer 0 alone, for a track
    /// with temporal layers (`None` otherwise, or before it was measured).
    fn base_rate(&self, rank: u8, now: Instant) -> Option<u64> {
        if self.temporal.top(now) == 0 {
            return None;
        }
        let rid = if self.svc {
            Some(svc::rid(rank))
        } else if self.layers.is_empty() {
            None
        } else {
            Some(self.layers.flowing_at(rank, now)?)
        };
        self.base_meters
            .iter()
            .find(|(r, _)| *r == rid)
            .map(|(_, m)| m.rate(now))
            .filter(|r| *r > 0)
    }

    /// The measured rate of a layer (zero when nothing comes).
    fn measured(&self, rid: Option<Rid>, now: Instant) -> u64 {
        self.meters
            .iter()
            .find(|(r, _)| *r == rid)
            .map_or(0, |(_, m)| m.rate(now))
    }

    /// The measured rate of a layer, or what its publisher announced, or a preset's.
    fn rate(&self, rid: Option<Rid>, rank: u8, now: Instant) -> u64 {
        let measured = self.measured(rid, now);
        if measured > 0 {
            return measured;
        }
        let announced = self
            .published_layers()
            .iter()
            .find(|l| l.quality == i32::from(rank))
            .map_or(0, |l| u64::from(l.bitrate));
        if announced > 0 {
            return announced;
        }
        allocation::default_rate(rank)
    }

    /// The rate of the layer of `quality`, flowing or not.
    fn wanted_rate(&self, quality: u8, now: Instant) -> u64 {
        if self.layers.is_empty() {
            return self.rate(None, quality, now);
        }
        match self.layers.flowing_at(quality, now) {
            Some(rid) => self.rate(Some(rid), quality, now),
            None => self
                .rate(None, quality, now)
                .max(allocation::default_rate(quality)),
        }
    }

    /// The layers a subscriber that wants `quality` may get, lowest first, with their rates,
    /// and whether every one of those rates is measured (not announced, nor a preset's).
    fn offer(&self, quality: u8, now: Instant) -> (Vec<(u8, u64)>, bool) {
        let fit: Vec<(u8, Option<Rid>)> = if self.layers.is_empty() {
            vec![(quality, None)]
        } else {
            let flowing = self.layers.flowing_sorted(now);
            let mut fit: Vec<(u8, Option<Rid>)> = flowing
                .iter()
                .filter(|(rank, _)| *rank <= quality)
                .map(|(rank, rid)| (*rank, Some(*rid)))
                .collect();
            if fit.is_empty() {
                fit.extend(flowing.first().map(|(rank, rid)| (*rank, Some(*rid))));
            }
            fit
        };
        let measured = fit.iter().all(|(_, rid)| self.measured(*rid, now) > 0);
        let layers = fit
            .into_iter()
            .map(|(rank, rid)| (rank, self.rate(rid, rank, now)))
            .collect();
        (layers, measured)
    }
}

const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);
/// How long a room away from its home worker waits for the home's sid before it makes one.
const SID_WAIT: Duration = Duration::from_secs(2);
/// Falls of the estimate closer together than this make one falling streak.
const FALLING_WINDOW: Duration = Duration::from_millis(500);
/// A fall deeper than this share of the recent peak estimate is congestion, not noise (when it
/// comes near what is sent: [`fall_threatens`]).
const FALLING_DEPTH: f64 = 0.15;
const PEAK_WINDOW: Duration = Duration::from_secs(2);
/// A growing queue keeps a subscriber falling this long.
const DELAY_WINDOW: Duration = Duration::from_secs(1);
/// How long each send stream keeps what it sent, for resends (NACK) and probes. str0m keeps
/// 3 s; libwebrtc's sender keeps a second (or three round trips), and a receiver's NACKs
/// come within a few round trips (`nack_repairs_video_on_a_long_round_trip` repairs 300 ms
/// round trips). Every subscriber connection holds a copy of each packet it was sent for this
/// long, so the window sets most of the server's memory under load (perf/README.md, "The
/// resend window").
const RESEND_WINDOW: Duration = Duration::from_secs(1);
/// How often subscriber connections with bandwidth estimation report their statistics (the
/// round trip among them).
const SUBSCRIBER_STATS_INTERVAL: Duration = Duration::from_millis(500);
/// How often a connection's streams report theirs (the NACK counts of `Stats::nacks`): a
/// pass over every stream of the connection, 300 of them on a subscriber's in a meeting of
/// 150, which the round trip every 500 ms need not pay for (str0m patch 48). NACKs counted
/// by a connection after its last report (up to this long) are not in `Stats::nacks`.
const MEDIA_STATS_INTERVAL: Duration = Duration::from_secs(2);
/// Round-trip time above the path's lowest that means a queue stands at the bottleneck.
const STANDING_QUEUE: Duration = Duration::from_millis(100);
/// How long after its estimate last fell, or after its last probe, a subscriber is probed
/// again (at first).
const PROBE_HOLD: Duration = Duration::from_secs(3);
/// A fall this soon after a probe is the probe's doing.
const PROBE_BLAME: Duration = Duration::from_secs(1);
const MAX_PROBE_HOLD: Duration = Duration::from_secs(8);
/// How long after its first estimate (its startup), or after its tiles came to ask for
/// [`RAMP_GROWTH`] times what they asked for before, a subscriber may be probed for all that
/// its tiles ask for, as long as the estimate has not fallen (`Sfu::allocate`).
const RAMP: Duration = Duration::from_secs(5);
/// How much more than during the last ramp (or than the least since) a subscriber's tiles
/// must ask for, beyond its estimate, to begin another: a tile shown or grown, cameras joining.
/// Well above the swing of measured layer rates, which alone must not make a narrow link
/// probed.
const RAMP_GROWTH: f64 = 1.25;
/// A ramp ends this long after it first asked for more than the estimate if the estimate
/// has not grown by [`RAMP_GAIN`] since: the first probes (three and six times the
/// estimate) came back at little more than the link's rate.
const RAMP_VERDICT: Duration = Duration::from_millis(500);
const RAMP_GAIN: f64 = 1.5;
/// A subscriber's tracks go up one track at a time, this far apart.
const UPGRADE_INTERVAL: Duration = Duration::from_secs(1);
/// No track goes up a layer until the estimate has not fallen for this long.
const CALM_AFTER_FALL: Duration = Duration::from_secs(2);
/// How long a subscriber's budget must lack room for a track's lowest layer before the track
/// pauses for it.
const PAUSE_AFTER: Duration = Duration::from_secs(3);
/// A subscriber's allocation at a tick goes through all its outs at least this often, not
/// only those that took part the last time (`Peer::alloc_outs`).
const ALLOC_FULL_EVERY: Duration = Duration::from_secs(5);
/// How long a resumed subscriber connection waits for the client's SyncState.
const RESYNC_WAIT: Duration = Duration::from_secs(2);
/// At most one subscriber offer (or, with a single peer connection, one request for m-lines)
/// per subscriber in this interval, as LiveKit's negotiation frequency: tracks published
/// meanwhile go out together in the next one, so a room where many publish at once costs each
/// subscriber a few offers, not one per track (each lists every m-line of the connection).
const NEGOTIATION_INTERVAL: Duration = Duration::from_millis(150);
/// About how many m-lines of subscriber offers one call of the SFU writes. Writing an offer
/// costs about 12 µs per m-line (`benches/negotiate.rs`), so a track published into a room of
/// 150 (150 offers of 300 m-lines) would hold the media worker for half a second in one call;
/// with this budget each call writes about 3 ms of offers (at least one), the rest are due at
/// once and written by the following calls of [`Sfu::handle_timeout`], and the worker handles
/// the datagrams that arrived in between.
pub const OFFER_MLINES_PER_CALL: usize = 256;
/// About how many m-lines of peer connections one call of [`Sfu::handle_timeout`] hands their
/// timeouts to. A timeout that sends a connection's RTCP reports costs about 1.5 µs per
/// m-line (0.47 ms for a subscriber of 300 in a room of 150), and connections that started
/// together keep their report timers together: at 150 participants one call served 298 of
/// them, holding the media worker for 140 ms. With this budget a call serves about two such
/// connections (or many small ones); the others stay due, and the worker reads its socket
/// before the next call. A timeout with no report or statistics due counts as one m-line
/// (with bandwidth estimation on, the pacer asks for one after each packet): counted by the
/// connection's size, the pacers of a room of 50 got a third of the timeouts they asked for.
pub const TIMEOUT_MLINES_PER_CALL: usize = 512;
/// How long a participant whose WebSocket dropped may resume before it is removed.
pub const RESUME_WINDOW: Duration = Duration::from_secs(15);
/// How long a participant whose media path failed (ICE found no working pair) may resume,
/// once told to, before it is removed: LiveKit's `disconnectCleanupDuration`. A client that
/// still has its WebSocket resumes within a second (livekit-client waits up to 0.5 s, then
/// reconnects its socket and restarts ICE).
pub const TRANSPORT_RESUME_WINDOW: Duration = Duration::from_secs(5);
/// LiveKit's defaults: a room nobody joined closes after 5 minutes, a room everyone left after
/// 20 seconds.
const DEFAULT_EMPTY_TIMEOUT_S: u32 = 300;
const DEFAULT_DEPARTURE_TIMEOUT_S: u32 = 20;
const RELIABLE: &str = "_reliable";
const LOSSY: &str = "_lossy";

/// The sid of track `sid`'s publisher, if both are known.
fn publisher_sid(
    tracks: &FastIndexMap<String, Track>,
    participants: &FastMap<SessionId, Participant>,
    sid: &str,
) -> Option<String> {
    tracks
        .get(sid)
        .and_then(|t| participants.get(&t.publisher))
        .map(|p| p.info.sid.clone())
}

/// What a subscriber's tile asks of a video track (`None`: turned off): as the track's last
/// receivers pass read it, unless something changed since (settings, layers announced, the
/// subscription).
fn tile_wants(
    track: &Track,
    sid: &str,
    out: &Out,
    settings: Option<&FastMap<String, proto::UpdateTrackSettings>>,
) -> Option<u8> {
    if !track.receivers_stale && out.track == track.key {
        out.wanted
    } else {
        simulcast::wanted_quality(settings.and_then(|s| s.get(sid)), track.published_layers())
    }
}

/// A tile turned off whose state already says so (not paused, not short of room, no reduced
/// frame rate, no layer being forwarded): it takes no part in its subscriber's allocation,
/// which would give it nothing and change nothing of it. In a large meeting most tiles are
/// off (all but a grid's worth of cameras), and each subscriber's pass went through every one
/// of them, every tick. It stays so until its settings or its m-line change.
fn off_and_settled(out: &Out, wanted: Option<u8>) -> bool {
    wanted.is_none()
        && out.cap == Some(2)
        && out.short_since.is_none()
        && out.temporal_cap.is_none()
        && out.switcher.current().is_none()
}

/// Track `sid`'s receivers must be worked out again before its next frame
/// ([`Track::receivers`]).
fn receivers_changed(tracks: &mut FastIndexMap<String, Track>, sid: &str) {
    if let Some(track) = tracks.get_mut(sid) {
        track.changed();
    }
}

/// Prefetches what the fan-out reads first of the receivers after the `i`-th, a few receivers
/// ahead (str0m patch 49, `Rtc::write_prefetch`). Each write begins with a chain of first
/// touches, each found from the one before: the peer, its `Out`, its connection's m-line, that
/// m-line's stream; taken in turn they were most of `forward_track`'s own time at 150
/// participants (perf/README.md, "Prefetching the next receivers"). Here each link is
/// prefetched one receiver after the link it is read from, so the next receivers' misses
/// overlap this one's work: four receivers ahead the peer's fields and its connection's
/// lists, three its `Out` and the codecs, two the m-line, one the stream.
fn prefetch_receivers(peers: &FastMap<PeerId, Box<Peer>>, receivers: &[(PeerId, usize)], i: usize) {
    let at = |k: usize| {
        let &(sub, place) = receivers.get(i + k)?;
        Some((peers.get(&sub)?, place))
    };
    if let Some((peer, _)) = at(4) {
        prefetch(&peer.outs as *const FastIndexMap<String, Out> as *const u8);
        prefetch(&peer.queued as *const bool as *const u8);
        prefetch(&peer.sdp_applied as *const u32 as *const u8);
        peer.rtc.write_prefetch(0, 0, prefetch);
    }
    if let Some((peer, place)) = at(3) {
        if let Some((_, out)) = peer.outs.get_index(place) {
            let out = out as *const Out as *const u8;
            for offset in (0..std::mem::size_of::<Out>()).step_by(64) {
                prefetch(out.wrapping_add(offset));
            }
            // Its last line, where the `Out` does not start on one.
            prefetch(out.wrapping_add(std::mem::size_of::<Out>() - 1));
        }
        peer.rtc.write_prefetch(1, 0, prefetch);
    }
    for (k, step) in [(2, 2), (1, 3)] {
        if let Some((peer, place)) = at(k)
            && let Some((_, out)) = peer.outs.get_index(place)
        {
            peer.rtc.write_prefetch(step, out.media_hint, prefetch);
        }
    }
}

/// Prefetches what polling the next peers reads first (str0m patch 52,
/// `Rtc::poll_prefetch`), while this one is polled: after a fan-out, each receiver's poll
/// began with a chain of first touches (its connection's state, the stream written to, the
/// slot of the cache of sent packets), each found from the one before. As in
/// [`prefetch_receivers`], each link is prefetched one peer after the link it is read from:
/// three peers ahead the peer's fields and its connection's, two the stream, one the packet
/// and its cache slot. `next(k)` is the peer polled `k` places after this one.
fn prefetch_polls(peers: &FastMap<PeerId, Box<Peer>>, next: impl Fn(usize) -> Option<PeerId>) {
    let at = |k: usize| peers.get(&next(k)?);
    if let Some(peer) = at(3) {
        prefetch(&peer.queued as *const bool as *const u8);
        prefetch(&peer.deadline as *const Option<Instant> as *const u8);
        peer.rtc.poll_prefetch(0, prefetch);
    }
    for (k, step) in [(2, 1), (1, 2)] {
        if let Some(peer) = at(k) {
            peer.rtc.poll_prefetch(step, prefetch);
        }
    }
}

/// Asks the CPU to bring the cache line at `p` in, without waiting for it (x86_64 only;
/// elsewhere nothing). The crate's one `unsafe`: `_mm_prefetch` is safe to call only from a
/// function compiled with `#[target_feature(enable = "sse")]` (SSE enabled for the whole
/// build does not count), and such a function cannot be handed to `Rtc::write_prefetch` as
/// an `impl FnMut`.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: a prefetch is a hint: it reads nothing into the program and never faults,
    // whatever the address (null, stale or unmapped), and SSE, which it needs, is part of
    // every x86_64 CPU.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Puts `peer` (whose id is `pid`) on the list of peers to poll, once ([`Sfu::mark`]).
fn queue(peer: &mut Peer, pid: PeerId, dirty: &mut Vec<PeerId>) {
    if !peer.queued {
        peer.queued = true;
        dirty.push(pid);
    }
}

impl Sfu {
    pub fn new(config: SfuConfig, now: Instant) -> Self {
        let ids = IdGen::new(config.seed);
        Self {
            config,
            ids,
            rooms: FastMap::default(),
            participants: FastMap::default(),
            peers: FastMap::default(),
            tracks: FastIndexMap::default(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            deadlines: BTreeSet::new(),
            offers_due: BTreeSet::new(),
            offer_budget: OFFER_MLINES_PER_CALL,
            next_peer: 1,
            dirty: Vec::new(),
            events: VecDeque::new(),
            out: VecDeque::new(),
            sending: VecDeque::new(),
            polling: None,
            audio_tap: None,
            record_tap: None,
            next_tick: None,
            alloc_full_every: ALLOC_FULL_EVERY,
            alloc_check: false,
            now,
            stats: Stats::default(),
            away: Away::default(),
            nack_seen: FastMap::default(),
            subtitle_serial: 0,
            track_keys: TrackKeys::default(),
        }
    }

    /// How often a subscriber's allocation at a tick goes through all its outs rather than
    /// those that took part the time before ([`ALLOC_FULL_EVERY`]); zero: every time. For
    /// simulations, which compare the two (they must decide the same).
    #[doc(hidden)]
    pub fn set_alloc_full_every(&mut self, every: Duration) {
        self.alloc_full_every = every;
    }

    /// Makes each allocation at a tick that goes through the outs that took part the time
    /// before check that every out taking part is among them, and panic if not. For
    /// simulations: a change that can bring an out in and does not clear the list shows
    /// there, even where a later pass through all outs would have hidden it.
    #[doc(hidden)]
    pub fn set_alloc_check(&mut self, check: bool) {
        self.alloc_check = check;
    }

    pub fn stats(&self) -> Stats {
        // The media worker reads these at every turn of its loop, so nothing here walks the
        // maps. A room spanning workers counts on its home worker, mirrors nowhere.
        debug_assert_eq!(self.away, self.count_away());
        Stats {
            rooms: (self.rooms.len() - self.away.rooms) as u64,
            participants: (self.participants.len() - self.away.participants) as u64,
            tracks: (self.tracks.len() - self.away.tracks) as u64,
            ..self.stats
        }
    }

    /// [`Away`] counted from the maps (what [`Sfu::stats`] did at every call before).
    fn count_away(&self) -> Away {
        Away {
            rooms: self.rooms.keys().filter(|r| !self.is_home(r)).count(),
            participants: self
                .participants
                .values()
                .filter(|p| p.remote.is_some())
                .count(),
            tracks: self.tracks.values().filter(|t| t.remote.is_some()).count(),
        }
    }

    /// Adds a room to the map, counting it in [`Away`] when its home is another worker.
    fn insert_room(&mut self, name: &str, room: Room) {
        if !self.is_home(name) {
            self.away.rooms += 1;
        }
        self.rooms.insert(name.to_owned(), room);
    }

    /// The participant sid of a session, once joined.
    pub fn participant_sid(&self, session: SessionId) -> Option<&str> {
        self.participants.get(&session).map(|p| p.info.sid.as_str())
    }

    /// Handles one command from a signal session.
    // An entry point: kept a symbol of its own under link-time optimisation, for the
    // profilers that count or sample by it (perf/callgrind.sh, perf/flamegraph.sh).
    #[inline(never)]
    pub fn handle_command(&mut self, now: Instant, command: Command) {
        self.now = now;
        self.offer_budget = OFFER_MLINES_PER_CALL;
        match command {
            Command::Join(join) => self.join(now, *join),
            Command::Offer { session, sdp, id } => self.publisher_offer(now, session, &sdp, id),
            Command::Answer { session, answer } => self.subscriber_answer(now, session, answer),
            Command::Trickle {
                session,
                candidate_init,
                target,
            } => self.trickle(session, &candidate_init, target),
            Command::AddTrack { session, request } => self.add_track(session, request),
            Command::Mute {
                session,
                track_sid,
                muted,
            } => self.mute(session, &track_sid, muted),
            Command::UpdateSubscription {
                session,
                track_sids,
                subscribe,
            } => {
                for sid in track_sids {
                    if subscribe {
                        self.subscribe(session, &sid);
                    } else {
                        self.unsubscribe(session, &sid);
                    }
                }
                self.negotiate_subscriber(session);
            }
            Command::UpdateTrackSettings { session, settings } => {
                let mut subscriber = None;
                if let Some(p) = self.participants.get_mut(&session) {
                    for sid in &settings.track_sids {
                        p.settings.insert(sid.clone(), settings.clone());
                        receivers_changed(&mut self.tracks, sid);
                    }
                    subscriber = p.subscriber;
                }
                // A bigger tile may get more at once, within the budget.
                if let Some(pid) = subscriber {
                    if let Some(peer) = self.peers.get_mut(&pid) {
                        peer.alloc_outs = None;
                    }
                    self.allocate(now, pid, None);
                }
            }
            Command::UpdateMetadata { session, request } => self.update_metadata(session, request),
            Command::Leave { session } => self.leave(session, None),
            Command::Disconnect { session } => {
                // A loss of the media path before keeps its (shorter) deadline; the reason
                // becomes the signal connection's, which only a resume brings back.
                if let Some(p) = self.participants.get_mut(&session) {
                    let by = p.resume_by.map_or(now + RESUME_WINDOW, |(by, _)| by);
                    p.resume_by = Some((by, proto::DisconnectReason::SignalClose));
                }
            }
            Command::Resume { session, identity } => self.resume(now, session, &identity),
            Command::SyncState {
                session,
                offer,
                answer,
            } => self.sync_state(now, session, offer, answer),
            Command::Shutdown => {
                let sessions: Vec<SessionId> = self.participants.keys().copied().collect();
                for session in sessions {
                    self.leave(session, Some(proto::DisconnectReason::ServerShutdown));
                }
                let rooms: Vec<proto::Room> = self.rooms.drain().map(|(_, r)| r.info).collect();
                for room in rooms {
                    if self.is_home(&room.name) {
                        self.webhook("room_finished", Some(room), None, None);
                    }
                }
            }
            Command::Service { id, call, unix_ms } => self.service(now, id, *call, unix_ms),
        }
        self.run(now);
    }

    /// Handles one datagram that arrived at `destination` (one of the configured candidates).
    // An entry point: kept a symbol of its own under link-time optimisation, for the
    // profilers that count or sample by it (perf/callgrind.sh, perf/flamegraph.sh).
    #[inline(never)]
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        self.handle_receive_at(now, now, Transport::Udp, source, destination, contents);
    }

    /// Handles one packet that arrived over `transport`: a UDP datagram, or one deframed
    /// packet of an ICE-TCP connection from `source`.
    pub fn handle_receive_on(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        self.handle_receive_at(now, now, transport, source, destination, contents);
    }

    /// [`Sfu::handle_receive_on`] for a packet read at `now` that arrived at `arrived` (the
    /// kernel's receive timestamp; `now` when there is none). The arrival goes into the TWCC
    /// feedback the peer gets (str0m patch 23), so a publisher's bandwidth estimator sees how
    /// the packets of a batch read at once really came in, not all at the instant they were
    /// read. Everything else about the packet happens at `now`.
    pub fn handle_receive_at(
        &mut self,
        now: Instant,
        arrived: Instant,
        transport: Transport,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        self.now = now;
        self.offer_budget = OFFER_MLINES_PER_CALL;
        self.stats.packets_in += 1;
        self.stats.bytes_in += contents.len() as u64;
        let stun = is_stun(contents);
        let Some(pid) = self.route(stun, source, contents) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        let Ok(contents) = contents.try_into() else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: match transport {
                    Transport::Udp => Protocol::Udp,
                    Transport::Tcp => Protocol::Tcp,
                },
                source,
                destination,
                contents,
            },
        );
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if !peer.rtc.accepts(&input) {
            self.stats.dropped_datagrams += 1;
            return;
        }
        if arrived < now {
            peer.rtc.set_arrival(arrived);
        }
        if let Err(e) = peer.rtc.handle_input(input) {
            tracing::debug!(%source, "peer refused a datagram: {e}");
            self.stats.dropped_datagrams += 1;
        }
        if stun {
            // The address ICE checks come from is where the rest of this peer's traffic
            // (DTLS, SRTP, SCTP) comes from.
            self.by_addr.insert(source, pid);
        }
        self.mark(pid);
        self.run(now);
    }

    /// Advances time: peers whose timeout passed, held-back offers (as many as the call's
    /// offer budget allows), and the speaker tick.
    // An entry point: kept a symbol of its own under link-time optimisation, for the
    // profilers that count or sample by it (perf/callgrind.sh, perf/flamegraph.sh).
    #[inline(never)]
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.offer_budget = OFFER_MLINES_PER_CALL;
        // Peers' timeouts, up to about TIMEOUT_MLINES_PER_CALL m-lines of them (at least one
        // peer): the rest stay due, for the next call.
        let mut budget = TIMEOUT_MLINES_PER_CALL;
        while budget > 0
            && let Some(pid) = pop_due(&mut self.deadlines, now)
        {
            if let Some(peer) = self.peers.get_mut(&pid) {
                // A timeout that may send reports or statistics visits every m-line; the
                // others (the pacer's, packetizing) visit what has work (str0m patch 24).
                let cost = if peer.rtc.full_pass_due(now) {
                    1 + peer.mids_out.len() + peer.mids_in.len()
                } else {
                    1
                };
                budget = budget.saturating_sub(cost);
                peer.deadline = None;
                self.stats.rtc_timeouts += 1;
                if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!("peer timeout failed: {e}");
                    peer.rtc.disconnect();
                }
                self.mark(pid);
            }
        }
        // An offer the budget holds back goes back in due now and ends the budget.
        while self.offer_budget > 0
            && let Some(pid) = pop_due(&mut self.offers_due, now)
        {
            if let Some(peer) = self.peers.get_mut(&pid) {
                peer.offer_due = None;
                let session = peer.session;
                self.negotiate_subscriber(session);
            }
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now);
        }
        self.run(now);
    }

    /// Sends every frame published in a room being recorded to `tap` from now on (the
    /// record plane). Rooms are recorded through [`ServiceCall::Record`].
    pub fn set_record_tap(&mut self, tap: Box<dyn RecordTap>) {
        self.record_tap = Some(tap);
    }

    /// Sends every published Opus frame to `tap` from now on (the speech plane).
    pub fn set_audio_tap(&mut self, tap: Box<dyn AudioTap>) {
        self.audio_tap = Some(tap);
    }

    /// The next output. Call until it returns [`Output::Timeout`], then again after any input.
    // An entry point: kept a symbol of its own under link-time optimisation, for the
    // profilers that count or sample by it (perf/callgrind.sh, perf/flamegraph.sh).
    #[inline(never)]
    pub fn poll_output(&mut self) -> Output {
        loop {
            if let Some(o) = self.out.pop_front() {
                return o;
            }
            // The next datagram of the connection that has been sending longest. Out of the
            // list while it is polled (`poll_peer` clears its flag and sets it again when it
            // is not done): a panic in there, caught by the caller, leaves it out of the list
            // and flagged so, not first in line to panic again, and its next input puts it back.
            let Some(pid) = self.sending.pop_front() else {
                break;
            };
            if cfg!(target_arch = "x86_64") && self.polling != Some(pid) {
                self.polling = Some(pid);
                let sending = &self.sending;
                prefetch_polls(&self.peers, |k| sending.get(k - 1).copied());
            }
            match self.poll_peer(pid, true) {
                Polled::Transmit(transmit) => {
                    self.sending.push_front(pid);
                    return transmit;
                }
                // Handled as an input's would be: it may queue outputs and wake other peers.
                Polled::Event => {
                    self.sending.push_front(pid);
                    self.run(self.now);
                }
                Polled::Done => {}
            }
        }
        let peer_deadline = [self.deadlines.first(), self.offers_due.first()]
            .into_iter()
            .flatten()
            .map(|&(t, _)| t)
            .min();
        let next = match (peer_deadline, self.next_tick) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            // Nothing scheduled: wake within a second anyway.
            (None, None) => return Output::Timeout(self.far_future()),
        };
        Output::Timeout(next)
    }

    /// "No deadline": a second after the latest input; the caller may cap its wait anyway.
    fn far_future(&self) -> Instant {
        self.now + Duration::from_secs(1)
    }

    // ---- joining and leaving ----

    fn join(&mut self, now: Instant, join: JoinCommand) {
        let session = join.session;
        // A second session for the same identity evicts the first (LiveKit's behaviour).
        let older: Vec<SessionId> = self
            .rooms
            .get(&join.room)
            .map(|r| {
                r.members
                    .iter()
                    .copied()
                    .filter(|s| {
                        self.participants
                            .get(s)
                            .is_some_and(|p| p.info.identity == join.identity)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for old in older {
            match self.participants.get(&old).and_then(|p| p.remote) {
                // Its worker evicts it, and its departure comes back as any other.
                Some(worker) => self.push_relay(worker, Relay::Evict { session: old }),
                None => self.leave(old, Some(proto::DisconnectReason::DuplicateIdentity)),
            }
        }

        if let Some(room) = self.rooms.get(&join.room)
            && room.info.max_participants > 0
            && room.members.len() >= room.info.max_participants as usize
        {
            tracing::info!(%session, room = %join.room, "room is full");
            self.signal(
                session,
                leave_message(
                    proto::DisconnectReason::JoinFailure,
                    proto::leave_request::Action::Disconnect,
                ),
            );
            self.out.push_back(Output::Close(session));
            return;
        }
        if !self.rooms.contains_key(&join.room) {
            let room = self.new_room(now, &join.room, join.unix_ms);
            self.insert_room(&join.room, room);
        }
        let Some(room) = self.rooms.get_mut(&join.room) else {
            return;
        };
        room.empty_since = None;
        room.ever_joined = true;
        room.members.push(session);
        room.counts_changed = true;
        let mut room_info = room.info.clone();
        room_info.num_participants = room.members.len() as u32;
        let members = room.members.clone();

        let info = proto::ParticipantInfo {
            sid: self.ids.sid("PA_"),
            identity: join.identity,
            name: join.name,
            state: proto::participant_info::State::Joined as i32,
            metadata: join.metadata,
            attributes: join.attributes,
            joined_at: join.unix_ms / 1000,
            joined_at_ms: join.unix_ms,
            version: 1,
            permission: Some(join.permission),
            kind: join.kind,
            client_protocol: join.client_protocol,
            ..Default::default()
        };
        let others: Vec<proto::ParticipantInfo> = members
            .iter()
            .filter(|s| **s != session)
            .filter_map(|s| self.participants.get(s))
            .filter(|p| !is_hidden(&p.info))
            .map(|p| p.info.clone())
            .collect();
        let response = proto::JoinResponse {
            room: Some(room_info),
            participant: Some(info.clone()),
            other_participants: others,
            server_version: self.config.server_version.clone(),
            server_info: Some(self.server_info()),
            ping_interval: self.config.ping_interval_s.max(1),
            ping_timeout: self.config.ping_timeout_s.max(2),
            // livekit-client sends data on the subscriber connection when this is set, and a
            // single peer connection has none.
            subscriber_primary: join.protocol > 2 && join.layout == Layout::TwoPeerConnections,
            ..Default::default()
        };
        self.signal(session, proto::signal_response::Message::Join(response));
        let single = join.layout == Layout::SinglePeerConnection;
        let role = if single {
            PeerRole::Both
        } else {
            PeerRole::Subscriber
        };
        let subscriber = self.new_peer(now, session, role);
        let hidden = is_hidden(&info);
        let can_subscribe = info.permission.as_ref().is_some_and(|p| p.can_subscribe);
        self.participants.insert(
            session,
            Participant {
                info: info.clone(),
                room: join.room.clone(),
                auto_subscribe: join.auto_subscribe,
                publisher: single.then_some(subscriber),
                subscriber: Some(subscriber),
                pending: HashMap::new(),
                settings: FastMap::default(),
                resume_by: None,
                remote: None,
            },
        );
        if let Some(peer) = self.peers.get_mut(&subscriber)
            && !single
        {
            peer.add_channels = true;
        }
        if join.auto_subscribe && can_subscribe {
            let existing: Vec<String> = self
                .tracks
                .iter()
                .filter(|(_, t)| t.published() && members.contains(&t.publisher))
                .map(|(sid, _)| sid.clone())
                .collect();
            for sid in existing {
                self.subscribe(session, &sid);
            }
        }
        if let Some((sdp, id)) = join.offer {
            // `/rtc/v1`: the answer to the join request's offer follows the JoinResponse.
            self.publisher_offer(now, session, &sdp, id);
        } else if !single {
            // `/rtc`: the subscriber offer goes out right after the JoinResponse, tracks or not.
            if let Some(peer) = self.peers.get_mut(&subscriber) {
                peer.needs_offer = true;
            }
            self.negotiate_subscriber(session);
        }
        if !hidden {
            self.broadcast_participant(&join.room, &info, Some(session));
        }
        // Workers that share the room heard of the newcomer just now; the others are asked
        // whether they hold participants of it.
        self.hello(&join.room, session);
        let speaking = self
            .rooms
            .get(&join.room)
            .map(|r| speakers::active(&r.loudness))
            .unwrap_or_default();
        let room_info = self.rooms.get(&join.room).map(|r| r.info.clone());
        self.webhook("participant_joined", room_info, Some(info.clone()), None);
        if !speaking.is_empty() {
            let message = proto::SpeakersChanged {
                speakers: speaking
                    .into_iter()
                    .map(|(sid, level, active)| proto::SpeakerInfo { sid, level, active })
                    .collect(),
            };
            self.signal(
                session,
                proto::signal_response::Message::SpeakersChanged(message),
            );
        }
        self.ensure_tick(now);
    }

    /// Re-attaches a participant to a new signal connection: ReconnectResponse first, then the
    /// room as it is now, then (two peer connections) a subscriber offer that restarts ICE.
    fn resume(&mut self, now: Instant, session: SessionId, identity: &str) {
        let known = self
            .participants
            .get(&session)
            .is_some_and(|p| p.info.identity == identity);
        if !known {
            self.signal(
                session,
                leave_message(
                    proto::DisconnectReason::StateMismatch,
                    proto::leave_request::Action::Reconnect,
                ),
            );
            self.out.push_back(Output::Close(session));
            return;
        }
        let Some(p) = self.participants.get_mut(&session) else {
            return;
        };
        p.resume_by = None;
        let (room_name, subscriber) = (p.room.clone(), p.subscriber);
        let response = proto::ReconnectResponse {
            server_info: Some(self.server_info()),
            ..Default::default()
        };
        self.signal(
            session,
            proto::signal_response::Message::Reconnect(response),
        );
        if let Some(room) = self.rooms.get(&room_name) {
            let participants: Vec<proto::ParticipantInfo> = room
                .members
                .iter()
                .filter_map(|s| self.participants.get(s))
                .filter(|p| !is_hidden(&p.info))
                .map(|p| p.info.clone())
                .collect();
            let info = room.info.clone();
            self.signal(
                session,
                proto::signal_response::Message::Update(proto::ParticipantUpdate { participants }),
            );
            let update = proto::RoomUpdate { room: Some(info) };
            self.signal(session, proto::signal_response::Message::RoomUpdate(update));
        }
        if let Some(pid) = subscriber
            && let Some(peer) = self.peers.get_mut(&pid)
            && peer.role == PeerRole::Subscriber
        {
            peer.ice_restart = true;
            peer.needs_offer = true;
            if peer.pending_offer.is_some() {
                // An offer was out when the socket dropped. The client may have applied it and
                // lost only its answer: its SyncState will tell. Offering again before knowing
                // would put m-lines in an order the client refuses.
                peer.resync_until = Some(now + RESYNC_WAIT);
            } else {
                self.negotiate_subscriber(session);
            }
        }
    }

    /// The client's SyncState after a resume: apply the answer it made to our outstanding
    /// offer, or, when it never saw that offer, forget it; then offer again (restarting ICE).
    fn sync_state(
        &mut self,
        now: Instant,
        session: SessionId,
        offer: Option<String>,
        answer: Option<String>,
    ) {
        let Some(pid) = self.participants.get(&session).and_then(|p| p.subscriber) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if peer.resync_until.take().is_none() || peer.pending_offer.is_none() {
            return;
        }
        let applied = match (&offer, &peer.pending_offer_sdp) {
            (Some(theirs), Some(ours)) => sdp_scan::origin(theirs) == sdp_scan::origin(ours),
            _ => false,
        };
        match answer {
            Some(answer) if applied => {
                let answer = SdpAnswer::from_sdp_string(&answer).map_err(|e| e.to_string());
                self.subscriber_answer(now, session, answer)
            }
            _ => {
                self.forget_pending_offer(pid);
                self.negotiate_subscriber(session);
            }
        }
    }

    /// Drops an offer the client never answered; its m-lines are offered again.
    fn forget_pending_offer(&mut self, pid: PeerId) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        peer.pending_offer = None;
        peer.pending_offer_sdp = None;
        peer.resync_until = None;
        for out in peer.outs.values_mut() {
            if let OutState::Negotiating(mid) = out.state {
                out.state = OutState::Wanted;
                peer.mids_out.remove(&mid);
            }
        }
        peer.needs_offer = true;
    }

    fn server_info(&self) -> proto::ServerInfo {
        proto::ServerInfo {
            edition: proto::server_info::Edition::Standard as i32,
            version: self.config.server_version.clone(),
            protocol: self.config.protocol,
            node_id: self.config.node_id.clone(),
            ..Default::default()
        }
    }

    /// A peer connection of `pid` lost its path. As LiveKit does, the client is told to resume
    /// (`LeaveRequest` with action RESUME); the participant, its tracks and subscriptions
    /// stay until [`TRANSPORT_RESUME_WINDOW`] has passed. Nothing is sent when the participant
    /// is already waiting for a resume (its signal connection is gone too).
    fn transport_lost(&mut self, now: Instant, pid: PeerId) {
        let Some(session) = self.peers.get(&pid).map(|p| p.session) else {
            return;
        };
        let Some(p) = self.participants.get_mut(&session) else {
            return;
        };
        if p.resume_by.is_some() {
            return;
        }
        p.resume_by = Some((
            now + TRANSPORT_RESUME_WINDOW,
            proto::DisconnectReason::ConnectionTimeout,
        ));
        tracing::info!(%session, "media path lost; asking the client to resume");
        self.signal(
            session,
            leave_message(
                proto::DisconnectReason::ConnectionTimeout,
                proto::leave_request::Action::Resume,
            ),
        );
    }

    /// A peer connection of `session` has a path again. If the client was asked to resume
    /// because of a lost path, kept its signal connection and every one of its connections
    /// is up again without a resume (a client that ignores the request, and whose path came
    /// back by itself), it stays: media flows, and there is nothing left to resume.
    fn transport_back(&mut self, session: SessionId) {
        let Some(p) = self.participants.get(&session) else {
            return;
        };
        if !matches!(
            p.resume_by,
            Some((_, proto::DisconnectReason::ConnectionTimeout))
        ) {
            return;
        }
        let all_up = [p.publisher, p.subscriber]
            .into_iter()
            .flatten()
            .all(|pid| self.peers.get(&pid).is_some_and(|peer| peer.ice_up));
        if all_up && let Some(p) = self.participants.get_mut(&session) {
            tracing::info!(%session, "media path back without a resume");
            p.resume_by = None;
        }
    }

    fn leave(&mut self, session: SessionId, reason: Option<proto::DisconnectReason>) {
        self.leave_with(session, reason, proto::leave_request::Action::Disconnect);
    }

    /// The participant leaves; with a reason, its client gets a `LeaveRequest` with `action`
    /// and its signal connection is closed.
    fn leave_with(
        &mut self,
        session: SessionId,
        reason: Option<proto::DisconnectReason>,
        action: proto::leave_request::Action,
    ) {
        let Some(mut participant) = self.participants.remove(&session) else {
            return;
        };
        if participant.remote.is_some() {
            self.away.participants -= 1;
        }
        // A mirror's worker sends the webhooks of its participant.
        let local = participant.remote.is_none();
        if let Some(reason) = reason
            && local
        {
            self.signal(session, leave_message(reason, action));
            self.out.push_back(Output::Close(session));
        }
        // Unpublish its tracks.
        let published: Vec<String> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.publisher == session)
            .map(|(sid, _)| sid.clone())
            .collect();
        let room_info = self.rooms.get(&participant.room).map(|r| r.info.clone());
        for sid in &published {
            if let Some(track) = self.remove_track(sid)
                && track.mid.is_some()
                && local
            {
                let (r, p) = (room_info.clone(), Some(participant.info.clone()));
                self.webhook("track_unpublished", r, p, Some(track.info));
            }
        }
        for pid in [participant.publisher.take(), participant.subscriber.take()]
            .into_iter()
            .flatten()
        {
            self.remove_peer(pid);
        }
        let room_name = participant.room.clone();
        if let Some(room) = self.rooms.get_mut(&room_name) {
            room.members.retain(|s| *s != session);
            room.counts_changed = true;
            room.loudness.remove(&participant.info.sid);
            room.loudest.remove(&participant.info.sid);
            if room.members.is_empty() {
                room.empty_since = Some(self.now);
            }
        }
        participant.info.state = proto::participant_info::State::Disconnected as i32;
        participant.info.version += 1;
        participant.info.tracks.clear();
        if let Some(reason) = reason {
            participant.info.disconnect_reason = reason as i32;
        }
        if local {
            self.webhook(
                "participant_left",
                room_info,
                Some(participant.info.clone()),
                None,
            );
            self.relay_left(&room_name, session);
        }
        if !is_hidden(&participant.info) {
            self.broadcast_participant(&room_name, &participant.info, Some(session));
        }
        // Subscribers of the removed tracks renegotiate without them.
        let sessions: Vec<SessionId> = self.participants.keys().copied().collect();
        for s in sessions {
            self.negotiate_subscriber(s);
        }
    }

    // ---- peers ----

    fn new_peer(&mut self, now: Instant, session: SessionId, role: PeerRole) -> PeerId {
        let ufrag = self.ids.text(8);
        let pass = self.ids.text(24);
        let bwe = (role != PeerRole::Publisher && self.config.bwe_initial_kbps > 0)
            .then(|| Bitrate::kbps(u64::from(self.config.bwe_initial_kbps)));
        let mut rtc = Rtc::builder()
            // Opus with RED (RFC 2198), as LiveKit negotiates it: str0m takes a lost packet's
            // frame from the redundant copy in the next one, and sends RED to subscribers that
            // take it, except for tracks published with `disable_red` (end-to-end encryption).
            .enable_opus(true, true)
            .enable_bwe(bwe)
            .set_ice_lite(true)
            .set_send_buffer_duration(RESEND_WINDOW)
            .set_stats_interval(Some(if bwe.is_some() {
                SUBSCRIBER_STATS_INTERVAL
            } else {
                MEDIA_STATS_INTERVAL
            }))
            .set_media_stats_every(if bwe.is_some() {
                (MEDIA_STATS_INTERVAL.as_millis() / SUBSCRIBER_STATS_INTERVAL.as_millis()) as u32
            } else {
                1
            })
            .set_local_ice_credentials(IceCreds {
                ufrag: ufrag.clone(),
                pass,
            })
            .build(now);
        for addr in &self.config.candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, "cannot use candidate: {e}"),
            }
        }
        for addr in &self.config.tcp_candidates {
            let candidate = Candidate::builder()
                .tcp()
                .host(*addr)
                .tcptype(str0m::net::TcpType::Passive)
                .build();
            match candidate {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, "cannot use TCP candidate: {e}"),
            }
        }
        let pid = PeerId(self.next_peer);
        self.next_peer += 1;
        self.by_ufrag.insert(ufrag.clone(), pid);
        self.peers.insert(
            pid,
            Box::new(Peer {
                session,
                role,
                rtc,
                ufrag,
                ice_up: false,
                media_up: false,
                deadline: None,
                queued: false,
                in_sending: false,
                msids: HashMap::new(),
                mids_in: FastMap::default(),
                outs: FastIndexMap::default(),
                mids_out: FastMap::default(),
                pending_offer: None,
                needs_offer: false,
                add_channels: false,
                to_stop: Vec::new(),
                ice_restart: false,
                pending_offer_sdp: None,
                resync_until: None,
                offers_sent: 0,
                last_offer: None,
                offer_due: None,
                known_mids: HashSet::new(),
                awaiting_offer: false,
                channels: HashMap::new(),
                channel_labels: HashMap::new(),
                estimate: None,
                allocated_for: None,
                bwe_rates: (0, 0),
                last_fall: None,
                probe_hold: PROBE_HOLD,
                peak: (0, now),
                probe_fall: false,
                sending: 0,
                last_upgrade: None,
                probed_at: None,
                ramp_since: None,
                ramp_probe: None,
                ramp_over: false,
                ramp_demand: 0,
                rtt: None,
                rtt_min: None,
                delayed_at: None,
                sdp_applied: 0,
                alloc_outs: None,
                alloc_full_at: None,
            }),
        );
        self.mark(pid);
        pid
    }

    fn remove_peer(&mut self, pid: PeerId) {
        let Some(peer) = self.peers.remove(&pid) else {
            return;
        };
        self.by_ufrag.remove(&peer.ufrag);
        self.by_addr.retain(|_, p| *p != pid);
        if let Some(t) = peer.deadline {
            self.deadlines.remove(&(t, pid));
        }
        for sid in peer.outs.keys() {
            if let Some(track) = self.tracks.get_mut(sid) {
                track.subscribers.retain(|p| *p != pid);
                track.changed();
            }
        }
        self.nack_seen.retain(|(p, _, _), _| *p != pid);
    }

    /// Which peer a datagram belongs to: STUN by the username fragment we chose for the peer,
    /// everything else by the source address ICE validated.
    fn route(&mut self, stun: bool, source: SocketAddr, contents: &[u8]) -> Option<PeerId> {
        if stun {
            let message = StunMessage::parse(contents).ok()?;
            let (local, _remote) = message.split_username()?;
            return self.by_ufrag.get(local).copied();
        }
        self.by_addr.get(&source).copied()
    }

    fn mark(&mut self, pid: PeerId) {
        if let Some(peer) = self.peers.get_mut(&pid) {
            queue(peer, pid, &mut self.dirty);
        }
    }

    /// Drains every dirty peer and handles the events that come out, until nothing is left.
    fn run(&mut self, now: Instant) {
        loop {
            while let Some(pid) = self.dirty.pop() {
                if cfg!(target_arch = "x86_64") {
                    let dirty = &self.dirty;
                    prefetch_polls(&self.peers, |k| {
                        dirty.get(dirty.len().checked_sub(k)?).copied()
                    });
                }
                self.drain(pid);
            }
            let Some((pid, event)) = self.events.pop_front() else {
                break;
            };
            self.handle_event(now, pid, event);
        }
    }

    /// Takes a dirty peer's output up to its first datagram: its events go to `events`, and
    /// the datagram to `out`, the rest being left in str0m for [`Sfu::poll_output`] to take
    /// one at a time (`sending`). Drained whole, a fan-out of a frame to a large room (a key
    /// frame to every subscriber: thousands of datagrams) held each datagram's buffer until the
    /// caller took it: str0m's buffer pool (patch 25) ran dry and every further datagram was
    /// encrypted into fresh memory, page faults included. Taken as the caller sends, each
    /// buffer goes back to the pool before the next datagram is encrypted.
    fn drain(&mut self, pid: PeerId) {
        if let Some(peer) = self.peers.get_mut(&pid) {
            peer.queued = false;
        }
        loop {
            match self.poll_peer(pid, false) {
                Polled::Transmit(transmit) => {
                    self.out.push_back(transmit);
                    if let Some(peer) = self.peers.get_mut(&pid)
                        && !peer.in_sending
                    {
                        peer.in_sending = true;
                        self.sending.push_back(pid);
                    }
                    return;
                }
                Polled::Event => {}
                Polled::Done => return,
            }
        }
    }

    /// One output of a peer's connection: a datagram, an event (queued in `events`), or its
    /// next timeout (or its end), which ends its output until the next input. `sending`: it
    /// was taken from `Sfu::sending`, which it is flagged as in again unless it is done.
    fn poll_peer(&mut self, pid: PeerId, sending: bool) -> Polled {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return Polled::Done;
        };
        if sending {
            peer.in_sending = false;
        }
        let output = peer.rtc.poll_output();
        if sending
            && matches!(
                output,
                Ok(str0m::Output::Transmit(_) | str0m::Output::Event(_))
            )
        {
            peer.in_sending = true;
        }
        match output {
            Ok(str0m::Output::Transmit(t)) => {
                self.stats.packets_out += 1;
                self.stats.bytes_out += t.contents.len() as u64;
                let transport = match t.proto {
                    Protocol::Tcp => Transport::Tcp,
                    _ => Transport::Udp,
                };
                return Polled::Transmit(Output::Transmit(Transmit {
                    transport,
                    source: t.source,
                    destination: t.destination,
                    contents: t.contents.into(),
                }));
            }
            Ok(str0m::Output::Timeout(t)) => {
                if peer.deadline != Some(t) {
                    if let Some(old) = peer.deadline.take() {
                        self.deadlines.remove(&(old, pid));
                    }
                    peer.deadline = Some(t);
                    self.deadlines.insert((t, pid));
                }
            }
            Ok(str0m::Output::Event(e)) => {
                self.events.push_back((pid, e));
                return Polled::Event;
            }
            Err(e) => {
                tracing::warn!(session = %peer.session, "peer failed: {e}");
                peer.rtc.disconnect();
            }
        }
        if !peer.rtc.is_alive() {
            // DTLS failed or was closed: an ICE restart cannot bring this connection back.
            // The participant leaves, and the client is told to join again (LiveKit's full
            // reconnect), not to give up.
            let session = peer.session;
            tracing::info!(%session, "peer connection closed");
            self.leave_with(
                session,
                Some(proto::DisconnectReason::ConnectionTimeout),
                proto::leave_request::Action::Reconnect,
            );
        }
        Polled::Done
    }

    fn handle_event(&mut self, now: Instant, pid: PeerId, event: Event) {
        match event {
            Event::MediaData(data) => self.forward(now, pid, *data),
            Event::KeyframeRequest(req) => {
                let Some(peer) = self.peers.get(&pid) else {
                    return;
                };
                let Some(sid) = peer.mids_out.get(&req.mid) else {
                    return;
                };
                // The simulcast layer it gets; a scalable track is one stream (its spatial
                // layers' names are ours, not rids the publisher knows).
                let scalable = self.tracks.get(sid).is_some_and(|t| t.svc);
                let rid = peer
                    .outs
                    .get(sid)
                    .and_then(|o| o.switcher.current())
                    .filter(|_| !scalable);
                let sid = sid.clone();
                self.request_keyframe(now, &sid, rid, req.kind);
            }
            Event::MediaAdded(added) => {
                self.media_added(pid, added.mid, added.kind, added.direction)
            }
            Event::Connected => {
                let Some(peer) = self.peers.get_mut(&pid) else {
                    return;
                };
                // Its tracks' frames go to it from now on, video from a key frame asked for now:
                // one asked for when an m-line opened may have come, and gone unsent, before.
                peer.media_up = true;
                let mut open = Vec::new();
                for (sid, out) in &peer.outs {
                    receivers_changed(&mut self.tracks, sid);
                    if matches!(out.state, OutState::Open(_)) {
                        open.push(sid.clone());
                    }
                }
                let session = peer.session;
                for sid in open {
                    self.key_frame_for_new_receiver(now, &sid);
                }
                // Media flows: the participant goes from JOINED to ACTIVE (livekit-client
                // raises ParticipantActive).
                let Some(p) = self.participants.get_mut(&session) else {
                    return;
                };
                if p.info.state != proto::participant_info::State::Joined as i32 {
                    return;
                }
                p.info.state = proto::participant_info::State::Active as i32;
                p.info.version += 1;
                let (info, room) = (p.info.clone(), p.room.clone());
                self.broadcast_participant(&room, &info, None);
            }
            Event::ChannelOpen(id, label) => {
                if let Some(peer) = self.peers.get_mut(&pid) {
                    peer.channels.insert(label.clone(), id);
                    peer.channel_labels.insert(id, label);
                }
            }
            Event::ChannelClose(id) => {
                if let Some(peer) = self.peers.get_mut(&pid)
                    && let Some(label) = peer.channel_labels.remove(&id)
                {
                    peer.channels.remove(&label);
                }
            }
            Event::ChannelData(data) => self.route_data(pid, data.id, &data.data),
            Event::IceConnectionStateChange(state) => {
                let Some(peer) = self.peers.get_mut(&pid) else {
                    return;
                };
                match state {
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        peer.ice_up = true;
                        let session = peer.session;
                        self.transport_back(session);
                    }
                    // After a pair was up, "disconnected" means every pair went 15 s
                    // without a check from the client. An ICE-lite server cannot restart
                    // ICE itself: the client is asked to resume, which restarts ICE on both
                    // connections (DTLS, streams and m-lines stay as they are).
                    IceConnectionState::Disconnected if peer.ice_up => {
                        peer.ice_up = false;
                        self.transport_lost(now, pid);
                    }
                    // Before that, it means that no candidate the client signalled pairs
                    // with the server's (Chromium may trickle its TCP candidates first): the
                    // client's first check makes a pair, and the state goes on from there.
                    // A client that never connects gives up and closes its signal
                    // connection (livekit-client after 15 s).
                    IceConnectionState::Disconnected => {
                        tracing::debug!(session = %peer.session, "no candidate pair yet");
                    }
                    _ => {}
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc {
                estimate,
                can_probe,
            }) => {
                let Some(peer) = self.peers.get_mut(&pid) else {
                    return;
                };
                let estimate = estimate.as_u64();
                tracing::trace!(session = %peer.session, estimate, can_probe, "bandwidth estimate");
                let fell = peer.estimate.is_some_and(|old| estimate < old);
                peer.estimate = Some(estimate);
                peer.ramp_since.get_or_insert(now);
                // A link that carries little more than the estimate the ramp probed from:
                // probing on for all that the tiles ask would only fill its queue. (A ramp
                // whose tiles ask for less than RAMP_GAIN times that has done its work once
                // the estimate reaches what they ask for.)
                if let Some((asked, from)) = peer.ramp_probe
                    && now.saturating_duration_since(asked) >= RAMP_VERDICT
                    && (estimate as f64) < (from as f64 * RAMP_GAIN).min(peer.ramp_demand as f64)
                {
                    peer.ramp_over = true;
                }
                if estimate >= peer.peak.0
                    || now.saturating_duration_since(peer.peak.1) > PEAK_WINDOW
                {
                    peer.peak = (estimate, now);
                }
                if fell {
                    let streak = peer
                        .last_fall
                        .is_some_and(|t| now.saturating_duration_since(t) < FALLING_WINDOW);
                    if !streak {
                        peer.probe_fall = peer
                            .probed_at
                            .is_some_and(|t| now.saturating_duration_since(t) < PROBE_BLAME);
                        if peer.probe_fall {
                            peer.probe_hold = (peer.probe_hold * 2).min(MAX_PROBE_HOLD);
                        }
                    }
                    peer.last_fall = Some(now);
                }
                // A big move, or the start of a fall, is acted on at once; small moves wait
                // for the tick.
                let moved = peer
                    .allocated_for
                    .is_none_or(|a| estimate < a / 100 * 85 || estimate > a / 100 * 115);
                if moved || (fell && peer.falling(now)) {
                    self.allocate(now, pid, None);
                }
            }
            Event::MediaEgressStats(s) => {
                let key = (pid, s.mid, s.rid);
                let total = s.nacks;
                let seen = self.nack_seen.insert(key, total).unwrap_or(0);
                self.stats.nacks += total.saturating_sub(seen);
            }
            Event::PeerStats(s) => {
                // The round trip of packets the transport-wide feedback acknowledged.
                let (Some(rtt), Some(peer)) = (s.rtt, self.peers.get_mut(&pid)) else {
                    return;
                };
                let grew = peer.rtt.is_some_and(|old| rtt > old);
                peer.rtt = Some(rtt);
                peer.rtt_min = Some(peer.rtt_min.map_or(rtt, |m| m.min(rtt)));
                let probed = peer
                    .probed_at
                    .is_some_and(|t| now.saturating_duration_since(t) < PROBE_BLAME);
                if grew && peer.queued() && !probed && peer.estimate.is_some() {
                    tracing::trace!(session = %peer.session, ?rtt, "queue growing");
                    peer.delayed_at = Some(now);
                    peer.last_fall = Some(now);
                    self.allocate(now, pid, None);
                }
            }
            _ => {}
        }
    }

    // ---- publishing ----

    #[allow(
        deprecated,
        reason = "livekit-client still reads simulcast, layers and stereo"
    )]
    fn add_track(&mut self, session: SessionId, request: proto::AddTrackRequest) {
        let Some(p) = self.participants.get_mut(&session) else {
            return;
        };
        let permission = p.info.permission.clone().unwrap_or_default();
        if !permission.can_publish
            || (!permission.can_publish_sources.is_empty()
                && !permission.can_publish_sources.contains(&request.source))
        {
            tracing::info!(%session, cid = %request.cid, "publish refused by permissions");
            return;
        }
        if p.pending.contains_key(&request.cid) {
            return;
        }
        let kind = proto::TrackType::try_from(request.r#type).unwrap_or(proto::TrackType::Audio);
        let mime_type = match kind {
            proto::TrackType::Video => {
                let codec = request
                    .simulcast_codecs
                    .iter()
                    .map(|c| c.codec.as_str())
                    .find(|c| !c.is_empty())
                    .unwrap_or("vp8");
                format!("video/{}", codec.to_ascii_lowercase())
            }
            _ => "audio/opus".to_string(),
        };
        let sid = self.ids.sid("TR_");
        let layers = request.layers.clone();
        let mut info = proto::TrackInfo {
            sid: sid.clone(),
            r#type: request.r#type,
            name: request.name.clone(),
            muted: request.muted,
            width: request.width,
            height: request.height,
            simulcast: layers.len() > 1,
            disable_dtx: request.disable_dtx,
            source: request.source,
            layers: layers.clone(),
            mime_type: mime_type.clone(),
            codecs: vec![proto::SimulcastCodecInfo {
                mime_type,
                cid: request.cid.clone(),
                layers,
                ..Default::default()
            }],
            stereo: request.stereo,
            disable_red: request.disable_red,
            stream: request.stream.clone(),
            encryption: request.encryption,
            audio_features: request.audio_features.clone(),
            backup_codec_policy: request.backup_codec_policy,
            ..Default::default()
        };
        // As LiveKit's server: the older booleans are also said as audio features.
        for (on, feature) in [
            (request.stereo, proto::AudioTrackFeature::TfStereo),
            (request.disable_dtx, proto::AudioTrackFeature::TfNoDtx),
        ] {
            if on && !info.audio_features.contains(&(feature as i32)) {
                info.audio_features.push(feature as i32);
            }
        }
        p.pending.insert(request.cid.clone(), sid.clone());
        let publisher = p.publisher;
        self.tracks.insert(
            sid.clone(),
            Track::new(self.track_keys.next(), info.clone(), session, None),
        );
        self.signal(
            session,
            proto::signal_response::Message::TrackPublished(proto::TrackPublishedResponse {
                cid: request.cid.clone(),
                track: Some(info),
            }),
        );
        // The offer may have come first.
        if let Some(pid) = publisher {
            self.bind_pending(pid);
        }
    }

    fn publisher_offer(&mut self, now: Instant, session: SessionId, sdp: &str, id: u32) {
        let Some(p) = self.participants.get(&session) else {
            return;
        };
        let pid = match p.publisher {
            Some(pid) => pid,
            None => {
                let pid = self.new_peer(now, session, PeerRole::Publisher);
                if let Some(p) = self.participants.get_mut(&session) {
                    p.publisher = Some(pid);
                }
                pid
            }
        };
        let single = self
            .peers
            .get(&pid)
            .is_some_and(|p| p.role == PeerRole::Both);
        let (text, assigned) = if single {
            self.plan_single_offer(pid, sdp)
        } else {
            (sdp.to_string(), Vec::new())
        };
        tracing::trace!(%session, offer = %text, "publisher offer");
        let offer = match SdpOffer::from_sdp_string(&text) {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(%session, "unparseable offer: {e}");
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        peer.sdp_applied += 1;
        let answer = match peer.rtc.sdp_api().accept_offer(offer) {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(%session, "offer refused: {e}");
                return;
            }
        };
        peer.msids = sdp_scan::msid_tracks(sdp);
        let mut mid_to_track_id = HashMap::new();
        if single {
            peer.known_mids
                .extend(sdp_scan::sections(&text).into_iter().filter_map(|s| s.mid));
            peer.awaiting_offer = false;
            peer.to_stop.clear();
            peer.alloc_outs = None;
            for (sid, mid) in &assigned {
                if let Some(out) = peer.outs.get_mut(sid) {
                    out.state = OutState::Open(*mid);
                }
                receivers_changed(&mut self.tracks, sid);
                peer.mids_out.insert(*mid, sid.clone());
                set_red_send(&mut peer.rtc, *mid, self.tracks.get(sid));
            }
            mid_to_track_id = peer
                .mids_out
                .iter()
                .map(|(mid, sid)| (mid.to_string(), sid.clone()))
                .collect();
        }
        // An ICE restart picks new local credentials.
        let creds = peer.rtc.direct_api().local_ice_credentials();
        if creds.ufrag != peer.ufrag {
            self.by_ufrag.remove(&peer.ufrag);
            peer.ufrag = creds.ufrag.clone();
            self.by_ufrag.insert(creds.ufrag, pid);
        }
        // The codec each published track asked for goes first in its m-line. For a microphone
        // that is RED unless the track was published with `disable_red` (libwebrtc sends RED
        // only when it comes before Opus in the answer), and the answer asks for DTX unless
        // `disable_dtx`, and for stereo if the track is, as LiveKit's does.
        let codecs: HashMap<String, sdp_scan::AnswerCodec> = peer
            .msids
            .iter()
            .filter_map(|(mid, track_id)| {
                let sid = peer
                    .mids_in
                    .get(&Mid::from(mid.as_str()))
                    .map(|t| &*t.sid)
                    .or_else(|| {
                        self.participants
                            .get(&session)
                            .and_then(|p| p.pending.get(track_id))
                            .map(String::as_str)
                    })?;
                let info = &self.tracks.get(sid)?.info;
                if info.r#type == proto::TrackType::Audio as i32 {
                    let first = if info.disable_red { "opus" } else { "red" };
                    let (no_dtx, stereo) = opus_wishes(info);
                    let edit = sdp_scan::AnswerCodec {
                        first: first.into(),
                        dtx: !no_dtx,
                        stereo,
                    };
                    return Some((mid.clone(), edit));
                }
                let mime = &info.mime_type;
                let codec = mime.strip_prefix("video/")?;
                let edit = sdp_scan::AnswerCodec {
                    first: codec.to_string(),
                    ..Default::default()
                };
                Some((mid.clone(), edit))
            })
            .collect();
        let answer = sdp_scan::prefer_codecs(&answer.to_sdp_string(), &codecs);
        tracing::trace!(%session, %answer, "publisher answer");
        self.signal(
            session,
            proto::signal_response::Message::Answer(proto::SessionDescription {
                r#type: "answer".into(),
                sdp: answer,
                id,
                mid_to_track_id,
            }),
        );
        self.mark(pid);
        self.unpublish_stopped(pid, sdp);
        // Before the connection is up, its `Event::Connected` asks.
        if self.peers.get(&pid).is_some_and(|p| p.media_up) {
            for (sid, _) in assigned {
                self.key_frame_for_new_receiver(now, &sid);
            }
        }
        self.bind_pending(pid);
        if single {
            // Subscriptions still without an m-line ask for more.
            self.negotiate_subscriber(session);
        }
    }

    /// Single peer connection: decides which of the client's receive m-lines carry which track.
    /// New recvonly m-lines get a waiting track of their kind (its msid written into the offer)
    /// or become inactive; known ones stay as they are unless their track went away.
    fn plan_single_offer(&self, pid: PeerId, sdp: &str) -> (String, Vec<(String, Mid)>) {
        let Some(peer) = self.peers.get(&pid) else {
            return (sdp.to_string(), Vec::new());
        };
        let mut wanted: Vec<(&String, MediaKind)> = peer
            .outs
            .iter()
            .filter(|(_, o)| o.state == OutState::Wanted)
            .filter_map(|(sid, _)| self.tracks.get(sid).map(|t| (sid, t.kind)))
            .collect();
        wanted.sort_by(|a, b| a.0.cmp(b.0));
        let mut plan = HashMap::new();
        let mut assigned = Vec::new();
        for section in sdp_scan::sections(sdp) {
            let Some(mid) = section.mid else {
                continue;
            };
            let kind = match section.kind.as_str() {
                "audio" => MediaKind::Audio,
                "video" => MediaKind::Video,
                _ => continue,
            };
            if section.direction.as_deref() != Some("recvonly") {
                continue;
            }
            let m = Mid::from(mid.as_str());
            if peer.known_mids.contains(&mid) {
                if !peer.mids_out.contains_key(&m) {
                    plan.insert(mid, sdp_scan::Rewrite::Inactive);
                }
                continue;
            }
            let Some(pos) = wanted.iter().position(|(_, k)| *k == kind) else {
                plan.insert(mid, sdp_scan::Rewrite::Inactive);
                continue;
            };
            let (sid, _) = wanted.remove(pos);
            let publisher =
                publisher_sid(&self.tracks, &self.participants, sid).unwrap_or_default();
            plan.insert(
                mid,
                sdp_scan::Rewrite::Msid {
                    stream: format!("{publisher}|{sid}"),
                    track: sid.clone(),
                },
            );
            assigned.push((sid.clone(), m));
        }
        (sdp_scan::rewrite(sdp, &plan), assigned)
    }

    /// A client unpublishes by no longer sending on the track's m-line (removeTrack makes it
    /// recvonly or inactive) and offering again: the track goes away for everyone.
    fn unpublish_stopped(&mut self, pid: PeerId, offer: &str) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let sending: HashSet<String> = sdp_scan::sections(offer)
            .into_iter()
            .filter(|s| matches!(s.direction.as_deref(), Some("sendonly" | "sendrecv")))
            .filter_map(|s| s.mid)
            .collect();
        let stopped: Vec<(Mid, String)> = peer
            .mids_in
            .iter()
            .filter(|(mid, _)| !sending.contains(&mid.to_string()))
            .map(|(mid, t)| (*mid, t.sid.to_string()))
            .collect();
        if stopped.is_empty() {
            return;
        }
        let session = peer.session;
        for (mid, _) in &stopped {
            peer.mids_in.remove(mid);
        }
        let Some(p) = self.participants.get(&session) else {
            return;
        };
        let room = p.room.clone();
        let room_info = self.rooms.get(&room).map(|r| r.info.clone());
        for (_, sid) in &stopped {
            if let Some(track) = self.remove_track(sid) {
                let participant = self.participants.get(&session).map(|p| p.info.clone());
                self.webhook(
                    "track_unpublished",
                    room_info.clone(),
                    participant,
                    Some(track.info),
                );
            }
        }
        let Some(p) = self.participants.get_mut(&session) else {
            return;
        };
        p.info.version += 1;
        let info = p.info.clone();
        self.broadcast_participant(&room, &info, None);
        // Subscribers drop the m-lines of the stopped tracks.
        let sessions: Vec<SessionId> = self.participants.keys().copied().collect();
        for s in sessions {
            self.negotiate_subscriber(s);
        }
    }

    fn media_added(&mut self, pid: PeerId, mid: Mid, kind: MediaKind, direction: Direction) {
        let Some(peer) = self.peers.get(&pid) else {
            return;
        };
        if peer.role == PeerRole::Subscriber || peer.mids_in.contains_key(&mid) {
            return;
        }
        // Only a line the client sends on publishes: a single peer connection's receive-only
        // lines come with the join, often right before the microphone's AddTrack, and are no
        // one's track.
        if !direction.is_receiving() || peer.mids_out.contains_key(&mid) {
            return;
        }
        // Without an msid match, take the only pending track of that kind.
        let session = peer.session;
        let Some(p) = self.participants.get(&session) else {
            return;
        };
        let candidates: Vec<(String, String)> = p
            .pending
            .iter()
            .filter(|(_, sid)| self.tracks.get(*sid).is_some_and(|t| t.kind == kind))
            .map(|(c, s)| (c.clone(), s.clone()))
            .collect();
        if let [(cid, sid)] = candidates.as_slice() {
            self.bind(pid, mid, cid, sid);
        }
    }

    /// Matches AddTrack requests to the m-lines of the publisher's offer by msid track id.
    fn bind_pending(&mut self, pid: PeerId) {
        let Some(peer) = self.peers.get(&pid) else {
            return;
        };
        let Some(p) = self.participants.get(&peer.session) else {
            return;
        };
        let mut matches: Vec<(Mid, String, String)> = peer
            .msids
            .iter()
            .filter_map(|(mid, track_id)| {
                p.pending
                    .get(track_id)
                    .map(|sid| (Mid::from(mid.as_str()), track_id.clone(), sid.clone()))
            })
            .collect();
        // In the offer's order (mids as browsers number them), not the map's: tracks bound
        // together are published, and listed to the others, in a repeatable order.
        matches.sort_by(|a, b| (a.0.len(), &*a.0).cmp(&(b.0.len(), &*b.0)));
        for (mid, cid, sid) in matches {
            self.bind(pid, mid, &cid, &sid);
        }
    }

    fn bind(&mut self, pid: PeerId, mid: Mid, cid: &str, sid: &str) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        peer.mids_in.insert(
            mid,
            InTrack {
                sid: Arc::from(sid),
                key: 0,
                at: usize::MAX,
            },
        );
        let session = peer.session;
        let Some(track) = self.tracks.get_mut(sid) else {
            return;
        };
        track.peer = Some(pid);
        track.mid = Some(mid);
        track.info.mid = mid.to_string();
        let info = track.info.clone();
        let Some(p) = self.participants.get_mut(&session) else {
            return;
        };
        p.pending.remove(cid);
        p.info.tracks.push(info);
        p.info.is_publisher = true;
        p.info.version += 1;
        let pinfo = p.info.clone();
        let room = p.room.clone();
        let room_info = self.rooms.get_mut(&room).map(|r| {
            r.counts_changed = true;
            r.info.clone()
        });
        let track_info = pinfo.tracks.iter().find(|t| t.sid == sid).cloned();
        self.webhook(
            "track_published",
            room_info,
            Some(pinfo.clone()),
            track_info,
        );
        self.broadcast_participant(&room, &pinfo, None);
        self.auto_subscribe(&room, session, &[sid.to_string()]);
    }

    /// Subscribes every member of `room` that subscribes automatically (not `publisher`, and
    /// not mirrors, which never do) to tracks `sids`, and negotiates.
    fn auto_subscribe(&mut self, room: &str, publisher: SessionId, sids: &[String]) {
        if sids.is_empty() {
            return;
        }
        let members: Vec<SessionId> = self
            .rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for s in members {
            if s == publisher {
                continue;
            }
            let auto = self.participants.get(&s).is_some_and(|p| {
                p.auto_subscribe && p.info.permission.as_ref().is_some_and(|x| x.can_subscribe)
            });
            if auto {
                for sid in sids {
                    self.subscribe(s, sid);
                }
                self.negotiate_subscriber(s);
            }
        }
    }

    fn mute(&mut self, session: SessionId, track_sid: &str, muted: bool) {
        let Some(track) = self.tracks.get_mut(track_sid) else {
            return;
        };
        if track.publisher != session || track.info.muted == muted {
            return;
        }
        track.info.muted = muted;
        let Some(p) = self.participants.get_mut(&session) else {
            return;
        };
        for t in p.info.tracks.iter_mut().filter(|t| t.sid == track_sid) {
            t.muted = muted;
        }
        p.info.version += 1;
        let info = p.info.clone();
        let room = p.room.clone();
        self.broadcast_participant(&room, &info, None);
    }

    /// Unpublishes a track: its subscribers stop receiving it. Returns it.
    fn remove_track(&mut self, sid: &str) -> Option<Track> {
        let (at, _, mut track) = self.tracks.swap_remove_full(sid)?;
        // The last track took its place: its `Out`s learn the new place at its next
        // receivers pass (until then allocation finds it by sid).
        if let Some((_, moved)) = self.tracks.get_index_mut(at) {
            moved.receivers_stale = true;
        }
        if track.remote.is_some() {
            self.away.tracks -= 1;
        }
        for pid in std::mem::take(&mut track.subscribers) {
            if let Some(peer) = self.peers.get_mut(&pid) {
                peer.remove_out(sid);
            }
        }
        if let Some(p) = self.participants.get_mut(&track.publisher) {
            p.info.tracks.retain(|t| t.sid != sid);
        }
        Some(track)
    }

    // ---- subscribing ----

    fn subscribe(&mut self, session: SessionId, track_sid: &str) {
        let Some(track) = self.tracks.get(track_sid) else {
            return;
        };
        if track.publisher == session || !track.published() {
            return;
        }
        let Some(pid) = self.participants.get(&session).and_then(|p| p.subscriber) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if peer.outs.contains_key(track_sid) {
            return;
        }
        peer.outs.insert(track_sid.to_string(), Out::new());
        peer.alloc_outs = None;
        peer.needs_offer = true;
        if let Some(track) = self.tracks.get_mut(track_sid) {
            track.subscribers.push(pid);
            track.changed();
            // A mirror's first subscriber here: its worker starts relaying now (the next
            // dynacast pass tells it the quality wanted).
            if let Some(worker) = track.remote
                && !track.relayed.is_some_and(|(on, _)| on)
            {
                track.relayed = Some((true, None));
                let relay = Relay::Wants {
                    track: track_sid.to_string(),
                    subscribed: true,
                    quality: None,
                };
                self.push_relay(worker, relay);
            }
        }
    }

    fn unsubscribe(&mut self, session: SessionId, track_sid: &str) {
        let Some(pid) = self.participants.get(&session).and_then(|p| p.subscriber) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        peer.remove_out(track_sid);
        if let Some(track) = self.tracks.get_mut(track_sid) {
            track.subscribers.retain(|p| *p != pid);
            track.changed();
        }
    }

    /// Sends a new subscriber offer if the m-lines must change and no offer is outstanding.
    fn negotiate_subscriber(&mut self, session: SessionId) {
        let Some(pid) = self.participants.get(&session).and_then(|p| p.subscriber) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        // Nothing to offer yet, or an offer (request) already out: its answer comes back here.
        let out = match peer.role {
            PeerRole::Both => peer.awaiting_offer,
            _ => peer.pending_offer.is_some(),
        };
        if out || !peer.needs_offer || peer.offer_due.is_some() {
            return;
        }
        if let Some(due) = peer
            .last_offer
            .map(|t| t + NEGOTIATION_INTERVAL)
            .filter(|&t| t > self.now)
        {
            peer.offer_due = Some(due);
            self.offers_due.insert((due, pid));
            return;
        }
        if peer.role == PeerRole::Both {
            // The client offers; ask it for the m-lines this needs (0/0 just asks for an
            // offer, which lets m-lines of removed tracks go inactive).
            peer.needs_offer = false;
            let (mut num_audios, mut num_videos) = (0, 0);
            for (sid, out) in &peer.outs {
                if out.state != OutState::Wanted {
                    continue;
                }
                match self.tracks.get(sid).map(|t| t.kind) {
                    Some(MediaKind::Audio) => num_audios += 1,
                    Some(MediaKind::Video) => num_videos += 1,
                    None => {}
                }
            }
            if num_audios == 0 && num_videos == 0 && peer.to_stop.is_empty() {
                return;
            }
            peer.awaiting_offer = true;
            peer.last_offer = Some(self.now);
            let requirement = proto::MediaSectionsRequirement {
                num_audios,
                num_videos,
            };
            self.signal(
                session,
                proto::signal_response::Message::MediaSectionsRequirement(requirement),
            );
            return;
        }
        // The offer lists every m-line of the connection: past this call's budget (unless it is
        // the call's first), it waits for the next call, and so does every later one.
        let mlines = peer.mids_out.len().max(peer.outs.len()).max(1);
        if mlines > self.offer_budget && self.offer_budget < OFFER_MLINES_PER_CALL {
            self.offer_budget = 0;
            peer.offer_due = Some(self.now);
            self.offers_due.insert((self.now, pid));
            self.stats.offers_deferred += 1;
            return;
        }
        self.offer_budget = self.offer_budget.saturating_sub(mlines);
        peer.needs_offer = false;
        let publisher_of = |sid: &str| publisher_sid(&self.tracks, &self.participants, sid);
        let mut api = peer.rtc.sdp_api();
        if std::mem::take(&mut peer.add_channels) {
            for (label, reliability, ordered) in [
                (RELIABLE, Reliability::Reliable, true),
                (LOSSY, Reliability::MaxRetransmits { retransmits: 0 }, false),
            ] {
                let id = api.add_channel_with_config(ChannelConfig {
                    label: label.to_string(),
                    ordered,
                    reliability,
                    ..Default::default()
                });
                peer.channels.insert(label.to_string(), id);
                peer.channel_labels.insert(id, label.to_string());
            }
        }
        for mid in peer.to_stop.drain(..) {
            api.stop_media(mid);
        }
        let restarted = std::mem::take(&mut peer.ice_restart).then(|| api.ice_restart(true));
        let mut added = Vec::new();
        for (sid, out) in peer.outs.iter() {
            if out.state != OutState::Wanted {
                continue;
            }
            let (Some(track), Some(publisher)) = (self.tracks.get(sid), publisher_of(sid)) else {
                continue;
            };
            let mid = api.add_media(
                track.kind,
                Direction::SendOnly,
                Some(format!("{publisher}|{sid}")),
                Some(sid.clone()),
                None,
            );
            added.push((sid.clone(), mid));
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        for (sid, mid) in added {
            if let Some(out) = peer.outs.get_mut(&sid) {
                out.state = OutState::Negotiating(mid);
            }
            peer.mids_out.insert(mid, sid);
        }
        peer.pending_offer = Some(pending);
        peer.offers_sent += 1;
        self.stats.subscriber_offers += 1;
        peer.last_offer = Some(self.now);
        if let Some(creds) = restarted {
            // The client's new checks use the new username fragment.
            self.by_ufrag.remove(&peer.ufrag);
            peer.ufrag = creds.ufrag.clone();
            self.by_ufrag.insert(creds.ufrag, pid);
        }
        let id = peer.offers_sent;
        let sdp = offer.to_sdp_string();
        peer.pending_offer_sdp = Some(sdp.clone());
        self.signal(
            session,
            proto::signal_response::Message::Offer(proto::SessionDescription {
                r#type: "offer".into(),
                sdp,
                id,
                ..Default::default()
            }),
        );
        self.mark(pid);
    }

    fn subscriber_answer(
        &mut self,
        now: Instant,
        session: SessionId,
        answer: Result<SdpAnswer, String>,
    ) {
        let Some(pid) = self.participants.get(&session).and_then(|p| p.subscriber) else {
            return;
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(%session, "unparseable answer: {e}");
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let Some(pending) = peer.pending_offer.take() else {
            tracing::info!(%session, "answer without an offer");
            return;
        };
        peer.pending_offer_sdp = None;
        peer.resync_until = None;
        peer.sdp_applied += 1;
        if let Err(e) = peer.rtc.sdp_api().accept_answer(pending, answer) {
            tracing::info!(%session, "answer refused: {e}");
            return;
        }
        let mut opened = Vec::new();
        peer.alloc_outs = None;
        for (sid, out) in peer.outs.iter_mut() {
            if let OutState::Negotiating(mid) = out.state {
                out.state = OutState::Open(mid);
                set_red_send(&mut peer.rtc, mid, self.tracks.get(sid));
                receivers_changed(&mut self.tracks, sid);
                opened.push(sid.clone());
            }
        }
        self.mark(pid);
        // Before the connection is up, its `Event::Connected` asks.
        if self.peers.get(&pid).is_some_and(|p| p.media_up) {
            for sid in opened {
                self.key_frame_for_new_receiver(now, &sid);
            }
        }
        // Changes that arrived while the offer was out.
        self.negotiate_subscriber(session);
    }

    fn trickle(&mut self, session: SessionId, candidate_init: &str, target: i32) {
        let Some(p) = self.participants.get(&session) else {
            return;
        };
        let pid = if target == proto::SignalTarget::Subscriber as i32 {
            p.subscriber
        } else {
            p.publisher
        };
        let Some(pid) = pid else {
            return;
        };
        let Some(candidate) = candidate_from_init(candidate_init) else {
            return;
        };
        let Ok(candidate) = Candidate::from_sdp_string(&candidate) else {
            return;
        };
        if let Some(peer) = self.peers.get_mut(&pid) {
            peer.rtc.add_remote_candidate(candidate);
            self.mark(pid);
        }
    }

    // ---- forwarding ----

    fn forward(&mut self, now: Instant, pid: PeerId, data: MediaData) {
        let Some(bound) = self
            .peers
            .get_mut(&pid)
            .and_then(|p| p.mids_in.get_mut(&data.mid))
        else {
            return;
        };
        // The track where the m-line's last frame found it, else by sid (once, and again
        // after a track removed moved it).
        let at = match self.tracks.get_index(bound.at) {
            Some((_, track)) if track.key == bound.key => bound.at,
            _ => {
                let Some((at, _, track)) = self.tracks.get_full(&*bound.sid) else {
                    return;
                };
                bound.at = at;
                bound.key = track.key;
                at
            }
        };
        let sid = Arc::clone(&bound.sid);
        self.forward_track(now, sid, Some(at), data);
    }

    /// Forwards a frame of track `sid` (at place `at` in `tracks`, when known): published
    /// here, or relayed by its worker.
    fn forward_track(&mut self, now: Instant, sid: Arc<str>, at: Option<usize>, data: MediaData) {
        let found = match at {
            Some(at) => self.tracks.get_index_mut(at).map(|(_, track)| (at, track)),
            None => self
                .tracks
                .get_full_mut(&*sid)
                .map(|(at, _, track)| (at, track)),
        };
        let Some((at, track)) = found else {
            return;
        };
        // The other workers with subscribers of it get every frame (their subscribers' layers
        // are chosen there), before any is held back here.
        for &(worker, _) in &track.relays {
            self.stats.relays_out += 1;
            self.out.push_back(Output::Relay {
                to: worker,
                relay: Box::new(Relay::Media {
                    track: sid.clone(),
                    data: data.clone(),
                }),
            });
        }
        let params = Some((data.params.pt(), data.params.spec()));
        if track.params.0 != params {
            track.params = (params, track.params.1.wrapping_add(1));
        }
        let params_seen = track.params.1;
        // A relayed track's recording and speech are its own worker's.
        let local = track.remote.is_none();
        let video = track.kind == MediaKind::Video;
        // A scalable track is known by its first frame with more than one spatial layer, or,
        // for a single encoding whose publisher announced several layers (livekit-client's
        // SVC), by its first frame with layer information.
        let spatial = if video {
            let spatial = svc::Spatial::of(&data);
            if !track.svc
                && spatial.is_some_and(|s| {
                    s.layers() > 1 || (data.rid.is_none() && track.published_layers().len() > 1)
                })
            {
                track.svc = true;
                track.layers = Layers::default();
            }
            track
                .svc
                .then(|| spatial.unwrap_or_else(|| svc::Spatial::whole(data.data.len())))
        } else {
            None
        };
        match spatial {
            Some(spatial) => {
                for i in 0..spatial.layers() {
                    track.layers.frame(svc::rid(i), now);
                }
            }
            None => {
                if let Some(rid) = data.rid {
                    track.layers.frame(rid, now);
                }
            }
        }
        // Its temporal layer, counted per spatial rank (a scalable track's frames, which carry
        // every spatial layer, on rank 0), and the highest one flowing: with only layer 0,
        // every frame goes to everyone without looking further.
        let tframe = video.then(|| temporal::Frame::of(&data));
        let trank = match (spatial, data.rid) {
            (None, Some(rid)) => track.layers.rank(&rid),
            _ => 0,
        };
        if let Some(f) = tframe {
            track.temporal.frame(trank, f.tid, now);
        }
        let ttop = track.temporal.top(now);
        // Layer rates feed only the receive budget. A spatial layer's rate is what a
        // subscriber of it gets: that layer and those below.
        if self.config.bwe_initial_kbps > 0 {
            let base = tframe.is_some_and(|f| f.tid == 0);
            match spatial {
                Some(spatial) => {
                    for i in 0..spatial.layers() {
                        track.meter(Some(svc::rid(i)), spatial.size(i), base, now);
                    }
                }
                None => track.meter(data.rid, data.data.len(), base, now),
            }
        }
        let key = data.is_keyframe();
        // The recorder decodes one packet per picture: a scalable track's frames go to it cut
        // to the layer its tile needs, switching up at key frames as a subscriber's do.
        let mut record_key = false;
        let recorded = local
            && self.record_tap.is_some()
            && self
                .participants
                .get(&track.publisher)
                .is_some_and(|p| self.rooms.get(&p.room).is_some_and(|r| r.recorders > 0));
        if track.svc && !recorded {
            // A later recording starts on a key frame, with a decoder of its own.
            track.record_switch.pause();
        }
        if recorded
            && let Some(tap) = self.record_tap.as_mut()
            && let Some(p) = self.participants.get(&track.publisher)
            && let Some(record_data) = match spatial {
                Some(spatial) => {
                    let target = track
                        .layers
                        .choose(track.record_quality.unwrap_or(2), now)
                        .map(|r| svc::layer(&r));
                    let (forward, want_key) = track.record_switch.spatial_frame(
                        spatial.layers(),
                        target,
                        key,
                        data.time,
                        now,
                    );
                    record_key = want_key;
                    forward.map(|(k, _)| spatial.for_decoder(&data.data, k))
                }
                None => Some(data.data.clone()),
            }
        {
            let clock = data.params.spec().clock_rate;
            let codec = match data.params.spec().codec {
                str0m::format::Codec::Opus => "opus",
                str0m::format::Codec::Vp8 => "VP8",
                str0m::format::Codec::Vp9 => "VP9",
                str0m::format::Codec::H264 => "H264",
                str0m::format::Codec::Av1 => "AV1",
                _ => "",
            };
            tap.frame(RecordFrame {
                room: p.room.clone(),
                participant_sid: p.info.sid.clone(),
                identity: p.info.identity.clone(),
                name: p.info.name.clone(),
                joined_at_ms: p.info.joined_at_ms,
                track_sid: sid.to_string(),
                video,
                screen_share: track.info.source == proto::TrackSource::ScreenShare as i32,
                codec,
                layer: data.rid.map(|r| track.layers.rank(&r)),
                keyframe: data.is_keyframe(),
                contiguous: data.contiguous,
                rtp_time: data.time.rebase(clock).numer(),
                clock_rate: clock.get(),
                arrival: data.network_time,
                sender_report: data
                    .last_sender_info
                    .map(|i| (i.ntp_time, i.rtp_time.rebase(clock).numer())),
                data: record_data,
            });
        }
        if track.kind == MediaKind::Audio
            && local
            && let Some(tap) = self.audio_tap.as_mut()
            && data.params.spec().codec == str0m::format::Codec::Opus
            && let Some(p) = self.participants.get(&track.publisher)
            && let Some(room) = self.rooms.get(&p.room).filter(|r| r.speech)
        {
            tap.frame(AudioFrame {
                room: p.room.clone(),
                room_sid: room.info.sid.clone(),
                languages: room.languages.clone(),
                participant_sid: p.info.sid.clone(),
                identity: p.info.identity.clone(),
                name: p.info.name.clone(),
                track_sid: sid.to_string(),
                rtp_time: data
                    .time
                    .rebase(str0m::media::Frequency::FORTY_EIGHT_KHZ)
                    .numer(),
                data: data.data.clone(),
            });
        }
        if track.kind == MediaKind::Audio
            && let Some(level) = data.ext_vals.audio_level
            && let Some(p) = self.participants.get(&track.publisher)
            && let Some(room) = self.rooms.get_mut(&p.room)
        {
            // Looked up before inserting: an entry by key would copy the sid for each frame.
            if !room.loudness.contains_key(&p.info.sid) {
                room.loudness
                    .insert(p.info.sid.clone(), Loudness::default());
            }
            let Some(loudness) = room.loudness.get_mut(&p.info.sid) else {
                return;
            };
            loudness.observe(level, now);
            // Loudest-N: O(1) per frame, the set is recomputed on the speaker tick.
            if self.config.loudest_audio > 0
                && !loudness.active(now)
                && !room.loudest.contains(&p.info.sid)
            {
                self.stats.audio_gated += 1;
                return;
            }
        }
        let contiguous = data.contiguous;
        let mut key_frames_wanted: Vec<Option<Rid>> = Vec::new();
        if record_key {
            key_frames_wanted.push(data.rid);
        }
        // A scalable frame cut down to each spatial layer, made once for all who get it.
        let mut cuts: [Option<Arc<[u8]>>; svc::MAX_SPATIAL] = Default::default();
        // The flowing layer each quality gets, worked out once per frame for all subscribers
        // (`Layers::choose` is the same for each of them).
        let mut chosen: [Option<Option<Rid>>; 3] = [None; 3];
        // Disjoint borrows of the maps the loop reads and writes, so the track stays borrowed.
        let Self {
            peers,
            participants,
            stats,
            sending,
            ..
        } = self;
        if track.receivers_stale {
            track.receivers(at, &sid, peers, participants);
        }
        let track = &*track;
        let mut places_moved = false;
        let receivers = &track.receivers;
        for (i, &(sub, place)) in receivers.iter().enumerate() {
            if cfg!(target_arch = "x86_64") {
                prefetch_receivers(peers, receivers, i);
            }
            let written = {
                let Some(peer) = peers.get_mut(&sub) else {
                    continue;
                };
                // Its `Out` at the place the receivers pass found it, without the hashing and
                // the cold key bytes of a lookup by sid; by sid if it moved since (and the
                // places are worked out again before the next frame).
                let moved = peer
                    .outs
                    .get_index(place)
                    .is_none_or(|(_, out)| out.track != track.key);
                let out = if moved {
                    places_moved = true;
                    peer.outs.get_mut(&*sid)
                } else {
                    peer.outs.get_index_mut(place).map(|(_, out)| out)
                };
                let Some(out) = out else {
                    continue;
                };
                let OutState::Open(mid) = out.state else {
                    continue;
                };
                // The layer this subscriber should get, for a track with layers (simulcast, or
                // scalable with `svc::rid` names): what it asks for, within its bandwidth, among
                // those flowing.
                let target = (spatial.is_some() || data.rid.is_some()).then(|| {
                    out.wanted
                        .and_then(|q| out.cap.map(|c| q.min(c)))
                        .and_then(|q| {
                            *chosen[usize::from(q.min(2))]
                                .get_or_insert_with(|| track.layers.choose(q, now))
                        })
                });
                let mut layer = None;
                let time = match (spatial, data.rid, target) {
                    (Some(spatial), _, Some(target)) => {
                        let (forward, want_key) = out.switcher.spatial_frame(
                            spatial.layers(),
                            target.map(|r| svc::layer(&r)),
                            key,
                            data.time,
                            now,
                        );
                        if want_key && !key_frames_wanted.contains(&data.rid) {
                            key_frames_wanted.push(data.rid);
                        }
                        let Some((k, time)) = forward else {
                            continue;
                        };
                        layer = Some(k);
                        time
                    }
                    (None, Some(rid), Some(target)) => {
                        match out.switcher.frame(rid, target, key, data.time, now) {
                            Decision::Forward(time) => time,
                            Decision::Drop => continue,
                            Decision::NeedKeyFrame(rid) => {
                                if !key_frames_wanted.contains(&Some(rid)) {
                                    key_frames_wanted.push(Some(rid));
                                }
                                continue;
                            }
                        }
                    }
                    _ if video => {
                        // Without simulcast: starting or resuming at a key frame (a paused
                        // subscriber is not among the receivers).
                        if out.key_wait {
                            if !key {
                                if !key_frames_wanted.contains(&None) {
                                    key_frames_wanted.push(None);
                                }
                                continue;
                            }
                            out.key_wait = false;
                        }
                        data.time
                    }
                    _ => data.time,
                };
                // Its frame rate: the fewest temporal layers that give what it asked for
                // (`UpdateTrackSettings.fps`), else all, and no more than its bandwidth allows.
                if ttop > 0
                    && let Some(f) = tframe
                {
                    let target = match out.fps {
                        1.. => track.temporal.for_fps(trank, out.fps, now),
                        0 => ttop,
                    };
                    let target = target.min(out.temporal_cap.unwrap_or(u8::MAX));
                    if !out.temporal.forward(f, target) {
                        continue;
                    }
                }
                // str0m sends pending frames in wallclock order, and a frame's network time is
                // when its first packet came: at a layer switch the new layer's key frame may
                // have started arriving before the old layer's last frame, and must not overtake
                // it. The wallclock written only moves forward.
                let wallclock = data
                    .network_time
                    .max(out.wallclock.unwrap_or(data.network_time));
                out.wallclock = Some(wallclock);
                let Some(writer) = peer.rtc.writer_hinted(mid, &mut out.media_hint) else {
                    continue;
                };
                let pt = match out.pt {
                    Some((applied, seen, pt))
                        if applied == peer.sdp_applied && seen == params_seen =>
                    {
                        pt
                    }
                    _ => {
                        let Some(pt) = writer.match_params(data.params) else {
                            continue;
                        };
                        out.pt = Some((peer.sdp_applied, params_seen, pt));
                        pt
                    }
                };
                let payload = match layer {
                    Some(k) => cuts[usize::from(k)]
                        .get_or_insert_with(|| {
                            spatial.map_or_else(|| data.data.clone(), |s| s.cut(&data.data, k))
                        })
                        .clone(),
                    None => data.data.clone(),
                };
                // A picture with nothing of the subscriber's layers (an AV1 temporal unit
                // without a base layer frame) is not a frame to send: an empty one would be
                // a corrupt frame for the decoder.
                if payload.is_empty() {
                    continue;
                }
                // Packetized at once (str0m patch 13): the packets go out on this peer's
                // next poll, without a timeout of their own. A write brings no events, so
                // the receiver goes straight to the peers `poll_output` takes datagrams from,
                // not through a drain: its datagrams (of this frame and of any others written
                // to it before the caller polls) are then sealed one after the other, its
                // connection's state read once for all of them, where a drain sealed the
                // first of them and left the rest for a second visit after every other
                // receiver's first.
                match writer.now(now).write(pt, wallclock, time, payload) {
                    Ok(()) => {
                        if !peer.in_sending {
                            peer.in_sending = true;
                            sending.push_back(sub);
                        }
                        true
                    }
                    Err(e) => {
                        tracing::debug!("write to subscriber failed: {e}");
                        false
                    }
                }
            };
            if written {
                stats.frames_forwarded += 1;
            }
        }
        if places_moved {
            receivers_changed(&mut self.tracks, &sid);
        }
        for rid in key_frames_wanted {
            self.request_keyframe(now, &sid, rid, KeyframeRequestKind::Pli);
        }
        if !contiguous
            && self
                .tracks
                .get(&*sid)
                .is_some_and(|t| t.kind == MediaKind::Video)
        {
            self.request_keyframe(now, &sid, data.rid, KeyframeRequestKind::Fir);
        }
    }

    /// A new receiver needs a key frame to start decoding: asked for at once, whenever the
    /// last request for the track went.
    fn key_frame_for_new_receiver(&mut self, now: Instant, sid: &str) {
        if let Some(track) = self.tracks.get_mut(sid) {
            track.last_keyframe_request.clear();
        }
        self.request_keyframe(now, sid, None, KeyframeRequestKind::Pli);
    }

    fn request_keyframe(
        &mut self,
        now: Instant,
        sid: &str,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
    ) {
        let Some(track) = self.tracks.get_mut(sid) else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        if track
            .last_keyframe_request
            .get(&rid)
            .is_some_and(|t| now.saturating_duration_since(*t) < KEYFRAME_REQUEST_INTERVAL)
        {
            return;
        }
        if let Some(worker) = track.remote {
            track.last_keyframe_request.insert(rid, now);
            let track = sid.to_string();
            self.push_relay(worker, Relay::Keyframe { track, rid, kind });
            return;
        }
        let (Some(pid), Some(mid)) = (track.peer, track.mid) else {
            return;
        };
        track.last_keyframe_request.insert(rid, now);
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let Some(mut writer) = peer.rtc.writer(mid) else {
            return;
        };
        if writer.request_keyframe(rid, kind).is_ok() {
            self.stats.keyframe_requests += 1;
            self.mark(pid);
        }
    }

    // ---- data ----

    #[allow(
        deprecated,
        reason = "clients before protocol 10 read kind and the user sender"
    )]
    fn route_data(&mut self, pid: PeerId, channel: ChannelId, bytes: &[u8]) {
        let Some(peer) = self.peers.get(&pid) else {
            return;
        };
        let label = peer
            .channel_labels
            .get(&channel)
            .cloned()
            .unwrap_or_else(|| RELIABLE.to_string());
        let session = peer.session;
        let Some(sender) = self.participants.get(&session) else {
            return;
        };
        let allowed = sender
            .info
            .permission
            .as_ref()
            .is_some_and(|p| p.can_publish_data);
        let Ok(mut packet) = proto::DataPacket::decode(bytes) else {
            self.stats.data_dropped += 1;
            return;
        };
        if !allowed || packet.value.is_none() {
            self.stats.data_dropped += 1;
            return;
        }
        packet.participant_sid = sender.info.sid.clone();
        packet.participant_identity = sender.info.identity.clone();
        let kind = if label == LOSSY {
            proto::data_packet::Kind::Lossy
        } else {
            proto::data_packet::Kind::Reliable
        };
        packet.kind = kind as i32;
        let mut destinations = std::mem::take(&mut packet.destination_identities);
        if let Some(proto::data_packet::Value::User(user)) = packet.value.as_mut() {
            user.participant_sid = sender.info.sid.clone();
            user.participant_identity = sender.info.identity.clone();
            // livekit-client puts the destinations of publishData in the user packet.
            destinations.append(&mut user.destination_identities);
        }
        let room = sender.room.clone();
        let encoded = packet.encode_to_vec();
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        let span = self
            .rooms
            .get(&room)
            .map(|r| r.span.clone())
            .unwrap_or_default();
        {
            for worker in span {
                let relay = Relay::Data {
                    room: room.clone(),
                    sender: session,
                    kind,
                    destinations: destinations.clone(),
                    encoded: encoded.clone(),
                };
                self.push_relay(worker, relay);
            }
        }
        let wanted: HashSet<&str> = destinations.iter().map(String::as_str).collect();
        let recipients: Vec<SessionId> = members
            .into_iter()
            .filter(|s| *s != session)
            .filter(|s| {
                self.participants
                    .get(s)
                    .is_some_and(|p| wanted.is_empty() || wanted.contains(p.info.identity.as_str()))
            })
            .collect();
        self.deliver_data(&recipients, kind, &encoded);
    }

    /// Writes an encoded DataPacket to each recipient's channel of that kind.
    fn deliver_data(
        &mut self,
        recipients: &[SessionId],
        kind: proto::data_packet::Kind,
        encoded: &[u8],
    ) {
        let label = if kind == proto::data_packet::Kind::Lossy {
            LOSSY
        } else {
            RELIABLE
        };
        for s in recipients {
            let Some(sub) = self.participants.get(s).and_then(|p| p.subscriber) else {
                continue;
            };
            let Some(peer) = self.peers.get_mut(&sub) else {
                continue;
            };
            let Some(id) = peer.channels.get(label).copied() else {
                self.stats.data_dropped += 1;
                continue;
            };
            match peer.rtc.channel(id).map(|mut c| c.write(true, encoded)) {
                Some(Ok(true)) => {
                    self.stats.data_packets += 1;
                    self.mark(sub);
                }
                _ => self.stats.data_dropped += 1,
            }
        }
    }

    // ---- participants and speakers ----

    fn update_metadata(&mut self, session: SessionId, request: proto::UpdateParticipantMetadata) {
        let Some(p) = self.participants.get_mut(&session) else {
            return;
        };
        let allowed = p
            .info
            .permission
            .as_ref()
            .is_some_and(|x| x.can_update_metadata);
        if !allowed {
            tracing::info!(%session, "metadata update refused by permissions");
            return;
        }
        if !request.name.is_empty() {
            p.info.name = request.name;
        }
        if !request.metadata.is_empty() {
            p.info.metadata = request.metadata;
        }
        for (k, v) in request.attributes {
            // LiveKit: an empty value deletes the attribute.
            if v.is_empty() {
                p.info.attributes.remove(&k);
            } else {
                p.info.attributes.insert(k, v);
            }
        }
        p.info.version += 1;
        let info = p.info.clone();
        let room = p.room.clone();
        self.broadcast_participant(&room, &info, None);
    }

    /// Sends a participant's new state to the room (`except` excluded).
    fn broadcast_participant(
        &mut self,
        room: &str,
        info: &proto::ParticipantInfo,
        except: Option<SessionId>,
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let members: Vec<SessionId> = r
            .members
            .iter()
            .copied()
            .filter(|s| Some(*s) != except)
            .collect();
        // The other workers of the room hear of changes to participants of this one.
        if !r.span.is_empty()
            && let Some((session, _)) = r
                .members
                .iter()
                .filter_map(|s| self.participants.get(s).map(|p| (*s, p)))
                .find(|(_, p)| p.info.sid == info.sid && p.remote.is_none())
        {
            self.relay_participant(room, session, info, false, None);
        }
        for s in members {
            let update = proto::ParticipantUpdate {
                participants: vec![info.clone()],
            };
            self.signal(s, proto::signal_response::Message::Update(update));
        }
    }

    fn new_room(&mut self, now: Instant, name: &str, unix_ms: i64) -> Room {
        let home = self.is_home(name);
        let room = Room {
            info: proto::Room {
                // Away from its home worker the room's sid is the home's, not known yet: an
                // empty sid, which livekit-client waits out until the RoomUpdate that brings
                // it (`relay.rs`).
                sid: if home {
                    self.ids.sid("RM_")
                } else {
                    String::new()
                },
                name: name.to_string(),
                empty_timeout: DEFAULT_EMPTY_TIMEOUT_S,
                departure_timeout: DEFAULT_DEPARTURE_TIMEOUT_S,
                creation_time: unix_ms / 1000,
                creation_time_ms: unix_ms,
                ..Default::default()
            },
            members: Vec::new(),
            loudness: FastMap::default(),
            loudest: FastSet::default(),
            counts_changed: false,
            empty_since: Some(now),
            ever_joined: false,
            speech: self.config.speech_all_rooms,
            languages: None,
            recorders: 0,
            span: Vec::new(),
            created: now,
        };
        // A room spanning workers is announced once, by its home worker.
        if home {
            self.webhook("room_started", Some(room.info.clone()), None, None);
        }
        room
    }

    fn webhook(
        &mut self,
        event: &str,
        room: Option<proto::Room>,
        participant: Option<proto::ParticipantInfo>,
        track: Option<proto::TrackInfo>,
    ) {
        self.out
            .push_back(Output::Webhook(Box::new(proto::WebhookEvent {
                event: event.to_string(),
                room,
                participant,
                track,
                ..Default::default()
            })));
    }

    fn signal(&mut self, session: SessionId, message: proto::signal_response::Message) {
        // A mirror's messages are its own worker's to send.
        if self.config.workers > 1
            && self
                .participants
                .get(&session)
                .is_some_and(|p| p.remote.is_some())
        {
            return;
        }
        self.out
            .push_back(Output::Signal(session, Box::new(message)));
    }

    fn ensure_tick(&mut self, now: Instant) {
        if self.next_tick.is_none() {
            self.next_tick = Some(now + SPEAKER_TICK);
        }
    }

    /// What allocation reads of a publisher's speech (`None`: no level heard from it yet, or
    /// not in a room).
    fn speech(&self, publisher: SessionId, now: Instant) -> Option<Speech> {
        let p = self.participants.get(&publisher)?;
        let room = self.rooms.get(&p.room)?;
        let loudness = room.loudness.get(&p.info.sid)?;
        Some(Speech {
            active: loudness.active(now),
            last_loud: loudness.last_loud(),
            loudest: room.loudest.contains(&p.info.sid),
        })
    }

    /// For simulations (`set_alloc_check`): every out of `pid` that takes part in its
    /// allocation is in `listed`, the places a tick's pass goes through. Panics otherwise.
    fn check_alloc_outs(
        &self,
        pid: PeerId,
        settings: Option<&FastMap<String, proto::UpdateTrackSettings>>,
        listed: &[usize],
    ) {
        let Some(peer) = self.peers.get(&pid) else {
            return;
        };
        for (place, (sid, out)) in peer.outs.iter().enumerate() {
            let Some(track) = self.tracks.get(sid) else {
                continue;
            };
            let part = matches!(out.state, OutState::Open(_))
                && if track.kind == MediaKind::Audio {
                    self.config.loudest_audio == 0
                } else {
                    !off_and_settled(out, tile_wants(track, sid, out, settings))
                };
            assert!(
                !part || listed.contains(&place),
                "{} takes part in {}'s allocation but is not listed: {listed:?}",
                sid,
                peer.session
            );
        }
    }

    /// Fits a subscriber's video to its bandwidth estimate (see [`crate::allocation`]): caps
    /// each track's layer, pauses what does not fit (and tells the client), and tells str0m's
    /// estimator what to probe for. Nothing happens before the first estimate.
    fn allocate(&mut self, now: Instant, pid: PeerId, tick: Option<&TickView>) {
        let Some(peer) = self.peers.get(&pid) else {
            return;
        };
        let Some(estimate) = peer.estimate else {
            return;
        };
        let settings = self.participants.get(&peer.session).map(|p| &p.settings);
        // A publisher's speech: from the tick's table when it gives one, the same for every
        // subscriber, or looked up (three lookups by text).
        let speech_of = |publisher: SessionId| match tick.and_then(|t| t.speech.get(&publisher)) {
            Some(s) => *s,
            None => self.speech(publisher, now),
        };
        let mut audio = 0u64;
        // With loudest-N, the tick lists the microphones forwarded: the budget reserves those
        // this subscriber takes, found by sid, rather than going through all its microphones.
        let audio_listed = self.config.loudest_audio > 0 && tick.is_some();
        if let Some(tick) = tick.filter(|_| audio_listed) {
            for &at in &tick.audio {
                let Some((sid, track)) = self.tracks.get_index(at) else {
                    continue;
                };
                if peer
                    .outs
                    .get(sid)
                    .is_some_and(|out| matches!(out.state, OutState::Open(_)))
                {
                    audio += track.measured(None, now);
                }
            }
        }
        // The outs to go through: at a tick, those that took part in the last pass
        // (`alloc_outs`), unless something changed them since or a full pass is due;
        // otherwise all of them.
        let fast = tick.is_some()
            && peer.alloc_outs.is_some()
            && peer
                .alloc_full_at
                .is_some_and(|t| now.saturating_duration_since(t) < self.alloc_full_every);
        let visit: Vec<usize> = match &peer.alloc_outs {
            Some(places) if fast => places.clone(),
            _ => (0..peer.outs.len()).collect(),
        };
        if fast && self.alloc_check {
            self.check_alloc_outs(pid, settings, &visit);
        }
        // The outs that take part in this pass: the next tick's list.
        let mut taking_part = Vec::new();
        // Whether a rate below is a guess (a layer not measured yet).
        let mut guessed = false;
        // (priority key, ending with the track's key for equal priorities; the out's place in
        // `peer.outs`; want)
        type Key = (u8, std::cmp::Reverse<Option<Instant>>, u64);
        let mut items: Vec<(Key, usize, Want)> = Vec::with_capacity(visit.len());
        for place in visit {
            let Some((sid, out)) = peer.outs.get_index(place) else {
                continue;
            };
            if !matches!(out.state, OutState::Open(_)) {
                continue;
            }
            let track = match self.tracks.get_index(out.track_at) {
                Some((_, track)) if track.key == out.track => track,
                _ => match self.tracks.get(sid) {
                    Some(track) => track,
                    None => continue,
                },
            };
            if track.kind == MediaKind::Audio {
                if audio_listed {
                    continue;
                }
                // Only audio that is forwarded counts: with loudest-N, a silent participant's
                // frames go nowhere, and in a large room reserving them would leave no video.
                let forwarded =
                    self.config.loudest_audio == 0 || audio_forwarded(speech_of(track.publisher));
                if forwarded {
                    audio += track.measured(None, now);
                }
                if self.config.loudest_audio == 0 {
                    taking_part.push(place);
                }
                continue;
            }
            let wanted = tile_wants(track, sid, out, settings);
            if off_and_settled(out, wanted) {
                continue;
            }
            taking_part.push(place);
            let (layers, measured) =
                wanted.map_or_else(|| (Vec::new(), true), |q| track.offer(q, now));
            guessed |= !measured;
            let top = if layers.is_empty() {
                0
            } else {
                wanted.map_or(0, |q| track.wanted_rate(q, now))
            };
            // The layer it gets now; while a switch waits for its key frame, the layer it
            // goes to. None: paused, or not started.
            let current = if track.layers.is_empty() {
                out.cap.and(wanted)
            } else {
                match out.switcher.current() {
                    Some(r) => Some(track.layers.rank(&r)),
                    None if out.switcher.started() => out.cap.zip(wanted).map(|(c, w)| c.min(w)),
                    None => None,
                }
            };
            let speech = speech_of(track.publisher);
            // Screen share, then whoever speaks now, then the others by recency of speech;
            // among equals, the track published first.
            let class = if track.info.source == proto::TrackSource::ScreenShare as i32 {
                0
            } else if speech.is_some_and(|s| s.active) {
                1
            } else {
                2
            };
            let key = (
                class,
                std::cmp::Reverse(speech.and_then(|s| s.last_loud)),
                track.key,
            );
            let base = layers
                .first()
                .and_then(|(rank, _)| track.base_rate(*rank, now));
            items.push((
                key,
                place,
                Want {
                    layers,
                    current,
                    top,
                    base,
                    reduced: out.temporal_cap.is_some(),
                },
            ));
        }
        items.sort_unstable_by_key(|item| item.0);
        let (places, wants): (Vec<usize>, Vec<Want>) = items
            .into_iter()
            .map(|(_, place, want)| (place, want))
            .unzip();
        // A standing queue drains only if less than the link's rate is sent.
        let share = if peer.queued() {
            allocation::DRAIN_SHARE
        } else {
            allocation::BUDGET_SHARE
        };
        let mut budget = ((estimate as f64 * share) as u64).saturating_sub(audio);
        // Down fast: while the estimate falls, only the lowest layers are sent (and no more
        // is paused than the whole budget would pause).
        if peer.falling(now) {
            let lowest: u64 = wants
                .iter()
                .filter_map(|w| w.layers.first())
                .map(|l| l.1)
                .sum();
            budget = lowest.min(budget);
        }
        // What every tile asks for, with the headroom that the last upgrades need to fit, and
        // the audio: the estimate at which all of it is sent.
        let demand = {
            let video = wants.iter().map(|w| w.top).sum::<u64>() as f64;
            let all = video * allocation::UPGRADE_HEADROOM + audio as f64;
            (all / allocation::BUDGET_SHARE) as u64
        };
        let calm = |t: Option<Instant>, d| t.is_none_or(|t| now.saturating_duration_since(t) >= d);
        // Another ramp: the tiles came to ask for much more than before and than the estimate
        // (the grid filled as a meeting began, a tile grew), on a link that shows no
        // congestion now (no standing queue, no fall for CALM_AFTER_FALL, which also rules
        // out `falling`, and the probe hold since the last probe); libwebrtc's probe
        // controller likewise probes at once for an allocation that grew. Probed for one
        // upgrade's worth per probe hold instead, an early arrival whose estimate fell while
        // it showed one tile paused much of the grid when the meeting filled.
        let ramp_again = peer.ramp_since.is_some()
            && !peer.ramping(now)
            && demand > estimate
            && demand as f64 > peer.ramp_demand as f64 * RAMP_GROWTH
            && !peer.queued()
            && calm(peer.last_fall, CALM_AFTER_FALL)
            && calm(peer.probed_at, peer.probe_hold);
        let ramping = ramp_again || peer.ramping(now);
        // Up slowly: one track at a time (as far as it fits), and only once no track went up
        // for UPGRADE_INTERVAL and the estimate has not fallen for CALM_AFTER_FALL. In a ramp
        // (RAMP: at the start, or after the tiles asked for much more, until the estimate
        // falls) every track goes as far as the estimate allows at once: a newcomer does not
        // wait a second per tile. Not on guessed rates: LiveKit's presets are below what many
        // cameras send, and several tracks going up together on them overshoot a narrow link
        // at once.
        let all_steps = !guessed && ramping;
        let steps = if all_steps {
            usize::MAX
        } else {
            usize::from(
                calm(peer.last_upgrade, UPGRADE_INTERVAL) && calm(peer.last_fall, CALM_AFTER_FALL),
            )
        };
        let result = allocation::allocate(budget, &wants, steps);
        tracing::trace!(session = %peer.session, budget, audio, ?wants, ?result, "allocation");
        let session = peer.session;
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        peer.allocated_for = Some(estimate);
        peer.sending = result.used + audio;
        // The outs that took part, for the next tick's pass.
        if !fast {
            peer.alloc_full_at = Some(now);
        }
        peer.alloc_outs = Some(taking_part);
        if ramp_again {
            peer.ramp_since = Some(now);
            peer.ramp_probe = None;
            peer.ramp_over = false;
            tracing::debug!(%session, estimate, demand, "ramp");
        }
        peer.ramp_demand = if ramping {
            peer.ramp_demand.max(demand)
        } else {
            peer.ramp_demand.min(demand)
        };
        let mut states = Vec::new();
        let mut resumed = Vec::new();
        let mut upgraded = false;
        for ((((place, want), cap), tight), reduced) in places
            .into_iter()
            .zip(&wants)
            .zip(result.caps)
            .zip(result.tight)
            .zip(result.reduced)
        {
            let Some((sid, out)) = peer.outs.get_index_mut(place) else {
                continue;
            };
            // A track that wants nothing (turned off, or not flowing yet) is not paused here.
            let mut cap = if want.layers.is_empty() { Some(2) } else { cap };
            let mut reduced = reduced;
            // An estimate just after congestion undershoots the link: a track keeps its lowest
            // layer until it has been short of room for PAUSE_AFTER. Being short ends only
            // when the lowest layer fits with headroom, so an estimate hovering at the edge
            // still pauses it.
            if cap.is_none() || (tight && out.short_since.is_some()) {
                let since = *out.short_since.get_or_insert(now);
                if cap.is_none()
                    && out.cap.is_some()
                    && now.saturating_duration_since(since) < PAUSE_AFTER
                {
                    // At the lowest frame rate it has, if it has temporal layers.
                    cap = want.layers.first().map(|(rank, _)| *rank);
                    reduced = want.base.is_some();
                }
            } else {
                out.short_since = None;
            }
            // Fewer frames for a track whose lowest layer does not fit whole: at once, as
            // going down a temporal layer needs nothing from the publisher.
            let temporal_cap = (reduced && cap.is_some()).then_some(0);
            if temporal_cap != out.temporal_cap {
                tracing::debug!(%session, track = %sid, ?temporal_cap, estimate, "frame rate");
                upgraded |= temporal_cap.is_none();
                out.temporal_cap = temporal_cap;
            }
            upgraded |= match (cap, want.current) {
                (Some(c), Some(current)) => c > current,
                (Some(_), None) => out.cap.is_none(),
                _ => false,
            };
            // Going down for lack of bandwidth, the layer above stops at once: the receiver
            // waits for the lower layer's key frame rather than the link for the queue. A
            // scalable track goes down on its next frame, without one.
            let dropped = match (cap, want.current) {
                (Some(c), Some(current)) => current > c,
                (None, _) => out.cap.is_some(),
                _ => false,
            };
            if dropped && (cap.is_none() || !self.tracks.get(sid).is_some_and(|t| t.svc)) {
                out.switcher.pause();
            }
            let was_paused = out.cap.is_none();
            if cap.is_none() != was_paused {
                receivers_changed(&mut self.tracks, sid);
            }
            out.cap = cap;
            if cap.is_none() == was_paused {
                continue;
            }
            if cap.is_none() {
                // Resuming must start at a key frame.
                out.switcher.pause();
                out.key_wait = true;
                self.stats.video_paused += 1;
            } else if self.tracks.get(sid).is_some_and(|t| t.layers.is_empty()) {
                // Without simulcast the key frame is asked for here; a simulcast switcher
                // asks for its target layer's.
                resumed.push(sid.clone());
            }
            let state = if cap.is_none() {
                proto::StreamState::Paused
            } else {
                proto::StreamState::Active
            };
            tracing::debug!(%session, track = %sid, ?state, estimate, "stream state");
            let participant_sid =
                publisher_sid(&self.tracks, &self.participants, sid).unwrap_or_default();
            states.push(proto::StreamStateInfo {
                participant_sid,
                track_sid: sid.clone(),
                state: state as i32,
            });
        }
        // Probing. The estimator learns about room above what is sent only by trying it:
        // once the estimate has been calm for the probe hold and an upgrade waits for room,
        // the desired rate is raised to what that upgrade needs, which makes str0m send a
        // short probe cluster at (and above) that rate and raise its estimate if the link
        // carries it. Between probes the desired rate is what is sent, so no padding keeps a
        // deep bottleneck queue full. A probe that makes the estimate fall doubles the hold.
        let used = result.used + audio;
        if upgraded {
            peer.probe_hold = PROBE_HOLD;
            peer.last_upgrade = Some(now);
        }
        let hold = peer.probe_hold;
        let quiet = |t: Option<Instant>| t.is_none_or(|t| now.saturating_duration_since(t) >= hold);
        let mut desired = used;
        if !peer.queued()
            && quiet(peer.last_fall)
            && quiet(peer.probed_at)
            && let Some(step) = result.next_step
        {
            // The estimate at which the allocation makes that step (its headroom is in
            // `step`), a bit/s over for the rounding.
            let need = ((used + step) as f64 / allocation::BUDGET_SHARE).ceil() as u64 + 1;
            if need > estimate {
                desired = need;
                peer.probed_at = Some(now);
                tracing::trace!(%session, estimate, desired, "probing");
            }
        }
        // At the start the estimate is a guess (`bwe_initial_kbps`), and a newcomer to a
        // large meeting may need several times that for every tile's lowest layer; a grid that
        // fills needs several times what one tile did. In a ramp (until the estimate falls,
        // within RAMP), the desired rate is all that the tiles ask for: str0m's probe
        // controller then probes as a browser does at the start of a call (three and six
        // times the estimate, or once and twice the allocation capped at twice the estimate,
        // then doubling while the probes get through), instead of one upgrade's worth every
        // probe hold.
        let mut ramp_asks = false;
        if ramping && demand > estimate {
            desired = desired.max(demand);
            ramp_asks = true;
            peer.ramp_probe.get_or_insert((now, estimate));
        }
        let minimum = used;
        let (old_min, old_desired) = peer.bwe_rates;
        let differs = |a: u64, b: u64| a.abs_diff(b) > b / 10;
        if differs(minimum, old_min) || differs(desired, old_desired) {
            // str0m probes for a raised desired rate: a fall just after is the probe's doing
            // (`PROBE_BLAME`), not congestion that should cut every track to its lowest layer.
            if ramp_asks && desired > old_desired {
                peer.probed_at = Some(now);
            }
            peer.bwe_rates = (minimum, desired);
            peer.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(minimum), Bitrate::bps(desired));
            self.mark(pid);
        }
        for sid in resumed {
            self.request_keyframe(now, &sid, None, KeyframeRequestKind::Pli);
        }
        if !states.is_empty() {
            self.signal(
                session,
                proto::signal_response::Message::StreamStateUpdate(proto::StreamStateUpdate {
                    stream_states: states,
                }),
            );
        }
    }

    /// The periodic work, every [`SPEAKER_TICK`] while rooms exist: expired resumes leave,
    /// empty rooms close, speaker changes and room counts go out.
    /// Dynacast: tells each simulcast publisher which layers its subscribers need
    /// (SubscribedQualityUpdate), so livekit-client pauses the encodings above the highest
    /// quality anyone wants and resumes them when someone does. The lowest layer stays on, so a
    /// new subscriber starts at once. Sent when the answer changes, at most once a tick.
    fn dynacast(&mut self) {
        let mut updates = Vec::new();
        let mut wants = Vec::new();
        for (sid, track) in &mut self.tracks {
            if track.wanted_stale {
                let layers = track.published_layers();
                track.wanted_here = track
                    .subscribers
                    .iter()
                    .filter_map(|pid| self.peers.get(pid))
                    .filter_map(|peer| {
                        let settings = self
                            .participants
                            .get(&peer.session)
                            .and_then(|p| p.settings.get(sid));
                        simulcast::wanted_quality(settings, layers)
                    })
                    .max();
                track.wanted_stale = false;
            }
            let layers = track.published_layers();
            // A mirror tells its worker whether it has subscribers here, and what they want.
            if let Some(worker) = track.remote {
                let now = (!track.subscribers.is_empty(), track.wanted_here);
                if track.relayed != Some(now) {
                    track.relayed = Some(now);
                    wants.push((worker, sid.clone(), now));
                }
                continue;
            }
            if track.kind != MediaKind::Video || layers.len() < 2 {
                continue;
            }
            let Some(codec) = track.info.codecs.first() else {
                continue;
            };
            let wanted = track
                .wanted_here
                .max(track.record_quality)
                .max(track.relays.iter().filter_map(|(_, q)| *q).max());
            if track.told_quality == Some(wanted) {
                continue;
            }
            track.told_quality = Some(wanted);
            let qualities: Vec<proto::SubscribedQuality> = [
                proto::VideoQuality::Low,
                proto::VideoQuality::Medium,
                proto::VideoQuality::High,
            ]
            .into_iter()
            .map(|q| proto::SubscribedQuality {
                quality: q as i32,
                enabled: q == proto::VideoQuality::Low || wanted.is_some_and(|w| q as u8 <= w),
            })
            .collect();
            let name = codec
                .mime_type
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_lowercase();
            #[allow(deprecated, reason = "older clients read only subscribed_qualities")]
            let update = proto::SubscribedQualityUpdate {
                track_sid: sid.clone(),
                subscribed_qualities: qualities.clone(),
                subscribed_codecs: vec![proto::SubscribedCodec {
                    codec: name,
                    qualities,
                }],
            };
            updates.push((track.publisher, update));
        }
        for (publisher, update) in updates {
            self.signal(
                publisher,
                proto::signal_response::Message::SubscribedQualityUpdate(update),
            );
        }
        for (worker, track, (subscribed, quality)) in wants {
            let relay = Relay::Wants {
                track,
                subscribed,
                quality,
            };
            self.push_relay(worker, relay);
        }
    }

    fn tick(&mut self, now: Instant) {
        self.dynacast();
        let estimated: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.estimate.is_some())
            .map(|(pid, _)| *pid)
            .collect();
        // Every subscriber's allocation reads the publishers' speech, and with loudest-N the
        // microphones forwarded: found once here.
        let view = if estimated.is_empty() {
            None
        } else {
            let speech: FastMap<SessionId, Option<Speech>> = self
                .participants
                .keys()
                .map(|&session| (session, self.speech(session, now)))
                .collect();
            let audio = if self.config.loudest_audio > 0 {
                let forwarded = |publisher: &SessionId| {
                    audio_forwarded(speech.get(publisher).copied().flatten())
                };
                self.tracks
                    .values()
                    .enumerate()
                    .filter(|(_, t)| t.kind == MediaKind::Audio && forwarded(&t.publisher))
                    .map(|(at, _)| at)
                    .collect()
            } else {
                Vec::new()
            };
            Some(TickView { speech, audio })
        };
        for pid in estimated {
            self.allocate(now, pid, view.as_ref());
        }
        // Resumed clients that sent no SyncState in time: offer again.
        let unsynced: Vec<(PeerId, SessionId)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.resync_until.is_some_and(|t| now >= t))
            .map(|(pid, p)| (*pid, p.session))
            .collect();
        for (pid, session) in unsynced {
            self.forget_pending_offer(pid);
            self.negotiate_subscriber(session);
        }
        // Participants that lost their signal connection or their media path, and did not
        // resume in time, leave.
        let expired: Vec<(SessionId, proto::DisconnectReason)> = self
            .participants
            .iter()
            .filter_map(|(s, p)| p.resume_by.filter(|(t, _)| now >= *t).map(|(_, r)| (*s, r)))
            .collect();
        for (session, reason) in expired {
            tracing::info!(%session, ?reason, "no resume within the window; leaving");
            self.leave(session, Some(reason));
        }
        // Rooms empty for longer than their timeout close.
        let mut closed = Vec::new();
        self.rooms.retain(|name, room| {
            let timeout = if room.ever_joined {
                room.info.departure_timeout
            } else {
                room.info.empty_timeout
            };
            let open = room.empty_since.is_none_or(|t| {
                now.saturating_duration_since(t) < Duration::from_secs(timeout.into())
            });
            if !open {
                tracing::info!(room = %name, "room closed");
                closed.push(room.info.clone());
            }
            open
        });
        for info in closed {
            if self.is_home(&info.name) {
                self.webhook("room_finished", Some(info), None, None);
            } else {
                self.away.rooms -= 1;
            }
        }
        self.next_tick = if self.rooms.is_empty() {
            None
        } else {
            Some(now + SPEAKER_TICK)
        };
        let mut messages = Vec::new();
        let mut updates = Vec::new();
        for room in self.rooms.values_mut() {
            if room.info.sid.is_empty() && now.saturating_duration_since(room.created) >= SID_WAIT {
                room.info.sid = self.ids.sid("RM_");
                room.counts_changed = true;
            }
            // Participant counts go out at most once a tick, however many joined.
            if std::mem::take(&mut room.counts_changed) {
                let members: Vec<&Participant> = room
                    .members
                    .iter()
                    .filter_map(|s| self.participants.get(s))
                    .filter(|p| !is_hidden(&p.info))
                    .collect();
                room.info.num_participants = members.len() as u32;
                room.info.num_publishers =
                    members.iter().filter(|p| p.info.is_publisher).count() as u32;
                for s in &room.members {
                    updates.push((*s, room.info.clone()));
                }
            }
            if self.config.loudest_audio > 0 {
                room.loudest = speakers::loudest(&room.loudness, self.config.loudest_audio);
            }
            let changes = speakers::changes(&mut room.loudness, now);
            if changes.is_empty() {
                continue;
            }
            tracing::debug!(?changes, "speakers changed");
            let message = proto::SpeakersChanged {
                speakers: changes
                    .into_iter()
                    .map(|(sid, level, active)| proto::SpeakerInfo { sid, level, active })
                    .collect(),
            };
            for s in &room.members {
                messages.push((*s, message.clone()));
            }
        }
        for (s, message) in messages {
            self.signal(s, proto::signal_response::Message::SpeakersChanged(message));
        }
        for (s, room) in updates {
            let update = proto::RoomUpdate { room: Some(room) };
            self.signal(s, proto::signal_response::Message::RoomUpdate(update));
        }
    }
}

/// A LeaveRequest for the client: why, and what it should do (`Reconnect` and `Resume` tell it
/// that it may come back).
pub fn leave_message(
    reason: proto::DisconnectReason,
    action: proto::leave_request::Action,
) -> proto::signal_response::Message {
    proto::signal_response::Message::Leave(proto::LeaveRequest {
        can_reconnect: action != proto::leave_request::Action::Disconnect,
        reason: reason as i32,
        action: action as i32,
        regions: None,
    })
}

fn is_hidden(info: &proto::ParticipantInfo) -> bool {
    info.permission.as_ref().is_some_and(|p| p.hidden)
}

/// Sends a subscriber's copy of `track` in RED where the subscriber negotiated it (str0m's
/// default), unless the track was published with `disable_red`, as livekit-client asks for
/// end-to-end encrypted tracks (their frame transforms do not handle RED).
fn set_red_send(rtc: &mut Rtc, mid: Mid, track: Option<&Track>) {
    if let Some(track) = track
        && track.kind == MediaKind::Audio
    {
        rtc.direct_api().set_red_send(mid, !track.info.disable_red);
    }
}

/// Whether a microphone asked for no DTX, and whether it is stereo (its audio features, which
/// `add_track` completes from the request's older booleans).
fn opus_wishes(info: &proto::TrackInfo) -> (bool, bool) {
    let has = |f: proto::AudioTrackFeature| info.audio_features.contains(&(f as i32));
    (
        has(proto::AudioTrackFeature::TfNoDtx),
        has(proto::AudioTrackFeature::TfStereo),
    )
}

/// Takes the earliest entry of a deadline set out if it is due at `now`.
fn pop_due(set: &mut BTreeSet<(Instant, PeerId)>, now: Instant) -> Option<PeerId> {
    let &(t, pid) = set.first()?;
    if t > now {
        return None;
    }
    set.pop_first();
    Some(pid)
}

/// STUN messages start with two zero bits and carry the magic cookie (RFC 5389).
fn is_stun(contents: &[u8]) -> bool {
    contents.len() >= 20 && contents[0] < 2 && contents[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

/// Extracts `candidate` from an `RTCIceCandidateInit` JSON string without a JSON dependency on
/// the hot path: `{"candidate":"candidate:…","sdpMid":"0",…}`.
fn candidate_from_init(init: &str) -> Option<String> {
    let key = "\"candidate\"";
    let start = init.find(key)? + key.len();
    let rest = init[start..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    let candidate = &rest[..end];
    if candidate.is_empty() {
        return None;
    }
    Some(
        candidate
            .strip_prefix("a=")
            .unwrap_or(candidate)
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_init_parsing() {
        let init = r#"{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}"#;
        assert_eq!(
            candidate_from_init(init).as_deref(),
            Some("candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host")
        );
        assert_eq!(candidate_from_init(r#"{"candidate":""}"#), None);
        assert_eq!(candidate_from_init("garbage"), None);
    }

    #[test]
    fn a_fall_threatens_what_is_sent_only_near_it() {
        // Below what is sent (with the budget's margin): always.
        assert!(fall_threatens(10_000_000, 10_500_000, 9_600_000));
        // Deep, and one more back-off of 15 % would leave less than is sent.
        assert!(fall_threatens(3_000_000, 4_000_000, 2_500_000));
        // Deep, but far above what is sent: a probe's back-off (22.5 to 19 Mbit/s with 10.4
        // sent, seen in the simulation).
        assert!(!fall_threatens(19_000_000, 22_500_000, 10_400_000));
        // Shallow and above what is sent.
        assert!(!fall_threatens(3_000_000, 3_200_000, 2_300_000));
    }

    #[test]
    fn stun_detection() {
        let mut msg = [0u8; 20];
        msg[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        assert!(is_stun(&msg));
        assert!(!is_stun(&msg[..19]));
        msg[0] = 0x80; // RTP version 2
        assert!(!is_stun(&msg));
    }
}
