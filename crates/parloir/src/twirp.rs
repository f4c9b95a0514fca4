//! LiveKit's RoomService over Twirp: `POST /twirp/livekit.RoomService/<Method>` with a protobuf
//! body and `Authorization: Bearer <token>`; errors as Twirp JSON `{code, msg}`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parloir_sfu::{ServiceCall, ServiceError, proto};
use parloir_signal::Claims;

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
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/protobuf")
        && !content_type.starts_with("application/x-protobuf")
    {
        return Err(TwirpError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("content type {content_type:?} is not served; send application/protobuf"),
        ));
    }
    let (call, grant) = decode(&method, &body)?;
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
        Ok(reply) => Ok((
            [(header::CONTENT_TYPE, "application/protobuf")],
            reply.encode(),
        )
            .into_response()),
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

fn decode(method: &str, body: &[u8]) -> Result<(ServiceCall, Grant), TwirpError> {
    fn parse<M: prost::Message + Default>(body: &[u8]) -> Result<M, TwirpError> {
        M::decode(body).map_err(|e| {
            TwirpError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!("the body does not decode: {e}"),
            )
        })
    }
    let admin = |room: &str| Grant::Admin(room.to_string());
    Ok(match method {
        "CreateRoom" => (ServiceCall::CreateRoom(parse(body)?), Grant::Create),
        "ListRooms" => (ServiceCall::ListRooms(parse(body)?), Grant::List),
        "DeleteRoom" => (ServiceCall::DeleteRoom(parse(body)?), Grant::Create),
        "ListParticipants" => {
            let r: proto::ListParticipantsRequest = parse(body)?;
            let g = admin(&r.room);
            (ServiceCall::ListParticipants(r), g)
        }
        "GetParticipant" | "RemoveParticipant" => {
            let r: proto::RoomParticipantIdentity = parse(body)?;
            let g = admin(&r.room);
            if method == "GetParticipant" {
                (ServiceCall::GetParticipant(r), g)
            } else {
                (ServiceCall::RemoveParticipant(r), g)
            }
        }
        "MutePublishedTrack" => {
            let r: proto::MuteRoomTrackRequest = parse(body)?;
            let g = admin(&r.room);
            (ServiceCall::MutePublishedTrack(r), g)
        }
        "UpdateParticipant" => {
            let r: proto::UpdateParticipantRequest = parse(body)?;
            let g = admin(&r.room);
            (ServiceCall::UpdateParticipant(r), g)
        }
        "UpdateSubscriptions" => {
            let r: proto::UpdateSubscriptionsRequest = parse(body)?;
            let g = admin(&r.room);
            (ServiceCall::UpdateSubscriptions(r), g)
        }
        "SendData" => {
            let r: proto::SendDataRequest = parse(body)?;
            let g = admin(&r.room);
            (ServiceCall::SendData(r), g)
        }
        "UpdateRoomMetadata" => {
            let r: proto::UpdateRoomMetadataRequest = parse(body)?;
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
