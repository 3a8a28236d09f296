//! [`EtcdClient`] against the real etcd 3.4 and etcdctl of this machine:
//! members with 64-bit ids, an unstarted and a started learner, health and
//! status with a member down, promotion and leader transfer.
//!
//! Each etcd listens on its own 127.x.y.z address with free ports and a
//! temp data dir, and is killed when its guard drops.

mod common;

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestHost;
use kh_host::kube::{EtcdClient, EtcdMember, Scope};
use kh_host::{Cmd, FailureKind, Host};

/// A running etcd member, killed on drop.
struct Etcd {
    child: Child,
    client_url: String,
    peer_url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address no other test (nor the testbed's 127.0.0.x) uses:
/// derived from the process id, with `n` telling members apart.
fn loopback(n: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        150 + (pid % 100) as u8,
        ((pid / 100) % 250) as u8 + 1,
        n,
    )
}

fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .expect("bind a free port on the test loopback address")
        .local_addr()
        .expect("local addr")
        .port()
}

struct Member {
    name: &'static str,
    ip: Ipv4Addr,
    client_port: u16,
    peer_port: u16,
}

impl Member {
    fn new(name: &'static str, n: u8) -> Self {
        let ip = loopback(n);
        Self {
            name,
            ip,
            client_port: free_port(ip),
            peer_port: free_port(ip),
        }
    }

    fn client_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.peer_port)
    }

    /// Starts the member; `initial_cluster` is `name=peer,…`.
    fn start(&self, dir: &Path, initial_cluster: &str, state: &str) -> Etcd {
        let data = dir.join(format!("{}.etcd", self.name));
        let log = File::create(dir.join(format!("{}.log", self.name))).expect("create etcd log");
        let child = Command::new("/usr/bin/etcd")
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", self.client_url()))
            .arg(format!("--advertise-client-urls={}", self.client_url()))
            .arg(format!("--listen-peer-urls={}", self.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url()))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start the real /usr/bin/etcd (Debian package etcd-server)");
        Etcd {
            child,
            client_url: self.client_url(),
            peer_url: self.peer_url(),
        }
    }
}

/// Polls `check` until it returns `Some`, for at most `limit`.
fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn etcd_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// `etcdctl member add NAME --learner`, run the way an operator (or the
/// kubeadm double) would; returns the hex id etcdctl itself printed.
fn add_learner(host: &Host, endpoint: &str, member: &Member) -> String {
    let record = host
        .run_checked(
            &Cmd::new("etcdctl")
                .arg(format!("--endpoints={endpoint}"))
                .args(["member", "add", member.name, "--learner"])
                .arg(format!("--peer-urls={}", member.peer_url())),
        )
        .expect("etcdctl member add --learner");
    // `Member   f4fa3ad20581c1 added to cluster 86c5e8375853b9e8`
    record
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("member add names the new member")
        .to_string()
}

fn find<'a>(members: &'a [EtcdMember], peer_url: &str) -> &'a EtcdMember {
    members
        .iter()
        .find(|m| m.peer_urls == [peer_url.to_string()])
        .unwrap_or_else(|| panic!("no member with peer URL {peer_url}: {members:?}"))
}

#[test]
fn membership_health_status_promotion_and_leadership_with_the_real_etcd() {
    let t = TestHost::new();
    let dir: PathBuf = t.tmp().to_path_buf();
    // Doubles first, then the real etcdctl; nothing else on the path.
    let host = t.isolated_host(&["etcdctl"]);

    let a = Member::new("a", 1);
    let b = Member::new("b", 2);
    let etcd_a = a.start(&dir, &format!("a={}", a.peer_url()), "new");
    let client = EtcdClient::plaintext(vec![etcd_a.client_url.clone()])
        .command_timeout(Duration::from_secs(2));

    let members = eventually("etcd a to answer", Duration::from_secs(30), || {
        client.members(&host).ok()
    });
    assert_eq!(members.len(), 1, "{members:?}");
    let first = &members[0];
    assert_eq!(first.name, "a");
    assert_eq!(first.peer_urls, [etcd_a.peer_url.as_str()]);
    assert_eq!(first.client_urls, [etcd_a.client_url.as_str()]);
    assert!(!first.is_learner);
    assert_eq!(first.id_hex, format!("{:x}", first.id));
    let a_id = first.id;

    // A learner that was added but never started: no name, no client URLs.
    let printed_hex = add_learner(&host, &etcd_a.client_url, &b);
    let members = client.members(&host).unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    let pending = find(&members, &b.peer_url());
    assert!(pending.is_learner);
    assert!(pending.is_unstarted());
    assert_eq!(pending.name, "");
    assert_eq!(pending.id_hex, printed_hex, "our hex is etcdctl's hex");

    // etcd admits one learner at a time: a second one is refused in etcd's
    // own words, which kh-host recognises as the learner limit.
    let c = Member::new("c", 3);
    let refused = host
        .run(
            &Cmd::new("etcdctl")
                .arg(format!("--endpoints={}", etcd_a.client_url))
                .args(["member", "add", c.name, "--learner"])
                .arg(format!("--peer-urls={}", c.peer_url())),
        )
        .expect("etcdctl runs");
    assert!(!refused.success(), "{refused:?}");
    assert!(
        refused
            .stderr_tail
            .contains("etcdserver: too many learner members in cluster"),
        "{}",
        refused.stderr_tail
    );
    assert_eq!(
        FailureKind::of_command(&refused.argv, &refused.stderr_tail, refused.timed_out),
        FailureKind::LearnerLimit
    );

    // Removing it takes the hex id; a second removal finds nothing.
    assert!(client.remove_member(&host, pending.id).unwrap());
    assert!(!client.remove_member(&host, pending.id).unwrap());
    assert_eq!(client.members(&host).unwrap().len(), 1);

    // Add it again and start it: a running learner. etcd derives a new
    // member's id from its peer URLs and the current second, so re-adding
    // the same URL within the second of its removal yields the removed id,
    // which etcd refuses as "member not found"; the next second works.
    eventually("b to be added again", Duration::from_secs(5), || {
        host.run_checked(
            &Cmd::new("etcdctl")
                .arg(format!("--endpoints={}", etcd_a.client_url))
                .args(["member", "add", b.name, "--learner"])
                .arg(format!("--peer-urls={}", b.peer_url())),
        )
        .ok()
    });
    let initial = format!("a={},b={}", a.peer_url(), b.peer_url());
    let mut etcd_b = b.start(&dir, &initial, "existing");
    let learner = eventually("learner b to start", Duration::from_secs(30), || {
        let members = client.members(&host).ok()?;
        let b_member = find(&members, &b.peer_url()).clone();
        (!b_member.name.is_empty()).then_some(b_member)
    });
    assert_eq!(learner.name, "b");
    assert!(learner.is_learner);
    assert_eq!(learner.client_urls, [etcd_b.client_url.as_str()]);

    let statuses = eventually(
        "both members to report status",
        Duration::from_secs(30),
        || {
            let s = client.endpoint_status(&host, Scope::Cluster).ok()?;
            (s.statuses.len() == 2).then_some(s)
        },
    );
    assert_eq!(statuses.leader(), Some(a_id));
    let b_status = statuses
        .statuses
        .iter()
        .find(|s| s.member_id == learner.id)
        .expect("status of b");
    assert!(b_status.is_learner);
    assert!(!b_status.is_leader());
    assert!(b_status.raft_term >= 2);
    assert!(b_status.db_size > 0);
    assert_eq!(b_status.version, "3.4.23");

    // etcdctl exits 1 here (a learner refuses the health read) yet prints
    // JSON for both endpoints.
    let health = client.endpoint_health(&host, Scope::Cluster).unwrap();
    assert_eq!(health.len(), 2, "{health:?}");
    let a_health = health
        .iter()
        .find(|h| h.endpoint == etcd_a.client_url)
        .unwrap();
    assert!(a_health.healthy && a_health.error.is_none(), "{health:?}");
    let b_health = health
        .iter()
        .find(|h| h.endpoint == etcd_b.client_url)
        .unwrap();
    // The learner answers "rpc not supported for learner", which etcdctl
    // retries until the command timeout; which of the two texts it reports
    // depends on that timing.
    assert!(!b_health.healthy);
    let why = b_health.error.as_deref().unwrap_or_default();
    assert!(
        why.contains("learner") || why.contains("deadline exceeded"),
        "{b_health:?}"
    );

    // With the learner down, a still has quorum; health and status report b
    // as unreachable instead of failing.
    drop(etcd_b);
    let started = Instant::now();
    let health = client.endpoint_health(&host, Scope::Cluster).unwrap();
    let b_health = health
        .iter()
        .find(|h| h.endpoint == b.client_url())
        .unwrap();
    assert!(!b_health.healthy, "{health:?}");
    assert!(b_health.error.is_some());
    assert!(health
        .iter()
        .any(|h| h.endpoint == a.client_url() && h.healthy));
    assert!(started.elapsed() < Duration::from_secs(30));
    let statuses = client.endpoint_status(&host, Scope::Cluster).unwrap();
    assert_eq!(statuses.statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses.unreachable.len(), 1, "{statuses:?}");
    assert_eq!(statuses.unreachable[0].endpoint, b.client_url());

    // Back up, it catches up and can be promoted; promotion is retried
    // while etcd says the learner is not in sync yet.
    etcd_b = b.start(&dir, &initial, "existing");
    // Promotion is retried while etcd settles: right after the restart the
    // learner is behind ("not in sync") and the cluster may be electing.
    let promote = |what: &str| {
        eventually(what, Duration::from_secs(60), || {
            match client.promote_member(&host, learner.id) {
                Ok(promoted) => Some(promoted),
                Err(err) if err.is_transient() => None,
                Err(err) => panic!("promote failed: {err}\n{}", etcd_log(&dir, "b")),
            }
        })
    };
    assert!(promote("promotion of b"), "b was a learner");
    assert!(!promote("a second promotion of b"), "already a voter");
    let members = client.members(&host).unwrap();
    assert!(members.iter().all(|m| !m.is_learner), "{members:?}");

    // Leadership moves to b; etcdctl finds the current leader among the
    // endpoints, so both are given.
    let both = EtcdClient::plaintext(vec![etcd_a.client_url.clone(), etcd_b.client_url.clone()])
        .command_timeout(Duration::from_secs(2));
    eventually("both members healthy", Duration::from_secs(30), || {
        let health = both.endpoint_health(&host, Scope::Endpoints).ok()?;
        health.iter().all(|h| h.healthy).then_some(())
    });
    eventually(
        "leadership transfer to b",
        Duration::from_secs(30),
        || match both.move_leader(&host, learner.id) {
            Ok(()) => Some(()),
            Err(err) if err.is_transient() => None,
            Err(err) => panic!("move-leader failed: {err}"),
        },
    );
    let leader = eventually("b to lead", Duration::from_secs(30), || {
        let leader = both
            .endpoint_status(&host, Scope::Endpoints)
            .ok()?
            .leader()?;
        (leader == learner.id).then_some(leader)
    });
    assert_eq!(leader, learner.id);
    drop(etcd_b);
}

#[test]
fn a_dead_endpoint_is_an_error_with_argv_and_stderr() {
    let t = TestHost::new();
    let host = t.isolated_host(&["etcdctl"]);
    let ip = loopback(200);
    let port = free_port(ip);
    let client = EtcdClient::plaintext(vec![format!("http://{ip}:{port}")])
        .command_timeout(Duration::from_secs(1));
    let err = client.members(&host).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("etcdctl --endpoints=http://"), "{text}");
    assert!(text.contains("member list -w json"), "{text}");
    assert!(text.contains("exit status 1"), "{text}");
    assert!(text.contains("crictl ps --name etcd"), "{text}");
    assert!(err.stderr_tail().is_some_and(|s| !s.is_empty()));
    // etcdctl gives up on a dead endpoint after its own deadline.
    assert_eq!(err.failure_kind(), FailureKind::Timeout, "{text}");
    let health = client.endpoint_health(&host, Scope::Endpoints);
    // etcdctl prints JSON for the dead endpoint too: it is unhealthy, not an
    // error.
    let health = health.unwrap();
    assert_eq!(health.len(), 1);
    assert!(!health[0].healthy);
    assert!(client.endpoint_status(&host, Scope::Endpoints).is_err());
}
