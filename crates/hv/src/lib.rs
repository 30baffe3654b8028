//! Hypervisor drivers of Overvisor: how the control plane reaches hosts
//! (one shared SSH connection per host, [`ssh`]), how every remote argument
//! is quoted ([`quote`]), the driver interface ([`driver`]) and its libvirt
//! implementations: [`libvirt`] and [`hyperv`] (PowerShell over SSH).

pub mod driver;
pub mod hyperv;
pub mod libvirt;
pub mod quote;
pub mod ssh;

pub use driver::{HvError, HvResult, Hypervisor, VmAddresses};
pub use hyperv::HypervDriver;
pub use libvirt::LibvirtDriver;
pub use quote::{CommandLine, powershell_literal, quote};
pub use ssh::{
    ClientKey, ConnectGate, ExecOutput, HostKeyPolicy, PresentedHostKey, PtyChannel, PtyOutput,
    SshConfig, SshError, SshSession, TcpTunnel, generate_ed25519_identity, probe_host_key,
};
