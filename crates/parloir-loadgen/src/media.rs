//! The media the simulated participants publish, and the marker that lets subscribers measure.
//!
//! Frames are synthetic but shaped like the real thing, because an SFU looks at headers and sizes,
//! never at pixels or samples: VP8 frames start with a valid frame tag (and, on key frames, the
//! start code and dimensions) and are sized to the layer's bitrate and frame rate; Opus frames start
//! with a TOC byte, are 20 ms apart while speaking, and fall to one small DTX frame every 400 ms in
//! silence, as libwebrtc sends them. After the codec header each frame carries a [`Marker`]: who
//! sent it, which layer, its sequence number and the instant it was written. Publishers and
//! subscribers share one clock in one process, so a subscriber turns the marker into end-to-end
//! latency and loss without any clock synchronisation.

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

    /// Finds the marker in a depacketized Opus frame.
    pub fn from_opus(frame: &[u8]) -> Option<Self> {
        Self::read(frame.get(1..)?)
    }

    /// Finds the marker in a depacketized VP8 frame (after the frame tag, and on key frames after
    /// the start code and dimensions).
    pub fn from_vp8(frame: &[u8]) -> Option<Self> {
        let first = *frame.first()?;
        let header = if first & 1 == 0 { 10 } else { 3 };
        Self::read(frame.get(header..)?)
    }
}

/// An Opus frame while speaking: TOC, marker, then filler up to `bytes`.
pub fn opus_frame(marker: Marker, bytes: usize) -> Vec<u8> {
    let mut f = vec![0u8; bytes.max(1 + MARKER_BYTES)];
    f[0] = OPUS_TOC;
    marker.write(&mut f[1..]);
    for (i, b) in f[1 + MARKER_BYTES..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31);
    }
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

/// A VP8 frame: frame tag (key frames add start code and dimensions), marker, filler. Delta frames
/// vary ±20 % around the average; key frames are four times larger.
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
    marker.write(&mut f[header..]);
    for (i, b) in f[header + MARKER_BYTES..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(17).wrapping_add(3);
    }
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
            assert_eq!(Marker::from_vp8(&f), Some(m));
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
        assert_eq!(Marker::from_opus(&a), Some(m));
        assert_eq!(Marker::from_opus(&dtx_frame()), None);
        assert_eq!(Marker::from_vp8(&[0x11, 0, 0, 1, 2]), None);
        assert_eq!(Marker::from_vp8(&[]), None);
    }

    #[test]
    fn frame_sizes_follow_bitrate() {
        assert_eq!(average_frame_bytes(1700, 30), 7083);
        assert_eq!(average_frame_bytes(160, 20), 1000);
        assert_eq!(average_frame_bytes(0, 0), MARKER_BYTES + 10);
    }
}
