//! Statistics for the cohort view: quantiles, and a mean with its 95% confidence interval.

use crate::assessment;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanCi {
    pub n: u32,
    pub mean: f64,
    /// The 95% confidence interval (Student's t); equal to the mean when
    /// n = 1.
    pub low: f64,
    pub high: f64,
}

/// The q-quantile of sorted values by linear interpolation between order
/// statistics (Hyndman & Fan type 7, PostgreSQL's `percentile_cont`).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * q;
            let (lo, frac) = (h.floor() as usize, h - h.floor());
            sorted[lo] + frac * (sorted[(lo + 1).min(n - 1)] - sorted[lo])
        }
    }
}

/// Mean with a 95% confidence interval from Student's t.
pub fn mean_ci(values: &[f64]) -> Option<MeanCi> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let half = match assessment::sample_sd(values) {
        Some(sd) => t_975(n as u32 - 1) * sd / (n as f64).sqrt(),
        None => 0.0,
    };
    Some(MeanCi {
        n: n as u32,
        mean,
        low: mean - half,
        high: mean + half,
    })
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom: the
/// standard table to 30, then the Cornish-Fisher expansion about the normal
/// quantile (within 0.001 of the table beyond 30).
pub fn t_975(df: u32) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df as usize - 1],
        _ => {
            let z: f64 = 1.959_964;
            let v = f64::from(df);
            z + (z.powi(3) + z) / (4.0 * v)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        }
    }
}
