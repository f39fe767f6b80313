//! Log lines: appended in batches, numbered without gaps, read after a sequence number.

use super::{Store, StoreError, parse};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;
use vesemir_model::deployment::{LogLine, LogStream};
use vesemir_model::event::Event;

/// The channel on which appended lines are announced (payload: the deployment id).
pub const EVENTS_CHANNEL: &str = "vesemir_events";

/// Longest line stored; longer ones are cut and marked.
const MAX_LINE_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLogLine {
    pub host: Option<String>,
    pub stream: LogStream,
    pub line: String,
    pub at: DateTime<Utc>,
    /// For a line about a change: the change, as structured data.
    pub event: Option<Event>,
}

/// PostgreSQL text cannot hold NUL, and one runaway line must not bloat a batch.
fn clean(line: &str) -> String {
    let mut line = line.replace('\0', "\u{FFFD}");
    if line.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str(" [line truncated]");
    }
    line
}

/// Appends lines inside the caller's transaction and announces them on
/// [`EVENTS_CHANNEL`] (delivered when the transaction commits). The deployment row's
/// counter hands out the sequence numbers; its row lock orders concurrent batches, so
/// lines become visible in sequence order and a reader after N never misses a later
/// commit.
pub(super) async fn append(conn: &mut PgConnection, id: Uuid, lines: &[NewLogLine]) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let hosts: Vec<Option<&str>> = lines.iter().map(|l| l.host.as_deref()).collect();
    let streams: Vec<&str> = lines.iter().map(|l| l.stream.as_str()).collect();
    let texts: Vec<String> = lines.iter().map(|l| clean(&l.line)).collect();
    let ats: Vec<DateTime<Utc>> = lines.iter().map(|l| l.at).collect();
    let events: Vec<Option<Json<&Event>>> = lines.iter().map(|l| l.event.as_ref().map(Json)).collect();
    sqlx::query(
        "WITH counter AS ( \
             UPDATE deployments SET log_seq = log_seq + $2 WHERE id = $1 RETURNING log_seq), \
         inserted AS ( \
             INSERT INTO log_lines (deployment_id, seq, host, stream, line, at, event) \
             SELECT $1, counter.log_seq - $2 + t.ord, t.host, t.stream, t.line, t.at, t.event \
             FROM counter, unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::jsonb[]) \
                 WITH ORDINALITY AS t(host, stream, line, at, event, ord) \
             RETURNING 1) \
         SELECT pg_notify($8, $1::text) FROM (SELECT count(*) FROM inserted) AS n",
    )
    .bind(id)
    .bind(lines.len() as i64)
    .bind(&hosts)
    .bind(&streams)
    .bind(&texts)
    .bind(&ats)
    .bind(&events)
    .bind(EVENTS_CHANNEL)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    /// Appends a batch in one statement (see [`append`]).
    pub async fn append_logs(&self, id: Uuid, lines: &[NewLogLine]) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        append(&mut conn, id, lines).await
    }

    /// The sequence number of the deployment's last line (0 when it has none).
    pub async fn logs_end(&self, id: Uuid) -> Result<i64, StoreError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT log_seq FROM deployments WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        Ok(row.map_or(0, |(seq,)| seq))
    }

    /// Lines with a sequence number above `after`, oldest first.
    pub async fn logs(&self, id: Uuid, after: i64, host: Option<&str>, limit: i64) -> Result<Vec<LogLine>, StoreError> {
        type Row = (i64, Option<String>, String, String, DateTime<Utc>, Option<Json<Event>>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, host, stream, line, at, event FROM log_lines \
             WHERE deployment_id = $1 AND seq > $2 AND ($3::text IS NULL OR host = $3) \
             ORDER BY seq LIMIT $4",
        )
        .bind(id)
        .bind(after)
        .bind(host)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(seq, host, stream, line, at, event)| {
                Ok(LogLine { seq, host, stream: parse(&stream)?, line, at, event: event.map(|e| e.0) })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_lose_nul_bytes_and_excess_length() {
        assert_eq!(clean("a\0b"), "a\u{FFFD}b");
        let long = "é".repeat(MAX_LINE_BYTES);
        let cut = clean(&long);
        assert!(cut.len() <= MAX_LINE_BYTES + 20);
        assert!(cut.ends_with("[line truncated]"));
    }
}
