//! The worker Deployment: non-root, read-only root filesystem, probes on `/health` and `/ready`,
//! the ConfigMap and each referenced Secret mounted as files.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    CONFIG_HASH_ANNOTATION, Component, OperatorDefaults, child_meta, config_map, label_selector,
    pod_template_meta, with_pod_settings,
};
use crate::crd::ScalingEndpointSpec;
use crate::digest;
use crate::layout::Names;
use crate::layout::{CONFIG_DIR, CONFIG_FILE, SECRETS_DIR};
use crate::validate::Resolved;

/// The distroless images' `nonroot` user; the worker needs no privileges.
const NONROOT: i64 = 65532;

pub fn build(
    names: &Names,
    owner: &OwnerReference,
    spec: &ScalingEndpointSpec,
    resolved: &Resolved,
    defaults: &OperatorDefaults,
) -> Deployment {
    let w = &spec.worker;
    let own_annotations = BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_owned(),
        resolved.config_hash.clone(),
    )]);

    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map::name(names, &resolved.config_yaml),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        // The root filesystem is read-only; anything that needs scratch space gets /tmp.
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    ];
    // With vLLM the workers also read vLLM's API key (their upstream key) from its Secret, and
    // with an in-cluster PRM the PRM's key.
    let vllm_key = spec.vllm.as_ref().map(|_| names.vllm_key());
    let prm_key = spec
        .reward
        .as_ref()
        .and_then(|r| r.vllm.as_ref())
        .map(|_| names.prm_key());
    let secrets: std::collections::BTreeSet<&String> = resolved
        .worker_secrets
        .iter()
        .chain(&vllm_key)
        .chain(&prm_key)
        .collect();
    for secret in secrets {
        let volume = secret_volume_name(secret);
        // The whole Secret, no subPath: the kubelet then swaps rotated values in place and the
        // worker re-reads the files.
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let http_probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    };

    let container = Container {
        name: "worker".to_owned(),
        image: Some(
            w.image
                .clone()
                .unwrap_or_else(|| defaults.worker_image.clone()),
        ),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: spec.service.port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/health", 10)),
        readiness_probe: Some(http_probe("/ready", 5)),
        resources: Some(w.resources.clone().unwrap_or_else(default_resources)),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    Deployment {
        metadata: child_meta(names.worker(), names, Component::Worker, owner),
        spec: Some(DeploymentSpec {
            // With an HPA the replica count is the HPA's: leaving it out of the apply means the
            // operator never fights it.
            replicas: w.autoscaling.is_none().then_some(w.replicas),
            selector: label_selector(names, Component::Worker),
            revision_history_limit: Some(3),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                // Surge first: a config roll never drops serving capacity.
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(pod_template_meta(
                    names,
                    Component::Worker,
                    &w.pod,
                    own_annotations,
                )),
                spec: Some(with_pod_settings(
                    PodSpec {
                        containers: vec![container],
                        volumes: Some(volumes),
                        node_selector: w.node_selector.clone(),
                        tolerations: w.tolerations.clone(),
                        affinity: w.affinity.clone(),
                        // Workers never call the Kubernetes API.
                        automount_service_account_token: Some(false),
                        enable_service_links: Some(false),
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(NONROOT),
                            run_as_group: Some(NONROOT),
                            fs_group: Some(NONROOT),
                            seccomp_profile: Some(SeccompProfile {
                                type_: "RuntimeDefault".to_owned(),
                                localhost_profile: None,
                            }),
                            ..PodSecurityContext::default()
                        }),
                        ..PodSpec::default()
                    },
                    &w.pod,
                )),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// Requests that let the scheduler place workers sensibly and give an HPA a CPU baseline.
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("128Mi".to_owned())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// A volume name for a Secret. Secret names may be 253 characters with dots; volume names must be
/// DNS labels, so use a short stable hash.
pub fn secret_volume_name(secret: &str) -> String {
    format!(
        "secret-{}",
        digest::sha256_hex_prefix(secret.as_bytes(), 10)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::endpoint;
    use crate::build::{self, CONFIG_HASH_ANNOTATION};
    use crate::dereference::Secrets;
    use crate::validate::validate;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;

    fn children(yaml: &str, secrets: &Secrets) -> build::Children {
        let se = endpoint(yaml);
        let resolved = validate(&se, secrets).unwrap().unwrap();
        build::build(&se, &resolved, &OperatorDefaults::default()).unwrap()
    }

    fn secret(name: &str, key: &str) -> (String, Option<Secret>) {
        (
            name.to_owned(),
            Some(Secret {
                data: Some([(key.to_owned(), ByteString(b"v".to_vec()))].into()),
                ..Secret::default()
            }),
        )
    }

    const SPEC: &str = r#"
metadata: {name: sc, namespace: team}
spec:
  model: {name: gpt-4o-mini, apiKeySecretRef: {name: openai, key: api-key}}
  algorithm: {name: self-consistency}
  worker: {replicas: 3, podAnnotations: {team: search}}
  service: {port: 9000}
"#;

    #[test]
    fn pod_settings_reach_the_worker_pods_and_never_override_the_operator() {
        let c = children(
            r#"
metadata: {name: sc, namespace: team}
spec:
  model: {name: m}
  algorithm: {name: self-consistency}
  worker:
    imagePullSecrets: [regcred, mirror]
    serviceAccountName: workers
    runtimeClassName: gvisor
    priorityClassName: high
    topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}
    podLabels: {team: search}
    podAnnotations: {team: search, inferscale.dev/config-hash: forged}
"#,
            &Secrets::new(),
        );
        let tpl = c.worker_deployment.spec.unwrap().template;
        let meta = tpl.metadata.unwrap();
        let pod_labels = meta.labels.unwrap();
        assert_eq!(pod_labels["team"], "search");
        // The operator's selector labels are all still there.
        let names = Names::of(&endpoint("metadata: {name: sc, namespace: team}\nspec: {model: {name: m}, algorithm: {name: self-consistency}}")).unwrap();
        for (k, v) in build::selector_labels(&names, Component::Worker) {
            assert_eq!(pod_labels[&k], v);
        }
        let ann = meta.annotations.unwrap();
        assert_eq!(ann["team"], "search");
        // The config hash is the operator's: a forged one would stop config rolls.
        assert_eq!(ann[CONFIG_HASH_ANNOTATION].len(), 64);
        let pod = tpl.spec.unwrap();
        let pulls: Vec<_> = pod
            .image_pull_secrets
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(pulls, ["regcred", "mirror"]);
        assert_eq!(pod.service_account_name.as_deref(), Some("workers"));
        assert_eq!(pod.runtime_class_name.as_deref(), Some("gvisor"));
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        let spread = pod.topology_spread_constraints.unwrap();
        assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
        // A service account does not bring the API token: workers never call the API.
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn worker_pods_without_settings_keep_the_cluster_defaults() {
        let c = children(SPEC, &Secrets::from([secret("openai", "api-key")]));
        let pod = c.worker_deployment.spec.unwrap().template.spec.unwrap();
        assert!(pod.image_pull_secrets.is_none());
        assert!(pod.service_account_name.is_none());
        assert!(pod.runtime_class_name.is_none());
        assert!(pod.topology_spread_constraints.is_none());
    }

    #[test]
    fn worker_deployment_follows_the_contract() {
        let c = children(SPEC, &Secrets::from([secret("openai", "api-key")]));
        let d = c.worker_deployment;
        assert_eq!(d.metadata.name.as_deref(), Some("sc"));
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.kind, "ScalingEndpoint");
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let tpl = spec.template;
        let ann = tpl.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert_eq!(ann["team"], "search");
        assert_eq!(ann[CONFIG_HASH_ANNOTATION].len(), 64);
        let pod = tpl.spec.unwrap();
        let ctr = &pod.containers[0];
        assert_eq!(
            ctr.args.as_deref().unwrap(),
            ["--config", "/etc/inferscale/config/config.yaml"]
        );
        let port = &ctr.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 9000)
        );
        let probe_path = |p: &Option<Probe>| {
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap()
        };
        assert_eq!(probe_path(&ctr.liveness_probe), "/health");
        assert_eq!(probe_path(&ctr.readiness_probe), "/ready");
        let sc = ctr.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        // The Secret is mounted whole (no subPath) at the path the config names.
        let mount = ctr
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == "/etc/inferscale/secrets/openai")
            .expect("secret mount");
        assert!(mount.sub_path.is_none());
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(vol.secret.unwrap().secret_name.as_deref(), Some("openai"));
        // No secret values anywhere in env.
        assert!(ctr.env.is_none());
        // A PDB, since there is more than one worker; no HPA.
        assert!(c.worker_pdb.is_some());
        assert!(c.worker_hpa.is_none());
        assert!(c.vllm_deployment.is_none());
        let svc = c.worker_service.spec.unwrap();
        assert_eq!(svc.ports.unwrap()[0].port, 9000);
    }

    #[test]
    fn autoscaling_leaves_replicas_to_the_hpa() {
        let c = children(
            r#"
metadata: {name: auto}
spec:
  model: {name: m}
  algorithm: {name: self-consistency}
  worker: {autoscaling: {minReplicas: 2, maxReplicas: 5}}
"#,
            &Secrets::new(),
        );
        assert_eq!(c.worker_deployment.spec.unwrap().replicas, None);
        let hpa = c.worker_hpa.unwrap().spec.unwrap();
        assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 5));
        assert_eq!(hpa.scale_target_ref.name, "auto");
        assert!(c.worker_pdb.is_some());
    }

    #[test]
    fn secret_volume_names_are_dns_labels() {
        let n = secret_volume_name("a.very.long.secret.name.with.dots");
        assert!(n.len() <= 63);
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_ne!(n, secret_volume_name("other"));
    }

    #[test]
    fn secret_volume_name_is_stable_across_versions() {
        // Pinned (sha256("db-creds") from Python's hashlib): a changed encoding would rename the
        // volume of every running worker and roll them all.
        assert_eq!(secret_volume_name("db-creds"), "secret-4dee4722bd");
    }
}
