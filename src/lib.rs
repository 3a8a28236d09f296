//! The `kh` library: what every kh process shares and nothing more.
//!
//! It owns the wire contract (the generated `proto` module), the kh PKI
//! (identities in certificates, the CA, CSRs, the CA pin hash), the TLS
//! plumbing that turns a peer certificate into an [`pki::Identity`], the one
//! authorization layer, redacting secrets, and the validated names used at the
//! edges. It must not touch host files, spawn processes or keep state: those
//! belong to `kh-host`, the agent and the coordinator. The one file helper
//! here ([`fsutil`]) is how the agent and the coordinator write their own
//! private state files.

pub mod authz;
pub mod bounds;
pub mod codec;
pub mod fsutil;
pub mod khconfig;
pub mod kubeadm;
pub mod names;
pub mod pki;
pub mod secret;
pub mod spec;
pub mod time;
pub mod tls;
pub mod token;

/// Generated code for the `kh.v1` package.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("kh.v1");

    impl run_step_request::Step {
        /// Which step this is; its name comes from there.
        pub fn kind(&self) -> crate::StepKind {
            use crate::StepKind as K;
            use run_step_request::Step::*;
            match self {
                DisableSwap(_) => K::DisableSwap,
                KernelModules(_) => K::KernelModules,
                Sysctl(_) => K::Sysctl,
                ContainerdCgroup(_) => K::ContainerdCgroup,
                KubeadmInit(_) => K::KubeadmInit,
                KubeadmJoin(_) => K::KubeadmJoin,
                KubeadmReset(_) => K::KubeadmReset,
                TokenCreate(_) => K::TokenCreate,
                TokenDelete(_) => K::TokenDelete,
                UploadCerts(_) => K::UploadCerts,
                KubectlApply(_) => K::KubectlApply,
                KubectlDeleteNode(_) => K::KubectlDeleteNode,
                PlaceFiles(_) => K::PlaceFiles,
                EtcdMemberRemove(_) => K::EtcdMemberRemove,
                EtcdMoveLeader(_) => K::EtcdMoveLeader,
                LoadBalancer(_) => K::LoadBalancer,
                CertsRenew(_) => K::CertsRenew,
                RestartControlPlane(_) => K::RestartControlPlane,
                EtcdStopControlPlane(_) => K::EtcdStopControlPlane,
                EtcdRestore(_) => K::EtcdRestore,
                EtcdStartControlPlane(_) => K::EtcdStartControlPlane,
                EtcdRestoreDiscard(_) => K::EtcdRestoreDiscard,
                PackageSource(_) => K::PackageSource,
                PackageInstall(_) => K::PackageInstall,
                KubeadmUpgradePlan(_) => K::KubeadmUpgradePlan,
                KubeadmUpgradeApply(_) => K::KubeadmUpgradeApply,
                KubeadmUpgradeNode(_) => K::KubeadmUpgradeNode,
                KubectlDrain(_) => K::KubectlDrain,
                KubectlUncordon(_) => K::KubectlUncordon,
                RestartKubelet(_) => K::RestartKubelet,
            }
        }

        /// The step's name on the wire and in reports, metrics and the audit log.
        pub fn name(&self) -> &'static str {
            self.kind().name()
        }
    }

    /// The compiled descriptor set of every kh service, for tests and tooling.
    pub const DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kh_descriptor.bin"));
}

/// Quotes an input in an error message, cut to a readable length.
pub use bounds::echo;

/// Every kh step and its wire name. `kh-host` owns the list, since it runs
/// the steps; the coordinator and khctl name steps through this re-export.
pub use kh_host::StepKind;

/// The certificate names `kubeadm certs renew` takes (besides `all`).
pub use kh_host::kube::RENEWABLE_CERTS;

/// The version every kh binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
