//! Audio plumbing for the speech plane: PCM WAV files and resampling to 16 kHz mono.

use std::path::Path;

use crate::SpeechError;

/// The sample rate every model here takes.
pub const SPEECH_RATE: u32 = 16_000;

/// Mono samples in -1..1 at `rate`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcm {
    pub rate: u32,
    pub samples: Vec<f32>,
}

/// Reads a 16-bit PCM WAV file, mixing its channels down to mono.
pub fn read_wav(path: &Path) -> Result<Pcm, SpeechError> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, &e.to_string()))?;
    parse_wav(&bytes).map_err(|reason| bad(path, &reason))
}

fn bad(path: &Path, reason: &str) -> SpeechError {
    SpeechError::Audio(format!("{}: {reason}", path.display()))
}

/// Parses a RIFF/WAVE file with 16-bit integer PCM.
pub fn parse_wav(bytes: &[u8]) -> Result<Pcm, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let (mut channels, mut rate, mut bits, mut format) = (0u16, 0u32, 0u16, 0u16);
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = &bytes[at + 8..(at + 8).saturating_add(len).min(bytes.len())];
        match id {
            b"fmt " if body.len() >= 16 => {
                format = u16::from_le_bytes([body[0], body[1]]);
                channels = u16::from_le_bytes([body[2], body[3]]);
                rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                bits = u16::from_le_bytes([body[14], body[15]]);
            }
            b"data" => {
                // espeak-ng and streaming writers leave the length at 0 or too large.
                let body = if len == 0 || len > bytes.len() - at - 8 {
                    &bytes[at + 8..]
                } else {
                    body
                };
                if format != 1 || bits != 16 || channels == 0 || rate == 0 {
                    return Err(format!(
                        "only 16-bit PCM is read here (format {format}, {bits} bits, {channels} channels)"
                    ));
                }
                let ch = usize::from(channels);
                let samples = body
                    .chunks_exact(2 * ch)
                    .map(|frame| {
                        let sum: f32 = frame
                            .chunks_exact(2)
                            .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
                            .sum();
                        sum / ch as f32
                    })
                    .collect();
                return Ok(Pcm { rate, samples });
            }
            _ => {}
        }
        at = at.saturating_add(8 + len + (len & 1));
    }
    Err("no data chunk".into())
}

/// Resamples `pcm` to `rate` with a windowed-sinc (Hann, 16 zero crossings) low-pass at the
/// lower of the two Nyquist frequencies.
pub fn resample(pcm: &Pcm, rate: u32) -> Pcm {
    if pcm.rate == rate || pcm.samples.is_empty() {
        return Pcm {
            rate,
            samples: pcm.samples.clone(),
        };
    }
    const ZEROS: f64 = 16.0;
    let ratio = f64::from(rate) / f64::from(pcm.rate);
    let cutoff = ratio.min(1.0); // of the input's Nyquist
    let half = ZEROS / cutoff; // half-width of the kernel in input samples
    let n_out = ((pcm.samples.len() as f64) * ratio).round() as usize;
    let input = &pcm.samples;
    let samples = (0..n_out)
        .map(|i| {
            let t = i as f64 / ratio; // position in input samples
            let first = (t - half).ceil().max(0.0) as usize;
            let last = ((t + half).floor() as usize).min(input.len() - 1);
            let mut acc = 0.0;
            let mut norm = 0.0;
            for (j, &x) in input.iter().enumerate().take(last + 1).skip(first) {
                let d = j as f64 - t;
                let sinc = if d == 0.0 {
                    1.0
                } else {
                    let a = std::f64::consts::PI * d * cutoff;
                    a.sin() / a
                };
                let window = 0.5 + 0.5 * (std::f64::consts::PI * d / half).cos();
                let w = sinc * window;
                acc += f64::from(x) * w;
                norm += w;
            }
            if norm.abs() > 1e-9 {
                (acc / norm) as f32
            } else {
                0.0
            }
        })
        .collect();
    Pcm { rate, samples }
}

/// A streaming 48 kHz → 16 kHz decimator: a 48-tap Hann-windowed sinc low-pass at 7.2 kHz,
/// then every third sample. Keeps the samples it still needs between calls.
#[derive(Debug, Clone)]
pub struct Decimator3 {
    taps: Vec<f32>,
    buf: Vec<f32>,
}

impl Default for Decimator3 {
    fn default() -> Self {
        Self::new()
    }
}

impl Decimator3 {
    pub fn new() -> Self {
        const N: usize = 48;
        const CUTOFF: f64 = 7_200.0 / 48_000.0; // of the sample rate
        let mid = (N - 1) as f64 / 2.0;
        let mut taps: Vec<f64> = (0..N)
            .map(|i| {
                let d = i as f64 - mid;
                let sinc = if d == 0.0 {
                    2.0 * CUTOFF
                } else {
                    (2.0 * std::f64::consts::PI * CUTOFF * d).sin() / (std::f64::consts::PI * d)
                };
                let window =
                    0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (N - 1) as f64).cos();
                sinc * window
            })
            .collect();
        let sum: f64 = taps.iter().sum();
        taps.iter_mut().for_each(|t| *t /= sum);
        Self {
            taps: taps.into_iter().map(|t| t as f32).collect(),
            buf: Vec::new(),
        }
    }

    /// Appends the 16 kHz samples `input` (48 kHz) completes to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.buf.extend_from_slice(input);
        let n = self.taps.len();
        let mut at = 0;
        while at + n <= self.buf.len() {
            let window = &self.buf[at..at + n];
            out.push(self.taps.iter().zip(window).map(|(t, x)| t * x).sum());
            at += 3;
        }
        self.buf.drain(..at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f32, secs: f32) -> Pcm {
        let n = (rate as f32 * secs) as usize;
        Pcm {
            rate,
            samples: (0..n)
                .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
                .collect(),
        }
    }

    /// The amplitude of `hz` in `x` (a one-bin DFT).
    fn amplitude(x: &[f32], rate: u32, hz: f32) -> f32 {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (i, &v) in x.iter().enumerate() {
            let a = 2.0 * std::f64::consts::PI * f64::from(hz) * i as f64 / f64::from(rate);
            re += f64::from(v) * a.cos();
            im += f64::from(v) * a.sin();
        }
        (2.0 * (re * re + im * im).sqrt() / x.len() as f64) as f32
    }

    #[test]
    fn resampling_keeps_a_tone_and_removes_what_cannot_be_represented() {
        let out = resample(&tone(48_000, 440.0, 1.0), SPEECH_RATE);
        assert_eq!(out.samples.len(), 16_000);
        let a = amplitude(&out.samples[1000..15000], SPEECH_RATE, 440.0);
        assert!((a - 0.5).abs() < 0.02, "440 Hz kept: {a}");
        // 12 kHz is above 16 kHz's Nyquist: it must not fold back to 4 kHz.
        let out = resample(&tone(48_000, 12_000.0, 1.0), SPEECH_RATE);
        let alias = amplitude(&out.samples[1000..15000], SPEECH_RATE, 4_000.0);
        assert!(alias < 0.02, "aliasing {alias}");
        // 22.05 kHz (espeak-ng's rate) to 16 kHz.
        let out = resample(&tone(22_050, 1000.0, 1.0), SPEECH_RATE);
        assert!((amplitude(&out.samples[1000..15000], SPEECH_RATE, 1000.0) - 0.5).abs() < 0.02);
    }

    #[test]
    fn the_streaming_decimator_matches_in_any_chunking() {
        let input = tone(48_000, 440.0, 1.0);
        let mut whole = Vec::new();
        Decimator3::new().push(&input.samples, &mut whole);
        let mut pieces = Vec::new();
        let mut d = Decimator3::new();
        for chunk in input.samples.chunks(960) {
            d.push(chunk, &mut pieces);
        }
        assert_eq!(whole, pieces, "20 ms packets give what one buffer gives");
        assert!((whole.len() as i64 - 16_000).abs() <= 16);
        let a = amplitude(&whole[1000..15000], SPEECH_RATE, 440.0);
        assert!((a - 0.5).abs() < 0.02, "440 Hz kept: {a}");
        let mut alias = Vec::new();
        Decimator3::new().push(&tone(48_000, 12_000.0, 1.0).samples, &mut alias);
        assert!(amplitude(&alias[1000..15000], SPEECH_RATE, 4_000.0) < 0.03);
    }

    #[test]
    fn wav_files_parse_and_bad_ones_are_refused() {
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF\0\0\0\0WAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
        wav.extend_from_slice(&2u16.to_le_bytes()); // stereo
        wav.extend_from_slice(&8000u32.to_le_bytes());
        wav.extend_from_slice(&32000u32.to_le_bytes());
        wav.extend_from_slice(&4u16.to_le_bytes());
        wav.extend_from_slice(&16u16.to_le_bytes());
        wav.extend_from_slice(b"data");
        wav.extend_from_slice(&8u32.to_le_bytes());
        for s in [16384i16, 0, -16384, -16384] {
            wav.extend_from_slice(&s.to_le_bytes());
        }
        let pcm = parse_wav(&wav).unwrap();
        assert_eq!(pcm.rate, 8000);
        assert_eq!(pcm.samples, [0.25, -0.5]);
        assert!(parse_wav(b"RIFF").is_err());
        assert!(parse_wav(&wav[..30]).is_err(), "truncated before data");
        let mut float = wav.clone();
        float[20] = 3; // IEEE float
        assert!(parse_wav(&float).is_err());
    }
}
