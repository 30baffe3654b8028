//! `overvisor vm …`: list (every page), show, lifecycle actions, rm,
//! deploy and the serial console.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::client::{self, Client};
use super::error::{Error, Result};
use super::output::{self, Format};
use super::wait::{self, WaitOpts};
use super::{console, hosts};

/// A VM by name or UUID; `--host` when the name is on several hosts.
#[derive(Args)]
pub struct VmRef {
    /// The VM's name (as its host spells it) or UUID.
    pub vm: String,
    /// The host the VM is on (name or id); needed only when several hosts
    /// have a VM of that name.
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Args)]
pub struct Act {
    #[command(flatten)]
    vm: VmRef,
    #[command(flatten)]
    wait: WaitOpts,
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// List VMs from the inventory: filters and sort as the API takes
    /// them; pages through everything.
    List(ListArgs),
    /// One VM in detail, read from its host now.
    Show(VmRef),
    /// Start a VM.
    Start(Act),
    /// Shut a VM down gracefully (ACPI).
    Shutdown(Act),
    /// Stop a VM at once (power off).
    Stop(Act),
    /// Reboot a VM gracefully.
    Reboot(Act),
    /// Reset a VM (hard).
    Reset(Act),
    /// Pause (suspend) a VM.
    Pause(Act),
    /// Resume a paused VM.
    Resume(Act),
    /// Delete a shut-off VM.
    Rm {
        #[command(flatten)]
        act: Act,
        /// Also delete its disks.
        #[arg(long)]
        with_storage: bool,
    },
    /// Deploy a VM from a profile (prints the guest's credentials once).
    Deploy(DeployArgs),
    /// Attach this terminal to a VM's serial console (Ctrl-] detaches).
    Console(VmRef),
}

#[derive(Args)]
pub struct ListArgs {
    /// Only VMs on this host (name or id).
    #[arg(long)]
    host: Option<String>,
    /// `libvirt` or `hyperv`.
    #[arg(long, value_parser = ["libvirt", "hyperv"])]
    kind: Option<String>,
    /// e.g. `running`, `shut_off`, `paused`.
    #[arg(long)]
    state: Option<String>,
    /// Case-insensitive substring of the name.
    #[arg(long)]
    name: Option<String>,
    /// A host tag the VM's host must have (repeat for several).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// `name`, `state`, `host`, `memory` or `vcpus`; `-` prefix for descending.
    #[arg(long, allow_hyphen_values = true)]
    sort: Option<String>,
    /// VMs asked for per request (all pages are read).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
    page_size: u16,
}

#[derive(Args)]
pub struct DeployArgs {
    /// The host to deploy on (name or id).
    host: String,
    /// The VM's name (also its hostname).
    name: String,
    /// The profile (`overvisor profile list`).
    #[arg(long)]
    profile: String,
    /// The account created in the guest (default: your account's name).
    #[arg(long)]
    username: Option<String>,
    /// vCPUs (default: the profile's).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Memory in MiB (default: the profile's).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Disk in GiB (default: the profile's).
    #[arg(long)]
    disk_gib: Option<u64>,
    /// A libvirt network to attach to.
    #[arg(long, conflicts_with = "bridge", required_unless_present = "bridge")]
    network: Option<String>,
    /// A Linux bridge on the host to attach to.
    #[arg(long)]
    bridge: Option<String>,
    /// An OpenSSH public key file to authorize (repeat for several); none
    /// given: your guest keys (`overvisor guest-key list`).
    #[arg(long = "ssh-key")]
    ssh_keys: Vec<PathBuf>,
    /// Inject no SSH key at all (not even your guest keys).
    #[arg(long, conflicts_with = "ssh_keys")]
    no_ssh_keys: bool,
    /// Locale, e.g. en-US.
    #[arg(long)]
    locale: Option<String>,
    /// Time zone, e.g. Europe/Berlin.
    #[arg(long)]
    timezone: Option<String>,
    /// Windows: a file holding the product key (a file, so the key stays
    /// out of shell history and the process list).
    #[arg(long, value_name = "FILE")]
    product_key_file: Option<PathBuf>,
    #[command(flatten)]
    wait: WaitOpts,
}

/// The host id and the VM's path name (its name or UUID).
pub async fn locate(client: &Client, vm: &VmRef) -> Result<(String, String)> {
    if let Some(host) = &vm.host {
        return Ok((hosts::resolve_id(client, host).await?, vm.vm.clone()));
    }
    if uuid::Uuid::parse_str(&vm.vm).is_ok() {
        let record = client.get(&["vms", &vm.vm], &[]).await?;
        return Ok((output::text(&record["host_id"]), vm.vm.clone()));
    }
    let page = client
        .get(
            &["vms"],
            &[("name", vm.vm.clone()), ("limit", "1000".into())],
        )
        .await?;
    let found: Vec<&Value> = output::items(&page["items"])
        .iter()
        .filter(|v| v["name"] == vm.vm.as_str())
        .collect();
    match found.as_slice() {
        [one] => Ok((output::text(&one["host_id"]), vm.vm.clone())),
        [] => Err(Error::NotFound(format!("no VM named {:?}", vm.vm))),
        _ => Err(Error::Usage(format!(
            "several hosts have a VM named {:?}: pass --host",
            vm.vm
        ))),
    }
}

async fn list(client: &Client, format: Format, args: ListArgs) -> Result<()> {
    let host = match &args.host {
        Some(host) => Some(hosts::resolve_id(client, host).await?),
        None => None,
    };
    let tags = (!args.tags.is_empty()).then(|| args.tags.join(","));
    let query = client::query([
        ("limit", Some(args.page_size.to_string())),
        ("host", host),
        ("kind", args.kind),
        ("state", args.state),
        ("name", args.name),
        ("sort", args.sort),
        ("tags", tags),
    ]);
    // Offset paging over the live inventory: a VM added meanwhile may
    // shift one across a page boundary, which a CLI listing can live with.
    let mut all = Vec::new();
    loop {
        let mut q = query.clone();
        q.push(("offset", all.len().to_string()));
        let page = client.get(&["vms"], &q).await?;
        let got = output::items(&page["items"]);
        all.extend(got.iter().cloned());
        let total = page["total"].as_u64().unwrap_or(0);
        if got.is_empty() || all.len() as u64 >= total {
            break;
        }
    }
    output::list(
        format,
        &Value::Array(all),
        &[
            "NAME",
            "STATE",
            "HOST",
            "VCPUS",
            "MEMORY MIB",
            "SEEN",
            "UUID",
        ],
        Some(1),
        |v| {
            vec![
                output::text(&v["name"]),
                output::text(&v["state"]),
                output::text(&v["host_name"]),
                output::text(&v["vcpus"]),
                output::text(&v["memory_mib"]),
                output::relative(&v["updated_at"]),
                output::text(&v["uuid"]),
            ]
        },
    );
    Ok(())
}

async fn act(client: &Client, format: Format, act: Act, verb: &str) -> Result<()> {
    let (host, vm) = locate(client, &act.vm).await?;
    let job = client
        .post(&["hosts", &host, "vms", &vm, verb], &json!({}))
        .await?;
    wait::started(client, format, &job, act.wait).await
}

async fn deploy(client: &Client, format: Format, args: DeployArgs) -> Result<()> {
    let host = hosts::resolve_id(client, &args.host).await?;
    let profiles = client.get(&["profiles"], &[]).await?;
    let profile = output::items(&profiles)
        .iter()
        .find(|p| p["name"] == args.profile.as_str())
        .ok_or_else(|| Error::NotFound(format!("no profile named {:?}", args.profile)))?;
    let defaults = &profile["defaults"];
    let mut ssh_keys = Vec::new();
    for path in &args.ssh_keys {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        ssh_keys.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    let network = match (args.network, args.bridge) {
        (Some(n), _) => json!({"network": n}),
        (None, Some(b)) => json!({"bridge": b}),
        (None, None) => return Err(Error::Usage("give --network or --bridge".into())),
    };
    let mut body = Map::new();
    body.insert("profile".into(), json!(args.profile));
    body.insert("name".into(), json!(args.name));
    if let Some(username) = args.username {
        body.insert("username".into(), json!(username));
    }
    body.insert("network".into(), network);
    // Left out, the service injects the account's guest keys.
    if !ssh_keys.is_empty() || args.no_ssh_keys {
        body.insert("ssh_keys".into(), json!(ssh_keys));
    }
    body.insert(
        "vcpus".into(),
        args.vcpus.map_or(defaults["vcpus"].clone(), |v| json!(v)),
    );
    body.insert(
        "memory_mib".into(),
        args.memory_mib
            .map_or(defaults["memory_mib"].clone(), |v| json!(v)),
    );
    body.insert(
        "disk_gib".into(),
        args.disk_gib
            .map_or(defaults["disk_gib"].clone(), |v| json!(v)),
    );
    if let Some(locale) = args.locale {
        body.insert("locale".into(), json!(locale));
    }
    if let Some(tz) = args.timezone {
        body.insert("timezone".into(), json!(tz));
    }
    if let Some(path) = &args.product_key_file {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        body.insert("product_key".into(), json!(text.trim()));
    }
    let accepted = client
        .post(&["hosts", &host, "deployments"], &Value::Object(body))
        .await?;
    let job = &accepted["job"];
    let credentials = &accepted["credentials"];
    // The credentials exist only in this answer: show them before anything
    // else can go wrong.
    match format {
        Format::Json | Format::Yaml if args.wait.no_wait => {
            output::print_data(format, &accepted);
            return Ok(());
        }
        Format::Json | Format::Yaml => {}
        Format::Table => {
            println!(
                "guest credentials (shown only now): {} / {}",
                output::text(&credentials["username"]),
                output::text(&credentials["password"])
            );
            if args.wait.no_wait {
                println!("{}", wait::job_id(job)?);
                return Ok(());
            }
        }
    }
    let id = wait::job_id(job)?;
    let outcome = wait::watch(client, &id).await;
    if format != Format::Table {
        // One document: the deployment answer with the job as it ended
        // (or as accepted, when the wait was interrupted).
        let last = outcome.as_ref().map_or(job, |done| done);
        output::print_data(format, &json!({"job": last, "credentials": credentials}));
    }
    let done = outcome?;
    match format {
        Format::Json | Format::Yaml => wait::succeeded(&done),
        Format::Table => wait::report(format, &done),
    }
}

pub async fn run(client: &Client, format: Format, cmd: VmCommand) -> Result<()> {
    match cmd {
        VmCommand::List(args) => list(client, format, args).await,
        VmCommand::Show(vm) => {
            let (host, name) = locate(client, &vm).await?;
            let info = client.get(&["hosts", &host, "vms", &name], &[]).await?;
            output::object(format, &info, |info| {
                let disks: Vec<String> = output::items(&info["disks"])
                    .iter()
                    .map(|d| {
                        format!(
                            "{} {}",
                            output::text(&d["target"]),
                            output::text(&d["source"])
                        )
                    })
                    .collect();
                let nics: Vec<String> = output::items(&info["nics"])
                    .iter()
                    .map(|n| output::text(&n["mac"]))
                    .collect();
                vec![
                    ("name", output::text(&info["name"])),
                    ("uuid", output::text(&info["uuid"])),
                    ("state", output::text(&info["state"])),
                    ("host", host),
                    ("vcpus", output::text(&info["vcpus"])),
                    ("memory mib", output::text(&info["memory_mib"])),
                    ("disks", disks.join(", ")),
                    ("nics", nics.join(", ")),
                    ("ips", output::text(&info["ips"])),
                    ("os", output::text(&info["os"])),
                ]
            });
            Ok(())
        }
        VmCommand::Start(a) => act(client, format, a, "start").await,
        VmCommand::Shutdown(a) => act(client, format, a, "shutdown").await,
        VmCommand::Stop(a) => act(client, format, a, "force-stop").await,
        VmCommand::Reboot(a) => act(client, format, a, "reboot").await,
        VmCommand::Reset(a) => act(client, format, a, "reset").await,
        VmCommand::Pause(a) => act(client, format, a, "suspend").await,
        VmCommand::Resume(a) => act(client, format, a, "resume").await,
        VmCommand::Rm { act, with_storage } => {
            let (host, vm) = locate(client, &act.vm).await?;
            let url = client.url_with(
                &["hosts", &host, "vms", &vm],
                &[("with_storage", with_storage.to_string())],
            );
            let job = client.call(Method::DELETE, url, None).await?;
            wait::started(client, format, &job, act.wait).await
        }
        VmCommand::Deploy(args) => deploy(client, format, args).await,
        VmCommand::Console(vm) => {
            let (host, name) = locate(client, &vm).await?;
            console::attach(client, &host, &name).await
        }
    }
}
