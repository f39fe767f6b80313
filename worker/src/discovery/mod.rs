//! Discovery turns a request's selector into the hosts to deploy to.
//!
//! Each cluster names its source in the configuration. Zero hosts is an error that says
//! what was searched, never an empty success.

pub mod chef;
mod static_list;

pub use static_list::StaticDiscovery;

use futures_util::future::BoxFuture;
use vesemir_core::config::{ClusterConfig, DiscoveryKind};
use vesemir_model::deployment::DeploymentRequest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredHost {
    pub name: String,
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no hosts matched {0}")]
    NoHosts(String),
    #[error("host {0:?} is not in {1}")]
    UnknownHost(String, String),
    #[error(transparent)]
    Query(#[from] vesemir_core::selector::QueryError),
    #[error(transparent)]
    Chef(#[from] chef::client::ChefError),
    #[error("more than {limit} nodes match {query:?}: raise the cluster's chef.page_size or narrow the selector")]
    TooMany { query: String, limit: u32 },
    #[error("a node matching {query:?} has a name Vesemir cannot use: {name:?}")]
    BadNode { query: String, name: String },
    #[error(
        "nodes without a usable address (attribute {attribute}): {nodes}. Fix their Chef data or narrow the selector"
    )]
    NoAddress { nodes: String, attribute: String },
}

pub trait Discovery: Send + Sync + std::fmt::Debug {
    fn discover<'a>(
        &'a self,
        request: &'a DeploymentRequest,
    ) -> BoxFuture<'a, Result<Vec<DiscoveredHost>, DiscoveryError>>;
}

/// The discovery source a cluster's configuration names.
pub fn for_cluster(name: &str, cluster: &ClusterConfig) -> Result<Box<dyn Discovery>, DiscoveryError> {
    Ok(match (cluster.discovery, &cluster.chef) {
        (DiscoveryKind::Chef, Some(chef)) => Box::new(chef::ChefDiscovery::new(chef)?),
        (DiscoveryKind::Chef, None) => {
            return Err(chef::client::ChefError::Config(format!("cluster {name} has no chef section")).into());
        }
        (DiscoveryKind::Static, _) => Box::new(StaticDiscovery::new(name, &cluster.hosts)),
    })
}
