//! Shared set-up for the Parloir fuzz targets: an `Sfu` configured as in
//! `crates/parloir-sfu/tests/sim.rs` (fixed seed, one candidate 10.0.0.1:7882), a joined
//! participant, output draining, and a valid STUN binding request that makes a client address
//! "known" to the SFU's demultiplexer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parloir_sfu::{Command, JoinCommand, Layout, Output, SessionId, Sfu, SfuConfig, proto};
use str0m::ice::{StunMessage, TransId};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

/// The SFU's one ICE candidate (as in the simulation tests).
pub const SFU_ADDR: &str = "10.0.0.1:7882";
/// The address the fuzzed participant's client sends from.
pub const CLIENT_ADDR: &str = "10.0.1.1:5000";
/// The room every fuzzed participant joins.
pub const ROOM: &str = "fuzz";

pub fn sfu_addr() -> SocketAddr {
    SFU_ADDR.parse().expect("constant address")
}

pub fn client_addr() -> SocketAddr {
    CLIENT_ADDR.parse().expect("constant address")
}

/// An SFU as the simulation builds it: fixed seed, one candidate.
pub fn new_sfu(now: Instant) -> Sfu {
    let config = SfuConfig {
        candidates: vec![sfu_addr()],
        tcp_candidates: Vec::new(),
        seed: 1,
        server_version: "1.13.5".into(),
        protocol: 17,
        node_id: "ND_fuzz".into(),
        ping_interval_s: 5,
        ping_timeout_s: 15,
        loudest_audio: 3,
        speech_all_rooms: true,
    };
    Sfu::new(config, now)
}

/// The join of `session` as identity `identity` to [`ROOM`], with every permission.
pub fn join_command(
    session: SessionId,
    identity: &str,
    layout: Layout,
    offer: Option<(String, u32)>,
) -> Command {
    Command::Join(Box::new(JoinCommand {
        session,
        room: ROOM.into(),
        identity: identity.to_string(),
        name: identity.to_uppercase(),
        metadata: String::new(),
        attributes: HashMap::new(),
        permission: proto::ParticipantPermission {
            can_publish: true,
            can_subscribe: true,
            can_publish_data: true,
            can_update_metadata: true,
            ..Default::default()
        },
        kind: 0,
        layout,
        auto_subscribe: true,
        protocol: 17,
        client_protocol: 1,
        unix_ms: 1_700_000_000_000,
        offer,
    }))
}

/// Polls until `Output::Timeout`, returning the signal messages seen (transmits and closes are
/// dropped). Bounded, so that a livelock in the SFU shows up as a panic rather than a hang.
pub fn drain(sfu: &mut Sfu) -> Vec<(SessionId, proto::signal_response::Message)> {
    let mut signals = Vec::new();
    for _ in 0..100_000 {
        match sfu.poll_output() {
            Output::Timeout(_) => return signals,
            Output::Signal(session, message) => signals.push((session, *message)),
            Output::Transmit(_)
            | Output::Close(_)
            | Output::ServiceReply { .. }
            | Output::Webhook(_) => {}
        }
    }
    panic!("Sfu::poll_output produced 100000 outputs without a Timeout");
}

/// A client offer as livekit-client sends it on `/rtc/v1`: the two data channels and three
/// receive-only audio and video m-lines. Made once (it needs a str0m `Rtc` and a certificate).
pub fn client_offer() -> &'static str {
    static OFFER: OnceLock<String> = OnceLock::new();
    OFFER.get_or_init(|| {
        let now = Instant::now();
        let mut rtc = Rtc::builder().build(now);
        rtc.add_local_candidate(Candidate::host(client_addr(), "udp").expect("host candidate"));
        let mut api = rtc.sdp_api();
        api.add_channel("_reliable".into());
        api.add_channel("_lossy".into());
        for kind in [MediaKind::Audio, MediaKind::Video] {
            for _ in 0..3 {
                api.add_media(kind, Direction::RecvOnly, None, None, None);
            }
        }
        let (offer, _pending) = api.apply().expect("an offer");
        offer.to_sdp_string()
    })
}

/// `a=<key>:<value>` from an SDP.
pub fn sdp_attr<'a>(sdp: &'a str, key: &str) -> Option<&'a str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=")?.strip_prefix(key)?.strip_prefix(':'))
}

/// A participant joined to an SFU, with what is needed to talk ICE to its server-side peer.
pub struct Joined {
    pub sfu: Sfu,
    pub now: Instant,
    pub session: SessionId,
    /// The SFU's ICE ufrag and password for the participant's first peer connection.
    pub sfu_ice: Option<(String, String)>,
    /// The client's ufrag (`/rtc/v1`, from its offer).
    pub client_ufrag: String,
}

/// A fresh SFU with session 1 joined to [`ROOM`] on `layout` (`/rtc/v1` carries
/// [`client_offer`] in its join), outputs drained.
pub fn joined(layout: Layout) -> Joined {
    let now = Instant::now();
    let mut sfu = new_sfu(now);
    let session = SessionId(1);
    let offer = match layout {
        Layout::SinglePeerConnection => Some((client_offer().to_string(), 1)),
        Layout::TwoPeerConnections => None,
    };
    let client_ufrag = offer
        .as_ref()
        .and_then(|(sdp, _)| sdp_attr(sdp, "ice-ufrag"))
        .unwrap_or("fuzzclnt")
        .to_string();
    sfu.handle_command(now, join_command(session, "alice", layout, offer));
    let mut sfu_ice = None;
    for (_, message) in drain(&mut sfu) {
        use proto::signal_response::Message as M;
        if let M::Offer(sd) | M::Answer(sd) = message
            && let (Some(u), Some(p)) = (sdp_attr(&sd.sdp, "ice-ufrag"), sdp_attr(&sd.sdp, "ice-pwd"))
        {
            sfu_ice.get_or_insert((u.to_string(), p.to_string()));
        }
    }
    Joined {
        sfu,
        now,
        session,
        sfu_ice,
        client_ufrag,
    }
}

/// A STUN binding request from the client to the SFU, with USE-CANDIDATE, signed with the
/// SFU's password: what a browser sends first. The SFU routes it by ufrag and, once str0m
/// accepts it, remembers the source address.
pub fn binding_request(sfu_ufrag: &str, sfu_pwd: &str, client_ufrag: &str) -> Vec<u8> {
    let username = format!("{sfu_ufrag}:{client_ufrag}");
    let message = StunMessage::binding_request(&username, TransId::new(), true, 7, 0x6e00_1eff, true);
    let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
    let mut buf = vec![0u8; 1500];
    let n = message
        .to_bytes(Some(sfu_pwd.as_bytes()), &mut buf, |k, p| hmac.sha1_hmac(k, p))
        .expect("a STUN message fits 1500 bytes");
    buf.truncate(n);
    buf
}

/// Advances the SFU to `now + by` and drains it.
pub fn tick(sfu: &mut Sfu, now: Instant, by: Duration) -> Instant {
    let later = now + by;
    sfu.handle_timeout(later);
    drain(sfu);
    later
}
