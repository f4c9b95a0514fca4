//! The media the simulated participants publish, and the marker that lets subscribers measure.
//!
//! Frames are synthetic but shaped like the real thing, because an SFU looks at headers and sizes,
//! never at pixels or samples: VP8 frames start with a valid frame tag (and, on key frames, the
//! start code and dimensions) and are sized to the layer's bitrate and frame rate; Opus frames start
//! with a TOC byte, are 20 ms apart while speaking, and fall to one small DTX frame every 400 ms in
//! silence, as libwebrtc sends them. Video can also come from real VP8 clips (IVF files, see
//! perf/media/), looped, jumping back to the clip's key frame when a PLI asks for one.
//!
//! Every frame ends with a [`Marker`]: who sent it, which layer, its sequence number and the
//! instant it was written. At the end it leaves a real VP8 frame decodable (the last partition
//! just has bytes the decoder never reads). Publishers and subscribers share one clock in one
//! process, so a subscriber turns the marker into end-to-end latency and loss without any clock
//! synchronisation.

use std::time::Duration;

use rand::Rng;

/// Opus frame duration while speaking.
pub const OPUS_FRAME: Duration = Duration::from_millis(20);
/// Interval of the comfort-noise frames libwebrtc sends during DTX silence.
pub const DTX_INTERVAL: Duration = Duration::from_millis(400);
/// TOC byte: configuration 15 (hybrid, fullband, 20 ms), mono, one frame.
const OPUS_TOC: u8 = 15 << 3;
/// Bytes of a DTX frame (TOC and two bytes of comfort noise).
const DTX_BYTES: usize = 3;
/// A key frame is this many times larger than an average delta frame.
const KEY_FRAME_FACTOR: usize = 4;

/// Where a frame came from and when it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The publishing participant's index in the run.
    pub publisher: u32,
    /// 0 for audio, `1 + layer index` for video (1 is the lowest simulcast layer).
    pub stream: u8,
    /// Frame number within (publisher, stream), counting from 0.
    pub seq: u32,
    /// Microseconds since the run's epoch when the frame was handed to the WebRTC stack.
    pub sent_us: u64,
}

const MAGIC: [u8; 4] = *b"PLG1";
/// Encoded size of a [`Marker`].
pub const MARKER_BYTES: usize = 21;

impl Marker {
    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.publisher.to_be_bytes());
        out[8] = self.stream;
        out[9..13].copy_from_slice(&self.seq.to_be_bytes());
        out[13..21].copy_from_slice(&self.sent_us.to_be_bytes());
    }

    fn read(data: &[u8]) -> Option<Self> {
        let m = data.get(..MARKER_BYTES)?;
        if m[0..4] != MAGIC {
            return None;
        }
        Some(Self {
            publisher: u32::from_be_bytes(m[4..8].try_into().ok()?),
            stream: m[8],
            seq: u32::from_be_bytes(m[9..13].try_into().ok()?),
            sent_us: u64::from_be_bytes(m[13..21].try_into().ok()?),
        })
    }

    /// Finds the marker at the end of a depacketized frame.
    pub fn from_frame(frame: &[u8]) -> Option<Self> {
        Self::read(frame.get(frame.len().checked_sub(MARKER_BYTES)?..)?)
    }
}

/// `frame` with `marker` appended.
pub fn with_marker(frame: &[u8], marker: Marker) -> Vec<u8> {
    let mut f = Vec::with_capacity(frame.len() + MARKER_BYTES);
    f.extend_from_slice(frame);
    f.resize(frame.len() + MARKER_BYTES, 0);
    marker.write(&mut f[frame.len()..]);
    f
}

/// A VP8 clip read from an IVF file: its frames in order, the first a key frame.
#[derive(Debug, Clone)]
pub struct Clip {
    pub frames: Vec<Vec<u8>>,
    pub width: u16,
    pub height: u16,
}

impl Clip {
    /// Reads an IVF file of VP8 frames whose first frame is a key frame.
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        let header = data.get(..32).ok_or("shorter than an IVF header")?;
        if &header[0..4] != b"DKIF" || &header[8..12] != b"VP80" {
            return Err("not an IVF file of VP8".into());
        }
        let header_len = usize::from(u16::from_le_bytes([header[6], header[7]]));
        let width = u16::from_le_bytes([header[12], header[13]]);
        let height = u16::from_le_bytes([header[14], header[15]]);
        let mut frames = Vec::new();
        let mut at = header_len.max(32);
        while at < data.len() {
            let h = data.get(at..at + 12).ok_or("truncated frame header")?;
            let size = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let frame = data.get(at + 12..at + 12 + size).ok_or("truncated frame")?;
            frames.push(frame.to_vec());
            at += 12 + size;
        }
        match frames.first() {
            None => Err("no frames".into()),
            Some(f) if f.first().is_none_or(|b| b & 1 != 0) => {
                Err("the first frame is not a key frame".into())
            }
            Some(_) => Ok(Self {
                frames,
                width,
                height,
            }),
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&data).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// An Opus frame while speaking: TOC, filler, then the marker, `bytes` in all.
pub fn opus_frame(marker: Marker, bytes: usize) -> Vec<u8> {
    let mut f = vec![0u8; bytes.max(1 + MARKER_BYTES)];
    f[0] = OPUS_TOC;
    let end = f.len() - MARKER_BYTES;
    for (i, b) in f[1..end].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31);
    }
    marker.write(&mut f[end..]);
    f
}

/// A DTX comfort-noise frame: too small to carry a marker, counted but not timed.
pub fn dtx_frame() -> Vec<u8> {
    let mut f = vec![0u8; DTX_BYTES];
    f[0] = OPUS_TOC;
    f
}

/// Bytes of an average frame for a layer sending `kbps` at `fps`.
pub fn average_frame_bytes(kbps: u32, fps: u32) -> usize {
    (kbps as usize * 1000 / 8 / fps.max(1) as usize).max(MARKER_BYTES + 10)
}

/// A VP8 frame: frame tag (key frames add start code and dimensions), filler, marker. Delta
/// frames vary ±20 % around the average; key frames are four times larger.
pub fn vp8_frame(
    marker: Marker,
    key: bool,
    width: u16,
    height: u16,
    average: usize,
    rng: &mut impl Rng,
) -> Vec<u8> {
    let bytes = if key {
        average * KEY_FRAME_FACTOR
    } else {
        average * rng.random_range(80..=120) / 100
    };
    let header = if key { 10 } else { 3 };
    let bytes = bytes.max(header + MARKER_BYTES);
    let mut f = vec![0u8; bytes];
    // Frame tag: bit 0 clear on key frames, version 0, show_frame set, then the first partition
    // size (19 bits), which we declare as the whole frame less the header.
    let partition = ((bytes - header) as u32).min((1 << 19) - 1);
    let tag = (partition << 5) | (1 << 4) | u32::from(!key);
    f[0..3].copy_from_slice(&tag.to_le_bytes()[0..3]);
    if key {
        f[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        f[6..8].copy_from_slice(&(width & 0x3fff).to_le_bytes());
        f[8..10].copy_from_slice(&(height & 0x3fff).to_le_bytes());
    }
    let end = bytes - MARKER_BYTES;
    for (i, b) in f[header..end].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(17).wrapping_add(3);
    }
    marker.write(&mut f[end..]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn markers_survive_both_codecs() {
        let m = Marker {
            publisher: 7,
            stream: 3,
            seq: 123_456,
            sent_us: 9_876_543_210,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for key in [true, false] {
            let f = vp8_frame(m, key, 1280, 720, 7000, &mut rng);
            assert_eq!(f[0] & 1 == 0, key);
            assert_eq!(Marker::from_frame(&f), Some(m));
            if key {
                assert_eq!(&f[3..6], &[0x9d, 0x01, 0x2a]);
                assert_eq!(u16::from_le_bytes([f[6], f[7]]), 1280);
                assert!(f.len() >= 4 * 7000);
            } else {
                assert!((5600..=8400).contains(&f.len()));
            }
        }
        let a = opus_frame(m, 80);
        assert_eq!(a.len(), 80);
        assert_eq!(a[0], OPUS_TOC);
        assert_eq!(Marker::from_frame(&a), Some(m));
        assert_eq!(Marker::from_frame(&dtx_frame()), None);
        assert_eq!(Marker::from_frame(&[0x11, 0, 0, 1, 2]), None);
        assert_eq!(Marker::from_frame(&[]), None);
        let clip_frame = [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 7, 7];
        let marked = with_marker(&clip_frame, m);
        assert_eq!(&marked[..8], &clip_frame);
        assert_eq!(Marker::from_frame(&marked), Some(m));
    }

    #[test]
    fn clips_are_read_from_ivf() {
        let clip = Clip::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../perf/media/q.ivf"),
        )
        .expect("the committed clip reads");
        assert_eq!((clip.width, clip.height), (320, 180));
        assert_eq!(clip.frames.len(), 60, "4 s at 15 fps");
        assert_eq!(clip.frames[0][3..6], [0x9d, 0x01, 0x2a]);
        assert!(
            clip.frames[1..].iter().all(|f| f[0] & 1 == 1),
            "one key frame, at the start"
        );
        let mut ivf = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../perf/media/q.ivf"),
        )
        .unwrap();
        assert!(Clip::parse(&ivf[..20]).is_err());
        ivf.truncate(ivf.len() - 5);
        assert!(Clip::parse(&ivf).unwrap_err().contains("truncated"));
        assert!(Clip::parse(b"RIFF0000VP80aaaaaaaaaaaaaaaaaaaaaaaaa").is_err());
    }

    #[test]
    fn frame_sizes_follow_bitrate() {
        assert_eq!(average_frame_bytes(1700, 30), 7083);
        assert_eq!(average_frame_bytes(160, 20), 1000);
        assert_eq!(average_frame_bytes(0, 0), MARKER_BYTES + 10);
    }
}
