//! A `parloir serve --dev` on free loopback ports, for the binary's integration tests.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub http: SocketAddr,
    pub udp: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    free_ports(1)
}

/// A UDP port `p` with `p + 1 .. p + n` also free (media workers use consecutive ports), and
/// `p` free on TCP too.
///
/// The tests of one binary run in parallel and a server binds its ports only once it has
/// started (seconds later when it loads speech models first): a port the kernel gave one test
/// and that test released could go to another meanwhile, and then one test's requests reach
/// the other's server. No port is handed out twice in a process.
pub fn free_ports(n: u16) -> u16 {
    static HANDED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        // Bind port 0 on both protocols and keep a port free on both.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let p = tcp.local_addr().expect("addr").port();
        let ports: Vec<u16> = (0..n).filter_map(|k| p.checked_add(k)).collect();
        if ports.len() == usize::from(n)
            && ports.iter().all(|q| !handed.contains(q))
            && ports
                .iter()
                .all(|&q| UdpSocket::bind(("127.0.0.1", q)).is_ok())
        {
            handed.extend(&ports);
            return p;
        }
    }
}

/// `parloir serve --dev` with `workers` media workers on consecutive UDP ports from
/// `Server::udp` (ICE-TCP off).
pub fn start_workers(workers: u16, extra: &[&str]) -> Server {
    let (http_port, udp_port) = (free_port(), free_ports(workers));
    let child = Command::new(env!("CARGO_BIN_EXE_parloir"))
        .args([
            "serve",
            "--dev",
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
        ])
        .args(["--udp-port", &udp_port.to_string(), "--tcp-port", "0"])
        .args(["--media-workers", &workers.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the parloir binary starts");
    wait_healthy(Server {
        child,
        http: format!("127.0.0.1:{http_port}").parse().expect("address"),
        udp: format!("127.0.0.1:{udp_port}").parse().expect("address"),
    })
}

pub fn start() -> Server {
    start_with(&[])
}

pub fn start_with(extra: &[&str]) -> Server {
    start_workers(1, extra)
}

fn wait_healthy(server: Server) -> Server {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if get(server.http, "/healthz").0 == 200 {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not answer /healthz");
}

/// A plain HTTP/1.1 POST with a JSON body and a bearer token: (status, body).
pub fn post_json(addr: SocketAddr, path: &str, token: &str, body: &str) -> (u16, String) {
    exchange(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// A plain HTTP/1.1 GET: (status, body). Status 0 when the connection fails.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// Sends one request and reads the response to the end: (status, body), status 0 when the
/// connection fails.
fn exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
