//! The agent's Prometheus metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabel {
    pub cert: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

pub struct Metrics {
    registry: Registry,
    pub heartbeats: Family<ResultLabel, Counter>,
    pub last_heartbeat: Gauge<f64, AtomicU64>,
    pub steps: Family<StepLabels, Counter>,
    pub cert_expiry: Gauge<f64, AtomicU64>,
    /// 1 while this host's stacked etcd member answers `endpoint health`, 0
    /// when it does not; no series on hosts without a member.
    pub etcd_member_healthy: Family<EndpointLabel, Gauge>,
    /// The notAfter of each Kubernetes certificate on this host, read at
    /// scrape time ([`Metrics::set_cluster_certs`]).
    pub cluster_cert_expiry: Family<CertLabel, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kh_agent");
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: kh::VERSION.to_string(),
            })
            .set(1);
        registry.register("build_info", "kh-agent build information", build);
        let heartbeats = Family::<ResultLabel, Counter>::default();
        registry.register(
            "heartbeats",
            "Heartbeats sent to the coordinator, by result",
            heartbeats.clone(),
        );
        // Both results exist from the start, so rate() queries work at once.
        for r in ["success", "failure"] {
            let _ = heartbeats.get_or_create(&ResultLabel { result: r.into() });
        }
        let last_heartbeat = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat the coordinator accepted",
            last_heartbeat.clone(),
        );
        let steps = Family::<StepLabels, Counter>::default();
        registry.register("steps", "Host steps run, by step and result", steps.clone());
        for step in kh_host::StepKind::ALL {
            for result in ["changed", "unchanged", "failed"] {
                let _ = steps.get_or_create(&StepLabels {
                    step: step.name().to_string(),
                    result: result.into(),
                });
            }
        }
        let cert_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Unix time when the agent's kh certificate expires",
            cert_expiry.clone(),
        );
        let etcd_member_healthy = Family::<EndpointLabel, Gauge>::default();
        registry.register(
            "etcd_member_healthy",
            "Whether this host's stacked etcd member answers a health check (1) or not (0)",
            etcd_member_healthy.clone(),
        );
        let cluster_cert_expiry = Family::<CertLabel, Gauge>::default();
        registry.register(
            "cluster_cert_expiry_seconds",
            "Unix time when each Kubernetes certificate on this host expires (its notAfter), by kubeadm's name (apiserver, admin.conf, etcd-ca, ...; kubelet-client for the kubelet's own); alert on `kh_agent_cluster_cert_expiry_seconds - time()`. Files that cannot be read have no series",
            cluster_cert_expiry.clone(),
        );
        Metrics {
            cluster_cert_expiry,
            etcd_member_healthy,
            registry,
            heartbeats,
            last_heartbeat,
            steps,
            cert_expiry,
        }
    }

    /// Replaces the certificate series with `certs`: a certificate that is
    /// gone (a node reset) loses its series, one that cannot be read has
    /// none.
    pub fn set_cluster_certs(&self, certs: &[kh_host::kube::ClusterCert]) {
        self.cluster_cert_expiry.clear();
        for c in certs.iter().filter(|c| c.error.is_none()) {
            self.cluster_cert_expiry
                .get_or_create(&CertLabel {
                    cert: c.name.clone(),
                })
                .set(c.not_after_unix);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_series() {
        let m = Metrics::new();
        m.heartbeats
            .get_or_create(&ResultLabel {
                result: "success".into(),
            })
            .inc();
        let text = m.encode();
        for needle in [
            "kh_agent_build_info{version=",
            "kh_agent_heartbeats_total{result=\"success\"} 1",
            "kh_agent_heartbeats_total{result=\"failure\"} 0",
            "kh_agent_last_heartbeat_timestamp_seconds",
            "# TYPE kh_agent_steps counter",
            "kh_agent_steps_total{step=\"containerd-cgroup\",result=\"failed\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn cluster_certificates_are_gauges_of_their_not_after() {
        let m = Metrics::new();
        let cert = |name: &str, not_after: i64, error: Option<&str>| kh_host::kube::ClusterCert {
            name: name.into(),
            path: format!("/etc/kubernetes/pki/{name}.crt"),
            not_before_unix: 1,
            not_after_unix: not_after,
            ca: "ca".into(),
            is_ca: false,
            externally_managed: false,
            error: error.map(str::to_string),
        };
        m.set_cluster_certs(&[
            cert("apiserver", 1_800_000_000, None),
            cert("etcd-peer", 0, Some("unparseable")),
        ]);
        let text = m.encode();
        assert!(
            text.contains("kh_agent_cluster_cert_expiry_seconds{cert=\"apiserver\"} 1800000000"),
            "{text}"
        );
        assert!(text.contains("# HELP kh_agent_cluster_cert_expiry_seconds Unix time"));
        assert!(!text.contains("cert=\"etcd-peer\""), "{text}");
        // A later scrape without the certificate drops its series.
        m.set_cluster_certs(&[cert("admin.conf", 1_700_000_000, None)]);
        let text = m.encode();
        assert!(
            !text.contains("cert=\"apiserver\"")
                && text.contains("cert=\"admin.conf\"} 1700000000"),
            "{text}"
        );
    }
}
