use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::config_mod::RtcpReportIntervals;
use crate::format::CodecConfig;
use crate::format::PayloadParams;
use crate::io::DATAGRAM_MAX_PACKET_SIZE;
use crate::io::MAX_RTP_OVERHEAD;
use crate::media::KeyframeRequestKind;
use crate::media::Media;
use crate::media::MediaKind;
use crate::pacer::QueuePriority;
use crate::pacer::QueueSnapshot;
use crate::pacer::QueueState;
use crate::packet::{Piece, Vp8Patch};
use crate::rtp_::MidRid;
use crate::rtp_::{Bitrate, Descriptions, Extension, ExtensionMap, ExtensionValues, Frequency};
use crate::rtp_::{MAX_BLANK_PADDING_PAYLOAD_SIZE, Sdes, SdesType};
use crate::rtp_::{MediaTime, Mid, NackEntry, ReportList, Rtcp, RtpHeader};
use crate::rtp_::{Pt, Rid, RtcpFb, SenderInfo, SenderReport, Ssrc};
use crate::rtp_::{SRTP_BLOCK_SIZE, SeqNo};
use crate::session::PacketReceipt;
use crate::stats::StatsSnapshot;
use crate::util::value_history::ValueHistory;
use crate::util::{InstantExt, already_happened, not_happening};

use super::rtx_cache::RtxCache;
use super::send_queue::SendQueue;
use super::send_stats::StreamTxStats;
use super::{TxHeader, TxPacket};

/// The smallest size of padding for which we attempt to use a spurious resend. For padding
/// requests smaller than this we use blank packets instead.
const MIN_SPURIOUS_PADDING_SIZE: usize = 50;

pub const DEFAULT_RTX_CACHE_DURATION: Duration = Duration::from_secs(3);

pub const DEFAULT_RTX_RATIO_CAP: Option<f32> = Some(0.15f32);

/// A recently sampled view of an outgoing stream's send queue.
///
/// str0m refreshes this information as part of its regular pacer and bandwidth-estimation
/// processing. Reading it does not cause a new value to be computed.
pub trait StreamTxQueueInfo {
    /// When this queue information was sampled.
    ///
    /// Compare this value between reads to determine whether str0m has computed a new sample.
    fn created_at(&self) -> Instant;

    /// Total number of bytes in the queue.
    fn byte_size(&self) -> usize;

    /// Total number of packets in the queue.
    fn packet_count(&self) -> usize;

    /// When the first packet still in the queue was enqueued.
    fn first_unsent(&self) -> Option<Instant>;
}

impl StreamTxQueueInfo for QueueSnapshot {
    fn created_at(&self) -> Instant {
        self.created_at
    }

    fn byte_size(&self) -> usize {
        self.byte_size
    }

    fn packet_count(&self) -> usize {
        self.packet_count as usize
    }

    fn first_unsent(&self) -> Option<Instant> {
        self.first_unsent
    }
}

/// Outgoing encoded stream.
///
/// A stream is a primary SSRC + optional RTX SSRC.
///
/// This is RTP level API. For frame level API see [`Rtc::writer`][crate::Rtc::writer].
#[derive(Debug)]
#[repr(C, align(64))]
pub struct StreamTx {
    // Parloir patch 88: the fields in the order they are laid out (`repr(C)`), from the start
    // of a cache line (`align(64)`): first what a pacer pass reads of each stream it looks at
    // (`queue_state`, and `Streams`' padding candidate and pruning of the touched list: five
    // lines), then what sending a packet writes, then the rest. In a large room a stream's
    // state is out of the cache by the time its connection's next pass comes; laid out by
    // the compiler, those fields lay on seven to nine of the struct's 26 cache lines.
    /// Queue of packets to send.
    ///
    /// The packets here do not have correct sequence numbers, header extension values etc.
    /// They must be updated when we are about to send.
    send_queue: SendQueue,

    /// The queue information sampled during the latest pacer update.
    pub(crate) queue_info: Option<QueueSnapshot>,

    /// Scheduled resends due to NACK or spurious padding.
    resends: VecDeque<Resend>,

    /// Requested padding, that has not been turned into packets yet.
    padding: usize,

    /// Identifier of a resend (RTX) stream. If we are doing resends.
    rtx: Option<Ssrc>,

    /// Unique identifier of the remote encoded stream.
    ssrc: Ssrc,

    /// The Media mid and rid this stream belongs to.
    midrid: MidRid,

    // The _main_ PT to use for padding. This is main PT, since the poll_packet() loop
    // figures out the param.resend() RTX PT using main.
    pt_for_padding: Option<Pt>,

    /// Whether this sender is to be unpaced in BWE situations.
    ///
    /// Audio defaults to not being paced.
    unpaced: Option<bool>,

    /// Set on first handle_timeout.
    kind: Option<MediaKind>,

    /// Parloir patch: listed in `Streams`' touched streams (see there).
    pub(crate) touched: bool,

    /// If we have a pending incoming keyframe request.
    pending_request_keyframe: Option<KeyframeRequestKind>,

    /// If we have a pending incoming remb request.
    pending_request_remb: Option<Bitrate>,

    /// If we are doing seq_no ourselves (frame mode or SSRC 0 probing).
    seq_no: SeqNo,

    /// If we are using RTX, this is the seq no counter.
    seq_no_rtx: SeqNo,

    /// The last seq_no that we sent, either by increasing seq_no ourselves (media API), or by
    /// direct RTP mode writing.
    last_sent_seq_no: SeqNo,

    /// When we last sent something for this encoded stream, packet or RTCP.
    last_used: Instant,

    /// Last written media + wallclock time.
    rtp_and_wallclock: Option<(u32, Instant)>,

    /// The last main payload clock rate that was sent.
    clock_rate: Option<Frequency>,

    /// Determines retransmitted bytes ratio value to clear queued resends.
    rtx_ratio_cap: Option<f32>,

    // downsampled rtx ratio (value, last calculation)
    rtx_ratio: (f32, Instant),

    /// Whether a receiver report has been received for this SSRC, thus acknowledging
    /// that the receiver has bound the Mid/Rid tuple to the SSRC and no longer
    /// needs to be sent on every packet
    remote_acked_ssrc: bool,

    // Same as `remote_acked_ssrc`, but for the RTX SSRC
    remote_acked_rtx_ssrc: bool,

    /// MTU warn threshold; used to cap spurious-padding RTX cache lookups.
    mtu_warn: usize,

    /// Last time we produced a SR.
    ///
    /// Parloir patch 44: the last report time, whether a report was sent then or skipped
    /// (`report_and_update`).
    last_sender_report: Instant,

    /// Parloir patch 44: the report time before `last_sender_report`.
    sender_report_before: Instant,

    /// Set on first handle_timeout.
    cname: Option<String>,

    /// Dummy packet for resends. Used between poll_packet and poll_packet_padding
    blank_packet: TxPacket,

    /// Statistics of outgoing data.
    ///
    /// Stats are use to calculate the rtx ratio also when statistics events are disabled.
    stats: StreamTxStats,

    /// Cache of sent packets to be able to answer to NACKs as well as
    /// sending spurious resends as padding.
    rtx_cache: RtxCache,
}

/// RTP packet data to enqueue on a direct RTP send stream.
///
/// The payload is the RTP payload only, without the RTP header.
///
/// Optional RTP fields default to the common unmarked non-nackable packet with
/// no header extension values, no CSRC entries and no VP8 rewrite.
#[derive(Debug)]
pub struct RtpWrite {
    pt: Pt,
    seq_no: SeqNo,
    time: u32,
    wallclock: Instant,
    marker: bool,
    ext_vals: ExtensionValues,
    nackable: bool,
    payload: Arc<[u8]>,
    csrc_count: usize,
    csrc: [u32; 15],
    vp8_patch: Option<Vp8Patch>,
    /// Parloir patch 26: `payload` is a frame shared with other connections and this is the
    /// packet's piece of it.
    piece: Option<Piece>,
}

impl RtpWrite {
    /// Create a direct RTP write command.
    ///
    /// The `payload` argument is expected to be only the RTP payload, not the
    /// RTP packet header.
    ///
    /// * `pt` Payload type. Declared in the [`Media`][crate::media::Media] this
    ///        encoded stream belongs to.
    /// * `seq_no` Extended sequence number to use for this packet. Only the low
    ///            16 bits are carried in the RTP header. The upper bits
    ///            (`seq_no.roc()`) supply the SRTP rollover counter (ROC) used
    ///            for the per-packet IV and authentication. See below for
    ///            initializing a stream with a nonzero ROC.
    /// * `time` Time in whatever the clock rate is for the media in question
    ///          (normally 90_000 for video and 48_000 for audio).
    /// * `wallclock` Real world time that corresponds to the media time in the
    ///               RTP packet. For an SFU, this can be hard to know because
    ///               RTP packets typically only contain the media time (RTP
    ///               time). In the simplest SFU setup, the wallclock could
    ///               simply be the arrival time of the incoming RTP data. For
    ///               better synchronization the SFU probably needs to weigh in
    ///               clock drifts and data provided via the statistics, receiver
    ///               reports etc.
    /// * `payload` RTP packet payload, without header.
    ///
    /// Optional fields default to an unmarked packet with no header extension
    /// values, no CSRC entries, no VP8 patch and no NACK support.
    /// [`RtpWrite::marker`] for video frame boundaries,
    /// [`RtpWrite::ext_vals`] for RTP header extension values,
    /// [`RtpWrite::nackable`] for packets that may answer incoming NACKs,
    /// [`RtpWrite::csrc`] for contributing source identifiers,
    /// [`RtpWrite::vp8_patch`] to apply a prevalidated VP8 payload descriptor patch during RTP serialization.
    ///
    /// # Initializing the rollover counter
    ///
    /// The ROC is not carried in the RTP header or transmitted by str0m in the
    /// SRTP packet. A fresh receiver starts at ROC 0. To start a stream with a
    /// higher ROC, the application must communicate that ROC and the stream's
    /// SSRC to the receiver out of band, for example through its signaling
    /// channel, and initialize the receiver before sending media. Otherwise,
    /// sender and receiver use different packet indices and SRTP authentication
    /// fails. See [RFC 3711 section 3.3.1][roc].
    ///
    /// On the sender, the extended sequence number determines the ROC:
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use str0m::media::Pt;
    /// # use str0m::rtp::{RtpWrite, SeqNo, StreamTx};
    /// # fn send(stream: &mut StreamTx, pt: Pt, wallclock: Instant, payload: &[u8]) {
    /// let seq_no: SeqNo = 100_000.into();
    /// assert_eq!(seq_no.roc(), 1);
    /// assert_eq!(seq_no.as_u16(), 34_464);
    ///
    /// // First communicate (stream.ssrc(), seq_no.roc()) out of band and
    /// // arrange for the receiver to initialize its ROC as shown below.
    /// stream.write_rtp(RtpWrite::new(pt, seq_no, 0, wallclock, payload));
    /// # }
    /// ```
    ///
    /// On a str0m receiver, use [`StreamRx::reset_roc`][crate::rtp::StreamRx::reset_roc]
    /// with the signaled ROC before handling the first SRTP packet. This example
    /// assumes the media identified by `mid` has already been declared:
    ///
    /// ```
    /// # use str0m::Rtc;
    /// # use str0m::media::Mid;
    /// # use str0m::rtp::Ssrc;
    /// # fn initialize_receiver(rtc: &mut Rtc, mid: Mid, ssrc: Ssrc, signaled_roc: u64) {
    /// // `ssrc` and `signaled_roc` come from the application's signaling channel.
    /// let mut direct = rtc.direct_api();
    /// let stream = direct.expect_stream_rx(ssrc, None, mid, None);
    /// stream.reset_roc(signaled_roc); // 1 for the sender example above.
    /// # }
    /// ```
    ///
    /// Continue supplying extended sequence numbers on the sender across
    /// rollovers; the receiver tracks subsequent rollovers automatically.
    /// Without out-of-band ROC initialization, start the outgoing stream with
    /// `seq_no < 65_536`. In particular, forwarding a long-running source's
    /// extended sequence numbers to a new receiver requires either signaling
    /// its initial ROC or rebasing the outgoing sequence numbers for that receiver.
    ///
    /// [roc]: https://www.rfc-editor.org/rfc/rfc3711.html#section-3.3.1
    pub fn new(
        pt: Pt,
        seq_no: SeqNo,
        time: u32,
        wallclock: Instant,
        payload: impl Into<Arc<[u8]>>,
    ) -> Self {
        Self {
            pt,
            seq_no,
            time,
            wallclock,
            marker: false,
            ext_vals: ExtensionValues::default(),
            nackable: false,
            payload: payload.into(),
            csrc_count: 0,
            csrc: [0; 15],
            vp8_patch: None,
            piece: None,
        }
    }

    /// Set the RTP marker bit.
    pub fn marker(mut self, marker: bool) -> Self {
        self.marker = marker;
        self
    }

    /// Set RTP header extension values.
    pub fn ext_vals(mut self, ext_vals: ExtensionValues) -> Self {
        self.ext_vals = ext_vals;
        self
    }

    /// Set whether this RTP packet should respond to incoming NACKs.
    pub fn nackable(mut self, nackable: bool) -> Self {
        self.nackable = nackable;
        self
    }

    /// Set contributing source identifiers.
    ///
    /// # Panics
    ///
    /// Panics if more than 15 entries are supplied.
    pub fn csrc(mut self, csrc: &[u32]) -> Self {
        assert!(csrc.len() <= 15, "CSRC count must be <= 15");

        self.csrc = [0; 15];
        self.csrc[..csrc.len()].copy_from_slice(csrc);
        self.csrc_count = csrc.len();
        self
    }

    /// Apply a prevalidated VP8 payload descriptor patch during RTP serialization.
    ///
    /// Build the patch with [`Vp8Descriptor::patch`][crate::rtp::Vp8Descriptor::patch]
    /// when the caller already parsed the VP8 payload descriptor before
    /// constructing this write command.
    pub fn vp8_patch(mut self, patch: Vp8Patch) -> Self {
        self.vp8_patch = Some(patch);
        self
    }

    /// Parloir patch 26: the packet's payload is `piece` of the frame given as the payload.
    /// (The payloader queues its pieces through [`StreamTx::queue_packet`] since patch 74.)
    #[cfg(test)]
    pub(crate) fn piece(mut self, piece: Piece) -> Self {
        self.piece = Some(piece);
        self
    }
}

impl StreamTx {
    /// Parloir patch 49: the fields a write touches (`write_rtp`, the queue's state and the
    /// m-line's lookup by mid and rid), by their offsets in the stream in `slot`. An
    /// `Option<StreamTx>` keeps its stream at its start (the stream's own fields, a `Vec`'s
    /// pointer among them, give the option its niche; `the_slot_holds_the_stream_at_its_start`);
    /// were it not so, only the prefetches would miss.
    pub(crate) fn write_lines(slot: *const Option<StreamTx>, f: &mut impl FnMut(*const u8)) {
        use std::mem::offset_of;
        const HOT: [usize; 6] = [
            offset_of!(StreamTx, send_queue),
            offset_of!(StreamTx, last_used),
            offset_of!(StreamTx, queue_info),
            offset_of!(StreamTx, rtp_and_wallclock),
            offset_of!(StreamTx, ssrc),
            offset_of!(StreamTx, midrid),
        ];
        let base = slot as *const u8;
        for offset in HOT {
            f(base.wrapping_add(offset));
        }
    }

    /// Parloir patch 52: what sending the stream's next queued packet touches first of the
    /// stream in `slot` (`poll_packet`: the queue, the resends, the counters and the resend
    /// ratio's history, the cache of sent packets, the header's fields), given to `f` by
    /// address (not read: for a prefetch).
    pub(crate) fn poll_lines(slot: *const Option<StreamTx>, f: &mut impl FnMut(*const u8)) {
        use std::mem::offset_of;
        let stats = offset_of!(StreamTx, stats);
        let history = stats + offset_of!(StreamTxStats, bytes_transmitted);
        const HOT: [usize; 10] = [
            offset_of!(StreamTx, send_queue),
            offset_of!(StreamTx, resends),
            offset_of!(StreamTx, last_used),
            offset_of!(StreamTx, last_sent_seq_no),
            offset_of!(StreamTx, rtx_cache),
            offset_of!(StreamTx, rtx_ratio),
            offset_of!(StreamTx, pt_for_padding),
            offset_of!(StreamTx, remote_acked_ssrc),
            offset_of!(StreamTx, ssrc),
            offset_of!(StreamTx, midrid),
        ];
        let base = slot as *const u8;
        for offset in HOT {
            f(base.wrapping_add(offset));
        }
        f(base.wrapping_add(stats + offset_of!(StreamTxStats, bytes)));
        // The history's sum, then its buckets (it spans two lines).
        f(base.wrapping_add(history));
        f(base.wrapping_add(history + 64));
    }

    /// Parloir patch 52: what sending the next queued packet touches that the lines of
    /// [`StreamTx::poll_lines`] point at: the packet at the queue's head, and the slot of
    /// the cache of sent packets it goes to (the one after the last cached).
    pub(crate) fn poll_next_lines(&self, f: &mut impl FnMut(*const u8)) {
        if let Some(head) = self.send_queue.head_addr() {
            f(head);
            f(head.wrapping_add(std::mem::size_of::<TxPacket>() - 1));
        }
        self.rtx_cache.next_slot_lines(f);
    }

    /// The cache of sent packets (tests of `poll_next_lines`).
    #[cfg(test)]
    pub(crate) fn rtx_cache(&self) -> &RtxCache {
        &self.rtx_cache
    }

    pub(crate) fn new(
        ssrc: Ssrc,
        rtx: Option<Ssrc>,
        midrid: MidRid,
        enable_stats: bool,
        mtu_warn: usize,
    ) -> Self {
        debug!("Create StreamTx for SSRC: {}", ssrc);

        StreamTx {
            ssrc,
            rtx,
            midrid,
            kind: None,
            cname: None,
            clock_rate: None,
            seq_no: SeqNo::default(),
            seq_no_rtx: SeqNo::default(),
            last_sent_seq_no: SeqNo::default(),
            last_used: already_happened(),
            rtp_and_wallclock: None,
            send_queue: SendQueue::new(),
            queue_info: None,
            unpaced: None,
            resends: VecDeque::new(),
            padding: 0,
            blank_packet: TxPacket::blank(),
            rtx_cache: RtxCache::new(2000, DEFAULT_RTX_CACHE_DURATION),
            rtx_ratio_cap: DEFAULT_RTX_RATIO_CAP,
            last_sender_report: already_happened(),
            sender_report_before: already_happened(),
            pending_request_keyframe: None,
            touched: false,
            pending_request_remb: None,
            stats: StreamTxStats::new(enable_stats),
            rtx_ratio: (0.0, already_happened()),
            pt_for_padding: None,
            remote_acked_ssrc: false,
            remote_acked_rtx_ssrc: false,
            mtu_warn,
        }
    }

    pub(crate) fn new_probe(mtu_warn: usize) -> Self {
        let mut stream = Self::new(
            0.into(),
            None,
            MidRid(crate::media::MID_PROBE, None),
            false,
            mtu_warn,
        );
        stream.unpaced = Some(false);
        stream
    }

    pub(crate) fn set_probe_media(&mut self, mid: Mid, pt: Pt) {
        debug_assert!(self.ssrc.is_probe());
        self.midrid = MidRid(mid, None);
        self.pt_for_padding = Some(pt);
    }

    /// The (primary) SSRC of this encoded stream.
    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }

    /// The resend (RTX) SSRC of this encoded stream.
    pub fn rtx(&self) -> Option<Ssrc> {
        self.rtx
    }

    /// Mid for this stream.
    ///
    /// In SDP this corresponds to m-line and "Media".
    pub fn mid(&self) -> Mid {
        self.midrid.mid()
    }

    /// Rid for this stream.
    ///
    /// This is used to separate streams with the same [`Mid`] when using simulcast.
    pub fn rid(&self) -> Option<Rid> {
        self.midrid.rid()
    }

    /// Information sampled during the latest pacer update for this stream's send queue.
    ///
    /// This is `None` until the pacer has observed the stream for the first time.
    /// Calling this method does not refresh the information; use
    /// [`StreamTxQueueInfo::created_at()`] to determine whether a new sample is available.
    pub fn queue_info(&self) -> Option<&dyn StreamTxQueueInfo> {
        self.queue_info
            .as_ref()
            .map(|info| info as &dyn StreamTxQueueInfo)
    }

    /// Configure the RTX (resend) cache.
    ///
    /// This determines how old incoming NACKs we can reply to.
    ///
    /// `rtx_ratio_cap` determines when to clear queued resends because of too many resends,
    /// i.e. if `tx_sum / (rtx_sum + tx_sum) > rtx_ratio_cap`. `None` disables this functionality
    /// so all queued resends will be sent.
    ///
    /// The default is 1024 packets over 3 seconds and RTX cache drop ratio of 0.15.
    pub fn set_rtx_cache(
        &mut self,
        max_packets: usize,
        max_age: Duration,
        rtx_ratio_cap: Option<f32>,
    ) {
        // Dump old cache to avoid having to deal with resizing logic inside the cache impl.
        self.rtx_cache = RtxCache::new(max_packets, max_age);
        if rtx_ratio_cap.is_some() {
            self.stats
                .bytes_transmitted
                .get_or_insert_with(ValueHistory::default);
            self.stats
                .bytes_retransmitted
                .get_or_insert_with(ValueHistory::default);
        } else {
            self.stats.bytes_transmitted = None;
            self.stats.bytes_retransmitted = None;
        }
        self.rtx_ratio_cap = rtx_ratio_cap;
    }

    /// Set whether this stream is unpaced or not.
    ///
    /// This is only relevant when BWE (Bandwidth Estimation) is enabled. By default, audio is unpaced
    /// thus not held to a steady send rate by the Pacer.
    ///
    /// This overrides the default behavior.
    pub fn set_unpaced(&mut self, unpaced: bool) {
        self.unpaced = Some(unpaced);
    }

    /// Write RTP packet to a send stream.
    ///
    /// The write command carries the RTP payload and optional RTP metadata.
    pub fn write_rtp(&mut self, rtp: RtpWrite) {
        let RtpWrite {
            pt,
            seq_no,
            time,
            wallclock,
            marker,
            ext_vals,
            nackable,
            payload,
            csrc_count,
            csrc,
            vp8_patch,
            piece,
        } = rtp;

        // Parloir patch 28: queued and cached in compact form.
        let header = TxHeader::new(self.ssrc, time, pt, marker, csrc_count, csrc, ext_vals);
        self.queue_packet(
            seq_no, time, wallclock, header, payload, vp8_patch, piece, nackable,
        );
    }

    /// Parloir patch 74: queues a packet whose header is made (what [`StreamTx::write_rtp`]
    /// does after making it), for the payloader's sinks, which make the header from their
    /// frame's extension values without an [`RtpWrite`] in between.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn queue_packet(
        &mut self,
        seq_no: SeqNo,
        time: u32,
        wallclock: Instant,
        header: TxHeader,
        payload: Arc<[u8]>,
        vp8_patch: Option<Vp8Patch>,
        piece: Option<Piece>,
        nackable: bool,
    ) {
        let first_call = self.rtp_and_wallclock.is_none();

        if first_call && seq_no.roc() > 0 {
            // TODO: make it possible to supress this.
            warn!(
                "First SeqNo has non-zero ROC ({}), which needs out-of-band signalling \
                to remote peer",
                seq_no.roc()
            );
        }

        self.rtp_and_wallclock = Some((time, wallclock));

        let packet = TxPacket {
            seq_no,
            header,
            payload,
            vp8_patch,
            piece,
            nackable,
            // The overall idea for str0m is to only drive time forward from handle_input. If we
            // used a "now" argument to write_rtp(), we effectively get a second point that also need
            // to move time forward _for all of Rtc_ – that's too complicated.
            //
            // Instead we set a future timestamp here. When time moves forward in the "regular way",
            // in handle_timeout() we delegate to self.send_queue.handle_timeout() to mark the enqueued
            // timestamp of all packets that are about to be sent.
            timestamp: not_happening(),
        };

        self.send_queue.push(packet);
    }

    fn padding_enabled(&self) -> bool {
        (self.ssrc.is_probe() || self.rtx.is_some()) && self.pt_for_padding.is_some()
    }

    pub(crate) fn poll_packet(
        &mut self,
        now: Instant,
        exts: &ExtensionMap,
        twcc: Option<&mut u64>,
        params: &[PayloadParams],
        buf: &mut Vec<u8>,
    ) -> Option<PacketReceipt> {
        let mid = self.midrid.mid();
        let rid = self.midrid.rid();
        let is_probe = self.ssrc.is_probe();
        if is_probe && twcc.is_none() {
            return None;
        }
        let ssrc_rtx = self.rtx;
        let remote_acked_ssrc = self.remote_acked_ssrc;
        let remote_acked_rtx_ssrc = self.remote_acked_rtx_ssrc;

        let (next, is_padding) = if let Some(next) = self.poll_packet_resend(now) {
            (next, false)
        } else if let Some(next) = self.poll_packet_regular(now) {
            (next, false)
        } else {
            let next = self.poll_packet_padding(now)?;
            (next, true)
        };

        let pop_send_queue = next.kind == NextPacketKind::Regular;

        // Parloir patch 28: the header is built from the packet's compact one, on the stack,
        // for each time the packet goes out (the cached header was cloned before). MID and
        // RID are set here, never kept in the queued or cached packet.
        let mut header = next.pkt.header.to_rtp_header(next.seq_no);

        // <https://webrtc.googlesource.com/src/+/refs/heads/main/modules/rtp_rtcp/source/rtp_sender.cc#537>
        // BUNDLE requires that the receiver "bind" the received SSRC to the values
        // in the MID and/or (R)RID header extensions if present. Therefore, the
        // sender can reduce overhead by omitting these header extensions once it
        // knows that the receiver has "bound" the SSRC.
        // <snip>
        // The algorithm here is fairly simple: Always attach a MID and/or RID (if
        // configured) to the outgoing packets until an RTCP receiver report comes
        // back for this SSRC. That feedback indicates the receiver must have
        // received a packet with the SSRC and header extension(s), so the sender
        // then stops attaching the MID and RID.
        if !remote_acked_ssrc {
            header.ext_vals.mid = Some(mid);
            header.ext_vals.rid = rid;
        }

        let pt_main = header.payload_type;

        // The pt in next.pkt is the "main" pt, or a RED PT folded onto its primary codec.
        let Some(param) = params
            .iter()
            .find(|p| p.pt() == pt_main || p.red() == Some(pt_main))
        else {
            // PT does not exist in the connected media.
            warn!("Media is missing PT ({}) used in RTP packet", pt_main);

            // Get rid of this packet we can't send.
            if pop_send_queue {
                self.send_queue.pop(now);
            }

            return None;
        };

        let mut set_pt_for_padding = None;
        let mut set_cr = None;

        match next.kind {
            NextPacketKind::Regular => {
                // A RED-wrapped packet (pt_main is the RED PT) must not be nackable: an RTX
                // resend carries the RTX PT with the primary codec's apt, so the peer would
                // parse the RED bytes as raw primary codec. RED carries its own redundancy, so
                // it does not need RTX anyway. Plain packets on this PT stay nackable.
                let is_red_packet = param.red() == Some(pt_main);
                let rtx_possible = param.resend().is_some() && !is_red_packet;

                if rtx_possible {
                    // Remember PT We want to set these directly on `self` here, but can't
                    // because we already have a mutable borrow. We are using pt_main
                    // since the above loop figuring out param needs to be correct also
                    // for the NextPacketKind::Blank case.
                    set_pt_for_padding = Some(pt_main);
                } else {
                    // If the PT we're sending on doesn't have a corresponding RTX PT,
                    // the packet is de-facto not nackable.
                    //
                    // This blocks incoming NACK requests and thus ensures there are no
                    // entries in self.retries without a RTX PT.
                    next.pkt.nackable = false;
                }

                set_cr = Some(param.spec().rtp_clock_rate());

                header.ext_vals.rid_repair = None;
            }
            NextPacketKind::Blank(_) if is_probe => {
                // Non-media probes use their negotiated main PT and own sequence
                // counter, rather than rewriting the header for an RTX stream.
                header.has_padding = true;
                header.ssrc = 0.into();
                // The probe's SSRC is never reported on, so its MID always goes along.
                header.ext_vals.mid = Some(mid);
            }
            NextPacketKind::Resend(_) | NextPacketKind::Blank(_) => {
                // * For the Resend case, we will not have accepted/cached the packet unless
                //   we have a RTX PT (see logic setting next.pkt.nackable above).
                // * For the Blank case, we will only have produced blank packets if we
                //   got a "real" PTX RT, either via set_pt_for_padding above, or via
                //   the on_first_timeout() further down.
                // Either way, unwrapping this optional _should_ be correct.
                let pt_rtx = param.resend().expect("PT for resend or blank");

                header.payload_type = pt_rtx;
                header.ssrc = ssrc_rtx.expect("Should have RTX SSRC for resends");

                header.ext_vals.rid = None;
                header.ext_vals.rid_repair = rid;

                if !remote_acked_rtx_ssrc {
                    header.ext_vals.mid = Some(mid);
                }
            }
        };

        // These need to match `Extension::is_supported()` so we are sending what we are
        // declaring we support.

        // Absolute Send Time might not be enabled for this m-line.
        if exts.id_of(Extension::AbsoluteSendTime).is_some() {
            header.ext_vals.abs_send_time = Some(now);
        }

        // TWCC might not be enabled for this m-line.
        if let Some(twcc) = twcc {
            header.ext_vals.transport_cc = Some(*twcc as u16);
            *twcc += 1;
        }

        // Parloir patch 27: the buffer stays at its full length from one packet to the next
        // (the packet is `buf[..packet_len]`), so it is zeroed once, not up to 2 000 bytes
        // per packet. Every byte of a packet is written below: the header (its extension
        // padding included), the payload, or the padding's zeroes.
        if buf.len() < DATAGRAM_MAX_PACKET_SIZE {
            buf.resize(DATAGRAM_MAX_PACKET_SIZE, 0);
        }

        let header_len = header.write_to(buf, exts);
        assert!(header_len % 4 == 0, "RTP header must be multiple of 4");
        header.header_len = header_len;

        let mut body_out = &mut buf[header_len..];

        // For resends, the original seq_no is inserted before the payload.
        let mut original_seq_len = 0;
        if let NextPacketKind::Resend(orig_seq_no) = next.kind {
            original_seq_len = RtpHeader::write_original_sequence_number(body_out, orig_seq_no);
            body_out = &mut body_out[original_seq_len..];
        }

        let pkt = &next.pkt;

        let body_len = match next.kind {
            NextPacketKind::Regular | NextPacketKind::Resend(_) => {
                // Parloir patch 26: a piece of a shared frame, or the payload; VP8 patched.
                let body_len = pkt.payload_len();
                pkt.write_payload(body_out);

                // media packets are sent unpadded: the SRTP ciphers handle
                // arbitrary body lengths (the CTR scratch alignment is internal
                // to protect_rtp), and RTP-level padding breaks SFUs that
                // re-marshal forwarded packets without it while keeping the P
                // bit (observed with LiveKit -> Chrome, str0m issue #1014)
                body_len + original_seq_len
            }
            NextPacketKind::Blank(len) => {
                let len = RtpHeader::create_padding_packet(
                    &mut buf[..],
                    header_len,
                    len,
                    SRTP_BLOCK_SIZE,
                );

                if len == 0 {
                    return None;
                }

                len
            }
        };

        let packet_len = header_len + body_len;

        #[cfg(feature = "_internal_dont_use_log_stats")]
        {
            let queued_at = match next.kind {
                NextPacketKind::Regular => Some(pkt.timestamp),
                _ => {
                    // TODO: We don't have queued at stats for Resends or blank padding.
                    None
                }
            };

            if let Some(delay) = queued_at.map(|i| now.duration_since(i)) {
                crate::log_stat!("QUEUE_DELAY", header.ssrc, delay.as_secs_f64() * 1000.0);
            }
        }

        let seq_no = next.seq_no;
        if next.kind == NextPacketKind::Regular {
            self.last_sent_seq_no = seq_no;
        }

        self.last_used = now;

        // Padding comes in two forms, "spurious resends" of sent packets where
        // the remote side didn't ask for a resend. The other variant are blank
        // packets, containing nothing but zeroes. On media streams these use
        // _some_ RTX PT. A good pick is the RTX for the PT last used to send
        // regular media data.
        //
        // This is set here due to borrow checker.
        if set_pt_for_padding.is_some() && self.pt_for_padding != set_pt_for_padding {
            self.pt_for_padding = set_pt_for_padding;
        }

        if set_cr.is_some() && self.clock_rate != set_cr {
            self.clock_rate = set_cr;
        }

        if pop_send_queue {
            // poll_packet_regular leaves the packet in the head of the send_queue
            let pkt = self
                .send_queue
                .pop(now)
                .expect("head of send_queue to be there");
            if pkt.nackable {
                self.rtx_cache.cache_sent_packet(pkt, now);
            }
        }

        Some(PacketReceipt {
            header,
            seq_no,
            is_padding,
            payload_size: body_len,
            packet_len,
        })
    }

    fn rtx_ratio_downsampled(&mut self, now: Instant) -> f32 {
        assert!(
            self.stats.bytes_transmitted.is_some(),
            "rtx_ratio_cap must be enabled"
        );
        assert!(
            self.stats.bytes_retransmitted.is_some(),
            "rtx_ratio_cap must be enabled"
        );

        let (value, ts) = self.rtx_ratio;
        if now - ts < Duration::from_millis(50) {
            // not worth re-evaluating, return the old value
            return value;
        }

        // bytes stats refer to the last second by default
        self.stats
            .bytes_transmitted
            .as_mut()
            .unwrap()
            .purge_old(now);
        self.stats
            .bytes_retransmitted
            .as_mut()
            .unwrap()
            .purge_old(now);

        let bytes_transmitted = self.stats.bytes_transmitted.as_mut().unwrap().sum();
        let bytes_retransmitted = self.stats.bytes_retransmitted.as_mut().unwrap().sum();
        let ratio = bytes_retransmitted as f32 / (bytes_retransmitted + bytes_transmitted) as f32;
        let ratio = if ratio.is_finite() { ratio } else { 0_f32 };
        self.rtx_ratio = (ratio, now);
        ratio
    }

    fn poll_packet_resend(&mut self, now: Instant) -> Option<NextPacket<'_>> {
        // Parloir patch 47: the ratio only matters with resends queued (this ran for every
        // packet the stream sent).
        if self.resends.is_empty() {
            return None;
        }
        if let Some(ratio_cap) = self.rtx_ratio_cap {
            let ratio = self.rtx_ratio_downsampled(now);

            // If we hit the cap, stop doing resends by clearing those we have queued.
            if ratio > ratio_cap {
                self.resends.clear();
                return None;
            }
        }

        let seq_no = loop {
            let resend = self.resends.pop_front()?;

            let pkt = self.rtx_cache.get_cached_packet_by_seq_no(resend.seq_no);

            // The seq_no could simply be too old to exist in the buffer, in which
            // case we will not do a resend.
            let Some(pkt) = pkt else {
                continue;
            };

            // Cached packets must be nackable. This is ensured before adding the
            // entry to the self.rtx_cache.
            assert!(pkt.nackable);

            break pkt.seq_no;
        };

        // Borrow checker gymnastics.
        let pkt = self.rtx_cache.get_cached_packet_by_seq_no(seq_no).unwrap();

        let len = pkt.payload_len() as u64;
        self.stats.update_packet_counts(len, true);
        if let Some(h) = &mut self.stats.bytes_retransmitted {
            h.push(now, len);
        }

        let seq_no = self.seq_no_rtx.inc();

        let orig_seq_no = pkt.seq_no;

        Some(NextPacket {
            kind: NextPacketKind::Resend(orig_seq_no),
            seq_no,
            pkt,
        })
    }

    fn poll_packet_regular(&mut self, now: Instant) -> Option<NextPacket<'_>> {
        // exit via ? here is ok since that means there is nothing to send.
        // The packet remains in the head of the send queue until we
        // finish poll_packet, at which point we move it to the cache.
        let pkt = self.send_queue.peek()?;

        let len = pkt.payload_len() as u64;
        self.stats.update_packet_counts(len, false);
        if let Some(h) = &mut self.stats.bytes_transmitted {
            h.push(now, len)
        }

        let seq_no = pkt.seq_no;

        Some(NextPacket {
            kind: NextPacketKind::Regular,
            seq_no,
            pkt,
        })
    }

    fn poll_packet_padding(&mut self, _now: Instant) -> Option<NextPacket> {
        if !self.padding_enabled() {
            self.padding = 0;
            return None;
        }

        if self.padding == 0 {
            return None;
        }

        #[allow(clippy::unnecessary_operation)]
        'outer: {
            if !self.ssrc.is_probe() && self.padding > MIN_SPURIOUS_PADDING_SIZE {
                // Find a historic packet that is smaller than this max size. The max size
                // is a headroom since we can accept slightly larger padding than asked for.
                let max_size = (self.padding * 2).min(self.mtu_warn - MAX_RTP_OVERHEAD);

                let Some(pkt) = self.rtx_cache.get_cached_packet_smaller_than(max_size) else {
                    // Couldn't find spurious packet, try a blank packet instead.
                    break 'outer;
                };

                let orig_seq_no = pkt.seq_no;
                let seq_no = self.seq_no_rtx.inc();

                self.padding = self.padding.saturating_sub(pkt.payload_len());

                return Some(NextPacket {
                    kind: NextPacketKind::Resend(orig_seq_no),
                    seq_no,
                    pkt,
                });
            }
        };

        let seq_no = if self.ssrc.is_probe() {
            self.seq_no.inc()
        } else {
            self.seq_no_rtx.inc()
        };

        let pkt = &mut self.blank_packet;
        pkt.seq_no = seq_no;
        // Unwrap here is correct because self.padding_enabled() above checks the we got the PT set.
        pkt.header.payload_type = self.pt_for_padding.unwrap();

        let len = self
            .padding
            .clamp(SRTP_BLOCK_SIZE, MAX_BLANK_PADDING_PAYLOAD_SIZE);
        assert!(len <= 255); // should fit in a byte

        let charged_len = if self.ssrc.is_probe() {
            len.div_ceil(SRTP_BLOCK_SIZE) * SRTP_BLOCK_SIZE
        } else {
            len
        };
        self.padding = self.padding.saturating_sub(charged_len);

        Some(NextPacket {
            kind: NextPacketKind::Blank(len as u8),
            seq_no,
            pkt,
        })
    }

    fn is_audio(&self) -> bool {
        self.kind.is_some_and(|kind| kind.is_audio())
    }

    /// Parloir patch: whether its first timeout ran (which starts its sender reports).
    pub(crate) fn has_kind(&self) -> bool {
        self.kind.is_some()
    }

    pub(crate) fn sender_report_at(&self, intervals: RtcpReportIntervals) -> Instant {
        if self.kind.is_none() {
            // First handle_timeout sets the kind. No sender report until then.
            return not_happening();
        }
        self.last_sender_report + intervals.for_audio(self.is_audio())
    }

    pub(crate) fn poll_keyframe_request(&mut self) -> Option<KeyframeRequestKind> {
        self.pending_request_keyframe.take()
    }

    pub(crate) fn poll_remb_request(&mut self) -> Option<Bitrate> {
        self.pending_request_remb.take()
    }

    pub(crate) fn handle_rtcp(&mut self, now: Instant, fb: RtcpFb) {
        use RtcpFb::*;
        match fb {
            ReceptionReport(r) => {
                if let Some(rtx_ssrc) = self.rtx {
                    if rtx_ssrc == r.ssrc {
                        // Receiver has bound MidRid to RTX SSRC
                        self.remote_acked_rtx_ssrc = true;
                    }
                } else if r.ssrc == self.ssrc {
                    // Receiver has bound MidRid to SSRC
                    self.remote_acked_ssrc = true;
                }

                self.stats.update_with_rr(now, self.last_sent_seq_no, r)
            }
            Nack(_, list) => {
                self.stats.increase_nacks();
                let entries = list.into_iter();
                self.handle_nack(entries, now);
            }
            Pli(_) => {
                self.stats.increase_plis();
                self.pending_request_keyframe = Some(KeyframeRequestKind::Pli);
            }
            Fir(_) => {
                self.stats.increase_firs();
                self.pending_request_keyframe = Some(KeyframeRequestKind::Fir);
            }
            Remb(r) => {
                self.pending_request_remb = Some(Bitrate::from(r.bitrate as f64));
            }
            Twcc(_) => unreachable!("TWCC should be handled on session level"),
            _ => {}
        }
    }

    pub(crate) fn handle_nack(
        &mut self,
        entries: impl Iterator<Item = NackEntry>,
        now: Instant,
    ) -> Option<()> {
        // Turning NackEntry into SeqNo we need to know a SeqNo "close by" to lengthen the 16 bit
        // sequence number into the 64 bit we have in SeqNo.
        let seq_no = self.rtx_cache.last_cached_seq_no()?;
        let iter = entries.flat_map(|n| n.into_iter(seq_no));

        // Schedule all resends. They will be handled on next poll_packet
        for seq_no in iter {
            let Some(packet) = self.rtx_cache.get_cached_packet_by_seq_no(seq_no) else {
                // Packet was not available in RTX cache, it has probably expired.
                continue;
            };

            let resend = Resend {
                seq_no,
                queued_at: now,
                payload_size: packet.payload_len(),
            };
            self.resends.push_back(resend);
        }

        Some(())
    }

    /// Parloir patch 44: whether this stream's report time falls before `now` plus a quarter
    /// of its interval. A pass that reports the streams due also reports those due soon, so
    /// a connection's streams, made at different times, come to share a few report times
    /// (RFC 3550 6.3.1 spreads report intervals over 0.5 to 1.5 times the nominal one).
    pub(crate) fn need_sr(&self, now: Instant, intervals: RtcpReportIntervals) -> bool {
        let at = self.sender_report_at(intervals);
        at != not_happening() && now + intervals.for_audio(self.is_audio()) / 4 >= at
    }

    /// Parloir patch 44: at a report time, a sender report (and source description) only if
    /// the stream sent a packet since the report time before the last (RFC 3550 6.4: a
    /// participant that has not sent since then is no longer a sender). A skipped stream
    /// sends no RTCP for its SSRC: str0m's receiver reports cover receive streams only. A
    /// stream that never sent, or that paused, was sending a report each interval with no
    /// packets behind it (with an RTP time of zero for one that never sent).
    pub(crate) fn report_and_update(&mut self, now: Instant, feedback: &mut VecDeque<Rtcp>) {
        let sent =
            self.last_used != already_happened() && self.last_used >= self.sender_report_before;
        if sent {
            let sr = self.create_sender_report(now);

            trace!("Created feedback SR: {:?}", sr);
            feedback.push_back(Rtcp::SenderReport(sr));

            if let Some(ds) = self.create_sdes() {
                feedback.push_back(Rtcp::SourceDescription(ds));
            }
        }

        // Update timestamp to move time when next is created.
        self.sender_report_before = self.last_sender_report;
        self.last_sender_report = now;
    }

    fn create_sender_report(&self, now: Instant) -> SenderReport {
        SenderReport {
            sender_info: self.sender_info(now),
            reports: ReportList::new(),
        }
    }

    fn create_sdes(&self) -> Option<Descriptions> {
        // CNAME is set on first handle_timeout. No SDES before that.
        let cname = self.cname.as_ref()?;
        let mut s = Sdes {
            ssrc: self.ssrc,
            values: ReportList::new(),
        };
        s.values.push((SdesType::CNAME, cname.to_string()));

        let mut d = Descriptions {
            reports: Box::new(ReportList::new()),
        };
        d.reports.push(s);

        Some(d)
    }

    fn sender_info(&self, now: Instant) -> SenderInfo {
        let rtp_time = self.current_rtp_time(now).unwrap_or(MediaTime::ZERO);

        SenderInfo {
            ssrc: self.ssrc,
            ntp_time: now.to_system_time(),
            rtp_time,
            sender_packet_count: self.stats.packets as u32,
            sender_octet_count: self.stats.bytes as u32,
        }
    }

    fn current_rtp_time(&self, now: Instant) -> Option<MediaTime> {
        // This is the RTP time and the wallclock from the last written media.
        // We use that as an offset to current time (now), to calculate the
        // current RTP time.
        let (t_u32, w) = self.rtp_and_wallclock?;

        let clock_rate = self.clock_rate?;
        let t = MediaTime::new(t_u32 as u64, clock_rate);

        // Wallclock needs to be in the past.
        if w > now {
            let delta = w - now;
            debug!("write_rtp wallclock is in the future: {:?}", delta);
            return None;
        }
        let offset = now - w;

        // This might be in the wrong base.
        let rtp_time = t + offset.into();

        Some(rtp_time.rebase(clock_rate))
    }

    pub(crate) fn next_seq_no(&mut self) -> SeqNo {
        self.seq_no.inc()
    }

    pub(crate) fn last_packet(&self) -> Option<&[u8]> {
        if self.send_queue.is_empty() {
            self.rtx_cache.last_packet()
        } else {
            // Parloir patch 26: nothing for a piece of a shared frame (no packetizer that
            // makes pieces reads the previous packet).
            self.send_queue.last().and_then(|q| q.whole_payload())
        }
    }

    pub(crate) fn visit_stats(&mut self, snapshot: &mut StatsSnapshot, now: Instant) {
        self.stats.fill(snapshot, self.midrid, now);
    }

    pub(crate) fn queue_state(&mut self, now: Instant) -> QueueState {
        // The unpaced flag is set to a default value on first handle_timeout. The
        // default is to not pace audio. We unwrap default to "true" here to not
        // apply any pacing until we know what kind of content we are sending.
        let unpaced = self.unpaced.unwrap_or(true);

        // Padding needs a known PT and either RTX or the non-media probe SSRC.
        let use_for_padding = self.padding_enabled();

        let mut snapshot = self.send_queue.snapshot(now);

        if let Some(snapshot_resend) = self.queue_state_resend(now) {
            snapshot.merge(&snapshot_resend);
        }

        if let Some(snapshot_padding) = self.queue_state_padding(now) {
            snapshot.merge(&snapshot_padding);
        }

        self.queue_info = Some(snapshot);

        QueueState {
            midrid: self.midrid,
            unpaced,
            use_for_padding,
            snapshot,
        }
    }

    fn queue_state_resend(&self, now: Instant) -> Option<QueueSnapshot> {
        if self.resends.is_empty() {
            return None;
        }

        // Outstanding resends
        let mut snapshot = self
            .resends
            .iter()
            .fold(QueueSnapshot::default(), |mut snapshot, r| {
                snapshot.total_queue_time_origin += now.duration_since(r.queued_at);
                snapshot.byte_size += r.payload_size;
                snapshot.packet_count += 1;
                snapshot.first_unsent = snapshot
                    .first_unsent
                    .map(|i| i.min(r.queued_at))
                    .or(Some(r.queued_at));

                snapshot
            });
        snapshot.created_at = now;
        snapshot.update_priority(QueuePriority::Media);

        Some(snapshot)
    }

    fn queue_state_padding(&self, now: Instant) -> Option<QueueSnapshot> {
        if self.padding == 0 {
            return None;
        }

        if self.ssrc.is_probe() {
            return Some(QueueSnapshot {
                created_at: now,
                byte_size: self.padding,
                packet_count: self.padding.div_ceil(MAX_BLANK_PADDING_PAYLOAD_SIZE) as u32,
                first_unsent: Some(now),
                last_emitted: (self.last_used != already_happened()).then_some(self.last_used),
                priority: QueuePriority::Padding,
                ..Default::default()
            });
        }

        // TODO: Be more scientific about these factors.
        const AVERAGE_PADDING_PACKET_SIZE: usize = 800;
        const FAKE_PADDING_DURATION_MILLIS: usize = 5;

        let fake_packets = self.padding.div_ceil(AVERAGE_PADDING_PACKET_SIZE);
        let fake_millis = fake_packets * FAKE_PADDING_DURATION_MILLIS;
        let fake_duration = Duration::from_millis(fake_millis as u64);

        Some(QueueSnapshot {
            created_at: now,
            byte_size: self.padding,
            packet_count: fake_packets as u32,
            total_queue_time_origin: fake_duration,
            priority: QueuePriority::Padding,
            ..Default::default()
        })
    }

    pub(crate) fn padding_pt(&self) -> Option<Pt> {
        self.pt_for_padding
    }

    pub(crate) fn generate_padding(&mut self, padding: usize) {
        if !self.padding_enabled() {
            return;
        }
        self.padding += padding;
    }

    pub(crate) fn need_timeout(&self) -> bool {
        self.send_queue.need_timeout()
    }

    /// Parloir patch 43, tests: whether a reception report named this stream's SSRC.
    #[cfg(test)]
    pub(crate) fn remote_acked_ssrc(&self) -> bool {
        self.remote_acked_ssrc
    }

    /// Parloir patch: whether this stream can send padding.
    pub(crate) fn can_pad(&self) -> bool {
        self.padding_enabled()
    }

    /// Parloir patch: whether a keyframe or REMB request waits to be polled.
    pub(crate) fn has_pending_requests(&self) -> bool {
        self.pending_request_keyframe.is_some() || self.pending_request_remb.is_some()
    }

    /// Parloir patch: whether the first timeout has set this stream up.
    pub(crate) fn had_first_timeout(&self) -> bool {
        self.kind.is_some()
    }

    pub(crate) fn handle_timeout<'a>(
        &mut self,
        now: Instant,
        get_media: impl FnOnce() -> (&'a Media, &'a CodecConfig),
    ) {
        // If kind is None, this is the first time we ever get a handle_timeout.
        if self.kind.is_none() {
            let (media, config) = get_media();
            self.on_first_timeout(media, config);
        }

        self.send_queue.handle_timeout(now);
    }

    fn on_first_timeout(&mut self, media: &Media, config: &CodecConfig) {
        // Always set on first timeout.
        self.kind = Some(media.kind());
        self.cname = Some(media.cname().to_string());

        // Set on first timeout, if not set already by configuration.
        if self.unpaced.is_none() {
            // Default audio to be unpaced.
            self.unpaced = Some(media.kind().is_audio());
        }

        // To allow for sending padding on a newly created StreamTx, before any regular
        // packet has been sent, we need any main PT that has associated RTX. This is
        // later be overwritten when we send the first regular packet.
        if self.rtx.is_some() && self.pt_for_padding.is_none() {
            if let Some(pt) = media.first_pt_with_rtx(config) {
                trace!(
                    "StreamTx {:?} PT {} before first regular packet",
                    self.midrid, pt
                );
                self.pt_for_padding = Some(pt);

                // Setting the pt_for_rtx should enable RTX.
                assert!(self.padding_enabled());
            }
        }
    }

    /// Parloir patch 44: as if a packet had been sent now (for tests of the reports).
    #[cfg(test)]
    pub(crate) fn pretend_sent(&mut self, now: Instant) {
        self.last_used = now;
    }

    pub(crate) fn reset_buffers(&mut self) {
        self.send_queue.clear();
        self.queue_info = None;
        self.rtx_cache.clear();
        self.resends.clear();
        self.padding = 0;
    }

    /// Reset this stream to use a new SSRC and optionally a new RTX SSRC.
    ///
    /// This updates the SSRCs and resets all relevant internal fields.
    pub(crate) fn reset_ssrc(&mut self, new_ssrc: Ssrc, new_rtx: Option<Ssrc>) {
        // Update the SSRC and RTX
        self.ssrc = new_ssrc;
        self.rtx = new_rtx;

        // Reset sequence numbers
        self.seq_no = SeqNo::default();
        self.seq_no_rtx = SeqNo::default();

        // Reset timing related fields
        self.last_used = already_happened();
        self.rtp_and_wallclock = None;
        self.last_sender_report = already_happened();
        self.sender_report_before = already_happened();

        // Reset blank packet's SSRC
        self.blank_packet.header.ssrc = new_ssrc;

        // Clear any pending requests
        self.pending_request_keyframe = None;
        self.pending_request_remb = None;

        // Reset all statistics - preserve whether stats tracking is enabled
        let stats_enabled = self.stats.bytes_transmitted.is_some();
        self.stats = StreamTxStats::new(stats_enabled);
        self.rtx_ratio = (0.0, already_happened());
        self.remote_acked_ssrc = false;

        // Clear all buffers
        self.reset_buffers();
    }

    pub(crate) fn is_midrid(&self, midrid: MidRid) -> bool {
        midrid.special_equals(&self.midrid)
    }
}

struct NextPacket<'a> {
    kind: NextPacketKind,
    seq_no: SeqNo,
    pkt: &'a mut TxPacket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextPacketKind {
    Regular,
    Resend(SeqNo),
    Blank(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resend {
    seq_no: SeqNo,
    queued_at: Instant,
    payload_size: usize,
}

#[cfg(test)]
mod test {
    use super::*;

    /// Parloir patch: report intervals for `send_queue_states`.
    const INTERVALS: RtcpReportIntervals = RtcpReportIntervals {
        audio: Duration::from_secs(5),
        video: Duration::from_secs(1),
    };

    #[test]
    fn the_slot_holds_the_stream_at_its_start() {
        // `StreamTx::write_lines` finds a stream's fields by their offsets from its slot.
        let slot = Some(StreamTx::new_probe(1200));
        let stream = slot.as_ref().expect("a stream");
        assert_eq!(
            &slot as *const Option<StreamTx> as usize,
            stream as *const StreamTx as usize
        );
        let mut lines = vec![];
        StreamTx::write_lines(&slot, &mut |a| lines.push(a as usize));
        let at = |field: *const u8| field as usize;
        assert!(lines.contains(&at(&stream.send_queue as *const SendQueue as *const u8)));
        assert!(lines.contains(&at(&stream.midrid as *const MidRid as *const u8)));
    }

    #[test]
    fn regular_padding_does_not_search_probe_negotiation() {
        let mut streams = crate::streams::Streams::new(false, 1200, Duration::from_millis(1500));
        let stream =
            streams.declare_stream_tx(42.into(), Some(44.into()), MidRid("vid".into(), None));
        stream.pt_for_padding = Some(96.into());
        let queues: Vec<_> = streams
            .send_queue_states(Instant::now(), INTERVALS, |_, _| {
                panic!("ordinary padding must not check probe negotiation")
            })
            .collect();
        assert_eq!(queues.len(), 1);
        assert!(queues[0].use_for_padding);
    }

    // Parloir patch 63: the states go through the thread's list, which comes back to be used
    // by the next connection; two connections' states do not mix.
    #[test]
    fn queue_states_go_through_the_threads_list() {
        let now = Instant::now();
        let mut a = crate::streams::Streams::new(false, 1200, Duration::from_millis(1500));
        let mut b = crate::streams::Streams::new(false, 1200, Duration::from_millis(1500));
        for ssrc in [42, 43, 44] {
            a.declare_stream_tx(ssrc.into(), None, MidRid("vid".into(), None));
        }
        b.declare_stream_tx(50.into(), None, MidRid("aud".into(), None));
        let mids = |s: &mut crate::streams::Streams| -> Vec<String> {
            s.send_queue_states(now, INTERVALS, |_, _| true)
                .map(|q| q.midrid.mid().to_string())
                .collect()
        };
        let states = a.send_queue_states(now, INTERVALS, |_, _| true);
        assert_eq!(states.len(), 3, "the three streams");
        let list = states.states.as_ptr();
        drop(states);
        let again = b.send_queue_states(now, INTERVALS, |_, _| true);
        assert_eq!(again.states.as_ptr(), list, "the same list, handed back");
        assert_eq!(again.len(), 1, "only b's stream");
        drop(again);
        assert_eq!(mids(&mut a).iter().filter(|m| *m == "vid").count(), 3);
        assert_eq!(mids(&mut b).iter().filter(|m| *m == "aud").count(), 1);
        // One not handed back: the next call makes another, with the same states.
        std::mem::forget(a.send_queue_states(now, INTERVALS, |_, _| true));
        assert_eq!(mids(&mut a).iter().filter(|m| *m == "vid").count(), 3);
    }

    #[test]
    fn probe_absolute_send_time_follows_negotiated_extensions() {
        let now = Instant::now();
        let codecs = CodecConfig::new_with_defaults();
        for negotiated in [false, true] {
            let mut exts = ExtensionMap::empty();
            exts.set(1, Extension::RtpMid);
            exts.set(3, Extension::TransportSequenceNumber);
            if negotiated {
                exts.set(2, Extension::AbsoluteSendTime);
            }
            let mut stream = StreamTx::new_probe(1200);
            stream.set_probe_media("aud".into(), 111.into());
            stream.generate_padding(240);
            let mut twcc = 42;
            let mut buf = vec![];
            let receipt = stream
                .poll_packet(now, &exts, Some(&mut twcc), codecs.params(), &mut buf)
                .unwrap();
            assert_eq!(
                receipt.header.ext_vals.abs_send_time,
                negotiated.then_some(now)
            );
            let header = RtpHeader::parse(&buf[..receipt.packet_len], &exts).unwrap();
            assert_eq!(header.ext_vals.abs_send_time.is_some(), negotiated);
            assert_eq!(header.ext_vals.transport_cc, Some(42));
            assert!(header.ssrc.is_probe());
            assert!(header.has_padding);
        }
    }

    /// Parloir patch 26: packets that are pieces of a shared frame go out, and are resent,
    /// as the packetizer's copies would have been; the frame itself is not copied per packet.
    #[test]
    fn pieces_of_a_shared_frame_are_sent_and_resent_as_copies_would_be() {
        use crate::format::Codec;
        use crate::packet::{Packetizer, Vp8Packetizer};
        use crate::rtp_::{Extension, NackEntry};

        let now = Instant::now();
        let codecs = CodecConfig::new_with_defaults();
        let vp8 = codecs
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Vp8)
            .unwrap();
        let (pt, rtx_pt) = (vp8.pt(), vp8.resend().unwrap());
        let mut exts = ExtensionMap::empty();
        exts.set(1, Extension::RtpMid);
        let mut streams = crate::streams::Streams::new(false, 1200, Duration::from_millis(1500));
        let stream =
            streams.declare_stream_tx(42.into(), Some(43.into()), MidRid("vid".into(), None));

        let frame: Arc<[u8]> = (0..3000).map(|i| (i * 7) as u8).collect::<Vec<_>>().into();
        let pieces = Vp8Packetizer::default()
            .packetize_pieces(1000, &frame)
            .unwrap();
        let copies = Vp8Packetizer::default().packetize(1000, &frame).unwrap();
        assert_eq!(pieces.len(), 4);
        for (i, piece) in pieces.iter().enumerate() {
            let write = RtpWrite::new(pt, (i as u64).into(), 0, now, frame.clone()).piece(*piece);
            stream.write_rtp(write.nackable(true));
        }
        assert_eq!(Arc::strong_count(&frame), 5, "the packets share the frame");
        stream.send_queue.handle_timeout(now);

        let mut buf = vec![];
        for copy in &copies {
            let receipt = stream
                .poll_packet(now, &exts, None, codecs.params(), &mut buf)
                .expect("a packet");
            let body = &buf[receipt.header.header_len..receipt.packet_len];
            assert_eq!(body, &copy[..]);
            assert_eq!(receipt.payload_size, copy.len());
        }

        // A NACK of the third: the resend carries its original sequence number, then its
        // payload.
        let nack = NackEntry { pid: 2, blp: 0 };
        stream.handle_nack([nack].into_iter(), now);
        let receipt = stream
            .poll_packet(now, &exts, None, codecs.params(), &mut buf)
            .expect("the resend");
        assert_eq!(receipt.header.payload_type, rtx_pt);
        let body = &buf[receipt.header.header_len..receipt.packet_len];
        assert_eq!(&body[..2], &2_u16.to_be_bytes());
        assert_eq!(&body[2..], &copies[2][..]);
    }

    /// Parloir patch 47: resends stop once they are more than 15 % of the bytes sent over the
    /// last second (the queued ones dropped), and flow again once the window moved past them.
    #[test]
    fn resends_stop_at_the_ratio_cap_and_resume_when_the_window_moves_on() {
        use crate::format::Codec;
        use crate::rtp_::{Extension, NackEntry};

        let now = Instant::now();
        let codecs = CodecConfig::new_with_defaults();
        let vp8 = codecs
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Vp8)
            .unwrap();
        let (pt, rtx_pt) = (vp8.pt(), vp8.resend().unwrap());
        let mut exts = ExtensionMap::empty();
        exts.set(1, Extension::RtpMid);
        let mut streams = crate::streams::Streams::new(false, 1200, Duration::from_millis(1500));
        let stream =
            streams.declare_stream_tx(42.into(), Some(43.into()), MidRid("vid".into(), None));
        stream.set_rtx_cache(1000, Duration::from_millis(1500), DEFAULT_RTX_RATIO_CAP);

        let mut buf = vec![];
        // 20 packets of 1000 bytes.
        for i in 0..20u64 {
            let payload: Arc<[u8]> = vec![i as u8; 1000].into();
            stream.write_rtp(RtpWrite::new(pt, i.into(), 0, now, payload).nackable(true));
        }
        stream.send_queue.handle_timeout(now);
        for _ in 0..20 {
            stream
                .poll_packet(now, &exts, None, codecs.params(), &mut buf)
                .expect("a packet");
        }
        let mut resends = |stream: &mut StreamTx, at: Instant, pids: &[u16]| {
            let nacks = pids.iter().map(|&pid| NackEntry { pid, blp: 0 });
            stream.handle_nack(nacks, at);
            let mut sent = 0;
            while let Some(receipt) = stream.poll_packet(at, &exts, None, codecs.params(), &mut buf)
            {
                assert_eq!(receipt.header.payload_type, rtx_pt);
                sent += 1;
            }
            sent
        };
        // Four resends: 4 000 of 24 000 bytes, over the cap from the next evaluation on.
        let at = now + Duration::from_millis(10);
        assert_eq!(resends(stream, at, &[0, 1, 2, 3]), 4);
        let at = now + Duration::from_millis(100);
        assert_eq!(resends(stream, at, &[4, 5]), 0, "over the cap");
        assert!(stream.resends.is_empty(), "the queued resends are dropped");
        // Once the window has moved past them (the last second holds nothing), resends go out
        // again.
        let at = now + Duration::from_millis(1100);
        assert_eq!(resends(stream, at, &[6, 7]), 2);
    }

    /// Parloir patches 27 and 28: the poll buffer keeps its length from one packet to the next,
    /// and packets are queued and cached in compact form. Media packets of different sizes,
    /// a resend and padding, written over a buffer full of other bytes, equal the same
    /// packets written into a fresh buffer each; and their headers carry the MID, the
    /// transport-wide sequence number and (on the resend) the RTX payload type and SSRC.
    #[test]
    fn packets_written_over_a_used_buffer_equal_packets_written_into_a_fresh_one() {
        use crate::format::Codec;
        use crate::rtp_::{Extension, NackEntry};

        let now = Instant::now();
        let codecs = CodecConfig::new_with_defaults();
        let vp8 = codecs
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Vp8)
            .unwrap();
        let (pt, rtx_pt) = (vp8.pt(), vp8.resend().unwrap());
        let mut exts = ExtensionMap::empty();
        exts.set(1, Extension::RtpMid);
        exts.set(3, Extension::TransportSequenceNumber);
        exts.set(4, Extension::AudioLevel);

        let run = |reuse: bool| -> Vec<(RtpHeader, Vec<u8>)> {
            let mut streams =
                crate::streams::Streams::new(false, 1200, Duration::from_millis(1500));
            let stream =
                streams.declare_stream_tx(42.into(), Some(43.into()), MidRid("vid".into(), None));
            // The RTX sequence numbers start at random; the same in both runs.
            stream.seq_no_rtx = 1000.into();
            for (i, len) in [1000_usize, 10, 500].into_iter().enumerate() {
                let payload: Vec<u8> = (0..len).map(|b| (b * 3 + i) as u8).collect();
                let mut ext_vals = ExtensionValues::default();
                ext_vals.audio_level = (i == 1).then_some(-42);
                let write = RtpWrite::new(pt, (i as u64).into(), 90 * i as u32, now, payload);
                stream.write_rtp(write.ext_vals(ext_vals).nackable(true));
            }
            stream.send_queue.handle_timeout(now);

            let mut used = vec![0xaa_u8; DATAGRAM_MAX_PACKET_SIZE];
            let mut twcc = 0;
            let mut packets = vec![];
            let mut poll = |stream: &mut StreamTx, packets: &mut Vec<_>| {
                let mut fresh = vec![];
                let buf = if reuse { &mut used } else { &mut fresh };
                let receipt = stream
                    .poll_packet(now, &exts, Some(&mut twcc), codecs.params(), buf)
                    .expect("a packet");
                packets.push((receipt.header, buf[..receipt.packet_len].to_vec()));
            };
            for _ in 0..3 {
                poll(stream, &mut packets);
            }
            stream.handle_nack([NackEntry { pid: 1, blp: 0 }].into_iter(), now);
            poll(stream, &mut packets);
            stream.generate_padding(20);
            poll(stream, &mut packets);
            packets
        };

        let fresh = run(false);
        let used = run(true);
        assert_eq!(fresh.len(), 5);
        for ((header, bytes), (_, bytes_used)) in fresh.iter().zip(&used) {
            assert_eq!(bytes, bytes_used, "the same bytes for {header:?}");
            let parsed = RtpHeader::parse(bytes, &exts).expect("a header");
            assert_eq!(parsed.ext_vals.mid, Some("vid".into()));
            assert_eq!(parsed.ext_vals.transport_cc, header.ext_vals.transport_cc);
        }
        let payload_types: Vec<_> = fresh.iter().map(|(h, _)| h.payload_type).collect();
        assert_eq!(payload_types, [pt, pt, pt, rtx_pt, rtx_pt]);
        assert_eq!(fresh[1].0.ext_vals.audio_level, Some(-42));
        assert_eq!(fresh[1].0.timestamp, 90);
        // The resend: the RTX SSRC, the original sequence number, then the 10-byte payload,
        // its audio level kept.
        let (resend, bytes) = &fresh[3];
        assert_eq!(resend.ssrc, 43.into());
        assert_eq!(resend.ext_vals.audio_level, Some(-42));
        assert_eq!(
            &bytes[resend.header_len..resend.header_len + 2],
            &1_u16.to_be_bytes()
        );
        assert_eq!(bytes.len(), resend.header_len + 2 + 10);
        // The padding: a blank packet whose padding bytes are zeroes and its length.
        let (padding, bytes) = &fresh[4];
        assert!(RtpHeader::parse(bytes, &exts).unwrap().has_padding);
        let body = &bytes[padding.header_len..];
        assert_eq!(*body.last().unwrap() as usize, body.len());
        assert!(body[..body.len() - 1].iter().all(|b| *b == 0));
    }

    #[test]
    fn queue_time_counts_only_unsent_packets_while_the_queue_never_empties() {
        let start = Instant::now();
        let codecs = CodecConfig::new_with_defaults();
        let pt = codecs.params()[0].pt();
        let exts = ExtensionMap::standard();
        let mut streams = crate::streams::Streams::new(false, 1200, Duration::from_millis(1500));
        let stream = streams.declare_stream_tx(42.into(), None, MidRid("vid".into(), None));
        let mut buf = vec![];
        let mut now = start;
        for i in 0..205_u64 {
            now = start + Duration::from_millis(i * 10);
            stream.write_rtp(RtpWrite::new(pt, i.into(), 0, now, vec![0_u8; 1000]));
            stream.send_queue.handle_timeout(now);
            if i >= 5 {
                stream
                    .poll_packet(now, &exts, None, codecs.params(), &mut buf)
                    .expect("a queued packet to send");
            }
        }
        let snapshot = stream.queue_state(now).snapshot;
        // The five queued packets are 0, 10, 20, 30 and 40 ms old.
        assert_eq!(snapshot.packet_count, 5);
        assert_eq!(snapshot.total_queue_time(now), Duration::from_millis(100));
    }

    #[test]
    fn padding_accounting_and_sequence_rollover() {
        let now = Instant::now();
        let mut sender = StreamTx::new_probe(1200);
        sender.set_probe_media("aud".into(), 111.into());
        sender.seq_no = 65_535.into();
        let codecs = CodecConfig::new_with_defaults();
        let mut twcc = 131_071;
        let mut buf = vec![];
        let exts = ExtensionMap::standard();
        sender.generate_padding(241);
        let first = sender
            .poll_packet(now, &exts, Some(&mut twcc), codecs.params(), &mut buf)
            .unwrap();
        assert_eq!(first.payload_size, 240);
        assert!(first.header.has_padding);
        assert_eq!(first.header.ext_vals.abs_send_time, Some(now));
        assert_eq!(*first.seq_no, 65_535);
        let second = sender
            .poll_packet(now, &exts, Some(&mut twcc), codecs.params(), &mut buf)
            .unwrap();
        assert_eq!(*second.seq_no, 65_536);
        assert_eq!(second.header.sequence_number, 0);
        assert_eq!(second.header.ext_vals.transport_cc, Some(0));
        assert_eq!(second.payload_size, SRTP_BLOCK_SIZE);
        assert_eq!(
            second.packet_len,
            second.header.header_len + second.payload_size
        );
        assert!(
            RtpHeader::unpad_payload(&buf[second.header.header_len..second.packet_len])
                .unwrap()
                .is_empty()
        );
        assert_eq!(sender.queue_state(now).snapshot.packet_count, 0);
        assert_eq!(twcc, 131_073);
    }

    #[test]
    fn probe_stream_rebinding_preserves_srtp_sequence_and_discards_pending_padding() {
        use crate::media::MID_PROBE;
        use crate::rtp_::MidRid;
        use crate::streams::Streams;

        let now = Instant::now();
        let mut streams = Streams::new(false, 1200, Duration::from_millis(1500));
        let queue = MidRid(MID_PROBE, None);
        let mut twcc = 0;
        let mut buf = vec![];
        let exts = ExtensionMap::standard();
        let codecs = CodecConfig::new_with_defaults();
        streams.set_probe_media(Some(("aud".into(), 111.into())));
        let stream = streams.stream_tx_by_midrid(queue).unwrap();
        stream.generate_padding(480);
        let first = stream
            .poll_packet(now, &exts, Some(&mut twcc), codecs.params(), &mut buf)
            .unwrap();
        assert_eq!(first.header.ext_vals.mid, Some("aud".into()));

        // Ending a cluster must drop any unsent padding and remove its source
        // from selection, without resetting the SRTP index for the next cluster.
        streams.set_probe_media(None);
        assert!(streams.stream_tx_by_midrid(queue).is_none());
        assert_eq!(
            streams
                .send_queue_states(now, INTERVALS, |_, _| true)
                .count(),
            0
        );
        streams.set_probe_media(Some(("vid".into(), 96.into())));
        assert_eq!(streams.streams_tx().count(), 0);
        let stream = streams.stream_tx_by_midrid(queue).unwrap();
        assert!(
            stream
                .poll_packet(now, &exts, Some(&mut twcc), codecs.params(), &mut buf)
                .is_none()
        );
        stream.generate_padding(240);
        let second = stream
            .poll_packet(now, &exts, Some(&mut twcc), codecs.params(), &mut buf)
            .unwrap();
        assert_eq!(*second.seq_no, *first.seq_no + 1);
        assert_eq!(second.header.ext_vals.transport_cc, Some(1));
        assert_eq!(second.header.ext_vals.mid, Some("vid".into()));
        assert_eq!(second.header.payload_type, 96.into());
    }

    /// Parloir patch 57: while probing, the queue states leave the idle streams out, and the
    /// pacer still pads from the stream a snapshot of every stream would have given it: the
    /// one last emitted from among those that can pad and may carry probe padding.
    #[test]
    fn probe_padding_comes_from_the_stream_a_full_snapshot_would_pick() {
        use crate::media::MID_PROBE;

        let start = Instant::now();
        let codecs = CodecConfig::new_with_defaults();
        let pt = codecs.params()[0].pt();
        let exts = ExtensionMap::standard();
        let mut streams = crate::streams::Streams::new(false, 1200, Duration::from_millis(1500));
        let mids = ["a", "b", "c", "d"];
        for (i, mid) in mids.iter().enumerate() {
            let ssrc = 10 * (i as u32 + 1);
            let stream = streams.declare_stream_tx(
                ssrc.into(),
                Some((ssrc + 1).into()),
                MidRid((*mid).into(), None),
            );
            stream.pt_for_padding = Some(pt);
            // As after its first timeout (which the pruning of idle streams waits for).
            stream.kind = Some(MediaKind::Video);
        }
        // "b" may not carry probe padding.
        let can_probe = |mid: Mid, _: Pt| mid != Mid::from("b");
        let mut seq = 0_u64;
        let mut buf = vec![];
        let mut send = |streams: &mut crate::streams::Streams, ssrc: u32, at: Instant| {
            let stream = streams.stream_tx(&ssrc.into()).expect("a stream");
            seq += 1;
            stream.write_rtp(RtpWrite::new(pt, seq.into(), 0, at, vec![0_u8; 100]));
            stream.send_queue.handle_timeout(at);
            stream
                .poll_packet(at, &exts, None, codecs.params(), &mut buf)
                .expect("the packet just queued");
        };
        // What the pacer pads from: the last of the queues that may pad with the latest
        // emission (`LeakyBucketPacer`'s `max_by_key`).
        let pick = |states: &[QueueState]| {
            states
                .iter()
                .filter(|q| q.use_for_padding)
                .max_by_key(|q| q.snapshot.last_emitted)
                .map(|q| q.midrid)
        };
        // The same from every stream, as the pacer saw them before patch 57.
        let reference = |streams: &mut crate::streams::Streams| {
            let mut best: Option<(Option<Instant>, MidRid)> = None;
            for stream in streams.streams_tx_for_stats() {
                let eligible = stream.can_pad()
                    && stream
                        .padding_pt()
                        .is_some_and(|pt| can_probe(stream.mid(), pt));
                let last = stream.queue_info.and_then(|q| q.last_emitted);
                if eligible && best.is_none_or(|(t, _)| last >= t) {
                    best = Some((last, stream.midrid));
                }
            }
            Some(best.map_or(MidRid(MID_PROBE, None), |(_, m)| m))
        };
        let at = |ms: u64| start + Duration::from_millis(ms);
        let states = |streams: &mut crate::streams::Streams, now: Instant| {
            let states: Vec<_> = streams
                .send_queue_states(now, INTERVALS, can_probe)
                .collect();
            (pick(&states), states.len())
        };

        // "b" sent last, but "c" is the latest that may carry probe padding.
        send(&mut streams, 40, at(1));
        send(&mut streams, 10, at(2));
        send(&mut streams, 30, at(3));
        send(&mut streams, 20, at(4));
        streams.set_probe_media(Some(("a".into(), pt)));
        let (first, len) = states(&mut streams, at(5));
        assert_eq!(first, Some(MidRid("c".into(), None)));
        assert_eq!(first, reference(&mut streams));
        // Every stream and the probe's own queue in the cluster's first pass.
        assert_eq!(len, 5);

        // Nothing sent since: the idle streams drop out, the pick stays.
        let (again, len) = states(&mut streams, at(6));
        assert_eq!(again, first);
        assert!(
            len < 5,
            "idle streams left out while probing: {len} queue states"
        );

        // "d" sends: it is the latest eligible one.
        send(&mut streams, 40, at(7));
        let (now_d, _) = states(&mut streams, at(8));
        assert_eq!(now_d, Some(MidRid("d".into(), None)));
        assert_eq!(now_d, reference(&mut streams));
        let (still_d, len) = states(&mut streams, at(9));
        assert_eq!(still_d, now_d);
        assert_eq!(len, 2, "the candidate and the probe's queue");

        // "b" sends again: not eligible, the pick stays "d".
        send(&mut streams, 20, at(10));
        let (after_b, _) = states(&mut streams, at(11));
        assert_eq!(after_b, now_d);
        assert_eq!(after_b, reference(&mut streams));

        // Another binding (a new cluster): found again from every stream.
        streams.set_probe_media(None);
        streams.set_probe_media(Some(("c".into(), pt)));
        let (rebound, len) = states(&mut streams, at(12));
        assert_eq!(rebound, now_d);
        assert_eq!(len, 5);

        // The candidate loses its stream: found again, from those left.
        streams.remove_streams_by_mid("d".into());
        let (without_d, _) = states(&mut streams, at(13));
        assert_eq!(without_d, Some(MidRid("c".into(), None)));
        assert_eq!(without_d, reference(&mut streams));

        // None may carry probe padding: the probe's own queue pads.
        streams.remove_streams_by_mid("a".into());
        streams.remove_streams_by_mid("c".into());
        let (fallback, _) = states(&mut streams, at(14));
        assert_eq!(fallback, Some(MidRid(MID_PROBE, None)));
        assert_eq!(fallback, reference(&mut streams));
    }

    #[test]
    fn queue_info_is_cached_on_queue_state_update() {
        let mut stream = StreamTx::new(42.into(), None, MidRid(Mid::from("0"), None), false, 1200);

        assert!(stream.queue_info().is_none());

        let now = Instant::now();
        let first_unsent = now - Duration::from_millis(10);
        stream.resends.push_back(Resend {
            seq_no: 7.into(),
            queued_at: first_unsent,
            payload_size: 123,
        });
        stream.queue_state(now);

        let info = stream.queue_info().expect("queue info after pacer update");
        assert_eq!(info.created_at(), now);
        assert_eq!(info.byte_size(), 123);
        assert_eq!(info.packet_count(), 1);
        assert_eq!(info.first_unsent(), Some(first_unsent));

        stream.reset_buffers();
        assert!(stream.queue_info().is_none());
    }

    #[test]
    fn sub_average_padding_is_visible_to_the_pacer() {
        let mut stream = StreamTx::new(42.into(), None, MidRid(Mid::from("0"), None), false, 1200);
        stream.padding = 240;

        let snapshot = stream
            .queue_state_padding(Instant::now())
            .expect("nonzero padding must produce a queue snapshot");

        assert_eq!(snapshot.byte_size, 240);
        assert_eq!(snapshot.packet_count, 1);
    }

    #[test]
    fn sender_report_uses_supplied_intervals() {
        let mut stream = StreamTx::new(42.into(), None, MidRid(Mid::from("0"), None), false, 1200);
        let now = Instant::now();
        stream.kind = Some(MediaKind::Audio);
        stream.last_sender_report = now;

        assert_eq!(
            stream.sender_report_at(RtcpReportIntervals {
                audio: Duration::from_millis(750),
                video: Duration::from_millis(500),
            }),
            now + Duration::from_millis(750)
        );
    }

    // Parloir patch 88.
    #[test]
    fn what_a_pacer_pass_reads_lies_on_five_cache_lines() {
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(align_of::<StreamTx>(), 64);
        // Each field a pass reads ends within the first five lines.
        let ends = [
            offset_of!(StreamTx, send_queue) + size_of::<SendQueue>(),
            offset_of!(StreamTx, queue_info) + size_of::<Option<QueueSnapshot>>(),
            offset_of!(StreamTx, resends) + size_of::<VecDeque<Resend>>(),
            offset_of!(StreamTx, padding) + size_of::<usize>(),
            offset_of!(StreamTx, rtx) + size_of::<Option<Ssrc>>(),
            offset_of!(StreamTx, ssrc) + size_of::<Ssrc>(),
            offset_of!(StreamTx, midrid) + size_of::<MidRid>(),
            offset_of!(StreamTx, pt_for_padding) + size_of::<Option<Pt>>(),
            offset_of!(StreamTx, unpaced) + size_of::<Option<bool>>(),
            offset_of!(StreamTx, kind) + size_of::<Option<MediaKind>>(),
            offset_of!(StreamTx, touched) + size_of::<bool>(),
            offset_of!(StreamTx, pending_request_keyframe)
                + size_of::<Option<KeyframeRequestKind>>(),
            offset_of!(StreamTx, pending_request_remb) + size_of::<Option<Bitrate>>(),
        ];
        let last = ends.iter().max().copied().unwrap_or(0);
        assert!(last <= 5 * 64, "the pass's fields end at byte {last}");
    }
}
