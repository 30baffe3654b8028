//! `vm.deploy` as steps: `image` (first the host files the VM uses —
//! firmware, installer ISOs — are checked readable; then the image into
//! the host's cache, verified), `overlay` (the VM's disk on the cached
//! image; blank for an installer), `seed` (the NoCloud ISO, or the
//! `Autounattend.xml` media for an installer, built here and uploaded),
//! `define`, `start`. Every step is idempotent, so a job whose runner died
//! resumes where it stopped:
//! - `image` is resumed from the host's partial file (by curl's `-C -`, or,
//!   when the control plane streams the image over the SSH connection, by
//!   sending from the partial file's size on) under the host's lock per
//!   checksum; a cached image is never fetched or sent again;
//! - `overlay` and `seed` are rewritten whole (nothing uses them before the
//!   domain is defined);
//! - `define` redefines the same UUID; `start` first checks the state.
//!
//! An agent-provisioned deployment has a sixth step, `provision`
//! (`operations/provision.rs`): the guest agent's key, the sealed payload
//! delivered, applied. An installer's sixth step is `setup`
//! (`operations/setup.rs`): wait for Setup to finish, then detach and
//! delete the Autounattend media. Neither has an undo of its own: `start`'s
//! stops the VM.
//!
//! Undo, in reverse: `start` → destroy, `define` → undefine (with the UEFI
//! variable store and the TPM state libvirt made at the start), `overlay`
//! → remove the VM's directory (disk, seed, XML, variable store). The cache stays. `image`
//! and `seed` have no undo of their own: the cache is meant to stay, and the
//! seed lives in the directory `overlay`'s undo removes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use overvisor_hv::libvirt::deploy::{FetchProgress, Fetched, ImageReceive, VmFiles};
use overvisor_hv::{HvError, LibvirtDriver};
use overvisor_model::host::HostId;
use overvisor_model::operation::{
    DeployImage, DeploySpec, DigestAlgorithm, ImageDigest, ImageTransfer,
};
use overvisor_model::vm::{VmName, VmState};

use super::{StepCx, StepDef, StepResult};
use crate::jobs::JobError;

const STEPS: [StepDef; 5] = [
    StepDef {
        name: "image",
        has_undo: false,
    },
    StepDef {
        name: "overlay",
        has_undo: true,
    },
    StepDef {
        name: "seed",
        has_undo: false,
    },
    StepDef {
        name: "define",
        has_undo: true,
    },
    StepDef {
        name: "start",
        has_undo: true,
    },
];

/// The steps of a deployment: [`STEPS`], then `provision` when the guest
/// agent receives the secrets, or `setup` when an installer's media is
/// removed once Setup finished.
pub fn steps(spec: &DeploySpec) -> Vec<StepDef> {
    let mut steps = STEPS.to_vec();
    if spec.agent.is_some() {
        steps.push(StepDef {
            name: super::provision::STEP,
            has_undo: false,
        });
    }
    if spec.setup.is_some() {
        steps.push(StepDef {
            name: super::setup::STEP,
            has_undo: false,
        });
    }
    steps
}

/// How often download progress is written to the job.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The libvirt driver of the job's host.
async fn libvirt(cx: &StepCx<'_>, host: HostId) -> Result<Runner, JobError> {
    let (host, driver) = cx.host_driver(host).await?;
    if driver.as_libvirt().is_none() {
        return Err(JobError::new("deployments need a libvirt host"));
    }
    Ok(Runner { host, driver })
}

struct Runner {
    host: crate::authz::Authorized<overvisor_model::host::Host>,
    driver: Arc<dyn overvisor_hv::Hypervisor>,
}

impl Runner {
    fn lv(&self) -> &LibvirtDriver {
        // Checked in `libvirt` above.
        self.driver.as_libvirt().unwrap_or_else(|| unreachable!())
    }
}

pub async fn run(
    cx: &StepCx<'_>,
    host: HostId,
    vm: &VmName,
    spec: &DeploySpec,
    index: u16,
    secret: Option<&[u8]>,
) -> StepResult {
    let r = libvirt(cx, host).await?;
    let files = VmFiles::of(&spec.uuid);
    let fail = |e: HvError| cx.host_failure(&r.host, e);
    let lv = r.lv();
    match index {
        0 => {
            host_files_present(cx, lv, spec)
                .await
                .map_err(|e| e.into_job(cx, &r))?;
            match &spec.image {
                Some(image) => fetch_image(cx, lv, spec, image)
                    .await
                    .map_err(|e| e.into_job(cx, &r)),
                None => Ok(None),
            }
        }
        1 => {
            let base = match &spec.image {
                Some(image) => Some((
                    image_digest(spec, cx.outputs).ok_or_else(|| {
                        JobError::new("the image step did not say which image it cached")
                    })?,
                    image.format.as_str(),
                )),
                None => None,
            };
            let base_ref = base.as_ref().map(|(d, f)| (d, *f));
            lv.overlay_create(&files, base_ref, spec.disk_gib)
                .await
                .map_err(fail)?;
            let what = if base.is_some() {
                "overlay"
            } else {
                "blank disk"
            };
            cx.info(format!("{what} {} ({} GiB)", files.disk, spec.disk_gib))
                .await;
            Ok(None)
        }
        2 if spec.image.is_none() => {
            // An installer's seed: Autounattend.xml, which holds the
            // Administrator's password (Windows takes no hash), readable
            // by the host's libvirt group only.
            let xml = secret
                .ok_or_else(|| JobError::new("the job's sealed Autounattend.xml is missing"))?;
            let iso = overvisor_deploy::iso::build(
                overvisor_deploy::autounattend::VOLUME_ID,
                &[(overvisor_deploy::autounattend::FILE_NAME, xml)],
            )
            .map_err(|e| JobError::new(format!("cannot build the seed: {e}")))?;
            lv.upload_private(&files.seed, &iso).await.map_err(fail)?;
            cx.info(format!(
                "Autounattend media {} ({} bytes)",
                files.seed,
                iso.len()
            ))
            .await;
            Ok(None)
        }
        2 => {
            // Agent provisioning: the seed holds public values only, and
            // the job's secret is the payload the `provision` step seals.
            let files_on_seed = match &spec.agent {
                Some(agent) => vec![
                    ("meta-data", spec.meta_data.as_bytes()),
                    ("user-data", agent.user_data.as_bytes()),
                    (
                        overvisor_provision::wire::IDENTITY_FILE,
                        agent.identity.as_bytes(),
                    ),
                ],
                None => {
                    let user_data = secret
                        .ok_or_else(|| JobError::new("the job's sealed user-data is missing"))?;
                    vec![
                        ("meta-data", spec.meta_data.as_bytes()),
                        ("user-data", user_data),
                    ]
                }
            };
            let iso = overvisor_deploy::iso::build(
                overvisor_deploy::cloud_init::VOLUME_ID,
                &files_on_seed,
            )
            .map_err(|e| JobError::new(format!("cannot build the seed: {e}")))?;
            lv.upload(&files.seed, &iso).await.map_err(fail)?;
            cx.info(format!("seed {} ({} bytes)", files.seed, iso.len()))
                .await;
            Ok(None)
        }
        3 => {
            let xml = format!("{}/domain.xml", files.dir);
            lv.define_xml(&xml, &spec.domain_xml).await.map_err(fail)?;
            cx.info(format!("defined {vm}")).await;
            Ok(None)
        }
        5 if let Some(wait) = spec.setup => {
            super::setup::wait_then_remove_media(cx, lv, vm, spec, wait, fail).await
        }
        5 => super::provision::deliver(cx, lv, &files, spec, secret)
            .await
            .map_err(|e| match e {
                super::provision::Failure::Host(e) => fail(e),
                super::provision::Failure::Job(e) => e,
            }),
        _ => {
            // A resumed start may find the VM running already; a fresh one
            // was defined just now, shut off.
            let running =
                cx.resumed && r.driver.vm_state(vm).await.map_err(fail)? == VmState::Running;
            if !running {
                r.driver.start(vm).await.map_err(fail)?;
            }
            let state = lv.state_by_uuid(spec.uuid).await.map_err(fail)?;
            cx.info(format!("{vm} is {state}")).await;
            Ok(Some(
                serde_json::json!({ "state": state, "uuid": spec.uuid }),
            ))
        }
    }
}

/// Checks the files the VM uses from the host (firmware, installer media)
/// are there and readable, before anything is made for it.
async fn host_files_present(
    cx: &StepCx<'_>,
    lv: &LibvirtDriver,
    spec: &DeploySpec,
) -> Result<(), ImageError> {
    if spec.host_files.is_empty() {
        return Ok(());
    }
    let wanted: Vec<&str> = spec.host_files.iter().map(String::as_str).collect();
    let found = lv.readable_files(&wanted).await?;
    let missing: Vec<&str> = wanted
        .into_iter()
        .filter(|f| !found.iter().any(|g| g == f))
        .collect();
    if !missing.is_empty() {
        return Err(ImageError::Refused(format!(
            "the host has no readable {}",
            missing.join(", ")
        )));
    }
    cx.info(format!("the host has {}", spec.host_files.join(", ")))
        .await;
    Ok(())
}

/// Why the image step failed: the host, or what it found there (a
/// checksum list without the image, a file the VM needs missing).
enum ImageError {
    Host(HvError),
    Refused(String),
}

impl From<HvError> for ImageError {
    fn from(e: HvError) -> Self {
        Self::Host(e)
    }
}

impl ImageError {
    fn into_job(self, cx: &StepCx<'_>, r: &Runner) -> JobError {
        match self {
            Self::Host(e) => cx.host_failure(&r.host, e),
            Self::Refused(why) => JobError::new(why),
        }
    }
}

/// The digest the image is verified with and cached under: the profile's
/// pinned SHA-256, or what the `image` step read from the published
/// checksum list (its output, so a resumed job reads the same one).
pub fn image_digest(
    spec: &DeploySpec,
    outputs: &[Option<serde_json::Value>],
) -> Option<ImageDigest> {
    if let Some(hex) = spec.image.as_ref().and_then(|i| i.sha256.as_ref()) {
        return Some(ImageDigest {
            algorithm: DigestAlgorithm::Sha256,
            hex: hex.clone(),
        });
    }
    let out = outputs.first()?.as_ref()?;
    serde_json::from_value(out.get("digest")?.clone()).ok()
}

/// Reads the image's digest from the profile's published list, fetched
/// the way the image comes (by the host, or by the control plane).
async fn digest_from_list(
    cx: &StepCx<'_>,
    lv: &LibvirtDriver,
    image: &DeployImage,
) -> Result<ImageDigest, ImageError> {
    let Some(list) = &image.checksums else {
        return Err(ImageError::Refused(
            "the image has neither a pinned sha256 nor a checksum list".into(),
        ));
    };
    let text = match image.transfer {
        ImageTransfer::Host => lv.fetch_text(&list.url, image.ca_file.as_deref()).await?,
        ImageTransfer::Stream => cx
            .app
            .images()
            .text(&list.url)
            .await
            .map_err(|e| ImageError::Refused(e.to_string()))?,
    };
    // The profile's check made sure the URL ends in the file's name.
    let file = image.url.rsplit('/').next().unwrap_or_default();
    let hex = overvisor_deploy::checksum_list::digest_of(&text, file, list.algorithm)
        .map_err(|e| ImageError::Refused(format!("{e} ({})", list.url)))?;
    cx.info(format!(
        "{} gives {file} the {} {hex}",
        list.url,
        list.algorithm.as_str()
    ))
    .await;
    Ok(ImageDigest {
        algorithm: list.algorithm,
        hex,
    })
}

/// Fetches the image, writing progress (bytes) to the step as it goes.
async fn fetch_image(
    cx: &StepCx<'_>,
    lv: &LibvirtDriver,
    spec: &DeploySpec,
    image: &DeployImage,
) -> Result<Option<serde_json::Value>, ImageError> {
    let digest = match image_digest(spec, &[]) {
        Some(pinned) => pinned,
        None => digest_from_list(cx, lv, image).await?,
    };
    let total = AtomicU64::new(0);
    let have = AtomicU64::new(0);
    let from = AtomicU64::new(0);
    let report = |p| match p {
        FetchProgress::Total(n) => total.store(n, Ordering::Relaxed),
        FetchProgress::Have(n) => have.store(n, Ordering::Relaxed),
        FetchProgress::From(n) => {
            from.store(n, Ordering::Relaxed);
            have.store(n, Ordering::Relaxed);
        }
    };
    let fetch = async {
        match image.transfer {
            ImageTransfer::Host => lv
                .image_fetch(&image.url, &digest, image.ca_file.as_deref(), report)
                .await
                .map_err(ImageError::Host),
            ImageTransfer::Stream => stream_image(cx, lv, image, &digest, report).await,
        }
    };
    tokio::pin!(fetch);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut shown = None;
    let outcome = loop {
        tokio::select! {
            r = &mut fetch => break r,
            _ = tick.tick() => {
                let (t, h) = (total.load(Ordering::Relaxed), have.load(Ordering::Relaxed));
                if t > 0 && shown != Some(h) {
                    shown = Some(h);
                    cx.progress(percent(h, t)).await;
                }
            }
        }
    }?;
    let bytes = have.load(Ordering::Relaxed);
    let cached = outcome == Fetched::Cached;
    if cached {
        cx.info(format!("image {} is cached", digest.hex)).await;
    } else {
        cx.info(format!(
            "image {} {} and verified ({bytes} bytes)",
            digest.hex,
            match image.transfer {
                ImageTransfer::Host => "downloaded by the host",
                ImageTransfer::Stream => "streamed to the host",
            }
        ))
        .await;
    }
    cx.progress(100).await;
    Ok(Some(serde_json::json!({
        "digest": digest,
        "cached": cached,
        "transfer": image.transfer,
        "bytes": bytes,
        "total": total.load(Ordering::Relaxed),
        "resumed_from": from.load(Ordering::Relaxed),
    })))
}

/// The control plane's way: unless the host has the image cached, the
/// image comes from the control plane's own cache (downloaded there once)
/// over the host's SSH connection, from what the host already has on.
async fn stream_image(
    cx: &StepCx<'_>,
    lv: &LibvirtDriver,
    image: &DeployImage,
    digest: &ImageDigest,
    mut progress: impl FnMut(FetchProgress),
) -> Result<Fetched, ImageError> {
    let sender = match lv.image_receive(digest).await? {
        ImageReceive::Done(done) => return Ok(done),
        ImageReceive::Wanted(sender) => sender,
    };
    let (path, size) = cx
        .app
        .images()
        .image(&image.url, digest, &mut progress)
        .await
        .map_err(|e| ImageError::Refused(e.to_string()))?;
    cx.info(format!(
        "streaming {size} bytes to the host, from byte {}",
        sender.have().min(size)
    ))
    .await;
    Ok(sender.send(&path, size, progress).await?)
}

pub(super) fn percent(have: u64, total: u64) -> u8 {
    let p = u128::from(have.min(total)) * 100 / u128::from(total.max(1));
    u8::try_from(p).unwrap_or(100)
}

pub async fn undo(
    cx: &StepCx<'_>,
    host: HostId,
    vm: &VmName,
    spec: &DeploySpec,
    index: u16,
) -> Result<(), JobError> {
    let r = libvirt(cx, host).await?;
    let fail = |e: HvError| cx.host_failure(&r.host, e);
    let lv = r.lv();
    match index {
        1 => {
            let files = VmFiles::of(&spec.uuid);
            lv.vm_files_remove(&files).await.map_err(fail)?;
            cx.info(format!("removed {}", files.dir)).await;
        }
        3 => {
            lv.undefine_if_defined(vm).await.map_err(fail)?;
            cx.info(format!("undefined {vm}")).await;
        }
        4 => {
            lv.destroy_if_running(vm).await.map_err(fail)?;
            cx.info(format!("stopped {vm}")).await;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_bounded() {
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(50, 100), 50);
        assert_eq!(percent(200, 100), 100);
        assert_eq!(percent(u64::MAX / 2, u64::MAX / 2), 100);
    }
}
