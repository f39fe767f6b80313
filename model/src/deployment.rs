//! The domain: what a deployment request says, the states a deployment and its hosts
//! go through, and the rules an identifier must follow.

use crate::event::Event;
use crate::fields::fields_of;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// Service, cluster, host and variable names: lower-case, short, and safe anywhere
/// (a shell, a URL, a Chef query, an HAProxy command) without quoting.
pub fn is_identifier(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// A host name, as static lists and Chef node names have them: letters (any case),
/// digits and `._-`, starting with a letter or digit, at most 253 characters.
pub fn is_host_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=253).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An IP address or a DNS name: safe to hand to ssh (never starts with `-`, which ssh
/// would read as an option) and to put in a URL.
pub fn is_address(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=253).contains(&bytes.len())
        && bytes[0] != b'-'
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
}

/// A release version: letters, digits and `._+-`, starting with a letter or digit.
pub fn is_version(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// A count of hosts (`2`) or a share of them (`"25%"`), as `concurrency` and
/// `max_failures` take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u8),
}

impl Amount {
    /// How many hosts out of `total` this amount allows, rounding down.
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => total * usize::from(p) / 100,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(n) => s.serialize_u32(*n),
            Amount::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Text(String),
        }
        let invalid = || serde::de::Error::custom("expected a count of hosts (2) or a percentage (\"25%\")");
        match Raw::deserialize(d).map_err(|_| invalid())? {
            Raw::Count(n) => u32::try_from(n).map(Amount::Count).map_err(|_| invalid()),
            Raw::Text(text) => {
                let digits = text.strip_suffix('%').ok_or_else(invalid)?;
                if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                let p: u8 = digits.parse().map_err(|_| invalid())?;
                if p > 100 {
                    return Err(serde::de::Error::custom("a percentage must be between 0% and 100%"));
                }
                Ok(Amount::Percent(p))
            }
        }
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Amount {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .description(Some("A count of hosts (2) or a share of them (\"25%\"), rounding down."))
            .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
            .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[0-9]{1,3}%$")))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Amount {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    #[default]
    Native,
    Ansible,
}

/// How hosts are rolled: in waves of `concurrency` (each wave ends before the next
/// starts), or through a sliding window that keeps `concurrency` hosts in flight and
/// starts the next the moment one finishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Waves,
    Window,
}

/// What happens when a deployment fails (more hosts failed than `max_failures`
/// allows): it stops there, or every host it changed returns to the version it had
/// before, in a rollback deployment of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Stop,
    Rollback,
}

/// Chef search terms, ANDed with the cluster's own query. Only clusters discovered by
/// search accept them; each value is one literal term.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

fn default_concurrency() -> Amount {
    Amount::Count(1)
}
fn default_max_failures() -> Amount {
    Amount::Count(0)
}

/// A submit body. Unknown fields are refused, so a misspelt option is a 400 rather than
/// a silent default; its serialized form is stored with the deployment and is what the
/// worker reads its options from.
///
/// What another version stored or returned may hold fields this one does not know:
/// read it with [`DeploymentRequest::from_stored`] (or [`lenient`] in a serde field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeploymentRequest {
    /// A configured service.
    pub service: String,
    /// A configured cluster.
    pub cluster: String,
    /// 1 to 128 letters, digits or `._+-`, starting with a letter or digit.
    pub version: String,
    /// Chef search terms; only for clusters discovered by search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Only these hosts of the cluster (static clusters); none: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts in flight at once.
    #[serde(default = "default_concurrency")]
    #[cfg_attr(feature = "openapi", schema(default = json!(1)))]
    pub concurrency: Amount,
    /// Failed or unreachable hosts tolerated before the rollout stops.
    #[serde(default = "default_max_failures")]
    #[cfg_attr(feature = "openapi", schema(default = json!(0)))]
    pub max_failures: Amount,
    /// The reduced weight a host returns at, as a percentage of its full weight (1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    /// The pause at the reduced weight, at most 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_seconds: Option<u32>,
    /// Overrides the service's executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorKind>,
    /// Overrides the service's strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Overrides the service's `on_failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// Values for `{{vars.NAME}}` in the service's templates (names are identifiers, at
    /// most 64, each at most 4096 bytes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// Discover and plan only; the deployment ends `planned`.
    #[serde(default)]
    pub dry_run: bool,
    /// With `dry_run`: also ask every host which version it runs (the service's
    /// `version_command`); the hosts view then shows where the host and the record
    /// disagree.
    #[serde(default, skip_serializing_if = "is_false")]
    pub verify: bool,
    /// A first wave of one host before the others.
    #[serde(default)]
    pub canary: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl DeploymentRequest {
    /// Reads a request that another version may have written: fields this version does
    /// not know are dropped, so an older worker still runs what a newer API stored.
    pub fn from_stored(mut value: serde_json::Value) -> Result<Self, serde_json::Error> {
        retain_fields(&mut value, fields_of::<Self>());
        if let Some(selector) = value.get_mut("selector") {
            retain_fields(selector, fields_of::<Selector>());
        }
        serde_json::from_value(value)
    }
}

/// For `#[serde(deserialize_with = "lenient")]`: a request read as
/// [`DeploymentRequest::from_stored`] reads it.
pub fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<DeploymentRequest, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    DeploymentRequest::from_stored(value).map_err(serde::de::Error::custom)
}

/// A request as stored, read leniently (see [`DeploymentRequest::from_stored`]).
#[derive(Debug, Clone, Deserialize)]
pub struct StoredRequest(#[serde(deserialize_with = "lenient")] pub DeploymentRequest);

fn retain_fields(value: &mut serde_json::Value, known: &[&str]) {
    if let Some(object) = value.as_object_mut() {
        object.retain(|key, _| known.contains(&key.as_str()));
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(
    /// `queued` → `running` → `succeeded` | `failed` | `cancelled` (via `cancelling`);
    /// a dry run ends in `planned`. A failed deployment with `on_failure = "rollback"`
    /// goes `rolling_back` while its rollback runs, then `rolled_back` (or `failed`,
    /// when the rollback does not succeed).
    DeploymentState {
        Queued => "queued",
        Running => "running",
        Cancelling => "cancelling",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        Planned => "planned",
        RollingBack => "rolling_back",
        RolledBack => "rolled_back",
    }
);

impl DeploymentState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled | Self::Planned | Self::RolledBack)
    }

    /// Whether its own rollout is over: final, or failed with its rollback under way.
    pub fn is_rolled_out(self) -> bool {
        self.is_final() || self == Self::RollingBack
    }
}

string_enum!(
    /// `pending` → `running` → `succeeded` | `failed` | `unreachable`, or `skipped`.
    HostState {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Unreachable => "unreachable",
        Skipped => "skipped",
    }
);

impl HostState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Unreachable | Self::Skipped)
    }

    /// Failed and unreachable hosts count against `max_failures`.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Unreachable)
    }
}

string_enum!(
    StepState {
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
    }
);

string_enum!(
    /// Where Vesemir put a host's server in the load balancers (`hosts.load_balancer`):
    /// back in rotation, draining, or out of it.
    AdminState {
        Ready => "ready",
        Drain => "drain",
        Maint => "maint",
    }
);

string_enum!(
    /// Where a log line came from: a remote command's stdout or stderr, or Vesemir.
    LogStream {
        Stdout => "stdout",
        Stderr => "stderr",
        System => "system",
    }
);

/// Per-state host counts of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Summary {
    pub total: u32,
    pub pending: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub unreachable: u32,
    pub skipped: u32,
}

impl Summary {
    pub fn count(&mut self, state: HostState) {
        self.total += 1;
        let slot = match state {
            HostState::Pending => &mut self.pending,
            HostState::Running => &mut self.running,
            HostState::Succeeded => &mut self.succeeded,
            HostState::Failed => &mut self.failed,
            HostState::Unreachable => &mut self.unreachable,
            HostState::Skipped => &mut self.skipped,
        };
        *slot += 1;
    }
}

/// HAProxy's error counters for the service's backend, summed over every load
/// balancer of the cluster, as a change over a window (the deployment, or a host's
/// wave). Every counter is one HAProxy keeps in `show stat`; a client that saw an
/// error shows in at least one of them, but not every one of them means a client saw
/// an error (a retry that then succeeded is counted, and was invisible to the client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Counters {
    /// `econ`: connections to a server that failed.
    pub connection_errors: u64,
    /// `eresp`: responses a server broke off or sent malformed (including a server
    /// that closed the connection mid-request).
    pub response_errors: u64,
    /// `wretr`: connections retried on the same server.
    pub retries: u64,
    /// `wredis`: requests sent again to another server.
    pub redispatches: u64,
    /// `hrsp_5xx`: 5xx responses, the backend's own included.
    pub http_5xx: u64,
    /// `cli_abrt`: transfers the client aborted.
    pub client_aborts: u64,
    /// `srv_abrt`: transfers the server aborted.
    pub server_aborts: u64,
    /// A load balancer's counters went down during the window (a reload restarts
    /// them): the figures are then a lower bound.
    #[serde(default)]
    pub reset: bool,
}

impl Counters {
    /// The change from `before` to `self`.
    pub fn since(&self, before: &Counters) -> Counters {
        let d = |after: u64, before: u64| after.saturating_sub(before);
        let fields = |c: &Counters| {
            [
                c.connection_errors,
                c.response_errors,
                c.retries,
                c.redispatches,
                c.http_5xx,
                c.client_aborts,
                c.server_aborts,
            ]
        };
        let reset = fields(self).iter().zip(fields(before)).any(|(a, b)| *a < b);
        Counters {
            connection_errors: d(self.connection_errors, before.connection_errors),
            response_errors: d(self.response_errors, before.response_errors),
            retries: d(self.retries, before.retries),
            redispatches: d(self.redispatches, before.redispatches),
            http_5xx: d(self.http_5xx, before.http_5xx),
            client_aborts: d(self.client_aborts, before.client_aborts),
            server_aborts: d(self.server_aborts, before.server_aborts),
            reset: reset || self.reset || before.reset,
        }
    }

    /// The sum of two windows' counts (or of two load balancers').
    pub fn plus(&self, other: &Counters) -> Counters {
        Counters {
            connection_errors: self.connection_errors + other.connection_errors,
            response_errors: self.response_errors + other.response_errors,
            retries: self.retries + other.retries,
            redispatches: self.redispatches + other.redispatches,
            http_5xx: self.http_5xx + other.http_5xx,
            client_aborts: self.client_aborts + other.client_aborts,
            server_aborts: self.server_aborts + other.server_aborts,
            reset: self.reset || other.reset,
        }
    }

    pub fn total(&self) -> u64 {
        self.connection_errors
            + self.response_errors
            + self.retries
            + self.redispatches
            + self.http_5xx
            + self.client_aborts
            + self.server_aborts
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let named = [
            ("connection errors", self.connection_errors),
            ("response errors", self.response_errors),
            ("retries", self.retries),
            ("redispatches", self.redispatches),
            ("5xx", self.http_5xx),
            ("client aborts", self.client_aborts),
            ("server aborts", self.server_aborts),
        ];
        let nonzero: Vec<String> =
            named.iter().filter(|(_, n)| *n > 0).map(|(what, n)| format!("{n} {what}")).collect();
        if nonzero.is_empty() {
            f.write_str("0 errors")?
        } else {
            f.write_str(&nonzero.join(", "))?
        }
        if self.reset {
            f.write_str(" (counters were reset meanwhile: at least this many)")?;
        }
        Ok(())
    }
}

/// A deployment as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    pub id: Uuid,
    pub service: String,
    pub cluster: String,
    pub version: String,
    pub state: DeploymentState,
    pub requested_by: String,
    /// Who asked for the cancel, once someone has.
    pub cancelled_by: Option<String>,
    pub retry_of: Option<Uuid>,
    pub attempt: i32,
    /// The deployment this one rolls back: its hosts return to their earlier versions.
    #[serde(default)]
    pub rollback_of: Option<Uuid>,
    /// The latest rollback of this deployment.
    #[serde(default)]
    pub rolled_back_by: Option<Uuid>,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::optional::serialize")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamp::optional::serialize")]
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub request: DeploymentRequest,
    pub summary: Summary,
    /// The backend's error counters while the deployment ran; absent when the service
    /// is not behind a load balancer, or they could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_errors: Option<Counters>,
    /// Absent in lists, present when one deployment is fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<Host>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Host {
    pub name: String,
    pub address: String,
    /// The version this host is deployed to: the deployment's, except in a rollback,
    /// where each host returns to the version it had.
    pub version: String,
    pub wave: i32,
    pub state: HostState,
    #[serde(serialize_with = "crate::timestamp::optional::serialize")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timestamp::optional::serialize")]
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// Where Vesemir left the host's server in the load balancers; None when it did
    /// not touch it.
    pub load_balancer: Option<AdminState>,
    /// The backend's error counters during the host's window (its wave: hosts of one
    /// wave share it); absent as for the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_errors: Option<Counters>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Step {
    pub name: String,
    pub state: StepState,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::optional::serialize")]
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    pub seq: i64,
    pub host: Option<String>,
    pub stream: LogStream,
    pub line: String,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub at: DateTime<Utc>,
    /// For a line about a change: the change, as data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
}

impl Deployment {
    /// Its hosts: none in a list's deployments, which come without them.
    pub fn hosts(&self) -> &[Host] {
        self.hosts.as_deref().unwrap_or_default()
    }

    /// The host named `name`, if the deployment has it.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts().iter().find(|h| h.name == name)
    }
}

impl Host {
    /// The step named `name`, if the host ran it.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_short_lower_case_and_shell_safe() {
        for ok in ["payments-api", "vm-01", "a", "prod.eu_1"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "Payments", "-x", "a b", "a;b", "a/b", "ä", &"x".repeat(64)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn versions_refuse_shell_metacharacters() {
        assert!(is_version("2024.06.01-3f9c2a1"));
        assert!(is_version("1.2.3+build.7"));
        for bad in ["", "$(id)", "1;rm", "a b", "'x'", "../x", ".hidden"] {
            assert!(!is_version(bad), "{bad}");
        }
    }

    #[test]
    fn amounts_take_counts_and_percentages() {
        let parse = |s: &str| serde_json::from_str::<Amount>(s);
        assert_eq!(parse("2").unwrap(), Amount::Count(2));
        assert_eq!(parse("\"25%\"").unwrap(), Amount::Percent(25));
        for bad in ["-1", "\"25\"", "\"%\"", "\"101%\"", "\"-5%\"", "2.5", "null", "\"1e2%\""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&Amount::Percent(25)).unwrap(), "\"25%\"");
    }

    #[test]
    fn a_percentage_rounds_down() {
        assert_eq!(Amount::Percent(25).of(10), 2);
        assert_eq!(Amount::Percent(100).of(7), 7);
        assert_eq!(Amount::Count(3).of(10), 3);
    }

    #[test]
    fn a_submit_with_an_unknown_field_is_refused_and_named() {
        let err = serde_json::from_str::<DeploymentRequest>(
            r#"{"service": "s", "cluster": "c", "version": "1", "concurency": 2}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `concurency`") && err.contains("`concurrency`"), "{err}");
        let err = serde_json::from_str::<DeploymentRequest>(
            r#"{"service": "s", "cluster": "c", "version": "1", "selector": {"role": ["x"]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `role`"), "{err}");
    }

    #[test]
    fn stored_requests_with_newer_fields_still_read() {
        let stored = serde_json::json!({
            "service": "s", "cluster": "c", "version": "1", "canary": true, "from_the_future": 1,
            "selector": {"roles": ["web"], "zone": "a"}
        });
        let request = DeploymentRequest::from_stored(stored.clone()).unwrap();
        assert!(request.canary);
        assert_eq!(request.selector.unwrap().roles, ["web"]);
        assert_eq!(serde_json::from_value::<StoredRequest>(stored).unwrap().0.version, "1");
    }

    #[test]
    fn counters_change_over_a_window_and_a_reset_makes_them_a_lower_bound() {
        let before = Counters { response_errors: 2, retries: 1, ..Counters::default() };
        let after = Counters { response_errors: 5, retries: 1, http_5xx: 1, ..Counters::default() };
        let delta = after.since(&before);
        assert_eq!((delta.response_errors, delta.http_5xx, delta.total(), delta.reset), (3, 1, 4, false));
        assert_eq!(delta.to_string(), "3 response errors, 1 5xx");
        let reloaded = Counters { retries: 0, ..after }.since(&before);
        assert!(reloaded.reset && reloaded.to_string().ends_with("at least this many)"));
        assert_eq!(Counters::default().to_string(), "0 errors");
        assert_eq!(delta.plus(&delta).response_errors, 6);
    }
}
