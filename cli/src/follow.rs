//! `--follow`: a deployment's events as they happen, over Server-Sent Events, resuming
//! with `Last-Event-ID` after a dropped connection so no line is lost or repeated.

use crate::api::{Api, ApiError};
use crate::board::{Board, Screen};
use crate::render;
use chrono::Utc;
use std::io::IsTerminal;
use std::time::Duration;
use vesemir_model::deployment::{Deployment, LogLine};
use vesemir_model::event::Event;

/// How often the live block is redrawn when nothing happens (its times move on).
const REDRAW: Duration = Duration::from_millis(250);

/// Reconnections in a row before giving up.
const MAX_RECONNECTS: u32 = 30;

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) id: Option<String>,
    pub(crate) kind: String,
    pub(crate) data: String,
}

/// Splits an SSE byte stream into events (fields per the HTML living standard: `id`,
/// `event`, `data`; comments and unknown fields ignored).
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    event: SseEvent,
}

impl SseParser {
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.event.data.is_empty() || self.event.id.is_some() {
                    events.push(std::mem::take(&mut self.event));
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.event.id = Some(value.to_owned()),
                "event" => self.event.kind = value.to_owned(),
                "data" => {
                    if !self.event.data.is_empty() {
                        self.event.data.push('\n');
                    }
                    self.event.data.push_str(value);
                }
                _ => {}
            }
        }
        events
    }
}

/// Follows until the deployment's final state; returns the deployment as it ended.
/// On a terminal (and without `--json`), a live block is redrawn below the lines.
pub(crate) async fn follow(api: &Api, id: &str, host: Option<&str>, as_json: bool) -> Result<Deployment, ApiError> {
    let mut live = if !as_json && std::io::stdout().is_terminal() {
        Some((Board::new(&api.deployment(id).await?), Screen::default()))
    } else {
        None
    };
    let mut last: Option<String> = None;
    let mut reconnects = 0;
    let mut redraw = tokio::time::interval(REDRAW);
    loop {
        let mut response = match api.events(id, last.as_deref()).await {
            Ok(response) => response,
            Err(e @ ApiError::Refused { .. }) => return Err(e),
            Err(e) => {
                reconnects += 1;
                if reconnects > MAX_RECONNECTS {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut parser = SseParser::default();
        loop {
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                _ = redraw.tick() => {
                    if let Some((board, screen)) = &mut live {
                        screen.draw(&[], &board.render(Utc::now()));
                    }
                    continue;
                }
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                // The connection ended or broke: resume from the last event seen.
                Ok(None) | Err(_) => break,
            };
            reconnects = 0;
            let mut shown = Vec::new();
            let mut finished = false;
            for event in parser.feed(&chunk) {
                if event.id.is_some() {
                    last.clone_from(&event.id);
                }
                let Ok(line) = serde_json::from_str::<LogLine>(&event.data) else { continue };
                if host.is_none_or(|h| line.host.as_deref() == Some(h)) {
                    shown.push(line.clone());
                }
                if let Some((board, _)) = &mut live {
                    board.apply(&line);
                }
                finished |= line.event.as_ref().is_some_and(Event::is_final);
            }
            match &mut live {
                Some((board, screen)) => {
                    let lines: Vec<String> = shown.iter().map(render::log_line).collect();
                    screen.draw(&lines, &board.render(Utc::now()));
                }
                None => shown.iter().for_each(|line| show(line, as_json)),
            }
            if finished {
                return api.deployment(id).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn show(line: &LogLine, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string(line).unwrap_or_default());
    } else {
        println!("{}", render::log_line(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_chunks_and_comments_ignored() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b": keep-alive\n\nid: 7\nevent: log\nda").is_empty());
        let events = parser.feed(b"ta: {\"seq\":7}\n\nid: 8\ndata: a\ndata: b\n\n");
        assert_eq!(
            events,
            [
                SseEvent { id: Some("7".into()), kind: "log".into(), data: "{\"seq\":7}".into() },
                SseEvent { id: Some("8".into()), kind: String::new(), data: "a\nb".into() },
            ]
        );
    }
}
