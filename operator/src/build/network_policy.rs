//! NetworkPolicies of `spec.worker.networkPolicy`: the workers accept their clients and the
//! scraper; the vLLM pods accept this endpoint's workers and the scraper. Ingress only.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec as PolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::vllm::VllmRole;
use super::{Component, child_meta, label_selector};
use crate::crd::NetworkPolicySpec;
use crate::layout::Names;

/// Both workers and vLLM name their serving (and metrics) port `http`.
fn http_port() -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::String("http".to_owned())),
        protocol: Some("TCP".to_owned()),
        end_port: None,
    }
}

/// One rule admitting `peers` to the `http` port, or none at all. An empty `from` list would
/// admit *every* source in NetworkPolicy semantics, so no peers means no rule (deny).
fn ingress(peers: Vec<NetworkPolicyPeer>) -> Vec<NetworkPolicyIngressRule> {
    if peers.is_empty() {
        return Vec::new();
    }
    vec![NetworkPolicyIngressRule {
        from: Some(peers),
        ports: Some(vec![http_port()]),
    }]
}

fn policy(
    name: String,
    names: &Names,
    owner: &OwnerReference,
    component: Component,
    peers: Vec<NetworkPolicyPeer>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: child_meta(name, names, component, owner),
        spec: Some(PolicySpec {
            pod_selector: Some(label_selector(names, component)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress(peers)),
            egress: None,
        }),
    }
}

fn enabled(np: Option<&NetworkPolicySpec>) -> Option<&NetworkPolicySpec> {
    np.filter(|np| np.enabled)
}

/// The workers' policy `<name>`: `from` (default: every pod of the namespace) and `metricsFrom`.
pub fn workers(
    names: &Names,
    owner: &OwnerReference,
    np: Option<&NetworkPolicySpec>,
) -> Option<NetworkPolicy> {
    let np = enabled(np)?;
    let mut peers = np.from.clone().unwrap_or_else(|| {
        vec![NetworkPolicyPeer {
            // An empty pod selector without a namespace selector: the policy's own namespace.
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        }]
    });
    peers.extend(np.metrics_from.iter().flatten().cloned());
    Some(policy(
        names.worker(),
        names,
        owner,
        Component::Worker,
        peers,
    ))
}

/// A vLLM server's policy (`<name>-vllm`, or `<name>-prm` for the reward model): this endpoint's
/// workers (same namespace) and `metricsFrom`.
pub fn vllm(
    names: &Names,
    owner: &OwnerReference,
    role: VllmRole,
    np: Option<&NetworkPolicySpec>,
) -> Option<NetworkPolicy> {
    let np = enabled(np)?;
    let mut peers = vec![NetworkPolicyPeer {
        pod_selector: Some(label_selector(names, Component::Worker)),
        ..NetworkPolicyPeer::default()
    }];
    peers.extend(np.metrics_from.iter().flatten().cloned());
    Some(policy(
        role.name(names),
        names,
        owner,
        role.component(),
        peers,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{self, OperatorDefaults, fixtures::endpoint};
    use crate::dereference::Secrets;
    use crate::validate::validate;

    fn children(worker: &str, vllm: bool) -> build::Children {
        let vllm = if vllm {
            "\n  vllm: {model: Qwen/Qwen2.5-7B-Instruct}"
        } else {
            ""
        };
        let se = endpoint(&format!(
            "metadata: {{name: ep, namespace: team}}\nspec:\n  model: {{name: qwen}}\n  algorithm: {{name: self-consistency}}\n  worker: {worker}{vllm}\n"
        ));
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        build::build(&se, &resolved, &OperatorDefaults::default()).unwrap()
    }

    fn rules(p: &NetworkPolicy) -> Vec<NetworkPolicyIngressRule> {
        p.spec.clone().unwrap().ingress.unwrap()
    }

    #[test]
    fn the_reward_model_admits_only_this_endpoints_workers_too() {
        let se = endpoint(
            "metadata: {name: ep, namespace: team}\nspec:\n  model: {name: qwen}\n  algorithm: {name: particle-filtering}\n  worker: {networkPolicy: {enabled: true}}\n  reward: {model: prm, vllm: {model: Qwen/Qwen2.5-Math-PRM-7B}}\n",
        );
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        let c = build::build(&se, &resolved, &OperatorDefaults::default()).unwrap();
        let p = c.reward_network_policy.unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("ep-prm"));
        let spec = p.spec.clone().unwrap();
        let selected = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(selected["app.kubernetes.io/component"], "reward-model");
        let from = rules(&p)[0].from.clone().unwrap();
        let peer = from[0].pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(peer["app.kubernetes.io/component"], "worker");
        assert_eq!(peer["app.kubernetes.io/instance"], "ep");
    }

    #[test]
    fn none_unless_enabled() {
        for w in ["{}", "{networkPolicy: {enabled: false}}"] {
            let c = children(w, true);
            assert!(c.worker_network_policy.is_none() && c.vllm_network_policy.is_none());
        }
    }

    #[test]
    fn workers_admit_the_namespace_by_default_and_the_scraper() {
        let c = children(
            "{networkPolicy: {enabled: true, metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]}}",
            false,
        );
        assert!(c.vllm_network_policy.is_none(), "no vLLM, no vLLM policy");
        let p = c.worker_network_policy.unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("ep"));
        let spec = p.spec.clone().unwrap();
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        let selected = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(selected["app.kubernetes.io/component"], "worker");
        assert_eq!(selected["app.kubernetes.io/instance"], "ep");
        let r = rules(&p);
        assert_eq!(r.len(), 1);
        let from = r[0].from.clone().unwrap();
        assert_eq!(from.len(), 2);
        assert_eq!(from[0].pod_selector, Some(LabelSelector::default()));
        assert!(from[0].namespace_selector.is_none(), "own namespace only");
        assert!(from[1].namespace_selector.is_some());
        assert_eq!(
            r[0].ports.clone().unwrap()[0].port,
            Some(IntOrString::String("http".to_owned()))
        );
    }

    #[test]
    fn vllm_admits_only_this_endpoints_workers_and_the_scraper() {
        let c = children(
            "{networkPolicy: {enabled: true, from: [{namespaceSelector: {matchLabels: {team: a}}}]}}",
            true,
        );
        let p = c.vllm_network_policy.unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("ep-vllm"));
        let selected = p
            .spec
            .clone()
            .unwrap()
            .pod_selector
            .unwrap()
            .match_labels
            .unwrap();
        assert_eq!(selected["app.kubernetes.io/component"], "model-server");
        let from = rules(&p)[0].from.clone().unwrap();
        assert_eq!(
            from.len(),
            1,
            "the workers' clients do not reach vLLM: {from:?}"
        );
        let workers = from[0].pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(workers["app.kubernetes.io/component"], "worker");
        assert_eq!(workers["app.kubernetes.io/instance"], "ep");
        assert!(from[0].namespace_selector.is_none());
    }

    #[test]
    fn no_peers_denies_instead_of_admitting_everyone() {
        let c = children("{networkPolicy: {enabled: true, from: []}}", false);
        let p = c.worker_network_policy.unwrap();
        // `ingress: [{from: []}]` would admit every source; no rule admits none.
        assert!(rules(&p).is_empty());
        assert_eq!(p.spec.unwrap().policy_types.unwrap(), ["Ingress"]);
    }
}
