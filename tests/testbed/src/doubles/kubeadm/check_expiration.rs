//! `kubeadm certs check-expiration [--config F] [--kubeconfig F]
//! [--cert-dir D]`: kubeadm's two tables, judged at the testbed clock.
//!
//! Like kubeadm it first reads the ClusterConfiguration from the cluster
//! (to know whether etcd is local), and falls back to the default (local
//! etcd) when the cluster does not answer, which is what an expired cluster
//! does.

use super::*;

/// A leaf certificate: kubeadm's name, the file (a PEM under the cert dir,
/// or a kubeconfig), its CA, and whether it exists only with local etcd.
struct Row {
    name: &'static str,
    file: Source,
    ca: &'static str,
    local_etcd_only: bool,
}

enum Source {
    /// Relative to the cert dir.
    Pem(&'static str),
    /// A kubeconfig under /etc/kubernetes.
    Kubeconfig(&'static str),
}

const ROWS: [Row; 11] = [
    Row {
        name: "admin.conf",
        file: Source::Kubeconfig("admin.conf"),
        ca: "ca",
        local_etcd_only: false,
    },
    Row {
        name: "apiserver",
        file: Source::Pem("apiserver.crt"),
        ca: "ca",
        local_etcd_only: false,
    },
    Row {
        name: "apiserver-etcd-client",
        file: Source::Pem("apiserver-etcd-client.crt"),
        ca: "etcd-ca",
        local_etcd_only: true,
    },
    Row {
        name: "apiserver-kubelet-client",
        file: Source::Pem("apiserver-kubelet-client.crt"),
        ca: "ca",
        local_etcd_only: false,
    },
    Row {
        name: "controller-manager.conf",
        file: Source::Kubeconfig("controller-manager.conf"),
        ca: "ca",
        local_etcd_only: false,
    },
    Row {
        name: "etcd-healthcheck-client",
        file: Source::Pem("etcd/healthcheck-client.crt"),
        ca: "etcd-ca",
        local_etcd_only: true,
    },
    Row {
        name: "etcd-peer",
        file: Source::Pem("etcd/peer.crt"),
        ca: "etcd-ca",
        local_etcd_only: true,
    },
    Row {
        name: "etcd-server",
        file: Source::Pem("etcd/server.crt"),
        ca: "etcd-ca",
        local_etcd_only: true,
    },
    Row {
        name: "front-proxy-client",
        file: Source::Pem("front-proxy-client.crt"),
        ca: "front-proxy-ca",
        local_etcd_only: false,
    },
    Row {
        name: "scheduler.conf",
        file: Source::Kubeconfig("scheduler.conf"),
        ca: "ca",
        local_etcd_only: false,
    },
    Row {
        name: "super-admin.conf",
        file: Source::Kubeconfig("super-admin.conf"),
        ca: "ca",
        local_etcd_only: false,
    },
];

/// (name, certificate and key relative to the cert dir, local etcd only).
const CAS: [(&str, &str, bool); 3] = [
    ("ca", "ca", false),
    ("etcd-ca", "etcd/ca", true),
    ("front-proxy-ca", "front-proxy-ca", false),
];

pub(super) fn check_expiration(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(
        argv,
        &[value("config"), value("kubeconfig"), value("cert-dir")],
    )?;
    let local_etcd = match p.get("config") {
        Some(file) => {
            let text = std::fs::read_to_string(host_file(env, file)).map_err(|_| {
                plain(format!("unable to read config from \"{file}\" : open {file}: no such file or directory"))
            })?;
            let init = config::parse_init(&text, &env.version()).map_err(plain)?;
            matches!(init.cluster.etcd, EtcdMode::Local { .. })
        }
        None => {
            println!("[check-expiration] Reading configuration from the cluster...");
            println!("[check-expiration] FYI: You can look at this config file with 'kubectl -n kube-system get cm kubeadm-config -o yaml'");
            match admin_client(env, p.get("kubeconfig"))
                .ok()
                .and_then(|c| load_cluster_config(&c).ok())
            {
                Some(cluster) => matches!(cluster.etcd, EtcdMode::Local { .. }),
                None => {
                    println!("[check-expiration] Error reading configuration from the Cluster. Falling back to default configuration");
                    true
                }
            }
        }
    };
    let cert_dir = p
        .get("cert-dir")
        .unwrap_or(PKI)
        .trim_end_matches('/')
        .to_string();
    let now = clock::unix_secs(env.now());
    let external = |ca_file: &str| !env.path(&format!("{cert_dir}/{ca_file}.key")).exists();
    let ca_of = |name: &str| {
        CAS.iter()
            .find(|c| c.0 == name)
            .map(|c| c.1)
            .unwrap_or("ca")
    };

    let mut leaves = vec![];
    for row in ROWS.iter().filter(|r| local_etcd || !r.local_etcd_only) {
        let (path, pem) = match row.file {
            Source::Pem(f) => {
                let path = format!("{cert_dir}/{f}");
                let pem = std::fs::read_to_string(env.path(&path)).ok();
                (path, pem)
            }
            Source::Kubeconfig(f) => {
                let path = format!("/etc/kubernetes/{f}");
                let pem = kubeconfig::load(env, &env.path(&path))
                    .ok()
                    .and_then(|t| t.creds.cert.map(|(c, _)| c));
                (path, pem)
            }
        };
        if row.name == "super-admin.conf" && !env.path(&path).exists() {
            // Only the first control plane has it.
            continue;
        }
        let validity = pem
            .as_deref()
            .and_then(|p| pki::cert_der(p).ok())
            .and_then(|d| pki::validity_of(&d));
        leaves.push(match validity {
            None => Line::Missing(row.name),
            Some((_, until)) => Line::Cert([
                row.name.to_string(),
                expires(until),
                residual(until - now),
                row.ca.to_string(),
                yes_no(external(ca_of(row.ca))),
            ]),
        });
    }
    let mut cas = vec![];
    for (name, file, _) in CAS.iter().filter(|c| local_etcd || !c.2) {
        let path = format!("{cert_dir}/{file}.crt");
        let validity = std::fs::read_to_string(env.path(&path))
            .ok()
            .and_then(|p| pki::cert_der(&p).ok())
            .and_then(|d| pki::validity_of(&d));
        cas.push(match validity {
            None => Line::Missing(name),
            Some((_, until)) => Line::Ca([
                name.to_string(),
                expires(until),
                residual(until - now),
                yes_no(external(file)),
            ]),
        });
    }
    println!();
    print!(
        "{}",
        tabwriter(
            &[
                "CERTIFICATE",
                "EXPIRES",
                "RESIDUAL TIME",
                "CERTIFICATE AUTHORITY",
                "EXTERNALLY MANAGED"
            ],
            &leaves
        )
    );
    println!();
    print!(
        "{}",
        tabwriter(
            &[
                "CERTIFICATE AUTHORITY",
                "EXPIRES",
                "RESIDUAL TIME",
                "EXTERNALLY MANAGED"
            ],
            &cas
        )
    );
    Ok(())
}

enum Line {
    Cert([String; 5]),
    Ca([String; 4]),
    /// kubeadm's `!MISSING! <name>` row.
    Missing(&'static str),
}

impl Line {
    fn cells(&self) -> Vec<String> {
        match self {
            Line::Cert(c) => c.to_vec(),
            Line::Ca(c) => c.to_vec(),
            Line::Missing(name) => vec![format!("!MISSING! {name}")],
        }
    }
}

/// Go's tabwriter as kubeadm sets it up (`tabwriter.NewWriter(out, 10, 4,
/// 3, ' ', 0)`): every column but the last is as wide as its widest cell
/// plus 3, at least 10. The last cell ends the line unpadded; kubeadm
/// prints a row's yes/no with `%-8v`.
fn tabwriter(header: &[&str], lines: &[Line]) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(lines.iter().map(Line::cells))
        .collect();
    let last = header.len() - 1;
    let mut width = vec![0usize; last];
    // A missing row's single cell is text without a tab: it widens nothing.
    for r in rows.iter().filter(|r| r.len() == header.len()) {
        for (i, c) in r.iter().take(last).enumerate() {
            width[i] = width[i].max((c.len() + 3).max(10));
        }
    }
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        if r.len() != header.len() {
            out.push_str(&r.concat());
        } else {
            for (i, c) in r.iter().enumerate() {
                if i == last {
                    if n == 0 {
                        out.push_str(c);
                    } else {
                        out.push_str(&format!("{c:<8}"));
                    }
                } else {
                    out.push_str(&format!("{c:<w$}", w = width[i]));
                }
            }
        }
        out.push('\n');
    }
    out
}

/// `Dec 30, 2020 23:36 UTC`: Go's "Jan 02, 2006 15:04 MST" in UTC.
fn expires(unix: i64) -> String {
    let t = clock::rfc3339(clock::from_unix_secs(unix));
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = t[5..7]
        .parse::<usize>()
        .ok()
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("???");
    format!("{month} {}, {} {} UTC", &t[8..10], &t[0..4], &t[11..16])
}

/// k8s.io/apimachinery's `duration.ShortHumanDuration`.
fn residual(secs: i64) -> String {
    if secs < -1 {
        "<invalid>".into()
    } else if secs < 0 {
        "0s".into()
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m", secs / 60)
    } else if secs < 86_400 {
        format!("{}h", secs / 3600)
    } else if secs < 365 * 86_400 {
        format!("{}d", secs / 86_400)
    } else {
        format!("{}y", secs / (365 * 86_400))
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_read_like_kubeadm_s() {
        assert_eq!(expires(1_609_371_360), "Dec 30, 2020 23:36 UTC");
        assert_eq!(residual(364 * 86_400 + 7), "364d");
        assert_eq!(residual(9 * 365 * 86_400 + 5), "9y");
        assert_eq!(residual(-86_400), "<invalid>");
        let t = tabwriter(
            &[
                "CERTIFICATE",
                "EXPIRES",
                "RESIDUAL TIME",
                "CERTIFICATE AUTHORITY",
                "EXTERNALLY MANAGED",
            ],
            &[
                Line::Cert([
                    "apiserver-kubelet-client".into(),
                    "Mar 15, 2023 01:59 UTC".into(),
                    "362d".into(),
                    "ca".into(),
                    "no".into(),
                ]),
                Line::Missing("etcd-peer"),
            ],
        );
        assert_eq!(
            t,
            "CERTIFICATE                EXPIRES                  RESIDUAL TIME   CERTIFICATE AUTHORITY   EXTERNALLY MANAGED\n\
             apiserver-kubelet-client   Mar 15, 2023 01:59 UTC   362d            ca                      no      \n\
             !MISSING! etcd-peer\n"
        );
    }
}
