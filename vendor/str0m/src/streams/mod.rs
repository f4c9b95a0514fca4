use crate::FastMap;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt::{self};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::config_mod::RtcpReportIntervals;
use crate::format::CodecConfig;
use crate::format::PayloadParams;
use crate::media::{KeyframeRequest, MID_PROBE, Media, SenderFeedback};
use crate::pacer::QueueState;
use crate::rtp_::MidRid;
use crate::rtp_::Ssrc;
use crate::rtp_::{Bitrate, Pt};
use crate::rtp_::{DlrrItem, Rtcp, RtcpFb, RtpHeader};
use crate::rtp_::{MediaTime, SenderInfo};
use crate::rtp_::{Mid, Rid, SeqNo};
use crate::util::already_happened;
use crate::util::not_happening;

pub use self::receive::StreamRx;
pub use self::send::{RtpWrite, StreamTx, StreamTxQueueInfo};

mod receive;
pub(crate) mod register;
pub(crate) mod register_nack;
mod rtx_cache;
pub(crate) mod rtx_cache_buf;
mod send;
mod send_queue;
mod send_stats;
mod tx_packet;
mod tx_slots;

pub(crate) use self::tx_slots::NO_SLOT;
use self::tx_slots::TxSlots;
pub(crate) use tx_packet::{TxHeader, TxPacket};

pub(crate) use send::{DEFAULT_RTX_CACHE_DURATION, DEFAULT_RTX_RATIO_CAP};

pub(crate) struct StreamTimeoutConfig<'a> {
    pub(crate) codecs: &'a CodecConfig,
    pub(crate) intervals: RtcpReportIntervals,
}

/// Packet of RTP data.
///
/// As emitted by [`Event::RtpPacket`][crate::Event::RtpPacket] when using rtp mode.
#[derive(PartialEq, Eq)]
pub struct RtpPacket {
    /// Extended sequence number to avoid having to deal with ROC.
    pub seq_no: SeqNo,

    /// Extended RTP time in the clock frequency of the codec. To avoid dealing with ROC.
    ///
    /// For a newly scheduled outgoing packet, the clock_rate is not correctly set until
    /// we do the poll_output().
    pub time: MediaTime,

    /// Parsed RTP header.
    pub header: RtpHeader,

    /// RTP payload. This contains no header.
    pub payload: Arc<[u8]>,

    /// str0m server timestamp.
    ///
    /// This timestamp has nothing to do with RTP itself. For outgoing packets, this is when
    /// the packet was first handed over to str0m and enqueued in the outgoing send buffers.
    /// For incoming packets it's the time we received the network packet.
    pub timestamp: Instant,

    /// Sender information from the most recent Sender Report(SR).
    ///
    /// If no Sender Report(SR) has been received or this packet is being sent by str0m this is [`None`].
    pub last_sender_info: Option<SenderInfo>,

    /// Whether this packet can be nacked.
    ///
    /// This is often false for audio, but might also be false for discardable frames when
    /// using temporal encoding as in a VP8 simulcast situation.
    pub(crate) nackable: bool,
}

/// Event when an encoded stream is considered paused/unpaused.
///
/// This means the stream has not received any data for some time (default 1.5 seconds).
#[derive(Debug)]
pub struct StreamPaused {
    /// The main SSRC of the encoded stream that paused.
    pub ssrc: Ssrc,

    /// The mid the encoded stream belongs to.
    pub mid: Mid,

    /// The rid, if the encoded stream has a rid.
    pub rid: Option<Rid>,

    /// Whether the stream is paused or not.
    pub paused: bool,
}

/// 255 is out of range for a real PT, which is 7 bit.
pub(crate) const BLANK_PACKET_DEFAULT_PT: Pt = Pt::new_with_value(255);

/// Holder of incoming/outgoing encoded streams.
///
/// Each encoded stream is uniquely identified by an SSRC. The concept of mid/rid sits on the Media
/// level together with the ability to translate a mid/rid to an encoded stream.
#[derive(Debug)]
pub(crate) struct Streams {
    /// All incoming encoded streams.
    streams_rx: FastMap<Ssrc, StreamRx>,

    /// Each incoming SSRC is mapped to a Mid/Ssrc. The Ssrc in the value is for the case
    /// where the incoming SSRC is for an RTX and we want the "main".
    rx_lookup: FastMap<Ssrc, RxLookup>,

    /// Time we last cleaned up unused entries from source_keys_rx.
    last_rx_lookup_cleanup: Instant,

    /// All outgoing encoded streams. Parloir patch 43: in slots that stay put, so that an
    /// m-line can reach its stream without a map (`stream_tx_by_midrid_hinted`).
    streams_tx: TxSlots,

    /// Parloir patch: the slot of the outgoing stream last found for each mid/rid. A hint,
    /// checked at every use; a wrong or missing hint falls back to the scan over all streams.
    tx_by_midrid: FastMap<MidRid, u32>,

    /// Parloir patch: the outgoing streams that may have work at a timeout (packets to stamp
    /// or send, resends, padding, requests to poll, their first timeout), so that timeouts and
    /// polls visit these rather than every outgoing stream of the session. Every `&mut` access
    /// to an outgoing stream adds it (accessors that hand out all streams add all), except the
    /// two that give no timeout work (patch 43: `stream_tx_for_report`,
    /// `streams_tx_for_stats`); a stream leaves when a queue snapshot finds it idle
    /// (`send_queue_states`). Listed by slot (patch 43), so that visiting them takes no map
    /// probe.
    tx_touched: Vec<u32>,

    /// Parloir patch: no outgoing stream outside `tx_touched` has a sender report due before
    /// this (exact after a full pass; streams leaving `tx_touched` fold theirs in).
    tx_report_due: Instant,

    /// Parloir patch: among outgoing streams that can pad, the one last emitted from, with
    /// that time: the pacer picks the padding queue by it, and the idle ones are otherwise
    /// left out of its queue states.
    tx_padding: Option<(Ssrc, Option<Instant>)>,

    /// Parloir patch: `tx_padding` is known (false asks for a pass over every stream).
    tx_padding_known: bool,

    /// Parloir patch 57: as `tx_padding`, among the streams that may carry probe padding in
    /// the probe cluster under way (the pacer's `can_probe`): while probing, the idle streams
    /// are left out of the queue states as they are outside probes.
    tx_probe_padding: Option<(Ssrc, Option<Instant>)>,

    /// Parloir patch 57: `tx_probe_padding` is known (false asks for a pass over every
    /// stream): found in the cluster's first pass, forgotten with the eligibility
    /// (`forget_probe_padding`).
    tx_probe_padding_known: bool,

    /// Non-media padding source. Its sequence counter survives media changes.
    probe_tx: StreamTx,
    probe_media: Option<(Mid, Pt)>,

    /// Local SSRC used before we got any StreamTx. This is used for RTCP if we don't
    /// have any reasonable value to use.
    default_ssrc_tx: Ssrc,

    /// We need to report all RR/SR for a Mid together in one RTCP. This is a dynamic
    /// list that we don't want to allocate on every handle_timeout.
    mids_to_report: Vec<Mid>,

    /// Whether periodic statistics reports are expected to be generated. This informs us on
    /// whether we should be holding onto data needed for those reports or not.
    enable_stats: bool,

    /// Threshold above which an outgoing RTP packet triggers an MTU warning. Used as a
    /// hard cap when selecting RTX cache entries for spurious padding.
    mtu_warn: usize,
    pause_threshold: Duration,
}

/// Parloir patch 65: whether `mid` is among the sorted `due`. The membership test was
/// `Vec::contains` for each stream, so a pass cost the streams times the mids due: with the
/// report times shared (patch 44), a subscriber connection of a 150-participant meeting has
/// about 300 send streams, and a pass at the cameras' shared time finds most of their mids
/// due.
fn report_due(due: &[Mid], mid: Mid) -> bool {
    !due.is_empty() && due.binary_search(&mid).is_ok()
}

/// Delay between cleaning up the RxLookup.
const RX_LOOKUP_CLEANUP_INTERVAL: Duration = Duration::from_millis(10_000);

/// How old an RxLookup entry may be.
const RX_LOOKUP_EXPIRY: Duration = Duration::from_millis(30_000);

#[derive(Debug)]
struct RxLookup {
    mid: Mid,
    main: Ssrc,
    last_used: Instant,
}

impl Streams {
    pub(crate) fn new(enable_stats: bool, mtu_warn: usize, pause_threshold: Duration) -> Self {
        Self {
            streams_rx: Default::default(),
            rx_lookup: Default::default(),
            last_rx_lookup_cleanup: already_happened(),
            streams_tx: Default::default(),
            tx_by_midrid: Default::default(),
            tx_touched: Vec::new(),
            tx_report_due: not_happening(),
            tx_padding: None,
            tx_padding_known: false,
            tx_probe_padding: None,
            tx_probe_padding_known: false,
            probe_tx: StreamTx::new_probe(mtu_warn),
            probe_media: None,
            default_ssrc_tx: 0.into(), // this will be changed
            mids_to_report: Vec::with_capacity(10),
            enable_stats,
            mtu_warn,
            pause_threshold,
        }
    }

    pub(crate) fn map_dynamic_by_rid(
        &mut self,
        ssrc: Ssrc,
        midrid: MidRid,
        media: &mut Media,
        payload: PayloadParams,
        is_main: bool,
    ) {
        // This is the point of the function.
        let rid = midrid
            .rid()
            .expect("map_dynamic_by_rid to be called with Rid");

        // Check if the mid/rid combo is not expected
        if !media.rids_rx().contains(rid) {
            trace!("Mid does not expect rid: {} {}", midrid.mid(), rid);
            return;
        }

        let maybe_stream = self.stream_rx_by_midrid(midrid);

        let (ssrc_main, rtx) = if is_main {
            let maybe_rtx = maybe_stream.and_then(|s| s.rtx());
            (ssrc, maybe_rtx)
        } else {
            // This can bail if the main SSRC has not been discovered yet.
            let Some(stream) = maybe_stream else {
                return;
            };
            (stream.ssrc(), Some(ssrc))
        };

        self.map_dynamic_finish(midrid, ssrc_main, rtx, media, payload);
    }

    pub(crate) fn map_dynamic_by_pt(
        &mut self,
        ssrc: Ssrc,
        midrid: MidRid,
        media: &mut Media,
        payload: PayloadParams,
        is_main: bool,
    ) {
        if media.rids_rx().is_specific() {
            trace!(
                "Media expects rid and RTP packet has only mid: {:?}",
                media.rids_rx()
            );
            return;
        }

        let maybe_stream = self.stream_rx_by_midrid(midrid);

        let (ssrc_main, rtx) = if is_main {
            let maybe_rtx = maybe_stream.and_then(|s| s.rtx());
            (ssrc, maybe_rtx)
        } else {
            // This can bail if the main SSRC has not been discovered yet.
            let Some(stream) = maybe_stream else {
                return;
            };
            // The main is the SSRC in the stream already. The incoming is RTX.
            let ssrc_main = stream.ssrc();
            (ssrc_main, Some(ssrc))
        };

        self.map_dynamic_finish(midrid, ssrc_main, rtx, media, payload);
    }

    #[allow(clippy::too_many_arguments)]
    fn map_dynamic_finish(
        &mut self,
        midrid: MidRid,
        ssrc_main: Ssrc,
        rtx: Option<Ssrc>,
        media: &mut Media,
        payload: PayloadParams,
    ) {
        let maybe_stream = self.stream_rx_by_midrid(midrid);

        if let Some(stream) = maybe_stream {
            let ssrc_from = stream.ssrc();
            let rtx_from = stream.rtx();

            // Handle changes in SSRC.
            if ssrc_from != ssrc_main {
                // We got a change in main SSRC for this stream.
                let did_change = self.change_stream_rx_ssrc(ssrc_from, ssrc_main);

                // When the SSRC changes, any payload type on this RID can start with
                // a new sequence number. Reset all depayloaders for the RID.
                if did_change {
                    media.reset_depayloaders_for_rid(midrid.rid());
                }
            }

            // Handle changes in RTX
            if let (Some(rtx_from), Some(rtx_to)) = (rtx_from, rtx) {
                if rtx_from != rtx_to {
                    self.change_stream_rx_rtx(rtx_from, rtx_to);
                }
            }
        }

        // If we don't have an RTX PT configured, we don't want NACK.
        let suppress_nack = payload.resend.is_none();

        // If stream already exists, this might only "fill in" the RTX.
        self.expect_stream_rx(ssrc_main, rtx, midrid, suppress_nack);
    }

    pub fn expect_stream_rx(
        &mut self,
        ssrc: Ssrc,
        rtx: Option<Ssrc>,
        midrid: MidRid,
        suppress_nack: bool,
    ) -> &mut StreamRx {
        let stream = self
            .streams_rx
            .entry(ssrc)
            .or_insert_with(|| StreamRx::new(ssrc, midrid, suppress_nack, self.pause_threshold));

        if let Some(rtx) = rtx {
            stream.maybe_reset_rtx(rtx);
        }

        stream
    }

    pub fn remove_stream_rx(&mut self, ssrc: Ssrc) -> bool {
        let stream = self.streams_rx.remove(&ssrc);
        let existed = stream.is_some();

        self.rx_lookup.retain(|k, l| *k != ssrc && l.main != ssrc);

        existed
    }

    pub fn declare_stream_tx(
        &mut self,
        ssrc: Ssrc,
        rtx: Option<Ssrc>,
        midrid: MidRid,
    ) -> &mut StreamTx {
        let (enable_stats, mtu_warn) = (self.enable_stats, self.mtu_warn);
        let (stream, slot) = self.streams_tx.get_or_insert_with(ssrc, || {
            StreamTx::new(ssrc, rtx, midrid, enable_stats, mtu_warn)
        });
        touch(&mut self.tx_touched, stream, slot);
        stream
    }

    pub fn remove_stream_tx(&mut self, ssrc: Ssrc) -> bool {
        if let Some(slot) = self.streams_tx.slot_of(&ssrc) {
            self.tx_by_midrid.retain(|_, s| *s != slot);
        }
        let removed = self.streams_tx.remove(&ssrc).is_some();
        self.untouch_removed();
        removed
    }

    /// Parloir patch 43: slots of removed streams leave the touched list (before a new stream
    /// can take the slot and be listed again).
    fn untouch_removed(&mut self) {
        let slots = &self.streams_tx;
        self.tx_touched.retain(|&slot| slots.at(slot).is_some());
    }

    /// Parloir patch 43: the stream of `mid`/`rid` takes new SSRCs, and is found by the new
    /// one (upstream left it filed under the old SSRC). `None` also when another stream has
    /// the new SSRC.
    pub(crate) fn reset_stream_tx(
        &mut self,
        midrid: MidRid,
        new_ssrc: Ssrc,
        new_rtx: Option<Ssrc>,
    ) -> Option<&mut StreamTx> {
        let stream = self.stream_tx_by_midrid(midrid)?;
        // Don't change to the same SSRC
        if stream.ssrc() == new_ssrc {
            return None;
        }
        // If the stream has an RTX SSRC, New RTX must be provided and differ.
        // But it is allowed to start or turn off RTX.
        if stream.rtx().is_some() && stream.rtx() == new_rtx {
            return None;
        }
        let old = stream.ssrc();
        // Parloir patch 43: not to an SSRC another stream has (it would lose its place).
        if self.streams_tx.contains_key(&new_ssrc) {
            return None;
        }
        let stream = self.streams_tx.get_mut(&old)?;
        stream.reset_ssrc(new_ssrc, new_rtx);
        self.streams_tx.rekey(old, new_ssrc);
        if self.tx_padding.is_some_and(|(p, _)| p == old) {
            self.tx_padding = None;
            self.tx_padding_known = false;
        }
        if self.tx_probe_padding.is_some_and(|(p, _)| p == old) {
            self.forget_probe_padding();
        }
        self.streams_tx.get_mut(&new_ssrc)
    }

    pub(crate) fn local_sender_ssrcs(&self) -> Vec<Ssrc> {
        self.streams_tx
            .values()
            .flat_map(|s| std::iter::once(s.ssrc()).chain(s.rtx()))
            .collect()
    }

    pub(crate) fn reset_send_buffers(&mut self) {
        self.touch_all_tx();
        for stream in self.streams_tx.values_mut() {
            stream.reset_buffers();
        }
    }

    pub fn stream_rx(&mut self, ssrc: &Ssrc) -> Option<&mut StreamRx> {
        self.streams_rx.get_mut(ssrc)
    }

    pub fn stream_tx(&mut self, ssrc: &Ssrc) -> Option<&mut StreamTx> {
        let slot = self.streams_tx.slot_of(ssrc)?;
        let stream = self.streams_tx.at_mut(slot)?;
        touch(&mut self.tx_touched, stream, slot);
        Some(stream)
    }

    /// Parloir patch 43: the stream of `ssrc`, not listed as touched: for a reception report,
    /// which changes only its statistics and whether the receiver knows its SSRC, nothing a
    /// timeout has work for. A subscriber connection's receiver reports name each of its
    /// streams every second or five; touched, every stream was visited by the next timeouts.
    pub(crate) fn stream_tx_for_report(&mut self, ssrc: &Ssrc) -> Option<&mut StreamTx> {
        self.streams_tx.get_mut(ssrc)
    }

    /// Parloir patch 43, tests: how many outgoing streams are listed as touched.
    #[cfg(test)]
    pub(crate) fn touched_count(&self) -> usize {
        self.tx_touched.len()
    }

    /// Parloir patch 86: how many streams each way, for the statistics' maps.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.streams_tx.len(), self.streams_rx.len())
    }

    /// Parloir patch 43: every outgoing stream, not listed as touched, for reading their
    /// statistics (which gives no timeout any work).
    pub(crate) fn streams_tx_for_stats(&mut self) -> impl Iterator<Item = &mut StreamTx> {
        self.streams_tx.values_mut()
    }

    /// Parloir patch: every outgoing stream is touched, for accessors that hand them all out.
    fn touch_all_tx(&mut self) {
        for (slot, stream) in self.streams_tx.iter_mut() {
            touch(&mut self.tx_touched, stream, slot);
        }
        // Buffers may be reset: the padding candidate is searched for again.
        self.tx_padding = None;
        self.tx_padding_known = false;
        self.forget_probe_padding();
    }

    /// Parloir patch 57: which streams may carry probe padding changed (another cluster,
    /// m-lines changed, another probe binding): the probe's padding candidate is searched
    /// for again, in a pass over every stream.
    pub(crate) fn forget_probe_padding(&mut self) {
        self.tx_probe_padding = None;
        self.tx_probe_padding_known = false;
    }

    /// Lookup the "main" SSRC and mid for a given SSRC(main or RTX).
    pub(crate) fn mid_ssrc_rx_by_ssrc_or_rtx(
        &mut self,
        now: Instant,
        ssrc: Ssrc,
    ) -> Option<(Mid, Ssrc)> {
        // A direct hit on SSRC is to prefer. The idea is that mid/rid are only sent
        // for the initial x seconds and then we start using SSRC only instead.
        if let Some(r) = self.rx_lookup.get_mut(&ssrc) {
            r.last_used = now;
            return Some((r.mid, r.main));
        }

        let maybe_stream = self.stream_rx_by_ssrc_or_rtx(ssrc);
        if let Some(stream) = maybe_stream {
            let mid = stream.mid();
            let ssrc_main = stream.ssrc();

            self.rx_lookup.insert(
                ssrc,
                RxLookup {
                    mid,
                    main: ssrc_main,
                    last_used: now,
                },
            );

            return Some((mid, ssrc_main));
        }

        None
    }

    pub(crate) fn regular_feedback_at(&self, i: RtcpReportIntervals) -> Option<Instant> {
        let r = self
            .streams_rx
            .values()
            .filter(|s| !s.ssrc().is_probe())
            .map(|s| s.receiver_report_at(i));
        // Parloir patch: untouched streams have nothing due before `tx_report_due`.
        let s = self
            .tx_touched
            .iter()
            .filter_map(|&slot| self.streams_tx.at(slot))
            .map(|s| s.sender_report_at(i))
            .chain(std::iter::once(self.tx_report_due));
        r.chain(s).min()
    }

    pub(crate) fn paused_at(&self) -> Option<Instant> {
        self.streams_rx.values().find_map(|s| s.paused_at())
    }

    pub(crate) fn send_stream(&self) -> Option<Instant> {
        // Parloir patch: only touched streams can have unstamped packets. Patch 85: a new
        // stream (touched when declared) is due its first timeout (its kind, its CNAME, the
        // payload type it pads with) at once, not at whatever pass comes next: since patch 84
        // a datagram received no longer brings a whole pass.
        if self
            .tx_touched
            .iter()
            .filter_map(|&slot| self.streams_tx.at(slot))
            .any(|s| s.need_timeout() || !s.had_first_timeout())
        {
            Some(already_happened())
        } else {
            None
        }
    }

    pub(crate) fn pending_request(&self) -> Option<Instant> {
        if self.streams_rx.values().any(|s| s.has_pending_request()) {
            Some(already_happened())
        } else {
            None
        }
    }

    pub(crate) fn handle_timeout(
        &mut self,
        now: Instant,
        sender_ssrc: Ssrc,
        do_nack: bool,
        medias: &[Media],
        config: StreamTimeoutConfig<'_>,
        feedback: &mut VecDeque<Rtcp>,
    ) {
        let StreamTimeoutConfig { codecs, intervals } = config;

        self.mids_to_report.clear(); // Clear for checking StreamRx.
        for stream in self.streams_rx.values() {
            if stream.need_rr(now, intervals) {
                self.mids_to_report.push(stream.mid());
            }
        }
        // Parloir patch 65: sorted, and looked up by halves (see `report_due`).
        self.mids_to_report.sort_unstable();
        self.mids_to_report.dedup();

        for stream in self.streams_rx.values_mut() {
            stream.maybe_create_keyframe_request(sender_ssrc, feedback);
            stream.maybe_create_remb_request(sender_ssrc, feedback);

            // All StreamRx belonging to the same Mid are reported together.
            if report_due(&self.mids_to_report, stream.mid()) {
                stream.create_rr_and_update(now, sender_ssrc, feedback);
            }

            if do_nack {
                stream.maybe_create_nack(now, sender_ssrc, feedback);
            }

            stream.handle_timeout(now);
        }

        // Parloir patch: a pass over every outgoing stream only when a sender report is due;
        // otherwise only the touched streams can have anything to do (stamping queued
        // packets, their first timeout).
        let touched_due = self
            .tx_touched
            .iter()
            .filter_map(|&slot| self.streams_tx.at(slot))
            .map(|s| s.sender_report_at(intervals))
            .min()
            .unwrap_or_else(not_happening);
        let full_pass = now >= self.tx_report_due.min(touched_due);

        if full_pass {
            self.mids_to_report.clear(); // start over for StreamTx.
            for stream in self.streams_tx.values() {
                if stream.need_sr(now, intervals) {
                    self.mids_to_report.push(stream.mid());
                }
            }
            self.mids_to_report.sort_unstable();
            self.mids_to_report.dedup();

            for stream in self.streams_tx.values_mut() {
                let mid = stream.mid();

                // All StreamTx belonging to the same Mid are reported together.
                if report_due(&self.mids_to_report, mid) {
                    stream.report_and_update(now, feedback);
                }

                // Finding the first (main) PT that also has RTX for the Media is expensive,
                // this closure is run only when needed.
                // The unwrap is okay because we cannot have StreamTx with a Mid without the corresponding Media.
                let get_media = move || (medias.iter().find(|m| m.mid() == mid).unwrap(), codecs);

                stream.handle_timeout(now, get_media);
            }
            self.tx_report_due = self
                .streams_tx
                .values()
                .map(|s| s.sender_report_at(intervals))
                .min()
                .unwrap_or_else(not_happening);
        } else {
            for &slot in &self.tx_touched {
                let Some(stream) = self.streams_tx.at_mut(slot) else {
                    continue;
                };
                let mid = stream.mid();
                let get_media = move || (medias.iter().find(|m| m.mid() == mid).unwrap(), codecs);
                stream.handle_timeout(now, get_media);
            }
        }

        if now > self.rx_lookup_at() {
            self.rx_lookup
                .retain(|_, l| now - l.last_used <= RX_LOOKUP_EXPIRY);
            self.last_rx_lookup_cleanup = now;
        }
    }

    pub(crate) fn poll_keyframe_request(&mut self) -> Option<KeyframeRequest> {
        // Parloir patch: requests arrive through `stream_tx`, which touches the stream, and a
        // stream with a request waiting stays touched.
        let streams = &mut self.streams_tx;
        self.tx_touched.iter().find_map(|&slot| {
            let s = streams.at_mut(slot)?;
            let kind = s.poll_keyframe_request()?;
            Some(KeyframeRequest {
                mid: s.mid(),
                rid: s.rid(),
                kind,
            })
        })
    }

    pub(crate) fn poll_sender_feedback(&mut self) -> Option<SenderFeedback> {
        self.streams_rx.values_mut().find_map(|s| {
            let (sender_info, at) = s.poll_sender_info()?;

            Some(SenderFeedback {
                mid: s.mid(),
                rid: s.rid(),
                received_at: at,
                sender_info,
            })
        })
    }

    pub(crate) fn poll_remb_request(&mut self) -> Option<(Mid, Bitrate)> {
        // Parloir patch: as for keyframe requests.
        let streams = &mut self.streams_tx;
        self.tx_touched.iter().find_map(|&slot| {
            let s = streams.at_mut(slot)?;
            s.poll_remb_request().map(|b| (s.mid(), b))
        })
    }

    pub(crate) fn poll_stream_paused(&mut self) -> Option<StreamPaused> {
        self.streams_rx.values_mut().find_map(|s| s.poll_paused())
    }

    pub(crate) fn has_stream_rx(&self, ssrc: Ssrc) -> bool {
        self.streams_rx.contains_key(&ssrc)
    }

    pub(crate) fn has_stream_tx(&self, ssrc: Ssrc) -> bool {
        self.streams_tx.contains_key(&ssrc)
    }

    pub(crate) fn handle_dlrr(&mut self, now: Instant, dlrr: DlrrItem) {
        let is_default_ssrc = !self.default_ssrc_tx.is_probe() && dlrr.ssrc == self.default_ssrc_tx;
        if !is_default_ssrc && !self.has_stream_tx(dlrr.ssrc) {
            trace!("Ignoring DLRR for unknown local SSRC: {}", dlrr.ssrc);
            return;
        }

        // DLRR identifies our RRTR sender, not a remote media SSRC. The measured
        // round trip is shared by receive streams on this peer's transport.
        for stream in self.streams_rx.values_mut() {
            stream.handle_rtcp(now, RtcpFb::DlrrItem(dlrr));
        }
    }

    pub(crate) fn streams_rx(&mut self) -> impl Iterator<Item = &mut StreamRx> {
        self.streams_rx.values_mut()
    }

    // Parloir patch 43: its one user, `Session::visit_stats`, reads statistics through
    // `streams_tx_for_stats` now.
    #[cfg(test)]
    pub(crate) fn streams_tx(&mut self) -> impl Iterator<Item = &mut StreamTx> {
        self.touch_all_tx();
        self.streams_tx.values_mut()
    }

    pub(crate) fn ssrcs_tx(&self, mid: Mid) -> Vec<(Ssrc, Option<Ssrc>)> {
        self.streams_tx
            .values()
            .filter(|s| s.mid() == mid)
            .map(|s| (s.ssrc(), s.rtx()))
            .collect()
    }

    pub(crate) fn new_ssrc(&self) -> Ssrc {
        loop {
            // This new guarantees we never get SSRC 0 (reserved for BWE probes)
            let ssrc = Ssrc::new();

            let has_ssrc = self.has_stream_rx(ssrc) || self.has_stream_tx(ssrc);

            if has_ssrc {
                continue;
            }

            // Need to check RTX as well.
            let has_rtx_rx = self.streams_rx.values().any(|s| s.rtx() == Some(ssrc));
            if has_rtx_rx {
                continue;
            }

            let has_rtx_tx = self.streams_tx.values().any(|s| s.rtx() == Some(ssrc));
            if has_rtx_tx {
                continue;
            }

            // Not used
            break ssrc;
        }
    }

    pub fn new_ssrc_pair(&self) -> (Ssrc, Ssrc) {
        let ssrc = self.new_ssrc();

        let rtx = loop {
            let proposed = self.new_ssrc();
            // Avoid clashing with just allocated main SSRC.
            if proposed != ssrc {
                break proposed;
            }
        };

        (ssrc, rtx)
    }

    pub(crate) fn first_ssrc_remote(&self) -> Ssrc {
        *self.streams_rx.keys().next().unwrap_or(&0.into())
    }

    pub(crate) fn first_ssrc_local(&mut self) -> Ssrc {
        if let Some(ssrc) = self.streams_tx.keys().next() {
            // If there is some local Tx SSRC, use that.
            ssrc
        } else {
            // Fallback in case we don't have any Tx SSRC.
            if *self.default_ssrc_tx == 0 {
                // Do not use 0, allocate one that is not in session already.
                self.default_ssrc_tx = self.new_ssrc();
            }
            self.default_ssrc_tx
        }
    }

    /// Bind the probe source only while a cluster is authorized. Changing the
    /// binding drops queued padding but preserves the SSRC's SRTP sequence.
    pub(crate) fn set_probe_media(&mut self, media: Option<(Mid, Pt)>) {
        if media == self.probe_media {
            return;
        }
        self.probe_tx.reset_buffers();
        if let Some((mid, pt)) = media {
            self.probe_tx.set_probe_media(mid, pt);
        }
        self.probe_media = media;
        self.forget_probe_padding();
    }

    pub(crate) fn send_queue_states(
        &mut self,
        now: Instant,
        intervals: RtcpReportIntervals,
        can_probe: impl FnMut(Mid, Pt) -> bool,
    ) -> QueueStates {
        // Parloir patch: the touched streams, and among the idle ones that can pad only the
        // one the pacer would pick for padding (the last emitted from): an idle queue adds
        // nothing to the pacer's sums and is never picked to send from. Patch 57: while
        // probing too, the candidate being among the streams that may carry probe padding.
        if !self.tx_padding_known {
            self.touch_all_tx();
            // Every stream is seen below.
            self.tx_padding_known = true;
        }
        let mut states = QUEUE_STATES.take();
        states.clear();
        if self.probe_media.is_some() {
            self.probe_queue_states(now, can_probe, &mut states);
        } else {
            for &slot in &self.tx_touched {
                if let Some(stream) = self.streams_tx.at_mut(slot) {
                    states.push(stream.queue_state(now));
                }
            }
            let candidate = self.tx_padding.map(|(ssrc, _)| ssrc);
            if let Some(stream) = candidate.and_then(|ssrc| self.streams_tx.get_mut(&ssrc)) {
                if !stream.touched {
                    states.push(stream.queue_state(now));
                }
            }
        }
        self.update_padding_candidate();
        self.prune_touched(intervals);
        QueueStates { states, next: 0 }
    }

    /// Parloir patch: the touched streams have fresh snapshots: the one that can pad and was
    /// last emitted from becomes the padding candidate if it beats the current one.
    fn update_padding_candidate(&mut self) {
        let mut padding = self.tx_padding;
        if let Some((ssrc, _)) = padding {
            match self.streams_tx.get(&ssrc) {
                Some(stream) if stream.can_pad() => {}
                // Gone, or it can no longer pad: search every stream at the next timeout.
                _ => {
                    padding = None;
                    self.tx_padding_known = false;
                }
            }
        }
        for &slot in &self.tx_touched {
            let Some(stream) = self.streams_tx.at(slot) else {
                continue;
            };
            if !stream.can_pad() {
                continue;
            }
            let last = stream.queue_info.and_then(|q| q.last_emitted);
            let ssrc = stream.ssrc();
            if padding.is_none_or(|(p, t)| p == ssrc || last >= t) {
                padding = Some((ssrc, last));
            }
        }
        self.tx_padding = padding;
    }

    /// Parloir patch: streams found idle by the queue snapshot just taken leave the touched
    /// list, their sender report time folded into `tx_report_due`.
    fn prune_touched(&mut self, intervals: RtcpReportIntervals) {
        let mut i = 0;
        while i < self.tx_touched.len() {
            let slot = self.tx_touched[i];
            let Some(stream) = self.streams_tx.at_mut(slot) else {
                self.tx_touched.swap_remove(i);
                continue;
            };
            let idle = stream.queue_info.is_some_and(|q| q.packet_count == 0)
                && !stream.need_timeout()
                && !stream.has_pending_requests()
                && stream.had_first_timeout();
            if idle {
                stream.touched = false;
                self.tx_report_due = self.tx_report_due.min(stream.sender_report_at(intervals));
                self.tx_touched.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// The queue states while probing: each stream's (its padding allowed only where it may
    /// carry probe padding, `can_probe`), preferring media/RTX padding over the fallback,
    /// whose queue comes last. Parloir patch 57: the touched streams and the probe's padding
    /// candidate (`tx_probe_padding`), once it is known; until then every stream, as before,
    /// to find it.
    fn probe_queue_states(
        &mut self,
        now: Instant,
        mut can_probe: impl FnMut(Mid, Pt) -> bool,
        states: &mut Vec<QueueState>,
    ) {
        // The candidate gone, or no longer able to pad: every stream again.
        if let Some((ssrc, _)) = self.tx_probe_padding {
            if !self.streams_tx.get(&ssrc).is_some_and(|s| s.can_pad()) {
                self.forget_probe_padding();
            }
        }
        let mut media_padding = false;
        // A stream's queue state, its padding allowed only where it may carry probe padding
        // (only negotiated feedback sources can; ordinary padding keeps its eligibility). The
        // pacer pads from the eligible queue last emitted from (the last of equals in the
        // order given): the candidate is that queue among those seen.
        let mut visit = |stream: &mut StreamTx, best: &mut Option<(Ssrc, Option<Instant>)>| {
            let mut queue = stream.queue_state(now);
            if queue.use_for_padding {
                queue.use_for_padding = stream
                    .padding_pt()
                    .is_some_and(|pt| can_probe(stream.mid(), pt));
            }
            if queue.use_for_padding {
                media_padding = true;
                let (ssrc, last) = (stream.ssrc(), queue.snapshot.last_emitted);
                if best.is_none_or(|(p, t)| p == ssrc || last >= t) {
                    *best = Some((ssrc, last));
                }
            }
            states.push(queue);
        };
        let mut best = self.tx_probe_padding;
        if self.tx_probe_padding_known {
            for &slot in &self.tx_touched {
                if let Some(stream) = self.streams_tx.at_mut(slot) {
                    visit(stream, &mut best);
                }
            }
            let candidate = best.and_then(|(ssrc, _)| self.streams_tx.get_mut(&ssrc));
            if let Some(stream) = candidate.filter(|s| !s.touched) {
                visit(stream, &mut best);
            }
        } else {
            best = None;
            for stream in self.streams_tx.values_mut() {
                visit(stream, &mut best);
            }
            self.tx_probe_padding_known = true;
        }
        self.tx_probe_padding = best;
        let mut queue = self.probe_tx.queue_state(now);
        queue.midrid = MidRid(MID_PROBE, None);
        queue.use_for_padding = !media_padding;
        states.push(queue);
    }

    pub(crate) fn stream_tx_by_midrid(&mut self, midrid: MidRid) -> Option<&mut StreamTx> {
        let mut hint = NO_SLOT;
        self.stream_tx_by_midrid_hinted(midrid, &mut hint)
    }

    /// Parloir patch 49: where the outgoing streams' slots lie (not read: for a prefetch).
    pub(crate) fn tx_slots_field(&self) -> *const u8 {
        self.streams_tx.slots_field()
    }

    /// Parloir patch 49: what a write touches of the stream in `slot`, given to `f` by
    /// address (`StreamTx::write_lines`; not read: for a prefetch); nothing for a slot past
    /// the end (an m-line not written to yet has none).
    pub(crate) fn tx_write_lines(&self, slot: u32, f: &mut impl FnMut(*const u8)) {
        if let Some(at) = self.streams_tx.slot_addr(slot) {
            StreamTx::write_lines(at, f)
        }
    }

    /// Parloir patch 52: what sending the next queued packet of the stream in `slot`
    /// touches first (`StreamTx::poll_lines`); nothing for a slot past the end.
    pub(crate) fn tx_poll_lines(&self, slot: u32, f: &mut impl FnMut(*const u8)) {
        if let Some(at) = self.streams_tx.slot_addr(slot) {
            StreamTx::poll_lines(at, f)
        }
    }

    /// Parloir patch 52: what sending the next queued packet of the stream in `slot`
    /// touches through the lines of `tx_poll_lines` (`StreamTx::poll_next_lines`).
    pub(crate) fn tx_poll_next_lines(&self, slot: u32, f: &mut impl FnMut(*const u8)) {
        if let Some(stream) = self.streams_tx.at(slot) {
            stream.poll_next_lines(f)
        }
    }

    /// Parloir patch 43: as [`Self::stream_tx_by_midrid`], trying the slot `hint` first (an
    /// m-line keeps the slot of its stream: `Media::tx_slot`), then the map of hints by
    /// mid/rid, then the scan; `hint` is set to the slot found.
    pub(crate) fn stream_tx_by_midrid_hinted(
        &mut self,
        midrid: MidRid,
        hint: &mut u32,
    ) -> Option<&mut StreamTx> {
        if midrid == MidRid(MID_PROBE, None) {
            self.probe_media?;
            return Some(&mut self.probe_tx);
        }
        let fits = |slots: &TxSlots, slot: u32| slots.at(slot).is_some_and(|s| s.is_midrid(midrid));
        let slot = if fits(&self.streams_tx, *hint) {
            *hint
        } else {
            // Parloir patch: the hint by mid/rid (packets of one stream come in runs, and
            // each one was found by a scan over every stream of the session).
            let hinted = self
                .tx_by_midrid
                .get(&midrid)
                .copied()
                .filter(|&slot| fits(&self.streams_tx, slot));
            let slot = match hinted {
                Some(slot) => slot,
                None => {
                    let slot = self.streams_tx.find_slot(|s| s.is_midrid(midrid))?;
                    self.tx_by_midrid.insert(midrid, slot);
                    slot
                }
            };
            *hint = slot;
            slot
        };
        let stream = self.streams_tx.at_mut(slot)?;
        touch(&mut self.tx_touched, stream, slot);
        Some(stream)
    }

    pub(crate) fn stream_rx_by_midrid(&mut self, midrid: MidRid) -> Option<&mut StreamRx> {
        self.streams_rx.values_mut().find(|s| s.is_midrid(midrid))
    }

    pub(crate) fn remove_streams_by_mid(&mut self, mid: Mid) {
        self.streams_tx.retain(|_, s| s.mid() != mid);
        self.untouch_removed();
        self.tx_by_midrid.retain(|midrid, _| midrid.mid() != mid);
        self.streams_rx.retain(|_, s| s.mid() != mid);
        self.rx_lookup.retain(|_, v| v.mid != mid);
    }

    /// An iterator over all the tx streams for a given mid.
    pub(crate) fn streams_tx_by_mid(&mut self, mid: Mid) -> impl Iterator<Item = &mut StreamTx> {
        self.touch_all_tx();
        self.streams_tx.values_mut().filter(move |s| s.mid() == mid)
    }

    /// An iterator over all the rx streams for a given mid.
    pub(crate) fn streams_rx_by_mid(&mut self, mid: Mid) -> impl Iterator<Item = &mut StreamRx> {
        self.streams_rx.values_mut().filter(move |s| s.mid() == mid)
    }

    pub(crate) fn reset_buffers_tx(&mut self, mid: Mid) {
        for s in self.streams_tx_by_mid(mid) {
            s.reset_buffers();
        }
    }

    pub(crate) fn reset_buffers_rx(
        &mut self,
        mid: Mid,
        max_seq_lookup: impl Fn(Ssrc) -> Option<SeqNo>,
    ) {
        for s in self.streams_rx_by_mid(mid) {
            s.reset_buffers(&max_seq_lookup);
        }
    }

    pub(crate) fn change_stream_rx_ssrc(&mut self, ssrc_from: Ssrc, ssrc_to: Ssrc) -> bool {
        // This unwrap is OK, because we can't call change_stream_rx_ssrc without first
        // knowing there is such a StreamRx.
        let maybe_change = self.streams_rx.get_mut(&ssrc_from).unwrap();

        // The StreamRx is allowed to not change the SSRC in case it is switching back
        // to the previous SSRC. This is to avoid flapping in case RTP packets arrive
        // out of order.
        let did_change = maybe_change.change_ssrc(ssrc_to);

        if did_change {
            // Unwrap is OK, see above.
            let to_change = self.streams_rx.remove(&ssrc_from).unwrap();

            // Reinsert under new SSRC key.
            self.streams_rx.insert(ssrc_to, to_change);

            // Remove previous mappings for the SSRC
            self.rx_lookup
                .retain(|k, l| *k != ssrc_from && l.main != ssrc_from);
        }

        did_change
    }

    fn change_stream_rx_rtx(&mut self, rtx_from: Ssrc, rtx_to: Ssrc) {
        // Remove the SSRC mapping
        self.rx_lookup.remove(&rtx_from);

        let Some(to_change) = self
            .streams_rx
            .values_mut()
            .find(|s| s.rtx() == Some(rtx_from))
        else {
            // If there's no main stream associated with the RTX our job is done.
            return;
        };

        to_change.maybe_reset_rtx(rtx_to);
    }

    fn stream_rx_by_ssrc_or_rtx(&self, ssrc: Ssrc) -> Option<&StreamRx> {
        self.streams_rx
            .values()
            .find(|s| s.ssrc() == ssrc || s.rtx() == Some(ssrc))
    }

    /// Whether any receive stream currently needs NACK reports (see [`StreamRx::nack_enabled`]).
    ///
    /// Not cached: the answer changes with pause state and pending NACK retries.
    pub(crate) fn any_nack_enabled(&self) -> bool {
        self.streams_rx.values().any(|s| s.nack_enabled())
    }

    fn rx_lookup_at(&self) -> Instant {
        self.last_rx_lookup_cleanup + RX_LOOKUP_CLEANUP_INTERVAL
    }
}

impl fmt::Debug for RtpPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtpPacket")
            .field("seq_no", &self.seq_no)
            .field("time", &self.time)
            .field("header", &self.header)
            .field("payload", &self.payload.len())
            .field("nackable", &self.nackable)
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

thread_local! {
    /// Parloir patch 63: see [`QueueStates`].
    static QUEUE_STATES: Cell<Vec<QueueState>> = const { Cell::new(Vec::new()) };
}

/// Parloir patch 63: the queue states `Streams::send_queue_states` gives the pacer, in a list
/// that is the thread's, handed back when the pacer has taken them. Each connection kept its
/// own list, and in a large room writing the states into it missed the cache on each of its
/// lines, as the connections took turns (the pacer copies them into its own list at once);
/// the thread's one stays in cache. A list not handed back (a panic) is only dropped: the next
/// call makes another.
pub(crate) struct QueueStates {
    pub(crate) states: Vec<QueueState>,
    next: usize,
}

impl Iterator for QueueStates {
    type Item = QueueState;

    fn next(&mut self) -> Option<QueueState> {
        let state = self.states.get(self.next).copied()?;
        self.next += 1;
        Some(state)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.states.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for QueueStates {}

impl Drop for QueueStates {
    fn drop(&mut self) {
        let mut states = std::mem::take(&mut self.states);
        states.clear();
        QUEUE_STATES.set(states);
    }
}

/// Parloir patch: lists an outgoing stream as touched (once), by its slot.
fn touch(touched: &mut Vec<u32>, stream: &mut StreamTx, slot: u32) {
    if !stream.touched {
        stream.touched = true;
        touched.push(slot);
    }
}
