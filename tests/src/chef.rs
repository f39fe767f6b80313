//! A throwaway Chef-compatible server (goiardi) with clients and nodes, for discovery.

use crate::{ScratchDir, run_script};
use serde_json::Value;

/// goiardi, stopped on drop.
#[derive(Debug)]
pub struct ChefServer {
    pub dir: ScratchDir,
    pub url: String,
}

impl ChefServer {
    pub fn start() -> anyhow::Result<Self> {
        let dir = ScratchDir::new("vc")?;
        let out = run_script("goiardi.sh", &["start", &dir.path().to_string_lossy()])?;
        let url = out.lines().find_map(|l| l.strip_prefix("url=")).unwrap_or_default().to_owned();
        Ok(Self { dir, url })
    }

    fn dir(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    /// Creates an API client; returns the path of its private key.
    pub fn client(&self, name: &str) -> anyhow::Result<String> {
        let out = run_script("goiardi.sh", &["client", &self.dir(), name])?;
        Ok(out.lines().find_map(|l| l.strip_prefix("key=")).unwrap_or_default().to_owned())
    }

    pub fn node(&self, name: &str, attributes: &Value) -> anyhow::Result<()> {
        run_script("goiardi.sh", &["node", &self.dir(), name, &attributes.to_string()]).map(drop)
    }

    /// Waits until a search for `query` finds at least `n` nodes (the index lags).
    pub fn wait_searchable(&self, query: &str, n: usize) -> anyhow::Result<()> {
        run_script("goiardi.sh", &["wait-searchable", &self.dir(), query, &n.to_string()]).map(drop)
    }
}

impl Drop for ChefServer {
    fn drop(&mut self) {
        let _ = run_script("goiardi.sh", &["stop", &self.dir()]);
    }
}
