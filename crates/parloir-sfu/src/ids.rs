//! Identifiers: LiveKit's prefixed sids, made from a seeded generator so that simulations are
//! repeatable, and the caller's session handles.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// The engine's maps on the forwarding path (peers, tracks, a subscriber's outgoing tracks by
/// sid, layer settings): foldhash's fast hasher, seeded per map as std's is. Their keys are
/// ids the SFU makes, mids, or names from the operator's signed tokens; maps keyed by what the
/// network sends (addresses, ICE usernames) keep std's SipHash.
pub(crate) type FastMap<K, V> = HashMap<K, V, MapSeed>;
/// The set of [`FastMap`].
pub(crate) type FastSet<K> = HashSet<K, MapSeed>;
/// A [`FastMap`] whose entries also have places (insertion order, moved only by
/// `swap_remove`): whoever holds a place reaches the entry without hashing its key or reading
/// the key's bytes.
pub(crate) type FastIndexMap<K, V> = indexmap::IndexMap<K, V, MapSeed>;

/// The hasher of [`FastMap`]: foldhash's fast one, seeded at random for each map, or from
/// the thread's sequence after [`repeatable_maps`]. str0m's own (its maps of streams by SSRC
/// and of m-lines by mid take their seeds from the same sequence).
pub(crate) use str0m::repeatable::MapSeed;

/// Makes the hash maps made on this thread from now on, the engine's and str0m's, take their
/// seeds from `seed` (each map the next value of a sequence) instead of at random: the order
/// in which the engine walks its peers and tracks, and a connection its streams, then repeats
/// from run to run, and so does everything that order decides (which receiver is polled
/// first, what the pacer sends when, in which order a publisher's layers are reported). For
/// simulations and benches, whose runs must repeat (a simulation's failure, a cache-miss
/// count under callgrind); a server never calls it.
pub fn repeatable_maps(seed: u64) {
    str0m::repeatable::repeatable_maps(seed);
}

/// A signal session, chosen by the caller (one per WebSocket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S{}", self.0)
    }
}

/// One str0m peer connection inside the SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PeerId(pub u64);

/// Makes `RM_`, `PA_` and `TR_` sids and ICE credentials from a seeded xorshift generator.
#[derive(Debug, Clone)]
pub(crate) struct IdGen {
    state: u64,
}

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl IdGen {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed | 1 }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: fast, and uniform enough for identifiers (not for secrets).
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `len` characters of base62.
    pub(crate) fn text(&mut self, len: usize) -> String {
        let mut out = String::with_capacity(len);
        let mut bits = self.next();
        for i in 0..len {
            if i % 10 == 9 {
                bits = self.next();
            }
            out.push(ALPHABET[(bits % 62) as usize] as char);
            bits /= 62;
        }
        out
    }

    pub(crate) fn sid(&mut self, prefix: &str) -> String {
        format!("{prefix}{}", self.text(12))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_are_prefixed_and_distinct() {
        let mut ids = IdGen::new(7);
        let a = ids.sid("PA_");
        let b = ids.sid("PA_");
        assert!(a.starts_with("PA_") && a.len() == 15);
        assert_ne!(a, b);
        assert_eq!(
            IdGen::new(7).sid("PA_"),
            a,
            "the same seed gives the same sids"
        );
    }

    #[test]
    fn repeatable_maps_walk_in_the_same_order() {
        fn walk() -> Vec<u64> {
            let mut map: FastMap<u64, ()> = FastMap::default();
            map.extend((0..64).map(|k| (k * 7919, ())));
            map.keys().copied().collect()
        }
        // Each thread starts with random seeds; a seeded thread repeats its maps' seeds.
        let seeded = |seed| {
            std::thread::spawn(move || {
                repeatable_maps(seed);
                (walk(), walk())
            })
            .join()
            .unwrap()
        };
        let (first, second) = seeded(5);
        assert_eq!(seeded(5), (first.clone(), second.clone()));
        assert_ne!(first, second, "each map its own seed");
        assert_ne!(seeded(6).0, first, "another seed, another order");
        // Unseeded, two maps (almost surely) walk in different orders.
        let random = std::thread::spawn(|| (walk(), walk())).join().unwrap();
        assert_ne!(random.0, random.1);
    }
}
