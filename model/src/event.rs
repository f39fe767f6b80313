//! Lines about a change carry the change as data: one typed event per kind, the
//! `type` field naming it on the wire (and the event name in the API's stream).

use crate::deployment::{AdminState, DeploymentState, HostState, StepState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The deployment changed state; a final state ends the stream.
    State {
        state: DeploymentState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A host started (with its wave) or ended (with where it was left).
    Host {
        host: String,
        state: HostState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wave: Option<i32>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        load_balancer: Option<AdminState>,
    },
    /// Where Vesemir now means the host's server to be in the load balancers: out of
    /// rotation (`drain`, `maint`) or back in it (`ready`).
    Rotation { host: String, load_balancer: AdminState },
    /// A host's step started or ended.
    Step {
        host: String,
        step: String,
        position: usize,
        state: StepState,
        #[serde(default)]
        exit_code: Option<i32>,
    },
}

impl Event {
    /// The name of the event's kind: `state`, `host`, `rotation` or `step`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::State { .. } => "state",
            Event::Host { .. } => "host",
            Event::Rotation { .. } => "rotation",
            Event::Step { .. } => "step",
        }
    }

    /// Whether this is the deployment's final state: nothing follows it.
    pub fn is_final(&self) -> bool {
        matches!(self, Event::State { state, .. } if state.is_final())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_and_write_the_wire_shape() {
        let step: Event = serde_json::from_str(
            r#"{"type": "step", "host": "vm-01", "step": "install", "position": 3, "state": "failed", "exit_code": 2}"#,
        )
        .unwrap();
        assert_eq!(
            step,
            Event::Step {
                host: "vm-01".into(),
                step: "install".into(),
                position: 3,
                state: StepState::Failed,
                exit_code: Some(2)
            }
        );
        let state = Event::State { state: DeploymentState::Succeeded, error: None };
        assert_eq!(serde_json::to_value(&state).unwrap(), serde_json::json!({"type": "state", "state": "succeeded"}));
        assert!(state.is_final() && state.kind() == "state");
        let running: Event = serde_json::from_str(r#"{"type": "state", "state": "running"}"#).unwrap();
        assert!(!running.is_final());
    }
}
