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
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::build::vllm::VllmRole;
use crate::build::{Children, FIELD_MANAGER, pvc, service_monitor};
use crate::crd::ScalingEndpoint;
use crate::digest;
use crate::error::{Error, Result, is_not_found};
use crate::layout::Names;
use crate::problem::{Problem, reason};
use crate::status::ServiceMonitorState;
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
    pub pvcs: Store<k8s_openapi::api::core::v1::PersistentVolumeClaim>,
    pub network_policies: Store<k8s_openapi::api::networking::v1::NetworkPolicy>,
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
        self.pvcs
            .wait_until_ready()
            .await
            .map_err(err("PersistentVolumeClaim"))?;
        self.network_policies
            .wait_until_ready()
            .await
            .map_err(err("NetworkPolicy"))?;
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
            "PersistentVolumeClaim" => self.pvcs.get(&ObjectRef::new(name).within(ns)).is_some(),
            "NetworkPolicy" => self
                .network_policies
                .get(&ObjectRef::new(name).within(ns))
                .is_some(),
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
    /// The in-cluster process reward model's Deployment (`spec.reward.vllm`).
    pub reward: Option<Deployment>,
    pub service_monitor: ServiceMonitorState,
}

/// Whether `child` carries a controller owner reference to this very endpoint (its uid, not just
/// its name: a deleted and re-created endpoint does not inherit the old one's objects).
pub fn controlled_by<K: Resource>(child: &K, se: &ScalingEndpoint) -> bool {
    let uid = se.metadata.uid.as_deref();
    child
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

fn conflict(kind: &str, name: &str) -> Problem {
    Problem {
        reason: reason::CHILD_CONFLICT,
        message: format!(
            "{kind} {name:?} already exists and is not controlled by this ScalingEndpoint: \
             it is left untouched; rename or delete it, or rename the ScalingEndpoint"
        ),
    }
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
    Ok(digest::sha256_hex_prefix(&bytes, 32))
}

/// The kind of a child type, for messages and the apply memory.
fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(k) => k,
        std::borrow::Cow::Owned(_) => "object",
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

/// Writes an endpoint's children: what the controller's context owns for applying, deleting and
/// reporting. Apply never reaches back into the controller; the controller calls [`Applier::apply`]
/// and [`Applier::event`].
pub struct Applier {
    pub client: Client,
    /// The children's caches, filled by the controller's watches.
    pub stores: Stores,
    memory: ApplyMemory,
    recorder: Recorder,
}

impl Applier {
    pub fn new(client: Client, stores: Stores, recorder: Recorder) -> Self {
        Self {
            client,
            stores,
            memory: ApplyMemory::default(),
            recorder,
        }
    }

    /// Publishes an Event on the endpoint. A failure to publish is logged, never fatal: Events
    /// are best effort by design.
    pub async fn event(&self, se: &ScalingEndpoint, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &se.object_ref(&())).await {
            warn!(error = %e, %reason, "could not publish an Event");
        }
    }

    /// Forgets what was applied to children that no longer exist, so the memory stays bounded.
    pub fn prune_memory(&self) {
        self.memory.prune(&self.stores);
    }

    /// Applies every desired child and deletes the ones no longer desired. A child whose name is
    /// taken by an object this endpoint does not control is a [`Problem`] (`ChildConflict`): that
    /// object is neither changed nor deleted.
    pub async fn apply(
        &self,
        se: &ScalingEndpoint,
        names: &Names,
        children: Children,
    ) -> Result<Result<Applied, Problem>> {
        let s = &self.stores;
        let ns = names.namespace.as_str();
        // The ConfigMap first: new pods must never start with an old or missing config.
        try_apply!(self.apply_child(se, &s.config_maps, children.config_map));
        try_apply!(self.apply_child(se, &s.services, children.worker_service));
        // Policies before the pods they guard.
        for (policy, name) in [
            (children.worker_network_policy, names.worker()),
            (children.vllm_network_policy, names.vllm()),
            (children.reward_network_policy, names.prm()),
        ] {
            match policy {
                Some(p) => {
                    try_apply!(self.apply_child(se, &s.network_policies, p));
                }
                None => {
                    self.delete_child(se, &s.network_policies, ns, &name)
                        .await?
                }
            }
        }
        let vllm = match (children.vllm_deployment, children.vllm_service) {
            (Some(d), Some(svc)) => {
                // The key first: vLLM and the workers both mount it.
                if try_apply!(vllm_key::ensure(
                    &self.client,
                    se,
                    names,
                    VllmRole::Generator
                )) == KeyState::Created
                {
                    let note = format!("Secret {} created", names.vllm_key());
                    self.event(se, EventType::Normal, "Created", note).await;
                }
                try_apply!(self.apply_child(se, &s.services, svc));
                // The cache claim before the pods that mount it.
                match children.vllm_cache_pvc {
                    Some(claim) => {
                        try_apply!(self.apply_child(se, &s.pvcs, claim));
                    }
                    None => {
                        self.delete_child(se, &s.pvcs, ns, &pvc::claim_name(names))
                            .await?
                    }
                }
                Some(try_apply!(self.apply_child(se, &s.deployments, d)))
            }
            _ => {
                self.delete_child(se, &s.pvcs, ns, &pvc::claim_name(names))
                    .await?;
                self.delete_child(se, &s.deployments, ns, &names.vllm())
                    .await?;
                self.delete_child(se, &s.services, ns, &names.vllm())
                    .await?;
                None
            }
        };
        let reward = match children.reward {
            Some(prm) => {
                let role = VllmRole::RewardModel;
                if try_apply!(vllm_key::ensure(&self.client, se, names, role)) == KeyState::Created
                {
                    let note = format!("Secret {} created", names.prm_key());
                    self.event(se, EventType::Normal, "Created", note).await;
                }
                try_apply!(self.apply_child(se, &s.services, prm.service));
                let deployment = try_apply!(self.apply_child(se, &s.deployments, prm.deployment));
                match prm.pdb {
                    Some(p) => {
                        try_apply!(self.apply_child(se, &s.pdbs, p));
                    }
                    None => self.delete_child(se, &s.pdbs, ns, &names.prm()).await?,
                }
                Some(deployment)
            }
            None => {
                self.delete_child(se, &s.deployments, ns, &names.prm())
                    .await?;
                self.delete_child(se, &s.services, ns, &names.prm()).await?;
                self.delete_child(se, &s.pdbs, ns, &names.prm()).await?;
                None
            }
        };
        let worker = try_apply!(self.apply_child(se, &s.deployments, children.worker_deployment));
        for name in config_rollout::prune(&self.client, &s.config_maps, se, names, &worker).await? {
            let note = format!("ConfigMap {name} deleted (no worker pod uses it any more)");
            self.event(se, EventType::Normal, "Deleted", note).await;
        }
        match children.worker_hpa {
            Some(h) => {
                try_apply!(self.apply_child(se, &s.hpas, h));
            }
            None => self.delete_child(se, &s.hpas, ns, &names.worker()).await?,
        }
        match children.worker_pdb {
            Some(p) => {
                try_apply!(self.apply_child(se, &s.pdbs, p));
            }
            None => self.delete_child(se, &s.pdbs, ns, &names.worker()).await?,
        }
        match children.vllm_pdb {
            Some(p) => {
                try_apply!(self.apply_child(se, &s.pdbs, p));
            }
            None => self.delete_child(se, &s.pdbs, ns, &names.vllm()).await?,
        }
        let service_monitor = try_apply!(self.apply_service_monitor(
            se,
            names,
            &names.worker(),
            children.service_monitor
        ));
        // vLLM's monitor: the workers' one alone decides the ServiceMonitorReady condition (both
        // depend on the same CRD), but a conflict on either is a ChildConflict.
        try_apply!(self.apply_service_monitor(
            se,
            names,
            &names.vllm(),
            children.vllm_service_monitor
        ));
        Ok(Ok(Applied {
            worker,
            vllm,
            reward,
            service_monitor,
        }))
    }

    /// The child of that name as it exists now: from the cache, which holds only objects with the
    /// operator's label, or else from the API server, so an unlabelled object of the same name is
    /// seen too. `None` means no such object exists.
    async fn current<K>(&self, store: &Store<K>, ns: &str, name: &str) -> Result<Option<K>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned,
    {
        if let Some(cached) = store.get(&ObjectRef::new(name).within(ns)) {
            return Ok(Some(cached.as_ref().clone()));
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?)
    }

    /// Applies one child with server-side apply, unless it is already as desired; refuses to touch
    /// an object of that name the endpoint does not control.
    async fn apply_child<K>(
        &self,
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
        let kind = kind_of::<K>();
        let name = obj.name_any();
        let ns = obj
            .namespace()
            .ok_or(Error::MissingObjectKey("namespace"))?;
        let hash = spec_hash(&obj, kind, &name)?;
        obj.annotations_mut()
            .insert(SPEC_HASH_ANNOTATION.to_owned(), hash.clone());

        let existing = self.current(store, &ns, &name).await?;
        if let Some(e) = &existing
            && !controlled_by(e, se)
        {
            return Ok(Err(conflict(kind, &name)));
        }
        let key: ChildKey = (kind, ns.clone(), name.clone());
        let remembered = self.memory.get(&key);
        if let Some(e) = &existing {
            let current = AppliedVersion {
                hash: hash.clone(),
                version: version(e),
            };
            let cached_hash = e.annotations().get(SPEC_HASH_ANNOTATION);
            if cached_hash == Some(&hash) && remembered.as_ref() == Some(&current) {
                return Ok(Ok(e.clone()));
            }
        }

        // An existing child is applied with its uid as a precondition: if it was replaced by
        // someone else's object since it was read, the API server refuses the apply ("uid
        // mismatch") instead of taking the new object over. A missing child is created by the
        // apply; server-side apply has no create-only form, so an object created in the moment
        // between the lookup and the apply would still be taken over (see docs/operator.md).
        obj.meta_mut().uid = existing.as_ref().and_then(|e| e.meta().uid.clone());
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = match api.patch(&name, &params, &Patch::Apply(&obj)).await {
            Ok(applied) => applied,
            // A refusal (400/403/422) is the spec's problem, shown in status; others are retried.
            Err(e) => return apply_failure::into_problem(kind, &name, e).map(Err),
        };
        self.memory.set(
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
            let note = format!("{kind} {name} created");
            self.event(se, EventType::Normal, "Created", note).await;
        } else if cached_hash.as_ref() != Some(&hash)
            && remembered.as_ref().map(|r| &r.hash) != Some(&hash)
        {
            let note = format!("{kind} {name} updated");
            self.event(se, EventType::Normal, "Updated", note).await;
        } else {
            tracing::debug!(%kind, %name, "re-applied (cache behind, or changed outside the operator)");
        }
        Ok(Ok(applied))
    }

    /// Deletes a child the spec no longer asks for, if it exists and is this endpoint's.
    async fn delete_child<K>(
        &self,
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
        // The cache holds every labelled object; one without the label is not the operator's.
        let Some(existing) = store.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(());
        };
        if !controlled_by(existing.as_ref(), se) {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        self.delete_controlled(se, &api, kind_of::<K>(), name, existing.uid())
            .await
    }

    /// Deletes an object the endpoint controls. The uid precondition makes sure a same-named
    /// object created meanwhile is not deleted.
    async fn delete_controlled<K>(
        &self,
        se: &ScalingEndpoint,
        api: &Api<K>,
        kind: &str,
        name: &str,
        uid: Option<String>,
    ) -> Result<()>
    where
        K: Resource + Clone + Debug + DeserializeOwned,
    {
        let dp = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
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
        let note = format!("{kind} {name} deleted (no longer in the spec)");
        self.event(se, EventType::Normal, "Deleted", note).await;
        Ok(())
    }

    /// Whether the monitoring.coreos.com/v1 ServiceMonitor kind is served, cached briefly.
    async fn service_monitors_served(&self) -> Result<bool> {
        {
            let cached = self
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
        let served = match self
            .client
            .list_api_group_resources("monitoring.coreos.com/v1")
            .await
        {
            Ok(list) => list.resources.iter().any(|r| r.name == "servicemonitors"),
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(e.into()),
        };
        *self
            .memory
            .monitoring_crd
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), served));
        Ok(served)
    }

    /// Applies or deletes the ServiceMonitor. There is no cache of ServiceMonitors (their CRD may
    /// be missing), so what exists is read from the API server whenever the kind is served: the
    /// decision to delete depends on the object, never on the endpoint's last status.
    async fn apply_service_monitor(
        &self,
        se: &ScalingEndpoint,
        names: &Names,
        name: &str,
        desired: Option<DynamicObject>,
    ) -> Result<Result<ServiceMonitorState, Problem>> {
        const KIND: &str = "ServiceMonitor";
        if !self.service_monitors_served().await? {
            // Without the kind, no ServiceMonitor can exist to be deleted.
            return Ok(Ok(match desired {
                Some(_) => ServiceMonitorState::CrdMissing,
                None => ServiceMonitorState::NotRequested,
            }));
        }
        let ar = service_monitor::api_resource();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &names.namespace, &ar);
        let existing = match api.get_opt(name).await {
            Ok(existing) => existing,
            // Without RBAC for ServiceMonitors (the chart's `rbac.serviceMonitors: false`) the
            // operator never created one, so there is nothing of its own to delete.
            Err(kube::Error::Api(s)) if s.is_forbidden() && desired.is_none() => {
                return Ok(Ok(ServiceMonitorState::NotRequested));
            }
            Err(e) => return Err(e.into()),
        };
        let controlled = existing.as_ref().map(|e| controlled_by(e, se));
        match desired {
            Some(_) if controlled == Some(false) => Ok(Err(conflict(KIND, name))),
            Some(mut sm) => {
                // As for the other children: the uid of what was checked is a precondition.
                sm.metadata.uid = existing.and_then(|e| e.metadata.uid);
                api.patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&sm),
                )
                .await?;
                Ok(Ok(ServiceMonitorState::Applied))
            }
            None => {
                if let Some(e) = existing
                    && controlled == Some(true)
                {
                    self.delete_controlled(se, &api, KIND, name, e.metadata.uid)
                        .await?;
                }
                Ok(Ok(ServiceMonitorState::NotRequested))
            }
        }
    }
}
