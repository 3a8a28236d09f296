//! Calls the rollout makes to agents: each with a deadline, each failure
//! turned into what an operator needs (node, step, command, stderr, next
//! step).

use std::time::Duration;

use kh::names::NodeName;
use kh::proto::{self, run_step_request::Step};

use crate::agents::{explain, AgentError};
use crate::registry::NodeRecord;
use crate::Coordinator;

/// Why a rollout stopped.
#[derive(Debug, Clone)]
pub struct Failure {
    /// "spec", "preflight" or "rollout".
    pub class: &'static str,
    pub node: String,
    pub step: String,
    pub message: String,
    pub hint: String,
    pub report: Option<proto::StepReport>,
}

impl Failure {
    pub fn spec(message: impl Into<String>) -> Self {
        Failure {
            class: "spec",
            node: String::new(),
            step: "validate".into(),
            message: message.into(),
            hint: "fix the spec and run `khctl rollout -f cluster.yaml` again".into(),
            report: None,
        }
    }

    pub fn at(node: &str, step: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Failure {
            class: "rollout",
            node: node.to_string(),
            step: step.to_string(),
            message: message.into(),
            hint: hint.into(),
            report: None,
        }
    }
}

impl Failure {
    /// What kind of failure the agent recognised, when a step report came
    /// back Failed; `Unspecified` for anything else (an unreachable agent, a
    /// refused spec).
    pub fn kind(&self) -> proto::FailureKind {
        self.report
            .as_ref()
            .map_or(proto::FailureKind::Unspecified, |r| r.failure_kind())
    }
}

impl From<crate::error::CoordError> for Failure {
    fn from(e: crate::error::CoordError) -> Self {
        Failure::at(
            "",
            "coordinator",
            e.to_string(),
            format!("check the coordinator's log; the operation resumes with {RERUN}"),
        )
    }
}

/// How a generic hint says "run this operation again". A
/// [`Reporter`](super::reporter::Reporter) whose operation resumes with another command
/// (an etcd replacement) puts that command in its place.
pub const RERUN: &str = "`khctl rollout -f cluster.yaml`";

pub const STEP_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Ops<'a> {
    pub coord: &'a Coordinator,
}

impl Ops<'_> {
    /// The registry record of `node`, once its agent can be called.
    pub fn record(&self, node: &str) -> Result<NodeRecord, Failure> {
        let name =
            NodeName::new(node).map_err(|e| Failure::at(node, "connect", e.to_string(), ""))?;
        let rec = self
            .coord
            .registry
            .get(&name)
            .map_err(Failure::from)?
            .ok_or_else(|| {
                Failure::at(
                    node,
                    "connect",
                    format!("node {node} is not enrolled"),
                    format!("enroll it: `khctl token create --node {node}`"),
                )
            })?;
        self.coord.agents.connect(&rec).map_err(|e| {
            Failure::at(
                node,
                "connect",
                e.message,
                "start the agent there (`systemctl start kh-agent`) and run the rollout again",
            )
        })?;
        Ok(rec)
    }

    fn unreachable(node: &str, step: &str, e: &AgentError) -> Failure {
        Failure::at(
            node,
            step,
            explain(node, e),
            format!("bring the agent on {node} back (`systemctl status kh-agent`), then run {RERUN} again; finished work is not repeated"),
        )
    }

    /// Runs a step; a Failed report becomes a Failure carrying it.
    pub async fn step(
        &self,
        node: &str,
        name: &str,
        step: Step,
        dry_run: bool,
    ) -> Result<proto::StepReport, Failure> {
        self.step_within(node, name, step, dry_run, STEP_TIMEOUT)
            .await
    }

    /// [`Self::step`] with its own deadline, for a step whose length the
    /// operator chooses (a drain's `--drain-timeout`).
    pub async fn step_within(
        &self,
        node: &str,
        name: &str,
        step: Step,
        dry_run: bool,
        timeout: Duration,
    ) -> Result<proto::StepReport, Failure> {
        let rec = self.record(node)?;
        let report = self
            .coord
            .agents
            .run_step(
                &rec,
                proto::RunStepRequest {
                    step: Some(step),
                    dry_run,
                },
                timeout,
            )
            .await
            .map_err(|e| Self::unreachable(node, name, &e))?;
        if report.outcome == proto::Outcome::Failed as i32 {
            let last = report.commands.last();
            let mut message = report.error.clone();
            if let Some(c) = last {
                if !c.stderr_tail.is_empty() && !message.contains(c.stderr_tail.trim()) {
                    message.push_str(&format!(
                        "\nstderr of `{}`:\n{}",
                        c.argv.join(" "),
                        c.stderr_tail
                    ));
                }
            }
            return Err(Failure {
                class: "rollout",
                node: node.to_string(),
                step: name.to_string(),
                message,
                hint: format!("fix the cause on {node}, then run {RERUN} again; finished work is not repeated"),
                report: Some(report),
            });
        }
        Ok(report)
    }

    pub async fn node_status(&self, node: &str) -> Result<proto::NodeStatusResponse, Failure> {
        let rec = self.record(node)?;
        // The agent answers only once a step in flight has ended (a join
        // started before a coordinator crash), so allow a step's time.
        self.coord
            .agents
            .node_status(&rec, STEP_TIMEOUT)
            .await
            .map_err(|e| Self::unreachable(node, "status", &e))
    }

    pub async fn etcd_members(
        &self,
        via: &str,
        endpoints: &[String],
        external: bool,
    ) -> Result<Vec<proto::EtcdMember>, String> {
        let rec = self.record(via).map_err(|f| f.message)?;
        self.coord
            .agents
            .etcd_members(
                &rec,
                proto::EtcdRequest {
                    endpoints: endpoints.to_vec(),
                    external,
                },
                QUERY_TIMEOUT,
            )
            .await
            .map(|r| r.members)
            .map_err(|e| e.message)
    }

    pub async fn etcd_health(
        &self,
        via: &str,
        endpoints: &[String],
        external: bool,
    ) -> Result<proto::EtcdHealthResponse, String> {
        let rec = self.record(via).map_err(|f| f.message)?;
        self.coord
            .agents
            .etcd_health(
                &rec,
                proto::EtcdRequest {
                    endpoints: endpoints.to_vec(),
                    external,
                },
                QUERY_TIMEOUT,
            )
            .await
            .map_err(|e| e.message)
    }

    pub async fn kube_nodes(&self, via: &str) -> Result<Vec<proto::KubeNode>, String> {
        let rec = self.record(via).map_err(|f| f.message)?;
        self.coord
            .agents
            .kube_nodes(&rec, QUERY_TIMEOUT)
            .await
            .map(|r| r.nodes)
            .map_err(|e| e.message)
    }

    pub async fn apiserver_ready(&self, via: &str, url: &str) -> Result<(), String> {
        let rec = self.record(via).map_err(|f| f.message)?;
        let r = self
            .coord
            .agents
            .apiserver_ready(
                &rec,
                proto::ApiserverReadyRequest {
                    url: url.to_string(),
                },
                QUERY_TIMEOUT,
            )
            .await
            .map_err(|e| e.message)?;
        if r.ready {
            Ok(())
        } else {
            Err(r.detail)
        }
    }

    pub async fn tcp_probe(
        &self,
        via: &str,
        address: &str,
    ) -> Result<proto::TcpProbeResponse, Failure> {
        let rec = self.record(via)?;
        self.coord
            .agents
            .tcp_probe(
                &rec,
                proto::TcpProbeRequest {
                    address: address.to_string(),
                    timeout_ms: 5000,
                },
                QUERY_TIMEOUT,
            )
            .await
            .map_err(|e| Self::unreachable(via, "endpoint-check", &e))
    }

    pub async fn read_files(
        &self,
        via: &str,
        set: proto::read_cluster_files_request::Set,
    ) -> Result<Vec<proto::PlacedFile>, String> {
        let rec = self.record(via).map_err(|f| f.message)?;
        self.coord
            .agents
            .read_cluster_files(
                &rec,
                proto::ReadClusterFilesRequest { set: set as i32 },
                QUERY_TIMEOUT,
            )
            .await
            .map(|r| r.files)
            .map_err(|e| e.message)
    }
}

/// `https://host:port`, with brackets for IPv6.
pub fn url(addr: std::net::IpAddr, port: u16) -> String {
    match addr {
        std::net::IpAddr::V6(a) => format!("https://[{a}]:{port}"),
        std::net::IpAddr::V4(a) => format!("https://{a}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_comes_from_the_report_and_never_from_the_words() {
        let failed = |kind: proto::FailureKind, error: &str| Failure {
            report: Some(proto::StepReport {
                step: "kubeadm-join".into(),
                outcome: proto::Outcome::Failed as i32,
                error: error.into(),
                failure_kind: kind as i32,
                ..Default::default()
            }),
            ..Failure::at("cp-2", "kubeadm-join", error, "")
        };
        let f = failed(
            proto::FailureKind::TokenRefused,
            "error execution phase preflight: couldn't validate the identity of the API Server: could not find a JWS signature in the cluster-info ConfigMap for token ID \"abcdef\"",
        );
        assert_eq!(f.kind(), proto::FailureKind::TokenRefused);
        // Words that once read as a token refusal are not one unless the
        // agent says so (a wrong CA pin needs no new token).
        let f = failed(
            proto::FailureKind::Other,
            "cluster CA found in cluster-info ConfigMap is invalid; check that the token is not expired",
        );
        assert_eq!(f.kind(), proto::FailureKind::Other);
        // An agent that never answered has no kind.
        let f = Failure::at(
            "cp-2",
            "kubeadm-join",
            "Secret \"kubeadm-certs\" was not found",
            "",
        );
        assert_eq!(f.kind(), proto::FailureKind::Unspecified);
    }
}
