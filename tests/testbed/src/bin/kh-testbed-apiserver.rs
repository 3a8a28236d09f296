//! The kube-apiserver double (see `kh_testbed::apiserver`), started by the
//! kubelet double for the `kube-apiserver` static pod with the manifest's
//! command line.

fn main() {
    if let Err(e) = kh_testbed::apiserver::main(std::env::args().skip(1).collect()) {
        eprintln!("kube-apiserver: {e:#}");
        std::process::exit(1);
    }
}
