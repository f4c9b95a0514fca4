//! One datagram at the SFU's UDP port, from a known or an unknown source.
//!
//! Byte 0 picks the set-up:
//! - bit 0: layout (`/rtc` two peer connections, or `/rtc/v1` with a client offer in the join);
//! - bit 1: first send a valid, signed STUN binding request from the client address, so that the
//!   address is known to the demultiplexer and non-STUN datagrams reach str0m (DTLS, SRTP);
//! - bits 2..3: the source: 0, 1 the client address; 2 an address taken from bytes 1..7;
//!   3 the SFU's own address.
//!
//! The rest is the datagram. When it is at least 20 bytes it is sent a second time made to look
//! like STUN (byte 0 = 0, magic cookie in bytes 4..8). Finally time advances, so that timers
//! fire with whatever state the datagrams left. Must never panic.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use parloir_fuzz::{binding_request, client_addr, drain, joined, sfu_addr, tick};
use parloir_sfu::Layout;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let layout = if mode & 1 == 0 {
        Layout::TwoPeerConnections
    } else {
        Layout::SinglePeerConnection
    };
    let source = match (mode >> 2) & 3 {
        2 if rest.len() >= 6 => {
            let (addr, tail) = rest.split_at(6);
            rest = tail;
            let ip = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            SocketAddr::from((ip, u16::from_be_bytes([addr[4], addr[5]])))
        }
        3 => sfu_addr(),
        _ => client_addr(),
    };

    let mut j = joined(layout);
    let destination = sfu_addr();
    let mut now = j.now;
    if mode & 2 != 0
        && let Some((ufrag, pwd)) = &j.sfu_ice
    {
        let stun = binding_request(ufrag, pwd, &j.client_ufrag);
        j.sfu.handle_receive(now, client_addr(), destination, &stun);
        drain(&mut j.sfu);
        now = tick(&mut j.sfu, now, Duration::from_millis(5));
    }

    j.sfu.handle_receive(now, source, destination, rest);
    drain(&mut j.sfu);

    if rest.len() >= 20 {
        let mut stunish = rest.to_vec();
        stunish[0] = 0;
        stunish[4..8].copy_from_slice(&MAGIC_COOKIE);
        j.sfu.handle_receive(now, source, destination, &stunish);
        drain(&mut j.sfu);
    }

    let now = tick(&mut j.sfu, now, Duration::from_millis(50));
    tick(&mut j.sfu, now, Duration::from_secs(2));
});
