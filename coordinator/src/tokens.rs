//! Enrollment tokens: random, single-use, expiring, bound to one node name,
//! stored only as a hash of their secret.

use std::sync::atomic::{AtomicU64, Ordering};
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
/// Creating a token sweeps out old spent ones at most this often. A sweep
/// reads every token record, so sweeping on every creation made creating n
/// tokens cost O(n²) (1,362 tokens/s with 1,000 stored, 421/s with 5,000).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// The longest an enrollment token may live. A token is meant for the next
/// few minutes or hours of setting a host up; a longer life only widens the
/// window in which a leaked one enrolls an impostor.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// When token creation may next sweep out old spent tokens. One per
/// coordinator. Sweeping only keeps the store from growing: [`check`] refuses
/// used and expired tokens whether or not they have been swept.
#[derive(Debug, Default)]
pub struct PruneSchedule {
    next_ms: AtomicU64,
}

impl PruneSchedule {
    /// Whether a sweep is due at `now_ms`. A due sweep is claimed by exactly
    /// one caller, which moves the next one `PRUNE_EVERY` ahead.
    fn claim(&self, now_ms: u64) -> bool {
        let next = self.next_ms.load(Ordering::Relaxed);
        now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(PRUNE_EVERY.as_millis() as u64),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

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

/// Creates a token. Its cost does not grow with the number of stored tokens,
/// except for the sweep `schedule` allows at most once per `PRUNE_EVERY`.
pub fn create(
    db: &Db,
    clock: &dyn Clock,
    schedule: &PruneSchedule,
    node: NodeName,
    ttl: Duration,
    force: bool,
) -> Result<(EnrollToken, TokenRecord), CoordError> {
    if ttl.is_zero() {
        return Err(CoordError::InvalidArgument(
            "--ttl must be longer than zero".into(),
        ));
    }
    if ttl > MAX_TTL {
        return Err(CoordError::InvalidArgument(format!(
            "--ttl {} is longer than the limit of {} for enrollment tokens; create the token when the host is ready to enroll, or a new one later",
            humantime::format_duration(ttl),
            humantime::format_duration(MAX_TTL)
        )));
    }
    let now = unix_ms(clock.now());
    if schedule.claim(now) {
        prune(db, now)?;
    }
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

/// Every stored token. Listing reads every record anyway, so it always
/// sweeps out old spent ones first.
pub fn list(db: &Db, clock: &dyn Clock) -> Result<Vec<TokenRecord>, CoordError> {
    prune(db, unix_ms(clock.now()))?;
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
            "no token with id {}; see `khctl token list`",
            kh::echo(id)
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

/// Deletes tokens used or expired more than `KEEP_SPENT` ago, with one
/// durable write for all of them.
fn prune(db: &Db, now: u64) -> Result<(), CoordError> {
    let keep = KEEP_SPENT.as_millis() as u64;
    let old: Vec<String> = db
        .scan_json::<TokenRecord>(PREFIX)?
        .into_iter()
        .filter(|(_, rec)| {
            let spent_at = rec.used_ms.unwrap_or(rec.expires_ms);
            now >= rec.expires_ms.min(spent_at) && now.saturating_sub(spent_at) > keep
        })
        .map(|(k, _)| k)
        .collect();
    if !old.is_empty() {
        db.delete_many(&old)?;
    }
    Ok(())
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use crate::store::{MemStore, Sealer, Store, StoreError};
    use kh::time::ManualClock;

    fn node(n: &str) -> NodeName {
        NodeName::new(n).unwrap()
    }

    /// A token for `node` lasting `ttl_s` seconds, without --force.
    fn make(
        db: &Db,
        clock: &dyn Clock,
        sched: &PruneSchedule,
        node: NodeName,
        ttl_s: u64,
    ) -> (EnrollToken, TokenRecord) {
        create(db, clock, sched, node, Duration::from_secs(ttl_s), false).unwrap()
    }

    #[test]
    fn a_token_works_once_for_its_node_only() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(1_000_000);
        let sched = PruneSchedule::default();
        let (tok, _) = make(&db, &clock, &sched, node("cp-1"), 60);
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
        let sched = PruneSchedule::default();
        let (tok, _) = make(&db, &clock, &sched, node("w-1"), 60);
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
        let sched = PruneSchedule::default();
        make(&db, &clock, &sched, node("a"), 60);
        create(
            &db,
            &clock,
            &sched,
            node("b"),
            Duration::from_secs(3600),
            true,
        )
        .unwrap();
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
    fn a_ttl_beyond_the_limit_is_refused() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(1_000_000);
        let sched = PruneSchedule::default();
        for secs in [u64::MAX, MAX_TTL.as_secs() + 1] {
            let err = create(
                &db,
                &clock,
                &sched,
                node("cp-1"),
                Duration::from_secs(secs),
                false,
            )
            .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(
                err.to_string()
                    .contains("is longer than the limit of 7days"),
                "{err}"
            );
        }
        let (_, rec) = make(&db, &clock, &sched, node("cp-1"), MAX_TTL.as_secs());
        assert_eq!(rec.expires_ms, 1_000_000 + MAX_TTL.as_millis() as u64);
        assert!(
            tokens_len(&db) == 1,
            "only the one within the limit was stored"
        );
    }

    fn tokens_len(db: &Db) -> usize {
        db.scan_json::<TokenRecord>(PREFIX).unwrap().len()
    }

    #[test]
    fn a_huge_id_is_quoted_cut_short() {
        let db = Db::in_memory();
        let err = delete(&db, &"q".repeat(1 << 20)).unwrap_err().to_string();
        assert!(err.len() < 300, "{} bytes", err.len());
        assert!(err.contains("(1048576 bytes)"), "{err}");
    }

    #[test]
    fn delete_by_id_or_whole_token() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(1);
        let sched = PruneSchedule::default();
        let (a, _) = make(&db, &clock, &sched, node("a"), 60);
        let (b, _) = make(&db, &clock, &sched, node("b"), 60);
        delete(&db, &a.id).unwrap();
        delete(&db, &b.reveal()).unwrap();
        assert!(delete(&db, &a.id)
            .unwrap_err()
            .to_string()
            .contains("no token"));
    }

    /// A store that counts how often the token records are scanned.
    #[derive(Default)]
    struct CountingStore {
        inner: MemStore,
        scans: AtomicUsize,
    }

    impl Store for CountingStore {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
            self.inner.put(key, value)
        }
        fn delete(&self, key: &str) -> Result<bool, StoreError> {
            self.inner.delete(key)
        }
        fn delete_many(&self, keys: &[String]) -> Result<usize, StoreError> {
            self.inner.delete_many(keys)
        }
        fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
            self.scans.fetch_add(1, Ordering::Relaxed);
            self.inner.scan_prefix(prefix)
        }
        fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            new: Option<Vec<u8>>,
        ) -> Result<bool, StoreError> {
            self.inner.compare_and_swap(key, expected, new)
        }
    }

    fn counting_db() -> (Db, Arc<CountingStore>) {
        let store = Arc::new(CountingStore::default());
        let db = Db::new(store.clone(), Sealer::from_key(&[3; 32], "k".into())).unwrap();
        (db, store)
    }

    #[test]
    fn creating_many_tokens_sweeps_at_most_once_a_minute() {
        let (db, store) = counting_db();
        let clock = ManualClock::at_unix_ms(1_000_000);
        let sched = PruneSchedule::default();
        for i in 0..500 {
            create(
                &db,
                &clock,
                &sched,
                node(&format!("n-{i}")),
                Duration::from_secs(60),
                false,
            )
            .unwrap();
            clock.advance(Duration::from_millis(100));
        }
        // 50 s of creations: one sweep, by the first, however many are stored.
        assert_eq!(store.scans.load(Ordering::Relaxed), 1);
        clock.advance(Duration::from_millis(9_900));
        make(&db, &clock, &sched, node("late"), 60);
        assert_eq!(store.scans.load(Ordering::Relaxed), 1, "59.9 s after");
        clock.advance(Duration::from_millis(200));
        make(&db, &clock, &sched, node("later"), 60);
        assert_eq!(store.scans.load(Ordering::Relaxed), 2, "60.1 s after");
    }

    #[test]
    fn an_expired_token_is_refused_before_and_after_the_sweep() {
        let db = Db::in_memory();
        let clock = ManualClock::at_unix_ms(1_000_000);
        let sched = PruneSchedule::default();
        let (old, _) = make(&db, &clock, &sched, node("w-1"), 60);
        let (used, rec) = make(&db, &clock, &sched, node("w-2"), 600);
        spend(&db, &clock, &rec).unwrap();
        // Past the time a sweep would delete them, but no sweep is due: both
        // records are still there, and still refused.
        clock.advance(KEEP_SPENT + Duration::from_secs(601));
        assert!(sched.next_ms.load(Ordering::Relaxed) > 0);
        sched.next_ms.store(u64::MAX, Ordering::Relaxed);
        make(&db, &clock, &sched, node("w-3"), 60);
        assert!(db.get_json::<TokenRecord>(&key(&old.id)).unwrap().is_some());
        let err = check(&db, &clock, &old.reveal(), &node("w-1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expired at"), "{err}");
        let err = check(&db, &clock, &used.reveal(), &node("w-2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already used"), "{err}");
        // Once a sweep is due, the next creation deletes both.
        sched.next_ms.store(0, Ordering::Relaxed);
        make(&db, &clock, &sched, node("w-4"), 60);
        assert!(db.get_json::<TokenRecord>(&key(&old.id)).unwrap().is_none());
        for (tok, n) in [(&old, "w-1"), (&used, "w-2")] {
            let err = check(&db, &clock, &tok.reveal(), &node(n))
                .unwrap_err()
                .to_string();
            assert!(err.contains("not valid"), "{err}");
        }
        let left: Vec<_> = list(&db, &clock)
            .unwrap()
            .into_iter()
            .map(|r| r.node.to_string())
            .collect();
        assert_eq!(left, vec!["w-3", "w-4"]);
    }
}
