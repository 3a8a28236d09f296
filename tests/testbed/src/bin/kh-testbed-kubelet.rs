//! The kubelet double: runs a testbed host's static pods (see
//! `kh_testbed::kubelet`). Started by the testbed as systemd would start
//! kubelet: `kh-testbed-kubelet --root ROOT --node-dir DIR`.

fn main() {
    if let Err(e) = kh_testbed::kubelet::main(std::env::args().skip(1).collect()) {
        eprintln!("kh-testbed-kubelet: {e:#}");
        std::process::exit(1);
    }
}
