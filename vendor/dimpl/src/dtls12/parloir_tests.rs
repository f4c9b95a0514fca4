//! Parloir patch: a flight resent after the handshake completed goes out in a datagram of its
//! own (`Engine::flight_resend`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::certificate::generate_self_signed_certificate;
use crate::{Config, Dtls, Output};

/// Polls until a timeout: the datagrams, and whether it reported `Connected`.
fn drain(endpoint: &mut Dtls) -> (Vec<Vec<u8>>, bool) {
    let mut buf = vec![0u8; 2048];
    let (mut packets, mut connected) = (Vec::new(), false);
    loop {
        match endpoint.poll_output(&mut buf) {
            Output::Packet(p) => packets.push(p.to_vec()),
            Output::Connected => connected = true,
            Output::Timeout(_) => return (packets, connected),
            _ => {}
        }
    }
}

/// The epochs of the records in one datagram, in order.
fn epochs(datagram: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 13 <= datagram.len() {
        out.push(u16::from_be_bytes([datagram[i + 3], datagram[i + 4]]));
        i += 13 + usize::from(u16::from_be_bytes([datagram[i + 11], datagram[i + 12]]));
    }
    out
}

#[test]
fn two_copies_of_the_final_flight_before_the_answer_still_connect_the_client() {
    let config = Arc::new(Config::default());
    let mut now = Instant::now();
    let client_cert = generate_self_signed_certificate().expect("a certificate");
    let server_cert = generate_self_signed_certificate().expect("a certificate");
    let mut client = Dtls::new_12(Arc::clone(&config), client_cert, now);
    client.set_active(true);
    let mut server = Dtls::new_12(config, server_cert, now);
    server.set_active(false);

    // Flights 1 to 4, until the client has its final flight (Certificate, ClientKeyExchange,
    // CertificateVerify, ChangeCipherSpec, Finished) ready: the first flight it sends with an
    // epoch-1 record.
    let mut final_flight = None;
    for _ in 0..20 {
        client.handle_timeout(now).expect("client timeout");
        server.handle_timeout(now).expect("server timeout");
        let (from_client, _) = drain(&mut client);
        if from_client.iter().any(|d| epochs(d).contains(&1)) {
            final_flight = Some(from_client);
            break;
        }
        for d in &from_client {
            let _ = server.handle_packet(d);
        }
        let (from_server, _) = drain(&mut server);
        for d in &from_server {
            let _ = client.handle_packet(d);
        }
        now += Duration::from_millis(10);
    }
    let final_flight = final_flight.expect("the client's final flight");

    // Both copies come in before the server's answer goes out (as when a client resent its
    // flight and the two arrive in one receive batch): the server completes on the first and
    // resends its own final flight for the second.
    for d in final_flight.iter().chain(&final_flight) {
        let _ = server.handle_packet(d);
    }
    let (answer, server_connected) = drain(&mut server);
    assert!(server_connected);
    for d in &answer {
        let e = epochs(d);
        assert!(
            e.windows(2).all(|w| w[0] <= w[1]),
            "a datagram's epochs only go up: {e:?} (of {:?})",
            answer.iter().map(|d| epochs(d)).collect::<Vec<_>>()
        );
    }
    let mut client_connected = false;
    for d in &answer {
        client.handle_packet(d).expect("the client takes the server's answer");
        client_connected |= drain(&mut client).1;
    }
    assert!(client_connected, "the client connects");
}
