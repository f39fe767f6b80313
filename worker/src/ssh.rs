//! SSH connections to hosts and load balancers: one multiplexed master per host, with
//! strict host-key checking against the cluster's known_hosts file.

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vesemir_core::config::SshConfig;

/// A master connection idle this long exits by itself, so a crashed worker leaves no
/// ssh process behind for long.
const CONTROL_IDLE_SECONDS: usize = 60;

/// Why a connection could not be made; each says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "host key verification failed for {address}: its key is unknown or has changed. \
         Verify the host and update {known_hosts} if the change is expected ({detail})"
    )]
    HostKey { address: String, known_hosts: String, detail: String },
    #[error("ssh authentication as {user} failed on {address}: is the key authorised for that user? ({detail})")]
    Auth { user: String, address: String, detail: String },
    #[error("cannot connect over ssh to {address}: {detail}")]
    Unreachable { address: String, detail: String },
    #[error("cannot create the ssh control directory {0}")]
    ControlDir(String),
    #[error("the cluster's ssh settings: {0}")]
    Options(String),
}

/// The one set of options for every SSH connection Vesemir makes (the native
/// executor, load balancers reached over SSH, and Ansible with its HAProxy module), in
/// a file passed with `-F`, which shuts out the user's `~/.ssh/config` and the
/// system's `ssh_config`:
/// - host keys only from the cluster's known_hosts file, never recorded or updated;
/// - the cluster's key only, never a password, a keyboard-interactive prompt or an
///   agent's keys;
/// - curve25519 first: the default post-quantum hybrid costs several times more CPU
///   per connection, and a rollout opens one connection per host;
/// - no forwarding, no proxy, no local command.
pub fn options(ssh: &SshConfig) -> Result<String, ConnectError> {
    Ok(format!(
        "# Written by vesemir-worker: every SSH connection it makes uses these options.\n\
         Host *\n\
         \x20 User {user}\n\
         \x20 Port {port}\n\
         \x20 IdentityFile {key}\n\
         \x20 IdentitiesOnly yes\n\
         \x20 IdentityAgent none\n\
         \x20 UserKnownHostsFile {known_hosts}\n\
         \x20 GlobalKnownHostsFile /dev/null\n\
         \x20 StrictHostKeyChecking yes\n\
         \x20 UpdateHostKeys no\n\
         \x20 HashKnownHosts no\n\
         \x20 CheckHostIP no\n\
         \x20 KexAlgorithms {KEX_ALGORITHMS}\n\
         \x20 PreferredAuthentications publickey\n\
         \x20 PasswordAuthentication no\n\
         \x20 KbdInteractiveAuthentication no\n\
         \x20 BatchMode yes\n\
         \x20 ConnectTimeout {connect_timeout}\n\
         \x20 ServerAliveInterval {keepalive}\n\
         \x20 ServerAliveCountMax 3\n\
         \x20 ForwardAgent no\n\
         \x20 ForwardX11 no\n\
         \x20 PermitLocalCommand no\n\
         \x20 ProxyCommand none\n\
         \x20 ProxyJump none\n",
        user = config_word(&ssh.user)?,
        port = ssh.port,
        key = config_word(&ssh.private_key.to_string_lossy())?,
        known_hosts = config_word(&ssh.known_hosts.to_string_lossy())?,
        connect_timeout = ssh.connect_timeout_seconds,
        keepalive = ssh.keepalive_seconds,
    ))
}

const KEX_ALGORITHMS: &str = "curve25519-sha256,curve25519-sha256@libssh.org,sntrup761x25519-sha512@openssh.com";

/// A value for an ssh_config line: double-quoted, with `%` escaped (ssh expands
/// `%` tokens in file names); a value with a quote or a line break cannot be written.
fn config_word(value: &str) -> Result<String, ConnectError> {
    if value.contains(['"', '\n', '\r']) {
        return Err(ConnectError::Options(format!("{value:?} cannot be written in an ssh configuration")));
    }
    Ok(format!("\"{}\"", value.replace('%', "%%")))
}

/// Writes [`options`] for these settings into `control_dir` (once: the file is named
/// after its content) and returns its path, for `ssh -F`.
pub fn options_file(ssh: &SshConfig, control_dir: &Path) -> Result<PathBuf, ConnectError> {
    let text = options(ssh)?;
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&text, &mut hasher);
    let path = control_dir.join(format!("ssh_config-{:016x}", std::hash::Hasher::finish(&hasher)));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        let written = (|| {
            std::fs::create_dir_all(control_dir)?;
            // Written aside and renamed: concurrent connects never read half a file.
            let partial = control_dir.join(format!("ssh_config.{}", std::process::id()));
            std::fs::write(&partial, &text)?;
            std::fs::rename(&partial, &path)
        })();
        written.map_err(|e| ConnectError::ControlDir(format!("{}: {e}", control_dir.display())))?;
    }
    Ok(path)
}

pub async fn connect(ssh: &SshConfig, address: &str, control_dir: &Path) -> Result<Session, ConnectError> {
    let config = options_file(ssh, control_dir)?;
    let mut builder = SessionBuilder::default();
    // The crate passes some options on the command line too: the same values.
    builder
        .config_file(&config)
        .user(ssh.user.clone())
        .port(ssh.port)
        .keyfile(&ssh.private_key)
        .known_hosts_check(KnownHosts::Strict)
        .user_known_hosts_file(&ssh.known_hosts)
        .connect_timeout(Duration::from_secs(ssh.connect_timeout_seconds))
        .server_alive_interval(Duration::from_secs(ssh.keepalive_seconds))
        .control_directory(control_dir)
        .control_persist(ControlPersist::IdleFor(NonZeroUsize::new(CONTROL_IDLE_SECONDS).unwrap_or(NonZeroUsize::MIN)));
    // ssh's own ConnectTimeout covers the TCP connect; this bounds the handshake too.
    let limit = Duration::from_secs(ssh.connect_timeout_seconds * 2 + 5);
    let detail = match tokio::time::timeout(limit, builder.connect_mux(address)).await {
        Ok(Ok(session)) => return Ok(session),
        Ok(Err(e)) => error_text(&e),
        Err(_) => format!("connecting timed out after {}s", limit.as_secs()),
    };
    let address = address.to_owned();
    Err(if is_host_key_problem(&detail) {
        ConnectError::HostKey { address, known_hosts: ssh.known_hosts.display().to_string(), detail }
    } else if detail.contains("Permission denied") {
        ConnectError::Auth { user: ssh.user.clone(), address, detail }
    } else {
        ConnectError::Unreachable { address, detail }
    })
}

/// An openssh error with its causes, on one line.
pub fn error_text(error: &openssh::Error) -> String {
    crate::error_chain(error)
}

pub fn is_host_key_problem(ssh_error: &str) -> bool {
    ["Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED", "host key is known"]
        .iter()
        .any(|needle| ssh_error.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_shut_out_passwords_prompts_agents_and_unknown_host_keys() {
        let ssh = SshConfig {
            user: "deploy".to_owned(),
            private_key: "/etc/vesemir/keys/100%.key".into(),
            known_hosts: "/etc/vesemir/known hosts".into(),
            port: 2222,
            connect_timeout_seconds: 7,
            keepalive_seconds: 5,
        };
        let text = options(&ssh).unwrap();
        for line in [
            "  Port 2222",
            "  IdentityFile \"/etc/vesemir/keys/100%%.key\"",
            "  UserKnownHostsFile \"/etc/vesemir/known hosts\"",
            "  StrictHostKeyChecking yes",
            "  PasswordAuthentication no",
            "  KbdInteractiveAuthentication no",
            "  IdentityAgent none",
            "  BatchMode yes",
            "  ConnectTimeout 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        let hostile = SshConfig { user: "x\"\n  ProxyCommand sh".to_owned(), ..ssh };
        assert!(options(&hostile).is_err());
    }

    #[test]
    fn host_key_failures_are_recognised() {
        assert!(is_host_key_problem("Host key verification failed."));
        assert!(is_host_key_problem("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@"));
        assert!(!is_host_key_problem("connect to host 127.0.0.1 port 22: Connection refused"));
    }
}
