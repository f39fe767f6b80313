//! A lexer for the shell commands operators write, just deep enough to say where
//! each placeholder stands: which quotes, substitutions and here-documents enclose
//! it, and which command it is an argument of. It follows POSIX `sh` and bash's
//! additions (`$'…'`, `$"…"`, `[[`, `((`), and it errs on the side of refusing.

use super::{Expanded, Refusal, TemplateError, Tok};

/// How a value's reference is written where the placeholder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// In a plain word: the reference is double-quoted.
    Plain,
    /// Already inside double quotes or an unquoted here-document.
    Quoted,
}

/// Commands whose arguments become a command line or code, or are evaluated.
const RUNS_CODE: &[&str] = &[
    "eval", "trap", "source", ".", "alias", "declare", "typeset", "local", "find", "parallel", "flock", "chroot",
    "watch", "su", "runuser", "ssh", "fish", "csh", "tcsh",
];

/// Commands that run a program (or a script) named by their first argument that is
/// not an option; what comes after it is that program's business.
const RUNS_FIRST_ARGUMENT: &[&str] = &[
    "exec", "command", "builtin", "nohup", "setsid", "time", "stdbuf", "busybox", "sh", "bash", "dash", "ksh", "zsh",
    "ash", "mksh",
];

/// Commands that run a program named by a later argument, after options that may
/// take arguments of their own: the program must be named with a path (a `/`)
/// before any value, or the value could be taken for it.
const RUNS_PATH_ARGUMENT: &[&str] =
    &["sudo", "doas", "env", "nice", "ionice", "timeout", "xargs", "chrt", "taskset", "unshare", "nsenter"];

/// Commands that evaluate their arguments as arithmetic (and, in bash, arithmetic
/// runs `$(…)` found in array subscripts of the value).
const ARITHMETIC: &[&str] = &["let", "[[", "(("];

/// Commands that run what they read on standard input.
const RUNS_INPUT: &[&str] = &[
    "sh", "bash", "dash", "ksh", "zsh", "ash", "mksh", "busybox", "fish", "csh", "tcsh", "xargs", "parallel", "source",
    ".", "ssh", "python", "python3", "perl", "ruby", "node", "php",
];

/// Words after which a command name is still to come.
const LEADING: &[&str] = &["if", "then", "else", "elif", "do", "while", "until", "!", "{", "time"];

pub(super) fn placements(expanded: &Expanded) -> Result<Vec<Placement>, TemplateError> {
    let mut lexer =
        Lexer { expanded, i: 0, placed: vec![Placement::Plain; expanded.slots.len()], commands: Vec::new() };
    lexer.commands(false)?;
    Ok(lexer.placed)
}

/// The simple command being read.
#[derive(Debug, Default)]
struct Command {
    /// Words so far, not counting assignments and leading reserved words.
    words: usize,
    /// The command's name, when it is plain text.
    name: Option<String>,
    /// The current word's text without its quotes, and whether one is being read.
    word: String,
    in_word: bool,
    /// Whether the current word is plain text (no expansion, no value).
    literal: bool,
    /// The next word is the target of a redirection.
    redirect_target: bool,
    /// A value in this command or an earlier one of its pipeline.
    value_in_pipeline: Option<usize>,
    /// The command runs another program, not named yet.
    awaiting_program: Option<Wrapper>,
}

#[derive(Debug, Clone)]
struct Wrapper {
    name: String,
    needs_path: bool,
}

impl Wrapper {
    fn of(name: &str) -> Option<Self> {
        let needs_path = if RUNS_PATH_ARGUMENT.contains(&name) {
            true
        } else if RUNS_FIRST_ARGUMENT.contains(&name) {
            false
        } else {
            return None;
        };
        Some(Self { name: name.to_owned(), needs_path })
    }

    /// `env NAME=value program`, `sudo NAME=value program`: the environment.
    fn takes_assignments(&self) -> bool {
        matches!(self.name.as_str(), "env" | "sudo")
    }

    fn names_program(&self, word: &str) -> bool {
        !word.starts_with('-') && !is_assignment(word) && (!self.needs_path || word.contains('/'))
    }
}

/// The name a command is known by: `/usr/bin/sudo` is `sudo`.
fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

#[derive(Debug)]
struct HereDocument {
    delimiter: String,
    quoted: bool,
    strip_tabs: bool,
}

struct Lexer<'a> {
    expanded: &'a Expanded,
    i: usize,
    placed: Vec<Placement>,
    /// One per nesting level: the top level, then each `$(…)` inside.
    commands: Vec<Command>,
}

fn is_assignment(word: &str) -> bool {
    let Some((name, _)) = word.split_once('=') else { return false };
    let name = name.strip_suffix('+').unwrap_or(name);
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Lexer<'_> {
    fn next(&mut self) -> Option<Tok> {
        let tok = self.expanded.toks.get(self.i).cloned();
        self.i += 1;
        tok
    }

    fn peek(&self) -> Option<&Tok> {
        self.expanded.toks.get(self.i)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::C(c)) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn refuse<T>(&self, slot: usize, why: Refusal) -> Result<T, TemplateError> {
        Err(self.expanded.refused(slot, why))
    }

    fn command(&mut self) -> &mut Command {
        if self.commands.is_empty() {
            self.commands.push(Command::default());
        }
        let last = self.commands.len() - 1;
        &mut self.commands[last]
    }

    /// A list of commands, up to the end or (in a `$(…)`) its closing parenthesis.
    fn commands(&mut self, substitution: bool) -> Result<(), TemplateError> {
        self.commands.push(Command::default());
        let mut here_documents = Vec::new();
        let mut subshells = 0usize;
        while let Some(tok) = self.next() {
            let c = match tok {
                Tok::V(slot) => {
                    self.value(slot, Placement::Plain)?;
                    continue;
                }
                Tok::C(c) => c,
            };
            match c {
                ' ' | '\t' => self.end_word()?,
                '\n' => {
                    self.end_word()?;
                    self.end_command(false);
                    for document in here_documents.drain(..) {
                        self.here_document(&document)?;
                    }
                }
                ';' | '&' => {
                    self.end_word()?;
                    self.end_command(false);
                }
                '|' => {
                    self.end_word()?;
                    let pipe = !self.eat('|');
                    self.end_command(pipe);
                }
                '(' => {
                    self.end_word()?;
                    if self.command().words == 0 && self.eat('(') {
                        self.arithmetic(2)?;
                    } else {
                        subshells += 1;
                        self.end_command(false);
                    }
                }
                ')' => {
                    self.end_word()?;
                    if subshells == 0 && substitution {
                        self.commands.pop();
                        return Ok(());
                    }
                    subshells = subshells.saturating_sub(1);
                    self.end_command(false);
                }
                '<' | '>' => {
                    // A file descriptor number before the operator is not a word.
                    let command = self.command();
                    if command.in_word && command.literal && command.word.bytes().all(|b| b.is_ascii_digit()) {
                        command.in_word = false;
                        command.word.clear();
                    }
                    self.end_word()?;
                    if c == '<' && self.eat('<') {
                        if !self.eat('<') {
                            here_documents.push(self.here_document_header()?);
                            continue;
                        }
                    } else {
                        let _ = self.eat('&') || self.eat('>') || self.eat('|');
                    }
                    self.command().redirect_target = true;
                }
                '#' if !self.command().in_word => self.comment()?,
                _ => self.word_char(c)?,
            }
        }
        self.end_word()?;
        for document in &here_documents {
            self.here_document(document)?;
        }
        self.commands.pop();
        Ok(())
    }

    fn start_word(&mut self) {
        let command = self.command();
        if !command.in_word {
            command.in_word = true;
            command.literal = true;
        }
    }

    fn push_char(&mut self, c: char) {
        self.start_word();
        self.command().word.push(c);
    }

    fn not_literal(&mut self) {
        self.start_word();
        self.command().literal = false;
    }

    fn word_char(&mut self, c: char) -> Result<(), TemplateError> {
        match c {
            '\\' => match self.next() {
                Some(Tok::V(slot)) => self.refuse(slot, Refusal::AfterBackslash),
                Some(Tok::C('\n')) | None => Ok(()),
                Some(Tok::C(escaped)) => {
                    self.push_char(escaped);
                    Ok(())
                }
            },
            '\'' => {
                self.start_word();
                self.single_quoted()
            }
            '"' => {
                self.start_word();
                self.double_quoted(None)
            }
            '`' => {
                self.not_literal();
                self.up_to('`', Refusal::Backquotes)
            }
            '$' => {
                self.not_literal();
                self.dollar(false)
            }
            _ => {
                self.push_char(c);
                Ok(())
            }
        }
    }

    /// A value's placeholder where the shell would expand a reference.
    fn value(&mut self, slot: usize, placement: Placement) -> Result<(), TemplateError> {
        let command = self.command();
        if !command.redirect_target {
            if command.words == 0 && !is_assignment(&command.word) {
                return self.refuse(slot, Refusal::CommandName);
            }
            if let Some(wrapper) = &command.awaiting_program
                && !(wrapper.takes_assignments() && is_assignment(&command.word))
            {
                let name = wrapper.name.clone();
                return self.refuse(slot, Refusal::BeforeProgram(name));
            }
            if let Some(name) = command.name.clone() {
                if ARITHMETIC.contains(&name.as_str()) {
                    return self.refuse(slot, Refusal::Arithmetic);
                }
                if RUNS_CODE.contains(&name.as_str()) {
                    return self.refuse(slot, Refusal::RunsCode(name));
                }
            }
        }
        self.not_literal();
        let command = self.command();
        command.value_in_pipeline.get_or_insert(slot);
        self.placed[slot] = placement;
        Ok(())
    }

    fn end_word(&mut self) -> Result<(), TemplateError> {
        let command = self.command();
        if !command.in_word {
            return Ok(());
        }
        command.in_word = false;
        let word = std::mem::take(&mut command.word);
        if command.redirect_target {
            command.redirect_target = false;
            return Ok(());
        }
        if command.words == 0 {
            if command.literal && LEADING.contains(&word.as_str()) {
                return Ok(());
            }
            if is_assignment(&word) {
                return Ok(());
            }
            command.name = command.literal.then(|| basename(&word).to_owned());
            command.awaiting_program = command.name.as_deref().and_then(Wrapper::of);
            if let (Some(name), Some(slot)) = (&command.name, command.value_in_pipeline)
                && RUNS_INPUT.contains(&name.as_str())
            {
                let name = name.clone();
                return self.refuse(slot, Refusal::PipedInto(name));
            }
        } else if let Some(wrapper) = &command.awaiting_program
            && command.literal
            && wrapper.names_program(&word)
        {
            // What follows is the wrapped program's, checked as its own command's.
            let program = basename(&word).to_owned();
            command.awaiting_program = Wrapper::of(&program);
            command.name = Some(program);
        }
        self.command().words += 1;
        Ok(())
    }

    /// Ends a simple command; after a `|` the next one is in the same pipeline.
    fn end_command(&mut self, pipe: bool) {
        let command = self.command();
        let carried = if pipe { command.value_in_pipeline } else { None };
        *command = Command { value_in_pipeline: carried, ..Command::default() };
    }

    fn single_quoted(&mut self) -> Result<(), TemplateError> {
        while let Some(tok) = self.next() {
            match tok {
                Tok::C('\'') => return Ok(()),
                Tok::C(c) => self.command().word.push(c),
                Tok::V(slot) => return self.refuse(slot, Refusal::SingleQuotes),
            }
        }
        Ok(())
    }

    /// A double-quoted string; in a `$"…"` (`refuse` set) no value may stand.
    fn double_quoted(&mut self, refuse: Option<Refusal>) -> Result<(), TemplateError> {
        while let Some(tok) = self.next() {
            match tok {
                Tok::V(slot) => match &refuse {
                    Some(why) => return self.refuse(slot, why.clone()),
                    None => self.value(slot, Placement::Quoted)?,
                },
                Tok::C('"') => return Ok(()),
                Tok::C('\\') => match self.next() {
                    Some(Tok::V(slot)) => return self.refuse(slot, Refusal::AfterBackslash),
                    Some(Tok::C(c)) => self.command().word.push(c),
                    None => {}
                },
                Tok::C('`') => {
                    self.not_literal();
                    self.up_to('`', Refusal::Backquotes)?;
                }
                Tok::C('$') => {
                    self.not_literal();
                    self.dollar(true)?;
                }
                Tok::C(c) => self.command().word.push(c),
            }
        }
        Ok(())
    }

    /// Up to the first unescaped `close`, whatever quotes are inside (backquotes,
    /// `$'…'`); no value may stand there.
    fn up_to(&mut self, close: char, why: Refusal) -> Result<(), TemplateError> {
        while let Some(tok) = self.next() {
            match tok {
                Tok::C(c) if c == close => return Ok(()),
                Tok::C('\\') => {
                    if let Some(Tok::V(slot)) = self.next() {
                        return self.refuse(slot, why);
                    }
                }
                Tok::V(slot) => return self.refuse(slot, why),
                Tok::C(_) => {}
            }
        }
        Ok(())
    }

    /// What follows a `$`.
    fn dollar(&mut self, in_double_quotes: bool) -> Result<(), TemplateError> {
        match self.peek() {
            Some(Tok::V(slot)) => self.refuse(*slot, Refusal::AfterDollar),
            Some(Tok::C('(')) => {
                self.i += 1;
                if self.eat('(') {
                    self.arithmetic(2)
                } else {
                    // A new level, with its own quoting and its own commands.
                    self.commands(true)
                }
            }
            Some(Tok::C('{')) => {
                self.i += 1;
                self.enclosed('{', '}', Refusal::ParameterExpansion)
            }
            Some(Tok::C('[')) => {
                self.i += 1;
                self.enclosed('[', ']', Refusal::Arithmetic)
            }
            Some(Tok::C('\'')) if !in_double_quotes => {
                self.i += 1;
                self.up_to('\'', Refusal::AnsiCQuotes)
            }
            Some(Tok::C('"')) if !in_double_quotes => {
                self.i += 1;
                self.double_quoted(Some(Refusal::TranslatedString))
            }
            _ => Ok(()),
        }
    }

    /// Up to the `close` that balances an `open` already read; no value may stand inside.
    fn enclosed(&mut self, open: char, close: char, why: Refusal) -> Result<(), TemplateError> {
        let mut depth = 1usize;
        while let Some(tok) = self.next() {
            match tok {
                Tok::V(slot) => return self.refuse(slot, why),
                Tok::C('\\') => {
                    if let Some(Tok::V(slot)) = self.next() {
                        return self.refuse(slot, why);
                    }
                }
                Tok::C(c) if c == open => depth += 1,
                Tok::C(c) if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Tok::C(_) => {}
            }
        }
        Ok(())
    }

    /// `((…))` or `$((…))`, with `depth` parentheses open.
    fn arithmetic(&mut self, depth: usize) -> Result<(), TemplateError> {
        let mut depth = depth;
        while let Some(tok) = self.next() {
            match tok {
                Tok::V(slot) => return self.refuse(slot, Refusal::Arithmetic),
                Tok::C('(') => depth += 1,
                Tok::C(')') => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Tok::C(_) => {}
            }
        }
        Ok(())
    }

    /// Up to the end of the line, which is left to end the command.
    fn comment(&mut self) -> Result<(), TemplateError> {
        while let Some(tok) = self.peek() {
            match tok {
                Tok::C('\n') => break,
                Tok::V(slot) => return self.refuse(*slot, Refusal::Comment),
                Tok::C(_) => self.i += 1,
            }
        }
        Ok(())
    }

    /// After `<<` (or `<<-`): the delimiter word. Any quoting in it turns expansion
    /// in the body off.
    fn here_document_header(&mut self) -> Result<HereDocument, TemplateError> {
        let strip_tabs = self.eat('-');
        while self.eat(' ') || self.eat('\t') {}
        let (mut delimiter, mut quoted) = (String::new(), false);
        let mut quote: Option<char> = None;
        while let Some(tok) = self.peek().cloned() {
            match tok {
                Tok::V(slot) => return self.refuse(slot, Refusal::HereDocumentDelimiter),
                Tok::C(c) if quote == Some(c) => quote = None,
                Tok::C(c) if quote.is_some() => delimiter.push(c),
                Tok::C(c @ ('\'' | '"')) => {
                    quote = Some(c);
                    quoted = true;
                }
                Tok::C('\\') => {
                    quoted = true;
                    self.i += 1;
                    match self.peek().cloned() {
                        Some(Tok::C(c)) => delimiter.push(c),
                        Some(Tok::V(slot)) => return self.refuse(slot, Refusal::HereDocumentDelimiter),
                        None => {}
                    }
                }
                Tok::C(' ' | '\t' | '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')') => break,
                Tok::C(c) => delimiter.push(c),
            }
            self.i += 1;
        }
        Ok(HereDocument { delimiter, quoted, strip_tabs })
    }

    /// A here-document's body, line by line up to its delimiter (or the end).
    fn here_document(&mut self, document: &HereDocument) -> Result<(), TemplateError> {
        // The closers of the substitutions open in the body (a backquote toggles).
        let mut open: Vec<char> = Vec::new();
        let toks = &self.expanded.toks;
        while self.i < toks.len() {
            let end = toks[self.i..].iter().position(|t| *t == Tok::C('\n')).map_or(toks.len(), |n| self.i + n);
            let line = &toks[self.i..end];
            self.i = end + 1;
            let text: Option<String> = line.iter().map(|t| if let Tok::C(c) = t { Some(*c) } else { None }).collect();
            if let Some(text) = text {
                let text = if document.strip_tabs { text.trim_start_matches('\t') } else { &text };
                if text == document.delimiter {
                    return Ok(());
                }
            }
            let mut j = 0;
            while j < line.len() {
                match (&line[j], line.get(j + 1)) {
                    (Tok::V(slot), _) if document.quoted => return self.refuse(*slot, Refusal::QuotedHereDocument),
                    (Tok::V(slot), _) if !open.is_empty() => {
                        return self.refuse(*slot, Refusal::HereDocumentSubstitution);
                    }
                    (Tok::V(slot), _) => self.placed[*slot] = Placement::Quoted,
                    (_, _) if document.quoted => {}
                    (Tok::C('\\'), Some(Tok::V(slot))) => return self.refuse(*slot, Refusal::AfterBackslash),
                    (Tok::C('\\'), Some(_)) => j += 1,
                    (Tok::C('$'), Some(Tok::V(slot))) => return self.refuse(*slot, Refusal::AfterDollar),
                    (Tok::C('$'), Some(Tok::C('('))) => {
                        open.push(')');
                        j += 1;
                    }
                    (Tok::C('$'), Some(Tok::C('{'))) => {
                        open.push('}');
                        j += 1;
                    }
                    (Tok::C('$'), Some(Tok::C('['))) => {
                        open.push(']');
                        j += 1;
                    }
                    (Tok::C('`'), _) if open.last() == Some(&'`') => {
                        open.pop();
                    }
                    (Tok::C('`'), _) => open.push('`'),
                    (Tok::C('('), _) if !open.is_empty() => open.push(')'),
                    (Tok::C(c), _) if open.last() == Some(c) => {
                        open.pop();
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        Ok(())
    }
}
