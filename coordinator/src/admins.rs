//! Admin identities: every admin certificate the coordinator issued or found
//! in its `admin.khconfig`, and which of them are revoked.
//!
//! The TLS layer accepts any admin certificate of the kh CA; the server's
//! revocation layer then refuses the revoked serials, before the
//! authorization layer's decision reaches a handler. The revoked set is held
//! in memory as well as in the store, so that check never waits for sled.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use kh::khconfig::KhConfig;
use kh::pki::{Ca, Identity, Profile, Role};
use kh::time::unix_ms;

use crate::error::CoordError;
use crate::store::Db;

const PREFIX: &str = "admin/";

/// One admin certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdminRecord {
    pub serial: String,
    pub name: String,
    pub issued_ms: u64,
    pub expires_ms: u64,
    pub revoked_ms: Option<u64>,
}

pub struct Admins {
    db: Db,
    revoked: RwLock<HashSet<String>>,
}

/// Admin names are short labels a person chooses: letters, digits, `-`,
/// `_`, `.` and `@`.
fn valid_name(name: &str) -> Result<(), CoordError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CoordError::InvalidArgument(format!(
            "admin name {:?} is not valid: use 1 to 64 letters, digits, '-', '_', '.' or '@'",
            name.chars().take(64).collect::<String>()
        )))
    }
}

impl Admins {
    pub fn load(db: Db) -> Result<Admins, CoordError> {
        let revoked = db
            .scan_json::<AdminRecord>(PREFIX)?
            .into_iter()
            .filter(|(_, r)| r.revoked_ms.is_some())
            .map(|(_, r)| r.serial)
            .collect();
        Ok(Admins {
            db,
            revoked: RwLock::new(revoked),
        })
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(serial)
    }

    /// Records an admin certificate unless it is known already.
    pub fn record(&self, id: &Identity, issued: SystemTime) -> Result<(), CoordError> {
        if id.role != Role::Admin {
            return Err(CoordError::InvalidArgument(format!(
                "{id} is not an admin certificate"
            )));
        }
        let key = format!("{PREFIX}{}", id.serial);
        let rec = AdminRecord {
            serial: id.serial.clone(),
            name: id.name.clone(),
            issued_ms: unix_ms(issued),
            expires_ms: unix_ms(id.not_after),
            revoked_ms: None,
        };
        // Compare-and-swap from nothing: an existing record, revoked or
        // not, is never overwritten.
        self.db.cas_json(&key, None, Some(&rec))?;
        Ok(())
    }

    /// Records the admin certificate of a khconfig file: the one the
    /// coordinator wrote on first start, which a coordinator older than the
    /// admin records never recorded.
    pub fn adopt(&self, cfg: &KhConfig) -> Result<(), CoordError> {
        let der = kh::pki::first_cert_der(&cfg.certificate)?;
        let id = kh::pki::identity_from_der(&der)?;
        let (from, _) = kh::pki::validity(&cfg.certificate)?;
        self.record(&id, from)
    }

    /// Issues a new admin credential for `coordinator` (`host:port`).
    pub fn issue(
        &self,
        ca: &Ca,
        name: &str,
        coordinator: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<(KhConfig, AdminRecord), CoordError> {
        valid_name(name)?;
        let (issued, key) = ca.issue_with_new_key(&Profile::admin(name, validity), now)?;
        self.record(&issued.identity, now)?;
        let rec = self
            .get(&issued.identity.serial)?
            .expect("recorded just above");
        let cfg = KhConfig {
            coordinator: coordinator.to_string(),
            ca: ca.cert_pem().to_string(),
            certificate: issued.cert_pem,
            key,
        };
        Ok((cfg, rec))
    }

    fn get(&self, serial: &str) -> Result<Option<AdminRecord>, CoordError> {
        Ok(self.db.get_json(&format!("{PREFIX}{serial}"))?)
    }

    /// Every admin certificate, oldest first.
    pub fn list(&self) -> Result<Vec<AdminRecord>, CoordError> {
        let mut all: Vec<AdminRecord> = self
            .db
            .scan_json::<AdminRecord>(PREFIX)?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        all.sort_by(|a, b| (a.issued_ms, &a.serial).cmp(&(b.issued_ms, &b.serial)));
        Ok(all)
    }

    /// Revokes the certificate with serial `target`, or every certificate
    /// of the admin named `target`. The caller's own certificate is never
    /// revoked: that would lock out the one making the change.
    pub fn revoke(
        &self,
        target: &str,
        caller: &Identity,
        now: SystemTime,
    ) -> Result<Vec<AdminRecord>, CoordError> {
        let serial = target.trim().to_ascii_lowercase();
        let all = self.list()?;
        let chosen: Vec<AdminRecord> = match all.iter().find(|r| r.serial == serial) {
            Some(r) => vec![r.clone()],
            None => all.iter().filter(|r| r.name == target).cloned().collect(),
        };
        if chosen.is_empty() {
            return Err(CoordError::NotFound(format!(
                "no admin certificate has the serial or name {:?}; `khctl admin list` shows them",
                target.chars().take(80).collect::<String>()
            )));
        }
        if chosen.iter().any(|r| r.serial == caller.serial) {
            return Err(CoordError::FailedPrecondition(format!(
                "{target:?} includes the certificate this request was made with (serial {}); revoke it with another admin credential (`khctl admin create NAME -o FILE` makes one)",
                caller.serial
            )));
        }
        let mut out = vec![];
        for r in chosen {
            if r.revoked_ms.is_some() {
                out.push(r);
                continue;
            }
            let revoked = AdminRecord {
                revoked_ms: Some(unix_ms(now)),
                ..r.clone()
            };
            // Revocation is durable before it is enforced in memory, and
            // enforced before the answer says it happened.
            self.db
                .put_json(&format!("{PREFIX}{}", r.serial), &revoked)?;
            self.revoked
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(r.serial.clone());
            tracing::info!(serial = %r.serial, name = %r.name, by = %caller.name, "admin certificate revoked");
            out.push(revoked);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Admins, Ca, SystemTime) {
        let now = SystemTime::now();
        (
            Admins::load(Db::in_memory()).unwrap(),
            Ca::generate(now).unwrap(),
            now,
        )
    }

    #[test]
    fn revoking_by_name_or_serial_is_enforced_and_survives_a_reload() {
        let (admins, ca, now) = setup();
        let day = Duration::from_secs(86400);
        let (_, a1) = admins.issue(&ca, "alice", "c:1", day, now).unwrap();
        let (_, a2) = admins.issue(&ca, "alice", "c:1", day, now).unwrap();
        let (_, bob) = admins.issue(&ca, "bob", "c:1", day, now).unwrap();
        let caller = Identity {
            role: Role::Admin,
            name: "bob".into(),
            serial: bob.serial.clone(),
            not_after: now + day,
        };
        let gone = admins.revoke("alice", &caller, now).unwrap();
        assert_eq!(gone.len(), 2);
        assert!(admins.is_revoked(&a1.serial) && admins.is_revoked(&a2.serial));
        assert!(!admins.is_revoked(&bob.serial));
        // Bob cannot revoke himself, by name or by serial.
        for target in ["bob", bob.serial.as_str()] {
            let err = admins.revoke(target, &caller, now).unwrap_err();
            assert!(matches!(err, CoordError::FailedPrecondition(_)), "{err}");
        }
        let err = admins.revoke("carol", &caller, now).unwrap_err();
        assert!(matches!(err, CoordError::NotFound(_)), "{err}");
        let reloaded = Admins::load(admins.db.clone()).unwrap();
        assert!(reloaded.is_revoked(&a1.serial));
        assert_eq!(
            reloaded
                .list()
                .unwrap()
                .iter()
                .filter(|r| r.revoked_ms.is_some())
                .count(),
            2
        );
    }

    #[test]
    fn recording_never_unrevokes_and_names_are_checked() {
        let (admins, ca, now) = setup();
        let day = Duration::from_secs(86400);
        let (cfg, rec) = admins.issue(&ca, "ops", "c:1", day, now).unwrap();
        let (_, other) = admins.issue(&ca, "root", "c:1", day, now).unwrap();
        let caller = Identity {
            role: Role::Admin,
            name: "root".into(),
            serial: other.serial,
            not_after: now + day,
        };
        admins.revoke(&rec.serial, &caller, now).unwrap();
        admins.adopt(&cfg).unwrap();
        assert!(admins.is_revoked(&rec.serial));
        assert!(admins.issue(&ca, "a b", "c:1", day, now).is_err());
        assert!(admins.issue(&ca, "", "c:1", day, now).is_err());
    }
}
