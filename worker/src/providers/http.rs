//! The one upstream POST every provider makes: a JSON body out, the success body back, or the
//! failed response read (bounded) and turned into an [`UpstreamError`] by the provider, which
//! alone knows its error format.

use std::time::Duration;

use bytes::Bytes;

use super::UpstreamError;
use super::retry::parse_retry_after;

/// Longest error body kept from an upstream (enough for any error message).
const ERROR_BODY_LIMIT: usize = 4096;

/// An upstream URL, parsed once per configuration rather than on every call (URL parsing with
/// IDNA mapping was ~2% of the worker's CPU under load when each call parsed its `&str`).
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    text: String,
    /// A URL reqwest would refuse keeps its reason, so each call fails as it did when the
    /// string was parsed per call (the configuration checks make this unreachable in practice).
    parsed: Result<reqwest::Url, String>,
}

impl UpstreamUrl {
    pub fn new(text: String) -> Self {
        let parsed = reqwest::Url::parse(&text).map_err(|e| e.to_string());
        Self { text, parsed }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// How one POST authenticates.
pub enum PostAuth<'a> {
    None,
    /// `Authorization: Bearer <token>` (OpenAI keys, Bedrock API keys).
    Bearer(&'a str),
    /// Pre-computed headers (a SigV4 signature over exactly these bytes).
    Headers(Vec<(&'static str, String)>),
}

/// What the providers read from a failed upstream response.
pub struct ErrorResponse {
    pub status: u16,
    /// `Retry-After`, when given in a form we can read; bounded by [`parse_retry_after`].
    pub retry_after: Option<Duration>,
    pub headers: http::HeaderMap,
    /// The start of the body (at most 4 KiB).
    pub body: Bytes,
}

/// POSTs `body` as JSON to `url` with the call timeout. A non-success answer is read and handed
/// to `on_error`, so each provider maps its own error format.
pub async fn post_json(
    client: &reqwest::Client,
    url: &UpstreamUrl,
    body: &Bytes,
    call_timeout: Duration,
    auth: PostAuth<'_>,
    on_error: impl FnOnce(ErrorResponse) -> UpstreamError,
) -> Result<Bytes, UpstreamError> {
    let url = url.parsed.clone().map_err(UpstreamError::Transport)?;
    let mut req = client
        .post(url)
        .header(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )
        .timeout(call_timeout)
        .body(body.clone());
    match auth {
        PostAuth::None => {}
        PostAuth::Bearer("") => {}
        PostAuth::Bearer(token) => req = req.bearer_auth(token),
        PostAuth::Headers(headers) => {
            for (name, value) in headers {
                req = req.header(name, value);
            }
        }
    }
    let resp = req
        .send()
        .await
        .map_err(|e| transport_error(e, call_timeout))?;
    if !resp.status().is_success() {
        return Err(on_error(read_error(resp).await));
    }
    resp.bytes()
        .await
        .map_err(|e| transport_error(e, call_timeout))
}

/// Reads a non-success response: status, `Retry-After`, headers and a bounded body.
async fn read_error(resp: reqwest::Response) -> ErrorResponse {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let retry_after = parse_retry_after(
        headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
    );
    let mut body = resp.bytes().await.unwrap_or_default();
    body.truncate(ERROR_BODY_LIMIT);
    ErrorResponse {
        status,
        retry_after,
        headers,
        body,
    }
}

/// Maps a transport failure of reqwest. Its messages name the URL but never headers, so no
/// credential can leak through them.
pub fn transport_error(e: reqwest::Error, call_timeout: Duration) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout(call_timeout)
    } else if e.is_connect() {
        UpstreamError::Connect(root_cause(&e))
    } else {
        UpstreamError::Transport(root_cause(&e))
    }
}

/// The innermost error's message: the useful part of a wrapped I/O or TLS error.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    use serde_json::{Map, json};
    use tokio::sync::Semaphore;

    use crate::config::{LiveSecret, ProviderKind, SecretValue};
    use crate::providers::bedrock::{AwsEnv, BedrockProvider, BedrockSettings};
    use crate::providers::openai::{OpenAiProvider, OpenAiSettings};
    use crate::providers::{ChatProvider, RetryPolicy, UpstreamError};

    /// Serves one canned failure on 127.0.0.1 for every request; returns the base URL.
    async fn failing_upstream(
        status: StatusCode,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> String {
        let app = axum::Router::new().fallback(move || async move {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.insert(*k, HeaderValue::from_static(v));
            }
            (status, h, body)
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    fn no_retries() -> RetryPolicy {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    fn body() -> Map<String, serde_json::Value> {
        json!({"messages": [{"role": "user", "content": "hi"}]})
            .as_object()
            .unwrap()
            .clone()
    }

    #[tokio::test]
    async fn an_absurd_retry_after_is_capped_and_the_key_scrubbed() {
        let url = failing_upstream(
            StatusCode::TOO_MANY_REQUESTS,
            &[("retry-after", "1e20")],
            r#"{"error":{"message":"Rate limit for key sk-live-0123456789 reached","type":"requests"}}"#,
        )
        .await;
        let provider = OpenAiProvider::new(OpenAiSettings {
            kind: ProviderKind::OpenaiCompatible,
            base_url: url,
            model: "m".into(),
            api_key: Some(Arc::new(
                LiveSecret::new(SecretValue::Inline("sk-live-0123456789".into())).unwrap(),
            )),
            client: reqwest::Client::new(),
            retry: no_retries(),
            call_timeout: Duration::from_secs(5),
            limit: Arc::new(Semaphore::new(4)),
        });
        let call = provider.prepare(body()).unwrap();
        let err = provider.send(&call).await.unwrap_err();
        let UpstreamError::Status {
            status,
            message,
            retry_after,
        } = err
        else {
            panic!("expected a status error, got {err:?}")
        };
        assert_eq!(status, 429);
        assert_eq!(retry_after, Some(Duration::from_secs(30)));
        assert_eq!(message, "requests: Rate limit for key [redacted] reached");
    }

    #[tokio::test]
    async fn an_unparseable_upstream_url_fails_each_call_as_a_transport_error() {
        // Parsed once at build time; the calls still fail as they did when each call parsed it.
        let provider = OpenAiProvider::new(OpenAiSettings {
            kind: ProviderKind::OpenaiCompatible,
            base_url: "no-scheme/v1".into(),
            model: "m".into(),
            api_key: None,
            client: reqwest::Client::new(),
            retry: no_retries(),
            call_timeout: Duration::from_secs(5),
            limit: Arc::new(Semaphore::new(4)),
        });
        let call = provider.prepare(body()).unwrap();
        for _ in 0..2 {
            let err = provider.send(&call).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "the upstream connection failed: relative URL without a base"
            );
        }
    }

    #[tokio::test]
    async fn bedrock_access_denied_reaches_the_client_without_account_or_role() {
        let url = failing_upstream(
            StatusCode::FORBIDDEN,
            &[("x-amzn-errortype", "AccessDeniedException:http://internal.amazon.com/coral/")],
            r#"{"message":"User: arn:aws:sts::123456789012:assumed-role/inferscale/i-0abc is not authorized to perform: bedrock:InvokeModel on resource: arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude"}"#,
        )
        .await;
        let extra = json!({"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": "s3cret",
                           "aws_bedrock_runtime_endpoint": url});
        let extra = serde_json::from_value(extra).unwrap();
        let provider = BedrockProvider::build(BedrockSettings {
            model_id: "us.anthropic.claude",
            extra_args: Some(&extra),
            api_key: None,
            env: AwsEnv::default(),
            client: reqwest::Client::new(),
            retry: no_retries(),
            call_timeout: Duration::from_secs(5),
            limit: Arc::new(Semaphore::new(4)),
        })
        .unwrap();
        let call = provider.prepare(body()).unwrap();
        let err = provider.send(&call).await.unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "the upstream answered 403: AccessDeniedException: User: [arn] is not authorized to \
             perform: bedrock:InvokeModel on resource: [arn]"
        );
    }
}
