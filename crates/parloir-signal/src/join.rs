//! What a client asks for when it opens the signal WebSocket.
//!
//! `/rtc` (two peer connections) carries the options as query parameters; `/rtc/v1` (one peer
//! connection) carries a base64url `WrappedJoinRequest` in `join_request`, optionally gzipped.

use std::collections::HashMap;
use std::io::Read as _;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use livekit_protocol as proto;
use prost::Message as _;

/// The largest decompressed join request accepted (the SDP offer rides inside it).
pub const MAX_JOIN_REQUEST: usize = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    #[error("join_request is not base64url")]
    Base64,
    #[error("join_request is not a WrappedJoinRequest")]
    Wrapper,
    #[error("join_request could not be decompressed")]
    Compression,
    #[error("join_request is larger than {MAX_JOIN_REQUEST} bytes")]
    TooLarge,
    #[error("the JoinRequest inside join_request does not decode")]
    Request,
    #[error("reconnect=1 needs a participant sid")]
    MissingSid,
}

/// Which signalling path the client took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalPath {
    /// `/rtc`: a publisher and a subscriber peer connection.
    TwoPeerConnections,
    /// `/rtc/v1`: one peer connection, the client always offers.
    SinglePeerConnection,
}

/// The join options, whichever path they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinParams {
    pub path: SignalPath,
    pub auto_subscribe: bool,
    pub adaptive_stream: bool,
    pub protocol: i32,
    pub client_protocol: i32,
    pub client_info: proto::ClientInfo,
    /// `Some(sid)` when the client resumes an existing session.
    pub reconnect: Option<String>,
    /// v1 only: the offer carried in the join request.
    pub publisher_offer: Option<proto::SessionDescription>,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
}

impl JoinParams {
    /// Parses the query parameters of an `/rtc` upgrade.
    pub fn from_v0_query(query: &HashMap<String, String>) -> Result<Self, JoinError> {
        let flag = |k: &str, default: bool| match query.get(k).map(String::as_str) {
            Some("1") | Some("true") => true,
            Some("0") | Some("false") => false,
            _ => default,
        };
        let int = |k: &str| query.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        let text = |k: &str| query.get(k).cloned().unwrap_or_default();
        let reconnect = if flag("reconnect", false) {
            Some(query.get("sid").cloned().ok_or(JoinError::MissingSid)?)
        } else {
            None
        };
        let client_info = proto::ClientInfo {
            sdk: sdk_from_name(&text("sdk")) as i32,
            version: text("version"),
            protocol: int("protocol"),
            os: text("os"),
            os_version: text("os_version"),
            device_model: text("device_model"),
            browser: text("browser"),
            browser_version: text("browser_version"),
            network: text("network"),
            client_protocol: int("client_protocol"),
            ..Default::default()
        };
        Ok(Self {
            path: SignalPath::TwoPeerConnections,
            auto_subscribe: flag("auto_subscribe", true),
            adaptive_stream: flag("adaptive_stream", false),
            protocol: int("protocol"),
            client_protocol: int("client_protocol"),
            client_info,
            reconnect,
            publisher_offer: None,
            metadata: String::new(),
            attributes: HashMap::new(),
        })
    }

    /// Parses the `join_request` parameter of an `/rtc/v1` upgrade.
    pub fn from_v1_join_request(value: &str) -> Result<Self, JoinError> {
        let raw = decode_base64url(value)?;
        let wrapped =
            proto::WrappedJoinRequest::decode(raw.as_slice()).map_err(|_| JoinError::Wrapper)?;
        let bytes = match proto::wrapped_join_request::Compression::try_from(wrapped.compression) {
            Ok(proto::wrapped_join_request::Compression::Gzip) => gunzip(&wrapped.join_request)?,
            Ok(proto::wrapped_join_request::Compression::None) => wrapped.join_request,
            Err(_) => return Err(JoinError::Compression),
        };
        if bytes.len() > MAX_JOIN_REQUEST {
            return Err(JoinError::TooLarge);
        }
        let request =
            proto::JoinRequest::decode(bytes.as_slice()).map_err(|_| JoinError::Request)?;
        let settings = request.connection_settings.unwrap_or_default();
        let client_info = request.client_info.unwrap_or_default();
        let reconnect = if request.reconnect {
            if request.participant_sid.is_empty() {
                return Err(JoinError::MissingSid);
            }
            Some(request.participant_sid)
        } else {
            None
        };
        Ok(Self {
            path: SignalPath::SinglePeerConnection,
            auto_subscribe: settings.auto_subscribe,
            adaptive_stream: settings.adaptive_stream,
            protocol: client_info.protocol,
            client_protocol: client_info.client_protocol,
            client_info,
            reconnect,
            publisher_offer: request.publisher_offer,
            metadata: request.metadata,
            attributes: request.participant_attributes,
        })
    }
}

fn sdk_from_name(name: &str) -> proto::client_info::Sdk {
    use proto::client_info::Sdk;
    match name {
        "js" => Sdk::Js,
        "swift" => Sdk::Swift,
        "android" => Sdk::Android,
        "flutter" => Sdk::Flutter,
        "go" => Sdk::Go,
        "unity" => Sdk::Unity,
        "react-native" | "reactnative" => Sdk::ReactNative,
        "rust" => Sdk::Rust,
        "python" => Sdk::Python,
        "cpp" => Sdk::Cpp,
        _ => Sdk::Unknown,
    }
}

fn decode_base64url(value: &str) -> Result<Vec<u8>, JoinError> {
    let cleaned: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    if cleaned.contains('=') {
        URL_SAFE.decode(&cleaned).map_err(|_| JoinError::Base64)
    } else {
        URL_SAFE_NO_PAD
            .decode(&cleaned)
            .map_err(|_| JoinError::Base64)
    }
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>, JoinError> {
    let mut out = Vec::new();
    let mut reader = flate2::read::GzDecoder::new(data).take(MAX_JOIN_REQUEST as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|_| JoinError::Compression)?;
    if out.len() > MAX_JOIN_REQUEST {
        return Err(JoinError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn wrap(request: &proto::JoinRequest, gzip: bool) -> String {
        let mut bytes = request.encode_to_vec();
        let mut compression = proto::wrapped_join_request::Compression::None;
        if gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&bytes).unwrap();
            bytes = enc.finish().unwrap();
            compression = proto::wrapped_join_request::Compression::Gzip;
        }
        let wrapped = proto::WrappedJoinRequest {
            compression: compression as i32,
            join_request: bytes,
        };
        URL_SAFE.encode(wrapped.encode_to_vec())
    }

    #[test]
    fn v1_plain_and_gzipped() {
        let request = proto::JoinRequest {
            connection_settings: Some(proto::ConnectionSettings {
                auto_subscribe: true,
                ..Default::default()
            }),
            publisher_offer: Some(proto::SessionDescription {
                sdp: "v=0".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for gzip in [false, true] {
            let p = JoinParams::from_v1_join_request(&wrap(&request, gzip)).unwrap();
            assert_eq!(p.path, SignalPath::SinglePeerConnection);
            assert!(p.auto_subscribe);
            assert_eq!(p.publisher_offer.unwrap().sdp, "v=0");
        }
    }

    #[test]
    fn v1_garbage_is_an_error() {
        assert_eq!(
            JoinParams::from_v1_join_request("!!!"),
            Err(JoinError::Base64)
        );
        let junk = URL_SAFE.encode([0xff, 0xff, 0xff]);
        assert!(JoinParams::from_v1_join_request(&junk).is_err());
        let wrapped = proto::WrappedJoinRequest {
            compression: proto::wrapped_join_request::Compression::Gzip as i32,
            join_request: vec![1, 2, 3],
        };
        let value = URL_SAFE.encode(wrapped.encode_to_vec());
        assert_eq!(
            JoinParams::from_v1_join_request(&value),
            Err(JoinError::Compression)
        );
    }

    #[test]
    fn v0_query() {
        let q: HashMap<String, String> = [
            ("auto_subscribe", "0"),
            ("sdk", "js"),
            ("protocol", "17"),
            ("reconnect", "1"),
            ("sid", "PA_x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = JoinParams::from_v0_query(&q).unwrap();
        assert!(!p.auto_subscribe);
        assert_eq!(p.protocol, 17);
        assert_eq!(p.reconnect.as_deref(), Some("PA_x"));
        let mut q2 = q.clone();
        q2.remove("sid");
        assert_eq!(JoinParams::from_v0_query(&q2), Err(JoinError::MissingSid));
    }
}
