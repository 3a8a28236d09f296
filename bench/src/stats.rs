//! Order statistics for benchmark samples: medians across runs, percentiles
//! of latencies within a run.

/// Median, minimum and maximum of a set of runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Summarizes `xs`; `None` when it is empty. NaNs are ignored.
pub fn summarize(xs: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// The `p`-th percentile (0..=100) of `sorted` by the nearest-rank method:
/// the smallest sample such that at least p % of samples are <= it.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Sorts a copy of `xs` for [`percentile`].
pub fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// A lower bound for running jobs of `durations` with at most `slots` at a
/// time, whatever the order: no schedule beats the longest job, nor the
/// total work spread perfectly over every slot.
pub fn parallel_lower_bound(durations: &[f64], slots: usize) -> f64 {
    let longest = durations.iter().copied().fold(0.0, f64::max);
    let total: f64 = durations.iter().sum();
    longest.max(total / slots.max(1) as f64)
}

/// `a / b`, or NaN when `b` is zero.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

/// "median [min-max]" of one figure over runs, or "-" without runs.
pub fn median_range<R>(rs: &[&R], f: &dyn Fn(&R) -> f64) -> String {
    let v: Vec<f64> = rs.iter().map(|r| f(r)).collect();
    summarize(&v)
        .map(|s| {
            format!(
                "{} [{}-{}]",
                crate::common::f2(s.median),
                crate::common::f2(s.min),
                crate::common::f2(s.max)
            )
        })
        .unwrap_or_else(|| "-".into())
}

/// The median of one figure over runs, or "-" without runs.
pub fn median_only<R>(rs: &[&R], f: &dyn Fn(&R) -> f64) -> String {
    let v: Vec<f64> = rs.iter().map(|r| f(r)).collect();
    summarize(&v)
        .map(|s| crate::common::f2(s.median))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_runs() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN, 5.0]).unwrap().median, 5.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v = sorted(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn parallel_bound_is_the_longest_job_or_the_spread_work() {
        assert_eq!(parallel_lower_bound(&[1.0; 100], 100), 1.0);
        assert_eq!(parallel_lower_bound(&[1.0; 100], 10), 10.0);
        assert_eq!(parallel_lower_bound(&[3.0, 1.0, 1.0], 10), 3.0);
        assert_eq!(parallel_lower_bound(&[], 10), 0.0);
    }
}
