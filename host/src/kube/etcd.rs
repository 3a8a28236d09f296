//! etcd membership and health through the real `etcdctl` (3.4 and newer)
//! with the node's etcd client certificates.
//!
//! Two details of etcdctl shape this module. Member ids are printed in
//! decimal by `-w json` but taken in hex by `member remove/promote` and
//! `move-leader`, and they use all 64 bits, so they are parsed as `u64`
//! (never `i64`) and converted with `{:x}`. And `endpoint health`/`endpoint
//! status` exit 1 when any endpoint is unhealthy or unreachable while still
//! printing JSON for the others, so their output is parsed whatever the exit
//! status.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::{Cmd, CommandRecord, Host};
use crate::kube::apply::{command_error, go_duration};
use crate::kube::error::KubeError;

pub const ETCD_CA: &str = "/etc/kubernetes/pki/etcd/ca.crt";
/// The client certificate kubeadm makes for etcd's own liveness probe; it
/// is on every stacked control plane.
pub const HEALTHCHECK_CLIENT_CERT: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.crt";
pub const HEALTHCHECK_CLIENT_KEY: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.key";
/// The apiserver's etcd client certificate, the one a control plane has for
/// an external etcd.
pub const APISERVER_ETCD_CLIENT_CERT: &str = "/etc/kubernetes/pki/apiserver-etcd-client.crt";
pub const APISERVER_ETCD_CLIENT_KEY: &str = "/etc/kubernetes/pki/apiserver-etcd-client.key";

/// etcdctl's own default; a member that does not answer within it is down.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

const ETCD_NEXT: &str = "Check that etcd runs on the endpoints named (`crictl ps --name etcd` on the control planes), that a quorum of members is up, and that the client certificate files exist";

/// Client TLS files, as absolute host paths (mapped under the host root
/// when the command is built).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl EtcdTls {
    /// The healthcheck client of a stacked control plane.
    pub fn stacked() -> Self {
        Self {
            ca: ETCD_CA.to_string(),
            cert: HEALTHCHECK_CLIENT_CERT.to_string(),
            key: HEALTHCHECK_CLIENT_KEY.to_string(),
        }
    }

    /// The apiserver's client certificate, for an external etcd.
    pub fn external() -> Self {
        Self {
            ca: ETCD_CA.to_string(),
            cert: APISERVER_ETCD_CLIENT_CERT.to_string(),
            key: APISERVER_ETCD_CLIENT_KEY.to_string(),
        }
    }
}

/// Which endpoints a query covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The client's endpoints only.
    Endpoints,
    /// Every member's client URLs, as the member list gives them
    /// (`--cluster`); a learner that has not started has none and is left out.
    Cluster,
}

/// etcdctl with a fixed set of endpoints and client credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdClient {
    /// Client URLs such as `https://10.0.0.11:2379`.
    pub endpoints: Vec<String>,
    /// `None` for plain-HTTP etcd (test clusters only).
    pub tls: Option<EtcdTls>,
    pub command_timeout: Duration,
}

/// One member as `member list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub id: u64,
    /// Lowercase hex without `0x`, as `member remove` takes it.
    pub id_hex: String,
    /// Empty for a member that was added but has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty for a member that has not started yet.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl EtcdMember {
    /// Added but never started: etcd knows neither its name nor its client
    /// URLs. A failed control-plane join typically leaves one behind.
    pub fn is_unstarted(&self) -> bool {
        self.name.is_empty() && self.client_urls.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointHealth {
    pub endpoint: String,
    pub healthy: bool,
    /// How long the check took, as etcdctl prints it (`1.2ms`, `5.0s`).
    pub took: String,
    /// Why it is unhealthy (`context deadline exceeded`, `etcdserver: rpc
    /// not supported for learner`).
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub member_id: u64,
    pub leader_id: u64,
    pub db_size: u64,
    pub is_learner: bool,
    pub raft_term: u64,
    pub version: String,
}

impl EndpointStatus {
    pub fn is_leader(&self) -> bool {
        self.member_id == self.leader_id
    }
}

/// An endpoint `endpoint status` could not reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreachableEndpoint {
    pub endpoint: String,
    pub error: String,
}

/// `endpoint status` for several endpoints: the ones that answered and the
/// ones that did not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatuses {
    pub statuses: Vec<EndpointStatus>,
    pub unreachable: Vec<UnreachableEndpoint>,
}

impl EndpointStatuses {
    /// The leader's member id, as the reachable members agree on it.
    pub fn leader(&self) -> Option<u64> {
        self.statuses
            .iter()
            .find(|s| s.leader_id != 0)
            .map(|s| s.leader_id)
    }
}

#[derive(Deserialize)]
struct RawMemberList {
    #[serde(default)]
    members: Vec<RawMember>,
}

#[derive(Deserialize)]
struct RawMember {
    #[serde(rename = "ID")]
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
}

#[derive(Deserialize)]
struct RawHealth {
    endpoint: String,
    health: bool,
    #[serde(default)]
    took: String,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct RawStatusEntry {
    #[serde(rename = "Endpoint")]
    endpoint: String,
    #[serde(rename = "Status")]
    status: RawStatus,
}

#[derive(Deserialize)]
struct RawStatus {
    header: RawHeader,
    #[serde(default)]
    version: String,
    #[serde(rename = "dbSize", default)]
    db_size: u64,
    #[serde(default)]
    leader: u64,
    #[serde(rename = "raftTerm", default)]
    raft_term: u64,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
}

#[derive(Deserialize)]
struct RawHeader {
    member_id: u64,
}

/// Parses `etcdctl member list -w json`.
pub fn parse_member_list(json: &str) -> Result<Vec<EtcdMember>, String> {
    let list: RawMemberList = serde_json::from_str(json).map_err(|err| err.to_string())?;
    Ok(list
        .members
        .into_iter()
        .map(|m| EtcdMember {
            id: m.id,
            id_hex: format!("{:x}", m.id),
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        })
        .collect())
}

/// Parses `etcdctl endpoint health -w json`.
pub fn parse_endpoint_health(json: &str) -> Result<Vec<EndpointHealth>, String> {
    let entries: Vec<RawHealth> = serde_json::from_str(json).map_err(|err| err.to_string())?;
    Ok(entries
        .into_iter()
        .map(|h| EndpointHealth {
            endpoint: h.endpoint,
            healthy: h.health,
            took: h.took,
            error: h.error.filter(|e| !e.is_empty()),
        })
        .collect())
}

/// Parses `etcdctl endpoint status -w json` (stdout) and the endpoints it
/// could not reach, which it names only on stderr.
pub fn parse_endpoint_status(json: &str, stderr: &str) -> Result<EndpointStatuses, String> {
    let entries: Vec<RawStatusEntry> = if json.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(json).map_err(|err| err.to_string())?
    };
    let statuses = entries
        .into_iter()
        .map(|e| EndpointStatus {
            endpoint: e.endpoint,
            member_id: e.status.header.member_id,
            leader_id: e.status.leader,
            db_size: e.status.db_size,
            is_learner: e.status.is_learner,
            raft_term: e.status.raft_term,
            version: e.status.version,
        })
        .collect();
    // etcdctl 3.4: `Failed to get the status of endpoint URL (REASON)`.
    let unreachable = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("Failed to get the status of endpoint "))
        .filter_map(|rest| {
            let (endpoint, reason) = rest.split_once(' ')?;
            let reason = reason.trim();
            let reason = reason
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or(reason);
            Some(UnreachableEndpoint {
                endpoint: endpoint.to_string(),
                error: reason.to_string(),
            })
        })
        .collect();
    Ok(EndpointStatuses {
        statuses,
        unreachable,
    })
}

impl EtcdClient {
    /// A stacked control plane's local view: the healthcheck client
    /// certificate under /etc/kubernetes/pki/etcd.
    pub fn stacked(endpoints: Vec<String>) -> Self {
        Self::with_tls(endpoints, Some(EtcdTls::stacked()))
    }

    /// An external etcd, through the apiserver's etcd client certificate.
    pub fn external(endpoints: Vec<String>) -> Self {
        Self::with_tls(endpoints, Some(EtcdTls::external()))
    }

    /// Plain HTTP without client certificates: only test clusters run so.
    pub fn plaintext(endpoints: Vec<String>) -> Self {
        Self::with_tls(endpoints, None)
    }

    pub fn with_tls(endpoints: Vec<String>, tls: Option<EtcdTls>) -> Self {
        Self {
            endpoints,
            tls,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    pub(crate) fn command(&self, host: &Host, args: &[&str]) -> Result<Cmd, KubeError> {
        let mut cmd = Cmd::new("etcdctl")
            .arg(format!("--endpoints={}", self.endpoints.join(",")))
            .arg(format!("--dial-timeout={}", go_duration(DIAL_TIMEOUT)))
            .arg(format!(
                "--command-timeout={}",
                go_duration(self.command_timeout)
            ));
        if let Some(tls) = &self.tls {
            for (flag, path) in [
                ("--cacert", &tls.ca),
                ("--cert", &tls.cert),
                ("--key", &tls.key),
            ] {
                cmd = cmd.arg(format!("{flag}={}", host.path(path)?.display()));
            }
        }
        // etcdctl checks every endpoint in turn at worst, each bounded by the
        // dial and command timeouts; the process gets that plus a margin.
        let n = u32::try_from(self.endpoints.len().max(1)).unwrap_or(u32::MAX);
        let limit = (DIAL_TIMEOUT + self.command_timeout) * n + Duration::from_secs(10);
        Ok(cmd.args(args.iter().copied()).timeout(limit))
    }

    fn run_checked(&self, host: &Host, args: &[&str]) -> Result<CommandRecord, KubeError> {
        let record = host.run(&self.command(host, args)?)?;
        if record.success() {
            Ok(record)
        } else {
            Err(command_error(&record, ETCD_NEXT))
        }
    }

    fn unreadable(record: &CommandRecord, detail: String) -> KubeError {
        KubeError::Output {
            argv: record.argv.clone(),
            detail,
            head: record.stdout.chars().take(200).collect(),
            next: "etcdctl printed something other than its JSON output; check that etcdctl is 3.4 or newer".to_string(),
        }
    }

    pub fn members(&self, host: &Host) -> Result<Vec<EtcdMember>, KubeError> {
        let record = self.run_checked(host, &["member", "list", "-w", "json"])?;
        parse_member_list(&record.stdout).map_err(|detail| Self::unreadable(&record, detail))
    }

    /// Removes a member. `Ok(false)` when it is not a member (any more),
    /// which makes a retried removal harmless.
    pub fn remove_member(&self, host: &Host, id: u64) -> Result<bool, KubeError> {
        let hex = format!("{id:x}");
        let record = host.run(&self.command(host, &["member", "remove", &hex])?)?;
        if record.success() {
            Ok(true)
        } else if record.stderr_tail.contains("member not found") {
            Ok(false)
        } else {
            Err(command_error(&record, ETCD_NEXT))
        }
    }

    /// Promotes a learner to a voting member. `Ok(false)` when it already
    /// votes. A learner that has not caught up yet is
    /// [`KubeError::LearnerNotReady`], which is worth retrying.
    pub fn promote_member(&self, host: &Host, id: u64) -> Result<bool, KubeError> {
        let hex = format!("{id:x}");
        let record = host.run(&self.command(host, &["member", "promote", &hex])?)?;
        if record.success() {
            return Ok(true);
        }
        let stderr = &record.stderr_tail;
        if stderr.contains("which is in sync with leader") {
            Err(KubeError::LearnerNotReady {
                id_hex: hex,
                argv: record.argv.clone(),
                stderr_tail: record.stderr_tail.clone(),
            })
        } else if stderr.contains("can only promote a learner member") {
            Ok(false)
        } else {
            Err(command_error(&record, ETCD_NEXT))
        }
    }

    /// Health of each endpoint. etcdctl exits 1 when any is unhealthy; its
    /// JSON still lists all of them, so only output that does not parse is
    /// an error. A member that is down takes the command timeout to report.
    pub fn endpoint_health(
        &self,
        host: &Host,
        scope: Scope,
    ) -> Result<Vec<EndpointHealth>, KubeError> {
        let mut args = vec!["endpoint", "health", "-w", "json"];
        if scope == Scope::Cluster {
            args.push("--cluster");
        }
        let record = host.run(&self.command(host, &args)?)?;
        match parse_endpoint_health(&record.stdout) {
            Ok(health) if !health.is_empty() || record.success() => Ok(health),
            Ok(_) => Err(command_error(&record, ETCD_NEXT)),
            Err(_) if !record.success() => Err(command_error(&record, ETCD_NEXT)),
            Err(detail) => Err(Self::unreadable(&record, detail)),
        }
    }

    /// Status of each endpoint that answers; the others are listed as
    /// unreachable. An error only when nothing answered at all.
    pub fn endpoint_status(
        &self,
        host: &Host,
        scope: Scope,
    ) -> Result<EndpointStatuses, KubeError> {
        let mut args = vec!["endpoint", "status", "-w", "json"];
        if scope == Scope::Cluster {
            args.push("--cluster");
        }
        let record = host.run(&self.command(host, &args)?)?;
        match parse_endpoint_status(&record.stdout, &record.stderr_tail) {
            Ok(statuses) if !statuses.statuses.is_empty() || record.success() => Ok(statuses),
            Ok(_) => Err(command_error(&record, ETCD_NEXT)),
            Err(_) if !record.success() => Err(command_error(&record, ETCD_NEXT)),
            Err(detail) => Err(Self::unreadable(&record, detail)),
        }
    }

    /// Transfers leadership to `target`. etcdctl finds the current leader
    /// among the client's endpoints, so they must include it (give every
    /// member's client URL).
    pub fn move_leader(&self, host: &Host, target: u64) -> Result<(), KubeError> {
        let hex = format!("{target:x}");
        self.run_checked(host, &["move-leader", &hex]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from the real etcd 3.4.23 and etcdctl on this machine: member
    // `a`, then `member add b --learner` before `b` started.
    const MEMBERS_WITH_UNSTARTED_LEARNER: &str = r#"{"header":{"cluster_id":9711423495897070056,"member_id":13746348044382835492,"raft_term":2},"members":[{"ID":68955024856023489,"peerURLs":["http://127.201.7.2:23800"],"isLearner":true},{"ID":13746348044382835492,"name":"a","peerURLs":["http://127.201.7.1:23800"],"clientURLs":["http://127.201.7.1:23790"]}]}"#;
    // After `b` started, still a learner.
    const MEMBERS_WITH_STARTED_LEARNER: &str = r#"{"header":{"cluster_id":9711423495897070056,"member_id":13746348044382835492,"raft_term":2},"members":[{"ID":68955024856023489,"name":"b","peerURLs":["http://127.201.7.2:23800"],"clientURLs":["http://127.201.7.2:23790"],"isLearner":true},{"ID":13746348044382835492,"name":"a","peerURLs":["http://127.201.7.1:23800"],"clientURLs":["http://127.201.7.1:23790"]}]}"#;
    // `endpoint health -w json --cluster` (exit 1): the learner refuses the
    // check's read.
    const HEALTH_WITH_LEARNER: &str = r#"[{"endpoint":"http://127.201.7.1:23790","health":true,"took":"1.275253ms"},{"endpoint":"http://127.201.7.2:23790","health":false,"took":"2.633803497s","error":"etcdserver: rpc not supported for learner"}]"#;
    // The same after `b` was killed (exit 1 after ~5 s).
    const HEALTH_WITH_MEMBER_DOWN: &str = r#"[{"endpoint":"http://127.201.7.1:23790","health":true,"took":"6.375213ms"},{"endpoint":"http://127.201.7.2:23790","health":false,"took":"5.001243671s","error":"context deadline exceeded"}]"#;
    const STATUS_WITH_LEARNER: &str = r#"[{"Endpoint":"http://127.201.7.2:23790","Status":{"header":{"cluster_id":9711423495897070056,"member_id":68955024856023489,"revision":1,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":13746348044382835492,"raftIndex":6,"raftTerm":2,"raftAppliedIndex":6,"dbSizeInUse":16384,"isLearner":true}},{"Endpoint":"http://127.201.7.1:23790","Status":{"header":{"cluster_id":9711423495897070056,"member_id":13746348044382835492,"revision":1,"raft_term":2},"version":"3.4.23","dbSize":24576,"leader":13746348044382835492,"raftIndex":6,"raftTerm":2,"raftAppliedIndex":6,"dbSizeInUse":16384}}]"#;
    // `endpoint status -w json --cluster` with `b` down (exit 1).
    const STATUS_WITH_MEMBER_DOWN: &str = r#"[{"Endpoint":"http://127.201.7.1:23790","Status":{"header":{"cluster_id":9711423495897070056,"member_id":13746348044382835492,"revision":1,"raft_term":2},"version":"3.4.23","dbSize":24576,"leader":13746348044382835492,"raftIndex":6,"raftTerm":2,"raftAppliedIndex":6,"dbSizeInUse":16384}}]"#;
    const STATUS_STDERR_MEMBER_DOWN: &str = "{\"level\":\"warn\",\"ts\":\"2026-11-22T18:11:47.318Z\",\"caller\":\"clientv3/retry_interceptor.go:62\",\"msg\":\"retrying of unary invoker failed\",\"target\":\"passthrough:///http://127.201.7.2:23790\",\"attempt\":0,\"error\":\"rpc error: code = DeadlineExceeded desc = latest balancer error: connection error: desc = \\\"transport: Error while dialing dial tcp 127.201.7.2:23790: connect: connection refused\\\"\"}\nFailed to get the status of endpoint http://127.201.7.2:23790 (context deadline exceeded)\n";

    #[test]
    fn member_ids_beyond_i64_parse_and_print_as_etcdctl_hex() {
        let members = parse_member_list(MEMBERS_WITH_UNSTARTED_LEARNER).unwrap();
        assert_eq!(members.len(), 2);
        let learner = &members[0];
        assert_eq!(learner.id, 68955024856023489);
        // `member add` printed this id as `f4fa3ad20581c1`.
        assert_eq!(learner.id_hex, "f4fa3ad20581c1");
        assert_eq!(learner.name, "");
        assert!(learner.client_urls.is_empty());
        assert!(learner.is_learner);
        assert!(learner.is_unstarted());
        let voter = &members[1];
        assert_eq!(voter.id, 13746348044382835492);
        assert!(voter.id > i64::MAX as u64);
        assert_eq!(voter.id_hex, "bec4d6b710531324");
        assert_eq!(voter.name, "a");
        assert_eq!(voter.peer_urls, ["http://127.201.7.1:23800"]);
        assert_eq!(voter.client_urls, ["http://127.201.7.1:23790"]);
        assert!(!voter.is_learner);
        assert!(!voter.is_unstarted());

        let started = parse_member_list(MEMBERS_WITH_STARTED_LEARNER).unwrap();
        assert_eq!(started[0].name, "b");
        assert!(started[0].is_learner);
        assert!(!started[0].is_unstarted());
    }

    #[test]
    fn health_lists_every_endpoint_with_its_error() {
        let health = parse_endpoint_health(HEALTH_WITH_LEARNER).unwrap();
        assert_eq!(
            health,
            vec![
                EndpointHealth {
                    endpoint: "http://127.201.7.1:23790".into(),
                    healthy: true,
                    took: "1.275253ms".into(),
                    error: None,
                },
                EndpointHealth {
                    endpoint: "http://127.201.7.2:23790".into(),
                    healthy: false,
                    took: "2.633803497s".into(),
                    error: Some("etcdserver: rpc not supported for learner".into()),
                },
            ]
        );
        let down = parse_endpoint_health(HEALTH_WITH_MEMBER_DOWN).unwrap();
        assert_eq!(down[1].error.as_deref(), Some("context deadline exceeded"));
        assert!(parse_endpoint_health("Error: unhealthy cluster").is_err());
    }

    #[test]
    fn status_reads_leader_learner_and_unreachable_endpoints() {
        let statuses = parse_endpoint_status(STATUS_WITH_LEARNER, "").unwrap();
        assert_eq!(statuses.statuses.len(), 2);
        let learner = &statuses.statuses[0];
        assert_eq!(learner.member_id, 68955024856023489);
        assert_eq!(learner.leader_id, 13746348044382835492);
        assert!(learner.is_learner);
        assert!(!learner.is_leader());
        assert_eq!(learner.db_size, 20480);
        assert_eq!(learner.raft_term, 2);
        assert_eq!(learner.version, "3.4.23");
        assert!(statuses.statuses[1].is_leader());
        assert!(!statuses.statuses[1].is_learner);
        assert_eq!(statuses.leader(), Some(13746348044382835492));
        assert!(statuses.unreachable.is_empty());

        let down =
            parse_endpoint_status(STATUS_WITH_MEMBER_DOWN, STATUS_STDERR_MEMBER_DOWN).unwrap();
        assert_eq!(down.statuses.len(), 1);
        assert_eq!(
            down.unreachable,
            vec![UnreachableEndpoint {
                endpoint: "http://127.201.7.2:23790".into(),
                error: "context deadline exceeded".into(),
            }]
        );
        let nothing = parse_endpoint_status("", STATUS_STDERR_MEMBER_DOWN).unwrap();
        assert!(nothing.statuses.is_empty());
        assert_eq!(nothing.unreachable.len(), 1);
    }

    #[test]
    fn commands_use_the_node_certificates_under_the_root() {
        let host = Host::new("/tmp/kh-root", vec![]);
        let client = EtcdClient::stacked(vec![
            "https://10.0.0.11:2379".into(),
            "https://10.0.0.12:2379".into(),
        ]);
        let cmd = client
            .command(&host, &["member", "list", "-w", "json"])
            .unwrap();
        assert_eq!(
            cmd.argv(),
            [
                "etcdctl",
                "--endpoints=https://10.0.0.11:2379,https://10.0.0.12:2379",
                "--dial-timeout=3s",
                "--command-timeout=5s",
                "--cacert=/tmp/kh-root/etc/kubernetes/pki/etcd/ca.crt",
                "--cert=/tmp/kh-root/etc/kubernetes/pki/etcd/healthcheck-client.crt",
                "--key=/tmp/kh-root/etc/kubernetes/pki/etcd/healthcheck-client.key",
                "member",
                "list",
                "-w",
                "json"
            ]
        );
        let external = EtcdClient::external(vec!["https://10.0.0.31:2379".into()]);
        let cmd = external.command(&host, &["endpoint", "health"]).unwrap();
        assert!(cmd.argv().contains(
            &"--cert=/tmp/kh-root/etc/kubernetes/pki/apiserver-etcd-client.crt".to_string()
        ));
        let plain = EtcdClient::plaintext(vec!["http://127.0.0.1:2379".into()]);
        let cmd = plain.command(&host, &["endpoint", "health"]).unwrap();
        assert!(!cmd.argv().iter().any(|a| a.starts_with("--cacert")));
    }
}
