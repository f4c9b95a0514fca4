//! The speech models' real-time factor on CPU (time to transcribe over the audio's duration):
//! Whisper-base on one utterance of about 3, 5 and 9 s on 1 and 2 threads, and a batch of four
//! (four people speaking at once, one call); Moonshine base, the English fallback, on the same
//! utterances; the log-mel front end alone; a speaker embedding of one utterance.
//!
//! `cargo bench -p parloir-speech --bench whisper` (needs deploy/setup.sh's models/ and
//! espeak-ng). Criterion reports the time per transcription; the RTF is that time over the
//! audio seconds in each benchmark's name (perf/README.md has the figures).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criterion::Criterion;
use parloir_speech::audio::{self, SPEECH_RATE};
use parloir_speech::whisper::Request;
use parloir_speech::{Models, Whisper, WhisperFiles, load_in};

fn spoken(text: &str) -> Vec<f32> {
    let wav =
        std::env::temp_dir().join(format!("parloir-bench-whisper-{}.wav", std::process::id()));
    let ok = Command::new("espeak-ng")
        .args(["-v", "en", "-w"])
        .arg(&wav)
        .arg(text)
        .status();
    assert!(ok.expect("espeak-ng runs").success());
    let pcm = audio::read_wav(&wav).expect("a WAV");
    let _ = std::fs::remove_file(&wav);
    audio::resample(&pcm, SPEECH_RATE).samples
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let runtime =
        load_in(&root.join("models")).expect("ONNX Runtime (deploy/setup.sh installs it)");
    let models = Models::open(&root.join("models")).expect("models/manifest.toml");
    let files = WhisperFiles::base(&models).expect("Whisper-base (deploy/setup.sh converts it)");
    let sentences = [
        "Good morning everyone, the meeting starts now.",
        "We will review the budget for next year, and Paul will send the report on Friday.",
        "The committee has reviewed the proposal and will publish its findings next week, \
         and each department must send its plan to the finance team before the end of March.",
    ];
    let clips: Vec<Vec<f32>> = sentences.iter().map(|s| spoken(s)).collect();
    let secs = |c: &[f32]| c.len() as f64 / SPEECH_RATE as f64;
    let en = vec!["en".to_string()];

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    let mel = parloir_speech::mel::LogMel::new();
    c.bench_function(&format!("log-mel/{:.1}s", secs(&clips[2])), |b| {
        b.iter(|| mel.compute(&clips[2]))
    });
    for threads in [1, 2] {
        let mut whisper = Whisper::new(&runtime, &files, threads).expect("Whisper loads");
        let mut group = c.benchmark_group(format!("whisper-base/{threads}-threads"));
        for clip in &clips {
            group.bench_function(format!("{:.1}s", secs(clip)), |b| {
                b.iter(|| {
                    whisper
                        .transcribe(Request {
                            audio: clip,
                            languages: &en,
                            prefix: &[],
                        })
                        .expect("inference")
                })
            });
        }
        // Four speakers at once: one batched call over four ~6 s utterances.
        let batch: Vec<Request<'_>> = (0..4)
            .map(|_| Request {
                audio: &clips[1],
                languages: &en,
                prefix: &[],
            })
            .collect();
        group.bench_function(format!("batch-4x{:.1}s", secs(&clips[1])), |b| {
            b.iter(|| whisper.transcribe_batch(&batch).expect("inference"))
        });
        group.finish();
    }
    // Moonshine base (English), the fallback: one utterance at a time.
    let files =
        parloir_speech::MoonshineFiles::base_en(&models).expect("Moonshine (deploy/setup.sh)");
    for threads in [1, 2] {
        let mut moonshine = parloir_speech::Moonshine::new(
            &runtime,
            &files,
            threads,
            &[parloir_speech::Provider::Cpu],
        )
        .expect("Moonshine loads");
        let mut group = c.benchmark_group(format!("moonshine-base-en/{threads}-threads"));
        for clip in &clips {
            group.bench_function(format!("{:.1}s", secs(clip)), |b| {
                b.iter(|| {
                    moonshine
                        .transcribe(Request {
                            audio: clip,
                            languages: &en,
                            prefix: &[],
                        })
                        .expect("inference")
                })
            });
        }
        group.finish();
    }
    // Speaker embedding of one utterance (for each final on a shared microphone).
    let path = models
        .path("speaker-embedding")
        .expect("the speaker embedder");
    let mut embedder =
        parloir_speech::speaker::SpeakerEmbedder::new(&runtime, &path).expect("loads");
    c.bench_function(&format!("speaker-embedding/{:.1}s", secs(&clips[1])), |b| {
        b.iter(|| embedder.embed(&clips[1]).expect("inference"))
    });
    c.final_summary();
}
