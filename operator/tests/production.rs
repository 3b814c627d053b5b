//! What a production cluster needs beyond the pod settings of tests/gpu.rs, asserted on the live
//! objects of a real API server: the operator-owned model-cache claim (and the refusal of a
//! ReadWriteOnce claim shared by several vLLM pods), the HPA on requests in flight, and the
//! NetworkPolicies of `worker.networkPolicy`, vLLM's ServiceMonitor, and the operator-wide pod
//! defaults (the chart's `global.imagePullSecrets` and `defaults.vllmRuntimeClassName`), and the
//! `probe` subcommand the chart's `helm test` pod runs, against the operator process. Needs a cluster, like tests/k8s.rs:
//!
//!   tests/k8s/with-cluster.sh env INFERSCALE_K8S_TESTS=1 \
//!     cargo test -p inferscale-operator --test production

mod common;

use std::time::Duration;

use common::*;
use inferscale_operator::crd::ScalingEndpoint;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::json;

const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

async fn get_eventually<K>(api: &Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    eventually(&format!("{name} to exist"), CHANGE_TIMEOUT, || {
        let api = api.clone();
        async move {
            api.get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not created yet".to_owned())
        }
    })
    .await
}

fn endpoint(name: &str, spec: serde_json::Value) -> ScalingEndpoint {
    serde_json::from_value(json!({
        "apiVersion": "inferscale.dev/v1alpha1", "kind": "ScalingEndpoint",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a ScalingEndpoint")
}

#[tokio::test]
async fn cache_pvc_is_created_owned_mounted_and_removed_with_the_spec() {
    if !enabled("cache_pvc_is_created_owned_mounted_and_removed_with_the_spec") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "pvc").await;
    let _op = Operator::start(&ns.name);
    let endpoints: Api<ScalingEndpoint> = ns.api();
    let spec = json!({
        "model": {"name": "qwen"}, "algorithm": {"name": "self-consistency"},
        "vllm": {"model": "Qwen/Qwen2.5-7B-Instruct", "replicas": 2,
                 "cache": {"pvc": {"size": "200Gi", "storageClassName": "shared-fs",
                                   "accessModes": ["ReadWriteMany"]}}},
    });
    let se = endpoints
        .create(&PostParams::default(), &endpoint("cached", spec))
        .await
        .expect("a ReadWriteMany cache with 2 replicas is accepted");

    let claims: Api<PersistentVolumeClaim> = ns.api();
    let claim = get_eventually(&claims, "cached-vllm-cache").await;
    let owner = &claim.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(owner.kind, "ScalingEndpoint");
    assert_eq!(Some(owner.uid.as_str()), se.metadata.uid.as_deref());
    assert_eq!(owner.controller, Some(true));
    let claim_spec = claim.spec.expect("a claim has a spec");
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("shared-fs"));
    assert_eq!(
        claim_spec.access_modes.unwrap_or_default(),
        ["ReadWriteMany"]
    );
    let size = claim_spec
        .resources
        .and_then(|r| r.requests)
        .expect("requests")["storage"]
        .clone();
    assert_eq!(size.0, "200Gi");

    // vLLM mounts that claim as its HF_HOME.
    let deployments: Api<Deployment> = ns.api();
    let vllm = get_eventually(&deployments, "cached-vllm").await;
    let pod = vllm.spec.and_then(|s| s.template.spec).expect("pod spec");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "cache")
        .and_then(|v| v.persistent_volume_claim.clone())
        .expect("the cache volume is a claim");
    assert_eq!(volume.claim_name, "cached-vllm-cache");
    let ctr = &pod.containers[0];
    let mount = ctr
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "cache");
    let hf_home = ctr.env.iter().flatten().find(|e| e.name == "HF_HOME");
    assert_eq!(
        mount.map(|m| m.mount_path.clone()),
        hf_home.and_then(|e| e.value.clone())
    );

    // Switching to an emptyDir cache deletes the claim the operator owns.
    endpoints
        .patch(
            "cached",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"vllm": {"cache": {"pvc": null, "emptyDirSize": "50Gi"}}}}),
            ),
        )
        .await
        .expect("spec changed");
    eventually("the claim to be deleted", CHANGE_TIMEOUT, || {
        let claims = claims.clone();
        async move {
            match claims
                .get_opt("cached-vllm-cache")
                .await
                .map_err(|e| e.to_string())?
            {
                // The pvc-protection finalizer keeps it until no pod uses it: being deleted counts.
                Some(c) if c.metadata.deletion_timestamp.is_none() => Err("still there".to_owned()),
                _ => Ok(()),
            }
        }
    })
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn read_write_once_cache_with_two_vllm_replicas_is_refused() {
    if !enabled("read_write_once_cache_with_two_vllm_replicas_is_refused") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "pvc-cel").await;
    let api: Api<ScalingEndpoint> = ns.api();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let spec = |replicas: i32, modes: serde_json::Value| {
        let mut pvc = json!({"size": "100Gi"});
        if !modes.is_null() {
            pvc["accessModes"] = modes;
        }
        json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency"},
               "vllm": {"model": "q", "replicas": replicas, "cache": {"pvc": pvc}}})
    };
    for (case, s) in [
        ("explicit ReadWriteOnce", spec(2, json!(["ReadWriteOnce"]))),
        ("default access mode", spec(2, serde_json::Value::Null)),
    ] {
        match api.create(&dry, &endpoint("bad", s)).await {
            Err(kube::Error::Api(e))
                if e.code == 422
                    && e.message.contains("spec.vllm.cache.pvc.accessModes")
                    && e.message.contains(
                        "vllm.cache.pvc.accessModes must include ReadWriteMany when vllm.replicas > 1",
                    ) => {}
            other => panic!("{case}: {other:?}"),
        }
    }
    for (case, s) in [
        (
            "one replica, default mode",
            spec(1, serde_json::Value::Null),
        ),
        (
            "two replicas, ReadWriteMany",
            spec(2, json!(["ReadWriteMany"])),
        ),
    ] {
        api.create(&dry, &endpoint("good", s))
            .await
            .unwrap_or_else(|e| panic!("{case} is accepted: {e}"));
    }
    // Two cache kinds at once are refused, naming all three.
    let both = json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency"},
        "vllm": {"model": "q", "cache": {"persistentVolumeClaim": "p", "pvc": {"size": "1Gi"}}}});
    match api.create(&dry, &endpoint("bad", both)).await {
        Err(kube::Error::Api(e))
            if e.message.contains(
                "vllm.cache needs exactly one of persistentVolumeClaim, emptyDirSize or pvc",
            ) => {}
        other => panic!("two cache kinds: {other:?}"),
    }
    ns.delete().await;
}

#[tokio::test]
async fn hpa_follows_requests_in_flight_when_asked() {
    if !enabled("hpa_follows_requests_in_flight_when_asked") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "hpa").await;
    let _op = Operator::start(&ns.name);
    let endpoints: Api<ScalingEndpoint> = ns.api();
    let spec = json!({
        "model": {"name": "gpt-4o-mini"}, "algorithm": {"name": "self-consistency"},
        "worker": {"autoscaling": {"minReplicas": 2, "maxReplicas": 6,
                                   "metric": "inflight", "targetInflightPerPod": 5}},
    });
    endpoints
        .create(&PostParams::default(), &endpoint("busy", spec))
        .await
        .expect("created");
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    let pods_metric = |h: &HorizontalPodAutoscaler| {
        h.spec
            .as_ref()
            .and_then(|s| s.metrics.as_ref())
            .and_then(|m| m.first())
            .map(|m| (m.type_.clone(), m.pods.clone()))
    };
    let hpa = get_eventually(&hpas, "busy").await;
    let (type_, pods) = pods_metric(&hpa).expect("one metric");
    assert_eq!(type_, "Pods");
    let pods = pods.expect("a Pods metric source");
    assert_eq!(pods.metric.name, "inferscale_requests_in_flight");
    assert_eq!(pods.target.type_, "AverageValue");
    assert_eq!(pods.target.average_value.map(|q| q.0).as_deref(), Some("5"));
    let target = hpa.spec.expect("spec").scale_target_ref;
    assert_eq!(
        (target.kind.as_str(), target.name.as_str()),
        ("Deployment", "busy")
    );

    // Back to CPU: the same HPA now follows CPU utilization.
    endpoints
        .patch(
            "busy",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"worker": {"autoscaling": {"metric": "cpu", "targetInflightPerPod": null}}}})),
        )
        .await
        .expect("spec changed");
    eventually("the HPA to follow CPU", CHANGE_TIMEOUT, || {
        let hpas = hpas.clone();
        async move {
            let h = hpas.get("busy").await.map_err(|e| e.to_string())?;
            match pods_metric(&h) {
                Some((t, _)) if t == "Resource" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    // A target without the inflight metric is refused, naming the field.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let bad = json!({"model": {"name": "m"}, "algorithm": {"name": "self-consistency"},
        "worker": {"autoscaling": {"maxReplicas": 3, "targetInflightPerPod": 4}}});
    match endpoints.create(&dry, &endpoint("bad", bad)).await {
        Err(kube::Error::Api(e))
            if e.code == 422
                && e.message
                    .contains("spec.worker.autoscaling.targetInflightPerPod")
                && e.message.contains("only used with metric: inflight") => {}
        other => panic!("targetInflightPerPod with cpu: {other:?}"),
    }
    ns.delete().await;
}

#[tokio::test]
async fn network_policies_guard_workers_and_vllm() {
    if !enabled("network_policies_guard_workers_and_vllm") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "netpol").await;
    let _op = Operator::start(&ns.name);
    let endpoints: Api<ScalingEndpoint> = ns.api();
    let monitoring = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}});
    let spec = json!({
        "model": {"name": "qwen"}, "algorithm": {"name": "self-consistency"},
        "vllm": {"model": "Qwen/Qwen2.5-7B-Instruct"},
        "worker": {"networkPolicy": {"enabled": true,
            "from": [{"namespaceSelector": {"matchLabels": {"team": "search"}}}],
            "metricsFrom": [monitoring]}},
    });
    endpoints
        .create(&PostParams::default(), &endpoint("guarded", spec))
        .await
        .expect("created");
    let policies: Api<NetworkPolicy> = ns.api();
    let as_json = |p: NetworkPolicy| serde_json::to_value(p.spec).expect("serializes");

    let workers = as_json(get_eventually(&policies, "guarded").await);
    assert_eq!(
        workers["podSelector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "inferscale-worker", "app.kubernetes.io/instance": "guarded",
               "app.kubernetes.io/component": "worker"})
    );
    assert_eq!(workers["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        workers["ingress"],
        json!([{"from": [{"namespaceSelector": {"matchLabels": {"team": "search"}}}, monitoring],
                "ports": [{"port": "http", "protocol": "TCP"}]}])
    );

    let vllm = as_json(get_eventually(&policies, "guarded-vllm").await);
    assert_eq!(
        vllm["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "model-server"
    );
    // Only this endpoint's workers (same namespace) and the scraper: not the workers' clients.
    assert_eq!(
        vllm["ingress"],
        json!([{"from": [{"podSelector": {"matchLabels": {
                    "app.kubernetes.io/name": "inferscale-worker", "app.kubernetes.io/instance": "guarded",
                    "app.kubernetes.io/component": "worker"}}}, monitoring],
                "ports": [{"port": "http", "protocol": "TCP"}]}])
    );

    // Turning it off removes both.
    endpoints
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"worker": {"networkPolicy": {"enabled": false}}}})),
        )
        .await
        .expect("spec changed");
    eventually("the policies to be deleted", CHANGE_TIMEOUT, || {
        let policies = policies.clone();
        async move {
            let left = policies
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            (left == 0)
                .then_some(())
                .ok_or_else(|| format!("{left} left"))
        }
    })
    .await;
    ns.delete().await;
}

/// With monitoring on, vLLM gets a ServiceMonitor of its own next to the workers'.
#[tokio::test]
async fn vllm_gets_a_service_monitor() {
    if !enabled("vllm_gets_a_service_monitor") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    // The stand-in CRD of the end-to-end tests (tests/trust.rs removes it again, as this does).
    let text = std::fs::read_to_string(repo_path("tests/e2e/servicemonitor-crd.yaml")).unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("inferscale-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("ServiceMonitor CRD applies");
    let ns = TestNamespace::create(&client, "vllm-sm").await;
    let monitors: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
            "servicemonitors",
        ),
    );
    eventually("ServiceMonitors to be served", CHANGE_TIMEOUT, || {
        let monitors = monitors.clone();
        async move {
            monitors
                .list(&Default::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let _op = Operator::start(&ns.name);
    let endpoints: Api<ScalingEndpoint> = ns.api();
    let spec = json!({
        "model": {"name": "qwen"}, "algorithm": {"name": "self-consistency"},
        "vllm": {"model": "Qwen/Qwen2.5-7B-Instruct"},
        "metrics": {"serviceMonitor": {"enabled": true, "interval": "15s"}},
    });
    endpoints
        .create(&PostParams::default(), &endpoint("watched", spec))
        .await
        .expect("created");
    let vllm = get_eventually(&monitors, "watched-vllm").await;
    assert_eq!(
        vllm.data["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "inferscale-vllm", "app.kubernetes.io/instance": "watched",
               "app.kubernetes.io/component": "model-server"})
    );
    assert_eq!(
        vllm.data["spec"]["endpoints"],
        json!([{"port": "http", "path": "/metrics", "interval": "15s"}])
    );
    get_eventually(&monitors, "watched").await;
    // The Service it selects exposes that port name.
    let services: Api<k8s_openapi::api::core::v1::Service> = ns.api();
    let svc = get_eventually(&services, "watched-vllm").await;
    let port_names: Vec<_> = svc
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    assert_eq!(port_names, ["http"]);
    ns.delete().await;
    let _ = crds
        .delete(
            "servicemonitors.monitoring.coreos.com",
            &DeleteParams::default(),
        )
        .await;
}

/// The operator's pod defaults reach the live pod templates where the spec sets nothing, and the
/// spec wins where it does (the chart passes them as environment variables).
#[tokio::test]
async fn operator_pod_defaults_fill_what_the_spec_leaves_unset() {
    if !enabled("operator_pod_defaults_fill_what_the_spec_leaves_unset") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "defaults").await;
    let _op = Operator::start_with(
        &ns.name,
        &[
            "--default-image-pull-secret",
            "mirror,mirror-2",
            "--vllm-runtime-class",
            "nvidia",
        ],
    );
    let endpoints: Api<ScalingEndpoint> = ns.api();
    for (name, vllm) in [
        ("plain", json!({"model": "Qwen/Qwen2.5-7B-Instruct"})),
        (
            "own",
            json!({"model": "Qwen/Qwen2.5-7B-Instruct", "runtimeClassName": "kata-nvidia",
                       "imagePullSecrets": ["vllm-registry"]}),
        ),
    ] {
        let spec = json!({"model": {"name": "qwen"}, "algorithm": {"name": "self-consistency"}, "vllm": vllm});
        endpoints
            .create(&PostParams::default(), &endpoint(name, spec))
            .await
            .expect("created");
    }
    let deployments: Api<Deployment> = ns.api();
    let pod = |d: Deployment| d.spec.and_then(|s| s.template.spec).expect("pod spec");
    let secrets = |p: &k8s_openapi::api::core::v1::PodSpec| -> Vec<String> {
        p.image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect()
    };
    let worker = pod(get_eventually(&deployments, "plain").await);
    assert_eq!(secrets(&worker), ["mirror", "mirror-2"]);
    assert!(
        worker.runtime_class_name.is_none(),
        "workers need no GPU runtime"
    );
    let vllm = pod(get_eventually(&deployments, "plain-vllm").await);
    assert_eq!(secrets(&vllm), ["mirror", "mirror-2"]);
    assert_eq!(vllm.runtime_class_name.as_deref(), Some("nvidia"));
    let own = pod(get_eventually(&deployments, "own-vllm").await);
    assert_eq!(secrets(&own), ["vllm-registry"]);
    assert_eq!(own.runtime_class_name.as_deref(), Some("kata-nvidia"));
    ns.delete().await;
}

/// The chart's `helm test` pod runs `inferscale-operator probe <metrics Service>/healthz`. kwok
/// does not run pods, so this runs the same command against the operator process of the test.
#[tokio::test]
async fn probe_passes_against_the_running_operator_and_fails_without_it() {
    if !enabled("probe_passes_against_the_running_operator_and_fails_without_it") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "probe").await;
    let op = Operator::start(&ns.name);
    let log = op.log.clone();
    let addr = eventually("the operator's health endpoint", CHANGE_TIMEOUT, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
            text.lines()
                .find(|l| l.contains("serving /healthz"))
                .map(strip_ansi)
                .and_then(|l| {
                    l.split("addr=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(str::to_owned)
                })
                .ok_or_else(|| "not serving yet".to_owned())
        }
    })
    .await;
    let probe = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_inferscale-operator"))
            .args(["probe", "--timeout", "5", &url])
            .output()
            .expect("probe runs")
    };
    let ok = probe(format!("http://{addr}/healthz"));
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok 200 "));
    drop(op);
    // The operator is gone: the same probe fails, naming what it could not reach.
    let down = probe(format!("http://{addr}/healthz"));
    assert!(!down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("cannot reach"),
        "{down:?}"
    );
    ns.delete().await;
}

/// The text log colours its fields (`ESC[…m`): the plain text.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
