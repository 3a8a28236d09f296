//! `khctl token create | list | delete`: enrollment tokens for new agents.

use std::time::Duration;

use clap::Subcommand;
use kh::proto::admin_client::AdminClient;
use kh::proto::*;
use tonic::transport::Channel;

use crate::help;
use crate::output::{print_json, Table};
use crate::{explain, outln, Format};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a single-use token bound to one node name, and print the enroll command.
    #[command(arg = help::output("`table` (default): the token and the enroll command to run on the node; `json`: one object for scripts, {\"token\", \"node\", \"expires\", \"force\", \"caCertHash\", \"coordinator\", \"enrollCommand\"}"))]
    Create {
        /// The node name the agent will enroll as.
        #[arg(long)]
        node: String,
        /// How long the token stays valid (e.g. 30m, 2h; at most 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Allow re-enrolling a node that is already enrolled; its old certificate stops working.
        #[arg(long)]
        force: bool,
    },
    /// List tokens (used and expired ones stay listed for a day).
    #[command(arg = help::output("`table` (default): one row per token; `json`: one object for scripts, {\"tokens\": [{\"id\", \"node\", \"state\", \"force\", \"created\", \"expires\"}]}"))]
    List,
    /// Delete a token by its id (the part before the dot) or its full text.
    #[command(arg = help::output("`table` (default): a confirmation line; `json`: one object for scripts, {\"deleted\": ID}"))]
    Delete {
        /// The token's id (the part before the dot) or its full text.
        id: String,
    },
}

/// Runs one `khctl token` command.
pub async fn run(
    client: &mut AdminClient<Channel>,
    addr: &str,
    cmd: TokenCmd,
    output: Format,
) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    match cmd {
        TokenCmd::Create { node, ttl, force } => {
            let r = client
                .create_token(CreateTokenRequest {
                    node_name: node,
                    ttl_seconds: ttl.map(|d| d.as_secs().max(1)).unwrap_or(0),
                    force,
                })
                .await
                .map_err(|s| explain(addr, s))?
                .into_inner();
            let info = r.info.unwrap_or_default();
            if output == Format::Json {
                print_json(&serde_json::json!({
                    "token": r.token,
                    "node": info.node_name,
                    "expires": kh::time::rfc3339(info.expires_unix_ms),
                    "force": info.force,
                    "caCertHash": r.ca_cert_hash,
                    "coordinator": r.coordinator,
                    "enrollCommand": r.enroll_command,
                }));
            } else {
                outln!(
                    "Token for node {} (single use, expires {}, {}):\n",
                    info.node_name,
                    kh::time::relative(now, info.expires_unix_ms),
                    kh::time::rfc3339(info.expires_unix_ms)
                );
                outln!("  {}\n", r.enroll_command);
                outln!("Run it on the node as root. The token is shown only now.");
            }
        }
        TokenCmd::List => {
            let r = client
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(|s| explain(addr, s))?
                .into_inner();
            if output == Format::Json {
                let rows: Vec<_> = r
                    .tokens
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "id": t.id, "node": t.node_name, "state": t.state, "force": t.force,
                            "created": kh::time::rfc3339(t.created_unix_ms),
                            "expires": kh::time::rfc3339(t.expires_unix_ms),
                        })
                    })
                    .collect();
                print_json(&serde_json::json!({ "tokens": rows }));
            } else {
                let mut t = Table::new(&["ID", "NODE", "STATE", "EXPIRES", "FORCE"]);
                for tok in &r.tokens {
                    t.row(vec![
                        tok.id.clone(),
                        tok.node_name.clone(),
                        tok.state.clone(),
                        kh::time::relative(now, tok.expires_unix_ms),
                        if tok.force { "yes" } else { "" }.to_string(),
                    ]);
                }
                t.print_or("No tokens. Create one with `khctl token create --node NAME`.");
            }
        }
        TokenCmd::Delete { id } => {
            client
                .delete_token(DeleteTokenRequest { id: id.clone() })
                .await
                .map_err(|s| explain(addr, s))?;
            if output == Format::Json {
                print_json(&serde_json::json!({ "deleted": id.split('.').next() }));
            } else {
                outln!(
                    "Deleted token {}.",
                    id.split('.').next().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
