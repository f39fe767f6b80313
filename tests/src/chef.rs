//! A throwaway Chef-compatible server (goiardi) with clients and nodes, for discovery.

use crate::{ScratchDir, run_script};
use reqwest::Method;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use vesemir_worker::discovery::chef::client::ChefClient;
use vesemir_worker::discovery::chef::sign::{SignVersion, Signer};

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

/// A node as a Chef run would leave it: roles expanded into `automatic.roles`.
pub fn node_json(name: &str, environment: &str, roles: &[&str], tags: &[&str], address: Option<&str>) -> Value {
    let mut automatic = serde_json::json!({ "roles": roles, "fqdn": format!("{name}.sandbox.test") });
    if let Some(address) = address {
        automatic["ipaddress"] = Value::from(address);
    }
    serde_json::json!({
        "name": name,
        "chef_type": "node",
        "json_class": "Chef::Node",
        "chef_environment": environment,
        "run_list": roles.iter().map(|r| format!("role[{r}]")).collect::<Vec<_>>(),
        "normal": { "tags": tags },
        "automatic": automatic,
        "default": {},
        "override": {},
    })
}

impl ChefServer {
    /// A client signed as the server's admin.
    pub fn admin(&self) -> anyhow::Result<ChefClient> {
        let signer = Signer::load("admin", &self.dir.path().join("admin.pem"), SignVersion::V1_3)?;
        Ok(ChefClient::new(&self.url, signer, Duration::from_secs(30), 2, None)?)
    }

    /// Creates many nodes quickly (signed requests, several at a time).
    pub async fn seed(&self, nodes: Vec<Value>) -> anyhow::Result<()> {
        let admin = Arc::new(self.admin()?);
        let permits = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for node in nodes {
            let (admin, permits) = (admin.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire().await?;
                admin.request(Method::POST, "/nodes", &[], Some(&node), "").await?;
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    }
}
