//! Facts: what the agent reports about its host. Collecting facts is
//! read-only and never fails: anything unreadable is reported empty, so one
//! odd file cannot hide the rest from the coordinator.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::preflight::{parse_cpu_count, parse_mem_total_kib};
use crate::steps::swap::swap_active;
use crate::tools;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Facts {
    pub hostname: String,
    pub addresses: Vec<IpAddr>,
    /// PRETTY_NAME of os-release, e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os: String,
    pub kernel: String,
    pub arch: String,
    /// Lowercase; kubeadm requires it to be unique per node.
    pub product_uuid: String,
    /// Sorted, lowercase, without loopback and all-zero addresses; also
    /// required to be unique per node.
    pub mac_addresses: Vec<String>,
    pub swap_active: bool,
    /// 2 for the unified hierarchy, 1 for legacy, 0 when unknown.
    pub cgroup_version: u8,
    pub cpu_count: u32,
    pub memory_bytes: u64,
    pub containerd_version: String,
    pub kubeadm_version: String,
    pub kubelet_version: String,
    pub kubectl_version: String,
    /// `apt` or `dnf`: which package manager serves the Kubernetes packages
    /// (`kube::packages::package_manager`); empty when neither does.
    #[serde(default)]
    pub package_manager: String,
}

/// Reads a file under the root, trimmed; empty when missing or unreadable.
fn read_trimmed(host: &Host, abs: &str) -> String {
    match host.read_to_string(abs) {
        Ok(Some(text)) => text.trim().to_string(),
        Ok(None) => String::new(),
        Err(err) => {
            tracing::debug!(path = abs, error = %err, "fact unreadable");
            String::new()
        }
    }
}

/// PRETTY_NAME from os-release text, unquoted.
pub fn parse_pretty_name(os_release: &str) -> Option<String> {
    let value = os_release
        .lines()
        .find_map(|line| line.trim().strip_prefix("PRETTY_NAME="))?
        .trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|quote| {
            value
                .strip_prefix(*quote)
                .and_then(|v| v.strip_suffix(*quote))
        })
        .unwrap_or(value);
    // os-release allows shell-style escapes inside double quotes.
    let mut out = String::new();
    let mut chars = unquoted.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn hostname(host: &Host) -> String {
    let from_proc = read_trimmed(host, "/proc/sys/kernel/hostname");
    if from_proc.is_empty() {
        read_trimmed(host, "/etc/hostname")
    } else {
        from_proc
    }
}

fn os_name(host: &Host) -> String {
    // os-release(5): /etc/os-release wins, /usr/lib/os-release is the fallback.
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|path| match host.read_to_string(path) {
            Ok(Some(text)) => parse_pretty_name(&text),
            _ => None,
        })
        .unwrap_or_default()
}

fn mac_addresses(host: &Host) -> Vec<String> {
    let Ok(Some(interfaces)) = host.read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut macs: Vec<String> = interfaces
        .iter()
        .filter(|name| name.as_str() != "lo")
        .map(|name| read_trimmed(host, &format!("/sys/class/net/{name}/address")).to_lowercase())
        .filter(|mac| !mac.is_empty() && !mac.chars().all(|c| c == '0' || c == ':'))
        .collect();
    macs.sort();
    macs.dedup();
    macs
}

fn cgroup_version(host: &Host) -> u8 {
    if host
        .exists("/sys/fs/cgroup/cgroup.controllers")
        .unwrap_or(false)
    {
        return 2;
    }
    match host.read_dir("/sys/fs/cgroup") {
        Ok(Some(entries)) if !entries.is_empty() => 1,
        _ => 0,
    }
}

/// Collects the facts of `host`; `extra_addresses` (such as the loopback
/// address a testbed agent listens on) are added to the interface addresses.
pub fn collect(host: &Host, extra_addresses: &[IpAddr]) -> Facts {
    let mut addresses = host.interface_addresses().unwrap_or_else(|err| {
        tracing::debug!(error = %err, "interface addresses unreadable");
        Vec::new()
    });
    addresses.extend_from_slice(extra_addresses);
    addresses.sort();
    addresses.dedup();

    let cpu_count = host
        .read_to_string("/proc/cpuinfo")
        .ok()
        .flatten()
        .map(|text| parse_cpu_count(&text))
        .unwrap_or(0);
    let memory_bytes = host
        .read_to_string("/proc/meminfo")
        .ok()
        .flatten()
        .and_then(|text| parse_mem_total_kib(&text))
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    let versions = tools::tool_versions(host);

    Facts {
        hostname: hostname(host),
        addresses,
        os: os_name(host),
        kernel: read_trimmed(host, "/proc/sys/kernel/osrelease"),
        arch: std::env::consts::ARCH.to_string(),
        product_uuid: read_trimmed(host, "/sys/class/dmi/id/product_uuid").to_lowercase(),
        mac_addresses: mac_addresses(host),
        swap_active: swap_active(host).unwrap_or(false),
        cgroup_version: cgroup_version(host),
        cpu_count: u32::try_from(cpu_count).unwrap_or(u32::MAX),
        memory_bytes,
        containerd_version: versions.containerd.as_fact(),
        kubeadm_version: versions.kubeadm.as_fact(),
        kubelet_version: versions.kubelet.as_fact(),
        kubectl_version: versions.kubectl.as_fact(),
        package_manager: crate::kube::packages::detect(host)
            .map(|pm| pm.name().to_string())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_names_are_unquoted() {
        let cases = [
            (
                "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
                Some("Debian GNU/Linux 12 (bookworm)"),
            ),
            ("PRETTY_NAME='Ubuntu 24.04 LTS'\n", Some("Ubuntu 24.04 LTS")),
            ("PRETTY_NAME=Alpine\n", Some("Alpine")),
            (
                "PRETTY_NAME=\"A \\\"quoted\\\" name\"\n",
                Some("A \"quoted\" name"),
            ),
            ("NAME=x\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_pretty_name(text).as_deref(), want, "{text:?}");
        }
    }
}
