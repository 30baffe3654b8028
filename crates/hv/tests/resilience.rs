//! A host that dies: its calls fail fast with a clear error, the other host
//! does not notice, and the dead one reconnects by itself once it is back.
//! Its own test binary, so no other test uses the host it kills.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use overvisor_hv::{CommandLine, HvError, Hypervisor, SshError};
use overvisor_testkit::Lab;

/// Turns the host back on even if the test fails half-way.
struct Revive<'a>(&'a overvisor_testkit::LabHost);

impl Drop for Revive<'_> {
    fn drop(&mut self) {
        self.0.net_up();
        if std::thread::panicking() {
            let _ = std::panic::catch_unwind(|| self.0.start_sshd());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_host_fails_fast_and_comes_back() {
    let lab = Lab::load();
    // ovh3 is reserved for this test: other tests share ovh1/ovh2 and must
    // not see their sshd die under them (see testkit's host allocation).
    let (alive, dying) = (lab.host("ovh1"), lab.host("ovh3"));
    let (d_alive, d_dying) = (
        common::driver(&lab, alive).await,
        common::driver(&lab, dying).await,
    );
    d_alive.list_vms().await.unwrap();
    d_dying.list_vms().await.unwrap();
    let mut events = d_dying.events().await.unwrap();
    let _revive = Revive(dying);

    // sshd killed, sessions included: the connection closes under us.
    dying.stop_sshd();
    let t0 = Instant::now();
    let err = d_dying.list_vms().await.unwrap_err();
    let took = t0.elapsed();
    assert!(
        matches!(err, HvError::Transport(ref e) if e.is_connection()),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(err.to_string().contains(&dying.address), "{err}");
    println!("dead host answered in {took:?}: {err}");
    // The event stream ends with an error instead of hanging.
    let end = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap();
    assert!(matches!(end, Some(Err(_)) | None), "{end:?}");
    // Meanwhile the other host is unaffected.
    d_alive.list_vms().await.unwrap();
    assert!(!d_dying.ssh().status().await.connected);

    dying.start_sshd();
    let t0 = Instant::now();
    common::eventually(Duration::from_secs(15), "reconnect", || async {
        d_dying.list_vms().await.ok()
    })
    .await;
    println!("reconnected {:?} after sshd came back", t0.elapsed());
    assert!(d_dying.ssh().status().await.connected);

    // Unplugged: nothing is refused, packets vanish. The command deadline
    // bounds the call, keepalives then declare the connection dead.
    dying.net_down();
    let t0 = Instant::now();
    let err = d_dying
        .ssh()
        .exec_with(&CommandLine::new("true"), None, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    d_alive.list_vms().await.unwrap();
    common::eventually(
        Duration::from_secs(15),
        "keepalive to drop the connection",
        || async { (!d_dying.ssh().status().await.connected).then_some(()) },
    )
    .await;
    let t0 = Instant::now();
    let err = d_dying.list_vms().await.unwrap_err();
    assert!(
        matches!(err, HvError::Transport(ref e) if e.is_connection()),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(7), "{:?}", t0.elapsed());

    dying.net_up();
    common::eventually(
        Duration::from_secs(15),
        "reconnect after the network is back",
        || async { d_dying.list_vms().await.ok() },
    )
    .await;
}
