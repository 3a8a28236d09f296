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

/// The `kubeadm` double's canned join-command hash, as init prints it.
pub const CA_CERT_HASH: &str =
    "sha256:2b1ab9a4a3b1d1c0e5f7a0c4b8e6d2f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1";

impl TestHost {
    /// Doubles for `kubeadm` and `kubectl` that honour the subset of their
    /// command lines kh uses, print what the real tools print, and keep
    /// cluster state (tokens, nodes, the last applied manifest) in files
    /// under the temp dir.
    ///
    /// Besides `fail-<tool>` (which fails before anything happens), a
    /// `<tmp>/kubeadm-fails` file makes kubeadm init/join fail *after* it
    /// has looked at its config, printing that file to stderr with `TOKEN`
    /// replaced by the token it read, so tests can check that a failing
    /// command still had a 0600 file and that its echoed token is scrubbed.
    /// Every config or manifest file a double reads has its mode appended to
    /// `<tmp>/modes.log` and its content copied to `<tmp>/seen-<verb>.yaml`.
    pub fn install_kube_doubles(&self) {
        let root = self.root();
        let root = root.display();
        let tmp = self.tmp().display();
        self.double(
            "kubeadm",
            &format!(
                r#"root='{root}'
tmp='{tmp}'
seen() {{
  stat -c '%a' "$2" >> "$tmp/modes.log"
  stat -c '%a' "$(dirname "$2")" >> "$tmp/dir-modes.log"
  cp "$2" "$tmp/seen-$1.yaml"
}}
failing() {{
  if [ -f "$tmp/kubeadm-fails" ]; then
    sed "s/TOKEN/$1/g" "$tmp/kubeadm-fails" >&2
    exit 1
  fi
}}
arg_after() {{
  want="$1"; shift; prev=""
  for a in "$@"; do if [ "$prev" = "$want" ]; then printf '%s' "$a"; return; fi; prev="$a"; done
}}
case "$1" in
init)
  if [ "$2" = phase ]; then
    config=$(arg_after --config "$@")
    seen upload-certs "$config"
    key=$(sed -n 's/^certificateKey: *//p' "$config" | head -n 1)
    echo '[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace'
    echo '[upload-certs] Using certificate key:'
    echo "$key"
    exit 0
  fi
  config=$(arg_after --config "$@")
  seen init "$config"
  token=$(sed -n 's/^- token: *//p' "$config" | head -n 1)
  key=$(sed -n 's/^certificateKey: *//p' "$config" | head -n 1)
  failing "$token"
  mkdir -p "$root/etc/kubernetes/manifests" "$root/etc/kubernetes/pki/etcd"
  echo 'apiVersion: v1' > "$root/etc/kubernetes/admin.conf"
  echo 'apiVersion: v1' > "$root/etc/kubernetes/kubelet.conf"
  echo 'kind: Pod' > "$root/etc/kubernetes/manifests/kube-apiserver.yaml"
  echo 'kind: Pod' > "$root/etc/kubernetes/manifests/etcd.yaml"
  cat <<EOF
[init] Using Kubernetes version: v1.32.0
[preflight] Running pre-flight checks
[certs] Using certificateDir folder "/etc/kubernetes/pki"
[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace
[upload-certs] Using certificate key:
$key
[bootstrap-token] Using token: $token

Your Kubernetes control-plane has initialized successfully!

You can now join any number of control-plane nodes running the following command on each as root:

  kubeadm join lb.example.internal:6443 --token $token \\
	--discovery-token-ca-cert-hash {CA_CERT_HASH} \\
	--control-plane --certificate-key $key
EOF
  ;;
join)
  config=$(arg_after --config "$@")
  seen join "$config"
  token=$(sed -n 's/^ *token: *//p' "$config" | head -n 1)
  failing "$token"
  mkdir -p "$root/etc/kubernetes/manifests"
  echo 'apiVersion: v1' > "$root/etc/kubernetes/kubelet.conf"
  if grep -q '^controlPlane:' "$config"; then
    echo 'apiVersion: v1' > "$root/etc/kubernetes/admin.conf"
    echo 'kind: Pod' > "$root/etc/kubernetes/manifests/kube-apiserver.yaml"
    echo 'kind: Pod' > "$root/etc/kubernetes/manifests/etcd.yaml"
  fi
  echo '[preflight] Running pre-flight checks'
  echo 'This node has joined the cluster:'
  ;;
reset)
  rm -f "$root/etc/kubernetes/admin.conf" "$root/etc/kubernetes/kubelet.conf"
  rm -rf "$root/etc/kubernetes/manifests"
  echo '[reset] Deleted contents of the etcd data directory: /var/lib/etcd'
  echo '[reset] Deleting contents of directories: [/etc/kubernetes/manifests /var/lib/kubelet /etc/kubernetes/pki]'
  ;;
token)
  mkdir -p "$tmp/tokens"
  case "$2" in
  create)
    config=$(arg_after --config "$@")
    seen token "$config"
    token=$(sed -n 's/^- token: *//p' "$config" | head -n 1)
    id=${{token%%.*}}
    if [ -f "$tmp/tokens/$id" ]; then
      echo "a token with id \"$id\" already exists" >&2
      echo 'To see the stack trace of this error execute with --v=5 or higher' >&2
      exit 1
    fi
    sed -n 's/^  ttl: *//p' "$config" | head -n 1 | tr -d '\n' > "$tmp/tokens/$id"
    echo "$token"
    ;;
  delete)
    if [ -f "$tmp/tokens/$3" ]; then
      rm -f "$tmp/tokens/$3"
      echo "bootstrap token \"$3\" deleted"
    else
      echo "failed to delete bootstrap token \"$3\": secrets \"bootstrap-token-$3\" not found" >&2
      echo 'To see the stack trace of this error execute with --v=5 or higher' >&2
      exit 1
    fi
    ;;
  esac
  ;;
*)
  echo "unknown command \"$1\" for \"kubeadm\"" >&2
  exit 1
  ;;
esac"#
            ),
        );
        self.double(
            "kubectl",
            &format!(
                r#"tmp='{tmp}'
if [ "$1" != --kubeconfig ] || [ ! -f "$2" ]; then
  echo 'error: stat '"$2"': no such file or directory' >&2
  exit 1
fi
shift 2
mkdir -p "$tmp/nodes"
case "$1" in
apply)
  stat -c '%a' "$3" >> "$tmp/modes.log"
  if [ -f "$tmp/applied.yaml" ] && cmp -s "$3" "$tmp/applied.yaml"; then verb=unchanged; else verb=created; fi
  cp "$3" "$tmp/applied.yaml"
  echo "namespace/kube-flannel $verb"
  echo "daemonset.apps/kube-flannel-ds $verb"
  ;;
get)
  cat "$tmp/nodes.json"
  ;;
delete)
  if [ -f "$tmp/nodes/$3" ]; then
    rm -f "$tmp/nodes/$3"
    echo "node \"$3\" deleted"
  else
    echo "Error from server (NotFound): nodes \"$3\" not found" >&2
    exit 1
  fi
  ;;
esac"#
            ),
        );
    }

    /// Lines of `<tmp>/dir-modes.log`: the mode of the directory of every
    /// config file a double read.
    pub fn dir_modes_seen(&self) -> Vec<String> {
        fs::read_to_string(self.tmp().join("dir-modes.log"))
            .map(|text| text.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Lines of `<tmp>/modes.log`: the mode of every file a double read.
    pub fn modes_seen(&self) -> Vec<String> {
        fs::read_to_string(self.tmp().join("modes.log"))
            .map(|text| text.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    pub fn tmp_file(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.tmp().join(name)).ok()
    }
}
