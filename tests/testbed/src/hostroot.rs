//! Fake host roots: the files a real host has under /etc, /proc and /sys, so
//! each testbed node reports its own facts and steps act on its own files.

use std::path::Path;

/// What makes one testbed host distinct.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub hostname: String,
    pub product_uuid: String,
    pub mac: String,
    pub cpus: u32,
    pub mem_kib: u64,
}

impl HostSpec {
    /// Host number `n` of a testbed, with unique identifiers derived from it.
    pub fn numbered(hostname: &str, n: u32) -> Self {
        HostSpec {
            hostname: hostname.to_string(),
            product_uuid: format!("4b1d0000-0000-4000-8000-{n:012x}"),
            mac: format!("02:6b:68:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
            cpus: 2,
            mem_kib: 4 * 1024 * 1024,
        }
    }
}

fn write(root: &Path, rel: &str, contents: &str) -> std::io::Result<()> {
    let p = root.join(rel.trim_start_matches('/'));
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(p, contents)
}

/// Populates `root` like a fresh Debian host that has not been prepared for
/// Kubernetes yet.
pub fn create(root: &Path, spec: &HostSpec) -> std::io::Result<()> {
    write(root, "/etc/hostname", &format!("{}\n", spec.hostname))?;
    write(
        root,
        "/proc/sys/kernel/hostname",
        &format!("{}\n", spec.hostname),
    )?;
    write(root, "/proc/sys/kernel/osrelease", "6.1.0-kh-testbed\n")?;
    write(
        root,
        "/etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    )?;
    write(
        root,
        "/sys/class/dmi/id/product_uuid",
        &format!("{}\n", spec.product_uuid),
    )?;
    write(
        root,
        "/sys/class/net/eth0/address",
        &format!("{}\n", spec.mac),
    )?;
    write(root, "/sys/class/net/lo/address", "00:00:00:00:00:00\n")?;
    write(
        root,
        "/sys/fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory pids\n",
    )?;
    let mut cpuinfo = String::new();
    for i in 0..spec.cpus {
        cpuinfo.push_str(&format!(
            "processor\t: {i}\nmodel name\t: kh testbed vCPU\n\n"
        ));
    }
    write(root, "/proc/cpuinfo", &cpuinfo)?;
    write(
        root,
        "/proc/meminfo",
        &format!(
            "MemTotal:       {} kB\nMemFree:        {} kB\n",
            spec.mem_kib,
            spec.mem_kib / 2
        ),
    )?;
    // A swap file in use, as on a stock cloud image.
    write(
        root,
        "/proc/swaps",
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/swapfile                               file\t\t1048572\t\t0\t\t-2\n",
    )?;
    write(
        root,
        "/etc/fstab",
        "# /etc/fstab: static file system information.\nUUID=6a3c0b5e-0000-4000-8000-000000000001 / ext4 errors=remount-ro 0 1\n/swapfile none swap sw 0 0\n",
    )?;
    // Neither module is loaded; both are loadable. /proc/sys/net/bridge
    // appears only once br_netfilter is loaded, as on a real kernel.
    write(root, "/proc/modules", "")?;
    let kmod = "/lib/modules/6.1.0-kh-testbed";
    write(
        root,
        &format!("{kmod}/modules.dep"),
        "kernel/fs/overlayfs/overlay.ko:\nkernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko\nkernel/net/bridge/bridge.ko:\n",
    )?;
    write(
        root,
        &format!("{kmod}/modules.builtin"),
        "kernel/fs/ext4/ext4.ko\n",
    )?;
    write(root, "/proc/sys/net/ipv4/ip_forward", "0\n")?;
    Ok(())
}
