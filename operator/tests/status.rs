//! Status that tells the truth, config rollout and vLLM hardening, on a real control plane (see
//! tests/k8s/ and operator/tests/k8s.rs for the setup). kwok runs no containers, so a broken pod is
//! made the way the kubelet would report it: by writing the pod's status.
//!
//!   tests/k8s/with-cluster.sh env INFERSCALE_K8S_TESTS=1 cargo test -p inferscale-operator --test status

mod common;

use std::time::Duration;

use common::*;
use inferscale_operator::config_rollout::mounted_config_map;
use inferscale_operator::crd::ScalingEndpoint;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until condition `type_` of `name` has `status` and `reason`, and returns its message.
async fn wait_condition(
    ses: &Api<ScalingEndpoint>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    eventually(
        &format!("{name}: {type_}={status} {reason}"),
        CHANGE_TIMEOUT,
        || {
            let ses = ses.clone();
            let name = name.to_owned();
            async move {
                let se = ses.get(&name).await.map_err(|e| e.to_string())?;
                match condition(&se, type_) {
                    Some((s, r, m)) if s == status && r == reason => Ok(m),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
}

/// The running pods of a component of an endpoint, sorted by name.
async fn running_pods(pods: &Api<Pod>, endpoint: &str, component: &str, n: usize) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={endpoint},app.kubernetes.io/component={component}"
    ));
    eventually(
        &format!("{n} running {component} pods"),
        CHANGE_TIMEOUT,
        || {
            let pods = pods.clone();
            let lp = lp.clone();
            async move {
                let mut list = pods.list(&lp).await.map_err(|e| e.to_string())?.items;
                list.retain(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                });
                list.sort_by_key(|p| p.name_any());
                (list.len() == n)
                    .then_some(list)
                    .ok_or_else(|| "not yet".to_owned())
            }
        },
    )
    .await
}

/// Writes a container state into a pod's status as the kubelet would: `waiting` with a reason
/// makes the pod not Ready; `None` makes it Ready and running again. kwok only acts on Pending
/// pods, so it leaves this status alone.
async fn set_container_state(pods: &Api<Pod>, pod: &str, waiting: Option<(&str, &str)>) {
    let ready = if waiting.is_some() { "False" } else { "True" };
    let state = match waiting {
        Some((reason, message)) => json!({"waiting": {"reason": reason, "message": message}}),
        None => json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
    };
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": ready},
            {"type": "Ready", "status": ready},
        ],
        "containerStatuses": [{
            "name": "worker", "image": "inferscale/worker:test", "imageID": "",
            "ready": waiting.is_none(), "restartCount": 3, "state": state,
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
        }],
    }});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("patching the status of pod {pod}: {e}"));
}

async fn endpoint_ns(client: &Client, prefix: &str, manifest: &str) -> (TestNamespace, Operator) {
    install_crd(client).await;
    let ns = TestNamespace::create(client, prefix).await;
    let op = Operator::start(&ns.name);
    apply_manifest(client, &ns.name, manifest).await;
    (ns, op)
}

const TWO_WORKERS: &str = r#"
apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {name: sc}
spec:
  model: {name: gpt-4o-mini, provider: openai}
  algorithm: {name: self-consistency}
  worker: {replicas: 2}
"#;

/// A crash-looping worker, then one that cannot pull its image: WorkersAvailable (and Ready) say
/// so with the kubelet's reason and the pod's name, and recover when the pods do.
#[tokio::test]
async fn stuck_worker_pods_make_workers_unavailable_with_their_reason() {
    if !enabled("stuck_worker_pods_make_workers_unavailable_with_their_reason") {
        return;
    }
    let client = client().await;
    let (ns, _op) = endpoint_ns(&client, "stuck", TWO_WORKERS).await;
    let ses: Api<ScalingEndpoint> = ns.api();
    wait_ready(&ses, "sc", READY_TIMEOUT).await;
    let pods: Api<Pod> = ns.api();
    let running = running_pods(&pods, "sc", "worker", 2).await;
    let (first, second) = (running[0].name_any(), running[1].name_any());

    set_container_state(
        &pods,
        &first,
        Some((
            "CrashLoopBackOff",
            "back-off 40s restarting failed container=worker",
        )),
    )
    .await;
    let message = wait_condition(&ses, "sc", "WorkersAvailable", "False", "CrashLoopBackOff").await;
    assert_eq!(
        message,
        format!(
            "1 of 2 workers available: pod {first} container worker: CrashLoopBackOff: back-off 40s restarting failed container=worker (last exit code 1, Error)"
        )
    );
    let ready = wait_condition(&ses, "sc", "Ready", "False", "CrashLoopBackOff").await;
    assert_eq!(ready, message);

    // The first pod recovers, the second cannot pull its image.
    set_container_state(&pods, &first, None).await;
    set_container_state(
        &pods,
        &second,
        Some((
            "ImagePullBackOff",
            "Back-off pulling image \"inferscale/worker:test\"",
        )),
    )
    .await;
    let message = wait_condition(&ses, "sc", "WorkersAvailable", "False", "ImagePullBackOff").await;
    assert!(
        message.contains(&format!("pod {second} container worker: ImagePullBackOff")),
        "{message}"
    );

    // Both healthy again: Ready.
    set_container_state(&pods, &second, None).await;
    wait_condition(&ses, "sc", "Ready", "True", "Ready").await;
    ns.delete().await;
}

/// vLLM asking for more GPUs than any node has: the scheduler's verdict is the condition.
#[tokio::test]
async fn unschedulable_model_server_is_reported_with_the_schedulers_message() {
    if !enabled("unschedulable_model_server_is_reported_with_the_schedulers_message") {
        return;
    }
    let client = client().await;
    let manifest = r#"
apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {name: big}
spec:
  model: {name: qwen}
  algorithm: {name: self-consistency}
  vllm: {model: Qwen/Qwen2.5-72B-Instruct, gpus: 16}
"#;
    let (ns, _op) = endpoint_ns(&client, "unsched", manifest).await;
    let ses: Api<ScalingEndpoint> = ns.api();
    let message = wait_condition(
        &ses,
        "big",
        "ModelServerAvailable",
        "False",
        "Unschedulable",
    )
    .await;
    assert!(
        message.starts_with("0 of 1 vLLM pods available: pod big-vllm-"),
        "{message}"
    );
    assert!(message.contains("Insufficient nvidia.com/gpu"), "{message}");
    wait_condition(&ses, "big", "Ready", "False", "Unschedulable").await;
    ns.delete().await;
}

/// A config the worker would refuse at start is ConfigValid=False with the worker's message, and
/// no workers are created from it. (`hosted_vllm/…` without an endpoint is refused by the worker's
/// `WorkerConfig::validate()` once it checks that a prefix naming a self-hosted server has one.)
#[tokio::test]
async fn a_config_the_worker_refuses_is_config_invalid() {
    if !enabled("a_config_the_worker_refuses_is_config_invalid") {
        return;
    }
    let client = client().await;
    let manifest = r#"
apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {name: hv}
spec:
  model: {name: hosted_vllm/x}
  algorithm: {name: self-consistency}
"#;
    let (ns, _op) = endpoint_ns(&client, "refused", manifest).await;
    let ses: Api<ScalingEndpoint> = ns.api();
    let message = wait_condition(&ses, "hv", "ConfigValid", "False", "InvalidConfig").await;
    assert!(
        message.starts_with("the worker configuration is invalid: "),
        "{message}"
    );
    let deployments: Api<Deployment> = ns.api();
    assert!(deployments.get_opt("hv").await.unwrap().is_none());
    ns.delete().await;
}

/// An object the API server refuses (an annotation key that is not a qualified name) is
/// Ready=False ApplyFailed with the API server's message, and a Warning Event.
#[tokio::test]
async fn a_refused_child_is_an_apply_failure_with_the_api_servers_message() {
    if !enabled("a_refused_child_is_an_apply_failure_with_the_api_servers_message") {
        return;
    }
    let client = client().await;
    let manifest = r#"
apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {name: bad}
spec:
  model: {name: gpt-4o-mini, provider: openai}
  algorithm: {name: self-consistency}
  worker: {podAnnotations: {"not a key!": "x"}}
"#;
    let (ns, _op) = endpoint_ns(&client, "refuse", manifest).await;
    let ses: Api<ScalingEndpoint> = ns.api();
    let message = wait_condition(&ses, "bad", "Ready", "False", "ApplyFailed").await;
    assert!(
        message.starts_with("Deployment \"bad\" was refused by the API server: "),
        "{message}"
    );
    assert!(message.contains("not a key!"), "{message}");
    wait_for_warning(&ns, "ApplyFailed", "bad", "not a key!", CHANGE_TIMEOUT).await;
    // Fixing the spec recovers without a restart.
    ses.patch(
        "bad",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"worker": {"podAnnotations": {"not a key!": null, "team": "x"}}}}),
        ),
    )
    .await
    .unwrap();
    wait_ready(&ses, "bad", READY_TIMEOUT).await;
    ns.delete().await;
}

/// Waits until the worker Deployment mounts a ConfigMap other than `previous` and has rolled out
/// to it, and returns that ConfigMap's name.
async fn rolled_to_new_config(deployments: &Api<Deployment>, previous: &str) -> String {
    eventually("a rollout to a new ConfigMap", READY_TIMEOUT, || {
        let deployments = deployments.clone();
        let previous = previous.to_owned();
        async move {
            let d = deployments.get("cfg").await.map_err(|e| e.to_string())?;
            let cm = mounted_config_map(&d).unwrap_or_default().to_owned();
            let st = d.status.clone().unwrap_or_default();
            let done = cm != previous
                && st.observed_generation == d.metadata.generation
                && st.replicas == st.updated_replicas
                && st.available_replicas == Some(1);
            done.then_some(cm)
                .ok_or_else(|| format!("mounts {previous:?}, status {st:?}"))
        }
    })
    .await
}

/// Each config change is a new immutable ConfigMap the Deployment refers to; after the rollout the
/// one before the previous is removed.
#[tokio::test]
async fn config_changes_roll_out_through_new_immutable_config_maps() {
    if !enabled("config_changes_roll_out_through_new_immutable_config_maps") {
        return;
    }
    let client = client().await;
    let manifest = r#"
apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {name: cfg}
spec:
  model: {name: gpt-4o-mini, provider: openai}
  algorithm: {name: self-consistency, defaultBudget: 2}
"#;
    let (ns, _op) = endpoint_ns(&client, "rollout", manifest).await;
    let ses: Api<ScalingEndpoint> = ns.api();
    wait_ready(&ses, "cfg", READY_TIMEOUT).await;
    let deployments: Api<Deployment> = ns.api();
    let config_maps: Api<ConfigMap> = ns.api();
    let first = rolled_to_new_config(&deployments, "").await;
    let cm = config_maps.get(&first).await.unwrap();
    assert_eq!(cm.immutable, Some(true));
    assert!(cm.data.unwrap()["config.yaml"].contains("budget: 2"));
    // Immutable for real: the API server refuses to change it.
    let err = config_maps
        .patch(
            &first,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"config.yaml": "budget: 99"}})),
        )
        .await
        .expect_err("an immutable ConfigMap cannot change");
    assert!(err.to_string().contains("immutable"), "{err}");

    let set_budget = |b: u32| {
        let ses = ses.clone();
        async move {
            ses.patch(
                "cfg",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"algorithm": {"defaultBudget": b}}})),
            )
            .await
            .unwrap();
        }
    };
    set_budget(3).await;
    let second = rolled_to_new_config(&deployments, &first).await;
    assert!(
        config_maps.get(&second).await.unwrap().data.unwrap()["config.yaml"].contains("budget: 3")
    );
    // The previous one stays (a `kubectl rollout undo` still finds its file).
    assert!(config_maps.get_opt(&first).await.unwrap().is_some());

    set_budget(4).await;
    let third = rolled_to_new_config(&deployments, &second).await;
    wait_ready(&ses, "cfg", READY_TIMEOUT).await;
    eventually("the oldest ConfigMap to be removed", CHANGE_TIMEOUT, || {
        let config_maps = config_maps.clone();
        let first = first.clone();
        async move {
            match config_maps
                .get_opt(&first)
                .await
                .map_err(|e| e.to_string())?
            {
                None => Ok(()),
                Some(_) => Err("still there".to_owned()),
            }
        }
    })
    .await;
    for kept in [&second, &third] {
        assert!(config_maps.get_opt(kept).await.unwrap().is_some(), "{kept}");
    }
    ns.delete().await;
}

/// The vLLM example: restricted securityContext, the key Secret exists, is owned and is what vLLM
/// and the workers use; another reconcile does not rotate it.
#[tokio::test]
async fn vllm_runs_restricted_and_only_accepts_the_operators_key() {
    if !enabled("vllm_runs_restricted_and_only_accepts_the_operators_key") {
        return;
    }
    let client = client().await;
    let (ns, _op) = endpoint_ns(&client, "vkey", &read_example("vllm-gpu")).await;
    let ses: Api<ScalingEndpoint> = ns.api();
    let se = wait_ready(&ses, "qwen-local", READY_TIMEOUT).await;

    let secrets: Api<Secret> = ns.api();
    let key_secret = secrets.get("qwen-local-vllm-key").await.unwrap();
    let owner = &key_secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller, Some(&owner.uid)),
        ("ScalingEndpoint", Some(true), se.metadata.uid.as_ref())
    );
    let key = key_secret.data.clone().unwrap()["api-key"].0.clone();
    assert_eq!(key.len(), 64);
    assert!(key.iter().all(u8::is_ascii_hexdigit));

    let deployments: Api<Deployment> = ns.api();
    let vllm = deployments.get("qwen-local-vllm").await.unwrap();
    let pod = vllm.spec.unwrap().template.spec.unwrap();
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.is_some_and(|u| u != 0));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let ctr = &pod.containers[0];
    let sc = ctr.security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    let key_env = ctr
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "VLLM_API_KEY")
        .expect("VLLM_API_KEY");
    assert!(
        key_env.value.is_none(),
        "the key is passed by reference only"
    );
    let r = key_env.value_from.clone().unwrap().secret_key_ref.unwrap();
    assert_eq!(
        (r.name.as_str(), r.key.as_str()),
        ("qwen-local-vllm-key", "api-key")
    );

    // The workers' upstream key is that Secret's file.
    let worker = deployments.get("qwen-local").await.unwrap();
    let config_maps: Api<ConfigMap> = ns.api();
    let cm = config_maps
        .get(mounted_config_map(&worker).unwrap())
        .await
        .unwrap();
    assert!(
        cm.data.unwrap()["config.yaml"]
            .contains("/etc/inferscale/secrets/qwen-local-vllm-key/api-key"),
        "the workers read vLLM's key from the mounted Secret"
    );

    // A spec change reconciles again; the key is not rotated behind anyone's back.
    ses.patch(
        "qwen-local",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"algorithm": {"defaultBudget": 6}}})),
    )
    .await
    .unwrap();
    wait_ready(&ses, "qwen-local", READY_TIMEOUT).await;
    let again = secrets.get("qwen-local-vllm-key").await.unwrap();
    assert_eq!(again.uid(), key_secret.uid());
    assert_eq!(again.data.unwrap()["api-key"].0, key);
    ns.delete().await;
}

/// Every pod of every example is admitted where the restricted Pod Security Standard is enforced.
#[tokio::test]
async fn all_examples_are_admitted_under_the_restricted_pod_security_standard() {
    if !enabled("all_examples_are_admitted_under_the_restricted_pod_security_standard") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "restricted").await;
    enforce_restricted_pod_security(&client, &ns.name).await;
    let _op = Operator::start(&ns.name);
    let examples = [
        ("openai-self-consistency", "openai-sc"),
        ("openai-best-of-n", "openai-bon"),
        ("bedrock", "bedrock-claude"),
        ("vllm-gpu", "qwen-local"),
    ];
    let mut endpoints = Vec::new();
    for (file, _) in examples {
        for obj in apply_manifest(&client, &ns.name, &read_example(file)).await {
            if obj
                .types
                .as_ref()
                .is_some_and(|t| t.kind == "ScalingEndpoint")
            {
                endpoints.push(obj.name_any());
            }
        }
    }
    assert_eq!(endpoints.len(), examples.len(), "{endpoints:?}");
    let ses: Api<ScalingEndpoint> = ns.api();
    for name in &endpoints {
        // Ready means the pods were admitted, scheduled and are running.
        wait_ready(&ses, name, READY_TIMEOUT).await;
    }
    // No ReplicaSet was refused a pod (PodSecurity admission answers FailedCreate).
    let replica_sets: Api<ReplicaSet> = ns.api();
    for rs in replica_sets.list(&Default::default()).await.unwrap().items {
        let name = rs.name_any();
        let failures: Vec<_> = rs
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ == "ReplicaFailure")
            .collect();
        assert!(failures.is_empty(), "{name}: {failures:?}");
    }
    let pods: Api<Pod> = ns.api();
    for (_, name) in examples {
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"));
        assert!(
            !pods.list(&lp).await.unwrap().items.is_empty(),
            "{name} has pods"
        );
    }
    ns.delete().await;
}
