//! Who may reach an endpoint's pods (`spec.worker.networkPolicy`).

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// NetworkPolicies for the endpoint: the workers accept connections only from `from` and
/// `metricsFrom`; the vLLM pods (with `vllm`) only from this endpoint's workers and `metricsFrom`.
/// Egress is not restricted (the workers call external APIs). Needs a network plugin that enforces
/// NetworkPolicy (Calico, Cilium, …); without one the objects exist and change nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicies.
    #[serde(default)]
    pub enabled: bool,
    /// Clients that may call the workers' API port: NetworkPolicy peers (`podSelector`,
    /// `namespaceSelector`, `ipBlock`). Unset: every pod of the endpoint's namespace. `[]`: no
    /// client (only `metricsFrom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub from: Option<Vec<NetworkPolicyPeer>>,
    /// The Prometheus scraper: peers that may reach `/metrics` of the workers and of vLLM, e.g.
    /// `[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]`. The
    /// workers serve `/metrics` on the API port, so these peers can reach the API too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub metrics_from: Option<Vec<NetworkPolicyPeer>>,
}
