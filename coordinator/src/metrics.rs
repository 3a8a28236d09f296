//! The coordinator's plain-HTTP endpoint for monitoring (`--metrics-address`,
//! off unless set): `/healthz` and `/metrics`. The values are read from the
//! store at each scrape, so they are right after a restart too.
//!
//! - `kh_coordinator_etcd_snapshot_last_success_timestamp_seconds`: when the
//!   newest snapshot kh took (not imported) was stored; 0 when there is none.
//! - `kh_coordinator_etcd_snapshots`, `kh_coordinator_etcd_snapshot_bytes`:
//!   how many snapshots are stored, and their plaintext bytes.
//! - `kh_coordinator_etcd_snapshot_schedule_seconds`: `etcd.snapshots.every`
//!   of the held spec; 0 when snapshots are not scheduled. The alert rule
//!   compares the age against twice this.
//! - `kh_coordinator_remediation_blocked{reason}`: 1 for the reason a
//!   control plane that needs a replacement does not get one (`no-quorum`,
//!   `no-spare`, `max-retry`, `failed`: the last replacement failed), 0
//!   for the others. The alert.
//! - `kh_coordinator_remediations_total{result}`: replacements the watcher
//!   `started`, and how many `succeeded` and `failed`.
//! - `kh_coordinator_remediation_spares`: spares that can be used now.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::CoordError;
use crate::snapshots::{self, REASON_IMPORT};
use crate::Coordinator;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The metrics text now.
pub fn render(coord: &Coordinator) -> Result<String, CoordError> {
    let mut registry = Registry::with_prefix("kh_coordinator");
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: kh::VERSION.to_string(),
        })
        .set(1);
    registry.register("build_info", "kh-coordinator build information", build);

    let all = snapshots::list(coord)?;
    let last = all
        .iter()
        .filter(|m| m.reason != REASON_IMPORT)
        .map(|m| m.created_ms)
        .max()
        .unwrap_or(0);
    let last_success = Gauge::<f64, AtomicU64>::default();
    last_success.set(last as f64 / 1000.0);
    registry.register(
        "etcd_snapshot_last_success_timestamp_seconds",
        "Unix time of the newest etcd snapshot kh took and stored (0: none)",
        last_success,
    );
    let count = Gauge::<i64>::default();
    count.set(i64::try_from(all.len()).unwrap_or(i64::MAX));
    registry.register("etcd_snapshots", "etcd snapshots stored", count);
    let bytes = Gauge::<f64, AtomicU64>::default();
    bytes.set(all.iter().map(|m| m.size).sum::<u64>() as f64);
    registry.register(
        "etcd_snapshot_bytes",
        "Plaintext bytes of the etcd snapshots stored",
        bytes,
    );
    let every = crate::etcd::held_spec(coord)
        .ok()
        .and_then(|s| s.etcd_snapshots)
        .map(|s| s.every.as_secs_f64())
        .unwrap_or(0.0);
    let schedule = Gauge::<f64, AtomicU64>::default();
    schedule.set(every);
    registry.register(
        "etcd_snapshot_schedule_seconds",
        "etcd.snapshots.every of the held cluster spec (0: not scheduled)",
        schedule,
    );
    remediation(coord, &mut registry)?;
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    Ok(out)
}

/// The remediation watcher's alert and counters, from its record.
fn remediation(coord: &Coordinator, registry: &mut Registry) -> Result<(), CoordError> {
    use crate::remediation::{Record, BLOCKED_REASONS};
    let rec = Record::load(&coord.db)?;
    let now = rec.last.as_ref().map(|l| l.reason.as_str()).unwrap_or("");
    let blocked = Family::<ReasonLabels, Gauge>::default();
    for r in BLOCKED_REASONS {
        let on = *r == now || (*r == "failed" && rec.last_failed.is_some());
        blocked
            .get_or_create(&ReasonLabels {
                reason: r.to_string(),
            })
            .set(i64::from(on));
    }
    registry.register(
        "remediation_blocked",
        "1 when a control plane needs a replacement that remediation cannot make, by reason",
        blocked,
    );
    let total = Family::<ResultLabels, prometheus_client::metrics::counter::Counter>::default();
    for (result, n) in [
        ("started", rec.started),
        ("succeeded", rec.succeeded),
        ("failed", rec.failed),
    ] {
        total
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc_by(n);
    }
    registry.register(
        "remediations",
        "Control-plane replacements started by remediation, and their results",
        total,
    );
    let spares = Gauge::<i64>::default();
    if let Ok(spec) = crate::etcd::held_spec(coord) {
        spares.set(i64::try_from(crate::remediation::spares(coord, &spec).0.len()).unwrap_or(0));
    }
    registry.register(
        "remediation_spares",
        "Spares remediation can use now",
        spares,
    );
    Ok(())
}

pub fn router(coord: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(coord)
}

async fn metrics(State(coord): State<Arc<Coordinator>>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || render(&coord)).await {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot read the store: {e}\n"),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{e}\n"),
        ),
    }
}

/// Serves the endpoint on `listener` until the process ends.
pub async fn serve(coord: Arc<Coordinator>, listener: tokio::net::TcpListener) {
    if let Err(e) = axum::serve(listener, router(coord)).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_snapshot_series_with_zero_before_any_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let coord = Coordinator::with_db(
            crate::Config::for_test(tmp.path()),
            crate::store::Db::in_memory(),
            Arc::new(kh::time::ManualClock::at_unix_ms(1_700_000_000_000)),
        )
        .unwrap();
        let text = render(&coord).unwrap();
        for needle in [
            "kh_coordinator_build_info{version=",
            "kh_coordinator_etcd_snapshot_last_success_timestamp_seconds 0.0",
            "kh_coordinator_etcd_snapshots 0",
            "kh_coordinator_etcd_snapshot_bytes 0.0",
            "kh_coordinator_etcd_snapshot_schedule_seconds 0.0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
