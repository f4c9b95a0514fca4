//! Each backend's send and receive calls on loopback, 1200-byte datagrams, batches of 1, 8,
//! 32 and 64, sends with GSO off and on. Only the call under test is timed: a send iteration
//! sends one batch (the receiver is drained untimed), a receive iteration takes one batch that
//! was queued untimed. criterion's throughput is datagrams per second.
//!
//! `cargo bench -p parloir-net --bench udp`. For CPU per datagram with sender and receiver on
//! their own cores, see `parloir net-bench` (perf/udp-throughput.sh).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use parloir_net::{Backend, EndpointConfig, UdpEndpoint, probe};

const SIZE: usize = 1200;
const BATCHES: [usize; 4] = [1, 8, 32, 64];

fn open(backend: Backend, gso: bool) -> UdpEndpoint {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("a literal address");
    UdpEndpoint::open(addr, EndpointConfig::new(backend).gso(gso)).expect("a loopback endpoint")
}

/// Receives until `n` datagrams arrived (or a second passed).
fn drain(rx: &mut UdpEndpoint, slots: &mut parloir_net::RecvBatch, n: usize) -> usize {
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while got < n && Instant::now() < deadline {
        if rx.recv(slots).unwrap_or(0) > 0 {
            got += slots.datagrams().count();
        }
    }
    got
}

fn benches(c: &mut Criterion) {
    let probe = probe();
    let payload = [0x5au8; SIZE];
    for backend in Backend::ALL {
        if !probe.works(backend) {
            eprintln!("udp bench: {backend} does not work here; skipped");
            continue;
        }
        for gso in [false, true] {
            let mut group = c.benchmark_group(format!(
                "send/{backend}/gso-{}",
                if gso { "on" } else { "off" }
            ));
            for batch_size in BATCHES {
                group.throughput(Throughput::Elements(batch_size as u64));
                let mut tx = open(backend, gso);
                let mut rx = open(Backend::Mmsg, false);
                let to = rx.local_addr();
                let mut batch = tx.send_batch(batch_size);
                let mut slots = rx.recv_batch(64);
                group.bench_function(BenchmarkId::from_parameter(batch_size), |b| {
                    b.iter_custom(|iters| {
                        let mut timed = Duration::ZERO;
                        for _ in 0..iters {
                            while batch.push(to, &payload) {}
                            let start = Instant::now();
                            let out = tx.send(&mut batch);
                            timed += start.elapsed();
                            drain(&mut rx, &mut slots, out.sent);
                        }
                        timed
                    })
                });
            }
            group.finish();
        }
        let mut group = c.benchmark_group(format!("recv/{backend}"));
        for batch_size in BATCHES {
            group.throughput(Throughput::Elements(batch_size as u64));
            let mut tx = open(Backend::Mmsg, true);
            let mut rx = open(backend, false);
            let to = rx.local_addr();
            let mut batch = tx.send_batch(batch_size);
            let mut slots = rx.recv_batch(batch_size);
            group.bench_function(BenchmarkId::from_parameter(batch_size), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        while batch.push(to, &payload) {}
                        tx.send(&mut batch);
                        let mut got = 0;
                        let deadline = Instant::now() + Duration::from_secs(1);
                        while got < batch_size && Instant::now() < deadline {
                            let start = Instant::now();
                            let n = rx.recv(&mut slots).unwrap_or(0);
                            timed += start.elapsed();
                            got += n;
                        }
                    }
                    timed
                })
            });
        }
        group.finish();
    }
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    benches(&mut c);
    c.final_summary();
}
