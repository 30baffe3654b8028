//! Reading a distribution's published checksum list (`SHA256SUMS`,
//! `SHA512SUMS`): the digest of one file. Both layouts in use are read:
//! coreutils' (`<hex>  <name>`, `<hex> *<name>` for binary mode) and the
//! BSD tag form (`SHA256 (<name>) = <hex>`). Anything else on a line (a
//! signature block, comments) is not a match and is passed over.

use overvisor_model::operation::DigestAlgorithm;

/// Why a list gave no digest for the image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumListError {
    #[error("the checksum list has no line for {0}")]
    NotListed(String),
    #[error("the checksum list's line for {file} is not a {algorithm} digest")]
    Malformed {
        file: String,
        algorithm: &'static str,
    },
    #[error("the checksum list gives {0} two different digests")]
    Ambiguous(String),
}

/// The lower-case hex digest `list` gives `file_name` (matched exactly,
/// or as `./<file_name>`).
pub fn digest_of(
    list: &str,
    file_name: &str,
    algorithm: DigestAlgorithm,
) -> Result<String, ChecksumListError> {
    let mut found: Option<String> = None;
    for line in list.lines() {
        let Some((hex, name)) = parse_line(line.trim_end_matches('\r'), algorithm) else {
            continue;
        };
        if name != file_name && name.strip_prefix("./") != Some(file_name) {
            continue;
        }
        if hex.len() != algorithm.hex_len() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ChecksumListError::Malformed {
                file: file_name.to_owned(),
                algorithm: algorithm.as_str(),
            });
        }
        let hex = hex.to_ascii_lowercase();
        match &found {
            Some(seen) if *seen != hex => {
                return Err(ChecksumListError::Ambiguous(file_name.to_owned()));
            }
            _ => found = Some(hex),
        }
    }
    found.ok_or_else(|| ChecksumListError::NotListed(file_name.to_owned()))
}

/// `(digest, file name)` of one line, in either layout.
fn parse_line(line: &str, algorithm: DigestAlgorithm) -> Option<(&str, &str)> {
    let tag = match algorithm {
        DigestAlgorithm::Sha256 => "SHA256 (",
        DigestAlgorithm::Sha512 => "SHA512 (",
    };
    if let Some(rest) = line.strip_prefix(tag) {
        let (name, hex) = rest.rsplit_once(") = ")?;
        return Some((hex.trim(), name));
    }
    let (hex, rest) = line.split_once(' ')?;
    // Text mode has a second space, binary mode a `*`, before the name.
    let name = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('*'))
        .unwrap_or(rest);
    (!hex.is_empty() && !name.is_empty()).then_some((hex, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6a1f1b0c8d6d7c9f2f56d4e2c3a1b0e9f8d7c6b5a4938271605f4e3d2c1b0a99";

    #[test]
    fn both_layouts_and_both_modes_are_read() {
        let list = format!(
            "{}  other.img\n{A} *ubuntu.img\r\n{}  ./debian.qcow2\nSHA256 (bsd.img) = {}\n",
            "0".repeat(64),
            "B".repeat(64),
            "c".repeat(64)
        );
        let sha = DigestAlgorithm::Sha256;
        assert_eq!(digest_of(&list, "ubuntu.img", sha), Ok(A.to_owned()));
        assert_eq!(digest_of(&list, "debian.qcow2", sha), Ok("b".repeat(64)));
        assert_eq!(digest_of(&list, "bsd.img", sha), Ok("c".repeat(64)));
        assert_eq!(digest_of(&list, "other.img", sha), Ok("0".repeat(64)));
    }

    #[test]
    fn sha512_lists_need_sha512_digests() {
        let list = format!("{}  debian-12-genericcloud-amd64.qcow2\n", "d".repeat(128));
        assert_eq!(
            digest_of(
                &list,
                "debian-12-genericcloud-amd64.qcow2",
                DigestAlgorithm::Sha512
            ),
            Ok("d".repeat(128))
        );
        assert!(matches!(
            digest_of(
                &list,
                "debian-12-genericcloud-amd64.qcow2",
                DigestAlgorithm::Sha256
            ),
            Err(ChecksumListError::Malformed { .. })
        ));
    }

    #[test]
    fn a_missing_a_partial_or_a_contradicting_line_is_refused() {
        let sha = DigestAlgorithm::Sha256;
        let list = format!("{A}  ubuntu.img\n");
        assert_eq!(
            digest_of(&list, "ubuntu.im", sha),
            Err(ChecksumListError::NotListed("ubuntu.im".into()))
        );
        assert!(matches!(
            digest_of("zz  x.img\n", "x.img", sha),
            Err(ChecksumListError::Malformed { .. })
        ));
        let twice = format!("{A}  x.img\n{}  x.img\n", "e".repeat(64));
        assert_eq!(
            digest_of(&twice, "x.img", sha),
            Err(ChecksumListError::Ambiguous("x.img".into()))
        );
        // The same line twice (a list that repeats itself) is fine.
        let same = format!("{A}  x.img\n{A} *x.img\n");
        assert_eq!(digest_of(&same, "x.img", sha), Ok(A.to_owned()));
        // A signature block around the list changes nothing.
        let signed = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{A}  x.img\n-----BEGIN PGP SIGNATURE-----\nabc\n"
        );
        assert_eq!(digest_of(&signed, "x.img", sha), Ok(A.to_owned()));
    }
}
