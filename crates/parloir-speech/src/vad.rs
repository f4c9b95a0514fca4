//! Silero VAD (v6, the graph without If nodes) on ONNX Runtime: speech probability for each
//! 32 ms of 16 kHz audio, and speech segments with hysteresis.

use std::path::Path;

use ort::session::Session;
use ort::value::Tensor;

use crate::{Runtime, SpeechError};

/// Samples per step (32 ms at 16 kHz).
pub const CHUNK: usize = 512;
/// Samples of the previous step the model sees again.
const CONTEXT: usize = 64;
const STATE: usize = 2 * 128;

/// One speaker's VAD: the model and its recurrent state.
pub struct Vad {
    session: Session,
    state: Vec<f32>,
    context: [f32; CONTEXT],
}

impl Vad {
    /// Loads the model at `path` (see [`crate::Models::path`]) on `runtime`'s CPU provider.
    pub fn new(runtime: &Runtime, path: &Path) -> Result<Self, SpeechError> {
        let session = Session::builder(runtime.environment())?
            .with_intra_threads(1)
            .map_err(|e| SpeechError::Inference(e.to_string()))?
            .commit_from_file(path)?;
        Ok(Self {
            session,
            state: vec![0.0; STATE],
            context: [0.0; CONTEXT],
        })
    }

    /// Forgets the stream: the next chunk starts a new one.
    pub fn reset(&mut self) {
        self.state.fill(0.0);
        self.context = [0.0; CONTEXT];
    }

    /// The probability that `chunk` (512 samples of 16 kHz mono in -1..1) is speech.
    pub fn process(&mut self, chunk: &[f32; CHUNK]) -> Result<f32, SpeechError> {
        let mut input = Vec::with_capacity(CONTEXT + CHUNK);
        input.extend_from_slice(&self.context);
        input.extend_from_slice(chunk);
        let outputs = self.session.run(ort::inputs![
            "input" => Tensor::from_array(([1usize, CONTEXT + CHUNK], input))?,
            "state" => Tensor::from_array(([2usize, 1, 128], self.state.clone()))?,
            "sr" => Tensor::from_array(((), vec![16_000i64]))?,
        ])?;
        let (_, prob) = outputs["output"].try_extract_tensor::<f32>()?;
        let (_, state) = outputs["stateN"].try_extract_tensor::<f32>()?;
        let p = *prob
            .first()
            .ok_or_else(|| SpeechError::Inference("VAD gave no probability".into()))?;
        if state.len() != STATE {
            return Err(SpeechError::Inference(format!(
                "VAD state has {} values, not {STATE}",
                state.len()
            )));
        }
        self.state.copy_from_slice(state);
        self.context.copy_from_slice(&chunk[CHUNK - CONTEXT..]);
        Ok(p)
    }
}

/// A stretch of speech, in samples of the 16 kHz input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VadSegment {
    pub start: usize,
    pub end: usize,
}

/// Speech segments of `samples` (16 kHz mono): speech starts when the probability reaches
/// `0.5`, and ends after `min_silence_ms` below `0.35` (Silero's own hysteresis).
pub fn speech_segments(
    vad: &mut Vad,
    samples: &[f32],
    min_silence_ms: u32,
) -> Result<Vec<VadSegment>, SpeechError> {
    let silence_chunks = (min_silence_ms as usize * 16).div_ceil(CHUNK).max(1);
    let mut segments = Vec::new();
    let mut current: Option<usize> = None;
    let mut quiet = 0;
    let mut chunk = [0.0f32; CHUNK];
    for (i, piece) in samples.chunks(CHUNK).enumerate() {
        chunk.fill(0.0);
        chunk[..piece.len()].copy_from_slice(piece);
        let p = vad.process(&chunk)?;
        let at = i * CHUNK;
        match current {
            None if p >= 0.5 => {
                current = Some(at);
                quiet = 0;
            }
            Some(start) if p < 0.35 => {
                quiet += 1;
                if quiet >= silence_chunks {
                    segments.push(VadSegment {
                        start,
                        end: at + CHUNK - quiet * CHUNK,
                    });
                    current = None;
                }
            }
            Some(_) => quiet = 0,
            None => {}
        }
    }
    if let Some(start) = current {
        segments.push(VadSegment {
            start,
            end: samples.len(),
        });
    }
    Ok(segments)
}
