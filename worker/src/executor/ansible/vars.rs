//! What an ansible run is given: an inventory of the wave's hosts and an extra-vars
//! file with every command, URL and name rendered by Vesemir, all `!unsafe`.

use super::super::{HostJob, Journal, health_url, host_argv, render_command, server_name, values};
use std::path::Path;
use vesemir_core::config::{ClusterConfig, RuntimeApi};
use vesemir_model::deployment::{is_address, is_host_name};

/// A YAML scalar Ansible will not template, double-quoted with everything but
/// printable ASCII escaped: YAML parsers refuse some characters (DEL, C1 controls,
/// U+FFFE) even inside quotes, and an escape carries any of them intact.
fn unsafe_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 10);
    quoted.push_str("!unsafe \"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            ' '..='~' => quoted.push(c),
            '\n' => quoted.push_str("\\n"),
            c if u32::from(c) <= 0xFFFF => quoted.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => quoted.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    quoted.push('"');
    quoted
}

/// Per host: its rendered commands, health URL and load-balancer server name; for the
/// run: the load balancers, the health check and the request's rollout options.
pub(super) fn extra_vars(jobs: &[(HostJob<'_>, Journal)], ssh_options: &Path) -> Result<String, String> {
    let mut yaml = String::from("vesemir_hosts:\n");
    for (job, journal) in jobs {
        let values = values(job);
        let host_error = |e: vesemir_core::template::TemplateError| format!("{}: {e}", job.host.name);
        // As with native, the host enforces each step's timeout (the playbook's, else
        // the service's) and the deployment's lock.
        // An argument vector: Ansible runs it without a shell of its own.
        let command = |name: &str, step: &str| {
            let secs = job.release.playbook.timeout_of(step, job.release.service);
            if !job.release.service.vars.contains_key(name) {
                return Err(format!("the service has no {name} in its vars"));
            }
            let command = render_command(job, &values, &format!("{{{{{name}}}}}")).map_err(host_error)?;
            let argv: Vec<String> = host_argv(&journal.host_lock(), secs, job.release.service.shell, &command)
                .iter()
                .map(|a| unsafe_string(a))
                .collect();
            Ok(format!("[{}]", argv.join(", ")))
        };
        let server = server_name(job, &values).map_err(host_error)?.unwrap_or_default();
        yaml.push_str(&format!(
            "  {}:\n    install: {}\n    restart: {}\n    health_url: {}\n    server: {}\n",
            serde_json::to_string(&job.host.name).unwrap_or_default(),
            command("install_command", "install")?,
            command("restart_command", "restart")?,
            unsafe_string(&health_url(job, &values).map_err(host_error)?),
            unsafe_string(&server),
        ));
    }
    let Some((job, _)) = jobs.first() else { return Ok(yaml) };
    let health = &job.release.service.health;
    yaml.push_str(&format!(
        "vesemir_step_timeout: {}\nvesemir_health:\n  expected_status: {}\n  retries: {}\n  interval_seconds: {}\n  timeout_seconds: {}\n",
        longest_step(job) + 15,
        health.expected_status,
        health.retries.saturating_sub(1),
        health.interval_ms.div_ceil(1000),
        health.timeout_ms.div_ceil(1000).max(1),
    ));
    yaml.push_str(&format!(
        "vesemir_weight: {}\nvesemir_sleep_seconds: {}\n",
        job.release.request.weight.map_or("null".to_owned(), |w| w.min(100).to_string()),
        job.release.request.sleep_seconds.unwrap_or(0),
    ));
    yaml.push_str(&load_balancer_vars(job, ssh_options));
    Ok(yaml)
}

/// The load balancers the play drives, and where each one's tasks run: none when the
/// cluster has no load balancer or the service no `load_balancer` section.
fn load_balancer_vars(job: &HostJob<'_>, ssh_options: &Path) -> String {
    let Some(settings) =
        job.release.service.load_balancer.as_ref().filter(|_| !job.release.cluster.load_balancers.is_empty())
    else {
        return "vesemir_load_balancers: []\nvesemir_balancing: {}\n".to_owned();
    };
    let mut yaml = format!(
        "vesemir_balancing:\n  backend: {}\n  drain_timeout_seconds: {}\n  up_timeout_seconds: {}\n  poll_ms: {}\nvesemir_load_balancers:\n",
        unsafe_string(&settings.backend),
        settings.drain_timeout_seconds,
        settings.up_timeout_seconds,
        settings.poll_interval_ms,
    );
    for lb in &job.release.cluster.load_balancers {
        let (runtime_api, over_ssh) = match &lb.runtime_api {
            RuntimeApi::Tcp { address } => (address.clone(), None),
            RuntimeApi::Unix { path } => (path.to_string_lossy().into_owned(), None),
            RuntimeApi::Ssh { host, socket } => (socket.clone(), Some(host.as_str())),
        };
        yaml.push_str(&format!(
            "  - name: {}\n    runtime_api: {}\n    timeout_ms: {}\n",
            unsafe_string(&lb.name),
            unsafe_string(&runtime_api),
            lb.timeout_ms,
        ));
        if let Some(host) = over_ssh {
            yaml.push_str(&ssh_vars(job.release.cluster, host, ssh_options));
        }
    }
    yaml
}

/// How the module reaches a load balancer's socket over SSH: with the worker's one
/// set of SSH options for the cluster.
fn ssh_vars(cluster: &ClusterConfig, host: &str, ssh_options: &Path) -> String {
    format!(
        "    ssh:\n      host: {}\n      options_file: {}\n      connect_timeout: {}\n",
        unsafe_string(host),
        unsafe_string(&ssh_options.to_string_lossy()),
        cluster.ssh.connect_timeout_seconds,
    )
}

pub(super) fn inventory(jobs: &[(HostJob<'_>, Journal)]) -> Result<String, String> {
    let mut text = String::from("[targets]\n");
    for (job, _) in jobs {
        let (name, address) = (&job.host.name, &job.host.address);
        if !is_host_name(name) || !is_address(address) {
            return Err(format!("host {name:?} at {address:?} cannot go into an inventory"));
        }
        // The play delegates its local tasks to `localhost`: a target of that name
        // would take them over.
        if name == "localhost" {
            return Err("a host named localhost cannot be deployed with the ansible executor".to_owned());
        }
        text.push_str(&format!("{name} ansible_host={address}\n"));
    }
    Ok(text)
}

/// The longest of the steps the play runs on the host.
pub(super) fn longest_step(job: &HostJob<'_>) -> u64 {
    job.release
        .playbook
        .timeout_of("install", job.release.service)
        .max(job.release.playbook.timeout_of("restart", job.release.service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_for_ansible_are_unsafe_and_quoted() {
        assert_eq!(
            unsafe_string("echo '{{ lookup(\"pipe\", \"id\") }}'"),
            r#"!unsafe "echo '{{ lookup(\"pipe\", \"id\") }}'""#
        );
        assert_eq!(unsafe_string("a\nb"), r#"!unsafe "a\nb""#);
    }

    #[test]
    fn characters_yaml_refuses_raw_are_escaped() {
        assert_eq!(unsafe_string("\u{7f}\u{85}\u{fffe}é\t"), r#"!unsafe "\u007F\u0085\uFFFE\u00E9\u0009""#);
        assert_eq!(unsafe_string("🦀 \\"), r#"!unsafe "\U0001F980 \\""#);
    }
}
