//! The kubectl double: `get nodes`, `delete node`, `apply -f` and
//! `version --client` against the apiserver double, with kubectl's output
//! and error texts.

use serde_json::{json, Value};

use super::args::{self, boolean, short, value, Flag};
use super::client::{self, ApiError};
use crate::clock;
use crate::kube::kubeconfig;
use crate::kube::NodeEnv;

const FLAGS: &[Flag] = &[
    value("kubeconfig"),
    short(value("output"), 'o'),
    short(value("filename"), 'f'),
    short(value("namespace"), 'n'),
    boolean("client"),
    value("request-timeout"),
    short(value("v"), 'v'),
    boolean("short"),
    boolean("ignore-daemonsets"),
    boolean("delete-emptydir-data"),
    boolean("force"),
    value("timeout"),
    value("grace-period"),
];

pub fn main(env: &NodeEnv, argv: &[String]) -> i32 {
    match run(env, argv) {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("{msg}");
            1
        }
    }
}

fn version(env: &NodeEnv, p: &args::Parsed) -> Result<(), String> {
    let v = env.version_of("kubectl");
    let (major, minor) = crate::kube::minor_of(&v).unwrap_or((1, 0));
    let info = json!({
        "major": major.to_string(),
        "minor": minor.to_string(),
        "gitVersion": v,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T18:04:20Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": "linux/amd64",
    });
    if !p.flag("client") {
        return Err(
            "error: the kh testbed kubectl double supports only `kubectl version --client`".into(),
        );
    }
    match p.get("output") {
        Some("json") => println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"clientVersion": info, "kustomizeVersion": "v5.5.0"})
            )
            .unwrap_or_default()
        ),
        Some("yaml") => print!(
            "{}",
            serde_yaml::to_string(&json!({"clientVersion": info, "kustomizeVersion": "v5.5.0"}))
                .unwrap_or_default()
        ),
        None => println!("Client Version: {v}\nKustomize Version: v5.5.0"),
        Some(o) => return Err(format!("error: --output {o} is not available")),
    }
    Ok(())
}

/// kubectl's rendering of an API error.
fn server_error(e: ApiError, server: &str) -> String {
    match e {
        ApiError::Transport { refused: true, .. } => format!(
            "The connection to the server {server} was refused - did you specify the right host or port?"
        ),
        ApiError::Transport { text, .. } => format!("Unable to connect to the server: {text}"),
        ApiError::Status { code: 401, .. } => {
            "error: You must be logged in to the server (Unauthorized)".into()
        }
        ApiError::Status { reason, message, .. } if !reason.is_empty() && reason != "InternalError" => {
            format!("Error from server ({reason}): {message}")
        }
        ApiError::Status { message, .. } => format!("Error from server: {message}"),
    }
}

fn run(env: &NodeEnv, argv: &[String]) -> Result<(), String> {
    let p = args::parse(argv, FLAGS)
        .map_err(|e| format!("error: {e}\nSee 'kubectl --help' for usage."))?;
    let pos: Vec<&str> = p.positional.iter().map(String::as_str).collect();
    if pos.first() == Some(&"version") {
        return version(env, &p);
    }
    let file = p
        .get("kubeconfig")
        .map(str::to_string)
        .or_else(|| std::env::var("KUBECONFIG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "/root/.kube/config".into());
    let path = if std::path::Path::new(&file).starts_with(&env.root) {
        std::path::PathBuf::from(&file)
    } else {
        env.path(&file)
    };
    let target = match kubeconfig::load(env, &path) {
        Ok(t) => t,
        Err(_) => return Err(format!("error: stat {file}: no such file or directory")),
    };
    let c = target.client().map_err(|e| format!("error: {e}"))?;
    let server = c.host_port();
    let err = |e: ApiError| server_error(e, &server);
    match pos.as_slice() {
        ["get", "nodes" | "node" | "no", rest @ ..] => {
            let nodes = match rest.first() {
                Some(n) => vec![client::get(&c, &format!("/api/v1/nodes/{n}")).map_err(err)?],
                None => client::get(&c, "/api/v1/nodes").map_err(err)?["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            };
            print_nodes(env, &nodes, rest.is_empty(), p.get("output"))
        }
        ["delete", "node" | "nodes" | "no", names @ ..] if !names.is_empty() => {
            for n in names {
                client::delete(&c, &format!("/api/v1/nodes/{n}")).map_err(err)?;
                println!("node \"{n}\" deleted");
            }
            Ok(())
        }
        [verb @ ("cordon" | "uncordon"), names @ ..] if !names.is_empty() => {
            for n in names {
                cordon(&c, n, *verb == "cordon").map_err(err)?;
            }
            Ok(())
        }
        ["drain", names @ ..] if !names.is_empty() => {
            let _timed = super::latency::begin(env, super::latency::Op::Drain);
            drain(&c, names, &p).map_err(|e| match e {
                DrainError::Api(e) => err(e),
                DrainError::Text(t) => t,
            })
        }
        ["apply"] => {
            let f = p
                .get("filename")
                .ok_or("error: must specify one of -f and -k")?;
            apply(&c, f, &server)
        }
        _ => Err(format!(
            "error: the kh testbed kubectl double does not support `kubectl {}`; see tests/testbed/CONTRACT.md",
            p.positional.join(" ")
        )),
    }
}

fn ready(n: &Value) -> bool {
    n["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn print_nodes(
    env: &NodeEnv,
    nodes: &[Value],
    list: bool,
    output: Option<&str>,
) -> Result<(), String> {
    match output {
        Some("json") => {
            let v = if list {
                json!({"apiVersion": "v1", "items": nodes, "kind": "List", "metadata": {"resourceVersion": ""}})
            } else {
                nodes[0].clone()
            };
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return Ok(());
        }
        Some("yaml") => {
            let v = if list {
                json!({"apiVersion": "v1", "items": nodes, "kind": "List", "metadata": {"resourceVersion": ""}})
            } else {
                nodes[0].clone()
            };
            print!("{}", serde_yaml::to_string(&v).unwrap_or_default());
            return Ok(());
        }
        Some("name") => {
            for n in nodes {
                println!("node/{}", n["metadata"]["name"].as_str().unwrap_or_default());
            }
            return Ok(());
        }
        None | Some("wide") => {}
        Some(o) => {
            return Err(format!(
                "error: unable to match a printer suitable for the output format \"{o}\", allowed formats are: custom-columns,custom-columns-file,go-template,go-template-file,json,jsonpath,jsonpath-as-json,jsonpath-file,name,template,templatefile,wide,yaml"
            ))
        }
    }
    if nodes.is_empty() {
        eprintln!("No resources found");
        return Ok(());
    }
    let now = env.now();
    let rows: Vec<[String; 5]> = nodes
        .iter()
        .map(|n| {
            let labels = n["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut roles: Vec<String> = labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .map(str::to_string)
                .collect();
            roles.sort();
            let age = n["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(clock::parse_rfc3339)
                .and_then(|t| now.duration_since(t).ok())
                .map(clock::human_duration)
                .unwrap_or_else(|| "<unknown>".into());
            [
                n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                match (ready(n), n["spec"]["unschedulable"] == true) {
                    (true, false) => "Ready".into(),
                    (true, true) => "Ready,SchedulingDisabled".into(),
                    (false, false) => "NotReady".into(),
                    (false, true) => "NotReady,SchedulingDisabled".into(),
                },
                if roles.is_empty() {
                    "<none>".into()
                } else {
                    roles.join(",")
                },
                age,
                n["status"]["nodeInfo"]["kubeletVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "STATUS", "ROLES", "AGE", "VERSION"].map(String::from);
    print!("{}", super::kubeadm::table(&header, &rows));
    Ok(())
}

fn apply(c: &crate::kube::http::Client, file: &str, server: &str) -> Result<(), String> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| e.to_string())?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|_| format!("error: the path \"{file}\" does not exist"))?
    };
    let mut objects = vec![];
    for de in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(de).map_err(|e| {
            format!("error: error parsing {file}: error converting YAML to JSON: {e}")
        })?;
        if v.is_null() {
            continue;
        }
        if v["kind"] == "List" {
            objects.extend(v["items"].as_array().cloned().unwrap_or_default());
        } else {
            objects.push(v);
        }
    }
    if objects.is_empty() {
        return Err("error: no objects passed to apply".into());
    }
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        if kind.is_empty() || o["apiVersion"].as_str().unwrap_or_default().is_empty() {
            return Err(format!("error: error validating \"{file}\": error validating data: [apiVersion not set, kind not set]; if you choose to ignore these errors, turn validation off with --validate=false"));
        }
        let r = client::post(c, "/apis/testbed.kh.io/v1/apply", &json!({"object": o}))
            .map_err(|e| server_error(e, server))?;
        let group = o["apiVersion"]
            .as_str()
            .and_then(|a| a.split_once('/').map(|(g, _)| g.to_string()))
            .unwrap_or_default();
        let res = kind.to_lowercase();
        let what = if group.is_empty() {
            res
        } else {
            format!("{res}.{group}")
        };
        println!(
            "{what}/{name} {}",
            r["result"].as_str().unwrap_or("configured")
        );
    }
    Ok(())
}

/// Sets or clears `spec.unschedulable` on node `name`, with kubectl's
/// `node/N cordoned` / `already cordoned` lines.
fn cordon(c: &crate::kube::http::Client, name: &str, on: bool) -> Result<(), ApiError> {
    let path = format!("/api/v1/nodes/{name}");
    let mut node = client::get(c, &path)?;
    let word = if on { "cordoned" } else { "uncordoned" };
    if (node["spec"]["unschedulable"] == true) == on {
        println!("node/{name} already {word}");
        return Ok(());
    }
    if on {
        node["spec"]["unschedulable"] = json!(true);
    } else if let Some(spec) = node["spec"].as_object_mut() {
        spec.remove("unschedulable");
    }
    client::put(c, &path, &node)?;
    println!("node/{name} {word}");
    Ok(())
}

enum DrainError {
    Api(ApiError),
    Text(String),
}

impl From<ApiError> for DrainError {
    fn from(e: ApiError) -> Self {
        DrainError::Api(e)
    }
}

/// A Go duration (`30s`, `1m30s`, `500ms`, `0`).
pub fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..n_end].parse().ok()?;
        let after = &rest[n_end..];
        let u_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let unit = match &after[..u_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += n * unit;
        rest = &after[u_end..];
    }
    Some(std::time::Duration::from_secs_f64(total))
}

/// Go's rendering of a duration: `1m0s`, `5s`, `500ms`.
pub fn go_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}ms", d.as_millis())
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// `kubectl drain NODE... [--ignore-daemonsets] [--delete-emptydir-data]
/// [--timeout=D]`: cordons, then evicts the node's pods (mirror pods are
/// left alone), retrying a PodDisruptionBudget refusal every 5 s until the
/// timeout (none by default, as kubectl).
fn drain(
    c: &crate::kube::http::Client,
    names: &[&str],
    p: &args::Parsed,
) -> Result<(), DrainError> {
    let timeout = match p.get("timeout") {
        Some(t) => Some(parse_go_duration(t).ok_or_else(|| {
            DrainError::Text(format!(
                "error: invalid argument \"{t}\" for \"--timeout\" flag: time: invalid duration \"{t}\""
            ))
        })?)
        .filter(|d| !d.is_zero()),
        None => None,
    };
    for name in names {
        cordon(c, name, true)?;
    }
    let mut remaining: Vec<String> = Vec::new();
    let mut fatal = None;
    for name in names {
        match drain_one(c, name, p, timeout)? {
            Ok(()) => println!("node/{name} drained"),
            Err(e) => {
                eprintln!("error: unable to drain node \"{name}\" due to error: {e}, continuing command...");
                remaining.push(name.to_string());
                fatal = Some(e);
            }
        }
    }
    match fatal {
        None => Ok(()),
        Some(e) => {
            eprintln!("There are pending nodes to be drained:");
            for n in &remaining {
                eprintln!(" {n}");
            }
            Err(DrainError::Text(format!("error: {e}")))
        }
    }
}

fn drain_one(
    c: &crate::kube::http::Client,
    name: &str,
    p: &args::Parsed,
    timeout: Option<std::time::Duration>,
) -> Result<Result<(), String>, DrainError> {
    let pods = client::get(
        c,
        &format!("/api/v1/pods?fieldSelector=spec.nodeName={name}"),
    )?["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let id = |p: &Value| {
        format!(
            "{}/{}",
            p["metadata"]["namespace"].as_str().unwrap_or("default"),
            p["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let mut daemons = vec![];
    let mut local = vec![];
    let mut evict = vec![];
    for pod in pods {
        if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
            continue;
        }
        let owned_by_ds = pod["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|o| o.iter().any(|r| r["kind"] == "DaemonSet"));
        if owned_by_ds {
            daemons.push(id(&pod));
            continue;
        }
        let empty_dir = pod["spec"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v.get("emptyDir").is_some()));
        if empty_dir {
            local.push(id(&pod));
        }
        evict.push(pod);
    }
    let mut errors = vec![];
    if !daemons.is_empty() && !p.flag("ignore-daemonsets") {
        errors.push(format!(
            "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {}",
            daemons.join(", ")
        ));
    }
    if !local.is_empty() && !p.flag("delete-emptydir-data") {
        errors.push(format!(
            "cannot delete Pods with local storage (use --delete-emptydir-data to override): {}",
            local.join(", ")
        ));
    }
    if !errors.is_empty() {
        let e = format!("[{}]", errors.join(", "));
        eprintln!(
            "error: unable to drain node \"{name}\" due to error: {e}, continuing command..."
        );
        eprintln!("There are pending nodes to be drained:\n {name}");
        return Err(DrainError::Text(format!("error: {e}")));
    }
    if !daemons.is_empty() {
        eprintln!(
            "Warning: ignoring DaemonSet-managed Pods: {}",
            daemons.join(", ")
        );
    }
    let start = std::time::Instant::now();
    for pod in &evict {
        println!("evicting pod {}", id(pod));
    }
    let mut pending = vec![];
    for pod in &evict {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let pn = pod["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("/api/v1/namespaces/{ns}/pods/{pn}/eviction");
        let body = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pn, "namespace": ns}});
        loop {
            if let Some(t) = timeout {
                if start.elapsed() >= t {
                    pending.push((
                        pn.to_string(),
                        format!(
                            "error when evicting pods/\"{pn}\" -n \"{ns}\": global timeout reached: {}",
                            go_duration(t)
                        ),
                    ));
                    break;
                }
            }
            match client::post(c, &path, &body) {
                Ok(_) => {
                    println!("pod/{pn} evicted");
                    break;
                }
                Err(e) if e.is_not_found() => break,
                Err(ApiError::Status {
                    code: 429, message, ..
                }) => {
                    eprintln!("error when evicting pods/\"{pn}\" -n \"{ns}\" (will retry after 5s): {message}");
                    let mut wait = std::time::Duration::from_secs(5);
                    if let Some(t) = timeout {
                        wait = wait.min(t.saturating_sub(start.elapsed()));
                    }
                    std::thread::sleep(wait);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if pending.is_empty() {
        return Ok(Ok(()));
    }
    let e = pending
        .iter()
        .map(|(_, e)| e.clone())
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!("There are pending pods in node \"{name}\" when an error occurred: {e}");
    for (pn, _) in &pending {
        eprintln!("pod/{pn}");
    }
    Ok(Err(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_durations_parse_and_print_as_go_does() {
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(3661)), "1h1m1s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
    }
}
