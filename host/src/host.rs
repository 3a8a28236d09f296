//! The `Host` seam: host files under a root prefix, `/proc/sys` and `/sys`
//! under the same root, and one command runner.
//!
//! Everything kh-agent does to its host goes through this type, so tests can
//! point it at a temp directory and a `bin/` of test doubles, and so a code
//! review can find every side effect in one file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::error::{display_argv, HostError};
use crate::secret::{scrub, SecretString};

/// How many lines of stderr a [`CommandRecord`] keeps.
const STDERR_TAIL_LINES: usize = 20;
/// How many bytes of stderr a [`CommandRecord`] keeps at most.
const STDERR_TAIL_BYTES: usize = 4096;
/// Stdout beyond this is dropped, so a runaway command cannot exhaust the
/// agent's memory; kh's commands print a few kilobytes at most.
const STDOUT_LIMIT: usize = 8 * 1024 * 1024;
/// After a command exits, its output pipes normally close at once. A
/// grandchild that inherited them (a daemon started by a script) could keep
/// them open forever, so the runner waits only this long for the last bytes.
const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// A validated sysctl key in dotted form, such as `net.ipv4.ip_forward`.
///
/// Keys map to files under `/proc/sys`, so the validation is what keeps a key
/// from naming a file outside it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SysctlKey(String);

impl SysctlKey {
    pub fn new(key: &str) -> Result<Self, HostError> {
        let invalid = |reason| HostError::InvalidSysctlKey {
            key: key.to_string(),
            reason,
        };
        if key.is_empty() {
            return Err(invalid("it is empty"));
        }
        if !key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
        {
            return Err(invalid("only a-z, 0-9, `_`, `-` and `.` are allowed"));
        }
        if key.contains("..") || key.starts_with('.') || key.ends_with('.') {
            return Err(invalid("every dot must separate two non-empty components"));
        }
        Ok(Self(key.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The absolute host path of the key, e.g. `/proc/sys/net/ipv4/ip_forward`.
    pub fn proc_path(&self) -> String {
        format!("/proc/sys/{}", self.0.replace('.', "/"))
    }
}

impl std::fmt::Display for SysctlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SysctlKey {
    type Error = HostError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<SysctlKey> for String {
    fn from(value: SysctlKey) -> Self {
        value.0
    }
}

/// A command line to run: an argv vector, never a shell string.
///
/// There is deliberately no way to put a secret into an argv: `ps` and
/// `/proc/PID/cmdline` show every argument to every user of the host.
/// Secrets reach a tool in a 0600 file it reads (a kubeadm `--config`),
/// and [`Cmd::redact_output`] scrubs them from what the tool prints before
/// the output is recorded, because tools echo what they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    argv: Vec<String>,
    /// Values to scrub from the output, such as the token inside a config
    /// file the command reads.
    redactions: Vec<SecretString>,
    timeout: Option<Duration>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Self::from_argv(vec![program.into()])
    }

    pub fn from_argv(argv: Vec<String>) -> Self {
        Self {
            argv,
            redactions: Vec::new(),
            timeout: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.argv.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Scrubs `value` from the recorded output without passing it: for
    /// secrets a command reads from a file and may echo.
    pub fn redact_output(mut self, value: &SecretString) -> Self {
        self.redactions.push(value.clone());
        self
    }

    /// Kills the command when it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The argv the process gets, which records and errors show as is.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Every value the recorded output must not contain.
    fn secrets(&self) -> Vec<&SecretString> {
        self.redactions.iter().collect()
    }
}

/// How [`CommandRecord::status_text`] words a command killed at its timeout.
pub const TIMED_OUT: &str = "timed out and was killed";

/// What one command did: recorded for reports whether it succeeded or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub argv: Vec<String>,
    /// `None` when the command was killed by a signal or timed out.
    pub exit_code: Option<i32>,
    pub stdout: String,
    /// The last lines of stderr (at most 20 lines and 4 KiB).
    pub stderr_tail: String,
    #[serde(default)]
    pub timed_out: bool,
}

impl CommandRecord {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// The exit status in words, for error messages.
    pub fn status_text(&self) -> String {
        match (self.exit_code, self.timed_out) {
            (_, true) => TIMED_OUT.to_string(),
            (Some(code), false) => format!("exit status {code}"),
            (None, false) => "killed by a signal".to_string(),
        }
    }

    /// Turns a non-zero exit into [`HostError::CommandFailed`].
    pub fn check(self) -> Result<Self, HostError> {
        if self.success() {
            Ok(self)
        } else {
            Err(HostError::CommandFailed {
                status: self.status_text(),
                argv: self.argv,
                stderr_tail: self.stderr_tail,
            })
        }
    }
}

/// The one seam through which kh-agent touches its host.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    search_path: Vec<PathBuf>,
}

/// Whether `name` in `dir` is a symbolic link (not following it).
fn is_symlink_at(dir: &OwnedFd, name: &str) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// Distinguishes temp files of concurrent writes in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Host {
    /// `root` is `/` on a real host; `search_path` is where commands are
    /// looked up, in order, and becomes the children's `PATH`.
    pub fn new(root: impl Into<PathBuf>, search_path: Vec<PathBuf>) -> Self {
        Self {
            root: root.into(),
            search_path,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn search_path(&self) -> &[PathBuf] {
        &self.search_path
    }

    /// Maps an absolute host path such as `/etc/fstab` to `<root>/etc/fstab`.
    ///
    /// Relative paths and `..` components are refused, because either could
    /// name a file outside the root a test (or a host-root container mount)
    /// gave us.
    pub fn path(&self, abs: &str) -> Result<PathBuf, HostError> {
        if !abs.starts_with('/') {
            return Err(HostError::RelativePath {
                path: abs.to_string(),
            });
        }
        let mut mapped = self.root.clone();
        for component in Path::new(abs).components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(part) => mapped.push(part),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(HostError::PathTraversal {
                        path: abs.to_string(),
                    })
                }
            }
        }
        Ok(mapped)
    }

    fn io_error(action: &'static str, abs: &str, real: &Path, source: io::Error) -> HostError {
        HostError::Io {
            action,
            path: abs.to_string(),
            real: real.to_path_buf(),
            source,
        }
    }

    /// Reads a text file; `Ok(None)` when it does not exist.
    pub fn read_to_string(&self, abs: &str) -> Result<Option<String>, HostError> {
        let real = self.path(abs)?;
        match fs::read(&real) {
            Ok(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| HostError::NotUtf8 {
                    path: abs.to_string(),
                }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Self::io_error("read", abs, &real, err)),
        }
    }

    /// Reads at most `max` bytes of a file; `Ok(None)` when it does not
    /// exist. The bool is true when the file was longer (and was cut), so a
    /// caller that reads on every scrape is bounded by what it asked for.
    pub fn read_capped(&self, abs: &str, max: u64) -> Result<Option<(Vec<u8>, bool)>, HostError> {
        let real = self.path(abs)?;
        let file = match File::open(&real) {
            Ok(f) => f,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Self::io_error("read", abs, &real, err)),
        };
        let mut bytes = Vec::new();
        file.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|err| Self::io_error("read", abs, &real, err))?;
        let cut = bytes.len() as u64 > max;
        bytes.truncate(max as usize);
        Ok(Some((bytes, cut)))
    }

    pub fn exists(&self, abs: &str) -> Result<bool, HostError> {
        let real = self.path(abs)?;
        real.try_exists()
            .map_err(|err| Self::io_error("check", abs, &real, err))
    }

    /// The entry names of a directory, sorted; `Ok(None)` when it does not exist.
    pub fn read_dir(&self, abs: &str) -> Result<Option<Vec<String>>, HostError> {
        let real = self.path(abs)?;
        let entries = match fs::read_dir(&real) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Self::io_error("list", abs, &real, err)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| Self::io_error("list", abs, &real, err))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(Some(names))
    }

    /// The permission bits of a file; `Ok(None)` when it does not exist.
    pub fn file_mode(&self, abs: &str) -> Result<Option<u32>, HostError> {
        let real = self.path(abs)?;
        match fs::metadata(&real) {
            Ok(meta) => Ok(Some(meta.permissions().mode() & 0o7777)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Self::io_error("stat", abs, &real, err)),
        }
    }

    /// Replaces a file so that readers see either the old or the new content,
    /// even across a crash: temp file in the same directory, write, fsync,
    /// chmod, rename, fsync the directory.
    pub fn write_atomic(&self, abs: &str, bytes: &[u8], mode: u32) -> Result<(), HostError> {
        let real = self.path(abs)?;
        let (Some(dir), Some(name)) = (real.parent(), real.file_name()) else {
            return Err(HostError::RelativePath {
                path: abs.to_string(),
            });
        };
        let temp = dir.join(format!(
            ".{}.kh-tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
                .map_err(|err| Self::io_error("create a temp file next to", abs, &temp, err))?;
            file.write_all(bytes)
                .map_err(|err| Self::io_error("write", abs, &temp, err))?;
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|err| Self::io_error("chmod", abs, &temp, err))?;
            file.sync_all()
                .map_err(|err| Self::io_error("fsync", abs, &temp, err))?;
            fs::rename(&temp, &real).map_err(|err| Self::io_error("rename into", abs, &real, err))
        })();
        if result.is_err() {
            // The temp file is ours and useless after a failure; a leftover
            // would only confuse the operator.
            let _ = fs::remove_file(&temp);
        }
        result?;
        // The rename is durable only once the directory entry is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|err| Self::io_error("fsync the directory of", abs, dir, err))
    }

    /// The directory that holds `abs`, opened one component at a time from
    /// the root with `O_NOFOLLOW`, and the file's name in it. A symbolic
    /// link at any component below the root is refused, so what is opened
    /// is really under the root. Missing directories are created (0755) when
    /// `create`; without it a missing one gives `Ok(None)`.
    fn open_parent_nofollow(
        &self,
        abs: &str,
        create: bool,
    ) -> Result<Option<(OwnedFd, String)>, HostError> {
        let real = self.path(abs)?;
        let parts: Vec<&str> = abs
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let Some((name, dirs)) = parts.split_last() else {
            return Err(HostError::RelativePath {
                path: abs.to_string(),
            });
        };
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let io = |action, err: rustix::io::Errno| Self::io_error(action, abs, &real, err.into());
        let mut dir = rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open the host root for", e))?;
        for (i, part) in dirs.iter().enumerate() {
            let opened = match rustix::fs::openat(&dir, *part, dir_flags, Mode::empty()) {
                Err(rustix::io::Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, *part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(io("create a directory for", e)),
                    }
                    rustix::fs::openat(&dir, *part, dir_flags, Mode::empty())
                }
                other => other,
            };
            dir = match opened {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)
                    if is_symlink_at(&dir, part) =>
                {
                    return Err(HostError::Symlink {
                        path: abs.to_string(),
                        link: format!("/{}", dirs[..=i].join("/")),
                    })
                }
                Err(e) => return Err(io("open a directory of", e)),
            };
        }
        Ok(Some((dir, name.to_string())))
    }

    /// Reads a file's exact bytes without following a symbolic link at any
    /// component below the root (see [`Host::write_nofollow`]); `Ok(None)`
    /// when it does not exist.
    pub fn read_nofollow(&self, abs: &str) -> Result<Option<Vec<u8>>, HostError> {
        let real = self.path(abs)?;
        let Some((dir, name)) = self.open_parent_nofollow(abs, false)? else {
            return Ok(None);
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(&dir, name.as_str(), flags, Mode::empty()) {
            Ok(fd) => {
                let mut bytes = Vec::new();
                File::from(fd)
                    .read_to_end(&mut bytes)
                    .map_err(|err| Self::io_error("read", abs, &real, err))?;
                Ok(Some(bytes))
            }
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(rustix::io::Errno::LOOP) => Err(HostError::Symlink {
                path: abs.to_string(),
                link: abs.to_string(),
            }),
            Err(e) => Err(Self::io_error("read", abs, &real, e.into())),
        }
    }

    /// Opens a file for reading without following a symbolic link at any
    /// component below the root; `Ok(None)` when it does not exist. For
    /// files too large to read whole (an etcd snapshot).
    pub fn open_nofollow(&self, abs: &str) -> Result<Option<File>, HostError> {
        let real = self.path(abs)?;
        let Some((dir, name)) = self.open_parent_nofollow(abs, false)? else {
            return Ok(None);
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(&dir, name.as_str(), flags, Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(rustix::io::Errno::LOOP) => Err(HostError::Symlink {
                path: abs.to_string(),
                link: abs.to_string(),
            }),
            Err(e) => Err(Self::io_error("open", abs, &real, e.into())),
        }
    }

    /// The permission bits of a file, without following a symbolic link at
    /// any component; `Ok(None)` when it does not exist.
    pub fn file_mode_nofollow(&self, abs: &str) -> Result<Option<u32>, HostError> {
        let Some((dir, name)) = self.open_parent_nofollow(abs, false)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                Err(HostError::Symlink {
                    path: abs.to_string(),
                    link: abs.to_string(),
                })
            }
            Ok(st) => Ok(Some(st.st_mode & 0o7777)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(Self::io_error("stat", abs, &self.path(abs)?, e.into())),
        }
    }

    /// [`Host::write_atomic`] for files whose path must not lead anywhere
    /// else, such as the CA keys placed before a join: every directory is
    /// opened from the root with `O_NOFOLLOW` (missing ones created 0755),
    /// a symbolic link at any component is refused, and the bytes are
    /// written exactly.
    pub fn write_nofollow(&self, abs: &str, bytes: &[u8], mode: u32) -> Result<(), HostError> {
        let real = self.path(abs)?;
        let Some((dir, name)) = self.open_parent_nofollow(abs, true)? else {
            return Err(Self::io_error(
                "create the directory of",
                abs,
                &real,
                io::ErrorKind::NotFound.into(),
            ));
        };
        if is_symlink_at(&dir, &name) {
            return Err(HostError::Symlink {
                path: abs.to_string(),
                link: abs.to_string(),
            });
        }
        let temp = format!(
            ".{name}.kh-tmp-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let io = |action, err: io::Error| Self::io_error(action, abs, &real, err);
        let result = (|| {
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(&dir, temp.as_str(), flags, Mode::from_raw_mode(0o600))
                .map_err(|e| io("create a temp file next to", e.into()))?;
            let mut file = File::from(fd);
            file.write_all(bytes).map_err(|e| io("write", e))?;
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| io("chmod", e))?;
            file.sync_all().map_err(|e| io("fsync", e))?;
            rustix::fs::renameat(&dir, temp.as_str(), &dir, name.as_str())
                .map_err(|e| io("rename into", e.into()))
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
        }
        result?;
        rustix::fs::fsync(&dir).map_err(|e| io("fsync the directory of", e.into()))
    }

    /// Renames a file within the same directory tree, atomically replacing
    /// `to`, and makes the rename durable. Readers of `to` see the old or the
    /// new file, never a partial one: the way a validated candidate config
    /// takes the place of the one a service runs on.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), HostError> {
        let real_from = self.path(from)?;
        let real_to = self.path(to)?;
        fs::rename(&real_from, &real_to)
            .map_err(|err| Self::io_error("rename into", to, &real_to, err))?;
        let Some(dir) = real_to.parent() else {
            return Ok(());
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|err| Self::io_error("fsync the directory of", to, dir, err))
    }

    /// Removes a directory and everything under it; `Ok(false)` when it did
    /// not exist. Only for directories kh itself made (a partial etcd
    /// restore of one operation): callers name them exactly.
    pub fn remove_dir_all(&self, abs: &str) -> Result<bool, HostError> {
        let real = self.path(abs)?;
        match fs::remove_dir_all(&real) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(Self::io_error("remove directory", abs, &real, err)),
        }
    }

    /// Creates (or truncates) a 0600 file for a large write made in pieces,
    /// such as an etcd snapshot streamed from the coordinator, without
    /// following a symbolic link at the last component. The caller writes,
    /// syncs and then renames it into place.
    pub fn create_private_file(&self, abs: &str) -> Result<File, HostError> {
        let real = self.path(abs)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&real)
            .map_err(|err| Self::io_error("create", abs, &real, err))?;
        // An existing file keeps its mode through `create`; make it 0600.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|err| Self::io_error("chmod 0600", abs, &real, err))?;
        Ok(file)
    }

    /// Opens a file for reading in pieces (to hash a large file).
    pub fn open_read(&self, abs: &str) -> Result<Option<File>, HostError> {
        let real = self.path(abs)?;
        match File::open(&real) {
            Ok(f) => Ok(Some(f)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Self::io_error("open", abs, &real, err)),
        }
    }

    /// Whether `abs` is a mount point, from `/proc/self/mountinfo` under the
    /// root (no mountinfo there: nothing is a mount point). A directory that
    /// is a mount point cannot be renamed; its contents can be moved.
    pub fn is_mount_point(&self, abs: &str) -> Result<bool, HostError> {
        let Some(info) = self.read_to_string("/proc/self/mountinfo")? else {
            return Ok(false);
        };
        let wanted = abs.trim_end_matches('/');
        Ok(info.lines().any(|line| {
            line.split(' ')
                .nth(4)
                .map(unescape_mountinfo)
                .is_some_and(|m| m.trim_end_matches('/') == wanted && !m.is_empty())
        }))
    }

    /// Removes a file; `Ok(false)` when it did not exist.
    pub fn remove_file(&self, abs: &str) -> Result<bool, HostError> {
        let real = self.path(abs)?;
        match fs::remove_file(&real) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(Self::io_error("remove", abs, &real, err)),
        }
    }

    /// Creates `abs` (and missing parents) and makes `abs` itself 0700, also
    /// when it already existed with a wider mode: the directory for files
    /// that hold secrets while a step runs, which no other user may list.
    pub fn create_private_dir(&self, abs: &str) -> Result<(), HostError> {
        self.create_dir_all(abs)?;
        let real = self.path(abs)?;
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700))
            .map_err(|err| Self::io_error("chmod 0700", abs, &real, err))
    }

    pub fn create_dir_all(&self, abs: &str) -> Result<(), HostError> {
        let real = self.path(abs)?;
        fs::create_dir_all(&real).map_err(|err| Self::io_error("create directory", abs, &real, err))
    }

    /// Copies `abs` to `abs + suffix` unless that backup already exists, so
    /// the backup always holds the file as it was before kh first touched it.
    /// Returns whether a backup was written.
    pub fn backup_once(&self, abs: &str, suffix: &str) -> Result<bool, HostError> {
        let backup = format!("{abs}{suffix}");
        if self.exists(&backup)? {
            return Ok(false);
        }
        let real = self.path(abs)?;
        let bytes = match fs::read(&real) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(Self::io_error("read", abs, &real, err)),
        };
        let mode = self.file_mode(abs)?.unwrap_or(0o600);
        self.write_atomic(&backup, &bytes, mode)?;
        Ok(true)
    }

    /// Reads a sysctl through `<root>/proc/sys`, without the trailing newline;
    /// `Ok(None)` when the key does not exist on this kernel.
    pub fn read_sysctl(&self, key: &SysctlKey) -> Result<Option<String>, HostError> {
        Ok(self
            .read_to_string(&key.proc_path())?
            .map(|value| value.trim_end_matches('\n').to_string()))
    }

    /// Writes a sysctl through `<root>/proc/sys`. The file is never created:
    /// a missing key means the kernel (or a module) does not provide it, and
    /// that must surface as an error rather than as a stray file.
    pub fn write_sysctl(&self, key: &SysctlKey, value: &str) -> Result<(), HostError> {
        let abs = key.proc_path();
        let real = self.path(&abs)?;
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&real)
            .map_err(|err| Self::io_error("open sysctl", &abs, &real, err))?;
        file.write_all(format!("{value}\n").as_bytes())
            .map_err(|err| Self::io_error("write sysctl", &abs, &real, err))
    }

    /// Resolves a program name through the search path.
    pub fn which(&self, program: &str) -> Option<PathBuf> {
        if program.is_empty() || program.contains('/') {
            return None;
        }
        self.search_path
            .iter()
            .map(|dir| dir.join(program))
            .find(|candidate| {
                fs::metadata(candidate)
                    .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    }

    fn search_path_display(&self) -> String {
        self.search_path
            .iter()
            .map(|dir| dir.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn path_env(&self) -> String {
        self.search_path
            .iter()
            .map(|dir| dir.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Runs a command and records it. A command that ran is `Ok` whatever its
    /// exit status; use [`Host::run_checked`] to treat failure as an error.
    pub fn run(&self, cmd: &Cmd) -> Result<CommandRecord, HostError> {
        let argv = cmd.argv();
        let program = argv.first().ok_or(HostError::EmptyCommand)?;
        if program.contains('/') {
            return Err(HostError::ProgramIsPath {
                program: program.clone(),
            });
        }
        let resolved = self
            .which(program)
            .ok_or_else(|| HostError::CommandNotFound {
                program: program.clone(),
                search_path: self.search_path_display(),
            })?;
        tracing::debug!(argv = %display_argv(argv), "running host command");

        let mut child = self.spawn(argv, &resolved)?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stdout_buf = Arc::new(Mutex::new(Vec::new()));
        let stderr_buf = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done_rx) = mpsc::channel();
        if let Some(pipe) = stdout {
            spawn_reader(pipe, Arc::clone(&stdout_buf), STDOUT_LIMIT, done_tx.clone());
        }
        if let Some(pipe) = stderr {
            // Stderr is kept whole while reading and cut to its tail at the
            // end; the limit only guards against a flood.
            spawn_reader(pipe, Arc::clone(&stderr_buf), STDOUT_LIMIT, done_tx.clone());
        }
        drop(done_tx);

        let (status, timed_out) =
            wait_with_timeout(&mut child, cmd.timeout).map_err(|source| HostError::Wait {
                argv: argv.to_vec(),
                source,
            })?;

        // Both readers report when their pipe reaches end of file; the
        // channel closes once both are done.
        let drain_deadline = Instant::now() + PIPE_DRAIN_GRACE;
        loop {
            let left = drain_deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok(()) => continue,
                Err(_) => break,
            }
        }

        let secrets = cmd.secrets();
        let stdout = scrub(
            &String::from_utf8_lossy(&take_buffer(&stdout_buf)),
            &secrets,
        );
        let stderr = scrub(
            &String::from_utf8_lossy(&take_buffer(&stderr_buf)),
            &secrets,
        );
        let record = CommandRecord {
            argv: argv.to_vec(),
            exit_code: if timed_out { None } else { status.code() },
            stdout,
            stderr_tail: stderr_tail(&stderr),
            timed_out,
        };
        tracing::debug!(argv = %display_argv(argv), status = %record.status_text(), "host command finished");
        Ok(record)
    }

    /// Starts the process `resolved` with `argv`.
    fn spawn(&self, argv: &[String], resolved: &Path) -> Result<Child, HostError> {
        let mut attempt = 0u32;
        loop {
            let spawned = Command::new(resolved)
                .args(&argv[1..])
                .env("PATH", self.path_env())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            match spawned {
                Ok(child) => return Ok(child),
                // A script that was just written may still be open for
                // writing in a child forked concurrently by another thread
                // (until that child execs); exec then fails with ETXTBSY.
                // Package upgrades cause the same on real hosts. The
                // condition clears within milliseconds, so retry briefly.
                Err(err) if err.kind() == io::ErrorKind::ExecutableFileBusy && attempt < 20 => {
                    attempt += 1;
                    thread::sleep(Duration::from_millis(10 * u64::from(attempt)));
                }
                Err(source) => {
                    return Err(HostError::Spawn {
                        argv: argv.to_vec(),
                        resolved: resolved.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }

    /// Runs a command and turns a non-zero exit (or a timeout) into
    /// [`HostError::CommandFailed`].
    pub fn run_checked(&self, cmd: &Cmd) -> Result<CommandRecord, HostError> {
        self.run(cmd)?.check()
    }

    /// The effective uid of the agent, from the real `/proc/self/status`
    /// (not under the root: it describes this process, not the host tree).
    pub fn effective_uid(&self) -> Result<u32, HostError> {
        let status =
            fs::read_to_string("/proc/self/status").map_err(|err| HostError::ProcStatus {
                detail: err.to_string(),
            })?;
        parse_effective_uid(&status).ok_or_else(|| HostError::ProcStatus {
            detail: "no parsable `Uid:` line".to_string(),
        })
    }

    /// The non-loopback addresses of this machine's interfaces, deduplicated.
    pub fn interface_addresses(&self) -> Result<Vec<IpAddr>, HostError> {
        let interfaces =
            if_addrs::get_if_addrs().map_err(|source| HostError::Interfaces { source })?;
        let mut addresses: Vec<IpAddr> = interfaces
            .iter()
            .filter(|iface| !iface.is_loopback())
            .map(|iface| iface.ip())
            .filter(|ip| !ip.is_loopback())
            .collect();
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    /// Tries to bind a TCP listener on `ip:port` and closes it again.
    pub fn try_bind(&self, ip: IpAddr, port: u16) -> io::Result<()> {
        TcpListener::bind(SocketAddr::new(ip, port)).map(drop)
    }

    /// Whether a TCP listener could bind `ip:port` right now.
    pub fn port_free(&self, ip: IpAddr, port: u16) -> bool {
        self.try_bind(ip, port).is_ok()
    }

    /// Tries a TCP connection to `addr` (`host:port`, `[v6]:port`) and says
    /// how it went, in the terms the kubeadm HA guide uses to tell a load
    /// balancer that is not listening (refused) from one that is unreachable
    /// (timed out). Every resolved address is tried, each with `timeout`; the
    /// first that accepts wins, otherwise the first address's failure is
    /// reported.
    pub fn tcp_probe(&self, addr: &str, timeout: Duration) -> TcpProbe {
        let resolved: Vec<SocketAddr> = match addr.to_socket_addrs() {
            Ok(addrs) => addrs.collect(),
            Err(err) if err.kind() == io::ErrorKind::InvalidInput => {
                return TcpProbe::Other(format!(
                    "`{addr}` is not host:port ({err}); write it like lb.example.internal:6443"
                ))
            }
            Err(err) => return TcpProbe::Unresolvable(format!("cannot resolve `{addr}`: {err}")),
        };
        if resolved.is_empty() {
            return TcpProbe::Unresolvable(format!("`{addr}` resolves to no address"));
        }
        let mut first_failure = None;
        for target in resolved {
            let outcome = match TcpStream::connect_timeout(&target, timeout) {
                Ok(_) => return TcpProbe::Open,
                Err(err) => match err.kind() {
                    io::ErrorKind::ConnectionRefused => TcpProbe::Refused,
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => TcpProbe::TimedOut,
                    _ => TcpProbe::Other(format!("connecting to {target}: {err}")),
                },
            };
            first_failure.get_or_insert(outcome);
        }
        first_failure.unwrap_or(TcpProbe::Other(format!("no address of `{addr}` was tried")))
    }
}

/// What a TCP connection attempt found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum TcpProbe {
    /// Something accepted the connection.
    Open,
    /// The host answered with a reset: it is reachable but nothing listens
    /// on the port (or a firewall rejects it).
    Refused,
    /// No answer within the timeout: a wrong address, a routing problem or a
    /// firewall that drops packets.
    TimedOut,
    /// The name does not resolve.
    Unresolvable(String),
    /// Any other failure (no route to host, network unreachable, a bad
    /// address), with the system's words.
    Other(String),
}

fn spawn_reader<R: Read + Send + 'static>(
    mut pipe: R,
    buffer: Arc<Mutex<Vec<u8>>>,
    limit: usize,
    done: mpsc::Sender<()>,
) {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let mut buffer = buffer
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    let room = limit.saturating_sub(buffer.len());
                    buffer.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
}

fn take_buffer(buffer: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
    std::mem::take(
        &mut *buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// Waits for the child, killing it when the timeout passes. Returns the exit
/// status and whether the timeout fired.
fn wait_with_timeout(
    child: &mut Child,
    timeout: Option<Duration>,
) -> io::Result<(ExitStatus, bool)> {
    let Some(timeout) = timeout else {
        return child.wait().map(|status| (status, false));
    };
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        let now = Instant::now();
        if now >= deadline {
            // The child may exit between the check and the kill; either way
            // it is gone afterwards and wait() reaps it.
            let _ = child.kill();
            return child.wait().map(|status| (status, true));
        }
        // std offers no wait-with-timeout, so poll with a growing pause that
        // stays short against the timeouts kh uses (seconds to minutes).
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = u16::from(bytes[i + 1] - b'0') * 64
                + u16::from(bytes[i + 2] - b'0') * 8
                + u16::from(bytes[i + 3] - b'0');
            out.push((v & 0xff) as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last [`STDERR_TAIL_LINES`] lines of stderr, at most [`STDERR_TAIL_BYTES`].
pub fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let mut tail = lines[start..].join("\n");
    if tail.len() > STDERR_TAIL_BYTES {
        let mut cut = tail.len() - STDERR_TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_string();
    }
    tail
}

/// The effective uid from the `Uid:` line of `/proc/<pid>/status`, whose
/// fields are real, effective, saved and filesystem uid.
pub fn parse_effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(root: &Path) -> Host {
        Host::new(root, vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
    }

    #[test]
    fn paths_map_under_the_root() {
        let host = host(Path::new("/tmp/root"));
        assert_eq!(
            host.path("/etc/fstab").unwrap(),
            Path::new("/tmp/root/etc/fstab")
        );
        assert_eq!(
            host.path("/etc/./fstab").unwrap(),
            Path::new("/tmp/root/etc/fstab")
        );
        assert_eq!(host.path("/").unwrap(), Path::new("/tmp/root"));
    }

    #[test]
    fn relative_and_traversing_paths_are_rejected() {
        let host = host(Path::new("/tmp/root"));
        for bad in ["etc/fstab", "", "./etc"] {
            assert!(
                matches!(host.path(bad), Err(HostError::RelativePath { .. })),
                "{bad}"
            );
        }
        for bad in ["/etc/../../x", "/..", "/etc/containerd/../../../root/.ssh"] {
            let err = host.path(bad).unwrap_err();
            assert!(matches!(err, HostError::PathTraversal { .. }), "{bad}");
            assert!(err.to_string().contains(bad));
        }
    }

    #[test]
    fn sysctl_keys_are_validated() {
        let key = SysctlKey::new("net.ipv4.ip_forward").unwrap();
        assert_eq!(key.proc_path(), "/proc/sys/net/ipv4/ip_forward");
        assert_eq!(
            SysctlKey::new("net.bridge.bridge-nf-call-iptables")
                .unwrap()
                .proc_path(),
            "/proc/sys/net/bridge/bridge-nf-call-iptables"
        );
        for bad in [
            "",
            "net..ipv4",
            ".net",
            "net.",
            "net/ipv4",
            "NET.ipv4",
            "net ipv4",
            "a.b..",
        ] {
            assert!(SysctlKey::new(bad).is_err(), "{bad:?} should be rejected");
        }
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, "\"net.ipv4.ip_forward\"");
        assert!(serde_json::from_str::<SysctlKey>("\"../../etc\"").is_err());
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines_and_bytes() {
        let many: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let tail = stderr_tail(&many);
        assert!(tail.starts_with("line 30"));
        assert!(tail.ends_with("line 49"));
        let long = "é".repeat(5000);
        let tail = stderr_tail(&long);
        assert!(tail.len() <= STDERR_TAIL_BYTES);
        assert!(tail.chars().all(|c| c == 'é'));
    }

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let cases = [
            ("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n", Some(0)),
            ("Uid:\t0\t1000\t1000\t1000\n", Some(1000)),
            ("Name:\tx\n", None),
            ("Uid:\t0\n", None),
        ];
        for (status, want) in cases {
            assert_eq!(parse_effective_uid(status), want, "{status:?}");
        }
    }

    #[test]
    fn file_helpers_work_under_a_temp_root() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path());
        assert_eq!(host.read_to_string("/etc/x.conf").unwrap(), None);
        assert_eq!(host.read_dir("/etc").unwrap(), None);
        host.create_dir_all("/etc").unwrap();
        host.write_atomic("/etc/x.conf", b"one\n", 0o640).unwrap();
        assert_eq!(
            host.read_to_string("/etc/x.conf").unwrap().as_deref(),
            Some("one\n")
        );
        assert_eq!(host.file_mode("/etc/x.conf").unwrap(), Some(0o640));
        assert!(host.backup_once("/etc/x.conf", ".bak").unwrap());
        host.write_atomic("/etc/x.conf", b"two\n", 0o644).unwrap();
        assert!(!host.backup_once("/etc/x.conf", ".bak").unwrap());
        assert_eq!(
            host.read_to_string("/etc/x.conf.bak").unwrap().as_deref(),
            Some("one\n")
        );
        assert_eq!(
            host.read_dir("/etc").unwrap().unwrap(),
            vec!["x.conf".to_string(), "x.conf.bak".to_string()]
        );
        assert!(host.remove_file("/etc/x.conf").unwrap());
        assert!(!host.remove_file("/etc/x.conf").unwrap());
    }

    #[test]
    fn sysctls_are_read_and_written_but_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path());
        let key = SysctlKey::new("net.ipv4.ip_forward").unwrap();
        assert_eq!(host.read_sysctl(&key).unwrap(), None);
        assert!(host.write_sysctl(&key, "1").is_err());
        assert!(!dir.path().join("proc/sys/net/ipv4/ip_forward").exists());
        fs::create_dir_all(dir.path().join("proc/sys/net/ipv4")).unwrap();
        fs::write(dir.path().join("proc/sys/net/ipv4/ip_forward"), "0\n").unwrap();
        assert_eq!(host.read_sysctl(&key).unwrap().as_deref(), Some("0"));
        host.write_sysctl(&key, "1").unwrap();
        assert_eq!(host.read_sysctl(&key).unwrap().as_deref(), Some("1"));
    }

    #[test]
    fn commands_are_resolved_and_recorded() {
        let host = host(Path::new("/"));
        let record = host
            .run(&Cmd::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(record.exit_code, Some(3));
        assert_eq!(record.stdout, "out\n");
        assert_eq!(record.stderr_tail, "err");
        let err = host
            .run_checked(&Cmd::new("sh").args(["-c", "echo boom >&2; exit 4"]))
            .unwrap_err();
        match &err {
            HostError::CommandFailed {
                argv,
                status,
                stderr_tail,
            } => {
                assert_eq!(argv[0], "sh");
                assert_eq!(status, "exit status 4");
                assert_eq!(stderr_tail, "boom");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn children_get_the_search_path_as_path() {
        let host = Host::new("/", vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")]);
        let record = host
            .run_checked(&Cmd::new("sh").args(["-c", "printf %s \"$PATH\""]))
            .unwrap();
        assert_eq!(record.stdout, "/usr/bin:/bin");
    }

    #[test]
    fn missing_commands_name_the_search_path() {
        let host = Host::new("/", vec![PathBuf::from("/nonexistent-kh-bin")]);
        let err = host.run(&Cmd::new("modprobe").arg("overlay")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "command `modprobe` not found in search path [/nonexistent-kh-bin]; install it or add its directory to the agent's search path"
        );
        assert!(matches!(
            host.run(&Cmd::new("/sbin/modprobe")),
            Err(HostError::ProgramIsPath { .. })
        ));
        assert!(matches!(
            host.run(&Cmd::from_argv(vec![])),
            Err(HostError::EmptyCommand)
        ));
        assert_eq!(host.which("modprobe"), None);
    }

    #[test]
    fn timeouts_kill_the_command() {
        let host = host(Path::new("/"));
        let started = Instant::now();
        let record = host
            .run(
                &Cmd::new("sleep")
                    .arg("30")
                    .timeout(Duration::from_millis(200)),
            )
            .unwrap();
        assert!(record.timed_out);
        assert_eq!(record.exit_code, None);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(record
            .check()
            .unwrap_err()
            .to_string()
            .contains("timed out"));
    }

    #[test]
    fn port_free_sees_a_bound_listener() {
        let host = host(Path::new("/"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!host.port_free(ip, port));
        drop(listener);
        assert!(host.port_free(ip, port));
    }

    #[test]
    fn redacted_values_are_scrubbed_from_the_output_of_a_failed_command() {
        let host = host(Path::new("/"));
        let secret = SecretString::new("s3cr3t-value");
        // The script assembles the value, as a tool reading it from a file
        // would print it; the argv holds only its halves.
        let failing = Cmd::new("sh")
            .args(["-c", "printf 'bad %s%s\\n' s3cr3t -value >&2; exit 3"])
            .redact_output(&secret);
        assert!(!format!("{failing:?}").contains("s3cr3t-value"));
        let err = host.run_checked(&failing).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(text.contains("bad <redacted>"), "{text}");
        assert!(text.contains("exit status 3"), "{text}");
    }

    #[test]
    fn redacted_output_values_are_scrubbed_without_being_passed() {
        let host = host(Path::new("/"));
        let token = SecretString::new("abcdef.0123456789abcdef");
        let record = host
            .run(
                &Cmd::new("sh")
                    .args(["-c", "echo kubeadm join --token abcdef.0123456789abcdef"])
                    .redact_output(&token),
            )
            .unwrap();
        assert_eq!(record.stdout, "kubeadm join --token <redacted>\n");
        assert_eq!(record.argv.len(), 3, "redactions add no argument");
    }

    #[test]
    fn tcp_probes_tell_open_from_refused_and_unresolvable() {
        let host = host(Path::new("/"));
        // An address of its own, not 127.0.0.1: a connect from 127.0.0.1 to
        // a closed 127.0.0.1 port can pick that very port as its source and
        // connect to itself (TCP simultaneous open), and another process
        // may take a released port on the shared address.
        let n = std::process::id() ^ std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos();
        let ip = std::net::Ipv4Addr::new(
            127,
            200 + (n % 50) as u8,
            (n >> 8) as u8,
            1 + (n >> 16) as u8 % 250,
        );
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let timeout = Duration::from_secs(2);
        assert_eq!(host.tcp_probe(&addr, timeout), TcpProbe::Open);
        drop(listener);
        assert_eq!(host.tcp_probe(&addr, timeout), TcpProbe::Refused);
        assert!(matches!(
            host.tcp_probe("kh-no-such-host.invalid:6443", timeout),
            TcpProbe::Unresolvable(_)
        ));
        match host.tcp_probe("no-port-here", timeout) {
            TcpProbe::Other(why) => assert!(why.contains("host:port"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn effective_uid_reads_this_process() {
        let host = host(Path::new("/"));
        // Whatever the uid is, it must parse; the value itself depends on
        // who runs the tests.
        host.effective_uid().unwrap();
    }
}
