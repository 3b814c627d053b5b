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

/// How much of an oversize body is read and dropped, as a multiple of the limit, before the 413:
/// clients (urllib, requests, curl) send the whole body before they read the reply, so replying
/// and closing at once would reset their connection and hide the 413 from them. Past this, the
/// connection is closed as soon as the limit is crossed.
const OVERSIZE_DRAIN_FACTOR: usize = 4;

/// Reads a request body of at most `limit` bytes: 413 above it, 408 when the client is too slow
/// (the body deadline), 400 when the body cannot be read.
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    use futures_util::StreamExt;
    use http_body::Body as _;

    let drain_limit = limit.saturating_mul(OVERSIZE_DRAIN_FACTOR);
    if body
        .size_hint()
        .upper()
        .is_some_and(|declared| declared > drain_limit as u64)
    {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut chunks = body.into_data_stream();
    // Most bodies arrive in one chunk: that one is returned without a copy.
    let mut first: Option<bytes::Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    let mut received = 0usize;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| body_read_error(&e))?;
        received = received.saturating_add(chunk.len());
        if received > drain_limit {
            break;
        }
        if received > limit {
            continue; // dropped: only read so that the client gets to see the 413
        }
        match &first {
            None => first = Some(chunk),
            Some(f) => {
                if rest.is_empty() {
                    rest.extend_from_slice(f);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    if received > limit {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

fn body_read_error(e: &axum::Error) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(body_deadline::BodyReadTimeout(timeout)) = s.downcast_ref() {
            return ApiError::RequestTimeout(*timeout);
        }
        source = s.source();
    }
    ApiError::bad_request(format!("could not read the request body: {e}"), None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A streamed body of `chunks`, counting how many of them were read.
    fn body(chunks: &[&'static [u8]], read: &Arc<AtomicUsize>) -> axum::body::Body {
        let read = read.clone();
        let items: Vec<&'static [u8]> = chunks.to_vec();
        axum::body::Body::from_stream(futures_util::stream::iter(items.into_iter().map(
            move |c| {
                read.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(c))
            },
        )))
    }

    #[tokio::test]
    async fn chunks_are_joined_up_to_the_limit() {
        let read = Arc::new(AtomicUsize::new(0));
        let got = read_body(body(&[b"ab", b"", b"cd"], &read), 4)
            .await
            .unwrap();
        assert_eq!(&got[..], b"abcd");
        let one = read_body(body(&[b"abcd"], &read), 4).await.unwrap();
        assert_eq!(&one[..], b"abcd");
    }

    #[tokio::test]
    async fn an_oversize_body_is_read_to_its_end_then_refused() {
        // The client gets to send its whole body (so it reads the 413 instead of a reset).
        let read = Arc::new(AtomicUsize::new(0));
        let err = read_body(body(&[b"abc", b"def", b"ghi"], &read), 4)
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge(4)), "{err:?}");
        assert_eq!(read.load(Ordering::SeqCst), 3);
        // Past 4 x the limit the connection is given up on at once.
        let read = Arc::new(AtomicUsize::new(0));
        let chunks: [&'static [u8]; 6] = [b"abcd"; 6];
        let err = read_body(body(&chunks, &read), 4).await.unwrap_err();
        assert!(matches!(err, ApiError::PayloadTooLarge(4)), "{err:?}");
        assert_eq!(read.load(Ordering::SeqCst), 5);
    }
}
