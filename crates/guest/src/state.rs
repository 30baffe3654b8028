//! What the agent remembers across boots, in one small file: whether a
//! payload was applied (then it never takes another) and the deployment
//! nonces it has opened (a replayed payload is refused). No secret.

use std::io;
use std::path::{Path, PathBuf};

use overvisor_provision::DeploymentNonce;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub applied: bool,
    #[serde(default)]
    pub used_nonces: Vec<DeploymentNonce>,
}

pub struct StateFile {
    path: PathBuf,
    pub state: State,
}

impl StateFile {
    /// `dir/state.json`, empty if there is none yet.
    pub fn load(dir: &Path) -> io::Result<Self> {
        let path = dir.join("state.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e),
        };
        Ok(Self { path, state })
    }

    /// Written whole, then renamed into place.
    pub fn save(&self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(&self.state).map_err(io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &self.path)
    }
}
