//! Layout: the names of an endpoint's children and the paths at which its workers read their
//! configuration and Secrets. Both validation (which writes these paths into the worker
//! configuration) and the builders (which mount files there) depend on this module; it depends on
//! nothing but the CRD, so neither has to import the other's layout.

use std::path::PathBuf;

use crate::crd::ScalingEndpoint;
use crate::error::{Error, Result};

/// Directory under which each referenced Secret is mounted whole, as `<dir>/<secret-name>/`.
pub const SECRETS_DIR: &str = "/etc/inferscale/secrets";
/// Directory of the mounted ConfigMap.
pub const CONFIG_DIR: &str = "/etc/inferscale/config";
/// File name of the worker configuration in the ConfigMap.
pub const CONFIG_FILE: &str = "config.yaml";
/// Port vLLM listens on.
pub const VLLM_PORT: i32 = 8000;

/// Path at which the workers read a Secret key.
pub fn secret_file(secret: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("{SECRETS_DIR}/{secret}/{key}"))
}

/// Names of the children of one endpoint.
///
/// The workers' Deployment and Service are `<name>` (so the URL is
/// `http://<name>.<ns>.svc:<port>/v1`), the ConfigMap `<name>-config`, vLLM's Deployment and
/// Service `<name>-vllm`; the HPA and PDB follow the Deployment they target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub endpoint: String,
    pub namespace: String,
}

impl Names {
    pub fn of(se: &ScalingEndpoint) -> Result<Self> {
        Ok(Self {
            endpoint: se
                .metadata
                .name
                .clone()
                .ok_or(Error::MissingObjectKey("name"))?,
            namespace: se
                .metadata
                .namespace
                .clone()
                .ok_or(Error::MissingObjectKey("namespace"))?,
        })
    }

    pub fn worker(&self) -> String {
        self.endpoint.clone()
    }

    pub fn config_map(&self) -> String {
        format!("{}-config", self.endpoint)
    }

    pub fn vllm(&self) -> String {
        format!("{}-vllm", self.endpoint)
    }

    /// Base URL of the in-cluster vLLM Service, as the workers call it.
    pub fn vllm_url(&self) -> String {
        format!(
            "http://{}.{}.svc:{VLLM_PORT}/v1",
            self.vllm(),
            self.namespace
        )
    }

    /// The URL clients use: the workers' Service.
    pub fn url(&self, port: i32) -> String {
        format!("http://{}.{}.svc:{port}/v1", self.worker(), self.namespace)
    }
}
