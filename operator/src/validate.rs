//! Validate: turn a spec plus its dereferenced Secrets into the worker configuration, or into the
//! first thing wrong with it. Pure (no client), so every rule is unit-tested.
//!
//! The configuration is the worker's own [`WorkerConfig`], validated by the worker's own
//! [`WorkerConfig::validate`]: the operator never accepts a config the worker would refuse.

use std::collections::BTreeMap;

use inferscale_worker::config::stepwise::LLM_JUDGE;
use inferscale_worker::config::{
    AdaptiveConfig, AlgorithmName, LogFormat, OverrideKey, ProviderKind, SecretValue,
    ServerSettings, StepTokens, WorkerConfig,
};
use sha2::{Digest, Sha256};

use crate::crd::{ModelSpec, RequestOverrideKey, ScalingEndpoint};
use crate::custom_endpoint::{ALLOW_CUSTOM_ENDPOINT_LABEL, secrets_sent_to_custom_endpoints};
use crate::dereference::{SecretUse, Secrets, secret_uses};
use crate::digest;
use crate::error::{Error, Result};
use crate::layout::{Names, secret_file};
use crate::problem::{Problem, reason};

/// A valid endpoint: the worker configuration and what the workers mount.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub config: WorkerConfig,
    /// `config` as the YAML file the workers read.
    pub config_yaml: String,
    /// sha256 (hex) of `config_yaml` and of every referenced Secret key the workers use.
    pub config_hash: String,
    /// Names of the Secrets mounted into the workers, sorted, without duplicates.
    pub worker_secrets: Vec<String>,
}

/// Checks the spec against its Secrets and renders the worker configuration.
///
/// The outer `Result` is an operator failure; the inner one is the user's problem.
pub fn validate(se: &ScalingEndpoint, secrets: &Secrets) -> Result<Result<Resolved, Problem>> {
    let uses = secret_uses(&se.spec);
    if let Err(p) = check_secrets(&uses, secrets) {
        return Ok(Err(p));
    }
    if let Err(p) = check_custom_endpoint_secrets(se, secrets) {
        return Ok(Err(p));
    }
    let names = Names::of(se)?;
    let config = match worker_config(se, &names) {
        Ok(c) => c?,
        Err(p) => return Ok(Err(p)),
    };
    if let Err(e) = config.validate() {
        return Ok(Err(Problem::invalid(format!(
            "the worker configuration is invalid: {e}"
        ))));
    }
    let config_yaml = serde_yaml::to_string(&config).map_err(Error::RenderConfig)?;
    let config_hash = hash(&config_yaml, &uses, secrets);
    let mut worker_secrets: Vec<String> = uses
        .iter()
        .filter(|u| u.worker)
        .map(|u| u.secret.clone())
        .collect();
    worker_secrets.sort();
    worker_secrets.dedup();
    Ok(Ok(Resolved {
        config,
        config_yaml,
        config_hash,
        worker_secrets,
    }))
}

/// Every referenced Secret must exist and hold the referenced key.
fn check_secrets(uses: &[SecretUse], secrets: &Secrets) -> Result<(), Problem> {
    for u in uses {
        let Some(Some(secret)) = secrets.get(&u.secret) else {
            return Err(Problem {
                reason: reason::SECRET_NOT_FOUND,
                message: format!(
                    "secret {:?} not found (referenced by {})",
                    u.secret, u.field
                ),
            });
        };
        let has_key = secret.data.as_ref().is_some_and(|d| d.contains_key(&u.key))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(&u.key));
        if !has_key {
            return Err(Problem {
                reason: reason::SECRET_NOT_FOUND,
                message: format!(
                    "secret {:?} has no key {:?} (referenced by {})",
                    u.secret, u.key, u.field
                ),
            });
        }
    }
    Ok(())
}

/// A Secret the workers would send to an endpoint other than the provider's official API must
/// carry the opt-in label; otherwise creating a ScalingEndpoint would let its author read any
/// Secret of the namespace (see `custom_endpoint`).
fn check_custom_endpoint_secrets(se: &ScalingEndpoint, secrets: &Secrets) -> Result<(), Problem> {
    for u in secrets_sent_to_custom_endpoints(&se.spec) {
        let allowed = secrets
            .get(&u.secret)
            .and_then(Option::as_ref)
            .and_then(|s| s.metadata.labels.as_ref())
            .and_then(|l| l.get(ALLOW_CUSTOM_ENDPOINT_LABEL))
            .is_some_and(|v| v == "true");
        if !allowed {
            return Err(Problem {
                reason: reason::SECRET_NOT_ALLOWED,
                message: format!(
                    "secret {:?} (referenced by {}) would be sent to {:?}, which is not the provider's official API: \
                     label the Secret {ALLOW_CUSTOM_ENDPOINT_LABEL}=true to allow that",
                    u.secret, u.field, u.endpoint
                ),
            });
        }
    }
    Ok(())
}

fn file(secret: &str, key: &str) -> SecretValue {
    SecretValue::File {
        file: secret_file(secret, key),
    }
}

fn non_negative(value: Option<i32>, field: &str) -> Result<Option<u32>, Problem> {
    value
        .map(|v| {
            u32::try_from(v).map_err(|_| Problem::invalid(format!("{field} must not be negative")))
        })
        .transpose()
}

/// Provider options for AWS: credentials as files, the region as text.
fn aws_extra_args(model: &ModelSpec) -> Result<Option<BTreeMap<String, serde_json::Value>>> {
    let Some(aws) = &model.aws else {
        return Ok(None);
    };
    let mut args = BTreeMap::new();
    args.insert(
        "aws_region_name".to_owned(),
        serde_json::Value::String(aws.region.clone()),
    );
    if let Some(c) = &aws.credentials_secret_ref {
        let keys = [
            ("aws_access_key_id", Some(&c.access_key_id_key)),
            ("aws_secret_access_key", Some(&c.secret_access_key_key)),
            ("aws_session_token", c.session_token_key.as_ref()),
        ];
        for (arg, key) in keys {
            let Some(key) = key else { continue };
            let value =
                serde_json::to_value(file(&c.name, key)).map_err(|source| Error::Serialize {
                    kind: "SecretValue",
                    name: arg.to_owned(),
                    source,
                })?;
            args.insert(arg.to_owned(), value);
        }
    }
    Ok(Some(args))
}

/// The worker configuration of an endpoint (before the worker's own validation).
fn worker_config(se: &ScalingEndpoint, names: &Names) -> Result<Result<WorkerConfig>, Problem> {
    let spec = &se.spec;
    let mut c = WorkerConfig::for_model(spec.model.name.clone());
    if spec.vllm.is_some() {
        // The in-cluster vLLM Service is the upstream; it speaks the OpenAI API.
        c.provider = Some(ProviderKind::OpenaiCompatible);
        c.endpoint = names.vllm_url();
    } else {
        c.provider = spec.model.provider;
        c.endpoint = spec
            .model
            .endpoint
            .clone()
            .unwrap_or_else(|| "auto".to_owned());
    }
    c.api_key = match spec.vllm {
        // Only the workers know in-cluster vLLM's key (the Secret the operator generated).
        Some(_) => Some(SecretValue::File {
            file: names.vllm_key_file(),
        }),
        None => spec
            .model
            .api_key_secret_ref
            .as_ref()
            .map(|r| file(&r.name, &r.key)),
    };

    let alg = &spec.algorithm;
    c.alg = alg.name;
    c.tool_vote = alg.tool_vote;
    c.exclude_args = alg.exclude_args.clone().unwrap_or_default();
    c.regex_patterns = alg.regex_patterns.clone();
    c.budget = non_negative(alg.default_budget, "spec.algorithm.defaultBudget")?;
    c.max_budget = non_negative(alg.max_budget, "spec.algorithm.maxBudget")?;
    c.adaptive = match &alg.adaptive {
        None => None,
        Some(a) => Some(AdaptiveConfig {
            rule: a.rule,
            threshold: a.threshold,
            min_samples: non_negative(a.min_samples, "spec.algorithm.adaptive.minSamples")?,
            parallelism: non_negative(a.parallelism, "spec.algorithm.adaptive.parallelism")?,
        }),
    };
    c.allow_request_override = alg
        .request_override
        .iter()
        .flatten()
        .map(|k| match k {
            RequestOverrideKey::Name => OverrideKey::Name,
            RequestOverrideKey::ToolVote => OverrideKey::ToolVote,
            RequestOverrideKey::Adaptive => OverrideKey::Adaptive,
        })
        .collect();

    c.step_token = alg.step_token.clone().map(StepTokens::One);
    c.stop_token = alg.stop_token.clone();
    c.max_steps = non_negative(alg.max_steps, "spec.algorithm.maxSteps")?;
    c.max_step_tokens = non_negative(alg.max_step_tokens, "spec.algorithm.maxStepTokens")?;
    c.beam_width = non_negative(alg.beam_width, "spec.algorithm.beamWidth")?;
    c.resampling = alg.resampling;
    c.selection = alg.selection;
    c.max_calls = non_negative(alg.max_calls, "spec.algorithm.maxCalls")?;
    if let Some(reward) = &spec.reward {
        // The PRM's served name is what the worker sends as `model`; it is never `llm-judge`.
        c.rm_name = Some(reward.model.clone());
        c.rm_step_tag = reward.step_tag.clone();
        c.rm_agg_method = reward.aggregation;
        (c.rm_endpoint, c.rm_api_key) = match (&reward.vllm, &reward.endpoint) {
            // The in-cluster PRM Service, with the key only the operator and the workers know.
            (Some(_), _) => (
                Some(names.prm_url()),
                Some(SecretValue::File {
                    file: names.prm_key_file(),
                }),
            ),
            (None, endpoint) => (
                endpoint.clone(),
                reward
                    .api_key_secret_ref
                    .as_ref()
                    .map(|r| file(&r.name, &r.key)),
            ),
        };
    }

    if let Some(judge) = &spec.judge {
        let m = &judge.model;
        if alg.name == AlgorithmName::BestOfN && spec.reward.is_none() {
            c.rm_name = Some(LLM_JUDGE.to_owned());
        }
        c.judge_model = Some(m.name.clone());
        c.judge_provider = m.provider;
        c.judge_base_url = Some(m.endpoint.clone().unwrap_or_else(|| "auto".to_owned()));
        c.judge_api_key = m.api_key_secret_ref.as_ref().map(|r| file(&r.name, &r.key));
        c.judge_mode = judge.mode;
        c.judge_criterion = judge.criterion.clone();
        c.judge_temperature = judge.temperature;
        c.judge_max_tokens = non_negative(judge.max_tokens, "spec.judge.maxTokens")?;
        c.judge_top_n = non_negative(judge.top_n, "spec.judge.topN")?;
    }

    // The worker has one set of provider options, so the judge can only add AWS settings when the
    // model has none, or repeat the model's.
    let judge_aws = spec.judge.as_ref().and_then(|j| j.model.aws.as_ref());
    let aws_source = match (&spec.model.aws, judge_aws) {
        (Some(m), Some(j)) if m != j => {
            return Err(Problem::invalid(
                "spec.judge.aws must be unset or equal to spec.model.aws: the workers hold one set of AWS settings",
            ));
        }
        (Some(_), _) => Some(&spec.model),
        (None, Some(_)) => spec.judge.as_ref().map(|j| &j.model),
        (None, None) => None,
    };
    let extra_args = match aws_source.map(aws_extra_args).transpose() {
        Ok(a) => a.flatten(),
        Err(e) => return Ok(Err(e)),
    };
    c.extra_args = extra_args;

    c.server = Some(ServerSettings {
        host: Some("0.0.0.0".to_owned()),
        port: Some(u16::try_from(spec.service.port).map_err(|_| {
            Problem::invalid(format!(
                "spec.service.port {} is not a TCP port",
                spec.service.port
            ))
        })?),
        log_format: Some(LogFormat::Json),
        api_keys_file: spec
            .auth
            .as_ref()
            .map(|a| secret_file(&a.api_keys_secret_ref.name, &a.api_keys_secret_ref.key)),
        ..ServerSettings::default()
    });
    Ok(Ok(c))
}

/// sha256 of the rendered config and of each referenced Secret key the workers read. Hashing the
/// values (not the Secret's resourceVersion) means only a change the workers can see rolls them.
fn hash(config_yaml: &str, uses: &[SecretUse], secrets: &Secrets) -> String {
    let mut h = Sha256::new();
    h.update(config_yaml.as_bytes());
    let mut worker_uses: Vec<&SecretUse> = uses.iter().filter(|u| u.worker).collect();
    worker_uses.sort();
    worker_uses.dedup_by(|a, b| a.secret == b.secret && a.key == b.key);
    for u in worker_uses {
        h.update([0]);
        h.update(u.secret.as_bytes());
        h.update([0]);
        h.update(u.key.as_bytes());
        h.update([0]);
        let value = secrets
            .get(&u.secret)
            .and_then(Option::as_ref)
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(&u.key));
        if let Some(v) = value {
            h.update(Sha256::digest(&v.0));
        }
    }
    digest::hex(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::fixtures::endpoint;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;

    fn secret(name: &str, data: &[(&str, &str)]) -> (String, Option<Secret>) {
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        (name.to_owned(), Some(s))
    }

    const OPENAI: &str = r#"
apiVersion: inferscale.dev/v1alpha1
kind: ScalingEndpoint
metadata: {name: sc}
spec:
  model:
    name: gpt-4o-mini
    provider: openai
    apiKeySecretRef: {name: openai, key: api-key}
  algorithm: {name: self-consistency, toolVote: tool_hierarchical, excludeArgs: [id], defaultBudget: 5, maxBudget: 16}
"#;

    fn ok(se: &ScalingEndpoint, secrets: &Secrets) -> Resolved {
        validate(se, secrets).unwrap().unwrap()
    }

    #[test]
    fn openai_config_references_the_mounted_secret_file() {
        let se = endpoint(OPENAI);
        let secrets = Secrets::from([secret("openai", &[("api-key", "sk-1")])]);
        let r = ok(&se, &secrets);
        assert_eq!(
            r.config.api_key,
            Some(SecretValue::File {
                file: "/etc/inferscale/secrets/openai/api-key".into()
            })
        );
        assert_eq!(r.config.provider, Some(ProviderKind::Openai));
        assert_eq!(r.config.budget, Some(5));
        assert_eq!(r.config.max_budget, Some(16));
        let server = r.config.server.clone().unwrap();
        assert_eq!(server.host.as_deref(), Some("0.0.0.0"));
        assert_eq!(server.port, Some(8108));
        assert_eq!(server.log_format, Some(LogFormat::Json));
        assert!(!r.config_yaml.contains("sk-1"), "secret value leaked");
        // The ConfigMap text is the worker's own format.
        assert_eq!(
            WorkerConfig::from_file_text(&r.config_yaml).unwrap(),
            r.config
        );
        assert_eq!(r.worker_secrets, vec!["openai".to_owned()]);
    }

    #[test]
    fn missing_secret_and_missing_key_are_named() {
        let se = endpoint(OPENAI);
        let p = validate(&se, &Secrets::from([("openai".to_owned(), None)]))
            .unwrap()
            .unwrap_err();
        assert_eq!(p.reason, "SecretNotFound");
        assert!(
            p.message.starts_with(r#"secret "openai" not found"#),
            "{}",
            p.message
        );
        let p = validate(&se, &Secrets::from([secret("openai", &[("other", "x")])]))
            .unwrap()
            .unwrap_err();
        assert_eq!(p.reason, "SecretNotFound");
        assert!(
            p.message
                .starts_with(r#"secret "openai" has no key "api-key""#),
            "{}",
            p.message
        );
    }

    #[test]
    fn secret_rotation_changes_the_hash_and_unrelated_keys_do_not() {
        let se = endpoint(OPENAI);
        let a = ok(
            &se,
            &Secrets::from([secret("openai", &[("api-key", "sk-1")])]),
        );
        let b = ok(
            &se,
            &Secrets::from([secret("openai", &[("api-key", "sk-2")])]),
        );
        let c = ok(
            &se,
            &Secrets::from([secret("openai", &[("api-key", "sk-1"), ("note", "x")])]),
        );
        assert_ne!(a.config_hash, b.config_hash);
        assert_eq!(a.config_hash, c.config_hash);
        assert_eq!(a.config_yaml, b.config_yaml);
    }

    #[test]
    fn bedrock_best_of_n_uses_files_for_credentials_and_text_for_region() {
        let se = endpoint(
            r#"
metadata: {name: bon}
spec:
  model:
    name: bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0
    aws:
      region: us-east-1
      credentialsSecretRef: {name: aws, sessionTokenKey: AWS_SESSION_TOKEN}
  algorithm: {name: best-of-n, defaultBudget: 4}
  judge:
    name: bedrock/us.anthropic.claude-3-7-sonnet-20250219-v1:0
    mode: groupwise
    criterion: multi_step_tool_judge
    temperature: 0.7
    maxTokens: 2048
  auth: {apiKeysSecretRef: {name: clients, key: keys}}
"#,
        );
        let secrets = Secrets::from([
            secret(
                "aws",
                &[
                    ("AWS_ACCESS_KEY_ID", "a"),
                    ("AWS_SECRET_ACCESS_KEY", "s"),
                    ("AWS_SESSION_TOKEN", "t"),
                ],
            ),
            secret("clients", &[("keys", "k1\nk2")]),
        ]);
        let r = ok(&se, &secrets);
        let extra = r.config.extra_args.clone().unwrap();
        assert_eq!(extra["aws_region_name"], serde_json::json!("us-east-1"));
        assert_eq!(
            extra["aws_access_key_id"],
            serde_json::json!({"file": "/etc/inferscale/secrets/aws/AWS_ACCESS_KEY_ID"})
        );
        assert_eq!(
            extra["aws_session_token"],
            serde_json::json!({"file": "/etc/inferscale/secrets/aws/AWS_SESSION_TOKEN"})
        );
        assert_eq!(r.config.alg, AlgorithmName::BestOfN);
        assert_eq!(r.config.rm_name.as_deref(), Some("llm-judge"));
        assert_eq!(r.config.judge_max_tokens, Some(2048));
        assert_eq!(
            r.config.server.unwrap().api_keys_file,
            Some("/etc/inferscale/secrets/clients/keys".into())
        );
        assert_eq!(
            r.worker_secrets,
            vec!["aws".to_owned(), "clients".to_owned()]
        );
        // A missing session token key is named too.
        let secrets = Secrets::from([
            secret(
                "aws",
                &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "s")],
            ),
            secret("clients", &[("keys", "k")]),
        ]);
        let p = validate(&se, &secrets).unwrap().unwrap_err();
        assert!(
            p.message.contains(r#"has no key "AWS_SESSION_TOKEN""#),
            "{}",
            p.message
        );
    }

    #[test]
    fn vllm_makes_the_in_cluster_service_the_upstream() {
        let se = endpoint(
            r#"
metadata: {name: local, namespace: team}
spec:
  model: {name: qwen}
  algorithm: {name: self-consistency}
  vllm: {model: Qwen/Qwen2.5-0.5B-Instruct}
"#,
        );
        let r = ok(&se, &Secrets::new());
        assert_eq!(r.config.endpoint, "http://local-vllm.team.svc:8000/v1");
        assert_eq!(r.config.provider, Some(ProviderKind::OpenaiCompatible));
        assert_eq!(r.config.model, "qwen");
    }

    #[test]
    fn worker_validation_is_applied() {
        let se = endpoint(
            r#"
metadata: {name: bad}
spec:
  model: {name: m}
  algorithm: {name: self-consistency, regexPatterns: ["("]}
"#,
        );
        let p = validate(&se, &Secrets::new()).unwrap().unwrap_err();
        assert_eq!(p.reason, "InvalidConfig");
        assert!(p.message.contains("regex_patterns[0]"), "{}", p.message);
    }

    #[test]
    fn adaptive_and_request_overrides_reach_the_worker_config() {
        let se = endpoint(
            r#"
metadata: {name: adaptive}
spec:
  model: {name: m}
  algorithm:
    name: self-consistency
    maxBudget: 8
    adaptive: {rule: its_hub, threshold: 0.8, minSamples: 3, parallelism: 2}
    requestOverride: [name, toolVote, adaptive]
"#,
        );
        let c = ok(&se, &Secrets::new()).config;
        assert_eq!(
            c.adaptive,
            Some(AdaptiveConfig {
                rule: inferscale_worker::config::AdaptiveRuleName::ItsHub,
                threshold: Some(0.8),
                min_samples: Some(3),
                parallelism: Some(2),
            })
        );
        assert_eq!(
            c.allow_request_override,
            [
                OverrideKey::Name,
                OverrideKey::ToolVote,
                OverrideKey::Adaptive
            ]
        );
        // What the CRD's CEL rules refuse, the worker's validation refuses too.
        let se = endpoint(
            r#"
metadata: {name: bad}
spec:
  model: {name: m}
  algorithm: {name: self-consistency, maxBudget: 4, adaptive: {rule: beta, minSamples: 5}}
"#,
        );
        let p = validate(&se, &Secrets::new()).unwrap().unwrap_err();
        assert!(p.message.contains("adaptive.min_samples"), "{}", p.message);
    }

    #[test]
    fn judge_aws_must_match_model_aws() {
        let se = endpoint(
            r#"
metadata: {name: x}
spec:
  model: {name: bedrock/a, aws: {region: us-east-1}}
  algorithm: {name: best-of-n}
  judge: {name: bedrock/b, aws: {region: eu-west-1}}
"#,
        );
        let p = validate(&se, &Secrets::new()).unwrap().unwrap_err();
        assert!(p.message.contains("spec.judge.aws"), "{}", p.message);
    }

    #[test]
    fn a_secret_for_a_custom_endpoint_needs_the_label() {
        let se = endpoint(
            r#"
metadata: {name: x}
spec:
  model:
    name: gpt-4o
    endpoint: https://attacker.invalid/v1
    apiKeySecretRef: {name: db-creds, key: password}
  algorithm: {name: self-consistency}
"#,
        );
        let (name, unlabelled) = secret("db-creds", &[("password", "hunter2")]);
        let secrets = Secrets::from([(name.clone(), unlabelled.clone())]);
        let p = validate(&se, &secrets).unwrap().unwrap_err();
        assert_eq!(p.reason, "SecretNotAllowed");
        assert!(
            p.message.contains(r#"secret "db-creds""#)
                && p.message
                    .contains("inferscale.dev/allow-custom-endpoint=true")
                && p.message.contains("https://attacker.invalid/v1"),
            "{}",
            p.message
        );
        assert!(!p.message.contains("hunter2"));

        let mut labelled = unlabelled.clone().unwrap();
        labelled.metadata.labels = Some(BTreeMap::from([(
            "inferscale.dev/allow-custom-endpoint".to_owned(),
            "true".to_owned(),
        )]));
        let r = ok(
            &se,
            &Secrets::from([(name.clone(), Some(labelled.clone()))]),
        );
        assert_eq!(r.worker_secrets, vec!["db-creds".to_owned()]);

        labelled.metadata.labels = Some(BTreeMap::from([(
            "inferscale.dev/allow-custom-endpoint".to_owned(),
            "false".to_owned(),
        )]));
        let p = validate(&se, &Secrets::from([(name, Some(labelled))]))
            .unwrap()
            .unwrap_err();
        assert_eq!(p.reason, "SecretNotAllowed");
    }

    #[test]
    fn an_in_cluster_prm_is_reached_at_its_service_with_the_generated_key() {
        let se = endpoint(
            r#"
metadata: {name: math, namespace: team}
spec:
  model: {name: qwen-math}
  algorithm: {name: particle-filtering, defaultBudget: 8, stepToken: "\n\n", stopToken: '\boxed', maxSteps: 12, maxStepTokens: 256, resampling: systematic, selection: sample, maxCalls: 200}
  vllm: {model: Qwen/Qwen2.5-Math-1.5B-Instruct}
  reward: {model: Qwen/Qwen2.5-Math-PRM-7B, stepTag: "<extra_1>", aggregation: min, vllm: {model: Qwen/Qwen2.5-Math-PRM-7B}}
"#,
        );
        let r = ok(&se, &Secrets::new());
        let c = &r.config;
        assert_eq!(c.alg, AlgorithmName::ParticleFiltering);
        assert_eq!(c.rm_name.as_deref(), Some("Qwen/Qwen2.5-Math-PRM-7B"));
        assert_eq!(
            c.rm_endpoint.as_deref(),
            Some("http://math-prm.team.svc:8000")
        );
        assert_eq!(
            c.rm_api_key,
            Some(SecretValue::File {
                file: "/etc/inferscale/secrets/math-prm-key/api-key".into()
            })
        );
        assert_eq!(c.rm_step_tag.as_deref(), Some("<extra_1>"));
        assert_eq!(
            c.rm_agg_method,
            Some(inferscale_worker::config::RmAggMethod::Min)
        );
        assert_eq!(c.step_token, Some(StepTokens::One("\n\n".to_owned())));
        assert_eq!(c.stop_token.as_deref(), Some("\\boxed"));
        assert_eq!(
            (c.max_steps, c.max_step_tokens, c.max_calls),
            (Some(12), Some(256), Some(200))
        );
        assert_eq!(
            c.resampling,
            Some(inferscale_worker::config::Resampling::Systematic)
        );
        assert_eq!(
            c.selection,
            Some(inferscale_worker::config::Selection::Sample)
        );
        // The worker reads exactly this back, and the settings it derives are the spec's.
        assert_eq!(WorkerConfig::from_file_text(&r.config_yaml).unwrap(), *c);
        let settings = c.stepwise_settings().expect("step-wise settings");
        assert_eq!(settings.rm_base_url, "http://math-prm.team.svc:8000");
        assert_eq!(settings.max_steps, 12);
        // The generated key is read from its mounted Secret, never referenced as a user Secret.
        assert!(r.worker_secrets.is_empty(), "{:?}", r.worker_secrets);
    }

    #[test]
    fn an_external_prm_gets_the_users_key_as_a_file_and_never_the_value() {
        let se = endpoint(
            r#"
metadata: {name: bs, namespace: team}
spec:
  model: {name: gpt-4o-mini, provider: openai-compatible, endpoint: "http://vllm.ml.svc:8000/v1"}
  algorithm: {name: beam-search, beamWidth: 2, defaultBudget: 4, maxBudget: 8}
  reward: {model: prm, endpoint: "http://prm.ml.svc:8000/v1", apiKeySecretRef: {name: prm, key: key}}
"#,
        );
        let mut prm = secret("prm", &[("key", "prm-secret-value")]);
        prm.1.as_mut().unwrap().metadata.labels = Some(BTreeMap::from([(
            "inferscale.dev/allow-custom-endpoint".to_owned(),
            "true".to_owned(),
        )]));
        let r = ok(&se, &Secrets::from([prm]));
        let c = &r.config;
        assert_eq!(c.alg, AlgorithmName::BeamSearch);
        assert_eq!(c.beam_width, Some(2));
        assert_eq!(c.rm_endpoint.as_deref(), Some("http://prm.ml.svc:8000/v1"));
        assert_eq!(
            c.rm_api_key,
            Some(SecretValue::File {
                file: "/etc/inferscale/secrets/prm/key".into()
            })
        );
        assert!(!r.config_yaml.contains("prm-secret-value"));
        assert_eq!(r.worker_secrets, ["prm".to_owned()]);
        // Defaults are the worker's: nothing is written that the user did not set.
        assert_eq!((c.rm_step_tag.as_ref(), c.rm_agg_method), (None, None));

        // Unlabelled, the key would be sent to a server the user chose: refused.
        let p = validate(&se, &Secrets::from([secret("prm", &[("key", "x")])]))
            .unwrap()
            .unwrap_err();
        assert_eq!(p.reason, "SecretNotAllowed");
        assert!(
            p.message.contains("spec.reward.apiKeySecretRef"),
            "{}",
            p.message
        );
    }

    #[test]
    fn best_of_n_with_a_prm_is_scored_by_the_prm_not_the_judge() {
        let se = endpoint(
            "metadata: {name: bon, namespace: team}\nspec: {model: {name: m, provider: openai-compatible, endpoint: 'http://vllm:8000/v1'}, algorithm: {name: best-of-n}, reward: {model: prm, endpoint: 'http://prm:8000'}}",
        );
        let c = ok(&se, &Secrets::new()).config;
        assert_eq!(c.rm_name.as_deref(), Some("prm"));
        assert!(c.uses_prm() && !c.uses_llm_judge());
    }

    #[test]
    fn the_workers_own_step_rules_name_the_field() {
        // A budget that is not a multiple of the beam width gets past no layer: the CRD's CEL
        // refuses it at admission, and validation (for objects written before the rule) too.
        let se = endpoint(
            "metadata: {name: bs, namespace: team}\nspec: {model: {name: m, provider: openai-compatible, endpoint: 'http://vllm:8000/v1'}, algorithm: {name: beam-search, beamWidth: 3, maxBudget: 16}, reward: {model: prm, endpoint: 'http://prm:8000'}}",
        );
        let p = validate(&se, &Secrets::new()).unwrap().unwrap_err();
        assert_eq!(p.reason, "InvalidConfig");
        assert!(p.message.contains("beam_width"), "{}", p.message);
    }
}
