//! Synthetic encoded video for tests, benches and load generation: VP8, VP9 or H.264 frames
//! (libvpx, libvpx-vp9, libx264 through FFmpeg, real-time settings) of a solid colour with a
//! small moving block, so every frame carries data as a camera's would.

use ffmpeg_next as ffmpeg;

use crate::decode::VideoCodec;
use crate::picture::{Picture, Rect, Yuv};
use crate::{MediaError, init};

/// An encoder fed with one picture, a key frame every `fps` frames.
pub struct CameraSource {
    codec: VideoCodec,
    encoder: ffmpeg::encoder::Video,
    frame: ffmpeg::frame::Video,
    picture: Picture,
    colour: Yuv,
    next: i64,
}

impl CameraSource {
    /// A VP8 camera.
    pub fn vp8(colour: Yuv, width: u32, height: u32, fps: u32) -> Result<CameraSource, MediaError> {
        CameraSource::new(VideoCodec::Vp8, colour, width, height, fps)
    }

    /// A camera in `codec` (VP8, VP9 or H.264; AV1 is refused: its encoders are too slow for
    /// tests).
    pub fn new(
        codec: VideoCodec,
        colour: Yuv,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<CameraSource, MediaError> {
        init()?;
        let name = codec.name();
        let encoder = match codec {
            VideoCodec::Vp8 => "libvpx",
            VideoCodec::Vp9 => "libvpx-vp9",
            VideoCodec::H264 => "libx264",
            VideoCodec::Av1 => return Err(MediaError::Unsupported("AV1 test sources".into())),
        };
        let found = ffmpeg::encoder::find_by_name(encoder).ok_or(MediaError::NoCodec(name))?;
        let mut enc = ffmpeg::codec::Context::new_with_codec(found)
            .encoder()
            .video()
            .map_err(|e| MediaError::Codec(name, e))?;
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(ffmpeg::format::Pixel::YUV420P);
        enc.set_time_base(ffmpeg::Rational(1, fps as i32));
        enc.set_bit_rate((width * height * fps / 8) as usize);
        enc.set_gop(fps);
        enc.set_max_b_frames(0);
        let mut options = ffmpeg::Dictionary::new();
        if codec == VideoCodec::H264 {
            // What WebRTC sends: no B-frames, no lookahead, SPS/PPS with every key frame.
            options.set("preset", "ultrafast");
            options.set("tune", "zerolatency");
        } else {
            options.set("deadline", "realtime");
            options.set("lag-in-frames", "0");
            options.set("cpu-used", "8");
        }
        let encoder = enc
            .open_as_with(found, options)
            .map_err(|e| MediaError::Codec(name, e))?;
        Ok(CameraSource {
            codec,
            encoder,
            frame: ffmpeg::frame::Video::new(ffmpeg::format::Pixel::YUV420P, width, height),
            picture: Picture::new(width, height, colour),
            colour,
            next: 0,
        })
    }

    /// Changes the picture's colour from the next frame on.
    pub fn set_colour(&mut self, colour: Yuv) {
        self.colour = colour;
    }

    /// The next frame: its bytes and whether it is a key frame.
    pub fn next_frame(&mut self) -> Result<(Vec<u8>, bool), MediaError> {
        let (w, h) = (self.picture.width(), self.picture.height());
        // A block that moves one step per frame.
        let step = (self.next as u32 * 4) % w.max(1);
        self.picture.fill(Rect::new(0, 0, w, h), self.colour);
        self.picture.fill(
            Rect::new(step, h - h / 8, w / 16, h / 8),
            Yuv::from_rgb(128, 128, 128),
        );
        for (plane, data, width) in [
            (0, &self.picture.y, w as usize),
            (1, &self.picture.u, self.picture.chroma_width() as usize),
            (2, &self.picture.v, self.picture.chroma_width() as usize),
        ] {
            let stride = self.frame.stride(plane);
            for (row, line) in data.chunks_exact(width).enumerate() {
                self.frame.data_mut(plane)[row * stride..row * stride + width]
                    .copy_from_slice(line);
            }
        }
        self.frame.set_pts(Some(self.next));
        self.next += 1;
        let name = self.codec.name();
        self.encoder
            .send_frame(&self.frame)
            .map_err(|e| MediaError::Codec(name, e))?;
        let mut packet = ffmpeg::Packet::empty();
        self.encoder
            .receive_packet(&mut packet)
            .map_err(|e| MediaError::Codec(name, e))?;
        Ok((packet.data().unwrap_or_default().to_vec(), packet.is_key()))
    }
}
