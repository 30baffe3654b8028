//! The profiles a control plane offers: the built-in ones (TOML files
//! embedded in the binary, so they are checked by the same code as an
//! operator's) and the `*.toml` files of the profiles directory.
//!
//! Loading is all-or-nothing: one bad file is an error naming the file, the
//! field and the reason, so a typo stops start-up instead of silently hiding
//! a profile.

use std::collections::BTreeMap;
use std::path::Path;

use overvisor_model::InvalidInput;

use crate::profile::{Profile, ProfileFile, ProfileName};

/// The built-in profiles: name and TOML text.
const BUILTIN: [(&str, &str); 3] = [
    (
        "ubuntu-24.04",
        include_str!("../profiles/ubuntu-24.04.toml"),
    ),
    ("debian-12", include_str!("../profiles/debian-12.toml")),
    (
        "windows-server-2022",
        include_str!("../profiles/windows-server-2022.toml"),
    ),
];

/// Why a profile could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile {file}: {field}: {reason}")]
pub struct ProfileError {
    /// The file (or `built-in <name>`).
    pub file: String,
    pub field: String,
    pub reason: String,
}

impl ProfileError {
    fn new(file: &str, invalid: InvalidInput) -> Self {
        Self {
            file: file.to_owned(),
            field: invalid.field,
            reason: invalid.message,
        }
    }
}

/// The checked profiles, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    profiles: BTreeMap<ProfileName, Profile>,
}

impl Catalog {
    /// The built-in profiles alone.
    pub fn builtin() -> Result<Self, ProfileError> {
        let mut profiles = BTreeMap::new();
        for (name, text) in BUILTIN {
            let file = format!("built-in {name}");
            let profile = parse(&file, name, text, true)?;
            profiles.insert(profile.name.clone(), profile);
        }
        Ok(Self { profiles })
    }

    /// The built-in profiles and every `*.toml` file in `dir`. A missing
    /// directory is an empty one (the default directory need not exist);
    /// other files are ignored, so a README can sit beside the profiles.
    pub fn load(dir: &Path) -> Result<Self, ProfileError> {
        let mut catalog = Self::builtin()?;
        let dir_error = |e: std::io::Error| ProfileError {
            file: dir.display().to_string(),
            field: "profiles_dir".into(),
            reason: e.to_string(),
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(catalog),
            Err(e) => return Err(dir_error(e)),
        };
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry.map_err(dir_error)?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
        // Sorted, so the first error reported does not depend on the
        // directory's order.
        paths.sort();
        for path in paths {
            let file = path.display().to_string();
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .ok_or_else(|| ProfileError {
                    file: file.clone(),
                    field: "(file name)".into(),
                    reason: "is not UTF-8".into(),
                })?;
            let text = std::fs::read_to_string(&path).map_err(|e| ProfileError {
                file: file.clone(),
                field: "(file)".into(),
                reason: e.to_string(),
            })?;
            let profile = parse(&file, stem, &text, false)?;
            if catalog.profiles.contains_key(&profile.name) {
                return Err(ProfileError {
                    file,
                    field: "(file name)".into(),
                    reason: format!(
                        "{} is the name of a built-in profile; choose another",
                        profile.name
                    ),
                });
            }
            catalog.profiles.insert(profile.name.clone(), profile);
        }
        Ok(catalog)
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// Every profile, sorted by name.
    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }
}

/// Parses and checks one profile's TOML text.
fn parse(file: &str, name: &str, text: &str, builtin: bool) -> Result<Profile, ProfileError> {
    let name = ProfileName::parse("(file name)", name).map_err(|e| ProfileError::new(file, e))?;
    let raw: ProfileFile = toml::from_str(text).map_err(|e| ProfileError {
        file: file.to_owned(),
        field: toml_field(text, e.span()),
        reason: toml_reason(text, &e),
    })?;
    raw.check(name, builtin)
        .map_err(|e| ProfileError::new(file, e))
}

/// The dotted name of the key on the line a TOML error points at, with the
/// `[table]` it is in: the TOML crate reports a position, not a field.
fn toml_field(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(at) = span.map(|s| s.start.min(text.len())) else {
        return "(file)".into();
    };
    let before = text.get(..at).unwrap_or_default();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(['[', ']']).trim());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k.to_owned(),
        (Some(t), None) => t.to_owned(),
        (None, None) => "(file)".into(),
    }
}

/// The TOML crate's message with the line number, without its multi-line
/// source excerpt (the error is one log line).
fn toml_reason(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            format!("{message} (line {line})")
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
