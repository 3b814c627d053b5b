//! Why a workload is not available, from its Deployment's conditions and its pods' states.
//!
//! Replica counts say *that* pods are missing; this says *why*, in the words of the component that
//! knows: the ReplicaSet controller (`FailedCreate`, e.g. a PodSecurity or quota refusal), the
//! scheduler (`Unschedulable`), the kubelet (`CrashLoopBackOff`, `ImagePullBackOff`, …) or the
//! Deployment controller (`ProgressDeadlineExceeded`). Pure, so every case is unit-tested; the
//! pods are listed only for workloads that are not fully available.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::build::{Component, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, selector_string};
use crate::crd::ScalingEndpoint;
use crate::layout::Names;

/// Container waiting reasons that mean the container will not start without a change.
const STUCK_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];
/// Longest message taken over from the cluster: kubelet messages can embed whole registry replies.
const MAX_DETAIL: usize = 300;

/// The reason a workload is (partly) unavailable, as a condition reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub reason: String,
    pub message: String,
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(MAX_DETAIL) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

fn with_detail(head: String, detail: Option<&str>) -> String {
    match detail.map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => format!("{head}: {}", shorten(d)),
        None => head,
    }
}

/// A true Deployment condition of `type_`, as (reason, message).
fn deployment_condition<'a>(
    d: &'a Deployment,
    type_: &'a str,
    status: &str,
) -> Option<(&'a str, Option<&'a str>)> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| (c.reason.as_deref().unwrap_or(type_), c.message.as_deref()))
}

/// What is wrong with one pod, if it is stuck: unschedulable, or a container that cannot start.
pub fn pod_problem(pod: &Pod) -> Option<Unhealthy> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return Some(Unhealthy {
            reason: "Unschedulable".to_owned(),
            message: with_detail(
                format!("pod {name} cannot be scheduled"),
                c.message.as_deref(),
            ),
        });
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = waiting
            .reason
            .as_deref()
            .filter(|r| STUCK_WAITING_REASONS.contains(r))
        else {
            continue;
        };
        let mut message = with_detail(
            format!("pod {name} container {}: {reason}", c.name),
            waiting.message.as_deref(),
        );
        // For a crash loop, how the last run ended is the useful part.
        if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            message.push_str(&format!(
                " (last exit code {}{})",
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(", {r}"))
                    .unwrap_or_default()
            ));
        }
        return Some(Unhealthy {
            reason: reason.to_owned(),
            message,
        });
    }
    None
}

/// Why `deployment` lacks available pods, most specific first: pods that cannot be created, a
/// stuck pod, a rollout past its deadline. `None` when nothing explains it (pods still starting).
pub fn diagnose(deployment: &Deployment, pods: &[Pod]) -> Option<Unhealthy> {
    if let Some((reason, message)) = deployment_condition(deployment, "ReplicaFailure", "True") {
        return Some(Unhealthy {
            reason: reason.to_owned(),
            message: with_detail("pods cannot be created".to_owned(), message),
        });
    }
    // The first stuck pod by name, so the message does not flap between equally broken pods.
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| p.name_any());
    if let Some(p) = sorted.into_iter().find_map(pod_problem) {
        return Some(p);
    }
    deployment_condition(deployment, "Progressing", "False").map(|(reason, message)| Unhealthy {
        reason: reason.to_owned(),
        message: with_detail("the rollout is not progressing".to_owned(), message),
    })
}

/// Whether the pods must be looked at: some are missing, or a rollout has not finished.
pub fn needs_diagnosis(d: &Deployment) -> bool {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    st.available_replicas.unwrap_or(0) < desired
        || st.updated_replicas.unwrap_or(0) < desired
        || st.replicas.unwrap_or(0) != st.updated_replicas.unwrap_or(0)
}

/// The pods of a component, listed only when its Deployment needs a diagnosis (one label-selected
/// list per reconcile of an unhealthy endpoint; healthy ones cost nothing).
///
/// A failed list (e.g. RBAC without `list pods`) is logged and yields no pods: the conditions then
/// fall back to replica counts instead of the whole status going unwritten.
pub async fn pods_to_diagnose(
    client: &Client,
    names: &Names,
    component: Component,
    deployment: Option<&Deployment>,
) -> Vec<Pod> {
    if !deployment.is_some_and(needs_diagnosis) {
        return Vec::new();
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    let lp = ListParams::default().labels(&selector_string(names, component));
    match api.list(&lp).await {
        Ok(list) => list.items,
        Err(error) => {
            tracing::warn!(%error, namespace = %names.namespace, endpoint = %names.endpoint,
                "could not list pods to explain their unavailability");
            Vec::new()
        }
    }
}

/// The watch of the operator's pods (metadata only): a pod that changes state (scheduled, stuck,
/// ready) reconciles its endpoint at once, so the conditions follow the pods without polling.
pub fn pod_watch_config() -> watcher::Config {
    watcher::Config::default()
        .labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"))
        .any_semantic()
}

/// The endpoint a pod belongs to: its `app.kubernetes.io/instance` label, in its namespace.
pub fn endpoint_of_pod(pod: PartialObjectMeta<Pod>) -> Option<ObjectRef<ScalingEndpoint>> {
    let ns = pod.namespace()?;
    let name = pod.labels().get(LABEL_INSTANCE)?;
    Some(ObjectRef::new(name).within(&ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
        PodCondition, PodStatus,
    };
    use kube::api::ObjectMeta;

    fn deployment(conditions: Vec<(&str, &str, &str, &str)>) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                conditions: Some(
                    conditions
                        .into_iter()
                        .map(|(t, s, r, m)| DeploymentCondition {
                            type_: t.to_owned(),
                            status: s.to_owned(),
                            reason: Some(r.to_owned()),
                            message: Some(m.to_owned()),
                            ..DeploymentCondition::default()
                        })
                        .collect(),
                ),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    fn pod(name: &str, status: PodStatus) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            status: Some(status),
            ..Pod::default()
        }
    }

    fn waiting(name: &str, reason: &str, message: &str) -> Pod {
        pod(
            name,
            PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "worker".to_owned(),
                    state: Some(ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason.to_owned()),
                            message: Some(message.to_owned()),
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            },
        )
    }

    #[test]
    fn image_pull_and_crash_loop_name_the_pod_and_the_kubelet_message() {
        let d = deployment(vec![]);
        let pull = waiting(
            "sc-1",
            "ImagePullBackOff",
            "Back-off pulling image \"nope:1\"",
        );
        let got = diagnose(&d, &[pull]).unwrap();
        assert_eq!(got.reason, "ImagePullBackOff");
        assert_eq!(
            got.message,
            "pod sc-1 container worker: ImagePullBackOff: Back-off pulling image \"nope:1\""
        );

        let mut crash = waiting(
            "sc-2",
            "CrashLoopBackOff",
            "back-off 40s restarting failed container",
        );
        let st = &mut crash
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0];
        st.last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 2,
                reason: Some("Error".to_owned()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        });
        let got = diagnose(&d, &[crash]).unwrap();
        assert_eq!(got.reason, "CrashLoopBackOff");
        assert!(
            got.message.ends_with("(last exit code 2, Error)"),
            "{}",
            got.message
        );
    }

    #[test]
    fn unschedulable_comes_from_the_pod_scheduled_condition() {
        let p = pod(
            "v-1",
            PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".to_owned(),
                    status: "False".to_owned(),
                    reason: Some("Unschedulable".to_owned()),
                    message: Some(
                        "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.".to_owned(),
                    ),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            },
        );
        let got = diagnose(&deployment(vec![]), &[p]).unwrap();
        assert_eq!(got.reason, "Unschedulable");
        assert!(
            got.message.contains("Insufficient nvidia.com/gpu"),
            "{}",
            got.message
        );
    }

    #[test]
    fn pods_that_cannot_be_created_outrank_everything() {
        let d = deployment(vec![
            (
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                "ReplicaSet \"sc-1\" has timed out progressing.",
            ),
            (
                "ReplicaFailure",
                "True",
                "FailedCreate",
                "pods \"sc-1-x\" is forbidden: violates PodSecurity \"restricted:latest\"",
            ),
        ]);
        let got = diagnose(&d, &[waiting("a", "ErrImagePull", "")]).unwrap();
        assert_eq!(got.reason, "FailedCreate");
        assert!(
            got.message.contains("violates PodSecurity"),
            "{}",
            got.message
        );
    }

    #[test]
    fn a_stalled_rollout_is_reported_when_no_pod_explains_it() {
        let d = deployment(vec![(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            "ReplicaSet \"sc-1\" has timed out progressing.",
        )]);
        let got = diagnose(&d, &[]).unwrap();
        assert_eq!(got.reason, "ProgressDeadlineExceeded");
        assert_eq!(
            got.message,
            "the rollout is not progressing: ReplicaSet \"sc-1\" has timed out progressing."
        );
    }

    #[test]
    fn starting_pods_and_ordinary_waits_explain_nothing() {
        let d = deployment(vec![("Progressing", "True", "ReplicaSetUpdated", "")]);
        let creating = waiting("a", "ContainerCreating", "");
        assert_eq!(diagnose(&d, &[creating]), None);
        // A terminating pod's state is not the workload's problem.
        let mut gone = waiting("b", "CrashLoopBackOff", "");
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
            ));
        assert_eq!(diagnose(&d, &[gone]), None);
    }

    #[test]
    fn a_pod_reconciles_the_endpoint_named_by_its_instance_label() {
        let meta = |labels: Option<&str>| PartialObjectMeta::<Pod> {
            metadata: ObjectMeta {
                name: Some("sc-abc".to_owned()),
                namespace: Some("team".to_owned()),
                labels: labels.map(|l| [(LABEL_INSTANCE.to_owned(), l.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        };
        assert_eq!(
            endpoint_of_pod(meta(Some("sc"))),
            Some(ObjectRef::new("sc").within("team"))
        );
        assert_eq!(endpoint_of_pod(meta(None)), None);
    }

    #[test]
    fn long_kubelet_messages_are_cut() {
        let long = "x".repeat(2000);
        let got = diagnose(&deployment(vec![]), &[waiting("a", "ErrImagePull", &long)]).unwrap();
        assert!(
            got.message.chars().count() < MAX_DETAIL + 60,
            "{}",
            got.message.len()
        );
    }
}
