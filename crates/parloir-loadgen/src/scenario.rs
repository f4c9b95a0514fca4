//! Load scenarios: TOML files in perf/scenarios/, and how they are scaled to a machine.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::media::Clip;

/// A load scenario as written in perf/scenarios/*.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Participants at full size.
    pub participants: u32,
    /// How many of them publish a microphone (the first ones); the rest only listen and watch.
    #[serde(default = "Scenario::all")]
    pub audio_publishers: u32,
    /// How many publish a camera (the first ones).
    #[serde(default = "Scenario::all")]
    pub video_publishers: u32,
    /// Seconds of steady state measured once everyone has joined.
    pub duration_s: f64,
    /// Seconds after the last join before measuring starts.
    #[serde(default = "Scenario::default_warmup")]
    pub warmup_s: f64,
    /// Joins started per second while ramping up.
    #[serde(default = "Scenario::default_join_rate")]
    pub join_per_second: f64,
    #[serde(default)]
    pub audio: Audio,
    #[serde(default)]
    pub video: Video,
    #[serde(default)]
    pub subscribe: Subscribe,
    /// Participants leave and come back while the scenario runs.
    #[serde(default)]
    pub churn: Option<Churn>,
    #[serde(default)]
    pub scale: Scale,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audio {
    /// Bitrate while speaking (sets the Opus frame size).
    pub kbps: u32,
    /// Publishers speaking at once; the others are in DTX silence.
    pub speakers: u32,
    /// Seconds before the floor passes to the next speakers.
    pub turn_s: f64,
}

impl Default for Audio {
    fn default() -> Self {
        Self {
            kbps: 32,
            speakers: 1,
            turn_s: 5.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Video {
    /// Simulcast layers from lowest to highest; one layer means no simulcast.
    pub layers: Vec<Layer>,
    /// The layers' clips, once [`Scenario::load`] has read them.
    #[serde(skip)]
    pub clips: Vec<Option<Arc<Clip>>>,
}

impl Default for Video {
    /// livekit-client's defaults for a 720p camera: h720 with h180 and h360 simulcast layers.
    fn default() -> Self {
        Self {
            layers: vec![
                Layer::new("q", 320, 180, 15, 160),
                Layer::new("h", 640, 360, 20, 450),
                Layer::new("f", 1280, 720, 30, 1700),
            ],
            clips: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub rid: String,
    pub width: u16,
    pub height: u16,
    pub fps: u32,
    pub kbps: u32,
    /// A VP8 clip (IVF) to publish instead of synthetic frames, relative to the scenario file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<String>,
}

impl Layer {
    fn new(rid: &str, width: u16, height: u16, fps: u32, kbps: u32) -> Self {
        Self {
            rid: rid.into(),
            width,
            height,
            fps,
            kbps,
            clip: None,
        }
    }
}

/// What each participant watches, as a client with adaptive stream does: a grid of small tiles
/// and one large one. Every audio track is subscribed, as clients do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Subscribe {
    /// Small tiles (each asks for the lowest layer).
    pub grid: u32,
    /// Large tiles (each asks for the highest layer).
    pub large: u32,
}

impl Default for Subscribe {
    fn default() -> Self {
        Self { grid: 25, large: 1 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Each stay lasts between these many seconds.
    pub min_stay_s: f64,
    pub max_stay_s: f64,
    /// Seconds away before joining again.
    pub away_s: f64,
}

/// How the scenario shrinks on a smaller machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scale {
    /// CPU cores the full-size scenario is meant for (server and load generator together).
    pub reference_cores: u32,
    /// Never scale below this many participants.
    pub min_participants: u32,
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            reference_cores: 16,
            min_participants: 4,
        }
    }
}

/// The scenario as it will run, and why it was resized.
#[derive(Debug, Clone, Serialize)]
pub struct Sized {
    pub scenario: Scenario,
    pub full_participants: u32,
    pub scaling: String,
}

impl Scenario {
    fn all() -> u32 {
        u32::MAX
    }
    fn default_warmup() -> f64 {
        2.0
    }
    fn default_join_rate() -> f64 {
        10.0
    }

    /// The simulcast layer `viewer` asks for from `publisher`'s camera, or `None` when its screen
    /// does not show it. Camera publishers are ranked after the viewer in join order: the first
    /// `large` fill the large tiles (top layer), the next `grid` the small ones (lowest layer).
    /// A viewer who does not publish ranks them from the first, so a webinar's audience all
    /// watch its speaker large.
    pub fn tile(&self, viewer: u32, publisher: u32) -> Option<usize> {
        let v = self.video_publishers;
        if publisher >= v || publisher == viewer {
            return None;
        }
        let pos = (publisher + v - (viewer % v) - 1) % v;
        if pos < self.subscribe.large {
            Some(self.video.layers.len() - 1)
        } else if pos < self.subscribe.large + self.subscribe.grid {
            Some(0)
        } else {
            None
        }
    }

    /// Reads and checks a scenario file, and the clips it names.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read scenario {}: {e}", path.display()))?;
        let mut s =
            Self::parse(&text).map_err(|e| anyhow::anyhow!("scenario {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut clips = Vec::new();
        for l in &s.video.layers {
            let Some(name) = &l.clip else {
                clips.push(None);
                continue;
            };
            let clip = Clip::load(&dir.join(name))
                .map_err(|e| anyhow::anyhow!("scenario {}: {e}", path.display()))?;
            anyhow::ensure!(
                (clip.width, clip.height) == (l.width, l.height),
                "scenario {}: clip {name} is {}x{}, layer {} says {}x{}",
                path.display(),
                clip.width,
                clip.height,
                l.rid,
                l.width,
                l.height
            );
            clips.push(Some(Arc::new(clip)));
        }
        s.video.clips = clips;
        Ok(s)
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut s: Self = toml::from_str(text)?;
        s.audio_publishers = s.audio_publishers.min(s.participants);
        s.video_publishers = s.video_publishers.min(s.participants);
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.participants >= 1, "participants must be at least 1");
        anyhow::ensure!(
            self.duration_s > 0.0 && self.duration_s <= 3600.0,
            "duration_s must be in (0, 3600]"
        );
        anyhow::ensure!(self.warmup_s >= 0.0, "warmup_s must not be negative");
        anyhow::ensure!(
            self.join_per_second > 0.0,
            "join_per_second must be positive"
        );
        anyhow::ensure!(
            !self.video.layers.is_empty() && self.video.layers.len() <= 3,
            "video needs one to three layers"
        );
        for l in &self.video.layers {
            anyhow::ensure!(
                l.fps >= 1 && l.fps <= 60 && l.kbps >= 8 && l.width >= 16 && l.height >= 16,
                "layer {} is out of range (fps 1-60, kbps >= 8, size >= 16)",
                l.rid
            );
        }
        if let Some(c) = &self.churn {
            anyhow::ensure!(
                c.min_stay_s > 0.0 && c.max_stay_s >= c.min_stay_s && c.away_s >= 0.0,
                "churn stays must be positive and ordered"
            );
        }
        Ok(())
    }

    /// Resizes the scenario: to `participants` when given, otherwise in proportion to `cores`
    /// against the scenario's reference machine. Publisher counts keep their share of the room.
    pub fn sized(&self, participants: Option<u32>, cores: u32) -> Sized {
        let full = self.participants;
        let (n, scaling) = match participants {
            Some(n) => (
                n.max(1),
                format!("{n} of {full} participants, as asked on the command line"),
            ),
            None => {
                let reference = self.scale.reference_cores.max(1);
                if cores >= reference {
                    (
                        full,
                        format!("full size: {cores} cores, {reference} needed"),
                    )
                } else {
                    let n = ((u64::from(full) * u64::from(cores)) / u64::from(reference)) as u32;
                    let n = n.clamp(self.scale.min_participants.min(full), full);
                    (
                        n,
                        format!(
                            "scaled from {full} to {n} participants: {cores} cores here, the \
                             full scenario is sized for {reference}"
                        ),
                    )
                }
            }
        };
        let share = |count: u32| -> u32 {
            if count >= full {
                n
            } else {
                // Keep at least one publisher where the scenario has any (a webinar's speaker).
                ((u64::from(count) * u64::from(n)).div_ceil(u64::from(full)) as u32).min(n)
            }
        };
        let mut scenario = self.clone();
        scenario.participants = n;
        scenario.audio_publishers = share(self.audio_publishers);
        scenario.video_publishers = share(self.video_publishers);
        Sized {
            scenario,
            full_participants: full,
            scaling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEETING: &str = r#"
        name = "meeting"
        participants = 150
        duration_s = 30
    "#;

    #[test]
    fn defaults_are_a_720p_simulcast_meeting() {
        let s = Scenario::parse(MEETING).unwrap();
        assert_eq!(s.audio_publishers, 150);
        assert_eq!(s.video_publishers, 150);
        assert_eq!(s.video.layers.len(), 3);
        assert_eq!(s.video.layers[2].width, 1280);
        assert_eq!((s.subscribe.grid, s.subscribe.large), (25, 1));
    }

    #[test]
    fn scales_by_cores_and_keeps_a_webinar_speaker() {
        let s = Scenario::parse(MEETING).unwrap();
        let sized = s.sized(None, 2);
        assert_eq!(sized.scenario.participants, 18);
        assert!(sized.scaling.contains("150 to 18"), "{}", sized.scaling);
        assert_eq!(s.sized(None, 32).scenario.participants, 150);
        assert_eq!(s.sized(Some(6), 2).scenario.video_publishers, 6);

        let webinar = Scenario::parse(
            "name='w'\nparticipants=100\naudio_publishers=1\nvideo_publishers=1\nduration_s=5",
        )
        .unwrap();
        let sized = webinar.sized(None, 2);
        assert_eq!(sized.scenario.participants, 12);
        assert_eq!(sized.scenario.video_publishers, 1);
    }

    #[test]
    fn tiles_are_the_next_publishers_and_a_webinar_speaker_is_large() {
        let mut s = Scenario::parse(MEETING)
            .unwrap()
            .sized(Some(30), 2)
            .scenario;
        s.subscribe.grid = 2;
        let shown: Vec<(u32, usize)> = (0..30)
            .filter_map(|p| s.tile(5, p).map(|l| (p, l)))
            .collect();
        assert_eq!(shown, vec![(6, 2), (7, 0), (8, 0)]);
        assert_eq!(s.tile(29, 0), Some(2), "the ranking wraps around");
        assert_eq!(s.tile(5, 5), None, "nobody watches themselves");

        let webinar = Scenario::parse(
            "name='w'\nparticipants=10\naudio_publishers=1\nvideo_publishers=1\nduration_s=5\n[subscribe]\ngrid=0\nlarge=1",
        )
        .unwrap();
        for viewer in 1..10 {
            assert_eq!(webinar.tile(viewer, 0), Some(2));
        }
        assert_eq!(webinar.tile(0, 0), None);
    }

    #[test]
    fn the_shipped_scenarios_load_with_their_clips() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../perf/scenarios");
        for name in ["meeting-150", "webinar", "audio-only", "churn"] {
            let s = Scenario::load(&dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(s.name, name);
            assert_eq!(s.video.clips.len(), s.video.layers.len(), "{name}");
        }
        let meeting = Scenario::load(&dir.join("meeting-150.toml")).unwrap();
        assert!(meeting.video.clips.iter().all(Option::is_some));
        let f = meeting.video.clips[2].as_ref().unwrap();
        assert_eq!((f.width, f.height, f.frames.len()), (1280, 720, 120));

        let tmp = std::env::temp_dir().join(format!("parloir-scenario-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::copy(dir.join("../media/q.ivf"), tmp.join("q.ivf")).unwrap();
        let wrong = "name='x'\nparticipants=2\nduration_s=1\n[[video.layers]]\nrid='q'\nwidth=640\nheight=360\nfps=15\nkbps=100\nclip='q.ivf'\n";
        std::fs::write(tmp.join("wrong.toml"), wrong).unwrap();
        let e = Scenario::load(&tmp.join("wrong.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("320x180"), "{e}");
        let missing = wrong.replace("q.ivf", "nowhere.ivf");
        std::fs::write(tmp.join("missing.toml"), missing).unwrap();
        assert!(Scenario::load(&tmp.join("missing.toml")).is_err());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "name='x'\nparticipants=0\nduration_s=1",
            "name='x'\nparticipants=2\nduration_s=0",
            "name='x'\nparticipants=2\nduration_s=1\nbogus=1",
            "name='x'\nparticipants=2\nduration_s=1\n[video]\nlayers=[]",
            "name='x'\nparticipants=2\nduration_s=1\n[churn]\nmin_stay_s=5\nmax_stay_s=1\naway_s=1",
        ] {
            assert!(Scenario::parse(bad).is_err(), "{bad}");
        }
    }
}
