//! Media work for recordings, on the record plane's cores: video decoding and H.264 encoding
//! through FFmpeg ([`decode`], [`output`]), the CPU compositor ([`picture`], [`layout`],
//! [`composite`]), audio mixing ([`mix`]) and muxing to fragmented MP4 or Ogg.
//!
//! Frames come in already depacketized and reordered: str0m's receive path (the SFU's jitter
//! buffer and depacketizer) hands over whole VP8, VP9, H.264 and AV1 frames and Opus packets.

pub mod composite;
pub mod decode;
pub mod gpu;
pub mod layout;
pub mod mix;
pub mod output;
pub mod picture;
pub mod source;
pub mod text;

pub use composite::{Compositor, Surface, TileView};
pub use decode::{Frame, Nv12Frame, VideoCodec, VideoDecoder};
pub use layout::{Arrangement, Layout, Tile};
pub use mix::{Mixer, SAMPLE_RATE};
pub use output::{Container, OutputSpec, VideoSpec, Writer};
pub use picture::{Picture, Rect, Yuv};

use std::path::PathBuf;

/// What can go wrong in media work. None of it panics: a bad frame fails that frame.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("FFmpeg could not start: {0}")]
    Init(String),
    #[error("this FFmpeg has no {0} codec")]
    NoCodec(&'static str),
    #[error("{0}: {1}")]
    Codec(&'static str, ffmpeg_next::Error),
    #[error("decoded pictures in pixel format {0} are not supported")]
    Format(String),
    #[error("Opus: {0}")]
    Opus(String),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: String },
    #[error("GPU: {0}")]
    Gpu(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Initialises FFmpeg once (idempotent) and quietens its logging to errors.
pub fn init() -> Result<(), MediaError> {
    static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        ffmpeg_next::init().map_err(|e| e.to_string())?;
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Error);
        Ok(())
    })
    .clone()
    .map_err(MediaError::Init)
}
