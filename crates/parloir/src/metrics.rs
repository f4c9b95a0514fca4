//! Prometheus counters and gauges, written by the media worker and the HTTP server, read by
//! `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parloir_sfu::Stats;

#[derive(Debug, Default)]
pub struct Metrics {
    rooms: AtomicU64,
    participants: AtomicU64,
    tracks: AtomicU64,
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    dropped_datagrams: AtomicU64,
    send_errors: AtomicU64,
    nacks: AtomicU64,
    keyframe_requests: AtomicU64,
    data_packets: AtomicU64,
    data_dropped: AtomicU64,
    audio_gated: AtomicU64,
    video_paused: AtomicU64,
    subscriber_offers: AtomicU64,
    offers_deferred: AtomicU64,
    relays_out: AtomicU64,
    frames_relayed_in: AtomicU64,
    relay_dropped: AtomicU64,
    /// Signal WebSockets accepted on `/rtc` and on `/rtc/v1`.
    pub signal_connections_v0: AtomicU64,
    pub signal_connections_v1: AtomicU64,
    pub signal_refused: AtomicU64,
    /// Inputs during which the SFU panicked (and the worker carried on).
    pub media_panics: AtomicU64,
    /// Webhook deliveries: delivered, given up after retries, dropped on a full queue.
    pub webhooks_sent: AtomicU64,
    pub webhooks_failed: AtomicU64,
    pub webhooks_dropped: AtomicU64,
    /// ICE-TCP connections accepted, packets received over them, packets dropped.
    pub ice_tcp_connections: AtomicU64,
    pub ice_tcp_packets_in: AtomicU64,
    pub ice_tcp_dropped: AtomicU64,
    pub signal_bad_messages: AtomicU64,
    /// The UDP backend the media worker runs on, set once at start-up.
    pub udp: std::sync::OnceLock<UdpInfo>,
    /// System calls (or io_uring submissions) made to receive and to send datagrams.
    pub udp_recv_calls: AtomicU64,
    pub udp_send_calls: AtomicU64,
    /// Messages handed to the kernel: datagrams, a GSO group counting once.
    pub udp_send_messages: AtomicU64,
    /// io_uring: times the provided-buffer ring ran dry.
    pub udp_ring_exhausted: AtomicU64,
    /// The speech plane: frames queued to it, dropped on a full queue, that failed to decode;
    /// final and interim texts; Whisper calls, their time and the audio they covered;
    /// transcript lines that could not be written.
    pub speech_frames: AtomicU64,
    pub speech_dropped: AtomicU64,
    /// The record plane: frames dropped on a full queue; recordings started and failed.
    pub record_dropped: AtomicU64,
    pub egress_started: AtomicU64,
    pub egress_failed: AtomicU64,
    pub speech_decode_errors: AtomicU64,
    pub speech_segments: AtomicU64,
    pub speech_interims: AtomicU64,
    pub speech_asr_calls: AtomicU64,
    pub speech_asr_busy_us: AtomicU64,
    pub speech_asr_audio_ms: AtomicU64,
    pub speech_transcript_errors: AtomicU64,
    /// Each media worker's latest figures, summed into the counters above when rendering.
    workers: std::sync::Mutex<Vec<WorkerFigures>>,
}

/// One media worker's cumulative figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerFigures {
    pub sfu: Stats,
    pub send_errors: u64,
    /// Relayed frames another worker's full queue refused.
    pub relay_dropped: u64,
    pub ring_exhausted: u64,
    pub tcp_accepted: u64,
    pub tcp_packets_in: u64,
    pub tcp_dropped: u64,
}

/// What `/metrics` says of the packet path.
#[derive(Debug, Clone)]
pub struct UdpInfo {
    pub backend: &'static str,
    pub gso: bool,
    pub gro: bool,
    /// Media workers, each on its own UDP port.
    pub workers: usize,
    /// The CPUs the media workers are pinned to (empty: not pinned).
    pub media_cpus: Vec<usize>,
}

impl Metrics {
    /// Records media worker `index`'s figures (each worker calls this on every wake-up; the
    /// totals are summed when `/metrics` is read).
    pub fn publish_worker(&self, index: usize, figures: WorkerFigures) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if workers.len() <= index {
            workers.resize(index + 1, WorkerFigures::default());
        }
        workers[index] = figures;
    }

    /// Sums the workers' figures into the counters `render` reads.
    fn fold_workers(&self) {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = WorkerFigures::default();
        for w in workers.iter() {
            let (a, b) = (&mut t.sfu, &w.sfu);
            a.rooms += b.rooms;
            a.participants += b.participants;
            a.tracks += b.tracks;
            a.packets_in += b.packets_in;
            a.bytes_in += b.bytes_in;
            a.packets_out += b.packets_out;
            a.bytes_out += b.bytes_out;
            a.dropped_datagrams += b.dropped_datagrams;
            a.nacks += b.nacks;
            a.keyframe_requests += b.keyframe_requests;
            a.data_packets += b.data_packets;
            a.data_dropped += b.data_dropped;
            a.audio_gated += b.audio_gated;
            a.video_paused += b.video_paused;
            a.subscriber_offers += b.subscriber_offers;
            a.offers_deferred += b.offers_deferred;
            a.relays_out += b.relays_out;
            a.frames_relayed_in += b.frames_relayed_in;
            t.send_errors += w.send_errors;
            t.relay_dropped += w.relay_dropped;
            t.ring_exhausted += w.ring_exhausted;
            t.tcp_accepted += w.tcp_accepted;
            t.tcp_packets_in += w.tcp_packets_in;
            t.tcp_dropped += w.tcp_dropped;
        }
        drop(workers);
        let s = &t.sfu;
        self.rooms.store(s.rooms, Relaxed);
        self.participants.store(s.participants, Relaxed);
        self.tracks.store(s.tracks, Relaxed);
        self.packets_in.store(s.packets_in, Relaxed);
        self.bytes_in.store(s.bytes_in, Relaxed);
        self.packets_out.store(s.packets_out, Relaxed);
        self.bytes_out.store(s.bytes_out, Relaxed);
        self.dropped_datagrams.store(s.dropped_datagrams, Relaxed);
        self.send_errors.store(t.send_errors, Relaxed);
        self.nacks.store(s.nacks, Relaxed);
        self.keyframe_requests.store(s.keyframe_requests, Relaxed);
        self.data_packets.store(s.data_packets, Relaxed);
        self.data_dropped.store(s.data_dropped, Relaxed);
        self.audio_gated.store(s.audio_gated, Relaxed);
        self.video_paused.store(s.video_paused, Relaxed);
        self.subscriber_offers.store(s.subscriber_offers, Relaxed);
        self.offers_deferred.store(s.offers_deferred, Relaxed);
        self.relays_out.store(s.relays_out, Relaxed);
        self.frames_relayed_in.store(s.frames_relayed_in, Relaxed);
        self.relay_dropped.store(t.relay_dropped, Relaxed);
        self.udp_ring_exhausted.store(t.ring_exhausted, Relaxed);
        self.ice_tcp_connections.store(t.tcp_accepted, Relaxed);
        self.ice_tcp_packets_in.store(t.tcp_packets_in, Relaxed);
        self.ice_tcp_dropped.store(t.tcp_dropped, Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.fold_workers();
        let rows: [(&str, &str, &str, &AtomicU64); 45] = [
            (
                "parloir_record_dropped_total",
                "counter",
                "Media frames dropped because a recording's queue was full.",
                &self.record_dropped,
            ),
            (
                "parloir_egress_started_total",
                "counter",
                "Recordings (egresses) started.",
                &self.egress_started,
            ),
            (
                "parloir_egress_failed_total",
                "counter",
                "Recordings that ended with an error (the meeting went on).",
                &self.egress_failed,
            ),
            (
                "parloir_speech_frames_total",
                "counter",
                "Published audio frames the speech plane took.",
                &self.speech_frames,
            ),
            (
                "parloir_speech_dropped_total",
                "counter",
                "Audio frames dropped because the speech plane's queue was full.",
                &self.speech_dropped,
            ),
            (
                "parloir_speech_decode_errors_total",
                "counter",
                "Audio frames the speech plane could not decode or analyse.",
                &self.speech_decode_errors,
            ),
            (
                "parloir_speech_segments_total",
                "counter",
                "Utterances transcribed to a final text segment.",
                &self.speech_segments,
            ),
            (
                "parloir_speech_interims_total",
                "counter",
                "Interim subtitles sent while someone was speaking.",
                &self.speech_interims,
            ),
            (
                "parloir_speech_asr_calls_total",
                "counter",
                "Whisper calls (each may batch several speakers).",
                &self.speech_asr_calls,
            ),
            (
                "parloir_speech_asr_busy_microseconds_total",
                "counter",
                "Time spent in Whisper calls.",
                &self.speech_asr_busy_us,
            ),
            (
                "parloir_speech_asr_audio_milliseconds_total",
                "counter",
                "Audio decoded by Whisper calls (re-decoded audio counts again).",
                &self.speech_asr_audio_ms,
            ),
            (
                "parloir_speech_transcript_errors_total",
                "counter",
                "Final segments that could not be written to the transcript.",
                &self.speech_transcript_errors,
            ),
            (
                "parloir_audio_gated_total",
                "counter",
                "Audio frames not forwarded: their publisher was silent and not among the loudest.",
                &self.audio_gated,
            ),
            (
                "parloir_video_paused_total",
                "counter",
                "Video tracks paused for a subscriber whose estimated bandwidth could not carry them.",
                &self.video_paused,
            ),
            (
                "parloir_subscriber_offers_total",
                "counter",
                "SDP offers sent on subscriber connections (each lists every m-line of the connection).",
                &self.subscriber_offers,
            ),
            (
                "parloir_subscriber_offers_deferred_total",
                "counter",
                "Subscriber offers written a call later than asked, to keep each call of the media worker short.",
                &self.offers_deferred,
            ),
            (
                "parloir_relays_out_total",
                "counter",
                "Messages to other media workers for rooms spanning workers (frames among them).",
                &self.relays_out,
            ),
            (
                "parloir_frames_relayed_in_total",
                "counter",
                "Frames of rooms spanning workers received from another media worker and forwarded here.",
                &self.frames_relayed_in,
            ),
            (
                "parloir_relay_dropped_total",
                "counter",
                "Frames for another media worker dropped because its queue was full.",
                &self.relay_dropped,
            ),
            (
                "parloir_udp_send_messages_total",
                "counter",
                "Messages handed to the kernel to send: datagrams, each GSO group counting once.",
                &self.udp_send_messages,
            ),
            (
                "parloir_udp_recv_calls_total",
                "counter",
                "System calls (io_uring: completions reaped per call) made to receive datagrams.",
                &self.udp_recv_calls,
            ),
            (
                "parloir_udp_send_calls_total",
                "counter",
                "System calls or io_uring submissions made to send datagrams.",
                &self.udp_send_calls,
            ),
            (
                "parloir_udp_ring_exhausted_total",
                "counter",
                "Times the io_uring provided-buffer ring ran dry (nothing is lost; the receive is re-armed).",
                &self.udp_ring_exhausted,
            ),
            ("parloir_rooms", "gauge", "Rooms open.", &self.rooms),
            (
                "parloir_participants",
                "gauge",
                "Participants joined.",
                &self.participants,
            ),
            ("parloir_tracks", "gauge", "Tracks published.", &self.tracks),
            (
                "parloir_packets_in_total",
                "counter",
                "UDP datagrams received.",
                &self.packets_in,
            ),
            (
                "parloir_bytes_in_total",
                "counter",
                "UDP bytes received.",
                &self.bytes_in,
            ),
            (
                "parloir_packets_out_total",
                "counter",
                "UDP datagrams sent.",
                &self.packets_out,
            ),
            (
                "parloir_bytes_out_total",
                "counter",
                "UDP bytes sent.",
                &self.bytes_out,
            ),
            (
                "parloir_dropped_datagrams_total",
                "counter",
                "Datagrams matching no peer or refused by it.",
                &self.dropped_datagrams,
            ),
            (
                "parloir_send_errors_total",
                "counter",
                "Datagrams the socket refused to send.",
                &self.send_errors,
            ),
            (
                "parloir_nacks_total",
                "counter",
                "NACKs received from subscribers.",
                &self.nacks,
            ),
            (
                "parloir_plis_total",
                "counter",
                "Keyframe requests (PLI/FIR) relayed to publishers.",
                &self.keyframe_requests,
            ),
            (
                "parloir_data_packets_total",
                "counter",
                "Data packets delivered.",
                &self.data_packets,
            ),
            (
                "parloir_data_dropped_total",
                "counter",
                "Data packets dropped (undecodable, not allowed, no channel).",
                &self.data_dropped,
            ),
            (
                "parloir_ice_tcp_connections_total",
                "counter",
                "ICE-TCP connections accepted.",
                &self.ice_tcp_connections,
            ),
            (
                "parloir_ice_tcp_packets_in_total",
                "counter",
                "Packets received over ICE-TCP.",
                &self.ice_tcp_packets_in,
            ),
            (
                "parloir_ice_tcp_dropped_total",
                "counter",
                "ICE-TCP packets dropped (no connection, full send buffer).",
                &self.ice_tcp_dropped,
            ),
            (
                "parloir_webhooks_sent_total",
                "counter",
                "Webhook events delivered (per URL).",
                &self.webhooks_sent,
            ),
            (
                "parloir_webhooks_failed_total",
                "counter",
                "Webhook events given up after retries (per URL).",
                &self.webhooks_failed,
            ),
            (
                "parloir_webhooks_dropped_total",
                "counter",
                "Webhook events dropped because a URL's queue was full.",
                &self.webhooks_dropped,
            ),
            (
                "parloir_media_panics_total",
                "counter",
                "Inputs during which the SFU panicked; the media worker carried on.",
                &self.media_panics,
            ),
            (
                "parloir_signal_refused_total",
                "counter",
                "Signal connections refused (token, parameters).",
                &self.signal_refused,
            ),
            (
                "parloir_signal_bad_messages_total",
                "counter",
                "Signal messages that did not decode.",
                &self.signal_bad_messages,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP parloir_signal_connections_total Signal WebSockets accepted, by path.\n# TYPE parloir_signal_connections_total counter\nparloir_signal_connections_total{{path=\"/rtc\"}} {}\nparloir_signal_connections_total{{path=\"/rtc/v1\"}} {}",
            self.signal_connections_v0.load(Relaxed),
            self.signal_connections_v1.load(Relaxed)
        );
        if let Some(udp) = self.udp.get() {
            let cpus: Vec<String> = udp.media_cpus.iter().map(|c| c.to_string()).collect();
            let _ = writeln!(
                out,
                "# HELP parloir_udp_backend_info The UDP I/O backend in use.\n# TYPE parloir_udp_backend_info gauge\nparloir_udp_backend_info{{backend=\"{}\",gso=\"{}\",gro=\"{}\",media_workers=\"{}\",media_cpus=\"{}\"}} 1",
                udp.backend,
                udp.gso,
                udp.gro,
                udp.workers,
                cpus.join(",")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        for worker in 0..2 {
            m.publish_worker(
                worker,
                WorkerFigures {
                    sfu: Stats {
                        rooms: 1,
                        packets_in: 5,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            );
        }
        m.udp
            .set(UdpInfo {
                backend: "mmsg",
                gso: true,
                gro: false,
                workers: 2,
                media_cpus: vec![1, 2],
            })
            .unwrap();
        let text = m.render();
        assert!(text.contains(
            "parloir_udp_backend_info{backend=\"mmsg\",gso=\"true\",gro=\"false\",media_workers=\"2\",media_cpus=\"1,2\"} 1\n"
        ));
        assert!(text.contains("# TYPE parloir_rooms gauge\nparloir_rooms 2\n"));
        assert!(text.contains("parloir_packets_in_total 10\n"));
        assert!(text.contains("parloir_signal_connections_total{path=\"/rtc/v1\"} 0\n"));
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains('{'))
        {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("parloir_"));
            value.parse::<u64>().unwrap();
        }
    }
}
