//! What runs where: every host of a service on a cluster, with the version Vesemir
//! last put on it and where it left the host's server in the load balancers.

use crate::deployment::{AdminState, HostState};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The hosts of one target (a service on a cluster).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Inventory {
    pub service: String,
    pub cluster: String,
    /// The version most hosts run; null when no deployment has succeeded on any.
    pub version: Option<String>,
    /// By name.
    pub hosts: Vec<HostRecord>,
}

/// One host as Vesemir's records have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostRecord {
    pub name: String,
    pub address: String,
    /// The version of the last deployment that succeeded on the host; null if none has.
    pub version: Option<String>,
    /// That deployment.
    pub deployment_id: Option<Uuid>,
    /// When the host finished that deployment.
    #[serde(serialize_with = "crate::timestamp::optional::serialize")]
    pub deployed_at: Option<DateTime<Utc>>,
    /// The last deployment that started on the host, and how the host ended there (a
    /// later failure leaves `version` as it was).
    pub last_deployment_id: Option<Uuid>,
    pub last_state: Option<HostState>,
    /// Where Vesemir last left the host's server in the load balancers; null if it
    /// never touched it.
    pub load_balancer: Option<AdminState>,
    /// On another version than most of the target's hosts (or on none while they are).
    pub drift: bool,
    /// What the host itself said when last asked (`version_command`, `vesemir hosts
    /// --verify`): the last line it printed; null if it was never asked or failed.
    #[serde(default)]
    pub reported_version: Option<String>,
    /// When it was asked, and by which verification (a dry run with `verify`).
    #[serde(default)]
    #[serde(serialize_with = "crate::timestamp::optional::serialize")]
    pub verified_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub verified_by: Option<Uuid>,
    /// The host's answer differs from the record: it was changed behind Vesemir's
    /// back (or the command failed).
    #[serde(default)]
    pub disagrees: bool,
}

impl HostRecord {
    /// A host no deployment has started on yet (a static cluster lists it).
    pub fn unrecorded(name: &str, address: &str) -> Self {
        Self {
            name: name.to_owned(),
            address: address.to_owned(),
            version: None,
            deployment_id: None,
            deployed_at: None,
            last_deployment_id: None,
            last_state: None,
            load_balancer: None,
            drift: false,
            reported_version: None,
            verified_at: None,
            verified_by: None,
            disagrees: false,
        }
    }
}

impl Inventory {
    /// Builds the view from the hosts' records: the target's version is the one most
    /// hosts run (ties to the newest deployment's), and every host off it is drift.
    pub fn new(service: String, cluster: String, mut hosts: Vec<HostRecord>) -> Self {
        let mut runs: BTreeMap<&str, (usize, Option<DateTime<Utc>>)> = BTreeMap::new();
        for host in &hosts {
            if let Some(version) = &host.version {
                let entry = runs.entry(version).or_default();
                entry.0 += 1;
                entry.1 = entry.1.max(host.deployed_at);
            }
        }
        let version = runs.iter().max_by_key(|(_, (count, newest))| (*count, *newest)).map(|(v, _)| (*v).to_owned());
        for host in &mut hosts {
            host.drift = version.is_some() && host.version != version;
            host.disagrees = host.verified_by.is_some() && host.reported_version != host.version;
        }
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        Self { service, cluster, version, hosts }
    }

    pub fn drifted(&self) -> impl Iterator<Item = &HostRecord> {
        self.hosts.iter().filter(|h| h.drift)
    }

    /// Hosts whose own answer differs from the record.
    pub fn disagreeing(&self) -> impl Iterator<Item = &HostRecord> {
        self.hosts.iter().filter(|h| h.disagrees)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, version: Option<&str>, at: i64) -> HostRecord {
        HostRecord {
            version: version.map(str::to_owned),
            deployed_at: DateTime::from_timestamp(at, 0),
            ..HostRecord::unrecorded(name, "10.0.0.1")
        }
    }

    #[test]
    fn hosts_off_the_version_most_hosts_run_are_drift() {
        let view = Inventory::new(
            "s".into(),
            "c".into(),
            vec![host("c", Some("1"), 1), host("a", Some("2"), 2), host("b", Some("1"), 1), host("d", None, 0)],
        );
        assert_eq!(view.version.as_deref(), Some("1"));
        let drifted: Vec<&str> = view.drifted().map(|h| h.name.as_str()).collect();
        assert_eq!(drifted, ["a", "d"], "sorted by name; a host never deployed is drift too");
    }

    #[test]
    fn a_host_asked_that_answers_another_version_disagrees() {
        let asked = |reported: Option<&str>| HostRecord {
            reported_version: reported.map(str::to_owned),
            verified_by: Some(Uuid::nil()),
            ..host("a", Some("1"), 1)
        };
        let view = Inventory::new("s".into(), "c".into(), vec![asked(Some("1")), host("b", Some("1"), 1)]);
        assert_eq!(view.disagreeing().count(), 0, "agreeing, or never asked");
        let view = Inventory::new("s".into(), "c".into(), vec![asked(Some("9"))]);
        assert_eq!(view.disagreeing().count(), 1);
        let view = Inventory::new("s".into(), "c".into(), vec![asked(None)]);
        assert_eq!(view.disagreeing().count(), 1, "a host that could not answer");
    }

    #[test]
    fn a_tie_goes_to_the_newer_version_and_no_history_is_no_drift() {
        let view = Inventory::new("s".into(), "c".into(), vec![host("a", Some("1"), 1), host("b", Some("2"), 5)]);
        assert_eq!(view.version.as_deref(), Some("2"));
        let empty = Inventory::new("s".into(), "c".into(), vec![host("a", None, 0)]);
        assert_eq!((empty.version, empty.hosts[0].drift), (None, false));
    }
}
