//! models/manifest.toml: which model comes from which package, and its checksum.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::SpeechError;

/// One model of the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    #[serde(rename = "use")]
    pub purpose: String,
    pub package: String,
    pub version: String,
    /// The file inside the installed package (relative to site-packages), or, for a model the
    /// setup builds from its package (`built_by`), relative to the models directory.
    pub file: String,
    /// The converter in the models directory that deploy/setup.sh runs to build `file`.
    #[serde(default)]
    pub built_by: Option<String>,
    pub sha256: String,
    pub licence: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    model: Vec<ModelEntry>,
}

/// The models directory: `manifest.toml` and the `.venv` the setup installs the packages into.
#[derive(Debug, Clone)]
pub struct Models {
    dir: PathBuf,
    entries: Vec<ModelEntry>,
}

impl Models {
    /// Reads `dir/manifest.toml`.
    pub fn open(dir: &Path) -> Result<Self, SpeechError> {
        let path = dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| SpeechError::Model {
            name: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| SpeechError::Model {
            name: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            entries: manifest.model,
        })
    }

    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// The file of model `name`, found in the installed package and checked against the
    /// manifest's SHA-256.
    pub fn path(&self, name: &str) -> Result<PathBuf, SpeechError> {
        let err = |reason: String| SpeechError::Model {
            name: name.to_string(),
            reason,
        };
        let entry = self
            .entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| err("not in models/manifest.toml".into()))?;
        let path = if let Some(converter) = &entry.built_by {
            let path = self.dir.join(&entry.file);
            if !path.exists() {
                return Err(err(format!(
                    "{} is missing: deploy/setup.sh builds it from {} {} with {converter}",
                    path.display(),
                    entry.package,
                    entry.version
                )));
            }
            path
        } else {
            let lib = self.dir.join(".venv/lib");
            std::fs::read_dir(&lib)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("site-packages").join(&entry.file))
                .find(|p| p.exists())
                .ok_or_else(|| {
                    err(format!(
                        "{} {} is not installed under {} (run deploy/setup.sh)",
                        entry.package,
                        entry.version,
                        lib.display()
                    ))
                })?
        };
        // Streamed: the Whisper graphs are hundreds of megabytes.
        let mut hasher = Sha256::new();
        std::fs::File::open(&path)
            .and_then(|mut f| std::io::copy(&mut f, &mut hasher))
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if digest != entry.sha256 {
            return Err(err(format!(
                "{} has SHA-256 {digest}, the manifest says {}",
                path.display(),
                entry.sha256
            )));
        }
        Ok(path)
    }
}
