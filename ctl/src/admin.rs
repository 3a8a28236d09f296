//! `khctl admin`: admin credentials. List who holds one, issue a new one,
//! revoke one.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use kh::proto::admin_client::AdminClient;
use kh::proto::*;
use tonic::transport::Channel;

use crate::help;
use crate::output::{print_json, Table};
use crate::{explain, out, outln, Format};

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Every admin certificate: serial, name, issued, expires, revoked.
    #[command(arg = help::output("`table` (default): one row per certificate; `json`: one object for scripts, {\"admins\": [{\"serial\", \"name\", \"issued\", \"expires\", \"revoked\"}]}"))]
    List,
    /// Issue a new admin credential (a khconfig file) for NAME: to stdout,
    /// or with -o FILE to that file, mode 0600.
    #[command(arg = help::output("The file to write the new khconfig to, mode 0600, never over an existing file (`-` or none: stdout). Not a format: this command always writes YAML").value_name("FILE"))]
    Create {
        /// Who the credential is for (letters, digits, '-', '_', '.', '@').
        name: String,
    },
    /// Revoke an admin certificate by its serial, or every certificate of an
    /// admin NAME. The coordinator refuses it from then on. You cannot
    /// revoke the credential you are using.
    #[command(arg = help::output("`table` (default): one line per revoked certificate; `json`: one object for scripts, {\"admins\": [...]}, the certificates revoked"))]
    Revoke {
        /// A serial from `khctl admin list`, or an admin name.
        target: String,
    },
}

fn rows(certs: &[AdminCertInfo], now: std::time::SystemTime, format: Format) {
    if format == Format::Json {
        let rows: Vec<_> = certs
            .iter()
            .map(|a| {
                serde_json::json!({
                    "serial": a.serial,
                    "name": a.name,
                    "issued": kh::time::rfc3339(a.issued_unix_ms),
                    "expires": kh::time::rfc3339(a.expires_unix_ms),
                    "revoked": (a.revoked_unix_ms != 0).then(|| kh::time::rfc3339(a.revoked_unix_ms)),
                })
            })
            .collect();
        print_json(&serde_json::json!({ "admins": rows }));
        return;
    }
    let mut t = Table::new(&["SERIAL", "NAME", "ISSUED", "EXPIRES", "REVOKED"]);
    for a in certs {
        t.row(vec![
            a.serial.clone(),
            a.name.clone(),
            kh::time::rfc3339(a.issued_unix_ms),
            kh::time::relative(now, a.expires_unix_ms),
            if a.revoked_unix_ms == 0 {
                "-".to_string()
            } else {
                kh::time::rfc3339(a.revoked_unix_ms)
            },
        ]);
    }
    t.print_or("No admin certificates recorded.");
}

pub async fn run(
    client: &mut AdminClient<Channel>,
    addr: &str,
    cmd: AdminCmd,
    file: Option<PathBuf>,
    format: Format,
) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    match cmd {
        AdminCmd::List => {
            let r = client
                .list_admins(ListAdminsRequest {})
                .await
                .map_err(|s| explain(addr, s))?
                .into_inner();
            rows(&r.admins, now, format);
        }
        AdminCmd::Create { name } => {
            let r = client
                .create_admin(CreateAdminRequest { name })
                .await
                .map_err(|s| explain(addr, s))?
                .into_inner();
            let info = r.info.unwrap_or_default();
            match file {
                None => out!("{}", r.khconfig),
                Some(path) => {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| {
                            format!(
                                "writing {} (an existing file is never overwritten)",
                                path.display()
                            )
                        })?;
                    f.write_all(r.khconfig.as_bytes())?;
                    eprintln!(
                        "Wrote {} (admin {}, serial {}, mode 0600). Use it with: khctl --config {} nodes",
                        path.display(),
                        info.name,
                        info.serial,
                        path.display()
                    );
                }
            }
        }
        AdminCmd::Revoke { target } => {
            let r = client
                .revoke_admin(RevokeAdminRequest { target })
                .await
                .map_err(|s| explain(addr, s))?
                .into_inner();
            if format == Format::Json {
                rows(&r.revoked, now, format);
            } else {
                for a in &r.revoked {
                    outln!(
                        "Revoked admin certificate {} ({}); the coordinator refuses it from now on.",
                        a.serial,
                        a.name
                    );
                }
            }
        }
    }
    Ok(())
}
