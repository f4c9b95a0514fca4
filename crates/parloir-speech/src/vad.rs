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

/// The VAD model, and the state of one stream (more streams: [`VadStream`]).
pub struct Vad {
    session: Session,
    own: VadStream,
}

/// One audio stream's recurrent state, for a [`Vad`] shared by several streams.
#[derive(Debug, Clone)]
pub struct VadStream {
    state: Vec<f32>,
    context: [f32; CONTEXT],
}

impl Default for VadStream {
    fn default() -> Self {
        Self {
            state: vec![0.0; STATE],
            context: [0.0; CONTEXT],
        }
    }
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
            own: VadStream::default(),
        })
    }

    /// Forgets the stream: the next chunk starts a new one.
    pub fn reset(&mut self) {
        self.own = VadStream::default();
    }

    /// The probability that `chunk` (512 samples of 16 kHz mono in -1..1) is speech.
    pub fn process(&mut self, chunk: &[f32; CHUNK]) -> Result<f32, SpeechError> {
        let mut own = std::mem::take(&mut self.own);
        let p = self.process_stream(&mut own, chunk);
        self.own = own;
        p
    }

    /// Like [`Self::process`], for one of several streams sharing this model.
    pub fn process_stream(
        &mut self,
        stream: &mut VadStream,
        chunk: &[f32; CHUNK],
    ) -> Result<f32, SpeechError> {
        let mut input = Vec::with_capacity(CONTEXT + CHUNK);
        input.extend_from_slice(&stream.context);
        input.extend_from_slice(chunk);
        let outputs = self.session.run(ort::inputs![
            "input" => Tensor::from_array(([1usize, CONTEXT + CHUNK], input))?,
            "state" => Tensor::from_array(([2usize, 1, 128], stream.state.clone()))?,
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
        stream.state.copy_from_slice(state);
        stream.context.copy_from_slice(&chunk[CHUNK - CONTEXT..]);
        Ok(p)
    }
}

/// Cuts a live stream into speech segments: 16 kHz samples in, finished segments out, with
/// Silero's hysteresis (speech from a probability of 0.5, silence after `min_silence` below
/// 0.35). Positions count samples since the stream started.
#[derive(Debug, Clone)]
pub struct Segmenter {
    stream: VadStream,
    pending: Vec<f32>,
    seen: usize,
    current: Option<usize>,
    quiet: usize,
    silence_chunks: usize,
}

impl Segmenter {
    pub fn new(min_silence_ms: u32) -> Self {
        Self {
            stream: VadStream::default(),
            pending: Vec::with_capacity(2 * CHUNK),
            seen: 0,
            current: None,
            quiet: 0,
            silence_chunks: (min_silence_ms as usize * 16).div_ceil(CHUNK).max(1),
        }
    }

    /// Feeds samples; returns the segments that ended in them.
    pub fn push(&mut self, vad: &mut Vad, samples: &[f32]) -> Result<Vec<VadSegment>, SpeechError> {
        self.pending.extend_from_slice(samples);
        let mut done = Vec::new();
        let mut chunk = [0.0f32; CHUNK];
        let mut used = 0;
        while self.pending.len() - used >= CHUNK {
            chunk.copy_from_slice(&self.pending[used..used + CHUNK]);
            used += CHUNK;
            let p = vad.process_stream(&mut self.stream, &chunk)?;
            let at = self.seen;
            self.seen += CHUNK;
            match self.current {
                None if p >= 0.5 => {
                    self.current = Some(at);
                    self.quiet = 0;
                }
                Some(start) if p < 0.35 => {
                    self.quiet += 1;
                    if self.quiet >= self.silence_chunks {
                        done.push(VadSegment {
                            start,
                            end: self.seen - self.quiet * CHUNK,
                        });
                        self.current = None;
                    }
                }
                Some(_) => self.quiet = 0,
                None => {}
            }
        }
        self.pending.drain(..used);
        Ok(done)
    }

    /// Ends the stream: the segment in progress, if any, ends here.
    pub fn finish(&mut self) -> Option<VadSegment> {
        let start = self.current.take()?;
        Some(VadSegment {
            start,
            end: self.seen + self.pending.len(),
        })
    }

    /// Whether speech is in progress.
    pub fn speaking(&self) -> bool {
        self.current.is_some()
    }

    /// Where the speech in progress started (in samples since the stream started).
    pub fn speech_start(&self) -> Option<usize> {
        self.current
    }

    /// Samples the VAD has looked at so far.
    pub fn position(&self) -> usize {
        self.seen
    }
}

/// A stretch of speech, in samples of the 16 kHz input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VadSegment {
    pub start: usize,
    pub end: usize,
}

/// Speech segments of `samples` (16 kHz mono): a [`Segmenter`] over the whole buffer.
pub fn speech_segments(
    vad: &mut Vad,
    samples: &[f32],
    min_silence_ms: u32,
) -> Result<Vec<VadSegment>, SpeechError> {
    let mut segmenter = Segmenter::new(min_silence_ms);
    let mut segments = segmenter.push(vad, samples)?;
    // The last partial chunk, padded with silence.
    let tail = samples.len() % CHUNK;
    if tail > 0 {
        segments.extend(segmenter.push(vad, &vec![0.0; CHUNK - tail])?);
    }
    segments.extend(segmenter.finish());
    for s in &mut segments {
        s.end = s.end.min(samples.len());
    }
    Ok(segments)
}
