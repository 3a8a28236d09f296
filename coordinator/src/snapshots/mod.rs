//! etcd snapshots kept by the coordinator, sealed at rest (they hold every
//! Secret of the cluster).
//!
//! The API the other operations use:
//! - [`take`] (and [`take_with_progress`]): a snapshot through a healthy
//!   control plane's agent (the one named, else the first control plane of
//!   the held spec whose member is healthy), streamed, sealed, checked and
//!   stored with its metadata; audited.
//! - [`import`]: an operator-supplied snapshot file (bytes in any pieces),
//!   stored with the same checks; etcd's own status of it is unknown (0).
//! - [`list`], [`get`], [`delete`].
//! - [`reader`] (blocking iterator) and [`read_stream`] (async): the
//!   plaintext of a stored snapshot in chunks of at most [`CHUNK`] bytes,
//!   each verified as it is read; the SHA-256 of the whole is checked
//!   against the metadata before the last chunk is yielded.
//!
//! Files live in `<data dir>/snapshots/<id>.snap` (see [`sealed`] for the
//! format), metadata in the store under `snapshots/<id>`. A file is complete
//! before its metadata is written; [`clean_up`] (at coordinator start)
//! removes partial files and files without metadata.

pub mod schedule;
pub mod sealed;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use kh::names::NodeName;
use kh::proto;
use kh::time::unix_ms;
use serde::{Deserialize, Serialize};

use crate::agents::explain;
use crate::error::CoordError;
use crate::rollout::ops::url;
use crate::Coordinator;

pub use sealed::{SealedReader, SealedWriter, SnapshotError, CHUNK};

const META_PREFIX: &str = "snapshots/";
/// How long an agent may take to save and stream a snapshot.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(900);
/// The audit log's operation name for snapshots.
pub const AUDIT_OPERATION: &str = "etcd snapshot";

pub const REASON_MANUAL: &str = "manual";
pub const REASON_SCHEDULED: &str = "scheduled";
pub const REASON_IMPORT: &str = "import";

/// The reason of a snapshot taken before `operation` (`etcd replace`).
pub fn reason_before(operation: &str) -> String {
    format!("before {operation}")
}

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// `<yyyymmddThhmmssZ>-<4 hex>`: sorts by creation time.
    pub id: String,
    pub created_ms: u64,
    /// The node whose member it was taken from; empty for an import.
    pub node: String,
    /// Bytes of the plaintext file.
    pub size: u64,
    /// SHA-256 of the plaintext file, hex.
    pub sha256: String,
    /// etcd's `snapshot status` (0 for an imported file).
    pub revision: i64,
    pub hash: u32,
    pub total_keys: i64,
    /// `manual`, `scheduled`, `import` or `before <operation>`.
    pub reason: String,
}

impl SnapshotMeta {
    /// Taken by kh on its own (scheduled, or before an operation): these are
    /// pruned by the schedule; manual and imported ones only by the operator.
    pub fn is_automatic(&self) -> bool {
        self.reason == REASON_SCHEDULED || self.reason.starts_with("before ")
    }

    pub fn to_proto(&self) -> proto::SnapshotMeta {
        proto::SnapshotMeta {
            id: self.id.clone(),
            created_ms: self.created_ms,
            node: self.node.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            revision: self.revision,
            hash: self.hash,
            total_keys: self.total_keys,
            reason: self.reason.clone(),
        }
    }
}

impl From<SnapshotError> for CoordError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Io { .. } => CoordError::Unavailable(e.to_string()),
            SnapshotError::NotEtcd { .. } => CoordError::InvalidArgument(e.to_string()),
            SnapshotError::Tampered { .. } | SnapshotError::Truncated { .. } => {
                CoordError::FailedPrecondition(e.to_string())
            }
        }
    }
}

/// Where the sealed files live.
pub fn dir(coord: &Coordinator) -> PathBuf {
    coord.config.data_dir.join("snapshots")
}

/// A new id at `now`: UTC time to the second, then 4 random hex digits.
pub fn new_id(now: SystemTime) -> String {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{stamp}-{}", hex::encode(kh::token::random_bytes::<2>()))
}

/// Ids come from khctl: only the characters [`new_id`] makes, so an id can
/// never name a path outside the snapshot directory.
fn check_id(id: &str) -> Result<(), CoordError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(CoordError::InvalidArgument(format!(
            "`{}` is not a snapshot id (like 20261206T042530Z-1a2b); see `khctl etcd snapshot list`",
            kh::echo(id)
        )));
    }
    Ok(())
}

fn meta_key(id: &str) -> String {
    format!("{META_PREFIX}{id}")
}

/// Every stored snapshot, oldest first.
pub fn list(coord: &Coordinator) -> Result<Vec<SnapshotMeta>, CoordError> {
    let mut all: Vec<SnapshotMeta> = coord
        .db
        .scan_json::<SnapshotMeta>(META_PREFIX)?
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    Ok(all)
}

pub fn get(coord: &Coordinator, id: &str) -> Result<Option<SnapshotMeta>, CoordError> {
    check_id(id)?;
    Ok(coord.db.get_json(&meta_key(id))?)
}

fn not_found(id: &str) -> CoordError {
    CoordError::NotFound(format!(
        "no etcd snapshot {id}; see `khctl etcd snapshot list`"
    ))
}

/// Deletes a snapshot: its metadata first, then its file. `Ok(false)` when
/// there was no such snapshot.
pub fn delete(coord: &Coordinator, id: &str) -> Result<bool, CoordError> {
    check_id(id)?;
    let existed = coord.db.delete(&meta_key(id))?;
    let path = sealed::path(&dir(coord), id);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(existed),
        Err(e) => Err(CoordError::Unavailable(format!(
            "etcd snapshot {id}: cannot remove {}: {e}",
            path.display()
        ))),
    }
}

/// A blocking reader of a stored snapshot's plaintext.
pub fn reader(coord: &Coordinator, id: &str) -> Result<SealedReader, CoordError> {
    let meta = get(coord, id)?.ok_or_else(|| not_found(id))?;
    Ok(SealedReader::open(
        &dir(coord),
        id,
        coord.db.sealer().clone(),
        Some(meta.sha256),
    )?)
}

/// The plaintext of a stored snapshot as a stream of chunks, read on the
/// blocking pool at most two chunks ahead of the consumer.
pub fn read_stream(
    coord: &Coordinator,
    id: &str,
) -> Result<impl Stream<Item = Result<Vec<u8>, CoordError>> + Send + 'static, CoordError> {
    let reader = reader(coord, id)?;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        for chunk in reader {
            let chunk = chunk.map_err(CoordError::from);
            let stop = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || stop {
                return;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Removes partial files (a write the coordinator did not finish) and files
/// without metadata (a deletion it did not finish). Returns what it removed.
pub fn clean_up(coord: &Coordinator) -> Result<Vec<PathBuf>, CoordError> {
    let dir = dir(coord);
    let io = |e: std::io::Error| {
        CoordError::Unavailable(format!("etcd snapshots in {}: {e}", dir.display()))
    };
    let (ids, partial) = sealed::scan(&dir).map_err(io)?;
    let mut removed = Vec::new();
    for p in partial {
        std::fs::remove_file(&p).map_err(io)?;
        removed.push(p);
    }
    for id in ids {
        if coord.db.get_json::<SnapshotMeta>(&meta_key(&id))?.is_none() {
            let p = sealed::path(&dir, &id);
            std::fs::remove_file(&p).map_err(io)?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// etcd's own view of a snapshot, from the agent that took it.
#[derive(Debug, Clone, Copy)]
struct Status {
    revision: i64,
    hash: u32,
    total_keys: i64,
}

/// Seals bytes from `chunks` under a new id; the file is in place when this
/// returns Ok. `progress` sees the bytes so far and the total when known.
async fn store<S>(
    coord: &Coordinator,
    mut chunks: S,
    mut progress: impl FnMut(u64, u64) + Send,
) -> Result<(String, sealed::Written, Option<Status>), CoordError>
where
    S: Stream<Item = Result<(Vec<u8>, Option<Status>, u64), CoordError>> + Unpin,
{
    let started = std::time::Instant::now();
    let mut first_byte = None;
    let id = new_id(coord.clock.now());
    let dir = dir(coord);
    let sealer = coord.db.sealer().clone();
    let create_id = id.clone();
    let mut writer =
        tokio::task::spawn_blocking(move || SealedWriter::create(&dir, &create_id, sealer))
            .await
            .map_err(|e| CoordError::Unavailable(format!("the snapshot writer panicked: {e}")))??;
    let mut status = None;
    let mut total = 0;
    while let Some(next) = chunks.next().await {
        let (data, st, size) = next?;
        first_byte.get_or_insert_with(|| started.elapsed());
        if st.is_some() {
            status = st;
        }
        if size > 0 {
            total = size;
        }
        // File writes and sealing leave the runtime's threads.
        writer = tokio::task::spawn_blocking(move || writer.write(&data).map(|()| writer))
            .await
            .map_err(|e| CoordError::Unavailable(format!("the snapshot writer panicked: {e}")))??;
        progress(writer.size(), total);
    }
    let streamed = started.elapsed();
    let written = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(|e| CoordError::Unavailable(format!("the snapshot writer panicked: {e}")))??;
    // Where the time goes, for the operator and the benchmark: waiting for
    // the first byte (etcd starting the snapshot), the stream, and the
    // final fsync and rename.
    tracing::info!(
        id = %id,
        size = written.size,
        first_byte_ms = first_byte.unwrap_or_default().as_millis() as u64,
        streamed_ms = streamed.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "etcd snapshot sealed"
    );
    Ok((id, written, status))
}

fn save_meta(coord: &Coordinator, meta: &SnapshotMeta) -> Result<(), CoordError> {
    coord.db.put_json(&meta_key(&meta.id), meta)?;
    Ok(())
}

/// Takes a snapshot; see [`take_with_progress`].
pub async fn take(
    coord: &Coordinator,
    reason: &str,
    node: Option<&str>,
) -> Result<SnapshotMeta, CoordError> {
    take_with_progress(coord, reason, node, |_, _| {}).await
}

/// Takes a snapshot through `node`'s member (a control plane of the held
/// spec), or the first control plane whose member is healthy, and stores it.
/// `progress` sees the bytes received so far and the file's size. Audited,
/// successful or not.
pub async fn take_with_progress(
    coord: &Coordinator,
    reason: &str,
    node: Option<&str>,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<SnapshotMeta, CoordError> {
    let result = take_inner(coord, reason, node, progress).await;
    let (node_name, outcome, message) = match &result {
        Ok(m) => (
            m.node.clone(),
            "ok",
            format!(
                "{} ({reason}): {} bytes, revision {}, {} keys, sha256 {}",
                m.id, m.size, m.revision, m.total_keys, m.sha256
            ),
        ),
        Err(e) => (
            node.unwrap_or_default().to_string(),
            "failed",
            format!("({reason}) {e}"),
        ),
    };
    if let Err(e) = crate::audit::append(
        &coord.db,
        coord.clock.as_ref(),
        AUDIT_OPERATION,
        &node_name,
        "save",
        outcome,
        &message,
    ) {
        tracing::error!(error = %e, "could not record an etcd snapshot in the audit log");
    }
    result
}

async fn take_inner(
    coord: &Coordinator,
    reason: &str,
    node: Option<&str>,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<SnapshotMeta, CoordError> {
    let spec = crate::etcd::held_spec(coord)?;
    if crate::etcd::is_external(&spec) {
        return Err(CoordError::FailedPrecondition(format!(
            "cluster {} uses an external etcd cluster (spec.etcd.topology: external): kh does not run its members and takes no snapshots of it. Snapshot it with your etcd tooling (`etcdctl snapshot save`)",
            spec.name
        )));
    }
    let (node, endpoint) = pick(coord, &spec, node).await?;
    let name = NodeName::new(&node)?;
    let rec = coord.registry.get(&name)?.ok_or_else(|| {
        CoordError::FailedPrecondition(format!(
            "node {node} is not enrolled; enroll it with `khctl token create --node {node}`"
        ))
    })?;
    let failed = |e: &crate::agents::AgentError| {
        CoordError::FailedPrecondition(format!(
            "no etcd snapshot was taken: {}; check `khctl health`, or name another control plane with --node",
            explain(&node, e)
        ))
    };
    let chunks = coord
        .agents
        .etcd_snapshot(
            &rec,
            proto::EtcdSnapshotRequest { endpoint },
            STREAM_TIMEOUT,
        )
        .await
        .map_err(|e| failed(&e))?;
    let chunks = chunks.map(|c| {
        c.map(|c| {
            let status = c.status.map(|s| Status {
                revision: s.revision,
                hash: s.hash,
                total_keys: s.total_keys,
            });
            (c.data, status, c.file_size)
        })
        .map_err(|e| failed(&e))
    });
    let (id, written, status) = store(coord, chunks, progress).await?;
    let Some(status) = status else {
        // The sealed file is complete but etcd never vouched for it: the
        // agent's stream ended early. It has no metadata yet, so it goes.
        let _ = std::fs::remove_file(sealed::path(&dir(coord), &id));
        return Err(CoordError::Unavailable(format!(
            "the agent on {node} ended the snapshot stream without the snapshot's status; nothing was stored. Run the command again; check the agent's log if it repeats"
        )));
    };
    let meta = SnapshotMeta {
        id,
        created_ms: unix_ms(coord.clock.now()),
        node,
        size: written.size,
        sha256: written.sha256,
        revision: status.revision,
        hash: status.hash,
        total_keys: status.total_keys,
        reason: reason.to_string(),
    };
    save_meta(coord, &meta)?;
    tracing::info!(id = %meta.id, node = %meta.node, size = meta.size, reason = %meta.reason, "etcd snapshot stored");
    Ok(meta)
}

/// The snapshot a membership change takes before its first change:
/// `operation` is its name (`etcd replace`), `what` says in words what
/// waits for it. The error says that nothing was changed and that
/// `--no-snapshot` skips it.
pub async fn take_before(
    coord: &Coordinator,
    operation: &str,
    what: &str,
) -> Result<SnapshotMeta, String> {
    take(coord, &reason_before(operation), None)
        .await
        .map_err(|e| {
            format!(
                "no etcd snapshot could be taken before {what}, so nothing was changed: {e}. Fix the cause and run the command again, or add --no-snapshot to go ahead without one"
            )
        })
}

/// Stores an operator-supplied snapshot file arriving as `bytes` (pieces of
/// any size), with the same sealing and etcd integrity check as [`take`].
/// A file that fails the check is refused and leaves nothing behind.
pub async fn import<S>(
    coord: &Coordinator,
    bytes: S,
    reason: &str,
) -> Result<SnapshotMeta, CoordError>
where
    S: Stream<Item = Result<Vec<u8>, CoordError>> + Unpin,
{
    let chunks = bytes.map(|b| b.map(|data| (data, None, 0)));
    let (id, written, _) = store(coord, chunks, |_, _| {}).await?;
    let meta = SnapshotMeta {
        id,
        created_ms: unix_ms(coord.clock.now()),
        node: String::new(),
        size: written.size,
        sha256: written.sha256,
        revision: 0,
        hash: 0,
        total_keys: 0,
        reason: reason.to_string(),
    };
    save_meta(coord, &meta)?;
    crate::audit::append(
        &coord.db,
        coord.clock.as_ref(),
        AUDIT_OPERATION,
        "",
        "import",
        "ok",
        &format!(
            "{} ({reason}): {} bytes, sha256 {}",
            meta.id, meta.size, meta.sha256
        ),
    )?;
    Ok(meta)
}

/// The node and member client URL to take a snapshot through.
async fn pick(
    coord: &Coordinator,
    spec: &kh::spec::ClusterSpec,
    node: Option<&str>,
) -> Result<(String, String), CoordError> {
    if let Some(n) = node {
        let cp = spec.control_planes().find(|c| c.name == n).ok_or_else(|| {
            CoordError::InvalidArgument(format!(
                "--node {n}: not a control plane of cluster {} (its control planes: {}); an etcd snapshot is taken through a control plane's member",
                spec.name,
                spec.control_planes().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        // A named member is asked even without quorum: etcd serves a
        // snapshot from its own database.
        return Ok((cp.name.clone(), url(cp.address, 2379)));
    }
    let membership = crate::etcd::membership(coord, spec, None)
        .await
        .map_err(|e| {
            CoordError::FailedPrecondition(format!(
                "no etcd snapshot was taken: cannot find a healthy etcd member: {e}"
            ))
        })?;
    for cp in spec.control_planes() {
        if let Some(m) = membership
            .members
            .iter()
            .find(|m| m.node == cp.name && m.healthy && !m.is_learner)
        {
            let endpoint = m
                .client_urls
                .first()
                .cloned()
                .unwrap_or_else(|| url(cp.address, 2379));
            return Ok((cp.name.clone(), endpoint));
        }
    }
    let states: Vec<String> = membership
        .members
        .iter()
        .map(|m| {
            let who = if m.node.is_empty() { &m.name } else { &m.node };
            let error = if m.health_error.is_empty() {
                "unhealthy"
            } else {
                &m.health_error
            };
            format!("{who}: {error}")
        })
        .collect();
    Err(CoordError::FailedPrecondition(format!(
        "no etcd snapshot was taken: no etcd member is healthy ({}); etcd may have lost quorum (see `khctl health`). To snapshot a running member anyway, name its control plane with --node",
        states.join("; ")
    )))
}

#[cfg(test)]
mod tests;
