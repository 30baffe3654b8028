//! `overvisor audit`: the audit log, filtered as the API filters it.

use clap::Args;

use super::client::{self, Client};
use super::error::Result;
use super::output::{self, Format};

#[derive(Args)]
pub struct AuditArgs {
    /// Only this actor (user id).
    #[arg(long)]
    actor: Option<String>,
    /// Actions starting with this, e.g. `vm.` or `auth.login`.
    #[arg(long)]
    action: Option<String>,
    /// success, failure or denied.
    #[arg(long)]
    outcome: Option<String>,
    /// From this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Until this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Administrators: everyone's events.
    #[arg(long)]
    all: bool,
    /// How many (1-1000), newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

pub async fn run(client: &Client, format: Format, args: AuditArgs) -> Result<()> {
    let query = client::query([
        ("limit", Some(args.limit.to_string())),
        ("actor", args.actor),
        ("action", args.action),
        ("outcome", args.outcome),
        ("since", args.since),
        ("until", args.until),
        ("all", args.all.then(|| "true".into())),
    ]);
    let events = client.get(&["audit"], &query).await?;
    output::list(
        format,
        &events,
        &["WHEN", "ACTOR", "ACTION", "OUTCOME", "TARGET", "DETAIL"],
        Some(3),
        |e| {
            vec![
                output::relative(&e["at"]),
                output::text(&e["actor_name"]),
                output::text(&e["action"]),
                output::text(&e["outcome"]),
                output::text(&e["target"]),
                output::text(&e["detail"]),
            ]
        },
    );
    Ok(())
}
