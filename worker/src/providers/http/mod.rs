//! The one upstream POST every provider makes: a JSON body out, the success body back, or the
//! failed response read (bounded) and turned into an [`UpstreamError`] by the provider, which
//! alone knows its error format.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::UpstreamError;
use super::retry::parse_retry_after;

mod h1;

#[cfg(test)]
pub(crate) use h1::test_server;

/// Longest error body kept from an upstream (enough for any error message).
const ERROR_BODY_LIMIT: usize = 4096;

/// What both clients send as `user-agent`.
pub const USER_AGENT: &str = concat!("inferscale-worker/", env!("CARGO_PKG_VERSION"));

/// The HTTP client of one configuration, shared by its providers. Plain-HTTP upstreams (vLLM in
/// the cluster, where the worker's CPU per call matters most) go through the worker's own
/// HTTP/1.1 client ([`h1`]); HTTPS upstreams, URLs with user info, and every upstream when the
/// environment configures an HTTP proxy go through reqwest, which implements TLS and proxies.
#[derive(Clone)]
pub struct HttpClient {
    reqwest: reqwest::Client,
    /// `None` when plain HTTP goes through reqwest too (a proxy is configured).
    own: Option<OwnClient>,
}

#[derive(Clone)]
struct OwnClient {
    connect_timeout: Duration,
    /// One connection pool per `host:port`, shared by the providers of the configuration that
    /// call it (candidates and a judge on the same server, say). Looked up only when a
    /// provider is built, never per call.
    origins: Arc<Mutex<HashMap<String, Arc<h1::Origin>>>>,
}

impl HttpClient {
    /// `own_plain_http`: whether plain-HTTP upstreams use the worker's own client; false when
    /// the environment sets an HTTP proxy, which only reqwest honours.
    pub fn new(reqwest: reqwest::Client, connect_timeout: Duration, own_plain_http: bool) -> Self {
        Self {
            reqwest,
            own: own_plain_http.then(|| OwnClient {
                connect_timeout,
                origins: Arc::default(),
            }),
        }
    }

    /// The reqwest client (HTTPS, proxies, and the process reward model's calls).
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.reqwest
    }

    /// Parses an upstream URL once, and picks the client that will carry its calls.
    pub fn url(&self, text: String) -> UpstreamUrl {
        let parsed = reqwest::Url::parse(&text).map_err(|e| e.to_string());
        let own = match (&self.own, &parsed) {
            (Some(own), Ok(url)) => own.origin(url).map(|origin| OwnRoute {
                origin,
                path: path_and_query(url),
            }),
            _ => None,
        };
        UpstreamUrl { text, parsed, own }
    }
}

impl Default for HttpClient {
    /// reqwest's defaults, the own client for plain HTTP, a 5 s connect timeout.
    fn default() -> Self {
        Self::new(reqwest::Client::new(), Duration::from_secs(5), true)
    }
}

impl OwnClient {
    fn origin(&self, url: &reqwest::Url) -> Option<Arc<h1::Origin>> {
        let key = format!("{}:{}", url.host_str()?, url.port_or_known_default()?);
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(origin) = origins.get(&key) {
            return Some(origin.clone());
        }
        let origin = Arc::new(h1::Origin::for_url(url, self.connect_timeout)?);
        origins.insert(key, origin.clone());
        Some(origin)
    }
}

fn path_and_query(url: &reqwest::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

/// An upstream URL, parsed once per configuration rather than on every call (URL parsing with
/// IDNA mapping was ~2% of the worker's CPU under load when each call parsed its `&str`).
#[derive(Clone)]
pub struct UpstreamUrl {
    text: String,
    /// A URL reqwest would refuse keeps its reason, so each call fails as it did when the
    /// string was parsed per call (the configuration checks make this unreachable in practice).
    parsed: Result<reqwest::Url, String>,
    /// Set when the worker's own client carries this URL's calls.
    own: Option<OwnRoute>,
}

#[derive(Clone)]
struct OwnRoute {
    origin: Arc<h1::Origin>,
    path: String,
}

impl std::fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamUrl")
            .field("text", &self.text)
            .field("own_client", &self.own.is_some())
            .finish()
    }
}

impl UpstreamUrl {
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
    client: &HttpClient,
    url: &UpstreamUrl,
    body: &Bytes,
    call_timeout: Duration,
    auth: PostAuth<'_>,
    on_error: impl FnOnce(ErrorResponse) -> UpstreamError,
) -> Result<Bytes, UpstreamError> {
    match &url.own {
        Some(route) => post_own(route, body, call_timeout, auth, on_error).await,
        None => post_reqwest(&client.reqwest, url, body, call_timeout, auth, on_error).await,
    }
}

async fn post_own(
    route: &OwnRoute,
    body: &Bytes,
    call_timeout: Duration,
    auth: PostAuth<'_>,
    on_error: impl FnOnce(ErrorResponse) -> UpstreamError,
) -> Result<Bytes, UpstreamError> {
    let bearer;
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(8);
    headers.push(("content-type", "application/json"));
    headers.push(("accept", "*/*"));
    headers.push(("user-agent", USER_AGENT));
    match &auth {
        PostAuth::None | PostAuth::Bearer("") => {}
        PostAuth::Bearer(token) => {
            bearer = format!("Bearer {token}");
            headers.push(("authorization", &bearer));
        }
        PostAuth::Headers(signed) => {
            headers.extend(signed.iter().map(|(n, v)| (*n, v.as_str())));
        }
    }
    let response =
        tokio::time::timeout(call_timeout, route.origin.post(&route.path, &headers, body))
            .await
            .map_err(|_| UpstreamError::Timeout(call_timeout))?
            .map_err(|e| match e {
                h1::H1Error::Connect(m) => UpstreamError::Connect(m),
                other => UpstreamError::Transport(other.to_string()),
            })?;
    if (200..300).contains(&response.status) {
        return Ok(response.body);
    }
    let headers = response.headers.unwrap_or_default();
    Err(on_error(error_response(
        response.status,
        headers,
        response.body,
    )))
}

async fn post_reqwest(
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

/// Reads a non-success response of reqwest.
async fn read_error(resp: reqwest::Response) -> ErrorResponse {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_default();
    error_response(status, headers, body)
}

/// What a provider sees of a non-success response, from either client: status, the bounded
/// `Retry-After`, headers and the start of the body.
fn error_response(status: u16, headers: http::HeaderMap, mut body: Bytes) -> ErrorResponse {
    let retry_after = parse_retry_after(
        headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
    );
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
    use crate::providers::{ChatProvider, HttpClient, RetryPolicy, UpstreamError};

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
            client: HttpClient::default(),
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
            client: HttpClient::default(),
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
            client: HttpClient::default(),
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
