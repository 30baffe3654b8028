//! The per-user list of remotes (`remotes.toml`): each a URL, an API key
//! and optionally a CA file; one is current. The file holds keys, so it is
//! created 0600 (in a 0700 directory) and replaced atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remotes {
    pub current: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// No `Debug`: it holds the key.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    pub url: String,
    pub api_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/overvisor/remotes.toml`, else `~/.config/overvisor/remotes.toml`.
pub fn path() -> Option<PathBuf> {
    let non_empty = |k| std::env::var_os(k).filter(|v| !v.is_empty());
    let base = match non_empty("XDG_CONFIG_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(non_empty("HOME")?).join(".config"),
    };
    Some(base.join("overvisor").join("remotes.toml"))
}

/// The path, or a usage error saying how to get one.
pub fn require_path() -> Result<PathBuf> {
    path().ok_or_else(|| {
        Error::Usage("neither XDG_CONFIG_HOME nor HOME is set: no place for remotes.toml".into())
    })
}

impl Remotes {
    /// The file's remotes; none when it does not exist yet.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => {
                warn_if_readable(path);
                t
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        // toml's error quotes the offending line, which may be a key.
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" at byte {}", s.start))
                .unwrap_or_default();
            Error::Failed(format!(
                "{} is not a valid remotes file{at}",
                path.display()
            ))
        })
    }

    /// Writes a new file beside the old one (created 0600, never readable
    /// by others even for a moment) and renames it over.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir.display(), e))?;
        let text = toml::to_string(self).map_err(|e| Error::Failed(e.to_string()))?;
        let tmp = dir.join(format!(".remotes.toml.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(tmp.display(), e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(tmp.display(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display(), e))
    }
}

/// Keys in a file others may read are not secret any more: say so (the
/// next save writes the file 0600 again).
fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} may be read by others (mode {:o}): its API keys may have leaked; chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

/// What `remote list` may show of a key: its public prefix
/// (`ovk_<12 hex>`), never the secret part.
pub fn key_prefix(key: &str) -> String {
    let mut parts = key.splitn(3, '_');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("ovk"), Some(prefix), Some(_))
            if prefix.len() == 12 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            format!("ovk_{prefix}_…")
        }
        _ => "(not an ovk_ key)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefix_shows_only_the_public_part() {
        let key = "ovk_0123456789ab_SECRETSECRETSECRET";
        assert_eq!(key_prefix(key), "ovk_0123456789ab_…");
        assert!(!key_prefix("SECRETSECRET").contains("SECRET"));
        assert!(!key_prefix("ovk_SECRET_x").contains("SECRET"));
    }

    #[test]
    fn saved_file_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("remotes.toml");
        let mut remotes = Remotes::default();
        remotes.remotes.insert(
            "lab".into(),
            Remote {
                url: "http://127.0.0.1:8001".into(),
                api_key: "ovk_0123456789ab_x".into(),
                ca_file: None,
            },
        );
        remotes.current = Some("lab".into());
        remotes.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Remotes::load(&path).expect("load");
        assert_eq!(back.current.as_deref(), Some("lab"));
        assert_eq!(back.remotes["lab"].api_key, "ovk_0123456789ab_x");
    }

    #[test]
    fn a_broken_file_is_reported_without_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("remotes.toml");
        std::fs::write(
            &path,
            "current = \"a\"\napi_key = ovk_0123456789ab_SECRET\n",
        )
        .expect("write");
        let err = Remotes::load(&path).err().expect("refused").to_string();
        assert!(!err.contains("SECRET"), "{err}");
    }
}
