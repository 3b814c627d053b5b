//! What a GPU cluster needs, asserted on the live objects of a real API server: a vLLM endpoint
//! with several GPUs runs tensor-parallel, and the pod settings (pull secrets, service account,
//! runtime class, priority, spreading, extra metadata) reach the pod templates of both Deployments.
//! Needs a cluster, like tests/k8s.rs:
//!
//!   tests/k8s/with-cluster.sh env INFERSCALE_K8S_TESTS=1 \
//!     cargo test -p inferscale-operator --test gpu

mod common;

use std::time::Duration;

use common::*;
use inferscale_operator::crd::ScalingEndpoint;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Api, PostParams};
use serde_json::json;

const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

const GPU_ENDPOINT: &str = r#"
apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {name: big}
spec:
  model: {name: qwen-72b}
  algorithm: {name: self-consistency}
  worker:
    imagePullSecrets: [regcred]
    serviceAccountName: inferscale-worker
    priorityClassName: inference-high
    topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: topology.kubernetes.io/zone
        whenUnsatisfiable: ScheduleAnyway
        labelSelector:
          matchLabels: {app.kubernetes.io/instance: big, app.kubernetes.io/component: worker}
    podLabels: {team: search}
    podAnnotations: {cost-center: "42"}
  vllm:
    model: Qwen/Qwen2.5-72B-Instruct
    gpus: 2
    shmSize: 16Gi
    imagePullSecrets: [regcred]
    serviceAccountName: vllm
    runtimeClassName: nvidia
    priorityClassName: gpu-high
    podLabels: {team: ml}
    probes:
      startup: {periodSeconds: 20, failureThreshold: 270}
"#;

async fn deployment_template(api: &Api<Deployment>, name: &str) -> (PodTemplateSpec, Option<i32>) {
    let d = eventually(&format!("Deployment {name}"), CHANGE_TIMEOUT, || {
        let api = api.clone();
        async move {
            api.get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not created yet".to_owned())
        }
    })
    .await;
    let spec = d.spec.expect("a Deployment has a spec");
    (spec.template, spec.progress_deadline_seconds)
}

#[tokio::test]
async fn gpu_settings_reach_the_live_pod_templates() {
    if !enabled("gpu_settings_reach_the_live_pod_templates") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "gpu").await;
    let _op = Operator::start(&ns.name);
    apply_manifest(&client, &ns.name, GPU_ENDPOINT).await;
    let deployments: Api<Deployment> = ns.api();

    let (vllm, progress_deadline) = deployment_template(&deployments, "big-vllm").await;
    let meta = vllm.metadata.expect("template metadata");
    let vllm_labels = meta.labels.expect("labels");
    assert_eq!(vllm_labels["team"], "ml");
    assert_eq!(vllm_labels["app.kubernetes.io/component"], "model-server");
    let pod = vllm.spec.expect("pod spec");
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(
        args.contains(&"--tensor-parallel-size=2".to_owned()),
        "{args:?}"
    );
    assert_eq!(
        pod.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()),
        Some("regcred")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("vllm"));
    assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("gpu-high"));
    let shm = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "dshm")
        .and_then(|v| v.empty_dir.clone())
        .and_then(|e| e.size_limit)
        .map(|q| q.0);
    assert_eq!(shm.as_deref(), Some("16Gi"));
    // The startup budget (270 x (20s + 5s timeout)) plus the margin for scheduling and pull.
    assert_eq!(progress_deadline, Some(270 * 25 + 600));

    let (worker, _) = deployment_template(&deployments, "big").await;
    let meta = worker.metadata.expect("template metadata");
    assert_eq!(meta.labels.expect("labels")["team"], "search");
    let annotations = meta.annotations.expect("annotations");
    assert_eq!(annotations["cost-center"], "42");
    assert!(annotations.contains_key("inferscale.dev/config-hash"));
    let pod = worker.spec.expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("inferscale-worker")
    );
    assert_eq!(pod.priority_class_name.as_deref(), Some("inference-high"));
    assert!(pod.runtime_class_name.is_none());
    let spread = pod.topology_spread_constraints.expect("spread constraints");
    assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
    ns.delete().await;
}

/// The operator's own labels select its pods: the API server refuses them in `podLabels`.
#[tokio::test]
async fn reserved_pod_labels_are_refused_at_admission() {
    if !enabled("reserved_pod_labels_are_refused_at_admission") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "gpu-cel").await;
    let api: Api<ScalingEndpoint> = ns.api();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let object = |spec: serde_json::Value| -> ScalingEndpoint {
        serde_json::from_value(json!({
            "apiVersion": "inferscale.dev/v1alpha1", "kind": "ScalingEndpoint",
            "metadata": {"name": "bad"}, "spec": spec,
        }))
        .expect("a ScalingEndpoint")
    };
    for block in ["worker", "vllm"] {
        let mut spec = json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency"}});
        let mut settings = json!({"podLabels": {"app.kubernetes.io/instance": "other"}});
        if block == "vllm" {
            settings["model"] = json!("q");
        }
        spec[block] = settings;
        match api.create(&dry, &object(spec)).await {
            Err(kube::Error::Api(s))
                if s.code == 422
                    && s.message
                        .contains("podLabels must not set the operator's labels") => {}
            other => panic!("{block}.podLabels with a reserved key: {other:?}"),
        }
    }
    // An ordinary extra label is accepted.
    let ok = object(
        json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency"},
                           "worker": {"podLabels": {"team": "search"}}}),
    );
    api.create(&dry, &ok)
        .await
        .expect("an ordinary label is accepted");
    ns.delete().await;
}
