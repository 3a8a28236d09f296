//! `khctl certs check`: the Kubernetes certificates of every node, in the
//! shape of `kubeadm certs check-expiration`, with what needs attention and
//! the command that fixes it.

use clap::Subcommand;
use kh::proto::admin_client::AdminClient;
use kh::proto::*;
use serde_json::json;
use tonic::transport::Channel;

use crate::help;
use crate::output::{print_json, Table};
use crate::{explain, outln, Failure, Format};

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Every node's kubeadm certificates, kubeconfig client certificates and
    /// kubelet client certificate, and the CAs: when each expires. Exits 6
    /// when one is inside certificates.renewBefore, has expired or cannot be
    /// read, or a node cannot be asked.
    #[command(arg = help::output("`table` (default): the certificates of all nodes (NODE, CERTIFICATE, EXPIRES, RESIDUAL TIME, CERTIFICATE AUTHORITY, EXTERNALLY MANAGED), the CAs, then what needs attention and its fix; `json`: one object for scripts, {\"ok\", \"now\", \"renewBefore\", \"renewBeforeSeconds\", \"nodes\": [{\"node\", \"role\", \"error\", \"certificates\": [{\"name\", \"path\", \"notBefore\", \"notAfter\", \"residualSeconds\", \"ca\", \"isCa\", \"externallyManaged\", \"error\"}]}], \"attention\": [{\"node\", \"cert\", \"reason\", \"detail\", \"fix\"}]}"))]
    Check,
    /// Renew the control planes' kubeadm certificates, one control plane at
    /// a time: `kubeadm certs renew`, then its static pods restarted (etcd,
    /// kube-apiserver, kube-controller-manager, kube-scheduler), each back
    /// before the next control plane. Works on an already expired cluster.
    /// Resumable: an interrupted renewal is finished with the same command.
    #[command(arg = help::output("`table` (default): live progress per control plane and step, then the outcome; `json`: nothing until the end, then one object for scripts: ok, failure, node, step, message, hint, dryRun, plan and every event"))]
    Renew(crate::certs_renew::RenewArgs),
}

/// Runs one `khctl certs` command.
pub async fn run(
    client: &mut AdminClient<Channel>,
    addr: &str,
    cmd: CertsCmd,
    output: Format,
) -> anyhow::Result<()> {
    match cmd {
        CertsCmd::Check => check(client, addr, output).await,
        CertsCmd::Renew(args) => crate::certs_renew::renew(client, addr, args, output).await,
    }
}

async fn check(
    client: &mut AdminClient<Channel>,
    addr: &str,
    output: Format,
) -> anyhow::Result<()> {
    let r = client
        .certs_check(CertsCheckRequest {})
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    if output == Format::Json {
        print_json(&to_json(&r));
    } else {
        outln!("{}", render(&r));
    }
    if r.ok {
        Ok(())
    } else {
        Err(anyhow::Error::new(Failure::Attention(summary(&r))))
    }
}

/// `Dec 30, 2020 23:36 UTC`, as kubeadm prints expiry dates.
pub fn kubeadm_date(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = s
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("???");
    format!(
        "{month} {}, {} {} UTC",
        s.get(8..10).unwrap_or_default(),
        s.get(0..4).unwrap_or_default(),
        s.get(11..16).unwrap_or_default()
    )
}

/// kubeadm's residual time (`364d`, `9y`), or `expired`.
fn residual(not_after: i64, now: i64) -> String {
    if not_after <= now {
        "expired".into()
    } else {
        kh::time::short_duration(not_after - now)
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn render(r: &CertsCheckResponse) -> String {
    let now = r.now_unix;
    let mut leaves = Table::new(&[
        "NODE",
        "CERTIFICATE",
        "EXPIRES",
        "RESIDUAL TIME",
        "CERTIFICATE AUTHORITY",
        "EXTERNALLY MANAGED",
    ]);
    let mut cas = Table::new(&[
        "NODE",
        "CERTIFICATE AUTHORITY",
        "EXPIRES",
        "RESIDUAL TIME",
        "EXTERNALLY MANAGED",
    ]);
    for n in &r.nodes {
        if !n.error.is_empty() {
            leaves.row(vec![
                n.node.clone(),
                "-".into(),
                "not read: the node did not answer".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            continue;
        }
        for c in &n.certs {
            let (expires, left) = if c.error.is_empty() {
                (
                    kubeadm_date(c.not_after_unix),
                    residual(c.not_after_unix, now),
                )
            } else {
                ("unreadable".to_string(), "-".to_string())
            };
            if c.is_ca {
                cas.row(vec![
                    n.node.clone(),
                    c.name.clone(),
                    expires,
                    left,
                    yes_no(c.externally_managed),
                ]);
            } else {
                leaves.row(vec![
                    n.node.clone(),
                    c.name.clone(),
                    expires,
                    left,
                    c.ca.clone(),
                    yes_no(c.externally_managed),
                ]);
            }
        }
    }
    let mut out = leaves.render();
    out.push_str("\n\n");
    out.push_str(&cas.render());
    out.push_str("\n\n");
    let window = humantime::format_duration(std::time::Duration::from_secs(r.renew_before_seconds));
    if r.ok {
        out.push_str(&format!(
            "All certificates of {} nodes are valid for more than {window} (certificates.renewBefore).",
            r.nodes.len()
        ));
    } else {
        out.push_str(&format!(
            "{} need attention (certificates.renewBefore: {window}):",
            count(r.attention.len())
        ));
        for a in &r.attention {
            let what = if a.cert.is_empty() {
                a.node.clone()
            } else {
                format!("{} on {}", a.cert, a.node)
            };
            out.push_str(&format!(
                "\n  {what}: {} ({}); fix: {}",
                a.reason, a.detail, a.fix
            ));
        }
        out.push('\n');
        out.push_str(&summary(r));
    }
    out
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 item".into()
    } else {
        format!("{n} items")
    }
}

/// One line: what needs attention and the command that fixes most of it.
fn summary(r: &CertsCheckResponse) -> String {
    let mut by_reason: Vec<(String, usize)> = vec![];
    for a in &r.attention {
        match by_reason.iter_mut().find(|(k, _)| *k == a.reason) {
            Some((_, n)) => *n += 1,
            None => by_reason.push((a.reason.clone(), 1)),
        }
    }
    let parts: Vec<String> = by_reason
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    let renewable = r
        .attention
        .iter()
        .any(|a| a.fix.contains("khctl certs renew"));
    format!(
        "certificates need attention: {}{}",
        parts.join(", "),
        if renewable {
            "; renew them with `khctl certs renew --all`"
        } else {
            "; see each fix above"
        }
    )
}

fn to_json(r: &CertsCheckResponse) -> serde_json::Value {
    let time = |unix: i64| kh::time::rfc3339(u64::try_from(unix).unwrap_or(0).saturating_mul(1000));
    let nodes: Vec<_> = r
        .nodes
        .iter()
        .map(|n| {
            let certs: Vec<_> = n
                .certs
                .iter()
                .map(|c| {
                    let valid = c.error.is_empty();
                    json!({
                        "name": c.name,
                        "path": c.path,
                        "notBefore": valid.then(|| time(c.not_before_unix)),
                        "notAfter": valid.then(|| time(c.not_after_unix)),
                        "residualSeconds": valid.then(|| c.not_after_unix - r.now_unix),
                        "ca": c.ca,
                        "isCa": c.is_ca,
                        "externallyManaged": c.externally_managed,
                        "error": c.error,
                    })
                })
                .collect();
            json!({"node": n.node, "role": n.role, "error": n.error, "certificates": certs})
        })
        .collect();
    let attention: Vec<_> = r
        .attention
        .iter()
        .map(|a| json!({"node": a.node, "cert": a.cert, "reason": a.reason, "detail": a.detail, "fix": a.fix}))
        .collect();
    json!({
        "ok": r.ok,
        "now": time(r.now_unix),
        "renewBefore": humantime::format_duration(std::time::Duration::from_secs(r.renew_before_seconds)).to_string(),
        "renewBeforeSeconds": r.renew_before_seconds,
        "nodes": nodes,
        "attention": attention,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_609_371_360; // Dec 30, 2020 23:36 UTC

    fn cert(name: &str, ca: &str, days: i64) -> ClusterCert {
        ClusterCert {
            name: name.into(),
            path: format!("/etc/kubernetes/pki/{name}.crt"),
            not_before_unix: NOW - DAY,
            not_after_unix: NOW + days * DAY,
            ca: ca.into(),
            is_ca: ca.is_empty(),
            externally_managed: false,
            error: String::new(),
        }
    }

    fn response() -> CertsCheckResponse {
        CertsCheckResponse {
            nodes: vec![
                NodeCerts {
                    node: "cp-1".into(),
                    role: "control-plane".into(),
                    certs: vec![
                        cert("apiserver", "ca", 20),
                        cert("etcd-peer", "etcd-ca", 364),
                        cert("ca", "", 3300),
                    ],
                    error: String::new(),
                },
                NodeCerts {
                    node: "w-1".into(),
                    role: "worker".into(),
                    certs: vec![cert("kubelet-client", "ca", 364)],
                    error: String::new(),
                },
            ],
            now_unix: NOW,
            renew_before_seconds: 30 * DAY as u64,
            attention: vec![CertAttention {
                node: "cp-1".into(),
                cert: "apiserver".into(),
                reason: "expiring".into(),
                detail: "expires in 20d".into(),
                fix: "`khctl certs renew --all`".into(),
            }],
            ok: false,
        }
    }

    #[test]
    fn the_tables_have_kubeadm_s_columns_dates_and_residual_times() {
        assert_eq!(kubeadm_date(NOW), "Dec 30, 2020 23:36 UTC");
        let text = render(&response());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NODE   CERTIFICATE      EXPIRES                  RESIDUAL TIME   CERTIFICATE AUTHORITY   EXTERNALLY MANAGED"
        );
        assert_eq!(
            lines[1],
            "cp-1   apiserver        Jan 19, 2021 23:36 UTC   20d             ca                      no"
        );
        assert!(lines[3].starts_with("w-1    kubelet-client"), "{text}");
        assert_eq!(
            lines[5],
            "NODE   CERTIFICATE AUTHORITY   EXPIRES                  RESIDUAL TIME   EXTERNALLY MANAGED"
        );
        assert!(
            lines[6].starts_with("cp-1   ca                      ")
                && lines[6].contains("   9y   "),
            "{text}"
        );
        assert!(
            text.contains("1 item need attention (certificates.renewBefore: 30days):\n  apiserver on cp-1: expiring (expires in 20d); fix: `khctl certs renew --all`"),
            "{text}"
        );
        assert!(text.ends_with(
            "certificates need attention: 1 expiring; renew them with `khctl certs renew --all`"
        ));
        assert_eq!(residual(NOW - 1, NOW), "expired");
    }

    #[test]
    fn json_has_every_certificate_of_every_node() {
        let v = to_json(&response());
        assert_eq!(v["ok"], false);
        assert_eq!(v["renewBeforeSeconds"], 30 * DAY);
        assert_eq!(v["nodes"][1]["certificates"][0]["name"], "kubelet-client");
        assert_eq!(
            v["nodes"][0]["certificates"][0]["residualSeconds"],
            20 * DAY
        );
        assert_eq!(
            v["nodes"][0]["certificates"][0]["notAfter"],
            "2021-01-19T23:36:00Z"
        );
        assert_eq!(v["attention"][0]["reason"], "expiring");
    }
}
