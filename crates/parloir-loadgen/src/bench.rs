//! perf/report.md from a bench run: load test reports, the forwarding bench, the budgets and the
//! previous run, with SVG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::plot::{self, Series};
use crate::report::{self, Report};

/// Where a bench run's figures are.
pub struct Inputs {
    /// Directory of this run's JSON: load test reports and `forward.json`.
    pub results: PathBuf,
    /// The previous run's directory, if any.
    pub previous: Option<PathBuf>,
    pub budgets: PathBuf,
    /// The Markdown report to write; plots go into `plots/` next to it.
    pub out: PathBuf,
    /// A line describing the machine and the commit.
    pub context: String,
}

/// One row of the forwarding bench (`forward.json`).
#[derive(Debug, Clone, serde::Deserialize)]
struct ForwardRow {
    participants: f64,
    sfu_cpu_us_per_datagram_out: f64,
    ratio_to_smallest: f64,
}

struct Run {
    file: String,
    report: Report,
}

/// Files of a results directory that are not load test reports.
const BENCH_FILES: [&str; 3] = ["forward.json", "record.json", "subtitle-latency.json"];

fn load_runs(dir: &Path) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(runs);
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        // The benches' own files are read by load_forward, load_record and load_speech.
        if !name.ends_with(".json") || BENCH_FILES.contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        match serde_json::from_str::<Report>(&text) {
            Ok(report) => runs.push(Run { file: name, report }),
            Err(e) => anyhow::bail!("{}: not a load test report: {e}", path.display()),
        }
    }
    Ok(runs)
}

fn load_forward(dir: &Path) -> Vec<ForwardRow> {
    std::fs::read_to_string(dir.join("forward.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The record plane's bench figures (`record.json`, crates/parloir-record/benches): one JSON
/// object per measurement.
fn load_record(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("record.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// What the record bench measured for a `record.*` budget.
fn record_figure(key: &str, record: &[serde_json::Value]) -> Option<(f64, String)> {
    let find = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        record
            .iter()
            .find(|v| v["what"] == what && pred(v))
            .cloned()
    };
    match key {
        "record.composite_720p30_25_tiles_cpu_cores" => {
            let clips = find("room composite", &|v| {
                v["participants"] == 25 && v["canvas"] == "1280x720@30" && v["cameras"] == "clips"
            });
            let any = find("room composite", &|v| {
                v["participants"] == 25 && v["canvas"] == "1280x720@30"
            });
            let v = clips.or(any)?;
            Some((
                v["cpu_cores"].as_f64()?,
                format!(
                    "record bench, 25 participants ({} cameras) decoded, composited, encoded",
                    v["cameras"].as_str().unwrap_or("synthetic")
                ),
            ))
        }
        "record.composite_frame_ms_720p_25_tiles_cpu" => {
            let v = find("compositor", &|v| v["canvas"] == "720p" && v["tiles"] == 25)?;
            let fps = v["frames_per_s"].as_f64().filter(|f| *f > 0.0)?;
            Some((
                1000.0 / fps,
                "record bench, compositor alone on one core".into(),
            ))
        }
        _ => None,
    }
}

/// The subtitle latency figures (`subtitle-latency.json`, perf/subtitle-latency.py): one object
/// per number of people speaking at once.
fn load_speech(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("subtitle-latency.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["results"].as_array().cloned())
        .unwrap_or_default()
}

/// What perf/subtitle-latency.py measured for a `speech.subtitle_latency_*_cpu` budget: the run
/// with the most people speaking at once (the budget holds for four).
fn speech_figure(key: &str, speech: &[serde_json::Value]) -> Option<(f64, String)> {
    let field = match key {
        "speech.subtitle_latency_p50_ms_cpu" => "p50_s",
        "speech.subtitle_latency_p95_ms_cpu" => "p95_s",
        _ => return None,
    };
    let run = speech
        .iter()
        .filter(|v| v[field].as_f64().is_some_and(f64::is_finite))
        .max_by_key(|v| v["speakers"].as_u64().unwrap_or(0))?;
    Some((
        run[field].as_f64()? * 1000.0,
        format!(
            "perf/subtitle-latency.py, {} speaking at once, {} of {} words arrived (server and participants on this machine)",
            run["speakers"].as_u64().unwrap_or(0),
            run["arrived"].as_u64().unwrap_or(0),
            run["words"].as_u64().unwrap_or(0)
        ),
    ))
}

/// A budget and what the run measured against it.
struct Check {
    key: String,
    budget: f64,
    measured: Option<(f64, String)>,
    /// Lower is better for every budget we hold.
    note: &'static str,
}

/// The least-squares line through `(x, y)` points, when it rises: its slope and its value at 0.
/// `None` with fewer than two distinct `x`, or a slope that is not positive (a sweep too noisy
/// to read growth from, which would pass any budget).
fn growth(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx <= f64::EPSILON {
        return None;
    }
    let slope = sxy / sxx;
    (slope > 0.0).then_some((slope, mean_y - slope * mean_x))
}

fn budgets(path: &Path) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)?;
    let mut out = BTreeMap::new();
    for (section, v) in table {
        let Some(t) = v.as_table() else { continue };
        for (k, v) in t {
            let n = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
            if let Some(n) = n {
                out.insert(format!("{section}.{k}"), n);
            }
        }
    }
    Ok(out)
}

/// The single-size run of `scenario` against `server` (the one without a `-p<N>` suffix), else
/// the largest of a sweep.
fn main_run<'a>(runs: &'a [Run], scenario: &str, server: &str) -> Option<&'a Report> {
    let matching = runs
        .iter()
        .filter(|r| r.report.scenario == scenario && r.report.server == server);
    let exact = format!("{scenario}-{server}.json");
    matching
        .clone()
        .find(|r| r.file == exact)
        .or_else(|| matching.max_by_key(|r| r.report.participants))
        .map(|r| &r.report)
}

fn checks(
    budgets: &BTreeMap<String, f64>,
    runs: &[Run],
    forward: &[ForwardRow],
    record: &[serde_json::Value],
    speech: &[serde_json::Value],
) -> Vec<Check> {
    let meeting = main_run(runs, "meeting-150", "parloir");
    let measure = |key: &str| -> Option<(f64, String)> {
        let m = meeting?;
        let scale = format!("meeting-150 at {} participants", m.participants);
        match key {
            "forwarding.cpu_per_packet_us_150" => {
                m.server_process.cpu_us_per_forwarded_packet.map(|v| {
                    (
                        v,
                        format!("{scale}, server process CPU / packets forwarded"),
                    )
                })
            }
            "forwarding.added_latency_p50_ms" => Some((
                m.video_latency_ms.p50,
                format!(
                    "{scale}, end-to-end video latency (an upper bound: includes the generator)"
                ),
            )),
            "forwarding.added_latency_p99_ms" => Some((
                m.video_latency_ms.p99,
                format!(
                    "{scale}, end-to-end video latency (an upper bound: includes the generator)"
                ),
            )),
            "join.join_time_p99_ms" => Some((
                m.joins.first_frame_ms.p99,
                format!("{scale}, signal connect to first remote frame"),
            )),
            "memory.rss_150_participants_mb" => m
                .server_process
                .rss_mib
                .map(|v| (v, format!("{scale} (not 150)"))),
            // What each participant adds: the slope of the server's memory over the sweep's
            // sizes (its base, the binary and its runtimes, is not a participant's). With one
            // size only, or a sweep whose memory does not grow, the whole process over its
            // participants (an upper bound).
            "memory.rss_per_participant_mb" => {
                let sweep: Vec<(f64, f64)> = runs
                    .iter()
                    .filter(|r| r.report.scenario == "meeting-150" && r.report.server == "parloir")
                    .filter_map(|r| {
                        let rss = r.report.server_process.rss_mib?;
                        Some((f64::from(r.report.participants), rss))
                    })
                    .collect();
                match growth(&sweep) {
                    Some((slope, base)) => {
                        let mut sizes: Vec<u32> = sweep.iter().map(|p| p.0 as u32).collect();
                        sizes.sort_unstable();
                        sizes.dedup();
                        let sizes: Vec<String> = sizes.iter().map(u32::to_string).collect();
                        Some((
                            slope,
                            format!(
                                "meeting-150 at {} participants: growth of the server's RSS \
                                 per participant (least squares; {base:.0} MiB at none)",
                                sizes.join(", ")
                            ),
                        ))
                    }
                    None => m.server_process.rss_mib.map(|v| {
                        (
                            v / f64::from(m.participants.max(1)),
                            format!("{scale}, the whole process over its participants"),
                        )
                    }),
                }
            }
            _ => None,
        }
    };
    budgets
        .iter()
        .map(|(key, budget)| {
            let measured = if key == "forwarding.cost_ratio_150_vs_2" {
                forward.last().filter(|_| forward.len() > 1).map(|r| {
                    (
                        r.ratio_to_smallest,
                        format!(
                            "forwarding bench, {} vs {} participants",
                            r.participants, forward[0].participants
                        ),
                    )
                })
            } else if key.starts_with("record.") {
                record_figure(key, record)
            } else if key.starts_with("speech.") {
                speech_figure(key, speech)
            } else {
                measure(key)
            };
            let note = match key.as_str() {
                "record.av_drift_ms_after_2h" => {
                    "measured by the recording tests (parloir-record timing::drift: 0.01 ms)"
                }
                "speech.subtitle_latency_p50_ms_gpu" => "needs a GPU: not measured on this machine",
                "speech.whisper_base_rtf_2_threads" => {
                    "`cargo bench -p parloir-speech --bench whisper` (perf/README.md); not run by make bench"
                }
                k if k.starts_with("speech.") => {
                    "perf/subtitle-latency.py measures it when the speech models are installed"
                }
                k if k.starts_with("record.") => "the record bench measures it",
                _ => "",
            };
            Check {
                key: key.clone(),
                budget: *budget,
                measured,
                note,
            }
        })
        .collect()
}

fn scenarios(runs: &[Run]) -> Vec<String> {
    let mut names: Vec<String> = runs.iter().map(|r| r.report.scenario.clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// Writes the report and its plots.
pub fn write(inputs: &Inputs) -> anyhow::Result<()> {
    let runs = load_runs(&inputs.results)?;
    anyhow::ensure!(
        !runs.is_empty() || inputs.results.join("forward.json").is_file(),
        "no results in {}",
        inputs.results.display()
    );
    let previous = match &inputs.previous {
        Some(p) => load_runs(p)?,
        None => Vec::new(),
    };
    let forward = load_forward(&inputs.results);
    let previous_forward = inputs
        .previous
        .as_deref()
        .map(load_forward)
        .unwrap_or_default();
    let budgets = budgets(&inputs.budgets)?;
    let out_dir = inputs.out.parent().unwrap_or(Path::new("."));
    let plots = out_dir.join("plots");
    std::fs::create_dir_all(&plots)?;

    let mut md = String::new();
    writeln!(md, "# Bench report\n")?;
    writeln!(
        md,
        "Written by `make bench` ({}). Absolute figures depend on the machine and its neighbours; \
         compare ratios, and rerun before trusting a change under 10 %.\n",
        inputs.context
    )?;

    writeln!(md, "## Budgets (perf/budgets.toml)\n")?;
    writeln!(
        md,
        "| budget | limit | measured | verdict | how |\n|---|---|---|---|---|"
    )?;
    let record = load_record(&inputs.results);
    let speech = load_speech(&inputs.results);
    for c in checks(&budgets, &runs, &forward, &record, &speech) {
        let (value, verdict, how) = match &c.measured {
            Some((v, how)) => (
                format!("{v:.2}"),
                if *v <= c.budget { "within" } else { "**over**" },
                how.clone(),
            ),
            None => (
                "—".to_string(),
                "not measured",
                if c.note.is_empty() {
                    "no run of this bench".to_string()
                } else {
                    c.note.to_string()
                },
            ),
        };
        writeln!(
            md,
            "| `{}` | {} | {value} | {verdict} | {how} |",
            c.key, c.budget
        )?;
    }

    if !forward.is_empty() {
        writeln!(
            md,
            "\n## Forwarding bench (crates/parloir-sfu/benches/forward.rs)\n"
        )?;
        writeln!(
            md,
            "SFU CPU per datagram out on the simulation harness (only the SFU's calls are timed).\n"
        )?;
        writeln!(
            md,
            "| participants | µs per datagram out | cost / smallest room | previous run |\n|---|---|---|---|"
        )?;
        for r in &forward {
            let prev = previous_forward
                .iter()
                .find(|p| p.participants == r.participants)
                .map_or("—".to_string(), |p| {
                    format!(
                        "{:.2} ({:+.0} %)",
                        p.sfu_cpu_us_per_datagram_out,
                        (r.sfu_cpu_us_per_datagram_out / p.sfu_cpu_us_per_datagram_out - 1.0)
                            * 100.0
                    )
                });
            writeln!(
                md,
                "| {} | {:.2} | {:.2} | {prev} |",
                r.participants, r.sfu_cpu_us_per_datagram_out, r.ratio_to_smallest
            )?;
        }
    }

    // CPU per forwarded packet against participants: the load test sweeps and the bench.
    let mut cpu_series: Vec<Series> = Vec::new();
    let mut servers: Vec<String> = runs.iter().map(|r| r.report.server.clone()).collect();
    // Parloir first, then the others by name.
    servers.sort_by_key(|s| (s != "parloir", s.clone()));
    servers.dedup();
    for server in &servers {
        let mut points: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.report.scenario == "meeting-150" && &r.report.server == server)
            .filter_map(|r| {
                r.report
                    .server_process
                    .cpu_us_per_forwarded_packet
                    .map(|v| (f64::from(r.report.participants), v))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points.dedup_by(|a, b| a.0 == b.0);
        if !points.is_empty() {
            cpu_series.push(Series {
                name: format!("{server}, meeting-150 load test (whole process)"),
                points,
            });
        }
    }
    if !forward.is_empty() {
        cpu_series.push(Series {
            name: "parloir SFU core, forwarding bench".into(),
            points: forward
                .iter()
                .map(|r| (r.participants, r.sfu_cpu_us_per_datagram_out))
                .collect(),
        });
    }
    if !cpu_series.is_empty() {
        let svg = plots.join("cpu-per-packet.svg");
        plot::cpu_per_packet(
            &svg,
            "CPU per forwarded packet against participants",
            &cpu_series,
        )?;
        writeln!(md, "\n## CPU per forwarded packet against participants\n")?;
        writeln!(
            md,
            "![CPU per forwarded packet](plots/cpu-per-packet.svg)\n"
        )?;
        writeln!(md, "| series | participants: µs |\n|---|---|")?;
        for s in &cpu_series {
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|(x, y)| format!("{x:.0}: {y:.2}"))
                .collect();
            writeln!(md, "| {} | {} |", s.name, pts.join(", "))?;
        }
    }

    for scenario in scenarios(&runs) {
        let mains: Vec<Report> = servers
            .iter()
            .filter_map(|s| main_run(&runs, &scenario, s).cloned())
            .collect();
        if mains.is_empty() {
            continue;
        }
        writeln!(md, "\n## Load test: {scenario}\n")?;
        writeln!(md, "{}\n", mains[0].scaling)?;
        writeln!(md, "{}", report::comparison(&mains))?;
        for m in &mains {
            if let Some(p) = main_run(&previous, &scenario, &m.server) {
                let ratio = |now: Option<f64>, then: Option<f64>| match (now, then) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                    _ => "—".into(),
                };
                writeln!(
                    md,
                    "Against the previous run, {}: CPU per forwarded packet {}, video latency p99 {}.\n",
                    m.server,
                    ratio(
                        m.server_process.cpu_us_per_forwarded_packet,
                        p.server_process.cpu_us_per_forwarded_packet
                    ),
                    ratio(Some(m.video_latency_ms.p99), Some(p.video_latency_ms.p99)),
                )?;
            }
        }
        let hist: Vec<(String, Vec<(f64, u64)>)> = mains
            .iter()
            .flat_map(|m| {
                [
                    (
                        format!("{} video", m.server),
                        m.latency_buckets.video.clone(),
                    ),
                    (
                        format!("{} audio", m.server),
                        m.latency_buckets.audio.clone(),
                    ),
                ]
            })
            .collect();
        let name = format!("latency-{scenario}.svg");
        plot::latency(
            &plots.join(&name),
            &format!("{scenario}: end-to-end latency"),
            &hist,
        )?;
        writeln!(md, "\n![{scenario} latency](plots/{name})")?;
    }
    std::fs::write(&inputs.out, md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_participant_is_the_growth_over_the_sweep() {
        // The meeting-150 sweep of 2026-12-05: 75, 80, 90 and 96 MiB at 4, 8, 12 and 18.
        let (slope, base) =
            growth(&[(4.0, 74.71), (8.0, 80.13), (12.0, 89.70), (18.0, 95.68)]).unwrap();
        assert!((slope - 1.55).abs() < 0.01, "{slope}");
        assert!((base - 68.7).abs() < 0.1, "{base}");
        let (slope, base) = growth(&[(2.0, 12.0), (6.0, 20.0)]).unwrap();
        assert!((slope - 2.0).abs() < 1e-9 && (base - 8.0).abs() < 1e-9);
        assert!(growth(&[(18.0, 95.0)]).is_none());
        assert!(
            growth(&[(4.0, 80.0), (18.0, 75.0)]).is_none(),
            "no growth to read"
        );
        assert!(growth(&[(18.0, 95.0), (18.0, 96.0)]).is_none());
        assert!(growth(&[]).is_none());
    }

    #[test]
    fn record_budgets_read_the_record_bench() {
        let record: Vec<serde_json::Value> = serde_json::from_str(
            r#"[
            {"what":"compositor","canvas":"720p","tiles":25,"frames_per_s":250.0},
            {"what":"room composite","cameras":"synthetic","participants":25,"canvas":"1280x720@30","cpu_cores":0.43},
            {"what":"room composite","cameras":"clips","participants":25,"canvas":"1280x720@30","cpu_cores":0.49}
            ]"#,
        )
        .unwrap();
        let cores = record_figure("record.composite_720p30_25_tiles_cpu_cores", &record).unwrap();
        assert_eq!(cores.0, 0.49);
        assert!(cores.1.contains("clips"));
        let ms = record_figure("record.composite_frame_ms_720p_25_tiles_cpu", &record).unwrap();
        assert_eq!(ms.0, 4.0);
        assert!(record_figure("record.av_drift_ms_after_2h", &record).is_none());
        assert!(record_figure("record.composite_720p30_25_tiles_cpu_cores", &[]).is_none());
    }

    #[test]
    fn speech_budgets_read_the_subtitle_latency_run_with_the_most_speakers() {
        let dir = std::env::temp_dir().join(format!("parloir-bench-speech-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("subtitle-latency.json"),
            r#"{"results":[
            {"speakers":1,"words":30,"arrived":30,"p50_s":0.77,"p95_s":1.67},
            {"speakers":4,"words":123,"arrived":123,"p50_s":1.2,"p95_s":2.45}
            ]}"#,
        )
        .unwrap();
        let speech = load_speech(&dir);
        assert!(
            load_runs(&dir).unwrap().is_empty(),
            "not taken for a load test report"
        );
        let p50 = speech_figure("speech.subtitle_latency_p50_ms_cpu", &speech).unwrap();
        assert!((p50.0 - 1200.0).abs() < 1e-6, "{p50:?}");
        assert!(p50.1.contains("4 speaking at once"), "{}", p50.1);
        let p95 = speech_figure("speech.subtitle_latency_p95_ms_cpu", &speech).unwrap();
        assert!((p95.0 - 2450.0).abs() < 1e-6, "{p95:?}");
        assert!(speech_figure("speech.subtitle_latency_p50_ms_gpu", &speech).is_none());
        assert!(speech_figure("speech.whisper_base_rtf_2_threads", &speech).is_none());
        // No run (no models installed) or a file that is not the script's: not measured.
        std::fs::write(dir.join("subtitle-latency.json"), "not json").unwrap();
        assert!(load_speech(&dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(speech_figure("speech.subtitle_latency_p50_ms_cpu", &load_speech(&dir)).is_none());
    }
}
