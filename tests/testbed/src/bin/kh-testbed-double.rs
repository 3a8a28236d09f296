//! The testbed's stand-ins for host tools that cannot run here: `systemctl`,
//! `modprobe`, `swapoff`, `kubeadm`, `kubectl` and `kubelet --version`. One
//! binary, dispatched on the name it is called by (the testbed links each
//! name to it in a node's `bin/`). The Kubernetes tools live in the
//! library's `doubles` module.
//!
//! Each keeps to the real tool's command line and output for the subset kh
//! uses (see tests/testbed/CONTRACT.md), acts on the node's host root the way
//! the real tool acts on a host, appends every call to
//! `$KH_TESTBED_NODE_DIR/calls.log`, and fails on demand when
//! `$KH_TESTBED_NODE_DIR/fail/<tool>` exists: its contents become stderr and
//! the exit status is 1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let tool = Path::new(&args[0])
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest = &args[1..];
    let (Some(root), Some(node)) = (env_path("KH_TESTBED_ROOT"), env_path("KH_TESTBED_NODE_DIR"))
    else {
        eprintln!("{tool}: this is the kh testbed double; KH_TESTBED_ROOT and KH_TESTBED_NODE_DIR must be set");
        return ExitCode::from(2);
    };
    if tool == "etcdctl" {
        return pass_through(&node, &tool, kh_testbed::kube::ETCDCTL_BIN, rest);
    }
    record(&node, &tool, rest);
    if let Ok(text) = std::fs::read_to_string(node.join("fail").join(&tool)) {
        eprint!("{text}");
        return ExitCode::from(1);
    }
    let code = match tool.as_str() {
        "systemctl" => systemctl(&root, &node, rest),
        "modprobe" => modprobe(&root, rest),
        "swapoff" => swapoff(&root, rest),
        "kubeadm" | "kubectl" | "kubelet" => {
            let env = kh_testbed::kube::NodeEnv::new(
                &root,
                &node,
                kh_testbed::clock::world_dir_from_env().as_deref(),
            );
            let code = match tool.as_str() {
                "kubeadm" => kh_testbed::doubles::kubeadm::main(&env, rest),
                "kubectl" => kh_testbed::doubles::kubectl::main(&env, rest),
                _ => kh_testbed::doubles::kubelet(&env, rest),
            };
            code.clamp(0, 255) as u8
        }
        t if kh_testbed::doubles::packages::PACKAGE_TOOLS.contains(&t) => {
            let env = kh_testbed::kube::NodeEnv::new(
                &root,
                &node,
                kh_testbed::clock::world_dir_from_env().as_deref(),
            );
            kh_testbed::doubles::packages::main(t, &env, rest).clamp(0, 255) as u8
        }
        other => {
            eprintln!("kh-testbed-double: unknown tool name {other:?}");
            2
        }
    };
    ExitCode::from(code)
}

fn env_path(k: &str) -> Option<PathBuf> {
    std::env::var_os(k)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A real tool (`RECORDED_TOOLS`): its argv goes to `<node>/<tool>-calls.log`
/// and the real binary replaces this process with the same arguments and
/// environment, so it behaves exactly as if called directly.
fn pass_through(node: &Path, tool: &str, real: &str, args: &[String]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    record_in(node, &format!("{tool}-calls.log"), tool, args);
    let err = std::process::Command::new(real).args(args).exec();
    eprintln!("kh-testbed-double: cannot run the real {tool} at {real}: {err}");
    ExitCode::from(127)
}

fn record(node: &Path, tool: &str, args: &[String]) {
    record_in(node, "calls.log", tool, args);
}

fn record_in(node: &Path, log: &str, tool: &str, args: &[String]) {
    let _ = std::fs::create_dir_all(node);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.join(log))
    {
        // One write per line: doubles run at once (preflight asks for the
        // tools' versions in parallel), and O_APPEND keeps a single write whole.
        let _ = f.write_all(format!("{tool} {}\n", args.join(" ")).as_bytes());
    }
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// systemctl [--quiet] (start|stop|restart|reload|reload-or-restart|enable|disable|is-active|daemon-reload) [UNIT...]
/// Units are tracked in `<node>/units/<unit>` ("active" / "inactive"); the
/// `haproxy` unit runs a real HAProxy for the host (see
/// `kh_testbed::doubles::haproxy`).
fn systemctl(root: &Path, node: &Path, args: &[String]) -> u8 {
    let args: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(verb) = args.first() else {
        eprintln!("systemctl: this double needs a command (start, stop, restart, reload, reload-or-restart, enable, disable, is-active, daemon-reload)");
        return 1;
    };
    let is_haproxy = |u: &&&String| u.trim_end_matches(".service") == "haproxy";
    if args[1..].iter().any(|u| is_haproxy(&u)) {
        let env = kh_testbed::kube::NodeEnv::new(
            root,
            node,
            kh_testbed::clock::world_dir_from_env().as_deref(),
        );
        let code = kh_testbed::doubles::haproxy::systemctl(&env, verb);
        let others: Vec<String> = args[1..]
            .iter()
            .filter(|u| !is_haproxy(u))
            .map(|u| u.to_string())
            .collect();
        if others.is_empty() || code != 0 {
            return code;
        }
        let mut rest = vec![verb.to_string()];
        rest.extend(others);
        return systemctl(root, node, &rest);
    }
    let units_dir = node.join("units");
    let _ = std::fs::create_dir_all(&units_dir);
    let unit_file = |u: &str| units_dir.join(u.trim_end_matches(".service"));
    match verb.as_str() {
        "daemon-reload" => 0,
        "start" | "restart" | "reload" | "reload-or-restart" | "enable" => {
            if args.len() < 2 {
                eprintln!("Too few arguments.");
                return 1;
            }
            if verb.as_str() != "enable" {
                for u in &args[1..] {
                    let _ = std::fs::write(unit_file(u), "active\n");
                    // A started kubelet posts its version to its Node.
                    if u.trim_end_matches(".service") == "kubelet" {
                        let env = kh_testbed::kube::NodeEnv::new(
                            root,
                            node,
                            kh_testbed::clock::world_dir_from_env().as_deref(),
                        );
                        let _ = kh_testbed::doubles::post_kubelet_version(&env);
                    }
                }
            }
            0
        }
        "stop" | "disable" => {
            for u in &args[1..] {
                if verb.as_str() == "stop" {
                    let _ = std::fs::write(unit_file(u), "inactive\n");
                }
            }
            0
        }
        "is-active" => {
            let mut all = true;
            for u in &args[1..] {
                let state =
                    std::fs::read_to_string(unit_file(u)).unwrap_or_else(|_| "inactive\n".into());
                print!("{state}");
                all &= state.trim() == "active";
            }
            if all {
                0
            } else {
                3
            }
        }
        other => {
            eprintln!("Unknown command verb {other}.");
            1
        }
    }
}

/// modprobe NAME: loads NAME if `modules.dep` of the running kernel lists it,
/// with the real tool's FATAL text otherwise. A loaded module appears in
/// /proc/modules; br_netfilter also brings /proc/sys/net/bridge, as the
/// kernel does.
fn modprobe(root: &Path, args: &[String]) -> u8 {
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let Some(name) = names.first() else {
        eprintln!("modprobe: ERROR: missing parameters. See -h.");
        return 1;
    };
    let release = std::fs::read_to_string(under(root, "/proc/sys/kernel/osrelease"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let dir = format!("/lib/modules/{release}");
    let dep =
        std::fs::read_to_string(under(root, &format!("{dir}/modules.dep"))).unwrap_or_default();
    let builtin =
        std::fs::read_to_string(under(root, &format!("{dir}/modules.builtin"))).unwrap_or_default();
    let file_stem = |line: &str| {
        let path = line.split(':').next().unwrap_or_default();
        let file = path.rsplit('/').next().unwrap_or_default();
        file.split(".ko")
            .next()
            .unwrap_or_default()
            .replace('-', "_")
    };
    let wanted = name.replace('-', "_");
    if builtin.lines().any(|l| file_stem(l) == wanted) {
        return 0;
    }
    if !dep.lines().any(|l| file_stem(l) == wanted) {
        eprintln!("modprobe: FATAL: Module {name} not found in directory {dir}");
        return 1;
    }
    let modules = under(root, "/proc/modules");
    let current = std::fs::read_to_string(&modules).unwrap_or_default();
    if !current
        .lines()
        .any(|l| l.split_whitespace().next() == Some(wanted.as_str()))
    {
        let mut f = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&modules)
        {
            Ok(f) => f,
            Err(e) => {
                eprintln!("modprobe: ERROR: could not insert '{name}': {e}");
                return 1;
            }
        };
        let _ = writeln!(f, "{wanted} 32768 0 - Live 0x0000000000000000");
        if wanted == "br_netfilter" {
            let bridge = under(root, "/proc/sys/net/bridge");
            let _ = std::fs::create_dir_all(&bridge);
            for key in [
                "bridge-nf-call-iptables",
                "bridge-nf-call-ip6tables",
                "bridge-nf-call-arptables",
            ] {
                let p = bridge.join(key);
                if !p.exists() {
                    let _ = std::fs::write(p, "1\n");
                }
            }
        }
    }
    0
}

/// swapoff -a | swapoff DEVICE...: removes the areas from /proc/swaps.
fn swapoff(root: &Path, args: &[String]) -> u8 {
    let swaps = under(root, "/proc/swaps");
    let text = std::fs::read_to_string(&swaps).unwrap_or_default();
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap_or("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority");
    let all = args.iter().any(|a| a == "-a" || a == "--all");
    let devices: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !all && devices.is_empty() {
        eprintln!("swapoff: bad usage\nTry 'swapoff --help' for more information.");
        return 1;
    }
    let mut kept = vec![header.to_string()];
    let mut code = 0;
    let present: Vec<String> = lines.map(|l| l.to_string()).collect();
    for d in &devices {
        if !present
            .iter()
            .any(|l| l.split_whitespace().next() == Some(d.as_str()))
        {
            eprintln!("swapoff: {d}: swapoff failed: Invalid argument");
            code = 4;
        }
    }
    for l in present {
        let dev = l.split_whitespace().next().unwrap_or_default().to_string();
        if !(all || devices.iter().any(|d| **d == dev)) {
            kept.push(l);
        }
    }
    let _ = std::fs::write(&swaps, format!("{}\n", kept.join("\n")));
    code
}
