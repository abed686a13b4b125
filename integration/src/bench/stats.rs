//! Summaries of latency samples.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let pick = |q: f64| if ms.is_empty() { f64::NAN } else { ms[((ms.len() - 1) as f64 * q).round() as usize] };
        Summary {
            n: ms.len(),
            median_ms: pick(0.5),
            p90_ms: pick(0.9),
            p95_ms: pick(0.95),
            p99_ms: pick(0.99),
            min_ms: pick(0.0),
            max_ms: pick(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_series() {
        let samples: Vec<Duration> = (1..=101).map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!((s.n, s.median_ms, s.min_ms, s.max_ms), (101, 51.0, 1.0, 101.0));
        assert_eq!(s.p90_ms, 91.0);
    }
}
