//! The configuration in force, and its reload on SIGHUP (`systemctl reload`).
//!
//! A reload reads the file again, with the same environment overrides and checks as at
//! start. A configuration that does not load is refused and logged, and the one in
//! force stays. Each deployment (and each API request) takes the configuration in
//! force when it starts and keeps it to the end. Services, clusters, webhooks and the
//! per-deployment worker settings take effect at once; what a process binds or
//! connects to at start (the API's address, the database, the queue, the worker's
//! prefetch) needs a restart, and a reload that changes it says so.

use super::{Config, ConfigError};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

#[derive(Debug)]
pub struct Live {
    /// The file it came from; None for a configuration built in memory (never reloaded).
    path: Option<PathBuf>,
    current: RwLock<Arc<Config>>,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this configuration was not read from a file")]
    NoFile,
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("{0}")]
    Refused(String),
}

impl Live {
    pub fn new(config: Config, path: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self { path, current: RwLock::new(Arc::new(config)) })
    }

    /// Loads the file, as at start.
    pub fn load(path: PathBuf) -> Result<Arc<Self>, ConfigError> {
        let config = Config::load(&path)?;
        Ok(Self::new(config, Some(path)))
    }

    /// The configuration in force now.
    pub fn get(&self) -> Arc<Config> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the file again and, if it loads and passes `check`, puts it in force.
    /// Returns the settings that changed but take effect only at a restart.
    pub fn reload(&self, check: impl Fn(&Config) -> Result<(), String>) -> Result<Vec<&'static str>, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let new = Config::load(path)?;
        check(&new).map_err(ReloadError::Refused)?;
        let pending = needs_restart(&self.get(), &new);
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        Ok(pending)
    }
}

/// The settings a running process read once, at start, that differ.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut differs = |name, same: bool| {
        if !same {
            changed.push(name);
        }
    };
    differs("api.listen", old.api.listen == new.api.listen);
    differs("api.outbox_interval_ms", old.api.outbox_interval_ms == new.api.outbox_interval_ms);
    differs(
        "database",
        old.database.url == new.database.url && old.database.max_connections == new.database.max_connections,
    );
    differs("queue", old.queue.url == new.queue.url && old.queue.queue == new.queue.queue);
    differs("worker.max_deployments", old.worker.max_deployments == new.worker.max_deployments);
    differs("worker.ssh_control_dir", old.worker.ssh_control_dir == new.worker.ssh_control_dir);
    differs("worker.ansible_playbook", old.worker.ansible_playbook == new.worker.ansible_playbook);
    changed
}

/// Makes SIGHUP harmless from the first moment of a process: its default action ends
/// the process, and a reload sent while it starts (before [`reload_on_hangup`]
/// listens) must not. Keep the returned value for the life of the process.
pub fn survive_hangups() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

/// Reloads `live` on every SIGHUP until `shutdown`, logging what happened.
pub async fn reload_on_hangup(
    live: Arc<Live>,
    check: impl Fn(&Config) -> Result<(), String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the configuration will not be reloaded");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = hangups.recv() => match live.reload(&check) {
                Ok(pending) if pending.is_empty() => tracing::info!("configuration reloaded"),
                Ok(pending) => tracing::warn!(
                    needs_restart = %pending.join(", "),
                    "configuration reloaded; these settings take effect only at a restart"
                ),
                Err(e) => tracing::error!(error = %e, "configuration reload refused; the one in force stays"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::MINIMAL as CONFIG;

    #[test]
    fn a_valid_file_is_put_in_force_and_an_invalid_one_leaves_the_old() {
        let dir = std::env::temp_dir().join(format!("vesemir-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vesemir.toml");
        std::fs::write(&path, CONFIG).unwrap();
        let live = Live::load(path.clone()).unwrap();
        let before = live.get();

        std::fs::write(&path, format!("{CONFIG}\n[services.billing]\nhealth = {{ url = \"http://x/h\" }}\n")).unwrap();
        assert_eq!(live.reload(|_| Ok(())).unwrap(), Vec::<&str>::new());
        assert!(live.get().services.contains_key("billing"));
        assert!(!before.services.contains_key("billing"), "what started keeps its configuration");

        std::fs::write(&path, "[services.broken\n").unwrap();
        assert!(matches!(live.reload(|_| Ok(())), Err(ReloadError::Invalid(_))));
        assert!(live.get().services.contains_key("billing"), "the old one stays in force");
        std::fs::write(&path, CONFIG).unwrap();
        assert!(matches!(live.reload(|_| Err("no".into())), Err(ReloadError::Refused(_))));
        assert!(live.get().services.contains_key("billing"));

        std::fs::write(&path, format!("[api]\nlisten = \"127.0.0.1:1\"\n{CONFIG}")).unwrap();
        assert_eq!(live.reload(|_| Ok(())).unwrap(), ["api.listen"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
