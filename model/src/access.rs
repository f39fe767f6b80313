//! Who may do what: the roles and scopes a token may have, and the audit trail.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submits, reads and cancels deployments.
    Deployer,
    /// Everything a deployer does, plus retries, tokens and the audit trail.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deployer" => Ok(Role::Deployer),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (deployer or admin)")),
        }
    }
}

/// The services and clusters a token may act on: exact names or globs (`*` any run of
/// characters, `?` one). An empty list allows any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Scope {
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub clusters: Vec<String>,
}

impl Scope {
    pub fn is_unrestricted(&self) -> bool {
        self.services.is_empty() && self.clusters.is_empty()
    }

    pub fn allows(&self, service: &str, cluster: &str) -> bool {
        let within = |patterns: &[String], name: &str| patterns.is_empty() || patterns.iter().any(|p| glob(p, name));
        within(&self.services, service) && within(&self.clusters, cluster)
    }

    /// Refuses a pattern that is not a name with optional `*` and `?`.
    pub fn validate(&self) -> Result<(), String> {
        for (what, patterns) in [("service", &self.services), ("cluster", &self.clusters)] {
            if patterns.len() > 64 {
                return Err(format!("at most 64 {what} patterns"));
            }
            if let Some(bad) = patterns.iter().find(|p| !is_pattern(p)) {
                return Err(format!("{what} pattern {bad:?} must be 1 to 63 of a-z 0-9 . _ - * ?"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |patterns: &[String]| if patterns.is_empty() { "any".to_owned() } else { patterns.join(", ") };
        write!(f, "services {}; clusters {}", list(&self.services), list(&self.clusters))
    }
}

fn is_pattern(p: &str) -> bool {
    (1..=63).contains(&p.len())
        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-*?".contains(&b))
}

/// Shell-style matching of `*` and `?` against a whole name.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The last `*` seen and where in the name it was tried: backtrack from there.
    let (mut pi, mut ni, mut star): (usize, usize, Option<(usize, usize)>) = (0, 0, None);
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    /// Empty lists: any service, any cluster.
    #[serde(flatten)]
    pub scope: Scope,
    pub created_by: String,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamp::optional::serialize")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One entry of the append-only audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: i64,
    #[serde(serialize_with = "crate::timestamp::serialize")]
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub deployment_id: Option<Uuid>,
    pub detail: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_deployer_below_admin() {
        assert!(Role::Deployer < Role::Admin);
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
    }

    #[test]
    fn a_scope_matches_exact_names_and_globs_and_an_empty_list_matches_any() {
        let scope = Scope { services: vec!["payments-api".into()], clusters: vec!["integration*".into()] };
        assert!(scope.allows("payments-api", "integration"));
        assert!(scope.allows("payments-api", "integration-eu"));
        assert!(!scope.allows("payments-api", "production"));
        assert!(!scope.allows("billing", "integration"));
        assert!(Scope::default().allows("anything", "anywhere"));
        assert!(glob("a?c*", "abcdef") && glob("*", "") && glob("*-eu", "prod-eu") && !glob("*-eu", "prod-us"));
        assert!(glob("*a*b", "xaxxab") && !glob("a*b", "ab-c"));
        assert_eq!(scope.to_string(), "services payments-api; clusters integration*");
        assert!(Scope { services: vec!["Pay ments".into()], clusters: vec![] }.validate().is_err());
    }
}
