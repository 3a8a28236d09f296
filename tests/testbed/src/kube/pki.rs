//! The cluster PKI the kubeadm double writes: CAs, leaf certificates, the
//! service-account key pair, the discovery hash and kubeadm's AES-GCM
//! encryption of the `kubeadm-certs` Secret.
//!
//! Keys are ECDSA P-256 (as with kubeadm's `encryptionAlgorithm:
//! ECDSA-P256`); kubeadm's default is RSA 2048, which ring cannot generate.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// A CA certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CaPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPair").finish_non_exhaustive()
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Default)]
pub struct Leaf {
    pub cn: String,
    pub orgs: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub server: bool,
    pub client: bool,
}

/// The validity window of a certificate issued now: it starts an hour before
/// the earlier of real and testbed time, so real etcd and rustls (which judge
/// by the real clock) never see a not-yet-valid certificate after the clock
/// moved, and it ends `validity` after testbed time, as kubeadm's would. A
/// cluster built with the clock set back 345 days is therefore truly 20 days
/// from expiry once the clock is set back to real time.
pub fn validity_window(validity: Duration) -> (SystemTime, SystemTime) {
    let real = SystemTime::now();
    let testbed = crate::clock::now();
    (
        real.min(testbed) - Duration::from_secs(3600),
        testbed + validity,
    )
}

fn window(params: &mut CertificateParams, validity: Duration) {
    let (from, until) = validity_window(validity);
    let at = |t: SystemTime| {
        time::OffsetDateTime::from_unix_timestamp(crate::clock::unix_secs(t))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    params.not_before = at(from);
    params.not_after = at(until);
}

fn serial(params: &mut CertificateParams) {
    let mut b = kh::token::random_bytes::<16>();
    b[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&b));
}

impl CaPair {
    /// A new self-signed CA, like kubeadm's `ca`, `front-proxy-ca`, `etcd/ca`.
    pub fn generate(cn: &str) -> Result<CaPair> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        window(&mut params, CA_VALIDITY);
        serial(&mut params);
        let cert = params.self_signed(&key)?;
        Ok(CaPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem).context("parsing the CA key")?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).context("parsing the CA certificate")
    }

    fn leaf_params(spec: &Leaf) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for o in &spec.orgs {
            params
                .distinguished_name
                .push(DnType::OrganizationName, o.as_str());
        }
        params
            .distinguished_name
            .push(DnType::CommonName, spec.cn.as_str());
        params.subject_alt_names = spec
            .dns
            .iter()
            .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName))
            .chain(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .collect();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        window(&mut params, LEAF_VALIDITY);
        serial(&mut params);
        params
    }

    /// A leaf certificate with a fresh key: (cert PEM, key PEM).
    pub fn issue(&self, spec: &Leaf) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = Self::leaf_params(spec).signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Like [`CaPair::issue`], valid from `not_before` to `not_after`
    /// whatever the clocks say (for tests of expired certificates).
    pub fn issue_between(
        &self,
        spec: &Leaf,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = Self::leaf_params(spec);
        let at = |t: SystemTime| {
            time::OffsetDateTime::from_unix_timestamp(crate::clock::unix_secs(t))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        };
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a CSR for `spec` (subject and SANs come from `spec`, as a
    /// Kubernetes signer decides them, not the requester).
    pub fn sign_csr(&self, csr_pem: &str, spec: &Leaf) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let cert = Self::leaf_params(spec).signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }
}

/// A fresh key and a CSR for `cn` / `orgs`: (key PEM, CSR PEM).
pub fn key_and_csr(cn: &str, orgs: &[&str]) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for o in orgs {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    params.distinguished_name.push(DnType::CommonName, cn);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The service-account signing key pair: (private PEM, public PEM).
pub fn sa_key_pair() -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// The DER of the first certificate in `pem`.
pub fn cert_der(pem: &str) -> Result<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow!("not a PEM certificate: {e}"))?;
    if p.label != "CERTIFICATE" {
        return Err(anyhow!("PEM block is {:?}, not CERTIFICATE", p.label));
    }
    Ok(p.contents)
}

/// `sha256:<hex>` of the certificate's SubjectPublicKeyInfo, as kubeadm's
/// `--discovery-token-ca-cert-hash` pins the cluster CA.
pub fn ca_cert_hash(cert_pem: &str) -> Result<String> {
    let der = cert_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow!("cannot parse certificate: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, spki))
    ))
}

/// `(not_before, not_after)` of a DER certificate, in Unix seconds.
pub fn validity_of(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Subject common name and organizations of a DER certificate.
pub fn subject_of(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let orgs = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    Some((cn, orgs))
}

/// kubeadm's `cryptoutil.EncryptBytes`: AES-GCM with the certificate key,
/// a random 12-byte nonce prepended to the sealed data.
pub fn encrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| anyhow!("crypto/aes: invalid key size"))?,
    );
    let nonce = kh::token::random_bytes::<12>();
    let mut sealed = data.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut sealed,
    )
    .map_err(|_| anyhow!("sealing failed"))?;
    let mut out = nonce.to_vec();
    out.extend(sealed);
    Ok(out)
}

/// The inverse of [`encrypt`]; a wrong key fails with Go's error text.
pub fn decrypt(key: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| "crypto/aes: invalid key size".to_string())?,
    );
    if data.len() < 12 {
        return Err("size of data is less than the nonce".into());
    }
    let nonce =
        Nonce::try_assume_unique_for_key(&data[..12]).map_err(|_| "invalid nonce".to_string())?;
    let mut buf = data[12..].to_vec();
    let plain = k
        .open_in_place(nonce, Aad::empty(), &mut buf)
        .map_err(|_| "cipher: message authentication failed".to_string())?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_is_signed_by_its_ca_and_the_hash_is_stable() {
        let ca = CaPair::generate("kubernetes").unwrap();
        let (cert, _key) = ca
            .issue(&Leaf {
                cn: "kube-apiserver".into(),
                dns: vec!["kubernetes".into()],
                ips: vec!["127.0.0.1".parse().unwrap()],
                server: true,
                ..Leaf::default()
            })
            .unwrap();
        let der = cert_der(&cert).unwrap();
        assert_eq!(subject_of(&der).unwrap().0, "kube-apiserver");
        let h = ca_cert_hash(&ca.cert_pem).unwrap();
        assert!(h.starts_with("sha256:") && h.len() == 71, "{h}");
        assert_eq!(h, ca_cert_hash(&ca.cert_pem).unwrap());
    }

    #[test]
    fn a_wrong_key_fails_authentication() {
        let key = [7u8; 32];
        let sealed = encrypt(&key, b"secret").unwrap();
        assert_eq!(decrypt(&key, &sealed).unwrap(), b"secret");
        assert_eq!(
            decrypt(&[8u8; 32], &sealed).unwrap_err(),
            "cipher: message authentication failed"
        );
    }
}
