//! The agent's own identity on disk: which coordinator, which node, its key,
//! its certificate and the pinned kh CA. This is the agent's state, not host
//! configuration, so it is written here rather than through the Host seam.
//! Every file is 0600 and replaced atomically.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kh::secret::Secret;
use kh::tls::ClientCreds;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("this agent is not enrolled: {path} is missing. Run `kh-agent enroll --data-dir {dir} ...` with the command printed by `khctl token create` first")]
    NotEnrolled { path: String, dir: String },
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Enrollment {
    pub coordinator: String,
    pub node_name: String,
}

/// Everything the agent needs to speak mTLS.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub enrollment: Enrollment,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: Secret<String>,
}

impl AgentIdentity {
    pub fn creds(&self) -> ClientCreds {
        ClientCreds {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    pub fn not_after(&self) -> Option<SystemTime> {
        kh::pki::validity(&self.cert_pem).ok().map(|(_, to)| to)
    }

    /// Renew once two thirds of the certificate's life have passed, so a
    /// coordinator outage of up to a third of it costs nothing.
    pub fn renew_at(&self) -> Option<SystemTime> {
        let (from, to) = kh::pki::validity(&self.cert_pem).ok()?;
        let life = to.duration_since(from).unwrap_or(Duration::ZERO);
        Some(from + life * 2 / 3)
    }
}

/// The coordinator certificate an agent accepts steps from: its serial, and
/// when it expires. The coordinator issues its certificates with one fixed
/// lifetime, so a later expiry means a later certificate; the pin only ever
/// moves to a later one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorPin {
    pub serial: String,
    /// Seconds since the epoch; 0 when unknown.
    pub not_after: u64,
}

impl CoordinatorPin {
    /// `<serial> <not_after>`; a bare serial has an unknown expiry.
    fn parse(s: &str) -> Option<Self> {
        let mut words = s.split_whitespace();
        let serial = words.next()?.to_string();
        let not_after = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        Some(CoordinatorPin { serial, not_after })
    }

    fn to_line(&self) -> String {
        format!("{} {}\n", self.serial, self.not_after)
    }
}

pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Self {
        Paths {
            dir: dir.to_path_buf(),
        }
    }
    fn enrollment(&self) -> PathBuf {
        self.dir.join("enrollment.yaml")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("node.key")
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("node.crt")
    }
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    fn coordinator_pin(&self) -> PathBuf {
        self.dir.join("coordinator.serial")
    }

    /// The coordinator certificate this agent accepts steps from; `None`
    /// before the coordinator has named one.
    pub fn load_pin(&self) -> Result<Option<CoordinatorPin>, IdentityError> {
        let p = self.coordinator_pin();
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(CoordinatorPin::parse(&s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IdentityError::Io {
                path: p.display().to_string(),
                detail: e.to_string(),
            }),
        }
    }

    /// Saves the pinned serial (0600, atomically), or forgets it.
    pub fn save_pin(&self, pin: Option<&CoordinatorPin>) -> Result<(), IdentityError> {
        let p = self.coordinator_pin();
        match pin {
            Some(pin) => write_private(&p, pin.to_line().as_bytes()),
            None => match std::fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(IdentityError::Io {
                    path: p.display().to_string(),
                    detail: e.to_string(),
                }),
            },
        }
    }

    pub fn exists(&self) -> bool {
        self.enrollment().exists()
    }

    pub fn load(&self) -> Result<AgentIdentity, IdentityError> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    IdentityError::NotEnrolled {
                        path: p.display().to_string(),
                        dir: self.dir.display().to_string(),
                    }
                } else {
                    IdentityError::Io {
                        path: p.display().to_string(),
                        detail: e.to_string(),
                    }
                }
            })
        };
        let enrollment: Enrollment =
            serde_yaml::from_str(&read(self.enrollment())?).map_err(|e| IdentityError::Io {
                path: self.enrollment().display().to_string(),
                detail: e.to_string(),
            })?;
        Ok(AgentIdentity {
            enrollment,
            ca_pem: read(self.ca())?,
            cert_pem: read(self.cert())?,
            key_pem: Secret::new(read(self.key())?),
        })
    }

    /// Writes key, certificate and CA before the enrollment record, so a
    /// crash midway never leaves a record pointing at missing files.
    pub fn save(&self, id: &AgentIdentity) -> Result<(), IdentityError> {
        create_private_dir(&self.dir)?;
        write_private(&self.key(), id.key_pem.expose().as_bytes())?;
        write_private(&self.cert(), id.cert_pem.as_bytes())?;
        write_private(&self.ca(), id.ca_pem.as_bytes())?;
        let yaml = serde_yaml::to_string(&id.enrollment).unwrap_or_default();
        write_private(&self.enrollment(), yaml.as_bytes())
    }
}

pub fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |e: std::io::Error| IdentityError::Io {
        path: dir.display().to_string(),
        detail: e.to_string(),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes one of the agent's own files (0600) atomically, through
/// [`kh::fsutil::write_private_atomic`].
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    kh::fsutil::write_private_atomic(path, bytes, 0o600).map_err(|e| IdentityError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saves_private_files_and_loads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(&dir.path().join("agent"));
        assert!(matches!(
            paths.load(),
            Err(IdentityError::NotEnrolled { .. })
        ));
        let id = AgentIdentity {
            enrollment: Enrollment {
                coordinator: "127.0.0.1:7443".into(),
                node_name: "cp-1".into(),
            },
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: Secret::new("KEY".into()),
        };
        paths.save(&id).unwrap();
        for f in ["enrollment.yaml", "node.key", "node.crt", "ca.crt"] {
            let mode = std::fs::metadata(paths.dir.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let back = paths.load().unwrap();
        assert_eq!(back.key_pem.expose(), "KEY");
        assert_eq!(back.enrollment.node_name, "cp-1");
    }

    #[test]
    fn the_coordinator_pin_is_private_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        assert_eq!(paths.load_pin().unwrap(), None);
        let pin = CoordinatorPin {
            serial: "0a1b".into(),
            not_after: 1_900_000_000,
        };
        paths.save_pin(Some(&pin)).unwrap();
        assert_eq!(paths.load_pin().unwrap(), Some(pin));
        let mode = std::fs::metadata(dir.path().join("coordinator.serial"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        paths.save_pin(None).unwrap();
        paths.save_pin(None).unwrap();
        assert_eq!(paths.load_pin().unwrap(), None);
    }
}
