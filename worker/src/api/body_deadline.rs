//! A deadline on receiving a request body, so a client that sends its headers and then trickles
//! (or never sends) the body gets 408 instead of holding a task and a connection forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

use super::AppState;

/// The error a request body yields once its deadline has passed; [`super::read_body`] turns it
/// into 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0:?}")]
pub struct BodyReadTimeout(pub Duration);

/// A request body that fails with [`BodyReadTimeout`] when it is not complete by its deadline.
pub struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    /// The deadline starts now: after the headers, for the whole body.
    pub fn new(inner: Body, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let timeout = self.timeout;
            return Poll::Ready(Some(Err(axum::Error::new(BodyReadTimeout(timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware on every route: puts the configured deadline on the request body and counts the
/// requests that missed it.
pub async fn limit_body_time(
    State(app): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = app.limits.body_read_timeout;
    let request = request.map(|body| Body::new(DeadlineBody::new(body, timeout)));
    let response = next.run(request).await;
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        app.metrics
            .requests_shed
            .with_label_values(&["body_timeout"])
            .inc();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ApiError;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_with_408_at_its_deadline() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        tx.send(Ok(Bytes::from_static(b"{\"model\":")))
            .await
            .unwrap();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let body = Body::new(DeadlineBody::new(
            Body::from_stream(stream),
            Duration::from_secs(5),
        ));
        // The sender stays open: the body never completes by itself.
        let err = crate::api::read_body(body, 1 << 20).await.unwrap_err();
        drop(tx);
        assert!(matches!(err, ApiError::RequestTimeout(d) if d == Duration::from_secs(5)));
        assert_eq!(err.status(), 408);
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_is_read_untouched() {
        let body = Body::new(DeadlineBody::new(
            Body::from("hello"),
            Duration::from_secs(5),
        ));
        let bytes = crate::api::read_body(body, 1 << 20).await.unwrap();
        assert_eq!(&bytes[..], b"hello");
    }
}
