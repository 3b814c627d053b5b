//! The Bedrock part of a configuration (`extra_args.aws_*` and the model id), parsed and checked
//! without I/O. Pure and built without the `server` feature, so `WorkerConfig::validate` (which
//! the operator runs) refuses exactly what the worker's Bedrock provider would refuse at start,
//! with the same message; the provider builds from what [`check_bedrock_config`] returns.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{SecretError, SecretValue};

/// `extra_args` keys the Bedrock provider reads; other `aws_*` keys are refused rather than ignored.
pub const SUPPORTED_AWS_ARGS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region_name",
    "aws_bedrock_runtime_endpoint",
];

/// Why a Bedrock configuration cannot work. [`BedrockConfigError::field`] says which field is wrong.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BedrockConfigError {
    #[error("the Bedrock model id is empty")]
    EmptyModelId,
    #[error(
        "bedrock/invoke/… (InvokeModel) is not supported; this worker calls Converse: \
         use bedrock/<model-id> or bedrock/converse/<model-id>"
    )]
    InvokeNotSupported,
    #[error("extra_args.{key} is not supported for Bedrock; supported: {}", SUPPORTED_AWS_ARGS.join(", "))]
    UnsupportedArg { key: String },
    #[error("extra_args.{key} must be a string, {{\"file\": path}} or {{\"env\": NAME}}")]
    NotASecret { key: String },
    #[error("extra_args.{key} must be a string")]
    NotAString { key: String },
    #[error("extra_args needs both aws_access_key_id and aws_secret_access_key, or neither")]
    HalfKeyPair,
    #[error("extra_args.aws_session_token needs aws_access_key_id and aws_secret_access_key")]
    TokenWithoutKeys,
    #[error("{0:?} is not an AWS region name")]
    BadRegion(String),
    #[error("Bedrock endpoint {endpoint:?} {problem}")]
    BadEndpoint {
        endpoint: String,
        problem: &'static str,
    },
    #[error(
        "no AWS credentials for Bedrock: set extra_args.aws_access_key_id and \
         aws_secret_access_key (inline, {{\"file\": …}} or {{\"env\": …}}), or provide \
         AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, web identity (AWS_WEB_IDENTITY_TOKEN_FILE + \
         AWS_ROLE_ARN) or container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI) to the worker"
    )]
    NoCredentials,
    /// A key in `extra_args` names a file or variable that cannot be read (checked at start).
    #[error("{0}")]
    Secret(SecretError),
}

/// The configuration field a [`BedrockConfigError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BedrockField {
    /// The model string (`model` or `judge_model`).
    ModelId,
    ExtraArgs,
}

impl BedrockConfigError {
    pub fn field(&self) -> BedrockField {
        match self {
            BedrockConfigError::EmptyModelId | BedrockConfigError::InvokeNotSupported => {
                BedrockField::ModelId
            }
            _ => BedrockField::ExtraArgs,
        }
    }
}

/// The `extra_args` the Bedrock provider understands, parsed. Empty strings and nulls are absent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AwsArgs {
    pub access_key_id: Option<SecretValue>,
    pub secret_access_key: Option<SecretValue>,
    pub session_token: Option<SecretValue>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

/// Everything about a Bedrock route that the configuration alone decides: the model id (trimmed)
/// and the parsed `extra_args`, with the region, endpoint and key pairing checked. What depends
/// on the worker's environment (credentials found there, `AWS_REGION`) is checked at start.
pub fn check_bedrock_config<'a>(
    model_id: &'a str,
    extra_args: Option<&BTreeMap<String, Value>>,
) -> Result<(&'a str, AwsArgs), BedrockConfigError> {
    let model_id = check_model_id(model_id)?;
    let args = parse_aws_args(extra_args)?;
    if let Some(region) = &args.region {
        check_region(region)?;
    }
    if let Some(endpoint) = &args.endpoint {
        check_endpoint(endpoint)?;
    }
    check_key_pair(&args)?;
    Ok((model_id, args))
}

fn check_model_id(model_id: &str) -> Result<&str, BedrockConfigError> {
    let model_id = model_id.trim();
    if model_id.is_empty() {
        Err(BedrockConfigError::EmptyModelId)
    } else if model_id.starts_with("invoke/") {
        Err(BedrockConfigError::InvokeNotSupported)
    } else {
        Ok(model_id)
    }
}

pub fn parse_aws_args(
    extra: Option<&BTreeMap<String, Value>>,
) -> Result<AwsArgs, BedrockConfigError> {
    let mut args = AwsArgs::default();
    let Some(extra) = extra else {
        return Ok(args);
    };
    for (key, value) in extra {
        if !key.starts_with("aws_") {
            continue; // Other providers' options; not ours to judge.
        }
        if !SUPPORTED_AWS_ARGS.contains(&key.as_str()) {
            return Err(BedrockConfigError::UnsupportedArg { key: key.clone() });
        }
        if value.is_null() {
            continue;
        }
        let secret = || -> Result<Option<SecretValue>, BedrockConfigError> {
            let v: SecretValue = serde_json::from_value(value.clone())
                .map_err(|_| BedrockConfigError::NotASecret { key: key.clone() })?;
            Ok((!v.is_empty_inline()).then_some(v))
        };
        let plain = || -> Result<Option<String>, BedrockConfigError> {
            match value {
                Value::String(s) if s.trim().is_empty() => Ok(None),
                Value::String(s) => Ok(Some(s.trim().to_owned())),
                _ => Err(BedrockConfigError::NotAString { key: key.clone() }),
            }
        };
        match key.as_str() {
            "aws_access_key_id" => args.access_key_id = secret()?,
            "aws_secret_access_key" => args.secret_access_key = secret()?,
            "aws_session_token" => args.session_token = secret()?,
            "aws_region_name" => args.region = plain()?,
            _ => args.endpoint = plain()?,
        }
    }
    Ok(args)
}

/// Keys from `extra_args` come as a pair (with an optional session token), or not at all.
pub fn check_key_pair(args: &AwsArgs) -> Result<(), BedrockConfigError> {
    match (&args.access_key_id, &args.secret_access_key) {
        (Some(_), Some(_)) => Ok(()),
        (Some(_), None) | (None, Some(_)) => Err(BedrockConfigError::HalfKeyPair),
        (None, None) if args.session_token.is_some() => Err(BedrockConfigError::TokenWithoutKeys),
        (None, None) => Ok(()),
    }
}

/// The region goes into a host name and the signing scope; keep it to what AWS uses
/// (`us-east-1`, not `US-EAST-1`).
pub fn check_region(region: &str) -> Result<(), BedrockConfigError> {
    let ok = region
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BedrockConfigError::BadRegion(region.to_owned()))
    }
}

/// An endpoint must be a plain `http(s)://host[:port][/path]` URL: the signer needs the host, and
/// a query string would not be signed as sent.
pub fn check_endpoint(endpoint: &str) -> Result<(), BedrockConfigError> {
    let bad = |problem| {
        Err(BedrockConfigError::BadEndpoint {
            endpoint: endpoint.to_owned(),
            problem,
        })
    };
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return bad("is not a URL");
    };
    if !matches!(scheme, "http" | "https") {
        return bad("must be an http(s) URL with a host");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = match authority.find(']') {
        // An IPv6 literal: `[::1]:8080`.
        Some(end) => (&authority[..=end], authority[end + 1..].strip_prefix(':')),
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let host_ok = !host.is_empty()
        && (host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || (host.starts_with('[') && host.ends_with(']')));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    if !host_ok || !port_ok {
        return bad("must be an http(s) URL with a host");
    }
    if endpoint.contains('?') {
        return bad("must not have a query string");
    }
    if endpoint.contains(char::is_whitespace) || endpoint.contains('#') {
        return bad("is not a URL");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn extra(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    fn check(model: &str, v: Value) -> Result<AwsArgs, BedrockConfigError> {
        check_bedrock_config(model, Some(&extra(v))).map(|(_, a)| a)
    }

    #[test]
    fn model_ids_are_trimmed_and_invoke_refused() {
        assert_eq!(check_bedrock_config("  m  ", None).unwrap().0, "m");
        let e = check_bedrock_config(" ", None).unwrap_err();
        assert_eq!(
            (e.field(), e.to_string().as_str()),
            (BedrockField::ModelId, "the Bedrock model id is empty")
        );
        let e = check_bedrock_config("invoke/anthropic.claude", None).unwrap_err();
        assert_eq!(e, BedrockConfigError::InvokeNotSupported);
        assert_eq!(e.field(), BedrockField::ModelId);
    }

    #[test]
    fn upper_case_region_is_refused_like_at_start() {
        let e = check("m", json!({"aws_region_name": "US-EAST-1"})).unwrap_err();
        assert_eq!(e.to_string(), r#""US-EAST-1" is not an AWS region name"#);
        assert_eq!(e.field(), BedrockField::ExtraArgs);
        assert!(check("m", json!({"aws_region_name": "evil.com/x"})).is_err());
        assert_eq!(
            check("m", json!({"aws_region_name": " eu-west-1 "}))
                .unwrap()
                .region
                .as_deref(),
            Some("eu-west-1")
        );
    }

    #[test]
    fn endpoints_must_be_plain_http_urls() {
        for ok in [
            "https://vpce.example",
            "http://127.0.0.1:9000/",
            "https://bedrock-runtime.us-east-1.amazonaws.com/base",
            "http://[::1]:8080",
            "http://[::1]",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for (bad, words) in [
            ("ftp://x", "must be an http(s) URL with a host"),
            ("vpce.example", "is not a URL"),
            ("https://", "must be an http(s) URL with a host"),
            ("https://a b", "must be an http(s) URL with a host"),
            ("https://h:99999", "must be an http(s) URL with a host"),
            ("https://h/x?a=1", "must not have a query string"),
        ] {
            let e = check_endpoint(bad).unwrap_err().to_string();
            assert!(e.contains(words), "{bad}: {e}");
        }
    }

    #[test]
    fn key_pairs_and_argument_types() {
        let e = check("m", json!({"aws_access_key_id": "AKID"})).unwrap_err();
        assert_eq!(e, BedrockConfigError::HalfKeyPair);
        let e = check("m", json!({"aws_session_token": "t"})).unwrap_err();
        assert_eq!(e, BedrockConfigError::TokenWithoutKeys);
        let e = check("m", json!({"aws_role_name": "r"})).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        let e = check("m", json!({"aws_access_key_id": 5})).unwrap_err();
        assert!(e.to_string().contains("must be a string, {\"file\""), "{e}");
        let e = check("m", json!({"aws_region_name": 5})).unwrap_err();
        assert_eq!(e.to_string(), "extra_args.aws_region_name must be a string");
        // Other providers' options are left alone; null and empty values count as absent.
        assert_eq!(
            check(
                "m",
                json!({"other": 1, "aws_access_key_id": null, "aws_secret_access_key": ""})
            ),
            Ok(AwsArgs::default())
        );
    }
}
