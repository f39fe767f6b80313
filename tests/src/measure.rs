//! What the benchmarks measure with: latencies and their percentiles, CPU time, and
//! psql for their set-up.

use std::process::Command;
use std::time::Instant;

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

/// CPU seconds (user and system) used so far by the live processes whose command
/// name is `comm` (as in `/proc/<pid>/comm`: `postgres`, `beam.smp`). A process that
/// ended since the last reading takes its time with it, so read around a steady load.
pub fn processes_cpu_seconds(comm: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| {
            stat.split_once(" (").and_then(|(_, rest)| rest.rsplit_once(')')).is_some_and(|(c, _)| c == comm)
        })
        .map(|stat| stat_cpu_seconds(&stat))
        .sum()
}

/// CPU seconds of this process: in a benchmark, its clients and whatever Vesemir
/// runs in it.
pub fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat").map(|stat| stat_cpu_seconds(&stat)).unwrap_or_default()
}

/// CPU seconds (user and system) process `pid` has used so far.
pub fn pid_cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|stat| stat_cpu_seconds(&stat)).unwrap_or_default()
}

/// utime + stime of one `/proc/<pid>/stat` line (fields 14 and 15, after the name,
/// which may itself hold spaces and parentheses).
fn stat_cpu_seconds(stat: &str) -> f64 {
    let Some((_, after_name)) = stat.rsplit_once(')') else { return 0.0 };
    after_name.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<f64>().ok()).sum::<f64>() / 100.0
}

/// Request latencies in milliseconds, timed one by one; `sorted` for percentiles.
#[derive(Debug, Default)]
pub struct Latencies(Vec<f64>);

impl Latencies {
    pub async fn time<T>(&mut self, request: impl std::future::Future<Output = T>) -> T {
        let t = Instant::now();
        let answer = request.await;
        self.0.push(t.elapsed().as_secs_f64() * 1000.0);
        answer
    }

    pub fn sorted(mut self) -> Vec<f64> {
        self.0.sort_by(f64::total_cmp);
        self.0
    }
}

/// Runs `sql` with psql against `database_url`, stopping at its first error.
pub fn psql(database_url: &str, sql: &str) -> anyhow::Result<()> {
    let status = Command::new("psql").args([database_url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]).status()?;
    anyhow::ensure!(status.success(), "psql failed ({status}) on: {sql}");
    Ok(())
}
