//! The `haproxy` unit behind the `systemctl` double: a real HAProxy process
//! (Debian's package) per testbed host, started, reloaded and stopped the way
//! Debian's `haproxy.service` does it, with every path mapped under the host
//! root.
//!
//! - The config files are the unit's `CONFIG` (`/etc/haproxy/haproxy.cfg`),
//!   or the `CONFIG` a drop-in under
//!   `/etc/systemd/system/haproxy.service.d/*.conf` sets with
//!   `Environment="CONFIG=..."` (kh's include drop-in adds `-f
//!   /etc/haproxy/conf.d`).
//! - `start` runs `haproxy -f ...` in the foreground of a detached child that
//!   stays in the caller's process group (the agent's), so a host losing
//!   power takes HAProxy with it; its pid is `<node>/haproxy.pid`, its
//!   output `<node>/haproxy.log`. Started means every `bind` of the config
//!   accepts connections.
//! - `reload` first checks the config (`haproxy -c`, the unit's first
//!   `ExecReload`), then starts a new process with `-sf <old pid>`: the new
//!   one binds beside the old and tells it to finish its connections and
//!   exit, HAProxy's seamless reload. A config that fails the check or the
//!   start leaves the old process serving.
//! - `stop` sends SIGTERM (SIGKILL after 5 s).
//!
//! Deviations: no master process (`-W`), no `-S` master socket, no
//! `daemon-reload` needed for a changed drop-in (it is read at every start).

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::kube::NodeEnv;

pub const PID_FILE: &str = "haproxy.pid";
pub const LOG_FILE: &str = "haproxy.log";
const DEFAULT_CONFIG: &str = "/etc/haproxy/haproxy.cfg";
const DROP_IN_DIR: &str = "/etc/systemd/system/haproxy.service.d";
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long a reload waits for the old process to hand over; an old process
/// with open client connections drains them for longer, as HAProxy does.
const HANDOVER_LIMIT: Duration = Duration::from_secs(3);

const JOB_FAILED: &str = "Job for haproxy.service failed because the control process exited with error code.\nSee \"systemctl status haproxy.service\" and \"journalctl -xeu haproxy.service\" for details.";

fn units_file(env: &NodeEnv) -> PathBuf {
    env.node_dir.join("units").join("haproxy")
}

fn set_state(env: &NodeEnv, state: &str) {
    let f = units_file(env);
    if let Some(dir) = f.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(f, format!("{state}\n"));
}

/// The pid of this host's running HAProxy, if any.
pub fn running_pid(env: &NodeEnv) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(env.node_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    crate::proc::alive_with(pid, &env.root.to_string_lossy()).then_some(pid)
}

/// The unit's `CONFIG`: the default, or what a drop-in's
/// `Environment="CONFIG=..."` says (the last one wins, as in systemd).
fn config_words(env: &NodeEnv) -> Vec<String> {
    let mut config = DEFAULT_CONFIG.to_string();
    let mut drop_ins: Vec<PathBuf> = std::fs::read_dir(env.path(DROP_IN_DIR))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect()
        })
        .unwrap_or_default();
    drop_ins.sort();
    for file in drop_ins {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("Environment=") else {
                continue;
            };
            for assignment in env_assignments(rest) {
                if let Some(v) = assignment.strip_prefix("CONFIG=") {
                    config = v.to_string();
                }
            }
        }
    }
    config.split_whitespace().map(str::to_string).collect()
}

/// `"A=1 2" B=3` → `["A=1 2", "B=3"]`, systemd's quoting for Environment=.
fn env_assignments(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `-f FILE...` as the unit's `-f $CONFIG`, host paths under the root.
fn config_args(env: &NodeEnv) -> Vec<String> {
    let mut args = vec!["-f".to_string()];
    for w in config_words(env) {
        if w.starts_with('/') {
            args.push(env.path(&w).to_string_lossy().into_owned());
        } else {
            args.push(w);
        }
    }
    args
}

/// Every file the config arguments load: files, and `*.cfg` of directories
/// in lexical order.
fn config_files(args: &[String]) -> Vec<PathBuf> {
    let mut out = vec![];
    for a in args.iter().filter(|a| a.starts_with('/')) {
        let p = PathBuf::from(a);
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|f| f.extension().is_some_and(|x| x == "cfg"))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            out.extend(files);
        } else {
            out.push(p);
        }
    }
    out
}

/// The addresses the config's `bind` lines listen on.
fn binds(files: &[PathBuf]) -> Vec<SocketAddr> {
    let mut out = vec![];
    for f in files {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("bind") {
                continue;
            }
            let Some(addr) = words.next() else { continue };
            let addr = match addr.strip_prefix("*:") {
                Some(port) => format!("127.0.0.1:{port}"),
                None => addr.to_string(),
            };
            if let Some(a) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                out.push(a);
            }
        }
    }
    out
}

fn haproxy_bin() -> PathBuf {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"))
}

/// Starts HAProxy with `args`; stdout and stderr go to the node's log, and
/// the process keeps the caller's process group.
fn spawn(env: &NodeEnv, args: &[String]) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.node_dir.join(LOG_FILE))
        .map_err(|e| format!("cannot open {LOG_FILE}: {e}"))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    Command::new(haproxy_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start haproxy: {e}"))
}

fn log_tail(env: &NodeEnv) -> String {
    let text = std::fs::read_to_string(env.node_dir.join(LOG_FILE)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn failed(env: &NodeEnv, why: &str) -> u8 {
    eprintln!("{JOB_FAILED}");
    // What journalctl would show; the real systemctl does not print it.
    eprintln!("haproxy: {why}\n{}", log_tail(env));
    1
}

/// Waits until the new process runs and `ready` holds; an exit first is a
/// failed start.
fn wait_started(
    child: &mut Child,
    limit: Duration,
    ready: impl Fn() -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("haproxy exited at start ({status})"));
        }
        if ready() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(format!("haproxy did not come up within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn accepting(addrs: &[SocketAddr]) -> bool {
    addrs
        .iter()
        .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
}

fn start(env: &NodeEnv) -> u8 {
    if running_pid(env).is_some() {
        return 0;
    }
    let args = config_args(env);
    let addrs = binds(&config_files(&args));
    let mut child = match spawn(env, &args) {
        Ok(c) => c,
        Err(e) => return failed(env, &e),
    };
    if let Err(e) = wait_started(&mut child, START_LIMIT, || accepting(&addrs)) {
        let _ = child.kill();
        let _ = child.wait();
        set_state(env, "failed");
        return failed(env, &e);
    }
    let _ = std::fs::write(env.node_dir.join(PID_FILE), format!("{}\n", child.id()));
    set_state(env, "active");
    0
}

fn stop(env: &NodeEnv) -> u8 {
    if let Some(pid) = running_pid(env) {
        crate::proc::kill_pid(pid, "TERM");
        let start = Instant::now();
        while crate::proc::alive_with(pid, &env.root.to_string_lossy()) {
            if start.elapsed() > Duration::from_secs(5) {
                crate::proc::kill_pid(pid, "KILL");
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    let _ = std::fs::remove_file(env.node_dir.join(PID_FILE));
    set_state(env, "inactive");
    0
}

fn reload(env: &NodeEnv) -> u8 {
    let Some(old) = running_pid(env) else {
        eprintln!("haproxy.service is not active, cannot reload.");
        return 1;
    };
    let args = config_args(env);
    let mut check = args.clone();
    check.extend(["-c".to_string(), "-q".to_string()]);
    match Command::new(haproxy_bin()).args(&check).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return failed(
                env,
                &format!(
                    "the configuration check failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            )
        }
        Err(e) => return failed(env, &format!("cannot run haproxy -c: {e}")),
    }
    let mut new_args = args;
    new_args.extend(["-sf".to_string(), old.to_string()]);
    let mut child = match spawn(env, &new_args) {
        Ok(c) => c,
        Err(e) => return failed(env, &e),
    };
    let root = env.root.to_string_lossy().into_owned();
    let handed_over = wait_started(&mut child, HANDOVER_LIMIT, || {
        !crate::proc::alive_with(old, &root)
    });
    match handed_over {
        // The new process runs; the old one may still be draining.
        Ok(()) => {}
        Err(_) if matches!(child.try_wait(), Ok(None)) => {}
        Err(e) => return failed(env, &e),
    }
    let _ = std::fs::write(env.node_dir.join(PID_FILE), format!("{}\n", child.id()));
    set_state(env, "active");
    0
}

/// `systemctl VERB haproxy`; returns the exit status.
pub fn systemctl(env: &NodeEnv, verb: &str) -> u8 {
    match verb {
        "start" => start(env),
        "stop" => stop(env),
        "restart" => {
            stop(env);
            start(env)
        }
        "reload" => reload(env),
        "reload-or-restart" | "try-reload-or-restart" => {
            if running_pid(env).is_some() {
                reload(env)
            } else if verb == "reload-or-restart" {
                start(env)
            } else {
                0
            }
        }
        "enable" | "disable" => 0,
        "is-active" => {
            if running_pid(env).is_some() {
                println!("active");
                0
            } else {
                let state = std::fs::read_to_string(units_file(env))
                    .ok()
                    .filter(|s| s.trim() == "failed")
                    .map(|_| "failed")
                    .unwrap_or("inactive");
                println!("{state}");
                3
            }
        }
        other => {
            eprintln!("Unknown command verb {other}.");
            1
        }
    }
}

/// Stops a host's HAProxy whoever started it: the testbed's guard for
/// worlds that end while it runs.
pub fn kill(node_dir: &Path, root: &Path) {
    let env = NodeEnv::new(root, node_dir, None);
    if let Some(pid) = running_pid(&env) {
        crate::proc::kill_pid(pid, "KILL");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_in_environment_is_split_like_systemd() {
        assert_eq!(
            env_assignments(r#""CONFIG=/etc/haproxy/haproxy.cfg -f /etc/haproxy/conf.d" X=1"#),
            [
                "CONFIG=/etc/haproxy/haproxy.cfg -f /etc/haproxy/conf.d",
                "X=1"
            ]
        );
    }

    #[test]
    fn binds_are_read_from_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("h.cfg");
        std::fs::write(
            &f,
            "frontend a\n    bind 127.0.0.9:6443\nfrontend b\n    bind *:8080\n    # bind 1.2.3.4:1\n",
        )
        .unwrap();
        assert_eq!(
            binds(&[f]),
            [
                "127.0.0.9:6443".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:8080".parse().unwrap()
            ]
        );
    }
}
