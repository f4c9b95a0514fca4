//! Execution providers: where a model runs. The hardware profile lists its preferences
//! (`[speech] providers`, e.g. TensorRT then CUDA then CPU on NVIDIA, OpenVINO then CPU on
//! Intel); a session gets the first of them that this ONNX Runtime build has, the CPU always
//! standing behind. The CPU wheel the setup installs has only the CPU (and Azure) provider;
//! `onnxruntime-gpu` or an OpenVINO build bring the others, and `parloir doctor` says which the
//! installed library has.

use ort::ep::ExecutionProviderDispatch;
use ort::session::Session;
use ort::session::builder::SessionBuilder;

use crate::{Runtime, SpeechError};

/// One execution provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    TensorRt,
    Cuda,
    OpenVino,
    Cpu,
}

impl Provider {
    /// From the hardware profiles' names: `tensorrt`, `cuda`, `openvino`, `cpu`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "tensorrt" => Provider::TensorRt,
            "cuda" => Provider::Cuda,
            "openvino" => Provider::OpenVino,
            "cpu" => Provider::Cpu,
            _ => return None,
        })
    }

    /// ONNX Runtime's name for it.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::TensorRt => "TensorrtExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::OpenVino => "OpenVINOExecutionProvider",
            Provider::Cpu => "CPUExecutionProvider",
        }
    }

    fn dispatch(self) -> Option<ExecutionProviderDispatch> {
        Some(match self {
            Provider::TensorRt => ort::ep::TensorRT::default().build().error_on_failure(),
            Provider::Cuda => ort::ep::CUDA::default().build().error_on_failure(),
            Provider::OpenVino => ort::ep::OpenVINO::default().build().error_on_failure(),
            Provider::Cpu => return None,
        })
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::OpenVino => "openvino",
            Provider::Cpu => "cpu",
        })
    }
}

/// What `wanted` comes to with `runtime`: the providers it has, in the order wanted, the CPU
/// last; and, for each one left out, why.
pub fn choose(runtime: &Runtime, wanted: &[Provider]) -> (Vec<Provider>, Vec<String>) {
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for &p in wanted {
        if p == Provider::Cpu || chosen.contains(&p) {
            continue;
        }
        if runtime.providers.iter().any(|n| n == p.ort_name()) {
            chosen.push(p);
        } else {
            skipped.push(format!(
                "{p}: this ONNX Runtime ({}) has no {}",
                runtime.library.display(),
                p.ort_name()
            ));
        }
    }
    chosen.push(Provider::Cpu);
    (chosen, skipped)
}

/// A session of the model at `path` on `providers` (from [`choose`]) with `threads` intra-op
/// threads; errors name the file.
pub(crate) fn session(
    runtime: &Runtime,
    threads: usize,
    providers: &[Provider],
    path: &std::path::Path,
) -> Result<Session, SpeechError> {
    builder(runtime, threads, providers)?
        .commit_from_file(path)
        .map_err(|e| crate::whisper::model_err(path, e))
}

/// A session builder on `runtime` with `threads` intra-op threads and `providers` (from
/// [`choose`]) registered in order. A provider that fails to register (no device, a missing
/// CUDA library) is left out with a warning: the CPU stands behind.
pub(crate) fn builder(
    runtime: &Runtime,
    threads: usize,
    providers: &[Provider],
) -> Result<SessionBuilder, SpeechError> {
    let mut builder = Session::builder(runtime.environment())?
        .with_intra_threads(threads.max(1))
        .map_err(|e| SpeechError::Inference(e.to_string()))?;
    for p in providers {
        let Some(dispatch) = p.dispatch() else {
            continue;
        };
        builder = match builder.with_execution_providers([dispatch]) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("speech: execution provider {p} left out: {e}");
                e.recover()
            }
        };
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for p in [
            Provider::TensorRt,
            Provider::Cuda,
            Provider::OpenVino,
            Provider::Cpu,
        ] {
            assert_eq!(Provider::parse(&p.to_string()), Some(p));
        }
        assert_eq!(Provider::parse("CUDA"), Some(Provider::Cuda));
        assert_eq!(Provider::parse("rocm"), None);
    }
}
