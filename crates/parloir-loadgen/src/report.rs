//! The load test's report: JSON for machines, a summary for people.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::Options;
use crate::stats::{Counter, Shared, Snapshot};

/// Percentiles of a latency or duration distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joins {
    pub started: u64,
    pub joined: u64,
    pub left: u64,
    /// Participants that never joined, by reason.
    pub failed: BTreeMap<String, u32>,
    /// Participants the server ended, by reason.
    pub dropped: BTreeMap<String, u32>,
    /// Signal connect to JoinResponse (or Janus' `joined`).
    pub signal_ms: Percentiles,
    /// Signal connect to the first remote frame.
    pub first_frame_ms: Percentiles,
}

/// Counts over the measured window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Traffic {
    /// RTP packets publishers sent (into the server).
    pub packets_in: u64,
    /// RTP packets subscribers received (forwarded by the server).
    pub packets_out: u64,
    pub packets_in_per_s: f64,
    pub packets_out_per_s: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Datagrams the load generator could not send (its socket buffer was full).
    pub send_dropped: u64,
    pub audio_frames_sent: u64,
    pub dtx_frames_sent: u64,
    pub video_frames_sent: u64,
    pub key_frames_sent: u64,
    pub audio_frames_received: u64,
    pub video_frames_received: u64,
    /// Video frames received of each simulcast layer, lowest first.
    pub video_frames_by_layer: [u64; 3],
    /// Frames missing from a received stream (gaps in the publisher's numbering).
    pub frames_lost: u64,
    /// Lost / (received + lost).
    pub frame_loss_ratio: f64,
    pub freezes: u64,
    pub frozen_ms: u64,
    pub nacks_sent_by_subscribers: u64,
    pub nacks_received_by_publishers: u64,
    pub plis_received_by_publishers: u64,
}

/// CPU and memory of a process over the measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Process {
    pub pid: Option<u32>,
    pub cpu_s: Option<f64>,
    /// CPU seconds per second of the window: 1.0 is one core fully busy.
    pub cores_busy: Option<f64>,
    /// CPU microseconds per RTP packet forwarded to subscribers.
    pub cpu_us_per_forwarded_packet: Option<f64>,
    pub rss_mib: Option<f64>,
}

/// Latency histogram buckets for plots: (upper bound in ms, count).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Buckets {
    pub audio: Vec<(f64, u64)>,
    pub video: Vec<(f64, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub server: String,
    pub url: String,
    /// How the scenario was sized for this machine.
    pub scaling: String,
    pub participants: u32,
    pub full_participants: u32,
    pub audio_publishers: u32,
    pub video_publishers: u32,
    pub cores: u32,
    /// Seconds measured (steady state, after everyone joined and the warm-up).
    pub measured_s: f64,
    /// Why the run ended before its planned duration, if it did.
    pub stopped_early: Option<String>,
    pub joins: Joins,
    pub traffic: Traffic,
    /// End-to-end latency, publisher write to subscriber frame (ms), over the window.
    pub audio_latency_ms: Percentiles,
    pub video_latency_ms: Percentiles,
    pub server_process: Process,
    pub loadgen_process: Process,
    pub latency_buckets: Buckets,
}

pub(crate) struct Window {
    pub seconds: f64,
    pub counts: Snapshot,
    pub server_cpu_s: Option<f64>,
    pub loadgen_cpu_s: Option<f64>,
}

pub(crate) struct Inputs<'a> {
    pub options: &'a Options,
    pub shared: &'a Shared,
    pub window: Option<Window>,
    pub totals: Snapshot,
    pub server_rss_mib: Option<f64>,
    pub stopped_early: Option<String>,
}

/// Log-spaced buckets from 0.1 ms to 10 s.
fn buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    let mut lower = 0u64;
    let mut upper = 100u64; // µs
    while upper <= 10_000_000 {
        let count = h.count_between(lower, upper.saturating_sub(1));
        out.push((upper as f64 / 1000.0, count));
        lower = upper;
        upper = upper * 5 / 4 + 1;
    }
    out
}

pub(crate) fn build(i: Inputs<'_>) -> Report {
    let s = &i.options.sized.scenario;
    let (joins_signal, joins_first) = i.shared.joins();
    let lat = i.shared.latencies();
    let t = &i.totals;
    let (seconds, c) = i
        .window
        .as_ref()
        .map_or((0.0, Snapshot::default()), |w| (w.seconds, w.counts));
    let per_s = |v: u64| {
        if seconds > 0.0 {
            v as f64 / seconds
        } else {
            0.0
        }
    };
    let received = c.get(Counter::AudioFramesReceived) + c.get(Counter::VideoFramesReceived);
    let lost = c.get(Counter::FramesLost);
    let out = c.get(Counter::RtpReceived);
    let process = |pid: Option<u32>, cpu: Option<f64>, rss: Option<f64>| Process {
        pid,
        cpu_s: cpu,
        cores_busy: cpu.filter(|_| seconds > 0.0).map(|c| c / seconds),
        cpu_us_per_forwarded_packet: cpu.filter(|_| out > 0).map(|c| c * 1e6 / out as f64),
        rss_mib: rss,
    };
    Report {
        scenario: s.name.clone(),
        server: i.options.server_name.clone(),
        url: i.options.target.url().to_string(),
        scaling: i.options.sized.scaling.clone(),
        participants: s.participants,
        full_participants: i.options.sized.full_participants,
        audio_publishers: s.audio_publishers,
        video_publishers: s.video_publishers,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        measured_s: seconds,
        stopped_early: i.stopped_early,
        joins: Joins {
            started: t.get(Counter::JoinsStarted),
            joined: t.get(Counter::Joined),
            left: t.get(Counter::Left),
            failed: i.shared.failures(),
            dropped: i.shared.drops(),
            signal_ms: Percentiles::of(&joins_signal),
            first_frame_ms: Percentiles::of(&joins_first),
        },
        traffic: Traffic {
            packets_in: c.get(Counter::RtpSent),
            packets_out: out,
            packets_in_per_s: per_s(c.get(Counter::RtpSent)),
            packets_out_per_s: per_s(out),
            bytes_in: c.get(Counter::BytesSent),
            bytes_out: c.get(Counter::BytesReceived),
            send_dropped: c.get(Counter::SendDropped),
            audio_frames_sent: c.get(Counter::AudioFramesSent),
            dtx_frames_sent: c.get(Counter::DtxFramesSent),
            video_frames_sent: c.get(Counter::VideoFramesSent),
            key_frames_sent: c.get(Counter::KeyFramesSent),
            audio_frames_received: c.get(Counter::AudioFramesReceived),
            video_frames_received: c.get(Counter::VideoFramesReceived),
            video_frames_by_layer: [
                c.get(Counter::VideoFramesLayer1),
                c.get(Counter::VideoFramesLayer2),
                c.get(Counter::VideoFramesLayer3),
            ],
            frames_lost: lost,
            frame_loss_ratio: if received + lost > 0 {
                lost as f64 / (received + lost) as f64
            } else {
                0.0
            },
            freezes: c.get(Counter::Freezes),
            frozen_ms: c.get(Counter::FrozenMs),
            nacks_sent_by_subscribers: c.get(Counter::NacksSent),
            nacks_received_by_publishers: c.get(Counter::NacksReceived),
            plis_received_by_publishers: c.get(Counter::PlisReceived),
        },
        audio_latency_ms: Percentiles::of(&lat.audio),
        video_latency_ms: Percentiles::of(&lat.video),
        server_process: process(
            i.options.server_pid,
            i.window.as_ref().and_then(|w| w.server_cpu_s),
            i.server_rss_mib,
        ),
        loadgen_process: process(
            Some(std::process::id()),
            i.window.as_ref().and_then(|w| w.loadgen_cpu_s),
            procfs::rss_mib(std::process::id()),
        ),
        latency_buckets: Buckets {
            audio: buckets(&lat.audio),
            video: buckets(&lat.video),
        },
    }
}

use crate::procfs;

impl Report {
    /// Whether every participant joined and none was dropped.
    pub fn clean(&self) -> bool {
        self.joins.failed.is_empty()
            && self.joins.dropped.is_empty()
            && self
                .stopped_early
                .as_deref()
                .is_none_or(|r| r.starts_with("packet budget"))
    }
}

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}{unit}"))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.traffic;
        writeln!(
            f,
            "scenario {} against {} at {}",
            self.scenario, self.server, self.url
        )?;
        writeln!(
            f,
            "  size: {} participants ({} publish audio, {} video); {}",
            self.participants, self.audio_publishers, self.video_publishers, self.scaling
        )?;
        writeln!(
            f,
            "  measured {:.1} s on {} cores",
            self.measured_s, self.cores
        )?;
        if let Some(r) = &self.stopped_early {
            writeln!(f, "  stopped early: {r}")?;
        }
        writeln!(
            f,
            "  joins: {} joined of {} started; signal p50 {:.0} ms p99 {:.0} ms; first frame p50 {:.0} ms p99 {:.0} ms",
            self.joins.joined,
            self.joins.started,
            self.joins.signal_ms.p50,
            self.joins.signal_ms.p99,
            self.joins.first_frame_ms.p50,
            self.joins.first_frame_ms.p99
        )?;
        for (reason, n) in &self.joins.failed {
            writeln!(f, "  FAILED to join: {n} × {reason}")?;
        }
        for (reason, n) in &self.joins.dropped {
            writeln!(f, "  DROPPED by the server: {n} × {reason}")?;
        }
        writeln!(
            f,
            "  packets: in {:.0}/s, out {:.0}/s (forwarded); {:.1} Mbit/s out; {} not sent by the generator",
            t.packets_in_per_s,
            t.packets_out_per_s,
            t.bytes_out as f64 * 8.0 / self.measured_s.max(1e-9) / 1e6,
            t.send_dropped
        )?;
        writeln!(
            f,
            "  frames: {} audio and {} video received (layers low/mid/high {}/{}/{}); lost {} ({:.3} %); {} freezes ({} ms)",
            t.audio_frames_received,
            t.video_frames_received,
            t.video_frames_by_layer[0],
            t.video_frames_by_layer[1],
            t.video_frames_by_layer[2],
            t.frames_lost,
            t.frame_loss_ratio * 100.0,
            t.freezes,
            t.frozen_ms
        )?;
        writeln!(
            f,
            "  NACKs: {} sent by subscribers, {} reached publishers; PLIs at publishers {}",
            t.nacks_sent_by_subscribers,
            t.nacks_received_by_publishers,
            t.plis_received_by_publishers
        )?;
        for (name, p) in [
            ("audio", &self.audio_latency_ms),
            ("video", &self.video_latency_ms),
        ] {
            writeln!(
                f,
                "  {name} latency (end to end): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {} frames",
                p.p50, p.p90, p.p99, p.max, p.count
            )?;
        }
        for (name, p) in [
            ("server", &self.server_process),
            ("load generator", &self.loadgen_process),
        ] {
            writeln!(
                f,
                "  {name} process: {} CPU s, {} cores busy, {} CPU per forwarded packet, {} RSS",
                opt(p.cpu_s, 2, ""),
                opt(p.cores_busy, 2, ""),
                opt(p.cpu_us_per_forwarded_packet, 2, " µs"),
                opt(p.rss_mib, 0, " MiB"),
            )?;
        }
        Ok(())
    }
}

/// Side-by-side table of runs of one scenario against several servers.
pub fn comparison(reports: &[Report]) -> String {
    let mut out = String::from("| | ");
    out += &reports
        .iter()
        .map(|r| r.server.as_str())
        .collect::<Vec<_>>()
        .join(" | ");
    out += " |\n|---|";
    out += &"---|".repeat(reports.len());
    out.push('\n');
    let row = |name: &str, f: &dyn Fn(&Report) -> String| -> String {
        let cells: Vec<String> = reports.iter().map(f).collect();
        format!("| {name} | {} |\n", cells.join(" | "))
    };
    out += &row("participants", &|r| r.participants.to_string());
    out += &row("joined / failed / dropped", &|r| {
        format!(
            "{} / {} / {}",
            r.joins.joined,
            r.joins.failed.values().sum::<u32>(),
            r.joins.dropped.values().sum::<u32>()
        )
    });
    out += &row("packets in /s", &|r| {
        format!("{:.0}", r.traffic.packets_in_per_s)
    });
    out += &row("packets out /s", &|r| {
        format!("{:.0}", r.traffic.packets_out_per_s)
    });
    out += &row("server CPU µs per forwarded packet", &|r| {
        opt(r.server_process.cpu_us_per_forwarded_packet, 2, "")
    });
    out += &row("server cores busy", &|r| {
        opt(r.server_process.cores_busy, 2, "")
    });
    out += &row("server RSS MiB", &|r| opt(r.server_process.rss_mib, 0, ""));
    out += &row("frame loss %", &|r| {
        format!("{:.3}", r.traffic.frame_loss_ratio * 100.0)
    });
    out += &row("freezes", &|r| r.traffic.freezes.to_string());
    out += &row("audio latency p50 / p99 ms", &|r| {
        format!(
            "{:.2} / {:.2}",
            r.audio_latency_ms.p50, r.audio_latency_ms.p99
        )
    });
    out += &row("video latency p50 / p99 ms", &|r| {
        format!(
            "{:.2} / {:.2}",
            r.video_latency_ms.p50, r.video_latency_ms.p99
        )
    });
    out += &row("join (first frame) p99 ms", &|r| {
        format!("{:.0}", r.joins.first_frame_ms.p99)
    });
    out
}
