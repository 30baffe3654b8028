//! Consoles (`--consoles`): a keystroke's echo through the service's
//! console socket against the same echo over a direct `ssh -tt host virsh
//! console` (the issue's target: p95 within 1.2x), and the service's memory
//! per open console viewer, with viewers spread over VMs on several hosts.
//!
//! The keystroke is one byte typed at the guest's shell prompt; its echo is
//! the first output after it. A backspace after each keeps the line empty.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures::{SinkExt, StreamExt};
use overvisor_testkit::{Lab, LabHost, unique_name};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::fleet::api::Api;
use crate::process::{Proc, memory};
use crate::stats::{Samples, versus};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Viewers opened at once for the memory figure, over this many VMs, on
/// this many hosts (2 each: within a host's default 4 serial consoles).
const VIEWERS: usize = 50;
const VMS: usize = 10;
const HOSTS: usize = 5;
/// Waiting for one echo longer than this is a failure, not a sample.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(binary: &Path, lab: &Lab, keystrokes: usize) -> anyhow::Result<()> {
    let hosts = lab.hosts(HOSTS).to_vec();
    let host = &hosts[0];
    println!(
        "== C. Consoles on {} ({keystrokes} keystrokes each way; {VIEWERS} viewers over {VMS} VMs on {HOSTS} hosts)",
        host.name
    );
    // Guest i runs on host i % HOSTS.
    let names: Vec<String> = (0..VMS)
        .map(|i| unique_name(&format!("bench-con{i}")))
        .collect();
    let boots = names
        .iter()
        .enumerate()
        .map(|(i, name)| crate::lab::boot_guest(lab, &hosts[i % HOSTS], name));
    let guests = futures::future::try_join_all(boots).await?;

    // Direct first: `--force` on either side takes the console from the other.
    let direct = direct_echoes(lab, host, &guests[0].name, keystrokes).await?;
    println!("   direct ssh -tt + virsh console:  {}", direct.line());

    let dir = tempfile::tempdir()?;
    let (service, api, host_ids) =
        crate::service::start_with_hosts(binary, dir.path(), lab, &hosts).await?;
    let token = api.token().to_owned();
    let mut ws = open(&api, &service.api, &token, &host_ids[0], &guests[0].name).await?;
    let through = echoes(&mut ws, keystrokes).await?;
    println!("   through the service (WebSocket): {}", through.line());
    let ratio = through.quantile(0.95) / direct.quantile(0.95);
    println!(
        "   p95 ratio service/direct {ratio:.2}x (target <= 1.2x): {}",
        versus(ratio, 1.2, "x")
    );
    ws.close(None).await.ok();

    // Memory per viewer: the service idle with one console, then with
    // VIEWERS viewers over VMS consoles (so VMS PTYs, 2 per host).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = memory(Proc::Pid(service.pid()))?.rss;
    let mut open_viewers = Vec::new();
    for i in 0..VIEWERS {
        let (vm, host_id) = (&guests[i % VMS].name, &host_ids[i % VMS % HOSTS]);
        open_viewers.push(open(&api, &service.api, &token, host_id, vm).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = memory(Proc::Pid(service.pid()))?.rss;
    println!(
        "   service RSS {before:.1} MiB -> {after:.1} MiB with {VIEWERS} viewers open: {:.0} KiB per viewer",
        (after - before) * 1024.0 / VIEWERS as f64
    );
    for mut ws in open_viewers {
        ws.close(None).await.ok();
    }
    service.terminate(Duration::from_secs(10))?;
    Ok(())
}

/// A console socket for `vm`, past its `connected` frame, at a fresh prompt.
async fn open(api: &Api, base: &str, token: &str, host: &str, vm: &str) -> anyhow::Result<Ws> {
    let reply = api
        .post(
            &format!("/api/v1/hosts/{host}/vms/{vm}/console"),
            Some(&json!({"kind": "serial"})),
        )
        .await?;
    let url = reply.body["url"]
        .as_str()
        .ok_or_else(|| anyhow!("no console ticket: {} {}", reply.status, reply.body))?;
    let mut request = format!("{}{url}", base.replacen("http", "ws", 1)).into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    ws.send(Message::Binary(b"\r".to_vec().into())).await?;
    Ok(ws)
}

/// Times `n` keystrokes through a console socket (each a byte and its
/// backspace, both timed to their first output).
async fn echoes(ws: &mut Ws, n: usize) -> anyhow::Result<Samples> {
    settle_ws(ws).await?;
    let mut samples = Samples::default();
    for i in 0..n * 2 {
        let key: &[u8] = if i % 2 == 0 { b"x" } else { b"\x7f" };
        let sent = Instant::now();
        ws.send(Message::Binary(key.to_vec().into())).await?;
        loop {
            let frame = tokio::time::timeout(ECHO_TIMEOUT, ws.next())
                .await
                .context("no echo in time")?
                .ok_or_else(|| anyhow!("the console closed"))??;
            if matches!(frame, Message::Binary(_)) {
                break;
            }
        }
        samples.push(sent.elapsed());
        // Let the rest of the echo (a backspace is three bytes) arrive.
        tokio::time::sleep(Duration::from_millis(20)).await;
        drain_ws(ws).await?;
    }
    Ok(samples)
}

/// Waits until the console has been quiet for a moment.
async fn settle_ws(ws: &mut Ws) -> anyhow::Result<()> {
    while let Ok(frame) = tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
        frame.ok_or_else(|| anyhow!("the console closed"))??;
    }
    Ok(())
}

/// Reads what is already waiting, without waiting.
async fn drain_ws(ws: &mut Ws) -> anyhow::Result<()> {
    while let Ok(frame) = tokio::time::timeout(Duration::from_millis(1), ws.next()).await {
        frame.ok_or_else(|| anyhow!("the console closed"))??;
    }
    Ok(())
}

/// The same keystrokes over `ssh -tt host virsh console`, as an operator
/// would type them.
async fn direct_echoes(lab: &Lab, host: &LabHost, vm: &str, n: usize) -> anyhow::Result<Samples> {
    let mut child = tokio::process::Command::new("ssh")
        .args([
            "-tt",
            "-q",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-i"])
        .arg(&lab.client_key)
        .args(["-p", &host.port.to_string()])
        .arg(format!("{}@{}", host.user, host.address))
        .args(["virsh", "-c", &host.uri, "console", "--force", vm])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("running ssh")?;
    let mut input = child.stdin.take().ok_or_else(|| anyhow!("no ssh stdin"))?;
    let mut output = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no ssh stdout"))?;
    let mut buf = vec![0u8; 64 << 10];
    input.write_all(b"\r").await?;
    while let Ok(read) =
        tokio::time::timeout(Duration::from_millis(1500), output.read(&mut buf)).await
    {
        if read? == 0 {
            return Err(anyhow!("ssh ended before the console attached"));
        }
    }
    let mut samples = Samples::default();
    for i in 0..n * 2 {
        let key: &[u8] = if i % 2 == 0 { b"x" } else { b"\x7f" };
        let sent = Instant::now();
        input.write_all(key).await?;
        input.flush().await?;
        let read = tokio::time::timeout(ECHO_TIMEOUT, output.read(&mut buf))
            .await
            .context("no echo in time over ssh")??;
        if read == 0 {
            return Err(anyhow!("ssh ended"));
        }
        samples.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(more) =
            tokio::time::timeout(Duration::from_millis(1), output.read(&mut buf)).await
        {
            if more? == 0 {
                break;
            }
        }
    }
    // Ctrl-] leaves virsh console; the guard kills ssh anyway.
    input.write_all(b"\x1d").await.ok();
    Ok(samples)
}
