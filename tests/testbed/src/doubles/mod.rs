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

/// What a (re)started kubelet does first: posts its Node's
/// `status.nodeInfo.kubeletVersion` (the installed kubelet's version) with
/// its own credentials (`/etc/kubernetes/kubelet.conf`). The Node is the one
/// whose InternalIP is the host's address. Returns why it could not (no
/// kubelet.conf yet, no reachable apiserver): a real kubelet retries, the
/// unit still starts.
pub fn post_kubelet_version(env: &crate::kube::NodeEnv) -> Result<(), String> {
    let conf = env.path("/etc/kubernetes/kubelet.conf");
    let target = crate::kube::kubeconfig::load(env, &conf).map_err(|e| format!("{e:#}"))?;
    let mut c = target.client().map_err(|e| format!("{e:#}"))?;
    c.timeout = std::time::Duration::from_secs(5);
    let ip = env.ip().ok_or("the host has no address")?.to_string();
    let nodes = client::get(&c, "/api/v1/nodes").map_err(|e| format!("{e:?}"))?;
    let mut node = nodes["items"]
        .as_array()
        .and_then(|items| {
            items.iter().find(|n| {
                n["status"]["addresses"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|a| a["type"] == "InternalIP" && a["address"] == ip.as_str())
                })
            })
        })
        .cloned()
        .ok_or_else(|| format!("no Node with InternalIP {ip}"))?;
    let v = env.version_of("kubelet");
    if node["status"]["nodeInfo"]["kubeletVersion"] == v.as_str() {
        return Ok(());
    }
    node["status"]["nodeInfo"]["kubeletVersion"] = serde_json::json!(v);
    node["status"]["nodeInfo"]["kubeProxyVersion"] = serde_json::json!(v);
    let name = node["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    client::put(&c, &format!("/api/v1/nodes/{name}"), &node).map_err(|e| format!("{e:?}"))?;
    Ok(())
}
