//! Renewing a control plane's kubeadm certificates and restarting its
//! static pods so they use them.
//!
//! [`CertsRenew`] runs `kubeadm certs renew all` (or one `kubeadm certs
//! renew NAME` per name). kubeadm renews from the files on disk with the CAs
//! on disk; it reads the cluster's configuration first but falls back to its
//! defaults when the apiserver does not answer, so an expired cluster can be
//! renewed.
//!
//! [`RestartControlPlane`] restarts the static pods the way the kubeadm
//! documentation does: a manifest moved out of `/etc/kubernetes/manifests`
//! makes the kubelet stop the pod, and moved back makes it start it again.
//! One component at a time, etcd first: each must have stopped before its
//! manifest goes back, and be serving again (for etcd and the apiserver:
//! serving the certificate now on disk) before the next one goes.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::StepError;
use crate::host::{Cmd, Host, TcpProbe};
use crate::kube::apply::{apply_with, Done, KubeApplier};
use crate::kube::error::KubeError;
use crate::kube::MANIFESTS_DIR;
use crate::steps::{Plan, Step, StepKind, StepReport};

/// The certificates `kubeadm certs renew` takes by name.
pub const RENEWABLE_CERTS: [&str; 11] = [
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
];

/// Where [`RestartControlPlane`] keeps a manifest while its pod is stopped:
/// beside the manifests, on the same filesystem (a rename), in a directory
/// of kubeadm's own `tmp` that only kh uses.
pub const ASIDE_DIR: &str = "/etc/kubernetes/tmp/kh-restart-aside";

/// How long a component may take to stop, and to come back, by default.
pub const RESTART_WAIT: Duration = Duration::from_secs(120);

/// How long a component whose port kh cannot watch stays stopped: the
/// kubelet notices a removed static pod manifest at once (inotify), and
/// this leaves it time to stop the pod.
const UNWATCHED_PAUSE: Duration = Duration::from_secs(2);

/// `kubeadm certs renew` writes a few files; a minute is generous.
const RENEW_TIMEOUT: Duration = Duration::from_secs(60);

const RENEW_NEXT: &str = "Check that the CA files under /etc/kubernetes/pki (ca.key, front-proxy-ca.key, etcd/ca.key) are present on this node, then renew again";

/// `kubeadm certs renew all`, or the named certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertsRenew {
    names: Vec<String>,
}

impl CertsRenew {
    /// All certificates (an empty list) or the named ones; an unknown name
    /// is refused with the list of kubeadm's names.
    pub fn new(names: Vec<String>) -> Result<Self, KubeError> {
        for name in &names {
            if !RENEWABLE_CERTS.contains(&name.as_str()) {
                return Err(KubeError::Invalid {
                    what: "certificate name",
                    value: name.chars().take(64).collect(),
                    reason: format!(
                        "kubeadm renews only {} (or all)",
                        RENEWABLE_CERTS.join(", ")
                    ),
                });
            }
        }
        Ok(Self { names })
    }

    fn commands(&self) -> Vec<Cmd> {
        let renew = |what: &str| {
            Cmd::new("kubeadm")
                .args(["certs", "renew", what])
                .timeout(RENEW_TIMEOUT)
        };
        if self.names.is_empty() {
            vec![renew("all")]
        } else {
            self.names.iter().map(|n| renew(n)).collect()
        }
    }
}

impl Step for CertsRenew {
    fn kind(&self) -> StepKind {
        StepKind::CertsRenew
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::CertsRenew);
        if !host.exists("/etc/kubernetes/pki/ca.crt")? {
            plan.notes.push(
                "/etc/kubernetes/pki/ca.crt does not exist: this node is not a kubeadm control plane, and kubeadm will fail".to_string(),
            );
        }
        plan.commands = self.commands().iter().map(|c| c.argv().to_vec()).collect();
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(host, StepKind::CertsRenew, plan, |applier| {
            let cmds = self.commands();
            let refs: Vec<&Cmd> = cmds.iter().collect();
            applier.check_plan(plan, &[], &refs)?;
            let mut renewed = 0;
            let mut missing = Vec::new();
            for cmd in &cmds {
                let record = applier.run_checked(cmd, RENEW_NEXT)?;
                for line in record.stdout.lines() {
                    if line.ends_with(" renewed") {
                        renewed += 1;
                    } else if let Some(m) = line.strip_prefix("MISSING! ") {
                        missing.push(m.to_string());
                    }
                }
            }
            let mut message = format!("kubeadm renewed {renewed} certificates");
            if !missing.is_empty() {
                message.push_str(&format!("; not on this node: {}", missing.join("; ")));
            }
            Ok(Done::Changed(message))
        })
    }
}

/// A control-plane component as a static pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
}

impl Component {
    /// kubeadm's restart order: etcd first, the apiserver that needs it,
    /// then its clients.
    pub const ORDER: [Component; 4] = [
        Component::Etcd,
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
        }
    }

    fn manifest(self) -> String {
        format!("{MANIFESTS_DIR}/{}.yaml", self.name())
    }

    fn aside(self) -> String {
        format!("{ASIDE_DIR}/{}.yaml", self.name())
    }

    /// The certificate the component serves where kh watches it, which must
    /// be the one on disk once it is back. For etcd that is the peer
    /// listener: etcd serves its clients only once it has joined a quorum,
    /// which a member of an expired cluster cannot until a majority is
    /// renewed, but it serves its peers at once. controller-manager and
    /// scheduler serve a self-signed certificate of their own.
    fn serving_cert(self) -> Option<&'static str> {
        match self {
            Component::Etcd => Some("/etc/kubernetes/pki/etcd/peer.crt"),
            Component::KubeApiserver => Some("/etc/kubernetes/pki/apiserver.crt"),
            _ => None,
        }
    }

    /// Where the component serves, from its manifest's command line.
    fn address(self, manifest: &str) -> Result<String, String> {
        let args = command_of(manifest)?;
        let flag = |name: &str| {
            let prefix = format!("--{name}=");
            args.iter()
                .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
        };
        let join = |host: String, port: String| match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        match self {
            Component::Etcd => {
                let urls = flag("initial-advertise-peer-urls")
                    .or_else(|| flag("listen-peer-urls"))
                    .ok_or("the etcd manifest has no --initial-advertise-peer-urls")?;
                let first = urls.split(',').next().unwrap_or_default();
                first
                    .strip_prefix("https://")
                    .or_else(|| first.strip_prefix("http://"))
                    .map(|a| a.trim_end_matches('/').to_string())
                    .ok_or_else(|| format!("the peer URL {urls} is not a URL"))
            }
            Component::KubeApiserver => {
                let host = flag("advertise-address")
                    .ok_or("the kube-apiserver manifest has no --advertise-address")?;
                Ok(join(host, flag("secure-port").unwrap_or("6443".into())))
            }
            Component::KubeControllerManager => Ok(join(
                flag("bind-address").unwrap_or("127.0.0.1".into()),
                flag("secure-port").unwrap_or("10257".into()),
            )),
            Component::KubeScheduler => Ok(join(
                flag("bind-address").unwrap_or("127.0.0.1".into()),
                flag("secure-port").unwrap_or("10259".into()),
            )),
        }
    }
}

/// The first container's command and args of a static pod manifest.
fn command_of(manifest: &str) -> Result<Vec<String>, String> {
    let v: serde_yaml::Value =
        serde_yaml::from_str(manifest).map_err(|e| format!("not a YAML manifest: {e}"))?;
    let c = &v["spec"]["containers"][0];
    let mut out = Vec::new();
    for key in ["command", "args"] {
        if let Some(seq) = c[key].as_sequence() {
            out.extend(seq.iter().filter_map(|a| a.as_str().map(str::to_string)));
        }
    }
    if out.is_empty() {
        return Err("the manifest's first container has no command".into());
    }
    Ok(out)
}

/// Restarts the control-plane static pods one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartControlPlane {
    pub wait: Duration,
}

impl Default for RestartControlPlane {
    fn default() -> Self {
        Self { wait: RESTART_WAIT }
    }
}

/// Where a component's manifest is now.
enum Place {
    Installed,
    /// Left aside by an interrupted restart.
    Aside,
    Absent,
}

fn place(host: &Host, c: Component) -> Result<Place, StepError> {
    Ok(if host.exists(&c.manifest())? {
        Place::Installed
    } else if host.exists(&c.aside())? {
        Place::Aside
    } else {
        Place::Absent
    })
}

fn restart_error(c: Component, detail: String) -> KubeError {
    KubeError::Restart {
        component: c.name().to_string(),
        detail,
    }
}

impl RestartControlPlane {
    fn manifest_text(host: &Host, c: Component, path: &str) -> Result<String, KubeError> {
        host.read_to_string(path)?
            .ok_or_else(|| restart_error(c, format!("{path} disappeared")))
    }

    /// Restarts one component; returns what happened, for the report.
    fn restart(&self, host: &Host, c: Component, from_aside: bool) -> Result<String, KubeError> {
        let text = if from_aside {
            Self::manifest_text(host, c, &c.aside())?
        } else {
            Self::manifest_text(host, c, &c.manifest())?
        };
        let addr = c.address(&text).map_err(|e| restart_error(c, e))?;
        let watched = c.serving_cert().is_some() || (!from_aside && open(host, &addr));
        if !from_aside {
            host.create_dir_all(ASIDE_DIR)?;
            host.rename(&c.manifest(), &c.aside())?;
            if watched {
                let stopped = wait_until(self.wait, || !open(host, &addr));
                if !stopped {
                    // Put it back before failing: the step leaves no
                    // component without its manifest.
                    host.rename(&c.aside(), &c.manifest())?;
                    return Err(restart_error(
                        c,
                        format!(
                            "it still accepted connections on {addr} {}s after its manifest was moved out; the manifest is back in place. Check the kubelet on this node (is it running, does it watch {MANIFESTS_DIR}?)",
                            self.wait.as_secs()
                        ),
                    ));
                }
            } else {
                std::thread::sleep(UNWATCHED_PAUSE);
            }
        }
        host.rename(&c.aside(), &c.manifest())?;
        match c.serving_cert() {
            Some(cert) => {
                let want = first_cert_der(host, cert).map_err(|e| restart_error(c, e))?;
                let mut last = String::new();
                let back = wait_until(self.wait, || match served_cert(&addr) {
                    Ok(got) if got == want => true,
                    Ok(_) => {
                        last = format!("it serves a certificate other than {cert}");
                        false
                    }
                    Err(e) => {
                        last = e;
                        false
                    }
                });
                if !back {
                    return Err(restart_error(
                        c,
                        format!(
                            "it did not come back serving {cert} on {addr} within {}s ({last}); see its static pod log and the kubelet's",
                            self.wait.as_secs()
                        ),
                    ));
                }
                Ok(format!("{}: restarted, serves the renewed {cert} on {addr}", c.name()))
            }
            None if watched => {
                if !wait_until(self.wait, || open(host, &addr)) {
                    return Err(restart_error(
                        c,
                        format!(
                            "it did not listen on {addr} again within {}s; see its static pod log and the kubelet's",
                            self.wait.as_secs()
                        ),
                    ));
                }
                Ok(format!("{}: restarted, listening on {addr} again", c.name()))
            }
            None => Ok(format!(
                "{}: manifest moved out and back; nothing listened on {addr} before, so kh cannot confirm that it restarted",
                c.name()
            )),
        }
    }
}

impl Step for RestartControlPlane {
    fn kind(&self) -> StepKind {
        StepKind::RestartControlPlane
    }

    fn plan(&self, host: &Host) -> Result<Plan, StepError> {
        let mut plan = Plan::new(StepKind::RestartControlPlane);
        for c in Component::ORDER {
            let note = match place(host, c)? {
                Place::Installed => format!(
                    "{}: move {} to {ASIDE_DIR}, wait until it has stopped, move it back, wait until it serves again{}",
                    c.name(),
                    c.manifest(),
                    c.serving_cert()
                        .map(|p| format!(" with {p}"))
                        .unwrap_or_default()
                ),
                Place::Aside => format!(
                    "{}: move {} back (left aside by an interrupted restart), wait until it serves again",
                    c.name(),
                    c.aside()
                ),
                Place::Absent => continue,
            };
            plan.notes.push(note);
        }
        if plan.notes.is_empty() {
            plan.notes
                .push(format!("no control-plane manifest in {MANIFESTS_DIR}"));
        }
        Ok(plan)
    }

    fn apply(&self, host: &Host, plan: &Plan) -> StepReport {
        apply_with(
            host,
            StepKind::RestartControlPlane,
            plan,
            |applier: &mut KubeApplier<'_>| {
                applier.check_plan(plan, &[], &[])?;
                let mut done = Vec::new();
                for c in Component::ORDER {
                    let from_aside = match place(applier.host(), c)? {
                        Place::Installed => false,
                        Place::Aside => true,
                        Place::Absent => continue,
                    };
                    done.push(self.restart(applier.host(), c, from_aside)?);
                }
                if done.is_empty() {
                    return Err(KubeError::MissingFile {
                        path: format!("{MANIFESTS_DIR}/kube-apiserver.yaml"),
                        next: "this node has no control-plane static pods to restart".into(),
                    });
                }
                Ok(Done::Changed(done.join("\n")))
            },
        )
    }
}

fn open(host: &Host, addr: &str) -> bool {
    host.tcp_probe(addr, Duration::from_secs(1)) == TcpProbe::Open
}

/// Polls `f` every 200 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn first_cert_der(host: &Host, path: &str) -> Result<Vec<u8>, String> {
    let pem = host
        .read_to_string(path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{path} does not exist"))?;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| format!("{path} holds no certificate"))?
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| format!("{path} is not valid PEM: {e}"))
}

/// Records the server's leaf certificate and ends the handshake there: the
/// certificate is only compared with the file on disk, nothing is sent.
#[derive(Debug, Default)]
struct Recorder(Mutex<Option<Vec<u8>>>);

const RECORDED: &str = "kh: server certificate recorded";

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(end_entity.as_ref().to_vec());
        }
        Err(rustls::Error::General(RECORDED.into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(RECORDED.into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(RECORDED.into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The DER of the leaf certificate `addr` (`ip:port`) serves.
pub fn served_cert(addr: &str) -> Result<Vec<u8>, String> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an address:port"))?;
    let recorder = Arc::new(Recorder::default());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = ServerName::IpAddress(sock.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| format!("cannot start TLS with {addr}: {e}"))?;
    let mut tcp = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| tcp.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("cannot set timeouts on {addr}: {e}"))?;
    let outcome = drive(&mut conn, &mut tcp);
    let recorded = recorder.0.lock().ok().and_then(|mut s| s.take());
    match (recorded, outcome) {
        (Some(der), _) => Ok(der),
        (None, Err(e)) => Err(format!("TLS with {addr} failed: {e}")),
        (None, Ok(())) => Err(format!("{addr} presented no certificate")),
    }
}

/// Runs the handshake until it ends (here, with the recorder's refusal).
fn drive(conn: &mut rustls::ClientConnection, tcp: &mut TcpStream) -> Result<(), String> {
    while conn.is_handshaking() {
        conn.complete_io(tcp).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_certificate_names_are_refused_and_all_is_one_command() {
        let err = CertsRenew::new(vec!["apiserver".into(), "etcd-bogus".into()]).unwrap_err();
        assert!(err.to_string().contains("etcd-bogus"), "{err}");
        assert!(err.to_string().contains("etcd-server"), "{err}");
        let all = CertsRenew::new(vec![]).unwrap();
        let argv: Vec<Vec<String>> = all.commands().iter().map(|c| c.argv().to_vec()).collect();
        assert_eq!(argv, vec![vec!["kubeadm", "certs", "renew", "all"]]);
        let two = CertsRenew::new(vec!["apiserver".into(), "etcd-server".into()]).unwrap();
        assert_eq!(two.commands().len(), 2);
        assert_eq!(two.commands()[1].argv()[3], "etcd-server");
    }

    #[test]
    fn addresses_come_from_the_manifests() {
        let m = |cmd: &[&str]| {
            let lines: Vec<String> = cmd.iter().map(|c| format!("    - {c}")).collect();
            format!(
                "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: x\n    command:\n{}\n",
                lines.join("\n")
            )
        };
        assert_eq!(
            Component::Etcd
                .address(&m(&[
                    "etcd",
                    "--advertise-client-urls=https://10.0.0.1:2379",
                    "--initial-advertise-peer-urls=https://10.0.0.1:2380"
                ]))
                .unwrap(),
            "10.0.0.1:2380"
        );
        assert_eq!(
            Component::KubeApiserver
                .address(&m(&[
                    "kube-apiserver",
                    "--advertise-address=10.0.0.1",
                    "--secure-port=7443"
                ]))
                .unwrap(),
            "10.0.0.1:7443"
        );
        assert_eq!(
            Component::KubeScheduler
                .address(&m(&["kube-scheduler", "--bind-address=127.0.0.1"]))
                .unwrap(),
            "127.0.0.1:10259"
        );
        assert!(Component::KubeApiserver
            .address(&m(&["kube-apiserver"]))
            .is_err());
    }

    #[test]
    fn a_manifest_left_aside_by_an_interrupted_restart_is_moved_back() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), vec![]);
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: s\n    command:\n    - kube-scheduler\n    - --bind-address=127.0.0.1\n    - --secure-port={port}\n"
        );
        host.create_dir_all(ASIDE_DIR).unwrap();
        host.create_dir_all(MANIFESTS_DIR).unwrap();
        host.write_atomic(
            &Component::KubeScheduler.aside(),
            manifest.as_bytes(),
            0o600,
        )
        .unwrap();
        let step = RestartControlPlane {
            wait: Duration::from_secs(1),
        };
        let plan = step.plan(&host).unwrap();
        assert_eq!(plan.notes.len(), 1, "{:?}", plan.notes);
        assert!(plan.notes[0].contains("interrupted"), "{:?}", plan.notes);
        let report = step.apply(&host, &plan);
        assert_eq!(report.outcome, crate::steps::Outcome::Changed, "{report:?}");
        assert!(
            report.message.contains("cannot confirm"),
            "{}",
            report.message
        );
        assert!(host.exists(&Component::KubeScheduler.manifest()).unwrap());
        assert!(!host.exists(&Component::KubeScheduler.aside()).unwrap());
        // A second run finds it in place and restarts it again.
        let again = step.plan(&host).unwrap();
        assert!(
            again.notes[0].starts_with("kube-scheduler: move"),
            "{:?}",
            again.notes
        );
    }
}
