//! Sysctl: kubeadm's preflight requires bridged traffic to pass iptables and
//! IPv4 forwarding to be on. The values are persisted in sysctl.d, applied
//! through `/proc/sys` and read back, because another agent or a later
//! sysctl.d file can silently reset them.

use crate::error::StepError;
use crate::host::{Host, SysctlKey};
use crate::steps::{Applier, FileChange, Plan, Step, StepKind, StepReport, SysctlChange};

pub const SYSCTL_FILE: &str = "/etc/sysctl.d/99-kh-kubernetes.conf";

/// The sysctls every kubeadm node needs, with their values.
pub fn required_sysctls() -> Vec<(SysctlKey, String)> {
    [
        ("net.bridge.bridge-nf-call-iptables", "1"),
        ("net.bridge.bridge-nf-call-ip6tables", "1"),
        ("net.ipv4.ip_forward", "1"),
    ]
    .iter()
    .filter_map(|(key, value)| SysctlKey::new(key).ok().map(|key| (key, value.to_string())))
    .collect()
}

/// The content of the sysctl.d file for `settings`.
pub fn render_sysctl_conf(settings: &[(SysctlKey, String)]) -> String {
    let mut out = String::from(
        "# Managed by kh: kernel settings Kubernetes needs, applied at boot by systemd-sysctl.\n",
    );
    for (key, value) in settings {
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

/// Sysctl values can hold several whitespace-separated fields (the kernel
/// prints tabs); compare them field by field.
pub fn same_value(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

#[derive(Debug, Clone)]
pub struct Sysctl {
    pub settings: Vec<(SysctlKey, String)>,
}

impl Default for Sysctl {
    fn default() -> Self {
        Self {
            settings: required_sysctls(),
        }
    }
}

impl Step for Sysctl {
    fn kind(&self) -> StepKind {
        StepKind::Sysctl
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::Sysctl);
        let wanted = render_sysctl_conf(&self.settings);
        let before = host.read_to_string(SYSCTL_FILE)?;
        if before.as_deref() != Some(wanted.as_str()) {
            plan.files.push(FileChange::compute(
                host,
                SYSCTL_FILE,
                before,
                wanted,
                0o644,
            )?);
        }
        for (key, value) in &self.settings {
            let current = host.read_sysctl(key)?;
            if current.as_deref().map(|current| same_value(current, value)) != Some(true) {
                if current.is_none() {
                    plan.notes.push(format!(
                        "{key} does not exist yet; it appears once its kernel module is loaded"
                    ));
                }
                plan.sysctls.push(SysctlChange {
                    key: key.clone(),
                    before: current,
                    after: value.clone(),
                });
            }
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        let mut applier = match Applier::start(host, StepKind::Sysctl, plan) {
            Ok(applier) => applier,
            Err(err) => return StepReport::failed(StepKind::Sysctl, &err),
        };
        let result = (|| {
            if let Some(argv) = plan.commands.first() {
                return Err(StepError::UnexpectedCommand {
                    step: StepKind::Sysctl,
                    argv: argv.clone(),
                });
            }
            for file in &plan.files {
                applier.write_file(file)?;
            }
            for change in &plan.sysctls {
                applier
                    .host()
                    .write_sysctl(&change.key, &change.after)
                    .map_err(|source| StepError::SysctlWrite {
                        key: change.key.to_string(),
                        wanted: change.after.clone(),
                        source: Box::new(source),
                    })?;
                applier.record_sysctl(change);
            }
            // Read every written value back: procfs accepts writes that the
            // kernel then clamps or ignores.
            for change in &plan.sysctls {
                let actual = applier.host().read_sysctl(&change.key)?.unwrap_or_default();
                if !same_value(&actual, &change.after) {
                    return Err(StepError::SysctlNotApplied {
                        key: change.key.to_string(),
                        wanted: change.after.clone(),
                        actual,
                    });
                }
            }
            let mut parts = Vec::new();
            if !plan.files.is_empty() {
                parts.push(format!("wrote {SYSCTL_FILE}"));
            }
            if !plan.sysctls.is_empty() {
                let keys: Vec<String> = plan.sysctls.iter().map(|c| c.key.to_string()).collect();
                parts.push(format!("set {}", keys.join(", ")));
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
    fn sysctl_conf_renders_all_three_keys() {
        assert_eq!(
            render_sysctl_conf(&required_sysctls()),
            "# Managed by kh: kernel settings Kubernetes needs, applied at boot by systemd-sysctl.\n\
             net.bridge.bridge-nf-call-iptables = 1\n\
             net.bridge.bridge-nf-call-ip6tables = 1\n\
             net.ipv4.ip_forward = 1\n"
        );
    }

    #[test]
    fn values_compare_field_by_field() {
        let cases = [
            ("1", "1", true),
            ("1\n", "1", true),
            ("4096\t87380\t6291456", "4096 87380 6291456", true),
            ("0", "1", false),
            ("", "1", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(same_value(a, b), want, "{a:?} vs {b:?}");
        }
    }
}
