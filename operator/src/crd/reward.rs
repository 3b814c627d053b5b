//! The process reward model (`spec.reward`) that scores partial answers for particle filtering,
//! beam search and PRM-scored best-of-n: an existing server (`endpoint`) or one the operator serves
//! with vLLM's pooling runner (`vllm`, the same block as `spec.vllm`).

use inferscale_worker::config::RmAggMethod;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::{SecretKeyRef, VllmSpec};

/// The process reward model (PRM) the workers ask to score each step of a partial answer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.endpoint) != has(self.vllm)")
        .message("spec.reward needs exactly one of endpoint (an existing PRM server) or vllm (served by the operator)")
        .reason(Reason::FieldValueRequired)
)]
#[x_kube(
    validation = Rule::new("!has(self.vllm) || !has(self.vllm.cache) || !has(self.vllm.cache.pvc)")
        .message("reward.vllm.cache.pvc is not supported: give the reward model an existing claim with cache.persistentVolumeClaim, or emptyDirSize")
)]
#[x_kube(
    validation = Rule::new("!has(self.apiKeySecretRef) || has(self.endpoint)")
        .message("spec.reward.apiKeySecretRef is only valid with spec.reward.endpoint: the operator generates the key of a PRM it serves")
        .reason(Reason::FieldValueForbidden)
)]
#[serde(rename_all = "camelCase")]
pub struct RewardSpec {
    /// The name the PRM server serves the model under (sent as `model` in each scoring request),
    /// e.g. `Qwen/Qwen2.5-Math-PRM-7B`. With `vllm` it is also vLLM's `--served-model-name`.
    #[x_kube(validation = Rule::new("self != ''").message("spec.reward.model must not be empty"))]
    #[schemars(length(max = 253))]
    pub model: String,
    /// Base URL of an existing PRM server speaking vLLM's pooling API (the workers POST
    /// `<endpoint>/pooling`), e.g. `http://prm.ml.svc:8000`. Exclusive with `vllm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.matches('^https?://[^/]+')")
            .message("spec.reward.endpoint must be an http(s) URL")
    )]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,
    /// The Secret key holding the API key of `endpoint`. Mounted into the workers as a file, never
    /// copied into the ConfigMap or an environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Serve the PRM in-cluster: a vLLM Deployment and Service `<name>-prm` on GPU nodes, run with
    /// `--runner pooling` (vLLM v0.11.0), protected by a key the operator generates
    /// (`<name>-prm-key`). Exclusive with `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vllm: Option<VllmSpec>,
    /// The token that separates steps in the text the PRM scores (default `<extra_0>`, the tag
    /// Qwen2.5-Math-PRM was trained with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self != ''").message("spec.reward.stepTag must not be empty"))]
    #[schemars(length(max = 64))]
    pub step_tag: Option<String>,
    /// How the step scores of a complete answer become one score (PRM best-of-n): `model` (the
    /// last step's score as the model reports it, the default), `prod`, `min` or `last`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<RmAggMethod>,
}
