//! Audio for a composite: each participant's Opus decoded to 48 kHz stereo, placed on the
//! recording's timeline, and mixed with clipping protection. Also how loud each source is,
//! for the active-speaker highlight.

use std::collections::{HashMap, VecDeque};

use crate::MediaError;

/// The mix's sample rate (Opus's).
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples per channel of the longest Opus frame (120 ms).
const MAX_FRAME: usize = 5760;
/// A frame placed within this many samples of where its source's audio ends is joined to it
/// (arrival jitter in the timeline's estimate), rather than leaving a gap or overlapping.
const JOIN: i64 = 480;
/// Gaps up to this long between a source's frames (lost packets) are concealed by the Opus
/// decoder; longer ones (discontinuous transmission, a muted microphone) are silence.
const CONCEAL_UP_TO: i64 = 3 * 960;
/// Above this level the mix is compressed smoothly towards full scale, never past it.
const KNEE: f32 = 0.8;

struct Source {
    decoder: opus::Decoder,
    /// Interleaved stereo samples, the first at timeline position `start`.
    samples: VecDeque<f32>,
    start: i64,
    /// Mean square of recent output, smoothed.
    power: f32,
}

impl Source {
    fn end(&self) -> i64 {
        self.start + (self.samples.len() / 2) as i64
    }
}

/// The mixer. Positions are in samples (per channel) since the recording began.
pub struct Mixer {
    sources: HashMap<String, Source>,
    next: i64,
    scratch: Vec<f32>,
    /// Frames that came after their time was mixed, and frames that did not decode.
    pub late: u64,
    pub corrupt: u64,
    /// Samples (per channel) of lost frames filled by concealment.
    pub concealed: u64,
}

impl Default for Mixer {
    fn default() -> Self {
        Mixer::new()
    }
}

impl Mixer {
    pub fn new() -> Mixer {
        Mixer {
            sources: HashMap::new(),
            next: 0,
            scratch: vec![0.0; 2 * MAX_FRAME],
            late: 0,
            corrupt: 0,
            concealed: 0,
        }
    }

    /// The position of the next sample [`Mixer::pull`] gives.
    pub fn position(&self) -> i64 {
        self.next
    }

    /// Decodes one Opus frame of source `id` and places it at timeline position `at`.
    pub fn push(&mut self, id: &str, at: i64, opus: &[u8]) -> Result<(), MediaError> {
        if !self.sources.contains_key(id) {
            let decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Stereo)
                .map_err(|e| MediaError::Opus(e.to_string()))?;
            self.sources.insert(
                id.to_string(),
                Source {
                    decoder,
                    samples: VecDeque::new(),
                    start: at,
                    power: 0.0,
                },
            );
        }
        let Some(source) = self.sources.get_mut(id) else {
            return Ok(());
        };
        // Lost frames just before this one: the decoder's concealment fills them (it must run
        // before the frame is decoded), in whole 2.5 ms steps.
        let gap = at - source.end();
        if !source.samples.is_empty() && gap > JOIN && gap <= CONCEAL_UP_TO {
            let mut left = gap as usize;
            while left >= 120 {
                let want = left.min(960) / 120 * 120;
                match source
                    .decoder
                    .decode_float(&[], &mut self.scratch[..2 * want], false)
                {
                    Ok(k) if k > 0 => {
                        source.samples.extend(&self.scratch[..2 * k]);
                        left = left.saturating_sub(k);
                        self.concealed += k as u64;
                    }
                    _ => break,
                }
            }
        }
        let n = match source.decoder.decode_float(opus, &mut self.scratch, false) {
            Ok(n) => n,
            Err(e) => {
                self.corrupt += 1;
                return Err(MediaError::Opus(e.to_string()));
            }
        };
        let frame = &self.scratch[..2 * n];
        if at + n as i64 <= self.next {
            self.late += 1;
            return Ok(());
        }
        let end = source.end();
        if source.samples.is_empty() {
            source.start = at;
            source.samples.extend(frame);
        } else if (at - end).abs() <= JOIN {
            source.samples.extend(frame);
        } else if at > end {
            // A gap (loss, discontinuous transmission): silence until the frame.
            source
                .samples
                .extend(std::iter::repeat_n(0.0, 2 * (at - end) as usize));
            source.samples.extend(frame);
        } else {
            // Overlaps what is queued: keep only the part past its end.
            let skip = ((end - at) as usize).min(n);
            source.samples.extend(&frame[2 * skip..]);
        }
        Ok(())
    }

    /// Forgets a source (its track ended).
    pub fn remove(&mut self, id: &str) {
        self.sources.remove(id);
    }

    /// Mixes the timeline up to `until` (exclusive) into `out` as interleaved stereo.
    pub fn pull(&mut self, until: i64, out: &mut Vec<f32>) {
        let count = (until - self.next).max(0) as usize;
        let base = out.len();
        out.resize(base + 2 * count, 0.0);
        let mix = &mut out[base..];
        for source in self.sources.values_mut() {
            // Drop what lies before the mix's position.
            if source.start < self.next {
                let drop = ((self.next - source.start) as usize).min(source.samples.len() / 2);
                source.samples.drain(..2 * drop);
                source.start = self.next;
            }
            let offset = (source.start - self.next).max(0) as usize;
            let mut energy = 0.0f32;
            let mut taken = 0usize;
            for (i, s) in source.samples.iter().enumerate() {
                let k = 2 * offset + i;
                if k >= mix.len() {
                    break;
                }
                mix[k] += *s;
                energy += s * s;
                taken += 1;
            }
            source.samples.drain(..taken);
            source.start += (taken / 2) as i64;
            if count > 0 {
                let power = energy / (2 * count) as f32;
                source.power = 0.7 * source.power + 0.3 * power;
            }
        }
        for s in mix.iter_mut() {
            *s = soft_clip(*s);
        }
        self.next = until.max(self.next);
    }

    /// Each source's recent level in dBFS (about -100 for silence).
    pub fn levels(&self) -> impl Iterator<Item = (&str, f32)> {
        self.sources
            .iter()
            .map(|(id, s)| (id.as_str(), 10.0 * (s.power + 1e-10).log10()))
    }
}

/// Identity below the knee, then a smooth curve that approaches full scale.
fn soft_clip(x: f32) -> f32 {
    let a = x.abs();
    if a <= KNEE {
        return x;
    }
    let room = 1.0 - KNEE;
    let y = KNEE + room * ((a - KNEE) / room).tanh();
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, amplitude: f32, offset: usize, n: usize) -> Vec<f32> {
        (offset..offset + n)
            .flat_map(|i| {
                let s = amplitude * (2.0 * std::f32::consts::PI * freq * i as f32 / 48_000.0).sin();
                [s, s]
            })
            .collect()
    }

    fn encode(encoder: &mut opus::Encoder, pcm: &[f32]) -> Vec<u8> {
        encoder.encode_vec_float(pcm, 1500).unwrap()
    }

    fn rms(s: &[f32]) -> f32 {
        (s.iter().map(|x| x * x).sum::<f32>() / s.len() as f32).sqrt()
    }

    #[test]
    fn two_sources_mix_at_their_positions() {
        let mut a =
            opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
        let mut b =
            opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
        let mut mixer = Mixer::new();
        // Source a from 0, source b from 0.5 s; both 1 s of 20 ms frames.
        for k in 0..50 {
            let p = encode(&mut a, &tone(440.0, 0.3, k * 960, 960));
            mixer.push("a", (k * 960) as i64, &p).unwrap();
            let p = encode(&mut b, &tone(1000.0, 0.3, k * 960, 960));
            mixer.push("b", 24_000 + (k * 960) as i64, &p).unwrap();
        }
        let mut out = Vec::new();
        mixer.pull(72_000, &mut out);
        assert_eq!(out.len(), 2 * 72_000);
        let first = rms(&out[2 * 4_800..2 * 19_200]);
        let both = rms(&out[2 * 28_800..2 * 43_200]);
        let last = rms(&out[2 * 52_800..2 * 67_200]);
        // One tone of amplitude 0.3 has an RMS of 0.21; two unrelated ones about 0.3.
        assert!((first - 0.21).abs() < 0.04, "{first}");
        assert!((both - 0.3).abs() < 0.05, "{both}");
        assert!((last - 0.21).abs() < 0.04, "{last}");
        assert_eq!(mixer.position(), 72_000);
    }

    #[test]
    fn a_lost_frame_is_concealed_and_a_pause_is_silence() {
        let mut e =
            opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
        let mut mixer = Mixer::new();
        // 20 frames of tone; frame 10 is lost. Then 400 ms of nothing (DTX), then tone again.
        for k in 0..20 {
            let p = encode(&mut e, &tone(440.0, 0.3, k * 960, 960));
            if k != 10 {
                mixer.push("a", (k * 960) as i64, &p).unwrap();
            }
        }
        for k in 40..45 {
            let p = encode(&mut e, &tone(440.0, 0.3, k * 960, 960));
            mixer.push("a", (k * 960) as i64, &p).unwrap();
        }
        assert_eq!(mixer.concealed, 960);
        let mut out = Vec::new();
        mixer.pull(45 * 960, &mut out);
        // The lost frame's 20 ms carry sound (the decoder's concealment), not a hole.
        let lost = rms(&out[2 * 10 * 960..2 * 11 * 960]);
        assert!(lost > 0.05, "{lost}");
        // The pause stays silent.
        let pause = rms(&out[2 * 25 * 960..2 * 38 * 960]);
        assert!(pause < 1e-3, "{pause}");
    }

    #[test]
    fn loud_sources_never_clip() {
        let mut mixer = Mixer::new();
        for id in ["a", "b", "c"] {
            let mut e =
                opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio)
                    .unwrap();
            for k in 0..10 {
                let p = encode(&mut e, &tone(300.0, 0.9, k * 960, 960));
                mixer.push(id, (k * 960) as i64, &p).unwrap();
            }
        }
        let mut out = Vec::new();
        mixer.pull(9_600, &mut out);
        let peak = out.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(peak > KNEE && peak <= 1.0, "{peak}");
    }

    #[test]
    fn late_and_broken_frames_are_counted_and_skipped() {
        let mut e =
            opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
        let mut mixer = Mixer::new();
        let mut out = Vec::new();
        mixer.pull(48_000, &mut out);
        let p = encode(&mut e, &tone(440.0, 0.3, 0, 960));
        mixer.push("a", 0, &p).unwrap();
        assert_eq!(mixer.late, 1);
        assert!(mixer.push("a", 48_000, &[0xff; 3]).is_err());
        assert_eq!(mixer.corrupt, 1);
        // A frame after a gap lands at its position, with silence before it.
        mixer.push("a", 48_000 + 9_600, &p).unwrap();
        let mut out = Vec::new();
        mixer.pull(48_000 + 9_600 + 960, &mut out);
        assert!(rms(&out[..2 * 9_000]) < 1e-4);
        assert!(rms(&out[2 * 9_700..]) > 0.05);
        let level = mixer.levels().next().unwrap().1;
        assert!(level > -60.0, "{level}");
    }
}
