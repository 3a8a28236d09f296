//! kh-testbed: several kh hosts on one machine.
//!
//! Each host gets its own loopback address and its own host root; each
//! process it starts is owned by a guard that kills it on drop, so a failing
//! test leaves nothing behind. `kh-sandbox` uses the same pieces with
//! detached processes and pid files instead of guards.
//!
//! Nothing here is linked into the product: the agent and coordinator are
//! started as the real binaries, with real TLS, on real sockets.
//!
//! The Kubernetes side (`kube`, `doubles`, `kubelet`, `apiserver`) stands in
//! for kubeadm, kubelet, kubectl and kube-apiserver, which cannot run here;
//! the etcd it drives is the real one. Its contract is CONTRACT.md.

pub mod apiserver;
pub mod clock;
pub mod doubles;
pub mod external_etcd;
pub mod hostroot;
pub mod kube;
pub mod kubelet;
pub mod net;
pub mod proc;
pub mod spec;
pub mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Host tools the testbed replaces with `kh-testbed-double` on every host.
pub const DOUBLES: &[&str] = &["systemctl", "modprobe", "swapoff"];

/// The Kubernetes tools `kh-testbed-double` also stands in for; a host gets
/// them when it is declared as a Kubernetes host (see
/// `world::World::declare_kube_host`), as if the kubeadm, kubelet and kubectl
/// packages were installed.
pub const KUBE_DOUBLES: &[&str] = &["kubeadm", "kubelet", "kubectl"];

/// Real tools a Kubernetes host gets through `kh-testbed-double` as a
/// pass-through: it appends the argv to `<node>/etcdctl-calls.log` and execs
/// the real tool with it, so tests can see every command line kh gave the
/// real etcdctl (which must never hold a secret) without any change to its
/// behaviour.
pub const RECORDED_TOOLS: &[&str] = &["etcdctl"];

/// The directory holding the workspace's built binaries. Tests run from
/// `target/<profile>/deps`, the sandbox from `target/<profile>`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A built kh binary. Panics with the fix when it is missing, rather than
/// letting a test pass vacuously.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built; run the tests with `cargo test --workspace` (see README) so every binary is built first",
        p.display()
    );
    p
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with the last
/// observation. Never a bare sleep.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}");
}
