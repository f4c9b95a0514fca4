//! Live transcription on real speech and the real models: espeak-ng sentences fed in 20 ms
//! frames, as the speech plane receives a microphone, decoded as the track asks.

use std::path::{Path, PathBuf};
use std::process::Command;

use parloir_speech::audio::{self, SPEECH_RATE};
use parloir_speech::{
    LiveConfig, LiveText, LiveTrack, Models, Vad, Whisper, WhisperFiles, load_in,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models() -> (Vad, Whisper) {
    let root = root();
    let runtime =
        load_in(&root.join("models")).expect("ONNX Runtime (deploy/setup.sh installs it)");
    let models = Models::open(&root.join("models")).expect("models/manifest.toml");
    let vad = Vad::new(&runtime, &models.path("silero-vad").unwrap()).unwrap();
    let files = WhisperFiles::base(&models).expect("Whisper-base, converted by deploy/setup.sh");
    (vad, Whisper::new(&runtime, &files, 2).unwrap())
}

fn spoken(voice: &str, text: &str) -> Vec<f32> {
    // Tests run in parallel: one file per call.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let wav = std::env::temp_dir().join(format!("parloir-live-{}-{n}.wav", std::process::id()));
    let status = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&wav)
        .arg(text)
        .status();
    assert!(status.expect("espeak-ng runs").success());
    let pcm = audio::read_wav(&wav).unwrap();
    let _ = std::fs::remove_file(&wav);
    audio::resample(&pcm, SPEECH_RATE).samples
}

/// Feeds `signal` in 20 ms frames, running every job as soon as the track asks (one speaker,
/// no batching); returns the texts with the position at which each came out.
fn run(
    track: &mut LiveTrack,
    vad: &mut Vad,
    whisper: &mut Whisper,
    signal: &[f32],
) -> Vec<(usize, LiveText)> {
    let mut out = Vec::new();
    for frame in signal.chunks(320) {
        track.push(vad, frame).unwrap();
        while let Some(job) = track.next_job() {
            let decoded = whisper.transcribe(track.request(&job)).unwrap();
            if let Some(text) = track.complete(whisper, &job, decoded) {
                out.push((track.position(), text));
            }
        }
    }
    out
}

#[test]
fn interim_text_grows_then_one_final_per_utterance() {
    let (mut vad, mut whisper) = models();
    let first =
        "Good morning everyone, the meeting starts now. We will review the budget for next year.";
    let second = "Paul will send the report on Friday.";
    let silence = |s: f32| vec![0.0f32; (s * 16_000.0) as usize];
    let mut signal = silence(1.0);
    signal.extend(spoken("en", first));
    let first_end = signal.len();
    signal.extend(silence(1.5));
    signal.extend(spoken("en", second));
    signal.extend(silence(1.5));

    let mut track = LiveTrack::new(LiveConfig {
        languages: vec!["en".into()],
        ..LiveConfig::default()
    });
    let texts = run(&mut track, &mut vad, &mut whisper, &signal);
    for (at, t) in &texts {
        eprintln!(
            "{:5.2} s  #{} {} {:?}",
            *at as f64 / 16_000.0,
            t.segment,
            if t.is_final { "final" } else { "interim" },
            t.text
        );
    }
    let finals: Vec<&LiveText> = texts
        .iter()
        .map(|(_, t)| t)
        .filter(|t| t.is_final)
        .collect();
    assert_eq!(finals.len(), 2, "one final per utterance");
    assert_eq!(
        finals[0].text,
        "Good morning everyone, the meeting starts now. We will review the budget for next year."
    );
    assert_eq!(finals[1].text, "Paul will send the report on Friday.");
    assert!(finals.iter().all(|t| t.language == "en"));
    // The first utterance's final comes within a second of the end of its speech (the VAD's
    // 0.4 s of silence, then the decode).
    let (at, _) = texts.iter().find(|(_, t)| t.is_final).unwrap();
    assert!(
        *at < first_end + 16_000,
        "final at {at}, speech ended at {first_end}"
    );
    // Interim texts come while speaking, about every second, for the same segment, and each
    // shares its committed start with the final.
    let interims: Vec<&LiveText> = texts
        .iter()
        .map(|(_, t)| t)
        .filter(|t| !t.is_final && t.segment == finals[0].segment)
        .collect();
    assert!(interims.len() >= 3, "{} interims", interims.len());
    let before_final = texts.iter().position(|(_, t)| t.is_final).unwrap();
    assert!(
        texts[..before_final]
            .iter()
            .all(|(_, t)| !t.is_final && t.segment == finals[0].segment)
    );
    let last = interims.last().unwrap();
    assert!(
        finals[0]
            .text
            .starts_with(&last.text[..last.text.len() / 2]),
        "the last interim {:?} agrees with the final",
        last.text
    );
    // Positions in the track: the first utterance starts after the leading second of silence.
    assert!(
        finals[0].start >= 9_600 && finals[0].start <= 16_000,
        "start {}",
        finals[0].start
    );
    assert!(finals[0].end > finals[0].start && finals[1].start >= finals[0].end);
}

#[test]
fn silence_and_noise_give_no_text() {
    let (mut vad, mut whisper) = models();
    let mut seed = 1u32;
    let noise: Vec<f32> = (0..5 * 16_000)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 0.004 - 0.002
        })
        .collect();
    let mut track = LiveTrack::new(LiveConfig::default());
    let texts = run(&mut track, &mut vad, &mut whisper, &noise);
    assert!(texts.is_empty(), "{texts:?}");
    assert!(!track.busy());
}

#[test]
fn a_long_monologue_is_cut_into_utterances_whisper_takes() {
    let (mut vad, mut whisper) = models();
    // About 25 s of speech with no pause long enough for the VAD.
    let sentences = [
        "The committee has reviewed the proposal and will publish its findings next week",
        "Our budget for the coming year is higher than last year because of new hires",
        "Each department must send its plan to the finance team before the end of March",
        "We also need volunteers to organise the summer party for the whole staff",
        "Finally the new office in Lyon will open in September with forty desks",
        "Thank you all for coming and please send your questions by email",
    ];
    let mut signal = Vec::new();
    for s in sentences {
        signal.extend(spoken("en", s));
    }
    assert!(signal.len() > 24 * 16_000, "{} s", signal.len() / 16_000);
    signal.extend(vec![0.0; 16_000]);
    let config = LiveConfig {
        languages: vec!["en".into()],
        ..LiveConfig::default()
    };
    let max = config.max_utterance;
    let mut track = LiveTrack::new(config);
    let texts = run(&mut track, &mut vad, &mut whisper, &signal);
    let finals: Vec<&LiveText> = texts
        .iter()
        .map(|(_, t)| t)
        .filter(|t| t.is_final)
        .collect();
    assert!(finals.len() >= 2, "{finals:?}");
    assert!(finals.iter().all(|t| t.end - t.start <= max + 16_000));
    assert!(finals.windows(2).all(|w| w[0].end <= w[1].start));
    let all: String = finals
        .iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("{all}");
    let all = all.to_lowercase();
    for key in [
        "committee",
        "budget",
        "department",
        "volunteers",
        "lyon",
        "questions",
    ] {
        assert!(all.contains(key), "{key:?} is missing from {all:?}");
    }
}

#[test]
fn the_profile_providers_this_runtime_lacks_are_left_out_for_the_cpu() {
    use parloir_speech::Provider;
    let root = root();
    let runtime = load_in(&root.join("models")).unwrap();
    let wanted = [Provider::TensorRt, Provider::Cuda, Provider::Cpu];
    let (chosen, skipped) = parloir_speech::provider::choose(&runtime, &wanted);
    assert_eq!(chosen.last(), Some(&Provider::Cpu), "the CPU stands behind");
    for p in [Provider::TensorRt, Provider::Cuda] {
        let has = runtime.providers.iter().any(|n| n == p.ort_name());
        assert_eq!(chosen.contains(&p), has, "{p}: {:?}", runtime.providers);
        assert_eq!(
            skipped.iter().any(|w| w.starts_with(&format!("{p}:"))),
            !has,
            "{skipped:?}"
        );
    }
    // Whisper on what was chosen transcribes.
    let models = Models::open(&root.join("models")).unwrap();
    let files = WhisperFiles::base(&models).unwrap();
    let mut whisper = Whisper::with_providers(&runtime, &files, 2, &chosen).unwrap();
    let en = vec!["en".to_string()];
    let audio = spoken("en", "Good morning everyone.");
    let d = whisper
        .transcribe(parloir_speech::whisper::Request {
            audio: &audio,
            languages: &en,
            prefix: &[],
        })
        .unwrap();
    assert_eq!(d.text, "Good morning everyone.");
}

#[test]
fn moonshine_carries_a_live_track_too() {
    let root = root();
    let runtime = load_in(&root.join("models")).unwrap();
    let models = Models::open(&root.join("models")).unwrap();
    let mut vad = Vad::new(&runtime, &models.path("silero-vad").unwrap()).unwrap();
    let (mut asr, fallback) = parloir_speech::asr::load(
        &runtime,
        &models,
        "moonshine",
        &["en".to_string()],
        2,
        &[parloir_speech::Provider::Cpu],
    )
    .unwrap();
    assert!(fallback.is_none());
    let mut signal = vec![0.0f32; 16_000];
    signal.extend(spoken(
        "en",
        "Good morning everyone, the meeting starts now.",
    ));
    signal.extend(vec![0.0f32; 24_000]);
    let mut track = LiveTrack::new(LiveConfig::default());
    let mut texts = Vec::new();
    for frame in signal.chunks(320) {
        track.push(&mut vad, frame).unwrap();
        while let Some(job) = track.next_job() {
            let decoded = asr.transcribe(track.request(&job)).unwrap();
            if let Some(t) = track.complete(&asr, &job, decoded) {
                texts.push(t);
            }
        }
    }
    let finals: Vec<&LiveText> = texts.iter().filter(|t| t.is_final).collect();
    assert_eq!(finals.len(), 1, "{texts:?}");
    let words = |s: &str| -> Vec<String> {
        s.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        words(&finals[0].text),
        words("Good morning everyone, the meeting starts now.")
    );
    assert!(texts.iter().any(|t| !t.is_final), "interim text first");
}
