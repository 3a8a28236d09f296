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
        Metrics {
            etcd_member_healthy,
            registry,
            heartbeats,
            last_heartbeat,
            steps,
            cert_expiry,
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
}
