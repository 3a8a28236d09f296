//! Serves the coordinator's services over mTLS behind the authorization layer.

use std::future::Future;
use std::sync::Arc;

use kh::authz::{AuthzLayer, COORDINATOR_SERVICES};
use kh::pki::Role;
use kh::proto::admin_server::AdminServer;
use kh::proto::enrollment_server::EnrollmentServer;
use kh::proto::node_server::NodeServer;
use kh::tls::{self, ClientAuth, ServerCert};
use tokio::net::TcpListener;

use crate::rpc::{admin::AdminService, enrollment::EnrollmentService, node::NodeService};
use crate::Coordinator;

pub async fn serve(
    coord: Arc<Coordinator>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let cert = ServerCert::new(tls::certified_key(
        &coord.pki.serving_chain_pem,
        &coord.pki.serving_key,
    )?);
    // Optional client auth: enrollment must be reachable without a
    // certificate; the layer keeps every other RPC behind one.
    let config = tls::server_config(coord.pki.ca().cert_pem(), cert, ClientAuth::Optional)?;
    tonic::transport::Server::builder()
        .layer(AuthzLayer::new(COORDINATOR_SERVICES))
        .add_service(EnrollmentServer::new(EnrollmentService(coord.clone())))
        .add_service(NodeServer::new(NodeService(coord.clone())))
        .add_service(AdminServer::with_interceptor(
            AdminService(coord.clone()),
            refuse_revoked_admins(coord.clone()),
        ))
        .serve_with_incoming_shutdown(tls::incoming(listener, config), shutdown)
        .await?;
    Ok(())
}

/// Refuses calls made with a revoked admin certificate. The TLS layer only
/// knows the CA, so it accepts them; this check knows the coordinator's
/// revocations (`crate::admins`). Only the Admin service needs it: the
/// authorization layer keeps admin certificates out of every other one.
fn refuse_revoked_admins(
    coord: Arc<Coordinator>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |req| {
        let revoked = req
            .extensions()
            .get::<tls::PeerInfo>()
            .and_then(|p| p.identity.as_ref())
            .filter(|id| id.role == Role::Admin && coord.admins.is_revoked(&id.serial));
        match revoked {
            None => Ok(req),
            Some(id) => {
                tracing::info!(admin = %id.name, serial = %id.serial, "call with a revoked admin certificate refused");
                Err(tonic::Status::unauthenticated(format!(
                    "the admin certificate {id} (serial {}) has been revoked; use another admin credential (an admin can make one with `khctl admin create NAME -o FILE`)",
                    id.serial
                )))
            }
        }
    }
}
