use std::time::Instant;

use super::Pacer;
use super::PaddingRequest;
use super::QueueState;
use crate::Reason;
use crate::pacer::PacerReason;
use crate::rtp_::{Bitrate, DataSize, MidRid, TwccClusterId};

/// A null pacer that doesn't pace.
#[derive(Debug, Default)]
pub struct NullPacer {
    /// Snapshots from the last `handle_timeout`. `poll_queue` counts off
    /// each packet it hands out. Parloir patch: only queues with packets are kept (an
    /// emptied one is dropped), so choosing one looks at those alone.
    ///
    /// Parloir patch 45: the round robin goes by each snapshot's `last_emitted` (the last
    /// packet its queue sent when the snapshot was taken; resends are not counted, and a
    /// cleared queue has none), moved on by `register_send`; a map of every stream's last
    /// send, updated for each packet sent, is gone.
    queue_states: Vec<QueueState>,
    /// Set when `poll_queue` hands out a queue that `register_send` never confirms:
    /// the stream had nothing to send after all, so the snapshot is stale.
    unsent_since: Option<Instant>,
}

impl NullPacer {
    /// Parloir patch: a fresh snapshot of one queue, taken when a frame was packetized at
    /// write time (`Session::packetize_now`), replacing that queue's snapshot from the last
    /// `handle_timeout`.
    pub(crate) fn refresh_queue(&mut self, state: QueueState) {
        let at = self
            .queue_states
            .iter()
            .position(|q| q.midrid == state.midrid);
        match at {
            Some(i) if state.snapshot.packet_count == 0 => {
                self.queue_states.swap_remove(i);
            }
            Some(i) => self.queue_states[i] = state,
            None if state.snapshot.packet_count == 0 => {}
            None => self.queue_states.push(state),
        }
    }
}

impl Pacer for NullPacer {
    fn set_pacing_rate(&mut self, _padding_bitrate: Bitrate) {
        // We don't care
    }

    fn set_padding_rate(&mut self, _padding_bitrate: Bitrate) {
        // We don't care
    }
    fn poll_timeout(&self) -> (Option<Instant>, Reason) {
        // Only a poll that sent nothing needs a fresh snapshot: other queued packets go
        // out on the next poll. New media requests a timeout, and receiving a NACK
        // refreshes the snapshot through Rtc::handle_input before polling resumes.
        (self.unsent_since, Reason::Pacer(PacerReason::Handle))
    }

    fn handle_timeout(
        &mut self,
        _now: Instant,
        iter: impl Iterator<Item = QueueState>,
    ) -> Option<PaddingRequest> {
        self.unsent_since = None;
        self.queue_states.clear();
        self.queue_states
            .extend(iter.filter(|q| q.snapshot.packet_count > 0));

        None
    }

    fn poll_queue(&mut self) -> Option<(MidRid, Option<TwccClusterId>)> {
        // Pick a queue using round robin, prioritize the least recently sent on queue
        // (with one queue, the common case, no lookup).
        let i = match self.queue_states.len() {
            0 => return None,
            1 => 0,
            _ => self
                .queue_states
                .iter()
                .enumerate()
                .min_by_key(|(_, q)| q.snapshot.last_emitted)
                .map(|(i, _)| i)?,
        };
        let queue = &mut self.queue_states[i];
        queue.snapshot.packet_count -= 1;
        self.unsent_since = Some(queue.snapshot.created_at);
        let midrid = queue.midrid;
        if queue.snapshot.packet_count == 0 {
            self.queue_states.swap_remove(i);
        }

        Some((midrid, None))
    }

    fn register_send(&mut self, now: Instant, _packet_size: DataSize, from: MidRid) {
        self.unsent_since = None;
        // An emptied queue has left the list; it is snapshotted afresh when it fills again.
        if let Some(q) = self.queue_states.iter_mut().find(|q| q.midrid == from) {
            q.snapshot.last_emitted = Some(now);
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::pacer::QueueSnapshot;

    fn queue(mid: &str, packet_count: u32, now: Instant) -> QueueState {
        sent_queue(mid, packet_count, now, None)
    }

    fn sent_queue(
        mid: &str,
        packet_count: u32,
        now: Instant,
        last_emitted: Option<Instant>,
    ) -> QueueState {
        QueueState {
            midrid: MidRid(mid.into(), None),
            unpaced: true,
            use_for_padding: false,
            snapshot: QueueSnapshot {
                created_at: now,
                packet_count,
                last_emitted,
                ..Default::default()
            },
        }
    }

    #[test]
    fn drains_every_queue_without_another_timeout() {
        let now = Instant::now();
        let mut pacer = NullPacer::default();
        let queues = [queue("a", 2, now), queue("b", 1, now), queue("c", 0, now)];
        pacer.handle_timeout(now, queues.into_iter());

        let mut sent = vec![];
        for _ in 0..3 {
            let (midrid, _) = pacer.poll_queue().expect("queued packet");
            pacer.register_send(now, DataSize::bytes(100), midrid);
            assert_eq!(pacer.poll_timeout().0, None, "no timeout between sends");
            sent.push(midrid.mid().to_string());
        }
        sent.sort();
        assert_eq!(sent, ["a", "a", "b"]);
        assert_eq!(pacer.poll_queue(), None);
        assert_eq!(pacer.poll_timeout().0, None, "no timeout after draining");
    }

    #[test]
    fn only_queues_with_packets_are_kept() {
        let now = Instant::now();
        let mut pacer = NullPacer::default();
        let queues = [queue("a", 0, now), queue("b", 1, now), queue("c", 0, now)];
        pacer.handle_timeout(now, queues.into_iter());
        assert_eq!(pacer.queue_states.len(), 1);
        // A refresh that empties a queue drops it; one that fills a new queue adds it.
        pacer.refresh_queue(queue("b", 0, now));
        pacer.refresh_queue(queue("c", 2, now));
        pacer.refresh_queue(queue("d", 0, now));
        assert_eq!(pacer.queue_states.len(), 1);
        for _ in 0..2 {
            let (midrid, _) = pacer.poll_queue().expect("c's packets");
            assert_eq!(midrid.mid().to_string(), "c");
            pacer.register_send(now, DataSize::bytes(100), midrid);
        }
        assert_eq!(pacer.poll_queue(), None);
        assert!(pacer.queue_states.is_empty(), "an emptied queue is dropped");
    }

    #[test]
    fn unsent_poll_asks_for_a_fresh_snapshot() {
        let now = Instant::now();
        let mut pacer = NullPacer::default();
        pacer.handle_timeout(now, [queue("a", 1, now), queue("b", 1, now)].into_iter());

        assert!(pacer.poll_queue().is_some());
        assert_eq!(pacer.poll_timeout().0, Some(now), "stream sent nothing");

        pacer.handle_timeout(now, [queue("b", 1, now)].into_iter());
        assert_eq!(pacer.poll_timeout().0, None);
        let (midrid, _) = pacer.poll_queue().expect("remaining packet");
        assert_eq!(midrid, MidRid("b".into(), None));
        pacer.register_send(now, DataSize::bytes(100), midrid);
        assert_eq!(pacer.poll_queue(), None);
        assert_eq!(pacer.poll_timeout().0, None);
    }

    #[test]
    fn round_robin_by_least_recently_sent() {
        let ms = std::time::Duration::from_millis;
        let now = Instant::now();
        let mut pacer = NullPacer::default();
        // "c" never sent, "a" sent before "b": c first, then a, then b, then the queue
        // just sent from goes last.
        let queues = [
            sent_queue("b", 2, now, Some(now - ms(1))),
            sent_queue("a", 2, now, Some(now - ms(2))),
            sent_queue("c", 1, now, None),
        ];
        pacer.handle_timeout(now, queues.into_iter());
        let mut order = vec![];
        for i in 0..5 {
            let (midrid, _) = pacer.poll_queue().expect("queued packet");
            pacer.register_send(now + ms(i), DataSize::bytes(100), midrid);
            order.push(midrid.mid().to_string());
        }
        assert_eq!(order, ["c", "a", "b", "a", "b"]);
        assert_eq!(pacer.poll_queue(), None);
    }
}
