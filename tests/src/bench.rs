//! Figures for the benchmarks that time real round trips (`harness = false` benches).

use std::time::Duration;

/// The `p`-quantile (0.0 to 1.0) of `samples`, nearest rank; sorts them. Zero when there are
/// none.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let Some(last) = samples.len().checked_sub(1) else {
        return Duration::ZERO;
    };
    let at = (last as f64 * p).round() as usize;
    samples[at.min(last)]
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut samples: Vec<Duration> = [5, 1, 4, 2, 3].map(Duration::from_millis).to_vec();
        assert_eq!(percentile(&mut samples, 0.5), Duration::from_millis(3));
        assert_eq!(percentile(&mut samples, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&mut samples, 1.0), Duration::from_millis(5));
        assert_eq!(percentile(&mut [], 0.5), Duration::ZERO);
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
    }
}
