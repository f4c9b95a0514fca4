//! The speech plane on ONNX Runtime: finding and loading ONNX Runtime (`ort` with
//! `load-dynamic`, the library from the onnxruntime wheel `deploy/setup.sh` installs under
//! models/) and its execution providers; the model manifest with checksums; WAV reading and
//! resampling to 16 kHz; Opus decoding; Silero VAD; Whisper (log-mel front end, encoder and
//! cached greedy decoder, batched), Moonshine base (English) as the fallback; live transcription per track (LocalAgreement) and whole-file
//! transcription.

#![deny(unsafe_code)]

pub mod asr;
pub mod audio;
pub mod live;
pub mod mel;
mod models;
pub mod moonshine;
mod opus_decode;
pub mod provider;
mod runtime;
pub mod speaker;
pub mod summary;
pub mod transcribe;
mod vad;
pub mod whisper;

pub use asr::{Asr, Tokens};
pub use live::{LiveConfig, LiveText, LiveTrack};
pub use models::{ModelEntry, Models};
pub use moonshine::{Moonshine, MoonshineFiles};
pub use opus_decode::OpusDecoder;
pub use provider::Provider;
pub use runtime::{Runtime, RuntimeError, find_library_in, load, load_in};
pub use vad::{Segmenter, Vad, VadSegment, VadStream, speech_segments};
pub use whisper::{Decoded, Whisper, WhisperFiles};

/// What can go wrong in the speech plane.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpeechError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("model {name}: {reason}")]
    Model { name: String, reason: String },
    #[error("inference: {0}")]
    Inference(String),
    #[error("audio: {0}")]
    Audio(String),
}

impl From<ort::Error> for SpeechError {
    fn from(e: ort::Error) -> Self {
        SpeechError::Inference(e.to_string())
    }
}
