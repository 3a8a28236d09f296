//! Kubernetes versions as kh's upgrade steps take them: an exact release
//! `v1.32.4` and a minor `v1.32` (which names a package repository), each
//! validated once where it enters, and the package managers' spellings of
//! the same release (`1.32.4-1.1`, `1.32.4-150500.1.1`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::kube::error::KubeError;

/// An exact Kubernetes release, `vX.Y.Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// A Kubernetes minor, `vX.Y`: one package repository of pkgs.k8s.io.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Minor {
    pub major: u32,
    pub minor: u32,
}

/// A decimal number without sign, leading `+` or leading zeros (`0` itself
/// is fine), small enough for a version part.
fn number(text: &str) -> Option<u32> {
    let plain = !text.is_empty()
        && text.len() <= 6
        && text.bytes().all(|b| b.is_ascii_digit())
        && !(text.len() > 1 && text.starts_with('0'));
    plain.then(|| text.parse().ok()).flatten()
}

impl KubeVersion {
    /// Parses exactly `vX.Y.Z` (the form kubeadm and the spec use).
    pub fn parse(text: &str) -> Result<Self, KubeError> {
        let invalid = || KubeError::Invalid {
            what: "Kubernetes version",
            value: text.chars().take(64).collect(),
            reason: "write an exact release as vMAJOR.MINOR.PATCH, such as v1.32.4".into(),
        };
        let rest = text.strip_prefix('v').ok_or_else(invalid)?;
        let parts: Vec<&str> = rest.split('.').collect();
        match parts.as_slice() {
            [major, minor, patch] => Ok(Self {
                major: number(major).ok_or_else(invalid)?,
                minor: number(minor).ok_or_else(invalid)?,
                patch: number(patch).ok_or_else(invalid)?,
            }),
            _ => Err(invalid()),
        }
    }

    /// The release a package manager's version names: `1.32.4-1.1` (Debian),
    /// `1.32.4-150500.1.1` (RPM), with an optional epoch (`1:1.32.4-1.1`).
    pub fn from_package(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.split_once(':').map_or(text, |(_, rest)| rest);
        let upstream = text.split('-').next()?;
        Self::parse(&format!("v{upstream}")).ok()
    }

    pub fn minor(self) -> Minor {
        Minor {
            major: self.major,
            minor: self.minor,
        }
    }

    /// The upstream part of a package version, `1.32.4`.
    pub fn upstream(self) -> String {
        format!("{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Minor {
    /// Parses exactly `vX.Y` (the segment of a pkgs.k8s.io repository URL).
    pub fn parse(text: &str) -> Result<Self, KubeError> {
        let invalid = || {
            KubeError::Invalid {
            what: "Kubernetes minor",
            value: text.chars().take(64).collect(),
            reason: "write a minor as vMAJOR.MINOR, such as v1.32 (the package repositories are per minor)".into(),
        }
        };
        let rest = text.strip_prefix('v').ok_or_else(invalid)?;
        match rest.split('.').collect::<Vec<_>>().as_slice() {
            [major, minor] => Ok(Self {
                major: number(major).ok_or_else(invalid)?,
                minor: number(minor).ok_or_else(invalid)?,
            }),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for Minor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}", self.major, self.minor)
    }
}

/// The image tag of a static pod manifest's first container
/// (`registry.k8s.io/kube-apiserver:v1.32.4` → `v1.32.4`); `None` when the
/// manifest has no image or the image no tag.
pub fn manifest_image_tag(manifest: &str) -> Option<String> {
    let v: serde_yaml::Value = serde_yaml::from_str(manifest).ok()?;
    let image = v["spec"]["containers"][0]["image"].as_str()?;
    // A registry port (`host:5000/kube-apiserver`) is not a tag: the tag
    // follows the last `:` after the last `/`.
    let name = image.rsplit('/').next()?;
    let name = name.split('@').next()?;
    name.split_once(':').map(|(_, tag)| tag.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_minors_are_exact() {
        let v = KubeVersion::parse("v1.32.4").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 32, 4));
        assert_eq!(v.to_string(), "v1.32.4");
        assert_eq!(v.minor().to_string(), "v1.32");
        assert_eq!(v.upstream(), "1.32.4");
        for bad in [
            "",
            "1.32.4",
            "v1.32",
            "v1.32.4.1",
            "v1.32.x",
            "v1.32.4-rc.1",
            "v01.32.4",
            "v1..4",
            "v1.32.4 ",
            "v-1.32.4",
        ] {
            assert!(KubeVersion::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Minor::parse("v1.32").unwrap().to_string(), "v1.32");
        for bad in ["", "1.32", "v1.32.4", "v1", "v1.x", "v1.32/"] {
            assert!(Minor::parse(bad).is_err(), "{bad:?}");
        }
        let err = Minor::parse("1.32").unwrap_err().to_string();
        assert!(err.contains("v1.32"), "{err}");
    }

    #[test]
    fn package_versions_name_their_release() {
        for (text, want) in [
            ("1.31.4-1.1", "v1.31.4"),
            ("1.31.4-150500.1.1", "v1.31.4"),
            ("1:1.31.4-1.1", "v1.31.4"),
            ("1.30.0", "v1.30.0"),
        ] {
            assert_eq!(
                KubeVersion::from_package(text).map(|v| v.to_string()),
                Some(want.to_string()),
                "{text}"
            );
        }
        assert_eq!(KubeVersion::from_package("(none)"), None);
        assert_eq!(KubeVersion::from_package(""), None);
    }

    #[test]
    fn manifest_tags_skip_registry_ports() {
        let m = |image: &str| {
            format!("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: kube-apiserver\n    image: {image}\n")
        };
        assert_eq!(
            manifest_image_tag(&m("registry.k8s.io/kube-apiserver:v1.32.4")).as_deref(),
            Some("v1.32.4")
        );
        assert_eq!(
            manifest_image_tag(&m("mirror.local:5000/k8s/kube-apiserver:v1.31.0")).as_deref(),
            Some("v1.31.0")
        );
        assert_eq!(
            manifest_image_tag(&m("mirror.local:5000/kube-apiserver")),
            None
        );
        assert_eq!(manifest_image_tag("not: [yaml"), None);
    }
}
