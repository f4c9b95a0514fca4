//! Recordings built from the media the SFU forwards, with no browser: a room composite takes
//! every frame of a recorded room ([`parloir_sfu::RecordFrame`]), places it on the recording's
//! timeline ([`timing`]), decodes the video layer that fits each tile, composites the tiles in
//! the requested layout, mixes everyone's audio, and encodes to a fragmented MP4 (or Ogg/Opus
//! for audio only).
//!
//! [`Composite`] is driven like the SFU: frames and time in, requests out (which layer each
//! track should send, key frames wanted). The caller runs it on a record-plane thread.

pub mod timing;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parloir_media::gpu::{CudaDecoder, Decoding, Gpu, GpuCanvas, GpuPicture};
use parloir_media::output::OutputResult;
use parloir_media::{
    Compositor, Container, Layout, MediaError, Mixer, OutputSpec, Picture, SAMPLE_RATE, Tile,
    TileView, VideoCodec, VideoDecoder, VideoSpec, Writer,
};
use parloir_sfu::RecordFrame;

use timing::Timeline;

/// How a composite is made.
#[derive(Debug, Clone)]
pub struct CompositeConfig {
    pub layout: Layout,
    /// The picture; `None` for audio only.
    pub video: Option<VideoSpec>,
    /// Whether to record audio (false for video only).
    pub audio: bool,
    pub audio_bitrate: u32,
    /// How far behind real time the recording runs: frames later than this are not in it.
    pub latency: Duration,
    /// Composite on this GPU, each camera decoded by its size (NVDEC from 720p, libavcodec and
    /// an upload below), the pictures staying in its memory until the finished canvas goes to
    /// the encoder; `None`: on the CPU.
    pub gpu: Option<Arc<Gpu>>,
}

/// What a composite asks of the SFU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Send (and keep on) this quality of a video track; ask its publisher for a key frame.
    Layer {
        track_sid: String,
        quality: Option<u8>,
        keyframe: bool,
    },
}

/// Counters of one composite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompositeStats {
    pub frames_in: u64,
    /// Video frames of layers the tiles do not need.
    pub frames_skipped: u64,
    /// Frames whose time was already written when they came.
    pub frames_late: u64,
    pub decode_errors: u64,
    pub video_frames_out: u64,
    pub audio_samples_out: u64,
}

/// The result of a finished composite.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Each output: where, how many bytes, and why it stopped early if it did.
    pub outputs: Vec<OutputResult>,
    /// Seconds of media written.
    pub duration: f64,
}

/// Audio above this level (dBFS, mean power) counts as speaking.
const SPEAKING_DB: f32 = -45.0;
/// A speaker becomes the main tile after speaking this long.
const SPEAKER_AFTER: f64 = 0.4;
/// A tile whose video stopped this long ago shows the placeholder (camera off, muted).
const VIDEO_STALE: f64 = 2.0;
/// How often tile sizes are turned into layer requests, and key frames asked again.
const REVIEW_EVERY: f64 = 1.0;

struct Member {
    sid: String,
    name: String,
    /// When it joined, then first seen: the order of the grid.
    order: (i64, u64),
    speaking_since: Option<f64>,
    last_spoke: f64,
}

/// A track's decoder: in memory, or on the GPU (which keeps the latest picture itself).
enum Decoder {
    Cpu(VideoDecoder),
    Cuda(Box<CudaDecoder>),
}

/// The compositor: on a canvas in memory, or on the GPU with a picture to download it into.
enum Canvas {
    Cpu(Box<Compositor>),
    Cuda(Box<Compositor<GpuCanvas>>, Picture),
}

impl Canvas {
    fn placement(&self, tiles: &[Tile]) -> Vec<Option<parloir_media::Rect>> {
        match self {
            Canvas::Cpu(c) => c.placement(tiles),
            Canvas::Cuda(c, _) => c.placement(tiles),
        }
    }

    fn set_layout(&mut self, layout: Layout) {
        match self {
            Canvas::Cpu(c) => c.set_layout(layout),
            Canvas::Cuda(c, _) => c.set_layout(layout),
        }
    }
}

struct VideoState {
    decoder: Option<Decoder>,
    codec: Option<VideoCodec>,
    /// Encoded frames waiting for their time: (timeline seconds, data, key frame).
    pending: VecDeque<(f64, Arc<[u8]>, bool)>,
    picture: Option<Picture>,
    /// Timeline time of the last frame decoded.
    shown: f64,
    /// The layer decoded now, the one wanted for the tile, and when each layer last came.
    layer: Option<u8>,
    wanted: Option<u8>,
    told: Option<Option<u8>>,
    seen: [f64; 3],
    need_key: bool,
    key_asked: f64,
}

struct TrackState {
    participant: String,
    video: Option<VideoState>,
    screen_share: bool,
}

/// One room composite being recorded.
pub struct Composite {
    config: CompositeConfig,
    writer: Writer,
    compositor: Option<Canvas>,
    mixer: Mixer,
    start: Instant,
    members: Vec<Member>,
    next_order: u64,
    tracks: HashMap<String, TrackState>,
    timeline: Timeline,
    frames_out: i64,
    reviewed: f64,
    requests: Vec<Request>,
    pub stats: CompositeStats,
}

impl Composite {
    /// Opens the outputs (files, playlists, streams: all get the same encoded media) and
    /// starts the timeline at `now`.
    pub fn start(
        outputs: &[(PathBuf, Container)],
        config: CompositeConfig,
        now: Instant,
    ) -> Result<Self, MediaError> {
        let spec = OutputSpec {
            video: config.video.clone(),
            audio: config.audio,
            audio_bitrate: config.audio_bitrate,
        };
        let writer = Writer::create_many(outputs, &spec)?;
        let compositor = match (&config.video, &config.gpu) {
            (None, _) => None,
            (Some(v), None) => Some(Canvas::Cpu(Box::new(Compositor::new(
                v.width,
                v.height,
                config.layout,
            )))),
            (Some(v), Some(gpu)) => {
                let canvas =
                    GpuCanvas::new(gpu.clone(), v.width, v.height, config.layout.background())
                        .map_err(MediaError::Gpu)?;
                Some(Canvas::Cuda(
                    Box::new(Compositor::on(canvas, config.layout)),
                    Picture::new(v.width & !1, v.height & !1, config.layout.background()),
                ))
            }
        };
        Ok(Composite {
            config,
            writer,
            compositor,
            mixer: Mixer::new(),
            start: now,
            members: Vec::new(),
            next_order: 0,
            tracks: HashMap::new(),
            timeline: Timeline::default(),
            frames_out: 0,
            reviewed: f64::NEG_INFINITY,
            requests: Vec::new(),
            stats: CompositeStats::default(),
        })
    }

    /// Outputs that failed so far (the others go on), with why.
    pub fn failures(&self) -> Vec<(PathBuf, String)> {
        self.writer.failures()
    }

    /// The H.264 encoder in use (`None` for audio only).
    pub fn video_encoder(&self) -> Option<&str> {
        self.writer.video_encoder()
    }

    pub fn set_layout(&mut self, layout: Layout) {
        self.config.layout = layout;
        if let Some(c) = self.compositor.as_mut() {
            c.set_layout(layout);
        }
        self.reviewed = f64::NEG_INFINITY;
    }

    /// What to ask of the SFU, since the last call.
    pub fn take_requests(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.requests)
    }

    /// Seconds of the timeline at `at`.
    fn seconds(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }

    /// Takes one frame of the room.
    pub fn frame(&mut self, f: RecordFrame) {
        self.stats.frames_in += 1;
        if (f.video && self.config.video.is_none()) || (!f.video && !self.config.audio) {
            return;
        }
        let arrival = self.seconds(f.arrival);
        let member = match self.members.iter().position(|m| m.sid == f.participant_sid) {
            Some(i) => i,
            None => {
                self.members.push(Member {
                    sid: f.participant_sid.clone(),
                    name: String::new(),
                    order: (f.joined_at_ms, self.next_order),
                    speaking_since: None,
                    last_spoke: f64::NEG_INFINITY,
                });
                self.next_order += 1;
                self.members.len() - 1
            }
        };
        let name = if f.name.is_empty() {
            &f.identity
        } else {
            &f.name
        };
        if self.members[member].name != *name {
            self.members[member].name = name.clone();
        }
        let now = self.frames_out as f64 / self.fps();
        let track = self
            .tracks
            .entry(f.track_sid.clone())
            .or_insert_with(|| TrackState {
                participant: f.participant_sid.clone(),
                video: f.video.then(|| VideoState {
                    decoder: None,
                    codec: None,
                    pending: VecDeque::new(),
                    picture: None,
                    shown: f64::NEG_INFINITY,
                    layer: None,
                    wanted: None,
                    told: None,
                    seen: [f64::NEG_INFINITY; 3],
                    need_key: true,
                    key_asked: f64::NEG_INFINITY,
                }),
                screen_share: f.screen_share,
            });
        // Its time: through the participant's NTP clock once a sender report came.
        let at = self.timeline.place(
            &f.participant_sid,
            &f.track_sid,
            f.layer,
            f.clock_rate,
            f.rtp_time,
            f.sender_report,
            arrival,
        );
        let Some(video) = track.video.as_mut() else {
            if f.codec != "opus" {
                return;
            }
            let position = (at * f64::from(SAMPLE_RATE)).round() as i64;
            let late = self.mixer.late;
            if self.mixer.push(&f.track_sid, position, &f.data).is_err() {
                self.stats.decode_errors += 1;
            }
            self.stats.frames_late += self.mixer.late - late;
            return;
        };
        // Video: only the layer the tile needs, from a key frame on.
        if let Some(l) = f.layer {
            video.seen[usize::from(l.min(2))] = arrival;
        }
        if f.layer != video.layer {
            let target = video.effective_target(arrival);
            if f.layer == target && f.keyframe {
                video.layer = f.layer;
                video.need_key = false;
            } else {
                self.stats.frames_skipped += 1;
                if f.layer == target {
                    video.ask_key(&f.track_sid, arrival, &mut self.requests);
                }
                return;
            }
        }
        if !f.contiguous && !f.keyframe {
            video.need_key = true;
        }
        if video.need_key && !f.keyframe {
            self.stats.frames_skipped += 1;
            video.ask_key(&f.track_sid, arrival, &mut self.requests);
            return;
        }
        video.need_key = false;
        if at < now {
            self.stats.frames_late += 1;
        }
        let codec = match f.codec {
            "VP8" => VideoCodec::Vp8,
            "VP9" => VideoCodec::Vp9,
            "H264" => VideoCodec::H264,
            "AV1" => VideoCodec::Av1,
            _ => return,
        };
        if video.codec != Some(codec) {
            video.codec = Some(codec);
            let decoder = match &self.config.gpu {
                Some(gpu) => CudaDecoder::new(codec, gpu.clone(), Decoding::BySize)
                    .map(|d| Decoder::Cuda(Box::new(d))),
                None => VideoDecoder::new(codec).map(Decoder::Cpu),
            };
            video.picture = None;
            video.decoder = match decoder {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(track = %f.track_sid, error = %e, "no decoder: the tile stays empty");
                    None
                }
            };
        }
        video.pending.push_back((at, f.data, f.keyframe));
    }

    /// A participant is in the room: it gets a tile (a placeholder with its name until its
    /// camera sends), as LiveKit's templates show people without video.
    pub fn participant_joined(&mut self, participant_sid: &str, name: &str, joined_at_ms: i64) {
        if let Some(m) = self.members.iter_mut().find(|m| m.sid == participant_sid) {
            m.name = name.to_string();
            return;
        }
        self.members.push(Member {
            sid: participant_sid.to_string(),
            name: name.to_string(),
            order: (joined_at_ms, self.next_order),
            speaking_since: None,
            last_spoke: f64::NEG_INFINITY,
        });
        self.next_order += 1;
        self.reviewed = f64::NEG_INFINITY;
    }

    /// A participant left: its tiles and audio go.
    pub fn participant_left(&mut self, participant_sid: &str) {
        self.members.retain(|m| m.sid != participant_sid);
        self.timeline.forget_participant(participant_sid);
        let gone: Vec<String> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.participant == participant_sid)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in gone {
            self.track_unpublished(&sid);
        }
    }

    /// A track ended.
    pub fn track_unpublished(&mut self, track_sid: &str) {
        self.tracks.remove(track_sid);
        self.timeline.forget_track(track_sid);
        self.mixer.remove(track_sid);
    }

    fn fps(&self) -> f64 {
        self.config
            .video
            .as_ref()
            .map_or(50.0, |v| f64::from(v.fps.max(1)))
    }

    /// Writes the timeline up to `now` less the latency.
    pub fn advance(&mut self, now: Instant) -> Result<(), MediaError> {
        let t = self.seconds(now) - self.config.latency.as_secs_f64();
        if t <= 0.0 {
            return Ok(());
        }
        self.write_until(t)
    }

    fn write_until(&mut self, t: f64) -> Result<(), MediaError> {
        if self.config.audio {
            let until = (t * f64::from(SAMPLE_RATE)) as i64;
            let mut pcm = Vec::new();
            let from = self.mixer.position();
            self.mixer.pull(until, &mut pcm);
            self.stats.audio_samples_out += (until - from).max(0) as u64;
            self.writer.audio(&pcm)?;
            self.speakers(t);
        }
        if self.config.video.is_none() {
            return Ok(());
        }
        let fps = self.fps();
        while (self.frames_out as f64) / fps <= t {
            let ft = self.frames_out as f64 / fps;
            self.decode_until(ft);
            if ft - self.reviewed >= REVIEW_EVERY {
                self.reviewed = ft;
                self.review_layers(ft);
            }
            self.compose_and_write(ft)?;
            self.frames_out += 1;
            self.stats.video_frames_out += 1;
        }
        Ok(())
    }

    fn decode_until(&mut self, t: f64) {
        for track in self.tracks.values_mut() {
            let Some(v) = track.video.as_mut() else {
                continue;
            };
            while v.pending.front().is_some_and(|(at, _, _)| *at <= t) {
                let Some((at, data, key)) = v.pending.pop_front() else {
                    break;
                };
                let decoded = match v.decoder.as_mut() {
                    None => continue,
                    Some(Decoder::Cpu(d)) => d.decode(&data).map(|p| match p {
                        Some(p) => {
                            v.picture = Some(p);
                            true
                        }
                        None => false,
                    }),
                    Some(Decoder::Cuda(d)) => d.decode(&data, key).map(|p| p.is_some()),
                };
                match decoded {
                    Ok(true) => v.shown = at,
                    Ok(false) => {}
                    Err(_) => {
                        self.stats.decode_errors += 1;
                        v.need_key = true;
                    }
                }
            }
        }
    }

    /// Who speaks: from the mix's levels.
    fn speakers(&mut self, t: f64) {
        let levels: HashMap<&str, f32> = self.mixer.levels().collect();
        for m in &mut self.members {
            let loud = self.tracks.iter().any(|(sid, tr)| {
                tr.participant == m.sid
                    && tr.video.is_none()
                    && levels.get(sid.as_str()).is_some_and(|&l| l > SPEAKING_DB)
            });
            if loud {
                let since = *m.speaking_since.get_or_insert(t);
                if t - since >= SPEAKER_AFTER {
                    m.last_spoke = t;
                }
            } else {
                m.speaking_since = None;
            }
        }
    }

    /// The tiles in layout order: (track sid or none, member index, screen share).
    fn tiles(&self) -> Vec<(Option<&str>, usize, bool)> {
        let mut order: Vec<usize> = (0..self.members.len()).collect();
        let speaker = matches!(
            self.config.layout.arrangement,
            parloir_media::Arrangement::Speaker | parloir_media::Arrangement::SingleSpeaker
        );
        if speaker {
            // The most recent speaker first, then by recency of speech, then arrival.
            order.sort_by(|&a, &b| {
                let (ma, mb) = (&self.members[a], &self.members[b]);
                mb.last_spoke
                    .total_cmp(&ma.last_spoke)
                    .then(ma.order.cmp(&mb.order))
            });
        } else {
            order.sort_by_key(|&i| self.members[i].order);
        }
        let mut tiles = Vec::new();
        for i in order {
            let sid = &self.members[i].sid;
            let mut cameras: Vec<(&str, bool)> = self
                .tracks
                .iter()
                .filter(|(_, t)| t.participant == *sid && t.video.is_some())
                .map(|(s, t)| (s.as_str(), t.screen_share))
                .collect();
            cameras.sort();
            let has_camera = cameras.iter().any(|(_, s)| !s);
            if !has_camera {
                tiles.push((None, i, false));
            }
            for (track, screen) in cameras {
                tiles.push((Some(track), i, screen));
            }
        }
        tiles
    }

    /// Turns tile sizes into the layer each video track should send.
    fn review_layers(&mut self, t: f64) {
        let Some(compositor) = self.compositor.as_ref() else {
            return;
        };
        let tiles = self.tiles();
        let specs: Vec<Tile> = tiles
            .iter()
            .map(|&(_, _, screen_share)| Tile { screen_share })
            .collect();
        let rects = compositor.placement(&specs);
        let wants: Vec<(String, Option<u8>)> = tiles
            .iter()
            .zip(rects)
            .filter_map(|(&(track, _, screen), rect)| {
                let track = track?;
                let quality = rect.map(|r| match r.height {
                    _ if screen => 2,
                    h if h <= 216 => 0,
                    h if h <= 432 => 1,
                    _ => 2,
                });
                Some((track.to_string(), quality))
            })
            .collect();
        for (sid, quality) in wants {
            let Some(v) = self.tracks.get_mut(&sid).and_then(|t| t.video.as_mut()) else {
                continue;
            };
            v.wanted = quality;
            if v.told != Some(quality) {
                v.told = Some(quality);
                self.requests.push(Request::Layer {
                    track_sid: sid,
                    quality,
                    keyframe: v.layer != v.effective_target(t),
                });
            }
        }
    }

    fn compose_and_write(&mut self, t: f64) -> Result<(), MediaError> {
        // Out of `self` while the views borrow the tracks.
        let Some(mut canvas) = self.compositor.take() else {
            return Ok(());
        };
        let tiles = self.tiles();
        let mut labels: Vec<String> = Vec::with_capacity(tiles.len());
        for &(_, i, screen) in &tiles {
            let name = &self.members[i].name;
            labels.push(if screen {
                format!("{name} (screen)")
            } else {
                name.clone()
            });
        }
        // Each tile's fresh picture, wherever its decoder keeps it.
        let fresh = |track: Option<&str>| {
            track
                .and_then(|s| self.tracks.get(s))
                .and_then(|tr| tr.video.as_ref())
                .filter(|v| t - v.shown < VIDEO_STALE)
        };
        let speaking = |i: usize| {
            let m = &self.members[i];
            m.speaking_since.is_some() && t - m.last_spoke < 0.5
        };
        let composed = match &mut canvas {
            Canvas::Cpu(compositor) => {
                let views: Vec<TileView<'_>> = tiles
                    .iter()
                    .zip(&labels)
                    .map(|(&(track, i, screen), label)| TileView {
                        picture: fresh(track).and_then(|v| v.picture.as_ref()),
                        name: label,
                        speaking: speaking(i),
                        screen_share: screen,
                    })
                    .collect();
                compositor.compose(&views).map(|_| ())
            }
            Canvas::Cuda(compositor, picture) => {
                let views: Vec<TileView<'_, GpuPicture>> = tiles
                    .iter()
                    .zip(&labels)
                    .map(|(&(track, i, screen), label)| TileView {
                        picture: fresh(track).and_then(|v| match &v.decoder {
                            Some(Decoder::Cuda(d)) => d.picture(),
                            _ => None,
                        }),
                        name: label,
                        speaking: speaking(i),
                        screen_share: screen,
                    })
                    .collect();
                // The canvas comes back for the encoder on the CPU (Hopper has no NVENC).
                compositor
                    .compose(&views)
                    .and_then(|c| c.download_into(picture).map_err(MediaError::Gpu))
            }
        };
        let written = composed.and_then(|()| match &canvas {
            Canvas::Cpu(compositor) => self.writer.video(compositor.canvas(), self.frames_out),
            Canvas::Cuda(_, picture) => self.writer.video(picture, self.frames_out),
        });
        self.compositor = Some(canvas);
        written
    }

    /// Writes what remains up to `now` less the latency, closes the file.
    pub fn finish(mut self, now: Instant) -> Result<Finished, MediaError> {
        let t = self.seconds(now) - self.config.latency.as_secs_f64();
        if t > 0.0 {
            self.write_until(t)?;
        }
        let duration = if self.config.video.is_some() {
            self.frames_out as f64 / self.fps()
        } else {
            self.mixer.position() as f64 / f64::from(SAMPLE_RATE)
        };
        let outputs = self.writer.finish()?;
        Ok(Finished { outputs, duration })
    }
}

impl VideoState {
    /// Asks for a key frame of the wanted layer, at most twice a second.
    fn ask_key(&mut self, track_sid: &str, now: f64, requests: &mut Vec<Request>) {
        if now - self.key_asked > REVIEW_EVERY / 2.0 {
            self.key_asked = now;
            requests.push(Request::Layer {
                track_sid: track_sid.to_string(),
                quality: self.wanted,
                keyframe: true,
            });
        }
    }

    /// The layer to decode: the wanted one if it flows, else the highest flowing below it,
    /// else the lowest flowing one; `None` for a track without simulcast.
    fn effective_target(&self, now: f64) -> Option<u8> {
        let flowing: Vec<u8> = (0..3u8)
            .filter(|&l| now - self.seen[usize::from(l)] < 1.0)
            .collect();
        if flowing.is_empty() {
            return self.layer;
        }
        let wanted = self.wanted.unwrap_or(0);
        flowing
            .iter()
            .rev()
            .find(|&&l| l <= wanted)
            .or(flowing.first())
            .copied()
    }
}
