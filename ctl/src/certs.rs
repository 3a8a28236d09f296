//! `khctl certs ...`: the cluster's kubeadm certificates.

use clap::Subcommand;
use kh::proto::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::{certs_renew, help, Format};

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Renew the control planes' kubeadm certificates, one control plane at
    /// a time: `kubeadm certs renew`, then its static pods restarted (etcd,
    /// kube-apiserver, kube-controller-manager, kube-scheduler), each back
    /// before the next control plane. Works on an already expired cluster.
    /// Resumable: an interrupted renewal is finished with the same command.
    #[command(arg = help::output("`table` (default): live progress per control plane and step, then the outcome; `json`: nothing until the end, then one object for scripts: ok, failure, node, step, message, hint, dryRun, plan and every event"))]
    Renew(certs_renew::RenewArgs),
}

/// Runs one `khctl certs` command.
pub async fn run(
    client: &mut AdminClient<Channel>,
    addr: &str,
    cmd: CertsCmd,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        CertsCmd::Renew(args) => certs_renew::renew(client, addr, args, format).await,
    }
}
