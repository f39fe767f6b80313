//! Text output for people: a status block with a host table, log lines, lists.

use chrono::SecondsFormat;
use std::fmt::Write;
use vesemir_model::api::DeploymentPage;
use vesemir_model::deployment::{Deployment, HostState, LogLine, LogStream};
use vesemir_model::inventory::Inventory;

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
    if let Some(of) = d.rollback_of {
        let _ = writeln!(out, "  rollback of deployment {of}");
    }
    if let Some(by) = d.rolled_back_by {
        let _ = writeln!(out, "  rolled back by deployment {by}");
    }
    if let Some(errors) = &d.lb_errors {
        let _ = writeln!(out, "  load balancers: {errors} on the backend during this deployment");
        let seen: Vec<String> = d
            .hosts()
            .iter()
            .filter_map(|h| h.lb_errors.filter(|c| c.total() > 0).map(|c| format!("{} ({c})", h.name)))
            .collect();
        if !seen.is_empty() {
            let _ = writeln!(out, "  errors in the window of {}", seen.join("; "));
        }
    }
    let hosts = d.hosts.as_deref().unwrap_or_default();
    if hosts.is_empty() {
        return out;
    }
    // A rollback's hosts each go to their own version: then it gets a column.
    let versions = hosts.iter().any(|h| h.version != d.version);
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let last_step = h.steps.last().map(|step| step.name.clone());
            let mut row = vec![h.name.clone(), h.address.clone()];
            if versions {
                row.push(h.version.clone());
            }
            row.extend([
                (h.wave + 1).to_string(),
                h.state.to_string(),
                h.error.clone().or(last_step).unwrap_or_default(),
            ]);
            row
        })
        .collect();
    let header: &[&str] = if versions {
        &["HOST", "ADDRESS", "VERSION", "WAVE", "STATE", "DETAIL"]
    } else {
        &["HOST", "ADDRESS", "WAVE", "STATE", "DETAIL"]
    };
    table(&mut out, header, &rows);
    out
}

/// Rows under a header, indented, every column but the last padded to its widest cell.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::from(" ");
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(&format!(" {cell}"));
            } else {
                line.push_str(&format!(" {cell:w$} ", w = widths[i]));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// What runs where: each host's version, the deployment that put it there, how the
/// last deployment left it; hosts off the target's version are marked.
pub(crate) fn inventory(view: &Inventory) -> String {
    let mut out = String::new();
    let version = view.version.as_deref().unwrap_or("none");
    let _ = writeln!(out, "{} on {}: version {version}", view.service, view.cluster);
    // What the hosts said when asked gets a column once any was asked.
    let asked = view.hosts.iter().any(|h| h.verified_by.is_some());
    let rows: Vec<Vec<String>> = view
        .hosts
        .iter()
        .map(|h| {
            let at = h.deployed_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
            let mut row = vec![
                h.name.clone(),
                h.address.clone(),
                format!("{}{}", h.version.as_deref().unwrap_or("-"), if h.drift { " (drift)" } else { "" }),
            ];
            if asked {
                let said = h.reported_version.as_deref().unwrap_or(if h.verified_by.is_some() { "?" } else { "-" });
                row.push(format!("{said}{}", if h.disagrees { " (disagrees)" } else { "" }));
            }
            row.extend([
                at.unwrap_or_else(|| "-".to_owned()),
                h.deployment_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
                h.last_state.map_or("-", |s| s.as_str()).to_owned(),
                h.load_balancer.map_or("-", |s| s.as_str()).to_owned(),
            ]);
            row
        })
        .collect();
    let header: &[&str] = if asked {
        &["HOST", "ADDRESS", "VERSION", "REPORTED", "SINCE", "DEPLOYMENT", "LAST", "LB"]
    } else {
        &["HOST", "ADDRESS", "VERSION", "SINCE", "DEPLOYMENT", "LAST", "LB"]
    };
    table(&mut out, header, &rows);
    let drifted: Vec<&str> = view.drifted().map(|h| h.name.as_str()).collect();
    if !drifted.is_empty() {
        let _ = writeln!(out, "  drift: {} not on {version}", drifted.join(", "));
    }
    for h in view.disagreeing() {
        let said = h.reported_version.as_deref().unwrap_or("nothing it could be asked");
        let _ = writeln!(
            out,
            "  disagrees: {} reports {said}, recorded {}",
            h.name,
            h.version.as_deref().unwrap_or("none")
        );
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
