//! Recording: LiveKit's Egress API (`/twirp/livekit.Egress/*`) over the record plane.
//!
//! The media workers hand every frame of a recorded room to the record tap (a bounded queue:
//! the media plane never waits). A router thread passes each frame to the egresses recording
//! its room; each egress is a thread of its own running a [`Composite`] (decode, composite,
//! mix, encode, mux), pinned to the record cores. Room composites, participant and track
//! egresses write files under `<data_dir>/recordings/`. Status goes to ListEgress and to the
//! egress_started / egress_updated / egress_ended webhooks; a recording that fails (a full
//! disk) ends with its error there, and the meeting goes on.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parloir_media::{Container, Layout, VideoSpec};
use parloir_record::{Composite, CompositeConfig, Request};
use parloir_sfu::{Command, RecordFrame, RecordTap, ServiceCall, ServiceError, proto};

use crate::media::MediaHandle;
use crate::metrics::Metrics;
use crate::webhook::Webhooks;

/// Frames the tap's queue holds (about a second of 25 cameras and microphones).
const TAP_QUEUE: usize = 8_192;
/// Frames each egress's queue holds.
const EGRESS_QUEUE: usize = 4_096;
/// How far behind real time recordings run (frames later than this miss the recording).
const LATENCY: Duration = Duration::from_millis(700);
/// HLS segment length when the request gives none (LiveKit's default).
const DEFAULT_SEGMENT_S: u32 = 4;
/// The reply id of calls nobody waits for.
const NO_REPLY: u64 = u64::MAX;

/// The media workers' end of the record queue.
#[derive(Clone)]
pub struct Tap {
    tx: SyncSender<RecordFrame>,
    metrics: Arc<Metrics>,
}

impl RecordTap for Tap {
    fn frame(&mut self, frame: RecordFrame) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(frame)
        {
            self.metrics.record_dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Which frames of a room an egress takes.
#[derive(Debug, Clone, Default)]
struct Filter {
    room: String,
    /// Participant egress: only this identity.
    identity: Option<String>,
    /// Participant egress: its screen share too.
    screen_share: bool,
    /// Track egress: only this track.
    track: Option<String>,
}

impl Filter {
    /// Whether a participant gets a tile before it sends anything: everyone in a room
    /// composite, the one person of a participant egress, nobody in a track egress.
    fn shows(&self, identity: &str) -> bool {
        self.track.is_none() && self.identity.as_ref().is_none_or(|i| i == identity)
    }

    fn takes(&self, f: &RecordFrame) -> bool {
        f.room == self.room
            && self
                .identity
                .as_ref()
                .is_none_or(|i| *i == f.identity && (!f.screen_share || self.screen_share))
            && self.track.as_ref().is_none_or(|t| *t == f.track_sid)
    }
}

/// What an egress thread is told.
enum Control {
    Stop,
    Layout(Layout),
    /// A participant to show (a placeholder until its camera sends).
    Joined(Box<proto::ParticipantInfo>),
    Left(String),
    Unpublished(String),
}

struct Entry {
    info: proto::EgressInfo,
    control: Sender<Control>,
    filter: Filter,
}

/// What the router is told besides frames.
enum Route {
    Add {
        id: String,
        filter: Filter,
        frames: SyncSender<RecordFrame>,
    },
    Remove(String),
}

/// The record plane: the egress registry, its router and its threads.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Mutex<HashMap<String, Entry>>,
    routes: Mutex<Sender<Route>>,
    dir: PathBuf,
    encoders: Vec<String>,
    /// Where room composites decode and composite, when the profile puts them on a GPU.
    gpu: Option<Arc<parloir_media::gpu::Gpu>>,
    cpus: Vec<usize>,
    media: std::sync::OnceLock<MediaHandle>,
    webhooks: std::sync::OnceLock<Webhooks>,
    metrics: Arc<Metrics>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// A Twirp error: code and message.
#[derive(Debug)]
pub struct EgressError {
    pub code: &'static str,
    pub msg: String,
}

fn invalid(msg: impl Into<String>) -> EgressError {
    EgressError {
        code: "invalid_argument",
        msg: msg.into(),
    }
}

fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl Egress {
    /// Starts the router. Recordings go to `dir`; `encoders` are the hardware profile's H.264
    /// encoders in order of preference; video is decoded and composited on `gpu` when there is
    /// one; egress threads are pinned to `cpus` when not empty.
    pub fn start(
        dir: PathBuf,
        encoders: Vec<String>,
        gpu: Option<Arc<parloir_media::gpu::Gpu>>,
        cpus: Vec<usize>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Egress, Tap)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(TAP_QUEUE);
        let (routes_tx, routes_rx) = std::sync::mpsc::channel();
        let router_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("record-router".into())
            .spawn(move || route(rx, routes_rx, router_metrics))?;
        let egress = Egress {
            inner: Arc::new(Inner {
                entries: Mutex::new(HashMap::new()),
                routes: Mutex::new(routes_tx),
                dir,
                encoders,
                gpu,
                cpus,
                media: std::sync::OnceLock::new(),
                webhooks: std::sync::OnceLock::new(),
                metrics: metrics.clone(),
                threads: Mutex::new(Vec::new()),
            }),
        };
        Ok((egress, Tap { tx, metrics }))
    }

    /// Layer requests go to the rooms through `media`, status through `webhooks`.
    pub fn attach(&self, media: MediaHandle, webhooks: Webhooks) {
        let _ = self.inner.media.set(media);
        let _ = self.inner.webhooks.set(webhooks);
    }

    /// What the webhooks tell the record plane: participants leaving, tracks ending and rooms
    /// closing (their recordings end).
    pub fn observe(&self, event: &proto::WebhookEvent) {
        let room = event.room.as_ref().map(|r| r.name.as_str()).unwrap_or("");
        let entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
        for entry in entries.values() {
            if entry.info.room_name != room || entry.info.ended_at != 0 {
                continue;
            }
            let message = match event.event.as_str() {
                "room_finished" => Control::Stop,
                "participant_joined" => match &event.participant {
                    Some(p) if entry.filter.shows(&p.identity) => {
                        Control::Joined(Box::new(p.clone()))
                    }
                    _ => continue,
                },
                "participant_left" => match &event.participant {
                    Some(p) => Control::Left(p.sid.clone()),
                    None => continue,
                },
                "track_unpublished" => match &event.track {
                    Some(t) => Control::Unpublished(t.sid.clone()),
                    None => continue,
                },
                _ => continue,
            };
            let _ = entry.control.send(message);
        }
    }

    /// Handles one Egress method: its request's protobuf bytes in, the response's out.
    pub async fn call(&self, method: &str, body: &[u8]) -> Result<Vec<u8>, EgressError> {
        use prost::Message as _;
        fn typed<M: prost::Message + Default>(b: &[u8]) -> Result<M, EgressError> {
            M::decode(b).map_err(|e| EgressError {
                code: "malformed",
                msg: format!("the body does not decode: {e}"),
            })
        }
        match method {
            "StartRoomCompositeEgress" => {
                let r: proto::RoomCompositeEgressRequest = typed(body)?;
                Ok(self.start_room_composite(r).await?.encode_to_vec())
            }
            "StartParticipantEgress" => {
                let r: proto::ParticipantEgressRequest = typed(body)?;
                Ok(self.start_participant(r).await?.encode_to_vec())
            }
            "StartTrackEgress" => {
                let r: proto::TrackEgressRequest = typed(body)?;
                Ok(self.start_track(r).await?.encode_to_vec())
            }
            "UpdateLayout" => {
                let r: proto::UpdateLayoutRequest = typed(body)?;
                let layout = Layout::parse(&r.layout)
                    .ok_or_else(|| invalid(format!("unknown layout {:?}", r.layout)))?;
                let mut entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
                let entry = entries
                    .get_mut(&r.egress_id)
                    .ok_or_else(|| not_found(&r.egress_id))?;
                if let Some(proto::egress_info::Request::RoomComposite(rc)) =
                    entry.info.request.as_mut()
                {
                    rc.layout = r.layout.clone();
                } else {
                    return Err(invalid("only room composites have a layout"));
                }
                let _ = entry.control.send(Control::Layout(layout));
                entry.info.updated_at = unix_ns();
                let info = entry.info.clone();
                drop(entries);
                self.webhook("egress_updated", &info);
                Ok(info.encode_to_vec())
            }
            "StopEgress" => {
                let r: proto::StopEgressRequest = typed(body)?;
                let mut entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
                let entry = entries
                    .get_mut(&r.egress_id)
                    .ok_or_else(|| not_found(&r.egress_id))?;
                if entry.info.status != proto::EgressStatus::EgressActive as i32
                    && entry.info.status != proto::EgressStatus::EgressStarting as i32
                {
                    return Err(EgressError {
                        code: "failed_precondition",
                        msg: format!("egress {} is not active", r.egress_id),
                    });
                }
                entry.info.status = proto::EgressStatus::EgressEnding as i32;
                entry.info.updated_at = unix_ns();
                let _ = entry.control.send(Control::Stop);
                let info = entry.info.clone();
                drop(entries);
                self.webhook("egress_updated", &info);
                Ok(info.encode_to_vec())
            }
            "ListEgress" => {
                let r: proto::ListEgressRequest = typed(body)?;
                let entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
                let mut items: Vec<proto::EgressInfo> = entries
                    .values()
                    .map(|e| e.info.clone())
                    .filter(|i| r.room_name.is_empty() || i.room_name == r.room_name)
                    .filter(|i| r.egress_id.is_empty() || i.egress_id == r.egress_id)
                    .filter(|i| {
                        !r.active
                            || i.status == proto::EgressStatus::EgressActive as i32
                            || i.status == proto::EgressStatus::EgressStarting as i32
                    })
                    .collect();
                items.sort_by_key(|i| i.started_at);
                Ok(proto::ListEgressResponse {
                    items,
                    next_page_token: None,
                }
                .encode_to_vec())
            }
            "StartWebEgress" | "StartTrackCompositeEgress" | "UpdateStream" | "StartEgress" => {
                Err(EgressError {
                    code: "unimplemented",
                    msg: format!(
                        "{method} is not supported by Parloir: use StartRoomCompositeEgress, StartParticipantEgress or StartTrackEgress"
                    ),
                })
            }
            _ => Err(EgressError {
                code: "bad_route",
                msg: format!("no method {method:?} on livekit.Egress"),
            }),
        }
    }

    #[allow(deprecated, reason = "older SDKs still send the single-output field")]
    async fn start_room_composite(
        &self,
        r: proto::RoomCompositeEgressRequest,
    ) -> Result<proto::EgressInfo, EgressError> {
        let layout = Layout::parse(&r.layout).ok_or_else(|| {
            invalid(format!(
                "unknown layout {:?}: grid, speaker or single-speaker (-light/-dark)",
                r.layout
            ))
        })?;
        if r.audio_only && r.video_only {
            return Err(invalid("audio_only and video_only together record nothing"));
        }
        let legacy = match &r.output {
            Some(proto::room_composite_egress_request::Output::File(f)) => {
                Some(Target::File(f.clone()))
            }
            Some(proto::room_composite_egress_request::Output::Stream(s)) => {
                stream_targets(s)?.into_iter().next()
            }
            Some(proto::room_composite_egress_request::Output::Segments(s)) => {
                Some(Target::Segments(s.clone()))
            }
            None => None,
        };
        let targets = outputs(
            &r.file_outputs,
            legacy,
            &r.stream_outputs,
            &r.segment_outputs,
            r.image_outputs.len(),
        )?;
        let options = match &r.options {
            Some(proto::room_composite_egress_request::Options::Preset(p)) => Options::Preset(*p),
            Some(proto::room_composite_egress_request::Options::Advanced(a)) => {
                Options::Advanced(a)
            }
            None => Options::Preset(0),
        };
        let (config, outputs) =
            composite_config(layout, !r.video_only, !r.audio_only, targets, &options)?;
        let filter = Filter {
            room: r.room_name.clone(),
            ..Default::default()
        };
        let vars = [("room_name", r.room_name.clone())];
        self.launch(
            filter,
            config,
            outputs,
            &vars,
            proto::egress_info::Request::RoomComposite(r.clone()),
            proto::EgressSourceType::Web,
        )
        .await
    }

    async fn start_participant(
        &self,
        r: proto::ParticipantEgressRequest,
    ) -> Result<proto::EgressInfo, EgressError> {
        if r.identity.is_empty() {
            return Err(invalid("the participant egress needs an identity"));
        }
        let targets = outputs(
            &r.file_outputs,
            None,
            &r.stream_outputs,
            &r.segment_outputs,
            r.image_outputs.len(),
        )?;
        let options = match &r.options {
            Some(proto::participant_egress_request::Options::Preset(p)) => Options::Preset(*p),
            Some(proto::participant_egress_request::Options::Advanced(a)) => Options::Advanced(a),
            None => Options::Preset(0),
        };
        let layout = Layout::parse("single-speaker").unwrap_or_default();
        let (config, outputs) = composite_config(layout, true, true, targets, &options)?;
        let filter = Filter {
            room: r.room_name.clone(),
            identity: Some(r.identity.clone()),
            screen_share: r.screen_share,
            track: None,
        };
        let vars = [
            ("room_name", r.room_name.clone()),
            ("publisher_identity", r.identity.clone()),
        ];
        self.launch(
            filter,
            config,
            outputs,
            &vars,
            proto::egress_info::Request::Participant(r.clone()),
            proto::EgressSourceType::Sdk,
        )
        .await
    }

    async fn start_track(
        &self,
        r: proto::TrackEgressRequest,
    ) -> Result<proto::EgressInfo, EgressError> {
        let Some(proto::track_egress_request::Output::File(direct)) = &r.output else {
            return Err(invalid("track egress: only file outputs are supported"));
        };
        if r.track_id.is_empty() {
            return Err(invalid("the track egress needs a track_id"));
        }
        // The track's kind decides the container: an audio track to Ogg/Opus, video to MP4.
        let media = self
            .inner
            .media
            .get()
            .ok_or_else(|| invalid("the server is starting"))?;
        let reply = media
            .call(
                ServiceCall::ListParticipants(proto::ListParticipantsRequest {
                    room: r.room_name.clone(),
                }),
                unix_ns() / 1_000_000,
            )
            .await
            .map_err(|e| EgressError {
                code: "unavailable",
                msg: e.to_string(),
            })?;
        let participants = match reply {
            Ok(parloir_sfu::ServiceReply::Participants(p)) => p.participants,
            Ok(_) => Vec::new(),
            Err(e) => return Err(service_error(e)),
        };
        let track = participants
            .iter()
            .flat_map(|p| p.tracks.iter())
            .find(|t| t.sid == r.track_id)
            .ok_or_else(|| not_found(&r.track_id))?;
        let audio = track.r#type == proto::TrackType::Audio as i32;
        let target = Target::File(proto::EncodedFileOutput {
            file_type: if audio {
                proto::EncodedFileType::Ogg as i32
            } else {
                proto::EncodedFileType::Mp4 as i32
            },
            filepath: direct.filepath.clone(),
            ..Default::default()
        });
        let layout = Layout::parse("single-speaker").unwrap_or_default();
        let targets = vec![target];
        let (config, outputs) =
            composite_config(layout, !audio, audio, targets, &Options::Preset(0))?;
        let filter = Filter {
            room: r.room_name.clone(),
            track: Some(r.track_id.clone()),
            ..Default::default()
        };
        let vars = [
            ("room_name", r.room_name.clone()),
            ("track_id", r.track_id.clone()),
        ];
        self.launch(
            filter,
            config,
            outputs,
            &vars,
            proto::egress_info::Request::Track(r.clone()),
            proto::EgressSourceType::Sdk,
        )
        .await
    }

    /// Checks the room, opens the file, starts the egress thread and routes the room to it.
    async fn launch(
        &self,
        filter: Filter,
        mut config: CompositeConfig,
        wanted: Vec<(Target, Container)>,
        vars: &[(&str, String)],
        request: proto::egress_info::Request,
        source_type: proto::EgressSourceType,
    ) -> Result<proto::EgressInfo, EgressError> {
        if let Some(v) = config.video.as_mut() {
            v.encoders = self.inner.encoders.clone();
            config.gpu = self.inner.gpu.clone();
        }
        // The destinations are checked before the room is touched: a refused request changes
        // nothing.
        for (target, container) in &wanted {
            destination(
                &self.inner.dir,
                target,
                container,
                vars,
                &proto::Room::default(),
            )?;
        }
        let media = self
            .inner
            .media
            .get()
            .ok_or_else(|| invalid("the server is starting"))?
            .clone();
        let room = record(&media, &filter.room, true).await?;
        let egress_id = format!("EG_{}", random_id());
        let mut dests = Vec::new();
        let mut outputs = Vec::new();
        for (target, mut container) in wanted {
            let dest = match destination(&self.inner.dir, &target, &container, vars, &room) {
                Ok(d) => d,
                Err(e) => {
                    let _ = record(&media, &filter.room, false).await;
                    return Err(e);
                }
            };
            if let Destination::Hls { segments, .. } = &dest
                && let Container::Hls { segments: s, .. } = &mut container
            {
                s.clone_from(segments);
            }
            outputs.push((dest.path(), container));
            dests.push(dest);
        }
        // Opening may connect to a streaming server: off the async threads.
        let opened = tokio::task::spawn_blocking(move || {
            for (path, _) in &outputs {
                if !path.to_string_lossy().contains("://") {
                    path.parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            Composite::start(&outputs, config, Instant::now()).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let composite = match opened {
            Ok(c) => c,
            Err(e) => {
                let _ = record(&media, &filter.room, false).await;
                return Err(invalid(format!("cannot write the recording: {e}")));
            }
        };
        let now = unix_ns();
        let filename = dests
            .iter()
            .map(|d| d.path().display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut info = proto::EgressInfo {
            egress_id: egress_id.clone(),
            room_id: room.sid.clone(),
            room_name: filter.room.clone(),
            source_type: source_type as i32,
            status: proto::EgressStatus::EgressActive as i32,
            started_at: now,
            updated_at: now,
            request: Some(request),
            ..Default::default()
        };
        for dest in &dests {
            match dest {
                Destination::File(path) => info.file_results.push(proto::FileInfo {
                    filename: path.display().to_string(),
                    started_at: now,
                    ..Default::default()
                }),
                Destination::Hls { playlist, .. } => {
                    info.segment_results.push(proto::SegmentsInfo {
                        playlist_name: playlist.display().to_string(),
                        started_at: now,
                        ..Default::default()
                    })
                }
                Destination::Rtmp(url) => info.stream_results.push(proto::StreamInfo {
                    url: url.clone(),
                    started_at: now,
                    status: proto::stream_info::Status::Active as i32,
                    ..Default::default()
                }),
            }
        }
        let (frames_tx, frames_rx) = std::sync::mpsc::sync_channel(EGRESS_QUEUE);
        let (control_tx, control_rx) = std::sync::mpsc::channel();
        {
            let mut entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
            forget_oldest_ended(&mut entries);
            entries.insert(
                egress_id.clone(),
                Entry {
                    info: info.clone(),
                    control: control_tx.clone(),
                    filter: filter.clone(),
                },
            );
        }
        // Who is in the room already gets a tile at once (later joins come through the
        // participant_joined webhook).
        if let Ok(Ok(parloir_sfu::ServiceReply::Participants(list))) = media
            .call(
                ServiceCall::ListParticipants(proto::ListParticipantsRequest {
                    room: filter.room.clone(),
                }),
                unix_ns() / 1_000_000,
            )
            .await
        {
            for p in list.participants {
                if filter.shows(&p.identity) {
                    let _ = control_tx.send(Control::Joined(Box::new(p)));
                }
            }
        }
        let this = self.clone();
        let id = egress_id.clone();
        let room_name = filter.room.clone();
        let encoder = composite.video_encoder().map(str::to_string);
        let thread = match std::thread::Builder::new()
            .name(format!("egress-{}", &egress_id[3..egress_id.len().min(11)]))
            .spawn(move || this.run(id, room_name, dests, composite, frames_rx, control_rx))
        {
            Ok(t) => t,
            Err(e) => {
                self.inner
                    .entries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&egress_id);
                let _ = record(&media, &filter.room, false).await;
                return Err(invalid(format!("cannot start the recording thread: {e}")));
            }
        };
        {
            // Finished threads are forgotten (their handles would pile up for the server's life).
            let mut threads = self.inner.threads.lock().unwrap_or_else(|e| e.into_inner());
            threads.retain(|t| !t.is_finished());
            threads.push(thread);
        }
        let _ = self
            .inner
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Route::Add {
                id: egress_id.clone(),
                filter,
                frames: frames_tx,
            });
        self.inner.metrics.egress_started.fetch_add(1, Relaxed);
        tracing::info!(egress = %egress_id, room = %info.room_name, outputs = %filename, encoder = ?encoder, "recording started");
        self.webhook("egress_started", &info);
        Ok(info)
    }

    /// An egress thread: frames in, the composite advanced every 10 ms, layer requests to
    /// the room; on Stop, the last `LATENCY` of media is still taken, then the file closes.
    fn run(
        &self,
        id: String,
        room: String,
        dests: Vec<Destination>,
        mut composite: Composite,
        frames: Receiver<RecordFrame>,
        control: Receiver<Control>,
    ) {
        if !self.inner.cpus.is_empty()
            && let Err(e) = parloir_net::topology::pin_current_thread(&self.inner.cpus)
        {
            tracing::warn!(
                "cannot pin the recording thread to {:?}: {e}",
                self.inner.cpus
            );
        }
        let mut stop_at: Option<Instant> = None;
        let mut failed_outputs = 0;
        let outcome = loop {
            match frames.recv_timeout(Duration::from_millis(10)) {
                Ok(f) => {
                    composite.frame(f);
                    for f in frames.try_iter().take(512) {
                        composite.frame(f);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop_at = stop_at.or(Some(Instant::now())),
            }
            for c in control.try_iter() {
                match c {
                    Control::Stop => stop_at = stop_at.or(Some(Instant::now())),
                    Control::Layout(l) => composite.set_layout(l),
                    Control::Left(p) => composite.participant_left(&p),
                    Control::Unpublished(t) => composite.track_unpublished(&t),
                    Control::Joined(p) => composite.participant_joined(
                        &p.sid,
                        if p.name.is_empty() {
                            &p.identity
                        } else {
                            &p.name
                        },
                        p.joined_at_ms,
                    ),
                }
            }
            let now = Instant::now();
            if let Err(e) = composite.advance(now) {
                break Err(e.to_string());
            }
            let failures = composite.failures();
            if failures.len() > failed_outputs {
                failed_outputs = failures.len();
                self.output_failed(&id, &failures);
            }
            if let Some(media) = self.inner.media.get() {
                for Request::Layer {
                    track_sid,
                    quality,
                    keyframe,
                } in composite.take_requests()
                {
                    let _ = media.send(Command::Service {
                        id: NO_REPLY,
                        call: Box::new(ServiceCall::RecordLayer {
                            room: room.clone(),
                            track_sid,
                            quality,
                            keyframe,
                        }),
                        unix_ms: unix_ns() / 1_000_000,
                    });
                }
            }
            if stop_at.is_some_and(|s| now >= s + LATENCY) {
                tracing::info!(egress = %id, counters = ?composite.stats, "recording ends");
                break composite.finish(now).map_err(|e| e.to_string());
            }
        };
        let _ = self
            .inner
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Route::Remove(id.clone()));
        if let Some(media) = self.inner.media.get() {
            let _ = media.send(Command::Service {
                id: NO_REPLY,
                call: Box::new(ServiceCall::Record { room, on: false }),
                unix_ms: unix_ns() / 1_000_000,
            });
        }
        let info = {
            let mut entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = entries.get_mut(&id) else {
                return;
            };
            let now = unix_ns();
            entry.info.ended_at = now;
            entry.info.updated_at = now;
            let (duration, results) = match &outcome {
                Ok(done) => {
                    entry.info.status = proto::EgressStatus::EgressComplete as i32;
                    tracing::info!(egress = %id, seconds = done.duration, outputs = ?done.outputs, "recording complete");
                    ((done.duration * 1e9) as i64, done.outputs.clone())
                }
                Err(e) => {
                    entry.info.status = proto::EgressStatus::EgressFailed as i32;
                    entry.info.error = e.clone();
                    entry.info.error_code = 500;
                    tracing::warn!(egress = %id, error = %e, "recording failed; the meeting goes on");
                    (0, Vec::new())
                }
            };
            let error_of = |path: &str| {
                results
                    .iter()
                    .find(|r| r.path.to_string_lossy() == path)
                    .and_then(|r| r.error.clone())
            };
            for f in &mut entry.info.file_results {
                f.ended_at = now;
                f.duration = duration;
                f.size = std::fs::metadata(&f.filename).map_or(0, |m| m.len() as i64);
                f.location.clone_from(&f.filename);
            }
            for s in &mut entry.info.segment_results {
                s.ended_at = now;
                s.duration = duration;
                s.playlist_location.clone_from(&s.playlist_name);
                let (count, size) = hls_segments(Path::new(&s.playlist_name));
                s.segment_count = count;
                s.size = size;
            }
            for s in &mut entry.info.stream_results {
                s.ended_at = now;
                s.duration = duration;
                let error = match &outcome {
                    Ok(_) => error_of(&s.url),
                    Err(e) => Some(e.clone()),
                };
                s.status = match error {
                    None => proto::stream_info::Status::Finished as i32,
                    Some(e) => {
                        s.error = e;
                        proto::stream_info::Status::Failed as i32
                    }
                };
            }
            #[allow(deprecated, reason = "older SDKs read the single result")]
            let result = match dests.first() {
                None => None,
                Some(Destination::File(_)) => entry
                    .info
                    .file_results
                    .first()
                    .cloned()
                    .map(proto::egress_info::Result::File),
                Some(Destination::Hls { .. }) => entry
                    .info
                    .segment_results
                    .first()
                    .cloned()
                    .map(proto::egress_info::Result::Segments),
                Some(Destination::Rtmp(_)) => {
                    Some(proto::egress_info::Result::Stream(proto::StreamInfoList {
                        info: entry.info.stream_results.clone(),
                    }))
                }
            };
            entry.info.result = result;
            entry.info.clone()
        };
        if outcome.is_err() {
            self.inner.metrics.egress_failed.fetch_add(1, Relaxed);
        }
        self.webhook("egress_ended", &info);
    }

    /// Marks the streams that failed (a streaming platform went away) while the egress goes on
    /// with its other outputs, and says so with egress_updated.
    fn output_failed(&self, id: &str, failures: &[(PathBuf, String)]) {
        let info = {
            let mut entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = entries.get_mut(id) else {
                return;
            };
            for s in &mut entry.info.stream_results {
                if let Some((_, e)) = failures.iter().find(|(p, _)| p.to_string_lossy() == s.url) {
                    s.status = proto::stream_info::Status::Failed as i32;
                    s.error.clone_from(e);
                    s.ended_at = unix_ns();
                }
            }
            entry.info.updated_at = unix_ns();
            entry.info.clone()
        };
        tracing::warn!(egress = %id, ?failures, "an output of the recording failed; the others go on");
        self.webhook("egress_updated", &info);
    }

    /// Ends every recording (server shutdown) and waits for their files, at most `limit`.
    pub fn shutdown(&self, limit: Duration) {
        {
            let entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
            for e in entries.values() {
                let _ = e.control.send(Control::Stop);
            }
        }
        let threads: Vec<_> =
            std::mem::take(&mut *self.inner.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = Instant::now() + limit;
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    fn webhook(&self, event: &str, info: &proto::EgressInfo) {
        if let Some(w) = self.inner.webhooks.get() {
            w.send(proto::WebhookEvent {
                event: event.to_string(),
                egress_info: Some(info.clone()),
                ..Default::default()
            });
        }
    }
}

/// The router: frames to the egresses of their room.
fn route(frames: Receiver<RecordFrame>, routes: Receiver<Route>, metrics: Arc<Metrics>) {
    struct Target {
        id: String,
        filter: Filter,
        frames: SyncSender<RecordFrame>,
    }
    let mut targets: Vec<Target> = Vec::new();
    loop {
        let frame = match frames.recv_timeout(Duration::from_millis(20)) {
            Ok(f) => Some(f),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        for r in routes.try_iter() {
            match r {
                Route::Add { id, filter, frames } => targets.push(Target { id, filter, frames }),
                Route::Remove(id) => targets.retain(|t| t.id != id),
            }
        }
        let Some(frame) = frame else { continue };
        // A copy per taker: the encoded data itself is shared.
        for t in targets.iter().filter(|t| t.filter.takes(&frame)) {
            if t.frames.try_send(frame.clone()).is_err() {
                metrics.record_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

enum Options<'a> {
    Preset(i32),
    Advanced(&'a proto::EncodingOptions),
}

/// Ended egresses ListEgress still reports; older ones are forgotten.
const KEEP_ENDED: usize = 1_000;

/// Keeps at most [`KEEP_ENDED`] ended egresses, the most recent.
fn forget_oldest_ended(entries: &mut HashMap<String, Entry>) {
    let mut ended: Vec<(i64, String)> = entries
        .iter()
        .filter(|(_, e)| e.info.ended_at != 0)
        .map(|(id, e)| (e.info.ended_at, id.clone()))
        .collect();
    if ended.len() < KEEP_ENDED {
        return;
    }
    ended.sort();
    for (_, id) in &ended[..=ended.len() - KEEP_ENDED] {
        entries.remove(id);
    }
}

/// Where a request asks the egress to write.
#[derive(Debug, Clone)]
enum Target {
    File(proto::EncodedFileOutput),
    Segments(proto::SegmentedFileOutput),
    /// An RTMP(S) URL.
    Stream(String),
}

/// Streams one egress may send at once.
const MAX_STREAMS: usize = 4;

/// The outputs of a request: at most one file and one HLS playlist, and RTMP streams, all fed
/// by one encoding.
fn outputs(
    files: &[proto::EncodedFileOutput],
    legacy: Option<Target>,
    streams: &[proto::StreamOutput],
    segments: &[proto::SegmentedFileOutput],
    images: usize,
) -> Result<Vec<Target>, EgressError> {
    if images > 0 {
        return Err(invalid("image outputs are not supported"));
    }
    let mut all: Vec<Target> = files.iter().cloned().map(Target::File).collect();
    all.extend(segments.iter().cloned().map(Target::Segments));
    for s in streams {
        all.extend(stream_targets(s)?);
    }
    all.extend(legacy);
    let count = |f: fn(&Target) -> bool| all.iter().filter(|t| f(t)).count();
    if all.is_empty() {
        return Err(invalid(
            "the request has no output: add a file, segment (HLS) or stream (RTMP) output",
        ));
    }
    if count(|t| matches!(t, Target::File(_))) > 1 {
        return Err(invalid("one file output per egress"));
    }
    if count(|t| matches!(t, Target::Segments(_))) > 1 {
        return Err(invalid("one segment (HLS) output per egress"));
    }
    if count(|t| matches!(t, Target::Stream(_))) > MAX_STREAMS {
        return Err(invalid(format!(
            "at most {MAX_STREAMS} stream URLs per egress"
        )));
    }
    Ok(all)
}

/// A stream output: its RTMP or RTMPS URLs.
fn stream_targets(s: &proto::StreamOutput) -> Result<Vec<Target>, EgressError> {
    match proto::StreamProtocol::try_from(s.protocol) {
        Ok(proto::StreamProtocol::DefaultProtocol | proto::StreamProtocol::Rtmp) => {}
        _ => {
            return Err(EgressError {
                code: "unimplemented",
                msg: "stream outputs are RTMP: SRT and WebSocket are not supported".into(),
            });
        }
    }
    if s.urls.is_empty() {
        return Err(invalid("the stream output has no URL"));
    }
    s.urls
        .iter()
        .map(|url| {
            if url.starts_with("rtmp://") || url.starts_with("rtmps://") {
                Ok(Target::Stream(url.clone()))
            } else {
                Err(invalid(format!(
                    "{url:?} is not an rtmp:// or rtmps:// URL"
                )))
            }
        })
        .collect()
}

/// Where an egress writes, resolved.
#[derive(Debug, Clone)]
enum Destination {
    File(PathBuf),
    Hls {
        playlist: PathBuf,
        segments: PathBuf,
    },
    Rtmp(String),
}

impl Destination {
    /// What the muxer opens: the file, the playlist or the URL.
    fn path(&self) -> PathBuf {
        match self {
            Destination::File(p) => p.clone(),
            Destination::Hls { playlist, .. } => playlist.clone(),
            Destination::Rtmp(url) => PathBuf::from(url),
        }
    }
}

/// Resolves a target under the recordings directory `dir`.
fn destination(
    dir: &Path,
    target: &Target,
    container: &Container,
    vars: &[(&str, String)],
    room: &proto::Room,
) -> Result<Destination, EgressError> {
    Ok(match target {
        Target::File(f) => {
            let extension = if *container == Container::Ogg {
                "ogg"
            } else {
                "mp4"
            };
            Destination::File(output_path(dir, &f.filepath, vars, room, Some(extension))?)
        }
        Target::Segments(s) => {
            let prefix = output_path(dir, &s.filename_prefix, vars, room, None)?;
            let playlist = if s.playlist_name.is_empty() {
                let mut p = prefix.clone().into_os_string();
                p.push(".m3u8");
                PathBuf::from(p)
            } else {
                let name = Path::new(&s.playlist_name);
                let plain = matches!(
                    name.components().collect::<Vec<_>>().as_slice(),
                    [Component::Normal(_)]
                );
                if !plain {
                    return Err(invalid(format!(
                        "{:?}: the playlist name is a file name, beside the segments",
                        s.playlist_name
                    )));
                }
                let mut p = prefix.with_file_name(name).into_os_string();
                if !p.to_string_lossy().ends_with(".m3u8") {
                    p.push(".m3u8");
                }
                PathBuf::from(p)
            };
            let mut segments = prefix.into_os_string();
            segments.push("_%05d.ts");
            Destination::Hls {
                playlist,
                segments: PathBuf::from(segments),
            }
        }
        Target::Stream(url) => Destination::Rtmp(url.clone()),
    })
}

/// The segments an HLS playlist lists, and their bytes.
fn hls_segments(playlist: &Path) -> (i64, i64) {
    let Ok(text) = std::fs::read_to_string(playlist) else {
        return (0, 0);
    };
    let dir = playlist.parent().unwrap_or(Path::new("."));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .fold((0, 0), |(n, size), name| {
            let bytes = std::fs::metadata(dir.join(name.trim())).map_or(0, |m| m.len() as i64);
            (n + 1, size + bytes)
        })
}

/// The container of one target.
fn container_of(target: &Target, video: bool) -> Result<Container, EgressError> {
    Ok(match target {
        Target::File(file) => match proto::EncodedFileType::try_from(file.file_type) {
            Ok(proto::EncodedFileType::DefaultFiletype) if !video => Container::Ogg,
            Ok(proto::EncodedFileType::DefaultFiletype | proto::EncodedFileType::Mp4) => {
                Container::Mp4
            }
            Ok(proto::EncodedFileType::Ogg) if !video => Container::Ogg,
            Ok(proto::EncodedFileType::Ogg) => {
                return Err(invalid("Ogg holds audio only: set audio_only, or use MP4"));
            }
            _ => return Err(invalid("unsupported file type: MP4, or Ogg for audio only")),
        },
        Target::Segments(s) => {
            if !matches!(
                proto::SegmentedFileProtocol::try_from(s.protocol),
                Ok(proto::SegmentedFileProtocol::DefaultSegmentedFileProtocol
                    | proto::SegmentedFileProtocol::HlsProtocol)
            ) {
                return Err(invalid("segment outputs are HLS"));
            }
            Container::Hls {
                segment_seconds: if s.segment_duration > 0 {
                    s.segment_duration
                } else {
                    DEFAULT_SEGMENT_S
                },
                // Filled in once the destination is resolved.
                segments: PathBuf::new(),
            }
        }
        Target::Stream(_) => Container::Rtmp,
    })
}

/// The composite's settings from the request's file type and encoding options.
fn composite_config(
    layout: Layout,
    video: bool,
    audio: bool,
    targets: Vec<Target>,
    options: &Options<'_>,
) -> Result<(CompositeConfig, Vec<(Target, Container)>), EgressError> {
    let outputs = targets
        .into_iter()
        .map(|t| container_of(&t, video).map(|c| (t, c)))
        .collect::<Result<Vec<_>, _>>()?;
    if outputs.iter().any(|(_, c)| *c == Container::Ogg) && outputs.len() > 1 {
        return Err(invalid(
            "an Ogg (audio only) file cannot go with other outputs",
        ));
    }

    let (width, height, fps, kbps, key, audio_kbps) = match options {
        Options::Preset(p) => match proto::EncodingOptionsPreset::try_from(*p) {
            Ok(proto::EncodingOptionsPreset::H264720p30) => (1280, 720, 30, 3000, 4.0, 128),
            Ok(proto::EncodingOptionsPreset::H264720p60) => (1280, 720, 60, 4500, 4.0, 128),
            Ok(proto::EncodingOptionsPreset::H2641080p30) => (1920, 1080, 30, 4500, 4.0, 128),
            Ok(proto::EncodingOptionsPreset::H2641080p60) => (1920, 1080, 60, 6000, 4.0, 128),
            Ok(proto::EncodingOptionsPreset::PortraitH264720p30) => (720, 1280, 30, 3000, 4.0, 128),
            Ok(proto::EncodingOptionsPreset::PortraitH264720p60) => (720, 1280, 60, 4500, 4.0, 128),
            Ok(proto::EncodingOptionsPreset::PortraitH2641080p30) => {
                (1080, 1920, 30, 4500, 4.0, 128)
            }
            Ok(proto::EncodingOptionsPreset::PortraitH2641080p60) => {
                (1080, 1920, 60, 6000, 4.0, 128)
            }
            _ => return Err(invalid(format!("unknown encoding preset {p}"))),
        },
        Options::Advanced(a) => {
            match proto::VideoCodec::try_from(a.video_codec) {
                Ok(
                    proto::VideoCodec::DefaultVc
                    | proto::VideoCodec::H264Baseline
                    | proto::VideoCodec::H264Main
                    | proto::VideoCodec::H264High,
                ) => {}
                _ => {
                    return Err(invalid("unsupported video codec: recordings are H.264"));
                }
            }
            match proto::AudioCodec::try_from(a.audio_codec) {
                Ok(
                    proto::AudioCodec::DefaultAc | proto::AudioCodec::Aac | proto::AudioCodec::Opus,
                ) => {}
                _ => return Err(invalid("unsupported audio codec: AAC (MP4) or Opus (Ogg)")),
            }
            let w = if a.width > 0 { a.width } else { 1280 };
            let h = if a.height > 0 { a.height } else { 720 };
            let fps = if a.framerate > 0 { a.framerate } else { 30 };
            if !(16..=4096).contains(&w) || !(16..=4096).contains(&h) || !(1..=60).contains(&fps) {
                return Err(invalid(format!("unsupported size or rate {w}x{h}@{fps}")));
            }
            let kbps = if a.video_bitrate > 0 {
                a.video_bitrate
            } else {
                3000
            };
            let key = if a.key_frame_interval > 0.0 {
                a.key_frame_interval
            } else {
                4.0
            };
            let audio_kbps = if a.audio_bitrate > 0 {
                a.audio_bitrate
            } else {
                128
            };
            (
                w as u32,
                h as u32,
                fps as u32,
                kbps as u32,
                key,
                audio_kbps as u32,
            )
        }
    };
    Ok((
        CompositeConfig {
            layout,
            video: video.then(|| VideoSpec {
                width: width & !1,
                height: height & !1,
                fps,
                bitrate: kbps * 1000,
                // Fragments are cut at key frames: at most 2 s apart, whatever was asked.
                key_interval: key.clamp(1.0, 2.0) as u32,
                encoders: Vec::new(),
            }),
            audio,
            audio_bitrate: audio_kbps * 1000,
            latency: LATENCY,
            gpu: None,
        },
        outputs,
    ))
}

/// The file's path under `dir`: the request's `filepath` with LiveKit's `{room_name}`,
/// `{room_id}`, `{time}`, `{utc}` (and `{publisher_identity}`, `{track_id}`) filled in, the
/// extension added when missing. Paths leaving `dir` are refused.
fn output_path(
    dir: &Path,
    filepath: &str,
    vars: &[(&str, String)],
    room: &proto::Room,
    extension: Option<&str>,
) -> Result<PathBuf, EgressError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let template = if filepath.is_empty() {
        "{room_name}-{time}"
    } else {
        filepath
    };
    let mut path = template
        .replace("{room_id}", &room.sid)
        .replace("{time}", &timestamp(now))
        .replace("{utc}", &now.to_string());
    for (k, v) in vars {
        path = path.replace(&format!("{{{k}}}"), &sanitize(v));
    }
    let relative = Path::new(&path);
    let relative = if relative.is_absolute() {
        relative.strip_prefix(dir).map_err(|_| {
            invalid(format!(
                "{path}: recordings are written under {}; give a relative path",
                dir.display()
            ))
        })?
    } else {
        relative
    };
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
        || relative.as_os_str().is_empty()
    {
        return Err(invalid(format!("{path}: not a valid recording path")));
    }
    let mut full = dir.join(relative).into_os_string();
    if let Some(extension) = extension
        && !full
            .to_string_lossy()
            .to_lowercase()
            .ends_with(&format!(".{extension}"))
    {
        full.push(format!(".{extension}"));
    }
    Ok(PathBuf::from(full))
}

/// Characters safe in a file name; others become `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .replace("..", "_")
}

/// `YYYY-MM-DDTHHMMSS` (UTC) for `{time}`.
fn timestamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn random_id() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn not_found(what: &str) -> EgressError {
    EgressError {
        code: "not_found",
        msg: format!("{what} not found"),
    }
}

fn service_error(e: ServiceError) -> EgressError {
    match e {
        ServiceError::NotFound(m) => EgressError {
            code: "not_found",
            msg: m,
        },
        other => invalid(other.to_string()),
    }
}

/// Turns a room's recording on or off in the SFU; the room must exist.
async fn record(media: &MediaHandle, room: &str, on: bool) -> Result<proto::Room, EgressError> {
    if room.is_empty() {
        return Err(invalid("the request needs a room_name"));
    }
    let reply = media
        .call(
            ServiceCall::Record {
                room: room.to_string(),
                on,
            },
            unix_ns() / 1_000_000,
        )
        .await
        .map_err(|e| EgressError {
            code: "unavailable",
            msg: e.to_string(),
        })?;
    match reply {
        Ok(parloir_sfu::ServiceReply::Room(r)) => Ok(r),
        Ok(_) => Err(invalid("unexpected reply")),
        Err(ServiceError::NotFound(_)) => Err(not_found(&format!("room {room:?}"))),
        Err(e) => Err(service_error(e)),
    }
}

/// The GPU room composites decode and composite on: the first GPU, when the hardware profile's
/// `video.composite` list starts with `cuda` and it opens (the driver is there, the kernels
/// compile); else `None`, the CPU path, said in the log.
pub fn composite_gpu(profile: &[String]) -> Option<Arc<parloir_media::gpu::Gpu>> {
    if profile.first().map(String::as_str) != Some("cuda") {
        return None;
    }
    match parloir_media::gpu::Gpu::open(0) {
        Ok(gpu) => {
            tracing::info!("recordings decode (NVDEC) and composite on GPU 0");
            Some(Arc::new(gpu))
        }
        Err(e) => {
            tracing::warn!("recordings composite on the CPU: the GPU is not usable ({e})");
            None
        }
    }
}

/// The H.264 encoders (FFmpeg names) of the hardware profile's `video.encode` list.
pub fn encoders(profile: &[String]) -> Vec<String> {
    profile
        .iter()
        .filter_map(|e| match e.as_str() {
            "nvenc" => Some("h264_nvenc".to_string()),
            "vaapi" => Some("h264_vaapi".to_string()),
            "qsv" => Some("h264_qsv".to_string()),
            "libx264" => Some("libx264".to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_recordings_directory() {
        let dir = Path::new("/data/recordings");
        let room = proto::Room {
            sid: "RM_x".into(),
            name: "a b".into(),
            ..Default::default()
        };
        let vars = [("room_name", "a b/../c".to_string())];
        let p = output_path(dir, "", &vars, &room, Some("mp4")).unwrap();
        assert!(p.starts_with(dir), "{p:?}");
        assert!(p.to_string_lossy().ends_with(".mp4"));
        assert!(!p.to_string_lossy().contains(".."));
        let p = output_path(dir, "meet/{room_id}.mp4", &vars, &room, Some("mp4")).unwrap();
        assert_eq!(p, Path::new("/data/recordings/meet/RM_x.mp4"));
        assert!(output_path(dir, "../x.mp4", &vars, &room, Some("mp4")).is_err());
        assert!(output_path(dir, "/etc/x.mp4", &vars, &room, Some("mp4")).is_err());
        let p = output_path(dir, "/data/recordings/y", &vars, &room, Some("ogg")).unwrap();
        assert_eq!(p, Path::new("/data/recordings/y.ogg"));
        // A dot in a name is not an extension.
        let p = output_path(dir, "v1.2", &vars, &room, Some("mp4")).unwrap();
        assert_eq!(p, Path::new("/data/recordings/v1.2.mp4"));
    }

    #[test]
    fn timestamps_are_utc_civil_times() {
        assert_eq!(timestamp(0), "1970-01-01T000000");
        assert_eq!(timestamp(1_798_675_200), "2026-12-31T000000");
        assert_eq!(timestamp(951_782_400 + 3661), "2000-02-29T010101");
    }

    #[test]
    fn requests_map_to_composite_settings() {
        let mp4 = Target::File(proto::EncodedFileOutput::default());
        let c = composite_config(
            Layout::default(),
            true,
            true,
            vec![mp4.clone()],
            &Options::Preset(2),
        )
        .unwrap();
        let v = c.0.video.unwrap();
        assert_eq!((v.width, v.height, v.fps), (1920, 1080, 30));
        assert_eq!(c.1[0].1, Container::Mp4);
        let c = composite_config(
            Layout::default(),
            false,
            true,
            vec![mp4.clone()],
            &Options::Preset(0),
        )
        .unwrap();
        assert_eq!(c.1[0].1, Container::Ogg);
        let ogg = Target::File(proto::EncodedFileOutput {
            file_type: proto::EncodedFileType::Ogg as i32,
            ..Default::default()
        });
        assert!(
            composite_config(
                Layout::default(),
                true,
                true,
                vec![ogg.clone()],
                &Options::Preset(0)
            )
            .is_err()
        );
        let vp8 = proto::EncodingOptions {
            video_codec: proto::VideoCodec::Vp8 as i32,
            ..Default::default()
        };
        assert!(
            composite_config(
                Layout::default(),
                true,
                true,
                vec![mp4.clone()],
                &Options::Advanced(&vp8)
            )
            .is_err()
        );
        let mp3 = Target::File(proto::EncodedFileOutput {
            file_type: proto::EncodedFileType::Mp3 as i32,
            ..Default::default()
        });
        assert!(
            composite_config(
                Layout::default(),
                true,
                true,
                vec![mp3.clone()],
                &Options::Preset(0)
            )
            .is_err()
        );
    }

    #[test]
    fn outputs_resolve_to_one_destination() {
        let dir = Path::new("/data/recordings");
        let room = proto::Room::default();
        let vars = [("room_name", "r1".to_string())];
        let hls = Target::Segments(proto::SegmentedFileOutput {
            filename_prefix: "live/r1".into(),
            playlist_name: "index.m3u8".into(),
            ..Default::default()
        });
        let container = Container::Hls {
            segment_seconds: 4,
            segments: PathBuf::new(),
        };
        match destination(dir, &hls, &container, &vars, &room).unwrap() {
            Destination::Hls { playlist, segments } => {
                assert_eq!(playlist, Path::new("/data/recordings/live/index.m3u8"));
                assert_eq!(segments, Path::new("/data/recordings/live/r1_%05d.ts"));
            }
            other => panic!("{other:?}"),
        }
        let escape = Target::Segments(proto::SegmentedFileOutput {
            playlist_name: "../../etc/x.m3u8".into(),
            ..Default::default()
        });
        assert!(destination(dir, &escape, &container, &vars, &room).is_err());
        let stream = |urls: &[&str]| proto::StreamOutput {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            ..Default::default()
        };
        assert!(stream_targets(&stream(&["rtmp://live.example/app/key"])).is_ok());
        assert!(stream_targets(&stream(&["http://x"])).is_err());
        assert!(stream_targets(&stream(&[])).is_err());
        let file = proto::EncodedFileOutput::default();
        assert!(outputs(std::slice::from_ref(&file), None, &[], &[], 0).is_ok());
        assert!(outputs(&[file.clone(), file.clone()], None, &[], &[], 0).is_err());
        assert!(outputs(&[], None, &[], &[], 0).is_err());
        // A file, a playlist and two streams from one encoding.
        let hls = proto::SegmentedFileOutput::default();
        let two = stream(&["rtmp://a/x", "rtmps://b/y"]);
        let all = outputs(std::slice::from_ref(&file), None, &[two], &[hls], 0).unwrap();
        assert_eq!(all.len(), 4);
        let (_, containers) =
            composite_config(Layout::default(), true, true, all, &Options::Preset(0)).unwrap();
        assert_eq!(containers[3].1, Container::Rtmp);
        // Ogg (audio only) does not go with another output.
        let ogg = Target::File(proto::EncodedFileOutput {
            file_type: proto::EncodedFileType::Ogg as i32,
            ..Default::default()
        });
        let with_stream = [ogg, Target::Stream("rtmp://a/x".into())];
        assert!(
            composite_config(
                Layout::default(),
                false,
                true,
                with_stream.to_vec(),
                &Options::Preset(0)
            )
            .is_err()
        );
    }

    #[test]
    fn only_the_newest_ended_egresses_are_kept() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let entry = |ended_at: i64| Entry {
            info: proto::EgressInfo {
                ended_at,
                ..Default::default()
            },
            control: tx.clone(),
            filter: Filter::default(),
        };
        let mut entries: HashMap<String, Entry> = (1..=KEEP_ENDED as i64 + 5)
            .map(|t| (format!("EG_{t}"), entry(t)))
            .collect();
        entries.insert("EG_active".into(), entry(0));
        forget_oldest_ended(&mut entries);
        // Room for one more ended egress; the active one and the newest stay.
        assert_eq!(entries.len(), KEEP_ENDED);
        assert!(entries.contains_key("EG_active"));
        assert!(entries.contains_key(&format!("EG_{}", KEEP_ENDED + 5)));
        assert!(!entries.contains_key("EG_6"));
    }

    #[test]
    fn profile_encoders_become_ffmpeg_names() {
        assert_eq!(
            encoders(&["nvenc".into(), "libx264".into()]),
            vec!["h264_nvenc".to_string(), "libx264".to_string()]
        );
    }
}
