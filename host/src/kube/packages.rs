//! The Kubernetes packages (kubeadm, kubelet, kubectl) through the host's
//! package manager: which one serves them, what is installed and held,
//! pointing the source at one minor's repository, installing an exact
//! version, and asking another minor's repository what it offers without
//! touching the host's own source.
//!
//! The layout is the official one of pkgs.k8s.io, one repository per minor:
//! apt `/etc/apt/sources.list.d/kubernetes.list` with
//! `deb [signed-by=...] https://pkgs.k8s.io/core:/stable:/v1.32/deb/ /`, dnf
//! `/etc/yum.repos.d/kubernetes.repo` with
//! `baseurl=https://pkgs.k8s.io/core:/stable:/v1.32/rpm/` and an `exclude=`
//! line that is the hold (`--disableexcludes` lifts it for one install).
//! kh only ever rewrites the minor in those URLs; every other line and
//! option (`signed-by=`, `exclude=`, other repositories) stays as the
//! operator wrote it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{HostError, StepError};
use crate::host::{Cmd, CommandRecord, Host};
use crate::kube::apply::{apply_with, command_error, Done, KubeApplier};
use crate::kube::error::{KubeError, VersionUnavailable};
use crate::kube::kubeadm::real_path;
use crate::kube::version::{KubeVersion, Minor};
use crate::kube::AGENT_STATE_DIR;
use crate::steps::{FileChange, Plan, Step, StepKind, StepReport};

pub const APT_SOURCE: &str = "/etc/apt/sources.list.d/kubernetes.list";
pub const YUM_REPO: &str = "/etc/yum.repos.d/kubernetes.repo";
/// Where apt keeps the lists `apt-get update` fetched.
pub const APT_LISTS: &str = "/var/lib/apt/lists";
/// Private sources and lists of the repositories kh asks about
/// ([`package_versions`]), one directory per minor.
pub const PROBE_DIR: &str = "/var/lib/kh-agent/package-probe";
/// The keyring the official apt instructions create.
pub const OFFICIAL_KEYRING: &str = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg";
/// The packages kh installs and holds.
pub const KUBE_PACKAGES: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];

/// Every pkgs.k8s.io stable repository URL has this, then the minor.
const STABLE: &str = "pkgs.k8s.io/core:/stable:/";
/// The repository id of the official yum repo file.
const DEFAULT_REPO_ID: &str = "kubernetes";
/// The repository id of the probe's `--repofrompath`.
const PROBE_REPO_ID: &str = "kh-probe";

const UPDATE_TIMEOUT: Duration = Duration::from_secs(300);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The package manager that serves the Kubernetes packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageManager {
    Apt,
    Dnf,
}

impl PackageManager {
    /// As `Facts.package_manager` and `PackageVersionsResponse.manager`
    /// name it.
    pub fn name(self) -> &'static str {
        match self {
            PackageManager::Apt => "apt",
            PackageManager::Dnf => "dnf",
        }
    }
}

/// Which package manager serves the Kubernetes packages: apt when the apt
/// source exists, or apt-get is on the path and no yum repo file does; dnf
/// only where the yum repo file exists and no apt source does.
pub fn package_manager(host: &Host) -> Result<Option<PackageManager>, HostError> {
    if host.exists(APT_SOURCE)? {
        return Ok(Some(PackageManager::Apt));
    }
    if host.exists(YUM_REPO)? {
        return Ok(Some(PackageManager::Dnf));
    }
    Ok(host.which("apt-get").map(|_| PackageManager::Apt))
}

/// The package manager for facts, which never fail: `None` when unknown.
pub fn detect(host: &Host) -> Option<PackageManager> {
    package_manager(host).unwrap_or_else(|err| {
        tracing::debug!(error = %err, "package manager undetectable");
        None
    })
}

// ---------------------------------------------------------------------------
// source files

fn repo_url(minor: Minor, kind: &str) -> String {
    format!("https://{STABLE}{minor}/{kind}/")
}

/// The official apt source line of `minor`.
pub fn official_apt_line(minor: Minor, keyring: &str) -> String {
    format!("deb [signed-by={keyring}] {} /", repo_url(minor, "deb"))
}

/// The official yum repo file of `minor`, with the hold.
pub fn official_yum_repo(minor: Minor) -> String {
    let url = repo_url(minor, "rpm");
    format!(
        "[kubernetes]\nname=Kubernetes\nbaseurl={url}\nenabled=1\ngpgcheck=1\ngpgkey={url}repodata/repomd.xml.key\nexclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n"
    )
}

fn is_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with('#') || t.starts_with(';')
}

/// The minor of the first pkgs.k8s.io stable URL in `text`.
fn url_minor(text: &str) -> Option<Minor> {
    let start = text.find(STABLE)? + STABLE.len();
    let segment = text[start..].split('/').next()?;
    Minor::parse(segment).ok()
}

/// `line` with the minor of its pkgs.k8s.io stable URL replaced; `None`
/// when it has no such URL.
fn with_minor(line: &str, minor: Minor) -> Option<String> {
    let start = line.find(STABLE)? + STABLE.len();
    let end = line[start..].find('/').map_or(line.len(), |i| start + i);
    Minor::parse(&line[start..end]).ok()?;
    Some(format!("{}{minor}{}", &line[..start], &line[end..]))
}

/// Whether an apt source line is an active `deb` line of pkgs.k8s.io.
fn apt_kube_line(line: &str) -> bool {
    !is_comment(line) && line.trim_start().starts_with("deb ") && url_minor(line).is_some()
}

/// The minor the apt source names.
pub fn apt_source_minor(text: &str) -> Option<Minor> {
    text.lines().find(|l| apt_kube_line(l)).and_then(url_minor)
}

/// The apt source with every pkgs.k8s.io line pointed at `minor`, all else
/// (options such as `signed-by=`, comments, other lines) unchanged; `None`
/// when it has no pkgs.k8s.io line.
pub fn rewrite_apt_source(text: &str, minor: Minor) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        if apt_kube_line(body) {
            found = true;
            out.push_str(&with_minor(body, minor).unwrap_or_else(|| body.to_string()));
        } else {
            out.push_str(body);
        }
        out.push_str(end);
    }
    found.then_some(out)
}

/// The apt source line kh would use for `minor`: the host's own pkgs.k8s.io
/// line (its keyring) with the minor replaced, or the official one.
fn apt_line_for(host_source: Option<&str>, minor: Minor) -> String {
    host_source
        .and_then(|text| text.lines().find(|l| apt_kube_line(l)))
        .and_then(|l| with_minor(l.trim(), minor))
        .unwrap_or_else(|| official_apt_line(minor, OFFICIAL_KEYRING))
}

/// The Kubernetes repository of a yum repo file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YumSource {
    /// The section name (`kubernetes`), which `--disableexcludes` takes.
    pub id: String,
    pub minor: Minor,
    pub baseurl: String,
    /// The `exclude=` packages: the hold.
    pub excludes: Vec<String>,
}

/// `key=value` of a repo file line (spaces around `=` allowed).
fn ini_pair(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once('=')?;
    Some((k.trim(), v.trim()))
}

fn section_of(line: &str) -> Option<&str> {
    let t = line.trim();
    t.strip_prefix('[')?.strip_suffix(']').map(str::trim)
}

/// The first section whose `baseurl` is a pkgs.k8s.io stable repository.
pub fn yum_source(text: &str) -> Option<YumSource> {
    let mut sections: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = section_of(line) {
            sections.push((name.to_string(), Vec::new()));
        } else if let Some((_, lines)) = sections.last_mut() {
            if !is_comment(line) {
                lines.push(line);
            }
        }
    }
    sections.into_iter().find_map(|(id, lines)| {
        let baseurl = lines.iter().find_map(|l| match ini_pair(l) {
            Some(("baseurl", v)) => Some(v.to_string()),
            _ => None,
        })?;
        let minor = url_minor(&baseurl)?;
        let excludes = lines
            .iter()
            .filter_map(|l| match ini_pair(l) {
                Some(("exclude" | "excludepkgs", v)) => Some(v),
                _ => None,
            })
            .flat_map(|v| v.split([' ', ',']).filter(|p| !p.is_empty()))
            .map(str::to_string)
            .collect();
        Some(YumSource {
            id,
            minor,
            baseurl,
            excludes,
        })
    })
}

/// The repo file with the Kubernetes section's `baseurl=` and `gpgkey=`
/// pointed at `minor`; every other line (`exclude=` too) unchanged. `None`
/// when no section uses pkgs.k8s.io.
pub fn rewrite_yum_repo(text: &str, minor: Minor) -> Option<String> {
    let id = yum_source(text)?.id;
    let mut current: Option<String> = None;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        if let Some(name) = section_of(body) {
            current = Some(name.to_string());
        }
        let rewrite = current.as_deref() == Some(id.as_str())
            && !is_comment(body)
            && matches!(ini_pair(body), Some(("baseurl" | "gpgkey", _)));
        match rewrite.then(|| with_minor(body, minor)).flatten() {
            Some(new) => out.push_str(&new),
            None => out.push_str(body),
        }
        out.push_str(end);
    }
    Some(out)
}

/// The minor the host's Kubernetes source names now.
pub fn source_minor(host: &Host, pm: PackageManager) -> Result<Option<Minor>, HostError> {
    Ok(match pm {
        PackageManager::Apt => host
            .read_to_string(APT_SOURCE)?
            .as_deref()
            .and_then(apt_source_minor),
        PackageManager::Dnf => host
            .read_to_string(YUM_REPO)?
            .as_deref()
            .and_then(yum_source)
            .map(|s| s.minor),
    })
}

/// apt names a list file after its URL: `pkgs.k8s.io_core:_stable:_v1.32_deb_`.
fn apt_list_prefix(minor: Option<Minor>) -> String {
    let base = STABLE.replace('/', "_");
    match minor {
        Some(m) => format!("{base}{m}_deb_"),
        None => base,
    }
}

/// Whether apt's lists hold `minor`'s Packages and no other minor's: then
/// `apt-get update` would fetch nothing new for the Kubernetes source.
pub fn apt_lists_current(host: &Host, minor: Minor) -> Result<bool, HostError> {
    let names = host.read_dir(APT_LISTS)?.unwrap_or_default();
    let any = apt_list_prefix(None);
    let this = apt_list_prefix(Some(minor));
    let kube: Vec<&String> = names.iter().filter(|n| n.starts_with(&any)).collect();
    Ok(kube
        .iter()
        .any(|n| n.starts_with(&format!("{this}Packages")))
        && kube.iter().all(|n| n.starts_with(&this)))
}

fn no_source(pm: Option<PackageManager>, found: String, minor: Minor) -> KubeError {
    let fix = match pm {
        Some(PackageManager::Dnf) => format!(
            "Create {YUM_REPO} as the Kubernetes install guide does, for example:\n{}",
            official_yum_repo(minor)
        ),
        _ => format!(
            "Create {APT_SOURCE} as the Kubernetes install guide does: download the release key into {OFFICIAL_KEYRING} (`curl -fsSL {}Release.key | gpg --dearmor -o {OFFICIAL_KEYRING}`) and write the line `{}`",
            repo_url(minor, "deb"),
            official_apt_line(minor, OFFICIAL_KEYRING)
        ),
    };
    KubeError::NoPackageSource { found, fix }
}

fn kube(e: KubeError) -> StepError {
    StepError::Kube(Box::new(e))
}

// ---------------------------------------------------------------------------
// what is installed

/// One Kubernetes package on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledPackage {
    pub name: String,
    /// `None` when it is not installed (or its version is not a release).
    pub version: Option<KubeVersion>,
    /// apt: `apt-mark showhold` lists it; dnf: the Kubernetes repository's
    /// `exclude=` names it.
    pub held: bool,
}

fn query(host: &Host, argv: &[&str]) -> Result<CommandRecord, KubeError> {
    let cmd = Cmd::new(argv[0])
        .args(argv[1..].iter().copied())
        .timeout(QUERY_TIMEOUT);
    Ok(host.run(&cmd)?)
}

/// The installed versions of the Kubernetes packages (`None`: not
/// installed, or not a release), without the holds: one `dpkg-query` or
/// `rpm -q`.
fn installed_versions(
    host: &Host,
    pm: PackageManager,
) -> Result<Vec<(String, Option<KubeVersion>)>, KubeError> {
    let mut found = Vec::new();
    match pm {
        PackageManager::Apt => {
            let mut argv = vec![
                "dpkg-query",
                "-W",
                "--showformat=${Package}\\t${Version}\\t${db:Status-Abbrev}\\n",
            ];
            argv.extend(KUBE_PACKAGES);
            let record = query(host, &argv)?;
            // dpkg-query exits 1 when some package is unknown, and lists
            // the others all the same.
            if !matches!(record.exit_code, Some(0 | 1)) {
                return Err(command_error(
                    &record,
                    "dpkg-query must be able to read the dpkg database on this host",
                ));
            }
            for line in record.stdout.lines() {
                let fields: Vec<&str> = line.split('\t').collect();
                if let [name, version, status] = fields.as_slice() {
                    // The second letter of the abbreviated status is the
                    // package's state: `i` installed (`ii`, `hi`), `c` only
                    // its configuration left, `n` not installed.
                    let installed = status.chars().nth(1) == Some('i');
                    found.push((
                        name.to_string(),
                        installed
                            .then(|| KubeVersion::from_package(version))
                            .flatten(),
                    ));
                }
            }
        }
        PackageManager::Dnf => {
            let mut argv = vec!["rpm", "-q", "--qf", "%{NAME}\\t%{VERSION}-%{RELEASE}\\n"];
            argv.extend(KUBE_PACKAGES);
            let record = query(host, &argv)?;
            // rpm -q exits with the number of packages it did not find and
            // prints `package X is not installed` for each.
            if record.exit_code.is_none() {
                return Err(command_error(
                    &record,
                    "rpm must be able to read the rpm database on this host",
                ));
            }
            for line in record.stdout.lines() {
                if let Some((name, version)) = line.split_once('\t') {
                    found.push((name.to_string(), KubeVersion::from_package(version)));
                }
            }
        }
    }
    Ok(found)
}

/// The installed versions and holds of the Kubernetes packages.
pub fn installed(host: &Host, pm: PackageManager) -> Result<Vec<InstalledPackage>, KubeError> {
    let found = installed_versions(host, pm)?;
    let held: Vec<String> = match pm {
        PackageManager::Apt => {
            let record = query(host, &["apt-mark", "showhold"])?;
            if !record.success() {
                return Err(command_error(
                    &record,
                    "apt-mark must be able to read the dpkg selections on this host",
                ));
            }
            record
                .stdout
                .lines()
                .map(|l| l.trim().to_string())
                .collect()
        }
        PackageManager::Dnf => host
            .read_to_string(YUM_REPO)?
            .as_deref()
            .and_then(yum_source)
            .map(|s| s.excludes)
            .unwrap_or_default(),
    };
    Ok(KUBE_PACKAGES
        .iter()
        .map(|name| InstalledPackage {
            name: name.to_string(),
            version: found.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v),
            held: held.iter().any(|h| h == name),
        })
        .collect())
}

// ---------------------------------------------------------------------------
// what a repository offers

/// What the host's package manager says of the Kubernetes packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageVersions {
    pub manager: Option<PackageManager>,
    pub installed: Vec<InstalledPackage>,
    pub source_minor: Option<Minor>,
    /// kubeadm's versions in the repository asked about, newest first.
    pub available: Vec<KubeVersion>,
    /// Why the repository could not be read.
    pub error: Option<String>,
}

/// kubeadm's versions in `apt-cache madison kubeadm` output.
pub fn parse_madison(stdout: &str) -> Vec<KubeVersion> {
    let mut out: Vec<KubeVersion> = stdout
        .lines()
        .filter_map(|line| {
            let mut cols = line.split('|').map(str::trim);
            (cols.next()? == "kubeadm")
                .then(|| cols.next().and_then(KubeVersion::from_package))
                .flatten()
        })
        .collect();
    newest_first(&mut out);
    out
}

/// kubeadm's versions among the available rows of `dnf list` output.
pub fn parse_dnf_list(stdout: &str) -> Vec<KubeVersion> {
    let mut available = false;
    let mut out = Vec::new();
    for line in stdout.lines() {
        let lower = line.trim().to_ascii_lowercase();
        if lower == "available packages" {
            available = true;
            continue;
        }
        if lower == "installed packages" {
            available = false;
            continue;
        }
        if !available {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let [name, version, ..] = cols.as_slice() {
            if name.starts_with("kubeadm.") {
                out.extend(KubeVersion::from_package(version));
            }
        }
    }
    newest_first(&mut out);
    out
}

fn newest_first(v: &mut Vec<KubeVersion>) {
    v.sort_by(|a, b| b.cmp(a));
    v.dedup();
}

/// Asks `minor`'s repository (the host's own source's minor when `None`)
/// which kubeadm versions it offers, and reports what is installed. The
/// host's source and lists are never changed: apt gets a private source
/// list and lists directory under [`PROBE_DIR`], dnf a `--repofrompath`
/// repository. A repository that cannot be read is reported in `error`;
/// only a host whose package database cannot be read is an `Err`.
pub fn package_versions(host: &Host, minor: Option<Minor>) -> Result<PackageVersions, KubeError> {
    let Some(pm) = package_manager(host)? else {
        return Ok(PackageVersions {
            manager: None,
            installed: Vec::new(),
            source_minor: None,
            available: Vec::new(),
            error: Some(format!(
                "no package manager for the Kubernetes packages: neither {APT_SOURCE}, {YUM_REPO} nor apt-get on the agent's search path"
            )),
        });
    };
    let installed = installed(host, pm)?;
    let source_minor = source_minor(host, pm)?;
    let mut out = PackageVersions {
        manager: Some(pm),
        installed,
        source_minor,
        available: Vec::new(),
        error: None,
    };
    let Some(asked) = minor.or(source_minor) else {
        let path = match pm {
            PackageManager::Apt => APT_SOURCE,
            PackageManager::Dnf => YUM_REPO,
        };
        out.error = Some(format!(
            "this host has no Kubernetes package source ({path} with a pkgs.k8s.io repository), so there is no repository to ask; name a minor, or create the source"
        ));
        return Ok(out);
    };
    match probe(host, pm, asked) {
        Ok(versions) => out.available = versions,
        Err(e) => out.error = Some(e),
    }
    Ok(out)
}

/// The probe's own command failures are the answer's `error`.
fn probe(host: &Host, pm: PackageManager, minor: Minor) -> Result<Vec<KubeVersion>, String> {
    let failed = |record: &CommandRecord| {
        format!(
            "the {minor} repository could not be read: `{}` failed ({}): {}",
            crate::error::display_argv(&record.argv),
            record.status_text(),
            crate::error::tail_or_empty(&record.stderr_tail)
        )
    };
    let host_err = |e: HostError| e.to_string();
    match pm {
        PackageManager::Apt => {
            let dir = format!("{PROBE_DIR}/{minor}");
            let lists = format!("{dir}/lists");
            let sources = format!("{dir}/sources.list");
            host.create_private_dir(AGENT_STATE_DIR).map_err(host_err)?;
            host.create_private_dir(PROBE_DIR).map_err(host_err)?;
            // apt refuses a lists directory without `partial/`.
            host.create_dir_all(&format!("{lists}/partial"))
                .map_err(host_err)?;
            let own = host.read_to_string(APT_SOURCE).map_err(host_err)?;
            let line = apt_line_for(own.as_deref(), minor);
            host.write_atomic(&sources, format!("{line}\n").as_bytes(), 0o644)
                .map_err(host_err)?;
            let opts = [
                "-o".to_string(),
                format!(
                    "Dir::Etc::SourceList={}",
                    real_path(host, &sources).map_err(host_err)?
                ),
                "-o".to_string(),
                "Dir::Etc::SourceParts=-".to_string(),
                "-o".to_string(),
                format!(
                    "Dir::State::Lists={}",
                    real_path(host, &lists).map_err(host_err)?
                ),
                // No binary caches: apt-cache would otherwise rebuild the
                // host's own pkgcache.bin from the probe's lists.
                "-o".to_string(),
                "Dir::Cache::pkgcache=".to_string(),
                "-o".to_string(),
                "Dir::Cache::srcpkgcache=".to_string(),
            ];
            let update = Cmd::new("apt-get")
                .arg("update")
                .args(opts.iter().cloned())
                .timeout(UPDATE_TIMEOUT);
            let record = host.run(&update).map_err(host_err)?;
            if !record.success() {
                return Err(failed(&record));
            }
            let madison = Cmd::new("apt-cache")
                .args(opts.iter().cloned())
                .args(["madison", "kubeadm"])
                .timeout(QUERY_TIMEOUT);
            let record = host.run(&madison).map_err(host_err)?;
            if !record.success() {
                return Err(failed(&record));
            }
            Ok(parse_madison(&record.stdout)
                .into_iter()
                .filter(|v| v.minor() == minor)
                .collect())
        }
        PackageManager::Dnf => {
            let list = Cmd::new("dnf")
                .args([
                    "list",
                    "--showduplicates",
                    "--disableexcludes=all",
                    &format!("--repofrompath={PROBE_REPO_ID},{}", repo_url(minor, "rpm")),
                    &format!("--repo={PROBE_REPO_ID}"),
                    "kubeadm",
                ])
                .timeout(UPDATE_TIMEOUT);
            let record = host.run(&list).map_err(host_err)?;
            if record.success() {
                return Ok(parse_dnf_list(&record.stdout)
                    .into_iter()
                    .filter(|v| v.minor() == minor)
                    .collect());
            }
            // A readable repository without kubeadm.
            if record
                .stderr_tail
                .contains("Error: No matching Packages to list")
            {
                return Ok(Vec::new());
            }
            Err(failed(&record))
        }
    }
}

// ---------------------------------------------------------------------------
// PackageSource

/// Points the host's Kubernetes package source at `minor`'s repository and
/// refreshes the package manager's view of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageSource {
    pub minor: Minor,
}

impl PackageSource {
    fn refresh(pm: PackageManager, repo_id: &str) -> Cmd {
        match pm {
            PackageManager::Apt => Cmd::new("apt-get").arg("update"),
            PackageManager::Dnf => Cmd::new("dnf")
                .arg("makecache")
                .arg(format!("--repo={repo_id}")),
        }
        .timeout(UPDATE_TIMEOUT)
    }

    fn path(pm: PackageManager) -> &'static str {
        match pm {
            PackageManager::Apt => APT_SOURCE,
            PackageManager::Dnf => YUM_REPO,
        }
    }
}

impl Step for PackageSource {
    fn kind(&self) -> StepKind {
        StepKind::PackageSource
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::PackageSource);
        let minor = self.minor;
        let pm = package_manager(host)?.ok_or_else(|| {
            kube(no_source(
                None,
                format!("this host has no Kubernetes package source: neither {APT_SOURCE} nor {YUM_REPO} exists, and apt-get is not on the agent's search path"),
                minor,
            ))
        })?;
        let path = Self::path(pm);
        let text = host.read_to_string(path)?.ok_or_else(|| {
            kube(no_source(
                Some(pm),
                format!("this host has no Kubernetes package source: {path} does not exist"),
                minor,
            ))
        })?;
        let (rewritten, repo_id, current) = match pm {
            PackageManager::Apt => (
                rewrite_apt_source(&text, minor),
                String::new(),
                apt_source_minor(&text),
            ),
            PackageManager::Dnf => {
                let source = yum_source(&text);
                (
                    rewrite_yum_repo(&text, minor),
                    source.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
                    source.map(|s| s.minor),
                )
            }
        };
        let Some(rewritten) = rewritten else {
            let legacy = if text.contains("apt.kubernetes.io")
                || text.contains("packages.cloud.google.com")
            {
                " (it names the legacy Google-hosted repository, frozen since 2023: move to pkgs.k8s.io)"
            } else {
                ""
            };
            return Err(kube(no_source(
                Some(pm),
                format!("{path} has no pkgs.k8s.io repository (https://{STABLE}vX.Y/...){legacy}, so kh cannot point it at {minor}"),
                minor,
            )));
        };
        let refresh = Self::refresh(pm, &repo_id);
        if rewritten != text {
            let from = current.map_or("another minor".to_string(), |m| m.to_string());
            plan.files.push(FileChange::compute(
                host,
                path,
                Some(text),
                rewritten,
                0o644,
            )?);
            plan.commands.push(refresh.argv().to_vec());
            plan.notes.push(format!(
                "points {path} from {from} to {minor}; other lines stay as they are"
            ));
        } else if pm == PackageManager::Apt && !apt_lists_current(host, minor)? {
            plan.commands.push(refresh.argv().to_vec());
            plan.notes.push(format!(
                "{path} already names {minor}; apt's lists are not (only) from it, so apt-get update fetches them"
            ));
        } else {
            plan.notes.push(format!("{path} already names {minor}"));
        }
        Ok(plan)
    }

    /// A dry run says what would run; when the file already names the minor
    /// and only apt's lists would be refreshed, the outcome is the one the
    /// step reports then: unchanged.
    fn run(&self, host: &Host, dry_run: bool) -> StepReport {
        match self.plan(host) {
            Err(err) => StepReport::failed(self.kind(), &err),
            Ok(plan) if dry_run => {
                let refresh_only = plan.files.is_empty();
                let mut report = StepReport::from_plan(plan);
                if refresh_only {
                    report.outcome = crate::steps::Outcome::Unchanged;
                }
                report
            }
            Ok(plan) => self.apply(host, &plan),
        }
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::PackageSource, plan, |applier| {
            if plan.is_empty() {
                return Ok(Done::Unchanged(plan.notes.join("; ")));
            }
            let minor = self.minor;
            let pm = package_manager(applier.host())?.ok_or_else(|| KubeError::Invalid {
                what: "plan",
                value: "package-source".into(),
                reason: "the package source disappeared after planning; run the step again".into(),
            })?;
            let path = Self::path(pm);
            let change = plan.files.first();
            if let Some(change) = change {
                if change.path != path || plan.files.len() > 1 {
                    return Err(StepError::UnexpectedCommand {
                        step: StepKind::PackageSource,
                        argv: vec![change.path.clone()],
                    }
                    .into());
                }
                applier.write_change(change)?;
            }
            let argv = plan.commands.first().cloned().unwrap_or_default();
            let allowed = matches!(
                argv.iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .as_slice(),
                ["apt-get", "update"] | ["dnf", "makecache", _]
            );
            if !allowed || plan.commands.len() != 1 {
                return Err(StepError::UnexpectedCommand {
                    step: StepKind::PackageSource,
                    argv,
                }
                .into());
            }
            let record = applier.run(&Cmd::from_argv(argv).timeout(UPDATE_TIMEOUT))?;
            if !record.success() {
                // Put the old source back, so a minor that cannot be read
                // does not leave the host without a working source, and
                // refresh from it again: a failed update may have dropped
                // the lists it had.
                let restored = match change.and_then(|c| c.before.as_ref().map(|b| (c, b))) {
                    Some((c, before)) => {
                        match applier.host().write_atomic(path, before.as_bytes(), c.mode) {
                            Ok(()) => {
                                let again = applier.run(
                                    &Cmd::from_argv(record.argv.clone()).timeout(UPDATE_TIMEOUT),
                                )?;
                                if again.success() {
                                    format!("{path} was put back as it was and its lists refreshed")
                                } else {
                                    format!(
                                        "{path} was put back as it was, but refreshing from it failed too ({}); run `{}` once the repository answers",
                                        again.status_text(),
                                        again.argv.join(" ")
                                    )
                                }
                            }
                            Err(e) => format!(
                                "putting {path} back failed ({e}); its previous content is in {path}{}",
                                crate::steps::BACKUP_SUFFIX
                            ),
                        }
                    }
                    None => format!("{path} was not changed"),
                };
                return Err(command_error(
                    &record,
                    &format!("The {minor} repository could not be read; {restored}. Check that {minor} is published at https://{STABLE}{minor}/ and that this host reaches it"),
                ));
            }
            Ok(match change {
                Some(_) => Done::Changed(format!(
                    "{path} now names {minor}; {} ran",
                    record.argv.join(" ")
                )),
                None => Done::Unchanged(format!(
                    "{path} already names {minor}; apt-get update refreshed the lists"
                )),
            })
        })
    }
}

// ---------------------------------------------------------------------------
// PackageInstall

/// Installs an exact version of Kubernetes packages and keeps them held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInstall {
    packages: Vec<String>,
    version: KubeVersion,
}

impl PackageInstall {
    /// `packages` are some of kubeadm, kubelet, kubectl; `version` is
    /// `vX.Y.Z`.
    pub fn new(packages: Vec<String>, version: &str) -> Result<Self, KubeError> {
        let version = KubeVersion::parse(version)?;
        if packages.is_empty() {
            return Err(KubeError::Invalid {
                what: "package list",
                value: String::new(),
                reason: format!("name at least one of {}", KUBE_PACKAGES.join(", ")),
            });
        }
        let mut unique: Vec<String> = Vec::new();
        for p in packages {
            if !KUBE_PACKAGES.contains(&p.as_str()) {
                return Err(KubeError::Invalid {
                    what: "package",
                    value: p.chars().take(64).collect(),
                    reason: format!("kh installs only {}", KUBE_PACKAGES.join(", ")),
                });
            }
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        Ok(Self {
            packages: unique,
            version,
        })
    }

    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    pub fn version(&self) -> KubeVersion {
        self.version
    }

    fn install_cmd(&self, pm: PackageManager, repo_id: &str, names: &[&String]) -> Cmd {
        let v = self.version.upstream();
        match pm {
            PackageManager::Apt => Cmd::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "--allow-change-held-packages",
                    "--allow-downgrades",
                ])
                .args(names.iter().map(|p| format!("{p}={v}-*"))),
            PackageManager::Dnf => Cmd::new("dnf")
                .args(["install", "-y"])
                .arg(format!("--disableexcludes={repo_id}"))
                .args(names.iter().map(|p| format!("{p}-{v}-*"))),
        }
        .timeout(INSTALL_TIMEOUT)
    }

    fn list_cmd(pm: PackageManager, repo_id: &str) -> String {
        match pm {
            PackageManager::Apt => "apt-cache madison kubeadm".into(),
            PackageManager::Dnf => {
                format!("dnf list --showduplicates --disableexcludes={repo_id} kubeadm")
            }
        }
    }

    fn repo_id(host: &Host, pm: PackageManager) -> Result<String, HostError> {
        Ok(match pm {
            PackageManager::Apt => String::new(),
            PackageManager::Dnf => host
                .read_to_string(YUM_REPO)?
                .as_deref()
                .and_then(yum_source)
                .map_or(DEFAULT_REPO_ID.to_string(), |s| s.id),
        })
    }

    /// Whether a failed install means the version is not in the repository.
    fn version_missing(stderr: &str) -> bool {
        [
            // apt
            "was not found",
            "Unable to locate package",
            "has no installation candidate",
            // dnf
            "Unable to find a match",
            "No match for argument",
        ]
        .iter()
        .any(|p| stderr.contains(p))
    }
}

impl Step for PackageInstall {
    fn kind(&self) -> StepKind {
        StepKind::PackageInstall
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::PackageInstall);
        let pm = package_manager(host)?.ok_or_else(|| {
            kube(no_source(
                None,
                format!("no package manager for the Kubernetes packages: neither {APT_SOURCE}, {YUM_REPO} nor apt-get on the agent's search path"),
                self.version.minor(),
            ))
        })?;
        let now = installed(host, pm).map_err(kube)?;
        let state = |name: &str| now.iter().find(|p| p.name == name);
        let stale: Vec<&String> = self
            .packages
            .iter()
            .filter(|p| state(p).and_then(|s| s.version) != Some(self.version))
            .collect();
        let unheld: Vec<&String> = self
            .packages
            .iter()
            .filter(|p| !state(p).is_some_and(|s| s.held))
            .collect();
        for p in &self.packages {
            let s = state(p);
            let from = s
                .and_then(|s| s.version)
                .map_or("not installed".to_string(), |v| v.to_string());
            let held = if s.is_some_and(|s| s.held) {
                "held"
            } else {
                "not held"
            };
            plan.notes.push(format!("{p}: {from} ({held})"));
        }
        let repo_id = Self::repo_id(host, pm)?;
        let all: Vec<&String> = self.packages.iter().collect();
        match pm {
            PackageManager::Apt if !stale.is_empty() => {
                plan.commands.push(hold_cmd("unhold", &all).argv().to_vec());
                plan.commands
                    .push(self.install_cmd(pm, &repo_id, &stale).argv().to_vec());
                plan.commands.push(hold_cmd("hold", &all).argv().to_vec());
            }
            PackageManager::Apt if !unheld.is_empty() => {
                plan.commands
                    .push(hold_cmd("hold", &unheld).argv().to_vec());
            }
            PackageManager::Dnf if !stale.is_empty() => {
                plan.commands
                    .push(self.install_cmd(pm, &repo_id, &stale).argv().to_vec());
            }
            _ => {}
        }
        if plan.commands.is_empty() {
            plan.notes.push(format!(
                "{} already at {}{}",
                self.packages.join(", "),
                self.version,
                if pm == PackageManager::Apt {
                    " and held"
                } else {
                    ""
                }
            ));
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::PackageInstall, plan, |applier| {
            if plan.is_empty() {
                return Ok(Done::Unchanged(plan.notes.join("; ")));
            }
            let pm = package_manager(applier.host())?.ok_or_else(|| KubeError::Invalid {
                what: "plan",
                value: "package-install".into(),
                reason: "the package manager disappeared after planning; run the step again".into(),
            })?;
            for argv in &plan.commands {
                let ok = matches!(
                    (pm, argv.first().map(String::as_str)),
                    (PackageManager::Apt, Some("apt-get" | "apt-mark"))
                        | (PackageManager::Dnf, Some("dnf"))
                );
                if !ok {
                    return Err(StepError::UnexpectedCommand {
                        step: StepKind::PackageInstall,
                        argv: argv.clone(),
                    }
                    .into());
                }
            }
            let repo_id = Self::repo_id(applier.host(), pm)?;
            let mut failure: Option<KubeError> = None;
            for argv in &plan.commands {
                let is_install = argv.get(1).map(String::as_str) == Some("install");
                let is_hold = argv.first().map(String::as_str) == Some("apt-mark")
                    && argv.get(1).map(String::as_str) == Some("hold");
                // After a failed install the hold is still put back, so the
                // packages never stay unheld.
                if failure.is_some() && !is_hold {
                    continue;
                }
                let timeout = if is_install {
                    INSTALL_TIMEOUT
                } else {
                    QUERY_TIMEOUT
                };
                let record = applier.run(&Cmd::from_argv(argv.clone()).timeout(timeout))?;
                if record.success() {
                    continue;
                }
                let err = if is_install && Self::version_missing(&record.stderr_tail) {
                    let minor = source_minor(applier.host(), pm)?
                        .map_or("(unknown minor)".to_string(), |m| m.to_string());
                    KubeError::VersionUnavailable(Box::new(VersionUnavailable {
                        version: self.version.to_string(),
                        packages: self.packages.join(", "),
                        minor,
                        argv: record.argv.clone(),
                        status: record.status_text(),
                        stderr_tail: record.stderr_tail.clone(),
                        list: Self::list_cmd(pm, &repo_id),
                    }))
                } else {
                    command_error(
                        &record,
                        "Fix what the package manager reports (a held lock, a broken dependency, a repository it cannot reach) and run the step again",
                    )
                };
                if failure.is_none() {
                    failure = Some(err);
                }
            }
            if let Some(err) = failure {
                return Err(err);
            }
            verify(applier, pm, &self.packages, self.version)?;
            Ok(Done::Changed(format!(
                "{} at {} ({}{})",
                self.packages.join(", "),
                self.version,
                pm.name(),
                if pm == PackageManager::Apt {
                    ", held"
                } else {
                    ""
                }
            )))
        })
    }
}

fn hold_cmd(verb: &str, names: &[&String]) -> Cmd {
    Cmd::new("apt-mark")
        .arg(verb)
        .args(names.iter().map(|s| s.to_string()))
        .timeout(QUERY_TIMEOUT)
}

/// Reads the installed versions back: a package manager that said yes and
/// installed something else must not pass. The holds are not read back
/// (that was one more `apt-mark showhold` per install, which a batch of
/// nodes runs at the same moment): every apt plan ends with `apt-mark hold`
/// of each package it found unheld (after an install: of every package),
/// this runs only when every command of the plan succeeded, and `apt-mark
/// hold` does not exit 0 without setting the hold. On dnf the hold is the
/// repository's `exclude=` line, which the install does not touch.
fn verify(
    applier: &KubeApplier<'_>,
    pm: PackageManager,
    packages: &[String],
    version: KubeVersion,
) -> Result<(), KubeError> {
    let now = installed_versions(applier.host(), pm)?;
    let wrong: Vec<String> = packages
        .iter()
        .filter_map(|p| {
            let v = now.iter().find(|(n, _)| n == p).and_then(|(_, v)| *v);
            (v != Some(version)).then(|| {
                format!(
                    "{p} {}",
                    v.map_or("not installed".into(), |v| v.to_string())
                )
            })
        })
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    Err(KubeError::Invalid {
        what: "installed packages",
        value: wrong.join(", "),
        reason: format!(
            "the package manager reported success, but they are not at {version}; check its log and run the step again"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Minor {
        Minor::parse(s).unwrap()
    }

    const APT: &str = "# Kubernetes, added by the install guide\ndeb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /\n# deb https://pkgs.k8s.io/core:/stable:/v1.29/deb/ /\ndeb http://deb.debian.org/debian bookworm main\n";

    #[test]
    fn the_apt_source_is_rewritten_only_in_its_pkgs_k8s_io_line() {
        assert_eq!(apt_source_minor(APT), Some(m("v1.31")));
        let new = rewrite_apt_source(APT, m("v1.32")).unwrap();
        assert_eq!(
            new,
            APT.replace("stable:/v1.31/deb/ /\n", "stable:/v1.32/deb/ /\n")
        );
        assert!(new.contains("[signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg]"));
        assert!(new.contains("# deb https://pkgs.k8s.io/core:/stable:/v1.29/deb/ /"));
        assert!(new.contains("deb http://deb.debian.org/debian bookworm main"));
        assert_eq!(apt_source_minor(&new), Some(m("v1.32")));
        assert_eq!(rewrite_apt_source(&new, m("v1.32")).unwrap(), new);
        // No final newline stays no final newline.
        let bare = "deb https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /";
        assert_eq!(
            rewrite_apt_source(bare, m("v1.31")).unwrap(),
            "deb https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /"
        );
        assert_eq!(
            rewrite_apt_source(
                "deb https://apt.kubernetes.io/ kubernetes-xenial main\n",
                m("v1.31")
            ),
            None
        );
        assert_eq!(rewrite_apt_source("", m("v1.31")), None);
    }

    const YUM: &str = "[kubernetes]\nname=Kubernetes\nbaseurl=https://pkgs.k8s.io/core:/stable:/v1.31/rpm/\nenabled=1\ngpgcheck=1\ngpgkey=https://pkgs.k8s.io/core:/stable:/v1.31/rpm/repodata/repomd.xml.key\nexclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n\n[other]\nbaseurl=https://example.com/v1.31/\ngpgkey=https://example.com/key\n";

    #[test]
    fn the_yum_repo_keeps_its_exclude_line_and_other_sections() {
        let s = yum_source(YUM).unwrap();
        assert_eq!(s.id, "kubernetes");
        assert_eq!(s.minor, m("v1.31"));
        assert_eq!(
            s.excludes,
            [
                "kubelet",
                "kubeadm",
                "kubectl",
                "cri-tools",
                "kubernetes-cni"
            ]
        );
        let new = rewrite_yum_repo(YUM, m("v1.32")).unwrap();
        assert_eq!(
            new,
            YUM.replace("core:/stable:/v1.31/rpm/\n", "core:/stable:/v1.32/rpm/\n")
                .replace(
                    "core:/stable:/v1.31/rpm/repodata",
                    "core:/stable:/v1.32/rpm/repodata"
                )
        );
        assert!(new.contains("exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n"));
        assert!(new.contains("[other]\nbaseurl=https://example.com/v1.31/\n"));
        assert_eq!(yum_source(&new).unwrap().minor, m("v1.32"));
        assert_eq!(
            official_yum_repo(m("v1.32")),
            YUM.split("\n\n").next().unwrap().replace("v1.31", "v1.32") + "\n"
        );
        assert_eq!(
            rewrite_yum_repo("[base]\nbaseurl=https://example.com/\n", m("v1.32")),
            None
        );
        // A differently named section, with spaces around `=`.
        let named = "[k8s]\nbaseurl = https://pkgs.k8s.io/core:/stable:/v1.30/rpm/\n";
        assert_eq!(yum_source(named).unwrap().id, "k8s");
        assert_eq!(
            rewrite_yum_repo(named, m("v1.31")).unwrap(),
            "[k8s]\nbaseurl = https://pkgs.k8s.io/core:/stable:/v1.31/rpm/\n"
        );
    }

    #[test]
    fn probe_sources_keep_the_hosts_keyring() {
        assert_eq!(
            apt_line_for(Some(APT), m("v1.33")),
            "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.33/deb/ /"
        );
        assert_eq!(
            apt_line_for(Some("deb [signed-by=/usr/share/keyrings/k8s.gpg arch=amd64] https://pkgs.k8s.io/core:/stable:/v1.30/deb/ /\n"), m("v1.31")),
            "deb [signed-by=/usr/share/keyrings/k8s.gpg arch=amd64] https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /"
        );
        assert_eq!(
            apt_line_for(None, m("v1.31")),
            official_apt_line(m("v1.31"), OFFICIAL_KEYRING)
        );
    }

    #[test]
    fn repository_listings_give_kubeadms_versions_newest_first() {
        let madison = "   kubeadm | 1.32.4-1.1 | https://pkgs.k8s.io/core:/stable:/v1.32/deb  Packages\n   kubeadm | 1.32.0-1.1 | https://pkgs.k8s.io/core:/stable:/v1.32/deb  Packages\n   kubeadm | 1.32.2-1.1 | https://pkgs.k8s.io/core:/stable:/v1.32/deb  Packages\n   kubeadm | 1.32.2-1.1 | https://pkgs.k8s.io/core:/stable:/v1.32/deb  Packages\n   kubelet | 1.32.9-1.1 | x\n";
        let v: Vec<String> = parse_madison(madison)
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(v, ["v1.32.4", "v1.32.2", "v1.32.0"]);
        let dnf = "Last metadata expiration check: 0:00:01 ago.\nInstalled Packages\nkubeadm.x86_64          1.31.4-150500.1.1               @kubernetes\nAvailable Packages\nkubeadm.x86_64          1.32.0-150500.1.1               kh-probe\nkubeadm.x86_64          1.32.4-150500.1.1               kh-probe\nkubelet.x86_64          1.32.9-150500.1.1               kh-probe\n";
        let v: Vec<String> = parse_dnf_list(dnf).iter().map(|v| v.to_string()).collect();
        assert_eq!(v, ["v1.32.4", "v1.32.0"]);
        assert!(parse_dnf_list("Error: No matching Packages to list\n").is_empty());
    }

    #[test]
    fn install_input_is_validated_at_the_edge() {
        let i = PackageInstall::new(
            vec!["kubeadm".into(), "kubelet".into(), "kubeadm".into()],
            "v1.32.4",
        )
        .unwrap();
        assert_eq!(i.packages(), ["kubeadm", "kubelet"]);
        assert!(PackageInstall::new(vec![], "v1.32.4").is_err());
        let e = PackageInstall::new(vec!["cri-tools".into()], "v1.32.4")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kubeadm, kubelet, kubectl"), "{e}");
        assert!(PackageInstall::new(vec!["kubeadm".into()], "1.32.4").is_err());
        let cmd = i.install_cmd(
            PackageManager::Apt,
            "",
            &i.packages.iter().collect::<Vec<_>>(),
        );
        assert_eq!(
            cmd.argv(),
            [
                "apt-get",
                "install",
                "-y",
                "--allow-change-held-packages",
                "--allow-downgrades",
                "kubeadm=1.32.4-*",
                "kubelet=1.32.4-*"
            ]
        );
        let cmd = i.install_cmd(
            PackageManager::Dnf,
            "kubernetes",
            &i.packages.iter().collect::<Vec<_>>(),
        );
        assert_eq!(
            cmd.argv(),
            [
                "dnf",
                "install",
                "-y",
                "--disableexcludes=kubernetes",
                "kubeadm-1.32.4-*",
                "kubelet-1.32.4-*"
            ]
        );
        assert!(PackageInstall::version_missing(
            "E: Version '1.32.9-*' for 'kubeadm' was not found\n"
        ));
        assert!(PackageInstall::version_missing("No match for argument: kubeadm-1.32.9-*\nError: Unable to find a match: kubeadm-1.32.9-*\n"));
        assert!(!PackageInstall::version_missing(
            "E: Could not get lock /var/lib/dpkg/lock-frontend\n"
        ));
    }

    #[test]
    fn a_host_without_a_kubernetes_source_is_told_which_file_to_create() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let host = Host::new(&root, vec![]);
        let step = PackageSource { minor: m("v1.32") };
        let err = step.plan(&host).unwrap_err().to_string();
        assert!(err.contains("neither /etc/apt/sources.list.d/kubernetes.list nor /etc/yum.repos.d/kubernetes.repo exists"), "{err}");
        assert!(err.contains("deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] https://pkgs.k8s.io/core:/stable:/v1.32/deb/ /"), "{err}");
        // A legacy source is named as such.
        host.create_dir_all("/etc/apt/sources.list.d").unwrap();
        host.write_atomic(
            APT_SOURCE,
            b"deb https://apt.kubernetes.io/ kubernetes-xenial main\n",
            0o644,
        )
        .unwrap();
        let err = step.plan(&host).unwrap_err().to_string();
        assert!(
            err.contains("has no pkgs.k8s.io repository") && err.contains("legacy"),
            "{err}"
        );
        // A dnf host gets the repo file to write.
        std::fs::remove_file(root.join("etc/apt/sources.list.d/kubernetes.list")).unwrap();
        host.create_dir_all("/etc/yum.repos.d").unwrap();
        host.write_atomic(YUM_REPO, b"[base]\nbaseurl=https://example.com/\n", 0o644)
            .unwrap();
        let err = step.plan(&host).unwrap_err().to_string();
        assert!(
            err.contains("baseurl=https://pkgs.k8s.io/core:/stable:/v1.32/rpm/"),
            "{err}"
        );
        // One that names the minor already has nothing to do.
        host.write_atomic(YUM_REPO, official_yum_repo(m("v1.32")).as_bytes(), 0o644)
            .unwrap();
        assert!(step.plan(&host).unwrap().is_empty());
        let plan = PackageSource { minor: m("v1.33") }.plan(&host).unwrap();
        assert_eq!(plan.commands, [["dnf", "makecache", "--repo=kubernetes"]]);
        assert_eq!(
            plan.files[0].backup.as_deref(),
            Some("/etc/yum.repos.d/kubernetes.repo.kh-bak")
        );
    }

    #[test]
    fn the_package_manager_follows_the_source_files() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let host = Host::new(dir.path().join("root"), vec![bin.clone()]);
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        assert_eq!(package_manager(&host).unwrap(), None);
        let exe = bin.join("apt-get");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(package_manager(&host).unwrap(), Some(PackageManager::Apt));
        host.create_dir_all("/etc/yum.repos.d").unwrap();
        host.write_atomic(YUM_REPO, YUM.as_bytes(), 0o644).unwrap();
        assert_eq!(package_manager(&host).unwrap(), Some(PackageManager::Dnf));
        host.create_dir_all("/etc/apt/sources.list.d").unwrap();
        host.write_atomic(APT_SOURCE, APT.as_bytes(), 0o644)
            .unwrap();
        assert_eq!(package_manager(&host).unwrap(), Some(PackageManager::Apt));
        // apt's lists: current only when they hold this minor and no other.
        assert!(!apt_lists_current(&host, m("v1.31")).unwrap());
        host.create_dir_all(APT_LISTS).unwrap();
        let list = |name: &str| {
            host.write_atomic(&format!("{APT_LISTS}/{name}"), b"", 0o644)
                .unwrap()
        };
        list("pkgs.k8s.io_core:_stable:_v1.31_deb_InRelease");
        list("pkgs.k8s.io_core:_stable:_v1.31_deb_Packages");
        list("deb.debian.org_debian_dists_bookworm_InRelease");
        assert!(apt_lists_current(&host, m("v1.31")).unwrap());
        assert!(!apt_lists_current(&host, m("v1.32")).unwrap());
        list("pkgs.k8s.io_core:_stable:_v1.32_deb_Packages");
        assert!(!apt_lists_current(&host, m("v1.31")).unwrap());
    }
}
