//! Status: computed from what was applied and observed, never from what was hoped for. Pure, so the
//! condition logic is unit-tested.
//!
//! Conditions follow the Kubernetes conventions: positive polarity, CamelCase reasons, a
//! `lastTransitionTime` that only moves when the status flips, and a composite `Ready` whose reason
//! and message are those of the first condition that is not satisfied.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::build::{Component, selector_string};
use crate::crd::{ReplicaCounts, ScalingEndpoint, ScalingEndpointStatus};
use crate::layout::Names;
use crate::problem::Problem;
use crate::workload_health::diagnose;

/// Condition types.
pub mod types {
    pub const READY: &str = "Ready";
    pub const CONFIG_VALID: &str = "ConfigValid";
    pub const WORKERS_AVAILABLE: &str = "WorkersAvailable";
    pub const MODEL_SERVER_AVAILABLE: &str = "ModelServerAvailable";
    pub const REWARD_MODEL_AVAILABLE: &str = "RewardModelAvailable";
    pub const SERVICE_MONITOR_READY: &str = "ServiceMonitorReady";
}

/// What happened to the ServiceMonitor this reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceMonitorState {
    NotRequested,
    Applied,
    CrdMissing,
}

/// What a reconcile saw.
#[derive(Debug)]
pub struct Observed<'a> {
    /// The first thing wrong with the spec; children were then left as they were.
    pub problem: Option<&'a Problem>,
    /// Hash of the configuration the workers were given (None when the spec is invalid).
    pub config_hash: Option<String>,
    pub worker: Option<&'a Deployment>,
    pub vllm: Option<&'a Deployment>,
    /// Pods of the workers / of vLLM, listed when their Deployment is not fully available, so the
    /// conditions can say why (empty otherwise).
    pub worker_pods: &'a [Pod],
    pub vllm_pods: &'a [Pod],
    /// The in-cluster process reward model's Deployment and (when it needs a diagnosis) pods.
    pub reward: Option<&'a Deployment>,
    pub reward_pods: &'a [Pod],
    pub service_monitor: ServiceMonitorState,
}

struct Cond {
    type_: &'static str,
    ok: bool,
    reason: String,
    message: String,
}

impl Cond {
    fn new(type_: &'static str, ok: bool, reason: &str, message: String) -> Self {
        Self {
            type_,
            ok,
            reason: reason.to_owned(),
            message,
        }
    }
}

/// Replica counts and availability of a Deployment, as a condition.
fn availability(
    type_: &'static str,
    d: Option<&Deployment>,
    pods: &[Pod],
    what: &str,
) -> (Cond, ReplicaCounts, i32) {
    let Some(d) = d else {
        return (
            Cond::new(
                type_,
                false,
                "NotCreated",
                format!("the {what} Deployment does not exist yet"),
            ),
            ReplicaCounts::default(),
            0,
        );
    };
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let counts = ReplicaCounts { desired, ready };
    let replicas = st.replicas.unwrap_or(0);
    // Why pods are missing or a rollout does not finish, in the cluster's own words.
    let diagnosis = diagnose(d, pods);
    let cond = if desired == 0 {
        Cond::new(type_, false, "ScaledToZero", format!("0 {what} requested"))
    } else if available < desired {
        let counts = format!("{available} of {desired} {what} available");
        match diagnosis {
            Some(u) => Cond::new(type_, false, &u.reason, format!("{counts}: {}", u.message)),
            None => Cond::new(type_, false, "Unavailable", counts),
        }
    } else if updated < desired
        || st.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0)
    {
        // Still serving at full capacity while a new revision rolls out; a stuck new revision is
        // named, but the endpoint serves, so the condition stays True.
        let counts = format!("{available} of {desired} {what} available, {updated} updated");
        let message = match diagnosis {
            Some(u) => format!(
                "{counts}; the new revision is stuck: {}: {}",
                u.reason, u.message
            ),
            None => counts,
        };
        Cond::new(type_, true, "RollingOut", message)
    } else {
        Cond::new(
            type_,
            true,
            "Available",
            format!("{available} of {desired} {what} available"),
        )
    };
    (cond, counts, replicas)
}

/// `RewardModelAvailable` (with `spec.reward`): an external endpoint is taken as available (the
/// workers fall back to a majority vote when it fails mid-search, and say so); an in-cluster PRM
/// is available when its Deployment is, with the same reasons as `ModelServerAvailable`.
fn reward_model_condition(
    se: &ScalingEndpoint,
    obs: &Observed,
) -> Option<(Cond, Option<ReplicaCounts>)> {
    let reward = se.spec.reward.as_ref()?;
    Some(match (&reward.vllm, &reward.endpoint) {
        (Some(_), _) => {
            let (c, counts, _) = availability(
                types::REWARD_MODEL_AVAILABLE,
                obs.reward,
                obs.reward_pods,
                "reward model pods",
            );
            (c, Some(counts))
        }
        (None, endpoint) => (
            Cond::new(
                types::REWARD_MODEL_AVAILABLE,
                true,
                "ExternalEndpoint",
                format!(
                    "the workers call the reward model at {}",
                    endpoint.as_deref().unwrap_or("<unset>")
                ),
            ),
            None,
        ),
    })
}

/// The status for a reconcile's observations. `now` stamps conditions that changed.
pub fn compute(
    se: &ScalingEndpoint,
    names: &Names,
    obs: &Observed,
    now: &Time,
) -> ScalingEndpointStatus {
    let previous = se.status.clone().unwrap_or_default();
    let generation = se.metadata.generation;

    let config = match obs.problem {
        Some(p) => Cond::new(types::CONFIG_VALID, false, p.reason, p.message.clone()),
        None => Cond::new(
            types::CONFIG_VALID,
            true,
            "Valid",
            "the configuration and every referenced Secret key are valid".to_owned(),
        ),
    };
    let (workers, worker_counts, replicas) = availability(
        types::WORKERS_AVAILABLE,
        obs.worker,
        obs.worker_pods,
        "workers",
    );
    let model_server = se.spec.vllm.as_ref().map(|_| {
        availability(
            types::MODEL_SERVER_AVAILABLE,
            obs.vllm,
            obs.vllm_pods,
            "vLLM pods",
        )
    });

    let reward_model = reward_model_condition(se, obs);

    let url = names.url(se.spec.service.port);
    let ready = {
        let mut parts = vec![&config, &workers];
        if let Some((c, _, _)) = &model_server {
            parts.push(c);
        }
        if let Some((c, _)) = &reward_model {
            parts.push(c);
        }
        match parts.into_iter().find(|c| !c.ok) {
            Some(first) => Cond::new(types::READY, false, &first.reason, first.message.clone()),
            None => Cond::new(types::READY, true, "Ready", format!("serving at {url}")),
        }
    };
    let service_monitor = match obs.service_monitor {
        ServiceMonitorState::NotRequested => None,
        ServiceMonitorState::Applied => Some(Cond::new(
            types::SERVICE_MONITOR_READY,
            true,
            "Created",
            "the ServiceMonitor exists".to_owned(),
        )),
        ServiceMonitorState::CrdMissing => Some(Cond::new(
            types::SERVICE_MONITOR_READY,
            false,
            "CRDNotInstalled",
            "the monitoring.coreos.com/v1 ServiceMonitor CRD is not installed: install the prometheus-operator CRDs or set metrics.serviceMonitor.enabled to false".to_owned(),
        )),
    };

    let mut conds = vec![ready, config, workers];
    let mut model_server_counts = None;
    if let Some((c, counts, _)) = model_server {
        conds.push(c);
        model_server_counts = Some(counts);
    }
    let mut reward_model_counts = None;
    if let Some((c, counts)) = reward_model {
        conds.push(c);
        reward_model_counts = counts;
    }
    conds.extend(service_monitor);

    let conditions = conds
        .into_iter()
        .map(|c| {
            let status = if c.ok { "True" } else { "False" };
            // The transition time moves only when the status flips.
            let last_transition_time = previous
                .conditions
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
            Condition {
                type_: c.type_.to_owned(),
                status: status.to_owned(),
                reason: c.reason,
                message: c.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();

    ScalingEndpointStatus {
        observed_generation: generation,
        url: Some(url),
        replicas,
        selector: Some(selector_string(names, Component::Worker)),
        workers: Some(worker_counts),
        model_server: model_server_counts,
        reward_model: reward_model_counts,
        // While the spec is invalid the workers keep the configuration they had.
        config_hash: obs.config_hash.clone().or(previous.config_hash),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::endpoint;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::jiff::Timestamp;

    fn deployment(desired: i32, available: i32) -> Deployment {
        Deployment {
            metadata: kube::api::ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(desired),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(available),
                ready_replicas: Some(available),
                available_replicas: Some(available),
                updated_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    fn time(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn cond<'a>(s: &'a ScalingEndpointStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    const SPEC: &str = "metadata: {name: sc, namespace: team}\nspec: {model: {name: m}, algorithm: {name: self-consistency}}";

    #[test]
    fn ready_when_workers_are_available() {
        let se = endpoint(SPEC);
        let names = Names::of(&se).unwrap();
        let d = deployment(1, 1);
        let obs = Observed {
            problem: None,
            config_hash: Some("h".into()),
            worker: Some(&d),
            vllm: None,
            worker_pods: &[],
            vllm_pods: &[],
            reward: None,
            reward_pods: &[],
            service_monitor: ServiceMonitorState::NotRequested,
        };
        let s = compute(&se, &names, &obs, &time(10));
        assert_eq!(s.url.as_deref(), Some("http://sc.team.svc:8108/v1"));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(
            s.workers,
            Some(ReplicaCounts {
                desired: 1,
                ready: 1
            })
        );
        assert_eq!(s.replicas, 1);
        assert!(
            s.conditions
                .iter()
                .all(|c| c.type_ != "ModelServerAvailable")
        );
        assert_eq!(
            s.selector.as_deref(),
            Some(
                "app.kubernetes.io/component=worker,app.kubernetes.io/instance=sc,app.kubernetes.io/name=inferscale-worker"
            )
        );
    }

    #[test]
    fn ready_bubbles_up_the_first_problem_and_keeps_transition_times() {
        let mut se = endpoint(SPEC);
        let names = Names::of(&se).unwrap();
        let d = deployment(2, 1);
        let problem = Problem {
            reason: "SecretNotFound",
            message: "secret \"openai\" not found".into(),
        };
        let obs = Observed {
            problem: Some(&problem),
            config_hash: None,
            worker: Some(&d),
            vllm: None,
            worker_pods: &[],
            vllm_pods: &[],
            reward: None,
            reward_pods: &[],
            service_monitor: ServiceMonitorState::NotRequested,
        };
        let s = compute(&se, &names, &obs, &time(10));
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert_eq!(
            cond(&s, "WorkersAvailable").message,
            "1 of 2 workers available"
        );
        // Same status later: the transition time stays.
        se.status = Some(s.clone());
        let s2 = compute(&se, &names, &obs, &time(20));
        assert_eq!(s, s2);
        // Fixed: Ready flips and its time moves; ConfigValid flips too.
        let d = deployment(2, 2);
        let obs = Observed {
            problem: None,
            config_hash: Some("h".into()),
            worker: Some(&d),
            ..obs
        };
        let s3 = compute(&se, &names, &obs, &time(30));
        assert_eq!(cond(&s3, "Ready").status, "True");
        assert_eq!(cond(&s3, "Ready").last_transition_time, time(30));
    }

    #[test]
    fn reward_model_gates_ready_when_served_in_cluster() {
        let se = endpoint(
            "metadata: {name: pf, namespace: team}\nspec: {model: {name: m}, algorithm: {name: particle-filtering}, reward: {model: prm, vllm: {model: Qwen/Qwen2.5-Math-PRM-7B}}}",
        );
        let names = Names::of(&se).unwrap();
        let w = deployment(1, 1);
        let loading = deployment(1, 0);
        let obs = Observed {
            problem: None,
            config_hash: Some("h".into()),
            worker: Some(&w),
            vllm: None,
            worker_pods: &[],
            vllm_pods: &[],
            reward: Some(&loading),
            reward_pods: &[],
            service_monitor: ServiceMonitorState::NotRequested,
        };
        let s = compute(&se, &names, &obs, &time(10));
        let rm = cond(&s, "RewardModelAvailable");
        assert_eq!(
            (rm.status.as_str(), rm.reason.as_str(), rm.message.as_str()),
            ("False", "Unavailable", "0 of 1 reward model pods available")
        );
        // Workers alone do not make the endpoint Ready: every request would fall back.
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Unavailable")
        );
        assert!(ready.message.contains("reward model"), "{}", ready.message);
        assert_eq!(
            s.reward_model,
            Some(ReplicaCounts {
                desired: 1,
                ready: 0
            })
        );

        let up = deployment(1, 1);
        let s = compute(
            &se,
            &names,
            &Observed {
                reward: Some(&up),
                config_hash: Some("h".into()),
                ..obs
            },
            &time(20),
        );
        assert_eq!(cond(&s, "RewardModelAvailable").status, "True");
        assert_eq!(cond(&s, "Ready").status, "True");
        // Without its Deployment (deleted by hand), the condition says so.
        let s = compute(
            &se,
            &names,
            &Observed {
                reward: None,
                config_hash: Some("h".into()),
                ..obs
            },
            &time(30),
        );
        assert_eq!(cond(&s, "RewardModelAvailable").reason, "NotCreated");
    }

    #[test]
    fn an_external_reward_model_is_available_and_absent_reward_adds_no_condition() {
        let se = endpoint(
            "metadata: {name: pf, namespace: team}\nspec: {model: {name: m}, algorithm: {name: particle-filtering}, reward: {model: prm, endpoint: 'http://prm.ml.svc:8000'}}",
        );
        let names = Names::of(&se).unwrap();
        let w = deployment(1, 1);
        let obs = Observed {
            problem: None,
            config_hash: Some("h".into()),
            worker: Some(&w),
            vllm: None,
            worker_pods: &[],
            vllm_pods: &[],
            reward: None,
            reward_pods: &[],
            service_monitor: ServiceMonitorState::NotRequested,
        };
        let s = compute(&se, &names, &obs, &time(10));
        let rm = cond(&s, "RewardModelAvailable");
        assert_eq!(
            (rm.status.as_str(), rm.reason.as_str()),
            ("True", "ExternalEndpoint")
        );
        assert!(rm.message.contains("http://prm.ml.svc:8000"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(s.reward_model, None);

        let plain = endpoint(SPEC);
        let s = compute(&plain, &names, &obs, &time(10));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.type_ != "RewardModelAvailable")
        );
    }

    #[test]
    fn model_server_gates_ready_when_vllm_is_set() {
        let se = endpoint(
            "metadata: {name: v}\nspec: {model: {name: m}, algorithm: {name: self-consistency}, vllm: {model: x}}",
        );
        let names = Names::of(&se).unwrap();
        let w = deployment(1, 1);
        let v = deployment(1, 0);
        let obs = Observed {
            problem: None,
            config_hash: None,
            worker: Some(&w),
            vllm: Some(&v),
            worker_pods: &[],
            vllm_pods: &[],
            reward: None,
            reward_pods: &[],
            service_monitor: ServiceMonitorState::CrdMissing,
        };
        let s = compute(&se, &names, &obs, &time(1));
        let ready = cond(&s, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.message, "0 of 1 vLLM pods available");
        assert_eq!(
            s.model_server,
            Some(ReplicaCounts {
                desired: 1,
                ready: 0
            })
        );
        assert_eq!(cond(&s, "ServiceMonitorReady").reason, "CRDNotInstalled");
    }

    #[test]
    fn crash_looping_workers_make_the_endpoint_unavailable_with_the_kubelets_reason() {
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
        };
        let se = endpoint(SPEC);
        let names = Names::of(&se).unwrap();
        let d = deployment(2, 1);
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("sc-abc".into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "worker".into(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some("CrashLoopBackOff".into()),
                            message: Some("back-off 10s".into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pods = [pod];
        let obs = Observed {
            problem: None,
            config_hash: Some("h".into()),
            worker: Some(&d),
            vllm: None,
            worker_pods: &pods,
            vllm_pods: &[],
            reward: None,
            reward_pods: &[],
            service_monitor: ServiceMonitorState::NotRequested,
        };
        let s = compute(&se, &names, &obs, &time(1));
        for t in ["WorkersAvailable", "Ready"] {
            let c = cond(&s, t);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "CrashLoopBackOff"),
                "{t}"
            );
            assert_eq!(
                c.message,
                "1 of 2 workers available: pod sc-abc container worker: CrashLoopBackOff: back-off 10s"
            );
        }
        // Serving at full capacity while a new revision crash-loops: True, but it says so.
        let mut d = deployment(2, 2);
        d.status.as_mut().unwrap().updated_replicas = Some(1);
        let obs = Observed {
            worker: Some(&d),
            ..obs
        };
        let c = compute(&se, &names, &obs, &time(2));
        let w = cond(&c, "WorkersAvailable");
        assert_eq!(
            (w.status.as_str(), w.reason.as_str()),
            ("True", "RollingOut")
        );
        assert!(
            w.message
                .contains("the new revision is stuck: CrashLoopBackOff"),
            "{}",
            w.message
        );
    }
}
