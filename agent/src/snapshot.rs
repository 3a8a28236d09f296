//! The EtcdSnapshot stream: `etcdctl snapshot save` into the agent's
//! private state directory (through kh-host), then the file read back in
//! chunks of [`CHUNK`] bytes on the blocking pool and sent as they are read,
//! never held whole in memory, while `etcdctl snapshot status` reads the
//! same file; its answer is the last message. The file is removed
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

fn save(st: &AgentState, req: proto::EtcdSnapshotRequest) -> Result<TakenSnapshot, Status> {
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
    TakenSnapshot::save(&st.host, &EtcdClient::stacked(vec![endpoint])).map_err(|e| failed(&e))
}

/// Reads up to [`CHUNK`] bytes; fewer only at the end of the file.
fn read_chunk(file: &mut std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    while filled < CHUNK {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Saves the snapshot, then streams it: the first message carries the
/// file's size, the last one (without data) its `etcdctl snapshot status`,
/// which runs while the file is read and sent.
pub async fn stream(
    state: &Arc<AgentState>,
    req: proto::EtcdSnapshotRequest,
) -> Result<SnapshotStream, Status> {
    let st = state.clone();
    let taken = tokio::task::spawn_blocking(move || save(&st, req))
        .await
        .map_err(|e| Status::internal(format!("the snapshot panicked: {e}")))??;
    let mut file = taken.open().map_err(|e| failed(&e))?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        // Owned here so the file is removed when the last message is sent
        // or the receiver is gone.
        let taken = taken;
        std::thread::scope(|scope| {
            let status = scope.spawn(|| taken.status());
            let mut file_size = taken.size;
            loop {
                let data = match read_chunk(&mut file) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(format!(
                            "etcd snapshot failed (other): reading {}: {e}",
                            taken.path
                        ))));
                        return;
                    }
                };
                if data.is_empty() {
                    break;
                }
                let chunk = proto::EtcdSnapshotChunk {
                    data,
                    status: None,
                    file_size: std::mem::take(&mut file_size),
                };
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
            let last = match status.join() {
                Ok(Ok(s)) => Ok(proto::EtcdSnapshotChunk {
                    data: Vec::new(),
                    status: Some(proto::EtcdSnapshotStatus {
                        hash: s.hash,
                        revision: s.revision,
                        total_keys: s.total_keys,
                        total_size: s.total_size,
                    }),
                    file_size,
                }),
                Ok(Err(e)) => Err(failed(&e)),
                Err(_) => Err(Status::internal("the snapshot status panicked")),
            };
            let _ = tx.blocking_send(last);
        });
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
