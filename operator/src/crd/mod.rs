//! The `ScalingEndpoint` custom resource (`inferscale.dev/v1alpha1`).
//!
//! Every doc comment here becomes `kubectl explain` text, so they are written for users. Cross-field
//! rules are CEL (`x-kubernetes-validations`) so the API server rejects a bad object at admission
//! with a readable message instead of the operator discovering it later. Enumerations that the
//! worker also understands (algorithm, tool vote, judge mode) are the worker's own types, so the two
//! crates cannot drift apart.

mod algorithm;
mod network;
mod pod;
mod reward;
mod vllm;
mod worker;

pub use algorithm::{AdaptiveSpec, AlgorithmSpec, JudgeSpec, RequestOverrideKey};
pub use network::NetworkPolicySpec;
pub use pod::PodSettings;
pub use reward::RewardSpec;
pub use vllm::{CacheAccessMode, CachePvc, ProbeTiming, VllmCache, VllmProbes, VllmSpec};
pub use worker::{AutoscalingMetric, AutoscalingSpec, DEFAULT_INFLIGHT_TARGET, WorkerSpec};

use inferscale_worker::config::ProviderKind;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "inferscale.dev";
/// Default port of the workers' Service (the worker's own default).
pub const DEFAULT_SERVICE_PORT: i32 = inferscale_worker::config::DEFAULT_PORT as i32;
/// Default extended resource name for GPUs.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Default vLLM image when `spec.vllm.image` is not set.
pub const DEFAULT_VLLM_IMAGE: &str = "vllm/vllm-openai:v0.11.0";

/// An OpenAI-compatible endpoint that spends a budget of N upstream calls per request and returns
/// the best answer (self-consistency voting, best-of-n with an LLM judge or a process reward
/// model, or step-wise search guided by a process reward model). The operator runs workers for
/// it, a Service at `status.url`, and optionally in-cluster vLLM servers for the model and the PRM.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "inferscale.dev",
    version = "v1alpha1",
    kind = "ScalingEndpoint",
    plural = "scalingendpoints",
    shortname = "se",
    category = "inferscale",
    namespaced,
    status = "ScalingEndpointStatus",
    derive = "PartialEq",
    doc = "ScalingEndpoint is an OpenAI-compatible inference-time-scaling endpoint: workers that spend a budget of N upstream calls per request (self-consistency, best-of-n with an LLM judge or a process reward model, particle filtering or beam search), their Service, and optionally in-cluster vLLM servers for the model and the process reward model.",
    scale(
        spec_replicas_path = ".spec.worker.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Algorithm", type_ = "string", json_path = ".spec.algorithm.name"),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model.name"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // Child names are `<name>`, `<name>-vllm` and `<name>-prm` Services, which must be DNS-1035 labels: reject
    // names that would fail later, at admission, where the user sees it.
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 58")
        .message("metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter) of at most 58 characters, so that the <name>-vllm and <name>-prm Service names fit")
        .reason(Reason::FieldValueInvalid)
)]
#[x_kube(
    validation = Rule::new("self.algorithm.name != 'best-of-n' || has(self.judge) || has(self.reward)")
        .message("algorithm best-of-n needs a judge or a reward model: set spec.judge or spec.reward")
        .reason(Reason::FieldValueRequired)
)]
#[x_kube(
    validation = Rule::new("self.algorithm.name != 'best-of-n' || !has(self.judge) || !has(self.reward)")
        .message("algorithm best-of-n picks with either spec.judge (an LLM judge) or spec.reward (a process reward model), not both")
)]
#[x_kube(
    validation = Rule::new("!has(self.reward) || self.algorithm.name != 'self-consistency'")
        .message("spec.reward is only used by algorithm particle-filtering, beam-search or best-of-n")
)]
#[x_kube(
    validation = Rule::new("!(self.algorithm.name in ['particle-filtering', 'beam-search']) || has(self.reward)")
        .message("algorithm particle-filtering and beam-search need a process reward model: set spec.reward")
        .reason(Reason::FieldValueRequired)
)]
#[x_kube(
    validation = Rule::new("!has(self.vllm) || !has(self.model.endpoint) || self.model.endpoint == 'auto'")
        .message("model.endpoint must be unset or 'auto' when vllm is set: the workers then call the in-cluster vLLM Service")
)]
#[serde(rename_all = "camelCase")]
pub struct ScalingEndpointSpec {
    /// The upstream model the workers call for candidates.
    pub model: ModelSpec,
    /// The inference-time-scaling algorithm and its budget.
    pub algorithm: AlgorithmSpec,
    /// The LLM judge that picks the best candidate. Required for `best-of-n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeSpec>,
    /// Serve the model in-cluster with vLLM on GPU nodes. When set, the workers' upstream is that
    /// vLLM Service (`http://<name>-vllm.<namespace>.svc:8000/v1`, provider `openai-compatible`)
    /// and `model.name` is the name vLLM serves the model under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vllm: Option<VllmSpec>,
    /// The process reward model that scores partial answers step by step (particle filtering,
    /// beam search, PRM-scored best-of-n): an existing server or one the operator serves with
    /// vLLM on GPU nodes (`<name>-prm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<RewardSpec>,
    /// The worker Deployment.
    #[serde(default)]
    pub worker: WorkerSpec,
    /// The Service in front of the workers.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Client authentication the workers require.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Prometheus scraping of the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
}

/// An upstream model: which model, which provider, where, and the credentials to call it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Model string, e.g. `gpt-4o-mini`, `bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0`.
    /// LiteLLM-style prefixes (`openai/`, `bedrock/`, `hosted_vllm/`) select the provider when
    /// `provider` is not set.
    #[x_kube(validation = Rule::new("self != ''").message("model name must not be empty"))]
    pub name: String,
    /// `openai`, `bedrock`, `openai-compatible` (any server speaking OpenAI chat completions) or
    /// `litellm` (routed by the model string's prefix, as when unset). The worker's own type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,
    /// Upstream base URL (e.g. `https://api.openai.com/v1`) or `auto` (the provider's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self == 'auto' || self.matches('^https?://[^/]+')")
            .message("endpoint must be 'auto' or an http(s) URL")
    )]
    pub endpoint: Option<String>,
    /// The Secret key holding the upstream API key. Mounted into the workers as a file, never
    /// copied into the ConfigMap or an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// AWS settings for Bedrock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsSpec>,
}

/// A key in a Secret of the ScalingEndpoint's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(
    validation = Rule::new("self.name != '' && self.key != ''")
        .message("a secret reference needs both name and key")
        .reason(Reason::FieldValueRequired)
)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[serde(default)]
    pub name: String,
    /// Key within the Secret's data.
    #[serde(default)]
    pub key: String,
}

/// AWS region and credentials (Bedrock).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsSpec {
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// A Secret holding static credentials. Unset: the workers use no static keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<AwsCredentialsRef>,
}

/// A Secret with AWS credentials and the names of its keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("self.name != '' && self.accessKeyIdKey != '' && self.secretAccessKeyKey != ''")
        .message("a secret reference needs both name and key: aws.credentialsSecretRef needs name, accessKeyIdKey and secretAccessKeyKey")
        .reason(Reason::FieldValueRequired)
)]
#[serde(rename_all = "camelCase")]
pub struct AwsCredentialsRef {
    /// Name of the Secret.
    #[serde(default)]
    pub name: String,
    /// Key holding the access key id.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    /// Key holding the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
    /// Key holding a session token (temporary credentials). Unset: no session token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_key: Option<String>,
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".to_owned()
}

fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".to_owned()
}

/// The workers' Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Service and container port (named `http`; serves the OpenAI API and `/metrics`).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: DEFAULT_SERVICE_PORT,
        }
    }
}

/// Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Client authentication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The Secret key holding the client API keys, one per line; requests to `/v1` then need
    /// `Authorization: Bearer <key>`.
    pub api_keys_secret_ref: SecretKeyRef,
}

/// Prometheus integration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// A prometheus-operator ServiceMonitor for the workers' `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor: Option<ServiceMonitorSpec>,
}

/// ServiceMonitor settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Create the ServiceMonitor (needs the monitoring.coreos.com CRDs; otherwise the
    /// `ServiceMonitorReady` condition says so).
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// What the operator observed. Conditions: `Ready` (the endpoint serves the current spec),
/// `ConfigValid`, `WorkersAvailable`, `ModelServerAvailable` (with vllm), `RewardModelAvailable`
/// (with reward) and `ServiceMonitorReady` (when enabled).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingEndpointStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// In-cluster URL of the OpenAI API: `http://<name>.<namespace>.svc:<port>/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Worker pods that exist (scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Label selector of the worker pods (scale subresource, for HPA/KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Desired and ready workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<ReplicaCounts>,
    /// Desired and ready vLLM pods (when vllm is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_server: Option<ReplicaCounts>,
    /// Desired and ready pods of the in-cluster process reward model (when reward.vllm is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_model: Option<ReplicaCounts>,
    /// sha256 of the worker configuration and referenced Secret data the workers run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Current state, one entry per condition type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Desired and ready replicas of a Deployment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaCounts {
    /// Replicas asked for.
    pub desired: i32,
    /// Replicas ready.
    pub ready: i32,
}

fn one() -> i32 {
    1
}

fn default_port() -> i32 {
    DEFAULT_SERVICE_PORT
}

impl ScalingEndpoint {
    /// The condition of the given type, if the status has it.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}

/// The CRD as YAML, as committed in `crds/` and printed by `inferscale-operator crd`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(ScalingEndpoint::crd())
        .map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    unwrap_descriptions(&mut crd);
    let body = serde_yaml::to_string(&crd)?;
    Ok(format!(
        "# Generated by `inferscale-operator crd` from operator/src/crd/. Do not edit.\n{body}"
    ))
}

/// Doc comments are wrapped at 100 columns; `kubectl explain` wraps again, so single newlines
/// inside a paragraph become spaces (paragraph breaks stay).
fn unwrap_descriptions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(s) if k == "description" => {
                        *s = s
                            .split("\n\n")
                            .map(|para| {
                                para.split('\n')
                                    .map(str::trim)
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRD in `crds/` is generated; this fails when the Rust types changed without it.
    #[test]
    fn committed_crd_matches_the_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/scalingendpoints.inferscale.dev.yaml"
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = crd_yaml().unwrap();
        assert!(
            committed == generated,
            "crds/scalingendpoints.inferscale.dev.yaml is out of date with operator/src/crd/; regenerate it with:\n  cargo run -p inferscale-operator -- crd > crds/scalingendpoints.inferscale.dev.yaml"
        );
    }

    #[test]
    fn defaults_fill_worker_and_service() {
        let se: ScalingEndpoint = serde_yaml::from_str(
            "apiVersion: inferscale.dev/v1alpha1\nkind: ScalingEndpoint\nmetadata: {name: x}\nspec: {model: {name: m}, algorithm: {name: best-of-n}}",
        )
        .unwrap();
        assert_eq!(se.spec.worker.replicas, 1);
        assert_eq!(se.spec.service.port, 8108);
        assert_eq!(
            se.spec.algorithm.name,
            inferscale_worker::config::AlgorithmName::BestOfN
        );
    }

    #[test]
    fn crd_has_scale_status_and_printer_columns() {
        use kube::CustomResourceExt;
        let crd = ScalingEndpoint::crd();
        let v = &crd.spec.versions[0];
        let sub = v.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.worker.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Algorithm", "Model", "Ready", "URL", "Age"]);
        assert_eq!(crd.spec.names.short_names, Some(vec!["se".to_owned()]));
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Test-only builders of ScalingEndpoints from YAML.
    use super::ScalingEndpoint;

    /// Parses a ScalingEndpoint and gives it what the API server would: namespace, uid, generation.
    pub fn endpoint(yaml: &str) -> ScalingEndpoint {
        let mut se: ScalingEndpoint = serde_yaml::from_str(yaml).expect("fixture parses");
        se.metadata.namespace.get_or_insert_with(|| "ns".to_owned());
        se.metadata.uid = Some("uid-1".to_owned());
        se.metadata.generation = Some(1);
        se
    }
}
