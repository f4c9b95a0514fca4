//! Rooms spanning media workers.
//!
//! Each media worker runs its own [`Sfu`]. A participant's peer connections live on one
//! worker, chosen by the caller (by load, once a room has outgrown its home worker); a room
//! then exists on every worker that holds participants of it. Each of those workers keeps a
//! *mirror* of every participant of the others: its `ParticipantInfo` and tracks, without peers
//! or a signal session. Local participants see mirrors as any other participant (join
//! responses, updates, subscriptions, speakers), and subscribe to a mirror's tracks as to any
//! other.
//!
//! Workers keep each other up to date with [`Relay`] messages ([`Output::Relay`] out,
//! [`Sfu::handle_relay`] in; the caller carries them between threads):
//! - a participant who joins is announced to every other worker (`hello`): those holding the
//!   room answer with their own participants, and from then on they share the room (its
//!   `span`); later changes (tracks, mute, name, metadata) and departures go to the span;
//! - the frames of a track go to the workers whose participants subscribe to it, every frame
//!   and every layer: each worker picks its subscribers' layers as for local tracks;
//! - back to the publisher's worker: whether a worker has subscribers and the highest quality
//!   they want (dynacast counts them), and key frame requests;
//! - data packets of the room, and RoomService calls that concern the whole room or a
//!   participant of another worker.
//!
//! A room's home worker ([`home_worker`]) announces it by webhook and gives it its sid; a
//! participant's webhooks come from its own worker.

use std::sync::Arc;
use std::time::Instant;

use livekit_protocol as proto;
use str0m::media::{KeyframeRequestKind, MediaData, Rid};

use super::{OFFER_MLINES_PER_CALL, Output, Participant, ServiceCall, Sfu, Track, is_hidden};
use crate::ids::{FastMap, SessionId};

/// What one media worker tells another about a room both hold participants of.
#[derive(Debug)]
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "frames dominate, and they are the large variant"
)]
pub enum Relay {
    /// A participant of the sending worker, as it is now (joined, changed, or introduced).
    /// With `hello` the sender has just seen it join and asks for the receiver's participants
    /// of the room in return.
    Participant {
        room: proto::Room,
        session: SessionId,
        info: proto::ParticipantInfo,
        hello: bool,
    },
    /// The sending worker holds participants of `room` (its answer to a `hello`, with or
    /// without participants of its own): from the home worker, the room's sid, settings,
    /// metadata and recording state.
    Room { room: proto::Room },
    /// A participant of the sending worker left.
    Left { session: SessionId },
    /// A participant of the receiving worker is replaced by a newer session of its identity.
    Evict { session: SessionId },
    /// A frame of a track published on the sending worker.
    Media { track: Arc<str>, data: MediaData },
    /// For a track published on the receiving worker: whether the sender has subscribers of
    /// it, and the highest quality they want.
    Wants {
        track: String,
        subscribed: bool,
        quality: Option<u8>,
    },
    /// A key frame request for a track published on the receiving worker.
    Keyframe {
        track: String,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
    },
    /// A data packet (encoded) from `sender` for the receiver's participants of `room`: those
    /// named, or all.
    Data {
        room: String,
        sender: SessionId,
        kind: proto::data_packet::Kind,
        destinations: Vec<String>,
        encoded: Vec<u8>,
    },
    /// A RoomService call the sender answered, for the receiver's share of it.
    Call {
        call: Box<ServiceCall>,
        unix_ms: i64,
    },
}

/// The worker a room belongs to, among `workers`: it holds the room's first participants and
/// announces it. FNV-1a of the name, stable across runs and processes.
pub fn home_worker(room: &str, workers: usize) -> usize {
    let hash = room.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % workers.max(1) as u64) as usize
}

impl Sfu {
    /// Handles a message from media worker `from` (see the module documentation).
    pub fn handle_relay(&mut self, now: Instant, from: u16, relay: Relay) {
        self.now = now;
        self.offer_budget = OFFER_MLINES_PER_CALL;
        match relay {
            Relay::Participant {
                room,
                session,
                info,
                hello,
            } => self.mirror(now, from, room, session, info, hello),
            Relay::Room { room } => {
                self.share_room(from, room);
            }
            Relay::Left { session } => {
                if self
                    .participants
                    .get(&session)
                    .is_some_and(|p| p.remote == Some(from))
                {
                    self.leave(session, None);
                }
            }
            Relay::Evict { session } => {
                if self
                    .participants
                    .get(&session)
                    .is_some_and(|p| p.remote.is_none())
                {
                    self.leave(session, Some(proto::DisconnectReason::DuplicateIdentity));
                }
            }
            Relay::Media { track, data } => {
                if self
                    .tracks
                    .get(&*track)
                    .is_some_and(|t| t.remote == Some(from))
                {
                    self.stats.frames_relayed_in += 1;
                    self.forward_track(now, track, None, data);
                }
            }
            Relay::Wants {
                track,
                subscribed,
                quality,
            } => {
                if let Some(t) = self.tracks.get_mut(&track).filter(|t| t.remote.is_none()) {
                    t.relays.retain(|(w, _)| *w != from);
                    if subscribed {
                        t.relays.push((from, quality));
                    }
                }
            }
            Relay::Keyframe { track, rid, kind } => {
                if self.tracks.get(&track).is_some_and(|t| t.remote.is_none()) {
                    self.request_keyframe(now, &track, rid, kind);
                }
            }
            Relay::Data {
                room,
                sender,
                kind,
                destinations,
                encoded,
            } => {
                let recipients: Vec<SessionId> = self
                    .rooms
                    .get(&room)
                    .map(|r| r.members.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .copied()
                    .filter(|s| *s != sender)
                    .filter(|s| {
                        self.participants.get(s).is_some_and(|p| {
                            p.remote.is_none()
                                && (destinations.is_empty()
                                    || destinations.contains(&p.info.identity))
                        })
                    })
                    .collect();
                self.deliver_data(&recipients, kind, &encoded);
            }
            Relay::Call { call, unix_ms } => {
                if let Err(e) = self.service_call(now, *call, unix_ms) {
                    tracing::debug!("relayed call: {e}");
                }
            }
        }
        self.run(now);
    }

    /// Whether this worker is `room`'s home (always, with one worker).
    pub(super) fn is_home(&self, room: &str) -> bool {
        home_worker(room, usize::from(self.config.workers)) == usize::from(self.config.worker)
    }

    pub(super) fn push_relay(&mut self, to: u16, relay: Relay) {
        self.stats.relays_out += 1;
        self.out.push_back(Output::Relay {
            to,
            relay: Box::new(relay),
        });
    }

    /// Announces local participant `session`, who just joined `room`, to the workers that do
    /// not share the room yet (those that do heard of it from `broadcast_participant`).
    pub(super) fn hello(&mut self, room: &str, session: SessionId) {
        if self.config.workers < 2 {
            return;
        }
        let span = self
            .rooms
            .get(room)
            .map(|r| r.span.clone())
            .unwrap_or_default();
        let Some(info) = self.participants.get(&session).map(|p| p.info.clone()) else {
            return;
        };
        let me = self.config.worker;
        for w in (0..self.config.workers).filter(|w| *w != me && !span.contains(w)) {
            self.relay_participant(room, session, &info, true, Some(w));
        }
    }

    /// Tells worker `to`, or every worker the room spans, about local participant `session`.
    pub(super) fn relay_participant(
        &mut self,
        room: &str,
        session: SessionId,
        info: &proto::ParticipantInfo,
        hello: bool,
        to: Option<u16>,
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let workers = match to {
            Some(w) => vec![w],
            None => r.span.clone(),
        };
        let room_info = r.info.clone();
        for w in workers {
            let relay = Relay::Participant {
                room: room_info.clone(),
                session,
                info: info.clone(),
                hello,
            };
            self.push_relay(w, relay);
        }
    }

    /// Tells the workers of `room` that local participant `session` left.
    pub(super) fn relay_left(&mut self, room: &str, session: SessionId) {
        let span = self
            .rooms
            .get(room)
            .map(|r| r.span.clone())
            .unwrap_or_default();
        for w in span {
            self.push_relay(w, Relay::Left { session });
        }
    }

    /// The workers a RoomService call answered here also goes to: every other worker of the
    /// room for what concerns the whole room; the worker of a mirrored participant or track
    /// for what concerns it (a mirror answers for it here, and its worker acts).
    pub(super) fn call_relays(&self, call: &ServiceCall) -> Vec<u16> {
        let Some(room) = call.room() else {
            return Vec::new();
        };
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        if r.span.is_empty() {
            return Vec::new();
        }
        let mirror_of = |identity: &str| {
            r.members
                .iter()
                .filter_map(|s| self.participants.get(s))
                .find(|p| p.info.identity == identity)
                .and_then(|p| p.remote)
        };
        let worker = match call {
            ServiceCall::CreateRoom(_)
            | ServiceCall::DeleteRoom(_)
            | ServiceCall::SendData(_)
            | ServiceCall::Subtitle(_)
            | ServiceCall::Record { .. }
            | ServiceCall::UpdateRoomMetadata(_) => return r.span.clone(),
            ServiceCall::RemoveParticipant(p) => mirror_of(&p.identity),
            ServiceCall::MutePublishedTrack(p) => mirror_of(&p.identity),
            ServiceCall::UpdateParticipant(p) => mirror_of(&p.identity),
            ServiceCall::UpdateSubscriptions(p) => mirror_of(&p.identity),
            ServiceCall::RecordLayer { track_sid, .. } => {
                self.tracks.get(track_sid).and_then(|t| t.remote)
            }
            ServiceCall::ListRooms(_)
            | ServiceCall::ListParticipants(_)
            | ServiceCall::GetParticipant(_) => None,
        };
        worker.into_iter().collect()
    }

    /// Worker `from` holds participants of a room this one holds too: it joins the room's
    /// span, and from the home worker the room's sid, settings, metadata and recording state
    /// are adopted. Whether the room is here.
    fn share_room(&mut self, from: u16, room_info: proto::Room) -> bool {
        let room_name = room_info.name.clone();
        let adopt = usize::from(from) == home_worker(&room_name, usize::from(self.config.workers))
            && !self.is_home(&room_name);
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return false;
        };
        if !room.span.contains(&from) {
            room.span.push(from);
            tracing::info!(room = %room_name, worker = from, "room shared with another media worker");
        }
        if adopt {
            // A recording under way records this worker's participants too.
            room.recorders = match room_info.active_recording {
                true => room.recorders.max(1),
                false => 0,
            };
            let mut adopted = room_info;
            adopted.num_participants = room.info.num_participants;
            adopted.num_publishers = room.info.num_publishers;
            if adopted != room.info {
                let metadata_changed = adopted.metadata != room.info.metadata;
                room.info = adopted;
                if metadata_changed {
                    room.apply_speech_metadata(self.config.speech_all_rooms);
                }
                let (members, info) = (room.members.clone(), room.info.clone());
                self.room_update(members, &info);
            }
        }
        true
    }

    /// A participant of worker `from`: added as a mirror, or its mirror brought up to date.
    fn mirror(
        &mut self,
        now: Instant,
        from: u16,
        room_info: proto::Room,
        session: SessionId,
        info: proto::ParticipantInfo,
        hello: bool,
    ) {
        let room_name = room_info.name.clone();
        if !self.share_room(from, room_info) {
            // No participant of the room here: nothing to share.
            return;
        }
        if hello {
            // Answer with the room as it is here, and this worker's participants of it.
            if let Some(info) = self.rooms.get(&room_name).map(|r| r.info.clone()) {
                self.push_relay(from, Relay::Room { room: info });
            }
            let locals: Vec<(SessionId, proto::ParticipantInfo)> = self
                .rooms
                .get(&room_name)
                .map(|r| r.members.as_slice())
                .unwrap_or_default()
                .iter()
                .filter_map(|s| self.participants.get(s).map(|p| (*s, p)))
                .filter(|(_, p)| p.remote.is_none())
                .map(|(s, p)| (s, p.info.clone()))
                .collect();
            for (s, i) in locals {
                self.relay_participant(&room_name, s, &i, false, Some(from));
            }
        }
        let tracks_before: Vec<String> = match self.participants.get_mut(&session) {
            Some(p) if p.remote == Some(from) => {
                // An older state, or the one a RoomService call answered here already applied
                // to the mirror (its worker acts, and relays the same state back).
                if info.version < p.info.version || info == p.info {
                    return;
                }
                let before = p.info.tracks.iter().map(|t| t.sid.clone()).collect();
                p.info = info.clone();
                before
            }
            Some(_) => return,
            None => {
                self.away.participants += 1;
                self.participants.insert(
                    session,
                    Participant {
                        info: info.clone(),
                        room: room_name.clone(),
                        auto_subscribe: false,
                        publisher: None,
                        subscriber: None,
                        pending: Default::default(),
                        settings: FastMap::default(),
                        resume_by: None,
                        remote: Some(from),
                    },
                );
                if let Some(room) = self.rooms.get_mut(&room_name) {
                    room.members.push(session);
                    room.counts_changed = true;
                    room.empty_since = None;
                    room.ever_joined = true;
                }
                self.ensure_tick(now);
                Vec::new()
            }
        };
        // Tracks gone, changed and new.
        let mut removed = false;
        for sid in &tracks_before {
            if !info.tracks.iter().any(|t| &t.sid == sid) {
                self.remove_track(sid);
                removed = true;
            }
        }
        let mut new_tracks = Vec::new();
        for t in &info.tracks {
            match self.tracks.get_mut(&t.sid) {
                Some(track) if track.remote == Some(from) => {
                    track.info = t.clone();
                    // The layers announced may have changed (and with them what its
                    // subscribers here want of it).
                    track.changed();
                }
                Some(_) => {}
                None => {
                    self.away.tracks += 1;
                    self.tracks.insert(
                        t.sid.clone(),
                        Track::new(self.track_keys.next(), t.clone(), session, Some(from)),
                    );
                    new_tracks.push(t.sid.clone());
                }
            }
        }
        if !is_hidden(&info) {
            self.broadcast_participant(&room_name, &info, None);
        }
        self.auto_subscribe(&room_name, session, &new_tracks);
        if removed {
            // Their subscribers here renegotiate without them.
            let members: Vec<SessionId> = self
                .rooms
                .get(&room_name)
                .map(|r| r.members.clone())
                .unwrap_or_default();
            for s in members {
                self.negotiate_subscriber(s);
            }
        }
    }
}
