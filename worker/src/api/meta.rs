//! Models, health, readiness and metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;

/// `GET /v1/models`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

pub async fn models(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, ApiError> {
    app.access.check_client(&headers)?;
    let data = app
        .runtime
        .load()
        .as_ref()
        .map(|rt| {
            vec![ModelCard {
                id: rt.model.clone(),
                object: "model",
                created: rt.created,
                owned_by: "inferscale",
            }]
        })
        .unwrap_or_default();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

/// Liveness: the process serves HTTP.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: a configuration is loaded, so chat requests can be served.
pub async fn ready(State(app): State<Arc<AppState>>) -> Response {
    match app.runtime.load().as_ref() {
        Some(rt) => {
            Json(json!({"status": "ready", "model": rt.model, "algorithm": rt.algorithm.as_str()}))
                .into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not configured"})),
        )
            .into_response(),
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
