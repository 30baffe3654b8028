//! Where the agent learns who it is and whose signature to trust: the
//! identity file the deployment put on the seed media (`CIDATA`), a file
//! given on the command line, or the host's KVP items on Hyper-V. An
//! image may carry the provisioning public key itself
//! (`/etc/overvisor-guest/provisioning.pub`): then an identity naming
//! another key is refused, so whoever writes the seed cannot choose the
//! key the agent trusts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use overvisor_provision::wire::IDENTITY_FILE;
use overvisor_provision::{GuestIdentity, ProvisioningPublicKey, kvp};

use crate::channel::KvpPools;

pub const TRUSTED_KEY: &str = "/etc/overvisor-guest/provisioning.pub";

/// The seed's volume label (cloud-init's NoCloud).
const SEED_LABEL: &str = "CIDATA";
const MOUNT_AT: &str = "/run/overvisor-guest/seed";

pub enum Source {
    File(PathBuf),
    Seed,
    Kvp(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the identity: {0}")]
    Read(String),
    #[error("the identity is not valid: {0}")]
    Invalid(String),
    #[error(
        "the identity names the provisioning key {named}, but this image trusts only {trusted}"
    )]
    Untrusted {
        named: ProvisioningPublicKey,
        trusted: ProvisioningPublicKey,
    },
}

/// How long the agent waits for the host's KVP identity item.
const KVP_WAIT: Duration = Duration::from_secs(600);

pub fn load(source: &Source, trusted: &Path) -> Result<GuestIdentity, IdentityError> {
    let bytes = match source {
        Source::File(p) => {
            std::fs::read(p).map_err(|e| IdentityError::Read(format!("{}: {e}", p.display())))?
        }
        Source::Seed => read_seed()?,
        Source::Kvp(dir) => {
            let pools = KvpPools::new(dir);
            let until = Instant::now() + KVP_WAIT;
            loop {
                match pools.host_message(kvp::IDENTITY) {
                    Ok(Some(m)) => break m.as_bytes().to_vec(),
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_secs(1))
                    }
                    Ok(None) => {
                        return Err(IdentityError::Read("no identity item in KVP pool 0".into()));
                    }
                    Err(e) => return Err(IdentityError::Read(e.to_string())),
                }
            }
        }
    };
    let identity =
        GuestIdentity::from_json(&bytes).map_err(|e| IdentityError::Invalid(e.to_string()))?;
    match std::fs::read_to_string(trusted) {
        Ok(text) => {
            let key = ProvisioningPublicKey::parse(&text)
                .map_err(|e| IdentityError::Invalid(format!("{}: {e}", trusted.display())))?;
            if key != identity.provisioning_key {
                return Err(IdentityError::Untrusted {
                    named: identity.provisioning_key,
                    trusted: key,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(IdentityError::Read(format!("{}: {e}", trusted.display()))),
    }
    Ok(identity)
}

/// Mounts the seed read-only for as long as it takes to read one file.
fn read_seed() -> Result<Vec<u8>, IdentityError> {
    let fail = |e: String| IdentityError::Read(format!("seed media {SEED_LABEL}: {e}"));
    std::fs::create_dir_all(MOUNT_AT).map_err(|e| fail(e.to_string()))?;
    let out = Command::new("mount")
        .args([
            "-r",
            "-t",
            "iso9660",
            &format!("LABEL={SEED_LABEL}"),
            MOUNT_AT,
        ])
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    let read = std::fs::read(Path::new(MOUNT_AT).join(IDENTITY_FILE));
    let _ = Command::new("umount").arg(MOUNT_AT).status();
    read.map_err(|e| fail(format!("{IDENTITY_FILE}: {e}")))
}
