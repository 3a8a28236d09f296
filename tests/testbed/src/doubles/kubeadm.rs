//! The kubeadm double. It keeps kubeadm's command line, phase order, file
//! layout under the host root, progress lines and error texts for the subset
//! in tests/testbed/CONTRACT.md. Cluster state goes through the apiserver
//! double (and so into the real etcd cluster); etcd membership goes through
//! the real etcdctl, as kubeadm's Go etcd client would.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::args::{self, boolean, short, value, Flag, Parsed};
use super::client::{self, secret_text};
use crate::clock;
use crate::kube::config::{self, Cluster, EtcdMode, Init, Join, JoinCp, NodeReg, Taint, TokenSpec};
use crate::kube::etcdctl::Etcdctl;
use crate::kube::http::{Client, Credentials, Trust};
use crate::kube::kubeconfig::{self, User};
use crate::kube::manifest::{self, ApiServerPod, EtcdPod, MANIFESTS_DIR};
use crate::kube::pki::{self, CaPair, Leaf};
use crate::kube::{b64, write_file, NodeEnv};

const PKI: &str = "/etc/kubernetes/pki";
const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
const KUBELET_CLIENT_PEM: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";
const CERTS_SECRET: &str = "kubeadm-certs";
const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
const STACK_HINT: &str = "To see the stack trace of this error execute with --v=5 or higher";
const WAIT_LIMIT: Duration = Duration::from_secs(60);
/// kubeadm's default timeout for an etcd learner to be promoted.
const PROMOTE_LIMIT: Duration = Duration::from_secs(40);
/// How long a member add is retried while etcd calls the cluster unhealthy.
const ADD_MEMBER_RETRY: Duration = Duration::from_secs(15);

/// A failure: the text kubeadm prints on stderr before the stack-trace hint.
struct Fail(String);

fn phase(name: &str, msg: impl std::fmt::Display) -> Fail {
    Fail(format!("error execution phase {name}: {msg}"))
}

fn plain(msg: impl std::fmt::Display) -> Fail {
    Fail(msg.to_string())
}

type R<T> = Result<T, Fail>;

const VERBOSITY: Flag = short(value("v"), 'v');

pub fn main(env: &NodeEnv, argv: &[String]) -> i32 {
    let r = match argv.first().map(String::as_str) {
        Some("version") => version(env, &argv[1..]),
        Some("init") if argv.get(1).map(String::as_str) == Some("phase") => {
            init_phase(env, &argv[2..])
        }
        Some("init") => init(env, &argv[1..]),
        Some("join") => join(env, &argv[1..]),
        Some("token") => token(env, &argv[1..]),
        Some("certs") => certs_cmd(&argv[1..]),
        Some("reset") => reset(env, &argv[1..]),
        Some(other) => Err(plain(format!(
            "unknown command \"{other}\" for \"kubeadm\"\nRun 'kubeadm --help' for usage."
        ))),
        None => Err(plain(
            "the kh testbed kubeadm double needs a command; see tests/testbed/CONTRACT.md",
        )),
    };
    match r {
        Ok(()) => 0,
        Err(Fail(msg)) => {
            eprintln!("{msg}\n{STACK_HINT}");
            1
        }
    }
}

fn parse(argv: &[String], flags: &[Flag]) -> R<Parsed> {
    let mut all = flags.to_vec();
    all.push(VERBOSITY);
    args::parse(argv, &all).map_err(plain)
}

// ---------------------------------------------------------------------------
// version

fn version(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, &[short(value("output"), 'o')])?;
    let v = env.version();
    let (major, minor) = crate::kube::minor_of(&v).unwrap_or((1, 0));
    let info = json!({
        "major": major.to_string(),
        "minor": minor.to_string(),
        "gitVersion": v,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T17:59:15Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": "linux/amd64",
    });
    match p.get("output") {
        Some("short") => println!("{v}"),
        Some("json") => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"clientVersion": info})).unwrap_or_default()
        ),
        Some("yaml") => print!(
            "{}",
            serde_yaml::to_string(&json!({"clientVersion": info})).unwrap_or_default()
        ),
        None | Some("") => println!(
            "kubeadm version: &version.Info{{Major:\"{major}\", Minor:\"{minor}\", GitVersion:\"{v}\", GitCommit:\"0000000000000000000000000000000000000000\", GitTreeState:\"clean\", BuildDate:\"2024-12-11T17:59:15Z\", GoVersion:\"go1.23.3\", Compiler:\"gc\", Platform:\"linux/amd64\"}}"
        ),
        Some(o) => return Err(plain(format!("invalid output format: {o}"))),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// shared helpers

fn read(env: &NodeEnv, abs: &str) -> Option<String> {
    std::fs::read_to_string(env.path(abs)).ok()
}

fn write(env: &NodeEnv, abs: &str, contents: &str, mode: u32) -> R<()> {
    write_file(&env.path(abs), contents, mode)
        .map_err(|e| plain(format!("failed to write {abs}: {e}")))
}

fn node_ip(env: &NodeEnv) -> R<Ipv4Addr> {
    env.ip().ok_or_else(|| {
        plain("unable to select an IP from default routes: the testbed node has no ip file")
    })
}

fn random_token() -> String {
    format!(
        "{}.{}",
        kh::token::random_string(6),
        kh::token::random_string(16)
    )
}

fn random_key() -> String {
    hex::encode(kh::token::random_bytes::<32>())
}

/// Polls `f` every 100 ms until it succeeds or `limit` passes.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= limit => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.6}s", d.as_secs_f64())
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

/// The first address of the service subnet: the `kubernetes` Service IP.
fn first_service_ip(subnet: &str) -> Option<IpAddr> {
    let (addr, _) = subnet.split(',').next()?.split_once('/')?;
    let ip: Ipv4Addr = addr.parse().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(u32::from(ip) + 1)))
}

/// `host:port` -> `https://host:port`.
fn https(endpoint: &str) -> String {
    format!("https://{endpoint}")
}

fn admin_client(env: &NodeEnv, kubeconfig: Option<&str>) -> R<Client> {
    let file = kubeconfig.unwrap_or(ADMIN_CONF);
    let path = host_file(env, file);
    let target = kubeconfig::load(env, &path).map_err(|_| {
        plain(format!(
            "failed to load admin kubeconfig: open {file}: no such file or directory"
        ))
    })?;
    target.client().map_err(|e| plain(e.to_string()))
}

/// A path given on the command line: a host path, resolved under the root
/// unless it already points into it.
fn host_file(env: &NodeEnv, file: &str) -> PathBuf {
    if Path::new(file).starts_with(&env.root) {
        PathBuf::from(file)
    } else {
        env.path(file)
    }
}

struct Preflight {
    errors: Vec<(String, String)>,
}

impl Preflight {
    fn new() -> Preflight {
        Preflight { errors: vec![] }
    }

    fn file_available(&mut self, env: &NodeEnv, abs: &str) {
        if env.path(abs).exists() {
            let name = format!("FileAvailable-{}", abs.replace('/', "-"));
            self.errors.push((name, format!("{abs} already exists")));
        }
    }

    fn dir_available(&mut self, env: &NodeEnv, abs: &str) {
        let p = env.path(abs);
        let nonempty = std::fs::read_dir(&p)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if nonempty {
            let name = format!("DirAvailable-{}", abs.replace('/', "-"));
            self.errors.push((name, format!("{abs} is not empty")));
        }
    }

    fn port(&mut self, ip: Ipv4Addr, port: u16) {
        if std::net::TcpListener::bind((ip, port)).is_err() {
            self.errors
                .push((format!("Port-{port}"), format!("Port {port} is in use")));
        }
    }

    /// Prints ignored errors as warnings; fails with the rest.
    fn finish(self, ignore: &[String]) -> R<()> {
        let all = ignore.iter().any(|i| i.eq_ignore_ascii_case("all"));
        let mut fatal = vec![];
        for (name, msg) in self.errors {
            if all || ignore.iter().any(|i| i.eq_ignore_ascii_case(&name)) {
                println!("\t[WARNING {name}]: {msg}");
            } else {
                fatal.push(format!("\t[ERROR {name}]: {msg}"));
            }
        }
        if fatal.is_empty() {
            return Ok(());
        }
        Err(phase(
            "preflight",
            format!(
                "[preflight] Some fatal errors occurred:\n{}\n[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`",
                fatal.join("\n")
            ),
        ))
    }
}

fn manifests_preflight(env: &NodeEnv, pf: &mut Preflight, local_etcd: bool) {
    for m in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "etcd",
    ] {
        if m == "etcd" && !local_etcd {
            continue;
        }
        pf.file_available(env, &format!("{MANIFESTS_DIR}/{m}.yaml"));
    }
}

// ---------------------------------------------------------------------------
// certificates and kubeconfigs

/// The shared CA set: files kubeadm copies between control planes.
fn shared_files(cluster: &Cluster) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("ca.crt", format!("{PKI}/ca.crt")),
        ("ca.key", format!("{PKI}/ca.key")),
        ("sa.key", format!("{PKI}/sa.key")),
        ("sa.pub", format!("{PKI}/sa.pub")),
        ("front-proxy-ca.crt", format!("{PKI}/front-proxy-ca.crt")),
        ("front-proxy-ca.key", format!("{PKI}/front-proxy-ca.key")),
    ];
    match &cluster.etcd {
        EtcdMode::Local { .. } => {
            v.push(("etcd-ca.crt", format!("{PKI}/etcd/ca.crt")));
            v.push(("etcd-ca.key", format!("{PKI}/etcd/ca.key")));
        }
        EtcdMode::External {
            ca_file,
            cert_file,
            key_file,
            ..
        } => {
            v.push(("external-etcd-ca.crt", ca_file.clone()));
            v.push(("external-etcd.crt", cert_file.clone()));
            v.push(("external-etcd.key", key_file.clone()));
        }
    }
    v
}

fn load_or_generate_ca(env: &NodeEnv, base: &str, cn: &str, generate: bool) -> R<CaPair> {
    let cert = read(env, &format!("{PKI}/{base}.crt"));
    let key = read(env, &format!("{PKI}/{base}.key"));
    match (cert, key) {
        (Some(cert_pem), Some(key_pem)) => {
            println!("[certs] Using existing {base} certificate authority");
            Ok(CaPair { cert_pem, key_pem })
        }
        (Some(_), None) if !generate => Err(plain(format!(
            "failure loading {base} certificate authority: couldn't load the private key file {PKI}/{base}.key: open {PKI}/{base}.key: no such file or directory"
        ))),
        (Some(_), None) => Err(phase(
            "certs/ca",
            format!("failure loading {base} certificate authority: couldn't load the private key file {PKI}/{base}.key: open {PKI}/{base}.key: no such file or directory"),
        )),
        (None, _) if !generate => Err(plain(format!(
            "couldn't load the certificate file {PKI}/{base}.crt: open {PKI}/{base}.crt: no such file or directory"
        ))),
        (None, _) => {
            println!("[certs] Generating \"{base}\" certificate and key");
            let ca = CaPair::generate(cn).map_err(|e| plain(e.to_string()))?;
            write(env, &format!("{PKI}/{base}.crt"), &ca.cert_pem, 0o644)?;
            write(env, &format!("{PKI}/{base}.key"), &ca.key_pem, 0o600)?;
            Ok(ca)
        }
    }
}

fn leaf(env: &NodeEnv, ca: &CaPair, base: &str, spec: &Leaf) -> R<()> {
    let crt = format!("{PKI}/{base}.crt");
    if env.path(&crt).exists() && env.path(&format!("{PKI}/{base}.key")).exists() {
        println!("[certs] Using existing {base} certificate and key on disk");
        return Ok(());
    }
    println!("[certs] Generating \"{base}\" certificate and key");
    if spec.server {
        let ips: Vec<String> = spec.ips.iter().map(|i| i.to_string()).collect();
        println!(
            "[certs] {base} serving cert is signed for DNS names [{}] and IPs [{}]",
            spec.dns.join(" "),
            ips.join(" ")
        );
    }
    let (c, k) = ca.issue(spec).map_err(|e| plain(e.to_string()))?;
    write(env, &crt, &c, 0o644)?;
    write(env, &format!("{PKI}/{base}.key"), &k, 0o600)
}

fn split_sans(sans: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec![];
    let mut ips = vec![];
    for s in sans {
        match s.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(s.clone()),
        }
    }
    (dns, ips)
}

/// kubeadm's certs phase. `generate_cas`: init may create CAs; a joining
/// control plane must already have them.
fn certs_phase(
    env: &NodeEnv,
    cluster: &Cluster,
    name: &str,
    ip: IpAddr,
    generate_cas: bool,
) -> R<()> {
    println!("[certs] Using certificateDir folder \"{PKI}\"");
    let ca = load_or_generate_ca(env, "ca", "kubernetes", generate_cas)?;
    let mut dns: Vec<String> = vec![
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{}", cluster.dns_domain),
        name.to_string(),
    ];
    let mut ips: Vec<IpAddr> = first_service_ip(&cluster.service_subnet)
        .into_iter()
        .collect();
    ips.push(ip);
    if let Some(ep) = &cluster.control_plane_endpoint {
        let host = ep.rsplit_once(':').map(|(h, _)| h).unwrap_or(ep);
        match host.parse::<IpAddr>() {
            Ok(a) => ips.push(a),
            Err(_) => dns.push(host.to_string()),
        }
    }
    let (sdns, sips) = split_sans(&cluster.cert_sans);
    dns.extend(sdns);
    ips.extend(sips);
    dns.dedup();
    ips.sort();
    ips.dedup();
    leaf(
        env,
        &ca,
        "apiserver",
        &Leaf {
            cn: "kube-apiserver".into(),
            dns,
            ips,
            server: true,
            ..Leaf::default()
        },
    )?;
    leaf(
        env,
        &ca,
        "apiserver-kubelet-client",
        &Leaf {
            cn: "kube-apiserver-kubelet-client".into(),
            orgs: vec!["kubeadm:cluster-admins".into()],
            client: true,
            ..Leaf::default()
        },
    )?;
    let fp = load_or_generate_ca(env, "front-proxy-ca", "front-proxy-ca", generate_cas)?;
    leaf(
        env,
        &fp,
        "front-proxy-client",
        &Leaf {
            cn: "front-proxy-client".into(),
            client: true,
            ..Leaf::default()
        },
    )?;
    if let EtcdMode::Local {
        server_cert_sans,
        peer_cert_sans,
        ..
    } = &cluster.etcd
    {
        let eca = load_or_generate_ca(env, "etcd/ca", "etcd-ca", generate_cas)?;
        let base_ips: Vec<IpAddr> = vec![
            ip,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            "::1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        for (base, sans) in [
            ("etcd/server", server_cert_sans),
            ("etcd/peer", peer_cert_sans),
        ] {
            let (d, i) = split_sans(sans);
            let mut dns = vec![name.to_string(), "localhost".to_string()];
            dns.extend(d);
            let mut ips = base_ips.clone();
            ips.extend(i);
            leaf(
                env,
                &eca,
                base,
                &Leaf {
                    cn: name.to_string(),
                    dns,
                    ips,
                    server: true,
                    client: true,
                    ..Leaf::default()
                },
            )?;
        }
        leaf(
            env,
            &eca,
            "etcd/healthcheck-client",
            &Leaf {
                cn: "kube-etcd-healthcheck-client".into(),
                client: true,
                ..Leaf::default()
            },
        )?;
        leaf(
            env,
            &eca,
            "apiserver-etcd-client",
            &Leaf {
                cn: "kube-apiserver-etcd-client".into(),
                client: true,
                ..Leaf::default()
            },
        )?;
    }
    if env.path(&format!("{PKI}/sa.key")).exists() && env.path(&format!("{PKI}/sa.pub")).exists() {
        println!("[certs] Using the existing \"sa\" key");
    } else if generate_cas {
        println!("[certs] Generating \"sa\" key and public key");
        let (k, p) = pki::sa_key_pair().map_err(|e| plain(e.to_string()))?;
        write(env, &format!("{PKI}/sa.key"), &k, 0o600)?;
        write(env, &format!("{PKI}/sa.pub"), &p, 0o644)?;
    } else {
        return Err(plain(format!(
            "failure loading key for service account: couldn't load the private key file {PKI}/sa.key: open {PKI}/sa.key: no such file or directory"
        )));
    }
    Ok(())
}

fn ca_pair(env: &NodeEnv) -> R<CaPair> {
    match (
        read(env, &format!("{PKI}/ca.crt")),
        read(env, &format!("{PKI}/ca.key")),
    ) {
        (Some(cert_pem), Some(key_pem)) => Ok(CaPair { cert_pem, key_pem }),
        _ => Err(plain(format!(
            "couldn't load the CA certificate and key from {PKI}/ca.crt and {PKI}/ca.key"
        ))),
    }
}

fn write_kubeconfig(
    env: &NodeEnv,
    ca: &CaPair,
    cluster_name: &str,
    file: &str,
    server: &str,
    user: &str,
    orgs: &[&str],
) -> R<()> {
    println!("[kubeconfig] Writing \"{file}\" kubeconfig file");
    let (cert, key) = ca
        .issue(&Leaf {
            cn: user.to_string(),
            orgs: orgs.iter().map(|s| s.to_string()).collect(),
            client: true,
            ..Leaf::default()
        })
        .map_err(|e| plain(e.to_string()))?;
    let text = kubeconfig::render(
        cluster_name,
        server,
        &ca.cert_pem,
        user,
        &User::CertData { cert, key },
    );
    write(env, &format!("/etc/kubernetes/{file}"), &text, 0o600)
}

fn kubeconfig_phase(
    env: &NodeEnv,
    cluster: &Cluster,
    name: &str,
    endpoint: &str,
    local: &str,
    init: bool,
) -> R<()> {
    let ca = ca_pair(env)?;
    println!("[kubeconfig] Using kubeconfig folder \"/etc/kubernetes\"");
    let server = https(endpoint);
    let cn = &cluster.cluster_name;
    write_kubeconfig(
        env,
        &ca,
        cn,
        "admin.conf",
        &server,
        "kubernetes-admin",
        &["kubeadm:cluster-admins"],
    )?;
    if init {
        write_kubeconfig(
            env,
            &ca,
            cn,
            "super-admin.conf",
            &server,
            "kubernetes-super-admin",
            &["system:masters"],
        )?;
        let node_user = format!("system:node:{name}");
        write_kubeconfig(
            env,
            &ca,
            cn,
            "kubelet.conf",
            &server,
            &node_user,
            &["system:nodes"],
        )?;
    }
    let local = https(local);
    write_kubeconfig(
        env,
        &ca,
        cn,
        "controller-manager.conf",
        &local,
        "system:kube-controller-manager",
        &[],
    )?;
    write_kubeconfig(
        env,
        &ca,
        cn,
        "scheduler.conf",
        &local,
        "system:kube-scheduler",
        &[],
    )
}

fn control_plane_manifests(env: &NodeEnv, cluster: &Cluster, ip: IpAddr, bind_port: u16) -> R<()> {
    println!("[control-plane] Using manifest folder \"{MANIFESTS_DIR}\"");
    let (servers, ca, cert, key) = match &cluster.etcd {
        EtcdMode::Local { .. } => (
            vec![format!("https://{ip}:2379")],
            format!("{PKI}/etcd/ca.crt"),
            format!("{PKI}/apiserver-etcd-client.crt"),
            format!("{PKI}/apiserver-etcd-client.key"),
        ),
        EtcdMode::External {
            endpoints,
            ca_file,
            cert_file,
            key_file,
        } => (
            endpoints.clone(),
            ca_file.clone(),
            cert_file.clone(),
            key_file.clone(),
        ),
    };
    println!("[control-plane] Creating static Pod manifest for \"kube-apiserver\"");
    let api = manifest::apiserver(&ApiServerPod {
        ip: ip.to_string(),
        bind_port,
        etcd_servers: servers,
        etcd_ca: ca,
        etcd_cert: cert,
        etcd_key: key,
        service_subnet: cluster.service_subnet.clone(),
        dns_domain: cluster.dns_domain.clone(),
        version: cluster.kubernetes_version.clone(),
        extra_args: cluster.api_server_extra_args.clone(),
    });
    write(
        env,
        &format!("{MANIFESTS_DIR}/kube-apiserver.yaml"),
        &api,
        0o600,
    )?;
    for (c, conf) in [
        (
            "kube-controller-manager",
            "/etc/kubernetes/controller-manager.conf",
        ),
        ("kube-scheduler", "/etc/kubernetes/scheduler.conf"),
    ] {
        println!("[control-plane] Creating static Pod manifest for \"{c}\"");
        let m = manifest::other_component(c, &cluster.kubernetes_version, conf);
        write(env, &format!("{MANIFESTS_DIR}/{c}.yaml"), &m, 0o600)?;
    }
    Ok(())
}

fn cri_socket(node: &NodeReg) -> String {
    node.cri_socket
        .clone()
        .unwrap_or_else(|| "unix:///var/run/containerd/containerd.sock".into())
}

/// The kubelet-start phase's files: config.yaml and kubeadm-flags.env with
/// `nodeRegistration.kubeletExtraArgs`.
fn kubelet_files(env: &NodeEnv, node: &NodeReg, ip: IpAddr, taints: &[Taint]) -> R<()> {
    println!(
        "[kubelet-start] Writing kubelet configuration to file \"/var/lib/kubelet/config.yaml\""
    );
    write(
        env,
        "/var/lib/kubelet/config.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\nclusterDNS:\n- 10.96.0.10\nclusterDomain: cluster.local\nrotateCertificates: true\nstaticPodPath: /etc/kubernetes/manifests\n",
        0o644,
    )?;
    let mut flags = vec![
        format!("--container-runtime-endpoint={}", cri_socket(node)),
        format!("--node-ip={ip}"),
        "--pod-infra-container-image=registry.k8s.io/pause:3.10".to_string(),
    ];
    if !taints.is_empty() {
        let t: Vec<String> = taints
            .iter()
            .map(|t| match &t.value {
                Some(v) => format!("{}={}:{}", t.key, v, t.effect),
                None => format!("{}:{}", t.key, t.effect),
            })
            .collect();
        flags.push(format!("--register-with-taints={}", t.join(",")));
    }
    for (k, v) in &node.kubelet_extra_args {
        flags.retain(|f| !f.starts_with(&format!("--{k}=")));
        flags.push(format!("--{k}={v}"));
    }
    println!("[kubelet-start] Writing kubelet environment file with flags to file \"/var/lib/kubelet/kubeadm-flags.env\"");
    write(
        env,
        "/var/lib/kubelet/kubeadm-flags.env",
        &format!("KUBELET_KUBEADM_ARGS=\"{}\"\n", flags.join(" ")),
        0o644,
    )?;
    println!("[kubelet-start] Starting the kubelet");
    Ok(())
}

/// kubeadm's kubelet-check, against the kubelet double.
fn kubelet_check(env: &NodeEnv, phase_name: &str) -> R<()> {
    println!("[kubelet-check] Waiting for a healthy kubelet at http://127.0.0.1:10248/healthz. This can take up to 4m0s");
    let start = Instant::now();
    wait_for(Duration::from_secs(10), || {
        if env.kubelet_running() {
            Ok(())
        } else {
            Err("dial tcp 127.0.0.1:10248: connect: connection refused".to_string())
        }
    })
    .map_err(|e| {
        phase(
            phase_name,
            format!("The HTTP call equal to 'curl -sSL http://127.0.0.1:10248/healthz' returned error: Get \"http://127.0.0.1:10248/healthz\": {e}\n\nUnfortunately, an error has occurred, likely caused by:\n\t- The kubelet is not running\n\t- The kubelet is unhealthy due to a misconfiguration of the node in some way (required cgroups disabled)"),
        )
    })?;
    println!(
        "[kubelet-check] The kubelet is healthy after {}",
        secs(start.elapsed())
    );
    Ok(())
}

fn taints_for(node: &NodeReg, control_plane: bool) -> Vec<Taint> {
    match &node.taints {
        Some(t) => t.clone(),
        None if control_plane => vec![Taint {
            key: CONTROL_PLANE_LABEL.into(),
            value: None,
            effect: "NoSchedule".into(),
        }],
        None => vec![],
    }
}

fn node_object(
    env: &NodeEnv,
    name: &str,
    ip: IpAddr,
    node: &NodeReg,
    control_plane: bool,
) -> Value {
    let mut labels = json!({
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
    });
    if control_plane {
        labels[CONTROL_PLANE_LABEL] = json!("");
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = json!("");
    }
    let v = env.version();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": cri_socket(node),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"taints": taints_for(node, control_plane)},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip.to_string()},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "containerRuntimeVersion": "containerd://1.6.20",
                "kernelVersion": "6.1.0-kh-testbed",
                "kubeProxyVersion": v,
                "kubeletVersion": v,
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
            },
        },
    })
}

fn etcd_mirror_pod(name: &str, ip: IpAddr) -> Value {
    json!({
        "metadata": {
            "name": format!("etcd-{name}"),
            "namespace": "kube-system",
            "labels": {"component": "etcd", "tier": "control-plane"},
            "annotations": {"kubeadm.kubernetes.io/etcd.advertise-client-urls": format!("https://{ip}:2379")},
        },
        "spec": {"nodeName": name},
    })
}

/// The etcd client endpoints of the cluster, from the etcd pods'
/// `kubeadm.kubernetes.io/etcd.advertise-client-urls` annotations, as
/// kubeadm's `etcdutil.NewFromCluster` finds them.
fn etcd_endpoints(c: &Client) -> Result<Vec<String>, String> {
    let pods = client::get(c, "/api/v1/namespaces/kube-system/pods").map_err(|e| e.to_string())?;
    let mut eps: Vec<String> = pods["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["metadata"]["labels"]["component"] == "etcd")
                .filter_map(|p| {
                    p["metadata"]["annotations"]["kubeadm.kubernetes.io/etcd.advertise-client-urls"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    eps.sort();
    eps.dedup();
    if eps.is_empty() {
        return Err(
            "etcd cluster is not healthy: no etcd endpoints found in the etcd Pods' annotations"
                .into(),
        );
    }
    Ok(eps)
}

fn etcdctl(env: &NodeEnv, endpoints: Vec<String>) -> Etcdctl {
    Etcdctl::new(
        endpoints,
        env.path(&format!("{PKI}/etcd/ca.crt")),
        env.path(&format!("{PKI}/etcd/healthcheck-client.crt")),
        env.path(&format!("{PKI}/etcd/healthcheck-client.key")),
    )
}

/// Waits for `https://ip:port/healthz` with the cluster CA.
fn wait_apiserver(env: &NodeEnv, ip: IpAddr, port: u16, phase_name: &str) -> R<()> {
    println!("[api-check] Waiting for a healthy API server. This can take up to 4m0s");
    let ca = read(env, &format!("{PKI}/ca.crt")).unwrap_or_default();
    let c = Client::new(
        &format!("https://{ip}:{port}"),
        &Trust::Ca(ca),
        &Credentials::default(),
    )
    .map_err(|e| plain(e.to_string()))?;
    let start = Instant::now();
    wait_for(WAIT_LIMIT, || match c.get("/healthz") {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("the API server returned {}: {}", r.status, r.body.trim())),
        Err(e) => Err(e.to_string()),
    })
    .map_err(|e| {
        phase(
            phase_name,
            format!("failed while waiting for the control plane to start: kube-apiserver check failed at https://{ip}:{port}/healthz: {e}"),
        )
    })?;
    println!(
        "[api-check] The API server is healthy after {}",
        secs(start.elapsed())
    );
    Ok(())
}

/// kubeadm's API calls through the control-plane endpoint are retried until
/// its `kubernetesAPICall` timeout, so a load balancer that takes a new
/// apiserver into service only once its health checks pass (HAProxy's
/// `rise`) delays init instead of failing it. The double waits for the
/// endpoint to answer `/healthz` once, silently, before its first call.
fn wait_endpoint(env: &NodeEnv, endpoint: &str, phase_name: &str) -> R<()> {
    let admin = admin_client(env, None)?;
    wait_for(WAIT_LIMIT, || match admin.get("/healthz") {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("the API server returned {}: {}", r.status, r.body.trim())),
        Err(e) => Err(e.to_string()),
    })
    .map_err(|e| {
        phase(
            phase_name,
            format!("error uploading configuration: unable to reach the control-plane endpoint https://{endpoint}: {e}"),
        )
    })
}

fn token_secret(token: &str, spec: &TokenSpec, now: std::time::SystemTime) -> Value {
    let (id, secret) = token.split_once('.').unwrap_or((token, ""));
    let mut data = json!({
        "token-id": b64(id),
        "token-secret": b64(secret),
    });
    if !spec.ttl.is_zero() {
        data["expiration"] = json!(b64(clock::rfc3339(now + spec.ttl)));
    }
    if !spec.description.is_empty() {
        data["description"] = json!(b64(&spec.description));
    }
    for u in &spec.usages {
        data[format!("usage-bootstrap-{u}")] = json!(b64("true"));
    }
    if !spec.groups.is_empty() {
        data["auth-extra-groups"] = json!(b64(spec.groups.join(",")));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": data,
    })
}

fn create_token(
    c: &Client,
    token: &str,
    spec: &TokenSpec,
    now: std::time::SystemTime,
) -> Result<(), String> {
    let id = token.split('.').next().unwrap_or_default();
    let name = format!("bootstrap-token-{id}");
    let path = format!("/api/v1/namespaces/kube-system/secrets/{name}");
    match client::get(c, &path) {
        Ok(_) => return Err(format!("a token with id \"{id}\" already exists")),
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            return Err(format!(
                "failed to create or update bootstrap token with name {name}: {e}"
            ))
        }
    }
    client::put(c, &path, &token_secret(token, spec, now))
        .map(|_| ())
        .map_err(|e| format!("failed to create or update bootstrap token with name {name}: {e}"))
}

/// `[upload-certs]`: the shared CA set encrypted with `key` into the
/// `kubeadm-certs` Secret, owned by a 2 h bootstrap token so it expires
/// with it.
fn upload_certs(env: &NodeEnv, c: &Client, cluster: &Cluster, key: &str) -> Result<(), String> {
    record_secrets(env, [key]);
    println!("[upload-certs] Storing the certificates in Secret \"{CERTS_SECRET}\" in the \"kube-system\" Namespace");
    let k = hex::decode(key).map_err(|e| format!("error decoding certificate key: {e}"))?;
    let mut data = serde_json::Map::new();
    for (name, path) in shared_files(cluster) {
        let bytes = std::fs::read(env.path(&path)).unwrap_or_default();
        let sealed = pki::encrypt(&k, &bytes).map_err(|e| e.to_string())?;
        data.insert(name.to_string(), json!(b64(sealed)));
    }
    let owner_token = random_token();
    let spec = TokenSpec {
        token: None,
        ttl: Duration::from_secs(2 * 3600),
        usages: vec![],
        groups: vec![],
        description: "Proxy for managing TTL for the kubeadm-certs secret".into(),
    };
    create_token(c, &owner_token, &spec, env.now())?;
    let owner = format!(
        "bootstrap-token-{}",
        owner_token.split('.').next().unwrap_or_default()
    );
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": CERTS_SECRET,
            "namespace": "kube-system",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Secret", "name": owner, "controller": true, "blockOwnerDeletion": true}],
        },
        "type": "Opaque",
        "data": data,
    });
    client::put(
        c,
        &format!("/api/v1/namespaces/kube-system/secrets/{CERTS_SECRET}"),
        &secret,
    )
    .map_err(|e| format!("error uploading certs: {e}"))?;
    println!("[upload-certs] Using certificate key:\n{key}");
    Ok(())
}

/// kubeadm's join command template.
fn join_command(
    endpoint: &str,
    token: &str,
    hash: &str,
    control_plane: bool,
    cert_key: Option<&str>,
) -> String {
    let mut s = format!(
        "kubeadm join {endpoint} --token {token} \\\n\t--discovery-token-ca-cert-hash {hash} "
    );
    if control_plane {
        s.push_str("\\\n\t--control-plane ");
        if let Some(k) = cert_key {
            s.push_str(&format!("--certificate-key {k}"));
        }
    }
    s
}

fn cluster_info_kubeconfig(server: &str, ca: &str) -> String {
    let v = json!({
        "apiVersion": "v1",
        "clusters": [{"cluster": {"certificate-authority-data": b64(ca), "server": server}, "name": ""}],
        "contexts": null,
        "current-context": "",
        "kind": "Config",
        "preferences": {},
        "users": null,
    });
    serde_yaml::to_string(&v).unwrap_or_default()
}

fn store_cluster_config(c: &Client, cluster: &Cluster) -> Result<(), String> {
    let cm = json!({
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": serde_json::to_string(cluster).unwrap_or_default()},
    });
    client::put(
        c,
        "/api/v1/namespaces/kube-system/configmaps/kubeadm-config",
        &cm,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn load_cluster_config(c: &Client) -> Result<Cluster, String> {
    let cm = client::get(
        c,
        "/api/v1/namespaces/kube-system/configmaps/kubeadm-config",
    )
    .map_err(|e| format!("unable to fetch the kubeadm-config ConfigMap: {e}"))?;
    serde_json::from_str(
        cm["data"]["ClusterConfiguration"]
            .as_str()
            .unwrap_or_default(),
    )
    .map_err(|e| format!("unable to decode the kubeadm-config ConfigMap: {e}"))
}

// ---------------------------------------------------------------------------
// init

const INIT_FLAGS: &[Flag] = &[
    value("config"),
    boolean("upload-certs"),
    value("certificate-key"),
    value("skip-phases"),
    value("ignore-preflight-errors"),
    value("apiserver-advertise-address"),
    value("apiserver-bind-port"),
    value("control-plane-endpoint"),
    value("pod-network-cidr"),
    value("service-cidr"),
    value("service-dns-domain"),
    value("kubernetes-version"),
    value("node-name"),
    value("token"),
    value("token-ttl"),
    value("cri-socket"),
    value("apiserver-cert-extra-sans"),
];

/// Flags that may be combined with --config, as in kubeadm.
/// The flags kubeadm lets stand beside `--config` (its
/// `validation.isAllowedFlag`); every `--skip-*` flag is allowed too. A
/// secret flag such as `--certificate-key` is not: with a config file the
/// secret goes into the file.
const MIXABLE: &[&str] = &[
    "config",
    "ignore-preflight-errors",
    "dry-run",
    "kubeconfig",
    "node-name",
    "kubeconfig-dir",
    "upload-certs",
    "print-join-command",
    "rootfs",
    "v",
    "log-file",
];

/// The flags given beside `--config` that kubeadm refuses with it.
fn mixed(p: &Parsed) -> Vec<String> {
    p.others(MIXABLE)
        .into_iter()
        .filter(|f| !f.starts_with("skip-"))
        .collect()
}

/// The testbed's record of every bootstrap token and certificate key this
/// double was given or made (`<node>/kubeadm-secrets.log`, one per line),
/// so tests can prove none of them ever reached a command line (`calls.log`)
/// or a file left on a host. Testbed-only: real kubeadm keeps no such list.
pub const SECRETS_FILE: &str = "kubeadm-secrets.log";

fn record_secrets<'a>(env: &NodeEnv, secrets: impl IntoIterator<Item = &'a str>) {
    use std::io::Write;
    let lines: String = secrets
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| format!("{s}\n"))
        .collect();
    if lines.is_empty() {
        return;
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.node_dir.join(SECRETS_FILE))
    {
        // One write: doubles on one node may run at once.
        let _ = f.write_all(lines.as_bytes());
    }
}

fn init_from_flags(p: &Parsed, version: &str) -> R<Init> {
    let mut doc = format!(
        "apiVersion: {}\nkind: ClusterConfiguration\nkubernetesVersion: {}\n",
        config::api_for(version),
        p.get("kubernetes-version").unwrap_or(version)
    );
    if let Some(e) = p.get("control-plane-endpoint") {
        doc.push_str(&format!("controlPlaneEndpoint: \"{e}\"\n"));
    }
    doc.push_str("networking:\n");
    if let Some(c) = p.get("pod-network-cidr") {
        doc.push_str(&format!("  podSubnet: \"{c}\"\n"));
    }
    doc.push_str(&format!(
        "  serviceSubnet: \"{}\"\n  dnsDomain: \"{}\"\n",
        p.get("service-cidr").unwrap_or("10.96.0.0/12"),
        p.get("service-dns-domain").unwrap_or("cluster.local")
    ));
    let sans = p.all("apiserver-cert-extra-sans");
    if !sans.is_empty() {
        doc.push_str(&format!(
            "apiServer:\n  certSANs: {}\n",
            serde_json::to_string(&sans).unwrap_or_default()
        ));
    }
    let mut init = config::parse_init(&doc, version).map_err(plain)?;
    if let Some(a) = p.get("apiserver-advertise-address") {
        init.advertise_address = Some(a.parse().map_err(|_| plain(format!("couldn't use \"{a}\" as \"apiserver-advertise-address\", must be ipv4 or ipv6 address")))?);
    }
    if let Some(port) = p.get("apiserver-bind-port") {
        init.bind_port = port.parse().map_err(|_| {
            plain(format!(
                "invalid argument \"{port}\" for \"--apiserver-bind-port\""
            ))
        })?;
    }
    init.node.name = p.get("node-name").map(str::to_string);
    init.node.cri_socket = p.get("cri-socket").map(str::to_string);
    if let Some(t) = p.get("token") {
        if !config::valid_token(t) {
            return Err(plain(format!("the bootstrap token \"{t}\" was not of the form \"^([a-z0-9]{{6}})\\\\.([a-z0-9]{{16}})$\"")));
        }
        init.tokens[0].token = Some(t.to_string());
    }
    if let Some(ttl) = p.get("token-ttl") {
        init.tokens[0].ttl = clock::parse_go_duration(ttl).ok_or_else(|| plain(format!("invalid argument \"{ttl}\" for \"--token-ttl\" flag: time: invalid duration \"{ttl}\"")))?;
    }
    Ok(init)
}

fn init(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, INIT_FLAGS)?;
    if let Some(extra) = p.positional.first() {
        return Err(plain(format!(
            "unknown command \"{extra}\" for \"kubeadm init\""
        )));
    }
    let version = env.version();
    let mut cfg = match p.get("config") {
        Some(file) => {
            let text = config_file(file, &mixed(&p))?;
            config::parse_init(&text, &version).map_err(plain)?
        }
        None => init_from_flags(&p, &version)?,
    };
    if let Some(k) = p.get("certificate-key") {
        config::check_certificate_key(k).map_err(plain)?;
        cfg.certificate_key = Some(k.to_string());
    }
    let mut skip = cfg.skip_phases.clone();
    skip.extend(p.all("skip-phases"));
    let mut ignore = cfg.node.ignore_preflight_errors.clone();
    ignore.extend(p.all("ignore-preflight-errors"));
    let cluster = cfg.cluster.clone();
    let node_ip = node_ip(env)?;
    let ip = cfg.advertise_address.unwrap_or(IpAddr::V4(node_ip));
    let name = cfg.node.name.clone().unwrap_or_else(|| env.hostname());
    let local_etcd = matches!(cluster.etcd, EtcdMode::Local { .. });
    // Benchmarks only: a configured latency (none by default), see latency.rs.
    let _timed = super::latency::begin(env, super::latency::Op::Init);

    println!(
        "[init] Using Kubernetes version: {}",
        cluster.kubernetes_version
    );
    println!("[preflight] Running pre-flight checks");
    let mut pf = Preflight::new();
    manifests_preflight(env, &mut pf, local_etcd);
    pf.file_available(env, ADMIN_CONF);
    if let IpAddr::V4(v4) = ip {
        pf.port(v4, cfg.bind_port);
        if local_etcd {
            pf.port(v4, 2379);
            pf.port(v4, 2380);
        }
    }
    if let EtcdMode::Local { data_dir, .. } = &cluster.etcd {
        pf.dir_available(env, data_dir);
    }
    pf.finish(&ignore)?;
    println!("[preflight] Pulling images required for setting up a Kubernetes cluster");
    println!("[preflight] This might take a minute or two, depending on the speed of your internet connection");
    println!("[preflight] You can also perform this action beforehand using 'kubeadm config images pull'");

    let endpoint = cluster
        .control_plane_endpoint
        .clone()
        .unwrap_or_else(|| format!("{ip}:{}", cfg.bind_port));
    let local = format!("{ip}:{}", cfg.bind_port);
    certs_phase(env, &cluster, &name, ip, true).map_err(|Fail(m)| {
        if m.starts_with("error execution phase") {
            Fail(m)
        } else {
            phase("certs", m)
        }
    })?;
    kubeconfig_phase(env, &cluster, &name, &endpoint, &local, true)?;
    if let EtcdMode::Local {
        data_dir,
        extra_args,
        ..
    } = &cluster.etcd
    {
        println!("[etcd] Creating static Pod manifest for local etcd in \"{MANIFESTS_DIR}\"");
        let m = manifest::etcd(&EtcdPod {
            name: name.clone(),
            ip: ip.to_string(),
            data_dir: data_dir.clone(),
            initial_cluster: format!("{name}=https://{ip}:2380"),
            initial_cluster_state: None,
            extra_args: extra_args.clone(),
        });
        write(env, &format!("{MANIFESTS_DIR}/etcd.yaml"), &m, 0o600)?;
    }
    control_plane_manifests(env, &cluster, ip, cfg.bind_port)?;
    let taints = taints_for(&cfg.node, true);
    kubelet_files(env, &cfg.node, ip, &taints)?;
    println!("[wait-control-plane] Waiting for the kubelet to boot up the control plane as static Pods from directory \"{MANIFESTS_DIR}\"");
    kubelet_check(env, "wait-control-plane")?;
    wait_apiserver(env, ip, cfg.bind_port, "wait-control-plane")?;
    if endpoint != local {
        wait_endpoint(env, &endpoint, "upload-config/kubeadm")?;
    }

    let admin = admin_client(env, None)?;
    let api = |phase_name: &'static str| move |e: String| phase(phase_name, e);
    println!("[upload-config] Storing the configuration used in ConfigMap \"kubeadm-config\" in the \"kube-system\" Namespace");
    store_cluster_config(&admin, &cluster).map_err(api("upload-config/kubeadm"))?;
    println!("[kubelet] Creating a ConfigMap \"kubelet-config\" in namespace kube-system with the configuration for the kubelets in the cluster");
    if p.flag("upload-certs") && !skip.iter().any(|s| s == "upload-certs") {
        let key = cfg.certificate_key.clone().unwrap_or_else(random_key);
        upload_certs(env, &admin, &cluster, &key).map_err(api("upload-certs"))?;
        cfg.certificate_key = Some(key);
    } else {
        println!("[upload-certs] Skipping phase. Please see --upload-certs");
        cfg.certificate_key = None;
    }
    println!("[mark-control-plane] Marking the node {name} as control-plane by adding the labels: [{CONTROL_PLANE_LABEL} node.kubernetes.io/exclude-from-external-load-balancers]");
    let t: Vec<String> = taints
        .iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect();
    println!(
        "[mark-control-plane] Marking the node {name} as control-plane by adding the taints [{}]",
        t.join(" ")
    );
    register_node(&admin, &node_object(env, &name, ip, &cfg.node, true))
        .map_err(api("mark-control-plane"))?;
    if local_etcd {
        client::put(
            &admin,
            &format!("/api/v1/namespaces/kube-system/pods/etcd-{name}"),
            &etcd_mirror_pod(&name, ip),
        )
        .map_err(|e| phase("mark-control-plane", e))?;
    }
    let mut tokens = vec![];
    for spec in &cfg.tokens {
        let t = spec.token.clone().unwrap_or_else(random_token);
        record_secrets(env, [t.as_str()]);
        create_token(&admin, &t, spec, env.now()).map_err(api("bootstrap-token"))?;
        tokens.push(t);
    }
    println!("[bootstrap-token] Using token: {}", tokens[0]);
    println!("[bootstrap-token] Configuring bootstrap tokens, cluster-info ConfigMap, RBAC Roles");
    println!("[bootstrap-token] Configured RBAC rules to allow Node Bootstrap tokens to get nodes");
    println!("[bootstrap-token] Configured RBAC rules to allow Node Bootstrap tokens to post CSRs in order for nodes to get long term certificate credentials");
    println!("[bootstrap-token] Configured RBAC rules to allow the csrapprover controller automatically approve CSRs from a Node Bootstrap Token");
    println!("[bootstrap-token] Configured RBAC rules to allow certificate rotation for all node client certificates in the cluster");
    println!("[bootstrap-token] Creating the \"cluster-info\" ConfigMap in the \"kube-public\" namespace");
    let ca = read(env, &format!("{PKI}/ca.crt")).unwrap_or_default();
    let ci = json!({
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": cluster_info_kubeconfig(&https(&endpoint), &ca)},
    });
    client::put(
        &admin,
        "/api/v1/namespaces/kube-public/configmaps/cluster-info",
        &ci,
    )
    .map_err(|e| phase("bootstrap-token", e))?;
    println!("[kubelet-finalize] Updating \"{KUBELET_CONF}\" to point to a rotatable kubelet client certificate and key");
    println!("[addons] Applied essential addon: CoreDNS");
    println!("[addons] Applied essential addon: kube-proxy");
    let hash = pki::ca_cert_hash(&ca).map_err(|e| plain(e.to_string()))?;
    print!("\nYour Kubernetes control-plane has initialized successfully!\n\nTo start using your cluster, you need to run the following as a regular user:\n\n  mkdir -p $HOME/.kube\n  sudo cp -i /etc/kubernetes/admin.conf $HOME/.kube/config\n  sudo chown $(id -u):$(id -g) $HOME/.kube/config\n\nAlternatively, if you are the root user, you can run:\n\n  export KUBECONFIG=/etc/kubernetes/admin.conf\n\nYou should now deploy a pod network to the cluster.\nRun \"kubectl apply -f [podnetwork].yaml\" with one of the options listed at:\n  https://kubernetes.io/docs/concepts/cluster-administration/addons/\n\n");
    if cluster.control_plane_endpoint.is_some() {
        match &cfg.certificate_key {
            Some(k) => print!(
                "You can now join any number of control-plane nodes running the following command on each as root:\n\n  {}\n\nPlease note that the certificate-key gives access to cluster sensitive data, keep it secret!\nAs a safeguard, uploaded-certs will be deleted in two hours; If necessary, you can use\n\"kubeadm init phase upload-certs --upload-certs\" to reload certs afterward.\n\n",
                join_command(&endpoint, &tokens[0], &hash, true, Some(k))
            ),
            None => print!(
                "You can now join any number of control-plane nodes by copying certificate authorities\nand service account keys on each node and then running the following as root:\n\n  {}\n\n",
                join_command(&endpoint, &tokens[0], &hash, true, None)
            ),
        }
    }
    println!(
        "Then you can join any number of worker nodes by running the following on each as root:\n\n{}",
        join_command(&endpoint, &tokens[0], &hash, false, None)
    );
    Ok(())
}

/// The `--config` file's text, as kubeadm refuses it: mixed with other
/// arguments, or unreadable.
fn config_file(file: &str, others: &[String]) -> R<String> {
    if !others.is_empty() {
        // Go's %v of a []string: `[ttl certificate-key]`.
        return Err(plain(format!(
            "can not mix '--config' with arguments [{}]",
            others.join(" ")
        )));
    }
    std::fs::read_to_string(file).map_err(|e| {
        plain(format!(
            "unable to read config from \"{file}\" : open {file}: {}",
            io_text(&e)
        ))
    })
}

fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn register_node(c: &Client, node: &Value) -> Result<(), String> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    match client::post(c, "/api/v1/nodes", node) {
        Ok(_) => Ok(()),
        Err(e) if e.is_already_exists() => {
            // A node object left from before (not Ready, or the same host
            // joining again): the kubelet takes it over.
            client::put(c, &format!("/api/v1/nodes/{name}"), node)
                .map(|_| ())
                .map_err(|e| format!("unable to register node {name:?} with API server: {e}"))
        }
        Err(e) => Err(format!(
            "unable to register node {name:?} with API server: {e}"
        )),
    }
}

// ---------------------------------------------------------------------------
// init phase upload-certs

fn init_phase(env: &NodeEnv, argv: &[String]) -> R<()> {
    if argv.first().map(String::as_str) != Some("upload-certs") {
        return Err(plain(format!(
            "the kh testbed kubeadm double supports only `kubeadm init phase upload-certs`, not {:?}",
            argv.first().cloned().unwrap_or_default()
        )));
    }
    let p = parse(
        &argv[1..],
        &[
            boolean("upload-certs"),
            value("certificate-key"),
            value("config"),
            value("kubeconfig"),
            boolean("skip-certificate-key-print"),
        ],
    )?;
    // kubeadm loads the whole InitConfiguration (and refuses flags it
    // cannot mix with it) before any phase runs.
    let from_file = match p.get("config") {
        Some(f) => {
            let text = config_file(f, &mixed(&p))?;
            Some(config::parse_init(&text, &env.version()).map_err(plain)?)
        }
        None => None,
    };
    if !p.flag("upload-certs") {
        println!("[upload-certs] Skipping phase. Please see --upload-certs");
        return Ok(());
    }
    let given = match &from_file {
        Some(init) => init.certificate_key.clone(),
        None => p.get("certificate-key").map(str::to_string),
    };
    let key = match given {
        Some(k) => {
            config::check_certificate_key(&k).map_err(plain)?;
            k
        }
        None => random_key(),
    };
    let admin = admin_client(env, p.get("kubeconfig"))?;
    let cluster = match from_file {
        Some(init) => init.cluster,
        None => load_cluster_config(&admin).map_err(|e| phase("upload-certs", e))?,
    };
    upload_certs(env, &admin, &cluster, &key).map_err(|e| phase("upload-certs", e))
}

// ---------------------------------------------------------------------------
// join

const JOIN_FLAGS: &[Flag] = &[
    value("config"),
    value("token"),
    value("discovery-token"),
    value("discovery-token-ca-cert-hash"),
    boolean("discovery-token-unsafe-skip-ca-verification"),
    value("tls-bootstrap-token"),
    boolean("control-plane"),
    value("certificate-key"),
    value("apiserver-advertise-address"),
    value("apiserver-bind-port"),
    value("node-name"),
    value("cri-socket"),
    value("ignore-preflight-errors"),
    value("skip-phases"),
];

fn join_from_flags(p: &Parsed) -> R<Join> {
    let endpoint = p.positional.first().cloned().ok_or_else(|| {
        plain("discovery: Invalid value: \"\": bootstrapToken or file must be set")
    })?;
    let token = p
        .get("discovery-token")
        .or(p.get("token"))
        .unwrap_or_default()
        .to_string();
    if !config::valid_token(&token) {
        return Err(plain(format!(
            "discovery.bootstrapToken.token: Invalid value: \"{token}\": the bootstrap token is invalid"
        )));
    }
    let hashes = p.all("discovery-token-ca-cert-hash");
    let skip = p.flag("discovery-token-unsafe-skip-ca-verification");
    if hashes.is_empty() && !skip {
        return Err(plain("discovery.bootstrapToken: Invalid value: \"\": using token-based discovery without caCertHashes can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass --discovery-token-unsafe-skip-ca-verification flag to continue"));
    }
    let control_plane = if p.flag("control-plane") {
        let advertise_address = match p.get("apiserver-advertise-address") {
            Some(a) => Some(a.parse().map_err(|_| plain(format!("couldn't use \"{a}\" as \"apiserver-advertise-address\", must be ipv4 or ipv6 address")))?),
            None => None,
        };
        let bind_port = p
            .get("apiserver-bind-port")
            .and_then(|x| x.parse().ok())
            .unwrap_or(6443);
        let certificate_key = p.get("certificate-key").map(str::to_string);
        if let Some(k) = &certificate_key {
            config::check_certificate_key(k).map_err(plain)?;
        }
        Some(JoinCp {
            advertise_address,
            bind_port,
            certificate_key,
        })
    } else {
        None
    };
    Ok(Join {
        endpoint,
        tls_bootstrap_token: p.get("tls-bootstrap-token").unwrap_or(&token).to_string(),
        token,
        ca_cert_hashes: hashes,
        unsafe_skip_ca_verification: skip,
        node: NodeReg {
            name: p.get("node-name").map(str::to_string),
            cri_socket: p.get("cri-socket").map(str::to_string),
            ..NodeReg::default()
        },
        control_plane,
        skip_phases: vec![],
    })
}

/// Token discovery: fetch cluster-info without trusting the server, check
/// the token's JWS signature and the CA pin, then trust that CA.
fn discover(j: &Join) -> R<String> {
    println!(
        "[preflight] Discovering cluster-info: fetching the cluster-info ConfigMap from https://{}",
        j.endpoint
    );
    let insecure = Client::new(
        &https(&j.endpoint),
        &Trust::Insecure,
        &Credentials::default(),
    )
    .map_err(|e| plain(e.to_string()))?;
    let fail = |m: String| {
        phase(
            "preflight",
            format!("couldn't validate the identity of the API Server: {m}"),
        )
    };
    let cm = client::get(
        &insecure,
        "/api/v1/namespaces/kube-public/configmaps/cluster-info",
    )
    .map_err(|e| fail(format!("failed to request the cluster-info ConfigMap: {e}")))?;
    let id = j.token.split('.').next().unwrap_or_default();
    let kc = cm["data"]["kubeconfig"].as_str().unwrap_or_default();
    let Some(sig) = cm["data"][format!("jws-kubeconfig-{id}")].as_str() else {
        return Err(fail(format!(
            "could not find a JWS signature in the cluster-info ConfigMap for token ID \"{id}\""
        )));
    };
    if crate::apiserver::jws_detached(kc, id, &j.token) != sig {
        return Err(fail("failed to verify JWS signature of received cluster info object, can't trust this API Server".into()));
    }
    let ca = kubeconfig::first_cluster_ca(kc).map_err(|e| fail(e.to_string()))?;
    if !j.unsafe_skip_ca_verification {
        let h = pki::ca_cert_hash(&ca).map_err(|e| fail(e.to_string()))?;
        if !j.ca_cert_hashes.iter().any(|x| x.eq_ignore_ascii_case(&h)) {
            return Err(fail(format!(
                "cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"{h}\" are pinned"
            )));
        }
    }
    println!("[preflight] Cluster info signature and contents are valid and TLS certificate validates against pinned roots, will use API Server \"https://{}\"", j.endpoint);
    Ok(ca)
}

fn join(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, JOIN_FLAGS)?;
    let version = env.version();
    let mut j = match p.get("config") {
        Some(file) => {
            let mut others = mixed(&p);
            if !p.positional.is_empty() {
                others.extend(p.positional.iter().cloned());
            }
            let text = config_file(file, &others)?;
            config::parse_join(&text, &version).map_err(plain)?
        }
        None => join_from_flags(&p)?,
    };
    j.skip_phases.extend(p.all("skip-phases"));
    let mut ignore = j.node.ignore_preflight_errors.clone();
    ignore.extend(p.all("ignore-preflight-errors"));
    record_secrets(
        env,
        [j.token.as_str(), j.tls_bootstrap_token.as_str()]
            .into_iter()
            .chain(
                j.control_plane
                    .as_ref()
                    .and_then(|c| c.certificate_key.as_deref()),
            ),
    );
    let node_ip = node_ip(env)?;
    let ip = j
        .control_plane
        .as_ref()
        .and_then(|c| c.advertise_address)
        .unwrap_or(IpAddr::V4(node_ip));
    let name = j.node.name.clone().unwrap_or_else(|| env.hostname());
    let cp = j.control_plane.clone();
    // Benchmarks only: a configured latency (none by default), see latency.rs.
    let _timed = super::latency::begin(
        env,
        if cp.is_some() {
            super::latency::Op::JoinControlPlane
        } else {
            super::latency::Op::JoinWorker
        },
    );

    println!("[preflight] Running pre-flight checks");
    let mut pf = Preflight::new();
    pf.file_available(env, KUBELET_CONF);
    pf.file_available(env, "/etc/kubernetes/bootstrap-kubelet.conf");
    if let Some(cp) = &cp {
        manifests_preflight(env, &mut pf, true);
        if let IpAddr::V4(v4) = ip {
            pf.port(v4, cp.bind_port);
        }
    } else {
        pf.file_available(env, &format!("{PKI}/ca.crt"));
    }
    pf.finish(&ignore)?;
    let ca_pem = discover(&j)?;
    let bootstrap = Client::new(
        &https(&j.endpoint),
        &Trust::Ca(ca_pem.clone()),
        &Credentials {
            cert: None,
            bearer: Some(j.tls_bootstrap_token.clone()),
        },
    )
    .map_err(|e| plain(e.to_string()))?;
    println!("[preflight] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...");
    println!("[preflight] Use 'kubeadm init phase upload-config --config your-config.yaml' to re-upload it.");
    let cluster = load_cluster_config(&bootstrap).map_err(|e| phase("preflight", e))?;
    let local_etcd = matches!(cluster.etcd, EtcdMode::Local { .. });

    if let Some(cp) = &cp {
        if cluster.control_plane_endpoint.is_none() {
            return Err(phase("preflight", "\nOne or more conditions for hosting a new control plane instance is not satisfied.\n\nunable to add a new control plane instance to a cluster that doesn't have a stable controlPlaneEndpoint address\n\nPlease ensure that:\n* The cluster has a stable controlPlaneEndpoint address.\n* The certificates that must be shared among control plane instances are provided.\n\n"));
        }
        println!("[preflight] Running pre-flight checks before initializing the new control plane instance");
        let mut pf = Preflight::new();
        if let IpAddr::V4(v4) = ip {
            if local_etcd {
                pf.port(v4, 2379);
                pf.port(v4, 2380);
            }
        }
        if let EtcdMode::Local { data_dir, .. } = &cluster.etcd {
            pf.dir_available(env, data_dir);
        }
        pf.finish(&ignore)?;
        if cp.certificate_key.is_none() {
            let missing: Vec<String> = shared_files(&cluster)
                .into_iter()
                .filter(|(_, path)| !env.path(path).exists())
                .map(|(name, path)| {
                    let what = if name.ends_with(".crt") || name.ends_with(".pub") { "certificate" } else { "key" };
                    format!("failure loading {what} {name}: couldn't load the file {path}: open {path}: no such file or directory")
                })
                .collect();
            if !missing.is_empty() {
                return Err(phase(
                    "preflight",
                    format!("\nOne or more conditions for hosting a new control plane instance is not satisfied.\n\n[{}]\n\nPlease ensure that:\n* The cluster has a stable controlPlaneEndpoint address.\n* The certificates that must be shared among control plane instances are provided.\n\n", missing.join(", ")),
                ));
            }
        }
        println!("[preflight] Pulling images required for setting up a Kubernetes cluster");
        println!("[preflight] This might take a minute or two, depending on the speed of your internet connection");
        println!("[preflight] You can also perform this action beforehand using 'kubeadm config images pull'");
        if let Some(key) = &cp.certificate_key {
            download_certs(env, &bootstrap, &cluster, key)?;
        }
        certs_phase(env, &cluster, &name, ip, false)
            .map_err(|Fail(m)| phase("control-plane-prepare/certs", m))?;
        let endpoint = cluster.control_plane_endpoint.clone().unwrap_or_default();
        kubeconfig_phase(
            env,
            &cluster,
            &name,
            &endpoint,
            &format!("{ip}:{}", cp.bind_port),
            false,
        )
        .map_err(|Fail(m)| phase("control-plane-prepare/kubeconfig", m))?;
        control_plane_manifests(env, &cluster, ip, cp.bind_port)?;
    }

    // kubelet-start: the TLS bootstrap the kubelet does with the token.
    let taints = taints_for(&j.node, cp.is_some());
    kubelet_files(env, &j.node, ip, &taints)?;
    kubelet_check(env, "kubelet-start")?;
    println!("[kubelet-start] Waiting for the kubelet to perform the TLS Bootstrap");
    match client::get(&bootstrap, &format!("/api/v1/nodes/{name}")) {
        Ok(n) => {
            let ready = n["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if ready {
                return Err(phase("kubelet-start", format!("a Node with name \"{name}\" and status \"Ready\" already exists in the cluster. You must delete the existing Node or change the name of this new joining Node")));
            }
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            return Err(phase(
                "kubelet-start",
                format!("cannot get Node \"{name}\": {e}"),
            ))
        }
    }
    let (key_pem, csr) = pki::key_and_csr(&format!("system:node:{name}"), &["system:nodes"])
        .map_err(|e| plain(e.to_string()))?;
    let csr_obj = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "spec": {"request": b64(&csr), "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": ["digital signature", "client auth"], "nodeName": name},
    });
    let signed = client::post(
        &bootstrap,
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        &csr_obj,
    )
    .map_err(|e| {
        phase(
            "kubelet-start",
            format!("failed to run Kubelet: unable to request signed certificate: {e}"),
        )
    })?;
    let cert_pem = signed["status"]["certificate"]
        .as_str()
        .and_then(crate::kube::unb64)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    write(
        env,
        KUBELET_CLIENT_PEM,
        &format!("{cert_pem}{key_pem}"),
        0o600,
    )?;
    let node_user = format!("system:node:{name}");
    let kc = kubeconfig::render(
        "default-cluster",
        &https(&j.endpoint),
        &ca_pem,
        "default-auth",
        &User::CertFile(KUBELET_CLIENT_PEM.into()),
    );
    write(env, KUBELET_CONF, &kc, 0o600)?;
    let kubelet = kubeconfig::load(env, &env.path(KUBELET_CONF))
        .and_then(|t| t.client())
        .map_err(|e| phase("kubelet-start", e))?;
    register_node(&kubelet, &node_object(env, &name, ip, &j.node, false))
        .map_err(|e| phase("kubelet-start", format!("{node_user}: {e}")))?;

    let Some(cp) = cp else {
        print!("\nThis node has joined the cluster:\n* Certificate signing request was sent to apiserver and a response was received.\n* The Kubelet was informed of the new secure connection details.\n\nRun 'kubectl get nodes' on the control-plane to see this node join the cluster.\n\n");
        return Ok(());
    };
    let admin = admin_client(env, None)?;
    if let EtcdMode::Local {
        data_dir,
        extra_args,
        ..
    } = &cluster.etcd
    {
        etcd_join(env, &admin, &name, ip, data_dir, extra_args)?;
    }
    println!("[mark-control-plane] Marking the node {name} as control-plane by adding the labels: [{CONTROL_PLANE_LABEL} node.kubernetes.io/exclude-from-external-load-balancers]");
    let t: Vec<String> = taints
        .iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect();
    println!(
        "[mark-control-plane] Marking the node {name} as control-plane by adding the taints [{}]",
        t.join(" ")
    );
    client::put(
        &admin,
        &format!("/api/v1/nodes/{name}"),
        &node_object(env, &name, ip, &j.node, true),
    )
    .map_err(|e| phase("control-plane-join/mark-control-plane", e))?;
    wait_apiserver(env, ip, cp.bind_port, "wait-control-plane")?;
    print!("\nThis node has joined the cluster and a new control plane instance was created:\n\n* Certificate signing request was sent to apiserver and approval was received.\n* The Kubelet was informed of the new secure connection details.\n* Control plane label and taint were applied to the new node.\n* The Kubernetes control plane instances scaled up.\n* A new etcd member was added to the local/stacked etcd cluster.\n\nTo start administering your cluster from this node, you need to run the following as a regular user:\n\n\tmkdir -p $HOME/.kube\n\tsudo cp -i /etc/kubernetes/admin.conf $HOME/.kube/config\n\tsudo chown $(id -u):$(id -g) $HOME/.kube/config\n\nRun 'kubectl get nodes' to see this node join the cluster.\n\n");
    Ok(())
}

fn download_certs(env: &NodeEnv, c: &Client, cluster: &Cluster, key: &str) -> R<()> {
    const PH: &str = "control-plane-prepare/download-certs";
    println!("[download-certs] Downloading the certificates in Secret \"{CERTS_SECRET}\" in the \"kube-system\" Namespace");
    let k = hex::decode(key).map_err(|e| {
        phase(
            PH,
            format!("error downloading certs: error decoding certificate key: {e}"),
        )
    })?;
    let secret = match client::get(
        c,
        &format!("/api/v1/namespaces/kube-system/secrets/{CERTS_SECRET}"),
    ) {
        Ok(s) => s,
        Err(e) if e.is_not_found() => {
            return Err(phase(PH, format!("error downloading certs: error downloading the secret: Secret \"{CERTS_SECRET}\" was not found in the \"kube-system\" Namespace. This Secret might have expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a new one")));
        }
        Err(e) => {
            return Err(phase(
                PH,
                format!("error downloading certs: error downloading the secret: {e}"),
            ))
        }
    };
    let mut files = vec![];
    for (name, path) in shared_files(cluster) {
        let Some(sealed) = client::secret_field(&secret, name) else {
            return Err(phase(PH, format!("error downloading certs: the Secret does not include the required certificate or key - name: {name}, path: {path}")));
        };
        let plain_bytes = pki::decrypt(&k, &sealed).map_err(|e| {
            phase(
                PH,
                format!(
                    "error downloading certs: error decoding secret data with provided key: {e}"
                ),
            )
        })?;
        files.push((path, plain_bytes));
    }
    println!("[download-certs] Saving the certificates to the folder: \"{PKI}\"");
    for (path, bytes) in files {
        if bytes.is_empty() {
            continue;
        }
        let mode = if path.ends_with(".key") { 0o600 } else { 0o644 };
        write_file(&env.path(&path), &bytes, mode)
            .map_err(|e| phase(PH, format!("{path}: {e}")))?;
    }
    Ok(())
}

/// control-plane-join/etcd: add this host as a learner, start it through
/// the kubelet, promote it once it has caught up.
fn etcd_join(
    env: &NodeEnv,
    admin: &Client,
    name: &str,
    ip: IpAddr,
    data_dir: &str,
    extra: &[(String, String)],
) -> R<()> {
    const PH: &str = "control-plane-join/etcd";
    let fail = |e: String| {
        phase(
            PH,
            format!("error creating local etcd static pod manifest file: {e}"),
        )
    };
    let endpoints = etcd_endpoints(admin).map_err(fail)?;
    let ctl = etcdctl(env, endpoints);
    let peer = format!("https://{ip}:2380");
    println!("[etcd] Adding etcd member as learner: {peer}");
    // etcd refuses membership changes until every voting member has been
    // connected for 5 s ("unhealthy cluster"), as right after the previous
    // join; kubeadm retries that. Other errors (a pending learner, a stale
    // member with this peer URL) fail at once.
    let start = Instant::now();
    let mut refused: Option<Instant> = None;
    // A call that timed out on our side may still have added the member;
    // like kubeadm, a retry that then finds its own peer URL takes the
    // member as added.
    let mut timed_out = false;
    let out = loop {
        match ctl.run(&[
            "member",
            "add",
            name,
            &format!("--peer-urls={peer}"),
            "--learner",
        ]) {
            Ok(out) => break out,
            Err(e) if e.contains("unhealthy cluster") && start.elapsed() < ADD_MEMBER_RETRY => {
                refused.get_or_insert_with(Instant::now);
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e)
                if e.contains("context deadline exceeded")
                    && start.elapsed() < ADD_MEMBER_RETRY =>
            {
                timed_out = true;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) if timed_out && e.contains("Peer URLs already exists") => {
                let list = ctl.run(&["member", "list"]).map_err(fail)?;
                let initial: Vec<String> = list
                    .lines()
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split(", ").collect();
                        let (member, peers) = (*f.get(2)?, *f.get(3)?);
                        let member = if member.is_empty() && peers == peer {
                            name
                        } else {
                            member
                        };
                        (!member.is_empty()).then(|| format!("{member}={peers}"))
                    })
                    .collect();
                break format!("ETCD_INITIAL_CLUSTER=\"{}\"", initial.join(","));
            }
            Err(e) => return Err(fail(e)),
        }
    };
    if let Some(t) = refused {
        super::latency::note_etcd_settle(t.elapsed());
    }
    let initial = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .map(|s| s.trim_matches('"').to_string())
        .ok_or_else(|| fail(format!("unexpected output from etcd member add: {out}")))?;
    println!("[etcd] Announced new etcd member joining to the existing etcd cluster");
    println!("[etcd] Creating static Pod manifest for \"etcd\"");
    let m = manifest::etcd(&EtcdPod {
        name: name.to_string(),
        ip: ip.to_string(),
        data_dir: data_dir.to_string(),
        initial_cluster: initial,
        initial_cluster_state: Some("existing"),
        extra_args: extra.to_vec(),
    });
    write(env, &format!("{MANIFESTS_DIR}/etcd.yaml"), &m, 0o600)?;
    println!("[etcd] Waiting for the new etcd member to join the cluster. This can take up to 40s");
    let start = Instant::now();
    wait_for(PROMOTE_LIMIT, || {
        let members = ctl.members()?;
        let me = members
            .iter()
            .find(|m| m.peer_urls.contains(&peer))
            .ok_or_else(|| format!("etcd member with peer URL {peer} not found"))?;
        if !me.is_learner {
            return Ok(());
        }
        ctl.run(&["member", "promote", &me.hex_id()]).map(|_| ())
    })
    .map_err(|e| phase(PH, format!("error creating local etcd static pod manifest file: timeout waiting for etcd cluster to be available: {e}")))?;
    println!(
        "[etcd] The learner member was promoted to a voting member after {}",
        secs(start.elapsed())
    );
    let local = etcdctl(env, vec![format!("https://{ip}:2379")]);
    wait_for(WAIT_LIMIT, || {
        local.run(&["endpoint", "health"]).map(|_| ())
    })
    .map_err(|e| {
        phase(
            PH,
            format!("error waiting for the local etcd member to become healthy: {e}"),
        )
    })?;
    client::put(
        admin,
        &format!("/api/v1/namespaces/kube-system/pods/etcd-{name}"),
        &etcd_mirror_pod(name, ip),
    )
    .map_err(|e| phase(PH, e))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// token

fn token(env: &NodeEnv, argv: &[String]) -> R<()> {
    match argv.first().map(String::as_str) {
        Some("create") => token_create(env, &argv[1..]),
        Some("list") => token_list(env, &argv[1..]),
        Some("delete") => token_delete(env, &argv[1..]),
        Some("generate") => {
            println!("{}", random_token());
            Ok(())
        }
        _ => Err(plain("missing subcommand; \"token\" is not meant to be run on its own\nTo see the stack trace of this error execute with --v=5 or higher")),
    }
}

fn token_create(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(
        argv,
        &[
            value("ttl"),
            boolean("print-join-command"),
            value("certificate-key"),
            value("description"),
            value("usages"),
            value("groups"),
            value("config"),
            value("kubeconfig"),
        ],
    )?;
    let (specs, key) = match p.get("config") {
        // kubeadm creates the config's bootstrapTokens; a positional
        // [token] and the token flags apply only without a config (and the
        // flags are refused beside it).
        Some(file) => {
            let text = config_file(file, &mixed(&p))?;
            let init = config::parse_init(&text, &env.version()).map_err(plain)?;
            (init.tokens, None)
        }
        None => (vec![token_from_flags(&p)?], p.get("certificate-key")),
    };
    if let Some(k) = key {
        config::check_certificate_key(k).map_err(plain)?;
    }
    let kubeconfig_file = p.get("kubeconfig");
    let admin = admin_client(env, kubeconfig_file)?;
    let mut created = vec![];
    for spec in &specs {
        let tok = spec.token.clone().unwrap_or_else(random_token);
        record_secrets(env, [tok.as_str()]);
        create_token(&admin, &tok, spec, env.now()).map_err(plain)?;
        created.push(tok);
    }
    let tok = &created[0];
    if p.flag("print-join-command") {
        let path = host_file(env, kubeconfig_file.unwrap_or(ADMIN_CONF));
        let target = kubeconfig::load(env, &path)
            .map_err(|e| plain(format!("failed to load kubeconfig: {e}")))?;
        let endpoint = target.server.trim_start_matches("https://").to_string();
        let hash = pki::ca_cert_hash(target.ca_pem.as_deref().unwrap_or_default())
            .map_err(|e| plain(e.to_string()))?;
        let cmd = join_command(&endpoint, tok, &hash, key.is_some(), key)
            .replace("\\\n", "")
            .replace('\t', "");
        println!("{cmd}");
    } else {
        println!("{tok}");
    }
    Ok(())
}

/// The one token `kubeadm token create [token] --ttl ...` describes
/// without a config file.
fn token_from_flags(p: &Parsed) -> R<TokenSpec> {
    let tok = match p.positional.first() {
        Some(t) if !config::valid_token(t) => {
            return Err(plain(format!("the bootstrap token \"{t}\" was not of the form \"^([a-z0-9]{{6}})\\\\.([a-z0-9]{{16}})$\"")))
        }
        Some(t) => Some(t.clone()),
        None => None,
    };
    let ttl = match p.get("ttl") {
        Some(s) => clock::parse_go_duration(s).ok_or_else(|| {
            plain(format!(
                "invalid argument \"{s}\" for \"--ttl\" flag: time: invalid duration \"{s}\""
            ))
        })?,
        None => Duration::from_secs(24 * 3600),
    };
    let usages = {
        let u = p.all("usages");
        if u.is_empty() {
            vec!["signing".into(), "authentication".into()]
        } else {
            u
        }
    };
    let groups = {
        let g = p.all("groups");
        if g.is_empty() {
            vec!["system:bootstrappers:kubeadm:default-node-token".into()]
        } else {
            g
        }
    };
    Ok(TokenSpec {
        token: tok,
        ttl,
        usages,
        groups,
        description: p.get("description").unwrap_or_default().to_string(),
    })
}

fn token_list(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(
        argv,
        &[
            short(value("output"), 'o'),
            value("kubeconfig"),
            value("config"),
            boolean("allow-missing-template-keys"),
        ],
    )?;
    let admin = admin_client(env, p.get("kubeconfig"))?;
    let list = client::get(&admin, "/api/v1/namespaces/kube-system/secrets?fieldSelector=type%3Dbootstrap.kubernetes.io%2Ftoken")
        .map_err(|e| plain(format!("failed to list bootstrap tokens: {e}")))?;
    let now = env.now();
    let mut rows = vec![];
    let mut objs = vec![];
    for s in list["items"].as_array().cloned().unwrap_or_default() {
        let id = secret_text(&s, "token-id");
        let token = format!("{id}.{}", secret_text(&s, "token-secret"));
        let exp = secret_text(&s, "expiration");
        let ttl = match clock::parse_rfc3339(&exp) {
            Some(t) => t
                .duration_since(now)
                .map(clock::human_duration)
                .unwrap_or_else(|_| "<invalid>".into()),
            None => "<forever>".into(),
        };
        let mut usages: Vec<String> = s["data"]
            .as_object()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.strip_prefix("usage-bootstrap-"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        usages.sort();
        let groups = secret_text(&s, "auth-extra-groups");
        let desc = secret_text(&s, "description");
        rows.push([
            token.clone(),
            ttl,
            if exp.is_empty() {
                "<never>".into()
            } else {
                exp.clone()
            },
            if usages.is_empty() {
                "<none>".into()
            } else {
                usages.join(",")
            },
            if desc.is_empty() {
                "<none>".into()
            } else {
                desc.clone()
            },
            if groups.is_empty() {
                "<none>".into()
            } else {
                groups.clone()
            },
        ]);
        let mut o = json!({
            "kind": "BootstrapToken",
            "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
            "creationTimestamp": null,
            "token": token,
            "description": desc,
            "usages": usages,
            "groups": groups.split(',').filter(|g| !g.is_empty()).collect::<Vec<_>>(),
        });
        if !exp.is_empty() {
            o["expires"] = json!(exp);
        }
        objs.push(o);
    }
    match p.get("output") {
        Some("json") => {
            for o in objs {
                println!("{}", serde_json::to_string_pretty(&o).unwrap_or_default());
            }
        }
        Some("yaml") => {
            for o in objs {
                print!("{}", serde_yaml::to_string(&o).unwrap_or_default());
                println!("---");
            }
        }
        None | Some("text") => {
            if rows.is_empty() {
                return Ok(());
            }
            let header = [
                "TOKEN",
                "TTL",
                "EXPIRES",
                "USAGES",
                "DESCRIPTION",
                "EXTRA GROUPS",
            ]
            .map(String::from);
            print!("{}", table(&header, &rows));
        }
        Some(o) => return Err(plain(format!("invalid output format: {o}"))),
    }
    Ok(())
}

/// Columns padded like Go's tabwriter with kubectl's settings.
pub fn table<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut w = [0usize; N];
    for r in std::iter::once(header).chain(rows.iter()) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<width$}", width = w[i] + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn token_delete(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(argv, &[value("kubeconfig")])?;
    if p.positional.is_empty() {
        return Err(plain("missing argument; 'token delete' is missing token of form \"[a-z0-9]{6}\" or \"[a-z0-9]{6}\\.[a-z0-9]{16}\""));
    }
    let admin = admin_client(env, p.get("kubeconfig"))?;
    for t in &p.positional {
        let id = t.split('.').next().unwrap_or_default();
        let ok_id = id.len() == 6
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok_id {
            return Err(plain("given token didn't match pattern \"[a-z0-9]{6}\" or \"[a-z0-9]{6}\\.[a-z0-9]{16}\""));
        }
        let name = format!("bootstrap-token-{id}");
        client::delete(
            &admin,
            &format!("/api/v1/namespaces/kube-system/secrets/{name}"),
        )
        .map_err(|e| plain(format!("failed to delete bootstrap token {id:?}: {e}")))?;
        println!("bootstrap token \"{id}\" deleted");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// certs certificate-key

fn certs_cmd(argv: &[String]) -> R<()> {
    match argv.first().map(String::as_str) {
        Some("certificate-key") => {
            parse(&argv[1..], &[])?;
            println!("{}", random_key());
            Ok(())
        }
        other => Err(plain(format!(
            "the kh testbed kubeadm double supports only `kubeadm certs certificate-key`, not {other:?}"
        ))),
    }
}

// ---------------------------------------------------------------------------
// reset

fn reset(env: &NodeEnv, argv: &[String]) -> R<()> {
    let p = parse(
        argv,
        &[
            short(boolean("force"), 'f'),
            boolean("cleanup-tmp-dir"),
            value("cri-socket"),
            value("ignore-preflight-errors"),
            value("kubeconfig"),
            value("skip-phases"),
            value("config"),
        ],
    )?;
    if !p.flag("force") {
        println!("W0000 00:00:00.000000       1 preflight.go:56] [reset] WARNING: Changes made to this host by 'kubeadm init' or 'kubeadm join' will be reverted.");
        print!("[reset] Are you sure you want to proceed? [y/N]: ");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if !matches!(line.trim(), "y" | "Y") {
            return Err(phase(
                "preflight",
                "won't proceed; the user didn't answer (Y|y) in order to continue",
            ));
        }
    }
    let skip = p.all("skip-phases");
    let ip = env.ip();
    let etcd_manifest = read(env, &format!("{MANIFESTS_DIR}/etcd.yaml"));
    let data_dir = etcd_manifest
        .as_deref()
        .and_then(|m| manifest::Pod::parse(m).ok())
        .and_then(|pod| {
            pod.spec.containers.first().and_then(|c| {
                c.command
                    .iter()
                    .find_map(|a| a.strip_prefix("--data-dir=").map(str::to_string))
            })
        })
        .unwrap_or_else(|| "/var/lib/etcd".to_string());
    let admin = admin_client(env, p.get("kubeconfig")).ok();
    if admin.is_some() {
        println!("[reset] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...");
        println!("[reset] Use 'kubeadm init phase upload-config --config your-config.yaml' to re-upload it.");
    } else {
        println!("W0000 00:00:00.000000       1 reset.go:124] [reset] Unable to fetch the kubeadm-config ConfigMap from cluster: failed to get config map: the admin kubeconfig is missing");
    }
    println!("[preflight] Running pre-flight checks");
    if let (Some(_), Some(ip)) = (&etcd_manifest, ip) {
        if !skip.iter().any(|s| s == "remove-etcd-member") {
            remove_etcd_member(env, admin.as_ref(), ip);
        }
    }
    println!("[reset] Stopping the kubelet service");
    // The kubelet double keeps running (it is the host's kubelet); with the
    // manifests gone it stops the static pods. Wait for that before the
    // etcd data goes away, as kubeadm removes the containers first.
    let manifests = env.path(MANIFESTS_DIR);
    let mut removed = vec![];
    if let Ok(rd) = std::fs::read_dir(&manifests) {
        for e in rd.flatten() {
            if std::fs::remove_file(e.path()).is_ok() {
                removed.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    if let Some(ip) = ip {
        let _ = wait_for(Duration::from_secs(15), || {
            for port in [2379u16, 2380, 6443] {
                if std::net::TcpStream::connect_timeout(
                    &(ip, port).into(),
                    Duration::from_millis(100),
                )
                .is_ok()
                {
                    return Err(format!("port {port} still open"));
                }
            }
            Ok(())
        });
    }
    println!("[reset] Unmounting mounted directories in \"/var/lib/kubelet\"");
    if etcd_manifest.is_some() {
        let _ = remove_contents(&env.path(&data_dir));
        println!("[reset] Deleted contents of the etcd data directory: {data_dir}");
    }
    for d in [MANIFESTS_DIR, "/var/lib/kubelet", PKI] {
        let _ = remove_contents(&env.path(d));
    }
    println!("[reset] Deleting contents of directories: [{MANIFESTS_DIR} /var/lib/kubelet {PKI}]");
    let files = [
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/super-admin.conf",
        "/etc/kubernetes/kubelet.conf",
        "/etc/kubernetes/bootstrap-kubelet.conf",
        "/etc/kubernetes/controller-manager.conf",
        "/etc/kubernetes/scheduler.conf",
    ];
    for f in files {
        let _ = std::fs::remove_file(env.path(f));
    }
    println!("[reset] Deleting files: [{}]", files.join(" "));
    print!("\nThe reset process does not perform cleanup of CNI plugin configuration,\nnetwork filtering rules and kubeconfig files.\n\nFor information on how to perform this cleanup manually, please see:\n    https://k8s.io/docs/reference/setup-tools/kubeadm/kubeadm-reset/\n\nThe reset process does not clean CNI configuration. To do so, you must remove /etc/cni/net.d\n\nThe reset process does not reset or clean up iptables rules or IPVS tables.\nIf you wish to reset iptables, you must do so manually by using the \"iptables\" command.\n\nIf your cluster was setup to utilize IPVS, run ipvsadm --clear (or similar)\nto reset your system's IPVS tables.\n\nThe reset process does not clean your kubeconfig files and you must remove them manually.\nPlease, check the contents of the $HOME/.kube/config file.\n");
    Ok(())
}

/// kubeadm reset's remove-etcd-member phase: through the cluster's etcd
/// endpoints, falling back to the local member; failures are warnings.
fn remove_etcd_member(env: &NodeEnv, admin: Option<&Client>, ip: Ipv4Addr) {
    let peer = format!("https://{ip}:2380");
    let mut endpoints = admin
        .and_then(|c| etcd_endpoints(c).ok())
        .unwrap_or_default();
    let local = format!("https://{ip}:2379");
    endpoints.retain(|e| e != &local);
    endpoints.push(local);
    let ctl = etcdctl(env, endpoints);
    let r = ctl.members().and_then(|ms| {
        let me = ms
            .iter()
            .find(|m| m.peer_urls.contains(&peer))
            .ok_or_else(|| format!("no etcd member with peer URL {peer}"))?;
        // Retried while etcd calls the cluster unhealthy, as kubeadm
        // retries member removal.
        let start = Instant::now();
        loop {
            match ctl.run(&["member", "remove", &me.hex_id()]) {
                Ok(_) => break,
                Err(e) if e.contains("unhealthy cluster") && start.elapsed() < ADD_MEMBER_RETRY => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(me.hex_id())
    });
    match r {
        Ok(id) => {
            println!("[reset] Removed etcd member {id} ({peer}) from the etcd cluster");
            if let Some(c) = admin {
                let name = env.hostname();
                let _ = client::delete(c, &format!("/api/v1/namespaces/kube-system/pods/etcd-{name}"));
                // The mirror pod is named after the node, which may differ
                // from the host name: remove any etcd pod with this address.
                if let Ok(pods) = client::get(c, "/api/v1/namespaces/kube-system/pods") {
                    for p in pods["items"].as_array().cloned().unwrap_or_default() {
                        let url = p["metadata"]["annotations"]["kubeadm.kubernetes.io/etcd.advertise-client-urls"].as_str().unwrap_or_default();
                        if url == format!("https://{ip}:2379") {
                            let n = p["metadata"]["name"].as_str().unwrap_or_default();
                            let _ = client::delete(c, &format!("/api/v1/namespaces/kube-system/pods/{n}"));
                        }
                    }
                }
            }
        }
        Err(e) => println!("W0000 00:00:00.000000       1 removeetcdmember.go:106] [reset] Failed to remove etcd member: {e}, please manually remove this etcd member using etcdctl"),
    }
}

fn remove_contents(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_commands_have_kubeadms_shape() {
        assert_eq!(
            join_command("10.0.0.1:6443", "abcdef.0123456789abcdef", "sha256:aa", true, Some("kk")),
            "kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef \\\n\t--discovery-token-ca-cert-hash sha256:aa \\\n\t--control-plane --certificate-key kk"
        );
        assert_eq!(
            join_command("10.0.0.1:6443", "t", "sha256:aa", false, None),
            "kubeadm join 10.0.0.1:6443 --token t \\\n\t--discovery-token-ca-cert-hash sha256:aa "
        );
    }

    #[test]
    fn the_service_ip_is_the_first_of_the_subnet() {
        assert_eq!(
            first_service_ip("10.96.0.0/12"),
            Some("10.96.0.1".parse().unwrap())
        );
    }

    #[test]
    fn tables_pad_like_tabwriter() {
        let t = table(
            &["NAME".to_string(), "STATUS".to_string()],
            &[["cp-1".to_string(), "Ready".to_string()]],
        );
        assert_eq!(t, "NAME   STATUS\ncp-1   Ready\n");
    }
}
