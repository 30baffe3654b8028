//! The API paths that are mostly database work, through the real service
//! on SQLite (a fresh data directory) or on PostgreSQL (`--database-url`, an
//! empty database): an authenticated read (the API key looked up by its
//! prefix and its last use recorded), a page of the job list, a page of the
//! audit log, and a job's whole round trip (`test.steps` with three empty
//! steps: the job row, the runner's claim, three step records, the audit
//! row, the long-poll answer). No lab: the hosts play no part. Run both
//! backends on the same machine state and compare medians.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::json;

use crate::jobs_path::job_round_trip;
use crate::service::Launch;
use crate::stats::Samples;

/// Jobs created before the list is timed (the page holds 50 of them).
const JOBS: usize = 200;

pub async fn run(
    binary: &Path,
    database_url: Option<&str>,
    requests: usize,
    runs: usize,
) -> anyhow::Result<()> {
    let backend = match database_url {
        Some(url) if url.starts_with("postgres") => "PostgreSQL",
        Some(_) => bail!("--database-url takes a postgres:// URL (SQLite is the default)"),
        None => "SQLite",
    };
    println!(
        "== Store paths through the API on {backend} ({requests} requests per read, {runs} job round trips)"
    );
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut env = vec![("OVERVISOR_TEST_JOBS", "1")];
    if let Some(url) = database_url {
        env.push(("OVERVISOR_DATABASE_URL", url));
    }
    let (_service, api) = crate::service::start(&Launch {
        binary,
        data_dir: &data,
        log_filter: "warn",
        log_file: None,
        read_banner: true,
        env: &env,
    })
    .await
    .context("starting the service (is the PostgreSQL database empty?)")?;

    // A `test.steps` job with three empty steps.
    let steps = json!({"steps": 3, "step_millis": 0});
    let mut round_trips = Samples::default();
    for i in 0..JOBS.max(runs) {
        let took = job_round_trip(&api, "/api/v1/jobs/test-steps", Some(&steps)).await?;
        if i < runs {
            round_trips.push(took);
        }
    }
    let reads = [
        ("GET /api/v1/users/me (API key)", "/api/v1/users/me"),
        ("GET /api/v1/jobs?limit=50", "/api/v1/jobs?limit=50"),
        (
            "GET /api/v1/audit?limit=50",
            "/api/v1/audit?all=true&limit=50",
        ),
    ];
    for (what, path) in reads {
        for _ in 0..100 {
            api.get(path).await?;
        }
        let mut samples = Samples::default();
        for _ in 0..requests {
            let started = Instant::now();
            api.get(path).await?;
            samples.push(started.elapsed());
        }
        println!("  {what:<34} {}", samples.line());
    }
    println!(
        "  {:<34} {}",
        "job round trip (3 steps)",
        round_trips.line()
    );
    Ok(())
}
