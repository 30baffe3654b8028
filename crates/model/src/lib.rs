//! Domain types shared by every layer of Overvisor. Nothing here performs I/O,
//! so the types can be used by the store, the drivers, the control layer and
//! the HTTP layer alike, and unit-tested in isolation.

pub mod account;
pub mod host;
pub mod job;
pub mod metrics;
pub mod operation;
pub mod vm;

/// A value from outside (a user, a host, a file) that does not have the shape
/// the domain requires. `field` names what was wrong so an API error can say it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct InvalidInput {
    pub field: String,
    pub message: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
