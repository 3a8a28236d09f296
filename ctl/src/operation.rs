//! `khctl operation status | cancel`: which operations are pending, which
//! can be resumed (and with which command), which can be forgotten.

use kh::proto::admin_client::AdminClient;
use kh::proto::{self};
use serde_json::json;
use tonic::transport::Channel;

use crate::output::{print_json, Table};
use crate::{explain, outln, Format};

pub async fn status(
    client: &mut AdminClient<Channel>,
    addr: &str,
    format: Format,
) -> anyhow::Result<()> {
    let r = client
        .operations(proto::OperationsRequest {})
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    if format == Format::Json {
        let rows: Vec<_> = r
            .operations
            .iter()
            .map(|o| {
                json!({
                    "kind": o.kind, "operation": o.operation, "state": o.state,
                    "started": kh::time::rfc3339(o.started_unix_ms),
                    "finished": (o.finished_unix_ms != 0).then(|| kh::time::rfc3339(o.finished_unix_ms)),
                    "changed": o.changed, "pending": o.pending, "next": o.next, "message": o.message,
                })
            })
            .collect();
        print_json(&json!({ "operations": rows }));
        return Ok(());
    }
    let mut t = Table::new(&["KIND", "OPERATION", "STARTED", "STATE", "CHANGED", "NEXT"]);
    for o in &r.operations {
        t.row(vec![
            o.kind.clone(),
            o.operation.clone(),
            kh::time::rfc3339(o.started_unix_ms),
            o.state.clone(),
            if o.changed { "yes" } else { "no" }.into(),
            if o.next.is_empty() {
                "-".into()
            } else {
                o.next.clone()
            },
        ]);
    }
    t.print_or("No operation has run on this coordinator.");
    if !r.operations.is_empty() && !r.operations.iter().any(|o| o.pending) {
        outln!("\nNothing is pending.");
    }
    Ok(())
}

pub async fn cancel(
    client: &mut AdminClient<Channel>,
    addr: &str,
    kind: String,
    format: Format,
) -> anyhow::Result<()> {
    let r = client
        .cancel_operation(proto::CancelOperationRequest { kind })
        .await
        .map_err(|s| explain(addr, s))?
        .into_inner();
    if format == Format::Json {
        print_json(&json!({ "message": r.message }));
    } else {
        outln!("{}", r.message);
    }
    Ok(())
}
