//! LiveKit's RoomService over Twirp: `POST /twirp/livekit.RoomService/<Method>` with a protobuf
//! or JSON body and `Authorization: Bearer <token>`; the answer in the same format; errors as
//! Twirp JSON `{code, msg}`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parloir_sfu::{ServiceCall, ServiceError, ServiceReply, proto};
use parloir_signal::Claims;
use parloir_signal::json::{self, Names};

use crate::http::AppState;

/// A Twirp error response.
#[derive(Debug)]
pub struct TwirpError {
    status: StatusCode,
    code: &'static str,
    msg: String,
}

impl TwirpError {
    fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Self {
        Self {
            status,
            code,
            msg: msg.into(),
        }
    }
}

impl IntoResponse for TwirpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "msg": self.msg, "meta": {} });
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Which grant a call needs.
enum Grant {
    Create,
    List,
    /// `roomAdmin` on this room.
    Admin(String),
}

pub async fn room_service(
    State(state): State<Arc<AppState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, TwirpError> {
    let claims = authenticate(&state, &headers)?;
    let format = body_format(&headers)?;
    let (call, grant) = decode(&method, &body, format)?;
    let allowed = match &grant {
        Grant::Create => claims.video.room_create,
        Grant::List => claims.video.room_list,
        Grant::Admin(room) => claims.video.room_admin && claims.video.room == *room,
    };
    if !allowed {
        let need = match grant {
            Grant::Create => "roomCreate".to_string(),
            Grant::List => "roomList".to_string(),
            Grant::Admin(room) => format!("roomAdmin for room {room:?}"),
        };
        return Err(TwirpError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("{method} needs the {need} grant"),
        ));
    }
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let result = state.media.call(call, unix_ms).await.map_err(|e| {
        TwirpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    match result {
        Ok(reply) => match format {
            Format::Protobuf => Ok((
                [(header::CONTENT_TYPE, "application/protobuf")],
                reply.encode(),
            )
                .into_response()),
            Format::Json => {
                let body = reply_json(&reply).map_err(|e| {
                    TwirpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?;
                Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
            }
        },
        Err(ServiceError::NotFound(msg)) => {
            Err(TwirpError::new(StatusCode::NOT_FOUND, "not_found", msg))
        }
        Err(e) => Err(TwirpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            e.to_string(),
        )),
    }
}

/// LiveKit's Egress service: `POST /twirp/livekit.Egress/<Method>`, with the `roomRecord`
/// grant, protobuf or JSON like the RoomService.
pub async fn egress_service(
    State(state): State<Arc<AppState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, TwirpError> {
    let claims = authenticate(&state, &headers)?;
    let format = body_format(&headers)?;
    if !claims.video.room_record {
        return Err(TwirpError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("{method} needs the roomRecord grant"),
        ));
    }
    let (request_type, response_type) = match method.as_str() {
        "StartRoomCompositeEgress" => ("livekit.RoomCompositeEgressRequest", "livekit.EgressInfo"),
        "StartParticipantEgress" => ("livekit.ParticipantEgressRequest", "livekit.EgressInfo"),
        "StartTrackEgress" => ("livekit.TrackEgressRequest", "livekit.EgressInfo"),
        "UpdateLayout" => ("livekit.UpdateLayoutRequest", "livekit.EgressInfo"),
        "StopEgress" => ("livekit.StopEgressRequest", "livekit.EgressInfo"),
        "ListEgress" => ("livekit.ListEgressRequest", "livekit.ListEgressResponse"),
        _ => ("", ""),
    };
    let bytes = match format {
        Format::Json if !request_type.is_empty() => json::json_to_protobuf(request_type, &body)
            .map_err(|e| TwirpError::new(StatusCode::BAD_REQUEST, "malformed", e.to_string()))?,
        _ => body.to_vec(),
    };
    let Some(egress) = state.egress.as_ref() else {
        return Err(TwirpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "recording is off on this server",
        ));
    };
    let reply = egress.call(&method, &bytes).await.map_err(|e| {
        let status = match e.code {
            "not_found" | "bad_route" => StatusCode::NOT_FOUND,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "failed_precondition" => StatusCode::PRECONDITION_FAILED,
            _ => StatusCode::BAD_REQUEST,
        };
        TwirpError::new(status, e.code, e.msg)
    })?;
    match format {
        Format::Protobuf => {
            Ok(([(header::CONTENT_TYPE, "application/protobuf")], reply).into_response())
        }
        Format::Json => {
            let body =
                json::protobuf_to_json(response_type, &reply, Names::Proto).map_err(|e| {
                    TwirpError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?;
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
    }
}

/// The body's format, from its content type.
fn body_format(headers: &HeaderMap) -> Result<Format, TwirpError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/protobuf")
        || content_type.starts_with("application/x-protobuf")
    {
        Ok(Format::Protobuf)
    } else if content_type.starts_with("application/json") {
        Ok(Format::Json)
    } else {
        Err(TwirpError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("content type {content_type:?}: send application/protobuf or application/json"),
        ))
    }
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Claims, TwirpError> {
    let unauthenticated =
        |msg: String| TwirpError::new(StatusCode::UNAUTHORIZED, "unauthenticated", msg);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthenticated("no authorization header".into()))?
        .to_str()
        .map_err(|_| unauthenticated("the authorization header is not text".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthenticated("authorization must be 'Bearer <token>'".into()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    state
        .keys
        .verify(token, now)
        .map_err(|e| unauthenticated(e.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

/// The JSON of a reply, with the `.proto` field names as Twirp writes them.
fn reply_json(reply: &ServiceReply) -> Result<Vec<u8>, json::JsonError> {
    match reply {
        ServiceReply::Room(m) => json::to_json("livekit.Room", m, Names::Proto),
        ServiceReply::Rooms(m) => json::to_json("livekit.ListRoomsResponse", m, Names::Proto),
        ServiceReply::Participants(m) => {
            json::to_json("livekit.ListParticipantsResponse", m, Names::Proto)
        }
        ServiceReply::Participant(m) => json::to_json("livekit.ParticipantInfo", m, Names::Proto),
        ServiceReply::Track(m) => json::to_json("livekit.MuteRoomTrackResponse", m, Names::Proto),
        _ => Ok(b"{}".to_vec()),
    }
}

/// Decodes the request of `method` and says which grant it needs.
fn decode(method: &str, body: &[u8], format: Format) -> Result<(ServiceCall, Grant), TwirpError> {
    let malformed = |e: String| TwirpError::new(StatusCode::BAD_REQUEST, "malformed", e);
    let parse = |type_name: &str| -> Result<Vec<u8>, TwirpError> {
        match format {
            Format::Protobuf => Ok(body.to_vec()),
            Format::Json => {
                json::json_to_protobuf(type_name, body).map_err(|e| malformed(e.to_string()))
            }
        }
    };
    fn typed<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, TwirpError> {
        M::decode(bytes).map_err(|e| {
            TwirpError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!("the body does not decode: {e}"),
            )
        })
    }
    let admin = |room: &str| Grant::Admin(room.to_string());
    Ok(match method {
        "CreateRoom" => (
            ServiceCall::CreateRoom(typed(&parse("livekit.CreateRoomRequest")?)?),
            Grant::Create,
        ),
        "ListRooms" => (
            ServiceCall::ListRooms(typed(&parse("livekit.ListRoomsRequest")?)?),
            Grant::List,
        ),
        "DeleteRoom" => (
            ServiceCall::DeleteRoom(typed(&parse("livekit.DeleteRoomRequest")?)?),
            Grant::Create,
        ),
        "ListParticipants" => {
            let r: proto::ListParticipantsRequest =
                typed(&parse("livekit.ListParticipantsRequest")?)?;
            let g = admin(&r.room);
            (ServiceCall::ListParticipants(r), g)
        }
        "GetParticipant" | "RemoveParticipant" => {
            let r: proto::RoomParticipantIdentity =
                typed(&parse("livekit.RoomParticipantIdentity")?)?;
            let g = admin(&r.room);
            if method == "GetParticipant" {
                (ServiceCall::GetParticipant(r), g)
            } else {
                (ServiceCall::RemoveParticipant(r), g)
            }
        }
        "MutePublishedTrack" => {
            let r: proto::MuteRoomTrackRequest = typed(&parse("livekit.MuteRoomTrackRequest")?)?;
            let g = admin(&r.room);
            (ServiceCall::MutePublishedTrack(r), g)
        }
        "UpdateParticipant" => {
            let r: proto::UpdateParticipantRequest =
                typed(&parse("livekit.UpdateParticipantRequest")?)?;
            let g = admin(&r.room);
            (ServiceCall::UpdateParticipant(r), g)
        }
        "UpdateSubscriptions" => {
            let r: proto::UpdateSubscriptionsRequest =
                typed(&parse("livekit.UpdateSubscriptionsRequest")?)?;
            let g = admin(&r.room);
            (ServiceCall::UpdateSubscriptions(r), g)
        }
        "SendData" => {
            let r: proto::SendDataRequest = typed(&parse("livekit.SendDataRequest")?)?;
            let g = admin(&r.room);
            (ServiceCall::SendData(r), g)
        }
        "UpdateRoomMetadata" => {
            let r: proto::UpdateRoomMetadataRequest =
                typed(&parse("livekit.UpdateRoomMetadataRequest")?)?;
            let g = admin(&r.room);
            (ServiceCall::UpdateRoomMetadata(r), g)
        }
        _ => {
            return Err(TwirpError::new(
                StatusCode::NOT_FOUND,
                "bad_route",
                format!("no method {method:?} on livekit.RoomService"),
            ));
        }
    })
}
