use std::sync::Arc;
use std::time::Duration;

use kh::names::NodeName;
use kh::proto::admin_server::Admin;
use kh::proto::*;
use kh::time::unix_ms;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::error::CoordError;
use crate::tokens::{self, TokenRecord};
use crate::Coordinator;

pub struct AdminService(pub Arc<Coordinator>);

fn token_info(r: &TokenRecord, now_ms: u64) -> TokenInfo {
    TokenInfo {
        id: r.id.clone(),
        node_name: r.node.to_string(),
        created_unix_ms: r.created_ms,
        expires_unix_ms: r.expires_ms,
        force: r.force,
        state: r.state(now_ms).to_string(),
    }
}

type EventStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// Streams a rollout's backlog, then its live events up to the closing one.
fn follow_stream(f: crate::rollout::Follow) -> EventStream<RolloutEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        for ev in f.backlog {
            let end = ev.kind == rollout_event::Kind::Finished as i32;
            if tx.send(Ok(ev)).await.is_err() || end {
                return;
            }
        }
        let Some(mut live) = f.live else { return };
        loop {
            match live.recv().await {
                Ok(ev) => {
                    let end = ev.kind == rollout_event::Kind::Finished as i32;
                    if tx.send(Ok(ev)).await.is_err() || end {
                        return;
                    }
                }
                // A slow follower skips what it missed; the journal keeps it.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl Admin for AdminService {
    type PrepareStream = EventStream<PrepareEvent>;
    type RolloutStream = EventStream<RolloutEvent>;
    type RolloutStatusStream = EventStream<RolloutEvent>;
    type ResetStream = EventStream<RolloutEvent>;

    async fn reset(
        &self,
        req: Request<ResetRequest>,
    ) -> Result<Response<Self::ResetStream>, Status> {
        let f = crate::rollout::reset::start(self.0.clone(), req.into_inner()).await?;
        Ok(Response::new(follow_stream(f)))
    }
    type EtcdReplaceStream = EventStream<RolloutEvent>;
    type CertsRenewStream = EventStream<RolloutEvent>;

    async fn certs_renew(
        &self,
        req: Request<kh::proto::CertsRenewRequest>,
    ) -> Result<Response<Self::CertsRenewStream>, Status> {
        let f = crate::rollout::certs::start(self.0.clone(), req.into_inner()).await?;
        Ok(Response::new(follow_stream(f)))
    }

    async fn etcd_members(
        &self,
        _req: Request<AdminEtcdMembersRequest>,
    ) -> Result<Response<AdminEtcdMembersResponse>, Status> {
        let spec = crate::etcd::held_spec(&self.0)?;
        let view = crate::etcd::membership(&self.0, &spec, None).await?;
        Ok(Response::new(AdminEtcdMembersResponse {
            members: view.members,
            via: view.via,
        }))
    }

    async fn health(
        &self,
        _req: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(crate::etcd::health(&self.0).await?))
    }

    async fn certs_check(
        &self,
        _req: Request<CertsCheckRequest>,
    ) -> Result<Response<CertsCheckResponse>, Status> {
        Ok(Response::new(crate::certs::check(&self.0).await?))
    }

    async fn etcd_remove_member(
        &self,
        req: Request<EtcdRemoveMemberRequest>,
    ) -> Result<Response<EtcdRemoveMemberResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            crate::etcd::remove_member(&self.0, &r.member, r.force, r.no_snapshot).await?,
        ))
    }

    async fn etcd_replace(
        &self,
        req: Request<EtcdReplaceRequest>,
    ) -> Result<Response<Self::EtcdReplaceStream>, Status> {
        let f = crate::rollout::replace::start(self.0.clone(), req.into_inner()).await?;
        Ok(Response::new(follow_stream(f)))
    }

    async fn remediation(
        &self,
        req: Request<kh::proto::RemediationRequest>,
    ) -> Result<Response<kh::proto::RemediationStatus>, Status> {
        use kh::proto::remediation_request::Action;
        let coord = &self.0;
        let st = match req.into_inner().action() {
            Action::Pause => crate::remediation::set_paused(coord, true)?,
            Action::Resume => crate::remediation::set_paused(coord, false)?,
            Action::Status | Action::Unspecified => crate::remediation::status(coord)?,
        };
        Ok(Response::new(st))
    }

    async fn spares(
        &self,
        req: Request<kh::proto::SparesRequest>,
    ) -> Result<Response<kh::proto::SparesResponse>, Status> {
        let add = req.into_inner().add;
        let r = if add.is_empty() {
            crate::remediation::spares_list(&self.0)?
        } else {
            crate::remediation::spares_add(&self.0, &add).await?
        };
        Ok(Response::new(r))
    }

    async fn history(
        &self,
        req: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        let limit = match req.into_inner().limit {
            0 => 200,
            n => n as usize,
        };
        let entries = crate::audit::list(&self.0.db, limit)?
            .into_iter()
            .map(|e| AuditEntry {
                unix_ms: e.unix_ms,
                operation: e.operation,
                node: e.node,
                step: e.step,
                outcome: e.outcome,
                message: e.message,
            })
            .collect();
        Ok(Response::new(HistoryResponse { entries }))
    }

    async fn operations(
        &self,
        _req: Request<OperationsRequest>,
    ) -> Result<Response<OperationsResponse>, Status> {
        let operations = crate::rollout::operation::list(&self.0).await?;
        Ok(Response::new(OperationsResponse { operations }))
    }

    async fn cancel_operation(
        &self,
        req: Request<CancelOperationRequest>,
    ) -> Result<Response<CancelOperationResponse>, Status> {
        let r = crate::rollout::operation::cancel(&self.0, &req.into_inner().kind).await?;
        Ok(Response::new(r))
    }

    async fn rollout(
        &self,
        req: Request<RolloutRequest>,
    ) -> Result<Response<Self::RolloutStream>, Status> {
        let f = crate::rollout::start(self.0.clone(), req.into_inner()).await?;
        Ok(Response::new(follow_stream(f)))
    }

    async fn rollout_status(
        &self,
        req: Request<RolloutStatusRequest>,
    ) -> Result<Response<Self::RolloutStatusStream>, Status> {
        let f = crate::rollout::status(&self.0, req.into_inner().follow).await?;
        Ok(Response::new(follow_stream(f)))
    }

    async fn kubeconfig(
        &self,
        _req: Request<KubeconfigRequest>,
    ) -> Result<Response<KubeconfigResponse>, Status> {
        let c = &self.0;
        let views = c
            .registry
            .list(unix_ms(c.clock.now()), c.config.heartbeat_interval)?;
        let mut last = String::from(
            "no node has the control-plane role; run `khctl rollout -f cluster.yaml` first",
        );
        for v in views
            .into_iter()
            .filter(|v| v.record.role.as_deref() == Some("control-plane"))
        {
            if c.agents.connect(&v.record).is_err() {
                continue;
            }
            let req = ReadClusterFilesRequest {
                set: read_cluster_files_request::Set::AdminKubeconfig as i32,
            };
            let timeout = std::time::Duration::from_secs(20);
            match c.agents.read_cluster_files(&v.record, req, timeout).await {
                Ok(r) => {
                    if let Some(f) = r.files.into_iter().next() {
                        return Ok(Response::new(KubeconfigResponse {
                            kubeconfig: String::from_utf8_lossy(&f.contents).into_owned(),
                            from_node: v.record.name.to_string(),
                        }));
                    }
                }
                Err(e) => last = crate::agents::explain(v.record.name.as_str(), &e),
            }
        }
        Err(Status::unavailable(format!(
            "no control plane could provide admin.conf: {last}"
        )))
    }

    async fn prepare(
        &self,
        req: Request<PrepareRequest>,
    ) -> Result<Response<Self::PrepareStream>, Status> {
        let r = req.into_inner();
        let coord = self.0.clone();
        let (spec, targets) = crate::prepare::resolve(&coord, r.targets)?;
        if let (Some(spec), false) = (&spec, r.dry_run) {
            crate::prepare::record_roles(&coord, spec)?;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(crate::prepare::prepare(coord, targets, r.dry_run, tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn preflight(
        &self,
        req: Request<AdminPreflightRequest>,
    ) -> Result<Response<AdminPreflightResponse>, Status> {
        let coord = self.0.clone();
        let (spec, targets) = crate::prepare::resolve(&coord, req.into_inner().targets)?;
        let nodes = crate::prepare::preflight(coord, spec, targets).await;
        Ok(Response::new(AdminPreflightResponse { nodes }))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let r = req.into_inner();
        let c = &self.0;
        let node = NodeName::new(&r.node_name).map_err(CoordError::from)?;
        let ttl = match r.ttl_seconds {
            0 => c.config.default_token_ttl,
            s => Duration::from_secs(s),
        };
        let (token, rec) = {
            let (c, node) = (c.clone(), node.clone());
            // A synced write, and now and then a sweep of old tokens: off the
            // reactor.
            tokio::task::spawn_blocking(move || {
                tokens::create(&c.db, c.clock.as_ref(), &c.token_prune, node, ttl, r.force)
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))??
        };
        let hash = c.pki.ca().cert_hash();
        let addr = c.public_address();
        Ok(Response::new(CreateTokenResponse {
            token: token.reveal(),
            info: Some(token_info(&rec, unix_ms(c.clock.now()))),
            // The token goes through the shell's builtin echo and a pipe:
            // as an argument of kh-agent, `ps` would show it to every user
            // of the host while enrollment runs.
            enroll_command: format!(
                "echo {} | kh-agent enroll --coordinator {addr} --token-file - --ca-cert-hash {hash} --node-name {node}",
                token.reveal()
            ),
            ca_cert_hash: hash,
            coordinator: addr,
        }))
    }

    async fn list_tokens(
        &self,
        _req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let c = &self.0;
        let now = unix_ms(c.clock.now());
        let tokens = tokens::list(&c.db, c.clock.as_ref())?
            .iter()
            .map(|r| token_info(r, now))
            .collect();
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn delete_token(
        &self,
        req: Request<DeleteTokenRequest>,
    ) -> Result<Response<DeleteTokenResponse>, Status> {
        tokens::delete(&self.0.db, &req.into_inner().id)?;
        Ok(Response::new(DeleteTokenResponse {}))
    }

    async fn list_nodes(
        &self,
        _req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let c = &self.0;
        let views = c
            .registry
            .list(unix_ms(c.clock.now()), c.config.heartbeat_interval)?;
        let nodes = views
            .into_iter()
            .map(|v| NodeInfo {
                name: v.record.name.to_string(),
                role: v.record.role.unwrap_or_default(),
                endpoint: v.record.endpoint,
                last_seen_unix_ms: v.last_seen_ms,
                health: if v.ready { "Ready" } else { "NotReady" }.to_string(),
                facts: v.record.facts,
                enrolled_unix_ms: v.record.enrolled_ms,
                cert_expires_unix_ms: v.record.cert_expires_ms,
                warnings: v.warnings,
                agent_version: v.record.agent_version,
                retired: v.record.retired.is_some(),
                retired_unix_ms: v.record.retired.as_ref().map_or(0, |r| r.unix_ms),
                retired_reason: v.record.retired.map(|r| r.reason).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(ListNodesResponse {
            nodes,
            heartbeat_interval_ms: c.config.heartbeat_interval.as_millis() as u64,
        }))
    }

    async fn delete_node(
        &self,
        req: Request<DeleteNodeRequest>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        let coord = self.0.clone();
        let name = req.into_inner().name;
        // Synced writes (the registry, the audit log): off the reactor.
        let message = tokio::task::spawn_blocking(move || crate::nodes::delete(&coord, &name))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(DeleteNodeResponse { message }))
    }

    async fn list_admins(
        &self,
        _req: Request<ListAdminsRequest>,
    ) -> Result<Response<ListAdminsResponse>, Status> {
        let admins = self.0.admins.list()?.iter().map(admin_info).collect();
        Ok(Response::new(ListAdminsResponse { admins }))
    }

    async fn create_admin(
        &self,
        req: Request<CreateAdminRequest>,
    ) -> Result<Response<CreateAdminResponse>, Status> {
        let c = &self.0;
        let (cfg, rec) = c.admins.issue(
            c.pki.ca(),
            &req.into_inner().name,
            &c.public_address(),
            c.config.admin_cert_validity,
            c.clock.now(),
        )?;
        Ok(Response::new(CreateAdminResponse {
            khconfig: cfg.to_yaml(),
            info: Some(admin_info(&rec)),
        }))
    }

    type EtcdSnapshotSaveStream = EventStream<EtcdSnapshotSaveEvent>;
    type EtcdSnapshotGetStream = EventStream<EtcdSnapshotData>;
    type EtcdRestoreStream = EventStream<RolloutEvent>;
    type UpgradeStream = EventStream<RolloutEvent>;

    async fn upgrade(
        &self,
        req: Request<UpgradeRequest>,
    ) -> Result<Response<Self::UpgradeStream>, Status> {
        let f = crate::rollout::upgrade::start(self.0.clone(), req.into_inner()).await?;
        Ok(Response::new(follow_stream(f)))
    }

    async fn etcd_snapshot_save(
        &self,
        req: Request<EtcdSnapshotSaveRequest>,
    ) -> Result<Response<Self::EtcdSnapshotSaveStream>, Status> {
        Ok(Response::new(crate::rpc::snapshots::save(
            self.0.clone(),
            req.into_inner(),
        )))
    }

    async fn etcd_snapshot_list(
        &self,
        _req: Request<EtcdSnapshotListRequest>,
    ) -> Result<Response<EtcdSnapshotListResponse>, Status> {
        let snapshots = crate::snapshots::list(&self.0)?
            .iter()
            .map(crate::snapshots::SnapshotMeta::to_proto)
            .collect();
        Ok(Response::new(EtcdSnapshotListResponse { snapshots }))
    }

    async fn etcd_snapshot_delete(
        &self,
        req: Request<EtcdSnapshotDeleteRequest>,
    ) -> Result<Response<EtcdSnapshotDeleteResponse>, Status> {
        crate::rpc::snapshots::delete(&self.0, &req.into_inner().id)?;
        Ok(Response::new(EtcdSnapshotDeleteResponse {}))
    }

    async fn etcd_snapshot_get(
        &self,
        req: Request<EtcdSnapshotGetRequest>,
    ) -> Result<Response<Self::EtcdSnapshotGetStream>, Status> {
        Ok(Response::new(crate::rpc::snapshots::get(
            &self.0,
            &req.into_inner().id,
        )?))
    }

    async fn etcd_restore(
        &self,
        req: Request<EtcdRestoreRequest>,
    ) -> Result<Response<Self::EtcdRestoreStream>, Status> {
        let source = Arc::new(crate::rollout::restore::StoreSnapshots(self.0.clone()));
        let f = crate::rollout::restore::start(self.0.clone(), req.into_inner(), source).await?;
        Ok(Response::new(follow_stream(f)))
    }

    async fn etcd_snapshot_import(
        &self,
        req: Request<tonic::Streaming<EtcdSnapshotImportPiece>>,
    ) -> Result<Response<SnapshotMeta>, Status> {
        let pieces = req.into_inner().map(|p| {
            p.map(|p| p.data).map_err(|s| {
                crate::error::CoordError::InvalidArgument(format!(
                    "the snapshot upload broke off: {}",
                    s.message()
                ))
            })
        });
        let meta =
            crate::snapshots::import(&self.0, Box::pin(pieces), crate::snapshots::REASON_IMPORT)
                .await?;
        Ok(Response::new(meta.to_proto()))
    }

    async fn revoke_admin(
        &self,
        req: Request<RevokeAdminRequest>,
    ) -> Result<Response<RevokeAdminResponse>, Status> {
        let caller = kh::authz::caller(&req)?.clone();
        let c = &self.0;
        let revoked = c
            .admins
            .revoke(&req.into_inner().target, &caller, c.clock.now())?
            .iter()
            .map(admin_info)
            .collect();
        Ok(Response::new(RevokeAdminResponse { revoked }))
    }
}

fn admin_info(r: &crate::admins::AdminRecord) -> AdminCertInfo {
    AdminCertInfo {
        serial: r.serial.clone(),
        name: r.name.clone(),
        issued_unix_ms: r.issued_ms,
        expires_unix_ms: r.expires_ms,
        revoked_unix_ms: r.revoked_ms.unwrap_or(0),
    }
}
