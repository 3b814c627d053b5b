//! Pure builders: from a validated ScalingEndpoint to the objects the operator applies. Nothing
//! here talks to the API server, so every child can be unit-tested from a spec.
//!
//! Names and mount paths come from [`crate::layout`], shared with validation. The worker
//! ConfigMaps are `<name>-config-<content hash>` and immutable (see [`config_map`]).

pub mod autoscaling;
pub mod config_map;
pub mod network_policy;
pub mod pvc;
pub mod reward;
pub mod service;
pub mod service_monitor;
pub mod vllm;
pub mod worker;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, LocalObjectReference, PersistentVolumeClaim, PodSpec, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::DynamicObject;

use crate::crd::{PodSettings, ScalingEndpoint};
use crate::error::{Error, Result};
use crate::layout::Names;
use crate::validate::Resolved;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "inferscale-operator";
/// Value of `app.kubernetes.io/managed-by` on every child; the operator's watches select on it.
pub const MANAGED_BY: &str = "inferscale-operator";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// Pod-template annotation whose change rolls the workers: sha256 of the rendered config and of
/// the referenced Secret keys.
pub const CONFIG_HASH_ANNOTATION: &str = "inferscale.dev/config-hash";

/// Settings of the operator process that shape children (from its command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorDefaults {
    /// Worker image when the spec sets none.
    pub worker_image: String,
    /// Pull secrets of worker and vLLM pods whose spec sets no `imagePullSecrets` (a mirrored
    /// registry for the whole cluster).
    pub image_pull_secrets: Vec<String>,
    /// RuntimeClass of vLLM pods whose spec sets no `runtimeClassName` (e.g. `nvidia`). Workers
    /// need no GPU runtime and never get it.
    pub vllm_runtime_class: Option<String>,
}

impl Default for OperatorDefaults {
    fn default() -> Self {
        Self {
            worker_image: default_worker_image(),
            image_pull_secrets: Vec::new(),
            vllm_runtime_class: None,
        }
    }
}

/// Fills what the endpoint's pod settings leave unset from the operator's defaults; anything the
/// spec sets wins.
fn with_operator_defaults(
    mut deployment: Deployment,
    defaults: &OperatorDefaults,
    component: Component,
) -> Deployment {
    let Some(pod) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
    else {
        return deployment;
    };
    if pod.image_pull_secrets.is_none() && !defaults.image_pull_secrets.is_empty() {
        pod.image_pull_secrets = Some(
            defaults
                .image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect(),
        );
    }
    // Both vLLM servers (generator and reward model) run on GPU nodes.
    if matches!(component, Component::ModelServer | Component::RewardModel)
        && pod.runtime_class_name.is_none()
    {
        pod.runtime_class_name = defaults.vllm_runtime_class.clone();
    }
    deployment
}

/// `inferscale/worker:<this crate's version>`: operator and worker are released together.
pub fn default_worker_image() -> String {
    format!("inferscale/worker:{}", env!("CARGO_PKG_VERSION"))
}

/// Which workload of an endpoint an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Worker,
    ModelServer,
    /// The in-cluster process reward model (`spec.reward.vllm`).
    RewardModel,
}

impl Component {
    pub fn label(self) -> &'static str {
        match self {
            Component::Worker => "worker",
            Component::ModelServer => "model-server",
            Component::RewardModel => "reward-model",
        }
    }

    fn app_name(self) -> &'static str {
        match self {
            Component::Worker => "inferscale-worker",
            Component::ModelServer => "inferscale-vllm",
            Component::RewardModel => "inferscale-prm",
        }
    }
}

/// Labels selecting the pods of a component (never change: Deployment selectors are immutable).
pub fn selector_labels(names: &Names, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), component.app_name().to_owned()),
        (LABEL_INSTANCE.to_owned(), names.endpoint.clone()),
        (LABEL_COMPONENT.to_owned(), component.label().to_owned()),
    ])
}

/// Labels of every object of a component: the selector plus ownership labels.
pub fn labels(names: &Names, component: Component) -> BTreeMap<String, String> {
    let mut l = selector_labels(names, component);
    l.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
    l.insert(LABEL_PART_OF.to_owned(), "inferscale".to_owned());
    l
}

/// The selector as the `status.selector` string of the scale subresource.
pub fn selector_string(names: &Names, component: Component) -> String {
    selector_labels(names, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn label_selector(names: &Names, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(names, component)),
        match_expressions: None,
    }
}

/// Metadata of a child: name, namespace, labels and the controller owner reference that makes
/// the garbage collector delete it with the endpoint.
pub fn child_meta(
    name: String,
    names: &Names,
    component: Component,
    owner: &OwnerReference,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names, component)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// Pod-template metadata: the user's extra labels and annotations, then the operator's own, which
/// win on a shared key (the reserved label keys are also refused at admission).
pub fn pod_template_meta(
    names: &Names,
    component: Component,
    settings: &PodSettings,
    own_annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    let mut pod_labels = settings.pod_labels.clone().unwrap_or_default();
    pod_labels.extend(labels(names, component));
    let mut annotations = settings.pod_annotations.clone().unwrap_or_default();
    annotations.extend(own_annotations);
    ObjectMeta {
        labels: Some(pod_labels),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..ObjectMeta::default()
    }
}

/// Renders the user's pull secrets, identity, runtime, priority and spreading into a pod spec.
pub fn with_pod_settings(mut pod: PodSpec, settings: &PodSettings) -> PodSpec {
    pod.image_pull_secrets = settings.image_pull_secrets.as_ref().map(|names| {
        names
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    });
    pod.service_account_name = settings.service_account_name.clone();
    pod.runtime_class_name = settings.runtime_class_name.clone();
    pod.priority_class_name = settings.priority_class_name.clone();
    pod.topology_spread_constraints = settings.topology_spread_constraints.clone();
    pod
}

/// Everything the operator wants to exist for one endpoint. Optional children that are `None`
/// are deleted if they exist.
#[derive(Debug, Clone)]
pub struct Children {
    pub config_map: ConfigMap,
    pub worker_deployment: Deployment,
    pub worker_service: Service,
    pub worker_hpa: Option<HorizontalPodAutoscaler>,
    pub worker_pdb: Option<PodDisruptionBudget>,
    pub vllm_deployment: Option<Deployment>,
    pub vllm_service: Option<Service>,
    pub vllm_pdb: Option<PodDisruptionBudget>,
    /// The in-cluster process reward model (`spec.reward.vllm`).
    pub reward: Option<reward::RewardServer>,
    /// The model-cache claim of `vllm.cache.pvc`.
    pub vllm_cache_pvc: Option<PersistentVolumeClaim>,
    /// `worker.networkPolicy`: who reaches the workers, and (with vLLM) who reaches vLLM.
    pub worker_network_policy: Option<NetworkPolicy>,
    pub vllm_network_policy: Option<NetworkPolicy>,
    /// The same for the in-cluster reward model (`<name>-prm`).
    pub reward_network_policy: Option<NetworkPolicy>,
    pub service_monitor: Option<DynamicObject>,
    /// vLLM's ServiceMonitor (`vllm:*` metrics), with `vllm` and `metrics.serviceMonitor`.
    pub vllm_service_monitor: Option<DynamicObject>,
}

/// Builds every child of a validated endpoint.
pub fn build(
    se: &ScalingEndpoint,
    resolved: &Resolved,
    defaults: &OperatorDefaults,
) -> Result<Children> {
    let names = Names::of(se)?;
    let mut owner = se
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("uid"))?;
    // Foreground deletion of the endpoint waits for its children, as with built-in controllers.
    owner.block_owner_deletion = Some(true);
    let spec = &se.spec;
    let vllm = spec.vllm.as_ref();
    let monitoring = spec
        .metrics
        .as_ref()
        .and_then(|m| m.service_monitor.as_ref())
        .filter(|s| s.enabled);
    let sm_interval = monitoring.and_then(|s| s.interval.as_deref());
    Ok(Children {
        config_map: config_map::build(
            &names,
            &owner,
            resolved,
            se.metadata.generation.unwrap_or(0),
        )?,
        worker_deployment: with_operator_defaults(
            worker::build(&names, &owner, spec, resolved, defaults),
            defaults,
            Component::Worker,
        ),
        worker_service: service::worker(&names, &owner, &spec.service),
        worker_hpa: spec
            .worker
            .autoscaling
            .as_ref()
            .map(|a| autoscaling::hpa(&names, &owner, a)),
        worker_pdb: autoscaling::worker_pdb(&names, &owner, &spec.worker),
        vllm_deployment: vllm.map(|v| {
            with_operator_defaults(
                vllm::deployment(
                    &names,
                    &owner,
                    vllm::VllmRole::Generator,
                    &spec.model.name,
                    v,
                ),
                defaults,
                Component::ModelServer,
            )
        }),
        vllm_service: vllm.map(|_| service::vllm(&names, &owner, vllm::VllmRole::Generator)),
        reward: spec
            .reward
            .as_ref()
            .and_then(|r| reward::server(&names, &owner, r))
            .map(|mut r| {
                r.deployment =
                    with_operator_defaults(r.deployment, defaults, Component::RewardModel);
                r
            }),
        vllm_pdb: vllm.and_then(|v| autoscaling::vllm_pdb(&names, &owner, v)),
        vllm_cache_pvc: vllm.and_then(|v| pvc::cache_claim(&names, &owner, v)),
        worker_network_policy: network_policy::workers(
            &names,
            &owner,
            spec.worker.network_policy.as_ref(),
        ),
        vllm_network_policy: vllm.and_then(|_| {
            network_policy::vllm(
                &names,
                &owner,
                vllm::VllmRole::Generator,
                spec.worker.network_policy.as_ref(),
            )
        }),
        reward_network_policy: spec
            .reward
            .as_ref()
            .and_then(|r| r.vllm.as_ref())
            .and_then(|_| {
                network_policy::vllm(
                    &names,
                    &owner,
                    vllm::VllmRole::RewardModel,
                    spec.worker.network_policy.as_ref(),
                )
            }),
        service_monitor: monitoring.map(|_| service_monitor::build(&names, &owner, sm_interval)),
        vllm_service_monitor: vllm
            .and(monitoring)
            .map(|_| service_monitor::vllm(&names, &owner, sm_interval)),
    })
}

#[cfg(test)]
pub(crate) use crate::crd::fixtures;

#[cfg(test)]
mod operator_defaults_tests {
    use super::*;
    use crate::dereference::Secrets;
    use crate::validate::validate;

    fn pods(yaml: &str, defaults: &OperatorDefaults) -> (PodSpec, PodSpec) {
        let se = fixtures::endpoint(yaml);
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        let c = build(&se, &resolved, defaults).unwrap();
        let pod = |d: Deployment| d.spec.unwrap().template.spec.unwrap();
        (pod(c.worker_deployment), pod(c.vllm_deployment.unwrap()))
    }

    const BASE: &str = "metadata: {name: ep}\nspec:\n  model: {name: qwen}\n  algorithm: {name: self-consistency}\n";

    fn cluster_defaults() -> OperatorDefaults {
        OperatorDefaults {
            image_pull_secrets: vec!["mirror".to_owned()],
            vllm_runtime_class: Some("nvidia".to_owned()),
            ..OperatorDefaults::default()
        }
    }

    #[test]
    fn defaults_fill_unset_pod_settings() {
        let (worker, vllm) = pods(
            &format!("{BASE}  vllm: {{model: Qwen/Qwen2.5-7B-Instruct}}\n"),
            &cluster_defaults(),
        );
        let names = |p: &PodSpec| -> Vec<String> {
            p.image_pull_secrets
                .iter()
                .flatten()
                .map(|r| r.name.clone())
                .collect()
        };
        assert_eq!(names(&worker), ["mirror"]);
        assert_eq!(names(&vllm), ["mirror"]);
        assert_eq!(vllm.runtime_class_name.as_deref(), Some("nvidia"));
        assert!(
            worker.runtime_class_name.is_none(),
            "workers need no GPU runtime"
        );
    }

    #[test]
    fn the_spec_wins_over_the_defaults() {
        let (worker, vllm) = pods(
            &format!(
                "{BASE}  worker: {{imagePullSecrets: [own]}}\n  vllm: {{model: Qwen/Qwen2.5-7B-Instruct, runtimeClassName: kata-nvidia, imagePullSecrets: []}}\n"
            ),
            &cluster_defaults(),
        );
        assert_eq!(worker.image_pull_secrets.unwrap()[0].name, "own");
        assert_eq!(vllm.runtime_class_name.as_deref(), Some("kata-nvidia"));
        assert_eq!(
            vllm.image_pull_secrets,
            Some(vec![]),
            "an explicit empty list stays empty"
        );
    }

    #[test]
    fn no_defaults_change_nothing() {
        let (worker, vllm) = pods(
            &format!("{BASE}  vllm: {{model: Qwen/Qwen2.5-7B-Instruct}}\n"),
            &OperatorDefaults::default(),
        );
        assert!(worker.image_pull_secrets.is_none() && vllm.image_pull_secrets.is_none());
        assert!(vllm.runtime_class_name.is_none());
    }
}
