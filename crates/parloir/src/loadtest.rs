//! `parloir loadtest`: runs a scenario of perf/scenarios/ against Parloir (started here on
//! loopback), Janus (likewise) or any LiveKit-protocol server given by URL, and reports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use parloir_loadgen::{
    JanusTarget, LiveKitTarget, Options, Report, Scenario, Target, janus, report,
};

#[derive(Args)]
pub struct LoadtestArgs {
    /// Scenario file, or the name of one in perf/scenarios/ (meeting-150, webinar, audio-only,
    /// churn).
    #[arg(long, default_value = "meeting-150")]
    scenario: String,
    /// Servers to load, one after the other: `parloir` and `janus` are started here on loopback;
    /// `livekit` is any LiveKit-protocol server at --url.
    #[arg(long, value_delimiter = ',', default_value = "parloir")]
    target: Vec<String>,
    /// WebSocket URL of the server for `--target livekit` (or a Parloir already running).
    #[arg(long)]
    url: Option<String>,
    #[arg(long, default_value = "devkey")]
    api_key: String,
    #[arg(long, default_value = "secret")]
    api_secret: String,
    /// Process id of a server given by --url, for its CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Participants (overrides the scaling to this machine's cores); a list runs each size.
    #[arg(long, value_delimiter = ',')]
    participants: Vec<u32>,
    /// Seconds of measurement (overrides the scenario's).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop once subscribers have received this many RTP packets.
    #[arg(long)]
    max_packets: Option<u64>,
    /// Address the simulated participants bind to: 127.0.0.1, except against Janus, which never
    /// offers loopback candidates: there the machine's own IPv4 address.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Write each report as JSON into this directory (`<scenario>-<server>.json`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Worker threads of the load generator (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// UDP backends of the Parloir started here (`parloir serve --io`); a list runs each, as
    /// servers named `parloir-<backend>`.
    #[arg(long, value_delimiter = ',')]
    io: Vec<parloir_net::IoMode>,
    /// Meet in this room (LiveKit-protocol targets) instead of a fresh one.
    #[arg(long)]
    room: Option<String>,
}

/// A server process started for the run; stopped when dropped.
struct Spawned {
    child: Child,
    ws_url: String,
    _dir: Option<janus::ConfigDir>,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `port` accepts TCP connections, or the process exits.
fn wait_listening(child: &mut Child, port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{what} exited during start-up ({status})");
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("{what} did not listen on port {port} within 20 s")
}

fn log_file(name: &str) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let path = std::env::temp_dir().join(format!(
        "parloir-loadtest-{}-{name}.log",
        std::process::id()
    ));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok((path, file))
}

fn spawn_parloir(io: Option<parloir_net::IoMode>) -> anyhow::Result<Spawned> {
    let exe = std::env::current_exe().context("finding the parloir binary")?;
    let http = free_tcp_port()?;
    let udp = free_udp_port()?;
    let (log, file) = log_file("parloir")?;
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--dev",
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--udp-port",
            &udp.to_string(),
            "--tcp-port",
            "0",
        ])
        .args(io.map(|io| format!("--io={io}")))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .context("starting parloir serve")?;
    wait_listening(&mut child, http, "parloir serve")
        .with_context(|| format!("see {}", log.display()))?;
    Ok(Spawned {
        child,
        ws_url: format!("ws://127.0.0.1:{http}"),
        _dir: None,
    })
}

fn spawn_janus(ice_ip: Ipv4Addr) -> anyhow::Result<Spawned> {
    let ws = free_tcp_port()?;
    let dir = janus::ConfigDir::generate(ws, ice_ip)?;
    let (log, file) = log_file("janus")?;
    let mut child = dir
        .command()?
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting janus (install Debian's janus package: make bench does)")?;
    wait_listening(&mut child, ws, "janus").with_context(|| format!("see {}", log.display()))?;
    Ok(Spawned {
        child,
        ws_url: format!("ws://127.0.0.1:{ws}"),
        _dir: Some(dir),
    })
}

fn find_scenario(name: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(name);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    for dir in [
        "perf/scenarios",
        "../perf/scenarios",
        "../../perf/scenarios",
    ] {
        let p = Path::new(dir).join(format!("{name}.toml"));
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!("no scenario {name}: give a file or a name in perf/scenarios/")
}

pub fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    let mut scenario = Scenario::load(&find_scenario(&args.scenario)?)?;
    if let Some(d) = args.duration {
        anyhow::ensure!(d > 0.0 && d <= 3600.0, "--duration must be in (0, 3600]");
        scenario.duration_s = d;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let sizes: Vec<Option<u32>> = if args.participants.is_empty() {
        vec![None]
    } else {
        args.participants.iter().map(|n| Some(*n)).collect()
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(t) = args.threads {
        runtime.worker_threads(t.max(1));
    }
    let runtime = runtime.build()?;
    let mut reports = Vec::new();
    for size in &sizes {
        let sized = scenario.sized(*size, cores);
        let suffix = if sizes.len() > 1 {
            format!("-p{}", sized.scenario.participants)
        } else {
            String::new()
        };
        reports.extend(run_targets(&args, &runtime, &sized, &suffix)?);
    }
    if reports.len() > 1 {
        println!("{}", report::comparison(&reports));
    }
    let unclean: Vec<&Report> = reports.iter().filter(|r| !r.clean()).collect();
    if !unclean.is_empty() {
        let names: Vec<String> = unclean
            .iter()
            .map(|r| format!("{} ({} participants)", r.server, r.participants))
            .collect();
        anyhow::bail!(
            "participants failed to join or were dropped by {}: see the report",
            names.join(", ")
        );
    }
    Ok(())
}

/// Runs one sized scenario against each target in turn.
fn run_targets(
    args: &LoadtestArgs,
    runtime: &tokio::runtime::Runtime,
    sized: &parloir_loadgen::Sized,
    suffix: &str,
) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    // Each backend asked for is a Parloir of its own.
    let targets: Vec<(&str, Option<parloir_net::IoMode>)> = args
        .target
        .iter()
        .flat_map(|t| {
            if t == "parloir" && args.url.is_none() && !args.io.is_empty() {
                args.io.iter().map(|io| (t.as_str(), Some(*io))).collect()
            } else {
                vec![(t.as_str(), None)]
            }
        })
        .collect();
    for (target, io) in targets {
        let mut bind = args.bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let named;
        let (spawned, target, name) = match target {
            "parloir" if args.url.is_none() => {
                let s = spawn_parloir(io)?;
                let t = Target::LiveKit(LiveKitTarget {
                    ws_url: s.ws_url.clone(),
                    api_key: "devkey".into(),
                    api_secret: "secret".into(),
                });
                named = match io {
                    Some(io) => format!("parloir-{io}"),
                    None => "parloir".to_string(),
                };
                (Some(s), t, named.as_str())
            }
            "parloir" | "livekit" => {
                let url = args.url.clone().context("--target livekit needs --url")?;
                let t = Target::LiveKit(LiveKitTarget {
                    ws_url: url,
                    api_key: args.api_key.clone(),
                    api_secret: args.api_secret.clone(),
                });
                (None, t, target)
            }
            "janus" => {
                let ip = match args.bind {
                    Some(IpAddr::V4(ip)) if !ip.is_loopback() => ip,
                    Some(other) => anyhow::bail!(
                        "Janus never offers loopback or IPv6 candidates here: --bind {other} cannot reach it"
                    ),
                    None => janus::host_ipv4()
                        .context("Janus needs a non-loopback IPv4 address on this machine")?,
                };
                bind = IpAddr::V4(ip);
                let s = spawn_janus(ip)?;
                let t = Target::Janus(JanusTarget {
                    ws_url: s.ws_url.clone(),
                });
                (Some(s), t, "janus")
            }
            other => anyhow::bail!("unknown target {other}: parloir, janus or livekit"),
        };
        let server_pid = spawned.as_ref().map(|s| s.child.id()).or(args.server_pid);
        eprintln!(
            "loadtest: {} against {name}: {}",
            sized.scenario.name, sized.scaling
        );
        let report = runtime.block_on(parloir_loadgen::run(Options {
            sized: sized.clone(),
            target,
            server_name: name.to_string(),
            server_pid,
            bind_ip: bind,
            max_packets: args.max_packets,
            progress: !args.quiet,
            room: args.room.clone(),
        }));
        drop(spawned);
        println!("{report}");
        if let Some(dir) = &args.out {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!(
                "{}-{}{suffix}.json",
                report.scenario, report.server
            ));
            std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("loadtest: report written to {}", path.display());
        }
        reports.push(report);
    }
    Ok(reports)
}
