//! `khctl nodes`: the enrolled nodes with their health; `khctl nodes delete
//! NAME` deregisters one.

use std::time::Duration;

use clap::Subcommand;
use kh::proto::admin_client::AdminClient;
use kh::proto::*;
use tonic::transport::Channel;

use crate::help;
use crate::output::{print_json, Table};
use crate::{explain, outln, Format};

#[derive(Subcommand)]
pub enum NodesCmd {
    /// Deregister a node and revoke its certificate, so its agent can no
    /// longer connect. Refused for a node the cluster still has (in the held
    /// spec and joined) unless a replacement retired it.
    #[command(arg = help::output("`table` (default): the coordinator's confirmation line; `json`: one object for scripts, {\"deleted\": NAME, \"message\"}"))]
    Delete {
        /// The node's name, as `khctl nodes` lists it.
        name: String,
    },
}

/// Runs `khctl nodes` (the list) or `khctl nodes delete NAME`.
pub async fn run(
    client: &mut AdminClient<Channel>,
    addr: &str,
    sub: Option<NodesCmd>,
    output: Format,
) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    match sub {
        Some(NodesCmd::Delete { name }) => {
            let r = client
                .delete_node(DeleteNodeRequest { name: name.clone() })
                .await
                .map_err(|s| explain(addr, s))?
                .into_inner();
            if output == Format::Json {
                print_json(&serde_json::json!({ "deleted": name, "message": r.message }));
            } else {
                outln!("{}", r.message);
            }
        }
        None => {
            let r = client
                .list_nodes(ListNodesRequest {})
                .await
                .map_err(|s| explain(addr, s))?
                .into_inner();
            print_nodes(&r, output, now)?;
        }
    }
    Ok(())
}

fn print_nodes(
    r: &ListNodesResponse,
    format: Format,
    now: std::time::SystemTime,
) -> anyhow::Result<()> {
    if format == Format::Json {
        let rows: Vec<_> = r
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name,
                    "role": n.role,
                    "endpoint": n.endpoint,
                    "health": n.health,
                    "lastSeen": kh::time::rfc3339(n.last_seen_unix_ms),
                    "enrolled": kh::time::rfc3339(n.enrolled_unix_ms),
                    "certExpires": kh::time::rfc3339(n.cert_expires_unix_ms),
                    "agentVersion": n.agent_version,
                    "warnings": n.warnings,
                    "retired": n.retired,
                    "retiredReason": n.retired_reason,
                    "retiredAt": if n.retired { serde_json::json!(kh::time::rfc3339(n.retired_unix_ms)) } else { serde_json::Value::Null },
                    "facts": n.facts,
                })
            })
            .collect();
        print_json(
            &serde_json::json!({ "nodes": rows, "heartbeatIntervalMs": r.heartbeat_interval_ms }),
        );
        return Ok(());
    }
    let mut t = Table::new(&[
        "NAME",
        "ROLE",
        "ADDRESS",
        "HEALTH",
        "LAST SEEN",
        "OS",
        "KERNEL",
        "CONTAINERD",
        "KUBELET",
    ]);
    for n in &r.nodes {
        let f = n.facts.clone().unwrap_or_default();
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        t.row(vec![
            n.name.clone(),
            if n.retired {
                "retired".into()
            } else if n.role.is_empty() {
                "<none>".into()
            } else {
                n.role.clone()
            },
            dash(&n.endpoint),
            n.health.clone(),
            kh::time::relative(now, n.last_seen_unix_ms),
            dash(&f.os),
            dash(&f.kernel),
            dash(&f.containerd_version),
            dash(&f.kubelet_version),
        ]);
    }
    t.print_or("No nodes enrolled. Create a token with `khctl token create --node NAME` and run the printed command on the node.");
    let warned: Vec<_> = r.nodes.iter().filter(|n| !n.warnings.is_empty()).collect();
    if !warned.is_empty() {
        outln!();
        for n in warned {
            for w in &n.warnings {
                outln!("WARNING {}: {w}", n.name);
            }
        }
    }
    let retired: Vec<_> = r.nodes.iter().filter(|n| n.retired).collect();
    if !retired.is_empty() {
        outln!();
        for n in retired {
            outln!(
                "RETIRED {}: {}; deregister it with `khctl nodes delete {}`",
                n.name,
                n.retired_reason,
                n.name
            );
        }
    }
    if r.nodes.iter().any(|n| n.health != "Ready" && !n.retired) {
        let window = Duration::from_millis(r.heartbeat_interval_ms * 3);
        outln!(
            "\nNotReady: no heartbeat within {}. Check `systemctl status kh-agent` on those nodes and that they can reach the coordinator.",
            humantime::format_duration(window)
        );
    }
    Ok(())
}
