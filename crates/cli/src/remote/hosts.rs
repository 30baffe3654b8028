//! `overvisor host …`: list, show, add (probe, confirm the key's
//! fingerprint, register), edit, rm, resync, facts.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::client::{self, Client};
use super::error::{Error, Result};
use super::output::{self, Format};
use super::wait::{self, WaitOpts};

#[derive(Subcommand)]
pub enum HostCommand {
    /// List the hosts you may see.
    List,
    /// One host in detail (by name or id).
    Show { host: String },
    /// Register a host: shows the SSH host key's fingerprint and asks to
    /// confirm it (or give it with --fingerprint).
    Add(AddArgs),
    /// Change a host's settings (a job).
    Edit {
        host: String,
        #[command(flatten)]
        fields: HostFields,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New address.
        #[arg(long)]
        address: Option<String>,
        /// Pin this host key fingerprint instead.
        #[arg(long, value_name = "SHA256:…")]
        fingerprint: Option<String>,
        /// Forget the host's own credential (use your account's SSH identity).
        #[arg(long, conflicts_with = "private_key")]
        remove_credential: bool,
        #[command(flatten)]
        wait: WaitOpts,
    },
    /// Remove a host from Overvisor (its VMs are not touched; a job).
    Rm {
        host: String,
        #[command(flatten)]
        wait: WaitOpts,
    },
    /// Re-read a host's VMs now, or every host's without HOST (a job).
    Resync {
        host: Option<String>,
        #[command(flatten)]
        wait: WaitOpts,
    },
    /// CPU, memory and hypervisor versions, asked of the host now.
    Facts { host: String },
}

/// Settings `add` and `edit` share.
#[derive(Args)]
pub struct HostFields {
    /// SSH port.
    #[arg(long)]
    port: Option<u16>,
    /// The automation account Overvisor logs in as.
    #[arg(long)]
    user: Option<String>,
    /// libvirt connection URI on the host.
    #[arg(long)]
    libvirt_uri: Option<String>,
    /// A tag (repeat for several; on edit, replaces the tags).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// An SSH private key file for this host (else your account's identity).
    #[arg(long)]
    private_key: Option<PathBuf>,
}

#[derive(Args)]
pub struct AddArgs {
    /// Address (name or IP) of the host.
    address: String,
    /// Name shown for the host (default: its address).
    #[arg(long)]
    name: Option<String>,
    /// `libvirt` or `hyperv`.
    #[arg(long, default_value = "libvirt", value_parser = ["libvirt", "hyperv"])]
    kind: String,
    /// The host key fingerprint you compared out of band; required when
    /// stdin is not a terminal (there is nobody to ask).
    #[arg(long, value_name = "SHA256:…")]
    fingerprint: Option<String>,
    #[command(flatten)]
    fields: HostFields,
}

impl HostFields {
    fn into_body(self, body: &mut Map<String, Value>, tags_always: bool) -> Result<()> {
        if let Some(port) = self.port {
            body.insert("port".into(), json!(port));
        }
        if let Some(user) = self.user {
            body.insert("ssh_user".into(), json!(user));
        }
        if let Some(uri) = self.libvirt_uri {
            body.insert("libvirt_uri".into(), json!(uri));
        }
        if tags_always || !self.tags.is_empty() {
            body.insert("tags".into(), json!(self.tags));
        }
        if let Some(path) = self.private_key {
            let pem = std::fs::read_to_string(&path).map_err(|e| Error::io(path.display(), e))?;
            body.insert("credential".into(), json!({"private_key": pem}));
        }
        Ok(())
    }
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// A host named by id or by name.
pub async fn resolve(client: &Client, host: &str) -> Result<Value> {
    if is_uuid(host) {
        return client.get(&["hosts", host], &[]).await;
    }
    let hosts = client.get(&["hosts"], &[]).await?;
    let mut found = output::items(&hosts).iter().filter(|h| h["name"] == host);
    match (found.next(), found.next()) {
        (Some(h), None) => Ok(h.clone()),
        (Some(_), Some(_)) => Err(Error::Usage(format!(
            "several hosts are named {host:?}: give its id"
        ))),
        (None, _) => Err(Error::NotFound(format!("no host named {host:?}"))),
    }
}

pub async fn resolve_id(client: &Client, host: &str) -> Result<String> {
    if is_uuid(host) {
        return Ok(host.to_owned());
    }
    Ok(output::text(&resolve(client, host).await?["id"]))
}

/// `address:port`.
fn address(host: &Value) -> String {
    format!(
        "{}:{}",
        output::text(&host["address"]),
        output::text(&host["port"])
    )
}

fn show(format: Format, host: &Value) {
    output::object(format, host, |host| {
        vec![
            ("name", output::text(&host["name"])),
            ("id", output::text(&host["id"])),
            ("kind", output::text(&host["kind"])),
            ("address", address(host)),
            ("ssh user", output::text(&host["ssh_user"])),
            ("libvirt uri", output::text(&host["libvirt_uri"])),
            ("tags", output::text(&host["tags"])),
            ("host key", output::text(&host["host_key_fingerprint"])),
            ("own credential", output::text(&host["has_credential"])),
            ("created", output::relative(&host["created_at"])),
            ("updated", output::relative(&host["updated_at"])),
        ]
    });
}

/// Asks whoever is at the terminal to confirm the key, or checks the one
/// given; refuses to guess when nobody can be asked.
fn confirm_fingerprint(probed: &Value, given: Option<&str>) -> Result<String> {
    let presented = output::text(&probed["fingerprint"]);
    if let Some(given) = given {
        if given != presented {
            return Err(Error::Failed(format!(
                "the host presented {presented}, not {given}: not added"
            )));
        }
        return Ok(presented);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "the host presented {presented}; compare it out of band and pass --fingerprint {presented}"
        )));
    }
    eprintln!(
        "{}:{} presented the host key\n  {}\n  {presented}",
        output::text(&probed["address"]),
        output::text(&probed["port"]),
        output::text(&probed["public_key"])
    );
    eprint!("Is this the host's key (compare it on the host)? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io("stdin", e))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(presented)
    } else {
        Err(Error::Failed("not confirmed: host not added".into()))
    }
}

pub async fn run(client: &Client, format: Format, cmd: HostCommand) -> Result<()> {
    match cmd {
        HostCommand::List => {
            let hosts = client.get(&["hosts"], &[]).await?;
            output::list(
                format,
                &hosts,
                &["NAME", "KIND", "ADDRESS", "TAGS", "CREATED", "ID"],
                None,
                |h| {
                    vec![
                        output::text(&h["name"]),
                        output::text(&h["kind"]),
                        address(h),
                        output::text(&h["tags"]),
                        output::relative(&h["created_at"]),
                        output::text(&h["id"]),
                    ]
                },
            );
            Ok(())
        }
        HostCommand::Show { host } => {
            show(format, &resolve(client, &host).await?);
            Ok(())
        }
        HostCommand::Facts { host } => {
            let id = resolve_id(client, &host).await?;
            let facts = client.get(&["hosts", &id, "facts"], &[]).await?;
            output::object(format, &facts, |facts| {
                facts
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.as_str(), output::text(v)))
                            .collect()
                    })
                    .unwrap_or_default()
            });
            Ok(())
        }
        HostCommand::Add(args) => {
            let mut probe = json!({"address": args.address});
            if let Some(port) = args.fields.port {
                probe["port"] = json!(port);
            }
            let probed = client.post(&["hosts", "probe"], &probe).await?;
            let fingerprint = confirm_fingerprint(&probed, args.fingerprint.as_deref())?;
            let mut body = Map::new();
            body.insert("address".into(), json!(args.address));
            body.insert("kind".into(), json!(args.kind));
            body.insert("host_key_fingerprint".into(), json!(fingerprint));
            if let Some(name) = args.name {
                body.insert("name".into(), json!(name));
            }
            args.fields.into_body(&mut body, false)?;
            let host = client.post(&["hosts"], &Value::Object(body)).await?;
            show(format, &host);
            Ok(())
        }
        HostCommand::Edit {
            host,
            fields,
            name,
            address,
            fingerprint,
            remove_credential,
            wait,
        } => {
            let id = resolve_id(client, &host).await?;
            let mut body = Map::new();
            for (key, value) in client::query([
                ("name", name),
                ("address", address),
                ("host_key_fingerprint", fingerprint),
            ]) {
                body.insert(key.into(), json!(value));
            }
            if remove_credential {
                body.insert("remove_credential".into(), json!(true));
            }
            fields.into_body(&mut body, false)?;
            if body.is_empty() {
                return Err(Error::Usage(
                    "nothing to change: give at least one option".into(),
                ));
            }
            let job = client
                .call(
                    Method::PATCH,
                    client.url(&["hosts", &id]),
                    Some(&Value::Object(body)),
                )
                .await?;
            wait::started(client, format, &job, wait).await
        }
        HostCommand::Rm { host, wait } => {
            let id = resolve_id(client, &host).await?;
            let job = client
                .call(Method::DELETE, client.url(&["hosts", &id]), None)
                .await?;
            wait::started(client, format, &job, wait).await
        }
        HostCommand::Resync { host, wait } => {
            let job = match host {
                Some(host) => {
                    let id = resolve_id(client, &host).await?;
                    client.post(&["hosts", &id, "resync"], &json!({})).await?
                }
                None => client.post(&["inventory", "resync"], &json!({})).await?,
            };
            wait::started(client, format, &job, wait).await
        }
    }
}
