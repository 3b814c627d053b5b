//! Admission control: a bound on the chat requests processed at once, globally and per client.
//!
//! A request over a limit is refused at once with 429, `Retry-After` and `x-should-retry: true`
//! (what OpenAI clients back off and retry on) instead of waiting in an unbounded queue, so one
//! greedy client cannot starve the others nor make the worker hold unbounded work.
//!
//! The global count is one atomic; per-client counts live in a sharded map whose shard lock is
//! held only for an increment or a decrement, so admissions of different clients rarely contend.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use prometheus::IntGauge;

use super::AppState;
use super::error::ApiError;

/// How long a shed client is told to wait: in-flight requests finish in seconds, and clients
/// add their own jittered backoff on top.
pub const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Shards of the per-client map: enough that concurrent admissions of different clients rarely
/// share a lock on a many-core machine.
const CLIENT_SHARDS: usize = 32;

/// Whom a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// A keyed hash of the presented API key; the key itself is never stored nor logged.
    ApiKey(u64),
    /// The peer address, when the worker has no client keys.
    Peer(IpAddr),
    /// Neither is known (a router driven without a connection, as in unit tests).
    Unidentified,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    GlobalLimit { limit: u32 },
    ClientLimit { limit: u32 },
}

impl Shed {
    /// The `reason` label of `inferscale_requests_shed_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Shed::GlobalLimit { .. } => "global_limit",
            Shed::ClientLimit { .. } => "client_limit",
        }
    }

    fn message(self) -> String {
        match self {
            Shed::GlobalLimit { limit } => format!(
                "This worker is processing its limit of {limit} concurrent requests \
                 (server.max_in_flight_requests); retry after a short backoff."
            ),
            Shed::ClientLimit { limit } => format!(
                "Too many concurrent requests from this client: the limit is {limit} \
                 (server.max_in_flight_per_client); retry after a short backoff."
            ),
        }
    }

    /// The 429 in the OpenAI error envelope, marked retryable.
    pub fn into_response(self) -> Response {
        let mut resp = ApiError::RateLimited {
            message: self.message(),
            retry_after: Some(SHED_RETRY_AFTER),
        }
        .into_response();
        resp.headers_mut()
            .insert("x-should-retry", HeaderValue::from_static("true"));
        resp
    }
}

/// In-flight counters. Cheap to share: handed out as `Arc<Admission>`.
pub struct Admission {
    max_in_flight: u32,
    max_per_client: u32,
    in_flight: AtomicU32,
    clients: Box<[Mutex<HashMap<ClientId, u32>>]>,
    /// Random per process, so a client's id cannot be precomputed or correlated across restarts.
    hasher: RandomState,
    in_flight_gauge: IntGauge,
    clients_gauge: IntGauge,
}

impl Admission {
    /// Counters with gauges that are not exported (tests, or before metrics exist).
    pub fn new(max_in_flight: u32, max_per_client: u32) -> Self {
        let detached = |name| IntGauge::new(name, "detached").expect("valid metric name");
        Self::with_gauges(
            max_in_flight,
            max_per_client,
            detached("admitted"),
            detached("clients"),
        )
    }

    /// Counters that keep `inferscale_admitted_requests_in_flight` and
    /// `inferscale_clients_in_flight` up to date.
    pub fn with_metrics(
        max_in_flight: u32,
        max_per_client: u32,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        Self::with_gauges(
            max_in_flight,
            max_per_client,
            metrics.admitted_in_flight.clone(),
            metrics.clients_in_flight.clone(),
        )
    }

    fn with_gauges(
        max_in_flight: u32,
        max_per_client: u32,
        in_flight_gauge: IntGauge,
        clients_gauge: IntGauge,
    ) -> Self {
        Self {
            max_in_flight,
            max_per_client,
            in_flight: AtomicU32::new(0),
            clients: (0..CLIENT_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
            in_flight_gauge,
            clients_gauge,
        }
    }

    /// The id of a client presenting `key`.
    pub fn client_for_key(&self, key: &str) -> ClientId {
        ClientId::ApiKey(self.hasher.hash_one(key))
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Admits one request of `client`, or says which limit it is over. The slot is released
    /// when the returned [`Slot`] is dropped.
    pub fn try_admit(self: &Arc<Self>, client: ClientId) -> Result<Slot, Shed> {
        // Global first: a request refused there never touches the client map.
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            })
            .map_err(|_| Shed::GlobalLimit {
                limit: self.max_in_flight,
            })?;
        let first_of_client = {
            let mut shard = self.shard(client);
            let count = shard.entry(client).or_insert(0);
            if *count >= self.max_per_client {
                drop(shard);
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(Shed::ClientLimit {
                    limit: self.max_per_client,
                });
            }
            *count += 1;
            *count == 1
        };
        self.in_flight_gauge.inc();
        if first_of_client {
            self.clients_gauge.inc();
        }
        Ok(Slot {
            admission: Arc::clone(self),
            client,
        })
    }

    fn release(&self, client: ClientId) {
        let last_of_client = {
            let mut shard = self.shard(client);
            match shard.get_mut(&client) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                // Removing the entry at zero keeps the map as small as the set of active clients.
                Some(_) => {
                    shard.remove(&client);
                    true
                }
                None => false,
            }
        };
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.in_flight_gauge.dec();
        if last_of_client {
            self.clients_gauge.dec();
        }
    }

    fn shard(&self, client: ClientId) -> MutexGuard<'_, HashMap<ClientId, u32>> {
        let index = (self.hasher.hash_one(client) % CLIENT_SHARDS as u64) as usize;
        // The critical sections cannot panic, so a poisoned lock still holds consistent counts.
        self.clients[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted request; dropping it frees the slot.
pub struct Slot {
    admission: Arc<Admission>,
    client: ClientId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.client);
    }
}

/// Middleware on the chat routes: admits the request or sheds it with 429. The slot is held
/// until the response body has been sent (a stream's last frame), not just until the handler
/// returns.
pub async fn admit(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let client = identify(&app, &request);
    match app.admission.try_admit(client) {
        Ok(slot) => next.run(request).await.map(|body| {
            Body::new(HoldSlot {
                inner: body,
                slot: Some(slot),
            })
        }),
        Err(shed) => {
            app.metrics
                .requests_shed
                .with_label_values(&[shed.reason()])
                .inc();
            shed.into_response()
        }
    }
}

/// The API key when the worker checks client keys, else the peer address.
fn identify(app: &AppState, request: &Request) -> ClientId {
    if app.access.api_keys.is_some()
        && let Some(key) = presented_key(request.headers())
    {
        return app.admission.client_for_key(key);
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => ClientId::Peer(addr.ip()),
        None => ClientId::Unidentified,
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A response body that holds an admission slot until it ends or is dropped.
struct HoldSlot {
    inner: Body,
    slot: Option<Slot>,
}

impl http_body::Body for HoldSlot {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // Free the slot as soon as the last frame is out, not when the connection is reused.
            self.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8) -> ClientId {
        ClientId::Peer(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn a_client_over_its_limit_is_shed_while_others_are_admitted() {
        let admission = Arc::new(Admission::new(10, 2));
        let a1 = admission.try_admit(peer(1)).unwrap();
        let _a2 = admission.try_admit(peer(1)).unwrap();
        assert_eq!(
            admission.try_admit(peer(1)).err(),
            Some(Shed::ClientLimit { limit: 2 })
        );
        let _b = admission.try_admit(peer(2)).unwrap();
        // The refused attempt gave its global slot back.
        assert_eq!(admission.in_flight(), 3);
        drop(a1);
        assert!(admission.try_admit(peer(1)).is_ok());
    }

    #[test]
    fn the_global_limit_sheds_every_client() {
        let admission = Arc::new(Admission::new(2, 5));
        let _s1 = admission.try_admit(peer(1)).unwrap();
        let s2 = admission.try_admit(peer(2)).unwrap();
        assert_eq!(
            admission.try_admit(peer(3)).err(),
            Some(Shed::GlobalLimit { limit: 2 })
        );
        drop(s2);
        assert!(admission.try_admit(peer(3)).is_ok());
    }

    #[test]
    fn released_clients_leave_the_map_and_gauges_follow() {
        let admission = Arc::new(Admission::new(100, 100));
        let slots: Vec<_> = (0..50)
            .map(|i| admission.try_admit(peer(i % 5)).unwrap())
            .collect();
        assert_eq!(admission.in_flight_gauge.get(), 50);
        assert_eq!(admission.clients_gauge.get(), 5);
        drop(slots);
        assert_eq!(admission.in_flight(), 0);
        assert_eq!(admission.in_flight_gauge.get(), 0);
        assert_eq!(admission.clients_gauge.get(), 0);
        let entries: usize = admission
            .clients
            .iter()
            .map(|s| s.lock().unwrap().len())
            .sum();
        assert_eq!(entries, 0);
    }

    #[test]
    fn keys_are_told_apart_without_being_stored() {
        let admission = Admission::new(1, 1);
        let a = admission.client_for_key("sk-a");
        assert_eq!(a, admission.client_for_key("sk-a"));
        assert_ne!(a, admission.client_for_key("sk-b"));
        assert!(!format!("{a:?}").contains("sk-a"));
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_limits() {
        let admission = Arc::new(Admission::new(8, 3));
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let admission = Arc::clone(&admission);
                let peak = Arc::clone(&peak);
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Ok(slot) = admission.try_admit(peer(t % 3)) {
                            peak.fetch_max(admission.in_flight(), Ordering::AcqRel);
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Acquire) <= 8);
        assert_eq!(admission.in_flight(), 0);
    }

    #[tokio::test]
    async fn shed_response_is_a_retryable_openai_429() {
        let resp = Shed::ClientLimit { limit: 4 }.into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(resp.headers()["x-should-retry"], "true");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_in_flight_per_client")
        );
    }
}
