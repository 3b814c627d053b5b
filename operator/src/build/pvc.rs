//! The model-cache PersistentVolumeClaim of `spec.vllm.cache.pvc`: created and owned by the
//! operator, so the garbage collector deletes it with the endpoint.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::{Component, child_meta};
use crate::crd::{CacheAccessMode, VllmSpec};
use crate::layout::Names;

/// Name of the cache claim: `<name>-vllm-cache`.
pub fn claim_name(names: &Names) -> String {
    format!("{}-cache", names.vllm())
}

/// The cache claim, when the spec asks the operator to create one.
pub fn cache_claim(
    names: &Names,
    owner: &OwnerReference,
    v: &VllmSpec,
) -> Option<PersistentVolumeClaim> {
    let pvc = v.cache.as_ref()?.pvc.as_ref()?;
    let modes = pvc
        .access_modes
        .clone()
        .unwrap_or_else(|| vec![CacheAccessMode::ReadWriteOnce]);
    Some(PersistentVolumeClaim {
        metadata: child_meta(claim_name(names), names, Component::ModelServer, owner),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(modes.iter().map(|m| m.as_str().to_owned()).collect()),
            storage_class_name: pvc.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), pvc.size.clone())])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use crate::build::{self, OperatorDefaults, fixtures::endpoint};
    use crate::dereference::Secrets;
    use crate::validate::validate;

    const CACHED: &str = r#"
metadata: {name: local, namespace: team}
spec:
  model: {name: qwen}
  algorithm: {name: self-consistency}
  vllm:
    model: Qwen/Qwen2.5-7B-Instruct
    cache:
      pvc: {size: 200Gi, storageClassName: fast-rwx, accessModes: [ReadWriteMany]}
"#;

    fn children(yaml: &str) -> build::Children {
        let se = endpoint(yaml);
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        build::build(&se, &resolved, &OperatorDefaults::default()).unwrap()
    }

    #[test]
    fn the_claim_has_the_requested_size_class_and_modes_and_is_owned() {
        let c = children(CACHED);
        let claim = c.vllm_cache_pvc.expect("a cache claim");
        assert_eq!(claim.metadata.name.as_deref(), Some("local-vllm-cache"));
        let owner = &claim.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
        let spec = claim.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast-rwx"));
        assert_eq!(spec.access_modes.unwrap(), ["ReadWriteMany"]);
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"].0,
            "200Gi"
        );
    }

    #[test]
    fn vllm_mounts_the_claim_as_hf_home() {
        let c = children(CACHED);
        let pod = c
            .vllm_deployment
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let cache = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "cache")
            .unwrap();
        assert_eq!(
            cache.persistent_volume_claim.unwrap().claim_name,
            "local-vllm-cache"
        );
        let ctr = &pod.containers[0];
        let mount = ctr
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "cache")
            .unwrap();
        let hf_home = ctr
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "HF_HOME")
            .and_then(|e| e.value.clone());
        assert_eq!(hf_home.as_deref(), Some(mount.mount_path.as_str()));
    }

    #[test]
    fn access_mode_defaults_to_read_write_once() {
        let c = children(&CACHED.replace(
            ", storageClassName: fast-rwx, accessModes: [ReadWriteMany]",
            "",
        ));
        let spec = c.vllm_cache_pvc.unwrap().spec.unwrap();
        assert_eq!(spec.access_modes.unwrap(), ["ReadWriteOnce"]);
        assert!(
            spec.storage_class_name.is_none(),
            "the cluster's default class"
        );
    }

    #[test]
    fn no_claim_without_cache_pvc() {
        let c = children(&CACHED.replace(
            "pvc: {size: 200Gi, storageClassName: fast-rwx, accessModes: [ReadWriteMany]}",
            "persistentVolumeClaim: models",
        ));
        assert!(c.vllm_cache_pvc.is_none());
        let pod = c
            .vllm_deployment
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let cache = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "cache")
            .unwrap();
        assert_eq!(cache.persistent_volume_claim.unwrap().claim_name, "models");
    }
}
