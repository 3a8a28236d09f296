//! The coordinator's configuration: one struct, from an optional YAML file
//! plus flags (flags win).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Addresses and DNS names agents and khctl use to reach the coordinator;
    /// they become the SANs of its serving certificate.
    #[serde(default)]
    pub advertise: Vec<String>,
    #[serde(
        default = "defaults::heartbeat_interval",
        with = "kh::time::serde_duration"
    )]
    pub heartbeat_interval: Duration,
    #[serde(
        default = "defaults::node_cert_validity",
        with = "kh::time::serde_duration"
    )]
    pub node_cert_validity: Duration,
    #[serde(
        default = "defaults::admin_cert_validity",
        with = "kh::time::serde_duration"
    )]
    pub admin_cert_validity: Duration,
    #[serde(default = "defaults::token_ttl", with = "kh::time::serde_duration")]
    pub default_token_ttl: Duration,
    /// The key that seals the store's secrets, when it is kept outside the
    /// data dir (so a copy of the data dir alone does not yield the kh CA).
    /// `None`: `secret.key` in the data dir.
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// How often the coordinator checks the control planes' kubeadm
    /// certificates for automatic renewal (`certificates.autoRenew`).
    #[serde(
        default = "defaults::cert_check_interval",
        with = "kh::time::serde_duration"
    )]
    pub cert_check_interval: Duration,
    /// Where to serve plain-HTTP `/metrics` and `/healthz`; `None`: not at all.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
}

pub mod defaults {
    use std::time::Duration;
    pub fn heartbeat_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub fn node_cert_validity() -> Duration {
        Duration::from_secs(90 * 86400)
    }
    pub fn admin_cert_validity() -> Duration {
        Duration::from_secs(365 * 86400)
    }
    pub fn token_ttl() -> Duration {
        Duration::from_secs(30 * 60)
    }
    pub fn cert_check_interval() -> Duration {
        Duration::from_secs(3600)
    }
    pub const LISTEN: &str = "0.0.0.0:7443";
}

/// The longest duration any configured interval or validity may have: ten
/// years of 365.25 days, as humantime counts and prints them.
const MAX_VALIDITY: Duration = Duration::from_secs(10 * 31_557_600);

impl Config {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err("heartbeatInterval must be at least 100ms".into());
        }
        if self.default_token_ttl > crate::tokens::MAX_TTL {
            return Err(format!(
                "defaultTokenTtl must be at most {}",
                humantime::format_duration(crate::tokens::MAX_TTL)
            ));
        }
        // Expiry arithmetic must stay within what a certificate and the
        // clock can represent; nobody needs a kh certificate for longer.
        for (field, value) in [
            ("heartbeatInterval", self.heartbeat_interval),
            ("nodeCertValidity", self.node_cert_validity),
            ("adminCertValidity", self.admin_cert_validity),
        ] {
            if value > MAX_VALIDITY {
                return Err(format!(
                    "{field} must be at most {}",
                    humantime::format_duration(MAX_VALIDITY)
                ));
            }
        }
        if self.cert_check_interval < Duration::from_secs(1)
            || self.cert_check_interval > MAX_VALIDITY
        {
            return Err("certCheckInterval must be between 1s and 10 years".into());
        }
        if self.node_cert_validity < Duration::from_secs(3) {
            return Err("nodeCertValidity must be at least 3s".into());
        }
        if self.advertise.is_empty() && self.listen.ip().is_unspecified() {
            return Err(format!(
                "--listen {} binds every address, so kh cannot tell agents where to reach it: pass --advertise HOST (an IP or DNS name agents can reach; repeatable)",
                self.listen
            ));
        }
        for a in &self.advertise {
            if a.is_empty() || a.contains('/') || a.contains(' ') {
                return Err(format!(
                    "--advertise {a:?} is not a host name or IP address"
                ));
            }
            if a.ends_with(".node.kh") {
                return Err(format!(
                    "--advertise {a:?}: names under .node.kh are reserved for node certificates"
                ));
            }
        }
        Ok(())
    }

    /// The SANs of the serving certificate: the advertised names, or the
    /// listen IP when nothing is advertised.
    pub fn sans(&self) -> Vec<String> {
        if self.advertise.is_empty() {
            vec![self.listen.ip().to_string()]
        } else {
            self.advertise.clone()
        }
    }
}

#[cfg(test)]
impl Config {
    /// A config for in-process tests: `dir` as the data dir, every other
    /// field at its default.
    pub(crate) fn for_test(dir: &std::path::Path) -> Config {
        Config {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:7443".parse().unwrap(),
            advertise: vec![],
            heartbeat_interval: defaults::heartbeat_interval(),
            node_cert_validity: defaults::node_cert_validity(),
            admin_cert_validity: defaults::admin_cert_validity(),
            default_token_ttl: defaults::token_ttl(),
            secret_key_file: None,
            cert_check_interval: defaults::cert_check_interval(),
            metrics_address: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config as a file gives it, every other field at its default.
    fn config() -> Config {
        serde_yaml::from_str("dataDir: /var/lib/kh-coordinator\nlisten: 127.0.0.1:7443\n").unwrap()
    }

    #[test]
    fn durations_beyond_their_limits_are_refused() {
        assert_eq!(config().validate(), Ok(()));
        let mut c = config();
        c.default_token_ttl = Duration::from_secs(u64::MAX);
        assert_eq!(
            c.validate().unwrap_err(),
            "defaultTokenTtl must be at most 7days"
        );
        let mut c = config();
        c.node_cert_validity = Duration::from_secs(u64::MAX);
        assert_eq!(
            c.validate().unwrap_err(),
            "nodeCertValidity must be at most 10years"
        );
    }
}
