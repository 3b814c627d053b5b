//! The in-cluster vLLM model server (`spec.vllm`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DEFAULT_GPU_RESOURCE, PodSettings, SecretKeyRef, one};

/// An in-cluster vLLM model server on GPU nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.gpus >= 1")
        .message("vllm.gpus must be at least 1")
)]
// A ReadWriteOnce volume attaches to one node: a second vLLM pod elsewhere would never start.
#[x_kube(
    validation = Rule::new("self.replicas <= 1 || !has(self.cache) || !has(self.cache.pvc) || (has(self.cache.pvc.accessModes) && 'ReadWriteMany' in self.cache.pvc.accessModes)")
        .message("vllm.cache.pvc.accessModes must include ReadWriteMany when vllm.replicas > 1: every vLLM pod mounts the same claim")
        .field_path(".cache.pvc.accessModes")
        .reason(Reason::FieldValueInvalid)
)]
#[serde(rename_all = "camelCase")]
pub struct VllmSpec {
    /// Hugging Face model id to serve, e.g. `Qwen/Qwen2.5-7B-Instruct`.
    pub model: String,
    /// vLLM image (default `vllm/vllm-openai:v0.11.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Number of vLLM pods.
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// GPUs per vLLM pod (requests and limits of `gpuResourceName`). At least 1.
    #[serde(default = "one")]
    pub gpus: i32,
    /// Extended resource name of the GPUs.
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource_name: String,
    /// Node labels the vLLM pods require, e.g. `nvidia.com/gpu.product: NVIDIA-L4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the vLLM pods, e.g. for tainted GPU nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the vLLM pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// CPU and memory of the vLLM container; the GPU request is added from `gpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra `vllm serve` arguments, e.g. `["--max-model-len", "8192"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Extra environment variables of the vLLM container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// The Secret key holding a Hugging Face token (gated models); passed as `HF_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_token_secret_ref: Option<SecretKeyRef>,
    /// Where downloaded weights are cached (`HF_HOME`). Unset: an unbounded emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<VllmCache>,
    /// Pull secrets, service account, runtime class, priority, spreading and extra metadata of
    /// the vLLM pods.
    #[serde(flatten)]
    pub pod: PodSettings,
    /// Size limit of the memory-backed `/dev/shm` that PyTorch and NCCL use between the
    /// tensor-parallel processes, e.g. `16Gi`. Unset: no limit of its own (it still counts
    /// against the container's memory limit, if one is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Quantity>,
    /// Timings of the `/health` probes. Unset fields keep the defaults, which give a large model
    /// an hour to download and load (startup: every 10s, 360 failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<VllmProbes>,
}

/// Timings of vLLM's startup, readiness and liveness probes. The Deployment's
/// `progressDeadlineSeconds` follows the startup probe's budget.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VllmProbes {
    /// Until it succeeds, readiness and liveness wait (defaults: period 10s, 360 failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<ProbeTiming>,
    /// Whether the pod gets traffic (defaults: period 5s, 3 failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeTiming>,
    /// When the container is restarted (defaults: period 10s, 3 failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeTiming>,
}

/// Timing of one probe; unset fields keep the operator's default.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeTiming {
    /// Seconds after the container starts before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub period_seconds: Option<i32>,
    /// Seconds a probe may take (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive failures that count as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failure_threshold: Option<i32>,
}

/// The model cache: an existing PersistentVolumeClaim, a claim the operator creates, or an
/// emptyDir of a given size.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("[has(self.persistentVolumeClaim), has(self.emptyDirSize), has(self.pvc)].filter(set, set).size() == 1")
        .message("vllm.cache needs exactly one of persistentVolumeClaim, emptyDirSize or pvc")
)]
#[serde(rename_all = "camelCase")]
pub struct VllmCache {
    /// Name of an existing PersistentVolumeClaim in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<String>,
    /// Size limit of an emptyDir cache, e.g. `50Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir_size: Option<Quantity>,
    /// A PersistentVolumeClaim the operator creates as `<name>-vllm-cache` and owns: it is
    /// deleted with the ScalingEndpoint (or when `pvc` is removed from the spec), so the weights
    /// are downloaded again after that. To keep a cache beyond the endpoint, create the claim
    /// yourself and name it in `persistentVolumeClaim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<CachePvc>,
}

/// The claim the operator creates for the model cache.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachePvc {
    /// Requested size, e.g. `200Gi` (the model's weights plus room for a second revision). A
    /// storage class that allows expansion accepts a larger size later; shrinking is refused.
    pub size: Quantity,
    /// StorageClass of the claim. Unset: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Access modes [`ReadWriteOnce`]. `ReadWriteMany` (a shared file system) is required when
    /// `replicas` > 1, since every vLLM pod mounts the same claim. Fixed once the claim exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3))]
    pub access_modes: Option<Vec<CacheAccessMode>>,
}

/// Access mode of the cache claim (a cache is written, so no read-only mode).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CacheAccessMode {
    ReadWriteOnce,
    ReadWriteMany,
    ReadWriteOncePod,
}

impl CacheAccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheAccessMode::ReadWriteOnce => "ReadWriteOnce",
            CacheAccessMode::ReadWriteMany => "ReadWriteMany",
            CacheAccessMode::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }
}

fn default_gpu_resource() -> String {
    DEFAULT_GPU_RESOURCE.to_owned()
}
