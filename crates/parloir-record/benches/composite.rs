//! The record plane's costs, on the CPU path and (where there is one) on the GPU.
//!
//! 1. The compositor alone (criterion): one frame of 4, 25 and 150 tiles on a 720p and a 1080p
//!    canvas, each tile fed the picture size its layer choice gives (320x180 for small tiles,
//!    640x360 for middle ones, 1280x720 for large ones).
//! 2. One room composite end to end: N participants each sending VP8 (the layer their tile
//!    needs) and Opus, through the whole pipeline (decode, composite, mix, H.264 + AAC encode,
//!    fragmented MP4), as fast as it goes; CPU seconds over media seconds is the number of
//!    cores the recording needs in real time.
//!
//! 3. With a GPU: the GPU compositor alone; the same composites decoded (NVDEC) and composited
//!    on the GPU, encoded on the CPU; and how many 25-camera 1080p30 composites one GPU decodes
//!    and composites in real time.
//!
//! `cargo bench -p parloir-record --bench composite`; with `PARLOIR_BENCH_OUT=FILE` the figures
//! are also written as JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use parloir_media::gpu::{CudaDecoder, Decoding, Gpu, GpuCanvas, GpuPicture};
use parloir_media::source::CameraSource;
use parloir_media::{
    Compositor, Container, Layout, Picture, Tile, TileView, VideoCodec, VideoSpec, Yuv,
};
use parloir_record::{Composite, CompositeConfig};
use parloir_sfu::RecordFrame;

/// CPU seconds of this process so far (all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn source_size(tile_height: u32) -> (u32, u32) {
    match tile_height {
        h if h <= 216 => (320, 180),
        h if h <= 432 => (640, 360),
        _ => (1280, 720),
    }
}

fn colour(i: usize) -> Yuv {
    Yuv::from_rgb(
        (i * 53 % 200) as u8 + 30,
        (i * 97 % 200) as u8 + 30,
        (i * 151 % 200) as u8 + 30,
    )
}

fn compositor(c: &mut Criterion, out: &mut Vec<String>) {
    let mut group = c.benchmark_group("compositor");
    group.throughput(Throughput::Elements(1));
    for (width, height, label) in [(1280u32, 720u32, "720p"), (1920, 1080, "1080p")] {
        for tiles in [4usize, 25, 150] {
            let mut comp = Compositor::new(width, height, Layout::parse("grid").expect("grid"));
            let rects = comp.placement(&vec![Tile::default(); tiles]);
            let pictures: Vec<Picture> = rects
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let (w, h) = source_size(r.map_or(180, |r| r.height));
                    Picture::new(w, h, colour(i))
                })
                .collect();
            let names: Vec<String> = (0..tiles).map(|i| format!("Participant {i}")).collect();
            let views: Vec<TileView<'_>> = pictures
                .iter()
                .zip(&names)
                .enumerate()
                .map(|(i, (p, n))| TileView {
                    picture: Some(p),
                    name: n,
                    speaking: i == 0,
                    screen_share: false,
                })
                .collect();
            let id = format!("{label}/{tiles}-tiles");
            group.bench_function(&id, |b| {
                b.iter(|| comp.compose(&views).expect("compose").width())
            });
            // One more timed run of our own for the JSON: frames per second on one core.
            let start = Instant::now();
            let mut n = 0u32;
            while start.elapsed() < Duration::from_secs(1) {
                comp.compose(&views).expect("compose");
                n += 1;
            }
            let fps = f64::from(n) / start.elapsed().as_secs_f64();
            out.push(format!(
                "{{\"what\":\"compositor\",\"canvas\":\"{label}\",\"tiles\":{tiles},\"frames_per_s\":{fps:.1}}}"
            ));
            println!("compositor {label} {tiles} tiles: {fps:.1} frames/s on one core");
        }
    }
    group.finish();
}

/// The same frames on the GPU kernels (when a CUDA device is present): sources uploaded once
/// (as NVDEC would leave them on the device), then per frame the background, every tile's
/// scaling and the speaker's border, synchronised.
fn gpu_compositor(out: &mut Vec<String>) {
    let gpu = match parloir_media::gpu::Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            println!("GPU compositor: skipped ({e})");
            return;
        }
    };
    for (width, height, label) in [(1280u32, 720u32, "720p"), (1920, 1080, "1080p")] {
        for tiles in [4usize, 25, 150] {
            let comp = Compositor::new(width, height, Layout::parse("grid").expect("grid"));
            let rects: Vec<parloir_media::Rect> = comp
                .placement(&vec![Tile::default(); tiles])
                .into_iter()
                .flatten()
                .collect();
            let sources: Vec<_> = rects
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let (w, h) = source_size(r.height);
                    gpu.upload(&Picture::new(w, h, colour(i))).expect("upload")
                })
                .collect();
            let mut canvas = gpu
                .upload(&Picture::new(width, height, Yuv::BLACK))
                .expect("canvas");
            let frame = |canvas: &mut parloir_media::gpu::GpuPicture| {
                let full = parloir_media::Rect::new(0, 0, width, height);
                gpu.fill(canvas, full, Yuv::BLACK).expect("fill");
                for (r, src) in rects.iter().zip(&sources) {
                    let crop = r.cover_crop(src.width(), src.height());
                    gpu.blit(canvas, *r, src, crop).expect("blit");
                }
                gpu.border(canvas, rects[0], 4, Yuv::from_rgb(20, 200, 60))
                    .expect("border");
            };
            frame(&mut canvas);
            gpu.download(&canvas).expect("sync");
            let start = Instant::now();
            let mut n = 0u32;
            while start.elapsed() < Duration::from_secs(1) {
                for _ in 0..10 {
                    frame(&mut canvas);
                }
                gpu.download(&canvas).expect("sync");
                n += 10;
            }
            let fps = f64::from(n) / start.elapsed().as_secs_f64();
            println!("GPU compositor {label} {tiles} tiles: {fps:.1} frames/s");
            out.push(format!(
                "{{\"what\":\"gpu compositor\",\"canvas\":\"{label}\",\"tiles\":{tiles},\"frames_per_s\":{fps:.1}}}"
            ));
        }
    }
}

/// How many 1080p30 room composites of 25 cameras one GPU decodes and composites in real time:
/// `rooms` threads, each with 25 NVDEC decoders fed H.264 at 30 fps (the layer each tile takes)
/// and a canvas on the GPU copied back each frame for the encoder, run flat out; the frames
/// they make together over 30 is the number of real-time composites. Encoding is left out: on
/// a GPU without NVENC it runs on CPU cores (the end-to-end figures price it).
fn gpu_capacity(gpu: &Arc<Gpu>, hardware: bool, out: &mut Vec<String>) {
    let (width, height, participants) = (1920u32, 1080u32, 25usize);
    let layout = Layout::parse("grid").expect("grid");
    let rects: Vec<parloir_media::Rect> = Compositor::new(width, height, layout)
        .placement(&vec![Tile::default(); participants])
        .into_iter()
        .flatten()
        .collect();
    // Two seconds of each camera, encoded once.
    let streams: Arc<Vec<Vec<Arc<[u8]>>>> = Arc::new(
        rects
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (w, h) = source_size(r.height);
                let mut cam =
                    CameraSource::new(VideoCodec::H264, colour(i), w, h, 30).expect("libx264");
                (0..60)
                    .map(|_| Arc::from(cam.next_frame().expect("a frame").0))
                    .collect()
            })
            .collect(),
    );
    let mut best = 0.0f64;
    for rooms in [1usize, 2, 4, 8, 16, 24, 32] {
        let stop = Instant::now() + Duration::from_secs(3);
        let threads: Vec<_> = (0..rooms)
            .map(|_| {
                let (gpu, streams) = (gpu.clone(), streams.clone());
                std::thread::spawn(move || {
                    let mut decoders: Vec<CudaDecoder> = (0..streams.len())
                        .map(|_| {
                            let decoding = if hardware {
                                Decoding::Nvdec
                            } else {
                                Decoding::Software
                            };
                            CudaDecoder::new(VideoCodec::H264, gpu.clone(), decoding)
                                .expect("a decoder")
                        })
                        .collect();
                    let canvas =
                        GpuCanvas::new(gpu.clone(), width, height, Yuv::BLACK).expect("canvas");
                    let mut comp = Compositor::on(canvas, layout);
                    let mut picture = Picture::new(width, height, Yuv::BLACK);
                    let names: Vec<String> = (0..streams.len())
                        .map(|i| format!("Participant {i}"))
                        .collect();
                    let mut frames = 0u64;
                    let mut i = 0usize;
                    while Instant::now() < stop {
                        for (d, s) in decoders.iter_mut().zip(streams.iter()) {
                            d.decode(&s[i % s.len()], false).expect("decode");
                        }
                        i += 1;
                        let views: Vec<TileView<'_, GpuPicture>> = decoders
                            .iter()
                            .zip(&names)
                            .map(|(d, n)| TileView {
                                picture: d.picture(),
                                name: n,
                                speaking: false,
                                screen_share: false,
                            })
                            .collect();
                        comp.compose(&views)
                            .expect("compose")
                            .download_into(&mut picture)
                            .expect("download");
                        frames += 1;
                    }
                    let hardware: u64 = decoders.iter().map(|d| d.hardware).sum();
                    let software: u64 = decoders.iter().map(|d| d.software).sum();
                    (frames, hardware, software)
                })
            })
            .collect();
        let started = Instant::now();
        let mut frames = 0u64;
        let (mut hw, mut sw) = (0u64, 0u64);
        for t in threads {
            let (f, h, s) = t.join().expect("a room thread");
            frames += f;
            hw += h;
            sw += s;
        }
        let fps = frames as f64 / started.elapsed().as_secs_f64();
        let realtime = fps / 30.0;
        let how = if hardware { "nvdec" } else { "software" };
        println!(
            "GPU composite ({how} decoding), {rooms} rooms of 25 cameras at 1080p: {fps:.0} frames/s = {realtime:.1} real-time composites ({hw} pictures from NVDEC, {sw} in software)"
        );
        out.push(format!(
            "{{\"what\":\"gpu decode+composite\",\"decoding\":\"{how}\",\"canvas\":\"1920x1080@30\",\"participants\":25,\"rooms\":{rooms},\"frames_per_s\":{fps:.1},\"realtime_composites\":{realtime:.2},\"nvdec_pictures\":{hw},\"software_pictures\":{sw}}}"
        ));
        if realtime < best * 1.05 {
            break;
        }
        best = best.max(realtime);
    }
}

/// NVDEC against libavcodec, one decoder per thread, by picture size: pictures per second for
/// one thread and for 8 side by side (H.264 of the synthetic camera, decoded to I420 on the
/// device either way; software pictures are uploaded).
fn gpu_decoding(gpu: &Arc<Gpu>, out: &mut Vec<String>) {
    for (w, h) in [(320u32, 180u32), (640, 360), (1280, 720), (1920, 1080)] {
        let mut cam = CameraSource::new(VideoCodec::H264, colour(3), w, h, 30).expect("libx264");
        let frames: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..60)
                .map(|_| cam.next_frame().expect("a frame").0)
                .collect(),
        );
        for hardware in [false, true] {
            for threads in [1usize, 8] {
                let stop = Instant::now() + Duration::from_millis(1500);
                let started = Instant::now();
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        let (gpu, frames) = (gpu.clone(), frames.clone());
                        std::thread::spawn(move || {
                            let decoding = if hardware {
                                Decoding::Nvdec
                            } else {
                                Decoding::Software
                            };
                            let mut d = CudaDecoder::new(VideoCodec::H264, gpu.clone(), decoding)
                                .expect("decoder");
                            let mut n = 0u64;
                            while Instant::now() < stop {
                                for f in frames.iter() {
                                    d.decode(f, false).expect("decode");
                                    n += 1;
                                }
                            }
                            n
                        })
                    })
                    .collect();
                let n: u64 = handles.into_iter().map(|t| t.join().expect("thread")).sum();
                let pps = n as f64 / started.elapsed().as_secs_f64();
                let how = if hardware { "nvdec" } else { "software" };
                println!("decode {w}x{h} {how}, {threads} threads: {pps:.0} pictures/s");
                out.push(format!(
                    "{{\"what\":\"gpu decoding\",\"size\":\"{w}x{h}\",\"decoder\":\"{how}\",\"threads\":{threads},\"pictures_per_s\":{pps:.1}}}"
                ));
            }
        }
    }
}

/// Where the benchmarked cameras' frames come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cameras {
    /// A solid colour with a moving block, at the composite's frame rate: cheap to decode and
    /// to encode, a lower bound.
    Synthetic,
    /// perf/media's VP8 clips of a busy moving test pattern, the simulcast layer that fits each
    /// tile (320x180 at 15 fps, 640x360 at 20, 1280x720 at 30), as the load generator sends.
    Clips,
}

/// A camera's frames (looped) with their key-frame flags, and its frame rate.
type Camera = (Vec<(Arc<[u8]>, bool)>, u32);

fn cameras(kind: Cameras, rects: &[Option<parloir_media::Rect>], fps: u32) -> Vec<Camera> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../perf/media");
    rects
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (w, h) = source_size(r.map_or(180, |r| r.height));
            match kind {
                Cameras::Synthetic => {
                    let mut s = CameraSource::vp8(colour(i), w, h, fps).expect("libvpx");
                    let frames = (0..2 * fps)
                        .map(|_| {
                            let (d, k) = s.next_frame().expect("a frame");
                            (Arc::from(d), k)
                        })
                        .collect();
                    (frames, fps)
                }
                Cameras::Clips => {
                    let (name, rate) = match w {
                        320 => ("q.ivf", 15),
                        640 => ("h.ivf", 20),
                        _ => ("f.ivf", 30),
                    };
                    let clip = parloir_loadgen::media::Clip::load(&root.join(name))
                        .expect("perf/media clips");
                    // The clip from its key frame, then looping back to it.
                    let frames = clip
                        .frames
                        .iter()
                        .enumerate()
                        .map(|(j, f)| (Arc::from(f.as_slice()), j == 0))
                        .collect();
                    (frames, rate)
                }
            }
        })
        .collect()
}

/// One composite of `participants` cameras and microphones for `seconds` of media: the CPU
/// cores it needs in real time, and how many times faster than real time it ran here.
fn end_to_end(
    kind: Cameras,
    participants: usize,
    width: u32,
    height: u32,
    fps: u32,
    seconds: u32,
    gpu: Option<Arc<Gpu>>,
) -> (f64, f64) {
    let layout = Layout::parse("grid").expect("grid");
    let comp = Compositor::new(width, height, layout);
    let rects = comp.placement(&vec![Tile::default(); participants]);
    let clips = cameras(kind, &rects, fps);
    let mut opus =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("libopus");
    let voice: Vec<Arc<[u8]>> = (0..100)
        .map(|k| {
            let pcm: Vec<f32> = (0..960)
                .map(|i| 0.1 * (((k * 960 + i) as f32) * 0.05).sin())
                .collect();
            Arc::from(opus.encode_vec_float(&pcm, 400).expect("opus"))
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("parloir-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = CompositeConfig {
        layout,
        video: Some(VideoSpec {
            width,
            height,
            fps,
            bitrate: 3_000_000,
            key_interval: 2,
            encoders: Vec::new(),
        }),
        audio: true,
        audio_bitrate: 128_000,
        latency: Duration::from_millis(500),
        gpu,
    };
    let t0 = Instant::now();
    let mut composite = Composite::start(&[(dir.join("bench.mp4"), Container::Mp4)], config, t0)
        .expect("the output opens");
    let frame =
        |p: usize, video: bool, rtp: u64, at: Instant, data: Arc<[u8]>, key: bool| RecordFrame {
            room: "bench".into(),
            participant_sid: format!("PA_{p}"),
            identity: format!("p{p}"),
            name: format!("Participant {p}"),
            joined_at_ms: p as i64,
            track_sid: format!("T{}_{p}", if video { "V" } else { "A" }),
            video,
            screen_share: false,
            codec: if video { "VP8" } else { "opus" },
            layer: None,
            keyframe: key,
            contiguous: true,
            rtp_time: rtp,
            clock_rate: if video { 90_000 } else { 48_000 },
            arrival: at,
            sender_report: None,
            data,
        };
    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
    for ms in (0..u64::from(seconds) * 1000).step_by(10) {
        let at = t0 + Duration::from_millis(ms);
        for (p, (clip, rate)) in clips.iter().enumerate() {
            let frame_ms = 1000 / u64::from(*rate);
            if ms % frame_ms < 10 {
                let i = (ms / frame_ms) as usize;
                let (data, key) = &clip[i % clip.len()];
                composite.frame(frame(p, true, ms * 90, at, data.clone(), *key));
            }
        }
        if ms % 20 == 0 {
            let k = (ms / 20) as usize;
            for p in 0..participants {
                let data = voice[k % voice.len()].clone();
                composite.frame(frame(p, false, ms * 48, at, data, false));
            }
        }
        composite.advance(at).expect("the composite writes");
    }
    let done = composite
        .finish(t0 + Duration::from_millis(u64::from(seconds) * 1000))
        .expect("the file closes");
    let cpu = cpu_seconds() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    (cpu / done.duration, done.duration / wall)
}

fn main() {
    let mut out = Vec::new();
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    compositor(&mut c, &mut out);
    c.final_summary();
    gpu_compositor(&mut out);
    let gpu = match Gpu::open(0) {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            println!("GPU composites: skipped ({e})");
            None
        }
    };
    // PARLOIR_BENCH_GPU_ONLY: the GPU's own figures alone (a short lease on a GPU machine).
    let kinds = if std::env::var_os("PARLOIR_BENCH_GPU_ONLY").is_some() {
        &[][..]
    } else {
        &[Cameras::Synthetic, Cameras::Clips][..]
    };
    for &kind in kinds {
        let name = match kind {
            Cameras::Synthetic => "synthetic",
            Cameras::Clips => "clips",
        };
        for (participants, width, height) in
            [(4usize, 1280u32, 720u32), (25, 1280, 720), (25, 1920, 1080)]
        {
            // On the CPU, and (with a GPU) decoded and composited on the GPU.
            let paths = [None].into_iter().chain(gpu.clone().map(Some));
            for on in paths {
                let path = if on.is_some() { "gpu" } else { "cpu" };
                let (cores, speed) = end_to_end(kind, participants, width, height, 30, 10, on);
                println!(
                    "room composite ({path}), {name} cameras, {participants} participants {width}x{height}@30: {cores:.2} cores in real time ({speed:.2}x real time here)"
                );
                out.push(format!(
                    "{{\"what\":\"room composite\",\"path\":\"{path}\",\"cameras\":\"{name}\",\"participants\":{participants},\"canvas\":\"{width}x{height}@30\",\"cpu_cores\":{cores:.3},\"speed\":{speed:.3}}}"
                ));
            }
        }
    }
    if let Some(gpu) = &gpu {
        gpu_decoding(gpu, &mut out);
        gpu_capacity(gpu, true, &mut out);
        gpu_capacity(gpu, false, &mut out);
    }
    if let Ok(path) = std::env::var("PARLOIR_BENCH_OUT") {
        let json = format!("[\n{}\n]\n", out.join(",\n"));
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("cannot write {path}: {e}");
        }
    }
}
