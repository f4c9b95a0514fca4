//! The media worker: one thread that owns the UDP socket and the sans-IO [`Sfu`], fed with
//! datagrams, commands from signal sessions and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use mio::{Events, Interest, Poll, Token, Waker};
use parloir_net::stamped::arrival;
use parloir_net::{SendBatch, UdpEndpoint};
use parloir_sfu::{
    Command, Output, Relay, ServiceCall, ServiceError, ServiceReply, SessionId, Sfu, SfuConfig,
    Transport,
};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::ice_tcp::IceTcp;
use crate::metrics::{Metrics, WorkerFigures};
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

/// One media worker's inbox.
struct Link {
    commands: mpsc::Sender<Command>,
    waker: Arc<Waker>,
}

/// The control plane's handle on the media workers. A room's first participants go to its
/// home worker, chosen by a hash of its name; past `rtc.room_span_after` of them, the room
/// spans workers ([`Placement`]). A session's id carries its worker's index in its top 16
/// bits, so every command finds its worker without a lookup.
#[derive(Clone)]
pub struct MediaHandle {
    links: Arc<Vec<Link>>,
    pub sessions: Sessions,
    calls: Calls,
    next_call: Arc<std::sync::atomic::AtomicU64>,
    placement: Arc<Placement>,
}

/// Where new sessions go: a room's home worker until it holds `span_after` of the room's
/// sessions (0: always), then the least loaded worker holding fewer of them than that (the
/// least loaded of all when every worker holds that many). Counts are of live signal
/// sessions, kept by the control plane ([`MediaHandle::placed`]).
pub struct Placement {
    workers: usize,
    span_after: u32,
    state: Mutex<PlacementState>,
}

#[derive(Default)]
struct PlacementState {
    /// Sessions per worker, per room.
    rooms: HashMap<String, Vec<u32>>,
    /// Sessions per worker.
    load: Vec<u32>,
}

impl Placement {
    pub fn new(workers: usize, span_after: u32) -> Self {
        Placement {
            workers: workers.max(1),
            span_after,
            state: Mutex::new(PlacementState {
                rooms: HashMap::new(),
                load: vec![0; workers.max(1)],
            }),
        }
    }

    /// The worker for a new session in `room`.
    pub fn place(&self, room: &str) -> usize {
        let home = parloir_sfu::home_worker(room, self.workers);
        if self.span_after == 0 || self.workers == 1 {
            return home;
        }
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(counts) = state.rooms.get(room) else {
            return home;
        };
        if counts[home] < self.span_after {
            return home;
        }
        let least = |room_full: bool| {
            (0..self.workers)
                .filter(|w| room_full || counts[*w] < self.span_after)
                .min_by_key(|w| (state.load[*w], *w != home, *w))
        };
        least(false).or_else(|| least(true)).unwrap_or(home)
    }

    fn enter(&self, room: &str, worker: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let workers = self.workers;
        let w = worker % workers;
        state
            .rooms
            .entry(room.to_string())
            .or_insert_with(|| vec![0; workers])[w] += 1;
        state.load[w] += 1;
    }

    fn exit(&self, room: &str, worker: usize) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let w = worker % self.workers;
        state.load[w] = state.load[w].saturating_sub(1);
        if let Some(counts) = state.rooms.get_mut(room) {
            counts[w] = counts[w].saturating_sub(1);
            if counts.iter().all(|c| *c == 0) {
                state.rooms.remove(room);
            }
        }
    }
}

/// A live session counted by [`Placement`] until dropped.
pub struct Placed {
    placement: Arc<Placement>,
    room: String,
    worker: usize,
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.placement.exit(&self.room, self.worker);
    }
}

/// Bits of a session id below the worker index.
const SESSION_SERIAL_BITS: u32 = 48;

impl MediaHandle {
    /// The home worker of `room`: RoomService calls about it go there.
    pub fn worker_for_room(&self, room: &str) -> usize {
        parloir_sfu::home_worker(room, self.links.len())
    }

    /// The id of a new session (`serial`, unique per process) joining `room`, on the worker
    /// [`Placement`] picks.
    pub fn session_id(&self, room: &str, serial: u64) -> SessionId {
        let worker = self.placement.place(room) as u64;
        SessionId((worker << SESSION_SERIAL_BITS) | (serial & ((1 << SESSION_SERIAL_BITS) - 1)))
    }

    /// Counts `session` in `room` for placement until the value is dropped.
    pub fn placed(&self, room: &str, session: SessionId) -> Placed {
        let worker = self.worker_of(session);
        self.placement.enter(room, worker);
        Placed {
            placement: self.placement.clone(),
            room: room.to_string(),
            worker,
        }
    }

    fn worker_of(&self, session: SessionId) -> usize {
        ((session.0 >> SESSION_SERIAL_BITS) as usize) % self.links.len()
    }

    /// Queues a command for the worker it concerns (every worker for `Shutdown`) and wakes
    /// it. Fails only when that worker has stopped.
    pub fn send(&self, command: Command) -> Result<(), MediaGone> {
        let worker = match (&command, command.session()) {
            (_, Some(session)) => self.worker_of(session),
            (Command::Service { call, .. }, None) => {
                call.room().map_or(0, |room| self.worker_for_room(room))
            }
            (Command::Shutdown, None) => {
                for w in 0..self.links.len() {
                    self.send_to(w, Command::Shutdown)?;
                }
                return Ok(());
            }
            (_, None) => 0,
        };
        self.send_to(worker, command)
    }

    fn send_to(&self, worker: usize, command: Command) -> Result<(), MediaGone> {
        let link = self.links.get(worker).ok_or(MediaGone)?;
        link.commands.send(command).map_err(|_| MediaGone)?;
        link.waker.wake().map_err(|_| MediaGone)
    }

    /// Makes a RoomService call and waits for its answer: on the room's worker, or, for
    /// ListRooms, on every worker, merged.
    pub async fn call(&self, call: ServiceCall, unix_ms: i64) -> Result<ServiceResult, MediaGone> {
        if call.room().is_some() || self.links.len() == 1 {
            let worker = call.room().map_or(0, |r| self.worker_for_room(r));
            return self.call_on(worker, call, unix_ms).await;
        }
        let mut rooms = Vec::new();
        for worker in 0..self.links.len() {
            match self.call_on(worker, call.clone(), unix_ms).await? {
                Ok(ServiceReply::Rooms(r)) => rooms.extend(r.rooms),
                other => return Ok(other),
            }
        }
        // A room spanning workers is listed by each: once is enough (one that knows its sid).
        rooms.sort_by(|a, b| (&a.name, a.sid.is_empty()).cmp(&(&b.name, b.sid.is_empty())));
        rooms.dedup_by(|a, b| a.name == b.name);
        Ok(Ok(ServiceReply::Rooms(
            parloir_sfu::proto::ListRoomsResponse { rooms },
        )))
    }

    async fn call_on(
        &self,
        worker: usize,
        call: ServiceCall,
        unix_ms: i64,
    ) -> Result<ServiceResult, MediaGone> {
        let id = self
            .next_call
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        self.send_to(
            worker,
            Command::Service {
                id,
                call: Box::new(call),
                unix_ms,
            },
        )?;
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
/// Commands handled per turn of the loop before the socket is read again: a subscriber's
/// answer in a room of 150 costs the worker about 3 ms to apply, and answers to one publish
/// come back together.
const COMMANDS_PER_TURN: usize = 4;
/// Datagrams taken from the socket per receive call.
const RECV_BATCH: usize = 32;
/// Datagrams per send call (a GSO group counts as its datagrams).
const SEND_BATCH: usize = 64;
/// With GSO, transmits are held until the next flush (at most this many) and sent grouped by
/// destination.
const MAX_PENDING: usize = 1024;
/// Due timeouts run and sends are flushed after every this many received datagrams, and at the
/// end of each receive batch: a datagram waits for the fan-out of at most this many inputs.
const FLUSH_EVERY: usize = 8;

/// What one media worker starts with.
pub struct WorkerSetup {
    pub endpoint: UdpEndpoint,
    pub config: SfuConfig,
    /// ICE-TCP: the listener and the address it is advertised as.
    pub tcp: Option<(std::net::TcpListener, SocketAddr)>,
    /// The CPUs it pins itself to (empty: not pinned).
    pub cpus: Vec<usize>,
    /// Where published audio goes when the speech plane is on.
    pub audio_tap: Option<Box<dyn parloir_sfu::AudioTap>>,
    /// Where the media of recorded rooms goes when recording is on.
    pub record_tap: Option<Box<dyn parloir_sfu::RecordTap>>,
}

/// Relays from the other media workers (rooms spanning workers, `parloir_sfu::Relay`). Frames
/// take a bounded queue: a worker that falls behind loses frames (counted), and the
/// publisher's worker never waits. Room state (participants, subscriptions, key frame
/// requests, data, calls) takes an unbounded one: it is rare, and never dropped.
struct RelayInbox {
    media: mpsc::Receiver<(u16, Box<Relay>)>,
    control: mpsc::Receiver<(u16, Box<Relay>)>,
}

/// Another worker's relay inbox, and its waker.
#[derive(Clone)]
struct RelayLink {
    media: mpsc::SyncSender<(u16, Box<Relay>)>,
    control: mpsc::Sender<(u16, Box<Relay>)>,
    waker: Arc<Waker>,
}

/// Frames queued from one worker to another before the receiver drops them.
const RELAY_QUEUE: usize = 16_384;
/// Relayed frames handled per turn of the loop before the socket is read again.
const RELAYS_PER_TURN: usize = 1024;

/// Starts one media worker thread (`media-<i>`) per setup. They share the session and call
/// tables the control plane reads, and relay to each other what rooms spanning workers need.
pub fn spawn(
    setups: Vec<WorkerSetup>,
    metrics: Arc<Metrics>,
    webhooks: Webhooks,
    span_after: u32,
) -> std::io::Result<MediaHandle> {
    let sessions: Sessions = Arc::default();
    let calls: Calls = Arc::default();
    // Every worker's poll, waker and relay inbox first: each worker gets the others' links.
    let mut prepared = Vec::new();
    let mut relay_links = Vec::new();
    for _ in &setups {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (media_tx, media_rx) = mpsc::sync_channel(RELAY_QUEUE);
        let (control_tx, control_rx) = mpsc::channel();
        relay_links.push(RelayLink {
            media: media_tx,
            control: control_tx,
            waker: waker.clone(),
        });
        let inbox = RelayInbox {
            media: media_rx,
            control: control_rx,
        };
        prepared.push((poll, waker, inbox));
    }
    let mut links = Vec::new();
    for (index, (setup, (poll, waker, inbox))) in setups.into_iter().zip(prepared).enumerate() {
        links.push(spawn_one(
            index,
            setup,
            (poll, waker, inbox, relay_links.clone()),
            metrics.clone(),
            webhooks.clone(),
            sessions.clone(),
            calls.clone(),
        )?);
    }
    if links.is_empty() {
        return Err(std::io::Error::other("no media worker to start"));
    }
    let workers = links.len();
    Ok(MediaHandle {
        links: Arc::new(links),
        sessions,
        calls,
        next_call: Arc::default(),
        placement: Arc::new(Placement::new(workers, span_after)),
    })
}

fn spawn_one(
    index: usize,
    setup: WorkerSetup,
    (poll, waker, inbox, relay_links): (Poll, Arc<Waker>, RelayInbox, Vec<RelayLink>),
    metrics: Arc<Metrics>,
    webhooks: Webhooks,
    sessions: Sessions,
    calls: Calls,
) -> std::io::Result<Link> {
    let WorkerSetup {
        endpoint,
        config,
        tcp,
        cpus,
        audio_tap,
        record_tap,
    } = setup;
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
    let (tx, rx) = mpsc::channel();
    let relay_out = (0..relay_links.len()).map(|_| Vec::new()).collect();
    let destination = config
        .candidates
        .first()
        .copied()
        .unwrap_or_else(|| endpoint.local_addr());
    let candidates = config.candidates.clone();
    let send_batch = endpoint.send_batch(SEND_BATCH);
    thread::Builder::new()
        .name(format!("media-{index}"))
        .spawn(move || {
            // A pinned thread pins itself before anything else.
            if !cpus.is_empty()
                && let Err(e) = parloir_net::topology::pin_current_thread(&cpus)
            {
                tracing::warn!("cannot pin media-{index} to CPUs {cpus:?}: {e}");
            }
            let mut sfu = Sfu::new(config, Instant::now());
            if let Some(tap) = audio_tap {
                sfu.set_audio_tap(tap);
            }
            if let Some(tap) = record_tap {
                sfu.set_record_tap(tap);
            }
            let mut worker = Worker {
                index,
                sfu,
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
                tx: send_batch,
                pending: Vec::with_capacity(MAX_PENDING),
                send_errors: 0,
                inbox,
                relay_links,
                relay_out,
                relay_dropped: 0,
            };
            worker.run();
        })?;
    Ok(Link {
        commands: tx,
        waker,
    })
}

struct Worker {
    index: usize,
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
    /// With GSO: the SFU's transmits since the last flush, grouped by destination at the flush.
    pending: Vec<parloir_sfu::Transmit>,
    send_errors: u64,
    /// Relays from the other workers, the others' inboxes, and what goes to each at the next
    /// flush.
    inbox: RelayInbox,
    relay_links: Vec<RelayLink>,
    #[allow(
        clippy::vec_box,
        reason = "the boxes go on through the queues as they are: no copy of a frame's metadata"
    )]
    relay_out: Vec<Vec<Box<Relay>>>,
    /// Frames the receiving worker's full queue refused.
    relay_dropped: u64,
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(64);
        let mut rx = self.endpoint.recv_batch(RECV_BATCH);
        let mut deadline = self.drain_output();
        // Commands left in the channel by the last turn: the waker does not ring for them.
        let mut commands_left = false;
        loop {
            let now = Instant::now();
            let wait = if commands_left {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(now).min(MAX_WAIT)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!("media poll failed: {e}");
                return;
            }
            commands_left = false;
            for handled in 0.. {
                if handled == COMMANDS_PER_TURN {
                    commands_left = true;
                    break;
                }
                match self.commands.try_recv() {
                    Ok(command) => {
                        self.guarded(|sfu| sfu.handle_command(Instant::now(), command));
                        self.drain_output();
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        tracing::info!("media worker stopping");
                        return;
                    }
                }
            }
            // Relays left for the next turn: no sleep before it.
            commands_left |= self.handle_relays();
            deadline = self.drain_output();
            loop {
                let received = self.endpoint.recv(&mut rx);
                self.metrics.udp_recv_calls.fetch_add(1, Relaxed);
                match received {
                    Ok(0) => break,
                    Ok(_) => {
                        // One reading of both clocks turns the batch's kernel timestamps
                        // into arrivals.
                        let (read, wall) = (Instant::now(), SystemTime::now());
                        for (i, (meta, contents)) in rx.datagrams().enumerate() {
                            // The clock is read for each datagram, not once per batch: str0m
                            // stamps what it sends at the time it is given, and a batch's
                            // fan-out leaves over milliseconds. Sent packets stamped all at
                            // the batch's start but arriving spread out read, to the
                            // subscribers' TWCC feedback and the estimator, as a queue
                            // building up.
                            let now = Instant::now();
                            let source = meta.source;
                            let destination = self.local_destination(meta.destination);
                            let arrived = arrival(read, wall, meta.timestamp);
                            self.guarded(|sfu| {
                                sfu.handle_receive_at(
                                    now,
                                    arrived,
                                    Transport::Udp,
                                    source,
                                    destination,
                                    contents,
                                )
                            });
                            deadline = self.drain_output();
                            if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
                                deadline = self.catch_up(deadline);
                                self.flush();
                            }
                        }
                        let due = self.catch_up(deadline);
                        self.flush();
                        // Frames relayed meanwhile wait for one receive batch, not for the
                        // end of a burst.
                        commands_left |= self.handle_relays();
                        deadline = due.min(self.drain_output());
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
            deadline = self.catch_up(deadline);
            self.flush();
            let tcp = self
                .tcp
                .as_ref()
                .map_or((0, 0, 0), |t| (t.accepted, t.packets_in, t.dropped));
            self.metrics.publish_worker(
                self.index,
                WorkerFigures {
                    sfu: self.sfu.stats(),
                    send_errors: self.send_errors,
                    relay_dropped: self.relay_dropped,
                    ring_exhausted: self.endpoint.ring_exhausted(),
                    tcp_accepted: tcp.0,
                    tcp_packets_in: tcp.1,
                    tcp_dropped: tcp.2,
                },
            );
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
    /// considers impossible): its result, or `None` after a panic. The SFU may then hold an
    /// inconsistent peer, but one meeting's trouble must not end every meeting on the server;
    /// the panic is logged and counted. Inputs and `poll_output` alike (which takes datagrams
    /// from the connections as they are sent and handles the events that come with them).
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Sfu) -> T) -> Option<T> {
        let sfu = &mut self.sfu;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(sfu))) {
            Ok(result) => Some(result),
            Err(_) => {
                self.metrics
                    .media_panics
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("the SFU panicked; continuing");
                None
            }
        }
    }

    /// Runs the SFU's timeouts that are due; returns its next deadline. Besides the end of each
    /// turn: a frame written to a paced subscriber connection (bandwidth estimation on) is
    /// packetized on its next timeout (due at once), so the receive loop calls this before each
    /// flush, and forwarded packets leave after at most [`FLUSH_EVERY`] inputs, not at the end
    /// of a receive burst of any length. Without pacing a frame is packetized as it is written
    /// (str0m patch 13) and its packets come out of the `drain_output` after the input.
    fn catch_up(&mut self, deadline: Instant) -> Instant {
        let now = Instant::now();
        if deadline > now {
            return deadline;
        }
        self.guarded(|sfu| sfu.handle_timeout(now));
        self.drain_output()
    }

    /// Sends and delivers everything the SFU has queued; returns its next deadline.
    fn drain_output(&mut self) -> Instant {
        loop {
            // After a panic, a deadline of now: the next turn goes on polling.
            let output = self
                .guarded(Sfu::poll_output)
                .unwrap_or_else(|| Output::Timeout(Instant::now()));
            match output {
                Output::Transmit(t) if t.transport == Transport::Tcp => {
                    if let Some(tcp) = self.tcp.as_mut() {
                        tcp.send(self.poll.registry(), t.destination, &t.contents);
                    }
                    t.recycle();
                }
                Output::Transmit(t) if self.endpoint.gso() => {
                    self.pending.push(t);
                    if self.pending.len() >= MAX_PENDING {
                        self.flush();
                    }
                }
                Output::Transmit(t) => {
                    self.queue(&t);
                    t.recycle();
                }
                Output::Signal(session, message) => {
                    self.deliver(session, ToSession::Signal(message))
                }
                Output::Close(session) => self.deliver(session, ToSession::Close),
                Output::Webhook(event) => self.webhooks.send(*event),
                Output::Relay { to, relay } => {
                    if let Some(out) = self.relay_out.get_mut(usize::from(to)) {
                        out.push(relay);
                    }
                }
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

    /// Hands relays from the other workers to the SFU: all of room state, frames up to
    /// [`RELAYS_PER_TURN`]. Returns whether frames are left for the next turn.
    fn handle_relays(&mut self) -> bool {
        while let Ok((from, relay)) = self.inbox.control.try_recv() {
            self.guarded(|sfu| sfu.handle_relay(Instant::now(), from, *relay));
            self.drain_output();
        }
        let now = Instant::now();
        for i in 0..RELAYS_PER_TURN {
            match self.inbox.media.try_recv() {
                Ok((from, relay)) => {
                    self.guarded(|sfu| sfu.handle_relay(now, from, *relay));
                }
                Err(_) => return false,
            }
            // As for received datagrams: the fan-out goes out every few inputs.
            self.drain_output();
            if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
                self.flush();
            }
        }
        true
    }

    /// Sends what the SFU relays to other workers, waking each once.
    fn send_relays(&mut self) {
        let from = self.index as u16;
        for (to, out) in self.relay_out.iter_mut().enumerate() {
            if out.is_empty() {
                continue;
            }
            let link = &self.relay_links[to];
            for relay in out.drain(..) {
                if matches!(*relay, Relay::Media { .. }) {
                    if link.media.try_send((from, relay)).is_err() {
                        self.relay_dropped += 1;
                    }
                } else if link.control.send((from, relay)).is_err() {
                    // That worker has stopped: the process is going down.
                    self.relay_dropped += 1;
                }
            }
            if let Err(e) = link.waker.wake() {
                tracing::debug!("cannot wake media-{to}: {e}");
            }
        }
    }

    /// Sends the queued datagrams, and the relays to other workers.
    fn flush(&mut self) {
        self.send_relays();
        if !self.pending.is_empty() {
            // Each client's datagrams side by side, in their order (a stable sort), so that
            // runs of equal size (the packets of one video frame) become one GSO send.
            self.pending.sort_by_key(|t| t.destination);
            let mut pending = std::mem::take(&mut self.pending);
            for t in pending.drain(..) {
                self.queue(&t);
                t.recycle();
            }
            self.pending = pending;
        }
        self.send_queued();
    }

    /// Adds a datagram to the send batch, sending the batch first when it is full.
    fn queue(&mut self, t: &parloir_sfu::Transmit) {
        if !self.tx.push(t.destination, &t.contents) {
            self.send_queued();
            if !self.tx.push(t.destination, &t.contents) {
                // Larger than any datagram we send: str0m never makes one.
                self.send_errors += 1;
            }
        }
    }

    fn send_queued(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        let messages = self.tx.sends() as u64;
        let out = self.endpoint.send(&mut self.tx);
        self.metrics.udp_send_messages.fetch_add(messages, Relaxed);
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

#[cfg(test)]
mod tests {
    use super::Placement;

    #[test]
    fn a_room_stays_home_until_it_outgrows_it_then_fills_the_least_loaded_workers() {
        let p = Placement::new(3, 2);
        let home = parloir_sfu::home_worker("big", 3);
        // Another room loads one worker that is not big's home.
        let busy = (home + 1) % 3;
        let idle = (home + 2) % 3;
        p.enter("other", busy);
        assert_eq!(p.place("big"), home);
        p.enter("big", home);
        assert_eq!(p.place("big"), home, "below span_after");
        p.enter("big", home);
        // Home holds 2: the next goes to the least loaded worker, then the busy one.
        assert_eq!(p.place("big"), idle);
        p.enter("big", idle);
        p.enter("big", idle);
        assert_eq!(p.place("big"), busy);
        p.enter("big", busy);
        p.enter("big", busy);
        // Every worker holds 2 of the room: the least loaded of all (idle: 2, home: 2, busy:
        // 3), home first among equals.
        assert_eq!(p.place("big"), home);
        // Sessions that end free their places.
        p.exit("big", home);
        p.exit("big", home);
        assert_eq!(p.place("big"), home);
        // Without spanning, always home.
        let off = Placement::new(3, 0);
        off.enter("big", home);
        off.enter("big", home);
        off.enter("big", home);
        assert_eq!(off.place("big"), home);
    }
}
