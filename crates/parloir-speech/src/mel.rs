//! Whisper's log-mel front end, as the model was trained on it: 16 kHz audio, a 400-sample
//! periodic Hann window every 160 samples (centred, reflect-padded), power spectrum, 80 Slaney
//! mel bands, log10 clamped 8 below the maximum and scaled to (x + 4) / 4.

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

/// Mel bands.
pub const N_MELS: usize = 80;
/// Samples between frames (10 ms).
pub const HOP: usize = 160;
const N_FFT: usize = 400;
const BINS: usize = N_FFT / 2 + 1;
const RATE: f64 = 16_000.0;

/// The front end: window, filter bank and FFT plan, made once.
pub struct LogMel {
    window: Vec<f32>,
    /// `N_MELS` rows of `BINS` weights.
    filters: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
}

impl Default for LogMel {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel").finish_non_exhaustive()
    }
}

impl LogMel {
    pub fn new() -> Self {
        let window = (0..N_FFT)
            .map(|i| {
                let x = 2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64;
                (0.5 - 0.5 * x.cos()) as f32
            })
            .collect();
        Self {
            window,
            filters: slaney_filters(),
            fft: FftPlanner::new().plan_fft_forward(N_FFT),
        }
    }

    /// The log-mel spectrogram of `audio` (16 kHz mono): `audio.len() / 160` frames, returned
    /// band-major (`[N_MELS][frames]`, the layout of the encoder's input) with the frame count.
    pub fn compute(&self, audio: &[f32]) -> (Vec<f32>, usize) {
        let frames = audio.len() / HOP;
        let mut mel = vec![0f32; N_MELS * frames];
        let mut buf = vec![Complex32::new(0.0, 0.0); N_FFT];
        let mut scratch = vec![Complex32::new(0.0, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = [0f32; BINS];
        for t in 0..frames {
            let start = (t * HOP) as isize - (N_FFT / 2) as isize;
            for (i, c) in buf.iter_mut().enumerate() {
                *c = Complex32::new(reflect(audio, start + i as isize) * self.window[i], 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buf) {
                *p = c.norm_sqr();
            }
            for (m, row) in self.filters.chunks_exact(BINS).enumerate() {
                let e: f32 = row.iter().zip(&power).map(|(w, p)| w * p).sum();
                mel[m * frames + t] = e.max(1e-10).log10();
            }
        }
        let max = mel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in &mut mel {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        (mel, frames)
    }
}

/// `audio[i]` with the signal mirrored about its ends (numpy's `reflect`), zero beyond that.
fn reflect(audio: &[f32], i: isize) -> f32 {
    let n = audio.len() as isize;
    if n == 0 {
        return 0.0;
    }
    let j = if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    };
    if (0..n).contains(&j) {
        audio[j as usize]
    } else {
        0.0
    }
}

/// Slaney-style mel scale (linear below 1 kHz, logarithmic above), as librosa's default.
fn hz_to_mel(f: f64) -> f64 {
    if f >= 1000.0 {
        15.0 + (f / 1000.0).ln() / (6.4f64.ln() / 27.0)
    } else {
        3.0 * f / 200.0
    }
}

fn mel_to_hz(m: f64) -> f64 {
    if m >= 15.0 {
        1000.0 * ((6.4f64.ln() / 27.0) * (m - 15.0)).exp()
    } else {
        200.0 * m / 3.0
    }
}

/// Triangular filters with Slaney area normalisation (librosa `mel(sr=16000, n_fft=400,
/// n_mels=80)`, which Whisper's filter bank is).
fn slaney_filters() -> Vec<f32> {
    slaney(N_MELS, N_FFT)
}

/// librosa's default mel filter bank at 16 kHz (Slaney scale and area normalisation):
/// `n_mels` rows of `n_fft / 2 + 1` weights.
pub(crate) fn slaney(n_mels: usize, n_fft: usize) -> Vec<f32> {
    let bins = n_fft / 2 + 1;
    let top = hz_to_mel(RATE / 2.0);
    let edges: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(top * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0f32; n_mels * bins];
    for m in 0..n_mels {
        let (lo, mid, hi) = (edges[m], edges[m + 1], edges[m + 2]);
        let norm = 2.0 / (hi - lo);
        for k in 0..bins {
            let f = RATE / 2.0 * k as f64 / (bins - 1) as f64;
            let up = (f - lo) / (mid - lo);
            let down = (hi - f) / (hi - mid);
            out[m * bins + k] = (up.min(down).max(0.0) * norm) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_and_layout() {
        let mel = LogMel::new();
        let (m, frames) = mel.compute(&vec![0.0; 16_000]);
        assert_eq!(frames, 100);
        assert_eq!(m.len(), N_MELS * 100);
        // Silence: everything at the clamp floor, (log10(1e-10) + 4) / 4.
        assert!(m.iter().all(|v| (v - (-1.5)).abs() < 1e-6), "{:?}", &m[..4]);
        assert_eq!(mel.compute(&[0.1; 100]).1, 0);
        assert_eq!(mel.compute(&[]).1, 0);
    }

    #[test]
    fn a_tone_lights_its_band() {
        let mel = LogMel::new();
        for hz in [300.0f64, 1000.0, 3000.0] {
            let audio: Vec<f32> = (0..16_000)
                .map(|i| (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / RATE).sin()) as f32)
                .collect();
            let (m, frames) = mel.compute(&audio);
            let t = frames / 2;
            let loudest = (0..N_MELS)
                .max_by(|&a, &b| m[a * frames + t].total_cmp(&m[b * frames + t]))
                .unwrap();
            // The band whose triangle peaks nearest the tone.
            let top = hz_to_mel(RATE / 2.0);
            let centre = |b: usize| mel_to_hz(top * (b + 1) as f64 / (N_MELS + 1) as f64);
            let expected = (0..N_MELS)
                .min_by(|&a, &b| (centre(a) - hz).abs().total_cmp(&(centre(b) - hz).abs()))
                .unwrap();
            assert!(
                loudest.abs_diff(expected) <= 1,
                "{hz} Hz: band {loudest}, expected {expected}"
            );
            // The maximum sits at 8 above the floor.
            let max = m.iter().copied().fold(f32::MIN, f32::max);
            let min = m.iter().copied().fold(f32::MAX, f32::min);
            assert!((max - min - 2.0).abs() < 1e-4, "range {min}..{max}");
        }
    }

    #[test]
    fn filters_match_librosa_at_known_points() {
        let f = slaney_filters();
        // Band 0 rises from 0 Hz to its peak near 40 Hz: bin 1 (40 Hz) holds its largest weight.
        let row0 = &f[..BINS];
        let peak = (0..BINS)
            .max_by(|&a, &b| row0[a].total_cmp(&row0[b]))
            .unwrap();
        assert_eq!(peak, 1);
        // Slaney normalisation: every band's weights integrate to about the same area.
        let area = |m: usize| f[m * BINS..(m + 1) * BINS].iter().sum::<f32>() * 40.0;
        for m in [10, 40, 79] {
            assert!((area(m) - 1.0).abs() < 0.15, "band {m} area {}", area(m));
        }
    }
}
