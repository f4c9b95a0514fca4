use super::{AppSpecificFeedback, DlrrItem, FirEntry, NackEntry, ReceptionReport, Remb};
use super::{ReportBlock, ReportList, Rrtr, Rtcp, Sdes, SenderInfo, Ssrc, Twcc};

/// Normalization of [`Rtcp`] so we can deal with one SSRC at a time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum RtcpFb {
    SenderInfo(SenderInfo),                   // tx -> rx
    ReceptionReport(ReceptionReport),         // rx -> tx
    DlrrItem(DlrrItem),                       // rx <- tx
    Rrtr((Rrtr, Ssrc)),                       // rx -> tx
    SourceDescription(Sdes),                  // tx -> rx
    Goodbye(Ssrc),                            // tx -> rx
    Nack(Ssrc, ReportList<NackEntry>),        // rx -> tx
    Pli(Ssrc),                                // rx -> tx
    Fir(FirEntry),                            // rx -> tx
    Twcc(Twcc),                               // rx -> tx
    Remb(Remb),                               // rx -> tx
    AppSpecificFeedback(AppSpecificFeedback), // not stream-routed
}

impl RtcpFb {
    pub fn is_for_rx(&self) -> bool {
        matches!(
            self,
            RtcpFb::SenderInfo(_)
                | RtcpFb::SourceDescription(_)
                | RtcpFb::Goodbye(_)
                | RtcpFb::DlrrItem(_)
        )
    }

    /// Parloir patch 81: for the tests and the fuzzer; the session uses
    /// [`RtcpFb::extend_from_rtcp`].
    #[cfg(any(test, feature = "_internal_test_exports"))]
    pub fn from_rtcp<T: IntoIterator<Item = Rtcp>>(t: T) -> impl Iterator<Item = RtcpFb> {
        let mut q = Vec::new();
        Self::extend_from_rtcp(&mut q, t);
        q.into_iter()
    }

    /// Parloir patch 81: [`RtcpFb::from_rtcp`] into a list the caller has (the session's
    /// `handle_rtcp` gives the thread's, which keeps its room): a list made and grown from
    /// empty for every RTCP datagram was most of the allocations its handling made.
    pub(crate) fn extend_from_rtcp<T: IntoIterator<Item = Rtcp>>(q: &mut Vec<RtcpFb>, t: T) {
        let iter = t.into_iter();
        for pkt in iter {
            match pkt {
                Rtcp::SenderReport(v) => {
                    q.push(RtcpFb::SenderInfo(v.sender_info));
                    q.extend(v.reports.into_iter().map(RtcpFb::ReceptionReport));
                }
                Rtcp::ReceiverReport(v) => {
                    q.extend(v.reports.into_iter().map(RtcpFb::ReceptionReport));
                }
                Rtcp::ExtendedReport(v) => {
                    for block in v.blocks {
                        match block {
                            ReportBlock::Rrtr(b) => q.push(RtcpFb::Rrtr((b, v.ssrc))),
                            ReportBlock::Dlrr(v) => {
                                q.extend(v.items.iter().map(|i| RtcpFb::DlrrItem(*i)))
                            }
                        }
                    }
                }
                Rtcp::SourceDescription(v) => {
                    q.extend(v.reports.into_iter().map(RtcpFb::SourceDescription));
                }
                Rtcp::Goodbye(v) => {
                    q.extend(v.reports.into_iter().map(RtcpFb::Goodbye));
                }
                Rtcp::Nack(v) => {
                    q.push(RtcpFb::Nack(v.ssrc, v.reports));
                }
                Rtcp::Pli(v) => {
                    q.push(RtcpFb::Pli(v.ssrc));
                }
                Rtcp::Fir(v) => {
                    q.extend(v.reports.into_iter().map(RtcpFb::Fir));
                }
                Rtcp::Twcc(v) => {
                    q.push(RtcpFb::Twcc(v));
                }
                Rtcp::Remb(v) => {
                    q.push(RtcpFb::Remb(v));
                }
                Rtcp::AppSpecificFeedback(v) => {
                    q.push(RtcpFb::AppSpecificFeedback(v));
                }
            }
        }
    }

    pub fn ssrc(&self) -> Ssrc {
        match self {
            RtcpFb::SenderInfo(v) => v.ssrc,
            RtcpFb::ReceptionReport(v) => v.ssrc,
            RtcpFb::DlrrItem(v) => v.ssrc,
            RtcpFb::Rrtr((_, ssrc)) => *ssrc,
            RtcpFb::SourceDescription(v) => v.ssrc,
            RtcpFb::Goodbye(v) => *v,
            RtcpFb::Nack(v, _) => *v,
            RtcpFb::Pli(v) => *v,
            RtcpFb::Fir(v) => v.ssrc,
            RtcpFb::Twcc(v) => v.ssrc,
            RtcpFb::Remb(v) => v.ssrcs.first().map(|ssrc| (*ssrc).into()).unwrap_or(v.ssrc),
            RtcpFb::AppSpecificFeedback(v) => v.media_ssrc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::AppSpecificFeedback;
    use super::*;
    use std::collections::VecDeque;

    /// Parloir patch 81: a compound packet's reports, parsed into lists made with their room
    /// and split into a list that already holds some, come after those, in order.
    #[test]
    fn reports_are_split_in_order_after_what_the_list_holds() {
        use super::super::{ExtendedReport, Nack, ReceiverReport, RtcpPacket};
        use std::time::{Duration, SystemTime};

        let report = |ssrc: u32| ReceptionReport {
            ssrc: ssrc.into(),
            fraction_lost: 1,
            packets_lost: 2,
            max_seq: 3,
            jitter: 4,
            last_sr_time: 5,
            last_sr_delay: 6,
        };
        let mut reports = ReportList::new();
        (1..=3).for_each(|s| reports.push(report(s)));
        let mut nacks = ReportList::new();
        nacks.push(NackEntry { pid: 10, blp: 1 });
        nacks.push(NackEntry { pid: 40, blp: 0 });
        let ntp_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let compound = [
            Rtcp::ReceiverReport(ReceiverReport {
                sender_ssrc: 9.into(),
                reports,
            }),
            Rtcp::ExtendedReport(ExtendedReport {
                ssrc: 9.into(),
                blocks: vec![ReportBlock::Rrtr(Rrtr { ntp_time })],
            }),
            Rtcp::Nack(Nack {
                sender_ssrc: 9.into(),
                ssrc: 20.into(),
                reports: nacks,
            }),
        ];
        let mut buf = [0u8; 512];
        let mut len = 0;
        for packet in &compound {
            len += packet.write_to(&mut buf[len..]);
        }
        let mut parsed = VecDeque::new();
        Rtcp::read_packet(&buf[..len], &mut parsed);
        assert_eq!(parsed.len(), 3);

        let mut list = vec![RtcpFb::Pli(7.into())];
        RtcpFb::extend_from_rtcp(&mut list, parsed.drain(..));
        let seen: Vec<String> = list
            .iter()
            .map(|fb| match fb {
                RtcpFb::Pli(s) => format!("pli {s}"),
                RtcpFb::ReceptionReport(r) => {
                    assert_eq!(*r, report(*r.ssrc));
                    format!("rr {}", r.ssrc)
                }
                RtcpFb::Rrtr((_, s)) => format!("rrtr {s}"),
                RtcpFb::Nack(s, entries) => {
                    let pids: Vec<u16> = entries.iter().map(|e| e.pid).collect();
                    format!("nack {s} {pids:?}")
                }
                other => format!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            seen,
            [
                "pli 7",
                "rr 1",
                "rr 2",
                "rr 3",
                "rrtr 9",
                "nack 20 [10, 40]"
            ]
        );
    }

    #[test]
    fn app_specific_feedback_passes_through_rtcpfb() {
        let fb = AppSpecificFeedback {
            sender_ssrc: 100.into(),
            media_ssrc: 200.into(),
            payload: vec![0xDE, 0xAD, 0xBE, 0xEF].into(),
        };

        let rtcp_items = vec![Rtcp::AppSpecificFeedback(fb)];
        let result: Vec<_> = RtcpFb::from_rtcp(rtcp_items).collect();

        assert_eq!(result.len(), 1);
        assert!(matches!(&result[0], RtcpFb::AppSpecificFeedback(v) if v.media_ssrc == 200.into()));
    }

    #[test]
    fn app_specific_feedback_write_and_parse_round_trip() {
        use crate::rtp_::RtcpPacket;

        let fb = AppSpecificFeedback {
            sender_ssrc: 1001.into(),
            media_ssrc: 2002.into(),
            payload: vec![0x01, 0x00, 0x00, 0x44, 0xAA, 0xBB, 0xCC, 0xDD].into(),
        };

        // Write the RTCP packet
        let rtcp = Rtcp::AppSpecificFeedback(fb.clone());
        let mut buf = [0u8; 256];
        let written = rtcp.write_to(&mut buf);

        // Parse it back via the Rtcp parser
        let mut parsed = VecDeque::new();
        Rtcp::read_packet(&buf[..written], &mut parsed);

        assert_eq!(parsed.len(), 1);
        match parsed.pop_front().unwrap() {
            Rtcp::AppSpecificFeedback(parsed_fb) => {
                assert_eq!(parsed_fb.sender_ssrc, fb.sender_ssrc);
                assert_eq!(parsed_fb.media_ssrc, fb.media_ssrc);
                assert_eq!(parsed_fb.payload, fb.payload);
            }
            _ => panic!("Expected AppSpecificFeedback"),
        }
    }

    #[test]
    fn app_specific_feedback_not_confused_with_remb() {
        use crate::rtp_::RtcpPacket;

        // A non-REMB FMT=15 payload should parse as AppSpecificFeedback, not Remb
        let fb = AppSpecificFeedback {
            sender_ssrc: 42.into(),
            media_ssrc: 0.into(),
            // Payload that does NOT start with "REMB" magic bytes
            payload: vec![0x01, 0x02, 0x03, 0x04].into(),
        };

        let rtcp = Rtcp::AppSpecificFeedback(fb);
        let mut buf = [0u8; 256];
        let written = rtcp.write_to(&mut buf);

        let mut parsed = VecDeque::new();
        Rtcp::read_packet(&buf[..written], &mut parsed);

        assert_eq!(parsed.len(), 1);
        assert!(matches!(parsed[0], Rtcp::AppSpecificFeedback(_)));
    }
}
