//! `khctl certs renew [--all | NAME...] [--dry-run] [--no-snapshot]`.

use kh::proto::admin_client::AdminClient;
use kh::proto::CertsRenewRequest;
use tonic::transport::Channel;

use crate::{explain, Failure, Format};

#[derive(clap::Args)]
pub struct RenewArgs {
    /// Renew every certificate kubeadm renews (exclusive with names).
    #[arg(long)]
    all: bool,
    /// kubeadm's certificate names: admin.conf, apiserver,
    /// apiserver-etcd-client, apiserver-kubelet-client,
    /// controller-manager.conf, etcd-healthcheck-client, etcd-peer,
    /// etcd-server, front-proxy-client, scheduler.conf, super-admin.conf.
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Print the plan (each control plane's renewal and restart, and the
    /// gate between them) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not take an etcd snapshot before the renewal.
    #[arg(long)]
    no_snapshot: bool,
}

/// The request, or why the flags do not make one: exactly one of --all or
/// names.
pub fn request(args: &RenewArgs) -> Result<CertsRenewRequest, Failure> {
    match (args.all, args.names.is_empty()) {
        (true, false) => Err(Failure::SpecInvalid(
            "--all and certificate names exclude each other; pass one or the other".into(),
        )),
        (false, true) => Err(Failure::SpecInvalid(format!(
            "name the certificates to renew, or pass --all; kubeadm's names: {}",
            kh::RENEWABLE_CERTS.join(", ")
        ))),
        _ => Ok(CertsRenewRequest {
            all: args.all,
            names: args.names.clone(),
            dry_run: args.dry_run,
            no_snapshot: args.no_snapshot,
        }),
    }
}

pub async fn renew(
    client: &mut AdminClient<Channel>,
    addr: &str,
    args: RenewArgs,
    format: Format,
) -> anyhow::Result<()> {
    let req = request(&args)?;
    let dry_run = req.dry_run;
    let stream = client
        .certs_renew(req)
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    crate::rollout::follow(
        stream,
        format,
        dry_run,
        std::collections::BTreeMap::new(),
        "Certificate renewal",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_of_all_or_names() {
        let args = |all: bool, names: &[&str]| RenewArgs {
            all,
            names: names.iter().map(|s| s.to_string()).collect(),
            dry_run: false,
            no_snapshot: false,
        };
        assert!(request(&args(true, &["apiserver"])).is_err());
        assert!(request(&args(false, &[])).is_err());
        assert!(request(&args(true, &[])).unwrap().all);
        assert_eq!(
            request(&args(false, &["apiserver"])).unwrap().names,
            vec!["apiserver".to_string()]
        );
    }
}
