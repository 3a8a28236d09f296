//! The kubelet double: runs the static pods in `<root>/etc/kubernetes/manifests`
//! the way kubelet does, with processes instead of containers.
//!
//! - `etcd` runs the real `/usr/bin/etcd`; `kube-apiserver` runs the apiserver
//!   double. Their command lines come from the manifest, with every path
//!   under a hostPath mount rewritten to the host path under the node root.
//!   Other static pods (controller-manager, scheduler) are accepted and not
//!   run.
//! - A manifest that appears is started, one that changes is restarted, one
//!   that disappears is stopped (SIGTERM, then SIGKILL after 5 s).
//! - A pod process that exits is restarted with exponential backoff (0.5 s
//!   doubling to 10 s; kubelet's is 10 s doubling to 5 min).
//! - Pod output goes to `<node dir>/pods/<pod>.log`; pod pids to
//!   `<node dir>/pods/<pod>.pid`, so a restarted kubelet double kills what a
//!   killed one left behind. The double's own pid is in `<node dir>/kubelet.pid`.
//!
//! Pod processes stay in the kubelet double's process group, so killing the
//! group takes the whole "host" down, like a power loss.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::kube::manifest::{Pod, MANIFESTS_DIR};
use crate::kube::{NodeEnv, ETCD_BIN, KUBELET_PID_FILE};

const POLL: Duration = Duration::from_millis(100);
const STOP_GRACE: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

struct PodState {
    content: String,
    pod: Option<Pod>,
    program: Option<PathBuf>,
    child: Option<Child>,
    restarts: u32,
    next_start: Instant,
}

pub struct Kubelet {
    env: NodeEnv,
    apiserver_bin: PathBuf,
    pods: BTreeMap<String, PodState>,
}

fn log(msg: impl AsRef<str>) {
    println!(
        "{} kubelet: {}",
        crate::clock::rfc3339(std::time::SystemTime::now()),
        msg.as_ref()
    );
}

impl Kubelet {
    pub fn new(env: NodeEnv, apiserver_bin: PathBuf) -> Kubelet {
        Kubelet {
            env,
            apiserver_bin,
            pods: BTreeMap::new(),
        }
    }

    fn pods_dir(&self) -> PathBuf {
        self.env.node_dir.join("pods")
    }

    /// Kills pod processes a previous (killed) kubelet double left behind.
    fn reap_leftovers(&self) {
        let Ok(rd) = std::fs::read_dir(self.pods_dir()) else {
            return;
        };
        let needle = self.env.node_dir.to_string_lossy().into_owned();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pid") {
                if let Some(pid) = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                {
                    if crate::proc::alive_with(pid, &needle) {
                        log(format!(
                            "killing leftover pod process {pid} ({})",
                            p.display()
                        ));
                        crate::proc::kill_pid(pid, "KILL");
                    }
                }
                let _ = std::fs::remove_file(&p);
            }
        }
    }

    fn program_for(&self, command: &str) -> Option<PathBuf> {
        match command {
            "etcd" => Some(PathBuf::from(ETCD_BIN)),
            "kube-apiserver" => Some(self.apiserver_bin.clone()),
            _ => None,
        }
    }

    fn start(&mut self, file: &str) {
        let root = self.env.root.clone();
        let pods_dir = self.pods_dir();
        let node_dir = self.env.node_dir.clone();
        let Some(st) = self.pods.get_mut(file) else {
            return;
        };
        let (Some(pod), Some(program)) = (&st.pod, &st.program) else {
            return;
        };
        let argv = pod.host_command(&root);
        let name = pod.metadata.name.clone();
        let _ = std::fs::create_dir_all(&pods_dir);
        let logf = pods_dir.join(format!("{name}.log"));
        let out = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&logf)
        {
            Ok(f) => f,
            Err(e) => {
                log(format!("cannot open {}: {e}", logf.display()));
                return;
            }
        };
        let err = match out.try_clone() {
            Ok(f) => f,
            Err(_) => return,
        };
        // Directories of hostPath volumes exist, as kubelet creates
        // DirectoryOrCreate volumes.
        for v in &pod.spec.volumes {
            if let Some(hp) = &v.host_path {
                let p = root.join(hp.path.trim_start_matches('/'));
                if !p.exists() && !hp.path.ends_with(".conf") {
                    let _ = std::fs::create_dir_all(&p);
                }
            }
        }
        let mut cmd = Command::new(program);
        cmd.args(&argv[1..])
            .current_dir(&node_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        match cmd.spawn() {
            Ok(child) => {
                log(format!(
                    "started static pod {name} (pid {}, restarts {}): {}",
                    child.id(),
                    st.restarts,
                    argv.join(" ")
                ));
                let _ = std::fs::write(
                    pods_dir.join(format!("{name}.pid")),
                    format!("{}\n", child.id()),
                );
                st.child = Some(child);
            }
            Err(e) => {
                log(format!("cannot start static pod {name}: {e}"));
                st.restarts += 1;
                st.next_start = Instant::now() + backoff(st.restarts);
            }
        }
    }

    fn stop(pods_dir: &Path, st: &mut PodState) {
        let Some(mut child) = st.child.take() else {
            return;
        };
        let name = st
            .pod
            .as_ref()
            .map(|p| p.metadata.name.clone())
            .unwrap_or_default();
        crate::proc::kill_pid(child.id(), "TERM");
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let _ = child.wait();
        let _ = std::fs::remove_file(pods_dir.join(format!("{name}.pid")));
        log(format!("stopped static pod {name}"));
    }

    /// One reconciliation pass.
    pub fn sync(&mut self) {
        let dir = self.env.path(MANIFESTS_DIR);
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.')
                    || !(name.ends_with(".yaml")
                        || name.ends_with(".yml")
                        || name.ends_with(".json"))
                {
                    continue;
                }
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    seen.insert(name, text);
                }
            }
        }
        let pods_dir = self.pods_dir();
        // Removed or changed manifests stop their pods.
        let files: Vec<String> = self.pods.keys().cloned().collect();
        for f in files {
            let changed = seen
                .get(&f)
                .map(|c| c != &self.pods[&f].content)
                .unwrap_or(true);
            if changed {
                if let Some(mut st) = self.pods.remove(&f) {
                    log(format!(
                        "manifest {f} {}",
                        if seen.contains_key(&f) {
                            "changed"
                        } else {
                            "removed"
                        }
                    ));
                    Self::stop(&pods_dir, &mut st);
                }
            }
        }
        for (f, content) in seen {
            if !self.pods.contains_key(&f) {
                let pod = match Pod::parse(&content) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        log(format!("cannot parse static pod manifest {f}: {e}"));
                        None
                    }
                };
                let program = pod
                    .as_ref()
                    .and_then(|p| p.spec.containers.first())
                    .and_then(|c| c.command.first())
                    .and_then(|c| self.program_for(c));
                if pod.is_some() && program.is_none() {
                    log(format!(
                        "static pod manifest {f} accepted; the testbed runs no process for it"
                    ));
                }
                self.pods.insert(
                    f.clone(),
                    PodState {
                        content,
                        pod,
                        program,
                        child: None,
                        restarts: 0,
                        next_start: Instant::now(),
                    },
                );
            }
        }
        let now = Instant::now();
        let files: Vec<String> = self.pods.keys().cloned().collect();
        for f in files {
            let mut start = false;
            if let Some(st) = self.pods.get_mut(&f) {
                if let Some(child) = st.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        st.child = None;
                        st.restarts += 1;
                        let wait = backoff(st.restarts);
                        st.next_start = now + wait;
                        log(format!(
                            "static pod {} exited ({status}); back-off {wait:?} restarting failed container",
                            st.pod.as_ref().map(|p| p.metadata.name.as_str()).unwrap_or("?")
                        ));
                    }
                } else if st.program.is_some() && now >= st.next_start {
                    start = true;
                }
            }
            if start {
                self.start(&f);
            }
        }
    }

    pub fn run(mut self) -> Result<()> {
        std::fs::create_dir_all(self.pods_dir())?;
        std::fs::write(
            self.env.node_dir.join(KUBELET_PID_FILE),
            format!("{}\n", std::process::id()),
        )
        .context("writing the kubelet pid file")?;
        self.reap_leftovers();
        log(format!(
            "watching {}",
            self.env.path(MANIFESTS_DIR).display()
        ));
        loop {
            self.sync();
            std::thread::sleep(POLL);
        }
    }
}

fn backoff(restarts: u32) -> Duration {
    let d = BACKOFF_START * 2u32.saturating_pow(restarts.saturating_sub(1).min(10));
    d.min(BACKOFF_MAX)
}

/// `kh-testbed-kubelet --root R --node-dir N`.
pub fn main(args: Vec<String>) -> Result<()> {
    let mut root = None;
    let mut node_dir = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--root" => root = it.next().map(PathBuf::from),
            "--node-dir" => node_dir = it.next().map(PathBuf::from),
            other => anyhow::bail!("unknown flag: {other}"),
        }
    }
    let root = root.context("--root is required")?;
    let node_dir = node_dir.context("--node-dir is required")?;
    let env = NodeEnv::new(
        &root,
        &node_dir,
        crate::clock::world_dir_from_env().as_deref(),
    );
    let apiserver = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("kh-testbed-apiserver");
    Kubelet::new(env, apiserver).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }
}
