//! The khctl credential file (`admin.khconfig`): where the coordinator is, the
//! kh CA to trust, and an admin certificate with its key. Written 0600.

use std::path::Path;

use crate::secret::Secret;
use crate::tls::ClientCreds;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KhConfig {
    /// `host:port` of the coordinator.
    pub coordinator: String,
    pub ca: String,
    pub certificate: String,
    pub key: Secret<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KhConfigError {
    #[error("cannot read kh credentials {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("kh credentials {path} are malformed: {detail}")]
    Parse { path: String, detail: String },
}

impl KhConfig {
    pub fn load(path: &Path) -> Result<Self, KhConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KhConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|e| KhConfigError::Parse {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
    }

    pub fn to_yaml(&self) -> String {
        let body = serde_yaml::to_string(&SerializeExposed(self)).unwrap_or_default();
        format!("# kh admin credentials: anyone holding this file administers the cluster.\n# Keep it 0600. Use it with: khctl --config <this file> ...\n{body}")
    }

    pub fn creds(&self) -> ClientCreds {
        ClientCreds {
            ca_pem: self.ca.clone(),
            cert_pem: self.certificate.clone(),
            key_pem: self.key.clone(),
        }
    }
}

/// Serializes the key in clear, only for writing the file itself.
struct SerializeExposed<'a>(&'a KhConfig);

impl serde::Serialize for SerializeExposed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("KhConfig", 4)?;
        st.serialize_field("coordinator", &self.0.coordinator)?;
        st.serialize_field("ca", &self.0.ca)?;
        st.serialize_field("certificate", &self.0.certificate)?;
        st.serialize_field("key", self.0.key.expose())?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let c = KhConfig {
            coordinator: "127.0.0.1:7443".into(),
            ca: "CA".into(),
            certificate: "CERT".into(),
            key: Secret::new("KEY".into()),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        std::fs::write(&p, c.to_yaml()).unwrap();
        let back = KhConfig::load(&p).unwrap();
        assert_eq!(back.key.expose(), "KEY");
        assert!(!format!("{back:?}").contains("KEY\""));
        std::fs::write(&p, format!("{}extra: 1\n", c.to_yaml())).unwrap();
        let err = KhConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
    }
}
