//! Shared setup of the integration tests: SSH sessions and drivers on the
//! lab's hosts, with timeouts short enough for tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use overvisor_hv::{ClientKey, HostKeyPolicy, LibvirtDriver, SshConfig, SshSession};
use overvisor_model::host::HostKeyFingerprint;
use overvisor_testkit::{Lab, LabHost};

pub fn config(lab: &Lab, host: &LabHost, policy: HostKeyPolicy) -> SshConfig {
    config_for(lab, &host.address, host.port, &host.user, policy)
}

/// A test configuration for any lab machine reachable over SSH.
pub fn config_for(
    lab: &Lab,
    address: &str,
    port: u16,
    user: &str,
    policy: HostKeyPolicy,
) -> SshConfig {
    let key = ClientKey::from_openssh(&lab.client_key_pem()).unwrap();
    let mut cfg = SshConfig::new(address.to_owned(), port, user.to_owned(), key, policy);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.command_timeout = Duration::from_secs(20);
    cfg.keepalive_interval = Duration::from_secs(2);
    cfg.keepalive_max = 2;
    cfg.backoff_initial = Duration::from_millis(200);
    cfg.backoff_max = Duration::from_secs(1);
    cfg
}

pub fn pinned(host: &LabHost) -> HostKeyPolicy {
    HostKeyPolicy::Pinned(HostKeyFingerprint::parse(&host.host_key_fingerprint).unwrap())
}

pub async fn session(lab: &Lab, host: &LabHost) -> SshSession {
    SshSession::connect(config(lab, host, pinned(host)))
        .await
        .unwrap()
}

pub async fn driver(lab: &Lab, host: &LabHost) -> LibvirtDriver {
    LibvirtDriver::new(session(lab, host).await, host.uri.clone())
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
