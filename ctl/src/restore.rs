//! `khctl etcd restore --snapshot ID|FILE [--yes] [--force] [--dry-run]`:
//! etcd's disaster recovery from a snapshot.
//!
//! A FILE is uploaded first and stored by the coordinator (sealed, with the
//! same checks as a snapshot it takes), so the restore, and a resumed one,
//! names it by id. Without `--yes` the plan is shown and the operator must
//! type `yes`; a caller without a terminal must pass `--yes`, so a script
//! never restores by accident.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

use kh::proto::admin_client::AdminClient;
use kh::proto::{self};
use tonic::transport::Channel;

use crate::{explain, outln, Format};

/// Upload pieces: small enough to keep khctl's memory flat.
const PIECE: usize = 256 * 1024;

/// Stores an operator's snapshot file on the coordinator; returns its id.
async fn import(
    client: &mut AdminClient<Channel>,
    addr: &str,
    file: &Path,
) -> anyhow::Result<proto::SnapshotMeta> {
    let mut f = std::fs::File::open(file).map_err(|e| {
        crate::usage(format!(
            "--snapshot {}: cannot open it: {e}",
            file.display()
        ))
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::EtcdSnapshotImportPiece>(4);
    let path = file.display().to_string();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut buf = vec![0u8; PIECE];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| anyhow::anyhow!("--snapshot {path}: read failed: {e}"))?;
            if n == 0 {
                return Ok(());
            }
            let piece = proto::EtcdSnapshotImportPiece {
                data: buf[..n].to_vec(),
            };
            if tx.blocking_send(piece).is_err() {
                return Ok(());
            }
        }
    });
    let meta = client
        .etcd_snapshot_import(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    reader.await??;
    Ok(meta)
}

#[allow(clippy::too_many_arguments)]
pub async fn restore(
    client: &mut AdminClient<Channel>,
    addr: &str,
    snapshot: String,
    yes: bool,
    force: bool,
    dry_run: bool,
    format: Format,
) -> anyhow::Result<()> {
    let interactive = !yes && !dry_run;
    if interactive && !std::io::stdin().is_terminal() {
        return Err(crate::usage(
            "refusing to restore etcd without confirmation: stdin is not a terminal. A restore replaces the cluster's state with the snapshot and every write made after it is lost; pass --yes to confirm (see the plan with --dry-run)".to_string(),
        ));
    }
    let path = Path::new(&snapshot);
    let id = if path.is_file() {
        let meta = import(client, addr, path).await?;
        if format == Format::Table {
            outln!(
                "Stored {} as snapshot {} ({} bytes, sha256 {}).",
                path.display(),
                meta.id,
                meta.size,
                meta.sha256
            );
        }
        meta.id
    } else {
        snapshot
    };
    let req = proto::EtcdRestoreRequest {
        snapshot: id,
        force,
        dry_run: dry_run || interactive,
    };
    if interactive {
        // The plan in the run's words, with the preconditions checked.
        let stream = client
            .etcd_restore(req.clone())
            .await
            .map_err(|s| explain(addr, s))?
            .into_inner();
        crate::rollout::follow_operation(stream, Format::Table, true, "Restore").await?;
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\nThis restores etcd of the cluster above from snapshot {}: its state becomes the snapshot's and every write made after it is lost. Type `yes` to continue: ",
            req.snapshot
        );
        let _ = err.flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "yes" | "y" | "Y") {
            anyhow::bail!("not confirmed; nothing was changed");
        }
    }
    let req = proto::EtcdRestoreRequest { dry_run, ..req };
    let stream = client
        .etcd_restore(req)
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    crate::rollout::follow_operation(stream, format, dry_run, "Restore").await
}
