//! The sandbox fleet: VMs with an sshd and a small HTTP app each.

use crate::{ScratchDir, run_script};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// A sandbox fleet of VMs, torn down on drop.
#[derive(Debug)]
pub struct Fleet {
    pub dir: ScratchDir,
    pub hosts: Vec<(String, String)>,
}

impl Fleet {
    pub fn up(n: usize) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("vf")?;
        let path = dir.path().to_string_lossy().into_owned();
        run_script("fleet.sh", &["up", &path, &n.to_string()])?;
        let hosts = std::fs::read_to_string(dir.path().join("hosts.tsv"))?
            .lines()
            .filter_map(|l| l.split_once('\t').map(|(n, a)| (n.to_owned(), a.to_owned())))
            .collect();
        Ok(Self { dir, hosts })
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    pub fn address(&self, name: &str) -> &str {
        self.hosts.iter().find(|(n, _)| n == name).map(|(_, a)| a.as_str()).unwrap_or("")
    }

    fn script(&self, verb: &str, args: &[&str]) -> anyhow::Result<String> {
        let path = self.dir.path().to_string_lossy().into_owned();
        let mut all = vec![verb, path.as_str()];
        all.extend_from_slice(args);
        run_script("fleet.sh", &all)
    }

    pub fn stop_sshd(&self, name: &str) -> anyhow::Result<()> {
        self.script("sshd-stop", &[name]).map(drop)
    }

    pub fn start_sshd(&self, name: &str) -> anyhow::Result<()> {
        self.script("sshd-start", &[name]).map(drop)
    }

    /// Runs a command inside a VM, as root.
    pub fn exec(&self, name: &str, command: &[&str]) -> anyhow::Result<String> {
        let mut args = vec![name];
        args.extend_from_slice(command);
        self.script("exec", &args)
    }

    /// What the VM's app says its version is.
    pub async fn served_version(&self, name: &str) -> anyhow::Result<String> {
        let url = format!("http://{}:8080/version", self.address(name));
        Ok(reqwest::get(&url).await?.text().await?.trim().to_owned())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let path = self.dir.path().to_string_lossy().into_owned();
        if let Err(e) = run_script("fleet.sh", &["down", &path]) {
            eprintln!("tearing the fleet down: {e:#}");
        }
    }
}

/// A host-key file for `fleet` in which two hosts' keys are swapped: both are "changed".
pub fn swapped_known_hosts(fleet: &Fleet, dir: &Path, a: &str, b: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(fleet.known_hosts())?;
    let key_of = |addr: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(addr))
            .map(|l| l.split_once(' ').map(|(_, k)| k.to_owned()).unwrap_or_default())
    };
    let (addr_a, addr_b) = (fleet.address(a), fleet.address(b));
    let (key_a, key_b) = (key_of(addr_a).context("no key")?, key_of(addr_b).context("no key")?);
    let swapped: Vec<String> = text
        .lines()
        .map(|l| match l.split_whitespace().next() {
            Some(addr) if addr == addr_a => format!("{addr_a} {key_b}"),
            Some(addr) if addr == addr_b => format!("{addr_b} {key_a}"),
            _ => l.to_owned(),
        })
        .collect();
    let path = dir.join("known_hosts.swapped");
    std::fs::write(&path, swapped.join("\n") + "\n")?;
    Ok(path)
}
