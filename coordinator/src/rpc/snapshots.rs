//! The Admin service's etcd snapshot calls, turned into the streams khctl
//! reads. The work is `crate::snapshots`'.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kh::proto::{EtcdSnapshotData, EtcdSnapshotSaveEvent, EtcdSnapshotSaveRequest};
use tonic::Status;

use crate::error::CoordError;
use crate::snapshots::{self, REASON_MANUAL};
use crate::Coordinator;

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Takes a snapshot as a task of the coordinator (a khctl that leaves does
/// not stop it): progress events while the bytes arrive, then the metadata.
pub fn save(
    coord: Arc<Coordinator>,
    req: EtcdSnapshotSaveRequest,
) -> EventStream<EtcdSnapshotSaveEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let node = (!req.node.is_empty()).then_some(req.node.as_str());
        let progress_tx = tx.clone();
        let result =
            snapshots::take_with_progress(&coord, REASON_MANUAL, node, move |bytes, total| {
                // Progress is best effort: a slow reader skips some.
                let _ = progress_tx.try_send(Ok(EtcdSnapshotSaveEvent {
                    bytes,
                    total,
                    snapshot: None,
                }));
            })
            .await;
        let last = match result {
            Ok(meta) => Ok(EtcdSnapshotSaveEvent {
                bytes: meta.size,
                total: meta.size,
                snapshot: Some(meta.to_proto()),
            }),
            Err(e) => Err(Status::from(e)),
        };
        let _ = tx.send(last).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

pub fn delete(coord: &Coordinator, id: &str) -> Result<(), CoordError> {
    if snapshots::delete(coord, id)? {
        tracing::info!(id, "etcd snapshot deleted");
        crate::audit::append(
            &coord.db,
            coord.clock.as_ref(),
            snapshots::AUDIT_OPERATION,
            "",
            "delete",
            "ok",
            id,
        )?;
        Ok(())
    } else {
        Err(CoordError::NotFound(format!(
            "no etcd snapshot {id}; see `khctl etcd snapshot list`"
        )))
    }
}

/// The plaintext of a stored snapshot: its metadata, then its chunks.
pub fn get(coord: &Coordinator, id: &str) -> Result<EventStream<EtcdSnapshotData>, CoordError> {
    let meta = snapshots::get(coord, id)?.ok_or_else(|| {
        CoordError::NotFound(format!(
            "no etcd snapshot {id}; see `khctl etcd snapshot list`"
        ))
    })?;
    let first = futures::stream::once(async move {
        Ok(EtcdSnapshotData {
            data: Vec::new(),
            snapshot: Some(meta.to_proto()),
        })
    });
    let chunks = snapshots::read_stream(coord, id)?.map(|c| {
        c.map(|data| EtcdSnapshotData {
            data,
            snapshot: None,
        })
        .map_err(Status::from)
    });
    Ok(Box::pin(first.chain(chunks)))
}
