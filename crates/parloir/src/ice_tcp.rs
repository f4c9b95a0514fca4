//! ICE-TCP connections of the media worker: a passive listener (RFC 6544), RFC 4571 framing
//! on each connection, and per-connection write buffers so a slow peer never blocks the others.

use std::collections::HashMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use parloir_net::tcp::{FrameReader, write_frame};

/// Connections beyond this are refused (closed at once).
const MAX_CONNECTIONS: usize = 4096;
/// A connection whose unsent bytes exceed this drops new packets (media repairs itself).
const MAX_PENDING: usize = 4 * 1024 * 1024;
/// Bytes read from a connection before a complete frame is required.
const MAX_BUFFERED: usize = 2 * parloir_net::tcp::MAX_FRAME + 4;
/// Tokens from here on are connections; lower ones belong to the worker.
pub const FIRST_CONNECTION: usize = 16;

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    reader: FrameReader,
    pending: Vec<u8>,
    writable_interest: bool,
}

pub struct IceTcp {
    listener: TcpListener,
    /// The advertised candidate address packets arrive at.
    pub local: SocketAddr,
    connections: HashMap<Token, Connection>,
    by_peer: HashMap<SocketAddr, Token>,
    next: usize,
    /// Connections accepted, packets received, packets dropped (no connection, full buffer).
    pub accepted: u64,
    pub packets_in: u64,
    pub dropped: u64,
}

impl IceTcp {
    pub fn new(listener: TcpListener, local: SocketAddr) -> Self {
        Self {
            listener,
            local,
            connections: HashMap::new(),
            by_peer: HashMap::new(),
            next: FIRST_CONNECTION,
            accepted: 0,
            packets_in: 0,
            dropped: 0,
        }
    }

    pub fn listener(&mut self) -> &mut TcpListener {
        &mut self.listener
    }

    /// Accepts every waiting connection.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.connections.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%peer, "too many ICE-TCP connections; refusing");
                        continue;
                    }
                    let token = Token(self.next);
                    self.next += 1;
                    if registry
                        .register(&mut stream, token, Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.accepted += 1;
                    self.by_peer.insert(peer, token);
                    self.connections.insert(
                        token,
                        Connection {
                            stream,
                            peer,
                            reader: FrameReader::default(),
                            pending: Vec::new(),
                            writable_interest: false,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("ICE-TCP accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Reads what `token` has and hands each packet to `deliver(peer, packet)`.
    pub fn readable(
        &mut self,
        registry: &Registry,
        token: Token,
        mut deliver: impl FnMut(SocketAddr, &[u8]),
    ) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let mut closed = false;
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    conn.reader.push(&buf[..n]);
                    while let Some(packet) = conn.reader.next_frame() {
                        self.packets_in += 1;
                        deliver(conn.peer, packet);
                    }
                    if conn.reader.buffered() > MAX_BUFFERED {
                        closed = true;
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            self.close(registry, token);
        }
    }

    /// Queues a packet for the connection from `peer` and writes what it can.
    pub fn send(&mut self, registry: &Registry, peer: SocketAddr, packet: &[u8]) {
        let Some(&token) = self.by_peer.get(&peer) else {
            self.dropped += 1;
            return;
        };
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        if conn.pending.len() > MAX_PENDING || !write_frame(packet, &mut conn.pending) {
            self.dropped += 1;
            return;
        }
        self.flush(registry, token);
    }

    /// Writes pending bytes of `token`; asks for writability while some remain.
    pub fn flush(&mut self, registry: &Registry, token: Token) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        let mut written = 0;
        let mut failed = false;
        while written < conn.pending.len() {
            match conn.stream.write(&conn.pending[written..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        conn.pending.drain(..written);
        if failed {
            self.close(registry, token);
            return;
        }
        let want = !conn.pending.is_empty();
        if want != conn.writable_interest {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if registry
                .reregister(&mut conn.stream, token, interest)
                .is_ok()
            {
                conn.writable_interest = want;
            }
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        self.connections.contains_key(&token)
    }

    fn close(&mut self, registry: &Registry, token: Token) {
        if let Some(mut conn) = self.connections.remove(&token) {
            let _ = registry.deregister(&mut conn.stream);
            if self.by_peer.get(&conn.peer) == Some(&token) {
                self.by_peer.remove(&conn.peer);
            }
        }
    }
}
