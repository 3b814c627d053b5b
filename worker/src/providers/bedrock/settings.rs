//! Where Bedrock calls go and how they authenticate, resolved from `extra_args` and the AWS
//! environment before any secret is read.

use std::fmt::Write as _;

use crate::config::SecretValue;
use crate::config::bedrock::{
    AwsArgs, BedrockConfigError, check_endpoint, check_key_pair, check_region,
};

const DEFAULT_REGION: &str = "us-east-1";
/// The AWS-related environment, read once per configuration so resolution stays testable.
#[derive(Debug, Clone, Default)]
pub struct AwsEnv {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub bearer_token: bool,
    pub access_keys: bool,
    pub web_identity: bool,
    pub container: bool,
}

impl AwsEnv {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let set = |k: &str| var(k).is_some();
        Self {
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            endpoint: var("AWS_ENDPOINT_URL_BEDROCK_RUNTIME").or_else(|| var("AWS_ENDPOINT_URL")),
            bearer_token: set("AWS_BEARER_TOKEN_BEDROCK"),
            access_keys: set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY"),
            web_identity: set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN"),
            container: set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        }
    }
}

/// Which credentials a configuration uses, before any secret is read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AuthPlan {
    Keys {
        access_key_id: SecretValue,
        secret_access_key: SecretValue,
        session_token: Option<SecretValue>,
    },
    ApiKey,
    EnvBearer,
    Chain,
}

pub(super) fn plan_auth(
    args: AwsArgs,
    api_key: bool,
    env: &AwsEnv,
) -> Result<AuthPlan, BedrockConfigError> {
    check_key_pair(&args)?;
    if let (Some(access_key_id), Some(secret_access_key)) =
        (args.access_key_id, args.secret_access_key)
    {
        return Ok(AuthPlan::Keys {
            access_key_id,
            secret_access_key,
            session_token: args.session_token,
        });
    }
    if api_key {
        Ok(AuthPlan::ApiKey)
    } else if env.bearer_token {
        Ok(AuthPlan::EnvBearer)
    } else if env.access_keys || env.web_identity || env.container {
        Ok(AuthPlan::Chain)
    } else {
        Err(BedrockConfigError::NoCredentials)
    }
}

pub(super) fn resolve_region(args: &AwsArgs, env: &AwsEnv) -> Result<String, BedrockConfigError> {
    let region = args
        .region
        .clone()
        .or_else(|| env.region.clone())
        .unwrap_or_else(|| DEFAULT_REGION.to_owned());
    check_region(&region)?;
    Ok(region)
}

pub(super) fn resolve_endpoint(
    args: &AwsArgs,
    env: &AwsEnv,
    region: &str,
) -> Result<String, BedrockConfigError> {
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| env.endpoint.clone())
        .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
    check_endpoint(&endpoint)?;
    // The configuration's shape check above is pure; the URL parser has the last word.
    if reqwest::Url::parse(&endpoint).is_err() {
        return Err(BedrockConfigError::BadEndpoint {
            endpoint,
            problem: "is not a URL",
        });
    }
    Ok(endpoint.trim_end_matches('/').to_owned())
}

/// The Converse URL of a model: the id percent-encoded once as a single path segment.
pub(super) fn converse_url(endpoint: &str, model_id: &str) -> String {
    format!(
        "{endpoint}/model/{}/converse",
        encode_path_segment(model_id)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so `:` and `/` of ids and ARNs).
pub(super) fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::bedrock::parse_aws_args;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    const MODEL: &str = "us.anthropic.claude-3-7-sonnet-20250219-v1:0";

    fn args(v: Value) -> Result<AwsArgs, String> {
        let map: BTreeMap<String, Value> = serde_json::from_value(v).unwrap();
        parse_aws_args(Some(&map)).map_err(|e| e.to_string())
    }

    #[test]
    fn extra_args_forms_and_auth_order() {
        let a = args(json!({
            "aws_access_key_id": "AKID", "aws_secret_access_key": {"file": "/run/secrets/aws-secret"},
            "aws_session_token": {"env": "MY_TOKEN"}, "aws_region_name": "eu-west-1", "other": 1,
        }))
        .unwrap();
        assert_eq!(
            plan_auth(a, true, &AwsEnv::default()),
            Ok(AuthPlan::Keys {
                access_key_id: SecretValue::Inline("AKID".into()),
                secret_access_key: SecretValue::File {
                    file: "/run/secrets/aws-secret".into()
                },
                session_token: Some(SecretValue::Env {
                    env: "MY_TOKEN".into()
                }),
            })
        );

        // Null and empty values count as absent; then api_key, the bearer env var, the chain.
        let none =
            || args(json!({"aws_access_key_id": null, "aws_secret_access_key": ""})).unwrap();
        let env = AwsEnv {
            access_keys: true,
            ..AwsEnv::default()
        };
        assert_eq!(plan_auth(none(), true, &env), Ok(AuthPlan::ApiKey));
        let bearer = AwsEnv {
            bearer_token: true,
            ..env.clone()
        };
        assert_eq!(plan_auth(none(), false, &bearer), Ok(AuthPlan::EnvBearer));
        assert_eq!(plan_auth(none(), false, &env), Ok(AuthPlan::Chain));
        let irsa = AwsEnv {
            web_identity: true,
            ..AwsEnv::default()
        };
        assert_eq!(plan_auth(none(), false, &irsa), Ok(AuthPlan::Chain));
        let pod = AwsEnv {
            container: true,
            ..AwsEnv::default()
        };
        assert_eq!(plan_auth(none(), false, &pod), Ok(AuthPlan::Chain));
        let e = plan_auth(none(), false, &AwsEnv::default()).unwrap_err();
        assert!(e.to_string().contains("no AWS credentials"), "{e}");

        let half = args(json!({"aws_access_key_id": "AKID"})).unwrap();
        assert!(
            plan_auth(half, false, &env)
                .unwrap_err()
                .to_string()
                .contains("both")
        );
        let token_only = args(json!({"aws_session_token": "t"})).unwrap();
        assert!(plan_auth(token_only, false, &env).is_err());
        assert!(
            args(json!({"aws_role_name": "r"}))
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            args(json!({"aws_region_name": 5}))
                .unwrap_err()
                .contains("must be a string")
        );
        assert!(args(json!({"aws_access_key_id": 5})).is_err());
    }

    #[test]
    fn region_and_endpoint_precedence() {
        let env = AwsEnv {
            region: Some("us-west-2".into()),
            endpoint: Some("http://127.0.0.1:9000/".into()),
            ..AwsEnv::default()
        };
        let a = args(json!({"aws_region_name": "eu-central-1"})).unwrap();
        assert_eq!(resolve_region(&a, &env).unwrap(), "eu-central-1");
        assert_eq!(
            resolve_region(&AwsArgs::default(), &env).unwrap(),
            "us-west-2"
        );
        assert_eq!(
            resolve_region(&AwsArgs::default(), &AwsEnv::default()).unwrap(),
            "us-east-1"
        );
        assert!(
            resolve_region(
                &args(json!({"aws_region_name": "evil.com/x"})).unwrap(),
                &env
            )
            .is_err()
        );

        assert_eq!(
            resolve_endpoint(&AwsArgs::default(), &env, "x").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            resolve_endpoint(&AwsArgs::default(), &AwsEnv::default(), "eu-west-1").unwrap(),
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );
        let own = args(json!({"aws_bedrock_runtime_endpoint": "https://vpce.example"})).unwrap();
        assert_eq!(
            resolve_endpoint(&own, &env, "x").unwrap(),
            "https://vpce.example"
        );
        let bad = args(json!({"aws_bedrock_runtime_endpoint": "ftp://x"})).unwrap();
        assert!(resolve_endpoint(&bad, &env, "x").is_err());
    }

    #[test]
    fn model_id_is_encoded_once_in_the_path() {
        assert_eq!(
            encode_path_segment(MODEL),
            "us.anthropic.claude-3-7-sonnet-20250219-v1%3A0"
        );
        assert_eq!(
            converse_url("https://bedrock-runtime.us-east-1.amazonaws.com", MODEL),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse"
        );
        assert_eq!(
            encode_path_segment("arn:aws:bedrock:us-east-1:123:application-inference-profile/abc"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Aapplication-inference-profile%2Fabc"
        );
    }
}
