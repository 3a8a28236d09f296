//! The coordinator's own PKI state: the kh CA (created on first start, key
//! sealed in the store), its serving certificate, and the admin credential
//! file for khctl.

use std::path::Path;
use std::time::{Duration, SystemTime};

use kh::khconfig::KhConfig;
use kh::pki::{Ca, Profile};
use kh::secret::Secret;
use kh::time::unix_ms;

use crate::error::CoordError;
use crate::store::{admin_config_path, Db};
use crate::Config;

const CA_CERT: &str = "ca/cert";
const CA_KEY: &str = "ca/key";
const SERVER: &str = "coordinator/serving";
const SERVER_KEY: &str = "coordinator/serving-key";
const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 86400);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ServingRecord {
    cert_pem: String,
    sans: Vec<String>,
    expires_ms: u64,
}

pub struct Pki {
    ca: Ca,
    /// Serving certificate followed by the CA, so an enrolling agent sees the
    /// CA in the handshake and can pin it.
    pub serving_chain_pem: String,
    pub serving_key: Secret<String>,
    /// The serving certificate's serial, which agents pin: they accept step
    /// RPCs only from the coordinator certificate with this serial.
    pub serving_serial: String,
}

impl Pki {
    pub fn load_or_create(db: &Db, config: &Config, now: SystemTime) -> Result<Pki, CoordError> {
        let ca = match (db.get_json::<String>(CA_CERT)?, db.get_secret(CA_KEY)?) {
            (Some(cert), Some(key)) => Ca::from_pem(&cert, &key)?,
            // A key without a certificate is what a crash between the two
            // writes below leaves; nothing was ever signed with it.
            (None, _) => {
                let ca = Ca::generate(now)?;
                // Key first: a crash between the writes leaves no certificate
                // without its key, and the next start simply generates again.
                db.put_secret(CA_KEY, &ca.key_pem())?;
                db.put_json(CA_CERT, &ca.cert_pem().to_string())?;
                tracing::info!(hash = %ca.cert_hash(), "created the kh CA");
                ca
            }
            (Some(_), None) => {
                return Err(CoordError::InvalidArgument(
                    "the store has the kh CA certificate but not its key; restore the data dir from a backup".into(),
                ))
            }
        };
        let sans = config.sans();
        let current: Option<ServingRecord> = db.get_json(SERVER)?;
        let key = db.get_secret(SERVER_KEY)?;
        let renew_at = unix_ms(now) + SERVER_VALIDITY.as_millis() as u64 / 3;
        let (cert_pem, key) = match (current, key) {
            (Some(rec), Some(key)) if rec.sans == sans && rec.expires_ms > renew_at => {
                (rec.cert_pem, key)
            }
            _ => {
                let (issued, key) =
                    ca.issue_with_new_key(&Profile::coordinator(&sans, SERVER_VALIDITY), now)?;
                db.put_secret(SERVER_KEY, &key)?;
                db.put_json(
                    SERVER,
                    &ServingRecord {
                        cert_pem: issued.cert_pem.clone(),
                        sans: sans.clone(),
                        expires_ms: unix_ms(issued.identity.not_after),
                    },
                )?;
                tracing::info!(?sans, "issued the coordinator serving certificate");
                (issued.cert_pem, key)
            }
        };
        let serving_serial =
            kh::pki::identity_from_der(&kh::pki::first_cert_der(&cert_pem)?)?.serial;
        Ok(Pki {
            serving_serial,
            serving_chain_pem: format!("{cert_pem}{}", ca.cert_pem()),
            serving_key: key,
            ca,
        })
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Writes `admin.khconfig` (0600) unless it exists.
    pub fn ensure_admin_config(
        &self,
        dir: &Path,
        coordinator: &str,
        validity: Duration,
        now: SystemTime,
    ) -> Result<bool, CoordError> {
        let path = admin_config_path(dir);
        if path.exists() {
            return Ok(false);
        }
        let (issued, key) = self
            .ca
            .issue_with_new_key(&Profile::admin("admin", validity), now)?;
        let cfg = KhConfig {
            coordinator: coordinator.to_string(),
            ca: self.ca.cert_pem().to_string(),
            certificate: issued.cert_pem,
            key,
        };
        write_private(&path, cfg.to_yaml().as_bytes())?;
        Ok(true)
    }
}

/// Writes a 0600 file atomically (`kh::fsutil::write_private_atomic`), so a
/// crash never leaves half a credential behind.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CoordError> {
    kh::fsutil::write_private_atomic(path, bytes, 0o600).map_err(|e| {
        CoordError::Store(crate::store::StoreError::Io(format!(
            "{}: {e}",
            path.display()
        )))
    })
}
