//! The remote commands: drive an Overvisor service's REST API from a shell
//! (`remote`, `host`, `vm`, `job`, `events`, `profile`, `audit`). A thin
//! client: every answer is the API's, shown as a table or passed through
//! as JSON.

mod audit;
mod client;
mod config;
mod console;
mod error;
mod events;
mod guest_keys;
mod hosts;
mod jobs;
mod output;
mod profiles;
mod remotes;
mod tls;
mod vms;
mod wait;

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use error::{Error, exit};
use output::Format;

/// Options every remote command takes.
#[derive(Args, Clone)]
pub struct Opts {
    /// The remote to use (default: the current one; see `overvisor remote`).
    #[arg(long, global = true, env = "OVERVISOR_REMOTE")]
    pub remote: Option<String>,
    /// Output format: `table` for people, `json` (the API's own shapes) or `yaml` for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// A PEM file of CA certificates to trust besides the built-in roots
    /// (TLS is always verified).
    #[arg(long, global = true, env = "OVERVISOR_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Remotes: the services this CLI talks to, with their API keys.
    Remote {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        cmd: remotes::RemoteCommand,
    },
    /// Hypervisor hosts: list, show, add, edit, remove, resync, facts.
    Host {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        cmd: hosts::HostCommand,
    },
    /// VMs: list, show, lifecycle, remove, deploy, serial console.
    Vm {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        cmd: vms::VmCommand,
    },
    /// Jobs: list, show, watch, cancel.
    Job {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        cmd: jobs::JobCommand,
    },
    /// Tail the event stream (job, VM and host changes).
    Events {
        #[command(flatten)]
        opts: Opts,
        #[command(flatten)]
        args: events::EventsArgs,
    },
    /// Deployment profiles.
    Profile {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        cmd: profiles::ProfileCommand,
    },
    /// Your guest SSH keys: list, add, rm (deployments without keys inject them).
    GuestKey {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        cmd: guest_keys::GuestKeyCommand,
    },
    /// The audit log.
    Audit {
        #[command(flatten)]
        opts: Opts,
        #[command(flatten)]
        args: audit::AuditArgs,
    },
}

/// Where remotes are kept, for `--help`.
pub fn config_path_help() -> String {
    config::path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "$XDG_CONFIG_HOME/overvisor/remotes.toml".into())
}

/// Runs a remote command.
pub async fn run(cmd: Command) -> Result<(), Error> {
    let connect = |opts: &Opts| -> Result<client::Client, Error> {
        client::Client::new(&client::Target::resolve(opts)?)
    };
    match cmd {
        Command::Remote { opts, cmd } => remotes::run(&opts, cmd).await,
        Command::Host { opts, cmd } => hosts::run(&connect(&opts)?, opts.output, cmd).await,
        Command::Vm { opts, cmd } => vms::run(&connect(&opts)?, opts.output, cmd).await,
        Command::Job { opts, cmd } => jobs::run(&connect(&opts)?, opts.output, cmd).await,
        Command::Events { opts, args } => events::run(&connect(&opts)?, opts.output, args).await,
        Command::Profile { opts, cmd } => profiles::run(&connect(&opts)?, opts.output, cmd).await,
        Command::GuestKey { opts, cmd } => {
            guest_keys::run(&connect(&opts)?, opts.output, cmd).await
        }
        Command::Audit { opts, args } => audit::run(&connect(&opts)?, opts.output, args).await,
    }
}
