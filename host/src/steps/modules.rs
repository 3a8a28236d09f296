//! KernelModules: containerd's overlay snapshotter needs `overlay`, and
//! kube-proxy / CNI bridges need `br_netfilter` so bridged traffic passes
//! iptables. The modules are persisted in modules-load.d and loaded now.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{HostError, StepError};
use crate::host::Host;
use crate::steps::{Applier, FileChange, Plan, Step, StepKind, StepReport};

pub const MODULES_LOAD_FILE: &str = "/etc/modules-load.d/kh-kubernetes.conf";
const MODPROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// A validated kernel module name, as `lsmod` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModuleName(String);

impl ModuleName {
    pub fn new(name: &str) -> Result<Self, HostError> {
        let invalid = |reason| HostError::InvalidModuleName {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > 55 {
            return Err(invalid("it is longer than the kernel allows"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid("only letters, digits, `_` and `-` are allowed"));
        }
        if name.starts_with('-') {
            // modprobe would read it as an option.
            return Err(invalid("it must not start with `-`"));
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The kernel treats `-` and `_` in module names as the same character;
    /// `/proc/modules` and `/sys/module` always show `_`.
    fn canonical(&self) -> String {
        canonical(&self.0)
    }
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

impl std::fmt::Display for ModuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ModuleName {
    type Error = HostError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<ModuleName> for String {
    fn from(value: ModuleName) -> Self {
        value.0
    }
}

/// The modules every kubeadm node needs.
pub fn required_modules() -> Vec<ModuleName> {
    ["overlay", "br_netfilter"]
        .iter()
        .filter_map(|name| ModuleName::new(name).ok())
        .collect()
}

/// The content of the modules-load.d file for `modules`.
pub fn render_modules_load(modules: &[ModuleName]) -> String {
    let mut out =
        String::from("# Managed by kh: kernel modules Kubernetes needs, loaded at boot by systemd-modules-load.\n");
    for module in modules {
        out.push_str(module.as_str());
        out.push('\n');
    }
    out
}

/// Why a module counts as loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadedBy {
    ProcModules,
    SysModule,
    Builtin,
    BridgeSysctls,
}

impl LoadedBy {
    fn describe(self) -> &'static str {
        match self {
            LoadedBy::ProcModules => "loaded (listed in /proc/modules)",
            LoadedBy::SysModule => "loaded (present in /sys/module)",
            LoadedBy::Builtin => "built into the kernel (listed in modules.builtin)",
            LoadedBy::BridgeSysctls => "active (/proc/sys/net/bridge exists)",
        }
    }
}

/// The running kernel's release, from `<root>/proc/sys/kernel/osrelease`.
pub fn kernel_release(host: &Host) -> Result<Option<String>, HostError> {
    Ok(host
        .read_to_string("/proc/sys/kernel/osrelease")?
        .map(|text| text.trim().to_string())
        .filter(|release| !release.is_empty()))
}

/// Module names in `/proc/modules` text (first field of each line).
pub fn parse_proc_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(canonical)
        .collect()
}

/// Module names in `modules.builtin` (or `modules.dep`) text: the file stem
/// of each path, such as `kernel/fs/overlayfs/overlay.ko`.
pub fn parse_module_paths(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split(':').next())
        .map(str::trim)
        .filter(|path| !path.is_empty())
        .filter_map(|path| path.rsplit('/').next())
        .filter_map(|file| file.split(".ko").next())
        .map(canonical)
        .collect()
}

/// Whether `module` is built in according to `modules.builtin` of `kernel`.
pub fn is_builtin(
    host: &Host,
    module: &ModuleName,
    kernel: Option<&str>,
) -> Result<bool, HostError> {
    let Some(kernel) = kernel else {
        return Ok(false);
    };
    let text = host.read_to_string(&format!("/lib/modules/{kernel}/modules.builtin"))?;
    Ok(text
        .map(|text| parse_module_paths(&text).contains(&module.canonical()))
        .unwrap_or(false))
}

/// Whether `modules.dep` of `kernel` lists `module` as loadable. `None` when
/// there is no `modules.dep` to tell.
pub fn is_loadable(
    host: &Host,
    module: &ModuleName,
    kernel: Option<&str>,
) -> Result<Option<bool>, HostError> {
    let Some(kernel) = kernel else {
        return Ok(None);
    };
    let text = host.read_to_string(&format!("/lib/modules/{kernel}/modules.dep"))?;
    Ok(text.map(|text| parse_module_paths(&text).contains(&module.canonical())))
}

/// Whether `module` is available now, and why. Built-in modules count as
/// loaded: they never appear in `/proc/modules`, and modprobe of a built-in
/// module is a no-op that some minimal images cannot even run.
pub fn module_loaded(
    host: &Host,
    module: &ModuleName,
    kernel: Option<&str>,
) -> Result<Option<LoadedBy>, HostError> {
    let name = module.canonical();
    if let Some(text) = host.read_to_string("/proc/modules")? {
        if parse_proc_modules(&text).contains(&name) {
            return Ok(Some(LoadedBy::ProcModules));
        }
    }
    if host.exists(&format!("/sys/module/{name}"))? {
        return Ok(Some(LoadedBy::SysModule));
    }
    if is_builtin(host, module, kernel)? {
        return Ok(Some(LoadedBy::Builtin));
    }
    // The net.bridge sysctls appear exactly when br_netfilter is active,
    // which also covers kernels whose modules.builtin is not installed.
    if name == "br_netfilter" && host.exists("/proc/sys/net/bridge")? {
        return Ok(Some(LoadedBy::BridgeSysctls));
    }
    Ok(None)
}

#[derive(Debug, Clone)]
pub struct KernelModules {
    pub modules: Vec<ModuleName>,
}

impl Default for KernelModules {
    fn default() -> Self {
        Self {
            modules: required_modules(),
        }
    }
}

impl Step for KernelModules {
    fn kind(&self) -> StepKind {
        StepKind::KernelModules
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::KernelModules);
        let wanted = render_modules_load(&self.modules);
        let before = host.read_to_string(MODULES_LOAD_FILE)?;
        if before.as_deref() != Some(wanted.as_str()) {
            plan.files.push(FileChange::compute(
                host,
                MODULES_LOAD_FILE,
                before,
                wanted,
                0o644,
            )?);
        }
        let kernel = kernel_release(host)?;
        for module in &self.modules {
            match module_loaded(host, module, kernel.as_deref())? {
                Some(by) => plan.notes.push(format!("{module}: {}", by.describe())),
                None => plan
                    .commands
                    .push(vec!["modprobe".to_string(), module.as_str().to_string()]),
            }
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        let mut applier = match Applier::start(host, StepKind::KernelModules, plan) {
            Ok(applier) => applier,
            Err(err) => return StepReport::failed(StepKind::KernelModules, &err),
        };
        let result = (|| {
            for file in &plan.files {
                applier.write_file(file)?;
            }
            let mut loaded = Vec::new();
            for argv in &plan.commands {
                let module = match argv.as_slice() {
                    [program, module] if program == "modprobe" => ModuleName::new(module)?,
                    _ => {
                        return Err(StepError::UnexpectedCommand {
                            step: StepKind::KernelModules,
                            argv: argv.clone(),
                        })
                    }
                };
                let record = applier.run(argv, MODPROBE_TIMEOUT)?;
                if !record.success() {
                    let kernel = kernel_release(applier.host())?;
                    // A module built in after all needs no modprobe; only a
                    // module that is truly unavailable fails the step.
                    if is_builtin(applier.host(), &module, kernel.as_deref())? {
                        continue;
                    }
                    return Err(StepError::ModuleLoad {
                        module: module.to_string(),
                        kernel: kernel.unwrap_or_else(|| "(unknown release)".to_string()),
                        status: record.status_text(),
                        argv: record.argv,
                        stderr_tail: record.stderr_tail,
                    });
                }
                loaded.push(module.to_string());
            }
            let mut parts = Vec::new();
            if !plan.files.is_empty() {
                parts.push(format!("wrote {MODULES_LOAD_FILE}"));
            }
            if !loaded.is_empty() {
                parts.push(format!("loaded {}", loaded.join(", ")));
            }
            Ok(parts.join("; "))
        })();
        applier.finish(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_validated() {
        assert_eq!(
            ModuleName::new("br_netfilter").unwrap().as_str(),
            "br_netfilter"
        );
        ModuleName::new("nf-conntrack").unwrap();
        for bad in ["", "-r", "a b", "../x", "a/b", "x;reboot"] {
            assert!(ModuleName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn modules_load_file_has_a_header_and_one_module_per_line() {
        assert_eq!(
            render_modules_load(&required_modules()),
            "# Managed by kh: kernel modules Kubernetes needs, loaded at boot by systemd-modules-load.\noverlay\nbr_netfilter\n"
        );
    }

    #[test]
    fn proc_modules_and_module_paths_parse() {
        let proc_modules = "br_netfilter 32768 0 - Live 0x0000000000000000\nbridge 311296 1 br_netfilter, Live 0x0\nnf-x 1 0 - Live 0x0\n";
        assert_eq!(
            parse_proc_modules(proc_modules),
            vec!["br_netfilter", "bridge", "nf_x"]
        );
        let builtin = "kernel/fs/overlayfs/overlay.ko\nkernel/net/bridge/br_netfilter.ko\n\n";
        assert_eq!(parse_module_paths(builtin), vec!["overlay", "br_netfilter"]);
        let dep = "kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/llc/llc.ko.xz\nkernel/fs/overlayfs/overlay.ko.zst:\n";
        assert_eq!(parse_module_paths(dep), vec!["br_netfilter", "overlay"]);
    }
}
