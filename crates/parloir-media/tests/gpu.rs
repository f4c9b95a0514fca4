//! The CUDA kernels against their CPU references. Compiling them (NVRTC, from the wheel the
//! setup installs) needs no GPU and is always checked; running them is checked when a CUDA
//! device is present, and skipped with a message when not.

use parloir_media::gpu::{Gpu, compile};
use parloir_media::text::Labeler;
use parloir_media::{Picture, Rect, Yuv};

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
