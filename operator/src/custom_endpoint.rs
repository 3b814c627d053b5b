//! Which Secrets a ScalingEndpoint would send to an endpoint other than its provider's official
//! API. Whoever may create a ScalingEndpoint could otherwise point `model.endpoint` at their own
//! server and reference any Secret of the namespace as its API key: the workers would send that
//! Secret's value to them. Such a Secret must opt in with [`ALLOW_CUSTOM_ENDPOINT_LABEL`].
//!
//! Official APIs (nothing else is):
//! - unset or `auto`: the provider's default (OpenAI's API, or AWS Bedrock in the configured region);
//! - OpenAI: `https://api.openai.com/v1`;
//! - Bedrock: `https://bedrock-runtime.<region>.amazonaws.com` (also `bedrock-runtime-fips.` and
//!   the China partition's `.amazonaws.com.cn`).
//!
//! The in-cluster vLLM Service (`spec.vllm`) is the operator's own child, not a custom endpoint;
//! an external process reward model (`spec.reward.endpoint`) always is one.
//! Pure, so every rule is unit-tested.

use crate::crd::{ModelSpec, ScalingEndpointSpec};

/// Label a Secret needs before a ScalingEndpoint may send it to a custom endpoint.
pub const ALLOW_CUSTOM_ENDPOINT_LABEL: &str = "inferscale.dev/allow-custom-endpoint";

/// OpenAI's public API (the worker's `endpoint: auto` for OpenAI; the worker crate exports it only
/// with its server feature, which the operator does not build).
const OPENAI_DEFAULT_BASE: &str = "https://api.openai.com/v1";

/// A Secret the workers would send to a custom endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomEndpointSecret {
    pub secret: String,
    /// The spec field that references the Secret.
    pub field: &'static str,
    /// The custom endpoint, as written in the spec.
    pub endpoint: String,
}

/// Whether an endpoint as written in a spec is a provider's official API.
pub fn is_official(endpoint: Option<&str>) -> bool {
    let Some(url) = endpoint.map(|e| e.trim_end_matches('/')) else {
        return true;
    };
    url == "auto" || url == OPENAI_DEFAULT_BASE || is_aws_bedrock_runtime(url)
}

/// `https://bedrock-runtime[-fips].<region>.amazonaws.com[.cn]`, with no port, user or path.
fn is_aws_bedrock_runtime(url: &str) -> bool {
    let Some(host) = url.strip_prefix("https://") else {
        return false;
    };
    let Some(rest) = host
        .strip_prefix("bedrock-runtime-fips.")
        .or_else(|| host.strip_prefix("bedrock-runtime."))
    else {
        return false;
    };
    let Some(region) = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
    else {
        return false;
    };
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The Secrets of one model block, with the fields that reference them.
fn model_secrets(
    model: &ModelSpec,
    key_field: &'static str,
    aws_field: &'static str,
) -> Vec<(String, &'static str)> {
    let key = model
        .api_key_secret_ref
        .as_ref()
        .map(|r| (r.name.clone(), key_field));
    let aws = model
        .aws
        .as_ref()
        .and_then(|a| a.credentials_secret_ref.as_ref())
        .map(|c| (c.name.clone(), aws_field));
    key.into_iter().chain(aws).collect()
}

/// Every Secret the workers would send to a custom endpoint, in spec order.
pub fn secrets_sent_to_custom_endpoints(spec: &ScalingEndpointSpec) -> Vec<CustomEndpointSecret> {
    let mut out = Vec::new();
    let mut add = |secrets: Vec<(String, &'static str)>, endpoint: &str| {
        out.extend(
            secrets
                .into_iter()
                .map(|(secret, field)| CustomEndpointSecret {
                    secret,
                    field,
                    endpoint: endpoint.to_owned(),
                }),
        );
    };
    // With spec.vllm the workers call the in-cluster vLLM Service, whatever model.endpoint says.
    if spec.vllm.is_none()
        && let Some(endpoint) = spec.model.endpoint.as_deref()
        && !is_official(Some(endpoint))
    {
        add(
            model_secrets(
                &spec.model,
                "spec.model.apiKeySecretRef",
                "spec.model.aws.credentialsSecretRef",
            ),
            endpoint,
        );
    }
    if let Some(judge) = &spec.judge
        && let Some(endpoint) = judge.model.endpoint.as_deref()
        && !is_official(Some(endpoint))
    {
        add(
            model_secrets(
                &judge.model,
                "spec.judge.apiKeySecretRef",
                "spec.judge.aws.credentialsSecretRef",
            ),
            endpoint,
        );
        // A judge without its own key calls with the model's.
        if judge.model.api_key_secret_ref.is_none()
            && let Some(r) = &spec.model.api_key_secret_ref
        {
            add(
                vec![(r.name.clone(), "spec.model.apiKeySecretRef")],
                endpoint,
            );
        }
    }
    // A process reward model is never a provider's official API: its key always needs the label.
    if let Some(reward) = &spec.reward
        && let (Some(endpoint), Some(r)) = (&reward.endpoint, &reward.api_key_secret_ref)
    {
        add(
            vec![(r.name.clone(), "spec.reward.apiKeySecretRef")],
            endpoint,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::fixtures::endpoint;

    #[test]
    fn official_endpoints_per_provider() {
        for official in [
            None,
            Some("auto"),
            Some("https://api.openai.com/v1"),
            Some("https://api.openai.com/v1/"),
            Some("https://bedrock-runtime.us-east-1.amazonaws.com"),
            Some("https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com/"),
            Some("https://bedrock-runtime.cn-north-1.amazonaws.com.cn"),
        ] {
            assert!(is_official(official), "{official:?}");
        }
        for custom in [
            "https://attacker.invalid/v1",
            "http://api.openai.com/v1",
            "https://api.openai.com.attacker.invalid/v1",
            "https://api.openai.com/v1/../x",
            "https://bedrock-runtime.us-east-1.amazonaws.com.attacker.invalid",
            "https://bedrock-runtime.us-east-1.amazonaws.com:8443",
            "https://bedrock-runtime.us-east-1.amazonaws.com/x",
            "https://user@bedrock-runtime.us-east-1.amazonaws.com",
            "https://bedrock-runtime..amazonaws.com",
            "http://vllm.team.svc:8000/v1",
        ] {
            assert!(!is_official(Some(custom)), "{custom}");
        }
    }

    #[test]
    fn secrets_of_custom_model_and_judge_endpoints_are_listed() {
        let se = endpoint(
            r#"
metadata: {name: x}
spec:
  model:
    name: gpt-4o
    endpoint: https://attacker.invalid/v1
    apiKeySecretRef: {name: db-creds, key: password}
    aws: {region: us-east-1, credentialsSecretRef: {name: aws}}
  algorithm: {name: best-of-n}
  judge: {name: judge, endpoint: "http://judge.invalid/v1"}
  auth: {apiKeysSecretRef: {name: clients, key: keys}}
"#,
        );
        let found: Vec<_> = secrets_sent_to_custom_endpoints(&se.spec)
            .into_iter()
            .map(|u| (u.secret, u.field, u.endpoint))
            .collect();
        let attacker = "https://attacker.invalid/v1".to_owned();
        let judge = "http://judge.invalid/v1".to_owned();
        assert_eq!(
            found,
            [
                (
                    "db-creds".to_owned(),
                    "spec.model.apiKeySecretRef",
                    attacker.clone()
                ),
                (
                    "aws".to_owned(),
                    "spec.model.aws.credentialsSecretRef",
                    attacker
                ),
                // The judge has no key of its own, so it would send the model's.
                ("db-creds".to_owned(), "spec.model.apiKeySecretRef", judge),
            ]
        );
    }

    #[test]
    fn an_external_reward_models_key_needs_the_label() {
        let se = endpoint(
            r#"
metadata: {name: x}
spec:
  model: {name: gpt-4o}
  algorithm: {name: best-of-n}
  reward: {model: prm, endpoint: "http://prm.invalid:8000", apiKeySecretRef: {name: db-creds, key: password}}
"#,
        );
        let found: Vec<_> = secrets_sent_to_custom_endpoints(&se.spec)
            .into_iter()
            .map(|u| (u.secret, u.field, u.endpoint))
            .collect();
        assert_eq!(
            found,
            [(
                "db-creds".to_owned(),
                "spec.reward.apiKeySecretRef",
                "http://prm.invalid:8000".to_owned()
            )]
        );
    }

    #[test]
    fn official_endpoints_and_in_cluster_vllm_need_no_label() {
        for spec in [
            "model: {name: gpt-4o, apiKeySecretRef: {name: k, key: k}}",
            "model: {name: gpt-4o, endpoint: auto, apiKeySecretRef: {name: k, key: k}}",
            "model: {name: gpt-4o, endpoint: 'https://api.openai.com/v1', apiKeySecretRef: {name: k, key: k}}",
            "model: {name: q, apiKeySecretRef: {name: k, key: k}}\n  vllm: {model: Qwen/Qwen2.5-0.5B-Instruct}",
        ] {
            let se = endpoint(&format!(
                "metadata: {{name: x}}\nspec:\n  {spec}\n  algorithm: {{name: self-consistency}}\n"
            ));
            assert_eq!(secrets_sent_to_custom_endpoints(&se.spec), [], "{spec}");
        }
    }
}
