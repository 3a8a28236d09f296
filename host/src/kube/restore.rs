//! The host side of `khctl etcd restore`: receive a snapshot and verify it,
//! stop the etcd and kube-apiserver static pods, restore the snapshot into a
//! fresh data dir with `etcdctl snapshot restore`, swap it in, start the pods.
//!
//! Every name carries the operation id, so a step run again after a crash
//! (of the agent, the coordinator or the host) knows what is its own: the
//! manifests moved aside live in `/etc/kubernetes/kh-etcd-restore-<op>/`,
//! the restored data is made in `<data-dir>.kh-restore-<op>` and the old
//! data goes to `<data-dir>.kh-old-<op>`. Once the old data is aside, the
//! data dir is never moved aside again, so a re-run cannot mistake restored
//! data for the old. Old data is never deleted. A data dir that is a mount
//! point cannot be renamed: its contents move instead, into
//! `<data-dir>/kh-old-<op>` (etcd warns about the extra directory and
//! otherwise ignores it).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::error::StepError;
use crate::host::{Cmd, Host, TcpProbe};
use crate::kube::apply::{apply_with, command_error, Done, KubeApplier};
use crate::kube::error::KubeError;
use crate::kube::etcd::{EtcdClient, Scope};
use crate::kube::files::parse_advertise_client_url;
use crate::kube::{AGENT_STATE_DIR, APISERVER_MANIFEST, ETCD_MANIFEST, MANIFESTS_DIR};
use crate::steps::{Plan, Step, StepKind, StepReport};

/// etcd's data dir when its manifest names none (kubeadm's default).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/etcd";
/// How long stopped pods may take to close their ports (the kubelet sends
/// SIGTERM and SIGKILL after its grace period).
const STOP_WAIT: Duration = Duration::from_secs(90);
/// How long a started etcd may take to answer on its client URL.
const START_WAIT: Duration = Duration::from_secs(120);
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);
const STATUS_TIMEOUT: Duration = Duration::from_secs(120);

const RESTORE_NEXT: &str = "check the etcdctl output above; the snapshot was verified with `etcdctl snapshot status` before, so a failure here is usually disk space or permissions under the data dir's parent";

/// An operation id: what names every file and directory of one restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationId(String);

impl OperationId {
    pub fn new(id: &str) -> Result<Self, KubeError> {
        let ok = !id.is_empty()
            && id.len() <= 63
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(id.to_string()))
        } else {
            Err(KubeError::Invalid {
                what: "restore operation id",
                value: id.chars().take(80).collect(),
                reason: "use 1-63 characters of a-z, 0-9 and `-`".into(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The agent's directory for this operation (the snapshot, markers).
    pub fn state_dir(&self) -> String {
        format!("{AGENT_STATE_DIR}/etcd-restore-{}", self.0)
    }

    /// Where the received snapshot is kept while the operation runs.
    pub fn snapshot_path(&self) -> String {
        format!("{}/snapshot.db", self.state_dir())
    }

    /// Where the etcd and apiserver manifests wait while their pods are
    /// stopped: beside the manifests dir (the same filesystem, so a rename),
    /// outside it (the kubelet reads only the manifests dir).
    pub fn manifests_aside(&self) -> String {
        format!("/etc/kubernetes/kh-etcd-restore-{}", self.0)
    }

    fn restored_marker(&self) -> String {
        format!("{}/restored", self.state_dir())
    }
}

/// What `etcdctl snapshot status -w json` says of a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    pub hash: u64,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Receives a snapshot in pieces into the operation's 0600 file, hashing as
/// it goes: memory use does not grow with the snapshot. `finish` checks the
/// size and SHA-256 the coordinator announced, renames the file into place
/// and verifies it with `etcdctl snapshot status`.
pub struct SnapshotReceiver {
    op: OperationId,
    part: String,
    file: std::fs::File,
    hasher: Context,
    written: u64,
    size: u64,
    sha256: String,
}

impl SnapshotReceiver {
    pub fn begin(host: &Host, op: OperationId, size: u64, sha256: &str) -> Result<Self, KubeError> {
        let sha256 = sha256.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KubeError::Invalid {
                what: "snapshot sha256",
                value: sha256.chars().take(80).collect(),
                reason: "64 hex digits expected".into(),
            });
        }
        host.create_private_dir(AGENT_STATE_DIR)?;
        discard_others(host, &op)?;
        host.create_private_dir(&op.state_dir())?;
        // One name per transfer: a transfer cut off by a coordinator that
        // died cleans up only its own file, never a newer one's.
        static TRANSFERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = TRANSFERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let part = format!("{}.part-{n}", op.snapshot_path());
        let file = host.create_private_file(&part)?;
        Ok(Self {
            op,
            part,
            file,
            hasher: Context::new(&SHA256),
            written: 0,
            size,
            sha256,
        })
    }

    pub fn write(&mut self, host: &Host, chunk: &[u8]) -> Result<(), KubeError> {
        self.written += chunk.len() as u64;
        if self.written > self.size {
            return Err(self.mismatch(format!(
                "more than the announced {} bytes arrived",
                self.size
            )));
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).map_err(|e| {
            KubeError::Host(crate::error::HostError::Io {
                action: "write",
                path: self.part.clone(),
                real: host.path(&self.part).unwrap_or_default(),
                source: e,
            })
        })
    }

    fn mismatch(&self, detail: String) -> KubeError {
        KubeError::Invalid {
            what: "snapshot transfer",
            value: self.op.snapshot_path(),
            reason: format!("{detail}; the copy was discarded. Run the restore again; if it repeats, check the snapshot in the coordinator's store"),
        }
    }

    /// Checks and places the file, then verifies it with etcdctl.
    pub fn finish(self, host: &Host) -> Result<SnapshotStatus, KubeError> {
        let digest = hex(self.hasher.clone().finish().as_ref());
        let io = |e: std::io::Error| {
            KubeError::Host(crate::error::HostError::Io {
                action: "sync",
                path: self.part.clone(),
                real: host.path(&self.part).unwrap_or_default(),
                source: e,
            })
        };
        self.file.sync_all().map_err(io)?;
        if self.written != self.size {
            let _ = host.remove_file(&self.part);
            return Err(self.mismatch(format!(
                "{} bytes arrived, {} were announced",
                self.written, self.size
            )));
        }
        if digest != self.sha256 {
            let _ = host.remove_file(&self.part);
            return Err(self.mismatch(format!(
                "its SHA-256 is {digest}, {} was announced",
                self.sha256
            )));
        }
        host.rename(&self.part, &self.op.snapshot_path())?;
        snapshot_status(host, &self.op.snapshot_path())
    }
}

/// Removes the snapshot copies of earlier restores that never stopped a
/// pod here (a restore refused, cancelled or killed while distributing):
/// they hold every Secret of the cluster, and a new restore means no
/// earlier one is pending. One that has manifests aside is kept.
fn discard_others(host: &Host, op: &OperationId) -> Result<(), KubeError> {
    for name in host.read_dir(AGENT_STATE_DIR)?.unwrap_or_default() {
        let Some(id) = name.strip_prefix("etcd-restore-") else {
            continue;
        };
        let Ok(other) = OperationId::new(id) else {
            continue;
        };
        if other != *op && !host.exists(&other.manifests_aside())? {
            host.remove_dir_all(&other.state_dir())?;
            tracing::info!(
                operation = id,
                "removed the snapshot copy of an earlier restore"
            );
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a host file, read in pieces.
pub fn file_sha256(host: &Host, abs: &str) -> Result<Option<String>, KubeError> {
    let Some(mut f) = host.open_read(abs)? else {
        return Ok(None);
    };
    let mut hasher = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| {
            KubeError::Host(crate::error::HostError::Io {
                action: "read",
                path: abs.to_string(),
                real: host.path(abs).unwrap_or_default(),
                source: e,
            })
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hex(hasher.finish().as_ref())))
}

/// `etcdctl snapshot status FILE -w json`: the check that the file is an
/// etcd database at all, made on every node before anything is stopped.
pub fn snapshot_status(host: &Host, abs: &str) -> Result<SnapshotStatus, KubeError> {
    let cmd = Cmd::new("etcdctl")
        .args(["snapshot", "status"])
        .arg(host.path(abs)?.display().to_string())
        .args(["-w", "json"])
        .timeout(STATUS_TIMEOUT);
    let record = host.run(&cmd)?;
    if !record.success() {
        return Err(command_error(&record, "the snapshot is not a readable etcd database; take a new one with `khctl etcd snapshot save` or pass another with --snapshot"));
    }
    serde_json::from_str(record.stdout.trim()).map_err(|e| KubeError::Output {
        argv: record.argv.clone(),
        detail: e.to_string(),
        head: record.stdout.chars().take(200).collect(),
        next: "etcdctl printed something other than its JSON status; check that etcdctl is 3.4 or newer".into(),
    })
}

/// etcd's `--data-dir` from its manifest text; kubeadm's default otherwise.
pub fn manifest_data_dir(manifest: &str) -> String {
    manifest
        .lines()
        .find_map(|l| {
            let rest = l.split("--data-dir=").nth(1)?;
            let d = rest.trim().trim_matches(|c| c == '"' || c == '\'');
            (d.starts_with('/') && d.len() > 1).then(|| d.trim_end_matches('/').to_string())
        })
        .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string())
}

/// The two manifests a restore stops, etcd first.
const STOPPED: [(&str, &str); 2] = [
    ("etcd.yaml", ETCD_MANIFEST),
    ("kube-apiserver.yaml", APISERVER_MANIFEST),
];

fn moved(plan: &mut Plan, from: &str, to: &str) {
    plan.notes.push(format!("move {from} to {to}"));
}

/// The moves a plan announced, as (from, to).
fn planned_moves(plan: &Plan) -> Vec<(String, String)> {
    plan.notes
        .iter()
        .filter_map(|n| n.strip_prefix("move "))
        .filter_map(|n| n.split_once(" to "))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Stops the etcd and kube-apiserver static pods by moving their manifests
/// out of the manifests dir, then waits until their ports stop accepting.
/// Manifests already aside are fine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopControlPlane {
    pub op: OperationId,
    /// `host:port` the stopped pods listen on (etcd client and peer, the
    /// apiserver), which must stop accepting.
    pub ports: Vec<String>,
}

impl Step for StopControlPlane {
    fn kind(&self) -> StepKind {
        StepKind::EtcdStopControlPlane
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(self.kind());
        let aside = self.op.manifests_aside();
        for (name, path) in STOPPED {
            let target = format!("{aside}/{name}");
            match (host.exists(path)?, host.exists(&target)?) {
                (true, false) => moved(&mut plan, path, &target),
                (true, true) => {
                    return Err(StepError::Kube(Box::new(KubeError::Invalid {
                        what: "manifest",
                        value: path.to_string(),
                        reason: format!("{target} exists too: something put the manifest back while this restore ran; compare the two, keep one, and run the restore again"),
                    })))
                }
                (false, _) => {}
            }
        }
        for p in &self.ports {
            plan.notes.push(format!("wait until {p} stops accepting"));
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, self.kind(), plan, |a| {
            let moves = planned_moves(plan);
            host.create_dir_all(&self.op.manifests_aside())
                .map_err(KubeError::from)?;
            for (from, to) in &moves {
                a.host().rename(from, to)?;
            }
            let start = Instant::now();
            for p in &self.ports {
                while host.tcp_probe(p, Duration::from_millis(500)) == TcpProbe::Open {
                    if start.elapsed() > STOP_WAIT {
                        return Err(KubeError::Invalid {
                            what: "stopped pod",
                            value: p.clone(),
                            reason: format!("still accepts connections {}s after its manifest was moved to {}; check that the kubelet runs (`systemctl status kubelet`) and what listens there (`ss -ltnp`)", STOP_WAIT.as_secs(), self.op.manifests_aside()),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            if moves.is_empty() {
                Ok(Done::Unchanged(format!(
                    "etcd and kube-apiserver were already stopped (manifests in {})",
                    self.op.manifests_aside()
                )))
            } else {
                Ok(Done::Changed(format!(
                    "stopped {} (manifests moved to {}); {} closed",
                    moves
                        .iter()
                        .map(|(f, _)| f.rsplit('/').next().unwrap_or(f).trim_end_matches(".yaml"))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    self.op.manifests_aside(),
                    self.ports.join(", ")
                )))
            }
        })
    }
}

/// Starts the stopped pods again: etcd's manifest back first, wait until
/// the local member answers on its client URL, then the apiserver's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartControlPlane {
    pub op: OperationId,
}

impl Step for StartControlPlane {
    fn kind(&self) -> StepKind {
        StepKind::EtcdStartControlPlane
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(self.kind());
        let aside = self.op.manifests_aside();
        for (name, path) in STOPPED {
            let from = format!("{aside}/{name}");
            if host.exists(&from)? && !host.exists(path)? {
                moved(&mut plan, &from, path);
            }
        }
        plan.notes
            .push("wait until the local etcd member answers".to_string());
        if host.exists(&self.op.state_dir())? {
            plan.notes.push(format!(
                "remove {} (the received snapshot holds every secret of the cluster)",
                self.op.state_dir()
            ));
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, self.kind(), plan, |a| {
            let moves = planned_moves(plan);
            let (etcd, rest): (Vec<_>, Vec<_>) =
                moves.iter().partition(|(_, to)| to == ETCD_MANIFEST);
            for (from, to) in &etcd {
                a.host().rename(from, to)?;
            }
            let manifest =
                host.read_to_string(ETCD_MANIFEST)?
                    .ok_or_else(|| KubeError::MissingFile {
                        path: ETCD_MANIFEST.into(),
                        next: format!(
                            "the restore moved it to {}; put it back",
                            self.op.manifests_aside()
                        ),
                    })?;
            let url = parse_advertise_client_url(&manifest).ok_or_else(|| KubeError::Invalid {
                what: "etcd manifest",
                value: ETCD_MANIFEST.into(),
                reason: "it has no --advertise-client-urls".into(),
            })?;
            wait_member_answers(host, &url)?;
            for (from, to) in &rest {
                a.host().rename(from, to)?;
            }
            // The restored member runs: the snapshot copy is not needed any
            // more, and the restore's markers only matter before this point.
            host.remove_dir_all(&self.op.state_dir())?;
            if host
                .read_dir(&self.op.manifests_aside())?
                .is_some_and(|e| e.is_empty())
            {
                host.remove_dir_all(&self.op.manifests_aside())?;
            }
            if moves.is_empty() {
                Ok(Done::Unchanged(format!(
                    "etcd and kube-apiserver run; {url} answers"
                )))
            } else {
                Ok(Done::Changed(format!(
                    "started etcd ({url} answers) and kube-apiserver from their manifests in {MANIFESTS_DIR}"
                )))
            }
        })
    }
}

fn wait_member_answers(host: &Host, url: &str) -> Result<(), KubeError> {
    let client = EtcdClient::stacked(vec![url.to_string()]).command_timeout(Duration::from_secs(3));
    let start = Instant::now();
    loop {
        match client.endpoint_status(host, Scope::Endpoints) {
            Ok(s) if !s.statuses.is_empty() => return Ok(()),
            Ok(_) if start.elapsed() < START_WAIT => {}
            Err(_) if start.elapsed() < START_WAIT => {}
            Ok(_) => {
                return Err(KubeError::Invalid {
                    what: "etcd member",
                    value: url.into(),
                    reason: format!("did not answer within {}s of its start; read its log (`crictl logs` of the etcd container)", START_WAIT.as_secs()),
                })
            }
            Err(e) => return Err(e),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Removes the received snapshot of a restore that stopped before anything
/// was stopped: it holds every Secret of the cluster. Refused once the
/// restore has moved a manifest aside (the snapshot is still needed then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discard {
    pub op: OperationId,
}

impl Step for Discard {
    fn kind(&self) -> StepKind {
        StepKind::EtcdRestoreDiscard
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(self.kind());
        if host.exists(&self.op.manifests_aside())? {
            return Err(StepError::Kube(Box::new(KubeError::Invalid {
                what: "restore",
                value: self.op.as_str().into(),
                reason: format!("its manifests are aside in {}: the restore has stopped etcd here and must be resumed, not discarded", self.op.manifests_aside()),
            })));
        }
        if host.exists(&self.op.state_dir())? {
            plan.notes.push(format!("remove {}", self.op.state_dir()));
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, self.kind(), plan, |a| {
            if plan.notes.is_empty() {
                return Ok(Done::Unchanged(format!(
                    "no snapshot of restore {} here",
                    self.op.as_str()
                )));
            }
            a.host().remove_dir_all(&self.op.state_dir())?;
            Ok(Done::Changed(format!(
                "removed the received snapshot ({})",
                self.op.state_dir()
            )))
        })
    }
}

/// `etcdctl snapshot restore` of the operation's snapshot into a fresh dir
/// next to the data dir, then the old data aside and the restored data in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdRestore {
    pub op: OperationId,
    /// The member name (the node name, as kubeadm names members).
    pub name: String,
    /// `name=https://addr:2380,...` of every member of the restored cluster.
    pub initial_cluster: String,
    pub token: String,
    /// `https://<address>:2380`.
    pub peer_url: String,
}

/// Where one restore puts things, given the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    data: String,
    mount: bool,
    /// Where etcdctl restores to.
    restore: String,
    /// Where the old data goes (a dir whose existence says it is aside).
    old: String,
    /// The old dir while a mount point's entries move into it.
    old_partial: String,
}

impl Layout {
    fn new(op: &OperationId, data: &str, mount: bool) -> Self {
        let id = op.as_str();
        if mount {
            Self {
                data: data.into(),
                mount,
                restore: format!("{data}/kh-restore-{id}"),
                old: format!("{data}/kh-old-{id}"),
                old_partial: format!("{data}/kh-old-{id}.partial"),
            }
        } else {
            Self {
                data: data.into(),
                mount,
                restore: format!("{data}.kh-restore-{id}"),
                old: format!("{data}.kh-old-{id}"),
                old_partial: format!("{data}.kh-old-{id}.partial"),
            }
        }
    }

    /// What is moved in: the whole restore dir, or its `member` dir.
    fn restored(&self) -> (String, String) {
        if self.mount {
            (
                format!("{}/member", self.restore),
                format!("{}/member", self.data),
            )
        } else {
            (self.restore.clone(), self.data.clone())
        }
    }
}

/// One action of a restore plan, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum RestoreAction {
    /// A restore dir of this operation that etcdctl did not finish.
    RemovePartial {
        dir: String,
    },
    Restore,
    /// Creates the (empty) old dir: there was no data to move aside.
    CreateOld {
        dir: String,
    },
    Move {
        from: String,
        to: String,
    },
    /// Removes the empty restore dir of a mount point.
    RemoveEmpty {
        dir: String,
    },
}

impl EtcdRestore {
    fn data_dir(&self, host: &Host) -> Result<String, KubeError> {
        let aside = format!("{}/etcd.yaml", self.op.manifests_aside());
        let text = match host.read_to_string(&aside)? {
            Some(t) => Some(t),
            None => host.read_to_string(ETCD_MANIFEST)?,
        };
        Ok(text
            .as_deref()
            .map(manifest_data_dir)
            .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string()))
    }

    fn command(&self, host: &Host, restore_dir: &str) -> Result<Cmd, KubeError> {
        Ok(Cmd::new("etcdctl")
            .args(["snapshot", "restore"])
            .arg(host.path(&self.op.snapshot_path())?.display().to_string())
            .arg(format!("--name={}", self.name))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url))
            .arg(format!("--data-dir={}", host.path(restore_dir)?.display()))
            .timeout(RESTORE_TIMEOUT))
    }

    /// The actions from what is on the host now.
    pub fn actions(&self, host: &Host) -> Result<Vec<RestoreAction>, KubeError> {
        let data = self.data_dir(host)?;
        let l = Layout::new(&self.op, &data, host.is_mount_point(&data)?);
        let (from, to) = l.restored();
        let mut out = Vec::new();
        if host.exists(&l.old)? {
            // The old data is aside: whatever is in the data dir now is ours.
            if host.exists(&from)? {
                if host.exists(&to)? {
                    return Err(KubeError::Invalid {
                        what: "data dir",
                        value: to,
                        reason: format!("both it and {from} exist after the old data was moved to {}; etcd must have run in between. Stop it, keep the one you trust and remove the other, then run the restore again", l.old),
                    });
                }
                out.push(RestoreAction::Move { from, to });
            }
            if l.mount && host.exists(&l.restore)? {
                out.push(RestoreAction::RemoveEmpty { dir: l.restore });
            }
            return Ok(out);
        }
        let complete = host.exists(&self.op.restored_marker())? && host.exists(&from)?;
        if !complete {
            if host.exists(&l.restore)? {
                out.push(RestoreAction::RemovePartial {
                    dir: l.restore.clone(),
                });
            }
            out.push(RestoreAction::Restore);
        }
        if l.mount {
            let skip = [file_name(&l.restore), file_name(&l.old_partial)];
            let entries = host.read_dir(&l.data)?.unwrap_or_default();
            if !host.exists(&l.old_partial)? {
                out.push(RestoreAction::CreateOld {
                    dir: l.old_partial.clone(),
                });
            }
            for e in entries.iter().filter(|e| !skip.contains(&e.as_str())) {
                out.push(RestoreAction::Move {
                    from: format!("{}/{e}", l.data),
                    to: format!("{}/{e}", l.old_partial),
                });
            }
            out.push(RestoreAction::Move {
                from: l.old_partial.clone(),
                to: l.old.clone(),
            });
        } else if host.exists(&l.data)? {
            out.push(RestoreAction::Move {
                from: l.data.clone(),
                to: l.old.clone(),
            });
        } else {
            out.push(RestoreAction::CreateOld { dir: l.old.clone() });
        }
        out.push(RestoreAction::Move { from, to });
        if l.mount {
            out.push(RestoreAction::RemoveEmpty { dir: l.restore });
        }
        Ok(out)
    }

    fn describe(&self, host: &Host, a: &RestoreAction) -> Result<String, KubeError> {
        Ok(match a {
            RestoreAction::RemovePartial { dir } => {
                format!("remove {dir}, an unfinished restore of this operation")
            }
            RestoreAction::Restore => {
                let data = self.data_dir(host)?;
                let l = Layout::new(&self.op, &data, host.is_mount_point(&data)?);
                format!("restore the snapshot into {}", l.restore)
            }
            RestoreAction::CreateOld { dir } => format!("create {dir} (there is no old data)"),
            RestoreAction::Move { from, to } => format!("move {from} to {to}"),
            RestoreAction::RemoveEmpty { dir } => format!("remove the empty {dir}"),
        })
    }
}

fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

impl Step for EtcdRestore {
    fn kind(&self) -> StepKind {
        StepKind::EtcdRestore
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(self.kind());
        let to_step = |e: KubeError| match e {
            KubeError::Host(h) => StepError::Host(h),
            KubeError::Step(s) => s,
            other => StepError::Kube(Box::new(other)),
        };
        let actions = self.actions(host).map_err(to_step)?;
        for a in &actions {
            if *a == RestoreAction::Restore {
                let data = self.data_dir(host).map_err(to_step)?;
                let l = Layout::new(&self.op, &data, host.is_mount_point(&data)?);
                plan.commands.push(
                    self.command(host, &l.restore)
                        .map_err(to_step)?
                        .argv()
                        .to_vec(),
                );
            }
            plan.notes.push(self.describe(host, a).map_err(to_step)?);
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, self.kind(), plan, |a| {
            let actions = self.actions(host)?;
            let described: Vec<String> = actions
                .iter()
                .map(|x| self.describe(host, x))
                .collect::<Result<_, _>>()?;
            if described != plan.notes {
                return Err(KubeError::Invalid {
                    what: "plan",
                    value: plan.notes.join("; "),
                    reason: format!(
                        "the host changed since the plan was made (now: {}); run the step again",
                        described.join("; ")
                    ),
                });
            }
            let data = self.data_dir(host)?;
            let l = Layout::new(&self.op, &data, host.is_mount_point(&data)?);
            for action in &actions {
                run_action(self, a, &l, action)?;
            }
            if actions.is_empty() {
                Ok(Done::Unchanged(format!(
                    "{} already holds the restored data of this operation; the old data is in {}",
                    l.data, l.old
                )))
            } else {
                Ok(Done::Changed(format!(
                    "restored the snapshot as member {} into {}; the old data is in {}",
                    self.name, l.data, l.old
                )))
            }
        })
    }
}

fn run_action(
    step: &EtcdRestore,
    a: &mut KubeApplier<'_>,
    l: &Layout,
    action: &RestoreAction,
) -> Result<(), KubeError> {
    match action {
        RestoreAction::RemovePartial { dir } => {
            a.host().remove_file(&step.op.restored_marker())?;
            a.host().remove_dir_all(dir)?;
        }
        RestoreAction::Restore => {
            a.host().remove_file(&step.op.restored_marker())?;
            let cmd = step.command(a.host(), &l.restore)?;
            a.run_checked(&cmd, RESTORE_NEXT)?;
            a.host().create_private_dir(&step.op.state_dir())?;
            a.host()
                .write_atomic(&step.op.restored_marker(), b"restored\n", 0o600)?;
        }
        RestoreAction::CreateOld { dir } => {
            a.host().create_dir_all(dir)?;
        }
        RestoreAction::Move { from, to } => a.host().rename(from, to)?,
        RestoreAction::RemoveEmpty { dir } => {
            a.host().remove_dir_all(dir)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> EtcdRestore {
        EtcdRestore {
            op: OperationId::new("r-1").unwrap(),
            name: "cp-1".into(),
            initial_cluster: "cp-1=https://10.0.0.11:2380".into(),
            token: "kh-r-1".into(),
            peer_url: "https://10.0.0.11:2380".into(),
        }
    }

    fn touch(host: &Host, p: &str) {
        host.create_dir_all(p.rsplit_once('/').unwrap().0).unwrap();
        host.write_atomic(p, b"x", 0o600).unwrap();
    }

    #[test]
    fn operation_ids_are_plain_names() {
        assert!(OperationId::new("r-1765000000000").is_ok());
        for bad in ["", "../x", "A", "a b", &"x".repeat(64)] {
            assert!(OperationId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_data_dir_comes_from_the_manifest() {
        assert_eq!(
            manifest_data_dir("    - --data-dir=/data/etcd/\n"),
            "/data/etcd"
        );
        assert_eq!(manifest_data_dir("    - --name=cp-1\n"), "/var/lib/etcd");
    }

    #[test]
    fn a_fresh_restore_keeps_the_old_data_and_a_resume_never_moves_the_restored_data_aside() {
        let root = tempfile::tempdir().unwrap();
        let host = Host::new(root.path(), vec![]);
        let s = step();
        touch(&host, "/var/lib/etcd/member/wal/0.wal");
        let a = s.actions(&host).unwrap();
        assert_eq!(
            a,
            vec![
                RestoreAction::Restore,
                RestoreAction::Move {
                    from: "/var/lib/etcd".into(),
                    to: "/var/lib/etcd.kh-old-r-1".into()
                },
                RestoreAction::Move {
                    from: "/var/lib/etcd.kh-restore-r-1".into(),
                    to: "/var/lib/etcd".into()
                },
            ]
        );
        // A crash during etcdctl: the partial dir is ours to remove and redo.
        touch(&host, "/var/lib/etcd.kh-restore-r-1/member/half");
        assert_eq!(
            s.actions(&host).unwrap()[0],
            RestoreAction::RemovePartial {
                dir: "/var/lib/etcd.kh-restore-r-1".into()
            }
        );
        // etcdctl finished (marker), then a crash after the old data moved.
        touch(&host, &s.op.restored_marker());
        host.rename("/var/lib/etcd", "/var/lib/etcd.kh-old-r-1")
            .unwrap();
        assert_eq!(
            s.actions(&host).unwrap(),
            vec![RestoreAction::Move {
                from: "/var/lib/etcd.kh-restore-r-1".into(),
                to: "/var/lib/etcd".into()
            }]
        );
        host.rename("/var/lib/etcd.kh-restore-r-1", "/var/lib/etcd")
            .unwrap();
        // Done: a re-run changes nothing, and the old data is still there.
        assert_eq!(s.actions(&host).unwrap(), vec![]);
        assert!(host
            .exists("/var/lib/etcd.kh-old-r-1/member/wal/0.wal")
            .unwrap());
    }

    #[test]
    fn lost_data_gets_an_empty_old_dir_so_the_restored_data_is_never_taken_for_old() {
        let root = tempfile::tempdir().unwrap();
        let host = Host::new(root.path(), vec![]);
        let s = step();
        let a = s.actions(&host).unwrap();
        assert_eq!(
            a[1],
            RestoreAction::CreateOld {
                dir: "/var/lib/etcd.kh-old-r-1".into()
            }
        );
        host.create_dir_all("/var/lib/etcd.kh-old-r-1").unwrap();
        touch(&host, "/var/lib/etcd/member/wal/0.wal");
        assert_eq!(s.actions(&host).unwrap(), vec![]);
    }

    #[test]
    fn a_data_dir_that_came_back_after_the_old_data_moved_aside_is_refused_not_overwritten() {
        let root = tempfile::tempdir().unwrap();
        let host = Host::new(root.path(), vec![]);
        let s = step();
        touch(&host, "/var/lib/etcd.kh-old-r-1/member/wal/0.wal");
        touch(&host, "/var/lib/etcd.kh-restore-r-1/member/snap/db");
        touch(&host, "/var/lib/etcd/member/wal/new.wal");
        let e = s.actions(&host).unwrap_err().to_string();
        assert!(e.contains("etcd must have run in between"), "{e}");
        let r = s.run(&host, false);
        assert_eq!(r.outcome, crate::Outcome::Failed, "{r:?}");
        assert!(host.exists("/var/lib/etcd/member/wal/new.wal").unwrap());
        // A manifest found both in place and aside stops the stop step.
        touch(&host, ETCD_MANIFEST);
        touch(&host, "/etc/kubernetes/kh-etcd-restore-r-1/etcd.yaml");
        let stop = StopControlPlane {
            op: s.op.clone(),
            ports: vec![],
        };
        let r = stop.run(&host, false);
        assert_eq!(r.outcome, crate::Outcome::Failed, "{r:?}");
        assert!(r.error.unwrap().contains("exists too"));
    }

    #[test]
    fn a_data_dir_that_is_a_mount_point_has_its_contents_moved() {
        let root = tempfile::tempdir().unwrap();
        let host = Host::new(root.path(), vec![]);
        host.create_dir_all("/proc/self").unwrap();
        host.write_atomic(
            "/proc/self/mountinfo",
            b"36 35 98:0 / /var/lib/etcd rw,noatime master:1 - ext4 /dev/sdb1 rw\n",
            0o644,
        )
        .unwrap();
        assert!(host.is_mount_point("/var/lib/etcd").unwrap());
        assert!(!host.is_mount_point("/var/lib").unwrap());
        touch(&host, "/var/lib/etcd/member/wal/0.wal");
        touch(&host, "/var/lib/etcd/lost+found/x");
        let s = step();
        touch(&host, &s.op.restored_marker());
        touch(&host, "/var/lib/etcd/kh-restore-r-1/member/snap/db");
        let a = s.actions(&host).unwrap();
        assert_eq!(
            a,
            vec![
                RestoreAction::CreateOld {
                    dir: "/var/lib/etcd/kh-old-r-1.partial".into()
                },
                RestoreAction::Move {
                    from: "/var/lib/etcd/lost+found".into(),
                    to: "/var/lib/etcd/kh-old-r-1.partial/lost+found".into()
                },
                RestoreAction::Move {
                    from: "/var/lib/etcd/member".into(),
                    to: "/var/lib/etcd/kh-old-r-1.partial/member".into()
                },
                RestoreAction::Move {
                    from: "/var/lib/etcd/kh-old-r-1.partial".into(),
                    to: "/var/lib/etcd/kh-old-r-1".into()
                },
                RestoreAction::Move {
                    from: "/var/lib/etcd/kh-restore-r-1/member".into(),
                    to: "/var/lib/etcd/member".into()
                },
                RestoreAction::RemoveEmpty {
                    dir: "/var/lib/etcd/kh-restore-r-1".into()
                },
            ]
        );
        let mut plan = Plan::new(StepKind::EtcdRestore);
        plan.notes = a.iter().map(|x| s.describe(&host, x).unwrap()).collect();
        let report = s.apply(&host, &plan);
        assert_eq!(report.outcome, crate::Outcome::Changed, "{report:?}");
        assert!(host.exists("/var/lib/etcd/member/snap/db").unwrap());
        assert!(host
            .exists("/var/lib/etcd/kh-old-r-1/member/wal/0.wal")
            .unwrap());
        assert_eq!(s.actions(&host).unwrap(), vec![]);
        assert_eq!(s.run(&host, false).outcome, crate::Outcome::Unchanged);
    }

    #[test]
    fn stop_and_start_move_the_manifests_and_a_second_stop_is_unchanged() {
        let root = tempfile::tempdir().unwrap();
        let host = Host::new(root.path(), vec![]);
        touch(&host, ETCD_MANIFEST);
        touch(&host, APISERVER_MANIFEST);
        touch(&host, "/etc/kubernetes/manifests/kube-scheduler.yaml");
        let op = OperationId::new("r-2").unwrap();
        let stop = StopControlPlane {
            op: op.clone(),
            ports: vec![],
        };
        let r = stop.run(&host, false);
        assert_eq!(r.outcome, crate::Outcome::Changed, "{r:?}");
        assert!(!host.exists(ETCD_MANIFEST).unwrap());
        assert!(host
            .exists("/etc/kubernetes/kh-etcd-restore-r-2/kube-apiserver.yaml")
            .unwrap());
        assert!(host
            .exists("/etc/kubernetes/manifests/kube-scheduler.yaml")
            .unwrap());
        assert_eq!(stop.run(&host, false).outcome, crate::Outcome::Unchanged);
        let start = StartControlPlane { op };
        let plan = start.plan(&host).unwrap();
        assert_eq!(
            planned_moves(&plan),
            vec![
                (
                    "/etc/kubernetes/kh-etcd-restore-r-2/etcd.yaml".to_string(),
                    ETCD_MANIFEST.to_string()
                ),
                (
                    "/etc/kubernetes/kh-etcd-restore-r-2/kube-apiserver.yaml".to_string(),
                    APISERVER_MANIFEST.to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_discarded_restore_removes_its_snapshot_unless_it_has_stopped_pods() {
        let root = tempfile::tempdir().unwrap();
        let host = Host::new(root.path(), vec![]);
        let op = OperationId::new("r-4").unwrap();
        touch(&host, &op.snapshot_path());
        let d = Discard { op: op.clone() };
        assert_eq!(d.run(&host, false).outcome, crate::Outcome::Changed);
        assert!(!host.exists(&op.state_dir()).unwrap());
        assert_eq!(d.run(&host, false).outcome, crate::Outcome::Unchanged);
        touch(&host, &op.snapshot_path());
        touch(&host, "/etc/kubernetes/kh-etcd-restore-r-4/etcd.yaml");
        assert_eq!(d.run(&host, false).outcome, crate::Outcome::Failed);
        assert!(host.exists(&op.snapshot_path()).unwrap());
    }

    #[test]
    fn a_received_snapshot_is_checked_against_its_size_and_hash() {
        let root = tempfile::tempdir().unwrap();
        let host = Host::new(root.path(), vec![]);
        let op = OperationId::new("r-3").unwrap();
        let data = b"not an etcd database";
        let sha = hex(ring::digest::digest(&SHA256, data).as_ref());
        // Copies of earlier restores go, unless that restore stopped pods.
        touch(&host, "/var/lib/kh-agent/etcd-restore-r-old/snapshot.db");
        touch(
            &host,
            "/var/lib/kh-agent/etcd-restore-r-stopped/snapshot.db",
        );
        touch(&host, "/etc/kubernetes/kh-etcd-restore-r-stopped/etcd.yaml");
        let mut r =
            SnapshotReceiver::begin(&host, op.clone(), data.len() as u64, &"0".repeat(64)).unwrap();
        assert!(!host.exists("/var/lib/kh-agent/etcd-restore-r-old").unwrap());
        assert!(host
            .exists("/var/lib/kh-agent/etcd-restore-r-stopped/snapshot.db")
            .unwrap());
        r.write(&host, data).unwrap();
        let e = r.finish(&host).unwrap_err().to_string();
        assert!(e.contains("SHA-256"), "{e}");
        assert!(!host.exists(&op.snapshot_path()).unwrap());
        let mut r = SnapshotReceiver::begin(&host, op.clone(), 3, &sha).unwrap();
        assert!(r.write(&host, data).is_err());
        let mut r = SnapshotReceiver::begin(&host, op.clone(), data.len() as u64, &sha).unwrap();
        r.write(&host, &data[..5]).unwrap();
        r.write(&host, &data[5..]).unwrap();
        // The hash matches; etcdctl is not on this host's path, so the
        // verification fails, and the file is in place with mode 0600.
        assert!(r.finish(&host).is_err());
        assert_eq!(host.file_mode(&op.snapshot_path()).unwrap(), Some(0o600));
        assert_eq!(file_sha256(&host, &op.snapshot_path()).unwrap(), Some(sha));
    }
}
