//! Version probing of the tools kh drives (kubeadm, kubelet, kubectl,
//! containerd), shared by preflight and facts. Probing only runs `version`
//! style commands, which change nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::tail_or_empty;
use crate::host::{Cmd, Host};

const PROBE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a probed version is trusted while its binary stays the same
/// file. Facts probe every minute, so preflight finds them fresh.
const VERSION_TRUST: Duration = Duration::from_secs(300);

/// A binary as the file system sees it. Installing another version makes
/// another file (new inode, size and change time), so an unchanged identity
/// means an unchanged version. A wrapper that runs something else (snap's
/// `/usr/bin/snap`) keeps its identity across updates, hence the time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

struct Probed {
    id: FileId,
    at: Instant,
    version: String,
}

/// Versions found recently, by the path the search found the tool at.
static PROBED: Mutex<BTreeMap<PathBuf, Probed>> = Mutex::new(BTreeMap::new());

/// The tool's version from `probe`, unless the same binary told it within
/// [`VERSION_TRUST`]. A probe is a process start (a Go binary's, on a real
/// host: tens of milliseconds, more on a Raspberry Pi), and preflight and
/// facts both ask for all four tools.
fn remembered(host: &Host, tool: &str, probe: impl FnOnce() -> ToolVersion) -> ToolVersion {
    let Some(path) = host.which(tool) else {
        return ToolVersion::Missing;
    };
    let id = file_id(&path);
    let known = |p: &Probed| Some(p.id) == id && p.at.elapsed() < VERSION_TRUST;
    if let Some(p) = PROBED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&path)
        .filter(|p| known(p))
    {
        return ToolVersion::Found(p.version.clone());
    }
    let version = probe();
    if let (Some(id), ToolVersion::Found(found)) = (id, &version) {
        PROBED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                path,
                Probed {
                    id,
                    at: Instant::now(),
                    version: found.clone(),
                },
            );
    }
    version
}

/// What probing one tool found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum ToolVersion {
    /// Not on the search path.
    Missing,
    /// The version as the tool prints it, e.g. `v1.32.0` or `1.6.20~ds1`.
    Found(String),
    /// On the path, but the version could not be read (with why).
    Unreadable(String),
}

impl ToolVersion {
    /// The version, or an empty string; for facts, which never fail.
    pub fn as_fact(&self) -> String {
        match self {
            ToolVersion::Found(version) => version.clone(),
            _ => String::new(),
        }
    }
}

/// A `major.minor.patch` version; pre-release and build suffixes are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Semver {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl std::fmt::Display for Semver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parses `v1.32.0`, `1.32.0`, `v1.32.0-rc.1+abc` or `1.6.20~ds1`.
pub fn parse_semver(text: &str) -> Option<Semver> {
    let text = text.trim();
    let text = text.strip_prefix('v').unwrap_or(text);
    let mut parts = text.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let patch = digits.parse().ok()?;
    Some(Semver {
        major,
        minor,
        patch,
    })
}

/// The first word that looks like a version, from any of the tools' outputs.
fn first_version_word(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|word| parse_semver(word).is_some())
        .map(str::to_string)
}

/// `kubeadm version -o short` prints `v1.32.0`.
pub fn parse_kubeadm_short(stdout: &str) -> Option<String> {
    first_version_word(stdout)
}

/// `kubelet --version` prints `Kubernetes v1.32.0`.
pub fn parse_kubelet_version(stdout: &str) -> Option<String> {
    let rest = stdout.trim().strip_prefix("Kubernetes")?;
    first_version_word(rest)
}

/// `kubectl version --client -o json` prints `clientVersion.gitVersion`.
pub fn parse_kubectl_json(stdout: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(stdout).ok()?;
    let version = json.get("clientVersion")?.get("gitVersion")?.as_str()?;
    parse_semver(version).map(|_| version.to_string())
}

/// `kubectl version --client --short` (and plain `--client` on newer
/// releases) prints `Client Version: v1.32.0`; very old releases print
/// `Client Version: version.Info{... GitVersion:"v1.20.0" ...}`.
pub fn parse_kubectl_text(stdout: &str) -> Option<String> {
    let line = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Client Version:"))?;
    if let Some((_, rest)) = line.split_once("GitVersion:\"") {
        return rest.split('"').next().map(str::to_string);
    }
    first_version_word(line)
}

/// `containerd --version` prints
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3`
/// (or `... v2.0.0 <commit>` upstream); the third word is the version.
pub fn parse_containerd_version(stdout: &str) -> Option<String> {
    let mut words = stdout.split_whitespace();
    if words.next()? != "containerd" {
        return None;
    }
    let version = words.nth(1)?;
    parse_semver(version).map(|_| version.to_string())
}

/// Runs one probe command; `Err` carries why it gave no output to parse.
fn probe(host: &Host, argv: &[&str]) -> Result<String, ToolVersion> {
    if host.which(argv[0]).is_none() {
        return Err(ToolVersion::Missing);
    }
    let cmd = Cmd::new(argv[0])
        .args(argv[1..].iter().copied())
        .timeout(PROBE_TIMEOUT);
    match host.run(&cmd) {
        Ok(record) if record.success() => Ok(record.stdout),
        Ok(record) => Err(ToolVersion::Unreadable(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            record.status_text(),
            tail_or_empty(&record.stderr_tail)
        ))),
        Err(err) => Err(ToolVersion::Unreadable(err.to_string())),
    }
}

fn parsed(argv: &[&str], stdout: &str, parse: fn(&str) -> Option<String>) -> ToolVersion {
    match parse(stdout) {
        Some(version) => ToolVersion::Found(version),
        None => ToolVersion::Unreadable(format!(
            "cannot find a version in the output of `{}`: {:?}",
            argv.join(" "),
            stdout.trim()
        )),
    }
}

fn probe_parsed(host: &Host, argv: &[&str], parse: fn(&str) -> Option<String>) -> ToolVersion {
    match probe(host, argv) {
        Ok(stdout) => parsed(argv, &stdout, parse),
        Err(state) => state,
    }
}

pub fn kubeadm_version(host: &Host) -> ToolVersion {
    remembered(host, "kubeadm", || {
        probe_parsed(
            host,
            &["kubeadm", "version", "-o", "short"],
            parse_kubeadm_short,
        )
    })
}

pub fn kubelet_version(host: &Host) -> ToolVersion {
    remembered(host, "kubelet", || {
        probe_parsed(host, &["kubelet", "--version"], parse_kubelet_version)
    })
}

/// JSON output first; releases that lack it (or print it differently) get
/// the text forms.
pub fn kubectl_version(host: &Host) -> ToolVersion {
    remembered(host, "kubectl", || kubectl_probe(host))
}

fn kubectl_probe(host: &Host) -> ToolVersion {
    let json = ["kubectl", "version", "--client", "-o", "json"];
    let first = match probe(host, &json) {
        Ok(stdout) => match parse_kubectl_json(&stdout) {
            Some(version) => return ToolVersion::Found(version),
            None => parsed(&json, &stdout, parse_kubectl_json),
        },
        Err(ToolVersion::Missing) => return ToolVersion::Missing,
        Err(state) => state,
    };
    for argv in [
        &["kubectl", "version", "--client", "--short"][..],
        &["kubectl", "version", "--client"][..],
    ] {
        if let Ok(stdout) = probe(host, argv) {
            if let Some(version) = parse_kubectl_text(&stdout) {
                return ToolVersion::Found(version);
            }
        }
    }
    first
}

pub fn containerd_version(host: &Host) -> ToolVersion {
    remembered(host, "containerd", || {
        probe_parsed(host, &["containerd", "--version"], parse_containerd_version)
    })
}

/// All four tools at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolVersions {
    pub kubeadm: ToolVersion,
    pub kubelet: ToolVersion,
    pub kubectl: ToolVersion,
    pub containerd: ToolVersion,
}

/// Asks the four tools at once: each is a process start (a Go binary on a
/// real host), and preflight waits for all of them.
pub fn tool_versions(host: &Host) -> ToolVersions {
    std::thread::scope(|s| {
        let kubeadm = s.spawn(|| kubeadm_version(host));
        let kubelet = s.spawn(|| kubelet_version(host));
        let kubectl = s.spawn(|| kubectl_version(host));
        let containerd = containerd_version(host);
        let join = |h: std::thread::ScopedJoinHandle<'_, _>| {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        };
        ToolVersions {
            kubeadm: join(kubeadm),
            kubelet: join(kubelet),
            kubectl: join(kubectl),
            containerd,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semvers_parse() {
        let v = |major, minor, patch| {
            Some(Semver {
                major,
                minor,
                patch,
            })
        };
        let cases = [
            ("v1.32.0", v(1, 32, 0)),
            ("1.32.0", v(1, 32, 0)),
            ("v1.31.4-rc.1+abc", v(1, 31, 4)),
            ("1.6.20~ds1", v(1, 6, 20)),
            ("v2.0.0\n", v(2, 0, 0)),
            ("v1.32", None),
            ("latest", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_semver(text), want, "{text:?}");
        }
    }

    #[test]
    fn tool_outputs_parse() {
        type Parser = fn(&str) -> Option<String>;
        let cases: &[(Parser, &str, Option<&str>)] = &[
            (parse_kubeadm_short, "v1.32.0\n", Some("v1.32.0")),
            (parse_kubeadm_short, "error: unknown flag\n", None),
            (parse_kubelet_version, "Kubernetes v1.32.0\n", Some("v1.32.0")),
            (parse_kubelet_version, "v1.32.0\n", None),
            (
                parse_kubectl_json,
                r#"{"clientVersion":{"major":"1","minor":"32","gitVersion":"v1.32.0","platform":"linux/amd64"},"kustomizeVersion":"v5.5.0"}"#,
                Some("v1.32.0"),
            ),
            (parse_kubectl_json, "Client Version: v1.32.0", None),
            (parse_kubectl_text, "Client Version: v1.27.3\nKustomize Version: v5.0.1\n", Some("v1.27.3")),
            (
                parse_kubectl_text,
                "Client Version: version.Info{Major:\"1\", Minor:\"20\", GitVersion:\"v1.20.0\", GitCommit:\"af46c47\"}\n",
                Some("v1.20.0"),
            ),
            (
                parse_containerd_version,
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n",
                Some("1.6.20~ds1"),
            ),
            (
                parse_containerd_version,
                "containerd github.com/containerd/containerd/v2 v2.0.0 207ad711eabd375a01713109a8a197d197ff6542\n",
                Some("v2.0.0"),
            ),
            (parse_containerd_version, "ctr version 1.6.20\n", None),
        ];
        for (parse, output, want) in cases {
            assert_eq!(parse(output).as_deref(), *want, "{output:?}");
        }
    }

    #[test]
    fn a_version_is_probed_again_only_when_the_binary_changes() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let runs = dir.path().join("runs");
        let install = |version: &str| {
            let script = format!(
                "#!/bin/sh\necho run >> {}\necho {version}\n",
                runs.display()
            );
            // A package manager writes a new file and renames it into place.
            let tmp = bin.join(".kubeadm.new");
            std::fs::write(&tmp, script).unwrap();
            std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            std::fs::rename(&tmp, bin.join("kubeadm")).unwrap();
        };
        let host = Host::new("/", vec![bin.clone()]);
        let probes = || std::fs::read_to_string(&runs).unwrap().lines().count();
        install("v1.32.0");
        assert_eq!(kubeadm_version(&host), ToolVersion::Found("v1.32.0".into()));
        assert_eq!(kubeadm_version(&host), ToolVersion::Found("v1.32.0".into()));
        assert_eq!(probes(), 1, "the same binary was asked twice");
        install("v1.32.1");
        assert_eq!(kubeadm_version(&host), ToolVersion::Found("v1.32.1".into()));
        assert_eq!(probes(), 2);
        std::fs::remove_file(bin.join("kubeadm")).unwrap();
        assert_eq!(kubeadm_version(&host), ToolVersion::Missing);
    }

    #[test]
    fn the_real_containerd_reports_its_version() {
        let host = Host::new("/", vec!["/usr/bin".into(), "/bin".into()]);
        match containerd_version(&host) {
            ToolVersion::Found(version) => assert!(parse_semver(&version).is_some()),
            other => panic!("containerd is installed on this machine, got {other:?}"),
        }
        let empty = Host::new("/", vec!["/nonexistent-kh-bin".into()]);
        assert_eq!(kubeadm_version(&empty), ToolVersion::Missing);
        assert_eq!(kubectl_version(&empty), ToolVersion::Missing);
    }
}
