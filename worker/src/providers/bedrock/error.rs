//! Bedrock's error responses and AWS SDK errors, made readable.

use serde_json::Value;

/// Status and message of a Bedrock error: `{type}: {message}`, the type from `x-amzn-errortype`
/// (or the body's `__type`). Throttling reported under another status is treated as 429 so it is
/// retried.
pub(super) fn aws_error(status: u16, error_type: Option<&str>, body: &[u8]) -> (u16, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_owned();
            if text.is_empty() {
                "(empty body)".to_owned()
            } else {
                text
            }
        });
    // Both forms may carry a namespace or URL: `Type:http://…` and `ns#Type`.
    let kind = error_type
        .map(|t| t.split(':').next().unwrap_or(t))
        .or_else(|| {
            parsed
                .as_ref()
                .and_then(|v| v.get("__type"))
                .and_then(Value::as_str)
                .map(|t| t.rsplit('#').next().unwrap_or(t))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let status = match kind.as_deref() {
        Some("ThrottlingException" | "TooManyRequestsException") if status < 500 => 429,
        _ => status,
    };
    let message = match kind {
        Some(k) => format!("{k}: {message}"),
        None => message,
    };
    (status, message)
}

/// An error and its sources, joined: AWS credential errors put the useful part in a source.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(next) = cur {
        let text = next.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = next.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::redact;

    #[test]
    fn bedrock_errors_name_their_type_and_throttling_is_retryable() {
        let (status, msg) = aws_error(
            403,
            Some("InvalidSignatureException:http://internal.amazon.com/coral/com.amazon.coral.service/"),
            br#"{"message":"The request signature we calculated does not match the signature you provided."}"#,
        );
        assert_eq!(status, 403);
        assert_eq!(
            msg,
            "InvalidSignatureException: The request signature we calculated does not match the signature you provided."
        );
        let (status, msg) = aws_error(
            400,
            None,
            br#"{"__type":"com.amazon#ThrottlingException","Message":"slow down"}"#,
        );
        assert_eq!(
            (status, msg.as_str()),
            (429, "ThrottlingException: slow down")
        );
        assert_eq!(aws_error(500, None, b"").1, "(empty body)");
        assert_eq!(
            redact("bad token SESSIONTOKEN".into(), ["SESSIONTOKEN", "ab"]),
            "bad token [redacted]"
        );
    }
}
