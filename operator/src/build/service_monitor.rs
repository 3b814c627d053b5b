//! A prometheus-operator ServiceMonitor for the workers' `/metrics` (a dynamic object: the
//! operator does not depend on the prometheus-operator CRDs being installed).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

use super::{Component, child_meta, selector_labels};
use crate::layout::Names;

/// monitoring.coreos.com/v1 ServiceMonitor.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

pub fn build(names: &Names, owner: &OwnerReference, interval: Option<&str>) -> DynamicObject {
    let mut endpoint = serde_json::json!({"port": "http", "path": "/metrics"});
    if let Some(i) = interval {
        endpoint["interval"] = serde_json::Value::String(i.to_owned());
    }
    let mut obj = DynamicObject::new(&names.worker(), &api_resource());
    obj.metadata = child_meta(names.worker(), names, Component::Worker, owner);
    obj.data = serde_json::json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(names, Component::Worker)},
            "endpoints": [endpoint],
        }
    });
    obj
}
