//! The media worker: one thread that owns the UDP socket and the sans-IO [`Sfu`], fed with
//! datagrams, commands from signal sessions and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use parloir_net::{SendBatch, UdpEndpoint};
use parloir_sfu::{
    Command, Output, ServiceCall, ServiceError, ServiceReply, SessionId, Sfu, SfuConfig, Transport,
};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::ice_tcp::IceTcp;
use crate::metrics::Metrics;
use crate::webhook::Webhooks;

/// What a signal session receives from the SFU.
#[derive(Debug)]
pub enum ToSession {
    Signal(Box<parloir_sfu::proto::signal_response::Message>),
    Close,
}

/// The WebSocket currently serving a session. A resumed session gets a new socket; the
/// generation tells an old socket's clean-up not to remove the new one.
pub struct SessionSlot {
    pub generation: u64,
    pub tx: UnboundedSender<ToSession>,
}

/// Where each session's messages go.
pub type Sessions = Arc<Mutex<HashMap<SessionId, SessionSlot>>>;

type ServiceResult = Result<ServiceReply, ServiceError>;
/// Who waits for the answer to each RoomService call.
type Calls = Arc<Mutex<HashMap<u64, oneshot::Sender<ServiceResult>>>>;

/// The control plane's handle on the media worker.
#[derive(Clone)]
pub struct MediaHandle {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    pub sessions: Sessions,
    calls: Calls,
    next_call: Arc<std::sync::atomic::AtomicU64>,
}

impl MediaHandle {
    /// Queues a command and wakes the worker. Fails only when the worker has stopped.
    pub fn send(&self, command: Command) -> Result<(), MediaGone> {
        self.commands.send(command).map_err(|_| MediaGone)?;
        self.waker.wake().map_err(|_| MediaGone)
    }

    /// Makes a RoomService call and waits for its answer.
    pub async fn call(&self, call: ServiceCall, unix_ms: i64) -> Result<ServiceResult, MediaGone> {
        let id = self
            .next_call
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        self.send(Command::Service {
            id,
            call: Box::new(call),
            unix_ms,
        })?;
        rx.await.map_err(|_| MediaGone)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the media worker has stopped")]
pub struct MediaGone;

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
const TCP_LISTENER: Token = Token(2);
/// The longest the worker sleeps without checking for commands or time.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// Datagrams taken from the socket per receive call.
const RECV_BATCH: usize = 32;
/// Datagrams queued before a send call. Outputs are flushed when this fills, after each
/// receive batch, and before the worker sleeps: a datagram waits at most for the fan-out of
/// the few inputs that precede it in the batch.
const SEND_BATCH: usize = 64;

/// Starts the media worker thread on `endpoint`, pinned to `cpus` when not empty.
pub fn spawn(
    endpoint: UdpEndpoint,
    config: SfuConfig,
    metrics: Arc<Metrics>,
    webhooks: Webhooks,
    tcp: Option<(std::net::TcpListener, SocketAddr)>,
    cpus: Vec<usize>,
) -> std::io::Result<MediaHandle> {
    let poll = Poll::new()?;
    endpoint.register(poll.registry(), SOCKET)?;
    let tcp = match tcp {
        Some((listener, local)) => {
            listener.set_nonblocking(true)?;
            let mut tcp = IceTcp::new(mio::net::TcpListener::from_std(listener), local);
            poll.registry()
                .register(tcp.listener(), TCP_LISTENER, Interest::READABLE)?;
            Some(tcp)
        }
        None => None,
    };
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = mpsc::channel();
    let sessions: Sessions = Arc::default();
    let calls: Calls = Arc::default();
    let handle = MediaHandle {
        commands: tx,
        waker,
        sessions: sessions.clone(),
        calls: calls.clone(),
        next_call: Arc::default(),
    };
    let destination = config
        .candidates
        .first()
        .copied()
        .unwrap_or_else(|| endpoint.local_addr());
    let candidates = config.candidates.clone();
    let tx = endpoint.send_batch(SEND_BATCH);
    thread::Builder::new()
        .name("media-0".into())
        .spawn(move || {
            // A pinned thread pins itself before anything else.
            if !cpus.is_empty()
                && let Err(e) = parloir_net::topology::pin_current_thread(&cpus)
            {
                tracing::warn!("cannot pin media-0 to CPUs {cpus:?}: {e}");
            }
            let mut worker = Worker {
                sfu: Sfu::new(config, Instant::now()),
                endpoint,
                poll,
                commands: rx,
                sessions,
                calls,
                webhooks,
                tcp,
                metrics,
                destination,
                candidates,
                tx,
                send_errors: 0,
            };
            worker.run();
        })?;
    Ok(handle)
}

struct Worker {
    sfu: Sfu,
    endpoint: UdpEndpoint,
    poll: Poll,
    commands: mpsc::Receiver<Command>,
    sessions: Sessions,
    calls: Calls,
    webhooks: Webhooks,
    /// ICE-TCP, when configured.
    tcp: Option<IceTcp>,
    metrics: Arc<Metrics>,
    /// The advertised candidate datagrams arrive at (the socket may be bound to 0.0.0.0).
    destination: SocketAddr,
    /// Every advertised candidate: a datagram's destination address (IP_PKTINFO) picks one.
    candidates: Vec<SocketAddr>,
    /// Datagrams waiting for the next send call.
    tx: SendBatch,
    send_errors: u64,
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(64);
        let mut rx = self.endpoint.recv_batch(RECV_BATCH);
        let mut deadline = self.drain_output();
        loop {
            let now = Instant::now();
            let wait = deadline.saturating_duration_since(now).min(MAX_WAIT);
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!("media poll failed: {e}");
                return;
            }
            loop {
                match self.commands.try_recv() {
                    Ok(command) => {
                        self.guarded(|sfu| sfu.handle_command(Instant::now(), command));
                        deadline = self.drain_output();
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        tracing::info!("media worker stopping");
                        return;
                    }
                }
            }
            loop {
                let received = self.endpoint.recv(&mut rx);
                self.metrics.udp_recv_calls.fetch_add(1, Relaxed);
                match received {
                    Ok(0) => break,
                    Ok(_) => {
                        let now = Instant::now();
                        for (meta, contents) in rx.datagrams() {
                            let source = meta.source;
                            let destination = self.local_destination(meta.destination);
                            self.guarded(|sfu| {
                                sfu.handle_receive(now, source, destination, contents)
                            });
                            deadline = self.drain_output();
                        }
                        self.flush();
                    }
                    Err(e) => {
                        // ICMP errors from earlier sends surface here; they are not fatal.
                        tracing::debug!("UDP receive error: {e}");
                        break;
                    }
                }
            }
            if let Some(next) = self.tcp_events(&events) {
                deadline = next;
            }
            let now = Instant::now();
            if deadline <= now {
                self.guarded(|sfu| sfu.handle_timeout(now));
                deadline = self.drain_output();
            }
            self.flush();
            self.metrics
                .publish_sfu(&self.sfu.stats(), self.send_errors);
            self.metrics
                .udp_ring_exhausted
                .store(self.endpoint.ring_exhausted(), Relaxed);
            if let Some(tcp) = &self.tcp {
                use std::sync::atomic::Ordering::Relaxed;
                self.metrics
                    .ice_tcp_connections
                    .store(tcp.accepted, Relaxed);
                self.metrics
                    .ice_tcp_packets_in
                    .store(tcp.packets_in, Relaxed);
                self.metrics.ice_tcp_dropped.store(tcp.dropped, Relaxed);
            }
        }
    }

    /// Accepts, reads and writes ICE-TCP connections that `events` says are ready. Returns the
    /// SFU's next deadline when packets were handled.
    fn tcp_events(&mut self, events: &Events) -> Option<Instant> {
        let tcp = self.tcp.as_mut()?;
        let registry = self.poll.registry();
        let mut packets: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        for event in events.iter() {
            let token = event.token();
            if token == TCP_LISTENER {
                tcp.accept(registry);
            } else if tcp.owns(token) {
                if event.is_writable() {
                    tcp.flush(registry, token);
                }
                if event.is_readable() || event.is_read_closed() {
                    tcp.readable(registry, token, |peer, packet| {
                        packets.push((peer, packet.to_vec()))
                    });
                }
            }
        }
        if packets.is_empty() {
            return None;
        }
        let local = tcp.local;
        let mut deadline = None;
        for (peer, packet) in packets {
            self.guarded(|sfu| {
                sfu.handle_receive_on(Instant::now(), Transport::Tcp, peer, local, &packet)
            });
            deadline = Some(self.drain_output());
        }
        deadline
    }

    /// Runs one SFU call, surviving a panic inside it (str0m has a few `panic!`s on states it
    /// considers impossible). The SFU may then hold an inconsistent peer, but one meeting's
    /// trouble must not end every meeting on the server; the panic is logged and counted.
    fn guarded(&mut self, f: impl FnOnce(&mut Sfu)) {
        let sfu = &mut self.sfu;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(sfu))).is_err() {
            self.metrics
                .media_panics
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!("the SFU panicked handling an input; continuing");
        }
    }

    /// Sends and delivers everything the SFU has queued; returns its next deadline.
    fn drain_output(&mut self) -> Instant {
        loop {
            match self.sfu.poll_output() {
                Output::Transmit(t) if t.transport == Transport::Tcp => {
                    if let Some(tcp) = self.tcp.as_mut() {
                        tcp.send(self.poll.registry(), t.destination, &t.contents);
                    }
                }
                Output::Transmit(t) => {
                    if !self.tx.push(t.destination, &t.contents) {
                        self.flush();
                        if !self.tx.push(t.destination, &t.contents) {
                            // Larger than any datagram we send: str0m never makes one.
                            self.send_errors += 1;
                        }
                    }
                }
                Output::Signal(session, message) => {
                    self.deliver(session, ToSession::Signal(message))
                }
                Output::Close(session) => self.deliver(session, ToSession::Close),
                Output::Webhook(event) => self.webhooks.send(*event),
                Output::ServiceReply { id, result } => {
                    let waiting = self
                        .calls
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    if let Some(tx) = waiting {
                        let _ = tx.send(*result);
                    }
                }
                Output::Timeout(t) => return t,
            }
        }
    }

    /// Sends the queued datagrams.
    fn flush(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        let out = self.endpoint.send(&mut self.tx);
        self.send_errors += out.dropped as u64;
        self.metrics
            .udp_send_calls
            .fetch_add(out.calls as u64, Relaxed);
    }

    /// The advertised candidate a datagram was sent to: the one with the address the kernel
    /// reported, else the first.
    fn local_destination(&self, ip: Option<std::net::IpAddr>) -> SocketAddr {
        ip.and_then(|ip| self.candidates.iter().find(|c| c.ip() == ip))
            .copied()
            .unwrap_or(self.destination)
    }

    fn deliver(&self, session: SessionId, message: ToSession) {
        // The lock is only held to look up the sender; a closed session just drops messages.
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = sessions.get(&session) {
            let _ = slot.tx.send(message);
        }
    }
}
