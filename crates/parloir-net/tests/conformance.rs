//! The same behaviour from every backend, over loopback. A backend this kernel (or a
//! container's seccomp policy) refuses is skipped with a message; the others must pass.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use parloir_net::{
    Backend, Ecn, EndpointConfig, MAX_DATAGRAM, RecvBatch, SendBatch, UdpEndpoint, probe,
};

/// Runs `test` on every backend that works here.
fn each_backend(test: impl Fn(Backend)) {
    let probe = probe();
    let mut ran = 0;
    for (backend, result) in &probe.backends {
        match result {
            Ok(()) => {
                test(*backend);
                ran += 1;
            }
            Err(why) => eprintln!("skipping {backend}: {why}"),
        }
    }
    assert!(
        probe.works(Backend::Basic),
        "the basic backend always works"
    );
    assert!(ran >= 1);
}

fn open(
    backend: Backend,
    addr: &str,
    config: impl Fn(EndpointConfig) -> EndpointConfig,
) -> UdpEndpoint {
    UdpEndpoint::open(addr.parse().unwrap(), config(EndpointConfig::new(backend)))
        .unwrap_or_else(|e| panic!("{backend} on {addr}: {e}"))
}

/// A received datagram, copied out of the batch.
#[derive(Debug)]
struct Got {
    source: SocketAddr,
    destination: Option<IpAddr>,
    ecn: Ecn,
    timestamp: Option<SystemTime>,
    stride: usize,
    truncated: bool,
    contents: Vec<u8>,
}

/// Receives until `n` datagrams (GRO trains split, truncated ones kept) or two seconds.
fn receive(endpoint: &mut UdpEndpoint, batch: &mut RecvBatch, n: usize) -> Vec<Got> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.len() < n && Instant::now() < deadline {
        if endpoint.recv(batch).unwrap() == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        for (meta, contents) in batch.slots() {
            let stride = meta.stride.max(1);
            let pieces: Vec<&[u8]> = if meta.truncated || contents.is_empty() {
                vec![contents]
            } else {
                contents.chunks(stride).collect()
            };
            for piece in pieces {
                got.push(Got {
                    source: meta.source,
                    destination: meta.destination,
                    ecn: meta.ecn,
                    timestamp: meta.timestamp,
                    stride: meta.stride,
                    truncated: meta.truncated,
                    contents: piece.to_vec(),
                });
            }
        }
    }
    got
}

fn numbered(i: usize, len: usize) -> Vec<u8> {
    let mut d = vec![(i % 251) as u8; len];
    d[..4].copy_from_slice(&(i as u32).to_be_bytes());
    d
}

fn number(d: &[u8]) -> u32 {
    u32::from_be_bytes(d[..4].try_into().unwrap())
}

#[test]
fn datagrams_arrive_in_order_with_both_addresses() {
    each_backend(|backend| {
        for (ip, gso) in [
            ("127.0.0.1:0", false),
            ("127.0.0.1:0", true),
            ("[::1]:0", true),
        ] {
            let mut a = open(backend, ip, |c| c.gso(gso));
            let mut b = open(backend, ip, |c| c);
            let mut batch = a.send_batch(64);
            let mut rx = b.recv_batch(16);
            let total = 300;
            let mut sent = 0;
            for i in 0..total {
                // Sizes vary so that some GSO groups form and some do not.
                let len = if i % 7 < 4 { 1200 } else { 300 + i };
                if !batch.push(b.local_addr(), &numbered(i, len)) {
                    sent += a.send(&mut batch).sent;
                    assert!(batch.push(b.local_addr(), &numbered(i, len)));
                }
            }
            sent += a.send(&mut batch).sent;
            assert_eq!(sent, total, "{backend} {ip}: every datagram sent");
            let got = receive(&mut b, &mut rx, total);
            assert_eq!(got.len(), total, "{backend} {ip} gso={gso}");
            for (i, g) in got.iter().enumerate() {
                assert_eq!(number(&g.contents), i as u32, "{backend}: in order");
                let len = if i % 7 < 4 { 1200 } else { 300 + i };
                assert_eq!(g.contents, numbered(i, len), "{backend}: intact");
                assert_eq!(g.source, a.local_addr(), "{backend}: source");
                assert_eq!(
                    g.destination,
                    Some(b.local_addr().ip()),
                    "{backend}: destination"
                );
                assert!(!g.truncated);
            }
        }
    });
}

#[test]
fn gso_groups_equal_sizes_into_fewer_sends() {
    each_backend(|backend| {
        let mut a = open(backend, "127.0.0.1:0", |c| c.gso(true));
        let mut b = open(backend, "127.0.0.1:0", |c| c);
        let mut batch = a.send_batch(64);
        for i in 0..20 {
            assert!(batch.push(b.local_addr(), &numbered(i, 1200)));
        }
        let out = a.send(&mut batch);
        assert_eq!((out.sent, out.dropped), (20, 0), "{backend}");
        match backend {
            // One call, one message of 20 segments.
            Backend::Mmsg | Backend::IoUring if a.gso() => assert_eq!(out.calls, 1, "{backend}"),
            _ => assert_eq!(out.calls, 20, "{backend}: one call per datagram"),
        }
        // Without GRO the receiver's kernel splits the train again.
        let mut rx = b.recv_batch(8);
        let got = receive(&mut b, &mut rx, 20);
        assert_eq!(got.len(), 20);
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.contents, numbered(i, 1200));
            assert_eq!(g.stride, 1200);
        }
    });
}

#[test]
fn gro_trains_are_split_at_their_segment_size() {
    each_backend(|backend| {
        let mut a = open(backend, "127.0.0.1:0", |c| c.gso(true));
        let mut b = open(backend, "127.0.0.1:0", |c| c.gro(true));
        if !a.gso() || !b.gro() {
            eprintln!("{backend}: no GSO/GRO on this kernel; nothing to split");
            return;
        }
        let mut batch = a.send_batch(64);
        for i in 0..10 {
            assert!(batch.push(b.local_addr(), &numbered(i, 1000)));
        }
        batch.push(b.local_addr(), &numbered(10, 600));
        assert_eq!(a.send(&mut batch).sent, 11);
        let mut rx = b.recv_batch(4);
        let got = receive(&mut b, &mut rx, 11);
        assert_eq!(got.len(), 11, "{backend}");
        assert!(
            got.iter().any(|g| g.stride == 1000),
            "{backend}: the kernel coalesced the train"
        );
        for (i, g) in got.iter().take(10).enumerate() {
            assert_eq!(g.contents, numbered(i, 1000), "{backend}");
        }
        assert_eq!(
            got[10].contents,
            numbered(10, 600),
            "{backend}: the short tail"
        );
        // The batch API splits the same way.
        assert!(rx.datagrams().all(|(_, d)| d.len() <= 1000));
    });
}

#[test]
fn truncated_zero_length_and_oversized_datagrams() {
    each_backend(|backend| {
        let mut b = open(backend, "127.0.0.1:0", |c| c);
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.send_to(&[9; 3000], b.local_addr()).unwrap();
        raw.send_to(&[], b.local_addr()).unwrap();
        raw.send_to(&[7; 100], b.local_addr()).unwrap();
        let mut rx = b.recv_batch(8);
        let got = receive(&mut b, &mut rx, 3);
        assert_eq!(got.len(), 3, "{backend}");
        assert!(
            got[0].truncated,
            "{backend}: a 3000-byte datagram in a 2048 slot"
        );
        assert_eq!(got[0].contents.len(), MAX_DATAGRAM);
        assert!(
            !got[1].truncated && got[1].contents.is_empty(),
            "{backend}: zero-length"
        );
        assert_eq!(
            got[2].contents, [7; 100],
            "{backend}: the next one is whole"
        );
        // The batch API leaves the truncated one out.
        let mut a = open(backend, "127.0.0.1:0", |c| c);
        let mut batch = a.send_batch(4);
        assert!(
            !batch.push(b.local_addr(), &[0; MAX_DATAGRAM + 1]),
            "oversized refused"
        );
        assert!(batch.push(b.local_addr(), &[]));
        assert_eq!(a.send(&mut batch).sent, 1, "{backend}: a zero-length send");
        let got = receive(&mut b, &mut rx, 1);
        assert!(got[0].contents.is_empty());
        // With GRO slots a maximal datagram fits whole.
        let mut big = open(backend, "127.0.0.1:0", |c| c.gro(true));
        if big.gro() {
            raw.send_to(&vec![5; 60_000], big.local_addr()).unwrap();
            let mut rx = big.recv_batch(2);
            let got = receive(&mut big, &mut rx, 1);
            assert_eq!(got[0].contents.len(), 60_000, "{backend}");
            assert!(!got[0].truncated);
        }
    });
}

#[test]
fn ecn_and_timestamps_are_reported() {
    each_backend(|backend| {
        for ip in ["127.0.0.1:0", "[::1]:0"] {
            let mut b = open(backend, ip, |c| c.timestamps(true));
            let raw = socket2::Socket::new(
                socket2::Domain::for_address(b.local_addr()),
                socket2::Type::DGRAM,
                None,
            )
            .unwrap();
            if b.local_addr().is_ipv4() {
                raw.set_tos_v4(0b10).unwrap(); // ECT(0)
            } else {
                set_tclass(&raw, 0b10);
            }
            raw.send_to(b"ecn", &b.local_addr().into()).unwrap();
            let before = SystemTime::now() - Duration::from_secs(1);
            let mut rx = b.recv_batch(2);
            let got = receive(&mut b, &mut rx, 1);
            assert_eq!(got[0].ecn, Ecn::Ect0, "{backend} {ip}");
            if b.timestamps() {
                let t = got[0].timestamp.expect("a receive timestamp");
                assert!(t >= before && t <= SystemTime::now(), "{backend}: {t:?}");
            }
        }
    });
}

#[test]
fn an_exhausted_buffer_ring_recovers_without_loss() {
    each_backend(|backend| {
        // Eight ring buffers, 200 datagrams waiting before the first receive.
        let mut b = open(backend, "127.0.0.1:0", |c| c.ring_buffers(8));
        let mut rx = b.recv_batch(4);
        // Arms the io_uring receive.
        assert_eq!(b.recv(&mut rx).unwrap(), 0);
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..200 {
            raw.send_to(&numbered(i, 500), b.local_addr()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let got = receive(&mut b, &mut rx, 200);
        assert_eq!(got.len(), 200, "{backend}");
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, g)| number(&g.contents) == i as u32)
        );
        if backend == Backend::IoUring {
            assert!(b.ring_exhausted() > 0, "the ring did run dry");
        }
        // And it keeps working.
        raw.send_to(b"after", b.local_addr()).unwrap();
        assert_eq!(receive(&mut b, &mut rx, 1)[0].contents, b"after");
    });
}

#[test]
fn unreachable_destinations_drop_without_stopping_the_batch() {
    each_backend(|backend| {
        let mut a = open(backend, "127.0.0.1:0", |c| c);
        let mut b = open(backend, "127.0.0.1:0", |c| c);
        let mut batch = a.send_batch(8);
        batch.push(b.local_addr(), b"one");
        // An IPv6 destination from an IPv4 socket, and port 0: the kernel refuses both.
        batch.push("[::1]:9".parse().unwrap(), b"nowhere");
        batch.push("127.0.0.1:0".parse().unwrap(), b"port zero");
        batch.push(b.local_addr(), b"two");
        let out = a.send(&mut batch);
        assert_eq!((out.sent, out.dropped), (2, 2), "{backend}");
        assert!(out.error.is_some());
        let mut rx = b.recv_batch(4);
        let got = receive(&mut b, &mut rx, 2);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (&got[0].contents[..], &got[1].contents[..]),
            (&b"one"[..], &b"two"[..])
        );
    });
}

#[test]
fn recv_batches_fill_up_to_their_capacity() {
    each_backend(|backend| {
        let mut b = open(backend, "127.0.0.1:0", |c| c);
        let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..10 {
            raw.send_to(&numbered(i, 64), b.local_addr()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut rx = RecvBatch::new(4, MAX_DATAGRAM);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.len() < 10 && Instant::now() < deadline {
            let n = b.recv(&mut rx).unwrap();
            assert!(n <= 4, "{backend}: never more than the batch holds");
            seen.extend(rx.datagrams().map(|(_, d)| number(d)));
        }
        assert_eq!(seen, (0..10).collect::<Vec<u32>>(), "{backend}");
    });
}

#[test]
fn auto_picks_a_working_backend() {
    let probe = probe();
    let (backend, why) = probe.choose(parloir_net::IoMode::Auto).unwrap();
    assert!(probe.works(backend), "{why}");
    let (fixed, _) = probe
        .choose(parloir_net::IoMode::Fixed(Backend::Basic))
        .unwrap();
    assert_eq!(fixed, Backend::Basic);
    // A send batch that asked for GSO still works on an endpoint without it.
    let mut a = open(Backend::Basic, "127.0.0.1:0", |c| c.gso(false));
    let mut b = open(Backend::Basic, "127.0.0.1:0", |c| c);
    let mut batch = SendBatch::new(8, true);
    for i in 0..4 {
        batch.push(b.local_addr(), &numbered(i, 100));
    }
    assert_eq!(a.send(&mut batch).sent, 4);
    let mut rx = b.recv_batch(4);
    assert_eq!(receive(&mut b, &mut rx, 4).len(), 4);
}

/// IPV6_TCLASS on a socket (socket2 only sets the receive side).
#[allow(unsafe_code)]
fn set_tclass(socket: &socket2::Socket, tclass: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: `tclass` lives for the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_TCLASS,
            (&tclass as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IPV6_TCLASS");
}
