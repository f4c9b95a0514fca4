//! One signal session's request handling: each client message becomes an SFU command, a direct
//! reply (ping), or nothing.

use livekit_protocol as proto;
use parloir_sfu::{Command, SessionId};
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;

/// What to do with one client message.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one short-lived value per client message"
)]
pub enum Action {
    /// Hand this to the SFU.
    Command(Command),
    /// Answer the client directly.
    Reply(Resp),
    /// Accepted and not acted on.
    Ignore,
}

/// Translates one client request. `now_ms` is the wall clock for pong timestamps.
pub fn translate(session: SessionId, request: Req, now_ms: i64) -> Action {
    match request {
        Req::Offer(sd) => Action::Command(Command::Offer {
            session,
            sdp: sd.sdp,
            id: sd.id,
        }),
        // Parsed here, in the session's task, not on the media worker.
        Req::Answer(sd) => Action::Command(Command::answer(session, &sd.sdp)),
        Req::Trickle(t) => Action::Command(Command::Trickle {
            session,
            candidate_init: t.candidate_init,
            target: t.target,
        }),
        Req::AddTrack(request) => Action::Command(Command::AddTrack { session, request }),
        Req::Mute(m) => Action::Command(Command::Mute {
            session,
            track_sid: m.sid,
            muted: m.muted,
        }),
        Req::Subscription(s) => {
            let mut track_sids = s.track_sids;
            track_sids.extend(s.participant_tracks.into_iter().flat_map(|p| p.track_sids));
            Action::Command(Command::UpdateSubscription {
                session,
                track_sids,
                subscribe: s.subscribe,
            })
        }
        Req::SyncState(sync) => Action::Command(Command::SyncState {
            session,
            offer: sync.offer.filter(|o| o.r#type == "offer").map(|o| o.sdp),
            answer: sync.answer.filter(|a| a.r#type == "answer").map(|a| a.sdp),
        }),
        Req::TrackSetting(settings) => {
            Action::Command(Command::UpdateTrackSettings { session, settings })
        }
        Req::Leave(_) => Action::Command(Command::Leave { session }),
        Req::UpdateMetadata(request) => {
            Action::Command(Command::UpdateMetadata { session, request })
        }
        Req::Ping(_) => Action::Reply(Resp::Pong(now_ms)),
        Req::PingReq(ping) => Action::Reply(Resp::PongResp(proto::Pong {
            last_ping_timestamp: ping.timestamp,
            timestamp: now_ms,
        })),
        // Accepted without effect for now: layers (simulcast choice comes later), permissions,
        // sync state (resume), simulate, data tracks and blobs.
        _ => Action::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_is_answered_directly() {
        let s = SessionId(1);
        assert!(matches!(
            translate(s, Req::Ping(5), 9),
            Action::Reply(Resp::Pong(9))
        ));
        let Action::Reply(Resp::PongResp(p)) = translate(
            s,
            Req::PingReq(proto::Ping {
                timestamp: 7,
                rtt: 0,
            }),
            9,
        ) else {
            panic!("ping_req must get pong_resp");
        };
        assert_eq!((p.last_ping_timestamp, p.timestamp), (7, 9));
    }

    #[test]
    fn offer_becomes_a_command() {
        let a = translate(
            SessionId(1),
            Req::Offer(proto::SessionDescription {
                sdp: "v=0".into(),
                ..Default::default()
            }),
            0,
        );
        assert!(matches!(a, Action::Command(Command::Offer { .. })));
    }

    #[test]
    fn answers_are_parsed_before_they_reach_the_media_worker() {
        let answer = |sdp: &str| {
            translate(
                SessionId(1),
                Req::Answer(proto::SessionDescription {
                    r#type: "answer".into(),
                    sdp: sdp.into(),
                    ..Default::default()
                }),
                0,
            )
        };
        let Action::Command(Command::Answer { answer: Err(e), .. }) = answer("v=0") else {
            panic!("a broken answer is a command carrying the parse error");
        };
        assert!(!e.is_empty());
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
            a=mid:0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n";
        let Action::Command(Command::Answer {
            answer: Ok(parsed), ..
        }) = answer(sdp)
        else {
            panic!("a valid answer is parsed");
        };
        assert!(parsed.to_sdp_string().contains("a=mid:0"));
    }
}
