//! Loopback throughput of one backend: a sender thread and a receiver thread, each pinned to
//! its own core when the machine has two, moving fixed-size datagrams as fast as they can for
//! a while. Each thread's own CPU time gives CPU per datagram and datagrams per second per
//! core, for sending and for receiving separately.
//!
//! On loopback the kernel delivers a datagram into the receiver's queue inside the sender's
//! system call, so the send figures include the kernel's receive path up to the socket queue;
//! the receive figures are what is left: taking datagrams out of the queue.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::topology::{allowed_cpus, pin_current_thread, thread_cpu_time};
use crate::{Backend, EndpointConfig, UdpEndpoint};

/// One measurement's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub backend: Backend,
    /// Datagrams per send call and receive slots per receive call.
    pub batch: usize,
    pub gso: bool,
    pub size: usize,
    pub duration: Duration,
}

/// What one measurement found.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub settings: Settings,
    pub sent: u64,
    pub received: u64,
    pub send_calls: u64,
    pub send_cpu: Duration,
    pub recv_cpu: Duration,
    pub wall: Duration,
}

impl Throughput {
    /// Nanoseconds of the sender's CPU per datagram sent.
    pub fn send_ns(&self) -> f64 {
        self.send_cpu.as_nanos() as f64 / self.sent.max(1) as f64
    }

    /// Nanoseconds of the receiver's CPU per datagram received.
    pub fn recv_ns(&self) -> f64 {
        self.recv_cpu.as_nanos() as f64 / self.received.max(1) as f64
    }

    /// Datagrams one core sends per second at this cost.
    pub fn send_per_core(&self) -> f64 {
        1e9 / self.send_ns().max(f64::MIN_POSITIVE)
    }

    pub fn recv_per_core(&self) -> f64 {
        1e9 / self.recv_ns().max(f64::MIN_POSITIVE)
    }
}

/// Runs one measurement on loopback.
pub fn measure(settings: Settings) -> io::Result<Throughput> {
    let localhost: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    let open = |gso| {
        UdpEndpoint::open(localhost, EndpointConfig::new(settings.backend).gso(gso))
            .map_err(io::Error::other)
    };
    let mut tx = open(settings.gso)?;
    let mut rx = open(false)?;
    let destination = rx.local_addr();
    let cpus = allowed_cpus();
    let (tx_cpu, rx_cpu) = match cpus.as_slice() {
        [a, b, ..] => (Some(*a), Some(*b)),
        _ => (None, None),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let stop = stop.clone();
        let batch = settings.batch;
        std::thread::Builder::new()
            .name("udp-bench-rx".into())
            .spawn(move || -> io::Result<(u64, Duration)> {
                if let Some(c) = rx_cpu {
                    let _ = pin_current_thread(&[c]);
                }
                let mut poll = mio::Poll::new()?;
                rx.register(poll.registry(), mio::Token(0))?;
                let mut events = mio::Events::with_capacity(4);
                let mut slots = rx.recv_batch(batch);
                let mut received = 0u64;
                let start = thread_cpu_time();
                let mut idle_since: Option<Instant> = None;
                loop {
                    let n = rx.recv(&mut slots)?;
                    if n > 0 {
                        received += slots.datagrams().count() as u64;
                        idle_since = None;
                        continue;
                    }
                    if stop.load(Ordering::Relaxed) {
                        // The sender is done: drain what is queued, then stop.
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(50) {
                            break;
                        }
                    }
                    if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(10)))
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        return Err(e);
                    }
                }
                Ok((received, thread_cpu_time() - start))
            })?
    };
    if let Some(c) = tx_cpu {
        let _ = pin_current_thread(&[c]);
    }
    let payload = vec![0x5a; settings.size];
    let mut batch = tx.send_batch(settings.batch);
    let (mut sent, mut send_calls) = (0u64, 0u64);
    let wall_start = Instant::now();
    let cpu_start = thread_cpu_time();
    while wall_start.elapsed() < settings.duration {
        while batch.push(destination, &payload) {}
        let out = tx.send(&mut batch);
        sent += out.sent as u64;
        send_calls += out.calls as u64;
    }
    let send_cpu = thread_cpu_time() - cpu_start;
    let wall = wall_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    // Unpin this thread again for whatever the caller does next.
    let _ = pin_current_thread(&cpus);
    let (received, recv_cpu) = receiver
        .join()
        .map_err(|_| io::Error::other("the receiver thread panicked"))??;
    Ok(Throughput {
        settings,
        sent,
        received,
        send_calls,
        send_cpu,
        recv_cpu,
        wall,
    })
}
