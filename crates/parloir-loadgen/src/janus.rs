//! The same simulated participants against Janus' VideoRoom plugin, so Parloir can be compared
//! with a peer SFU under the same load. Janus speaks its own JSON API over a WebSocket
//! (subprotocol `janus-protocol`): a session, one publisher handle that joins the room and
//! publishes with an offer, and one subscriber handle that carries every subscription in one
//! peer connection (multistream), renegotiated as publishers appear.
//!
//! Janus never gathers candidates on loopback, so a run against it uses the machine's own IPv4
//! address for both Janus (`ice_enforce_list`) and the simulated participants; see
//! [`host_ipv4`].
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Simulcast, SimulcastLayer};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::peer::{MTU, Media, Signal};
use crate::stats::Counter;
use crate::{Ctx, End, JanusTarget};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Time allowed for each step of joining.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Janus drops sessions silent for 60 s; janus.js sends a keepalive every 25 s.
const KEEPALIVE: Duration = Duration::from_secs(25);
/// Janus participant ids are this plus the participant's index.
const ID_BASE: u64 = 1000;

/// The machine's first non-loopback IPv4 address: the source address of the default route, or
/// failing that the first address `hostname -I` prints.
pub fn host_ipv4() -> Option<Ipv4Addr> {
    let routed = std::net::UdpSocket::bind("0.0.0.0:0").ok().and_then(|s| {
        // Connecting a UDP socket sends nothing; it only picks the route and source address.
        s.connect("203.0.113.1:9").ok()?;
        match s.local_addr().ok()?.ip() {
            IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => Some(v4),
            _ => None,
        }
    });
    routed.or_else(|| {
        let out = Command::new("hostname").arg("-I").output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|a| a.parse::<Ipv4Addr>().ok())
            .find(|a| !a.is_loopback())
    })
}

/// The VideoRoom room every simulated participant joins (configured statically).
pub const ROOM: u64 = 1234;

/// A generated Janus configuration on loopback, removed when dropped.
pub struct ConfigDir {
    pub path: PathBuf,
}

impl ConfigDir {
    /// Writes a minimal configuration: the VideoRoom plugin, the WebSocket transport on
    /// 127.0.0.1:`ws_port`, one host candidate on `ice_ip`, one room for up to 1000 publishers.
    pub fn generate(ws_port: u16, ice_ip: Ipv4Addr) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("parloir-janus-{}-{ws_port}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        let lib = "/usr/lib/x86_64-linux-gnu/janus";
        let conf = path.display();
        let disabled_plugins = [
            "audiobridge",
            "duktape",
            "echotest",
            "lua",
            "nosip",
            "recordplay",
            "sip",
            "streaming",
            "textroom",
            "videocall",
            "voicemail",
        ]
        .map(|p| format!("libjanus_{p}.so"))
        .join(",");
        let files = [
            (
                "janus.jcfg",
                format!(
                    r#"general: {{
	configs_folder = "{conf}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 3
	session_timeout = 60
	protected_folders = [ "/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/sbin", "/sys", "/usr", "/var" ]
}}
certificates: {{
}}
media: {{
	rtp_port_range = "20000-40000"
}}
nat: {{
	nice_debug = false
	ice_enforce_list = "{ice_ip}"
}}
plugins: {{
	disable = "{disabled_plugins}"
}}
transports: {{
	disable = "libjanus_http.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so"
}}
loggers: {{
	disable = "libjanus_jsonlog.so"
}}
events: {{
	broadcast = false
}}
"#
                ),
            ),
            (
                "janus.transport.websockets.jcfg",
                format!(
                    r#"general: {{
	json = "plain"
	ws = true
	ws_port = {ws_port}
	ws_ip = "127.0.0.1"
	wss = false
}}
admin: {{
	admin_ws = false
	admin_wss = false
}}
"#
                ),
            ),
            (
                "janus.plugin.videoroom.jcfg",
                format!(
                    r#"general: {{
}}
room-{ROOM}: {{
	description = "Load test room"
	publishers = 1000
	bitrate = 0
	fir_freq = 0
	audiocodec = "opus"
	videocodec = "vp8"
	record = false
	notify_joining = false
	audiolevel_ext = true
	audiolevel_event = false
	transport_wide_cc_ext = true
}}
"#
                ),
            ),
        ];
        for (name, text) in files {
            std::fs::write(path.join(name), text)?;
        }
        Ok(Self { path })
    }

    /// The command that starts Janus on this configuration.
    pub fn command(&self) -> anyhow::Result<Command> {
        let mut c = Command::new("janus");
        // In its own directory, so that a core dump (Janus 1.1.2 has crashed on shutdown
        // here) goes away with the configuration instead of landing in the caller's tree.
        c.current_dir(&self.path)
            .arg("-C")
            .arg(self.path.join("janus.jcfg"))
            .arg("-F")
            .arg(&self.path)
            .arg("-o");
        Ok(c)
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What a request was for, by transaction.
#[derive(Debug, Clone, PartialEq)]
enum Purpose {
    JoinSubscriber,
    Subscribe(Vec<Want>),
    Start,
    Keepalive,
}

/// A stream of another participant to subscribe to.
#[derive(Debug, Clone, PartialEq)]
struct Want {
    feed: u64,
    mid: String,
    /// Simulcast layer for video (0 lowest), none for audio.
    substream: Option<u8>,
}

struct Janus<'a> {
    ctx: &'a Ctx,
    index: u32,
    session: u64,
    pub_handle: u64,
    sub_handle: Option<u64>,
    next_tx: u64,
    pending: HashMap<String, Purpose>,
    /// Messages that arrived while a join step waited for its own answer.
    backlog: VecDeque<Value>,
    media: Media,
    /// Streams wanted but not yet asked for; asked in batches, one renegotiation at a time.
    wanted: Vec<Want>,
    asked: HashSet<(u64, String)>,
    renegotiating: bool,
    retry_at: Option<Instant>,
    next_keepalive: Instant,
}

impl<'a> Janus<'a> {
    fn tx(&mut self) -> String {
        self.next_tx += 1;
        format!("lg{}-{}", self.index, self.next_tx)
    }

    async fn send(&mut self, ws: &mut Ws, mut msg: Value) -> Result<String, String> {
        let tx = self.tx();
        msg["transaction"] = json!(tx);
        if self.session != 0 && msg.get("session_id").is_none() {
            msg["session_id"] = json!(self.session);
        }
        ws.send(Message::Text(msg.to_string().into()))
            .await
            .map_err(|e| format!("signal connection lost: {e}"))?;
        Ok(tx)
    }

    fn message(handle: u64, body: Value, jsep: Option<Value>) -> Value {
        let mut m = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        m
    }

    /// Waits for the reply to `tx` that `done` accepts (skipping acks), keeping other messages.
    async fn wait(
        &mut self,
        ws: &mut Ws,
        tx: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let m = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err("no answer from Janus in time".into()),
                Ok(None) | Ok(Some(Err(_))) => return Err("signal connection closed".into()),
                Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<Value>(&t) {
                    Ok(v) => v,
                    Err(_) => return Err("undecodable Janus message".into()),
                },
                Ok(Some(Ok(_))) => continue,
            };
            if m["transaction"] == tx {
                if m["janus"] == "error" {
                    return Err(format!("Janus error: {}", m["error"]["reason"]));
                }
                if let Some(e) = plugin_error(&m) {
                    return Err(e);
                }
                if done(&m) {
                    return Ok(m);
                }
            } else {
                self.backlog.push_back(m);
            }
        }
    }

    /// The publisher's offer: audio, and video with the scenario's simulcast layers.
    fn offer(&mut self) -> Option<(String, SdpPendingOffer)> {
        let now = Instant::now();
        let s = &self.ctx.scenario;
        let (with_audio, with_video) = (
            self.index < s.audio_publishers,
            self.index < s.video_publishers,
        );
        if !with_audio && !with_video {
            return None;
        }
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
        let layers = &s.video.layers;
        let video = with_video.then(|| {
            let simulcast = (layers.len() > 1).then(|| {
                let mut sc = Simulcast::new();
                for l in layers {
                    sc.add_send_layer(SimulcastLayer::new(&l.rid));
                }
                sc
            });
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("stream".into()),
                Some("cam".into()),
                simulcast,
            )
        });
        let (offer, pending) = api.apply()?;
        if let Some(mid) = audio {
            self.media.sender.set_audio(mid, now);
        }
        if let Some(mid) = video {
            self.media
                .sender
                .set_video(mid, &self.ctx.scenario.video, now);
        }
        Some((offer.to_sdp_string(), pending))
    }

    /// Notes the streams of newly active publishers that this participant's screen shows.
    fn publishers(&mut self, list: &Value) {
        let n = self.ctx.scenario.participants.max(1);
        for p in list.as_array().into_iter().flatten() {
            let Some(feed) = p["id"].as_u64() else {
                continue;
            };
            let Some(index) = feed.checked_sub(ID_BASE).map(|i| i as u32) else {
                continue;
            };
            if index == self.index || index >= n {
                continue;
            }
            for st in p["streams"].as_array().into_iter().flatten() {
                let Some(mid) = st["mid"].as_str() else {
                    continue;
                };
                let substream = match st["type"].as_str() {
                    Some("audio") => None,
                    Some("video") => match self.ctx.scenario.tile(self.index, index) {
                        Some(layer) => Some(layer as u8),
                        None => continue,
                    },
                    _ => continue,
                };
                let key = (feed, mid.to_string());
                if self.asked.contains(&key)
                    || self.wanted.iter().any(|w| w.feed == feed && w.mid == mid)
                {
                    continue;
                }
                self.wanted.push(Want {
                    feed,
                    mid: mid.to_string(),
                    substream,
                });
            }
        }
    }

    /// Asks for the wanted streams: a subscriber join the first time, `subscribe` afterwards.
    async fn ask(&mut self, ws: &mut Ws) -> Result<(), String> {
        if self.renegotiating
            || self.wanted.is_empty()
            || self.retry_at.is_some_and(|t| Instant::now() < t)
        {
            return Ok(());
        }
        self.retry_at = None;
        let wants = std::mem::take(&mut self.wanted);
        let streams: Vec<Value> = wants
            .iter()
            .map(|w| {
                let mut s = json!({"feed": w.feed, "mid": w.mid});
                if let Some(sub) = w.substream {
                    s["substream"] = json!(sub);
                }
                s
            })
            .collect();
        for w in &wants {
            self.asked.insert((w.feed, w.mid.clone()));
        }
        self.renegotiating = true;
        match self.sub_handle {
            None => {
                let tx = self
                    .send(
                        ws,
                        json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
                    )
                    .await?;
                let m = self.wait(ws, &tx, |m| m["janus"] == "success").await?;
                let handle = m["data"]["id"].as_u64().ok_or("attach gave no handle")?;
                self.sub_handle = Some(handle);
                let body = json!({"request": "join", "ptype": "subscriber", "room": ROOM, "streams": streams});
                let tx = self.send(ws, Self::message(handle, body, None)).await?;
                self.pending.insert(tx, Purpose::JoinSubscriber);
            }
            Some(handle) => {
                let body = json!({"request": "subscribe", "streams": streams});
                let tx = self.send(ws, Self::message(handle, body, None)).await?;
                self.pending.insert(tx, Purpose::Subscribe(wants));
            }
        }
        Ok(())
    }

    /// Handles one Janus message in the running phase; `Err` ends the session.
    async fn handle(&mut self, ws: &mut Ws, m: Value) -> Result<(), String> {
        let kind = m["janus"].as_str().unwrap_or_default();
        let purpose = m["transaction"].as_str().and_then(|t| {
            if kind == "ack" {
                None
            } else {
                self.pending.remove(t)
            }
        });
        match kind {
            "hangup" => {
                return Err(format!(
                    "Janus hung up ({})",
                    m["reason"].as_str().unwrap_or("?")
                ));
            }
            "timeout" => return Err("Janus session timed out".into()),
            "error" => {
                if purpose.is_some_and(|p| p != Purpose::Keepalive) {
                    return Err(format!("Janus error: {}", m["error"]["reason"]));
                }
                return Ok(());
            }
            "event" | "success" => {}
            _ => return Ok(()),
        }
        if let Some(e) = plugin_error(&m) {
            match purpose {
                // A feed not up yet (428): ask again in a second.
                Some(Purpose::Subscribe(wants)) if m["plugindata"]["data"]["error_code"] == 428 => {
                    for w in &wants {
                        self.asked.remove(&(w.feed, w.mid.clone()));
                    }
                    self.wanted.extend(wants);
                    self.renegotiating = false;
                    self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                    return Ok(());
                }
                Some(Purpose::JoinSubscriber) => {
                    // The subscriber join failed as a whole: start over with a fresh handle.
                    self.asked.clear();
                    self.sub_handle = None;
                    self.renegotiating = false;
                    self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                    return Ok(());
                }
                Some(_) => return Err(e),
                None => return Ok(()),
            }
        }
        let data = &m["plugindata"]["data"];
        if data.get("publishers").is_some() {
            self.publishers(&data["publishers"]);
        }
        let from_sub = m["sender"]
            .as_u64()
            .is_some_and(|s| Some(s) == self.sub_handle);
        if from_sub && m["jsep"]["type"] == "offer" {
            let offer = SdpOffer::from_sdp_string(m["jsep"]["sdp"].as_str().unwrap_or_default())
                .map_err(|e| format!("bad subscriber offer: {e}"))?;
            let answer = self
                .media
                .subscriber
                .rtc
                .sdp_api()
                .accept_offer(offer)
                .map_err(|e| format!("subscriber offer refused: {e}"))?;
            self.media.subscriber.kick();
            let jsep = json!({"type": "answer", "sdp": answer.to_sdp_string(), "trickle": false});
            let handle = self.sub_handle.unwrap_or_default();
            let tx = self
                .send(
                    ws,
                    Self::message(handle, json!({"request": "start"}), Some(jsep)),
                )
                .await?;
            self.pending.insert(tx, Purpose::Start);
        }
        if from_sub
            && (data["started"] == "ok"
                || (data["videoroom"] == "updated" && m["jsep"].is_null() && purpose.is_some()))
        {
            self.renegotiating = false;
        }
        if matches!(purpose, Some(Purpose::Start)) {
            self.renegotiating = false;
        }
        Ok(())
    }

    async fn run(&mut self, ws: &mut Ws, leave_at: Instant) -> End {
        let shared = &*self.ctx.shared;
        let mut buf = vec![0u8; MTU];
        loop {
            while let Some(m) = self.backlog.pop_front() {
                if let Err(reason) = self.handle(ws, m).await {
                    shared.dropped(reason);
                    return End::Dropped;
                }
            }
            if let Err(reason) = self.ask(ws).await {
                shared.dropped(reason);
                return End::Dropped;
            }
            let now = match self
                .media
                .turn(shared, &self.ctx.scenario, self.index, leave_at)
            {
                Ok(now) => now,
                Err(end) => return end,
            };
            if now >= self.next_keepalive {
                self.next_keepalive = now + KEEPALIVE;
                match self.send(ws, json!({"janus": "keepalive"})).await {
                    Ok(tx) => {
                        self.pending.insert(tx, Purpose::Keepalive);
                    }
                    Err(reason) => {
                        shared.dropped(reason);
                        return End::Dropped;
                    }
                }
            }
            let until = self.retry_at.map_or(leave_at, |t| t.min(leave_at));
            let until = until.min(self.next_keepalive);
            match self.media.wait(shared, ws, now, until, &mut buf).await {
                Some(Signal::Closed) => {
                    if shared.stopping() {
                        return End::Stopped;
                    }
                    shared.dropped("signal connection closed by the server");
                    return End::Dropped;
                }
                Some(Signal::Message(Message::Text(t))) => {
                    let Ok(m) = serde_json::from_str::<Value>(&t) else {
                        shared.dropped("undecodable Janus message");
                        return End::Dropped;
                    };
                    self.backlog.push_back(m);
                }
                Some(Signal::Message(_)) | None => {}
            }
        }
    }
}

/// A VideoRoom error inside plugindata, as "Janus error N: reason".
fn plugin_error(m: &Value) -> Option<String> {
    let data = &m["plugindata"]["data"];
    data.get("error_code").map(|code| {
        format!(
            "Janus error {code}: {}",
            data["error"].as_str().unwrap_or("?")
        )
    })
}

async fn connect(url: &str) -> Result<Ws, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad Janus URL: {e}"))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tungstenite::http::HeaderValue::from_static("janus-protocol"),
    );
    match tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Err(_) => Err("signal connection timed out".into()),
        Ok(Err(tungstenite::Error::Http(r))) => {
            Err(format!("refused: HTTP {}", r.status().as_u16()))
        }
        Ok(Err(tungstenite::Error::Io(e))) => Err(format!("cannot connect: {}", e.kind())),
        Ok(Err(e)) => Err(format!("signal connection failed: {e}")),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// One stay in the Janus room, from connect to leave.
pub async fn session(ctx: &Ctx, target: &JanusTarget, index: u32, leave_at: Instant) -> End {
    let shared = &ctx.shared;
    shared.add(Counter::JoinsStarted, 1);
    let started = Instant::now();
    let mut ws = match connect(&target.ws_url).await {
        Ok(ws) => ws,
        Err(reason) => {
            shared.fail(reason);
            return End::Failed;
        }
    };
    let now = Instant::now();
    let media = match Media::bind(ctx.bind_ip, index, ctx.start, &ctx.scenario, started).await {
        Ok(m) => m,
        Err(e) => {
            shared.fail(format!("local setup failed: {e}"));
            return End::Failed;
        }
    };
    let mut j = Janus {
        ctx,
        index,
        session: 0,
        pub_handle: 0,
        sub_handle: None,
        next_tx: 0,
        pending: HashMap::new(),
        backlog: VecDeque::new(),
        media,
        wanted: Vec::new(),
        asked: HashSet::new(),
        renegotiating: false,
        retry_at: None,
        next_keepalive: now + KEEPALIVE,
    };
    if let Err(reason) = j.join(&mut ws, started).await {
        shared.fail(reason);
        let _ = ws.close(None).await;
        return End::Failed;
    }
    let end = j.run(&mut ws, leave_at).await;
    j.media.receiver.finish(shared);
    if end != End::Dropped {
        // Destroying the session hangs up both peer connections and tells the room.
        let _ = j.send(&mut ws, json!({"janus": "destroy"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        shared.add(Counter::Left, 1);
    }
    end
}

impl Janus<'_> {
    /// Session, publisher handle, join, and publish with an offer.
    async fn join(&mut self, ws: &mut Ws, started: Instant) -> Result<(), String> {
        let tx = self.send(ws, json!({"janus": "create"})).await?;
        let m = self.wait(ws, &tx, |m| m["janus"] == "success").await?;
        self.session = m["data"]["id"].as_u64().ok_or("create gave no session")?;
        let tx = self
            .send(
                ws,
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        let m = self.wait(ws, &tx, |m| m["janus"] == "success").await?;
        self.pub_handle = m["data"]["id"].as_u64().ok_or("attach gave no handle")?;
        let body = json!({
            "request": "join", "ptype": "publisher", "room": ROOM,
            "id": ID_BASE + u64::from(self.index), "display": format!("lg-{}", self.index),
        });
        let tx = self
            .send(ws, Self::message(self.pub_handle, body, None))
            .await?;
        let m = self
            .wait(ws, &tx, |m| {
                m["plugindata"]["data"]["videoroom"] == "joined"
            })
            .await?;
        self.ctx.shared.record_join(started.elapsed());
        self.ctx.shared.add(Counter::Joined, 1);
        self.publishers(&m["plugindata"]["data"]["publishers"]);
        if let Some((sdp, pending)) = self.offer() {
            // str0m lists the rids in the order added, lowest first: tell Janus so.
            let jsep = json!({"type": "offer", "sdp": sdp, "trickle": false, "rid_order": "lmh"});
            let tx = self
                .send(
                    ws,
                    Self::message(self.pub_handle, json!({"request": "publish"}), Some(jsep)),
                )
                .await?;
            let m = self
                .wait(ws, &tx, |m| m["jsep"]["type"] == "answer")
                .await?;
            let answer = SdpAnswer::from_sdp_string(m["jsep"]["sdp"].as_str().unwrap_or_default())
                .map_err(|e| format!("bad publisher answer: {e}"))?;
            self.media
                .publisher
                .rtc
                .sdp_api()
                .accept_answer(pending, answer)
                .map_err(|e| format!("publisher answer refused: {e}"))?;
            self.media.publisher.kick();
        }
        Ok(())
    }
}
