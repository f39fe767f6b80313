//! Who may do what: API tokens and their roles.
//!
//! A token reads `vsm_<id>_<secret>`. Only a SHA-256 hash of the secret is stored; the
//! id finds the row, and the hashes are compared in constant time.

use sha2::{Digest, Sha256};
use std::fmt;
use uuid::Uuid;

const PREFIX: &str = "vsm_";

use vesemir_model::access::{Role, Scope};

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub scope: Scope,
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
    fn a_new_token_never_prints_its_text() {
        let token = NewToken::generate();
        let printed = format!("{token:?}");
        assert!(!printed.contains(&token.text) && !printed.contains(&token.hash), "{printed}");
    }
}
