//! Process setup: settings from flags, environment and the config file; logging; the listener.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use std::net::SocketAddr;

use arc_swap::ArcSwapOption;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::api::admission::Admission;
use crate::api::{self, Access, AppState, DEFAULT_MAX_BODY_BYTES};
use crate::config::{
    DEFAULT_PORT, LiveSecret, LogFormat, SecretAllowList, SecretValue, WorkerConfig,
};
use crate::metrics::Metrics;
use crate::runtime::{Env, Runtime};

/// Command-line flags. Each has an environment variable; a flag beats the variable, which beats
/// the config file's `server` block, which beats the default.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "inferscale-worker",
    version,
    about = "OpenAI-compatible inference-time-scaling worker"
)]
pub struct Cli {
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long, env = "INFERSCALE_HOST")]
    pub host: Option<String>,
    /// Port to listen on [default: 8108]
    #[arg(long, env = "INFERSCALE_PORT")]
    pub port: Option<u16>,
    /// Configuration file (YAML or JSON): the `/configure` fields plus a `server` block.
    #[arg(long, env = "INFERSCALE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format [default: text]
    #[arg(long, value_enum, env = "INFERSCALE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `inferscale_worker=debug` [default: info]
    #[arg(long, env = "INFERSCALE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Disable `POST /configure` (the default when --config is given).
    #[arg(long, conflicts_with = "allow_configure")]
    pub no_configure: bool,
    /// Serve `POST /configure` even though --config is given.
    #[arg(long)]
    pub allow_configure: bool,
    /// File holding the admin token `POST /configure` requires (`Authorization: Bearer <token>`),
    /// re-read when it changes. Without any admin token, `/configure` is served to loopback
    /// peers only. The token itself can also be given in INFERSCALE_ADMIN_TOKEN.
    #[arg(long, env = "INFERSCALE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A directory whose files a `/configure` body may name as `{"file": …}` secrets
    /// (repeatable; the environment variable takes a comma-separated list) [default: none]
    #[arg(
        long = "configure-secret-dir",
        env = "INFERSCALE_CONFIGURE_SECRET_DIRS",
        value_delimiter = ','
    )]
    pub configure_secret_dirs: Vec<PathBuf>,
    /// An environment variable a `/configure` body may name as an `{"env": …}` secret
    /// (repeatable; the environment variable takes a comma-separated list) [default: none]
    #[arg(
        long = "configure-secret-env",
        env = "INFERSCALE_CONFIGURE_SECRET_ENVS",
        value_delimiter = ','
    )]
    pub configure_secret_envs: Vec<String>,
}

/// Environment variable holding the admin token itself (rather than a file with it).
pub const ADMIN_TOKEN_ENV: &str = "INFERSCALE_ADMIN_TOKEN";

/// Everything needed to start serving.
pub struct Startup {
    pub host: String,
    pub port: u16,
    pub log_format: LogFormat,
    pub log_level: String,
    pub state: Arc<AppState>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot read config file {path}: {reason}")]
    ReadConfig { path: String, reason: String },
    #[error("config file {path}: {reason}")]
    BadConfig { path: String, reason: String },
}

impl Cli {
    /// Resolves settings and builds the initial state (configured when a config file is given).
    pub fn startup(self) -> Result<Startup, StartupError> {
        let path_str = self
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let file: Option<WorkerConfig> = match &self.config {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| StartupError::ReadConfig {
                    path: path_str.clone(),
                    reason: e.to_string(),
                })?;
                Some(
                    WorkerConfig::from_file_text(&text).map_err(|e| StartupError::BadConfig {
                        path: path_str.clone(),
                        reason: e.to_string(),
                    })?,
                )
            }
        };
        let server = file
            .as_ref()
            .and_then(|f| f.server.clone())
            .unwrap_or_default();
        let bad = |reason: String| StartupError::BadConfig {
            path: path_str.clone(),
            reason,
        };
        let secret =
            |v: Option<SecretValue>, what: &str| -> Result<Option<LiveSecret>, StartupError> {
                v.map(LiveSecret::new)
                    .transpose()
                    .map_err(|e| bad(format!("{what}: {e}")))
            };
        let allow_configure = if self.no_configure {
            false
        } else {
            self.allow_configure || server.allow_configure.unwrap_or(file.is_none())
        };
        let (admin_source, admin_what) = self.admin_token_source(server.admin_token.clone());
        let admin_token = secret(admin_source, admin_what)?;
        if admin_token.as_ref().is_some_and(|t| t.get().is_empty()) {
            return Err(bad(format!("{admin_what} is empty")));
        }
        let configure_secrets =
            SecretAllowList::new(&self.configure_secret_dirs, &self.configure_secret_envs)
                .map_err(|e| bad(format!("--configure-secret-dir: {e}")))?;
        let access = Access {
            api_keys: secret(
                server
                    .api_keys_file
                    .clone()
                    .map(|file| SecretValue::File { file }),
                "server.api_keys_file",
            )?,
            allow_configure,
            admin_token,
            configure_secrets,
        };
        let metrics = Arc::new(Metrics::new());
        let env = Env::from_process();
        let runtime = match &file {
            Some(cfg) => Some(Arc::new(
                Runtime::build(cfg, &metrics, &env).map_err(|e| bad(e.to_string()))?,
            )),
            None => None,
        };
        let limits = server.limits().map_err(|e| bad(e.to_string()))?;
        let state = Arc::new(AppState {
            runtime: ArcSwapOption::new(runtime),
            admission: Arc::new(Admission::with_metrics(
                limits.max_in_flight_requests,
                limits.max_in_flight_per_client,
                &metrics,
            )),
            metrics,
            access,
            env,
            max_body_bytes: server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            limits,
        });
        Ok(Startup {
            host: self
                .host
                .or(server.host)
                .unwrap_or_else(|| "127.0.0.1".to_owned()),
            port: self.port.or(server.port).unwrap_or(DEFAULT_PORT),
            log_format: self.log_format.or(server.log_format).unwrap_or_default(),
            log_level: self
                .log_level
                .or(server.log_level)
                .unwrap_or_else(|| "info".to_owned()),
            state,
        })
    }
}

impl Cli {
    /// Where the admin token comes from, and the setting's name for error messages. The first
    /// given wins: --admin-token-file (or INFERSCALE_ADMIN_TOKEN_FILE), INFERSCALE_ADMIN_TOKEN,
    /// the config file's `server.admin_token`.
    fn admin_token_source(
        &self,
        from_file_config: Option<SecretValue>,
    ) -> (Option<SecretValue>, &'static str) {
        if let Some(file) = &self.admin_token_file {
            return (
                Some(SecretValue::File { file: file.clone() }),
                "--admin-token-file",
            );
        }
        if std::env::var_os(ADMIN_TOKEN_ENV).is_some() {
            return (
                Some(SecretValue::Env {
                    env: ADMIN_TOKEN_ENV.to_owned(),
                }),
                ADMIN_TOKEN_ENV,
            );
        }
        (from_file_config, "server.admin_token")
    }
}

/// Installs the global tracing subscriber: the setup shared with the operator
/// ([`crate::logging::init`]), so both write the same JSON shape.
pub fn init_logging(format: LogFormat, level: &str) {
    crate::logging::init(format, level);
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
///
/// The accept loop is the worker's own (not `axum::serve`) for two bounds axum does not expose:
/// at most `server.max_connections` open connections (further ones wait in the kernel's listen
/// backlog until one closes) and `server.header_read_timeout_secs` for a request's headers.
/// Each request carries the peer address as axum's `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits;
    let metrics = state.metrics.clone();
    let app = api::router(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let http = Arc::new(http);
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    // Every connection task holds a receiver; the sender learns through `closed()` that all
    // connections have drained.
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = connection_slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        // The semaphore is never closed, so this only guards against a future change.
        let Ok(slot) = slot else { break };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    back_off_after_accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses and SSE frames must not wait for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let open = OpenConnection::new(slot, &metrics);
        let service = connection_service(app.clone(), peer);
        let http = http.clone();
        let mut drain = drain_rx.clone();
        tokio::spawn(async move {
            let _open = open;
            let conn = http.serve_connection(TokioIo::new(tcp), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => log_connection_end(result),
                _ = drain.changed() => {
                    conn.as_mut().graceful_shutdown();
                    log_connection_end(conn.await);
                }
            }
        });
    }
    drop(listener);
    drop(drain_rx);
    let _ = drain_tx.send(true);
    drain_tx.closed().await;
    Ok(())
}

/// The router as a hyper service for one connection, tagging each request with its peer.
fn connection_service(
    app: axum::Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        // A Router is always ready, so calling it without `poll_ready` is allowed.
        tower_service::Service::call(&mut app.clone(), request.map(axum::body::Body::new))
    })
}

/// Holds one of the `max_connections` slots while a connection is open.
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit, metrics: &Metrics) -> Self {
        metrics.connections_open.inc();
        Self {
            _slot: slot,
            gauge: metrics.connections_open.clone(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // Header timeouts, resets and malformed requests: the client's doing, not an incident.
        tracing::debug!(error = %e, "connection closed with an error");
    }
}

/// Per-connection errors (the peer gave up before accept) are retried at once; others, such as
/// running out of file descriptors, wait a little so the loop does not spin.
async fn back_off_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
