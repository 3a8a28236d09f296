//! The decision, rule by rule: observations over time → decision + reason.

use super::*;

const S: u64 = 1000;

fn settings() -> Remediation {
    Remediation {
        enabled: true,
        unhealthy_after: Duration::from_secs(60),
        max_in_flight: 1,
        retry_period: Duration::from_secs(600),
        max_retry: 2,
        min_healthy_period: Duration::from_secs(3600),
    }
}

fn up(node: &str) -> Seen {
    Seen {
        node: node.into(),
        agent: true,
        etcd: EtcdSeen::Healthy,
        apiserver: ApiSeen::Ready,
    }
}

fn dead(node: &str) -> Seen {
    Seen {
        node: node.into(),
        agent: false,
        etcd: EtcdSeen::Down,
        apiserver: ApiSeen::NotReady,
    }
}

/// A tracker that saw `first` at t=0 (the watcher's start) and `then` at
/// every 10 s up to `until` seconds.
fn tracked(first: &[Seen], then: &[Seen], until: u64) -> Tracker {
    let mut t = Tracker::new(0);
    t.observe(0, first);
    let mut at = 10;
    while at <= until {
        t.observe(at * S, then);
        at += 10;
    }
    t
}

struct Case {
    settings: Remediation,
    paused: bool,
    busy: Option<String>,
    spares: Vec<String>,
    unusable: Vec<(String, String)>,
    attempts: BTreeMap<String, Vec<u64>>,
    pending: Option<(String, String)>,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            settings: settings(),
            paused: false,
            busy: None,
            spares: vec!["cp-9".into(), "cp-10".into()],
            unusable: vec![],
            attempts: BTreeMap::new(),
            pending: None,
        }
    }
}

impl Case {
    fn decide(&self, t: &Tracker, now_s: u64) -> Decision {
        decide(&Inputs {
            now_ms: now_s * S,
            settings: &self.settings,
            paused: self.paused,
            tracker: t,
            busy: self.busy.clone(),
            spares: &self.spares,
            spares_unusable: &self.unusable,
            attempts: &self.attempts,
            pending: self.pending.clone(),
        })
    }
}

fn three_with(cp2: Seen) -> Tracker {
    tracked(
        &[up("cp-1"), up("cp-2"), up("cp-3")],
        &[up("cp-1"), cp2, up("cp-3")],
        120,
    )
}

#[test]
fn a_control_plane_failed_for_a_whole_window_is_replaced_with_the_first_spare() {
    let t = three_with(dead("cp-2"));
    match Case::default().decide(&t, 120) {
        Decision::Replace {
            failed,
            spare,
            message,
        } => {
            assert_eq!((failed.as_str(), spare.as_str()), ("cp-2", "cp-9"));
            assert!(message.contains("has been failing for"), "{message}");
            assert!(message.contains("agent gone"), "{message}");
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn nothing_is_decided_before_one_window_after_the_start() {
    // Failing since the watcher started: 50 s < 60 s.
    let t = tracked(
        &[dead("cp-2"), up("cp-1"), up("cp-3")],
        &[dead("cp-2"), up("cp-1"), up("cp-3")],
        50,
    );
    assert_eq!(Case::default().decide(&t, 50).reason(), "starting");
}

#[test]
fn a_control_plane_failing_for_less_than_the_window_is_observed_only() {
    let mut t = Tracker::new(0);
    for at in (0..=100).step_by(10) {
        t.observe(at * S, &[up("cp-1"), up("cp-2"), up("cp-3")]);
    }
    for at in (110..=160).step_by(10) {
        t.observe(at * S, &[up("cp-1"), dead("cp-2"), up("cp-3")]);
    }
    let d = Case::default().decide(&t, 160);
    assert_eq!((d.reason(), d.node()), ("observing", "cp-2"), "{d:?}");
    // One healthy observation breaks the window: it starts again.
    t.observe(170 * S, &[up("cp-1"), up("cp-2"), up("cp-3")]);
    t.observe(180 * S, &[up("cp-1"), dead("cp-2"), up("cp-3")]);
    t.observe(230 * S, &[up("cp-1"), dead("cp-2"), up("cp-3")]);
    assert_eq!(Case::default().decide(&t, 230).reason(), "observing");
    t.observe(240 * S, &[up("cp-1"), dead("cp-2"), up("cp-3")]);
    assert_eq!(Case::default().decide(&t, 240).reason(), "replace");
}

#[test]
fn every_part_of_the_failure_rule_is_needed() {
    // Agent gone, but the apiserver answers (and etcd is healthy): not failing.
    let agent_only = Seen {
        agent: false,
        ..up("cp-2")
    };
    assert_eq!(
        Case::default()
            .decide(&three_with(agent_only), 120)
            .reason(),
        "healthy"
    );
    // Agent gone and etcd down but the apiserver still answers.
    let api_up = Seen {
        apiserver: ApiSeen::Ready,
        ..dead("cp-2")
    };
    assert_eq!(
        Case::default().decide(&three_with(api_up), 120).reason(),
        "healthy"
    );
    // Apiserver down, agent and etcd fine: not failing either.
    let api_only = Seen {
        apiserver: ApiSeen::NotReady,
        ..up("cp-2")
    };
    assert_eq!(
        Case::default().decide(&three_with(api_only), 120).reason(),
        "healthy"
    );
    // Apiserver unknown (nobody could ask): not known to be down.
    let unknown = Seen {
        apiserver: ApiSeen::Unknown,
        ..dead("cp-2")
    };
    assert_eq!(
        Case::default().decide(&three_with(unknown), 120).reason(),
        "healthy"
    );
    // Agent up, etcd member unhealthy, apiserver down: failing.
    let etcd_bad = Seen {
        etcd: EtcdSeen::Down,
        apiserver: ApiSeen::NotReady,
        ..up("cp-2")
    };
    assert_eq!(
        Case::default().decide(&three_with(etcd_bad), 120).reason(),
        "replace"
    );
}

#[test]
fn two_of_three_down_is_no_quorum_and_blocks() {
    let t = tracked(
        &[up("cp-1"), up("cp-2"), up("cp-3")],
        &[
            Seen {
                etcd: EtcdSeen::Running,
                apiserver: ApiSeen::NotReady,
                ..up("cp-1")
            },
            dead("cp-2"),
            dead("cp-3"),
        ],
        120,
    );
    match Case::default().decide(&t, 120) {
        Decision::Blocked {
            reason, message, ..
        } => {
            assert_eq!(reason, "no-quorum");
            assert!(message.contains("quorum needs 2"), "{message}");
            assert!(message.contains("cp-2, cp-3"), "{message}");
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn the_longest_failing_control_plane_goes_first_and_one_at_a_time() {
    let mut t = Tracker::new(0);
    let five = |a: Seen, b: Seen| vec![up("cp-1"), a, b, up("cp-4"), up("cp-5")];
    t.observe(0, &five(up("cp-2"), dead("cp-3")));
    t.observe(10 * S, &five(dead("cp-2"), dead("cp-3")));
    t.observe(100 * S, &five(dead("cp-2"), dead("cp-3")));
    match Case::default().decide(&t, 100) {
        Decision::Replace { failed, .. } => assert_eq!(failed, "cp-3"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn another_operation_or_the_lease_waits() {
    let c = Case {
        busy: Some("upgrade prod is running".into()),
        ..Default::default()
    };
    let d = c.decide(&three_with(dead("cp-2")), 120);
    assert_eq!(d.reason(), "busy");
    assert!(d.message().contains("upgrade prod is running"), "{d:?}");
}

#[test]
fn paused_observes_but_does_not_act() {
    let c = Case {
        paused: true,
        ..Default::default()
    };
    assert_eq!(c.decide(&three_with(dead("cp-2")), 120).reason(), "paused");
}

#[test]
fn disabled_decides_nothing() {
    let mut c = Case::default();
    c.settings.enabled = false;
    assert_eq!(
        c.decide(&three_with(dead("cp-2")), 120).reason(),
        "disabled"
    );
}

#[test]
fn no_spare_left_blocks_and_says_why_each_spare_cannot_be_used() {
    let c = Case {
        spares: vec![],
        unusable: vec![("cp-9".into(), "its agent is not reporting".into())],
        ..Default::default()
    };
    match c.decide(&three_with(dead("cp-2")), 120) {
        Decision::Blocked {
            reason, message, ..
        } => {
            assert_eq!(reason, "no-spare");
            assert!(
                message.contains("cp-9: its agent is not reporting"),
                "{message}"
            );
            assert!(message.contains("khctl spares add"), "{message}");
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn max_retry_within_the_retry_period_blocks_and_old_attempts_do_not_count() {
    let mut c = Case::default();
    c.attempts.insert("cp-2".into(), vec![100 * S, 110 * S]);
    let t = three_with(dead("cp-2"));
    assert_eq!(c.decide(&t, 120).reason(), "max-retry");
    // Only attempts within retryPeriod (600 s) count.
    let mut t2 = Tracker::new(0);
    t2.observe(0, &[up("cp-1"), dead("cp-2"), up("cp-3")]);
    t2.observe(690 * S, &[up("cp-1"), dead("cp-2"), up("cp-3")]);
    assert_eq!(
        c.decide(&t2, 690).reason(),
        "max-retry",
        "both within 600 s of 690 s"
    );
    t2.observe(705 * S, &[up("cp-1"), dead("cp-2"), up("cp-3")]);
    match c.decide(&t2, 705) {
        Decision::Replace { message, .. } => {
            assert!(message.contains("attempt 2 of 2"), "{message}")
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn healthy_for_min_healthy_period_resets_the_retry_count() {
    let s = settings();
    let mut rec = Record::default();
    rec.attempts.insert("cp-2".into(), vec![0]);
    let mut t = Tracker::new(0);
    t.observe(10 * S, &[up("cp-1"), up("cp-2"), up("cp-3")]);
    t.observe(300 * S, &[up("cp-1"), up("cp-2"), up("cp-3")]);
    rec.prune_attempts(&s, &t, 300 * S);
    assert_eq!(
        rec.attempts.get("cp-2").map(Vec::len),
        Some(1),
        "healthy 290 s < 1 h"
    );
    t.observe(3700 * S, &[up("cp-1"), up("cp-2"), up("cp-3")]);
    // Still inside a (longer) retry period, but healthy for an hour.
    let long = Remediation {
        retry_period: Duration::from_secs(86_400),
        ..s
    };
    rec.prune_attempts(&long, &t, 3700 * S);
    assert!(rec.attempts.is_empty(), "{:?}", rec.attempts);
    // Attempts older than the retry period go too.
    rec.attempts.insert("cp-3".into(), vec![0, 1000 * S]);
    rec.prune_attempts(&s, &Tracker::new(0), 1100 * S);
    assert_eq!(rec.attempts["cp-3"], vec![1000 * S]);
}

#[test]
fn a_pending_replacement_continues_with_its_own_spare_and_others_wait() {
    let c = Case {
        pending: Some(("cp-2".into(), "cp-10".into())),
        spares: vec!["cp-9".into()],
        ..Default::default()
    };
    match c.decide(&three_with(dead("cp-2")), 120) {
        Decision::Replace { spare, .. } => assert_eq!(spare, "cp-10"),
        d => panic!("{d:?}"),
    }
    let c = Case {
        pending: Some(("cp-3".into(), "cp-10".into())),
        ..Default::default()
    };
    assert_eq!(c.decide(&three_with(dead("cp-2")), 120).reason(), "busy");
}

#[test]
fn forgotten_nodes_leave_the_tracker_and_windows_restart() {
    let mut t = Tracker::new(0);
    t.observe(0, &[up("cp-1"), dead("cp-2")]);
    t.observe(10 * S, &[up("cp-1"), up("cp-9")]);
    assert!(!t.nodes.contains_key("cp-2"));
    assert_eq!(t.nodes["cp-9"].healthy_since, Some(10 * S));
    assert_eq!(t.nodes["cp-1"].healthy_since, Some(0));
}

#[test]
fn etcd_nobody_can_report_is_not_judged_as_lost_quorum() {
    let blind = |s: Seen| Seen {
        etcd: EtcdSeen::Unknown,
        ..s
    };
    let t = tracked(
        &[up("cp-1"), up("cp-2"), up("cp-3")],
        &[blind(up("cp-1")), blind(dead("cp-2")), blind(up("cp-3"))],
        120,
    );
    assert_eq!(Case::default().decide(&t, 120).reason(), "etcd-unknown");
}

#[test]
fn a_tick_saving_its_record_never_undoes_a_pause_made_meanwhile() {
    let db = crate::store::Db::in_memory();
    // The tick loaded its record before the pause...
    let mut rec = Record::load(&db).unwrap();
    assert!(!rec.paused);
    db.put_json(PAUSED_KEY, &true).unwrap();
    // ...and saves it after.
    rec.started += 1;
    rec.save(&db).unwrap();
    let again = Record::load(&db).unwrap();
    assert!(again.paused);
    assert_eq!(again.started, 1);
}
