//! HorizontalPodAutoscaler for the workers, PodDisruptionBudgets for workers and vLLM.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, child_meta, label_selector};
use crate::crd::{AutoscalingSpec, VllmSpec, WorkerSpec};
use crate::layout::Names;

/// Scales the worker Deployment on CPU. The Deployment's replicas are then left to the HPA.
pub fn hpa(names: &Names, owner: &OwnerReference, a: &AutoscalingSpec) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        metadata: child_meta(names.worker(), names, Component::Worker, owner),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: names.worker(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(a.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: None,
        }),
        status: None,
    }
}

/// A PDB that lets one pod of a component go at a time.
pub(super) fn pdb(
    name: String,
    names: &Names,
    owner: &OwnerReference,
    component: Component,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(name, names, component, owner),
        spec: Some(PodDisruptionBudgetSpec {
            // One pod at a time: voluntary disruptions (node drains) never take all replicas.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(label_selector(names, component)),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// A PDB when more than one worker is asked for (with one, it would block every drain).
pub fn worker_pdb(
    names: &Names,
    owner: &OwnerReference,
    w: &WorkerSpec,
) -> Option<PodDisruptionBudget> {
    let replicas = w
        .autoscaling
        .as_ref()
        .map_or(w.replicas, |a| a.min_replicas);
    (replicas > 1).then(|| pdb(names.worker(), names, owner, Component::Worker))
}

pub fn vllm_pdb(
    names: &Names,
    owner: &OwnerReference,
    v: &VllmSpec,
) -> Option<PodDisruptionBudget> {
    (v.replicas > 1).then(|| pdb(names.vllm(), names, owner, Component::ModelServer))
}
