//! One long-lived interactive `virsh` per host, for the read-only commands
//! the inventory repeats on every resync (`list`, `domstats`).
//!
//! Starting virsh costs a host ~25 ms of CPU (process start, libvirt
//! connection) on top of the SSH channel, and a fleet resync pays that for
//! every host and command. A virsh kept running on a piped channel answers
//! the same commands for the cost of the RPC alone.
//!
//! Interactive virsh prints a prompt before each command and, when built
//! with readline, echoes the command; neither is machine output. So each
//! request is framed by two `echo` markers, the prompt is learnt when the
//! session opens, and what surrounds the output is checked and stripped.
//! Anything unexpected is an error: the caller drops the session and runs
//! virsh per call instead. stderr is merged into stdout (one stream keeps
//! an `error:` line next to the command that caused it).
//!
//! Only fixed command texts are sent (no names, no user input), at most
//! with a domain's UUID, whose text is hex digits and dashes: nothing here
//! needs quoting.

use std::time::Duration;

use tokio::time::timeout;
use uuid::Uuid;

use crate::driver::{HvError, HvResult};
use crate::quote::CommandLine;
use crate::ssh::{PipedChannel, PtyOutput, SshSession};

/// A command the session may run: a fixed text, never built from input.
pub(crate) type FixedCommand = &'static str;

/// The longest prompt accepted (virsh's is `virsh # `).
const MAX_PROMPT: usize = 64;

pub(crate) struct VirshShell {
    ch: PipedChannel,
    buf: Vec<u8>,
    /// What virsh prints before reading a command.
    prompt: String,
    /// Whether virsh echoes each command after the prompt (readline builds).
    echoes: bool,
    next: u64,
    deadline: Duration,
    max_output: usize,
}

/// A marker as sent (`echo '@@overvisor''-7-b@@'`: the quotes keep the
/// echoed command from containing the output form) and as printed.
fn marker(n: u64, end: char) -> (String, String) {
    (
        format!("echo '@@overvisor''-{n}-{end}@@'"),
        format!("@@overvisor-{n}-{end}@@"),
    )
}

impl VirshShell {
    /// Starts `virsh` (the interactive command line, without a command)
    /// and learns its prompt.
    pub(crate) async fn open(ssh: &SshSession, virsh: CommandLine) -> HvResult<Self> {
        let cfg = ssh.config();
        let ch = ssh.open_piped(&virsh.with_stderr_merged()).await?;
        let mut shell = Self {
            ch,
            buf: Vec::new(),
            prompt: String::new(),
            echoes: false,
            next: 1,
            deadline: cfg.command_timeout,
            max_output: cfg.max_output_bytes,
        };
        let (send, printed) = marker(0, 'r');
        shell.ch.write(format!("{send}\n").as_bytes()).await?;
        let before = within(shell.deadline, shell.read_until(&printed)).await?;
        let before = String::from_utf8_lossy(&before).into_owned();
        if let Some(error) = error_lines(&before) {
            return Err(HvError::Host(error));
        }
        let echo = format!("{send}\n");
        let (prompt, echoes) = match before.strip_suffix(&echo) {
            Some(prompt) => (prompt, true),
            None => (before.as_str(), false),
        };
        // Anything printed before the first prompt (a banner) is not part of it.
        let prompt = prompt.rsplit('\n').next().unwrap_or_default();
        if prompt.is_empty() || prompt.len() > MAX_PROMPT {
            return Err(HvError::Parse(format!(
                "interactive virsh printed an unexpected prompt {prompt:?}"
            )));
        }
        shell.prompt = prompt.to_owned();
        shell.echoes = echoes;
        Ok(shell)
    }

    /// Runs `command` and returns what it printed; `Err` if it printed an
    /// `error:` line, the framing was not as expected, or time ran out.
    pub(crate) async fn run(&mut self, command: FixedCommand) -> HvResult<String> {
        let output = self.exchange(command).await?;
        match error_lines(&output) {
            Some(error) => Err(HvError::Host(error)),
            None => Ok(output),
        }
    }

    /// Runs `command` on one domain: `{command} {uuid} {tail}`, e.g.
    /// `domifaddr --domain <uuid> --source arp`. `Ok(Err(message))` when
    /// virsh refused it (the session goes on); `Err` when the session
    /// failed and must be dropped.
    pub(crate) async fn run_on(
        &mut self,
        command: FixedCommand,
        uuid: Uuid,
        tail: FixedCommand,
    ) -> HvResult<Result<String, String>> {
        let output = self.exchange(&format!("{command} {uuid} {tail}")).await?;
        Ok(match error_lines(&output) {
            Some(error) => Err(error),
            None => Ok(output),
        })
    }

    /// Sends `command` between two markers and returns what it printed.
    async fn exchange(&mut self, command: &str) -> HvResult<String> {
        let n = self.next;
        self.next += 1;
        let (begin_send, begin) = marker(n, 'b');
        let (end_send, end) = marker(n, 'e');
        self.ch
            .write(format!("{begin_send}\n{command}\n{end_send}\n").as_bytes())
            .await?;
        let framed = within(self.deadline, async {
            self.read_until(&begin).await?;
            self.read_until(&end).await
        })
        .await?;
        let framed = String::from_utf8_lossy(&framed);
        unframe(&framed, &self.prompt, self.echoes, command, &end_send).map(str::to_owned)
    }

    /// Reads until `printed` has arrived; returns what came before it and
    /// drops both from the buffer.
    async fn read_until(&mut self, printed: &str) -> HvResult<Vec<u8>> {
        let printed = printed.as_bytes();
        let mut searched = 0;
        loop {
            if let Some(at) = find(&self.buf[searched..], printed).map(|i| i + searched) {
                let before = self.buf[..at].to_vec();
                self.buf.drain(..at + printed.len());
                return Ok(before);
            }
            // A marker may straddle two reads.
            searched = self.buf.len().saturating_sub(printed.len());
            match self.ch.read().await? {
                PtyOutput::Data(data) => {
                    if self.buf.len() + data.len() > self.max_output {
                        return Err(HvError::Parse(format!(
                            "interactive virsh printed more than {} bytes for one command",
                            self.max_output
                        )));
                    }
                    self.buf.extend_from_slice(&data);
                }
                PtyOutput::Exit(status) => {
                    return Err(HvError::Host(format!(
                        "interactive virsh ended (exit status {status:?})"
                    )));
                }
            }
        }
    }
}

async fn within<T>(after: Duration, work: impl Future<Output = HvResult<T>>) -> HvResult<T> {
    timeout(after, work)
        .await
        .unwrap_or(Err(HvError::Timeout(after)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The command's output inside what came between the markers:
/// `prompt [command\n] OUTPUT prompt [end-marker command\n]`, where the
/// bracketed echoes appear only when virsh echoes. (In quiet mode virsh's
/// `echo` ends without a newline; a version that adds one is accepted.)
fn unframe<'a>(
    framed: &'a str,
    prompt: &str,
    echoes: bool,
    command: &str,
    end_send: &str,
) -> HvResult<&'a str> {
    let framed = framed.strip_prefix('\n').unwrap_or(framed);
    let (head, tail) = if echoes {
        (
            format!("{prompt}{command}\n"),
            format!("{prompt}{end_send}\n"),
        )
    } else {
        (prompt.to_owned(), prompt.to_owned())
    };
    framed
        .strip_prefix(head.as_str())
        .and_then(|rest| rest.strip_suffix(tail.as_str()))
        .ok_or_else(|| {
            HvError::Parse(format!(
                "interactive virsh framed the answer to {command:?} unexpectedly"
            ))
        })
}

/// virsh's `error:` lines, joined, if there are any.
fn error_lines(output: &str) -> Option<String> {
    let errors: Vec<&str> = output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("error:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    (!errors.is_empty()).then(|| errors.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    // What virsh 9 (readline, `-q`) printed for a request, between markers.
    const ECHOED: &str =
        "virsh # list --all --name\nweb\ndb\n\nvirsh # echo '@@overvisor''-3-e@@'\n";

    #[test]
    fn output_is_cut_out_of_the_echoed_frame() {
        let end = marker(3, 'e').0;
        let out = unframe(ECHOED, "virsh # ", true, "list --all --name", &end).expect("framed");
        assert_eq!(out, "web\ndb\n\n");
        // A version that ends `echo` with a newline.
        let newline = format!("\n{ECHOED}");
        assert_eq!(
            unframe(&newline, "virsh # ", true, "list --all --name", &end).expect("framed"),
            "web\ndb\n\n"
        );
    }

    #[test]
    fn output_is_cut_out_of_a_frame_without_echo() {
        let end = marker(1, 'e').0;
        let out =
            unframe("virsh # a\nb\nvirsh # ", "virsh # ", false, "list", &end).expect("framed");
        assert_eq!(out, "a\nb\n");
    }

    #[test]
    fn an_unexpected_frame_is_an_error() {
        let end = marker(3, 'e').0;
        // Another command's echo (e.g. output of a different request).
        assert!(unframe(ECHOED, "virsh # ", true, "domstats --raw", &end).is_err());
        // A different prompt (virsh reconnected and printed something).
        assert!(unframe(ECHOED, "virsh > ", true, "list --all --name", &end).is_err());
        assert!(unframe("", "virsh # ", true, "list", &end).is_err());
    }

    #[test]
    fn markers_as_sent_never_contain_their_printed_form() {
        for n in [0, 7, u64::MAX] {
            let (send, printed) = marker(n, 'e');
            assert!(!send.contains(&printed), "{send} contains {printed}");
        }
    }

    #[test]
    fn error_lines_are_collected() {
        assert_eq!(error_lines("web\ndb\n"), None);
        assert_eq!(
            error_lines("error: failed to connect\nerror: Connection refused\n").as_deref(),
            Some("failed to connect: Connection refused")
        );
    }
}
