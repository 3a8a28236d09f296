//! The snapshot store against fake agents: which member is asked, what is
//! stored, listed, read back, deleted and refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kh::names::NodeName;
use kh::pki::{Identity, Role};
use kh::time::ManualClock;

use super::*;
use crate::agents::fake::{fake_etcd_snapshot, FakeAgents};
use crate::config::Config;
use crate::rollout::state::RolloutState;
use crate::store::Db;

const HA: &str = "apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  kubernetesVersion: v1.32.0\n  controlPlaneEndpoint: 10.0.0.5:6443\n  nodes:\n    - {name: cp-1, role: control-plane, address: 10.0.0.11}\n    - {name: cp-2, role: control-plane, address: 10.0.0.12}\n    - {name: cp-3, role: control-plane, address: 10.0.0.13}\n    - {name: w-1, role: worker, address: 10.0.0.21}\n";

/// A coordinator holding the HA spec, every node enrolled and set up.
fn coordinator(dir: &std::path::Path) -> (Arc<Coordinator>, Arc<FakeAgents>) {
    let (coord, fake, _) = coordinator_with(dir, HA);
    (coord, fake)
}

/// A coordinator holding `yaml`, its clock, every node enrolled and set up.
fn coordinator_with(
    dir: &std::path::Path,
    yaml: &str,
) -> (Arc<Coordinator>, Arc<FakeAgents>, Arc<ManualClock>) {
    let spec = kh::spec::parse(yaml).unwrap();
    let fake = Arc::new(FakeAgents::new(&spec));
    let agents = fake.clone();
    let clock = Arc::new(ManualClock::at_unix_ms(1_700_000_000_000));
    let coord = Coordinator::with_agents(
        Config::for_test(dir),
        Db::in_memory(),
        clock.clone(),
        move |_| agents,
    )
    .unwrap();
    for (i, n) in spec.nodes.iter().enumerate() {
        let identity = Identity {
            role: Role::Node,
            name: n.name.clone(),
            serial: format!("{:x}", 100 + i),
            not_after: SystemTime::now() + Duration::from_secs(86400),
        };
        coord
            .registry
            .enroll(&NodeName::new(&n.name).unwrap(), &identity, 1)
            .unwrap();
        fake.joined(&n.name);
    }
    let mut st = RolloutState::default();
    st.operation = "rollout t".into();
    st.cluster = "t".into();
    st.spec_yaml = yaml.into();
    st.started_ms = 10;
    st.save(&coord.db, 30).unwrap();
    (coord, fake, clock)
}

fn read_back(coord: &Coordinator, id: &str) -> Vec<u8> {
    reader(coord, id)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .concat()
}

#[tokio::test]
async fn a_snapshot_is_taken_through_the_first_healthy_member_stored_listed_read_and_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let (coord, fake) = coordinator(tmp.path());
    fake.etcd_down("cp-1");
    let mut seen = Vec::new();
    let meta = take_with_progress(&coord, REASON_MANUAL, None, |b, t| seen.push((b, t)))
        .await
        .unwrap();
    assert_eq!(fake.snapshots_taken(), ["cp-2"]);
    assert_eq!(meta.node, "cp-2");
    assert_eq!(meta.reason, "manual");
    assert_eq!(meta.revision, 1);
    let plain = fake_etcd_snapshot(1);
    assert_eq!(meta.size, plain.len() as u64);
    assert_eq!(
        meta.sha256,
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &plain).as_ref())
    );
    assert_eq!(seen.last(), Some(&(plain.len() as u64, plain.len() as u64)));
    assert!(meta.id.starts_with("20231114T221320Z-"), "{}", meta.id);

    // A named member is asked even when another is healthy.
    let second = take(&coord, &reason_before("etcd replace"), Some("cp-3"))
        .await
        .unwrap();
    assert_eq!(fake.snapshots_taken(), ["cp-2", "cp-3"]);
    assert!(second.is_automatic() && !meta.is_automatic());

    assert_eq!(list(&coord).unwrap().len(), 2);
    assert_eq!(get(&coord, &meta.id).unwrap(), Some(meta.clone()));
    assert_eq!(read_back(&coord, &meta.id), plain);
    let streamed: Vec<u8> = read_stream(&coord, &second.id)
        .unwrap()
        .map(|c| c.unwrap())
        .collect::<Vec<_>>()
        .await
        .concat();
    assert_eq!(streamed, fake_etcd_snapshot(2));

    let history = crate::audit::list(&coord.db, 10).unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|e| e.operation == AUDIT_OPERATION && e.outcome == "ok")
            .count(),
        2
    );

    assert!(delete(&coord, &meta.id).unwrap());
    assert!(!delete(&coord, &meta.id).unwrap());
    assert_eq!(list(&coord).unwrap(), vec![second]);
    assert!(!sealed::path(&dir(&coord), &meta.id).exists());
    assert!(matches!(
        reader(&coord, &meta.id).unwrap_err(),
        CoordError::NotFound(_)
    ));
}

#[tokio::test]
async fn a_failing_agent_or_no_healthy_member_stores_nothing_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let (coord, fake) = coordinator(tmp.path());
    fake.fail_snapshot(
        "cp-1",
        "etcd snapshot failed (timeout): `etcdctl snapshot save` failed",
    );
    let err = take(&coord, REASON_MANUAL, Some("cp-1")).await.unwrap_err();
    assert!(matches!(err, CoordError::FailedPrecondition(_)));
    assert!(
        err.to_string().contains("etcd snapshot failed (timeout)"),
        "{err}"
    );

    let err = take(&coord, REASON_MANUAL, Some("w-1")).await.unwrap_err();
    assert!(err.to_string().contains("not a control plane"), "{err}");

    for n in ["cp-1", "cp-2", "cp-3"] {
        fake.etcd_down(n);
    }
    let err = take(&coord, REASON_MANUAL, None).await.unwrap_err();
    assert!(
        err.to_string().contains("no etcd member is healthy"),
        "{err}"
    );
    assert!(err.to_string().contains("--node"), "{err}");

    assert!(list(&coord).unwrap().is_empty());
    let (ids, partial) = sealed::scan(&dir(&coord)).unwrap();
    assert!(ids.is_empty() && partial.is_empty());
    let failed = crate::audit::list(&coord.db, 10)
        .unwrap()
        .into_iter()
        .filter(|e| e.operation == AUDIT_OPERATION && e.outcome == "failed")
        .count();
    assert_eq!(failed, 3);
}

#[tokio::test]
async fn an_imported_file_is_checked_sealed_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (coord, _) = coordinator(tmp.path());
    let file = fake_etcd_snapshot(9);
    let pieces: Vec<Result<Vec<u8>, CoordError>> =
        file.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let meta = import(&coord, futures::stream::iter(pieces), REASON_IMPORT)
        .await
        .unwrap();
    assert_eq!(meta.node, "");
    assert_eq!(meta.size, file.len() as u64);
    assert_eq!(read_back(&coord, &meta.id), file);

    let not_etcd = vec![Ok(b"just some file".to_vec())];
    let err = import(&coord, futures::stream::iter(not_etcd), REASON_IMPORT)
        .await
        .unwrap_err();
    assert!(matches!(err, CoordError::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("not an etcd v3 snapshot"), "{err}");
    assert_eq!(list(&coord).unwrap(), vec![meta]);
}

#[tokio::test]
async fn ids_cannot_name_paths_and_leftovers_are_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (coord, _) = coordinator(tmp.path());
    for bad in ["../secret", "a/b", "", "x.snap"] {
        assert!(matches!(
            get(&coord, bad).unwrap_err(),
            CoordError::InvalidArgument(_)
        ));
    }
    let meta = take(&coord, REASON_MANUAL, None).await.unwrap();
    let d = dir(&coord);
    std::fs::write(d.join("orphan.snap"), b"x").unwrap();
    std::fs::write(d.join("cut.snap.partial"), b"x").unwrap();
    let mut removed = clean_up(&coord).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        vec![d.join("cut.snap.partial"), d.join("orphan.snap")]
    );
    assert_eq!(read_back(&coord, &meta.id), fake_etcd_snapshot(1));
}

#[tokio::test]
async fn a_file_altered_after_it_was_stored_is_refused_on_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (coord, _) = coordinator(tmp.path());
    let a = take(&coord, REASON_MANUAL, None).await.unwrap();
    let b = take(&coord, REASON_MANUAL, None).await.unwrap();
    // b's file put in a's place: it does not open under a's id.
    std::fs::copy(
        sealed::path(&dir(&coord), &b.id),
        sealed::path(&dir(&coord), &a.id),
    )
    .unwrap();
    let err = reader(&coord, &a.id)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_err();
    assert!(matches!(err, SnapshotError::Tampered { .. }), "{err}");
}

#[tokio::test]
async fn the_schedule_takes_a_snapshot_when_due_and_prunes_automatic_ones_only() {
    use schedule::{tick, Tick};
    let tmp = tempfile::tempdir().unwrap();
    let (coord, _, _) = coordinator_with(tmp.path(), HA);
    assert_eq!(tick(&coord).await.unwrap(), Tick::Off);

    let yaml = HA.replace(
        "  nodes:\n",
        "  etcd:\n    snapshots: {every: 10s, keep: 2}\n  nodes:\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let (coord, fake, clock) = coordinator_with(tmp.path(), &yaml);
    let manual = take(&coord, REASON_MANUAL, None).await.unwrap();
    // A manual snapshot does not count: the schedule takes its own.
    let Tick::Taken { id: first, pruned } = tick(&coord).await.unwrap() else {
        panic!("no scheduled snapshot")
    };
    assert!(pruned.is_empty());
    assert_eq!(tick(&coord).await.unwrap(), Tick::NotDue);
    clock.advance(Duration::from_secs(5));
    let before = take(&coord, &reason_before("etcd replace"), None)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(6));
    // Due from the scheduled one, but a before-operation snapshot is
    // automatic too and 6 s old.
    assert_eq!(tick(&coord).await.unwrap(), Tick::NotDue);
    clock.advance(Duration::from_secs(5));
    let Tick::Taken { id: third, pruned } = tick(&coord).await.unwrap() else {
        panic!("no scheduled snapshot")
    };
    assert_eq!(pruned, vec![first]);
    let ids: Vec<String> = list(&coord).unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![manual.id.clone(), before.id.clone(), third]);

    // Not while the control-plane lease is held, nor while it fails.
    clock.advance(Duration::from_secs(11));
    crate::lease::acquire(&coord.db, coord.clock.as_ref(), "restore", "etcd restore")
        .unwrap()
        .unwrap();
    assert_eq!(tick(&coord).await.unwrap(), Tick::Busy);
    crate::lease::release(&coord.db, "restore").unwrap();
    for n in ["cp-1", "cp-2", "cp-3"] {
        fake.etcd_down(n);
    }
    assert!(tick(&coord).await.is_err());
    assert_eq!(list(&coord).unwrap().len(), 3);
    let failed = crate::audit::list(&coord.db, 50)
        .unwrap()
        .into_iter()
        .filter(|e| e.operation == AUDIT_OPERATION && e.outcome == "failed")
        .count();
    assert_eq!(failed, 1);
    assert_eq!(
        schedule::tick_interval(kh::spec::parse(&yaml).unwrap().etcd_snapshots.as_ref()),
        Duration::from_secs(1)
    );
    assert_eq!(schedule::tick_interval(None), schedule::OFF_TICK);
}

#[tokio::test]
async fn a_stream_that_ends_without_the_status_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (coord, fake) = coordinator(tmp.path());
    fake.cut_snapshot_stream("cp-1");
    let err = take(&coord, REASON_MANUAL, Some("cp-1")).await.unwrap_err();
    assert!(
        err.to_string().contains("without the snapshot's status"),
        "{err}"
    );
    assert!(list(&coord).unwrap().is_empty());
    let (ids, partial) = sealed::scan(&dir(&coord)).unwrap();
    assert!(ids.is_empty() && partial.is_empty(), "{ids:?} {partial:?}");
}

/// Pruning never deletes the snapshot of an unfinished restore: a resumed
/// restore may send it to the control planes again.
#[tokio::test]
async fn pruning_keeps_the_snapshot_an_unfinished_restore_needs() {
    let yaml = HA.replace(
        "  nodes:\n",
        "  etcd:\n    snapshots: {every: 10s, keep: 1}\n  nodes:\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let (coord, _, clock) = coordinator_with(tmp.path(), &yaml);
    let old = take(&coord, &reason_before("etcd replace"), None)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    take(&coord, &reason_before("etcd replace"), None)
        .await
        .unwrap();
    let mut pending = crate::rollout::state::RolloutState::default();
    pending.key = crate::rollout::restore::KEY.into();
    pending.operation = format!("etcd restore {}", old.id);
    pending.save(&coord.db, 1).unwrap();
    assert!(schedule::prune(&coord, 1).unwrap().is_empty());
    assert_eq!(list(&coord).unwrap().len(), 2);

    crate::rollout::state::RolloutState::clear_at(&coord.db, crate::rollout::restore::KEY).unwrap();
    assert_eq!(schedule::prune(&coord, 1).unwrap(), vec![old.id]);
}
