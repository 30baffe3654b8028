//! Unit tests of jobs as operations on a real (temporary) SQLite store:
//! steps, undo in reverse, cancel, take-over after a runner died (resumed or
//! interrupted), host slots, tenancy. The test operations touch nothing.
#![allow(clippy::unwrap_used)]

use overvisor_model::account::{Credential, Email, Role, User, UserName};
use overvisor_model::host::HostId;
use overvisor_store::jobs::NewStep;
use overvisor_store::{MasterKey, Sealer, Store};

use super::*;
use crate::AppConfig;
use crate::audit::AuditFilter;
use crate::events::{Delivery, EventFilter};

struct Fixture {
    app: App,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let f = fixture_without_runner().await;
    f.app.jobs_start(CancellationToken::new());
    f
}

/// No runner yet: a test that plants a job as another runner left it
/// starts one afterwards (one polling meanwhile could claim it first).
async fn fixture_without_runner() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("db.sqlite"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let config = AppConfig {
        jobs: JobSettings {
            lease: Duration::from_secs(2),
            poll: Duration::from_millis(100),
            ..JobSettings::default()
        },
        ..AppConfig::default()
    };
    let app = App::new(store, Sealer::new(&MasterKey::generate()), config);
    Fixture { app, _dir: dir }
}

fn subject(role: Role) -> Subject {
    let now = Utc::now();
    Subject {
        user: User {
            id: UserId::new(),
            name: UserName::parse("tester").unwrap(),
            email: Email::parse("tester@example.com").unwrap(),
            role,
            disabled: false,
            created_at: now,
            updated_at: now,
        },
        credential: Credential::System,
        source_ip: None,
    }
}

fn steps_op(steps: u8, step_millis: u32, fail_at: Option<u8>, undo_fails: Option<u8>) -> Operation {
    Operation::TestSteps {
        steps,
        step_millis,
        fail_at,
        undo_fails,
        resumable: true,
    }
}

async fn finished(app: &App, s: &Subject, id: JobId) -> JobDetail {
    let detail = app.job_wait(s, id, Duration::from_secs(20)).await.unwrap();
    assert!(detail.job.status.is_terminal(), "{detail:?}");
    detail
}

fn statuses(detail: &JobDetail) -> Vec<StepStatus> {
    detail.steps.iter().map(|s| s.status).collect()
}

fn messages(detail: &JobDetail) -> Vec<&str> {
    detail.log.iter().map(|l| l.message.as_str()).collect()
}

async fn audit_rows(app: &App, s: &Subject) -> Vec<overvisor_model::account::AuditEvent> {
    app.audit_list(
        s,
        AuditFilter {
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn steps_run_in_order_and_are_shown_live() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let mut sub = f.app.events_subscribe(&s, EventFilter::default()).unwrap();
    let job = f
        .app
        .job_test_steps(&s, steps_op(3, 10, None, None))
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.kind, "test.steps");
    let detail = finished(&f.app, &s, job.id).await;
    assert_eq!(detail.job.status, JobStatus::Succeeded);
    assert_eq!(detail.job.progress, 100);
    assert_eq!(detail.job.result, Some(serde_json::json!({"step": 3})));
    assert_eq!(statuses(&detail), vec![StepStatus::Done; 3]);
    assert_eq!(
        detail
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["step 1", "step 2", "step 3"]
    );
    assert!(
        detail
            .steps
            .iter()
            .all(|s| s.started_at.is_some() && s.finished_at.is_some())
    );
    assert_eq!(
        messages(&detail),
        ["step 1 ran", "step 2 ran", "step 3 ran"]
    );
    assert_eq!(detail.operation, Some(steps_op(3, 10, None, None)));

    // Watchers see each step begin and end, between the job's own events.
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("job.updated:succeeded") {
        let Some(Delivery::Event(env)) = sub.next().await else {
            panic!("bus closed or lagged")
        };
        seen.push(match &env.event {
            Event::JobUpdated { job } => format!("job.updated:{}", job.status),
            Event::JobStep { step, .. } => format!("step:{}:{}", step.index + 1, step.status),
            e => e.type_name().to_owned(),
        });
    }
    for want in [
        "job.created",
        "job.updated:running",
        "step:1:running",
        "step:1:done",
        "step:3:done",
    ] {
        assert!(seen.iter().any(|s| s == want), "{want} in {seen:?}");
    }
    let at = |what: &str| seen.iter().position(|s| s == what).unwrap();
    assert!(at("step:1:done") < at("step:2:running") && at("step:2:done") < at("step:3:running"));

    // One audit row: the job's outcome, under the operation's name.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rows = audit_rows(&f.app, &s).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].action, "test.steps");
    assert_eq!(rows[0].outcome, Outcome::Success);
    assert!(
        rows[0]
            .detail
            .as_deref()
            .unwrap()
            .contains(&format!("job={}", job.id))
    );
}

#[tokio::test]
async fn a_failed_step_undoes_the_ones_before_it_in_reverse() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let job = f
        .app
        .job_test_steps(&s, steps_op(4, 10, Some(3), None))
        .await
        .unwrap();
    let detail = finished(&f.app, &s, job.id).await;
    assert_eq!(detail.job.status, JobStatus::Failed);
    assert_eq!(
        statuses(&detail),
        [
            StepStatus::Undone,
            StepStatus::Undone,
            StepStatus::Failed,
            StepStatus::Skipped
        ]
    );
    assert_eq!(
        messages(&detail),
        [
            "step 1 ran",
            "step 2 ran",
            "step 3 ran",
            "step 2 undone",
            "step 1 undone"
        ]
    );
    let error = detail.job.error.unwrap();
    assert!(
        error.starts_with("step 3 \"step 3\" failed: step 3 failed on purpose"),
        "{error}"
    );
    assert!(
        error.contains("undone: step 2 \"step 2\", step 1 \"step 1\""),
        "{error}"
    );
    assert_eq!(
        detail.steps[2].error.as_deref(),
        Some("step 3 failed on purpose")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rows = audit_rows(&f.app, &s).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, Outcome::Failure);
}

#[tokio::test]
async fn an_undo_that_fails_is_named() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let job = f
        .app
        .job_test_steps(&s, steps_op(3, 10, Some(3), Some(1)))
        .await
        .unwrap();
    let detail = finished(&f.app, &s, job.id).await;
    assert_eq!(detail.job.status, JobStatus::Failed);
    assert_eq!(
        statuses(&detail),
        [
            StepStatus::UndoFailed,
            StepStatus::Undone,
            StepStatus::Failed
        ]
    );
    let error = detail.job.error.unwrap();
    assert!(error.contains("undone: step 2"), "{error}");
    assert!(
        error.contains("could not undo: step 1 \"step 1\" (undo of step 1 failed on purpose)"),
        "{error}"
    );
    assert!(
        detail.steps[0]
            .error
            .as_deref()
            .unwrap()
            .contains("undo failed")
    );
}

/// Waits until step `index` of a job is running.
async fn step_running(app: &App, s: &Subject, id: JobId, index: usize) {
    for _ in 0..200 {
        let detail = app.job_get(s, id).await.unwrap();
        if detail.steps[index].status == StepStatus::Running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("step {index} never ran");
}

#[tokio::test]
async fn cancel_during_a_step_undoes_it_and_the_ones_before() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let job = f
        .app
        .job_test_steps(&s, steps_op(3, 800, None, None))
        .await
        .unwrap();
    step_running(&f.app, &s, job.id, 1).await;
    let detail = f.app.job_cancel(&s, job.id).await.unwrap();
    assert_eq!(detail.job.status, JobStatus::Cancelled);
    assert_eq!(
        statuses(&detail),
        [StepStatus::Undone, StepStatus::Undone, StepStatus::Skipped]
    );
    assert_eq!(
        messages(&detail),
        ["step 1 ran", "step 2 ran", "step 2 undone", "step 1 undone"]
    );
    assert!(
        detail
            .job
            .error
            .unwrap()
            .starts_with("cancelled on request; undone: step 2")
    );
    assert!(matches!(
        f.app.job_cancel(&s, job.id).await,
        Err(AppError::Conflict(_))
    ));
}

#[tokio::test]
async fn failures_and_timeouts_fail_the_job() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let job = f.app.job_test_sleep(&s, 1, true).await.unwrap();
    let detail = finished(&f.app, &s, job.id).await;
    assert_eq!(detail.job.status, JobStatus::Failed);
    assert_eq!(
        detail.job.error.as_deref(),
        Some("step 1 \"sleep\" failed: failed on purpose")
    );
    assert_eq!(f.app.jobs().live_count(), 0);
    for bad in [0, 9] {
        assert!(matches!(
            f.app.job_test_steps(&s, steps_op(bad, 1, None, None)).await,
            Err(AppError::Invalid(_))
        ));
    }
}

/// Inserts a job as if another runner had claimed it, run `done` steps and
/// died in the next one, its lease already lapsed.
async fn orphan(app: &App, s: &Subject, op: Operation, done: u16) -> JobId {
    let grant = crate::authz::grant(s, Action::Operate, s.id()).unwrap();
    let job = app.job_submit_parked(&grant, &op).await;
    let store = app.store();
    let long_ago = Utc::now() - chrono::Duration::seconds(60);
    store
        .job_claim(
            job,
            "runner-that-died",
            long_ago,
            // Live while its steps are written, so that no runner started
            // meanwhile takes it over half-written.
            Utc::now() + chrono::Duration::seconds(60),
        )
        .await
        .unwrap()
        .unwrap();
    for i in 0..done {
        store
            .job_step_set(job, i, StepStatus::Running, long_ago, None, None)
            .await
            .unwrap();
        let out = serde_json::json!({"step": i + 1});
        store
            .job_step_set(job, i, StepStatus::Done, long_ago, None, Some(&out))
            .await
            .unwrap();
    }
    store
        .job_step_set(job, done, StepStatus::Running, long_ago, None, None)
        .await
        .unwrap();
    // Now it died: its lease lapses.
    store
        .job_leases_renew("runner-that-died", long_ago + chrono::Duration::seconds(1))
        .await
        .unwrap();
    job
}

impl App {
    /// Stores a job without waking a runner (tests then act as the runner
    /// that claimed it).
    async fn job_submit_parked(&self, grant: &Grant, op: &Operation) -> JobId {
        let job = Job::queued(op.kind(), grant.subject, grant.owner, Some(op.target()));
        let plan = operations::plan(op);
        let steps: Vec<NewStep> = plan
            .iter()
            .map(|p| NewStep {
                name: p.name,
                has_undo: p.has_undo,
                done: None,
            })
            .collect();
        self.store()
            .job_insert(
                self.sealer(),
                &NewJob {
                    job: &job,
                    operation: op,
                    grant,
                    secret: None,
                    slot: None,
                    timeout_secs: 60,
                    steps: &steps,
                },
            )
            .await
            .unwrap();
        job.id
    }
}

#[tokio::test]
async fn a_job_whose_runner_died_is_resumed_from_the_step_it_stopped_in() {
    let f = fixture_without_runner().await;
    let s = subject(Role::Operator);
    let id = orphan(&f.app, &s, steps_op(3, 10, None, None), 1).await;
    f.app.jobs_start(CancellationToken::new());
    let detail = finished(&f.app, &s, id).await;
    assert_eq!(detail.job.status, JobStatus::Succeeded, "{detail:?}");
    assert_eq!(statuses(&detail), vec![StepStatus::Done; 3]);
    // Step 1 finished before the runner died and is never run again.
    let log = messages(&detail);
    assert!(
        log[0].starts_with("resumed at step 2 \"step 2\""),
        "{log:?}"
    );
    assert_eq!(&log[1..], ["step 2 ran", "step 3 ran"]);
}

#[tokio::test]
async fn a_job_that_must_not_run_twice_is_marked_interrupted_in_its_step() {
    let f = fixture_without_runner().await;
    let s = subject(Role::Operator);
    let op = Operation::TestSteps {
        steps: 3,
        step_millis: 10,
        fail_at: None,
        undo_fails: None,
        resumable: false,
    };
    let id = orphan(&f.app, &s, op, 1).await;
    f.app.jobs_start(CancellationToken::new());
    let detail = finished(&f.app, &s, id).await;
    assert_eq!(detail.job.status, JobStatus::Interrupted);
    assert_eq!(
        detail.job.error.as_deref(),
        Some(&*format!("{INTERRUPTED_REASON} (in step 2 \"step 2\")"))
    );
    assert_eq!(
        statuses(&detail),
        [StepStatus::Done, StepStatus::Failed, StepStatus::Skipped]
    );
    assert!(detail.log.is_empty(), "nothing ran again: {:?}", detail.log);
    // A VM reboot is such an operation; a start is not.
    let vm = overvisor_model::vm::VmName::parse("web").unwrap();
    let reboot = Operation::VmAction {
        host: HostId::new(),
        vm: vm.clone(),
        action: overvisor_model::vm::VmAction::Reboot,
    };
    let start = Operation::VmAction {
        host: HostId::new(),
        vm,
        action: overvisor_model::vm::VmAction::Start,
    };
    assert!(!operations::resumable(&reboot) && operations::resumable(&start));
}

#[tokio::test]
async fn a_runner_that_lost_its_lease_stops_without_writing_or_undoing() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let job = f
        .app
        .job_test_steps(&s, steps_op(3, 5000, None, None))
        .await
        .unwrap();
    step_running(&f.app, &s, job.id, 0).await;
    // The step has begun its work (it logs first).
    for _ in 0..200 {
        if !f.app.job_get(&s, job.id).await.unwrap().log.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another runner takes the job over, as if this one had stalled past
    // its lease.
    let later = Utc::now() + chrono::Duration::hours(1);
    let taken = f
        .app
        .store()
        .job_claim(
            job.id,
            "runner-elsewhere",
            later,
            later + chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    assert!(taken.is_some());
    f.app.jobs_renew_leases().await;
    for _ in 0..100 {
        if f.app.jobs().live_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.app.jobs().live_count(), 0, "stopped here");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let detail = f.app.job_get(&s, job.id).await.unwrap();
    assert_eq!(
        detail.job.status,
        JobStatus::Running,
        "left to the new runner"
    );
    assert_eq!(
        statuses(&detail),
        [
            StepStatus::Running,
            StepStatus::Pending,
            StepStatus::Pending
        ],
        "nothing cancelled or undone"
    );
    assert_eq!(messages(&detail), ["step 1 ran"]);
}

#[tokio::test]
async fn a_job_that_ends_while_its_lease_is_renewed_is_not_lost() {
    let f = fixture_without_runner().await;
    let id = JobId(uuid::Uuid::new_v4());
    // Listed as live before the renewal, then ended (forgotten, its end
    // written) before the renewal ran: the renewal did not return it.
    let ended = f.app.jobs().register(id);
    f.app.jobs().forget(id);
    f.app.jobs_leases_renewed(vec![(id, ended.clone())], &[]);
    assert!(!ended.lost.is_cancelled(), "an ended job is not lost");
    // Still running here, and not renewed: another runner took it.
    let running = f.app.jobs().register(id);
    f.app.jobs_leases_renewed(vec![(id, running.clone())], &[]);
    assert!(
        running.lost.is_cancelled(),
        "a job another runner took is stopped"
    );
}

#[tokio::test]
async fn jobs_wait_for_a_free_host_slot() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let grant = crate::authz::grant(&s, Action::Operate, s.id()).unwrap();
    let op = steps_op(1, 400, None, None);
    let plan = [NewStep {
        name: "step 1",
        has_undo: true,
        done: None,
    }];
    let mut ids = Vec::new();
    for _ in 0..DEFAULT_PER_HOST + 2 {
        let job = Job::queued(op.kind(), s.id(), s.id(), None);
        f.app
            .store()
            .job_insert(
                f.app.sealer(),
                &NewJob {
                    job: &job,
                    operation: &op,
                    grant: &grant,
                    secret: None,
                    slot: Some("host:one"),
                    timeout_secs: 60,
                    steps: &plan,
                },
            )
            .await
            .unwrap();
        ids.push(job.id);
    }
    f.app.jobs_claim_round().await;
    let mut running = 0;
    let mut queued = Vec::new();
    for id in &ids {
        match f.app.store().job_get(*id).await.unwrap().status {
            JobStatus::Running => running += 1,
            JobStatus::Queued => queued.push(*id),
            other => panic!("{other}"),
        }
    }
    assert_eq!((running, queued.len()), (DEFAULT_PER_HOST, 2));
    // A queued job cancelled never runs; the other waits for a slot and runs.
    let cancelled = f.app.job_cancel(&s, queued[0]).await.unwrap();
    assert_eq!(cancelled.job.status, JobStatus::Cancelled);
    assert!(cancelled.job.started_at.is_none());
    assert_eq!(statuses(&cancelled), [StepStatus::Skipped]);
    for id in &ids {
        let detail = finished(&f.app, &s, *id).await;
        if *id != queued[0] {
            assert_eq!(detail.job.status, JobStatus::Succeeded);
        }
    }
}

#[tokio::test]
async fn tenants_and_roles() {
    let f = fixture().await;
    let owner = subject(Role::Operator);
    let other = subject(Role::Operator);
    let reader = subject(Role::Reader);
    let admin = subject(Role::Admin);
    assert!(matches!(
        f.app
            .job_test_steps(&reader, steps_op(1, 1, None, None))
            .await,
        Err(AppError::Forbidden(_))
    ));
    assert!(matches!(
        crate::authz::grant(&other, Action::Operate, owner.id()),
        Err(AppError::NotFound(_))
    ));
    let job = f
        .app
        .job_test_steps(&owner, steps_op(1, 1, None, None))
        .await
        .unwrap();
    finished(&f.app, &owner, job.id).await;
    assert!(matches!(
        f.app.job_get(&other, job.id).await,
        Err(AppError::NotFound("job"))
    ));
    assert!(matches!(
        f.app.job_cancel(&other, job.id).await,
        Err(AppError::NotFound("job"))
    ));
    assert!(f.app.job_get(&admin, job.id).await.is_ok());
    let query = JobQuery {
        limit: 10,
        ..Default::default()
    };
    assert!(
        f.app
            .jobs_list(&other, query.clone(), false)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        f.app
            .jobs_list(&owner, query.clone(), false)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(matches!(
        f.app.jobs_list(&owner, query.clone(), true).await,
        Err(AppError::Forbidden(_))
    ));
    assert_eq!(f.app.jobs_list(&admin, query, true).await.unwrap().len(), 1);
    // Step events reach the owner and admins, not others.
    let mut theirs = f
        .app
        .events_subscribe(&other, EventFilter::default())
        .unwrap();
    let mine = f
        .app
        .job_test_steps(&owner, steps_op(1, 1, None, None))
        .await
        .unwrap();
    finished(&f.app, &owner, mine.id).await;
    f.app.events().publish(
        other.id(),
        Event::HostConnected {
            host_id: HostId::new(),
        },
    );
    let Some(Delivery::Event(env)) = theirs.next().await else {
        panic!()
    };
    assert!(
        matches!(env.event, Event::HostConnected { .. }),
        "{:?}",
        env.event
    );
}

#[test]
fn scrub_removes_tokens_and_keys() {
    assert_eq!(scrub("plain"), "plain");
    assert_eq!(scrub("key ovk_0a1b_abcDEF-123 used"), "key [redacted] used");
    let pem = "x -----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY----- y";
    assert_eq!(scrub(pem), "x [redacted] y");
    assert_eq!(scrub("-----BEGIN RSA PRIVATE KEY-----\nAAAA"), "[redacted]");
    let mut long = "é".repeat(10);
    truncate_utf8(&mut long, 5);
    assert_eq!(long, "éé…");
}
