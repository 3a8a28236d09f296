//! Validated names, checked once at the edge.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid node name {}: {why}. Use a lowercase RFC 1123 name such as \"cp-1\" (letters, digits, '-' and '.', at most 63 characters), as Kubernetes requires", crate::echo(name))]
pub struct InvalidName {
    pub name: String,
    pub why: &'static str,
}

/// A node name as Kubernetes accepts it for a Node object: a lowercase RFC 1123
/// subdomain. kh limits it to 63 characters so it also fits one DNS label
/// component of the node's kh certificate.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        let err = |why| {
            Err(InvalidName {
                name: name.to_string(),
                why,
            })
        };
        if name.is_empty() {
            return err("it is empty");
        }
        if name.len() > 63 {
            return err("it is longer than 63 characters");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return err("it may only contain lowercase letters, digits, '-' and '.'");
        }
        for label in name.split('.') {
            if label.is_empty() {
                return err("it has an empty label between dots");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return err("a label starts or ends with '-'");
            }
        }
        Ok(NodeName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The DNS name in the node's kh certificate. A namespace of its own keeps a
    /// node's certificate from ever matching the coordinator's advertised names.
    pub fn tls_server_name(&self) -> String {
        format!("{}.node.kh", self.0)
    }
}

impl TryFrom<String> for NodeName {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NodeName::new(&s)
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kubernetes_node_names() {
        for ok in ["cp-1", "w1", "node.rack-2.example", "a", "10-0-0-1"] {
            assert!(NodeName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_what_kubernetes_rejects_with_a_reason() {
        let cases = [
            ("", "it is empty"),
            (
                "CP-1",
                "it may only contain lowercase letters, digits, '-' and '.'",
            ),
            (
                "cp_1",
                "it may only contain lowercase letters, digits, '-' and '.'",
            ),
            ("-cp", "a label starts or ends with '-'"),
            ("cp..1", "it has an empty label between dots"),
        ];
        for (name, why) in cases {
            assert_eq!(NodeName::new(name).unwrap_err().why, why, "{name}");
        }
        let long = "a".repeat(64);
        assert!(NodeName::new(&long).unwrap_err().to_string().contains("63"));
    }

    #[test]
    fn a_huge_name_is_quoted_cut_short() {
        let huge = "x".repeat(1 << 20);
        let err = NodeName::new(&huge).unwrap_err().to_string();
        assert!(err.len() < 400, "{} bytes: {}", err.len(), &err[..400]);
        assert!(err.contains("… (1048576 bytes)"), "{err}");
    }
}
