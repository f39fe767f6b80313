//! What the benchmarks measure with: percentiles, and the machine's CPU time.

/// The value at fraction `p` (0 to 1) of `sorted`, nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Busy CPU seconds of the whole machine so far (every process, both ends of every
/// connection), from `/proc/stat`: user, nice, system, irq, softirq and steal.
pub fn machine_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| cpu.get(i)).sum::<f64>() / 100.0
}
