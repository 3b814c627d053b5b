//! Removal of worker ConfigMaps no longer in use.
//!
//! Worker ConfigMaps are immutable and named by their content (see [`crate::build::config_map`]),
//! so each config change leaves the previous one behind. A ConfigMap may go once no pod can mount
//! it any more: when the worker Deployment has fully rolled out to the current one (no pod of an
//! older revision is left). The newest previous ConfigMap is kept as well, so
//! `kubectl rollout undo` to the last revision still finds its file.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use crate::build::LABEL_COMPONENT;
use crate::build::config_map::USED_AT_GENERATION_ANNOTATION;
use crate::crd::ScalingEndpoint;
use crate::error::{Result, is_not_found};
use crate::layout::Names;

/// A ConfigMap that can be deleted, with the uid the delete is conditioned on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub name: String,
    pub uid: Option<String>,
}

/// Whether every pod of `worker` runs its current template (the rollout is complete).
pub fn rolled_out(worker: &Deployment) -> bool {
    let Some(status) = &worker.status else {
        return false;
    };
    let observed =
        status.observed_generation.unwrap_or(0) >= worker.metadata.generation.unwrap_or(0);
    // `replicas` counts the pods of every revision, `updatedReplicas` those of the current one.
    observed && status.replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0)
}

/// The name of the ConfigMap the worker pod template mounts.
pub fn mounted_config_map(worker: &Deployment) -> Option<&str> {
    worker
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == "config")?
        .config_map
        .as_ref()
        .map(|c| c.name.as_str())
}

/// The worker ConfigMaps of `se` that can be deleted: none while a rollout is under way; after it,
/// all but the mounted one and the newest other one. `config_maps` may hold anything: only the
/// endpoint's own worker ConfigMaps (controller uid, component, name prefix) are considered.
pub fn stale_config_maps(
    se: &ScalingEndpoint,
    names: &Names,
    worker: &Deployment,
    config_maps: &[ConfigMap],
) -> Vec<Stale> {
    let Some(current) = mounted_config_map(worker) else {
        return Vec::new();
    };
    if !rolled_out(worker) {
        return Vec::new();
    }
    let prefix = names.config_map();
    let uid = se.metadata.uid.as_deref();
    let mut old: Vec<&ConfigMap> = config_maps
        .iter()
        .filter(|cm| {
            let name = cm.name_any();
            cm.namespace().as_deref() == Some(names.namespace.as_str())
                && name != current
                && name.starts_with(&prefix)
                && cm.labels().get(LABEL_COMPONENT).map(String::as_str) == Some("worker")
                && cm
                    .owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
        })
        .collect();
    // Most recently used first: by the generation that last asked for it, then (for ConfigMaps of
    // older operators without it) creation time; the name makes the choice stable.
    old.sort_by(|a, b| {
        let key = |cm: &ConfigMap| {
            let used_at = cm
                .annotations()
                .get(USED_AT_GENERATION_ANNOTATION)
                .and_then(|g| g.parse::<i64>().ok());
            (used_at, cm.creation_timestamp().map(|t| t.0), cm.name_any())
        };
        key(b).cmp(&key(a))
    });
    old.into_iter()
        .skip(1)
        .map(|cm| Stale {
            name: cm.name_any(),
            uid: cm.uid(),
        })
        .collect()
}

/// Deletes the stale worker ConfigMaps of `se` (from the operator's cache of its ConfigMaps).
/// Returns the names deleted.
pub async fn prune(
    client: &Client,
    store: &Store<ConfigMap>,
    se: &ScalingEndpoint,
    names: &Names,
    worker: &Deployment,
) -> Result<Vec<String>> {
    let cached: Vec<ConfigMap> = store.state().iter().map(|cm| (**cm).clone()).collect();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &names.namespace);
    let mut deleted = Vec::new();
    for stale in stale_config_maps(se, names, worker, &cached) {
        // The uid precondition: a same-named ConfigMap created meanwhile is left alone.
        let dp = DeleteParams {
            preconditions: stale.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&stale.name, &dp).await {
            Ok(_) => deleted.push(stale.name),
            Err(kube::Error::Api(s)) if s.is_conflict() => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::endpoint;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, PodSpec, PodTemplateSpec, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
    use k8s_openapi::jiff::Timestamp;

    fn se() -> ScalingEndpoint {
        endpoint(
            "metadata: {name: sc, namespace: team}\nspec: {model: {name: m}, algorithm: {name: self-consistency}}",
        )
    }

    fn cm(name: &str, created: i64, owner_uid: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                // Created at generation `created`, in the same second as every other one.
                annotations: (created > 0).then(|| {
                    [(
                        USED_AT_GENERATION_ANNOTATION.to_owned(),
                        created.to_string(),
                    )]
                    .into()
                }),
                name: Some(name.to_owned()),
                namespace: Some("team".to_owned()),
                uid: Some(format!("uid-of-{name}")),
                creation_timestamp: Some(Time(Timestamp::from_second(7).unwrap())),
                labels: Some([(LABEL_COMPONENT.to_owned(), "worker".to_owned())].into()),
                owner_references: Some(vec![OwnerReference {
                    controller: Some(true),
                    uid: owner_uid.to_owned(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// A worker Deployment mounting `config` with `old_pods` pods of older revisions left.
    fn worker(config: &str, old_pods: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(4),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        volumes: Some(vec![Volume {
                            name: "config".to_owned(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: config.to_owned(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        }]),
                        ..PodSpec::default()
                    }),
                    ..PodTemplateSpec::default()
                },
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(4),
                replicas: Some(2 + old_pods),
                updated_replicas: Some(2),
                ..DeploymentStatus::default()
            }),
        }
    }

    fn names(stale: Vec<Stale>) -> Vec<String> {
        stale.into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn nothing_goes_while_old_pods_may_still_mount_their_config() {
        let se = se();
        let n = Names::of(&se).unwrap();
        let cms = [
            cm("sc-config-aaaa", 1, "uid-1"),
            cm("sc-config-bbbb", 2, "uid-1"),
            cm("sc-config-cccc", 3, "uid-1"),
        ];
        assert!(stale_config_maps(&se, &n, &worker("sc-config-cccc", 1), &cms).is_empty());
        // A Deployment whose new generation the controller has not seen yet is not rolled out.
        let mut d = worker("sc-config-cccc", 0);
        d.metadata.generation = Some(5);
        assert!(stale_config_maps(&se, &n, &d, &cms).is_empty());
    }

    #[test]
    fn after_the_rollout_all_but_the_current_and_the_previous_go() {
        let se = se();
        let n = Names::of(&se).unwrap();
        let cms = [
            cm("sc-config", 0, "uid-1"), // the mutable one of an older operator
            cm("sc-config-aaaa", 1, "uid-1"),
            cm("sc-config-cccc", 3, "uid-1"),
            cm("sc-config-bbbb", 2, "uid-1"),
            // Not this endpoint's: another owner, another endpoint's prefix, another component.
            cm("sc-config-dddd", 0, "uid-other"),
            cm("scx-config-eeee", 0, "uid-1"),
            {
                let mut c = cm("sc-config-ffff", 0, "uid-1");
                c.metadata.labels = None;
                c
            },
        ];
        let stale = stale_config_maps(&se, &n, &worker("sc-config-cccc", 0), &cms);
        assert_eq!(names(stale.clone()), ["sc-config-aaaa", "sc-config"]);
        assert_eq!(stale[0].uid.as_deref(), Some("uid-of-sc-config-aaaa"));
    }

    #[test]
    fn returning_to_an_older_config_keeps_the_one_just_left() {
        let se = se();
        let n = Names::of(&se).unwrap();
        // a → b → a: the ConfigMap of `a` is reused, `b` is the previous one.
        let cms = [
            cm("sc-config-aaaa", 1, "uid-1"),
            cm("sc-config-bbbb", 2, "uid-1"),
        ];
        assert!(stale_config_maps(&se, &n, &worker("sc-config-aaaa", 0), &cms).is_empty());
    }
}
