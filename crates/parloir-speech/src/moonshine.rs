//! Moonshine base (English only), the fallback recogniser: when Whisper cannot be loaded, or
//! when `speech.asr = "moonshine"`. Slower than Whisper-base here (see perf/README.md) and
//! English only, but a different model family from a different package: a site whose Whisper
//! files are broken still gets English subtitles.
//!
//! The encoder takes raw 16 kHz audio. The merged decoder (HF Optimum's layout) takes the
//! self-attention cache and the cross-attention cache per layer and `use_cache_branch`: on the
//! first step (false) it computes the cross-attention cache from the encoder's output and
//! returns it; on later steps (true) the cross-attention cache goes back in unchanged and only
//! the self-attention one grows. Greedy, from BOS 1 to EOS 2, at most 6.5 tokens per second of
//! audio (Moonshine's own bound).

use std::path::PathBuf;

use ort::session::Session;
use ort::value::{DynValue, Tensor};

use crate::whisper::{Decoded, Request, model_err};
use crate::{Models, Provider, Runtime, SpeechError};

const BOS: i64 = 1;
const EOS: usize = 2;
const HEADS: usize = 8;
const HEAD_DIM: usize = 52;
/// The longest audio one call takes (Moonshine was trained on utterances up to ~30 s).
pub const MAX_SECONDS: f32 = 29.0;

/// Where Moonshine's three files are.
#[derive(Debug, Clone)]
pub struct MoonshineFiles {
    pub encoder: PathBuf,
    pub decoder: PathBuf,
    pub tokenizer: PathBuf,
}

impl MoonshineFiles {
    /// Moonshine base (English) from the manifest, each file checked against its SHA-256.
    pub fn base_en(models: &Models) -> Result<Self, SpeechError> {
        Ok(Self {
            encoder: models.path("moonshine-base-en-encoder")?,
            decoder: models.path("moonshine-base-en-decoder")?,
            tokenizer: models.path("moonshine-base-en-tokenizer")?,
        })
    }
}

/// The model and its tokenizer.
pub struct Moonshine {
    encoder: Session,
    decoder: Session,
    tokens: Vec<Vec<u8>>,
    layers: usize,
}

impl std::fmt::Debug for Moonshine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moonshine")
            .field("layers", &self.layers)
            .field("vocabulary", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

/// tokenizer.bin: entries of a length byte then that many bytes; "▁" (U+2581) is a space.
fn read_tokenizer(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut tokens = Vec::with_capacity(32_000);
    let mut at = 0;
    while at < bytes.len() {
        let n = bytes[at] as usize;
        let end = at + 1 + n;
        let token = bytes.get(at + 1..end).ok_or("an entry runs past the end")?;
        tokens.push(
            String::from_utf8_lossy(token)
                .replace('\u{2581}', " ")
                .into_bytes(),
        );
        at = end;
    }
    if tokens.len() < 3 {
        return Err(format!("{} entries", tokens.len()));
    }
    Ok(tokens)
}

impl Moonshine {
    pub fn new(
        runtime: &Runtime,
        files: &MoonshineFiles,
        threads: usize,
        providers: &[Provider],
    ) -> Result<Self, SpeechError> {
        let encoder = crate::provider::session(runtime, threads, providers, &files.encoder)?;
        let decoder = crate::provider::session(runtime, threads, providers, &files.decoder)?;
        let layers = decoder
            .inputs()
            .iter()
            .filter(|i| {
                i.name().starts_with("past_key_values.") && i.name().ends_with(".decoder.key")
            })
            .count();
        if layers == 0 {
            return Err(model_err(&files.decoder, "no past_key_values inputs"));
        }
        let bytes = std::fs::read(&files.tokenizer).map_err(|e| model_err(&files.tokenizer, e))?;
        let tokens = read_tokenizer(&bytes).map_err(|e| model_err(&files.tokenizer, e))?;
        Ok(Self {
            encoder,
            decoder,
            tokens,
            layers,
        })
    }

    /// Whether `token` begins a new word.
    pub fn starts_word(&self, token: u32) -> bool {
        crate::asr::starts_word(&self.tokens, token)
    }

    /// The text of `tokens` (BOS, EOS and unknown left out).
    pub fn text(&self, tokens: &[u32]) -> String {
        crate::asr::text(&self.tokens, tokens, |t| t as usize > EOS)
    }

    /// Transcribes utterances one after the other (the graphs take no padding mask, so they
    /// are not batched). Languages other than English are refused.
    pub fn transcribe_batch(
        &mut self,
        requests: &[Request<'_>],
    ) -> Result<Vec<Decoded>, SpeechError> {
        requests.iter().map(|r| self.transcribe(*r)).collect()
    }

    pub fn transcribe(&mut self, request: Request<'_>) -> Result<Decoded, SpeechError> {
        if !request.languages.is_empty() && !request.languages.iter().any(|l| l == "en") {
            return Err(SpeechError::Audio(format!(
                "Moonshine base is English only, asked for {:?}",
                request.languages
            )));
        }
        let audio = request.audio;
        if audio.len() as f32 > MAX_SECONDS * 16_000.0 {
            return Err(SpeechError::Audio(format!(
                "{:.1} s of audio in one Moonshine call, at most {MAX_SECONDS} s",
                audio.len() as f32 / 16_000.0
            )));
        }
        // Moonshine's encoder needs a little audio to produce any frame.
        let mut padded = audio.to_vec();
        padded.resize(audio.len().max(16_000), 0.0);
        let seconds = padded.len() as f32 / 16_000.0;
        let mut out = self.encoder.run(
            ort::inputs!["input_values" => Tensor::from_array(([1usize, padded.len()], padded))?],
        )?;
        let hidden = out
            .remove("last_hidden_state")
            .ok_or_else(|| missing("last_hidden_state"))?;
        drop(out);

        let empty = || -> Result<DynValue, SpeechError> {
            Ok(
                Tensor::<f32>::from_array(([1usize, HEADS, 0, HEAD_DIM], Vec::<f32>::new()))?
                    .into_dyn(),
            )
        };
        let mut self_kv: Vec<(DynValue, DynValue)> = (0..self.layers)
            .map(|_| Ok((empty()?, empty()?)))
            .collect::<Result<_, SpeechError>>()?;
        let mut cross_kv: Vec<(DynValue, DynValue)> = (0..self.layers)
            .map(|_| Ok((empty()?, empty()?)))
            .collect::<Result<_, SpeechError>>()?;
        let budget = ((seconds * 6.5) as usize + 8).max(request.prefix.len() + 8);
        let mut tokens: Vec<u32> = Vec::new();
        let mut logprob = 0f32;
        let mut next = BOS;
        for step in 0..budget {
            let first = step == 0;
            let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = vec![
                (
                    "input_ids".into(),
                    Tensor::from_array(([1usize, 1], vec![next]))?.into(),
                ),
                ("encoder_hidden_states".into(), (&hidden).into()),
                (
                    "use_cache_branch".into(),
                    Tensor::from_array(([1usize], vec![!first]))?.into(),
                ),
            ];
            for (l, ((sk, sv), (ck, cv))) in self_kv.iter().zip(&cross_kv).enumerate() {
                inputs.push((format!("past_key_values.{l}.decoder.key"), sk.into()));
                inputs.push((format!("past_key_values.{l}.decoder.value"), sv.into()));
                inputs.push((format!("past_key_values.{l}.encoder.key"), ck.into()));
                inputs.push((format!("past_key_values.{l}.encoder.value"), cv.into()));
            }
            let mut res = self.decoder.run(inputs)?;
            let (shape, logits) = res["logits"].try_extract_tensor::<f32>()?;
            let vocab = *shape.last().unwrap_or(&0) as usize;
            let row = &logits[logits.len().saturating_sub(vocab)..];
            let (best, lp) = if let Some(&forced) = request.prefix.get(step) {
                (forced as usize, 0.0)
            } else {
                crate::whisper::argmax_logprob(&row[..vocab.min(self.tokens.len())])
            };
            let mut new_self = Vec::with_capacity(self.layers);
            let mut new_cross = Vec::with_capacity(self.layers);
            for l in 0..self.layers {
                let take = |res: &mut ort::session::SessionOutputs<'_>, name: String| {
                    res.remove(name.as_str()).ok_or_else(|| missing(&name))
                };
                new_self.push((
                    take(&mut res, format!("present.{l}.decoder.key"))?,
                    take(&mut res, format!("present.{l}.decoder.value"))?,
                ));
                if first {
                    new_cross.push((
                        take(&mut res, format!("present.{l}.encoder.key"))?,
                        take(&mut res, format!("present.{l}.encoder.value"))?,
                    ));
                }
            }
            drop(res);
            self_kv = new_self;
            if first {
                // The cross-attention cache is computed once; later steps return placeholders.
                cross_kv = new_cross;
            }
            if best == EOS {
                break;
            }
            tokens.push(best as u32);
            if step >= request.prefix.len() {
                logprob += lp;
            }
            next = best as i64;
        }
        let chosen = tokens.len().saturating_sub(request.prefix.len()).max(1) as f32;
        Ok(Decoded {
            text: self.text(&tokens),
            tokens,
            language: "en".to_string(),
            avg_logprob: logprob / chosen,
            no_speech_prob: 0.0,
        })
    }
}

fn missing(name: &str) -> SpeechError {
    SpeechError::Inference(format!("the Moonshine graph has no output {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_entries() {
        let mut bin = Vec::new();
        for t in ["<unk>", "<s>", "</s>", "\u{2581}good", "morning"] {
            bin.push(t.len() as u8);
            bin.extend(t.as_bytes());
        }
        let tokens = read_tokenizer(&bin).unwrap();
        assert_eq!(tokens.len(), 5);
        assert_eq!(tokens[3], b" good");
        bin.push(9);
        bin.push(b'x');
        assert!(read_tokenizer(&bin).is_err(), "a truncated entry");
        assert!(read_tokenizer(&[]).is_err());
    }
}
