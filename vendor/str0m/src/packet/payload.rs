use std::sync::Arc;
use std::time::Instant;

use crate::format::{CodecSpec, Vp9PacketizerMode};
use crate::media::ToPayload;
use crate::rtp::vla::VideoLayersAllocation;
use crate::rtp_::{ExtensionValues, Frequency, Pt, SeqNo};
use crate::streams::{StreamTx, TxHeader};

use super::PacketError;
use super::red::RedSender;
use super::{Chunk, CodecPacketizer, Packetizer, Piece};

/// Turns frames into RTP packets.
///
/// The payloader is deliberately codec- and feature-agnostic: it packetizes via its
/// [`CodecPacketizer`] and emits [`OutgoingPacket`]s through a [`PacketSink`]. All codec-specific
/// behaviour (marker/nackable policy, DONL) lives on the packetizer, and RFC 2198 RED wrapping is
/// applied by the sink (see [`RedSink`]), owned a level up in `Media`.
#[derive(Debug)]
pub struct Payloader {
    pack: CodecPacketizer,
    clock_rate: Frequency,
    /// Parloir patch 53: the list a frame's packets are made in, kept from frame to frame.
    chunks: Vec<Chunk>,
}

/// A packet ready to hand to a [`PacketSink`]: the RTP fields plus the primary payload as an owned
/// `Vec`. The payload is only wrapped into an `Arc` once, when the sink queues the packet, so
/// a RED sink can transform the bytes first without an extra allocation.
pub(crate) struct OutgoingPacket<'a> {
    pub pt: Pt,
    pub seq_no: SeqNo,
    pub rtp_time: u32,
    pub wallclock: Instant,
    pub marker: bool,
    pub nackable: bool,
    /// Parloir patch 74: the frame's extension values, of which the packet carries what its
    /// place in the frame allows ([`packet_ext_vals`]): the queued header takes the few it
    /// keeps inline from here, and the whole set (a copy) only when a packet carries others.
    /// Each packet of each frame written to each subscriber was a copy of them (about 220
    /// bytes) moved four times on its way to the queue.
    pub ext_vals: &'a ExtensionValues,
    /// The packet is the frame's first, its last.
    pub first: bool,
    pub last: bool,
    pub payload: Vec<u8>,
    /// Parloir patch 26: the packet is this piece of this frame (`payload` is then empty).
    pub shared: Option<(Piece, Arc<[u8]>)>,
}

/// Where a [`Payloader`] sends its packetized output. Implemented by [`StreamTx`] (plain) and
/// [`RedSink`] (RFC 2198 wrapping), so the payloader stays unaware of both the concrete stream and
/// RED. Dispatch is static: [`Payloader::push_sample`] is monomorphised per sink, so the plain
/// path carries no RED branch at all.
pub(crate) trait PacketSink {
    /// Parloir patch 26: whether the sink takes packets that are pieces of a shared frame
    /// ([`OutgoingPacket::shared`]). A sink that rewrites payloads (RED) does not.
    const SHARES: bool = false;

    /// The next sequence number to assign on the underlying stream.
    fn next_seq_no(&mut self) -> SeqNo;
    /// The most recently written packet payload on the underlying stream, for marker decisions.
    fn last_packet(&self) -> Option<&[u8]>;
    /// Emit a packet.
    fn send(&mut self, packet: OutgoingPacket<'_>);
}

/// The extension values the packet at `first`/`last` of a frame carries of the frame's `ev`:
/// the absolute capture time and the video layers allocation on the first only, the video
/// orientation, content type and timing on the last only.
pub(crate) fn packet_ext_vals(ev: &ExtensionValues, first: bool, last: bool) -> ExtensionValues {
    let mut pkt_ext_vals = ev.clone();
    if !first {
        pkt_ext_vals.abs_capture_time = None;
        pkt_ext_vals.user_values.remove::<VideoLayersAllocation>();
    }
    if !last {
        pkt_ext_vals.video_orientation = None;
        pkt_ext_vals.video_content_type = None;
        pkt_ext_vals.video_timing = None;
    }
    pkt_ext_vals
}

impl Payloader {
    pub(crate) fn new(spec: CodecSpec, vp9_mode: Vp9PacketizerMode) -> Self {
        let mut pack = CodecPacketizer::new(spec.codec, vp9_mode);
        // The packetizer applies its own codec-specific configuration (e.g. DONL); the payloader
        // never names concrete packetizer variants.
        pack.configure_for(&spec);

        Payloader {
            pack,
            clock_rate: spec.rtp_clock_rate(),
            chunks: Vec::new(),
        }
    }

    pub(crate) fn push_sample<S: PacketSink>(
        &mut self,
        to_payload: ToPayload,
        mtu: usize,
        sink: &mut S,
    ) -> Result<(), PacketError> {
        let ToPayload {
            pt,
            wallclock,
            rtp_time,
            data,
            start_of_talk_spurt,
            ext_vals,
            ..
        } = to_payload;

        // Parloir patch 26: where the sink takes them and the codec's packetizer makes them,
        // the packets are pieces of the frame, which they share, instead of copies.
        // Patch 53: the list of chunks kept from the last frame (empty, with its capacity).
        let mut chunks = std::mem::take(&mut self.chunks);
        chunks.clear();
        let pieces = if S::SHARES {
            self.pack
                .packetize_pieces(mtu, data.as_ref(), &mut chunks)
                .transpose()?
        } else {
            None
        };
        if pieces.is_none() {
            let copies = self.pack.packetize(mtu, data.as_ref())?;
            chunks.extend(copies.into_iter().map(Chunk::Copy));
        }
        let len = chunks.len();

        for (idx, chunk) in chunks.drain(..).enumerate() {
            let (chunk, piece) = match chunk {
                Chunk::Piece(p) => (Vec::new(), Some(p)),
                Chunk::Copy(bytes) => (bytes, None),
            };
            let last = idx == len - 1;
            let first = idx == 0;

            let marker = if piece.is_some() {
                // A packetizer that makes pieces marks from `last` alone.
                self.pack.is_marker(&[], None, last)
            } else {
                let previous_data = sink.last_packet();
                self.pack.is_marker(chunk.as_slice(), previous_data, last)
            } || (self.pack.marks_talkspurt() && start_of_talk_spurt);

            let seq_no = sink.next_seq_no();

            let nackable = self.pack.nackable();

            let rtp_time_u32 = rtp_time.rebase(self.clock_rate).numer() as u32;

            sink.send(OutgoingPacket {
                pt,
                seq_no,
                rtp_time: rtp_time_u32,
                wallclock,
                marker,
                nackable,
                ext_vals: &ext_vals,
                first,
                last,
                payload: chunk,
                shared: piece.map(|p| (p, data.clone())),
            });
        }
        self.chunks = chunks;

        Ok(())
    }
}

/// The plain sink: writes each packet straight to the stream on its own payload type.
impl PacketSink for StreamTx {
    const SHARES: bool = true;

    fn next_seq_no(&mut self) -> SeqNo {
        StreamTx::next_seq_no(self)
    }

    fn last_packet(&self) -> Option<&[u8]> {
        StreamTx::last_packet(self)
    }

    fn send(&mut self, mut packet: OutgoingPacket<'_>) {
        let header = TxHeader::for_packet(self.ssrc(), &packet, packet.pt);
        let (payload, piece) = match packet.shared.take() {
            // Parloir patch 26: the frame, shared, and this packet's piece of it.
            Some((piece, frame)) => (frame, Some(piece)),
            None => (std::mem::take(&mut packet.payload).into(), None),
        };
        self.queue_packet(
            packet.seq_no,
            packet.rtp_time,
            packet.wallclock,
            header,
            payload,
            None,
            piece,
            packet.nackable,
        );
    }
}

/// Decorates a [`StreamTx`] so a [`Payloader`]'s output is wrapped in RFC 2198 RED and sent on the
/// RED payload type. Holds only borrows: the [`RedSender`] state (history, distances) is owned by
/// `Media`, and the same primary SSRC, sequence number, marker and extensions are preserved.
pub(crate) struct RedSink<'a> {
    stream: &'a mut StreamTx,
    red: &'a mut RedSender,
    /// Full aligned MTU; the RED payload (primary + redundancy) is shed to fit within this.
    budget: usize,
}

impl<'a> RedSink<'a> {
    pub(crate) fn new(stream: &'a mut StreamTx, red: &'a mut RedSender, budget: usize) -> Self {
        RedSink {
            stream,
            red,
            budget,
        }
    }
}

impl PacketSink for RedSink<'_> {
    fn next_seq_no(&mut self) -> SeqNo {
        StreamTx::next_seq_no(self.stream)
    }

    fn last_packet(&self) -> Option<&[u8]> {
        StreamTx::last_packet(self.stream)
    }

    fn send(&mut self, mut packet: OutgoingPacket<'_>) {
        debug_assert!(packet.shared.is_none(), "RED takes no shared pieces");
        // Wrap the primary Vec before it becomes an Arc, so RED adds no extra allocation. Swap to
        // the RED payload type; everything else on the packet is preserved.
        let primary = std::mem::take(&mut packet.payload);
        let payload = self.red.wrap(primary, packet.rtp_time, self.budget);
        let header = TxHeader::for_packet(self.stream.ssrc(), &packet, self.red.red_pt());
        self.stream.queue_packet(
            packet.seq_no,
            packet.rtp_time,
            packet.wallclock,
            header,
            payload.into(),
            None,
            None,
            packet.nackable,
        );
    }
}
