//! CUDA devices through cudarc's driver API, loaded at run time.

#![allow(unsafe_code)]

use cudarc::driver::{result, sys};

/// One CUDA device as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaDevice {
    pub ordinal: i32,
    pub name: String,
    pub memory_bytes: usize,
    pub compute_capability: (i32, i32),
    /// `domain:bus:device.0`, to match PCI (and its NUMA node).
    pub pci_address: String,
}

/// The CUDA devices, or why there are none (no libcuda, no device, a driver error).
pub fn cuda_devices() -> Result<Vec<CudaDevice>, String> {
    // SAFETY: only tries to load libcuda (dlopen) and reports whether it could.
    if !unsafe { sys::is_culib_present() } {
        return Err("libcuda is not installed (no NVIDIA driver)".into());
    }
    result::init().map_err(|e| format!("cuInit: {e}"))?;
    let count = result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {e}"))?;
    (0..count)
        .map(|ordinal| {
            let dev = result::device::get(ordinal).map_err(|e| e.to_string())?;
            let attribute = |a| {
                // SAFETY: `dev` came from cuDeviceGet.
                unsafe { result::device::get_attribute(dev, a) }.map_err(|e| e.to_string())
            };
            use sys::CUdevice_attribute as A;
            Ok(CudaDevice {
                ordinal,
                name: result::device::get_name(dev).map_err(|e| e.to_string())?,
                // SAFETY: `dev` came from cuDeviceGet.
                memory_bytes: unsafe { result::device::total_mem(dev) }
                    .map_err(|e| e.to_string())?,
                compute_capability: (
                    attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                    attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                ),
                pci_address: format!(
                    "{:04x}:{:02x}:{:02x}.0",
                    attribute(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
                    attribute(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
                    attribute(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?
                ),
            })
        })
        .collect()
}
