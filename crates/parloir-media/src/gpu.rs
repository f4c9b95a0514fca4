//! The compositor's pixel work on an NVIDIA GPU: the kernels of `kernels/composite.cu`,
//! compiled at run time with NVRTC (no CUDA toolkit on build machines) and launched through
//! cudarc. Every operation gives the same bytes as its CPU reference on [`Picture`] (the tests
//! compare them when a GPU is present), so a recording looks the same on either path.
//!
//! NVRTC comes from the `nvidia-cuda-nvrtc-cu12` wheel the setup installs into models/.venv
//! (or a CUDA toolkit on the library path); compiling needs no GPU, so CI checks the kernels
//! compile. Running them needs libcuda (the NVIDIA driver) and a device.

#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

use std::collections::HashMap;

use crate::MediaError;
use crate::composite::Surface;
use crate::decode::{Frame, Nv12Frame, VideoCodec, VideoDecoder};
use crate::picture::{Picture, Rect, Yuv, clip};

/// The kernels' source, built into the binary.
pub const KERNELS: &str = include_str!("../../../kernels/composite.cu");

/// Where libnvrtc is looked for before the system's library path: `PARLOIR_NVRTC` (a file),
/// then the wheel in `models/.venv` of the current directory or of the executable's, or of a
/// directory above them (the repository root, for a binary under target/).
fn nvrtc_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("PARLOIR_NVRTC") {
        out.push(PathBuf::from(p));
    }
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    for start in starts {
        for dir in start.ancestors() {
            let Ok(entries) = std::fs::read_dir(dir.join("models/.venv/lib")) else {
                continue;
            };
            for entry in entries.flatten() {
                out.push(
                    entry
                        .path()
                        .join("site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"),
                );
            }
        }
    }
    out
}

/// Loads libnvrtc (once): from the first candidate file that exists, else by name from the
/// library path. cudarc then finds it by its soname.
pub fn load_nvrtc() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            for path in nvrtc_candidates() {
                if path.is_file() {
                    return preload(&path);
                }
            }
            // SAFETY: only dlopens libnvrtc by its usual names and reports whether it could.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                Ok(())
            } else {
                Err(
                    "libnvrtc not found: deploy/setup.sh installs it into models/.venv \
                     (nvidia-cuda-nvrtc-cu12), or set PARLOIR_NVRTC"
                        .into(),
                )
            }
        })
        .clone()
}

fn preload(path: &Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: libnvrtc's initialisers only set up its own state; the handle is kept for the
    // life of the process (forgotten), so nothing it gave out is ever unloaded.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::mem::forget(lib);
    Ok(())
}

/// Compiles the kernels to PTX with NVRTC (no GPU needed).
pub fn compile() -> Result<Ptx, String> {
    load_nvrtc()?;
    let options = CompileOptions {
        name: Some("composite.cu".into()),
        // Ampere and later (A100, L4/L40S, H100/H200): the oldest datacentre GPUs of the
        // hardware profiles; the driver compiles the PTX for the device it runs on.
        arch: Some("compute_80"),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS, options)
        .map_err(|e| format!("kernels/composite.cu: {e}"))
}

/// An I420 picture in device memory (packed planes, as [`Picture`]).
pub struct GpuPicture {
    width: u32,
    height: u32,
    y: CudaSlice<u8>,
    u: CudaSlice<u8>,
    v: CudaSlice<u8>,
}

impl GpuPicture {
    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    fn chroma_width(&self) -> u32 {
        self.width.div_ceil(2)
    }

    fn chroma_height(&self) -> u32 {
        self.height.div_ceil(2)
    }
}

/// A source plane for the scaler: one of ours, or one a decoder left in device memory (a raw
/// device pointer; `step` 2 for the U or V samples of NV12's interleaved chroma).
enum Plane<'a> {
    Slice(&'a CudaSlice<u8>),
    Raw { ptr: u64, step: u32 },
}

/// One GPU with the kernels loaded.
pub struct Gpu {
    ordinal: usize,
    stream: Arc<CudaStream>,
    scale: CudaFunction,
    fill: CudaFunction,
    luma: CudaFunction,
    chroma: CudaFunction,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.ordinal)
    }
}

/// Whether NVDEC decodes on GPU `ordinal` through FFmpeg: one H.264 key frame (made with
/// libx264) decoded with [`VideoDecoder::with_cuda`] must come out in device memory. For
/// `parloir doctor`.
pub fn nvdec_check(ordinal: usize) -> Result<(), String> {
    // SAFETY: only tries to dlopen libcuda and reports whether it could.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("libcuda is not installed (no NVIDIA driver)".into());
    }
    share_primary_context(ordinal)?;
    let mut camera = crate::source::CameraSource::new(VideoCodec::H264, Yuv::BLACK, 320, 180, 30)
        .map_err(|e| e.to_string())?;
    let (frame, _) = camera.next_frame().map_err(|e| e.to_string())?;
    let mut decoder =
        VideoDecoder::with_cuda(VideoCodec::H264, ordinal).map_err(|e| e.to_string())?;
    match decoder.decode_frame(&frame).map_err(|e| e.to_string())? {
        Some(Frame::Cuda(_)) => Ok(()),
        Some(Frame::Memory(_)) => {
            Err("FFmpeg decoded in software: NVDEC is not usable (libnvcuvid?)".into())
        }
        None => Err("no picture from a key frame".into()),
    }
}

/// Gives the device's primary context the flags FFmpeg's CUDA device insists on (blocking
/// sync) before anything makes it active: FFmpeg refuses a primary context already active
/// with other flags, and NVDEC then falls back to software (seen on an H200). Waits block
/// the thread rather than spin, which suits a process of many threads.
fn share_primary_context(ordinal: usize) -> Result<(), String> {
    use cudarc::driver::sys;
    let check = |what: &str, r: sys::CUresult| match r {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        e => Err(format!("{what}: {e:?}")),
    };
    let ordinal = i32::try_from(ordinal).map_err(|_| "GPU ordinal out of range")?;
    let blocking = sys::CUctx_flags::CU_CTX_SCHED_BLOCKING_SYNC as u32;
    // SAFETY: plain driver calls on a device handle the driver gave; libcuda was found above.
    unsafe {
        check("cuInit", sys::cuInit(0))?;
        let mut device = 0;
        check("cuDeviceGet", sys::cuDeviceGet(&mut device, ordinal))?;
        let (mut flags, mut active) = (0u32, 0i32);
        check(
            "cuDevicePrimaryCtxGetState",
            sys::cuDevicePrimaryCtxGetState(device, &mut flags, &mut active),
        )?;
        if flags != blocking {
            check(
                "cuDevicePrimaryCtxSetFlags",
                sys::cuDevicePrimaryCtxSetFlags_v2(device, blocking),
            )?;
        }
    }
    Ok(())
}

/// 16×16 threads per block, enough blocks to cover `w`×`h`.
fn grid(w: u32, h: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (w.div_ceil(16).max(1), h.div_ceil(16).max(1), 1),
        block_dim: (16, 16, 1),
        shared_mem_bytes: 0,
    }
}

fn cuda(what: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> String {
    move |e| format!("{what}: {e}")
}

impl Gpu {
    /// Opens device `ordinal`: the driver must be there (checked first: cudarc panics when
    /// libcuda is missing), the kernels compile and load.
    pub fn open(ordinal: usize) -> Result<Gpu, String> {
        // SAFETY: only tries to dlopen libcuda and reports whether it could.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("libcuda is not installed (no NVIDIA driver)".into());
        }
        let ptx = compile()?;
        share_primary_context(ordinal)?;
        let ctx = CudaContext::new(ordinal).map_err(cuda("CUDA context"))?;
        let module = ctx.load_module(ptx).map_err(cuda("loading the kernels"))?;
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| format!("kernel {name}: {e}"))
        };
        Ok(Gpu {
            ordinal,
            // The legacy default stream, where FFmpeg's NVDEC copies go too, so kernels order
            // after them. (Per-thread default streams hung an 8-thread upload test on an H200:
            // left for later.)
            stream: ctx.default_stream(),
            scale: f("scale_plane")?,
            fill: f("fill_plane")?,
            luma: f("blend_mask_luma")?,
            chroma: f("blend_mask_chroma")?,
        })
    }

    /// The device's ordinal (for decoders on it).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Copies a picture to the device.
    pub fn upload(&self, p: &Picture) -> Result<GpuPicture, String> {
        let s = &self.stream;
        Ok(GpuPicture {
            width: p.width(),
            height: p.height(),
            y: s.clone_htod(&p.y).map_err(cuda("upload"))?,
            u: s.clone_htod(&p.u).map_err(cuda("upload"))?,
            v: s.clone_htod(&p.v).map_err(cuda("upload"))?,
        })
    }

    /// Copies a picture to the device into `out`, reused when it has the picture's size.
    pub fn upload_into(&self, p: &Picture, out: &mut Option<GpuPicture>) -> Result<(), String> {
        match out {
            Some(g) if (g.width, g.height) == (p.width(), p.height()) => {
                let s = &self.stream;
                s.memcpy_htod(&p.y, &mut g.y).map_err(cuda("upload"))?;
                s.memcpy_htod(&p.u, &mut g.u).map_err(cuda("upload"))?;
                s.memcpy_htod(&p.v, &mut g.v).map_err(cuda("upload"))
            }
            _ => {
                *out = Some(self.upload(p)?);
                Ok(())
            }
        }
    }

    /// Copies a picture back from the device.
    pub fn download(&self, g: &GpuPicture) -> Result<Picture, String> {
        let mut p = Picture::new(g.width, g.height, Yuv::BLACK);
        self.download_into(g, &mut p)?;
        Ok(p)
    }

    /// Copies a picture back into `p` (made the picture's size if it is not).
    pub fn download_into(&self, g: &GpuPicture, p: &mut Picture) -> Result<(), String> {
        if (p.width(), p.height()) != (g.width, g.height) {
            *p = Picture::new(g.width, g.height, Yuv::BLACK);
        }
        let s = &self.stream;
        s.memcpy_dtoh(&g.y, &mut p.y).map_err(cuda("download"))?;
        s.memcpy_dtoh(&g.u, &mut p.u).map_err(cuda("download"))?;
        s.memcpy_dtoh(&g.v, &mut p.v).map_err(cuda("download"))?;
        s.synchronize().map_err(cuda("synchronize"))
    }

    /// [`Picture::fill`] on the device.
    pub fn fill(&self, g: &mut GpuPicture, r: Rect, colour: Yuv) -> Result<(), String> {
        let r = clip(g.width, g.height, r).even();
        let (cw, half) = (g.chroma_width(), |r: Rect| {
            Rect::new(r.x / 2, r.y / 2, r.width / 2, r.height / 2)
        });
        self.fill_plane(&mut g.y, g.width, r, colour.y)?;
        self.fill_plane(&mut g.u, cw, half(r), colour.u)?;
        self.fill_plane(&mut g.v, cw, half(r), colour.v)
    }

    fn fill_plane(
        &self,
        plane: &mut CudaSlice<u8>,
        stride: u32,
        r: Rect,
        value: u8,
    ) -> Result<(), String> {
        if r.width == 0 || r.height == 0 {
            return Ok(());
        }
        let mut launch = self.stream.launch_builder(&self.fill);
        launch
            .arg(plane)
            .arg(&stride)
            .arg(&r.x)
            .arg(&r.y)
            .arg(&r.width)
            .arg(&r.height)
            .arg(&value);
        // SAFETY: the arguments match fill_plane's signature, and the rectangle was clipped to
        // the plane, so every thread writes inside it.
        unsafe { launch.launch(grid(r.width, r.height)) }
            .map(|_| ())
            .map_err(|e| format!("fill_plane: {e}"))
    }

    /// [`Picture::border`] on the device.
    pub fn border(
        &self,
        g: &mut GpuPicture,
        r: Rect,
        thickness: u32,
        colour: Yuv,
    ) -> Result<(), String> {
        let r = clip(g.width, g.height, r).even();
        let t = (thickness.max(2) + 1) & !1;
        if r.width <= 2 * t || r.height <= 2 * t {
            return self.fill(g, r, colour);
        }
        self.fill(g, Rect::new(r.x, r.y, r.width, t), colour)?;
        self.fill(g, Rect::new(r.x, r.y + r.height - t, r.width, t), colour)?;
        self.fill(g, Rect::new(r.x, r.y, t, r.height), colour)?;
        self.fill(g, Rect::new(r.x + r.width - t, r.y, t, r.height), colour)
    }

    /// [`Picture::blit`] on the device.
    pub fn blit(
        &self,
        dst: &mut GpuPicture,
        dst_rect: Rect,
        src: &GpuPicture,
        src_rect: Rect,
    ) -> Result<(), String> {
        let d = clip(dst.width, dst.height, dst_rect).even();
        let s = clip(src.width, src.height, src_rect).even();
        if d.width == 0 || d.height == 0 || s.width == 0 || s.height == 0 {
            return Ok(());
        }
        let half = |r: Rect| Rect::new(r.x / 2, r.y / 2, r.width / 2, r.height / 2);
        let (dcw, scw) = (dst.chroma_width(), src.chroma_width());
        self.scale_plane(&mut dst.y, dst.width, d, Plane::Slice(&src.y), src.width, s)?;
        let (du, su) = (half(d), half(s));
        self.scale_plane(&mut dst.u, dcw, du, Plane::Slice(&src.u), scw, su)?;
        self.scale_plane(&mut dst.v, dcw, du, Plane::Slice(&src.v), scw, su)
    }

    fn scale_plane(
        &self,
        dst: &mut CudaSlice<u8>,
        dst_stride: u32,
        d: Rect,
        src: Plane<'_>,
        src_stride: u32,
        s: Rect,
    ) -> Result<(), String> {
        if d.width == 0 || d.height == 0 || s.width == 0 || s.height == 0 {
            return Ok(());
        }
        let mut launch = self.stream.launch_builder(&self.scale);
        launch
            .arg(dst)
            .arg(&dst_stride)
            .arg(&d.x)
            .arg(&d.y)
            .arg(&d.width)
            .arg(&d.height);
        let step = match &src {
            Plane::Slice(slice) => {
                launch.arg(*slice);
                1u32
            }
            Plane::Raw { ptr, step } => {
                launch.arg(ptr);
                *step
            }
        };
        launch
            .arg(&src_stride)
            .arg(&step)
            .arg(&s.x)
            .arg(&s.y)
            .arg(&s.width)
            .arg(&s.height);
        // SAFETY: the arguments match scale_plane's signature; both rectangles were clipped to
        // their planes (a decoder's frame: its own size), so every read and write is inside.
        unsafe { launch.launch(grid(d.width, d.height)) }
            .map(|_| ())
            .map_err(|e| format!("scale_plane: {e}"))
    }

    /// A `width`×`height` picture (made even) of one colour on the device.
    pub fn picture(&self, width: u32, height: u32, colour: Yuv) -> Result<GpuPicture, String> {
        let (width, height) = (width.max(2) & !1, height.max(2) & !1);
        let (cw, ch) = (width / 2, height / 2);
        let s = &self.stream;
        let mut g = GpuPicture {
            width,
            height,
            y: s.alloc_zeros((width * height) as usize)
                .map_err(cuda("alloc"))?,
            u: s.alloc_zeros((cw * ch) as usize).map_err(cuda("alloc"))?,
            v: s.alloc_zeros((cw * ch) as usize).map_err(cuda("alloc"))?,
        };
        self.fill(&mut g, Rect::new(0, 0, width, height), colour)?;
        Ok(g)
    }

    /// An NV12 frame a decoder left in device memory into a packed I420 picture (reused when
    /// it has the frame's size): a copy on the device, the chroma de-interleaved. The frame's
    /// size is made even (WebRTC cameras' are).
    pub fn from_nv12(&self, f: &Nv12Frame<'_>, out: &mut Option<GpuPicture>) -> Result<(), String> {
        let (w, h) = (f.width & !1, f.height & !1);
        if w == 0 || h == 0 {
            return Err(format!("an NV12 frame of {}x{}", f.width, f.height));
        }
        if out.as_ref().is_none_or(|g| g.width != w || g.height != h) {
            *out = Some(self.picture(w, h, Yuv::BLACK)?);
        }
        let g = out.as_mut().expect("just made");
        let (cw, ch) = (w / 2, h / 2);
        let luma = Rect::new(0, 0, w, h);
        let chroma = Rect::new(0, 0, cw, ch);
        // Same size in and out: the scaler's positions fall on samples, so this is a copy.
        let raw = |ptr, step| Plane::Raw { ptr, step };
        self.scale_plane(&mut g.y, w, luma, raw(f.y, 1), f.y_pitch, luma)?;
        self.scale_plane(&mut g.u, cw, chroma, raw(f.uv, 2), f.uv_pitch, chroma)?;
        self.scale_plane(&mut g.v, cw, chroma, raw(f.uv + 1, 2), f.uv_pitch, chroma)
    }

    /// [`Picture::blend_mask`] on the device (the mask is copied up each call; [`GpuCanvas`]
    /// keeps its labels' masks on the device instead).
    pub fn blend_mask(
        &self,
        g: &mut GpuPicture,
        x: i64,
        y: i64,
        mask: &[u8],
        mask_width: u32,
        colour: Yuv,
    ) -> Result<(), String> {
        if mask_width == 0 || mask.is_empty() {
            return Ok(());
        }
        let mask_height = (mask.len() / mask_width as usize) as u32;
        let (x, y) = (
            i32::try_from(x).map_err(|_| "mask position out of range")?,
            i32::try_from(y).map_err(|_| "mask position out of range")?,
        );
        let m = self.stream.clone_htod(mask).map_err(cuda("upload mask"))?;
        self.blend_device_mask(g, x, y, &m, mask_width, mask_height, colour)
    }

    /// [`Self::blend_mask`] with the mask already on the device.
    #[allow(clippy::too_many_arguments)]
    fn blend_device_mask(
        &self,
        g: &mut GpuPicture,
        x: i32,
        y: i32,
        m: &CudaSlice<u8>,
        mask_width: u32,
        mask_height: u32,
        colour: Yuv,
    ) -> Result<(), String> {
        let (width, height) = (g.width, g.height);
        let mut launch = self.stream.launch_builder(&self.luma);
        launch
            .arg(&mut g.y)
            .arg(&width)
            .arg(&width)
            .arg(&height)
            .arg(m)
            .arg(&mask_width)
            .arg(&mask_height)
            .arg(&x)
            .arg(&y)
            .arg(&colour.y);
        // SAFETY: the arguments match blend_mask_luma's signature; the kernel clips every
        // sample to the plane and the mask.
        unsafe { launch.launch(grid(mask_width, mask_height)) }
            .map_err(|e| format!("blend_mask_luma: {e}"))?;
        let (cw, ch) = (g.chroma_width(), g.chroma_height());
        let mut launch = self.stream.launch_builder(&self.chroma);
        launch
            .arg(&mut g.u)
            .arg(&mut g.v)
            .arg(&cw)
            .arg(&cw)
            .arg(&ch)
            .arg(m)
            .arg(&mask_width)
            .arg(&mask_height)
            .arg(&x)
            .arg(&y)
            .arg(&colour.u)
            .arg(&colour.v)
            .arg(&width)
            .arg(&height);
        // SAFETY: as above, for blend_mask_chroma.
        unsafe { launch.launch(grid(mask_width, mask_height)) }
            .map(|_| ())
            .map_err(|e| format!("blend_mask_chroma: {e}"))
    }
}

/// A canvas in device memory for the [`crate::Compositor`]: tiles come from pictures on the
/// same GPU (decoded there by [`CudaDecoder`], or uploaded). Name labels are uploaded once and
/// kept while they are in use.
pub struct GpuCanvas {
    gpu: Arc<Gpu>,
    picture: GpuPicture,
    /// Labels' masks on the device, by their contents; cleared when it grows past a room's.
    masks: HashMap<u64, CudaSlice<u8>>,
}

/// Labels kept on the device at most (a 150-participant room's names, twice, with shadows
/// sharing theirs).
const MASKS: usize = 512;

impl GpuCanvas {
    pub fn new(gpu: Arc<Gpu>, width: u32, height: u32, colour: Yuv) -> Result<GpuCanvas, String> {
        let picture = gpu.picture(width, height, colour)?;
        Ok(GpuCanvas {
            gpu,
            picture,
            masks: HashMap::new(),
        })
    }

    /// The canvas as drawn so far, copied back (for an encoder on the CPU).
    pub fn download(&self) -> Result<Picture, String> {
        self.gpu.download(&self.picture)
    }

    /// Like [`Self::download`], into `p`.
    pub fn download_into(&self, p: &mut Picture) -> Result<(), String> {
        self.gpu.download_into(&self.picture, p)
    }
}

fn gpu_error(e: String) -> MediaError {
    MediaError::Gpu(e)
}

impl Surface for GpuCanvas {
    type Source = GpuPicture;

    fn width(&self) -> u32 {
        self.picture.width
    }

    fn height(&self) -> u32 {
        self.picture.height
    }

    fn source_size(source: &GpuPicture) -> (u32, u32) {
        (source.width, source.height)
    }

    fn fill(&mut self, r: Rect, colour: Yuv) -> Result<(), MediaError> {
        self.gpu
            .fill(&mut self.picture, r, colour)
            .map_err(gpu_error)
    }

    fn blit(&mut self, dst_rect: Rect, src: &GpuPicture, src_rect: Rect) -> Result<(), MediaError> {
        self.gpu
            .blit(&mut self.picture, dst_rect, src, src_rect)
            .map_err(gpu_error)
    }

    fn border(&mut self, r: Rect, thickness: u32, colour: Yuv) -> Result<(), MediaError> {
        self.gpu
            .border(&mut self.picture, r, thickness, colour)
            .map_err(gpu_error)
    }

    fn blend_mask(
        &mut self,
        x: i64,
        y: i64,
        mask: &[u8],
        mask_width: u32,
        colour: Yuv,
    ) -> Result<(), MediaError> {
        if mask_width == 0 || mask.is_empty() {
            return Ok(());
        }
        let (Ok(x), Ok(y)) = (i32::try_from(x), i32::try_from(y)) else {
            return Err(MediaError::Gpu("mask position out of range".into()));
        };
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            mask_width.hash(&mut h);
            mask.hash(&mut h);
            h.finish()
        };
        if !self.masks.contains_key(&key) {
            if self.masks.len() >= MASKS {
                self.masks.clear();
            }
            let m = self
                .gpu
                .stream
                .clone_htod(mask)
                .map_err(|e| MediaError::Gpu(format!("upload mask: {e}")))?;
            self.masks.insert(key, m);
        }
        let m = &self.masks[&key];
        let mask_height = (mask.len() / mask_width as usize) as u32;
        self.gpu
            .blend_device_mask(&mut self.picture, x, y, m, mask_width, mask_height, colour)
            .map_err(gpu_error)
    }
}

/// How a [`CudaDecoder`] decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    /// On NVDEC.
    Nvdec,
    /// With libavcodec on the CPU, pictures uploaded.
    Software,
    /// By picture size: software below [`NVDEC_FROM`] pixels, NVDEC from there, switching at
    /// key frames. Measured on an H200 (perf/README.md, "Recording on the GPU"): FFmpeg's NVDEC
    /// path returns each picture in a round trip (about 0.2 ms for 180p, 1.9 ms for 1080p, in
    /// one thread), so small simulcast layers decode faster in software (15k pictures/s of
    /// 180p against 4.6k), 1080p about even, and a composite decoding 25 small tiles on NVDEC
    /// one after the other tops out near 60 frames/s; big pictures (the speaker's layer, a
    /// screen share) are where NVDEC spares the CPU, which also encodes on a GPU without NVENC.
    BySize,
}

/// Pictures of at least this many pixels go to NVDEC with [`Decoding::BySize`] (720p).
pub const NVDEC_FROM: u64 = 1280 * 720;

/// A track's decoder for the GPU path: NVDEC or software as its [`Decoding`] says, the pictures
/// on the device either way (NVDEC's NV12 turned into I420 there; software pictures uploaded).
/// The latest picture is kept and lent.
pub struct CudaDecoder {
    decoder: VideoDecoder,
    gpu: Arc<Gpu>,
    decoding: Decoding,
    /// Whether `decoder` is on NVDEC, and whether NVDEC could not be had (then never again).
    on_nvdec: bool,
    nvdec_failed: bool,
    /// Pixels of the last picture, for [`Decoding::BySize`].
    last_pixels: u64,
    picture: Option<GpuPicture>,
    /// Pictures NVDEC decoded, and pictures decoded in software and uploaded.
    pub hardware: u64,
    pub software: u64,
}

impl CudaDecoder {
    /// A decoder whose pictures go to `gpu`. [`Decoding::BySize`] starts in software: the
    /// size is known from the first picture.
    pub fn new(
        codec: VideoCodec,
        gpu: Arc<Gpu>,
        decoding: Decoding,
    ) -> Result<CudaDecoder, MediaError> {
        let mut nvdec_failed = false;
        let (decoder, on_nvdec) = match decoding {
            Decoding::Nvdec => match VideoDecoder::with_cuda(codec, gpu.ordinal) {
                Ok(d) => (d, true),
                // No NVDEC through FFmpeg (a driver without it): software, uploaded.
                Err(e) => {
                    tracing::warn!("{} on NVDEC: {e}; decoding in software", codec.name());
                    nvdec_failed = true;
                    (VideoDecoder::new(codec)?, false)
                }
            },
            Decoding::Software | Decoding::BySize => (VideoDecoder::new(codec)?, false),
        };
        Ok(CudaDecoder {
            decoder,
            gpu,
            decoding,
            on_nvdec,
            nvdec_failed,
            last_pixels: 0,
            picture: None,
            hardware: 0,
            software: 0,
        })
    }

    /// Whether the next pictures come from NVDEC.
    pub fn on_nvdec(&self) -> bool {
        self.on_nvdec
    }

    /// [`Decoding::BySize`]: at a key frame (where a new decoder can start), the decoder the
    /// last picture's size calls for.
    fn choose(&mut self) {
        let want = self.last_pixels >= NVDEC_FROM && !self.nvdec_failed;
        if want == self.on_nvdec {
            return;
        }
        let codec = self.decoder.codec();
        let made = if want {
            VideoDecoder::with_cuda(codec, self.gpu.ordinal)
        } else {
            VideoDecoder::new(codec)
        };
        match made {
            Ok(d) => {
                self.decoder = d;
                self.on_nvdec = want;
            }
            Err(e) => {
                tracing::warn!("{} on NVDEC: {e}; decoding in software", codec.name());
                self.nvdec_failed |= want;
            }
        }
    }

    /// Decodes one frame; the picture it completes, if any, on the device.
    /// `key`: whether it is a key frame (where [`Decoding::BySize`] may change decoders).
    pub fn decode(&mut self, data: &[u8], key: bool) -> Result<Option<&GpuPicture>, MediaError> {
        if key && self.decoding == Decoding::BySize {
            self.choose();
        }
        let fresh_av1 =
            self.decoder.codec() == VideoCodec::Av1 && self.on_nvdec && self.hardware == 0;
        let got = match self.decoder.feed(data) {
            // FFmpeg's AV1 decoder decodes only in hardware: without NVDEC's AV1, libdav1d.
            Err(e) if fresh_av1 => {
                tracing::warn!("AV1 on NVDEC: {e}; decoding in software");
                self.decoder = VideoDecoder::new(VideoCodec::Av1)?;
                self.on_nvdec = false;
                self.nvdec_failed = true;
                self.decoder.feed(data)?
            }
            other => other?,
        };
        if !got {
            return Ok(None);
        }
        match self.decoder.current()? {
            None => return Ok(None),
            Some(Frame::Cuda(f)) => {
                self.last_pixels = u64::from(f.width) * u64::from(f.height);
                self.gpu
                    .from_nv12(&f, &mut self.picture)
                    .map_err(gpu_error)?;
                self.hardware += 1;
            }
            Some(Frame::Memory(p)) => {
                self.last_pixels = u64::from(p.width()) * u64::from(p.height());
                self.gpu
                    .upload_into(&p, &mut self.picture)
                    .map_err(gpu_error)?;
                self.software += 1;
            }
        }
        Ok(self.picture.as_ref())
    }

    /// The latest picture.
    pub fn picture(&self) -> Option<&GpuPicture> {
        self.picture.as_ref()
    }
}
