//! The configuration file: one TOML document, with `DATABASE_URL` and `AMQP_URL`
//! overriding the URLs it names. Every key is documented in the README.
//!
//! Relative paths in the file (keys, known_hosts, the playbooks directory) are resolved
//! against the directory that holds the file, so a configuration can be moved as a unit.

mod live;
mod position;

pub use live::{Live, ReloadError, reload_on_hangup, survive_hangups};

use crate::template;
pub use position::Position;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use vesemir_model::deployment::{ExecutorKind, OnFailure, Strategy, is_address, is_host_name, is_identifier};
use vesemir_model::notification::NotificationEvent;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    /// A value that parsed but is refused: `key` is its dotted path, `at` where it is
    /// written (or where its nearest parent is, for a default).
    #[error(
        "configuration is not valid: {key}{}: {message}",
        at.map(|p| format!(" (line {}, column {})", p.line, p.column)).unwrap_or_default()
    )]
    Invalid { key: String, message: String, at: Option<Position> },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), message: message.into(), at: None }
    }

    /// Points a refusal at where its key is written in `text`.
    fn located(self, text: &str) -> Self {
        match self {
            Self::Invalid { key, message, at: None } => {
                let at = position::locate(text, &key);
                Self::Invalid { key, message, at }
            }
            other => other,
        }
    }
}

/// A value that must never appear in logs or `Debug` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// How often the outbox relay looks for deployments whose publish was not confirmed.
    pub outbox_interval_ms: u64,
    /// How long a deployment may go without a live holder, or wait for a message once
    /// its turn has come, before the reaper queues it again (see `Store::reap`).
    pub reap_after_seconds: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 64 * 1024,
            outbox_interval_ms: 1000,
            reap_after_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: Secret::new("postgres://postgres@127.0.0.1:5432/vesemir"), max_connections: 10 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub url: Secret,
    /// The queue of deployment ids; its dead-letter queue is `<queue>.dead`.
    pub queue: String,
    /// Deliveries of one message before the broker dead-letters it.
    pub delivery_limit: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            queue: "vesemir.deployments".to_owned(),
            delivery_limit: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Deployments one worker runs at once (the consumer's prefetch).
    pub max_deployments: u16,
    pub lease_seconds: u64,
    pub playbooks_dir: PathBuf,
    /// The `ansible-playbook` the ansible executor runs: a bare name is looked up in
    /// `PATH`; a path points at another installation (a virtualenv's, say).
    pub ansible_playbook: String,
    /// Where the SSH control sockets live. Unix socket paths are limited to about
    /// 100 bytes, so keep this short.
    pub ssh_control_dir: PathBuf,
    /// Lines a log batch holds before it is written, and the longest a line waits.
    pub log_batch_lines: usize,
    pub log_batch_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            max_deployments: 4,
            lease_seconds: 30,
            playbooks_dir: PathBuf::from("playbooks"),
            ansible_playbook: "ansible-playbook".to_owned(),
            ssh_control_dir: PathBuf::from("/tmp/vesemir-ssh"),
            log_batch_lines: 500,
            log_batch_ms: 200,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub discovery: DiscoveryKind,
    /// The hosts of a `static` cluster.
    #[serde(default)]
    pub hosts: Vec<StaticHost>,
    pub ssh: SshConfig,
    /// The Chef server of a `chef` cluster.
    #[serde(default)]
    pub chef: Option<ChefConfig>,
    /// Every load balancer in front of the cluster's hosts: each change goes to all.
    #[serde(default)]
    pub load_balancers: Vec<LoadBalancerConfig>,
    /// Told of every deployment to the cluster, whatever its service.
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookConfig>,
}

/// A receiver told when a deployment starts, succeeds, fails, is cancelled or rolled
/// back: a signed JSON body, delivered with retries from the database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// An http or https URL.
    pub url: String,
    /// The HMAC-SHA256 key that signs every body; at least 16 bytes.
    pub secret: Secret,
    /// Only these events; all of them when empty.
    #[serde(default)]
    pub events: Vec<NotificationEvent>,
    /// How long one attempt may take before it counts as failed.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
}

impl WebhookConfig {
    pub fn wants(&self, event: NotificationEvent) -> bool {
        self.events.is_empty() || self.events.contains(&event)
    }
}

fn default_webhook_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    pub name: String,
    pub runtime_api: RuntimeApi,
    /// Longest wait for one Runtime API answer.
    #[serde(default = "default_lb_timeout")]
    pub timeout_ms: u64,
}

fn default_lb_timeout() -> u64 {
    3000
}

/// Where HAProxy's Runtime API is reached. Its TCP port has no authentication, so
/// production load balancers often expose only the unix socket: reach it locally, or
/// through SSH to the load balancer host (with the cluster's SSH settings; the host
/// needs `socat`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuntimeApi {
    Tcp { address: String },
    Unix { path: PathBuf },
    Ssh { host: String, socket: String },
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryKind {
    /// The `hosts` list of the cluster.
    #[default]
    Static,
    /// A node search on a Chef server (`chef` section).
    Chef,
}

/// A Chef Infra Server (or a compatible one) and the client Vesemir signs as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChefConfig {
    /// With the organization when the server has them: `https://chef.example/organizations/acme`.
    pub server_url: String,
    pub client_name: String,
    /// The client's private key, PKCS#1 PEM. Never logged.
    pub client_key: PathBuf,
    /// Signing protocol: `1.3` (SHA-256), or `1.0`/`1.1` for old servers.
    #[serde(default = "default_sign_version")]
    pub sign_version: String,
    /// Operator terms ANDed with every search of this cluster, e.g. `chef_environment:production`.
    #[serde(default)]
    pub base_query: Option<String>,
    /// The node attribute holding the address to connect to (a dotted path).
    #[serde(default = "default_address_attribute")]
    pub address_attribute: String,
    /// Ask only for the attributes needed (partial search), in one page.
    #[serde(default = "default_true")]
    pub partial_search: bool,
    /// Rows per page of a full search, and the most nodes a partial search may return.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_chef_timeout")]
    pub timeout_seconds: u64,
    /// Further attempts after a 5xx answer or a connection error.
    #[serde(default = "default_chef_retries")]
    pub retries: u32,
    /// A PEM bundle of extra CA certificates, for a server with an internal CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_sign_version() -> String {
    "1.3".to_owned()
}
fn default_address_attribute() -> String {
    "ipaddress".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_page_size() -> u32 {
    1000
}
fn default_chef_timeout() -> u64 {
    10
}
fn default_chef_retries() -> u32 {
    2
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticHost {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    pub user: String,
    pub private_key: PathBuf,
    pub known_hosts: PathBuf,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Keepalive interval: a connection whose peer goes silent is declared dead after
    /// three missed answers, instead of hanging for many minutes.
    #[serde(default = "default_keepalive")]
    pub keepalive_seconds: u64,
}

fn default_ssh_port() -> u16 {
    22
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_keepalive() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default = "default_playbook")]
    pub playbook: String,
    #[serde(default)]
    pub executor: ExecutorKind,
    /// Waves or a sliding window; a request may choose otherwise.
    #[serde(default)]
    pub strategy: Strategy,
    /// Stop at a failure, or roll back what the deployment changed; a request may
    /// choose otherwise.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Told of every deployment of the service.
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// A command that prints the version a host runs (its last line is read), for
    /// `vesemir hosts --verify`; a template like `install_command`.
    #[serde(default)]
    pub version_command: Option<String>,
    #[serde(default = "default_step_timeout")]
    pub step_timeout_seconds: u64,
    /// The shell each command runs in on the host.
    #[serde(default)]
    pub shell: Shell,
    /// Operator-written text (commands, paths) that playbooks reference as `{{name}}`.
    /// It is inserted as written; values from requests and discovery reach commands
    /// as environment variables (see [`crate::template`]).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    pub health: HealthConfig,
    /// How the service's hosts appear in the cluster's load balancers.
    #[serde(default)]
    pub load_balancer: Option<ServiceBalancing>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceBalancing {
    /// The HAProxy backend holding the service's servers.
    pub backend: String,
    /// The server name of a host in that backend, a template such as `{{host.name}}`.
    #[serde(default = "default_server_template")]
    pub server: String,
    /// Longest wait for a drained server's sessions to reach zero before `maint`.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_seconds: u64,
    /// Longest wait for a server put back to be reported UP by every load balancer.
    #[serde(default = "default_up_timeout")]
    pub up_timeout_seconds: u64,
    #[serde(default = "default_poll_interval")]
    pub poll_interval_ms: u64,
}

impl ServiceConfig {
    /// Checks the templates the configuration itself names (the health check, the
    /// server name, the commands the ansible executor runs); a playbook's steps are
    /// checked by the worker, which loads the playbooks. The error names the template.
    /// Checks the service's templates; a refusal names the key (under the service)
    /// whose template it is.
    pub fn check_templates(&self) -> Result<(), (String, template::TemplateError)> {
        template::UrlTemplate::parse(&self.health.url, &self.vars).map_err(|e| ("health.url".to_owned(), e))?;
        if let Some(lb) = &self.load_balancer {
            template::NameTemplate::parse(&lb.server, &self.vars)
                .map_err(|e| ("load_balancer.server".to_owned(), e))?;
        }
        if let Some(command) = &self.version_command {
            template::ShellTemplate::parse(command, &self.vars).map_err(|e| ("version_command".to_owned(), e))?;
        }
        for name in ANSIBLE_COMMANDS {
            if self.vars.contains_key(name) {
                template::ShellTemplate::parse(&format!("{{{{{name}}}}}"), &self.vars)
                    .map_err(|e| (format!("vars.{name}"), e))?;
            }
        }
        Ok(())
    }
}

fn default_server_template() -> String {
    "{{host.name}}".to_owned()
}
fn default_drain_timeout() -> u64 {
    60
}
fn default_up_timeout() -> u64 {
    60
}
fn default_poll_interval() -> u64 {
    250
}

/// The shell a host runs a step's command with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shell {
    /// POSIX `sh` (dash on Debian).
    #[default]
    Sh,
    Bash,
}

impl Shell {
    pub fn program(self) -> &'static str {
        match self {
            Shell::Sh => "sh",
            Shell::Bash => "bash",
        }
    }
}

/// The one playbook the ansible executor has an Ansible form of.
pub const ANSIBLE_PLAYBOOK: &str = "rolling";

/// The operator variables the ansible executor runs as the install and restart steps.
pub const ANSIBLE_COMMANDS: [&str; 2] = ["install_command", "restart_command"];

fn default_playbook() -> String {
    "rolling".to_owned()
}
fn default_step_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// A URL template, e.g. `http://{{host.address}}:8080/health`.
    pub url: String,
    #[serde(default = "default_expected_status")]
    pub expected_status: u16,
    #[serde(default = "default_health_retries")]
    pub retries: u32,
    #[serde(default = "default_health_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: u64,
}

fn default_expected_status() -> u16 {
    200
}
fn default_health_retries() -> u32 {
    10
}
fn default_health_interval() -> u64 {
    1000
}
fn default_health_timeout() -> u64 {
    2000
}

/// HAProxy proxy and server names: letters, digits and `._:-`, which also keeps a
/// name from smuggling a second Runtime API command.
pub fn is_haproxy_name(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl Config {
    /// Reads `path`, applies the environment overrides and checks the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config =
            Self::parse(&text, base).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        config.apply_env(|name| std::env::var(name).ok());
        config.validate().map_err(|e| e.located(&text))?;
        Ok(config)
    }

    /// Parses a document, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, toml::de::Error> {
        let mut config: Self = toml::from_str(text)?;
        config.worker.playbooks_dir = base.join(&config.worker.playbooks_dir);
        for cluster in config.clusters.values_mut() {
            cluster.ssh.private_key = base.join(&cluster.ssh.private_key);
            cluster.ssh.known_hosts = base.join(&cluster.ssh.known_hosts);
            if let Some(chef) = &mut cluster.chef {
                chef.client_key = base.join(&chef.client_key);
                chef.ca_file = chef.ca_file.as_ref().map(|f| base.join(f));
            }
        }
        Ok(config)
    }

    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        if let Some(url) = var("DATABASE_URL") {
            self.database.url = Secret::new(url);
        }
        if let Some(url) = var("AMQP_URL") {
            self.queue.url = Secret::new(url);
        }
    }

    /// Every webhook told of a deployment of `service` to `cluster`, by its place in
    /// the configuration.
    pub fn webhooks_of(&self, service: &str, cluster: &str) -> Vec<(String, &WebhookConfig)> {
        let services = self.services.get(service).into_iter().flat_map(|s| &s.webhooks);
        let clusters = self.clusters.get(cluster).into_iter().flat_map(|c| &c.webhooks);
        services
            .map(|(hook, config)| (format!("services.{service}.webhooks.{hook}"), config))
            .chain(clusters.map(|(hook, config)| (format!("clusters.{cluster}.webhooks.{hook}"), config)))
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, m: String| Err(ConfigError::invalid(key, m));
        for (name, cluster) in &self.clusters {
            let key = |rest: &str| {
                if rest.is_empty() { format!("clusters.{name}") } else { format!("clusters.{name}.{rest}") }
            };
            if !is_identifier(name) {
                return invalid(key(""), "a cluster name must match [a-z0-9][a-z0-9._-]*".to_owned());
            }
            match (cluster.discovery, &cluster.chef) {
                (DiscoveryKind::Chef, None) => {
                    return invalid(
                        key("discovery"),
                        format!("discovery = \"chef\" needs a [clusters.{name}.chef] section"),
                    );
                }
                (DiscoveryKind::Chef, Some(chef)) => {
                    if !["1.0", "1.1", "1.3"].contains(&chef.sign_version.as_str()) {
                        return invalid(key("chef.sign_version"), "must be 1.0, 1.1 or 1.3".to_owned());
                    }
                    if chef.page_size == 0 || chef.page_size > 10_000 {
                        return invalid(key("chef.page_size"), "must be 1 to 10000".to_owned());
                    }
                }
                (DiscoveryKind::Static, _) => {}
            }
            let mut balancers = BTreeSet::new();
            for (i, lb) in cluster.load_balancers.iter().enumerate() {
                if !is_identifier(&lb.name) || !balancers.insert(&lb.name) {
                    return invalid(
                        key(&format!("load_balancers.{i}.name")),
                        format!("{:?} is invalid or repeated", lb.name),
                    );
                }
                let socket = match &lb.runtime_api {
                    RuntimeApi::Unix { path } => Some(path.as_path()),
                    RuntimeApi::Ssh { socket, .. } => Some(Path::new(socket.as_str())),
                    RuntimeApi::Tcp { .. } => None,
                };
                if socket.is_some_and(|path| !path.is_absolute()) {
                    return invalid(
                        key(&format!("load_balancers.{i}.runtime_api")),
                        "the socket path must be absolute".to_owned(),
                    );
                }
            }
            check_webhooks(&cluster.webhooks, &key)?;
            let mut seen = BTreeSet::new();
            for (i, host) in cluster.hosts.iter().enumerate() {
                if !is_address(&host.address) {
                    return invalid(
                        key(&format!("hosts.{i}.address")),
                        format!("host {} has an invalid address {:?}", host.name, host.address),
                    );
                }
                if !is_host_name(&host.name) {
                    return invalid(
                        key(&format!("hosts.{i}.name")),
                        format!("host name {:?} must match [A-Za-z0-9][A-Za-z0-9._-]*", host.name),
                    );
                }
                if !seen.insert(&host.name) {
                    return invalid(key(&format!("hosts.{i}")), format!("host {} is listed twice", host.name));
                }
            }
        }
        for (name, service) in &self.services {
            let key = |rest: &str| {
                if rest.is_empty() { format!("services.{name}") } else { format!("services.{name}.{rest}") }
            };
            if !is_identifier(name) {
                return invalid(key(""), "a service name must match [a-z0-9][a-z0-9._-]*".to_owned());
            }
            if let Some(lb) = &service.load_balancer
                && !is_haproxy_name(&lb.backend)
            {
                return invalid(key("load_balancer.backend"), format!("{:?} is not a valid HAProxy name", lb.backend));
            }
            if !is_identifier(&service.playbook) {
                return invalid(key("playbook"), format!("{:?} is not a valid playbook name", service.playbook));
            }
            if service.executor == ExecutorKind::Ansible && service.playbook != ANSIBLE_PLAYBOOK {
                return invalid(
                    key("executor"),
                    format!(
                        "the ansible executor runs the Ansible form of the {ANSIBLE_PLAYBOOK} playbook \
                         (playbooks/ansible/{ANSIBLE_PLAYBOOK}.yml); playbook = {:?} runs only with executor = \"native\"",
                        service.playbook
                    ),
                );
            }
            service.check_templates().map_err(|(field, e)| ConfigError::invalid(key(&field), e.to_string()))?;
            check_webhooks(&service.webhooks, &key)?;
        }
        if self.worker.max_deployments == 0 {
            return invalid("worker.max_deployments".to_owned(), "must be at least 1".to_owned());
        }
        if self.api.reap_after_seconds == 0 {
            return invalid("api.reap_after_seconds".to_owned(), "must be at least 1".to_owned());
        }
        if self.worker.lease_seconds < 3 {
            return invalid("worker.lease_seconds".to_owned(), "must be at least 3".to_owned());
        }
        Ok(())
    }
}

/// Webhook names are identifiers; URLs are http(s) with nothing a header or a log line
/// could be split on; secrets are long enough to sign with.
fn check_webhooks(hooks: &BTreeMap<String, WebhookConfig>, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    for (name, hook) in hooks {
        let at = |field: &str| key(&format!("webhooks.{name}{field}"));
        if !is_identifier(name) {
            return Err(ConfigError::invalid(at(""), "a webhook name must match [a-z0-9][a-z0-9._-]*".to_owned()));
        }
        let scheme_ok = hook.url.starts_with("http://") || hook.url.starts_with("https://");
        if !scheme_ok || hook.url.len() > 2048 || hook.url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::invalid(at(".url"), format!("{:?} is not an http or https URL", hook.url)));
        }
        if hook.secret.expose().len() < 16 {
            return Err(ConfigError::invalid(at(".secret"), "must be at least 16 bytes".to_owned()));
        }
        if hook.timeout_ms == 0 || hook.timeout_ms > 60_000 {
            return Err(ConfigError::invalid(at(".timeout_ms"), "must be 1 to 60000".to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const MINIMAL: &str = r#"
        [clusters.sandbox]
        ssh = { user = "deploy", private_key = "keys/id", known_hosts = "keys/known_hosts" }
        hosts = [{ name = "vm-01", address = "127.0.20.1" }]

        [services.demo]
        vars = { install_command = "install {{version}}" }
        health = { url = "http://{{host.address}}:8080/health" }
    "#;

    #[test]
    fn relative_paths_are_resolved_against_the_file() {
        let config = Config::parse(MINIMAL, Path::new("/etc/vesemir")).expect("valid");
        let ssh = &config.clusters["sandbox"].ssh;
        assert_eq!(ssh.private_key, Path::new("/etc/vesemir/keys/id"));
        assert_eq!(config.worker.playbooks_dir, Path::new("/etc/vesemir/playbooks"));
        assert_eq!(ssh.port, 22);
    }

    #[test]
    fn environment_overrides_the_urls() {
        let mut config = Config::parse(MINIMAL, Path::new(".")).expect("valid");
        config.apply_env(|name| (name == "AMQP_URL").then(|| "amqp://elsewhere".to_owned()));
        assert_eq!(config.queue.url.expose(), "amqp://elsewhere");
        assert!(config.database.url.expose().starts_with("postgres://"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse("[api]\nlisten_on = \"x\"", Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("listen_on"), "{err}");
    }

    #[test]
    fn webhooks_of_a_service_and_of_its_cluster_both_hear_of_it_and_bad_ones_are_refused() {
        let hook = |url: &str, secret: &str| format!("{{ url = \"{url}\", secret = \"{secret}\" }}");
        let text = format!(
            "{MINIMAL}\n[services.demo.webhooks]\nchat = {}\n[clusters.sandbox.webhooks]\npager = {}\n",
            hook("https://hooks.example/a", "0123456789abcdef"),
            hook("http://127.0.0.1:9/b", "0123456789abcdef")
        );
        let config = Config::parse(&text, Path::new(".")).expect("valid");
        config.validate().expect("valid");
        let names: Vec<String> = config.webhooks_of("demo", "sandbox").into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["services.demo.webhooks.chat", "clusters.sandbox.webhooks.pager"]);
        assert!(config.webhooks_of("other", "elsewhere").is_empty());
        for (url, secret, key) in [
            ("ftp://x", "0123456789abcdef", "services.demo.webhooks.chat.url"),
            ("https://a b", "0123456789abcdef", "services.demo.webhooks.chat.url"),
            ("https://x", "short", "services.demo.webhooks.chat.secret"),
        ] {
            let text = format!("{MINIMAL}\n[services.demo.webhooks]\nchat = {}\n", hook(url, secret));
            let err = Config::parse(&text, Path::new(".")).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn duplicate_hosts_are_refused() {
        let text = MINIMAL.replace(
            r#"hosts = [{ name = "vm-01", address = "127.0.20.1" }]"#,
            r#"hosts = [{ name = "vm-01", address = "a" }, { name = "vm-01", address = "b" }]"#,
        );
        let config = Config::parse(&text, Path::new(".")).expect("parses");
        assert!(config.validate().is_err());
    }

    #[test]
    fn a_refused_value_is_named_by_its_key_and_its_line_and_column_in_the_file() {
        let dir = std::env::temp_dir().join(format!("vesemir-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vesemir.toml");
        let text = MINIMAL.replace(r#"address = "127.0.20.1""#, r#"address = "-oProxyCommand=x""#);
        std::fs::write(&path, &text).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("clusters.sandbox.hosts.0.address (line 4, column 36)"), "{err}");
        assert!(err.contains("invalid address"), "{err}");

        let bad_template = MINIMAL.replace("http://{{host.address}}", "ftp://{{host.address}}");
        let err = Config::parse(&bad_template, Path::new(".")).unwrap().validate().unwrap_err();
        let ConfigError::Invalid { key, .. } = &err else { panic!("{err}") };
        assert_eq!(key, "services.demo.health.url");
        let err = err.located(&bad_template).to_string();
        assert!(err.contains("services.demo.health.url (line 8, column 20)"), "{err}");
    }

    #[test]
    fn a_syntax_error_names_its_line_and_column() {
        let err = Config::parse("[api]\nlisten = \n", Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("line 2, column 10"), "{err}");
    }

    #[test]
    fn a_load_balancer_socket_on_another_host_must_be_an_absolute_path() {
        let balanced = |socket: &str| {
            let lb = format!(
                r#"load_balancers = [{{ name = "lb-1", runtime_api = {{ kind = "ssh", host = "10.0.0.2", socket = "{socket}" }} }}]"#
            );
            let text = MINIMAL.replace("[services.demo]", &format!("{lb}\n[services.demo]"));
            Config::parse(&text, Path::new(".")).expect("parses").validate()
        };
        assert!(balanced("/run/haproxy/admin.sock").is_ok());
        let err = balanced("admin.sock").unwrap_err();
        assert!(err.to_string().contains("must be absolute"), "{err}");
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let text = std::fs::read_to_string(dir.join("vesemir.example.toml")).unwrap();
        let config = Config::parse(&text, &dir).unwrap();
        config.validate().unwrap();
        assert_eq!(config.clusters["eu-west"].load_balancers.len(), 2);
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let mut config = Config::parse(MINIMAL, Path::new(".")).expect("valid");
        config.apply_env(|name| (name == "DATABASE_URL").then(|| "postgres://vesemir:hunter2@db/vesemir".to_owned()));
        let printed = format!("{config:?}");
        assert!(!printed.contains("guest:guest") && !printed.contains("hunter2"), "{printed}");
    }
}
