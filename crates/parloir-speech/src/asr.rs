//! The recogniser the speech plane runs: Whisper-base (multilingual, batched), or Moonshine
//! base (English only) as the fallback.

use crate::SpeechError;
use crate::moonshine::Moonshine;
use crate::whisper::{Decoded, Request, Whisper};

/// Whether `token` begins a word: its string in `tokens` (a model's token strings as bytes,
/// by token id) starts with a space.
pub(crate) fn starts_word(tokens: &[Vec<u8>], token: u32) -> bool {
    tokens
        .get(token as usize)
        .and_then(|b| b.first())
        .is_some_and(|&c| c == b' ')
}

/// The text of the `tokens` that `keep` keeps, with `table`'s strings.
pub(crate) fn text(table: &[Vec<u8>], tokens: &[u32], keep: impl Fn(u32) -> bool) -> String {
    let bytes: Vec<u8> = tokens
        .iter()
        .filter(|&&t| keep(t))
        .filter_map(|&t| table.get(t as usize))
        .flatten()
        .copied()
        .collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// What live transcription needs of a model's vocabulary.
pub trait Tokens {
    /// Whether `token` begins a new word (LocalAgreement commits whole words).
    fn starts_word(&self, token: u32) -> bool;
}

impl Tokens for Whisper {
    fn starts_word(&self, token: u32) -> bool {
        Whisper::starts_word(self, token)
    }
}

impl Tokens for Moonshine {
    fn starts_word(&self, token: u32) -> bool {
        Moonshine::starts_word(self, token)
    }
}

/// One of the recognisers.
#[derive(Debug)]
pub enum Asr {
    Whisper(Whisper),
    Moonshine(Moonshine),
}

impl Asr {
    pub fn name(&self) -> &'static str {
        match self {
            Asr::Whisper(_) => "whisper-base",
            Asr::Moonshine(_) => "moonshine-base-en",
        }
    }

    /// Whether the model transcribes `code` ("en", "fr", …).
    pub fn knows_language(&self, code: &str) -> bool {
        match self {
            Asr::Whisper(w) => w.knows_language(code),
            Asr::Moonshine(_) => code == "en",
        }
    }

    pub fn transcribe(&mut self, request: Request<'_>) -> Result<Decoded, SpeechError> {
        Ok(self.transcribe_batch(&[request])?.remove(0))
    }

    /// Whisper batches the requests into one call; Moonshine takes them in turn.
    pub fn transcribe_batch(
        &mut self,
        requests: &[Request<'_>],
    ) -> Result<Vec<Decoded>, SpeechError> {
        match self {
            Asr::Whisper(w) => w.transcribe_batch(requests),
            Asr::Moonshine(m) => m.transcribe_batch(requests),
        }
    }
}

impl Tokens for Asr {
    fn starts_word(&self, token: u32) -> bool {
        match self {
            Asr::Whisper(w) => w.starts_word(token),
            Asr::Moonshine(m) => m.starts_word(token),
        }
    }
}

/// Loads the recogniser `choice` names: `"whisper"` (the default), or `"moonshine"`. When
/// Whisper cannot be loaded (a missing or damaged file) and English is among `languages` (or
/// any language is), Moonshine stands in, English only; the second value then says why.
pub fn load(
    runtime: &crate::Runtime,
    models: &crate::Models,
    choice: &str,
    languages: &[String],
    threads: usize,
    providers: &[crate::Provider],
) -> Result<(Asr, Option<String>), SpeechError> {
    let english = languages.is_empty() || languages.iter().any(|l| l == "en");
    let moonshine = || -> Result<Asr, SpeechError> {
        let files = crate::MoonshineFiles::base_en(models)?;
        Ok(Asr::Moonshine(Moonshine::new(
            runtime, &files, threads, providers,
        )?))
    };
    match choice {
        "moonshine" => {
            if !english {
                return Err(SpeechError::Model {
                    name: "moonshine-base-en".into(),
                    reason: format!("English only, and the languages are {languages:?}"),
                });
            }
            Ok((moonshine()?, None))
        }
        "whisper" => {
            let whisper = crate::WhisperFiles::base(models)
                .and_then(|files| Whisper::with_providers(runtime, &files, threads, providers));
            match whisper {
                Ok(w) => Ok((Asr::Whisper(w), None)),
                Err(e) if english => match moonshine() {
                    Ok(m) => Ok((
                        m,
                        Some(format!(
                            "Whisper cannot be used ({e}); English only, on Moonshine"
                        )),
                    )),
                    Err(m) => Err(SpeechError::Model {
                        name: "whisper-base".into(),
                        reason: format!("{e}; and the Moonshine fallback: {m}"),
                    }),
                },
                Err(e) => Err(e),
            }
        }
        other => Err(SpeechError::Model {
            name: other.to_string(),
            reason: "no such recogniser: whisper or moonshine".into(),
        }),
    }
}
