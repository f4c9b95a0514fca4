//! CPU per forwarded packet against room size, on the simulation harness: N participants each
//! publish Opus-sized audio (50 frames/s) and 3-packet video frames (10/s) and receive everyone
//! else; only the SFU's own calls are timed (the simulated clients' crypto is not).
//!
//! A criterion bench: each iteration is 100 ms of simulated meeting, its time is the SFU's time in
//! that meeting, and its throughput the datagrams the SFU sent, so criterion's "thrpt" is datagrams
//! out per second of SFU CPU and it compares each run with the previous one. At the end a table
//! of µs per datagram out, and the cost against the smallest room, is printed; with
//! `PARLOIR_BENCH_OUT=FILE` it is also written as JSON.
//!
//! `cargo bench -p parloir-sfu --bench forward`; room sizes from `PARLOIR_BENCH_SIZES=2,10,25,50`;
//! `PARLOIR_BENCH_BWE=0` runs without subscriber bandwidth estimation (its starting estimate in
//! kbit/s otherwise, 1000 by default). `PARLOIR_BENCH_RECYCLE=0` drops each datagram the SFU
//! sends instead of handing its buffer back to str0m (patch 25), as the media worker does.
//!
//! With `PARLOIR_BENCH_STEPS=N` it skips criterion and runs exactly N steps per room after the
//! warm-up, printing the datagrams and bytes out (and the SFU's time, in all and per datagram
//! out, for a quick look; on stderr, a line `participants N: measuring S steps` as the steps
//! begin, for a profiler to attach at):
//! fixed work for instruction counts under callgrind (perf/callgrind.sh), which are repeatable
//! where wall time is not, and the longest single SFU call of those steps (what the media worker
//! would hold its datagrams for). Then one more participant joins and publishes into the warm
//! room: the longest single SFU call from its publish to a second later, and the most subscriber
//! offers one call wrote.
//!
//! `PARLOIR_BENCH_CALLGRIND=1` (steps mode, under `valgrind --tool=callgrind
//! --instr-atstart=no`) has callgrind count the measured steps only: instrumentation starts two
//! steps before them (to warm its cache model), its counts are zeroed as they begin, and it
//! stops at their end. The simulation's randomness and the engine's map order are seeded
//! (`parloir_sfu::ids::repeatable_maps`), so such counts repeat closely from run to run (within
//! 1 % at 10 and 50 participants).
//!
//! `PARLOIR_BENCH_SIMULCAST=1` publishes every camera as three simulcast layers (1, 3 and 8
//! packets a frame) and has each participant show the others as the load generator's
//! meeting-150 does: one large tile (the top layer), 25 small ones (the lowest), the rest
//! disabled. Each frame of each layer then goes through the per-subscriber layer choice, so
//! this is the forwarding cost with layer choice in it.
//!
//! `PARLOIR_BENCH_SPEAKERS=K` gives every microphone its level (RFC 6464): K participants speak,
//! the others are silent, so the SFU's loudest-3 gating forwards what a meeting's audio is (the
//! silent microphones still send 50 frames a second, as without DTX). With simulcast, every
//! participant then shows the first speaker in its large tile (the first speaker shows the
//! next participant), as a meeting's speaker view does, and publishers pause the layers nobody
//! shows when the SFU says so (dynacast), as livekit-client does: this is the meeting's shape.
//!
//! `PARLOIR_BENCH_PUBLISH_GAP_MS=G` has the participants publish G ms of simulated time apart
//! instead of all at once, as in a meeting people join over time: each subscriber's outgoing
//! streams are then made in many offers, at different instants, not one or two.
//!
//! `PARLOIR_BENCH_SINK=1` (steps mode, with `PARLOIR_BENCH_BWE=0`) drops what the SFU sends to
//! the subscribing connections unread while measuring: the SFU's cost without the simulated
//! receivers' work passing through the caches between its calls.
//!
//! `PARLOIR_BENCH_WORKERS=W` (steps mode) spreads the room over W media workers, participant i
//! on worker i mod W (a room spanning workers, frames relayed between them), and prints each
//! worker's time per datagram the whole room sent: the busiest worker's is what the room costs
//! the core it needs most, the sum what it costs in all.

#[path = "../tests/harness/mod.rs"]
mod harness;

/// The server's allocator (`crates/parloir/src/main.rs`), so that the SFU's allocations cost
/// here what they cost there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::cell::RefCell;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use harness::Sim;
use parloir_sfu::{Command, proto};

/// Valgrind's client requests (valgrind.h's, amd64 only): a magic instruction sequence that
/// valgrind's tools answer and that does nothing on the CPU itself (`rdi` rotated by 128
/// bits in all, `rbx` exchanged with itself).
mod valgrind {
    /// callgrind.h's requests: `VG_USERREQ_TOOL_BASE('C', 'T')` and on.
    const CALLGRIND: u64 = (b'C' as u64) << 24 | (b'T' as u64) << 16;
    pub const ZERO_STATS: u64 = CALLGRIND + 1;
    pub const START_INSTRUMENTATION: u64 = CALLGRIND + 4;
    pub const STOP_INSTRUMENTATION: u64 = CALLGRIND + 5;

    /// Makes the request `code` (with no arguments) of the valgrind tool the bench runs
    /// under, if any.
    pub fn request(code: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let args: [u64; 6] = [code, 0, 0, 0, 0, 0];
            let mut result: u64 = 0;
            // SAFETY: the sequence leaves every register as it found it but `rdx` (declared)
            // and the flags (which `asm!` assumes clobbered); valgrind reads `args` through
            // `rax` and writes its answer to `rdx`.
            #[allow(unsafe_code)]
            unsafe {
                std::arch::asm!(
                    "rol rdi, 3",
                    "rol rdi, 13",
                    "rol rdi, 61",
                    "rol rdi, 51",
                    "xchg rbx, rbx",
                    in("rax") args.as_ptr(),
                    inout("rdx") result,
                    options(nostack),
                );
            }
            let _ = result;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = code;
    }
}

/// Simulated meeting per iteration.
const STEP: Duration = Duration::from_millis(100);

struct Row {
    participants: usize,
    sfu_time: Duration,
    datagrams_in: u64,
    datagrams_out: u64,
}

fn room(n: usize) -> Sim {
    // PARLOIR_BENCH_BWE=0 turns subscriber bandwidth estimation off, to measure its cost.
    let bwe = std::env::var("PARLOIR_BENCH_BWE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let workers: u16 = std::env::var("PARLOIR_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut sim = if workers > 1 {
        Sim::with_workers_bwe(42, workers, bwe)
    } else {
        Sim::with_options(42, 0.0, 3, bwe)
    };
    // PARLOIR_BENCH_SLOTS=K spreads the clients' sending over K phases of each 20 ms (1, the
    // default: all at the same instant).
    sim.media_slots = std::env::var("PARLOIR_BENCH_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // PARLOIR_BENCH_RECYCLE=0 drops sent datagrams instead of recycling their buffers.
    sim.recycle = std::env::var("PARLOIR_BENCH_RECYCLE").map_or(true, |v| v != "0");
    for i in 0..n {
        sim.next_worker = i as u16 % sim.workers();
        sim.join(&format!("p{i}"));
    }
    let simulcast = std::env::var("PARLOIR_BENCH_SIMULCAST").is_ok_and(|v| v == "1");
    // PARLOIR_BENCH_SPEAKERS=K: levels on every microphone, the first K participants speaking.
    let speakers: Option<usize> = std::env::var("PARLOIR_BENCH_SPEAKERS")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Some(k) = speakers {
        for (i, c) in sim.clients.iter_mut().enumerate() {
            c.audio_level = Some(if i < k { -20 } else { -127 });
        }
    }
    if simulcast {
        // About the ratio of a 720p camera's layers (150, 500 and 1 700 kbit/s): 1, 3 and 8
        // packets a frame.
        sim.layer_bytes = [1000, 3000, 9000];
        for c in &mut sim.clients {
            c.simulcast = true;
            // In the meeting's shape, publishers pause the layers nobody shows.
            c.dynacast = speakers.is_some();
        }
    }
    // PARLOIR_BENCH_PUBLISH_GAP_MS=G: G ms of simulated time between one participant's
    // publish and the next, as in a meeting people join one after another (0, the default:
    // all publish at once, so each subscriber's streams are made in one or two offers).
    let gap = Duration::from_millis(
        std::env::var("PARLOIR_BENCH_PUBLISH_GAP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    for i in 0..n {
        sim.publish(i);
        if !gap.is_zero() {
            sim.run_for(gap);
        }
    }
    // Warm up: ICE, DTLS, negotiation, first key frames.
    sim.run_for(Duration::from_secs(2));
    if simulcast {
        show_tiles(&mut sim, n, speakers.filter(|&k| k > 0).map(|_| 0));
        // Layer switches settle on their key frames.
        sim.run_for(Duration::from_secs(2));
    }
    sim
}

/// What each participant's screen shows, as the load generator's meeting-150 does (LiveKit's
/// benchmark shape): one camera in a large tile (1280x720, the top layer), the 25 after its own
/// in join order in small tiles (320x180, the lowest), and the others not at all (adaptive
/// stream disables them). The large tile shows the `speaker`, or for the speaker itself and
/// without one, the next camera after its own.
fn show_tiles(sim: &mut Sim, n: usize, speaker: Option<usize>) {
    let cams: Vec<String> = (0..n)
        .map(|j| sim.track_sid(&format!("p{j}"), "cam"))
        .collect();
    for viewer in 0..n {
        let session = sim.clients[viewer].session;
        let large = speaker.filter(|&s| s != viewer).unwrap_or((viewer + 1) % n);
        let mut small = 0;
        for step in 1..n {
            let publisher = (viewer + step) % n;
            let (width, height, disabled) = if publisher == large {
                (1280, 720, false)
            } else if small < 25 {
                small += 1;
                (320, 180, false)
            } else {
                (0, 0, true)
            };
            sim.commands.push(Command::UpdateTrackSettings {
                session,
                settings: proto::UpdateTrackSettings {
                    track_sids: vec![cams[publisher].clone()],
                    disabled,
                    width,
                    height,
                    ..Default::default()
                },
            });
        }
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("PARLOIR_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![2, 10, 25, 50]);
    if let Some(steps) = std::env::var("PARLOIR_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        for &n in &sizes {
            let started = std::time::Instant::now();
            let mut sim = room(n);
            // Joining, negotiating and the first seconds of media: the SFU's share, and the
            // whole (the simulated clients included).
            let warmup_wall = started.elapsed().as_secs_f64();
            let warmup_sfu = sim.sfu_time.as_secs_f64();
            let offers = sim.clients.iter().map(|c| c.offers.len()).sum::<usize>();
            let totals = |sim: &mut Sim| {
                (0..sim.workers()).map(|w| sim.sfu_of(w).stats()).fold(
                    (0, 0, 0, 0),
                    |(o, t, i, b), s| {
                        (
                            o + s.packets_out,
                            t + s.rtc_timeouts,
                            i + s.packets_in,
                            b + s.bytes_out,
                        )
                    },
                )
            };
            // PARLOIR_BENCH_CALLGRIND=1 (under `valgrind --tool=callgrind --instr-atstart=no`,
            // as perf/callgrind.sh runs it): callgrind starts counting here, two steps before
            // the measured ones so that its cache model and translations are warm, and counts
            // the measured steps only. The joins and the warm-up run uninstrumented, several
            // times faster than instrumented, which makes 150 participants possible.
            let callgrind = std::env::var("PARLOIR_BENCH_CALLGRIND").is_ok_and(|v| v == "1");
            if callgrind {
                valgrind::request(valgrind::START_INSTRUMENTATION);
                for _ in 0..2 {
                    sim.run_for(STEP);
                }
                valgrind::request(valgrind::ZERO_STATS);
            }
            let before = totals(&mut sim);
            // PARLOIR_BENCH_SINK=1: while measuring, the datagrams the SFU sends to the
            // subscribing connections are dropped unread, so that the simulated clients' own
            // work (decrypting and depacketizing every datagram, their state for every stream)
            // does not pass through the caches between the SFU's calls. The SFU sends the same
            // media; it no longer receives the subscribers' reports and feedback (run it with
            // PARLOIR_BENCH_BWE=0, since the estimator lives on that feedback).
            let sink = std::env::var("PARLOIR_BENCH_SINK").is_ok_and(|v| v == "1");
            if sink {
                let subscribers: Vec<_> = sim
                    .clients
                    .iter()
                    .filter(|c| !c.single)
                    .map(|c| c.subscriber_addr)
                    .collect();
                sim.net.sink.extend(subscribers);
            }
            sim.sfu_time = Duration::ZERO;
            sim.feedback_time = Duration::ZERO;
            sim.sfu_longest = Duration::ZERO;
            sim.worker_time.iter_mut().for_each(|t| *t = Duration::ZERO);
            // For a profiler attached to the process from here on (`perf record -p`), so
            // that its samples leave the warm-up out.
            eprintln!("participants {n}: measuring {steps} steps");
            for _ in 0..steps {
                sim.run_for(STEP);
            }
            // The profiler stops here: the late join below is not the steady state.
            if callgrind {
                valgrind::request(valgrind::STOP_INSTRUMENTATION);
            }
            eprintln!("participants {n}: measured");
            let after = totals(&mut sim);
            sim.net.sink.clear();
            let out = after.0 - before.0;
            let timeouts = after.1 - before.1;
            let datagrams_in = after.2 - before.2;
            let bytes_out = after.3 - before.3;
            let sfu_ms = sim.sfu_time.as_secs_f64() * 1e3;
            if sim.workers() > 1 {
                let per_worker: Vec<String> = sim
                    .worker_time
                    .iter()
                    .map(|t| format!("{:.2}", t.as_secs_f64() * 1e6 / out.max(1) as f64))
                    .collect();
                let timeouts: Vec<String> = (0..sim.workers())
                    .map(|w| sim.sfu_of(w).stats().rtc_timeouts.to_string())
                    .collect();
                println!(
                    "participants {n} workers {} us_per_datagram_out_by_worker {} relayed {} rtc_timeouts_by_worker {}",
                    sim.workers(),
                    per_worker.join(","),
                    sim.relayed,
                    timeouts.join(",")
                );
            }
            let us = sim.sfu_time.as_secs_f64() * 1e6 / out.max(1) as f64;
            let feedback_us = sim.feedback_time.as_secs_f64() * 1e6 / out.max(1) as f64;
            // The video frames the subscribers got in each layer, from the join on: with
            // simulcast, what the layer choice gave them.
            let mut layers = [0u64; 3];
            for f in sim
                .clients
                .iter()
                .flat_map(|c| c.video_rx.values().flatten())
            {
                layers[usize::from(f.layer.min(2))] += 1;
            }
            println!(
                "participants {n} video_frames_received_by_layer {}/{}/{}",
                layers[0], layers[1], layers[2]
            );
            let steady_longest = sim.sfu_longest.as_secs_f64() * 1e3;
            let steady_kind = sim.sfu_longest_kind;
            let steady_due = sim.sfu_longest_peer_timeouts;
            sim.join("late");
            sim.run_for(Duration::from_millis(500));
            sim.sfu_longest = Duration::ZERO;
            sim.offers_per_call = 0;
            sim.publish(n);
            sim.run_for(Duration::from_secs(1));
            let longest = sim.sfu_longest.as_secs_f64() * 1e3;
            let per_call = sim.offers_per_call;
            println!(
                "participants {n} steps {steps} datagrams_out {out} datagrams_in {datagrams_in} rtc_timeouts {timeouts} us_per_datagram_out {us:.2} of_which_subscriber_feedback {feedback_us:.2} sfu_ms {sfu_ms:.1} bytes_out {bytes_out} warmup_s {warmup_wall:.1} warmup_sfu_s {warmup_sfu:.2} subscriber_offers {offers} longest_call_ms {steady_longest:.1} longest_call {steady_kind} peer_timeouts_in_it {steady_due} late_publish_longest_call_ms {longest:.1} late_publish_offers_per_call {per_call}"
            );
        }
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let rows: RefCell<Vec<Row>> = RefCell::new(Vec::new());
    let mut group = c.benchmark_group("forward");
    for &n in &sizes {
        let mut sim = room(n);
        // Calibrate the throughput: datagrams out per step.
        let before = sim.sfu.stats();
        sim.run_for(Duration::from_secs(1));
        let per_step =
            (sim.sfu.stats().packets_out - before.packets_out) * STEP.as_millis() as u64 / 1000;
        group.throughput(Throughput::Elements(per_step.max(1)));
        let mut row = Row {
            participants: n,
            sfu_time: Duration::ZERO,
            datagrams_in: 0,
            datagrams_out: 0,
        };
        group.bench_function(BenchmarkId::new("room", n), |b| {
            b.iter_custom(|iters| {
                let before = sim.sfu.stats();
                sim.sfu_time = Duration::ZERO;
                for _ in 0..iters {
                    sim.run_for(STEP);
                }
                let after = sim.sfu.stats();
                row.sfu_time += sim.sfu_time;
                row.datagrams_in += after.packets_in - before.packets_in;
                row.datagrams_out += after.packets_out - before.packets_out;
                sim.sfu_time
            })
        });
        rows.borrow_mut().push(row);
    }
    group.finish();
    c.final_summary();

    let rows = rows.into_inner();
    let per = |r: &Row| r.sfu_time.as_secs_f64() * 1e6 / r.datagrams_out.max(1) as f64;
    let base = rows.first().map(per).unwrap_or(1.0);
    println!(
        "| participants | datagrams in | datagrams out | SFU CPU per datagram out (µs) | cost / cost at the smallest room |\n|---|---|---|---|---|"
    );
    let mut json = Vec::new();
    for r in &rows {
        let us = per(r);
        println!(
            "| {} | {} | {} | {us:.2} | {:.2} |",
            r.participants,
            r.datagrams_in,
            r.datagrams_out,
            us / base
        );
        json.push(serde_json::json!({
            "participants": r.participants,
            "datagrams_in": r.datagrams_in,
            "datagrams_out": r.datagrams_out,
            "sfu_cpu_us_per_datagram_out": us,
            "ratio_to_smallest": us / base,
        }));
    }
    if let Ok(path) = std::env::var("PARLOIR_BENCH_OUT") {
        let text = serde_json::to_string_pretty(&json).expect("plain values serialise");
        std::fs::write(&path, text).expect("the bench output file is writable");
    }
}
