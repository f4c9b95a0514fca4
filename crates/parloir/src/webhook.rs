//! Webhooks, as LiveKit sends them: each event POSTed as protojson with
//! `Content-Type: application/webhook+json` and `Authorization: <JWT>` (no "Bearer"), the JWT's
//! `sha256` claim being the base64 SHA-256 of the exact body. One queue and one sender per URL,
//! so events reach each receiver in order; retried with backoff; never waited on by media.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{Request, header};
use base64::Engine as _;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parloir_sfu::proto;
use parloir_signal::json::{self, Names};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Events waiting per URL before new ones are dropped (and counted).
const QUEUE: usize = 1024;
/// Attempts per event and URL, with the wait doubling from the first backoff.
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the JWT of a delivery is valid (LiveKit: 5 minutes).
const TOKEN_VALIDITY_S: i64 = 300;

/// Sees every event before it is queued; must not block.
pub type Observer = Arc<dyn Fn(&proto::WebhookEvent) + Send + Sync>;

/// Hands events to the per-URL senders without ever waiting.
#[derive(Clone)]
pub struct Webhooks {
    queues: Vec<mpsc::Sender<Arc<proto::WebhookEvent>>>,
    metrics: Arc<Metrics>,
    next_id: Arc<AtomicU64>,
    /// Deliveries queued or in progress, over all URLs.
    pending: Arc<AtomicU64>,
    /// Told of every event first (the speech and record planes learn that rooms closed);
    /// never block.
    observers: Vec<Observer>,
}

impl Webhooks {
    /// Starts one sender task per URL on the current tokio runtime. Events are signed with
    /// `key`/`secret`.
    pub fn start(urls: &[String], key: String, secret: String, metrics: Arc<Metrics>) -> Self {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let pending = Arc::new(AtomicU64::new(0));
        let queues = urls
            .iter()
            .map(|url| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let sender = Sender {
                    url: url.clone(),
                    key: key.clone(),
                    secret: secret.clone(),
                    client: client.clone(),
                    metrics: metrics.clone(),
                    pending: pending.clone(),
                };
                tokio::spawn(sender.run(rx));
                tx
            })
            .collect();
        Self {
            queues,
            metrics,
            next_id: Arc::new(AtomicU64::new(1)),
            pending,
            observers: Vec::new(),
        }
    }

    /// Calls `f` with every event, before it is queued (and even with no URL configured).
    pub fn with_observer(mut self, f: Observer) -> Self {
        self.observers.push(f);
        self
    }

    /// Waits until every queued event has been delivered or given up, at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Queues an event for every URL; a full queue drops it for that URL.
    pub fn send(&self, mut event: proto::WebhookEvent) {
        for observe in &self.observers {
            observe(&event);
        }
        if self.queues.is_empty() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        event.created_at = now.as_secs() as i64;
        event.id = format!(
            "EV_{:x}{:06x}",
            now.as_millis(),
            self.next_id.fetch_add(1, Relaxed)
        );
        let event = Arc::new(event);
        for queue in &self.queues {
            self.pending.fetch_add(1, Relaxed);
            if queue.try_send(event.clone()).is_err() {
                self.pending.fetch_sub(1, Relaxed);
                self.metrics.webhooks_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

struct Sender {
    url: String,
    key: String,
    secret: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    metrics: Arc<Metrics>,
    pending: Arc<AtomicU64>,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Arc<proto::WebhookEvent>>) {
        while let Some(event) = rx.recv().await {
            self.deliver(&event).await;
            self.pending.fetch_sub(1, Relaxed);
        }
    }

    /// Posts one event, retrying with doubling waits.
    async fn deliver(&self, event: &proto::WebhookEvent) {
        let body = match json::to_json("livekit.WebhookEvent", event, Names::Camel) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!("webhook event does not encode: {e}");
                return;
            }
        };
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match self.post(&body).await {
                Ok(()) => {
                    self.metrics.webhooks_sent.fetch_add(1, Relaxed);
                    return;
                }
                Err(e) if attempt == ATTEMPTS => {
                    self.metrics.webhooks_failed.fetch_add(1, Relaxed);
                    tracing::warn!(url = %self.url, event = %event.event, "webhook not delivered: {e}");
                }
                Err(e) => {
                    tracing::debug!(url = %self.url, attempt, "webhook failed, retrying: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }

    async fn post(&self, body: &Bytes) -> Result<(), String> {
        let request = Request::post(&self.url)
            .header(header::CONTENT_TYPE, "application/webhook+json")
            .header(header::AUTHORIZATION, self.token(body))
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status()))
        }
    }

    /// The JWT LiveKit's receivers check: issuer, expiry and the body's hash.
    fn token(&self, body: &[u8]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body));
        let claims = serde_json::json!({
            "iss": self.key,
            "nbf": now,
            "exp": now + TOKEN_VALIDITY_S,
            "sha256": hash,
            "video": {},
        });
        parloir_signal::sign_hs256(&claims, &self.secret)
    }
}
