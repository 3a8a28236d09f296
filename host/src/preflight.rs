//! Preflight: read-only checks that a host can become a node.
//!
//! What kh's own prepare steps fix (swap, modules, sysctls, containerd's
//! cgroup driver) is a warning here, because preflight runs before them in a
//! rollout. What kh cannot fix (missing or mismatched tools, too little CPU or
//! memory, busy ports, not running as root) fails.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::steps::containerd::{containerd_cgroup_driver, CgroupDriverState, CONTAINERD_CONFIG};
use crate::steps::modules::{is_loadable, kernel_release, module_loaded, required_modules};
use crate::steps::swap::{fstab_has_swap, swap_active};
use crate::steps::sysctl::{required_sysctls, same_value};
use crate::tools::{self, parse_semver, Semver, ToolVersion};

/// Minimum CPUs of a control plane, as kubeadm's preflight requires.
pub const MIN_CONTROL_PLANE_CPUS: usize = 2;
/// Minimum memory of a control plane in MiB, as kubeadm's preflight requires.
pub const MIN_CONTROL_PLANE_MEMORY_MIB: u64 = 1700;
pub const CONTROL_PLANE_PORTS: [u16; 6] = [6443, 2379, 2380, 10250, 10257, 10259];
pub const WORKER_PORTS: [u16; 1] = [10250];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    ControlPlane,
    Worker,
    LoadBalancer,
}

impl Role {
    fn is_node(self) -> bool {
        matches!(self, Role::ControlPlane | Role::Worker)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightInput {
    pub role: Role,
    /// The address the node will serve on; ports are checked there.
    pub address: Option<IpAddr>,
    /// The Kubernetes version to install, e.g. `v1.32.0`.
    pub kubernetes_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub message: String,
    /// What to do when the check does not pass, in words.
    pub fix: String,
}

fn check(
    name: impl Into<String>,
    status: CheckStatus,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        name: name.into(),
        status,
        message: message.into(),
        fix: fix.into(),
    }
}

/// Counts the `processor` lines of `/proc/cpuinfo`.
pub fn parse_cpu_count(cpuinfo: &str) -> usize {
    cpuinfo
        .lines()
        .filter(|line| {
            line.split(':')
                .next()
                .map(|key| key.trim() == "processor")
                .unwrap_or(false)
        })
        .count()
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
pub fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// How a tool's version relates to the wanted Kubernetes version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skew {
    Equal,
    /// One minor release older, which the kubelet may be.
    OneMinorOlder,
    Unsupported,
}

pub fn skew(have: Semver, want: Semver) -> Skew {
    if have == want {
        Skew::Equal
    } else if have.major == want.major && have.minor + 1 == want.minor {
        Skew::OneMinorOlder
    } else {
        Skew::Unsupported
    }
}

/// Runs every check that applies to `input.role`. Reads only.
pub fn preflight(host: &Host, input: &PreflightInput) -> Vec<Check> {
    let mut checks = Vec::new();
    if input.role.is_node() {
        checks.push(swap_check(host));
        checks.extend(module_checks(host));
        checks.extend(sysctl_checks(host));
        checks.push(cgroup_driver_check(host));
        checks.extend(version_checks(host, input));
    }
    if input.role == Role::ControlPlane {
        checks.push(cpu_check(host));
        checks.push(memory_check(host));
    }
    let ports: &[u16] = match input.role {
        Role::ControlPlane => &CONTROL_PLANE_PORTS,
        Role::Worker => &WORKER_PORTS,
        Role::LoadBalancer => &[],
    };
    let ip = input.address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    for &port in ports {
        checks.push(port_check(host, ip, port));
    }
    checks.push(root_check(host));
    checks
}

fn swap_check(host: &Host) -> Check {
    let fix = "Let kh's DisableSwap step turn swap off, or run `swapoff -a` and comment out the swap lines in /etc/fstab yourself.";
    match (swap_active(host), fstab_has_swap(host)) {
        (Err(err), _) | (_, Err(err)) => check(
            "swap",
            CheckStatus::Fail,
            format!("cannot read swap state: {err}"),
            fix,
        ),
        (Ok(true), _) => check(
            "swap",
            CheckStatus::Warn,
            "swap is on; the kubelet refuses to start with swap",
            fix,
        ),
        (Ok(false), Ok(true)) => check(
            "swap",
            CheckStatus::Warn,
            "swap is off, but /etc/fstab turns it on again at the next boot",
            fix,
        ),
        (Ok(false), Ok(false)) => check(
            "swap",
            CheckStatus::Pass,
            "swap is off and not in /etc/fstab",
            fix,
        ),
    }
}

fn module_checks(host: &Host) -> Vec<Check> {
    let kernel = kernel_release(host).ok().flatten();
    let kernel_name = kernel
        .clone()
        .unwrap_or_else(|| "(unknown release)".to_string());
    required_modules()
        .into_iter()
        .map(|module| {
            let name = format!("kernel-module:{module}");
            let fix = format!(
                "Let kh's KernelModules step load it, or run `modprobe {module}`; if the module does not exist for kernel {kernel_name}, install the kernel's extra modules package or use a kernel built with it."
            );
            match module_loaded(host, &module, kernel.as_deref()) {
                Err(err) => check(name, CheckStatus::Fail, format!("cannot tell whether {module} is loaded: {err}"), fix),
                Ok(Some(_)) => check(name, CheckStatus::Pass, format!("{module} is loaded or built in"), fix),
                Ok(None) => match is_loadable(host, &module, kernel.as_deref()) {
                    Ok(Some(false)) => check(
                        name,
                        CheckStatus::Fail,
                        format!("{module} is not loaded, not built in, and not in modules.dep of kernel {kernel_name}"),
                        fix,
                    ),
                    _ => check(
                        name,
                        CheckStatus::Warn,
                        format!("{module} is not loaded yet"),
                        fix,
                    ),
                },
            }
        })
        .collect()
}

fn sysctl_checks(host: &Host) -> Vec<Check> {
    required_sysctls()
        .into_iter()
        .map(|(key, wanted)| {
            let name = format!("sysctl:{key}");
            let fix = format!(
                "Let kh's Sysctl step set it, or write `{key} = {wanted}` to a file in /etc/sysctl.d and run `sysctl --system`."
            );
            match host.read_sysctl(&key) {
                Err(err) => check(name, CheckStatus::Fail, format!("cannot read {key}: {err}"), fix),
                Ok(None) => check(
                    name,
                    CheckStatus::Warn,
                    format!("{key} does not exist yet (for net.bridge keys, br_netfilter is not loaded)"),
                    fix,
                ),
                Ok(Some(value)) if same_value(&value, &wanted) => {
                    check(name, CheckStatus::Pass, format!("{key} = {value}"), fix)
                }
                Ok(Some(value)) => check(
                    name,
                    CheckStatus::Warn,
                    format!("{key} = {value}, Kubernetes needs {wanted}"),
                    fix,
                ),
            }
        })
        .collect()
}

fn cgroup_driver_check(host: &Host) -> Check {
    let name = "containerd-cgroup-driver";
    let fix = format!(
        "Let kh's ContainerdCgroup step set `SystemdCgroup = true` in {CONTAINERD_CONFIG}, or set it in the runc runtime options yourself and restart containerd."
    );
    match containerd_cgroup_driver(host) {
        Ok(CgroupDriverState::Systemd { .. }) => {
            check(name, CheckStatus::Pass, "containerd uses the systemd cgroup driver", fix)
        }
        Ok(CgroupDriverState::Cgroupfs { explicit, .. }) => check(
            name,
            CheckStatus::Warn,
            if explicit {
                "containerd is configured with SystemdCgroup = false (cgroupfs), but the kubelet uses systemd"
            } else {
                "containerd's config does not set SystemdCgroup, so it uses cgroupfs, but the kubelet uses systemd"
            },
            fix,
        ),
        Ok(CgroupDriverState::NoConfig) => check(
            name,
            CheckStatus::Warn,
            format!("{CONTAINERD_CONFIG} does not exist, so containerd uses cgroupfs, but the kubelet uses systemd"),
            fix,
        ),
        // kh's step would refuse this file too, so a human must act.
        Err(err) => check(name, CheckStatus::Fail, err.to_string(), fix),
    }
}

fn version_checks(host: &Host, input: &PreflightInput) -> Vec<Check> {
    let mut checks = Vec::new();
    let want = match &input.kubernetes_version {
        None => None,
        Some(text) => match parse_semver(text) {
            Some(version) => Some(version),
            None => {
                checks.push(check(
                    "kubernetes-version",
                    CheckStatus::Fail,
                    format!("the requested Kubernetes version `{text}` is not of the form v1.32.0"),
                    "Give the full version, with patch release, in the cluster spec.",
                ));
                None
            }
        },
    };
    let versions = tools::tool_versions(host);
    let install = |tool: &str| {
        match &input.kubernetes_version {
        Some(version) => format!("Install {tool} {version} from the Kubernetes package repository (pkgs.k8s.io) and hold the package."),
        None => format!("Install {tool} from the Kubernetes package repository (pkgs.k8s.io) and hold the package."),
    }
    };

    checks.push(required_tool_check(
        "kubeadm",
        &versions.kubeadm,
        want,
        false,
        install("kubeadm"),
    ));
    checks.push(required_tool_check(
        "kubelet",
        &versions.kubelet,
        want,
        true,
        install("kubelet"),
    ));

    let kubectl_fix = install("kubectl");
    checks.push(match (&versions.kubectl, input.role) {
        (ToolVersion::Missing, Role::ControlPlane) => check(
            "kubectl-version",
            CheckStatus::Warn,
            "kubectl is not installed; kh uses it on control planes for cluster checks",
            kubectl_fix,
        ),
        (ToolVersion::Missing, _) => check(
            "kubectl-version",
            CheckStatus::Pass,
            "kubectl is not installed (not needed on workers)",
            kubectl_fix,
        ),
        (ToolVersion::Unreadable(why), _) => check(
            "kubectl-version",
            CheckStatus::Warn,
            why.clone(),
            kubectl_fix,
        ),
        (ToolVersion::Found(found), _) => {
            // kubectl is supported within one minor release either way.
            let within = match (parse_semver(found), want) {
                (Some(have), Some(want)) => {
                    have.major == want.major && have.minor.abs_diff(want.minor) <= 1
                }
                _ => true,
            };
            let status = if within {
                CheckStatus::Pass
            } else {
                CheckStatus::Warn
            };
            check(
                "kubectl-version",
                status,
                format!("kubectl {found}"),
                kubectl_fix,
            )
        }
    });

    let containerd_fix =
        "Install containerd 1.6 or newer (the `containerd` or `containerd.io` package).";
    checks.push(match &versions.containerd {
        ToolVersion::Missing => check(
            "containerd-version",
            CheckStatus::Fail,
            "containerd is not installed",
            containerd_fix,
        ),
        ToolVersion::Unreadable(why) => check("containerd-version", CheckStatus::Fail, why.clone(), containerd_fix),
        ToolVersion::Found(found) => match parse_semver(found) {
            Some(version) if version.major == 1 && version.minor < 6 => check(
                "containerd-version",
                CheckStatus::Fail,
                format!("containerd {found} lacks the CRI v1 API that Kubernetes 1.26 and newer require"),
                containerd_fix,
            ),
            _ => check("containerd-version", CheckStatus::Pass, format!("containerd {found}"), containerd_fix),
        },
    });
    checks
}

/// kubeadm must match the wanted version exactly; the kubelet may be one
/// minor release older (Kubernetes' version skew policy).
fn required_tool_check(
    tool: &str,
    state: &ToolVersion,
    want: Option<Semver>,
    may_lag: bool,
    fix: String,
) -> Check {
    let name = format!("{tool}-version");
    match state {
        ToolVersion::Missing => check(
            name,
            CheckStatus::Fail,
            format!("{tool} is not installed"),
            fix,
        ),
        ToolVersion::Unreadable(why) => check(name, CheckStatus::Fail, why.clone(), fix),
        ToolVersion::Found(found) => {
            let Some(want) = want else {
                return check(name, CheckStatus::Pass, format!("{tool} {found}"), fix);
            };
            let Some(have) = parse_semver(found) else {
                return check(
                    name,
                    CheckStatus::Fail,
                    format!("cannot compare {tool} version `{found}`"),
                    fix,
                );
            };
            match skew(have, want) {
                Skew::Equal => check(name, CheckStatus::Pass, format!("{tool} {found}"), fix),
                Skew::OneMinorOlder if may_lag => check(
                    name,
                    CheckStatus::Warn,
                    format!("{tool} {found} is one minor release older than {want}; supported, but upgrade it soon"),
                    fix,
                ),
                _ => check(name, CheckStatus::Fail, format!("{tool} is {found}, but the cluster wants {want}"), fix),
            }
        }
    }
}

fn cpu_check(host: &Host) -> Check {
    let fix = format!("Give the machine at least {MIN_CONTROL_PLANE_CPUS} CPUs; kubeadm refuses control planes with fewer.");
    match host.read_to_string("/proc/cpuinfo") {
        Ok(Some(text)) => {
            let cpus = parse_cpu_count(&text);
            let status = if cpus >= MIN_CONTROL_PLANE_CPUS {
                CheckStatus::Pass
            } else {
                CheckStatus::Fail
            };
            check(
                "cpu",
                status,
                format!("{cpus} CPUs (control planes need {MIN_CONTROL_PLANE_CPUS})"),
                fix,
            )
        }
        Ok(None) => check(
            "cpu",
            CheckStatus::Fail,
            "/proc/cpuinfo does not exist",
            fix,
        ),
        Err(err) => check(
            "cpu",
            CheckStatus::Fail,
            format!("cannot read /proc/cpuinfo: {err}"),
            fix,
        ),
    }
}

fn memory_check(host: &Host) -> Check {
    let fix = format!(
        "Give the machine at least {MIN_CONTROL_PLANE_MEMORY_MIB} MiB of memory; kubeadm refuses control planes with less."
    );
    match host.read_to_string("/proc/meminfo") {
        Ok(Some(text)) => match parse_mem_total_kib(&text) {
            Some(kib) => {
                let mib = kib / 1024;
                let status = if mib >= MIN_CONTROL_PLANE_MEMORY_MIB {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                };
                check(
                    "memory",
                    status,
                    format!("{mib} MiB of memory (control planes need {MIN_CONTROL_PLANE_MEMORY_MIB} MiB)"),
                    fix,
                )
            }
            None => check(
                "memory",
                CheckStatus::Fail,
                "/proc/meminfo has no MemTotal line",
                fix,
            ),
        },
        Ok(None) => check(
            "memory",
            CheckStatus::Fail,
            "/proc/meminfo does not exist",
            fix,
        ),
        Err(err) => check(
            "memory",
            CheckStatus::Fail,
            format!("cannot read /proc/meminfo: {err}"),
            fix,
        ),
    }
}

fn port_check(host: &Host, ip: IpAddr, port: u16) -> Check {
    let name = format!("port:{port}");
    let fix = format!(
        "Stop whatever listens on port {port} (find it with `ss -ltnp 'sport = :{port}'`), or, if {ip} is not an address of this host, correct the node's address in the cluster spec."
    );
    match host.try_bind(ip, port) {
        Ok(()) => check(name, CheckStatus::Pass, format!("{ip}:{port} is free"), fix),
        Err(err) => check(
            name,
            CheckStatus::Fail,
            format!("cannot bind {ip}:{port}: {err}"),
            fix,
        ),
    }
}

fn root_check(host: &Host) -> Check {
    let fix = "Run kh-agent as root (its systemd unit does); kubeadm and the host steps need it.";
    match host.effective_uid() {
        Ok(0) => check("root", CheckStatus::Pass, "running as root", fix),
        Ok(uid) => check(
            "root",
            CheckStatus::Fail,
            format!("running as uid {uid}, not root"),
            fix,
        ),
        Err(err) => check("root", CheckStatus::Fail, err.to_string(), fix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_counts_are_processor_lines() {
        let cases = [
            (
                "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\nmodel name\t: x\n",
                2,
            ),
            ("processor : 0\n", 1),
            ("model name\t: processor thing\n", 0),
            ("", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_cpu_count(text), want, "{text:?}");
        }
    }

    #[test]
    fn mem_total_is_read_in_kib() {
        let cases = [
            (
                "MemTotal:        2014124 kB\nMemFree:  1 kB\n",
                Some(2_014_124),
            ),
            ("MemFree:  1 kB\nMemTotal: 1740800 kB\n", Some(1_740_800)),
            ("MemFree:  1 kB\n", None),
            ("MemTotal: lots\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_mem_total_kib(text), want, "{text:?}");
        }
    }

    #[test]
    fn skew_follows_the_kubelet_policy() {
        let v = |s| parse_semver(s).unwrap();
        let cases = [
            ("v1.32.0", "v1.32.0", Skew::Equal),
            ("v1.31.4", "v1.32.0", Skew::OneMinorOlder),
            ("v1.32.1", "v1.32.0", Skew::Unsupported),
            ("v1.30.0", "v1.32.0", Skew::Unsupported),
            ("v1.33.0", "v1.32.0", Skew::Unsupported),
            ("v2.31.0", "v1.32.0", Skew::Unsupported),
        ];
        for (have, want, expected) in cases {
            assert_eq!(skew(v(have), v(want)), expected, "{have} vs {want}");
        }
    }

    #[test]
    fn tool_checks_grade_versions() {
        let want = parse_semver("v1.32.0");
        let found = |v: &str| ToolVersion::Found(v.to_string());
        let cases = [
            ("kubeadm", found("v1.32.0"), false, CheckStatus::Pass),
            ("kubeadm", found("v1.31.0"), false, CheckStatus::Fail),
            ("kubelet", found("v1.31.0"), true, CheckStatus::Warn),
            ("kubelet", found("v1.30.0"), true, CheckStatus::Fail),
            ("kubelet", ToolVersion::Missing, true, CheckStatus::Fail),
            (
                "kubelet",
                ToolVersion::Unreadable("boom".into()),
                true,
                CheckStatus::Fail,
            ),
        ];
        for (tool, state, may_lag, status) in cases {
            let result = required_tool_check(tool, &state, want, may_lag, "fix".into());
            assert_eq!(
                result.status, status,
                "{tool} {state:?}: {}",
                result.message
            );
        }
        let no_want = required_tool_check("kubeadm", &found("v1.20.0"), None, false, "fix".into());
        assert_eq!(no_want.status, CheckStatus::Pass);
    }
}
