//! LiveKit access tokens: HS256 JSON Web Tokens signed with the API secret.
//!
//! Claims follow LiveKit's `auth/grants.go`: `iss` is the API key, `sub` the identity, `video`
//! the room grants. `canPublish`, `canSubscribe` and `canPublishData` default to true when
//! absent, as LiveKit's server treats them.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Why a token was refused. Every variant maps to HTTP 401 at the edge.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    #[error("no access token was given")]
    Missing,
    #[error("the access token is not a JSON Web Token")]
    Malformed,
    #[error("the access token uses algorithm {0:?}; only HS256 is accepted")]
    Algorithm(String),
    #[error("the access token names an unknown API key")]
    UnknownKey,
    #[error("the access token's signature does not match")]
    Signature,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the access token has no expiry")]
    NoExpiry,
}

/// The `video` grant of a LiveKit token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VideoGrant {
    #[serde(skip_serializing_if = "is_false")]
    pub room_create: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub room_list: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub room_record: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub room_admin: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub room_join: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub room: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub can_publish_sources: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_update_own_metadata: Option<bool>,
    #[serde(skip_serializing_if = "is_false")]
    pub hidden: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub recorder: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub agent: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_room: String,
}

impl VideoGrant {
    pub fn can_publish(&self) -> bool {
        self.can_publish.unwrap_or(true)
    }
    pub fn can_subscribe(&self) -> bool {
        self.can_subscribe.unwrap_or(true)
    }
    pub fn can_publish_data(&self) -> bool {
        self.can_publish_data.unwrap_or(true)
    }
    pub fn can_update_own_metadata(&self) -> bool {
        self.can_update_own_metadata.unwrap_or(false)
    }
}

/// The claims of a LiveKit access token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Claims {
    pub iss: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub jti: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub attributes: HashMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    pub video: VideoGrant,
}

impl Claims {
    /// The identity the token grants (`sub`).
    pub fn identity(&self) -> &str {
        &self.sub
    }
}

/// API keys and their secrets; verifies and signs tokens.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    secrets: HashMap<String, String>,
}

/// Clock skew tolerated on `nbf` and `exp`, in seconds.
const LEEWAY_S: i64 = 10;

impl KeyRing {
    pub fn new(keys: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            secrets: keys.into_iter().collect(),
        }
    }

    /// The API keys, in no particular order.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }

    /// Verifies `token` at `now_unix` (seconds) and returns its claims.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Claims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = decode_json(header)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm(header.alg));
        }
        let claims: Claims = decode_json(payload)?;
        let secret = self
            .secrets
            .get(&claims.iss)
            .ok_or(TokenError::UnknownKey)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = hmac_for(secret);
        mac.update(&token.as_bytes()[..header_and_payload_len(token)]);
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Signature)?;
        let exp = claims.exp.ok_or(TokenError::NoExpiry)?;
        if now_unix > exp + LEEWAY_S {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.nbf
            && now_unix + LEEWAY_S < nbf
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// Signs `claims` with the secret of `claims.iss`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let secret = self
            .secrets
            .get(&claims.iss)
            .ok_or(TokenError::UnknownKey)?;
        Ok(sign_hs256(claims, secret))
    }
}

/// Signs any serialisable claims as an HS256 JWT.
pub fn sign_hs256<C: Serialize>(claims: &C, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    // Serialising plain structs of strings, numbers and maps cannot fail.
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{payload}");
    let mut mac = hmac_for(secret);
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn hmac_for(secret: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; `new_from_slice` only fails for fixed-size MACs.
    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length")
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        KeyRing::new([("devkey".to_string(), "secret".to_string())])
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: "devkey".into(),
            sub: "alice".into(),
            exp: Some(exp),
            nbf: Some(0),
            video: VideoGrant {
                room_join: true,
                room: "r1".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let token = ring().sign(&claims(1000)).unwrap();
        let back = ring().verify(&token, 500).unwrap();
        assert_eq!(back.identity(), "alice");
        assert!(back.video.room_join);
        assert!(back.video.can_publish(), "absent canPublish means true");
    }

    #[test]
    fn refuses_bad_tokens() {
        let token = ring().sign(&claims(1000)).unwrap();
        assert_eq!(ring().verify(&token, 2000), Err(TokenError::Expired));
        let other = KeyRing::new([("devkey".to_string(), "other".to_string())]);
        assert_eq!(other.verify(&token, 500), Err(TokenError::Signature));
        assert_eq!(ring().verify("", 0), Err(TokenError::Missing));
        assert_eq!(ring().verify("a.b", 0), Err(TokenError::Malformed));
        assert_eq!(ring().verify("a.b.c", 0), Err(TokenError::Malformed));
        let mut tampered = token.clone();
        tampered.insert(tampered.find('.').unwrap() + 3, 'x');
        assert!(ring().verify(&tampered, 500).is_err());
        let unknown = KeyRing::new([("k2".to_string(), "secret".to_string())]);
        assert_eq!(unknown.verify(&token, 500), Err(TokenError::UnknownKey));
        let mut no_exp = claims(0);
        no_exp.exp = None;
        let t = ring().sign(&no_exp).unwrap();
        assert_eq!(ring().verify(&t, 0), Err(TokenError::NoExpiry));
    }

    #[test]
    fn reads_livekit_sdk_tokens() {
        // Claims as livekit-server-sdk writes them (camelCase grants).
        let json = r#"{"video":{"roomJoin":true,"room":"r","canPublish":false},"iss":"devkey","sub":"bob","exp":99,"nbf":1,"name":"Bob","metadata":"m"}"#;
        let token = sign_hs256(
            &serde_json::from_str::<serde_json::Value>(json).unwrap(),
            "secret",
        );
        let c = ring().verify(&token, 50).unwrap();
        assert_eq!(c.name, "Bob");
        assert!(!c.video.can_publish());
        assert!(c.video.can_subscribe());
    }
}
