//! `overvisor`: one binary that runs the service (`serve`), administers it
//! from the server's own shell (`user`, `migrate`, `backup`), and — in later
//! commands — drives the API for scripts.

mod admin;
mod agent;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "overvisor",
    version,
    about = "Control plane for QEMU/KVM and Hyper-V hosts"
)]
struct Cli {
    /// TOML configuration file (settings can also come from OVERVISOR_* variables).
    #[arg(long, global = true, env = "OVERVISOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (portal on the UI port, REST API on the API port).
    Serve,
    /// Manage user accounts on this server.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Manage any user's API keys on this server.
    #[command(subcommand)]
    Key(admin::KeyCommand),
    /// Apply database migrations and exit.
    Migrate,
    /// Write a consistent copy of the database to FILE (the master key is not included: back it up separately).
    Backup { file: PathBuf },
    /// Replace the database with a backup made by `backup` (stop the service first).
    Restore { file: PathBuf },
    /// Host agent: run on a hypervisor host to enrol it.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match overvisor_server::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve::run(config).await,
            Command::User(cmd) => admin::user(config, cmd).await,
            Command::Migrate => admin::migrate(config).await,
            Command::Backup { file } => admin::backup(config, &file).await,
            Command::Restore { file } => admin::restore(config, &file).await,
            Command::Key(cmd) => admin::key(config, cmd).await,
            Command::Agent(cmd) => agent::run(cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
