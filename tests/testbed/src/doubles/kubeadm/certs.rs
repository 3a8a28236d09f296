//! `kubeadm certs certificate-key`, `kubeadm certs check-expiration` and
//! `kubeadm certs renew` (in `renew`).

use super::*;

pub(super) fn certs_cmd(env: &NodeEnv, argv: &[String]) -> R<()> {
    match argv.first().map(String::as_str) {
        Some("check-expiration") => check_expiration(env, &argv[1..]),
        Some("certificate-key") => {
            parse(&argv[1..], &[])?;
            println!("{}", random_key());
            Ok(())
        }
        Some("renew") => renew(env, &argv[1..]),
        other => Err(plain(format!(
            "the kh testbed kubeadm double supports only `kubeadm certs certificate-key`, `check-expiration` and `renew`, not {other:?}"
        ))),
    }
}
