//! Guided deployments: profiles, the checked deployment request, and what
//! the control plane generates for a new guest (the cloud-init NoCloud seed
//! ISO, the libvirt domain XML, the Windows `Autounattend.xml`).
//!
//! A crate of its own rather than part of `overvisor-model`: it needs TOML,
//! SSH key parsing, an ISO 9660 writer, SHA-crypt and XML serialization,
//! which every crate depending on the model would otherwise compile, and
//! the model stays the small crate at the bottom of the graph. Nor is it
//! part of `overvisor-hv`: everything here is a pure function of its input
//! (the only I/O is reading the profiles directory at start-up), so the
//! server can list profiles and check requests without the SSH stack, and
//! every generator is tested without a host. Jobs that download images and
//! define VMs (in `overvisor-control`, through `overvisor-hv`) build on it.

pub mod autounattend;
pub mod catalog;
pub mod checksum_list;
pub mod cloud_init;
pub mod domain;
pub mod firmware;
pub mod iso;
pub mod profile;
pub mod request;
pub mod secret;
pub mod ssh_keys;
mod text;
mod xml;

pub use catalog::{Catalog, ProfileError};
pub use profile::Profile;
pub use request::{Deployment, DeploymentRequest};

/// Why a guest's configuration could not be generated. Inputs were checked
/// before, so these are internal failures, not the user's.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot hash the password: {0}")]
    Password(String),
    #[error("cannot write the ISO image: {0}")]
    Iso(String),
    #[error("cannot serialize: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write XML: {0}")]
    Xml(String),
    /// The caller left out a file the profile needs.
    #[error("missing: {0}")]
    Missing(&'static str),
}
