//! The HTTP API: thin handlers over the algorithm engine.

pub mod access;
pub mod admission;
pub mod body_deadline;
mod chat;
mod configure;
pub mod error;
mod meta;
pub mod metadata;
pub mod openapi;
pub mod request;
pub mod response;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Uri;
use axum::middleware;
use axum::routing::{get, post};

use crate::config::ServerLimits;
use crate::metrics::Metrics;
use crate::runtime::{Env, Runtime};
pub use access::Access;
use error::ApiError;

/// Largest request body accepted by default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Shared by every handler. The runtime is swapped atomically by `/configure`; reads are
/// lock-free.
pub struct AppState {
    pub runtime: ArcSwapOption<Runtime>,
    pub metrics: Arc<Metrics>,
    pub access: Access,
    pub env: Env,
    pub max_body_bytes: usize,
    /// Load limits of the `server` settings (the body read timeout is read per request).
    pub limits: ServerLimits,
    /// In-flight counters of the chat routes.
    pub admission: Arc<admission::Admission>,
}

/// The worker's routes.
pub fn router(state: Arc<AppState>) -> Router {
    // Only the chat routes spend upstream calls, so only they are admission-controlled; health,
    // metrics and models stay answerable while the worker sheds load.
    let chat = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/chat/completions", post(chat::chat_completions))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admission::admit,
        ));
    Router::new()
        .merge(chat)
        .route("/v1/models", get(meta::models))
        .route("/models", get(meta::models))
        .route("/configure", post(configure::configure))
        .route("/health", get(meta::health))
        .route("/ready", get(meta::ready))
        .route("/metrics", get(meta::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read by the handlers themselves, with their own limit and error envelope.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            body_deadline::limit_body_time,
        ))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Reads a request body up to the limit. A body that misses the deadline set by
/// [`body_deadline::limit_body_time`] gives 408.
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(body_deadline::BodyReadTimeout(timeout)) = s.downcast_ref() {
                return ApiError::RequestTimeout(*timeout);
            }
            // axum wraps http-body-util's `LengthLimitError`; its message is the stable signal.
            if s.to_string().contains("length limit exceeded") {
                return ApiError::PayloadTooLarge(limit);
            }
            source = s.source();
        }
        ApiError::bad_request(format!("could not read the request body: {e}"), None)
    })
}
