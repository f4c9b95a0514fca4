//! parloir-loadgen: simulated participants that load a media server the way a real meeting does.
//!
//! Each simulated participant is a tokio task with its own signalling connection and str0m peer
//! connections on their own UDP sockets. They speak the LiveKit protocol (so any LiveKit-protocol
//! server can be loaded) or Janus' VideoRoom API (to compare with a peer SFU). All of them run in
//! one process on one clock, so a subscriber computes end-to-end latency from the instant stamped
//! into each frame by its publisher (see [`media`]).
//!
//! A run ramps up joins, waits for the warm-up, measures a steady window, then everyone leaves.
//! The run is bounded by the scenario's duration and an optional packet budget; a server that
//! refuses or drops participants is counted and reported, never waited on.

pub mod bench;
pub mod janus;
pub mod livekit;
pub mod media;
pub mod peer;
pub mod plot;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod stats;

use std::io::IsTerminal;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

pub use report::Report;
pub use scenario::{Scenario, Sized};
use stats::{Counter, Shared};

/// A LiveKit-protocol server.
#[derive(Debug, Clone)]
pub struct LiveKitTarget {
    /// `ws://host:port` (the `/rtc` path is added).
    pub ws_url: String,
    pub api_key: String,
    pub api_secret: String,
}

/// A Janus server with the VideoRoom plugin and the WebSocket transport.
#[derive(Debug, Clone)]
pub struct JanusTarget {
    /// `ws://host:port` of the WebSocket transport.
    pub ws_url: String,
}

#[derive(Debug, Clone)]
pub enum Target {
    LiveKit(LiveKitTarget),
    Janus(JanusTarget),
}

impl Target {
    pub fn url(&self) -> &str {
        match self {
            Target::LiveKit(t) => &t.ws_url,
            Target::Janus(t) => &t.ws_url,
        }
    }
}

/// What to run, against what.
#[derive(Debug, Clone)]
pub struct Options {
    pub sized: Sized,
    pub target: Target,
    /// Name of the server in the report (`parloir`, `janus`, ...).
    pub server_name: String,
    /// The server's process, for its CPU time and memory.
    pub server_pid: Option<u32>,
    /// Address the participants' sockets bind to (loopback by default).
    pub bind_ip: IpAddr,
    /// Stop measuring once subscribers have received this many RTP packets.
    pub max_packets: Option<u64>,
    /// Print a progress line every second on stderr.
    pub progress: bool,
    /// The room to meet in (LiveKit targets); a fresh `loadtest-<scenario>-<time>` when `None`.
    pub room: Option<String>,
}

/// What every participant task shares.
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub scenario: Scenario,
    pub room: String,
    pub bind_ip: IpAddr,
    /// When the run started (speaking turns count from here).
    pub start: Instant,
}

/// How a participant's stay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It never joined (the reason is counted in the failures).
    Failed,
    /// The server ended it (counted in the drops).
    Dropped,
    /// It left as its churn plan said.
    Left,
    /// The run is over.
    Stopped,
}

/// Longest wait for participants to leave once the run is over.
const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// Runs the load test and returns its report. Must be called inside a tokio runtime.
pub async fn run(options: Options) -> Report {
    let scenario = options.sized.scenario.clone();
    let shared = Arc::new(Shared::new());
    let start = shared.epoch;
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ctx = Arc::new(Ctx {
        shared: shared.clone(),
        scenario: scenario.clone(),
        room: options
            .room
            .clone()
            .unwrap_or_else(|| format!("loadtest-{}-{run_id}", scenario.name)),
        bind_ip: options.bind_ip,
        start,
    });
    let n = scenario.participants;
    let ramp = Duration::from_secs_f64(f64::from(n) / scenario.join_per_second);
    let measure_start = start + ramp + Duration::from_secs_f64(scenario.warmup_s);
    let planned_end = measure_start + Duration::from_secs_f64(scenario.duration_s);

    let mut tasks = Vec::new();
    for i in 0..n {
        let ctx = ctx.clone();
        let target = options.target.clone();
        let at = start + Duration::from_secs_f64(f64::from(i) / scenario.join_per_second);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            participant(&ctx, &target, i).await;
        }));
    }

    let cpu = |pid: Option<u32>| pid.and_then(procfs::cpu_seconds);
    let me = std::process::id();
    let tty = std::io::stderr().is_terminal();
    let mut window: Option<(Instant, stats::Snapshot, Option<f64>, Option<f64>)> = None;
    let mut stopped_early = None;
    let mut last_progress = (Instant::now(), shared.snapshot(), cpu(options.server_pid));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let snap = shared.snapshot();
        if window.is_none() && now >= measure_start {
            if snap.get(Counter::Joined) == 0 {
                stopped_early = Some("no participant could join".to_string());
                break;
            }
            shared.reset_latencies();
            shared.set_measuring(true);
            window = Some((now, snap, cpu(options.server_pid), cpu(Some(me))));
        }
        if let Some((_, first, _, _)) = &window
            && let Some(max) = options.max_packets
            && snap.since(first).get(Counter::RtpReceived) >= max
        {
            stopped_early = Some(format!("packet budget of {max} reached"));
            break;
        }
        if now >= planned_end {
            break;
        }
        if options.progress && now.duration_since(last_progress.0) >= Duration::from_secs(1) {
            let server_cpu = cpu(options.server_pid);
            let line = progress_line(
                &ctx,
                now,
                &last_progress,
                &snap,
                server_cpu,
                window.is_some(),
            );
            last_progress = (now, snap, server_cpu);
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
    }
    shared.set_measuring(false);
    let end = Instant::now();
    let end_snap = shared.snapshot();
    let end_server = cpu(options.server_pid);
    let end_me = cpu(Some(me));
    let rss = options.server_pid.and_then(procfs::rss_mib);
    if options.progress && tty {
        eprintln!();
    }
    shared.request_stop();
    let grace = tokio::time::Instant::now() + LEAVE_GRACE;
    for t in &mut tasks {
        if tokio::time::timeout_at(grace, &mut *t).await.is_err() {
            t.abort();
        }
    }
    report::build(report::Inputs {
        options: &options,
        shared: &shared,
        window: window.map(|(at, snap, server, me)| report::Window {
            seconds: end.duration_since(at).as_secs_f64(),
            counts: end_snap.since(&snap),
            server_cpu_s: server.zip(end_server).map(|(a, b)| b - a),
            loadgen_cpu_s: me.zip(end_me).map(|(a, b)| b - a),
        }),
        totals: shared.snapshot(),
        server_rss_mib: rss,
        stopped_early,
    })
}

fn progress_line(
    ctx: &Ctx,
    now: Instant,
    last: &(Instant, stats::Snapshot, Option<f64>),
    snap: &stats::Snapshot,
    server_cpu: Option<f64>,
    measuring: bool,
) -> String {
    let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
    let d = snap.since(&last.1);
    let rate = |c| d.get(c) as f64 / dt;
    let lat = ctx.shared.latencies();
    let p = |q| lat.video.value_at_quantile(q) as f64 / 1000.0;
    let cpu = match (last.2, server_cpu) {
        (Some(a), Some(b)) => format!(" · server {:.0}% cpu", (b - a) / dt * 100.0),
        _ => String::new(),
    };
    format!(
        "[{:>4.0}s {}] joined {}/{} · in {:.1}k pkt/s · out {:.1}k pkt/s · video latency p50 {:.1} ms p99 {:.1} ms{cpu}",
        now.duration_since(ctx.start).as_secs_f64(),
        if measuring { "measuring" } else { "ramping" },
        snap.get(Counter::Joined)
            .saturating_sub(snap.get(Counter::Left) + snap.get(Counter::Dropped)),
        ctx.scenario.participants,
        rate(Counter::RtpSent) / 1000.0,
        rate(Counter::RtpReceived) / 1000.0,
        p(0.5),
        p(0.99),
    )
}

/// One participant: joins, stays (leaving and coming back under churn), until the run ends.
async fn participant(ctx: &Ctx, target: &Target, index: u32) {
    let far = Duration::from_secs(24 * 3600);
    loop {
        let stay = match &ctx.scenario.churn {
            Some(c) => {
                Duration::from_secs_f64(rand::rng().random_range(c.min_stay_s..=c.max_stay_s))
            }
            None => far,
        };
        let leave_at = Instant::now() + stay;
        let end = match target {
            Target::LiveKit(t) => livekit::session(ctx, t, index, leave_at).await,
            Target::Janus(t) => janus::session(ctx, t, index, leave_at).await,
        };
        if end != End::Left || ctx.shared.stopping() {
            return;
        }
        let away = ctx.scenario.churn.as_ref().map_or(0.0, |c| c.away_s);
        tokio::time::sleep(Duration::from_secs_f64(away)).await;
        if ctx.shared.stopping() {
            return;
        }
    }
}
