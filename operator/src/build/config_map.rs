//! The ConfigMap holding the worker configuration file. It holds Secret *paths*, never values.
//!
//! The ConfigMap is content-addressed and immutable: its name carries a hash of the file
//! (`<name>-config-<hash>`) and the worker pod template refers to that name. A config change is
//! then a new ConfigMap plus a new pod template, rolled out like an image change: pods of the old
//! revision keep reading (and, when they restart, mounting) the old file, so a bad config can
//! never crash pods that were fine. Old ConfigMaps are removed by [`crate::config_rollout`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::{Component, child_meta};
use crate::digest;
use crate::error::Result;
use crate::layout::CONFIG_FILE;
use crate::layout::Names;
use crate::validate::Resolved;

/// Annotation on each worker ConfigMap: the endpoint generation that last asked for it. Creation
/// timestamps have one-second resolution and a config can come back (a → b → a), so this is what
/// tells which ConfigMap was in use just before the current one.
pub const USED_AT_GENERATION_ANNOTATION: &str = "inferscale.dev/used-at-generation";

/// Hex characters of the content hash in the name: 40 bits, plenty for the few revisions one
/// endpoint has at a time, and short enough to read in `kubectl get cm`.
const NAME_HASH_LEN: usize = 10;

/// Name of the ConfigMap holding `config_yaml`: `<endpoint>-config-<hash of the file>`.
pub fn name(names: &Names, config_yaml: &str) -> String {
    let hash = digest::sha256_hex_prefix(config_yaml.as_bytes(), NAME_HASH_LEN);
    format!("{}-{hash}", names.config_map())
}

pub fn build(
    names: &Names,
    owner: &OwnerReference,
    resolved: &Resolved,
    generation: i64,
) -> Result<ConfigMap> {
    let mut metadata = child_meta(
        name(names, &resolved.config_yaml),
        names,
        Component::Worker,
        owner,
    );
    metadata.annotations = Some(BTreeMap::from([(
        USED_AT_GENERATION_ANNOTATION.to_owned(),
        generation.to_string(),
    )]));
    Ok(ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_owned(),
            resolved.config_yaml.clone(),
        )])),
        // The name is the content: nobody may change one under running pods.
        immutable: Some(true),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::endpoint;
    use crate::build::{self, OperatorDefaults};
    use crate::dereference::Secrets;
    use crate::validate::validate;

    fn children(budget: u32) -> build::Children {
        let se = endpoint(&format!(
            "metadata: {{name: sc, namespace: team}}\nspec: {{model: {{name: m}}, algorithm: {{name: self-consistency, defaultBudget: {budget}}}}}"
        ));
        let resolved = validate(&se, &Secrets::new()).unwrap().unwrap();
        build::build(&se, &resolved, &OperatorDefaults::default()).unwrap()
    }

    fn mounted_config_map(c: &build::Children) -> String {
        let pod = c
            .worker_deployment
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap();
        pod.volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "config")
            .and_then(|v| v.config_map)
            .map(|c| c.name)
            .expect("a config volume")
    }

    #[test]
    fn config_map_is_immutable_and_named_by_its_content() {
        let a = children(4);
        let cm = &a.config_map;
        assert_eq!(cm.immutable, Some(true));
        let ann = cm.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[USED_AT_GENERATION_ANNOTATION], "1");
        let name = cm.metadata.name.clone().unwrap();
        assert!(name.starts_with("sc-config-"), "{name}");
        assert_eq!(name.len(), "sc-config-".len() + NAME_HASH_LEN);
        // The pod template mounts exactly this ConfigMap.
        assert_eq!(mounted_config_map(&a), name);
        // Same content, same name; another config, another name (and another pod template).
        assert_eq!(children(4).config_map.metadata.name, Some(name.clone()));
        let b = children(5);
        let other = b.config_map.metadata.name.clone().unwrap();
        assert_ne!(other, name);
        assert_eq!(mounted_config_map(&b), other);
    }

    #[test]
    fn name_is_stable_across_versions() {
        // Pinned (sha256("model: x\n") from Python's hashlib): a changed encoding would give
        // every endpoint a new ConfigMap name and roll all workers on an operator upgrade.
        let names = Names {
            endpoint: "sc".to_owned(),
            namespace: "team".to_owned(),
        };
        assert_eq!(name(&names, "model: x\n"), "sc-config-e5f16bd39c");
    }
}
