//! SigV4 signing of Bedrock calls.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

/// SigV4 signing name of Bedrock Runtime (not `bedrock-runtime`, whatever the host says).
pub(super) const SIGNING_NAME: &str = "bedrock";

/// SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for a request. `headers`
/// are the ones that will be sent and must be signed besides `host` (taken from `url`).
#[allow(clippy::too_many_arguments)]
pub(super) fn sign_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    creds: Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, String> {
    let identity = creds.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?;
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(request, &params.into())
        .map_err(|e| e.to_string())?
        .into_parts();
    let (signed, _query) = instructions.into_parts();
    Ok(signed
        .into_iter()
        .map(|h| (h.name(), h.value().to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::bedrock::settings::converse_url;

    const MODEL: &str = "us.anthropic.claude-3-7-sonnet-20250219-v1:0";
    use std::time::{Duration, UNIX_EPOCH};

    fn example_creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_owned),
            None,
            "test",
        )
    }

    /// 2015-08-30T12:36:00Z, the date of AWS's SigV4 test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn sigv4_matches_the_aws_get_vanilla_vector() {
        let h = sign_headers(
            "GET",
            "https://example.amazonaws.com/",
            &[],
            b"",
            example_creds(None),
            "us-east-1",
            "service",
            suite_time(),
        )
        .unwrap();
        assert_eq!(header(&h, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            header(&h, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );
    }

    /// Expected values computed independently (a 30-line Python SigV4 over the canonical path
    /// `/model/us.anthropic.claude-3-7-sonnet-20250219-v1%253A0/converse`, i.e. double-encoded).
    #[test]
    fn bedrock_signature_double_encodes_the_canonical_path() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let url = converse_url("https://bedrock-runtime.us-east-1.amazonaws.com", MODEL);
        let h = sign_headers(
            "POST",
            &url,
            &[("content-type", "application/json")],
            body,
            example_creds(None),
            "us-east-1",
            SIGNING_NAME,
            suite_time(),
        )
        .unwrap();
        assert_eq!(
            header(&h, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, \
                 Signature=01d9241da23c82140aa82ec58af08b7a43298b1648763e57331830b848a1871d"
            )
        );
        // With a session token and a local endpoint (host includes the port).
        let url = converse_url("http://127.0.0.1:8080", MODEL);
        let h = sign_headers(
            "POST",
            &url,
            &[("content-type", "application/json")],
            body,
            example_creds(Some("SESSIONTOKEN")),
            "us-west-2",
            SIGNING_NAME,
            suite_time(),
        )
        .unwrap();
        assert_eq!(header(&h, "x-amz-security-token"), Some("SESSIONTOKEN"));
        assert_eq!(
            header(&h, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, \
                 Signature=d6a57f888ef519ae81e51030ea32610f401bacfffb1b683751b93638a7f27fd7"
            )
        );
    }
}
