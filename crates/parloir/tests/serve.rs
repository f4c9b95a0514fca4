//! The `parloir` binary over HTTP, WebSocket and UDP: refusals, bad messages and stray
//! datagrams are handled without harm to other sessions.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use livekit_protocol as proto;
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{Server, get, post_json, start, start_with, start_workers};

fn token(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_parloir"))
        .arg("token")
        .args(args)
        .output()
        .expect("parloir token runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (_, body) = get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    parloir_signal::sign_hs256(claims, secret)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

#[test]
fn refused_tokens_get_401_with_a_reason() {
    let server = start();
    let good = token(&["--room", "r", "--identity", "alice"]);
    assert_eq!(
        get(server.http, &format!("/rtc/validate?access_token={good}")),
        (200, "success".into())
    );

    let expired = hs256(
        &serde_json::json!({"iss": "devkey", "sub": "a", "exp": now() - 3600, "video": {"roomJoin": true, "room": "r"}}),
        "secret",
    );
    let wrong_secret = hs256(
        &serde_json::json!({"iss": "devkey", "sub": "a", "exp": now() + 3600, "video": {"roomJoin": true, "room": "r"}}),
        "not-the-secret",
    );
    let no_join = hs256(
        &serde_json::json!({"iss": "devkey", "sub": "a", "exp": now() + 3600, "video": {"roomList": true}}),
        "secret",
    );
    let unknown_key = hs256(
        &serde_json::json!({"iss": "other", "sub": "a", "exp": now() + 3600, "video": {"roomJoin": true, "room": "r"}}),
        "secret",
    );
    for (query, reason) in [
        (String::new(), "no access token"),
        ("access_token=abc".to_string(), "not a JSON Web Token"),
        (format!("access_token={expired}"), "expired"),
        (format!("access_token={wrong_secret}"), "signature"),
        (format!("access_token={no_join}"), "roomJoin"),
        (format!("access_token={unknown_key}"), "unknown API key"),
    ] {
        for path in ["/rtc/validate", "/rtc/v1/validate"] {
            let (status, body) = get(server.http, &format!("{path}?{query}"));
            assert_eq!(status, 401, "{path}?{query}");
            assert!(
                body.contains(reason),
                "{path}: {body:?} should say {reason:?}"
            );
        }
    }
    // A valid token but a broken join request is a bad request.
    let (status, body) = get(
        server.http,
        &format!("/rtc/v1/validate?access_token={good}&join_request=%21%21"),
    );
    assert_eq!(status, 400, "{body}");
    // A plain GET on the signal path is not a WebSocket.
    assert_eq!(
        get(server.http, &format!("/rtc?access_token={good}")).0,
        404
    );
    assert!(metric(server.http, "parloir_signal_refused_total") >= 12);
}

#[tokio::test(flavor = "current_thread")]
async fn a_bad_signal_message_closes_only_its_connection() {
    let server = start();
    let url = |identity: &str| {
        let t = token(&["--room", "r", "--identity", identity]);
        format!("ws://{}/rtc?access_token={t}&protocol=17", server.http)
    };
    let (mut good, _) = tokio_tungstenite::connect_async(url("good"))
        .await
        .expect("connects");
    let first = next_response(&mut good).await;
    assert!(
        matches!(first, proto::signal_response::Message::Join(_)),
        "JoinResponse first"
    );

    for bad in [vec![0xffu8; 64], vec![0u8; 2 * 1024 * 1024]] {
        let (mut ws, _) = tokio_tungstenite::connect_async(url("bad"))
            .await
            .expect("connects");
        let _join = next_response(&mut ws).await;
        let _ = ws.send(Message::Binary(bad.into())).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert_eq!(closed, Ok(true), "the server closes the connection");
    }

    // The other session still works: ping gets pong.
    let ping = proto::SignalRequest {
        message: Some(proto::signal_request::Message::Ping(42)),
    };
    good.send(Message::Binary(ping.encode_to_vec().into()))
        .await
        .expect("send");
    let pong = loop {
        match next_response(&mut good).await {
            proto::signal_response::Message::Pong(t) => break t,
            _ => continue,
        }
    };
    assert!(pong > 0);
    assert!(metric(server.http, "parloir_signal_bad_messages_total") >= 2);
}

#[test]
fn stray_datagrams_are_dropped_and_counted() {
    let server = start();
    // Not port 0: the kernel could hand out a port another test's server is about to bind.
    let socket = UdpSocket::bind(("127.0.0.1", common::free_port())).expect("bind");
    let before = metric(server.http, "parloir_dropped_datagrams_total");
    let mut stun = vec![0u8; 28];
    stun[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    let datagrams: [&[u8]; 4] = [b"garbage", &[0u8; 1200], &stun, &[0x80; 20]];
    for d in datagrams {
        socket.send_to(d, server.udp).expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(server.http, "parloir_dropped_datagrams_total") < before + 4 {
        assert!(
            Instant::now() < deadline,
            "the datagrams were counted as dropped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(server.http, "/healthz").0, 200);
}

async fn next_response<S>(ws: &mut S) -> proto::signal_response::Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let frame = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return b,
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a message within 10 s");
    proto::SignalResponse::decode(&frame[..])
        .expect("a SignalResponse")
        .message
        .expect("with a message")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Joins room `r` on `/rtc` as `identity` and reads the JoinResponse.
async fn join_as(server: &Server, identity: &str) -> Ws {
    let t = token(&["--room", "r", "--identity", identity]);
    let url = format!("ws://{}/rtc?access_token={t}&protocol=17", server.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    let join = next_response(&mut ws).await;
    assert!(matches!(join, proto::signal_response::Message::Join(_)));
    ws
}

fn sigterm(server: &Server) {
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test(flavor = "current_thread")]
async fn sigterm_tells_participants_and_exits() {
    let mut server = start();
    let mut ws = join_as(&server, "alice").await;
    sigterm(&server);
    let leave = loop {
        match next_response(&mut ws).await {
            proto::signal_response::Message::Leave(l) => break l,
            _ => continue,
        }
    };
    assert_eq!(leave.reason, proto::DisconnectReason::ServerShutdown as i32);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the server exits after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "a clean exit: {status:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn only_the_same_identity_resumes_a_dropped_session() {
    let server = start();
    let url = |identity: &str, extra: &str| {
        let t = token(&["--room", "r", "--identity", identity]);
        format!(
            "ws://{}/rtc?access_token={t}&protocol=17{extra}",
            server.http
        )
    };
    let (mut alice, _) = tokio_tungstenite::connect_async(url("alice", ""))
        .await
        .expect("connects");
    let proto::signal_response::Message::Join(join) = next_response(&mut alice).await else {
        panic!("JoinResponse first");
    };
    let sid = join.participant.expect("participant").sid;
    drop(alice); // the socket dies without a leave

    let resume = format!("&reconnect=1&sid={sid}");
    let (mut mallory, _) = tokio_tungstenite::connect_async(url("mallory", &resume))
        .await
        .expect("connects");
    let proto::signal_response::Message::Leave(leave) = next_response(&mut mallory).await else {
        panic!("another identity is told to join afresh");
    };
    assert_eq!(leave.action, proto::leave_request::Action::Reconnect as i32);

    let (mut again, _) = tokio_tungstenite::connect_async(url("alice", &resume))
        .await
        .expect("connects");
    let first = next_response(&mut again).await;
    assert!(
        matches!(first, proto::signal_response::Message::Reconnect(_)),
        "ReconnectResponse first, got {first:?}"
    );
    let update = loop {
        if let proto::signal_response::Message::Update(u) = next_response(&mut again).await {
            break u;
        }
    };
    assert!(
        update.participants.iter().any(|p| p.sid == sid),
        "the same participant, resumed"
    );
}

/// A minimal HTTP receiver: answers 200 to every POST and hands over the event names.
fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", common::free_port())).expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                loop {
                    // One request: headers, then Content-Length bytes of JSON.
                    let mut length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let event: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    let _ = tx.send(event["event"].as_str().unwrap_or_default().to_string());
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "current_thread")]
async fn sigterm_closes_rooms_and_sends_their_webhooks() {
    let (url, events) = webhook_receiver();
    let mut server = start_with(&["--webhook-url", &url]);
    let _ws = join_as(&server, "alice").await;
    sigterm(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the server exits");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: Vec<String> = events.try_iter().collect();
    assert_eq!(
        got,
        [
            "room_started",
            "participant_joined",
            "participant_left",
            "room_finished"
        ],
        "every webhook is out before the process exits"
    );
}

/// The UDP port of the host candidate in an SDP.
fn candidate_port(sdp: &str) -> u16 {
    sdp.lines()
        .filter(|l| {
            l.starts_with("a=candidate:")
                && l.split_whitespace()
                    .nth(2)
                    .is_some_and(|t| t.eq_ignore_ascii_case("udp"))
        })
        .find_map(|l| l.split_whitespace().nth(5)?.parse().ok())
        .unwrap_or_else(|| panic!("a UDP host candidate in {sdp}"))
}

/// Joins `room` on `/rtc` as `identity`; returns the socket and the UDP port of the server's
/// candidate in its subscriber offer (which comes right after the JoinResponse): the port of
/// the media worker the room lives on.
async fn join_for_port(server: &Server, room: &str, identity: &str) -> (Ws, u16) {
    let t = token(&["--room", room, "--identity", identity]);
    let url = format!("ws://{}/rtc?access_token={t}&protocol=17", server.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    loop {
        if let proto::signal_response::Message::Offer(offer) = next_response(&mut ws).await {
            return (ws, candidate_port(&offer.sdp));
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn rooms_spread_over_media_workers_on_their_own_ports() {
    let server = start_workers(2, &[]);
    let base = server.udp.port();
    let mut ports = std::collections::BTreeMap::new();
    let mut sockets = Vec::new();
    for i in 0..8 {
        let room = format!("room-{i}");
        let (ws, port) = join_for_port(&server, &room, "alice").await;
        ports.insert(room, port);
        sockets.push(ws);
    }
    let used: std::collections::BTreeSet<u16> = ports.values().copied().collect();
    assert_eq!(
        used,
        std::collections::BTreeSet::from([base, base + 1]),
        "both workers host rooms, each on its own port: {ports:?}"
    );
    // The same room always lands on the same worker.
    let (_bob, port) = join_for_port(&server, "room-0", "bob").await;
    assert_eq!(port, ports["room-0"]);
    // ListRooms asks every worker; calls about one room go to its worker.
    let admin = token(&["--room", "room-0", "--identity", "admin", "--admin"]);
    let (status, body) = post_json(
        server.http,
        "/twirp/livekit.RoomService/ListRooms",
        &admin,
        "{}",
    );
    assert_eq!(status, 200, "{body}");
    let rooms: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let names: Vec<&str> = rooms["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        (0..8).map(|i| format!("room-{i}")).collect::<Vec<_>>()
    );
    // One room on each worker.
    for port in used {
        let room = ports
            .iter()
            .find(|(_, p)| **p == port)
            .map(|(r, _)| r.clone());
        let room = room.expect("a room on this port");
        let admin = token(&["--room", &room, "--identity", "admin", "--admin"]);
        let (status, body) = post_json(
            server.http,
            "/twirp/livekit.RoomService/ListParticipants",
            &admin,
            &format!("{{\"room\": \"{room}\"}}"),
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("alice"), "{room}: {body}");
    }
    assert_eq!(
        metric(server.http, "parloir_rooms"),
        8,
        "rooms summed over workers"
    );
    drop(sockets);
}

#[test]
fn doctor_checks_the_speech_models() {
    let run = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_parloir"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .args(["doctor", "--json"])
            .args(args)
            .output()
            .expect("parloir doctor runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    // As installed by the setup: every model found, its checksum right.
    let ok = run(&[]);
    let models = ok["models"].as_array().expect("a list of models");
    assert!(
        !models.is_empty() && models.iter().all(|m| m["ok"] == true),
        "{models:?}"
    );
    // A manifest whose checksum does not match what is installed: reported, with advice.
    let dir = std::env::temp_dir().join(format!("parloir-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest = std::fs::read_to_string(root.join("models/manifest.toml")).expect("manifest");
    std::fs::write(
        dir.join("manifest.toml"),
        manifest.replace("sha256 = \"7671", "sha256 = \"0000"),
    )
    .expect("write");
    let _ = std::fs::remove_file(dir.join(".venv"));
    std::os::unix::fs::symlink(root.join("models/.venv"), dir.join(".venv")).expect("link");
    let config = dir.join("parloir.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\nk = \"secret-long-enough\"\n[speech]\nmodels_dir = \"{}\"\n",
            dir.display()
        ),
    )
    .expect("write");
    let bad = run(&["--config", config.to_str().expect("utf-8")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(bad["models"][0]["ok"], false, "{}", bad["models"]);
    assert!(
        bad["advice"]
            .as_array()
            .expect("advice")
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.contains("silero-vad"))),
        "{}",
        bad["advice"]
    );
}

/// `parloir serve --dev --speech` on a models directory whose manifest has `from` replaced by
/// `to` (a checksum that no longer matches) and which has `links` of the real one; returns the
/// log once a room was created and listed.
fn serve_with_broken_model(name: &str, from: &str, to: &str, links: &[&str]) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("parloir-broken-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for link in links {
        std::os::unix::fs::symlink(root.join("models").join(link), dir.join(link)).expect("link");
    }
    let manifest = std::fs::read_to_string(root.join("models/manifest.toml")).expect("manifest");
    assert!(manifest.contains(from));
    std::fs::write(dir.join("manifest.toml"), manifest.replace(from, to)).expect("write");
    let log = dir.join("server.log");
    let (http_port, udp_port) = (common::free_port(), common::free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_parloir"))
        .args(["serve", "--dev", "--speech", "--tcp-port", "0"])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--udp-port", &udp_port.to_string()])
        .arg("--models-dir")
        .arg(&dir)
        .arg("--transcripts-dir")
        .arg(dir.join("transcripts"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("ORT_DYLIB_PATH")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("parloir starts");
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().expect("address");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::get(http, "/healthz").0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not come up: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the server exited"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Meetings are served: a room can be created and listed.
    let t = token(&["--room", "still-here", "--identity", "ops", "--admin"]);
    let (code, body) = common::post_json(
        http,
        "/twirp/livekit.RoomService/CreateRoom",
        &t,
        r#"{"name":"still-here"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = common::post_json(http, "/twirp/livekit.RoomService/ListRooms", &t, "{}");
    assert!(code == 200 && body.contains("still-here"), "{body}");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    let _ = std::fs::remove_dir_all(&dir);
    text
}

#[test]
fn a_broken_speech_model_turns_speech_off_and_meetings_go_on() {
    // The VAD failing its checksum: no speech plane, the reason in the log, meetings served.
    let vad = "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28";
    let text = serve_with_broken_model("vad", vad, &"1".repeat(64), &[".venv", "whisper-base"]);
    let line = text
        .lines()
        .find(|l| l.contains("speech plane off"))
        .unwrap_or_else(|| panic!("no clear error in the log:\n{text}"));
    assert!(
        line.contains("silero-vad") && line.contains("SHA-256"),
        "{line}"
    );
}

#[test]
fn no_onnx_runtime_turns_speech_off_and_meetings_go_on() {
    // No models/.venv at all: no libonnxruntime to load.
    let text = serve_with_broken_model("runtime", "silero-vad", "silero-vad", &[]);
    let line = text
        .lines()
        .find(|l| l.contains("speech plane off"))
        .unwrap_or_else(|| panic!("no clear error in the log:\n{text}"));
    assert!(
        line.contains("ONNX Runtime") && line.contains("libonnxruntime"),
        "{line}"
    );
}

#[test]
fn a_broken_whisper_falls_back_to_moonshine_for_english() {
    let decoder = "912b1f3ca8209a6cd8c7331fe044b0f0e992e0caf9e90aeec91cd23189287568";
    let text = serve_with_broken_model(
        "whisper",
        decoder,
        &"1".repeat(64),
        &[".venv", "whisper-base"],
    );
    let line = text
        .lines()
        .find(|l| l.contains("on Moonshine"))
        .unwrap_or_else(|| panic!("no fallback in the log:\n{text}"));
    assert!(
        line.contains("whisper-base-decoder") && line.contains("SHA-256"),
        "{line}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("speech plane") && l.contains("moonshine-base-en")),
        "{text}"
    );
    assert!(!text.contains("speech plane off"), "{text}");
}
