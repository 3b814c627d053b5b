//! Who may call what: client keys for `/v1`, and the admin rules for `POST /configure`.
//!
//! `/configure` can redirect the worker's upstream calls (and with them its credentials), so it is
//! guarded even when nobody configured a guard: without an admin token only loopback peers may
//! call it, which keeps the guide's `curl localhost:8108/configure` working on a workstation while
//! a worker listening on `0.0.0.0` cannot be reconfigured from the network.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::error::ApiError;
use crate::config::{LiveSecret, SecretAllowList};

/// Who may call what.
#[derive(Default)]
pub struct Access {
    /// Client keys (one per line); when set, `/v1` routes need `Authorization: Bearer <key>`.
    pub api_keys: Option<LiveSecret>,
    /// Whether `/configure` is served at all.
    pub allow_configure: bool,
    /// When set, `/configure` needs `Authorization: Bearer <token>` (from any peer); when unset,
    /// `/configure` is served to loopback peers only.
    pub admin_token: Option<LiveSecret>,
    /// Files and environment variables a `/configure` body may name as secret sources.
    pub configure_secrets: SecretAllowList,
}

/// Message of the refusal a remote caller gets when no admin credential is configured. It names
/// the settings that would allow remote configuration.
pub const REMOTE_CONFIGURE_REFUSED: &str = "POST /configure is only accepted from this machine (loopback) because no admin token is set: \
     set --admin-token-file, INFERSCALE_ADMIN_TOKEN_FILE or INFERSCALE_ADMIN_TOKEN (or server.admin_token in the config file) \
     to configure this worker remotely";

impl Access {
    pub fn check_client(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(keys) = &self.api_keys else {
            return Ok(());
        };
        let token = bearer(headers).ok_or(ApiError::Unauthorized(
            "Missing API key: send it as 'Authorization: Bearer <key>'.",
        ))?;
        let keys = keys.get();
        if keys
            .lines()
            .map(str::trim)
            .any(|k| !k.is_empty() && constant_time_eq(k.as_bytes(), token.as_bytes()))
        {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("Incorrect API key provided."))
        }
    }

    /// Admits a `/configure` call from `peer` (None when the connection's address is unknown,
    /// which is treated as remote).
    pub fn check_admin(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<(), ApiError> {
        if !self.allow_configure {
            return Err(ApiError::Forbidden(
                "POST /configure is disabled: this worker's configuration comes from its config file".into(),
            ));
        }
        let Some(admin) = &self.admin_token else {
            return if peer.is_some_and(|p| is_loopback_peer(p.ip())) {
                Ok(())
            } else {
                Err(ApiError::Forbidden(REMOTE_CONFIGURE_REFUSED.into()))
            };
        };
        let expected = admin.get();
        match bearer(headers) {
            // An empty token (e.g. a token file truncated while being rewritten) admits nobody.
            Some(t)
                if !expected.is_empty() && constant_time_eq(expected.as_bytes(), t.as_bytes()) =>
            {
                Ok(())
            }
            Some(_) => Err(ApiError::Unauthorized("Incorrect admin token provided.")),
            None => Err(ApiError::Unauthorized(
                "Missing admin token: send it as 'Authorization: Bearer <token>'.",
            )),
        }
    }
}

/// Whether a peer address is this machine. IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`, what a
/// dual-stack listener reports for IPv4 clients) count by their IPv4 address.
pub fn is_loopback_peer(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The TCP peer of the request, when the server recorded it (`into_make_service_with_connect_info`).
pub struct PeerAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // The extractor also honours `MockConnectInfo`, which in-process tests use to act as a
        // remote client.
        Ok(PeerAddr(
            ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
                .await
                .ok()
                .map(|ConnectInfo(addr)| addr),
        ))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Comparison whose duration does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretValue;

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn open() -> Access {
        Access {
            allow_configure: true,
            ..Access::default()
        }
    }

    fn auth(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn loopback_addresses_are_recognised() {
        for ip in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback_peer(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.5",
            "192.168.1.2",
            "0.0.0.0",
            "::",
            "fe80::1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_loopback_peer(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn without_admin_token_only_loopback_may_configure() {
        let a = open();
        assert!(
            a.check_admin(&HeaderMap::new(), peer("127.0.0.1:5000"))
                .is_ok()
        );
        assert!(a.check_admin(&HeaderMap::new(), peer("[::1]:5000")).is_ok());
        for remote in [peer("10.1.2.3:5000"), peer("[2001:db8::1]:443"), None] {
            match a.check_admin(&HeaderMap::new(), remote) {
                Err(ApiError::Forbidden(m)) => {
                    assert!(
                        m.contains("--admin-token-file") && m.contains("INFERSCALE_ADMIN_TOKEN"),
                        "{m}"
                    )
                }
                other => panic!("{remote:?}: expected 403, got {other:?}"),
            }
        }
    }

    #[test]
    fn admin_token_is_required_from_every_peer() {
        let a = Access {
            admin_token: Some(LiveSecret::new(SecretValue::Inline("adm".into())).unwrap()),
            ..open()
        };
        for p in [peer("127.0.0.1:1"), peer("10.1.2.3:5000")] {
            assert!(matches!(
                a.check_admin(&HeaderMap::new(), p),
                Err(ApiError::Unauthorized(_))
            ));
            assert!(matches!(
                a.check_admin(&auth("nope"), p),
                Err(ApiError::Unauthorized(_))
            ));
            assert!(a.check_admin(&auth("adm"), p).is_ok());
        }
    }

    #[test]
    fn an_empty_admin_token_admits_nobody() {
        let a = Access {
            admin_token: Some(LiveSecret::new(SecretValue::Inline(String::new())).unwrap()),
            ..open()
        };
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert!(a.check_admin(&h, peer("127.0.0.1:1")).is_err());
    }

    #[test]
    fn disabled_configure_is_forbidden_even_locally() {
        let a = Access::default();
        assert!(matches!(
            a.check_admin(&HeaderMap::new(), peer("127.0.0.1:1")),
            Err(ApiError::Forbidden(_))
        ));
    }
}

/// The whole `/configure` path over real HTTP, with the peer address a remote client would have.
/// (Tests can only connect from 127.0.0.1, so the peer is injected with `MockConnectInfo`.)
#[cfg(test)]
mod http_tests {
    use axum::extract::connect_info::MockConnectInfo;
    use clap::Parser;

    use crate::server::Cli;

    async fn post_configure_as(peer: &str) -> (u16, serde_json::Value) {
        let startup = Cli::parse_from(["inferscale-worker"]).startup().unwrap();
        let app = super::super::router(startup.state).layer(MockConnectInfo(
            peer.parse::<std::net::SocketAddr>().unwrap(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/configure", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let response = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(r#"{"model": "gpt-4o-mini", "endpoint": "http://127.0.0.1:9/v1"}"#)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        server.abort();
        (status, body)
    }

    #[tokio::test]
    async fn remote_peer_gets_403_envelope_naming_the_setting() {
        let (status, body) = post_configure_as("203.0.113.7:40000").await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["type"], "permission_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("--admin-token-file"), "{message}");
    }

    #[tokio::test]
    async fn loopback_peer_may_configure() {
        let (status, body) = post_configure_as("127.0.0.1:40000").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "success");
    }
}
