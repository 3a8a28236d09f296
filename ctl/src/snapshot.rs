//! `khctl etcd snapshot save | list | get | delete`.
//!
//! `-o` is a format (`table`, `json`) as everywhere else, and for `save` and
//! `get` any other value is the file to write the plaintext snapshot to
//! (as `khctl kubeconfig -o FILE` does); write a file named `json` as
//! `-o ./json`.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use kh::proto::admin_client::AdminClient;
use kh::proto::{self, SnapshotMeta};
use serde_json::json;
use tonic::transport::Channel;

use crate::output::{print_json, Table};
use crate::{explain, help, outln, Failure, Format};

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Take an etcd snapshot through a healthy member (the first control
    /// plane whose member is healthy, or --node) and store it on the
    /// coordinator, sealed; -o FILE also writes the plaintext file.
    #[command(arg = help::output("`table` (default): progress on a terminal, then the stored snapshot; `json`: one object for scripts, the snapshot's {\"id\", \"created\", \"node\", \"size\", \"sha256\", \"revision\", \"hash\", \"totalKeys\", \"reason\"}; any other value is a FILE to write the snapshot to as well (0600; `etcdctl snapshot status FILE` reads it), with the table output"))]
    Save {
        /// The control plane whose etcd member to snapshot (also without
        /// quorum: a running member serves its own database).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// The stored snapshots, oldest first.
    #[command(arg = help::output("`table` (default): ID, CREATED, AGE, NODE, SIZE, REVISION, KEYS, REASON, SHA256 (prefix); `json`: one object for scripts, {\"snapshots\": [...]}, each as `save -o json` prints it"))]
    List,
    /// Write a stored snapshot's plaintext to a file (-o FILE), verified
    /// against its SHA-256.
    #[command(arg = help::output("the FILE to write (0600), required; it is an etcd snapshot file as `etcdctl snapshot save` writes it"))]
    Get {
        /// The snapshot's id (see `khctl etcd snapshot list`).
        id: String,
    },
    /// Delete a stored snapshot.
    #[command(arg = help::output("`table` (default): what was deleted; `json`: one object for scripts, {\"deleted\": ID}"))]
    Delete {
        /// The snapshot's id (see `khctl etcd snapshot list`).
        id: String,
    },
}

/// What `-o` asks of a command that can write a file.
enum Target {
    Format(Format),
    File(PathBuf),
}

fn target(output: &Option<String>) -> Target {
    match output.as_deref() {
        None | Some("table") => Target::Format(Format::Table),
        Some("json") => Target::Format(Format::Json),
        Some(f) => Target::File(PathBuf::from(f)),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1 << 10 => format!("{b} B"),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
    }
}

fn meta_json(m: &SnapshotMeta) -> serde_json::Value {
    json!({
        "id": m.id, "created": kh::time::rfc3339(m.created_ms), "node": m.node, "size": m.size,
        "sha256": m.sha256, "revision": m.revision, "hash": m.hash, "totalKeys": m.total_keys,
        "reason": m.reason,
    })
}

pub async fn run(
    client: &mut AdminClient<Channel>,
    addr: &str,
    cmd: SnapshotCmd,
    output: &Option<String>,
) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Save { node } => save(client, addr, node, target(output)).await,
        SnapshotCmd::List => list(client, addr, crate::format(output)?).await,
        SnapshotCmd::Get { id } => match target(output) {
            Target::File(f) => {
                let (meta, written) = download(client, addr, &id, &f).await?;
                outln!(
                    "Wrote etcd snapshot {} ({}) to {}",
                    meta.id,
                    size(written),
                    f.display()
                );
                Ok(())
            }
            Target::Format(_) => Err(crate::usage(
                "khctl etcd snapshot get ID needs -o FILE: the file to write the snapshot to",
            )),
        },
        SnapshotCmd::Delete { id } => {
            let format = crate::format(output)?;
            client
                .etcd_snapshot_delete(proto::EtcdSnapshotDeleteRequest { id: id.clone() })
                .await
                .map_err(|s| explain(addr, s))?;
            if format == Format::Json {
                print_json(&json!({ "deleted": id }));
            } else {
                outln!("Deleted etcd snapshot {id}");
            }
            Ok(())
        }
    }
}

async fn save(
    client: &mut AdminClient<Channel>,
    addr: &str,
    node: Option<String>,
    target: Target,
) -> anyhow::Result<()> {
    let mut stream = client
        .etcd_snapshot_save(proto::EtcdSnapshotSaveRequest {
            node: node.unwrap_or_default(),
        })
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    let format = match &target {
        Target::Format(f) => *f,
        Target::File(_) => Format::Table,
    };
    let tty = format == Format::Table && std::io::stderr().is_terminal();
    let mut meta = None;
    while let Some(ev) = stream.message().await.map_err(|s| {
        if tty {
            eprintln!();
        }
        explain(addr, s)
    })? {
        if let Some(m) = ev.snapshot {
            meta = Some(m);
        } else if tty {
            let total = if ev.total > 0 {
                format!(" of {}", size(ev.total))
            } else {
                String::new()
            };
            eprint!("\rreceiving snapshot: {}{total}   ", size(ev.bytes));
        }
    }
    if tty {
        eprintln!();
    }
    let meta = meta.ok_or_else(|| {
        Failure::Interrupted(format!(
            "the coordinator at {addr} ended the snapshot stream without a result; see `khctl etcd snapshot list` and `khctl history`"
        ))
    })?;
    if format == Format::Json {
        print_json(&meta_json(&meta));
        return Ok(());
    }
    outln!(
        "Stored etcd snapshot {} from {}: {}, revision {}, {} keys, sha256 {}",
        meta.id,
        meta.node,
        size(meta.size),
        meta.revision,
        meta.total_keys,
        meta.sha256
    );
    if let Target::File(f) = target {
        download(client, addr, &meta.id, &f).await?;
        outln!("Wrote it to {}", f.display());
    }
    Ok(())
}

/// Writes snapshot `id` to `file` through `<file>.partial` (0600), checks
/// its SHA-256 against the metadata, then renames it into place.
async fn download(
    client: &mut AdminClient<Channel>,
    addr: &str,
    id: &str,
    file: &Path,
) -> anyhow::Result<(SnapshotMeta, u64)> {
    let mut stream = client
        .etcd_snapshot_get(proto::EtcdSnapshotGetRequest { id: id.to_string() })
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    let partial = PathBuf::from(format!("{}.partial", file.display()));
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", partial.display()))?;
    let result = async {
        let mut meta = None;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut written = 0u64;
        while let Some(chunk) = stream.message().await.map_err(|s| explain(addr, s))? {
            if let Some(m) = chunk.snapshot {
                meta = Some(m);
            }
            sha.update(&chunk.data);
            out.write_all(&chunk.data)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", partial.display()))?;
            written += chunk.data.len() as u64;
        }
        let meta = meta.ok_or_else(|| anyhow::anyhow!("the coordinator sent no snapshot metadata"))?;
        let got = hex::encode(sha.finish().as_ref());
        if got != meta.sha256 || written != meta.size {
            anyhow::bail!(
                "the snapshot received ({written} bytes, sha256 {got}) is not the one stored ({} bytes, sha256 {}); nothing was written, try again",
                meta.size,
                meta.sha256
            );
        }
        out.sync_all()
            .map_err(|e| anyhow::anyhow!("cannot fsync {}: {e}", partial.display()))?;
        std::fs::rename(&partial, file)
            .map_err(|e| anyhow::anyhow!("cannot rename {} to {}: {e}", partial.display(), file.display()))?;
        Ok((meta, written))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

async fn list(client: &mut AdminClient<Channel>, addr: &str, format: Format) -> anyhow::Result<()> {
    let r = client
        .etcd_snapshot_list(proto::EtcdSnapshotListRequest {})
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    if format == Format::Json {
        let rows: Vec<_> = r.snapshots.iter().map(meta_json).collect();
        print_json(&json!({ "snapshots": rows }));
        return Ok(());
    }
    let now = std::time::SystemTime::now();
    let mut t = Table::new(&[
        "ID", "CREATED", "AGE", "NODE", "SIZE", "REVISION", "KEYS", "REASON", "SHA256",
    ]);
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    for m in &r.snapshots {
        t.row(vec![
            m.id.clone(),
            kh::time::rfc3339(m.created_ms),
            kh::time::relative(now, m.created_ms),
            dash(&m.node),
            size(m.size),
            if m.revision == 0 {
                "-".into()
            } else {
                m.revision.to_string()
            },
            if m.total_keys == 0 {
                "-".into()
            } else {
                m.total_keys.to_string()
            },
            m.reason.clone(),
            m.sha256.chars().take(12).collect(),
        ]);
    }
    t.print_or("No etcd snapshots.");
    Ok(())
}
