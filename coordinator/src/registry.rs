//! The node registry: who is enrolled, with which certificate, what they last
//! reported, and whether they are healthy.
//!
//! Records are durable. The time of the last heartbeat lives in memory and is
//! written through at most once a minute, so a fleet's heartbeats do not turn
//! into a stream of disk syncs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use kh::names::NodeName;
use kh::pki::Identity;
use kh::proto::Facts;
use kh::time::unix_ms;

use crate::error::CoordError;
use crate::store::Db;

const PREFIX: &str = "nodes/";
const PERSIST_LAST_SEEN_EVERY_MS: u64 = 60_000;
/// A node is NotReady after this many heartbeat intervals without one.
pub const MISSED_HEARTBEATS: u32 = 3;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    pub name: NodeName,
    pub enrolled_ms: u64,
    pub cert_serial: String,
    /// The serial before the last renewal, accepted until the new one is seen,
    /// so an agent that crashed before saving its renewed certificate is not
    /// locked out.
    #[serde(default)]
    pub prev_serial: Option<String>,
    pub cert_expires_ms: u64,
    /// The cluster role from the applied spec; None until one is applied.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub facts: Option<Facts>,
    #[serde(default)]
    pub last_seen_ms: u64,
    /// When this node first reported each identifier kubeadm requires unique
    /// (`product_uuid:<v>`, `mac:<v>`) that it reports now. Of nodes reporting
    /// the same one, the first keeps it without a warning, so a node cannot
    /// put a duplicate warning on another's record by copying its values.
    #[serde(default)]
    pub claimed_ms: BTreeMap<String, u64>,
    /// Set when a replacement removed this node from the cluster: it is no
    /// longer part of it, and `khctl nodes delete` may deregister it.
    #[serde(default)]
    pub retired: Option<Retired>,
}

/// Why and when a node left the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Retired {
    pub unix_ms: u64,
    /// e.g. "replaced by cp-4 (etcd replace cp-2 with cp-4)".
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct NodeView {
    pub record: NodeRecord,
    pub last_seen_ms: u64,
    pub ready: bool,
    pub warnings: Vec<String>,
}

pub struct Registry {
    db: Db,
    last_seen: Mutex<HashMap<String, u64>>,
}

impl Registry {
    pub fn new(db: Db) -> Self {
        Registry {
            db,
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, name: &NodeName) -> Result<Option<NodeRecord>, CoordError> {
        Ok(self.db.get_json(&key(name.as_str()))?)
    }

    /// Records a (re-)enrollment. Facts and role survive a re-enrollment.
    pub fn enroll(
        &self,
        name: &NodeName,
        identity: &Identity,
        now_ms: u64,
    ) -> Result<NodeRecord, CoordError> {
        let rec = match self.get(name)? {
            // A re-enrolled host is a new start: it is no longer retired.
            Some(old) => NodeRecord {
                enrolled_ms: now_ms,
                retired: None,
                cert_serial: identity.serial.clone(),
                prev_serial: None,
                cert_expires_ms: unix_ms(identity.not_after),
                ..old
            },
            None => NodeRecord {
                name: name.clone(),
                enrolled_ms: now_ms,
                cert_serial: identity.serial.clone(),
                prev_serial: None,
                cert_expires_ms: unix_ms(identity.not_after),
                role: None,
                endpoint: String::new(),
                agent_version: String::new(),
                facts: None,
                last_seen_ms: 0,
                claimed_ms: BTreeMap::new(),
                retired: None,
            },
        };
        self.db.put_json(&key(name.as_str()), &rec)?;
        Ok(rec)
    }

    /// The record of the calling node, after checking that its certificate is
    /// the current one. A certificate replaced by re-enrollment is refused.
    /// The first use of a renewed certificate retires the previous one.
    pub fn authenticate(&self, caller: &Identity) -> Result<NodeRecord, CoordError> {
        let (rec, retire) = self.check_caller(caller)?;
        if !retire {
            return Ok(rec);
        }
        let serial = caller.serial.as_str();
        Ok(self
            .update(&rec.name, |r| retire_prev_serial(r, serial))?
            .unwrap_or(rec))
    }

    /// [`Registry::authenticate`] without the write: the caller's record, and
    /// whether this is the first use of a renewed certificate, whose previous
    /// serial must then be retired.
    pub fn check_caller(&self, caller: &Identity) -> Result<(NodeRecord, bool), CoordError> {
        let name = NodeName::new(&caller.name)?;
        let rec = self.get(&name)?.ok_or_else(|| {
            CoordError::Superseded(format!(
                "node {name} is not enrolled with this coordinator; enroll it again with a token from `khctl token create --node {name}`"
            ))
        })?;
        if rec.cert_serial == caller.serial {
            let retire = rec.prev_serial.is_some();
            return Ok((rec, retire));
        }
        if rec.prev_serial.as_deref() == Some(caller.serial.as_str()) {
            return Ok((rec, false));
        }
        Err(CoordError::Superseded(format!(
            "the certificate of node {name} (serial {}) was superseded by a newer enrollment or renewal; re-enroll this agent with `khctl token create --node {name} --force`",
            caller.serial
        )))
    }

    /// Records a renewed certificate. Written with compare-and-swap against
    /// the record as authenticated, so a node deleted (or re-enrolled) in
    /// the meantime is not brought back by its own renewal.
    pub fn renewed(&self, rec: NodeRecord, identity: &Identity) -> Result<(), CoordError> {
        let mut next = rec.clone();
        next.prev_serial = Some(std::mem::replace(
            &mut next.cert_serial,
            identity.serial.clone(),
        ));
        next.cert_expires_ms = unix_ms(identity.not_after);
        let k = key(rec.name.as_str());
        loop {
            let current = self.db.get_json::<NodeRecord>(&k)?;
            let Some(mut merged) = current.clone().filter(|c| c.cert_serial == rec.cert_serial)
            else {
                return Err(CoordError::Superseded(format!(
                    "node {} was deleted or re-enrolled while its certificate was being renewed; enroll it again with a token from `khctl token create --node {}`",
                    rec.name, rec.name
                )));
            };
            // Keep what a heartbeat wrote since (facts, last seen).
            merged.prev_serial.clone_from(&next.prev_serial);
            merged.cert_serial.clone_from(&next.cert_serial);
            merged.cert_expires_ms = next.cert_expires_ms;
            if self.db.cas_json(&k, current.as_ref(), Some(&merged))? {
                return Ok(());
            }
        }
    }

    /// Applies a heartbeat from the node `caller` authenticated as (see
    /// [`Registry::check_caller`]) and makes what changed durable, in one
    /// call. The Node service makes the two halves itself, the write on the
    /// blocking pool; tests use this.
    #[cfg(test)]
    pub fn heartbeat(
        &self,
        caller: &Identity,
        rec: &NodeRecord,
        retire_prev: bool,
        beat: Beat,
    ) -> Result<(), CoordError> {
        match self.observe(caller, rec, retire_prev, beat) {
            Some(write) => self.save(&write),
            None => Ok(()),
        }
    }

    /// The in-memory half of a heartbeat: records the time the node was seen
    /// and returns the write that must be made durable, if any. Only a change
    /// an operator would see, the first use of a renewed certificate, or a
    /// durable last-seen time older than a minute needs one, so most
    /// heartbeats write nothing.
    pub fn observe(
        &self,
        caller: &Identity,
        rec: &NodeRecord,
        retire_prev: bool,
        beat: Beat,
    ) -> Option<HeartbeatWrite> {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rec.name.to_string(), beat.now_ms);
        let stale = beat.now_ms.saturating_sub(rec.last_seen_ms) > PERSIST_LAST_SEEN_EVERY_MS;
        let changed = beat
            .facts
            .as_ref()
            .is_some_and(|f| rec.facts.as_ref() != Some(f))
            || beat.endpoint != rec.endpoint
            || beat.agent_version != rec.agent_version;
        (stale || changed || retire_prev).then(|| HeartbeatWrite {
            name: rec.name.clone(),
            serial: caller.serial.clone(),
            retire_prev,
            beat,
        })
    }

    /// The durable half of a heartbeat: one synced write. It merges the
    /// heartbeat's fields into the record as stored now, with
    /// compare-and-swap, so an enrollment, renewal or role change written
    /// since the heartbeat was observed is kept, never overwritten.
    pub fn save(&self, write: &HeartbeatWrite) -> Result<(), CoordError> {
        let b = &write.beat;
        self.update(&write.name, |r| {
            if let Some(f) = &b.facts {
                r.claimed_ms = claims(f)
                    .map(|c| {
                        let since = r.claimed_ms.get(&c).copied().unwrap_or(b.now_ms);
                        (c, since)
                    })
                    .collect();
                r.facts = Some(f.clone());
            }
            r.endpoint.clone_from(&b.endpoint);
            r.agent_version.clone_from(&b.agent_version);
            r.last_seen_ms = r.last_seen_ms.max(b.now_ms);
            if write.retire_prev {
                retire_prev_serial(r, &write.serial);
            }
        })?;
        Ok(())
    }

    /// Read-modify-write of one node's record with compare-and-swap, retried
    /// when another write got there first. Returns the record as written (or
    /// as found, when `change` changed nothing); `None` when the node is not
    /// enrolled.
    fn update(
        &self,
        name: &NodeName,
        change: impl Fn(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>, CoordError> {
        let k = key(name.as_str());
        loop {
            let Some(current) = self.db.get_json::<NodeRecord>(&k)? else {
                return Ok(None);
            };
            let mut next = current.clone();
            change(&mut next);
            if next == current || self.db.cas_json(&k, Some(&current), Some(&next))? {
                return Ok(Some(next));
            }
        }
    }

    /// Records the node's cluster role. A node given a role again is part of
    /// a cluster again, so it is no longer retired.
    pub fn set_role(&self, name: &NodeName, role: Option<String>) -> Result<(), CoordError> {
        self.update(name, |r| {
            if role.is_some() {
                r.retired = None;
            }
            r.role.clone_from(&role)
        })?
        .ok_or_else(|| CoordError::NotFound(format!("node {name} is not enrolled")))?;
        Ok(())
    }

    /// Marks the node as removed from the cluster (by a replacement).
    pub fn retire(&self, name: &NodeName, unix_ms: u64, reason: &str) -> Result<(), CoordError> {
        self.update(name, |r| {
            r.role = None;
            if r.retired.is_none() {
                r.retired = Some(Retired {
                    unix_ms,
                    reason: reason.to_string(),
                });
            }
        })?
        .ok_or_else(|| CoordError::NotFound(format!("node {name} is not enrolled")))?;
        Ok(())
    }

    /// The node is back in use (a spare again): no longer retired.
    pub fn clear_retired(&self, name: &NodeName) -> Result<(), CoordError> {
        self.update(name, |r| r.retired = None)?
            .ok_or_else(|| CoordError::NotFound(format!("node {name} is not enrolled")))?;
        Ok(())
    }

    /// Deregisters the node: its record goes, and with it the only serial its
    /// certificate was accepted under, so its agent can no longer heartbeat,
    /// renew or be asked for steps. Returns the record as it was.
    pub fn delete(&self, name: &NodeName) -> Result<Option<NodeRecord>, CoordError> {
        let k = key(name.as_str());
        loop {
            let Some(current) = self.db.get_json::<NodeRecord>(&k)? else {
                return Ok(None);
            };
            if self.db.cas_json(&k, Some(&current), None::<&NodeRecord>)? {
                self.last_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(name.as_str());
                return Ok(Some(current));
            }
        }
    }

    /// Every node with its health and the problems an operator must fix.
    pub fn list(&self, now_ms: u64, interval: Duration) -> Result<Vec<NodeView>, CoordError> {
        let records: Vec<NodeRecord> = self
            .db
            .scan_json(PREFIX)?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        let seen = self
            .last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let window = interval.as_millis() as u64 * MISSED_HEARTBEATS as u64;
        let warnings = duplicate_warnings(&records);
        Ok(records
            .into_iter()
            .map(|record| {
                let last_seen_ms = seen
                    .get(record.name.as_str())
                    .copied()
                    .unwrap_or(0)
                    .max(record.last_seen_ms);
                let ready = last_seen_ms > 0 && now_ms.saturating_sub(last_seen_ms) <= window;
                let warnings = warnings
                    .get(record.name.as_str())
                    .cloned()
                    .unwrap_or_default();
                NodeView {
                    record,
                    last_seen_ms,
                    ready,
                    warnings,
                }
            })
            .collect())
    }
}

/// What a node reported in a heartbeat.
#[derive(Debug, Clone)]
pub struct Beat {
    /// `None` when the agent sent none.
    pub facts: Option<Facts>,
    pub endpoint: String,
    pub agent_version: String,
    pub now_ms: u64,
}

/// A heartbeat's durable write, from [`Registry::observe`] to
/// [`Registry::save`].
#[derive(Debug, Clone)]
pub struct HeartbeatWrite {
    name: NodeName,
    /// The serial of the certificate the heartbeat came with.
    serial: String,
    retire_prev: bool,
    beat: Beat,
}

/// After the first use of a renewed certificate the previous one is no
/// longer accepted, unless the record has moved on to another certificate
/// since.
fn retire_prev_serial(r: &mut NodeRecord, serial: &str) {
    if r.cert_serial == serial {
        r.prev_serial = None;
    }
}

/// The identifiers in `f` that kubeadm requires unique per node, as keys of
/// [`NodeRecord::claimed_ms`].
fn claims(f: &Facts) -> impl Iterator<Item = String> + '_ {
    let uuid = (!f.product_uuid.is_empty()).then(|| format!("product_uuid:{}", f.product_uuid));
    uuid.into_iter()
        .chain(f.mac_addresses.iter().map(|m| format!("mac:{m}")))
}

/// kubeadm requires product_uuid and MAC addresses to be unique per node;
/// cloned VM images are the usual reason they are not. The warning goes to
/// the nodes that reported a value after another node already had it: the
/// clone, not the original, and never the node whose value was copied. Nodes
/// that reported it at the same time are all warned.
fn duplicate_warnings(records: &[NodeRecord]) -> HashMap<String, Vec<String>> {
    // value -> (node, since when it reports the value)
    type Groups<'a> = BTreeMap<&'a str, Vec<(&'a str, u64)>>;
    let mut by_uuid: Groups = BTreeMap::new();
    let mut by_mac: Groups = BTreeMap::new();
    for r in records {
        let Some(f) = &r.facts else { continue };
        let since = |c: String| r.claimed_ms.get(&c).copied().unwrap_or(0);
        if !f.product_uuid.is_empty() {
            by_uuid.entry(&f.product_uuid).or_default().push((
                r.name.as_str(),
                since(format!("product_uuid:{}", f.product_uuid)),
            ));
        }
        for mac in &f.mac_addresses {
            by_mac
                .entry(mac)
                .or_default()
                .push((r.name.as_str(), since(format!("mac:{mac}"))));
        }
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (what, groups) in [("product_uuid", by_uuid), ("MAC address", by_mac)] {
        for (value, claims) in groups.into_iter().filter(|(_, n)| n.len() > 1) {
            let first = claims.iter().map(|(_, since)| *since).min().unwrap_or(0);
            let sole_first = claims.iter().filter(|(_, s)| *s == first).count() == 1;
            let names: Vec<&str> = claims.iter().map(|(n, _)| *n).collect();
            for (n, since) in &claims {
                if sole_first && *since == first {
                    continue;
                }
                let others: Vec<&str> = names.iter().copied().filter(|o| o != n).collect();
                out.entry(n.to_string()).or_default().push(format!(
                    "duplicate {what} {value} (also on {}): kubeadm requires it unique; regenerate it on cloned machines",
                    others.join(", ")
                ));
            }
        }
    }
    out
}

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn ident(name: &str, serial: &str) -> Identity {
        Identity {
            role: kh::pki::Role::Node,
            name: name.into(),
            serial: serial.into(),
            not_after: SystemTime::now(),
        }
    }

    fn at(endpoint: &str, now_ms: u64) -> Beat {
        Beat {
            facts: None,
            endpoint: endpoint.into(),
            agent_version: "0.1.0".into(),
            now_ms,
        }
    }

    /// A heartbeat as the Node service applies it.
    fn beat(reg: &Registry, id: &Identity, b: Beat) -> Result<(), CoordError> {
        let (rec, retire) = reg.check_caller(id)?;
        reg.heartbeat(id, &rec, retire, b)
    }

    #[test]
    fn a_deleted_node_s_certificate_is_refused_and_its_renewal_does_not_bring_it_back() {
        let reg = Registry::new(Db::in_memory());
        let n = NodeName::new("cp-2").unwrap();
        reg.enroll(&n, &ident("cp-2", "aa"), 1).unwrap();
        beat(&reg, &ident("cp-2", "aa"), at("10.0.0.2:7444", 5)).unwrap();
        // A renewal authenticated before the deletion, written after it.
        let rec = reg.authenticate(&ident("cp-2", "aa")).unwrap();
        let gone = reg.delete(&n).unwrap().expect("was enrolled");
        assert_eq!(gone.cert_serial, "aa");
        let err = reg.renewed(rec, &ident("cp-2", "bb")).unwrap_err();
        assert!(err.to_string().contains("deleted or re-enrolled"), "{err}");
        assert_eq!(reg.get(&n).unwrap(), None);
        let err = beat(&reg, &ident("cp-2", "aa"), at("10.0.0.2:7444", 9)).unwrap_err();
        assert!(err.to_string().contains("not enrolled"), "{err}");
        assert!(reg.list(10, Duration::from_secs(5)).unwrap().is_empty());
        assert_eq!(reg.delete(&n).unwrap(), None);
    }

    #[test]
    fn a_retired_node_is_active_again_once_re_enrolled_or_given_a_role() {
        let reg = Registry::new(Db::in_memory());
        let n = NodeName::new("cp-2").unwrap();
        reg.enroll(&n, &ident("cp-2", "aa"), 1).unwrap();
        reg.set_role(&n, Some("control-plane".into())).unwrap();
        reg.retire(&n, 7, "replaced by cp-4").unwrap();
        let rec = reg.get(&n).unwrap().unwrap();
        assert_eq!(rec.role, None);
        assert_eq!(
            rec.retired,
            Some(Retired {
                unix_ms: 7,
                reason: "replaced by cp-4".into()
            })
        );
        // Retiring again keeps the first reason and time.
        reg.retire(&n, 9, "other").unwrap();
        assert_eq!(reg.get(&n).unwrap().unwrap().retired.unwrap().unix_ms, 7);
        reg.set_role(&n, Some("worker".into())).unwrap();
        assert_eq!(reg.get(&n).unwrap().unwrap().retired, None);
        reg.retire(&n, 11, "replaced by cp-5").unwrap();
        reg.enroll(&n, &ident("cp-2", "bb"), 12).unwrap();
        assert_eq!(reg.get(&n).unwrap().unwrap().retired, None);
    }

    #[test]
    fn health_follows_heartbeats() {
        let reg = Registry::new(Db::in_memory());
        let n = NodeName::new("cp-1").unwrap();
        reg.enroll(&n, &ident("cp-1", "01"), 1000).unwrap();
        let iv = Duration::from_secs(1);
        assert!(
            !reg.list(1000, iv).unwrap()[0].ready,
            "never seen is NotReady"
        );
        beat(&reg, &ident("cp-1", "01"), at("127.0.0.11:7444", 2000)).unwrap();
        assert!(reg.list(4000, iv).unwrap()[0].ready);
        assert!(!reg.list(5001, iv).unwrap()[0].ready, "three missed beats");
        assert_eq!(
            reg.list(4000, iv).unwrap()[0].record.endpoint,
            "127.0.0.11:7444"
        );
    }

    #[test]
    fn a_superseded_certificate_is_refused_and_a_renewal_keeps_the_old_one_until_used() {
        let reg = Registry::new(Db::in_memory());
        let n = NodeName::new("w-1").unwrap();
        reg.enroll(&n, &ident("w-1", "aa"), 1).unwrap();
        let rec = reg.authenticate(&ident("w-1", "aa")).unwrap();
        reg.renewed(rec, &ident("w-1", "bb")).unwrap();
        assert!(
            reg.authenticate(&ident("w-1", "aa")).is_ok(),
            "old serial still accepted"
        );
        assert!(reg.authenticate(&ident("w-1", "bb")).is_ok());
        let err = reg
            .authenticate(&ident("w-1", "aa"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("superseded"), "{err}");
        reg.enroll(&n, &ident("w-1", "cc"), 2).unwrap();
        assert!(
            reg.authenticate(&ident("w-1", "bb")).is_err(),
            "re-enrollment revokes"
        );
        assert!(reg
            .authenticate(&ident("ghost", "cc"))
            .unwrap_err()
            .to_string()
            .contains("not enrolled"));
    }

    #[test]
    fn duplicate_product_uuid_and_mac_are_flagged_on_each_node() {
        let reg = Registry::new(Db::in_memory());
        for (name, uuid, mac) in [
            ("a", "u-1", "02:00:00:00:00:01"),
            ("b", "u-1", "02:00:00:00:00:02"),
            ("c", "u-3", "02:00:00:00:00:02"),
        ] {
            let n = NodeName::new(name).unwrap();
            reg.enroll(&n, &ident(name, "01"), 1).unwrap();
            let facts = Facts {
                product_uuid: uuid.into(),
                mac_addresses: vec![mac.into()],
                ..Default::default()
            };
            let b = Beat {
                facts: Some(facts),
                ..at("", 1)
            };
            beat(&reg, &ident(name, "01"), b).unwrap();
        }
        let views = reg.list(1, Duration::from_secs(1)).unwrap();
        let w = |n: &str| {
            views
                .iter()
                .find(|v| v.record.name.as_str() == n)
                .unwrap()
                .warnings
                .clone()
        };
        assert_eq!(w("a"), vec!["duplicate product_uuid u-1 (also on b): kubeadm requires it unique; regenerate it on cloned machines"]);
        assert_eq!(w("b").len(), 2);
        assert_eq!(w("c"), vec!["duplicate MAC address 02:00:00:00:00:02 (also on b): kubeadm requires it unique; regenerate it on cloned machines"]);
    }

    #[test]
    fn a_node_copying_anothers_identifiers_is_warned_not_the_other() {
        let reg = Registry::new(Db::in_memory());
        let report = |name: &str, uuid: &str, mac: &str, now_ms: u64| {
            let facts = Facts {
                product_uuid: uuid.into(),
                mac_addresses: vec![mac.into()],
                ..Default::default()
            };
            let b = Beat {
                facts: Some(facts),
                ..at("", now_ms)
            };
            beat(&reg, &ident(name, "01"), b).unwrap();
        };
        for name in ["cp-1", "w-1", "evil"] {
            reg.enroll(&NodeName::new(name).unwrap(), &ident(name, "01"), 1)
                .unwrap();
        }
        report("cp-1", "u-1", "02:00:00:00:00:01", 1_000);
        report("w-1", "u-2", "02:00:00:00:00:02", 2_000);
        report("evil", "u-3", "02:00:00:00:00:03", 3_000);
        // Later, one node reports the others' values as its own.
        report("evil", "u-1", "02:00:00:00:00:02", 4_000);
        // The victims keep reporting what they always had.
        report("cp-1", "u-1", "02:00:00:00:00:01", 90_000);
        report("w-1", "u-2", "02:00:00:00:00:02", 90_000);
        let views = reg.list(90_000, Duration::from_secs(10)).unwrap();
        let w = |n: &str| {
            views
                .iter()
                .find(|v| v.record.name.as_str() == n)
                .unwrap()
                .warnings
                .clone()
        };
        assert_eq!(w("cp-1"), Vec::<String>::new());
        assert_eq!(w("w-1"), Vec::<String>::new());
        let evil = w("evil");
        assert_eq!(evil.len(), 2, "{evil:?}");
        assert!(evil[0].starts_with("duplicate product_uuid u-1 (also on cp-1)"));
        assert!(evil[1].starts_with("duplicate MAC address 02:00:00:00:00:02 (also on w-1)"));
        // The first claim survives a re-enrollment.
        reg.enroll(
            &NodeName::new("cp-1").unwrap(),
            &ident("cp-1", "02"),
            95_000,
        )
        .unwrap();
        let views = reg.list(95_000, Duration::from_secs(10)).unwrap();
        let cp1 = views
            .iter()
            .find(|v| v.record.name.as_str() == "cp-1")
            .unwrap();
        assert!(cp1.warnings.is_empty(), "{:?}", cp1.warnings);
    }

    #[test]
    fn most_heartbeats_write_nothing() {
        let reg = Registry::new(Db::in_memory());
        let id = ident("w-1", "aa");
        reg.enroll(&NodeName::new("w-1").unwrap(), &id, 0).unwrap();
        let observe = |b: Beat| {
            let (rec, retire) = reg.check_caller(&id).unwrap();
            reg.observe(&id, &rec, retire, b)
        };
        let first = observe(at("10.0.0.1:7444", 1_000)).expect("new endpoint");
        reg.save(&first).unwrap();
        assert!(observe(at("10.0.0.1:7444", 11_000)).is_none());
        assert!(observe(at("10.0.0.1:7444", 61_000)).is_none());
        let stale = observe(at("10.0.0.1:7444", 61_001)).expect("last seen a minute ago");
        reg.save(&stale).unwrap();
        let rec = reg.get(&NodeName::new("w-1").unwrap()).unwrap().unwrap();
        assert_eq!(rec.last_seen_ms, 61_001);
        assert!(observe(at("10.0.0.2:7444", 62_000)).is_some(), "moved");
    }

    #[test]
    fn a_heartbeat_write_keeps_what_was_written_since_it_was_observed() {
        let reg = Registry::new(Db::in_memory());
        let n = NodeName::new("w-1").unwrap();
        let old = ident("w-1", "aa");
        reg.enroll(&n, &old, 0).unwrap();
        let (rec, retire) = reg.check_caller(&old).unwrap();
        let write = reg
            .observe(&old, &rec, retire, at("10.0.0.1:7444", 1_000))
            .unwrap();
        // A renewal and a role change land before the heartbeat's write.
        reg.renewed(reg.authenticate(&old).unwrap(), &ident("w-1", "bb"))
            .unwrap();
        reg.set_role(&n, Some("worker".into())).unwrap();
        reg.save(&write).unwrap();
        let rec = reg.get(&n).unwrap().unwrap();
        assert_eq!(rec.cert_serial, "bb");
        assert_eq!(rec.prev_serial.as_deref(), Some("aa"));
        assert_eq!(rec.role.as_deref(), Some("worker"));
        assert_eq!(rec.endpoint, "10.0.0.1:7444");
        assert_eq!(rec.last_seen_ms, 1_000);
    }

    #[test]
    fn the_first_heartbeat_with_a_renewed_certificate_retires_the_old_one() {
        let reg = Registry::new(Db::in_memory());
        let n = NodeName::new("w-1").unwrap();
        reg.enroll(&n, &ident("w-1", "aa"), 0).unwrap();
        beat(&reg, &ident("w-1", "aa"), at("10.0.0.1:7444", 1_000)).unwrap();
        reg.renewed(
            reg.authenticate(&ident("w-1", "aa")).unwrap(),
            &ident("w-1", "bb"),
        )
        .unwrap();
        beat(&reg, &ident("w-1", "aa"), at("10.0.0.1:7444", 2_000)).unwrap();
        // The first heartbeat with the new certificate also writes (its
        // endpoint changed); the old serial must stay retired.
        beat(&reg, &ident("w-1", "bb"), at("10.0.0.9:7444", 3_000)).unwrap();
        let rec = reg.get(&n).unwrap().unwrap();
        assert_eq!(rec.prev_serial, None);
        assert_eq!(rec.endpoint, "10.0.0.9:7444");
        let err = beat(&reg, &ident("w-1", "aa"), at("10.0.0.1:7444", 4_000))
            .unwrap_err()
            .to_string();
        assert!(err.contains("superseded"), "{err}");
    }
}
