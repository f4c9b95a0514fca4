//! The speech plane's thread. Published Opus frames come from the media workers through a
//! bounded queue (a full queue drops and counts; the media plane never waits). Per track they
//! are decoded to 16 kHz, with gaps in the RTP timeline filled with silence, and fed to a
//! [`LiveTrack`]: VAD opens and closes utterances and Whisper transcribes them, the jobs of
//! several speakers batched into one call. The text goes back to the room as subtitles
//! (`lk.transcription` text streams and Transcription packets, sent by the room's media worker
//! as the speaker) and each final segment is appended to the meeting's transcript with the
//! speaker's identity and real name. When a room closes (its `room_finished` event) its open
//! utterances are finished, and a summary is written beside the transcript on a thread of its
//! own, then announced by the `transcript_ready` webhook (crate::transcripts).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use parloir_sfu::{AudioFrame, AudioTap, Command, ServiceCall, Subtitle, proto};
use parloir_speech::live::Job;
use parloir_speech::speaker::{SpeakerEmbedder, Voices};
use parloir_speech::summary::Segment;
use parloir_speech::{Asr, LiveConfig, LiveText, LiveTrack, Models, OpusDecoder, Provider, Vad};

use crate::config::SpeechConfig;
use crate::media::MediaHandle;
use crate::metrics::Metrics;
use crate::transcripts::{self, Llm};
use crate::webhook::Webhooks;

/// Frames the queue holds: 2 s of 50 speakers at 20 ms.
const QUEUE: usize = 5_000;
/// A track with no frame for this long has its open utterance closed (a muted microphone
/// sends nothing).
const QUIET: Duration = Duration::from_millis(1_000);
/// A track with no frame for this long is forgotten.
const IDLE: Duration = Duration::from_secs(30);
/// Utterances decoded together in one Whisper call, at most.
const BATCH: usize = 4;
/// A gap in the RTP timeline longer than this is not filled with silence (the open utterance
/// closes instead).
const MAX_GAP_48K: u64 = 5 * 48_000;
/// The reply id of subtitle calls: nobody waits for their answer.
const NO_REPLY: u64 = u64::MAX;

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

/// The running speech plane: its tap for the media workers, and where its subtitles and
/// announcements go once the media workers and webhooks exist.
pub struct SpeechPlane {
    pub tap: SpeechTap,
    outputs: Arc<Outputs>,
    closed: std::sync::mpsc::Sender<ClosedRoom>,
}

#[derive(Default)]
struct Outputs {
    media: OnceLock<MediaHandle>,
    webhooks: OnceLock<Webhooks>,
}

/// A room that closed: its name and sid.
struct ClosedRoom {
    name: String,
    sid: String,
}

impl SpeechPlane {
    /// Subtitles go to the rooms through `media`, announcements through `webhooks`, from now on.
    pub fn attach(&self, media: MediaHandle, webhooks: Webhooks) {
        let _ = self.outputs.media.set(media);
        let _ = self.outputs.webhooks.set(webhooks);
    }

    /// What the webhooks tell the speech plane: rooms closing.
    pub fn observer(&self) -> crate::webhook::Observer {
        let closed = std::sync::Mutex::new(self.closed.clone());
        Arc::new(move |event: &proto::WebhookEvent| {
            if event.event == "room_finished"
                && let Some(room) = &event.room
            {
                let _ = closed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .send(ClosedRoom {
                        name: room.name.clone(),
                        sid: room.sid.clone(),
                    });
            }
        })
    }
}

/// Loads the runtime and the models (failing now, with the reason, rather than on the first
/// frame) and starts the thread `speech-0`, pinned to `cpus` when not empty.
pub fn start(
    config: &SpeechConfig,
    metrics: Arc<Metrics>,
    cpus: Vec<usize>,
    providers: &[String],
) -> anyhow::Result<SpeechPlane> {
    let (tx, rx) = sync_channel(QUEUE);
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let outputs = Arc::new(Outputs::default());
    // The models load on the pinned thread itself: ONNX Runtime's inference threads are made
    // with the sessions and inherit the affinity of the thread that makes them, so they run on
    // the speech cores too. The caller waits for the outcome.
    let (ready_tx, ready_rx) = sync_channel::<anyhow::Result<()>>(1);
    let (config, thread_metrics, thread_outputs) =
        (config.clone(), metrics.clone(), outputs.clone());
    let providers = providers.to_vec();
    std::thread::Builder::new()
        .name("speech-0".into())
        .spawn(move || {
            if !cpus.is_empty()
                && let Err(e) = parloir_net::topology::pin_current_thread(&cpus)
            {
                tracing::warn!("cannot pin speech-0 to CPUs {cpus:?}: {e}");
            }
            match load(
                &config,
                thread_metrics,
                thread_outputs,
                cpus.len(),
                &providers,
            ) {
                Ok(mut plane) => {
                    let _ = ready_tx.send(Ok(()));
                    plane.run(rx, closed_rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the speech thread stopped while loading"))??;
    Ok(SpeechPlane {
        tap: SpeechTap { tx, metrics },
        outputs,
        closed: closed_tx,
    })
}

/// The runtime, the models and the plane's state, from the configuration.
fn load(
    config: &SpeechConfig,
    metrics: Arc<Metrics>,
    outputs: Arc<Outputs>,
    cores: usize,
    providers: &[String],
) -> anyhow::Result<Plane> {
    let runtime = parloir_speech::load_in(&config.models_dir)
        .context("the speech plane needs ONNX Runtime")?;
    let models = Models::open(&config.models_dir)?;
    let vad_path = models
        .path("silero-vad")
        .context("the speech plane needs the VAD model")?;
    let vad = Vad::new(&runtime, &vad_path).context("loading the VAD model")?;
    // Without the embedder, voices on one microphone are not told apart; the rest works.
    let embedder = match models
        .path("speaker-embedding")
        .and_then(|p| SpeakerEmbedder::new(&runtime, &p))
    {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!("speech: voices on one microphone will not be told apart: {e}");
            None
        }
    };
    // One inference thread per speech core it is pinned to; unpinned, two.
    let threads = match (config.threads, cores) {
        (0, 0) => 2,
        (0, n) => n,
        (n, _) => n,
    };
    // Whisper on the hardware profile's providers that this runtime has; the VAD (tiny,
    // 32 ms steps) stays on the CPU.
    let wanted: Vec<Provider> = providers
        .iter()
        .filter_map(|name| {
            let p = Provider::parse(name);
            if p.is_none() {
                tracing::warn!(
                    "speech: unknown execution provider {name:?} in the hardware profile"
                );
            }
            p
        })
        .collect();
    let (chosen, skipped) = parloir_speech::provider::choose(&runtime, &wanted);
    for why in &skipped {
        tracing::info!("speech: {why}");
    }
    let (asr, fallback) = parloir_speech::asr::load(
        &runtime,
        &models,
        &config.asr,
        &config.languages,
        threads,
        &chosen,
    )
    .context("the speech plane needs a recogniser")?;
    if let Some(why) = fallback {
        tracing::warn!("speech: {why}");
    }
    for code in &config.languages {
        anyhow::ensure!(
            asr.knows_language(code),
            "speech.languages: {} has no language {code:?}",
            asr.name()
        );
    }
    std::fs::create_dir_all(&config.transcripts_dir).with_context(|| {
        format!(
            "cannot create speech.transcripts_dir {}",
            config.transcripts_dir.display()
        )
    })?;
    tracing::info!(
        runtime = %runtime.library.display(),
        available = ?runtime.providers,
        providers = ?chosen.iter().map(ToString::to_string).collect::<Vec<_>>(),
        asr = asr.name(),
        threads,
        languages = ?config.languages,
        transcripts = %config.transcripts_dir.display(),
        "speech plane"
    );
    let llm = (!config.summary_llm_url.is_empty()).then(|| Llm {
        url: config.summary_llm_url.clone(),
        model: config.summary_llm_model.clone(),
        api_key: config.summary_llm_api_key.clone(),
        timeout: Duration::from_secs(config.summary_llm_timeout_s.max(1)),
    });
    Ok(Plane {
        vad,
        asr,
        embedder,
        tracks: HashMap::new(),
        metrics,
        outputs,
        llm,
        live: LiveConfig {
            interval: (config.interval_ms as usize * 16).max(1_600),
            languages: config.languages.clone(),
            ..LiveConfig::default()
        },
        transcripts: config.transcripts_dir.clone(),
    })
}

/// One published microphone, as the speech plane follows it.
struct TrackState {
    room: String,
    room_sid: String,
    identity: String,
    name: String,
    decoder: OpusDecoder,
    live: LiveTrack,
    last: Instant,
    /// The RTP time (48 kHz) where the next frame should start.
    next_rtp: Option<u64>,
    /// Unix milliseconds of the track's sample 0.
    origin_ms: u64,
    pcm: Vec<f32>,
    /// The voices heard on this microphone (a shared room microphone has several).
    voices: Voices,
    /// The room's languages as last seen (its metadata's), to notice changes cheaply.
    room_languages: Option<Arc<[String]>>,
}

struct Plane {
    vad: Vad,
    asr: Asr,
    /// Speaker embeddings, to number the voices of one microphone; `None` without the model.
    embedder: Option<SpeakerEmbedder>,
    tracks: HashMap<String, TrackState>,
    metrics: Arc<Metrics>,
    outputs: Arc<Outputs>,
    llm: Option<Llm>,
    live: LiveConfig,
    transcripts: PathBuf,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Plane {
    fn run(&mut self, rx: Receiver<AudioFrame>, closed: Receiver<ClosedRoom>) {
        let mut last_sweep = Instant::now();
        loop {
            while let Ok(room) = closed.try_recv() {
                self.room_closed(room);
            }
            // Wait briefly for audio, then take everything queued before decoding.
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(frame) => self.frame(frame),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for _ in 0..QUEUE {
                match rx.try_recv() {
                    Ok(frame) => self.frame(frame),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if now.duration_since(last_sweep) >= Duration::from_millis(250) {
                last_sweep = now;
                self.sweep(now);
            }
            self.decode_batch();
        }
    }

    fn frame(&mut self, frame: AudioFrame) {
        self.metrics.speech_frames.fetch_add(1, Relaxed);
        let now = Instant::now();
        let track = match self.tracks.entry(frame.track_sid.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => match OpusDecoder::new() {
                Ok(decoder) => e.insert(TrackState {
                    room: frame.room.clone(),
                    room_sid: frame.room_sid.clone(),
                    identity: frame.identity.clone(),
                    name: frame.name.clone(),
                    decoder,
                    live: LiveTrack::new(self.live.clone()),
                    last: now,
                    next_rtp: None,
                    origin_ms: unix_ms(),
                    pcm: Vec::with_capacity(1024),
                    voices: Voices::default(),
                    room_languages: None,
                }),
                Err(e) => {
                    tracing::warn!("speech: {e}");
                    return;
                }
            },
        };
        track.last = now;
        if track.name != frame.name {
            track.name.clone_from(&frame.name);
        }
        // The room's languages (its metadata) when it names ones the recogniser knows, else
        // the configuration's; looked at again only when the room's list changes.
        let same = match (&track.room_languages, &frame.languages) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            let known: Vec<String> = frame
                .languages
                .iter()
                .flat_map(|l| l.iter())
                .filter(|c| self.asr.knows_language(c))
                .cloned()
                .collect();
            if known.is_empty() {
                track.live.set_languages(&self.live.languages);
            } else {
                track.live.set_languages(&known);
            }
            track.room_languages = frame.languages.clone();
        }
        // Silence for the frames that never came (DTX, loss), so the timeline stays true and
        // the VAD sees the pauses.
        if let Some(expected) = track.next_rtp {
            let behind = expected.saturating_sub(frame.rtp_time);
            if behind > MAX_GAP_48K {
                // Far behind: the timestamps wrapped or restarted. Follow them.
                tracing::debug!(track = %frame.track_sid, rtp = frame.rtp_time, expected, "speech: RTP time jumped back");
            } else if behind > 0 {
                // Late or repeated: its place was taken.
                return;
            }
            let gap = frame.rtp_time.saturating_sub(expected);
            if gap > MAX_GAP_48K {
                track.live.flush();
                track.origin_ms += gap / 48;
            } else if gap >= 48 {
                let zeros = vec![0.0f32; (gap / 3) as usize];
                if let Err(e) = track.live.push(&mut self.vad, &zeros) {
                    tracing::warn!("speech: VAD failed: {e}");
                }
            }
        }
        track.pcm.clear();
        if let Err(e) = track.decoder.decode(&frame.data, &mut track.pcm) {
            self.metrics.speech_decode_errors.fetch_add(1, Relaxed);
            tracing::debug!(track = %frame.track_sid, "speech: {e}");
            return;
        }
        track.next_rtp = Some(frame.rtp_time + track.pcm.len() as u64 * 3);
        if let Err(e) = track.live.push(&mut self.vad, &track.pcm) {
            self.metrics.speech_decode_errors.fetch_add(1, Relaxed);
            tracing::warn!("speech: VAD failed: {e}");
        }
    }

    /// The room closed: its utterances are finished and transcribed now, then its summary is
    /// written and announced on a thread of its own (a chat model may take a while).
    fn room_closed(&mut self, room: ClosedRoom) {
        let mine = |t: &TrackState| t.room_sid == room.sid;
        for t in self.tracks.values_mut().filter(|t| mine(t)) {
            t.live.flush();
        }
        // Every job of this room's tracks; others' run too, so this ends. Bounded anyway.
        for _ in 0..256 {
            if !self
                .tracks
                .values()
                .any(|t| mine(t) && t.live.next_job().is_some())
            {
                break;
            }
            self.decode_batch();
        }
        self.tracks.retain(|_, t| !mine(t));
        if !transcripts::valid_sid(&room.sid) {
            return;
        }
        let dir = self.transcripts.clone();
        let llm = self.llm.clone();
        let outputs = self.outputs.clone();
        let spawned = std::thread::Builder::new()
            .name("summary".into())
            .spawn(move || match transcripts::write_summary(&dir, &room.sid, llm.as_ref()) {
                Ok(Some(summary)) => {
                    tracing::info!(room = %room.name, sid = %room.sid, source = %summary.source, "meeting summary written");
                    if let Some(webhooks) = outputs.webhooks.get() {
                        webhooks.send(proto::WebhookEvent {
                            event: "transcript_ready".into(),
                            room: Some(proto::Room {
                                name: room.name.clone(),
                                sid: room.sid.clone(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(room = %room.name, sid = %room.sid, "cannot write the meeting summary: {e:#}"),
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the summary thread: {e}");
        }
    }

    /// Closes the utterances of tracks that went quiet; forgets tracks gone for long.
    fn sweep(&mut self, now: Instant) {
        self.tracks.retain(|_, t| {
            let idle = now.duration_since(t.last);
            if idle >= QUIET && t.live.busy() {
                t.live.flush();
            }
            idle < IDLE || t.live.busy()
        });
    }

    /// Runs one Whisper call over the next job of up to [`BATCH`] tracks.
    fn decode_batch(&mut self) {
        let jobs = pick_jobs(
            self.tracks
                .iter()
                .filter_map(|(sid, t)| Some((sid.as_str(), t.origin_ms, t.live.next_job()?))),
        );
        if jobs.is_empty() {
            return;
        }
        let requests: Vec<_> = jobs
            .iter()
            .map(|(sid, job)| self.tracks[sid].live.request(job))
            .collect();
        let audio_ms: u64 = requests.iter().map(|r| r.audio.len() as u64 / 16).sum();
        let started = Instant::now();
        let decoded = self.asr.transcribe_batch(&requests);
        drop(requests);
        self.metrics
            .speech_asr_busy_us
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        self.metrics
            .speech_asr_audio_ms
            .fetch_add(audio_ms, Relaxed);
        self.metrics.speech_asr_calls.fetch_add(1, Relaxed);
        let decoded = match decoded {
            Ok(d) => d,
            Err(e) => {
                // The utterances stay queued only if the failure is passing; drop them rather
                // than retry forever, and say so.
                tracing::error!("speech: Whisper failed on {} utterances: {e}", jobs.len());
                self.metrics.speech_decode_errors.fetch_add(1, Relaxed);
                for (sid, job) in &jobs {
                    if let Some(t) = self.tracks.get_mut(sid) {
                        t.live.complete(&self.asr, job, empty_decoded());
                    }
                }
                return;
            }
        };
        for ((sid, job), d) in jobs.into_iter().zip(decoded) {
            let Some(t) = self.tracks.get_mut(&sid) else {
                continue;
            };
            // Which voice of the microphone said a final: its embedding, before the track
            // lets go of the audio.
            let mut voice = 0;
            if job.is_final
                && !d.is_silence()
                && let Some(embedder) = self.embedder.as_mut()
            {
                let audio = t.live.request(&job).audio;
                match embedder.embed(audio) {
                    Ok(e) => voice = t.voices.assign(&e, audio.len()),
                    Err(e) => tracing::warn!("speech: speaker embedding failed: {e}"),
                }
            }
            if let Some(text) = t.live.complete(&self.asr, &job, d) {
                publish(
                    &self.metrics,
                    &self.outputs,
                    &self.transcripts,
                    &sid,
                    t,
                    &text,
                    voice,
                );
            }
        }
    }
}

/// The jobs of one Whisper call, from each track's next job (`origin_ms`: the wall-clock time
/// of the track's sample 0), in the order their text goes out: finals first, since they end
/// someone's subtitle, then interims; each in speaking order (by the utterance's start). When
/// one call's decoding takes longer than the speakers' turns, several finals come out of it,
/// and the transcript and every viewer's subtitles keep the order they were spoken in.
fn pick_jobs<'a>(ready: impl Iterator<Item = (&'a str, u64, Job)>) -> Vec<(String, Job)> {
    let mut ready: Vec<_> = ready
        .map(|(sid, origin_ms, job)| (!job.is_final, origin_ms + job.start as u64 / 16, sid, job))
        .collect();
    ready.sort_unstable_by_key(|&(later, at, sid, _)| (later, at, sid));
    ready
        .into_iter()
        .take(BATCH)
        .map(|(_, _, sid, job)| (sid.to_string(), job))
        .collect()
}

fn empty_decoded() -> parloir_speech::Decoded {
    parloir_speech::Decoded {
        text: String::new(),
        tokens: Vec::new(),
        language: String::new(),
        avg_logprob: 0.0,
        no_speech_prob: 1.0,
    }
}

/// Sends `text` to the room and, when final, appends it to the transcript.
fn publish(
    metrics: &Metrics,
    outputs: &Outputs,
    transcripts: &Path,
    track_sid: &str,
    t: &TrackState,
    text: &LiveText,
    voice: u32,
) {
    let ms = |samples: usize| samples as u64 / 16;
    let segment_id = format!("SG_{track_sid}_{}", text.segment);
    if text.is_final {
        metrics.speech_segments.fetch_add(1, Relaxed);
        tracing::info!(
            room = %t.room,
            identity = %t.identity,
            name = %t.name,
            track = %track_sid,
            start_s = text.start as f64 / 16_000.0,
            end_s = text.end as f64 / 16_000.0,
            language = %text.language,
            voice,
            text = %text.text,
            "transcript"
        );
        if !text.text.is_empty() {
            let line = Segment {
                room: t.room.clone(),
                room_sid: t.room_sid.clone(),
                identity: t.identity.clone(),
                name: t.name.clone(),
                track: track_sid.to_string(),
                segment: segment_id.clone(),
                start_ms: t.origin_ms + ms(text.start),
                end_ms: t.origin_ms + ms(text.end),
                language: text.language.clone(),
                text: text.text.clone(),
                voice,
            };
            if let Err(e) = append(transcripts, &line) {
                metrics.speech_transcript_errors.fetch_add(1, Relaxed);
                tracing::error!(room = %t.room, "speech: cannot write the transcript: {e}");
            }
        }
    } else {
        metrics.speech_interims.fetch_add(1, Relaxed);
    }
    let Some(media) = outputs.media.get() else {
        return;
    };
    let call = ServiceCall::Subtitle(Subtitle {
        room: t.room.clone(),
        identity: t.identity.clone(),
        track_sid: track_sid.to_string(),
        segment_id,
        text: text.text.clone(),
        is_final: text.is_final,
        language: text.language.clone(),
        start_ms: ms(text.start),
        end_ms: ms(text.end),
    });
    let _ = media.send(Command::Service {
        id: NO_REPLY,
        call: Box::new(call),
        unix_ms: unix_ms() as i64,
    });
}

/// Appends one line to the meeting's transcript, `<room sid>.jsonl` (a room without a usable
/// sid, which the SFU never makes, goes by its percent-encoded name).
fn append(dir: &Path, line: &Segment) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let path = if transcripts::valid_sid(&line.room_sid) {
        transcripts::transcript_path(dir, &line.room_sid)
    } else {
        dir.join(transcript_file(&line.room))
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write per line: a crash leaves whole lines.
    f.write_all(&bytes)
}

/// A file name for `room`: anything but letters, digits, `-`, `_` and `.` percent-encoded, so
/// no room name can leave the directory.
pub fn transcript_file(room: &str) -> String {
    let mut name = String::with_capacity(room.len() + 6);
    for b in room.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !name.is_empty()) {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name.push_str(".jsonl");
    name
}

#[cfg(test)]
mod tests {
    use super::{BATCH, Job, pick_jobs, transcript_file};

    #[test]
    fn a_call_takes_finals_then_interims_in_speaking_order() {
        let job = |is_final, start_s: usize| Job {
            segment: 1,
            is_final,
            start: start_s * 16_000,
            end: (start_s + 2) * 16_000,
        };
        // Tracks' clocks differ: Bob's track started 10 s after Alice's.
        let ready = [
            ("TR_bob", 10_000, job(true, 2)), // said at 12 s
            ("TR_carol", 0, job(false, 1)),   // still speaking, from 1 s
            ("TR_alice", 0, job(true, 1)),    // said at 1 s
            ("TR_dan", 0, job(false, 0)),     // still speaking, from 0 s
            ("TR_eve", 0, job(false, 30)),    // left for the next call
        ];
        let order: Vec<_> = pick_jobs(ready.into_iter())
            .into_iter()
            .map(|(sid, job)| (sid, job.is_final))
            .collect();
        assert_eq!(BATCH, 4);
        assert_eq!(
            order,
            [
                ("TR_alice".to_string(), true),
                ("TR_bob".to_string(), true),
                ("TR_dan".to_string(), false),
                ("TR_carol".to_string(), false),
            ]
        );
    }

    #[test]
    fn room_names_stay_in_the_directory() {
        assert_eq!(transcript_file("team-weekly_2"), "team-weekly_2.jsonl");
        assert_eq!(
            transcript_file("../etc/passwd"),
            "%2E.%2Fetc%2Fpasswd.jsonl"
        );
        assert_eq!(transcript_file("réunion"), "r%C3%A9union.jsonl");
        assert_eq!(transcript_file(""), ".jsonl");
    }
}
