//! The vLLM Deployment: GPU requests and limits, the user's placement (nodeSelector, tolerations,
//! affinity, priority class), shared memory, a weights cache, the HF token from its Secret, and
//! `Recreate` so a rollout never needs twice the GPUs.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, Names, VLLM_PORT, child_meta, label_selector, labels};
use crate::crd::{DEFAULT_VLLM_IMAGE, VllmSpec};

/// Where the weights cache is mounted (`HF_HOME`).
const HF_HOME: &str = "/root/.cache/huggingface";

pub fn deployment(
    names: &Names,
    owner: &OwnerReference,
    served_model_name: &str,
    v: &VllmSpec,
) -> Deployment {
    // The positional model works with both `vllm serve` and the older api_server entrypoint.
    let mut args = vec![
        v.model.clone(),
        "--served-model-name".to_owned(),
        served_model_name.to_owned(),
        "--host".to_owned(),
        "0.0.0.0".to_owned(),
        "--port".to_owned(),
        VLLM_PORT.to_string(),
    ];
    args.extend(v.args.iter().flatten().cloned());

    let mut env = vec![EnvVar {
        name: "HF_HOME".to_owned(),
        value: Some(HF_HOME.to_owned()),
        value_from: None,
    }];
    if let Some(r) = &v.hf_token_secret_ref {
        // A reference, not a value: the token never appears in the Deployment.
        env.push(EnvVar {
            name: "HF_TOKEN".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    env.extend(v.env.iter().flatten().cloned());

    let cache = match &v.cache {
        Some(c) if c.persistent_volume_claim.is_some() => Volume {
            name: "cache".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: c.persistent_volume_claim.clone().unwrap_or_default(),
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        other => Volume {
            name: "cache".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: other.as_ref().and_then(|c| c.empty_dir_size.clone()),
                medium: None,
            }),
            ..Volume::default()
        },
    };
    let volumes = vec![
        cache,
        // PyTorch/NCCL use /dev/shm for inter-process tensors; the runtime default of 64Mi is too
        // small for tensor parallelism.
        Volume {
            name: "dshm".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: None,
            }),
            ..Volume::default()
        },
    ];
    let mounts = vec![
        VolumeMount {
            name: "cache".to_owned(),
            mount_path: HF_HOME.to_owned(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "dshm".to_owned(),
            mount_path: "/dev/shm".to_owned(),
            ..VolumeMount::default()
        },
    ];

    let health = |period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/health".to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Probe::default()
    };

    let container = Container {
        name: "vllm".to_owned(),
        image: Some(
            v.image
                .clone()
                .unwrap_or_else(|| DEFAULT_VLLM_IMAGE.to_owned()),
        ),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: VLLM_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        // Downloading and loading weights can take long: the startup probe allows an hour before
        // liveness starts counting.
        startup_probe: Some(health(10, 360)),
        readiness_probe: Some(health(5, 3)),
        liveness_probe: Some(health(10, 3)),
        resources: Some(gpu_resources(v)),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    Deployment {
        metadata: child_meta(names.vllm(), names, Component::ModelServer, owner),
        spec: Some(DeploymentSpec {
            replicas: Some(v.replicas),
            selector: label_selector(names, Component::ModelServer),
            revision_history_limit: Some(3),
            // GPUs are scarce: a rolling update would need a second set to surge into.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(names, Component::ModelServer)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: v.node_selector.clone(),
                    tolerations: v.tolerations.clone(),
                    affinity: v.affinity.clone(),
                    priority_class_name: v.priority_class_name.clone(),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The user's resources with `gpus` of the GPU resource added to requests and limits (extended
/// resources must be equal in both).
fn gpu_resources(v: &VllmSpec) -> ResourceRequirements {
    let mut r = v.resources.clone().unwrap_or_default();
    let gpus = Quantity(v.gpus.to_string());
    r.limits
        .get_or_insert_with(Default::default)
        .insert(v.gpu_resource_name.clone(), gpus.clone());
    r.requests
        .get_or_insert_with(Default::default)
        .insert(v.gpu_resource_name.clone(), gpus);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{self, OperatorDefaults, fixtures::endpoint};
    use crate::dereference::Secrets;
    use crate::validate::validate;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;

    #[test]
    fn vllm_on_gpu_nodes() {
        let se = endpoint(
            r#"
metadata: {name: local, namespace: team}
spec:
  model: {name: qwen-small}
  algorithm: {name: self-consistency}
  vllm:
    model: Qwen/Qwen2.5-0.5B-Instruct
    gpus: 2
    replicas: 2
    nodeSelector: {nvidia.com/gpu.product: NVIDIA-L4}
    tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
    hfTokenSecretRef: {name: hf, key: token}
    cache: {emptyDirSize: 20Gi}
    args: [--max-model-len, "4096"]
    priorityClassName: inference
"#,
        );
        let secrets = Secrets::from([(
            "hf".to_owned(),
            Some(Secret {
                data: Some([("token".to_owned(), ByteString(b"hf_x".to_vec()))].into()),
                ..Secret::default()
            }),
        )]);
        let resolved = validate(&se, &secrets).unwrap().unwrap();
        // The HF token is vLLM's, not the workers'.
        assert!(resolved.worker_secrets.is_empty());
        let c = build::build(&se, &resolved, &OperatorDefaults::default()).unwrap();
        let d = c.vllm_deployment.unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("local-vllm"));
        let spec = d.spec.unwrap();
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.node_selector.unwrap()["nvidia.com/gpu.product"],
            "NVIDIA-L4"
        );
        assert_eq!(pod.tolerations.unwrap().len(), 1);
        assert_eq!(pod.priority_class_name.as_deref(), Some("inference"));
        let ctr = &pod.containers[0];
        assert_eq!(ctr.image.as_deref(), Some(DEFAULT_VLLM_IMAGE));
        let args = ctr.args.clone().unwrap();
        assert_eq!(args[0], "Qwen/Qwen2.5-0.5B-Instruct");
        assert!(
            args.windows(2)
                .any(|w| w == ["--served-model-name", "qwen-small"])
        );
        assert!(args.ends_with(&["--max-model-len".to_owned(), "4096".to_owned()]));
        let res = ctr.resources.clone().unwrap();
        assert_eq!(res.limits.unwrap()["nvidia.com/gpu"].0, "2");
        assert_eq!(res.requests.unwrap()["nvidia.com/gpu"].0, "2");
        let hf = ctr
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "HF_TOKEN")
            .unwrap();
        assert!(hf.value.is_none());
        assert_eq!(
            hf.value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "hf"
        );
        let readiness = ctr
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(readiness.path.as_deref(), Some("/health"));
        let vols = pod.volumes.unwrap();
        assert!(vols.iter().any(|v| v.name == "dshm"
            && v.empty_dir.as_ref().unwrap().medium.as_deref() == Some("Memory")));
        assert_eq!(
            c.vllm_service.unwrap().metadata.name.as_deref(),
            Some("local-vllm")
        );
        assert!(c.vllm_pdb.is_some());
        // Only one worker by default: no worker PDB.
        assert!(c.worker_pdb.is_none());
    }
}
