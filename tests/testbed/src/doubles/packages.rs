//! The package manager doubles: `apt-get`, `apt-mark`, `apt-cache`,
//! `dpkg-query` (Debian) and `dnf`, `rpm` (Red Hat) for the Kubernetes
//! packages kubeadm, kubelet and kubectl. One installed-package database per
//! host (`<node>/packages.json`) and one package index per repository minor
//! that the world serves (`<world>/repos/v1.32.json`); a host's configured
//! source (`/etc/apt/sources.list.d/kubernetes.list`,
//! `/etc/yum.repos.d/kubernetes.repo`) picks the repository. No network.
//! Installing a package at a version makes that tool report it
//! (`NodeEnv::version_of`). Contract: tests/testbed/CONTRACT.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::kube::NodeEnv;

/// The installed-package database in a node dir.
pub const PACKAGES_FILE: &str = "packages.json";
/// The tools of this module, linked into every Kubernetes host's `bin/`.
pub const PACKAGE_TOOLS: &[&str] = &[
    "apt-get",
    "apt-mark",
    "apt-cache",
    "dpkg-query",
    "dnf",
    "rpm",
];
/// The Kubernetes packages the repositories carry.
pub const KUBE_PACKAGES: &[&str] = &["kubeadm", "kubectl", "kubelet"];
pub const APT_SOURCE: &str = "/etc/apt/sources.list.d/kubernetes.list";
pub const YUM_REPO: &str = "/etc/yum.repos.d/kubernetes.repo";
/// The Debian revision and RPM release pkgs.k8s.io gives every build.
pub const DEB_REVISION: &str = "1.1";
pub const RPM_RELEASE: &str = "150500.1.1";

/// A package index: package name → upstream versions (`1.32.4`).
pub type Index = BTreeMap<String, Vec<String>>;

/// One host's installed packages (upstream versions), holds (`apt-mark
/// hold`), and the repository minor `apt-get update` last fetched.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Db {
    #[serde(default)]
    pub installed: BTreeMap<String, String>,
    #[serde(default)]
    pub held: BTreeSet<String>,
    #[serde(default, rename = "aptLists", skip_serializing_if = "Option::is_none")]
    pub apt_lists: Option<String>,
}

impl Db {
    pub fn load(node_dir: &Path) -> Db {
        std::fs::read_to_string(node_dir.join(PACKAGES_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, node_dir: &Path) -> std::io::Result<()> {
        let tmp = node_dir.join(format!("{PACKAGES_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())?;
        std::fs::rename(tmp, node_dir.join(PACKAGES_FILE))
    }
}

/// The version a package is installed at, as its tool reports it
/// (`v1.32.4`).
pub fn installed_version(node_dir: &Path, pkg: &str) -> Option<String> {
    Db::load(node_dir)
        .installed
        .get(pkg)
        .map(|v| format!("v{v}"))
}

pub fn index_path(world: &Path, minor: &str) -> PathBuf {
    world.join("repos").join(format!("{minor}.json"))
}

pub fn read_index(world: Option<&Path>, minor: &str) -> Option<Index> {
    let text = std::fs::read_to_string(index_path(world?, minor)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the index of repository `minor` (`v1.32`): every Kubernetes
/// package at each of `versions` (`1.32.4`).
pub fn write_index(world: &Path, minor: &str, versions: &[&str]) -> std::io::Result<()> {
    let idx: Index = KUBE_PACKAGES
        .iter()
        .map(|p| {
            (
                p.to_string(),
                versions.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect();
    let path = index_path(world, minor);
    std::fs::create_dir_all(path.parent().expect("repos dir"))?;
    std::fs::write(path, serde_json::to_vec_pretty(&idx).unwrap_or_default())
}

/// `v1.32` from a pkgs.k8s.io URL in a source or repo file.
pub fn source_minor(text: &str) -> Option<String> {
    let rest = &text[text.find("core:/stable:/")? + "core:/stable:/".len()..];
    let minor = rest.split('/').next()?;
    crate::kube::minor_of(minor).map(|_| minor.to_string())
}

fn repo_url(minor: &str, kind: &str) -> String {
    format!("https://pkgs.k8s.io/core:/stable:/{minor}/{kind}")
}

/// The package family a host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Apt,
    Dnf,
}

/// Makes a host look as if kubeadm, kubelet and kubectl were installed at
/// `version` (`v1.31.4`) from the official repository of its minor, held
/// (`apt-mark hold`, or the repo file's `exclude=` line) when `held`.
pub fn seed_host(
    root: &Path,
    node_dir: &Path,
    family: Family,
    version: &str,
    held: bool,
) -> std::io::Result<()> {
    let v = version.trim_start_matches('v');
    let (major, minor) = crate::kube::minor_of(v).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("version {version}"),
        )
    })?;
    let minor = format!("v{major}.{minor}");
    let write = |abs: &str, text: String| {
        let p = root.join(abs.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent"))?;
        std::fs::write(p, text)
    };
    let mut db = Db::default();
    match family {
        Family::Apt => {
            write(APT_SOURCE, apt_source(&minor))?;
            write_lists(&root.join(APT_LISTS.trim_start_matches('/')), Some(&minor))?;
            db.apt_lists = Some(minor.clone());
            if held {
                db.held = KUBE_PACKAGES.iter().map(|p| p.to_string()).collect();
            }
        }
        Family::Dnf => write(YUM_REPO, yum_repo(&minor, held))?,
    }
    db.installed = KUBE_PACKAGES
        .iter()
        .map(|p| (p.to_string(), v.to_string()))
        .collect();
    db.save(node_dir)
}

/// The official apt source line for `minor`.
pub fn apt_source(minor: &str) -> String {
    format!(
        "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.gpg] {}/ /\n",
        repo_url(minor, "deb")
    )
}

/// The official yum repo file for `minor`; `exclude=` acts as the hold.
pub fn yum_repo(minor: &str, exclude: bool) -> String {
    let url = repo_url(minor, "rpm");
    let mut s = format!(
        "[kubernetes]\nname=Kubernetes\nbaseurl={url}/\nenabled=1\ngpgcheck=1\ngpgkey={url}/repodata/repomd.xml.key\n"
    );
    if exclude {
        s.push_str("exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n");
    }
    s
}

/// What a double printed and its exit status.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Out {
    fn out(&mut self, s: impl AsRef<str>) {
        self.stdout.push_str(s.as_ref());
        self.stdout.push('\n');
    }
    fn err(&mut self, s: impl AsRef<str>) {
        self.stderr.push_str(s.as_ref());
        self.stderr.push('\n');
    }
    fn fail(mut self, code: i32, s: impl AsRef<str>) -> Out {
        self.err(s);
        self.code = code;
        self
    }
}

/// Runs `tool` and prints what it printed; returns its exit status.
pub fn main(tool: &str, env: &NodeEnv, args: &[String]) -> i32 {
    let out = run(tool, env, args);
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    out.code
}

pub fn run(tool: &str, env: &NodeEnv, args: &[String]) -> Out {
    match tool {
        "apt-get" => apt_get(env, args),
        "apt-mark" => apt_mark(env, args),
        "apt-cache" => apt_cache(env, args),
        "dpkg-query" => dpkg_query(env, args),
        "dnf" => dnf(env, args),
        "rpm" => rpm(env, args),
        other => Out::default().fail(2, format!("kh-testbed-double: unknown tool name {other:?}")),
    }
}

/// apt's options: `-y`, `-q`, `--allow-…`, `-o K=V` (which takes a value).
fn apt_split(args: &[String]) -> (BTreeSet<String>, Vec<String>) {
    let mut opts = BTreeSet::new();
    let mut pos = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-o" || a == "--option" || a == "-c" {
            it.next();
        } else if let Some(long) = a.strip_prefix("--") {
            opts.insert(long.split('=').next().unwrap_or_default().to_string());
        } else if let Some(short) = a.strip_prefix('-') {
            for c in short.chars() {
                opts.insert(c.to_string());
            }
        } else {
            pos.push(a.clone());
        }
    }
    (opts, pos)
}

/// An exact version, or a glob with a trailing `*` (`1.32.4-*`, as the
/// Kubernetes upgrade docs write it), which the newest match satisfies.
fn version_matches(full: &str, wanted: &str) -> bool {
    match wanted.strip_suffix('*') {
        Some(prefix) => full.starts_with(prefix),
        None => full == wanted,
    }
}

fn deb_version(v: &str) -> String {
    format!("{v}-{DEB_REVISION}")
}

fn rpm_version(v: &str) -> String {
    format!("{v}-{RPM_RELEASE}")
}

/// Compares upstream versions `1.32.4` numerically.
fn cmp_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let nums = |s: &str| -> Vec<u64> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    nums(a).cmp(&nums(b))
}

fn sorted_desc(vs: &[String]) -> Vec<String> {
    let mut v = vs.to_vec();
    v.sort_by(|a, b| cmp_versions(b, a));
    v
}

fn locked(env: &NodeEnv) -> Db {
    Db::load(&env.node_dir)
}

/// The settings of apt's `-o Key=Value` options this double honours (apt's
/// keys are case-insensitive).
#[derive(Debug, Default)]
struct AptConf {
    /// `Dir::Etc::SourceList`: a sources file read instead of
    /// `/etc/apt/sources.list`.
    source_list: Option<PathBuf>,
    /// `Dir::Etc::SourceParts`: the `*.list` directory; `-` reads none.
    source_parts: Option<String>,
    /// `Dir::State::Lists`: where `update` keeps the fetched lists and
    /// `install`/`madison` read them, instead of the host's.
    lists: Option<PathBuf>,
}

/// A path on a double's command line: a host path, resolved under the root
/// unless it already points into it (the agent passes real paths).
fn host_file(env: &NodeEnv, file: &str) -> PathBuf {
    if Path::new(file).starts_with(&env.root) {
        PathBuf::from(file)
    } else {
        env.path(file)
    }
}

fn apt_conf(env: &NodeEnv, args: &[String]) -> AptConf {
    let mut conf = AptConf::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let setting = if a == "-o" || a == "--option" {
            it.next().cloned()
        } else {
            a.strip_prefix("--option=").map(str::to_string)
        };
        let Some((key, value)) = setting.as_deref().and_then(|s| s.split_once('=')) else {
            continue;
        };
        match key.to_ascii_lowercase().as_str() {
            "dir::etc::sourcelist" => conf.source_list = Some(host_file(env, value)),
            "dir::etc::sourceparts" => conf.source_parts = Some(value.to_string()),
            "dir::state::lists" => conf.lists = Some(host_file(env, value)),
            _ => {}
        }
    }
    conf
}

/// The host's own lists directory.
pub const APT_LISTS: &str = "/var/lib/apt/lists";
/// apt names a list file after its URL, `/` becoming `_`.
const LIST_PREFIX: &str = "pkgs.k8s.io_core:_stable:_";

/// Records what an update fetched from pkgs.k8s.io in a lists directory, as
/// apt names the files (`pkgs.k8s.io_core:_stable:_v1.32_deb_Packages`),
/// dropping other minors' lists (apt's list cleanup); `None` drops them all.
pub fn write_lists(dir: &Path, minor: Option<&str>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with(LIST_PREFIX) {
            std::fs::remove_file(dir.join(name))?;
        }
    }
    if let Some(m) = minor {
        for suffix in ["InRelease", "Packages"] {
            std::fs::write(dir.join(format!("{LIST_PREFIX}{m}_deb_{suffix}")), "")?;
        }
    }
    Ok(())
}

/// The minor whose Packages list a lists directory holds.
fn lists_minor(dir: &Path) -> Option<String> {
    std::fs::read_dir(dir).ok()?.find_map(|e| {
        let name = e.ok()?.file_name().to_string_lossy().into_owned();
        let minor = name
            .strip_prefix(LIST_PREFIX)?
            .strip_suffix("_deb_Packages")?;
        crate::kube::minor_of(minor).map(|_| minor.to_string())
    })
}

/// The index apt fetched at its last `apt-get update` (into the host's
/// lists, or the lists directory the call names).
fn apt_index(env: &NodeEnv, db: &Db, conf: &AptConf) -> Option<(String, Index)> {
    let minor = match &conf.lists {
        Some(dir) => lists_minor(dir)?,
        None => db.apt_lists.clone()?,
    };
    let idx = read_index(env.world_dir.as_deref(), &minor)?;
    Some((minor, idx))
}

fn apt_get(env: &NodeEnv, args: &[String]) -> Out {
    let (opts, pos) = apt_split(args);
    let mut out = Out::default();
    let Some(verb) = pos.first() else {
        return out.fail(
            100,
            "E: No command given (the kh testbed double supports update and install)",
        );
    };
    let mut db = locked(env);
    match verb.as_str() {
        "update" => {
            let conf = apt_conf(env, args);
            if let Some(dir) = &conf.lists {
                if !dir.join("partial").is_dir() {
                    return out.fail(
                        100,
                        format!(
                            "E: List directory {}/partial is missing. - Acquire (2: No such file or directory)",
                            dir.display()
                        ),
                    );
                }
            }
            // The sources: the SourceList file (apt's /etc/apt/sources.list
            // is not modelled), then every *.list of SourceParts unless `-`.
            let mut source = String::new();
            if let Some(f) = &conf.source_list {
                source.push_str(&std::fs::read_to_string(f).unwrap_or_default());
            }
            let parts = conf
                .source_parts
                .clone()
                .unwrap_or_else(|| "/etc/apt/sources.list.d".into());
            if parts != "-" {
                let dir = host_file(env, &parts);
                let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "list"))
                    .collect();
                names.sort();
                for n in names {
                    source.push_str(&std::fs::read_to_string(n).unwrap_or_default());
                }
            }
            out.out("Hit:1 http://deb.debian.org/debian bookworm InRelease");
            let lists_dir = conf.lists.clone().unwrap_or_else(|| env.path(APT_LISTS));
            let mut fetched = None;
            let mut failed = None;
            if let Some(minor) = source_minor(&source) {
                let url = repo_url(&minor, "deb");
                if read_index(env.world_dir.as_deref(), &minor).is_none() {
                    out.out(format!("Err:2 {url}  InRelease\n  404  Not Found"));
                    failed = Some(format!(
                        "E: The repository '{url}  InRelease' does not have a Release file."
                    ));
                } else {
                    out.out(format!("Get:2 {url}  InRelease [1,186 B]"));
                    out.out(format!("Get:3 {url}  Packages [4,865 B]"));
                    out.out("Fetched 6,051 B in 0s (60.5 kB/s)");
                    fetched = Some(minor);
                }
            }
            out.out("Reading package lists...");
            if let Err(e) = write_lists(&lists_dir, fetched.as_deref()) {
                return out.fail(100, format!("E: cannot write the package lists: {e}"));
            }
            if conf.lists.is_none() {
                db.apt_lists = fetched;
                if let Err(e) = db.save(&env.node_dir) {
                    return out.fail(100, format!("E: cannot write the package lists: {e}"));
                }
            }
            match failed {
                Some(e) => out.fail(100, e),
                None => out,
            }
        }
        "install" => apt_install(env, db, &opts, &pos[1..], &apt_conf(env, args)),
        other => out.fail(100, format!("E: Invalid operation {other}")),
    }
}

fn apt_install(
    env: &NodeEnv,
    mut db: Db,
    opts: &BTreeSet<String>,
    specs: &[String],
    conf: &AptConf,
) -> Out {
    let mut out = Out::default();
    out.out("Reading package lists...\nBuilding dependency tree...\nReading state information...");
    let index = apt_index(env, &db, conf);
    let mut wanted: Vec<(String, String)> = Vec::new();
    for spec in specs {
        let (name, version) = match spec.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (spec.clone(), None),
        };
        let Some(avail) = index.as_ref().and_then(|(_, i)| i.get(&name)) else {
            return out.fail(100, format!("E: Unable to locate package {name}"));
        };
        let chosen = match version {
            Some(v) => match sorted_desc(avail)
                .into_iter()
                .find(|a| version_matches(&deb_version(a), &v))
            {
                Some(a) => a.clone(),
                None => {
                    return out.fail(100, format!("E: Version '{v}' for '{name}' was not found"))
                }
            },
            None => match sorted_desc(avail).first() {
                Some(a) => a.clone(),
                None => {
                    return out.fail(
                        100,
                        format!("E: Package '{name}' has no installation candidate"),
                    )
                }
            },
        };
        wanted.push((name, chosen));
    }
    let (mut held, mut upgraded, mut downgraded, mut new) = (vec![], vec![], vec![], vec![]);
    for (name, v) in &wanted {
        match db.installed.get(name) {
            Some(cur) if cur == v => {
                out.out(format!(
                    "{name} is already the newest version ({}).",
                    deb_version(v)
                ));
                continue;
            }
            Some(cur) if cmp_versions(v, cur).is_lt() => downgraded.push(name.clone()),
            Some(_) => upgraded.push(name.clone()),
            None => new.push(name.clone()),
        }
        if db.held.contains(name) {
            held.push(name.clone());
        }
    }
    let list = |names: &[String]| format!("  {}", names.join(" "));
    if !held.is_empty() {
        out.out(format!(
            "The following held packages will be changed:\n{}",
            list(&held)
        ));
    }
    if !new.is_empty() {
        out.out(format!(
            "The following NEW packages will be installed:\n{}",
            list(&new)
        ));
    }
    if !upgraded.is_empty() {
        out.out(format!(
            "The following packages will be upgraded:\n{}",
            list(&upgraded)
        ));
    }
    if !downgraded.is_empty() {
        out.out(format!(
            "The following packages will be DOWNGRADED:\n{}",
            list(&downgraded)
        ));
    }
    out.out(format!(
        "{} upgraded, {} newly installed, {} downgraded, 0 to remove and 0 not upgraded.",
        upgraded.len(),
        new.len(),
        downgraded.len()
    ));
    let changes = upgraded.len() + new.len() + downgraded.len();
    if changes == 0 {
        return out;
    }
    let yes = opts.contains("y") || opts.contains("yes") || opts.contains("assume-yes");
    if !held.is_empty() && !opts.contains("allow-change-held-packages") {
        return out.fail(
            100,
            "E: Held packages were changed and -y was used without --allow-change-held-packages.",
        );
    }
    if !downgraded.is_empty() && !opts.contains("allow-downgrades") {
        return out.fail(
            100,
            "E: Packages were downgraded and -y was used without --allow-downgrades.",
        );
    }
    if !yes {
        out.stdout.push_str("Do you want to continue? [Y/n] ");
        return out.fail(1, "Abort.");
    }
    let _timed = super::latency::begin(env, super::latency::Op::PackageInstall);
    for (name, v) in &wanted {
        if db.installed.get(name) == Some(v) {
            continue;
        }
        out.out(format!("Setting up {name} ({}) ...", deb_version(v)));
        if let Err(e) = replace_binary(env, name) {
            return out.fail(
                100,
                format!("E: Sub-process /usr/bin/dpkg returned an error code (1): {name}: {e}"),
            );
        }
        db.installed.insert(name.clone(), v.clone());
    }
    if let Err(e) = db.save(&env.node_dir) {
        return out.fail(100, format!("E: cannot write the dpkg status: {e}"));
    }
    out
}

/// A package upgrade replaces the tool's binary with another file (a new
/// inode, as dpkg and rpm unpack beside and rename): `<node>/bin/<tool>`,
/// if the host has it, becomes a small script that runs this double under
/// the tool's name.
fn replace_binary(env: &NodeEnv, tool: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let link = env.node_dir.join("bin").join(tool);
    if std::fs::symlink_metadata(&link).is_err() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let tmp = env.node_dir.join("bin").join(format!(".{tool}.dpkg-new"));
    std::fs::write(
        &tmp,
        format!("#!/bin/bash\nexec -a {tool} '{}' \"$@\"\n", exe.display()),
    )?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(tmp, link)
}

fn apt_mark(env: &NodeEnv, args: &[String]) -> Out {
    let (_, pos) = apt_split(args);
    let mut out = Out::default();
    let mut db = locked(env);
    let conf = apt_conf(env, args);
    let known = |db: &Db, p: &str| {
        db.installed.contains_key(p)
            || apt_index(env, db, &conf).is_some_and(|(_, i)| i.contains_key(p))
    };
    match pos.first().map(String::as_str) {
        Some("showhold") => {
            for p in &db.held {
                out.out(p);
            }
            out
        }
        Some(verb @ ("hold" | "unhold")) => {
            if pos.len() < 2 {
                return out.fail(100, "E: No packages found");
            }
            for p in &pos[1..] {
                if !known(&db, p) {
                    return out.fail(100, format!("E: Unable to locate package {p}"));
                }
            }
            for p in &pos[1..] {
                if verb == "hold" {
                    if db.held.insert(p.clone()) {
                        out.out(format!("{p} set on hold."));
                    } else {
                        out.out(format!("{p} was already set on hold."));
                    }
                } else if db.held.remove(p) {
                    out.out(format!("Canceled hold on {p}."));
                } else {
                    out.out(format!("{p} was already not on hold."));
                }
            }
            if let Err(e) = db.save(&env.node_dir) {
                return out.fail(100, format!("E: cannot write the dpkg selections: {e}"));
            }
            out
        }
        Some(other) => out.fail(100, format!("E: Invalid operation {other}")),
        None => out.fail(
            100,
            "E: No command given (the kh testbed double supports hold, unhold and showhold)",
        ),
    }
}

fn apt_cache(env: &NodeEnv, args: &[String]) -> Out {
    let (_, pos) = apt_split(args);
    let mut out = Out::default();
    if pos.first().map(String::as_str) != Some("madison") {
        return out.fail(
            100,
            "E: the kh testbed apt-cache double supports only madison",
        );
    }
    let db = locked(env);
    let index = apt_index(env, &db, &apt_conf(env, args));
    for p in &pos[1..] {
        match index.as_ref().and_then(|(m, i)| i.get(p).map(|v| (m, v))) {
            Some((minor, versions)) => {
                for v in sorted_desc(versions) {
                    out.out(format!(
                        "{p:>10} | {} | {} Packages",
                        deb_version(&v),
                        repo_url(minor, "deb ")
                    ));
                }
            }
            None => out.err(format!("N: Unable to locate package {p}")),
        }
    }
    out
}

/// Expands dpkg-query's `${Field}` format with C escapes.
fn dpkg_format(fmt: &str, name: &str, version: &str, held: bool) -> String {
    let status = if held {
        "hold ok installed"
    } else {
        "install ok installed"
    };
    let abbrev = if held { "hi " } else { "ii " };
    fmt.replace("\\n", "\n")
        .replace("\\t", "\t")
        .replace("${Package}", name)
        .replace("${binary:Package}", name)
        .replace("${Version}", version)
        .replace("${Status}", status)
        .replace("${db:Status-Abbrev}", abbrev)
}

fn dpkg_query(env: &NodeEnv, args: &[String]) -> Out {
    let mut out = Out::default();
    let mut fmt = "${binary:Package}\t${Version}\n".to_string();
    let mut show = false;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-W" || a == "--show" {
            show = true;
        } else if a == "-f" || a == "--showformat" {
            fmt = it.next().cloned().unwrap_or_default();
        } else if let Some(f) = a.strip_prefix("-f=").or(a.strip_prefix("--showformat=")) {
            fmt = f.to_string();
        } else if let Some(f) = a.strip_prefix("-f") {
            fmt = f.to_string();
        } else {
            names.push(a.clone());
        }
    }
    if !show {
        return out.fail(
            2,
            "dpkg-query: error: the kh testbed double supports only -W (--show)",
        );
    }
    let db = locked(env);
    for n in &names {
        match db.installed.get(n) {
            Some(v) => {
                out.stdout
                    .push_str(&dpkg_format(&fmt, n, &deb_version(v), db.held.contains(n)))
            }
            None => {
                out.err(format!("dpkg-query: no packages found matching {n}"));
                out.code = 1;
            }
        }
    }
    out
}

/// The `[kubernetes]` repo of the host's yum.repos.d: (minor, excludes).
fn yum_repo_of(env: &NodeEnv) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(env.path(YUM_REPO)).ok()?;
    let mut minor = None;
    let mut exclude = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(url) = line.strip_prefix("baseurl=") {
            minor = source_minor(url);
        } else if let Some(ex) = line.strip_prefix("exclude=") {
            exclude = ex.split_whitespace().map(str::to_string).collect();
        }
    }
    Some((minor?, exclude))
}

/// One repository dnf knows in a call: the host's `[kubernetes]` repo file
/// or a `--repofrompath` one.
struct DnfRepo {
    id: String,
    minor: Option<String>,
    excludes: Vec<String>,
    /// From `--repofrompath` (its URL, for dnf's download errors).
    url: Option<String>,
}

fn dnf(env: &NodeEnv, args: &[String]) -> Out {
    let mut out = Out::default();
    let mut yes = false;
    let mut dupes = false;
    let mut disabled = Vec::new();
    let mut from_path: Vec<String> = Vec::new();
    let mut only: Option<Vec<String>> = None;
    let mut pos = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value =
            |inline: Option<String>| inline.or_else(|| it.next().cloned()).unwrap_or_default();
        match flag {
            "-y" | "--assumeyes" => yes = true,
            "-q" | "--quiet" => {}
            "--showduplicates" => dupes = true,
            "--disableexcludes" => disabled.push(value(inline)),
            "--setopt" => {
                value(inline);
            }
            "--repofrompath" => from_path.push(value(inline)),
            "--repo" | "--repoid" => only
                .get_or_insert_with(Vec::new)
                .extend(value(inline).split(',').map(str::to_string)),
            s if s.starts_with('-') => {
                return out.fail(2, format!("dnf: error: unrecognized arguments: {a}"));
            }
            _ => pos.push(a.clone()),
        }
    }
    let mut repos: Vec<DnfRepo> = Vec::new();
    if let Some((minor, excludes)) = yum_repo_of(env) {
        repos.push(DnfRepo {
            id: "kubernetes".into(),
            minor: Some(minor),
            excludes,
            url: None,
        });
    }
    for spec in &from_path {
        let Some((id, url)) = spec.split_once(',') else {
            return out.fail(
                1,
                format!("Error: Bad format of --repofrompath: {spec} (expected repoid,path)"),
            );
        };
        repos.push(DnfRepo {
            id: id.to_string(),
            minor: source_minor(url),
            excludes: Vec::new(),
            url: Some(url.to_string()),
        });
    }
    if let Some(only) = &only {
        for id in only {
            if !repos.iter().any(|r| &r.id == id) {
                return out.fail(1, format!("Error: Unknown repo: '{id}'"));
            }
        }
        repos.retain(|r| only.contains(&r.id));
    }
    let mut indexes: Vec<(&DnfRepo, Index)> = Vec::new();
    for r in &repos {
        match r
            .minor
            .as_deref()
            .and_then(|m| read_index(env.world_dir.as_deref(), m))
        {
            Some(idx) => indexes.push((r, idx)),
            // A --repofrompath repository that is not served fails the
            // call as dnf's metadata download does; the host's own repo
            // without an index is just empty.
            None if r.url.is_some() => {
                let url = r.url.as_deref().unwrap_or_default().trim_end_matches('/');
                out.err(format!("Errors during downloading metadata for repository '{}':\n  - Status code: 404 for {url}/repodata/repomd.xml (IP: 127.0.0.1)", r.id));
                return out.fail(
                    1,
                    format!("Error: Failed to download metadata for repo '{}': Cannot download repomd.xml: Cannot download repodata/repomd.xml: All mirrors were tried", r.id),
                );
            }
            None => indexes.push((r, Index::new())),
        }
    }
    let lifted = |r: &DnfRepo| disabled.iter().any(|d| d == "all" || *d == r.id);
    // (upstream version, repo id) of `name` in every enabled repository;
    // with `all`, excluded builds too.
    let offered = |name: &str, all: bool| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = Vec::new();
        for (r, idx) in &indexes {
            if !all && !lifted(r) && r.excludes.iter().any(|e| e == name) {
                continue;
            }
            for ver in idx.get(name).cloned().unwrap_or_default() {
                v.push((ver, r.id.clone()));
            }
        }
        v.sort_by(|a, b| cmp_versions(&b.0, &a.0));
        v
    };
    let mut db = locked(env);
    match pos.first().map(String::as_str) {
        Some("install") => {
            let mut wanted = Vec::new();
            for spec in &pos[1..] {
                let Some(name) = KUBE_PACKAGES
                    .iter()
                    .find(|p| spec == *p || spec.starts_with(&format!("{p}-")))
                else {
                    out.out(format!("No match for argument: {spec}"));
                    return out.fail(1, format!("Error: Unable to find a match: {spec}"));
                };
                let ver = spec.strip_prefix(&format!("{name}-"));
                let pick = |vs: Vec<(String, String)>| match ver {
                    Some(v) => vs
                        .into_iter()
                        .find(|(a, _)| a == v || version_matches(&rpm_version(a), v)),
                    None => vs.into_iter().next(),
                };
                if pick(offered(name, true)).is_none() {
                    out.out(format!("No match for argument: {spec}"));
                    return out.fail(1, format!("Error: Unable to find a match: {spec}"));
                }
                let Some((found, _)) = pick(offered(name, false)) else {
                    out.out(format!(
                        "All matches were filtered out by exclude filtering for argument: {spec}"
                    ));
                    return out.fail(1, format!("Error: Unable to find a match: {spec}"));
                };
                wanted.push((name.to_string(), found));
            }
            let mut changes = Vec::new();
            for (name, v) in &wanted {
                if db.installed.get(name) == Some(v) {
                    out.out(format!(
                        "Package {name}-{}.x86_64 is already installed.",
                        rpm_version(v)
                    ));
                } else {
                    let how = match db.installed.get(name) {
                        None => "Installing",
                        Some(cur) if cmp_versions(v, cur).is_lt() => "Downgrading",
                        Some(_) => "Upgrading",
                    };
                    changes.push((name.clone(), v.clone(), how));
                }
            }
            out.out("Dependencies resolved.");
            if changes.is_empty() {
                out.out("Nothing to do.\nComplete!");
                return out;
            }
            for (name, v, how) in &changes {
                out.out(format!(
                    "{how}:\n {name:<12} x86_64  {:<20} kubernetes",
                    rpm_version(v)
                ));
            }
            if !yes {
                out.out("Is this ok [y/N]: Operation aborted.");
                return out.fail(1, "Error: Operation aborted.");
            }
            let _timed = super::latency::begin(env, super::latency::Op::PackageInstall);
            for (name, v, _) in &changes {
                if let Err(e) = replace_binary(env, name) {
                    return out.fail(1, format!("Error: Transaction failed: {name}: {e}"));
                }
                db.installed.insert(name.clone(), v.clone());
            }
            if let Err(e) = db.save(&env.node_dir) {
                return out.fail(1, format!("Error: Transaction failed: {e}"));
            }
            out.out("Complete!");
            out
        }
        Some("list") => {
            let mut installed = Vec::new();
            let mut available = Vec::new();
            for name in &pos[1..] {
                if let Some(v) = db.installed.get(name) {
                    installed.push(format!(
                        "{:<24}{:<32}@kubernetes",
                        format!("{name}.x86_64"),
                        rpm_version(v)
                    ));
                }
                let mut vs = offered(name, false);
                vs.reverse();
                if !dupes {
                    vs = vs.last().cloned().into_iter().collect();
                }
                for (v, repo) in vs {
                    if !dupes && db.installed.get(name) == Some(&v) {
                        continue;
                    }
                    available.push(format!(
                        "{:<24}{:<32}{repo}",
                        format!("{name}.x86_64"),
                        rpm_version(&v)
                    ));
                }
            }
            if installed.is_empty() && available.is_empty() {
                return out.fail(1, "Error: No matching Packages to list");
            }
            if !installed.is_empty() {
                out.out(format!("Installed Packages\n{}", installed.join("\n")));
            }
            if !available.is_empty() {
                out.out(format!("Available Packages\n{}", available.join("\n")));
            }
            out
        }
        Some("makecache") => {
            out.out("Metadata cache created.");
            out
        }
        Some(other) => out.fail(
            1,
            format!("No such command: {other}. Please use /usr/bin/dnf --help"),
        ),
        None => out.fail(
            1,
            "Error: the kh testbed dnf double needs a command (install, list, makecache)",
        ),
    }
}

fn rpm(env: &NodeEnv, args: &[String]) -> Out {
    let mut out = Out::default();
    let mut query = false;
    let mut fmt = None;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-q" | "--query" => query = true,
            "--qf" | "--queryformat" => fmt = it.next().cloned(),
            s if s.starts_with("--qf=") || s.starts_with("--queryformat=") => {
                fmt = s.split_once('=').map(|(_, f)| f.to_string())
            }
            _ => names.push(a.clone()),
        }
    }
    if !query {
        return out.fail(1, "rpm: the kh testbed double supports only -q");
    }
    let db = locked(env);
    for n in &names {
        match db.installed.get(n) {
            Some(v) => match &fmt {
                Some(f) => out.stdout.push_str(
                    &f.replace("%{NAME}", n)
                        .replace("%{VERSION}", v)
                        .replace("%{RELEASE}", RPM_RELEASE)
                        .replace("%{ARCH}", "x86_64")
                        .replace("\\n", "\n")
                        .replace("\\t", "\t"),
                ),
                None => out.out(format!("{n}-{}.x86_64", rpm_version(v))),
            },
            None => {
                out.out(format!("package {n} is not installed"));
                out.code = 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host {
        _dir: tempfile::TempDir,
        env: NodeEnv,
    }

    fn host(family: Family, version: &str, held: bool) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let (root, node, world) = (
            dir.path().join("root"),
            dir.path().join("node"),
            dir.path().join("world"),
        );
        std::fs::create_dir_all(&node).unwrap();
        for (m, vs) in [
            ("v1.31", ["1.31.0", "1.31.4"]),
            ("v1.32", ["1.32.0", "1.32.4"]),
        ] {
            write_index(&world, m, &vs).unwrap();
        }
        seed_host(&root, &node, family, version, held).unwrap();
        let env = NodeEnv::new(&root, &node, Some(&world));
        Host { _dir: dir, env }
    }

    fn sv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn apt_upgrades_a_held_package_only_with_the_flag_and_an_indexed_version() {
        let h = host(Family::Apt, "v1.31.4", true);
        let e = &h.env;
        assert_eq!(e.version_of("kubeadm"), "v1.31.4");
        // The source points at the next minor; install needs an update first.
        std::fs::write(e.path(APT_SOURCE), apt_source("v1.32")).unwrap();
        let o = run("apt-get", e, &sv("install -y kubeadm=1.32.4-1.1"));
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (100, "E: Version '1.32.4-1.1' for 'kubeadm' was not found\n")
        );
        let o = run("apt-get", e, &sv("update"));
        assert_eq!(o.code, 0, "{o:?}");
        assert!(
            o.stdout
                .contains("Get:2 https://pkgs.k8s.io/core:/stable:/v1.32/deb  InRelease"),
            "{}",
            o.stdout
        );
        let o = run("apt-get", e, &sv("install -y kubeadm=1.32.9-1.1"));
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (100, "E: Version '1.32.9-1.1' for 'kubeadm' was not found\n")
        );
        let o = run("apt-get", e, &sv("install -y kubeadm=1.32.4-1.1"));
        assert_eq!(o.code, 100);
        assert!(
            o.stdout
                .contains("The following held packages will be changed:\n  kubeadm"),
            "{}",
            o.stdout
        );
        assert_eq!(
            o.stderr,
            "E: Held packages were changed and -y was used without --allow-change-held-packages.\n"
        );
        assert_eq!(e.version_of("kubeadm"), "v1.31.4");
        let o = run(
            "apt-get",
            e,
            &sv("install -y --allow-change-held-packages kubeadm=1.32.4-1.1"),
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o.stdout.contains("Setting up kubeadm (1.32.4-1.1) ..."));
        assert_eq!(e.version_of("kubeadm"), "v1.32.4");
        assert_eq!(e.version_of("kubelet"), "v1.31.4");
        assert_eq!(e.version(), "v1.32.4");
        // Still held; the same install again changes nothing.
        assert_eq!(
            run("apt-mark", e, &sv("showhold")).stdout,
            "kubeadm\nkubectl\nkubelet\n"
        );
        let o = run("apt-get", e, &sv("install -y kubeadm=1.32.4-1.1"));
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o
            .stdout
            .contains("kubeadm is already the newest version (1.32.4-1.1)."));
        let o = run(
            "apt-get",
            e,
            &sv("install -y --allow-change-held-packages kubeadm=1.32.0-1.1"),
        );
        assert_eq!(
            o.stderr,
            "E: Packages were downgraded and -y was used without --allow-downgrades.\n"
        );
        // The upgrade docs' glob picks the newest matching build.
        let o = run(
            "apt-get",
            e,
            &sv("install -y --allow-change-held-packages kubelet=1.32.4-*"),
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert_eq!(e.version_of("kubelet"), "v1.32.4");
    }

    #[test]
    fn apt_mark_dpkg_query_and_madison_keep_debians_texts() {
        let h = host(Family::Apt, "v1.32.0", false);
        let e = &h.env;
        assert_eq!(
            run("apt-mark", e, &sv("hold kubeadm")).stdout,
            "kubeadm set on hold.\n"
        );
        assert_eq!(
            run("apt-mark", e, &sv("hold kubeadm")).stdout,
            "kubeadm was already set on hold.\n"
        );
        assert_eq!(run("apt-mark", e, &sv("showhold")).stdout, "kubeadm\n");
        assert_eq!(
            run("apt-mark", e, &sv("unhold kubeadm")).stdout,
            "Canceled hold on kubeadm.\n"
        );
        assert_eq!(run("apt-mark", e, &sv("showhold")).stdout, "");
        let o = run(
            "dpkg-query",
            e,
            &["-W".into(), "-f=${Version}".into(), "kubelet".into()],
        );
        assert_eq!((o.code, o.stdout.as_str()), (0, "1.32.0-1.1"));
        let o = run("dpkg-query", e, &sv("-W cri-tools"));
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (1, "dpkg-query: no packages found matching cri-tools\n")
        );
        let o = run("apt-cache", e, &sv("madison kubeadm"));
        assert_eq!(
            o.stdout,
            "   kubeadm | 1.32.4-1.1 | https://pkgs.k8s.io/core:/stable:/v1.32/deb  Packages\n   kubeadm | 1.32.0-1.1 | https://pkgs.k8s.io/core:/stable:/v1.32/deb  Packages\n"
        );
    }

    #[test]
    fn dnf_excludes_act_as_the_hold_and_rpm_reports_the_installed_build() {
        let h = host(Family::Dnf, "v1.31.0", true);
        let e = &h.env;
        let o = run("rpm", e, &sv("-q kubeadm"));
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (0, "kubeadm-1.31.0-150500.1.1.x86_64\n")
        );
        let o = run("rpm", e, &sv("-q cri-tools"));
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (1, "package cri-tools is not installed\n")
        );
        let o = run("dnf", e, &sv("install -y kubeadm-1.31.4"));
        assert_eq!(o.code, 1);
        assert!(o.stdout.contains(
            "All matches were filtered out by exclude filtering for argument: kubeadm-1.31.4"
        ));
        assert_eq!(o.stderr, "Error: Unable to find a match: kubeadm-1.31.4\n");
        let o = run(
            "dnf",
            e,
            &sv("install -y kubeadm-1.31.9 --disableexcludes=kubernetes"),
        );
        assert_eq!(o.stderr, "Error: Unable to find a match: kubeadm-1.31.9\n");
        let o = run("dnf", e, &sv("list --showduplicates kubeadm"));
        assert_eq!(o.stdout.lines().next(), Some("Installed Packages"));
        assert!(!o.stdout.contains("Available"), "{}", o.stdout);
        let o = run(
            "dnf",
            e,
            &sv("list --showduplicates kubeadm --disableexcludes=kubernetes"),
        );
        assert!(
            o.stdout
                .contains("Available Packages\nkubeadm.x86_64          1.31.0-150500.1.1"),
            "{}",
            o.stdout
        );
        let o = run(
            "dnf",
            e,
            &sv("install -y kubeadm-1.31.4 --disableexcludes=kubernetes"),
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o.stdout.ends_with("Complete!\n"));
        assert_eq!(
            run("rpm", e, &sv("-q kubeadm")).stdout,
            "kubeadm-1.31.4-150500.1.1.x86_64\n"
        );
        assert_eq!(e.version_of("kubeadm"), "v1.31.4");
        let o = run(
            "dnf",
            e,
            &sv("install -y kubelet-1.31.4-* --disableexcludes=kubernetes"),
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert_eq!(e.version_of("kubelet"), "v1.31.4");
    }

    #[test]
    fn a_private_source_list_and_lists_dir_leave_the_hosts_own_alone() {
        let h = host(Family::Apt, "v1.31.4", true);
        let e = &h.env;
        let probe = e.path("/var/lib/kh-agent/package-probe/v1.32");
        let lists = probe.join("lists");
        let sources = probe.join("sources.list");
        std::fs::create_dir_all(&probe).unwrap();
        std::fs::write(&sources, apt_source("v1.32")).unwrap();
        let opts = |extra: &str| {
            let mut v = vec![
                "-o".to_string(),
                format!("Dir::Etc::SourceList={}", sources.display()),
                "-o".into(),
                "Dir::Etc::SourceParts=-".into(),
                "-o".into(),
                format!("Dir::State::Lists={}", lists.display()),
            ];
            v.extend(sv(extra));
            v
        };
        // apt needs the lists directory's partial/.
        let o = run("apt-get", e, &[sv("update"), opts("")].concat());
        assert_eq!(o.code, 100, "{o:?}");
        assert!(o.stderr.contains("partial is missing"), "{}", o.stderr);
        std::fs::create_dir_all(lists.join("partial")).unwrap();
        let o = run("apt-get", e, &[sv("update"), opts("")].concat());
        assert_eq!(o.code, 0, "{o:?}");
        assert!(lists
            .join("pkgs.k8s.io_core:_stable:_v1.32_deb_Packages")
            .exists());
        let o = run("apt-cache", e, &opts("madison kubeadm"));
        assert!(
            o.stdout.starts_with(
                "   kubeadm | 1.32.4-1.1 | https://pkgs.k8s.io/core:/stable:/v1.32/deb  Packages\n"
            ),
            "{}",
            o.stdout
        );
        // The host's source, lists and view are still v1.31's.
        assert_eq!(
            std::fs::read_to_string(e.path(APT_SOURCE)).unwrap(),
            apt_source("v1.31")
        );
        assert_eq!(lists_minor(&e.path(APT_LISTS)).as_deref(), Some("v1.31"));
        let o = run("apt-cache", e, &sv("madison kubeadm"));
        assert!(o.stdout.contains("1.31.4-1.1"), "{}", o.stdout);
        assert!(!o.stdout.contains("1.32"), "{}", o.stdout);
        // A minor nobody serves fails as apt does, in the private lists only.
        std::fs::write(&sources, apt_source("v1.39")).unwrap();
        let o = run("apt-get", e, &[sv("update"), opts("")].concat());
        assert_eq!(o.code, 100);
        assert!(
            o.stderr.contains("does not have a Release file"),
            "{}",
            o.stderr
        );
        assert_eq!(lists_minor(&lists), None);
        assert_eq!(Db::load(&e.node_dir).apt_lists.as_deref(), Some("v1.31"));
    }

    #[test]
    fn dnf_repofrompath_and_repo_restrict_the_call_to_that_repository() {
        let h = host(Family::Dnf, "v1.31.4", true);
        let e = &h.env;
        let probe = "--repofrompath=kh-probe,https://pkgs.k8s.io/core:/stable:/v1.32/rpm/";
        let o = run(
            "dnf",
            e,
            &sv(&format!(
                "list --showduplicates --disableexcludes=all {probe} --repo=kh-probe kubeadm"
            )),
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o.stdout.contains("Available Packages\nkubeadm.x86_64          1.32.0-150500.1.1               kh-probe\nkubeadm.x86_64          1.32.4-150500.1.1               kh-probe\n"), "{}", o.stdout);
        assert!(!o.stdout.contains("1.31.0-150500.1.1"), "{}", o.stdout);
        // Without --repo both repositories answer; the host's is excluded.
        let o = run(
            "dnf",
            e,
            &sv(&format!("list --showduplicates {probe} kubeadm")),
        );
        assert!(o.stdout.contains("kh-probe"), "{}", o.stdout);
        assert!(!o.stdout.contains(" kubernetes\n"), "{}", o.stdout);
        let o = run(
            "dnf",
            e,
            &sv("list --showduplicates --repofrompath=kh-probe,https://pkgs.k8s.io/core:/stable:/v1.39/rpm/ --repo=kh-probe kubeadm"),
        );
        assert_eq!(o.code, 1);
        assert!(
            o.stderr
                .contains("Failed to download metadata for repo 'kh-probe'"),
            "{}",
            o.stderr
        );
        let o = run("dnf", e, &sv("list --repo=nope kubeadm"));
        assert_eq!(
            (o.code, o.stderr.as_str()),
            (1, "Error: Unknown repo: 'nope'\n")
        );
        assert_eq!(run("dnf", e, &sv("makecache --repo=kubernetes")).code, 0);
    }

    #[test]
    fn an_install_replaces_the_tools_binary_and_the_kube_version_file_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node");
        std::fs::create_dir_all(node.join("bin")).unwrap();
        let env = NodeEnv::new(dir.path(), &node, None);
        std::fs::write(node.join(crate::kube::NODE_VERSION_FILE), "v1.30.2\n").unwrap();
        assert_eq!(env.version_of("kubelet"), "v1.30.2");
        std::os::unix::fs::symlink("/bin/true", node.join("bin/kubelet")).unwrap();
        let before = std::fs::metadata(node.join("bin/kubelet")).unwrap();
        replace_binary(&env, "kubelet").unwrap();
        let after = std::fs::metadata(node.join("bin/kubelet")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(before.ino(), after.ino());
        let script = std::fs::read_to_string(node.join("bin/kubelet")).unwrap();
        assert!(
            script.starts_with("#!/bin/bash\nexec -a kubelet '"),
            "{script}"
        );
    }
}
