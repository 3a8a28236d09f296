//! Calls to agents. The coordinator presents its own certificate (role
//! coordinator) and verifies each agent by its node certificate's name.
//!
//! Everything that asks an agent something goes through [`AgentApi`]: the
//! rollout, reset and replacement code sees proto messages and
//! [`AgentError`] only, never tonic. [`Agents`] is the one implementation
//! that talks gRPC; unit tests put a fake in its place (`agents::fake`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use kh::proto::{self, agent_client::AgentClient};
use kh::tls::ClientCreds;
use tonic::transport::Channel;

use crate::error::CoordError;
use crate::registry::NodeRecord;

#[cfg(test)]
pub mod fake;

/// Why a call to an agent failed, in the terms the coordinator acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentError {
    pub kind: AgentErrorKind,
    /// What the agent or the transport said.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentErrorKind {
    /// No connection could even be set up (no known address, a bad one).
    Connect,
    /// The agent could not be reached, or the connection broke.
    Unreachable,
    /// The agent did not answer within the call's deadline.
    Timeout,
    /// The agent answered with a refusal; the gRPC code's name.
    Answered(String),
}

impl AgentError {
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
        }
    }

    fn from_status(s: &tonic::Status) -> Self {
        let kind = match s.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => AgentErrorKind::Unreachable,
            tonic::Code::DeadlineExceeded => AgentErrorKind::Timeout,
            c => AgentErrorKind::Answered(format!("{c:?}")),
        };
        AgentError::new(kind, s.message())
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A call's answer, or why there is none.
pub type AgentCall<'a, T> = BoxFuture<'a, Result<T, AgentError>>;

/// The agent RPCs the coordinator makes, each with a deadline so a hung
/// agent cannot hang an operation. Boxed futures keep the trait usable as
/// `dyn`, which the `Coordinator` holds.
pub trait AgentApi: Send + Sync {
    /// Checks that `node` can be called at all (an address is known and a
    /// channel can be set up), before any call is made.
    fn connect(&self, node: &NodeRecord) -> Result<(), AgentError>;
    fn run_step(
        &self,
        node: &NodeRecord,
        req: proto::RunStepRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::StepReport>;
    fn preflight(
        &self,
        node: &NodeRecord,
        req: proto::PreflightRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::PreflightReport>;
    fn node_status(
        &self,
        node: &NodeRecord,
        timeout: Duration,
    ) -> AgentCall<'_, proto::NodeStatusResponse>;
    fn etcd_members(
        &self,
        node: &NodeRecord,
        req: proto::EtcdRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::EtcdMembersResponse>;
    fn etcd_health(
        &self,
        node: &NodeRecord,
        req: proto::EtcdRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::EtcdHealthResponse>;
    fn kube_nodes(
        &self,
        node: &NodeRecord,
        timeout: Duration,
    ) -> AgentCall<'_, proto::KubeNodesResponse>;
    fn apiserver_ready(
        &self,
        node: &NodeRecord,
        req: proto::ApiserverReadyRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::ApiserverReadyResponse>;
    fn tcp_probe(
        &self,
        node: &NodeRecord,
        req: proto::TcpProbeRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::TcpProbeResponse>;
    fn read_cluster_files(
        &self,
        node: &NodeRecord,
        req: proto::ReadClusterFilesRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::ReadClusterFilesResponse>;
    /// The validity of the node's Kubernetes certificates.
    fn cluster_certs(
        &self,
        node: &NodeRecord,
        timeout: Duration,
    ) -> AgentCall<'_, proto::ClusterCertsResponse>;
    /// What the node's package manager says of the Kubernetes packages:
    /// installed and held versions, and what `req.minor`'s repository
    /// offers (read-only).
    fn package_versions(
        &self,
        node: &NodeRecord,
        req: proto::PackageVersionsRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::PackageVersionsResponse>;
    /// `etcdctl snapshot save` on the node, streamed back as it is
    /// written: the last chunk (without data) carries the size and status. `timeout` bounds the whole
    /// stream.
    fn etcd_snapshot(
        &self,
        node: &NodeRecord,
        req: proto::EtcdSnapshotRequest,
        timeout: Duration,
    ) -> AgentCall<'_, SnapshotChunks>;
    /// Streams an etcd snapshot to `node` for a restore: `header` names the
    /// operation, size and SHA-256; `data` yields the plaintext in pieces.
    fn put_etcd_snapshot(
        &self,
        node: &NodeRecord,
        header: proto::EtcdSnapshotPiece,
        data: SnapshotPieces,
        timeout: Duration,
    ) -> AgentCall<'_, proto::PutEtcdSnapshotResponse>;
}

/// The chunks of a snapshot as an agent streams them.
pub type SnapshotChunks = BoxStream<'static, Result<proto::EtcdSnapshotChunk, AgentError>>;

/// A snapshot's plaintext in pieces, as the store reads it.
pub type SnapshotPieces = futures::stream::BoxStream<'static, Vec<u8>>;

/// The agents over gRPC with mutual TLS.
pub struct Agents {
    creds: ClientCreds,
    channels: Mutex<HashMap<String, (String, Channel)>>,
}

impl Agents {
    pub fn new(creds: ClientCreds) -> Self {
        Agents {
            creds,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A client for `node`, reusing its channel while its endpoint is unchanged.
    fn client(&self, node: &NodeRecord) -> Result<AgentClient<Channel>, CoordError> {
        if node.endpoint.is_empty() {
            return Err(CoordError::Unavailable(format!(
                "node {} has never sent a heartbeat, so its address is unknown; check that `kh-agent serve` runs there",
                node.name
            )));
        }
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let ch = match map.get(node.name.as_str()) {
            Some((ep, ch)) if ep == &node.endpoint => ch.clone(),
            _ => {
                let ch = kh::tls::channel(
                    &node.endpoint,
                    &node.name.tls_server_name(),
                    Some(&self.creds),
                    &self.creds.ca_pem,
                )
                .map_err(|e| CoordError::Unavailable(format!("node {}: {e}", node.name)))?;
                map.insert(node.name.to_string(), (node.endpoint.clone(), ch.clone()));
                ch
            }
        };
        Ok(AgentClient::new(ch))
    }

    fn connected(&self, node: &NodeRecord) -> Result<AgentClient<Channel>, AgentError> {
        self.client(node)
            .map_err(|e| AgentError::new(AgentErrorKind::Connect, e.to_string()))
    }
}

/// One unary call: a client for the node, the request with its deadline,
/// the status mapped to an [`AgentError`].
macro_rules! call {
    ($self:ident, $node:ident, $method:ident, $req:expr, $timeout:ident) => {{
        let client = $self.connected($node);
        let req = $req;
        Box::pin(async move {
            let mut c = client?;
            c.$method(request(req, $timeout))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| AgentError::from_status(&s))
        })
    }};
}

impl AgentApi for Agents {
    fn connect(&self, node: &NodeRecord) -> Result<(), AgentError> {
        self.connected(node).map(|_| ())
    }

    fn run_step(
        &self,
        node: &NodeRecord,
        req: proto::RunStepRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::StepReport> {
        call!(self, node, run_step, req, timeout)
    }

    fn preflight(
        &self,
        node: &NodeRecord,
        req: proto::PreflightRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::PreflightReport> {
        call!(self, node, preflight, req, timeout)
    }

    fn node_status(
        &self,
        node: &NodeRecord,
        timeout: Duration,
    ) -> AgentCall<'_, proto::NodeStatusResponse> {
        call!(
            self,
            node,
            node_status,
            proto::NodeStatusRequest {},
            timeout
        )
    }

    fn etcd_members(
        &self,
        node: &NodeRecord,
        req: proto::EtcdRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::EtcdMembersResponse> {
        call!(self, node, etcd_members, req, timeout)
    }

    fn etcd_health(
        &self,
        node: &NodeRecord,
        req: proto::EtcdRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::EtcdHealthResponse> {
        call!(self, node, etcd_health, req, timeout)
    }

    fn kube_nodes(
        &self,
        node: &NodeRecord,
        timeout: Duration,
    ) -> AgentCall<'_, proto::KubeNodesResponse> {
        call!(self, node, kube_nodes, proto::KubeNodesRequest {}, timeout)
    }

    fn apiserver_ready(
        &self,
        node: &NodeRecord,
        req: proto::ApiserverReadyRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::ApiserverReadyResponse> {
        call!(self, node, apiserver_ready, req, timeout)
    }

    fn tcp_probe(
        &self,
        node: &NodeRecord,
        req: proto::TcpProbeRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::TcpProbeResponse> {
        call!(self, node, tcp_probe, req, timeout)
    }

    fn read_cluster_files(
        &self,
        node: &NodeRecord,
        req: proto::ReadClusterFilesRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::ReadClusterFilesResponse> {
        call!(self, node, read_cluster_files, req, timeout)
    }

    fn cluster_certs(
        &self,
        node: &NodeRecord,
        timeout: Duration,
    ) -> AgentCall<'_, proto::ClusterCertsResponse> {
        call!(
            self,
            node,
            cluster_certs,
            proto::ClusterCertsRequest {},
            timeout
        )
    }

    fn package_versions(
        &self,
        node: &NodeRecord,
        req: proto::PackageVersionsRequest,
        timeout: Duration,
    ) -> AgentCall<'_, proto::PackageVersionsResponse> {
        call!(self, node, package_versions, req, timeout)
    }

    fn etcd_snapshot(
        &self,
        node: &NodeRecord,
        req: proto::EtcdSnapshotRequest,
        timeout: Duration,
    ) -> AgentCall<'_, SnapshotChunks> {
        use futures::StreamExt;
        let client = self.connected(node);
        Box::pin(async move {
            let mut c = client?;
            let stream = c
                .etcd_snapshot(request(req, timeout))
                .await
                .map_err(|s| AgentError::from_status(&s))?
                .into_inner();
            Ok(stream
                .map(|r| r.map_err(|s| AgentError::from_status(&s)))
                .boxed())
        })
    }

    fn put_etcd_snapshot(
        &self,
        node: &NodeRecord,
        header: proto::EtcdSnapshotPiece,
        data: SnapshotPieces,
        timeout: Duration,
    ) -> AgentCall<'_, proto::PutEtcdSnapshotResponse> {
        use futures::StreamExt;
        let client = self.connected(node);
        // A concrete stream type (a channel fed by a task): tonic's
        // client-streaming call with a boxed stream defeats the compiler's
        // proof that the call's future is Send.
        let (tx, rx) = tokio::sync::mpsc::channel::<proto::EtcdSnapshotPiece>(4);
        let mut data = data;
        tokio::spawn(async move {
            if tx.send(header).await.is_err() {
                return;
            }
            while let Some(d) = data.next().await {
                let piece = proto::EtcdSnapshotPiece {
                    data: d,
                    ..Default::default()
                };
                if tx.send(piece).await.is_err() {
                    return;
                }
            }
        });
        let req = request(tokio_stream::wrappers::ReceiverStream::new(rx), timeout);
        Box::pin(async move {
            let mut c = client?;
            c.put_etcd_snapshot(req)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| AgentError::from_status(&s))
        })
    }
}

/// A request with a deadline, so a hung agent cannot hang an operation.
fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Describes a failed agent call for an operator.
pub fn explain(node: &str, e: &AgentError) -> String {
    match &e.kind {
        AgentErrorKind::Connect => e.message.clone(),
        AgentErrorKind::Unreachable => format!(
            "cannot reach the agent on {node}: {}; check `systemctl status kh-agent` there",
            e.message
        ),
        AgentErrorKind::Timeout => format!("the agent on {node} did not answer in time"),
        AgentErrorKind::Answered(code) => {
            format!("the agent on {node} answered {code}: {}", e.message)
        }
    }
}
