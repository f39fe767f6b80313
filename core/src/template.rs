//! `{{name}}` templates: the commands a playbook runs on hosts, health-check URLs and
//! load-balancer server names.
//!
//! Two kinds of variables, and the difference is the point:
//! - *operator text* (the service's `vars` in the configuration: commands, paths) is
//!   inserted as written, and may itself reference other variables;
//! - *values* (the version, the request's `vars.*`, the host's name and address) come
//!   from users or from discovery and are never trusted.
//!
//! **A value never becomes text a shell parses.** Each value reaches the command as
//! an environment variable (`VESEMIR_VERSION`, `VESEMIR_VAR_<name>`, …) that Vesemir
//! sets itself, and its placeholder renders as a reference to that variable: `"${…}"`
//! in a plain word, `${…}` inside double quotes or a here-document. The shell expands
//! a reference exactly once and never parses what it expands to, so a value cannot
//! close a quote, start a substitution or end the command, whatever bytes it holds.
//!
//! What a reference cannot protect against is a place where the shell, or a command,
//! parses the expanded text again (`eval`, `sh -c`, arithmetic) or where the
//! reference would not be expanded at all (single quotes, a quoted here-document).
//! Every template is lexed as a POSIX (and bash) shell script when the configuration
//! loads, and a placeholder in any such place is refused, with its position.

use std::collections::BTreeMap;
use std::fmt;
use vesemir_model::deployment::{is_address, is_host_name, is_identifier};

/// How deep operator text may nest references to other operator text.
const MAX_DEPTH: usize = 4;

/// The values every template may use, besides the request's `vars.<name>`.
pub const VALUES: [&str; 6] = ["version", "service", "cluster", "deployment_id", "host.name", "host.address"];

/// The environment variable that carries a value to a command: `VESEMIR_VERSION`,
/// `VESEMIR_HOST_NAME`, `VESEMIR_VAR_<name>` (a var's `.` and `-` become `_`).
pub fn env_name(value: &str) -> String {
    match value.strip_prefix("vars.") {
        Some(var) => format!("VESEMIR_VAR_{}", var.replace(['.', '-'], "_")),
        None => format!("VESEMIR_{}", value.replace('.', "_").to_ascii_uppercase()),
    }
}

fn is_value_name(name: &str) -> bool {
    VALUES.contains(&name) || name.strip_prefix("vars.").is_some_and(is_identifier)
}

/// Where a placeholder is: a line and column (from 1, in characters) of the template
/// as written, or of the operator variable it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The operator variable holding the placeholder; `None`: the template itself.
    pub source: Option<String>,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)?;
        match &self.source {
            Some(source) => write!(f, " of {source}"),
            None => Ok(()),
        }
    }
}

/// Why a placeholder cannot stand where it is in a shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    AfterBackslash,
    AfterDollar,
    SingleQuotes,
    AnsiCQuotes,
    TranslatedString,
    Backquotes,
    ParameterExpansion,
    Arithmetic,
    Comment,
    QuotedHereDocument,
    HereDocumentSubstitution,
    HereDocumentDelimiter,
    CommandName,
    /// The argument of a command that runs its arguments as a command or as code.
    RunsCode(String),
    /// Given to a command that runs another program, before that program is named.
    BeforeProgram(String),
    /// Piped into a command that runs its input as code.
    PipedInto(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::AfterBackslash => f.write_str("right after a backslash, which would escape the value"),
            Refusal::AfterDollar => f.write_str("right after a $, which would make the value part of an expansion"),
            Refusal::SingleQuotes => f.write_str("inside single quotes, where nothing is expanded"),
            Refusal::AnsiCQuotes => f.write_str("inside $'…', where nothing is expanded"),
            Refusal::TranslatedString => f.write_str("inside a $\"…\" translated string"),
            Refusal::Backquotes => f.write_str("inside backquotes (write $(…) instead)"),
            Refusal::ParameterExpansion => f.write_str("inside a ${…} parameter expansion"),
            Refusal::Arithmetic => f.write_str("inside arithmetic, which the shell evaluates as code"),
            Refusal::Comment => f.write_str("inside a comment"),
            Refusal::QuotedHereDocument => {
                f.write_str("in a here-document whose delimiter is quoted, where nothing is expanded")
            }
            Refusal::HereDocumentSubstitution => f.write_str("inside a substitution in a here-document"),
            Refusal::HereDocumentDelimiter => f.write_str("in a here-document's delimiter"),
            Refusal::CommandName => f.write_str("where a command name goes, so the value would be run"),
            Refusal::RunsCode(command) => {
                write!(f, "an argument of `{command}`, which runs its arguments as a command or as code")
            }
            Refusal::BeforeProgram(command) => write!(
                f,
                "given to `{command}` before the program it runs, so it could be taken for that program \
                 (name the program first, by its path)"
            ),
            Refusal::PipedInto(command) => write!(f, "piped into `{command}`, which runs its input as code"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown variable {{{{{name}}}}} at {at}")]
    Unknown { name: String, at: Position },
    #[error("unclosed {{{{ at {at}")]
    Unclosed { at: Position },
    #[error("variables nest more than {MAX_DEPTH} levels deep (a cycle?) at {{{{{name}}}}}, {at}")]
    TooDeep { name: String, at: Position },
    #[error("{{{{{name}}}}} at {at} is {why}")]
    Refused { name: String, at: Position, why: Refusal },
    #[error("{{{{{name}}}}} at {at} is before the URL's host: only the path, query and host may hold values")]
    UrlPrefix { name: String, at: Position },
    #[error("a URL template must start with http:// or https://")]
    UrlScheme,
    #[error("value of {{{{{0}}}}} cannot be part of a URL's host")]
    UnsafeInHost(String),
    #[error("{0:?} is not a valid HAProxy server name (letters, digits and ._:- only)")]
    ServerName(String),
    #[error("no value for {{{{{0}}}}}")]
    Missing(String),
    #[error("{{{{{0}}}}} and {{{{{1}}}}} would share the environment variable {2}")]
    SharedEnv(String, String, String),
}

/// The values of one host's run, by name (`version`, `host.name`, `vars.<name>`, …).
pub type Values = BTreeMap<String, String>;

/// A template with every operator reference expanded: characters, and the values'
/// placeholders among them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    C(char),
    /// A value's placeholder: an index into `slots`.
    V(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    name: String,
    at: Position,
}

#[derive(Debug)]
struct Expanded {
    toks: Vec<Tok>,
    slots: Vec<Slot>,
}

impl Expanded {
    fn new(template: &str, operator: &BTreeMap<String, String>) -> Result<Self, TemplateError> {
        let mut expanded = Self { toks: Vec::with_capacity(template.len()), slots: Vec::new() };
        expanded.push(template, None, operator, 0)?;
        Ok(expanded)
    }

    fn push(
        &mut self,
        text: &str,
        source: Option<&str>,
        operator: &BTreeMap<String, String>,
        depth: usize,
    ) -> Result<(), TemplateError> {
        let at = |offset: usize| {
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            Position { source: source.map(str::to_owned), line, column }
        };
        let mut rest = 0;
        while let Some(found) = text[rest..].find("{{") {
            let start = rest + found;
            self.toks.extend(text[rest..start].chars().map(Tok::C));
            let after = start + 2;
            let end = text[after..].find("}}").ok_or_else(|| TemplateError::Unclosed { at: at(start) })? + after;
            let name = text[after..end].trim();
            if let Some(inner) = operator.get(name) {
                if depth >= MAX_DEPTH {
                    return Err(TemplateError::TooDeep { name: name.to_owned(), at: at(start) });
                }
                self.push(inner, Some(name), operator, depth + 1)?;
            } else if is_value_name(name) {
                self.toks.push(Tok::V(self.slots.len()));
                self.slots.push(Slot { name: name.to_owned(), at: at(start) });
            } else {
                return Err(TemplateError::Unknown { name: name.to_owned(), at: at(start) });
            }
            rest = end + 2;
        }
        self.toks.extend(text[rest..].chars().map(Tok::C));
        Ok(())
    }

    fn refused(&self, slot: usize, why: Refusal) -> TemplateError {
        let Slot { name, at } = self.slots[slot].clone();
        TemplateError::Refused { name, at, why }
    }
}

/// A shell command template, checked: every placeholder stands where a reference
/// expands it as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A value: `quoted` when the shell is already inside double quotes (or a
    /// here-document) where the reference stands.
    Value {
        name: String,
        quoted: bool,
    },
}

/// A rendered command: the script for `sh -c` and the environment it needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShellCommand {
    pub script: String,
    /// One variable per value the script references, by name.
    pub env: Vec<(String, String)>,
}

impl ShellTemplate {
    /// Expands the operator's text and lexes the result as a shell script; refuses
    /// any placeholder the shell could interpret or would not expand.
    pub fn parse(template: &str, operator: &BTreeMap<String, String>) -> Result<Self, TemplateError> {
        let expanded = Expanded::new(template, operator)?;
        let placements = lex::placements(&expanded)?;
        let mut parts = Vec::new();
        let mut text = String::new();
        for tok in &expanded.toks {
            match tok {
                Tok::C(c) => text.push(*c),
                Tok::V(slot) => {
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    let quoted = placements[*slot] == lex::Placement::Quoted;
                    parts.push(Part::Value { name: expanded.slots[*slot].name.clone(), quoted });
                }
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self { parts })
    }

    pub fn render(&self, values: &Values) -> Result<ShellCommand, TemplateError> {
        let mut command = ShellCommand::default();
        let mut sources: BTreeMap<String, &str> = BTreeMap::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => command.script.push_str(text),
                Part::Value { name, quoted } => {
                    let value = values.get(name).ok_or_else(|| TemplateError::Missing(name.clone()))?;
                    let env = env_name(name);
                    match sources.get(&env) {
                        Some(other) if other != name => {
                            return Err(TemplateError::SharedEnv((*other).to_owned(), name.clone(), env));
                        }
                        Some(_) => {}
                        None => {
                            sources.insert(env.clone(), name);
                            command.env.push((env.clone(), value.clone()));
                        }
                    }
                    if *quoted {
                        command.script.push_str(&format!("${{{env}}}"));
                    } else {
                        command.script.push_str(&format!("\"${{{env}}}\""));
                    }
                }
            }
        }
        Ok(command)
    }
}

/// A health-check URL template: values may stand in the host (host names and
/// addresses only) and after it, where each is percent-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    parts: Vec<UrlPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlPart {
    Text(String),
    Host(String),
    Encoded(String),
}

impl UrlTemplate {
    pub fn parse(template: &str, operator: &BTreeMap<String, String>) -> Result<Self, TemplateError> {
        let expanded = Expanded::new(template, operator)?;
        let mut parts = Vec::new();
        let mut text = String::new();
        // Before "://", then the authority, then the rest.
        let mut region = 0;
        for tok in &expanded.toks {
            match tok {
                Tok::C(c) => {
                    text.push(*c);
                    if region == 0 && text.ends_with("://") {
                        region = 1;
                    } else if region == 1 && matches!(c, '/' | '?' | '#') {
                        region = 2;
                    }
                }
                Tok::V(slot) => {
                    let Slot { name, at } = expanded.slots[*slot].clone();
                    parts.push(UrlPart::Text(std::mem::take(&mut text)));
                    parts.push(match region {
                        0 => return Err(TemplateError::UrlPrefix { name, at }),
                        1 => UrlPart::Host(name),
                        _ => UrlPart::Encoded(name),
                    });
                }
            }
        }
        parts.push(UrlPart::Text(text));
        match parts.first() {
            Some(UrlPart::Text(start)) if start.starts_with("http://") || start.starts_with("https://") => {}
            _ => return Err(TemplateError::UrlScheme),
        }
        Ok(Self { parts })
    }

    pub fn render(&self, values: &Values) -> Result<String, TemplateError> {
        let mut url = String::new();
        for part in &self.parts {
            match part {
                UrlPart::Text(text) => url.push_str(text),
                UrlPart::Host(name) => {
                    let value = values.get(name).ok_or_else(|| TemplateError::Missing(name.clone()))?;
                    // An address or a host name; brackets for an IPv6 address.
                    let bare = value.trim_start_matches('[').trim_end_matches(']');
                    if !(is_address(bare) || is_host_name(value)) {
                        return Err(TemplateError::UnsafeInHost(name.clone()));
                    }
                    url.push_str(value);
                }
                UrlPart::Encoded(name) => {
                    let value = values.get(name).ok_or_else(|| TemplateError::Missing(name.clone()))?;
                    percent_encode(value, &mut url);
                }
            }
        }
        Ok(url)
    }
}

/// Every byte but RFC 3986's unreserved characters, as %XX.
fn percent_encode(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// A load balancer's server name template: the result must be an HAProxy name, which
/// cannot smuggle a second Runtime API command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    expanded: Vec<Tok>,
    names: Vec<String>,
}

impl NameTemplate {
    pub fn parse(template: &str, operator: &BTreeMap<String, String>) -> Result<Self, TemplateError> {
        let expanded = Expanded::new(template, operator)?;
        Ok(Self { expanded: expanded.toks, names: expanded.slots.into_iter().map(|s| s.name).collect() })
    }

    pub fn render(&self, values: &Values) -> Result<String, TemplateError> {
        let mut name = String::new();
        for tok in &self.expanded {
            match tok {
                Tok::C(c) => name.push(*c),
                Tok::V(slot) => {
                    let value = &self.names[*slot];
                    name.push_str(values.get(value).ok_or_else(|| TemplateError::Missing(value.clone()))?);
                }
            }
        }
        if crate::config::is_haproxy_name(&name) { Ok(name) } else { Err(TemplateError::ServerName(name)) }
    }
}

/// POSIX single quoting, for text Vesemir itself hands to a shell (an argument vector
/// for a login shell): inside '…' nothing is special, and a ' is written as '\''.
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

mod lex;

#[cfg(test)]
mod tests;
