//! The expiry of a node's Kubernetes certificates, read from the files
//! kubeadm and the kubelet keep, the way `kubeadm certs check-expiration`
//! reads them (plus the kubelet's own client certificate, which kubeadm does
//! not list): the PKI files under `/etc/kubernetes/pki`, the client
//! certificates embedded in the kubeconfigs under `/etc/kubernetes`, and the
//! file `kubelet.conf` names. Read-only; certificates are parsed here
//! (x509-parser), never by shelling out to openssl.
//!
//! A file that does not exist is simply absent from the answer (a worker has
//! only the kubelet's, an external-etcd cluster no `etcd/*`); a file that
//! exists but cannot be read or parsed is reported with its error, so one bad
//! file does not hide the others.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::Host;

/// The directory of kubeadm's PKI files.
pub const PKI_DIR: &str = "/etc/kubernetes/pki";
/// The name `khctl certs check` gives the kubelet's own client certificate.
pub const KUBELET_CLIENT: &str = "kubelet-client";
/// Certificates, keys and kubeconfigs are a few KiB; anything larger is not
/// what kubeadm wrote, and reading it whole on every metrics scrape would let
/// one odd file cost memory.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;

/// One certificate and its validity period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCert {
    /// kubeadm's name (`apiserver`, `admin.conf`, `etcd-ca`, ...), or
    /// `kubelet-client`.
    pub name: String,
    /// The host path of the file holding it (the kubeconfig for embedded
    /// client certificates).
    pub path: String,
    /// Unix seconds; 0 when `error` is set.
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// The name of the CA that signs it (`ca`, `etcd-ca`, `front-proxy-ca`);
    /// empty for a CA.
    pub ca: String,
    pub is_ca: bool,
    /// kubeadm's rule: the signing CA's private key is not on this node, so
    /// `kubeadm certs renew` cannot renew it here.
    pub externally_managed: bool,
    /// Why the file could not be read or parsed; `None` when it was.
    pub error: Option<String>,
}

/// A CA: its name, certificate and key.
struct Ca {
    name: &'static str,
    cert: &'static str,
    key: &'static str,
}

const CAS: [Ca; 3] = [
    Ca {
        name: "ca",
        cert: "/etc/kubernetes/pki/ca.crt",
        key: "/etc/kubernetes/pki/ca.key",
    },
    Ca {
        name: "etcd-ca",
        cert: "/etc/kubernetes/pki/etcd/ca.crt",
        key: "/etc/kubernetes/pki/etcd/ca.key",
    },
    Ca {
        name: "front-proxy-ca",
        cert: "/etc/kubernetes/pki/front-proxy-ca.crt",
        key: "/etc/kubernetes/pki/front-proxy-ca.key",
    },
];

/// Where a leaf certificate lives.
enum Source {
    /// A PEM file.
    Pem(&'static str),
    /// The client certificate of a kubeconfig, embedded or named by path.
    Kubeconfig(&'static str),
}

/// kubeadm's leaf certificates, in `kubeadm certs check-expiration` order
/// (alphabetical), then the kubelet's.
const LEAVES: [(&str, Source, &str); 12] = [
    (
        "admin.conf",
        Source::Kubeconfig("/etc/kubernetes/admin.conf"),
        "ca",
    ),
    (
        "apiserver",
        Source::Pem("/etc/kubernetes/pki/apiserver.crt"),
        "ca",
    ),
    (
        "apiserver-etcd-client",
        Source::Pem("/etc/kubernetes/pki/apiserver-etcd-client.crt"),
        "etcd-ca",
    ),
    (
        "apiserver-kubelet-client",
        Source::Pem("/etc/kubernetes/pki/apiserver-kubelet-client.crt"),
        "ca",
    ),
    (
        "controller-manager.conf",
        Source::Kubeconfig("/etc/kubernetes/controller-manager.conf"),
        "ca",
    ),
    (
        "etcd-healthcheck-client",
        Source::Pem("/etc/kubernetes/pki/etcd/healthcheck-client.crt"),
        "etcd-ca",
    ),
    (
        "etcd-peer",
        Source::Pem("/etc/kubernetes/pki/etcd/peer.crt"),
        "etcd-ca",
    ),
    (
        "etcd-server",
        Source::Pem("/etc/kubernetes/pki/etcd/server.crt"),
        "etcd-ca",
    ),
    (
        "front-proxy-client",
        Source::Pem("/etc/kubernetes/pki/front-proxy-client.crt"),
        "front-proxy-ca",
    ),
    (
        "scheduler.conf",
        Source::Kubeconfig("/etc/kubernetes/scheduler.conf"),
        "ca",
    ),
    (
        "super-admin.conf",
        Source::Kubeconfig("/etc/kubernetes/super-admin.conf"),
        "ca",
    ),
    (
        KUBELET_CLIENT,
        Source::Kubeconfig(super::KUBELET_CONF),
        "ca",
    ),
];

/// Every certificate of the node that exists: the leaves first, then the
/// CAs. Never fails as a whole: a file's problem is that entry's `error`.
pub fn cluster_certs(host: &Host) -> Vec<ClusterCert> {
    let key_present = |ca: &str| {
        CAS.iter()
            .find(|c| c.name == ca)
            .is_some_and(|c| matches!(host.exists(c.key), Ok(true)))
    };
    let mut out = Vec::new();
    for (name, source, ca) in &LEAVES {
        let found = match source {
            Source::Pem(path) => read_pem_file(host, path).map(|r| (path.to_string(), r)),
            Source::Kubeconfig(path) => read_kubeconfig(host, path),
        };
        let Some((path, result)) = found else {
            continue;
        };
        out.push(entry(name, path, result, ca, false, !key_present(ca)));
    }
    for ca in &CAS {
        if let Some(result) = read_pem_file(host, ca.cert) {
            out.push(entry(
                ca.name,
                ca.cert.to_string(),
                result,
                "",
                true,
                !key_present(ca.name),
            ));
        }
    }
    out
}

fn entry(
    name: &str,
    path: String,
    validity: Validity,
    ca: &str,
    is_ca: bool,
    externally_managed: bool,
) -> ClusterCert {
    let (not_before_unix, not_after_unix, error) = match validity {
        Ok((from, until)) => (from, until, None),
        Err(e) => (0, 0, Some(e)),
    };
    ClusterCert {
        name: name.to_string(),
        path,
        not_before_unix,
        not_after_unix,
        ca: ca.to_string(),
        is_ca,
        externally_managed,
        error,
    }
}

/// `(not_before, not_after)` in Unix seconds, or why they could not be read.
type Validity = Result<(i64, i64), String>;

/// The file's bytes; `None` when it does not exist.
fn read(host: &Host, path: &str) -> Option<Result<Vec<u8>, String>> {
    match host.read_capped(path, MAX_FILE_BYTES) {
        Ok(None) => None,
        Ok(Some((_, true))) => Some(Err(format!(
            "{path} is larger than {MAX_FILE_BYTES} bytes, which no certificate or kubeconfig is; inspect the file"
        ))),
        Ok(Some((bytes, false))) => Some(Ok(bytes)),
        Err(e) => Some(Err(e.to_string())),
    }
}

fn read_pem_file(host: &Host, path: &str) -> Option<Validity> {
    Some(read(host, path)?.and_then(|bytes| validity_of_pem(&bytes, path)))
}

/// The validity period of the first certificate in PEM `bytes`.
pub fn validity_of_pem(bytes: &[u8], what: &str) -> Validity {
    let mut rest = bytes;
    loop {
        let (next, pem) = x509_parser::pem::parse_x509_pem(rest).map_err(|e| {
            format!("{what} holds no PEM certificate ({e}); restore it from a backup or renew it")
        })?;
        if pem.label == "CERTIFICATE" {
            let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).map_err(|e| {
                format!("{what}: the certificate does not parse ({e}); restore it from a backup or renew it")
            })?;
            let v = cert.validity();
            return Ok((v.not_before.timestamp(), v.not_after.timestamp()));
        }
        // A key block before the certificate, as in kubelet-client-current.pem.
        rest = next;
    }
}

/// The client certificate of the kubeconfig at `path`: embedded
/// (`client-certificate-data`) or in the file `client-certificate` names,
/// which is then the path reported. `None` when the kubeconfig (or the file
/// it names) does not exist.
fn read_kubeconfig(host: &Host, path: &str) -> Option<(String, Validity)> {
    let bytes = match read(host, path)? {
        Ok(b) => b,
        Err(e) => return Some((path.to_string(), Err(e))),
    };
    match client_cert_of(&bytes, path) {
        Err(e) => Some((path.to_string(), Err(e))),
        Ok(ClientCert::Data(pem)) => Some((path.to_string(), validity_of_pem(&pem, path))),
        Ok(ClientCert::File(file)) => {
            let file = if file.starts_with('/') {
                file
            } else {
                // kubeconfig paths are relative to the kubeconfig's directory.
                let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                format!("{dir}/{file}")
            };
            let validity = read_pem_file(host, &file)?;
            Some((file, validity))
        }
    }
}

enum ClientCert {
    Data(Vec<u8>),
    File(String),
}

/// The current context's user's client certificate (the first user's, when
/// there is no current context).
fn client_cert_of(kubeconfig: &[u8], path: &str) -> Result<ClientCert, String> {
    #[derive(Deserialize)]
    struct Kubeconfig {
        #[serde(rename = "current-context", default)]
        current_context: Option<String>,
        #[serde(default)]
        contexts: Vec<Named<ContextBody>>,
        #[serde(default)]
        users: Vec<Named<UserBody>>,
    }
    #[derive(Deserialize)]
    struct Named<T> {
        name: String,
        #[serde(alias = "context", alias = "user")]
        body: Option<T>,
    }
    #[derive(Deserialize)]
    struct ContextBody {
        user: Option<String>,
    }
    #[derive(Deserialize)]
    struct UserBody {
        #[serde(rename = "client-certificate-data")]
        data: Option<String>,
        #[serde(rename = "client-certificate")]
        file: Option<String>,
    }
    let bad = |why: String| {
        format!("{path}: {why}; regenerate it with kubeadm (kubeadm init phase kubeconfig) or restore it from a backup")
    };
    let kc: Kubeconfig =
        serde_yaml::from_slice(kubeconfig).map_err(|e| bad(format!("not a kubeconfig ({e})")))?;
    let wanted = kc.current_context.as_deref().and_then(|cur| {
        kc.contexts
            .iter()
            .find(|c| c.name == cur)
            .and_then(|c| c.body.as_ref()?.user.clone())
    });
    let user = match &wanted {
        Some(u) => kc.users.iter().find(|x| &x.name == u),
        None => kc.users.first(),
    }
    .and_then(|u| u.body.as_ref())
    .ok_or_else(|| bad("names no user with a client certificate".to_string()))?;
    if let Some(data) = &user.data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| bad(format!("client-certificate-data is not base64 ({e})")))?;
        return Ok(ClientCert::Data(pem));
    }
    match &user.file {
        Some(f) if !f.is_empty() => Ok(ClientCert::File(f.clone())),
        _ => Err(bad("its user has no client certificate".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    const DAY: i64 = 86_400;
    const T0: i64 = 1_780_000_000;

    fn at(secs: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    struct TestCa {
        cert_pem: String,
        issuer: Issuer<'static, KeyPair>,
        key_pem: String,
    }

    fn ca(cn: &str, from: i64, until: i64) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.not_before = at(from);
        p.not_after = at(until);
        let cert = p.self_signed(&key).unwrap();
        let key_pem = key.serialize_pem();
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
            key_pem,
        }
    }

    fn leaf(ca: &TestCa, cn: &str, from: i64, until: i64) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = at(from);
        p.not_after = at(until);
        p.signed_by(&key, &ca.issuer).unwrap().pem()
    }

    fn kubeconfig_with_data(cert_pem: &str) -> String {
        let data = base64::engine::general_purpose::STANDARD.encode(cert_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters: []\ncontexts:\n- name: other\n  context: {{cluster: c, user: nobody}}\n- name: main\n  context: {{cluster: c, user: me}}\ncurrent-context: main\nusers:\n- name: nobody\n  user: {{token: x}}\n- name: me\n  user:\n    client-certificate-data: {data}\n    client-key-data: c2VjcmV0\n"
        )
    }

    fn write(root: &std::path::Path, abs: &str, text: &str) {
        let p = root.join(abs.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn by_name<'a>(certs: &'a [ClusterCert], name: &str) -> &'a ClusterCert {
        certs
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} in {certs:#?}"))
    }

    #[test]
    fn a_control_plane_reports_every_certificate_with_its_ca_and_validity() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let kca = ca("kubernetes", T0, T0 + 3650 * DAY);
        let eca = ca("etcd-ca", T0, T0 + 3650 * DAY);
        let fca = ca("front-proxy-ca", T0 + 1, T0 + 3650 * DAY);
        write(root, "/etc/kubernetes/pki/ca.crt", &kca.cert_pem);
        write(root, "/etc/kubernetes/pki/ca.key", &kca.key_pem);
        write(root, "/etc/kubernetes/pki/etcd/ca.crt", &eca.cert_pem);
        write(root, "/etc/kubernetes/pki/etcd/ca.key", &eca.key_pem);
        // The front-proxy CA's key is kept elsewhere: externally managed.
        write(
            root,
            "/etc/kubernetes/pki/front-proxy-ca.crt",
            &fca.cert_pem,
        );
        let year = |ca: &TestCa, cn: &str| leaf(ca, cn, T0, T0 + 365 * DAY);
        for (file, ca, cn) in [
            ("apiserver", &kca, "kube-apiserver"),
            (
                "apiserver-kubelet-client",
                &kca,
                "kube-apiserver-kubelet-client",
            ),
            ("apiserver-etcd-client", &eca, "kube-apiserver-etcd-client"),
            ("etcd/server", &eca, "cp-1"),
            ("etcd/peer", &eca, "cp-1"),
            (
                "etcd/healthcheck-client",
                &eca,
                "kube-etcd-healthcheck-client",
            ),
            ("front-proxy-client", &fca, "front-proxy-client"),
        ] {
            write(
                root,
                &format!("/etc/kubernetes/pki/{file}.crt"),
                &year(ca, cn),
            );
        }
        for conf in ["admin", "super-admin", "controller-manager"] {
            write(
                root,
                &format!("/etc/kubernetes/{conf}.conf"),
                &kubeconfig_with_data(&year(&kca, conf)),
            );
        }
        // A kubeconfig that is not one.
        write(root, "/etc/kubernetes/scheduler.conf", "{{{ not yaml");
        // The kubelet names its rotated file: key first, then certificate.
        let kubelet_pem = leaf(&kca, "system:node:cp-1", T0 + 5, T0 + 20 * DAY);
        write(
            root,
            "/var/lib/kubelet/pki/kubelet-client-current.pem",
            &format!(
                "{}{kubelet_pem}",
                KeyPair::generate().unwrap().serialize_pem()
            ),
        );
        write(
            root,
            "/etc/kubernetes/kubelet.conf",
            "apiVersion: v1\nkind: Config\ncurrent-context: k\ncontexts:\n- name: k\n  context: {cluster: c, user: default-auth}\nusers:\n- name: default-auth\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
        );

        let host = Host::new(root, vec![]);
        let certs = cluster_certs(&host);
        let names: Vec<&str> = certs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "admin.conf",
                "apiserver",
                "apiserver-etcd-client",
                "apiserver-kubelet-client",
                "controller-manager.conf",
                "etcd-healthcheck-client",
                "etcd-peer",
                "etcd-server",
                "front-proxy-client",
                "scheduler.conf",
                "super-admin.conf",
                "kubelet-client",
                "ca",
                "etcd-ca",
                "front-proxy-ca",
            ]
        );
        assert_eq!(
            by_name(&certs, "etcd-peer"),
            &ClusterCert {
                name: "etcd-peer".into(),
                path: "/etc/kubernetes/pki/etcd/peer.crt".into(),
                not_before_unix: T0,
                not_after_unix: T0 + 365 * DAY,
                ca: "etcd-ca".into(),
                is_ca: false,
                externally_managed: false,
                error: None,
            }
        );
        let admin = by_name(&certs, "admin.conf");
        assert_eq!(
            (admin.path.as_str(), admin.not_after_unix, admin.ca.as_str()),
            ("/etc/kubernetes/admin.conf", T0 + 365 * DAY, "ca")
        );
        let kubelet = by_name(&certs, KUBELET_CLIENT);
        assert_eq!(
            (
                kubelet.path.as_str(),
                kubelet.not_before_unix,
                kubelet.not_after_unix
            ),
            (
                "/var/lib/kubelet/pki/kubelet-client-current.pem",
                T0 + 5,
                T0 + 20 * DAY
            )
        );
        let fp = by_name(&certs, "front-proxy-client");
        assert!(fp.externally_managed && fp.error.is_none(), "{fp:?}");
        let fpca = by_name(&certs, "front-proxy-ca");
        assert!(fpca.is_ca && fpca.externally_managed && fpca.ca.is_empty());
        assert_eq!(fpca.not_before_unix, T0 + 1);
        let kca_entry = by_name(&certs, "ca");
        assert!(kca_entry.is_ca && !kca_entry.externally_managed);
        assert_eq!(kca_entry.not_after_unix, T0 + 3650 * DAY);
        let sched = by_name(&certs, "scheduler.conf");
        let err = sched.error.as_deref().unwrap();
        assert!(
            err.contains("/etc/kubernetes/scheduler.conf") && err.contains("not a kubeconfig"),
            "{err}"
        );
        assert_eq!((sched.not_before_unix, sched.not_after_unix), (0, 0));
        // Nothing secret reaches the answer.
        assert!(!format!("{certs:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn a_worker_has_only_its_kubelet_certificate_and_bad_files_are_reported_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let kca = ca("kubernetes", T0, T0 + 3650 * DAY);
        // A worker: the CA certificate without its key, and kubelet.conf
        // with the certificate embedded.
        write(root, "/etc/kubernetes/pki/ca.crt", &kca.cert_pem);
        write(
            root,
            "/etc/kubernetes/kubelet.conf",
            &kubeconfig_with_data(&leaf(&kca, "system:node:w-1", T0, T0 + 365 * DAY)),
        );
        let host = Host::new(root, vec![]);
        let certs = cluster_certs(&host);
        let names: Vec<&str> = certs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["kubelet-client", "ca"]);
        assert!(certs
            .iter()
            .all(|c| c.externally_managed && c.error.is_none()));

        // A garbage certificate and a huge file are errors of their own.
        write(root, "/etc/kubernetes/pki/apiserver.crt", "garbage");
        write(
            root,
            "/etc/kubernetes/pki/front-proxy-client.crt",
            &"x".repeat(MAX_FILE_BYTES as usize + 1),
        );
        let certs = cluster_certs(&host);
        let api = by_name(&certs, "apiserver");
        assert!(
            api.error
                .as_deref()
                .unwrap()
                .contains("holds no PEM certificate"),
            "{api:?}"
        );
        let big = by_name(&certs, "front-proxy-client");
        assert!(
            big.error.as_deref().unwrap().contains("larger than"),
            "{big:?}"
        );
        assert!(by_name(&certs, KUBELET_CLIENT).error.is_none());
        // A kubelet.conf naming a file that is gone: the kubelet's
        // certificate is absent, not an error.
        write(
            root,
            "/etc/kubernetes/kubelet.conf",
            "users:\n- name: u\n  user: {client-certificate: pki/gone.pem}\n",
        );
        assert!(!cluster_certs(&host)
            .iter()
            .any(|c| c.name == KUBELET_CLIENT));
        write(
            root,
            "/etc/kubernetes/pki/gone.pem",
            &leaf(&kca, "n", T0, T0 + 9),
        );
        let k = cluster_certs(&host);
        let k = by_name(&k, KUBELET_CLIENT);
        assert_eq!(
            (k.path.as_str(), k.not_after_unix),
            ("/etc/kubernetes/pki/gone.pem", T0 + 9)
        );
    }
}
