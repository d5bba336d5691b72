//! A lock-free log-linear histogram of latencies in microseconds: every connection task records
//! into the same one, so recording is one atomic add, and quantiles are within 1/32 (3.1 %).

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below this are exact; above, each power of two is split into this many buckets.
const LINEAR: u64 = 32;
const SUB_BITS: u32 = LINEAR.trailing_zeros();
const BUCKETS: usize = (LINEAR + (64 - SUB_BITS as u64) * LINEAR) as usize;

pub struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    pub fn record(&self, micros: u64) {
        self.counts[index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The smallest bucket bound at or below which a fraction `q` of the values lie (the upper
    /// bound of the bucket, so never an underestimate); `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let target = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count.load(Ordering::Relaxed);
            if seen >= target {
                return Some(upper_bound(i));
            }
        }
        unreachable!("the cumulative count reaches the total")
    }
}

fn index(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let sub = (value >> (exponent - SUB_BITS)) - LINEAR;
    (LINEAR + u64::from(exponent - SUB_BITS) * LINEAR + sub) as usize
}

fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let shift = (index - LINEAR) / LINEAR;
    let sub = (index - LINEAR) % LINEAR;
    let bound = (u128::from(LINEAR + sub + 1) << shift) - 1;
    u64::try_from(bound).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_bounds_it_within_three_percent() {
        for value in (0..5_000).chain([1 << 20, 123_456_789, u64::MAX / 3, u64::MAX]) {
            let bound = upper_bound(index(value));
            assert!(bound >= value, "{value} above its bucket's bound {bound}");
            assert!(
                (bound - value) as f64 <= value as f64 / 32.0 + 1.0,
                "{value} vs {bound}"
            );
        }
    }

    #[test]
    fn quantiles_of_a_uniform_spread() {
        let histogram = Histogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        for value in 1..=10_000 {
            histogram.record(value);
        }
        assert_eq!(histogram.count(), 10_000);
        let near = |q: f64, expected: f64| {
            let got = histogram.quantile(q).unwrap() as f64;
            assert!(
                got >= expected && got <= expected * 1.032,
                "q{q}: {got} vs {expected}"
            );
        };
        near(0.5, 5_000.0);
        near(0.99, 9_900.0);
        near(0.999, 9_990.0);
        near(1.0, 10_000.0);
    }
}
