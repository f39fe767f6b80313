//! Checks a submit against the configuration before anything is stored. Every refusal
//! names the field and what would be accepted.

use crate::error::ApiError;
use std::collections::BTreeSet;
use vesemir_core::config::{ANSIBLE_PLAYBOOK, Config, DiscoveryKind};
use vesemir_core::{selector, template};
use vesemir_model::deployment::{Amount, DeploymentRequest, ExecutorKind, is_host_name, is_identifier, is_version};

const MAX_HOSTS: usize = 10_000;
const MAX_VARS: usize = 64;
const MAX_VAR_BYTES: usize = 4096;
const MAX_SLEEP_SECONDS: u32 = 3600;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

pub fn request(config: &Config, r: &DeploymentRequest) -> Result<(), ApiError> {
    let Some(service) = config.services.get(&r.service) else {
        return Err(bad("unknown_service", format!("service {:?} is not configured", r.service)));
    };
    if r.executor == Some(ExecutorKind::Ansible) && service.playbook != ANSIBLE_PLAYBOOK {
        return Err(bad(
            "invalid_executor",
            format!(
                "service {} runs playbook {:?}, which only the native executor runs (the ansible executor runs the {ANSIBLE_PLAYBOOK} playbook)",
                r.service, service.playbook
            ),
        ));
    }
    if r.verify && !r.dry_run {
        return Err(bad("invalid_verify", "verify asks the hosts only in a dry run: set dry_run too"));
    }
    if r.verify && service.version_command.is_none() {
        return Err(bad(
            "invalid_verify",
            format!("service {} has no version_command to ask its hosts with", r.service),
        ));
    }
    let Some(cluster) = config.clusters.get(&r.cluster) else {
        return Err(bad("unknown_cluster", format!("cluster {:?} is not configured", r.cluster)));
    };
    if !is_version(&r.version) {
        return Err(bad(
            "invalid_version",
            "version must be 1 to 128 letters, digits or . _ + -, starting with a letter or digit",
        ));
    }

    if r.hosts.len() > MAX_HOSTS {
        return Err(bad("invalid_hosts", format!("at most {MAX_HOSTS} hosts may be named")));
    }
    let mut seen = BTreeSet::new();
    for host in &r.hosts {
        if !is_host_name(host) {
            return Err(bad("invalid_hosts", format!("host name {host:?} must match [A-Za-z0-9][A-Za-z0-9._-]*")));
        }
        if !seen.insert(host) {
            return Err(bad("invalid_hosts", format!("host {host:?} is named twice")));
        }
    }
    match cluster.discovery {
        DiscoveryKind::Static => {
            if r.selector.is_some() {
                return Err(bad(
                    "invalid_selector",
                    format!("cluster {} has a static host list: name hosts instead of a selector", r.cluster),
                ));
            }
            if let Some(unknown) = r.hosts.iter().find(|h| !cluster.hosts.iter().any(|c| &&c.name == h)) {
                return Err(bad("unknown_host", format!("host {unknown:?} is not in cluster {}", r.cluster)));
            }
        }
        DiscoveryKind::Chef => {
            if let Some(selector) = &r.selector {
                selector::validate(selector).map_err(|e| bad("invalid_selector", e.to_string()))?;
            }
        }
    }

    match r.concurrency {
        Amount::Count(0) | Amount::Percent(0) => {
            return Err(bad("invalid_concurrency", "concurrency must be at least 1 host or 1%"));
        }
        Amount::Count(n) if n as usize > MAX_HOSTS => {
            return Err(bad("invalid_concurrency", format!("concurrency must be at most {MAX_HOSTS}")));
        }
        _ => {}
    }
    if let Some(weight) = r.weight
        && !(1..=100).contains(&weight)
    {
        return Err(bad("invalid_weight", "weight is a percentage of the full weight, from 1 to 100"));
    }
    if r.sleep_seconds.is_some_and(|s| s > MAX_SLEEP_SECONDS) {
        return Err(bad("invalid_sleep_seconds", format!("sleep_seconds must be at most {MAX_SLEEP_SECONDS}")));
    }
    if r.vars.len() > MAX_VARS {
        return Err(bad("invalid_vars", format!("at most {MAX_VARS} vars")));
    }
    for (name, value) in &r.vars {
        if !is_identifier(name) {
            return Err(bad("invalid_vars", format!("var name {name:?} must match [a-z0-9][a-z0-9._-]{{0,62}}")));
        }
        if value.len() > MAX_VAR_BYTES {
            return Err(bad("invalid_vars", format!("var {name} is longer than {MAX_VAR_BYTES} bytes")));
        }
        if value.contains('\0') {
            return Err(bad("invalid_vars", format!("var {name} contains a NUL byte")));
        }
    }
    // Each var reaches commands as an environment variable; two must not share one.
    let mut env = std::collections::BTreeMap::new();
    for name in r.vars.keys() {
        if let Some(other) = env.insert(template::env_name(&format!("vars.{name}")), name) {
            return Err(bad(
                "invalid_vars",
                format!("vars {other} and {name} differ only in . - _ and would reach commands as one variable"),
            ));
        }
    }
    Ok(())
}

/// `Idempotency-Key`: 1 to 200 visible ASCII characters.
pub fn idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 200 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("invalid_idempotency_key", "Idempotency-Key must be 1 to 200 visible ASCII characters"));
    }
    Ok(())
}
