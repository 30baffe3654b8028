//! Unit tests of the job runner on a real (temporary) SQLite store, with
//! work closures standing in for drivers.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use overvisor_model::account::{Credential, Email, Role, User, UserName};
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
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("db.sqlite"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let app = App::new(
        store,
        Sealer::new(&MasterKey::generate()),
        AppConfig::default(),
    );
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

async fn finished(app: &App, s: &Subject, id: JobId) -> JobDetail {
    app.job_wait(s, id, Duration::from_secs(10)).await.unwrap()
}

#[tokio::test]
async fn success_records_progress_log_result_events_and_audit() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let mut sub = f.app.events_subscribe(&s, EventFilter::default()).unwrap();
    let job = f
        .app
        .job_submit(
            &s,
            JobSpec::new("test.ok", s.id()).target("vm:a"),
            |ctx| async move {
                ctx.progress(50).await;
                ctx.info("half way; token ovk_abcdef_SECRETSECRET stays out")
                    .await;
                Ok(serde_json::json!({"done": true}))
            },
        )
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    let detail = finished(&f.app, &s, job.id).await;
    assert_eq!(detail.job.status, JobStatus::Succeeded);
    assert_eq!(detail.job.progress, 100);
    assert_eq!(detail.job.result, Some(serde_json::json!({"done": true})));
    assert_eq!(detail.log.len(), 1);
    assert!(
        !detail.log[0].message.contains("SECRET"),
        "{:?}",
        detail.log
    );
    assert!(detail.job.started_at.is_some() && detail.job.finished_at.is_some());

    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("job.updated:succeeded") {
        let Some(Delivery::Event(env)) = sub.next().await else {
            panic!("bus closed or lagged")
        };
        seen.push(match &env.event {
            Event::JobUpdated { job } => format!("job.updated:{}", job.status),
            e => e.type_name().to_owned(),
        });
    }
    assert_eq!(
        seen,
        [
            "job.created",
            "job.updated:running",
            "job.updated:running",
            "job.log",
            "job.updated:succeeded"
        ]
    );
    // The outcome is audited once the runner is done (just after the event).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let audit = f
        .app
        .audit_list(
            &s,
            AuditFilter {
                action_prefix: Some("job.test.ok".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].outcome, Outcome::Success);
}

#[tokio::test]
async fn failure_timeout_and_panic_fail_the_job() {
    let f = fixture().await;
    let s = subject(Role::Admin);
    let failing = f
        .app
        .job_submit(&s, JobSpec::new("test.fail", s.id()), |_ctx| async move {
            Err(JobError::new("host said no"))
        })
        .await
        .unwrap();
    let slow = f
        .app
        .job_submit(
            &s,
            JobSpec::new("test.slow", s.id()).timeout(Duration::from_millis(200)),
            |_ctx| async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(serde_json::Value::Null)
            },
        )
        .await
        .unwrap();
    let panicking = f
        .app
        .job_submit(&s, JobSpec::new("test.panic", s.id()), |_ctx| async move {
            panic!("boom")
        })
        .await
        .unwrap();
    let failing = finished(&f.app, &s, failing.id).await.job;
    assert_eq!(failing.status, JobStatus::Failed);
    assert_eq!(failing.error.as_deref(), Some("host said no"));
    let slow = finished(&f.app, &s, slow.id).await.job;
    assert_eq!(slow.status, JobStatus::Failed);
    assert!(slow.error.unwrap().contains("timed out"));
    let panicking = finished(&f.app, &s, panicking.id).await.job;
    assert_eq!(panicking.status, JobStatus::Failed);
    assert_eq!(panicking.error.as_deref(), Some("internal error"));
    assert_eq!(f.app.jobs().live_count(), 0);
}

#[tokio::test]
async fn per_host_limit_and_cancel_running_and_queued() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let host = HostId::new();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut ids = Vec::new();
    for _ in 0..(DEFAULT_PER_HOST + 2) {
        let (running, peak) = (running.clone(), peak.clone());
        let job = f
            .app
            .job_submit(
                &s,
                JobSpec::new("test.hold", s.id()).on_host(host),
                move |ctx| async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Cooperative: stop when cancelled.
                    ctx.cancellation().cancelled().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(serde_json::Value::Null)
                },
            )
            .await
            .unwrap();
        ids.push(job.id);
    }
    // Wait until the limit is reached; the rest must stay queued.
    for _ in 0..100 {
        if running.load(Ordering::SeqCst) == DEFAULT_PER_HOST {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Which jobs got a slot depends on task scheduling, not submission order.
    let mut queued = Vec::new();
    let mut started = Vec::new();
    for id in &ids {
        match f.app.job_get(&s, *id).await.unwrap().job.status {
            JobStatus::Queued => queued.push(*id),
            JobStatus::Running => started.push(*id),
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!((started.len(), queued.len()), (DEFAULT_PER_HOST, 2));
    let cancelled = f.app.job_cancel(&s, queued[0]).await.unwrap().job;
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(cancelled.started_at.is_none(), "never ran");
    let first = f.app.job_cancel(&s, started[0]).await.unwrap().job;
    assert_eq!(first.status, JobStatus::Cancelled);
    // Cancelling a finished job is a conflict.
    assert!(matches!(
        f.app.job_cancel(&s, started[0]).await,
        Err(AppError::Conflict(_))
    ));
    for id in started[1..].iter().chain(&queued[1..]) {
        f.app.job_cancel(&s, *id).await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), DEFAULT_PER_HOST);
    assert_eq!(running.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn children_and_cancelling_the_parent() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let parent = f
        .app
        .job_submit(&s, JobSpec::new("test.parent", s.id()), |ctx| async move {
            let quick = ctx
                .child(JobSpec::new("test.child", UserId::new()), |_c| async move {
                    Ok(serde_json::json!(1))
                })
                .await?;
            let done = ctx.wait_for(quick.id).await?;
            ctx.info(format!("child finished: {}", done.status)).await;
            let stuck = ctx
                .child(JobSpec::new("test.child", UserId::new()), |c| async move {
                    c.cancellation().cancelled().await;
                    Ok(serde_json::Value::Null)
                })
                .await?;
            ctx.wait_for(stuck.id).await?;
            Ok(serde_json::Value::Null)
        })
        .await
        .unwrap();
    // Wait for both children to exist.
    let children = loop {
        let kids = f
            .app
            .jobs_list(
                &s,
                JobFilter {
                    parent: Some(parent.id),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        if kids.len() == 2 {
            break kids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        children.iter().all(|c| c.owner == s.id()),
        "children belong to the parent's owner, whatever the spec said"
    );
    f.app.job_cancel(&s, parent.id).await.unwrap();
    for child in children {
        let child = finished(&f.app, &s, child.id).await.job;
        assert!(
            matches!(child.status, JobStatus::Succeeded | JobStatus::Cancelled),
            "{child:?}"
        );
        assert_eq!(child.parent, Some(parent.id));
    }
    let parent = finished(&f.app, &s, parent.id).await;
    assert_eq!(parent.job.status, JobStatus::Cancelled);
    assert_eq!(parent.log[0].message, "child finished: succeeded");
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
            .job_submit(&reader, JobSpec::new("test.x", reader.id()), |_c| async {
                Ok(serde_json::Value::Null)
            })
            .await,
        Err(AppError::Forbidden(_))
    ));
    assert!(matches!(
        f.app
            .job_submit(&other, JobSpec::new("test.x", owner.id()), |_c| async {
                Ok(serde_json::Value::Null)
            })
            .await,
        Err(AppError::NotFound(_))
    ));
    assert!(matches!(
        f.app
            .job_submit(&owner, JobSpec::new("Bad Kind", owner.id()), |_c| async {
                Ok(serde_json::Value::Null)
            })
            .await,
        Err(AppError::Invalid(_))
    ));
    let job = f
        .app
        .job_submit(&owner, JobSpec::new("test.x", owner.id()), |_c| async {
            Ok(serde_json::Value::Null)
        })
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
    let theirs = JobFilter {
        limit: 10,
        ..Default::default()
    };
    assert!(
        f.app
            .jobs_list(&other, theirs.clone())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        f.app.jobs_list(&owner, theirs.clone()).await.unwrap().len(),
        1
    );
    let all = JobFilter {
        all: true,
        ..theirs
    };
    assert!(matches!(
        f.app.jobs_list(&owner, all.clone()).await,
        Err(AppError::Forbidden(_))
    ));
    assert_eq!(f.app.jobs_list(&admin, all).await.unwrap().len(), 1);
    // Events of the owner's job reach the owner and admins, not others.
    let mut mine = f
        .app
        .events_subscribe(&owner, EventFilter::default())
        .unwrap();
    let mut theirs = f
        .app
        .events_subscribe(&other, EventFilter::default())
        .unwrap();
    f.app.events().publish(
        other.id(),
        Event::HostConnected {
            host_id: HostId::new(),
        },
    );
    f.app.events().publish(
        owner.id(),
        Event::HostConnected {
            host_id: HostId::new(),
        },
    );
    let Some(Delivery::Event(env)) = mine.next().await else {
        panic!()
    };
    assert_eq!(env.owner, owner.id());
    let Some(Delivery::Event(env)) = theirs.next().await else {
        panic!()
    };
    assert_eq!(env.owner, other.id());
}

#[tokio::test]
async fn restart_marks_unfinished_jobs_interrupted() {
    let f = fixture().await;
    let s = subject(Role::Operator);
    let left = Job {
        id: JobId::new(),
        kind: "vm.start".into(),
        requester: s.id(),
        owner: s.id(),
        target: None,
        status: JobStatus::Running,
        progress: 30,
        created_at: Utc::now(),
        started_at: Some(Utc::now()),
        finished_at: None,
        error: None,
        result: None,
        parent: None,
    };
    f.app.store().job_insert(&left).await.unwrap();
    assert_eq!(f.app.jobs_recover().await.unwrap(), 1);
    let job = f.app.job_get(&s, left.id).await.unwrap().job;
    assert_eq!(job.status, JobStatus::Interrupted);
    assert_eq!(job.error.as_deref(), Some(INTERRUPTED_REASON));
    assert_eq!(f.app.jobs_recover().await.unwrap(), 0, "only once");
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
