//! Enrollment tokens: random, single-use, expiring, bound to one node name,
//! stored only as a hash of their secret.

use std::time::Duration;

use kh::names::NodeName;
use kh::time::{rfc3339, unix_ms, Clock};
use kh::token::EnrollToken;

use crate::error::CoordError;
use crate::store::Db;

const PREFIX: &str = "tokens/";
/// Used and expired tokens stay listed this long, so an operator can see what
/// happened to a token, then they are pruned.
const KEEP_SPENT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub node: NodeName,
    pub secret_hash: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub force: bool,
    pub used_ms: Option<u64>,
}

impl TokenRecord {
    pub fn state(&self, now_ms: u64) -> &'static str {
        if self.used_ms.is_some() {
            "used"
        } else if now_ms >= self.expires_ms {
            "expired"
        } else {
            "valid"
        }
    }
}

pub fn create(
    db: &Db,
    clock: &dyn Clock,
    node: NodeName,
    ttl: Duration,
    force: bool,
) -> Result<(EnrollToken, TokenRecord), CoordError> {
    if ttl.is_zero() {
        return Err(CoordError::InvalidArgument(
            "--ttl must be longer than zero".into(),
        ));
    }
    prune(db, clock)?;
    let now = unix_ms(clock.now());
    loop {
        let token = EnrollToken::generate();
        let rec = TokenRecord {
            id: token.id.clone(),
            node: node.clone(),
            secret_hash: token.secret_hash(),
            created_ms: now,
            expires_ms: now.saturating_add(ttl.as_millis() as u64),
            force,
            used_ms: None,
        };
        // A colliding id (1 in 2 billion) just draws again.
        if db.cas_json(&key(&token.id), None, Some(&rec))? {
            return Ok((token, rec));
        }
    }
}

pub fn list(db: &Db, clock: &dyn Clock) -> Result<Vec<TokenRecord>, CoordError> {
    prune(db, clock)?;
    let mut all: Vec<TokenRecord> = db.scan_json(PREFIX)?.into_iter().map(|(_, r)| r).collect();
    // Ties (same millisecond) fall back to node and id, so the listing is stable.
    all.sort_by(|a, b| (a.created_ms, &a.node, &a.id).cmp(&(b.created_ms, &b.node, &b.id)));
    Ok(all)
}

/// Deletes by id or by the whole token text.
pub fn delete(db: &Db, id_or_token: &str) -> Result<(), CoordError> {
    let id = id_or_token.split('.').next().unwrap_or_default();
    if db.delete(&key(id))? {
        Ok(())
    } else {
        Err(CoordError::NotFound(format!(
            "no token with id {id:?}; see `khctl token list`"
        )))
    }
}

/// Checks a presented token for `node` without spending it.
pub fn check(
    db: &Db,
    clock: &dyn Clock,
    text: &str,
    node: &NodeName,
) -> Result<TokenRecord, CoordError> {
    let token = EnrollToken::parse(text).map_err(|e| CoordError::TokenRefused(e.to_string()))?;
    let unknown = || {
        CoordError::TokenRefused(format!(
            "enrollment token {}.… is not valid: it was never issued by this coordinator or was deleted. Create one with `khctl token create --node {node}`",
            token.id
        ))
    };
    let rec: TokenRecord = db.get_json(&key(&token.id))?.ok_or_else(unknown)?;
    if !token.matches_hash(&rec.secret_hash) {
        return Err(unknown());
    }
    let now = unix_ms(clock.now());
    if let Some(used) = rec.used_ms {
        return Err(CoordError::TokenRefused(format!(
            "enrollment token {}.… was already used at {} and tokens are single-use. Create a new one with `khctl token create --node {}`",
            rec.id,
            rfc3339(used),
            rec.node
        )));
    }
    if now >= rec.expires_ms {
        return Err(CoordError::TokenRefused(format!(
            "enrollment token {}.… expired at {}. Create a new one with `khctl token create --node {}`",
            rec.id,
            rfc3339(rec.expires_ms),
            rec.node
        )));
    }
    if &rec.node != node {
        return Err(CoordError::TokenRefused(format!(
            "enrollment token {}.… was created for node {:?}, not {:?}. Run enroll with --node-name {} or create a token for {node} with `khctl token create --node {node}`",
            rec.id, rec.node.as_str(), node.as_str(), rec.node
        )));
    }
    Ok(rec)
}

/// Marks a checked token used. Compare-and-swap makes two concurrent
/// enrollments with the same token end with exactly one winner.
pub fn spend(db: &Db, clock: &dyn Clock, rec: &TokenRecord) -> Result<(), CoordError> {
    let mut used = rec.clone();
    used.used_ms = Some(unix_ms(clock.now()));
    if db.cas_json(&key(&rec.id), Some(rec), Some(&used))? {
        Ok(())
    } else {
        Err(CoordError::TokenRefused(format!(
            "enrollment token {}.… was used or deleted concurrently; tokens are single-use. Create a new one with `khctl token create --node {}`",
            rec.id, rec.node
        )))
    }
}

fn prune(db: &Db, clock: &dyn Clock) -> Result<(), CoordError> {
    let now = unix_ms(clock.now());
    let keep = KEEP_SPENT.as_millis() as u64;
    for (k, rec) in db.scan_json::<TokenRecord>(PREFIX)? {
        let spent_at = rec.used_ms.unwrap_or(rec.expires_ms);
        if now >= rec.expires_ms.min(spent_at) && now.saturating_sub(spent_at) > keep {
            db.delete(&k)?;
        }
    }
    Ok(())
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kh::time::ManualClock;

    fn node(n: &str) -> NodeName {
        NodeName::new(n).unwrap()
    }

    #[test]
    fn a_token_works_once_for_its_node_only() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(1_000_000);
        let (tok, _) = create(&db, &clock, node("cp-1"), Duration::from_secs(60), false).unwrap();
        let text = tok.reveal();
        let err = check(&db, &clock, &text, &node("cp-2"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("was created for node \"cp-1\", not \"cp-2\""),
            "{err}"
        );
        let rec = check(&db, &clock, &text, &node("cp-1")).unwrap();
        spend(&db, &clock, &rec).unwrap();
        let err = check(&db, &clock, &text, &node("cp-1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already used"), "{err}");
        // A stale check result cannot be spent twice.
        assert!(spend(&db, &clock, &rec).is_err());
    }

    #[test]
    fn expired_unknown_and_forged_tokens_are_refused() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(1_000_000);
        let (tok, _) = create(&db, &clock, node("w-1"), Duration::from_secs(60), false).unwrap();
        clock.advance(Duration::from_secs(61));
        let err = check(&db, &clock, &tok.reveal(), &node("w-1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expired at"), "{err}");
        let forged = format!("{}.0000000000000000", tok.id);
        let err = check(&db, &clock, &forged, &node("w-1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid"), "{err}");
        let err = check(&db, &clock, "zzzzzz.0000000000000000", &node("w-1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid"), "{err}");
        let err = check(&db, &clock, "nonsense", &node("w-1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed"), "{err}");
    }

    #[test]
    fn list_shows_state_and_prunes_old_spent_tokens() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(1_000_000);
        create(&db, &clock, node("a"), Duration::from_secs(60), false).unwrap();
        create(&db, &clock, node("b"), Duration::from_secs(3600), true).unwrap();
        clock.advance(Duration::from_secs(120));
        let states: Vec<_> = list(&db, &clock)
            .unwrap()
            .iter()
            .map(|r| (r.node.to_string(), r.state(unix_ms(clock.now()))))
            .collect();
        assert_eq!(states, vec![("a".into(), "expired"), ("b".into(), "valid")]);
        clock.advance(Duration::from_secs(2 * 86400));
        assert!(list(&db, &clock).unwrap().is_empty());
    }

    #[test]
    fn delete_by_id_or_whole_token() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(1);
        let (a, _) = create(&db, &clock, node("a"), Duration::from_secs(60), false).unwrap();
        let (b, _) = create(&db, &clock, node("b"), Duration::from_secs(60), false).unwrap();
        delete(&db, &a.id).unwrap();
        delete(&db, &b.reveal()).unwrap();
        assert!(delete(&db, &a.id)
            .unwrap_err()
            .to_string()
            .contains("no token"));
    }
}
