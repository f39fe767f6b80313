//! Where a key is in a TOML document, so that a refusal of a value that parsed can
//! point at it as a parse error does.

use toml::de::{DeTable, DeValue};

/// A line and column in a document, counting from 1 (columns in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    fn of(text: &str, offset: usize) -> Self {
        let before = &text[..offset.min(text.len())];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self { line: before.matches('\n').count() + 1, column: before[line_start..].chars().count() + 1 }
    }
}

/// Where the dotted `key` (`clusters.sandbox.hosts.1.address`, array elements by
/// index) is written in `text`; for a key left to its default, where its nearest
/// written parent is. None only when the document does not parse.
pub(super) fn locate(text: &str, key: &str) -> Option<Position> {
    let document = DeTable::parse(text).ok()?;
    let mut table = Some(document.get_ref());
    let mut array: Option<&[toml::Spanned<DeValue<'_>>]> = None;
    let mut found = None;
    for segment in key.split('.') {
        let value = if let Some(t) = table {
            t.iter().find(|(k, _)| k.get_ref().as_ref() == segment).map(|(k, v)| {
                found = Some(k.span().start);
                v
            })
        } else {
            array.and_then(|items| segment.parse::<usize>().ok().and_then(|i| items.get(i))).inspect(|v| {
                found = Some(v.span().start);
            })
        };
        let Some(value) = value else { break };
        (table, array) = match value.get_ref() {
            DeValue::Table(inner) => (Some(inner), None),
            DeValue::Array(items) => (None, Some(&items[..])),
            _ => (None, None),
        };
    }
    found.map(|offset| Position::of(text, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENT: &str = "[clusters.sandbox]\nhosts = [\n  { name = \"a\", address = \"x\" },\n  { name = \"b\", address = \"-y\" },\n]\n\n[services.demo]\nhealth = { url = \"u\" }\n";

    #[test]
    fn keys_are_found_in_tables_inline_tables_and_arrays() {
        let at = |key| locate(DOCUMENT, key).map(|p| (p.line, p.column));
        assert_eq!(at("clusters.sandbox.hosts"), Some((2, 1)));
        assert_eq!(at("clusters.sandbox.hosts.1.address"), Some((4, 17)));
        assert_eq!(at("services.demo.health.url"), Some((8, 12)));
    }

    #[test]
    fn a_defaulted_key_points_at_its_nearest_written_parent() {
        assert_eq!(locate(DOCUMENT, "services.demo.playbook").map(|p| p.line), Some(7));
        assert_eq!(locate(DOCUMENT, "worker.lease_seconds"), None);
    }
}
