//! The speech plane. Today: finding and loading ONNX Runtime (`ort` with `load-dynamic`, the
//! library from the onnxruntime wheel `deploy/setup.sh` installs under models/) and listing
//! its execution providers. VAD, streaming ASR and speaker embeddings build on this.

#![deny(unsafe_code)]

mod runtime;

pub use runtime::{Runtime, RuntimeError, find_library, load};
