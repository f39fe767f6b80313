//! SSH connections to hosts and load balancers: one multiplexed master per host, with
//! strict host-key checking against the cluster's known_hosts file.

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use std::num::NonZeroUsize;
use std::path::Path;
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
}

/// Options for every connection, in place of the user's and the system's ssh_config
/// (a stray `~/.ssh/config` must not change how Vesemir connects):
/// - curve25519 first: the default post-quantum hybrid costs several times more CPU
///   per connection, and a rollout opens one connection per host;
/// - host keys only from the cluster's known_hosts file, never recorded or updated;
/// - keys only, never a password prompt.
const SSH_CONFIG: &str = "\
KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,sntrup761x25519-sha512@openssh.com
GlobalKnownHostsFile /dev/null
UpdateHostKeys no
HashKnownHosts no
ServerAliveCountMax 3
PasswordAuthentication no
KbdInteractiveAuthentication no
";

fn write_config(control_dir: &Path) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(control_dir)?;
    let path = control_dir.join("ssh_config");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(SSH_CONFIG) {
        // Written aside and renamed: concurrent connects never read half a file.
        let partial = control_dir.join(format!("ssh_config.{}", std::process::id()));
        std::fs::write(&partial, SSH_CONFIG)?;
        std::fs::rename(&partial, &path)?;
    }
    Ok(path)
}

pub async fn connect(ssh: &SshConfig, address: &str, control_dir: &Path) -> Result<Session, ConnectError> {
    let config =
        write_config(control_dir).map_err(|e| ConnectError::ControlDir(format!("{}: {e}", control_dir.display())))?;
    let mut builder = SessionBuilder::default();
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
    fn host_key_failures_are_recognised() {
        assert!(is_host_key_problem("Host key verification failed."));
        assert!(is_host_key_problem("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@"));
        assert!(!is_host_key_problem("connect to host 127.0.0.1 port 22: Connection refused"));
    }
}
