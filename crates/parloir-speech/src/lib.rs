//! The speech plane on ONNX Runtime. Today: finding and loading ONNX Runtime (`ort` with
//! `load-dynamic`, the library from the onnxruntime wheel `deploy/setup.sh` installs under
//! models/) and its execution providers; the model manifest with checksums; WAV reading and
//! resampling to 16 kHz; Silero VAD. Streaming ASR and speaker embeddings build on these.

#![deny(unsafe_code)]

pub mod audio;
mod models;
mod opus_decode;
mod runtime;
mod vad;

pub use models::{ModelEntry, Models};
pub use opus_decode::OpusDecoder;
pub use runtime::{Runtime, RuntimeError, find_library, load};
pub use vad::{Segmenter, Vad, VadSegment, VadStream, speech_segments};

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
