//! The Kubernetes version a spec names ([`KubeVersion`]).

use super::*;

/// An exact Kubernetes release kh supports: `v1.<minor>.<patch>` with an
/// optional pre-release such as `-rc.1`, minor at least
/// [`MIN_KUBERNETES_MINOR`]. Ordered by semantic-versioning precedence, so
/// `v1.32.0-rc.1 < v1.32.0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KubeVersion {
    major: u32,
    minor: u32,
    patch: u32,
    pre: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {why}", crate::echo(input))]
pub struct InvalidVersion {
    pub input: String,
    pub why: String,
}

impl KubeVersion {
    /// Accepts `v1.32.0` and `1.32.0` alike; both print as `v1.32.0`.
    pub fn parse(text: &str) -> Result<Self, InvalidVersion> {
        let bad = |why: String| InvalidVersion {
            input: text.to_string(),
            why,
        };
        let syntax = || {
            bad("is not an exact Kubernetes release: write v<major>.<minor>.<patch>, e.g. v1.32.0 (kh installs exactly what the spec names)".to_string())
        };
        let body = text.strip_prefix('v').unwrap_or(text);
        let (core, pre) = match body.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (body, None),
        };
        let numbers = core
            .split('.')
            .map(parse_number)
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(syntax)?;
        let [major, minor, patch] = numbers[..] else {
            return Err(syntax());
        };
        if let Some(pre) = pre {
            let identifier_ok = |id: &str| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            if !pre.split('.').all(identifier_ok) {
                return Err(syntax());
            }
        }
        if major != 1 {
            return Err(bad(
                "is not a Kubernetes 1.x release: kh drives kubeadm for Kubernetes 1.x only; use e.g. v1.32.0".to_string(),
            ));
        }
        if minor < MIN_KUBERNETES_MINOR {
            return Err(bad(format!(
                "is too old: kh supports kubeadm releases v1.{MIN_KUBERNETES_MINOR} and newer only; choose a newer release, e.g. v1.32.0"
            )));
        }
        Ok(KubeVersion {
            major,
            minor,
            patch,
            pre: pre.map(str::to_string),
        })
    }

    pub fn major(&self) -> u32 {
        self.major
    }

    pub fn minor(&self) -> u32 {
        self.minor
    }

    pub fn patch(&self) -> u32 {
        self.patch
    }

    /// The pre-release part without its `-`, e.g. `rc.1`.
    pub fn pre(&self) -> Option<&str> {
        self.pre.as_deref()
    }

    /// The kubeadm configuration API this release reads.
    pub fn kubeadm_api_version(&self) -> &'static str {
        if self.minor >= V1BETA4_SINCE_MINOR {
            "kubeadm.k8s.io/v1beta4"
        } else {
            "kubeadm.k8s.io/v1beta3"
        }
    }
}

/// A version number component: digits only, without leading zeros, as
/// semantic versioning requires (so `v1.032.0` is refused, not reinterpreted).
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl FromStr for KubeVersion {
    type Err = InvalidVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KubeVersion::parse(s)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(pre) = &self.pre {
            write!(f, "-{pre}")?;
        }
        Ok(())
    }
}

impl Serialize for KubeVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Ord for KubeVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                // A pre-release comes before its release.
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => compare_pre_release(a, b),
            })
    }
}

impl PartialOrd for KubeVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Semantic-versioning precedence of pre-release identifiers: numeric ones
/// compare as numbers (so `rc.2 < rc.10`) and sort before alphanumeric ones;
/// a shorter list that is a prefix of a longer one comes first.
fn compare_pre_release(a: &str, b: &str) -> Ordering {
    let numeric = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (numeric(x), numeric(y)) {
                    // Comparing length first compares numbers of any size
                    // without overflow.
                    (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}
