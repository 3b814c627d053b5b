//! Integration tests against a real control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok with fake CPU and GPU nodes; see tests/k8s/). Each test creates its own
//! namespace and runs the built `inferscale-operator` binary as a child process watching it.
//!
//!   tests/k8s/with-cluster.sh env INFERSCALE_K8S_TESTS=1 cargo test -p inferscale-operator -- --test-threads=2

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use inferscale_operator::config_rollout::mounted_config_map;
use inferscale_operator::crd::ScalingEndpoint;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
const HASH_ANNOTATION: &str = "inferscale.dev/config-hash";

/// Gets a child and checks it is controlled by the endpoint.
async fn owned<K>(api: &Api<K>, name: &str, se: &ScalingEndpoint) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let obj = eventually(&format!("child {name}"), CHANGE_TIMEOUT, || {
        let api = api.clone();
        async move {
            api.get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "missing".to_owned())
        }
    })
    .await;
    let refs = obj.owner_references();
    assert_eq!(refs.len(), 1, "{name}: one owner reference: {refs:?}");
    let r = &refs[0];
    assert_eq!(r.kind, "ScalingEndpoint");
    assert_eq!(r.api_version, "inferscale.dev/v1alpha1");
    assert_eq!(Some(&r.uid), se.metadata.uid.as_ref(), "{name}: owner uid");
    assert_eq!(r.controller, Some(true), "{name}: controller reference");
    assert_eq!(r.block_owner_deletion, Some(true));
    obj
}

async fn absent<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} to be gone"), CHANGE_TIMEOUT, || {
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

/// The worker ConfigMap a Deployment's pod template mounts.
fn config_map_of(d: &Deployment) -> String {
    mounted_config_map(d).expect("a config volume").to_owned()
}

/// Every string value of the Secrets in a manifest (to prove none leaks into ConfigMaps).
fn secret_values(manifest: &str) -> Vec<String> {
    documents(manifest)
        .into_iter()
        .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == "Secret"))
        .flat_map(|o| {
            o.data["stringData"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str())
                        .flat_map(|s| s.lines().map(str::to_owned).collect::<Vec<_>>())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .filter(|v| !v.trim().is_empty())
        .collect()
}

struct Expect {
    endpoint: &'static str,
    worker_secrets: &'static [&'static str],
    pdb: bool,
    hpa: bool,
    vllm: bool,
}

/// Applies an example and checks its children, their owner references and the status.
async fn example(file: &str, expect: Expect) {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, &file[..file.len().min(12)]).await;
    let _op = Operator::start(&ns.name);
    let manifest = read_example(file);
    apply_manifest(&client, &ns.name, &manifest).await;

    let ses: Api<ScalingEndpoint> = ns.api();
    let name = expect.endpoint;
    let se = wait_ready(&ses, name, READY_TIMEOUT).await;
    let status = se.status.clone().unwrap_or_default();
    assert_eq!(
        status.url.as_deref(),
        Some(format!("http://{name}.{}.svc:8108/v1", ns.name).as_str())
    );
    for t in ["ConfigValid", "WorkersAvailable"] {
        assert_eq!(
            condition(&se, t).map(|c| c.0).as_deref(),
            Some("True"),
            "{t}"
        );
    }

    // ConfigMap: the worker's config, with Secret paths and never Secret values; immutable and
    // named by its content, as the worker pod template mounts it.
    let cm_name = config_map_of(&owned(&ns.api(), name, &se).await);
    assert!(cm_name.starts_with(&format!("{name}-config-")), "{cm_name}");
    let cm: ConfigMap = owned(&ns.api(), &cm_name, &se).await;
    assert_eq!(cm.immutable, Some(true));
    let config = cm.data.unwrap_or_default()["config.yaml"].clone();
    assert!(config.contains("log_format: json"), "{config}");
    for v in secret_values(&manifest) {
        assert!(
            !config.contains(&v),
            "secret value {v:?} leaked into the ConfigMap"
        );
    }
    for s in expect.worker_secrets {
        assert!(
            config.contains(&format!("/etc/inferscale/secrets/{s}/")),
            "config references secret {s}: {config}"
        );
    }

    // Worker Deployment: hash annotation, whole-Secret volumes, no secret env values.
    let d: Deployment = owned(&ns.api(), name, &se).await;
    let tpl = d.spec.clone().unwrap().template;
    let ann = tpl.metadata.unwrap().annotations.unwrap_or_default();
    assert_eq!(ann.get(HASH_ANNOTATION), status.config_hash.as_ref());
    let pod = tpl.spec.unwrap();
    let mounted: BTreeSet<String> = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.secret.and_then(|s| s.secret_name))
        .collect();
    let wanted: BTreeSet<String> = expect
        .worker_secrets
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(mounted, wanted);
    assert!(pod.containers[0].env.is_none(), "no env on the worker");

    let svc: Service = owned(&ns.api(), name, &se).await;
    let port = &svc.spec.unwrap().ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8108));

    let pdbs: Api<PodDisruptionBudget> = ns.api();
    if expect.pdb {
        owned(&pdbs, name, &se).await;
    } else {
        assert!(pdbs.get_opt(name).await.unwrap().is_none());
    }
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    if expect.hpa {
        let hpa = owned(&hpas, name, &se).await;
        assert_eq!(hpa.spec.unwrap().scale_target_ref.name, name);
    } else {
        assert!(hpas.get_opt(name).await.unwrap().is_none());
    }

    if expect.vllm {
        let vname = format!("{name}-vllm");
        let vd: Deployment = owned(&ns.api(), &vname, &se).await;
        let vspec = vd.spec.unwrap();
        assert_eq!(vspec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        owned::<Service>(&ns.api(), &vname, &se).await;
        assert_eq!(
            condition(&se, "ModelServerAvailable")
                .map(|c| c.0)
                .as_deref(),
            Some("True")
        );
        assert!(config.contains(&format!("http://{vname}.{}.svc:8000/v1", ns.name)));
        // kwok runs the pod: it must be on the one GPU node that matches the nodeSelector
        // (gpu-1, an H100 node, tainted; the toleration lets it in).
        let pods: Api<Pod> = ns.api();
        let lp = ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={name},app.kubernetes.io/component=model-server"
        ));
        let node = eventually("the vLLM pod to run", CHANGE_TIMEOUT, || {
            let pods = pods.clone();
            let lp = lp.clone();
            async move {
                let list = pods.list(&lp).await.map_err(|e| e.to_string())?;
                let p = list.items.first().ok_or("no vLLM pod")?;
                let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                match (phase.as_deref(), node) {
                    (Some("Running"), Some(n)) => Ok(n),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        assert_eq!(node, "gpu-1", "vLLM must land on the matching GPU node");
        let pod = pods.list(&lp).await.unwrap().items.remove(0);
        let ctr = &pod.spec.unwrap().containers[0];
        let limits = ctr.resources.clone().unwrap().limits.unwrap();
        assert_eq!(limits["nvidia.com/gpu"].0, "1");
    } else {
        assert!(condition(&se, "ModelServerAvailable").is_none());
    }
    ns.delete().await;
}

#[tokio::test]
async fn example_openai_self_consistency() {
    if !enabled("example_openai_self_consistency") {
        return;
    }
    example(
        "openai-self-consistency",
        Expect {
            endpoint: "openai-sc",
            worker_secrets: &["openai"],
            pdb: true,
            hpa: false,
            vllm: false,
        },
    )
    .await;
}

#[tokio::test]
async fn example_openai_best_of_n() {
    if !enabled("example_openai_best_of_n") {
        return;
    }
    example(
        "openai-best-of-n",
        Expect {
            endpoint: "openai-bon",
            worker_secrets: &["openai-bon"],
            pdb: true,
            hpa: true,
            vllm: false,
        },
    )
    .await;
}

#[tokio::test]
async fn example_bedrock() {
    if !enabled("example_bedrock") {
        return;
    }
    example(
        "bedrock",
        Expect {
            endpoint: "bedrock-claude",
            worker_secrets: &["aws-bedrock", "inferscale-clients"],
            pdb: false,
            hpa: false,
            vllm: false,
        },
    )
    .await;
}

#[tokio::test]
async fn example_vllm_gpu() {
    if !enabled("example_vllm_gpu") {
        return;
    }
    example(
        "vllm-gpu",
        Expect {
            endpoint: "qwen-local",
            // vLLM's API key, generated by the operator, is the workers' upstream key.
            worker_secrets: &["qwen-local-vllm-key"],
            pdb: true,
            hpa: false,
            vllm: true,
        },
    )
    .await;
}

/// The ServiceMonitor condition of the best-of-n example (no prometheus-operator here).
#[tokio::test]
async fn service_monitor_without_its_crd_is_a_clear_condition() {
    if !enabled("service_monitor_without_its_crd_is_a_clear_condition") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "sm").await;
    let _op = Operator::start(&ns.name);
    apply_manifest(&client, &ns.name, &read_example("openai-best-of-n")).await;
    let se = wait_ready(&ns.api(), "openai-bon", READY_TIMEOUT).await;
    let (status, reason, message) = condition(&se, "ServiceMonitorReady").expect("condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CRDNotInstalled")
    );
    assert!(message.contains("monitoring.coreos.com"), "{message}");
    ns.delete().await;
}

/// Each CEL rule of the CRD rejects a bad object with its message (dry-run creates: the API
/// server validates them fully without storing anything).
#[tokio::test]
async fn cel_rules_reject_invalid_objects() {
    if !enabled("cel_rules_reject_invalid_objects") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource::erase::<ScalingEndpoint>(&()),
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let object = |name: &str, spec: serde_json::Value| -> kube::api::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "inferscale.dev/v1alpha1",
            "kind": "ScalingEndpoint",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap()
    };
    let base =
        || json!({"model": {"name": "gpt-4o-mini"}, "algorithm": {"name": "self-consistency"}});

    // A valid object is accepted, so the rejections below are about the rule under test.
    api.create(&dry, &object("ok", base()))
        .await
        .expect("valid object accepted");

    let cases: Vec<(&str, &str, serde_json::Value)> = vec![
        (
            "best-of-n needs a judge",
            "algorithm best-of-n needs a judge",
            json!({"model": {"name": "m"}, "algorithm": {"name": "best-of-n"}}),
        ),
        (
            "toolVote only with self-consistency",
            "toolVote, excludeArgs and regexPatterns are only valid with algorithm self-consistency",
            json!({"model": {"name": "m"}, "algorithm": {"name": "best-of-n", "toolVote": "tool_name"},
                   "judge": {"name": "j"}}),
        ),
        (
            "excludeArgs only with self-consistency",
            "toolVote, excludeArgs and regexPatterns are only valid with algorithm self-consistency",
            json!({"model": {"name": "m"}, "algorithm": {"name": "best-of-n", "excludeArgs": ["id"]},
                   "judge": {"name": "j"}}),
        ),
        (
            "defaultBudget >= 1",
            "budgets must satisfy 1 <= defaultBudget <= maxBudget <= 1000",
            json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency", "defaultBudget": 0}}),
        ),
        (
            "defaultBudget <= maxBudget",
            "budgets must satisfy 1 <= defaultBudget <= maxBudget <= 1000",
            json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency", "defaultBudget": 9, "maxBudget": 8}}),
        ),
        (
            "maxBudget <= 1000",
            "budgets must satisfy 1 <= defaultBudget <= maxBudget <= 1000",
            json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency", "maxBudget": 1001}}),
        ),
        (
            "secret ref needs a key",
            "a secret reference needs both name and key",
            json!({"model": {"name": "m", "apiKeySecretRef": {"name": "openai"}}, "algorithm": {"name": "self-consistency"}}),
        ),
        (
            "secret ref needs a name",
            "a secret reference needs both name and key",
            json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency"},
                   "auth": {"apiKeysSecretRef": {"key": "keys"}}}),
        ),
        (
            "aws secret ref needs a name",
            "a secret reference needs both name and key",
            json!({"model": {"name": "bedrock/x", "aws": {"region": "us-east-1", "credentialsSecretRef": {"sessionTokenKey": "t"}}},
                   "algorithm": {"name": "self-consistency"}}),
        ),
        (
            "gpus >= 1",
            "vllm.gpus must be at least 1",
            json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency"}, "vllm": {"model": "Qwen/Qwen2.5-0.5B", "gpus": 0}}),
        ),
        (
            "endpoint is auto or a URL",
            "endpoint must be 'auto' or an http(s) URL",
            json!({"model": {"name": "m", "endpoint": "localhost:8000"}, "algorithm": {"name": "self-consistency"}}),
        ),
        (
            "no external endpoint with vllm",
            "model.endpoint must be unset or 'auto' when vllm is set",
            json!({"model": {"name": "m", "endpoint": "http://x:1/v1"}, "algorithm": {"name": "self-consistency"}, "vllm": {"model": "q"}}),
        ),
        (
            "autoscaling min <= max",
            "worker.autoscaling.minReplicas must not exceed maxReplicas",
            json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency"},
                   "worker": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}),
        ),
        (
            "cache is a PVC or an emptyDir",
            "vllm.cache needs exactly one of persistentVolumeClaim, emptyDirSize or pvc",
            json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency"},
                   "vllm": {"model": "q", "cache": {"persistentVolumeClaim": "p", "emptyDirSize": "1Gi"}}}),
        ),
        (
            "model name not empty",
            "model name must not be empty",
            json!({"model": {"name": ""}, "algorithm": {"name": "self-consistency"}}),
        ),
    ];
    let mut failures = Vec::new();
    for (case, message, spec) in cases {
        match api.create(&dry, &object("bad", spec)).await {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(message) => {}
            Err(e) => failures.push(format!("{case}: wrong error: {e}")),
        }
    }
    // The name rule: child Service names must be DNS-1035 labels.
    match api.create(&dry, &object("has.dots", base())).await {
        Err(kube::Error::Api(s))
            if s.message.contains("metadata.name must be a DNS-1035 label") => {}
        other => failures.push(format!("dotted name: {other:?}")),
    }
    assert!(
        failures.is_empty(),
        "CEL cases failed:\n{}",
        failures.join("\n")
    );
}

/// Deleting a child recreates it; editing the spec updates the children (generation and
/// observedGeneration move); the scale subresource drives the workers; children the spec no
/// longer asks for are removed; deleting the endpoint garbage-collects everything.
#[tokio::test]
async fn children_follow_the_spec_and_are_garbage_collected() {
    if !enabled("children_follow_the_spec_and_are_garbage_collected") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "life").await;
    let _op = Operator::start(&ns.name);
    apply_manifest(&client, &ns.name, &read_example("openai-self-consistency")).await;
    let ses: Api<ScalingEndpoint> = ns.api();
    let name = "openai-sc";
    let se = wait_ready(&ses, name, READY_TIMEOUT).await;
    let deployments: Api<Deployment> = ns.api();
    let config_maps: Api<ConfigMap> = ns.api();
    let services: Api<Service> = ns.api();
    let pdbs: Api<PodDisruptionBudget> = ns.api();

    // Deleted children come back (new uid), still controlled by the endpoint.
    for kind in ["Deployment", "ConfigMap", "Service"] {
        let (old_uid, child) = match kind {
            "Deployment" => (owned(&deployments, name, &se).await.uid(), name.to_owned()),
            "ConfigMap" => {
                let cm = config_map_of(&owned(&deployments, name, &se).await);
                (owned(&config_maps, &cm, &se).await.uid(), cm)
            }
            _ => (owned(&services, name, &se).await.uid(), name.to_owned()),
        };
        let dp = DeleteParams::foreground();
        match kind {
            "Deployment" => drop(deployments.delete(&child, &dp).await.unwrap()),
            "ConfigMap" => drop(config_maps.delete(&child, &dp).await.unwrap()),
            _ => drop(services.delete(&child, &dp).await.unwrap()),
        }
        eventually(
            &format!("{kind} {child} to be recreated"),
            CHANGE_TIMEOUT,
            || {
                let (deployments, config_maps, services) =
                    (deployments.clone(), config_maps.clone(), services.clone());
                let (child, old_uid) = (child.clone(), old_uid.clone());
                async move {
                    let uid = match kind {
                        "Deployment" => deployments
                            .get_opt(&child)
                            .await
                            .map(|o| o.and_then(|o| o.uid())),
                        "ConfigMap" => config_maps
                            .get_opt(&child)
                            .await
                            .map(|o| o.and_then(|o| o.uid())),
                        _ => services
                            .get_opt(&child)
                            .await
                            .map(|o| o.and_then(|o| o.uid())),
                    }
                    .map_err(|e| e.to_string())?;
                    match uid {
                        Some(u) if Some(&u) != old_uid.as_ref() => Ok(()),
                        other => Err(format!("uid {other:?}")),
                    }
                }
            },
        )
        .await;
    }
    let first_cm = config_map_of(&owned(&deployments, name, &se).await);

    // Edit the spec: one worker (so the PDB goes), another default budget.
    let gen1 = se.metadata.generation.unwrap();
    ses.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"worker": {"replicas": 1}, "algorithm": {"defaultBudget": 7}}}),
        ),
    )
    .await
    .unwrap();
    let se = wait_ready(&ses, name, READY_TIMEOUT).await;
    assert_eq!(se.metadata.generation, Some(gen1 + 1));
    assert_eq!(
        se.status.as_ref().unwrap().observed_generation,
        Some(gen1 + 1)
    );
    let rolled = eventually(
        "the Deployment to mount the new config",
        CHANGE_TIMEOUT,
        || {
            let deployments = deployments.clone();
            let first_cm = first_cm.clone();
            async move {
                let d = deployments.get(name).await.map_err(|e| e.to_string())?;
                (config_map_of(&d) != first_cm)
                    .then_some(d)
                    .ok_or_else(|| "still the first ConfigMap".to_owned())
            }
        },
    )
    .await;
    let cm = owned(&config_maps, &config_map_of(&rolled), &se).await;
    assert!(cm.data.unwrap()["config.yaml"].contains("budget: 7"));
    let d = owned(&deployments, name, &se).await;
    assert_eq!(d.spec.unwrap().replicas, Some(1));
    absent(&pdbs, name).await;

    // The scale subresource of the endpoint drives the workers (kubectl scale se/openai-sc).
    ses.patch_scale(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    eventually(
        "3 workers through the scale subresource",
        READY_TIMEOUT,
        || {
            let ses = ses.clone();
            async move {
                let scale = ses.get_scale(name).await.map_err(|e| e.to_string())?;
                let st = scale.status.unwrap_or_default();
                (st.replicas == 3 && st.selector.is_some())
                    .then_some(())
                    .ok_or_else(|| format!("scale status {st:?}"))
            }
        },
    )
    .await;
    let se = wait_ready(&ses, name, READY_TIMEOUT).await;
    assert_eq!(se.status.as_ref().unwrap().workers.unwrap().ready, 3);
    owned(&pdbs, name, &se).await;

    // Deleting the endpoint lets the garbage collector remove every child.
    ses.delete(name, &DeleteParams::background()).await.unwrap();
    absent(&deployments, name).await;
    absent(&services, name).await;
    absent(&config_maps, &config_map_of(&rolled)).await;
    absent(&config_maps, &first_cm).await;
    absent(&pdbs, name).await;
    ns.delete().await;
}

/// Rotating a referenced Secret changes the pod-template hash, which rolls the workers.
#[tokio::test]
async fn secret_rotation_rolls_the_workers() {
    if !enabled("secret_rotation_rolls_the_workers") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "rotate").await;
    let _op = Operator::start(&ns.name);
    apply_manifest(&client, &ns.name, &read_example("openai-self-consistency")).await;
    let ses: Api<ScalingEndpoint> = ns.api();
    let se = wait_ready(&ses, "openai-sc", READY_TIMEOUT).await;
    let deployments: Api<Deployment> = ns.api();
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(HASH_ANNOTATION).cloned())
    };
    let before = owned(&deployments, "openai-sc", &se).await;
    let old_hash = hash(&before).expect("hash annotation");
    let cm_before: ConfigMap = ns.api().get(&config_map_of(&before)).await.unwrap();

    let secrets: Api<Secret> = ns.api();
    secrets
        .patch(
            "openai",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "openai"},
                "stringData": {"api-key": "sk-ROTATED"},
            })),
        )
        .await
        .unwrap();
    let after = eventually("a new pod-template hash", CHANGE_TIMEOUT, || {
        let deployments = deployments.clone();
        let old_hash = old_hash.clone();
        async move {
            let d = deployments
                .get("openai-sc")
                .await
                .map_err(|e| e.to_string())?;
            match hash(&d) {
                Some(h) if h != old_hash => Ok(d),
                other => Err(format!("hash {other:?}")),
            }
        }
    })
    .await;
    // The template changed, so the Deployment rolls to a new ReplicaSet.
    assert!(after.metadata.generation > before.metadata.generation);
    let se = wait_ready(&ses, "openai-sc", READY_TIMEOUT).await;
    assert_eq!(se.status.unwrap().config_hash, hash(&after));
    // The config itself did not change: only the Secret did, and its value is not in it.
    // Same content, same ConfigMap: the new pods mount the one the old pods had.
    assert_eq!(config_map_of(&after), config_map_of(&before));
    let cm_after: ConfigMap = ns.api().get(&config_map_of(&after)).await.unwrap();
    assert_eq!(cm_before.uid(), cm_after.uid());
    ns.delete().await;
}

/// A missing Secret (or key) is a condition and an Event; creating it makes the endpoint Ready
/// without restarting the operator.
#[tokio::test]
async fn missing_secret_is_reported_then_recovered() {
    if !enabled("missing_secret_is_reported_then_recovered") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "missing").await;
    let mut op = Operator::start(&ns.name);
    let pid = op.pid();
    apply_manifest(
        &client,
        &ns.name,
        r#"
apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {name: late}
spec:
  model: {name: gpt-4o-mini, provider: openai, apiKeySecretRef: {name: late-openai, key: api-key}}
  algorithm: {name: self-consistency}
"#,
    )
    .await;
    let ses: Api<ScalingEndpoint> = ns.api();
    let not_ready = |expect: &'static str| {
        let ses = ses.clone();
        move || {
            let ses = ses.clone();
            async move {
                let se = ses.get("late").await.map_err(|e| e.to_string())?;
                match condition(&se, "Ready") {
                    Some((s, r, m))
                        if s == "False" && r == "SecretNotFound" && m.contains(expect) =>
                    {
                        Ok(se)
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        }
    };
    let se = eventually(
        "Ready=False SecretNotFound",
        CHANGE_TIMEOUT,
        not_ready(r#"secret "late-openai" not found"#),
    )
    .await;
    assert_eq!(
        condition(&se, "ConfigValid").map(|c| (c.0, c.1)),
        Some(("False".to_owned(), "SecretNotFound".to_owned()))
    );
    // Nothing is created from an invalid spec.
    let deployments: Api<Deployment> = ns.api();
    assert!(deployments.get_opt("late").await.unwrap().is_none());

    // A Warning Event on the endpoint says the same.
    wait_for_warning(&ns, "SecretNotFound", "late", "late-openai", CHANGE_TIMEOUT).await;

    // The Secret appears, but without the key: the message names the key.
    let secrets: Api<Secret> = ns.api();
    let put = |data: serde_json::Value| {
        let secrets = secrets.clone();
        async move {
            secrets
                .patch(
                    "late-openai",
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(json!({
                        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late-openai"},
                        "stringData": data,
                    })),
                )
                .await
                .unwrap();
        }
    };
    put(json!({"wrong-key": "x"})).await;
    eventually(
        "the missing key to be named",
        CHANGE_TIMEOUT,
        not_ready(r#"secret "late-openai" has no key "api-key""#),
    )
    .await;

    // With the key, the endpoint becomes Ready, served by the same operator process.
    put(json!({"api-key": "sk-late"})).await;
    wait_ready(&ses, "late", READY_TIMEOUT).await;
    assert!(op.is_running(), "the operator was not restarted");
    assert_eq!(op.pid(), pid);
    ns.delete().await;
}

async fn lease_holder(leases: Api<Lease>) -> Result<String, String> {
    leases
        .get_opt("inferscale-operator")
        .await
        .map_err(|e| e.to_string())?
        .and_then(|l| l.spec.and_then(|s| s.holder_identity))
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "no holder".to_owned())
}

/// Two replicas on one Lease: one leads; when it dies without releasing, the other takes over
/// once the Lease expires and reconciles.
#[tokio::test]
async fn a_standby_takes_over_the_lease() {
    if !enabled("a_standby_takes_over_the_lease") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "lease").await;
    let first = Operator::start(&ns.name);
    let leases: Api<Lease> = ns.api();
    let first_holder = eventually("a Lease holder", CHANGE_TIMEOUT, || {
        lease_holder(leases.clone())
    })
    .await;
    assert!(
        first_holder.ends_with(&format!("-{}", first.pid())),
        "{first_holder}"
    );
    let second = Operator::start(&ns.name);
    apply_manifest(&client, &ns.name, &read_example("openai-self-consistency")).await;
    let ses: Api<ScalingEndpoint> = ns.api();
    wait_ready(&ses, "openai-sc", READY_TIMEOUT).await;

    // Kill the leader (no release): the standby acquires the Lease after it expires.
    drop(first);
    let second_pid = second.pid();
    eventually(
        "the standby to hold the Lease",
        Duration::from_secs(60),
        || {
            let leases = leases.clone();
            async move {
                let h = lease_holder(leases).await?;
                h.ends_with(&format!("-{second_pid}"))
                    .then_some(())
                    .ok_or(h)
            }
        },
    )
    .await;
    ses.patch(
        "openai-sc",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"algorithm": {"defaultBudget": 3}}})),
    )
    .await
    .unwrap();
    let se = wait_ready(&ses, "openai-sc", READY_TIMEOUT).await;
    assert_eq!(se.status.unwrap().observed_generation, Some(2));
    drop(second);
    ns.delete().await;
}

/// Endpoints that exist before the operator starts are all reconciled: many first reconciles then
/// wait for the child caches at once (a lost wakeup there once left some of them waiting forever).
#[tokio::test]
async fn endpoints_created_before_the_operator_starts_all_converge() {
    if !enabled("endpoints_created_before_the_operator_starts_all_converge") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "restart").await;
    let count = 30;
    let mut manifest = String::from(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: openai}\nstringData: {api-key: sk-x}\n",
    );
    for i in 0..count {
        manifest.push_str(&format!(
            "---\napiVersion: inferscale.dev/v1alpha1\nkind: ScalingEndpoint\nmetadata: {{name: ep-{i:02}}}\n\
             spec: {{model: {{name: m, apiKeySecretRef: {{name: openai, key: api-key}}}}, algorithm: {{name: self-consistency}}}}\n"
        ));
    }
    apply_manifest(&client, &ns.name, &manifest).await;
    let _op = Operator::start(&ns.name);
    let ses: Api<ScalingEndpoint> = ns.api();
    eventually(&format!("{count} endpoints Ready"), READY_TIMEOUT, || {
        let ses = ses.clone();
        async move {
            let list = ses
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let pending: Vec<String> = list
                .items
                .iter()
                .filter(|se| condition(se, "Ready").is_none_or(|c| c.0 != "True"))
                .map(|se| se.name_any())
                .collect();
            pending
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("not Ready: {pending:?}"))
        }
    })
    .await;
    ns.delete().await;
}
