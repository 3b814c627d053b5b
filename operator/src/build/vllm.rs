//! The vLLM Deployment: GPU requests and limits, the user's placement (nodeSelector, tolerations,
//! affinity, priority class), shared memory, a weights cache, the HF token from its Secret, and
//! `Recreate` so a rollout never needs twice the GPUs.
//!
//! The pods meet the `restricted` Pod Security Standard: a non-root uid, no privilege escalation,
//! no capabilities, the runtime's seccomp profile. The image is built to run as root, so every
//! path it writes to is an emptyDir (or the cache volume): `HOME`, `/tmp` and `HF_HOME`.
//!
//! vLLM only answers requests that carry the API key the operator generated for it (the Secret
//! `<name>-vllm-key`, see [`key_secret`]); the workers read the same key from the mounted Secret,
//! so nothing but the workers can call vLLM past their auth and budgets.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, child_meta, label_selector, pod_template_meta, with_pod_settings};
use crate::crd::{DEFAULT_VLLM_IMAGE, ProbeTiming, VllmSpec};
use crate::layout::{Names, VLLM_API_KEY_KEY, VLLM_PORT};

/// The writable home directory (an emptyDir): Python, Triton, torch.compile and vLLM keep their
/// caches and settings under `$HOME`.
const HOME: &str = "/home/vllm";
/// Where the weights cache is mounted (`HF_HOME`).
const HF_HOME: &str = "/var/cache/huggingface";
/// A non-root uid for vLLM. The image has no such user; with `HOME` set, Python does not need one.
const VLLM_UID: i64 = 1000;
/// Environment variable vLLM reads its API key from (the same as `--api-key`, but not visible in
/// the process list or the pod spec).
const API_KEY_ENV: &str = "VLLM_API_KEY";
/// Default probe timings `(period, failures)`. Downloading and loading weights can take long: the
/// startup probe allows an hour before liveness starts counting.
const STARTUP_DEFAULT: (i32, i32) = (10, 360);
const READINESS_DEFAULT: (i32, i32) = (5, 3);
const LIVENESS_DEFAULT: (i32, i32) = (10, 3);
const PROBE_TIMEOUT_SECONDS: i32 = 5;
/// Added to the startup budget for the Deployment's progress deadline: scheduling onto a GPU node
/// and pulling the (large) vLLM image happen before the startup probe starts counting.
const PROGRESS_MARGIN_SECONDS: i32 = 600;

/// Which of an endpoint's vLLM servers an object belongs to: both are built from a [`VllmSpec`]
/// the same way and differ only in name, labels, key Secret and how vLLM runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VllmRole {
    /// The model the workers generate candidates with (`spec.vllm`, `<name>-vllm`).
    Generator,
    /// The process reward model that scores steps (`spec.reward.vllm`, `<name>-prm`).
    RewardModel,
}

impl VllmRole {
    /// Name of the Deployment and Service.
    pub fn name(self, names: &Names) -> String {
        match self {
            VllmRole::Generator => names.vllm(),
            VllmRole::RewardModel => names.prm(),
        }
    }

    /// Name of the Secret holding the server's API key.
    pub fn key_secret_name(self, names: &Names) -> String {
        match self {
            VllmRole::Generator => names.vllm_key(),
            VllmRole::RewardModel => names.prm_key(),
        }
    }

    pub fn component(self) -> Component {
        match self {
            VllmRole::Generator => Component::ModelServer,
            VllmRole::RewardModel => Component::RewardModel,
        }
    }

    /// Arguments that make vLLM serve the model in this role. A process reward model runs on the
    /// pooling runner (vLLM v0.11.0's `--runner pooling`), which serves `/pooling` instead of
    /// generating text.
    fn runner_args(self) -> &'static [&'static str] {
        match self {
            VllmRole::Generator => &[],
            VllmRole::RewardModel => &["--runner", "pooling"],
        }
    }
}

/// The Secret holding a vLLM server's API key. Created once by the operator with a random `key`
/// and never changed by it (see [`crate::vllm_key`]).
pub fn key_secret(names: &Names, owner: &OwnerReference, role: VllmRole, key: String) -> Secret {
    Secret {
        metadata: child_meta(role.key_secret_name(names), names, role.component(), owner),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            VLLM_API_KEY_KEY.to_owned(),
            ByteString(key.into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// The restricted-profile security context of the vLLM container.
fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// The Deployment of one vLLM server of the endpoint, serving `v.model` as `served_model_name`.
pub fn deployment(
    names: &Names,
    owner: &OwnerReference,
    role: VllmRole,
    served_model_name: &str,
    v: &VllmSpec,
) -> Deployment {
    let component = role.component();
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
    let user_args = v.args.as_deref().unwrap_or_default();
    // One vLLM process spans all the pod's GPUs only with tensor parallelism; without the flag it
    // would use one GPU and leave the others allocated but idle.
    if v.gpus > 1 && !sets_tensor_parallel(user_args) {
        args.push(format!("--tensor-parallel-size={}", v.gpus));
    }
    // The user's own `--runner` wins (as with the tensor-parallel size), and is not doubled.
    if !sets_flag(user_args, &["--runner"]) {
        args.extend(role.runner_args().iter().map(|a| (*a).to_owned()));
    }
    args.extend(user_args.iter().cloned());

    let mut env = vec![
        plain_env("HOME", HOME),
        // The uid has no passwd entry: Python's getpass.getuser() (torch.compile's cache dir)
        // reads USER before asking the passwd database, which would raise.
        plain_env("USER", "vllm"),
        plain_env("HF_HOME", HF_HOME),
        // The key by reference: it never appears in the Deployment.
        EnvVar {
            name: API_KEY_ENV.to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: role.key_secret_name(names),
                    key: VLLM_API_KEY_KEY.to_owned(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
    ];
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

    // The user's claim, or the one the operator creates for `cache.pvc` (build/pvc.rs).
    let claim = v.cache.as_ref().and_then(|c| {
        c.persistent_volume_claim
            .clone()
            .or_else(|| c.pvc.as_ref().map(|_| super::pvc::claim_name(names)))
    });
    let cache = match (&v.cache, claim) {
        (_, Some(claim_name)) => Volume {
            name: "cache".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name,
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        (other, None) => Volume {
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
                size_limit: v.shm_size.clone(),
            }),
            ..Volume::default()
        },
        empty_dir("home"),
        empty_dir("tmp"),
    ];
    let mounts = vec![
        mount("cache", HF_HOME),
        mount("dshm", "/dev/shm"),
        mount("home", HOME),
        mount("tmp", "/tmp"),
    ];

    let probes = v.probes.clone().unwrap_or_default();
    let startup = health_probe(probes.startup, STARTUP_DEFAULT);

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
        startup_probe: Some(startup.clone()),
        readiness_probe: Some(health_probe(probes.readiness, READINESS_DEFAULT)),
        liveness_probe: Some(health_probe(probes.liveness, LIVENESS_DEFAULT)),
        resources: Some(gpu_resources(v)),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container()),
        ..Container::default()
    };

    let pod_spec = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: v.node_selector.clone(),
        tolerations: v.tolerations.clone(),
        affinity: v.affinity.clone(),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(VLLM_UID),
            run_as_group: Some(VLLM_UID),
            // The cache volume (a PVC too) becomes writable for that group.
            fs_group: Some(VLLM_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };

    Deployment {
        metadata: child_meta(role.name(names), names, component, owner),
        spec: Some(DeploymentSpec {
            replicas: Some(v.replicas),
            selector: label_selector(names, component),
            revision_history_limit: Some(3),
            // The default 600s would mark a rollout failed while a large model is still loading.
            progress_deadline_seconds: Some(progress_deadline_seconds(&startup)),
            // GPUs are scarce: a rolling update would need a second set to surge into.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(pod_template_meta(names, component, &v.pod, BTreeMap::new())),
                spec: Some(with_pod_settings(pod_spec, &v.pod)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// Whether the user's vLLM arguments already choose the tensor-parallel size (`--flag v` or
/// `--flag=v`, long or short form).
fn sets_tensor_parallel(args: &[String]) -> bool {
    sets_flag(args, &["--tensor-parallel-size", "-tp"])
}

/// Whether the user's vLLM arguments set one of `flags` (`--flag v` or `--flag=v`).
fn sets_flag(args: &[String], flags: &[&str]) -> bool {
    args.iter().any(|a| {
        let flag = a.split_once('=').map_or(a.as_str(), |(flag, _)| flag);
        flags.contains(&flag)
    })
}

/// A `/health` probe with the user's timings where set, the defaults `(period, failures)` elsewhere.
fn health_probe(timing: Option<ProbeTiming>, (period, failures): (i32, i32)) -> Probe {
    let t = timing.unwrap_or_default();
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/health".to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: t.initial_delay_seconds,
        period_seconds: Some(t.period_seconds.unwrap_or(period)),
        timeout_seconds: Some(t.timeout_seconds.unwrap_or(PROBE_TIMEOUT_SECONDS)),
        failure_threshold: Some(t.failure_threshold.unwrap_or(failures)),
        ..Probe::default()
    }
}

/// The longest a healthy pod may take to become ready: the startup probe's whole budget (initial
/// delay plus failures x period, each probe also up to its timeout) plus scheduling and image pull.
fn progress_deadline_seconds(startup: &Probe) -> i32 {
    let failures = startup.failure_threshold.unwrap_or(3);
    let per_probe = startup.period_seconds.unwrap_or(10) + startup.timeout_seconds.unwrap_or(1);
    startup
        .initial_delay_seconds
        .unwrap_or(0)
        .saturating_add(failures.saturating_mul(per_probe))
        .saturating_add(PROGRESS_MARGIN_SECONDS)
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
    use kube::Resource;

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

    #[test]
    fn vllm_meets_the_restricted_profile_and_requires_the_operator_key() {
        let se = endpoint(
            "metadata: {name: local, namespace: team}\nspec: {model: {name: q}, algorithm: {name: self-consistency}, vllm: {model: Qwen/Qwen2.5-0.5B-Instruct}}",
        );
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        let c = build::build(&se, &resolved, &OperatorDefaults::default()).unwrap();
        let pod = c
            .vllm_deployment
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert!(psc.run_as_user.is_some_and(|u| u > 0));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let ctr = &pod.containers[0];
        let sc = ctr.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        // Every path the image writes to is a volume, and HOME / HF_HOME point there.
        let env: BTreeMap<_, _> = ctr
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let mounts: Vec<&str> = ctr
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        for var in ["HOME", "HF_HOME"] {
            let path = env[var].value.as_deref().unwrap();
            assert!(
                mounts.contains(&path),
                "{var}={path} is not a volume: {mounts:?}"
            );
        }
        assert!(mounts.contains(&"/tmp"));
        assert_eq!(env["USER"].value.as_deref(), Some("vllm"));
        // The API key comes from the operator's Secret, by reference only.
        let key = env["VLLM_API_KEY"];
        assert!(key.value.is_none());
        let r = key
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("local-vllm-key", VLLM_API_KEY_KEY)
        );
        // The workers use that key as their upstream key, from the mounted Secret.
        assert_eq!(
            resolved.config.api_key,
            Some(inferscale_worker::config::SecretValue::File {
                file: "/etc/inferscale/secrets/local-vllm-key/api-key".into()
            })
        );
        let wpod = c.worker_deployment.spec.unwrap().template.spec.unwrap();
        let mount = wpod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/etc/inferscale/secrets/local-vllm-key")
            .expect("the key Secret is mounted into the workers");
        let vol = wpod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(
            vol.secret.unwrap().secret_name.as_deref(),
            Some("local-vllm-key")
        );
    }

    fn vllm_pod(spec_vllm: &str) -> (Vec<String>, DeploymentSpec) {
        let se = endpoint(&format!(
            "metadata: {{name: local, namespace: team}}\nspec: {{model: {{name: q}}, algorithm: {{name: self-consistency}}, vllm: {spec_vllm}}}"
        ));
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        let c = build::build(&se, &resolved, &OperatorDefaults::default()).unwrap();
        let spec = c.vllm_deployment.unwrap().spec.unwrap();
        let args = spec.template.spec.as_ref().unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        (args, spec)
    }

    fn tp_flags(args: &[String]) -> Vec<&String> {
        args.iter()
            .filter(|a| a.starts_with("--tensor-parallel-size") || a.starts_with("-tp"))
            .collect()
    }

    #[test]
    fn several_gpus_get_tensor_parallelism_unless_the_user_chose_it() {
        let (args, _) = vllm_pod("{model: m, gpus: 4}");
        assert_eq!(tp_flags(&args), ["--tensor-parallel-size=4"]);
        let (args, _) = vllm_pod("{model: m, gpus: 1}");
        assert!(tp_flags(&args).is_empty(), "{args:?}");
        // The user's choice wins in every spelling, and is not doubled.
        for user in [
            r#"["--tensor-parallel-size", "2"]"#,
            r#"["--tensor-parallel-size=2"]"#,
            r#"["-tp", "2"]"#,
            r#"["-tp=2"]"#,
        ] {
            let (args, _) = vllm_pod(&format!("{{model: m, gpus: 4, args: {user}}}"));
            let flags = tp_flags(&args);
            assert_eq!(flags.len(), 1, "{user}: {args:?}");
            assert!(!flags[0].ends_with('4'), "{user}: {args:?}");
        }
        // A flag that merely starts the same is not the tensor-parallel size.
        let (args, _) = vllm_pod(r#"{model: m, gpus: 2, args: ["--tensor-parallel-size-x=1"]}"#);
        assert!(args.contains(&"--tensor-parallel-size=2".to_owned()));
    }

    #[test]
    fn pod_settings_reach_the_vllm_pods() {
        let (_, spec) = vllm_pod(
            "{model: m, imagePullSecrets: [regcred], serviceAccountName: vllm, runtimeClassName: nvidia, priorityClassName: gpu, topologySpreadConstraints: [{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule}], podLabels: {team: ml}, podAnnotations: {note: x}}",
        );
        let meta = spec.template.metadata.clone().unwrap();
        let pod_labels = meta.labels.unwrap();
        assert_eq!(pod_labels["team"], "ml");
        assert_eq!(pod_labels["app.kubernetes.io/component"], "model-server");
        assert_eq!(meta.annotations.unwrap()["note"], "x");
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
        assert_eq!(pod.service_account_name.as_deref(), Some("vllm"));
        assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
        assert_eq!(pod.priority_class_name.as_deref(), Some("gpu"));
        assert_eq!(
            pod.topology_spread_constraints.unwrap()[0].when_unsatisfiable,
            "DoNotSchedule"
        );
        // vLLM's default runtime class is the node's.
        let (_, spec) = vllm_pod("{model: m}");
        assert!(spec.template.spec.unwrap().runtime_class_name.is_none());
    }

    #[test]
    fn shm_size_limits_the_memory_volume() {
        let shm = |spec: &DeploymentSpec| {
            let pod = spec.template.spec.as_ref().unwrap();
            let vol = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == "dshm")
                .unwrap();
            vol.empty_dir.as_ref().unwrap().size_limit.clone()
        };
        let (_, spec) = vllm_pod("{model: m, shmSize: 16Gi}");
        assert_eq!(shm(&spec), Some(Quantity("16Gi".to_owned())));
        let (_, spec) = vllm_pod("{model: m}");
        assert_eq!(shm(&spec), None);
    }

    #[test]
    fn progress_deadline_covers_the_startup_budget() {
        // Defaults: 360 x (10s + 5s timeout) = 5400s, plus the margin for scheduling and pull.
        let (_, spec) = vllm_pod("{model: m}");
        let ctr = &spec.template.spec.as_ref().unwrap().containers[0];
        let startup = ctr.startup_probe.clone().unwrap();
        assert_eq!(
            (startup.period_seconds, startup.failure_threshold),
            (Some(10), Some(360))
        );
        assert_eq!(spec.progress_deadline_seconds, Some(5400 + 600));
        // Overridden probes move the deadline with them; unset fields keep their defaults.
        let (_, spec) = vllm_pod(
            "{model: m, probes: {startup: {initialDelaySeconds: 60, periodSeconds: 30, failureThreshold: 240}, liveness: {timeoutSeconds: 20}}}",
        );
        let ctr = &spec.template.spec.as_ref().unwrap().containers[0];
        let startup = ctr.startup_probe.clone().unwrap();
        assert_eq!(startup.initial_delay_seconds, Some(60));
        assert_eq!(spec.progress_deadline_seconds, Some(60 + 240 * 35 + 600));
        let liveness = ctr.liveness_probe.clone().unwrap();
        assert_eq!(
            (
                liveness.timeout_seconds,
                liveness.period_seconds,
                liveness.failure_threshold
            ),
            (Some(20), Some(10), Some(3))
        );
        let readiness = ctr.readiness_probe.clone().unwrap();
        assert_eq!(readiness.period_seconds, Some(5));
    }

    #[test]
    fn key_secret_is_owned_and_holds_the_key() {
        let se = endpoint(
            "metadata: {name: local, namespace: team}\nspec: {model: {name: q}, algorithm: {name: self-consistency}, vllm: {model: x}}",
        );
        let names = Names::of(&se).unwrap();
        let owner = se.controller_owner_ref(&()).unwrap();
        let s = key_secret(&names, &owner, VllmRole::Generator, "k".repeat(64));
        assert_eq!(s.metadata.name.as_deref(), Some("local-vllm-key"));
        assert_eq!(
            s.metadata.owner_references.unwrap()[0].controller,
            Some(true)
        );
        assert_eq!(
            s.data.unwrap()[VLLM_API_KEY_KEY].0,
            "k".repeat(64).into_bytes()
        );
    }
}
