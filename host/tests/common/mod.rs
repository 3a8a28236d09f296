//! Test support: a temp host root, a `bin/` of test doubles on the search
//! path, and a log of every double's argv.
//!
//! Doubles read their failure mode from files in the temp dir (never from
//! the environment): `<tmp>/fail-<tool>` makes the tool print that file to
//! stderr and exit 1.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kh_host::Host;

pub const KERNEL: &str = "6.1.0-kh-test";
pub const SWAPS_HEADER: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

pub struct TestHost {
    pub dir: tempfile::TempDir,
}

impl TestHost {
    /// An empty root with the standard doubles (`modprobe`, `swapoff`,
    /// `systemctl`) and the real `/usr/bin` and `/bin` after them.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("create temp dir");
        fs::create_dir_all(dir.path().join("root")).expect("create root");
        fs::create_dir_all(dir.path().join("bin")).expect("create bin");
        let this = Self { dir };
        this.install_standard_doubles();
        this
    }

    pub fn tmp(&self) -> &Path {
        self.dir.path()
    }

    pub fn root(&self) -> PathBuf {
        self.tmp().join("root")
    }

    pub fn bin(&self) -> PathBuf {
        self.tmp().join("bin")
    }

    /// The search path the brief prescribes: doubles first, then the system.
    pub fn host(&self) -> Host {
        Host::new(
            self.root(),
            vec![self.bin(), PathBuf::from("/usr/bin"), PathBuf::from("/bin")],
        )
    }

    /// A search path with only the doubles and a few named system tools, for
    /// tests that need a tool to be missing whatever the machine has.
    pub fn isolated_host(&self, system_tools: &[&str]) -> Host {
        let sysbin = self.tmp().join("sysbin");
        fs::create_dir_all(&sysbin).expect("create sysbin");
        for tool in system_tools {
            let real = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                .iter()
                .map(|dir| Path::new(dir).join(tool))
                .find(|path| path.exists())
                .unwrap_or_else(|| panic!("system tool {tool} is not installed on this machine"));
            let link = sysbin.join(tool);
            if !link.exists() {
                std::os::unix::fs::symlink(real, link).expect("symlink system tool");
            }
        }
        Host::new(self.root(), vec![self.bin(), sysbin])
    }

    fn install_standard_doubles(&self) {
        let root = self.root();
        let root = root.display();
        // swapoff -a turns every swap area off, which /proc/swaps shows as a
        // bare header.
        self.double(
            "swapoff",
            &format!("if [ -f '{root}/proc/swaps' ]; then printf '%s' '{SWAPS_HEADER}' > '{root}/proc/swaps'; fi"),
        );
        // modprobe NAME makes the module appear in /proc/modules.
        self.double(
            "modprobe",
            &format!("for last in \"$@\"; do :; done\nprintf '%s 16384 0 - Live 0x0000000000000000\\n' \"$last\" >> '{root}/proc/modules'"),
        );
        self.double("systemctl", "");
    }

    /// Writes a double: it logs its argv, fails when `<tmp>/fail-<name>`
    /// exists, and otherwise runs `body`.
    pub fn double(&self, name: &str, body: &str) {
        let tmp = self.tmp().display();
        let script = format!(
            "#!/bin/sh\n\
             # test double for {name}\n\
             {{ printf '%s' '{name}'; for arg in \"$@\"; do printf ' %s' \"$arg\"; done; printf '\\n'; }} >> '{tmp}/calls.log'\n\
             if [ -f '{tmp}/fail-{name}' ]; then cat '{tmp}/fail-{name}' >&2; exit 1; fi\n\
             {body}\n\
             exit 0\n"
        );
        let path = self.bin().join(name);
        fs::write(&path, script).expect("write double");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod double");
    }

    /// Makes `tool` fail with `stderr` as its error output.
    pub fn fail(&self, tool: &str, stderr: &str) {
        fs::write(self.tmp().join(format!("fail-{tool}")), stderr).expect("write failure file");
    }

    /// Lets `tool` succeed again.
    pub fn heal(&self, tool: &str) {
        let _ = fs::remove_file(self.tmp().join(format!("fail-{tool}")));
    }

    /// Every argv the doubles saw, in order.
    pub fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.tmp().join("calls.log"))
            .map(|text| text.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    pub fn write(&self, abs: &str, content: &str) {
        let path = self.root().join(abs.trim_start_matches('/'));
        fs::create_dir_all(path.parent().expect("parent")).expect("create parent");
        fs::write(path, content).expect("write root file");
    }

    pub fn read(&self, abs: &str) -> String {
        fs::read_to_string(self.root().join(abs.trim_start_matches('/')))
            .unwrap_or_else(|err| panic!("read {abs}: {err}"))
    }

    pub fn read_bytes(&self, abs: &str) -> Vec<u8> {
        fs::read(self.root().join(abs.trim_start_matches('/')))
            .unwrap_or_else(|err| panic!("read {abs}: {err}"))
    }

    pub fn exists(&self, abs: &str) -> bool {
        self.root().join(abs.trim_start_matches('/')).exists()
    }

    /// The fresh host of the brief: swap in fstab and active, no containerd
    /// config, no modules or sysctl files, sysctls at 0, overlay built in and
    /// br_netfilter visible through /proc/sys/net/bridge.
    pub fn fresh(&self) {
        self.write("/etc/fstab", FRESH_FSTAB);
        self.write("/proc/swaps", &format!("{SWAPS_HEADER}/swapfile                               file\t\t1048572\t\t0\t\t-2\n"));
        self.write("/proc/sys/net/ipv4/ip_forward", "0\n");
        self.write("/proc/sys/net/bridge/bridge-nf-call-iptables", "0\n");
        self.write("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "0\n");
        self.write("/proc/modules", "");
        self.write("/proc/sys/kernel/osrelease", &format!("{KERNEL}\n"));
        self.write(
            &format!("/lib/modules/{KERNEL}/modules.builtin"),
            "kernel/fs/overlayfs/overlay.ko\nkernel/lib/crc32c.ko\n",
        );
    }

    /// Every file, directory and symlink under the root with its content and
    /// mode, to prove that something touched nothing.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        walk(&self.root(), &self.root(), &mut out);
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Vec<u8>)>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).expect("metadata");
        let rel = path.strip_prefix(root).expect("under root").to_path_buf();
        let mode = meta.permissions().mode();
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("read_link");
            out.insert(rel, (mode, target.to_string_lossy().as_bytes().to_vec()));
        } else if meta.is_dir() {
            out.insert(rel, (mode, Vec::new()));
            walk(root, &path, out);
        } else {
            out.insert(rel, (mode, fs::read(&path).expect("read")));
        }
    }
}

pub const FRESH_FSTAB: &str = "# /etc/fstab: static file system information.\n\
UUID=3f1c-aa01 / ext4 errors=remount-ro 0 1\n\
/swapfile none swap sw 0 0\n\
#/dev/sdb2 none swap sw 0 0\n";

pub const FRESH_FSTAB_AFTER: &str = "# /etc/fstab: static file system information.\n\
UUID=3f1c-aa01 / ext4 errors=remount-ro 0 1\n\
#/swapfile none swap sw 0 0\n\
#/dev/sdb2 none swap sw 0 0\n";

/// Runs the real `containerd config dump` on a config under the root.
pub fn real_dump(config: &Path) -> String {
    let output = std::process::Command::new("/usr/bin/containerd")
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .expect("run the real containerd");
    assert!(
        output.status.success(),
        "containerd config dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 dump")
}

/// The real `containerd config default`.
pub fn real_config_default() -> String {
    let output = std::process::Command::new("/usr/bin/containerd")
        .args(["config", "default"])
        .output()
        .expect("run the real containerd");
    assert!(output.status.success());
    String::from_utf8(output.stdout).expect("utf-8 config")
}

/// The lines a unified diff adds or removes, without its headers.
pub fn diff_changes(diff: &str) -> Vec<String> {
    diff.lines()
        .filter(|line| !line.starts_with("---") && !line.starts_with("+++"))
        .filter(|line| line.starts_with('+') || line.starts_with('-'))
        .map(str::to_string)
        .collect()
}
