//! HorizontalPodAutoscaler for the workers, PodDisruptionBudgets for workers and vLLM.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, child_meta, label_selector};
use crate::crd::{
    AutoscalingMetric, AutoscalingSpec, DEFAULT_INFLIGHT_TARGET, VllmSpec, WorkerSpec,
};
use crate::layout::Names;

/// The worker gauge an `inflight` HPA follows, as prometheus-adapter exposes it.
pub const INFLIGHT_METRIC: &str = "inferscale_requests_in_flight";

/// Scales the worker Deployment on CPU or on requests in flight per pod. The Deployment's
/// replicas are then left to the HPA.
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
            metrics: Some(vec![metric(a)]),
            behavior: None,
        }),
        status: None,
    }
}

fn metric(a: &AutoscalingSpec) -> MetricSpec {
    match a.metric {
        AutoscalingMetric::Cpu => MetricSpec {
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
        },
        // A Pods metric is averaged over the Deployment's pods by the HPA itself.
        AutoscalingMetric::Inflight => MetricSpec {
            type_: "Pods".to_owned(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: INFLIGHT_METRIC.to_owned(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".to_owned(),
                    average_value: Some(Quantity(
                        a.target_inflight_per_pod
                            .unwrap_or(DEFAULT_INFLIGHT_TARGET)
                            .to_string(),
                    )),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::endpoint;
    use crate::layout::Names;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn hpa_of(autoscaling: &str) -> HorizontalPodAutoscaler {
        let se = endpoint(&format!(
            "metadata: {{name: sc}}\nspec:\n  model: {{name: m}}\n  algorithm: {{name: self-consistency}}\n  worker:\n    autoscaling: {autoscaling}\n"
        ));
        let a = se.spec.worker.autoscaling.clone().expect("autoscaling");
        hpa(&Names::of(&se).unwrap(), &OwnerReference::default(), &a)
    }

    #[test]
    fn cpu_is_the_default_metric() {
        let h = hpa_of("{maxReplicas: 4}");
        let m = &h.spec.unwrap().metrics.unwrap()[0];
        assert_eq!(m.type_, "Resource");
        let r = m.resource.as_ref().unwrap();
        assert_eq!(r.name, "cpu");
        assert_eq!(r.target.average_utilization, Some(80));
        assert!(m.pods.is_none());
    }

    #[test]
    fn inflight_targets_the_worker_gauge_per_pod() {
        let h =
            hpa_of("{minReplicas: 2, maxReplicas: 10, metric: inflight, targetInflightPerPod: 12}");
        let spec = h.spec.unwrap();
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 10));
        let m = &spec.metrics.unwrap()[0];
        assert_eq!(m.type_, "Pods");
        assert!(m.resource.is_none());
        let p = m.pods.as_ref().unwrap();
        assert_eq!(p.metric.name, "inferscale_requests_in_flight");
        assert_eq!(p.target.type_, "AverageValue");
        assert_eq!(p.target.average_value.as_ref().unwrap().0, "12");
    }

    #[test]
    fn inflight_target_defaults_to_eight() {
        let h = hpa_of("{maxReplicas: 3, metric: inflight}");
        let m = &h.spec.unwrap().metrics.unwrap()[0];
        let target = &m.pods.as_ref().unwrap().target;
        assert_eq!(target.average_value.as_ref().unwrap().0, "8");
    }
}
