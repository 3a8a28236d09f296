//! What a rollout would change: the one diff between the spec, what the
//! coordinator holds (the last accepted spec, the roles in the registry, the
//! load balancers it configured) and what the agents observe (which nodes
//! kubeadm has joined, and as what).
//!
//! Pure: the engine gathers the inputs, [`diff`] decides, and the same
//! [`Diff`] is printed by a dry run and acted on by the run. Every
//! difference is either carried out (after the plan is accepted) or refused;
//! one refusal stops the rollout before anything, the registry included,
//! has changed. Changing the role or the address of a joined node, and
//! changing the Kubernetes version or a cluster-wide setting of a built
//! cluster are refused: each needs a workflow of its own.
//!
//! A joined node the spec no longer lists is a [`Removal`]: the rollout's
//! remove-nodes phase takes it out (drain, `kubeadm reset`, its etcd member,
//! its Node object, the load balancers), once the operator confirmed it.
//! Removing the control plane kubeadm init ran on, or control planes whose
//! removal would cost etcd its quorum ([`removal_order`]), is refused as a
//! precondition (`kind` [`PRECONDITION`]: exit 3, not a spec error).

use std::collections::{BTreeMap, BTreeSet};

use kh::proto;
use kh::spec::{ClusterSpec, Etcd, NodeRole};

use super::ops::Failure;

/// The plan phase that lists the differences.
pub const PHASE: &str = "changes";

/// The `kind` of a refusal that is a precondition of a removal (the first
/// control plane, etcd quorum, an unfinished operation on the node) rather
/// than a spec kh does not carry out: khctl exits 3 for it, not 2.
pub const PRECONDITION: &str = "precondition";

/// The steps of a node's removal, as the rollout state records them. Only
/// the remove-nodes phase records them in a rollout's state, so a gone node
/// with one of them recorded has a removal that started and must finish.
pub const REMOVAL_STEPS: &[&str] = &["drain", "kubeadm-reset", "etcd-member", "delete-node"];

/// What the coordinator holds about the cluster it built.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// The last spec a rollout accepted (updated by replacements).
    pub spec: Option<ClusterSpec>,
    /// The role the registry records for each enrolled node that has one.
    pub roles: BTreeMap<String, NodeRole>,
    /// Load-balancer nodes whose HAProxy a rollout configured.
    pub lb_configured: BTreeSet<String>,
    /// The SHA-256 (hex) of the CNI manifest a rollout applied, when it
    /// recorded one.
    pub cni_applied: Option<String>,
    /// Nodes whose removal an earlier rollout started (a step of
    /// [`REMOVAL_STEPS`] is recorded) and did not finish.
    pub removing: BTreeSet<String>,
}

/// The SHA-256 (hex) of a CNI manifest, as recorded when it is applied.
pub fn manifest_sha256(manifest: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, manifest))
}

/// How an applied CNI manifest's hash is recorded in its step's message.
pub fn cni_record(hash: &str) -> String {
    format!("manifest sha256 {hash}")
}

/// The hash a step message recorded with [`cni_record`].
pub fn cni_recorded(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("manifest sha256 ")?;
    let hash: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    (hash.len() == 64).then_some(hash)
}

/// What a node's agent reports about kubeadm's work there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// kubeadm joined it (it has a kubelet.conf); a control plane also has
    /// an apiserver manifest.
    Joined {
        control_plane: bool,
    },
    NotJoined,
    /// Its agent could not be asked; the text says why.
    Unknown(String),
}

impl Observed {
    pub fn from_status(s: &proto::NodeStatusResponse) -> Self {
        if s.kubelet_conf {
            Observed::Joined {
                control_plane: s.apiserver_manifest,
            }
        } else {
            Observed::NotJoined
        }
    }

    fn joined_role(&self) -> Option<NodeRole> {
        match self {
            Observed::Joined { control_plane } => Some(if *control_plane {
                NodeRole::ControlPlane
            } else {
                NodeRole::Worker
            }),
            _ => None,
        }
    }
}

/// One difference between the spec and the cluster, and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The node, or "cluster" for a cluster-wide setting.
    pub node: String,
    /// "role", "address", "removal", "addition", "version" or "setting".
    pub kind: &'static str,
    pub refused: bool,
    /// The difference and what is done about it, in the words both the dry
    /// run and the run print.
    pub detail: String,
}

impl Change {
    fn line(&self) -> String {
        format!("{}: {}", self.node, self.detail)
    }
}

/// A node the spec no longer lists that is (or may still be) part of the
/// cluster: the remove-nodes phase takes it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub node: String,
    pub role: NodeRole,
    /// Its agent answered, so its host can be drained and reset. Without it
    /// only the cluster's side is cleaned up (etcd member, Node object, load
    /// balancers).
    pub reachable: bool,
}

/// The differences, and the registry roles to record once preflight passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub changes: Vec<Change>,
    /// Joined nodes to take out of the cluster, in the order the spec of
    /// the cluster listed them. Their roles are cleared only once each is
    /// out.
    pub removals: Vec<Removal>,
    /// Roles to write to the registry after the plan is accepted and
    /// preflight has passed: `None` clears a role.
    pub record_roles: Vec<(String, Option<NodeRole>)>,
    /// The CNI manifest changed since it was applied: apply it again.
    pub reapply_cni: bool,
}

impl Diff {
    pub fn refusals(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| c.refused && c.kind != PRECONDITION)
    }

    /// The removals' refused preconditions, which stop the rollout as a
    /// precondition (exit 3) before anything changed.
    pub fn precondition_refusal(&self) -> Option<Failure> {
        let lines: Vec<String> = self
            .changes
            .iter()
            .filter(|c| c.refused && c.kind == PRECONDITION)
            .map(Change::line)
            .collect();
        if lines.is_empty() {
            return None;
        }
        Some(stop(
            "preflight",
            "plan",
            format!(
                "the spec removes nodes kh cannot take out safely now; nothing was changed:\n{}",
                lines.join("\n")
            ),
            "do as each line says, then run `khctl rollout -f cluster.yaml` again (`--dry-run` lists the removals)",
        ))
    }

    /// A precondition refusal of `node`'s removal, listed with the changes.
    pub fn refuse_removal(&mut self, node: &str, detail: String) {
        self.changes.push(Change {
            node: node.into(),
            kind: PRECONDITION,
            refused: true,
            detail,
        });
    }

    /// The refusal of a run whose removals the operator has not confirmed.
    pub fn unconfirmed(&self) -> Option<Failure> {
        if self.removals.is_empty() {
            return None;
        }
        let names: Vec<&str> = self.removals.iter().map(|r| r.node.as_str()).collect();
        Some(stop(
            "spec",
            "confirm-removals",
            format!(
                "the spec removes {} from the cluster (drained, reset and deleted; see the plan), and the removal was not confirmed; nothing was changed",
                names.join(", ")
            ),
            "re-run with --yes to confirm the removal (`khctl rollout -f cluster.yaml --yes`; on a terminal khctl asks), or put the nodes back in cluster.yaml",
        ))
    }

    /// The plan phase listing every difference (empty when there are none).
    pub fn phase(&self) -> proto::PlannedPhase {
        proto::PlannedPhase {
            name: PHASE.into(),
            steps: self
                .changes
                .iter()
                .map(|c| proto::PlannedStep {
                    node: c.node.clone(),
                    step: c.kind.into(),
                    state: if c.refused { "refused" } else { "pending" }.into(),
                    detail: c.detail.clone(),
                })
                .collect(),
        }
    }

    /// The failure that stops the rollout, when anything is refused.
    pub fn refusal(&self) -> Option<Failure> {
        let lines: Vec<String> = self.refusals().map(Change::line).collect();
        if lines.is_empty() {
            return None;
        }
        Some(stop(
            "spec",
            "plan",
            format!(
                "the spec asks for changes kh does not make to a running cluster; nothing was changed:\n{}",
                lines.join("\n")
            ),
            "change cluster.yaml as each line says, then run `khctl rollout -f cluster.yaml` again (`--dry-run` lists the differences)",
        ))
    }
}

/// A failure that stops a rollout at its plan, before any change.
fn stop(class: &'static str, step: &str, message: String, hint: &str) -> Failure {
    Failure {
        class,
        node: "cluster".into(),
        step: step.into(),
        message,
        hint: hint.into(),
        report: None,
    }
}

fn role_change_detail(name: &str, was: NodeRole, now: NodeRole, joined: bool) -> String {
    let how = if was == NodeRole::LoadBalancer {
        format!("first take it out of the load-balancer role (point spec.controlPlaneEndpoint elsewhere and stop HAProxy on {name})")
    } else {
        format!("first take it out of the cluster with `khctl reset --node {name}` (runs `kubeadm reset -f` there and removes its etcd member), or leave it out of cluster.yaml for one `khctl rollout --yes` (which drains, resets and deletes it)")
    };
    format!(
        "{} as a {was}; the spec lists it as a {now}. Refused: kh does not change the role of a node in use. To change it, {how}, then list it as a {now} and run `khctl rollout -f cluster.yaml` again",
        if joined { "joined the cluster" } else { "serves the cluster" }
    )
}

/// The order control planes leave etcd in, or the first removal that would
/// cost quorum: `(node, why)`.
///
/// They leave one at a time, the ones without a healthy member first.
/// Removing a member that is down never lowers how many more failures the
/// rest tolerate, and removing a healthy one never raises it, so in this
/// order the tolerance rises, then falls: no intermediate membership is
/// less safe than both the one the cluster has now and the one the spec
/// asks for, and it is enough that every single removal keeps quorum and
/// leaves a member. Each removal is checked again under the lease just
/// before it runs.
pub fn removal_order(
    members: &[proto::MemberInfo],
    removing: &[String],
) -> Result<Vec<String>, (String, String)> {
    let healthy = |n: &str| members.iter().any(|m| m.node == n && m.healthy);
    let mut order: Vec<String> = removing.to_vec();
    order.sort_by_key(|n| healthy(n));
    let mut current: Vec<proto::MemberInfo> = members.to_vec();
    for node in &order {
        let Some(member) = current.iter().find(|m| &m.node == node).cloned() else {
            continue;
        };
        let q = crate::etcd::quorum_without(&current, member.id);
        if q.voters_after == 0 {
            return Err((
                node.clone(),
                format!(
                    "removing its etcd member {} would leave etcd with no voting member. Refused: keep a joined control plane in cluster.yaml",
                    member.id_hex
                ),
            ));
        }
        if q.healthy_after < q.needed_after {
            return Err((
                node.clone(),
                format!(
                    "removing its etcd member {} would leave {} healthy of {} voting members where quorum needs {}. Refused: etcd would lose quorum. Bring the control planes that are down back (or replace them with `khctl etcd replace`) first, or remove fewer control planes",
                    member.id_hex, q.healthy_after, q.voters_after, q.needed_after
                ),
            ));
        }
        current.retain(|m| &m.node != node);
    }
    Ok(order)
}

/// Why an agent could not be asked, as the observation says.
fn why(o: Option<&Observed>) -> String {
    match o {
        Some(Observed::Unknown(why)) => why.clone(),
        _ => "not asked".into(),
    }
}

fn etcd_words(e: &Etcd) -> String {
    match e {
        Etcd::Stacked => "topology stacked".into(),
        Etcd::External { endpoints, .. } => {
            format!("topology external ({})", endpoints.join(", "))
        }
    }
}

/// Compares `spec` with what is held and observed. `observed` has an entry
/// for every node of the spec that runs Kubernetes and for every node the
/// held state names that the spec no longer lists. `cni_sha256` is the
/// hash of the CNI manifest sent with the spec.
pub fn diff(
    spec: &ClusterSpec,
    held: &Held,
    observed: &BTreeMap<String, Observed>,
    cni_sha256: Option<&str>,
) -> Diff {
    let mut d = Diff::default();
    let built = observed
        .values()
        .any(|o| matches!(o, Observed::Joined { .. }));
    let held_spec = held.spec.as_ref();

    for n in &spec.nodes {
        let seen = observed.get(&n.name);
        let held_node = held_spec.and_then(|h| h.node(&n.name));
        let recorded = held.roles.get(&n.name).copied();
        let held_role = held_node.map(|h| h.role).or(recorded);
        let configured_lb = held.lb_configured.contains(&n.name);

        // The role: what the node is now, observed first.
        let mut refused = false;
        if let Some(is) = seen.and_then(Observed::joined_role) {
            if is != n.role {
                refused = true;
                d.changes.push(Change {
                    node: n.name.clone(),
                    kind: "role",
                    refused,
                    detail: role_change_detail(&n.name, is, n.role, true),
                });
            }
        } else if held_role == Some(NodeRole::LoadBalancer)
            && configured_lb
            && n.role != NodeRole::LoadBalancer
        {
            refused = true;
            d.changes.push(Change {
                node: n.name.clone(),
                kind: "role",
                refused,
                detail: role_change_detail(&n.name, NodeRole::LoadBalancer, n.role, false),
            });
        } else if let Some(was) = held_role.filter(|r| *r != n.role) {
            d.changes.push(Change {
                node: n.name.clone(),
                kind: "role",
                refused: false,
                detail: format!(
                    "recorded as a {was}, listed as a {}: it has not joined, so it is recorded as a {} once preflight passes",
                    n.role, n.role
                ),
            });
        }
        if !refused && recorded != Some(n.role) {
            d.record_roles.push((n.name.clone(), Some(n.role)));
        }

        // The address, against the held spec.
        if let Some(h) = held_node.filter(|h| h.address != n.address) {
            let joined = matches!(seen, Some(Observed::Joined { .. }));
            let (refused, detail) = if joined {
                (true, format!(
                    "joined the cluster with address {}; the spec gives {}. Refused: its certificates' SANs, its etcd peer URL, its kubelet and the load-balancer backends all name {}. Keep address {} in cluster.yaml; to move {} to {}, take it out with `khctl reset --node {}`, then add it back with the new address",
                    h.address, n.address, h.address, h.address, n.name, n.address, n.name
                ))
            } else if n.role == NodeRole::LoadBalancer {
                (
                    false,
                    format!(
                        "address {} becomes {}: its HAProxy config is rendered for the new address",
                        h.address, n.address
                    ),
                )
            } else {
                (
                    false,
                    format!(
                        "address {} becomes {}: it has not joined, so it joins with {}",
                        h.address, n.address, n.address
                    ),
                )
            };
            d.changes.push(Change {
                node: n.name.clone(),
                kind: "address",
                refused,
                detail,
            });
        }

        if held_spec.is_some() && held_node.is_none() && !refused {
            let detail = match seen {
                Some(Observed::Joined { .. }) => {
                    format!("new in the spec; already joined as a {}", n.role)
                }
                _ if n.role == NodeRole::LoadBalancer => {
                    "new in the spec: HAProxy is configured on it".to_string()
                }
                _ => format!("new in the spec: joins as a {}", n.role),
            };
            d.changes.push(Change {
                node: n.name.clone(),
                kind: "addition",
                refused: false,
                detail,
            });
        }
    }

    // Nodes the held spec or the registry know that the spec no longer lists.
    let mut gone: BTreeMap<String, Option<NodeRole>> = BTreeMap::new();
    for n in held_spec.iter().flat_map(|h| h.nodes.iter()) {
        gone.insert(n.name.clone(), Some(n.role));
    }
    for (name, role) in &held.roles {
        gone.entry(name.clone()).or_insert(Some(*role));
    }
    gone.retain(|name, _| spec.node(name).is_none());
    let held_first = held_spec
        .and_then(|h| h.control_planes().next())
        .map(|n| n.name.clone());
    for (name, role) in gone {
        let role = role.unwrap_or(NodeRole::Worker);
        let observed_role = match observed.get(&name) {
            Some(Observed::Joined { control_plane }) => Some(if *control_plane {
                NodeRole::ControlPlane
            } else {
                NodeRole::Worker
            }),
            _ => None,
        };
        let removing = held.removing.contains(&name);
        let removal = match observed.get(&name) {
            _ if role == NodeRole::LoadBalancer => {
                if held.lb_configured.contains(&name) {
                    d.changes.push(Change {
                        node: name.clone(),
                        kind: "removal",
                        refused: true,
                        detail: format!(
                            "a load balancer kh configured is not in the spec. Refused: kh does not remove a load balancer; put it back in cluster.yaml, and stop HAProxy on {name} yourself once spec.controlPlaneEndpoint no longer points at it"
                        ),
                    });
                    continue;
                }
                None
            }
            Some(Observed::Joined { .. }) => Some(Removal {
                node: name.clone(),
                role: observed_role.unwrap_or(role),
                reachable: true,
            }),
            Some(Observed::Unknown(_)) => Some(Removal {
                node: name.clone(),
                role,
                reachable: false,
            }),
            Some(Observed::NotJoined) if removing => Some(Removal {
                node: name.clone(),
                role,
                reachable: true,
            }),
            Some(Observed::NotJoined) | None => None,
        };
        let Some(removal) = removal else {
            d.changes.push(Change {
                node: name.clone(),
                kind: "removal",
                refused: false,
                detail: format!(
                    "was a {role} and is not in the spec; it is not part of the cluster, so only its recorded role is cleared"
                ),
            });
            if held.roles.contains_key(&name) {
                d.record_roles.push((name, None));
            }
            continue;
        };
        if removal.role == NodeRole::ControlPlane && held_first.as_deref() == Some(name.as_str()) {
            d.refuse_removal(&name, format!(
                "is the control plane kubeadm init ran on (the first one of the spec this cluster was built with). Refused: the rollout treats the spec's first control plane as the cluster's origin. To remove it, first list another joined control plane first in cluster.yaml while {name} is still in it, run `khctl rollout -f cluster.yaml` (a joined control plane listed first runs no init: the rollout finds it initialized), then remove {name} from the spec"
            ));
            continue;
        }
        let how = match (removal.role, removal.reachable) {
            (NodeRole::ControlPlane, true) => "the load balancers stop sending to it, then it is drained, reset (`kubeadm reset -f`) and its etcd member removed under the control-plane lease, one control plane at a time, then its Node object is deleted".to_string(),
            (NodeRole::ControlPlane, false) => format!("its agent does not answer ({}), so its host cannot be drained or reset: the load balancers stop sending to it, its etcd member is removed under the control-plane lease and its Node object deleted; run `kubeadm reset -f` on the host when it is back", why(observed.get(&name))),
            (_, true) => "it is drained (through a control plane), reset (`kubeadm reset -f`), then its Node object is deleted".to_string(),
            (_, false) => format!("its agent does not answer ({}), so its host cannot be drained or reset: only its Node object is deleted; run `kubeadm reset -f` on the host when it is back", why(observed.get(&name))),
        };
        d.changes.push(Change {
            node: name.clone(),
            kind: "removal",
            refused: false,
            detail: format!(
                "{} and is not in the spec: removed from the cluster in the remove-nodes phase: {how}. It stays enrolled (`khctl nodes`, without a role), so it can be added back later",
                match (&observed_role, removing) {
                    (_, true) => format!("was a {} whose removal started earlier", removal.role),
                    (Some(r), _) => format!("joined the cluster as a {r}"),
                    (None, _) => format!("was a {}", removal.role),
                }
            ),
        });
        d.removals.push(removal);
    }

    // The first control plane is where `kubeadm init` runs: on a built
    // cluster it must be one that has joined, or init would start a second
    // cluster beside the first.
    if let Some(first) = spec.control_planes().next().filter(|_| built) {
        if !matches!(observed.get(&first.name), Some(Observed::Joined { .. })) {
            let joined: Vec<&str> = spec
                .control_planes()
                .filter(|n| {
                    matches!(
                        observed.get(&n.name),
                        Some(Observed::Joined {
                            control_plane: true
                        })
                    )
                })
                .map(|n| n.name.as_str())
                .collect();
            d.changes.push(Change {
                node: first.name.clone(),
                kind: "setting",
                refused: true,
                detail: format!(
                    "is the spec's first control plane but has not joined the cluster. Refused: the first control plane is where `kubeadm init` runs, and init there would start a second cluster; list a joined control plane first{}",
                    if joined.is_empty() { String::new() } else { format!(" ({})", joined.join(", ")) }
                ),
            });
        }
    }

    // The CNI manifest, against the one applied.
    if let (Some(was), Some(now), true) = (&held.cni_applied, cni_sha256, built) {
        if was != now {
            d.reapply_cni = true;
            d.changes.push(Change {
                node: "cluster".into(),
                kind: "cni",
                refused: false,
                detail: format!(
                    "spec.cni.manifest differs from the manifest applied (sha256 {} now {}): it is applied again with `kubectl apply`",
                    &was[..12.min(was.len())],
                    &now[..12.min(now.len())]
                ),
            });
        }
    }
    if held.cni_applied.is_some() && spec.cni.is_none() && built {
        d.changes.push(Change {
            node: "cluster".into(),
            kind: "cni",
            refused: false,
            detail: "spec.cni is gone: the CNI applied before stays; kh does not delete it (remove it with `kubectl delete -f` if you mean to)".into(),
        });
    }

    // Cluster-wide settings of a cluster kubeadm has built.
    if let (Some(h), true) = (held_spec, built) {
        if let (Some(was), Some(now)) = (&h.kubernetes_version, &spec.kubernetes_version) {
            if was != now {
                d.changes.push(Change {
                    node: "cluster".into(),
                    kind: "version",
                    refused: true,
                    detail: format!(
                        "spec.kubernetesVersion is {now}; the cluster runs {was}. Refused: `khctl rollout` does not change a built cluster's version; upgrade it with `khctl upgrade -f cluster.yaml`, or keep kubernetesVersion at {was}"
                    ),
                });
            }
        }
        let mut fixed = |field: &str, was: String, now: String| {
            if was != now {
                d.changes.push(Change {
                    node: "cluster".into(),
                    kind: "setting",
                    refused: true,
                    detail: format!(
                        "{field} is {now}; the cluster was built with {was}. Refused: kubeadm fixes it when the cluster is created; keep {field} at {was}"
                    ),
                });
            }
        };
        fixed("metadata.name", h.name.clone(), spec.name.clone());
        let ep = |s: &ClusterSpec| {
            s.control_plane_endpoint
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        fixed("spec.controlPlaneEndpoint", ep(h), ep(spec));
        fixed(
            "spec.networking.podSubnet",
            h.networking.pod_subnet.to_string(),
            spec.networking.pod_subnet.to_string(),
        );
        fixed(
            "spec.networking.serviceSubnet",
            h.networking.service_subnet.to_string(),
            spec.networking.service_subnet.to_string(),
        );
        if h.etcd != spec.etcd {
            fixed("spec.etcd", etcd_words(&h.etcd), etcd_words(&spec.etcd));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::tests::member;

    fn spec(version: &str, nodes: &[(&str, &str, &str)]) -> ClusterSpec {
        let mut y = format!("apiVersion: kh.io/v1alpha1\nkind: Cluster\nmetadata: {{name: t}}\nspec:\n  kubernetesVersion: {version}\n  controlPlaneEndpoint: 10.0.0.5:6443\n  nodes:\n");
        for (name, role, address) in nodes {
            y.push_str(&format!(
                "    - {{name: {name}, role: {role}, address: {address}}}\n"
            ));
        }
        kh::spec::parse(&y).unwrap()
    }

    const BUILT: &[(&str, &str, &str)] = &[
        ("cp-1", "control-plane", "10.0.0.11"),
        ("cp-2", "control-plane", "10.0.0.12"),
        ("cp-3", "control-plane", "10.0.0.13"),
        ("w-1", "worker", "10.0.0.21"),
        ("w-2", "worker", "10.0.0.22"),
        ("lb-1", "loadbalancer", "10.0.0.5"),
    ];

    /// The held state and observations of BUILT, fully rolled out.
    fn built() -> (Held, BTreeMap<String, Observed>) {
        let s = spec("v1.32.0", BUILT);
        let held = Held {
            roles: s.nodes.iter().map(|n| (n.name.clone(), n.role)).collect(),
            lb_configured: ["lb-1".to_string()].into(),
            spec: Some(s.clone()),
            cni_applied: None,
            removing: Default::default(),
        };
        let observed = s
            .nodes
            .iter()
            .filter(|n| n.role != NodeRole::LoadBalancer)
            .map(|n| {
                (
                    n.name.clone(),
                    Observed::Joined {
                        control_plane: n.role == NodeRole::ControlPlane,
                    },
                )
            })
            .collect();
        (held, observed)
    }

    fn with(changed: &[(&str, &str, &str)]) -> Vec<(&'static str, &'static str, &'static str)> {
        BUILT
            .iter()
            .map(|n| {
                changed
                    .iter()
                    .find(|c| c.0 == n.0)
                    .map(|c| {
                        let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into()) };
                        (leak(c.0), leak(c.1), leak(c.2))
                    })
                    .unwrap_or(*n)
            })
            .collect()
    }

    #[test]
    fn the_same_spec_on_a_built_cluster_is_no_difference() {
        let (held, observed) = built();
        let d = diff(&spec("v1.32.0", BUILT), &held, &observed, None);
        assert_eq!(d, Diff::default());
        assert!(d.refusal().is_none());
        assert!(d.phase().steps.is_empty());
    }

    #[test]
    fn a_joined_worker_relisted_as_a_control_plane_is_refused_with_the_two_steps() {
        let (held, observed) = built();
        let s = spec("v1.32.0", &with(&[("w-1", "control-plane", "10.0.0.21")]));
        let d = diff(&s, &held, &observed, None);
        let refused: Vec<&Change> = d.refusals().collect();
        assert_eq!(refused.len(), 1, "{d:#?}");
        assert_eq!((refused[0].node.as_str(), refused[0].kind), ("w-1", "role"));
        let f = d.refusal().unwrap();
        assert_eq!(f.class, "spec");
        assert!(f.message.contains("nothing was changed"), "{}", f.message);
        assert!(
            f.message.contains(
                "w-1: joined the cluster as a worker; the spec lists it as a control-plane"
            ),
            "{}",
            f.message
        );
        assert!(
            f.message.contains("`khctl reset --node w-1`"),
            "{}",
            f.message
        );
        // Nothing is recorded for a refused role.
        assert!(d.record_roles.is_empty(), "{:?}", d.record_roles);
        // The dry run lists it with the same words.
        let p = d.phase();
        assert_eq!(p.steps[0].state, "refused");
        assert!(f.message.contains(&p.steps[0].detail));
    }

    #[test]
    fn a_joined_control_plane_relisted_as_a_worker_is_refused_even_without_a_held_spec() {
        let (mut held, observed) = built();
        held.spec = None;
        held.roles.clear();
        let s = spec("v1.32.0", &with(&[("cp-3", "worker", "10.0.0.13")]));
        let d = diff(&s, &held, &observed, None);
        let r: Vec<(&str, &str)> = d.refusals().map(|c| (c.node.as_str(), c.kind)).collect();
        assert_eq!(r, [("cp-3", "role")]);
    }

    fn without(names: &[&str]) -> ClusterSpec {
        spec(
            "v1.32.0",
            &BUILT
                .iter()
                .filter(|n| !names.contains(&n.0))
                .copied()
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn joined_nodes_removed_from_the_spec_are_listed_as_removals() {
        let (held, observed) = built();
        let d = diff(&without(&["cp-3", "w-2"]), &held, &observed, None);
        assert!(d.refusal().is_none(), "{d:#?}");
        assert!(d.precondition_refusal().is_none(), "{d:#?}");
        assert_eq!(
            d.removals,
            [
                Removal {
                    node: "cp-3".into(),
                    role: NodeRole::ControlPlane,
                    reachable: true
                },
                Removal {
                    node: "w-2".into(),
                    role: NodeRole::Worker,
                    reachable: true
                },
            ]
        );
        let lines: Vec<(&str, &str, bool)> = d
            .changes
            .iter()
            .map(|c| (c.node.as_str(), c.kind, c.refused))
            .collect();
        assert_eq!(
            lines,
            [("cp-3", "removal", false), ("w-2", "removal", false)]
        );
        assert!(d.changes[0]
            .detail
            .starts_with("joined the cluster as a control-plane and is not in the spec: removed from the cluster in the remove-nodes phase"));
        assert!(d.changes[0]
            .detail
            .contains("etcd member removed under the control-plane lease"));
        assert!(d.changes[1]
            .detail
            .contains("drained (through a control plane), reset"));
        // Roles are cleared by the removal itself, once each node is out.
        assert!(d.record_roles.is_empty(), "{:?}", d.record_roles);
        // A run needs the operator's confirmation; the refusal names the
        // nodes and the fix.
        let f = d.unconfirmed().unwrap();
        assert_eq!(f.class, "spec");
        assert!(
            f.message
                .starts_with("the spec removes cp-3, w-2 from the cluster"),
            "{}",
            f.message
        );
        assert!(f.message.contains("nothing was changed"));
        assert!(f.hint.starts_with("re-run with --yes"), "{}", f.hint);
        // Nothing to confirm without removals.
        let (held, observed) = built();
        assert!(diff(&spec("v1.32.0", BUILT), &held, &observed, None)
            .unconfirmed()
            .is_none());
    }

    #[test]
    fn removing_the_control_plane_init_ran_on_is_refused_with_the_way_to_do_it() {
        let (held, observed) = built();
        let d = diff(&without(&["cp-1"]), &held, &observed, None);
        assert!(d.refusal().is_none(), "not a spec error: {d:#?}");
        assert!(d.removals.is_empty(), "{d:#?}");
        let f = d.precondition_refusal().unwrap();
        assert_eq!(f.class, "preflight");
        assert!(f.message.contains("nothing was changed"), "{}", f.message);
        assert!(
            f.message
                .contains("cp-1: is the control plane kubeadm init ran on"),
            "{}",
            f.message
        );
        assert!(
            f.message.contains("first list another joined control plane first in cluster.yaml while cp-1 is still in it"),
            "{}",
            f.message
        );
        // Listed as refused in the plan, in the same words.
        let p = d.phase();
        assert_eq!(
            (p.steps[0].step.as_str(), p.steps[0].state.as_str()),
            (PRECONDITION, "refused")
        );
        assert!(f.message.contains(&p.steps[0].detail));
        // Once another joined control plane is first in the held spec, cp-1
        // is an ordinary removal.
        let (mut held, observed) = built();
        let mut reordered = BUILT.to_vec();
        reordered.swap(0, 1);
        held.spec = Some(spec("v1.32.0", &reordered));
        let d = diff(&without(&["cp-1"]), &held, &observed, None);
        assert!(d.precondition_refusal().is_none(), "{d:#?}");
        assert_eq!(d.removals.len(), 1);
    }

    #[test]
    fn a_removed_node_that_never_joined_is_forgotten() {
        let (mut held, mut observed) = built();
        observed.insert("w-2".into(), Observed::NotJoined);
        held.roles.insert("w-9".into(), NodeRole::Worker);
        let d = diff(&without(&["w-2"]), &held, &observed, None);
        assert!(d.refusal().is_none(), "{d:#?}");
        assert!(d.removals.is_empty());
        assert_eq!(
            d.record_roles,
            [("w-2".to_string(), None), ("w-9".to_string(), None)]
        );
    }

    #[test]
    fn a_removal_that_started_is_finished_even_after_the_host_was_reset() {
        let (mut held, mut observed) = built();
        observed.insert("w-2".into(), Observed::NotJoined);
        held.removing.insert("w-2".into());
        let d = diff(&without(&["w-2"]), &held, &observed, None);
        assert_eq!(d.removals.len(), 1, "{d:#?}");
        assert!(
            d.changes[0]
                .detail
                .starts_with("was a worker whose removal started earlier"),
            "{}",
            d.changes[0].detail
        );
        assert!(d.record_roles.is_empty());
    }

    #[test]
    fn a_removed_node_kh_cannot_ask_is_removed_without_its_host() {
        let (held, mut observed) = built();
        observed.insert("w-2".into(), Observed::Unknown("agent unreachable".into()));
        observed.insert("cp-3".into(), Observed::Unknown("agent unreachable".into()));
        let d = diff(&without(&["cp-3", "w-2"]), &held, &observed, None);
        assert!(
            d.refusal().is_none() && d.precondition_refusal().is_none(),
            "{d:#?}"
        );
        assert!(d.removals.iter().all(|r| !r.reachable), "{d:#?}");
        assert_eq!(d.removals[0].role, NodeRole::ControlPlane);
        assert!(d.changes[1].detail.contains("its agent does not answer (agent unreachable), so its host cannot be drained or reset: only its Node object is deleted; run `kubeadm reset -f` on the host when it is back"), "{}", d.changes[1].detail);
        assert!(
            d.changes[0]
                .detail
                .contains("its etcd member is removed under the control-plane lease"),
            "{}",
            d.changes[0].detail
        );
    }

    #[test]
    fn a_configured_load_balancer_removed_from_the_spec_is_refused() {
        let (held, observed) = built();
        let d = diff(&without(&["lb-1"]), &held, &observed, None);
        let r: Vec<(&str, &str)> = d.refusals().map(|c| (c.node.as_str(), c.kind)).collect();
        assert_eq!(r, [("lb-1", "removal")]);
        assert!(d.removals.is_empty());
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn control_planes_leave_one_at_a_time_the_ones_that_are_down_first() {
        let five: Vec<proto::MemberInfo> = (1..=5)
            .map(|i| member(i, &format!("cp-{i}"), i != 4))
            .collect();
        // Down first: removing cp-4 (down) then cp-5 keeps 3 of 3 healthy.
        assert_eq!(
            removal_order(&five, &names(&["cp-5", "cp-4"])).unwrap(),
            ["cp-4", "cp-5"]
        );
        // One of three, all healthy: quorum holds (2 of 2).
        let three: Vec<proto::MemberInfo> = (1..=3)
            .map(|i| member(i, &format!("cp-{i}"), true))
            .collect();
        assert_eq!(removal_order(&three, &names(&["cp-3"])).unwrap(), ["cp-3"]);
        // Two of three, serially: 2 of 2, then 1 of 1.
        assert_eq!(
            removal_order(&three, &names(&["cp-2", "cp-3"])).unwrap(),
            ["cp-2", "cp-3"]
        );
        // All of them: no member would be left.
        let (node, why) = removal_order(&three, &names(&["cp-1", "cp-2", "cp-3"])).unwrap_err();
        assert_eq!(node, "cp-3");
        assert!(why.contains("no voting member"), "{why}");
        // A healthy one while another is down: 1 of 2 healthy, quorum lost.
        let mut degraded = three.clone();
        degraded[0].healthy = false;
        let (node, why) = removal_order(&degraded, &names(&["cp-3"])).unwrap_err();
        assert_eq!(node, "cp-3");
        assert!(
            why.contains("would leave 1 healthy of 2 voting members where quorum needs 2"),
            "{why}"
        );
        // A node without a member (already gone) costs nothing.
        assert_eq!(removal_order(&three, &names(&["cp-9"])).unwrap(), ["cp-9"]);
    }

    #[test]
    fn no_intermediate_membership_is_less_safe_than_the_final_one() {
        // Every mix of healthy and down members of up to 7, removing any
        // subset: in the chosen order each step's tolerance is at least the
        // lower of the starting and the final one's.
        for n in 1..=7u64 {
            for down in 0..(1u32 << n) {
                let members: Vec<proto::MemberInfo> = (0..n)
                    .map(|i| member(i + 1, &format!("cp-{i}"), down & (1 << i) == 0))
                    .collect();
                for removing in 0..(1u32 << n) {
                    let which: Vec<String> = (0..n)
                        .filter(|i| removing & (1 << i) != 0)
                        .map(|i| format!("cp-{i}"))
                        .collect();
                    let Ok(order) = removal_order(&members, &which) else {
                        continue;
                    };
                    if order.is_empty() {
                        continue;
                    }
                    let tolerance = |left: &[proto::MemberInfo]| {
                        let healthy = left.iter().filter(|m| m.healthy).count() as isize;
                        healthy - (left.len() / 2 + 1) as isize
                    };
                    let mut left = members.clone();
                    let start = tolerance(&left);
                    let mut seen = vec![];
                    for node in &order {
                        left.retain(|m| &m.node != node);
                        seen.push(tolerance(&left));
                    }
                    let last = *seen.last().unwrap();
                    assert!(
                        seen.iter().all(|t| *t >= last.min(start) && *t >= 0),
                        "{n} {down:b} {removing:b}: {start} then {seen:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_version_change_of_a_built_cluster_is_refused_naming_the_running_version() {
        let (held, observed) = built();
        let d = diff(&spec("v1.33.0", BUILT), &held, &observed, None);
        let f = d.refusal().unwrap();
        assert!(
            f.message.contains("upgrade it with `khctl upgrade -f cluster.yaml`, or keep kubernetesVersion at v1.32.0"),
            "{}",
            f.message
        );
        // Before anything joined, the version is the spec's to choose.
        let observed = observed
            .keys()
            .map(|k| (k.clone(), Observed::NotJoined))
            .collect();
        assert!(diff(&spec("v1.33.0", BUILT), &held, &observed, None)
            .refusal()
            .is_none());
    }

    #[test]
    fn an_address_change_is_refused_when_joined_and_carried_out_before() {
        let (held, mut observed) = built();
        let s = spec("v1.32.0", &with(&[("w-1", "worker", "10.0.0.31")]));
        let msg = diff(&s, &held, &observed, None).refusal().unwrap().message;
        assert!(
            msg.contains(
                "w-1: joined the cluster with address 10.0.0.21; the spec gives 10.0.0.31"
            ),
            "{msg}"
        );
        observed.insert("w-1".into(), Observed::NotJoined);
        let d = diff(&s, &held, &observed, None);
        assert!(d.refusal().is_none());
        assert_eq!(d.changes[0].kind, "address");
        assert!(d.changes[0].detail.contains("joins with 10.0.0.31"));
    }

    #[test]
    fn a_configured_load_balancer_listed_as_a_worker_is_refused_and_not_recorded() {
        let (held, observed) = built();
        let s = spec("v1.32.0", &with(&[("lb-1", "worker", "10.0.0.5")]));
        let d = diff(&s, &held, &observed, None);
        let r: Vec<(&str, &str)> = d.refusals().map(|c| (c.node.as_str(), c.kind)).collect();
        assert_eq!(r, [("lb-1", "role")]);
        assert!(d.record_roles.is_empty());
    }

    #[test]
    fn a_recorded_role_of_a_node_that_never_joined_changes_after_preflight() {
        let (mut held, mut observed) = built();
        held.roles.insert("w-3".into(), NodeRole::LoadBalancer);
        observed.insert("w-3".into(), Observed::NotJoined);
        let mut nodes = BUILT.to_vec();
        nodes.push(("w-3", "worker", "10.0.0.23"));
        let d = diff(&spec("v1.32.0", &nodes), &held, &observed, None);
        assert!(d.refusal().is_none(), "{d:#?}");
        assert_eq!(
            d.record_roles,
            [("w-3".to_string(), Some(NodeRole::Worker))]
        );
        let kinds: Vec<&str> = d.changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["role", "addition"]);
    }

    #[test]
    fn a_new_first_control_plane_on_a_built_cluster_is_refused() {
        let (held, mut observed) = built();
        observed.insert("cp-0".into(), Observed::NotJoined);
        let mut nodes = vec![("cp-0", "control-plane", "10.0.0.10")];
        nodes.extend_from_slice(BUILT);
        let d = diff(&spec("v1.32.0", &nodes), &held, &observed, None);
        let r: Vec<(&str, &str)> = d.refusals().map(|c| (c.node.as_str(), c.kind)).collect();
        assert_eq!(r, [("cp-0", "setting")], "{d:#?}");
        assert!(d
            .changes
            .iter()
            .any(|c| c.detail.contains("(cp-1, cp-2, cp-3)")));
        // Listed after a joined one, it is an addition.
        let mut nodes = BUILT.to_vec();
        nodes.push(("cp-0", "control-plane", "10.0.0.10"));
        assert!(diff(&spec("v1.32.0", &nodes), &held, &observed, None)
            .refusal()
            .is_none());
    }

    #[test]
    fn a_changed_cni_manifest_is_applied_again() {
        let (mut held, observed) = built();
        let (old, new) = (manifest_sha256(b"a"), manifest_sha256(b"b"));
        held.cni_applied = cni_recorded(&format!("applied cni ({})", cni_record(&old)));
        assert_eq!(held.cni_applied.as_deref(), Some(old.as_str()));
        let mut s = spec("v1.32.0", BUILT);
        s.cni = Some(kh::spec::Cni {
            manifest: "cni.yaml".into(),
        });
        let same = diff(&s, &held, &observed, Some(&old));
        assert!(!same.reapply_cni && same.changes.is_empty(), "{same:#?}");
        let d = diff(&s, &held, &observed, Some(&new));
        assert!(d.reapply_cni);
        assert!(d.refusal().is_none());
        assert_eq!((d.changes[0].kind, d.changes[0].refused), ("cni", false));
        // Without a CNI in the spec, the applied one stays, and the plan says so.
        s.cni = None;
        let d = diff(&s, &held, &observed, None);
        assert!(!d.reapply_cni);
        assert!(d.changes[0].detail.contains("kh does not delete it"));
    }

    #[test]
    fn cluster_wide_settings_of_a_built_cluster_are_refused() {
        let (held, observed) = built();
        let mut s = spec("v1.32.0", BUILT);
        s.name = "other".into();
        s.networking.pod_subnet = "10.100.0.0/16".parse().unwrap();
        let d = diff(&s, &held, &observed, None);
        let fields: Vec<&str> = d
            .refusals()
            .map(|c| c.detail.split(' ').next().unwrap())
            .collect();
        assert_eq!(fields, ["metadata.name", "spec.networking.podSubnet"]);
    }
}
