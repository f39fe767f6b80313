//! Text output for people: a status block with a host table, log lines, lists.

use chrono::SecondsFormat;
use std::fmt::Write;
use vesemir_model::api::DeploymentPage;
use vesemir_model::deployment::{Deployment, HostState, LogLine, LogStream};

pub(crate) fn progress(d: &Deployment) -> String {
    let sum = &d.summary;
    format!(
        "{}: {} of {} hosts done ({} succeeded, {} failed, {} unreachable, {} skipped){}",
        d.state,
        sum.succeeded + sum.failed + sum.unreachable + sum.skipped,
        sum.total,
        sum.succeeded,
        sum.failed,
        sum.unreachable,
        sum.skipped,
        current_wave(d).map(|(wave, waves)| format!(", wave {wave} of {waves}")).unwrap_or_default(),
    )
}

/// The wave in flight (1-based) and how many there are, while hosts are running.
fn current_wave(d: &Deployment) -> Option<(i32, i32)> {
    let hosts = d.hosts.as_deref()?;
    let waves = hosts.iter().map(|h| h.wave).max()? + 1;
    let running = hosts.iter().filter(|h| h.state == HostState::Running).map(|h| h.wave).min()?;
    Some((running + 1, waves))
}

pub(crate) fn status(d: &Deployment) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "deployment {}", d.id);
    let _ = writeln!(out, "  {} {} to {}", d.service, d.version, d.cluster);
    let _ = writeln!(out, "  {}", progress(d));
    let _ = writeln!(
        out,
        "  requested by {} at {}",
        d.requested_by,
        d.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    );
    if let Some(error) = &d.error {
        let _ = writeln!(out, "  error: {error}");
    }
    let hosts = d.hosts.as_deref().unwrap_or_default();
    if hosts.is_empty() {
        return out;
    }
    let rows: Vec<[String; 5]> = hosts
        .iter()
        .map(|h| {
            let last_step = h.steps.last().map(|step| step.name.clone());
            [
                h.name.clone(),
                h.address.clone(),
                (h.wave + 1).to_string(),
                h.state.to_string(),
                h.error.clone().or(last_step).unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["HOST", "ADDRESS", "WAVE", "STATE", "DETAIL"];
    let widths: Vec<usize> =
        (0..4).map(|i| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    let mut line = |cells: [&str; 5]| {
        let _ = writeln!(
            out,
            "  {:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    out
}

pub(crate) fn log_line(l: &LogLine) -> String {
    let host = l.host.as_deref().unwrap_or("-");
    let stream = match l.stream {
        LogStream::Stderr => "!",
        LogStream::System => "*",
        LogStream::Stdout => " ",
    };
    format!("{:>6} {host} {stream} {}", l.seq, l.line)
}

pub(crate) fn list(page: &DeploymentPage) -> String {
    let mut out = String::new();
    for d in &page.deployments {
        let _ = writeln!(
            out,
            "{}  {:<10}  {} {} to {}  {}",
            d.id,
            d.state.as_str(),
            d.service,
            d.version,
            d.cluster,
            d.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        );
    }
    if let Some(cursor) = page.next_cursor {
        let _ = writeln!(out, "more: --cursor {cursor}");
    }
    out
}
