//! The process reward model on a real API server (issue 9): the guide's GPU layout from
//! `deploy/examples/prm-gpu.yaml` (generator on one GPU node, PRM on another) becomes two GPU
//! Deployments scheduled onto the matching fake GPU nodes, workers configured to call the PRM
//! Service, and `RewardModelAvailable`; and step-wise search without a PRM never gets past
//! admission. Needs a cluster, like tests/k8s.rs:
//!
//!   tests/k8s/with-cluster.sh env INFERSCALE_K8S_TESTS=1 \
//!     cargo test -p inferscale-operator --test reward

mod common;

use std::time::Duration;

use common::*;
use inferscale_operator::config_rollout::mounted_config_map;
use inferscale_operator::crd::ScalingEndpoint;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The node a component's (single) pod runs on, once kwok runs it.
async fn running_node(pods: &Api<Pod>, endpoint: &str, component: &str) -> (String, Pod) {
    let lp = ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={endpoint},app.kubernetes.io/component={component}"
    ));
    eventually(
        &format!("the {component} pod to run"),
        CHANGE_TIMEOUT,
        || {
            let pods = pods.clone();
            let lp = lp.clone();
            async move {
                let list = pods.list(&lp).await.map_err(|e| e.to_string())?;
                let [p] = list.items.as_slice() else {
                    return Err(format!("{} pods", list.items.len()));
                };
                let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                match (phase.as_deref(), node) {
                    (Some("Running"), Some(n)) => Ok((n, p.clone())),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
}

/// Waits until the object of that name is gone.
async fn absent<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} to be deleted"), CHANGE_TIMEOUT, || {
        let api = api.clone();
        async move {
            match api.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still exists".to_owned()),
            }
        }
    })
    .await
}

fn args_of(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers[0].args.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_guides_gpu_layout_serves_generator_and_prm_on_their_own_gpu_nodes() {
    if !enabled("the_guides_gpu_layout_serves_generator_and_prm_on_their_own_gpu_nodes") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "prm").await;
    // Both vLLM servers must pass the restricted Pod Security Standard, as the docs promise.
    enforce_restricted_pod_security(&client, &ns.name).await;
    let _op = Operator::start(&ns.name);
    apply_manifest(&client, &ns.name, &read_example("prm-gpu")).await;

    let ses: Api<ScalingEndpoint> = ns.api();
    let se = wait_ready(&ses, "qwen-math", READY_TIMEOUT).await;
    for t in ["ModelServerAvailable", "RewardModelAvailable"] {
        let c = condition(&se, t).unwrap_or_else(|| panic!("no {t} condition"));
        assert_eq!(
            (c.0.as_str(), c.1.as_str()),
            ("True", "Available"),
            "{t}: {c:?}"
        );
    }
    let status = se.status.clone().unwrap_or_default();
    assert_eq!(
        status.reward_model.map(|r| (r.desired, r.ready)),
        Some((1, 1))
    );

    // Two GPU Deployments, each on the node its own selector names: the generator on the A100
    // node, the PRM on the tainted H100 node that only its toleration lets it onto.
    let pods: Api<Pod> = ns.api();
    let (gen_node, gen_pod) = running_node(&pods, "qwen-math", "model-server").await;
    let (prm_node, prm_pod) = running_node(&pods, "qwen-math", "reward-model").await;
    assert_eq!(gen_node, "gpu-0", "the generator goes to the A100 node");
    assert_eq!(prm_node, "gpu-1", "the PRM goes to the tainted H100 node");
    for pod in [&gen_pod, &prm_pod] {
        let ctr = &pod.spec.as_ref().unwrap().containers[0];
        let limits = ctr.resources.clone().unwrap().limits.unwrap();
        assert_eq!(limits["nvidia.com/gpu"].0, "1");
    }
    let prm_args = args_of(&prm_pod);
    assert_eq!(prm_args[0], "Qwen/Qwen2.5-Math-PRM-7B");
    assert!(
        prm_args.windows(2).any(|w| w == ["--runner", "pooling"]),
        "{prm_args:?}"
    );
    assert!(!args_of(&gen_pod).iter().any(|a| a.starts_with("--runner")));
    let deployments: Api<Deployment> = ns.api();
    let prm = deployments.get("qwen-math-prm").await.unwrap();
    let prm_spec = prm.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        prm_spec.node_selector.unwrap()["nvidia.com/gpu.product"],
        "NVIDIA-H100-80GB-HBM3"
    );
    assert_eq!(
        prm_spec.tolerations.unwrap()[0].key.as_deref(),
        Some("nvidia.com/gpu")
    );
    let svc: Service = ns.api().get("qwen-math-prm").await.unwrap();
    assert_eq!(
        svc.spec.unwrap().selector.unwrap()["app.kubernetes.io/component"],
        "reward-model"
    );

    // The PRM has its own generated key; the workers mount it and the config names the file.
    let secrets: Api<Secret> = ns.api();
    let key = secrets.get("qwen-math-prm-key").await.unwrap();
    let key_value = String::from_utf8(key.data.unwrap()["api-key"].0.clone()).unwrap();
    assert_eq!(key_value.len(), 64);
    let worker = deployments.get("qwen-math").await.unwrap();
    let cm_name = mounted_config_map(&worker).expect("the workers mount a config");
    let cm: ConfigMap = ns.api().get(cm_name).await.unwrap();
    let config = cm.data.unwrap()["config.yaml"].clone();
    let parsed: serde_json::Value = serde_yaml::from_str(&config).expect("the config is YAML");
    let field = |name: &str| parsed[name].clone();
    assert_eq!(field("alg"), json!("particle-filtering"), "{config}");
    assert_eq!(field("rm_name"), json!("Qwen/Qwen2.5-Math-PRM-7B"));
    assert_eq!(
        field("rm_endpoint"),
        json!(format!("http://qwen-math-prm.{}.svc:8000", ns.name))
    );
    assert_eq!(
        field("rm_api_key"),
        json!({"file": "/etc/inferscale/secrets/qwen-math-prm-key/api-key"})
    );
    assert_eq!(field("stop_token"), json!("\\boxed"));
    assert_eq!(
        field("rm_step_tag"),
        json!("<extra_0>"),
        "the example sets the tag"
    );
    assert!(
        !config.contains(&key_value),
        "the PRM key leaked into the ConfigMap"
    );
    let mounted: Vec<String> = worker
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.secret.and_then(|s| s.secret_name))
        .collect();
    assert!(
        mounted.contains(&"qwen-math-prm-key".to_owned()),
        "{mounted:?}"
    );

    // Two PRM pods get a disruption budget of their own (one pod at a time on a drain).
    ses.patch(
        "qwen-math",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"reward": {"vllm": {"replicas": 2}}}})),
    )
    .await
    .unwrap();
    let pdbs: Api<PodDisruptionBudget> = ns.api();
    let pdb = eventually("the PRM's PodDisruptionBudget", CHANGE_TIMEOUT, || {
        let pdbs = pdbs.clone();
        async move {
            pdbs.get_opt("qwen-math-prm")
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not created yet".to_owned())
        }
    })
    .await;
    let selector = pdb.spec.unwrap().selector.unwrap().match_labels.unwrap();
    assert_eq!(selector["app.kubernetes.io/component"], "reward-model");
    assert!(pdbs.get_opt("qwen-math-vllm").await.unwrap().is_none());

    // Dropping spec.reward.vllm for an external endpoint removes the PRM server and its budget.
    ses.patch(
        "qwen-math",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"reward": {"vllm": null, "endpoint": "http://prm.ml.svc:8000"}}}),
        ),
    )
    .await
    .unwrap();
    absent(&deployments, "qwen-math-prm").await;
    absent(&ns.api::<Service>(), "qwen-math-prm").await;
    absent(&pdbs, "qwen-math-prm").await;
    let se = wait_ready(&ses, "qwen-math", READY_TIMEOUT).await;
    let c = condition(&se, "RewardModelAvailable").unwrap();
    assert_eq!((c.0.as_str(), c.1.as_str()), ("True", "ExternalEndpoint"));
    ns.delete().await;
}

/// Step-wise search without a reward model, or with a contradictory one, is refused by the API
/// server itself, with the rule's message: the user sees it at `kubectl apply`.
#[tokio::test]
async fn step_wise_search_without_a_reward_model_is_refused_at_admission() {
    if !enabled("step_wise_search_without_a_reward_model_is_refused_at_admission") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "prm-cel").await;
    let gvk = GroupVersionKind::gvk("inferscale.dev", "v1alpha1", "ScalingEndpoint");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "scalingendpoints");
    // Untyped, so the client sends exactly what a user's YAML says.
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let object = |spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "inferscale.dev/v1alpha1", "kind": "ScalingEndpoint",
            "metadata": {"name": "bad"}, "spec": spec,
        }))
        .expect("an object")
    };
    let prm = json!({"model": "prm", "endpoint": "http://prm.ml.svc:8000"});
    let refused = [
        (
            json!({"model": {"name": "m"}, "algorithm": {"name": "particle-filtering"}}),
            "algorithm particle-filtering and beam-search need a process reward model: set spec.reward",
        ),
        (
            json!({"model": {"name": "m"}, "algorithm": {"name": "beam-search", "beamWidth": 2}}),
            "algorithm particle-filtering and beam-search need a process reward model: set spec.reward",
        ),
        (
            json!({"model": {"name": "m"}, "algorithm": {"name": "best-of-n"}}),
            "algorithm best-of-n needs a judge or a reward model: set spec.judge or spec.reward",
        ),
        (
            json!({"model": {"name": "m"}, "algorithm": {"name": "particle-filtering"},
                   "reward": {"model": "prm", "endpoint": "http://prm.ml.svc:8000", "vllm": {"model": "x"}}}),
            "spec.reward needs exactly one of endpoint",
        ),
        (
            json!({"model": {"name": "m"}, "algorithm": {"name": "particle-filtering", "beamWidth": 2}, "reward": prm}),
            "beamWidth is only valid with algorithm beam-search",
        ),
        (
            json!({"model": {"name": "m"}, "algorithm": {"name": "beam-search", "beamWidth": 3, "maxBudget": 16}, "reward": prm}),
            "maxBudget and defaultBudget must be multiples of beamWidth",
        ),
        (
            json!({"model": {"name": "m"}, "algorithm": {"name": "particle-filtering", "maxSteps": 257}, "reward": prm}),
            "maxSteps",
        ),
        (
            json!({"model": {"name": "m"}, "algorithm": {"name": "particle-filtering", "stepToken": ""}, "reward": prm}),
            "stepToken must not be empty",
        ),
    ];
    for (spec, message) in refused {
        match api.create(&dry, &object(spec.clone())).await {
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(message) => {}
            other => panic!("{spec}: expected a 422 naming {message:?}, got {other:?}"),
        }
    }
    for ok in [
        json!({"model": {"name": "m"}, "algorithm": {"name": "particle-filtering"}, "reward": prm}),
        json!({"model": {"name": "m"}, "algorithm": {"name": "beam-search", "beamWidth": 4, "defaultBudget": 8}, "reward": prm}),
        json!({"model": {"name": "m"}, "algorithm": {"name": "best-of-n"}, "reward": prm}),
    ] {
        api.create(&dry, &object(ok.clone()))
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    ns.delete().await;
}
