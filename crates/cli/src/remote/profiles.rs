//! `overvisor profile list`.

use clap::Subcommand;

use super::client::Client;
use super::error::Result;
use super::output::{self, Format};

#[derive(Subcommand)]
pub enum ProfileCommand {
    /// The deployment profiles (built-in and the operator's).
    List,
}

pub async fn run(client: &Client, format: Format, cmd: ProfileCommand) -> Result<()> {
    match cmd {
        ProfileCommand::List => {
            let profiles = client.get(&["profiles"], &[]).await?;
            output::list(
                format,
                &profiles,
                &["NAME", "TITLE", "OS", "DEFAULTS", "SOURCE"],
                None,
                |p| {
                    let d = &p["defaults"];
                    vec![
                        output::text(&p["name"]),
                        output::text(&p["title"]),
                        output::text(&p["os"]),
                        format!(
                            "{} vCPU, {} MiB, {} GiB",
                            output::text(&d["vcpus"]),
                            output::text(&d["memory_mib"]),
                            output::text(&d["disk_gib"])
                        ),
                        if p["builtin"] == true {
                            "built-in"
                        } else {
                            "operator"
                        }
                        .into(),
                    ]
                },
            );
            Ok(())
        }
    }
}
