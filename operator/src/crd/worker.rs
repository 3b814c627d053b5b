//! The worker Deployment (`spec.worker`) and its autoscaling.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{NetworkPolicySpec, PodSettings, one};

/// The worker Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Number of workers; also the ScalingEndpoint's scale subresource
    /// (`kubectl scale se/<name> --replicas=N`). Ignored while `autoscaling` is set.
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Worker image (default: the operator's `--worker-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Worker container resources (default requests: 100m CPU, 128Mi memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the worker pods require.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// A HorizontalPodAutoscaler on the worker Deployment, on CPU utilization or on requests in
    /// flight per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Pull secrets, service account, runtime class, priority, spreading and extra metadata of
    /// the worker pods.
    #[serde(flatten)]
    pub pod: PodSettings,
    /// NetworkPolicies restricting who reaches the workers and the vLLM pods. Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            image: None,
            resources: None,
            node_selector: None,
            tolerations: None,
            affinity: None,
            autoscaling: None,
            pod: PodSettings::default(),
            network_policy: None,
        }
    }
}

/// Autoscaling of the workers: on CPU, or on the requests each worker has in flight.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("worker.autoscaling.minReplicas must not exceed maxReplicas")
)]
#[x_kube(
    validation = Rule::new("!has(self.targetInflightPerPod) || self.metric == 'inflight'")
        .message("worker.autoscaling.targetInflightPerPod is only used with metric: inflight")
        .field_path(".targetInflightPerPod")
)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Fewest workers.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Most workers.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Target average CPU utilization, percent of the CPU request.
    #[serde(
        default = "default_cpu_target",
        rename = "targetCPUUtilizationPercentage"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
    /// What the HPA follows: `cpu` [default], or `inflight`, the worker's
    /// `inferscale_requests_in_flight` gauge as a Pods metric. Workers mostly wait on upstream
    /// calls, so CPU stays low while they are full; requests in flight track the load. `inflight`
    /// needs the metric in the custom metrics API (prometheus-adapter, docs/operations.md).
    #[serde(default)]
    pub metric: AutoscalingMetric,
    /// With `metric: inflight`: the average number of requests in flight per worker the HPA
    /// keeps (default 8). Each request fans out to `budget` upstream calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_inflight_per_pod: Option<i32>,
}

/// The signal the workers' HPA scales on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalingMetric {
    /// Average CPU utilization (resource metric, needs metrics-server).
    #[default]
    Cpu,
    /// Average `inferscale_requests_in_flight` per pod (Pods metric, needs prometheus-adapter).
    Inflight,
}

/// Requests in flight per worker the HPA keeps when `targetInflightPerPod` is unset.
pub const DEFAULT_INFLIGHT_TARGET: i32 = 8;

fn default_cpu_target() -> i32 {
    80
}
