//! What one subscriber renegotiation costs the SFU against the m-lines of the connection.
//!
//! In a room of N participants each subscriber connection carries about 2N m-lines, and each
//! track published renegotiates every subscriber: the SFU writes an offer listing every m-line
//! and parses and applies the client's answer, which lists them all again. This bench measures
//! that server side (str0m's SDP writer, parser and answer handling) on connections of 20, 100
//! and 300 m-lines (rooms of 10, 50 and 150). Each iteration adds one send-only m-line to the
//! server's connection, as a published track does, and times: writing the offer (`apply` and
//! `to_sdp_string`), then parsing and applying the answer; the client's side, a second str0m
//! instance, is not timed.
//!
//! `cargo bench -p parloir-sfu --bench negotiate`; m-line counts from
//! `PARLOIR_BENCH_MLINES=20,100,300`. At the end a table of µs per renegotiation and per m-line,
//! and of the three parts.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

/// The server's time in one renegotiation: writing the offer, parsing the answer, applying it.
#[derive(Default, Clone, Copy)]
struct Spent {
    offer: Duration,
    parse: Duration,
    apply: Duration,
}

impl Spent {
    fn total(&self) -> Duration {
        self.offer + self.parse + self.apply
    }

    fn add(&mut self, other: Spent) {
        self.offer += other.offer;
        self.parse += other.parse;
        self.apply += other.apply;
    }
}

struct Pair {
    server: Rtc,
    client: Rtc,
    lines: usize,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        let mut server = Rtc::builder().set_ice_lite(true).build(now);
        let addr = "127.0.0.1:7882".parse().expect("a socket address");
        let host = Candidate::host(addr, "udp").expect("a host candidate");
        server.add_local_candidate(host);
        let client = Rtc::builder().build(now);
        Pair {
            server,
            client,
            lines: 0,
        }
    }

    /// One renegotiation adding a send-only m-line of `kind`; returns the server's time.
    fn renegotiate(&mut self, kind: MediaKind) -> Spent {
        let started = Instant::now();
        let mut api = self.server.sdp_api();
        let n = self.lines;
        api.add_media(
            kind,
            Direction::SendOnly,
            Some(format!("PA_{n}|TR_{n}")),
            Some(format!("TR_{n}")),
            None,
        );
        let (offer, pending) = api.apply().expect("an m-line to offer");
        let offer_sdp = offer.to_sdp_string();
        let offer_time = started.elapsed();

        let offer = str0m::change::SdpOffer::from_sdp_string(&offer_sdp).expect("offer parses");
        let answer = self
            .client
            .sdp_api()
            .accept_offer(offer)
            .expect("the offer is acceptable");
        let answer_sdp = answer.to_sdp_string();

        let started = Instant::now();
        let answer = SdpAnswer::from_sdp_string(&answer_sdp).expect("answer parses");
        let parsed = Instant::now();
        self.server
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("the answer is acceptable");
        let applied = Instant::now();
        self.lines += 1;
        Spent {
            offer: offer_time,
            parse: parsed - started,
            apply: applied - parsed,
        }
    }

    fn kind(&self) -> MediaKind {
        if self.lines.is_multiple_of(2) {
            MediaKind::Audio
        } else {
            MediaKind::Video
        }
    }
}

fn main() {
    let counts: Vec<usize> = std::env::var("PARLOIR_BENCH_MLINES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![20, 100, 300]);
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let rows: RefCell<Vec<(usize, Spent, u64)>> = RefCell::new(Vec::new());
    let mut group = c.benchmark_group("negotiate");
    for &lines in &counts {
        let mut pair = Pair::new();
        while pair.lines < lines {
            let kind = pair.kind();
            pair.renegotiate(kind);
        }
        group.throughput(Throughput::Elements(lines as u64));
        let mut total = (Spent::default(), 0u64);
        group.bench_function(BenchmarkId::new("mlines", lines), |b| {
            b.iter_custom(|iters| {
                // The connection grows by one m-line per iteration; start each sample from
                // about `lines` again so that the figure stays that of its size.
                if pair.lines > lines + lines / 4 {
                    pair = Pair::new();
                    while pair.lines < lines {
                        let kind = pair.kind();
                        pair.renegotiate(kind);
                    }
                }
                let mut spent = Spent::default();
                for _ in 0..iters {
                    let kind = pair.kind();
                    spent.add(pair.renegotiate(kind));
                }
                total.0.add(spent);
                total.1 += iters;
                spent.total()
            })
        });
        rows.borrow_mut().push((lines, total.0, total.1));
    }
    group.finish();
    c.final_summary();
    println!(
        "| m-lines | µs per renegotiation (server side) | µs per m-line | writing the offer | parsing the answer | applying it |\n|---|---|---|---|---|---|"
    );
    for (lines, spent, iters) in rows.into_inner() {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / iters.max(1) as f64;
        let all = us(spent.total());
        println!(
            "| {lines} | {all:.0} | {:.2} | {:.0} | {:.0} | {:.0} |",
            all / lines as f64,
            us(spent.offer),
            us(spent.parse),
            us(spent.apply)
        );
    }
}
