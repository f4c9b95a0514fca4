//! Video decoding through FFmpeg (libavcodec): VP8, VP9, H.264 and AV1 frames, as str0m
//! hands them over already depacketized, into [`Picture`]s, or on NVIDIA's NVDEC into device
//! memory ([`VideoDecoder::with_cuda`]).

#![allow(unsafe_code)]

use ffmpeg::codec::{self, Id};
use ffmpeg::format::Pixel;
use ffmpeg::{Packet, ffi, frame};
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
    spare: frame::Video,
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
        VideoDecoder::open(codec, codec::Context::new_with_codec(found))
    }

    /// Opens `context` (one thread) as `codec`'s decoder.
    fn open(codec: VideoCodec, mut context: codec::Context) -> Result<VideoDecoder, MediaError> {
        context.set_threading(codec::threading::Config::count(1));
        let decoder = context
            .decoder()
            .video()
            .map_err(|e| MediaError::Codec(codec.name(), e))?;
        Ok(VideoDecoder {
            codec,
            decoder,
            frame: frame::Video::empty(),
            spare: frame::Video::empty(),
            frames_in: 0,
            pictures_out: 0,
            errors: 0,
        })
    }

    /// A decoder that decodes on NVIDIA's NVDEC through FFmpeg's CUDA hwaccel, into device
    /// memory of GPU `ordinal` (its primary context, which [`crate::gpu::Gpu`] shares), where
    /// the GPU can do it; where it cannot (no driver, a codec or profile NVDEC lacks), FFmpeg
    /// falls back to software decoding frame by frame and [`Self::decode_frame`] says so.
    pub fn with_cuda(codec: VideoCodec, ordinal: usize) -> Result<VideoDecoder, MediaError> {
        init()?;
        // The native decoders: FFmpeg's hwaccels hang off them (libdav1d has none).
        let found = ffmpeg::decoder::find(codec.id()).ok_or(MediaError::NoCodec(codec.name()))?;
        let device = cuda_device(ordinal)?;
        let mut context = codec::Context::new_with_codec(found);
        // SAFETY: the context is not open yet; it takes its own reference to the device (freed
        // with the context), and the callback is a plain function over FFmpeg's list.
        unsafe {
            let raw = context.as_mut_ptr();
            (*raw).hw_device_ctx = ffi::av_buffer_ref(device.0);
            (*raw).get_format = Some(prefer_cuda);
        }
        VideoDecoder::open(codec, context)
    }

    pub fn codec(&self) -> VideoCodec {
        self.codec
    }

    /// Decodes one encoded frame, leaving the picture it completes where the decoder put it:
    /// in memory, or in device memory for a decoder made [`Self::with_cuda`].
    pub fn decode_frame(&mut self, data: &[u8]) -> Result<Option<Frame<'_>>, MediaError> {
        if !self.feed(data)? {
            return Ok(None);
        }
        self.current()
    }

    /// Decodes one encoded frame; whether it completed a picture (then [`Self::current`]).
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<bool, MediaError> {
        self.frames_in += 1;
        let packet = Packet::copy(data);
        if let Err(e) = self.decoder.send_packet(&packet) {
            self.errors += 1;
            return Err(MediaError::Codec(self.codec.name(), e));
        }
        // Only the last picture matters (a frame completes at most one in WebRTC streams).
        // A call that finds none clears the frame it is given: the spare one.
        let mut got = false;
        while self.decoder.receive_frame(&mut self.spare).is_ok() {
            std::mem::swap(&mut self.frame, &mut self.spare);
            got = true;
        }
        Ok(got)
    }

    /// The picture the last [`Self::feed`] completed.
    pub(crate) fn current(&mut self) -> Result<Option<Frame<'_>>, MediaError> {
        let f = &self.frame;
        if f.format() == Pixel::CUDA {
            // SAFETY: a CUDA frame carries its frames context, whose `sw_format` says how its
            // planes (device pointers in data[0..2]) are laid out.
            let sw = unsafe {
                let ctx = (*f.as_ptr()).hw_frames_ctx;
                if ctx.is_null() {
                    None
                } else {
                    Some((*((*ctx).data as *const ffi::AVHWFramesContext)).sw_format)
                }
            };
            if sw != Some(ffi::AVPixelFormat::AV_PIX_FMT_NV12) || f.width() == 0 {
                self.errors += 1;
                return Err(MediaError::Format(format!("CUDA frames of {sw:?}")));
            }
            self.pictures_out += 1;
            // SAFETY: as above; the pointers stay valid while `self.frame` holds the frame.
            let (y, uv) = unsafe {
                let raw = f.as_ptr();
                ((*raw).data[0] as u64, (*raw).data[1] as u64)
            };
            return Ok(Some(Frame::Cuda(Nv12Frame {
                width: f.width(),
                height: f.height(),
                y,
                y_pitch: f.stride(0) as u32,
                uv,
                uv_pitch: f.stride(1) as u32,
                _frame: std::marker::PhantomData,
            })));
        }
        match picture_from(f) {
            Some(p) => {
                self.pictures_out += 1;
                Ok(Some(Frame::Memory(p)))
            }
            None => {
                self.errors += 1;
                Err(MediaError::Format(format!("{:?}", f.format())))
            }
        }
    }

    /// Decodes one encoded frame. Returns the picture it completes, if any. A corrupt frame
    /// is an error for that frame only: the decoder stays usable (the next key frame heals
    /// the picture).
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<Picture>, MediaError> {
        match self.decode_frame(data)? {
            None => Ok(None),
            Some(Frame::Memory(p)) => Ok(Some(p)),
            Some(Frame::Cuda(_)) => Err(MediaError::Unsupported(
                "a picture in device memory: decode_frame gives it".into(),
            )),
        }
    }
}

/// A decoded picture, where the decoder left it.
pub enum Frame<'a> {
    /// In memory (software decoding).
    Memory(Picture),
    /// In device memory, owned by the decoder until its next frame.
    Cuda(Nv12Frame<'a>),
}

/// An NV12 picture in device memory (NVDEC's output): a luma plane and an interleaved chroma
/// plane, as CUDA device pointers with their pitches in bytes. Borrowed from the decoder.
#[derive(Debug, Clone, Copy)]
pub struct Nv12Frame<'a> {
    pub width: u32,
    pub height: u32,
    pub y: u64,
    pub y_pitch: u32,
    pub uv: u64,
    pub uv_pitch: u32,
    _frame: std::marker::PhantomData<&'a frame::Video>,
}

/// FFmpeg's CUDA device on GPU `ordinal`, in the device's primary context (the one cudarc
/// uses), so device pointers pass between them.
struct CudaDevice(*mut ffi::AVBufferRef);

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // SAFETY: our own reference, taken by av_hwdevice_ctx_create.
        unsafe { ffi::av_buffer_unref(&mut self.0) };
    }
}

fn cuda_device(ordinal: usize) -> Result<CudaDevice, MediaError> {
    let name = std::ffi::CString::new(ordinal.to_string()).expect("digits");
    let mut options: *mut ffi::AVDictionary = std::ptr::null_mut();
    let mut device: *mut ffi::AVBufferRef = std::ptr::null_mut();
    // SAFETY: FFmpeg fills `device` on success; the dictionary is freed here either way.
    let rc = unsafe {
        ffi::av_dict_set(&mut options, c"primary_ctx".as_ptr(), c"1".as_ptr(), 0);
        let rc = ffi::av_hwdevice_ctx_create(
            &mut device,
            ffi::AVHWDeviceType::AV_HWDEVICE_TYPE_CUDA,
            name.as_ptr(),
            options,
            0,
        );
        ffi::av_dict_free(&mut options);
        rc
    };
    if rc < 0 || device.is_null() {
        return Err(MediaError::Unsupported(format!(
            "no CUDA device {ordinal} for NVDEC: {}",
            ffmpeg::Error::from(rc)
        )));
    }
    Ok(CudaDevice(device))
}

/// FFmpeg's get_format: CUDA frames when offered (NVDEC can take this stream), else its
/// default (software). When the hwaccel fails to start, FFmpeg asks again without CUDA.
unsafe extern "C" fn prefer_cuda(
    ctx: *mut ffi::AVCodecContext,
    formats: *const ffi::AVPixelFormat,
) -> ffi::AVPixelFormat {
    // SAFETY: FFmpeg passes a list ended by AV_PIX_FMT_NONE.
    unsafe {
        let mut p = formats;
        while *p != ffi::AVPixelFormat::AV_PIX_FMT_NONE {
            if *p == ffi::AVPixelFormat::AV_PIX_FMT_CUDA {
                return *p;
            }
            p = p.add(1);
        }
        ffi::avcodec_default_get_format(ctx, formats)
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
