//! Who may do what: API tokens and their roles.
//!
//! A token reads `vsm_<id>_<secret>`. Only a SHA-256 hash of the secret is stored; the
//! id finds the row, and the hashes are compared in constant time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use uuid::Uuid;

const PREFIX: &str = "vsm_";

use vesemir_model::access::Role;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub scope: Scope,
}

/// The services and clusters a token may act on: exact names or globs (`*` any run of
/// characters, `?` one). An empty list allows any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// A new token: the text handed out once, and what is stored of it.
pub struct NewToken {
    pub id: Uuid,
    pub text: String,
    pub hash: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken").field("id", &self.id).field("text", &"***").field("hash", &"***").finish()
    }
}

impl NewToken {
    pub fn generate() -> Self {
        let id = Uuid::now_v7();
        // Two random UUIDs: 244 random bits from the operating system.
        let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        Self { id, text: format!("{PREFIX}{}_{secret}", id.simple()), hash: hash(&secret) }
    }
}

/// Splits a presented token into its id and secret; None when it is not one of ours.
pub fn parse(token: &str) -> Option<(Uuid, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((Uuid::parse_str(id).ok()?, secret))
}

pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes as long whatever the inputs share.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a presented secret matches a stored hash.
pub fn verify(secret: &str, stored_hash: &str) -> bool {
    constant_time_eq(hash(secret).as_bytes(), stored_hash.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_and_verifies_against_its_hash_only() {
        let token = NewToken::generate();
        let (id, secret) = parse(&token.text).unwrap();
        assert_eq!(id, token.id);
        assert!(verify(secret, &token.hash));
        assert!(!token.hash.contains(secret), "the secret is not stored");
        let other = NewToken::generate();
        let (_, other_secret) = parse(&other.text).unwrap();
        assert!(!verify(other_secret, &token.hash));
    }

    #[test]
    fn foreign_or_damaged_tokens_do_not_parse() {
        for bad in
            ["", "Bearer x", "vsm_", "vsm_nothex_abc", "ghp_0123", &format!("vsm_{}_short", Uuid::now_v7().simple())]
        {
            assert!(parse(bad).is_none(), "{bad}");
        }
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

    #[test]
    fn a_new_token_never_prints_its_text() {
        let token = NewToken::generate();
        let printed = format!("{token:?}");
        assert!(!printed.contains(&token.text) && !printed.contains(&token.hash), "{printed}");
    }
}
