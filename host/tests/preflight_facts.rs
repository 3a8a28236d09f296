//! Preflight and facts on temp roots, with doubles for the Kubernetes tools
//! and a search path that hides whatever the machine itself has installed.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::{TestHost, KERNEL, SWAPS_HEADER};
use kh_host::{collect, preflight, Check, CheckStatus, PreflightInput, Role};

fn install_kube_doubles(t: &TestHost, kubeadm: &str, kubelet: &str, kubectl: &str) {
    t.double(
        "kubeadm",
        &format!("[ \"$*\" = 'version -o short' ] && echo '{kubeadm}'"),
    );
    t.double(
        "kubelet",
        &format!("[ \"$*\" = '--version' ] && echo 'Kubernetes {kubelet}'"),
    );
    t.double(
        "kubectl",
        &format!(
            "[ \"$*\" = 'version --client -o json' ] && printf '%s\\n' '{{\"clientVersion\":{{\"major\":\"1\",\"gitVersion\":\"{kubectl}\"}},\"kustomizeVersion\":\"v5.5.0\"}}'"
        ),
    );
}

/// A host as the prepare steps leave it, with 2 CPUs and 2 GiB.
fn prepared_root(t: &TestHost) {
    t.write(
        "/etc/fstab",
        "UUID=1 / ext4 defaults 0 1\n#/swapfile none swap sw 0 0\n",
    );
    t.write("/proc/swaps", SWAPS_HEADER);
    t.write(
        "/proc/modules",
        "br_netfilter 32768 0 - Live 0x0\noverlay 151552 0 - Live 0x0\n",
    );
    t.write("/proc/sys/kernel/osrelease", &format!("{KERNEL}\n"));
    for key in [
        "net/ipv4/ip_forward",
        "net/bridge/bridge-nf-call-iptables",
        "net/bridge/bridge-nf-call-ip6tables",
    ] {
        t.write(&format!("/proc/sys/{key}"), "1\n");
    }
    t.write(
        "/etc/containerd/config.toml",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n",
    );
    t.write(
        "/proc/cpuinfo",
        "processor\t: 0\nmodel name\t: kh\n\nprocessor\t: 1\nmodel name\t: kh\n",
    );
    t.write(
        "/proc/meminfo",
        "MemTotal:        2048000 kB\nMemFree:          1000000 kB\n",
    );
}

fn by_name(checks: &[Check]) -> BTreeMap<String, (CheckStatus, String)> {
    checks
        .iter()
        .map(|c| (c.name.clone(), (c.status, c.message.clone())))
        .collect()
}

fn status(checks: &BTreeMap<String, (CheckStatus, String)>, name: &str) -> CheckStatus {
    checks
        .get(name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
        .0
}

#[test]
fn a_prepared_control_plane_passes_its_host_checks() {
    let t = TestHost::new();
    prepared_root(&t);
    install_kube_doubles(&t, "v1.32.0", "v1.31.4", "v1.32.0");
    let host = t.isolated_host(&["containerd"]);
    let checks = preflight(
        &host,
        &PreflightInput {
            role: Role::ControlPlane,
            address: Some("127.0.0.1".parse().unwrap()),
            kubernetes_version: Some("v1.32.0".to_string()),
        },
    );
    for check in &checks {
        assert!(!check.fix.is_empty(), "{check:?}");
        assert!(!check.message.is_empty(), "{check:?}");
    }
    let named = by_name(&checks);
    for name in [
        "swap",
        "kernel-module:overlay",
        "kernel-module:br_netfilter",
        "sysctl:net.ipv4.ip_forward",
        "sysctl:net.bridge.bridge-nf-call-iptables",
        "sysctl:net.bridge.bridge-nf-call-ip6tables",
        "containerd-cgroup-driver",
        "kubeadm-version",
        "kubectl-version",
        "containerd-version",
        "cpu",
        "memory",
    ] {
        assert_eq!(
            status(&named, name),
            CheckStatus::Pass,
            "{name}: {named:#?}"
        );
    }
    assert_eq!(
        status(&named, "kubelet-version"),
        CheckStatus::Warn,
        "one minor older"
    );
    for port in [6443, 2379, 2380, 10250, 10257, 10259] {
        assert!(named.contains_key(&format!("port:{port}")), "{port}");
    }
    let root_expected = if host.effective_uid().unwrap() == 0 {
        CheckStatus::Pass
    } else {
        CheckStatus::Fail
    };
    assert_eq!(status(&named, "root"), root_expected);
}

#[test]
fn a_fresh_worker_warns_about_what_kh_fixes_and_fails_on_what_it_cannot() {
    let t = TestHost::new();
    t.fresh();
    // No kubeadm double and no system kubeadm on this search path.
    t.double("kubelet", "echo 'Kubernetes v1.32.0'");
    let host = t.isolated_host(&["containerd"]);
    let checks = preflight(
        &host,
        &PreflightInput {
            role: Role::Worker,
            address: Some("127.0.0.1".parse().unwrap()),
            kubernetes_version: Some("v1.32.0".to_string()),
        },
    );
    let named = by_name(&checks);
    assert_eq!(status(&named, "swap"), CheckStatus::Warn);
    assert_eq!(
        status(&named, "sysctl:net.ipv4.ip_forward"),
        CheckStatus::Warn
    );
    assert_eq!(
        status(&named, "kernel-module:overlay"),
        CheckStatus::Pass,
        "built in"
    );
    assert_eq!(
        status(&named, "kernel-module:br_netfilter"),
        CheckStatus::Pass,
        "bridge sysctls exist"
    );
    assert_eq!(
        status(&named, "containerd-cgroup-driver"),
        CheckStatus::Warn
    );
    assert_eq!(status(&named, "kubeadm-version"), CheckStatus::Fail);
    assert_eq!(named["kubeadm-version"].1, "kubeadm is not installed");
    assert_eq!(status(&named, "kubelet-version"), CheckStatus::Pass);
    assert_eq!(
        status(&named, "kubectl-version"),
        CheckStatus::Pass,
        "not needed on workers"
    );
    assert!(!named.contains_key("cpu") && !named.contains_key("memory"));
    let ports: Vec<&String> = named.keys().filter(|k| k.starts_with("port:")).collect();
    assert_eq!(ports, vec!["port:10250"]);
}

#[test]
fn a_small_control_plane_with_mismatched_tools_fails() {
    let t = TestHost::new();
    prepared_root(&t);
    t.write("/proc/cpuinfo", "processor\t: 0\n");
    t.write("/proc/meminfo", "MemTotal:        1024000 kB\n");
    install_kube_doubles(&t, "v1.31.2", "v1.30.0", "v1.29.0");
    let host = t.isolated_host(&["containerd"]);
    let named = by_name(&preflight(
        &host,
        &PreflightInput {
            role: Role::ControlPlane,
            address: None,
            kubernetes_version: Some("1.32.0".to_string()),
        },
    ));
    assert_eq!(status(&named, "cpu"), CheckStatus::Fail);
    assert_eq!(named["cpu"].1, "1 CPUs (control planes need 2)");
    assert_eq!(status(&named, "memory"), CheckStatus::Fail);
    assert_eq!(
        named["memory"].1,
        "1000 MiB of memory (control planes need 1700 MiB)"
    );
    assert_eq!(status(&named, "kubeadm-version"), CheckStatus::Fail);
    assert_eq!(
        named["kubeadm-version"].1,
        "kubeadm is v1.31.2, but the cluster wants v1.32.0"
    );
    assert_eq!(status(&named, "kubelet-version"), CheckStatus::Fail);
    assert_eq!(status(&named, "kubectl-version"), CheckStatus::Warn);
}

#[test]
fn kubectl_without_json_output_falls_back_to_the_short_form() {
    let t = TestHost::new();
    t.double(
        "kubectl",
        "case \"$*\" in\n\
           'version --client --short') echo 'Client Version: v1.27.3'; echo 'Kustomize Version: v5.0.1' ;;\n\
           *) echo 'error: unknown shorthand flag' >&2; exit 1 ;;\n\
         esac",
    );
    let host = t.isolated_host(&[]);
    assert_eq!(
        kh_host::tools::kubectl_version(&host),
        kh_host::tools::ToolVersion::Found("v1.27.3".to_string())
    );
    assert_eq!(
        t.calls(),
        vec![
            "kubectl version --client -o json",
            "kubectl version --client --short"
        ]
    );
}

#[test]
fn a_load_balancer_only_needs_root() {
    let t = TestHost::new();
    let host = t.isolated_host(&[]);
    let checks = preflight(
        &host,
        &PreflightInput {
            role: Role::LoadBalancer,
            address: None,
            kubernetes_version: None,
        },
    );
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["root"]);
}

#[test]
fn facts_are_collected_from_the_root_and_never_fail() {
    let t = TestHost::new();
    t.write("/proc/sys/kernel/hostname", "cp-1\n");
    t.write("/etc/hostname", "ignored\n");
    t.write(
        "/etc/os-release",
        "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n",
    );
    t.write("/proc/sys/kernel/osrelease", &format!("{KERNEL}\n"));
    t.write(
        "/sys/class/dmi/id/product_uuid",
        "4C4C4544-0042-3510-8052-B4C04F4E4B32\n",
    );
    t.write("/sys/class/net/lo/address", "00:00:00:00:00:00\n");
    t.write("/sys/class/net/eth1/address", "52:54:00:BB:00:02\n");
    t.write("/sys/class/net/eth0/address", "52:54:00:aa:00:01\n");
    t.write("/sys/class/net/dummy0/address", "00:00:00:00:00:00\n");
    t.write("/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n");
    t.write(
        "/proc/cpuinfo",
        "processor\t: 0\nprocessor\t: 1\nprocessor\t: 2\n",
    );
    t.write("/proc/meminfo", "MemTotal:        2048000 kB\n");
    t.write(
        "/proc/swaps",
        &format!("{SWAPS_HEADER}/swapfile file 1024 0 -2\n"),
    );
    t.double("kubeadm", "echo v1.32.0");
    let host = t.isolated_host(&["containerd"]);
    let extra: IpAddr = "127.0.0.11".parse().unwrap();
    let facts = collect(&host, &[extra]);

    assert_eq!(facts.hostname, "cp-1");
    assert!(facts.addresses.contains(&extra));
    assert!(facts
        .addresses
        .iter()
        .all(|ip| !ip.is_loopback() || *ip == extra));
    assert_eq!(facts.os, "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(facts.kernel, KERNEL);
    assert_eq!(facts.arch, std::env::consts::ARCH);
    assert_eq!(facts.product_uuid, "4c4c4544-0042-3510-8052-b4c04f4e4b32");
    assert_eq!(
        facts.mac_addresses,
        vec!["52:54:00:aa:00:01", "52:54:00:bb:00:02"]
    );
    assert!(facts.swap_active);
    assert_eq!(facts.cgroup_version, 2);
    assert_eq!(facts.cpu_count, 3);
    assert_eq!(facts.memory_bytes, 2_048_000 * 1024);
    assert_eq!(facts.kubeadm_version, "v1.32.0");
    assert!(
        facts.containerd_version.starts_with("1.6."),
        "{}",
        facts.containerd_version
    );
    assert_eq!(facts.kubelet_version, "", "kubelet is absent");
    assert_eq!(facts.kubectl_version, "", "kubectl is absent");

    // The JSON form is what the agent forwards.
    let json = serde_json::to_value(&facts).unwrap();
    assert_eq!(json["cgroup_version"], 2);
}

#[test]
fn facts_of_an_empty_root_are_empty_not_errors() {
    let t = TestHost::new();
    t.write("/etc/hostname", "worker-7\n");
    t.write("/sys/fs/cgroup/cpu/tasks", "");
    let facts = collect(&t.isolated_host(&[]), &[]);
    assert_eq!(facts.hostname, "worker-7");
    assert_eq!(facts.os, "");
    assert_eq!(facts.kernel, "");
    assert_eq!(facts.product_uuid, "");
    assert!(facts.mac_addresses.is_empty());
    assert!(!facts.swap_active);
    assert_eq!(facts.cgroup_version, 1);
    assert_eq!(facts.cpu_count, 0);
    assert_eq!(facts.memory_bytes, 0);
    assert_eq!(facts.containerd_version, "");
}
