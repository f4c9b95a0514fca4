//! Parloir's selective forwarding unit: rooms, participants, tracks, subscriptions and the str0m
//! peer connections that carry them.
//!
//! The crate is sans-IO. [`Sfu`] takes commands from signal sessions ([`Command`]), datagrams
//! ([`Sfu::handle_receive`]) and time ([`Sfu::handle_timeout`]); the caller then drains
//! [`Sfu::poll_output`] until it returns [`Output::Timeout`], sending each [`Transmit`] and
//! delivering each signal message. It never reads a clock, owns a socket or spawns a thread.
//! A room may span several `Sfu`s (one per media worker): they talk through [`Relay`]
//! messages the caller carries ([`Output::Relay`], [`Sfu::handle_relay`]).
//!
//! The room model speaks LiveKit's protobuf types (`ParticipantInfo`, `TrackInfo`,
//! `DataPacket`): LiveKit is the protocol Parloir serves, and translating them to a private
//! model and back would only add copies.

// `deny`, not `forbid`: one prefetch hint is allowed (`engine::prefetch`).
#![deny(unsafe_code)]

pub(crate) mod allocation;
mod engine;
pub mod ids;
mod sdp_scan;
mod simulcast;
mod speakers;
mod svc;
mod temporal;

pub use engine::{
    AudioFrame, AudioTap, Command, JoinCommand, LANGUAGES_KEY, Layout, OFFER_MLINES_PER_CALL,
    Output, RESUME_WINDOW, RecordFrame, RecordTap, Relay, SUBTITLES_KEY, ServiceCall, ServiceError,
    ServiceReply, Sfu, SfuConfig, Stats, Subtitle, TRANSCRIPTION_TOPIC, TRANSPORT_RESUME_WINDOW,
    Transmit, Transport, home_worker, leave_message,
};
pub use ids::SessionId;
pub use livekit_protocol as proto;
