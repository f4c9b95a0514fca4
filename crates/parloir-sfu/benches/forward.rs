//! CPU per forwarded packet against room size, on the simulation harness: N participants each
//! publish Opus-sized audio (50 frames/s) and 3-packet video frames (10/s) and receive everyone
//! else; the SFU's own calls are timed (the simulated clients' crypto is not), and the time is
//! divided by the datagrams the SFU sent.
//!
//! `cargo bench -p parloir-sfu --bench forward [-- 2 10 25 50]`; prints a table and, with
//! `PARLOIR_BENCH_OUT=FILE`, writes it as Markdown.

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::fmt::Write as _;
use std::time::Duration;

use harness::Sim;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![2, 5, 10, 25]
    } else {
        sizes
    };
    let mut table = String::from(
        "| participants | datagrams in | datagrams out | SFU CPU per datagram out (µs) | cost / cost at the smallest room |\n|---|---|---|---|---|\n",
    );
    let mut first = None;
    for n in sizes {
        let mut sim = Sim::new(42, 0.0);
        for i in 0..n {
            sim.join(&format!("p{i}"));
        }
        for i in 0..n {
            sim.publish(i);
        }
        // Warm up: ICE, DTLS, negotiation, first keyframes.
        sim.run_for(Duration::from_secs(2));
        let before = sim.sfu.stats();
        sim.sfu_time = Duration::ZERO;
        sim.run_for(Duration::from_secs(3));
        let after = sim.sfu.stats();
        let (in_, out) = (
            after.packets_in - before.packets_in,
            after.packets_out - before.packets_out,
        );
        let per = sim.sfu_time.as_secs_f64() * 1e6 / out.max(1) as f64;
        let base = *first.get_or_insert(per);
        let _ = writeln!(
            table,
            "| {n} | {in_} | {out} | {per:.2} | {:.2} |",
            per / base
        );
        eprintln!(
            "{n:>4} participants: {in_} in, {out} out, {per:.2} µs of SFU CPU per datagram out"
        );
    }
    println!("{table}");
    if let Ok(path) = std::env::var("PARLOIR_BENCH_OUT") {
        std::fs::write(&path, &table).expect("the bench output file is writable");
    }
}
