//! The EtcdSnapshot stream: `etcdctl snapshot save` into the agent's
//! private state directory (through kh-host), the file read in chunks of
//! [`CHUNK`] bytes on the blocking pool while etcdctl writes it and sent as
//! they are read, never held whole in memory; then `etcdctl snapshot
//! status` of the complete file, whose answer is the last message. The file is removed
//! when the stream ends, whatever the outcome (a coordinator that hangs up
//! mid-stream included).

use std::pin::Pin;
use std::sync::Arc;

use kh::proto;
use kh_host::kube::{local_etcd_endpoint, EtcdClient, KubeError, TakenSnapshot};
use tonic::codegen::tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::Status;

use crate::state::AgentState;

/// Bytes per message: well under gRPC's 4 MiB message limit.
pub const CHUNK: usize = 1 << 20;

pub type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<proto::EtcdSnapshotChunk, Status>> + Send + 'static>>;

/// A failed snapshot as the coordinator sees it: the failure kind first
/// (`quorum-lost`, `timeout`, `command-not-found`, `other`), then etcdctl's
/// own words and what to do.
fn failed(e: &KubeError) -> Status {
    Status::failed_precondition(format!(
        "etcd snapshot failed ({}): {e}",
        e.failure_kind().name()
    ))
}

fn client(st: &AgentState, req: proto::EtcdSnapshotRequest) -> Result<EtcdClient, Status> {
    let endpoint = if req.endpoint.is_empty() {
        local_etcd_endpoint(&st.host)
            .map_err(|e| failed(&e))?
            .ok_or_else(|| {
                Status::failed_precondition(
                    "etcd snapshot failed (other): this node runs no etcd member (no /etc/kubernetes/manifests/etcd.yaml); take the snapshot through a control plane",
                )
            })?
    } else {
        req.endpoint
    };
    Ok(EtcdClient::stacked(vec![endpoint]))
}

/// Saves the snapshot and streams it as etcdctl writes it; then `etcdctl
/// snapshot status` reads the complete file, and its answer and the file's
/// size are the last message (without data). A failure at any point is the
/// stream's error: the bytes sent before it are no snapshot, which the
/// coordinator's check of etcd's trailing SHA-256 would tell anyway.
pub async fn stream(
    state: &Arc<AgentState>,
    req: proto::EtcdSnapshotRequest,
) -> Result<SnapshotStream, Status> {
    let client = client(state, req)?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let sent = |data: Vec<u8>| {
            tx.blocking_send(Ok(proto::EtcdSnapshotChunk {
                data,
                status: None,
                file_size: 0,
            }))
            .is_ok()
        };
        // Dropped (and the file removed) at the end of this block.
        let last = match TakenSnapshot::save_streaming(&st.host, &client, CHUNK, sent) {
            Ok(taken) => match taken.status() {
                Ok(s) => Ok(proto::EtcdSnapshotChunk {
                    data: Vec::new(),
                    status: Some(proto::EtcdSnapshotStatus {
                        hash: s.hash,
                        revision: s.revision,
                        total_keys: s.total_keys,
                        total_size: s.total_size,
                    }),
                    file_size: taken.size,
                }),
                Err(e) => Err(failed(&e)),
            },
            Err(e) => Err(failed(&e)),
        };
        let _ = tx.blocking_send(last);
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
