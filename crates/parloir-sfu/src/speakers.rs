//! Active speaker detection from the RFC 6464 audio level header extension.
//!
//! Each audio track keeps a decaying loudness; every tick the room's speakers are those whose
//! smoothed level is above a threshold, and only changes are reported (LiveKit's
//! `SpeakersChanged` is a delta: `active = false` means a speaker stopped).

use crate::ids::{FastMap, FastSet};
use std::time::{Duration, Instant};

/// How often speakers are re-evaluated and changes sent.
pub(crate) const SPEAKER_TICK: Duration = Duration::from_millis(300);
/// Audio quieter than this (in -dBov, 127 = silence) counts as silence.
const SILENCE_DBOV: u8 = 55;
/// A speaker stays active this long after its last loud packet.
const HANGOVER: Duration = Duration::from_millis(600);

#[derive(Debug, Default)]
pub(crate) struct Loudness {
    /// Smoothed linear level in 0..=1.
    level: f32,
    last_loud: Option<Instant>,
    reported_active: bool,
}

impl Loudness {
    /// Feeds one packet's level (-dBov, 0 = loudest, 127 = silence).
    pub(crate) fn observe(&mut self, dbov: i8, now: Instant) {
        let dbov = dbov.unsigned_abs().min(127);
        let linear = dbov_to_linear(dbov);
        self.level = 0.8 * self.level + 0.2 * linear;
        if dbov < SILENCE_DBOV {
            self.last_loud = Some(now);
        }
    }

    /// When it last spoke (its last loud packet).
    pub(crate) fn last_loud(&self) -> Option<Instant> {
        self.last_loud
    }

    /// Speaking now: a loud packet within the hangover.
    pub(crate) fn active(&self, now: Instant) -> bool {
        self.last_loud
            .is_some_and(|t| now.saturating_duration_since(t) < HANGOVER)
    }
}

/// The speakers a room reports as active now: what a newcomer is told after joining, since
/// `SpeakersChanged` only carries changes.
pub(crate) fn active(levels: &FastMap<String, Loudness>) -> Vec<SpeakerChange> {
    let mut out: Vec<SpeakerChange> = levels
        .iter()
        .filter(|(_, l)| l.reported_active)
        .map(|(sid, l)| (sid.clone(), l.level, true))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// The `n` participants with the highest smoothed level (ties broken by sid, so the choice is
/// stable between ticks).
pub(crate) fn loudest(levels: &FastMap<String, Loudness>, n: usize) -> FastSet<String> {
    let mut ranked: Vec<(&String, f32)> = levels.iter().map(|(s, l)| (s, l.level)).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked.into_iter().take(n).map(|(s, _)| s.clone()).collect()
}

/// One change to report: (participant sid, level, active).
pub(crate) type SpeakerChange = (String, f32, bool);

/// Evaluates a room's speakers at `now`; `levels` maps participant sid to loudness.
pub(crate) fn changes(levels: &mut FastMap<String, Loudness>, now: Instant) -> Vec<SpeakerChange> {
    let mut out = Vec::new();
    for (sid, loudness) in levels.iter_mut() {
        let active = loudness.active(now);
        if active != loudness.reported_active {
            out.push((
                sid.clone(),
                if active { loudness.level } else { 0.0 },
                active,
            ));
            loudness.reported_active = active;
        }
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// LiveKit's conversion of -dBov to a 0..=1 level.
fn dbov_to_linear(dbov: u8) -> f32 {
    10f32.powf(-(dbov as f32) / 20.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_start_and_stop_once() {
        let t0 = Instant::now();
        let mut levels: FastMap<String, Loudness> = FastMap::default();
        levels.entry("PA_a".into()).or_default().observe(20, t0);
        levels.entry("PA_b".into()).or_default().observe(120, t0);
        let c = changes(&mut levels, t0);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, "PA_a");
        assert!(c[0].2);
        assert!(
            changes(&mut levels, t0 + SPEAKER_TICK).is_empty(),
            "no change, no message"
        );
        let later = t0 + HANGOVER + SPEAKER_TICK;
        let c = changes(&mut levels, later);
        assert_eq!(c, vec![("PA_a".to_string(), 0.0, false)]);
    }
}
