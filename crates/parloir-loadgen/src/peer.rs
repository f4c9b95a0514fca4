//! One WebRTC peer connection of a simulated participant: a str0m `Rtc` on its own UDP socket,
//! the media it publishes, and the accounting of what it receives.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parloir_net::stamped;
use rand::SeedableRng;
use rand::rngs::StdRng;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaTime, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::End;
use crate::media::{self, Clip, Marker};
use crate::scenario::{Layer, Scenario, Video};
use crate::stats::{Counter, Latencies, Shared, StreamWatch};

/// Largest datagram we accept.
pub const MTU: usize = 2000;
/// Least time between two key frames of one layer, however many PLIs arrive.
const KEY_FRAME_MIN_INTERVAL: Duration = Duration::from_millis(300);

/// A str0m peer connection bound to its own UDP socket.
pub struct Peer {
    pub rtc: Rtc,
    pub socket: Arc<UdpSocket>,
    pub local: SocketAddr,
    pub deadline: Instant,
    pub connected: bool,
    kicked: bool,
}

impl Peer {
    /// A peer on a fresh UDP port of `ip`, announcing it as its only (host) candidate.
    pub async fn bind(ip: IpAddr, now: Instant) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        // Without them each datagram counts as arriving when it is read.
        stamped::enable_timestamps(socket.as_raw_fd());
        let local = socket.local_addr()?;
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        rtc.add_local_candidate(Candidate::host(local, "udp")?);
        Ok(Self {
            rtc,
            socket: Arc::new(socket),
            local,
            deadline: now,
            connected: false,
            kicked: false,
        })
    }

    /// Feeds one datagram from the server, read at `now`, that arrived at `arrived`; counts it
    /// when it is RTP.
    pub fn input(
        &mut self,
        shared: &Shared,
        now: Instant,
        arrived: Instant,
        from: SocketAddr,
        data: &[u8],
    ) {
        if is_rtp(data) {
            shared.add(Counter::RtpReceived, 1);
            shared.add(Counter::BytesReceived, data.len() as u64);
        }
        let Ok(contents) = data.try_into() else {
            return; // not STUN, DTLS, RTP or RTCP: ignore it
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.local,
                contents,
            },
        );
        if self.rtc.accepts(&input) {
            if arrived < now {
                self.rtc.set_arrival(arrived);
            }
            let _ = self.rtc.handle_input(input);
        }
    }

    /// Asks for a timeout at once: after an SDP or a candidate was applied, str0m's ICE agent
    /// starts checking only once it is given time, and its last timeout may be far away.
    pub fn kick(&mut self) {
        self.kicked = true;
    }

    /// Feeds the datagrams queued on the socket, up to 65 (a busy socket costs fewer
    /// wake-ups), each with the time the kernel stamped it on arrival. str0m reports that time
    /// in its TWCC feedback, which the sender's bandwidth estimator reads: the time of reading
    /// is not an arrival when this task ran late or read a batch at once, and the spread it
    /// adds looked like congestion to the SFU's estimator (a real client's network thread
    /// reads kernel timestamps too).
    pub fn input_ready(&mut self, shared: &Shared, buf: &mut [u8]) {
        let fd = self.socket.as_raw_fd();
        for _ in 0..=64 {
            let read = self
                .socket
                .try_io(Interest::READABLE, || stamped::recv_stamped(fd, buf));
            let (n, from, stamp) = match read {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors from earlier sends, and the like: nothing to read here.
                Err(_) => continue,
            };
            let (now, wall) = (Instant::now(), SystemTime::now());
            let arrived = stamped::arrival(now, wall, stamp);
            self.input(shared, now, arrived, from, &buf[..n]);
        }
    }

    /// Lets time pass up to `now`.
    pub fn tick(&mut self, now: Instant) {
        if (self.kicked || now >= self.deadline) && self.rtc.is_alive() {
            self.kicked = false;
            let _ = self.rtc.handle_input(Input::Timeout(now));
        }
    }

    /// Sends what str0m has to send and hands its events to `on_event`, until it asks to be woken
    /// later. Returns an error when the connection died.
    pub fn drain(
        &mut self,
        shared: &Shared,
        mut on_event: impl FnMut(Event),
    ) -> anyhow::Result<()> {
        loop {
            if !self.rtc.is_alive() {
                anyhow::bail!("peer connection closed");
            }
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.deadline = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    if is_rtp(&t.contents) {
                        shared.add(Counter::RtpSent, 1);
                        shared.add(Counter::BytesSent, t.contents.len() as u64);
                    }
                    if let Err(e) = self.socket.try_send_to(&t.contents, t.destination) {
                        // A full socket buffer drops the datagram as a congested network would.
                        if e.kind() == io::ErrorKind::WouldBlock {
                            shared.add(Counter::SendDropped, 1);
                        }
                    }
                    // Sent: the buffer goes back for the next packet (str0m patch 25).
                    str0m::net::recycle(t.contents.into());
                }
                Output::Event(e) => {
                    if matches!(e, Event::Connected) {
                        self.connected = true;
                    }
                    on_event(e);
                }
            }
        }
    }
}

/// RTP (not RTCP) by its first two bytes: version 2, and a payload type outside RTCP's 192-223.
pub fn is_rtp(data: &[u8]) -> bool {
    data.len() >= 12 && data[0] >> 6 == 2 && !(192..=223).contains(&data[1])
}

/// Who speaks when: the floor passes every `turn_s` to the next `speakers` publishers.
pub fn speaking(scenario: &Scenario, publisher: u32, since_start: Duration) -> bool {
    let n = scenario.audio_publishers.max(1);
    let speakers = scenario.audio.speakers.min(n);
    let turn = (since_start.as_secs_f64() / scenario.audio.turn_s.max(0.1)) as u64;
    let first = (turn * u64::from(speakers)) % u64::from(n);
    let offset = (u64::from(publisher) + u64::from(n) - first) % u64::from(n);
    offset < u64::from(speakers)
}

struct LayerState {
    layer: Layer,
    /// Real frames to loop instead of synthetic ones, and the next one to send.
    clip: Option<(Arc<Clip>, usize)>,
    rid: Option<Rid>,
    average: usize,
    next: Instant,
    seq: u32,
    key_due: bool,
    last_key: Option<Instant>,
    enabled: bool,
}

/// The media a participant publishes on one peer connection.
pub struct Sender {
    publisher: u32,
    start: Instant,
    audio: Option<(Mid, Instant, u32)>,
    audio_kbps: u32,
    video: Option<Mid>,
    layers: Vec<LayerState>,
    rng: StdRng,
}

impl Sender {
    pub fn new(publisher: u32, start: Instant, scenario: &Scenario) -> Self {
        Self {
            publisher,
            start,
            audio: None,
            audio_kbps: scenario.audio.kbps,
            video: None,
            layers: Vec::new(),
            rng: StdRng::seed_from_u64(u64::from(publisher)),
        }
    }

    pub fn set_audio(&mut self, mid: Mid, now: Instant) {
        self.audio = Some((mid, now, 0));
    }

    pub fn set_video(&mut self, mid: Mid, video: &Video, now: Instant) {
        self.video = Some(mid);
        let layers = &video.layers;
        let simulcast = layers.len() > 1;
        self.layers = layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerState {
                layer: l.clone(),
                clip: video.clips.get(i).cloned().flatten().map(|c| (c, 0)),
                rid: simulcast.then(|| Rid::from(l.rid.as_str())),
                average: media::average_frame_bytes(l.kbps, l.fps),
                next: now,
                seq: 0,
                key_due: true,
                last_key: None,
                enabled: true,
            })
            .collect();
    }

    /// Pauses or resumes a simulcast layer (dynacast), by rid.
    pub fn set_layer_enabled(&mut self, rid: &str, enabled: bool) {
        for l in &mut self.layers {
            if l.layer.rid == rid {
                if enabled && !l.enabled {
                    l.key_due = true;
                }
                l.enabled = enabled;
            }
        }
    }

    /// A PLI or FIR for `rid` (or the only layer).
    pub fn key_frame_requested(&mut self, rid: Option<Rid>) {
        for l in &mut self.layers {
            if rid.is_none() || l.rid == rid {
                l.key_due = true;
            }
        }
    }

    /// The next instant something is due.
    pub fn next_due(&self) -> Option<Instant> {
        let audio = self.audio.map(|(_, next, _)| next);
        let video = self.layers.iter().map(|l| l.next).min();
        audio.into_iter().chain(video).min()
    }

    /// Writes every frame that is due at `now` into `peer`.
    pub fn write_due(
        &mut self,
        peer: &mut Peer,
        shared: &Shared,
        scenario: &Scenario,
        now: Instant,
    ) {
        if !peer.connected {
            // A camera produces frames whether or not they can leave: skip the ones before
            // the connection is up rather than bursting them later.
            if let Some((_, next, _)) = &mut self.audio {
                *next = now + media::OPUS_FRAME;
            }
            for l in &mut self.layers {
                l.next = now + Duration::from_secs(1) / l.layer.fps;
            }
            return;
        }
        if let Some((mid, next, seq)) = &mut self.audio
            && *next <= now
        {
            let due = *next;
            let talking = speaking(scenario, self.publisher, due - self.start);
            let time = MediaTime::new(
                (due - self.start).as_micros() as u64 * 48 / 1000,
                Frequency::FORTY_EIGHT_KHZ,
            );
            let frame = if talking {
                media::opus_frame(
                    Marker {
                        publisher: self.publisher,
                        stream: 0,
                        seq: *seq,
                        sent_us: shared.stamp(now),
                    },
                    (self.audio_kbps as usize * 20 / 8).max(media::MARKER_BYTES + 1),
                )
            } else {
                media::dtx_frame()
            };
            let pt = opus_pt(&mut peer.rtc, *mid);
            if let (Some(pt), Some(w)) = (pt, peer.rtc.writer(*mid)) {
                let (level, voice) = if talking { (-30, true) } else { (-127, false) };
                if w.audio_level(level, voice)
                    .write(pt, now, time, frame)
                    .is_ok()
                {
                    if talking {
                        *seq += 1;
                        shared.add(Counter::AudioFramesSent, 1);
                    } else {
                        shared.add(Counter::DtxFramesSent, 1);
                    }
                }
            }
            *next = due
                + if talking {
                    media::OPUS_FRAME
                } else {
                    media::DTX_INTERVAL
                };
            // When the task fell behind, drop the backlog instead of bursting it.
            if *next + media::DTX_INTERVAL < now {
                *next = now;
            }
        }
        let Some(mid) = self.video else {
            return;
        };
        let pt = vp8_pt(&mut peer.rtc, mid);
        for (i, l) in self.layers.iter_mut().enumerate() {
            if l.next > now {
                continue;
            }
            let due = l.next;
            let interval = Duration::from_secs(1) / l.layer.fps;
            l.next = if due + 4 * interval < now {
                now + interval
            } else {
                due + interval
            };
            if !l.enabled {
                continue;
            }
            let mut key = l.key_due
                && l.last_key
                    .is_none_or(|t| now.duration_since(t) >= KEY_FRAME_MIN_INTERVAL);
            let marker = Marker {
                publisher: self.publisher,
                stream: i as u8 + 1,
                seq: l.seq,
                sent_us: shared.stamp(now),
            };
            let frame = match &mut l.clip {
                Some((clip, pos)) => {
                    // A clip has its key frame first: a PLI jumps back to it; the loop
                    // comes back to it anyway.
                    if key {
                        *pos = 0;
                    }
                    key = *pos == 0;
                    let f = media::with_marker(&clip.frames[*pos], marker);
                    *pos = (*pos + 1) % clip.frames.len();
                    f
                }
                None => media::vp8_frame(
                    marker,
                    key,
                    l.layer.width,
                    l.layer.height,
                    l.average,
                    &mut self.rng,
                ),
            };
            let time = MediaTime::new(
                (due - self.start).as_micros() as u64 * 9 / 100,
                Frequency::NINETY_KHZ,
            );
            let Some(pt) = pt else { continue };
            let Some(mut w) = peer.rtc.writer(mid) else {
                continue;
            };
            if let Some(rid) = l.rid {
                w = w.rid(rid);
            }
            if w.write(pt, now, time, frame).is_ok() {
                l.seq += 1;
                shared.add(Counter::VideoFramesSent, 1);
                if key {
                    l.key_due = false;
                    l.last_key = Some(now);
                    shared.add(Counter::KeyFramesSent, 1);
                }
            }
        }
    }
}

fn opus_pt(rtc: &mut Rtc, mid: Mid) -> Option<Pt> {
    rtc.writer(mid)?
        .payload_params()
        .find(|p| p.spec().codec == Codec::Opus)
        .map(|p| p.pt())
}

fn vp8_pt(rtc: &mut Rtc, mid: Mid) -> Option<Pt> {
    rtc.writer(mid)?
        .payload_params()
        .find(|p| p.spec().codec == Codec::Vp8)
        .map(|p| p.pt())
}

/// The receiving side: turns frames into latency, loss and freeze figures.
pub struct Receiver {
    watches: HashMap<(Mid, Option<Rid>), StreamWatch>,
    pub latencies: Latencies,
    /// When the participant started joining, until its first remote frame arrived.
    pub joining_since: Option<Instant>,
    last_merge: Instant,
    nacks_sent: HashMap<(Mid, Option<Rid>), u64>,
}

impl Receiver {
    pub fn new(now: Instant) -> Self {
        Self {
            watches: HashMap::new(),
            latencies: Latencies::new(),
            joining_since: None,
            last_merge: now,
            nacks_sent: HashMap::new(),
        }
    }

    pub fn frame(
        &mut self,
        shared: &Shared,
        now: Instant,
        mid: Mid,
        rid: Option<Rid>,
        codec: Codec,
        data: &[u8],
    ) {
        let audio = codec == Codec::Opus;
        let Some(m) = Marker::from_frame(data) else {
            return; // DTX comfort noise, or someone else's media
        };
        if let Some(since) = self.joining_since.take() {
            shared.record_first_frame(now.saturating_duration_since(since));
        }
        let sent = shared.epoch + Duration::from_micros(m.sent_us);
        let latency = now.saturating_duration_since(sent).as_micros().max(1) as u64;
        let measuring = shared.measuring();
        if audio {
            shared.add(Counter::AudioFramesReceived, 1);
            if measuring {
                let _ = self.latencies.audio.record(latency);
            }
        } else {
            shared.add(Counter::VideoFramesReceived, 1);
            match m.stream {
                1 => shared.add(Counter::VideoFramesLayer1, 1),
                2 => shared.add(Counter::VideoFramesLayer2, 1),
                _ => shared.add(Counter::VideoFramesLayer3, 1),
            }
            if measuring {
                let _ = self.latencies.video.record(latency);
            }
        }
        let v = self
            .watches
            .entry((mid, rid))
            .or_default()
            .frame(now, m.stream, m.seq, !audio);
        if v.lost > 0 {
            shared.add(Counter::FramesLost, v.lost);
        }
        if let Some(frozen) = v.frozen {
            shared.add(Counter::Freezes, 1);
            shared.add(Counter::FrozenMs, frozen.as_millis() as u64);
        }
        if now.duration_since(self.last_merge) >= Duration::from_secs(1) {
            self.last_merge = now;
            shared.merge(&mut self.latencies);
        }
    }

    /// Keeps the NACK count of a received stream (str0m reports running totals).
    pub fn ingress_nacks(&mut self, shared: &Shared, mid: Mid, rid: Option<Rid>, total: u64) {
        let last = self.nacks_sent.entry((mid, rid)).or_default();
        if total > *last {
            shared.add(Counter::NacksSent, total - *last);
            *last = total;
        }
    }

    pub fn finish(&mut self, shared: &Shared) {
        shared.merge(&mut self.latencies);
    }
}

/// A participant's two peer connections and what flows through them: the media it publishes
/// and the accounting of what it receives. The LiveKit and Janus participants share it.
pub struct Media {
    pub publisher: Peer,
    pub subscriber: Peer,
    pub sender: Sender,
    pub receiver: Receiver,
    pub egress: EgressTotals,
}

impl Media {
    /// Binds both connections; counts the join time from `started` to the first remote frame.
    pub async fn bind(
        ip: IpAddr,
        index: u32,
        start: Instant,
        scenario: &Scenario,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let now = Instant::now();
        let mut receiver = Receiver::new(now);
        receiver.joining_since = Some(started);
        Ok(Self {
            publisher: Peer::bind(ip, now).await?,
            subscriber: Peer::bind(ip, now).await?,
            sender: Sender::new(index, start, scenario),
            receiver,
            egress: EgressTotals::default(),
        })
    }

    /// One turn of a participant's loop, after its signalling: the media drained, then whether
    /// its stay ends (the connection failed, the run is over, or it is time to leave, at
    /// `leave_at`). Otherwise the time of the turn.
    pub fn turn(
        &mut self,
        shared: &Shared,
        scenario: &Scenario,
        index: u32,
        leave_at: Instant,
    ) -> Result<Instant, End> {
        if let Err(e) = self.drain(shared, scenario, index) {
            if shared.stopping() {
                return Err(End::Stopped);
            }
            shared.dropped(format!("media failed: {e}"));
            return Err(End::Dropped);
        }
        let now = Instant::now();
        if shared.stopping() {
            return Err(End::Stopped);
        }
        if now >= leave_at {
            return Err(End::Left);
        }
        Ok(now)
    }

    /// Writes the media that is due, sends what both connections have to send, and turns
    /// their events into figures.
    pub fn drain(
        &mut self,
        shared: &Shared,
        scenario: &Scenario,
        index: u32,
    ) -> anyhow::Result<()> {
        let now = Instant::now();
        self.sender
            .write_due(&mut self.publisher, shared, scenario, now);
        let sender = &mut self.sender;
        let egress = &mut self.egress;
        self.publisher.drain(shared, |e| match e {
            Event::KeyframeRequest(r) => sender.key_frame_requested(r.rid),
            Event::MediaEgressStats(s) => egress.update(shared, s.mid, s.rid, s.nacks, s.plis),
            _ => {}
        })?;
        let receiver = &mut self.receiver;
        self.subscriber.drain(shared, |e| match e {
            Event::IceConnectionStateChange(state) => {
                tracing::debug!(participant = index, ?state, "subscriber ICE");
            }
            Event::Connected => tracing::debug!(participant = index, "subscriber connected"),
            Event::MediaData(d) => {
                receiver.frame(shared, now, d.mid, d.rid, d.params.spec().codec, &d.data)
            }
            Event::MediaIngressStats(s) => receiver.ingress_nacks(shared, s.mid, s.rid, s.nacks),
            _ => {}
        })
    }

    /// The earliest instant either connection or the sender needs attention.
    pub fn next_due(&self) -> Instant {
        let peers = self.publisher.deadline.min(self.subscriber.deadline);
        self.sender.next_due().map_or(peers, |t| t.min(peers))
    }

    /// Lets time pass on both connections.
    pub fn tick(&mut self, now: Instant) {
        self.publisher.tick(now);
        self.subscriber.tick(now);
    }

    /// Waits for the signal connection `ws`, either connection's input, or `until` (at most
    /// 100 ms after `now`, and no later than the media is due), then lets time pass. Media
    /// input is read here; what came on the signal connection is handed back.
    pub async fn wait<S>(
        &mut self,
        shared: &Shared,
        ws: &mut S,
        now: Instant,
        until: Instant,
        buf: &mut [u8],
    ) -> Option<Signal>
    where
        S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    {
        use futures_util::StreamExt as _;
        enum Wake {
            Ws(Option<Result<Message, tungstenite::Error>>),
            Pub(io::Result<()>),
            Sub(io::Result<()>),
            Timer,
        }
        let wake_at = until
            .min(self.next_due())
            .min(now + Duration::from_millis(100));
        let wake = tokio::select! {
            m = ws.next() => Wake::Ws(m),
            r = self.publisher.socket.readable() => Wake::Pub(r),
            r = self.subscriber.socket.readable() => Wake::Sub(r),
            _ = tokio::time::sleep_until(wake_at.into()) => Wake::Timer,
        };
        let signal = match wake {
            Wake::Ws(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => Some(Signal::Closed),
            Wake::Ws(Some(Ok(m))) => Some(Signal::Message(m)),
            Wake::Pub(Ok(())) => {
                self.publisher.input_ready(shared, buf);
                None
            }
            Wake::Sub(Ok(())) => {
                self.subscriber.input_ready(shared, buf);
                None
            }
            Wake::Pub(Err(_)) | Wake::Sub(Err(_)) | Wake::Timer => None,
        };
        self.tick(Instant::now());
        signal
    }
}

/// What [`Media::wait`] got on the signal connection.
pub enum Signal {
    Message(Message),
    /// Closed by the server, or failed.
    Closed,
}

/// Running totals of what publishers were told by the server.
#[derive(Default)]
pub struct EgressTotals {
    nacks: HashMap<(Mid, Option<Rid>), (u64, u64)>,
}

impl EgressTotals {
    pub fn update(&mut self, shared: &Shared, mid: Mid, rid: Option<Rid>, nacks: u64, plis: u64) {
        let last = self.nacks.entry((mid, rid)).or_default();
        if nacks > last.0 {
            shared.add(Counter::NacksReceived, nacks - last.0);
        }
        if plis > last.1 {
            shared.add(Counter::PlisReceived, plis - last.1);
        }
        *last = (last.0.max(nacks), last.1.max(plis));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_passes_in_turns() {
        let s = Scenario::parse(
            "name='m'\nparticipants=5\nduration_s=1\n[audio]\nspeakers=2\nturn_s=1\nkbps=32",
        )
        .unwrap();
        let at = |secs: f64| -> Vec<u32> {
            (0..5)
                .filter(|p| speaking(&s, *p, Duration::from_secs_f64(secs)))
                .collect()
        };
        assert_eq!(at(0.5), vec![0, 1]);
        assert_eq!(at(1.5), vec![2, 3]);
        assert_eq!(at(2.5), vec![0, 4]);
    }

    #[test]
    fn rtp_is_told_from_rtcp() {
        let mut p = [0u8; 12];
        p[0] = 0x80;
        p[1] = 96;
        assert!(is_rtp(&p));
        p[1] = 200; // sender report
        assert!(!is_rtp(&p));
        p[1] = 0x80 | 111; // marker bit set
        assert!(is_rtp(&p));
        assert!(!is_rtp(&[0x16, 0xfe, 0xfd])); // DTLS
    }
}
