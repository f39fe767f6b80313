//! The live view of `--follow` on a terminal: log lines scroll, and below them a block
//! is redrawn in place: a bar of hosts done, the wave, the hosts in flight with their
//! step and time, and how many hosts are out of rotation.
//!
//! [`Board`] is the picture, built from the deployment and its events; [`Screen`]
//! draws it with two ANSI sequences (cursor up to the block's first line, erase to the
//! end of the screen), so nothing but a terminal that understands them is needed.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::io::Write;
use vesemir_model::deployment::{AdminState, Deployment, DeploymentState, HostState, LogLine};
use vesemir_model::event::Event;

/// Hosts in flight listed one per line; the rest are counted.
const MOST_LISTED: usize = 8;
const BAR_WIDTH: usize = 30;

#[derive(Debug, Clone)]
struct HostView {
    state: HostState,
    wave: i32,
    step: Option<String>,
    started: Option<DateTime<Utc>>,
    rotation: Option<AdminState>,
}

#[derive(Debug, Clone)]
pub(crate) struct Board {
    title: String,
    state: DeploymentState,
    hosts: BTreeMap<String, HostView>,
}

impl Board {
    pub(crate) fn new(d: &Deployment) -> Self {
        let hosts = d
            .hosts()
            .iter()
            .map(|h| {
                let view = HostView {
                    state: h.state,
                    wave: h.wave,
                    step: h.steps.last().map(|s| s.name.clone()),
                    started: h.started_at,
                    rotation: h.load_balancer,
                };
                (h.name.clone(), view)
            })
            .collect();
        Self { title: format!("{} {} to {}", d.service, d.version, d.cluster), state: d.state, hosts }
    }

    /// Takes in what a line says about a change.
    pub(crate) fn apply(&mut self, line: &LogLine) {
        match &line.event {
            Some(Event::State { state, .. }) => self.state = *state,
            Some(Event::Host { host, state, wave, load_balancer, .. }) => {
                let view = self.hosts.entry(host.clone()).or_insert_with(|| HostView {
                    state: *state,
                    wave: wave.unwrap_or(0),
                    step: None,
                    started: None,
                    rotation: None,
                });
                view.state = *state;
                if let Some(wave) = wave {
                    view.wave = *wave;
                }
                if *state == HostState::Running {
                    view.started = Some(line.at);
                    view.step = None;
                }
                if load_balancer.is_some() {
                    view.rotation = *load_balancer;
                }
            }
            Some(Event::Rotation { host, load_balancer }) => {
                if let Some(view) = self.hosts.get_mut(host) {
                    view.rotation = Some(*load_balancer);
                }
            }
            Some(Event::Step { host, step, .. }) => {
                if let Some(view) = self.hosts.get_mut(host) {
                    view.step = Some(step.clone());
                }
            }
            None => {}
        }
    }

    /// The block, one string per line, as of `now`.
    pub(crate) fn render(&self, now: DateTime<Utc>) -> Vec<String> {
        let total = self.hosts.len();
        let done = self.hosts.values().filter(|h| h.state.is_final()).count();
        let failed = self.hosts.values().filter(|h| h.state.is_failure()).count();
        let out =
            self.hosts.values().filter(|h| matches!(h.rotation, Some(AdminState::Drain | AdminState::Maint))).count();
        let running: Vec<(&String, &HostView)> =
            self.hosts.iter().filter(|(_, h)| h.state == HostState::Running).collect();
        let waves = self.hosts.values().map(|h| h.wave).max().map_or(0, |w| w + 1);
        let filled = (done * BAR_WIDTH).checked_div(total).unwrap_or(0);
        let mut status =
            format!("[{}{}] {done}/{total} hosts done", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled));
        if failed > 0 {
            status.push_str(&format!(", {failed} failed"));
        }
        if let Some(wave) = running.iter().map(|(_, h)| h.wave).min() {
            status.push_str(&format!(" · wave {} of {waves}", wave + 1));
        }
        status.push_str(&format!(" · {out} out of rotation"));
        let mut lines = vec![format!("── {} · {}", self.title, self.state), status];
        for (name, host) in running.iter().take(MOST_LISTED) {
            let elapsed = host.started.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
            let rotation = match host.rotation {
                Some(AdminState::Drain) => "draining",
                Some(AdminState::Maint) => "out of rotation",
                Some(AdminState::Ready) => "in rotation",
                None => "",
            };
            lines.push(format!(
                "  {name:<16} {:<14} {elapsed:>6.1} s  {rotation}",
                host.step.as_deref().unwrap_or("starting")
            ));
        }
        if running.len() > MOST_LISTED {
            lines.push(format!("  … and {} more in flight", running.len() - MOST_LISTED));
        }
        lines
    }
}

/// Draws log lines above a block that is redrawn in place.
#[derive(Debug, Default)]
pub(crate) struct Screen {
    /// Lines the block takes now: the next draw goes back up over them.
    drawn: usize,
}

impl Screen {
    /// Prints `lines` where the block was, then the block again.
    pub(crate) fn draw(&mut self, lines: &[String], block: &[String]) {
        let mut out = std::io::stdout().lock();
        let mut text = String::new();
        if self.drawn > 0 {
            // To the start of the block's first line, and erase from there down.
            text.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        for line in lines.iter().chain(block) {
            text.push_str(line);
            text.push('\n');
        }
        self.drawn = block.len();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn line(at: i64, event: Event) -> LogLine {
        LogLine {
            seq: at,
            host: None,
            stream: vesemir_model::deployment::LogStream::System,
            line: String::new(),
            at: DateTime::from_timestamp(at, 0).unwrap(),
            event: Some(event),
        }
    }

    fn started(host: &str, wave: i32, at: i64) -> LogLine {
        line(
            at,
            Event::Host {
                host: host.into(),
                state: HostState::Running,
                wave: Some(wave),
                error: None,
                load_balancer: None,
            },
        )
    }

    #[test]
    fn the_block_shows_hosts_done_the_wave_and_each_host_in_flight() {
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "id": "0190a6b0-0000-7000-8000-000000000000", "service": "web", "cluster": "prod", "version": "2.0",
            "state": "running", "requested_by": "ci", "cancelled_by": null, "retry_of": null, "attempt": 1,
            "created_at": "2026-11-30T10:00:00Z", "started_at": null, "finished_at": null, "error": null,
            "request": {"service": "web", "cluster": "prod", "version": "2.0"},
            "summary": {"total": 0, "pending": 0, "running": 0, "succeeded": 0, "failed": 0, "unreachable": 0, "skipped": 0},
        }))
        .unwrap();
        let mut board = Board::new(&deployment);
        board.apply(&started("a", 0, 100));
        board.apply(&line(101, Event::Rotation { host: "a".into(), load_balancer: AdminState::Maint }));
        board.apply(&line(
            102,
            Event::Step {
                host: "a".into(),
                step: "install".into(),
                position: 3,
                state: vesemir_model::deployment::StepState::Running,
                exit_code: None,
            },
        ));
        board.apply(&line(
            103,
            Event::Host {
                host: "b".into(),
                state: HostState::Succeeded,
                wave: Some(0),
                error: None,
                load_balancer: None,
            },
        ));
        board.apply(&started("c", 1, 103));
        board.apply(&line(
            104,
            Event::Host { host: "c".into(), state: HostState::Succeeded, wave: None, error: None, load_balancer: None },
        ));
        let block = board.render(DateTime::from_timestamp(104, 500_000_000).unwrap());
        assert_eq!(block[0], "── web 2.0 to prod · running");
        assert!(block[1].ends_with("2/3 hosts done · wave 1 of 2 · 1 out of rotation"), "{block:#?}");
        assert!(block[1].starts_with(&format!("[{}{}]", "#".repeat(20), "-".repeat(10))), "{block:#?}");
        assert_eq!(
            block[2].split_whitespace().collect::<Vec<_>>(),
            ["a", "install", "4.5", "s", "out", "of", "rotation"]
        );
        assert_eq!(block.len(), 3);
    }
}
