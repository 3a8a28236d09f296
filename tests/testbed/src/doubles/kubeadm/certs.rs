//! `kubeadm certs certificate-key`.

use super::*;

pub(super) fn certs_cmd(argv: &[String]) -> R<()> {
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
