//! Writes the seed corpus: `cargo run --example gen_seeds` (from `fuzz/`) fills
//! `corpus/<target>/` with valid inputs for each target. Re-running overwrites the same files.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parloir_fuzz::{binding_request, client_addr, client_offer, joined};
use parloir_sfu::Layout;
use parloir_signal::proto::{self, signal_request::Message as Req};
use parloir_signal::{Claims, KeyRing, VideoGrant, sign_hs256};
use prost::Message as _;
use str0m::change::SdpOffer;
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(name), bytes).expect("seed file");
}

fn request(message: Req) -> Vec<u8> {
    proto::SignalRequest {
        message: Some(message),
    }
    .encode_to_vec()
}

/// A publisher offer as livekit-client sends it on `/rtc`: data channels, sendonly audio+video.
fn publisher_offer() -> String {
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host(client_addr(), "udp").expect("host"));
    let mut api = rtc.sdp_api();
    api.add_channel("_reliable".into());
    api.add_channel("_lossy".into());
    api.add_media(MediaKind::Audio, Direction::SendOnly, Some("s".into()), Some("TR_audio".into()), None);
    api.add_media(MediaKind::Video, Direction::SendOnly, Some("s".into()), Some("TR_video".into()), None);
    let (offer, _) = api.apply().expect("offer");
    offer.to_sdp_string()
}

/// A client's answer to the SFU's subscriber offer (`/rtc`).
fn subscriber_answer() -> Option<String> {
    let now = Instant::now();
    let mut sfu = parloir_fuzz::new_sfu(now);
    sfu.handle_command(
        now,
        parloir_fuzz::join_command(parloir_sfu::SessionId(1), "alice", Layout::TwoPeerConnections, None),
    );
    let offer = parloir_fuzz::drain(&mut sfu).into_iter().find_map(|(_, m)| match m {
        proto::signal_response::Message::Offer(sd) => Some(sd.sdp),
        _ => None,
    })?;
    let mut rtc = Rtc::builder().build(now);
    rtc.add_local_candidate(Candidate::host(client_addr(), "udp").expect("host"));
    let answer = rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&offer).ok()?)
        .ok()?;
    Some(answer.to_sdp_string())
}

fn signal_request() {
    let t = "signal_request";
    write(t, "ping", &request(Req::Ping(42)));
    write(t, "ping_req", &request(Req::PingReq(proto::Ping { timestamp: 7, rtt: 3 })));
    let offer = publisher_offer();
    write(
        t,
        "offer",
        &request(Req::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: offer,
            id: 1,
            ..Default::default()
        })),
    );
    if let Some(answer) = subscriber_answer() {
        write(
            t,
            "answer",
            &request(Req::Answer(proto::SessionDescription {
                r#type: "answer".into(),
                sdp: answer,
                ..Default::default()
            })),
        );
    }
    write(
        t,
        "trickle",
        &request(Req::Trickle(proto::TrickleRequest {
            candidate_init: r#"{"candidate":"candidate:1 1 udp 2122260223 10.0.1.1 5000 typ host generation 0","sdpMid":"0","sdpMLineIndex":0}"#.into(),
            target: 0,
            ..Default::default()
        })),
    );
    write(
        t,
        "add_track",
        &request(Req::AddTrack(proto::AddTrackRequest {
            cid: "TR_video".into(),
            name: "camera".into(),
            r#type: proto::TrackType::Video as i32,
            width: 640,
            height: 480,
            source: proto::TrackSource::Camera as i32,
            ..Default::default()
        })),
    );
    write(
        t,
        "mute",
        &request(Req::Mute(proto::MuteTrackRequest {
            sid: "TR_x".into(),
            muted: true,
        })),
    );
    write(
        t,
        "subscription",
        &request(Req::Subscription(proto::UpdateSubscription {
            track_sids: vec!["TR_x".into()],
            subscribe: false,
            ..Default::default()
        })),
    );
    write(
        t,
        "track_setting",
        &request(Req::TrackSetting(proto::UpdateTrackSettings {
            track_sids: vec!["TR_x".into()],
            disabled: false,
            width: 320,
            height: 240,
            ..Default::default()
        })),
    );
    write(
        t,
        "update_metadata",
        &request(Req::UpdateMetadata(proto::UpdateParticipantMetadata {
            metadata: "{\"a\":1}".into(),
            name: "Alice".into(),
            attributes: [("k".to_string(), "v".to_string())].into(),
            request_id: 1,
        })),
    );
    write(t, "leave", &request(Req::Leave(proto::LeaveRequest::default())));
}

fn join_request() {
    let t = "join_request";
    let request = proto::JoinRequest {
        client_info: Some(proto::ClientInfo {
            sdk: proto::client_info::Sdk::Js as i32,
            version: "2.23.0".into(),
            protocol: 17,
            ..Default::default()
        }),
        connection_settings: Some(proto::ConnectionSettings {
            auto_subscribe: true,
            ..Default::default()
        }),
        publisher_offer: Some(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: client_offer().to_string(),
            id: 1,
            ..Default::default()
        }),
        metadata: "m".into(),
        participant_attributes: [("k".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    let plain = request.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).expect("gzip");
    let gzipped = gz.finish().expect("gzip");
    for (name, compression, bytes) in [
        ("v1_plain", proto::wrapped_join_request::Compression::None, plain),
        ("v1_gzip", proto::wrapped_join_request::Compression::Gzip, gzipped),
    ] {
        let wrapped = proto::WrappedJoinRequest {
            compression: compression as i32,
            join_request: bytes,
        };
        write(t, name, URL_SAFE_NO_PAD.encode(wrapped.encode_to_vec()).as_bytes());
    }
    write(
        t,
        "v0_query",
        b"auto_subscribe=1&sdk=js&version=2.23.0&protocol=17&adaptive_stream=0&reconnect=1&sid=PA_x&os=linux",
    );
}

fn access_token() {
    let t = "access_token";
    let claims = Claims {
        iss: "devkey".into(),
        sub: "alice".into(),
        name: "Alice".into(),
        nbf: Some(1_699_999_000),
        exp: Some(1_700_003_600),
        metadata: "{}".into(),
        attributes: [("k".to_string(), "v".to_string())].into(),
        video: VideoGrant {
            room_join: true,
            room: "daily".into(),
            can_publish: Some(true),
            ..Default::default()
        },
        ..Default::default()
    };
    let keys = KeyRing::new([("devkey".into(), "secret".into())]);
    let valid = keys.sign(&claims).expect("devkey is known");
    assert!(keys.verify(&valid, 1_700_000_000).is_ok(), "seed token must verify");
    write(t, "valid", valid.as_bytes());
    let expired = Claims {
        exp: Some(1_600_000_000),
        ..claims.clone()
    };
    write(t, "expired", keys.sign(&expired).expect("signed").as_bytes());
    write(t, "wrong_secret", sign_hs256(&claims, "other").as_bytes());
}

fn udp_demux() {
    let t = "udp_demux";
    // Mode byte: bit 0 layout, bit 1 prime with a valid binding request, bits 2..3 source.
    for (layout, bit) in [(Layout::TwoPeerConnections, 0u8), (Layout::SinglePeerConnection, 1)] {
        let j = joined(layout);
        if let Some((ufrag, pwd)) = &j.sfu_ice {
            let stun = binding_request(ufrag, pwd, &j.client_ufrag);
            for prime in [0u8, 2] {
                let mut seed = vec![bit | prime];
                seed.extend_from_slice(&stun);
                write(t, &format!("stun_binding_{bit}{prime}"), &seed);
            }
        }
        // A DTLS 1.2 ClientHello record header and the start of its handshake.
        let mut dtls = vec![bit | 2, 0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 1, 0, 0, 0x34];
        dtls.extend_from_slice(&[0; 0x34]);
        write(t, &format!("dtls_{bit}"), &dtls);
        // An RTP header (PT 111) and an RTCP receiver report.
        let mut rtp = vec![bit | 2, 0x80, 111, 0, 1, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
        rtp.extend_from_slice(&[0xab; 40]);
        write(t, &format!("rtp_{bit}"), &rtp);
        write(
            t,
            &format!("rtcp_{bit}"),
            &[bit | 2, 0x80, 201, 0, 1, 0x12, 0x34, 0x56, 0x78],
        );
    }
    // An unknown source address (mode bits 2..3 = 2) carrying 6 address bytes.
    write(t, "unknown_source", &[8, 192, 168, 1, 2, 0x13, 0x88, 0x80, 96, 0, 1]);
}

fn main() {
    signal_request();
    join_request();
    access_token();
    udp_demux();
    for t in ["signal_request", "join_request", "access_token", "udp_demux"] {
        let n = fs::read_dir(Path::new("corpus").join(t)).map(|d| d.count()).unwrap_or(0);
        println!("corpus/{t}: {n} seeds");
    }
}
