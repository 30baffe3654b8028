//! Administration from the server's own shell: users, migrations (and the
//! move from SQLite to PostgreSQL), backups.
//! These act as the console operator (who owns the data directory).

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use anyhow::{Context, bail};
use clap::Subcommand;
use overvisor_control::accounts::NewUser;
use overvisor_control::authz::Subject;
use overvisor_model::account::{Email, Role, UserChanges, UserName};
use overvisor_server::Config;
use overvisor_store::{Backend, Store};

use crate::serve::open_app;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create an account; prompts for its password and prints its first API key once.
    Create {
        name: String,
        email: String,
        #[arg(long, default_value = "operator", value_parser = ["reader", "operator", "admin"])]
        role: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: its sessions end and its API keys stop working.
    Disable { name: String },
    /// Re-enable a disabled account.
    Enable { name: String },
    /// Set a new password (prompted, or from standard input); all sessions end.
    ResetPassword {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to prompt for a password; use --password-stdin");
    }
    let first = rpassword::prompt_password("Password: ")?;
    let second = rpassword::prompt_password("Repeat password: ")?;
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first)
}

pub async fn user(config: Config, command: UserCommand) -> anyhow::Result<()> {
    crate::serve::init_logging("text");
    let app = open_app(&config).await?;
    let console = Subject::console();
    match command {
        UserCommand::Create {
            name,
            email,
            role,
            password_stdin,
        } => {
            let new = NewUser {
                name: UserName::parse(&name)?,
                email: Email::parse(&email)?,
                role: role.parse::<Role>()?,
                password: Some(read_password(password_stdin)?),
            };
            let created = app.user_create(&console, new).await?;
            println!(
                "created user {} ({}, role {})",
                created.user.name, created.user.id, created.user.role
            );
            println!("API key \"{}\" (shown only now):", created.api_key.name);
            println!("{}", created.api_token);
        }
        UserCommand::List { json } => {
            let users = app.users_list(&console).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!(
                    "{:<20} {:<9} {:<9} {:<30} ID",
                    "NAME", "ROLE", "STATUS", "EMAIL"
                );
                for u in users {
                    let status = if u.disabled { "disabled" } else { "active" };
                    println!(
                        "{:<20} {:<9} {:<9} {:<30} {}",
                        u.name,
                        u.role,
                        status,
                        u.email.as_str(),
                        u.id
                    );
                }
            }
        }
        UserCommand::Disable { name } | UserCommand::Enable { name } if name.is_empty() => {
            bail!("name is empty")
        }
        UserCommand::Disable { name } => set_disabled(&app, &console, &name, true).await?,
        UserCommand::Enable { name } => set_disabled(&app, &console, &name, false).await?,
        UserCommand::ResetPassword {
            name,
            password_stdin,
        } => {
            let user = app.user_by_name(&console, &name).await?;
            let password = read_password(password_stdin)?;
            app.user_reset_password(&console, user.id, Some(password))
                .await?;
            println!("password of {name} changed; all of its sessions were ended");
        }
    }
    Ok(())
}

async fn set_disabled(
    app: &overvisor_control::App,
    console: &Subject,
    name: &str,
    disabled: bool,
) -> anyhow::Result<()> {
    let user = app.user_by_name(console, name).await?;
    let changes = UserChanges {
        disabled: Some(disabled),
        ..Default::default()
    };
    app.user_update(console, user.id, changes).await?;
    println!(
        "{name} is now {}",
        if disabled { "disabled" } else { "enabled" }
    );
    Ok(())
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create an API key for USER; prints the token once.
    Create {
        user: String,
        name: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List USER's API keys (never their tokens).
    List {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke one of USER's API keys by id.
    Revoke { user: String, id: String },
}

pub async fn key(config: Config, command: KeyCommand) -> anyhow::Result<()> {
    crate::serve::init_logging("text");
    let app = open_app(&config).await?;
    let console = Subject::console();
    match command {
        KeyCommand::Create {
            user,
            name,
            expires_in_days,
        } => {
            let owner = app.user_by_name(&console, &user).await?;
            let expires_at = expires_in_days
                .map(|d| chrono::Utc::now() + chrono::Duration::days(i64::from(d.clamp(1, 3650))));
            let (key, token) = app
                .api_key_create_for(&console, owner.id, &name, expires_at)
                .await?;
            println!(
                "API key \"{}\" ({}) for {user} (shown only now):",
                key.name, key.id
            );
            println!("{token}");
        }
        KeyCommand::List { user, json } => {
            let owner = app.user_by_name(&console, &user).await?;
            let keys = app.api_keys_list_for(&console, owner.id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<36} {:<20} {:<14} {:<8} EXPIRES",
                    "ID", "NAME", "PREFIX", "STATUS"
                );
                for k in keys {
                    let status = if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    let expires = k
                        .expires_at
                        .map_or_else(|| "never".to_owned(), |e| e.to_rfc3339());
                    println!(
                        "{:<36} {:<20} {:<14} {:<8} {expires}",
                        k.id, k.name, k.prefix, status
                    );
                }
            }
        }
        KeyCommand::Revoke { user, id } => {
            let owner = app.user_by_name(&console, &user).await?;
            let id = id.parse()?;
            app.api_key_revoke_for(&console, owner.id, id).await?;
            println!("key {id} of {user} revoked");
        }
    }
    Ok(())
}

pub async fn migrate(config: Config) -> anyhow::Result<()> {
    open_app(&config).await?;
    println!("database is up to date");
    Ok(())
}

/// Copies the configured SQLite database into the empty PostgreSQL
/// database at `url`, both migrated first, and checks every table's row
/// count. The service must be stopped (nothing may write meanwhile).
pub async fn migrate_to(config: Config, url: &str) -> anyhow::Result<()> {
    if Backend::of_url(url) != Backend::Postgres {
        bail!("--to takes the URL of a PostgreSQL database (postgres://…)");
    }
    let source_url = config.database_url();
    if Backend::of_url(&source_url) != Backend::Sqlite {
        bail!("the configured database is already PostgreSQL: --to copies a SQLite install");
    }
    let source = Store::open_url(&source_url)
        .await
        .context("opening the SQLite database")?;
    let target = Store::open_url(url)
        .await
        .context("connecting to the PostgreSQL database")?;
    let counts = overvisor_store::copy::sqlite_to_postgres(&source, &target)
        .await
        .context("copying to PostgreSQL")?;
    source.close().await;
    target.close().await;
    println!("{:<20} ROWS", "TABLE");
    for count in &counts {
        println!("{:<20} {}", count.table, count.rows);
    }
    println!(
        "copied {} tables; the row counts match. Now set database_url to the PostgreSQL URL \
         (OVERVISOR_DATABASE_URL) and start the service with the same master key; \
         the SQLite file is left as it was",
        counts.len()
    );
    Ok(())
}

/// The backup commands copy SQLite files; PostgreSQL has its own tools.
fn refuse_postgres(config: &Config, command: &str) -> anyhow::Result<()> {
    if Backend::of_url(&config.database_url()) == Backend::Postgres {
        bail!(
            "{command} handles the SQLite database only: back up and restore PostgreSQL \
             with pg_dump and pg_restore (docs/postgresql.md)"
        );
    }
    Ok(())
}

/// Replaces the database with a backup. The service must be stopped; the
/// current database is kept beside it as `overvisor.db.before-restore-<time>`.
pub async fn restore(config: Config, file: &Path) -> anyhow::Result<()> {
    refuse_postgres(&config, "restore")?;
    if config.database_url.is_some() {
        bail!("restore handles the default SQLite database in the data directory only");
    }
    // Check the backup before touching anything.
    let backup = overvisor_store::Store::open_sqlite_read_only(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    backup
        .integrity_check()
        .await
        .context("the backup is damaged")?;
    backup.close().await;
    let db = config.data_dir.join("overvisor.db");
    if db.exists() {
        let aside = config.data_dir.join(format!(
            "overvisor.db.before-restore-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        ));
        std::fs::rename(&db, &aside).context("moving the current database aside")?;
        println!("current database kept as {}", aside.display());
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(config.data_dir.join(format!("overvisor.db{suffix}")));
    }
    std::fs::copy(file, &db).context("copying the backup into place")?;
    open_app(&config).await?;
    println!("database restored from {} and migrated", file.display());
    Ok(())
}

pub async fn backup(config: Config, file: &Path) -> anyhow::Result<()> {
    refuse_postgres(&config, "backup")?;
    if file.exists() {
        bail!("{} already exists", file.display());
    }
    let app = open_app(&config).await?;
    app.store().backup_to(file).await?;
    println!("database copied to {}", file.display());
    println!(
        "keep the master key ({}) safe as well: sealed secrets need it",
        config.master_key_path().display()
    );
    Ok(())
}
