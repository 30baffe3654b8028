//! Channels handed out by [`super::SshSession`] that outlive one call: a
//! PTY for consoles, a line stream for event loops, a pipe for a remote
//! command that serves requests on stdin, a TCP tunnel for VNC.
//! Each holds a permit of the session's channel semaphore until dropped.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use russh::client::Msg;
use russh::{Channel, ChannelMsg, ChannelStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use super::SshError;

/// A channel that is closed when dropped (russh leaves an abandoned channel
/// open, e.g. after a timeout, and it would count against `MaxSessions`).
pub(super) struct ClosingChannel(pub(super) Option<Channel<Msg>>);

impl ClosingChannel {
    pub(super) fn get(&mut self) -> &mut Channel<Msg> {
        self.0.as_mut().expect("channel present until drop")
    }

    pub(super) fn channel(&self) -> &Channel<Msg> {
        self.0.as_ref().expect("channel present until drop")
    }
}

impl Drop for ClosingChannel {
    fn drop(&mut self) {
        if let Some(ch) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = ch.close().await;
            });
        }
    }
}

/// What a PTY channel produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyOutput {
    Data(Vec<u8>),
    /// The remote command ended (with its status, if it sent one).
    Exit(Option<u32>),
}

/// An interactive channel on a pseudo-terminal.
pub struct PtyChannel {
    pub(super) ch: ClosingChannel,
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) addr: String,
    /// Output read ahead (while waiting for a prompt) and handed back
    /// before anything newer.
    pub(super) unread: Vec<u8>,
}

impl PtyChannel {
    /// Hands `data` back, to be read first.
    pub(crate) fn unread(&mut self, data: &[u8]) {
        self.unread.splice(0..0, data.iter().copied());
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), SshError> {
        let addr = self.addr.clone();
        self.ch
            .get()
            .data(data)
            .await
            .map_err(|source| SshError::protocol(addr, source))
    }

    /// Ends the command's stdin (the channel stays open for its output).
    pub async fn eof(&mut self) -> Result<(), SshError> {
        let addr = self.addr.clone();
        self.ch
            .get()
            .eof()
            .await
            .map_err(|source| SshError::protocol(addr, source))
    }

    pub async fn resize(&mut self, cols: u32, rows: u32) -> Result<(), SshError> {
        let addr = self.addr.clone();
        self.ch
            .get()
            .window_change(cols, rows, 0, 0)
            .await
            .map_err(|source| SshError::protocol(addr, source))
    }

    /// The next output, or the end. Waits as long as the remote side is
    /// quiet; keepalives end the wait if the connection dies. An end without
    /// an exit status reads as [`SshError::Disconnected`].
    pub async fn read(&mut self) -> Result<PtyOutput, SshError> {
        if !self.unread.is_empty() {
            return Ok(PtyOutput::Data(std::mem::take(&mut self.unread)));
        }
        let mut status = None;
        loop {
            match self.ch.get().wait().await {
                Some(ChannelMsg::Data { data }) => return Ok(PtyOutput::Data(data.to_vec())),
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    return Ok(PtyOutput::Data(data.to_vec()));
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { .. }) => return Ok(PtyOutput::Exit(None)),
                Some(ChannelMsg::Eof) if status.is_some() => return Ok(PtyOutput::Exit(status)),
                Some(ChannelMsg::Close) | None => {
                    return match status {
                        Some(s) => Ok(PtyOutput::Exit(Some(s))),
                        None => Err(SshError::Disconnected {
                            addr: self.addr.clone(),
                            reason: "channel closed".into(),
                        }),
                    };
                }
                Some(_) => {}
            }
        }
    }

    /// Ends the channel now (the remote command gets SIGHUP).
    pub async fn close(mut self) {
        if let Some(ch) = self.ch.0.take() {
            let _ = timeout(Duration::from_secs(2), ch.close()).await;
        }
    }
}

/// A long-lived command's stdin and output without a terminal: what it
/// writes to stdout or stderr arrives as [`PtyOutput::Data`]. Dropping it
/// closes the channel, and with it the command's stdin.
pub struct PipedChannel(pub(super) PtyChannel);

impl PipedChannel {
    pub async fn write(&mut self, data: &[u8]) -> Result<(), SshError> {
        self.0.write(data).await
    }

    /// As [`PtyChannel::read`].
    pub async fn read(&mut self) -> Result<PtyOutput, SshError> {
        self.0.read().await
    }
}

/// Output lines of a long-lived PTY command, `\r\n` already trimmed.
pub struct LineStream {
    pty: PtyChannel,
    buf: Vec<u8>,
    ended: bool,
}

/// Longest line kept whole; a longer one is cut (no host prints such lines,
/// but a bounded buffer must not depend on that).
const MAX_LINE: usize = 64 << 10;

impl LineStream {
    pub(super) fn new(pty: PtyChannel) -> Self {
        Self {
            pty,
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next line; `Ok(None)` once the command ended.
    pub async fn next_line(&mut self) -> Result<Option<String>, SshError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.ended {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf);
                return Ok(Some(String::from_utf8_lossy(&line).trim_end().to_owned()));
            }
            match self.pty.read().await? {
                PtyOutput::Data(d) => {
                    self.buf.extend_from_slice(&d);
                    if self.buf.len() > MAX_LINE && !self.buf.contains(&b'\n') {
                        self.buf.truncate(MAX_LINE);
                        self.buf.push(b'\n');
                    }
                }
                PtyOutput::Exit(_) => self.ended = true,
            }
        }
    }

    /// Writes to the command's stdin; waits while the host's SSH window
    /// is full, so a slow host holds the sender back.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), SshError> {
        self.pty.write(data).await
    }

    /// Ends the command's stdin.
    pub async fn eof(&mut self) -> Result<(), SshError> {
        self.pty.eof().await
    }

    pub async fn close(self) {
        self.pty.close().await;
    }
}

/// A tunnelled TCP connection; read and write it like a socket.
pub struct TcpTunnel {
    pub(super) stream: ChannelStream<Msg>,
    pub(super) _permit: OwnedSemaphorePermit,
}

impl AsyncRead for TcpTunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpTunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
