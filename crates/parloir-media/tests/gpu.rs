//! The CUDA kernels against their CPU references, and NVDEC against libavcodec. Compiling the
//! kernels (NVRTC, from the wheel the setup installs) needs no GPU and is always checked;
//! running them is checked when a CUDA device is present, and skipped with a message when not.

use std::sync::Arc;

use parloir_media::gpu::{CudaDecoder, Decoding, Gpu, GpuCanvas, NVDEC_FROM, compile};
use parloir_media::source::CameraSource;
use parloir_media::text::Labeler;
use parloir_media::{Compositor, Layout, Picture, Rect, TileView, VideoCodec, VideoDecoder, Yuv};

#[test]
fn the_kernels_compile_with_nvrtc() {
    let ptx = compile().expect("kernels/composite.cu compiles (deploy/setup.sh installs NVRTC)");
    let text = ptx.to_src();
    for kernel in [
        "scale_plane",
        "fill_plane",
        "blend_mask_luma",
        "blend_mask_chroma",
    ] {
        assert!(
            text.contains(&format!(".entry {kernel}")),
            "{kernel} missing from the PTX"
        );
    }
}

/// A picture with a pattern in every plane, so scaling has something to interpolate.
fn pattern(width: u32, height: u32, seed: u32) -> Picture {
    let mut p = Picture::new(width, height, Yuv::BLACK);
    for (i, v) in p.y.iter_mut().enumerate() {
        *v = ((i as u32 * 7 + seed * 13) % 251) as u8;
    }
    for (i, v) in p.u.iter_mut().enumerate() {
        *v = ((i as u32 * 3 + seed) % 239) as u8;
    }
    for (i, v) in p.v.iter_mut().enumerate() {
        *v = ((i as u32 * 5 + seed * 2) % 241) as u8;
    }
    p
}

#[test]
fn gpu_compositing_matches_the_cpu_byte_for_byte() {
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipped: no GPU to compare with ({e})");
            return;
        }
    };
    let mut cpu = Picture::new(1280, 720, Yuv::from_rgb(18, 18, 20));
    let mut dev = gpu.upload(&cpu).unwrap();
    // Tiles scaled down, up and across aspect ratios, partly off the canvas.
    let sources = [
        pattern(320, 180, 1),
        pattern(640, 360, 2),
        pattern(1280, 720, 3),
        pattern(360, 640, 4),
    ];
    let places = [
        (Rect::new(2, 2, 636, 356), Rect::new(0, 0, 320, 180)),
        (Rect::new(642, 2, 636, 356), Rect::new(10, 20, 600, 300)),
        (Rect::new(2, 362, 252, 140), Rect::new(0, 0, 1280, 720)),
        (Rect::new(1100, 500, 400, 400), Rect::new(0, 100, 360, 360)),
    ];
    for (src, (dst_rect, src_rect)) in sources.iter().zip(places) {
        let up = gpu.upload(src).unwrap();
        cpu.blit(dst_rect, src, src_rect);
        gpu.blit(&mut dev, dst_rect, &up, src_rect).unwrap();
    }
    let green = Yuv::from_rgb(20, 200, 60);
    cpu.border(Rect::new(642, 2, 636, 356), 6, green);
    gpu.border(&mut dev, Rect::new(642, 2, 636, 356), 6, green)
        .unwrap();
    cpu.fill(Rect::new(1201, 701, 200, 200), green);
    gpu.fill(&mut dev, Rect::new(1201, 701, 200, 200), green)
        .unwrap();
    let mut labels = Labeler::system().expect("a system font (fonts-dejavu-core)");
    let label = labels.label("Élise Martin", 18, 300).clone();
    for (x, y) in [(20i64, 330i64), (-5, 700), (1250, 3)] {
        let white = Yuv::from_rgb(255, 255, 255);
        cpu.blend_mask(x, y, &label.mask, label.width, white);
        gpu.blend_mask(&mut dev, x, y, &label.mask, label.width, white)
            .unwrap();
    }
    let back = gpu.download(&dev).unwrap();
    let differ = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    assert_eq!(differ(&back.y, &cpu.y), 0, "luma samples differ");
    assert_eq!(differ(&back.u, &cpu.u), 0, "U samples differ");
    assert_eq!(differ(&back.v, &cpu.v), 0, "V samples differ");
}

fn open_gpu() -> Option<Arc<Gpu>> {
    match Gpu::open(0) {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            eprintln!("skipped: no GPU to compare with ({e})");
            None
        }
    }
}

/// Without a GPU, asking for NVDEC is a clear error, not a panic; with one, it is a decoder.
#[test]
fn nvdec_is_there_exactly_when_a_gpu_is() {
    let present = Gpu::open(0).is_ok();
    match VideoDecoder::with_cuda(VideoCodec::H264, 0) {
        Ok(_) => assert!(present, "a CUDA decoder without a GPU"),
        Err(e) => {
            assert!(!present, "no CUDA decoder on a GPU: {e}");
            assert!(e.to_string().contains("CUDA"), "{e}");
        }
    }
}

/// The doctor's NVDEC check: a clear error without a GPU, a pass with one.
#[test]
fn the_nvdec_check_says_whether_nvdec_decodes() {
    let present = Gpu::open(0).is_ok();
    match parloir_media::gpu::nvdec_check(0) {
        Ok(()) => assert!(present, "NVDEC without a GPU"),
        Err(e) => {
            assert!(!present, "NVDEC failed on a GPU: {e}");
            assert!(e.contains("CUDA") || e.contains("libcuda"), "{e}");
        }
    }
}

/// NVDEC's pictures, turned into I420 on the device, are libavcodec's to the byte: the three
/// codecs are specified to the bit, so any difference is ours (pitches, chroma order).
#[test]
fn nvdec_pictures_match_software_decoding() {
    let Some(gpu) = open_gpu() else { return };
    for codec in [VideoCodec::H264, VideoCodec::Vp9, VideoCodec::Vp8] {
        let mut camera =
            CameraSource::new(codec, Yuv::from_rgb(200, 60, 40), 640, 360, 30).expect("encoder");
        let mut software = VideoDecoder::new(codec).expect("software decoder");
        let mut hardware =
            CudaDecoder::new(codec, gpu.clone(), Decoding::Nvdec).expect("CUDA decoder");
        let mut compared = 0;
        for i in 0..45 {
            if i == 20 {
                camera.set_colour(Yuv::from_rgb(30, 90, 220));
            }
            let (frame, key) = camera.next_frame().expect("frame");
            let want = software.decode(&frame).expect("software decode");
            let got = hardware.decode(&frame, key).expect("CUDA decode");
            if let (Some(want), Some(got)) = (want, got) {
                let got = gpu.download(got).expect("download");
                assert_eq!((got.width(), got.height()), (want.width(), want.height()));
                for (plane, a, b) in [
                    ("Y", &got.y, &want.y),
                    ("U", &got.u, &want.u),
                    ("V", &got.v, &want.v),
                ] {
                    let differ = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
                    assert_eq!(
                        differ,
                        0,
                        "{} frame {i}: {differ} {plane} samples differ",
                        codec.name()
                    );
                }
                compared += 1;
            }
        }
        assert!(
            compared >= 40,
            "{}: {compared} pictures compared",
            codec.name()
        );
        eprintln!(
            "{}: {} pictures from NVDEC, {} decoded in software",
            codec.name(),
            hardware.hardware,
            hardware.software
        );
        // H.264 and VP9 are NVDEC's on every GPU with one; VP8 on most.
        if codec != VideoCodec::Vp8 {
            assert!(
                hardware.hardware >= 40,
                "{}: NVDEC decoded {}",
                codec.name(),
                hardware.hardware
            );
        }
    }
}

/// The compositor on the GPU draws what it draws on the CPU, names, borders, placeholders and
/// a screen share included.
#[test]
fn the_gpu_compositor_draws_what_the_cpu_one_draws() {
    let Some(gpu) = open_gpu() else { return };
    let pictures = [
        pattern(640, 360, 1),
        pattern(1280, 720, 2),
        pattern(480, 640, 3),
        pattern(1920, 1080, 4),
    ];
    let on_gpu: Vec<_> = pictures.iter().map(|p| gpu.upload(p).unwrap()).collect();
    let names = ["Élise Martin", "Bob", "Chloé Dubois", "Écran de David"];
    for layout in ["grid", "speaker-dark", "single-speaker"] {
        let layout = Layout::parse(layout).unwrap();
        let mut cpu = Compositor::new(1280, 720, layout);
        let canvas = GpuCanvas::new(gpu.clone(), 1280, 720, layout.background()).unwrap();
        let mut dev = Compositor::on(canvas, layout);
        let views = |i: usize| (i == 1, i == 3, names[i]);
        let cpu_tiles: Vec<TileView<'_>> = (0..5)
            .map(|i| {
                let (speaking, screen_share, name) = views(i % 4);
                TileView {
                    picture: (i < 4 && i != 2).then(|| &pictures[i]),
                    name,
                    speaking,
                    screen_share,
                }
            })
            .collect();
        let gpu_tiles: Vec<TileView<'_, _>> = (0..5)
            .map(|i| {
                let (speaking, screen_share, name) = views(i % 4);
                TileView {
                    picture: (i < 4 && i != 2).then(|| &on_gpu[i]),
                    name,
                    speaking,
                    screen_share,
                }
            })
            .collect();
        let want = cpu.compose(&cpu_tiles).unwrap().clone();
        let got = dev.compose(&gpu_tiles).unwrap().download().unwrap();
        let differ = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ(&got.y, &want.y),
            0,
            "{layout:?}: luma samples differ"
        );
        assert_eq!(differ(&got.u, &want.u), 0, "{layout:?}: U samples differ");
        assert_eq!(differ(&got.v, &want.v), 0, "{layout:?}: V samples differ");
    }
}

/// By size: a 360p camera stays in software; a 720p one moves to NVDEC at its second key
/// frame (the first tells its size), and its pictures stay libavcodec's to the byte.
#[test]
fn decoding_by_size_puts_big_pictures_on_nvdec() {
    let Some(gpu) = open_gpu() else { return };
    assert!(u64::from(1280u32 * 720) >= NVDEC_FROM && u64::from(640u32 * 360) < NVDEC_FROM);
    for (w, h, nvdec) in [(640u32, 360u32, false), (1280, 720, true)] {
        let mut camera = CameraSource::new(VideoCodec::H264, Yuv::from_rgb(90, 160, 40), w, h, 30)
            .expect("encoder");
        let mut software = VideoDecoder::new(VideoCodec::H264).expect("software decoder");
        let mut d =
            CudaDecoder::new(VideoCodec::H264, gpu.clone(), Decoding::BySize).expect("decoder");
        for i in 0..75 {
            let (frame, key) = camera.next_frame().expect("frame");
            let want = software.decode(&frame).expect("software decode");
            let got = d.decode(&frame, key).expect("decode");
            if let (Some(want), Some(got)) = (want, got) {
                let got = gpu.download(got).expect("download");
                assert!(
                    got.y == want.y && got.u == want.u && got.v == want.v,
                    "{w}x{h} frame {i}"
                );
            }
        }
        assert_eq!(d.on_nvdec(), nvdec, "{w}x{h}");
        // Key frames every 30: the first 30 pictures are software's either way.
        if nvdec {
            assert!(
                d.software >= 30 && d.hardware >= 40,
                "{} {}",
                d.software,
                d.hardware
            );
        } else {
            assert_eq!(d.hardware, 0);
        }
    }
}
