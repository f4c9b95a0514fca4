//! Parloir patch 28: an outgoing packet as a send queue and a resend window hold it.
//!
//! A resend window keeps every nackable packet of its stream for a second. As an [`RtpPacket`]
//! (a full [`RtpHeader`] with every extension value and a 15-entry CSRC array, and the fields
//! of an incoming packet) each one took 432 bytes; a window entry was written when the packet
//! was sent and read when it was evicted a second later, both times out of cache. A
//! [`TxPacket`] keeps what an outgoing header can vary by (payload type, marker, RTP time,
//! SSRC, and the extension values a sender sets on most packets) inline, and the rest, rare on
//! outgoing packets, behind one box. The full header is built again, on the stack, each time
//! the packet is written out (as the cached header was cloned before).
//!
//! [`RtpPacket`]: super::RtpPacket

use std::sync::Arc;
use std::time::Instant;

use crate::packet::{OutgoingPacket, Piece, Vp8Patch, packet_ext_vals};
use crate::rtp_::{ExtensionValues, Pt, RtpHeader, SeqNo, Ssrc, VideoOrientation};
use crate::util::already_happened;

use super::BLANK_PACKET_DEFAULT_PT;

/// An outgoing RTP packet in a send queue or a resend window.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TxPacket {
    /// Extended sequence number (its low 16 bits are the header's).
    pub seq_no: SeqNo,

    /// When the packet was handed to the send queue's time accounting (`not_happening()`
    /// until then); see [`RtpPacket::timestamp`](super::RtpPacket::timestamp).
    pub timestamp: Instant,

    /// The payload, or for a piece of a shared frame (patch 26), the whole frame.
    pub payload: Arc<[u8]>,

    /// Patch 26: the packet's piece of `payload`, when `payload` is a shared frame.
    pub piece: Option<Piece>,

    /// A VP8 payload descriptor patch applied when the packet is written out.
    pub vp8_patch: Option<Vp8Patch>,

    /// The header, compact.
    pub header: TxHeader,

    /// Whether the packet can be resent on NACK.
    pub nackable: bool,
}

/// The header of an outgoing packet, less what the sender sets when it writes the packet out
/// (sequence number, transport-wide sequence number, send time, MID and RID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxHeader {
    pub ssrc: Ssrc,
    pub rtp_time: u32,
    pub payload_type: Pt,
    pub marker: bool,
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    pub video_orientation: Option<VideoOrientation>,
    pub video_content_type: Option<u8>,
    /// CSRCs and the other extension values, when there are any.
    pub rare: Option<Box<RareHeader>>,
}

/// The parts of a header that outgoing packets seldom carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RareHeader {
    pub csrc_count: usize,
    pub csrc: [u32; 15],
    /// All the extension values, the inline ones included.
    pub ext_vals: ExtensionValues,
}

impl TxHeader {
    /// The header of a packet written with these values.
    pub fn new(
        ssrc: Ssrc,
        rtp_time: u32,
        payload_type: Pt,
        marker: bool,
        csrc_count: usize,
        csrc: [u32; 15],
        ext_vals: ExtensionValues,
    ) -> Self {
        let common = Self::inline(ssrc, rtp_time, payload_type, marker, &ext_vals);
        if csrc_count == 0 && only_common(&ext_vals) {
            common
        } else {
            TxHeader {
                rare: Some(Box::new(RareHeader {
                    csrc_count,
                    csrc,
                    ext_vals,
                })),
                ..common
            }
        }
    }

    /// Parloir patch 74: the header of `packet`, sent on payload type `pt`, from its frame's
    /// extension values by reference: only a packet that carries more than the values kept
    /// inline copies them (as [`TxHeader::new`] of the values [`packet_ext_vals`] gives).
    pub fn for_packet(ssrc: Ssrc, packet: &OutgoingPacket<'_>, pt: Pt) -> Self {
        let ev = packet.ext_vals;
        if !only_common(ev) {
            let ext_vals = packet_ext_vals(ev, packet.first, packet.last);
            return Self::new(
                ssrc,
                packet.rtp_time,
                pt,
                packet.marker,
                0,
                [0; 15],
                ext_vals,
            );
        }
        let mut header = Self::inline(ssrc, packet.rtp_time, pt, packet.marker, ev);
        // What a packet that is not its frame's last does not carry.
        if !packet.last {
            header.video_orientation = None;
            header.video_content_type = None;
        }
        header
    }

    /// The header with the values kept inline only.
    fn inline(
        ssrc: Ssrc,
        rtp_time: u32,
        payload_type: Pt,
        marker: bool,
        ev: &ExtensionValues,
    ) -> Self {
        TxHeader {
            ssrc,
            rtp_time,
            payload_type,
            marker,
            audio_level: ev.audio_level,
            voice_activity: ev.voice_activity,
            video_orientation: ev.video_orientation,
            video_content_type: ev.video_content_type,
            rare: None,
        }
    }

    /// The full header for sequence number `seq_no`, as it was written (no MID or RID unless
    /// the writer set them).
    pub fn to_rtp_header(&self, seq_no: SeqNo) -> RtpHeader {
        let (csrc_count, csrc, ext_vals) = match &self.rare {
            Some(rare) => (rare.csrc_count, rare.csrc, rare.ext_vals.clone()),
            None => (
                0,
                [0; 15],
                ExtensionValues {
                    audio_level: self.audio_level,
                    voice_activity: self.voice_activity,
                    video_orientation: self.video_orientation,
                    video_content_type: self.video_content_type,
                    ..Default::default()
                },
            ),
        };
        RtpHeader {
            csrc_count,
            sequence_number: *seq_no as u16,
            marker: self.marker,
            payload_type: self.payload_type,
            timestamp: self.rtp_time,
            ssrc: self.ssrc,
            csrc,
            ext_vals,
            ..Default::default()
        }
    }
}

/// Whether only the values kept inline in a [`TxHeader`] are set. Every field is named, so a
/// new extension value does not go unnoticed.
fn only_common(ext_vals: &ExtensionValues) -> bool {
    let ExtensionValues {
        audio_level: _,
        voice_activity: _,
        video_orientation: _,
        video_content_type: _,
        tx_time_offs,
        abs_send_time,
        abs_capture_time,
        transport_cc,
        play_delay_min,
        play_delay_max,
        video_timing,
        rid,
        rid_repair,
        mid,
        frame_mark,
        user_values,
    } = ext_vals;
    tx_time_offs.is_none()
        && abs_send_time.is_none()
        && abs_capture_time.is_none()
        && transport_cc.is_none()
        && play_delay_min.is_none()
        && play_delay_max.is_none()
        && video_timing.is_none()
        && rid.is_none()
        && rid_repair.is_none()
        && mid.is_none()
        && frame_mark.is_none()
        && user_values.is_empty()
}

impl TxPacket {
    /// The packet's payload length (its piece's, for a piece of a shared frame).
    pub fn payload_len(&self) -> usize {
        match &self.piece {
            Some(piece) => piece.payload_len(),
            None => self.payload.len(),
        }
    }

    /// The payload as one slice, when it is one (not a piece of a frame).
    pub fn whole_payload(&self) -> Option<&[u8]> {
        self.piece.is_none().then_some(self.payload.as_ref())
    }

    /// Writes the payload into `out[..payload_len()]`: a piece's prefix and its bytes of the
    /// frame, or the payload; with the VP8 descriptor patch, if any, applied.
    pub fn write_payload(&self, out: &mut [u8]) {
        let len = self.payload_len();
        let out = &mut out[..len];
        match &self.piece {
            Some(piece) => piece.write_to(&self.payload, out),
            None => out.copy_from_slice(&self.payload),
        }
        if let Some(patch) = &self.vp8_patch {
            patch.apply(out);
        }
    }

    /// The packet a stream's blank padding is written from.
    pub fn blank() -> Self {
        TxPacket {
            seq_no: 0.into(),
            timestamp: already_happened(),
            // Never written out: see RtpHeader::create_padding_packet.
            payload: Arc::default(),
            piece: None,
            vp8_patch: None,
            header: TxHeader::new(
                0.into(),
                0,
                BLANK_PACKET_DEFAULT_PT,
                false,
                0,
                [0; 15],
                ExtensionValues::default(),
            ),
            nackable: false,
        }
    }

    /// A packet of `payload` with a default header, for tests.
    #[cfg(test)]
    pub fn for_test(seq_no: u64, payload: &[u8], timestamp: Instant) -> Self {
        TxPacket {
            seq_no: seq_no.into(),
            timestamp,
            payload: payload.into(),
            piece: None,
            vp8_patch: None,
            header: TxHeader::new(
                0.into(),
                0,
                1.into(),
                false,
                0,
                [0; 15],
                ExtensionValues::default(),
            ),
            nackable: true,
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::rtp_::{ExtensionMap, MediaTime};

    fn header_bytes(header: &RtpHeader, exts: &ExtensionMap) -> Vec<u8> {
        let mut buf = vec![0; 1500];
        let len = header.write_to(&mut buf, exts);
        buf.truncate(len);
        buf
    }

    /// The compact header gives back the header it was made from, byte for byte on the wire,
    /// with only the inline values (no box) and with rare ones (a box).
    #[test]
    fn compact_header_round_trips() {
        let exts = ExtensionMap::standard();
        let mut common = ExtensionValues {
            audio_level: Some(-30),
            voice_activity: Some(true),
            ..Default::default()
        };
        common.video_orientation = Some(VideoOrientation::Deg90);
        let mut rare = common.clone();
        rare.abs_capture_time = None;
        rare.play_delay_min = Some(MediaTime::from_hundredths(1));
        rare.play_delay_max = Some(MediaTime::from_hundredths(5));
        let mut csrc = [0; 15];
        csrc[0] = 0xdead_beef;
        csrc[1] = 7;

        for (ext_vals, csrc_count, boxed) in [
            (common, 0, false),
            (rare.clone(), 0, true),
            (ExtensionValues::default(), 2, true),
        ] {
            let original = RtpHeader {
                csrc_count,
                sequence_number: 4242,
                marker: true,
                payload_type: 96.into(),
                timestamp: 123_456,
                ssrc: 77.into(),
                csrc: if csrc_count > 0 { csrc } else { [0; 15] },
                ext_vals: ext_vals.clone(),
                ..Default::default()
            };
            let compact = TxHeader::new(
                original.ssrc,
                original.timestamp,
                original.payload_type,
                original.marker,
                original.csrc_count,
                original.csrc,
                ext_vals,
            );
            assert_eq!(compact.rare.is_some(), boxed);
            let rebuilt = compact.to_rtp_header(4242.into());
            assert_eq!(rebuilt, original);
            assert_eq!(
                header_bytes(&rebuilt, &exts),
                header_bytes(&original, &exts)
            );
        }
    }

    /// Patch 74: a packet's header made from its frame's values by reference is the header
    /// made from its own copy of them, at each place in a frame, with and without values
    /// kept apart from the inline ones (a value only the first packet carries among them).
    #[test]
    fn a_packet_header_from_its_frames_values_is_the_header_of_its_own_copy() {
        use crate::packet::{OutgoingPacket, packet_ext_vals};
        use crate::rtp_::AbsCaptureTime;
        let common = ExtensionValues {
            audio_level: Some(-30),
            voice_activity: Some(true),
            video_orientation: Some(VideoOrientation::Deg90),
            video_content_type: Some(1),
            ..Default::default()
        };
        let mut rare = common.clone();
        rare.play_delay_min = Some(MediaTime::from_hundredths(1));
        let mut first_only = common.clone();
        first_only.abs_capture_time = Some(AbsCaptureTime {
            capture_time: std::time::SystemTime::UNIX_EPOCH,
            clock_offset: None,
        });
        let now = Instant::now();
        let mut boxed = vec![];
        for ev in [&common, &rare, &first_only] {
            for (first, last) in [(true, true), (true, false), (false, false), (false, true)] {
                let packet = OutgoingPacket {
                    pt: 96.into(),
                    seq_no: 3.into(),
                    rtp_time: 9_000,
                    wallclock: now,
                    marker: last,
                    nackable: true,
                    ext_vals: ev,
                    first,
                    last,
                    payload: vec![],
                    shared: None,
                };
                let by_ref = TxHeader::for_packet(77.into(), &packet, 111.into());
                let copy = packet_ext_vals(ev, first, last);
                let own = TxHeader::new(77.into(), 9_000, 111.into(), last, 0, [0; 15], copy);
                assert_eq!(by_ref, own, "first {first} last {last} {ev:?}");
                boxed.push(by_ref.rare.is_some());
            }
        }
        // Inline values only; a rare one on every packet; the capture time on the first.
        assert_eq!(
            boxed,
            [
                false, false, false, false, true, true, true, true, true, true, false, false
            ]
        );
    }

    #[test]
    fn a_queued_packet_is_a_fraction_of_an_rtp_packet() {
        let compact = std::mem::size_of::<TxPacket>();
        let full = std::mem::size_of::<super::super::RtpPacket>();
        assert!(compact * 3 <= full, "{compact} bytes against {full}");
    }
}
