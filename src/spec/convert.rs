//! Parsing and validation: the raw YAML shape into the validated [`ClusterSpec`].

use super::*;

/// Parses and validates a cluster spec. YAML and shape errors (syntax, unknown
/// fields, wrong types) stop parsing and come alone; validation errors are all
/// collected.
pub fn parse(text: &str) -> Result<ClusterSpec, SpecErrors> {
    let single = |path: &str, message: String| SpecErrors {
        errors: vec![SpecError::new(path, message)],
    };
    // A syntax error has no field path: a first pass that only checks the
    // YAML keeps the typed pass from blaming whatever field it was reading.
    if let Err(e) = serde_yaml::from_str::<serde::de::IgnoredAny>(text) {
        return Err(single(DOCUMENT, e.to_string()));
    }
    if serde_yaml::from_str::<Option<serde::de::IgnoredAny>>(text).is_ok_and(|v| v.is_none()) {
        return Err(single(
            DOCUMENT,
            format!("the spec is empty; start with apiVersion: {API_VERSION}, kind: {KIND}, metadata.name and spec.nodes"),
        ));
    }
    let raw: RawCluster = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(
        text,
    ))
    .map_err(|e| {
        let path = e.path().to_string();
        // serde_path_to_error prints the document root as ".", which
        // reads like a typo in a `path: message` line.
        let path = if path == "." {
            DOCUMENT.to_string()
        } else {
            path
        };
        let message = e.into_inner().to_string();
        let message = strip_yaml_path(&message, &path).to_string();
        single(&path, message)
    })?;
    let mut errors = Errors::default();
    match convert(raw, &mut errors) {
        Some(spec) if errors.0.is_empty() => Ok(spec),
        _ => Err(SpecErrors { errors: errors.0 }),
    }
}

/// The path of errors that concern the whole document rather than a field.
const DOCUMENT: &str = "(document)";

/// serde_yaml prefixes its messages with its own idea of the path (the
/// enclosing mapping for an unknown field). The line already starts with the
/// more precise path from serde_path_to_error, so the prefix only repeats it.
fn strip_yaml_path<'a>(message: &'a str, path: &str) -> &'a str {
    match message.split_once(": ") {
        Some((head, rest)) if !head.is_empty() && !head.contains(' ') && path.starts_with(head) => {
            rest
        }
        _ => message,
    }
}

#[derive(Default)]
struct Errors(Vec<SpecError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError::new(path, message));
    }
}

/// Returns the spec when every part converted; errors are collected in `errs`
/// either way, in document order.
fn convert(raw: RawCluster, errs: &mut Errors) -> Option<ClusterSpec> {
    match raw.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => errs.push(
            "apiVersion",
            format!(
                "{} is not a version this kh reads; set apiVersion: {API_VERSION}",
                crate::echo(other)
            ),
        ),
        None => errs.push(
            "apiVersion",
            format!("missing; add apiVersion: {API_VERSION}"),
        ),
    }
    match raw.kind.as_deref() {
        Some(KIND) => {}
        Some(other) => errs.push(
            "kind",
            format!(
                "{} is not a kh cluster spec; set kind: {KIND}",
                crate::echo(other)
            ),
        ),
        None => errs.push("kind", format!("missing; add kind: {KIND}")),
    }
    let name = match raw.metadata.and_then(|m| m.name) {
        Some(name) if is_dns_label(&name) => Some(name),
        Some(name) => {
            errs.push("metadata.name", format!("{} is not a DNS-1123 label; use lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit, e.g. prod", crate::echo(&name)));
            None
        }
        None => {
            errs.push(
                "metadata.name",
                "missing; name the cluster, e.g. metadata: {name: prod}",
            );
            None
        }
    };
    let Some(spec) = raw.spec else {
        errs.push(
            "spec",
            format!("missing; add spec: with at least the nodes, e.g. spec: {{nodes: [{NODE_EXAMPLE}]}}"),
        );
        return None;
    };

    let kubernetes_version = match spec.kubernetes_version {
        None => Ok(None),
        Some(v) => KubeVersion::parse(&v).map(Some).map_err(|e| {
            errs.push("spec.kubernetesVersion", format!("kubernetesVersion {e}"));
        }),
    };
    let control_plane_endpoint = match spec.control_plane_endpoint {
        None => Ok(None),
        Some(ep) => Endpoint::parse(&ep).map(Some).map_err(|e| {
            // An IPv6 example for an IPv6 mistake; otherwise the usual name.
            let example = if ep.starts_with('[') || ep.matches(':').count() > 1 {
                "[fd00::10]:6443"
            } else {
                ENDPOINT_EXAMPLE
            };
            errs.push(
                "spec.controlPlaneEndpoint",
                format!("controlPlaneEndpoint {e}, e.g. {example}"),
            );
        }),
    };
    let networking = convert_networking(spec.networking.unwrap_or_default(), errs);
    let (certificates, cert_renewal) = match spec.certificates {
        None => (CertDistribution::UploadCerts, Ok(CertRenewal::default())),
        Some(c) => (
            c.distribution.unwrap_or(CertDistribution::UploadCerts),
            convert_renewal(c.renew_before.as_deref(), c.auto_renew, errs),
        ),
    };
    let mut raw_etcd = spec.etcd.unwrap_or_default();
    let etcd_snapshots = raw_etcd
        .snapshots
        .take()
        .map(|raw| convert_snapshots(raw, &raw_etcd, errs))
        .transpose();
    let etcd = convert_etcd(raw_etcd, errs);
    let cni = match spec.cni {
        None => Ok(None),
        Some(RawCni {
            manifest: Some(manifest),
        }) if !manifest.as_os_str().is_empty() => Ok(Some(Cni { manifest })),
        Some(_) => {
            errs.push("spec.cni.manifest", "missing; give the CNI manifest's path relative to this file, e.g. ./cni/flannel.yaml, or remove cni to install one yourself");
            Err(())
        }
    };
    let explicit_lb = spec.load_balancer.and_then(|lb| lb.kind);
    let worker_concurrency = match spec.rollout.and_then(|r| r.worker_concurrency) {
        None => Ok(DEFAULT_WORKER_CONCURRENCY),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_WORKER_CONCURRENCY).contains(n))
            .ok_or_else(|| {
                errs.push(
                    "spec.rollout.workerConcurrency",
                    format!("{n} is out of range; use 1 to {MAX_WORKER_CONCURRENCY} (default {DEFAULT_WORKER_CONCURRENCY})"),
                );
            }),
    };

    let upgrade = match spec.upgrade.and_then(|u| u.max_unavailable) {
        None => Ok(UpgradeSettings::default()),
        Some(v) => convert_max_unavailable(&v)
            .map(|max_unavailable| UpgradeSettings { max_unavailable })
            .map_err(|why| errs.push("spec.upgrade.maxUnavailable", why)),
    };

    let (nodes, roles) = convert_nodes(spec.nodes, networking.as_ref().ok(), errs);
    let spares = convert_spares(spec.spares, nodes.as_deref(), errs);
    let remediation = convert_remediation(spec.remediation, errs);

    // Role checks are only meaningful when every node's role is known: a node
    // missing its role may be the very control plane or load balancer.
    let load_balancer = roles.as_ref().map(|roles| {
        let lb_nodes: Vec<usize> = (0..roles.len())
            .filter(|&i| roles[i] == NodeRole::LoadBalancer)
            .collect();
        if !roles.is_empty() && !roles.contains(&NodeRole::ControlPlane) {
            errs.push(
                "spec.nodes",
                "no node has role control-plane; give at least one node role: control-plane (three for high availability)",
            );
        }
        let lb = explicit_lb.unwrap_or(if lb_nodes.is_empty() {
            LoadBalancerType::External
        } else {
            LoadBalancerType::Haproxy
        });
        match lb {
            LoadBalancerType::Haproxy if lb_nodes.is_empty() => errs.push(
                "spec.loadBalancer.type",
                "haproxy needs at least one node with role loadbalancer; add one, or set type: external if a load balancer outside kh fronts the control planes",
            ),
            LoadBalancerType::External => {
                for i in lb_nodes {
                    errs.push(
                        format!("spec.nodes[{i}].role"),
                        "loadbalancer nodes need loadBalancer.type: haproxy, but it is external; remove the node or set loadBalancer.type: haproxy",
                    );
                }
            }
            LoadBalancerType::Haproxy => {}
        }
        lb
    });

    Some(ClusterSpec {
        name: name?,
        kubernetes_version: kubernetes_version.ok()?,
        control_plane_endpoint: control_plane_endpoint.ok()?,
        networking: networking.ok()?,
        etcd: etcd?,
        certificates,
        cert_renewal: cert_renewal.ok()?,
        cni: cni.ok()?,
        load_balancer: load_balancer?,
        worker_concurrency: worker_concurrency.ok()?,
        upgrade: upgrade.ok()?,
        nodes: nodes?,
        etcd_snapshots: etcd_snapshots.ok()?,
        spares: spares.ok()?,
        remediation: remediation.ok()?,
    })
}

/// `spares`: valid node names, each once, none of them a node of the spec.
fn convert_spares(
    raw: Option<Vec<String>>,
    nodes: Option<&[NodeSpec]>,
    errs: &mut Errors,
) -> Result<Vec<String>, ()> {
    let mut ok = true;
    let mut out: Vec<String> = vec![];
    for (i, name) in raw.unwrap_or_default().into_iter().enumerate() {
        let path = format!("spec.spares[{i}]");
        if NodeName::new(&name).is_err() {
            ok = false;
            errs.push(
                path,
                format!(
                    "{} is not a valid node name; use the name the host enrolled with, e.g. cp-9",
                    crate::echo(&name)
                ),
            );
            continue;
        }
        if out.contains(&name) {
            ok = false;
            errs.push(
                path,
                format!("{name} is listed twice; list each spare once"),
            );
            continue;
        }
        if nodes.is_some_and(|ns| ns.iter().any(|n| n.name == name)) {
            ok = false;
            errs.push(path, format!("{name} is also in spec.nodes; a spare is kept out of the cluster until it replaces a failed control plane, so list it in one place only"));
            continue;
        }
        out.push(name);
    }
    if ok {
        Ok(out)
    } else {
        Err(())
    }
}

/// `remediation`: durations as the spec's others, counts from 1.
fn convert_remediation(raw: Option<RawRemediation>, errs: &mut Errors) -> Result<Remediation, ()> {
    let d = Remediation::default();
    let Some(raw) = raw else {
        return Ok(d);
    };
    let mut ok = true;
    let mut duration = |field: &str, text: Option<String>, default: std::time::Duration| {
        let Some(text) = text else {
            return default;
        };
        let shown = humantime::format_duration(default);
        match humantime::parse_duration(text.trim()) {
            Ok(v) if !v.is_zero() => v,
            Ok(_) => {
                ok = false;
                errs.push(
                    format!("spec.remediation.{field}"),
                    format!("{text} is too short; give a duration above 0, e.g. {shown} (default)"),
                );
                default
            }
            Err(e) => {
                ok = false;
                errs.push(
                    format!("spec.remediation.{field}"),
                    format!(
                        "{} is not a duration ({e}); write it like 30s, 5m or 1h (default {shown})",
                        crate::echo(&text)
                    ),
                );
                default
            }
        }
    };
    let unhealthy_after = duration("unhealthyAfter", raw.unhealthy_after, d.unhealthy_after);
    let retry_period = duration("retryPeriod", raw.retry_period, d.retry_period);
    let min_healthy_period = duration(
        "minHealthyPeriod",
        raw.min_healthy_period,
        d.min_healthy_period,
    );
    let max_in_flight = match raw.max_in_flight {
        None | Some(1) => 1,
        Some(n) => {
            ok = false;
            errs.push(
                "spec.remediation.maxInFlight",
                format!("{n} is not supported: kh replaces one control plane at a time (etcd admits one learner at a time), so maxInFlight must be 1 for now; set it to 1 or remove it"),
            );
            1
        }
    };
    let max_retry = match raw.max_retry {
        None => d.max_retry,
        Some(n) => match u32::try_from(n).ok().filter(|n| (1..=100).contains(n)) {
            Some(n) => n,
            None => {
                ok = false;
                errs.push(
                    "spec.remediation.maxRetry",
                    format!(
                        "{n} is out of range; use 1 to 100 (default {})",
                        d.max_retry
                    ),
                );
                d.max_retry
            }
        },
    };
    if ok {
        Ok(Remediation {
            enabled: raw.enabled.unwrap_or(false),
            unhealthy_after,
            max_in_flight,
            retry_period,
            max_retry,
            min_healthy_period,
        })
    } else {
        Err(())
    }
}

/// `upgrade.maxUnavailable`: a whole number of workers from 1, or a
/// percentage from 1% to 100%; anything else is refused with the fix.
fn convert_max_unavailable(v: &serde_yaml::Value) -> Result<MaxUnavailable, String> {
    const FIX: &str = "use a number of workers (1 or more, default 1) or a percentage of them from 1% to 100%, e.g. maxUnavailable: 25%";
    let shown = || {
        serde_yaml::to_string(v)
            .map(|s| crate::echo(s.trim_end()).to_string())
            .unwrap_or_else(|_| "the value".into())
    };
    match v {
        serde_yaml::Value::Number(n) => match n.as_i64() {
            Some(i) if i >= 1 => u32::try_from(i)
                .map(MaxUnavailable::Count)
                .map_err(|_| format!("{i} is too large; {FIX}")),
            Some(i) => Err(format!("{i} would upgrade no worker; {FIX}")),
            None => Err(format!("{} is not a whole number; {FIX}", shown())),
        },
        serde_yaml::Value::String(s) => {
            let Some(p) = s.trim().strip_suffix('%') else {
                return match s.trim().parse::<i64>() {
                    Ok(i) if i >= 1 => u32::try_from(i)
                        .map(MaxUnavailable::Count)
                        .map_err(|_| format!("{i} is too large; {FIX}")),
                    _ => Err(format!(
                        "{} is not a number or a percentage; {FIX}",
                        crate::echo(s)
                    )),
                };
            };
            match p.trim().parse::<i64>() {
                Ok(p) if (1..=100).contains(&p) => Ok(MaxUnavailable::Percent(p as u32)),
                Ok(p) => Err(format!("{p}% is out of range; {FIX}")),
                Err(_) => Err(format!("{} is not a percentage; {FIX}", crate::echo(s))),
            }
        }
        _ => Err(format!(
            "{} is not a number or a percentage; {FIX}",
            shown()
        )),
    }
}

fn convert_renewal(
    renew_before: Option<&str>,
    auto_renew: Option<bool>,
    errs: &mut Errors,
) -> Result<CertRenewal, ()> {
    let default = CertRenewal::default();
    let renew_before = match renew_before {
        None => default.renew_before,
        Some(text) => {
            let path = "spec.certificates.renewBefore";
            let d = humantime::parse_duration(text.trim()).map_err(|e| {
                errs.push(
                    path,
                    format!(
                        "{} is not a duration ({e}); write it like 720h or 30d (default 30d)",
                        crate::echo(text)
                    ),
                );
            })?;
            if d.is_zero() || d >= LEAF_CERT_VALIDITY {
                errs.push(
                    path,
                    format!(
                        "{} is out of range; it must be more than 0 and less than a year (kubeadm's certificates last one), e.g. 30d (default)",
                        crate::echo(text)
                    ),
                );
                return Err(());
            }
            d
        }
    };
    Ok(CertRenewal {
        renew_before,
        auto_renew: auto_renew.unwrap_or(default.auto_renew),
    })
}

fn convert_snapshots(
    raw: RawSnapshots,
    etcd: &RawEtcd,
    errs: &mut Errors,
) -> Result<SnapshotSchedule, ()> {
    let mut ok = true;
    if matches!(etcd.topology, Some(EtcdTopology::External)) {
        ok = false;
        errs.push(
            "spec.etcd.snapshots",
            "kh takes no snapshots of an external etcd cluster (it does not run its members); remove it and snapshot that cluster with your etcd tooling",
        );
    }
    let every = match raw.every.as_deref() {
        None => DEFAULT_SNAPSHOT_EVERY,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d >= std::time::Duration::from_secs(1) => d,
            Ok(_) => {
                ok = false;
                errs.push(
                    "spec.etcd.snapshots.every",
                    format!("{text} is too short; use at least 1s (default 6h)"),
                );
                DEFAULT_SNAPSHOT_EVERY
            }
            Err(e) => {
                ok = false;
                errs.push(
                    "spec.etcd.snapshots.every",
                    format!("{text} is not a duration ({e}); write it like 6h, 30m or 1d"),
                );
                DEFAULT_SNAPSHOT_EVERY
            }
        },
    };
    let keep = match raw.keep {
        None => DEFAULT_SNAPSHOT_KEEP,
        Some(n) => match u32::try_from(n).ok().filter(|n| *n >= 1) {
            Some(n) => n,
            None => {
                ok = false;
                errs.push(
                    "spec.etcd.snapshots.keep",
                    format!("{n} is out of range; keep at least 1 automatic snapshot (default {DEFAULT_SNAPSHOT_KEEP})"),
                );
                DEFAULT_SNAPSHOT_KEEP
            }
        },
    };
    if ok {
        Ok(SnapshotSchedule { every, keep })
    } else {
        Err(())
    }
}

fn convert_networking(raw: RawNetworking, errs: &mut Errors) -> Result<Networking, ()> {
    let pod = subnet(
        "spec.networking.podSubnet",
        raw.pod_subnet.as_deref(),
        DEFAULT_POD_SUBNET,
        errs,
    );
    let service = subnet(
        "spec.networking.serviceSubnet",
        raw.service_subnet.as_deref(),
        DEFAULT_SERVICE_SUBNET,
        errs,
    );
    let (pod_subnet, service_subnet) = (pod.ok_or(())?, service.ok_or(())?);
    if overlaps(&pod_subnet, &service_subnet) {
        errs.push(
            "spec.networking.serviceSubnet",
            format!("{service_subnet} overlaps podSubnet {pod_subnet}; Service and Pod addresses must not collide, so pick ranges that do not overlap (the defaults are podSubnet {DEFAULT_POD_SUBNET} and serviceSubnet {DEFAULT_SERVICE_SUBNET})"),
        );
        return Err(());
    }
    Ok(Networking {
        pod_subnet,
        service_subnet,
    })
}

fn subnet(path: &str, value: Option<&str>, default: &str, errs: &mut Errors) -> Option<IpNet> {
    let text = value.unwrap_or(default);
    let Ok(net) = text.parse::<IpNet>() else {
        errs.push(
            path,
            format!(
                "{} is not a CIDR; write address/prefix, e.g. {default}",
                crate::echo(text)
            ),
        );
        return None;
    };
    // kubeadm would silently use the network part; say so instead, since a
    // stray host part usually means a typo in the prefix length.
    if net.trunc() != net {
        errs.push(
            path,
            format!(
                "{net} has host bits set; write the network address, {}",
                net.trunc()
            ),
        );
        return None;
    }
    Some(net)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn convert_etcd(raw: RawEtcd, errs: &mut Errors) -> Option<Etcd> {
    match raw.topology.unwrap_or(EtcdTopology::Stacked) {
        EtcdTopology::Stacked => {
            let external_only = [
                ("endpoints", raw.endpoints.is_some()),
                ("caFile", raw.ca_file.is_some()),
                ("certFile", raw.cert_file.is_some()),
                ("keyFile", raw.key_file.is_some()),
            ];
            let mut ok = true;
            for (field, present) in external_only {
                if present {
                    ok = false;
                    errs.push(
                        format!("spec.etcd.{field}"),
                        "only used with topology: external; remove it, or set topology: external to use an etcd cluster of your own",
                    );
                }
            }
            ok.then_some(Etcd::Stacked)
        }
        EtcdTopology::External => {
            let endpoints = match raw.endpoints {
                None => {
                    errs.push("spec.etcd.endpoints", format!("missing; external etcd needs its client URLs, e.g. [{ETCD_ENDPOINT_EXAMPLE}]"));
                    None
                }
                Some(list) if list.is_empty() => {
                    errs.push("spec.etcd.endpoints", format!("empty; external etcd needs at least one client URL, e.g. [{ETCD_ENDPOINT_EXAMPLE}]"));
                    None
                }
                Some(list) => {
                    let mut ok = true;
                    for (i, url) in list.iter().enumerate() {
                        if let Err(problem) = etcd_endpoint(url) {
                            ok = false;
                            errs.push(
                                format!("spec.etcd.endpoints[{i}]"),
                                format!("etcd endpoint {problem}; write https://host:port, e.g. {ETCD_ENDPOINT_EXAMPLE}"),
                            );
                        }
                    }
                    ok.then_some(list)
                }
            };
            let mut file = |field: &str, value: Option<PathBuf>, what: &str| match value {
                Some(p) if !p.as_os_str().is_empty() => Some(p),
                _ => {
                    errs.push(
                        format!("spec.etcd.{field}"),
                        format!("missing; external etcd needs {what}"),
                    );
                    None
                }
            };
            let ca_file = file(
                "caFile",
                raw.ca_file,
                "the CA certificate that signed the etcd servers' certificates",
            );
            let cert_file = file(
                "certFile",
                raw.cert_file,
                "the client certificate kube-apiserver presents to etcd",
            );
            let key_file = file(
                "keyFile",
                raw.key_file,
                "the private key of that client certificate",
            );
            Some(Etcd::External {
                endpoints: endpoints?,
                ca_file: ca_file?,
                cert_file: cert_file?,
                key_file: key_file?,
            })
        }
    }
}

/// Checks an external etcd client URL; the error names the URL and what is
/// wrong with it.
fn etcd_endpoint(url: &str) -> Result<Endpoint, String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!(
            "{} does not use https, but kube-apiserver talks to external etcd over TLS only",
            crate::echo(url)
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    Endpoint::parse(rest).map_err(|e| format!("{}: {}", crate::echo(url), e.why))
}

/// Converts the node list. Returns the nodes when all converted, and the roles
/// when every node has one (for the role checks of the caller).
fn convert_nodes(
    raw: Option<Vec<RawNode>>,
    networking: Option<&Networking>,
    errs: &mut Errors,
) -> (Option<Vec<NodeSpec>>, Option<Vec<NodeRole>>) {
    let Some(raw) = raw else {
        errs.push(
            "spec.nodes",
            format!(
                "missing; list the cluster's hosts, e.g. nodes: [{}]",
                NODE_EXAMPLE
            ),
        );
        return (None, None);
    };
    if raw.is_empty() {
        errs.push(
            "spec.nodes",
            format!(
                "empty; list at least one control-plane node, e.g. nodes: [{}]",
                NODE_EXAMPLE
            ),
        );
        return (None, Some(Vec::new()));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addresses: HashMap<IpAddr, usize> = HashMap::new();
    let mut nodes = Vec::with_capacity(raw.len());
    let mut roles = Vec::with_capacity(raw.len());
    let mut all_ok = true;
    let mut all_roles = true;
    for (i, node) in raw.into_iter().enumerate() {
        let path = format!("spec.nodes[{i}]");
        let name = match node.name {
            None => {
                errs.push(
                    format!("{path}.name"),
                    "missing; give the node its Kubernetes node name, e.g. cp-1",
                );
                None
            }
            Some(name) => match NodeName::new(&name) {
                Err(e) => {
                    errs.push(format!("{path}.name"), format!("node name {} is invalid: {}; use a lowercase RFC 1123 name such as cp-1", crate::echo(&name), e.why));
                    None
                }
                Ok(_) => match names.get(&name) {
                    Some(first) => {
                        errs.push(format!("{path}.name"), format!("node name {} is already used by spec.nodes[{first}]; give every node a unique name", crate::echo(&name)));
                        None
                    }
                    None => {
                        names.insert(name.clone(), i);
                        Some(name)
                    }
                },
            },
        };
        let role = node.role;
        match role {
            Some(role) => roles.push(role),
            None => {
                all_roles = false;
                errs.push(
                    format!("{path}.role"),
                    "missing; set role: control-plane, worker or loadbalancer",
                );
            }
        }
        let address = match node.address {
            None => {
                errs.push(
                    format!("{path}.address"),
                    "missing; give the IP address kubeadm advertises for this node, e.g. 10.0.0.11",
                );
                None
            }
            Some(text) => node_address(&path, &text, networking, &mut addresses, i, errs),
        };
        match (name, role, address) {
            (Some(name), Some(role), Some(address)) => nodes.push(NodeSpec {
                name,
                role,
                address,
            }),
            _ => all_ok = false,
        }
    }
    (all_ok.then_some(nodes), all_roles.then_some(roles))
}

fn node_address(
    node_path: &str,
    text: &str,
    networking: Option<&Networking>,
    seen: &mut HashMap<IpAddr, usize>,
    index: usize,
    errs: &mut Errors,
) -> Option<IpAddr> {
    let path = format!("{node_path}.address");
    let Ok(ip) = text.parse::<IpAddr>() else {
        errs.push(path, format!("{} is not an IP address; kubeadm's advertiseAddress needs one, so write the host's IP, e.g. 10.0.0.11", crate::echo(text)));
        return None;
    };
    // Loopback stays allowed on purpose: the local testbed gives each host
    // its own 127.0.0.x address.
    if ip.is_unspecified() {
        errs.push(
            path,
            format!(
                "{ip} is the unspecified address; write the IP the other hosts reach this node on"
            ),
        );
        return None;
    }
    if let Some(first) = seen.get(&ip) {
        errs.push(
            path,
            format!(
                "{ip} is already used by spec.nodes[{first}]; every node needs its own address"
            ),
        );
        return None;
    }
    seen.insert(ip, index);
    if let Some(net) = networking {
        let clashes = [
            ("podSubnet", &net.pod_subnet, "Pod"),
            ("serviceSubnet", &net.service_subnet, "Service"),
        ];
        for (field, subnet, what) in clashes {
            if subnet.contains(&ip) {
                errs.push(path, format!("{ip} lies inside {field} {subnet}, so {what} addresses would collide with the node; move spec.networking.{field} or the node to a range that does not contain node addresses"));
                return None;
            }
        }
    }
    Some(ip)
}
