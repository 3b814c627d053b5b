//! The ScalingEndpoint controller: watches, the reconcile pipeline
//! (dereference → validate → build → apply → status), the error policy and Events.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::apply::{Applier, Stores, controlled_by};
use crate::build::{
    self, Component, FIELD_MANAGER, LABEL_MANAGED_BY, MANAGED_BY, OperatorDefaults,
};
use crate::crd::ScalingEndpoint;
use crate::dereference::{fetch_secrets, references_secret, secret_uses};
use crate::error::{Error, Result};
use crate::layout::Names;
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::status::{self, Observed, ServiceMonitorState, types};
use crate::validate::validate;
use crate::workload_health;

/// How often a healthy endpoint is reconciled without any trigger (drift safety net).
const RESYNC: Duration = Duration::from_secs(15 * 60);
/// Requeue of an endpoint that is valid but not Ready yet, in case a status change is missed.
const NOT_READY_RECHECK: Duration = Duration::from_secs(60);
const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Settings of the controller from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Watch these namespaces, or all when empty.
    pub namespaces: Vec<String>,
    pub defaults: OperatorDefaults,
    /// Most endpoints reconciled at once.
    pub concurrency: u16,
    /// Name of this replica in Events.
    pub instance: Option<String>,
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub defaults: OperatorDefaults,
    /// Writes the children and publishes Events; owns the children's caches.
    pub applier: Applier,
    /// Set once every child cache holds its initial list. Reconciles wait on this cell rather than
    /// on the stores directly: kube-runtime's `Store::wait_until_ready` keeps only the most recent
    /// waiter's waker, so concurrent first reconciles could otherwise sleep forever.
    stores_ready: tokio::sync::OnceCell<()>,
    /// Consecutive failures per endpoint, for exponential backoff (kube-runtime has none for
    /// reconcile errors).
    failures: Mutex<HashMap<ObjectRef<ScalingEndpoint>, u32>>,
}

impl Context {
    /// Publishes an Event on the endpoint. A failure to publish is logged, never fatal: Events are
    /// best effort by design.
    pub async fn event(&self, se: &ScalingEndpoint, type_: EventType, reason: &str, note: String) {
        self.applier.event(se, type_, reason, note).await;
    }

    /// The children's caches.
    pub fn stores(&self) -> &Stores {
        &self.applier.stores
    }

    /// The next retry delay of an endpoint: 2s, 4s, 8s … up to 5 minutes.
    fn backoff(&self, key: &ObjectRef<ScalingEndpoint>) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
        BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
    }

    fn reset_backoff(&self, key: &ObjectRef<ScalingEndpoint>) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// One reconcile of one endpoint.
pub async fn reconcile(se: Arc<ScalingEndpoint>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile();
    ctx.stores_ready
        .get_or_try_init(|| ctx.stores().wait_ready())
        .await?;
    let names = Names::of(&se)?;
    let key = ObjectRef::from_obj(se.as_ref());
    if se.metadata.deletion_timestamp.is_some() {
        // The garbage collector is deleting the children (in the foreground, the endpoint waits
        // for them): re-creating them now would keep the endpoint from ever going away.
        debug!(endpoint = %key, "being deleted; leaving its children to the garbage collector");
        return Ok(Action::await_change());
    }

    // Dereference → validate → build → apply.
    let secrets = fetch_secrets(&ctx.client, &names.namespace, &secret_uses(&se.spec)).await?;
    let mut problem: Option<Problem> = None;
    let mut config_hash = None;
    let mut applied = None;
    match validate(&se, &secrets)? {
        Ok(resolved) => {
            let children = build::build(&se, &resolved, &ctx.defaults)?;
            match ctx.applier.apply(&se, &names, children).await? {
                Ok(a) => {
                    config_hash = Some(resolved.config_hash);
                    applied = Some(a);
                }
                Err(p) => problem = Some(p),
            }
        }
        Err(p) => problem = Some(p),
    }

    // Status, from what exists: the applied objects, or the cached ones when nothing was applied
    // (only this endpoint's: a same-named Deployment of someone else is not its workers).
    let own_deployment = |name: String| {
        ctx.stores()
            .deployment(&names.namespace, &name)
            .filter(|d| controlled_by(d, &se))
    };
    let (worker, vllm, reward, service_monitor) = match applied {
        Some(a) => (Some(a.worker), a.vllm, a.reward, a.service_monitor),
        None => (
            own_deployment(names.worker()),
            own_deployment(names.vllm()),
            own_deployment(names.prm()),
            ServiceMonitorState::NotRequested,
        ),
    };
    let worker_pods =
        workload_health::pods_to_diagnose(&ctx.client, &names, Component::Worker, worker.as_ref())
            .await;
    let vllm_pods = workload_health::pods_to_diagnose(
        &ctx.client,
        &names,
        Component::ModelServer,
        vllm.as_ref(),
    )
    .await;
    let reward_pods = workload_health::pods_to_diagnose(
        &ctx.client,
        &names,
        Component::RewardModel,
        reward.as_ref(),
    )
    .await;
    let observed = Observed {
        problem: problem.as_ref(),
        config_hash,
        worker: worker.as_ref(),
        vllm: vllm.as_ref(),
        worker_pods: &worker_pods,
        vllm_pods: &vllm_pods,
        reward: reward.as_ref(),
        reward_pods: &reward_pods,
        service_monitor,
    };
    let status = status::compute(&se, &names, &observed, &Time(Timestamp::now()));
    if se.status.as_ref() != Some(&status) {
        patch_status(&ctx.client, &names, &status).await?;
        ready_transition_event(&ctx, &se, &status, problem.is_some()).await;
    }

    if let Some(p) = problem {
        ctx.metrics.failure(p.reason);
        warn!(endpoint = %key, reason = p.reason, message = %p.message, "spec cannot be reconciled");
        ctx.event(&se, EventType::Warning, p.reason, p.message)
            .await;
        // The Secret watch retries at once when the Secret appears; the backoff covers the rest.
        return Ok(Action::requeue(ctx.backoff(&key)));
    }
    ctx.reset_backoff(&key);
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == types::READY && c.status == "True");
    Ok(Action::requeue(if ready {
        RESYNC
    } else {
        NOT_READY_RECHECK
    }))
}

/// Writes the status with server-side apply: fields the operator stops setting are removed.
async fn patch_status(
    client: &Client,
    names: &Names,
    status: &crate::crd::ScalingEndpointStatus,
) -> Result<()> {
    let api: Api<ScalingEndpoint> = Api::namespaced(client.clone(), &names.namespace);
    let patch = serde_json::json!({
        "apiVersion": ScalingEndpoint::api_version(&()),
        "kind": ScalingEndpoint::kind(&()),
        "status": status,
    });
    api.patch_status(
        &names.endpoint,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// An Event when the endpoint becomes Ready, and a Warning when a Ready endpoint stops being so.
/// Invalid specs have their own Warning Event; a new endpoint that is still starting gets none.
async fn ready_transition_event(
    ctx: &Context,
    se: &ScalingEndpoint,
    status: &crate::crd::ScalingEndpointStatus,
    has_problem: bool,
) {
    let Some(new) = status.conditions.iter().find(|c| c.type_ == types::READY) else {
        return;
    };
    let was_ready = se
        .condition(types::READY)
        .is_some_and(|c| c.status == "True");
    let is_ready = new.status == "True";
    if is_ready && !was_ready {
        ctx.event(se, EventType::Normal, &new.reason, new.message.clone())
            .await;
    } else if was_ready && !is_ready && !has_problem {
        ctx.event(se, EventType::Warning, &new.reason, new.message.clone())
            .await;
    }
}

/// Retries a failed reconcile with exponential backoff per endpoint.
pub fn error_policy(se: Arc<ScalingEndpoint>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(err.metric_label());
    let key = ObjectRef::from_obj(se.as_ref());
    let delay = ctx.backoff(&key);
    warn!(endpoint = %key, error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A cache of one kind of child and the stream that fills it and triggers the owner.
fn child_cache<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures_util::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    // Only the operator's own children, and without managedFields: they are most of an object's
    // size and the operator never reads them.
    let wc = watcher::Config::default()
        .labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"))
        .any_semantic();
    let stream = watcher(api, wc)
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// Runs the controller until `shutdown` resolves: one watch over all namespaces, or one
/// controller per watched namespace — with namespaced RBAC there is nothing to watch across them.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    if settings.namespaces.is_empty() {
        return run_in(client, None, &settings, metrics, shutdown).await;
    }
    let shutdown = shutdown.shared();
    let controllers = settings.namespaces.iter().map(|ns| {
        run_in(
            client.clone(),
            Some(ns.as_str()),
            &settings,
            metrics.clone(),
            shutdown.clone(),
        )
    });
    futures_util::future::join_all(controllers).await;
}

/// The controller of one namespace (or of all, with `None`).
async fn run_in(
    client: Client,
    ns: Option<&str>,
    settings: &Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (config_maps, cm_stream) = child_cache(api::<ConfigMap>(&client, ns));
    let (deployments, deploy_stream) = child_cache(api::<Deployment>(&client, ns));
    let (services, svc_stream) = child_cache(api::<Service>(&client, ns));
    let (hpas, hpa_stream) = child_cache(api::<HorizontalPodAutoscaler>(&client, ns));
    let (pdbs, pdb_stream) = child_cache(api::<PodDisruptionBudget>(&client, ns));
    let (pvcs, pvc_stream) = child_cache(api::<PersistentVolumeClaim>(&client, ns));
    let (network_policies, np_stream) = child_cache(api::<NetworkPolicy>(&client, ns));
    let stores = Stores {
        config_maps,
        deployments,
        services,
        hpas,
        pdbs,
        pvcs,
        network_policies,
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "inferscale-operator".to_owned(),
            instance: settings.instance.clone(),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
        defaults: settings.defaults.clone(),
        applier: Applier::new(client.clone(), stores, recorder),
        stores_ready: tokio::sync::OnceCell::new(),
        failures: Mutex::new(HashMap::new()),
    });

    let controller = Controller::new(
        api::<ScalingEndpoint>(&client, ns),
        watcher::Config::default().any_semantic(),
    );
    let endpoints = controller.store();
    // Secrets are watched as metadata only: the operator never caches Secret data, and a change
    // of any referenced Secret reaches exactly the endpoints that reference it.
    let secrets = api::<PartialObjectMeta<Secret>>(&client, ns);
    let mapper = move |secret: PartialObjectMeta<Secret>| {
        let ns = secret.namespace();
        let name = secret.name_any();
        endpoints
            .state()
            .into_iter()
            .filter(|se| se.namespace() == ns && references_secret(&se.spec, &name))
            .map(|se| ObjectRef::from_obj(se.as_ref()))
            .collect::<Vec<_>>()
    };

    // Keep per-object memory bounded: forget children that are gone and the backoff of endpoints
    // that were deleted.
    let prune_ctx = ctx.clone();
    let live_endpoints = controller.store();
    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(300));
        loop {
            tick.tick().await;
            prune_ctx.applier.prune_memory();
            prune_ctx
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|key, _| live_endpoints.get(key).is_some());
        }
    });

    info!(namespace = ns.unwrap_or("<all>"), "controller starting");
    controller
        .owns_stream(cm_stream)
        .owns_stream(deploy_stream)
        .owns_stream(svc_stream)
        .owns_stream(hpa_stream)
        .owns_stream(pdb_stream)
        .owns_stream(pvc_stream)
        .owns_stream(np_stream)
        .watches(secrets, watcher::Config::default().any_semantic(), mapper)
        .watches(
            api::<PartialObjectMeta<Pod>>(&client, ns),
            workload_health::pod_watch_config(),
            workload_health::endpoint_of_pod,
        )
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            match res {
                Ok((obj, _)) => debug!(endpoint = %obj, "reconciled"),
                Err(controller::Error::ReconcilerFailed(err, obj)) => {
                    debug!(endpoint = %obj, error = %err, "reconcile failed")
                }
                Err(e) => warn!(error = %e, "controller event"),
            }
            std::future::ready(())
        })
        .await;
    pruner.abort();
    info!("controller stopped");
}
