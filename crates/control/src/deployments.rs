//! Deployments: a checked request becomes a `vm.deploy` job
//! (`operations/deploy.rs` runs it). Everything is decided before the job
//! exists: the subject may operate the host, the request passes the
//! profile's checks, the host has the network, the CPUs and the memory, no
//! VM has the name, and (for UEFI, TPM and installer profiles) the host has
//! the firmware, swtpm and ISOs the VM uses. The guest's password is
//! generated here and leaves only in the answer to this one request: a
//! Linux seed carries its SHA-512-crypt hash, a Windows `Autounattend.xml`
//! the password itself (Windows takes no hash); either is sealed to the
//! job's row.

use overvisor_deploy::autounattend::autounattend_xml;
use overvisor_deploy::cloud_init::NoCloudSeed;
use overvisor_deploy::domain::{DomainFiles, UefiFiles, VirtType, domain_xml};
use overvisor_deploy::firmware::{self, Ovmf};
use overvisor_deploy::profile::{
    Firmware, HostPath, ImageChecksum, ImageFormat, ImageSource, Provisioning,
};
use overvisor_deploy::request::NetworkAttachment;
use overvisor_deploy::secret::GeneratedPassword;
use overvisor_deploy::{DeploymentRequest, Profile};
use overvisor_hv::HvError;
use overvisor_hv::libvirt::deploy::VmFiles;
use overvisor_model::InvalidInput;
use overvisor_model::host::{Host, HostFacts, HostId, HostKind};
use overvisor_model::job::{Job, JobQuery};
use overvisor_model::operation::{
    AgentSeed, ChecksumList, DeployImage, DeploySpec, ImageTransfer, Operation, SetupWait,
    vm_target,
};
use overvisor_model::vm::VmName;

use futures::StreamExt;

use crate::audit::Target;
use crate::authz::{Action, Authorized, Resource, Subject, authorize, authorize_owned};
use crate::inventory::{Connectivity, HostLoad};
use crate::metrics::{HostNow, unix_now};
use crate::{App, AppError};

const KIND: &str = "vm.deploy";

/// How long a request waits for the host's facts before giving up.
const PRECHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the deployer gets once: the guest account and its password.
pub struct DeployCredentials {
    pub username: String,
    pub password: GeneratedPassword,
}

/// How far a deployment request has been filled in, in the order the
/// portal's wizard asks for it. Checking a stage checks those before it
/// too; [`DeployStage::Name`] is everything a deployment checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeployStage {
    /// The profile exists and can be deployed.
    Profile,
    /// ... the subject may operate the host, a libvirt host that answers.
    Host,
    /// ... sizes (profile minimum, host CPUs and memory) and the network.
    Size,
    /// ... the name, the guest account, and no VM of that name on the host.
    Name,
}

/// A host as a deployment sees it: what it has, and what its running VMs
/// already take (from the inventory, so as last seen).
#[derive(Debug, Clone)]
pub struct HostCapacity {
    pub facts: HostFacts,
    /// What its active VMs take (their vCPUs may exceed `facts.cpus`:
    /// CPUs are shared, not reserved).
    pub load: HostLoad,
}

impl HostCapacity {
    /// CPUs not given to a running VM (0 when overcommitted).
    pub fn free_cpus(&self) -> u64 {
        self.room().free_cpus
    }

    /// Memory free on the host as its kernel counts it (running guests'
    /// memory taken off), or, if the host does not say, total memory less
    /// that of its running VMs.
    pub fn free_memory_mib(&self) -> u64 {
        self.room().free_memory_mib
    }

    pub fn room(&self) -> HostRoom {
        HostRoom::new(
            self.facts.cpus,
            self.facts.memory_total_mib,
            self.facts.memory_free_mib,
            self.load,
        )
    }
}

/// What a host has free for a new VM: what the wizard's list of hosts
/// shows, from the host's facts or from its latest usage sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRoom {
    pub cpus: u32,
    /// CPUs not given to an active VM (0 when overcommitted).
    pub free_cpus: u64,
    pub memory_total_mib: u64,
    pub free_memory_mib: u64,
    /// Its active VMs, as the inventory last saw them.
    pub running_vms: usize,
}

impl HostRoom {
    /// `free_memory_mib` as the host says; without it, total memory less
    /// that of its active VMs (`load`, as the inventory last saw them).
    fn new(cpus: u32, memory_total_mib: u64, free_memory_mib: Option<u64>, load: HostLoad) -> Self {
        Self {
            cpus,
            free_cpus: u64::from(cpus).saturating_sub(load.vcpus),
            memory_total_mib,
            free_memory_mib: free_memory_mib
                .unwrap_or_else(|| memory_total_mib.saturating_sub(load.memory_mib)),
            running_vms: load.vms,
        }
    }

    /// From the host's latest usage sample, which counts as used what the
    /// facts do not count as free.
    fn sampled(now: HostNow, load: HostLoad) -> Self {
        let free = now.memory_total_bytes.saturating_sub(now.memory_used_bytes);
        Self::new(
            now.cpus,
            now.memory_total_bytes >> 20,
            Some(free >> 20),
            load,
        )
    }
}

/// What the checks of a host found.
struct HostChecked {
    capacity: HostCapacity,
    virt: VirtType,
    media: HostMedia,
}

/// What a profile uses from the host beside the VM's own files: the UEFI
/// build the host has, and every file the job checks again before it
/// makes anything (firmware, installer and driver ISOs, swtpm).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct HostMedia {
    ovmf: Option<Ovmf>,
    files: Vec<String>,
}

/// How many hosts the wizard asks for their facts at once.
const HOSTS_ASKED_AT_ONCE: usize = 16;

impl App {
    /// Checks `req` and submits a `vm.deploy` job on `host`.
    pub async fn vm_deploy_job(
        &self,
        subject: &Subject,
        host: HostId,
        req: &DeploymentRequest,
    ) -> Result<(Job, DeployCredentials), AppError> {
        let authorized = self
            .host_authorized(subject, host, Action::Operate, KIND)
            .await?;
        let req = &self.deploy_request_of(subject, req).await?;
        let checked = async {
            let (image, checked) = self
                .deploy_checked(&authorized, req, DeployStage::Name)
                .await?;
            // Assembles what the stages above accepted.
            let deployment = req.check(&self.config().profiles)?;
            Ok::<_, AppError>((deployment, image, checked))
        }
        .await;
        let (deployment, image, checked) = match checked {
            Ok(c) => c,
            Err(refused) => {
                // A refusal is the deployment's one audit row.
                let target = match overvisor_model::vm::VmName::parse(&req.name) {
                    Ok(vm) => vm_target(host, &vm),
                    Err(_) => format!("host:{host}"),
                };
                let target = Target::named(target, authorized.get().owner);
                return self
                    .audited(subject, KIND, target, None, Err(refused))
                    .await;
            }
        };
        let uuid = uuid::Uuid::new_v4();
        let password = GeneratedPassword::generate();
        let internal = |e: overvisor_deploy::GenerateError| AppError::Internal(e.to_string());
        let agent = deployment.profile.provisioning == Provisioning::Agent;
        // The job's sealed input: cloud-init's user-data (with the hash),
        // the agent's payload (the seed then holds no secret), or an
        // installer's Autounattend.xml (with the password: Windows takes
        // no hash).
        let (secret, meta_data, agent_seed) = if image.is_none() {
            let xml = autounattend_xml(&deployment, &password).map_err(internal)?;
            (xml.into_bytes(), String::new(), None)
        } else if agent {
            let seed = NoCloudSeed::without_secrets(&deployment, uuid).map_err(internal)?;
            let identity = overvisor_provision::GuestIdentity::new(
                uuid,
                overvisor_provision::DeploymentNonce::generate(),
                self.provisioning_key().public(),
            );
            let payload = agent_payload(&deployment, &password).map_err(internal)?;
            let agent_seed = AgentSeed {
                user_data: seed.user_data.clone(),
                identity: identity.to_json(),
            };
            (payload, seed.meta_data, Some(agent_seed))
        } else {
            let seed = NoCloudSeed::new(&deployment, &password, uuid).map_err(internal)?;
            (seed.user_data.clone().into_bytes(), seed.meta_data, None)
        };
        let files = VmFiles::of(&uuid);
        let path =
            |p: &str| HostPath::parse("path", p).map_err(|e| AppError::Internal(e.to_string()));
        let media = &checked.media;
        let uefi = match media.ovmf {
            Some(ovmf) => Some(UefiFiles {
                loader: path(ovmf.code)?,
                vars_template: path(ovmf.vars)?,
                nvram: path(&files.nvram)?,
            }),
            None => None,
        };
        let xml = domain_xml(
            &deployment,
            uuid,
            checked.virt,
            &DomainFiles {
                disk: path(&files.disk)?,
                seed: path(&files.seed)?,
                installer: installer_iso(&deployment.profile).cloned(),
                uefi,
                guest_agent_socket: agent.then(|| path(&files.guest_socket)).transpose()?,
            },
        )
        .map_err(internal)?;
        let op = Operation::VmDeploy {
            host,
            vm: deployment.name.clone(),
            spec: Box::new(DeploySpec {
                uuid,
                profile: deployment.profile.name.as_str().to_owned(),
                image,
                host_files: media.files.clone(),
                disk_gib: deployment.sizing.disk_gib,
                domain_xml: xml,
                meta_data,
                agent: agent_seed,
                setup: deployment.profile.windows.as_ref().map(|w| SetupWait {
                    minutes: w.setup_minutes,
                    agent_expected: w.virtio_win.is_some(),
                }),
            }),
        };
        let grant = authorized.grant(subject, Action::Operate);
        let job = match self.job_submit(grant, op, Some(secret), &[]).await {
            // The store's one-deployment-per-name index: another request
            // for this name queued its job after our checks.
            Err(AppError::Conflict(_)) => {
                self.deploy_not_under_way(host, &deployment.name).await?;
                return Err(AppError::Conflict(format!(
                    "{} is already being deployed on this host",
                    deployment.name
                )));
            }
            submitted => submitted?,
        };
        Ok((
            job,
            DeployCredentials {
                username: deployment.username,
                password,
            },
        ))
    }

    /// Checks `req` as far as `upto` without deploying anything: the
    /// portal's wizard asks this at each step, so every step is refused
    /// exactly as the deployment itself would be. `host` may be `None`
    /// only for [`DeployStage::Profile`]; from [`DeployStage::Host`] on,
    /// the answer is the host's capacity.
    pub async fn vm_deploy_check(
        &self,
        subject: &Subject,
        host: Option<HostId>,
        req: &DeploymentRequest,
        upto: DeployStage,
    ) -> Result<Option<HostCapacity>, AppError> {
        authorize(subject, Action::Operate, Resource::OwnedBy(subject.id()))?;
        if upto == DeployStage::Profile {
            deployable(&self.config().profiles, req)?;
            return Ok(None);
        }
        let host = host.ok_or_else(|| InvalidInput::new("host", "choose a host"))?;
        let authorized = self
            .host_authorized(subject, host, Action::Operate, KIND)
            .await?;
        let req = &self.deploy_request_of(subject, req).await?;
        let (_, checked) = self.deploy_checked(&authorized, req, upto).await?;
        Ok(Some(checked.capacity))
    }

    /// Every profile, each with why it cannot be deployed yet (if so).
    pub fn vm_deploy_profiles(
        &self,
        subject: &Subject,
    ) -> Result<Vec<(Profile, Option<String>)>, AppError> {
        authorize(subject, Action::Operate, Resource::OwnedBy(subject.id()))?;
        Ok(self
            .config()
            .profiles
            .profiles()
            .map(|p| {
                let why = image_of(p, ImageTransfer::Host).err().map(|e| match e {
                    AppError::Invalid(i) => i.message,
                    other => other.to_string(),
                });
                (p.clone(), why)
            })
            .collect())
    }

    /// Every host `subject` may deploy to (its libvirt hosts; an admin's:
    /// everyone's), by name, each with what it has free or why that is not
    /// known. A host with a current usage sample is answered from it (every
    /// replica has every host's samples), without asking the host; the
    /// others this replica holds the connection of are asked at once (a
    /// few at a time), each within the time a deployment gives it.
    /// `Ok(None)`: another replica holds the connection and no sample is
    /// current (sampling is off, or the host just connected); the steps
    /// after choosing it are the owner's.
    pub async fn vm_deploy_hosts(
        &self,
        subject: &Subject,
    ) -> Result<Vec<(Host, Result<Option<HostRoom>, AppError>)>, AppError> {
        authorize(subject, Action::Operate, Resource::OwnedBy(subject.id()))?;
        let hosts = self.hosts_list(subject).await?;
        let now = unix_now();
        let asked = hosts
            .into_iter()
            .filter(|h| h.kind == HostKind::Libvirt)
            .filter_map(|h| authorize_owned(subject, Action::Operate, h).ok())
            .map(|host| async move {
                let room = self.deploy_host_room(&host, now).await;
                (host.into_inner(), room)
            });
        let mut answers: Vec<_> = futures::stream::iter(asked)
            .buffered(HOSTS_ASKED_AT_ONCE)
            .collect()
            .await;
        answers.sort_by(|(a, _), (b, _)| a.name.cmp(&b.name));
        Ok(answers)
    }

    /// What `host` has free, for [`Self::vm_deploy_hosts`].
    async fn deploy_host_room(
        &self,
        host: &Authorized<Host>,
        now: u64,
    ) -> Result<Option<HostRoom>, AppError> {
        let h = host.get();
        let status = self.inventory().host_status(h.id);
        let connected = status
            .as_ref()
            .is_some_and(|s| s.status == Connectivity::Connected);
        let load = self.inventory().host_load(h.id);
        if connected && let Some(sampled) = self.metrics().host_now(h.id, now) {
            return Ok(Some(HostRoom::sampled(sampled, load)));
        }
        if self.replicas().owns(h.id) {
            let (capacity, ..) = self.deploy_host_look(host, None, &[]).await?;
            return Ok(Some(capacity.room()));
        }
        match status {
            Some(s) if s.status == Connectivity::Disconnected => {
                Err(AppError::HostUnreachable(match s.last_error {
                    Some(why) => format!("host {} is not connected: {why}", h.name),
                    None => format!("host {} is not connected", h.name),
                }))
            }
            _ => Ok(None),
        }
    }

    /// The checks of every stage up to `upto`, in order: first those of the
    /// request alone (the profile's rules), then the host's. Answers the
    /// image the profile pins and what the host offers.
    async fn deploy_checked(
        &self,
        host: &Authorized<Host>,
        req: &DeploymentRequest,
        upto: DeployStage,
    ) -> Result<(Option<DeployImage>, HostChecked), AppError> {
        let (profile, image) = deployable(&self.config().profiles, req)?;
        let sizing = (upto >= DeployStage::Size)
            .then(|| req.check_sizing(profile))
            .transpose()?;
        let name = if upto >= DeployStage::Name {
            let name = req.check_name(profile)?;
            req.check_account(profile)?;
            Some(name.name)
        } else {
            None
        };
        let wanted = host_needs(profile);
        let (capacity, kvm, taken, found) =
            self.deploy_host_look(host, name.as_ref(), &wanted).await?;
        let media = host_media(profile, &found)?;
        if let Some(name) = &name {
            if taken {
                return Err(AppError::Conflict(format!(
                    "a VM named {name} already exists on this host"
                )));
            }
            self.deploy_not_under_way(host.get().id, name).await?;
        }
        if let Some(sizing) = &sizing {
            host_fits(&capacity.facts, sizing, &req.network)?;
        }
        let virt = if kvm && !self.config().deploy_emulated {
            VirtType::Kvm
        } else {
            VirtType::Qemu
        };
        Ok((
            image,
            HostChecked {
                capacity,
                virt,
                media,
            },
        ))
    }

    /// No other deployment of `name` on `host` is queued or running: the
    /// host knows the name only from that job's `define` step on (a form
    /// sent twice would otherwise start two).
    async fn deploy_not_under_way(&self, host: HostId, name: &VmName) -> Result<(), AppError> {
        let query = JobQuery {
            kind: Some(KIND.to_owned()),
            target: Some(vm_target(host, name)),
            limit: 10,
            ..JobQuery::default()
        };
        let jobs = self.store().job_list(&query).await?;
        match jobs.iter().find(|job| !job.status.is_terminal()) {
            Some(job) => Err(AppError::Conflict(format!(
                "{name} is already being deployed on this host (job {})",
                job.id
            ))),
            None => Ok(()),
        }
    }

    /// Asks a libvirt host for its facts, whether it has KVM, (given a
    /// name) whether a VM of that name exists, and which of the `files`
    /// it has readable, within [`PRECHECK_TIMEOUT`].
    async fn deploy_host_look(
        &self,
        host: &Authorized<Host>,
        name: Option<&VmName>,
        files: &[&str],
    ) -> Result<(HostCapacity, bool, bool, Vec<String>), AppError> {
        let err = |e: HvError| self.host_error(host.get(), e);
        // Connecting counts too: a dead host must not hold a page of hosts.
        let asked = async {
            let driver = self.host_driver(host).await?;
            let lv = driver.as_libvirt().ok_or_else(|| {
                AppError::Conflict("deployments are supported on libvirt hosts only".into())
            })?;
            futures::try_join!(
                driver.host_facts(),
                lv.has_kvm(),
                async {
                    let Some(name) = name else { return Ok(false) };
                    // One `list` on the kept virsh, not a virsh per name.
                    let names = lv.domain_names().await?;
                    Ok(names.iter().any(|n| n == name.as_str()))
                },
                async {
                    if files.is_empty() {
                        return Ok(Vec::new());
                    }
                    lv.readable_files(files).await
                }
            )
            .map_err(err)
        };
        let (facts, kvm, taken, found) = tokio::time::timeout(PRECHECK_TIMEOUT, asked)
            .await
            .map_err(|_| err(HvError::Timeout(PRECHECK_TIMEOUT)))??;
        let capacity = HostCapacity {
            facts,
            load: self.inventory().host_load(host.get().id),
        };
        Ok((capacity, kvm, taken, found))
    }
}

/// What the guest agent applies: the account with the password's hash
/// and the keys, as cloud-init would have.
fn agent_payload(
    deployment: &overvisor_deploy::Deployment,
    password: &GeneratedPassword,
) -> Result<Vec<u8>, overvisor_deploy::GenerateError> {
    let payload = overvisor_provision::Payload {
        hostname: deployment.hostname.clone(),
        users: vec![overvisor_provision::payload::User {
            name: deployment.username.clone(),
            password_hash: Some(password.sha512_crypt()?),
            authorized_keys: deployment.ssh_keys.clone(),
            sudo: true,
        }],
        files: Vec::new(),
        network: None,
    };
    Ok(serde_json::to_vec(&payload)?)
}

/// What the host must offer: enough CPUs and memory in all (a VM may be
/// started later on a host that is full now), and the network.
fn host_fits(
    facts: &HostFacts,
    sizing: &overvisor_deploy::profile::Sizing,
    network: &NetworkAttachment,
) -> Result<(), AppError> {
    if sizing.vcpus > facts.cpus {
        return Err(InvalidInput::new(
            "vcpus",
            format!("must be at most {}, the host's CPUs", facts.cpus),
        )
        .into());
    }
    if sizing.memory_mib > facts.memory_total_mib {
        return Err(InvalidInput::new(
            "memory_mib",
            format!(
                "must be at most {}, the host's memory in MiB",
                facts.memory_total_mib
            ),
        )
        .into());
    }
    let (found, kind, name) = match network {
        NetworkAttachment::Bridge(b) => (facts.bridges.contains(b), "bridge", b),
        NetworkAttachment::Network(n) => (facts.networks.contains(n), "libvirt network", n),
    };
    if !found {
        return Err(
            InvalidInput::new("network", format!("the host has no {kind} named {name:?}")).into(),
        );
    }
    Ok(())
}

/// The profile `req` names, if it can be deployed, with its image
/// (`None`: an installer profile).
fn deployable<'c>(
    catalog: &'c overvisor_deploy::Catalog,
    req: &DeploymentRequest,
) -> Result<(&'c Profile, Option<DeployImage>), AppError> {
    let profile = req.profile_in(catalog)?;
    let transfer = req.check_transfer(profile)?;
    Ok((profile, image_of(profile, transfer.unwrap_or_default())?))
}

/// The image a deployment downloads: a disk image verified by a pinned
/// SHA-256 or a published checksum list. An installer profile (an ISO on
/// the host) has none: its disk starts blank.
fn image_of(profile: &Profile, transfer: ImageTransfer) -> Result<Option<DeployImage>, AppError> {
    let refuse = |why: &str| InvalidInput::new("profile", why.to_owned());
    let (url, checksum, ca_file) = match (&profile.image.source, profile.image.format) {
        (ImageSource::HostFile { .. }, ImageFormat::Iso) => return Ok(None),
        (ImageSource::HostFile { .. }, _) => {
            return Err(refuse("disk images on the host cannot be deployed yet").into());
        }
        (ImageSource::Download { .. }, ImageFormat::Iso) => {
            return Err(refuse("installer ISOs are not downloaded: give their host_path").into());
        }
        (
            ImageSource::Download {
                url,
                checksum,
                ca_file,
                ..
            },
            _,
        ) => (url, checksum, ca_file),
    };
    let (sha256, checksums) = match checksum {
        ImageChecksum::Sha256 { hex } => (Some(hex.clone()), None),
        ImageChecksum::List { url, algorithm } => (
            None,
            Some(ChecksumList {
                url: url.clone(),
                algorithm: *algorithm,
            }),
        ),
    };
    Ok(Some(DeployImage {
        url: url.clone(),
        sha256,
        checksums,
        ca_file: ca_file.as_ref().map(|p| p.as_str().to_owned()),
        format: profile.image.format.as_str().to_owned(),
        transfer,
    }))
}

/// The installer ISO an installer profile boots from, on the host.
fn installer_iso(profile: &Profile) -> Option<&HostPath> {
    match (&profile.image.format, &profile.image.source) {
        (ImageFormat::Iso, ImageSource::HostFile { path }) => Some(path),
        _ => None,
    }
}

/// The files the host must have for `profile`, to ask it which it has:
/// every known UEFI build, swtpm, the installer and driver ISOs.
fn host_needs(profile: &Profile) -> Vec<&str> {
    // Pushed one by one: the known paths are `'static`, the profile's not.
    let mut files: Vec<&str> = Vec::new();
    if profile.firmware == Firmware::Uefi {
        firmware::all_paths().for_each(|f| files.push(f));
    }
    if profile.tpm {
        firmware::SWTPM.iter().for_each(|f| files.push(f));
    }
    files.extend(installer_iso(profile).map(HostPath::as_str));
    files.extend(
        profile
            .windows
            .as_ref()
            .and_then(|w| w.virtio_win.as_ref())
            .map(|v| v.iso.as_str()),
    );
    files
}

/// What `profile` uses on a host that has the readable files `found`, or
/// which of them the host lacks (field `host`: the wizard shows it on the
/// host step).
fn host_media(profile: &Profile, found: &[String]) -> Result<HostMedia, InvalidInput> {
    let has = |f: &str| found.iter().any(|g| g == f);
    let lacks = |why: String| InvalidInput::new("host", why);
    let mut media = HostMedia::default();
    if profile.firmware == Firmware::Uefi {
        let ovmf = firmware::choose(profile.secure_boot, has)
            .ok_or_else(|| lacks(firmware::missing(profile.secure_boot)))?;
        media
            .files
            .extend([ovmf.code.to_owned(), ovmf.vars.to_owned()]);
        media.ovmf = Some(ovmf);
    }
    if profile.tpm {
        if !firmware::SWTPM.iter().all(|f| has(f)) {
            return Err(lacks(
                "has no swtpm for the profile's TPM: install the swtpm and swtpm-tools packages"
                    .into(),
            ));
        }
        media.files.extend(firmware::SWTPM.map(str::to_owned));
    }
    let isos = host_needs(profile).into_iter().filter(|f| {
        !firmware::all_paths()
            .chain(firmware::SWTPM)
            .any(|k| k == *f)
    });
    for iso in isos {
        if !has(iso) {
            return Err(lacks(format!(
                "has no readable {iso}, which the profile installs from: put it there (readable by the host's automation user)"
            )));
        }
        media.files.push(iso.to_owned());
    }
    Ok(media)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(name: &str) -> Profile {
        overvisor_deploy::Catalog::builtin()
            .expect("built-ins")
            .get(name)
            .expect("built-in profile")
            .clone()
    }

    fn found(files: &[&str]) -> Vec<String> {
        files.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn a_bios_disk_image_needs_nothing_from_the_host() {
        let debian = builtin("debian-12");
        assert!(host_needs(&debian).is_empty());
        assert_eq!(host_media(&debian, &[]).expect("ok"), HostMedia::default());
        assert!(
            image_of(&debian, ImageTransfer::Host)
                .expect("deployable")
                .is_some()
        );
    }

    #[test]
    fn windows_needs_secure_boot_firmware_swtpm_and_its_installer() {
        let windows = builtin("windows-server-2022");
        assert_eq!(
            image_of(&windows, ImageTransfer::Host).expect("deployable"),
            None
        );
        let iso = "/var/lib/overvisor/iso/windows-server-2022.iso";
        let needs = host_needs(&windows);
        assert!(needs.contains(&iso) && needs.contains(&"/usr/bin/swtpm"));
        let debian_host = [
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
            "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
            "/usr/bin/swtpm",
            "/usr/bin/swtpm_setup",
            iso,
        ];
        let media = host_media(&windows, &found(&debian_host)).expect("all there");
        let ovmf = media.ovmf.expect("firmware");
        assert!(ovmf.secure_boot && ovmf.code.ends_with("secboot.fd"));
        assert_eq!(media.files.len(), 5, "{media:?}");
        assert!(media.files.iter().any(|f| f == iso));
        // Each missing piece is named, on the host field.
        for (gone, says) in [
            ("/usr/share/OVMF/OVMF_VARS_4M.ms.fd", "Secure Boot"),
            ("/usr/bin/swtpm_setup", "swtpm"),
            (iso, iso),
        ] {
            let rest: Vec<&str> = debian_host.iter().copied().filter(|f| *f != gone).collect();
            let refused = host_media(&windows, &found(&rest)).expect_err(gone);
            assert_eq!(refused.field, "host");
            assert!(refused.message.contains(says), "{refused:?}");
        }
    }

    #[test]
    fn a_host_has_as_much_room_by_its_sample_as_by_its_facts() {
        let load = HostLoad {
            vms: 3,
            vcpus: 6,
            memory_mib: 3072,
        };
        let sampled = HostRoom::sampled(
            HostNow {
                cpus: 4,
                memory_total_bytes: 16 << 30,
                memory_used_bytes: 5 << 30,
            },
            load,
        );
        let room = HostRoom {
            cpus: 4,
            free_cpus: 0,
            memory_total_mib: 16 << 10,
            free_memory_mib: 11 << 10,
            running_vms: 3,
        };
        assert_eq!(sampled, room);
        let facts = HostFacts {
            cpus: 4,
            memory_total_mib: 16 << 10,
            memory_free_mib: Some(11 << 10),
            ..HostFacts::default()
        };
        let capacity = HostCapacity { facts, load };
        assert_eq!(capacity.room(), room);
        // A host that does not say what is free: its total less its VMs'.
        let capacity = HostCapacity {
            facts: HostFacts {
                memory_free_mib: None,
                ..capacity.facts
            },
            load: HostLoad { vcpus: 1, ..load },
        };
        assert_eq!(capacity.free_memory_mib(), (16 << 10) - 3072);
        assert_eq!(capacity.free_cpus(), 3);
    }
}
