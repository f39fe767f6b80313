//! Text output for people: a status block with a host table, log lines, lists.

use serde_json::Value;
use std::fmt::Write;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub(crate) fn progress(d: &Value) -> String {
    let sum = &d["summary"];
    format!(
        "{}: {} of {} hosts done ({} succeeded, {} failed, {} unreachable, {} skipped){}",
        s(&d["state"]),
        ["succeeded", "failed", "unreachable", "skipped"].iter().map(|k| sum[k].as_u64().unwrap_or(0)).sum::<u64>(),
        sum["total"].as_u64().unwrap_or(0),
        sum["succeeded"].as_u64().unwrap_or(0),
        sum["failed"].as_u64().unwrap_or(0),
        sum["unreachable"].as_u64().unwrap_or(0),
        sum["skipped"].as_u64().unwrap_or(0),
        current_wave(d).map(|(wave, waves)| format!(", wave {wave} of {waves}")).unwrap_or_default(),
    )
}

/// The wave in flight (1-based) and how many there are, while hosts are running.
fn current_wave(d: &Value) -> Option<(i64, i64)> {
    let hosts = d["hosts"].as_array()?;
    let waves = hosts.iter().filter_map(|h| h["wave"].as_i64()).max()? + 1;
    let running = hosts.iter().filter(|h| h["state"] == "running").filter_map(|h| h["wave"].as_i64()).min()?;
    Some((running + 1, waves))
}

pub(crate) fn status(d: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "deployment {}", s(&d["id"]));
    let _ = writeln!(out, "  {} {} to {}", s(&d["service"]), s(&d["version"]), s(&d["cluster"]));
    let _ = writeln!(out, "  {}", progress(d));
    let _ = writeln!(out, "  requested by {} at {}", s(&d["requested_by"]), s(&d["created_at"]));
    if let Some(error) = d["error"].as_str() {
        let _ = writeln!(out, "  error: {error}");
    }
    let hosts = d["hosts"].as_array().cloned().unwrap_or_default();
    if hosts.is_empty() {
        return out;
    }
    let rows: Vec<[String; 5]> = hosts
        .iter()
        .map(|h| {
            let last_step = h["steps"].as_array().and_then(|steps| steps.last()).map(|st| s(&st["name"]).to_owned());
            [
                s(&h["name"]).to_owned(),
                s(&h["address"]).to_owned(),
                (h["wave"].as_i64().unwrap_or(0) + 1).to_string(),
                s(&h["state"]).to_owned(),
                h["error"].as_str().map(str::to_owned).or(last_step).unwrap_or_default(),
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

pub(crate) fn log_line(l: &Value) -> String {
    let host = l["host"].as_str().unwrap_or("-");
    let stream = match s(&l["stream"]) {
        "stderr" => "!",
        "system" => "*",
        _ => " ",
    };
    format!("{:>6} {host} {stream} {}", l["seq"].as_i64().unwrap_or(0), s(&l["line"]))
}

pub(crate) fn list(page: &Value) -> String {
    let mut out = String::new();
    for d in page["deployments"].as_array().cloned().unwrap_or_default() {
        let _ = writeln!(
            out,
            "{}  {:<10}  {} {} to {}  {}",
            s(&d["id"]),
            s(&d["state"]),
            s(&d["service"]),
            s(&d["version"]),
            s(&d["cluster"]),
            s(&d["created_at"])
        );
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        let _ = writeln!(out, "more: --cursor {cursor}");
    }
    out
}
