//! Unit tests of the host registry, the connection registry and VM actions
//! on a real (temporary) SQLite store, with a fake driver factory standing
//! in for SSH. The real thing is tested against the lab in the CLI's tests.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use overvisor_hv::{ClientKey, HvError, HvResult, Hypervisor, PresentedHostKey, SshError};
use overvisor_model::account::{Credential, Email, Outcome, Role, UserName};
use overvisor_model::host::{Host, HostChanges, HostFacts, HostKeyFingerprint, HostKind, NewHost};
use overvisor_model::host::{HostId, HostSecret};
use overvisor_model::job::JobStatus;
use overvisor_model::vm::{VmAction, VmEvent, VmInfo, VmName, VmState, VmSummary};
use overvisor_store::{MasterKey, Sealer, Store};

use crate::accounts::NewUser;
use crate::audit::AuditFilter;
use crate::authz::Subject;
use crate::connections::DriverFactory;
use crate::hosts::Enrolment;
use crate::{App, AppConfig, AppError};
use overvisor_model::job::JobQuery;
use tokio_util::sync::CancellationToken;

const FP: &str = "SHA256:WfUtCh6yiEwEmg0bzsZN/86BpFpC2hj+937BK2XDXSI";
const OTHER_FP: &str = "SHA256:c3xeTobGH1oQCoS3EqFRAkB+t0EFix4JMOHxDARxeF8";

fn fp(s: &str) -> HostKeyFingerprint {
    HostKeyFingerprint::parse(s).unwrap()
}

/// A host with VMs in a map; counts the actions that reached it.
#[derive(Default)]
struct FakeHost {
    vms: Mutex<HashMap<String, VmState>>,
    acts: AtomicUsize,
    /// When set, calls fail like a host whose key changed: the first with
    /// the mismatch, later ones with the session's backoff.
    mismatch: bool,
    calls: AtomicUsize,
    /// State reads that reached the host.
    state_reads: AtomicUsize,
}

impl FakeHost {
    fn state(&self, vm: &VmName) -> HvResult<VmState> {
        self.state_reads.fetch_add(1, Ordering::SeqCst);
        let mismatch = || SshError::HostKeyMismatch {
            addr: "10.0.0.9:22".into(),
            expected: fp(FP),
            presented: fp(OTHER_FP),
        };
        if self.mismatch && self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(HvError::Transport(mismatch()));
        }
        if self.mismatch {
            return Err(HvError::Transport(SshError::Backoff {
                addr: "10.0.0.9:22".into(),
                retry_in: std::time::Duration::from_secs(1),
                last_error: Box::new(mismatch()),
            }));
        }
        self.vms
            .lock()
            .unwrap()
            .get(vm.as_str())
            .copied()
            .ok_or_else(|| HvError::NotFound(vm.to_string()))
    }
}

impl Hypervisor for FakeHost {
    fn list_vms(&self) -> BoxFuture<'_, HvResult<Vec<VmSummary>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn vm_info<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<VmInfo>> {
        Box::pin(async move { Err(HvError::NotFound(vm.to_string())) })
    }
    fn vm_addresses<'a>(
        &'a self,
        vms: &'a [uuid::Uuid],
    ) -> BoxFuture<'a, HvResult<overvisor_hv::VmAddresses>> {
        Box::pin(async move { Ok(vms.iter().map(|u| (*u, Vec::new())).collect()) })
    }
    fn vm_state<'a>(&'a self, vm: &'a VmName) -> BoxFuture<'a, HvResult<VmState>> {
        Box::pin(async move { self.state(vm) })
    }
    fn act<'a>(&'a self, vm: &'a VmName, action: VmAction) -> BoxFuture<'a, HvResult<()>> {
        Box::pin(async move {
            self.acts.fetch_add(1, Ordering::SeqCst);
            let next = match action {
                VmAction::Start | VmAction::Resume | VmAction::Reboot | VmAction::Reset => {
                    VmState::Running
                }
                VmAction::Suspend => VmState::Paused,
                _ => VmState::ShutOff,
            };
            self.vms.lock().unwrap().insert(vm.to_string(), next);
            Ok(())
        })
    }
    fn undefine<'a>(&'a self, vm: &'a VmName, _: bool) -> BoxFuture<'a, HvResult<()>> {
        Box::pin(async move {
            self.acts.fetch_add(1, Ordering::SeqCst);
            self.vms.lock().unwrap().remove(vm.as_str());
            Ok(())
        })
    }
    fn host_facts(&self) -> BoxFuture<'_, HvResult<HostFacts>> {
        Box::pin(async { Err(HvError::Timeout(std::time::Duration::from_secs(3))) })
    }
    fn events(&self) -> BoxFuture<'_, HvResult<BoxStream<'static, HvResult<VmEvent>>>> {
        Box::pin(async { Err(HvError::Host("no events".into())) })
    }
    fn sample(&self) -> BoxFuture<'_, HvResult<overvisor_model::metrics::HostReading>> {
        Box::pin(async { Err(HvError::Host("no usage".into())) })
    }

    fn serial_console<'a>(
        &'a self,
        _vm: &'a VmName,
        _cols: u32,
        _rows: u32,
    ) -> BoxFuture<'a, HvResult<overvisor_hv::PtyChannel>> {
        Box::pin(async { Err(HvError::Host("no console".into())) })
    }
}

/// Hands out one shared [`FakeHost`] and counts the drivers it made.
#[derive(Default)]
struct FakeFactory {
    host: Arc<FakeHost>,
    made: AtomicUsize,
    probes: AtomicUsize,
}

impl DriverFactory for FakeFactory {
    fn driver(
        &self,
        _: &Host,
        _: HostKeyFingerprint,
        _: ClientKey,
    ) -> Result<Arc<dyn Hypervisor>, AppError> {
        self.made.fetch_add(1, Ordering::SeqCst);
        Ok(self.host.clone())
    }
    fn probe<'a>(
        &'a self,
        _: &'a str,
        _: u16,
    ) -> BoxFuture<'a, Result<PresentedHostKey, SshError>> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            Ok(PresentedHostKey {
                fingerprint: fp(OTHER_FP),
                public_key: "ssh-ed25519 AAAA".into(),
            })
        })
    }
}

struct Fixture {
    app: App,
    factory: Arc<FakeFactory>,
    _dir: tempfile::TempDir,
}

async fn fixture(host: FakeHost) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("db.sqlite"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let factory = Arc::new(FakeFactory {
        host: Arc::new(host),
        ..FakeFactory::default()
    });
    let app = App::with_driver_factory(
        store,
        Sealer::new(&MasterKey::generate()),
        AppConfig::default(),
        factory.clone(),
    );
    app.jobs_start(CancellationToken::new());
    Fixture {
        app,
        factory,
        _dir: dir,
    }
}

async fn user(app: &App, name: &str, role: Role) -> Subject {
    let created = app
        .user_create(
            &Subject::console(),
            NewUser {
                name: UserName::parse(name).unwrap(),
                email: Email::parse("u@example.com").unwrap(),
                role,
                password: Some("a long enough password".into()),
            },
        )
        .await
        .unwrap();
    Subject {
        user: created.user,
        credential: Credential::System,
        source_ip: None,
    }
}

fn new_host(address: &str) -> NewHost {
    NewHost {
        name: None,
        kind: HostKind::Libvirt,
        address: address.into(),
        port: None,
        ssh_user: None,
        libvirt_uri: None,
        tags: vec!["env=test".into()],
        host_key_fingerprint: Some(fp(FP)),
        trust_on_first_use: false,
        credential: None,
    }
}

fn vm(name: &str) -> VmName {
    VmName::parse(name).unwrap()
}

#[tokio::test]
async fn registry_is_owner_scoped() {
    let f = fixture(FakeHost::default()).await;
    let alice = user(&f.app, "alice", Role::Operator).await;
    let bob = user(&f.app, "bob", Role::Operator).await;
    let admin = user(&f.app, "root", Role::Admin).await;
    let reader = user(&f.app, "rita", Role::Reader).await;

    let h = f
        .app
        .host_create(&alice, new_host("10.0.0.1"))
        .await
        .unwrap()
        .0;
    assert_eq!(
        (h.name.as_str(), h.port, h.ssh_user.as_str()),
        ("10.0.0.1", 22, "ovdeploy")
    );
    assert_eq!(h.libvirt_uri, "qemu:///system");
    assert!(matches!(
        f.app.host_get(&bob, h.id).await,
        Err(AppError::NotFound("host"))
    ));
    assert!(matches!(
        f.app.host_delete_job(&bob, h.id).await,
        Err(AppError::NotFound("host"))
    ));
    assert!(f.app.hosts_list(&bob).await.unwrap().is_empty());
    assert_eq!(f.app.hosts_list(&admin).await.unwrap().len(), 1);
    assert!(f.app.host_get(&admin, h.id).await.is_ok());
    assert!(matches!(
        f.app.host_create(&reader, new_host("10.0.0.2")).await,
        Err(AppError::Forbidden(_))
    ));
    // Same address twice for one owner: a conflict, not a second host.
    assert!(matches!(
        f.app.host_create(&alice, new_host("10.0.0.1")).await,
        Err(AppError::Conflict(_))
    ));
    // Bad input changes nothing.
    for bad in ["a;b", "$(id)", "-oProxyCommand=x", "a b", "x\ny"] {
        assert!(matches!(
            f.app.host_create(&alice, new_host(bad)).await,
            Err(AppError::Invalid(_))
        ));
    }
    let mut no_key = new_host("10.0.0.3");
    no_key.host_key_fingerprint = None;
    assert!(matches!(
        f.app.host_create(&alice, no_key.clone()).await,
        Err(AppError::Invalid(e)) if e.field == "host_key_fingerprint"
    ));
    let mut bad_key = new_host("10.0.0.3");
    bad_key.credential = Some(HostSecret::PrivateKey("not a key".into()));
    assert!(matches!(
        f.app.host_create(&alice, bad_key).await,
        Err(AppError::Invalid(e)) if e.field == "credential.private_key" && !e.message.contains("not a key")
    ));
    assert_eq!(f.app.hosts_list(&alice).await.unwrap().len(), 1);
    // Trust on first use records the presented key.
    no_key.trust_on_first_use = true;
    let tofu = f.app.host_create(&alice, no_key).await.unwrap().0;
    assert_eq!(tofu.host_key_fingerprint, Some(fp(OTHER_FP)));
    assert_eq!(f.factory.probes.load(Ordering::SeqCst), 1);

    let events = f
        .app
        .audit_list(
            &alice,
            AuditFilter {
                limit: 100,
                action_prefix: Some("host.".into()),
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.action == "host.create" && e.outcome == Outcome::Success)
    );
    assert!(
        events
            .iter()
            .any(|e| e.action == "host.create" && e.outcome == Outcome::Failure)
    );
}

#[tokio::test]
async fn one_driver_per_host_replaced_on_change() {
    let host = FakeHost::default();
    host.vms
        .lock()
        .unwrap()
        .insert("web".into(), VmState::ShutOff);
    let f = fixture(host).await;
    let alice = user(&f.app, "alice", Role::Operator).await;
    let h = f
        .app
        .host_create(&alice, new_host("kvm1.example"))
        .await
        .unwrap()
        .0;
    for _ in 0..3 {
        contact(&f.app, &alice, h.id).await.unwrap();
    }
    assert_eq!(f.factory.made.load(Ordering::SeqCst), 1);
    assert_eq!(f.app.connections().len(), 1);
    let changes = HostChanges {
        port: Some(2222),
        ..HostChanges::default()
    };
    let job = f.app.host_update_job(&alice, h.id, changes).await.unwrap();
    let done = f.app.job_follow(&alice, &job, WAIT).await.unwrap();
    assert_eq!(done.result.unwrap()["host"]["port"], 2222);
    assert!(f.app.connections().is_empty());
    contact(&f.app, &alice, h.id).await.unwrap();
    assert_eq!(f.factory.made.load(Ordering::SeqCst), 2);
    let job = f.app.host_delete_job(&alice, h.id).await.unwrap();
    f.app.job_follow(&alice, &job, WAIT).await.unwrap();
    assert!(f.app.connections().is_empty());
}

#[tokio::test]
async fn host_changes_are_jobs_and_refusals_create_none() {
    let host = FakeHost::default();
    host.vms
        .lock()
        .unwrap()
        .insert("web".into(), VmState::Running);
    let f = fixture(host).await;
    let alice = user(&f.app, "alice", Role::Operator).await;
    let (h, created) = f
        .app
        .host_create(&alice, new_host("10.0.0.1"))
        .await
        .unwrap();
    assert_eq!(
        (created.kind.as_str(), created.status),
        ("host.create", JobStatus::Succeeded)
    );
    let mut other = new_host("10.0.0.2");
    other.name = Some("other".into());
    f.app.host_create(&alice, other).await.unwrap();
    let jobs = || async {
        let query = JobQuery {
            limit: 100,
            ..JobQuery::default()
        };
        f.app.jobs_list(&alice, query, false).await.unwrap().len()
    };
    assert_eq!(jobs().await, 2);

    // Bad input, a clash, a running VM: refused at once, no job.
    let bad = HostChanges {
        port: Some(0),
        ..HostChanges::default()
    };
    assert!(matches!(
        f.app.host_update_job(&alice, h.id, bad).await,
        Err(AppError::Invalid(_))
    ));
    let clash = HostChanges {
        name: Some("other".into()),
        ..HostChanges::default()
    };
    assert!(matches!(
        f.app.host_update_job(&alice, h.id, clash).await,
        Err(AppError::Conflict(_))
    ));
    assert!(matches!(
        f.app.vm_delete_job(&alice, h.id, &vm("web"), false).await,
        Err(AppError::InvalidTransition(_))
    ));
    assert_eq!(jobs().await, 2);

    // Good changes run as jobs that do the work.
    let port = HostChanges {
        port: Some(2222),
        ..HostChanges::default()
    };
    let job = f.app.host_update_job(&alice, h.id, port).await.unwrap();
    let done = f.app.job_follow(&alice, &job, WAIT).await.unwrap();
    assert_eq!(done.result.unwrap()["host"]["port"], 2222);
    assert_eq!(f.app.host_get(&alice, h.id).await.unwrap().port, 2222);
    let job = f.app.host_delete_job(&alice, h.id).await.unwrap();
    assert_eq!(job.kind, "host.delete");
    f.app.job_follow(&alice, &job, WAIT).await.unwrap();
    assert!(matches!(
        f.app.host_get(&alice, h.id).await,
        Err(AppError::NotFound("host"))
    ));
    assert_eq!(jobs().await, 4);
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a lifecycle action the API's way and answers with the state the
/// job left the VM in.
async fn act(
    app: &App,
    subject: &Subject,
    host: overvisor_model::host::HostId,
    vm: &VmName,
    action: VmAction,
) -> Result<VmState, AppError> {
    let job = app.vm_act_job(subject, host, vm, action).await?;
    let job = app.job_follow(subject, &job, WAIT).await?;
    let result = job.result.unwrap_or_default();
    Ok(serde_json::from_value(result["state"].clone()).unwrap())
}

#[tokio::test]
async fn transitions_are_checked_before_the_host_is_asked() {
    let host = FakeHost::default();
    host.vms
        .lock()
        .unwrap()
        .insert("web".into(), VmState::ShutOff);
    let f = fixture(host).await;
    let alice = user(&f.app, "alice", Role::Operator).await;
    let reader = user(&f.app, "rita", Role::Reader).await;
    let h = f
        .app
        .host_create(&alice, new_host("10.0.0.1"))
        .await
        .unwrap()
        .0;
    let acts = || f.factory.host.acts.load(Ordering::SeqCst);

    for action in [
        VmAction::Shutdown,
        VmAction::Suspend,
        VmAction::Resume,
        VmAction::ForceStop,
    ] {
        assert!(matches!(
            act(&f.app, &alice, h.id, &vm("web"), action).await,
            Err(AppError::InvalidTransition(_))
        ));
    }
    assert_eq!(acts(), 0);
    let reads_before = f.factory.host.state_reads.load(Ordering::SeqCst);
    assert_eq!(
        act(&f.app, &alice, h.id, &vm("web"), VmAction::Start)
            .await
            .unwrap(),
        VmState::Running
    );
    // One read to refuse a bad transition before a job exists (recorded as
    // the job's check), the action, one read of the state it was left in.
    assert_eq!(
        f.factory.host.state_reads.load(Ordering::SeqCst) - reads_before,
        2
    );
    assert!(matches!(
        f.app.vm_delete_job(&alice, h.id, &vm("web"), false).await,
        Err(AppError::InvalidTransition(_))
    ));
    assert!(matches!(
        act(&f.app, &alice, h.id, &vm("nope"), VmAction::Start).await,
        Err(AppError::NotFound("VM"))
    ));
    // The admin of another tenant's host may act; a reader of their own may not.
    let h_reader = {
        let admin = user(&f.app, "root", Role::Admin).await;
        let mut nh = new_host("10.0.0.2");
        nh.name = Some("readers".into());
        f.app.host_create(&admin, nh).await.unwrap().0
    };
    assert!(matches!(
        act(&f.app, &reader, h_reader.id, &vm("web"), VmAction::Start).await,
        Err(AppError::NotFound("host"))
    ));
    assert_eq!(acts(), 1);
    let events = f
        .app
        .audit_list(
            &alice,
            AuditFilter {
                limit: 100,
                action_prefix: Some("vm.".into()),
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.action == "vm.start" && e.outcome == Outcome::Success)
    );
    assert!(
        events
            .iter()
            .any(|e| e.action == "vm.shutdown" && e.outcome == Outcome::Failure)
    );
    // One audit row per change: the job's outcome, naming the job and what
    // the VM was found and left in.
    let starts: Vec<_> = events
        .iter()
        .filter(|e| e.action == "vm.start" && e.outcome == Outcome::Success)
        .collect();
    assert_eq!(starts.len(), 1, "{events:?}");
    let detail = starts[0].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("job=") && detail.contains("found=shut_off left=running"),
        "{detail}"
    );
    let all = f
        .app
        .audit_list(
            &alice,
            AuditFilter {
                limit: 100,
                action_prefix: Some("job.".into()),
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    assert!(all.is_empty(), "no second row per job: {all:?}");
}

/// A host whose key changed, registered by alice; `calls_before` attempts
/// to connect were made before (by another caller).
async fn changed_key_host(calls_before: usize) -> (Fixture, Subject, HostId) {
    let f = fixture(FakeHost {
        mismatch: true,
        calls: AtomicUsize::new(calls_before),
        ..FakeHost::default()
    })
    .await;
    let alice = user(&f.app, "alice", Role::Operator).await;
    let h = f
        .app
        .host_create(&alice, new_host("10.0.0.9"))
        .await
        .unwrap()
        .0;
    (f, alice, h.id)
}

/// Starting a VM on it fails `times` times with the mismatch, naming the
/// address and both keys.
async fn start_meets_the_mismatch(f: &Fixture, alice: &Subject, host: HostId, times: usize) {
    for _ in 0..times {
        match act(&f.app, alice, host, &vm("web"), VmAction::Start).await {
            Err(AppError::HostKeyMismatch {
                address,
                expected,
                presented,
            }) => {
                assert_eq!(address, "10.0.0.9:22");
                assert_eq!((expected.as_str(), presented.as_str()), (FP, OTHER_FP));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn host_errors_are_named() {
    let (f, alice, h) = changed_key_host(0).await;
    // First the mismatch itself, then (the session waiting to retry) still
    // the mismatch, not "unreachable".
    start_meets_the_mismatch(&f, &alice, h, 2).await;
    // The mismatch met drops the connection, so the next call checks the
    // key again: two calls, two drivers.
    assert_eq!(f.factory.made.load(Ordering::SeqCst), 2);
    assert!(matches!(
        f.app.host_facts(&alice, h).await,
        Err(AppError::HostTimeout(m)) if m.contains("10.0.0.9")
    ));
}

/// The race a busy host meets: the inventory's reconciler connects first and
/// meets the changed key, so a request sees only the session backing off
/// from it. That is still the mismatch (409 naming both keys), not
/// "unreachable", and the connection is kept for the backoff to pace.
#[tokio::test]
async fn a_mismatch_met_by_another_caller_is_still_named() {
    let (f, alice, h) = changed_key_host(1).await;
    start_meets_the_mismatch(&f, &alice, h, 2).await;
    assert_eq!(f.factory.made.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn enrolment_creates_then_updates() {
    let f = fixture(FakeHost::default()).await;
    let alice = user(&f.app, "alice", Role::Operator).await;
    let first = f
        .app
        .host_enrol(
            &alice,
            Enrolment {
                hostname: Some("kvm7".into()),
                ..Enrolment::default()
            },
        )
        .await
        .unwrap();
    assert!(first.created);
    assert!(first.authorized_key.starts_with("ssh-ed25519 "));
    assert_eq!(first.host.host_key_fingerprint, None);
    // Unconfirmed hosts are never contacted.
    assert!(matches!(
        contact(&f.app, &alice, first.host.id).await,
        Err(AppError::Conflict(m)) if m.contains("not confirmed")
    ));
    let second = f
        .app
        .host_enrol(
            &alice,
            Enrolment {
                hostname: Some("kvm7".into()),
                ip_address: Some("10.0.0.7".into()),
                port: Some(2222),
                host_key_fingerprint: Some(fp(FP)),
                ..Enrolment::default()
            },
        )
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.host.id, first.host.id);
    assert_eq!(
        (second.host.address.as_str(), second.host.port),
        ("10.0.0.7", 2222)
    );
    assert_eq!(f.app.hosts_list(&alice).await.unwrap().len(), 1);
    assert!(contact(&f.app, &alice, first.host.id).await.is_ok());
    // The same host enrolled as another kind is a conflict, and changes nothing.
    let as_hyperv = Enrolment {
        kind: Some(HostKind::Hyperv),
        ip_address: Some("10.0.0.7".into()),
        ..Enrolment::default()
    };
    assert!(matches!(
        f.app.host_enrol(&alice, as_hyperv).await,
        Err(AppError::Conflict(m)) if m.contains("KVM") && m.contains("Hyper-V")
    ));
    assert_eq!(
        f.app.hosts_list(&alice).await.unwrap()[0].kind,
        HostKind::Libvirt
    );
    // A Windows host enrols as Hyper-V.
    let windows = f
        .app
        .host_enrol(
            &alice,
            Enrolment {
                kind: Some(HostKind::Hyperv),
                hostname: Some("hv1".into()),
                ..Enrolment::default()
            },
        )
        .await
        .unwrap();
    assert!(windows.created);
    assert_eq!(windows.host.kind, HostKind::Hyperv);
    for bad in [
        Enrolment::default(),
        Enrolment {
            ip_address: Some("10.0.0.1;id".into()),
            ..Enrolment::default()
        },
        Enrolment {
            hostname: Some("$(id)".into()),
            ..Enrolment::default()
        },
    ] {
        assert!(matches!(
            f.app.host_enrol(&alice, bad).await,
            Err(AppError::Invalid(_))
        ));
    }
}

/// Reaches a host through the app's shared driver, as every live call does.
async fn contact(
    app: &App,
    subject: &Subject,
    id: overvisor_model::host::HostId,
) -> Result<Vec<VmSummary>, AppError> {
    let host = app
        .host_authorized(subject, id, crate::authz::Action::Read, "vm.read")
        .await?;
    let driver = app.host_driver(&host).await?;
    driver
        .list_vms()
        .await
        .map_err(|e| app.host_error(host.get(), e))
}
