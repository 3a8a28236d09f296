//! Helpers the kubeadm subcommands share.

use super::*;

pub(super) fn read(env: &NodeEnv, abs: &str) -> Option<String> {
    std::fs::read_to_string(env.path(abs)).ok()
}

pub(super) fn write(env: &NodeEnv, abs: &str, contents: &str, mode: u32) -> R<()> {
    write_file(&env.path(abs), contents, mode)
        .map_err(|e| plain(format!("failed to write {abs}: {e}")))
}

pub(super) fn node_ip(env: &NodeEnv) -> R<Ipv4Addr> {
    env.ip().ok_or_else(|| {
        plain("unable to select an IP from default routes: the testbed node has no ip file")
    })
}

pub(super) fn random_token() -> String {
    format!(
        "{}.{}",
        kh::token::random_string(6),
        kh::token::random_string(16)
    )
}

pub(super) fn random_key() -> String {
    hex::encode(kh::token::random_bytes::<32>())
}

/// Polls `f` every 100 ms until it succeeds or `limit` passes.
pub(super) fn wait_for<T>(
    limit: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= limit => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub(super) fn secs(d: Duration) -> String {
    format!("{:.6}s", d.as_secs_f64())
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

/// The first address of the service subnet: the `kubernetes` Service IP.
pub(super) fn first_service_ip(subnet: &str) -> Option<IpAddr> {
    let (addr, _) = subnet.split(',').next()?.split_once('/')?;
    let ip: Ipv4Addr = addr.parse().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(u32::from(ip) + 1)))
}

/// `host:port` -> `https://host:port`.
pub(super) fn https(endpoint: &str) -> String {
    format!("https://{endpoint}")
}

pub(super) fn admin_client(env: &NodeEnv, kubeconfig: Option<&str>) -> R<Client> {
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
pub(super) fn host_file(env: &NodeEnv, file: &str) -> PathBuf {
    if Path::new(file).starts_with(&env.root) {
        PathBuf::from(file)
    } else {
        env.path(file)
    }
}

pub(super) struct Preflight {
    errors: Vec<(String, String)>,
}

impl Preflight {
    pub(super) fn new() -> Preflight {
        Preflight { errors: vec![] }
    }

    pub(super) fn file_available(&mut self, env: &NodeEnv, abs: &str) {
        if env.path(abs).exists() {
            let name = format!("FileAvailable-{}", abs.replace('/', "-"));
            self.errors.push((name, format!("{abs} already exists")));
        }
    }

    pub(super) fn dir_available(&mut self, env: &NodeEnv, abs: &str) {
        let p = env.path(abs);
        let nonempty = std::fs::read_dir(&p)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if nonempty {
            let name = format!("DirAvailable-{}", abs.replace('/', "-"));
            self.errors.push((name, format!("{abs} is not empty")));
        }
    }

    pub(super) fn port(&mut self, ip: Ipv4Addr, port: u16) {
        if std::net::TcpListener::bind((ip, port)).is_err() {
            self.errors
                .push((format!("Port-{port}"), format!("Port {port} is in use")));
        }
    }

    /// Prints ignored errors as warnings; fails with the rest.
    pub(super) fn finish(self, ignore: &[String]) -> R<()> {
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

pub(super) fn manifests_preflight(env: &NodeEnv, pf: &mut Preflight, local_etcd: bool) {
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
