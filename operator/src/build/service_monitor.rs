//! prometheus-operator ServiceMonitors for the workers' `/metrics` and, with `vllm`, for vLLM's
//! (`vllm:*` metrics; vLLM serves `/metrics` without its API key). Dynamic objects: the operator
//! does not depend on the prometheus-operator CRDs being installed.

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

/// The workers' ServiceMonitor `<name>`.
pub fn build(names: &Names, owner: &OwnerReference, interval: Option<&str>) -> DynamicObject {
    monitor(names.worker(), names, owner, Component::Worker, interval)
}

/// vLLM's ServiceMonitor `<name>-vllm`, on the `<name>-vllm` Service.
pub fn vllm(names: &Names, owner: &OwnerReference, interval: Option<&str>) -> DynamicObject {
    monitor(names.vllm(), names, owner, Component::ModelServer, interval)
}

fn monitor(
    name: String,
    names: &Names,
    owner: &OwnerReference,
    component: Component,
    interval: Option<&str>,
) -> DynamicObject {
    let mut endpoint = serde_json::json!({"port": "http", "path": "/metrics"});
    if let Some(i) = interval {
        endpoint["interval"] = serde_json::Value::String(i.to_owned());
    }
    let mut obj = DynamicObject::new(&name, &api_resource());
    obj.metadata = child_meta(name, names, component, owner);
    obj.data = serde_json::json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(names, component)},
            "endpoints": [endpoint],
        }
    });
    obj
}

#[cfg(test)]
mod tests {
    use crate::build::{self, OperatorDefaults, fixtures::endpoint};
    use crate::dereference::Secrets;
    use crate::validate::validate;

    fn children(yaml: &str) -> build::Children {
        let se = endpoint(yaml);
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        build::build(&se, &resolved, &OperatorDefaults::default()).unwrap()
    }

    const MONITORED: &str = "metadata: {name: ep}\nspec:\n  model: {name: qwen}\n  algorithm: {name: self-consistency}\n  vllm: {model: Qwen/Qwen2.5-7B-Instruct}\n  metrics: {serviceMonitor: {enabled: true, interval: 15s}}\n";

    #[test]
    fn vllm_gets_its_own_monitor_on_its_service() {
        let c = children(MONITORED);
        let sm = c.vllm_service_monitor.expect("a vLLM ServiceMonitor");
        assert_eq!(sm.metadata.name.as_deref(), Some("ep-vllm"));
        let spec = &sm.data["spec"];
        assert_eq!(
            spec["selector"]["matchLabels"]["app.kubernetes.io/component"],
            "model-server"
        );
        assert_eq!(
            spec["endpoints"],
            serde_json::json!([{"port": "http", "path": "/metrics", "interval": "15s"}])
        );
        let worker = c.service_monitor.expect("the workers' ServiceMonitor");
        assert_eq!(worker.metadata.name.as_deref(), Some("ep"));
    }

    #[test]
    fn no_vllm_monitor_without_vllm_or_without_monitoring() {
        let without_vllm = MONITORED.replace("  vllm: {model: Qwen/Qwen2.5-7B-Instruct}\n", "");
        assert!(children(&without_vllm).vllm_service_monitor.is_none());
        let off = MONITORED.replace("enabled: true", "enabled: false");
        assert!(children(&off).vllm_service_monitor.is_none());
    }
}
