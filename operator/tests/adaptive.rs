//! Adaptive self-consistency and per-request overrides on a real control plane: the CRD's CEL
//! rules refuse nonsense, and valid settings reach the worker's ConfigMap.
//!
//!   tests/k8s/with-cluster.sh env INFERSCALE_K8S_TESTS=1 cargo test -p inferscale-operator --test adaptive

mod common;

use std::time::Duration;

use common::*;
use inferscale_operator::config_rollout::mounted_config_map;
use inferscale_operator::crd::ScalingEndpoint;
use inferscale_worker::config::{AdaptiveRuleName, OverrideKey, WorkerConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;

const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

fn object(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "inferscale.dev/v1alpha1",
        "kind": "ScalingEndpoint",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// The CEL rules of `spec.algorithm.adaptive` refuse each bad value with its message
/// (dry-run creates: validated fully, nothing stored).
#[tokio::test]
async fn cel_refuses_nonsense_adaptive_settings() {
    if !enabled("cel_refuses_nonsense_adaptive_settings") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource::erase::<ScalingEndpoint>(&()),
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let with =
        |algorithm: serde_json::Value| json!({"model": {"name": "m"}, "algorithm": algorithm});
    api.create(
        &dry,
        &object(
            "ok",
            with(json!({"name": "self-consistency", "maxBudget": 8,
                        "adaptive": {"rule": "beta", "threshold": 1, "minSamples": 8, "parallelism": 1},
                        "requestOverride": ["name", "toolVote", "adaptive"]})),
        ),
    )
    .await
    .expect("valid adaptive settings accepted");

    let cases = [
        (
            "threshold 0",
            "adaptive.threshold must be above 0 and at most 1",
            json!({"name": "self-consistency", "adaptive": {"rule": "beta", "threshold": 0}}),
        ),
        (
            "threshold above 1",
            "adaptive.threshold must be above 0 and at most 1",
            json!({"name": "self-consistency", "adaptive": {"rule": "beta", "threshold": 1.5}}),
        ),
        (
            "parallelism 0",
            "adaptive.parallelism must be at least 1",
            json!({"name": "self-consistency", "adaptive": {"rule": "its_hub", "parallelism": 0}}),
        ),
        (
            "minSamples 0",
            "adaptive.minSamples must be at least 1",
            json!({"name": "self-consistency", "adaptive": {"rule": "dirichlet", "minSamples": 0}}),
        ),
        (
            "minSamples above maxBudget",
            "adaptive.minSamples must not exceed maxBudget",
            json!({"name": "self-consistency", "maxBudget": 4, "adaptive": {"rule": "beta", "minSamples": 5}}),
        ),
        (
            "minSamples above the default maxBudget",
            "adaptive.minSamples must not exceed maxBudget",
            json!({"name": "self-consistency", "adaptive": {"rule": "beta", "minSamples": 17}}),
        ),
        (
            "adaptive with best-of-n",
            "adaptive is only valid with algorithm self-consistency",
            json!({"name": "best-of-n", "adaptive": {"rule": "beta"}}),
        ),
    ];
    let mut failures = Vec::new();
    for (case, message, algorithm) in cases {
        let mut spec = with(algorithm);
        spec["judge"] = json!({"name": "j"});
        match api.create(&dry, &object("bad", spec)).await {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(message) => {}
            Err(e) => failures.push(format!("{case}: wrong error: {e}")),
        }
    }
    for (case, algorithm) in [
        (
            "unknown rule",
            json!({"name": "self-consistency", "adaptive": {"rule": "vibes"}}),
        ),
        (
            "unknown override key",
            json!({"name": "self-consistency", "requestOverride": ["budget"]}),
        ),
    ] {
        match api.create(&dry, &object("bad", with(algorithm))).await {
            Err(kube::Error::Api(s)) if s.code == 422 => {}
            other => failures.push(format!("{case}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "CEL cases failed:\n{}",
        failures.join("\n")
    );
}

/// `spec.algorithm.adaptive` and `requestOverride` become the worker's `adaptive` and
/// `allow_request_override`.
#[tokio::test]
async fn adaptive_settings_reach_the_worker_config_map() {
    if !enabled("adaptive_settings_reach_the_worker_config_map") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "adaptive").await;
    let _op = Operator::start(&ns.name);
    let ses: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::api::ApiResource::erase::<ScalingEndpoint>(&()),
    );
    let spec = json!({
        "model": {"name": "m", "provider": "openai-compatible", "endpoint": "http://127.0.0.1:9/v1"},
        "algorithm": {"name": "self-consistency", "maxBudget": 8,
                      "adaptive": {"rule": "its_hub", "threshold": 0.8, "minSamples": 3, "parallelism": 2},
                      "requestOverride": ["adaptive", "toolVote"]},
    });
    ses.create(&PostParams::default(), &object("adapt", spec))
        .await
        .expect("endpoint created");

    let deployments: Api<Deployment> = ns.api();
    let cm_name = eventually("the worker Deployment", CHANGE_TIMEOUT, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments
                .get_opt("adapt")
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "missing".to_owned())?;
            mounted_config_map(&d)
                .map(str::to_owned)
                .ok_or_else(|| "no config volume".to_owned())
        }
    })
    .await;
    let cms: Api<ConfigMap> = ns.api();
    let cm = cms.get(&cm_name).await.expect("the worker ConfigMap");
    let text = cm.data.unwrap_or_default()["config.yaml"].clone();
    let config = WorkerConfig::from_file_text(&text).expect("the ConfigMap holds a worker config");
    let adaptive = config.adaptive.expect("adaptive in the worker config");
    assert_eq!(adaptive.rule, AdaptiveRuleName::ItsHub);
    assert_eq!(adaptive.threshold, Some(0.8));
    assert_eq!(adaptive.min_samples, Some(3));
    assert_eq!(adaptive.parallelism, Some(2));
    assert_eq!(
        config.allow_request_override,
        [OverrideKey::Adaptive, OverrideKey::ToolVote]
    );
    ns.delete().await;
}
