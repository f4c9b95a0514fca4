//! Datagram I/O for the media plane. It knows sockets and nothing of RTP.
//!
//! Today one backend: a non-blocking UDP socket registered with mio, one datagram per system
//! call. Batched backends (recvmmsg/sendmmsg with GSO/GRO, io_uring) come behind the same
//! [`UdpEndpoint`] surface.

#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;

pub mod tcp;

use socket2::{Domain, Protocol, Socket, Type};

/// Receive and send buffers asked of the kernel: media bursts (keyframes to many subscribers)
/// must not overflow the default ~200 KiB.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// The largest datagram read; anything larger is truncated by the kernel and dropped by us.
pub const MAX_DATAGRAM: usize = 2048;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("cannot bind UDP {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A bound, non-blocking UDP socket for one media worker.
pub struct UdpEndpoint {
    socket: mio::net::UdpSocket,
    local: SocketAddr,
}

/// One received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    pub source: SocketAddr,
    pub len: usize,
}

impl UdpEndpoint {
    /// Binds `addr` non-blocking with large kernel buffers.
    pub fn bind(addr: SocketAddr) -> Result<Self, NetError> {
        let bind_err = |source| NetError::Bind { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(bind_err)?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        socket.set_nonblocking(true).map_err(bind_err)?;
        socket.bind(&addr.into()).map_err(bind_err)?;
        let std: std::net::UdpSocket = socket.into();
        let local = std.local_addr().map_err(bind_err)?;
        Ok(Self {
            socket: mio::net::UdpSocket::from_std(std),
            local,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The mio source, to register for readability.
    pub fn source(&mut self) -> &mut mio::net::UdpSocket {
        &mut self.socket
    }

    /// Reads one datagram into `buf`; `Ok(None)` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<RecvMeta>> {
        match self.socket.recv_from(buf) {
            Ok((len, source)) => Ok(Some(RecvMeta { source, len })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one datagram. A full send buffer drops it (media is loss-tolerant; RTX repairs).
    pub fn send(&self, destination: SocketAddr, contents: &[u8]) -> io::Result<bool> {
        match self.socket.send_to(contents, destination) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_round_trip() {
        let a = UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(a.send(b.local_addr(), b"hello").unwrap());
        let mut buf = [0u8; MAX_DATAGRAM];
        let meta = loop {
            if let Some(m) = b.recv(&mut buf).unwrap() {
                break m;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(&buf[..meta.len], b"hello");
        assert_eq!(meta.source, a.local_addr());
        assert_eq!(b.recv(&mut buf).unwrap(), None, "nothing else waiting");
    }

    #[test]
    fn bind_conflict_is_an_error() {
        let a = UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(matches!(
            UdpEndpoint::bind(a.local_addr()),
            Err(NetError::Bind { .. })
        ));
    }
}
