//! Target 3 end to end: a host-side lifecycle change (root `virsh suspend`
//! / `resume` inside one fleet host, behind the service's back) until its
//! `vm.changed` frame arrives on a `/api/v1/events` WebSocket — the SSH
//! event channel, the reconciler, the inventory, the event bus and the
//! HTTP hop are all in the figure. The guest is our own and is destroyed
//! and undefined afterwards, also on error.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use overvisor_testkit::{Lab, LabHost, TestGuest};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::api::Api;
use crate::actions::{signed_ms, spawn_virsh};
use crate::lab;
use crate::stats::{Samples, versus};

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn run(api: &Api, lab: &Lab, host: &LabHost, runs: usize) -> anyhow::Result<()> {
    println!(
        "== F3. Event latency: out-of-band virsh on {} → vm.changed on /api/v1/events ({runs} suspend/resume pairs)",
        host.name
    );
    let mut socket = subscribe(api, "vm").await?;
    let name = overvisor_testkit::unique_name("fleet-ev");
    let started = Instant::now();
    let guest = lab::boot_guest(lab, host, &name).await?;
    let result = measure(api, &mut socket, &guest, runs, started).await;
    // `virsh destroy` of a TCG guest takes 1-2 s: off the async threads.
    tokio::task::spawn_blocking(move || drop(guest)).await?;
    result
}

/// A WebSocket on the event stream, past its `subscribed` greeting.
pub(crate) async fn subscribe(api: &Api, types: &str) -> anyhow::Result<Socket> {
    let url = format!(
        "{}/api/v1/events?types={types}",
        api.base.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", api.token()).parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .context("opening /api/v1/events")?;
    let first = next_frame(&mut socket, Duration::from_secs(10)).await?;
    if first["type"] != "subscribed" {
        bail!("the event stream began with {first}, not subscribed");
    }
    Ok(socket)
}

/// The next JSON frame within `timeout` (pings are answered by the
/// library and do not extend it).
pub(crate) async fn next_frame(socket: &mut Socket, timeout: Duration) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .map_err(|_| anyhow!("no event within {timeout:?}"))?
            .context("the event stream ended")??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

/// Skips frames until a `vm.changed` (or `vm.added`) of `name` in `state`.
async fn wait_state(
    socket: &mut Socket,
    name: &str,
    state: &str,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = next_frame(socket, left)
            .await
            .with_context(|| format!("waiting for {name} to be {state}"))?;
        if frame["type"] == "resync" {
            println!("   (the stream reported missed events: {frame})");
        }
        if matches!(frame["type"].as_str(), Some("vm.changed" | "vm.added"))
            && frame["vm"]["name"] == name
            && frame["vm"]["state"] == state
        {
            return Ok(Instant::now());
        }
    }
}

async fn measure(
    api: &Api,
    socket: &mut Socket,
    guest: &TestGuest,
    runs: usize,
    booted_from: Instant,
) -> anyhow::Result<()> {
    // The service learns of the new guest from the host's own events.
    let seen = wait_state(socket, &guest.name, "running", Duration::from_secs(60)).await?;
    println!(
        "   guest {} booted; the service showed it running {:.1} s after `virsh define`",
        guest.name,
        (seen - booted_from).as_secs_f64()
    );
    // A new VM reaches the list with the next snapshot rebuild (in the
    // background at this size): how far that trails the event stream.
    let lag = list_lag(api, &guest.name, "running", seen).await?;
    println!("   GET /api/v1/vms showed the new guest running {lag:.1} ms after its event frame");
    let (mut from_start, mut from_exit) = (Samples::default(), Samples::default());
    let mut list_lags = Samples::default();
    for i in 0..runs * 2 {
        let (verb, state) = if i % 2 == 0 {
            ("suspend", "paused")
        } else {
            ("resume", "running")
        };
        let started = Instant::now();
        let command = spawn_virsh(&guest.host, verb, &guest.name);
        let arrived = wait_state(socket, &guest.name, state, Duration::from_secs(10)).await?;
        // A state change is patched into the list before its event goes
        // out: the first GET after the frame should already show it.
        list_lags.push_ms(list_lag(api, &guest.name, state, arrived).await?);
        let exited = command.await??;
        from_start.push(arrived - started);
        from_exit.push_ms(signed_ms(arrived, exited));
    }
    println!("   from virsh start to frame    {}", from_start.line());
    println!("   from virsh exit to frame     {}", from_exit.line());
    println!("   frame to the list showing it {}", list_lags.line());
    println!(
        "   p95 (from start) {}",
        versus(from_start.quantile(0.95), 100.0, "ms")
    );
    Ok(())
}

/// Milliseconds from `since` (an event frame) until `GET /api/v1/vms`
/// lists `name` in `state` (one GET's round trip included).
async fn list_lag(api: &Api, name: &str, state: &str, since: Instant) -> anyhow::Result<f64> {
    let path = format!("/api/v1/vms?name={name}&state={state}");
    while api.get(&path).await?["total"] != 1 {
        if since.elapsed() > Duration::from_secs(10) {
            bail!("GET {path} did not show it within 10 s of its event");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(since.elapsed().as_secs_f64() * 1000.0)
}
