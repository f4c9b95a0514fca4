//! Parloir patch 67: the hasher of the maps on the per-packet path, seeded at random per map
//! (as std's `RandomState` is) or, in simulations, from a sequence the thread was given.

use std::cell::Cell;
use std::hash::BuildHasher;

thread_local! {
    /// The next map's seed on this thread, once [`repeatable_maps`] was called here.
    static NEXT_SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes the hash maps that str0m (and a caller using [`MapSeed`]) makes on this thread from
/// now on take their seeds from `seed`, each map the next value of a sequence, instead of at
/// random: the order in which a connection walks its streams (receiver reports, key frame
/// requests, which queue the pacer looks at first) then repeats from run to run. For
/// simulations and benches, whose runs must repeat; a server never calls it. Random draws
/// (SSRCs, the pacer's jitter) come from `fastrand`'s thread-local generator, seeded with
/// `fastrand::seed`.
pub fn repeatable_maps(seed: u64) {
    NEXT_SEED.with(|next| next.set(Some(seed)));
}

/// foldhash's fast hasher, seeded at random for each map, or from the thread's sequence
/// after [`repeatable_maps`].
#[derive(Clone, Copy, Debug)]
pub struct MapSeed(foldhash::fast::SeedableRandomState);

impl Default for MapSeed {
    fn default() -> Self {
        let seed = NEXT_SEED.with(|next| {
            let seed = next.get()?;
            // splitmix64's step: each map its own seed.
            next.set(Some(seed.wrapping_add(0x9e37_79b9_7f4a_7c15)));
            Some(seed)
        });
        Self(match seed {
            Some(seed) => foldhash::fast::SeedableRandomState::with_seed(
                seed,
                foldhash::SharedSeed::global_fixed(),
            ),
            None => foldhash::fast::SeedableRandomState::random(),
        })
    }
}

impl BuildHasher for MapSeed {
    type Hasher = foldhash::fast::FoldHasher;

    #[inline(always)]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn repeatable_maps_walk_in_the_same_order() {
        fn walk() -> Vec<u64> {
            let mut map: HashMap<u64, (), MapSeed> = HashMap::default();
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
