//! `parloir transcribe FILE`: the speech plane's models on a file. WAV is read directly; anything
//! else goes through ffmpeg (installed by the setup) to 16 kHz mono.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use parloir_speech::audio::{self, SPEECH_RATE};
use parloir_speech::{Models, Vad};

#[derive(clap::Args)]
pub struct TranscribeArgs {
    /// The audio (or video) file: WAV, or anything ffmpeg reads.
    file: PathBuf,
    /// en, fr (any of Whisper's language codes); several, comma-separated ("en,fr"), to detect
    /// which of them each utterance is in; or auto to detect among all of Whisper's.
    #[arg(long, default_value = "auto")]
    language: String,
    /// Print JSON (segments with start, end, language and text) instead of text.
    #[arg(long)]
    json: bool,
    /// The models directory (manifest.toml and the packages the setup installed).
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// The recogniser: whisper (Whisper-base, many languages), or moonshine (Moonshine base,
    /// English only). Whisper falls back to Moonshine for English when its files are unusable.
    #[arg(long, default_value = "whisper")]
    model: String,
    /// Inference threads (0: every core this process may use).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// No progress on standard error.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: TranscribeArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let samples = read_audio(&args.file)?;
    let duration = samples.len() as f64 / SPEECH_RATE as f64;
    let runtime =
        parloir_speech::load_in(&args.models).context("transcription needs ONNX Runtime")?;
    let models = Models::open(&args.models)?;
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut vad =
        Vad::new(&runtime, &models.path("silero-vad")?).context("loading the VAD model")?;
    let mut languages: Vec<String> = Vec::new();
    if args.language != "auto" {
        languages = args
            .language
            .split(',')
            .map(|c| c.trim().to_string())
            .collect();
    }
    let (mut asr, fallback) = parloir_speech::asr::load(
        &runtime,
        &models,
        &args.model,
        &languages,
        threads,
        &[parloir_speech::Provider::Cpu],
    )
    .context("loading the recogniser")?;
    if let Some(why) = fallback {
        eprintln!("transcribe: {why}");
    }
    for code in &languages {
        if !asr.knows_language(code) {
            bail!(
                "unknown language {code:?} for {}: en, fr, another Whisper language code, a list of them, or auto",
                asr.name()
            );
        }
    }
    let loaded = started.elapsed();
    let mut stderr = std::io::stderr();
    let segments =
        parloir_speech::transcribe::transcribe(&mut vad, &mut asr, &samples, &languages, |done| {
            if !args.quiet {
                let _ = writeln!(
                    stderr,
                    "transcribe: {done:.1} of {duration:.1} s ({:.0}%)",
                    100.0 * done / duration.max(1e-9)
                );
            }
        })?;
    let took = started.elapsed() - loaded;
    if !args.quiet {
        eprintln!(
            "transcribe: {duration:.1} s of audio in {:.1} s with {} ({} segments, real-time factor {:.3}, {threads} threads; models loaded in {:.1} s)",
            took.as_secs_f64(),
            asr.name(),
            segments.len(),
            took.as_secs_f64() / duration.max(1e-9),
            loaded.as_secs_f64()
        );
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({
                "file": args.file,
                "duration": duration,
                "segments": segments,
            }),
        )?;
        writeln!(out)?;
    } else {
        for s in &segments {
            writeln!(
                out,
                "[{} --> {}] ({}) {}",
                clock(s.start),
                clock(s.end),
                s.language,
                s.text
            )?;
        }
    }
    Ok(())
}

fn clock(seconds: f64) -> String {
    parloir_speech::summary::clock((seconds * 1000.0).round() as u64)
}

/// 16 kHz mono samples of `path`.
fn read_audio(path: &Path) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok(pcm) = audio::parse_wav(&bytes) {
        return Ok(audio::resample(&pcm, SPEECH_RATE).samples);
    }
    drop(bytes);
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-vn", "-f", "f32le", "-ac", "1", "-ar", "16000", "-"])
        .stdin(Stdio::null())
        .output()
        .context("running ffmpeg to decode the file (deploy/setup.sh installs it)")?;
    if !output.status.success() {
        bail!(
            "{}: ffmpeg cannot decode it: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let samples: Vec<f32> = output
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if samples.is_empty() {
        bail!("{}: no audio in it", path.display());
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    #[test]
    fn clock_format() {
        assert_eq!(super::clock(3723.4567), "01:02:03.457");
        assert_eq!(super::clock(0.0), "00:00:00.000");
    }
}
