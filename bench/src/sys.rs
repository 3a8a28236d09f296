//! What the kernel says about a process and the machine: memory, CPU time,
//! file descriptors (from /proc), and the machine description for the report.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

/// Memory of a process, in KiB, from /proc/<pid>/status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn mem(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// utime + stime of a process, in clock ticks, from /proc/<pid>/stat.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields after the
    // last ')' are: state(3) ppid pgrp session tty tpgid flags minflt cminflt
    // majflt cmajflt utime(14) stime(15).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Threads of a process.
pub fn threads(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we run on).
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU use of a process over an interval, as a fraction of one core.
pub struct CpuMeter {
    pid: u32,
    ticks: u64,
    at: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Option<CpuMeter> {
        Some(CpuMeter {
            pid,
            ticks: cpu_ticks(pid)?,
            at: Instant::now(),
        })
    }

    /// (CPU seconds used, wall seconds) since `start`.
    pub fn read(&self) -> Option<(f64, f64)> {
        let now = cpu_ticks(self.pid)?;
        Some((
            now.saturating_sub(self.ticks) as f64 / clk_tck(),
            self.at.elapsed().as_secs_f64(),
        ))
    }
}

/// Busy and total jiffies of the whole machine, from /proc/stat.
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait are fields 4 and 5.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// The soft RLIMIT_NOFILE of this process, from /proc/self/limits.
pub fn nofile_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The machine, for the report: cores, memory, CPU model, load.
pub fn describe_machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "{nproc} cores ({model}), MemTotal {mem_total}, load average {} at start",
        loadavg()
    )
}

/// Total RSS (KiB) of every live process whose command line names `needle`,
/// and how many there are.
pub fn rss_of_processes_naming(needle: &str) -> (u64, usize) {
    let mut total = 0;
    let mut n = 0;
    for (pid, _) in kh_testbed::proc::processes_naming(needle) {
        if let Some(m) = mem(pid) {
            total += m.rss_kib;
            n += 1;
        }
    }
    (total, n)
}

/// CPU time of one process: its own, and that of its children it reaped.
#[derive(Debug, Clone, Default)]
pub struct ProcCpu {
    pub comm: String,
    pub own: u64,
    pub children: u64,
}

/// CPU ticks of every live process whose command line names `needle`.
pub fn cpu_by_process(needle: &str) -> HashMap<u32, ProcCpu> {
    let mut out = HashMap::new();
    for (pid, _) in kh_testbed::proc::processes_naming(needle) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<u64> = stat[close + 2..]
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if f.len() < 15 {
            continue;
        }
        out.insert(
            pid,
            ProcCpu {
                comm,
                own: f[11] + f[12],
                children: f[13] + f[14],
            },
        );
    }
    out
}

/// Where CPU went between two snapshots, in seconds: (kh agents, the
/// coordinator, commands the agents ran and reaped (the kubeadm/kubectl
/// doubles), the rest of the testbed (kubelet doubles, etcd, apiserver
/// doubles and what they ran)).
pub fn attribute(
    before: &HashMap<u32, ProcCpu>,
    after: &HashMap<u32, ProcCpu>,
) -> (f64, f64, f64, f64) {
    let tck = clk_tck();
    let (mut agents, mut coord, mut agent_children, mut rest) = (0u64, 0u64, 0u64, 0u64);
    for (pid, a) in after {
        let b = before.get(pid).cloned().unwrap_or_default();
        let own = a.own.saturating_sub(b.own);
        let children = a.children.saturating_sub(b.children);
        match a.comm.as_str() {
            "kh-agent" => {
                agents += own;
                agent_children += children;
            }
            "kh-coordinator" => {
                coord += own;
                rest += children;
            }
            _ => rest += own + children,
        }
    }
    let s = |t: u64| t as f64 / tck;
    (s(agents), s(coord), s(agent_children), s(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let m = mem(me).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        assert!(cpu_ticks(me).is_some());
        assert!(open_fds(me).unwrap() >= 3);
        assert!(threads(me).unwrap() >= 1);
        let (busy, total) = machine_jiffies().unwrap();
        assert!(busy <= total);
    }
}
