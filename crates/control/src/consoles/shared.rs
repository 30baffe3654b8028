//! One serial console per VM, however many watch it.
//!
//! `virsh console --force` takes the line from whoever held it, so viewers
//! of one VM share one PTY: a pump task owns it, hands its output to every
//! viewer and types what the viewer in control sends. Everyone sees the
//! output; one viewer types at a time and another may take control. A
//! viewer that joins late first gets the last few KiB of output, so its
//! screen is not blank. Memory is bounded per viewer (its backlog), whatever
//! the viewers do: one that falls that far behind is dropped, never waited
//! for, since the pump shares the host's SSH connection with everything
//! else on that host.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use overvisor_hv::{PtyChannel, PtyOutput};
use overvisor_model::host::HostId;
use overvisor_model::vm::VmName;
use tokio::sync::{Notify, mpsc, watch};

use super::ConsoleEnd;

/// Output a viewer may have waiting before it is dropped as too slow. The
/// pump never waits for viewers (it shares the host's SSH connection with
/// everything else), so this is what bounds a console's memory.
pub const VIEWER_BACKLOG: usize = 1 << 20;
/// The most output handed to a viewer at once: bursts go out in frames of
/// up to this size.
pub const MAX_FRAME: usize = 64 << 10;
/// Output a viewer that joins late is shown first.
const SCROLLBACK: usize = 16 << 10;
/// Keystroke frames waiting for the host (back-pressure on the typist).
const INPUT_QUEUE: usize = 16;

type Key = (HostId, VmName);
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Shared>>>>;

/// The open serial consoles of this process, by VM.
#[derive(Default)]
pub struct SerialHub {
    slots: Mutex<HashMap<Key, Slot>>,
}

/// Who holds a console and how many watch it, as a viewer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlView {
    /// This viewer may type.
    pub you: bool,
    /// The name of the user in control, if anyone is.
    pub holder: Option<String>,
    pub viewers: usize,
}

/// What a viewer reads next.
#[derive(Debug)]
pub enum ViewerOutput {
    Data(Bytes),
    /// Control passed to someone, or a viewer came or went.
    Control(ControlView),
}

/// Why typing was not passed on.
#[derive(Debug, PartialEq, Eq)]
pub enum NotTyped {
    /// Another viewer is in control; it says who.
    NotInControl(Option<String>),
    Ended(ConsoleEnd),
}

enum Input {
    Data(Vec<u8>),
    Resize(u32, u32),
}

#[derive(Clone, Default, PartialEq, Eq)]
struct Control {
    holder: Option<(u64, String)>,
    viewers: usize,
}

/// A viewer's place in the console: the output it has not read yet.
struct Seat {
    id: u64,
    name: String,
    backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    too_slow: bool,
    wake: Arc<Notify>,
}

struct State {
    seats: Vec<Seat>,
    scrollback: VecDeque<u8>,
    next_id: u64,
    end: Option<ConsoleEnd>,
}

struct Shared {
    state: Mutex<State>,
    control: watch::Sender<Control>,
    input: mpsc::Sender<Input>,
    /// Wakes the pump when the last viewer left.
    stop: Notify,
}

/// One viewer of a shared console. Dropping it leaves the console (the PTY
/// closes with the last viewer).
pub struct Viewer {
    shared: Arc<Shared>,
    id: u64,
    name: String,
    wake: Arc<Notify>,
    control: watch::Receiver<Control>,
    size: (u32, u32),
}

impl SerialHub {
    /// Joins the console of `key`, opening it with `open` when nobody has
    /// it open (one PTY per VM: two opens at once wait for each other).
    pub async fn join<F, E>(
        &self,
        key: Key,
        name: &str,
        size: (u32, u32),
        open: F,
    ) -> Result<Viewer, E>
    where
        F: Future<Output = Result<PtyChannel, E>>,
    {
        let mut open = Some(open);
        loop {
            let slot = self.slot(&key);
            let mut held = slot.lock().await;
            // Pruned between the two locks: start over with the map's slot.
            let current = self.lock().get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot));
            if !current {
                continue;
            }
            if let Some(viewer) = held
                .as_ref()
                .and_then(|shared| Shared::join(shared, name, size))
            {
                return Ok(viewer);
            }
            let Some(open) = open.take() else {
                unreachable!("opened at most once: the loop returns after");
            };
            let pty = open.await?;
            let shared = Shared::start(pty);
            let viewer =
                Shared::join(&shared, name, size).expect("a console just opened has not ended");
            *held = Some(shared);
            return Ok(viewer);
        }
    }

    /// Whether `key`'s console is open (or being opened): one more viewer
    /// joins it without opening another.
    pub fn is_open(&self, key: &Key) -> bool {
        self.lock().get(key).is_some_and(live)
    }

    /// The key's slot; slots of ended consoles nobody is opening are
    /// dropped on the way, so the map holds only what is in use.
    fn slot(&self, key: &Key) -> Slot {
        let mut slots = self.lock();
        slots.retain(|k, slot| k == key || live(slot));
        slots.entry(key.clone()).or_default().clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        // Every change is one call: a poisoned lock is still consistent.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A slot in use: being opened (locked) or holding a console not ended.
fn live(slot: &Slot) -> bool {
    slot.try_lock()
        .map(|held| held.as_ref().is_some_and(|s| s.lock().end.is_none()))
        .unwrap_or(true)
}

impl Shared {
    fn start(pty: PtyChannel) -> Arc<Self> {
        let (shared, inputs) = Self::new();
        tokio::spawn(pump(shared.clone(), pty, inputs));
        shared
    }

    /// A console and the input its pump reads.
    fn new() -> (Arc<Self>, mpsc::Receiver<Input>) {
        let (input, inputs) = mpsc::channel(INPUT_QUEUE);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                seats: Vec::new(),
                scrollback: VecDeque::new(),
                next_id: 0,
                end: None,
            }),
            control: watch::Sender::new(Control::default()),
            input,
            stop: Notify::new(),
        });
        (shared, inputs)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new viewer, or `None` when the console ended. The first viewer
    /// (or the first after the holder left) is in control; a late one
    /// first gets the scrollback.
    fn join(this: &Arc<Self>, name: &str, size: (u32, u32)) -> Option<Viewer> {
        let mut state = this.lock();
        if state.end.is_some() {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        let mut backlog = VecDeque::new();
        if !state.scrollback.is_empty() {
            backlog.push_back(Bytes::from(
                state.scrollback.iter().copied().collect::<Vec<u8>>(),
            ));
        }
        let wake = Arc::new(Notify::new());
        state.seats.push(Seat {
            id,
            name: name.to_owned(),
            backlog_bytes: backlog.iter().map(Bytes::len).sum(),
            backlog,
            too_slow: false,
            wake: wake.clone(),
        });
        let viewers = state.seats.len();
        this.control.send_modify(|c| {
            c.viewers = viewers;
            if c.holder.is_none() {
                c.holder = Some((id, name.to_owned()));
            }
        });
        drop(state);
        let mut control = this.control.subscribe();
        // Each viewer is told where control is as soon as it reads.
        control.mark_changed();
        Some(Viewer {
            shared: this.clone(),
            id,
            name: name.to_owned(),
            wake,
            control,
            size,
        })
    }

    fn leave(&self, id: u64) {
        let mut state = self.lock();
        state.seats.retain(|seat| seat.id != id);
        let next = state.seats.first().map(|seat| (seat.id, seat.name.clone()));
        let viewers = state.seats.len();
        drop(state);
        self.control.send_if_modified(|c| {
            let before = c.clone();
            c.viewers = viewers;
            if c.holder.as_ref().is_some_and(|(h, _)| *h == id) {
                // Control passes to the longest-watching viewer.
                c.holder = next;
            }
            *c != before
        });
        if viewers == 0 {
            self.stop.notify_one();
        }
    }

    /// Hands output to every viewer and keeps the tail for late joiners.
    /// A viewer with more than its backlog waiting is marked too slow and
    /// its backlog freed.
    fn publish(&self, data: Vec<u8>) {
        let data = Bytes::from(data);
        let mut state = self.lock();
        let kept = state.scrollback.len();
        let overflow = (kept + data.len()).saturating_sub(SCROLLBACK);
        state.scrollback.drain(..overflow.min(kept));
        let skip = data.len().saturating_sub(SCROLLBACK);
        state.scrollback.extend(&data[skip..]);
        for seat in state.seats.iter_mut().filter(|seat| !seat.too_slow) {
            if seat.backlog_bytes + data.len() > VIEWER_BACKLOG {
                seat.too_slow = true;
                seat.backlog = VecDeque::new();
                seat.backlog_bytes = 0;
            } else {
                seat.backlog_bytes += data.len();
                seat.backlog.push_back(data.clone());
            }
            seat.wake.notify_one();
        }
    }

    /// Ends the console if nobody watches it; checked and ended under one
    /// lock, so no viewer joins a console that is going away.
    fn finish_if_unwatched(&self) -> bool {
        let mut state = self.lock();
        if !state.seats.is_empty() {
            return false;
        }
        Self::end(&mut state, ConsoleEnd::ClientClosed);
        true
    }

    fn finish(&self, end: ConsoleEnd) {
        Self::end(&mut self.lock(), end);
    }

    fn end(state: &mut State, end: ConsoleEnd) {
        state.end = Some(end);
        state.scrollback = VecDeque::new();
        for seat in &state.seats {
            seat.wake.notify_one();
        }
    }

    fn is_too_slow(&self, id: u64) -> bool {
        self.lock()
            .seats
            .iter()
            .any(|seat| seat.id == id && seat.too_slow)
    }

    /// Up to [`MAX_FRAME`] of a viewer's waiting output, in one piece.
    fn take(&self, id: u64) -> Result<Option<Bytes>, ConsoleEnd> {
        let mut state = self.lock();
        let end = state.end;
        let Some(seat) = state.seats.iter_mut().find(|seat| seat.id == id) else {
            return Err(end.unwrap_or(ConsoleEnd::ClientClosed));
        };
        if seat.too_slow {
            return Err(ConsoleEnd::ClientTooSlow);
        }
        let Some(first) = seat.backlog.pop_front() else {
            // Output before the end is read first.
            return end.map_or(Ok(None), Err);
        };
        let mut frame = Vec::new();
        let mut next = Some(first);
        while let Some(chunk) = next.take() {
            if !frame.is_empty() && frame.len() + chunk.len() > MAX_FRAME {
                seat.backlog.push_front(chunk);
                break;
            }
            frame.extend_from_slice(&chunk);
            next = seat.backlog.pop_front();
        }
        seat.backlog_bytes -= frame.len();
        Ok(Some(Bytes::from(frame)))
    }
}

/// Owns the PTY: output to the viewers, the holder's input to the host,
/// until the console ends or its last viewer leaves.
async fn pump(shared: Arc<Shared>, mut pty: PtyChannel, mut inputs: mpsc::Receiver<Input>) {
    let end = loop {
        tokio::select! {
            output = pty.read() => match output {
                Ok(PtyOutput::Data(data)) => shared.publish(data),
                Ok(PtyOutput::Exit(_)) => break ConsoleEnd::DomainStopped,
                Err(_) => break ConsoleEnd::HostDisconnected,
            },
            input = inputs.recv() => {
                let sent = match input {
                    Some(Input::Data(data)) => pty.write(&data).await,
                    Some(Input::Resize(cols, rows)) => pty.resize(cols, rows).await,
                    // `shared` holds a sender: not reached.
                    None => Ok(()),
                };
                if sent.is_err() {
                    break ConsoleEnd::HostDisconnected;
                }
            }
            () = shared.stop.notified() => {
                if shared.finish_if_unwatched() {
                    pty.close().await;
                    return;
                }
            }
        }
    };
    shared.finish(end);
    pty.close().await;
}

impl Viewer {
    /// The next output (what waited, in one piece) or change of control;
    /// the console's end once it ended, after the output before it.
    /// Cancel-safe.
    pub async fn read(&mut self) -> Result<ViewerOutput, ConsoleEnd> {
        loop {
            if let Some(data) = self.shared.take(self.id)? {
                return Ok(ViewerOutput::Data(data));
            }
            tokio::select! {
                biased;
                () = self.wake.notified() => {}
                Ok(()) = self.control.changed() => {
                    return Ok(ViewerOutput::Control(self.control_view()));
                }
            }
        }
    }

    /// Waits, without taking output, until this viewer has fallen too far
    /// behind: for a bridge that holds off reading while its viewer's
    /// socket drains. The console's end is not returned here: output
    /// before it is still read first. Cancel-safe.
    pub async fn fallen_behind(&mut self) -> ConsoleEnd {
        loop {
            if self.shared.is_too_slow(self.id) {
                return ConsoleEnd::ClientTooSlow;
            }
            self.wake.notified().await;
        }
    }

    /// Where control is now, as this viewer sees it.
    pub fn control_view(&self) -> ControlView {
        let c = self.control.borrow();
        ControlView {
            you: c.holder.as_ref().is_some_and(|(h, _)| *h == self.id),
            holder: c.holder.as_ref().map(|(_, name)| name.clone()),
            viewers: c.viewers,
        }
    }

    /// Types `data`, if this viewer is in control (waits while the host
    /// is not taking input).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), NotTyped> {
        let view = self.control_view();
        if !view.you {
            return Err(NotTyped::NotInControl(view.holder));
        }
        self.send(Input::Data(data.to_vec()))
            .await
            .map_err(NotTyped::Ended)
    }

    /// This viewer's terminal size; it is the guest's while it is in control.
    pub async fn resize(&mut self, cols: u32, rows: u32) -> Result<(), ConsoleEnd> {
        self.size = (cols, rows);
        if !self.control_view().you {
            return Ok(());
        }
        self.send(Input::Resize(cols, rows)).await
    }

    /// Takes control from whoever had it; the guest gets this viewer's size.
    pub async fn take_control(&mut self) -> Result<(), ConsoleEnd> {
        let (id, name) = (self.id, self.name.clone());
        self.shared.control.send_if_modified(|c| {
            let was = c.holder.as_ref().map(|(h, _)| *h);
            c.holder = Some((id, name));
            was != Some(id)
        });
        let (cols, rows) = self.size;
        self.send(Input::Resize(cols, rows)).await
    }

    async fn send(&self, input: Input) -> Result<(), ConsoleEnd> {
        if self.shared.input.send(input).await.is_err() {
            return Err(ConsoleEnd::HostDisconnected);
        }
        match self.shared.lock().end {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.shared.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console without a PTY: what the pump would publish, by hand.
    fn console() -> Arc<Shared> {
        Shared::new().0
    }

    #[tokio::test]
    async fn a_viewer_that_falls_behind_is_dropped_and_its_backlog_freed() {
        let shared = console();
        let mut reader = Shared::join(&shared, "alice", (80, 24)).expect("open");
        let mut idle = Shared::join(&shared, "bob", (80, 24)).expect("open");
        let chunk = vec![b'x'; 32 << 10];
        let mut read = 0;
        for _ in 0..(4 * VIEWER_BACKLOG / chunk.len()) {
            shared.publish(chunk.clone());
            while let Ok(Some(frame)) = shared.take(reader.id) {
                assert!(frame.len() <= MAX_FRAME);
                read += frame.len();
            }
            let waiting: usize = shared.lock().seats.iter().map(|s| s.backlog_bytes).sum();
            assert!(waiting <= VIEWER_BACKLOG, "{waiting} bytes waiting");
        }
        assert_eq!(read, 4 * VIEWER_BACKLOG);
        assert_eq!(shared.take(idle.id), Err(ConsoleEnd::ClientTooSlow));
        assert_eq!(
            tokio::time::timeout(std::time::Duration::from_secs(5), idle.fallen_behind()).await,
            Ok(ConsoleEnd::ClientTooSlow)
        );
        assert!(matches!(
            reader.read().await,
            Ok(ViewerOutput::Control(ControlView {
                you: true,
                viewers: 2,
                ..
            }))
        ));
        // A late viewer starts with the tail of the output, not all of it.
        let late = Shared::join(&shared, "carol", (80, 24)).expect("open");
        let replay = shared.take(late.id).expect("live").expect("scrollback");
        assert_eq!(replay.len(), SCROLLBACK);
        drop(idle);
        drop(late);
        shared.finish(ConsoleEnd::DomainStopped);
        // The end is read after the output before it, by every viewer.
        assert!(matches!(
            reader.read().await,
            Err(ConsoleEnd::DomainStopped)
        ));
        assert!(Shared::join(&shared, "dave", (80, 24)).is_none());
    }

    #[tokio::test]
    async fn control_passes_to_the_longest_watching_viewer() {
        let shared = console();
        let a = Shared::join(&shared, "alice", (80, 24)).expect("open");
        let mut b = Shared::join(&shared, "bob", (80, 24)).expect("open");
        let c = Shared::join(&shared, "carol", (80, 24)).expect("open");
        assert!(a.control_view().you && !b.control_view().you);
        assert!(matches!(
            b.write(b"ls").await,
            Err(NotTyped::NotInControl(Some(name))) if name == "alice"
        ));
        drop(a);
        assert!(b.control_view().you, "{:?}", b.control_view());
        assert_eq!(c.control_view().holder.as_deref(), Some("bob"));
        assert_eq!(c.control_view().viewers, 2);
    }
}
