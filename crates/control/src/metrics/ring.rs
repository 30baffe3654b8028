//! Compact history of one host's or VM's figures: a fine ring (the last
//! hour at the sampling step) and a coarse ring (the last day, each point
//! the average of the fine points of its step).
//!
//! Each value is kept as a bfloat16: two bytes, the range of an `f32` and
//! a relative error under 0.4 %, plenty for a chart, so a point of six
//! series takes 12 bytes. Slots are numbered from the Unix epoch (slot n
//! covers `[n·step, (n+1)·step)` seconds), so every host's and VM's rings
//! line up and a fleet total is a sum per slot.

use half::bf16;
use overvisor_model::metrics::{Point, Range, SERIES};

type Stored = [bf16; SERIES];

/// "No value": a gap in the chart.
const GAP: Stored = [bf16::NAN; SERIES];

fn pack(p: &Point) -> Stored {
    p.values.map(|v| v.map_or(bf16::NAN, bf16::from_f64))
}

fn unpack(s: &Stored) -> Point {
    Point {
        values: s.map(|v| (!v.is_nan()).then(|| v.to_f64())),
    }
}

/// How long the rings are and how their slots relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The sampling step, in seconds.
    pub step_secs: u64,
    /// Fine slots: one hour.
    pub fine_len: usize,
    /// Fine slots per coarse slot.
    pub factor: u64,
    /// Coarse slots: one day.
    pub coarse_len: usize,
}

impl Shape {
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;
    /// The coarse step is ten minutes, or the fine step if that is longer.
    const COARSE_STEP: u64 = 600;

    pub fn new(step_secs: u64) -> Self {
        let step_secs = step_secs.max(1);
        let coarse = Self::COARSE_STEP.max(step_secs);
        Self {
            step_secs,
            fine_len: Self::HOUR.div_ceil(step_secs) as usize,
            factor: coarse / step_secs,
            coarse_len: Self::DAY.div_ceil(step_secs * (coarse / step_secs)) as usize,
        }
    }

    /// The fine slot `unix_secs` falls in.
    pub fn slot(&self, unix_secs: u64) -> u64 {
        unix_secs / self.step_secs
    }

    /// The step of `range`'s points, in seconds.
    pub fn range_step(&self, range: Range) -> u64 {
        match range {
            Range::Hour => self.step_secs,
            Range::Day => self.step_secs * self.factor,
        }
    }

    /// Bytes one [`Series`] holds on the heap (for the memory budget).
    pub fn series_bytes(&self) -> usize {
        (self.fine_len + self.coarse_len) * std::mem::size_of::<Stored>()
    }
}

/// The last `len` slots of a series.
#[derive(Debug, Clone)]
struct Ring {
    slots: Box<[Stored]>,
    newest: Option<u64>,
}

impl Ring {
    fn new(len: usize) -> Self {
        Self {
            slots: vec![GAP; len.max(1)].into_boxed_slice(),
            newest: None,
        }
    }

    fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    fn index(&self, slot: u64) -> usize {
        (slot % self.len()) as usize
    }

    /// Stores `point` at `slot`; slots skipped since the newest become
    /// gaps. A slot older than the ring holds is dropped.
    fn put(&mut self, slot: u64, point: &Point) {
        let len = self.len();
        match self.newest {
            Some(newest) if slot + len <= newest => return,
            Some(newest) if slot > newest => {
                let skipped = (slot - newest - 1).min(len);
                for s in slot - skipped..slot {
                    let i = self.index(s);
                    self.slots[i] = GAP;
                }
                self.newest = Some(slot);
            }
            Some(_) => {}
            None => self.newest = Some(slot),
        }
        let i = self.index(slot);
        self.slots[i] = pack(point);
    }

    fn get(&self, slot: u64) -> Option<Point> {
        let newest = self.newest?;
        if slot > newest || slot + self.len() <= newest {
            return None;
        }
        let p = unpack(&self.slots[self.index(slot)]);
        (!p.is_empty()).then_some(p)
    }
}

/// Sums of the fine points of the coarse slot being filled.
#[derive(Debug, Clone, Default)]
struct Average {
    slot: Option<u64>,
    sums: [f32; SERIES],
    counts: [u16; SERIES],
}

impl Average {
    fn add(&mut self, p: &Point) {
        for (i, v) in p.values.iter().enumerate() {
            if let Some(v) = v {
                self.sums[i] += *v as f32;
                self.counts[i] = self.counts[i].saturating_add(1);
            }
        }
    }

    fn point(&self) -> Point {
        let mut p = Point::default();
        for i in 0..SERIES {
            if self.counts[i] > 0 {
                p.values[i] = Some(f64::from(self.sums[i]) / f64::from(self.counts[i]));
            }
        }
        p
    }
}

/// One host's or VM's history.
#[derive(Debug, Clone)]
pub struct Series {
    fine: Ring,
    coarse: Ring,
    filling: Average,
    /// The first fine slot ever recorded: the history starts there.
    first: Option<u64>,
}

impl Series {
    pub fn new(shape: &Shape) -> Self {
        Self {
            fine: Ring::new(shape.fine_len),
            coarse: Ring::new(shape.coarse_len),
            filling: Average::default(),
            first: None,
        }
    }

    /// Records the point of fine `slot`. Points arrive in time order; one
    /// for a slot already passed only corrects the fine ring.
    pub fn put(&mut self, shape: &Shape, slot: u64, point: &Point) {
        self.first = Some(self.first.map_or(slot, |f| f.min(slot)));
        self.fine.put(slot, point);
        let coarse = slot / shape.factor;
        match self.filling.slot {
            Some(filling) if coarse < filling => return,
            Some(filling) if coarse > filling => {
                self.coarse.put(filling, &self.filling.point());
                self.filling = Average::default();
                self.filling.slot = Some(coarse);
            }
            Some(_) => {}
            None => self.filling.slot = Some(coarse),
        }
        self.filling.add(point);
    }

    /// The point of `range`'s slot `slot` (fine or coarse numbering); the
    /// coarse slot being filled answers with its average so far.
    pub fn get(&self, range: Range, slot: u64) -> Option<Point> {
        match range {
            Range::Hour => self.fine.get(slot),
            Range::Day if self.filling.slot == Some(slot) => {
                Some(self.filling.point()).filter(|p| !p.is_empty())
            }
            Range::Day => self.coarse.get(slot),
        }
    }

    /// The oldest slot of `range` (fine or coarse numbering) this series
    /// may hold anything for.
    pub fn oldest(&self, shape: &Shape, range: Range) -> Option<u64> {
        let first = self.first?;
        Some(match range {
            Range::Hour => {
                let newest = self.fine.newest?;
                first.max(newest.saturating_sub(self.fine.len() - 1))
            }
            Range::Day => {
                let newest = self.filling.slot?;
                (first / shape.factor).max(newest.saturating_sub(self.coarse.len() - 1))
            }
        })
    }
}

/// The slots of `range` up to the one holding `now_secs`, oldest first:
/// at most the range's length.
pub fn window_slots(shape: &Shape, range: Range, now_secs: u64) -> std::ops::RangeInclusive<u64> {
    let step = shape.range_step(range);
    let len = match range {
        Range::Hour => shape.fine_len,
        Range::Day => shape.coarse_len,
    } as u64;
    let last = now_secs / step;
    last.saturating_sub(len - 1)..=last
}

#[cfg(test)]
mod tests {
    use super::*;
    use overvisor_model::metrics::Series as S;

    fn point(cpu: f64) -> Point {
        let mut p = Point::default();
        p.set(S::CpuPercent, Some(cpu));
        p
    }

    #[test]
    fn shape_of_the_default_step() {
        let s = Shape::new(30);
        assert_eq!((s.fine_len, s.factor, s.coarse_len), (120, 20, 144));
        assert_eq!(s.range_step(Range::Day), 600);
        // 264 points of 12 bytes.
        assert_eq!(s.series_bytes(), 3168);
        let fast = Shape::new(2);
        assert_eq!(
            (fast.fine_len, fast.factor, fast.coarse_len),
            (1800, 300, 144)
        );
        // A step longer than the coarse one: the day is at that step.
        let slow = Shape::new(900);
        assert_eq!((slow.fine_len, slow.factor, slow.coarse_len), (4, 1, 96));
    }

    #[test]
    fn values_keep_three_significant_digits_and_gaps() {
        let mut p = Point::default();
        p.set(S::CpuPercent, Some(57.3));
        p.set(S::MemoryUsedBytes, Some(17_179_869_184.0));
        let back = unpack(&pack(&p));
        let cpu = back.get(S::CpuPercent).expect("cpu");
        let mem = back.get(S::MemoryUsedBytes).expect("memory");
        assert!((cpu - 57.3).abs() / 57.3 < 0.004, "{cpu}");
        assert!(
            (mem - 17_179_869_184.0).abs() / 17_179_869_184.0 < 0.004,
            "{mem}"
        );
        assert_eq!(back.get(S::NetRxBytesPerSec), None);
    }

    #[test]
    fn the_fine_ring_keeps_the_last_hour_with_gaps_for_missed_slots() {
        let shape = Shape::new(30);
        let mut s = Series::new(&shape);
        s.put(&shape, 1000, &point(1.0));
        s.put(&shape, 1001, &point(2.0));
        // Three slots missed (the host was down).
        s.put(&shape, 1005, &point(5.0));
        assert_eq!(s.get(Range::Hour, 1001), Some(point(2.0)));
        assert_eq!(s.get(Range::Hour, 1003), None);
        assert_eq!(s.get(Range::Hour, 1005), Some(point(5.0)));
        assert_eq!(s.get(Range::Hour, 1006), None);
        assert_eq!(s.oldest(&shape, Range::Hour), Some(1000));
        // A whole hour later: everything before is gone.
        s.put(&shape, 1005 + 120, &point(9.0));
        assert_eq!(s.oldest(&shape, Range::Hour), Some(1006));
        assert_eq!(s.get(Range::Hour, 1005), None);
        assert_eq!(s.get(Range::Hour, 1006), None);
        assert_eq!(s.get(Range::Hour, 1125), Some(point(9.0)));
        // Too old to keep.
        s.put(&shape, 1000, &point(3.0));
        assert_eq!(s.get(Range::Hour, 1000), None);
    }

    #[test]
    fn the_coarse_ring_holds_averages() {
        let shape = Shape::new(30);
        let mut s = Series::new(&shape);
        // Coarse slot 3000 = fine slots 60000..60020.
        for (i, slot) in (60_000..60_020).enumerate() {
            s.put(&shape, slot, &point(i as f64));
        }
        // Still filling: the average so far.
        assert_eq!(s.get(Range::Day, 3000), Some(point(9.5)));
        s.put(&shape, 60_020, &point(100.0));
        assert_eq!(s.get(Range::Day, 3000), Some(point(9.5)));
        assert_eq!(s.get(Range::Day, 3001), Some(point(100.0)));
        assert_eq!(s.oldest(&shape, Range::Day), Some(3000));
        let w = window_slots(&shape, Range::Day, 60_020 * 30);
        assert_eq!(w, (3001 - 143)..=3001);
    }
}
