//! The kube-apiserver double: what the kubelet double runs for the
//! `kube-apiserver.yaml` static pod. It serves HTTPS on
//! `--bind-address:--secure-port` with `--tls-cert-file`, authenticates by
//! client certificates from `--client-ca-file` or bootstrap tokens, and keeps
//! every object in the real etcd cluster at `--etcd-servers` (through one
//! in-process client, `kube::etcd_client`, with
//! `--etcd-cafile/--etcd-certfile/--etcd-keyfile`), under
//! kube-apiserver's own key layout (`/registry/minions/<node>`,
//! `/registry/secrets/<ns>/<name>`, ...), as JSON rather than protobuf.
//!
//! It also plays two controllers that kubeadm relies on: the CSR signer of
//! kube-controller-manager (with `ca.key` next to `--client-ca-file`) and the
//! bootstrap signer / token cleaner (JWS signatures in `cluster-info`, expired
//! tokens and the Secrets they own disappear), both judged by the testbed
//! clock.

use std::collections::BTreeMap;
use std::net::{IpAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::clock;
use crate::kube::etcd_client::EtcdClient;
use crate::kube::http::{self, Request, Response};
use crate::kube::pki::{self, CaPair, Leaf};
use crate::kube::{b64, unb64};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Anonymous,
    Admin(String),
    Node(String),
    Bootstrap { id: String, groups: Vec<String> },
    Other(String),
}

impl Who {
    fn user(&self) -> String {
        match self {
            Who::Anonymous => "system:anonymous".into(),
            Who::Admin(u) | Who::Other(u) => u.clone(),
            Who::Node(n) => format!("system:node:{n}"),
            Who::Bootstrap { id, .. } => format!("system:bootstrap:{id}"),
        }
    }
}

pub struct ApiServer {
    pub etcd: EtcdClient,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub world_dir: Option<PathBuf>,
    pub version: String,
}

/// Kinds whose objects have no namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PodSecurityPolicy",
    "PriorityClass",
    "StorageClass",
    "IngressClass",
    "APIService",
];

/// The plural resource name of a kind, as the apiserver and kubectl print it.
pub fn plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    if lower.ends_with('s') {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    }
}

/// A Kubernetes `Status` error.
pub fn status(code: u16, reason: &str, message: &str) -> Response {
    Response::json(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }),
    )
}

fn not_found(resource: &str, name: &str) -> Response {
    status(404, "NotFound", &format!("{resource} \"{name}\" not found"))
}

fn etcd_error(e: String) -> Response {
    status(500, "InternalError", &e)
}

fn now_rfc(world: Option<&std::path::Path>) -> String {
    clock::rfc3339(clock::now_in(world))
}

impl ApiServer {
    fn now(&self) -> std::time::SystemTime {
        clock::now_in(self.world_dir.as_deref())
    }

    fn get_obj(&self, key: &str) -> Result<Option<Value>, String> {
        Ok(self
            .etcd
            .get(key)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    fn put_obj(&self, key: &str, v: &Value) -> Result<(), String> {
        self.etcd.put(key, v.to_string().as_bytes())
    }

    fn list_objs(&self, prefix: &str) -> Result<Vec<Value>, String> {
        Ok(self
            .etcd
            .list(prefix)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// A bootstrap token Secret that has expired is gone, as after
    /// kube-controller-manager's token cleaner ran.
    fn token_expired(&self, secret: &Value) -> bool {
        let exp = secret["data"]["expiration"]
            .as_str()
            .and_then(unb64)
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        match exp.as_deref().and_then(clock::parse_rfc3339) {
            Some(t) => t <= self.now(),
            None => false,
        }
    }

    /// Applies the token cleaner and garbage collector to a Secret read
    /// from etcd: expired tokens and Secrets owned by a missing or expired
    /// token Secret do not exist.
    fn visible_secret(&self, ns: &str, secret: Value) -> Result<Option<Value>, String> {
        if secret["type"] == "bootstrap.kubernetes.io/token" && self.token_expired(&secret) {
            return Ok(None);
        }
        if let Some(owners) = secret["metadata"]["ownerReferences"].as_array() {
            for o in owners {
                if o["kind"] == "Secret" {
                    let name = o["name"].as_str().unwrap_or_default();
                    let owner = self.get_obj(&format!("/registry/secrets/{ns}/{name}"))?;
                    match owner {
                        Some(s) if !self.token_expired(&s) => {}
                        _ => return Ok(None),
                    }
                }
            }
        }
        Ok(Some(secret))
    }

    fn secret(&self, ns: &str, name: &str) -> Result<Option<Value>, String> {
        match self.get_obj(&format!("/registry/secrets/{ns}/{name}"))? {
            Some(s) => self.visible_secret(ns, s),
            None => Ok(None),
        }
    }

    fn authenticate(&self, req: &Request) -> Result<Who, Response> {
        if let Some(der) = &req.peer_cert {
            let (cn, orgs) =
                pki::subject_of(der).ok_or_else(|| status(401, "Unauthorized", "Unauthorized"))?;
            // kube-apiserver's x509 authenticator: a certificate outside its
            // validity period (at the testbed clock) authenticates nobody.
            let now = clock::unix_secs(self.now());
            match pki::validity_of(der) {
                Some((from, until)) if from <= now && now <= until => {}
                _ => return Err(status(401, "Unauthorized", "Unauthorized")),
            }
            if orgs
                .iter()
                .any(|o| o == "system:masters" || o == "kubeadm:cluster-admins")
            {
                return Ok(Who::Admin(cn));
            }
            if let Some(n) = cn.strip_prefix("system:node:") {
                if orgs.iter().any(|o| o == "system:nodes") {
                    return Ok(Who::Node(n.to_string()));
                }
            }
            return Ok(Who::Other(cn));
        }
        let Some(auth) = req.header("Authorization") else {
            return Ok(Who::Anonymous);
        };
        let unauthorized = || status(401, "Unauthorized", "Unauthorized");
        let token = auth
            .strip_prefix("Bearer ")
            .ok_or_else(unauthorized)?
            .trim();
        let (id, secret) = token.split_once('.').ok_or_else(unauthorized)?;
        let s = self
            .secret("kube-system", &format!("bootstrap-token-{id}"))
            .map_err(etcd_error)?
            .ok_or_else(unauthorized)?;
        let field = |k: &str| {
            s["data"][k]
                .as_str()
                .and_then(unb64)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        if field("token-secret") != secret || field("usage-bootstrap-authentication") != "true" {
            return Err(unauthorized());
        }
        let mut groups = vec!["system:bootstrappers".to_string()];
        groups.extend(
            field("auth-extra-groups")
                .split(',')
                .filter(|g| !g.is_empty())
                .map(str::to_string),
        );
        Ok(Who::Bootstrap {
            id: id.to_string(),
            groups,
        })
    }

    fn forbidden(who: &Who, verb: &str, resource: &str, name: &str, ns: Option<&str>) -> Response {
        if *who == Who::Anonymous {
            return status(401, "Unauthorized", "Unauthorized");
        }
        let scope = match ns {
            Some(ns) => format!(" in the namespace \"{ns}\""),
            None => " at the cluster scope".to_string(),
        };
        let subject = if name.is_empty() {
            resource.to_string()
        } else {
            format!("{resource} \"{name}\"")
        };
        status(
            403,
            "Forbidden",
            &format!(
                "{subject} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"\"{scope}",
                who.user()
            ),
        )
    }

    /// RBAC as a kubeadm cluster has it, for the requests the doubles make.
    fn allowed(who: &Who, verb: &str, resource: &str, name: &str, ns: Option<&str>) -> bool {
        match who {
            Who::Admin(_) => true,
            Who::Anonymous => {
                verb == "get"
                    && resource == "configmaps"
                    && ns == Some("kube-public")
                    && name == "cluster-info"
            }
            Who::Bootstrap { groups, .. } => match (verb, resource, ns) {
                ("get", "configmaps", Some("kube-public")) => name == "cluster-info",
                ("get", "configmaps", Some("kube-system")) => {
                    matches!(name, "kubeadm-config" | "kubelet-config" | "kube-proxy")
                }
                ("get", "secrets", Some("kube-system")) => {
                    name == "kubeadm-certs"
                        && groups
                            .iter()
                            .any(|g| g == "system:bootstrappers:kubeadm:default-node-token")
                }
                ("create", "certificatesigningrequests", None) => true,
                ("get", "nodes", None) => true,
                _ => false,
            },
            Who::Node(n) => match (verb, resource, ns) {
                ("get" | "list", "nodes", None) => true,
                ("create" | "update", "nodes", None) => name == n,
                ("get", "configmaps", Some("kube-system" | "kube-public")) => true,
                _ => false,
            },
            Who::Other(_) => false,
        }
    }

    /// /healthz and /readyz: a linearizable etcd read with a short timeout,
    /// which fails while etcd has no quorum.
    fn etcd_check(&self, path: &str) -> Response {
        match self.etcd.health() {
            Ok(()) => Response::text(200, "ok"),
            Err(e) => {
                let what = if path == "/readyz" {
                    "readyz"
                } else {
                    "healthz"
                };
                Response::text(
                    500,
                    format!("[+]ping ok\n[+]log ok\n[-]etcd failed: error getting data from etcd: {e}\n{what} check failed\n"),
                )
            }
        }
    }

    pub fn handle(&self, req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/livez") => return Response::text(200, "ok"),
            ("GET", "/healthz" | "/readyz") => return self.etcd_check(&req.path),
            ("GET", "/version") => {
                let (major, minor) = crate::kube::minor_of(&self.version).unwrap_or((1, 0));
                return Response::json(
                    200,
                    &json!({"major": major.to_string(), "minor": minor.to_string(), "gitVersion": self.version, "platform": "linux/amd64"}),
                );
            }
            _ => {}
        }
        let who = match self.authenticate(&req) {
            Ok(w) => w,
            Err(r) => return r,
        };
        let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let m = req.method.as_str();
        let verb = match (m, parts.len()) {
            ("GET", 3) | ("GET", 5) => "list",
            ("GET", _) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("DELETE", _) => "delete",
            _ => "unknown",
        };
        match parts.as_slice() {
            ["api", "v1", "nodes", rest @ ..] => {
                let name = rest
                    .first()
                    .copied()
                    .unwrap_or_else(|| body["metadata"]["name"].as_str().unwrap_or_default());
                if !Self::allowed(&who, verb, "nodes", name, None) {
                    return Self::forbidden(&who, verb, "nodes", name, None);
                }
                self.nodes(m, rest.first().copied(), body)
            }
            ["api", "v1", "pods"] if m == "GET" => {
                if !matches!(who, Who::Admin(_)) {
                    return Self::forbidden(&who, "list", "pods", "", None);
                }
                self.pods_of_node(req.query("fieldSelector"))
            }
            ["api", "v1", "namespaces", ns, "pods", name, "eviction"] if m == "POST" => {
                if !matches!(who, Who::Admin(_)) {
                    return Self::forbidden(&who, "create", "pods/eviction", name, Some(ns));
                }
                self.evict(ns, name)
            }
            ["api", "v1", "namespaces", ns, res, rest @ ..]
                if matches!(*res, "secrets" | "configmaps" | "pods") =>
            {
                let name = rest
                    .first()
                    .copied()
                    .unwrap_or_else(|| body["metadata"]["name"].as_str().unwrap_or_default());
                if !Self::allowed(&who, verb, res, name, Some(ns)) {
                    return Self::forbidden(&who, verb, res, name, Some(ns));
                }
                self.namespaced(m, ns, res, rest.first().copied(), body, &req)
            }
            ["apis", "certificates.k8s.io", "v1", "certificatesigningrequests"] if m == "POST" => {
                if !Self::allowed(&who, "create", "certificatesigningrequests", "", None) {
                    return Self::forbidden(&who, "create", "certificatesigningrequests", "", None);
                }
                self.sign_csr(&body)
            }
            ["apis", "testbed.kh.io", "v1", "apply"] if m == "POST" => {
                if !matches!(who, Who::Admin(_)) {
                    return Self::forbidden(&who, "patch", "objects", "", None);
                }
                self.apply(&body)
            }
            _ => status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        }
    }

    fn cni_applied(&self) -> Result<bool, String> {
        Ok(!self.etcd.list("/registry/daemonsets/")?.is_empty())
    }

    fn with_conditions(&self, mut node: Value, cni: bool) -> Value {
        let now = now_rfc(self.world_dir.as_deref());
        let cond = if cni {
            json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now})
        } else {
            json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized", "lastHeartbeatTime": now, "lastTransitionTime": now})
        };
        node["status"]["conditions"] = json!([cond]);
        node
    }

    fn nodes(&self, m: &str, name: Option<&str>, body: Value) -> Response {
        let key = |n: &str| format!("/registry/minions/{n}");
        let r = (|| -> Result<Response, String> {
            match (m, name) {
                ("GET", None) => {
                    let cni = self.cni_applied()?;
                    let mut items: Vec<Value> = self
                        .list_objs("/registry/minions/")?
                        .into_iter()
                        .map(|n| self.with_conditions(n, cni))
                        .collect();
                    items.sort_by(|a, b| {
                        a["metadata"]["name"]
                            .as_str()
                            .cmp(&b["metadata"]["name"].as_str())
                    });
                    Ok(Response::json(
                        200,
                        &json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": ""}, "items": items}),
                    ))
                }
                ("GET", Some(n)) => match self.get_obj(&key(n))? {
                    Some(node) => {
                        let cni = self.cni_applied()?;
                        Ok(Response::json(200, &self.with_conditions(node, cni)))
                    }
                    None => Ok(not_found("nodes", n)),
                },
                ("POST", None) => {
                    let n = body["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if n.is_empty() {
                        return Ok(status(422, "Invalid", "Node \"\" is invalid: metadata.name: Required value: name or generateName is required"));
                    }
                    if self.get_obj(&key(&n))?.is_some() {
                        return Ok(status(
                            409,
                            "AlreadyExists",
                            &format!("nodes \"{n}\" already exists"),
                        ));
                    }
                    let mut node = body.clone();
                    node["kind"] = json!("Node");
                    node["apiVersion"] = json!("v1");
                    node["metadata"]["creationTimestamp"] =
                        json!(now_rfc(self.world_dir.as_deref()));
                    node["metadata"]["uid"] = json!(uid());
                    self.put_obj(&key(&n), &node)?;
                    Ok(Response::json(201, &node))
                }
                ("PUT", Some(n)) => {
                    let Some(old) = self.get_obj(&key(n))? else {
                        return Ok(not_found("nodes", n));
                    };
                    let mut node = body.clone();
                    node["metadata"]["creationTimestamp"] =
                        old["metadata"]["creationTimestamp"].clone();
                    node["metadata"]["uid"] = old["metadata"]["uid"].clone();
                    self.put_obj(&key(n), &node)?;
                    Ok(Response::json(200, &node))
                }
                ("DELETE", Some(n)) => {
                    if !self.etcd.del(&key(n))? {
                        return Ok(not_found("nodes", n));
                    }
                    // The garbage collector removes the node's mirror pods.
                    for p in self.list_objs("/registry/pods/kube-system/")? {
                        if p["spec"]["nodeName"] == n {
                            let pn = p["metadata"]["name"].as_str().unwrap_or_default();
                            self.etcd.del(&format!("/registry/pods/kube-system/{pn}"))?;
                        }
                    }
                    Ok(Response::json(
                        200,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": n, "kind": "nodes"}}),
                    ))
                }
                _ => Ok(status(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )),
            }
        })();
        r.unwrap_or_else(etcd_error)
    }

    /// `GET /api/v1/pods[?fieldSelector=spec.nodeName=N]`: pods of every
    /// namespace, or those bound to node N.
    fn pods_of_node(&self, selector: Option<&str>) -> Response {
        let node = selector.and_then(|s| s.strip_prefix("spec.nodeName="));
        let r = (|| -> Result<Response, String> {
            let items: Vec<Value> = self
                .list_objs("/registry/pods/")?
                .into_iter()
                .filter(|p| node.is_none_or(|n| p["spec"]["nodeName"] == n))
                .collect();
            Ok(Response::json(
                200,
                &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": ""}, "items": items}),
            ))
        })();
        r.unwrap_or_else(etcd_error)
    }

    /// The Eviction subresource: deletes the pod unless a
    /// PodDisruptionBudget of its namespace selecting it would then have
    /// fewer than `minAvailable` pods (429 TooManyRequests, as
    /// kube-apiserver answers).
    fn evict(&self, ns: &str, name: &str) -> Response {
        let key = format!("/registry/pods/{ns}/{name}");
        let r = (|| -> Result<Response, String> {
            let Some(pod) = self.get_obj(&key)? else {
                return Ok(not_found("pods", name));
            };
            let pods = self.list_objs(&format!("/registry/pods/{ns}/"))?;
            for pdb in self.list_objs(&format!("/registry/poddisruptionbudgets/{ns}/"))? {
                let selects = |p: &Value| {
                    pdb["spec"]["selector"]["matchLabels"]
                        .as_object()
                        .is_some_and(|m| m.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v))
                };
                if !selects(&pod) {
                    continue;
                }
                let healthy = pods.iter().filter(|p| selects(p)).count() as i64;
                let min = pdb["spec"]["minAvailable"].as_i64().unwrap_or(0);
                if healthy - 1 < min {
                    return Ok(status(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                    ));
                }
            }
            self.etcd.del(&key)?;
            Ok(Response::json(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ))
        })();
        r.unwrap_or_else(etcd_error)
    }

    fn cluster_info(&self, mut cm: Value) -> Result<Value, String> {
        let kubeconfig = cm["data"]["kubeconfig"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for s in self.list_objs("/registry/secrets/kube-system/")? {
            if s["type"] != "bootstrap.kubernetes.io/token" || self.token_expired(&s) {
                continue;
            }
            let f = |k: &str| {
                s["data"][k]
                    .as_str()
                    .and_then(unb64)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            if f("usage-bootstrap-signing") != "true" {
                continue;
            }
            let id = f("token-id");
            let token = format!("{id}.{}", f("token-secret"));
            cm["data"][format!("jws-kubeconfig-{id}")] =
                json!(jws_detached(&kubeconfig, &id, &token));
        }
        Ok(cm)
    }

    fn namespaced(
        &self,
        m: &str,
        ns: &str,
        res: &str,
        name: Option<&str>,
        body: Value,
        req: &Request,
    ) -> Response {
        let prefix = format!("/registry/{res}/{ns}/");
        let kind = match res {
            "secrets" => "Secret",
            "configmaps" => "ConfigMap",
            _ => "Pod",
        };
        let r = (|| -> Result<Response, String> {
            match (m, name) {
                ("GET", None) => {
                    let mut items = vec![];
                    for o in self.list_objs(&prefix)? {
                        let o = if res == "secrets" {
                            match self.visible_secret(ns, o)? {
                                Some(o) => o,
                                None => continue,
                            }
                        } else {
                            o
                        };
                        if let Some(sel) = req.query("fieldSelector") {
                            if let Some(t) = sel.strip_prefix("type=") {
                                if o["type"] != t {
                                    continue;
                                }
                            }
                        }
                        items.push(o);
                    }
                    Ok(Response::json(
                        200,
                        &json!({"kind": format!("{kind}List"), "apiVersion": "v1", "items": items}),
                    ))
                }
                ("GET", Some(n)) => {
                    let o = if res == "secrets" {
                        self.secret(ns, n)?
                    } else {
                        self.get_obj(&format!("{prefix}{n}"))?
                    };
                    match o {
                        Some(o)
                            if res == "configmaps"
                                && ns == "kube-public"
                                && n == "cluster-info" =>
                        {
                            Ok(Response::json(200, &self.cluster_info(o)?))
                        }
                        Some(o) => Ok(Response::json(200, &o)),
                        None => Ok(not_found(res, n)),
                    }
                }
                ("POST", None) | ("PUT", Some(_)) => {
                    let n = name
                        .map(str::to_string)
                        .or_else(|| body["metadata"]["name"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    let key = format!("{prefix}{n}");
                    let old = self.get_obj(&key)?;
                    let old = match (res, old) {
                        ("secrets", Some(o)) => self.visible_secret(ns, o)?,
                        (_, o) => o,
                    };
                    if m == "POST" && old.is_some() {
                        return Ok(status(
                            409,
                            "AlreadyExists",
                            &format!("{res} \"{n}\" already exists"),
                        ));
                    }
                    let mut o = body.clone();
                    o["kind"] = json!(kind);
                    o["apiVersion"] = json!("v1");
                    o["metadata"]["name"] = json!(n);
                    o["metadata"]["namespace"] = json!(ns);
                    o["metadata"]["uid"] = old
                        .as_ref()
                        .map(|x| x["metadata"]["uid"].clone())
                        .unwrap_or_else(|| json!(uid()));
                    o["metadata"]["creationTimestamp"] = old
                        .as_ref()
                        .map(|x| x["metadata"]["creationTimestamp"].clone())
                        .unwrap_or_else(|| json!(now_rfc(self.world_dir.as_deref())));
                    self.put_obj(&key, &o)?;
                    Ok(Response::json(if old.is_some() { 200 } else { 201 }, &o))
                }
                ("DELETE", Some(n)) => {
                    let visible = if res == "secrets" {
                        self.secret(ns, n)?.is_some()
                    } else {
                        self.get_obj(&format!("{prefix}{n}"))?.is_some()
                    };
                    self.etcd.del(&format!("{prefix}{n}"))?;
                    if !visible {
                        return Ok(not_found(res, n));
                    }
                    Ok(Response::json(
                        200,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    ))
                }
                _ => Ok(status(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )),
            }
        })();
        r.unwrap_or_else(etcd_error)
    }

    fn sign_csr(&self, body: &Value) -> Response {
        let Some(pem) = body["spec"]["request"]
            .as_str()
            .and_then(unb64)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
        else {
            return status(422, "Invalid", "spec.request: Required value");
        };
        let Some(node) = body["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
            return status(422, "Invalid", "spec.nodeName: Required value");
        };
        let ca = match (
            std::fs::read_to_string(&self.ca_cert),
            std::fs::read_to_string(&self.ca_key),
        ) {
            (Ok(cert_pem), Ok(key_pem)) => CaPair { cert_pem, key_pem },
            _ => {
                return status(
                    500,
                    "InternalError",
                    &format!("the CSR signer has no CA key at {}", self.ca_key.display()),
                )
            }
        };
        let leaf = Leaf {
            cn: format!("system:node:{node}"),
            orgs: vec!["system:nodes".into()],
            client: true,
            ..Leaf::default()
        };
        match ca.sign_csr(&pem, &leaf) {
            Ok(cert) => Response::json(
                201,
                &json!({"kind": "CertificateSigningRequest", "apiVersion": "certificates.k8s.io/v1", "metadata": {"name": format!("csr-{}", &uid()[..5])}, "spec": body["spec"], "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "AutoApproved"}], "certificate": b64(cert)}}),
            ),
            Err(e) => status(422, "Invalid", &format!("invalid CSR: {e}")),
        }
    }

    /// Server-side apply, simplified: create, replace or leave alone.
    fn apply(&self, body: &Value) -> Response {
        let o = &body["object"];
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        if kind.is_empty() || name.is_empty() {
            return status(422, "Invalid", "object has no kind or metadata.name");
        }
        let key = if CLUSTER_SCOPED.contains(&kind) {
            format!("/registry/{}/{name}", plural(kind))
        } else {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
            format!("/registry/{}/{ns}/{name}", plural(kind))
        };
        let r = (|| -> Result<&'static str, String> {
            let old = self.get_obj(&key)?;
            if old.as_ref() == Some(o) {
                return Ok("unchanged");
            }
            self.put_obj(&key, o)?;
            Ok(if old.is_some() {
                "configured"
            } else {
                "created"
            })
        })();
        match r {
            Ok(result) => Response::json(200, &json!({"result": result})),
            Err(e) => etcd_error(e),
        }
    }
}

/// A random UID in Kubernetes' format.
pub fn uid() -> String {
    let b = kh::token::random_bytes::<16>();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// The bootstrap signer's detached JWS (HS256, key = the whole token) over
/// the cluster-info kubeconfig: `header..signature`.
pub fn jws_detached(payload: &str, token_id: &str, token: &str) -> String {
    let header = b64url(format!("{{\"alg\":\"HS256\",\"kid\":\"{token_id}\"}}").as_bytes());
    let signing_input = format!("{header}.{}", b64url(payload.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let sig = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{header}..{}", b64url(sig.as_ref()))
}

/// Parses kube-apiserver's command line (`--flag=value`; flags this double
/// does not use are accepted and ignored, as any real flag would be).
pub fn parse_flags(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(flag) = a.strip_prefix("--") else {
            bail!("unexpected argument {a:?}");
        };
        match flag.split_once('=') {
            Some((k, v)) => {
                m.insert(k.to_string(), v.to_string());
            }
            None => {
                let v = it
                    .next()
                    .ok_or_else(|| anyhow!("flag needs an argument: --{flag}"))?;
                m.insert(flag.to_string(), v.clone());
            }
        }
    }
    Ok(m)
}

/// Runs the double until killed.
/// The static pod manifest the kubelet double runs this double from.
pub const APISERVER_MANIFEST: &str = "/etc/kubernetes/manifests/kube-apiserver.yaml";

/// `v1.32.0` from a kube-apiserver manifest's image
/// (`registry.k8s.io/kube-apiserver:v1.32.0`).
pub fn image_version(manifest: &str) -> Option<String> {
    let pod: Value = serde_yaml::from_str(manifest).ok()?;
    let image = pod["spec"]["containers"]
        .as_array()?
        .iter()
        .find_map(|c| c["image"].as_str().filter(|i| i.contains("kube-apiserver")))?;
    let (_, tag) = image.rsplit_once(':')?;
    crate::kube::minor_of(tag).map(|_| tag.to_string())
}

pub fn main(args: Vec<String>) -> Result<()> {
    let f = parse_flags(&args)?;
    let need = |k: &str| {
        f.get(k)
            .cloned()
            .ok_or_else(|| anyhow!("the kube-apiserver double needs --{k}"))
    };
    let bind: IpAddr = f
        .get("bind-address")
        .or(f.get("advertise-address"))
        .ok_or_else(|| anyhow!("the kube-apiserver double needs --bind-address"))?
        .parse()
        .context("--bind-address")?;
    let port: u16 = f
        .get("secure-port")
        .map(|p| p.parse())
        .transpose()
        .context("--secure-port")?
        .unwrap_or(6443);
    let client_ca = PathBuf::from(need("client-ca-file")?);
    let cert = std::fs::read_to_string(need("tls-cert-file")?).context("--tls-cert-file")?;
    let key =
        std::fs::read_to_string(need("tls-private-key-file")?).context("--tls-private-key-file")?;
    let ca_pem = std::fs::read_to_string(&client_ca).context("--client-ca-file")?;
    let etcd_servers: Vec<String> = need("etcd-servers")?
        .split(',')
        .map(str::to_string)
        .collect();
    let etcd = EtcdClient::from_files(
        &etcd_servers,
        need("etcd-cafile")?.as_ref(),
        need("etcd-certfile")?.as_ref(),
        need("etcd-keyfile")?.as_ref(),
    )
    .context("the etcd client")?;
    // A real apiserver is the version of its image; the kubelet double
    // restarts this process when its manifest changes (an upgrade).
    let version = crate::kube::NodeEnv::from_env()
        .map(|e| {
            std::fs::read_to_string(e.path(APISERVER_MANIFEST))
                .ok()
                .and_then(|m| image_version(&m))
                .unwrap_or_else(|| e.version())
        })
        .unwrap_or_else(|| crate::kube::DEFAULT_VERSION.to_string());
    let server = Arc::new(ApiServer {
        etcd,
        ca_key: client_ca.with_file_name("ca.key"),
        ca_cert: client_ca,
        world_dir: clock::world_dir_from_env(),
        version,
    });
    let tls = http::server_config(&cert, &key, &ca_pem)?;
    let listener = TcpListener::bind((bind, port))
        .with_context(|| format!("failed to listen on {bind}:{port}"))?;
    println!("Serving securely on {bind}:{port}");
    let s = server.clone();
    http::serve(
        listener,
        tls,
        Arc::new(move |req: Request| {
            let line = format!("{} {}", req.method, req.path);
            let resp = s.handle(req);
            println!("{line} -> {}", resp.status);
            resp
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_outside_its_validity_is_unauthorized() {
        let world = tempfile::tempdir().unwrap();
        let ca = CaPair::generate("kubernetes").unwrap();
        let api = ApiServer {
            etcd: EtcdClient::new(
                &["https://127.0.0.1:1".to_string()],
                &ca.cert_pem,
                &ca.cert_pem,
                &ca.key_pem,
            )
            .unwrap(),
            ca_cert: world.path().join("ca.crt"),
            ca_key: world.path().join("ca.key"),
            world_dir: Some(world.path().to_path_buf()),
            version: "v1.31.0".into(),
        };
        let (cert, _) = ca
            .issue(&Leaf {
                cn: "kubernetes-admin".into(),
                orgs: vec!["kubeadm:cluster-admins".into()],
                client: true,
                ..Leaf::default()
            })
            .unwrap();
        let req = Request {
            method: "GET".into(),
            path: "/api/v1/nodes".into(),
            query: Default::default(),
            headers: Default::default(),
            body: vec![],
            peer_cert: Some(pki::cert_der(&cert).unwrap()),
        };
        assert_eq!(
            api.authenticate(&req).unwrap(),
            Who::Admin("kubernetes-admin".into())
        );
        // A year and a day later, at the testbed clock, it has expired.
        clock::set_offset_secs(world.path(), 366 * 86_400).unwrap();
        assert_eq!(api.authenticate(&req).unwrap_err().status, 401);
        // Two hours before it was issued, it is not valid yet.
        clock::set_offset_secs(world.path(), -2 * 3600).unwrap();
        assert_eq!(api.authenticate(&req).unwrap_err().status, 401);
    }

    #[test]
    fn the_version_is_the_manifests_image_tag() {
        let m = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\nspec:\n  containers:\n  - name: kube-apiserver\n    image: registry.k8s.io/kube-apiserver:v1.31.4\n    command: [kube-apiserver]\n";
        assert_eq!(image_version(m).as_deref(), Some("v1.31.4"));
        assert_eq!(image_version("spec: {}\n"), None);
    }

    #[test]
    fn plurals_match_kubectl() {
        assert_eq!(plural("DaemonSet"), "daemonsets");
        assert_eq!(plural("NetworkPolicy"), "networkpolicies");
        assert_eq!(plural("Ingress"), "ingresses");
    }

    #[test]
    fn rbac_lets_bootstrap_tokens_read_only_what_kubeadm_needs() {
        let bt = Who::Bootstrap {
            id: "abcdef".into(),
            groups: vec![
                "system:bootstrappers".into(),
                "system:bootstrappers:kubeadm:default-node-token".into(),
            ],
        };
        assert!(ApiServer::allowed(
            &bt,
            "get",
            "secrets",
            "kubeadm-certs",
            Some("kube-system")
        ));
        assert!(!ApiServer::allowed(
            &bt,
            "get",
            "secrets",
            "other",
            Some("kube-system")
        ));
        assert!(!ApiServer::allowed(&bt, "delete", "nodes", "cp-1", None));
        assert!(ApiServer::allowed(
            &Who::Anonymous,
            "get",
            "configmaps",
            "cluster-info",
            Some("kube-public")
        ));
        assert!(!ApiServer::allowed(
            &Who::Node("w-1".into()),
            "update",
            "nodes",
            "w-2",
            None
        ));
    }
}
