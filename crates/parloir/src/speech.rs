//! The speech plane's thread: published Opus frames come from the media workers through a
//! bounded queue (a full queue drops and counts; the media plane never waits), are decoded and
//! resampled to 16 kHz per track, and cut into speech segments by Silero VAD. Each segment is
//! logged with the room and the speaker's real name; the transcripts come with ASR.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use parloir_sfu::{AudioFrame, AudioTap};
use parloir_speech::{Models, OpusDecoder, Segmenter, Vad};

use crate::metrics::Metrics;

/// Frames the queue holds: 2 s of 50 speakers at 20 ms.
const QUEUE: usize = 5_000;
/// Silence that ends a segment.
const MIN_SILENCE_MS: u32 = 400;
/// A track with no frame for this long is forgotten (its open segment ends).
const IDLE: Duration = Duration::from_secs(30);

/// The media workers' end of the queue.
#[derive(Clone)]
pub struct SpeechTap {
    tx: SyncSender<AudioFrame>,
    metrics: Arc<Metrics>,
}

impl AudioTap for SpeechTap {
    fn frame(&mut self, frame: AudioFrame) {
        match self.tx.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.speech_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Loads the runtime and the VAD model (failing now rather than on the first frame) and
/// starts the thread `speech-0`, pinned to `cpus` when not empty.
pub fn start(models: &Path, metrics: Arc<Metrics>, cpus: Vec<usize>) -> anyhow::Result<SpeechTap> {
    let runtime = parloir_speech::load(None).context("the speech plane needs ONNX Runtime")?;
    let path = Models::open(models)
        .and_then(|m| m.path("silero-vad"))
        .context("the speech plane needs the VAD model")?;
    let vad = Vad::new(&runtime, &path).context("loading the VAD model")?;
    tracing::info!(
        runtime = %runtime.library.display(),
        providers = ?runtime.providers,
        model = %path.display(),
        "speech plane"
    );
    let (tx, rx) = sync_channel(QUEUE);
    let thread_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("speech-0".into())
        .spawn(move || {
            if !cpus.is_empty()
                && let Err(e) = parloir_net::topology::pin_current_thread(&cpus)
            {
                tracing::warn!("cannot pin speech-0 to CPUs {cpus:?}: {e}");
            }
            run(rx, vad, &thread_metrics);
        })?;
    Ok(SpeechTap { tx, metrics })
}

/// One published microphone, as the speech plane follows it.
struct TrackState {
    room: String,
    identity: String,
    name: String,
    decoder: OpusDecoder,
    segmenter: Segmenter,
    last: Instant,
    /// 16 kHz samples decoded so far (the segmenter's clock).
    pcm: Vec<f32>,
}

fn run(rx: Receiver<AudioFrame>, mut vad: Vad, metrics: &Metrics) {
    let mut tracks: HashMap<String, TrackState> = HashMap::new();
    let mut last_sweep = Instant::now();
    loop {
        let frame = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(f) => Some(f),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let now = Instant::now();
        if let Some(frame) = frame {
            metrics.speech_frames.fetch_add(1, Relaxed);
            handle(&mut tracks, &mut vad, frame, now, metrics);
        }
        if now.duration_since(last_sweep) > Duration::from_secs(5) {
            last_sweep = now;
            tracks.retain(|sid, t| {
                let keep = now.duration_since(t.last) < IDLE;
                if !keep && let Some(seg) = t.segmenter.finish() {
                    report(sid, t, seg, metrics);
                }
                keep
            });
        }
    }
}

fn handle(
    tracks: &mut HashMap<String, TrackState>,
    vad: &mut Vad,
    frame: AudioFrame,
    now: Instant,
    metrics: &Metrics,
) {
    let track = match tracks.entry(frame.track_sid.clone()) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => match OpusDecoder::new() {
            Ok(decoder) => e.insert(TrackState {
                room: frame.room.clone(),
                identity: frame.identity.clone(),
                name: frame.name.clone(),
                decoder,
                segmenter: Segmenter::new(MIN_SILENCE_MS),
                last: now,
                pcm: Vec::with_capacity(1024),
            }),
            Err(e) => {
                tracing::warn!("speech: {e}");
                return;
            }
        },
    };
    track.last = now;
    track.name.clone_from(&frame.name);
    track.pcm.clear();
    if let Err(e) = track.decoder.decode(&frame.data, &mut track.pcm) {
        metrics.speech_decode_errors.fetch_add(1, Relaxed);
        tracing::debug!(track = %frame.track_sid, "speech: {e}");
        return;
    }
    match track.segmenter.push(vad, &track.pcm) {
        Ok(segments) => {
            for seg in segments {
                report(&frame.track_sid, track, seg, metrics);
            }
        }
        Err(e) => {
            metrics.speech_decode_errors.fetch_add(1, Relaxed);
            tracing::warn!("speech: VAD failed: {e}");
        }
    }
}

fn report(track_sid: &str, t: &TrackState, seg: parloir_speech::VadSegment, metrics: &Metrics) {
    metrics.speech_segments.fetch_add(1, Relaxed);
    let secs = |s: usize| s as f64 / 16_000.0;
    tracing::info!(
        room = %t.room,
        identity = %t.identity,
        name = %t.name,
        track = %track_sid,
        start_s = secs(seg.start),
        end_s = secs(seg.end),
        "speech segment"
    );
}
