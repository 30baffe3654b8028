//! `overvisor events`: tails the event stream (Server-Sent Events over the
//! same HTTP client, so TLS and the CA file work as for every call).

use clap::Args;
use reqwest::Method;
use reqwest::header::ACCEPT;
use serde_json::Value;

use super::client::Client;
use super::error::{Error, Result};
use super::output::{self, Format};

#[derive(Args)]
pub struct EventsArgs {
    /// Only these types or families, comma-separated: `job`, `vm`, `host`,
    /// `job.updated`, `vm.changed`…
    #[arg(long)]
    types: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
}

/// Splits an SSE byte stream into the `data` of each event.
#[derive(Default)]
struct SseParser {
    pending: Vec<u8>,
    data: String,
}

impl SseParser {
    fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(std::mem::take(&mut self.data));
                }
            } else if let Some(data) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(data.strip_prefix(' ').unwrap_or(data));
            }
        }
        events
    }
}

/// One line for people: when, what, and the gist.
fn describe(event: &Value) -> String {
    let kind = output::text(&event["type"]);
    let job = if event["job"].is_object() {
        &event["job"]
    } else {
        &Value::Null
    };
    let gist = match kind.as_str() {
        "job.created" | "job.updated" => format!(
            "{} {} {} {}%",
            output::text(&job["id"]),
            output::text(&job["kind"]),
            output::text(&job["status"]),
            output::text(&job["progress"])
        ),
        "job.log" => format!(
            "{} {}",
            output::text(&event["job_id"]),
            output::text(&event["line"]["message"])
        ),
        "job.step" => format!(
            "{} step {} {}",
            output::text(&event["job_id"]),
            output::text(&event["step"]["name"]),
            output::text(&event["step"]["status"])
        ),
        k if k.starts_with("vm.") => format!(
            "{} {} on host {}",
            output::text(&event["vm"]["name"]),
            output::text(&event["vm"]["state"]),
            output::text(&event["host_id"])
        ),
        k if k.starts_with("host.") => format!(
            "{} {}",
            output::text(&event["host_id"]),
            event["error"].as_str().unwrap_or_default()
        ),
        _ => event.to_string(),
    };
    let at = event["at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S")
                .to_string()
        })
        .unwrap_or_default();
    format!("{at:<8}  {kind:<14} {gist}")
}

pub async fn run(client: &Client, format: Format, args: EventsArgs) -> Result<()> {
    let mut query = Vec::new();
    if let Some(types) = args.types {
        query.push(("types", types));
    }
    let req = client
        .request(Method::GET, client.url_with(&["events"], &query))
        .header(ACCEPT, "text/event-stream");
    let mut resp = client.send(req).await?;
    let mut parser = SseParser::default();
    let mut seen = 0;
    loop {
        let chunk = tokio::select! {
            chunk = resp.chunk() => chunk.map_err(|e| client.transport(&e))?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(chunk) = chunk else {
            return Err(Error::Failed("the service closed the event stream".into()));
        };
        for data in parser.feed(&chunk) {
            let Ok(event) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            match event["type"].as_str() {
                Some("subscribed") => continue,
                Some("closed") => {
                    return Err(Error::Api {
                        status: 401,
                        message: format!(
                            "event stream closed: {}",
                            output::text(&event["message"])
                        ),
                    });
                }
                _ => {}
            }
            match format {
                Format::Json => println!("{event}"),
                Format::Yaml => {
                    println!("---");
                    output::print_data(format, &event);
                }
                Format::Table => println!("{}", describe(&event)),
            }
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b"data: {\"a\"").is_empty());
        assert_eq!(
            p.feed(b":1}\n\n: keep-alive\n\ndata:x\r\n\r\n"),
            vec!["{\"a\":1}", "x"]
        );
    }

    #[test]
    fn events_read_as_lines() {
        let e = serde_json::json!({"type": "vm.changed", "at": "2026-01-01T00:00:00Z",
            "host_id": "h1", "vm": {"name": "web", "state": "running"}});
        assert!(
            describe(&e).contains("vm.changed     web running on host h1"),
            "{}",
            describe(&e)
        );
    }
}
