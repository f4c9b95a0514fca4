//! Scalable video: VP9 and AV1 tracks that carry their spatial layers in one RTP stream.
//!
//! livekit-client publishes VP9 and AV1 as one encoding in `L3T3_KEY` mode by default (Visio's
//! client publishes VP9): three spatial layers (a quarter, half and the full size), each with
//! three temporal layers, the upper spatial layers predicted from the lower ones only on key
//! frames. str0m hands the SFU one frame per picture with all of its spatial layers in it:
//!
//! - VP9: the layer frames back to back, lowest first, with where each one ends
//!   (`Vp9CodecExtra::layers_scheme`, from the payload descriptor's layer indices);
//! - AV1: the temporal unit's OBUs, each with its size field, a frame's OBUs with an extension
//!   header that names its spatial layer.
//!
//! A subscriber that should get spatial layer `k` gets the frame cut down to layers `0..=k`: for
//! VP9 a prefix of it, for AV1 the OBUs that name no layer or a layer up to `k`. A decoder shows
//! the highest layer it decoded, so the subscriber sees a stream of that layer's size, and str0m
//! packetises it for the subscriber as a plain single-layer stream with its own picture ids.
//!
//! Going down a layer can happen on any frame (the lower layers never refer to the upper ones);
//! going up waits for a key frame, as the upper layer's own references were not sent.

use std::sync::Arc;

use str0m::format::CodecExtra;
use str0m::media::{MediaData, Rid};

/// Spatial layers a frame can carry (str0m's VP9 depacketiser tracks three).
pub(crate) const MAX_SPATIAL: usize = 3;

/// The layer name the SFU gives spatial layer `i` of a scalable track, in the place of a
/// simulcast rid, so that layer bookkeeping (which layers flow, their rates, which one a
/// subscriber gets) is the same for both.
pub(crate) fn rid(i: u8) -> Rid {
    match i {
        0 => "0".into(),
        1 => "1".into(),
        _ => "2".into(),
    }
}

/// The spatial layer that [`rid`] names.
pub(crate) fn layer(rid: &Rid) -> u8 {
    match &**rid {
        "0" => 0,
        "1" => 1,
        _ => 2,
    }
}

/// The spatial layers of one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spatial {
    /// How many spatial layers the frame carries (1 to `MAX_SPATIAL`).
    layers: u8,
    /// How many bytes carry layers `0..=i`, for each `i` below `layers`.
    sizes: [usize; MAX_SPATIAL],
    codec: Codec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Vp9,
    Av1,
}

impl Spatial {
    /// The spatial layers of `data`, or `None` when its codec is not scalable or the frame says
    /// nothing about layers (a VP9 payload descriptor without layer indices, AV1 OBUs without
    /// extension headers).
    pub(crate) fn of(data: &MediaData) -> Option<Spatial> {
        match data.codec_extra {
            CodecExtra::Vp9(extra) => Self::vp9(&extra.layers_scheme, data.data.len()),
            CodecExtra::Av1(_) => Self::av1(&data.data),
            _ => None,
        }
    }

    /// The whole of a frame as its one layer (a scalable track's frame that carries no layer
    /// information).
    pub(crate) fn whole(len: usize) -> Spatial {
        Spatial {
            layers: 1,
            sizes: [len; MAX_SPATIAL],
            codec: Codec::Vp9,
        }
    }

    fn vp9(ends: &[Option<usize>; MAX_SPATIAL], len: usize) -> Option<Spatial> {
        let top = ends.iter().rposition(Option::is_some)?;
        let mut sizes = [0; MAX_SPATIAL];
        let mut end = 0;
        for (i, size) in sizes.iter_mut().enumerate() {
            // A layer the frame lacks (none below the top one, in practice) adds nothing.
            end = ends[i].unwrap_or(end).clamp(end, len);
            *size = end;
        }
        // Whatever follows the top layer's end belongs to it.
        for size in &mut sizes[top..] {
            *size = len;
        }
        Some(Spatial {
            layers: top as u8 + 1,
            sizes,
            codec: Codec::Vp9,
        })
    }

    fn av1(data: &[u8]) -> Option<Spatial> {
        let mut sizes = [0; MAX_SPATIAL];
        let mut top: Option<usize> = None;
        for obu in Obus::new(data) {
            let obu = obu.ok()?;
            match obu.spatial {
                Some(s) => {
                    let s = usize::from(s).min(MAX_SPATIAL - 1);
                    top = Some(top.map_or(s, |t| t.max(s)));
                    for size in &mut sizes[s..] {
                        *size += obu.len;
                    }
                }
                None => {
                    for size in &mut sizes {
                        *size += obu.len;
                    }
                }
            }
        }
        let top = top?;
        Some(Spatial {
            layers: top as u8 + 1,
            sizes,
            codec: Codec::Av1,
        })
    }

    /// How many spatial layers the frame carries.
    pub(crate) fn layers(&self) -> u8 {
        self.layers
    }

    /// How many bytes a subscriber of layer `k` gets of this frame.
    pub(crate) fn size(&self, k: u8) -> usize {
        self.sizes[usize::from(k.min(self.layers - 1))]
    }

    /// The frame cut down to layers `0..=k`; the frame itself from its top layer up.
    pub(crate) fn cut(&self, data: &Arc<[u8]>, k: u8) -> Arc<[u8]> {
        if k + 1 >= self.layers {
            return data.clone();
        }
        match self.codec {
            Codec::Vp9 => data[..self.sizes[usize::from(k)].min(data.len())].into(),
            Codec::Av1 => {
                let mut out = Vec::with_capacity(self.sizes[usize::from(k)]);
                for obu in Obus::new(data).map_while(Result::ok) {
                    if obu.spatial.is_none_or(|s| s <= k) {
                        out.extend_from_slice(&data[obu.start..obu.start + obu.len]);
                    }
                }
                out.into()
            }
        }
    }

    /// The frame cut down to layers `0..=k` for a decoder that takes one packet per picture
    /// (FFmpeg's, in the recorder): VP9 layer frames get a superframe index, so that the decoder
    /// decodes each of them and shows the top one; an AV1 temporal unit is cut as for a
    /// subscriber.
    pub(crate) fn for_decoder(&self, data: &Arc<[u8]>, k: u8) -> Arc<[u8]> {
        let top = usize::from(k.min(self.layers - 1));
        if self.codec == Codec::Av1 || top == 0 {
            return self.cut(data, k);
        }
        let end = self.sizes[top].min(data.len());
        let mut frames = Vec::with_capacity(top + 1);
        let mut start = 0;
        for &size in &self.sizes[..=top] {
            let size = size.min(end);
            frames.push(size - start);
            start = size;
        }
        // Annex B: a marker byte (0b110, bytes per size less one, frames less one), the sizes
        // little-endian, the marker again.
        let largest = frames.iter().copied().max().unwrap_or(0);
        let bytes = match largest {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xff_ffff => 3,
            _ => 4,
        };
        let marker = 0xc0 | ((bytes as u8 - 1) << 3) | (frames.len() as u8 - 1);
        let mut out = Vec::with_capacity(end + 2 + bytes * frames.len());
        out.extend_from_slice(&data[..end]);
        out.push(marker);
        for size in frames {
            out.extend_from_slice(&(size as u32).to_le_bytes()[..bytes]);
        }
        out.push(marker);
        out.into()
    }
}

/// One OBU of an AV1 temporal unit in the low-overhead format (each with its size field).
pub(crate) struct Obu {
    start: usize,
    len: usize,
    /// The spatial layer its extension header names.
    spatial: Option<u8>,
    /// The temporal layer its extension header names.
    pub(crate) temporal: Option<u8>,
}

/// The OBUs of a temporal unit; an error ends it (an OBU without a size field, or one that runs
/// past the end).
pub(crate) struct Obus<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Obus<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Obus { data, at: 0 }
    }
}

impl Iterator for Obus<'_> {
    type Item = Result<Obu, ()>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.at;
        let data = self.data.get(start..).filter(|d| !d.is_empty())?;
        let header = data[0];
        let extension = header & 0x04 != 0;
        let has_size = header & 0x02 != 0;
        let mut at = 1;
        let mut spatial = None;
        let mut temporal = None;
        if extension {
            let Some(&ext) = data.get(1) else {
                self.at = self.data.len();
                return Some(Err(()));
            };
            temporal = Some(ext >> 5);
            spatial = Some((ext >> 3) & 0x03);
            at = 2;
        }
        let mut size: u64 = 0;
        let mut ended = false;
        if has_size {
            // leb128, at most 8 bytes.
            for i in 0..8 {
                let Some(&b) = data.get(at) else {
                    break;
                };
                at += 1;
                size |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    ended = true;
                    break;
                }
            }
        }
        let len = usize::try_from(size).ok().and_then(|s| s.checked_add(at));
        match len {
            Some(len) if ended && len <= data.len() => {
                self.at = start + len;
                Some(Ok(Obu {
                    start,
                    len,
                    spatial,
                    temporal,
                }))
            }
            _ => {
                self.at = self.data.len();
                Some(Err(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp9_frames_are_cut_at_their_layer_ends() {
        let data: Arc<[u8]> = (0..60u8).collect::<Vec<_>>().into();
        let s = Spatial::vp9(&[Some(10), Some(30), Some(60)], data.len()).expect("layers");
        assert_eq!(s.layers(), 3);
        assert_eq!((s.size(0), s.size(1), s.size(2)), (10, 30, 60));
        assert_eq!(&*s.cut(&data, 0), &data[..10]);
        assert_eq!(&*s.cut(&data, 1), &data[..30]);
        assert!(
            Arc::ptr_eq(&s.cut(&data, 2), &data),
            "the top layer is the frame"
        );
        // An encoder that dropped its top layer: two layers, and asking for the top gets both.
        let two = Spatial::vp9(&[Some(10), Some(30), None], 30).expect("layers");
        assert_eq!(two.layers(), 2);
        assert_eq!(two.size(2), 30);
        // No layer indices: not scalable.
        assert_eq!(Spatial::vp9(&[None; 3], 60), None);
        // Ends past the frame (a corrupt descriptor) stay inside it.
        let odd = Spatial::vp9(&[Some(50), Some(40), Some(90)], 60).expect("layers");
        assert_eq!((odd.size(0), odd.size(1), odd.size(2)), (50, 50, 60));
    }

    #[test]
    fn vp9_frames_for_a_decoder_carry_a_superframe_index() {
        let data: Arc<[u8]> = vec![7u8; 400].into();
        let s = Spatial::vp9(&[Some(100), Some(400), None], data.len()).expect("layers");
        let both = s.for_decoder(&data, 2);
        // Marker 0b110_01_001: two-byte sizes, two frames; 100 and 300 little-endian.
        assert_eq!(&both[400..], &[0xc9, 100, 0, 44, 1, 0xc9]);
        assert_eq!(&both[..400], &data[..]);
        // Small frames take one byte each.
        let small: Arc<[u8]> = vec![7u8; 30].into();
        let s3 = Spatial::vp9(&[Some(5), Some(12), Some(30)], 30).expect("layers");
        assert_eq!(&s3.for_decoder(&small, 1)[12..], &[0xc1, 5, 7, 0xc1]);
        // The lowest layer alone is a plain frame.
        assert_eq!(&*s.for_decoder(&data, 0), &data[..100]);
    }

    /// An OBU with its size field: `kind` (OBU type), the spatial layer of its extension
    /// header, and `len` payload bytes of `fill`.
    fn obu(kind: u8, spatial: Option<u8>, len: usize, fill: u8) -> Vec<u8> {
        let mut out = vec![(kind << 3) | 0x02 | if spatial.is_some() { 0x04 } else { 0 }];
        if let Some(s) = spatial {
            out.push((1 << 5) | (s << 3)); // temporal id 1, spatial id s
        }
        let mut n = len;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend(std::iter::repeat_n(fill, len));
        out
    }

    #[test]
    fn av1_temporal_units_keep_the_obus_of_the_layers_below() {
        let sequence = obu(1, None, 12, 0xee);
        let layers: Vec<Vec<u8>> = (0..3).map(|s| obu(6, Some(s), 40 << s, s)).collect();
        let unit: Vec<u8> = [
            sequence.clone(),
            layers[0].clone(),
            layers[1].clone(),
            layers[2].clone(),
        ]
        .concat();
        let data: Arc<[u8]> = unit.clone().into();
        let s = Spatial::av1(&data).expect("layers");
        assert_eq!(s.layers(), 3);
        assert_eq!(
            &*s.cut(&data, 0),
            &[sequence.clone(), layers[0].clone()].concat()[..]
        );
        let middle = [sequence.clone(), layers[0].clone(), layers[1].clone()].concat();
        assert_eq!(&*s.cut(&data, 1), &middle[..]);
        assert_eq!(s.size(1), middle.len());
        assert!(Arc::ptr_eq(&s.cut(&data, 2), &data));
        // Large sizes take several leb128 bytes.
        let big = [obu(6, Some(0), 300, 1), obu(6, Some(1), 20_000, 2)].concat();
        let s = Spatial::av1(&big).expect("layers");
        assert_eq!(s.size(0), 300 + 4, "header, extension, two size bytes");
        // Without extension headers a unit is not scalable; a size past the end is refused.
        assert_eq!(Spatial::av1(&sequence), None);
        assert_eq!(Spatial::av1(&unit[..unit.len() - 1]), None);
        assert_eq!(
            Spatial::av1(&[0x32]),
            None,
            "an extension header that is not there"
        );
    }
}
