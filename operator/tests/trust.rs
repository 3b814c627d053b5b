//! Trust boundaries of the operator, on a real control plane (see tests/k8s/):
//! - objects it does not control are never adopted, changed or garbage-collected with an endpoint;
//! - a Secret is never sent to a custom endpoint unless it opts in with a label;
//! - a ServiceMonitor the spec stops asking for is deleted even after the spec was invalid.
//!
//!   tests/k8s/with-cluster.sh env INFERSCALE_K8S_TESTS=1 cargo test -p inferscale-operator --test trust

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use inferscale_operator::crd::ScalingEndpoint;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, Patch,
    PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);
const ALLOW_LABEL: &str = "inferscale.dev/allow-custom-endpoint";

/// A Secret and a valid OpenAI self-consistency endpoint `name` using it, plus `extra_spec` lines.
fn endpoint_manifest(name: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: openai}}
stringData: {{api-key: sk-test}}
---
apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {{name: {name}}}
spec:
  model: {{name: gpt-4o-mini, provider: openai, apiKeySecretRef: {{name: openai, key: api-key}}}}
  algorithm: {{name: self-consistency}}
{extra_spec}
"#
    )
}

/// Waits until condition `type_` of endpoint `name` is `status` with `reason` and a message
/// containing every one of `needles`; returns the message.
async fn wait_condition(
    ses: &Api<ScalingEndpoint>,
    name: &str,
    type_: &'static str,
    (status, reason): (&'static str, &'static str),
    needles: &[&str],
) -> String {
    let needles: Vec<String> = needles.iter().map(|s| (*s).to_owned()).collect();
    eventually(
        &format!("{name}: {type_}={status} {reason} {needles:?}"),
        TIMEOUT,
        || {
            let (ses, needles) = (ses.clone(), needles.clone());
            let name = name.to_owned();
            async move {
                let se = ses.get(&name).await.map_err(|e| e.to_string())?;
                match condition(&se, type_) {
                    Some((s, r, m))
                        if s == status && r == reason && needles.iter().all(|n| m.contains(n)) =>
                    {
                        Ok(m)
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await
}

/// Deletes the endpoint in the foreground and waits until it is gone: the API server keeps it
/// until the garbage collector has deleted everything it controls, so anything it would have
/// collected is collected by then.
async fn delete_endpoint_and_wait_for_gc(ns: &TestNamespace, name: &str) {
    let ses: Api<ScalingEndpoint> = ns.api();
    ses.delete(name, &DeleteParams::foreground())
        .await
        .expect("endpoint deleted");
    eventually(&format!("{name} to be gone"), TIMEOUT, || {
        let ses = ses.clone();
        let name = name.to_owned();
        async move {
            match ses.get_opt(&name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there".to_owned()),
            }
        }
    })
    .await;
}

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

/// A user's Service and Deployment named like an endpoint's children: the endpoint reports
/// ChildConflict naming them, they are not changed, and deleting the endpoint leaves them. (Worker
/// ConfigMaps are content-addressed, `<name>-config-<hash>`, so a user's ConfigMap cannot sit on
/// one by accident; the ConfigMap path of the conflict check is the same code as these two.)
#[tokio::test]
async fn pre_existing_service_and_deployment_are_never_adopted() {
    if !enabled("pre_existing_service_and_deployment_are_never_adopted") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "adopt").await;
    let services: Api<Service> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let config_maps: Api<ConfigMap> = ns.api();
    // One carries the operator's managed-by label (it is then in the operator's cache), the other
    // none (the operator has to look it up): neither has an owner reference.
    let theirs_svc = services
        .create(
            &PostParams::default(),
            &Service {
                metadata: meta(
                    "svc-taken",
                    &[("app.kubernetes.io/managed-by", "inferscale-operator")],
                ),
                spec: Some(ServiceSpec {
                    ports: Some(vec![ServicePort {
                        port: 5432,
                        ..ServicePort::default()
                    }]),
                    selector: Some(BTreeMap::from([("app".to_owned(), "db".to_owned())])),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            },
        )
        .await
        .expect("user's Service");
    let theirs_deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "deploy-taken", "labels": {"team": "data"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "postgres:17"}]}
            }
        }
    }))
    .expect("Deployment manifest");
    let theirs_deploy = deployments
        .create(&PostParams::default(), &theirs_deploy)
        .await
        .expect("user's Deployment");

    let _op = Operator::start(&ns.name);
    apply_manifest(&client, &ns.name, &endpoint_manifest("svc-taken", "")).await;
    apply_manifest(&client, &ns.name, &endpoint_manifest("deploy-taken", "")).await;
    let ses: Api<ScalingEndpoint> = ns.api();
    let ready = ("False", "ChildConflict");
    wait_condition(
        &ses,
        "svc-taken",
        "Ready",
        ready,
        &[r#"Service "svc-taken""#],
    )
    .await;
    wait_condition(
        &ses,
        "deploy-taken",
        "Ready",
        ready,
        &[r#"Deployment "deploy-taken""#],
    )
    .await;
    // No worker runs for svc-taken: nothing runs half-configured.
    assert!(deployments.get_opt("svc-taken").await.unwrap().is_none());

    let not_adopted = |after: &ObjectMeta, what: &str| {
        assert!(
            after.owner_references.is_none(),
            "{what} was adopted: {after:?}"
        );
    };
    let svc = services.get("svc-taken").await.unwrap();
    assert_eq!(
        theirs_svc.metadata.resource_version, svc.metadata.resource_version,
        "Service was written"
    );
    not_adopted(&svc.metadata, "Service");
    assert_eq!(svc.spec, theirs_svc.spec);
    // A Deployment's status (and so its resourceVersion) moves with its pods; its generation and
    // spec only move when someone writes the spec.
    let deploy_unchanged = |after: &Deployment| {
        assert_eq!(
            theirs_deploy.metadata.generation, after.metadata.generation,
            "Deployment spec was written"
        );
        assert_eq!(
            theirs_deploy.spec.as_ref().map(|s| &s.template),
            after.spec.as_ref().map(|s| &s.template)
        );
        assert_eq!(theirs_deploy.metadata.labels, after.metadata.labels);
        not_adopted(&after.metadata, "Deployment");
    };
    deploy_unchanged(&deployments.get("deploy-taken").await.unwrap());

    // A Warning Event names the object.
    wait_for_warning(
        &ns,
        "ChildConflict",
        "deploy-taken",
        r#"Deployment "deploy-taken""#,
        TIMEOUT,
    )
    .await;

    // Deleting the endpoints collects what the operator created for them, and nothing else. The
    // svc-taken endpoint got its ConfigMap before its Service conflicted.
    let owned_configs = || async {
        config_maps
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|c| c.name_any().starts_with("svc-taken-config-"))
            .collect::<Vec<_>>()
    };
    let owned = owned_configs().await;
    assert!(!owned.is_empty(), "svc-taken's ConfigMap was not created");
    assert!(owned.iter().all(|c| {
        c.owner_references()
            .iter()
            .any(|o| o.controller == Some(true))
    }));
    delete_endpoint_and_wait_for_gc(&ns, "svc-taken").await;
    assert!(owned_configs().await.is_empty());
    delete_endpoint_and_wait_for_gc(&ns, "deploy-taken").await;
    let svc = services.get("svc-taken").await.unwrap();
    assert_eq!(
        theirs_svc.metadata.resource_version,
        svc.metadata.resource_version
    );
    not_adopted(&svc.metadata, "Service");
    deploy_unchanged(&deployments.get("deploy-taken").await.unwrap());
    ns.delete().await;
}

/// An endpoint pointing at a custom URL may not take an unlabelled Secret along; labelled, it may.
#[tokio::test]
async fn a_secret_goes_to_a_custom_endpoint_only_with_its_label() {
    if !enabled("a_secret_goes_to_a_custom_endpoint_only_with_its_label") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::create(&client, "exfil").await;
    let _op = Operator::start(&ns.name);
    apply_manifest(
        &client,
        &ns.name,
        r#"
apiVersion: v1
kind: Secret
metadata: {name: db-creds}
stringData: {password: hunter2}
---
apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {name: exfil}
spec:
  model:
    name: gpt-4o-mini
    endpoint: https://attacker.invalid/v1
    apiKeySecretRef: {name: db-creds, key: password}
  algorithm: {name: self-consistency}
"#,
    )
    .await;
    let ses: Api<ScalingEndpoint> = ns.api();
    let message = wait_condition(
        &ses,
        "exfil",
        "ConfigValid",
        ("False", "SecretNotAllowed"),
        &[
            r#"secret "db-creds""#,
            "inferscale.dev/allow-custom-endpoint=true",
        ],
    )
    .await;
    assert!(!message.contains("hunter2"), "{message}");
    wait_condition(&ses, "exfil", "Ready", ("False", "SecretNotAllowed"), &[]).await;
    // No workers, so nothing mounts the Secret; and the config was not written either.
    let deployments: Api<Deployment> = ns.api();
    assert!(
        deployments
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let config_maps: Api<ConfigMap> = ns.api();
    assert!(config_maps.get_opt("exfil-config").await.unwrap().is_none());

    // The Secret's owner opts in: the endpoint is accepted and its workers mount the Secret.
    let secrets: Api<Secret> = ns.api();
    secrets
        .patch(
            "db-creds",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "db-creds", "labels": {ALLOW_LABEL: "true"}},
            })),
        )
        .await
        .expect("label added");
    wait_condition(&ses, "exfil", "ConfigValid", ("True", "Valid"), &[]).await;
    let deployment = eventually("the workers' Deployment", TIMEOUT, || {
        let deployments = deployments.clone();
        async move {
            deployments
                .get_opt("exfil")
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "missing".to_owned())
        }
    })
    .await;
    let mounts_secret = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.volumes)
        .unwrap_or_default()
        .iter()
        .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("db-creds"));
    assert!(mounts_secret, "the labelled Secret is mounted");
    ns.delete().await;
}

fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

fn service_monitors(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &service_monitor_resource())
}

/// Installs the stand-in ServiceMonitor CRD of the end-to-end tests and waits until it is served.
async fn install_service_monitor_crd(client: &Client) -> Api<CustomResourceDefinition> {
    let text = std::fs::read_to_string(repo_path("tests/e2e/servicemonitor-crd.yaml")).unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("ServiceMonitor CRD applies");
    let probe = service_monitors(client, "default");
    eventually("ServiceMonitors to be served", TIMEOUT, || {
        let probe = probe.clone();
        async move {
            probe
                .list(&Default::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    crds
}

/// ServiceMonitors: a user's is never adopted; the endpoint's own one is deleted when the spec
/// stops asking for it, also after the spec was invalid in between (the status then had no
/// ServiceMonitor condition to remember it by).
#[tokio::test]
async fn service_monitors_are_neither_adopted_nor_left_behind() {
    if !enabled("service_monitors_are_neither_adopted_nor_left_behind") {
        return;
    }
    let client = client().await;
    install_crd(&client).await;
    let crds = install_service_monitor_crd(&client).await;
    let ns = TestNamespace::create(&client, "sm-trust").await;
    let monitors = service_monitors(&client, &ns.name);
    let mut theirs = DynamicObject::new("sm-taken", &service_monitor_resource());
    theirs.data = json!({"spec": {"selector": {"matchLabels": {"app": "db"}}, "endpoints": [{"port": "metrics"}]}});
    let theirs = monitors
        .create(&PostParams::default(), &theirs)
        .await
        .expect("user's ServiceMonitor");

    let _op = Operator::start(&ns.name);
    let with_monitor = "  metrics: {serviceMonitor: {enabled: true}}";
    apply_manifest(
        &client,
        &ns.name,
        &endpoint_manifest("sm-taken", with_monitor),
    )
    .await;
    apply_manifest(
        &client,
        &ns.name,
        &endpoint_manifest("sm-own", with_monitor),
    )
    .await;
    let ses: Api<ScalingEndpoint> = ns.api();
    wait_condition(
        &ses,
        "sm-taken",
        "Ready",
        ("False", "ChildConflict"),
        &[r#"ServiceMonitor "sm-taken""#],
    )
    .await;
    let after = monitors.get("sm-taken").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        theirs.metadata.resource_version
    );
    assert!(after.metadata.owner_references.is_none());

    // valid with a monitor → invalid → valid without one: the monitor goes.
    wait_condition(
        &ses,
        "sm-own",
        "ServiceMonitorReady",
        ("True", "Created"),
        &[],
    )
    .await;
    assert!(monitors.get_opt("sm-own").await.unwrap().is_some());
    let patch = |spec: serde_json::Value| {
        let ses = ses.clone();
        async move {
            ses.patch(
                "sm-own",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .expect("spec patched");
        }
    };
    patch(json!({"model": {"apiKeySecretRef": {"name": "missing", "key": "api-key"}}})).await;
    wait_condition(
        &ses,
        "sm-own",
        "ConfigValid",
        ("False", "SecretNotFound"),
        &[],
    )
    .await;
    let se = ses.get("sm-own").await.unwrap();
    assert!(condition(&se, "ServiceMonitorReady").is_none());
    patch(json!({
        "model": {"apiKeySecretRef": {"name": "openai", "key": "api-key"}},
        "metrics": {"serviceMonitor": {"enabled": false}},
    }))
    .await;
    wait_condition(&ses, "sm-own", "ConfigValid", ("True", "Valid"), &[]).await;
    eventually(
        "the endpoint's ServiceMonitor to be deleted",
        TIMEOUT,
        || {
            let monitors = monitors.clone();
            async move {
                match monitors
                    .get_opt("sm-own")
                    .await
                    .map_err(|e| e.to_string())?
                {
                    None => Ok(()),
                    Some(_) => Err("still there".to_owned()),
                }
            }
        },
    )
    .await;

    // The user's monitor survives its namesake endpoint.
    delete_endpoint_and_wait_for_gc(&ns, "sm-taken").await;
    let after = monitors.get("sm-taken").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        theirs.metadata.resource_version
    );
    ns.delete().await;
    // Other tests of this cluster expect no ServiceMonitor CRD.
    let _ = crds
        .delete(
            "servicemonitors.monitoring.coreos.com",
            &DeleteParams::default(),
        )
        .await;
}
