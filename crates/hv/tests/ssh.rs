//! The SSH transport against real sshd hosts of the lab: host-key pinning,
//! exec semantics, limits and timeouts, forwarding.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use overvisor_hv::{CommandLine, HostKeyPolicy, SshError, SshSession, probe_host_key};
use overvisor_model::host::HostKeyFingerprint;
use overvisor_testkit::Lab;

#[tokio::test(flavor = "multi_thread")]
async fn pinned_key_connects_and_execs() {
    let lab = Lab::load();
    let host = &lab.hosts[0];
    let ssh = common::session(&lab, host).await;
    assert_eq!(
        ssh.host_key_fingerprint().unwrap().as_str(),
        host.host_key_fingerprint
    );

    let out = ssh
        .exec(&CommandLine::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_status, Some(3));
    assert!(!out.success());

    let out = ssh.exec(&CommandLine::new("hostname")).await.unwrap();
    assert_eq!(out.stdout_text().trim(), host.name);

    let out = ssh
        .exec_with_stdin(&CommandLine::new("wc").arg("-c"), &vec![b'x'; 300_000])
        .await
        .unwrap();
    assert_eq!(out.stdout_text().trim(), "300000");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_pinned_key_is_refused() {
    let lab = Lab::load();
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    // h2's key pinned for h1: a man in the middle, as far as we can tell.
    let cfg = common::config(&lab, h1, common::pinned(h2));
    match SshSession::connect(cfg).await {
        Err(SshError::HostKeyMismatch {
            expected,
            presented,
            ..
        }) => {
            assert_eq!(expected.as_str(), h2.host_key_fingerprint);
            assert_eq!(presented.as_str(), h1.host_key_fingerprint);
        }
        other => panic!("expected a host key mismatch, got {other:?}"),
    }
    let msg = SshSession::connect(common::config(&lab, h1, common::pinned(h2)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&h1.host_key_fingerprint) && msg.contains(&h2.host_key_fingerprint),
        "{msg}"
    );

    // A second caller of the same session meets the backoff, which still
    // says (typed) that the key is what failed.
    let ssh = SshSession::new(common::config(&lab, h1, common::pinned(h2)));
    let echo = CommandLine::new("true");
    let first = ssh.exec(&echo).await.unwrap_err();
    assert!(matches!(first, SshError::HostKeyMismatch { .. }), "{first}");
    let second = ssh.exec(&echo).await.unwrap_err();
    assert!(matches!(second, SshError::Backoff { .. }), "{second}");
    let (_, expected, presented) = second.host_key_mismatch().unwrap();
    assert_eq!(
        (expected.as_str(), presented.as_str()),
        (
            h2.host_key_fingerprint.as_str(),
            h1.host_key_fingerprint.as_str()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_and_trust_on_first_use_report_the_key() {
    let lab = Lab::load();
    let host = &lab.hosts[0];
    let probed = probe_host_key(&host.address, host.port, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(probed.fingerprint.as_str(), host.host_key_fingerprint);
    assert_eq!(probed.public_key.trim(), host.host_key_pub);

    let ssh = SshSession::connect(common::config(&lab, host, HostKeyPolicy::TrustOnFirstUse))
        .await
        .unwrap();
    assert_eq!(
        ssh.host_key_fingerprint(),
        Some(HostKeyFingerprint::parse(&host.host_key_fingerprint).unwrap())
    );

    let err = probe_host_key("10.201.0.250", 22, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.is_connection(), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_and_output_limits() {
    let lab = Lab::load();
    let host = &lab.hosts[0];
    let mut cfg = common::config(&lab, host, common::pinned(host));
    cfg.max_output_bytes = 1000;
    let ssh = SshSession::connect(cfg).await.unwrap();

    let t0 = Instant::now();
    let err = ssh
        .exec_with(
            &CommandLine::new("sleep").arg("30"),
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(3));

    let out = ssh
        .exec(&CommandLine::new("head").args(["-c", "100000", "/dev/zero"]))
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.truncated);

    // The connection still serves after a timeout and a truncation.
    assert!(ssh.exec(&CommandLine::new("true")).await.unwrap().success());
    assert!(matches!(
        ssh.exec(&CommandLine::new("echo").arg("a\0b")).await,
        Err(SshError::InvalidCommand(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_connection_many_concurrent_channels() {
    let lab = Lab::load();
    let host = &lab.hosts[1];
    let mut cfg = common::config(&lab, host, common::pinned(host));
    cfg.max_channels = 3;
    let ssh = SshSession::connect(cfg).await.unwrap();
    // More concurrent commands than channels (and than sshd's MaxSessions):
    // the semaphore queues them on the one connection.
    let t0 = Instant::now();
    let runs = (0..24).map(|i| {
        let ssh = ssh.clone();
        async move {
            let out = ssh
                .exec(&CommandLine::new("sh").args([
                    "-c",
                    "sleep 0.2; echo $1",
                    "sh",
                    &i.to_string(),
                ]))
                .await
                .unwrap();
            assert_eq!(out.stdout_text().trim(), i.to_string());
        }
    });
    futures::future::join_all(runs).await;
    // 24 × 0.2 s over 3 channels ≥ 1.6 s: they really were bounded.
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert!(ssh.status().await.connected);
}

#[tokio::test(flavor = "multi_thread")]
async fn consoles_and_tunnels_have_shares_of_their_own() {
    let lab = Lab::load();
    let host = &lab.hosts[1];
    let mut cfg = common::config(&lab, host, common::pinned(host));
    (cfg.max_channels, cfg.max_consoles, cfg.max_tunnels) = (1, 2, 1);
    let ssh = SshSession::connect(cfg).await.unwrap();
    let cat = CommandLine::new("cat");

    let first = ssh.open_console(&cat, 80, 24).await.unwrap();
    let _second = ssh.open_console(&cat, 80, 24).await.unwrap();
    assert_eq!((ssh.open_consoles(), ssh.open_channels()), (2, 0));
    // One more is refused at once (not queued behind the open ones).
    let t0 = Instant::now();
    let Err(refused) = ssh.open_console(&cat, 80, 24).await else {
        panic!("a third console opened");
    };
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(
        matches!(
            refused,
            SshError::ChannelsBusy {
                what: "serial consoles",
                limit: 2,
                ..
            }
        ),
        "{refused}"
    );
    assert!(!refused.is_connection(), "the connection is fine");

    // Tunnels likewise, to the host's own sshd.
    let _tunnel = ssh.direct_tcpip(&host.address, host.port).await.unwrap();
    assert!(matches!(
        ssh.direct_tcpip(&host.address, host.port).await,
        Err(SshError::ChannelsBusy { limit: 1, .. })
    ));
    assert_eq!(ssh.open_tunnels(), 1);

    // Commands still get their channel with every console open.
    let out = ssh.exec(&CommandLine::new("echo").arg("ok")).await.unwrap();
    assert_eq!(out.stdout_text().trim(), "ok");

    // A console closed gives its share back.
    drop(first);
    assert_eq!(ssh.open_consoles(), 1);
    ssh.open_console(&cat, 80, 24).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_arguments_reach_the_host_as_one_word() {
    let lab = Lab::load();
    let host = &lab.hosts[0];
    let ssh = common::session(&lab, host).await;
    let marker = format!("/tmp/ov-pwned-{}", uuid_like());
    for hostile in [
        format!("x;touch {marker}"),
        format!("$(touch {marker})"),
        format!("`touch {marker}`"),
        format!("x' ; touch {marker}; '"),
        format!("x\ntouch {marker}"),
        format!("x && touch {marker}"),
        format!("x | touch {marker}"),
    ] {
        let out = ssh
            .exec(&CommandLine::new("printf").args(["%s", &hostile]))
            .await
            .unwrap();
        assert_eq!(out.stdout_text(), hostile);
        let out = ssh
            .exec(
                &CommandLine::new("virsh")
                    .args(["-c", &host.uri, "domstate", "--domain", &hostile]),
            )
            .await
            .unwrap();
        assert!(!out.success());
    }
    assert!(!host.path_exists(std::path::Path::new(&marker)));
    assert!(!std::path::Path::new(&marker).exists());
}

fn uuid_like() -> String {
    overvisor_testkit::unique_name("x")
}
