//! Discovery turns a request's selector into the hosts to deploy to.
//!
//! Each cluster names its source in the configuration. Zero hosts is an error that says
//! what was searched, never an empty success.

pub mod chef;
mod static_list;

pub use static_list::StaticDiscovery;

use futures_util::future::BoxFuture;
use vesemir_core::config::{ClusterConfig, DiscoveryKind};
use vesemir_core::deployment::DeploymentRequest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredHost {
    pub name: String,
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no hosts matched {0}")]
    NoHosts(String),
    #[error("host {0:?} is not in cluster {1}")]
    UnknownHost(String, String),
}

pub trait Discovery: Send + Sync {
    fn discover<'a>(
        &'a self,
        request: &'a DeploymentRequest,
    ) -> BoxFuture<'a, Result<Vec<DiscoveredHost>, DiscoveryError>>;
}

/// The discovery source a cluster's configuration names.
pub fn for_cluster(name: &str, cluster: &ClusterConfig) -> Box<dyn Discovery> {
    match cluster.discovery {
        DiscoveryKind::Static => Box::new(StaticDiscovery::new(name, &cluster.hosts)),
    }
}
