//! ONNX Runtime, loaded once per process from a shared library found at run time.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The loaded runtime.
#[derive(Clone)]
pub struct Runtime {
    env: ort::environment::Environment,
    pub library: PathBuf,
    /// From the library's file name (`libonnxruntime.so.1.31.1`), when it says.
    pub version: Option<String>,
    /// Execution providers this build of the library has (`CPUExecutionProvider`,
    /// `CUDAExecutionProvider`, …), as ONNX Runtime names them.
    pub providers: Vec<String>,
}

impl Runtime {
    /// The ONNX Runtime environment sessions are built in.
    pub fn environment(&self) -> &ort::environment::Environment {
        &self.env
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("version", &self.version)
            .field("providers", &self.providers)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error(
        "libonnxruntime is not installed: not under {}/.venv, not in ORT_DYLIB_PATH, not in \
         /usr/local/lib/parloir (deploy/setup.sh installs it under models/.venv)",
        models.display()
    )]
    NotFound { models: PathBuf },
    #[error("cannot load {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("ONNX Runtime: {0}")]
    Api(String),
}

/// Where libonnxruntime is: `ORT_DYLIB_PATH`, the wheel the setup installs under `.venv` of
/// the models directory `models`, or `/usr/local/lib/parloir`.
pub fn find_library_in(models: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from)
        && p.exists()
    {
        return Some(p);
    }
    let lib = models.join(".venv/lib");
    let from_wheel = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/onnxruntime/capi"))
        .flat_map(|capi| std::fs::read_dir(capi).into_iter().flatten().flatten())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so."))
        });
    if let Some(p) = from_wheel {
        return std::fs::canonicalize(&p).ok().or(Some(p));
    }
    let system = PathBuf::from("/usr/local/lib/parloir/libonnxruntime.so");
    system.exists().then_some(system)
}

/// Loads ONNX Runtime from `path`. The library is loaded once per process; later calls
/// return the first result.
pub fn load(path: &Path) -> Result<Runtime, RuntimeError> {
    static LOADED: OnceLock<Result<Runtime, RuntimeError>> = OnceLock::new();
    LOADED.get_or_init(|| load_once(path)).clone()
}

/// [`load`] with the library looked for as [`find_library_in`] does, for the models directory
/// the server or a command was given: never the working directory's `models/`.
pub fn load_in(models: &Path) -> Result<Runtime, RuntimeError> {
    let path = find_library_in(models).ok_or_else(|| RuntimeError::NotFound {
        models: models.to_path_buf(),
    })?;
    load(&path)
}

fn load_once(path: &Path) -> Result<Runtime, RuntimeError> {
    let load_err = |message: String| RuntimeError::Load {
        path: path.to_path_buf(),
        message,
    };
    let builder = ort::init_from(path).map_err(|e| load_err(e.to_string()))?;
    let env = builder
        .with_name("parloir")
        .build()
        .map_err(|e| RuntimeError::Api(e.to_string()))?;
    let providers = providers()?;
    let version = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libonnxruntime.so."))
        .map(str::to_string);
    Ok(Runtime {
        env,
        library: path.to_path_buf(),
        version,
        providers,
    })
}

fn providers() -> Result<Vec<String>, RuntimeError> {
    let api = ort::api();
    let mut list: *mut *mut c_char = std::ptr::null_mut();
    let mut len: c_int = 0;
    // SAFETY: the API table comes from the loaded library; both out-pointers are live locals.
    let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut len) };
    check(status)?;
    if list.is_null() {
        return Ok(Vec::new());
    }
    let names = (0..usize::try_from(len).unwrap_or(0))
        .map(|i| {
            // SAFETY: ONNX Runtime returned `len` valid NUL-terminated strings at `list`.
            unsafe { CStr::from_ptr(*list.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // SAFETY: releases exactly what GetAvailableProviders returned.
    let status = unsafe { (api.ReleaseAvailableProviders)(list, len) };
    check(status)?;
    Ok(names)
}

/// Turns an `OrtStatus` into a result, releasing it.
fn check(status: ort::sys::OrtStatusPtr) -> Result<(), RuntimeError> {
    let ptr = status.0;
    if ptr.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the API carries a message; it is released after reading.
    let message = unsafe { CStr::from_ptr((api.GetErrorMessage)(ptr)) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above; the status is not used afterwards.
    unsafe { (api.ReleaseStatus)(ptr) };
    Err(RuntimeError::Api(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_runtime_loads_and_has_the_cpu_provider() {
        // The setup installs under the repository's models directory.
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let runtime = load_in(&models)
            .expect("libonnxruntime is installed by deploy/setup.sh (make test runs it first)");
        assert!(
            runtime
                .providers
                .iter()
                .any(|p| p == "CPUExecutionProvider"),
            "{runtime:?}"
        );
        assert!(runtime.version.is_some(), "{runtime:?}");
    }
}
