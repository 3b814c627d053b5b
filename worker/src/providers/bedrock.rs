//! AWS Bedrock through the Converse API: `POST {endpoint}/model/{modelId}/converse`, SigV4-signed.
//!
//! # Request translation (OpenAI chat → Converse), done once per request in `prepare`
//!
//! - `system`/`developer` messages → top-level `system: [{text}]`.
//! - `user`/`assistant` text (a string or `text` parts) → `content: [{text}]`; blank text is skipped
//!   because Converse rejects blank text blocks. User `image_url` parts with a `data:` URL (png,
//!   jpeg, gif, webp) → `{image: {format, source: {bytes}}}`; other URLs and part types are refused
//!   (400) rather than silently dropped, since they change what the model sees.
//! - assistant `tool_calls` → `toolUse{toolUseId, name, input}`, with the `arguments` JSON string
//!   parsed into a value.
//! - `tool` messages → a user message of `toolResult{toolUseId, content: [{text}]}` blocks.
//! - Converse requires alternating `user`/`assistant` turns starting with `user`: consecutive
//!   same-role messages (tool results included) are merged into one turn, and a conversation that
//!   starts with the assistant gets a `"."` user turn first (LiteLLM does the same).
//! - `tools` → `toolConfig.tools[].toolSpec{name, description, inputSchema: {json}}`.
//!   `tool_choice` `auto` → `{auto: {}}`, `required` → `{any: {}}`, a named function →
//!   `{tool: {name}}`. Converse has no `none`: `toolChoice` is omitted and the tools are dropped,
//!   unless the history holds tool blocks, for which Converse demands a `toolConfig`; then the tools
//!   stay (the model may still call one). When the history holds tool blocks but the request has no
//!   `tools`, specs are declared for the tool names the history uses (permissive schema).
//! - `max_completion_tokens` (else `max_tokens`) → `inferenceConfig.maxTokens`; `temperature`;
//!   `top_p` → `topP`; `stop` → `stopSequences`; `top_k` → `additionalModelRequestFields.top_k`.
//! - **Dropped** (no Converse equivalent): `n` (the worker makes one call per candidate), `seed`,
//!   `logprobs`, `top_logprobs`, `response_format`, `presence_penalty`, `frequency_penalty`,
//!   `logit_bias`, `parallel_tool_calls`, `user`, `metadata`, `store`, `service_tier`,
//!   `reasoning_effort`, `modalities`, `audio`, `prediction`, `web_search_options`, message `name`s,
//!   and `model` (the model id is in the URL path). Any other unknown field is dropped too.
//! - Per-model tool-choice support (e.g. `{tool}` only on Claude 3+ and Nova) is left to Bedrock,
//!   whose `ValidationException` then reaches the client as a 502 with Bedrock's message.
//!
//! # Response translation
//!
//! `text` blocks are concatenated into `content` (null when there are none), `toolUse` blocks
//! become `tool_calls[{id, type: "function", function: {name, arguments}}]` with the `input`
//! serialised back to a JSON string, and `reasoningContent` text goes to `reasoning_content`.
//! `stopReason`: `end_turn`/`stop_sequence` → `stop`, `tool_use` → `tool_calls`,
//! `max_tokens`/`model_context_window_exceeded` → `length`, `guardrail_intervened`/
//! `content_filtered` → `content_filter`, anything else → `stop`. Usage: `prompt_tokens` =
//! `inputTokens` + cache read/write tokens (OpenAI counts cached prompt tokens as prompt tokens),
//! `completion_tokens` = `outputTokens`.
//!
//! # Endpoint, region, authentication
//!
//! - Region: `extra_args.aws_region_name`, else `AWS_REGION`, `AWS_DEFAULT_REGION`, `us-east-1`.
//! - Endpoint: `extra_args.aws_bedrock_runtime_endpoint` (LiteLLM's name), else
//!   `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, `AWS_ENDPOINT_URL`, else
//!   `https://bedrock-runtime.{region}.amazonaws.com`.
//! - Credentials, first match wins: `extra_args.aws_access_key_id` + `aws_secret_access_key`
//!   (+ `aws_session_token`), each inline or `{file}`/`{env}` and read through [`LiveSecret`] on
//!   every call, so a rotated Secret file applies to the next request; then a Bedrock API key
//!   (`api_key`, else `AWS_BEARER_TOKEN_BEDROCK`) sent as a bearer token; then the AWS chain:
//!   `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, web identity (EKS IRSA:
//!   `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, STS `AssumeRoleWithWebIdentity`), container
//!   credentials (EKS Pod Identity / ECS: `AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI`,
//!   with `AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE]`). Chain credentials are cached and refreshed
//!   five minutes before they expire. Profiles (`~/.aws`), SSO and EC2 instance metadata (IMDS) are not
//!   consulted: a worker in a pod should not probe link-local metadata addresses by surprise.
//! - Each attempt is signed anew (SigV4, signing name `bedrock`) over the exact bytes sent. The
//!   model id is percent-encoded once in the URL (`:` → `%3A`); the signer encodes the canonical
//!   path a second time (`%253A`), as SigV4 requires for every service but S3.
//! - Error bodies are Bedrock's `{"message"}` plus the `x-amzn-errortype` header; throttling and
//!   5xx are retried like the OpenAI provider does. Secrets are redacted from upstream messages and
//!   never logged.
//!
//! # Crates and their build cost
//!
//! `aws-sigv4` + `aws-credential-types` sign; `aws-config` (default features off, `rt-tokio` on)
//! provides the environment, web-identity and container providers, with `aws-smithy-http-client`
//! on rustls+ring (the crypto reqwest already uses) as their HTTP client. Measured on this 2-core
//! machine, debug builds in a scratch crate holding the worker's reqwest/tokio/serde_json/http,
//! each step built on top of the previous one in a fresh target dir (wall / CPU user+sys):
//!
//! | step | crates | added wall | added CPU |
//! |---|---|---|---|
//! | baseline (reqwest, tokio, serde_json) | 98 | 51 s | 60 s |
//! | + `aws-sigv4` 1.6 + `aws-credential-types` 1.3 | 129 | +16 s | +26 s |
//! | + `aws-config` 1.13 (no default features) + `aws-smithy-http-client` 1.5 (rustls-ring) | 149 | +22 s | +36 s |
//! | `aws-config` with default features instead | 159 | +57 s more | +89 s more |
//!
//! The default features bring aws-lc-sys (C, built by `cc`) and the SSO clients, and would put a
//! second rustls crypto provider next to ring; without them there is no aws-lc-sys and no cmake.
//! In the worker itself, adding these crates cost 74 s of wall time on a loaded machine (reqwest,
//! hyper and axum were rebuilt for unified features). The crates declare rustc 1.94.1 as minimum.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_config::ecs::EcsCredentialsProvider;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use super::{
    BoxFuture, Candidate, ChatProvider, Completion, PreparedCall, ProviderError, RetryPolicy,
    UpstreamError, Usage, read_error, redact, send_with_retries, transport_error,
};
use crate::config::{LiveSecret, SecretValue};

/// SigV4 signing name of Bedrock Runtime (not `bedrock-runtime`, whatever the host says).
const SIGNING_NAME: &str = "bedrock";
const DEFAULT_REGION: &str = "us-east-1";
/// Chain credentials are renewed this long before they expire, so that none expires mid-call.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// `extra_args` keys this provider reads; other `aws_*` keys are refused rather than ignored.
const SUPPORTED_AWS_ARGS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region_name",
    "aws_bedrock_runtime_endpoint",
];

/// The AWS-related environment, read once per configuration so resolution stays testable.
#[derive(Debug, Clone, Default)]
pub struct AwsEnv {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub bearer_token: bool,
    pub access_keys: bool,
    pub web_identity: bool,
    pub container: bool,
}

impl AwsEnv {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let set = |k: &str| var(k).is_some();
        Self {
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            endpoint: var("AWS_ENDPOINT_URL_BEDROCK_RUNTIME").or_else(|| var("AWS_ENDPOINT_URL")),
            bearer_token: set("AWS_BEARER_TOKEN_BEDROCK"),
            access_keys: set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY"),
            web_identity: set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN"),
            container: set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        }
    }
}

/// Everything needed to build a [`BedrockProvider`].
pub struct BedrockSettings<'a> {
    pub model_id: &'a str,
    pub extra_args: Option<&'a BTreeMap<String, Value>>,
    /// A Bedrock API key (bearer token), when the configuration's `api_key` holds one.
    pub api_key: Option<Arc<LiveSecret>>,
    pub env: AwsEnv,
    pub client: reqwest::Client,
    pub retry: RetryPolicy,
    pub call_timeout: Duration,
    pub limit: Arc<Semaphore>,
}

/// A configuration problem: the offending configuration field and a message.
pub type BuildError = (&'static str, String);

pub struct BedrockProvider {
    model_id: String,
    /// Full Converse URL with the model id encoded once; signed and sent as is.
    url: String,
    region: String,
    auth: Auth,
    client: reqwest::Client,
    retry: RetryPolicy,
    call_timeout: Duration,
    limit: Arc<Semaphore>,
}

/// How calls are authenticated.
enum Auth {
    /// SigV4 with keys from `extra_args`, re-read on every call (rotated files apply at once).
    Keys {
        access_key_id: LiveSecret,
        secret_access_key: LiveSecret,
        session_token: Option<LiveSecret>,
    },
    /// A Bedrock API key sent as `Authorization: Bearer`, no signature.
    Bearer(Arc<LiveSecret>),
    /// The AWS credential chain (environment, web identity, container), cached until near expiry.
    Chain(CachedChain),
}

/// The `extra_args` this provider understands, parsed.
#[derive(Debug, Default)]
struct AwsArgs {
    access_key_id: Option<SecretValue>,
    secret_access_key: Option<SecretValue>,
    session_token: Option<SecretValue>,
    region: Option<String>,
    endpoint: Option<String>,
}

fn parse_args(extra: Option<&BTreeMap<String, Value>>) -> Result<AwsArgs, String> {
    let mut args = AwsArgs::default();
    let Some(extra) = extra else {
        return Ok(args);
    };
    for (key, value) in extra {
        if !key.starts_with("aws_") {
            continue; // Other providers' options; not ours to judge.
        }
        if !SUPPORTED_AWS_ARGS.contains(&key.as_str()) {
            return Err(format!(
                "extra_args.{key} is not supported for Bedrock; supported: {}",
                SUPPORTED_AWS_ARGS.join(", ")
            ));
        }
        if value.is_null() {
            continue;
        }
        let secret = || -> Result<Option<SecretValue>, String> {
            let v: SecretValue = serde_json::from_value(value.clone()).map_err(|_| {
                format!(
                    "extra_args.{key} must be a string, {{\"file\": path}} or {{\"env\": NAME}}"
                )
            })?;
            Ok((!v.is_empty_inline()).then_some(v))
        };
        let plain = || -> Result<Option<String>, String> {
            match value {
                Value::String(s) if s.trim().is_empty() => Ok(None),
                Value::String(s) => Ok(Some(s.trim().to_owned())),
                _ => Err(format!("extra_args.{key} must be a string")),
            }
        };
        match key.as_str() {
            "aws_access_key_id" => args.access_key_id = secret()?,
            "aws_secret_access_key" => args.secret_access_key = secret()?,
            "aws_session_token" => args.session_token = secret()?,
            "aws_region_name" => args.region = plain()?,
            _ => args.endpoint = plain()?,
        }
    }
    Ok(args)
}

/// Which credentials a configuration uses, before any secret is read.
#[derive(Debug, PartialEq, Eq)]
enum AuthPlan {
    Keys {
        access_key_id: SecretValue,
        secret_access_key: SecretValue,
        session_token: Option<SecretValue>,
    },
    ApiKey,
    EnvBearer,
    Chain,
}

fn plan_auth(args: AwsArgs, api_key: bool, env: &AwsEnv) -> Result<AuthPlan, String> {
    match (args.access_key_id, args.secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => {
            return Ok(AuthPlan::Keys {
                access_key_id,
                secret_access_key,
                session_token: args.session_token,
            });
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(
                "extra_args needs both aws_access_key_id and aws_secret_access_key, or neither"
                    .into(),
            );
        }
        (None, None) => {}
    }
    if args.session_token.is_some() {
        return Err(
            "extra_args.aws_session_token needs aws_access_key_id and aws_secret_access_key".into(),
        );
    }
    if api_key {
        Ok(AuthPlan::ApiKey)
    } else if env.bearer_token {
        Ok(AuthPlan::EnvBearer)
    } else if env.access_keys || env.web_identity || env.container {
        Ok(AuthPlan::Chain)
    } else {
        Err("no AWS credentials for Bedrock: set extra_args.aws_access_key_id and \
             aws_secret_access_key (inline, {\"file\": …} or {\"env\": …}), or provide \
             AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, web identity (AWS_WEB_IDENTITY_TOKEN_FILE + \
             AWS_ROLE_ARN) or container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI) to the worker"
            .into())
    }
}

fn resolve_region(args: &AwsArgs, env: &AwsEnv) -> Result<String, String> {
    let region = args
        .region
        .clone()
        .or_else(|| env.region.clone())
        .unwrap_or_else(|| DEFAULT_REGION.to_owned());
    // The region goes into a host name and the signing scope; keep it to what AWS uses.
    if region
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(region)
    } else {
        Err(format!("{region:?} is not an AWS region name"))
    }
}

fn resolve_endpoint(args: &AwsArgs, env: &AwsEnv, region: &str) -> Result<String, String> {
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| env.endpoint.clone())
        .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
    let url = reqwest::Url::parse(&endpoint)
        .map_err(|e| format!("Bedrock endpoint {endpoint:?} is not a URL ({e})"))?;
    // The signer needs a host, and only plain HTTP(S) endpoints make sense here.
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "Bedrock endpoint {endpoint:?} must be an http(s) URL with a host"
        ));
    }
    if url.query().is_some() {
        return Err(format!(
            "Bedrock endpoint {endpoint:?} must not have a query string"
        ));
    }
    Ok(endpoint.trim_end_matches('/').to_owned())
}

/// The Converse URL of a model: the id percent-encoded once as a single path segment.
fn converse_url(endpoint: &str, model_id: &str) -> String {
    format!(
        "{endpoint}/model/{}/converse",
        encode_path_segment(model_id)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so `:` and `/` of ids and ARNs).
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl BedrockProvider {
    pub fn build(s: BedrockSettings<'_>) -> Result<Self, BuildError> {
        let model_id = s.model_id.trim();
        if model_id.is_empty() {
            return Err(("model", "the Bedrock model id is empty".into()));
        }
        if model_id.starts_with("invoke/") {
            return Err((
                "model",
                "bedrock/invoke/… (InvokeModel) is not supported; this worker calls Converse: \
                 use bedrock/<model-id> or bedrock/converse/<model-id>"
                    .into(),
            ));
        }
        let args = parse_args(s.extra_args).map_err(|m| ("extra_args", m))?;
        let region = resolve_region(&args, &s.env).map_err(|m| ("extra_args", m))?;
        let endpoint = resolve_endpoint(&args, &s.env, &region).map_err(|m| ("extra_args", m))?;
        let plan = plan_auth(args, s.api_key.is_some(), &s.env).map_err(|m| ("extra_args", m))?;
        let live = |v: SecretValue| LiveSecret::new(v).map_err(|e| ("extra_args", e.to_string()));
        let auth = match plan {
            AuthPlan::Keys {
                access_key_id,
                secret_access_key,
                session_token,
            } => Auth::Keys {
                access_key_id: live(access_key_id)?,
                secret_access_key: live(secret_access_key)?,
                session_token: session_token.map(live).transpose()?,
            },
            AuthPlan::ApiKey => match s.api_key {
                Some(k) => Auth::Bearer(k),
                None => return Err(("api_key", "no Bedrock API key".into())),
            },
            AuthPlan::EnvBearer => Auth::Bearer(Arc::new(live(SecretValue::Env {
                env: "AWS_BEARER_TOKEN_BEDROCK".into(),
            })?)),
            AuthPlan::Chain => Auth::Chain(CachedChain::new(&region)),
        };
        Ok(Self {
            url: converse_url(&endpoint, model_id),
            model_id: model_id.to_owned(),
            region,
            auth,
            client: s.client,
            retry: s.retry,
            call_timeout: s.call_timeout,
            limit: s.limit,
        })
    }

    async fn send_once(&self, body: &Bytes) -> Result<Completion, UpstreamError> {
        let mut req = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .timeout(self.call_timeout)
            .body(body.clone());
        // Secrets used for this attempt, to scrub from any error message the upstream returns.
        let mut secrets: Vec<String> = Vec::new();
        match &self.auth {
            Auth::Bearer(key) => {
                let key = key.get();
                req = req.bearer_auth(&*key);
                secrets.push(key.to_string());
            }
            Auth::Keys { .. } | Auth::Chain(_) => {
                let creds = self.credentials().await?;
                let headers = sign_headers(
                    "POST",
                    &self.url,
                    &[("content-type", "application/json")],
                    body,
                    creds.clone(),
                    &self.region,
                    SIGNING_NAME,
                    SystemTime::now(),
                )
                .map_err(|e| UpstreamError::Transport(format!("cannot sign the request: {e}")))?;
                for (name, value) in headers {
                    req = req.header(name, value);
                }
                secrets.push(creds.secret_access_key().to_owned());
                secrets.extend(creds.session_token().map(str::to_owned));
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(e, self.call_timeout))?;
        if !resp.status().is_success() {
            let e = read_error(resp).await;
            let error_type = e
                .headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok());
            let (status, message) = aws_error(e.status, error_type, &e.body);
            return Err(UpstreamError::Status {
                status,
                message: redact(message, secrets.iter().map(String::as_str)),
                retry_after: e.retry_after,
            });
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(e, self.call_timeout))?;
        parse_converse_response(&bytes)
    }

    /// Credentials for one signature: the live `extra_args` keys, or the cached chain's.
    async fn credentials(&self) -> Result<Credentials, UpstreamError> {
        match &self.auth {
            Auth::Keys {
                access_key_id,
                secret_access_key,
                session_token,
            } => Ok(Credentials::new(
                &*access_key_id.get(),
                &*secret_access_key.get(),
                session_token.as_ref().map(|t| t.get().to_string()),
                None,
                "extra_args",
            )),
            Auth::Chain(chain) => tokio::time::timeout(self.call_timeout, chain.get())
                .await
                .map_err(|_| UpstreamError::Connect("timed out obtaining AWS credentials".into()))?
                .map_err(|e| UpstreamError::Connect(format!("cannot obtain AWS credentials: {e}"))),
            Auth::Bearer(_) => Err(UpstreamError::Transport(
                "internal: no SigV4 credentials for a bearer-token configuration".into(),
            )),
        }
    }
}

impl ChatProvider for BedrockProvider {
    fn kind(&self) -> &'static str {
        "bedrock"
    }

    fn model(&self) -> &str {
        &self.model_id
    }

    fn prepare(&self, body: Map<String, Value>) -> Result<PreparedCall, ProviderError> {
        let converse = to_converse(&body).map_err(ProviderError::Translate)?;
        PreparedCall::json(&converse)
    }

    fn send<'a>(
        &'a self,
        call: &'a PreparedCall,
    ) -> BoxFuture<'a, Result<Completion, UpstreamError>> {
        Box::pin(send_with_retries(&self.limit, &self.retry, || {
            self.send_once(&call.body)
        }))
    }
}

// ------------------------------------------------------------------------- credential chain

/// The AWS credential chain without profiles, SSO or IMDS, with a cache shared by all calls.
struct CachedChain {
    chain: CredentialsProviderChain,
    /// Held across a refresh, so N concurrent candidates cause one STS call, not N.
    state: tokio::sync::Mutex<ChainState>,
}

#[derive(Default)]
struct ChainState {
    creds: Option<Credentials>,
    /// The last failure: calls within [`FAILURE_HOLD`] of it share it instead of queueing one
    /// credential request each behind the lock.
    failure: Option<(Instant, String)>,
}

/// How long a failure to obtain credentials is reused.
const FAILURE_HOLD: Duration = Duration::from_millis(500);

impl CachedChain {
    fn new(region: &str) -> Self {
        use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
        // Only STS and the container endpoint are reached through this client; certificates load
        // lazily on first use.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let conf = ProviderConfig::without_region()
            .with_region(Some(aws_config::Region::new(region.to_owned())))
            .with_http_client(http);
        let chain = CredentialsProviderChain::first_try(
            "Environment",
            EnvironmentVariableCredentialsProvider::new(),
        )
        .or_else(
            "WebIdentityToken",
            WebIdentityTokenCredentialsProvider::builder()
                .configure(&conf)
                .build(),
        )
        .or_else(
            "Container",
            EcsCredentialsProvider::builder().configure(&conf).build(),
        );
        Self {
            chain,
            state: tokio::sync::Mutex::new(ChainState::default()),
        }
    }

    async fn get(&self) -> Result<Credentials, String> {
        let mut state = self.state.lock().await;
        let now = SystemTime::now();
        if let Some(c) = state.creds.as_ref()
            && still_fresh(c.expiry(), now)
        {
            return Ok(c.clone());
        }
        if let Some((at, e)) = &state.failure
            && at.elapsed() < FAILURE_HOLD
        {
            return Err(e.clone());
        }
        match self.chain.provide_credentials().await {
            Ok(fresh) => {
                state.creds = Some(fresh.clone());
                state.failure = None;
                Ok(fresh)
            }
            Err(e) => {
                let message = error_chain(&e);
                state.failure = Some((Instant::now(), message.clone()));
                // Credentials in their refresh margin still sign: better than failing the call.
                match state.creds.as_ref() {
                    Some(c) if c.expiry().is_none_or(|at| at > now) => {
                        tracing::warn!(error = %message, "AWS credential refresh failed; using the current ones");
                        Ok(c.clone())
                    }
                    _ => Err(message),
                }
            }
        }
    }
}

/// Whether cached credentials can still sign: no expiry, or more than the margin left.
fn still_fresh(expiry: Option<SystemTime>, now: SystemTime) -> bool {
    match expiry {
        None => true,
        Some(at) => at
            .duration_since(now)
            .is_ok_and(|left| left > REFRESH_BEFORE_EXPIRY),
    }
}

// ------------------------------------------------------------------------------ signing

/// SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for a request. `headers`
/// are the ones that will be sent and must be signed besides `host` (taken from `url`).
#[allow(clippy::too_many_arguments)]
fn sign_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    creds: Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, String> {
    let identity = creds.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?;
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(request, &params.into())
        .map_err(|e| e.to_string())?
        .into_parts();
    let (signed, _query) = instructions.into_parts();
    Ok(signed
        .into_iter()
        .map(|h| (h.name(), h.value().to_owned()))
        .collect())
}

// ------------------------------------------------------------------- request translation

/// Translates an OpenAI chat body into a Converse body (see the module docs for the rules).
fn to_converse(body: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages must be an array")?;
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    let mut history_tools: Vec<String> = Vec::new();
    let mut history_has_tool_blocks = false;
    for (i, m) in messages.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("messages[{i}] has no role"))?;
        let content = m.get("content");
        match role {
            "system" | "developer" => {
                for text in text_parts(content, i)? {
                    if !text.trim().is_empty() {
                        system.push(json!({ "text": text }));
                    }
                }
            }
            "user" => push_turn(&mut turns, "user", user_blocks(content, i)?),
            "assistant" => {
                let mut blocks: Vec<Value> = text_parts(content, i)?
                    .into_iter()
                    .filter(|t| !t.trim().is_empty())
                    .map(|t| json!({ "text": t }))
                    .collect();
                if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                    let calls = calls
                        .as_array()
                        .ok_or_else(|| format!("messages[{i}].tool_calls must be an array"))?;
                    for (j, call) in calls.iter().enumerate() {
                        let (block, name) = tool_use_block(call, i, j)?;
                        blocks.push(block);
                        if !history_tools.contains(&name) {
                            history_tools.push(name);
                        }
                        history_has_tool_blocks = true;
                    }
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| format!("messages[{i}] (role tool) has no tool_call_id"))?;
                // An empty result is sent as one empty text block, which every model accepts.
                let text = text_parts(content, i)?.join("");
                let block =
                    json!({ "toolResult": { "toolUseId": id, "content": [{ "text": text }] } });
                push_turn(&mut turns, "user", vec![block]);
                history_has_tool_blocks = true;
            }
            other => {
                return Err(format!(
                    "messages[{i}] has role {other:?}, which Bedrock cannot take"
                ));
            }
        }
    }
    if turns.is_empty() {
        return Err("Bedrock needs at least one user or assistant message with content".into());
    }
    if turns[0].role == "assistant" {
        turns.insert(
            0,
            Turn {
                role: "user",
                content: vec![json!({ "text": "." })],
            },
        );
    }

    let mut out = Map::new();
    out.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|t| json!({ "role": t.role, "content": t.content }))
                .collect(),
        ),
    );
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    if let Some(cfg) = inference_config(body)? {
        out.insert("inferenceConfig".into(), Value::Object(cfg));
    }
    if let Some(cfg) = tool_config(body, &history_tools, history_has_tool_blocks)? {
        out.insert("toolConfig".into(), Value::Object(cfg));
    }
    if let Some(k) = body.get("top_k").filter(|v| !v.is_null()) {
        if !k.is_number() {
            return Err("top_k must be a number".into());
        }
        out.insert("additionalModelRequestFields".into(), json!({ "top_k": k }));
    }
    Ok(out)
}

struct Turn {
    role: &'static str,
    content: Vec<Value>,
}

/// Appends blocks as a turn, merging into the previous turn of the same role (Converse requires
/// strictly alternating roles). Messages without blocks are dropped.
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => turns.push(Turn {
            role,
            content: blocks,
        }),
    }
}

/// Texts of a content value: a string, or the `text` parts of a list. Other parts are refused.
fn text_parts(content: Option<&Value>, i: usize) -> Result<Vec<String>, String> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| part_text(p, i, j))
            .collect(),
        Some(_) => Err(format!(
            "messages[{i}].content must be a string, a list of parts or null"
        )),
    }
}

/// The text of a `text` content part; any other part type is refused.
fn part_text(p: &Value, i: usize, j: usize) -> Result<String, String> {
    match part_type(p) {
        Some("text") => p
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("messages[{i}].content[{j}] has no text")),
        other => Err(format!(
            "messages[{i}].content[{j}] of type {} cannot be sent to Bedrock here",
            other.unwrap_or("(none)")
        )),
    }
}

fn part_type(p: &Value) -> Option<&str> {
    p.get("type").and_then(Value::as_str)
}

/// Content blocks of a user message: text, and images given inline as `data:` URLs.
fn user_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, String> {
    let Some(Value::Array(parts)) = content else {
        return Ok(text_parts(content, i)?
            .into_iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| json!({ "text": t }))
            .collect());
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        match part_type(p) {
            Some("image_url") => {
                let url = p
                    .pointer("/image_url/url")
                    .or_else(|| p.get("image_url"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("messages[{i}].content[{j}] has no image_url.url"))?;
                blocks.push(
                    image_block(url).map_err(|m| format!("messages[{i}].content[{j}]: {m}"))?,
                );
            }
            _ => {
                let t = part_text(p, i, j)?;
                if !t.trim().is_empty() {
                    blocks.push(json!({ "text": t }));
                }
            }
        }
    }
    Ok(blocks)
}

/// A Converse image block from a `data:image/…;base64,…` URL (Converse's JSON carries the bytes
/// base64-encoded, so the data is passed through untouched).
fn image_block(url: &str) -> Result<Value, String> {
    let rest = url
        .strip_prefix("data:")
        .ok_or("Bedrock takes images inline only (data: URLs), not by URL")?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or("malformed data: URL (no comma)")?;
    let mime = meta
        .strip_suffix(";base64")
        .ok_or("data: URL images must be base64-encoded")?;
    let format = match mime {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => return Err(format!("image type {other:?} is not supported by Bedrock")),
    };
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// A `toolUse` block from an OpenAI tool call, and the tool's name.
fn tool_use_block(call: &Value, i: usize, j: usize) -> Result<(Value, String), String> {
    let at = || format!("messages[{i}].tool_calls[{j}]");
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{} has no id", at()))?;
    let name = call
        .pointer("/function/name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{} has no function.name", at()))?;
    let input = match call.pointer("/function/arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str(s)
            .map_err(|e| format!("{}.function.arguments is not valid JSON ({e})", at()))?,
        // Already structured (not OpenAI's shape, but unambiguous).
        Some(other) => other.clone(),
    };
    Ok((
        json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } }),
        name.to_owned(),
    ))
}

fn inference_config(body: &Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
    let mut cfg = Map::new();
    let number = |key: &str| -> Result<Option<Value>, String> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) if v.is_number() => Ok(Some(v.clone())),
            Some(_) => Err(format!("{key} must be a number")),
        }
    };
    // OpenAI deprecated max_tokens for max_completion_tokens; the newer one wins.
    if let Some(v) = number("max_completion_tokens")?.or(number("max_tokens")?) {
        if !v.is_u64() {
            return Err("max_tokens must be a positive integer".into());
        }
        cfg.insert("maxTokens".into(), v);
    }
    if let Some(v) = number("temperature")? {
        cfg.insert("temperature".into(), v);
    }
    if let Some(v) = number("top_p")? {
        cfg.insert("topP".into(), v);
    }
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            cfg.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            if !list.is_empty() {
                cfg.insert("stopSequences".into(), Value::Array(list.clone()));
            }
        }
        Some(_) => return Err("stop must be a string or a list of strings".into()),
    }
    Ok((!cfg.is_empty()).then_some(cfg))
}

/// What `tool_choice` asks for.
enum Choice {
    /// Not given: Converse's default (auto).
    Unset,
    None,
    Given(Value),
}

fn tool_choice(body: &Map<String, Value>) -> Result<Choice, String> {
    let err = || {
        "tool_choice must be \"none\", \"auto\", \"required\" or \
         {\"type\": \"function\", \"function\": {\"name\": …}}"
            .to_owned()
    };
    match body.get("tool_choice") {
        None | Some(Value::Null) => Ok(Choice::Unset),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Choice::None),
            "auto" => Ok(Choice::Given(json!({ "auto": {} }))),
            "required" => Ok(Choice::Given(json!({ "any": {} }))),
            _ => Err(err()),
        },
        Some(v @ Value::Object(_)) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(err)?;
            Ok(Choice::Given(json!({ "tool": { "name": name } })))
        }
        Some(_) => Err(err()),
    }
}

fn tool_config(
    body: &Map<String, Value>,
    history_tools: &[String],
    history_has_tool_blocks: bool,
) -> Result<Option<Map<String, Value>>, String> {
    let mut specs = Vec::new();
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        let tools = tools.as_array().ok_or("tools must be an array")?;
        for (i, t) in tools.iter().enumerate() {
            if let Some(kind) = part_type(t).filter(|k| *k != "function") {
                return Err(format!(
                    "tools[{i}] has type {kind:?}; Bedrock takes function tools only"
                ));
            }
            let f = t
                .get("function")
                .ok_or_else(|| format!("tools[{i}] has no function"))?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("tools[{i}].function has no name"))?;
            let schema = f
                .get("parameters")
                .filter(|p| p.is_object())
                .cloned()
                .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
            let mut spec = Map::new();
            spec.insert("name".into(), json!(name));
            if let Some(d) = f
                .get("description")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
            {
                spec.insert("description".into(), json!(d));
            }
            spec.insert("inputSchema".into(), json!({ "json": schema }));
            specs.push(json!({ "toolSpec": spec }));
        }
    }
    let choice = tool_choice(body)?;
    if matches!(choice, Choice::None) && !history_has_tool_blocks {
        // No tool may be called and none is needed to read the history: no toolConfig at all.
        return Ok(None);
    }
    if specs.is_empty() && history_has_tool_blocks {
        // Converse refuses toolUse/toolResult blocks without a toolConfig: declare the tools the
        // history used.
        specs = history_tools
            .iter()
            .map(|name| {
                json!({ "toolSpec": {
                    "name": name,
                    "inputSchema": { "json": { "type": "object" } }
                } })
            })
            .collect();
    }
    if specs.is_empty() {
        return Ok(None);
    }
    let mut cfg = Map::new();
    cfg.insert("tools".into(), Value::Array(specs));
    if let Choice::Given(c) = choice {
        cfg.insert("toolChoice".into(), c);
    }
    Ok(Some(cfg))
}

// ------------------------------------------------------------------ response translation

/// Parses a Converse response into one OpenAI-shaped candidate.
fn parse_converse_response(body: &[u8]) -> Result<Completion, UpstreamError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Malformed(format!("invalid JSON ({e})")))?;
    let blocks = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| UpstreamError::Malformed("no output.message.content array".into()))?;
    let mut text: Option<String> = None;
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.get_or_insert_with(String::new).push_str(t);
        } else if let Some(tu) = block.get("toolUse") {
            let field = |k: &str| {
                tu.get(k)
                    .and_then(Value::as_str)
                    .ok_or_else(|| UpstreamError::Malformed(format!("a toolUse block has no {k}")))
            };
            let input = tu.get("input").cloned().unwrap_or_else(|| json!({}));
            let arguments = serde_json::to_string(&input)
                .map_err(|e| UpstreamError::Malformed(e.to_string()))?;
            tool_calls.push(json!({
                "id": field("toolUseId")?,
                "type": "function",
                "function": { "name": field("name")?, "arguments": arguments },
            }));
        } else if let Some(r) = block
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            reasoning.push_str(r);
        }
        // Other blocks (citations, images, guard content) have no OpenAI counterpart.
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), text.map_or(Value::Null, Value::String));
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), Value::String(reasoning));
    }
    let stop = v.get("stopReason").and_then(Value::as_str).unwrap_or("");
    let finish = finish_reason(stop);
    if finish == "stop" && !matches!(stop, "end_turn" | "stop_sequence") {
        tracing::debug!(stop_reason = stop, "Bedrock stop reason mapped to stop");
    }
    let usage = v.get("usage").map(converse_usage).unwrap_or_default();
    Ok(Completion {
        candidates: vec![Candidate::from_message(
            Value::Object(message),
            Some(finish.to_owned()),
            None,
        )],
        usage,
        system_fingerprint: None,
    })
}

/// Converse `stopReason` → OpenAI `finish_reason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "tool_use" => "tool_calls",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence, and reasons without an OpenAI equivalent
        // (malformed_model_output, malformed_tool_use, unknown future values).
        _ => "stop",
    }
}

fn converse_usage(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        prompt_tokens: n("inputTokens") + n("cacheReadInputTokens") + n("cacheWriteInputTokens"),
        completion_tokens: n("outputTokens"),
    }
}

// ------------------------------------------------------------------------------ errors

/// Status and message of a Bedrock error: `{type}: {message}`, the type from `x-amzn-errortype`
/// (or the body's `__type`). Throttling reported under another status is treated as 429 so it is
/// retried.
fn aws_error(status: u16, error_type: Option<&str>, body: &[u8]) -> (u16, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_owned();
            if text.is_empty() {
                "(empty body)".to_owned()
            } else {
                text
            }
        });
    // Both forms may carry a namespace or URL: `Type:http://…` and `ns#Type`.
    let kind = error_type
        .map(|t| t.split(':').next().unwrap_or(t))
        .or_else(|| {
            parsed
                .as_ref()
                .and_then(|v| v.get("__type"))
                .and_then(Value::as_str)
                .map(|t| t.rsplit('#').next().unwrap_or(t))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let status = match kind.as_deref() {
        Some("ThrottlingException" | "TooManyRequestsException") if status < 500 => 429,
        _ => status,
    };
    let message = match kind {
        Some(k) => format!("{k}: {message}"),
        None => message,
    };
    (status, message)
}

/// An error and its sources, joined: AWS credential errors put the useful part in a source.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(next) = cur {
        let text = next.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = next.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const MODEL: &str = "us.anthropic.claude-3-7-sonnet-20250219-v1:0";

    fn translate(body: Value) -> Value {
        let Value::Object(map) = body else {
            panic!("body must be an object")
        };
        Value::Object(to_converse(&map).unwrap())
    }

    fn translate_err(body: Value) -> String {
        let Value::Object(map) = body else {
            panic!("body must be an object")
        };
        to_converse(&map).unwrap_err()
    }

    fn calculator() -> Value {
        json!({"type": "function", "function": {
            "name": "calculator", "description": "Evaluates arithmetic",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}
        }})
    }

    #[test]
    fn system_and_developer_messages_become_system_blocks() {
        let out = translate(json!({
            "model": "x",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
                {"role": "user", "content": "Hi"},
            ]
        }));
        assert_eq!(
            out,
            json!({
                "system": [{"text": "Be terse."}, {"text": "Use metric units."}],
                "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            })
        );
    }

    #[test]
    fn multi_turn_tool_history_is_translated_and_merged() {
        let out = translate(json!({
            "messages": [
                {"role": "user", "content": "What is 2+2 and 3*3?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"2+2\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"3*3\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "4"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "9"}]},
                {"role": "user", "content": "Thanks. Now add them."},
                {"role": "assistant", "content": "Let me add.", "tool_calls": [
                    {"id": "call_3", "type": "function", "function": {"name": "calculator", "arguments": ""}},
                ]},
                {"role": "tool", "tool_call_id": "call_3", "content": ""},
            ],
            "tools": [calculator()],
        }));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"text": "What is 2+2 and 3*3?"}]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "call_1", "name": "calculator", "input": {"expression": "2+2"}}},
                    {"toolUse": {"toolUseId": "call_2", "name": "calculator", "input": {"expression": "3*3"}}},
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"text": "4"}]}},
                    {"toolResult": {"toolUseId": "call_2", "content": [{"text": "9"}]}},
                    {"text": "Thanks. Now add them."},
                ]},
                {"role": "assistant", "content": [
                    {"text": "Let me add."},
                    {"toolUse": {"toolUseId": "call_3", "name": "calculator", "input": {}}},
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_3", "content": [{"text": ""}]}},
                ]},
            ])
        );
        assert_eq!(
            out["toolConfig"],
            json!({"tools": [{"toolSpec": {
                "name": "calculator", "description": "Evaluates arithmetic",
                "inputSchema": {"json": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}
            }}]})
        );
    }

    #[test]
    fn tool_choice_variants() {
        let with = |choice: Value| {
            translate(json!({
                "messages": [{"role": "user", "content": "2+2?"}],
                "tools": [calculator()],
                "tool_choice": choice,
            }))
        };
        assert_eq!(
            with(json!("auto"))["toolConfig"]["toolChoice"],
            json!({"auto": {}})
        );
        assert_eq!(
            with(json!("required"))["toolConfig"]["toolChoice"],
            json!({"any": {}})
        );
        assert_eq!(
            with(json!({"type": "function", "function": {"name": "calculator"}}))["toolConfig"]["toolChoice"],
            json!({"tool": {"name": "calculator"}})
        );
        let unset = with(Value::Null);
        assert!(unset["toolConfig"].get("toolChoice").is_none());
        assert_eq!(
            unset["toolConfig"]["tools"][0]["toolSpec"]["name"],
            "calculator"
        );
        // none without tool history: no tools offered at all.
        assert!(with(json!("none")).get("toolConfig").is_none());
        assert!(
            translate_err(
                json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes"})
            )
            .contains("tool_choice")
        );
    }

    #[test]
    fn tool_history_keeps_a_tool_config() {
        let history = json!([
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
        ]);
        // none with tool history: the tools stay (Converse demands them), toolChoice is omitted.
        let none =
            translate(json!({"messages": history, "tools": [calculator()], "tool_choice": "none"}));
        assert_eq!(
            none["toolConfig"]["tools"][0]["toolSpec"]["name"],
            "calculator"
        );
        assert!(none["toolConfig"].get("toolChoice").is_none());
        // No tools in the request: the history's tool names are declared.
        let bare = translate(json!({"messages": history}));
        assert_eq!(
            bare["toolConfig"],
            json!({"tools": [{"toolSpec": {"name": "calculator", "inputSchema": {"json": {"type": "object"}}}}]})
        );
    }

    #[test]
    fn inference_config_and_dropped_fields() {
        let out = translate(json!({
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 100, "max_completion_tokens": 200, "temperature": 0.7, "top_p": 0.9,
            "stop": ["END", "STOP"], "top_k": 40,
            "n": 1, "seed": 7, "logprobs": true, "response_format": {"type": "json_object"},
            "presence_penalty": 0.5, "user": "u", "parallel_tool_calls": false, "model": "m",
        }));
        assert_eq!(
            out,
            json!({
                "messages": [{"role": "user", "content": [{"text": "x"}]}],
                "inferenceConfig": {"maxTokens": 200, "temperature": 0.7, "topP": 0.9, "stopSequences": ["END", "STOP"]},
                "additionalModelRequestFields": {"top_k": 40},
            })
        );
        let single = translate(
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "stop": "\n"}),
        );
        assert_eq!(
            single["inferenceConfig"],
            json!({"maxTokens": 5, "stopSequences": ["\n"]})
        );
        assert!(
            translate_err(
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"})
            )
            .contains("temperature")
        );
        assert!(
            translate_err(
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5})
            )
            .contains("max_tokens")
        );
    }

    #[test]
    fn conversation_shape_rules() {
        // A leading assistant turn gets a placeholder user turn; blank messages are dropped.
        let out = translate(json!({"messages": [
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "  "},
            {"role": "user", "content": "Hi"},
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"text": "."}]},
                {"role": "assistant", "content": [{"text": "Hello! How can I help?"}]},
                {"role": "user", "content": [{"text": "Hi"}]},
            ])
        );
        assert!(
            translate_err(json!({"messages": [{"role": "system", "content": "s"}]}))
                .contains("at least one")
        );
        assert!(
            translate_err(json!({"messages": [{"role": "tool", "content": "4"}]}))
                .contains("tool_call_id")
        );
        assert!(
            translate_err(json!({"messages": [{"role": "assistant", "tool_calls": [
                {"id": "c", "function": {"name": "f", "arguments": "{not json"}}]}]}))
            .contains("not valid JSON")
        );
    }

    #[test]
    fn images_are_inline_only() {
        let out = translate(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}]}));
        assert_eq!(
            out["messages"][0]["content"],
            json!([{"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}])
        );
        let e = translate_err(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}));
        assert!(e.contains("data: URLs"), "{e}");
        let e = translate_err(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "input_audio", "input_audio": {}}]}]}));
        assert!(e.contains("content[1]") && e.contains("input_audio"), "{e}");
    }

    #[test]
    fn text_response_translates() {
        let c = parse_converse_response(br#"{"output":{"message":{"role":"assistant","content":[{"text":"The answer "},{"text":"is 4."}]}},
            "stopReason":"end_turn","usage":{"inputTokens":12,"outputTokens":5,"totalTokens":17,"cacheReadInputTokens":3},"metrics":{"latencyMs":10}}"#).unwrap();
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 15,
                completion_tokens: 5
            }
        );
        let cand = &c.candidates[0];
        assert_eq!(
            cand.message,
            json!({"role": "assistant", "content": "The answer is 4."})
        );
        assert_eq!(cand.finish_reason.as_deref(), Some("stop"));
        assert_eq!(cand.text, "The answer is 4.");
        assert!(!cand.has_tool_calls());
    }

    #[test]
    fn tool_use_response_translates() {
        let c = parse_converse_response(br#"{"output":{"message":{"role":"assistant","content":[
            {"reasoningContent":{"reasoningText":{"text":"need a tool"}}},
            {"toolUse":{"toolUseId":"tooluse_abc","name":"calculator","input":{"expression":"2+2"}}}]}},
            "stopReason":"tool_use","usage":{"inputTokens":20,"outputTokens":9}}"#).unwrap();
        let cand = &c.candidates[0];
        assert_eq!(
            cand.message,
            json!({"role": "assistant", "content": null, "reasoning_content": "need a tool", "tool_calls": [
                {"id": "tooluse_abc", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"2+2\"}"}}]})
        );
        assert_eq!(cand.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(cand.tool_calls[0].name, "calculator");
        assert_eq!(cand.tool_calls[0].arguments, r#"{"expression":"2+2"}"#);
        assert_eq!(
            c.usage,
            Usage {
                prompt_tokens: 20,
                completion_tokens: 9
            }
        );
    }

    #[test]
    fn malformed_responses_are_errors() {
        for body in [
            &b"nope"[..],
            b"{}",
            br#"{"output":{"message":{"content":[{"toolUse":{"name":"f"}}]}}}"#,
        ] {
            assert!(matches!(
                parse_converse_response(body),
                Err(UpstreamError::Malformed(_))
            ));
        }
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("tool_use", "tool_calls"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            ("malformed_tool_use", "stop"),
            ("", "stop"),
        ] {
            assert_eq!(finish_reason(stop), finish, "{stop}");
        }
    }

    #[test]
    fn model_id_is_encoded_once_in_the_path() {
        assert_eq!(
            encode_path_segment(MODEL),
            "us.anthropic.claude-3-7-sonnet-20250219-v1%3A0"
        );
        assert_eq!(
            converse_url("https://bedrock-runtime.us-east-1.amazonaws.com", MODEL),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse"
        );
        assert_eq!(
            encode_path_segment("arn:aws:bedrock:us-east-1:123:application-inference-profile/abc"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Aapplication-inference-profile%2Fabc"
        );
    }

    fn example_creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_owned),
            None,
            "test",
        )
    }

    /// 2015-08-30T12:36:00Z, the date of AWS's SigV4 test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn sigv4_matches_the_aws_get_vanilla_vector() {
        let h = sign_headers(
            "GET",
            "https://example.amazonaws.com/",
            &[],
            b"",
            example_creds(None),
            "us-east-1",
            "service",
            suite_time(),
        )
        .unwrap();
        assert_eq!(header(&h, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            header(&h, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );
    }

    /// Expected values computed independently (a 30-line Python SigV4 over the canonical path
    /// `/model/us.anthropic.claude-3-7-sonnet-20250219-v1%253A0/converse`, i.e. double-encoded).
    #[test]
    fn bedrock_signature_double_encodes_the_canonical_path() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let url = converse_url("https://bedrock-runtime.us-east-1.amazonaws.com", MODEL);
        let h = sign_headers(
            "POST",
            &url,
            &[("content-type", "application/json")],
            body,
            example_creds(None),
            "us-east-1",
            SIGNING_NAME,
            suite_time(),
        )
        .unwrap();
        assert_eq!(
            header(&h, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, \
                 Signature=01d9241da23c82140aa82ec58af08b7a43298b1648763e57331830b848a1871d"
            )
        );
        // With a session token and a local endpoint (host includes the port).
        let url = converse_url("http://127.0.0.1:8080", MODEL);
        let h = sign_headers(
            "POST",
            &url,
            &[("content-type", "application/json")],
            body,
            example_creds(Some("SESSIONTOKEN")),
            "us-west-2",
            SIGNING_NAME,
            suite_time(),
        )
        .unwrap();
        assert_eq!(header(&h, "x-amz-security-token"), Some("SESSIONTOKEN"));
        assert_eq!(
            header(&h, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, \
                 Signature=d6a57f888ef519ae81e51030ea32610f401bacfffb1b683751b93638a7f27fd7"
            )
        );
    }

    #[test]
    fn bedrock_errors_name_their_type_and_throttling_is_retryable() {
        let (status, msg) = aws_error(
            403,
            Some("InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/"),
            br#"{"message":"The request signature we calculated does not match the signature you provided."}"#,
        );
        assert_eq!(status, 403);
        assert_eq!(
            msg,
            "InvalidSignatureException: The request signature we calculated does not match the signature you provided."
        );
        let (status, msg) = aws_error(
            400,
            None,
            br#"{"__type":"com.amazon#ThrottlingException","Message":"slow down"}"#,
        );
        assert_eq!(
            (status, msg.as_str()),
            (429, "ThrottlingException: slow down")
        );
        assert_eq!(aws_error(500, None, b"").1, "(empty body)");
        assert_eq!(
            redact("bad token SESSIONTOKEN".into(), ["SESSIONTOKEN", "ab"]),
            "bad token [redacted]"
        );
    }

    #[test]
    fn credentials_are_cached_until_shortly_before_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(still_fresh(None, now));
        assert!(still_fresh(Some(now + Duration::from_secs(3600)), now));
        assert!(!still_fresh(Some(now + Duration::from_secs(60)), now));
        assert!(!still_fresh(Some(now - Duration::from_secs(1)), now));
    }

    fn args(v: Value) -> Result<AwsArgs, String> {
        let map: BTreeMap<String, Value> = serde_json::from_value(v).unwrap();
        parse_args(Some(&map))
    }

    #[test]
    fn extra_args_forms_and_auth_order() {
        let a = args(json!({
            "aws_access_key_id": "AKID", "aws_secret_access_key": {"file": "/run/secrets/aws-secret"},
            "aws_session_token": {"env": "MY_TOKEN"}, "aws_region_name": "eu-west-1", "other": 1,
        }))
        .unwrap();
        assert_eq!(
            plan_auth(a, true, &AwsEnv::default()),
            Ok(AuthPlan::Keys {
                access_key_id: SecretValue::Inline("AKID".into()),
                secret_access_key: SecretValue::File {
                    file: "/run/secrets/aws-secret".into()
                },
                session_token: Some(SecretValue::Env {
                    env: "MY_TOKEN".into()
                }),
            })
        );

        // Null and empty values count as absent; then api_key, the bearer env var, the chain.
        let none =
            || args(json!({"aws_access_key_id": null, "aws_secret_access_key": ""})).unwrap();
        let env = AwsEnv {
            access_keys: true,
            ..AwsEnv::default()
        };
        assert_eq!(plan_auth(none(), true, &env), Ok(AuthPlan::ApiKey));
        let bearer = AwsEnv {
            bearer_token: true,
            ..env.clone()
        };
        assert_eq!(plan_auth(none(), false, &bearer), Ok(AuthPlan::EnvBearer));
        assert_eq!(plan_auth(none(), false, &env), Ok(AuthPlan::Chain));
        let irsa = AwsEnv {
            web_identity: true,
            ..AwsEnv::default()
        };
        assert_eq!(plan_auth(none(), false, &irsa), Ok(AuthPlan::Chain));
        let pod = AwsEnv {
            container: true,
            ..AwsEnv::default()
        };
        assert_eq!(plan_auth(none(), false, &pod), Ok(AuthPlan::Chain));
        let e = plan_auth(none(), false, &AwsEnv::default()).unwrap_err();
        assert!(e.contains("no AWS credentials"), "{e}");

        let half = args(json!({"aws_access_key_id": "AKID"})).unwrap();
        assert!(plan_auth(half, false, &env).unwrap_err().contains("both"));
        let token_only = args(json!({"aws_session_token": "t"})).unwrap();
        assert!(plan_auth(token_only, false, &env).is_err());
        assert!(
            args(json!({"aws_role_name": "r"}))
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            args(json!({"aws_region_name": 5}))
                .unwrap_err()
                .contains("must be a string")
        );
        assert!(args(json!({"aws_access_key_id": 5})).is_err());
    }

    #[test]
    fn region_and_endpoint_precedence() {
        let env = AwsEnv {
            region: Some("us-west-2".into()),
            endpoint: Some("http://127.0.0.1:9000/".into()),
            ..AwsEnv::default()
        };
        let a = args(json!({"aws_region_name": "eu-central-1"})).unwrap();
        assert_eq!(resolve_region(&a, &env).unwrap(), "eu-central-1");
        assert_eq!(
            resolve_region(&AwsArgs::default(), &env).unwrap(),
            "us-west-2"
        );
        assert_eq!(
            resolve_region(&AwsArgs::default(), &AwsEnv::default()).unwrap(),
            "us-east-1"
        );
        assert!(
            resolve_region(
                &args(json!({"aws_region_name": "evil.com/x"})).unwrap(),
                &env
            )
            .is_err()
        );

        assert_eq!(
            resolve_endpoint(&AwsArgs::default(), &env, "x").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            resolve_endpoint(&AwsArgs::default(), &AwsEnv::default(), "eu-west-1").unwrap(),
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );
        let own = args(json!({"aws_bedrock_runtime_endpoint": "https://vpce.example"})).unwrap();
        assert_eq!(
            resolve_endpoint(&own, &env, "x").unwrap(),
            "https://vpce.example"
        );
        let bad = args(json!({"aws_bedrock_runtime_endpoint": "ftp://x"})).unwrap();
        assert!(resolve_endpoint(&bad, &env, "x").is_err());
    }
}
