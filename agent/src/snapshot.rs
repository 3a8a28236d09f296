//! The EtcdSnapshot stream: `etcdctl snapshot save` into the agent's
//! private state directory (through kh-host), its `snapshot status`, then
//! the file read back in chunks of [`CHUNK`] bytes on the blocking pool and
//! sent as they are read, never held whole in memory. The file is removed
//! when the stream ends, whatever the outcome (a coordinator that hangs up
//! mid-stream included).

use std::io::Read;
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

fn take(st: &AgentState, req: proto::EtcdSnapshotRequest) -> Result<TakenSnapshot, Status> {
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
    TakenSnapshot::take(&st.host, &EtcdClient::stacked(vec![endpoint])).map_err(|e| failed(&e))
}

/// Takes the snapshot, then streams it: the first message carries its
/// status and size.
pub async fn stream(
    state: &Arc<AgentState>,
    req: proto::EtcdSnapshotRequest,
) -> Result<SnapshotStream, Status> {
    let st = state.clone();
    let taken = tokio::task::spawn_blocking(move || take(&st, req))
        .await
        .map_err(|e| Status::internal(format!("the snapshot panicked: {e}")))??;
    let mut file = taken.open().map_err(|e| failed(&e))?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        // Owned here so the file is removed when the last chunk is sent or
        // the receiver is gone.
        let taken = taken;
        let mut first = Some((taken.status, taken.size));
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            let read = loop {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == CHUNK {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = read {
                let _ = tx.blocking_send(Err(Status::internal(format!(
                    "etcd snapshot failed (other): reading {}: {e}",
                    taken.path
                ))));
                return;
            }
            buf.truncate(filled);
            let (status, file_size) = match first.take() {
                Some((s, size)) => (
                    Some(proto::EtcdSnapshotStatus {
                        hash: s.hash,
                        revision: s.revision,
                        total_keys: s.total_keys,
                        total_size: s.total_size,
                    }),
                    size,
                ),
                None if filled == 0 => return,
                None => (None, 0),
            };
            let done = filled < CHUNK;
            let chunk = proto::EtcdSnapshotChunk {
                data: buf,
                status,
                file_size,
            };
            if tx.blocking_send(Ok(chunk)).is_err() || done {
                return;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
