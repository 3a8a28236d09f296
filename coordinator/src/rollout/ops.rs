//! Calls the rollout makes to agents: each with a deadline, each failure
//! turned into what an operator needs (node, step, command, stderr, next
//! step).

use std::time::Duration;

use kh::names::NodeName;
use kh::proto::{self, agent_client::AgentClient, run_step_request::Step};
use tonic::transport::Channel;

use crate::agents::{explain, request};
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
    pub fn client(&self, node: &str) -> Result<AgentClient<Channel>, Failure> {
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
        self.coord.agents.client(&rec).map_err(|e| {
            Failure::at(
                node,
                "connect",
                e.to_string(),
                "start the agent there (`systemctl start kh-agent`) and run the rollout again",
            )
        })
    }

    fn unreachable(node: &str, step: &str, s: &tonic::Status) -> Failure {
        Failure::at(
            node,
            step,
            explain(node, s),
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
        let mut c = self.client(node)?;
        let report = c
            .run_step(request(
                proto::RunStepRequest {
                    step: Some(step),
                    dry_run,
                },
                STEP_TIMEOUT,
            ))
            .await
            .map_err(|s| Self::unreachable(node, name, &s))?
            .into_inner();
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
        let mut c = self.client(node)?;
        // The agent answers only once a step in flight has ended (a join
        // started before a coordinator crash), so allow a step's time.
        Ok(
            c.node_status(request(proto::NodeStatusRequest {}, STEP_TIMEOUT))
                .await
                .map_err(|s| Self::unreachable(node, "status", &s))?
                .into_inner(),
        )
    }

    pub async fn etcd_members(
        &self,
        via: &str,
        endpoints: &[String],
        external: bool,
    ) -> Result<Vec<proto::EtcdMember>, String> {
        let mut c = self.client(via).map_err(|f| f.message)?;
        c.etcd_members(request(
            proto::EtcdRequest {
                endpoints: endpoints.to_vec(),
                external,
            },
            QUERY_TIMEOUT,
        ))
        .await
        .map(|r| r.into_inner().members)
        .map_err(|s| s.message().to_string())
    }

    pub async fn etcd_health(
        &self,
        via: &str,
        endpoints: &[String],
        external: bool,
    ) -> Result<proto::EtcdHealthResponse, String> {
        let mut c = self.client(via).map_err(|f| f.message)?;
        c.etcd_health(request(
            proto::EtcdRequest {
                endpoints: endpoints.to_vec(),
                external,
            },
            QUERY_TIMEOUT,
        ))
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
    }

    pub async fn kube_nodes(&self, via: &str) -> Result<Vec<proto::KubeNode>, String> {
        let mut c = self.client(via).map_err(|f| f.message)?;
        c.kube_nodes(request(proto::KubeNodesRequest {}, QUERY_TIMEOUT))
            .await
            .map(|r| r.into_inner().nodes)
            .map_err(|s| s.message().to_string())
    }

    pub async fn apiserver_ready(&self, via: &str, url: &str) -> Result<(), String> {
        let mut c = self.client(via).map_err(|f| f.message)?;
        let r = c
            .apiserver_ready(request(
                proto::ApiserverReadyRequest {
                    url: url.to_string(),
                },
                QUERY_TIMEOUT,
            ))
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
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
        let mut c = self.client(via)?;
        Ok(c.tcp_probe(request(
            proto::TcpProbeRequest {
                address: address.to_string(),
                timeout_ms: 5000,
            },
            QUERY_TIMEOUT,
        ))
        .await
        .map_err(|s| Self::unreachable(via, "endpoint-check", &s))?
        .into_inner())
    }

    pub async fn read_files(
        &self,
        via: &str,
        set: proto::read_cluster_files_request::Set,
    ) -> Result<Vec<proto::PlacedFile>, String> {
        let mut c = self.client(via).map_err(|f| f.message)?;
        c.read_cluster_files(request(
            proto::ReadClusterFilesRequest { set: set as i32 },
            QUERY_TIMEOUT,
        ))
        .await
        .map(|r| r.into_inner().files)
        .map_err(|s| s.message().to_string())
    }
}

/// `https://host:port`, with brackets for IPv6.
pub fn url(addr: std::net::IpAddr, port: u16) -> String {
    match addr {
        std::net::IpAddr::V6(a) => format!("https://[{a}]:{port}"),
        std::net::IpAddr::V4(a) => format!("https://{a}:{port}"),
    }
}
