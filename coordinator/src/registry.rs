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
            Some(old) => NodeRecord {
                enrolled_ms: now_ms,
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
            },
        };
        self.db.put_json(&key(name.as_str()), &rec)?;
        Ok(rec)
    }

    /// The record of the calling node, after checking that its certificate is
    /// the current one. A certificate replaced by re-enrollment is refused.
    pub fn authenticate(&self, caller: &Identity) -> Result<NodeRecord, CoordError> {
        let name = NodeName::new(&caller.name)?;
        let rec = self.get(&name)?.ok_or_else(|| {
            CoordError::Superseded(format!(
                "node {name} is not enrolled with this coordinator; enroll it again with a token from `khctl token create --node {name}`"
            ))
        })?;
        if rec.cert_serial == caller.serial {
            if rec.prev_serial.is_some() {
                let mut r = rec.clone();
                r.prev_serial = None;
                self.db.put_json(&key(name.as_str()), &r)?;
            }
            return Ok(rec);
        }
        if rec.prev_serial.as_deref() == Some(caller.serial.as_str()) {
            return Ok(rec);
        }
        Err(CoordError::Superseded(format!(
            "the certificate of node {name} (serial {}) was superseded by a newer enrollment or renewal; re-enroll this agent with `khctl token create --node {name} --force`",
            caller.serial
        )))
    }

    pub fn renewed(&self, mut rec: NodeRecord, identity: &Identity) -> Result<(), CoordError> {
        rec.prev_serial = Some(std::mem::replace(
            &mut rec.cert_serial,
            identity.serial.clone(),
        ));
        rec.cert_expires_ms = unix_ms(identity.not_after);
        self.db.put_json(&key(rec.name.as_str()), &rec)?;
        Ok(())
    }

    /// Applies a heartbeat. Writes the record only when something an operator
    /// would see changed, or to refresh the durable last-seen time.
    pub fn heartbeat(
        &self,
        mut rec: NodeRecord,
        facts: Option<Facts>,
        endpoint: String,
        agent_version: String,
        now_ms: u64,
    ) -> Result<(), CoordError> {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rec.name.to_string(), now_ms);
        let before = rec.clone();
        if facts.is_some() {
            rec.facts = facts;
        }
        rec.endpoint = endpoint;
        rec.agent_version = agent_version;
        let stale = now_ms.saturating_sub(rec.last_seen_ms) > PERSIST_LAST_SEEN_EVERY_MS;
        if stale {
            rec.last_seen_ms = now_ms;
        }
        if rec != before {
            self.db.put_json(&key(rec.name.as_str()), &rec)?;
        }
        Ok(())
    }

    pub fn set_role(&self, name: &NodeName, role: Option<String>) -> Result<(), CoordError> {
        let mut rec = self
            .get(name)?
            .ok_or_else(|| CoordError::NotFound(format!("node {name} is not enrolled")))?;
        if rec.role != role {
            rec.role = role;
            self.db.put_json(&key(name.as_str()), &rec)?;
        }
        Ok(())
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

/// kubeadm requires product_uuid and MAC addresses to be unique per node;
/// cloned VM images are the usual reason they are not.
fn duplicate_warnings(records: &[NodeRecord]) -> HashMap<String, Vec<String>> {
    let mut by_uuid: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_mac: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in records {
        let Some(f) = &r.facts else { continue };
        if !f.product_uuid.is_empty() {
            by_uuid
                .entry(&f.product_uuid)
                .or_default()
                .push(r.name.as_str());
        }
        for mac in &f.mac_addresses {
            by_mac.entry(mac).or_default().push(r.name.as_str());
        }
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (what, groups) in [("product_uuid", by_uuid), ("MAC address", by_mac)] {
        for (value, names) in groups.into_iter().filter(|(_, n)| n.len() > 1) {
            for n in &names {
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

    #[test]
    fn health_follows_heartbeats() {
        let reg = Registry::new(Db::in_memory());
        let n = NodeName::new("cp-1").unwrap();
        let rec = reg.enroll(&n, &ident("cp-1", "01"), 1000).unwrap();
        let iv = Duration::from_secs(1);
        assert!(
            !reg.list(1000, iv).unwrap()[0].ready,
            "never seen is NotReady"
        );
        reg.heartbeat(rec, None, "127.0.0.11:7444".into(), "0.1.0".into(), 2000)
            .unwrap();
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
            let rec = reg.enroll(&n, &ident(name, "01"), 1).unwrap();
            let facts = Facts {
                product_uuid: uuid.into(),
                mac_addresses: vec![mac.into()],
                ..Default::default()
            };
            reg.heartbeat(rec, Some(facts), String::new(), String::new(), 1)
                .unwrap();
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
}
