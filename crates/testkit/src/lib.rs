//! Test fixtures over the real hypervisor lab that `scripts/lab up` brings
//! up (namespace "hosts" with libvirtd, QEMU and sshd).
//!
//! Integration tests use it to find the hosts and the client key, and to
//! make changes behind the driver's back ("out of band", as root inside a
//! host) so they can check what the driver sees. A missing lab is a test
//! failure with instructions, never a skip: a skipped integration test
//! proves nothing.
//!
//! Host allocation (tests run in parallel, in CI too): `ovh1` and `ovh2` are
//! shared and must never be disrupted; a test that kills a host's sshd or
//! network owns one host of its own — `ovh3` the SSH driver's resilience
//! test, `ovh4` the host-registry API's, `ovh5` the jobs/inventory ones,
//! `ovh6` the libvirtd-restart fault test, `ovh7` the network-cut one.
//! `scripts/test` brings up seven hosts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde::Deserialize;

mod hyperv;
pub mod postgres;
pub use hyperv::{HostLock, HypervLabHost};

/// Where the lab lives unless `OVERVISOR_LAB_DIR` says otherwise (the same
/// default as `scripts/lab`).
pub const DEFAULT_LAB_DIR: &str = "/tmp/overvisor-lab";

/// The lab directory `scripts/lab` uses in this environment:
/// `OVERVISOR_LAB_DIR`, else instance N's (`OVERVISOR_LAB_INSTANCE=N`, a
/// second lab beside the default one, e.g. for scale benchmarks), else the
/// default lab's.
pub fn lab_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OVERVISOR_LAB_DIR") {
        return PathBuf::from(dir);
    }
    match std::env::var("OVERVISOR_LAB_INSTANCE") {
        Ok(n) if !n.is_empty() => PathBuf::from(format!("{DEFAULT_LAB_DIR}-{n}")),
        _ => PathBuf::from(DEFAULT_LAB_DIR),
    }
}

/// The lab as described by `lab.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Lab {
    pub hosts: Vec<LabHost>,
    /// OpenSSH private key the hosts' `authorized_keys` accept.
    pub client_key: PathBuf,
    pub client_key_pub: String,
    pub guest: Guest,
    /// Domain XML with `{{name}}`, `{{uuid}}`, `{{kernel}}`, `{{initrd}}`,
    /// `{{serial_log}}` and `{{mac}}` placeholders.
    pub domain_xml_template: PathBuf,
    pub lab_script: PathBuf,
    pub lab_dir: PathBuf,
    /// The `OVERVISOR_LAB_INSTANCE` the lab was brought up with (`None`:
    /// the default lab).
    #[serde(default)]
    pub instance: Option<u32>,
    /// The real Debian cloud guest (cloud-init, qemu-guest-agent, sshd),
    /// served to the hosts by the lab's file server.
    pub cloud_image: CloudImage,
    /// Every host's guest bridge, with DHCP on it.
    pub guest_network: GuestNetwork,
    /// The scripted Hyper-V hosts (`scripts/lab up --hyperv N`).
    #[serde(default)]
    pub hyperv_hosts: Vec<HypervLabHost>,
    /// The tool that steers them (scripts/hyperv-host/model).
    #[serde(default)]
    pub hyperv_model: Option<PathBuf>,
}

/// A disk image as a deployment profile names it: where to fetch it and
/// its digest. `path` is the cached file on this machine.
#[derive(Debug, Clone, Deserialize)]
pub struct CloudImage {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub path: PathBuf,
}

/// The bridge guests are plugged into on each host (`br0`): the host holds
/// `gateway` on it and hands out addresses by DHCP.
#[derive(Debug, Clone, Deserialize)]
pub struct GuestNetwork {
    pub bridge: String,
    pub gateway: String,
    pub prefix: u8,
}

/// The tiny guest every test VM boots: a kernel and a busybox initramfs
/// that prints `LAB-MARKER-BOOTED`, then `LAB-READY` on the serial console
/// and powers off on the ACPI power button.
#[derive(Debug, Clone, Deserialize)]
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// One simulated hypervisor host.
#[derive(Debug, Clone, Deserialize)]
pub struct LabHost {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub uri: String,
    /// `SHA256:…`, what a pinned connection must see.
    pub host_key_fingerprint: String,
    pub host_key_pub: String,
    pub netns: String,
    pub libvirtd_pid_file: PathBuf,
    pub serial_dir: PathBuf,
    pub xml_dir: PathBuf,
    #[serde(skip)]
    lab_script: PathBuf,
    #[serde(skip)]
    lab_dir: PathBuf,
    #[serde(skip)]
    instance: Option<u32>,
}

impl Lab {
    /// Reads `lab.json` in [`lab_dir`]. Panics, telling how to bring the
    /// lab up, if it is not there.
    pub fn load() -> Self {
        Self::load_from(&lab_dir())
    }

    /// Reads `dir/lab.json`; panics like [`Lab::load`].
    pub fn load_from(dir: &Path) -> Self {
        let path = dir.join("lab.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the hypervisor lab is not up ({}: {e}).\n\
                 Bring it up first, as root: scripts/install-deps && scripts/lab up\n\
                 (OVERVISOR_LAB_INSTANCE=N or OVERVISOR_LAB_DIR select another lab)",
                path.display()
            )
        });
        let mut lab: Lab = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{} is not a lab description: {e}; rerun scripts/lab up",
                path.display()
            )
        });
        for h in &mut lab.hyperv_hosts {
            h.model = lab.hyperv_model.clone().unwrap_or_default();
        }
        for h in &mut lab.hosts {
            h.lab_script = lab.lab_script.clone();
            h.lab_dir = lab.lab_dir.clone();
            h.instance = lab.instance;
        }
        assert!(
            !lab.hosts.is_empty(),
            "the lab has no hosts; rerun scripts/lab up"
        );
        lab
    }

    /// The `i`th (from 0) scripted Hyper-V host; panics (with advice) if
    /// the lab has fewer.
    pub fn hyperv_host(&self, i: usize) -> &HypervLabHost {
        self.hyperv_hosts.get(i).unwrap_or_else(|| {
            panic!(
                "this test needs {} scripted Hyper-V hosts, the lab has {}: scripts/lab up --hyperv {}",
                i + 1,
                self.hyperv_hosts.len(),
                i + 1
            )
        })
    }

    pub fn host(&self, name: &str) -> &LabHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("lab has no host {name}"))
    }

    /// The first `n` hosts; panics (with advice) if the lab has fewer.
    pub fn hosts(&self, n: usize) -> &[LabHost] {
        assert!(
            self.hosts.len() >= n,
            "this test needs {n} lab hosts, the lab has {}: scripts/lab up --hosts {n}",
            self.hosts.len()
        );
        &self.hosts[..n]
    }

    pub fn client_key_pem(&self) -> String {
        std::fs::read_to_string(&self.client_key).unwrap_or_else(|e| {
            panic!(
                "cannot read lab client key {}: {e}",
                self.client_key.display()
            )
        })
    }

    /// Domain XML for a tiny guest called `name` on `host`, with its own
    /// UUID, MAC address and serial log file.
    pub fn domain_xml(&self, host: &LabHost, name: &str) -> String {
        let template = std::fs::read_to_string(&self.domain_xml_template)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.domain_xml_template.display()));
        let uuid = uuid::Uuid::new_v4();
        let b = uuid.as_bytes();
        let mac = format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]);
        let serial_log = host.serial_log_path(name);
        template
            .replace("{{name}}", &xml_escape(name))
            .replace("{{uuid}}", &uuid.to_string())
            .replace(
                "{{kernel}}",
                &xml_escape(&self.guest.kernel.to_string_lossy()),
            )
            .replace(
                "{{initrd}}",
                &xml_escape(&self.guest.initrd.to_string_lossy()),
            )
            .replace("{{serial_log}}", &xml_escape(&serial_log.to_string_lossy()))
            .replace("{{mac}}", &mac)
    }

    /// Defines a tiny guest on `host` as root, behind the driver's back.
    /// The returned guard destroys and undefines it when dropped, so a
    /// failing test does not leave it running.
    pub fn define_guest(&self, host: &LabHost, name: &str) -> TestGuest {
        let xml = self.domain_xml(host, name);
        let path = host.xml_dir.join(format!("{name}.xml"));
        std::fs::write(&path, xml)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        // Absolute path: nsenter starts virsh in the host's root directory.
        host.virsh(&["define", &path.to_string_lossy()]);
        TestGuest {
            host: host.clone(),
            name: name.to_owned(),
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// A name no other test (or earlier run) uses: `prefix-` and 8 hex digits.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

impl LabHost {
    fn libvirtd_pid(&self) -> String {
        let pid = std::fs::read_to_string(&self.libvirtd_pid_file)
            .unwrap_or_else(|e| panic!("host {} has no libvirtd pid file: {e}", self.name));
        pid.trim().to_owned()
    }

    /// Runs a program as root inside this host's mount, network and UTS
    /// namespaces (the host's own /run/libvirt, /etc/libvirt, addresses).
    pub fn run_as_root(&self, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.libvirtd_pid(), "-m", "-n", "-u", program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run nsenter: {e}"))
    }

    /// Root-side `virsh` on this host, for out-of-band changes; `Err` holds
    /// virsh's stderr.
    pub fn try_virsh(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["-c", self.uri.as_str()];
        full.extend_from_slice(args);
        let out = self.run_as_root("virsh", &full);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Like [`LabHost::try_virsh`], panicking on failure.
    pub fn virsh(&self, args: &[&str]) -> String {
        self.try_virsh(args)
            .unwrap_or_else(|e| panic!("virsh {args:?} on {} failed: {e}", self.name))
    }

    /// `virsh domstate` as root (e.g. "running", "shut off").
    pub fn domstate(&self, domain: &str) -> String {
        self.virsh(&["domstate", "--domain", domain])
            .trim()
            .to_owned()
    }

    /// Waits until the domain's state reads `want`; returns the last state.
    pub fn wait_domstate(&self, domain: &str, want: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self
                .try_virsh(&["domstate", "--domain", domain])
                .unwrap_or_default();
            if state.trim() == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{domain} on {} is {:?}, not {want:?}",
                    self.name,
                    state.trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The serial log file of `domain` on this host (unique per host).
    pub fn serial_log_path(&self, domain: &str) -> PathBuf {
        self.serial_dir.join(format!("{domain}.log"))
    }

    /// What the guest printed on its serial console so far.
    pub fn serial_log(&self, domain: &str) -> String {
        std::fs::read(self.serial_log_path(domain))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `marker` appeared at least `count` times on the serial
    /// console (e.g. `LAB-MARKER-BOOTED` twice after a reboot).
    pub fn wait_serial(
        &self,
        domain: &str,
        marker: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.serial_log(domain);
            if log.matches(marker).count() >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{domain} on {}: {marker:?} not seen {count} times in {timeout:?}; serial log:\n{log}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether `path` exists as seen from inside this host.
    pub fn path_exists(&self, path: &Path) -> bool {
        self.run_as_root("test", &["-e", &path.to_string_lossy()])
            .status
            .success()
    }

    fn lab(&self, verb: &str) {
        let mut cmd = Command::new(&self.lab_script);
        cmd.args([verb, &self.name])
            .env("OVERVISOR_LAB_DIR", &self.lab_dir);
        // The instance decides the interface names the script acts on.
        match self.instance {
            Some(n) => cmd.env("OVERVISOR_LAB_INSTANCE", n.to_string()),
            None => cmd.env_remove("OVERVISOR_LAB_INSTANCE"),
        };
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.lab_script.display()));
        assert!(
            out.status.success(),
            "scripts/lab {verb} {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills this host's sshd, open sessions included: a dead host.
    pub fn stop_sshd(&self) {
        self.lab("sshd-stop");
    }

    pub fn start_sshd(&self) {
        self.lab("sshd-start");
    }

    /// Kills the host's libvirtd and starts it again (running guests carry
    /// on); returns once the new one answers over SSH.
    pub fn restart_libvirtd(&self) {
        self.lab("libvirtd-restart");
    }

    /// Unplugs the host from the network: packets vanish, nothing is
    /// refused, so only timeouts and keepalives notice.
    pub fn net_down(&self) {
        self.lab("net-down");
    }

    pub fn net_up(&self) {
        self.lab("net-up");
    }
}

/// A guest defined by a test; destroyed and undefined on drop.
#[derive(Debug)]
pub struct TestGuest {
    pub host: LabHost,
    pub name: String,
}

impl TestGuest {
    pub fn wait_ready(&self, count: usize, timeout: Duration) {
        self.host
            .wait_serial(&self.name, "LAB-READY", count, timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn boots(&self) -> usize {
        self.host
            .serial_log(&self.name)
            .matches("LAB-MARKER-BOOTED")
            .count()
    }

    /// Forget the guest: the test removed it itself.
    pub fn disarm(mut self) {
        self.name.clear();
    }
}

impl Drop for TestGuest {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        // `--domain`: a name may start with '-'.
        let _ = self.host.try_virsh(&["destroy", "--domain", &self.name]);
        let _ = self.host.try_virsh(&["undefine", "--domain", &self.name]);
    }
}
