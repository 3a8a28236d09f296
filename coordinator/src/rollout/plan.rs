//! What a rollout would change: the one diff between the spec, what the
//! coordinator holds (the last accepted spec, the roles in the registry, the
//! load balancers it configured) and what the agents observe (which nodes
//! kubeadm has joined, and as what).
//!
//! Pure: the engine gathers the inputs, [`diff`] decides, and the same
//! [`Diff`] is printed by a dry run and acted on by the run. Every
//! difference is either carried out (after the plan is accepted) or refused;
//! one refusal stops the rollout before anything, the registry included,
//! has changed. Changing the role or the address of a joined node, removing
//! a joined node, and changing the Kubernetes version or a cluster-wide
//! setting of a built cluster are refused: each needs a workflow of its own.

use std::collections::{BTreeMap, BTreeSet};

use kh::proto;
use kh::spec::{ClusterSpec, Etcd, NodeRole};

use super::ops::Failure;

/// The plan phase that lists the differences.
pub const PHASE: &str = "changes";

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

/// The differences, and the registry roles to record once preflight passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub changes: Vec<Change>,
    /// Roles to write to the registry after the plan is accepted and
    /// preflight has passed: `None` clears a role.
    pub record_roles: Vec<(String, Option<NodeRole>)>,
    /// The CNI manifest changed since it was applied: apply it again.
    pub reapply_cni: bool,
}

impl Diff {
    pub fn refusals(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.refused)
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
        let mut f = Failure::spec(format!(
            "the spec asks for changes kh does not make to a running cluster; nothing was changed:\n{}",
            lines.join("\n")
        ));
        f.node = "cluster".into();
        f.step = "plan".into();
        f.hint = "change cluster.yaml as each line says, then run `khctl rollout -f cluster.yaml` again (`--dry-run` lists the differences)".into();
        Some(f)
    }
}

fn role_change_detail(name: &str, was: NodeRole, now: NodeRole, joined: bool) -> String {
    let how = if was == NodeRole::LoadBalancer {
        format!("first take it out of the load-balancer role (point spec.controlPlaneEndpoint elsewhere and stop HAProxy on {name})")
    } else {
        format!("first take it out of the cluster with `khctl reset --node {name}` (runs `kubeadm reset -f` there and removes its etcd member)")
    };
    format!(
        "{} as a {was}; the spec lists it as a {now}. Refused: kh does not change the role of a node in use. To change it, {how}, then list it as a {now} and run `khctl rollout -f cluster.yaml` again",
        if joined { "joined the cluster" } else { "serves the cluster" }
    )
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
    for (name, role) in gone {
        let role = role.unwrap_or(NodeRole::Worker);
        let not_supported = "removing a node is not supported yet. Put it back in cluster.yaml; to take it out of the cluster, run `khctl reset --node";
        let refusal = match observed.get(&name) {
            _ if role == NodeRole::LoadBalancer => held.lb_configured.contains(&name).then(|| format!(
                "a load balancer kh configured is not in the spec. Refused: {not_supported} {name}` is for Kubernetes nodes; stop HAProxy on it once spec.controlPlaneEndpoint no longer points at it"
            )),
            Some(Observed::Joined { control_plane }) => Some(format!(
                "joined the cluster as a {} and is not in the spec. Refused: {not_supported} {name}` first",
                if *control_plane { NodeRole::ControlPlane } else { NodeRole::Worker }
            )),
            Some(Observed::Unknown(why)) => Some(format!(
                "was a {role} and is not in the spec, and kh cannot tell whether it joined ({why}). Refused: {not_supported} {name}` first"
            )),
            Some(Observed::NotJoined) | None => None,
        };
        match refusal {
            Some(detail) => d.changes.push(Change {
                node: name,
                kind: "removal",
                refused: true,
                detail,
            }),
            None => {
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
            }
        }
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

    #[test]
    fn joined_nodes_removed_from_the_spec_are_refused_by_name() {
        let (held, observed) = built();
        let s = spec(
            "v1.32.0",
            &BUILT
                .iter()
                .filter(|n| n.0 != "cp-3" && n.0 != "w-2")
                .copied()
                .collect::<Vec<_>>(),
        );
        let d = diff(&s, &held, &observed, None);
        let r: Vec<(&str, &str)> = d.refusals().map(|c| (c.node.as_str(), c.kind)).collect();
        assert_eq!(r, [("cp-3", "removal"), ("w-2", "removal")]);
        let msg = d.refusal().unwrap().message;
        assert!(msg.contains("cp-3: joined the cluster as a control-plane and is not in the spec"));
        assert!(
            msg.contains("removing a node is not supported yet"),
            "{msg}"
        );
    }

    #[test]
    fn a_removed_node_that_never_joined_is_forgotten() {
        let (mut held, mut observed) = built();
        observed.insert("w-2".into(), Observed::NotJoined);
        held.roles.insert("w-9".into(), NodeRole::Worker);
        let s = spec(
            "v1.32.0",
            &BUILT
                .iter()
                .filter(|n| n.0 != "w-2")
                .copied()
                .collect::<Vec<_>>(),
        );
        let d = diff(&s, &held, &observed, None);
        assert!(d.refusal().is_none(), "{d:#?}");
        assert_eq!(
            d.record_roles,
            [("w-2".to_string(), None), ("w-9".to_string(), None)]
        );
    }

    #[test]
    fn a_removed_node_kh_cannot_ask_is_refused() {
        let (held, mut observed) = built();
        observed.insert("w-2".into(), Observed::Unknown("agent unreachable".into()));
        let s = spec(
            "v1.32.0",
            &BUILT
                .iter()
                .filter(|n| n.0 != "w-2")
                .copied()
                .collect::<Vec<_>>(),
        );
        let msg = diff(&s, &held, &observed, None).refusal().unwrap().message;
        assert!(
            msg.contains("w-2: was a worker") && msg.contains("agent unreachable"),
            "{msg}"
        );
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
