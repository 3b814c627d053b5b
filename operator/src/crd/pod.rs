//! Placement and identity of the pods the operator creates, shared by `spec.worker` and
//! `spec.vllm` (flattened into both, so the fields sit next to `nodeSelector` and `tolerations`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Pod settings a platform needs on a real cluster: registry credentials, identity, runtime,
/// priority, spreading, and extra metadata.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Names of Secrets (type `kubernetes.io/dockerconfigjson`) in the namespace used to pull the
    /// image from a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<String>>,
    /// ServiceAccount the pods run as (e.g. for registry credentials or cloud identity). Its API
    /// token is still not mounted: the pods never call the Kubernetes API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// RuntimeClass of the pods, e.g. `nvidia` where the NVIDIA container runtime is not the
    /// node's default. Unset: the node's default runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// How the pods spread across zones or nodes. A constraint without `labelSelector` should
    /// select the pods by their `app.kubernetes.io/instance` and `app.kubernetes.io/component`
    /// labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Extra labels of the pods (at most 64). The operator's own `app.kubernetes.io/{name, instance,
    /// component, managed-by, part-of}` labels may not be set here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.all(k, !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/component', 'app.kubernetes.io/managed-by', 'app.kubernetes.io/part-of']))")
            .message("podLabels must not set the operator's labels app.kubernetes.io/name, instance, component, managed-by or part-of")
            .reason(Reason::FieldValueForbidden)
    )]
    // Bounded so the API server's CEL cost estimate of the rule stays small.
    #[schemars(extend("maxProperties" = 64))]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Extra annotations of the pods. The operator's own annotations (`inferscale.dev/*`) win
    /// over an entry with the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
}
