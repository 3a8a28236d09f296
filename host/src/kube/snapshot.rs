//! etcd snapshots through the real `etcdctl snapshot save` and `snapshot
//! status`, into a file in the agent's private state directory.
//!
//! The file holds every Secret of the cluster, so it lives only in the 0700
//! `/var/lib/kh-agent` (etcdctl writes it 0600), only while it is streamed,
//! and is removed whatever the outcome: by [`TakenSnapshot`]'s `Drop`, and
//! at agent start ([`remove_leftover_snapshots`]) for an agent that was
//! killed mid-stream.

use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::HostError;
use crate::host::Host;
use crate::kube::error::KubeError;
use crate::kube::etcd::EtcdClient;
use crate::kube::AGENT_STATE_DIR;

/// Snapshot files in [`AGENT_STATE_DIR`] start with this (etcdctl adds
/// `.part` while it downloads).
pub const SNAPSHOT_FILE_PREFIX: &str = "etcd-snapshot-";

/// How long etcdctl may take to download a snapshot. etcdctl bounds the
/// whole download by `--command-timeout` when the flag is given, and a
/// multi-gigabyte database over a busy member takes minutes.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `etcdctl snapshot status -w json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_keys: i64,
    #[serde(rename = "totalSize")]
    pub total_size: i64,
}

/// Parses `etcdctl snapshot status -w json` (3.4: one JSON object).
pub fn parse_snapshot_status(json: &str) -> Result<SnapshotStatus, String> {
    serde_json::from_str(json.trim()).map_err(|e| e.to_string())
}

const SNAPSHOT_NEXT: &str = "Check that this node's etcd member runs (`crictl ps --name etcd`), that its client certificate files exist under /etc/kubernetes/pki/etcd, and that /var/lib/kh-agent has room for a copy of the etcd database";

impl EtcdClient {
    /// `etcdctl snapshot save <abs>`: a consistent copy of the member's
    /// database (etcdctl writes `<abs>.part` 0600, then renames it).
    pub fn snapshot_save(&self, host: &Host, abs: &str) -> Result<(), KubeError> {
        let path = host.path(abs)?.display().to_string();
        let record = host.run(&self.command(host, &["snapshot", "save", &path])?)?;
        if record.success() {
            Ok(())
        } else {
            Err(crate::kube::apply::command_error(&record, SNAPSHOT_NEXT))
        }
    }

    /// `etcdctl snapshot status -w json <abs>`: it reads the file only, and
    /// fails on a file that is not an etcd database.
    pub fn snapshot_status(&self, host: &Host, abs: &str) -> Result<SnapshotStatus, KubeError> {
        let path = host.path(abs)?.display().to_string();
        let record =
            host.run(&self.command(host, &["snapshot", "status", "-w", "json", &path])?)?;
        if !record.success() {
            return Err(crate::kube::apply::command_error(&record, SNAPSHOT_NEXT));
        }
        parse_snapshot_status(&record.stdout).map_err(|detail| KubeError::Output {
            argv: record.argv.clone(),
            detail,
            head: record.stdout.chars().take(200).collect(),
            next: "etcdctl printed something other than its JSON output; check that etcdctl is 3.4 or newer".to_string(),
        })
    }
}

/// A snapshot file in the agent's state directory, removed on drop.
#[derive(Debug)]
pub struct TakenSnapshot {
    host: Host,
    client: EtcdClient,
    /// Absolute host path of the file.
    pub path: String,
    /// Size of the file in bytes.
    pub size: u64,
}

impl TakenSnapshot {
    /// Saves a snapshot of the member at `client`'s endpoints; the file is
    /// removed again if that fails. Its status is [`TakenSnapshot::status`],
    /// which the caller may run while it reads the file.
    pub fn save(host: &Host, client: &EtcdClient) -> Result<Self, KubeError> {
        host.create_private_dir(AGENT_STATE_DIR)?;
        let path = format!(
            "{AGENT_STATE_DIR}/{SNAPSHOT_FILE_PREFIX}{}-{}.db",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut taken = TakenSnapshot {
            host: host.clone(),
            client: client.clone().command_timeout(SNAPSHOT_TIMEOUT),
            path,
            size: 0,
        };
        taken.client.snapshot_save(host, &taken.path)?;
        let file = taken.open()?;
        taken.size = file
            .metadata()
            .map_err(|e| {
                KubeError::from(HostError::Io {
                    action: "stat",
                    path: taken.path.clone(),
                    real: host.path(&taken.path).unwrap_or_default(),
                    source: e,
                })
            })?
            .len();
        Ok(taken)
    }

    /// [`TakenSnapshot::save`], handing the file's bytes to `sink` in
    /// pieces of `chunk` bytes (the last one shorter) while etcdctl is
    /// still writing them, so a caller that streams them elsewhere does not
    /// wait for the whole file first. etcdctl writes `<file>.part` and
    /// renames it when complete; the bytes are read from the `.part` file's
    /// descriptor, which the rename does not affect. `sink` returns false
    /// when it wants no more (etcdctl still runs to its end, so the file
    /// can be removed afterwards). On an error the bytes handed over so far
    /// are not a snapshot; etcd's own checksum at the end of the file tells
    /// a complete one.
    pub fn save_streaming(
        host: &Host,
        client: &EtcdClient,
        chunk: usize,
        mut sink: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<Self, KubeError> {
        host.create_private_dir(AGENT_STATE_DIR)?;
        let path = format!(
            "{AGENT_STATE_DIR}/{SNAPSHOT_FILE_PREFIX}{}-{}.db",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut taken = TakenSnapshot {
            host: host.clone(),
            client: client.clone().command_timeout(SNAPSHOT_TIMEOUT),
            path,
            size: 0,
        };
        let part = format!("{}.part", taken.path);
        let io = |e: std::io::Error, path: &str| {
            KubeError::from(HostError::Io {
                action: "read",
                path: path.to_string(),
                real: host.path(path).unwrap_or_default(),
                source: e,
            })
        };
        std::thread::scope(|scope| {
            let saver = scope.spawn(|| taken.client.snapshot_save(host, &taken.path));
            let mut file: Option<(File, &str)> = None;
            let mut buf = Vec::with_capacity(chunk);
            let mut wanted = true;
            loop {
                // Looked at before reading: once etcdctl has ended, the
                // read that follows sees every byte it wrote.
                let finished = saver.is_finished();
                if file.is_none() {
                    if let Some(f) = host.open_nofollow(&part)? {
                        file = Some((f, part.as_str()));
                    } else if finished {
                        if let Some(f) = host.open_nofollow(&taken.path)? {
                            file = Some((f, taken.path.as_str()));
                        }
                    }
                }
                let mut progressed = false;
                if let Some((f, name)) = file.as_mut() {
                    loop {
                        let want = chunk - buf.len();
                        let start = buf.len();
                        buf.resize(chunk, 0);
                        let n = match f.read(&mut buf[start..start + want]) {
                            Ok(n) => n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                            Err(e) => {
                                buf.truncate(start);
                                return Err(io(e, name));
                            }
                        };
                        buf.truncate(start + n);
                        taken.size += n as u64;
                        if n == 0 {
                            break;
                        }
                        progressed = true;
                        if buf.len() == chunk && wanted {
                            wanted = sink(std::mem::replace(&mut buf, Vec::with_capacity(chunk)));
                        } else if buf.len() == chunk {
                            buf.clear();
                        }
                    }
                }
                if finished {
                    break;
                }
                if !progressed {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            saver
                .join()
                .unwrap_or_else(|_| panic!("etcdctl snapshot save's thread panicked"))?;
            if file.is_none() {
                return Err(KubeError::MissingFile {
                    path: taken.path.clone(),
                    next: "etcdctl reported a saved snapshot but the file is gone; check what else writes to /var/lib/kh-agent".into(),
                });
            }
            if !buf.is_empty() && wanted {
                sink(buf);
            }
            Ok(())
        })?;
        Ok(taken)
    }

    /// `etcdctl snapshot status` of the saved file: it fails on a file
    /// that is not an etcd database.
    pub fn status(&self) -> Result<SnapshotStatus, KubeError> {
        self.client.snapshot_status(&self.host, &self.path)
    }

    /// The file, for reading in chunks.
    pub fn open(&self) -> Result<File, KubeError> {
        self.host
            .open_nofollow(&self.path)?
            .ok_or_else(|| KubeError::MissingFile {
                path: self.path.clone(),
                next: "etcdctl reported a saved snapshot but the file is gone; check what else writes to /var/lib/kh-agent".into(),
            })
    }
}

impl Drop for TakenSnapshot {
    fn drop(&mut self) {
        for path in [self.path.clone(), format!("{}.part", self.path)] {
            if let Err(e) = self.host.remove_file(&path) {
                tracing::error!(path = %path, error = %e, "could not remove an etcd snapshot file, which holds every Secret of the cluster; remove it by hand");
            }
        }
    }
}

/// Removes snapshot files an agent killed mid-stream left behind; run at
/// agent start, before any snapshot can be in flight.
pub fn remove_leftover_snapshots(host: &Host) -> Result<Vec<String>, HostError> {
    let mut removed = Vec::new();
    for name in host.read_dir(AGENT_STATE_DIR)?.unwrap_or_default() {
        let path = format!("{AGENT_STATE_DIR}/{name}");
        if name.starts_with(SNAPSHOT_FILE_PREFIX) && host.remove_file(&path)? {
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses_etcdctl_3_4_json() {
        // Captured from etcdctl 3.4.23 on this machine.
        let s = parse_snapshot_status(
            "{\"hash\":3634532038,\"revision\":2,\"totalKey\":5,\"totalSize\":20480}\n",
        )
        .unwrap();
        assert_eq!(
            s,
            SnapshotStatus {
                hash: 3634532038,
                revision: 2,
                total_keys: 5,
                total_size: 20480
            }
        );
        assert!(parse_snapshot_status("Error: snapshot file not found").is_err());
    }

    #[test]
    fn leftover_snapshots_are_removed_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let host = Host::new(root.path(), vec![]);
        host.create_private_dir(AGENT_STATE_DIR).unwrap();
        for f in [
            "etcd-snapshot-1-0.db",
            "etcd-snapshot-1-1.db.part",
            "kubeadm-join.yaml",
            "identity.pem",
        ] {
            host.write_atomic(&format!("{AGENT_STATE_DIR}/{f}"), b"x", 0o600)
                .unwrap();
        }
        let mut removed = remove_leftover_snapshots(&host).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            vec![
                "/var/lib/kh-agent/etcd-snapshot-1-0.db".to_string(),
                "/var/lib/kh-agent/etcd-snapshot-1-1.db.part".to_string()
            ]
        );
        assert_eq!(
            host.read_dir(AGENT_STATE_DIR).unwrap().unwrap(),
            vec!["identity.pem".to_string(), "kubeadm-join.yaml".to_string()]
        );
    }
}
