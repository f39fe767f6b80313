//! Playbooks: small declarative files under `playbooks/` that list a host's steps.
//!
//! ```toml
//! [[steps]]
//! name = "install"
//! action = "run"
//! command = "{{install_command}}"
//!
//! [[steps]]
//! name = "health"
//! action = "health_check"
//! ```
//!
//! Every step must be idempotent: a host interrupted mid-way is run again from its
//! first step.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use vesemir_core::config::{Config, ServiceConfig};
use vesemir_core::template::{ShellTemplate, TemplateError};

#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error("cannot read playbook {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("playbook {path} is not valid: {source}")]
    Invalid { path: PathBuf, source: InvalidPlaybook },
    #[error("service {service}: {source}")]
    Service { service: String, source: Box<PlaybookError> },
    #[error("service {service}, step {step}: {source}")]
    Template { service: String, step: String, source: Box<TemplateError> },
}

/// Why a playbook's text is not a playbook.
#[derive(Debug, thiserror::Error)]
pub enum InvalidPlaybook {
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error("a playbook needs at least one step")]
    NoSteps,
}

/// Loads every service's playbook and checks each step's command against the
/// service's operator text, so that a worker refuses to start rather than meet a
/// template that could interpret a value when a deployment runs.
pub fn check_services(config: &Config) -> Result<(), PlaybookError> {
    for (name, service) in &config.services {
        let playbook = Playbook::load(&config.worker.playbooks_dir, &service.playbook)
            .map_err(|e| PlaybookError::Service { service: name.clone(), source: Box::new(e) })?;
        playbook.check(name, service)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    #[serde(default)]
    pub description: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    pub name: String,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// A shell command on the host, rendered from a template.
    Run {
        command: String,
        /// Overrides the service's `step_timeout_seconds`.
        timeout_seconds: Option<u64>,
    },
    /// The service's HTTP health check, from the worker to the host.
    HealthCheck,
    /// A change of the host's server in every load balancer of the cluster.
    LoadBalancer { operation: LbOperation },
    /// Waits the request's `sleep_seconds` (nothing when it has none).
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbOperation {
    /// `drain`: no new connections; existing ones finish.
    Drain,
    /// Polls until the server has no session left, up to the drain timeout.
    WaitDrained,
    /// `maint`: out of rotation entirely.
    Maint,
    /// The request's reduced `weight` (if any), `ready`, then UP on every load balancer.
    Ready,
    /// Weight back to 100%, then UP on every load balancer.
    FullWeight,
}

impl Playbook {
    /// Loads `<dir>/<name>.toml`. The name was validated as an identifier, so it cannot
    /// climb out of the directory.
    pub fn load(dir: &Path, name: &str) -> Result<Self, PlaybookError> {
        let path = dir.join(format!("{name}.toml"));
        let text =
            std::fs::read_to_string(&path).map_err(|source| PlaybookError::Read { path: path.clone(), source })?;
        Self::parse(&text).map_err(|source| PlaybookError::Invalid { path, source })
    }

    /// The timeout of the `run` step named `name`: its own, or the service's.
    pub fn timeout_of(&self, name: &str, service: &ServiceConfig) -> u64 {
        self.steps
            .iter()
            .find(|step| step.name == name)
            .and_then(|step| match &step.action {
                Action::Run { timeout_seconds, .. } => *timeout_seconds,
                _ => None,
            })
            .unwrap_or(service.step_timeout_seconds)
            .max(1)
    }

    /// The steps that change a host (they run a command on it): a host that failed
    /// after starting one of them may no longer be on its earlier version.
    pub fn changing_steps(&self) -> Vec<String> {
        self.steps.iter().filter(|step| matches!(step.action, Action::Run { .. })).map(|s| s.name.clone()).collect()
    }

    /// Checks every command of the playbook as the service's templates expand it.
    pub fn check(&self, service_name: &str, service: &ServiceConfig) -> Result<(), PlaybookError> {
        for step in &self.steps {
            if let Action::Run { command, .. } = &step.action {
                ShellTemplate::parse(command, &service.vars).map_err(|source| PlaybookError::Template {
                    service: service_name.to_owned(),
                    step: step.name.clone(),
                    source: Box::new(source),
                })?;
            }
        }
        Ok(())
    }

    pub fn parse(text: &str) -> Result<Self, InvalidPlaybook> {
        let playbook: Self = toml::from_str(text)?;
        if playbook.steps.is_empty() {
            return Err(InvalidPlaybook::NoSteps);
        }
        Ok(playbook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ansible_form_of_the_rolling_playbook_has_its_steps_in_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks");
        let playbook = Playbook::load(&dir, "rolling").expect("valid playbook");
        let yaml = std::fs::read_to_string(dir.join("ansible/rolling.yml")).unwrap();
        // The Ansible play's tasks named as steps, in the order they come.
        let tasks: Vec<&str> = yaml.lines().filter_map(|l| l.trim().strip_prefix("- name: ")).collect();
        let steps: Vec<&str> = playbook.steps.iter().map(|s| s.name.as_str()).collect();
        let in_play: Vec<&str> = tasks.iter().copied().filter(|t| steps.contains(t)).collect();
        assert_eq!(in_play, steps, "task names of ansible/rolling.yml against rolling.toml");
    }

    #[test]
    fn unknown_actions_and_keys_are_refused() {
        assert!(Playbook::parse("[[steps]]\nname = \"x\"\naction = \"format_disk\"").is_err());
        assert!(Playbook::parse("[[steps]]\nname = \"x\"\naction = \"run\"\ncommand = \"a\"\ncomand = \"b\"").is_err());
        assert!(Playbook::parse("steps = []").is_err());
    }
}
