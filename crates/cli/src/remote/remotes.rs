//! `overvisor remote add|use|list|rm`: the services this CLI talks to.
//! Keys are read from a prompt or stdin, kept in remotes.toml (0600) and
//! never shown again: `list` shows their public prefix at most.

use std::io::{BufRead, IsTerminal};

use clap::Subcommand;
use serde_json::{Value, json};

use super::Opts;
use super::client::{Client, Target, parse_url};
use super::config::{self, Remote, Remotes};
use super::error::{Error, Result};
use super::output::{self, Format};

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Add (or replace) a remote; the API key is read from a prompt, or
    /// from stdin when that is not a terminal. The first remote becomes current.
    Add {
        name: String,
        /// The API's base URL, e.g. https://overvisor.example:8001
        url: String,
        /// Do not check the URL and key by signing in first.
        #[arg(long)]
        no_check: bool,
    },
    /// Make NAME the current remote.
    Use { name: String },
    /// List the remotes (keys by their public prefix only).
    List,
    /// Forget a remote and its key.
    Rm { name: String },
}

fn read_key() -> Result<String> {
    let key = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("API key: ").map_err(|e| Error::io("prompt", e))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::io("stdin", e))?;
        line
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(Error::Usage("no API key given".into()));
    }
    Ok(key)
}

pub async fn run(opts: &Opts, cmd: RemoteCommand) -> Result<()> {
    let path = config::require_path()?;
    let mut remotes = Remotes::load(&path)?;
    match cmd {
        RemoteCommand::Add {
            name,
            url,
            no_check,
        } => {
            if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(Error::Usage("a remote's name must be a word".into()));
            }
            let url = parse_url(&url)?;
            let api_key = read_key()?;
            let target = Target {
                url: url.clone(),
                api_key: api_key.clone(),
                ca_file: opts.ca_file.clone(),
            };
            let me = if no_check {
                Value::Null
            } else {
                Client::new(&target)?.get(&["users", "me"], &[]).await?
            };
            remotes.remotes.insert(
                name.clone(),
                Remote {
                    url: url.to_string(),
                    api_key,
                    ca_file: opts.ca_file.clone(),
                },
            );
            if remotes.current.is_none() {
                remotes.current = Some(name.clone());
            }
            remotes.save(&path)?;
            match opts.output {
                Format::Json | Format::Yaml => output::print_data(
                    opts.output,
                    &json!({
                        "name": name, "url": url.as_str(), "user": me,
                        "current": remotes.current.as_deref() == Some(name.as_str()),
                    }),
                ),
                Format::Table => {
                    let who = match (me["name"].as_str(), me["role"].as_str()) {
                        (Some(user), Some(role)) => format!(" as {user} ({role})"),
                        _ => String::new(),
                    };
                    println!("added remote {name}: {url}{who}");
                    if let Some(current) = &remotes.current {
                        println!("current remote: {current}");
                    }
                }
            }
            Ok(())
        }
        RemoteCommand::Use { name } => {
            if !remotes.remotes.contains_key(&name) {
                return Err(Error::NotFound(format!(
                    "no remote named {name:?} in {}",
                    path.display()
                )));
            }
            remotes.current = Some(name.clone());
            remotes.save(&path)?;
            if opts.output == Format::Table {
                println!("current remote: {name}");
            }
            Ok(())
        }
        RemoteCommand::Rm { name } => {
            if remotes.remotes.remove(&name).is_none() {
                return Err(Error::NotFound(format!("no remote named {name:?}")));
            }
            if remotes.current.as_deref() == Some(name.as_str()) {
                remotes.current = None;
            }
            remotes.save(&path)
        }
        RemoteCommand::List => {
            let current = remotes.current.as_deref();
            match opts.output {
                Format::Json | Format::Yaml => {
                    let list: Vec<Value> = remotes
                        .remotes
                        .iter()
                        .map(|(name, r)| {
                            json!({"name": name, "url": r.url, "key": config::key_prefix(&r.api_key),
                                   "ca_file": r.ca_file, "current": Some(name.as_str()) == current})
                        })
                        .collect();
                    output::print_data(opts.output, &Value::Array(list));
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = remotes
                        .remotes
                        .iter()
                        .map(|(name, r)| {
                            let mark = if Some(name.as_str()) == current {
                                "*"
                            } else {
                                ""
                            };
                            vec![
                                mark.into(),
                                name.clone(),
                                r.url.clone(),
                                config::key_prefix(&r.api_key),
                            ]
                        })
                        .collect();
                    output::table(&["", "NAME", "URL", "KEY"], &rows, None);
                }
            }
            Ok(())
        }
    }
}
