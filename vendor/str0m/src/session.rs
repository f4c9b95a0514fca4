use crate::FastMap;
use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Event;
use crate::bwe::BweKind;
use crate::bwe_::Bwe;
use crate::config::KeyingMaterial;
use crate::config_mod::RtcpReportIntervals;
use crate::crypto::CryptoProvider;
use crate::crypto::dtls::SrtpProfile;
use crate::format::CodecConfig;
use crate::format::PayloadParams;
use crate::format::Vp9PacketizerMode;
use crate::io::DatagramSend;
use crate::media::AppSpecificFeedback;
use crate::media::{KeyframeRequestKind, MID_PROBE};
use crate::media::{Media, ToPayload};
use crate::media::{MediaAdded, MediaChanged};
use crate::pacer::PacerControl;
use crate::pacer::{Pacer, PacerImpl};
use crate::packet::{RedBlock, RedDecoder, red_same_pt_blocks};
use crate::poll::Wake;
use crate::rtp::{Extension, RawPacket};
use crate::rtp_::Direction;
use crate::rtp_::ExtensionValues;
use crate::rtp_::MediaTime;
use crate::rtp_::MidRid;
use crate::rtp_::Pli;
use crate::rtp_::Pt;
use crate::rtp_::SRTCP_OVERHEAD;
use crate::rtp_::SeqNo;
use crate::rtp_::SeqNoWindow;
use crate::rtp_::TwccClusterId;
use crate::rtp_::{Bitrate, ExtensionMap, Goodbye, Mid, ReportList, Rtcp, RtcpFb};
use crate::rtp_::{Dlrr, DlrrItem, ExtendedReport, ReportBlock};
use crate::rtp_::{RtpHeader, SessionId, TwccPacketId, extend_u16};
use crate::rtp_::{SrtpContext, Ssrc};
use crate::rtp_::{TwccRecvRegister, TwccSendRegister};
use crate::stats::StatsSnapshot;
use crate::streams::{RtpPacket, StreamTimeoutConfig, Streams};
use crate::util::reused::Reused;
use crate::util::{Soonest, SystemTimeExt, already_happened, not_happening};
use crate::{Reason, net};
use crate::{RtcConfig, RtcError};

thread_local! {
    /// Parloir patch 81: the list an RTCP datagram's reports are split into.
    static FEEDBACK: std::cell::Cell<Vec<RtcpFb>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Minimum interval between NACK polls. Per-packet retries also wait for RTT.
/// Keep this high enough to avoid additional problems in very bad network conditions.
const NACK_MIN_INTERVAL: Duration = Duration::from_millis(33);

/// Delay between reports of TWCC. This is deliberately very low.
const TWCC_INTERVAL: Duration = Duration::from_millis(50);

/// Maximum number of pending RRTR entries before oldest are dropped.
const MAX_PENDING_RRTRS: usize = 300;

/// Maximum number of DLRR items to include in a single ExtendedReport.
const MAX_DLRR_PER_REPORT: usize = 50;

/// Parloir patch 58: which timers writing a frame moved (`Session::packetize_now`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMoved {
    /// None: the frame's packets wait in the pacer's snapshot (the null pacer).
    Nothing,
    /// The leaky bucket's next time: only the pacer's and the estimator's timeouts are
    /// worked out again (`Wake::pacer_only`).
    Pacer,
    /// Every timer (the stream's first packets, or no stream found).
    All,
}

#[repr(C)]
pub(crate) struct Session {
    // Parloir patch 89: the fields in the order they are laid out (`repr(C)`): first the
    // small ones that sending a datagram and a pacer pass read (flags, the TWCC sequence
    // number, the stream last sent from, the report and feedback times, the queues of
    // RTCP, the extension map), then the pacer and the sending SRTP context, then the rest.
    // Laid out by the compiler, the small ones lay on about a dozen of the struct's 100
    // cache lines.
    rtp_closing: bool,

    /// Whether we are running in RTP-mode.
    pub rtp_mode: bool,

    pub ice_lite: bool,

    /// Parloir patch 46: whether the NACK timer ran (some stream may need a NACK) when the
    /// timeouts were last worked out.
    nack_live: bool,

    /// Parloir patch: some m-line may have an open or changed event to emit. Set where m-lines
    /// are added or change direction (negotiation, the direct API); `poll_event` scans the
    /// m-lines only while it is set, and clears it when the scan finds nothing.
    pub(crate) media_events: bool,

    enable_twcc_feedback: bool,

    /// VP9 packetizer mode.
    vp9_packetizer_mode: Vp9PacketizerMode,

    twcc: u64,

    /// Parloir patch 43: the slot of the stream last written to or sent from, and its
    /// m-line's position: the packets of a frame are polled right after it is packetized,
    /// and are found there without the maps by mid/rid and by mid. Checked at each use.
    last_tx: (u32, usize),

    // Total RTP payload bytes for media, including retransmissions.
    media_bytes_rx: u64,

    media_bytes_tx: u64,

    /// Parloir patch: when the next regular RTCP reports are due, as of the last
    /// `poll_timeout_others` (the timeout that visits every stream; `Rtc::full_pass_due`).
    pub(crate) reports_at: Option<Instant>,

    last_twcc: Instant,

    last_nack: Instant,

    /// Parloir patch: when the datagram being handled arrived, if earlier than the time it is
    /// handled at (`Rtc::set_arrival`); the TWCC receive register records that.
    pub(crate) arrival: Option<Instant>,

    intervals: RtcpReportIntervals,

    /// Pending RRTRs from remote SSRCs in FIFO order, deduplicated by SSRC.
    /// A new RRTR for an already-pending SSRC updates its value in place.
    /// Capped at 300 entries; at most 50 are consumed per DLRR report.
    pending_rrtrs: VecDeque<(Ssrc, LastRrtr)>,

    raw_packets: Option<VecDeque<Box<RawPacket>>>,

    feedback_tx: VecDeque<Rtcp>,

    feedback_rx: VecDeque<Rtcp>,

    /// Parloir patch 56: the m-line and payload type probes go on (`probe_media`), once
    /// found; forgotten when the m-lines change (`medias_changed`).
    probe_media_found: Option<Option<(Mid, Pt)>>,

    /// Target MTU (start) and warn threshold (end). Buffer sizing uses the
    /// target; oversized outgoing datagrams above the warn threshold log a warning.
    mtu: RangeInclusive<usize>,

    /// Extension mappings are _per BUNDLE_, but we can only have one a=group BUNDLE
    /// in WebRTC (one ice connection), so they are effectively per session.
    pub exts: ExtensionMap,

    /// A pacer for sending RTP at specific rate.
    pub(crate) pacer: PacerImpl,

    srtp_tx: Option<SrtpContext>,

    id: SessionId,

    // These fields are pub to allow session_sdp.rs modify them.
    // Notice the fields are maybe not in m-line index order since the app
    // might be spliced in somewhere.
    pub medias: Vec<Media>,

    /// Parloir patch: where each m-line sits in `medias`. A hint, checked at every use because
    /// `medias` is changed in several places; a wrong or missing hint falls back to a scan.
    pub(crate) media_pos: FastMap<Mid, usize>,

    /// Parloir patch 55: whether a stream of an m-line and payload type may carry probe
    /// padding (`probe_pt`), as found during the probe cluster it names; forgotten when the
    /// cluster changes and when the m-lines change (`medias_changed`).
    probe_eligible: (Option<TwccClusterId>, FastMap<(Mid, Pt), bool>),

    /// Parloir patch: the m-lines that may have frames queued for packetizing (written since
    /// they were last found empty), so that packetizing and its timeout do not visit every
    /// m-line of the session. A superset: entries are pruned when found empty.
    pub(crate) payload_pending: Vec<Mid>,

    /// Parloir patch: the m-lines whose receive buffers may hold packets, so that polling for
    /// received frames and their timeouts do not visit every m-line. A superset, pruned when
    /// every buffer of the m-line is found empty.
    receive_pending: Vec<Mid>,

    // The actual RTP encoded streams.
    pub streams: Streams,

    /// The app m-line. Spliced into medias above.
    app: Option<(Mid, usize)>,

    reordering_size_audio: usize,
    reordering_size_video: usize,
    reordering_timeout_audio: Option<Duration>,
    pub send_buffer_audio: usize,
    pub send_buffer_video: usize,
    pub send_buffer_duration: Duration,

    // Configuration of how we are sending/receiving media.
    pub codec_config: CodecConfig,

    // Payload params for SSRC 0 BWE probes.
    // Lazy init when we see the PT.
    probe_payload_params: Option<PayloadParams>,

    srtp_rx: Option<SrtpContext>,
    twcc_rx_register: TwccRecvRegister,
    twcc_tx_register: TwccSendRegister,
    max_rx_seq_lookup: FastMap<Ssrc, SeqNoWindow>,

    bwe: Option<Bwe>,
    bwe_last_event: Option<(Bitrate, bool)>,

    pacer_control: PacerControl,

    // Parloir patch 62: the temporary buffer for the next (unencrypted) RTP packet is the
    // thread's (`io::Scratch`), no longer a field of each session.

    // Next packet for RtpPacket event.
    pending_packet: Option<RtpPacket>,

    // Pending application-specific feedback (PSFB FMT=15) messages to emit as events.
    pending_app_feedback: Option<AppSpecificFeedback>,

    #[cfg(feature = "_internal_test_exports")]
    pending_probe: Option<crate::bwe_::ProbeClusterConfig>,
    #[cfg(test)]
    pub(crate) shortcuts: Shortcuts,
}

/// Last RRTR (Receiver Reference Time Report, RFC 3611 §4.4) received from a remote SSRC.
/// Stored at session level so we can respond with a DLRR regardless of which local stream
/// the remote is observing.
#[derive(Debug, Clone, Copy)]
struct LastRrtr {
    /// Middle 32 bits of the RRTR NTP timestamp (compact NTP / LRR).
    lrr: u32,
    /// When the RRTR arrived locally.
    received_at: Instant,
}

impl Session {
    pub fn new(config: &RtcConfig) -> Self {
        let mut id = SessionId::new();
        // Max 2^62 - 1: https://bugzilla.mozilla.org/show_bug.cgi?id=861895
        const MAX_ID: u64 = 2_u64.pow(62) - 1;
        while *id > MAX_ID {
            id = (*id >> 1).into();
        }
        let (pacer, bwe) = if let Some(config) = &config.bwe_config {
            let rate = config.initial_bitrate;
            let pacer = PacerImpl::leaky_bucket(rate * 2.0);
            let bwe = Bwe::new(rate);
            (pacer, Some(bwe))
        } else {
            (PacerImpl::null(), None)
        };

        let enable_stats = config.stats_interval.is_some();

        Session {
            id,
            medias: vec![],
            media_pos: FastMap::default(),
            probe_eligible: (None, FastMap::default()),
            probe_media_found: None,
            last_tx: (crate::streams::NO_SLOT, usize::MAX),
            payload_pending: vec![],
            reports_at: None,
            receive_pending: vec![],
            media_events: true,
            streams: Streams::new(enable_stats, *config.mtu.end(), config.pause_threshold),
            app: None,
            reordering_size_audio: config.reordering_size_audio,
            reordering_size_video: config.reordering_size_video,
            reordering_timeout_audio: config.reordering_timeout_audio,
            intervals: config.intervals,
            send_buffer_audio: config.send_buffer_audio,
            send_buffer_video: config.send_buffer_video,
            send_buffer_duration: config.send_buffer_duration,
            exts: config.exts.clone(),

            // Both sending and receiving starts from the configured codecs.
            // These can then be changed in the SDP OFFER/ANSWER dance.
            codec_config: config.codec_config.clone(),
            probe_payload_params: None,

            srtp_rx: None,
            srtp_tx: None,
            last_nack: already_happened(),
            nack_live: false,
            last_twcc: already_happened(),
            twcc: 0,
            twcc_rx_register: TwccRecvRegister::new(100),
            arrival: None,
            twcc_tx_register: TwccSendRegister::new(1000),
            max_rx_seq_lookup: FastMap::default(),
            bwe,
            bwe_last_event: None,
            enable_twcc_feedback: false,
            pacer,
            pacer_control: PacerControl::new(),
            pending_packet: None,
            media_bytes_rx: 0,
            media_bytes_tx: 0,
            ice_lite: config.ice_lite,
            rtp_mode: config.rtp_mode,
            vp9_packetizer_mode: config.vp9_packetizer_mode,
            feedback_tx: VecDeque::new(),
            feedback_rx: VecDeque::new(),
            rtp_closing: false,
            pending_rrtrs: VecDeque::new(),
            raw_packets: if config.enable_raw_packets {
                Some(VecDeque::new())
            } else {
                None
            },
            pending_app_feedback: None,
            mtu: config.mtu.clone(),
            #[cfg(feature = "_internal_test_exports")]
            pending_probe: None,
            #[cfg(test)]
            shortcuts: Shortcuts::default(),
        }
    }

    fn mtu(&self) -> usize {
        *self.mtu.start()
    }

    fn mtu_warn(&self) -> usize {
        *self.mtu.end()
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn set_app(&mut self, mid: Mid, index: usize) -> Result<(), String> {
        if let Some((mid_existing, index_existing)) = self.app {
            if mid_existing != mid {
                return Err(format!("App mid changed {} != {}", mid, mid_existing,));
            }
            if index_existing != index {
                return Err(format!("App index changed {} != {}", index, index_existing,));
            }
        } else {
            self.app = Some((mid, index));
        }
        Ok(())
    }

    pub fn app(&self) -> &Option<(Mid, usize)> {
        &self.app
    }

    pub fn set_keying_material(
        &mut self,
        mat: KeyingMaterial,
        crypto: &CryptoProvider,
        srtp_profile: SrtpProfile,
        active: bool,
    ) {
        // TODO: rename this to `initialise_srtp_context`?
        // Whether we're active or passive determines if we use the left or right
        // hand side of the key material to derive input/output.
        let left = active;

        self.srtp_rx = Some(SrtpContext::new(crypto, srtp_profile, &mat, !left));
        self.srtp_tx = Some(SrtpContext::new(crypto, srtp_profile, &mat, left));
    }

    pub fn handle_timeout(&mut self, now: Instant, wake: &mut Wake) -> Result<(), RtcError> {
        if self.rtp_closing {
            // Closing only drains previously queued BYEs; this timeout changes nothing.
            wake.no_events();
            wake.no_timeout();
            return Ok(());
        }

        // Parloir patch 68: the NACK grid (patch 46) runs from the session's first timeout,
        // where the always-on timer started, rather than from `already_happened()`, an
        // instant of the process's clock: the passes' phase then depends on the session's
        // own times only, and a simulation repeats.
        if self.last_nack == already_happened() {
            self.last_nack = now;
        }

        // Payload ready media.
        self.do_payload(now)?;

        let sender_ssrc = self.streams.first_ssrc_local();

        let do_nack = now >= self.nack_at().unwrap_or(not_happening());

        self.streams.handle_timeout(
            now,
            sender_ssrc,
            do_nack,
            &self.medias,
            StreamTimeoutConfig {
                codecs: &self.codec_config,
                intervals: self.intervals,
            },
            &mut self.feedback_tx,
        );

        // Flush any pending RRTRs as a DLRR alongside the Sender Report compound packet.
        // We piggyback on the SR cadence so the DLRR doesn't generate extra standalone
        // RTCP traffic that could perturb bandwidth estimation.
        // Consume at most 50 entries per report; the rest remain for subsequent SRs.
        if self.dlrr_due() {
            let n = self.pending_rrtrs.len().min(MAX_DLRR_PER_REPORT);
            let items: Vec<DlrrItem> = self
                .pending_rrtrs
                .drain(..n)
                .map(|(ssrc, rrtr)| {
                    let delay = now.saturating_duration_since(rrtr.received_at);
                    let last_rr_delay = ((delay.as_micros() * 65_536) / 1_000_000) as u32;
                    DlrrItem {
                        ssrc,
                        last_rr_time: rrtr.lrr,
                        last_rr_delay,
                    }
                })
                .collect();

            self.feedback_tx
                .push_back(Rtcp::ExtendedReport(ExtendedReport {
                    ssrc: sender_ssrc,
                    blocks: vec![ReportBlock::Dlrr(Dlrr { items })],
                }));
        }

        if do_nack {
            self.last_nack = now;
        }

        let probe_media = self.handle_timeout_bwe(now);
        self.update_queue_state(now, probe_media);

        if let Some(twcc_at) = self.twcc_at() {
            if now >= twcc_at {
                self.create_twcc_feedback(sender_ssrc, now);
            }
        }

        Ok(())
    }

    /// Parloir patch 84: whether a whole timeout would add a DLRR to a sender report waiting to
    /// go out (an RRTR came in after the report was made and before it was sent): the pacer's
    /// part alone would leave the RRTR for the next report.
    pub fn dlrr_due(&self) -> bool {
        !self.pending_rrtrs.is_empty()
            && self
                .feedback_tx
                .iter()
                .any(|r| matches!(r, Rtcp::SenderReport(_)))
    }

    /// Parloir patch: the pacer's part of [`Session::handle_timeout`], in the same order, for
    /// a timeout before any other part's deadline (`Rtc::do_handle_timeout`): those parts
    /// would find nothing due. The estimator sees every timeout as before. What it queues is
    /// datagrams, unless an estimate may be ready or a probe starts, runs or ends: then
    /// every event source is walked, as after a whole pass.
    pub fn handle_pacer_timeout(&mut self, now: Instant, wake: &mut Wake) {
        if self.rtp_closing {
            wake.no_events();
            wake.no_timeout();
            return;
        }
        #[cfg(test)]
        {
            self.shortcuts.pacer_timeouts += 1;
        }
        if self.pacer_part_of_timeout(now) {
            wake.datagrams_only();
            wake.pacer_only();
        }
    }

    /// Parloir patch: the estimator's and the pacer's part of a timeout. True when what it
    /// did was only to let packets out: no estimate may be ready, no probe started, ran or
    /// ended, no padding was queued (unstamped: the streams' timeout stamps it). Otherwise the
    /// caller wakes everything, as after a whole timeout.
    fn pacer_part_of_timeout(&mut self, now: Instant) -> bool {
        let probing = self.pacer.active_cluster().is_some();
        let probe_media = self.handle_timeout_bwe(now);
        let padding = self.update_queue_state(now, probe_media);
        let estimate_pending = self.bwe.as_ref().is_some_and(|bwe| bwe.may_emit());
        !probing && self.pacer.active_cluster().is_none() && !estimate_pending && !padding
    }

    fn handle_timeout_bwe(&mut self, now: Instant) -> Option<(Mid, Pt)> {
        self.bwe.as_ref()?;

        // We can request probes once SRTP keys are available and a non-stopped,
        // sending media section has both a transport sequence extension and a
        // payload type supporting TWCC feedback. No prior media packet or RTX
        // stream is required. The Direct API uses its configured capabilities.
        let probe_media = if self.srtp_tx.is_some() {
            self.probe_media()
        } else {
            None
        };
        let do_probe = probe_media.is_some();
        let bwe = self.bwe.as_mut()?;

        if let Some(probe_config) = bwe.handle_timeout(now, do_probe) {
            // Only start the probe in the pacer if the estimator accepted it.
            if bwe.start_probe(probe_config, now) {
                #[cfg(feature = "_internal_test_exports")]
                {
                    self.pending_probe = Some(probe_config);
                }
                self.pacer.start_probe(probe_config);
            }
        }

        // Check if active probe just completed
        if let Some(cluster_id) = self.pacer.check_probe_complete(now) {
            bwe.end_probe(now, cluster_id);
            self.streams.set_probe_media(None);
        }
        probe_media
    }

    /// Whether the pacer asked for padding (Parloir patch: the return value).
    fn update_queue_state(&mut self, now: Instant, probe_media: Option<(Mid, Pt)>) -> bool {
        // Do not make unsendable media/padding ready before DTLS supplies keys.
        // Otherwise an immediate pacer deadline can starve the application's I/O.
        if self.srtp_tx.is_none() {
            return false;
        }

        let cluster = self.pacer.active_cluster();
        let probe_media = probe_media.filter(|_| cluster.is_some());
        self.streams.set_probe_media(probe_media);
        if self.probe_eligible.0 != cluster {
            self.probe_eligible.1.clear();
            self.probe_eligible.0 = cluster;
            // Patch 57: and the probe's padding candidate found with it.
            self.streams.forget_probe_padding();
        }
        let medias = &self.medias;
        let media_pos = &self.media_pos;
        let codecs = &self.codec_config;
        let eligible = &mut self.probe_eligible.1;
        let iter = self
            .streams
            .send_queue_states(now, self.intervals, |mid, pt| {
                // Reuse the already-validated fallback binding when it matches.
                // Parloir patch 54: the m-line found by its position (`media_pos`), not by a
                // scan of every m-line for each stream that can pad. Patch 55: once per m-line
                // and payload type during a cluster, not for each stream at each timeout.
                probe_media == Some((mid, pt))
                    || *eligible.entry((mid, pt)).or_insert_with(|| {
                        media_at(medias, media_pos, mid)
                            .is_some_and(|media| Self::probe_pt(media, codecs, Some(pt)).is_some())
                    })
            });

        let Some(padding_request) = self.pacer.handle_timeout(now, iter) else {
            return false;
        };

        let stream = self
            .streams
            .stream_tx_by_midrid(padding_request.midrid)
            .expect("pacer to use an existing stream");

        stream.generate_padding(padding_request.padding);
        true
    }

    // Use a negotiated PT and MID so browser transports can route the packet to
    // their receive-side congestion controller before discarding the empty payload.
    // Parloir patch 56: found once for each state of the m-lines (`medias_changed`), not at
    // every pacer timeout and every event polled.
    fn probe_media(&mut self) -> Option<(Mid, Pt)> {
        if let Some(found) = self.probe_media_found {
            return found;
        }
        let found = self.medias.iter().find_map(|media| {
            Self::probe_pt(media, &self.codec_config, None).map(|pt| (media.mid(), pt))
        });
        self.probe_media_found = Some(found);
        found
    }

    // A regular padding source needs feedback for its actual payload type;
    // the SSRC 0 fallback can use any eligible payload type on this media.
    fn probe_pt(media: &Media, codecs: &CodecConfig, padding_pt: Option<Pt>) -> Option<Pt> {
        if media.stopped() || !media.direction().is_sending() {
            return None;
        }
        media
            .remote_extmap()
            .id_of(Extension::TransportSequenceNumber)?;
        codecs
            .params()
            .iter()
            .find(|p| {
                padding_pt.is_none_or(|pt| p.pt() == pt)
                    && p.fb_transport_cc()
                    && p.spec().codec.is_audio() == media.kind().is_audio()
                    && (media.remote_pts().is_empty() || media.remote_pts().contains(&p.pt()))
            })
            .map(|p| p.pt())
    }

    fn create_twcc_feedback(&mut self, sender_ssrc: Ssrc, now: Instant) -> Option<()> {
        self.last_twcc = now;
        let mut twcc = self.twcc_rx_register.build_report(self.mtu() - 100)?;

        // These SSRC are on media level, but twcc is on session level,
        // we fill in the first discovered media SSRC in each direction.
        twcc.sender_ssrc = sender_ssrc;
        twcc.ssrc = self.streams.first_ssrc_remote();

        trace!("Created feedback TWCC: {:?}", twcc);
        self.feedback_tx.push_front(Rtcp::Twcc(twcc));
        Some(())
    }

    /// Enqueue an application-specific feedback message (PSFB FMT=15, PT=206) for
    /// transmission as part of the regular RTCP compound packet.
    pub(crate) fn send_app_specific_feedback(
        &mut self,
        sender_ssrc: Ssrc,
        media_ssrc: Ssrc,
        payload: impl Into<Arc<[u8]>>,
    ) {
        use crate::rtp_::AppSpecificFeedback as RtcpAppFeedback;
        let feedback = RtcpAppFeedback {
            sender_ssrc,
            media_ssrc,
            payload: payload.into(),
        };
        self.feedback_tx
            .push_back(Rtcp::AppSpecificFeedback(feedback));
    }

    /// Enqueue a Picture Loss Indication (PLI, PT=206 FMT=1) for `media_ssrc`, to be
    /// sent as part of the regular RTCP compound packet. The feedback packet's sender
    /// SSRC is set to `sender_ssrc`.
    pub(crate) fn send_pli_feedback(&mut self, sender_ssrc: Ssrc, media_ssrc: Ssrc) {
        self.feedback_tx.push_back(Rtcp::Pli(Pli {
            sender_ssrc,
            ssrc: media_ssrc,
        }));
    }

    pub fn handle_rtp_receive(&mut self, now: Instant, message: &[u8], wake: &mut Wake) {
        let Some(header) = RtpHeader::parse(message, &self.exts) else {
            // Parsing has not touched stream state. Later rejection paths can have.
            wake.no_events();
            wake.no_timeout();
            trace!("Failed to parse RTP header");
            return;
        };

        self.handle_rtp(now, header, message);
    }

    pub fn handle_rtcp_receive(&mut self, now: Instant, message: &[u8], wake: &mut Wake) {
        // According to spec, the outer enclosing SRTCP packet should always be a SR or RR,
        // even if it's irrelevant and empty.
        // In practice I'm not sure that is happening, because libWebRTC hates empty packets.
        if self.handle_rtcp(now, message, wake).is_none() {
            // Missing keys or failed authentication: no reports reached the session.
            wake.no_events();
            wake.no_timeout();
        }
    }

    fn mid_and_ssrc_for_header(&mut self, now: Instant, header: &RtpHeader) -> Option<(Mid, Ssrc)> {
        let ssrc_header = header.ssrc;

        // SSRC 0 is used for non-media BWE probes from libwebrtc.
        // These probes need TWCC feedback but don't carry actual media.
        if ssrc_header.is_probe() {
            return self.ensure_probe_stream(header.payload_type);
        }

        if let Some(r) = self.streams.mid_ssrc_rx_by_ssrc_or_rtx(now, ssrc_header) {
            return Some(r);
        }

        // Attempt to dynamically map this header to some Media/ReceiveStream.
        self.map_dynamic(header);

        // The dynamic mapping might have added an entry by now.
        if let Some(r) = self.streams.mid_ssrc_rx_by_ssrc_or_rtx(now, ssrc_header) {
            return Some(r);
        }

        None
    }

    /// Creates the probe stream on-demand for handling SSRC 0 BWE probes.
    ///
    /// No Media is created since probes don't carry real media - they only need
    /// SRTP decryption and TWCC feedback.
    fn ensure_probe_stream(&mut self, pt: Pt) -> Option<(Mid, Ssrc)> {
        let ssrc: Ssrc = 0.into();
        let midrid = MidRid(MID_PROBE, None);

        // Add PayloadParams for this PT if not already configured.
        // Probes may use different PTs, so we add them as we see them.
        if self
            .probe_payload_params
            .as_ref()
            .is_none_or(|p| p.pt() != pt)
        {
            self.probe_payload_params = Some(PayloadParams::new_probe(pt));
        }

        // Create the stream with NACK suppressed (probes don't need retransmission).
        // Reusing it must not invalidate the cached NACK state on every packet.
        if !self.streams.has_stream_rx(ssrc) {
            self.streams.expect_stream_rx(ssrc, None, midrid, true);
        }

        Some((MID_PROBE, ssrc))
    }

    fn map_dynamic(&mut self, header: &RtpHeader) {
        // There are two strategies for dynamically mapping SSRC. Both use the RTP "mid"
        // header extension.
        // A) Mid+Rid - used when doing simulcast. Rid points out which
        //              simulcast layer is in use. There is a separate header
        //              to indicate repair (RTX) stream.
        // B) Mid+PT - when not doing simulcast, the PT identifies whether
        //             this is a repair stream.

        let Some(mid) = header.ext_vals.mid else {
            return;
        };
        let rid = header.ext_vals.rid.or(header.ext_vals.rid_repair);

        // The media the mid points out. Bail if the mid points to something
        // we don't know about.
        let Some(media) = media_at_mut(&mut self.medias, &mut self.media_pos, mid) else {
            return;
        };

        // Figure out which payload the PT maps to. Either main or RTX.
        let maybe_payload = self.codec_config.iter().find(|p| {
            p.pt() == header.payload_type
                || p.resend() == Some(header.payload_type)
                || p.red() == Some(header.payload_type)
        });

        // If we don't find it, bail out.
        let Some(payload) = maybe_payload else {
            return;
        };

        if let Some(rid) = rid {
            // Case A - use the rid_repair header to identify RTX.
            let is_main = header.ext_vals.rid.is_some();

            let midrid = MidRid(mid, Some(rid));

            self.streams
                .map_dynamic_by_rid(header.ssrc, midrid, media, *payload, is_main);
        } else {
            // Case B - the payload type identifies RTX. RED rides the main SSRC, so a RED
            // PT is also "main".
            let is_main =
                payload.pt() == header.payload_type || payload.red() == Some(header.payload_type);

            let midrid = MidRid(mid, None);

            self.streams
                .map_dynamic_by_pt(header.ssrc, midrid, media, *payload, is_main);
        }
    }

    pub(crate) fn handle_rtp(&mut self, now: Instant, mut header: RtpHeader, buf: &[u8]) {
        // Rewrite absolute-send-time (if present) to be relative to now.
        header.ext_vals.update_absolute_send_time(now);

        trace!("Handle RTP: {:?}", header);

        // Early repair padding has no main stream yet, but still needs transport feedback.
        let mapped = self.mid_and_ssrc_for_header(now, &header);
        let can_receive = mapped.is_some() || self.is_early_rtx_padding(&header);
        if !can_receive {
            trace!("No mid/SSRC for header: {:?}", header);
            return;
        }

        let srtp = match self.srtp_rx.as_mut() {
            Some(v) => v,
            None => {
                trace!("Rejecting SRTP while missing SrtpContext");
                return;
            }
        };

        let mut stream = mapped.and_then(|(_, ssrc)| self.streams.stream_rx(&ssrc));
        let maybe_params = if header.ssrc.is_probe() {
            self.probe_payload_params.as_ref()
        } else {
            main_payload_params(&self.codec_config, header.payload_type)
        };

        let params = match maybe_params {
            Some(p) => p,
            None => {
                trace!(
                    "No payload params could be found (main or RTX) for {:?}",
                    header.payload_type
                );
                return;
            }
        };
        let clock_rate = params.spec().rtp_clock_rate();
        let pt = params.pt();
        let is_red = params.red() == Some(header.payload_type);
        // RTX padding may use the main payload type, so an associated RTX SSRC takes precedence.
        let repair_ssrc = stream.as_ref().and_then(|s| s.rtx());
        let is_repair = repair_ssrc == Some(header.ssrc) || (!is_red && pt != header.payload_type);
        let history = self.max_rx_seq_lookup.get(&header.ssrc);
        let mut seq_no = if let Some(stream) = &mut stream {
            let max_seq_lookup = make_max_seq_lookup(&self.max_rx_seq_lookup);
            stream.extend_seq(&header, is_repair, max_seq_lookup)
        } else {
            let max_seq = history.map(|s| s.max_seq());
            header.sequence_number(max_seq)
        };
        let is_repair_padding = is_repair && header.has_padding;
        let use_session_history = is_repair_padding || stream.is_none();
        // A newly discovered stream restores only the RTX maximum and blocks older packets.
        // Keep using the session bitmap for padding so unseen reordered packets still count,
        // while padding already received before discovery remains protected against replay.
        let is_new = if use_session_history {
            history.is_none_or(|history| history.accepts(seq_no))
        } else {
            let stream = stream.as_ref().unwrap();
            stream.is_new_packet(is_repair, seq_no)
        };
        if !is_new {
            trace!(
                "Ignoring dupe packet ssrc: {} seq_no: {}",
                header.ssrc, seq_no
            );
            return;
        }

        // The decrypted plaintext borrows from the SRTP scratch buffer. We
        // narrow it down to the actual payload via slicing only, then build
        // the final `Arc<[u8]>` in a single allocation at the end. Parloir patch 62: the
        // thread's buffer, not one of this connection's own.
        let mut plain = crate::io::Scratch::take();
        let data = match srtp.unprotect_rtp_into(buf, &header, *seq_no, &mut plain) {
            Some(d) => d,
            None => {
                trace!(
                    "Failed to unprotect SRTP for SSRC: {} pt: {}  mid: {:?} \
                    rid: {:?} seq_no: {} is_repair: {}",
                    header.ssrc,
                    pt,
                    header.ext_vals.mid,
                    header.ext_vals.rid.or(header.ext_vals.rid_repair),
                    seq_no,
                    is_repair
                );
                return;
            }
        };

        let data = if header.has_padding {
            match RtpHeader::unpad_payload(data) {
                Some(d) => d,
                None => {
                    trace!("unpadding of unprotected payload failed");
                    return;
                }
            }
        } else {
            data
        };

        // The header padding flag alone does not mean the packet contains only padding.
        // Authenticate and unpad first; media payload needs a mapped stream to be processed.
        if stream.is_none() && !data.is_empty() {
            return;
        }

        if let Some(raw_packets) = &mut self.raw_packets {
            raw_packets.push_back(Box::new(RawPacket::RtpRx(header.clone(), data.to_vec())));
        }

        // Mark as received for TWCC purposes
        if let Some(transport_cc) = header.ext_vals.transport_cc {
            let prev = self.twcc_rx_register.max_seq();
            let extended = extend_u16(prev.map(|s| *s), transport_cc);
            // Parloir patch: the arrival, when the caller knows it.
            let arrived = self.arrival.map_or(now, |a| a.min(now));
            self.twcc_rx_register.update_seq(extended.into(), arrived);
        }

        // Store largest seen seq_no for the SSRC. This is used in case we get SSRC changes
        // like A -> B -> A. When we go back to A, we must keep the ROC.
        update_max_seq(&mut self.max_rx_seq_lookup, header.ssrc, seq_no);

        let Some(stream) = stream else {
            return;
        };
        // A receive stream exists only when MID/SSRC mapping succeeded.
        let (mid, ssrc) = mapped.unwrap();

        // Register reception in nack registers.
        let receipt_outer = stream.update_register(now, &header, clock_rate, is_repair, seq_no);

        // Parloir patch 46: the NACK timer runs only while a packet is missing. When one goes
        // missing after a quiet spell, the NACK passes resume on the grid they would have kept
        // had the timer run all along (every NACK_MIN_INTERVAL from the last), so a first NACK
        // waits what it did before.
        if !self.nack_live && stream.nack_enabled() {
            // Patch 68: a session that had no timeout yet starts its grid here.
            let last = if self.last_nack == already_happened() {
                now
            } else {
                self.last_nack
            };
            self.last_nack = Self::nack_grid(last, now);
            self.nack_live = true;
        }

        // RED-recovered packets (frame mode) are collected here and delivered after the
        // primary, filling single-packet losses from the next packet's redundancy.
        let mut red_recovered: Vec<(RtpHeader, Arc<[u8]>, SeqNo, MediaTime)> = Vec::new();

        // Capture the full wire payload length before RED unwrapping narrows `data` to the primary
        // block. The sender counts the whole RED-wrapped payload, so receive stats must too.
        let wire_payload_len = data.len();

        // RTX packets must be rewritten to be a normal packet. This only changes the
        // the seq_no, however MediaTime might be different when interpreted against the
        // the "main" register.
        let (receipt, data) = if is_repair {
            // Drop RTX packets that are just empty padding. The payload here
            // is empty because we would have done RtpHeader::unpad_payload above.
            // For unpausing, it's enough with the stream.update() already done above.
            if data.is_empty() {
                return;
            }

            // Rewrite the header, and strip the resent seq_no prefix from the body.
            let data = stream.un_rtx(&mut header, data, pt);

            let max_seq_lookup = make_max_seq_lookup(&self.max_rx_seq_lookup);

            // Header has changed, which means we extend a new seq_no. This time
            // without is_repair since this is the wrapped resend. This is the
            // extended number of the main stream.
            seq_no = stream.extend_seq(&header, false, max_seq_lookup);

            // header.ssrc is changed by un_rtx() above to be main SSRC.
            update_max_seq(&mut self.max_rx_seq_lookup, header.ssrc, seq_no);

            // Now update the "main" register with the repaired packet info.
            let receipt = stream.update_register(now, &header, clock_rate, false, seq_no);
            (receipt, data)
        } else if is_red && !self.rtp_mode {
            // Frame mode: RED rides the main SSRC/seq. Decode to the primary (Opus) payload
            // and rewrite the header PT; drop the packet if the RED structure is malformed.
            let Some(un) = un_red(&mut header, data, pt) else {
                return;
            };
            // Each redundant block carries an earlier frame. Place it at the sequence number it
            // belongs to (derived from its timestamp and the packets received around it, see
            // `StreamRx::red_locate_seq`) and, if that is still missing, deliver it as a
            // recovered packet so a loss is filled without a retransmission. Only same-PT blocks
            // are considered: RFC 2198 permits a redundant block of another codec, which must
            // never be fed to this depayloader.
            for b in red_same_pt_blocks(&un.redundant, *pt) {
                // Skip recovery (rather than inject a bad timestamp) if the offset somehow
                // exceeds the primary's extended media time.
                let Some(numer) = receipt_outer
                    .time
                    .numer()
                    .checked_sub(b.timestamp_offset as u64)
                else {
                    continue;
                };
                // `None` when the block can't be tied to a currently-missing seq no (see
                // `red_locate_seq` for the exact vs. best-effort cases), or when that seq no
                // was already received or recovered. Recovery only ever fills a hole.
                let Some(rec_seq) = stream.red_locate_seq(seq_no, numer) else {
                    continue;
                };
                // Mark it so the seq is neither NACKed nor recovered again from a later packet.
                // It is not counted as received (it was lost on the wire), so reception reports
                // still carry the real loss. `red_locate_seq` now rejects this seq, which also
                // dedups a malformed packet repeating the same offset.
                stream.mark_red_recovered(rec_seq, numer);

                let rec_time = MediaTime::new(numer, clock_rate);
                let mut rec_header = header.clone();
                rec_header.sequence_number = *rec_seq as u16;
                // RFC 2198: the marker bit is not carried for redundant blocks. Clearing it also
                // stops a recovered (historical) audio frame being seen as a start-of-talkspurt.
                rec_header.marker = false;
                // Redundant blocks carry no header extensions, so a recovered frame cannot carry
                // its own (e.g. audio level). Clear the carrier's extensions rather than let the
                // recovered frame inherit the current packet's metadata.
                rec_header.ext_vals = ExtensionValues::default();
                red_recovered.push((rec_header, Arc::from(b.payload), rec_seq, rec_time));
            }
            (receipt_outer, un.primary)
        } else {
            // This is not RTX, the outer seq and time is what we use. The first
            // stream.update will have updated the main register.
            (receipt_outer, data)
        };

        // Probe packets (SSRC 0) contain only padding, no real media to process
        if ssrc.is_probe() {
            return;
        }

        // For RED (frame mode) `data` is now just the unwrapped primary; count the full RED wire
        // payload instead so receive accounting matches the sender's byte count.
        let rx_bytes = if is_red && !self.rtp_mode {
            wire_payload_len
        } else {
            data.len()
        };
        self.media_bytes_rx += rx_bytes as u64;

        // One-shot conversion to Arc<[u8]>: a single allocation that copies
        // only the trimmed payload bytes out of the SRTP scratch buffer (the thread's).
        let payload: Arc<[u8]> = Arc::from(data);

        let packet = stream.handle_rtp(now, header, payload, seq_no, receipt.time, rx_bytes);

        if self.rtp_mode {
            // In RTP mode, we store the packet temporarily here for the next poll_output().
            // However only if this is a packet not seen before. This filters out spurious
            // resends for padding.
            if receipt.is_new_packet {
                self.pending_packet = Some(packet);
            }
        } else {
            // In non-RTP mode, we let the Media use a Depayloader.
            // unwrap is fine because mid_and_ssrc_for_header guarantees it.
            let media = media_at_mut(&mut self.medias, &mut self.media_pos, mid).unwrap();
            note_pending(&mut self.receive_pending, mid);
            media.depayload(
                stream.rid(),
                packet,
                self.reordering_size_audio,
                self.reordering_size_video,
                &self.codec_config,
            );
        }

        // Deliver any RED-recovered packets (frame mode only) through the same depayload
        // path. The jitter buffer orders them and dedups against any later real arrival.
        for (rec_header, rec_payload, rec_seq, rec_time) in red_recovered {
            // make_rtp_packet (not handle_rtp): recovered packets must not inflate RX stats.
            let rec_packet =
                stream.make_rtp_packet(now, rec_header, rec_payload, rec_seq, rec_time);
            let media = media_at_mut(&mut self.medias, &mut self.media_pos, mid).unwrap();
            note_pending(&mut self.receive_pending, mid);
            media.depayload(
                stream.rid(),
                rec_packet,
                self.reordering_size_audio,
                self.reordering_size_video,
                &self.codec_config,
            );
        }
    }

    /// Identifies candidates for padding receipt before the main SSRC is discovered.
    ///
    /// MID and repair RID must identify a negotiated simulcast layer, and the codec must
    /// support RTX. This limits the fallback to expected repair traffic instead of accepting
    /// arbitrary unmapped SSRCs. These header checks do not authenticate the packet or prove
    /// it contains only padding; the receive path verifies both before recording a receipt.
    fn is_early_rtx_padding(&self, header: &RtpHeader) -> bool {
        let Some(mid) = header.ext_vals.mid else {
            return false;
        };
        let Some(media) = self.medias.iter().find(|m| m.mid() == mid) else {
            return false;
        };
        let params = main_payload_params(&self.codec_config, header.payload_type);
        let has_rtx = params.is_some_and(|p| p.resend().is_some());
        let repair_rid = header.ext_vals.rid_repair;
        let is_expected_rid = repair_rid.is_some_and(|rid| media.rids_rx().contains(rid));
        // A regular RID identifies primary traffic, which must go through normal stream discovery.
        header.has_padding && header.ext_vals.rid.is_none() && has_rtx && is_expected_rid
    }

    fn handle_rtcp(&mut self, now: Instant, buf: &[u8], wake: &mut Wake) -> Option<()> {
        let srtp: &mut SrtpContext = self.srtp_rx.as_mut()?;
        let unprotected = srtp.unprotect_rtcp(buf)?;

        Rtcp::read_packet(&unprotected, &mut self.feedback_rx);
        let mut need_configure_pacer = false;
        let mut may_move_timeout = false;

        if let Some(raw_packets) = &mut self.raw_packets {
            for fb in &self.feedback_rx {
                raw_packets.push_back(Box::new(RawPacket::RtcpRx(fb.clone())));
            }
        }

        // Parloir patch 81: in the thread's list (see `Reused`).
        let mut feedback = Reused::take(&FEEDBACK);
        RtcpFb::extend_from_rtcp(&mut feedback, self.feedback_rx.drain(..));
        for fb in feedback.drain(..) {
            if let RtcpFb::AppSpecificFeedback(asf) = fb {
                self.pending_app_feedback = Some(AppSpecificFeedback {
                    sender_ssrc: asf.sender_ssrc,
                    media_ssrc: asf.media_ssrc,
                    payload: asf.payload,
                });
                continue;
            }

            // Application feedback above only queues an event. Keep the conservative
            // timer wake for every other report, including reports in a compound packet.
            may_move_timeout = true;

            if let RtcpFb::Twcc(twcc) = fb {
                trace!("Handle TWCC: {:?}", twcc);
                let maybe_records = self.twcc_tx_register.apply_report(twcc, now);

                if let (Some(maybe_records), Some(bwe)) = (maybe_records, &mut self.bwe) {
                    bwe.update(&maybe_records, now);
                }
                need_configure_pacer = true;

                // The funky thing about TWCC reports is that they are never stapled
                // together with other RTCP packet. If they were though, we want to
                // handle more packets.
                continue;
            }

            if let RtcpFb::Rrtr((rrtr, ssrc)) = fb {
                // DLRR responder (RFC 3611 §4.5): store the remote's RRTR so we can
                // reply with a DLRR, letting the remote compute RTT.
                let lrr = (rrtr.ntp_time.as_ntp_64() >> 16) as u32;
                let entry = LastRrtr {
                    lrr,
                    received_at: now,
                };

                // Update in place if this SSRC is already pending (preserves queue order).
                if let Some(existing) = self.pending_rrtrs.iter_mut().find(|(s, _)| *s == ssrc) {
                    existing.1 = entry;
                } else {
                    // Cap at 300 entries; drop the oldest if full.
                    if self.pending_rrtrs.len() >= MAX_PENDING_RRTRS {
                        self.pending_rrtrs.pop_front();
                    }
                    self.pending_rrtrs.push_back((ssrc, entry));
                }
                continue;
            }

            if let RtcpFb::DlrrItem(dlrr) = fb {
                self.streams.handle_dlrr(now, dlrr);
                continue;
            }

            if fb.is_for_rx() {
                let Some(stream) = self.streams.stream_rx(&fb.ssrc()) else {
                    continue;
                };
                stream.handle_rtcp(now, fb);
            } else if matches!(fb, RtcpFb::ReceptionReport(_)) {
                // Parloir patch 43: a reception report gives the stream no timeout work.
                let Some(stream) = self.streams.stream_tx_for_report(&fb.ssrc()) else {
                    continue;
                };
                stream.handle_rtcp(now, fb);
            } else {
                let Some(stream) = self.streams.stream_tx(&fb.ssrc()) else {
                    continue;
                };
                stream.handle_rtcp(now, fb);
            }
        }

        // Not in the above if due to lifetime issues, still okay because the method
        // doesn't do anything when BWE isn't configured.
        if need_configure_pacer {
            self.configure_pacer();
        }

        if !may_move_timeout {
            // Also covers empty reports; raw-packet capture only queues events.
            wake.no_timeout();
        }

        Some(())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        #[cfg(feature = "_internal_test_exports")]
        {
            if let Some(probe) = self.pending_probe.take() {
                return Some(Event::Probe(probe));
            }
        }

        let can_probe =
            self.bwe.is_some() && self.srtp_tx.is_some() && self.probe_media().is_some();
        if let Some(bwe) = &mut self.bwe {
            // Drain estimates even while unavailable so they cannot be delivered later.
            let estimate = bwe.poll_estimate();
            let estimate = match (can_probe, self.bwe_last_event) {
                (false, Some((last, true))) => Some(last),
                (false, _) => None,
                (true, Some((_, true))) => estimate,
                (true, _) => bwe.last_estimate(),
            };
            if let Some(estimate) = estimate {
                self.bwe_last_event = Some((estimate, can_probe));
                let kind = BweKind::Twcc {
                    estimate,
                    can_probe,
                };
                return Some(Event::EgressBitrateEstimate(kind));
            }
        }

        // If we're not ready to flow media, don't send any events.
        if !self.ready_for_srtp() {
            return None;
        }

        if let Some(raw_packets) = &mut self.raw_packets {
            if let Some(p) = raw_packets.pop_front() {
                return Some(Event::RawPacket(p));
            }
        }

        if let Some(feedback) = self.pending_app_feedback.take() {
            return Some(Event::AppSpecificFeedback(feedback));
        }

        // This must be before pending_packet.take() since we need to emit the unpaused event
        // before the first packet causing the unpause.
        if let Some(paused) = self.streams.poll_stream_paused() {
            return Some(Event::StreamPaused(paused));
        }

        if self.rtp_mode {
            if let Some(packet) = self.pending_packet.take() {
                return Some(Event::RtpPacket(Box::new(packet)));
            }
        }

        if let Some(req) = self.streams.poll_keyframe_request() {
            return Some(Event::KeyframeRequest(req));
        }

        if let Some(report) = self.streams.poll_sender_feedback() {
            return Some(Event::SenderFeedback(report));
        }

        if let Some((mid, bitrate)) = self.streams.poll_remb_request() {
            return Some(Event::EgressBitrateEstimate(BweKind::Remb {
                estimate: bitrate,
                mid,
            }));
        }

        if !self.media_events {
            return None;
        }
        for media in &mut self.medias {
            if media.need_open_event {
                media.need_open_event = false;

                return Some(Event::MediaAdded(MediaAdded {
                    mid: media.mid(),
                    kind: media.kind(),
                    direction: media.direction(),
                    simulcast: media.simulcast().map(|s| s.clone().into()),
                }));
            }

            if media.need_changed_event {
                media.need_changed_event = false;
                return Some(Event::MediaChanged(MediaChanged {
                    mid: media.mid(),
                    direction: media.direction(),
                }));
            }
        }
        self.media_events = false;

        None
    }

    fn update_receive_recovery(&mut self) {
        // Parloir patch: only the m-lines whose buffers may hold packets. An m-line leaves
        // that list only once its buffers are empty and their recovery deadline cleared.
        for mid in &self.receive_pending {
            let Some(media) = media_at_mut(&mut self.medias, &mut self.media_pos, *mid) else {
                continue;
            };
            if !media.kind().is_video() {
                continue;
            }
            let mid = media.mid();
            for (rid, buf) in media.receive_buffers() {
                let deadline = buf.recovery_candidate().and_then(|(range, received)| {
                    match self.streams.stream_rx_by_midrid(MidRid(mid, rid)) {
                        Some(stream) => stream.recovery_deadline(range, received),
                        None => received.checked_add(Duration::from_millis(300)),
                    }
                });
                buf.set_recovery_deadline(deadline);
            }
        }
    }

    pub fn poll_event_fallible(&mut self, now: Instant) -> Result<Option<Event>, RtcError> {
        // Not relevant in rtp_mode, where the packets are picked up by poll_event().
        if self.rtp_mode {
            return Ok(None);
        }

        self.update_receive_recovery();
        // Parloir patch: only the m-lines whose buffers may hold packets, in the order they
        // received them (the scan over every m-line went in m-line order).
        for mid in &self.receive_pending {
            let Some(media) = media_at_mut(&mut self.medias, &mut self.media_pos, *mid) else {
                continue;
            };
            if let Some(e) =
                media.poll_sample(&self.codec_config, now, self.reordering_timeout_audio)?
            {
                return Ok(Some(Event::MediaData(Box::new(e))));
            }
        }
        // Nothing left to deliver: forget the m-lines whose buffers are now empty, after
        // clearing their recovery deadlines (what the update above gives an empty buffer).
        let (medias, pos) = (&mut self.medias, &mut self.media_pos);
        self.receive_pending
            .retain(|mid| match media_at_mut(medias, pos, *mid) {
                Some(media) => {
                    let empty = media.receive_buffers().all(|(_, buf)| buf.is_empty());
                    // Only video buffers wait for recovery (`update_receive_recovery`).
                    if empty && media.kind().is_video() {
                        for (_, buf) in media.receive_buffers() {
                            buf.set_recovery_deadline(None);
                        }
                    }
                    !empty
                }
                None => false,
            });

        Ok(None)
    }

    fn ready_for_srtp(&self) -> bool {
        self.srtp_rx.is_some() && self.srtp_tx.is_some()
    }

    /// Parloir patch: whether sending a packet can queue an event (a raw packet copy).
    pub fn sending_queues_events(&self) -> bool {
        self.raw_packets.is_some()
    }

    pub fn poll_datagram(&mut self, now: Instant) -> Option<net::DatagramSend> {
        // Time must have progressed forward from start value.
        if now == already_happened() {
            return None;
        }

        let x = if self.rtp_closing {
            self.poll_feedback()
        } else {
            None.or_else(|| self.poll_feedback())
                .or_else(|| self.poll_packet(now))
        };

        if let Some(x) = &x {
            // In RTP mode we trust the API user feeds the RTP packet sizes they
            // need for the MTU they are targeting. This warning is only for when
            // str0m does the RTP packetization.
            if !self.rtp_mode && x.len() > self.mtu_warn() {
                warn!("RTP above MTU {}: {}", self.mtu_warn(), x.len());
            }
        }

        x
    }

    /// To be called in lieu of [`Self::poll_datagram`] when the owner is not in a position to transmit any
    /// generated feedback, and thus such feedback should be dropped.
    pub fn clear_feedback(&mut self) {
        self.feedback_rx.clear();
        self.feedback_tx.clear();
    }

    pub fn close_rtp(&mut self) {
        if self.rtp_closing {
            return;
        }

        self.rtp_closing = true;
        self.clear_feedback();
        self.streams.reset_send_buffers();

        for reports in ReportList::lists_from_iter(self.streams.local_sender_ssrcs()) {
            self.feedback_tx
                .push_back(Rtcp::Goodbye(Goodbye { reports }));
        }
    }

    pub fn is_rtp_closed(&self) -> bool {
        self.rtp_closing && self.feedback_tx.is_empty()
    }

    fn poll_feedback(&mut self) -> Option<net::DatagramSend> {
        if self.feedback_tx.is_empty() {
            return None;
        }

        // Round to nearest multiple of 4 bytes.
        let encryptable_mtu: usize = (self.mtu() - SRTCP_OVERHEAD) & !3;
        assert!(encryptable_mtu.is_multiple_of(4));

        let mut data = vec![0_u8; encryptable_mtu];

        let mut raw_packets = self.raw_packets.as_mut();
        let output = move |fb| {
            if let Some(raw_packets) = &mut raw_packets {
                raw_packets.push_back(Box::new(RawPacket::RtcpTx(fb)));
            }
        };

        let len = Rtcp::write_packet(&mut self.feedback_tx, &mut data, output);

        if len == 0 {
            return None;
        }

        data.truncate(len);

        let srtp = self.srtp_tx.as_mut()?;
        let protected = srtp.protect_rtcp(&data);

        assert!(
            protected.len() < self.mtu(),
            "Encrypted SRTCP should be less than MTU"
        );

        Some(protected.into())
    }

    fn poll_packet(&mut self, now: Instant) -> Option<DatagramSend> {
        let srtp_tx = self.srtp_tx.as_mut()?;

        // Figure out which, if any, queue to poll
        // The cluster_id is captured by the pacer at poll time, before register_send() might clear it
        let (midrid, cluster_id) = self.pacer.poll_queue()?;
        // Parloir patch 43: most often the stream last written to.
        let (mut slot, mut index) = self.last_tx;
        let stream = self.streams.stream_tx_by_midrid_hinted(midrid, &mut slot)?;
        let mid = stream.mid();
        if media_index_hinted(&self.medias, &self.media_pos, mid, &mut index).is_none() {
            trace!("Pacer pointed to mid {} which has no media", midrid.mid());
            return None;
        }
        self.last_tx = (slot, index);
        let media = &self.medias[index];
        // Parloir patch 62: the thread's buffer, not one of this connection's own.
        let mut scratch = crate::io::Scratch::take();
        let twcc_seq = self.twcc;

        let params = &self.codec_config;
        let exts = media.remote_extmap();

        // TWCC might not be enabled for this m-line. Firefox do use TWCC, but not
        // for audio. This is indiciated via the SDP.
        let twcc_enabled = exts.id_of(Extension::TransportSequenceNumber).is_some();
        let twcc = twcc_enabled.then_some(&mut self.twcc);

        let receipt = stream.poll_packet(now, exts, twcc, params, &mut scratch)?;

        let PacketReceipt {
            header,
            seq_no,
            is_padding,
            payload_size,
            packet_len,
        } = receipt;
        let buf = &scratch[..packet_len];

        trace!(payload_size, is_padding, "Poll RTP: {:?}", header);

        #[cfg(feature = "_internal_dont_use_log_stats")]
        {
            let kind = if is_padding { "padding" } else { "media" };

            crate::log_stat!("PACKET_SENT", header.ssrc, payload_size, kind);
        }

        self.pacer.register_send(now, payload_size.into(), midrid);

        if let Some(raw_packets) = &mut self.raw_packets {
            raw_packets.push_back(Box::new(RawPacket::RtpTx(header.clone(), buf.to_vec())));
        }

        let protected = srtp_tx.protect_rtp(buf, &header, *seq_no);

        if twcc_enabled {
            let packet_id = if let Some(cluster) = cluster_id {
                TwccPacketId::with_cluster(twcc_seq, cluster)
            } else {
                TwccPacketId::new(twcc_seq)
            };
            self.twcc_tx_register
                .register_seq(packet_id, now, payload_size);
        }

        // Update BWE subsystem
        if let Some(bwe) = self.bwe.as_mut() {
            bwe.on_media_sent(payload_size.into(), is_padding, now);
        }

        if !is_padding && !header.ssrc.is_probe() {
            self.media_bytes_tx += payload_size as u64;
        }

        Some(protected.into())
    }

    /// The next timeout of the session (Parloir patch: for tests only; `Rtc` asks for the
    /// two parts apart).
    #[cfg(test)]
    pub fn poll_timeout(&mut self) -> (Option<Instant>, Reason) {
        self.poll_timeout_others()
            .soonest(self.poll_timeout_pacer())
    }

    /// Parloir patch: the next timeout of the pacer and the estimator. What sending a packet
    /// changes is theirs: after a pacer's timeout (`handle_pacer_timeout`) and the packets it
    /// let out, only these two are recomputed.
    pub fn poll_timeout_pacer(&self) -> (Option<Instant>, Reason) {
        if self.rtp_closing {
            return (None, Reason::NotHappening);
        }
        let bwe_at = self
            .bwe
            .as_ref()
            .map(|bwe| bwe.poll_timeout())
            .unwrap_or((None, Reason::NotHappening));
        self.pacer.poll_timeout().soonest(bwe_at)
    }

    /// Parloir patch: the next timeout of everything but the pacer and the estimator
    /// ([`Session::poll_timeout_pacer`]).
    pub fn poll_timeout_others(&mut self) -> (Option<Instant>, Reason) {
        if self.rtp_closing {
            return if self.feedback_tx.is_empty() {
                (None, Reason::NotHappening)
            } else {
                (Some(already_happened()), Reason::Feedback)
            };
        }

        self.update_receive_recovery();
        let feedback_at = self.regular_feedback_at();
        self.reports_at = feedback_at;
        let nack_at = self.nack_at();
        self.nack_live = nack_at.is_some();
        let twcc_at = self.twcc_at();
        // Parloir patch: only the m-lines that may have something queued.
        let packetize_at = self
            .payload_pending
            .iter()
            .filter_map(|mid| media_at(&self.medias, &self.media_pos, *mid))
            .filter_map(|m| m.poll_timeout())
            .min();
        let mut receive_at = None;
        for mid in &self.receive_pending {
            let Some(media) = media_at_mut(&mut self.medias, &mut self.media_pos, *mid) else {
                continue;
            };
            let at = media.poll_receive_timeout(self.reordering_timeout_audio);
            receive_at = match (receive_at, at) {
                (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                (a, b) => a.or(b),
            };
        }
        let paused_at = self.paused_at();
        let send_stream_at = self.streams.send_stream();
        let request_at = self.streams.pending_request();

        (feedback_at, Reason::Feedback)
            .soonest((request_at, Reason::Feedback))
            .soonest((nack_at, Reason::Nack))
            .soonest((twcc_at, Reason::Twcc))
            .soonest((receive_at, Reason::ReceiveReorder))
            .soonest((packetize_at, Reason::Packetize))
            .soonest((paused_at, Reason::PauseCheck))
            .soonest((send_stream_at, Reason::SendStream))
    }

    pub fn has_mid(&self, mid: Mid) -> bool {
        self.medias.iter().any(|m| m.mid() == mid)
            || self.app.is_some_and(|(app_mid, _)| app_mid == mid)
    }

    fn regular_feedback_at(&self) -> Option<Instant> {
        self.streams.regular_feedback_at(self.intervals)
    }

    fn paused_at(&self) -> Option<Instant> {
        self.streams.paused_at()
    }

    fn nack_at(&self) -> Option<Instant> {
        // Paused streams stop counting as NACK-enabled once their pending retries finish,
        // so an idle session doesn't wake every NACK_MIN_INTERVAL for as long as it lives.
        // Parloir patch 46: nor does one whose streams miss nothing.
        if !self.streams.any_nack_enabled() {
            return None;
        }

        Some(self.last_nack + NACK_MIN_INTERVAL)
    }

    /// Parloir patch 46: the last point at or before `now` of the grid every
    /// `NACK_MIN_INTERVAL` from `last`.
    fn nack_grid(last: Instant, now: Instant) -> Instant {
        let since = now.saturating_duration_since(last).as_nanos();
        let step = NACK_MIN_INTERVAL.as_nanos();
        let whole = u64::try_from(since - since % step).unwrap_or(u64::MAX);
        last.checked_add(Duration::from_nanos(whole)).unwrap_or(now)
    }

    fn twcc_at(&self) -> Option<Instant> {
        // Early RTX padding can create transport receipts before any receive stream exists.
        // Scheduling by pending receipts ensures that padding still receives timely feedback.
        if self.enable_twcc_feedback && self.twcc_rx_register.has_unreported() {
            Some(self.last_twcc + TWCC_INTERVAL)
        } else {
            None
        }
    }

    pub fn enable_twcc_feedback(&mut self) {
        if !self.enable_twcc_feedback {
            debug!("Enable TWCC feedback");
            self.enable_twcc_feedback = true;
        }
    }

    /// Parloir patch 48: the streams' statistics only when `media` is set.
    pub fn visit_stats(&mut self, now: Instant, snapshot: &mut StatsSnapshot, media: bool) {
        if media {
            // Parloir patch 86: the maps made with their room, not grown through every size
            // on the way (about 300 outgoing streams on a subscriber's connection at 150).
            let (tx, rx) = self.streams.counts();
            snapshot.egress.reserve(tx);
            snapshot.ingress.reserve(rx);
            // Parloir patch 43: reading statistics does not touch the streams.
            for stream in self.streams.streams_tx_for_stats() {
                stream.visit_stats(snapshot, now);
            }

            for stream in self.streams.streams_rx() {
                stream.visit_stats(snapshot, now);
            }
        }

        snapshot.tx = self.media_bytes_tx;
        snapshot.rx = self.media_bytes_rx;
        snapshot.bwe_tx = self.bwe.as_ref().and_then(|bwe| bwe.last_estimate());

        snapshot.egress_loss_fraction = self.twcc_tx_register.loss(Duration::from_secs(1), now);
        snapshot.rtt = self.twcc_tx_register.rtt();
        snapshot.ingress_loss_fraction = self.twcc_rx_register.loss();
    }

    pub fn set_bwe_bitrate(&mut self, minimum: Bitrate, desired: Bitrate) {
        if let Some(bwe) = self.bwe.as_mut() {
            bwe.set_bitrate(minimum, desired);
            self.configure_pacer();
        }
    }

    pub fn reset_bwe(&mut self, init_bitrate: Bitrate) {
        if let Some(bwe) = self.bwe.as_mut() {
            bwe.reset(init_bitrate);
            self.configure_pacer();
        }
    }

    #[allow(dead_code)]
    pub fn line_count(&self) -> usize {
        self.medias.len() + if self.app.is_some() { 1 } else { 0 }
    }

    pub fn add_media(&mut self, media: Media) {
        self.medias_changed();
        self.medias.push(media);
    }

    /// Parloir patch 56: m-lines were or are about to be added, removed, stopped, renegotiated
    /// or given another direction: what was found from them is forgotten (which may carry
    /// probe padding, patch 55; where probes go, patch 56; the probe's padding candidate,
    /// patch 57), and `poll_event` looks for their open and change events.
    pub(crate) fn medias_changed(&mut self) {
        self.media_events = true;
        self.probe_eligible.1.clear();
        self.probe_media_found = None;
        self.streams.forget_probe_padding();
    }

    pub fn medias(&self) -> &[Media] {
        &self.medias
    }

    pub fn remove_media(&mut self, mid: Mid) {
        self.medias_changed();
        self.medias.retain(|media| media.mid() != mid);
        self.streams.remove_streams_by_mid(mid);
    }

    fn configure_pacer(&mut self) {
        let Some(bwe) = self.bwe.as_mut() else {
            return;
        };

        let Some(current_estimate) = bwe.last_estimate() else {
            // No estimate yet, no padding
            return;
        };
        let is_overuse = bwe.is_overusing();
        let loss_limited = bwe.is_loss_limited();
        let minimum = bwe.minimum_bitrate();

        let has_active_media = self.has_active_outgoing_media();

        // Calculate pacing and padding rates
        let result = self.pacer_control.calculate(
            has_active_media,
            current_estimate,
            is_overuse,
            loss_limited,
            minimum,
        );

        self.pacer.set_padding_rate(result.padding_rate);
        self.pacer.set_pacing_rate(result.pacing_rate);
    }

    fn has_active_outgoing_media(&mut self) -> bool {
        // Direct API media has no SDP remote payload list, so Media::disabled()
        // is not an availability check here. Use the same negotiated/configured
        // sending capabilities as probing, including TWCC feedback.
        self.probe_media().is_some()
    }

    pub fn media_by_mid(&self, mid: Mid) -> Option<&Media> {
        media_at(&self.medias, &self.media_pos, mid)
    }

    /// Parloir patch 49: see `Rtc::write_prefetch`.
    pub(crate) fn write_prefetch(&self, step: u8, hint: usize, f: &mut impl FnMut(*const u8)) {
        match step {
            0 => {
                f(&self.medias as *const Vec<Media> as *const u8);
                f(self.codec_config.params_field());
                f(self.streams.tx_slots_field());
            }
            1 => f(self.codec_config.params().as_ptr() as *const u8),
            2 if hint < self.medias.len() => {
                let media = self.medias.as_ptr().wrapping_add(hint) as *const u8;
                crate::util::object_lines(media, std::mem::size_of::<Media>(), f);
            }
            3 => {
                if let Some(media) = self.medias.get(hint) {
                    self.streams.tx_write_lines(media.tx_slot(), f);
                    media.payloader_lines(f);
                }
            }
            _ => {}
        }
    }

    /// Parloir patch 52: see `Rtc::poll_prefetch`.
    pub(crate) fn poll_prefetch(&self, step: u8, f: &mut impl FnMut(*const u8)) {
        fn at<T>(field: &T) -> *const u8 {
            field as *const T as *const u8
        }
        let (slot, index) = self.last_tx;
        match step {
            0 => {
                for field in [
                    at(&self.rtp_closing),
                    at(&self.feedback_tx),
                    at(&self.srtp_tx),
                    at(&self.pacer),
                    at(&self.last_tx),
                    at(&self.medias),
                    at(&self.twcc),
                    at(&self.twcc_tx_register),
                    at(&self.bwe),
                    at(&self.media_bytes_tx),
                    at(&self.raw_packets),
                    self.codec_config.params_field(),
                    self.streams.tx_slots_field(),
                ] {
                    f(field);
                }
            }
            1 => {
                self.streams.tx_poll_lines(slot, f);

                if let Some(media) = self.medias.get(index) {
                    f(at(media.remote_extmap()));
                }
                f(self.codec_config.params().as_ptr() as *const u8);
            }
            2 => self.streams.tx_poll_next_lines(slot, f),
            _ => {}
        }
    }

    /// Parloir patch 43: the position of the m-line of `mid`, trying `hint` first (a position
    /// the caller kept from an earlier call; checked); `hint` is set to the position found.
    pub(crate) fn media_index_hinted(&self, mid: Mid, hint: &mut usize) -> Option<usize> {
        media_index_hinted(&self.medias, &self.media_pos, mid, hint)
    }

    pub fn media_by_mid_mut(&mut self, mid: Mid) -> Option<&mut Media> {
        media_at_mut(&mut self.medias, &mut self.media_pos, mid)
    }

    /// Parloir patch: packetizes the frame just written to `mid` at once, stamps its packets
    /// and puts them in the pacer's snapshot, so the next `poll_output` sends them. That is
    /// what the packetizing timeout would do for it, without the rest of a timeout (ICE, SCTP,
    /// every touched stream and the pacer's snapshot of all of them). Without pacing (the null
    /// pacer takes its snapshots as they are), or with the leaky bucket when its snapshots are
    /// current (patch 35: it works out its next queue and time from them, as a timeout would),
    /// once SRTP is up, and when the m-line has no frame waiting; otherwise the frame comes back
    /// (`Ok(Err(frame))`) to be queued behind the others for the timeout. The frame does not
    /// pass through the m-line's queue: queued and taken off at once, it was written to memory
    /// the m-line last touched a frame ago. `Ok(Ok(moved))`: which timers that moved (patch
    /// 58: `WriteMoved`).
    pub(crate) fn packetize_now(
        &mut self,
        now: Instant,
        index: usize,
        frame: ToPayload,
    ) -> Result<Result<WriteMoved, ToPayload>, RtcError> {
        // Parloir patch 35: with the leaky bucket, when its snapshots are current.
        let pacer_takes_it = match &self.pacer {
            PacerImpl::Null(_) => true,
            PacerImpl::LeakyBucket(pacer) => pacer.can_refresh(),
        };
        if !pacer_takes_it || self.srtp_tx.is_none() || self.rtp_closing {
            return Ok(Err(frame));
        }
        let mtu = self.mtu();
        // Parloir patch 43: the writer's m-line, by its position.
        let Some(media) = self.medias.get_mut(index) else {
            return Ok(Err(frame));
        };
        let mid = media.mid();
        // A frame waiting (it has a timeout): this one goes behind it.
        if media.poll_timeout().is_some() {
            return Ok(Err(frame));
        }
        let rid = frame.rid;
        media.payload(
            frame,
            &mut self.streams,
            &self.codec_config,
            self.vp9_packetizer_mode,
            mtu,
            self.codec_config.red_distances(),
        )?;
        // Parloir patch 43: the stream is in the slot the m-line has just written to.
        let mut slot = media.tx_slot();
        let Some(stream) = self
            .streams
            .stream_tx_by_midrid_hinted(MidRid(mid, rid), &mut slot)
        else {
            return Ok(Ok(WriteMoved::All));
        };
        self.last_tx = (slot, index);
        let first = !stream.has_kind();
        let (media, codecs) = (&self.medias[index], &self.codec_config);
        let get_media = move || (media, codecs);
        stream.handle_timeout(now, get_media);
        let state = stream.queue_state(now);
        let moved = match &mut self.pacer {
            PacerImpl::Null(pacer) => {
                pacer.refresh_queue(state);
                WriteMoved::Nothing
            }
            // The pacer's next time may have moved (debt paid, a queue due). Parloir patch 58:
            // only the pacer's and the estimator's timeouts are worked out again; the packets
            // are stamped (no stream timeout), no frame waits on the m-line and the sender
            // reports' times hold, so the others' deadlines are those computed before.
            PacerImpl::LeakyBucket(pacer) => {
                pacer.refresh_queue(now, state);
                WriteMoved::Pacer
            }
        };
        // The stream's first packets start its sender reports: every timer is worked out
        // again.
        Ok(Ok(if first { WriteMoved::All } else { moved }))
    }

    fn do_payload(&mut self, now: Instant) -> Result<(), RtcError> {
        let mtu = self.mtu();
        // Parloir patch: only the m-lines written to since they were last found empty. Each
        // packetizes at most one frame per call, as when every m-line was visited.
        let mut i = 0;
        while i < self.payload_pending.len() {
            let mid = self.payload_pending[i];
            let Some(m) = media_at_mut(&mut self.medias, &mut self.media_pos, mid) else {
                self.payload_pending.swap_remove(i);
                continue;
            };
            m.do_payload(
                now,
                &mut self.streams,
                &self.codec_config,
                self.vp9_packetizer_mode,
                mtu,
                self.codec_config.red_distances(),
            )?;
            if m.poll_timeout().is_none() {
                self.payload_pending.swap_remove(i);
            } else {
                i += 1;
            }
        }

        Ok(())
    }

    /// Toggle RFC 2198 RED wrapping on the send side at runtime. No renegotiation: RED availability
    /// is fixed at negotiation (or via DirectAPI); this only decides whether we wrap right now.
    /// Returns whether the setting changed.
    pub fn set_red_send(&mut self, mid: Mid, enabled: bool) -> bool {
        let Some(media) = self.media_by_mid_mut(mid) else {
            return false;
        };
        media.set_red_send(enabled)
    }

    pub fn set_direction(&mut self, mid: Mid, direction: Direction) -> bool {
        let Some(media) = self.media_by_mid_mut(mid) else {
            return false;
        };
        let old_dir = media.direction();
        if old_dir == direction {
            return false;
        }

        media.set_direction(direction);
        // Parloir patch 56: also forgets which m-lines may carry probes (patch 55 missed it).
        self.medias_changed();

        if old_dir.is_sending() && !direction.is_sending() {
            self.streams.reset_buffers_tx(mid);
        }

        let max_seq_lookup = make_max_seq_lookup(&self.max_rx_seq_lookup);
        if old_dir.is_receiving() && !direction.is_receiving() {
            self.streams.reset_buffers_rx(mid, max_seq_lookup);
        }

        true
    }

    pub fn stop_media(&mut self, mid: Mid) -> bool {
        let Some(media) = self.media_by_mid_mut(mid) else {
            return false;
        };
        if media.disabled() {
            return false;
        }

        media.mark_stopped();
        // Parloir patch 56: stopped, it may no longer carry probes.
        self.medias_changed();
        self.set_direction(mid, Direction::Inactive);

        true
    }

    pub fn is_request_keyframe_possible(&self, kind: KeyframeRequestKind) -> bool {
        // TODO: It's possible to have different set of feedback enabled for different
        // payload types. I.e. we could have FIR enabled for H264, but not for VP8.
        // We might want to make this check more fine grained by testing which PT is
        // in "active use" right now.
        self.codec_config.iter().any(|r| match kind {
            KeyframeRequestKind::Pli => r.fb_pli,
            KeyframeRequestKind::Fir => r.fb_fir,
        })
    }

    /// Checks whether the SRTP contexts are up.
    pub fn is_connected(&self) -> bool {
        self.srtp_rx.is_some() && self.srtp_tx.is_some()
    }
}

pub struct PacketReceipt {
    pub header: RtpHeader,
    pub seq_no: SeqNo,
    pub is_padding: bool,
    pub payload_size: usize,
    /// Parloir patch 27: the packet is the first `packet_len` bytes of the buffer.
    pub packet_len: usize,
}

/// Find the PayloadParams for the given Pt, either when the Pt is the main Pt for the Codec or
/// when it's the RTX Pt.
fn main_payload_params(c: &CodecConfig, pt: Pt) -> Option<&PayloadParams> {
    c.iter()
        .find(|p| p.pt == pt || p.resend == Some(pt) || p.red == Some(pt))
}

/// A decoded RED (RFC 2198) packet: the primary block plus any redundant (older) blocks.
struct UnRed<'a> {
    primary: &'a [u8],
    redundant: Vec<RedBlock<'a>>,
}

/// Decode a RED packet, rewrite the header to the primary PT, and return the primary payload
/// plus the redundant blocks. Returns `None` (drop) when the RED structure is malformed.
fn un_red<'a>(header: &mut RtpHeader, data: &'a [u8], pt: Pt) -> Option<UnRed<'a>> {
    let blocks = RedDecoder::decode(data).ok()?;
    let mut primary = None;
    let mut redundant = Vec::new();
    for b in blocks {
        if b.is_primary {
            // RFC 2198 lets redundant blocks use a different PT, but the primary block must carry
            // the codec this RED stream negotiated (`pt`, e.g. Opus). A mismatch means this is not
            // the primary we expect, so drop the packet rather than mislabel a foreign codec (e.g.
            // reinterpret a PCMU primary as Opus).
            if b.pt != *pt {
                return None;
            }
            primary = Some(b.payload);
        } else {
            redundant.push(b);
        }
    }
    header.payload_type = pt;
    Some(UnRed {
        primary: primary?,
        redundant,
    })
}

fn make_max_seq_lookup(map: &FastMap<Ssrc, SeqNoWindow>) -> impl Fn(Ssrc) -> Option<SeqNo> + '_ {
    |ssrc| map.get(&ssrc).map(|s| s.max_seq())
}

fn update_max_seq(map: &mut FastMap<Ssrc, SeqNoWindow>, ssrc: Ssrc, seq_no: SeqNo) {
    map.entry(ssrc)
        .and_modify(|window| window.update(seq_no))
        .or_insert_with(|| SeqNoWindow::new(seq_no));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RtcConfig;
    use crate::io::DATAGRAM_MTU_TARGET;
    use crate::packet::RedEncoder;

    use crate::poll::Readiness;
    use crate::rtp_::RtcpPacket;

    // Parloir patch 89.
    #[test]
    fn what_each_call_reads_of_a_connection_lies_at_its_start() {
        use crate::Rtc;
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(align_of::<Rtc>(), 64);
        // The connection's own small fields, up to the session, within four lines.
        assert!(offset_of!(Rtc, session) <= 4 * 64);
        for end in [
            offset_of!(Rtc, send_addr) + size_of::<Option<crate::SendAddr>>(),
            offset_of!(Rtc, readiness) + size_of::<Readiness>(),
            offset_of!(Rtc, cached_timeout) + size_of::<Instant>(),
            offset_of!(Rtc, stats_full_at) + size_of::<Option<Instant>>(),
        ] {
            assert!(end <= offset_of!(Rtc, session));
        }
        // The session's small fields, then the pacer and the sending SRTP context, before
        // the streams and everything else.
        let ends = [
            offset_of!(Session, twcc) + size_of::<u64>(),
            offset_of!(Session, last_tx) + size_of::<(u32, usize)>(),
            offset_of!(Session, raw_packets) + size_of::<Option<VecDeque<Box<RawPacket>>>>(),
            offset_of!(Session, feedback_tx) + size_of::<VecDeque<Rtcp>>(),
            offset_of!(Session, exts) + size_of::<ExtensionMap>(),
            offset_of!(Session, pacer) + size_of::<PacerImpl>(),
            offset_of!(Session, srtp_tx) + size_of::<Option<SrtpContext>>(),
        ];
        let last = ends.iter().max().copied().unwrap_or(0);
        assert!(last <= offset_of!(Session, streams), "{last}");
        assert!(last <= 16 * 64, "{last}");
    }

    fn keyed_session() -> Session {
        let mut session = Session::new(&RtcConfig::default());
        let crypto = crate::crypto::test_default_provider();
        let profile = SrtpProfile::AEAD_AES_128_GCM;
        let mat = KeyingMaterial::new(&vec![0; profile.keying_material_len()]);
        session.set_keying_material(mat, crypto, profile, true);
        session
    }

    /// A new connection, [`keyed`].
    fn keyed_rtc(now: Instant) -> crate::Rtc {
        keyed(crate::Rtc::builder().build(now))
    }

    /// `rtc` with SRTP keys (zeros, so each side can read what the other protects) and a video
    /// m-line "vid".
    fn keyed(mut rtc: crate::Rtc) -> crate::Rtc {
        use crate::media::MediaKind;
        let profile = SrtpProfile::AEAD_AES_128_GCM;
        let mat = KeyingMaterial::new(&vec![0; profile.keying_material_len()]);
        rtc.session
            .set_keying_material(mat, crate::crypto::test_default_provider(), profile, true);
        rtc.direct_api()
            .declare_media("vid".into(), MediaKind::Video);
        rtc
    }

    /// The RTP datagrams of `count` one-packet VP8 frames sent `spacing` apart from `now`, from
    /// a [`keyed_rtc`] sender at `from` to `to`.
    fn vp8_datagrams(
        now: Instant,
        count: u64,
        spacing: Duration,
        from: std::net::SocketAddr,
        to: std::net::SocketAddr,
    ) -> Vec<Vec<u8>> {
        let mut datagrams = Vec::new();
        vp8_send(keyed_rtc(now), now, count, spacing, from, to, |t| {
            // RTP only (RTCP's packet types are 192 to 223).
            if let crate::Output::Transmit(t) = t
                && !(192..=223).contains(&t.contents[1])
            {
                datagrams.push(t.contents.to_vec())
            }
        });
        datagrams
    }

    /// Sends `count` one-packet VP8 frames `spacing` apart from `now` from `tx` (a [`keyed`]
    /// connection) at `from` to `to`, handing each output but timeouts to `out`.
    fn vp8_send(
        mut tx: crate::Rtc,
        now: Instant,
        count: u64,
        spacing: Duration,
        from: std::net::SocketAddr,
        to: std::net::SocketAddr,
        mut out: impl FnMut(crate::Output),
    ) {
        use crate::format::Codec;
        use crate::net::Protocol;
        use crate::rtp_::{Frequency, MediaTime};
        use crate::{Input, Output};

        tx.direct_api()
            .declare_stream_tx(42.into(), None, "vid".into(), None);
        tx.send_addr = Some(crate::SendAddr {
            proto: Protocol::Udp,
            source: from,
            destination: to,
        });
        tx.handle_input(Input::Timeout(now)).unwrap();
        while !matches!(tx.poll_output().unwrap(), Output::Timeout(_)) {}
        let pt = tx
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
            .unwrap();
        let ticks = spacing.as_micros() as u64 * 90 / 1000;
        for n in 0..count {
            let at = now + spacing * n as u32;
            let time = MediaTime::new(n * ticks, Frequency::NINETY_KHZ);
            tx.writer("vid".into())
                .unwrap()
                .now(at)
                .write(pt, at, time, vec![0x10u8; 200])
                .unwrap();
            tx.handle_input(Input::Timeout(at)).unwrap();
            loop {
                match tx.poll_output().unwrap() {
                    Output::Timeout(_) => break,
                    o => out(o),
                }
            }
        }
    }

    /// A datagram in flight between the two connections of a test: when it arrives, whether
    /// it goes to the receiver, its bytes.
    type Flight = std::collections::VecDeque<(Instant, bool, Vec<u8>)>;

    /// Polls `rtc` until its timeout, logging what it sends and its events (`who` at `now`
    /// since `start`) and putting its datagrams in flight for `delay`; returns the timeout.
    fn poll_logged(
        rtc: &mut crate::Rtc,
        (now, start, delay): (Instant, Instant, Duration),
        who: &str,
        log: &mut Vec<String>,
        flight: &mut Flight,
    ) -> Instant {
        use crate::Output;
        loop {
            match rtc.poll_output().unwrap() {
                Output::Transmit(t) => {
                    log.push(format!("{:?} {who} {:?}", now - start, &t.contents[..]));
                    flight.push_back((now + delay, who == "tx", t.contents.to_vec()));
                }
                Output::Event(e) => log.push(format!("{:?} {who} {e:?}", now - start)),
                Output::Timeout(t) => return t,
            }
        }
    }

    /// Parloir patch 84: two ICE-lite connections, one sending paced video (estimation on from
    /// 300 kbit/s: it paces, probes and pads), the other 20 ms away receiving it and sending
    /// transport-wide feedback, receiver and sender reports both ways, statistics on both. With
    /// the pass after each datagram decided by the timeouts computed at once, both send what
    /// they sent with a whole pass after every datagram: the same datagrams both ways (byte for
    /// byte, in the same order, at the same instants) and the same events.
    #[test]
    fn the_pass_after_a_datagram_sends_what_a_whole_pass_sent() {
        use crate::format::Codec;
        use crate::net::{Protocol, Receive};
        use crate::rtp_::{Frequency, MediaTime};
        use crate::{Input, SendAddr};

        let start = Instant::now();
        let (a, b): (std::net::SocketAddr, std::net::SocketAddr) = (
            "192.0.2.1:5000".parse().unwrap(),
            "192.0.2.2:6000".parse().unwrap(),
        );
        let delay = Duration::from_millis(20);
        let run = |whole_timeouts: bool| {
            fastrand::seed(7);
            let builder = || {
                crate::Rtc::builder()
                    .set_ice_lite(true)
                    .set_stats_interval(Some(Duration::from_millis(300)))
            };
            let mut tx = keyed(builder().enable_bwe(Some(Bitrate::kbps(300))).build(start));
            tx.session.shortcuts.whole_timeouts = whole_timeouts;
            tx.direct_api()
                .declare_stream_tx(42.into(), None, "vid".into(), None);
            tx.send_addr = Some(SendAddr {
                proto: Protocol::Udp,
                source: a,
                destination: b,
            });
            let mut rx = keyed(builder().build(start));
            rx.session.shortcuts.whole_timeouts = whole_timeouts;
            rx.direct_api()
                .expect_stream_rx(42.into(), None, "vid".into(), None);
            rx.direct_api().enable_twcc_feedback();
            rx.send_addr = Some(SendAddr {
                proto: Protocol::Udp,
                source: b,
                destination: a,
            });
            let pt = tx
                .codec_config()
                .params()
                .iter()
                .find(|p| p.spec().codec == Codec::Vp8)
                .map(|p| p.pt())
                .unwrap();
            let mut log = Vec::new();
            let mut flight = Flight::new();
            let (mut now, mut next_frame, mut n) = (start, start, 0u64);
            tx.handle_input(Input::Timeout(now)).unwrap();
            rx.handle_input(Input::Timeout(now)).unwrap();
            let mut turns = 0;
            // Four seconds of 30 frames/s, 2 to 6 packets each (about 1 Mbit/s).
            while now < start + Duration::from_secs(4) {
                turns += 1;
                assert!(turns < 200_000, "stuck at {:?}", now - start);
                let times = (now, start, delay);
                let tx_at = poll_logged(&mut tx, times, "tx", &mut log, &mut flight);
                let rx_at = poll_logged(&mut rx, times, "rx", &mut log, &mut flight);
                let arrival = flight.front().map(|f| f.0);
                let at = [Some(tx_at), Some(rx_at), arrival, Some(next_frame)]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap();
                now = at.max(now);
                if arrival.is_some_and(|t| t <= now) {
                    let (_, to_rx, bytes) = flight.pop_front().unwrap();
                    let (rtc, source, destination) = if to_rx {
                        (&mut rx, a, b)
                    } else {
                        (&mut tx, b, a)
                    };
                    let receive = Receive {
                        proto: Protocol::Udp,
                        source,
                        destination,
                        contents: bytes.as_slice().try_into().unwrap(),
                    };
                    rtc.handle_input(Input::Receive(now, receive)).unwrap();
                } else if next_frame <= now {
                    let size = 1100 * (2 + n as usize % 5);
                    let mut data = vec![0x11u8; size];
                    data[0] = if n % 30 == 0 { 0x10 } else { 0x11 };
                    let time = MediaTime::new(n * 3000, Frequency::NINETY_KHZ);
                    tx.writer("vid".into())
                        .unwrap()
                        .now(now)
                        .write(pt, now, time, data)
                        .unwrap();
                    n += 1;
                    next_frame = start + Duration::from_millis(33) * n as u32;
                } else if tx_at <= now {
                    tx.handle_input(Input::Timeout(now)).unwrap();
                } else {
                    rx.handle_input(Input::Timeout(now)).unwrap();
                }
            }
            let used = (tx.session.shortcuts.receives, rx.session.shortcuts.receives);
            (log, used)
        };
        let (with, used) = run(false);
        let (without, unused) = run(true);
        // Both sides took the shortcut: the sender for the feedback and reports, the receiver
        // for the media.
        assert!(used.0 > 50 && used.1 > 300, "{used:?}");
        assert_eq!(unused, (0, 0));
        let count = |what: &str| without.iter().filter(|l| l.contains(what)).count();
        assert!(count("EgressBitrateEstimate") > 5);
        assert!(count("PeerStats") > 10, "statistics on both sides");
        assert!(count(" [") > 500, "datagrams");
        assert_eq!(with.len(), without.len());
        for (i, (a, b)) in with.iter().zip(&without).enumerate() {
            assert_eq!(a, b, "entry {i} of the log");
        }
    }

    /// Parloir patch 85: a stream declared on a running connection is due its first timeout at
    /// once (a whole pass no longer follows each datagram received), and not after it.
    #[test]
    fn a_new_stream_is_due_its_first_timeout_at_once() {
        use crate::{Input, Output, Reason};
        let now = Instant::now();
        let mut rtc = keyed_rtc(now);
        rtc.handle_input(Input::Timeout(now)).unwrap();
        let idle = loop {
            if let Output::Timeout(t) = rtc.poll_output().unwrap() {
                break t;
            }
        };
        assert!(idle > now);
        let later = now + Duration::from_millis(5);
        rtc.direct_api()
            .declare_stream_tx(42.into(), None, "vid".into(), None);
        let due = loop {
            if let Output::Timeout(t) = rtc.poll_output().unwrap() {
                break t;
            }
        };
        assert!(due <= later, "due at once, not at {:?}", due - now);
        assert_eq!(rtc.last_timeout_reason(), Reason::SendStream);
        let first = |rtc: &mut crate::Rtc| {
            let stream = rtc.session.streams.stream_tx(&42.into()).unwrap();
            stream.had_first_timeout()
        };
        assert!(!first(&mut rtc));
        rtc.handle_input(Input::Timeout(later)).unwrap();
        assert!(first(&mut rtc));
        let next = |rtc: &mut crate::Rtc| loop {
            if let Output::Timeout(t) = rtc.poll_output().unwrap() {
                break (t, rtc.last_timeout_reason());
            }
        };
        // Its first sender report time, from the start (nothing sent: skipped, and moved on).
        assert_eq!(next(&mut rtc), (later, Reason::Feedback));
        rtc.handle_input(Input::Timeout(later)).unwrap();
        let (at, reason) = next(&mut rtc);
        assert!(at > later, "{reason:?}");
    }

    // Parloir patch 49: `Rtc::write_prefetch` points at what a write to the m-line reads.
    #[test]
    fn write_prefetch_points_at_what_a_write_reads() {
        use crate::format::Codec;
        use crate::rtp_::{Frequency, MediaTime};
        use crate::streams::StreamTx;
        use std::mem::size_of;

        let now = Instant::now();
        let mut rtc = keyed_rtc(now);
        rtc.direct_api()
            .declare_stream_tx(42.into(), None, "vid".into(), None);
        let pt = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
            .unwrap();
        let mut hint = usize::MAX;
        rtc.writer_hinted("vid".into(), &mut hint)
            .unwrap()
            .now(now)
            .write(
                pt,
                now,
                MediaTime::new(0, Frequency::NINETY_KHZ),
                vec![0x10u8; 200],
            )
            .unwrap();
        let addrs = |rtc: &crate::Rtc, step: u8, hint: usize| {
            let mut v = vec![];
            rtc.write_prefetch(step, hint, |a| v.push(a as usize));
            v
        };
        let within = |v: &[usize], at: usize, len: usize| {
            !v.is_empty() && v.iter().all(|&a| a >= at && a < at + len)
        };

        let session = &rtc.session;
        let lists = addrs(&rtc, 0, hint);
        assert!(lists.contains(&(&rtc.state as *const crate::RtcState as usize)));
        assert!(lists.contains(&(&session.medias as *const Vec<Media> as usize)));
        assert!(lists.contains(&(session.codec_config.params_field() as usize)));
        assert!(lists.contains(&(session.streams.tx_slots_field() as usize)));
        let params = session.codec_config.params();
        assert!(within(
            &addrs(&rtc, 1, hint),
            params.as_ptr() as usize,
            std::mem::size_of_val(params)
        ));
        let media = &session.medias[hint] as *const Media as usize;
        let mline = addrs(&rtc, 2, hint);
        assert!(mline.contains(&media));
        assert!(within(&mline, media, size_of::<Media>()));
        // Step 3: the stream's hot fields, then the lines of the m-line's payloader.
        let lines = addrs(&rtc, 3, hint);
        let stream = rtc.session.streams.stream_tx(&42.into()).unwrap() as *const StreamTx as usize;
        let (payloader, size) = rtc.session.medias[hint].first_payloader().unwrap();
        let split = lines
            .iter()
            .position(|&a| a >= payloader && a < payloader + size)
            .unwrap();
        assert!(within(&lines[..split], stream, size_of::<StreamTx>()));
        assert!(within(&lines[split..], payloader, size));
        assert!(lines[split..].contains(&payloader));

        // A hint past the m-lines gives no m-line and no stream.
        assert!(addrs(&rtc, 2, 7).is_empty());
        assert!(addrs(&rtc, 3, usize::MAX).is_empty());
    }

    // Parloir patch 52: the drain's prefetch points at what sending the packets of the frame
    // just written reads: the connection's fields, then the stream's, then the packet at
    // the head of its queue and the cache slot a sent packet goes to.
    #[test]
    fn poll_prefetch_points_at_what_sending_reads() {
        use crate::format::Codec;
        use crate::net::Protocol;
        use crate::rtp_::{Frequency, MediaTime};
        use crate::streams::{StreamTx, TxPacket};
        use crate::{Input, Output};
        use std::mem::size_of;

        let now = Instant::now();
        let mut rtc = keyed_rtc(now);
        rtc.direct_api()
            .declare_stream_tx(42.into(), Some(43.into()), "vid".into(), None);
        rtc.send_addr = Some(crate::SendAddr {
            proto: Protocol::Udp,
            source: "1.1.1.1:1000".parse().unwrap(),
            destination: "2.2.2.2:2000".parse().unwrap(),
        });
        rtc.handle_input(Input::Timeout(now)).unwrap();
        while !matches!(rtc.poll_output().unwrap(), Output::Timeout(_)) {}
        let pt = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
            .unwrap();
        let addrs = |rtc: &crate::Rtc, step: u8| {
            let mut v = vec![];
            rtc.poll_prefetch(step, |a| v.push(a as usize));
            v
        };
        let write = |rtc: &mut crate::Rtc, n: u64| {
            let mut hint = usize::MAX;
            rtc.writer_hinted("vid".into(), &mut hint)
                .unwrap()
                .now(now)
                .write(
                    pt,
                    now,
                    MediaTime::new(n * 3000, Frequency::NINETY_KHZ),
                    vec![0x10u8; 200],
                )
                .unwrap();
        };

        write(&mut rtc, 0);
        let stream = rtc.session.streams.stream_tx(&42.into()).unwrap() as *const StreamTx as usize;
        let fields = addrs(&rtc, 0);
        assert!(fields.contains(&(&rtc.state as *const crate::RtcState as usize)));
        assert!(fields.contains(&(&rtc.send_addr as *const _ as usize)));
        assert!(fields.contains(&(rtc.dtls.pending_field() as usize)));
        let session = &rtc.session;
        assert!(fields.contains(&(&session.last_tx as *const _ as usize)));
        assert!(fields.contains(&(session.streams.tx_slots_field() as usize)));

        // Step 1: the stream's fields, then the m-line's extensions and the codecs (the
        // packet's buffer is the thread's since patch 62, in cache).
        let lines = addrs(&rtc, 1);
        let (slot, index) = session.last_tx;
        assert_eq!(session.medias[index].mid(), "vid".into());
        let in_stream = |a: &usize| *a >= stream && *a < stream + size_of::<StreamTx>();
        let outside: Vec<usize> = lines.iter().copied().filter(|a| !in_stream(a)).collect();
        assert!(lines.len() > outside.len());
        assert_eq!(
            outside,
            [
                session.medias[index].remote_extmap() as *const _ as usize,
                session.codec_config.params().as_ptr() as usize,
            ]
        );

        // Step 2 before the send: the packet at the head of the queue, whole (nothing is in
        // the cache of sent packets yet).
        let head = addrs(&rtc, 2);
        assert_eq!(head.len(), 2);
        assert_eq!(head[1] - head[0], size_of::<TxPacket>() - 1);
        assert!(!in_stream(&head[0]));

        // Sent: the queue is empty, and the next packet goes to the cache's next slot.
        rtc.handle_input(Input::Timeout(now)).unwrap();
        let mut sent = 0;
        loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(_) => break,
                Output::Transmit(_) => sent += 1,
                Output::Event(_) => {}
            }
        }
        assert!(sent > 0);
        let stream = rtc.session.streams.stream_tx(&42.into()).unwrap();
        let last = stream.rtx_cache().last_cached_seq_no().unwrap();
        let (next, size) = stream.rtx_cache().slot_of((*last + 1).into());
        // Patch 61: then the slot eviction reads next, the oldest packet's: the one packet
        // of the one frame written.
        let (oldest, _) = stream.rtx_cache().slot_of(last);
        assert_ne!(oldest, next);
        assert_eq!(
            addrs(&rtc, 2),
            [next, next + size - 1, oldest, oldest + size - 1]
        );
        assert_eq!(rtc.session.last_tx.0, slot);

        // A slot past the streams gives nothing at steps 1 and 2 but what is not the stream's
        // or the m-line's: the codecs' first line.
        rtc.session.last_tx = (crate::streams::NO_SLOT, usize::MAX);
        assert!(addrs(&rtc, 2).is_empty());
        assert_eq!(
            addrs(&rtc, 1),
            [rtc.session.codec_config.params().as_ptr() as usize]
        );
    }

    // Parloir patch 48: a statistics pass without the streams' is not one that visits every
    // stream (`Rtc::full_pass_due`, patch 24).
    #[test]
    fn a_statistics_pass_without_the_streams_is_not_a_full_pass() {
        use crate::{Event, Input, Output};

        let now = Instant::now();
        let mut rtc = keyed(
            crate::Rtc::builder()
                .set_stats_interval(Some(Duration::from_millis(100)))
                .set_media_stats_every(3)
                .build(now),
        );
        // Whether each statistics pass was due as a full one.
        let mut full = Vec::new();
        let mut at = now;
        for _ in 0..120 {
            let due = rtc.full_pass_due(at);
            let mut stats = false;
            rtc.handle_input(Input::Timeout(at)).unwrap();
            loop {
                match rtc.poll_output().unwrap() {
                    Output::Event(Event::PeerStats(_)) => stats = true,
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
            if stats {
                full.push(due);
            }
            at += Duration::from_millis(10);
        }
        assert!(full.len() >= 9, "{} passes", full.len());
        for (i, due) in full.iter().enumerate() {
            assert_eq!(*due, i % 3 == 0, "pass {i}: {full:?}");
        }
    }

    // Parloir patch 48.
    #[test]
    fn the_streams_statistics_come_with_every_nth_statistics_event() {
        use crate::Event;

        let now = Instant::now();
        let tx = crate::Rtc::builder()
            .set_stats_interval(Some(Duration::from_millis(100)))
            .set_media_stats_every(3)
            .build(now);
        // One statistics event per pass: whether the stream's came with it.
        let mut passes: Vec<bool> = Vec::new();
        let (from, to) = (
            "1.1.1.1:5000".parse().unwrap(),
            "2.2.2.2:5000".parse().unwrap(),
        );
        vp8_send(
            keyed(tx),
            now,
            100,
            Duration::from_millis(20),
            from,
            to,
            |o| match o {
                crate::Output::Event(Event::PeerStats(_)) => passes.push(false),
                crate::Output::Event(Event::MediaEgressStats(s)) => {
                    assert_eq!(s.mid, "vid".into());
                    *passes.last_mut().expect("after the connection's") = true;
                }
                _ => {}
            },
        );
        // Two seconds of sending, a pass every 100 ms (the first 100 ms after the first
        // timeout): the stream's statistics with the first and every third after it.
        assert!(passes.len() >= 18, "{} passes", passes.len());
        for (i, media) in passes.iter().enumerate() {
            assert_eq!(*media, i % 3 == 0, "pass {i}: {passes:?}");
        }
    }

    // Parloir patch 43.
    #[test]
    fn reports_and_statistics_leave_the_streams_untouched() {
        use crate::media::MediaKind;
        use crate::net::Protocol;
        use crate::stats::StatsSnapshot;
        use crate::{Input, Output, Rtc};

        let now = Instant::now();
        let mut rtc = Rtc::builder().build(now);
        let profile = SrtpProfile::AEAD_AES_128_GCM;
        let mat = KeyingMaterial::new(&vec![0; profile.keying_material_len()]);
        rtc.session
            .set_keying_material(mat, crate::crypto::test_default_provider(), profile, true);
        rtc.direct_api()
            .declare_media("vid".into(), MediaKind::Video);
        for ssrc in [41, 42, 43] {
            rtc.direct_api()
                .declare_stream_tx(ssrc.into(), None, "vid".into(), None);
        }
        rtc.send_addr = Some(crate::SendAddr {
            proto: Protocol::Udp,
            source: "192.0.2.1:5000".parse().unwrap(),
            destination: "192.0.2.2:6000".parse().unwrap(),
        });
        let run = |rtc: &mut Rtc, at: Instant| {
            rtc.handle_input(Input::Timeout(at)).unwrap();
            while !matches!(rtc.poll_output().unwrap(), Output::Timeout(_)) {}
        };
        let mut at = now;
        for _ in 0..3 {
            run(&mut rtc, at);
            at += Duration::from_millis(10);
        }
        assert_eq!(
            rtc.session.streams.touched_count(),
            0,
            "idle streams leave the list"
        );

        rtc.session
            .visit_stats(at, &mut StatsSnapshot::new(at), true);
        assert_eq!(rtc.session.streams.touched_count(), 0, "statistics");

        // A receiver report with a block for stream 42 (RFC 3550 6.4.2).
        let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 9];
        rr.extend_from_slice(&42u32.to_be_bytes());
        rr.extend_from_slice(&[0; 20]);
        let packet = rtc.session.srtp_tx.as_mut().unwrap().protect_rtcp(&rr);
        let mut readiness = Readiness::idle();
        rtc.session
            .handle_rtcp_receive(at, &packet, &mut readiness.wake());
        assert_eq!(rtc.session.streams.touched_count(), 0, "a reception report");
        let stream = rtc.session.streams.stream_tx_for_report(&42.into());
        assert!(
            stream.unwrap().remote_acked_ssrc(),
            "the report reached the stream"
        );

        // A picture loss indication gives the stream work: it is listed.
        let pli = Pli {
            sender_ssrc: 9.into(),
            ssrc: 43.into(),
        };
        let mut buf = [0; 64];
        let len = pli.write_to(&mut buf);
        let packet = rtc
            .session
            .srtp_tx
            .as_mut()
            .unwrap()
            .protect_rtcp(&buf[..len]);
        rtc.session
            .handle_rtcp_receive(at, &packet, &mut readiness.wake());
        assert_eq!(rtc.session.streams.touched_count(), 1, "a request did");
    }

    // Parloir patch 44.
    #[test]
    fn sender_reports_come_from_streams_that_send_in_a_few_passes() {
        use crate::media::MediaKind;
        use crate::{Input, Rtc};
        use std::collections::{BTreeSet, HashMap};

        let start = Instant::now();
        let mut rtc = Rtc::builder().build(start);
        // 40 video streams, made 25 ms apart (a meeting joined over a second); the even ones
        // send a packet every 20 ms, except stream 0, which stops at 4 s, and stream 2, which
        // pauses from 3 s to 8 s. The odd ones never send.
        const N: u32 = 40;
        let ms = Duration::from_millis;
        let mut reports: HashMap<u32, Vec<Instant>> = HashMap::new();
        let mut at = start;
        while at < start + Duration::from_secs(12) {
            let t = at - start;
            let made = (t.as_millis() / 25 + 1).min(u128::from(N)) as u32;
            for i in 0..made {
                let mid: Mid = format!("m{i}").as_str().into();
                if rtc.session.media_by_mid_mut(mid).is_none() {
                    rtc.direct_api().declare_media(mid, MediaKind::Video);
                    rtc.direct_api()
                        .declare_stream_tx((100 + i).into(), None, mid, None);
                }
                let sending = i % 2 == 0
                    && !(i == 0 && t >= ms(4000))
                    && !(i == 2 && t >= ms(3000) && t < ms(8000));
                if sending && t.as_millis() % 20 == 0 {
                    let ssrc = (100 + i).into();
                    rtc.session
                        .streams
                        .stream_tx(&ssrc)
                        .unwrap()
                        .pretend_sent(at);
                }
            }
            rtc.handle_input(Input::Timeout(at)).unwrap();
            for r in rtc.session.feedback_tx.drain(..) {
                if let Rtcp::SenderReport(sr) = r {
                    reports
                        .entry(*sr.sender_info.ssrc - 100)
                        .or_default()
                        .push(at);
                }
            }
            at += ms(5);
        }

        for i in (1..N).step_by(2) {
            assert!(
                !reports.contains_key(&i),
                "stream {i} never sent: no reports"
            );
        }
        let secs = |t: Instant| (t - start).as_secs_f64();
        for i in (4..N).step_by(2) {
            let r = &reports[&i];
            // A quarter of an interval early at most, never late (but for the 5 ms steps).
            for w in r.windows(2) {
                let gap = w[1] - w[0];
                assert!(gap >= ms(745) && gap <= ms(1005), "stream {i}: {gap:?}");
            }
            assert!(r.len() >= 11, "stream {i}: {} reports", r.len());
        }
        // Stream 0 sent until 4 s: reports for at most two intervals after that.
        let last = secs(*reports[&0].last().unwrap());
        assert!(
            (4.0..=6.01).contains(&last),
            "stream 0's last report at {last} s"
        );
        // Stream 2 paused from 3 s to 8 s: reports stop, then come back within an interval.
        let r2: Vec<f64> = reports[&2].iter().map(|t| secs(*t)).collect();
        assert!(
            !r2.iter().any(|t| (5.01..8.0).contains(t)),
            "paused: {r2:?}"
        );
        assert!(
            r2.iter().any(|t| (8.0..=9.01).contains(t)),
            "resumed: {r2:?}"
        );
        // The streams share a few report times: from 4 s on, at most 5 a second (one per
        // stream made would be 20; the made times span a second).
        let times: BTreeSet<Instant> = reports
            .values()
            .flatten()
            .filter(|t| secs(**t) >= 4.0)
            .copied()
            .collect();
        assert!(times.len() <= 8 * 5, "{} report times in 8 s", times.len());
    }

    // Parloir patch 43.
    #[test]
    fn a_writer_finds_its_m_line_from_any_hint() {
        use crate::Rtc;
        use crate::media::MediaKind;

        let mut rtc = Rtc::builder().build(Instant::now());
        for mid in ["a", "b", "c"] {
            rtc.direct_api().declare_media(mid.into(), MediaKind::Video);
        }
        let mut hint = usize::MAX;
        assert!(rtc.writer_hinted("c".into(), &mut hint).is_some());
        assert_eq!(hint, 2);
        // "a" goes: "c" moves, and the hint pointing past the end or at another m-line is
        // not taken.
        rtc.direct_api().remove_media("a".into());
        let mut stale = hint;
        assert!(rtc.writer_hinted("c".into(), &mut stale).is_some());
        assert_eq!(stale, 1);
        let mut other = 0;
        assert!(rtc.writer_hinted("c".into(), &mut other).is_some());
        assert_eq!(other, 1);
        assert!(rtc.writer_hinted("a".into(), &mut other).is_none());
        assert_eq!(other, 1, "a hint is kept when nothing is found");
        assert_eq!(
            rtc.session.media_index_hinted("b".into(), &mut other),
            Some(0)
        );
    }

    // Parloir patch 24.
    #[test]
    fn a_full_pass_is_due_when_the_reports_are() {
        use crate::media::MediaKind;
        use crate::net::Protocol;
        use crate::{Input, Output, Rtc};
        use std::time::Duration;

        let now = Instant::now();
        let mut rtc = Rtc::builder().build(now);
        let profile = SrtpProfile::AEAD_AES_128_GCM;
        let mat = KeyingMaterial::new(&vec![0; profile.keying_material_len()]);
        rtc.session
            .set_keying_material(mat, crate::crypto::test_default_provider(), profile, true);
        rtc.direct_api()
            .declare_media("vid".into(), MediaKind::Video);
        rtc.direct_api()
            .declare_stream_tx(42.into(), None, "vid".into(), None);
        rtc.send_addr = Some(crate::SendAddr {
            proto: Protocol::Udp,
            source: "192.0.2.1:5000".parse().unwrap(),
            destination: "192.0.2.2:6000".parse().unwrap(),
        });
        let run = |rtc: &mut Rtc, at: Instant| -> Instant {
            rtc.handle_input(Input::Timeout(at)).unwrap();
            loop {
                if let Output::Timeout(t) = rtc.poll_output().unwrap() {
                    return t;
                }
            }
        };
        // The first reports are due at once.
        let start = run(&mut rtc, now);
        assert!(rtc.full_pass_due(start));
        let now = start + Duration::from_millis(10);
        run(&mut rtc, now);
        let reports = rtc
            .session
            .reports_at
            .expect("a report time for the send stream");
        assert!(
            reports > now + Duration::from_millis(500),
            "{:?}",
            reports - now
        );
        // Before the reports, a timeout does not visit every stream; at them, it does.
        assert!(!rtc.full_pass_due(now + Duration::from_millis(1)));
        assert!(!rtc.full_pass_due(reports - Duration::from_millis(1)));
        assert!(rtc.full_pass_due(reports));
        // Once they are sent, the next ones are later.
        run(&mut rtc, reports);
        assert!(!rtc.full_pass_due(reports));
        assert!(rtc.session.reports_at.is_some_and(|t| t > reports));
    }

    // Parloir patch 23.
    #[test]
    fn twcc_feedback_reports_the_arrival_the_caller_gave() {
        use crate::Input;
        use crate::net::{Protocol, Receive};
        use std::time::Duration;

        let now = Instant::now();
        let (from, to) = (
            "192.0.2.1:5000".parse().unwrap(),
            "192.0.2.2:6000".parse().unwrap(),
        );
        // Four one-packet frames, read by the receiver all at once, 20 ms after the first
        // one's arrival; they arrived 5 ms apart.
        let datagrams = vp8_datagrams(now, 4, Duration::from_millis(5), from, to);
        assert_eq!(datagrams.len(), 4);

        let receive = |with_arrival: bool| {
            let mut rx = keyed_rtc(now);
            rx.direct_api()
                .expect_stream_rx(42.into(), None, "vid".into(), None);
            rx.direct_api().enable_twcc_feedback();
            let read_at = now + Duration::from_millis(20);
            for (n, d) in datagrams.iter().enumerate() {
                if with_arrival {
                    rx.set_arrival(now + Duration::from_millis(5 * n as u64));
                }
                let input = Input::Receive(
                    read_at,
                    Receive {
                        proto: Protocol::Udp,
                        source: from,
                        destination: to,
                        contents: d.as_slice().try_into().unwrap(),
                    },
                );
                rx.handle_input(input).unwrap();
            }
            assert_eq!(rx.session.arrival, None, "used up by the datagram");
            let report = rx
                .session
                .twcc_rx_register
                .build_report(1000)
                .expect("a report");
            let times: Vec<Instant> = report
                .into_iter(now, 0.into())
                .filter_map(|(_, _, t)| t)
                .collect();
            // Three or four: here str0m registered three of them (it reports 1 to 3).
            assert!(times.len() >= 3, "{times:?}");
            times
                .windows(2)
                .map(|w| w[1].saturating_duration_since(w[0]))
                .collect::<Vec<_>>()
        };
        let ms = Duration::from_millis;
        let with = receive(true);
        assert!(
            with.iter().all(|d| *d == ms(5)),
            "the arrivals' spacing: {with:?}"
        );
        let without = receive(false);
        assert!(
            without.iter().all(|d| d.is_zero()),
            "the read time: {without:?}"
        );
    }

    // Parloir patch 46.
    #[test]
    fn the_nack_timer_runs_only_while_a_packet_is_missing() {
        use crate::net::{Protocol, Receive};
        use crate::{Input, Output, Reason, Rtc};
        use std::time::Duration;

        let now = Instant::now();
        let ms = Duration::from_millis;
        let (from, to) = (
            "192.0.2.1:5000".parse().unwrap(),
            "192.0.2.2:6000".parse().unwrap(),
        );
        // 60 one-packet frames, 20 ms apart.
        let sent_at = |n: usize| now + ms(20 * n as u64);
        let datagrams = vp8_datagrams(now, 60, ms(20), from, to);
        assert_eq!(datagrams.len(), 60);
        let seq = |d: &[u8]| u16::from_be_bytes([d[2], d[3]]);
        let lost = seq(&datagrams[30]);

        // The receiver: packet 30 is late, coming after packet 40 (a resend would do the
        // same). Its timeouts run as they fall due; the NACKs it sends are read back.
        let mut rx = keyed_rtc(now);
        rx.direct_api()
            .expect_stream_rx(42.into(), None, "vid".into(), None);
        // Reads what the receiver protects (the keys are the same both ways).
        let mut reader = keyed_rtc(now);
        rx.send_addr = Some(crate::SendAddr {
            proto: Protocol::Udp,
            source: to,
            destination: from,
        });
        let mut passes = Vec::new();
        let mut nacked = Vec::new();
        let mut first_timeout = None;
        let mut run_until = |rx: &mut Rtc, until: Instant| {
            for _ in 0..10_000 {
                match rx.poll_output().unwrap() {
                    Output::Timeout(t) if t <= until => {
                        if rx.last_timeout_reason() == Reason::Nack {
                            passes.push(t);
                        }
                        first_timeout.get_or_insert(t.max(rx.last_now));
                        rx.handle_input(Input::Timeout(t.max(rx.last_now))).unwrap();
                    }
                    Output::Timeout(_) => return,
                    Output::Transmit(t) => {
                        let srtp = reader.session.srtp_rx.as_mut().unwrap();
                        let plain = srtp.unprotect_rtcp(&t.contents).expect("RTCP");
                        let mut feedback = VecDeque::new();
                        Rtcp::read_packet(&plain, &mut feedback);
                        for r in feedback {
                            if let Rtcp::Nack(n) = r {
                                for e in n.reports.iter() {
                                    nacked.push((rx.last_now, e.pid, e.blp));
                                }
                            }
                        }
                    }
                    Output::Event(_) => {}
                }
            }
            panic!("timeouts that do not move on");
        };
        let receive = |rx: &mut Rtc, at: Instant, d: &[u8]| {
            let input = Input::Receive(
                at,
                Receive {
                    proto: Protocol::Udp,
                    source: from,
                    destination: to,
                    contents: d.try_into().unwrap(),
                },
            );
            rx.handle_input(input).unwrap();
        };
        for n in (0..60).filter(|n| *n != 30) {
            let at = sent_at(n);
            run_until(&mut rx, at);
            receive(&mut rx, at, &datagrams[n]);
            if n == 40 {
                receive(&mut rx, at, &datagrams[30]);
            }
        }
        run_until(&mut rx, sent_at(60));

        // Nothing missing: no NACK pass (the timer ran every 33 ms before the patch).
        let seen = sent_at(31);
        assert!(
            passes.iter().all(|t| *t >= seen),
            "passes before the loss: {passes:?}"
        );
        // The loss: NACKed within a NACK interval of its being seen, then again after the
        // retry interval (100 ms without a round trip time, plus 5 ms), until it came.
        assert!(!nacked.is_empty(), "the loss is NACKed");
        // The first pass is on the grid every NACK_MIN_INTERVAL from the last one (none yet:
        // from the session's first timeout, patch 68), where it would have been with the
        // timer always on.
        let first = passes.first().copied().expect("a NACK pass");
        let start = first_timeout.expect("a timeout");
        let phase = first.duration_since(start).as_nanos() % NACK_MIN_INTERVAL.as_nanos();
        assert_eq!(
            phase, 0,
            "the first NACK pass is on the grid: {first:?} from {start:?}"
        );
        assert!(
            nacked.iter().all(|(_, pid, blp)| *pid == lost && *blp == 0),
            "only the lost packet: {nacked:?} (lost {lost})"
        );
        assert!(nacked[0].0 <= seen + NACK_MIN_INTERVAL, "{nacked:?}");
        assert_eq!(nacked.len(), 2, "{nacked:?}");
        assert!(nacked[1].0 - nacked[0].0 >= ms(105), "{nacked:?}");
        assert!(
            passes.windows(2).all(|w| w[1] - w[0] >= NACK_MIN_INTERVAL),
            "{passes:?}"
        );
        // Once it came, the timer stops again.
        let came = sent_at(41);
        assert!(
            passes.iter().all(|t| *t <= came),
            "passes after the loss: {passes:?}"
        );
        assert!(
            passes.len() <= 7,
            "passes while the loss lasted: {passes:?}"
        );
    }

    // Parloir patch 46.
    #[test]
    fn the_nack_grid_keeps_its_phase() {
        let last = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(Session::nack_grid(last, last), last);
        assert_eq!(Session::nack_grid(last, last + ms(10)), last);
        assert_eq!(Session::nack_grid(last, last + ms(33)), last + ms(33));
        assert_eq!(Session::nack_grid(last, last + ms(100)), last + ms(99));
        assert_eq!(Session::nack_grid(last + ms(5), last), last + ms(5));
    }

    #[test]
    fn readiness_closed_session_timeout_preserves_pending_bye() {
        let now = Instant::now();
        let mut session = keyed_session();
        session
            .streams
            .declare_stream_tx(42.into(), None, MidRid("vid".into(), None));
        session.close_rtp();
        let before = session.poll_timeout();
        assert_eq!(before.1, Reason::Feedback);
        let mut readiness = Readiness::idle();
        session.handle_timeout(now, &mut readiness.wake()).unwrap();
        assert!(!readiness.wants_events());
        assert!(!readiness.wants_timeout());
        assert_eq!(session.poll_timeout(), before);
        assert!(
            session.poll_datagram(now).is_some(),
            "existing BYE must still drain"
        );
    }

    #[test]
    fn readiness_malformed_rtp_does_not_wake() {
        let mut session = keyed_session();
        let before = session.poll_timeout();
        let mut readiness = Readiness::idle();
        session.handle_rtp_receive(Instant::now(), &[0x80], &mut readiness.wake());
        assert!(!readiness.wants_events());
        assert!(!readiness.wants_timeout());
        assert_eq!(session.poll_timeout(), before);
        assert!(session.poll_event().is_none());
    }

    #[test]
    fn readiness_valid_rtp_header_keeps_wake_even_without_keys() {
        let mut session = Session::new(&RtcConfig::default());
        let mut readiness = Readiness::idle();
        // SSRC 0 creates a probe receive stream before the missing-key check.
        let packet = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        session.handle_rtp_receive(Instant::now(), &packet, &mut readiness.wake());
        assert!(session.streams.has_stream_rx(0.into()));
        assert!(readiness.wants_events());
        assert!(readiness.wants_timeout());
    }

    #[test]
    fn readiness_rejected_rtcp_does_not_wake() {
        for mut session in [Session::new(&RtcConfig::default()), keyed_session()] {
            let before = session.poll_timeout();
            let mut readiness = Readiness::idle();
            session.handle_rtcp_receive(Instant::now(), &[0; 32], &mut readiness.wake());
            assert!(!readiness.wants_events());
            assert!(!readiness.wants_timeout());
            assert_eq!(session.poll_timeout(), before);
            assert!(session.poll_event().is_none());
        }
    }

    #[test]
    fn readiness_rtcp_app_feedback_only_wakes_events() {
        for mixed in [false, true] {
            let now = Instant::now();
            let mut session = keyed_session();
            let before = session.poll_timeout();
            let feedback = crate::rtp_::AppSpecificFeedback {
                sender_ssrc: 1.into(),
                media_ssrc: 2.into(),
                payload: vec![1, 2, 3, 4].into(),
            };
            // Empty RR followed by application feedback, as sent by DirectApi.
            let mut buf = vec![0x80, 201, 0, 1, 0, 0, 0, 1];
            let mut packet = [0; 64];
            let len = feedback.write_to(&mut packet);
            buf.extend_from_slice(&packet[..len]);
            if mixed {
                let pli = Pli {
                    sender_ssrc: 1.into(),
                    ssrc: 2.into(),
                };
                let len = pli.write_to(&mut packet);
                buf.extend_from_slice(&packet[..len]);
            }
            // Equal key material lets the local transmit context act as the peer.
            let packet = session.srtp_tx.as_mut().unwrap().protect_rtcp(&buf);
            let mut readiness = Readiness::idle();
            session.handle_rtcp_receive(now, &packet, &mut readiness.wake());
            assert!(readiness.wants_events());
            assert_eq!(
                readiness.wants_timeout(),
                mixed,
                "other compound reports keep timer invalidation"
            );
            let Some(Event::AppSpecificFeedback(received)) = session.poll_event() else {
                panic!("feedback must remain observable immediately");
            };
            assert_eq!(received.payload, feedback.payload);
            assert_eq!(session.poll_timeout(), before);
        }
    }

    #[test]
    fn readiness_empty_rtcp_report_keeps_raw_packet_events() {
        let mut session = keyed_session();
        session.raw_packets = Some(VecDeque::new());
        let before = session.poll_timeout();
        let packet = session
            .srtp_tx
            .as_mut()
            .unwrap()
            .protect_rtcp(&[0x80, 201, 0, 1, 0, 0, 0, 1]);
        let mut readiness = Readiness::idle();
        session.handle_rtcp_receive(Instant::now(), &packet, &mut readiness.wake());
        assert!(readiness.wants_events());
        assert!(!readiness.wants_timeout());
        assert!(matches!(session.poll_event(), Some(Event::RawPacket(_))));
        assert_eq!(session.poll_timeout(), before);
    }

    #[test]
    fn session_mtu_matches_config() {
        let cfg = RtcConfig::default();
        let s = Session::new(&cfg);
        assert_eq!(s.mtu(), DATAGRAM_MTU_TARGET);

        let cfg = RtcConfig::default().set_mtu(900..=1280);
        let s = Session::new(&cfg);
        assert_eq!(s.mtu(), 900);
    }

    #[test]
    fn un_red_rejects_a_primary_payload_type_mismatch() {
        let expected_primary_pt = Pt::new_with_value(111);
        let data = RedEncoder::encode(0, &[1, 2, 3], &[]);
        let mut header = RtpHeader::default();

        assert!(
            un_red(&mut header, &data, expected_primary_pt).is_none(),
            "RED associated with Opus must not reinterpret a PCMU primary block as Opus"
        );
    }
}

/// Parloir patch, tests only: turns the pacer's shortcuts off (`whole_timeouts`) and counts
/// their uses, so that a test can compare a run with them against one without.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Shortcuts {
    pub whole_timeouts: bool,
    pub pacer_timeouts: usize,
    /// Patch 84: datagrams received whose timeouts were computed at once, to decide the pass
    /// after them.
    pub receives: usize,
}

/// Parloir patch: the media of `mid`, found through the position hint when it is right, else
/// by a scan.
fn media_at<'a>(medias: &'a [Media], pos: &FastMap<Mid, usize>, mid: Mid) -> Option<&'a Media> {
    media_index_at(medias, pos, mid).map(|i| &medias[i])
}

/// Parloir patch 43: the position of the media of `mid`, trying `hint` first (checked), and
/// setting it to the position found.
fn media_index_hinted(
    medias: &[Media],
    pos: &FastMap<Mid, usize>,
    mid: Mid,
    hint: &mut usize,
) -> Option<usize> {
    if medias.get(*hint).is_some_and(|m| m.mid() == mid) {
        return Some(*hint);
    }
    let index = media_index_at(medias, pos, mid)?;
    *hint = index;
    Some(index)
}

/// Parloir patch: the position of the media of `mid`, as [`media_at`] finds it.
fn media_index_at(medias: &[Media], pos: &FastMap<Mid, usize>, mid: Mid) -> Option<usize> {
    if let Some(&i) = pos.get(&mid) {
        if medias.get(i).is_some_and(|m| m.mid() == mid) {
            return Some(i);
        }
    }
    medias.iter().position(|m| m.mid() == mid)
}

/// Parloir patch: as [`media_at`], mutably, refreshing the hint after a scan.
pub(crate) fn media_at_mut<'a>(
    medias: &'a mut [Media],
    pos: &mut FastMap<Mid, usize>,
    mid: Mid,
) -> Option<&'a mut Media> {
    let hinted = pos
        .get(&mid)
        .copied()
        .filter(|&i| medias.get(i).is_some_and(|m| m.mid() == mid));
    let i = match hinted {
        Some(i) => i,
        None => {
            let i = medias.iter().position(|m| m.mid() == mid)?;
            // Hints of removed m-lines are dropped now and then, so the map stays bounded.
            if pos.len() > 2 * medias.len() + 16 {
                pos.clear();
            }
            pos.insert(mid, i);
            i
        }
    };
    medias.get_mut(i)
}

/// Parloir patch: adds `mid` to a small set kept as a vector.
pub(crate) fn note_pending(pending: &mut Vec<Mid>, mid: Mid) {
    if !pending.contains(&mid) {
        pending.push(mid);
    }
}
