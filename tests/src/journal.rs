//! What the hosts themselves saw: a service whose install and restart commands note on
//! the host when each starts and ends, so a test can tell whether two claims ever ran
//! commands on one host at once (two starts in a row), whatever the database says.

use crate::ScratchDir;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// The notes, one file per host, in a directory the hosts write to (the sandbox VMs
/// share the machine's /tmp).
#[derive(Debug)]
pub struct HostJournal {
    dir: ScratchDir,
}

impl HostJournal {
    pub fn new() -> anyhow::Result<Self> {
        let dir = ScratchDir::new("vj")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let script = format!(
            r#"#!/bin/sh
# step.sh ACTION HOST [VERSION]: runs the sandbox app's ACTION, noting its start and end.
log={dir}/$2.log
echo "start $1" >>"$log"
case $1 in
    install) sleep "${{INSTALL_SECONDS:-{install_seconds}}}"; /opt/sandbox-app/bin/install "$3" ;;
    restart) /opt/sandbox-app/bin/restart ;;
esac
status=$?
echo "end $1" >>"$log"
exit $status
"#,
            dir = dir.path().display(),
            install_seconds = 8,
        );
        let journal = Self { dir };
        std::fs::write(journal.script(), script)?;
        std::fs::set_permissions(journal.script(), std::fs::Permissions::from_mode(0o755))?;
        Ok(journal)
    }

    fn script(&self) -> PathBuf {
        self.dir.path().join("step.sh")
    }

    /// Configuration of a service `name` that deploys the sandbox app through the
    /// journal, its install taking `install_seconds`, behind `backend` if given.
    pub fn service(&self, name: &str, install_seconds: u32, backend: Option<&str>) -> String {
        let balancing = backend.map_or(String::new(), |backend| {
            format!(
                "[services.{name}.load_balancer]\nbackend = {backend:?}\ndrain_timeout_seconds = 10\n\
                 up_timeout_seconds = 20\npoll_interval_ms = 50\n"
            )
        });
        format!(
            r#"
[services.{name}]
step_timeout_seconds = 60
[services.{name}.vars]
install_command = "INSTALL_SECONDS={install_seconds} {script} install {{{{host.name}}}} {{{{version}}}}"
restart_command = "{script} restart {{{{host.name}}}}"
[services.{name}.health]
url = "http://{{{{host.address}}}}:8080/health"
{balancing}"#,
            script = self.script().display()
        )
    }

    /// Everything noted on `host`, in order.
    pub fn notes(&self, host: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{host}.log"))).unwrap_or_default()
    }

    /// How many times `action` started on `host`.
    pub fn starts(&self, host: &str, action: &str) -> usize {
        self.notes(host).matches(&format!("start {action}")).count()
    }

    /// Waits until `action` started on `host`.
    pub async fn wait_started(&self, host: &str, action: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.starts(host, action) == 0 {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "{action} never started on {host}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The moments a command started on `host` while another still ran there.
    pub fn overlaps(&self, host: &str) -> usize {
        let mut open = false;
        let mut overlaps = 0;
        for line in self.notes(host).lines() {
            if line.starts_with("start ") {
                overlaps += usize::from(open);
                open = true;
            } else {
                open = false;
            }
        }
        overlaps
    }
}
