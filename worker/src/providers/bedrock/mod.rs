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
//!   5xx are retried like the OpenAI provider does; a request that cannot be signed is not retried.
//!   Secrets, account ids, ARNs and key ids are scrubbed from upstream messages (see
//!   `providers/redact.rs`) and never logged.
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

mod converse;
mod credentials;
mod error;
mod settings;
mod signing;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use self::converse::{parse_converse_response, to_converse};
use self::credentials::CachedChain;
use self::error::aws_error;
pub use self::settings::AwsEnv;
use self::settings::{AuthPlan, converse_url, plan_auth, resolve_endpoint, resolve_region};
use self::signing::{SIGNING_NAME, sign_headers};
use super::{
    BoxFuture, ChatProvider, Completion, HttpClient, PostAuth, PreparedCall, ProviderError,
    RetryPolicy, UpstreamError, UpstreamUrl, post_json, redact, send_with_retries,
};
use crate::config::bedrock::{BedrockConfigError, check_bedrock_config};
use crate::config::{LiveSecret, ProviderKind, SecretValue};

/// Everything needed to build a [`BedrockProvider`].
pub struct BedrockSettings<'a> {
    pub model_id: &'a str,
    pub extra_args: Option<&'a BTreeMap<String, Value>>,
    /// A Bedrock API key (bearer token), when the configuration's `api_key` holds one.
    pub api_key: Option<Arc<LiveSecret>>,
    pub env: AwsEnv,
    pub client: HttpClient,
    pub retry: RetryPolicy,
    pub call_timeout: Duration,
    pub limit: Arc<Semaphore>,
}

pub struct BedrockProvider {
    model_id: String,
    /// Full Converse URL with the model id encoded once; signed and sent as is.
    url: UpstreamUrl,
    region: String,
    auth: Auth,
    client: HttpClient,
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

impl BedrockProvider {
    pub fn build(s: BedrockSettings<'_>) -> Result<Self, BedrockConfigError> {
        // The same checks `WorkerConfig::validate` runs, then what depends on the environment.
        let (model_id, args) = check_bedrock_config(s.model_id, s.extra_args)?;
        let region = resolve_region(&args, &s.env)?;
        let endpoint = resolve_endpoint(&args, &s.env, &region)?;
        let plan = plan_auth(args, s.api_key.is_some(), &s.env)?;
        let live = |v: SecretValue| LiveSecret::new(v).map_err(BedrockConfigError::Secret);
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
            // The configured key when there is one (that is the ApiKey plan), else the variable.
            AuthPlan::ApiKey | AuthPlan::EnvBearer => Auth::Bearer(match s.api_key {
                Some(k) => k,
                None => Arc::new(live(SecretValue::Env {
                    env: "AWS_BEARER_TOKEN_BEDROCK".into(),
                })?),
            }),
            AuthPlan::Chain => Auth::Chain(CachedChain::new(&region)),
        };
        Ok(Self {
            url: s.client.url(converse_url(&endpoint, model_id)),
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
        // Secrets used for this attempt, to scrub from any error message the upstream returns.
        let mut secrets: Vec<String> = Vec::new();
        let bearer;
        let auth = match &self.auth {
            Auth::Bearer(key) => {
                bearer = key.get();
                secrets.push(bearer.to_string());
                PostAuth::Bearer(&bearer)
            }
            Auth::Keys { .. } | Auth::Chain(_) => {
                let creds = self.credentials().await?;
                let headers = sign_headers(
                    "POST",
                    self.url.as_str(),
                    &[("content-type", "application/json")],
                    body,
                    creds.clone(),
                    &self.region,
                    SIGNING_NAME,
                    SystemTime::now(),
                )
                .map_err(UpstreamError::Signing)?;
                secrets.push(creds.secret_access_key().to_owned());
                secrets.extend(creds.session_token().map(str::to_owned));
                PostAuth::Headers(headers)
            }
        };
        let bytes = post_json(
            &self.client,
            &self.url,
            body,
            self.call_timeout,
            auth,
            |e| {
                let error_type = e
                    .headers
                    .get("x-amzn-errortype")
                    .and_then(|v| v.to_str().ok());
                let (status, message) = aws_error(e.status, error_type, &e.body);
                UpstreamError::Status {
                    status,
                    message: redact(message, secrets.iter().map(String::as_str)),
                    retry_after: e.retry_after,
                }
            },
        )
        .await?;
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
    fn kind(&self) -> ProviderKind {
        ProviderKind::Bedrock
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
