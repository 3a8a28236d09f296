//! The Kubernetes certificates of the cluster, as `khctl certs check` shows
//! them: every control plane and worker of the held spec is asked, in
//! parallel and under one deadline, for the certificates on its disk
//! (`AgentApi::cluster_certs`); a node that cannot be asked is reported, never
//! skipped. [`attention`] judges the answers against
//! `certificates.renewBefore`; automatic renewal uses the same judgement.
//! Read-only: nothing here changes a host, so no lease is taken.

use std::time::Duration;

use kh::names::NodeName;
use kh::proto;
use kh::spec::NodeRole;

use crate::agents::explain;
use crate::error::CoordError;
use crate::Coordinator;

/// How long one node may take to answer; the nodes are asked in parallel, so
/// this bounds the whole check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The name the agents give the kubelet's own client certificate.
pub const KUBELET_CLIENT: &str = "kubelet-client";

/// Every node's certificates and what needs attention.
pub async fn check(coord: &Coordinator) -> Result<proto::CertsCheckResponse, CoordError> {
    let spec = crate::etcd::held_spec(coord)?;
    let now = kh::time::unix_ms(coord.clock.now()) as i64 / 1000;
    let nodes = futures::future::join_all(
        spec.nodes
            .iter()
            .filter(|n| n.role != NodeRole::LoadBalancer)
            .map(|n| async move {
                let (certs, error) = match read_node(coord, &n.name).await {
                    Ok(certs) => (certs, String::new()),
                    Err(e) => (vec![], e),
                };
                proto::NodeCerts {
                    node: n.name.clone(),
                    role: n.role.as_str().to_string(),
                    certs,
                    error,
                }
            }),
    )
    .await;
    let renew_before = spec.cert_renewal.renew_before;
    let attention = attention(&nodes, now, renew_before);
    Ok(proto::CertsCheckResponse {
        ok: attention.is_empty(),
        nodes,
        now_unix: now,
        renew_before_seconds: renew_before.as_secs(),
        attention,
    })
}

/// One node's certificates, or why they could not be read.
async fn read_node(coord: &Coordinator, node: &str) -> Result<Vec<proto::ClusterCert>, String> {
    let name = NodeName::new(node).map_err(|e| e.to_string())?;
    let rec = coord
        .registry
        .get(&name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!("node {node} is not enrolled; enroll it: `khctl token create --node {node}`")
        })?;
    let call = coord.agents.cluster_certs(&rec, CHECK_TIMEOUT);
    match tokio::time::timeout(CHECK_TIMEOUT, call).await {
        Ok(Ok(r)) => Ok(r.certs),
        Ok(Err(e)) => Err(explain(node, &e)),
        Err(_) => Err(format!(
            "the agent on {node} did not answer within {}s",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// What needs attention, in node order: nodes that could not be read,
/// certificates that could not be, have expired, or expire within
/// `renew_before` of `now_unix`; each with what fixes it.
pub fn attention(
    nodes: &[proto::NodeCerts],
    now_unix: i64,
    renew_before: Duration,
) -> Vec<proto::CertAttention> {
    let mut out = vec![];
    for n in nodes {
        if !n.error.is_empty() {
            out.push(proto::CertAttention {
                node: n.node.clone(),
                cert: String::new(),
                reason: "unreachable".into(),
                detail: n.error.clone(),
                fix: format!(
                    "bring the agent on {} back (`systemctl status kh-agent` there), then run `khctl certs check` again",
                    n.node
                ),
            });
            continue;
        }
        for c in &n.certs {
            let (reason, detail) = if !c.error.is_empty() {
                ("unreadable", c.error.clone())
            } else if c.not_after_unix <= now_unix {
                (
                    "expired",
                    format!("expired {} ago", residual(now_unix - c.not_after_unix)),
                )
            } else if ((c.not_after_unix - now_unix) as u64) < renew_before.as_secs() {
                (
                    "expiring",
                    format!(
                        "expires in {}, inside certificates.renewBefore ({})",
                        residual(c.not_after_unix - now_unix),
                        humantime::format_duration(renew_before)
                    ),
                )
            } else {
                continue;
            };
            out.push(proto::CertAttention {
                node: n.node.clone(),
                cert: c.name.clone(),
                reason: reason.into(),
                detail,
                fix: fix(&n.node, c, reason),
            });
        }
    }
    out
}

/// The certificates `kubeadm certs renew` can renew that are due: on each
/// node, those inside `renew_before` of `now_unix` or expired, that are not
/// CAs, not the kubelet's own, and whose CA key is on the node. As (node,
/// kubeadm's certificate name), in node order.
pub fn due_for_renewal(
    nodes: &[proto::NodeCerts],
    now_unix: i64,
    renew_before: Duration,
) -> Vec<(String, String)> {
    nodes
        .iter()
        .flat_map(|n| n.certs.iter().map(move |c| (n, c)))
        .filter(|(_, c)| {
            c.error.is_empty()
                && !c.is_ca
                && !c.externally_managed
                && c.name != KUBELET_CLIENT
                && c.not_after_unix.saturating_sub(now_unix) < renew_before.as_secs() as i64
        })
        .map(|(n, c)| (n.node.clone(), c.name.clone()))
        .collect()
}

fn fix(node: &str, c: &proto::ClusterCert, reason: &str) -> String {
    if reason == "unreadable" {
        return format!(
            "inspect {} on {node}; restore it from a backup, or renew it with `khctl certs renew {}`",
            c.path, c.name
        );
    }
    if c.is_ca {
        return format!(
            "a CA is not renewed by `kubeadm certs renew`: rotate {} by hand (https://kubernetes.io/docs/tasks/tls/manual-rotation-of-ca-certificates/)",
            c.name
        );
    }
    if c.name == KUBELET_CLIENT {
        // kubeadm certs renew leaves it alone since Kubernetes 1.17.
        return format!(
            "the kubelet renews its own client certificate (rotateCertificates); check the kubelet's log on {node}"
        );
    }
    if c.externally_managed {
        return format!(
            "the key of its CA {} is not on {node}, so kubeadm cannot renew it there: renew it where that CA's key is kept",
            c.ca
        );
    }
    "`khctl certs renew --all`".to_string()
}

/// A residual time the way kubeadm prints it (`364d`, `23h`, `9y`).
pub fn residual(secs: i64) -> String {
    kh::time::short_duration(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn cert(name: &str, not_after: i64) -> proto::ClusterCert {
        proto::ClusterCert {
            name: name.into(),
            path: format!("/etc/kubernetes/pki/{name}.crt"),
            not_before_unix: 0,
            not_after_unix: not_after,
            ca: "ca".into(),
            is_ca: false,
            externally_managed: false,
            error: String::new(),
        }
    }

    #[test]
    fn the_window_expiry_errors_and_unreachable_nodes_need_attention() {
        let now = 1_000 * DAY;
        let mut ext = cert("front-proxy-client", now + 5 * DAY);
        ext.externally_managed = true;
        let mut bad = cert("etcd-peer", 0);
        bad.error = "etcd/peer.crt holds no PEM certificate".into();
        let mut ca = cert("ca", now + 3650 * DAY);
        ca.is_ca = true;
        let nodes = vec![
            proto::NodeCerts {
                node: "cp-1".into(),
                role: "control-plane".into(),
                certs: vec![
                    cert("apiserver", now + 20 * DAY),
                    cert("admin.conf", now + 31 * DAY),
                    cert("scheduler.conf", now - 1),
                    ext,
                    bad,
                    ca,
                ],
                error: String::new(),
            },
            proto::NodeCerts {
                node: "w-1".into(),
                role: "worker".into(),
                certs: vec![cert(KUBELET_CLIENT, now + 2 * DAY)],
                error: String::new(),
            },
            proto::NodeCerts {
                node: "w-2".into(),
                role: "worker".into(),
                certs: vec![],
                error: "cannot reach the agent on w-2".into(),
            },
        ];
        let a = attention(&nodes, now, Duration::from_secs(30 * DAY as u64));
        let got: Vec<(&str, &str, &str)> = a
            .iter()
            .map(|x| (x.node.as_str(), x.cert.as_str(), x.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("cp-1", "apiserver", "expiring"),
                ("cp-1", "scheduler.conf", "expired"),
                ("cp-1", "front-proxy-client", "expiring"),
                ("cp-1", "etcd-peer", "unreadable"),
                ("w-1", KUBELET_CLIENT, "expiring"),
                ("w-2", "", "unreachable"),
            ]
        );
        assert_eq!(a[0].fix, "`khctl certs renew --all`");
        assert_eq!(
            a[0].detail,
            "expires in 20d, inside certificates.renewBefore (30days)"
        );
        assert_eq!(a[1].detail, "expired 1s ago");
        assert!(a[2].fix.contains("not on cp-1"), "{}", a[2].fix);
        assert!(a[3]
            .fix
            .contains("/etc/kubernetes/pki/etcd-peer.crt on cp-1"));
        assert!(a[4].fix.contains("kubelet"), "{}", a[4].fix);
        assert!(a[5].fix.contains("systemctl status kh-agent"));
        // A shorter window lets the 20-day certificate be.
        let a = attention(&nodes[..1], now, Duration::from_secs(7 * DAY as u64));
        assert!(!a.iter().any(|x| x.cert == "apiserver"));
        // Renewal takes only what kubeadm renews on that node.
        assert_eq!(
            due_for_renewal(&nodes, now, Duration::from_secs(30 * DAY as u64)),
            [
                ("cp-1".to_string(), "apiserver".to_string()),
                ("cp-1".to_string(), "scheduler.conf".to_string()),
            ]
        );
    }

    #[test]
    fn residual_times_read_like_kubeadm_s() {
        assert_eq!(residual(364 * DAY + 5), "364d");
        assert_eq!(residual(3650 * DAY), "10y");
        assert_eq!(residual(9 * 365 * DAY + 300 * DAY), "9y");
        assert_eq!(residual(23 * 3600 + 59), "23h");
        assert_eq!(residual(59), "59s");
        assert_eq!(residual(-5), "0s");
    }
}
