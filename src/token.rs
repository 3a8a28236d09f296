//! Enrollment tokens: `<id>.<secret>`, shaped like kubeadm bootstrap tokens
//! (`[a-z0-9]{6}.[a-z0-9]{16}`). The id is public and names the record; only a
//! SHA-256 of the secret is ever stored.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::Secret;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed enrollment token: expected the form abcdef.0123456789abcdef (6 and 16 characters of [a-z0-9]) as printed by `khctl token create`")]
pub struct MalformedToken;

/// A parsed enrollment token. `Debug` shows only the id.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollToken {
    pub id: String,
    pub secret: Secret<String>,
}

impl EnrollToken {
    pub fn generate() -> Self {
        EnrollToken {
            id: random_string(ID_LEN),
            secret: Secret::new(random_string(SECRET_LEN)),
        }
    }

    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        let (id, secret) = text.trim().split_once('.').ok_or(MalformedToken)?;
        let valid = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| ALPHABET.contains(&b));
        if !valid(id, ID_LEN) || !valid(secret, SECRET_LEN) {
            return Err(MalformedToken);
        }
        Ok(EnrollToken {
            id: id.to_string(),
            secret: Secret::new(secret.to_string()),
        })
    }

    /// The full token text, for showing once to the operator.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret.expose())
    }

    /// Hex SHA-256 of the secret part: what the coordinator stores.
    pub fn secret_hash(&self) -> String {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            self.secret.expose().as_bytes(),
        ))
    }

    /// Compares a stored hash against this token's secret in constant time.
    pub fn matches_hash(&self, stored_hex: &str) -> bool {
        let Ok(stored) = hex::decode(stored_hex) else {
            return false;
        };
        let mine = ring::digest::digest(&ring::digest::SHA256, self.secret.expose().as_bytes());
        stored.len() == mine.as_ref().len()
            && stored
                .iter()
                .zip(mine.as_ref())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl fmt::Debug for EnrollToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnrollToken({}.<redacted>)", self.id)
    }
}

/// Uniformly random characters from `[a-z0-9]`.
pub fn random_string(len: usize) -> String {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut b = [0u8; 32];
        rng.fill(&mut b).expect("the system random source failed");
        // 252 is the largest multiple of 36 below 256; rejecting the rest keeps
        // every character equally likely.
        for x in b {
            if x < 252 && out.len() < len {
                out.push(ALPHABET[(x % 36) as usize] as char);
            }
        }
    }
    out
}

/// Random bytes from the system source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source failed");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back_and_match_their_hash() {
        let t = EnrollToken::generate();
        let text = t.reveal();
        assert_eq!(text.len(), 23);
        let back = EnrollToken::parse(&text).unwrap();
        assert_eq!(back, t);
        assert!(back.matches_hash(&t.secret_hash()));
        assert!(!EnrollToken::generate().matches_hash(&t.secret_hash()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde!",
        ] {
            assert_eq!(EnrollToken::parse(bad), Err(MalformedToken), "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = EnrollToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(format!("{t:?}"), "EnrollToken(abcdef.<redacted>)");
    }
}
