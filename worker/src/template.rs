//! `{{name}}` templates for playbook commands and URLs.
//!
//! Two kinds of variables, and the difference is the point:
//! - *operator text* (the service's `vars` in the configuration: commands, paths) is
//!   inserted as written, and may itself reference other variables;
//! - *values* (the version, the request's `vars.*`, the host's name and address) come
//!   from users or from discovery and are never trusted: in a shell command each is
//!   single-quoted, in a URL each must be made of URL-safe characters.

use std::collections::BTreeMap;

/// How deep operator text may nest references to other operator text.
const MAX_DEPTH: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown variable {{{{{0}}}}}")]
    Unknown(String),
    #[error("unclosed {{{{ in template")]
    Unclosed,
    #[error("variables nest more than {MAX_DEPTH} levels deep (a cycle?) at {{{{{0}}}}}")]
    TooDeep(String),
    #[error("value of {{{{{0}}}}} cannot be used in a URL")]
    UnsafeInUrl(String),
    #[error("{{{{{0}}}}} is inside quotes in the template: remove them, values are quoted for you")]
    InsideQuotes(String),
    #[error("value of {{{{{0}}}}} contains a NUL byte")]
    Nul(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Shell,
    Url,
}

#[derive(Debug, Clone, Default)]
pub struct Variables {
    operator: BTreeMap<String, String>,
    values: BTreeMap<String, String>,
}

impl Variables {
    pub fn new(operator: BTreeMap<String, String>) -> Self {
        Self { operator, values: BTreeMap::new() }
    }

    pub fn value(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.values.insert(name.into(), value.into());
        self
    }

    pub fn render(&self, template: &str, context: Context) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(template.len());
        self.render_into(&mut out, template, context, Quote::None, 0)?;
        Ok(out)
    }

    /// Renders `template` onto `out`, starting in shell quoting state `quote`;
    /// returns the state after it (operator text may open a quote another closes).
    fn render_into(
        &self,
        out: &mut String,
        template: &str,
        context: Context,
        mut quote: Quote,
        depth: usize,
    ) -> Result<Quote, TemplateError> {
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            quote = quote.after(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
            let name = after[..end].trim();
            if let Some(text) = self.operator.get(name) {
                if depth >= MAX_DEPTH {
                    return Err(TemplateError::TooDeep(name.to_owned()));
                }
                quote = self.render_into(out, text, context, quote, depth + 1)?;
            } else if let Some(value) = self.values.get(name) {
                // A quoted value inside the operator's own quotes would be unquoted.
                if context == Context::Shell && quote != Quote::None {
                    return Err(TemplateError::InsideQuotes(name.to_owned()));
                }
                out.push_str(&escape(name, value, context)?);
            } else {
                return Err(TemplateError::Unknown(name.to_owned()));
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(quote.after(rest))
    }
}

/// Where a POSIX shell word is, as far as quoting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

impl Quote {
    fn after(mut self, text: &str) -> Self {
        let mut escaped = false;
        for c in text.chars() {
            self = match (self, c) {
                (Quote::Single, '\'') => Quote::None,
                (Quote::Single, _) => Quote::Single,
                (_, _) if escaped => {
                    escaped = false;
                    self
                }
                (_, '\\') => {
                    escaped = true;
                    self
                }
                (Quote::None, '\'') => Quote::Single,
                (Quote::None, '"') => Quote::Double,
                (Quote::Double, '"') => Quote::None,
                (q, _) => q,
            };
        }
        self
    }
}

fn escape(name: &str, value: &str, context: Context) -> Result<String, TemplateError> {
    if value.contains('\0') {
        return Err(TemplateError::Nul(name.to_owned()));
    }
    match context {
        Context::Shell => Ok(shell_quote(value)),
        Context::Url => {
            let safe = value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b':' | b'[' | b']'));
            if safe { Ok(value.to_owned()) } else { Err(TemplateError::UnsafeInUrl(name.to_owned())) }
        }
    }
}

/// POSIX single quoting: inside '…' nothing is special, and a ' is written as '\''.
pub fn shell_quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        let operator = BTreeMap::from([
            ("app_dir".to_owned(), "/opt/app".to_owned()),
            ("install_command".to_owned(), "{{app_dir}}/bin/install {{version}}".to_owned()),
            ("loop".to_owned(), "{{loop}}".to_owned()),
        ]);
        Variables::new(operator)
            .value("version", "1.2.3")
            .value("vars.note", "it's $(touch /tmp/x); `id`")
            .value("host.address", "127.0.20.1")
    }

    #[test]
    fn operator_text_is_inserted_as_written_and_values_are_quoted() {
        let cmd = vars().render("{{install_command}}", Context::Shell).unwrap();
        assert_eq!(cmd, "/opt/app/bin/install '1.2.3'");
    }

    #[test]
    fn a_hostile_value_stays_one_inert_word() {
        let cmd = vars().render("echo {{vars.note}}", Context::Shell).unwrap();
        assert_eq!(cmd, r#"echo 'it'\''s $(touch /tmp/x); `id`'"#);
    }

    #[test]
    fn urls_take_only_url_safe_values() {
        let url = vars().render("http://{{host.address}}:8080/health", Context::Url).unwrap();
        assert_eq!(url, "http://127.0.20.1:8080/health");
        let err = vars().render("http://x/{{vars.note}}", Context::Url).unwrap_err();
        assert_eq!(err, TemplateError::UnsafeInUrl("vars.note".to_owned()));
    }

    #[test]
    fn unknown_unclosed_and_cyclic_templates_are_errors() {
        assert_eq!(vars().render("{{nope}}", Context::Shell), Err(TemplateError::Unknown("nope".into())));
        assert_eq!(vars().render("x {{version", Context::Shell), Err(TemplateError::Unclosed));
        assert!(matches!(vars().render("{{loop}}", Context::Shell), Err(TemplateError::TooDeep(_))));
    }

    #[test]
    fn a_value_inside_the_operators_quotes_is_refused() {
        for template in ["echo \"{{version}}\"", "echo 'x {{version}}'", "echo \"a\\\" {{version}}\""] {
            let err = vars().render(template, Context::Shell).unwrap_err();
            assert_eq!(err, TemplateError::InsideQuotes("version".into()), "{template}");
        }
        let nested = Variables::new(BTreeMap::from([("open".to_owned(), "echo \"".to_owned())])).value("v", "x");
        assert!(nested.render("{{open}}{{v}}\"", Context::Shell).is_err());
        assert_eq!(vars().render("echo \"a\" {{version}} 'b'", Context::Shell).unwrap(), "echo \"a\" '1.2.3' 'b'");
        assert_eq!(vars().render("echo \\' {{version}}", Context::Shell).unwrap(), "echo \\' '1.2.3'");
    }

    #[test]
    fn nul_bytes_are_refused() {
        let v = Variables::default().value("v", "a\0b");
        assert_eq!(v.render("{{v}}", Context::Shell), Err(TemplateError::Nul("v".into())));
    }
}
