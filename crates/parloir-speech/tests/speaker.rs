//! Voices on one shared microphone, told apart by speaker embeddings: real espeak-ng voices
//! through the real embedder (from its registry package, checksum verified).

use std::path::{Path, PathBuf};
use std::process::Command;

use parloir_speech::audio::{self, SPEECH_RATE};
use parloir_speech::speaker::{SpeakerEmbedder, Voices};
use parloir_speech::{Models, load_in};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn embedder() -> SpeakerEmbedder {
    let root = root();
    let runtime = load_in(&root.join("models")).unwrap();
    let models = Models::open(&root.join("models")).unwrap();
    let path = models
        .path("speaker-embedding")
        .expect("the speaker embedder (deploy/setup.sh installs it), checksum verified");
    SpeakerEmbedder::new(&runtime, &path).unwrap()
}

fn spoken(voice: &str, text: &str) -> Vec<f32> {
    // Tests run in parallel: one file per call.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let wav = std::env::temp_dir().join(format!("parloir-speaker-{}-{n}.wav", std::process::id()));
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&wav)
        .arg(text)
        .status();
    assert!(ok.expect("espeak-ng runs").success());
    let pcm = audio::read_wav(&wav).unwrap();
    let _ = std::fs::remove_file(&wav);
    audio::resample(&pcm, SPEECH_RATE).samples
}

const LINES: [&str; 6] = [
    "Good morning everyone, the meeting starts now.",
    "We will review the budget for next year.",
    "Paul will send the report on Friday.",
    "The new office in Lyon opens in September.",
    "Please send your questions by email before noon.",
    "Each team will present its plan next week.",
];

#[test]
fn two_people_on_one_microphone_are_two_voices() {
    let mut e = embedder();
    let mut voices = Voices::default();
    // A man and a woman take turns at the room's microphone.
    let mut got = Vec::new();
    for (i, line) in LINES.iter().enumerate() {
        let who = if i % 2 == 0 { "en" } else { "en+f2" };
        let audio = spoken(who, line);
        let emb = e.embed(&audio).unwrap();
        assert_eq!(emb.len(), 256);
        let norm: f32 = emb.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3);
        got.push(voices.assign(&emb, audio.len()));
    }
    assert_eq!(
        got,
        [1, 2, 1, 2, 1, 2],
        "each utterance goes to its speaker"
    );
    assert_eq!(voices.len(), 2);
}

#[test]
fn one_person_stays_one_voice() {
    let mut e = embedder();
    let mut voices = Voices::default();
    for line in LINES {
        let audio = spoken("en-us", line);
        assert_eq!(
            voices.assign(&e.embed(&audio).unwrap(), audio.len()),
            1,
            "{line}"
        );
    }
    // Very short audio, and silence, still embed without error.
    assert_eq!(e.embed(&vec![0.0; 4000]).unwrap().len(), 256);
    assert_eq!(e.embed(&[]).unwrap().len(), 256);
}
