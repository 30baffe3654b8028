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

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use overvisor_model::operation::ImageDigest;
use overvisor_model::vm::VmName;

use super::LibvirtDriver;
use crate::driver::{HvError, HvResult};
use crate::quote::CommandLine;
use crate::ssh::LineStream;

/// Where deployments keep their files on a host.
pub const DEPLOY_DIR: &str = "/var/lib/libvirt/overvisor";

/// How long one image download may go without a progress line (the script
/// prints one every second) before the step gives up.
const SILENCE: Duration = Duration::from_secs(60);

/// The start both ways into the cache share: `$1` the deploy dir, `$2`
/// the digest, `$3` its algorithm (`sha256`/`sha512`), shifted off. A lock
/// per digest makes a second deployment of the same image wait for the
/// first one's transfer and then find it cached (`cached`). The exit
/// status is lost on a PTY, so the scripts' lines say how they ended.
macro_rules! cache_enter {
    () => {
        r#"set -u
dir=$1/images; sum=$2; algo=$3
shift 3
mkdir -p "$dir" || { echo "failed cannot create $dir"; exit 1; }
cd "$dir" || exit 1
exec 9>>"$sum.lock"
flock 9
if [ -f "$sum.img" ]; then echo cached; exit 0; fi
echo "from $(stat -c %s "$sum.part" 2>/dev/null || echo 0)"
"#
    };
}

/// The end both share: verifies `$sum.part` against the digest and makes
/// it the cached image (`fetched`); a mismatch removes it.
macro_rules! cache_commit {
    () => {
        r#"echo "have $(stat -c %s "$sum.part")"
got=$("${algo}sum" "$sum.part" | cut -d' ' -f1)
if [ "$got" != "$sum" ]; then
  rm -f "$sum.part"
  echo "failed checksum mismatch: the image's $algo is $got, the profile says $sum"
  exit 1
fi
chmod 0644 "$sum.part" && mv "$sum.part" "$sum.img" && rm -f "$sum.err"
echo fetched
"#
    };
}

/// The host downloads `$4` (URL) into the cache; `$5`, if not empty, is
/// the CA file curl trusts instead of the host's store. The partial file
/// stays, so a retry resumes it (`curl -C -`). Prints `from N`, `total N`,
/// `have N` (every second), then `cached`/`fetched`, or `failed <why>`.
const FETCH_SCRIPT: &str = concat!(
    cache_enter!(),
    r#"url=$1; ca=$2
set --
[ -n "$ca" ] && set -- --cacert "$ca"
total=$(curl -fsIL --max-time 30 "$@" "$url" 2>/dev/null | tr -d '\r' | awk 'tolower($1)=="content-length:"{n=$2} END{print n+0}')
echo "total $total"
curl -fsSL --connect-timeout 20 --speed-time 60 --speed-limit 1 "$@" -C - -o "$sum.part" "$url" 2>"$sum.err" &
pid=$!
# Progress from a reporter of its own, so the end of the download is seen
# at once rather than at the reporter's next tick.
(while kill -0 "$pid" 2>/dev/null; do
  echo "have $(stat -c %s "$sum.part" 2>/dev/null || echo 0)"
  sleep 1
done) &
if ! wait "$pid"; then echo "failed download: $(tr '\n' ' ' < "$sum.err" | cut -c1-300)"; exit 1; fi
"#,
    cache_commit!()
);

/// The control plane sends the image on stdin: after `from N` (what the
/// host has of it), the first line it reads is `<from> <size>`, then the
/// bytes from `from` on (`from` 0 starts the file afresh), then EOF. A
/// stream that ends short (a cancelled job, a lost connection) keeps the
/// partial file for the next attempt to resume.
const RECEIVE_SCRIPT: &str = concat!(
    cache_enter!(),
    r#"read -r from size || { echo "failed the control plane sent no image"; exit 1; }
[ "$from" = 0 ] && : > "$sum.part"
cat >> "$sum.part" || { echo "failed cannot write $dir/$sum.part"; exit 1; }
got=$(stat -c %s "$sum.part")
if [ "$got" -lt "$size" ]; then echo "failed the stream ended after $got of $size bytes"; exit 1; fi
"#,
    cache_commit!()
);

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
shift 2
[ $# -eq 0 ] || exec "$@"
"#;

/// Prints those of its arguments that are regular files it can read.
const READABLE_SCRIPT: &str =
    r#"for f; do [ -f "$f" ] && [ -r "$f" ] && printf '%s\n' "$f"; done; true"#;

/// `$1` VM dir: removes it whatever it holds.
const REMOVE_SCRIPT: &str = r#"rm -rf -- "$1""#;

/// The guest agent's no-op: it answers once the agent runs.
const GUEST_PING: &str = r#"{"execute":"guest-ping"}"#;
/// How long libvirt waits for the agent's answer.
const GUEST_PING_TIMEOUT_SECS: &str = "5";

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
    /// The transfer starts here: what the host had of the image already
    /// (a partial file an earlier attempt left).
    From(u64),
}

/// What an image fetch ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Already in the cache: nothing was downloaded.
    Cached,
    Downloaded,
}

/// The host's side of an image the control plane streams to it.
pub enum ImageReceive {
    /// Nothing to send: the host has the image cached.
    Done(Fetched),
    /// The host waits for the image (holding its lock for the digest).
    Wanted(ImageSender),
}

/// Sends an image to the host that waits for it; dropping it ends the
/// stream (the host keeps what it has, for the next attempt to resume).
pub struct ImageSender {
    lines: LineStream,
    have: u64,
}

/// How much of the image is sent in one SSH data message: the channel's
/// window holds the sender back beyond that, so memory stays bounded.
const CHUNK: usize = 64 << 10;

impl ImageSender {
    /// Bytes of the image the host already has (in its partial file).
    pub fn have(&self) -> u64 {
        self.have
    }

    /// Sends the verified image at `path` (`size` bytes) from what the host
    /// has on, and waits for the host to verify and cache it. A host that
    /// has more than `size` bytes starts afresh. Gives up when the host
    /// takes no data for [`SILENCE`].
    pub async fn send(
        mut self,
        path: &Path,
        size: u64,
        mut progress: impl FnMut(FetchProgress),
    ) -> HvResult<Fetched> {
        let from = if self.have <= size { self.have } else { 0 };
        progress(FetchProgress::Total(size));
        progress(FetchProgress::From(from));
        let local =
            |e: std::io::Error| HvError::Host(format!("cannot read {}: {e}", path.display()));
        let mut file = tokio::fs::File::open(path).await.map_err(local)?;
        file.seek(std::io::SeekFrom::Start(from))
            .await
            .map_err(local)?;
        let sent = async {
            self.lines
                .write(format!("{from} {size}\n").as_bytes())
                .await?;
            let mut buf = vec![0u8; CHUNK];
            let mut have = from;
            loop {
                let n = file.read(&mut buf).await.map_err(local)?;
                if n == 0 {
                    break;
                }
                tokio::time::timeout(SILENCE, self.lines.write(&buf[..n]))
                    .await
                    .map_err(|_| HvError::Timeout(SILENCE))??;
                have += n as u64;
                progress(FetchProgress::Have(have));
            }
            self.lines.eof().await?;
            HvResult::Ok(())
        };
        match sent.await {
            Ok(()) => transfer_outcome(&mut self.lines, &mut progress).await,
            Err(e @ HvError::Timeout(_)) => Err(e),
            // The host's own word says more than a broken pipe does (a
            // full disk ends its `cat`, and with it the channel).
            Err(e) => match transfer_outcome(&mut self.lines, &mut progress).await {
                Err(said @ HvError::Host(_)) => Err(said),
                _ => Err(e),
            },
        }
    }
}

/// What a line of the cache scripts says.
enum Event {
    Progress(FetchProgress),
    Done(Fetched),
}

/// The next word of a cache script: waits at most [`SILENCE`] (the
/// download prints a line every second).
async fn next_event(lines: &mut LineStream) -> HvResult<Event> {
    loop {
        let line = match tokio::time::timeout(SILENCE, lines.next_line()).await {
            Err(_) => return Err(HvError::Timeout(SILENCE)),
            Ok(line) => line?,
        };
        let Some(line) = line else {
            return Err(HvError::Host(
                "the image transfer ended without a word".into(),
            ));
        };
        if let Some(event) = parse_event(line.trim())? {
            return Ok(event);
        }
    }
}

fn parse_event(line: &str) -> HvResult<Option<Event>> {
    let number = |n: &str| n.parse().unwrap_or(0);
    Ok(Some(if let Some(n) = line.strip_prefix("total ") {
        Event::Progress(FetchProgress::Total(number(n)))
    } else if let Some(n) = line.strip_prefix("have ") {
        Event::Progress(FetchProgress::Have(number(n)))
    } else if let Some(n) = line.strip_prefix("from ") {
        Event::Progress(FetchProgress::From(number(n)))
    } else if line == "cached" {
        Event::Done(Fetched::Cached)
    } else if line == "fetched" {
        Event::Done(Fetched::Downloaded)
    } else if let Some(why) = line.strip_prefix("failed ") {
        return Err(HvError::Host(why.to_owned()));
    } else {
        return Ok(None);
    }))
}

/// Reads a cache script to its end, reporting its progress.
async fn transfer_outcome(
    lines: &mut LineStream,
    progress: &mut impl FnMut(FetchProgress),
) -> HvResult<Fetched> {
    loop {
        match next_event(lines).await? {
            Event::Progress(p) => progress(p),
            Event::Done(done) => return Ok(done),
        }
    }
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
            digest.algorithm.as_str(),
            url,
            ca_file.unwrap_or(""),
        ];
        // On a PTY, so the remote download dies with the channel (a
        // cancelled job leaves no curl behind; its partial file stays).
        let mut lines = self.ssh().stream_lines(&sh(FETCH_SCRIPT, &args)).await?;
        transfer_outcome(&mut lines, &mut progress).await
    }

    /// Opens the host's side of an image the control plane streams to it
    /// (over this connection): the host takes its lock for the digest and
    /// says whether it has the image cached, or how much of it it has.
    pub async fn image_receive(&self, digest: &ImageDigest) -> HvResult<ImageReceive> {
        let args = [DEPLOY_DIR, &digest.hex, digest.algorithm.as_str()];
        // Without a terminal: the image's bytes go to the script's stdin.
        let mut lines = self.ssh().piped_lines(&sh(RECEIVE_SCRIPT, &args)).await?;
        // The script waits for the image once it said `from N`.
        loop {
            match next_event(&mut lines).await? {
                Event::Progress(FetchProgress::From(have)) => {
                    return Ok(ImageReceive::Wanted(ImageSender { lines, have }));
                }
                Event::Progress(_) => {}
                Event::Done(done) => return Ok(ImageReceive::Done(done)),
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

    /// Writes the domain's XML to `path` and defines the domain from it,
    /// in one command (a deployment waits for each round trip).
    pub async fn define_xml(&self, path: &str, xml: &str) -> HvResult<()> {
        let define = self.virsh(["define", "--file", path]);
        let args: Vec<&str> = [path, "0644"]
            .into_iter()
            .chain(define.words().iter().map(String::as_str))
            .collect();
        let out = self
            .ssh()
            .exec_with_stdin(&sh(UPLOAD_SCRIPT, &args), xml.as_bytes())
            .await?;
        if out.success() {
            Ok(())
        } else {
            Err(super::classify(&out, None))
        }
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

    /// Whether `vm`'s QEMU guest agent answers `guest-ping` now: `Err` with
    /// why not (no agent yet, the VM does not run) when it does not. A VM
    /// that is gone or a lost connection is an error.
    pub async fn guest_agent_ping(&self, vm: &VmName) -> HvResult<Result<(), String>> {
        let args = [
            "qemu-agent-command",
            "--domain",
            vm.as_str(),
            "--timeout",
            GUEST_PING_TIMEOUT_SECS,
            GUEST_PING,
        ];
        match self.run(&args, Some((vm, None))).await {
            Ok(_) => Ok(Ok(())),
            Err(HvError::Host(why)) => Ok(Err(why)),
            Err(e) => Err(e),
        }
    }

    /// Presses `key` (a Linux key code name, e.g. `KEY_SPACE`) on `vm`'s
    /// keyboard.
    pub async fn send_key(&self, vm: &VmName, key: &str) -> HvResult<()> {
        self.run(
            &["send-key", "--domain", vm.as_str(), key],
            Some((vm, None)),
        )
        .await
        .map(drop)
    }

    /// Ejects the media at `path` from every drive of `vm` holding it, in
    /// the running VM and in its definition (the drive stays, empty: SATA
    /// has no hot unplug), then deletes the file. Returns whether a drive
    /// held it; doing it again finds none and is fine.
    pub async fn media_remove(&self, vm: &VmName, path: &str) -> HvResult<bool> {
        use crate::driver::Hypervisor as _;
        let running = self.vm_state(vm).await? == overvisor_model::vm::VmState::Running;
        let scopes: &[(&str, Option<&str>)] = if running {
            &[("--live", None), ("--config", Some("--inactive"))]
        } else {
            &[("--config", Some("--inactive"))]
        };
        let mut held = false;
        for (scope, list) in scopes {
            let mut args = vec!["domblklist", "--domain", vm.as_str(), "--details"];
            args.extend(*list);
            let drives = self.run(&args, Some((vm, None))).await?;
            for target in super::parse::drives_holding(&drives, path) {
                let eject = [
                    "change-media",
                    "--domain",
                    vm.as_str(),
                    "--path",
                    target.as_str(),
                    "--eject",
                    "--force",
                    scope,
                ];
                self.run(&eject, Some((vm, None))).await?;
                held = true;
            }
        }
        self.script(REMOVE_SCRIPT, &[path], None).await?;
        Ok(held)
    }

    /// A connection to the guest agent's port of the VM with `files`,
    /// through the host's SSH connection (no process on the host).
    pub async fn guest_channel(&self, files: &VmFiles) -> HvResult<crate::ssh::TcpTunnel> {
        Ok(self.ssh().direct_streamlocal(&files.guest_socket).await?)
    }

    /// `kvm` when the host can accelerate, else plain `qemu` (TCG). Asked
    /// once: what virsh answered is kept for the driver's life; a failure
    /// to ask (the connection) counts as no KVM this time only.
    pub async fn has_kvm(&self) -> HvResult<bool> {
        let asked = self
            .kvm
            .get_or_try_init(|| async {
                match self
                    .run(&["domcapabilities", "--virttype", "kvm"], None)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(HvError::Host(_)) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await;
        Ok(asked.copied().unwrap_or(false))
    }

    /// The host's Linux bridges, sorted.
    pub(super) async fn bridges(&self) -> HvResult<Vec<String>> {
        let out = self.ssh().exec(&sh(BRIDGES_SCRIPT, &[])).await?;
        Ok(super::parse::sorted_lines(&out.stdout_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_stay_positional() {
        // Every script takes its inputs as arguments, quoted once.
        let args = [DEPLOY_DIR, "ab", "sha256", "http://x/$(reboot)'", ""];
        let line = sh(FETCH_SCRIPT, &args).render();
        assert!(
            line.ends_with(
                r#"sh /var/lib/libvirt/overvisor ab sha256 'http://x/$(reboot)'\''' ''"#
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

    #[test]
    fn script_lines_are_events() {
        assert!(matches!(
            parse_event("from 12"),
            Ok(Some(Event::Progress(FetchProgress::From(12))))
        ));
        assert!(matches!(
            parse_event("have x"),
            Ok(Some(Event::Progress(FetchProgress::Have(0))))
        ));
        assert!(matches!(
            parse_event("cached"),
            Ok(Some(Event::Done(Fetched::Cached)))
        ));
        assert!(matches!(parse_event("noise"), Ok(None)));
        assert!(
            matches!(parse_event("failed checksum mismatch: x"), Err(HvError::Host(m)) if m == "checksum mismatch: x")
        );
    }

    /// Runs the receiving script here, as a host would, feeding `stdin`.
    #[test]
    fn an_upload_runs_its_trailing_command_only_once_the_file_is_whole() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("new dir/domain.xml");
        let upload = |then: &[&str]| {
            let mut child = std::process::Command::new("sh")
                .args(["-c", UPLOAD_SCRIPT, "sh"])
                .arg(&file)
                .arg("0640")
                .args(then)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("sh runs");
            let mut stdin = child.stdin.take().expect("piped");
            stdin.write_all(b"<domain/>").expect("written");
            drop(stdin);
            child.wait_with_output().expect("sh ends")
        };
        let plain = upload(&[]);
        assert!(plain.status.success());
        assert!(plain.stdout.is_empty());
        let then = upload(&["cat", "--", &file.to_string_lossy()]);
        assert!(then.status.success());
        assert_eq!(then.stdout, b"<domain/>", "the command sees the whole file");
        let failed = upload(&["false"]);
        assert!(!failed.status.success(), "its failure is the upload's");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    fn receive(dir: &Path, sum: &str, stdin: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", RECEIVE_SCRIPT, "sh"])
            .arg(dir)
            .args([sum, "sha256"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh runs");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(stdin)
            .expect("written");
        let out = child.wait_with_output().expect("sh ends");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_short_stream_is_kept_and_resumed_and_a_bad_one_removed() {
        use sha2::Digest;
        let dir = tempfile::tempdir().expect("tempdir");
        let image: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sum = hex::encode(sha2::Sha256::digest(&image));
        let part = dir.path().join(format!("images/{sum}.part"));
        // Cut short (a cancelled job): the part stays.
        let mut first = b"0 100000\n".to_vec();
        first.extend_from_slice(&image[..30_000]);
        let out = receive(dir.path(), &sum, &first);
        assert!(out.starts_with("from 0\n"), "{out}");
        assert!(
            out.contains("failed the stream ended after 30000 of 100000"),
            "{out}"
        );
        assert_eq!(std::fs::metadata(&part).expect("kept").len(), 30_000);
        // Resumed where it stopped: verified and cached.
        let mut rest = b"30000 100000\n".to_vec();
        rest.extend_from_slice(&image[30_000..]);
        let out = receive(dir.path(), &sum, &rest);
        assert!(out.starts_with("from 30000\n"), "{out}");
        assert!(out.ends_with("fetched\n"), "{out}");
        let cached = dir.path().join(format!("images/{sum}.img"));
        assert_eq!(std::fs::read(&cached).expect("cached"), image);
        assert_eq!(receive(dir.path(), &sum, b""), "cached\n");
        // Wrong bytes: refused, and nothing is left to resume.
        let other = "0".repeat(64);
        let out = receive(dir.path(), &other, b"0 3\nabc");
        assert!(out.contains("failed checksum mismatch"), "{out}");
        assert!(!dir.path().join(format!("images/{other}.part")).exists());
        assert!(!dir.path().join(format!("images/{other}.img")).exists());
    }
}
