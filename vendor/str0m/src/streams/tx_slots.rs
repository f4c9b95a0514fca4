//! Parloir patch 43: a session's outgoing streams in slots that stay put.
//!
//! The streams were a hash map by SSRC. A subscriber connection in a large room holds about
//! 300 of them, and each frame written to it found its stream through two hash maps (mid/rid
//! to SSRC, SSRC to stream), each probe reading cache lines that no other work touches and that
//! are cold at each write. Here a stream keeps the slot it was put in until it is removed, so
//! an m-line can keep its stream's slot as a hint (`Media::tx_slot`) and reach the stream
//! without a map; the map by SSRC remains for RTCP and the direct API.

use crate::FastMap;
use crate::rtp_::Ssrc;

use super::StreamTx;

/// A slot that holds no stream: a hint that is never right.
pub(crate) const NO_SLOT: u32 = u32::MAX;

#[derive(Debug, Default)]
pub(crate) struct TxSlots {
    slots: Vec<Option<StreamTx>>,
    by_ssrc: FastMap<Ssrc, u32>,
    free: Vec<u32>,
}

impl TxSlots {
    pub(crate) fn get(&self, ssrc: &Ssrc) -> Option<&StreamTx> {
        let slot = *self.by_ssrc.get(ssrc)?;
        self.at(slot)
    }

    pub(crate) fn get_mut(&mut self, ssrc: &Ssrc) -> Option<&mut StreamTx> {
        let slot = *self.by_ssrc.get(ssrc)?;
        self.at_mut(slot)
    }

    pub(crate) fn slot_of(&self, ssrc: &Ssrc) -> Option<u32> {
        self.by_ssrc.get(ssrc).copied()
    }

    /// The slot of the first stream (in slot order) that `pred` accepts.
    pub(crate) fn find_slot(&self, mut pred: impl FnMut(&StreamTx) -> bool) -> Option<u32> {
        let i = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(&mut pred))?;
        Some(i as u32)
    }

    /// Parloir patch 49: where the slots' list lies (not read: for a prefetch).
    pub(crate) fn slots_field(&self) -> *const u8 {
        &self.slots as *const Vec<Option<StreamTx>> as *const u8
    }

    /// Parloir patch 49: where the stream in `slot` lies, if there is such a slot (the
    /// slot is not read: for a prefetch).
    pub(crate) fn slot_addr(&self, slot: u32) -> Option<*const Option<StreamTx>> {
        let slot = slot as usize;
        (slot < self.slots.len()).then(|| self.slots.as_ptr().wrapping_add(slot))
    }

    /// The stream in `slot`, if any: any `u32` may be asked for (a stale hint).
    pub(crate) fn at(&self, slot: u32) -> Option<&StreamTx> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub(crate) fn at_mut(&mut self, slot: u32) -> Option<&mut StreamTx> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    pub(crate) fn contains_key(&self, ssrc: &Ssrc) -> bool {
        self.by_ssrc.contains_key(ssrc)
    }

    /// The stream for `ssrc`, made with `make` if there is none, and its slot.
    pub(crate) fn get_or_insert_with(
        &mut self,
        ssrc: Ssrc,
        make: impl FnOnce() -> StreamTx,
    ) -> (&mut StreamTx, u32) {
        let slot = match self.by_ssrc.get(&ssrc) {
            Some(&slot) => slot,
            None => {
                let stream = Some(make());
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = stream;
                        slot
                    }
                    None => {
                        self.slots.push(stream);
                        (self.slots.len() - 1) as u32
                    }
                };
                self.by_ssrc.insert(ssrc, slot);
                slot
            }
        };
        let stream = self.slots[slot as usize]
            .as_mut()
            .expect("a mapped slot holds its stream");
        (stream, slot)
    }

    /// The stream filed under `old` is filed under `new` (its SSRC changed), in the same slot.
    pub(crate) fn rekey(&mut self, old: Ssrc, new: Ssrc) {
        if let Some(slot) = self.by_ssrc.remove(&old) {
            self.by_ssrc.insert(new, slot);
        }
    }

    pub(crate) fn remove(&mut self, ssrc: &Ssrc) -> Option<StreamTx> {
        let slot = self.by_ssrc.remove(ssrc)?;
        let stream = self.slots[slot as usize].take();
        self.free.push(slot);
        self.shrink();
        stream
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Ssrc, &mut StreamTx) -> bool) {
        let Self {
            slots,
            by_ssrc,
            free,
        } = self;
        for (slot, entry) in slots.iter_mut().enumerate() {
            let Some(stream) = entry else {
                continue;
            };
            let ssrc = stream.ssrc();
            if !keep(&ssrc, stream) {
                *entry = None;
                by_ssrc.remove(&ssrc);
                free.push(slot as u32);
            }
        }
        self.shrink();
    }

    /// Free slots at the end are dropped, so the slots do not outgrow the streams for long.
    fn shrink(&mut self) {
        let before = self.slots.len();
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        if self.slots.len() < before {
            let len = self.slots.len();
            self.free.retain(|&s| (s as usize) < len);
        }
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &StreamTx> {
        self.slots.iter().filter_map(|s| s.as_ref())
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut StreamTx> {
        self.slots.iter_mut().filter_map(|s| s.as_mut())
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut StreamTx)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.as_mut()?)))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = Ssrc> + '_ {
        self.values().map(|s| s.ssrc())
    }

    pub(crate) fn len(&self) -> usize {
        self.by_ssrc.len()
    }
}

#[cfg(test)]
mod test {
    use std::time::Duration;

    use super::*;
    use crate::rtp_::{Mid, MidRid, Rid};
    use crate::streams::Streams;

    fn stream(ssrc: u32, mid: &str) -> StreamTx {
        StreamTx::new(ssrc.into(), None, MidRid(Mid::from(mid), None), false, 1200)
    }

    #[test]
    fn slots_stay_put_and_are_reused_after_removal() {
        let mut slots = TxSlots::default();
        let (_, a) = slots.get_or_insert_with(1.into(), || stream(1, "a"));
        let (_, b) = slots.get_or_insert_with(2.into(), || stream(2, "b"));
        let (_, c) = slots.get_or_insert_with(3.into(), || stream(3, "c"));
        assert_eq!((a, b, c), (0, 1, 2));
        // Asking again gives the stream that is there, not a new one.
        let (s, again) = slots.get_or_insert_with(2.into(), || panic!("made again"));
        assert_eq!((again, s.ssrc()), (1, 2.into()));

        assert!(slots.remove(&2.into()).is_some());
        assert!(slots.at(1).is_none());
        assert!(slots.get(&2.into()).is_none());
        // The others did not move.
        assert_eq!(slots.at(0).map(|s| s.ssrc()), Some(1.into()));
        assert_eq!(slots.at(2).map(|s| s.ssrc()), Some(3.into()));
        // The freed slot is taken by the next stream.
        let (_, d) = slots.get_or_insert_with(4.into(), || stream(4, "d"));
        assert_eq!(d, 1);
        assert_eq!(
            slots.keys().collect::<Vec<_>>(),
            [1.into(), 4.into(), 3.into()]
        );
        assert!(slots.at(NO_SLOT).is_none());
        assert!(slots.remove(&99.into()).is_none());
    }

    #[test]
    fn free_slots_at_the_end_are_dropped() {
        let mut slots = TxSlots::default();
        for i in 1..=4u32 {
            slots.get_or_insert_with(i.into(), || stream(i, "m"));
        }
        slots.remove(&2.into());
        slots.retain(|ssrc, _| **ssrc < 3);
        assert_eq!(slots.len(), 1);
        assert_eq!(slots.slots.len(), 1);
        assert!(slots.free.is_empty());
        // Slots are handed out from the start again.
        let (_, s) = slots.get_or_insert_with(5.into(), || stream(5, "m"));
        assert_eq!(s, 1);
        assert_eq!(slots.values().count(), 2);
        for ssrc in [1u32, 5] {
            let slot = slots.slot_of(&ssrc.into()).unwrap();
            assert_eq!(slots.at(slot).unwrap().ssrc(), ssrc.into());
        }
    }

    #[test]
    fn a_stale_hint_finds_the_right_stream() {
        let mut streams = Streams::new(false, 1200, Duration::from_millis(1500));
        let a = MidRid(Mid::from("a"), None);
        let b = MidRid(Mid::from("b"), None);
        let c = MidRid(Mid::from("c"), Some(Rid::from("h")));
        streams.declare_stream_tx(1.into(), None, a);
        streams.declare_stream_tx(2.into(), None, b);

        let mut hint = NO_SLOT;
        let found = streams.stream_tx_by_midrid_hinted(b, &mut hint).unwrap();
        assert_eq!(found.ssrc(), 2.into());
        assert_eq!(hint, 1);

        // The hint's slot is taken by another m-line's stream: the right one, or none.
        streams.remove_stream_tx(2.into());
        streams.declare_stream_tx(3.into(), None, c);
        assert!(streams.stream_tx_by_midrid_hinted(b, &mut hint).is_none());
        let mut hint_c = hint;
        let found = streams.stream_tx_by_midrid_hinted(c, &mut hint_c).unwrap();
        assert_eq!(found.ssrc(), 3.into());
        // A hint that is another stream's slot is not taken for this one.
        let mut wrong = 0;
        let found = streams.stream_tx_by_midrid_hinted(c, &mut wrong).unwrap();
        assert_eq!(found.ssrc(), 3.into());
        assert_eq!(wrong, hint_c);

        // b's stream comes back in a new slot, found from any hint.
        streams.declare_stream_tx(4.into(), None, b);
        assert_eq!(streams.streams_tx.slot_of(&4.into()), Some(2));
        let mut hint_b = hint_c;
        assert_eq!(
            streams
                .stream_tx_by_midrid_hinted(b, &mut hint_b)
                .unwrap()
                .ssrc(),
            4.into()
        );
        assert_eq!(hint_b, 2);
        assert_eq!(streams.stream_tx(&4.into()).unwrap().ssrc(), 4.into());
    }

    #[test]
    fn a_removed_stream_leaves_the_touched_list() {
        let mut streams = Streams::new(false, 1200, Duration::from_millis(1500));
        streams.declare_stream_tx(1.into(), None, MidRid(Mid::from("a"), None));
        streams.declare_stream_tx(2.into(), None, MidRid(Mid::from("b"), None));
        assert_eq!(streams.tx_touched, [0, 1]);
        streams.remove_stream_tx(2.into());
        assert_eq!(streams.tx_touched, [0]);
        // The new stream takes the free slot, and is listed once.
        streams.declare_stream_tx(3.into(), None, MidRid(Mid::from("c"), None));
        assert_eq!(streams.tx_touched, [0, 1]);
        streams.remove_streams_by_mid(Mid::from("a"));
        assert_eq!(streams.tx_touched, [1]);
        assert_eq!(
            streams.streams_tx().map(|s| s.ssrc()).collect::<Vec<_>>(),
            [3.into()]
        );
        assert_eq!(streams.tx_touched, [1], "touching them all lists each once");
    }

    #[test]
    fn a_stream_given_new_ssrcs_is_found_by_the_new_one() {
        let mut streams = Streams::new(false, 1200, Duration::from_millis(1500));
        let a = MidRid(Mid::from("a"), None);
        streams.declare_stream_tx(1.into(), None, a);
        streams.declare_stream_tx(2.into(), None, MidRid(Mid::from("b"), None));
        assert!(streams.reset_stream_tx(a, 1.into(), None).is_none());
        // Not to the SSRC of another stream, which stays where it was.
        assert!(streams.reset_stream_tx(a, 2.into(), None).is_none());
        assert_eq!(streams.stream_tx(&2.into()).unwrap().mid(), Mid::from("b"));
        assert_eq!(streams.stream_tx(&1.into()).unwrap().mid(), Mid::from("a"));
        let reset = streams.reset_stream_tx(a, 7.into(), None).unwrap();
        assert_eq!(reset.ssrc(), 7.into());
        assert!(streams.stream_tx(&1.into()).is_none());
        assert_eq!(streams.stream_tx(&7.into()).unwrap().ssrc(), 7.into());
        assert!(streams.remove_stream_tx(7.into()));
        assert!(streams.stream_tx_by_midrid(a).is_none());
        assert_eq!(
            streams
                .stream_tx_by_midrid(MidRid(Mid::from("b"), None))
                .unwrap()
                .ssrc(),
            2.into()
        );
    }
}
