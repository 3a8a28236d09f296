//! The sealed file an etcd snapshot is kept in, and the etcd integrity check.
//!
//! Layout: the magic `KHSNAP1\n`, then records `[flag u8][len u32 BE][sealed]`
//! where `sealed` is a plaintext chunk of at most [`CHUNK`] bytes sealed with
//! ChaCha20-Poly1305 under the store's key ([`Sealer::seal_with`]). The
//! associated data binds the snapshot id, the chunk's index and whether it is
//! the last one, so a chunk moved within a file, a file renamed to another
//! id, a file cut short and a file with a foreign chunk all fail to open.
//! The flag is in the clear only to say which associated data to try.
//!
//! Writes go to `<id>.snap.partial` (0600, in a 0700 directory), which is
//! fsynced and renamed into place only after the etcd integrity check
//! passed: an etcd v3 snapshot, as `etcdctl snapshot save` writes it, ends
//! with a SHA-256 of everything before it, and is a whole number of
//! 512-byte blocks plus those 32 bytes (`etcdctl snapshot restore` checks
//! the same). Memory stays bounded by one chunk on either side.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::digest::{Context, SHA256, SHA256_OUTPUT_LEN};

use crate::store::Sealer;

/// Plaintext bytes per sealed record.
pub const CHUNK: usize = 1 << 20;
const MAGIC: &[u8; 8] = b"KHSNAP1\n";
const FLAG_MORE: u8 = 0;
const FLAG_LAST: u8 = 1;
const SUFFIX: &str = ".snap";
const PARTIAL_SUFFIX: &str = ".snap.partial";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("etcd snapshot {id}: cannot {action} {}: {source}", path.display())]
    Io {
        id: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd snapshot {id} does not open at chunk {index} ({}): {detail}. The file was altered, mixed with another snapshot's, or sealed under another key file; delete it with `khctl etcd snapshot delete {id}`", path.display())]
    Tampered {
        id: String,
        index: u64,
        path: PathBuf,
        detail: String,
    },
    #[error("etcd snapshot {id} is truncated after chunk {index} ({}): its last chunk is missing. Delete it with `khctl etcd snapshot delete {id}`", path.display())]
    Truncated {
        id: String,
        index: u64,
        path: PathBuf,
    },
    #[error("not an etcd v3 snapshot ({id}): {detail}. `etcdctl snapshot restore` would refuse it too; use a file written by `etcdctl snapshot save` or `khctl etcd snapshot save -o FILE`")]
    NotEtcd { id: String, detail: String },
}

/// The file of snapshot `id` in `dir`.
pub fn path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}{SUFFIX}"))
}

fn partial_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}{PARTIAL_SUFFIX}"))
}

/// The ids of the sealed files in `dir`, and the partial files left by a
/// write that never finished.
pub fn scan(dir: &Path) -> std::io::Result<(Vec<String>, Vec<PathBuf>)> {
    let mut done = Vec::new();
    let mut partial = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((done, partial)),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(PARTIAL_SUFFIX) {
            partial.push(entry.path());
        } else if let Some(id) = name.strip_suffix(SUFFIX) {
            done.push(id.to_string());
        }
    }
    done.sort();
    Ok((done, partial))
}

fn aad(id: &str, index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + id.len());
    a.extend_from_slice(b"kh etcd snapshot\0");
    a.extend_from_slice(id.as_bytes());
    a.push(0);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(u8::from(last));
    a
}

/// The directory snapshots live in, 0700 also when it existed wider.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// What a finished write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
}

/// Seals a snapshot into `<id>.snap.partial` as its bytes arrive; the
/// partial file is removed unless [`SealedWriter::finish`] succeeds.
pub struct SealedWriter {
    id: String,
    sealer: Arc<Sealer>,
    dir: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    index: u64,
    /// SHA-256 of everything but the last 32 bytes seen so far: etcd's
    /// checksum, and with the last 32 bytes the file's own (one pass).
    etcd: Context,
    tail: Vec<u8>,
    size: u64,
}

impl std::fmt::Debug for SealedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedWriter")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl SealedWriter {
    pub fn create(dir: &Path, id: &str, sealer: Arc<Sealer>) -> Result<Self, SnapshotError> {
        let partial = partial_path(dir, id);
        let io = |action, source| SnapshotError::Io {
            id: id.to_string(),
            action,
            path: partial.clone(),
            source,
        };
        create_dir(dir).map_err(|e| io("create the directory of", e))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| io("create", e))?;
        file.write_all(MAGIC).map_err(|e| io("write", e))?;
        Ok(SealedWriter {
            id: id.to_string(),
            sealer,
            dir: dir.to_path_buf(),
            file: Some(file),
            buf: Vec::with_capacity(CHUNK + Sealer::OVERHEAD),
            index: 0,
            etcd: Context::new(&SHA256),
            tail: Vec::with_capacity(2 * SHA256_OUTPUT_LEN),
            size: 0,
        })
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            id: self.id.clone(),
            action,
            path: partial_path(&self.dir, &self.id),
            source,
        }
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes the next bytes of the snapshot, in pieces of any size.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), SnapshotError> {
        self.size += data.len() as u64;
        self.track_tail(data);
        while !data.is_empty() {
            // A full buffer is sealed only once more bytes arrive, so the
            // last chunk is always known to be the last when sealed.
            if self.buf.len() == CHUNK {
                self.seal_buf(false)?;
            }
            let n = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    fn track_tail(&mut self, data: &[u8]) {
        if data.len() >= SHA256_OUTPUT_LEN {
            self.etcd.update(&self.tail);
            let (body, tail) = data.split_at(data.len() - SHA256_OUTPUT_LEN);
            self.etcd.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > SHA256_OUTPUT_LEN {
                let n = self.tail.len() - SHA256_OUTPUT_LEN;
                self.etcd.update(&self.tail[..n]);
                self.tail.drain(..n);
            }
        }
    }

    fn seal_buf(&mut self, last: bool) -> Result<(), SnapshotError> {
        // The same bytes as `Sealer::seal_with` (nonce, ciphertext, tag),
        // sealed in the buffer itself rather than in a copy.
        let nonce = self
            .sealer
            .seal_in_place(&aad(&self.id, self.index, last), &mut self.buf);
        let len = u32::try_from(nonce.len() + self.buf.len()).expect("a chunk is far below 4 GiB");
        let mut head = [0u8; 5 + ring::aead::NONCE_LEN];
        head[0] = if last { FLAG_LAST } else { FLAG_MORE };
        head[1..5].copy_from_slice(&len.to_be_bytes());
        head[5..].copy_from_slice(&nonce);
        let result = {
            let file = self.file.as_mut().expect("an open writer");
            file.write_all(&head)
                .and_then(|()| file.write_all(&self.buf))
        };
        result.map_err(|e| self.io("write", e))?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Checks that the bytes are an etcd snapshot, seals the last chunk,
    /// makes the file durable and moves it into place.
    pub fn finish(mut self) -> Result<Written, SnapshotError> {
        check_etcd(&self.id, self.size, self.etcd.clone(), &self.tail)?;
        let mut whole = self.etcd.clone();
        whole.update(&self.tail);
        self.seal_buf(true)?;
        let file = self.file.take().expect("an open writer");
        file.sync_all().map_err(|e| self.io("fsync", e))?;
        drop(file);
        let partial = partial_path(&self.dir, &self.id);
        let done = path(&self.dir, &self.id);
        std::fs::rename(&partial, &done).map_err(|e| self.io("rename", e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io("fsync the directory of", e))?;
        Ok(Written {
            size: self.size,
            sha256: hex::encode(whole.finish().as_ref()),
        })
    }
}

impl Drop for SealedWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(partial_path(&self.dir, &self.id));
        }
    }
}

/// The etcd integrity check, as `etcdctl snapshot restore` makes it.
fn check_etcd(id: &str, size: u64, etcd: Context, tail: &[u8]) -> Result<(), SnapshotError> {
    let not = |detail: String| SnapshotError::NotEtcd {
        id: id.to_string(),
        detail,
    };
    if size < 512 + SHA256_OUTPUT_LEN as u64 {
        return Err(not(format!(
            "it holds {size} bytes, too few for an etcd database and its SHA-256"
        )));
    }
    if size % 512 != SHA256_OUTPUT_LEN as u64 {
        return Err(not(format!(
            "its size ({size} bytes) is not whole 512-byte blocks plus a 32-byte SHA-256"
        )));
    }
    if etcd.finish().as_ref() != tail {
        return Err(not(
            "its last 32 bytes are not the SHA-256 of the rest (the file is damaged or is not a snapshot)".into(),
        ));
    }
    Ok(())
}

/// Yields the plaintext of a sealed snapshot in chunks, opening and checking
/// each as it goes: a chunk that does not open, a file cut short or bytes
/// after the last chunk are errors, and so is a plaintext whose SHA-256
/// differs from `expected_sha256` when one is given. Blocking I/O.
pub struct SealedReader {
    id: String,
    sealer: Arc<Sealer>,
    path: PathBuf,
    file: std::io::BufReader<File>,
    index: u64,
    done: bool,
    sha: Context,
    expected_sha256: Option<String>,
}

impl std::fmt::Debug for SealedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedReader")
            .field("id", &self.id)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl SealedReader {
    pub fn open(
        dir: &Path,
        id: &str,
        sealer: Arc<Sealer>,
        expected_sha256: Option<String>,
    ) -> Result<Self, SnapshotError> {
        let path = path(dir, id);
        let file = File::open(&path).map_err(|source| SnapshotError::Io {
            id: id.to_string(),
            action: "open",
            path: path.clone(),
            source,
        })?;
        let mut reader = SealedReader {
            id: id.to_string(),
            sealer,
            path,
            file: std::io::BufReader::with_capacity(64 * 1024, file),
            index: 0,
            done: false,
            sha: Context::new(&SHA256),
            expected_sha256,
        };
        let mut magic = [0u8; 8];
        match reader.read_full(&mut magic)? {
            8 if &magic == MAGIC => Ok(reader),
            _ => Err(reader.tampered("it does not begin as a kh snapshot file".into())),
        }
    }

    fn tampered(&self, detail: String) -> SnapshotError {
        SnapshotError::Tampered {
            id: self.id.clone(),
            index: self.index,
            path: self.path.clone(),
            detail,
        }
    }

    /// Reads until `buf` is full or the file ends; the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, SnapshotError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(SnapshotError::Io {
                        id: self.id.clone(),
                        action: "read",
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(filled)
    }

    fn truncated(&self) -> SnapshotError {
        SnapshotError::Truncated {
            id: self.id.clone(),
            index: self.index,
            path: self.path.clone(),
        }
    }

    fn next_chunk(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let mut head = [0u8; 5];
        if self.read_full(&mut head)? < head.len() {
            return Err(self.truncated());
        }
        let last = match head[0] {
            FLAG_LAST => true,
            FLAG_MORE => false,
            other => return Err(self.tampered(format!("unknown record flag {other}"))),
        };
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > CHUNK + Sealer::OVERHEAD {
            return Err(self.tampered(format!("a record of {len} bytes")));
        }
        let mut sealed = vec![0u8; len];
        if self.read_full(&mut sealed)? < len {
            return Err(self.truncated());
        }
        let plain = self
            .sealer
            .open_with(&aad(&self.id, self.index, last), sealed)
            .ok_or_else(|| self.tampered("it does not authenticate".into()))?;
        self.sha.update(&plain);
        if last {
            if self.read_full(&mut [0u8; 1])? != 0 {
                return Err(self.tampered("bytes follow the last chunk".into()));
            }
            if let Some(expected) = &self.expected_sha256 {
                let got = hex::encode(self.sha.clone().finish().as_ref());
                if &got != expected {
                    return Err(self.tampered(format!(
                        "its SHA-256 is {got}, the metadata says {expected}"
                    )));
                }
            }
            self.done = true;
        }
        self.index += 1;
        Ok(plain)
    }
}

impl Iterator for SealedReader {
    type Item = Result<Vec<u8>, SnapshotError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let chunk = self.next_chunk();
        if chunk.is_err() {
            self.done = true;
        }
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::fake::fake_etcd_snapshot;

    fn sealer() -> Arc<Sealer> {
        Arc::new(Sealer::from_key(&[7u8; 32], "test.key".into()))
    }

    /// A valid etcd-shaped file of `pages` 4 KiB pages, with `marker` in it.
    fn etcd_file(pages: usize, marker: &[u8]) -> Vec<u8> {
        let mut body: Vec<u8> = (0..pages * 4096).map(|i| (i * 31 % 251) as u8).collect();
        body[100..100 + marker.len()].copy_from_slice(marker);
        let digest = ring::digest::digest(&SHA256, &body);
        body.extend_from_slice(digest.as_ref());
        body
    }

    fn store(dir: &Path, id: &str, bytes: &[u8], piece: usize) -> Result<Written, SnapshotError> {
        let mut w = SealedWriter::create(dir, id, sealer())?;
        for p in bytes.chunks(piece) {
            w.write(p)?;
        }
        w.finish()
    }

    fn read_all(dir: &Path, id: &str) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::new();
        for c in SealedReader::open(dir, id, sealer(), None)? {
            out.extend(c?);
        }
        Ok(out)
    }

    /// The (offset, length) of each record in a sealed file.
    fn records(file: &[u8]) -> Vec<(usize, usize)> {
        let mut at = MAGIC.len();
        let mut out = Vec::new();
        while at < file.len() {
            let len = u32::from_be_bytes(file[at + 1..at + 5].try_into().unwrap()) as usize;
            out.push((at, 5 + len));
            at += 5 + len;
        }
        out
    }

    #[test]
    fn a_snapshot_round_trips_in_pieces_of_any_size() {
        let dir = tempfile::tempdir().unwrap();
        // 2.5 chunks, so there are full chunks and a short last one.
        let bytes = etcd_file(640, b"marker");
        for (i, piece) in [1000usize, CHUNK, 3 * CHUNK].into_iter().enumerate() {
            let id = format!("s{i}");
            let w = store(dir.path(), &id, &bytes, piece).unwrap();
            assert_eq!(w.size, bytes.len() as u64);
            assert_eq!(
                w.sha256,
                hex::encode(ring::digest::digest(&SHA256, &bytes).as_ref())
            );
            assert_eq!(read_all(dir.path(), &id).unwrap(), bytes);
            let chunks: Vec<_> = SealedReader::open(dir.path(), &id, sealer(), Some(w.sha256))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(chunks.len(), 3);
            assert!(chunks.iter().all(|c| c.len() <= CHUNK));
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path(dir.path(), "s0")), 0o600);
        assert_eq!(mode(dir.path()), 0o700);
        let (ids, partial) = scan(dir.path()).unwrap();
        assert_eq!(ids, vec!["s0", "s1", "s2"]);
        assert!(partial.is_empty());
        // The fake agents' snapshot passes the same check.
        store(dir.path(), "fake", &fake_etcd_snapshot(3), 4096).unwrap();
    }

    #[test]
    fn the_sealed_file_does_not_contain_the_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let marker = b"kh-secret-value-0123456789";
        let bytes = etcd_file(8, marker);
        store(dir.path(), "s", &bytes, 4096).unwrap();
        let sealed = std::fs::read(path(dir.path(), "s")).unwrap();
        assert!(!sealed.windows(marker.len()).any(|w| w == marker));
        assert!(!sealed.windows(64).any(|w| w == &bytes[..64]));
    }

    #[test]
    fn a_tampered_chunk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), "s", &etcd_file(600, b"x"), CHUNK).unwrap();
        let p = path(dir.path(), "s");
        let mut file = std::fs::read(&p).unwrap();
        let (at, _) = records(&file)[1];
        file[at + 100] ^= 1;
        std::fs::write(&p, &file).unwrap();
        let mut r = SealedReader::open(dir.path(), "s", sealer(), None).unwrap();
        assert!(r.next().unwrap().is_ok());
        let err = r.next().unwrap().unwrap_err();
        assert!(
            matches!(err, SnapshotError::Tampered { index: 1, .. }),
            "{err}"
        );
        assert!(r.next().is_none());
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), "s", &etcd_file(600, b"x"), CHUNK).unwrap();
        let p = path(dir.path(), "s");
        let file = std::fs::read(&p).unwrap();
        let recs = records(&file);
        // Cut after a whole record (the last one missing), and mid-record.
        for cut in [recs[1].0, recs[1].0 + 7] {
            std::fs::write(&p, &file[..cut]).unwrap();
            let err = read_all(dir.path(), "s").unwrap_err();
            assert!(matches!(err, SnapshotError::Truncated { .. }), "{err}");
        }
    }

    #[test]
    fn swapped_chunks_and_swapped_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = etcd_file(600, b"x");
        store(dir.path(), "a", &bytes, CHUNK).unwrap();
        store(dir.path(), "b", &bytes, CHUNK).unwrap();
        let p = path(dir.path(), "a");
        let file = std::fs::read(&p).unwrap();
        let recs = records(&file);
        // The first two (same-sized) chunks change places.
        let mut swapped = file[..MAGIC.len()].to_vec();
        swapped.extend_from_slice(&file[recs[1].0..recs[1].0 + recs[1].1]);
        swapped.extend_from_slice(&file[recs[0].0..recs[0].0 + recs[0].1]);
        swapped.extend_from_slice(&file[recs[2].0..]);
        std::fs::write(&p, &swapped).unwrap();
        let err = read_all(dir.path(), "a").unwrap_err();
        assert!(
            matches!(err, SnapshotError::Tampered { index: 0, .. }),
            "{err}"
        );
        // b's file under a's id: same key, same content, another id.
        std::fs::copy(path(dir.path(), "b"), &p).unwrap();
        let err = read_all(dir.path(), "a").unwrap_err();
        assert!(
            matches!(err, SnapshotError::Tampered { index: 0, .. }),
            "{err}"
        );
        // Another key does not open it either.
        let other = Arc::new(Sealer::from_key(&[8u8; 32], "other.key".into()));
        let mut r = SealedReader::open(dir.path(), "b", other, None).unwrap();
        assert!(r.next().unwrap().is_err());
        assert_eq!(read_all(dir.path(), "b").unwrap(), bytes);
    }

    #[test]
    fn a_non_etcd_file_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = etcd_file(8, b"x");
        let n = bad.len();
        bad[n - 1] ^= 1;
        let tiny = b"hello".to_vec();
        let mut unaligned = etcd_file(8, b"x");
        unaligned.insert(0, 0);
        for (i, bytes) in [bad, tiny, unaligned].into_iter().enumerate() {
            let id = format!("bad{i}");
            let err = store(dir.path(), &id, &bytes, 1000).unwrap_err();
            assert!(matches!(err, SnapshotError::NotEtcd { .. }), "{err}");
        }
        // Neither a sealed file nor a partial one remains.
        let (ids, partial) = scan(dir.path()).unwrap();
        assert!(ids.is_empty() && partial.is_empty(), "{ids:?} {partial:?}");
    }
}
