//! The two ways a message reaches the host, behind [`Channel`]:
//! a virtio-serial port (KVM; the host side is a UNIX socket the control
//! plane reaches through the host's SSH connection) and the Hyper-V KVP
//! pool files the Linux KVP daemon exchanges with the host.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use overvisor_provision::wire::MAX_LINE_BYTES;
use overvisor_provision::{GuestMessage, kvp};
use zeroize::Zeroizing;

/// The virtio-serial port's name, as the domain XML defines it.
pub const VIRTIO_PORT: &str = "/dev/virtio-ports/org.overvisor.guest.0";

/// One line of text to the host and from it.
pub trait Channel {
    fn send(&mut self, message: &GuestMessage) -> io::Result<()>;
    /// The next line from the host, waiting at most `wait`.
    fn recv(&mut self, wait: Duration) -> io::Result<Option<Zeroizing<String>>>;
}

/// A virtio-serial port (or, for tests and other transports, a UNIX
/// socket at that path). A reader thread hands over whole lines.
pub struct VirtioPort {
    writer: Box<dyn Write + Send>,
    lines: mpsc::Receiver<io::Result<Zeroizing<String>>>,
}

/// How long the reader waits when the port reads end of file: the host
/// side is not connected (yet, or any more).
const NOBODY_THERE: Duration = Duration::from_millis(250);

impl VirtioPort {
    pub fn open(path: &Path) -> io::Result<Self> {
        let is_socket = std::fs::metadata(path)?.file_type().is_socket();
        let (reader, writer): (Box<dyn Read + Send>, Box<dyn Write + Send>) = if is_socket {
            let s = UnixStream::connect(path)?;
            (Box::new(s.try_clone()?), Box::new(s))
        } else {
            let f: File = OpenOptions::new().read(true).write(true).open(path)?;
            (Box::new(f.try_clone()?), Box::new(f))
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || read_lines(reader, is_socket, &tx));
        Ok(Self { writer, lines })
    }
}

fn read_lines(
    reader: Box<dyn Read + Send>,
    ends: bool,
    tx: &mpsc::Sender<io::Result<Zeroizing<String>>>,
) {
    let mut reader = BufReader::new(reader);
    let mut line = Zeroizing::new(Vec::new());
    loop {
        let limit = (MAX_LINE_BYTES + 1 - line.len()) as u64;
        match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(0) if ends => {
                let _ = tx.send(Err(io::ErrorKind::UnexpectedEof.into()));
                return;
            }
            Ok(0) => std::thread::sleep(NOBODY_THERE),
            Ok(_) if line.ends_with(b"\n") => {
                let text = String::from_utf8(std::mem::take(&mut *line))
                    .map(Zeroizing::new)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"));
                if tx.send(text).is_err() {
                    return;
                }
            }
            Ok(_) if line.len() > MAX_LINE_BYTES => {
                line.clear();
                // Skip to the end of the overlong line.
                let mut rest = Vec::new();
                let _ = reader.read_until(b'\n', &mut rest);
                let too_long = io::Error::new(io::ErrorKind::InvalidData, "line too long");
                if tx.send(Err(too_long)).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

impl Channel for VirtioPort {
    fn send(&mut self, message: &GuestMessage) -> io::Result<()> {
        self.writer.write_all(message.encode().as_bytes())?;
        self.writer.flush()
    }

    fn recv(&mut self, wait: Duration) -> io::Result<Option<Zeroizing<String>>> {
        match self.lines.recv_timeout(wait) {
            Ok(line) => line.map(Some),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

/// Hyper-V KVP through the pool files: the host's items in pool 0, ours
/// in pool 1.
pub struct KvpPools {
    host_to_guest: PathBuf,
    guest_to_host: PathBuf,
    /// The last sealed message handed over: the host's items stay in the
    /// pool, and each is taken once.
    last: Option<Zeroizing<String>>,
}

/// How often pool 0 is read while waiting.
const KVP_POLL: Duration = Duration::from_millis(200);

impl KvpPools {
    /// The pools in `dir` (`/var/lib/hyperv` on a guest).
    pub fn new(dir: &Path) -> Self {
        Self {
            host_to_guest: dir.join(".kvp_pool_0"),
            guest_to_host: dir.join(".kvp_pool_1"),
            last: None,
        }
    }

    /// The whole message `prefix` among the host's items, if there.
    pub fn host_message(&self, prefix: &str) -> io::Result<Option<Zeroizing<String>>> {
        let pool = match std::fs::read(&self.host_to_guest) {
            Ok(p) => Zeroizing::new(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(kvp::unchunk(prefix, &kvp::records_decode(&pool)).map(Zeroizing::new))
    }
}

impl Channel for KvpPools {
    fn send(&mut self, message: &GuestMessage) -> io::Result<()> {
        let prefix = match message {
            GuestMessage::Hello { .. } => kvp::HELLO,
            GuestMessage::Status { .. } => kvp::STATUS,
        };
        let old = match std::fs::read(&self.guest_to_host) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let new = kvp::pool_write(&old, &kvp::chunk(prefix, &message.encode()), Some(prefix))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // Whole or not at all: the daemon may read it at any moment.
        let tmp = self.guest_to_host.with_extension("overvisor-tmp");
        std::fs::write(&tmp, new)?;
        std::fs::rename(&tmp, &self.guest_to_host)
    }

    fn recv(&mut self, wait: Duration) -> io::Result<Option<Zeroizing<String>>> {
        let until = Instant::now() + wait;
        loop {
            if let Some(m) = self.host_message(kvp::SEALED)?
                && self.last.as_ref() != Some(&m)
            {
                self.last = Some(m.clone());
                return Ok(Some(m));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            std::thread::sleep(KVP_POLL);
        }
    }
}
