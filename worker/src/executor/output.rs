//! What every executor keeps of a step's output, and what a step's exit status means.

use super::{LOCKED_EXIT, lock_wait_seconds};

/// How much of a step's output is kept with the step (the whole output is in the log).
const OUTPUT_TAIL_BYTES: usize = 4096;

/// Exit statuses of coreutils `timeout`: the command timed out; it had to be killed.
const TIMEOUT_EXIT: i32 = 124;
const TIMEOUT_KILLED_EXIT: i32 = 137;

/// Why a step whose command ran `timeout_seconds` at most failed with `code` (not 0),
/// under either executor (both run it as [`super::host_argv`] builds it).
pub fn exit_failure(code: i32, timeout_seconds: u64) -> String {
    match code {
        LOCKED_EXIT => {
            format!("another claim's command still held the host's lock after {}s", lock_wait_seconds(timeout_seconds))
        }
        TIMEOUT_EXIT | TIMEOUT_KILLED_EXIT => format!("timed out after {timeout_seconds}s and was stopped on the host"),
        code => format!("command exited with status {code}"),
    }
}

/// The last lines of a step's output, within [`OUTPUT_TAIL_BYTES`].
#[derive(Debug, Default)]
pub struct OutputTail {
    lines: Vec<String>,
    bytes: usize,
    joined: String,
}

impl OutputTail {
    pub fn push(&mut self, line: &str) {
        self.lines.push(line.to_owned());
        self.bytes += line.len() + 1;
        while self.bytes > OUTPUT_TAIL_BYTES && self.lines.len() > 1 {
            let dropped = self.lines.remove(0);
            self.bytes -= dropped.len() + 1;
        }
    }

    pub fn push_all(&mut self, lines: &[String]) {
        for line in lines {
            self.push(line);
        }
    }

    /// The lines kept, oldest first.
    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }

    pub fn text(&mut self) -> &str {
        self.joined = self.lines.join("\n");
        &self.joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_tail_keeps_the_last_lines() {
        let mut tail = OutputTail::default();
        for i in 0..2000 {
            tail.push(&format!("line {i}"));
        }
        let text = tail.text().to_owned();
        assert!(text.ends_with("line 1999"));
        assert!(text.len() <= OUTPUT_TAIL_BYTES);
        assert!(!text.contains("line 0\n"));
    }

    #[test]
    fn exit_statuses_say_what_happened_on_the_host() {
        assert_eq!(exit_failure(124, 5), "timed out after 5s and was stopped on the host");
        assert_eq!(exit_failure(137, 5), "timed out after 5s and was stopped on the host");
        assert!(exit_failure(LOCKED_EXIT, 5).contains("held the host's lock after 20s"));
        assert_eq!(exit_failure(3, 5), "command exited with status 3");
    }
}
