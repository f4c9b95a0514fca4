//! The protobuf JSON mapping of LiveKit's messages, for Twirp JSON bodies (what the Node server
//! SDK sends) and webhook payloads (LiveKit posts protojson). The Rust types have no serde
//! support, so messages travel through a `DynamicMessage` built from the vendored `.proto`
//! descriptors (see `proto/README.md`).

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/livekit.fds")).as_ref())
        .map_err(|e| e.to_string())
});

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    #[error("no message type {0} is known")]
    UnknownType(String),
    #[error("the LiveKit descriptors do not load: {0}")]
    Descriptors(String),
    #[error("not a valid {type_name} in JSON: {reason}")]
    Invalid { type_name: String, reason: String },
}

/// How names are written: Twirp answers with the `.proto` field names, webhooks use protojson's
/// lowerCamelCase names. Both omit fields at their default value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    Proto,
    Camel,
}

/// Parses `json` as the message `type_name` (e.g. `livekit.ListRoomsRequest`). Field names may
/// be the `.proto` ones or their lowerCamelCase JSON names; unknown fields are ignored.
pub fn from_json<M: prost::Message + Default>(
    type_name: &str,
    json: &[u8],
) -> Result<M, JsonError> {
    let bytes = json_to_protobuf(type_name, json)?;
    M::decode(bytes.as_slice()).map_err(|e| JsonError::Invalid {
        type_name: type_name.to_string(),
        reason: e.to_string(),
    })
}

/// Parses `json` as the message `type_name` and returns its protobuf encoding.
pub fn json_to_protobuf(type_name: &str, json: &[u8]) -> Result<Vec<u8>, JsonError> {
    let invalid = |reason: String| JsonError::Invalid {
        type_name: type_name.to_string(),
        reason,
    };
    let desc = descriptor(type_name)?;
    let mut de = serde_json::Deserializer::from_slice(json);
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let message = DynamicMessage::deserialize_with_options(desc, &mut de, &options)
        .map_err(|e| invalid(e.to_string()))?;
    de.end().map_err(|e| invalid(e.to_string()))?;
    Ok(prost::Message::encode_to_vec(&message))
}

/// Writes `message`, of type `type_name`, as JSON.
pub fn to_json<M: prost::Message>(
    type_name: &str,
    message: &M,
    names: Names,
) -> Result<Vec<u8>, JsonError> {
    protobuf_to_json(type_name, &message.encode_to_vec(), names)
}

/// Writes the protobuf encoding of a `type_name` message as JSON.
pub fn protobuf_to_json(type_name: &str, bytes: &[u8], names: Names) -> Result<Vec<u8>, JsonError> {
    let desc = descriptor(type_name)?;
    let dynamic = DynamicMessage::decode(desc, bytes).map_err(|e| JsonError::Invalid {
        type_name: type_name.to_string(),
        reason: e.to_string(),
    })?;
    let options = SerializeOptions::new()
        .use_proto_field_name(names == Names::Proto)
        .skip_default_fields(true);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    dynamic
        .serialize_with_options(&mut ser, &options)
        .map_err(|e| JsonError::Invalid {
            type_name: type_name.to_string(),
            reason: e.to_string(),
        })?;
    Ok(out)
}

fn descriptor(type_name: &str) -> Result<prost_reflect::MessageDescriptor, JsonError> {
    let pool = POOL
        .as_ref()
        .map_err(|e| JsonError::Descriptors(e.clone()))?;
    pool.get_message_by_name(type_name)
        .ok_or_else(|| JsonError::UnknownType(type_name.to_string()))
}

#[cfg(test)]
mod tests {
    use livekit_protocol as proto;

    use super::*;

    #[test]
    fn requests_in_either_naming() {
        let r: proto::UpdateParticipantRequest = from_json(
            "livekit.UpdateParticipantRequest",
            br#"{"room":"r","identity":"a","name":"Ann","attributes":{"handRaisedAt":"1"},"permission":{"canPublish":true,"can_subscribe":true}}"#,
        )
        .unwrap();
        assert_eq!(
            (r.room.as_str(), r.identity.as_str(), r.name.as_str()),
            ("r", "a", "Ann")
        );
        assert_eq!(r.attributes["handRaisedAt"], "1");
        let p = r.permission.unwrap();
        assert!(p.can_publish && p.can_subscribe);
        let unknown: proto::ListRoomsRequest = from_json(
            "livekit.ListRoomsRequest",
            br#"{"names":["x"],"futureField":1}"#,
        )
        .unwrap();
        assert_eq!(unknown.names, ["x"]);
    }

    #[test]
    fn bad_json_is_an_error() {
        for body in [&b"{"[..], b"[]", br#"{"room": 5}"#, b"{} trailing"] {
            assert!(
                from_json::<proto::ListParticipantsRequest>(
                    "livekit.ListParticipantsRequest",
                    body
                )
                .is_err()
            );
        }
        assert!(matches!(
            from_json::<proto::ListRoomsRequest>("livekit.Nope", b"{}"),
            Err(JsonError::UnknownType(_))
        ));
    }

    #[test]
    fn protojson_of_a_webhook_event() {
        let event = proto::WebhookEvent {
            event: "participant_joined".into(),
            room: Some(proto::Room {
                sid: "RM_x".into(),
                name: "r".into(),
                creation_time: 1_700_000_000,
                ..Default::default()
            }),
            participant: Some(proto::ParticipantInfo {
                identity: "a".into(),
                state: proto::participant_info::State::Active as i32,
                ..Default::default()
            }),
            created_at: 1_700_000_001,
            ..Default::default()
        };
        let json: serde_json::Value =
            serde_json::from_slice(&to_json("livekit.WebhookEvent", &event, Names::Camel).unwrap())
                .unwrap();
        assert_eq!(json["event"], "participant_joined");
        assert_eq!(
            json["room"]["creationTime"], "1700000000",
            "int64 as a string"
        );
        assert_eq!(json["participant"]["state"], "ACTIVE", "enums by name");
        assert_eq!(json["createdAt"], "1700000001");
        assert!(
            json["room"].get("emptyTimeout").is_none(),
            "defaults are left out"
        );
        let twirp: serde_json::Value = serde_json::from_slice(
            &to_json("livekit.Room", event.room.as_ref().unwrap(), Names::Proto).unwrap(),
        )
        .unwrap();
        assert_eq!(twirp["creation_time"], "1700000000");
    }
}
