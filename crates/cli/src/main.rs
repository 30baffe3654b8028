//! `overvisor`: one binary that runs the service (`serve`), administers it
//! from the server's own shell (`user`, `migrate`, `backup`), and drives a
//! service's API from anywhere (`remote`, `host`, `vm`, `job`, … in
//! `remote/`).

mod admin;
mod agent;
mod generate;
mod malloc;
mod remote;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "overvisor",
    version,
    about = "Control plane for QEMU/KVM and Hyper-V hosts"
)]
struct Cli {
    /// TOML configuration file of the service (settings can also come from OVERVISOR_* variables).
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
    /// Apply database migrations and exit; with --to, copy this SQLite install into an empty PostgreSQL database.
    Migrate {
        /// URL (postgres://…) of an empty PostgreSQL database to copy every table into, checking the row counts; the URL may come from OVERVISOR_MIGRATE_TO instead, keeping a password off the command line.
        #[arg(
            long,
            value_name = "URL",
            env = "OVERVISOR_MIGRATE_TO",
            hide_env_values = true
        )]
        to: Option<String>,
    },
    /// Write a consistent copy of the database to FILE (the master key is not included: back it up separately).
    Backup { file: PathBuf },
    /// Replace the database with a backup made by `backup` (stop the service first).
    Restore { file: PathBuf },
    /// Host agent: run on a hypervisor host to enrol it.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    #[command(flatten)]
    Remote(remote::Command),
    /// Print shell completions (bash, zsh, fish) to stdout.
    Completions { shell: generate::Shell },
    /// Print the man page, or write one per command into DIR.
    Man { dir: Option<PathBuf> },
}

/// `--help`'s closing words: where remotes live (`remotes`) and what
/// exit codes mean.
fn after_help(remotes: &str) -> String {
    format!(
        "Remote commands (remote, host, vm, job, events, profile, audit) use the remotes in\n  {remotes}\n\
         (mode 0600); OVERVISOR_URL and OVERVISOR_API_KEY override them for scripts.\n\n\
         Exit codes: 0 ok, 1 failed (an API error, or a job that failed, was cancelled or\n\
         interrupted), 2 usage, 3 not found, 4 denied (401/403), 5 unreachable,\n\
         130 interrupted while waiting (the job keeps running).",
    )
}

/// The command line, its help naming `remotes` as the remotes file.
fn command_with(remotes: &str) -> clap::Command {
    Cli::command()
        .after_help(after_help(remotes))
        .mut_subcommand("remote", |cmd| {
            cmd.after_help(format!("Remotes are kept in {remotes} (mode 0600)."))
        })
}

/// The command line as this user sees it (their remotes file's path).
fn command() -> clap::Command {
    command_with(&remote::config_path_help())
}

/// The command line for pages written once for everyone.
fn generic_command() -> clap::Command {
    command_with(
        "$XDG_CONFIG_HOME/overvisor/remotes.toml (default ~/.config/overvisor/remotes.toml)",
    )
}

fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    if matches!(cli.command, Command::Serve) {
        // Before any thread exists: this may re-execute the process.
        malloc::settle();
    }
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
    let code = runtime.block_on(run(cli));
    // A console may leave a read of stdin blocked in a worker thread:
    // do not wait for it.
    runtime.shutdown_background();
    code
}

async fn run(cli: Cli) -> ExitCode {
    let local = match cli.command {
        Command::Remote(cmd) => {
            return match remote::run(cmd).await {
                Ok(()) => ExitCode::SUCCESS,
                // Ctrl-C while waiting is no error: it says how to go on.
                Err(err @ remote::Error::Interrupted(_)) => {
                    eprintln!("{err}");
                    ExitCode::from(err.exit_code())
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::from(err.exit_code())
                }
            };
        }
        Command::Completions { shell } => {
            return generate::completions(shell, &mut generic_command());
        }
        Command::Man { dir } => return generate::man(generic_command(), dir.as_deref()),
        local => local,
    };
    let config = match overvisor_server::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(remote::exit::USAGE);
        }
    };
    let result = match local {
        Command::Serve => serve::run(config).await,
        Command::User(cmd) => admin::user(config, cmd).await,
        Command::Migrate { to: None } => admin::migrate(config).await,
        Command::Migrate { to: Some(url) } => admin::migrate_to(config, &url).await,
        Command::Backup { file } => admin::backup(config, &file).await,
        Command::Restore { file } => admin::restore(config, &file).await,
        Command::Key(cmd) => admin::key(config, cmd).await,
        Command::Agent(cmd) => agent::run(cmd).await,
        Command::Remote(_) | Command::Completions { .. } | Command::Man { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
