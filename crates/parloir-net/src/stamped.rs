//! Kernel receive timestamps for a UDP socket that is not an [`UdpEndpoint`](crate::UdpEndpoint)
//! (the load generator's sockets, which tokio polls): [`enable_timestamps`] asks the kernel for
//! them, [`recv_stamped`] reads one datagram with its stamp, and [`arrival`] turns a stamp into
//! an [`Instant`] (the media workers use it too).
//!
//! A WebRTC receiver reports when each packet arrived in its TWCC feedback, and the sender's
//! bandwidth estimator reads congestion from how those times spread. The time a datagram is
//! read is not its arrival when the reader was busy: a batch read at once, or a socket served
//! after other work, would look like a burst after a pause. libwebrtc reads the kernel's
//! timestamp for the same reason.

#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant, SystemTime};

use crate::sys;

/// Oldest kernel receive timestamp taken as it is: a datagram that waited longer in the socket
/// (a stalled reader), or a wall clock that was stepped, counts from this far back.
pub const MAX_RECEIVE_AGE: Duration = Duration::from_millis(500);

/// Asks the kernel to stamp each datagram `fd` receives (SO_TIMESTAMPNS). False when it refused.
pub fn enable_timestamps(fd: RawFd) -> bool {
    sys::set_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1).is_ok()
}

/// One datagram from the non-blocking socket `fd` into `buf`: its length (at most
/// `buf.len()`; a longer datagram is cut), its source and the kernel's receive timestamp, if
/// it gave one. `WouldBlock` when nothing is queued.
pub fn recv_stamped(
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<SystemTime>)> {
    let meta = sys::recv_one(fd, buf, libc::MSG_DONTWAIT)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "source is not an IP address"))?;
    Ok((meta.len, meta.source, meta.timestamp))
}

/// When a datagram read at `now` (`wall` on the wall clock) arrived, from the kernel's receive
/// timestamp (on the wall clock): a batch read at once keeps the spacing its datagrams came in
/// with. Without a timestamp, or with one from the future, the datagram arrived `now`; never
/// further back than [`MAX_RECEIVE_AGE`].
pub fn arrival(now: Instant, wall: SystemTime, timestamp: Option<SystemTime>) -> Instant {
    let Some(age) = timestamp.and_then(|t| wall.duration_since(t).ok()) else {
        return now;
    };
    now.checked_sub(age.min(MAX_RECEIVE_AGE)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant, SystemTime};

    use super::{MAX_RECEIVE_AGE, arrival, enable_timestamps, recv_stamped};

    #[test]
    fn a_datagram_arrived_when_the_kernel_stamped_it() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let ms = Duration::from_millis;
        assert_eq!(arrival(now, wall, Some(wall - ms(3))), now - ms(3));
        assert_eq!(arrival(now, wall, Some(wall)), now);
        // No timestamp, or one from the future (a wall clock stepped back): read time.
        assert_eq!(arrival(now, wall, None), now);
        assert_eq!(arrival(now, wall, Some(wall + ms(40))), now);
        // A wall clock stepped forward, or a long stall: no further back than the cap.
        assert_eq!(
            arrival(now, wall, Some(wall - Duration::from_secs(3600))),
            now - MAX_RECEIVE_AGE
        );
    }

    #[test]
    fn a_datagram_read_late_carries_the_time_it_came_in() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = rx.as_raw_fd();
        let mut buf = [0u8; 64];
        let nothing = recv_stamped(fd, &mut buf).unwrap_err();
        assert_eq!(nothing.kind(), std::io::ErrorKind::WouldBlock);
        assert!(enable_timestamps(fd));
        // The kernel turns stamping on a moment later (a deferred static key); a datagram
        // that came in before has none, and gets the time it is read.
        std::thread::sleep(Duration::from_millis(20));
        tx.send_to(b"first", rx.local_addr().unwrap()).unwrap();
        let sent = SystemTime::now();
        std::thread::sleep(Duration::from_millis(30));
        tx.send_to(b"second, longer than the buffer", rx.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let (n, from, first) = recv_stamped(fd, &mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"first"[..], tx.local_addr().unwrap()));
        let (n, _, second) = recv_stamped(fd, &mut buf[..6]).unwrap();
        assert_eq!(&buf[..n], b"second", "cut to the buffer");
        let (first, second) = (first.unwrap(), second.unwrap());
        // Stamped as they came in, 30 ms apart, not when read (both at once, 50 ms later).
        let apart = second.duration_since(first).unwrap();
        assert!(apart >= Duration::from_millis(25), "{apart:?}");
        assert!(sent.duration_since(first).unwrap_or_default() < Duration::from_millis(10));
        assert_eq!(
            recv_stamped(fd, &mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }
}
