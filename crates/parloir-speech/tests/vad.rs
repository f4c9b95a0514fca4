//! Silero VAD on real spoken French and English (espeak-ng, installed by deploy/setup.sh),
//! through the real ONNX Runtime and the model from its registry package.

use std::path::{Path, PathBuf};
use std::process::Command;

use parloir_speech::audio::{self, Pcm, SPEECH_RATE};
use parloir_speech::{Models, Vad, load_in, speech_segments};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vad() -> Vad {
    let root = root();
    let runtime =
        load_in(&root.join("models")).expect("ONNX Runtime (deploy/setup.sh installs it)");
    let models = Models::open(&root.join("models")).expect("models/manifest.toml");
    let path = models
        .path("silero-vad")
        .expect("the Silero VAD model, checksum verified");
    Vad::new(&runtime, &path).expect("the model loads")
}

/// `text` spoken by espeak-ng in `voice`, at 16 kHz.
fn spoken(voice: &str, text: &str) -> Vec<f32> {
    let wav = std::env::temp_dir().join(format!("parloir-vad-{voice}-{}.wav", std::process::id()));
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng runs (deploy/setup.sh installs it)");
    assert!(status.success());
    let pcm = audio::read_wav(&wav).expect("espeak-ng writes 16-bit WAV");
    let _ = std::fs::remove_file(&wav);
    audio::resample(&pcm, SPEECH_RATE).samples
}

/// Faint noise, as a quiet room's microphone gives.
fn room_noise(seconds: f32, seed: &mut u32) -> Vec<f32> {
    (0..(seconds * SPEECH_RATE as f32) as usize)
        .map(|_| {
            *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (*seed >> 8) as f32 / (1u32 << 24) as f32 * 0.004 - 0.002
        })
        .collect()
}

#[test]
fn speech_is_found_and_silence_is_not_in_french_and_english() {
    let mut vad = vad();
    let mut seed = 7;
    for (voice, first, second) in [
        (
            "fr",
            "Bonjour à tous, la réunion commence maintenant.",
            "Nous allons parler du budget de l'année prochaine.",
        ),
        (
            "en",
            "Good morning everyone, the meeting starts now.",
            "We will talk about next year's budget.",
        ),
    ] {
        vad.reset();
        // 1 s of room, a sentence, 1.5 s of room, a sentence, 1 s of room.
        let mut signal = room_noise(1.0, &mut seed);
        let s1 = spoken(voice, first);
        let a = signal.len()..signal.len() + s1.len();
        signal.extend(&s1);
        signal.extend(room_noise(1.5, &mut seed));
        let s2 = spoken(voice, second);
        let b = signal.len()..signal.len() + s2.len();
        signal.extend(&s2);
        signal.extend(room_noise(1.0, &mut seed));

        let segments = speech_segments(&mut vad, &signal, 300).expect("inference runs");
        eprintln!("{voice}: speech at {a:?} and {b:?}, segments {segments:?}");
        assert_eq!(
            segments.len(),
            2,
            "{voice}: two sentences, two segments: {segments:?}"
        );
        for (seg, spoken) in segments.iter().zip([&a, &b]) {
            // Within 100 ms of where the speech is (espeak-ng pads a little silence around it).
            let slack = SPEECH_RATE as usize / 10;
            assert!(
                seg.start + slack >= spoken.start && seg.start <= spoken.start + 4 * slack,
                "{voice}: segment {seg:?} starts near {spoken:?}"
            );
            assert!(
                seg.end + 4 * slack >= spoken.end && seg.end <= spoken.end + 4 * slack,
                "{voice}: segment {seg:?} ends near {spoken:?}"
            );
        }
    }
}

#[test]
fn a_model_that_fails_its_checksum_is_refused() {
    let dir = std::env::temp_dir().join(format!("parloir-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read_to_string(root().join("models/manifest.toml")).unwrap();
    let tampered = manifest.replace("sha256 = \"7671cd04", "sha256 = \"0000cd04");
    assert_ne!(manifest, tampered);
    std::fs::write(dir.join("manifest.toml"), tampered).unwrap();
    let venv = dir.join(".venv");
    let _ = std::fs::remove_file(&venv);
    std::os::unix::fs::symlink(root().join("models/.venv"), &venv).unwrap();
    let e = Models::open(&dir).unwrap().path("silero-vad").unwrap_err();
    assert!(e.to_string().contains("SHA-256"), "{e}");
    assert!(Models::open(&dir).unwrap().path("whisper-xl").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn silence_alone_is_not_speech() {
    let mut vad = vad();
    let mut seed = 3;
    let quiet: Pcm = Pcm {
        rate: SPEECH_RATE,
        samples: room_noise(3.0, &mut seed),
    };
    assert!(
        speech_segments(&mut vad, &quiet.samples, 300)
            .unwrap()
            .is_empty()
    );
}
