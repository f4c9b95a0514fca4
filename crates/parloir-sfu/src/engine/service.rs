//! LiveKit's RoomService, as calls on the SFU: what a back end asks (list, mute, remove, send
//! data, change metadata) and the answer, matched by the caller's request id.

use std::time::Instant;

use livekit_protocol as proto;
use prost::Message as _;

use str0m::media::KeyframeRequestKind;

use super::{Output, Sfu};
use crate::ids::SessionId;

/// One RoomService call. The caller has checked the grants.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "one short-lived value per back-end call"
)]
pub enum ServiceCall {
    CreateRoom(proto::CreateRoomRequest),
    ListRooms(proto::ListRoomsRequest),
    DeleteRoom(proto::DeleteRoomRequest),
    ListParticipants(proto::ListParticipantsRequest),
    GetParticipant(proto::RoomParticipantIdentity),
    RemoveParticipant(proto::RoomParticipantIdentity),
    MutePublishedTrack(proto::MuteRoomTrackRequest),
    UpdateParticipant(proto::UpdateParticipantRequest),
    UpdateSubscriptions(proto::UpdateSubscriptionsRequest),
    SendData(proto::SendDataRequest),
    UpdateRoomMetadata(proto::UpdateRoomMetadataRequest),
    /// Not a RoomService method: text from the speech plane, delivered as LiveKit agents
    /// deliver transcriptions.
    Subtitle(Subtitle),
    /// Not a RoomService method: a recording of `room` starts (`on`) or ends. While any runs,
    /// the room's media goes to the record tap and its `active_recording` is set (clients
    /// show that the meeting is recorded). Answered with the room, or NotFound.
    Record {
        room: String,
        on: bool,
    },
    /// Not a RoomService method: the quality a recording wants of a video track (the layer
    /// that fits its tile; dynacast keeps it on), and whether it needs a key frame now.
    RecordLayer {
        room: String,
        track_sid: String,
        quality: Option<u8>,
        keyframe: bool,
    },
}

/// Text of one utterance of a published microphone (interim, replaced by later ones with the
/// same `segment_id`, then final). The room gets it both ways livekit-client reads
/// transcriptions: a text stream on topic `lk.transcription` (attributes
/// `lk.transcribed_track_id`, `lk.segment_id`, `lk.transcription_final`), sent as the speaker
/// (as agents send a participant's transcription), and the legacy `Transcription` packet that
/// raises `RoomEvent.TranscriptionReceived`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Subtitle {
    pub room: String,
    /// The speaker.
    pub identity: String,
    pub track_sid: String,
    pub segment_id: String,
    pub text: String,
    pub is_final: bool,
    pub language: String,
    /// The utterance, in milliseconds since the track's audio started.
    pub start_ms: u64,
    pub end_ms: u64,
}

/// The topic of transcription text streams.
pub const TRANSCRIPTION_TOPIC: &str = "lk.transcription";

impl ServiceCall {
    /// The room the call is about; `None` for ListRooms, which is about all of them.
    pub fn room(&self) -> Option<&str> {
        Some(match self {
            ServiceCall::CreateRoom(r) => &r.name,
            ServiceCall::ListRooms(_) => return None,
            ServiceCall::DeleteRoom(r) => &r.room,
            ServiceCall::ListParticipants(r) => &r.room,
            ServiceCall::GetParticipant(r) => &r.room,
            ServiceCall::RemoveParticipant(r) => &r.room,
            ServiceCall::MutePublishedTrack(r) => &r.room,
            ServiceCall::UpdateParticipant(r) => &r.room,
            ServiceCall::UpdateSubscriptions(r) => &r.room,
            ServiceCall::SendData(r) => &r.room,
            ServiceCall::UpdateRoomMetadata(r) => &r.room,
            ServiceCall::Subtitle(r) => &r.room,
            ServiceCall::Record { room, .. } | ServiceCall::RecordLayer { room, .. } => room,
        })
    }
}

/// The answer to a [`ServiceCall`], ready to encode.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServiceReply {
    Room(proto::Room),
    Rooms(proto::ListRoomsResponse),
    Participants(proto::ListParticipantsResponse),
    Participant(proto::ParticipantInfo),
    Track(proto::MuteRoomTrackResponse),
    /// An empty response message (DeleteRoom, RemoveParticipant, UpdateSubscriptions, SendData).
    Empty,
}

impl ServiceReply {
    /// The protobuf encoding of the response message.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServiceReply::Room(m) => m.encode_to_vec(),
            ServiceReply::Rooms(m) => m.encode_to_vec(),
            ServiceReply::Participants(m) => m.encode_to_vec(),
            ServiceReply::Participant(m) => m.encode_to_vec(),
            ServiceReply::Track(m) => m.encode_to_vec(),
            ServiceReply::Empty => Vec::new(),
        }
    }
}

/// Why a call failed; maps to Twirp's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
}

impl Sfu {
    pub(super) fn service(&mut self, now: Instant, id: u64, call: ServiceCall, unix_ms: i64) {
        // In a room spanning media workers, the others get their share (`relay.rs`).
        let relays = self.call_relays(&call);
        let relayed = (!relays.is_empty()).then(|| call.clone());
        let result = Box::new(self.service_call(now, call, unix_ms));
        if let Some(call) = relayed
            && result.is_ok()
        {
            for to in relays {
                let call = Box::new(call.clone());
                self.push_relay(to, super::Relay::Call { call, unix_ms });
            }
        }
        self.out.push_back(Output::ServiceReply { id, result });
    }

    pub(super) fn service_call(
        &mut self,
        now: Instant,
        call: ServiceCall,
        unix_ms: i64,
    ) -> Result<ServiceReply, ServiceError> {
        match call {
            ServiceCall::CreateRoom(r) => {
                if r.name.is_empty() {
                    return Err(ServiceError::InvalidArgument(
                        "the room needs a name".into(),
                    ));
                }
                if !self.rooms.contains_key(&r.name) {
                    let room = self.new_room(now, &r.name, unix_ms);
                    self.insert_room(&r.name, room);
                    self.ensure_tick(now);
                }
                let room = self
                    .rooms
                    .get_mut(&r.name)
                    .ok_or_else(|| not_found(&r.name))?;
                if r.empty_timeout > 0 {
                    room.info.empty_timeout = r.empty_timeout;
                }
                if r.departure_timeout > 0 {
                    room.info.departure_timeout = r.departure_timeout;
                }
                room.info.max_participants = r.max_participants;
                if !r.metadata.is_empty() {
                    room.info.metadata = r.metadata;
                    room.apply_speech_metadata(self.config.speech_all_rooms);
                }
                Ok(ServiceReply::Room(room.info.clone()))
            }
            ServiceCall::ListRooms(r) => {
                let mut rooms: Vec<proto::Room> = self
                    .rooms
                    .values()
                    .filter(|room| r.names.is_empty() || r.names.contains(&room.info.name))
                    .map(|room| {
                        let mut info = room.info.clone();
                        info.num_participants = room.members.len() as u32;
                        info
                    })
                    .collect();
                rooms.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(ServiceReply::Rooms(proto::ListRoomsResponse { rooms }))
            }
            ServiceCall::DeleteRoom(r) => {
                let room = self.rooms.get(&r.room).ok_or_else(|| not_found(&r.room))?;
                for session in room.members.clone() {
                    self.leave(session, Some(proto::DisconnectReason::RoomDeleted));
                }
                if let Some(room) = self.rooms.remove(&r.room) {
                    if self.is_home(&r.room) {
                        self.webhook("room_finished", Some(room.info), None, None);
                    } else {
                        self.away.rooms -= 1;
                    }
                }
                Ok(ServiceReply::Empty)
            }
            ServiceCall::ListParticipants(r) => {
                let room = self.rooms.get(&r.room).ok_or_else(|| not_found(&r.room))?;
                let participants = room
                    .members
                    .iter()
                    .filter_map(|s| self.participants.get(s))
                    .map(|p| p.info.clone())
                    .collect();
                Ok(ServiceReply::Participants(
                    proto::ListParticipantsResponse { participants },
                ))
            }
            ServiceCall::GetParticipant(r) => {
                let session = self.find(&r.room, &r.identity)?;
                let info = self.participants.get(&session).map(|p| p.info.clone());
                info.map(ServiceReply::Participant)
                    .ok_or_else(|| not_found(&r.identity))
            }
            ServiceCall::RemoveParticipant(r) => {
                let session = self.find(&r.room, &r.identity)?;
                self.leave(session, Some(proto::DisconnectReason::ParticipantRemoved));
                Ok(ServiceReply::Empty)
            }
            ServiceCall::MutePublishedTrack(r) => {
                let session = self.find(&r.room, &r.identity)?;
                let owned = self
                    .tracks
                    .get(&r.track_sid)
                    .is_some_and(|t| t.publisher == session);
                if !owned {
                    return Err(not_found(&r.track_sid));
                }
                // The publisher is told (a remote mute) and everyone sees the new state.
                self.signal(
                    session,
                    proto::signal_response::Message::Mute(proto::MuteTrackRequest {
                        sid: r.track_sid.clone(),
                        muted: r.muted,
                    }),
                );
                self.mute(session, &r.track_sid, r.muted);
                let track = self.tracks.get(&r.track_sid).map(|t| t.info.clone());
                Ok(ServiceReply::Track(proto::MuteRoomTrackResponse { track }))
            }
            ServiceCall::UpdateParticipant(r) => {
                let session = self.find(&r.room, &r.identity)?;
                let p = self
                    .participants
                    .get_mut(&session)
                    .ok_or_else(|| not_found(&r.identity))?;
                if !r.name.is_empty() {
                    p.info.name = r.name;
                }
                if !r.metadata.is_empty() {
                    p.info.metadata = r.metadata;
                }
                for (k, v) in r.attributes {
                    if v.is_empty() {
                        p.info.attributes.remove(&k);
                    } else {
                        p.info.attributes.insert(k, v);
                    }
                }
                if let Some(permission) = r.permission {
                    p.info.permission = Some(permission);
                }
                p.info.version += 1;
                let info = p.info.clone();
                let room = p.room.clone();
                // The participant itself learns its new name and permissions too.
                self.broadcast_participant(&room, &info, None);
                Ok(ServiceReply::Participant(info))
            }
            ServiceCall::UpdateSubscriptions(r) => {
                let session = self.find(&r.room, &r.identity)?;
                let sids = r
                    .track_sids
                    .into_iter()
                    .chain(r.participant_tracks.into_iter().flat_map(|p| p.track_sids));
                for sid in sids {
                    if r.subscribe {
                        self.subscribe(session, &sid);
                    } else {
                        self.unsubscribe(session, &sid);
                    }
                }
                self.negotiate_subscriber(session);
                Ok(ServiceReply::Empty)
            }
            #[allow(deprecated, reason = "older back ends address data by participant sid")]
            ServiceCall::SendData(r) => {
                let room = self.rooms.get(&r.room).ok_or_else(|| not_found(&r.room))?;
                let kind = if r.kind == proto::data_packet::Kind::Lossy as i32 {
                    proto::data_packet::Kind::Lossy
                } else {
                    proto::data_packet::Kind::Reliable
                };
                #[allow(deprecated, reason = "clients before protocol 10 read kind")]
                let packet = proto::DataPacket {
                    kind: kind as i32,
                    destination_identities: r.destination_identities.clone(),
                    value: Some(proto::data_packet::Value::User(proto::UserPacket {
                        payload: r.data,
                        topic: r.topic,
                        nonce: r.nonce,
                        ..Default::default()
                    })),
                    ..Default::default()
                };
                let recipients: Vec<SessionId> = room
                    .members
                    .iter()
                    .copied()
                    .filter(|s| {
                        let Some(p) = self.participants.get(s) else {
                            return false;
                        };
                        (r.destination_identities.is_empty() && r.destination_sids.is_empty())
                            || r.destination_identities.contains(&p.info.identity)
                            || r.destination_sids.contains(&p.info.sid)
                    })
                    .collect();
                self.deliver_data(&recipients, kind, &packet.encode_to_vec());
                Ok(ServiceReply::Empty)
            }
            ServiceCall::Subtitle(sub) => {
                let room = self
                    .rooms
                    .get(&sub.room)
                    .ok_or_else(|| not_found(&sub.room))?;
                let members = room.members.clone();
                let speaker_sid = self
                    .find(&sub.room, &sub.identity)
                    .ok()
                    .and_then(|s| self.participants.get(&s))
                    .map(|p| p.info.sid.clone())
                    .unwrap_or_default();
                self.subtitle_serial += 1;
                for packet in subtitle_packets(&sub, &speaker_sid, unix_ms, self.subtitle_serial) {
                    self.deliver_data(&members, proto::data_packet::Kind::Reliable, &packet);
                }
                Ok(ServiceReply::Empty)
            }
            ServiceCall::Record { room, on } => {
                let r = self.rooms.get_mut(&room).ok_or_else(|| not_found(&room))?;
                r.recorders = if on {
                    r.recorders + 1
                } else {
                    r.recorders.saturating_sub(1)
                };
                let recording = r.recorders > 0;
                if r.info.active_recording == recording {
                    return Ok(ServiceReply::Room(r.info.clone()));
                }
                r.info.active_recording = recording;
                let info = r.info.clone();
                let members = r.members.clone();
                if !recording {
                    for track in self.tracks.values_mut() {
                        if members.contains(&track.publisher) {
                            track.record_quality = None;
                        }
                    }
                }
                self.room_update(members, &info);
                Ok(ServiceReply::Room(info))
            }
            ServiceCall::RecordLayer {
                room,
                track_sid,
                quality,
                keyframe,
            } => {
                let track = self
                    .tracks
                    .get_mut(&track_sid)
                    .filter(|t| {
                        self.participants
                            .get(&t.publisher)
                            .is_some_and(|p| p.room == room)
                    })
                    .ok_or_else(|| not_found(&track_sid))?;
                track.record_quality = quality;
                if keyframe {
                    let rid = quality.and_then(|q| track.layers.choose(q, now));
                    self.request_keyframe(now, &track_sid, rid, KeyframeRequestKind::Pli);
                }
                Ok(ServiceReply::Empty)
            }
            ServiceCall::UpdateRoomMetadata(r) => {
                let room = self
                    .rooms
                    .get_mut(&r.room)
                    .ok_or_else(|| not_found(&r.room))?;
                room.info.metadata = r.metadata;
                room.apply_speech_metadata(self.config.speech_all_rooms);
                let info = room.info.clone();
                let members = room.members.clone();
                self.room_update(members, &info);
                Ok(ServiceReply::Room(info))
            }
        }
    }

    /// Tells `members` the room's new state (RoomUpdate).
    pub(super) fn room_update(&mut self, members: Vec<SessionId>, info: &proto::Room) {
        for s in members {
            let update = proto::RoomUpdate {
                room: Some(info.clone()),
            };
            self.signal(s, proto::signal_response::Message::RoomUpdate(update));
        }
    }

    /// The session of `identity` in `room`.
    fn find(&self, room: &str, identity: &str) -> Result<SessionId, ServiceError> {
        let r = self.rooms.get(room).ok_or_else(|| not_found(room))?;
        r.members
            .iter()
            .copied()
            .find(|s| {
                self.participants
                    .get(s)
                    .is_some_and(|p| p.info.identity == identity)
            })
            .ok_or_else(|| {
                ServiceError::NotFound(format!("participant {identity:?} is not in room {room:?}"))
            })
    }
}

fn not_found(what: &str) -> ServiceError {
    ServiceError::NotFound(format!("{what:?} does not exist"))
}

/// The encoded packets of a [`Subtitle`]: the legacy Transcription packet, then a text stream
/// (header, one chunk, trailer). Sequence 0: clients apply no duplicate check to it.
#[allow(deprecated, reason = "clients before protocol 10 read kind")]
fn subtitle_packets(sub: &Subtitle, speaker_sid: &str, unix_ms: i64, serial: u64) -> Vec<Vec<u8>> {
    use proto::data_packet::Value;
    use proto::data_stream;
    let packet = |value: Value| proto::DataPacket {
        kind: proto::data_packet::Kind::Reliable as i32,
        participant_identity: sub.identity.clone(),
        participant_sid: speaker_sid.to_string(),
        value: Some(value),
        ..Default::default()
    };
    let legacy = packet(Value::Transcription(proto::Transcription {
        transcribed_participant_identity: sub.identity.clone(),
        track_id: sub.track_sid.clone(),
        segments: vec![proto::TranscriptionSegment {
            id: sub.segment_id.clone(),
            text: sub.text.clone(),
            start_time: sub.start_ms,
            end_time: sub.end_ms,
            r#final: sub.is_final,
            language: sub.language.clone(),
        }],
    }));
    // One stream per update, each carrying the whole text so far, as agents send a
    // participant's transcription; readers replace by lk.segment_id.
    let stream_id = format!("TS_{}_{serial}", sub.segment_id);
    let attributes = [
        ("lk.transcribed_track_id", sub.track_sid.clone()),
        ("lk.segment_id", sub.segment_id.clone()),
        ("lk.transcription_final", sub.is_final.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let header = packet(Value::StreamHeader(data_stream::Header {
        stream_id: stream_id.clone(),
        timestamp: unix_ms,
        topic: TRANSCRIPTION_TOPIC.to_string(),
        mime_type: "text/plain".to_string(),
        total_length: Some(sub.text.len() as u64),
        attributes,
        content_header: Some(data_stream::header::ContentHeader::TextHeader(
            data_stream::TextHeader {
                operation_type: data_stream::OperationType::Create as i32,
                ..Default::default()
            },
        )),
        ..Default::default()
    }));
    let chunk = packet(Value::StreamChunk(data_stream::Chunk {
        stream_id: stream_id.clone(),
        chunk_index: 0,
        content: sub.text.as_bytes().to_vec(),
        ..Default::default()
    }));
    let trailer = packet(Value::StreamTrailer(data_stream::Trailer {
        stream_id,
        ..Default::default()
    }));
    [legacy, header, chunk, trailer]
        .iter()
        .map(|p| p.encode_to_vec())
        .collect()
}
