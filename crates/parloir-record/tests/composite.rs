//! A room composite from frames as the SFU hands them over: real VP8 (libvpx) and Opus
//! (libopus) frames with RTP times, arrival jitter and sender reports; the recording read back
//! with ffprobe and ffmpeg.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parloir_media::source::CameraSource;
use parloir_media::{Container, Layout, Picture, Rect, VideoSpec, Yuv};
use parloir_record::{Composite, CompositeConfig, Request};
use parloir_sfu::RecordFrame;

fn frame(
    participant: &str,
    track: &str,
    video: bool,
    rtp: u64,
    arrival: Instant,
    data: Vec<u8>,
    keyframe: bool,
) -> RecordFrame {
    RecordFrame {
        room: "r".into(),
        participant_sid: participant.into(),
        identity: participant.into(),
        name: format!("Name {participant}"),
        joined_at_ms: 0,
        track_sid: track.into(),
        video,
        screen_share: false,
        codec: if video { "VP8" } else { "opus" },
        layer: None,
        keyframe,
        contiguous: true,
        rtp_time: rtp,
        clock_rate: if video { 90_000 } else { 48_000 },
        arrival,
        sender_report: None,
        data: Arc::from(data),
    }
}

/// A composite's settings: a `layout` canvas of `width`×`height` at `fps`, a key frame every
/// second, with or without audio, half a second behind real time.
fn config(layout: &str, width: u32, height: u32, fps: u32, audio: bool) -> CompositeConfig {
    CompositeConfig {
        layout: Layout::parse(layout).unwrap(),
        video: Some(VideoSpec {
            width,
            height,
            fps,
            bitrate: 500_000,
            key_interval: 1,
            encoders: vec![],
        }),
        audio,
        audio_bitrate: 96_000,
        latency: Duration::from_millis(500),
        gpu: None,
    }
}

fn tone(freq: f32, offset: usize, n: usize) -> Vec<f32> {
    (offset..offset + n)
        .flat_map(|i| {
            let s = 0.3 * (2.0 * std::f32::consts::PI * freq * i as f32 / 48_000.0).sin();
            [s, s]
        })
        .collect()
}

fn frame_at(path: &std::path::Path, seconds: f64, width: u32, height: u32) -> Picture {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-ss", &format!("{seconds}"), "-i"])
        .arg(path)
        .args([
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            "-",
        ])
        .output()
        .expect("ffmpeg");
    let luma = (width * height) as usize;
    assert_eq!(out.stdout.len(), luma * 3 / 2);
    let mut p = Picture::new(width, height, Yuv::BLACK);
    p.y.copy_from_slice(&out.stdout[..luma]);
    p.u.copy_from_slice(&out.stdout[luma..luma * 5 / 4]);
    p.v.copy_from_slice(&out.stdout[luma * 5 / 4..]);
    p
}

/// Mean level of the recording's audio between two times, in dBFS, by ffmpeg's astats.
fn audio_level(path: &std::path::Path, from: f64, to: f64) -> f64 {
    let out = Command::new("ffmpeg")
        .args([
            "-v",
            "info",
            "-ss",
            &format!("{from}"),
            "-to",
            &format!("{to}"),
            "-i",
        ])
        .arg(path)
        .args([
            "-vn",
            "-af",
            "astats=measure_overall=RMS_level:measure_perchannel=none",
        ])
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .filter_map(|l| l.split("RMS level dB: ").nth(1))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .next_back()
        .unwrap_or(-200.0)
}

#[test]
fn a_room_becomes_a_grid_recording_with_its_audio() {
    grid_recording(None);
}

/// The same room composited on the GPU (cameras this small decode in software, by size),
/// encoded on the CPU: the same recording. Skipped with a message without a GPU.
#[test]
fn on_the_gpu_a_room_becomes_the_same_grid_recording() {
    match parloir_media::gpu::Gpu::open(0) {
        Ok(gpu) => grid_recording(Some(Arc::new(gpu))),
        Err(e) => eprintln!("skipped: no GPU ({e})"),
    }
}

fn grid_recording(gpu: Option<Arc<parloir_media::gpu::Gpu>>) {
    let on_gpu = gpu.is_some();
    let dir = std::env::temp_dir().join(format!(
        "parloir-record-{}-{}",
        std::process::id(),
        if on_gpu { "gpu" } else { "cpu" }
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("room.mp4");
    let t0 = Instant::now();
    let mut config = config("grid", 640, 360, 30, true);
    config.gpu = gpu;
    let mut composite =
        Composite::start(&[(path.to_path_buf(), Container::Mp4)], config, t0).unwrap();
    let red = Yuv::from_rgb(220, 40, 40);
    let blue = Yuv::from_rgb(40, 40, 220);
    let mut cams = [
        CameraSource::vp8(red, 320, 180, 30).unwrap(),
        CameraSource::vp8(blue, 320, 180, 30).unwrap(),
    ];
    let mut opus =
        opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
    // 4 s: two cameras at 30 fps from 0.1 s; the first participant's tone from 1 s to 3 s
    // (20 ms frames), the audio arriving with up to 30 ms of jitter.
    let mut requests = Vec::new();
    for ms in (0..4000u64).step_by(10) {
        let now = t0 + Duration::from_millis(ms);
        if ms >= 100 && (ms * 3) % 100 < 3 {
            for (k, cam) in cams.iter_mut().enumerate() {
                let (data, key) = cam.next_frame().unwrap();
                let rtp = 1_000 + (k as u64) * 777 + ms * 90;
                composite.frame(frame(
                    ["PA", "PB"][k],
                    ["TVA", "TVB"][k],
                    true,
                    rtp,
                    now + Duration::from_millis(5),
                    data,
                    key,
                ));
            }
        }
        if ms % 20 == 0 && (1000..3000).contains(&ms) {
            let pcm = tone(440.0, (ms * 48) as usize, 960);
            let packet = opus.encode_vec_float(&pcm, 1500).unwrap();
            let jitter = (ms * 7919) % 30;
            composite.frame(frame(
                "PA",
                "TAA",
                false,
                50_000 + ms * 48,
                now + Duration::from_millis(jitter),
                packet,
                false,
            ));
        }
        composite.advance(now).unwrap();
        requests.extend(composite.take_requests());
    }
    let done = composite.finish(t0 + Duration::from_millis(4000)).unwrap();
    assert!((done.duration - 3.5).abs() < 0.05, "{}", done.duration);
    assert!(done.outputs[0].bytes > 10_000 && done.outputs[0].error.is_none());
    // Two tiles side by side, 356 pixels high: the middle layer of each camera.
    for track in ["TVA", "TVB"] {
        let asked: Vec<&Request> = requests
            .iter()
            .filter(|r| matches!(r, Request::Layer { track_sid, .. } if track_sid == track))
            .collect();
        assert_eq!(
            asked,
            vec![&Request::Layer {
                track_sid: track.into(),
                quality: Some(1),
                keyframe: false,
            }]
        );
    }
    let p = frame_at(&path, 2.0, 640, 360);
    let left = p.mean(Rect::new(100, 160, 40, 40));
    let right = p.mean(Rect::new(500, 160, 40, 40));
    let near = |a: Yuv, b: Yuv| {
        (i32::from(a.y) - i32::from(b.y)).abs() < 12
            && (i32::from(a.u) - i32::from(b.u)).abs() < 12
            && (i32::from(a.v) - i32::from(b.v)).abs() < 12
    };
    assert!(near(left, red), "{left:?}");
    assert!(near(right, blue), "{right:?}");
    // The tone is in the mix where it was spoken (plus the latency's shift: none, since the
    // timeline follows the media's own times) and silence around it.
    let speech = audio_level(&path, 1.2, 2.8);
    let before = audio_level(&path, 0.2, 0.8);
    assert!(speech > -16.0, "{speech}");
    assert!(before < -60.0, "{before}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unwritable_path_fails_at_start() {
    let config = CompositeConfig {
        layout: Layout::default(),
        video: None,
        audio: true,
        audio_bitrate: 64_000,
        latency: Duration::from_millis(500),
        gpu: None,
    };
    let err = Composite::start(
        &[(
            std::path::Path::new("/proc/no/such/dir/x.ogg").to_path_buf(),
            Container::Ogg,
        )],
        config,
        Instant::now(),
    );
    assert!(err.is_err());
}

/// A participant's camera flashes white and its microphone beeps at the same capture instants;
/// the video reaches the server 60 ms later than the audio, as over a path that queues video.
/// With sender reports the recording puts flash and beep together (within a frame); this is
/// what keeps a long recording in sync, where arrival times alone would be off by the paths'
/// difference.
#[test]
fn a_flash_and_a_beep_captured_together_are_recorded_together() {
    let dir = std::env::temp_dir().join(format!("parloir-record-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sync.mp4");
    let t0 = Instant::now();
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let config = config("single-speaker", 160, 90, 30, true);
    let mut composite =
        Composite::start(&[(path.to_path_buf(), Container::Mp4)], config, t0).unwrap();
    let dark = Yuv::from_rgb(40, 40, 40);
    let white = Yuv::from_rgb(250, 250, 250);
    let mut camera = CameraSource::vp8(dark, 320, 180, 30).unwrap();
    let mut opus =
        opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
    // Flash and beep from 1.5 s to 1.7 s of capture time.
    let (on, off) = (1_500u64, 1_700u64);
    let (video_base, audio_base) = (3_000_000u64, 7_000u64);
    for ms in (0..3_500u64).step_by(10) {
        let now = t0 + Duration::from_millis(ms);
        // Video captured at `ms` arrives 80 ms later; audio 20 ms later.
        if ms >= 80 && (ms - 80) % 30 == 0 {
            let captured = ms - 80;
            camera.set_colour(if (on..off).contains(&captured) {
                white
            } else {
                dark
            });
            let (data, key) = camera.next_frame().unwrap();
            let rtp = video_base + captured * 90;
            let mut f = frame("PA", "TV", true, rtp, now, data, key);
            f.sender_report = Some((epoch + Duration::from_millis(captured), rtp));
            composite.frame(f);
        }
        if ms >= 20 && (ms - 20) % 20 == 0 {
            let captured = ms - 20;
            let pcm: Vec<f32> = if (on..off).contains(&captured) {
                tone(1000.0, (captured * 48) as usize, 960)
            } else {
                vec![0.0; 1920]
            };
            let packet = opus.encode_vec_float(&pcm, 1500).unwrap();
            let rtp = audio_base + captured * 48;
            let mut f = frame("PA", "TA", false, rtp, now, packet, false);
            f.sender_report = Some((epoch + Duration::from_millis(captured), rtp));
            composite.frame(f);
        }
        composite.advance(now).unwrap();
    }
    composite.finish(t0 + Duration::from_millis(3_500)).unwrap();

    // The first bright frame.
    let raw = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .output()
        .unwrap()
        .stdout;
    let frame_bytes = 160 * 90;
    let flash = raw
        .chunks_exact(frame_bytes)
        .position(|f| f.iter().map(|&v| u64::from(v)).sum::<u64>() / frame_bytes as u64 > 150)
        .expect("a bright frame");
    let flash_at = flash as f64 / 30.0;
    // The beep's onset.
    let pcm = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-vn", "-ac", "1", "-ar", "48000", "-f", "s16le", "-"])
        .output()
        .unwrap()
        .stdout;
    let samples: Vec<i16> = pcm
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let beep = samples
        .iter()
        .position(|&s| s.unsigned_abs() > 3_000)
        .expect("the beep");
    let beep_at = beep as f64 / 48_000.0;
    let apart = (flash_at - beep_at).abs();
    println!(
        "flash at {flash_at:.3} s, beep at {beep_at:.3} s: {:.1} ms apart",
        apart * 1e3
    );
    // Within one frame (33 ms), where arrival times alone would put them 60 ms apart.
    assert!(
        apart < 0.034,
        "flash at {flash_at:.3} s, beep at {beep_at:.3} s"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// In the speaker layout a screen share takes the main area (shown whole), and the cameras go
/// to the strip, with their names.
#[test]
fn a_screen_share_takes_the_main_area() {
    let dir = std::env::temp_dir().join(format!("parloir-record-share-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("share.mp4");
    let t0 = Instant::now();
    let config = config("speaker", 640, 360, 15, false);
    let mut composite =
        Composite::start(&[(path.to_path_buf(), Container::Mp4)], config, t0).unwrap();
    let orange = Yuv::from_rgb(240, 140, 20);
    let teal = Yuv::from_rgb(20, 160, 160);
    // A 4:3 share (shown whole, with bars) and a camera.
    let mut share = CameraSource::vp8(orange, 320, 240, 15).unwrap();
    let mut camera = CameraSource::vp8(teal, 320, 180, 15).unwrap();
    for ms in (0..2_000u64).step_by(10) {
        let now = t0 + Duration::from_millis(ms);
        if ms % 70 == 0 {
            let (data, key) = share.next_frame().unwrap();
            let mut f = frame("PA", "TS", true, ms * 90, now, data, key);
            f.screen_share = true;
            composite.frame(f);
            let (data, key) = camera.next_frame().unwrap();
            composite.frame(frame("PB", "TC", true, ms * 90, now, data, key));
        }
        composite.advance(now).unwrap();
    }
    composite.finish(t0 + Duration::from_millis(2_000)).unwrap();
    let p = frame_at(&path, 1.2, 640, 360);
    let near = |a: Yuv, b: Yuv| {
        (i32::from(a.y) - i32::from(b.y)).abs() < 12
            && (i32::from(a.u) - i32::from(b.u)).abs() < 12
            && (i32::from(a.v) - i32::from(b.v)).abs() < 12
    };
    // The main area (512 wide): the share, 4:3 inside 512x360 (480 wide), so 16-pixel bars
    // at its sides.
    let centre = p.mean(Rect::new(236, 160, 40, 40));
    assert!(near(centre, orange), "main area {centre:?}");
    let bar = p.mean(Rect::new(2, 160, 10, 40));
    assert!(bar.y < 30, "no bar beside the 4:3 share: {bar:?}");
    // The strip on the right (tiles 66 high, centred): the sharer, who has no camera, as a
    // placeholder (as LiveKit's templates show people without video), then the camera.
    let placeholder = p.mean(Rect::new(530, 118, 10, 10));
    assert!(
        placeholder.y < 60 && placeholder.u == 128,
        "sharer's tile {placeholder:?}"
    );
    let camera_tile = p.mean(Rect::new(540, 200, 40, 20));
    assert!(near(camera_tile, teal), "camera tile {camera_tile:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Someone in the room who sends nothing has a tile with their name, as LiveKit's templates
/// show people without video; it goes when they leave.
#[test]
fn a_participant_without_media_has_a_placeholder_tile() {
    let dir = std::env::temp_dir().join(format!("parloir-record-roster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("roster.mp4");
    let t0 = Instant::now();
    let config = config("grid", 640, 360, 15, false);
    let mut composite = Composite::start(&[(path.clone(), Container::Mp4)], config, t0).unwrap();
    let teal = Yuv::from_rgb(20, 160, 160);
    let mut camera = CameraSource::vp8(teal, 320, 180, 15).unwrap();
    // The listener joined first: the left tile; the camera the right one.
    composite.participant_joined("PX", "Zoé Listener", -1);
    for ms in (0..3_000u64).step_by(10) {
        let now = t0 + Duration::from_millis(ms);
        if ms == 2_000 {
            composite.participant_left("PX");
        }
        if ms % 70 == 0 {
            let (data, key) = camera.next_frame().unwrap();
            composite.frame(frame("PA", "TC", true, ms * 90, now, data, key));
        }
        composite.advance(now).unwrap();
    }
    composite.finish(t0 + Duration::from_millis(3_000)).unwrap();
    let before = frame_at(&path, 1.0, 640, 360);
    let placeholder = before.mean(Rect::new(40, 40, 20, 20));
    assert!(
        placeholder.y < 60 && placeholder.u == 128,
        "left tile {placeholder:?}"
    );
    // Its name, in white, in the middle of the placeholder.
    let bright = (150..210)
        .flat_map(|y| (60..260).map(move |x| (x, y)))
        .filter(|&(x, y)| before.at(x, y).y > 200)
        .count();
    assert!(
        bright > 30,
        "no name on the placeholder ({bright} bright pixels)"
    );
    let right = before.mean(Rect::new(460, 160, 40, 40));
    let near = (i32::from(right.u) - i32::from(teal.u)).abs() < 12;
    assert!(near, "right tile {right:?}");
    // After the listener left, the camera has the canvas to itself.
    let after = frame_at(&path, 2.4, 640, 360);
    let centre = after.mean(Rect::new(300, 160, 40, 40));
    assert!(
        (i32::from(centre.u) - i32::from(teal.u)).abs() < 12,
        "{centre:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
