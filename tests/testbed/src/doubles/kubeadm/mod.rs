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
use super::latency;
use crate::clock;
use crate::kube::config::{self, Cluster, EtcdMode, Init, Join, JoinCp, NodeReg, Taint, TokenSpec};
use crate::kube::etcdctl::Etcdctl;
use crate::kube::http::{Client, Credentials, Trust};
use crate::kube::kubeconfig::{self, User};
use crate::kube::manifest::{self, ApiServerPod, EtcdPod, MANIFESTS_DIR};
use crate::kube::pki::{self, CaPair, Leaf};
use crate::kube::{b64, write_file, NodeEnv};

mod certificates;
mod certs;
mod check_expiration;
mod helpers;
mod init;
mod join;
mod renew;
mod reset;
mod token;
mod upgrade;
mod upload_certs;
mod version;

use certificates::*;
use certs::*;
use check_expiration::*;
use helpers::*;
pub use init::SECRETS_FILE;
use init::*;
use join::*;
use renew::*;
use reset::*;
pub use token::table;
use token::*;
use upgrade::*;
use upload_certs::*;
use version::*;

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
        Some("certs") => certs_cmd(env, &argv[1..]),
        Some("reset") => reset(env, &argv[1..]),
        Some("upgrade") => upgrade(env, &argv[1..]),
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
