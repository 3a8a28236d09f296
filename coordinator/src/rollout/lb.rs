//! Load-balancer nodes (`loadBalancer: {type: haproxy}`): every node with
//! role `loadbalancer` runs HAProxy with the control planes as backends,
//! configured by its agent's LoadBalancer step. kh re-renders the backends
//! whenever the control planes change: before `kubeadm init` (the first
//! control plane, which init itself reaches through the endpoint), after
//! each control-plane join once its apiserver is ready, after an etcd
//! replacement, and after a control plane is reset. With `type: external`
//! kh only checks that the endpoint is reachable.

use std::net::IpAddr;

use kh::proto::{self, run_step_request::Step};
use kh::spec::{ClusterSpec, LoadBalancerType, NodeSpec};

use super::ops::{url, Failure, Ops};
use super::phase::Phase;
use super::reporter::Reporter;
use crate::Coordinator;

/// Where every control plane's apiserver listens.
pub const APISERVER_PORT: u16 = 6443;
/// The rollout step name, in events and the persisted state.
pub const STEP: &str = "load-balancer";

/// The LoadBalancer step for load-balancer node `lb`: a frontend on the
/// endpoint's port, bound to the node's address when the endpoint names it
/// (on every address otherwise: a VIP or a DNS name in front of several
/// load balancers), and `backends` on 6443 in the spec's order.
pub fn config_for(spec: &ClusterSpec, lb: &NodeSpec, backends: &[&NodeSpec]) -> Step {
    let endpoint = spec.control_plane_endpoint.as_ref();
    let frontend_port = endpoint.map(|e| e.port).unwrap_or(APISERVER_PORT);
    let bind = endpoint
        .and_then(|e| e.host_ip())
        .filter(|ip| *ip == lb.address)
        .map(|ip: IpAddr| ip.to_string())
        .unwrap_or_default();
    Step::LoadBalancer(proto::LoadBalancerConfig {
        frontend_port: frontend_port as u32,
        bind_address: bind,
        backends: backends
            .iter()
            .map(|cp| proto::LoadBalancerBackend {
                name: cp.name.clone(),
                address: cp.address.to_string(),
                port: APISERVER_PORT as u32,
            })
            .collect(),
    })
}

/// The control planes of `spec` in the spec's order, limited to `names`.
fn in_spec_order<'a>(spec: &'a ClusterSpec, backends: &[&NodeSpec]) -> Vec<&'a NodeSpec> {
    spec.control_planes()
        .filter(|cp| backends.iter().any(|b| b.name == cp.name))
        .collect()
}

/// Renders `ready_control_planes` as the backends of every load-balancer
/// node of `spec`, in parallel; each node's HAProxy reloads only if its
/// config changed. Nothing to do with `loadBalancer: external`. Control
/// planes not in the spec (a replacement not yet recorded) are added after
/// the spec's own.
///
/// For the etcd-replacement workflow and other callers outside a rollout;
/// see [`refresh`] to find the ready control planes first.
pub async fn update_load_balancers(
    coord: &Coordinator,
    spec: &ClusterSpec,
    ready_control_planes: &[&NodeSpec],
) -> Result<(), Failure> {
    if spec.load_balancer != LoadBalancerType::Haproxy {
        return Ok(());
    }
    let backends = ordered(spec, ready_control_planes);
    let ops = Ops { coord };
    let results = futures::future::join_all(spec.load_balancers().map(|lb| {
        let ops = &ops;
        let step = config_for(spec, lb, &backends);
        async move { ops.step(&lb.name, STEP, step, false).await }
    }))
    .await;
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}

/// The spec's control planes among `ready`, then any others.
fn ordered<'a>(spec: &'a ClusterSpec, ready: &[&'a NodeSpec]) -> Vec<&'a NodeSpec> {
    let mut out = in_spec_order(spec, ready);
    for r in ready {
        if !out.iter().any(|o| o.name == r.name) {
            out.push(r);
        }
    }
    out
}

/// The control planes of `spec` whose apiserver answers `/readyz` now, each
/// asked through its own agent.
pub async fn ready_control_planes(coord: &Coordinator, spec: &ClusterSpec) -> Vec<NodeSpec> {
    let ops = Ops { coord };
    let checks = futures::future::join_all(spec.control_planes().map(|cp| {
        let ops = &ops;
        async move {
            ops.apiserver_ready(&cp.name, &url(cp.address, APISERVER_PORT))
                .await
                .is_ok()
                .then(|| cp.clone())
        }
    }))
    .await;
    checks.into_iter().flatten().collect()
}

/// Finds the control planes whose apiserver is ready and renders them on
/// every load balancer: what to call after any change of the control planes.
pub async fn refresh(coord: &Coordinator, spec: &ClusterSpec) -> Result<Vec<String>, Failure> {
    let ready = ready_control_planes(coord, spec).await;
    let refs: Vec<&NodeSpec> = ready.iter().collect();
    update_load_balancers(coord, spec, &refs).await?;
    Ok(ready.into_iter().map(|n| n.name).collect())
}

/// Within a rollout: renders `backends` on every load-balancer node as a
/// tracked step of `phase`, so progress shows per node and persists.
pub(crate) async fn configure(
    coord: &Coordinator,
    spec: &ClusterSpec,
    rep: &Reporter,
    phase: Phase,
    backends: &[&NodeSpec],
) -> Result<(), Failure> {
    if spec.load_balancer != LoadBalancerType::Haproxy {
        return Ok(());
    }
    let backends = ordered(spec, backends);
    let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    let ops = Ops { coord };
    let results = futures::future::join_all(spec.load_balancers().map(|lb| {
        let (ops, step) = (&ops, config_for(spec, lb, &backends));
        let names = &names;
        rep.tracked(phase, &lb.name, STEP, async move {
            let r = ops.step(&lb.name, STEP, step, false).await?;
            let how = if r.outcome == proto::Outcome::Unchanged as i32 {
                "unchanged"
            } else {
                "updated"
            };
            Ok(((), format!("HAProxy backends {how}: {}", names.join(", "))))
        })
    }))
    .await;
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {name: t}\nspec:\n  kubernetesVersion: v1.32.0\n  controlPlaneEndpoint: 10.0.0.5:8443\n  nodes:\n    - {name: cp-1, role: control-plane, address: 10.0.0.11}\n    - {name: cp-2, role: control-plane, address: 10.0.0.12}\n    - {name: cp-3, role: control-plane, address: 10.0.0.13}\n    - {name: lb-1, role: loadbalancer, address: 10.0.0.5}\n    - {name: lb-2, role: loadbalancer, address: 10.0.0.6}\n";

    #[test]
    fn backends_follow_the_spec_and_the_frontend_the_endpoint() {
        let spec = kh::spec::parse(SPEC).unwrap();
        let cps: Vec<&NodeSpec> = spec.control_planes().collect();
        let lbs: Vec<&NodeSpec> = spec.load_balancers().collect();
        let Step::LoadBalancer(c) = config_for(&spec, lbs[0], &ordered(&spec, &[cps[2], cps[0]]))
        else {
            panic!("not a load-balancer step")
        };
        assert_eq!(c.frontend_port, 8443);
        assert_eq!(c.bind_address, "10.0.0.5");
        let names: Vec<&str> = c.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["cp-1", "cp-3"]);
        assert!(c.backends.iter().all(|b| b.port == 6443));
        // The endpoint is not lb-2's address: it binds every address.
        let Step::LoadBalancer(c) = config_for(&spec, lbs[1], &[]) else {
            panic!("not a load-balancer step")
        };
        assert_eq!(c.bind_address, "");
    }
}
