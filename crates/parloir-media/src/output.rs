//! Encoding and muxing through FFmpeg: the composite's pictures to H.264 (an NVENC or VA-API
//! encoder when the hardware profile names one and it opens, libx264 otherwise) and its mixed
//! audio to AAC, into fragmented MP4, HLS segments or an RTMP stream (FLV); or audio alone to
//! Opus in Ogg. MP4 fragments are cut at every key frame (every two seconds at most) and written
//! through at once, and HLS segments are listed once complete, so a crash leaves a playable
//! recording up to the last fragment or segment.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ffmpeg::codec::{self, Id};
use ffmpeg::format::{Pixel, Sample, sample};
use ffmpeg::{ChannelLayout, Dictionary, Packet, Rational, encoder, frame};
use ffmpeg_next as ffmpeg;

use crate::mix::SAMPLE_RATE;
use crate::picture::Picture;
use crate::{MediaError, init};

/// Container formats of an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Container {
    /// Fragmented MP4: H.264 and AAC.
    Mp4,
    /// Ogg with Opus: audio only.
    Ogg,
    /// HLS: the path is the playlist; MPEG-TS segments (H.264 and AAC) of about
    /// `segment_seconds`, named by `segments` (an FFmpeg pattern such as `dir/name_%05d.ts`).
    Hls {
        segment_seconds: u32,
        segments: PathBuf,
    },
    /// FLV to an RTMP URL (the path), for live streaming platforms.
    Rtmp,
}

impl Container {
    /// Whether the output is a file on this machine (synced to disk as it grows).
    fn is_file(&self) -> bool {
        !matches!(self, Container::Rtmp)
    }
}

/// What to write.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    /// Video size and rate; `None` for audio only.
    pub video: Option<VideoSpec>,
    /// Whether there is an audio stream.
    pub audio: bool,
    pub audio_bitrate: u32,
}

#[derive(Debug, Clone)]
pub struct VideoSpec {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Target bitrate in bit/s.
    pub bitrate: u32,
    /// Seconds between key frames (and so between fragments).
    pub key_interval: u32,
    /// H.264 encoders to try in order (FFmpeg names: `h264_nvenc`, `h264_vaapi`,
    /// `libx264`); the first that opens is used, libx264 always last.
    pub encoders: Vec<String>,
}

/// How one output of a [`Writer`] ended.
#[derive(Debug, Clone)]
pub struct OutputResult {
    pub path: PathBuf,
    /// Bytes written to it.
    pub bytes: u64,
    /// Why it stopped early, if it did (the other outputs went on).
    pub error: Option<String>,
}

/// Bytes of a fragmented MP4 whose data is forced to the disk at most this often.
const SYNC_EVERY: Duration = Duration::from_secs(2);

struct VideoEnc {
    encoder: encoder::Video,
    codec: ffmpeg::Codec,
    time_base: Rational,
    frame: frame::Video,
    name: String,
}

struct AudioEnc {
    encoder: encoder::Audio,
    codec: ffmpeg::Codec,
    frame_size: usize,
    /// Interleaved stereo samples waiting for a whole encoder frame.
    pending: Vec<f32>,
    /// Samples sent to the encoder so far (the next frame's pts).
    sent: i64,
}

/// One container being written.
struct Muxer {
    path: PathBuf,
    octx: ffmpeg::format::context::Output,
    video: Option<usize>,
    audio: Option<usize>,
    sync: Option<File>,
    bytes: u64,
    failed: Option<String>,
}

impl Muxer {
    /// Writes a copy of `packet` to this output's `stream` (rescaled from `from`); a failure
    /// ends this output only.
    fn write(&mut self, packet: &Packet, stream: Option<usize>, from: Rational) {
        let Some(stream) = stream.filter(|_| self.failed.is_none()) else {
            return;
        };
        let mut p = packet.clone();
        p.set_stream(stream);
        if let Some(to) = self.octx.stream(stream).map(|s| s.time_base()) {
            p.rescale_ts(from, to);
        }
        self.bytes += p.size() as u64;
        if let Err(e) = p.write_interleaved(&mut self.octx) {
            tracing::warn!(output = %self.path.display(), error = %e, "an output failed; the others go on");
            self.failed = Some(format!("{}: {e}", self.path.display()));
        }
    }
}

/// An open output: one video and one audio encoder, and one or more containers (a file, an
/// HLS playlist, an RTMP stream) that all get the same encoded packets.
pub struct Writer {
    muxers: Vec<Muxer>,
    video: Option<VideoEnc>,
    audio: Option<AudioEnc>,
    synced_at: Instant,
    /// Bytes of encoded media written (over all outputs).
    pub bytes: u64,
}

fn format_name(c: &Container) -> &'static str {
    match c {
        Container::Mp4 => "mp4",
        Container::Ogg => "ogg",
        Container::Hls { .. } => "hls",
        Container::Rtmp => "flv",
    }
}

impl Writer {
    /// Creates one output and writes its header.
    pub fn create(
        path: &Path,
        container: Container,
        spec: &OutputSpec,
    ) -> Result<Writer, MediaError> {
        Writer::create_many(&[(path.to_owned(), container)], spec)
    }

    /// Creates several outputs of the same encoded media. Ogg holds Opus audio only, so it
    /// cannot be combined with the others (AAC).
    pub fn create_many(
        outputs: &[(PathBuf, Container)],
        spec: &OutputSpec,
    ) -> Result<Writer, MediaError> {
        init()?;
        let ogg = outputs.iter().any(|(_, c)| *c == Container::Ogg);
        if outputs.is_empty() {
            return Err(MediaError::Unsupported("a writer with no output".into()));
        }
        if ogg && (outputs.len() > 1 || spec.video.is_some()) {
            return Err(MediaError::Unsupported(
                "Ogg holds Opus audio alone: no video, no other output".into(),
            ));
        }
        if spec.video.is_none() && !spec.audio {
            return Err(MediaError::Unsupported(
                "an output with neither audio nor video".into(),
            ));
        }
        let mut contexts = Vec::new();
        for (path, container) in outputs {
            let octx = ffmpeg::format::output_as(path, format_name(container)).map_err(|e| {
                MediaError::Io {
                    path: path.clone(),
                    error: e.to_string(),
                }
            })?;
            contexts.push(octx);
        }
        // One encoding for every container: global headers when any container wants them
        // (MP4, FLV); MPEG-TS segments get the parameter sets in band from the muxer.
        let global_header = contexts.iter().any(|o| {
            o.format()
                .flags()
                .contains(ffmpeg::format::Flags::GLOBAL_HEADER)
        });
        let video = match &spec.video {
            Some(v) => Some(open_video(v, global_header)?),
            None => None,
        };
        let audio = if spec.audio {
            Some(open_audio(ogg, spec.audio_bitrate, global_header)?)
        } else {
            None
        };
        let mut muxers = Vec::new();
        for ((path, container), mut octx) in outputs.iter().zip(contexts) {
            let io = |e: ffmpeg::Error| MediaError::Io {
                path: path.clone(),
                error: e.to_string(),
            };
            let video_stream = match &video {
                Some(v) => {
                    let mut stream = octx.add_stream(v.codec).map_err(io)?;
                    stream.set_parameters(&v.encoder);
                    stream.set_time_base(v.time_base);
                    let fps = Rational(v.time_base.1, 1);
                    stream.set_avg_frame_rate(fps);
                    stream.set_rate(fps);
                    Some(stream.index())
                }
                None => None,
            };
            let audio_stream = match &audio {
                Some(a) => {
                    let mut stream = octx.add_stream(a.codec).map_err(io)?;
                    stream.set_parameters(&a.encoder);
                    stream.set_time_base(Rational(1, SAMPLE_RATE as i32));
                    Some(stream.index())
                }
                None => None,
            };
            let mut options = Dictionary::new();
            match container {
                Container::Mp4 => {
                    options.set("movflags", "frag_keyframe+empty_moov+default_base_moof");
                    // Audio-only MP4 has no key frames to cut at: cut by time.
                    options.set("frag_duration", "2000000");
                }
                Container::Hls {
                    segment_seconds,
                    segments,
                } => {
                    options.set("hls_time", &segment_seconds.max(&1).to_string());
                    options.set("hls_list_size", "0");
                    options.set("hls_playlist_type", "event");
                    options.set("hls_segment_filename", &segments.to_string_lossy());
                }
                Container::Rtmp => options.set("flvflags", "no_duration_filesize"),
                Container::Ogg => {}
            }
            options.set("flush_packets", "1");
            octx.write_header_with(options).map_err(io)?;
            muxers.push(Muxer {
                path: path.clone(),
                octx,
                video: video_stream,
                audio: audio_stream,
                sync: if container.is_file() {
                    File::open(path).ok()
                } else {
                    None
                },
                bytes: 0,
                failed: None,
            });
        }
        Ok(Writer {
            muxers,
            video,
            audio,
            synced_at: Instant::now(),
            bytes: 0,
        })
    }

    /// The H.264 encoder in use, if there is video.
    pub fn video_encoder(&self) -> Option<&str> {
        self.video.as_ref().map(|v| v.name.as_str())
    }

    /// Encodes the picture for output frame number `index` (its time is index / fps).
    pub fn video(&mut self, picture: &Picture, index: i64) -> Result<(), MediaError> {
        let Some(v) = self.video.as_mut() else {
            return Ok(());
        };
        fill_frame(&mut v.frame, picture);
        v.frame.set_pts(Some(index));
        v.encoder
            .send_frame(&v.frame)
            .map_err(|e| MediaError::Codec("H264", e))?;
        self.drain_video()
    }

    /// Queues interleaved stereo samples at 48 kHz; they are encoded a frame at a time.
    pub fn audio(&mut self, samples: &[f32]) -> Result<(), MediaError> {
        let Some(a) = self.audio.as_mut() else {
            return Ok(());
        };
        a.pending.extend_from_slice(samples);
        loop {
            let Some(a) = self.audio.as_mut() else {
                return Ok(());
            };
            if a.pending.len() < 2 * a.frame_size {
                return Ok(());
            }
            let mut frame =
                frame::Audio::new(a.encoder.format(), a.frame_size, ChannelLayout::STEREO);
            frame.set_rate(SAMPLE_RATE);
            deinterleave(&mut frame, &a.pending[..2 * a.frame_size]);
            a.pending.drain(..2 * a.frame_size);
            frame.set_pts(Some(a.sent));
            a.sent += a.frame_size as i64;
            a.encoder
                .send_frame(&frame)
                .map_err(|e| MediaError::Codec("audio", e))?;
            self.drain_audio()?;
        }
    }

    /// Flushes the encoders, writes the trailers and syncs the files to disk. Returns how each
    /// output ended; fails only when every output failed.
    pub fn finish(mut self) -> Result<Vec<OutputResult>, MediaError> {
        if let Some(v) = self.video.as_mut() {
            v.encoder
                .send_eof()
                .map_err(|e| MediaError::Codec("H264", e))?;
        }
        self.drain_video()?;
        if let Some(a) = self.audio.as_mut() {
            // The tail shorter than a frame, padded with silence.
            if !a.pending.is_empty() {
                let pad = 2 * a.frame_size - a.pending.len();
                a.pending.extend(std::iter::repeat_n(0.0, pad));
            }
        }
        self.audio(&[])?;
        if let Some(a) = self.audio.as_mut() {
            a.encoder
                .send_eof()
                .map_err(|e| MediaError::Codec("audio", e))?;
        }
        self.drain_audio()?;
        for m in &mut self.muxers {
            if m.failed.is_some() {
                continue;
            }
            if let Err(e) = m.octx.write_trailer() {
                m.failed = Some(format!("{}: {e}", m.path.display()));
            }
            if let Some(f) = &m.sync {
                let _ = f.sync_data();
            }
        }
        self.check()?;
        Ok(self
            .muxers
            .iter()
            .map(|m| OutputResult {
                path: m.path.clone(),
                bytes: m.bytes,
                error: m.failed.clone(),
            })
            .collect())
    }

    /// Outputs that have failed so far, with why.
    pub fn failures(&self) -> Vec<(PathBuf, String)> {
        self.muxers
            .iter()
            .filter_map(|m| m.failed.clone().map(|e| (m.path.clone(), e)))
            .collect()
    }

    /// An error once no output is left.
    fn check(&self) -> Result<(), MediaError> {
        if self.muxers.iter().all(|m| m.failed.is_some())
            && let Some(m) = self.muxers.first()
        {
            return Err(MediaError::Io {
                path: m.path.clone(),
                error: m
                    .failed
                    .clone()
                    .unwrap_or_default()
                    .rsplit(": ")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        Ok(())
    }

    fn drain_video(&mut self) -> Result<(), MediaError> {
        let Some(v) = self.video.as_mut() else {
            return Ok(());
        };
        let mut packet = Packet::empty();
        while v.encoder.receive_packet(&mut packet).is_ok() {
            // Each picture lasts one frame (libx264 leaves it unset, and the muxer would
            // guess the last one's).
            packet.set_duration(1);
            self.bytes += packet.size() as u64;
            for m in &mut self.muxers {
                m.write(&packet, m.video, v.time_base);
            }
        }
        self.maybe_sync();
        self.check()
    }

    fn drain_audio(&mut self) -> Result<(), MediaError> {
        let Some(a) = self.audio.as_mut() else {
            return Ok(());
        };
        let mut packet = Packet::empty();
        while a.encoder.receive_packet(&mut packet).is_ok() {
            self.bytes += packet.size() as u64;
            for m in &mut self.muxers {
                m.write(&packet, m.audio, Rational(1, SAMPLE_RATE as i32));
            }
        }
        self.maybe_sync();
        self.check()
    }

    /// Forces written fragments to the disk every [`SYNC_EVERY`], so a power cut loses at
    /// most the last seconds.
    fn maybe_sync(&mut self) {
        if self.synced_at.elapsed() >= SYNC_EVERY {
            self.synced_at = Instant::now();
            for m in &self.muxers {
                if let Some(f) = &m.sync {
                    let _ = f.sync_data();
                }
            }
        }
    }
}

fn open_video(spec: &VideoSpec, global_header: bool) -> Result<VideoEnc, MediaError> {
    let mut names: Vec<&str> = spec.encoders.iter().map(String::as_str).collect();
    if !names.contains(&"libx264") {
        names.push("libx264");
    }
    let mut last = None;
    for name in names {
        let Some(codec) = ffmpeg::encoder::find_by_name(name) else {
            continue;
        };
        let time_base = Rational(1, spec.fps as i32);
        let mut context = codec::Context::new_with_codec(codec);
        if name == "libx264" {
            // Slices across frames would cost a frame of latency per thread; frame threads
            // are fine for a recording.
            context.set_threading(codec::threading::Config::count(0));
        }
        let mut enc = context
            .encoder()
            .video()
            .map_err(|e| MediaError::Codec("H264", e))?;
        enc.set_width(spec.width);
        enc.set_height(spec.height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(time_base);
        enc.set_frame_rate(Some(Rational(spec.fps as i32, 1)));
        enc.set_gop(spec.fps * spec.key_interval.max(1));
        enc.set_bit_rate(spec.bitrate as usize);
        enc.set_max_b_frames(0);
        if global_header {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut options = Dictionary::new();
        if name == "libx264" {
            options.set("preset", "veryfast");
            // Key frames exactly every gop, so fragments are regular.
            options.set("sc_threshold", "0");
            options.set("forced-idr", "1");
        }
        match enc.open_as_with(codec, options) {
            Ok(opened) => {
                return Ok(VideoEnc {
                    encoder: opened,
                    codec,
                    time_base,
                    frame: frame::Video::new(Pixel::YUV420P, spec.width, spec.height),
                    name: name.to_string(),
                });
            }
            Err(e) => {
                tracing::info!(encoder = name, error = %e, "H.264 encoder did not open; trying the next");
                last = Some(e);
            }
        }
    }
    Err(match last {
        Some(e) => MediaError::Codec("H264", e),
        None => MediaError::NoCodec("H264"),
    })
}

fn open_audio(opus: bool, bitrate: u32, global_header: bool) -> Result<AudioEnc, MediaError> {
    let (codec, name, format) = if opus {
        (
            ffmpeg::encoder::find_by_name("libopus"),
            "Opus",
            Sample::F32(sample::Type::Packed),
        )
    } else {
        (
            ffmpeg::encoder::find(Id::AAC),
            "AAC",
            Sample::F32(sample::Type::Planar),
        )
    };
    let codec = codec.ok_or(MediaError::NoCodec(name))?;
    let mut enc = codec::Context::new_with_codec(codec)
        .encoder()
        .audio()
        .map_err(|e| MediaError::Codec(name, e))?;
    enc.set_rate(SAMPLE_RATE as i32);
    enc.set_format(format);
    enc.set_channel_layout(ChannelLayout::STEREO);
    enc.set_channels(2);
    enc.set_bit_rate(bitrate as usize);
    enc.set_time_base(Rational(1, SAMPLE_RATE as i32));
    if global_header {
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let opened = enc
        .open_as_with(codec, Dictionary::new())
        .map_err(|e| MediaError::Codec(name, e))?;
    let frame_size = match opened.frame_size() {
        0 => 960,
        n => n as usize,
    };
    Ok(AudioEnc {
        encoder: opened,
        codec,
        frame_size,
        pending: Vec::new(),
        sent: 0,
    })
}

/// Copies a packed picture into an encoder frame (whose rows may be padded).
fn fill_frame(frame: &mut frame::Video, p: &Picture) {
    let planes: [(&[u8], usize); 3] = [
        (&p.y, p.width() as usize),
        (&p.u, p.chroma_width() as usize),
        (&p.v, p.chroma_width() as usize),
    ];
    for (i, (src, width)) in planes.into_iter().enumerate() {
        let stride = frame.stride(i);
        let dst = frame.data_mut(i);
        for (row, line) in src.chunks_exact(width).enumerate() {
            let at = row * stride;
            if at + width > dst.len() {
                break;
            }
            dst[at..at + width].copy_from_slice(line);
        }
    }
}

/// Writes interleaved stereo into a planar or packed float frame.
fn deinterleave(frame: &mut frame::Audio, samples: &[f32]) {
    if frame.is_planar() {
        for ch in 0..2 {
            let plane = frame.plane_mut::<f32>(ch);
            for (i, s) in plane.iter_mut().enumerate() {
                *s = samples[2 * i + ch];
            }
        }
    } else {
        let data = frame.data_mut(0);
        for (chunk, s) in data.chunks_exact_mut(4).zip(samples) {
            chunk.copy_from_slice(&s.to_ne_bytes());
        }
    }
}
