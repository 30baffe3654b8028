//! Summaries of timing samples. The bench prints figures and compares them
//! with the targets; it never fails on a slow figure (timings on a shared
//! 2-core machine are evidence, not a gate).

use std::time::Duration;

/// Timing samples of one measurement, in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    ms: Vec<f64>,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.ms.push(d.as_secs_f64() * 1000.0);
    }

    pub fn push_ms(&mut self, ms: f64) {
        self.ms.push(ms);
    }

    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: Samples) {
        self.ms.extend(other.ms);
    }

    pub fn len(&self) -> usize {
        self.ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ms.is_empty()
    }

    /// The `q` quantile (0..=1), nearest rank; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let mut sorted = self.ms.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    /// `n=… median … p95 … p99 … max …` in milliseconds.
    pub fn line(&self) -> String {
        format!(
            "n={:<5} median {:>8.3} ms  p95 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
            self.len(),
            self.median(),
            self.quantile(0.95),
            self.quantile(0.99),
            self.quantile(1.0),
        )
    }
}

/// `figure / target` as a ratio, with a word on which side of it we are.
pub fn versus(figure: f64, target: f64, unit: &str) -> String {
    let verdict = if figure <= target { "within" } else { "OVER" };
    format!(
        "{figure:.2} {unit} vs target {target} {unit}: {:.2}x ({verdict})",
        figure / target
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.push_ms(f64::from(ms));
        }
        assert_eq!(s.median(), 50.0);
        assert_eq!(s.quantile(0.99), 99.0);
        assert_eq!(s.quantile(1.0), 100.0);
        assert_eq!(Samples::default().median(), 0.0);
    }
}
