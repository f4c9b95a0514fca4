//! Live transcription of one speaker's microphone: VAD opens and closes utterances; while one is
//! open, Whisper re-decodes it about every second and the text both decodes agree on is
//! committed (LocalAgreement-2), so interim text grows without flickering; when the speaker
//! stops, the utterance is decoded once more, continuing from what was committed, as the final
//! text.
//!
//! Sans-IO: [`LiveTrack::push`] takes 16 kHz audio, [`LiveTrack::next_job`] says what to decode,
//! and the caller runs Whisper (batching the jobs of several tracks into one call) and hands each
//! result to [`LiveTrack::complete`]. Positions are samples since the track started.

use std::collections::VecDeque;

use crate::asr::Tokens;
use crate::vad::Segmenter;
use crate::whisper::{Decoded, Request};
use crate::{SpeechError, Vad};

const RATE: usize = 16_000;
/// Audio kept before the VAD's start of speech, so the first sound is whole.
const PREROLL: usize = RATE * 3 / 10;
/// Audio kept after the VAD's end of speech.
const MARGIN: usize = RATE / 5;
/// An open utterance is only decoded once it holds this much.
const MIN_INTERIM: usize = RATE / 2;
/// Audio an utterance needs before its detected language is kept for its later decodes.
const LANGUAGE_AFTER: usize = 2 * RATE;

/// How a live track is cut and decoded.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// New audio between two interim decodes of an open utterance (1 s).
    pub interval: usize,
    /// An utterance longer than this is closed at its quietest recent moment and a new one
    /// opened (20 s; Whisper takes at most 29).
    pub max_utterance: usize,
    /// Silence that ends an utterance.
    pub min_silence_ms: u32,
    /// Languages, as in [`Request::languages`].
    pub languages: Vec<String>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            interval: RATE,
            max_utterance: 20 * RATE,
            min_silence_ms: 400,
            languages: Vec::new(),
        }
    }
}

/// Text for one utterance: interim while it is spoken (each replaces the previous), then one
/// final.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveText {
    /// Numbered from 1 per track.
    pub segment: u64,
    pub text: String,
    pub is_final: bool,
    /// The utterance's audio, in samples since the track started.
    pub start: usize,
    pub end: usize,
    pub language: String,
}

/// What to decode next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub segment: u64,
    pub is_final: bool,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone)]
struct Utterance {
    segment: u64,
    start: usize,
    /// Tokens two successive decodes agreed on.
    committed: Vec<u32>,
    previous: Vec<u32>,
    /// Where the last interim decode ended.
    decoded_to: usize,
    /// The utterance's language once settled, and the last one detected before that.
    language: Option<String>,
    detected: Option<String>,
    /// Whether interim text went out (then a final always follows, even an empty one).
    shown: bool,
}

/// One track's live transcription state.
#[derive(Debug, Clone)]
pub struct LiveTrack {
    config: LiveConfig,
    segmenter: Segmenter,
    /// Audio from sample `base` on.
    audio: Vec<f32>,
    base: usize,
    open: Option<Utterance>,
    /// Utterances that ended, waiting for their final decode, with their end.
    closing: VecDeque<(Utterance, usize)>,
    next_segment: u64,
    languages: Vec<String>,
}

impl LiveTrack {
    pub fn new(config: LiveConfig) -> Self {
        Self {
            segmenter: Segmenter::new(config.min_silence_ms),
            audio: Vec::new(),
            base: 0,
            open: None,
            closing: VecDeque::new(),
            next_segment: 1,
            languages: config.languages.clone(),
            config,
        }
    }

    /// Samples received so far.
    pub fn position(&self) -> usize {
        self.base + self.audio.len()
    }

    /// The languages to detect among from the next utterance on (the room's changed).
    pub fn set_languages(&mut self, languages: &[String]) {
        if self.languages != languages {
            self.languages = languages.to_vec();
        }
    }

    /// Whether an utterance is open or waiting for its final decode.
    pub fn busy(&self) -> bool {
        self.open.is_some() || !self.closing.is_empty()
    }

    /// Feeds 16 kHz samples.
    pub fn push(&mut self, vad: &mut Vad, samples: &[f32]) -> Result<(), SpeechError> {
        self.audio.extend_from_slice(samples);
        for seg in self.segmenter.push(vad, samples)? {
            if self.open.is_none() {
                // The whole utterance fell within this push.
                self.open_at(seg.start.saturating_sub(PREROLL));
            }
            let end = (seg.end + MARGIN).min(self.position());
            self.close(end);
        }
        if let Some(start) = self.segmenter.speech_start()
            && self.open.is_none()
        {
            self.open_at(start.saturating_sub(PREROLL));
        }
        if let Some(open) = &self.open
            && self.position() - open.start > self.config.max_utterance
        {
            let cut = self.quiet_point();
            self.close(cut);
            self.open_at(cut);
        }
        self.trim();
        Ok(())
    }

    /// The stream stopped (the track went quiet or away): the open utterance ends here.
    pub fn flush(&mut self) {
        if self.open.is_some() {
            let end = self.position();
            self.close(end);
        }
        self.segmenter = Segmenter::new(self.config.min_silence_ms);
        self.trim();
    }

    /// The next decode this track needs: a closed utterance's final first, else an interim of
    /// the open one when enough new audio came since the last.
    pub fn next_job(&self) -> Option<Job> {
        if let Some((u, end)) = self.closing.front() {
            return Some(Job {
                segment: u.segment,
                is_final: true,
                start: u.start,
                end: *end,
            });
        }
        let open = self.open.as_ref()?;
        let end = self.position();
        (end - open.start >= MIN_INTERIM
            && end - open.decoded_to.max(open.start) >= self.config.interval)
            .then_some(Job {
                segment: open.segment,
                is_final: false,
                start: open.start,
                end,
            })
    }

    /// The recogniser's request for `job` (from [`Self::next_job`], before any other push).
    pub fn request(&self, job: &Job) -> Request<'_> {
        let u = self.utterance(job.segment);
        let languages = match u.and_then(|u| u.language.as_ref()) {
            Some(l) => std::slice::from_ref(l),
            None => &self.languages[..],
        };
        let from = job.start.saturating_sub(self.base).min(self.audio.len());
        let to = job.end.saturating_sub(self.base).min(self.audio.len());
        Request {
            audio: &self.audio[from..to],
            languages,
            prefix: u.map_or(&[][..], |u| &u.committed[..]),
        }
    }

    /// Takes the recogniser's answer to `job` (`tokens`: that recogniser's vocabulary): the
    /// text to show, if any.
    pub fn complete(
        &mut self,
        tokens: &dyn Tokens,
        job: &Job,
        decoded: Decoded,
    ) -> Option<LiveText> {
        if job.is_final {
            let (u, end) = self
                .closing
                .pop_front()
                .filter(|(u, _)| u.segment == job.segment)?;
            self.trim();
            let silent = decoded.is_silence();
            if silent && !u.shown {
                return None;
            }
            return Some(LiveText {
                segment: u.segment,
                text: if silent { String::new() } else { decoded.text },
                is_final: true,
                start: u.start,
                end,
                language: decoded.language,
            });
        }
        let open = self.open.as_mut().filter(|u| u.segment == job.segment)?;
        open.decoded_to = job.end;
        if decoded.is_silence() {
            return None;
        }
        // LocalAgreement-2: what this decode and the previous one both say is committed, up to
        // a word boundary (a token that starts a new word).
        let hyp = &decoded.tokens;
        let mut agreed = hyp
            .iter()
            .zip(&open.previous)
            .take_while(|(a, b)| a == b)
            .count();
        while agreed > open.committed.len()
            && agreed < hyp.len()
            && !tokens.starts_word(hyp[agreed])
        {
            agreed -= 1;
        }
        if agreed > open.committed.len() && hyp.starts_with(&open.committed) {
            open.committed = hyp[..agreed].to_vec();
        }
        open.previous.clone_from(hyp);
        // The language is settled once two decodes of at least LANGUAGE_AFTER agree: the first
        // second or so of speech is too little to tell languages apart reliably.
        if open.language.is_none() {
            if job.end - job.start >= LANGUAGE_AFTER
                && open.detected.as_deref() == Some(decoded.language.as_str())
            {
                open.language = Some(decoded.language.clone());
            }
            open.detected = Some(decoded.language.clone());
        }
        open.shown = true;
        Some(LiveText {
            segment: open.segment,
            text: decoded.text,
            is_final: false,
            start: open.start,
            end: job.end,
            language: decoded.language,
        })
    }

    fn utterance(&self, segment: u64) -> Option<&Utterance> {
        self.closing
            .iter()
            .map(|(u, _)| u)
            .chain(self.open.as_ref())
            .find(|u| u.segment == segment)
    }

    fn open_at(&mut self, start: usize) {
        let start = start.max(self.base);
        self.open = Some(Utterance {
            segment: self.next_segment,
            start,
            committed: Vec::new(),
            previous: Vec::new(),
            decoded_to: start,
            language: None,
            detected: None,
            shown: false,
        });
        self.next_segment += 1;
    }

    fn close(&mut self, end: usize) {
        if let Some(u) = self.open.take() {
            let end = end.max(u.start);
            if end > u.start {
                self.closing.push_back((u, end));
            }
        }
    }

    /// Where to cut an over-long utterance: the middle of the quietest 100 ms of its last 2 s.
    fn quiet_point(&self) -> usize {
        let window = RATE / 10;
        let end = self.audio.len();
        let from = end.saturating_sub(2 * RATE);
        let mut best = (f32::INFINITY, end);
        let mut at = from;
        while at + window <= end {
            let energy: f32 = self.audio[at..at + window].iter().map(|s| s * s).sum();
            if energy < best.0 {
                best = (energy, at + window / 2);
            }
            at += window / 2;
        }
        self.base + best.1
    }

    /// Drops audio nothing needs any more.
    fn trim(&mut self) {
        let keep_from = self
            .closing
            .iter()
            .map(|(u, _)| u.start)
            .chain(self.open.as_ref().map(|u| u.start))
            .min()
            .unwrap_or_else(|| self.position().saturating_sub(PREROLL));
        let drop = keep_from.saturating_sub(self.base).min(self.audio.len());
        if drop > 0 {
            self.audio.drain(..drop);
            self.base += drop;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utt(segment: u64, start: usize) -> Utterance {
        Utterance {
            segment,
            start,
            committed: Vec::new(),
            previous: Vec::new(),
            decoded_to: start,
            language: None,
            detected: None,
            shown: false,
        }
    }

    #[test]
    fn jobs_follow_the_audio() {
        let mut t = LiveTrack::new(LiveConfig::default());
        t.audio = vec![0.0; 3 * RATE];
        // Nothing open: nothing to do.
        assert_eq!(t.next_job(), None);
        t.open = Some(utt(1, RATE));
        // 2 s of it since its start: an interim over all of it.
        assert_eq!(
            t.next_job(),
            Some(Job {
                segment: 1,
                is_final: false,
                start: RATE,
                end: 3 * RATE
            })
        );
        t.open.as_mut().unwrap().decoded_to = 3 * RATE - RATE / 2;
        assert_eq!(t.next_job(), None, "half a second since the last decode");
        // A closed utterance's final comes first.
        t.closing.push_back((utt(0, 0), RATE));
        let job = t.next_job().unwrap();
        assert!(job.is_final && job.segment == 0 && job.end == RATE);
        let r = t.request(&job);
        assert_eq!(r.audio.len(), RATE);
        assert!(r.prefix.is_empty());
    }

    struct Spaces;
    impl Tokens for Spaces {
        fn starts_word(&self, _: u32) -> bool {
            true
        }
    }

    fn decoded(language: &str, tokens: &[u32]) -> Decoded {
        Decoded {
            text: format!("{tokens:?}"),
            tokens: tokens.to_vec(),
            language: language.into(),
            avg_logprob: -0.1,
            no_speech_prob: 0.0,
        }
    }

    #[test]
    fn the_language_settles_when_two_long_enough_decodes_agree() {
        let mut t = LiveTrack::new(LiveConfig {
            languages: vec!["en".into(), "fr".into()],
            ..LiveConfig::default()
        });
        t.audio = vec![0.0; 5 * RATE];
        t.open = Some(utt(1, 0));
        let job = |end: usize| Job {
            segment: 1,
            is_final: false,
            start: 0,
            end,
        };
        let langs = |t: &LiveTrack| t.request(&job(RATE)).languages.to_vec();
        // A short start detected as French: not kept.
        t.complete(&Spaces, &job(RATE * 3 / 4), decoded("fr", &[1]));
        assert_eq!(langs(&t), ["en", "fr"]);
        // Then English twice, long enough: English from then on.
        t.complete(&Spaces, &job(2 * RATE), decoded("en", &[1, 2]));
        assert_eq!(langs(&t), ["en", "fr"], "one English decode is not enough");
        t.complete(&Spaces, &job(3 * RATE), decoded("en", &[1, 2, 3]));
        assert_eq!(langs(&t), ["en"]);
        // And the agreed words are committed: the next decode continues from them.
        assert_eq!(t.request(&job(4 * RATE)).prefix, [1, 2]);
    }

    #[test]
    fn trimming_keeps_what_is_needed() {
        let mut t = LiveTrack::new(LiveConfig::default());
        t.audio = vec![0.0; 10 * RATE];
        t.trim();
        assert_eq!(
            t.base,
            10 * RATE - PREROLL,
            "only the pre-roll while nobody speaks"
        );
        assert_eq!(t.position(), 10 * RATE);
        t.audio.extend(vec![0.0; 5 * RATE]);
        t.open = Some(utt(3, 12 * RATE));
        t.trim();
        assert_eq!(t.base, 12 * RATE);
        let job = Job {
            segment: 3,
            is_final: false,
            start: 12 * RATE,
            end: 15 * RATE,
        };
        assert_eq!(t.request(&job).audio.len(), 3 * RATE);
    }

    #[test]
    fn a_long_utterance_is_cut_where_it_is_quiet() {
        let mut t = LiveTrack::new(LiveConfig::default());
        // Loud everywhere except 100 ms, 1 s before the end.
        t.audio = vec![0.5; 21 * RATE];
        let quiet = 20 * RATE;
        t.audio[quiet..quiet + RATE / 10].fill(0.0);
        let cut = t.quiet_point();
        assert!(cut >= quiet && cut <= quiet + RATE / 10, "cut at {cut}");
    }
}
