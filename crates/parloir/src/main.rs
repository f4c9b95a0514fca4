//! `parloir`: the appliance binary. `serve` runs the server, `token` prints an access token,
//! `loadtest` loads a server with simulated participants, `doctor` examines the machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use parloir_sfu::SfuConfig;
use parloir_signal::{Claims, KeyRing, VideoGrant};

mod config;
mod doctor;
mod egress;
mod hardware;
mod http;
mod ice_tcp;
mod loadtest;
mod media;
mod metrics;
mod speech;
mod transcribe;
mod transcripts;
mod twirp;
mod webhook;

use config::Config;

#[derive(Parser)]
#[command(
    name = "parloir",
    version,
    about = "Self-hosted video conferencing media server (LiveKit protocol)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve {
        /// Development defaults: key devkey/secret, HTTP 127.0.0.1:7880, UDP 7882 on loopback.
        #[arg(long, conflicts_with = "config")]
        dev: bool,
        /// A TOML configuration file (see deploy/parloir.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the HTTP/WebSocket listen address.
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
        /// Override the ICE UDP port.
        #[arg(long)]
        udp_port: Option<u16>,
        /// Override the ICE-TCP port (0 turns ICE-TCP off).
        #[arg(long)]
        tcp_port: Option<u16>,
        /// Override the meeting page directory.
        #[arg(long)]
        web_dir: Option<PathBuf>,
        /// Override `server.data_dir` (recordings go to its recordings/).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Send webhooks to this URL (repeatable; adds to the configuration's).
        #[arg(long = "webhook-url")]
        webhook_urls: Vec<String>,
        /// Override the UDP backend: auto, io_uring, mmsg or basic.
        #[arg(long)]
        io: Option<parloir_net::IoMode>,
        /// Override the hardware profile (auto or a name from hardware/).
        #[arg(long)]
        profile: Option<String>,
        /// Turn the speech plane on (`speech.enabled`): live subtitles and transcripts of every
        /// microphone.
        #[arg(long)]
        speech: bool,
        /// Override `speech.languages` (comma-separated codes, e.g. fr,en).
        #[arg(long, value_delimiter = ',')]
        speech_languages: Option<Vec<String>>,
        /// Override `speech.transcripts_dir`.
        #[arg(long)]
        transcripts_dir: Option<PathBuf>,
        /// Override `speech.models_dir`.
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Override `rtc.gso`: group equal-size datagrams for one client into GSO sends.
        #[arg(long)]
        gso: Option<bool>,
        /// Override `rtc.loudest_audio`: forward audio of the N loudest plus anyone speaking
        /// (0: everyone's).
        #[arg(long)]
        loudest_audio: Option<usize>,
        /// Override `rtc.bwe_initial_kbps`: subscriber bandwidth estimation starting from this
        /// many kbit/s (0: off).
        #[arg(long)]
        bwe_kbps: Option<u32>,
        /// Media workers (0: one per media core of the core plan); each has its own UDP port
        /// counting up from --udp-port.
        #[arg(long)]
        media_workers: Option<usize>,
        /// Override `rtc.room_span_after`: a room takes other media workers once its home
        /// worker holds this many of its participants (0: never).
        #[arg(long)]
        room_span_after: Option<u32>,
    },
    /// Examine this machine: cores and NUMA, UDP backends, GSO/GRO, NICs, GPUs, the hardware
    /// profile and core plan the server would use, and tuning advice (never applied).
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Read the io backend and profile from this configuration.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load a server with simulated participants (see perf/README.md).
    Loadtest(loadtest::LoadtestArgs),
    /// Transcribe an audio file with the speech plane's models (VAD, then Whisper): each
    /// utterance with its times and language, as text or JSON; progress on standard error.
    Transcribe(transcribe::TranscribeArgs),
    /// Write perf/report.md from a bench run's results (used by `make bench`).
    BenchReport {
        /// This run's results: load test JSON reports and forward.json.
        #[arg(long, default_value = "perf/results/latest")]
        results: PathBuf,
        /// The previous run's results, to compare with.
        #[arg(long)]
        previous: Option<PathBuf>,
        #[arg(long, default_value = "perf/budgets.toml")]
        budgets: PathBuf,
        /// The report; its plots go into plots/ beside it.
        #[arg(long, default_value = "perf/report.md")]
        out: PathBuf,
        /// What the run was made on (machine, commit), printed at the top.
        #[arg(long, default_value = "")]
        context: String,
    },
    /// Loopback UDP throughput of each backend: CPU per datagram and datagrams per second per
    /// core, sending and receiving (perf/udp-throughput.sh runs the whole matrix).
    NetBench {
        /// Backends to measure.
        #[arg(long, value_delimiter = ',', default_value = "basic,mmsg,io_uring")]
        backend: Vec<parloir_net::Backend>,
        /// Datagrams per call.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
        batch: Vec<usize>,
        /// GSO settings to measure.
        #[arg(long, value_delimiter = ',', default_value = "false,true")]
        gso: Vec<bool>,
        /// Datagram size in bytes.
        #[arg(long, default_value_t = 1200)]
        size: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Print a LiveKit access token.
    Token {
        #[arg(long)]
        room: String,
        #[arg(long)]
        identity: String,
        #[arg(long)]
        name: Option<String>,
        /// Grant room administration (roomAdmin, roomCreate, roomList, roomRecord).
        #[arg(long)]
        admin: bool,
        /// Sign with the first key of this configuration instead of the dev key.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 6 * 3600)]
        valid_for: i64,
    },
}

/// mimalloc: every forwarded packet allocates on the media workers (perf/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,str0m=warn,is=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Serve {
            dev,
            config,
            http_addr,
            udp_port,
            tcp_port,
            web_dir,
            data_dir,
            webhook_urls,
            io,
            profile,
            gso,
            loudest_audio,
            bwe_kbps,
            media_workers,
            room_span_after,
            speech,
            speech_languages,
            transcripts_dir,
            models_dir,
        } => {
            let mut config = match (dev, config) {
                (_, Some(path)) => Config::load(&path)?,
                (true, None) => Config::dev(),
                (false, None) => anyhow::bail!("give --dev or --config FILE"),
            };
            if let Some(a) = http_addr {
                config.server.http_addr = a;
            }
            if let Some(p) = udp_port {
                config.rtc.udp_port = p;
            }
            if let Some(p) = tcp_port {
                config.rtc.tcp_port = p;
            }
            if let Some(w) = web_dir {
                config.server.web_dir = w;
            }
            if let Some(d) = data_dir {
                config.server.data_dir = d;
            }
            config.webhook.urls.extend(webhook_urls);
            if let Some(io) = io {
                config.rtc.io = io.to_string();
            }
            if let Some(p) = profile {
                config.server.hardware_profile = p;
            }
            if let Some(g) = gso {
                config.rtc.gso = g;
            }
            config.speech.enabled |= speech;
            if let Some(l) = speech_languages {
                config.speech.languages = l;
            }
            if let Some(d) = transcripts_dir {
                config.speech.transcripts_dir = d;
            }
            if let Some(d) = models_dir {
                config.speech.models_dir = d;
            }
            if let Some(kbps) = bwe_kbps {
                config.rtc.bwe_initial_kbps = kbps;
            }
            if let Some(n) = loudest_audio {
                config.rtc.loudest_audio = n;
            }
            if let Some(n) = media_workers {
                config.rtc.media_workers = n;
            }
            if let Some(n) = room_span_after {
                config.rtc.room_span_after = n;
            }
            config.validate()?;
            serve(config)
        }
        Cmd::NetBench {
            backend,
            batch,
            gso,
            size,
            seconds,
            json,
        } => net_bench(&backend, &batch, &gso, size, seconds, json),
        Cmd::Doctor { json, config } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::dev(),
            };
            let findings = doctor::examine(
                config.io_mode(),
                &config.server.hardware_profile,
                &config.speech.models_dir,
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&findings.to_json())?);
            } else {
                print!("{}", findings.to_text());
            }
            Ok(())
        }
        Cmd::Loadtest(args) => loadtest::run(args),
        Cmd::Transcribe(args) => transcribe::run(args),
        Cmd::BenchReport {
            results,
            previous,
            budgets,
            out,
            context,
        } => {
            parloir_loadgen::bench::write(&parloir_loadgen::bench::Inputs {
                results,
                previous: previous.filter(|p| p.is_dir()),
                budgets,
                out: out.clone(),
                context,
            })?;
            eprintln!("bench-report: wrote {}", out.display());
            Ok(())
        }
        Cmd::Token {
            room,
            identity,
            name,
            admin,
            config,
            valid_for,
        } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::dev(),
            };
            let mut keys: Vec<_> = config.keys.into_iter().collect();
            keys.sort();
            let (key, secret) = keys.into_iter().next().context("no API key configured")?;
            let name = name.unwrap_or_else(|| identity.clone());
            let claims = token_claims(&key, &room, &identity, &name, admin, valid_for);
            println!("{}", parloir_signal::sign_hs256(&claims, &secret));
            Ok(())
        }
    }
}

/// Runs `parloir net-bench`: every backend × batch × GSO setting, printed as a table.
fn net_bench(
    backends: &[parloir_net::Backend],
    batches: &[usize],
    gsos: &[bool],
    size: usize,
    seconds: f64,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    use parloir_net::throughput::{Settings, measure};
    if !(size > 0 && size <= parloir_net::MAX_DATAGRAM) {
        anyhow::bail!("--size must be 1 to {}", parloir_net::MAX_DATAGRAM);
    }
    let probe = parloir_net::probe();
    let mut rows = Vec::new();
    println!(
        "| backend | batch | GSO | send ns/datagram | send datagrams/s per core | send calls | recv ns/datagram | recv datagrams/s per core | received % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &backend in backends {
        if !probe.works(backend) {
            eprintln!("net-bench: {backend} does not work here; skipped");
            continue;
        }
        for &batch in batches {
            for &gso in gsos {
                let t = measure(Settings {
                    backend,
                    batch,
                    gso,
                    size,
                    duration: Duration::from_secs_f64(seconds),
                })?;
                println!(
                    "| {backend} | {batch} | {} | {:.0} | {:.0}k | {} | {:.0} | {:.0}k | {:.1} |",
                    if gso { "on" } else { "off" },
                    t.send_ns(),
                    t.send_per_core() / 1e3,
                    t.send_calls,
                    t.recv_ns(),
                    t.recv_per_core() / 1e3,
                    100.0 * t.received as f64 / t.sent.max(1) as f64
                );
                rows.push(serde_json::json!({
                    "backend": backend.name(), "batch": batch, "gso": gso, "size": size,
                    "sent": t.sent, "received": t.received, "send_calls": t.send_calls,
                    "send_cpu_s": t.send_cpu.as_secs_f64(), "recv_cpu_s": t.recv_cpu.as_secs_f64(),
                    "wall_s": t.wall.as_secs_f64(), "send_ns": t.send_ns(), "recv_ns": t.recv_ns(),
                }));
            }
        }
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The claims of a participant token (and, with `admin`, the room administration grants).
pub(crate) fn token_claims(
    key: &str,
    room: &str,
    identity: &str,
    name: &str,
    admin: bool,
    valid_for_s: i64,
) -> Claims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    Claims {
        iss: key.to_string(),
        sub: identity.to_string(),
        name: name.to_string(),
        nbf: Some(now - 10),
        exp: Some(now + valid_for_s),
        video: VideoGrant {
            room_join: true,
            room: room.to_string(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            can_update_own_metadata: Some(true),
            room_admin: admin,
            room_create: admin,
            room_list: admin,
            room_record: admin,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    // The packet path: probe the backends, take the configured one (or the best that works).
    let probe = parloir_net::probe();
    let (backend, why) = probe
        .choose(config.io_mode())
        .map_err(|e| anyhow::anyhow!("rtc.io = {:?}: {e}", config.rtc.io))?;
    // The hardware profile and its core plan: one media worker per media core (unless
    // configured), each pinned to its core; the control plane on the control cores.
    let pci = parloir_gpu::pci_gpus();
    let cuda = parloir_gpu::cuda_devices().unwrap_or_default();
    let machine = hardware::Machine::detect(&pci, &cuda);
    let (profile, profile_why) =
        hardware::choose(&config.server.hardware_profile, &machine).map_err(anyhow::Error::msg)?;
    let plan = hardware::CorePlan::new(&profile, &machine);
    let workers = match config.rtc.media_workers {
        0 => plan.media.len(),
        n => n,
    };
    let control_cpus = if config.server.pin_cores {
        plan.control.clone()
    } else {
        Vec::new()
    };
    // The speech plane, when on: one thread on the speech cores, fed by every media worker.
    // Without its runtime or models the server says why and serves meetings without it.
    let speech_plane = if config.speech.enabled {
        // Pinned to the speech cores when the plan gives speech cores of its own. On a small
        // machine whose plan shares them with the control (or media) cores, pinning the
        // inference threads there would only make them queue behind each other and the
        // control plane: they float instead (measured in perf/README.md).
        let own = plan
            .speech
            .iter()
            .all(|c| !plan.control.contains(c) && !plan.media.contains(c));
        let cpus = if config.server.pin_cores && own {
            plan.speech.clone()
        } else {
            if config.server.pin_cores {
                tracing::info!(
                    speech = ?plan.speech,
                    "speech plane not pinned: its cores are shared with the control or media plane"
                );
            }
            Vec::new()
        };
        match speech::start(
            &config.speech,
            metrics.clone(),
            cpus,
            &profile.speech.providers,
        ) {
            Ok(plane) => Some(plane),
            Err(e) => {
                tracing::error!(
                    "speech plane off, meetings go on without subtitles or transcripts: {e:#}"
                );
                None
            }
        }
    } else {
        None
    };
    let speech_tap = speech_plane.as_ref().map(|p| p.tap.clone());
    // The record plane: the Egress API's recordings, on the record cores. A file-size limit
    // fails the recording that reaches it, not the server.
    parloir_net::topology::ignore_file_size_signal();
    let recordings = config.server.data_dir.join("recordings");
    let (egress, record_tap) = egress::Egress::start(
        recordings.clone(),
        egress::encoders(&profile.video.encode),
        egress::composite_gpu(&profile.video.composite),
        if config.server.pin_cores {
            plan.record.clone()
        } else {
            Vec::new()
        },
        metrics.clone(),
    )
    .context("cannot start the record plane")?;
    tracing::info!(dir = %recordings.display(), cpus = ?plan.record, "record plane");
    let mut setups = Vec::new();
    let mut media_cpus = Vec::new();
    let mut udp_info = None;
    for index in 0..workers {
        // Each worker has its own UDP (and ICE-TCP) port: udp_port, udp_port + 1, …
        let offset = u16::try_from(index).ok().filter(|o| {
            config.rtc.udp_port.checked_add(*o).is_some()
                && config.rtc.tcp_port.checked_add(*o).is_some()
        });
        let offset = offset.context("too many media workers for the configured ports")?;
        let shift = |a: SocketAddr| SocketAddr::new(a.ip(), a.port() + offset);
        let endpoint = parloir_net::UdpEndpoint::open(
            shift(config.udp_bind()),
            parloir_net::EndpointConfig::new(backend)
                .gso(config.rtc.gso)
                .gro(config.rtc.gro)
                // Arrival times for TWCC feedback (`media.rs`, `arrival`).
                .timestamps(true),
        )?;
        let sfu = SfuConfig {
            candidates: config.candidates().into_iter().map(shift).collect(),
            tcp_candidates: config.tcp_candidates().into_iter().map(shift).collect(),
            seed: rand::random(),
            server_version: parloir_signal::LIVEKIT_COMPAT_VERSION.to_string(),
            protocol: parloir_signal::PROTOCOL_VERSION,
            node_id: format!("ND_parloir_{}", std::process::id()),
            ping_interval_s: 5,
            ping_timeout_s: 15,
            loudest_audio: config.rtc.loudest_audio,
            speech_all_rooms: config.speech.rooms == "all",
            bwe_initial_kbps: config.rtc.bwe_initial_kbps,
            worker: index as u16,
            workers: workers as u16,
        };
        let tcp = match (config.tcp_bind(), config.tcp_candidates().first()) {
            (Some(bind), Some(&advertised)) => {
                let bind = shift(bind);
                let listener = std::net::TcpListener::bind(bind)
                    .with_context(|| format!("cannot listen for ICE-TCP on {bind}"))?;
                Some((listener, shift(advertised)))
            }
            _ => None,
        };
        let cpus = if config.server.pin_cores {
            vec![plan.media[index % plan.media.len()]]
        } else {
            Vec::new()
        };
        media_cpus.extend(cpus.iter().copied());
        if index == 0 {
            tracing::info!(
                udp = %why,
                gso = endpoint.gso(),
                gro = endpoint.gro(),
                workers,
                profile = %profile.name,
                profile_reason = %profile_why,
                control_cpus = ?control_cpus,
                "packet path"
            );
            udp_info = Some(metrics::UdpInfo {
                backend: endpoint.backend().name(),
                gso: endpoint.gso(),
                gro: endpoint.gro(),
                workers,
                media_cpus: Vec::new(),
            });
        }
        tracing::info!(
            worker = index,
            udp = %endpoint.local_addr(),
            cpus = ?cpus,
            "media worker"
        );
        setups.push(media::WorkerSetup {
            audio_tap: speech_tap
                .clone()
                .map(|t| Box::new(t) as Box<dyn parloir_sfu::AudioTap>),
            record_tap: Some(Box::new(record_tap.clone())),
            endpoint,
            config: sfu,
            tcp,
            cpus,
        });
    }
    if let Some(mut info) = udp_info {
        info.media_cpus = media_cpus;
        let _ = metrics.udp.set(info);
    }
    let candidates = config.candidates();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .on_thread_start(move || {
            if !control_cpus.is_empty()
                && let Err(e) = parloir_net::topology::pin_current_thread(&control_cpus)
            {
                tracing::warn!("cannot pin a control thread to {control_cpus:?}: {e}");
            }
        })
        .enable_all()
        .build()?;
    // Webhook senders are tokio tasks; the media worker only queues events for them.
    let webhooks = {
        let _runtime = runtime.enter();
        let mut keys: Vec<_> = config.keys.iter().collect();
        keys.sort();
        let (key, secret) = if config.webhook.api_key.is_empty() {
            keys.first().map(|(k, s)| ((*k).clone(), (*s).clone()))
        } else {
            config
                .keys
                .get(&config.webhook.api_key)
                .map(|s| (config.webhook.api_key.clone(), s.clone()))
        }
        .context("no API key to sign webhooks with")?;
        let hooks = webhook::Webhooks::start(&config.webhook.urls, key, secret, metrics.clone());
        let recorder = egress.clone();
        let hooks = hooks.with_observer(Arc::new(move |e| recorder.observe(e)));
        match &speech_plane {
            Some(plane) => hooks.with_observer(plane.observer()),
            None => hooks,
        }
    };
    let media = media::spawn(
        setups,
        metrics.clone(),
        webhooks.clone(),
        config.rtc.room_span_after,
    )
    .context("cannot start the media workers")?;
    if let Some(plane) = &speech_plane {
        plane.attach(media.clone(), webhooks.clone());
    }
    egress.attach(media.clone(), webhooks.clone());
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let state = Arc::new(http::AppState {
        keys: KeyRing::new(config.keys.clone()),
        media,
        metrics,
        egress: Some(egress.clone()),
        web_dir: config.server.web_dir.clone(),
        transcripts_dir: speech_plane
            .as_ref()
            .map(|_| config.speech.transcripts_dir.clone()),
        development: config.development,
        ping_timeout: Duration::from_secs(15),
        next_session: AtomicU64::new(1),
        shutdown,
        resumable: Default::default(),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.http_addr))?;
        let addr = listener.local_addr()?;
        tracing::info!(http = %addr, udp = ?candidates, "parloir serving");
        if config.development {
            eprintln!("\n  Parloir is running. Open http://{addr}/ in two browser tabs to meet.\n  API key: devkey  secret: secret  signal URL: ws://{addr}\n");
        }
        let sessions = state.media.sessions.clone();
        let media = state.media.clone();
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                // Sessions tell their clients the server is going away, then close.
                let _ = shutdown_tx.send(true);
            })
            .await?;
        // WebSockets outlive the HTTP server: give each session time to tell its client.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !sessions.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Close every room (room_finished) and give the webhooks time to go out.
        if media.send(parloir_sfu::Command::Shutdown).is_ok() {
            // Commands run in order: once this answers, the shutdown's events are queued.
            let barrier = parloir_sfu::ServiceCall::ListRooms(Default::default());
            let _ = media.call(barrier, 0).await;
            // Closed rooms end their recordings: wait for the files to be complete.
            let recorder = egress.clone();
            let _ = tokio::task::spawn_blocking(move || recorder.shutdown(Duration::from_secs(10)))
                .await;
            webhooks.flush(Duration::from_secs(5)).await;
        }
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
