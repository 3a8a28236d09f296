//! Whole-step tests on temp host roots with test doubles on the search path.

mod common;

use common::{TestHost, FRESH_FSTAB, FRESH_FSTAB_AFTER, KERNEL, SWAPS_HEADER};
use kh_host::steps::containerd::{check_dump, set_systemd_cgroup, CONTAINERD_CONFIG};
use kh_host::steps::modules::MODULES_LOAD_FILE;
use kh_host::steps::sysctl::SYSCTL_FILE;
use kh_host::{
    prepare_steps, ContainerdCgroup, DisableSwap, HostError, KernelModules, Outcome, Step,
    StepKind, StepReport, Sysctl,
};

const MODULES_FILE_CONTENT: &str =
    "# Managed by kh: kernel modules Kubernetes needs, loaded at boot by systemd-modules-load.\noverlay\nbr_netfilter\n";
const SYSCTL_FILE_CONTENT: &str =
    "# Managed by kh: kernel settings Kubernetes needs, applied at boot by systemd-sysctl.\n\
net.bridge.bridge-nf-call-iptables = 1\n\
net.bridge.bridge-nf-call-ip6tables = 1\n\
net.ipv4.ip_forward = 1\n";

fn run_all(t: &TestHost, dry_run: bool) -> Vec<StepReport> {
    let host = t.host();
    prepare_steps()
        .iter()
        .map(|step| step.run(&host, dry_run))
        .collect()
}

fn outcomes(reports: &[StepReport]) -> Vec<(StepKind, Outcome)> {
    reports.iter().map(|r| (r.step, r.outcome)).collect()
}

fn all(outcome: Outcome) -> Vec<(StepKind, Outcome)> {
    vec![
        (StepKind::DisableSwap, outcome),
        (StepKind::KernelModules, outcome),
        (StepKind::Sysctl, outcome),
        (StepKind::ContainerdCgroup, outcome),
    ]
}

#[test]
fn a_fresh_host_is_prepared_and_a_second_run_changes_nothing() {
    let t = TestHost::new();
    t.fresh();

    let first = run_all(&t, false);
    assert_eq!(outcomes(&first), all(Outcome::Changed), "{first:#?}");
    for report in &first {
        assert_eq!(report.error, None);
        assert!(!report.dry_run);
    }

    // Swap: fstab commented out, the original kept once, swap turned off.
    assert_eq!(t.read("/etc/fstab"), FRESH_FSTAB_AFTER);
    assert_eq!(t.read("/etc/fstab.kh-bak"), FRESH_FSTAB);
    assert_eq!(t.read("/proc/swaps"), SWAPS_HEADER);

    // Modules: file written; overlay is built in and br_netfilter is visible
    // through /proc/sys/net/bridge, so modprobe never ran.
    assert_eq!(t.read(MODULES_LOAD_FILE), MODULES_FILE_CONTENT);
    assert!(first[1].commands.is_empty());

    // Sysctl: file written, values applied through /proc/sys.
    assert_eq!(t.read(SYSCTL_FILE), SYSCTL_FILE_CONTENT);
    for key in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
        "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    ] {
        assert_eq!(t.read(key), "1\n", "{key}");
    }
    assert_eq!(first[2].sysctls.len(), 3);

    // containerd: generated from the real defaults with exactly one change,
    // no backup (there was no file), verified by the real containerd.
    let config = t.read(CONTAINERD_CONFIG);
    let defaults = common::real_config_default();
    assert_eq!(
        config,
        set_systemd_cgroup(CONTAINERD_CONFIG, &defaults)
            .unwrap()
            .text
    );
    assert_eq!(
        common::diff_changes(&kh_host::steps::unified_diff(
            CONTAINERD_CONFIG,
            Some(&defaults),
            &config
        )),
        vec![
            "-            SystemdCgroup = false",
            "+            SystemdCgroup = true"
        ]
    );
    assert!(!t.exists("/etc/containerd/config.toml.kh-bak"));
    let dump = common::real_dump(&t.root().join("etc/containerd/config.toml"));
    assert!(dump.contains("SystemdCgroup = true"));
    assert_eq!(check_dump(&dump), Ok(()));
    let dump_record = &first[3].commands[0];
    assert_eq!(
        dump_record.argv[..2],
        ["containerd".to_string(), "--config".to_string()]
    );
    assert_eq!(dump_record.exit_code, Some(0));

    assert_eq!(
        t.calls(),
        vec!["swapoff -a", "systemctl restart containerd"]
    );

    let second = run_all(&t, false);
    assert_eq!(outcomes(&second), all(Outcome::Unchanged), "{second:#?}");
    for report in &second {
        assert!(report.commands.is_empty(), "{report:#?}");
        assert!(report.files.is_empty(), "{report:#?}");
    }
    assert_eq!(
        t.calls(),
        vec!["swapoff -a", "systemctl restart containerd"],
        "no second swapoff, modprobe or restart"
    );
    assert_eq!(t.read("/etc/fstab.kh-bak"), FRESH_FSTAB);
}

#[test]
fn a_dry_run_touches_no_byte_under_the_root() {
    let t = TestHost::new();
    t.fresh();
    let before = t.snapshot();
    let reports = run_all(&t, true);
    assert_eq!(t.snapshot(), before);
    assert_eq!(outcomes(&reports), all(Outcome::Changed), "{reports:#?}");
    assert!(t.calls().is_empty(), "no double ran: {:?}", t.calls());
    for report in &reports {
        assert!(report.dry_run);
        assert!(report.commands.is_empty());
        assert!(
            report.message.starts_with("dry run: "),
            "{}",
            report.message
        );
    }
    assert_eq!(reports[0].files[0].after, FRESH_FSTAB_AFTER);
    assert!(reports[0].message.contains("would run `swapoff -a`"));
    assert!(reports[3]
        .message
        .contains("would run `systemctl restart containerd`"));
}

#[test]
fn a_plan_is_applied_exactly_and_plans_of_other_steps_are_refused() {
    let t = TestHost::new();
    t.fresh();
    let host = t.host();
    let plan = DisableSwap.plan(&host).unwrap();
    assert_eq!(
        plan.commands,
        vec![vec!["swapoff".to_string(), "-a".to_string()]]
    );
    assert_eq!(plan.files.len(), 1);
    assert_eq!(plan.files[0].backup.as_deref(), Some("/etc/fstab.kh-bak"));
    assert_eq!(
        plan.files[0].diff,
        "--- a/etc/fstab\n+++ b/etc/fstab\n@@ -1,4 +1,4 @@\n # /etc/fstab: static file system information.\n UUID=3f1c-aa01 / ext4 errors=remount-ro 0 1\n-/swapfile none swap sw 0 0\n+#/swapfile none swap sw 0 0\n #/dev/sdb2 none swap sw 0 0\n"
    );

    let wrong = Sysctl::default().apply(&host, &plan);
    assert_eq!(wrong.outcome, Outcome::Failed);
    assert!(wrong.error.unwrap().contains("bug in the caller"));
    assert_eq!(t.read("/etc/fstab"), FRESH_FSTAB);

    let report = DisableSwap.apply(&host, &plan);
    assert_eq!(report.outcome, Outcome::Changed);
    assert_eq!(report.files, plan.files);
    assert_eq!(report.commands.len(), 1);
    assert_eq!(report.commands[0].argv, ["swapoff", "-a"]);
}

#[test]
fn swap_is_turned_off_when_only_proc_swaps_shows_it() {
    let t = TestHost::new();
    let fstab = "UUID=1 / ext4 defaults 0 1\n#/swap.img none swap sw 0 0\n";
    t.write("/etc/fstab", fstab);
    t.write(
        "/proc/swaps",
        &format!("{SWAPS_HEADER}/dev/zram0 partition 1024 0 100\n"),
    );
    let report = DisableSwap.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Changed);
    assert!(report.files.is_empty());
    assert_eq!(t.read("/etc/fstab"), fstab);
    assert!(!t.exists("/etc/fstab.kh-bak"));
    assert_eq!(t.calls(), vec!["swapoff -a"]);
    assert_eq!(
        DisableSwap.run(&t.host(), false).outcome,
        Outcome::Unchanged
    );
    assert_eq!(t.calls(), vec!["swapoff -a"]);
}

#[test]
fn a_failing_swapoff_fails_the_step_with_its_stderr() {
    let t = TestHost::new();
    t.fresh();
    t.fail(
        "swapoff",
        "swapoff: /swapfile: swapoff failed: Cannot allocate memory\n",
    );
    let report = DisableSwap.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.unwrap();
    assert!(error.contains("swapoff -a"), "{error}");
    assert!(error.contains("Cannot allocate memory"), "{error}");
    assert!(error.contains("exit status 1"), "{error}");
}

#[test]
fn modules_that_are_not_loaded_are_modprobed_once() {
    let t = TestHost::new();
    t.write("/proc/modules", "ext4 1 0 - Live 0x0\n");
    t.write("/proc/sys/kernel/osrelease", &format!("{KERNEL}\n"));
    let host = t.host();
    let first = KernelModules::default().run(&host, false);
    assert_eq!(first.outcome, Outcome::Changed, "{first:#?}");
    assert_eq!(t.calls(), vec!["modprobe overlay", "modprobe br_netfilter"]);
    assert_eq!(
        first.message,
        format!("wrote {MODULES_LOAD_FILE}; loaded overlay, br_netfilter")
    );
    let second = KernelModules::default().run(&host, false);
    assert_eq!(second.outcome, Outcome::Unchanged, "{second:#?}");
    assert_eq!(t.calls().len(), 2);
}

#[test]
fn modules_in_sys_module_count_as_loaded() {
    let t = TestHost::new();
    t.write("/sys/module/overlay/refcnt", "0\n");
    t.write("/sys/module/br_netfilter/refcnt", "0\n");
    t.write(MODULES_LOAD_FILE, MODULES_FILE_CONTENT);
    let report = KernelModules::default().run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Unchanged, "{report:#?}");
    assert!(t.calls().is_empty());
}

#[test]
fn a_module_neither_built_in_nor_loadable_fails_naming_module_and_kernel() {
    let t = TestHost::new();
    t.write("/proc/modules", "");
    t.write("/proc/sys/kernel/osrelease", &format!("{KERNEL}\n"));
    t.write(
        &format!("/lib/modules/{KERNEL}/modules.builtin"),
        "kernel/fs/overlayfs/overlay.ko\n",
    );
    t.fail(
        "modprobe",
        &format!(
            "modprobe: FATAL: Module br_netfilter not found in directory /lib/modules/{KERNEL}\n"
        ),
    );
    let report = KernelModules::default().run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    assert_eq!(t.calls(), vec!["modprobe br_netfilter"]);
    let error = report.error.unwrap();
    assert!(error.contains("`br_netfilter`"), "{error}");
    assert!(error.contains(&format!("on kernel {KERNEL}")), "{error}");
    assert!(error.contains("linux-modules-extra"), "{error}");
    assert!(error.contains("rebuild the kernel"), "{error}");
    assert!(error.contains("Module br_netfilter not found"), "{error}");
    assert_eq!(report.commands[0].exit_code, Some(1));
    // The modules file is still written: it is right whatever the kernel.
    assert_eq!(t.read(MODULES_LOAD_FILE), MODULES_FILE_CONTENT);
}

#[test]
fn a_sysctl_that_does_not_stick_fails_naming_key_wanted_and_actual() {
    let t = TestHost::new();
    t.write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1\n");
    t.write("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "1\n");
    std::fs::create_dir_all(t.root().join("proc/sys/net/ipv4")).unwrap();
    // Writes to /dev/null are accepted and read back empty, like a value
    // the kernel silently ignores.
    std::os::unix::fs::symlink("/dev/null", t.root().join("proc/sys/net/ipv4/ip_forward")).unwrap();
    let report = Sysctl::default().run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    let error = report.error.unwrap();
    assert!(
        error.contains(
            "sysctl `net.ipv4.ip_forward` did not keep its value: wanted `1`, read back ``"
        ),
        "{error}"
    );
}

#[test]
fn a_missing_bridge_sysctl_points_at_br_netfilter() {
    let t = TestHost::new();
    t.write("/proc/sys/net/ipv4/ip_forward", "1\n");
    let report = Sysctl::default().run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.unwrap();
    assert!(
        error.contains("net.bridge.bridge-nf-call-iptables"),
        "{error}"
    );
    assert!(error.contains("br_netfilter"), "{error}");
    assert!(
        !t.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"),
        "sysctl files are never created"
    );
}

#[test]
fn a_failing_restart_reports_argv_status_and_stderr() {
    let t = TestHost::new();
    t.fresh();
    let stderr = "Job for containerd.service failed because the control process exited with error code.\n\
                  See \"systemctl status containerd.service\" and \"journalctl -xeu containerd.service\" for details.\n";
    t.fail("systemctl", stderr);
    let report = ContainerdCgroup.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    let error = report.error.clone().unwrap();
    assert!(
        error.contains("command `systemctl restart containerd` failed (exit status 1)"),
        "{error}"
    );
    assert!(
        error.contains("Job for containerd.service failed"),
        "{error}"
    );
    let restart = report.commands.last().unwrap();
    assert_eq!(restart.argv, ["systemctl", "restart", "containerd"]);
    assert_eq!(restart.exit_code, Some(1));
    assert!(restart
        .stderr_tail
        .contains("journalctl -xeu containerd.service"));
    assert_eq!(t.calls(), vec!["systemctl restart containerd"]);
    // The file was written and verified before the restart failed.
    assert_eq!(report.files.len(), 1);
    assert!(t.read(CONTAINERD_CONFIG).contains("SystemdCgroup = true"));

    // containerd still runs the old driver, so the next run must not report
    // Unchanged: it restarts without touching the file again.
    t.heal("systemctl");
    let plan = ContainerdCgroup.plan(&t.host()).unwrap();
    assert!(plan.files.is_empty(), "{plan:#?}");
    assert_eq!(
        plan.commands,
        vec![vec!["systemctl", "restart", "containerd"]]
    );
    let again = ContainerdCgroup.run(&t.host(), false);
    assert_eq!(again.outcome, Outcome::Changed, "{again:#?}");
    assert_eq!(
        t.calls(),
        vec![
            "systemctl restart containerd",
            "systemctl restart containerd"
        ]
    );
    // Done: a third run has nothing left to do.
    let third = ContainerdCgroup.run(&t.host(), false);
    assert_eq!(third.outcome, Outcome::Unchanged, "{third:#?}");
    assert_eq!(t.calls().len(), 2);
}

#[test]
fn paths_that_leave_the_root_are_rejected() {
    let t = TestHost::new();
    let host = t.host();
    let err = host.write_atomic("/etc/../../x", b"x", 0o644).unwrap_err();
    assert!(matches!(err, HostError::PathTraversal { .. }), "{err}");
    assert!(!t.tmp().join("x").exists());
    assert!(!t.root().join("x").exists());
    assert!(matches!(
        host.read_to_string("/../etc/passwd"),
        Err(HostError::PathTraversal { .. })
    ));
    assert!(matches!(
        host.backup_once("etc/fstab", ".bak"),
        Err(HostError::RelativePath { .. })
    ));
}

#[test]
fn a_missing_tool_fails_the_step_naming_the_search_path() {
    let t = TestHost::new();
    t.fresh();
    std::fs::remove_file(t.bin().join("swapoff")).unwrap();
    let host = t.isolated_host(&["cat"]);
    let report = DisableSwap.run(&host, false);
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.unwrap();
    assert!(
        error.contains("command `swapoff` not found in search path ["),
        "{error}"
    );
}
