//! What a deployment does on a libvirt host: fetch an image into the
//! host's cache, make the VM's overlay disk, upload its seed, define and
//! start it, and take each of those back.
//!
//! The host-side layout (documented in docs/deployments.md) lives under
//! [`DEPLOY_DIR`]: `images/<digest>.img` is the cache (named by the SHA-256
//! or SHA-512 it was verified with), shared by every VM
//! of the host and never removed by a deployment; `vms/<uuid>/` holds one
//! VM's overlay and seed, and goes with the VM's undo. The automation user
//! must be able to write there.
//!
//! Each step is a fixed shell script whose inputs arrive as positional
//! parameters through [`CommandLine`] (quoted once, never pasted into the
//! script), so nothing a request carries can become shell syntax.

use std::time::Duration;

use overvisor_model::operation::ImageDigest;
use overvisor_model::vm::VmName;

use super::LibvirtDriver;
use crate::driver::{HvError, HvResult};
use crate::quote::CommandLine;

/// Where deployments keep their files on a host.
pub const DEPLOY_DIR: &str = "/var/lib/libvirt/overvisor";

/// How long one image download may go without a progress line (the script
/// prints one every second) before the step gives up.
const SILENCE: Duration = Duration::from_secs(60);

/// Downloads `$3` (URL) into `$1/<$2>.img` unless there, verifying the
/// digest `$2` with `$4sum` (`sha256`/`sha512`); `$5`, if not empty, is
/// the CA file curl trusts instead of the host's store. A lock per digest
/// makes a second deployment of the same image wait for the first one's
/// download and then find it cached; the partial file stays, so a retry
/// resumes it (`curl -C -`). Prints `total N`, `have N` (every second),
/// then `cached`/`fetched`, or `failed <why>`; the exit status is lost on
/// a PTY, so these lines say it.
const FETCH_SCRIPT: &str = r#"set -u
dir=$1/images; sum=$2; url=$3; algo=$4; ca=$5
set --
[ -n "$ca" ] && set -- --cacert "$ca"
mkdir -p "$dir" || { echo "failed cannot create $dir"; exit 1; }
cd "$dir" || exit 1
exec 9>>"$sum.lock"
flock 9
if [ -f "$sum.img" ]; then echo cached; exit 0; fi
total=$(curl -fsIL --max-time 30 "$@" "$url" 2>/dev/null | tr -d '\r' | awk 'tolower($1)=="content-length:"{n=$2} END{print n+0}')
echo "total $total"
curl -fsSL --connect-timeout 20 --speed-time 60 --speed-limit 1 "$@" -C - -o "$sum.part" "$url" 2>"$sum.err" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  echo "have $(stat -c %s "$sum.part" 2>/dev/null || echo 0)"
  sleep 1
done
if ! wait "$pid"; then echo "failed download: $(tr '\n' ' ' < "$sum.err" | cut -c1-300)"; exit 1; fi
echo "have $(stat -c %s "$sum.part")"
got=$("${algo}sum" "$sum.part" | cut -d' ' -f1)
if [ "$got" != "$sum" ]; then
  rm -f "$sum.part"
  echo "failed checksum mismatch: the image's $algo is $got, the profile says $sum"
  exit 1
fi
chmod 0644 "$sum.part" && mv "$sum.part" "$sum.img" && rm -f "$sum.err"
echo fetched
"#;

/// `$1` URL, `$2` CA file or empty: prints the document (curl stops past
/// [`LIST_MAX`] bytes; a checksum list is a few KiB).
const FETCH_TEXT_SCRIPT: &str = r#"set -eu
url=$1; ca=$2
set --
[ -n "$ca" ] && set -- --cacert "$ca"
curl -fsSL --max-time 60 --max-filesize 1048576 "$@" "$url"
"#;

/// The largest checksum list fetched (as in the script above).
const LIST_MAX: usize = 1 << 20;

/// `$1` VM dir, `$2` cached image (empty: a blank disk), `$3` its format,
/// `$4` size in GiB: makes the disk afresh (nothing uses it before the
/// domain is defined).
const OVERLAY_SCRIPT: &str = r#"set -eu
mkdir -p "$1"
rm -f "$1/disk.qcow2"
if [ -n "$2" ]; then
  qemu-img create -q -f qcow2 -b "$2" -F "$3" "$1/disk.qcow2" "$4G"
else
  qemu-img create -q -f qcow2 "$1/disk.qcow2" "$4G"
fi
chmod 0660 "$1/disk.qcow2"
"#;

/// `$1` target path, `$2` its mode: writes stdin there atomically.
const UPLOAD_SCRIPT: &str = r#"set -eu
mkdir -p "$(dirname "$1")"
cat > "$1.tmp"
chmod "$2" "$1.tmp"
mv "$1.tmp" "$1"
"#;

/// Prints those of its arguments that are regular files it can read.
const READABLE_SCRIPT: &str =
    r#"for f; do [ -f "$f" ] && [ -r "$f" ] && printf '%s\n' "$f"; done; true"#;

/// `$1` VM dir: removes it whatever it holds.
const REMOVE_SCRIPT: &str = r#"rm -rf -- "$1""#;

/// Lists Linux bridges, one per line.
const BRIDGES_SCRIPT: &str =
    r#"for d in /sys/class/net/*/bridge; do [ -d "$d" ] && basename "$(dirname "$d")"; done; true"#;

/// How far an image fetch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchProgress {
    /// Size announced by the server (0: unknown).
    Total(u64),
    /// Bytes on the host so far.
    Have(u64),
}

/// What an image fetch ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Already in the cache: nothing was downloaded.
    Cached,
    Downloaded,
}

/// The files of one deployed VM on its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFiles {
    pub dir: String,
    pub disk: String,
    pub seed: String,
    /// The host end of the guest agent's virtio-serial port (QEMU listens).
    pub guest_socket: String,
    /// The VM's own UEFI variable store (libvirt copies it from the
    /// firmware's template on the first start).
    pub nvram: String,
}

impl VmFiles {
    /// Under [`DEPLOY_DIR`], by the VM's UUID (names may be reused).
    pub fn of(uuid: &uuid::Uuid) -> Self {
        let dir = format!("{DEPLOY_DIR}/vms/{uuid}");
        Self {
            disk: format!("{dir}/disk.qcow2"),
            seed: format!("{dir}/seed.iso"),
            guest_socket: format!("{dir}/guest.sock"),
            nvram: format!("{dir}/VARS.fd"),
            dir,
        }
    }
}

/// Where the image with this SHA-256 is cached on a host.
pub fn cached_image(digest_hex: &str) -> String {
    format!("{DEPLOY_DIR}/images/{digest_hex}.img")
}

fn sh(script: &str, args: &[&str]) -> CommandLine {
    CommandLine::new("sh")
        .args(["-c", script, "sh"])
        .args(args.iter().copied())
}

impl LibvirtDriver {
    /// Runs a fixed script; its failure is a host error with its stderr.
    async fn script(&self, script: &str, args: &[&str], stdin: Option<&[u8]>) -> HvResult<()> {
        let cmd = sh(script, args);
        let out = match stdin {
            Some(data) => self.ssh().exec_with_stdin(&cmd, data).await?,
            None => self.ssh().exec(&cmd).await?,
        };
        if out.success() {
            return Ok(());
        }
        let err = out.stderr_text();
        Err(HvError::Host(if err.trim().is_empty() {
            format!("exited with {:?}", out.exit_status)
        } else {
            err.trim().to_owned()
        }))
    }

    /// Fetches `url` into the host's cache as [`cached_image`]`(sha256)`,
    /// reporting progress. `sha256` must be 64 lower-case hex digits and
    /// `url` an http(s) URL (the caller checked both).
    pub async fn image_fetch(
        &self,
        url: &str,
        digest: &ImageDigest,
        ca_file: Option<&str>,
        mut progress: impl FnMut(FetchProgress),
    ) -> HvResult<Fetched> {
        let args = [
            DEPLOY_DIR,
            &digest.hex,
            url,
            digest.algorithm.as_str(),
            ca_file.unwrap_or(""),
        ];
        // On a PTY, so the remote download dies with the channel (a
        // cancelled job leaves no curl behind; its partial file stays).
        let mut lines = self.ssh().stream_lines(&sh(FETCH_SCRIPT, &args)).await?;
        loop {
            let line = match tokio::time::timeout(SILENCE, lines.next_line()).await {
                Err(_) => return Err(HvError::Timeout(SILENCE)),
                Ok(line) => line?,
            };
            let Some(line) = line else {
                return Err(HvError::Host(
                    "the image download ended without a word".into(),
                ));
            };
            let line = line.trim();
            if let Some(n) = line.strip_prefix("total ") {
                progress(FetchProgress::Total(n.parse().unwrap_or(0)));
            } else if let Some(n) = line.strip_prefix("have ") {
                progress(FetchProgress::Have(n.parse().unwrap_or(0)));
            } else if line == "cached" {
                return Ok(Fetched::Cached);
            } else if line == "fetched" {
                return Ok(Fetched::Downloaded);
            } else if let Some(why) = line.strip_prefix("failed ") {
                return Err(HvError::Host(why.to_owned()));
            }
        }
    }

    /// Fetches a small text document (a checksum list) on the host, so it
    /// comes the way the image will: the host's route and trust.
    pub async fn fetch_text(&self, url: &str, ca_file: Option<&str>) -> HvResult<String> {
        let out = self
            .ssh()
            .exec(&sh(FETCH_TEXT_SCRIPT, &[url, ca_file.unwrap_or("")]))
            .await?;
        if !out.success() {
            let why = out.stderr_text();
            return Err(HvError::Host(format!("cannot fetch {url}: {}", why.trim())));
        }
        if out.stdout.len() > LIST_MAX {
            return Err(HvError::Host(format!(
                "{url} is larger than {LIST_MAX} bytes"
            )));
        }
        String::from_utf8(out.stdout).map_err(|_| HvError::Host(format!("{url} is not text")))
    }

    /// Makes `files.disk`, `gib` large: a qcow2 overlay of the cached
    /// image with `base`'s digest and format, or blank without `base`.
    pub async fn overlay_create(
        &self,
        files: &VmFiles,
        base: Option<(&ImageDigest, &str)>,
        gib: u64,
    ) -> HvResult<()> {
        let (image, format) = match base {
            Some((digest, format)) => (cached_image(&digest.hex), format),
            None => (String::new(), ""),
        };
        let size = gib.to_string();
        self.script(OVERLAY_SCRIPT, &[&files.dir, &image, format, &size], None)
            .await
    }

    /// Writes `data` to `path` on the host over the kept connection.
    pub async fn upload(&self, path: &str, data: &[u8]) -> HvResult<()> {
        self.upload_mode(path, data, "0644").await
    }

    /// Writes `data` to `path`, readable by its owner and group only
    /// (`libvirt`, through the deploy directory's set-group-id bit; libvirt
    /// hands it to QEMU when the VM starts).
    pub async fn upload_private(&self, path: &str, data: &[u8]) -> HvResult<()> {
        self.upload_mode(path, data, "0640").await
    }

    async fn upload_mode(&self, path: &str, data: &[u8], mode: &str) -> HvResult<()> {
        self.script(UPLOAD_SCRIPT, &[path, mode], Some(data)).await
    }

    /// Those of `paths` that are regular files the automation user can read.
    pub async fn readable_files(&self, paths: &[&str]) -> HvResult<Vec<String>> {
        let out = self.ssh().exec(&sh(READABLE_SCRIPT, paths)).await?;
        if !out.success() {
            return Err(HvError::Host(out.stderr_text().trim().to_owned()));
        }
        Ok(out.stdout_text().lines().map(str::to_owned).collect())
    }

    /// Removes a VM's directory (overlay, seed, XML), if any.
    pub async fn vm_files_remove(&self, files: &VmFiles) -> HvResult<()> {
        self.script(REMOVE_SCRIPT, &[&files.dir], None).await
    }

    /// Defines the domain from an XML file on the host.
    pub async fn define_file(&self, path: &str) -> HvResult<()> {
        self.run(&["define", "--file", path], None).await.map(drop)
    }

    /// Stops `vm` at once if it runs; a VM that does not run or does not
    /// exist is fine (undo of a start).
    pub async fn destroy_if_running(&self, vm: &VmName) -> HvResult<()> {
        match self
            .run(&["destroy", "--domain", vm.as_str()], Some((vm, None)))
            .await
        {
            Ok(_) | Err(HvError::NotFound(_)) => Ok(()),
            Err(HvError::Host(m)) if m.to_ascii_lowercase().contains("not running") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Undefines `vm` keeping its files (the job removes its own), if it
    /// exists.
    pub async fn undefine_if_defined(&self, vm: &VmName) -> HvResult<()> {
        match self.remove(vm, false).await {
            Ok(()) | Err(HvError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A connection to the guest agent's port of the VM with `files`,
    /// through the host's SSH connection (no process on the host).
    pub async fn guest_channel(&self, files: &VmFiles) -> HvResult<crate::ssh::TcpTunnel> {
        Ok(self.ssh().direct_streamlocal(&files.guest_socket).await?)
    }

    /// `kvm` when the host can accelerate, else plain `qemu` (TCG).
    pub async fn has_kvm(&self) -> HvResult<bool> {
        Ok(self
            .run(&["domcapabilities", "--virttype", "kvm"], None)
            .await
            .is_ok())
    }

    /// libvirt networks (active or not) and Linux bridges of the host.
    pub async fn networks(&self) -> HvResult<(Vec<String>, Vec<String>)> {
        let names = self.run(&["net-list", "--all", "--name"], None).await?;
        let out = self.ssh().exec(&sh(BRIDGES_SCRIPT, &[])).await?;
        let words = |s: &str| -> Vec<String> {
            let mut v: Vec<String> = s
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        Ok((words(&names), words(&out.stdout_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_stay_positional() {
        // Every script takes its inputs as arguments, quoted once.
        let args = [DEPLOY_DIR, "ab", "http://x/$(reboot)'", "sha256", ""];
        let line = sh(FETCH_SCRIPT, &args).render();
        assert!(
            line.ends_with(
                r#"sh /var/lib/libvirt/overvisor ab 'http://x/$(reboot)'\''' sha256 ''"#
            ),
            "{line}"
        );
        let line = sh(READABLE_SCRIPT, &["/isos/a b.iso", "/x;reboot"]).render();
        assert!(
            line.ends_with(r#"sh '/isos/a b.iso' '/x;reboot'"#),
            "{line}"
        );
        let files = VmFiles::of(&uuid::Uuid::nil());
        assert_eq!(
            files.disk,
            "/var/lib/libvirt/overvisor/vms/00000000-0000-0000-0000-000000000000/disk.qcow2"
        );
    }
}
