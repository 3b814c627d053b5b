//! Scrubbing of upstream error text before it reaches a client or a log. Upstreams echo what
//! they were sent and name the caller's cloud identity (AWS puts the account id and the role ARN
//! into `AccessDeniedException` messages); none of that is the client's business.

use std::sync::LazyLock;

use regex::Regex;

/// Longest upstream message passed on, in characters; enough for any useful error text.
pub const MAX_MESSAGE_CHARS: usize = 600;

/// Patterns of credentials and cloud identities, each with its replacement. Order matters: ARNs
/// contain account ids, URLs with credentials may contain keys.
static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // `scheme://user:password@host` → keep the scheme and host, drop the credentials.
        (r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@", "${1}[redacted]@"),
        // AWS ARNs: role, user, inference-profile and assumed-role names say who the caller is.
        (r"\barn:aws[a-z-]*:[^\s,;]*", "[arn]"),
        // AWS access key ids (long-term AKIA, temporary ASIA, and the other unique-id prefixes).
        (
            r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|APKA)[A-Z0-9]{12,}\b",
            "[access-key-id]",
        ),
        // Bearer tokens and OpenAI-style secret keys.
        (r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+", "Bearer [redacted]"),
        (r"\bsk-[A-Za-z0-9_-]{6,}", "[redacted-key]"),
        // AWS account ids: exactly twelve digits standing alone.
        (r"\b[0-9]{12}\b", "[account-id]"),
    ]
    .into_iter()
    .map(|(p, r)| (Regex::new(p).expect("scrub patterns are valid"), r))
    .collect()
});

/// Removes secrets from an upstream message: the given `secrets` (those sent on this call, in
/// case the upstream echoes one), then anything shaped like a credential or an AWS identity,
/// and caps the length.
pub fn redact<'a>(mut message: String, secrets: impl IntoIterator<Item = &'a str>) -> String {
    for s in secrets {
        if s.len() >= 4 && message.contains(s) {
            message = message.replace(s, "[redacted]");
        }
    }
    for (pattern, replacement) in PATTERNS.iter() {
        if pattern.is_match(&message) {
            message = pattern.replace_all(&message, *replacement).into_owned();
        }
    }
    cap(message)
}

fn cap(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}… (truncated)", &message[..cut]),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrub(s: &str) -> String {
        redact(s.to_owned(), [])
    }

    #[test]
    fn redacts_echoed_keys() {
        assert_eq!(
            redact("bad key sk-secret1".into(), ["sk-secret1"]),
            "bad key [redacted]"
        );
        assert_eq!(
            redact("bad token SESSIONTOKEN".into(), ["SESSIONTOKEN", "ab"]),
            "bad token [redacted]"
        );
    }

    #[test]
    fn aws_access_denied_loses_account_and_role() {
        let text = "AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/inferscale-worker/i-0abc \
                    is not authorized to perform: bedrock:InvokeModel on resource: \
                    arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku because no \
                    identity-based policy allows the bedrock:InvokeModel action";
        let out = scrub(text);
        assert_eq!(
            out,
            "AccessDeniedException: User: [arn] is not authorized to perform: bedrock:InvokeModel \
             on resource: [arn] because no identity-based policy allows the bedrock:InvokeModel action"
        );
    }

    #[test]
    fn aws_key_ids_and_bare_account_ids_are_removed() {
        assert_eq!(
            scrub(
                "UnrecognizedClientException: The security token included in the request is invalid. \
                 (key AKIAIOSFODNN7EXAMPLE, account 123456789012, temporary ASIAXYZ0123456789ABC)"
            ),
            "UnrecognizedClientException: The security token included in the request is invalid. \
             (key [access-key-id], account [account-id], temporary [access-key-id])"
        );
        // Thirteen digits or a digit inside a word are not account ids.
        assert_eq!(
            scrub("tokens 1234567890123 x123456789012"),
            "tokens 1234567890123 x123456789012"
        );
    }

    #[test]
    fn tokens_keys_and_url_credentials_are_removed() {
        assert_eq!(
            scrub(
                "Incorrect API key provided: sk-proj-abc123XYZ. Sent Authorization: Bearer eyJhbGciOi.J9x"
            ),
            "Incorrect API key provided: [redacted-key]. Sent Authorization: Bearer [redacted]"
        );
        assert_eq!(
            scrub("could not reach https://admin:hunter2@proxy.internal:8443/v1"),
            "could not reach https://[redacted]@proxy.internal:8443/v1"
        );
    }

    #[test]
    fn ordinary_messages_are_untouched_and_long_ones_capped() {
        let ok =
            "ValidationException: The model returned the following errors: max_tokens: 1 <= 8192";
        assert_eq!(scrub(ok), ok);
        let long = "é".repeat(5000);
        let out = scrub(&long);
        assert_eq!(
            out.chars().count(),
            MAX_MESSAGE_CHARS + "… (truncated)".chars().count()
        );
        assert!(out.ends_with("… (truncated)"));
    }

    proptest::proptest! {
        #[test]
        fn scrubbing_never_panics_and_caps_the_length(text in "\\PC{0,2000}") {
            let out = scrub(&text);
            proptest::prop_assert!(out.chars().count() <= MAX_MESSAGE_CHARS + 16);
        }
    }
}
