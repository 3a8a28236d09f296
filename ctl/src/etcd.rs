//! `khctl etcd members | remove-member | replace`, `khctl health`, `khctl history`.

use kh::proto::admin_client::AdminClient;
use kh::proto::{self};
use serde_json::json;
use tonic::transport::Channel;

use crate::output::{print_json, Table};
use crate::{explain, outln, Failure, Format};

fn size(bytes: u64) -> String {
    match bytes {
        0 => "-".into(),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
    }
}

pub async fn members(
    client: &mut AdminClient<Channel>,
    addr: &str,
    format: Format,
) -> anyhow::Result<()> {
    let r = client
        .etcd_members(proto::AdminEtcdMembersRequest {})
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    if format == Format::Json {
        let rows: Vec<_> = r
            .members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id_hex, "name": m.name, "peerURLs": m.peer_urls, "clientURLs": m.client_urls,
                    "learner": m.is_learner, "leader": m.is_leader, "healthy": m.healthy,
                    "healthError": m.health_error, "dbSize": m.db_size,
                    "node": if m.node.is_empty() { serde_json::Value::Null } else { json!(m.node) },
                })
            })
            .collect();
        print_json(&json!({ "members": rows, "via": r.via }));
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "PEER URLS",
        "ROLE",
        "LEADER",
        "HEALTH",
        "DB SIZE",
        "NODE",
    ]);
    for m in &r.members {
        t.row(vec![
            m.id_hex.clone(),
            if m.name.is_empty() {
                "-".into()
            } else {
                m.name.clone()
            },
            m.peer_urls.join(","),
            if m.is_learner { "learner" } else { "voter" }.into(),
            if m.is_leader { "yes" } else { "" }.into(),
            if m.healthy {
                "healthy".into()
            } else {
                format!("UNHEALTHY ({})", m.health_error)
            },
            size(m.db_size),
            if m.node.is_empty() {
                "unknown member".into()
            } else {
                m.node.clone()
            },
        ]);
    }
    t.print_or("No etcd members.");
    outln!(
        "\n(read through {}; IDs are hex, as `etcdctl member remove` expects)",
        r.via
    );
    Ok(())
}

pub async fn health(
    client: &mut AdminClient<Channel>,
    addr: &str,
    format: Format,
) -> anyhow::Result<()> {
    let r = client
        .health(proto::HealthRequest {})
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    if format == Format::Json {
        let rows: Vec<_> = r
            .checks
            .iter()
            .map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix}))
            .collect();
        print_json(&json!({ "ok": r.ok, "checks": rows }));
    } else {
        for c in &r.checks {
            outln!(
                "{:<4}  {:<34} {}",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.detail
            );
            if !c.ok && !c.fix.is_empty() {
                outln!("      fix: {}", c.fix);
            }
        }
    }
    if r.ok {
        Ok(())
    } else {
        let bad: Vec<&str> = r
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        Err(anyhow::Error::new(Failure::Operation(format!(
            "unhealthy: {}",
            bad.join(", ")
        ))))
    }
}

pub async fn remove_member(
    client: &mut AdminClient<Channel>,
    addr: &str,
    req: proto::EtcdRemoveMemberRequest,
    format: Format,
) -> anyhow::Result<()> {
    let r = client
        .etcd_remove_member(req)
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    if format == Format::Json {
        print_json(&json!({ "removed": r.removed_id_hex, "message": r.message }));
    } else {
        outln!("{}", r.message);
    }
    Ok(())
}

pub async fn replace(
    client: &mut AdminClient<Channel>,
    addr: &str,
    req: proto::EtcdReplaceRequest,
    format: Format,
) -> anyhow::Result<()> {
    let stream = client
        .etcd_replace(req)
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    crate::rollout::follow_events(stream, format, "Replacement").await
}

pub async fn history(
    client: &mut AdminClient<Channel>,
    addr: &str,
    limit: u32,
    format: Format,
) -> anyhow::Result<()> {
    let r = client
        .history(proto::HistoryRequest { limit })
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    if format == Format::Json {
        let rows: Vec<_> = r
            .entries
            .iter()
            .map(|e| json!({"time": kh::time::rfc3339(e.unix_ms), "operation": e.operation, "node": e.node, "step": e.step, "outcome": e.outcome, "message": e.message}))
            .collect();
        print_json(&json!({ "entries": rows }));
        return Ok(());
    }
    let mut t = Table::new(&["TIME", "OPERATION", "NODE", "STEP", "OUTCOME", "MESSAGE"]);
    for e in &r.entries {
        let mut msg = e.message.lines().next().unwrap_or_default().to_string();
        msg.truncate(80);
        // An empty cell reads as "-", never as blanks.
        let cell = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        t.row(vec![
            kh::time::rfc3339(e.unix_ms),
            cell(&e.operation),
            cell(&e.node),
            cell(&e.step),
            cell(&e.outcome),
            msg,
        ]);
    }
    t.print_or("No history yet.");
    Ok(())
}
