//! `parloir loadtest` end to end: simulated participants against a real server, and against
//! servers that refuse or drop them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

fn out_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "parloir-loadtest-test-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `parloir loadtest` of the scenario `perf/scenarios/<scenario>.toml` with `participants` for
/// `seconds`, its reports written to `dir`, with `extra` arguments; what it printed and how
/// long it took.
fn loadtest(
    scenario: &str,
    participants: u32,
    seconds: u32,
    dir: &Path,
    extra: &[&str],
) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_parloir"))
        .arg("loadtest")
        .args(["--quiet", "--threads", "2"])
        .arg("--scenario")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../perf/scenarios")
                .join(format!("{scenario}.toml")),
        )
        .args(["--participants", &participants.to_string()])
        .args(["--duration", &seconds.to_string()])
        .arg("--out")
        .arg(dir)
        .args(extra)
        .output()
        .expect("parloir loadtest runs");
    (out, started.elapsed())
}

/// Asserts that the run succeeded, with what it printed if not; its standard output.
fn succeeded(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number of joins `kind` ("failed" or "dropped", by reason) in a report.
fn joins(r: &serde_json::Value, kind: &str) -> f64 {
    r["joins"][kind]
        .as_object()
        .unwrap_or_else(|| panic!("joins.{kind} is a map in {}", r["joins"]))
        .values()
        .filter_map(|v| v.as_f64())
        .sum()
}

fn report(dir: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(name)).expect("the JSON report is written");
    serde_json::from_str(&text).expect("the report is JSON")
}

fn f(v: &serde_json::Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is a number in {v}"))
}

#[test]
fn a_small_meeting_is_forwarded_and_measured() {
    let dir = out_dir("meeting");
    let stdout = succeeded(&loadtest("meeting-150", 3, 3, &dir, &[]).0, "parloir");
    assert!(stdout.contains("server process"), "{stdout}");
    let r = report(&dir, "meeting-150-parloir.json");
    assert_eq!(r["server"], "parloir");
    assert_eq!(f(&r, "participants"), 3.0);
    assert_eq!(f(&r, "joins.joined"), 3.0);
    assert_eq!(joins(&r, "failed"), 0.0);
    assert_eq!(joins(&r, "dropped"), 0.0);
    // Three publishers with audio and simulcast video; each subscriber watches the other two.
    assert!(f(&r, "traffic.packets_in") > 0.0);
    assert!(f(&r, "traffic.packets_out") > f(&r, "traffic.packets_in") * 0.5);
    assert!(f(&r, "traffic.video_frames_received") > 0.0);
    assert!(f(&r, "traffic.audio_frames_received") > 0.0);
    assert!(f(&r, "video_latency_ms.count") > 0.0);
    assert!(f(&r, "video_latency_ms.p50") > 0.0);
    assert!(f(&r, "video_latency_ms.p99") >= f(&r, "video_latency_ms.p50"));
    assert!(f(&r, "joins.first_frame_ms.count") >= 3.0);
    // The server was started by the tool, so its CPU time is known.
    assert!(f(&r, "server_process.cpu_us_per_forwarded_packet") > 0.0);
    assert!(f(&r, "measured_s") >= 2.5);

    // The bench report reads the run, checks it against the budgets and draws the plots.
    let md = dir.join("report.md");
    let status = Command::new(env!("CARGO_BIN_EXE_parloir"))
        .arg("bench-report")
        .arg("--results")
        .arg(&dir)
        .arg("--budgets")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../perf/budgets.toml"))
        .arg("--out")
        .arg(&md)
        .status()
        .expect("parloir bench-report runs");
    assert!(status.success());
    let text = std::fs::read_to_string(&md).expect("the report is written");
    assert!(
        text.contains("| `forwarding.cpu_per_packet_us_150` | 2 |"),
        "{text}"
    );
    assert!(text.contains("meeting-150 at 3 participants"), "{text}");
    assert!(text.contains("not measured"), "{text}");
    for plot in ["cpu-per-packet.svg", "latency-meeting-150.svg"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(plot)).expect("the plot is drawn");
        assert!(svg.starts_with("<svg") && svg.contains("parloir"), "{plot}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_packet_budget_ends_the_measurement() {
    let dir = out_dir("budget");
    let (out, took) = loadtest("meeting-150", 2, 120, &dir, &["--max-packets", "300"]);
    succeeded(&out, "parloir");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let r = report(&dir, "meeting-150-parloir.json");
    assert_eq!(r["stopped_early"], "packet budget of 300 reached");
    assert!(f(&r, "traffic.packets_out") >= 300.0);
    assert!(f(&r, "measured_s") < 60.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lone_publisher_stays_connected() {
    // Nobody to receive from: the subscriber connection carries nothing but must stay up past
    // the server's 15 s ICE consent window.
    let dir = out_dir("lone");
    let (out, _) = loadtest("audio-only", 1, 17, &dir, &[]);
    let r = report(&dir, "audio-only-parloir.json");
    succeeded(&out, &r["joins"].to_string());
    assert_eq!(joins(&r, "dropped"), 0.0);
    assert!(f(&r, "traffic.packets_in") > 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn parloir_and_janus_are_loaded_side_by_side() {
    let dir = out_dir("janus");
    let (out, _) = loadtest("meeting-150", 3, 3, &dir, &["--target", "parloir,janus"]);
    let stdout = succeeded(&out, "parloir and janus");
    assert!(stdout.contains("| | parloir | janus |"), "{stdout}");
    for server in ["parloir", "janus"] {
        let r = report(&dir, &format!("meeting-150-{server}.json"));
        assert_eq!(f(&r, "joins.joined"), 3.0, "{server}");
        assert!(f(&r, "traffic.video_frames_received") > 0.0, "{server}");
        assert!(f(&r, "traffic.audio_frames_received") > 0.0, "{server}");
        assert!(f(&r, "video_latency_ms.count") > 0.0, "{server}");
        assert!(
            f(&r, "server_process.cpu_us_per_forwarded_packet") > 0.0,
            "{server}"
        );
    }
    // Janus honours the layer each tile asks for: the large tile gets the top layer and the
    // grid tile the lowest one.
    let janus = report(&dir, "meeting-150-janus.json");
    let layers = &janus["traffic"]["video_frames_by_layer"];
    assert!(layers[0].as_f64().is_some_and(|n| n > 0.0), "{layers}");
    assert!(layers[2].as_f64().is_some_and(|n| n > 0.0), "{layers}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refused_participants_are_reported_not_waited_on() {
    let server = common::start();
    let dir = out_dir("refused");
    let url = format!("ws://{}", server.http);
    let (out, took) = loadtest(
        "webinar",
        3,
        30,
        &dir,
        &[
            "--target",
            "livekit",
            "--url",
            &url,
            "--api-secret",
            "not-the-secret",
        ],
    );
    assert!(!out.status.success(), "a refused run fails");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed to join"), "{stderr}");
    // Nobody joined, so the run ends at the start of measurement instead of lasting 30 s.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let r = report(&dir, "webinar-livekit.json");
    assert_eq!(f(&r, "joins.joined"), 0.0);
    assert_eq!(r["joins"]["failed"]["refused: HTTP 401"], 3);
    assert_eq!(r["stopped_early"], "no participant could join");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_that_goes_away_is_reported_as_dropping_participants() {
    let mut server = common::start();
    let dir = out_dir("dropped");
    let url = format!("ws://{}", server.http);
    let pid = server.child.id().to_string();
    let run = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let extra = ["--target", "livekit", "--url", &url, "--server-pid", &pid];
            loadtest("audio-only", 3, 8, &dir, &extra)
        })
    };
    std::thread::sleep(Duration::from_secs(4));
    let _ = server.child.kill();
    let _ = server.child.wait();
    let (out, took) = run.join().expect("the load test thread ends");
    assert!(
        !out.status.success(),
        "a run with dropped participants fails"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let r = report(&dir, "audio-only-livekit.json");
    assert_eq!(f(&r, "joins.joined"), 3.0);
    assert_eq!(joins(&r, "dropped"), 3.0, "{}", r["joins"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn media_flows_on_every_udp_backend() {
    // The server probes the backends the same way; skip those this kernel refuses.
    let doctor = Command::new(env!("CARGO_BIN_EXE_parloir"))
        .args(["doctor", "--json"])
        .output()
        .expect("parloir doctor runs");
    assert!(doctor.status.success());
    let doctor: serde_json::Value =
        serde_json::from_slice(&doctor.stdout).expect("doctor --json prints JSON");
    let working: Vec<String> = doctor["udp"]["backends"]
        .as_array()
        .expect("a list of backends")
        .iter()
        .filter(|b| b["works"] == true)
        .map(|b| b["backend"].as_str().expect("a name").to_string())
        .collect();
    assert!(working.iter().any(|b| b == "basic"), "{doctor}");
    for b in doctor["udp"]["backends"].as_array().into_iter().flatten() {
        if b["works"] != true {
            eprintln!("skipping {}: {}", b["backend"], b["error"]);
        }
    }
    let dir = out_dir("backends");
    let (out, _) = loadtest("meeting-150", 3, 3, &dir, &["--io", &working.join(",")]);
    succeeded(&out, "every backend");
    for backend in &working {
        let r = report(&dir, &format!("meeting-150-parloir-{backend}.json"));
        assert_eq!(f(&r, "joins.joined"), 3.0, "{backend}");
        assert!(
            f(&r, "traffic.packets_out") > 100.0,
            "{backend}: media flowed"
        );
        assert!(
            f(&r, "video_latency_ms.count") > 0.0 && f(&r, "audio_latency_ms.count") > 0.0,
            "{backend}: audio and video frames arrived"
        );
    }
}

/// The worker a room lives on with `workers` media workers (FNV-1a of the name, as the server
/// places rooms).
fn worker_of(room: &str, workers: u64) -> u64 {
    room.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) % workers
}

#[test]
fn each_media_worker_carries_its_rooms_media() {
    let server = common::start_workers(2, &[]);
    let url = format!("ws://{}", server.http);
    let pid = server.child.id().to_string();
    for worker in 0..2 {
        let room = (0..)
            .map(|i| format!("w{worker}-{i}"))
            .find(|r| worker_of(r, 2) == worker)
            .expect("some name lands on each worker");
        let dir = out_dir(&format!("worker{worker}"));
        let extra = ["--target", "livekit", "--url", &url, "--server-pid", &pid];
        let (out, _) = loadtest(
            "meeting-150",
            3,
            3,
            &dir,
            &[&extra[..], &["--room", &room]].concat(),
        );
        succeeded(&out, &format!("worker {worker}"));
        let r = report(&dir, "meeting-150-livekit.json");
        assert_eq!(f(&r, "joins.joined"), 3.0, "worker {worker}");
        assert!(
            f(&r, "video_latency_ms.count") > 0.0 && f(&r, "audio_latency_ms.count") > 0.0,
            "worker {worker}: audio and video frames arrived"
        );
    }
}
