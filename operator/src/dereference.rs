//! Dereference: fetch what a ScalingEndpoint points at (its Secrets) so that validation and
//! building are pure functions of the spec plus these objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::crd::{ScalingEndpointSpec, SecretKeyRef};
use crate::error::Result;

/// Where a Secret key is used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretUse {
    pub secret: String,
    pub key: String,
    /// The spec field that references it, for messages.
    pub field: &'static str,
    /// Whether the workers mount it (the HF token goes to vLLM instead).
    pub worker: bool,
}

impl SecretUse {
    fn new(r: &SecretKeyRef, field: &'static str, worker: bool) -> Self {
        Self {
            secret: r.name.clone(),
            key: r.key.clone(),
            field,
            worker,
        }
    }
}

/// Every Secret key the spec references, in a stable order.
pub fn secret_uses(spec: &ScalingEndpointSpec) -> Vec<SecretUse> {
    let mut uses = Vec::new();
    let models = [
        (
            Some(&spec.model),
            "spec.model.apiKeySecretRef",
            "spec.model.aws.credentialsSecretRef",
        ),
        (
            spec.judge.as_ref().map(|j| &j.model),
            "spec.judge.apiKeySecretRef",
            "spec.judge.aws.credentialsSecretRef",
        ),
    ];
    for (model, key_field, aws_field) in models {
        let Some(model) = model else { continue };
        if let Some(r) = &model.api_key_secret_ref {
            uses.push(SecretUse::new(r, key_field, true));
        }
        if let Some(c) = model
            .aws
            .as_ref()
            .and_then(|a| a.credentials_secret_ref.as_ref())
        {
            let keys = [Some(&c.access_key_id_key), Some(&c.secret_access_key_key)];
            for key in keys
                .into_iter()
                .chain([c.session_token_key.as_ref()])
                .flatten()
            {
                uses.push(SecretUse {
                    secret: c.name.clone(),
                    key: key.clone(),
                    field: aws_field,
                    worker: true,
                });
            }
        }
    }
    if let Some(auth) = &spec.auth {
        uses.push(SecretUse::new(
            &auth.api_keys_secret_ref,
            "spec.auth.apiKeysSecretRef",
            true,
        ));
    }
    if let Some(r) = spec
        .vllm
        .as_ref()
        .and_then(|v| v.hf_token_secret_ref.as_ref())
    {
        uses.push(SecretUse::new(r, "spec.vllm.hfTokenSecretRef", false));
    }
    if let Some(reward) = &spec.reward {
        if let Some(r) = &reward.api_key_secret_ref {
            uses.push(SecretUse::new(r, "spec.reward.apiKeySecretRef", true));
        }
        if let Some(r) = reward
            .vllm
            .as_ref()
            .and_then(|v| v.hf_token_secret_ref.as_ref())
        {
            uses.push(SecretUse::new(
                r,
                "spec.reward.vllm.hfTokenSecretRef",
                false,
            ));
        }
    }
    uses
}

/// The referenced Secrets by name; `None` for a Secret that does not exist.
pub type Secrets = BTreeMap<String, Option<Secret>>;

/// Fetches every referenced Secret. A missing Secret is not an error here (validation turns it
/// into a condition); any other API failure is.
pub async fn fetch_secrets(
    client: &Client,
    namespace: &str,
    uses: &[SecretUse],
) -> Result<Secrets> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut out = Secrets::new();
    for u in uses {
        if out.contains_key(&u.secret) {
            continue;
        }
        let secret = api.get_opt(&u.secret).await?;
        out.insert(u.secret.clone(), secret);
    }
    Ok(out)
}

/// The names of the Secrets a spec references (for mapping Secret events to endpoints).
pub fn references_secret(spec: &ScalingEndpointSpec, name: &str) -> bool {
    secret_uses(spec).iter().any(|u| u.secret == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::fixtures::endpoint;

    #[test]
    fn every_reference_is_listed_with_its_field() {
        let se = endpoint(
            r#"
metadata: {name: x}
spec:
  model:
    name: bedrock/m
    apiKeySecretRef: {name: shared, key: k}
    aws: {region: us-east-1, credentialsSecretRef: {name: aws}}
  algorithm: {name: best-of-n}
  judge: {name: gpt-4o, apiKeySecretRef: {name: shared, key: judge}}
  auth: {apiKeysSecretRef: {name: clients, key: keys}}
  vllm: {model: q, hfTokenSecretRef: {name: hf, key: token}}
"#,
        );
        let uses = secret_uses(&se.spec);
        let fields: Vec<_> = uses
            .iter()
            .map(|u| (u.secret.as_str(), u.key.as_str(), u.field))
            .collect();
        assert_eq!(
            fields,
            [
                ("shared", "k", "spec.model.apiKeySecretRef"),
                (
                    "aws",
                    "AWS_ACCESS_KEY_ID",
                    "spec.model.aws.credentialsSecretRef"
                ),
                (
                    "aws",
                    "AWS_SECRET_ACCESS_KEY",
                    "spec.model.aws.credentialsSecretRef"
                ),
                ("shared", "judge", "spec.judge.apiKeySecretRef"),
                ("clients", "keys", "spec.auth.apiKeysSecretRef"),
                ("hf", "token", "spec.vllm.hfTokenSecretRef"),
            ]
        );
        assert!(!uses.last().unwrap().worker, "the HF token is vLLM's");
        assert!(references_secret(&se.spec, "clients"));
        assert!(!references_secret(&se.spec, "other"));
    }
}
