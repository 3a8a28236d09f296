//! Child processes that cannot outlive their owner.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running process. Dropping it kills it (SIGKILL) and reaps it, so even a
/// panicking test leaves no process behind.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    /// Kill the whole process group, not just the leader: the kubelet
    /// double's static pods and the commands an agent runs live in the group
    /// of the process that started them, and a host losing power takes them
    /// all.
    group: bool,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // Its own process group: a Ctrl-C meant for the caller's terminal
        // does not reach it, and kh-sandbox can leave it running.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
            group: false,
        }
    }

    /// Like [`Proc::spawn`], but killing it kills its whole process group:
    /// everything it started that did not leave the group.
    pub fn spawn_group(name: &str, cmd: Command, log: &Path) -> Proc {
        let mut p = Proc::spawn(name, cmd, log);
        p.group = true;
        p
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Like a host losing power: SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.group {
                kill_group(c.id(), "KILL");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for a clean exit; returns the exit
    /// code, or kills and returns None when it did not stop in time.
    pub fn terminate(&mut self, grace: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// SIGTERM to the whole group (or the process), then SIGKILL to the
    /// group after `grace`.
    pub fn terminate_group(&mut self, grace: Duration) -> Option<i32> {
        let pid = self.pid()?;
        if self.group {
            kill_group(pid, "TERM");
        }
        let code = self.terminate(grace);
        if self.group {
            kill_group(pid, "KILL");
        }
        code
    }

    /// Lets the process outlive this guard (for kh-sandbox); returns its pid.
    pub fn detach(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends `signal` (a name such as `KILL`) to process group `pgid`. Errors
/// (an empty group) are ignored: the point is that nothing is left.
pub fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Sends `signal` to one process.
pub fn kill_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` is a live process (not a zombie) whose command line
/// contains `needle`.
pub fn alive_with(pid: u32, needle: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line.
    !cmdline.is_empty()
        && String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(needle)
}

/// Every live process whose command line contains `needle`, with its
/// process group: (pid, pgid).
pub fn processes_naming(needle: &str) -> Vec<(u32, u32)> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || !alive_with(pid, needle) {
            continue;
        }
        if let Some(pgid) = pgid_of(pid) {
            out.push((pid, pgid));
        }
    }
    out
}

/// The process group of `pid`, from /proc/PID/stat.
pub fn pgid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields after the
    // last ')' are: state ppid pgrp ...
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(2)?.parse().ok()
}
