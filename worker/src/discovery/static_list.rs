//! Static discovery: the cluster's host list from the configuration, narrowed to the
//! request's `hosts` when it names some.

use super::{DiscoveredHost, Discovery, DiscoveryError};
use futures_util::future::BoxFuture;
use vesemir_core::config::StaticHost;
use vesemir_model::deployment::DeploymentRequest;

#[derive(Debug)]
pub struct StaticDiscovery {
    cluster: String,
    hosts: Vec<StaticHost>,
}

impl StaticDiscovery {
    pub fn new(cluster: &str, hosts: &[StaticHost]) -> Self {
        Self { cluster: cluster.to_owned(), hosts: hosts.to_vec() }
    }

    fn select(&self, request: &DeploymentRequest) -> Result<Vec<DiscoveredHost>, DiscoveryError> {
        for wanted in &request.hosts {
            if !self.hosts.iter().any(|h| &h.name == wanted) {
                return Err(DiscoveryError::UnknownHost(wanted.clone(), format!("cluster {}", self.cluster)));
            }
        }
        let hosts: Vec<DiscoveredHost> = self
            .hosts
            .iter()
            .filter(|h| request.hosts.is_empty() || request.hosts.contains(&h.name))
            .map(|h| DiscoveredHost { name: h.name.clone(), address: h.address.clone() })
            .collect();
        if hosts.is_empty() {
            return Err(DiscoveryError::NoHosts(format!("the static host list of cluster {}", self.cluster)));
        }
        Ok(hosts)
    }
}

impl Discovery for StaticDiscovery {
    fn discover<'a>(
        &'a self,
        request: &'a DeploymentRequest,
    ) -> BoxFuture<'a, Result<Vec<DiscoveredHost>, DiscoveryError>> {
        Box::pin(async move { self.select(request) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(hosts: &[&str]) -> DeploymentRequest {
        serde_json::from_value(serde_json::json!({
            "service": "demo", "cluster": "c", "version": "1", "hosts": hosts
        }))
        .expect("valid request")
    }

    fn discovery(names: &[&str]) -> StaticDiscovery {
        let hosts: Vec<StaticHost> =
            names.iter().map(|n| StaticHost { name: (*n).to_owned(), address: format!("{n}.example") }).collect();
        StaticDiscovery::new("c", &hosts)
    }

    #[test]
    fn all_hosts_when_the_request_names_none() {
        let hosts = discovery(&["a", "b"]).select(&request(&[])).unwrap();
        assert_eq!(hosts.len(), 2);
    }

    #[test]
    fn the_request_narrows_the_list() {
        let hosts = discovery(&["a", "b", "c"]).select(&request(&["b"])).unwrap();
        assert_eq!(hosts, [DiscoveredHost { name: "b".into(), address: "b.example".into() }]);
    }

    #[test]
    fn an_unknown_host_or_an_empty_list_is_an_error() {
        assert!(matches!(discovery(&["a"]).select(&request(&["z"])), Err(DiscoveryError::UnknownHost(..))));
        assert!(matches!(discovery(&[]).select(&request(&[])), Err(DiscoveryError::NoHosts(_))));
    }
}
