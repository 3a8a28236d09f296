//! A separate etcd cluster for the external etcd topology: real etcd 3.4
//! members with TLS on their own loopback addresses, their own CA, and the
//! client certificate kube-apiserver presents (`apiserver-etcd-client`)
//! written as files, as an operator's etcd team would hand them over.
//!
//! Layout under `dir`: `ca.crt`, `ca.key`, `apiserver-etcd-client.crt`,
//! `apiserver-etcd-client.key`, and per member `<name>/{server,peer}.{crt,key}`,
//! `<name>/data`, `<name>/etcd.log`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::kube::pki::{CaPair, Leaf};
use crate::kube::{write_file, ETCDCTL_BIN, ETCD_BIN};
use crate::proc::Proc;
use crate::world::{run, Out};

/// One member of the external cluster.
pub struct Member {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Running under this guard (tests); `None` before start or once
    /// detached (kh-sandbox).
    pub proc: Option<Proc>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("https://{}:2379", self.ip)
    }

    pub fn peer_url(&self) -> String {
        format!("https://{}:2380", self.ip)
    }
}

pub struct ExternalEtcd {
    pub dir: PathBuf,
    pub members: Vec<Member>,
}

impl ExternalEtcd {
    /// Writes the CA, the members' certificates and the apiserver's client
    /// certificate under `dir`; starts nothing.
    pub fn create(dir: &Path, ips: &[Ipv4Addr]) -> anyhow::Result<ExternalEtcd> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = CaPair::generate("kh-external-etcd-ca")?;
        write_file(&dir.join("ca.crt"), &ca.cert_pem, 0o644)?;
        write_file(&dir.join("ca.key"), &ca.key_pem, 0o600)?;
        let (cert, key) = ca.issue(&Leaf {
            cn: "kube-apiserver-etcd-client".into(),
            client: true,
            ..Leaf::default()
        })?;
        write_file(&dir.join("apiserver-etcd-client.crt"), cert, 0o644)?;
        write_file(&dir.join("apiserver-etcd-client.key"), key, 0o600)?;
        let mut members = vec![];
        for (i, ip) in ips.iter().enumerate() {
            let name = format!("etcd-{}", i + 1);
            let mdir = dir.join(&name);
            for kind in ["server", "peer"] {
                let (cert, key) = ca.issue(&Leaf {
                    cn: name.clone(),
                    dns: vec![name.clone(), "localhost".into()],
                    ips: vec![IpAddr::V4(*ip), IpAddr::V4(Ipv4Addr::LOCALHOST)],
                    server: true,
                    client: true,
                    ..Leaf::default()
                })?;
                write_file(&mdir.join(format!("{kind}.crt")), cert, 0o644)?;
                write_file(&mdir.join(format!("{kind}.key")), key, 0o600)?;
            }
            std::fs::create_dir_all(mdir.join("data"))?;
            members.push(Member {
                name,
                ip: *ip,
                proc: None,
            });
        }
        Ok(ExternalEtcd {
            dir: dir.to_path_buf(),
            members,
        })
    }

    /// The cluster's members as an existing directory has them (a restarted
    /// kh-sandbox); starts nothing.
    pub fn attach(dir: &Path, ips: &[Ipv4Addr]) -> ExternalEtcd {
        ExternalEtcd {
            dir: dir.to_path_buf(),
            members: ips
                .iter()
                .enumerate()
                .map(|(i, ip)| Member {
                    name: format!("etcd-{}", i + 1),
                    ip: *ip,
                    proc: None,
                })
                .collect(),
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("apiserver-etcd-client.crt")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.join("apiserver-etcd-client.key")
    }

    /// The client URLs, for the spec's `etcd.endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The `etcd` command line of member `i`.
    pub fn command(&self, i: usize) -> Command {
        let m = &self.members[i];
        let mdir = self.dir.join(&m.name);
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|o| format!("{}={}", o.name, o.peer_url()))
            .collect();
        let p = |f: &str| mdir.join(f).to_string_lossy().into_owned();
        let ca = self.ca_file().to_string_lossy().into_owned();
        let mut cmd = Command::new(ETCD_BIN);
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", p("data")))
            .arg(format!("--listen-client-urls={}", m.client_url()))
            .arg(format!("--advertise-client-urls={}", m.client_url()))
            .arg(format!("--listen-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=kh-external-etcd")
            .arg(format!("--cert-file={}", p("server.crt")))
            .arg(format!("--key-file={}", p("server.key")))
            .arg("--client-cert-auth=true")
            .arg(format!("--trusted-ca-file={ca}"))
            .arg(format!("--peer-cert-file={}", p("peer.crt")))
            .arg(format!("--peer-key-file={}", p("peer.key")))
            .arg("--peer-client-cert-auth=true")
            .arg(format!("--peer-trusted-ca-file={ca}"))
            .arg("--heartbeat-interval=100")
            .arg("--election-timeout=1000");
        cmd
    }

    /// The log of member `i`.
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.join(&self.members[i].name).join("etcd.log")
    }

    /// Starts every member under a guard and waits until all are healthy.
    pub fn start(&mut self) {
        for i in 0..self.members.len() {
            let p = Proc::spawn(
                &format!("external {}", self.members[i].name),
                self.command(i),
                &self.log(i),
            );
            self.members[i].proc = Some(p);
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    pub fn wait_healthy(&self, timeout: Duration) {
        crate::eventually("the external etcd cluster to be healthy", timeout, || {
            let out = self.etcdctl(&["endpoint", "health"]);
            if out.ok() {
                Ok(())
            } else {
                Err(format!("{}{}", out.stdout, out.stderr))
            }
        });
    }

    /// The real etcdctl against every member, with the apiserver's client
    /// certificate.
    pub fn etcdctl(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(ETCDCTL_BIN);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .arg(format!("--cacert={}", self.ca_file().display()))
            .arg(format!("--cert={}", self.cert_file().display()))
            .arg(format!("--key={}", self.key_file().display()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s")
            .args(args);
        run(cmd)
    }

    /// The spec's `etcd:` block, with the client files given relative to
    /// `spec_dir` when they lie under it.
    pub fn spec_block(&self, spec_dir: &Path) -> String {
        let rel = |p: PathBuf| match p.strip_prefix(spec_dir) {
            Ok(r) => format!("./{}", r.display()),
            Err(_) => p.display().to_string(),
        };
        let endpoints: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!(
            "  etcd:\n    topology: external\n    endpoints: [{}]\n    caFile: {}\n    certFile: {}\n    keyFile: {}\n",
            endpoints.join(", "),
            rel(self.ca_file()),
            rel(self.cert_file()),
            rel(self.key_file())
        )
    }
}
