//! Waiting for a job: long-polls it, draws a progress bar (steps, percent,
//! bytes) on a terminal, prints its log lines as they come, and leaves it
//! running on Ctrl-C.

use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::client::Client;
use super::error::{Error, Result};
use super::output::{self, Format};

#[derive(Args, Clone, Copy)]
pub struct WaitOpts {
    /// Print the job's id (or, with -o json, the job) and return at once
    /// instead of waiting for the job to end.
    #[arg(long)]
    pub no_wait: bool,
}

/// The job a command started: its id printed (`--no-wait`), or waited for
/// and reported.
pub async fn started(client: &Client, format: Format, job: &Value, wait: WaitOpts) -> Result<()> {
    let id = job_id(job)?;
    if wait.no_wait {
        match format {
            Format::Json | Format::Yaml => output::print_data(format, job),
            Format::Table => println!("{id}"),
        }
        return Ok(());
    }
    let done = watch(client, &id).await?;
    report(format, &done)
}

pub fn job_id(job: &Value) -> Result<String> {
    job["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Failed(format!("the service answered no job id: {job}")))
}

pub fn finished(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled" | "interrupted")
    )
}

/// Prints the finished job; a job that did not succeed is exit code 1.
pub fn report(format: Format, job: &Value) -> Result<()> {
    match format {
        Format::Json | Format::Yaml => output::print_data(format, job),
        Format::Table if job["status"] == "succeeded" => {
            let result = match &job["result"] {
                Value::Null => String::new(),
                r => format!(": {r}"),
            };
            println!(
                "job {} ({}) succeeded{result}",
                output::text(&job["id"]),
                output::text(&job["kind"])
            );
        }
        Format::Table => {}
    }
    succeeded(job)
}

/// Ok for a job that succeeded, else the job's failure (exit code 1).
pub fn succeeded(job: &Value) -> Result<()> {
    match job["status"].as_str() {
        Some("succeeded") => Ok(()),
        status => Err(Error::JobFailed {
            id: output::text(&job["id"]),
            status: status.unwrap_or("ended").to_owned(),
            reason: job["error"].as_str().map(str::to_owned),
        }),
    }
}

/// Waits for job `id` to end and returns it; Ctrl-C stops waiting (not
/// the job).
pub async fn watch(client: &Client, id: &str) -> Result<Value> {
    let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:30}] {pos:>3}% {wide_msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    let outcome = tokio::select! {
        done = follow(client, id, &bar) => done,
        _ = tokio::signal::ctrl_c() => Err(Error::Interrupted(id.to_owned())),
    };
    // The job runs on without us: say how to find it again.
    let outcome = outcome.map_err(|e| match e {
        Error::Unreachable { url, reason } => Error::Unreachable {
            url,
            reason: format!("{reason} (job {id} may still be running: `overvisor job watch {id}`)"),
        },
        other => other,
    });
    match &outcome {
        Ok(_) => bar.finish_and_clear(),
        Err(_) => bar.abandon(),
    }
    outcome
}

async fn follow(client: &Client, id: &str, bar: &ProgressBar) -> Result<Value> {
    let mut logged = 0;
    loop {
        // One second at a time: the answer comes at once when the job
        // ends, and the bar moves at least every second meanwhile.
        let job = client
            .get(&["jobs", id], &[("wait", "1".to_owned())])
            .await?;
        let log = job["log"].as_array().map(Vec::as_slice).unwrap_or_default();
        for line in log.iter().skip(logged) {
            let text = format!(
                "{} {}",
                output::text(&line["level"]),
                output::text(&line["message"])
            );
            bar.suspend(|| eprintln!("{text}"));
        }
        logged = logged.max(log.len());
        bar.set_position(job["progress"].as_u64().unwrap_or(0).min(100));
        bar.set_message(progress_message(&job));
        if finished(&job) {
            return Ok(job);
        }
    }
}

/// `vm.deploy step 2/5 image 40% (1.2 GiB of 3.0 GiB)`: the job's kind,
/// its current step and, where the step says, its bytes.
pub fn progress_message(job: &Value) -> String {
    let kind = output::text(&job["kind"]);
    let steps = job["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let current = steps
        .iter()
        .rev()
        .find(|s| s["status"] != "pending")
        .or_else(|| steps.first());
    let Some(step) = current else {
        return format!("{kind} {}", output::text(&job["status"]));
    };
    let index = step["index"].as_u64().unwrap_or(0) + 1;
    let mut message = format!(
        "{kind} step {index}/{} {} {}%",
        steps.len(),
        output::text(&step["name"]),
        step["progress"].as_u64().unwrap_or(0)
    );
    let out = &step["output"];
    if let Some(done) = out["bytes"].as_u64() {
        message.push_str(&format!(" ({}", output::bytes(done)));
        if let Some(total) = out["total"].as_u64().filter(|t| *t > 0) {
            message.push_str(&format!(" of {}", output::bytes(total)));
        }
        message.push(')');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_names_the_step_and_its_bytes() {
        let job = json!({"kind": "vm.deploy", "status": "running", "steps": [
            {"index": 0, "name": "image", "status": "done", "progress": 100,
             "output": {"bytes": 1536, "total": 3072}},
            {"index": 1, "name": "overlay", "status": "pending", "progress": 0},
        ]});
        assert_eq!(
            progress_message(&job),
            "vm.deploy step 1/2 image 100% (1.5 KiB of 3.0 KiB)"
        );
        let job = json!({"kind": "vm.start", "status": "queued", "steps": []});
        assert_eq!(progress_message(&job), "vm.start queued");
    }

    #[test]
    fn only_success_exits_zero() {
        let ok = json!({"id": "j", "status": "succeeded", "kind": "k"});
        assert!(report(Format::Json, &ok).is_ok());
        let failed = json!({"id": "j", "status": "cancelled", "error": "asked"});
        let err = report(Format::Json, &failed).expect_err("an error");
        assert_eq!(err.exit_code(), 1);
        assert_eq!(err.to_string(), "job j cancelled: asked");
    }
}
