//! Accelerators: what the machine has and what the drivers let us use. The GPU compositing
//! kernels (issue 8) will live beside this.
//!
//! Discovery never panics and never needs a driver: PCI devices and DRM render nodes are read
//! from /sys, CUDA devices through cudarc only after checking that libcuda can be loaded
//! (cudarc panics otherwise).

#![deny(unsafe_code)]

use std::path::{Path, PathBuf};

mod cuda;

pub use cuda::{CudaDevice, cuda_devices};

/// Accelerator vendors a profile can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Nvidia,
    Intel,
    Amd,
}

impl Vendor {
    fn from_pci(id: u32) -> Option<Self> {
        match id {
            0x10de => Some(Vendor::Nvidia),
            0x8086 => Some(Vendor::Intel),
            0x1002 => Some(Vendor::Amd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Vendor::Nvidia => "nvidia",
            Vendor::Intel => "intel",
            Vendor::Amd => "amd",
        }
    }
}

/// A display or 3D controller on the PCI bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciGpu {
    /// The PCI address, e.g. `0000:17:00.0`.
    pub address: String,
    pub vendor: Vendor,
    pub device_id: u32,
    /// The kernel driver bound to it, if any (`nvidia`, `i915`, `xe`, `nouveau`…).
    pub driver: Option<String>,
    pub numa_node: Option<usize>,
    /// The model the device id names, where we know it (Intel Flex/Arc), else from the
    /// driver (NVIDIA's /proc entry).
    pub model: Option<String>,
}

/// A DRM render node (`/dev/dri/renderD*`), what VA-API opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderNode {
    pub path: PathBuf,
    pub pci_address: Option<String>,
    pub driver: Option<String>,
    /// The VA-API driver that serves it (`iHD` for Intel Gen9+, `radeonsi` for AMD).
    pub vaapi_driver: Option<&'static str>,
}

/// Every GPU on the PCI bus.
pub fn pci_gpus() -> Vec<PciGpu> {
    pci_gpus_in(Path::new("/sys/bus/pci/devices"))
}

fn pci_gpus_in(root: &Path) -> Vec<PciGpu> {
    let read_hex = |p: PathBuf| {
        let text = std::fs::read_to_string(p).ok()?;
        u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
    };
    let mut gpus: Vec<PciGpu> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            // Class 0x03xxxx: display controllers (VGA, 3D, other).
            let class = read_hex(path.join("class"))?;
            if class >> 16 != 0x03 {
                return None;
            }
            let vendor = Vendor::from_pci(read_hex(path.join("vendor"))?)?;
            let device_id = read_hex(path.join("device"))?;
            let address = e.file_name().into_string().ok()?;
            let model = match vendor {
                Vendor::Intel => intel_model(device_id).map(str::to_string),
                Vendor::Nvidia => nvidia_proc_model(&address),
                Vendor::Amd => None,
            };
            Some(PciGpu {
                driver: driver_of(&path),
                numa_node: std::fs::read_to_string(path.join("numa_node"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .and_then(|n| usize::try_from(n).ok()),
                address,
                vendor,
                device_id,
                model,
            })
        })
        .collect();
    gpus.sort_by(|a, b| a.address.cmp(&b.address));
    gpus
}

/// The DRM render nodes and their drivers.
pub fn render_nodes() -> Vec<RenderNode> {
    let mut nodes: Vec<RenderNode> = std::fs::read_dir("/sys/class/drm")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        .map(|e| {
            let device = e.path().join("device");
            let driver = driver_of(&device);
            let vaapi_driver = match driver.as_deref() {
                Some("i915" | "xe") => Some("iHD"),
                Some("amdgpu") => Some("radeonsi"),
                _ => None,
            };
            RenderNode {
                path: Path::new("/dev/dri").join(e.file_name()),
                pci_address: std::fs::canonicalize(&device)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
                driver,
                vaapi_driver,
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.path.cmp(&b.path));
    nodes
}

fn driver_of(device: &Path) -> Option<String> {
    std::fs::read_link(device.join("driver"))
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// Intel's data-centre and Arc GPUs (DG2 family) by PCI device id.
fn intel_model(device: u32) -> Option<&'static str> {
    match device {
        0x56c0 => Some("Data Center GPU Flex 170"),
        0x56c1 => Some("Data Center GPU Flex 140"),
        0x5690..=0x56bf => Some("Arc"),
        0xe20b | 0xe20c => Some("Arc B-series"),
        _ => None,
    }
}

/// The model NVIDIA's driver reports in /proc, when it is loaded.
fn nvidia_proc_model(address: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(format!("/proc/driver/nvidia/gpus/{address}/information")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Model:"))
        .map(|m| m.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_pci_tree_is_read() {
        let root = std::env::temp_dir().join(format!("parloir-pci-{}", std::process::id()));
        let dev = |addr: &str, class: &str, vendor: &str, device: &str, numa: &str| {
            let d = root.join(addr);
            std::fs::create_dir_all(&d).unwrap();
            for (f, v) in [
                ("class", class),
                ("vendor", vendor),
                ("device", device),
                ("numa_node", numa),
            ] {
                std::fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
        };
        dev("0000:17:00.0", "0x030200", "0x10de", "0x2335", "1");
        dev("0000:4d:00.0", "0x038000", "0x8086", "0x56c0", "-1");
        dev("0000:00:1f.0", "0x060100", "0x8086", "0x1234", "0"); // an ISA bridge
        dev("0000:02:00.0", "0x030000", "0x1234", "0x1111", "0"); // an emulated VGA
        let gpus = pci_gpus_in(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].vendor, Vendor::Nvidia);
        assert_eq!(gpus[0].numa_node, Some(1));
        assert_eq!(gpus[1].model.as_deref(), Some("Data Center GPU Flex 170"));
        assert_eq!(gpus[1].numa_node, None);
    }

    #[test]
    fn discovery_runs_on_any_machine() {
        // No GPU here: empty lists, never a panic.
        let _ = pci_gpus();
        let _ = render_nodes();
        match cuda_devices() {
            Ok(devices) => eprintln!("CUDA devices: {devices:?}"),
            Err(e) => eprintln!("no CUDA: {e}"),
        }
    }
}
