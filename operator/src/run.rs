//! `inferscale-operator run`: wiring of the process — client, HTTP endpoint, leader election,
//! controller, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, ListParams};
use tokio::sync::watch;
use tracing::{error, info};

use crate::build::{OperatorDefaults, default_worker_image};
use crate::controller::{self, Settings};
use crate::crd::ScalingEndpoint;
use crate::leader::{self, Election, LeaseSettings};
use crate::metrics::Metrics;
use crate::server::{self, Health, Phase};
use crate::telemetry::LogFormat;

/// Options of `inferscale-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Watch only these namespaces: repeat the flag or separate with commas (default: all).
    #[arg(long, env = "WATCH_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else the first --namespace, else
    /// `default`).
    #[arg(long)]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "inferscale-operator")]
    pub lease_name: String,
    /// Run the controller without a Lease (only safe with a single replica).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Worker image for endpoints that do not set `spec.worker.image`.
    #[arg(long, env = "INFERSCALE_WORKER_IMAGE", default_value_t = default_worker_image())]
    pub worker_image: String,
    /// Pull secrets of worker and vLLM pods whose spec sets none (repeat, or separate with
    /// commas).
    #[arg(
        long,
        env = "INFERSCALE_DEFAULT_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    pub default_image_pull_secret: Vec<String>,
    /// RuntimeClass of vLLM pods whose spec sets none, e.g. `nvidia`.
    #[arg(long, env = "INFERSCALE_VLLM_RUNTIME_CLASS")]
    pub vllm_runtime_class: Option<String>,
    /// Most endpoints reconciled at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// Log format.
    #[arg(long, value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no usable Kubernetes configuration (KUBECONFIG or in-cluster): {0}")]
    Client(#[source] kube::Error),
    #[error(
        "the ScalingEndpoint CRD is not installed: kubectl apply --server-side -f crds/scalingendpoints.inferscale.dev.yaml"
    )]
    CrdMissing,
    #[error("cannot list ScalingEndpoints: {0}")]
    Probe(#[source] kube::Error),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("lost the leader Lease; exiting so that this replica restarts as a standby")]
    LostLease,
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Resolves on SIGINT or SIGTERM.
async fn signal() -> Result<(), RunError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.map_err(RunError::Signals)?;
    Ok(())
}

/// Resolves once `rx` turns true (or its sender is gone).
async fn flag(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "operator".to_owned());
    format!("{host}-{}", std::process::id())
}

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    crate::telemetry::init(args.log_format);
    let metrics = Arc::new(Metrics::new()?);
    let health = Arc::new(Health::default());

    // One shutdown flag for every part of the process.
    let (stop_tx, stop_rx) = watch::channel(false);
    let signal_task = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = signal().await {
                error!(error = %e, "signal handling failed");
                return;
            }
            info!("shutdown requested");
            let _ = stop_tx.send(true);
        })
    };

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| RunError::Serve {
            addr: args.metrics_addr,
            source,
        })?;
    let server = tokio::spawn(server::serve_on(
        listener,
        metrics.clone(),
        health.clone(),
        flag(stop_rx.clone()),
    ));

    let result = lead_and_reconcile(&args, metrics.clone(), health.clone(), stop_rx).await;
    health.set(Phase::Stopping);
    let _ = stop_tx.send(true);
    signal_task.abort();
    if let Ok(Err(e)) = server.await {
        error!(error = %e, "HTTP server failed");
    }
    result
}

/// How long in-flight reconciles may take to finish after shutdown was requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Runs the controller until `halt` turns true; in-flight reconciles then get [`SHUTDOWN_GRACE`]
/// to finish, so a reconcile stuck on an unresponsive API server cannot keep the process (and the
/// Lease) alive forever.
async fn run_controller(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    halt: watch::Receiver<bool>,
) {
    let deadline = {
        let halt = halt.clone();
        async move {
            flag(halt).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    tokio::select! {
        _ = controller::run(client, settings, metrics, flag(halt)) => {}
        _ = deadline => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "reconciles still running after the shutdown grace period; stopping without them"
        ),
    }
}

async fn lead_and_reconcile(
    args: &RunArgs,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;

    // Fail fast with the fix when the CRD is missing, instead of a watcher retrying forever.
    let probe: Api<ScalingEndpoint> = match args.namespace.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match probe.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => {}
        Err(e) if crate::error::is_not_found(&e) => return Err(RunError::CrdMissing),
        Err(e) => return Err(RunError::Probe(e)),
    }

    let settings = Settings {
        namespaces: args.namespace.clone(),
        defaults: OperatorDefaults {
            worker_image: args.worker_image.clone(),
            // An empty value (the chart's default env) means none.
            image_pull_secrets: args
                .default_image_pull_secret
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            vllm_runtime_class: args.vllm_runtime_class.clone().filter(|s| !s.is_empty()),
        },
        concurrency: args.concurrency,
        instance: Some(identity()),
    };

    if args.no_leader_election {
        health.set(Phase::Leading);
        metrics.set_leader(true);
        run_controller(client, settings, metrics, stop).await;
        return Ok(());
    }

    let lease = LeaseSettings {
        namespace: args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| args.namespace.first().cloned())
            .unwrap_or_else(|| "default".to_owned()),
        name: args.lease_name.clone(),
        identity: identity(),
    };
    let mut election = Election::start(client.clone(), &lease).await?;
    health.set(Phase::Standby);
    info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "waiting for the leader Lease");
    let mut stop_wait = stop.clone();
    tokio::select! {
        acquired = election.acquired() => {
            if acquired.is_err() {
                election.release().await;
                return Err(RunError::LostLease);
            }
        }
        _ = stop_wait.wait_for(|v| *v) => {
            election.release().await;
            return Ok(());
        }
    }
    info!("leading");
    health.set(Phase::Leading);
    metrics.set_leader(true);

    // The controller stops on shutdown or when the Lease is lost, whichever comes first.
    let (halt_tx, halt_rx) = watch::channel(false);
    let halter = tokio::spawn({
        let leading = election.leading.clone();
        let stop = stop.clone();
        async move {
            let lost = tokio::select! {
                _ = flag(stop) => false,
                _ = leader::lost(leading) => true,
            };
            let _ = halt_tx.send(true);
            lost
        }
    });
    run_controller(client, settings, metrics.clone(), halt_rx.clone()).await;
    // The controller only ends after a halt; should it end on its own, do not wait for one.
    let lost = if *halt_rx.borrow() {
        halter.await.unwrap_or(false) && !*stop.borrow()
    } else {
        halter.abort();
        false
    };
    metrics.set_leader(false);
    election.release().await;
    if lost {
        return Err(RunError::LostLease);
    }
    Ok(())
}
