//! Chef's request signing (Mixlib authentication), protocols 1.0, 1.1 and 1.3.
//!
//! The client signs a canonical description of the request with its RSA key and sends
//! the signature, base64-encoded, in 60-character `X-Ops-Authorization-N` headers.
//! - 1.3: RSASSA-PKCS1-v1_5 with SHA-256 over the canonical string; body hashed with
//!   SHA-256; path and server API version in clear.
//! - 1.0 and 1.1: SHA-1 hashes of path and body, and a raw private-key operation with
//!   PKCS#1 type-1 padding over the canonical string itself (no digest, no DigestInfo);
//!   1.1 also hashes the user id.

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::{Pkcs1v15Sign, PrivateKey};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The server API version Vesemir speaks; sent with every request.
pub const SERVER_API_VERSION: &str = "1";

/// Headers carry the base64 signature in pieces of this length.
const AUTHORIZATION_PIECE: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum SignVersion {
    #[serde(rename = "1.0")]
    V1_0,
    #[serde(rename = "1.1")]
    V1_1,
    #[default]
    #[serde(rename = "1.3")]
    V1_3,
}

impl SignVersion {
    fn as_str(self) -> &'static str {
        match self {
            SignVersion::V1_0 => "1.0",
            SignVersion::V1_1 => "1.1",
            SignVersion::V1_3 => "1.3",
        }
    }

    fn algorithm(self) -> &'static str {
        match self {
            SignVersion::V1_3 => "sha256",
            _ => "sha1",
        }
    }
}

impl FromStr for SignVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1.0" => Ok(Self::V1_0),
            "1.1" => Ok(Self::V1_1),
            "1.3" => Ok(Self::V1_3),
            other => Err(format!("unknown Chef signing protocol {other:?} (1.0, 1.1 or 1.3)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("cannot read the Chef client key {path}: {message}")]
    Key { path: String, message: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A client's identity: its name and private key. `Debug` never shows the key.
pub struct Signer {
    user: String,
    key: PrivateKey,
    version: SignVersion,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("user", &self.user).field("version", &self.version).finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(user: &str, key_pem: &str, version: SignVersion) -> Result<Self, String> {
        let key = PrivateKey::from_pkcs1_pem(key_pem)
            .map_err(|e| format!("not a PKCS#1 PEM RSA private key (BEGIN RSA PRIVATE KEY): {e}"))?;
        Ok(Self { user: user.to_owned(), key, version })
    }

    pub fn load(user: &str, key_path: &Path, version: SignVersion) -> Result<Self, SignError> {
        let key_error = |message: String| SignError::Key { path: key_path.display().to_string(), message };
        let pem = std::fs::read_to_string(key_path).map_err(|e| key_error(e.to_string()))?;
        Self::new(user, &pem, version).map_err(key_error)
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The string that is signed. `path` is the URL path without its query string.
    pub fn canonical(&self, method: &str, path: &str, body: &[u8], timestamp: &str) -> String {
        let method = method.to_ascii_uppercase();
        let path = canonical_path(path);
        match self.version {
            SignVersion::V1_3 => format!(
                "Method:{method}\nPath:{path}\nX-Ops-Content-Hash:{}\nX-Ops-Sign:version=1.3\n\
                 X-Ops-Timestamp:{timestamp}\nX-Ops-UserId:{}\nX-Ops-Server-API-Version:{SERVER_API_VERSION}",
                base64(&Sha256::digest(body)),
                self.user,
            ),
            SignVersion::V1_0 | SignVersion::V1_1 => {
                let user = match self.version {
                    SignVersion::V1_1 => base64(&Sha1::digest(self.user.as_bytes())),
                    _ => self.user.clone(),
                };
                format!(
                    "Method:{method}\nHashed Path:{}\nX-Ops-Content-Hash:{}\nX-Ops-Timestamp:{timestamp}\nX-Ops-UserId:{user}",
                    base64(&Sha1::digest(path.as_bytes())),
                    base64(&Sha1::digest(body)),
                )
            }
        }
    }

    /// Every authentication header of a request, in order.
    pub fn headers(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        timestamp: &str,
    ) -> Result<Vec<(String, String)>, SignError> {
        let canonical = self.canonical(method, path, body, timestamp);
        let signature = match self.version {
            SignVersion::V1_3 => self.key.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(canonical.as_bytes())),
            SignVersion::V1_0 | SignVersion::V1_1 => {
                self.key.sign(Pkcs1v15Sign::new_unprefixed(), canonical.as_bytes())
            }
        }
        .map_err(|e| SignError::Sign(e.to_string()))?;
        let content_hash = match self.version {
            SignVersion::V1_3 => base64(&Sha256::digest(body)),
            _ => base64(&Sha1::digest(body)),
        };
        let mut headers = vec![
            (
                "X-Ops-Sign".to_owned(),
                format!("algorithm={};version={};", self.version.algorithm(), self.version.as_str()),
            ),
            ("X-Ops-Userid".to_owned(), self.user.clone()),
            ("X-Ops-Timestamp".to_owned(), timestamp.to_owned()),
            ("X-Ops-Content-Hash".to_owned(), content_hash),
        ];
        let encoded = base64(&signature);
        for (i, piece) in encoded.as_bytes().chunks(AUTHORIZATION_PIECE).enumerate() {
            headers.push((format!("X-Ops-Authorization-{}", i + 1), String::from_utf8_lossy(piece).into_owned()));
        }
        Ok(headers)
    }
}

/// Repeated slashes squeezed, a trailing slash dropped (Chef's canonical path).
fn canonical_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    out
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn paths_are_canonical() {
        assert_eq!(canonical_path("/organizations//acme/search/node/"), "/organizations/acme/search/node");
        assert_eq!(canonical_path("/"), "/");
    }
}

#[cfg(test)]
mod reference_vectors {
    //! Vectors made by Chef's own implementation (mixlib-authentication); see
    //! tests/data/chef/README.md for how they are regenerated.

    use super::*;

    const KEY: &str = include_str!("../../../../tests/data/chef/test_key.pem");
    const VECTORS: &str = include_str!("../../../../tests/data/chef/vectors.json");

    #[test]
    fn canonical_strings_and_headers_match_chefs_implementation() {
        let vectors: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let vectors = vectors["vectors"].as_array().unwrap();
        assert_eq!(vectors.len(), 9);
        for vector in vectors {
            let input = &vector["input"];
            let text = |key: &str| input[key].as_str().unwrap();
            let version: SignVersion = text("sign_version").parse().unwrap();
            let signer = Signer::new(text("user_id"), KEY, version).unwrap();
            let body = text("body").as_bytes();
            let name = vector["name"].as_str().unwrap();
            assert_eq!(
                signer.canonical(text("method"), text("path"), body, text("timestamp")),
                vector["canonical_request"].as_str().unwrap(),
                "{name}: canonical string"
            );
            let expected: Vec<(String, String)> = vector["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().to_owned(), h[1].as_str().unwrap().to_owned()))
                .collect();
            let headers = signer.headers(text("method"), text("path"), body, text("timestamp")).unwrap();
            assert_eq!(headers, expected, "{name}: headers");
        }
    }
}
