//! DisableSwap: the kubelet refuses to start with swap on (by default), so
//! swap goes off now (`swapoff -a`) and stays off after a reboot (fstab).

use std::time::Duration;

use crate::error::StepError;
use crate::host::Host;
use crate::steps::{Applier, FileChange, Plan, Step, StepKind, StepReport};

pub const FSTAB: &str = "/etc/fstab";
pub const PROC_SWAPS: &str = "/proc/swaps";

/// Swapping out a lot of memory can take a while on a loaded host.
const SWAPOFF_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether one fstab line is an active swap entry: not a comment, and its
/// third field (the file system type) is exactly `swap`.
fn is_swap_entry(line: &str) -> bool {
    let content = line.trim_start();
    if content.is_empty() || content.starts_with('#') {
        return false;
    }
    content.split_whitespace().nth(2) == Some("swap")
}

/// Comments out every active swap entry by prefixing `#`, leaving every other
/// byte (spacing, tabs, line endings, a missing final newline) as it was.
pub fn comment_out_swap(fstab: &str) -> String {
    let mut out = String::with_capacity(fstab.len() + 16);
    for line in fstab.split_inclusive('\n') {
        if is_swap_entry(line) {
            out.push('#');
        }
        out.push_str(line);
    }
    out
}

/// The swap areas `/proc/swaps` lists below its header line.
pub fn active_swaps(proc_swaps: &str) -> Vec<String> {
    proc_swaps
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Whether swap is in use now, through `<root>/proc/swaps`. A missing file
/// (a kernel without swap support) means no swap.
pub fn swap_active(host: &Host) -> Result<bool, StepError> {
    Ok(host
        .read_to_string(PROC_SWAPS)?
        .map(|text| !active_swaps(&text).is_empty())
        .unwrap_or(false))
}

/// Whether fstab still has active swap entries, which would come back at boot.
pub fn fstab_has_swap(host: &Host) -> Result<bool, StepError> {
    Ok(host
        .read_to_string(FSTAB)?
        .map(|text| text.lines().any(is_swap_entry))
        .unwrap_or(false))
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DisableSwap;

impl Step for DisableSwap {
    fn kind(&self) -> StepKind {
        StepKind::DisableSwap
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::DisableSwap);
        let mut fstab_changes = false;
        match host.read_to_string(FSTAB)? {
            Some(before) => {
                let after = comment_out_swap(&before);
                if after != before {
                    fstab_changes = true;
                    plan.files.push(FileChange::compute(
                        host,
                        FSTAB,
                        Some(before),
                        after,
                        0o644,
                    )?);
                }
            }
            None => plan
                .notes
                .push(format!("{FSTAB} does not exist; nothing to persist")),
        }
        let active = host
            .read_to_string(PROC_SWAPS)?
            .map(|text| active_swaps(&text))
            .unwrap_or_default();
        if !active.is_empty() {
            plan.notes
                .push(format!("swap in use: {}", active.join(", ")));
        }
        // After editing fstab, swapoff also catches entries that systemd
        // activated from it but /proc/swaps of this root did not show.
        if !active.is_empty() || fstab_changes {
            plan.commands
                .push(vec!["swapoff".to_string(), "-a".to_string()]);
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        let mut applier = match Applier::start(host, StepKind::DisableSwap, plan) {
            Ok(applier) => applier,
            Err(err) => return StepReport::failed(StepKind::DisableSwap, &err),
        };
        let result = (|| {
            for file in &plan.files {
                applier.write_file(file)?;
            }
            for argv in &plan.commands {
                applier.run(argv, SWAPOFF_TIMEOUT)?.check()?;
            }
            Ok(match (plan.files.is_empty(), plan.commands.is_empty()) {
                (false, false) => {
                    "commented out swap in /etc/fstab and turned swap off".to_string()
                }
                (false, true) => "commented out swap in /etc/fstab".to_string(),
                _ => "turned swap off".to_string(),
            })
        })();
        applier.finish(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, input, expected output) for [`comment_out_swap`].
    const CORPUS: &[(&str, &str, &str)] = &[
        (
            "swap partition by device",
            "/dev/sda1 / ext4 defaults 0 1\n/dev/sda2 none swap sw 0 0\n",
            "/dev/sda1 / ext4 defaults 0 1\n#/dev/sda2 none swap sw 0 0\n",
        ),
        (
            "swap file",
            "/swapfile none swap sw 0 0\n",
            "#/swapfile none swap sw 0 0\n",
        ),
        (
            "UUID and LABEL devices",
            "UUID=0a1b-2c3d none swap sw 0 0\nLABEL=SWAP none swap defaults,pri=5 0 0\n",
            "#UUID=0a1b-2c3d none swap sw 0 0\n#LABEL=SWAP none swap defaults,pri=5 0 0\n",
        ),
        (
            "already commented entries stay untouched",
            "#/swapfile none swap sw 0 0\n  # /dev/sdb2 none swap sw 0 0\n",
            "#/swapfile none swap sw 0 0\n  # /dev/sdb2 none swap sw 0 0\n",
        ),
        (
            "swap only in the mount point or options is not swap",
            "/dev/sdb1 /mnt/swapdata ext4 defaults,noswap 0 2\n/dev/sdc1 /swap xfs defaults 0 0\n",
            "/dev/sdb1 /mnt/swapdata ext4 defaults,noswap 0 2\n/dev/sdc1 /swap xfs defaults 0 0\n",
        ),
        (
            "tabs and odd spacing are kept byte for byte",
            "/dev/sda1\t/\text4\tdefaults\t0 1\n   /dev/sda3 \t none\t\tswap   sw  0   0\n",
            "/dev/sda1\t/\text4\tdefaults\t0 1\n#   /dev/sda3 \t none\t\tswap   sw  0   0\n",
        ),
        (
            "blank lines and comments survive",
            "# /etc/fstab: static file system information.\n\n/dev/sda2 none swap sw 0 0\n\n",
            "# /etc/fstab: static file system information.\n\n#/dev/sda2 none swap sw 0 0\n\n",
        ),
        (
            "no trailing newline",
            "/dev/sda1 / ext4 defaults 0 1\n/swap.img\tnone\tswap\tsw\t0\t0",
            "/dev/sda1 / ext4 defaults 0 1\n#/swap.img\tnone\tswap\tsw\t0\t0",
        ),
        (
            "CRLF line endings",
            "/dev/sda2 none swap sw 0 0\r\n/dev/sda1 / ext4 defaults 0 1\r\n",
            "#/dev/sda2 none swap sw 0 0\r\n/dev/sda1 / ext4 defaults 0 1\r\n",
        ),
        (
            "a type that merely starts with swap is not swap",
            "/dev/sda4 none swapfs sw 0 0\n/dev/sda5 none SWAP sw 0 0\n",
            "/dev/sda4 none swapfs sw 0 0\n/dev/sda5 none SWAP sw 0 0\n",
        ),
        ("empty file", "", ""),
        (
            "short lines are not swap",
            "/dev/sda1 /\nswap\n",
            "/dev/sda1 /\nswap\n",
        ),
    ];

    #[test]
    fn fstab_corpus() {
        for (name, input, expected) in CORPUS {
            assert_eq!(comment_out_swap(input), *expected, "case: {name}");
            // A second pass must find nothing left to do.
            assert_eq!(comment_out_swap(expected), *expected, "idempotence: {name}");
        }
    }

    #[test]
    fn proc_swaps_entries_are_those_below_the_header() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(active_swaps(header).is_empty());
        assert!(active_swaps("").is_empty());
        let active = format!("{header}/dev/sda2                               partition\t1048572\t\t0\t\t-2\n/swapfile file 1024 0 -3\n");
        assert_eq!(active_swaps(&active), vec!["/dev/sda2", "/swapfile"]);
    }
}
