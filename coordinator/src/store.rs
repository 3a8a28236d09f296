//! Durable state behind the [`Store`] trait: sled on disk, a map in memory for
//! unit tests. Values are JSON; secrets are sealed with the data dir's key
//! before they reach the store, so sled never holds them in clear.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ring::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, MAX_TAG_LEN as TAG_LEN, NONCE_LEN,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use kh::secret::Secret;

/// The on-disk layout version. Bump it with a migration, never silently.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_KEY: &str = "meta/format-version";
const KEY_CHECK: &str = "meta/key-check";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {path} is locked by another process; is another kh-coordinator running on this data dir?")]
    Locked { path: String },
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("stored value {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("the data dir was written by format version {found}, but this kh-coordinator understands up to {FORMAT_VERSION}; upgrade kh-coordinator")]
    TooNew { found: u32 },
    #[error("cannot decrypt {key}: the key file {key_file} does not belong to this store. Restore the original key file; without it the stored secrets are lost")]
    WrongKey { key: String, key_file: String },
    #[error("key file {path}: {detail}")]
    KeyFile { path: String, detail: String },
    #[error("the store in {store} is sealed with a key that is not at {key_file}. Pass the key file with --secret-key-file PATH (secretKeyFile in --config, or systemd's LoadCredential=kh-secret-key:PATH); without it the stored secrets, the kh CA among them, cannot be opened")]
    KeyMissing { store: String, key_file: String },
}

/// Ordered key-value storage with compare-and-swap. Every write is durable
/// when the call returns.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError>;
    fn delete(&self, key: &str) -> Result<bool, StoreError>;
    /// Deletes every key in `keys` with one durable write, not one per key.
    /// Returns how many existed.
    fn delete_many(&self, keys: &[String]) -> Result<usize, StoreError>;
    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Sets `key` to `new` (or removes it when `None`) only if its current
    /// value equals `expected`. Returns whether the swap happened.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError>;
}

pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open().map_err(|e| match e {
            sled::Error::Io(ref io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                StoreError::Locked {
                    path: path.display().to_string(),
                }
            }
            other => StoreError::Io(format!("opening {}: {other}", path.display())),
        })?;
        Ok(SledStore { db })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl Store for SledStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.db.insert(key, value).map_err(io)?;
        self.flush()
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let existed = self.db.remove(key).map_err(io)?.is_some();
        self.flush()?;
        Ok(existed)
    }

    fn delete_many(&self, keys: &[String]) -> Result<usize, StoreError> {
        let mut existed = 0;
        for key in keys {
            if self.db.remove(key).map_err(io)?.is_some() {
                existed += 1;
            }
        }
        if existed > 0 {
            self.flush()?;
        }
        Ok(existed)
    }

    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.db
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let swapped = self
            .db
            .compare_and_swap(key, expected, new)
            .map_err(io)?
            .is_ok();
        if swapped {
            self.flush()?;
        }
        Ok(swapped)
    }
}

/// The in-memory twin of [`SledStore`], for unit tests.
#[derive(Default)]
pub struct MemStore(Mutex<BTreeMap<String, Vec<u8>>>);

impl MemStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(key).cloned())
    }
    fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.map().insert(key.to_string(), value);
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.map().remove(key).is_some())
    }
    fn delete_many(&self, keys: &[String]) -> Result<usize, StoreError> {
        let mut map = self.map();
        Ok(keys.iter().filter(|k| map.remove(*k).is_some()).count())
    }
    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .map()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let mut map = self.map();
        if map.get(key).map(|v| v.as_slice()) != expected {
            return Ok(false);
        }
        match new {
            Some(v) => map.insert(key.to_string(), v),
            None => map.remove(key),
        };
        Ok(true)
    }
}

/// Seals secrets with ChaCha20-Poly1305 under the data dir's key. The store
/// key is the associated data, so a sealed value cannot be moved to another
/// slot and still open.
pub struct Sealer {
    key: LessSafeKey,
    key_file: String,
}

impl Sealer {
    /// Loads `path`, or creates it (32 random bytes, 0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        Self::load(path, true)
    }

    /// Loads `path`; creates it only when `create` says the store is fresh.
    fn load(path: &Path, create: bool) -> Result<Self, StoreError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |detail: String| StoreError::KeyFile {
            path: path.display().to_string(),
            detail,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let fresh = kh::token::random_bytes::<32>();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| err(format!("cannot create it: {e}")))?;
                f.write_all(&fresh).map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
                fresh.to_vec()
            }
            Err(e) => return Err(err(format!("cannot read it: {e}"))),
        };
        if bytes.len() != 32 {
            return Err(err(format!("it holds {} bytes, expected 32", bytes.len())));
        }
        Ok(Self::from_key(&bytes, path.display().to_string()))
    }

    pub fn from_key(bytes: &[u8], key_file: String) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte ChaCha20 key");
        Sealer {
            key: LessSafeKey::new(unbound),
            key_file,
        }
    }

    fn seal(&self, slot: &str, plain: &[u8]) -> Vec<u8> {
        let nonce_bytes = kh::token::random_bytes::<NONCE_LEN>();
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(slot.as_bytes()),
                &mut buf,
            )
            .expect("sealing cannot fail for in-memory buffers");
        let mut out = nonce_bytes.to_vec();
        out.extend(buf);
        out
    }

    /// Seals `plain` with `aad` as associated data: a random nonce, then
    /// the ciphertext and its tag. For sealed data that lives outside sled
    /// (etcd snapshot files), whose callers bind position and identity in
    /// `aad`.
    pub fn seal_with(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce_bytes = kh::token::random_bytes::<NONCE_LEN>();
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(plain);
        let (_, body) = out.split_at_mut(NONCE_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                body,
            )
            .expect("sealing cannot fail for in-memory buffers");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// [`Sealer::seal_with`] without a copy: encrypts `buf` in place and
    /// appends the tag; the nonce to write before it is returned.
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>) -> [u8; NONCE_LEN] {
        let nonce_bytes = kh::token::random_bytes::<NONCE_LEN>();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                buf,
            )
            .expect("sealing cannot fail for in-memory buffers");
        nonce_bytes
    }

    /// Opens what [`Sealer::seal_with`] sealed under the same `aad`, in
    /// place; `None` when the bytes, the associated data or the key differ.
    pub fn open_with(&self, aad: &[u8], mut sealed: Vec<u8>) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
        let len = self
            .key
            .open_within(nonce, Aad::from(aad), &mut sealed, NONCE_LEN..)
            .ok()?
            .len();
        sealed.truncate(len);
        Some(sealed)
    }

    /// Bytes [`Sealer::seal_with`] adds to what it seals.
    pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

    fn open(&self, slot: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.len() < NONCE_LEN {
            return Err(StoreError::Corrupt {
                key: slot.into(),
                detail: "sealed value too short".into(),
            });
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| StoreError::Corrupt {
            key: slot.into(),
            detail: "bad nonce".into(),
        })?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(slot.as_bytes()), &mut buf)
            .map_err(|_| StoreError::WrongKey {
                key: slot.into(),
                key_file: self.key_file.clone(),
            })?;
        Ok(plain.to_vec())
    }
}

/// Typed access to the store: JSON values, sealed secrets, the format check.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
}

impl Db {
    /// Checks the format version (writing it into a fresh store) and that the
    /// key file opens this store's secrets.
    pub fn new(store: Arc<dyn Store>, sealer: Sealer) -> Result<Self, StoreError> {
        let db = Db {
            store,
            sealer: Arc::new(sealer),
        };
        match db.get_json::<u32>(FORMAT_KEY)? {
            Some(v) if v > FORMAT_VERSION => return Err(StoreError::TooNew { found: v }),
            Some(_) => {}
            None => db.put_json(FORMAT_KEY, &FORMAT_VERSION)?,
        }
        match db.store.get(KEY_CHECK)? {
            Some(sealed) => {
                db.sealer.open(KEY_CHECK, &sealed)?;
            }
            None => db.store.put(KEY_CHECK, db.sealer.seal(KEY_CHECK, b"kh"))?,
        }
        Ok(db)
    }

    /// Opens the store in `dir` with the key in `dir/secret.key`.
    pub fn open_dir(dir: &Path) -> Result<Self, StoreError> {
        Self::open(dir, None)
    }

    /// Opens the store in `dir`, sealed with the key at `key_file`, or at
    /// `dir/secret.key` when `None`. Only a fresh store gets a new key: a
    /// store that already holds sealed values and whose key file is missing
    /// is refused, so a copy of the data dir without its key never starts
    /// as an empty-looking coordinator.
    ///
    /// The store directory is made 0700 and its files 0600, existing ones
    /// included: sled creates them with the process umask.
    pub fn open(dir: &Path, key_file: Option<&Path>) -> Result<Self, StoreError> {
        let store_dir = dir.join("store");
        restrict_tree(&store_dir, true)?;
        let store = SledStore::open(&store_dir)?;
        restrict_tree(&store_dir, false)?;
        let in_dir = dir.join(SECRET_KEY_FILE);
        let key_path = key_file.unwrap_or(&in_dir);
        let fresh = store.get(KEY_CHECK)?.is_none();
        if !fresh && !key_path.exists() {
            return Err(StoreError::KeyMissing {
                store: store_dir.display().to_string(),
                key_file: key_path.display().to_string(),
            });
        }
        if key_file.is_some() && in_dir.exists() {
            tracing::warn!(
                separate = %key_path.display(),
                in_data_dir = %in_dir.display(),
                "the sealing key comes from a separate file, but a key file is still in the data dir: a copy of the data dir alone still opens the kh CA. Once the coordinator runs with the separate key, remove the one in the data dir"
            );
        }
        let sealer = Sealer::load(key_path, fresh)?;
        private_key_file(key_path, key_file.is_none())?;
        Db::new(Arc::new(store), sealer)
    }

    pub fn in_memory() -> Self {
        let key = kh::token::random_bytes::<32>();
        Db::new(
            Arc::new(MemStore::default()),
            Sealer::from_key(&key, "<memory>".into()),
        )
        .expect("a fresh in-memory store always opens")
    }

    /// The key that seals the store's secrets, for sealed data kept
    /// outside sled (etcd snapshots).
    pub fn sealer(&self) -> &Arc<Sealer> {
        &self.sealer
    }

    pub fn raw(&self) -> &dyn Store {
        self.store.as_ref()
    }

    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.store.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    pub fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.store.put(key, encode(value))
    }

    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.store.delete(key)
    }

    pub fn delete_many(&self, keys: &[String]) -> Result<usize, StoreError> {
        self.store.delete_many(keys)
    }

    pub fn scan_json<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        self.store
            .scan_prefix(prefix)?
            .into_iter()
            .map(|(k, v)| decode(&k, &v).map(|t| (k, t)))
            .collect()
    }

    /// JSON compare-and-swap against the exact bytes of `expected`.
    pub fn cas_json<T: Serialize>(
        &self,
        key: &str,
        expected: Option<&T>,
        new: Option<&T>,
    ) -> Result<bool, StoreError> {
        let expected = expected.map(encode);
        self.store
            .compare_and_swap(key, expected.as_deref(), new.map(encode))
    }

    pub fn get_secret(&self, key: &str) -> Result<Option<Secret<String>>, StoreError> {
        let Some(sealed) = self.store.get(key)? else {
            return Ok(None);
        };
        let plain = self.sealer.open(key, &sealed)?;
        String::from_utf8(plain)
            .map(|s| Some(Secret::new(s)))
            .map_err(|e| StoreError::Corrupt {
                key: key.into(),
                detail: e.to_string(),
            })
    }

    pub fn put_secret(&self, key: &str, value: &Secret<String>) -> Result<(), StoreError> {
        self.store
            .put(key, self.sealer.seal(key, value.expose().as_bytes()))
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("kh records always serialize")
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        detail: e.to_string(),
    })
}

/// The key file's name in the data dir, where it lives unless it is given
/// from a separate path.
pub const SECRET_KEY_FILE: &str = "secret.key";

/// A key file others can read is made 0600 when it is the data dir's own;
/// a separate one (systemd's read-only credential, an operator's file) is
/// only warned about.
fn private_key_file(path: &Path, ours: bool) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |detail: String| StoreError::KeyFile {
        path: path.display().to_string(),
        detail,
    };
    let mode = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    if ours {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| err(format!("cannot make it 0600: {e}")))?;
    } else {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the sealing key file is readable by other users; make it 0600 or 0400");
    }
    Ok(())
}

/// Makes `dir` 0700 (creating it when `create`) and every file under it 0600
/// and every directory 0700.
fn restrict_tree(dir: &Path, create: bool) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |p: &Path, e: std::io::Error| StoreError::Io(format!("{}: {e}", p.display()));
    if create {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, e))?;
    }
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(&d, e))?;
        for entry in std::fs::read_dir(&d).map_err(|e| io(&d, e))? {
            let entry = entry.map_err(|e| io(&d, e))?;
            let path = entry.path();
            // file_type does not follow links: a link is left alone.
            let kind = entry.file_type().map_err(|e| io(&path, e))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| io(&path, e))?;
            }
        }
    }
    Ok(())
}

/// Where a data dir keeps its files.
pub fn admin_config_path(dir: &Path) -> PathBuf {
    dir.join("admin.khconfig")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> Vec<(&'static str, Arc<dyn Store>, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(&dir.path().join("s")).unwrap();
        vec![
            ("mem", Arc::new(MemStore::default()), None),
            ("sled", Arc::new(sled), Some(dir)),
        ]
    }

    #[test]
    fn both_stores_agree_on_the_contract() {
        for (name, s, _dir) in both() {
            assert_eq!(s.get("a/1").unwrap(), None, "{name}");
            s.put("a/1", b"x".to_vec()).unwrap();
            s.put("a/2", b"y".to_vec()).unwrap();
            s.put("b/1", b"z".to_vec()).unwrap();
            let keys: Vec<_> = s
                .scan_prefix("a/")
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(keys, vec!["a/1", "a/2"], "{name}");
            assert!(
                !s.compare_and_swap("a/1", Some(b"nope"), Some(b"w".to_vec()))
                    .unwrap(),
                "{name}"
            );
            assert!(
                s.compare_and_swap("a/1", Some(b"x"), Some(b"w".to_vec()))
                    .unwrap(),
                "{name}"
            );
            assert!(
                s.compare_and_swap("c", None, Some(b"new".to_vec()))
                    .unwrap(),
                "{name}"
            );
            assert!(
                !s.compare_and_swap("c", None, Some(b"again".to_vec()))
                    .unwrap(),
                "{name}"
            );
            assert!(
                s.compare_and_swap("c", Some(b"new"), None).unwrap(),
                "{name}"
            );
            assert!(s.delete("a/2").unwrap(), "{name}");
            assert!(!s.delete("a/2").unwrap(), "{name}");
            let gone = ["a/1".to_string(), "a/2".to_string(), "b/1".to_string()];
            assert_eq!(s.delete_many(&gone).unwrap(), 2, "{name}");
            assert!(s.scan_prefix("").unwrap().is_empty(), "{name}");
            assert_eq!(s.delete_many(&gone).unwrap(), 0, "{name}");
        }
    }

    #[test]
    fn secrets_are_sealed_at_rest_and_bound_to_their_slot() {
        let db = Db::in_memory();
        db.put_secret("ca/key", &Secret::new("PRIVATE KEY".into()))
            .unwrap();
        let raw = db.raw().get("ca/key").unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("PRIVATE"));
        assert_eq!(
            db.get_secret("ca/key").unwrap().unwrap().expose(),
            "PRIVATE KEY"
        );
        // Moving the sealed bytes to another slot must not open.
        db.raw().put("other", raw).unwrap();
        assert!(matches!(
            db.get_secret("other"),
            Err(StoreError::WrongKey { .. })
        ));
    }

    #[test]
    fn a_data_dir_reopens_with_its_key_and_refuses_another_key() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open_dir(dir.path()).unwrap();
            db.put_secret("s", &Secret::new("v".into())).unwrap();
        }
        let db = Db::open_dir(dir.path()).unwrap();
        assert_eq!(db.get_secret("s").unwrap().unwrap().expose(), "v");
        drop(db);
        std::fs::write(dir.path().join("secret.key"), [7u8; 32]).unwrap();
        let err = Db::open_dir(dir.path()).err().unwrap().to_string();
        assert!(err.contains("does not belong to this store"), "{err}");
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn modes_under(dir: &Path) -> Vec<(PathBuf, u32)> {
        let mut out = vec![(dir.to_path_buf(), mode(dir))];
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(modes_under(&p));
            } else {
                out.push((p.clone(), mode(&p)));
            }
        }
        out
    }

    #[test]
    fn the_store_is_private_and_existing_files_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        drop(Db::open_dir(dir.path()).unwrap());
        let store = dir.path().join("store");
        // What an older coordinator left: sled's files under the umask.
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
        let files: Vec<_> = modes_under(&store)
            .into_iter()
            .filter(|(p, _)| p.is_file())
            .collect();
        assert!(!files.is_empty());
        for (p, _) in &files {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        drop(Db::open_dir(dir.path()).unwrap());
        for (p, m) in modes_under(&store) {
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(m, want, "{}", p.display());
        }
        assert_eq!(mode(&dir.path().join(SECRET_KEY_FILE)), 0o600);
        // A key file copied in with a loose mode is tightened too.
        let key = dir.path().join(SECRET_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Db::open_dir(dir.path()).unwrap());
        assert_eq!(mode(&key), 0o600);
    }

    #[test]
    fn a_separate_key_file_is_needed_once_the_store_is_sealed_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("kh-secret-key");
        {
            let db = Db::open(dir.path(), Some(&key)).unwrap();
            db.put_secret("s", &Secret::new("v".into())).unwrap();
        }
        assert_eq!(mode(&key), 0o600);
        assert!(!dir.path().join(SECRET_KEY_FILE).exists());
        // The data dir alone does not open, and says what is missing; it
        // does not quietly create a new key either.
        let err = Db::open_dir(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::KeyMissing { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("--secret-key-file"), "{msg}");
        assert!(!dir.path().join(SECRET_KEY_FILE).exists());
        // A missing separate file is refused the same way.
        let err = Db::open(dir.path(), Some(&keys.path().join("gone")))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::KeyMissing { .. }), "{err}");
        let db = Db::open(dir.path(), Some(&key)).unwrap();
        assert_eq!(db.get_secret("s").unwrap().unwrap().expose(), "v");
    }

    #[test]
    fn a_key_moved_out_of_an_existing_data_dir_keeps_opening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open_dir(dir.path()).unwrap();
            db.put_secret("s", &Secret::new("v".into())).unwrap();
        }
        let keys = tempfile::tempdir().unwrap();
        let moved = keys.path().join("kh-secret-key");
        std::fs::rename(dir.path().join(SECRET_KEY_FILE), &moved).unwrap();
        let db = Db::open(dir.path(), Some(&moved)).unwrap();
        assert_eq!(db.get_secret("s").unwrap().unwrap().expose(), "v");
    }

    #[test]
    fn a_newer_format_is_refused() {
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        store.put(FORMAT_KEY, b"99".to_vec()).unwrap();
        let err = Db::new(store, Sealer::from_key(&[1; 32], "k".into()))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::TooNew { found: 99 }));
    }
}
