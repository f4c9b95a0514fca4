//! A simulated participant speaking the LiveKit protocol, as livekit-client does on `/rtc`: one
//! WebSocket for signalling (protobuf), a publisher and a subscriber peer connection.
//!
//! It joins with `auto_subscribe=0` and subscribes to what a client with adaptive stream would
//! show: every audio track, a grid of small tiles (lowest layer) and large tiles (highest layer),
//! each with `UpdateTrackSettings` giving the tile size. It honours `SubscribedQualityUpdate`
//! (dynacast) by pausing unused layers, and answers PLIs with key frames.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, media::Simulcast, media::SimulcastLayer};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::peer::{MTU, Media, Signal};
use crate::stats::Counter;
use crate::{Ctx, End, LiveKitTarget};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Time allowed for the WebSocket and the JoinResponse.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// An access token for `identity`, signed with the target's key.
pub fn token(target: &LiveKitTarget, room: &str, identity: &str, now_unix: i64) -> String {
    use parloir_signal::token::{Claims, VideoGrant, sign_hs256};
    let claims = Claims {
        iss: target.api_key.clone(),
        sub: identity.to_string(),
        name: identity.to_string(),
        nbf: Some(now_unix - 10),
        exp: Some(now_unix + 6 * 3600),
        video: VideoGrant {
            room_join: true,
            room: room.to_string(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            ..Default::default()
        },
        ..Default::default()
    };
    sign_hs256(&claims, &target.api_secret)
}

fn encode(m: Req) -> Message {
    Message::Binary(
        proto::SignalRequest { message: Some(m) }
            .encode_to_vec()
            .into(),
    )
}

/// Connects and waits for the JoinResponse; a refusal comes back as the failure's reason.
async fn connect(url: &str) -> Result<(Ws, proto::JoinResponse), String> {
    let (mut ws, _) =
        match tokio::time::timeout(JOIN_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
            Err(_) => return Err("signal connection timed out".into()),
            Ok(Err(tungstenite::Error::Http(r))) => {
                return Err(format!("refused: HTTP {}", r.status().as_u16()));
            }
            Ok(Err(tungstenite::Error::Io(e))) => {
                return Err(format!("cannot connect: {}", e.kind()));
            }
            Ok(Err(e)) => return Err(format!("signal connection failed: {e}")),
            Ok(Ok(ws)) => ws,
        };
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        let msg = match next {
            Err(_) => return Err("no JoinResponse in time".into()),
            Ok(None) => return Err("signal connection closed before joining".into()),
            Ok(Some(Err(e))) => return Err(format!("signal connection failed: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        let Message::Binary(b) = msg else { continue };
        let Ok(r) = proto::SignalResponse::decode(&b[..]) else {
            return Err("undecodable signal message".into());
        };
        match r.message {
            Some(Resp::Join(j)) => return Ok((ws, j)),
            Some(Resp::Leave(l)) => {
                return Err(format!("refused: leave ({})", reason_name(l.reason)));
            }
            _ => continue,
        }
    }
}

fn reason_name(reason: i32) -> &'static str {
    proto::DisconnectReason::try_from(reason)
        .map(|r| r.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// One stay in the room, from connect to leave. Returns how it ended.
pub async fn session(ctx: &Ctx, target: &LiveKitTarget, index: u32, leave_at: Instant) -> End {
    let shared = &ctx.shared;
    let scenario = &ctx.scenario;
    let identity = format!("lg-{index}");
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let url = format!(
        "{}/rtc?access_token={}&auto_subscribe=0&adaptive_stream=1&sdk=rust&version=parloir-loadgen&protocol=16",
        target.ws_url.trim_end_matches('/'),
        token(target, &ctx.room, &identity, now_unix)
    );
    shared.add(Counter::JoinsStarted, 1);
    let started = Instant::now();
    let (mut ws, join) = match connect(&url).await {
        Ok(x) => x,
        Err(reason) => {
            shared.fail(reason);
            return End::Failed;
        }
    };
    shared.record_join(started.elapsed());
    shared.add(Counter::Joined, 1);

    let mut p = match Participant::new(ctx, index, started, &join).await {
        Ok(p) => p,
        Err(e) => {
            shared.fail(format!("local setup failed: {e}"));
            return End::Failed;
        }
    };
    for other in &join.other_participants {
        p.participant_update(other);
    }
    let mut outbox: Vec<Req> = Vec::new();
    p.publish(&mut outbox);
    p.subscriptions(&mut outbox);
    let end = p.run(&mut ws, outbox, leave_at).await;
    p.media.receiver.finish(shared);
    if end != End::Dropped {
        let _ = ws
            .send(encode(Req::Leave(proto::LeaveRequest {
                reason: proto::DisconnectReason::ClientInitiated as i32,
                ..Default::default()
            })))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        shared.add(Counter::Left, 1);
    }
    let _ = scenario;
    end
}

struct Remote {
    identity: String,
    index: Option<u32>,
    tracks: Vec<proto::TrackInfo>,
}

struct Participant<'a> {
    ctx: &'a Ctx,
    index: u32,
    media: Media,
    pending: Option<SdpPendingOffer>,
    /// AddTrack cids not yet confirmed by TrackPublished.
    unpublished: HashSet<String>,
    offered: bool,
    video_track_sid: Option<String>,
    remotes: HashMap<String, Remote>,
    subscribed: HashSet<String>,
    ping_every: Duration,
    next_ping: Instant,
}

impl<'a> Participant<'a> {
    async fn new(
        ctx: &'a Ctx,
        index: u32,
        started: Instant,
        join: &proto::JoinResponse,
    ) -> anyhow::Result<Self> {
        let now = Instant::now();
        let ping_every = Duration::from_secs(u64::from(join.ping_interval.clamp(1, 30) as u32));
        Ok(Self {
            ctx,
            index,
            media: Media::bind(ctx.bind_ip, index, ctx.start, &ctx.scenario, started).await?,
            pending: None,
            unpublished: HashSet::new(),
            offered: false,
            video_track_sid: None,
            remotes: HashMap::new(),
            subscribed: HashSet::new(),
            ping_every,
            next_ping: now + ping_every,
        })
    }

    fn publishes_audio(&self) -> bool {
        self.index < self.ctx.scenario.audio_publishers
    }

    fn publishes_video(&self) -> bool {
        self.index < self.ctx.scenario.video_publishers
    }

    /// AddTrack for the microphone and camera; the offer follows their TrackPublished.
    fn publish(&mut self, out: &mut Vec<Req>) {
        if self.publishes_audio() {
            self.unpublished.insert("mic".into());
            out.push(Req::AddTrack(proto::AddTrackRequest {
                cid: "mic".into(),
                name: "microphone".into(),
                r#type: proto::TrackType::Audio as i32,
                source: proto::TrackSource::Microphone as i32,
                ..Default::default()
            }));
        }
        if self.publishes_video() {
            let layers = &self.ctx.scenario.video.layers;
            let top = &layers[layers.len() - 1];
            let video_layers: Vec<proto::VideoLayer> = layers
                .iter()
                .enumerate()
                .map(|(i, l)| proto::VideoLayer {
                    quality: quality_of(i, layers.len()) as i32,
                    width: u32::from(l.width),
                    height: u32::from(l.height),
                    bitrate: l.kbps * 1000,
                    rid: l.rid.clone(),
                    ..Default::default()
                })
                .collect();
            self.unpublished.insert("cam".into());
            out.push(Req::AddTrack(proto::AddTrackRequest {
                cid: "cam".into(),
                name: "camera".into(),
                r#type: proto::TrackType::Video as i32,
                source: proto::TrackSource::Camera as i32,
                width: u32::from(top.width),
                height: u32::from(top.height),
                layers: video_layers.clone(),
                simulcast_codecs: vec![proto::SimulcastCodec {
                    codec: "vp8".into(),
                    cid: "cam".into(),
                    layers: video_layers,
                    ..Default::default()
                }],
                ..Default::default()
            }));
        }
    }

    /// The publisher offer: one send-only m-line per track, simulcast rids on the camera.
    fn offer(&mut self, out: &mut Vec<Req>) -> anyhow::Result<()> {
        let now = Instant::now();
        let (with_audio, with_video) = (self.publishes_audio(), self.publishes_video());
        let mut api = self.media.publisher.rtc.sdp_api();
        let audio = with_audio.then(|| {
            api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("stream".into()),
                Some("mic".into()),
                None,
            )
        });
        let layers = &self.ctx.scenario.video.layers;
        let video = with_video.then(|| {
            let simulcast = (layers.len() > 1).then(|| {
                let mut s = Simulcast::new();
                for l in layers {
                    s.add_send_layer(SimulcastLayer::new(&l.rid));
                }
                s
            });
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("stream".into()),
                Some("cam".into()),
                simulcast,
            )
        });
        let Some((offer, pending)) = api.apply() else {
            return Ok(());
        };
        if let Some(mid) = audio {
            self.media.sender.set_audio(mid, now);
        }
        if let Some(mid) = video {
            self.media
                .sender
                .set_video(mid, &self.ctx.scenario.video, now);
        }
        self.pending = Some(pending);
        self.offered = true;
        out.push(Req::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id: 1,
            ..Default::default()
        }));
        Ok(())
    }

    fn participant_update(&mut self, info: &proto::ParticipantInfo) {
        if info.state == proto::participant_info::State::Disconnected as i32 {
            self.remotes.remove(&info.sid);
            return;
        }
        let index = info
            .identity
            .strip_prefix("lg-")
            .and_then(|n| n.parse().ok());
        self.remotes.insert(
            info.sid.clone(),
            Remote {
                identity: info.identity.clone(),
                index,
                tracks: info.tracks.clone(),
            },
        );
    }

    /// Subscribes to what this participant's screen shows and sets each tile's size.
    fn subscriptions(&mut self, out: &mut Vec<Req>) {
        let layers = &self.ctx.scenario.video.layers;
        let mut subscribe: Vec<proto::ParticipantTracks> = Vec::new();
        let mut settings = Vec::new();
        for (psid, remote) in &self.remotes {
            if remote.identity.is_empty() {
                continue;
            }
            let mut sids = Vec::new();
            for t in &remote.tracks {
                if self.subscribed.contains(&t.sid) {
                    continue;
                }
                let video = t.r#type == proto::TrackType::Video as i32;
                let tile = if video {
                    let Some(p) = remote.index else { continue };
                    match self.ctx.scenario.tile(self.index, p) {
                        Some(layer) => Some(layer),
                        None => continue,
                    }
                } else {
                    None
                };
                sids.push(t.sid.clone());
                if let Some(layer) = tile {
                    let l = &layers[layer];
                    settings.push(proto::UpdateTrackSettings {
                        track_sids: vec![t.sid.clone()],
                        disabled: false,
                        quality: quality_of(layer, layers.len()) as i32,
                        width: u32::from(l.width),
                        height: u32::from(l.height),
                        fps: l.fps,
                        ..Default::default()
                    });
                }
            }
            if !sids.is_empty() {
                self.subscribed.extend(sids.iter().cloned());
                subscribe.push(proto::ParticipantTracks {
                    participant_sid: psid.clone(),
                    track_sids: sids,
                });
            }
        }
        if subscribe.is_empty() {
            return;
        }
        out.push(Req::Subscription(proto::UpdateSubscription {
            track_sids: subscribe
                .iter()
                .flat_map(|p| p.track_sids.iter().cloned())
                .collect(),
            subscribe: true,
            participant_tracks: subscribe,
        }));
        out.extend(settings.into_iter().map(Req::TrackSetting));
    }

    /// Handles one signal message; `Err` ends the session with that reason.
    fn signal(&mut self, msg: Resp, out: &mut Vec<Req>) -> Result<(), String> {
        match msg {
            Resp::Offer(sd) => {
                tracing::trace!(participant = self.index, sdp = %sd.sdp, "subscriber offer");
                let offer = SdpOffer::from_sdp_string(&sd.sdp)
                    .map_err(|e| format!("bad subscriber offer: {e}"))?;
                let answer = self
                    .media
                    .subscriber
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .map_err(|e| format!("subscriber offer refused: {e}"))?;
                self.media.subscriber.kick();
                out.push(Req::Answer(proto::SessionDescription {
                    r#type: "answer".into(),
                    sdp: answer.to_sdp_string(),
                    id: sd.id,
                    ..Default::default()
                }));
            }
            Resp::Answer(sd) => {
                if let Some(pending) = self.pending.take() {
                    let answer = SdpAnswer::from_sdp_string(&sd.sdp)
                        .map_err(|e| format!("bad publisher answer: {e}"))?;
                    self.media
                        .publisher
                        .rtc
                        .sdp_api()
                        .accept_answer(pending, answer)
                        .map_err(|e| format!("publisher answer refused: {e}"))?;
                    self.media.publisher.kick();
                }
            }
            Resp::Trickle(t) => {
                let init: serde_json::Value =
                    serde_json::from_str(&t.candidate_init).unwrap_or_default();
                if let Some(c) = init.get("candidate").and_then(|c| c.as_str())
                    && !c.is_empty()
                    && let Ok(c) = Candidate::from_sdp_string(c)
                {
                    let peer = if t.target == proto::SignalTarget::Subscriber as i32 {
                        &mut self.media.subscriber
                    } else {
                        &mut self.media.publisher
                    };
                    peer.rtc.add_remote_candidate(c);
                    peer.kick();
                }
            }
            Resp::TrackPublished(r) => {
                if let Some(track) = &r.track
                    && track.r#type == proto::TrackType::Video as i32
                {
                    self.video_track_sid = Some(track.sid.clone());
                }
                self.unpublished.remove(&r.cid);
                if self.unpublished.is_empty() && !self.offered {
                    self.offer(out).map_err(|e| format!("cannot offer: {e}"))?;
                }
            }
            Resp::Update(u) => {
                for p in &u.participants {
                    self.participant_update(p);
                }
                self.subscriptions(out);
            }
            Resp::SubscribedQualityUpdate(q)
                if self.video_track_sid.as_deref() == Some(q.track_sid.as_str()) =>
            {
                let layers = &self.ctx.scenario.video.layers;
                #[allow(deprecated, reason = "older servers send only this field")]
                let legacy = q.subscribed_qualities.iter();
                let qualities = q
                    .subscribed_codecs
                    .iter()
                    .flat_map(|c| c.qualities.iter())
                    .chain(legacy);
                for sq in qualities {
                    for (i, l) in layers.iter().enumerate() {
                        if quality_of(i, layers.len()) as i32 == sq.quality {
                            self.media.sender.set_layer_enabled(&l.rid, sq.enabled);
                        }
                    }
                }
            }
            Resp::Leave(l) => {
                return Err(format!("server sent leave ({})", reason_name(l.reason)));
            }
            _ => {}
        }
        Ok(())
    }

    async fn run(&mut self, ws: &mut Ws, mut outbox: Vec<Req>, leave_at: Instant) -> End {
        let shared = &*self.ctx.shared;
        let mut buf = vec![0u8; MTU];
        loop {
            for m in outbox.drain(..) {
                if ws.send(encode(m)).await.is_err() {
                    shared.dropped("signal connection lost");
                    return End::Dropped;
                }
            }
            let now = match self
                .media
                .turn(shared, &self.ctx.scenario, self.index, leave_at)
            {
                Ok(now) => now,
                Err(end) => return end,
            };
            if now >= self.next_ping {
                self.next_ping = now + self.ping_every;
                outbox.push(Req::Ping(shared.stamp(now) as i64));
                continue;
            }
            let until = self.next_ping.min(leave_at);
            match self.media.wait(shared, ws, now, until, &mut buf).await {
                Some(Signal::Closed) => {
                    if shared.stopping() {
                        return End::Stopped;
                    }
                    shared.dropped("signal connection closed by the server");
                    return End::Dropped;
                }
                Some(Signal::Message(Message::Binary(b))) => {
                    let Ok(r) = proto::SignalResponse::decode(&b[..]) else {
                        shared.dropped("undecodable signal message");
                        return End::Dropped;
                    };
                    if let Some(m) = r.message
                        && let Err(reason) = self.signal(m, &mut outbox)
                    {
                        shared.dropped(reason);
                        return End::Dropped;
                    }
                }
                Some(Signal::Message(_)) | None => {}
            }
        }
    }
}

/// LiveKit's quality of layer `i` of `n` (lowest first).
fn quality_of(i: usize, n: usize) -> proto::VideoQuality {
    match (n, i) {
        (1, _) => proto::VideoQuality::High,
        (2, 0) => proto::VideoQuality::Low,
        (2, _) => proto::VideoQuality::High,
        (_, 0) => proto::VideoQuality::Low,
        (_, 1) => proto::VideoQuality::Medium,
        _ => proto::VideoQuality::High,
    }
}
