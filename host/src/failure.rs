//! What kind of failure a step ended with, recognised here, where the
//! command and its stderr are known, so that callers branch on a type and
//! never on a tool's words.
//!
//! The texts matched below are the ones kubeadm and etcd really print (the
//! testbed's doubles print the same); the unit tests hold them verbatim.

use serde::{Deserialize, Serialize};

/// The kind of a step failure. The human message always travels beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Nothing more specific is known; read the message.
    Other,
    /// `kubeadm join` was refused its bootstrap token: expired, deleted by
    /// the token cleaner, or never known to this cluster. A new token helps.
    TokenRefused,
    /// `kubeadm join --control-plane` found no usable `kubeadm-certs`
    /// Secret: it expired (2 h), is missing, or is sealed with another
    /// certificate key. Uploading the certificates again helps.
    CertificateKey,
    /// etcd admits one learner at a time and already has one.
    LearnerLimit,
    /// etcd has no leader, or refuses a membership change because the
    /// cluster lacks (or would lose) a quorum of connected voting members.
    QuorumLost,
    /// A program the step needs is not on the agent's search path.
    CommandNotFound,
    /// A command ran out of its time, or etcd did not answer within its own.
    Timeout,
    /// `kubectl drain` could not evict every pod before its `--timeout`,
    /// usually because a PodDisruptionBudget refuses the eviction. The node
    /// stays cordoned; the blocking pods are in the report's notes.
    DrainBlocked,
}

/// Phrases kubeadm prints when discovery or the TLS bootstrap refuses the
/// bootstrap token.
const TOKEN_REFUSED: [&str; 3] = [
    // kubeadm's discovery, when the bootstrap signer has dropped (or never
    // added) the token's JWS signature from the cluster-info ConfigMap.
    "could not find a JWS signature in the cluster-info ConfigMap for token ID",
    // The same, in the words of newer kubeadm releases.
    "is invalid for this cluster or it has expired",
    // The apiserver refusing the bearer token during the TLS bootstrap or
    // while reading kubeadm-config with it.
    "Unauthorized",
];

/// Phrases kubeadm prints when the control-plane join cannot download the
/// shared certificates.
const CERTIFICATE_KEY: [&str; 3] = [
    "Secret \"kubeadm-certs\" was not found",
    "error decoding secret data with provided key",
    "the Secret does not include the required certificate or key",
];

const LEARNER_LIMIT: &str = "etcdserver: too many learner members in cluster";

const QUORUM_LOST: [&str; 2] = ["etcdserver: no leader", "etcdserver: unhealthy cluster"];

const ETCD_TIMEOUT: [&str; 2] = ["context deadline exceeded", "etcdserver: request timed out"];

/// What kubectl drain prints when an eviction is refused by a
/// PodDisruptionBudget (retried until the timeout), and when its
/// `--timeout` runs out with pods left to evict.
const DRAIN_BLOCKED: [&str; 2] = [
    "Cannot evict pod as it would violate the pod's disruption budget",
    "global timeout reached",
];

impl FailureKind {
    /// The kind of a failed command, from its argv and stderr. Token and
    /// certificate-key refusals are recognised for `kubeadm join` only,
    /// where the bootstrap token and the certificate key are the command's
    /// credentials; an "Unauthorized" from another command means something
    /// else (a broken admin.conf).
    pub fn of_command(argv: &[String], stderr: &str, timed_out: bool) -> Self {
        if timed_out {
            return FailureKind::Timeout;
        }
        let program = argv.first().map(String::as_str).unwrap_or_default();
        let join = program == "kubeadm" && argv.get(1).map(String::as_str) == Some("join");
        let etcd = join || program == "etcdctl";
        let drain = program == "kubectl" && argv.iter().any(|a| a == "drain");
        if drain && DRAIN_BLOCKED.iter().any(|p| stderr.contains(p)) {
            FailureKind::DrainBlocked
        } else if join && CERTIFICATE_KEY.iter().any(|p| stderr.contains(p)) {
            FailureKind::CertificateKey
        } else if join && TOKEN_REFUSED.iter().any(|p| stderr.contains(p)) {
            FailureKind::TokenRefused
        } else if etcd && stderr.contains(LEARNER_LIMIT) {
            FailureKind::LearnerLimit
        } else if etcd && QUORUM_LOST.iter().any(|p| stderr.contains(p)) {
            FailureKind::QuorumLost
        } else if etcd && ETCD_TIMEOUT.iter().any(|p| stderr.contains(p)) {
            FailureKind::Timeout
        } else {
            FailureKind::Other
        }
    }

    /// The kind's name as logs and `khctl` show it.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Other => "other",
            FailureKind::TokenRefused => "token-refused",
            FailureKind::CertificateKey => "certificate-key",
            FailureKind::LearnerLimit => "learner-limit",
            FailureKind::QuorumLost => "quorum-lost",
            FailureKind::CommandNotFound => "command-not-found",
            FailureKind::Timeout => "timeout",
            FailureKind::DrainBlocked => "drain-blocked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK_HINT: &str = "To see the stack trace of this error execute with --v=5 or higher";

    fn argv(words: &str) -> Vec<String> {
        words.split(' ').map(String::from).collect()
    }

    fn join(stderr: &str) -> FailureKind {
        FailureKind::of_command(
            &argv("kubeadm join --config /var/lib/kh-agent/kubeadm-join.yaml"),
            &format!("{stderr}\n{STACK_HINT}\n"),
            false,
        )
    }

    #[test]
    fn kubeadm_refusing_the_bootstrap_token_is_token_refused() {
        for stderr in [
            "error execution phase preflight: couldn't validate the identity of the API Server: could not find a JWS signature in the cluster-info ConfigMap for token ID \"abcdef\"",
            "error execution phase preflight: couldn't validate the identity of the API Server: token id \"abcdef\" is invalid for this cluster or it has expired. Use \"kubeadm token create\" on the control-plane node to create a new valid token",
            "error execution phase preflight: unable to fetch the kubeadm-config ConfigMap: failed to get config map: Unauthorized",
        ] {
            assert_eq!(join(stderr), FailureKind::TokenRefused, "{stderr}");
        }
    }

    #[test]
    fn a_missing_or_unreadable_kubeadm_certs_secret_is_a_certificate_key_failure() {
        for stderr in [
            "error execution phase control-plane-prepare/download-certs: error downloading certs: error downloading the secret: Secret \"kubeadm-certs\" was not found in the \"kube-system\" Namespace. This Secret might have expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a new one",
            "error execution phase control-plane-prepare/download-certs: error downloading certs: error decoding secret data with provided key: cipher: message authentication failed",
            "error execution phase control-plane-prepare/download-certs: error downloading certs: the Secret does not include the required certificate or key - name: ca.crt, path: /etc/kubernetes/pki/ca.crt",
        ] {
            assert_eq!(join(stderr), FailureKind::CertificateKey, "{stderr}");
        }
    }

    #[test]
    fn etcd_refusals_during_a_join_have_their_own_kinds() {
        assert_eq!(
            join("error execution phase control-plane-join/etcd: error creating local etcd static pod manifest file: etcdserver: too many learner members in cluster"),
            FailureKind::LearnerLimit
        );
        assert_eq!(
            join("error execution phase control-plane-join/etcd: error creating local etcd static pod manifest file: etcdserver: unhealthy cluster"),
            FailureKind::QuorumLost
        );
        assert_eq!(
            join("error execution phase control-plane-join/etcd: error creating local etcd static pod manifest file: context deadline exceeded"),
            FailureKind::Timeout
        );
    }

    #[test]
    fn etcdctl_errors_are_recognised() {
        let etcdctl = |stderr: &str| {
            FailureKind::of_command(
                &argv("etcdctl --endpoints=https://10.0.0.11:2379 member remove 8e9e05c52164694d"),
                stderr,
                false,
            )
        };
        assert_eq!(
            etcdctl("{\"level\":\"warn\",\"msg\":\"retrying of unary invoker failed\"}\nError: etcdserver: no leader\n"),
            FailureKind::QuorumLost
        );
        assert_eq!(
            etcdctl("Error: etcdserver: too many learner members in cluster\n"),
            FailureKind::LearnerLimit
        );
        assert_eq!(
            etcdctl("Error: context deadline exceeded\n"),
            FailureKind::Timeout
        );
        assert_eq!(
            etcdctl("Error: etcdserver: member not found\n"),
            FailureKind::Other
        );
    }

    #[test]
    fn a_drain_that_cannot_evict_before_its_timeout_is_drain_blocked() {
        let drain = argv("kubectl --kubeconfig /etc/kubernetes/admin.conf drain w-1 --ignore-daemonsets --delete-emptydir-data --timeout=300s");
        let pdb = "evicting pod default/web-0\nerror when evicting pods/\"web-0\" -n \"default\" (will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget.\n";
        assert_eq!(
            FailureKind::of_command(&drain, pdb, false),
            FailureKind::DrainBlocked
        );
        let timeout = "There are pending pods in node \"w-1\" when an error occurred: error when evicting pods/\"web-0\" -n \"default\": global timeout reached: 5m0s\npod/web-0\nerror: unable to drain node \"w-1\" due to error: error when evicting pods/\"web-0\" -n \"default\": global timeout reached: 5m0s, continuing command...\n";
        assert_eq!(
            FailureKind::of_command(&drain, timeout, false),
            FailureKind::DrainBlocked
        );
        // Another drain failure, and the same words from another command.
        assert_eq!(
            FailureKind::of_command(
                &drain,
                "Error from server (NotFound): nodes \"w-1\" not found\n",
                false
            ),
            FailureKind::Other
        );
        assert_eq!(
            FailureKind::of_command(&argv("kubectl uncordon w-1"), pdb, false),
            FailureKind::Other
        );
        assert_eq!(
            FailureKind::of_command(&drain, pdb, true),
            FailureKind::Timeout
        );
    }

    #[test]
    fn other_failures_and_other_commands_stay_other() {
        // A wrong CA pin is no reason for a new token.
        assert_eq!(
            join("error execution phase preflight: couldn't validate the identity of the API Server: cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"sha256:abab\" are pinned"),
            FailureKind::Other
        );
        // An admin.conf refused while creating a token is not the token's fault.
        assert_eq!(
            FailureKind::of_command(
                &argv("kubeadm token create --config /var/lib/kh-agent/kubeadm-token.yaml"),
                "failed to create or update bootstrap token with name bootstrap-token-abcdef: Unauthorized\n",
                false,
            ),
            FailureKind::Other
        );
        assert_eq!(
            FailureKind::of_command(&argv("kubeadm join --config x"), "", true),
            FailureKind::Timeout
        );
    }
}
