//! Hardware profiles (hardware/*.toml, built into the binary) and the core plan they give on
//! this machine: which CPUs run the control plane, the media workers, speech and recording.

use std::collections::BTreeSet;

use parloir_gpu::{PciGpu, Vendor};
use parloir_net::topology::{self, Nic, Node};
use serde::Deserialize;

/// The profiles shipped in hardware/, most specific first (detection takes the first match).
const PROFILES: [(&str, &str); 4] = [
    (
        "nvidia-h200",
        include_str!("../../../hardware/nvidia-h200.toml"),
    ),
    (
        "nvidia-l4",
        include_str!("../../../hardware/nvidia-l4.toml"),
    ),
    (
        "intel-flex",
        include_str!("../../../hardware/intel-flex.toml"),
    ),
    ("cpu-only", include_str!("../../../hardware/cpu-only.toml")),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub detect: Detect,
    pub cores: Cores,
    pub video: Video,
    pub speech: Speech,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    /// "none", "nvidia" or "intel".
    pub accelerator: String,
    /// Substrings of the device's model name; empty matches any device of the vendor.
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cores {
    /// Cores for the control plane.
    pub control: usize,
    /// Shares of the remaining cores.
    pub media: f64,
    pub speech: f64,
    pub record: f64,
    /// "nic": media cores on the NIC's NUMA node; "any".
    pub media_node: String,
    /// "gpu": speech and record cores on the accelerator's node; "any".
    pub accel_node: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Video {
    pub decode: Vec<String>,
    pub encode: Vec<String>,
    pub composite: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Speech {
    pub providers: Vec<String>,
}

/// Every built-in profile.
pub fn profiles() -> Vec<Profile> {
    PROFILES
        .iter()
        .map(|(name, text)| {
            // The files are part of the source tree and parsed by a test.
            toml::from_str(text).unwrap_or_else(|e| panic!("hardware/{name}.toml: {e}"))
        })
        .collect()
}

/// The profile named `name`, or the one detection picks for "auto", with the reason.
pub fn choose(name: &str, machine: &Machine) -> Result<(Profile, String), String> {
    let all = profiles();
    if name != "auto" {
        let names: Vec<_> = all.iter().map(|p| p.name.clone()).collect();
        return all
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| (p, "configured".to_string()))
            .ok_or_else(|| format!("no hardware profile {name:?} (have {})", names.join(", ")));
    }
    for p in &all {
        let vendor = match p.detect.accelerator.as_str() {
            "nvidia" => Vendor::Nvidia,
            "intel" => Vendor::Intel,
            _ => continue,
        };
        let usable: Vec<&Gpu> = machine.gpus.iter().filter(|g| g.vendor == vendor).collect();
        if let Some(g) = usable.iter().find(|g| {
            g.model
                .as_deref()
                .is_some_and(|m| p.detect.models.iter().any(|want| m.contains(want.as_str())))
        }) {
            let model = g.model.as_deref().unwrap_or("?");
            return Ok((p.clone(), format!("auto: {model} at {}", g.pci_address)));
        }
    }
    // An NVIDIA GPU no profile names: the NVENC profile, when the driver is there.
    if let Some(g) = machine
        .gpus
        .iter()
        .find(|g| g.vendor == Vendor::Nvidia && g.model.is_some())
        && let Some(p) = all.iter().find(|p| p.name == "nvidia-l4")
    {
        return Ok((
            p.clone(),
            format!(
                "auto: {} (not named by any profile; NVENC assumed)",
                g.model.as_deref().unwrap_or("?")
            ),
        ));
    }
    let why = if machine.gpus.is_empty() {
        "auto: no GPU".to_string()
    } else {
        "auto: GPUs present but none usable (no driver or unknown model)".to_string()
    };
    let cpu = all
        .into_iter()
        .find(|p| p.name == "cpu-only")
        .ok_or("the cpu-only profile is missing")?;
    Ok((cpu, why))
}

/// A GPU as the profile choice sees it.
#[derive(Debug, Clone)]
pub struct Gpu {
    pub vendor: Vendor,
    pub model: Option<String>,
    pub pci_address: String,
    pub numa_node: Option<usize>,
}

/// What the core plan and profile detection need to know of the machine.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: Vec<usize>,
    pub nodes: Vec<Node>,
    pub nics: Vec<Nic>,
    pub gpus: Vec<Gpu>,
}

impl Machine {
    /// Reads this machine: its allowed CPUs, NUMA nodes, NICs, and GPUs (models from CUDA
    /// when the driver is there, else from PCI ids).
    pub fn detect(pci: &[PciGpu], cuda: &[parloir_gpu::CudaDevice]) -> Self {
        let gpus = pci
            .iter()
            .map(|p| {
                let cuda_name = cuda
                    .iter()
                    .find(|c| c.pci_address.eq_ignore_ascii_case(&p.address))
                    .map(|c| c.name.clone());
                Gpu {
                    vendor: p.vendor,
                    model: cuda_name.or_else(|| p.model.clone()),
                    pci_address: p.address.clone(),
                    numa_node: p.numa_node,
                }
            })
            .collect();
        Self {
            cpus: topology::allowed_cpus(),
            nodes: topology::numa_nodes(),
            nics: topology::nics(),
            gpus,
        }
    }
}

/// Which CPUs do what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorePlan {
    pub control: Vec<usize>,
    pub media: Vec<usize>,
    pub speech: Vec<usize>,
    pub record: Vec<usize>,
    /// Roles that share cores because the machine has too few, in words.
    pub notes: Vec<String>,
}

impl CorePlan {
    /// Lays `profile` out on `machine`: control first, then media on the NIC's node, speech
    /// and recording on the accelerator's node. Small machines share: with 2 cores the media
    /// worker gets one and everything else the other; with 1, all share it.
    pub fn new(profile: &Profile, machine: &Machine) -> Self {
        let cpus = &machine.cpus;
        let mut notes = Vec::new();
        if cpus.len() <= 2 {
            let first = cpus.first().copied().unwrap_or(0);
            let last = cpus.last().copied().unwrap_or(0);
            notes.push(format!(
                "{} CPU(s): control, speech and recording share CPU {first}",
                cpus.len()
            ));
            if cpus.len() < 2 {
                notes.push("the media worker shares it too".into());
            }
            return Self {
                control: vec![first],
                media: vec![last],
                speech: vec![first],
                record: vec![first],
                notes,
            };
        }
        let c = &profile.cores;
        let control_n = c.control.clamp(1, cpus.len() - 1);
        let control: Vec<usize> = cpus[..control_n].to_vec();
        let rest: Vec<usize> = cpus[control_n..].to_vec();
        let r = rest.len() as f64;
        let total = (c.media + c.speech + c.record).max(f64::EPSILON);
        let media_n = ((r * c.media / total).round() as usize).clamp(1, rest.len());
        let speech_n = ((r * c.speech / total).round() as usize).min(rest.len() - media_n);
        let record_n = rest.len() - media_n - speech_n;

        let node_of = |cpu: usize| {
            machine
                .nodes
                .iter()
                .find(|n| n.cpus.contains(&cpu))
                .map(|n| n.id)
        };
        let nic_node = machine.nics.iter().find_map(|n| n.numa_node);
        let gpu_node = machine.gpus.iter().find_map(|g| g.numa_node);
        // Media takes the CPUs on the NIC's node first; speech and recording those on the
        // GPU's node first, from what media left.
        let mut pool: Vec<usize> = rest.clone();
        let take = |pool: &mut Vec<usize>, n: usize, node: Option<usize>| -> Vec<usize> {
            let mut ordered = pool.clone();
            if let Some(node) = node {
                ordered.sort_by_key(|&cpu| (node_of(cpu) != Some(node), cpu));
            }
            let chosen: BTreeSet<usize> = ordered.into_iter().take(n).collect();
            pool.retain(|cpu| !chosen.contains(cpu));
            chosen.into_iter().collect()
        };
        let media = take(
            &mut pool,
            media_n,
            (c.media_node == "nic").then_some(nic_node).flatten(),
        );
        let accel = (c.accel_node == "gpu").then_some(gpu_node).flatten();
        let mut speech = take(&mut pool, speech_n, accel);
        let mut record = take(&mut pool, record_n, accel);
        if speech.is_empty() {
            speech = control.clone();
            notes.push("speech shares the control cores".into());
        }
        if record.is_empty() {
            record = control.clone();
            notes.push("recording shares the control cores".into());
        }
        Self {
            control,
            media,
            speech,
            record,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(cpus: usize, nodes: usize, nic_node: Option<usize>, gpus: Vec<Gpu>) -> Machine {
        let per = cpus / nodes;
        Machine {
            cpus: (0..cpus).collect(),
            nodes: (0..nodes)
                .map(|id| Node {
                    id,
                    cpus: (id * per..(id + 1) * per).collect(),
                })
                .collect(),
            nics: vec![Nic {
                name: "eth0".into(),
                numa_node: nic_node,
                rx_queues: 8,
                tx_queues: 8,
                irqs: vec![],
            }],
            gpus,
        }
    }

    fn gpu(vendor: Vendor, model: Option<&str>, node: Option<usize>) -> Gpu {
        Gpu {
            vendor,
            model: model.map(str::to_string),
            pci_address: "0000:17:00.0".into(),
            numa_node: node,
        }
    }

    #[test]
    fn every_profile_parses_and_adds_up() {
        let all = profiles();
        assert_eq!(all.len(), 4);
        for p in &all {
            let c = &p.cores;
            assert!(c.media > 0.0 && c.control >= 1, "{}", p.name);
            assert!(
                (c.media + c.speech + c.record - 1.0).abs() < 1e-9,
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn detection_picks_the_profile_of_the_gpu() {
        let pick = |gpus| choose("auto", &machine(16, 1, None, gpus)).unwrap().0.name;
        assert_eq!(pick(vec![]), "cpu-only");
        assert_eq!(
            pick(vec![gpu(Vendor::Nvidia, Some("NVIDIA H200"), None)]),
            "nvidia-h200"
        );
        assert_eq!(
            pick(vec![gpu(Vendor::Nvidia, Some("NVIDIA L40S"), None)]),
            "nvidia-l4"
        );
        assert_eq!(
            pick(vec![gpu(Vendor::Nvidia, Some("Tesla T4"), None)]),
            "nvidia-l4"
        );
        assert_eq!(
            pick(vec![gpu(Vendor::Nvidia, None, None)]),
            "cpu-only",
            "no driver"
        );
        assert_eq!(
            pick(vec![gpu(
                Vendor::Intel,
                Some("Data Center GPU Flex 170"),
                None
            )]),
            "intel-flex"
        );
        assert!(choose("nope", &machine(4, 1, None, vec![])).is_err());
        assert_eq!(
            choose("intel-flex", &machine(4, 1, None, vec![]))
                .unwrap()
                .0
                .name,
            "intel-flex"
        );
    }

    #[test]
    fn the_plan_uses_every_core_once_and_follows_numa() {
        let profile = choose("nvidia-h200", &machine(4, 1, None, vec![]))
            .unwrap()
            .0;
        // Two nodes of 32; the NIC on node 1, the GPU on node 0.
        let m = machine(
            64,
            2,
            Some(1),
            vec![gpu(Vendor::Nvidia, Some("H200"), Some(0))],
        );
        let plan = CorePlan::new(&profile, &m);
        let mut all: Vec<usize> = [&plan.control, &plan.media, &plan.speech, &plan.record]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..64).collect::<Vec<_>>(), "each core has one role");
        assert_eq!(plan.control, [0, 1]);
        assert_eq!(plan.media.len(), 28, "45% of 62");
        assert!(
            plan.media.iter().all(|&c| c >= 32),
            "media on the NIC's node: {:?}",
            plan.media
        );
        assert!(
            plan.speech.iter().all(|&c| c < 32),
            "speech on the GPU's node"
        );
        assert!(plan.notes.is_empty());
    }

    #[test]
    fn small_machines_share_cores() {
        let profile = choose("cpu-only", &machine(2, 1, None, vec![])).unwrap().0;
        let two = CorePlan::new(&profile, &machine(2, 1, None, vec![]));
        assert_eq!(
            (two.control.as_slice(), two.media.as_slice()),
            (&[0][..], &[1][..])
        );
        assert_eq!(two.speech, [0]);
        let one = CorePlan::new(&profile, &machine(1, 1, None, vec![]));
        assert_eq!(one.media, [0]);
        assert_eq!(one.notes.len(), 2);
        let four = CorePlan::new(&profile, &machine(4, 1, None, vec![]));
        assert_eq!(four.control, [0, 1]);
        assert_eq!(four.media, [2]);
        assert_eq!(four.speech, [3], "rounding: 0.25 of 2 → 1 (0.5 rounds up)");
        assert_eq!(four.record, [0, 1], "none left: shares the control cores");
    }
}
