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

/// One GPU with the kernels loaded.
pub struct Gpu {
    stream: Arc<CudaStream>,
    scale: CudaFunction,
    fill: CudaFunction,
    luma: CudaFunction,
    chroma: CudaFunction,
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
        let ctx = CudaContext::new(ordinal).map_err(cuda("CUDA context"))?;
        let module = ctx.load_module(ptx).map_err(cuda("loading the kernels"))?;
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| format!("kernel {name}: {e}"))
        };
        Ok(Gpu {
            stream: ctx.default_stream(),
            scale: f("scale_plane")?,
            fill: f("fill_plane")?,
            luma: f("blend_mask_luma")?,
            chroma: f("blend_mask_chroma")?,
        })
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

    /// Copies a picture back from the device.
    pub fn download(&self, g: &GpuPicture) -> Result<Picture, String> {
        let s = &self.stream;
        let mut p = Picture::new(g.width, g.height, Yuv::BLACK);
        s.memcpy_dtoh(&g.y, &mut p.y).map_err(cuda("download"))?;
        s.memcpy_dtoh(&g.u, &mut p.u).map_err(cuda("download"))?;
        s.memcpy_dtoh(&g.v, &mut p.v).map_err(cuda("download"))?;
        s.synchronize().map_err(cuda("synchronize"))?;
        Ok(p)
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
        self.scale_plane(&mut dst.y, dst.width, d, &src.y, src.width, s)?;
        self.scale_plane(&mut dst.u, dcw, half(d), &src.u, scw, half(s))?;
        self.scale_plane(&mut dst.v, dcw, half(d), &src.v, scw, half(s))
    }

    fn scale_plane(
        &self,
        dst: &mut CudaSlice<u8>,
        dst_stride: u32,
        d: Rect,
        src: &CudaSlice<u8>,
        src_stride: u32,
        s: Rect,
    ) -> Result<(), String> {
        if d.width == 0 || d.height == 0 || s.width == 0 || s.height == 0 {
            return Ok(());
        }
        let step = 1u32;
        let mut launch = self.stream.launch_builder(&self.scale);
        launch
            .arg(dst)
            .arg(&dst_stride)
            .arg(&d.x)
            .arg(&d.y)
            .arg(&d.width)
            .arg(&d.height)
            .arg(src)
            .arg(&src_stride)
            .arg(&step)
            .arg(&s.x)
            .arg(&s.y)
            .arg(&s.width)
            .arg(&s.height);
        // SAFETY: the arguments match scale_plane's signature; both rectangles were clipped to
        // their planes, so every read and write is inside them.
        unsafe { launch.launch(grid(d.width, d.height)) }
            .map(|_| ())
            .map_err(|e| format!("scale_plane: {e}"))
    }

    /// [`Picture::blend_mask`] on the device (the mask is copied up each call; labels are
    /// small and cached by the caller as pictures would be).
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
        let (width, height) = (g.width, g.height);
        let mut launch = self.stream.launch_builder(&self.luma);
        launch
            .arg(&mut g.y)
            .arg(&width)
            .arg(&width)
            .arg(&height)
            .arg(&m)
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
            .arg(&m)
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
