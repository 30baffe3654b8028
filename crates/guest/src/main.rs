//! The `overvisor-guest` command: picks the channel and the identity,
//! then runs the agent once. Exit status: 0 applied (now or before), 1 a
//! genuine payload failed to apply, 2 the agent could not start, 3 it gave
//! up waiting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use overvisor_guest::apply::System;
use overvisor_guest::channel::{Channel, KvpPools, VIRTIO_PORT, VirtioPort};
use overvisor_guest::identity::{self, Source, TRUSTED_KEY};
use overvisor_guest::state::StateFile;
use overvisor_guest::{Agent, Ended};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ChannelKind {
    /// The virtio-serial port if the VM has one, else Hyper-V KVP.
    Auto,
    Virtio,
    Kvp,
}

#[derive(Parser)]
#[command(
    version,
    about = "Overvisor's guest agent: applies the control plane's sealed provisioning payload once"
)]
struct Args {
    #[arg(long, value_enum, default_value = "auto")]
    channel: ChannelKind,
    /// The virtio-serial port (or a UNIX socket standing in for it).
    #[arg(long, default_value = VIRTIO_PORT)]
    port: PathBuf,
    /// Where the Hyper-V KVP daemon keeps its pool files.
    #[arg(long, default_value = "/var/lib/hyperv")]
    kvp_dir: PathBuf,
    /// The identity file; by default it is read from the seed media
    /// (virtio) or the host's KVP items (KVP).
    #[arg(long)]
    identity: Option<PathBuf>,
    /// The provisioning public key this image trusts, if it has one.
    #[arg(long, default_value = TRUSTED_KEY)]
    trusted_key: PathBuf,
    #[arg(long, default_value = "/var/lib/overvisor-guest")]
    state_dir: PathBuf,
    /// The system to apply to.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Seconds between hellos while waiting.
    #[arg(long, default_value_t = 2)]
    hello_every: u64,
    /// Seconds to wait for a payload (0: for ever).
    #[arg(long, default_value_t = 0)]
    give_up: u64,
}

fn fail(what: &str) -> ExitCode {
    eprintln!("overvisor-guest: {what}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let kind = match args.channel {
        ChannelKind::Auto if args.port.exists() => ChannelKind::Virtio,
        ChannelKind::Auto if args.kvp_dir.is_dir() => ChannelKind::Kvp,
        ChannelKind::Auto => return fail("no virtio-serial port and no Hyper-V KVP pools"),
        k => k,
    };
    let mut state = match StateFile::load(&args.state_dir) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot read the state: {e}")),
    };
    let source = match (&args.identity, kind) {
        (Some(p), _) => Source::File(p.clone()),
        (None, ChannelKind::Kvp) => Source::Kvp(args.kvp_dir.clone()),
        (None, _) => Source::Seed,
    };
    let identity = match identity::load(&source, &args.trusted_key) {
        Ok(i) => i,
        Err(e) => return fail(&e.to_string()),
    };
    let mut channel: Box<dyn Channel> = if kind == ChannelKind::Kvp {
        Box::new(KvpPools::new(&args.kvp_dir))
    } else {
        match VirtioPort::open(&args.port) {
            Ok(p) => Box::new(p),
            Err(e) => return fail(&format!("cannot open {}: {e}", args.port.display())),
        }
    };
    let system = System::new(&args.root);
    let mut agent = Agent {
        channel: channel.as_mut(),
        identity: &identity,
        state: &mut state,
        system: &system,
        hello_every: Duration::from_secs(args.hello_every.max(1)),
        give_up: (args.give_up > 0).then(|| Duration::from_secs(args.give_up)),
    };
    match agent.run() {
        Ok(Ended::Applied | Ended::AlreadyApplied) => ExitCode::SUCCESS,
        Ok(Ended::ApplyFailed(_)) => ExitCode::from(1),
        Ok(Ended::GaveUp) => ExitCode::from(3),
        Err(e) => fail(&e.to_string()),
    }
}
