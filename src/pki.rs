//! The kh PKI: a CA (ECDSA P-256) unrelated to the Kubernetes cluster CA, the
//! identities it issues, and the pin hash agents check before trusting it.
//!
//! An identity lives in the certificate only, as one URI SAN
//! `spiffe://kh/<role>/<name>`. Nothing a client puts in a request can change
//! who it is.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::names::NodeName;
use crate::secret::Secret;

const TRUST_DOMAIN: &str = "spiffe://kh/";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not generate a key pair: {0}")]
    KeyGen(rcgen::Error),
    #[error("the certificate signing request is invalid or its signature does not verify: {0}")]
    BadCsr(rcgen::Error),
    #[error("could not sign the certificate: {0}")]
    Sign(rcgen::Error),
    #[error("could not parse the {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("invalid SAN {value:?}: {detail}")]
    BadSan { value: String, detail: String },
}

/// What a kh certificate may do. The authorization layer maps it to RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Node,
    Coordinator,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Node, Role::Coordinator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Node => "node",
            Role::Coordinator => "coordinator",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated peer, read from a certificate that chains to the kh CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    /// Hex serial number, so the coordinator can tell a superseded certificate.
    pub serial: String,
    pub not_after: SystemTime,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

pub fn spiffe_uri(role: Role, name: &str) -> String {
    format!("{TRUST_DOMAIN}{role}/{name}")
}

/// Reads the kh identity out of a DER certificate. Call it only on certificates
/// that rustls has already verified against the kh CA.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, PkiError> {
    let parse_err = |detail: String| PkiError::Parse {
        what: "peer certificate",
        detail,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| parse_err(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| parse_err(e.to_string()))?
        .ok_or_else(|| {
            parse_err("it has no subjectAltName, so it carries no kh identity".into())
        })?;
    let mut found = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(rest) = uri.strip_prefix(TRUST_DOMAIN) {
                if found.is_some() {
                    return Err(parse_err("it carries more than one kh identity".into()));
                }
                found = Some(rest.to_string());
            }
        }
    }
    let rest = found.ok_or_else(|| parse_err("it has no spiffe://kh/ URI SAN".into()))?;
    let (role, name) = rest
        .split_once('/')
        .ok_or_else(|| parse_err(format!("malformed kh identity {rest:?}")))?;
    let role = Role::parse(role).ok_or_else(|| parse_err(format!("unknown kh role {role:?}")))?;
    if name.is_empty() || name.contains('/') {
        return Err(parse_err(format!("malformed kh identity name {name:?}")));
    }
    Ok(Identity {
        role,
        name: name.to_string(),
        serial: hex::encode(cert.raw_serial()),
        not_after: SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64),
    })
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo, as kubeadm computes
/// `--discovery-token-ca-cert-hash`.
pub fn spki_hash_der(cert_der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| PkiError::Parse {
        what: "CA certificate",
        detail: e.to_string(),
    })?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", hex::encode(digest)))
}

pub fn spki_hash_pem(cert_pem: &str) -> Result<String, PkiError> {
    spki_hash_der(&first_cert_der(cert_pem)?)
}

/// Normalizes an operator-typed pin: `sha256:` prefix, lowercase hex, 64 digits.
pub fn parse_pin(pin: &str) -> Option<String> {
    let hexpart = pin.trim().strip_prefix("sha256:")?;
    (hexpart.len() == 64 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hexpart.to_ascii_lowercase()))
}

pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::Parse {
            what: "certificate PEM",
            detail: "no CERTIFICATE block".into(),
        })?
        .map_err(|e| PkiError::Parse {
            what: "certificate PEM",
            detail: e.to_string(),
        })?;
    Ok(cert.to_vec())
}

pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The validity window of a PEM certificate.
pub fn validity(cert_pem: &str) -> Result<(SystemTime, SystemTime), PkiError> {
    let der = first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::Parse {
        what: "certificate",
        detail: e.to_string(),
    })?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

/// A fresh ECDSA P-256 key; it never leaves the process that made it.
pub fn generate_key() -> Result<Secret<String>, PkiError> {
    let key = KeyPair::generate().map_err(PkiError::KeyGen)?;
    Ok(Secret::new(key.serialize_pem()))
}

/// A CSR for `key_pem`. The coordinator reads only its public key, so the
/// subject is informational.
pub fn csr_pem(key_pem: &Secret<String>, common_name: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem.expose()).map_err(PkiError::KeyGen)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(PkiError::Sign)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let csr = params.serialize_request(&key).map_err(PkiError::Sign)?;
    csr.pem().map_err(PkiError::Sign)
}

/// What a certificate is for. The coordinator builds it; a CSR never does.
#[derive(Debug, Clone)]
pub struct Profile {
    pub role: Role,
    pub name: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub validity: Duration,
}

impl Profile {
    pub fn node(name: &NodeName, validity: Duration) -> Self {
        Profile {
            role: Role::Node,
            name: name.to_string(),
            dns_names: vec![name.tls_server_name()],
            ips: vec![],
            validity,
        }
    }

    pub fn admin(name: &str, validity: Duration) -> Self {
        Profile {
            role: Role::Admin,
            name: name.to_string(),
            dns_names: vec![],
            ips: vec![],
            validity,
        }
    }

    /// The coordinator's certificate serves TLS to agents and khctl and is its
    /// client identity towards agents. `advertise` holds IPs and DNS names.
    pub fn coordinator(advertise: &[String], validity: Duration) -> Self {
        let mut p = Profile {
            role: Role::Coordinator,
            name: "kh-coordinator".to_string(),
            dns_names: vec![],
            ips: vec![],
            validity,
        };
        for a in advertise {
            match a.parse::<IpAddr>() {
                Ok(ip) => p.ips.push(ip),
                Err(_) => p.dns_names.push(a.clone()),
            }
        }
        p
    }

    fn params(&self, now: SystemTime) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{}/{}", self.role, self.name));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "kh");
        let uri = spiffe_uri(self.role, &self.name);
        let mut sans = vec![SanType::URI(uri.clone().try_into().map_err(
            |e: rcgen::Error| PkiError::BadSan {
                value: uri.clone(),
                detail: e.to_string(),
            },
        )?)];
        for d in &self.dns_names {
            sans.push(SanType::DnsName(d.clone().try_into().map_err(
                |e: rcgen::Error| PkiError::BadSan {
                    value: d.clone(),
                    detail: e.to_string(),
                },
            )?));
        }
        sans.extend(self.ips.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_window(&mut params, now, self.validity);
        Ok(params)
    }
}

fn set_window(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    // Backdating tolerates clocks that disagree by a minute or two. It stays
    // a small share of the lifetime, so "renew after two thirds of the
    // validity window" still means two thirds of the time actually granted.
    let start = now - Duration::from_secs(120).min(validity / 10);
    params.not_before = to_offset(start);
    params.not_after = to_offset(now + validity);
    params.serial_number = Some(SerialNumber::from_slice(&serial_bytes()));
}

fn serial_bytes() -> [u8; 16] {
    let mut b = crate::token::random_bytes::<16>();
    // A positive INTEGER with no leading zero octet keeps every parser happy.
    b[0] = (b[0] & 0x7f) | 0x40;
    b
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub identity: Identity,
}

/// The kh certificate authority.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Ca {
    pub const VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);

    pub fn generate(now: SystemTime) -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::KeyGen)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "kh CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "kh");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_window(&mut params, now, Self::VALIDITY);
        let cert = params.self_signed(&key).map_err(PkiError::Sign)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &Secret<String>) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem.expose()).map_err(|e| PkiError::Parse {
            what: "CA key",
            detail: e.to_string(),
        })?;
        let cert_der = first_cert_der(cert_pem)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> Secret<String> {
        Secret::new(self.key.serialize_pem())
    }

    /// The pin agents pass as `--ca-cert-hash`.
    pub fn cert_hash(&self) -> String {
        spki_hash_der(&self.cert_der).unwrap_or_default()
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key).map_err(|e| {
            PkiError::Parse {
                what: "CA certificate",
                detail: e.to_string(),
            }
        })
    }

    /// Signs a certificate for `profile` around the public key of `csr_pem`.
    /// The CSR's own subject and extensions are ignored on purpose.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        profile: &Profile,
        now: SystemTime,
    ) -> Result<Issued, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let params = profile.params(now)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(PkiError::Sign)?;
        let identity = identity_from_der(cert.der())?;
        Ok(Issued {
            cert_pem: cert.pem(),
            identity,
        })
    }

    /// Issues a certificate with a key generated here, for the coordinator's
    /// own identities (its server certificate and the admin credential).
    pub fn issue_with_new_key(
        &self,
        profile: &Profile,
        now: SystemTime,
    ) -> Result<(Issued, Secret<String>), PkiError> {
        let key = KeyPair::generate().map_err(PkiError::KeyGen)?;
        let params = profile.params(now)?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(PkiError::Sign)?;
        let identity = identity_from_der(cert.der())?;
        Ok((
            Issued {
                cert_pem: cert.pem(),
                identity,
            },
            Secret::new(key.serialize_pem()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn a_signed_csr_carries_only_the_profile_identity() {
        let ca = Ca::generate(now()).unwrap();
        let key = generate_key().unwrap();
        // The CSR claims to be an admin; the profile says node cp-1, and wins.
        let csr = csr_pem(&key, "admin/root").unwrap();
        let node = NodeName::new("cp-1").unwrap();
        let issued = ca
            .sign_csr(
                &csr,
                &Profile::node(&node, Duration::from_secs(3600)),
                now(),
            )
            .unwrap();
        assert_eq!(issued.identity.role, Role::Node);
        assert_eq!(issued.identity.name, "cp-1");
        let (from, to) = validity(&issued.cert_pem).unwrap();
        assert!(to.duration_since(from).unwrap() >= Duration::from_secs(3600));
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let ca = Ca::generate(now()).unwrap();
        use base64::Engine;
        let csr = csr_pem(&generate_key().unwrap(), "x").unwrap();
        let b64: String = csr.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        // The last bytes are the signature; flipping one breaks proof of possession.
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        assert!(matches!(
            ca.sign_csr(
                &tampered,
                &Profile::admin("a", Duration::from_secs(60)),
                now()
            ),
            Err(PkiError::BadCsr(_))
        ));
    }

    #[test]
    fn the_ca_survives_a_pem_round_trip_and_keeps_its_hash() {
        let ca = Ca::generate(now()).unwrap();
        let back = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(back.cert_hash(), ca.cert_hash());
        assert!(ca.cert_hash().starts_with("sha256:"));
        assert_eq!(ca.cert_hash().len(), 7 + 64);
        assert_eq!(
            parse_pin(&ca.cert_hash().to_uppercase().replace("SHA256", "sha256")),
            Some(ca.cert_hash())
        );
        assert_eq!(parse_pin("sha256:abc"), None);
        assert_eq!(parse_pin("md5:00"), None);
    }

    #[test]
    fn coordinator_profile_splits_ips_and_names() {
        let ca = Ca::generate(now()).unwrap();
        let p = Profile::coordinator(
            &["127.0.0.1".into(), "coord.example".into()],
            Duration::from_secs(60),
        );
        assert_eq!(p.ips.len(), 1);
        let (issued, _key) = ca.issue_with_new_key(&p, now()).unwrap();
        assert_eq!(issued.identity.role, Role::Coordinator);
        assert_eq!(issued.identity.name, "kh-coordinator");
    }

    #[test]
    fn der_to_pem_round_trips() {
        let ca = Ca::generate(now()).unwrap();
        let der = first_cert_der(ca.cert_pem()).unwrap();
        assert_eq!(first_cert_der(&der_to_pem(&der)).unwrap(), der);
    }
}
