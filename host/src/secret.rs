//! Secrets inside kh-host: a string that never prints, and the scrubbing
//! that keeps secret values out of command records.
//!
//! kh-host must not depend on the `kh` crate (whose `Secret<T>` the
//! coordinator uses), so it has its own small type. The agent converts at
//! its edge: `SecretString::new(secret.into_inner())`.

use std::fmt;

/// What every record, error and log line shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// A secret text value: a join token, a certificate key, a private key, a
/// kubeadm config with a token inside. `Debug` and `Display` print
/// `<redacted>`, it is deliberately not `Serialize`, and the value is only
/// reachable through [`SecretString::expose`], so every use is greppable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

/// Secret file content that need not be text, such as a key in DER form:
/// written exactly as given. Prints `<redacted>` like [`SecretString`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<SecretString> for SecretBytes {
    fn from(value: SecretString) -> Self {
        Self(value.0.into_bytes())
    }
}

/// Replaces every occurrence of every secret in `text` with `<redacted>`.
///
/// Tools echo what they were given: `kubeadm token create T` prints `T`,
/// `kubeadm init` prints the join command with the token and the certificate
/// key. Longer secrets go first so a secret that contains a shorter one is
/// replaced whole. Empty secrets are skipped: replacing "" would insert the
/// marker between every character.
pub fn scrub(text: &str, secrets: &[&SecretString]) -> String {
    let mut values: Vec<&str> = secrets
        .iter()
        .map(|s| s.expose())
        .filter(|s| !s.is_empty())
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = text.to_string();
    for value in values {
        if out.contains(value) {
            out = out.replace(value, REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = SecretString::new("abcdef.0123456789abcdef");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{:?}", vec![s.clone()]), "[<redacted>]");
        assert_eq!(s.expose(), "abcdef.0123456789abcdef");
        assert_eq!(s.len(), 23);
    }

    #[test]
    fn scrubbing_replaces_every_occurrence_longest_first() {
        let token = SecretString::new("abcdef.0123456789abcdef");
        let id = SecretString::new("abcdef");
        let empty = SecretString::new("");
        let text = "kubeadm join lb:6443 --token abcdef.0123456789abcdef\nid abcdef\n";
        assert_eq!(
            scrub(text, &[&id, &token, &empty]),
            "kubeadm join lb:6443 --token <redacted>\nid <redacted>\n"
        );
        assert_eq!(scrub("nothing here", &[&token]), "nothing here");
    }
}
