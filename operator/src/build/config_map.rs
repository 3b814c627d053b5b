//! The ConfigMap holding the worker configuration file. It holds Secret *paths*, never values.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::{Component, Names, child_meta};
use crate::error::Result;
use crate::layout::CONFIG_FILE;
use crate::validate::Resolved;

pub fn build(names: &Names, owner: &OwnerReference, resolved: &Resolved) -> Result<ConfigMap> {
    Ok(ConfigMap {
        metadata: child_meta(names.config_map(), names, Component::Worker, owner),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_owned(),
            resolved.config_yaml.clone(),
        )])),
        ..ConfigMap::default()
    })
}
