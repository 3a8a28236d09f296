//! The one authorization layer. It maps the peer's certificate identity to the
//! RPCs it may call, before any handler runs. Handlers then find the caller's
//! [`Identity`] in the request extensions and never look at request fields to
//! learn who is calling.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;

use crate::pki::{Identity, Role};
use crate::tls::PeerInfo;

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who completes the TLS handshake, with or without a certificate.
    Anonymous,
    /// Only certificates of this role.
    Role(Role),
}

/// Every RPC of every kh service, and who may call it. A method missing here is
/// denied; the test below fails when the proto gains one that is not listed.
pub const POLICY: &[(&str, Access)] = &[
    ("/kh.v1.Enrollment/Enroll", Access::Anonymous),
    ("/kh.v1.Node/Heartbeat", Access::Role(Role::Node)),
    ("/kh.v1.Node/Renew", Access::Role(Role::Node)),
    ("/kh.v1.Admin/CreateToken", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/ListTokens", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/DeleteToken", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/ListNodes", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/Prepare", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/Preflight", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/Rollout", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/RolloutStatus", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/Kubeconfig", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/EtcdMembers", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/Health", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/EtcdRemoveMember", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/EtcdReplace", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/History", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/Reset", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/DeleteNode", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/Operations", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/CancelOperation", Access::Role(Role::Admin)),
    ("/kh.v1.Agent/GetFacts", Access::Role(Role::Coordinator)),
    ("/kh.v1.Agent/RunStep", Access::Role(Role::Coordinator)),
    (
        "/kh.v1.Agent/PutEtcdSnapshot",
        Access::Role(Role::Coordinator),
    ),
    ("/kh.v1.Agent/Preflight", Access::Role(Role::Coordinator)),
    ("/kh.v1.Agent/NodeStatus", Access::Role(Role::Coordinator)),
    ("/kh.v1.Agent/EtcdMembers", Access::Role(Role::Coordinator)),
    ("/kh.v1.Agent/EtcdHealth", Access::Role(Role::Coordinator)),
    ("/kh.v1.Agent/KubeNodes", Access::Role(Role::Coordinator)),
    (
        "/kh.v1.Agent/ApiserverReady",
        Access::Role(Role::Coordinator),
    ),
    ("/kh.v1.Agent/TcpProbe", Access::Role(Role::Coordinator)),
    (
        "/kh.v1.Agent/ReadClusterFiles",
        Access::Role(Role::Coordinator),
    ),
    ("/kh.v1.Agent/ClusterCerts", Access::Role(Role::Coordinator)),
    (
        "/kh.v1.Agent/PackageVersions",
        Access::Role(Role::Coordinator),
    ),
    ("/kh.v1.Admin/ListAdmins", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/CreateAdmin", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/RevokeAdmin", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/CertsCheck", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/CertsRenew", Access::Role(Role::Admin)),
    ("/kh.v1.Agent/EtcdSnapshot", Access::Role(Role::Coordinator)),
    ("/kh.v1.Admin/EtcdSnapshotSave", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/EtcdSnapshotList", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/EtcdSnapshotDelete", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/EtcdSnapshotGet", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/EtcdRestore", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/Upgrade", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/EtcdSnapshotImport", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/Remediation", Access::Role(Role::Admin)),
    ("/kh.v1.Admin/Spares", Access::Role(Role::Admin)),
];

/// The services a server exposes; the coordinator and the agent differ.
pub const COORDINATOR_SERVICES: &[&str] = &["kh.v1.Enrollment", "kh.v1.Node", "kh.v1.Admin"];
pub const AGENT_SERVICES: &[&str] = &["kh.v1.Agent"];

/// Decides one call. `Ok` carries the identity to hand to the handler.
pub fn decide(served: &[&str], path: &str, peer: Option<&Identity>) -> Result<(), Status> {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let access = served
        .contains(&service)
        .then(|| POLICY.iter().find(|(p, _)| *p == path).map(|(_, a)| *a))
        .flatten()
        .ok_or_else(|| {
            Status::unimplemented(format!("{} is not served here", crate::echo(path)))
        })?;
    match (access, peer) {
        (Access::Anonymous, _) => Ok(()),
        (Access::Role(role), Some(id)) if id.role == role => Ok(()),
        (Access::Role(role), Some(id)) => Err(Status::permission_denied(format!(
            "{id} may not call {path}: it requires a {role} identity"
        ))),
        (Access::Role(role), None) => Err(Status::unauthenticated(format!(
            "{path} requires a kh client certificate with a {role} identity; none was presented"
        ))),
    }
}

/// A tower layer that applies [`decide`] to every request.
#[derive(Debug, Clone)]
pub struct AuthzLayer {
    served: Arc<[&'static str]>,
}

impl AuthzLayer {
    pub fn new(served: &[&'static str]) -> Self {
        AuthzLayer {
            served: served.into(),
        }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            served: self.served.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    served: Arc<[&'static str]>,
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for Authz<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone());
        match decide(&self.served, req.uri().path(), peer.as_ref()) {
            Ok(()) => {
                if let Some(id) = peer {
                    req.extensions_mut().insert(id);
                }
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::info!(path = %req.uri().path(), peer = ?peer.map(|p| p.to_string()), code = ?status.code(), "call refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The caller's identity, as the layer put it in the request.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .ok_or_else(|| Status::unauthenticated("no kh identity on this call"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::time::SystemTime;
    use tonic::Code;

    fn all_rpc_paths() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::DESCRIPTOR_SET).unwrap();
        let mut paths = vec![];
        for file in set.file {
            for svc in &file.service {
                for m in &svc.method {
                    paths.push(format!("/{}.{}/{}", file.package(), svc.name(), m.name()));
                }
            }
        }
        paths.sort();
        paths
    }

    fn id(role: Role, name: &str) -> Identity {
        Identity {
            role,
            name: name.into(),
            serial: "01".into(),
            not_after: SystemTime::now(),
        }
    }

    #[test]
    fn the_policy_lists_exactly_the_rpcs_of_the_proto() {
        let mut listed: Vec<String> = POLICY.iter().map(|(p, _)| p.to_string()).collect();
        listed.sort();
        assert_eq!(
            listed,
            all_rpc_paths(),
            "POLICY must list every RPC once, and nothing else"
        );
    }

    /// Walks every RPC of every service with every identity, on both servers.
    #[test]
    fn every_rpc_with_every_identity() {
        let identities: Vec<(&str, Option<Identity>)> = vec![
            ("anonymous", None),
            ("admin", Some(id(Role::Admin, "admin"))),
            ("node", Some(id(Role::Node, "cp-1"))),
            ("coordinator", Some(id(Role::Coordinator, "kh-coordinator"))),
        ];
        let expected = |server: &str, path: &str, who: &str| -> Result<(), Code> {
            let service = path.split('/').nth(1).unwrap();
            let on_this_server = match server {
                "coordinator" => COORDINATOR_SERVICES.contains(&service),
                _ => AGENT_SERVICES.contains(&service),
            };
            if !on_this_server {
                return Err(Code::Unimplemented);
            }
            let needed = match service {
                "kh.v1.Enrollment" => return Ok(()),
                "kh.v1.Node" => "node",
                "kh.v1.Admin" => "admin",
                "kh.v1.Agent" => "coordinator",
                other => panic!("a new service {other} needs a decision in this test"),
            };
            match who {
                "anonymous" => Err(Code::Unauthenticated),
                w if w == needed => Ok(()),
                _ => Err(Code::PermissionDenied),
            }
        };
        let mut checked = 0;
        for (server, served) in [
            ("coordinator", COORDINATOR_SERVICES),
            ("agent", AGENT_SERVICES),
        ] {
            for path in all_rpc_paths() {
                for (who, identity) in &identities {
                    let got = decide(served, &path, identity.as_ref()).map_err(|s| s.code());
                    assert_eq!(
                        got,
                        expected(server, &path, who),
                        "{server} {path} as {who}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2 * all_rpc_paths().len() * identities.len());
    }

    #[test]
    fn unknown_paths_are_refused_even_for_admins() {
        let admin = id(Role::Admin, "admin");
        let err = decide(
            COORDINATOR_SERVICES,
            "/kh.v1.Admin/DropEverything",
            Some(&admin),
        )
        .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        let err = decide(
            COORDINATOR_SERVICES,
            "/grpc.reflection.v1.ServerReflection/X",
            Some(&admin),
        )
        .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
    }

    #[test]
    fn refusals_name_the_caller_and_the_requirement() {
        let node = id(Role::Node, "cp-1");
        let err = decide(COORDINATOR_SERVICES, "/kh.v1.Admin/ListNodes", Some(&node)).unwrap_err();
        assert_eq!(
            err.message(),
            "node/cp-1 may not call /kh.v1.Admin/ListNodes: it requires a admin identity"
        );
    }
}
