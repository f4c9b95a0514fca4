//! Whole-file transcription: VAD cuts the audio into utterances, Whisper transcribes each. The
//! same models and decoding as the live path; `parloir transcribe` is its command.

use crate::Asr;
use crate::vad::speech_segments;
use crate::whisper::{MAX_SECONDS, Request};
use crate::{SpeechError, Vad};

const RATE: usize = 16_000;
/// Silence that separates two VAD segments.
const MIN_SILENCE_MS: u32 = 300;
/// Neighbouring segments closer than this are transcribed together, up to [`GROUP_SECONDS`]:
/// Whisper does better on whole sentences than on fragments.
const JOIN_GAP: usize = RATE;
const GROUP_SECONDS: usize = 20;
/// Audio kept either side of a segment, so that its first and last sounds are whole.
const MARGIN: usize = RATE / 5;

/// One transcribed utterance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Segment {
    /// Seconds from the start of the audio.
    pub start: f64,
    pub end: f64,
    pub text: String,
    pub language: String,
}

/// Transcribes `audio` (16 kHz mono). `languages` as in [`Request::languages`]. `progress` is
/// told the seconds done after each utterance.
pub fn transcribe(
    vad: &mut Vad,
    asr: &mut Asr,
    audio: &[f32],
    languages: &[String],
    mut progress: impl FnMut(f64),
) -> Result<Vec<Segment>, SpeechError> {
    vad.reset();
    let found = speech_segments(vad, audio, MIN_SILENCE_MS)?;
    let mut out = Vec::new();
    let ranges = utterances(&found, audio.len());
    for (i, &(start, end)) in ranges.iter().enumerate() {
        let decoded = asr.transcribe(Request {
            audio: &audio[start..end],
            languages,
            prefix: &[],
        })?;
        // The last utterance reports the whole file done.
        let done = if i + 1 == ranges.len() {
            audio.len()
        } else {
            end
        };
        progress(done as f64 / RATE as f64);
        if decoded.is_silence() || decoded.text.is_empty() {
            continue;
        }
        out.push(Segment {
            start: start as f64 / RATE as f64,
            end: end as f64 / RATE as f64,
            text: decoded.text,
            language: decoded.language,
        });
    }
    if ranges.is_empty() {
        progress(audio.len() as f64 / RATE as f64);
    }
    Ok(out)
}

/// Sample ranges to transcribe: VAD segments joined across short gaps, widened by a margin and
/// cut to what one Whisper call takes.
fn utterances(segments: &[crate::VadSegment], len: usize) -> Vec<(usize, usize)> {
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for s in segments {
        match groups.last_mut() {
            Some(g) if s.start - g.1 < JOIN_GAP && s.end - g.0 <= GROUP_SECONDS * RATE => {
                g.1 = s.end
            }
            _ => groups.push((s.start, s.end)),
        }
    }
    let max = (MAX_SECONDS as usize - 1) * RATE;
    let mut out = Vec::new();
    for (start, end) in groups {
        let (start, end) = (start.saturating_sub(MARGIN), (end + MARGIN).min(len));
        let mut at = start;
        while at < end {
            let to = (at + max).min(end);
            out.push((at, to));
            at = to;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VadSegment;

    #[test]
    fn segments_join_and_split() {
        let s = |a: f64, b: f64| VadSegment {
            start: (a * RATE as f64) as usize,
            end: (b * RATE as f64) as usize,
        };
        let len = 200 * RATE;
        // Close segments join; a far one stands alone; margins are clamped at the ends.
        let u = utterances(&[s(0.1, 2.0), s(2.5, 4.0), s(10.0, 12.0)], len);
        assert_eq!(
            u,
            vec![
                (0, 4 * RATE + MARGIN),
                (10 * RATE - MARGIN, 12 * RATE + MARGIN)
            ]
        );
        // A group stops growing at GROUP_SECONDS.
        let u = utterances(&[s(1.0, 15.0), s(15.5, 25.0)], len);
        assert_eq!(u.len(), 2);
        // One long segment is cut into calls Whisper takes.
        let u = utterances(&[s(10.0, 100.0)], len);
        assert!(
            u.iter()
                .all(|(a, b)| b - a <= (MAX_SECONDS as usize - 1) * RATE)
        );
        assert_eq!(u.first().unwrap().0, 10 * RATE - MARGIN);
        assert_eq!(u.last().unwrap().1, 100 * RATE + MARGIN);
        assert!(u.windows(2).all(|w| w[0].1 == w[1].0));
        assert!(utterances(&[], len).is_empty());
    }
}
