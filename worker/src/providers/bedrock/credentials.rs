//! The AWS credential chain (environment, web identity, container) with a shared cache.

use std::time::{Duration, Instant, SystemTime};

use aws_config::ecs::EcsCredentialsProvider;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;

use super::error::error_chain;

/// Chain credentials are renewed this long before they expire, so that none expires mid-call.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// The AWS credential chain without profiles, SSO or IMDS, with a cache shared by all calls.
pub(super) struct CachedChain {
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
    pub(super) fn new(region: &str) -> Self {
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

    pub(super) async fn get(&self) -> Result<Credentials, String> {
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
pub(super) fn still_fresh(expiry: Option<SystemTime>, now: SystemTime) -> bool {
    match expiry {
        None => true,
        Some(at) => at
            .duration_since(now)
            .is_ok_and(|left| left > REFRESH_BEFORE_EXPIRY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn credentials_are_cached_until_shortly_before_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(still_fresh(None, now));
        assert!(still_fresh(Some(now + Duration::from_secs(3600)), now));
        assert!(!still_fresh(Some(now + Duration::from_secs(60)), now));
        assert!(!still_fresh(Some(now - Duration::from_secs(1)), now));
    }
}
