//! The HTTP server: LiveKit signalling over WebSocket, validation, health, metrics and the
//! meeting page, all on one port.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt as _, StreamExt as _};
use parloir_sfu::{Command, JoinCommand, Layout, SessionId, proto};
use parloir_signal::session::{Action, translate};
use parloir_signal::{Claims, JoinParams, KeyRing, SignalPath, VideoGrant};
use tokio::sync::mpsc;

use crate::media::{MediaHandle, SessionSlot, ToSession};
use crate::metrics::Metrics;

/// Shared state of the HTTP handlers.
pub struct AppState {
    pub keys: KeyRing,
    pub media: MediaHandle,
    pub metrics: Arc<Metrics>,
    pub web_dir: PathBuf,
    /// The record plane (Egress API); `None` when recording is off.
    pub egress: Option<crate::egress::Egress>,
    /// Where the speech plane keeps transcripts; `None` when it is off.
    pub transcripts_dir: Option<PathBuf>,
    pub development: bool,
    pub ping_timeout: Duration,
    pub next_session: AtomicU64,
    /// Turns true when the server shuts down: every session tells its client and closes.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Participant sid → session, for clients that resume (`reconnect=1&sid=…`).
    pub resumable: std::sync::Mutex<HashMap<String, Resumable>>,
}

/// A session a client may resume, and who may.
pub struct Resumable {
    session: SessionId,
    identity: String,
    room: String,
    /// When its socket was lost; the entry is forgotten once the SFU's resume window is over.
    lost_at: Option<Instant>,
}

/// How long after a lost socket its entry is kept: the SFU's window, and a margin.
const RESUMABLE_FOR: Duration = Duration::from_secs(parloir_sfu::RESUME_WINDOW.as_secs() + 5);

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/rtc", get(rtc_v0))
        .route("/rtc/validate", get(validate_v0))
        .route("/rtc/v1", get(rtc_v1))
        .route("/rtc/v1/validate", get(validate_v1))
        .route(
            "/twirp/livekit.RoomService/{method}",
            axum::routing::post(crate::twirp::room_service),
        )
        .route(
            "/twirp/livekit.Egress/{method}",
            axum::routing::post(crate::twirp::egress_service),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/dev-token", get(dev_token))
        .route("/api/transcripts", get(crate::transcripts::list))
        .route(
            "/api/transcripts/{sid}/{file}",
            get(crate::transcripts::file),
        )
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/livekit-client.umd.js", get(livekit_client))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Why a signal connection is refused before the upgrade.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.0, self.1).into_response();
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        response
    }
}

fn unix_now() -> (i64, i64) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.as_millis() as i64)
}

/// The token from `access_token` or `Authorization: Bearer`, verified, with the join grant.
fn authorize(
    state: &AppState,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Claims, Refusal> {
    let refuse = |why: String| {
        state.metrics.signal_refused.fetch_add(1, Relaxed);
        Refusal(StatusCode::UNAUTHORIZED, why)
    };
    let token = match query.get("access_token") {
        Some(t) => t.clone(),
        None => match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
            Some(Ok(v)) => match v.strip_prefix("Bearer ") {
                Some(t) => t.to_string(),
                None => {
                    return Err(refuse(
                        "authorization header must be 'Bearer <token>'".into(),
                    ));
                }
            },
            Some(Err(_)) => return Err(refuse("authorization header is not text".into())),
            None => String::new(),
        },
    };
    let claims = state
        .keys
        .verify(&token, unix_now().0)
        .map_err(|e| refuse(e.to_string()))?;
    if !claims.video.room_join {
        return Err(refuse("the access token does not grant roomJoin".into()));
    }
    if claims.video.room.is_empty() {
        return Err(refuse("the access token names no room".into()));
    }
    if claims.identity().is_empty() {
        return Err(refuse("the access token names no identity".into()));
    }
    Ok(claims)
}

/// The join options of either path: `/rtc` query parameters or `/rtc/v1`'s `join_request`.
fn join_params(
    state: &AppState,
    path: SignalPath,
    query: &HashMap<String, String>,
) -> Result<JoinParams, Refusal> {
    let parsed = match path {
        SignalPath::TwoPeerConnections => JoinParams::from_v0_query(query),
        SignalPath::SinglePeerConnection => match query.get("join_request") {
            Some(value) => JoinParams::from_v1_join_request(value),
            None => {
                state.metrics.signal_refused.fetch_add(1, Relaxed);
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "join_request is missing".into(),
                ));
            }
        },
    };
    parsed.map_err(|e| {
        state.metrics.signal_refused.fetch_add(1, Relaxed);
        Refusal(StatusCode::BAD_REQUEST, e.to_string())
    })
}

async fn validate_v0(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    validate(&state, SignalPath::TwoPeerConnections, &query, &headers)
}

async fn validate_v1(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    validate(&state, SignalPath::SinglePeerConnection, &query, &headers)
}

fn validate(
    state: &AppState,
    path: SignalPath,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    authorize(state, query, headers)?;
    join_params(state, path, query)?;
    Ok(Refusal(StatusCode::OK, "success".into()).into_response())
}

type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

async fn rtc_v0(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Result<Response, Refusal> {
    rtc(
        state,
        SignalPath::TwoPeerConnections,
        query,
        headers,
        upgrade,
    )
}

async fn rtc_v1(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Result<Response, Refusal> {
    rtc(
        state,
        SignalPath::SinglePeerConnection,
        query,
        headers,
        upgrade,
    )
}

fn rtc(
    state: Arc<AppState>,
    path: SignalPath,
    query: HashMap<String, String>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Result<Response, Refusal> {
    // A plain GET on /rtc is not a signal connection.
    let Ok(upgrade) = upgrade else {
        return Err(Refusal(StatusCode::NOT_FOUND, "not found".into()));
    };
    let claims = authorize(&state, &query, &headers)?;
    let params = join_params(&state, path, &query)?;
    let counter = match path {
        SignalPath::TwoPeerConnections => &state.metrics.signal_connections_v0,
        SignalPath::SinglePeerConnection => &state.metrics.signal_connections_v1,
    };
    counter.fetch_add(1, Relaxed);
    Ok(upgrade
        .max_message_size(parloir_signal::MAX_SIGNAL_MESSAGE)
        .max_frame_size(parloir_signal::MAX_SIGNAL_MESSAGE)
        .on_upgrade(move |socket| run_session(state, socket, claims, params)))
}

#[allow(deprecated, reason = "older clients still read recorder and agent")]
fn permission(grant: &VideoGrant) -> proto::ParticipantPermission {
    proto::ParticipantPermission {
        can_subscribe: grant.can_subscribe(),
        can_publish: grant.can_publish(),
        can_publish_data: grant.can_publish_data(),
        can_publish_sources: grant
            .can_publish_sources
            .iter()
            .filter_map(|s| proto::TrackSource::from_str_name(&s.to_ascii_uppercase()))
            .map(|s| s as i32)
            .collect(),
        hidden: grant.hidden,
        recorder: grant.recorder,
        can_update_metadata: grant.can_update_own_metadata(),
        agent: grant.agent,
        ..Default::default()
    }
}

/// How a signal connection ended: the participant left (or was made to), or the socket was
/// lost and the participant may resume.
enum Ending {
    Left,
    Lost,
}

async fn run_session(state: Arc<AppState>, socket: WebSocket, claims: Claims, params: JoinParams) {
    let generation = state.next_session.fetch_add(1, Relaxed);
    let (mut sink, mut stream) = socket.split();
    let resumed = match &params.reconnect {
        Some(sid) => {
            // Only the same identity in the same room may resume a session.
            let known = {
                let mut resumable = state.resumable.lock().unwrap_or_else(|e| e.into_inner());
                resumable.retain(|_, r| r.lost_at.is_none_or(|t| t.elapsed() < RESUMABLE_FOR));
                let entry = resumable
                    .get_mut(sid)
                    .filter(|r| r.identity == claims.sub && r.room == claims.video.room);
                entry.map(|r| {
                    r.lost_at = None;
                    r.session
                })
            };
            let Some(session) = known else {
                // Nothing to resume: the client must join afresh.
                let leave = parloir_sfu::leave_message(
                    proto::DisconnectReason::StateMismatch,
                    proto::leave_request::Action::Reconnect,
                );
                let frame = parloir_signal::encode_response(leave);
                let _ = sink.send(Message::Binary(frame.into())).await;
                let _ = sink.close().await;
                return;
            };
            Some(session)
        }
        None => None,
    };
    let session = resumed.unwrap_or_else(|| state.media.session_id(&claims.video.room, generation));
    let _placed = state.media.placed(&claims.video.room, session);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let previous = state
        .media
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(session, SessionSlot { generation, tx });
    if let Some(previous) = previous {
        // The client resumed before the server noticed its old socket was gone.
        let _ = previous.tx.send(ToSession::Close);
    }
    if resumed.is_some() {
        tracing::info!(%session, identity = %claims.sub, "resume");
        let resume = Command::Resume {
            session,
            identity: claims.sub.clone(),
        };
        if state.media.send(resume).is_err() {
            let _ = sink.close().await;
            return;
        }
        if let Some(offer) = &params.publisher_offer {
            let _ = state.media.send(Command::Offer {
                session,
                sdp: offer.sdp.clone(),
                id: offer.id,
            });
        }
    }
    let kind = match claims.kind.as_str() {
        "ingress" => proto::participant_info::Kind::Ingress,
        "egress" => proto::participant_info::Kind::Egress,
        "sip" => proto::participant_info::Kind::Sip,
        "agent" => proto::participant_info::Kind::Agent,
        _ => proto::participant_info::Kind::Standard,
    };
    let join = JoinCommand {
        session,
        room: claims.video.room.clone(),
        identity: claims.sub.clone(),
        name: claims.name.clone(),
        metadata: if params.metadata.is_empty() {
            claims.metadata.clone()
        } else {
            params.metadata.clone()
        },
        attributes: {
            let mut a = claims.attributes.clone();
            a.extend(params.attributes.clone());
            a
        },
        permission: permission(&claims.video),
        kind: kind as i32,
        layout: match params.path {
            SignalPath::TwoPeerConnections => Layout::TwoPeerConnections,
            SignalPath::SinglePeerConnection => Layout::SinglePeerConnection,
        },
        offer: params
            .publisher_offer
            .as_ref()
            .map(|sd| (sd.sdp.clone(), sd.id)),
        auto_subscribe: params.auto_subscribe,
        protocol: params.protocol,
        client_protocol: params.client_protocol,
        unix_ms: unix_now().1,
    };
    if resumed.is_none() {
        tracing::info!(%session, room = %join.room, identity = %join.identity, layout = ?join.layout, "join");
        if state.media.send(Command::Join(Box::new(join))).is_err() {
            let _ = sink.close().await;
            return;
        }
    }
    let mut last_heard = Instant::now();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut shutdown = state.shutdown.clone();
    let ending = loop {
        tokio::select! {
            Ok(()) = shutdown.changed() => {
                let leave = parloir_sfu::leave_message(
                    proto::DisconnectReason::ServerShutdown,
                    proto::leave_request::Action::Disconnect,
                );
                let frame = parloir_signal::encode_response(leave);
                let _ = sink.send(Message::Binary(frame.into())).await;
                let _ = sink.close().await;
                break Ending::Left;
            },
            out = rx.recv() => match out {
                Some(ToSession::Signal(m)) => {
                    if let proto::signal_response::Message::Join(join) = m.as_ref()
                        && let Some(me) = &join.participant
                    {
                        let entry = Resumable {
                            session,
                            identity: me.identity.clone(),
                            room: claims.video.room.clone(),
                            lost_at: None,
                        };
                        let mut resumable =
                            state.resumable.lock().unwrap_or_else(|e| e.into_inner());
                        // Forget sessions whose resume window is over, then remember this one.
                        resumable.retain(|_, r| {
                            r.lost_at.is_none_or(|t| t.elapsed() < RESUMABLE_FOR)
                        });
                        resumable.insert(me.sid.clone(), entry);
                    }
                    let frame = parloir_signal::encode_response(*m);
                    if sink.send(Message::Binary(frame.into())).await.is_err() {
                        break Ending::Lost;
                    }
                }
                // The SFU ended the session (eviction, removal), or a newer socket took it.
                Some(ToSession::Close) | None => {
                    let _ = sink.close().await;
                    break Ending::Left;
                }
            },
            frame = stream.next() => {
                let bytes = match frame {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        last_heard = Instant::now();
                        continue;
                    }
                    Some(Ok(Message::Text(_))) => {
                        tracing::info!(%session, "JSON signalling is not supported; closing");
                        state.metrics.signal_bad_messages.fetch_add(1, Relaxed);
                        break Ending::Lost;
                    }
                    Some(Ok(Message::Close(_))) | None => break Ending::Lost,
                    Some(Err(e)) => {
                        tracing::info!(%session, "signal connection error: {e}");
                        state.metrics.signal_bad_messages.fetch_add(1, Relaxed);
                        break Ending::Lost;
                    }
                };
                last_heard = Instant::now();
                let request = match parloir_signal::decode_request(&bytes) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::info!(%session, "bad signal message, closing: {e}");
                        state.metrics.signal_bad_messages.fetch_add(1, Relaxed);
                        break Ending::Lost;
                    }
                };
                match translate(session, request, unix_now().1) {
                    Action::Command(c) => {
                        let leaving = matches!(c, Command::Leave { .. });
                        if state.media.send(c).is_err() || leaving {
                            break Ending::Left;
                        }
                    }
                    Action::Reply(m) => {
                        let frame = parloir_signal::encode_response(m);
                        if sink.send(Message::Binary(frame.into())).await.is_err() {
                            break Ending::Lost;
                        }
                    }
                    Action::Ignore => {}
                }
            },
            _ = check.tick() => {
                if last_heard.elapsed() > state.ping_timeout {
                    tracing::info!(%session, "no message within the ping timeout; closing");
                    let _ = sink.close().await;
                    break Ending::Lost;
                }
            }
        }
    };
    // Only the socket that still serves the session speaks for it.
    let current = {
        let mut sessions = state
            .media
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mine = sessions
            .get(&session)
            .is_some_and(|slot| slot.generation == generation);
        if mine {
            sessions.remove(&session);
        }
        mine
    };
    if current {
        let mut resumable = state.resumable.lock().unwrap_or_else(|e| e.into_inner());
        match ending {
            Ending::Left => resumable.retain(|_, r| r.session != session),
            Ending::Lost => {
                for r in resumable.values_mut().filter(|r| r.session == session) {
                    r.lost_at = Some(Instant::now());
                }
            }
        }
    }
    if current {
        let command = match ending {
            Ending::Left => Command::Leave { session },
            Ending::Lost => Command::Disconnect { session },
        };
        let _ = state.media.send(command);
    }
    tracing::info!(%session, "signal connection ended");
}

// ---- development token and meeting page ----

async fn dev_token(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !state.development {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let room = query.get("room").cloned().unwrap_or_default();
    let identity = query.get("identity").cloned().unwrap_or_default();
    if room.is_empty() || identity.is_empty() || room.len() > 128 || identity.len() > 128 {
        return (StatusCode::BAD_REQUEST, "room and identity are required").into_response();
    }
    let Some(key) = state.keys.key_names().next().map(str::to_string) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no API key").into_response();
    };
    let name = query
        .get("name")
        .cloned()
        .unwrap_or_else(|| identity.clone());
    // `admin=1`: the meeting page's host (roomAdmin on this room). Development only.
    let admin = query.get("admin").is_some_and(|v| v == "1" || v == "true");
    let claims = crate::token_claims(&key, &room, &identity, &name, admin, 6 * 3600);
    let Ok(token) = state.keys.sign(&claims) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot sign").into_response();
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:7880");
    axum::Json(serde_json::json!({ "token": token, "url": format!("ws://{host}") })).into_response()
}

async fn serve_file(path: PathBuf, content_type: &'static str) -> Response {
    match tokio::fs::read(&path).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(_) => {
            tracing::warn!(path = %path.display(), "meeting page file missing (run `make`)");
            (StatusCode::NOT_FOUND, "not found").into_response()
        }
    }
}

async fn index(State(state): State<Arc<AppState>>) -> Response {
    serve_file(state.web_dir.join("index.html"), "text/html; charset=utf-8").await
}

async fn app_js(State(state): State<Arc<AppState>>) -> Response {
    serve_file(
        state.web_dir.join("app.js"),
        "text/javascript; charset=utf-8",
    )
    .await
}

async fn livekit_client(State(state): State<Arc<AppState>>) -> Response {
    let path = state
        .web_dir
        .join("node_modules/livekit-client/dist/livekit-client.umd.js");
    serve_file(path, "text/javascript; charset=utf-8").await
}
