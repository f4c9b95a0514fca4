//! `parloir doctor [--json]`: what this machine offers the server, what the server would pick,
//! and tuning advice. It reads and probes; it never changes the machine.

use std::fmt::Write as _;

use parloir_net::{Backend, IoMode, Probe};
use serde_json::{Value, json};

use crate::hardware::{self, CorePlan, Machine};

/// Everything the doctor found.
pub struct Findings {
    kernel: String,
    machine: Machine,
    probe: Probe,
    io_mode: IoMode,
    io_choice: Result<(Backend, String), String>,
    pci: Vec<parloir_gpu::PciGpu>,
    cuda: Result<Vec<parloir_gpu::CudaDevice>, String>,
    /// Whether NVRTC compiles the compositing kernels (needed for GPU compositing).
    nvrtc: Result<(), String>,
    /// Whether NVDEC decodes through FFmpeg on the first GPU (checked when there is one).
    nvdec: Option<Result<(), String>>,
    render_nodes: Vec<parloir_gpu::RenderNode>,
    onnxruntime: Result<parloir_speech::Runtime, String>,
    /// Each model of the manifest: its name and where it is, or why it cannot be used.
    models: Result<Vec<ModelCheck>, String>,
    profile: Result<(hardware::Profile, String), String>,
    plan: Option<CorePlan>,
    sysctls: Vec<(&'static str, Option<u64>)>,
    governor: Option<String>,
    advice: Vec<String>,
}

/// A model's name, and its checked path or why it cannot be used.
type ModelCheck = (String, Result<std::path::PathBuf, String>);

/// The manifest's models, each found and checksum-verified, or why not.
fn models(dir: &std::path::Path) -> Result<Vec<ModelCheck>, String> {
    let models = parloir_speech::Models::open(dir).map_err(|e| e.to_string())?;
    Ok(models
        .entries()
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                models.path(&e.name).map_err(|e| e.to_string()),
            )
        })
        .collect())
}

/// Examines the machine for a server configured with `io_mode` and `profile`, with the
/// speech models under `models_dir`.
pub fn examine(io_mode: IoMode, profile: &str, models_dir: &std::path::Path) -> Findings {
    let probe = parloir_net::probe();
    let io_choice = probe.choose(io_mode);
    let pci = parloir_gpu::pci_gpus();
    let cuda = parloir_gpu::cuda_devices();
    let nvdec = cuda
        .as_ref()
        .is_ok_and(|d| !d.is_empty())
        .then(|| parloir_media::gpu::nvdec_check(0));
    let machine = Machine::detect(&pci, cuda.as_deref().unwrap_or(&[]));
    let profile = hardware::choose(profile, &machine);
    let plan = profile
        .as_ref()
        .ok()
        .map(|(p, _)| CorePlan::new(p, &machine));
    let sysctls = [
        "net.core.rmem_max",
        "net.core.wmem_max",
        "net.core.netdev_max_backlog",
    ]
    .map(|name| {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let value = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        (name, value)
    })
    .to_vec();
    let governor = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
        .ok()
        .map(|s| s.trim().to_string());
    let mut f = Findings {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        machine,
        probe,
        io_mode,
        io_choice,
        pci,
        cuda,
        nvrtc: parloir_media::gpu::compile().map(|_| ()),
        nvdec,
        render_nodes: parloir_gpu::render_nodes(),
        onnxruntime: parloir_speech::load_in(models_dir).map_err(|e| e.to_string()),
        models: models(models_dir),
        profile,
        plan,
        sysctls,
        governor,
        advice: Vec::new(),
    };
    f.advice = advise(&f);
    f
}

fn advise(f: &Findings) -> Vec<String> {
    let mut advice = Vec::new();
    for (name, value) in &f.sysctls {
        if name.ends_with("mem_max") && value.is_some_and(|v| v < 4 * 1024 * 1024) {
            advice.push(format!(
                "{name} is {} bytes: the media socket asks for 4 MiB buffers; \
                 `sysctl -w {name}=8388608` avoids drops on keyframe bursts",
                value.unwrap_or(0)
            ));
        }
    }
    if let Some(g) = &f.governor
        && g != "performance"
    {
        advice.push(format!(
            "the CPU frequency governor is {g:?}: `performance` keeps media latency steady"
        ));
    }
    if !f.probe.gso {
        advice.push("this kernel refuses UDP GSO (Linux 4.18+ has it): sends cost one system call per datagram".into());
    }
    if let Err(why) = &f.io_choice {
        advice.push(format!("the configured UDP backend cannot run: {why}"));
    }
    if let Some((_, Err(why))) = f
        .probe
        .backends
        .iter()
        .find(|(b, _)| *b == Backend::IoUring)
    {
        advice.push(format!(
            "io_uring is unavailable ({why}); a container's seccomp policy or \
             kernel.io_uring_disabled may refuse it. The other backends work without it"
        ));
    }
    if let Some(plan) = &f.plan {
        for nic in &f.machine.nics {
            let on_media: Vec<u32> = nic
                .irqs
                .iter()
                .filter(|(_, cpus)| !cpus.is_empty() && cpus.iter().all(|c| plan.media.contains(c)))
                .map(|(irq, _)| *irq)
                .collect();
            if !on_media.is_empty() {
                advice.push(format!(
                    "{}: IRQs {on_media:?} run only on media cores; steer them to the control \
                     cores ({:?}) so packet work and interrupts do not compete",
                    nic.name, plan.control
                ));
            }
        }
        if !plan.notes.is_empty() {
            advice.push(format!(
                "few cores: {}. Fine for development; a server wants 8 or more",
                plan.notes.join("; ")
            ));
        }
    }
    if let (Ok(runtime), Ok((profile, _))) = (&f.onnxruntime, &f.profile) {
        for want in &profile.speech.providers {
            let name = match want.as_str() {
                "cuda" => "CUDAExecutionProvider",
                "tensorrt" => "TensorrtExecutionProvider",
                "openvino" => "OpenVINOExecutionProvider",
                _ => continue,
            };
            if !runtime.providers.iter().any(|p| p == name) {
                advice.push(format!(
                    "the {} profile prefers {name} for speech, but this ONNX Runtime ({}) \
                     lacks it: speech runs on the CPU provider (the onnxruntime-gpu wheel \
                     has the CUDA and TensorRT providers)",
                    profile.name,
                    runtime.library.display()
                ));
            }
        }
    }
    if let Ok(list) = &f.models {
        for (name, r) in list {
            if let Err(e) = r {
                advice.push(format!(
                    "speech model {name} cannot be used ({e}): run deploy/setup.sh"
                ));
            }
        }
    }
    if f.pci
        .iter()
        .any(|g| g.vendor == parloir_gpu::Vendor::Nvidia)
        && f.cuda.is_err()
    {
        advice.push(
            "an NVIDIA GPU is present but CUDA is not usable: install the driver (libcuda1, \
             nvidia-kernel-dkms) to decode and composite on it"
                .into(),
        );
    }
    advice
}

impl Findings {
    pub fn to_json(&self) -> Value {
        let backends: Vec<Value> = self
            .probe
            .backends
            .iter()
            .map(|(b, r)| match r {
                Ok(()) => json!({"backend": b.name(), "works": true}),
                Err(e) => json!({"backend": b.name(), "works": false, "error": e}),
            })
            .collect();
        let (chosen, reason) = match &self.io_choice {
            Ok((b, why)) => (Value::from(b.name()), Value::from(why.as_str())),
            Err(e) => (Value::Null, Value::from(e.as_str())),
        };
        json!({
            "kernel": self.kernel,
            "cpus": self.machine.cpus,
            "numa_nodes": self.machine.nodes.iter().map(|n| json!({"id": n.id, "cpus": n.cpus})).collect::<Vec<_>>(),
            "udp": {
                "mode": self.io_mode.to_string(),
                "backend": chosen,
                "reason": reason,
                "backends": backends,
                "gso": self.probe.gso,
                "gro": self.probe.gro,
                "io_uring_opcodes": self.probe.uring_opcodes.iter().map(|(n, ok)| json!({"opcode": n, "supported": ok})).collect::<Vec<_>>(),
            },
            "nics": self.machine.nics.iter().map(|n| json!({
                "name": n.name, "numa_node": n.numa_node, "rx_queues": n.rx_queues,
                "tx_queues": n.tx_queues,
                "irqs": n.irqs.iter().map(|(irq, cpus)| json!({"irq": irq, "cpus": cpus})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "gpus": self.pci.iter().map(|g| json!({
                "pci_address": g.address, "vendor": g.vendor.name(),
                "device_id": format!("{:04x}", g.device_id), "driver": g.driver,
                "numa_node": g.numa_node, "model": g.model,
            })).collect::<Vec<_>>(),
            "cuda": match &self.cuda {
                Ok(devices) => json!({"available": true, "devices": devices.iter().map(|d| json!({
                    "ordinal": d.ordinal, "name": d.name, "memory_bytes": d.memory_bytes,
                    "compute_capability": format!("{}.{}", d.compute_capability.0, d.compute_capability.1),
                    "pci_address": d.pci_address,
                })).collect::<Vec<_>>()}),
                Err(e) => json!({"available": false, "error": e}),
            },
            "nvrtc": match &self.nvrtc {
                Ok(()) => json!({"available": true}),
                Err(e) => json!({"available": false, "error": e}),
            },
            "nvdec": match &self.nvdec {
                None => json!({"available": false, "error": "no CUDA device"}),
                Some(Ok(())) => json!({"available": true}),
                Some(Err(e)) => json!({"available": false, "error": e}),
            },
            "vaapi": self.render_nodes.iter().map(|n| json!({
                "device": n.path, "driver": n.driver, "vaapi_driver": n.vaapi_driver,
                "pci_address": n.pci_address,
            })).collect::<Vec<_>>(),
            "onnxruntime": match &self.onnxruntime {
                Ok(r) => json!({"available": true, "library": r.library, "version": r.version,
                    "providers": r.providers}),
                Err(e) => json!({"available": false, "error": e}),
            },
            "models": match &self.models {
                Ok(list) => json!(list.iter().map(|(name, r)| match r {
                    Ok(path) => json!({"name": name, "ok": true, "path": path}),
                    Err(e) => json!({"name": name, "ok": false, "error": e}),
                }).collect::<Vec<_>>()),
                Err(e) => json!({"error": e}),
            },
            "profile": match &self.profile {
                Ok((p, why)) => json!({"name": p.name, "reason": why, "description": p.description,
                    "video": {"decode": p.video.decode, "encode": p.video.encode, "composite": p.video.composite},
                    "speech_providers": p.speech.providers}),
                Err(e) => json!({"error": e}),
            },
            "core_plan": self.plan.as_ref().map(|p| json!({
                "control": p.control, "media": p.media, "speech": p.speech, "record": p.record,
                "notes": p.notes,
            })),
            "sysctl": self.sysctls.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "cpu_governor": self.governor,
            "advice": self.advice,
        })
    }

    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "Parloir doctor (nothing here is changed, only read)\n");
        let _ = writeln!(o, "machine");
        let _ = writeln!(o, "  kernel         {}", self.kernel);
        let _ = writeln!(
            o,
            "  CPUs allowed   {} ({:?})",
            self.machine.cpus.len(),
            self.machine.cpus
        );
        for n in &self.machine.nodes {
            let _ = writeln!(o, "  NUMA node {}    CPUs {:?}", n.id, n.cpus);
        }
        let _ = writeln!(o, "\npacket path");
        for (b, r) in &self.probe.backends {
            let _ = match r {
                Ok(()) => writeln!(o, "  {:<9} works", b.name()),
                Err(e) => writeln!(o, "  {:<9} unavailable: {e}", b.name()),
            };
        }
        let _ = writeln!(o, "  GSO            {}", yes(self.probe.gso));
        let _ = writeln!(o, "  GRO            {}", yes(self.probe.gro));
        if !self.probe.uring_opcodes.is_empty() {
            let ops: Vec<String> = self
                .probe
                .uring_opcodes
                .iter()
                .map(|(n, ok)| format!("{n} {}", if *ok { "✓" } else { "✗" }))
                .collect();
            let _ = writeln!(o, "  io_uring ops   {}", ops.join(", "));
        }
        let _ = match &self.io_choice {
            Ok((_, why)) => writeln!(
                o,
                "  io = {:<9} → {why}",
                format!("{:?}", self.io_mode.to_string())
            ),
            Err(e) => writeln!(o, "  io = {}  → ERROR: {e}", self.io_mode),
        };
        let _ = writeln!(o, "\nnetwork interfaces");
        if self.machine.nics.is_empty() {
            let _ = writeln!(o, "  none with a device (virtual or container networking)");
        }
        for n in &self.machine.nics {
            let irqs: Vec<String> = n.irqs.iter().map(|(i, c)| format!("{i}→{c:?}")).collect();
            let _ = writeln!(
                o,
                "  {:<14} NUMA {}  queues rx {} tx {}  IRQs {}",
                n.name,
                opt(n.numa_node),
                n.rx_queues,
                n.tx_queues,
                if irqs.is_empty() {
                    "not visible".into()
                } else {
                    irqs.join(" ")
                }
            );
        }
        let _ = writeln!(o, "\naccelerators");
        if self.pci.is_empty() {
            let _ = writeln!(o, "  no GPU on the PCI bus");
        }
        for g in &self.pci {
            let _ = writeln!(
                o,
                "  {} {} {:04x} {}  driver {}  NUMA {}",
                g.address,
                g.vendor.name(),
                g.device_id,
                g.model.as_deref().unwrap_or(""),
                g.driver.as_deref().unwrap_or("none"),
                opt(g.numa_node)
            );
        }
        let _ = match &self.cuda {
            Ok(d) if d.is_empty() => writeln!(o, "  CUDA           driver loaded, no device"),
            Ok(d) => {
                for d in d {
                    let _ = writeln!(
                        o,
                        "  CUDA {}         {} ({} GiB, sm_{}{}, {})",
                        d.ordinal,
                        d.name,
                        d.memory_bytes >> 30,
                        d.compute_capability.0,
                        d.compute_capability.1,
                        d.pci_address
                    );
                }
                Ok(())
            }
            Err(e) => writeln!(o, "  CUDA           unavailable: {e}"),
        };
        let _ = match &self.nvrtc {
            Ok(()) => writeln!(o, "  NVRTC          compiles the compositing kernels"),
            Err(e) => writeln!(o, "  NVRTC          unavailable: {e}"),
        };
        let _ = match &self.nvdec {
            None => writeln!(o, "  NVDEC          no CUDA device"),
            Some(Ok(())) => writeln!(o, "  NVDEC          decodes H.264 into device memory"),
            Some(Err(e)) => writeln!(o, "  NVDEC          unavailable: {e}"),
        };
        if self.render_nodes.is_empty() {
            let _ = writeln!(o, "  VA-API         no DRM render node");
        }
        for n in &self.render_nodes {
            let _ = writeln!(
                o,
                "  VA-API         {} driver {} → {}",
                n.path.display(),
                n.driver.as_deref().unwrap_or("none"),
                n.vaapi_driver.unwrap_or("no VA-API driver")
            );
        }
        let _ = match &self.onnxruntime {
            Ok(r) => writeln!(
                o,
                "  ONNX Runtime   {} ({})\n                 providers: {}",
                r.version.as_deref().unwrap_or("version unknown"),
                r.library.display(),
                r.providers.join(", ")
            ),
            Err(e) => writeln!(o, "  ONNX Runtime   unavailable: {e}"),
        };
        match &self.models {
            Ok(list) => {
                for (name, r) in list {
                    let _ = match r {
                        Ok(path) => writeln!(
                            o,
                            "  model          {name}: checksum ok ({})",
                            path.display()
                        ),
                        Err(e) => writeln!(o, "  model          {name}: UNUSABLE: {e}"),
                    };
                }
            }
            Err(e) => {
                let _ = writeln!(o, "  models         {e}");
            }
        }
        let _ = writeln!(o, "\nprofile");
        match &self.profile {
            Ok((p, why)) => {
                let _ = writeln!(o, "  {} ({why})\n  {}", p.name, p.description);
            }
            Err(e) => {
                let _ = writeln!(o, "  ERROR: {e}");
            }
        }
        if let Some(p) = &self.plan {
            let _ = writeln!(o, "  control cores  {:?}", p.control);
            let _ = writeln!(
                o,
                "  media cores    {:?} (one media worker per core, pinned)",
                p.media
            );
            let _ = writeln!(o, "  speech cores   {:?}", p.speech);
            let _ = writeln!(o, "  record cores   {:?}", p.record);
        }
        let _ = writeln!(o, "\ntuning");
        for (k, v) in &self.sysctls {
            let _ = writeln!(
                o,
                "  {k:<28} {}",
                v.map_or("unknown".into(), |v| v.to_string())
            );
        }
        let _ = writeln!(
            o,
            "  CPU governor                 {}",
            self.governor.as_deref().unwrap_or("not visible")
        );
        let _ = writeln!(o, "\nadvice (not applied)");
        if self.advice.is_empty() {
            let _ = writeln!(o, "  none");
        }
        for a in &self.advice {
            let _ = writeln!(o, "  - {a}");
        }
        o
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn opt(v: Option<usize>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}
