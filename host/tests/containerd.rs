//! The ContainerdCgroup step against the real containerd (1.6, config
//! version 2) and a containerd 2.x double (config version 3).

mod common;

use common::{diff_changes, TestHost};
use kh_host::steps::containerd::{
    containerd_cgroup_driver, CgroupDriverState, ConfigVersion, CONTAINERD_CONFIG,
};
use kh_host::{ContainerdCgroup, Outcome, Step};

const BACKUP: &str = "/etc/containerd/config.toml.kh-bak";

const CUSTOM_V2: &str = r#"# containerd config kept by the platform team; do not reformat.
version = 2
root = "/var/lib/containerd"   # on the fast disk
oom_score = -999

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]

  # CRI settings for kubeadm clusters.
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.10"

    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          # BinaryName stays empty: use runc from PATH.
          BinaryName = ""
          SystemdCgroup = false

    [plugins."io.containerd.grpc.v1.cri".registry.mirrors]

      # Our pull-through cache comes first.
      [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
        endpoint = ["https://mirror.example.internal", "https://registry-1.docker.io"]

      [plugins."io.containerd.grpc.v1.cri".registry.mirrors."quay.io"]
        endpoint = ["https://quay-mirror.example.internal"]
"#;

const V3_FIXTURE: &str = r#"# containerd 2.x configuration
version = 3
root = '/var/lib/containerd'
state = '/run/containerd'

[grpc]
  address = '/run/containerd/containerd.sock'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'

    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'registry.k8s.io/pause:3.10'

  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false

    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'

      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
          runtime_type = 'io.containerd.runc.v2'

          [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
            BinaryName = ''
            SystemdCgroup = false
"#;

/// A containerd 2.x stand-in: `config dump` of a version 3 file prints it
/// back (containerd 2.x keeps version 3 files as they are).
fn install_containerd2_double(t: &TestHost) {
    t.double(
        "containerd",
        "case \"$1\" in\n\
           --version) echo 'containerd github.com/containerd/containerd/v2 v2.0.0 207ad711eabd375a01713109a8a197d197ff6542' ;;\n\
           --config) cat \"$2\" ;;\n\
           *) echo \"containerd double: unsupported arguments: $*\" >&2; exit 2 ;;\n\
         esac",
    );
}

#[test]
fn a_real_v2_default_config_gets_one_line_changed() {
    let t = TestHost::new();
    let defaults = common::real_config_default();
    t.write(CONTAINERD_CONFIG, &defaults);
    let host = t.host();
    assert_eq!(
        containerd_cgroup_driver(&host).unwrap(),
        CgroupDriverState::Cgroupfs {
            version: ConfigVersion::V2,
            explicit: true
        }
    );

    let report = ContainerdCgroup.run(&host, false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert_eq!(
        diff_changes(&report.files[0].diff),
        vec![
            "-            SystemdCgroup = false",
            "+            SystemdCgroup = true"
        ]
    );
    assert_eq!(
        t.read(CONTAINERD_CONFIG),
        defaults.replace("SystemdCgroup = false", "SystemdCgroup = true")
    );
    assert_eq!(t.read(BACKUP), defaults);
    assert!(
        common::real_dump(&t.root().join("etc/containerd/config.toml"))
            .contains("SystemdCgroup = true")
    );
    assert_eq!(t.calls(), vec!["systemctl restart containerd"]);
    assert_eq!(
        containerd_cgroup_driver(&host).unwrap(),
        CgroupDriverState::Systemd {
            version: ConfigVersion::V2
        }
    );

    let second = ContainerdCgroup.run(&host, false);
    assert_eq!(second.outcome, Outcome::Unchanged, "{second:#?}");
    assert!(second.commands.is_empty());
    assert_eq!(t.calls(), vec!["systemctl restart containerd"]);
}

#[test]
fn comments_and_registry_mirrors_survive() {
    let t = TestHost::new();
    t.write(CONTAINERD_CONFIG, CUSTOM_V2);
    let report = ContainerdCgroup.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert_eq!(
        diff_changes(&report.files[0].diff),
        vec![
            "-          SystemdCgroup = false",
            "+          SystemdCgroup = true"
        ]
    );
    let after = t.read(CONTAINERD_CONFIG);
    assert_eq!(
        after,
        CUSTOM_V2.replace("SystemdCgroup = false", "SystemdCgroup = true")
    );
    let dump = common::real_dump(&t.root().join("etc/containerd/config.toml"));
    assert!(dump.contains("https://mirror.example.internal"), "{dump}");
    assert!(dump.contains("SystemdCgroup = true"));
}

#[test]
fn a_missing_systemd_cgroup_line_is_the_only_line_added() {
    let t = TestHost::new();
    let before = CUSTOM_V2.replace("          SystemdCgroup = false\n", "");
    t.write(CONTAINERD_CONFIG, &before);
    let report = ContainerdCgroup.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    let changes = diff_changes(&report.files[0].diff);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].trim(), "+SystemdCgroup = true");
    let after = t.read(CONTAINERD_CONFIG);
    for line in before.lines() {
        assert!(after.lines().any(|l| l == line), "lost {line:?}");
    }
}

#[test]
fn a_v3_config_is_edited_in_the_cri_runtime_plugin() {
    let t = TestHost::new();
    install_containerd2_double(&t);
    t.write(CONTAINERD_CONFIG, V3_FIXTURE);
    let host = t.host();
    let report = ContainerdCgroup.run(&host, false);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert_eq!(
        t.read(CONTAINERD_CONFIG),
        V3_FIXTURE.replace("SystemdCgroup = false", "SystemdCgroup = true")
    );
    assert_eq!(
        diff_changes(&report.files[0].diff),
        vec![
            "-            SystemdCgroup = false",
            "+            SystemdCgroup = true"
        ]
    );
    assert_eq!(t.read(BACKUP), V3_FIXTURE);
    let real = t.root().join("etc/containerd/config.toml");
    assert_eq!(
        t.calls(),
        vec![
            format!("containerd --config {} config dump", real.display()),
            "systemctl restart containerd".to_string(),
        ]
    );
    assert_eq!(
        containerd_cgroup_driver(&host).unwrap(),
        CgroupDriverState::Systemd {
            version: ConfigVersion::V3
        }
    );
    assert_eq!(
        ContainerdCgroup.run(&host, false).outcome,
        Outcome::Unchanged
    );
    assert_eq!(t.calls().len(), 2);
}

#[test]
fn a_v3_config_under_containerd_1x_is_rolled_back() {
    // The real containerd here is 1.6: it reads a version 3 file as version
    // 2 and ignores the runtime options, which verification must catch.
    let t = TestHost::new();
    t.write(CONTAINERD_CONFIG, V3_FIXTURE);
    let report = ContainerdCgroup.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    let error = report.error.unwrap();
    assert!(
        error.contains("containerd is 1.x and ignores a version 3 config"),
        "{error}"
    );
    assert!(error.contains("The previous file was restored"), "{error}");
    assert_eq!(t.read_bytes(CONTAINERD_CONFIG), V3_FIXTURE.as_bytes());
    assert!(t.calls().is_empty(), "no restart: {:?}", t.calls());
}

#[test]
fn a_v1_config_is_refused_and_left_byte_identical() {
    let t = TestHost::new();
    let v1 = "# old style\nroot = \"/var/lib/containerd\"\n\n[plugins.cri]\n  systemd_cgroup = true\n  [plugins.cri.containerd]\n    snapshotter = \"overlayfs\"\n";
    t.write(CONTAINERD_CONFIG, v1);
    let host = t.host();
    let report = ContainerdCgroup.run(&host, false);
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.unwrap();
    assert!(error.contains(CONTAINERD_CONFIG), "{error}");
    assert!(error.contains("no `version` key"), "{error}");
    assert!(error.contains("containerd config migrate"), "{error}");
    assert!(error.contains("containerd config default"), "{error}");
    assert_eq!(t.read_bytes(CONTAINERD_CONFIG), v1.as_bytes());
    assert!(!t.exists(BACKUP));
    assert!(report.commands.is_empty() && t.calls().is_empty());
    assert!(containerd_cgroup_driver(&host).is_err());
}

#[test]
fn invalid_toml_is_refused_with_the_parser_message() {
    let t = TestHost::new();
    let broken = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"\n  sandbox_image = \"x\"\n";
    t.write(CONTAINERD_CONFIG, broken);
    let report = ContainerdCgroup.run(&t.host(), false);
    assert_eq!(report.outcome, Outcome::Failed);
    let error = report.error.unwrap();
    assert!(error.contains("is not valid TOML"), "{error}");
    assert!(error.contains("TOML parse error at line 2"), "{error}");
    assert_eq!(t.read_bytes(CONTAINERD_CONFIG), broken.as_bytes());
    assert!(!t.exists(BACKUP));
    assert!(t.calls().is_empty());
}

#[test]
fn a_missing_config_is_generated_from_the_real_defaults() {
    let t = TestHost::new();
    let host = t.host();
    assert_eq!(
        containerd_cgroup_driver(&host).unwrap(),
        CgroupDriverState::NoConfig
    );
    let plan = ContainerdCgroup.plan(&host).unwrap();
    assert_eq!(plan.files[0].before, None);
    assert_eq!(plan.files[0].backup, None);
    assert_eq!(plan.files[0].mode, 0o644);
    assert!(plan.files[0]
        .diff
        .starts_with("--- /dev/null\n+++ b/etc/containerd/config.toml\n"));
    assert!(plan
        .notes
        .iter()
        .any(|n| n.contains("containerd config default")));
    assert!(!t.exists(CONTAINERD_CONFIG), "planning writes nothing");
    let report = ContainerdCgroup.apply(&host, &plan);
    assert_eq!(report.outcome, Outcome::Changed, "{report:#?}");
    assert_eq!(t.read(CONTAINERD_CONFIG), plan.files[0].after);
}
