//! The in-cluster process reward model (`spec.reward.vllm`): a second vLLM server, `<name>-prm`,
//! built exactly like the generator's (GPUs, placement, restricted profile, its own generated API
//! key `<name>-prm-key`) but run on vLLM's pooling runner, so it answers `POST /pooling` with a
//! score per step instead of generating text. With `spec.reward.endpoint` nothing is built here:
//! the workers call that server directly.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::vllm::{self, VllmRole};
use super::{Component, autoscaling, service};
use crate::crd::RewardSpec;
use crate::layout::Names;

/// The objects of an in-cluster PRM.
#[derive(Debug, Clone)]
pub struct RewardServer {
    pub deployment: Deployment,
    pub service: Service,
    /// With more than one PRM pod, drains take one at a time (with one, it would block them).
    pub pdb: Option<PodDisruptionBudget>,
}

/// The PRM's Deployment and Service, or `None` when the reward model is an external endpoint.
pub fn server(names: &Names, owner: &OwnerReference, reward: &RewardSpec) -> Option<RewardServer> {
    let v = reward.vllm.as_ref()?;
    Some(RewardServer {
        // vLLM serves the PRM under the name the workers send as `model` (`rm_name`).
        deployment: vllm::deployment(names, owner, VllmRole::RewardModel, &reward.model, v),
        service: service::vllm(names, owner, VllmRole::RewardModel),
        pdb: (v.replicas > 1)
            .then(|| autoscaling::pdb(names.prm(), names, owner, Component::RewardModel)),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::build::fixtures::endpoint;
    use crate::build::{self, OperatorDefaults};
    use crate::dereference::Secrets;
    use crate::validate::validate;

    /// The guide's layout: the generator on an A100 node, the PRM on a tainted H100 node.
    const GUIDE: &str = r#"
metadata: {name: math, namespace: team}
spec:
  model: {name: qwen-math}
  algorithm: {name: particle-filtering, defaultBudget: 8, maxSteps: 12, stopToken: '\boxed'}
  vllm:
    model: Qwen/Qwen2.5-Math-1.5B-Instruct
    nodeSelector: {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}
  reward:
    model: Qwen/Qwen2.5-Math-PRM-7B
    vllm:
      model: Qwen/Qwen2.5-Math-PRM-7B
      gpus: 2
      nodeSelector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      args: [--max-model-len, "4096"]
"#;

    fn guide() -> build::Children {
        let se = endpoint(GUIDE);
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        build::build(&se, &resolved, &OperatorDefaults::default()).unwrap()
    }

    #[test]
    fn prm_is_a_second_gpu_server_on_its_own_nodes() {
        let c = guide();
        let prm = c.reward.expect("spec.reward.vllm builds a PRM server");
        assert_eq!(prm.deployment.metadata.name.as_deref(), Some("math-prm"));
        let spec = prm.deployment.spec.unwrap();
        // Its own selector: the generator's pods are never counted as the PRM's, or vice versa.
        let selector = spec.selector.match_labels.unwrap();
        assert_eq!(selector["app.kubernetes.io/component"], "reward-model");
        let generator = c.vllm_deployment.unwrap().spec.unwrap();
        assert_ne!(
            generator.selector.match_labels.unwrap()["app.kubernetes.io/component"],
            "reward-model"
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.node_selector.unwrap()["nvidia.com/gpu.product"],
            "NVIDIA-H100-80GB-HBM3"
        );
        assert_eq!(
            pod.tolerations.unwrap()[0].key.as_deref(),
            Some("nvidia.com/gpu")
        );
        let ctr = &pod.containers[0];
        let args = ctr.args.clone().unwrap();
        assert_eq!(args[0], "Qwen/Qwen2.5-Math-PRM-7B");
        assert!(
            args.windows(2).any(|w| w == ["--runner", "pooling"]),
            "{args:?}"
        );
        assert!(
            args.windows(2)
                .any(|w| w == ["--served-model-name", "Qwen/Qwen2.5-Math-PRM-7B"])
        );
        assert!(args.contains(&"--tensor-parallel-size=2".to_owned()));
        assert!(args.ends_with(&["--max-model-len".to_owned(), "4096".to_owned()]));
        assert_eq!(
            ctr.resources.clone().unwrap().limits.unwrap()["nvidia.com/gpu"].0,
            "2"
        );
        // The generator is not a pooling server.
        let gen_args = generator.template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert!(!gen_args.contains(&"--runner".to_owned()), "{gen_args:?}");

        let svc = prm.service;
        assert_eq!(svc.metadata.name.as_deref(), Some("math-prm"));
        let svc_spec = svc.spec.unwrap();
        assert_eq!(svc_spec.selector.unwrap(), selector);
        assert_eq!(svc_spec.ports.unwrap()[0].port, 8000);
        // One PRM pod: a PDB would block every node drain.
        assert!(prm.pdb.is_none());
    }

    #[test]
    fn several_prm_pods_get_their_own_disruption_budget() {
        let se = endpoint(&GUIDE.replace("gpus: 2", "gpus: 2\n      replicas: 2"));
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        let c = build::build(&se, &resolved, &OperatorDefaults::default()).unwrap();
        let pdb = c.reward.unwrap().pdb.expect("a PDB for 2 PRM pods");
        assert_eq!(pdb.metadata.name.as_deref(), Some("math-prm"));
        let selector = pdb.spec.unwrap().selector.unwrap().match_labels.unwrap();
        assert_eq!(selector["app.kubernetes.io/component"], "reward-model");
        // The generator's single pod still has none.
        assert!(c.vllm_pdb.is_none());
    }

    #[test]
    fn prm_requires_its_own_operator_key() {
        let c = guide();
        let pod = c
            .reward
            .unwrap()
            .deployment
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let env: BTreeMap<_, _> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let key = env["VLLM_API_KEY"];
        assert!(key.value.is_none(), "the key is never inline");
        let r = key
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .unwrap();
        assert_eq!(r.name, "math-prm-key");
        // The workers mount that Secret, to send the key to the PRM.
        let wpod = c.worker_deployment.spec.unwrap().template.spec.unwrap();
        let secrets: Vec<_> = wpod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert!(secrets.contains(&"math-prm-key".to_owned()), "{secrets:?}");
        assert!(secrets.contains(&"math-vllm-key".to_owned()), "{secrets:?}");
    }

    #[test]
    fn the_users_runner_wins() {
        let se = endpoint(&GUIDE.replace(
            r#"args: [--max-model-len, "4096"]"#,
            r#"args: ["--runner=pooling", "--trust-remote-code"]"#,
        ));
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        let c = build::build(&se, &resolved, &OperatorDefaults::default()).unwrap();
        let args = c
            .reward
            .unwrap()
            .deployment
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap();
        let runners: Vec<_> = args.iter().filter(|a| a.starts_with("--runner")).collect();
        assert_eq!(runners, ["--runner=pooling"], "{args:?}");
    }

    #[test]
    fn an_external_prm_builds_no_server() {
        let se = endpoint(
            "metadata: {name: ext, namespace: team}\nspec: {model: {name: m}, algorithm: {name: beam-search, beamWidth: 2, defaultBudget: 4}, reward: {model: prm, endpoint: 'http://prm.ml.svc:8000'}}",
        );
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        let c = build::build(&se, &resolved, &OperatorDefaults::default()).unwrap();
        assert!(c.reward.is_none());
    }
}
