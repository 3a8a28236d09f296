//! The command-line doubles for tools that cannot be installed here:
//! `kubeadm`, `kubectl` and `kubelet --version` (the host-tool doubles
//! `systemctl`, `modprobe` and `swapoff` live in the `kh-testbed-double`
//! binary). Their contract is tests/testbed/CONTRACT.md.

pub mod args;
pub mod client;
pub mod haproxy;
pub mod kubeadm;
pub mod kubectl;
pub mod latency;
pub mod packages;

/// `kubelet --version` (and `kubelet version`): `Kubernetes v1.32.0`.
pub fn kubelet(env: &crate::kube::NodeEnv, args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("--version") | Some("version") => {
            println!("Kubernetes {}", env.version_of("kubelet"));
            0
        }
        _ => {
            eprintln!("kubelet: the kh testbed runs the kubelet double as kh-testbed-kubelet; this command supports only --version");
            1
        }
    }
}
