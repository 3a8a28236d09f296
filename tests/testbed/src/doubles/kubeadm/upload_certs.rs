//! `kubeadm init phase upload-certs`.

use super::*;

pub(super) fn init_phase(env: &NodeEnv, argv: &[String]) -> R<()> {
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
