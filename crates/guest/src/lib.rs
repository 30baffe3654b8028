//! `overvisor-guest`, the guest agent of sealed provisioning. On first
//! boot it makes an X25519 key pair (the private half only in this
//! process's memory, zeroed on drop), says hello with the public half over
//! its [`channel::Channel`] until the host answers with a sealed payload,
//! verifies and opens it against the identity from the deployment's media
//! (`overvisor-provision` decides), applies it, reports `applied` or
//! `failed` with the reason, and records that it is done: it never takes
//! another payload. A refused payload is reported and the agent keeps
//! waiting for the genuine one; nothing of a refused payload is applied.

pub mod apply;
pub mod channel;
pub mod identity;
pub mod state;

use std::time::{Duration, Instant};

use overvisor_provision::seal::{self, Expectation};
use overvisor_provision::{
    GuestIdentity, GuestKey, GuestMessage, GuestState, HostMessage, Outcome,
};

use crate::apply::System;
use crate::channel::Channel;
use crate::state::StateFile;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Applied,
    /// A payload was applied on an earlier run.
    AlreadyApplied,
    /// A genuine payload could not be applied (the reason was reported).
    ApplyFailed(String),
    /// Nothing acceptable arrived in time.
    GaveUp,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the channel failed: {0}")]
    Channel(std::io::Error),
    #[error("cannot save the agent's state: {0}")]
    State(std::io::Error),
}

pub struct Agent<'a> {
    pub channel: &'a mut dyn Channel,
    pub identity: &'a GuestIdentity,
    pub state: &'a mut StateFile,
    pub system: &'a System,
    pub hello_every: Duration,
    pub give_up: Option<Duration>,
}

fn log(what: &str) {
    eprintln!("overvisor-guest: {what}");
}

impl Agent<'_> {
    pub fn run(&mut self) -> Result<Ended, AgentError> {
        let uuid = self.identity.vm_uuid;
        if self.state.state.applied {
            self.send(&GuestMessage::hello(None, GuestState::Applied, uuid))?;
            log("provisioned already; nothing to do");
            return Ok(Ended::AlreadyApplied);
        }
        let key = GuestKey::generate();
        let hello = GuestMessage::hello(Some(key.public()), GuestState::Waiting, uuid);
        log(&format!(
            "waiting for the sealed payload (key {})",
            key.public()
        ));
        let started = Instant::now();
        let mut said_hello: Option<Instant> = None;
        loop {
            if self.give_up.is_some_and(|g| started.elapsed() >= g) {
                log("no payload in time; giving up");
                return Ok(Ended::GaveUp);
            }
            if said_hello.is_none_or(|t| t.elapsed() >= self.hello_every) {
                self.send(&hello)?;
                said_hello = Some(Instant::now());
            }
            let Some(line) = self
                .channel
                .recv(self.hello_every)
                .map_err(AgentError::Channel)?
            else {
                continue;
            };
            let sealed = match HostMessage::decode(&line) {
                Ok(HostMessage::Sealed(s)) => s,
                Err(e) => {
                    self.refuse(&e.to_string())?;
                    continue;
                }
            };
            drop(line);
            let expect = Expectation {
                identity: self.identity,
                key: &key,
                used_nonces: &self.state.state.used_nonces,
            };
            let payload = match seal::open(&sealed, &expect) {
                Ok(p) => p,
                Err(e) => {
                    self.refuse(&e.to_string())?;
                    continue;
                }
            };
            // Taken once, even if applying fails half-way.
            self.state.state.used_nonces.push(sealed.nonce);
            self.state.save().map_err(AgentError::State)?;
            log(&format!("payload verified: {payload:?}"));
            let applied = self.system.apply(&payload);
            drop(payload);
            return match applied {
                Ok(()) => {
                    self.state.state.applied = true;
                    self.state.save().map_err(AgentError::State)?;
                    self.send(&GuestMessage::status(Outcome::Applied))?;
                    log("applied");
                    Ok(Ended::Applied)
                }
                Err(e) => {
                    let reason = format!("applying the payload failed: {e}");
                    log(&reason);
                    self.send(&GuestMessage::status(Outcome::Failed {
                        reason: reason.clone(),
                    }))?;
                    Ok(Ended::ApplyFailed(reason))
                }
            };
        }
    }

    fn send(&mut self, m: &GuestMessage) -> Result<(), AgentError> {
        self.channel.send(m).map_err(AgentError::Channel)
    }

    /// Reports a refused message and goes on waiting.
    fn refuse(&mut self, reason: &str) -> Result<(), AgentError> {
        log(&format!("refused: {reason}"));
        self.send(&GuestMessage::status(Outcome::Failed {
            reason: format!("refused: {reason}"),
        }))
    }
}
