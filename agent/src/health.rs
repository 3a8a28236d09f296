//! The plain-HTTP health endpoint for monitoring: /healthz, /readyz, /metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::AgentState;

pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AgentState>>) -> impl IntoResponse {
    let problems = state.readiness_problems();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready:\n{}\n",
                problems
                    .iter()
                    .map(|p| format!("- {p}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        )
    }
}

async fn metrics(State(state): State<Arc<AgentState>>) -> impl IntoResponse {
    // Read at scrape time, so the gauge is as fresh as the files: a dozen
    // small reads, each capped (kh_host::kube::certs::MAX_FILE_BYTES).
    let st = state.clone();
    if let Ok(certs) =
        tokio::task::spawn_blocking(move || kh_host::kube::cluster_certs(&st.host)).await
    {
        state.metrics.set_cluster_certs(&certs);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
