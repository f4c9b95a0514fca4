//! Meeting transcripts and summaries on disk, and over HTTP for room administrators.
//!
//! The speech plane appends each final segment to `<room sid>.jsonl` in
//! `speech.transcripts_dir`. When the room closes it writes `<room sid>.summary.json` and
//! `.summary.md`: the extractive summary, or, with `speech.summary_llm_url` set, a chat model's
//! (any OpenAI-compatible endpoint, such as an on-premises LLM server), the extractive one
//! standing in when that fails or times out. Then the `transcript_ready` webhook goes out.
//!
//! HTTP, with `Authorization: Bearer <token>` granting roomAdmin for the room (or for every
//! room):
//! - `GET /api/transcripts?room=NAME`: the room's meetings (sid, times, segments, summary);
//! - `GET /api/transcripts/{sid}/transcript.{jsonl,vtt,md}`;
//! - `GET /api/transcripts/{sid}/summary.{md,json}` (made on the spot when the meeting is still
//!   on or its summary was never written).

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parloir_speech::summary::{self, Segment, Summary};

use crate::http::AppState;

/// The chat model that writes summaries, when configured.
#[derive(Debug, Clone, Default)]
pub struct Llm {
    /// `http://host:port/v1/chat/completions`.
    pub url: String,
    pub model: String,
    pub api_key: String,
    pub timeout: Duration,
}

/// Whether `sid` can name a file here: a room sid as the SFU makes them.
pub fn valid_sid(sid: &str) -> bool {
    sid.strip_prefix("RM_").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

pub fn transcript_path(dir: &Path, sid: &str) -> PathBuf {
    dir.join(format!("{sid}.jsonl"))
}

/// Writes the summary of meeting `sid` next to its transcript; `None` when nothing was said.
pub fn write_summary(dir: &Path, sid: &str, llm: Option<&Llm>) -> anyhow::Result<Option<Summary>> {
    let path = transcript_path(dir, sid);
    if !path.exists() {
        return Ok(None);
    }
    let (segments, bad) = summary::read_jsonl(&path)?;
    if bad > 0 {
        tracing::warn!(
            sid,
            bad,
            "transcript lines that could not be read were left out"
        );
    }
    if segments.is_empty() {
        return Ok(None);
    }
    let summary = summarize(&segments, llm);
    let write = |ext: &str, bytes: &[u8]| -> std::io::Result<()> {
        let tmp = dir.join(format!("{sid}.summary.{ext}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(format!("{sid}.summary.{ext}")))
    };
    write("json", &serde_json::to_vec_pretty(&summary)?)?;
    write("md", summary.to_markdown(&segments).as_bytes())?;
    Ok(Some(summary))
}

/// The extractive summary, with the chat model's text when one is configured and answers.
pub fn summarize(segments: &[Segment], llm: Option<&Llm>) -> Summary {
    let mut s = summary::extractive(segments);
    if let Some(llm) = llm.filter(|l| !l.url.is_empty()) {
        match chat(llm, &summary::llm_messages(segments)) {
            Ok(text) if !text.trim().is_empty() => {
                s.text = Some(text);
                s.source = format!("llm:{}", llm.model);
            }
            Ok(_) => s.fallback_reason = Some("the model answered nothing".into()),
            Err(e) => {
                tracing::warn!(url = %llm.url, "summary: the language model failed, extractive summary instead: {e}");
                s.fallback_reason = Some(e);
            }
        }
    }
    s
}

/// One chat completion over plain HTTP/1.0 (the answer comes whole, not chunked), within
/// `llm.timeout` in all.
fn chat(llm: &Llm, messages: &serde_json::Value) -> Result<String, String> {
    let started = Instant::now();
    let rest = llm
        .url
        .strip_prefix("http://")
        .ok_or("only http:// endpoints are supported")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, llm.timeout).map_err(|e| format!("{authority}: {e}"))?;
    let body = serde_json::json!({ "model": llm.model, "messages": messages, "temperature": 0.2 })
        .to_string();
    let mut request = format!(
        "POST {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !llm.api_key.is_empty() {
        request.push_str(&format!("Authorization: Bearer {}\r\n", llm.api_key));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let left = |started: Instant| {
        llm.timeout
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
    };
    stream
        .set_write_timeout(left(started))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("sending: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let remaining =
            left(started).ok_or_else(|| format!("no answer within {:?}", llm.timeout))?;
        stream
            .set_read_timeout(Some(remaining))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if answer.len() + n <= 8 << 20 => answer.extend_from_slice(&buf[..n]),
            Ok(_) => return Err("answer larger than 8 MiB".into()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {:?}", llm.timeout));
            }
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("not an HTTP answer")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("not an HTTP answer")?;
    let body = &answer[split + 4..];
    if status != 200 {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the answer has no choices[0].message.content".into())
}

// ---- HTTP

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into(),
    )
        .into_response()
}

/// A refused request, made into a response where it is returned.
type Refusal = (StatusCode, String);

fn refusal(status: StatusCode, msg: impl Into<String>) -> Refusal {
    (status, msg.into())
}

fn refused((status, msg): Refusal) -> Response {
    error(status, msg)
}

/// The token's grant allows administering `room`.
fn authorize(state: &AppState, headers: &HeaderMap, room: &str) -> Result<(), Refusal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            refusal(
                StatusCode::UNAUTHORIZED,
                "Authorization: Bearer <token> is needed",
            )
        })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let claims = state
        .keys
        .verify(token, now)
        .map_err(|e| refusal(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let video = claims.video;
    if !video.room_admin || !(video.room.is_empty() || video.room == room) {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            format!("the token does not grant roomAdmin for room {room:?}"),
        ));
    }
    Ok(())
}

fn dir(state: &AppState) -> Result<&Path, Refusal> {
    state.transcripts_dir.as_deref().ok_or_else(|| {
        refusal(
            StatusCode::NOT_FOUND,
            "the speech plane is off on this server",
        )
    })
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    room: String,
}

/// `GET /api/transcripts?room=NAME`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &q.room) {
        return refused(r);
    }
    let dir = match dir(&state) {
        Ok(d) => d.to_path_buf(),
        Err(r) => return refused(r),
    };
    let room = q.room.clone();
    let found = tokio::task::spawn_blocking(move || meetings(&dir, &room)).await;
    match found {
        Ok(list) => {
            axum::Json(serde_json::json!({ "room": q.room, "meetings": list })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn meetings(dir: &Path, room: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(sid) = name.strip_suffix(".jsonl").filter(|s| valid_sid(s)) else {
            continue;
        };
        let Ok((segments, _)) = summary::read_jsonl(&entry.path()) else {
            continue;
        };
        if segments.first().is_none_or(|s| s.room != room) {
            continue;
        }
        out.push(serde_json::json!({
            "sid": sid,
            "started_ms": segments.iter().map(|s| s.start_ms).min(),
            "ended_ms": segments.iter().map(|s| s.end_ms).max(),
            "segments": segments.len(),
            "summary": dir.join(format!("{sid}.summary.json")).exists(),
        }));
    }
    out.sort_by_key(|m| m["started_ms"].as_u64());
    out
}

/// `GET /api/transcripts/{sid}/{file}`.
pub async fn file(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    UrlPath((sid, file)): UrlPath<(String, String)>,
) -> Response {
    if !valid_sid(&sid) {
        return error(StatusCode::BAD_REQUEST, "not a room sid");
    }
    let dir = match dir(&state) {
        Ok(d) => d.to_path_buf(),
        Err(r) => return refused(r),
    };
    let path = transcript_path(&dir, &sid);
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || summary::read_jsonl(&path)).await
    };
    let segments = match read {
        Ok(Ok((segments, _))) if !segments.is_empty() => segments,
        _ => return error(StatusCode::NOT_FOUND, format!("no transcript for {sid}")),
    };
    if let Err(r) = authorize(&state, &headers, &segments[0].room) {
        return refused(r);
    }
    let text =
        |mime: &'static str, body: String| ([(header::CONTENT_TYPE, mime)], body).into_response();
    let saved = |ext: &str| std::fs::read_to_string(dir.join(format!("{sid}.summary.{ext}"))).ok();
    match file.as_str() {
        "transcript.jsonl" => match std::fs::read_to_string(&path) {
            Ok(body) => text("application/x-ndjson", body),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        "transcript.vtt" => text("text/vtt; charset=utf-8", summary::to_webvtt(&segments)),
        "transcript.md" => text(
            "text/markdown; charset=utf-8",
            summary::to_markdown(&segments),
        ),
        "summary.md" => text(
            "text/markdown; charset=utf-8",
            saved("md").unwrap_or_else(|| summary::extractive(&segments).to_markdown(&segments)),
        ),
        "summary.json" => text(
            "application/json",
            saved("json").unwrap_or_else(|| {
                serde_json::to_string_pretty(&summary::extractive(&segments)).unwrap_or_default()
            }),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "transcript.jsonl, transcript.vtt, transcript.md, summary.md or summary.json",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_that_name_files() {
        assert!(valid_sid("RM_abcXYZ123"));
        for bad in ["", "RM_", "RM_../x", "RM_a/b", "rm_abc", "RM_a.b", "RM_é"] {
            assert!(!valid_sid(bad), "{bad}");
        }
    }

    /// A one-shot HTTP server answering `answer` after `delay`; returns its URL.
    fn fake_model(answer: &'static str, delay: Duration) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 65536];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        format!("http://127.0.0.1:{port}/v1/chat/completions")
    }

    fn segments() -> Vec<Segment> {
        vec![Segment {
            room: "r".into(),
            room_sid: "RM_1".into(),
            identity: "alice".into(),
            name: "Alice".into(),
            track: "TR_1".into(),
            segment: "SG_1".into(),
            start_ms: 0,
            end_ms: 4000,
            language: "en".into(),
            text: "We decided to ship on Monday. Paul will send the notes.".into(),
            voice: 0,
        }]
    }

    #[test]
    fn the_model_writes_the_summary_or_the_extractive_one_stands_in() {
        let ok = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n\
                  {\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"Ship on Monday.\"}}]}";
        let llm = |url: String, timeout_ms: u64| Llm {
            url,
            model: "local-model".into(),
            api_key: "k".into(),
            timeout: Duration::from_millis(timeout_ms),
        };
        let s = summarize(
            &segments(),
            Some(&llm(fake_model(ok, Duration::ZERO), 5000)),
        );
        assert_eq!(s.text.as_deref(), Some("Ship on Monday."));
        assert_eq!(s.source, "llm:local-model");
        assert_eq!(
            s.decisions.len(),
            1,
            "decisions and actions are kept with it"
        );
        // An error answer, a timeout and nobody listening: the extractive summary, with why.
        let failing = [
            (
                llm(
                    fake_model(
                        "HTTP/1.0 500 Internal Server Error\r\n\r\noops",
                        Duration::ZERO,
                    ),
                    5000,
                ),
                "HTTP 500",
            ),
            (
                llm(fake_model(ok, Duration::from_millis(1500)), 300),
                "no answer within",
            ),
            (
                llm("http://127.0.0.1:1/v1/chat/completions".into(), 2000),
                "127.0.0.1:1",
            ),
        ];
        for (l, why) in failing {
            let s = summarize(&segments(), Some(&l));
            assert_eq!(s.source, "extractive");
            assert!(s.text.is_none());
            let reason = s.fallback_reason.unwrap_or_default();
            assert!(reason.contains(why), "{reason}");
            assert!(!s.key_points.is_empty() && s.actions.len() == 1);
        }
    }
}
