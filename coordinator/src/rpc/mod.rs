//! The coordinator's gRPC services. Handlers stay thin: the layer has already
//! authorized the call; they convert, delegate, and convert back.

pub mod admin;
pub mod enrollment;
pub mod node;
pub mod snapshots;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tonic::Status;

use crate::error::CoordError;

/// Runs blocking work (signing, synced store writes) on tokio's blocking
/// pool, at most as many at once as `limit` has permits. The permit is held
/// by the blocking task itself, so a caller that goes away cannot push more
/// threads into the pool than the limit.
pub(crate) async fn blocking<T, F>(limit: &Arc<Semaphore>, work: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, CoordError> + Send + 'static,
{
    let permit = limit
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(Status::from)
}
