//! Whisper (the ONNX graphs models/convert_whisper.py builds) on ONNX Runtime: log-mel, encoder,
//! then greedy decoding with a self-attention cache, batched over several utterances (one per
//! speaker) so concurrent speakers share each inference call.
//!
//! The audio is fed at its real length plus one second of silence rather than padded to 30 s:
//! faster, and as accurate on utterances. One call takes at most [`MAX_SECONDS`].

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{DynValue, Tensor};

use crate::mel::{HOP, LogMel, N_MELS};
use crate::{Models, Provider, Runtime, SpeechError};

/// Longest audio one call decodes (the encoder's 1500 positions are 30 s; one is kept for the
/// padding).
pub const MAX_SECONDS: f32 = 29.0;
const RATE: usize = 16_000;
const PAD_SAMPLES: usize = RATE;

const EOT: u32 = 50257;
const SOT: u32 = 50258;
const TRANSCRIBE: u32 = 50359;
const NO_SPEECH: u32 = 50362;
const NO_TIMESTAMPS: u32 = 50363;
/// The decoder's 448 positions, less the prompt.
const MAX_TOKENS: usize = 440;

/// Where the four files of a Whisper model are.
#[derive(Debug, Clone)]
pub struct WhisperFiles {
    pub encoder: PathBuf,
    pub decoder: PathBuf,
    pub vocabulary: PathBuf,
    pub config: PathBuf,
}

impl WhisperFiles {
    /// Whisper-base from the manifest, each file checked against its SHA-256.
    pub fn base(models: &Models) -> Result<Self, SpeechError> {
        Ok(Self {
            encoder: models.path("whisper-base-encoder")?,
            decoder: models.path("whisper-base-decoder")?,
            vocabulary: models.path("whisper-base-vocabulary")?,
            config: models.path("whisper-base-config")?,
        })
    }
}

/// One utterance to transcribe.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// 16 kHz mono, at most [`MAX_SECONDS`].
    pub audio: &'a [f32],
    /// Language codes ("en", "fr"): one fixes the language; several, or none (any of Whisper's
    /// 99), are chosen among by detection.
    pub languages: &'a [String],
    /// Text tokens the transcript must start with (what a live stream has already committed):
    /// fed to the decoder as if it had chosen them.
    pub prefix: &'a [u32],
}

/// What Whisper heard.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub text: String,
    /// The text's tokens (no special tokens).
    pub tokens: Vec<u32>,
    /// Language code, as fixed or detected.
    pub language: String,
    /// Mean log-probability of the chosen tokens.
    pub avg_logprob: f32,
    /// Whisper's own estimate that there is no speech at all.
    pub no_speech_prob: f32,
}

impl Decoded {
    /// Whisper's rule for dropping a hallucination over non-speech: it thinks there is no
    /// speech and is unsure of what it wrote.
    pub fn is_silence(&self) -> bool {
        self.tokens.is_empty() || (self.no_speech_prob > 0.6 && self.avg_logprob < -1.0)
    }
}

#[derive(serde::Deserialize)]
struct Config {
    lang_ids: Vec<u32>,
    suppress_ids: Vec<u32>,
    suppress_ids_begin: Vec<u32>,
}

/// The model: two sessions, the front end and the vocabulary.
pub struct Whisper {
    encoder: Session,
    decoder: Session,
    mel: LogMel,
    /// Bytes of each token (byte-level BPE undone); special tokens keep their `<|...|>` text.
    tokens: Vec<Vec<u8>>,
    /// (code, token) for each language.
    languages: Vec<(String, u32)>,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper")
            .field("vocabulary", &self.tokens.len())
            .field("languages", &self.languages.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn model_err(path: &Path, reason: impl std::fmt::Display) -> SpeechError {
    SpeechError::Model {
        name: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Whisper {
    /// Loads the graphs on `runtime`'s CPU provider with `threads` intra-op threads.
    pub fn new(
        runtime: &Runtime,
        files: &WhisperFiles,
        threads: usize,
    ) -> Result<Self, SpeechError> {
        Self::with_providers(runtime, files, threads, &[Provider::Cpu])
    }

    /// Loads the graphs on `providers` (from [`crate::provider::choose`]), in order.
    pub fn with_providers(
        runtime: &Runtime,
        files: &WhisperFiles,
        threads: usize,
        providers: &[Provider],
    ) -> Result<Self, SpeechError> {
        let encoder = crate::provider::session(runtime, threads, providers, &files.encoder)?;
        let decoder = crate::provider::session(runtime, threads, providers, &files.decoder)?;
        let vocabulary = std::fs::read_to_string(&files.vocabulary)
            .map_err(|e| model_err(&files.vocabulary, e))?;
        let tokens: Vec<Vec<u8>> = vocabulary.lines().map(token_bytes).collect();
        if tokens.len() <= NO_TIMESTAMPS as usize {
            return Err(model_err(
                &files.vocabulary,
                format!(
                    "{} tokens, not a multilingual Whisper vocabulary",
                    tokens.len()
                ),
            ));
        }
        let config: Config = std::fs::read(&files.config)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| model_err(&files.config, e))?;
        let mut languages = Vec::new();
        for &id in &config.lang_ids {
            let text = tokens
                .get(id as usize)
                .map(|t| String::from_utf8_lossy(t).into_owned());
            let code = text
                .as_deref()
                .and_then(|t| t.strip_prefix("<|"))
                .and_then(|t| t.strip_suffix("|>"))
                .ok_or_else(|| {
                    model_err(&files.config, format!("language token {id} is {text:?}"))
                })?;
            languages.push((code.to_string(), id));
        }
        Ok(Self {
            encoder,
            decoder,
            mel: LogMel::new(),
            tokens,
            languages,
            suppress: config.suppress_ids,
            suppress_begin: config.suppress_ids_begin,
        })
    }

    /// Whether `code` is one of the model's languages.
    pub fn knows_language(&self, code: &str) -> bool {
        self.languages.iter().any(|(c, _)| c == code)
    }

    /// Whether `token` begins a new word (its text starts with a space).
    pub fn starts_word(&self, token: u32) -> bool {
        crate::asr::starts_word(&self.tokens, token)
    }

    /// The text of `tokens` (special tokens left out).
    pub fn text(&self, tokens: &[u32]) -> String {
        crate::asr::text(&self.tokens, tokens, |t| t < EOT)
    }

    /// Transcribes one utterance.
    pub fn transcribe(&mut self, request: Request<'_>) -> Result<Decoded, SpeechError> {
        Ok(self.transcribe_batch(&[request])?.remove(0))
    }

    /// Transcribes several utterances in one batch: they are padded with silence to the longest.
    pub fn transcribe_batch(
        &mut self,
        requests: &[Request<'_>],
    ) -> Result<Vec<Decoded>, SpeechError> {
        let b = requests.len();
        if b == 0 {
            return Ok(Vec::new());
        }
        let mut allowed = Vec::with_capacity(b);
        for r in requests {
            if r.audio.len() as f32 > MAX_SECONDS * RATE as f32 {
                return Err(SpeechError::Audio(format!(
                    "{:.1} s of audio in one Whisper call, at most {MAX_SECONDS} s",
                    r.audio.len() as f32 / RATE as f32
                )));
            }
            let mut ids = Vec::new();
            for code in r.languages {
                let id = self
                    .languages
                    .iter()
                    .find(|(c, _)| c == code)
                    .map(|&(_, id)| id)
                    .ok_or_else(|| SpeechError::Audio(format!("unknown language {code:?}")))?;
                ids.push(id);
            }
            if ids.is_empty() {
                ids = self.languages.iter().map(|&(_, id)| id).collect();
            }
            allowed.push(ids);
        }
        // Log-mel of each, over a common length: the longest plus a second of silence, in an
        // even number of frames (the encoder's second convolution has stride 2).
        let longest = requests.iter().map(|r| r.audio.len()).max().unwrap_or(0);
        let samples = (longest + PAD_SAMPLES).div_ceil(2 * HOP) * 2 * HOP;
        let frames = samples / HOP;
        let mut mel = Vec::with_capacity(b * N_MELS * frames);
        let mut padded = vec![0f32; samples];
        for r in requests {
            padded.fill(0.0);
            padded[..r.audio.len()].copy_from_slice(r.audio);
            let (m, n) = self.mel.compute(&padded);
            debug_assert_eq!(n, frames);
            mel.extend_from_slice(&m);
        }
        let mut out = self
            .encoder
            .run(ort::inputs!["mel" => Tensor::from_array(([b, N_MELS, frames], mel))?])?;
        let cross_k = out.remove("cross_k").ok_or_else(|| missing("cross_k"))?;
        let cross_v = out.remove("cross_v").ok_or_else(|| missing("cross_v"))?;
        drop(out);

        // Step 0, the start token alone: its logits give the language and the no-speech
        // probability.
        let empty = || Tensor::<f32>::from_array(([6usize, b, 8, 0, 64], Vec::<f32>::new()));
        let (logits, mut cache_k, mut cache_v) = self.decode(
            vec![SOT as i64; b],
            1,
            &empty()?.into_dyn(),
            &empty()?.into_dyn(),
            &cross_k,
            &cross_v,
        )?;
        let vocab = logits.len() / b;
        let mut language = Vec::with_capacity(b);
        let mut no_speech = Vec::with_capacity(b);
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            let best = allowed[i]
                .iter()
                .copied()
                .max_by(|&x, &y| row[x as usize].total_cmp(&row[y as usize]))
                .unwrap_or(SOT + 1);
            language.push(best);
            no_speech.push(softmax_at(row, NO_SPEECH as usize));
        }
        // Step 1, the rest of the prompt: language, transcribe, no timestamps.
        let prompt: Vec<i64> = language
            .iter()
            .flat_map(|&l| [l as i64, TRANSCRIBE as i64, NO_TIMESTAMPS as i64])
            .collect();
        let (mut logits, k, v) = self.decode(prompt, 3, &cache_k, &cache_v, &cross_k, &cross_v)?;
        (cache_k, cache_v) = (k, v);

        let seconds = longest as f32 / RATE as f32;
        let forced = requests.iter().map(|r| r.prefix.len()).max().unwrap_or(0);
        let budget = ((seconds * 12.0) as usize + 16)
            .max(forced + 8)
            .min(MAX_TOKENS);
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut logprob = vec![0f32; b];
        let mut done = vec![false; b];
        for step in 0..budget {
            let mut next = Vec::with_capacity(b);
            for (i, row) in logits.chunks_exact_mut(vocab).enumerate() {
                if done[i] {
                    next.push(EOT as i64);
                    continue;
                }
                if let Some(&t) = requests[i].prefix.get(step) {
                    tokens[i].push(t);
                    next.push(i64::from(t));
                    continue;
                }
                for &t in &self.suppress {
                    row[t as usize] = f32::NEG_INFINITY;
                }
                if step == 0 {
                    for &t in &self.suppress_begin {
                        row[t as usize] = f32::NEG_INFINITY;
                    }
                }
                // Only text and the end: no timestamps or other special tokens.
                for v in &mut row[EOT as usize + 1..] {
                    *v = f32::NEG_INFINITY;
                }
                let (best, lp) = argmax_logprob(row);
                if best == EOT as usize {
                    done[i] = true;
                } else {
                    tokens[i].push(best as u32);
                    logprob[i] += lp;
                    // Greedy decoding can fall into a loop, repeating a phrase until the token
                    // budget runs out: keep the phrase once and stop there.
                    if let Some(keep) = looping(&tokens[i]) {
                        tokens[i].truncate(keep);
                        done[i] = true;
                    }
                }
                next.push(best as i64);
            }
            if done.iter().all(|&d| d) {
                break;
            }
            let (l, k, v) = self.decode(next, 1, &cache_k, &cache_v, &cross_k, &cross_v)?;
            (logits, cache_k, cache_v) = (l, k, v);
        }
        Ok((0..b)
            .map(|i| {
                let code = self
                    .languages
                    .iter()
                    .find(|&&(_, id)| id == language[i])
                    .map(|(c, _)| c.clone())
                    .unwrap_or_default();
                let chosen = tokens[i].len().saturating_sub(requests[i].prefix.len());
                let n = chosen.max(1) as f32;
                Decoded {
                    text: self.text(&tokens[i]),
                    avg_logprob: logprob[i] / n,
                    tokens: std::mem::take(&mut tokens[i]),
                    language: code,
                    no_speech_prob: no_speech[i],
                }
            })
            .collect())
    }

    /// One decoder call over `n` new tokens per batch item: the last position's logits
    /// (`[b * vocab]`) and the grown caches.
    fn decode(
        &mut self,
        tokens: Vec<i64>,
        n: usize,
        self_k: &DynValue,
        self_v: &DynValue,
        cross_k: &DynValue,
        cross_v: &DynValue,
    ) -> Result<(Vec<f32>, DynValue, DynValue), SpeechError> {
        let b = tokens.len() / n;
        let mut out = self.decoder.run(ort::inputs![
            "tokens" => Tensor::from_array(([b, n], tokens))?,
            "self_k" => self_k,
            "self_v" => self_v,
            "cross_k" => cross_k,
            "cross_v" => cross_v,
        ])?;
        let (_, logits) = out["logits"].try_extract_tensor::<f32>()?;
        let logits = logits.to_vec();
        let k = out
            .remove("new_self_k")
            .ok_or_else(|| missing("new_self_k"))?;
        let v = out
            .remove("new_self_v")
            .ok_or_else(|| missing("new_self_v"))?;
        Ok((logits, k, v))
    }
}

fn missing(name: &str) -> SpeechError {
    SpeechError::Inference(format!("the Whisper graph has no output {name}"))
}

/// Where a looping decode should be cut: the tokens end with a block repeated three times
/// (two for blocks of 8 tokens or more), and the answer keeps the first occurrence.
fn looping(tokens: &[u32]) -> Option<usize> {
    let n = tokens.len();
    for block in 1..=n / 2 {
        let times = if block >= 8 { 2 } else { 3 };
        if block * times > n || block * times < 6 {
            continue;
        }
        let tail = &tokens[n - block..];
        if (2..=times).all(|k| &tokens[n - k * block..n - (k - 1) * block] == tail) {
            return Some(n - (times - 1) * block);
        }
    }
    None
}

/// softmax(row)[i].
fn softmax_at(row: &[f32], i: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    (row[i] - max).exp() / sum
}

/// The best index and its log-probability.
pub(crate) fn argmax_logprob(row: &[f32]) -> (usize, f32) {
    let (best, &max) = row
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap_or((EOT as usize, &0.0));
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    (best, -sum.ln())
}

/// A vocabulary line's bytes: GPT-2's byte-level alphabet maps each byte to a printable
/// character; special tokens (`<|...|>`) are kept as they are.
fn token_bytes(line: &str) -> Vec<u8> {
    if line.starts_with("<|") && line.ends_with("|>") {
        return line.as_bytes().to_vec();
    }
    line.chars().filter_map(byte_of).collect()
}

/// The inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves, the
/// other 68 bytes are the characters from U+0100 in byte order.
fn byte_of(c: char) -> Option<u8> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let c = c as u32;
    if c < 0x100 {
        return printable(c).then_some(c as u8);
    }
    let k = c - 0x100;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(k as usize)
        .map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet() {
        assert_eq!(byte_of('a'), Some(b'a'));
        // 'Ġ' (U+0120) is the space, 'Ċ' (U+010A) the newline.
        assert_eq!(byte_of('Ġ'), Some(b' '));
        assert_eq!(byte_of('Ċ'), Some(b'\n'));
        assert_eq!(byte_of('\u{100}'), Some(0));
        // "é" in UTF-8 is C3 A9, written "Ã©".
        assert_eq!(token_bytes("ĠcafÃ©"), " café".as_bytes());
        assert_eq!(token_bytes("<|fr|>"), b"<|fr|>");
        // All 256 bytes have a character, each different.
        let mut seen = std::collections::HashSet::new();
        for c in (0x21u32..0x200).filter_map(char::from_u32) {
            if let Some(b) = byte_of(c) {
                assert!(seen.insert(b), "byte {b} twice");
            }
        }
        assert_eq!(seen.len(), 256);
    }

    #[test]
    fn loops_are_cut_after_the_first_time() {
        // "merci à demain." thrice: a three-token block.
        assert_eq!(looping(&[1, 2, 3, 4, 2, 3, 4, 2, 3, 4]), Some(4));
        // A long phrase twice is enough.
        let phrase: Vec<u32> = (10..20).collect();
        let twice: Vec<u32> = [&[5][..], &phrase, &phrase].concat();
        assert_eq!(looping(&twice), Some(11));
        // Words repeated as people do ("no, no", "very very") are not loops.
        assert_eq!(looping(&[1, 2, 2, 3, 4, 4]), None);
        assert_eq!(looping(&[1, 2, 3, 2, 3, 5]), None);
        // Six identical tokens are.
        assert_eq!(looping(&[7, 7, 7, 7, 7, 7]), Some(2));
        assert_eq!(looping(&[]), None);
    }

    #[test]
    fn logprob_of_the_best() {
        let (i, lp) = argmax_logprob(&[0.0, 0.0, f32::NEG_INFINITY, 1.0]);
        assert_eq!(i, 3);
        let e = 1f32.exp();
        assert!((lp - (e / (2.0 + e)).ln()).abs() < 1e-6);
        assert!((softmax_at(&[1.0, 1.0], 0) - 0.5).abs() < 1e-6);
    }
}
