//! `kubeadm certs renew all|<name> [--config F] [--kubeconfig F]`.
//!
//! As kubeadm does, a certificate is renewed from the certificate on disk:
//! the same subject, SANs and key usages, a fresh key, signed by the CA on
//! disk, valid from now (the testbed clock, through `pki`'s window). The
//! cluster configuration is read first when no `--config` is given; when the
//! apiserver does not answer (an expired cluster) kubeadm falls back to the
//! default configuration and still renews from the local files.

use super::*;
use crate::kube::unb64;

/// What one renewable certificate is.
pub(super) struct Renewable {
    pub(super) name: &'static str,
    /// kubeadm's long name, printed as "<long> renewed".
    long: &'static str,
    /// Where it lives.
    file: File,
    /// The CA that signs it (base name under /etc/kubernetes/pki).
    ca: &'static str,
    /// Only on stacked etcd control planes.
    pub(super) etcd: bool,
}

pub(super) enum File {
    /// `<PKI>/<base>.crt` and `.key`.
    Pki(&'static str),
    /// A kubeconfig under /etc/kubernetes with the certificate embedded.
    Kubeconfig(&'static str),
}

/// kubeadm's renewable certificates, in the order `renew all` prints them.
pub(super) const RENEWABLE: [Renewable; 11] = [
    Renewable {
        name: "admin.conf",
        long: "certificate embedded in the kubeconfig file for the admin to use and for kubeadm itself",
        file: File::Kubeconfig("admin.conf"),
        ca: "ca",
        etcd: false,
    },
    Renewable {
        name: "apiserver",
        long: "certificate for serving the Kubernetes API",
        file: File::Pki("apiserver"),
        ca: "ca",
        etcd: false,
    },
    Renewable {
        name: "apiserver-etcd-client",
        long: "certificate the apiserver uses to access etcd",
        file: File::Pki("apiserver-etcd-client"),
        ca: "etcd/ca",
        etcd: true,
    },
    Renewable {
        name: "apiserver-kubelet-client",
        long: "certificate for the API server to connect to kubelet",
        file: File::Pki("apiserver-kubelet-client"),
        ca: "ca",
        etcd: false,
    },
    Renewable {
        name: "controller-manager.conf",
        long: "certificate embedded in the kubeconfig file for the controller manager to use",
        file: File::Kubeconfig("controller-manager.conf"),
        ca: "ca",
        etcd: false,
    },
    Renewable {
        name: "etcd-healthcheck-client",
        long: "certificate for liveness probes to healthcheck etcd",
        file: File::Pki("etcd/healthcheck-client"),
        ca: "etcd/ca",
        etcd: true,
    },
    Renewable {
        name: "etcd-peer",
        long: "certificate for etcd nodes to communicate with each other",
        file: File::Pki("etcd/peer"),
        ca: "etcd/ca",
        etcd: true,
    },
    Renewable {
        name: "etcd-server",
        long: "certificate for serving etcd",
        file: File::Pki("etcd/server"),
        ca: "etcd/ca",
        etcd: true,
    },
    Renewable {
        name: "front-proxy-client",
        long: "certificate for the front proxy client",
        file: File::Pki("front-proxy-client"),
        ca: "front-proxy-ca",
        etcd: false,
    },
    Renewable {
        name: "scheduler.conf",
        long: "certificate embedded in the kubeconfig file for the scheduler manager to use",
        file: File::Kubeconfig("scheduler.conf"),
        ca: "ca",
        etcd: false,
    },
    Renewable {
        name: "super-admin.conf",
        long: "certificate embedded in the kubeconfig file for the super-admin",
        file: File::Kubeconfig("super-admin.conf"),
        ca: "ca",
        etcd: false,
    },
];

const RENEW_FLAGS: [Flag; 3] = [value("config"), value("kubeconfig"), value("cert-dir")];

pub(super) fn renew(env: &NodeEnv, argv: &[String]) -> R<()> {
    let Some(which) = argv.first().map(String::as_str) else {
        return Err(plain(
            "the kh testbed kubeadm double needs `kubeadm certs renew all` or a certificate name; see tests/testbed/CONTRACT.md",
        ));
    };
    let p = parse(&argv[1..], &RENEW_FLAGS)?;
    let targets: Vec<&Renewable> = match which {
        "all" => RENEWABLE.iter().collect(),
        name => match RENEWABLE.iter().find(|r| r.name == name) {
            Some(r) => vec![r],
            None => {
                return Err(plain(format!(
                "invalid subcommand \"{name}\"\nSee 'kubeadm certs renew -h' for help and examples"
            )))
            }
        },
    };
    if let Some(extra) = p.positional.first() {
        return Err(plain(format!(
            "invalid subcommand \"{which} {extra}\"\nSee 'kubeadm certs renew -h' for help and examples"
        )));
    }
    if p.get("cert-dir").is_some_and(|d| d != PKI) {
        return Err(plain(
            "the kh testbed kubeadm double renews certificates only in /etc/kubernetes/pki",
        ));
    }
    read_config(env, p.get("config"), p.get("kubeconfig"))?;
    let stacked = env.path(&format!("{PKI}/etcd/ca.key")).exists();
    for r in targets {
        if r.etcd && !stacked && which == "all" {
            // External etcd: kubeadm does not list the local etcd certificates.
            continue;
        }
        if !exists(env, r) {
            println!("MISSING! {}", r.long);
            continue;
        }
        renew_one(env, r)
            .map_err(|e| plain(format!("failed to renew certificate {}: {e}", r.name)))?;
        println!("{} renewed", r.long);
    }
    if which == "all" {
        println!("\nDone renewing certificates. You must restart the kube-apiserver, kube-controller-manager, kube-scheduler and etcd, so that they can use the new certificates.");
    }
    Ok(())
}

/// kubeadm reads the cluster's configuration unless `--config` names one;
/// a cluster that does not answer is not an error.
fn read_config(env: &NodeEnv, config: Option<&str>, kubeconfig: Option<&str>) -> R<()> {
    if let Some(file) = config {
        if !host_file(env, file).exists() {
            return Err(plain(format!(
                "unable to read config from \"{file}\" : open {file}: no such file or directory"
            )));
        }
        return Ok(());
    }
    println!("[renew] Reading configuration from the cluster...");
    println!("[renew] FYI: You can look at this config file with 'kubectl -n kube-system get cm kubeadm-config -o yaml'");
    let fetched = admin_client(env, kubeconfig).ok().and_then(|mut c| {
        // An apiserver that is down or refuses this client fails fast; one
        // that hangs must not hold the renewal for client-go's 30 s.
        c.timeout = Duration::from_secs(5);
        load_cluster_config(&c).ok()
    });
    match fetched {
        Some(_) => println!(),
        None => println!(
            "[renew] Error reading configuration from the Cluster. Falling back to default configuration\n"
        ),
    }
    Ok(())
}

pub(super) fn exists(env: &NodeEnv, r: &Renewable) -> bool {
    match r.file {
        File::Pki(base) => env.path(&format!("{PKI}/{base}.crt")).exists(),
        File::Kubeconfig(f) => env.path(&format!("/etc/kubernetes/{f}")).exists(),
    }
}

fn ca_of(env: &NodeEnv, base: &str) -> Result<CaPair, String> {
    let cert = read(env, &format!("{PKI}/{base}.crt"));
    let key = read(env, &format!("{PKI}/{base}.key"));
    match (cert, key) {
        (Some(cert_pem), Some(key_pem)) => Ok(CaPair { cert_pem, key_pem }),
        _ => Err(format!(
            "failed to load existing certificate authority {base}: couldn't load the private key file {PKI}/{base}.key: open {PKI}/{base}.key: no such file or directory"
        )),
    }
}

pub(super) fn renew_one(env: &NodeEnv, r: &Renewable) -> Result<(), String> {
    let ca = ca_of(env, r.ca)?;
    match r.file {
        File::Pki(base) => {
            let crt = format!("{PKI}/{base}.crt");
            let pem =
                read(env, &crt).ok_or_else(|| format!("open {crt}: no such file or directory"))?;
            let spec = leaf_of(&pem)?;
            let (cert, key) = ca.issue(&spec).map_err(|e| e.to_string())?;
            write(env, &format!("{PKI}/{base}.key"), &key, 0o600).map_err(|Fail(m)| m)?;
            write(env, &crt, &cert, 0o644).map_err(|Fail(m)| m)
        }
        File::Kubeconfig(f) => {
            let path = format!("/etc/kubernetes/{f}");
            let text = read(env, &path)
                .ok_or_else(|| format!("open {path}: no such file or directory"))?;
            let mut doc: serde_yaml::Value = serde_yaml::from_str(&text)
                .map_err(|e| format!("failed to load kubeconfig {path}: {e}"))?;
            let user = doc["users"][0]["user"]
                .as_mapping_mut()
                .ok_or_else(|| format!("{path} has no user with an embedded client certificate"))?;
            let pem = user
                .get("client-certificate-data")
                .and_then(|v| v.as_str())
                .and_then(unb64)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .ok_or_else(|| {
                    format!("{path} has no embedded client certificate (client-certificate-data)")
                })?;
            let spec = leaf_of(&pem)?;
            let (cert, key) = ca.issue(&spec).map_err(|e| e.to_string())?;
            user.insert("client-certificate-data".into(), b64(&cert).into());
            user.insert("client-key-data".into(), b64(&key).into());
            let out = serde_yaml::to_string(&doc).map_err(|e| e.to_string())?;
            write(env, &path, &out, 0o600).map_err(|Fail(m)| m)
        }
    }
}

/// The subject, SANs and key usages of an existing certificate: what
/// kubeadm's renewal keeps.
fn leaf_of(pem: &str) -> Result<Leaf, String> {
    let der = pki::cert_der(pem).map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let (cn, orgs) = pki::subject_of(&der).unwrap_or_default();
    let mut spec = Leaf {
        cn,
        orgs,
        ..Leaf::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => spec.dns.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => spec
                        .ips
                        .push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => spec
                        .ips
                        .push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        spec.server = eku.value.server_auth;
        spec.client = eku.value.client_auth;
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewed_leaf_keeps_subject_sans_and_usages() {
        let ca = CaPair::generate("etcd-ca").unwrap();
        let spec = Leaf {
            cn: "cp-1".into(),
            orgs: vec!["o1".into()],
            dns: vec!["cp-1".into(), "localhost".into()],
            ips: vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            server: true,
            client: true,
        };
        let (pem, _) = ca.issue(&spec).unwrap();
        let got = leaf_of(&pem).unwrap();
        assert_eq!(got.cn, "cp-1");
        assert_eq!(got.orgs, vec!["o1".to_string()]);
        assert_eq!(got.dns, spec.dns);
        assert_eq!(got.ips, spec.ips);
        assert!(got.server && got.client);
    }
}
