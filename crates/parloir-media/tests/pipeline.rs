//! The media pieces end to end with real codecs: VP8 frames (from libvpx) decoded, composited,
//! encoded to H.264 and AAC in fragmented MP4, then read back with the ffmpeg and ffprobe
//! tools and checked: streams, duration, frame rate, and each source's colour in its tile.

use std::path::Path;
use std::process::Command;

use parloir_media::{
    Compositor, Container, Layout, Mixer, OutputSpec, Picture, TileView, VideoCodec, VideoDecoder,
    VideoSpec, Writer, Yuv,
};

/// VP8 frames of a plain colour (with a small moving block), from libvpx through FFmpeg.
fn vp8_frames(colour: Yuv, width: u32, height: u32, count: usize) -> Vec<Vec<u8>> {
    let mut source = parloir_media::source::CameraSource::vp8(colour, width, height, 30).unwrap();
    (0..count).map(|_| source.next_frame().unwrap().0).collect()
}

fn tone(offset: usize, n: usize) -> Vec<f32> {
    (offset..offset + n)
        .flat_map(|i| {
            let s = 0.3 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 48_000.0).sin();
            [s, s]
        })
        .collect()
}

fn probe(path: &Path) -> serde_like::Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .arg("stream=codec_name,width,height,r_frame_rate,nb_read_frames:format=duration")
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .expect("ffprobe (the setup installs ffmpeg)");
    serde_like::Probe::parse(&String::from_utf8_lossy(&out.stdout))
}

/// The ffprobe fields the tests read (key=value lines).
mod serde_like {
    #[derive(Debug, Default)]
    pub struct Probe {
        pub codecs: Vec<String>,
        pub width: u32,
        pub height: u32,
        pub fps: String,
        pub duration: f64,
        /// Frames of the first stream (the video when there is video).
        pub frames: u64,
    }

    impl Probe {
        pub fn parse(text: &str) -> Probe {
            let mut p = Probe::default();
            for line in text.lines() {
                let Some((k, v)) = line.split_once('=') else {
                    continue;
                };
                match k {
                    "codec_name" => p.codecs.push(v.to_string()),
                    "width" => p.width = v.parse().unwrap_or(0),
                    "height" => p.height = v.parse().unwrap_or(0),
                    "r_frame_rate" if v != "0/0" => p.fps = v.to_string(),
                    "nb_read_frames" if p.frames == 0 => p.frames = v.parse().unwrap_or(0),
                    "duration" => p.duration = v.parse().unwrap_or(0.0),
                    _ => {}
                }
            }
            p
        }
    }
}

/// One frame of a video file at `seconds`, decoded by the ffmpeg tool.
fn frame_at(path: &Path, seconds: f64, width: u32, height: u32) -> Picture {
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
    let (w, h) = (width as usize, height as usize);
    let luma = w * h;
    let chroma = luma / 4;
    assert_eq!(
        out.stdout.len(),
        luma + 2 * chroma,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut p = Picture::new(width, height, Yuv::BLACK);
    p.y.copy_from_slice(&out.stdout[..luma]);
    p.u.copy_from_slice(&out.stdout[luma..luma + chroma]);
    p.v.copy_from_slice(&out.stdout[luma + chroma..]);
    p
}

fn close(a: Yuv, b: Yuv, tolerance: i32) -> bool {
    (i32::from(a.y) - i32::from(b.y)).abs() <= tolerance
        && (i32::from(a.u) - i32::from(b.u)).abs() <= tolerance
        && (i32::from(a.v) - i32::from(b.v)).abs() <= tolerance
}

fn spec(width: u32, height: u32) -> OutputSpec {
    OutputSpec {
        video: Some(VideoSpec {
            width,
            height,
            fps: 30,
            bitrate: 1_000_000,
            key_interval: 1,
            encoders: vec![],
        }),
        audio: true,
        audio_bitrate: 96_000,
    }
}

#[test]
#[allow(clippy::needless_range_loop)] // frame i of every stream
fn vp8_sources_become_a_grid_recording() {
    let colours = [
        Yuv::from_rgb(220, 40, 40),
        Yuv::from_rgb(40, 200, 40),
        Yuv::from_rgb(40, 40, 220),
        Yuv::from_rgb(220, 220, 40),
    ];
    let streams: Vec<Vec<Vec<u8>>> = colours
        .iter()
        .map(|&c| vp8_frames(c, 320, 180, 60))
        .collect();
    let mut decoders: Vec<VideoDecoder> = (0..4)
        .map(|_| VideoDecoder::new(VideoCodec::Vp8).unwrap())
        .collect();
    let dir = std::env::temp_dir().join(format!("parloir-media-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("grid.mp4");
    let mut writer = Writer::create(&path, Container::Mp4, &spec(640, 360)).unwrap();
    assert_eq!(writer.video_encoder(), Some("libx264"));
    let mut compositor = Compositor::new(640, 360, Layout::parse("grid").unwrap());
    let mut mixer = Mixer::new();
    let mut opus =
        opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).unwrap();
    let mut latest: Vec<Option<Picture>> = vec![None; 4];
    for i in 0..60 {
        for (k, d) in decoders.iter_mut().enumerate() {
            if let Some(p) = d.decode(&streams[k][i]).unwrap() {
                latest[k] = Some(p);
            }
        }
        // Decoded colours are the sources' (VP8 is lossy: a few steps off at most).
        if i == 10 {
            for (p, &c) in latest.iter().zip(&colours) {
                let got = p.as_ref().unwrap().at(160, 90);
                assert!(close(got, c, 4), "{got:?} vs {c:?}");
            }
        }
        let names = ["Anne", "Bruno", "Chloé", "David"];
        let tiles: Vec<TileView<'_>> = latest
            .iter()
            .zip(names)
            .map(|(p, name)| TileView {
                picture: p.as_ref(),
                name,
                speaking: false,
                screen_share: false,
            })
            .collect();
        let canvas = compositor.compose(&tiles).unwrap().clone();
        writer.video(&canvas, i as i64).unwrap();
        // 20 ms Opus frames for this 1/30 s.
        let until = (i as i64 + 1) * 1600;
        while (mixer.position() + 960) <= until + 960 && mixer.position() < until {
            let at = mixer.position();
            let packet = opus
                .encode_vec_float(&tone(at as usize, 960), 1500)
                .unwrap();
            mixer.push("tone", at, &packet).unwrap();
            let mut pcm = Vec::new();
            mixer.pull(at + 960, &mut pcm);
            writer.audio(&pcm).unwrap();
        }
    }
    writer.finish().unwrap();

    let p = probe(&path);
    assert!(p.codecs.contains(&"h264".to_string()), "{p:?}");
    assert!(p.codecs.contains(&"aac".to_string()), "{p:?}");
    assert_eq!((p.width, p.height), (640, 360));
    assert_eq!(p.fps, "30/1");
    assert_eq!(p.frames, 60);
    assert!((p.duration - 2.0).abs() < 0.1, "{p:?}");
    let frame = frame_at(&path, 1.5, 640, 360);
    for ((x, y), c) in [(160, 90), (480, 90), (160, 270), (480, 270)]
        .into_iter()
        .zip(colours)
    {
        let got = frame.mean(parloir_media::Rect::new(x - 20, y - 20, 40, 40));
        assert!(close(got, c, 8), "({x},{y}): {got:?} vs {c:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recording_cut_short_still_plays() {
    let dir = std::env::temp_dir().join(format!("parloir-media-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cut.mp4");
    let mut writer = Writer::create(&path, Container::Mp4, &spec(320, 180)).unwrap();
    let green = Picture::new(320, 180, Yuv::from_rgb(40, 200, 40));
    for i in 0..100 {
        writer.video(&green, i).unwrap();
        writer.audio(&tone(i as usize * 1600, 1600)).unwrap();
    }
    // As a crash would: no trailer, no flush of the encoders.
    drop(writer);
    let p = probe(&path);
    assert!(p.codecs.contains(&"h264".to_string()), "{p:?}");
    // Whole fragments (one per second of key frames) are there: at least 2 of the 3.3 s.
    assert!(p.duration >= 2.0, "{p:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn audio_only_goes_to_ogg_opus() {
    let dir = std::env::temp_dir().join(format!("parloir-media-ogg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audio.ogg");
    let spec = OutputSpec {
        video: None,
        audio: true,
        audio_bitrate: 64_000,
    };
    let mut writer = Writer::create(&path, Container::Ogg, &spec).unwrap();
    writer.audio(&tone(0, 48_000 * 2)).unwrap();
    writer.finish().unwrap();
    let p = probe(&path);
    assert_eq!(p.codecs, vec!["opus".to_string()]);
    assert!((p.duration - 2.0).abs() < 0.1, "{p:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut d = VideoDecoder::new(VideoCodec::Vp8).unwrap();
    for junk in [&[][..], &[0u8; 3][..], &[0xff; 200][..]] {
        let _ = d.decode(junk);
    }
    // Still decodes a good frame afterwards.
    let frames = vp8_frames(Yuv::from_rgb(200, 20, 20), 160, 90, 2);
    assert!(d.decode(&frames[0]).unwrap().is_some());
    // An unwritable path.
    let err = Writer::create(
        Path::new("/proc/parloir/x.mp4"),
        Container::Mp4,
        &spec(320, 180),
    )
    .err();
    assert!(err.is_some());
}

#[test]
fn vp9_and_h264_decode_to_their_colours() {
    use parloir_media::source::CameraSource;
    let colour = Yuv::from_rgb(30, 160, 200);
    for codec in [VideoCodec::Vp9, VideoCodec::H264, VideoCodec::Vp8] {
        let mut source = CameraSource::new(codec, colour, 320, 180, 30).unwrap();
        let mut decoder = VideoDecoder::new(codec).unwrap();
        let mut last = None;
        for i in 0..45 {
            let (frame, key) = source.next_frame().unwrap();
            assert_eq!(key, i % 30 == 0, "{codec:?} frame {i}");
            if let Some(p) = decoder.decode(&frame).unwrap() {
                last = Some(p);
            }
        }
        let p = last.unwrap_or_else(|| panic!("{codec:?}: no picture"));
        assert_eq!((p.width(), p.height()), (320, 180));
        let got = p.mean(parloir_media::Rect::new(100, 40, 80, 80));
        assert!(close(got, colour, 6), "{codec:?}: {got:?} vs {colour:?}");
        assert_eq!(decoder.pictures_out, 45, "{codec:?}: one picture per frame");
    }
}

/// Writes `seconds` of a green picture and a tone.
fn write_media(writer: &mut Writer, seconds: u32) {
    let green = Picture::new(320, 180, Yuv::from_rgb(40, 200, 40));
    for i in 0..(30 * seconds) as i64 {
        writer.video(&green, i).unwrap();
        writer.audio(&tone(i as usize * 1600, 1600)).unwrap();
    }
}

#[test]
fn hls_segments_are_listed_as_they_complete() {
    let dir = std::env::temp_dir().join(format!("parloir-media-hls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let playlist = dir.join("live.m3u8");
    let container = Container::Hls {
        segment_seconds: 2,
        segments: dir.join("live_%05d.ts"),
    };
    let mut writer = Writer::create(&playlist, container, &spec(320, 180)).unwrap();
    write_media(&mut writer, 5);
    // Before the end, the complete segments are already listed.
    let listed = std::fs::read_to_string(&playlist).unwrap();
    assert!(listed.contains("live_00000.ts"), "{listed}");
    writer.finish().unwrap();
    let listed = std::fs::read_to_string(&playlist).unwrap();
    let segments: Vec<&str> = listed.lines().filter(|l| l.ends_with(".ts")).collect();
    assert!(segments.len() >= 2, "{listed}");
    assert!(listed.contains("#EXT-X-ENDLIST"), "{listed}");
    let p = probe(&playlist);
    assert!(
        p.codecs.contains(&"h264".to_string()) && p.codecs.contains(&"aac".to_string()),
        "{p:?}"
    );
    assert!((p.duration - 5.0).abs() < 0.3, "{p:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The ffmpeg tool as a streaming platform: it listens on a free port for one RTMP stream and
/// passes it to `sink` (`-c copy FILE`, or `-f null -`).
fn rtmp_platform(sink: &[&str]) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("rtmp://127.0.0.1:{port}/live/test");
    let child = Command::new("ffmpeg")
        .args(["-v", "error", "-listen", "1", "-i", &url])
        .args(sink)
        .spawn()
        .expect("ffmpeg");
    (child, url)
}

/// Opens the outputs, retrying while the platform starts listening.
fn open_when_listening(outputs: &[(std::path::PathBuf, Container)]) -> Writer {
    for _ in 0..50 {
        match Writer::create_many(outputs, &spec(320, 180)) {
            Ok(w) => return w,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    panic!("the RTMP platform never accepted the stream");
}

#[test]
fn a_stream_goes_to_an_rtmp_server() {
    let dir = std::env::temp_dir().join(format!("parloir-media-rtmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let received = dir.join("received.flv");
    let received_arg = received.to_string_lossy().to_string();
    let (mut server, url) = rtmp_platform(&["-c", "copy", "-y", &received_arg]);
    let mut writer = open_when_listening(&[(std::path::PathBuf::from(&url), Container::Rtmp)]);
    write_media(&mut writer, 3);
    writer.finish().unwrap();
    let status = server.wait().unwrap();
    assert!(status.success(), "{status}");
    let p = probe(&received);
    assert!(
        p.codecs.contains(&"h264".to_string()) && p.codecs.contains(&"aac".to_string()),
        "{p:?}"
    );
    assert!((p.duration - 3.0).abs() < 0.3, "{p:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_encoding_goes_to_several_outputs_and_a_failing_one_stops_alone() {
    let dir = std::env::temp_dir().join(format!("parloir-media-many-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut platform, url) = rtmp_platform(&["-f", "null", "-"]);
    let outputs = vec![
        (dir.join("file.mp4"), Container::Mp4),
        (
            dir.join("live.m3u8"),
            Container::Hls {
                segment_seconds: 1,
                segments: dir.join("live_%05d.ts"),
            },
        ),
        (std::path::PathBuf::from(&url), Container::Rtmp),
    ];
    let mut writer = open_when_listening(&outputs);
    write_media(&mut writer, 2);
    // The streaming platform goes away: that output fails, the others go on.
    platform.kill().unwrap();
    platform.wait().unwrap();
    let green = Picture::new(320, 180, Yuv::from_rgb(40, 200, 40));
    for i in 60..150 {
        writer.video(&green, i).unwrap();
        writer.audio(&tone(i as usize * 1600, 1600)).unwrap();
        if i % 10 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let results = writer.finish().unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        results[0].error.is_none() && results[1].error.is_none(),
        "{results:?}"
    );
    assert!(
        results[2].error.is_some(),
        "the stream did not fail: {results:?}"
    );
    for path in [dir.join("file.mp4"), dir.join("live.m3u8")] {
        let p = probe(&path);
        assert!((p.duration - 5.0).abs() < 0.3, "{}: {p:?}", path.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
