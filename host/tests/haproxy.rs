//! The LoadBalancer step against the real `haproxy -c` (Debian's haproxy
//! package), with a recording `systemctl` double.

mod common;

use std::path::PathBuf;

use common::TestHost;
use kh_host::steps::haproxy::{
    Layout, CANDIDATE_SUFFIX, HAPROXY_CONFIG, INCLUDE_FILE, RELOAD_PENDING, SYSTEMD_DROP_IN,
};
use kh_host::{Backend, Host, LoadBalancerConfig, Outcome, Step};

/// The doubles first, then the real haproxy in /usr/sbin. Fails loudly when
/// haproxy is missing: these tests exist to run it.
fn host(t: &TestHost) -> Host {
    assert!(
        std::path::Path::new("/usr/sbin/haproxy").exists(),
        "these tests need the real haproxy: apt-get install haproxy"
    );
    Host::new(
        t.root(),
        vec![
            t.bin(),
            PathBuf::from("/usr/sbin"),
            PathBuf::from("/usr/bin"),
            PathBuf::from("/bin"),
        ],
    )
}

fn lb(names: &[(&str, &str)]) -> LoadBalancerConfig {
    LoadBalancerConfig::new(
        Some("10.0.0.5".parse().unwrap()),
        6443,
        names
            .iter()
            .map(|(name, ip)| Backend {
                name: name.to_string(),
                address: ip.parse().unwrap(),
                port: 6443,
            })
            .collect(),
    )
    .unwrap()
}

#[test]
fn a_fresh_host_gets_the_whole_config_checked_and_haproxy_reloaded_once() {
    let t = TestHost::new();
    let h = host(&t);
    let step = lb(&[("cp-1", "10.0.0.11"), ("cp-2", "10.0.0.12")]);

    let dry = step.run(&h, true);
    assert_eq!(dry.outcome, Outcome::Changed, "{dry:?}");
    assert!(!t.exists(HAPROXY_CONFIG));

    let first = step.run(&h, false);
    assert_eq!(first.outcome, Outcome::Changed, "{first:?}");
    assert_eq!(t.read(HAPROXY_CONFIG), step.render(Layout::Whole));
    let argv: Vec<String> = first.commands.iter().map(|c| c.argv.join(" ")).collect();
    assert_eq!(argv.len(), 2, "{argv:?}");
    assert!(
        argv[0].starts_with("haproxy -c -f ")
            && argv[0].ends_with(&format!("/etc/haproxy/haproxy.cfg{CANDIDATE_SUFFIX}")),
        "{argv:?}"
    );
    assert_eq!(first.commands[0].exit_code, Some(0), "{first:?}");
    assert_eq!(argv[1], "systemctl reload-or-restart haproxy");
    assert_eq!(t.calls(), ["systemctl reload-or-restart haproxy"]);
    assert!(!t.exists(&format!("{HAPROXY_CONFIG}{CANDIDATE_SUFFIX}")));
    assert!(!t.exists(RELOAD_PENDING));
    assert!(
        first.message.contains("2 backends (cp-1, cp-2)"),
        "{first:?}"
    );

    // Again: nothing to do, no reload; HAProxy is only asked whether it runs.
    let again = step.run(&h, false);
    assert_eq!(again.outcome, Outcome::Unchanged, "{again:?}");
    assert!(again.commands.is_empty());
    assert_eq!(
        t.calls(),
        [
            "systemctl reload-or-restart haproxy",
            "systemctl is-active haproxy"
        ]
    );

    // A third control plane: rewritten, checked, reloaded.
    let three = lb(&[
        ("cp-1", "10.0.0.11"),
        ("cp-2", "10.0.0.12"),
        ("cp-3", "10.0.0.13"),
    ]);
    let r = three.run(&h, false);
    assert_eq!(r.outcome, Outcome::Changed, "{r:?}");
    assert!(r.files[0]
        .diff
        .contains("+    server cp-3 10.0.0.13:6443 check"));
    assert_eq!(
        t.calls().last().map(String::as_str),
        Some("systemctl reload-or-restart haproxy")
    );

    // HAProxy stopped (a reboot with the unit disabled): the same config
    // makes the step start it.
    t.double(
        "systemctl",
        "if [ \"$1\" = is-active ]; then echo inactive; exit 3; fi",
    );
    let r = three.run(&h, false);
    assert_eq!(r.outcome, Outcome::Changed, "{r:?}");
    assert!(r.files.is_empty());
    let calls = t.calls();
    assert_eq!(
        calls[calls.len() - 2..],
        [
            "systemctl is-active haproxy",
            "systemctl reload-or-restart haproxy"
        ]
    );
}

#[test]
fn a_failed_reload_is_finished_by_the_next_run() {
    let t = TestHost::new();
    let h = host(&t);
    let step = lb(&[("cp-1", "10.0.0.11")]);
    t.fail("systemctl", "Job for haproxy.service failed.\n");
    let r = step.run(&h, false);
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    // The checked file is in place; the reload is owed.
    assert_eq!(t.read(HAPROXY_CONFIG), step.render(Layout::Whole));
    assert!(t.exists(RELOAD_PENDING));
    t.heal("systemctl");
    let r = step.run(&h, false);
    assert_eq!(r.outcome, Outcome::Changed, "{r:?}");
    assert!(r.files.is_empty());
    assert_eq!(
        t.calls().last().map(String::as_str),
        Some("systemctl reload-or-restart haproxy")
    );
    assert!(!t.exists(RELOAD_PENDING));
    assert_eq!(step.run(&h, false).outcome, Outcome::Unchanged);
}

const OPERATOR_CFG: &str = "global\n    maxconn 2000\n\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\nfrontend web\n    bind 10.0.0.5:80\n    default_backend app\n\nbackend app\n    server app1 10.0.0.50:8080 check\n";

#[test]
fn an_operator_config_is_kept_and_kh_uses_its_own_include() {
    let t = TestHost::new();
    let h = host(&t);
    t.write(HAPROXY_CONFIG, OPERATOR_CFG);
    t.write("/etc/haproxy/conf.d/00-extra.cfg", "# the operator's\n");
    let step = lb(&[("cp-1", "10.0.0.11")]);
    let r = step.run(&h, false);
    assert_eq!(r.outcome, Outcome::Changed, "{r:?}");
    assert_eq!(t.read(HAPROXY_CONFIG), OPERATOR_CFG, "never edited");
    assert_eq!(t.read(INCLUDE_FILE), step.render(Layout::Include));
    assert!(t.read(SYSTEMD_DROP_IN).contains("-f /etc/haproxy/conf.d"));
    // The check saw what the service loads: haproxy.cfg, then conf.d in
    // order, with the candidate in the include's place.
    let check = &r.commands[0].argv;
    let files: Vec<&str> = check
        .iter()
        .skip(2)
        .filter(|a| *a != "-f")
        .map(|a| a.rsplit("/etc/haproxy/").next().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "haproxy.cfg",
            "conf.d/00-extra.cfg",
            "conf.d/kh-kubernetes.cfg.kh-candidate"
        ]
    );
    // A new command line needs a restart, not a reload.
    assert_eq!(
        t.calls(),
        ["systemctl daemon-reload", "systemctl restart haproxy"]
    );
    assert_eq!(step.run(&h, false).outcome, Outcome::Unchanged);
    assert_eq!(
        t.calls().last().map(String::as_str),
        Some("systemctl is-active haproxy")
    );

    // The operator's config now clashes with kh's: the new include is
    // refused, the working one stays, nothing is reloaded.
    let working = t.read(INCLUDE_FILE);
    t.write(
        HAPROXY_CONFIG,
        &format!("{OPERATOR_CFG}\nfrontend kh-apiserver\n    bind 10.0.0.5:7000\n    default_backend app\n"),
    );
    let calls = t.calls().len();
    let two = lb(&[("cp-1", "10.0.0.11"), ("cp-2", "10.0.0.12")]);
    let r = two.run(&h, false);
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    let err = r.error.clone().unwrap_or_default();
    assert!(
        err.contains("HAProxy refused the new configuration"),
        "{err}"
    );
    assert!(err.contains("kh-apiserver"), "{err}");
    assert_eq!(t.read(INCLUDE_FILE), working);
    assert!(!t.exists(&format!("{INCLUDE_FILE}{CANDIDATE_SUFFIX}")));
    assert!(!t.exists(RELOAD_PENDING));
    assert_eq!(t.calls().len(), calls, "no reload after a refused config");
}
