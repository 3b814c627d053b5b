//! Apply: server-side apply of every desired child under one field manager, deletion of children
//! the spec no longer asks for, and an Event for each change.
//!
//! The operator's watches keep a cache of its children. An apply is skipped when the cached child
//! already carries the desired spec hash *and* nobody changed it since the operator's last apply
//! (same generation, or resourceVersion for kinds without one): a reconcile triggered by a status
//! change then costs no API calls, while drift (`kubectl edit`, `kubectl scale deploy`) is still
//! reverted on the next reconcile.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::build::{Children, FIELD_MANAGER, Names, service_monitor, vllm};
use crate::controller::Context;
use crate::crd::ScalingEndpoint;
use crate::error::{Error, Result, is_not_found};
use crate::status::{ServiceMonitorState, types};
use crate::validate::{Problem, reason};
use crate::vllm_key::{self, KeyState};
use crate::{apply_failure, config_rollout};

/// Annotation on each child: sha256 of the object the operator applied.
pub const SPEC_HASH_ANNOTATION: &str = "inferscale.dev/spec-hash";
/// How long the answer to "are the ServiceMonitor CRDs installed?" is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);

/// What the operator last applied to one child: the spec hash and the child's version right after.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppliedVersion {
    hash: String,
    version: String,
}

type ChildKey = (&'static str, String, String);

/// Memory of the operator's own applies (see the module docs).
#[derive(Default)]
pub struct ApplyMemory {
    applied: Mutex<HashMap<ChildKey, AppliedVersion>>,
    monitoring_crd: Mutex<Option<(Instant, bool)>>,
}

impl ApplyMemory {
    fn get(&self, key: &ChildKey) -> Option<AppliedVersion> {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn set(&self, key: ChildKey, v: Option<AppliedVersion>) {
        let mut map = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        match v {
            Some(v) => map.insert(key, v),
            None => map.remove(&key),
        };
    }

    /// Drops what is remembered about children that no longer exist (their endpoint was deleted
    /// and the garbage collector removed them), so the memory stays bounded.
    pub fn prune(&self, stores: &Stores) {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(kind, ns, name), _| stores.contains(kind, ns, name));
    }
}

/// The children's caches, filled by the operator's watches.
#[derive(Clone)]
pub struct Stores {
    pub config_maps: Store<k8s_openapi::api::core::v1::ConfigMap>,
    pub deployments: Store<Deployment>,
    pub services: Store<k8s_openapi::api::core::v1::Service>,
    pub hpas: Store<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>,
    pub pdbs: Store<k8s_openapi::api::policy::v1::PodDisruptionBudget>,
}

impl Stores {
    /// Waits until every cache holds its initial list, so "not in the cache" means "does not exist".
    pub async fn wait_ready(&self) -> Result<()> {
        let err = |what| move |_| Error::CacheNotReady(what);
        self.config_maps
            .wait_until_ready()
            .await
            .map_err(err("ConfigMap"))?;
        self.deployments
            .wait_until_ready()
            .await
            .map_err(err("Deployment"))?;
        self.services
            .wait_until_ready()
            .await
            .map_err(err("Service"))?;
        self.hpas
            .wait_until_ready()
            .await
            .map_err(err("HorizontalPodAutoscaler"))?;
        self.pdbs
            .wait_until_ready()
            .await
            .map_err(err("PodDisruptionBudget"))?;
        Ok(())
    }

    fn contains(&self, kind: &str, ns: &str, name: &str) -> bool {
        match kind {
            "ConfigMap" => self
                .config_maps
                .get(&ObjectRef::new(name).within(ns))
                .is_some(),
            "Deployment" => self
                .deployments
                .get(&ObjectRef::new(name).within(ns))
                .is_some(),
            "Service" => self
                .services
                .get(&ObjectRef::new(name).within(ns))
                .is_some(),
            "HorizontalPodAutoscaler" => self.hpas.get(&ObjectRef::new(name).within(ns)).is_some(),
            "PodDisruptionBudget" => self.pdbs.get(&ObjectRef::new(name).within(ns)).is_some(),
            _ => false,
        }
    }

    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Deployment> {
        self.deployments
            .get(&ObjectRef::new(name).within(namespace))
            .map(|d| (*d).clone())
    }
}

/// What was applied.
#[derive(Debug)]
pub struct Applied {
    pub worker: Deployment,
    pub vllm: Option<Deployment>,
    pub service_monitor: ServiceMonitorState,
}

fn controlled_by<K: Resource>(child: &K, se: &ScalingEndpoint) -> bool {
    let uid = se.metadata.uid.as_deref();
    child
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

fn version<K: Resource>(obj: &K) -> String {
    match (obj.meta().generation, &obj.meta().resource_version) {
        (Some(g), _) => format!("g{g}"),
        (None, Some(rv)) => format!("rv{rv}"),
        (None, None) => String::new(),
    }
}

fn spec_hash<K: Serialize>(obj: &K, kind: &'static str, name: &str) -> Result<String> {
    let bytes = serde_json::to_vec(obj).map_err(|source| Error::Serialize {
        kind,
        name: name.to_owned(),
        source,
    })?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Applies one child with server-side apply, unless it is already as desired.
async fn apply_child<K>(
    ctx: &Context,
    se: &ScalingEndpoint,
    store: &Store<K>,
    mut obj: K,
) -> Result<Result<K, Problem>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let kind: &'static str = match K::kind(&()) {
        std::borrow::Cow::Borrowed(k) => k,
        std::borrow::Cow::Owned(_) => "object",
    };
    let name = obj.name_any();
    let ns = obj
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let hash = spec_hash(&obj, kind, &name)?;
    obj.annotations_mut()
        .insert(SPEC_HASH_ANNOTATION.to_owned(), hash.clone());

    let existing = store.get(&ObjectRef::new(&name).within(&ns));
    if let Some(e) = &existing
        && !controlled_by(e.as_ref(), se)
    {
        return Ok(Err(Problem {
            reason: reason::CHILD_CONFLICT,
            message: format!(
                "{kind} {name:?} already exists and is not controlled by this ScalingEndpoint"
            ),
        }));
    }
    let key: ChildKey = (kind, ns.clone(), name.clone());
    let remembered = ctx.memory.get(&key);
    if let Some(e) = &existing {
        let current = AppliedVersion {
            hash: hash.clone(),
            version: version(e.as_ref()),
        };
        let cached_hash = e.annotations().get(SPEC_HASH_ANNOTATION);
        if cached_hash == Some(&hash) && remembered.as_ref() == Some(&current) {
            return Ok(Ok(e.as_ref().clone()));
        }
    }

    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = match api.patch(&name, &params, &Patch::Apply(&obj)).await {
        Ok(applied) => applied,
        Err(e) => return apply_failure::into_problem(kind, &name, e).map(Err),
    };
    ctx.memory.set(
        key,
        Some(AppliedVersion {
            hash: hash.clone(),
            version: version(&applied),
        }),
    );

    let cached_hash = existing
        .as_ref()
        .and_then(|e| e.annotations().get(SPEC_HASH_ANNOTATION).cloned());
    if existing.is_none() {
        ctx.event(
            se,
            EventType::Normal,
            "Created",
            format!("{kind} {name} created"),
        )
        .await;
    } else if cached_hash.as_ref() != Some(&hash)
        && remembered.as_ref().map(|r| &r.hash) != Some(&hash)
    {
        ctx.event(
            se,
            EventType::Normal,
            "Updated",
            format!("{kind} {name} updated"),
        )
        .await;
    } else {
        tracing::debug!(%kind, %name, "re-applied (cache behind, or changed outside the operator)");
    }
    Ok(Ok(applied))
}

/// Deletes a child the spec no longer asks for, if it exists and is this endpoint's.
async fn delete_child<K>(
    ctx: &Context,
    se: &ScalingEndpoint,
    store: &Store<K>,
    ns: &str,
    name: &str,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let Some(existing) = store.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(());
    };
    if !controlled_by(existing.as_ref(), se) {
        return Ok(());
    }
    let kind = K::kind(&()).into_owned();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    // The precondition makes sure a same-named object created meanwhile is not deleted.
    let dp = DeleteParams {
        preconditions: existing.uid().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_conflict() => return Ok(()),
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    ctx.event(
        se,
        EventType::Normal,
        "Deleted",
        format!("{kind} {name} deleted (no longer in the spec)"),
    )
    .await;
    Ok(())
}

/// Whether the monitoring.coreos.com/v1 ServiceMonitor kind is served, cached briefly.
async fn service_monitors_served(ctx: &Context) -> Result<bool> {
    {
        let cached = ctx
            .memory
            .monitoring_crd
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((at, served)) = *cached
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(served);
        }
    }
    let served = match ctx
        .client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == "servicemonitors"),
        Err(e) if is_not_found(&e) => false,
        Err(e) => return Err(e.into()),
    };
    *ctx.memory
        .monitoring_crd
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), served));
    Ok(served)
}

async fn apply_service_monitor(
    ctx: &Context,
    se: &ScalingEndpoint,
    names: &Names,
    desired: Option<DynamicObject>,
) -> Result<ServiceMonitorState> {
    let ar = service_monitor::api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &names.namespace, &ar);
    match desired {
        Some(sm) => {
            if !service_monitors_served(ctx).await? {
                return Ok(ServiceMonitorState::CrdMissing);
            }
            api.patch(
                &names.worker(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&sm),
            )
            .await?;
            Ok(ServiceMonitorState::Applied)
        }
        None => {
            // Only look for one to delete when the last status says it was asked for: this
            // avoids a request per reconcile for a feature most endpoints never use.
            let had_one = se.condition(types::SERVICE_MONITOR_READY).is_some();
            if had_one
                && service_monitors_served(ctx).await?
                && let Some(existing) = api.get_opt(&names.worker()).await?
                && controlled_by(&existing, se)
            {
                match api
                    .delete(&names.worker(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => {
                        let note = format!(
                            "ServiceMonitor {} deleted (no longer in the spec)",
                            names.worker()
                        );
                        ctx.event(se, EventType::Normal, "Deleted", note).await
                    }
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(ServiceMonitorState::NotRequested)
        }
    }
}

macro_rules! try_apply {
    ($e:expr) => {
        match $e.await? {
            Ok(obj) => obj,
            Err(problem) => return Ok(Err(problem)),
        }
    };
}

/// Applies every desired child and deletes the ones no longer desired.
pub async fn apply(
    ctx: &Context,
    se: &ScalingEndpoint,
    names: &Names,
    children: Children,
) -> Result<Result<Applied, Problem>> {
    let s = &ctx.stores;
    let ns = names.namespace.as_str();
    // The ConfigMap first: new pods must never start with an old or missing config.
    try_apply!(apply_child(ctx, se, &s.config_maps, children.config_map));
    try_apply!(apply_child(ctx, se, &s.services, children.worker_service));
    let vllm = match (children.vllm_deployment, children.vllm_service) {
        (Some(d), Some(svc)) => {
            // The key first: vLLM and the workers both mount it.
            if try_apply!(vllm_key::ensure(&ctx.client, se, names)) == KeyState::Created {
                let note = format!("Secret {} created", vllm::key_secret_name(names));
                ctx.event(se, EventType::Normal, "Created", note).await;
            }
            try_apply!(apply_child(ctx, se, &s.services, svc));
            Some(try_apply!(apply_child(ctx, se, &s.deployments, d)))
        }
        _ => {
            delete_child(ctx, se, &s.deployments, ns, &names.vllm()).await?;
            delete_child(ctx, se, &s.services, ns, &names.vllm()).await?;
            None
        }
    };
    let worker = try_apply!(apply_child(
        ctx,
        se,
        &s.deployments,
        children.worker_deployment
    ));
    for name in config_rollout::prune(&ctx.client, &s.config_maps, se, names, &worker).await? {
        let note = format!("ConfigMap {name} deleted (no worker pod uses it any more)");
        ctx.event(se, EventType::Normal, "Deleted", note).await;
    }
    match children.worker_hpa {
        Some(h) => {
            try_apply!(apply_child(ctx, se, &s.hpas, h));
        }
        None => delete_child(ctx, se, &s.hpas, ns, &names.worker()).await?,
    }
    match children.worker_pdb {
        Some(p) => {
            try_apply!(apply_child(ctx, se, &s.pdbs, p));
        }
        None => delete_child(ctx, se, &s.pdbs, ns, &names.worker()).await?,
    }
    match children.vllm_pdb {
        Some(p) => {
            try_apply!(apply_child(ctx, se, &s.pdbs, p));
        }
        None => delete_child(ctx, se, &s.pdbs, ns, &names.vllm()).await?,
    }
    let service_monitor = apply_service_monitor(ctx, se, names, children.service_monitor).await?;
    Ok(Ok(Applied {
        worker,
        vllm,
        service_monitor,
    }))
}
