//! Deployments: a checked request becomes a `vm.deploy` job
//! (`operations/deploy.rs` runs it). Everything is decided before the job
//! exists: the subject may operate the host, the request passes the
//! profile's checks, the host has the network, the CPUs and the memory, no
//! VM has the name. The guest's password is generated here and leaves only
//! in the answer to this one request: the seed carries its SHA-512-crypt
//! hash, and that user-data is sealed to the job's row.

use overvisor_deploy::cloud_init::NoCloudSeed;
use overvisor_deploy::domain::{DomainFiles, VirtType, domain_xml};
use overvisor_deploy::profile::{Firmware, HostPath, ImageChecksum, ImageFormat, ImageSource};
use overvisor_deploy::request::NetworkAttachment;
use overvisor_deploy::secret::GeneratedPassword;
use overvisor_deploy::{Deployment, DeploymentRequest};
use overvisor_hv::HvError;
use overvisor_hv::libvirt::deploy::VmFiles;
use overvisor_model::InvalidInput;
use overvisor_model::host::HostId;
use overvisor_model::job::Job;
use overvisor_model::operation::{DeployImage, DeploySpec, Operation, vm_target};

use crate::audit::Target;
use crate::authz::{Action, Subject};
use crate::{App, AppError};

const KIND: &str = "vm.deploy";

/// How long a request waits for the host's facts before giving up.
const PRECHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the deployer gets once: the guest account and its password.
pub struct DeployCredentials {
    pub username: String,
    pub password: GeneratedPassword,
}

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
        let checked = async {
            let deployment = req.check(&self.config().profiles)?;
            let image = image_of(&deployment)?;
            let virt = self.deploy_host_check(&authorized, &deployment).await?;
            Ok::<_, AppError>((deployment, image, virt))
        }
        .await;
        let (deployment, image, virt) = match checked {
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
        let seed = NoCloudSeed::new(&deployment, &password, uuid).map_err(internal)?;
        let files = VmFiles::of(&uuid);
        let path =
            |p: &str| HostPath::parse("path", p).map_err(|e| AppError::Internal(e.to_string()));
        let xml = domain_xml(
            &deployment,
            uuid,
            virt,
            &DomainFiles {
                disk: path(&files.disk)?,
                seed: path(&files.seed)?,
                installer: None,
                uefi: None,
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
                disk_gib: deployment.sizing.disk_gib,
                domain_xml: xml,
                meta_data: seed.meta_data.clone(),
            }),
        };
        let grant = authorized.grant(subject, Action::Operate);
        let job = self
            .job_submit(grant, op, Some(seed.user_data.into_bytes()), &[])
            .await?;
        Ok((
            job,
            DeployCredentials {
                username: deployment.username,
                password,
            },
        ))
    }

    /// What the host must offer: the network, enough CPUs and memory, and
    /// no VM of that name. Answers how the guest is virtualized there.
    async fn deploy_host_check(
        &self,
        host: &crate::authz::Authorized<overvisor_model::host::Host>,
        deployment: &Deployment,
    ) -> Result<VirtType, AppError> {
        let driver = self.host_driver(host).await?;
        let lv = driver.as_libvirt().ok_or_else(|| {
            AppError::Conflict("deployments are supported on libvirt hosts only".into())
        })?;
        let err = |e: HvError| self.host_error(host.get(), e);
        let asked = async {
            futures::try_join!(driver.host_facts(), lv.has_kvm(), async {
                match driver.vm_state(&deployment.name).await {
                    Err(HvError::NotFound(_)) => Ok(false),
                    Ok(_) => Ok(true),
                    Err(e) => Err(e),
                }
            })
        };
        let (facts, kvm, taken) = tokio::time::timeout(PRECHECK_TIMEOUT, asked)
            .await
            .map_err(|_| err(HvError::Timeout(PRECHECK_TIMEOUT)))?
            .map_err(err)?;
        if taken {
            return Err(AppError::Conflict(format!(
                "a VM named {} already exists on this host",
                deployment.name
            )));
        }
        let sizing = &deployment.sizing;
        if sizing.vcpus > facts.cpus {
            return Err(
                InvalidInput::new("vcpus", format!("the host has {} CPUs", facts.cpus)).into(),
            );
        }
        if sizing.memory_mib > facts.memory_total_mib {
            return Err(InvalidInput::new(
                "memory_mib",
                format!("the host has {} MiB", facts.memory_total_mib),
            )
            .into());
        }
        let (found, kind, name) = match &deployment.network {
            NetworkAttachment::Bridge(b) => (facts.bridges.contains(b), "bridge", b),
            NetworkAttachment::Network(n) => (facts.networks.contains(n), "libvirt network", n),
        };
        if !found {
            return Err(InvalidInput::new(
                "network",
                format!("the host has no {kind} named {name:?}"),
            )
            .into());
        }
        Ok(if kvm && !self.config().deploy_emulated {
            VirtType::Kvm
        } else {
            VirtType::Qemu
        })
    }
}

/// The image a deployment downloads, if the profile pins one this job can
/// fetch (a SHA-256 and a disk image; BIOS firmware).
fn image_of(deployment: &Deployment) -> Result<DeployImage, AppError> {
    let profile = &deployment.profile;
    let refuse = |why: &str| InvalidInput::new("profile", why.to_owned());
    if profile.firmware != Firmware::Bios {
        return Err(refuse("UEFI profiles cannot be deployed yet").into());
    }
    let format = match profile.image.format {
        ImageFormat::Qcow2 => "qcow2",
        ImageFormat::Raw => "raw",
        ImageFormat::Iso => return Err(refuse("installer profiles cannot be deployed yet").into()),
    };
    match &profile.image.source {
        ImageSource::Download {
            url,
            checksum: ImageChecksum::Sha256 { hex },
        } => Ok(DeployImage {
            url: url.clone(),
            sha256: hex.clone(),
            format: format.to_owned(),
        }),
        ImageSource::Download { .. } => Err(refuse(
            "profiles verified by a published checksum list cannot be deployed yet; pin a sha256",
        )
        .into()),
        ImageSource::HostFile { .. } => {
            Err(refuse("profiles with an image on the host cannot be deployed yet").into())
        }
    }
}
