//! Datagram I/O for the media plane. It knows sockets and nothing of RTP.
//!
//! One surface, [`UdpEndpoint`], over three backends chosen at start-up ([`IoMode`]):
//! - [`Backend::IoUring`]: multishot `recvmsg` into a provided-buffer ring, batched `sendmsg`
//!   submissions, one ring per endpoint (so per media worker);
//! - [`Backend::Mmsg`]: `recvmmsg` / `sendmmsg`;
//! - [`Backend::Basic`]: one `recvmsg` / `sendmsg` per datagram, for kernels without either.
//!
//! All three move datagrams in batches through buffers the caller allocates once
//! ([`RecvBatch`], [`SendBatch`]): nothing is allocated per packet. Each received datagram
//! comes with its source and destination address, ECN bits, GRO segment size and, when asked
//! for, the kernel's receive timestamp. A send batch groups consecutive equal-size datagrams for
//! one destination into one GSO send (UDP_SEGMENT) where the kernel supports it.
//!
//! Also here: the machine's topology and core pinning ([`topology`]), which the core plan of
//! the hardware profile uses.

#![deny(unsafe_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime};

pub mod stamped;
pub mod tcp;
pub mod throughput;
pub mod topology;

mod basic;
mod mmsg;
mod sys;
mod uring;

use socket2::{Domain, Protocol, Socket, Type};

/// Receive and send buffers asked of the kernel: media bursts (keyframes to many subscribers)
/// must not overflow the default ~200 KiB.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// The largest datagram a receive slot holds without GRO; a larger one arrives truncated and
/// is flagged so.
pub const MAX_DATAGRAM: usize = 2048;
/// A receive slot with GRO on must hold a whole coalesced train.
pub const GRO_SLOT: usize = 65_535;
/// The most segments the kernel takes in one GSO send (UDP_MAX_SEGMENTS).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// The largest UDP payload one GSO send may carry.
const MAX_GSO_BYTES: usize = 65_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("cannot bind UDP {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the {backend} backend is not available")]
    Unavailable {
        backend: Backend,
        #[source]
        source: io::Error,
    },
}

/// A datagram I/O backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    IoUring,
    Mmsg,
    Basic,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::IoUring, Backend::Mmsg, Backend::Basic];

    pub fn name(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Mmsg => "mmsg",
            Backend::Basic => "basic",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown I/O backend {s:?} (io_uring, mmsg or basic)"))
    }
}

/// How the backend is chosen: `io = "auto" | "io_uring" | "mmsg" | "basic"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// The first backend of [`AUTO_ORDER`] that works on this kernel.
    #[default]
    Auto,
    Fixed(Backend),
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            other => other.parse().map(IoMode::Fixed),
        }
    }
}

impl std::fmt::Display for IoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoMode::Auto => f.write_str("auto"),
            IoMode::Fixed(b) => b.fmt(f),
        }
    }
}

/// The order `auto` tries backends in, best first, as measured on the SFU workload
/// (perf/README.md, "Packet path").
pub const AUTO_ORDER: [Backend; 3] = [Backend::Mmsg, Backend::IoUring, Backend::Basic];

/// The two ECN bits of a received datagram (RFC 3168).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ecn {
    #[default]
    NotEct,
    Ect1,
    Ect0,
    Ce,
}

impl Ecn {
    pub fn from_bits(tos: u8) -> Self {
        match tos & 0b11 {
            0b01 => Ecn::Ect1,
            0b10 => Ecn::Ect0,
            0b11 => Ecn::Ce,
            _ => Ecn::NotEct,
        }
    }
}

/// How to open an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointConfig {
    pub backend: Backend,
    /// Group equal-size datagrams for one destination into GSO sends, when the kernel can.
    pub gso: bool,
    /// Let the kernel coalesce received trains (UDP_GRO); receive slots must then be
    /// [`GRO_SLOT`] bytes.
    pub gro: bool,
    /// Ask for kernel receive timestamps (SO_TIMESTAMPNS).
    pub timestamps: bool,
    /// io_uring: buffers in the provided-buffer ring.
    pub ring_buffers: u16,
}

impl EndpointConfig {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            gso: true,
            gro: false,
            timestamps: false,
            ring_buffers: 512,
        }
    }

    pub fn gso(mut self, on: bool) -> Self {
        self.gso = on;
        self
    }

    pub fn gro(mut self, on: bool) -> Self {
        self.gro = on;
        self
    }

    pub fn timestamps(mut self, on: bool) -> Self {
        self.timestamps = on;
        self
    }

    pub fn ring_buffers(mut self, n: u16) -> Self {
        self.ring_buffers = n.max(1);
        self
    }
}

/// What one received datagram (or, with GRO, one coalesced train of equal-size datagrams)
/// came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecvMeta {
    pub source: SocketAddr,
    /// The local address it was sent to (IP_PKTINFO), when the kernel said.
    pub destination: Option<IpAddr>,
    /// Bytes in the slot.
    pub len: usize,
    /// GRO segment size: the datagrams in the slot are `stride` bytes each (the last may be
    /// shorter). Equal to `len` when nothing was coalesced.
    pub stride: usize,
    pub ecn: Ecn,
    /// The kernel's receive time, when timestamps are on.
    pub timestamp: Option<SystemTime>,
    /// The datagram was larger than the slot and was cut: callers drop it.
    pub truncated: bool,
}

/// Receive buffers the caller allocates once: `slots` datagrams (or GRO trains) per call.
pub struct RecvBatch {
    data: Vec<u8>,
    slot: usize,
    metas: Vec<RecvMeta>,
}

impl RecvBatch {
    /// `slots` slots of `slot_size` bytes; use [`UdpEndpoint::recv_batch`] for the size the
    /// endpoint needs.
    pub fn new(slots: usize, slot_size: usize) -> Self {
        let slots = slots.max(1);
        Self {
            data: vec![0; slots * slot_size.max(1)],
            slot: slot_size.max(1),
            metas: Vec::with_capacity(slots),
        }
    }

    pub fn capacity(&self) -> usize {
        self.data.len() / self.slot
    }

    pub fn slot_size(&self) -> usize {
        self.slot
    }

    /// Slots filled by the last receive.
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// The filled slots: metadata and contents (a GRO train when `stride < len`).
    pub fn slots(&self) -> impl Iterator<Item = (&RecvMeta, &[u8])> {
        self.metas
            .iter()
            .enumerate()
            .map(|(i, m)| (m, &self.data[i * self.slot..i * self.slot + m.len]))
    }

    /// Every received datagram, GRO trains split at their stride, truncated ones left out.
    pub fn datagrams(&self) -> impl Iterator<Item = (&RecvMeta, &[u8])> {
        self.slots()
            .filter(|(m, _)| !m.truncated)
            .flat_map(|(m, contents)| {
                let stride = m.stride.max(1);
                // A zero-length datagram is still one datagram.
                let n = contents.len().div_ceil(stride).max(1);
                (0..n).map(move |k| {
                    let start = (k * stride).min(contents.len());
                    let end = (start + stride).min(contents.len());
                    (m, &contents[start..end])
                })
            })
    }

    pub(crate) fn clear(&mut self) {
        self.metas.clear();
    }

    pub(crate) fn is_full(&self) -> bool {
        self.metas.len() == self.capacity()
    }

    /// The next free slot's buffer.
    pub(crate) fn free_slot(&mut self) -> &mut [u8] {
        let i = self.metas.len();
        &mut self.data[i * self.slot..(i + 1) * self.slot]
    }

    /// Every free slot's buffer, in order.
    pub(crate) fn free_slots(&mut self) -> impl Iterator<Item = &mut [u8]> {
        let first = self.metas.len();
        self.data[first * self.slot..].chunks_exact_mut(self.slot)
    }

    /// Records the datagram the kernel wrote `offset` slots past the next free one, moving
    /// its bytes into that free slot when `offset > 0`.
    pub(crate) fn push_from(&mut self, offset: usize, meta: RecvMeta) {
        if offset > 0 {
            let to = self.metas.len() * self.slot;
            let from = to + offset * self.slot;
            self.data.copy_within(from..from + meta.len, to);
        }
        self.push(meta);
    }

    pub(crate) fn push(&mut self, meta: RecvMeta) {
        debug_assert!(!self.is_full() && meta.len <= self.slot);
        self.metas.push(meta);
    }
}

/// One queued send: a datagram, or a GSO group of `len / segment` datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transmit {
    pub destination: SocketAddr,
    pub start: usize,
    pub len: usize,
    /// Segment size; `len` for a single datagram.
    pub segment: usize,
}

impl Transmit {
    pub(crate) fn segments(&self) -> usize {
        self.len.div_ceil(self.segment.max(1)).max(1)
    }
}

/// Datagrams queued for one send call, copied into a buffer the caller allocates once.
pub struct SendBatch {
    data: Vec<u8>,
    transmits: Vec<Transmit>,
    datagrams: usize,
    max_datagrams: usize,
    gso: bool,
}

impl SendBatch {
    /// Room for `datagrams` datagrams of up to [`MAX_DATAGRAM`] bytes. With `gso`, consecutive
    /// equal-size datagrams for one destination are grouped.
    pub fn new(datagrams: usize, gso: bool) -> Self {
        let datagrams = datagrams.max(1);
        Self {
            data: Vec::with_capacity(datagrams * MAX_DATAGRAM),
            transmits: Vec::with_capacity(datagrams),
            datagrams: 0,
            max_datagrams: datagrams,
            gso,
        }
    }

    /// Queues a copy of `contents` for `destination`. Returns false, queuing nothing, when the
    /// batch is full or the datagram is larger than [`MAX_DATAGRAM`]: send, then push again.
    pub fn push(&mut self, destination: SocketAddr, contents: &[u8]) -> bool {
        if self.is_full() || contents.len() > MAX_DATAGRAM {
            return false;
        }
        let start = self.data.len();
        self.data.extend_from_slice(contents);
        self.datagrams += 1;
        let len = contents.len();
        if self.gso
            && len > 0
            && let Some(last) = self.transmits.last_mut()
            && last.destination == destination
            && last.len % last.segment == 0
            && len <= last.segment
            && last.segments() < MAX_GSO_SEGMENTS
            && last.len + len <= MAX_GSO_BYTES
        {
            // Equal size joins; a shorter one joins as the group's last segment.
            last.len += len;
            return true;
        }
        self.transmits.push(Transmit {
            destination,
            start,
            len,
            segment: len.max(1),
        });
        true
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.datagrams
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams == 0
    }

    pub fn is_full(&self) -> bool {
        self.datagrams >= self.max_datagrams
    }

    /// System-level sends queued: datagrams plus GSO groups each counted once.
    pub fn sends(&self) -> usize {
        self.transmits.len()
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.transmits.clear();
        self.datagrams = 0;
    }

    pub(crate) fn transmits(&self) -> &[Transmit] {
        &self.transmits
    }

    pub(crate) fn contents(&self, t: &Transmit) -> &[u8] {
        &self.data[t.start..t.start + t.len]
    }
}

/// What a send call did. Datagrams that could not go (a full socket buffer, an unreachable
/// destination) are dropped and counted: media is loss-tolerant and RTX repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendOutcome {
    pub sent: usize,
    pub dropped: usize,
    /// System calls (or io_uring submissions) made.
    pub calls: usize,
    /// The last error seen, if any datagram was dropped.
    pub error: Option<io::ErrorKind>,
    /// A GSO send failed with EIO: the device cannot segment.
    gso_refused: bool,
}

impl SendOutcome {
    pub(crate) fn drop(&mut self, n: usize, e: &io::Error, segmented: bool) {
        self.dropped += n;
        self.error = Some(e.kind());
        if segmented && e.raw_os_error() == Some(libc::EIO) {
            self.gso_refused = true;
        }
    }
}

/// One system-level send: a datagram, or a GSO group when `segment` is set.
pub(crate) struct Unit<'a> {
    pub destination: SocketAddr,
    pub contents: &'a [u8],
    pub segment: Option<u16>,
    pub datagrams: usize,
}

/// The sends `batch` needs: its GSO groups as such when `gso`, else one per datagram.
pub(crate) fn units(batch: &SendBatch, gso: bool) -> impl Iterator<Item = Unit<'_>> {
    batch.transmits().iter().flat_map(move |t| {
        let contents = batch.contents(t);
        let grouped = gso && t.segments() > 1;
        let step = if grouped {
            t.len.max(1)
        } else {
            t.segment.max(1)
        };
        let n = if grouped { 1 } else { t.segments() };
        (0..n).map(move |k| {
            let start = (k * step).min(contents.len());
            let end = (start + step).min(contents.len());
            Unit {
                destination: t.destination,
                contents: &contents[start..end],
                segment: grouped.then_some(t.segment as u16),
                datagrams: if grouped { t.segments() } else { 1 },
            }
        })
    })
}

/// What a backend implements.
pub(crate) trait Io: Send {
    /// Fills `batch` with what is waiting; 0 when nothing is.
    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize>;
    fn send(&mut self, batch: &SendBatch, gso: bool, out: &mut SendOutcome);
    /// The descriptor that becomes readable when `recv` has something.
    fn ready_fd(&self) -> RawFd;
    /// io_uring: times the provided-buffer ring ran dry and the receive was re-armed.
    fn ring_exhausted(&self) -> u64 {
        0
    }
}

/// A bound UDP socket with its backend, for one media worker.
pub struct UdpEndpoint {
    io: Box<dyn Io>,
    local: SocketAddr,
    config: EndpointConfig,
    gso: bool,
    gro: bool,
    timestamps: bool,
}

impl UdpEndpoint {
    /// Binds `addr` with the basic backend and default options.
    pub fn bind(addr: SocketAddr) -> Result<Self, NetError> {
        Self::open(addr, EndpointConfig::new(Backend::Basic))
    }

    /// Binds `addr` with large kernel buffers and the configured backend.
    pub fn open(addr: SocketAddr, config: EndpointConfig) -> Result<Self, NetError> {
        let bind_err = |source| NetError::Bind { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(bind_err)?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        socket.set_nonblocking(true).map_err(bind_err)?;
        socket.bind(&addr.into()).map_err(bind_err)?;
        let local = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| bind_err(io::Error::other("no local address")))?;
        let fd = socket.as_raw_fd();
        let (gro, timestamps) =
            sys::enable_receive_metadata(fd, addr.is_ipv6(), config.gro, config.timestamps);
        let gso = config.gso && sys::gso_supported(fd);
        let unavailable = |source| NetError::Unavailable {
            backend: config.backend,
            source,
        };
        let io: Box<dyn Io> = match config.backend {
            Backend::Basic => Box::new(basic::Basic::new(socket)),
            Backend::Mmsg => Box::new(mmsg::Mmsg::new(socket).map_err(unavailable)?),
            Backend::IoUring => {
                Box::new(uring::Uring::new(socket, config.ring_buffers, gro).map_err(unavailable)?)
            }
        };
        Ok(Self {
            io,
            local,
            config,
            gso,
            gro,
            timestamps,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn backend(&self) -> Backend {
        self.config.backend
    }

    /// Whether sends are grouped with GSO (asked for and accepted by the kernel).
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Whether the kernel coalesces received trains.
    pub fn gro(&self) -> bool {
        self.gro
    }

    pub fn timestamps(&self) -> bool {
        self.timestamps
    }

    /// Times the io_uring buffer ring ran dry (0 for the other backends). Nothing is lost
    /// then: the datagrams wait in the socket until the receive is re-armed.
    pub fn ring_exhausted(&self) -> u64 {
        self.io.ring_exhausted()
    }

    /// Receive buffers sized for this endpoint (GRO needs larger slots).
    pub fn recv_batch(&self, slots: usize) -> RecvBatch {
        RecvBatch::new(slots, if self.gro { GRO_SLOT } else { MAX_DATAGRAM })
    }

    /// A send batch that groups for GSO when this endpoint can.
    pub fn send_batch(&self, datagrams: usize) -> SendBatch {
        SendBatch::new(datagrams, self.gso)
    }

    /// Registers for readability: after a readiness event, call [`Self::recv`] until it
    /// returns 0.
    pub fn register(&self, registry: &mio::Registry, token: mio::Token) -> io::Result<()> {
        let fd = self.io.ready_fd();
        registry.register(
            &mut mio::unix::SourceFd(&fd),
            token,
            mio::Interest::READABLE,
        )
    }

    /// Fills `batch` (cleared first) with waiting datagrams; returns the slots filled, 0 when
    /// nothing is waiting. Errors are the socket's (an ICMP error from an earlier send
    /// surfaces here) and are not fatal.
    pub fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.clear();
        self.io.recv(batch)
    }

    /// Sends everything in `batch` and clears it.
    pub fn send(&mut self, batch: &mut SendBatch) -> SendOutcome {
        let mut out = SendOutcome::default();
        if !batch.is_empty() {
            self.io.send(batch, self.gso, &mut out);
            if out.gso_refused {
                // EIO from a GSO send: the device cannot segment (some virtual NICs). Turn
                // GSO off for good, as quinn does; the datagrams of that send were dropped.
                self.gso = false;
            }
        }
        batch.clear();
        out
    }

    /// Sends one datagram (tests, probes). Prefer batches.
    pub fn send_one(&mut self, destination: SocketAddr, contents: &[u8]) -> SendOutcome {
        let mut batch = SendBatch::new(1, false);
        if !batch.push(destination, contents) {
            return SendOutcome {
                dropped: 1,
                error: Some(io::ErrorKind::InvalidInput),
                ..Default::default()
            };
        }
        self.send(&mut batch)
    }
}

/// What start-up found about each backend and kernel feature.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Each backend with `Ok` or why it cannot be used here.
    pub backends: Vec<(Backend, Result<(), String>)>,
    pub gso: bool,
    pub gro: bool,
    /// io_uring opcodes this kernel supports, by name (empty when io_uring is unavailable).
    pub uring_opcodes: Vec<(&'static str, bool)>,
}

impl Probe {
    pub fn works(&self, backend: Backend) -> bool {
        self.backends
            .iter()
            .any(|(b, r)| *b == backend && r.is_ok())
    }

    /// The backend `mode` picks here, and why.
    pub fn choose(&self, mode: IoMode) -> Result<(Backend, String), String> {
        match mode {
            IoMode::Fixed(b) => match self.backends.iter().find(|(x, _)| *x == b) {
                Some((_, Ok(()))) => Ok((b, format!("{b} (configured)"))),
                Some((_, Err(why))) => Err(format!("the configured {b} backend fails: {why}")),
                None => Err(format!("{b} was not probed")),
            },
            IoMode::Auto => {
                let mut skipped = Vec::new();
                for b in AUTO_ORDER {
                    match self.backends.iter().find(|(x, _)| *x == b) {
                        Some((_, Ok(()))) if skipped.is_empty() => {
                            return Ok((b, format!("{b} (auto: first in {})", order_text())));
                        }
                        Some((_, Ok(()))) => {
                            return Ok((
                                b,
                                format!("{b} (auto; unavailable: {})", skipped.join("; ")),
                            ));
                        }
                        Some((_, Err(why))) => skipped.push(format!("{b}: {why}")),
                        None => {}
                    }
                }
                Err(format!("no UDP backend works: {}", skipped.join("; ")))
            }
        }
    }
}

fn order_text() -> String {
    AUTO_ORDER.map(|b| b.name()).join(" > ")
}

/// Tries each backend with a real loopback round trip (so a kernel or a seccomp policy that
/// refuses io_uring shows here, not under load), and the kernel's GSO and GRO.
pub fn probe() -> Probe {
    let backends = Backend::ALL
        .into_iter()
        .map(|b| (b, round_trip(b).map_err(|e| error_text(&*e))))
        .collect();
    let (gso, gro) = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)) {
        Ok(s) => (
            sys::gso_supported(s.as_raw_fd()),
            sys::set_int(s.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).is_ok(),
        ),
        Err(_) => (false, false),
    };
    Probe {
        backends,
        gso,
        gro,
        uring_opcodes: uring::opcodes(),
    }
}

fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One datagram to itself through `backend` on loopback.
fn round_trip(backend: Backend) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    let mut endpoint = UdpEndpoint::open(addr, EndpointConfig::new(backend).ring_buffers(8))?;
    let local = endpoint.local_addr();
    let sent = endpoint.send_one(local, b"parloir probe");
    if sent.sent != 1 {
        return Err(format!("send failed: {:?}", sent.error).into());
    }
    let mut batch = endpoint.recv_batch(1);
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        if endpoint.recv(&mut batch)? > 0 {
            let (meta, contents) = batch.slots().next().ok_or("empty batch")?;
            return if contents == b"parloir probe" && meta.source == local {
                Ok(())
            } else {
                Err("the datagram came back altered".into())
            };
        }
        if Instant::now() > deadline {
            return Err("the datagram never arrived".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_batches_group_equal_sizes_for_one_destination() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut batch = SendBatch::new(200, true);
        for _ in 0..3 {
            assert!(batch.push(a, &[1; 1200]));
        }
        assert!(batch.push(a, &[2; 700]), "a shorter one ends the group");
        assert!(batch.push(a, &[3; 1200]));
        assert!(batch.push(b, &[4; 1200]));
        assert!(batch.push(b, &[5; 1300]), "a longer one starts a new group");
        assert_eq!(batch.len(), 7);
        let groups: Vec<_> = batch
            .transmits()
            .iter()
            .map(|t| (t.destination, t.len, t.segment))
            .collect();
        assert_eq!(
            groups,
            [
                (a, 3 * 1200 + 700, 1200),
                (a, 1200, 1200),
                (b, 1200, 1200),
                (b, 1300, 1300)
            ]
        );
        // Contents stay in order.
        assert_eq!(batch.contents(&batch.transmits()[0])[3600], 2);
        batch.clear();
        assert!(batch.is_empty());

        let mut no_gso = SendBatch::new(10, false);
        no_gso.push(a, &[0; 100]);
        no_gso.push(a, &[0; 100]);
        assert_eq!(no_gso.sends(), 2);
    }

    #[test]
    fn groups_stop_at_the_kernel_limits() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut batch = SendBatch::new(1000, true);
        for _ in 0..MAX_GSO_SEGMENTS + 1 {
            batch.push(a, &[0; 100]);
        }
        assert_eq!(batch.sends(), 2, "64 segments at most per send");
        let mut big = SendBatch::new(1000, true);
        for _ in 0..60 {
            big.push(a, &[0; 1400]);
        }
        assert!(big.transmits().iter().all(|t| t.len <= MAX_GSO_BYTES));
        assert_eq!(big.len(), 60);
    }

    #[test]
    fn full_batches_and_oversized_datagrams_are_refused() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut batch = SendBatch::new(2, true);
        assert!(!batch.push(a, &[0; MAX_DATAGRAM + 1]));
        assert!(batch.push(a, &[0; 10]));
        assert!(batch.push(a, &[0; 10]));
        assert!(!batch.push(a, &[0; 10]));
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn gro_trains_split_at_their_stride() {
        let mut batch = RecvBatch::new(2, 4096);
        let meta = |len, stride| RecvMeta {
            source: "127.0.0.1:9".parse().unwrap(),
            destination: None,
            len,
            stride,
            ecn: Ecn::NotEct,
            timestamp: None,
            truncated: false,
        };
        batch.free_slot()[..2500].fill(7);
        batch.push(meta(2500, 1000));
        batch.push(meta(0, 0));
        let sizes: Vec<usize> = batch.datagrams().map(|(_, d)| d.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500, 0]);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<IoMode>(), Ok(IoMode::Auto));
        assert_eq!(
            "io_uring".parse::<IoMode>(),
            Ok(IoMode::Fixed(Backend::IoUring))
        );
        assert!("epoll".parse::<IoMode>().is_err());
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>(), Ok(b));
        }
    }
}
