//! Video decoding through FFmpeg (libavcodec): VP8, VP9, H.264 and AV1 frames, as str0m
//! hands them over already depacketized, into [`Picture`]s.

use ffmpeg::codec::{self, Id};
use ffmpeg::format::Pixel;
use ffmpeg::{Packet, frame};
use ffmpeg_next as ffmpeg;

use crate::picture::Picture;
use crate::{MediaError, init};

/// The video codecs WebRTC publishers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
    Av1,
}

impl VideoCodec {
    pub(crate) fn id(self) -> Id {
        match self {
            VideoCodec::Vp8 => Id::VP8,
            VideoCodec::Vp9 => Id::VP9,
            VideoCodec::H264 => Id::H264,
            VideoCodec::Av1 => Id::AV1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "VP8",
            VideoCodec::Vp9 => "VP9",
            VideoCodec::H264 => "H264",
            VideoCodec::Av1 => "AV1",
        }
    }
}

/// One track's decoder (software; one thread, as many decoders run side by side).
pub struct VideoDecoder {
    codec: VideoCodec,
    decoder: ffmpeg::decoder::Video,
    frame: frame::Video,
    /// Frames given and pictures out, for the recorder's counters.
    pub frames_in: u64,
    pub pictures_out: u64,
    pub errors: u64,
}

impl VideoDecoder {
    pub fn new(codec: VideoCodec) -> Result<VideoDecoder, MediaError> {
        init()?;
        // libdav1d first for AV1 where it is there: libavcodec's native AV1 decoder needs a
        // hardware device.
        let found = match codec {
            VideoCodec::Av1 => ffmpeg::decoder::find_by_name("libdav1d")
                .or_else(|| ffmpeg::decoder::find(codec.id())),
            _ => ffmpeg::decoder::find(codec.id()),
        };
        let found = found.ok_or(MediaError::NoCodec(codec.name()))?;
        let mut context = codec::Context::new_with_codec(found);
        context.set_threading(codec::threading::Config::count(1));
        let decoder = context
            .decoder()
            .video()
            .map_err(|e| MediaError::Codec(codec.name(), e))?;
        Ok(VideoDecoder {
            codec,
            decoder,
            frame: frame::Video::empty(),
            frames_in: 0,
            pictures_out: 0,
            errors: 0,
        })
    }

    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// Decodes one encoded frame. Returns the picture it completes, if any. A corrupt frame
    /// is an error for that frame only: the decoder stays usable (the next key frame heals
    /// the picture).
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<Picture>, MediaError> {
        self.frames_in += 1;
        let packet = Packet::copy(data);
        if let Err(e) = self.decoder.send_packet(&packet) {
            self.errors += 1;
            return Err(MediaError::Codec(self.codec.name(), e));
        }
        let mut last = None;
        while self.decoder.receive_frame(&mut self.frame).is_ok() {
            match picture_from(&self.frame) {
                Some(p) => {
                    self.pictures_out += 1;
                    last = Some(p);
                }
                None => {
                    self.errors += 1;
                    return Err(MediaError::Format(format!("{:?}", self.frame.format())));
                }
            }
        }
        Ok(last)
    }
}

/// Copies a decoded 4:2:0 frame into a packed [`Picture`]; `None` for other pixel formats.
pub(crate) fn picture_from(f: &frame::Video) -> Option<Picture> {
    if !matches!(f.format(), Pixel::YUV420P | Pixel::YUVJ420P) {
        return None;
    }
    let (w, h) = (f.width(), f.height());
    if w == 0 || h == 0 {
        return None;
    }
    let mut p = Picture::new(w, h, crate::picture::Yuv::BLACK);
    let (cw, ch) = (p.chroma_width() as usize, p.chroma_height() as usize);
    copy_plane(&mut p.y, w as usize, h as usize, f.data(0), f.stride(0));
    copy_plane(&mut p.u, cw, ch, f.data(1), f.stride(1));
    copy_plane(&mut p.v, cw, ch, f.data(2), f.stride(2));
    Some(p)
}

fn copy_plane(dst: &mut [u8], width: usize, height: usize, src: &[u8], stride: usize) {
    for (row, out) in dst.chunks_exact_mut(width).take(height).enumerate() {
        out.copy_from_slice(&src[row * stride..row * stride + width]);
    }
}
