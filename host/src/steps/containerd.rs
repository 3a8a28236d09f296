//! ContainerdCgroup: kubeadm configures the kubelet for the systemd cgroup
//! driver, and containerd must use the same driver, or pods are restarted in
//! a loop under memory pressure. The setting is `SystemdCgroup = true` in the
//! runc runtime options of containerd's CRI plugin.
//!
//! The file is edited with `toml_edit` so that every comment, every custom
//! table (registry mirrors, other runtimes) and the ordering survive; only
//! the one value changes.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml_edit::{DocumentMut, InlineTable, Item, Table, Value};

use crate::error::{tail_or_empty, ContainerdConfigError, StepError};
use crate::host::{Cmd, Host};
use crate::steps::{Applier, FileChange, Plan, Step, StepKind, StepReport};

pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

const CONFIG_DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const CONFIG_DUMP_TIMEOUT: Duration = Duration::from_secs(30);
/// containerd waits for running shims on stop; give it time.
const RESTART_TIMEOUT: Duration = Duration::from_secs(180);

/// The config format: version 2 is containerd 1.x, version 3 containerd 2.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigVersion {
    V2,
    V3,
}

impl ConfigVersion {
    /// The name of the CRI plugin that holds the runtimes in this format.
    fn cri_plugin(self) -> &'static str {
        match self {
            ConfigVersion::V2 => "io.containerd.grpc.v1.cri",
            ConfigVersion::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    /// The table path of the runc runtime options.
    pub fn runc_options_path(self) -> [&'static str; 6] {
        [
            "plugins",
            self.cri_plugin(),
            "containerd",
            "runtimes",
            "runc",
            "options",
        ]
    }

    pub fn number(self) -> i64 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
        }
    }
}

/// Renders a table path as a TOML header would show it.
fn show_path(keys: &[&str]) -> String {
    keys.iter()
        .map(|key| {
            if !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                key.to_string()
            } else {
                format!("\"{key}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn parse(path: &str, text: &str) -> Result<DocumentMut, ContainerdConfigError> {
    text.parse::<DocumentMut>()
        .map_err(|err| ContainerdConfigError::InvalidToml {
            path: path.to_string(),
            message: err.to_string().trim_end().to_string(),
        })
}

fn config_version(path: &str, doc: &DocumentMut) -> Result<ConfigVersion, ContainerdConfigError> {
    let Some(item) = doc.get("version") else {
        return Err(ContainerdConfigError::MissingVersion {
            path: path.to_string(),
        });
    };
    match item.as_integer() {
        Some(2) => Ok(ConfigVersion::V2),
        Some(3) => Ok(ConfigVersion::V3),
        _ => Err(ContainerdConfigError::UnsupportedVersion {
            path: path.to_string(),
            found: item
                .as_value()
                .map(|value| value.to_string().trim().to_string())
                .unwrap_or_else(|| "(a table)".to_string()),
        }),
    }
}

/// Follows `keys` through tables, inline tables and dotted keys alike.
fn lookup<'a>(doc: &'a DocumentMut, keys: &[&str]) -> Option<&'a Item> {
    let mut item = doc.as_item();
    for key in keys {
        item = item.as_table_like()?.get(key)?;
    }
    Some(item)
}

/// The result of setting `SystemdCgroup = true` in a config text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEdit {
    pub version: ConfigVersion,
    /// The new text; equal to the input when nothing had to change.
    pub text: String,
    pub notes: Vec<String>,
}

/// Returns the child table `key` of `item`, creating it in the same style as
/// its parent when missing: a sub-table under a `[header]` table, a dotted
/// key under a dotted key, an inline table inside an inline table.
fn child_table<'a>(
    item: &'a mut Item,
    key: &str,
    shown: &str,
    path: &str,
    created: &mut bool,
) -> Result<&'a mut Item, ContainerdConfigError> {
    let not_a_table = || ContainerdConfigError::NotATable {
        path: path.to_string(),
        key: shown.to_string(),
    };
    let (inline, dotted) = match &*item {
        Item::Table(table) => (false, table.is_dotted()),
        Item::Value(Value::InlineTable(_)) => (true, false),
        _ => return Err(not_a_table()),
    };
    let table = item.as_table_like_mut().ok_or_else(not_a_table)?;
    *created = false;
    if table.get(key).is_none() {
        let child = if inline {
            Item::Value(Value::InlineTable(InlineTable::new()))
        } else {
            let mut child = Table::new();
            if dotted {
                child.set_dotted(true);
            } else {
                // Implicit: no `[header]` of its own unless it gets values,
                // as a hand-written file would have it.
                child.set_implicit(true);
            }
            Item::Table(child)
        };
        table.insert(key, child);
        *created = true;
    }
    let child = table.get_mut(key).ok_or_else(not_a_table)?;
    if !child.is_table_like() {
        return Err(ContainerdConfigError::NotATable {
            path: path.to_string(),
            key: if shown.is_empty() {
                show_path(&[key])
            } else {
                format!("{shown}.{}", show_path(&[key]))
            },
        });
    }
    Ok(child)
}

/// Makes a table that is about to receive values show its header.
fn make_explicit(item: &mut Item) {
    if let Item::Table(table) = item {
        if !table.is_dotted() {
            table.set_implicit(false);
        }
    }
}

/// Sets `SystemdCgroup = true` in the runc options of a containerd config,
/// changing nothing else. `path` only names the file in errors.
pub fn set_systemd_cgroup(path: &str, text: &str) -> Result<CgroupEdit, ContainerdConfigError> {
    let mut doc = parse(path, text)?;
    let version = config_version(path, &doc)?;
    let keys = version.runc_options_path();
    let mut notes = Vec::new();

    let default_runtime = lookup(
        &doc,
        &[
            "plugins",
            version.cri_plugin(),
            "containerd",
            "default_runtime_name",
        ],
    )
    .and_then(Item::as_str)
    .map(str::to_string);
    if let Some(name) = default_runtime.filter(|name| name != "runc") {
        notes.push(format!(
            "the default runtime is `{name}`, not `runc`; kh sets SystemdCgroup for runc only, so set it for `{name}` by hand"
        ));
    }

    let mut item = doc.as_item_mut();
    for (depth, key) in keys.iter().enumerate() {
        let shown = show_path(&keys[..depth]);
        let mut created = false;
        item = child_table(item, key, &shown, path, &mut created)?;
        if created && *key == "runc" {
            // A runc table with only `options` would drop containerd's
            // built-in runtime_type for runc, leaving it unusable.
            make_explicit(item);
            if let Some(table) = item.as_table_like_mut() {
                table.insert(
                    "runtime_type",
                    Item::Value(Value::from("io.containerd.runc.v2")),
                );
            }
            notes.push(format!(
                "created the runc runtime table in {path} with runtime_type = \"io.containerd.runc.v2\""
            ));
        }
    }
    make_explicit(item);
    let inline_options = matches!(item, Item::Value(Value::InlineTable(_)));
    let options = item
        .as_table_like_mut()
        .ok_or_else(|| ContainerdConfigError::NotATable {
            path: path.to_string(),
            key: show_path(&keys),
        })?;
    match options.get_mut("SystemdCgroup") {
        Some(Item::Value(value)) => {
            if value.as_bool() != Some(true) {
                // Keep the value's surrounding whitespace and trailing comment.
                let decor = value.decor().clone();
                let mut new_value = Value::from(true);
                *new_value.decor_mut() = decor;
                *value = new_value;
            }
        }
        Some(_) => {
            return Err(ContainerdConfigError::NotATable {
                path: path.to_string(),
                key: format!("{}.SystemdCgroup (must be a boolean)", show_path(&keys)),
            })
        }
        None => {
            let mut new_value = Value::from(true);
            if inline_options {
                // In `{ a = 1 }` the space before `}` belongs to the last
                // value; hand it on so the result reads `{ a = 1, b = true }`.
                if let Some((_, Item::Value(last))) = options.iter_mut().last() {
                    let suffix = last.decor().suffix().cloned();
                    last.decor_mut().set_suffix("");
                    if let Some(suffix) = suffix {
                        new_value.decor_mut().set_suffix(suffix);
                    }
                    new_value.decor_mut().set_prefix(" ");
                }
            }
            options.insert("SystemdCgroup", Item::Value(new_value));
        }
    }
    let new_text = doc.to_string();

    // Re-read our own output: the edit must parse and say what we meant.
    let reread = parse(path, &new_text)?;
    if lookup(&reread, &keys)
        .and_then(|options| options.as_table_like()?.get("SystemdCgroup")?.as_bool())
        != Some(true)
    {
        return Err(ContainerdConfigError::NotATable {
            path: path.to_string(),
            key: show_path(&keys),
        });
    }
    Ok(CgroupEdit {
        version,
        text: new_text,
        notes,
    })
}

/// The value of `SystemdCgroup` in a config text, with the config version;
/// `None` when the key is absent (containerd then uses cgroupfs).
pub fn systemd_cgroup_value(
    path: &str,
    text: &str,
) -> Result<(ConfigVersion, Option<bool>), ContainerdConfigError> {
    let doc = parse(path, text)?;
    let version = config_version(path, &doc)?;
    let value = lookup(&doc, &version.runc_options_path())
        .and_then(|options| options.as_table_like()?.get("SystemdCgroup")?.as_bool());
    Ok((version, value))
}

/// Checks the output of `containerd config dump`, whose version is the one
/// the installed containerd works in (containerd 2.x migrates version 2
/// files to 3 on load). Returns a description of what is wrong.
pub fn check_dump(dump: &str) -> Result<(), String> {
    let doc = dump
        .parse::<DocumentMut>()
        .map_err(|err| format!("its output is not TOML: {}", err.to_string().trim_end()))?;
    let version = match doc.get("version").and_then(Item::as_integer) {
        Some(2) => ConfigVersion::V2,
        Some(3) => ConfigVersion::V3,
        other => {
            return Err(format!(
                "its output has config version {}, which kh cannot check",
                other
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "(none)".to_string())
            ))
        }
    };
    let keys = version.runc_options_path();
    match lookup(&doc, &keys)
        .and_then(|options| options.as_table_like()?.get("SystemdCgroup")?.as_bool())
    {
        Some(true) => Ok(()),
        Some(false) => Err(format!(
            "the effective config has SystemdCgroup = false under [{}]",
            show_path(&keys)
        )),
        None => Err(format!(
            "the effective config has no SystemdCgroup under [{}]",
            show_path(&keys)
        )),
    }
}

/// The cgroup driver containerd's config selects, for preflight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "driver")]
pub enum CgroupDriverState {
    Systemd {
        version: ConfigVersion,
    },
    /// `explicit` is false when SystemdCgroup is simply absent.
    Cgroupfs {
        version: ConfigVersion,
        explicit: bool,
    },
    /// No config file: containerd runs on its defaults, which use cgroupfs.
    NoConfig,
}

/// Reads (never writes) the cgroup driver from containerd's config.
pub fn containerd_cgroup_driver(host: &Host) -> Result<CgroupDriverState, StepError> {
    let Some(text) = host.read_to_string(CONTAINERD_CONFIG)? else {
        return Ok(CgroupDriverState::NoConfig);
    };
    let (version, value) = systemd_cgroup_value(CONTAINERD_CONFIG, &text)?;
    Ok(match value {
        Some(true) => CgroupDriverState::Systemd { version },
        Some(false) => CgroupDriverState::Cgroupfs {
            version,
            explicit: true,
        },
        None => CgroupDriverState::Cgroupfs {
            version,
            explicit: false,
        },
    })
}

/// Present while a config change awaits a successful containerd restart.
pub const RESTART_PENDING: &str = "/var/lib/kh-agent/containerd-restart-pending";
const RESTART_PENDING_DIR: &str = "/var/lib/kh-agent";

fn restart_argv() -> Vec<String> {
    vec![
        "systemctl".to_string(),
        "restart".to_string(),
        "containerd".to_string(),
    ]
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerdCgroup;

impl ContainerdCgroup {
    /// Puts the previous content back after a failed verification, so a
    /// config containerd would misread never stays in place.
    fn restore(host: &Host, file: &FileChange) -> String {
        let restored = match &file.before {
            Some(before) => host.write_atomic(&file.path, before.as_bytes(), file.mode),
            None => host.remove_file(&file.path).map(drop),
        };
        match restored {
            Ok(()) if file.before.is_some() => {
                "The previous file was restored and containerd was not restarted.".to_string()
            }
            Ok(()) => "The new file was removed again and containerd was not restarted.".to_string(),
            Err(err) => format!(
                "Restoring the previous file failed as well ({err}); restore it from {} by hand before restarting containerd.",
                file.backup.as_deref().unwrap_or("your own backup")
            ),
        }
    }
}

impl Step for ContainerdCgroup {
    fn kind(&self) -> StepKind {
        StepKind::ContainerdCgroup
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::ContainerdCgroup);
        let before = host.read_to_string(CONTAINERD_CONFIG)?;
        let start = match &before {
            Some(text) => text.clone(),
            None => {
                // Generating the defaults is read-only: it prints to stdout.
                let record = host.run_checked(
                    &Cmd::new("containerd")
                        .args(["config", "default"])
                        .timeout(CONFIG_DEFAULT_TIMEOUT),
                )?;
                plan.notes.push(format!(
                    "{CONTAINERD_CONFIG} does not exist; starting from `containerd config default`"
                ));
                record.stdout
            }
        };
        let edit = set_systemd_cgroup(CONTAINERD_CONFIG, &start)?;
        plan.notes.extend(edit.notes);
        if before.as_deref() == Some(edit.text.as_str()) {
            // The file is right; but if an earlier run changed it and its
            // restart failed (or the agent died before restarting), containerd
            // still runs the old driver. Finish that restart now.
            if host.exists(RESTART_PENDING)? {
                plan.notes.push(format!(
                    "an earlier change to {CONTAINERD_CONFIG} was never followed by a successful restart ({RESTART_PENDING} exists); restarting containerd now"
                ));
                plan.commands.push(restart_argv());
            }
            return Ok(plan);
        }
        plan.files.push(FileChange::compute(
            host,
            CONTAINERD_CONFIG,
            before,
            edit.text,
            0o644,
        )?);
        let real = host.path(CONTAINERD_CONFIG)?;
        plan.commands.push(vec![
            "containerd".to_string(),
            "--config".to_string(),
            real.to_string_lossy().into_owned(),
            "config".to_string(),
            "dump".to_string(),
        ]);
        plan.commands.push(restart_argv());
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        let mut applier = match Applier::start(host, StepKind::ContainerdCgroup, plan) {
            Ok(applier) => applier,
            Err(err) => return StepReport::failed(StepKind::ContainerdCgroup, &err),
        };
        let result = (|| {
            for file in &plan.files {
                applier.write_file(file)?;
            }
            let mut verified = false;
            let mut restarted = false;
            for argv in &plan.commands {
                match argv.first().map(String::as_str) {
                    Some("containerd") => {
                        let record = applier.run(argv, CONFIG_DUMP_TIMEOUT)?;
                        let problem = if record.success() {
                            check_dump(&record.stdout).err()
                        } else {
                            Some(format!(
                                "`containerd config dump` failed ({}): {}",
                                record.status_text(),
                                tail_or_empty(&record.stderr_tail)
                            ))
                        };
                        if let Some(mut detail) = problem {
                            let file_version = plan
                                .files
                                .first()
                                .and_then(|file| systemd_cgroup_value(&file.path, &file.after).ok())
                                .map(|(version, _)| version);
                            if file_version == Some(ConfigVersion::V3)
                                && record.stdout.contains("version = 2")
                            {
                                detail.push_str(
                                    "; the installed containerd is 1.x and ignores a version 3 config (written for containerd 2.x): upgrade containerd or regenerate the file with `containerd config default`",
                                );
                            }
                            let restored = plan
                                .files
                                .iter()
                                .map(|file| Self::restore(applier.host(), file))
                                .collect::<Vec<_>>()
                                .join(" ");
                            return Err(StepError::ContainerdVerify {
                                path: CONTAINERD_CONFIG.to_string(),
                                detail,
                                restored,
                            });
                        }
                        verified = true;
                    }
                    Some("systemctl") => {
                        // Recorded before the restart and cleared only after
                        // it succeeds, so a failed restart or a crash here is
                        // retried by the next run instead of reported Unchanged.
                        applier.host().create_dir_all(RESTART_PENDING_DIR)?;
                        applier.host().write_atomic(
                            RESTART_PENDING,
                            b"containerd config changed by kh; restart pending\n",
                            0o600,
                        )?;
                        applier.run(argv, RESTART_TIMEOUT)?.check()?;
                        applier.host().remove_file(RESTART_PENDING)?;
                        restarted = true;
                    }
                    _ => {
                        return Err(StepError::UnexpectedCommand {
                            step: StepKind::ContainerdCgroup,
                            argv: argv.clone(),
                        })
                    }
                }
            }
            let mut message = if plan.files.is_empty() {
                format!("{CONTAINERD_CONFIG} already sets SystemdCgroup = true")
            } else {
                format!("set SystemdCgroup = true in {CONTAINERD_CONFIG}")
            };
            if verified {
                message.push_str(", verified with `containerd config dump`");
            }
            if restarted {
                message.push_str(", restarted containerd");
            }
            Ok(message)
        })();
        applier.finish(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed_lines(before: &str, after: &str) -> Vec<String> {
        similar::TextDiff::from_lines(before, after)
            .iter_all_changes()
            .filter(|change| change.tag() != similar::ChangeTag::Equal)
            .map(|change| format!("{}{}", change.tag(), change.value()))
            .collect()
    }

    #[test]
    fn v2_options_value_is_flipped_in_place() {
        let before = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  BinaryName = \"\"\n  SystemdCgroup = false # was cgroupfs\n  Root = \"\"\n";
        let edit = set_systemd_cgroup("/c.toml", before).unwrap();
        assert_eq!(edit.version, ConfigVersion::V2);
        assert_eq!(
            edit.text,
            "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  BinaryName = \"\"\n  SystemdCgroup = true # was cgroupfs\n  Root = \"\"\n"
        );
        let again = set_systemd_cgroup("/c.toml", &edit.text).unwrap();
        assert_eq!(again.text, edit.text);
    }

    #[test]
    fn v3_uses_the_cri_runtime_plugin() {
        let before = "version = 3\n\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = false\n";
        let edit = set_systemd_cgroup("/c.toml", before).unwrap();
        assert_eq!(edit.version, ConfigVersion::V3);
        assert_eq!(
            changed_lines(before, &edit.text),
            vec!["-  SystemdCgroup = false\n", "+  SystemdCgroup = true\n"]
        );
    }

    #[test]
    fn missing_tables_are_created_as_sub_tables() {
        let before = "version = 2\nroot = \"/var/lib/containerd\"\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n\n[grpc]\n  address = \"/run/containerd/containerd.sock\"\n";
        let edit = set_systemd_cgroup("/c.toml", before).unwrap();
        let (version, value) = systemd_cgroup_value("/c.toml", &edit.text).unwrap();
        assert_eq!((version, value), (ConfigVersion::V2, Some(true)));
        assert!(
            edit.text
                .starts_with(before.split("[grpc]").next().unwrap()),
            "{}",
            edit.text
        );
        assert!(edit.text.contains(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n"
        ), "{}", edit.text);
        assert!(edit.text.contains(
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nSystemdCgroup = true\n"
        ), "{}", edit.text);
        assert!(edit
            .text
            .contains("[grpc]\n  address = \"/run/containerd/containerd.sock\"\n"));
        assert!(
            !edit.text.contains("[plugins]\n"),
            "implicit parents get no header: {}",
            edit.text
        );
        // Every original line is still there.
        for line in before.lines() {
            assert!(edit.text.lines().any(|l| l == line), "lost {line:?}");
        }
    }

    #[test]
    fn a_bare_version_line_grows_the_whole_path() {
        let edit = set_systemd_cgroup("/c.toml", "version = 3\n").unwrap();
        assert_eq!(
            systemd_cgroup_value("/c.toml", &edit.text).unwrap(),
            (ConfigVersion::V3, Some(true))
        );
    }

    #[test]
    fn dotted_and_inline_forms_keep_their_form() {
        let dotted = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\noptions.SystemdCgroup = false\n";
        let edit = set_systemd_cgroup("/c.toml", dotted).unwrap();
        assert_eq!(
            edit.text,
            dotted.replace(
                "options.SystemdCgroup = false",
                "options.SystemdCgroup = true"
            )
        );

        let dotted_missing = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\noptions.BinaryName = \"runc\"\n";
        let edit = set_systemd_cgroup("/c.toml", dotted_missing).unwrap();
        assert_eq!(
            edit.text,
            format!("{dotted_missing}options.SystemdCgroup = true\n")
        );

        let inline = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\nrunc = { runtime_type = \"io.containerd.runc.v2\", options = { BinaryName = \"runc\" } }\n";
        let edit = set_systemd_cgroup("/c.toml", inline).unwrap();
        assert_eq!(
            systemd_cgroup_value("/c.toml", &edit.text).unwrap(),
            (ConfigVersion::V2, Some(true))
        );
        assert_eq!(
            edit.text.lines().count(),
            inline.lines().count(),
            "{}",
            edit.text
        );
        assert!(
            edit.text
                .contains("options = { BinaryName = \"runc\", SystemdCgroup = true }"),
            "{}",
            edit.text
        );
    }

    #[test]
    fn unusable_configs_are_refused() {
        let cases: &[(&str, &str)] = &[
            ("[plugins.cri]\n  systemd_cgroup = true\n", "has no `version` key"),
            ("version = 1\n", "declares `version = 1`"),
            ("version = \"2\"\n", "declares `version = \"2\"`"),
            ("version = 2\n[plugins\n", "is not valid TOML"),
            ("version = 2\nplugins = 5\n", "`plugins` is not a table"),
            (
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\noptions = \"x\"\n",
                "is not a table",
            ),
        ];
        for (text, want) in cases {
            let err = set_systemd_cgroup("/etc/containerd/config.toml", text).unwrap_err();
            let message = err.to_string();
            assert!(message.contains(want), "{text:?}: {message}");
            assert!(message.contains("/etc/containerd/config.toml"), "{message}");
        }
    }

    #[test]
    fn other_default_runtimes_are_noted() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndefault_runtime_name = \"nvidia\"\n";
        let edit = set_systemd_cgroup("/c.toml", text).unwrap();
        assert!(
            edit.notes.iter().any(|note| note.contains("`nvidia`")),
            "{:?}",
            edit.notes
        );
    }

    #[test]
    fn dumps_are_checked_in_their_own_version() {
        let v2 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n";
        assert_eq!(check_dump(v2), Ok(()));
        let v3 = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = true\n";
        assert_eq!(check_dump(v3), Ok(()));
        assert!(check_dump(&v2.replace("true", "false"))
            .unwrap_err()
            .contains("SystemdCgroup = false"));
        assert!(check_dump("version = 2\n")
            .unwrap_err()
            .contains("no SystemdCgroup"));
        assert!(check_dump("root = 1\n").is_err());
        assert!(check_dump("[[[").is_err());
    }
}
