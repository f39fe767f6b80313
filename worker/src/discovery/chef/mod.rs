//! Chef discovery: a signed node search against a Chef Infra Server (or goiardi).
//!
//! The query is the cluster's base terms ANDed with the request's selector, escaped
//! (see [`vesemir_core::selector`]). A partial search asks only for the name and the
//! address attribute, in one page (partial rows are unsorted on some servers, so pages
//! could skip or repeat nodes); a full search pages with a rule that holds on real
//! Chef and on goiardi, whose `total` counts only the current page.

pub mod client;
pub mod sign;

use super::{DiscoveredHost, Discovery, DiscoveryError};
use client::{ChefClient, ChefError};
use futures_util::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};
use sign::{SignVersion, Signer};
use std::collections::BTreeMap;
use std::time::Duration;
use vesemir_core::config::ChefConfig;
use vesemir_core::selector;
use vesemir_model::deployment::{DeploymentRequest, is_address, is_host_name};

/// A full search stops after this many pages, whatever the server says.
const MAX_PAGES: u32 = 10_000;

#[derive(Debug)]
pub struct ChefDiscovery {
    client: ChefClient,
    base_query: Option<String>,
    address_attribute: Vec<String>,
    partial: bool,
    page_size: u32,
}

/// One node of a search answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub address: Option<String>,
}

impl ChefDiscovery {
    pub fn new(config: &ChefConfig) -> Result<Self, ChefError> {
        let version: SignVersion = config.sign_version.parse().map_err(ChefError::Config)?;
        let signer = Signer::load(&config.client_name, &config.client_key, version)?;
        let ca = match &config.ca_file {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| ChefError::Config(format!("ca_file {}: {e}", path.display())))?)
            }
            None => None,
        };
        let client = ChefClient::new(
            &config.server_url,
            signer,
            Duration::from_secs(config.timeout_seconds),
            config.retries,
            ca.as_deref(),
        )?;
        Ok(Self {
            client,
            base_query: config.base_query.clone(),
            address_attribute: config.address_attribute.split('.').map(str::to_owned).collect(),
            partial: config.partial_search,
            page_size: config.page_size,
        })
    }

    /// Every node matching `query`, deduplicated by name.
    pub async fn search(&self, query: &str) -> Result<Vec<Node>, DiscoveryError> {
        let nodes = if self.partial { self.partial_search(query).await? } else { self.full_search(query).await? };
        let mut by_name = BTreeMap::new();
        for node in nodes {
            by_name.entry(node.name.clone()).or_insert(node);
        }
        Ok(by_name.into_values().collect())
    }

    async fn partial_search(&self, query: &str) -> Result<Vec<Node>, DiscoveryError> {
        let body = json!({ "name": ["name"], "address": self.address_attribute });
        let params = [("q", query.to_owned()), ("rows", self.page_size.to_string()), ("start", "0".to_owned())];
        let page = self.client.request(Method::POST, "/search/node", &params, Some(&body), query).await?;
        let rows = rows(&page, query)?;
        if rows.len() >= self.page_size as usize {
            return Err(DiscoveryError::TooMany { query: query.to_owned(), limit: self.page_size });
        }
        rows.iter().filter(|row| !row.is_null()).map(|row| node(&row["data"], &["address".to_owned()], query)).collect()
    }

    async fn full_search(&self, query: &str) -> Result<Vec<Node>, DiscoveryError> {
        let mut nodes = Vec::new();
        let mut start: u64 = 0;
        for _ in 0..MAX_PAGES {
            let params = [("q", query.to_owned()), ("rows", self.page_size.to_string()), ("start", start.to_string())];
            let page = self.client.request(Method::GET, "/search/node", &params, None, query).await?;
            let rows = rows(&page, query)?;
            if rows.is_empty() {
                break;
            }
            for row in rows.iter().filter(|row| !row.is_null()) {
                nodes.push(node(row, &self.address_attribute, query)?);
            }
            // Real Chef's `total` counts every match; goiardi's counts this page. Going
            // on while either says there is more works on both, and never asks past
            // the end (goiardi drops the connection there).
            let next = start + u64::from(self.page_size);
            let total = page["total"].as_u64().unwrap_or(0);
            if !(next < total || rows.len() == self.page_size as usize) {
                break;
            }
            start = next;
        }
        Ok(nodes)
    }
}

fn rows<'a>(page: &'a Value, query: &str) -> Result<&'a Vec<Value>, DiscoveryError> {
    page["rows"].as_array().ok_or_else(|| {
        DiscoveryError::Chef(ChefError::Garbled {
            path: "/search/node".into(),
            message: format!("no rows for {query:?}"),
        })
    })
}

/// A node's name and address from a search row (a whole node, or partial `data`).
fn node(row: &Value, address_path: &[String], query: &str) -> Result<Node, DiscoveryError> {
    let name = row["name"].as_str().unwrap_or_default();
    if !is_host_name(name) {
        return Err(DiscoveryError::BadNode { query: query.to_owned(), name: name.to_owned() });
    }
    let address = attribute(row, address_path).and_then(Value::as_str).filter(|a| is_address(a)).map(str::to_owned);
    Ok(Node { name: name.to_owned(), address })
}

/// Looks an attribute up as Chef merges them: automatic, then override, normal and
/// default; a partial-search answer has it at the top.
fn attribute<'a>(row: &'a Value, path: &[String]) -> Option<&'a Value> {
    let lookup = |root: &'a Value| path.iter().try_fold(root, |v, key| v.get(key)).filter(|v| !v.is_null());
    ["automatic", "override", "normal", "default"]
        .iter()
        .find_map(|level| row.get(*level).and_then(lookup))
        .or_else(|| lookup(row))
}

impl Discovery for ChefDiscovery {
    fn discover<'a>(
        &'a self,
        request: &'a DeploymentRequest,
    ) -> BoxFuture<'a, Result<Vec<DiscoveredHost>, DiscoveryError>> {
        Box::pin(async move {
            let selector = request.selector.clone().unwrap_or_default();
            let query = selector::build(self.base_query.as_deref(), &selector)?;
            let nodes = self.search(&query).await?;
            let nodes: Vec<Node> = if request.hosts.is_empty() {
                nodes
            } else {
                if let Some(missing) = request.hosts.iter().find(|h| !nodes.iter().any(|n| &n.name == *h)) {
                    return Err(DiscoveryError::UnknownHost(missing.clone(), format!("the results of {query:?}")));
                }
                nodes.into_iter().filter(|n| request.hosts.contains(&n.name)).collect()
            };
            let without: Vec<&str> = nodes.iter().filter(|n| n.address.is_none()).map(|n| n.name.as_str()).collect();
            if !without.is_empty() {
                return Err(DiscoveryError::NoAddress {
                    nodes: without.join(", "),
                    attribute: self.address_attribute.join("."),
                });
            }
            if nodes.is_empty() {
                return Err(DiscoveryError::NoHosts(format!("the Chef search {query:?}")));
            }
            Ok(nodes
                .into_iter()
                .map(|n| DiscoveredHost { name: n.name, address: n.address.unwrap_or_default() })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn attributes_follow_chefs_precedence() {
        let row = json!({
            "name": "web-01",
            "default": {"ipaddress": "10.0.0.9", "cloud": {"local_ipv4": "10.1.0.1"}},
            "automatic": {"ipaddress": "10.0.0.1"},
        });
        assert_eq!(node(&row, &path("ipaddress"), "q").unwrap().address.as_deref(), Some("10.0.0.1"));
        assert_eq!(node(&row, &path("cloud.local_ipv4"), "q").unwrap().address.as_deref(), Some("10.1.0.1"));
        assert_eq!(node(&row, &path("fqdn"), "q").unwrap().address, None);
    }

    #[test]
    fn partial_rows_carry_the_address_at_the_top() {
        let data = json!({"name": "web-02", "address": "10.0.0.2"});
        assert_eq!(node(&data, &path("address"), "q").unwrap().address.as_deref(), Some("10.0.0.2"));
    }

    #[test]
    fn unsafe_names_are_errors_and_unsafe_addresses_are_no_address() {
        assert!(node(&json!({"name": "web;rm -rf /"}), &path("ipaddress"), "q").is_err());
        for hostile in ["10.0.0.3 -oProxyCommand=x", "-oProxyCommand=x", "a/b", ""] {
            let row = json!({"name": "web-03", "automatic": {"ipaddress": hostile}});
            assert_eq!(node(&row, &path("ipaddress"), "q").unwrap().address, None, "{hostile}");
        }
    }
}
