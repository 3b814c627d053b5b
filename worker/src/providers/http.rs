//! The one upstream POST every provider makes: a JSON body out, the success body back, or the
//! failed response read (bounded) and turned into an [`UpstreamError`] by the provider, which
//! alone knows its error format.

use std::time::Duration;

use bytes::Bytes;

use super::UpstreamError;
use super::retry::parse_retry_after;

/// Longest error body kept from an upstream (enough for any error message).
const ERROR_BODY_LIMIT: usize = 4096;

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
    url: &str,
    body: &Bytes,
    call_timeout: Duration,
    auth: PostAuth<'_>,
    on_error: impl FnOnce(ErrorResponse) -> UpstreamError,
) -> Result<Bytes, UpstreamError> {
    let mut req = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
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
