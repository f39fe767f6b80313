//! Building a Chef node search query from a request's selector.
//!
//! Selector values (roles, tags, environment) are single literal terms: made only of
//! letters, digits and `_ . - : @ =`, with the Lucene specials among them escaped, so
//! `web OR *:*` is refused rather than widening the search. (Servers differ in how
//! they decode other characters — goiardi URL-decodes a query twice, turning `+` into
//! a space — so no other character can be escaped safely everywhere.) The free `query`
//! terms are query syntax by design: they are kept inside their own parentheses, ANDed
//! with everything else, and refused when they could close those parentheses.

use vesemir_model::deployment::Selector;

/// Characters with a meaning in Lucene's query syntax, escaped with a backslash.
const SPECIAL: &[char] = &['-', ':'];

const MAX_VALUE_BYTES: usize = 128;
const MAX_QUERY_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("{field} value {value:?} must be 1 to {MAX_VALUE_BYTES} letters, digits or _ . - : @ =")]
    Unsafe { field: &'static str, value: String },
    #[error("query {0:?} is not valid: {1}")]
    Malformed(String, &'static str),
    #[error("the search has no terms: give roles, tags, an environment or a query, or set the cluster's base query")]
    Empty,
}

/// Escapes one value as a literal term.
pub fn escape(field: &'static str, value: &str) -> Result<String, QueryError> {
    let unsafe_value = || QueryError::Unsafe { field, value: value.to_owned() };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '@' | '=');
    if value.is_empty() || value.len() > MAX_VALUE_BYTES || !value.chars().all(allowed) {
        return Err(unsafe_value());
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if SPECIAL.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(out)
}

/// Refuses free query text that could escape the parentheses it is put in: unbalanced
/// parentheses or quotes, a trailing escape, control characters.
pub fn check_free_query(query: &str) -> Result<(), QueryError> {
    let bad = |why| Err(QueryError::Malformed(query.to_owned(), why));
    if query.trim().is_empty() || query.len() > MAX_QUERY_BYTES {
        return bad("it must be 1 to 1024 characters");
    }
    if query.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in query.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                if depth == 0 {
                    return bad("a parenthesis closes that was never opened");
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    if escaped {
        return bad("it ends with a backslash");
    }
    if quoted {
        return bad("a quote is never closed");
    }
    if depth != 0 {
        return bad("a parenthesis is never closed");
    }
    Ok(())
}

/// Checks a selector on its own (before a cluster's base query is known).
pub fn validate(selector: &Selector) -> Result<(), QueryError> {
    match build(None, selector) {
        Ok(_) | Err(QueryError::Empty) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The whole query: the cluster's base terms (operator text), then the selector's.
pub fn build(base: Option<&str>, selector: &Selector) -> Result<String, QueryError> {
    let mut terms = Vec::new();
    if let Some(base) = base.filter(|b| !b.trim().is_empty()) {
        terms.push(format!("({base})"));
    }
    for role in &selector.roles {
        terms.push(format!("roles:{}", escape("roles", role)?));
    }
    for tag in &selector.tags {
        terms.push(format!("tags:{}", escape("tags", tag)?));
    }
    if let Some(environment) = &selector.environment {
        terms.push(format!("chef_environment:{}", escape("environment", environment)?));
    }
    if let Some(query) = &selector.query {
        check_free_query(query)?;
        terms.push(format!("({query})"));
    }
    if terms.is_empty() {
        return Err(QueryError::Empty);
    }
    Ok(terms.join(" AND "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(roles: &[&str], tags: &[&str], environment: Option<&str>, query: Option<&str>) -> Selector {
        Selector {
            roles: roles.iter().map(|s| (*s).to_owned()).collect(),
            tags: tags.iter().map(|s| (*s).to_owned()).collect(),
            environment: environment.map(str::to_owned),
            query: query.map(str::to_owned),
        }
    }

    #[test]
    fn selector_terms_are_anded_after_the_base_query() {
        let q = build(Some("chef_environment:production"), &selector(&["payments-api"], &["blue"], None, None));
        assert_eq!(q.unwrap(), r"(chef_environment:production) AND roles:payments\-api AND tags:blue");
    }

    #[test]
    fn a_hostile_value_is_refused_not_widening_the_search() {
        for hostile in ["web OR *:*", "prod) OR (*:*", "*", "a+b", "50%", "x y", "a/b", "\"q\""] {
            let err = build(None, &selector(&[hostile], &[], None, None)).unwrap_err();
            assert!(matches!(err, QueryError::Unsafe { field: "roles", .. }), "{hostile}: {err}");
        }
        assert_eq!(escape("tags", "team:blue-green").unwrap(), r"team\:blue\-green");
    }

    #[test]
    fn free_query_text_cannot_leave_its_parentheses() {
        for bad in ["x) OR (*:*", "x OR *:*)", "(x", "\"x", "x\\", "a\u{0}b", ""] {
            assert!(check_free_query(bad).is_err(), "{bad:?}");
        }
        for ok in ["platform:ubuntu", "(a OR b) AND c", "name:\"x)\"", r"name:a\)"] {
            assert!(check_free_query(ok).is_ok(), "{ok:?}");
        }
        let q = build(Some("role:base"), &selector(&[], &[], None, Some("a OR *:*"))).unwrap();
        assert_eq!(q, "(role:base) AND (a OR *:*)", "free terms only ever narrow the base query");
    }

    #[test]
    fn control_characters_and_empty_searches_are_refused() {
        assert!(matches!(escape("tags", "a\nb"), Err(QueryError::Unsafe { .. })));
        assert!(matches!(escape("tags", ""), Err(QueryError::Unsafe { .. })));
        assert_eq!(build(None, &Selector::default()), Err(QueryError::Empty));
    }
}
