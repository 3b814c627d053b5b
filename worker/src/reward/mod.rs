//! The process reward model (PRM) client: one `POST {rm_endpoint}/pooling` per search step,
//! scoring every particle of the step at once (vLLM v0.11.0 pooling runner; wire format in
//! `pooling.rs`). Retries, timeout and the in-flight limit work as for the other upstream calls;
//! the key is sent to `rm_endpoint` only, and error text is scrubbed of it.

pub mod pooling;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::config::LiveSecret;
use crate::providers::http::transport_error;
use crate::providers::{RetryPolicy, UpstreamError, parse_retry_after, redact};

pub use pooling::{PrmResponseError, PrmScores};

/// Longest upstream error text kept in a PRM error.
const ERROR_TEXT_LIMIT: usize = 300;
/// Largest PRM answer read: 1000 particles x 256 steps of `[p, q]` rows is about 10 MB.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Why a PRM call gave no scores.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrmError {
    #[error("reward model call failed: {0}")]
    Upstream(UpstreamError),
    #[error("{0}")]
    Response(#[from] PrmResponseError),
}

/// Everything the client needs; built once per configuration by the runtime.
pub struct PrmClientSettings {
    pub client: reqwest::Client,
    /// Base URL (no trailing `/` or `/v1`).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<Arc<LiveSecret>>,
    pub call_timeout: Duration,
    pub retry: RetryPolicy,
    pub limit: Arc<Semaphore>,
}

/// A PRM server.
pub struct PrmClient {
    s: PrmClientSettings,
    url: String,
}

/// One call's scores and how long it took.
#[derive(Debug, Clone)]
pub struct Scored {
    pub scores: PrmScores,
    pub elapsed: Duration,
}

impl PrmClient {
    pub fn new(s: PrmClientSettings) -> Self {
        let url = format!("{}/pooling", s.base_url);
        Self { s, url }
    }

    pub fn model(&self) -> &str {
        &self.s.model
    }

    /// Scores `inputs` (rendered by [`pooling::render_input`]); `rows[i]` is the number of steps
    /// of input `i`. Transport failures, 429 and 5xx are retried; an unusable answer is not.
    pub async fn score(&self, inputs: &[String], rows: &[usize]) -> Result<Scored, PrmError> {
        let started = Instant::now();
        let body = serde_json::to_vec(&pooling::request_body(&self.s.model, inputs))
            .map(Bytes::from)
            .map_err(|e| PrmError::Upstream(UpstreamError::Transport(e.to_string())))?;
        let _permit =
            self.s.limit.acquire().await.map_err(|_| {
                PrmError::Upstream(UpstreamError::Transport("shutting down".into()))
            })?;
        let mut attempt = 0;
        let bytes = loop {
            match self.post_once(&body).await {
                Ok(bytes) => break bytes,
                Err(e) if e.is_retryable() && attempt < self.s.retry.max_retries => {
                    let retry_after = match &e {
                        UpstreamError::Status { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    tokio::time::sleep(self.s.retry.delay(attempt, retry_after)).await;
                    attempt += 1;
                }
                Err(e) => return Err(PrmError::Upstream(e)),
            }
        };
        let scores = pooling::parse_response(&bytes, rows)?;
        Ok(Scored {
            scores,
            elapsed: started.elapsed(),
        })
    }

    /// One POST. The answer is read in chunks and refused past [`MAX_ANSWER_BYTES`] (an error
    /// body past [`ERROR_TEXT_LIMIT`] is cut), so a broken or hostile PRM server cannot make the
    /// worker buffer without bound.
    async fn post_once(&self, body: &Bytes) -> Result<Bytes, UpstreamError> {
        let timeout = self.s.call_timeout;
        let key = self.s.api_key.as_ref().map(|k| k.get());
        let mut req = self
            .s
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body.clone());
        if let Some(k) = key.as_deref().filter(|k| !k.is_empty()) {
            req = req.bearer_auth(k);
        }
        let mut resp = req.send().await.map_err(|e| transport_error(e, timeout))?;
        let status = resp.status();
        let retry_after = parse_retry_after(
            resp.headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
        );
        let limit = if status.is_success() {
            MAX_ANSWER_BYTES
        } else {
            ERROR_TEXT_LIMIT
        };
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| transport_error(e, timeout))?
        {
            if buf.len() + chunk.len() > limit {
                if status.is_success() {
                    return Err(UpstreamError::Malformed(format!(
                        "the reward model's answer is larger than {MAX_ANSWER_BYTES} bytes"
                    )));
                }
                buf.extend_from_slice(&chunk[..limit - buf.len()]);
                break;
            }
            buf.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&buf);
            return Err(UpstreamError::Status {
                status: status.as_u16(),
                message: scrub(text.trim(), key.as_deref()),
                retry_after,
            });
        }
        Ok(Bytes::from(buf))
    }
}

/// An error body cut to a readable length with the key removed.
fn scrub(text: &str, key: Option<&str>) -> String {
    let mut end = text.len().min(ERROR_TEXT_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = if text.is_empty() {
        "(empty body)"
    } else {
        &text[..end]
    };
    redact(cut.to_owned(), key)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::http::{HeaderMap, StatusCode};
    use serde_json::{Value, json};

    use super::*;
    use crate::config::SecretValue;

    #[derive(Default)]
    struct Seen {
        bodies: Vec<Value>,
        auth: Vec<Option<String>>,
    }

    /// A PRM on 127.0.0.1 answering `replies` in turn (the last one repeated).
    async fn prm(replies: Vec<(StatusCode, String)>) -> (String, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let calls = Arc::new(Mutex::new(0usize));
        let s = seen.clone();
        let app = axum::Router::new().route(
            "/pooling",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let s = s.clone();
                let calls = calls.clone();
                let replies = replies.clone();
                async move {
                    let mut seen = s.lock().unwrap();
                    seen.bodies.push(serde_json::from_str(&body).unwrap());
                    seen.auth.push(
                        headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned()),
                    );
                    let mut n = calls.lock().unwrap();
                    let reply = replies[(*n).min(replies.len() - 1)].clone();
                    *n += 1;
                    reply
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    fn client(base_url: String, key: Option<&str>) -> PrmClient {
        PrmClient::new(PrmClientSettings {
            client: reqwest::Client::new(),
            base_url,
            model: "prm".into(),
            api_key: key.map(|k| Arc::new(LiveSecret::new(SecretValue::Inline(k.into())).unwrap())),
            call_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_retries: 2,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
            },
            limit: Arc::new(Semaphore::new(4)),
        })
    }

    const OK: &str = r#"{"data":[{"index":0,"data":[[0.2,0.8]]},{"index":1,"data":[[0.9,0.1],[0.5,0.5]]}],"usage":{"prompt_tokens":7}}"#;

    #[tokio::test]
    async fn one_call_scores_every_input_and_sends_the_key() {
        let (url, seen) = prm(vec![(StatusCode::OK, OK.into())]).await;
        let c = client(url, Some("sk-prm"));
        let got = c.score(&["a".into(), "b".into()], &[1, 2]).await.unwrap();
        assert_eq!(got.scores.steps, vec![vec![0.8], vec![0.1, 0.5]]);
        assert_eq!(got.scores.prompt_tokens, 7);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.bodies, vec![json!({"model":"prm","input":["a","b"]})]);
        assert_eq!(seen.auth, vec![Some("Bearer sk-prm".to_owned())]);
    }

    #[tokio::test]
    async fn a_5xx_is_retried_and_errors_never_carry_the_key() {
        let (url, seen) = prm(vec![
            (StatusCode::SERVICE_UNAVAILABLE, "busy".into()),
            (StatusCode::OK, OK.into()),
        ])
        .await;
        client(url, None)
            .score(&["a".into(), "b".into()], &[1, 2])
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().bodies.len(), 2);
        assert_eq!(seen.lock().unwrap().auth[0], None);

        let (url, seen) = prm(vec![(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad key sk-prm-secret".into(),
        )])
        .await;
        let e = client(url, Some("sk-prm-secret"))
            .score(&["a".into()], &[1])
            .await
            .unwrap_err();
        assert_eq!(seen.lock().unwrap().bodies.len(), 3, "1 try + 2 retries");
        let text = e.to_string();
        assert!(
            text.contains("500") && !text.contains("sk-prm-secret"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_oversized_answer_is_refused_without_buffering_it_all() {
        let huge = format!(r#"{{"data":[],"pad":"{}"}}"#, " ".repeat(MAX_ANSWER_BYTES));
        let (url, _) = prm(vec![(StatusCode::OK, huge)]).await;
        let e = client(url, None)
            .score(&["a".into()], &[1])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[tokio::test]
    async fn a_garbage_answer_is_a_typed_error_and_not_retried() {
        let (url, seen) = prm(vec![(StatusCode::OK, r#"{"data":[]}"#.into())]).await;
        let e = client(url, None)
            .score(&["a".into()], &[1])
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            PrmError::Response(PrmResponseError::WrongInputCount { .. })
        ));
        assert_eq!(seen.lock().unwrap().bodies.len(), 1);
    }
}
