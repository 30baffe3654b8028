//! `overvisor job list|show|watch|cancel`.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{self, Client};
use super::error::Result;
use super::output::{self, Format};
use super::wait;

#[derive(Subcommand)]
pub enum JobCommand {
    /// Recent jobs, newest first.
    List(ListArgs),
    /// One job with its steps and log.
    Show { id: String },
    /// Wait for a job to end, with its progress and log (exit 1 unless it succeeds).
    Watch { id: String },
    /// Ask a running job to stop (its steps are undone).
    Cancel { id: String },
}

#[derive(Args)]
pub struct ListArgs {
    /// queued, running, succeeded, failed, cancelled or interrupted.
    #[arg(long)]
    status: Option<String>,
    /// Exact kind, e.g. vm.start.
    #[arg(long)]
    kind: Option<String>,
    /// Exact target, e.g. host:<id>.
    #[arg(long)]
    target: Option<String>,
    /// Administrators: every user's jobs.
    #[arg(long)]
    all: bool,
    /// How many (1-1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

fn show(job: &Value) {
    output::fields(&[
        ("id", output::text(&job["id"])),
        ("kind", output::text(&job["kind"])),
        ("target", output::text(&job["target"])),
        ("status", output::text(&job["status"])),
        ("progress", format!("{}%", output::text(&job["progress"]))),
        ("created", output::relative(&job["created_at"])),
        ("finished", output::relative(&job["finished_at"])),
        ("error", output::text(&job["error"])),
        ("result", output::text(&job["result"])),
    ]);
    let steps: Vec<Vec<String>> = output::items(&job["steps"])
        .iter()
        .map(|s| {
            vec![
                (s["index"].as_u64().unwrap_or(0) + 1).to_string(),
                output::text(&s["name"]),
                output::text(&s["status"]),
                format!("{}%", output::text(&s["progress"])),
                output::text(&s["error"]),
            ]
        })
        .collect();
    if !steps.is_empty() {
        println!();
        output::table(
            &["#", "STEP", "STATUS", "PROGRESS", "ERROR"],
            &steps,
            Some(2),
        );
    }
    let log = output::items(&job["log"]);
    if !log.is_empty() {
        println!();
        for line in log {
            println!(
                "{} {:<5} {}",
                output::text(&line["at"]),
                output::text(&line["level"]),
                output::text(&line["message"])
            );
        }
    }
}

pub async fn run(client: &Client, format: Format, cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::List(args) => {
            let query = client::query([
                ("limit", Some(args.limit.to_string())),
                ("status", args.status),
                ("kind", args.kind),
                ("target", args.target),
                ("all", args.all.then(|| "true".into())),
            ]);
            let jobs = client.get(&["jobs"], &query).await?;
            output::list(
                format,
                &jobs,
                &["ID", "KIND", "STATUS", "PROGRESS", "TARGET", "CREATED"],
                Some(2),
                |j| {
                    vec![
                        output::text(&j["id"]),
                        output::text(&j["kind"]),
                        output::text(&j["status"]),
                        format!("{}%", output::text(&j["progress"])),
                        output::text(&j["target"]),
                        output::relative(&j["created_at"]),
                    ]
                },
            );
            Ok(())
        }
        JobCommand::Show { id } => {
            let job = client.get(&["jobs", &id], &[]).await?;
            match format {
                Format::Json | Format::Yaml => output::print_data(format, &job),
                Format::Table => show(&job),
            }
            Ok(())
        }
        JobCommand::Watch { id } => {
            let done = wait::watch(client, &id).await?;
            wait::report(format, &done)
        }
        JobCommand::Cancel { id } => {
            let job = client.post(&["jobs", &id, "cancel"], &json!({})).await?;
            match format {
                Format::Json | Format::Yaml => output::print_data(format, &job),
                Format::Table => println!("job {id}: {}", output::text(&job["status"])),
            }
            Ok(())
        }
    }
}
