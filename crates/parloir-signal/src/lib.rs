//! LiveKit signalling for Parloir: access tokens, join parameters and the protobuf framing of
//! the signal WebSocket. Room and media logic lives in `parloir-sfu`; this crate turns the wire
//! into typed values and back.

pub mod join;
pub mod json;
pub mod session;
pub mod token;

pub use join::{JoinError, JoinParams, SignalPath};
pub use livekit_protocol as proto;
pub use token::{Claims, KeyRing, TokenError, VideoGrant, sign_hs256};

use prost::Message as _;

/// The largest signal message accepted from a client. SDP offers of a few dozen m-lines stay far
/// below this; anything larger closes that connection.
pub const MAX_SIGNAL_MESSAGE: usize = 1024 * 1024;

/// The version reported in `ServerInfo`. livekit-client gates features on it (RPC needs ≥ 1.8.0),
/// so Parloir reports the LiveKit server version whose protocol it implements.
pub const LIVEKIT_COMPAT_VERSION: &str = "1.13.5";
/// The signal protocol version Parloir speaks.
pub const PROTOCOL_VERSION: i32 = 17;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    #[error("signal message of {0} bytes is over the {MAX_SIGNAL_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("signal message is not a SignalRequest protobuf")]
    Decode,
    #[error("signal request carries no message")]
    Empty,
}

/// Decodes one binary WebSocket frame from a client.
pub fn decode_request(frame: &[u8]) -> Result<proto::signal_request::Message, FrameError> {
    if frame.len() > MAX_SIGNAL_MESSAGE {
        return Err(FrameError::TooLarge(frame.len()));
    }
    proto::SignalRequest::decode(frame)
        .map_err(|_| FrameError::Decode)?
        .message
        .ok_or(FrameError::Empty)
}

/// Encodes one server message as a binary WebSocket frame.
pub fn encode_response(message: proto::signal_response::Message) -> Vec<u8> {
    proto::SignalResponse {
        message: Some(message),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let req = proto::SignalRequest {
            message: Some(proto::signal_request::Message::Ping(42)),
        };
        assert_eq!(
            decode_request(&req.encode_to_vec()),
            Ok(proto::signal_request::Message::Ping(42))
        );
        assert_eq!(decode_request(&[]), Err(FrameError::Empty));
        assert_eq!(
            decode_request(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::Decode)
        );
        assert_eq!(
            decode_request(&vec![0u8; MAX_SIGNAL_MESSAGE + 1]),
            Err(FrameError::TooLarge(MAX_SIGNAL_MESSAGE + 1))
        );
    }
}
