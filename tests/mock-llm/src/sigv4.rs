//! AWS Signature Version 4 (header-based, `AWS4-HMAC-SHA256`): signer and
//! verifier, as used by Bedrock runtime (service `bedrock`).
//!
//! Canonical URI: for every service but S3 each path segment of the path as
//! sent is URI-encoded again, so a model id sent as `a%3A0` is canonicalised
//! as `a%253A0`.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Maximum allowed difference between `x-amz-date` and the server clock.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an
    // all-zero digest (which will simply never match) rather than panic.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters kept, every
/// other byte `%XX` with upper-case hex.
pub fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hexval = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hexval(b[i + 1]) * 16 + hexval(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Canonical URI of a (non-S3) request path exactly as it appeared on the wire.
pub fn canonical_uri(raw_path: &str) -> String {
    if raw_path.is_empty() {
        return "/".to_string();
    }
    raw_path
        .split('/')
        .map(|seg| uri_encode(seg.as_bytes()))
        .collect::<Vec<_>>()
        .join("/")
}

/// Canonical query string: each name and value decoded then re-encoded,
/// sorted by name then value.
pub fn canonical_query(raw_query: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A request as seen by the signer: header names lower-case, path and query
/// exactly as sent.
#[derive(Debug, Clone)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub raw_path: &'a str,
    pub raw_query: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

impl RequestParts<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `name:value\n` lines for the signed headers; `None` if one is missing.
fn canonical_headers(parts: &RequestParts<'_>, signed: &[String]) -> Option<String> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = parts
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return None;
        }
        out.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Some(out)
}

/// The SigV4 canonical request; `None` if a signed header is absent.
pub fn canonical_request(
    parts: &RequestParts<'_>,
    signed: &[String],
    payload_hash: &str,
) -> Option<String> {
    Some(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method,
        canonical_uri(parts.raw_path),
        canonical_query(parts.raw_query),
        canonical_headers(parts, signed)?,
        signed.join(";"),
        payload_hash
    ))
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

pub fn signature(key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(hmac(key, string_to_sign.as_bytes()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// Compute the `Authorization` header value for `parts` (used by tests to
/// sign requests). `signed` must be lower-case and sorted.
#[cfg(test)]
pub fn authorization_header(
    parts: &RequestParts<'_>,
    creds: &Credentials,
    amz_date: &str,
    region: &str,
    service: &str,
    signed: &[String],
) -> Option<String> {
    let date = amz_date.get(..8)?;
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let creq = canonical_request(parts, signed, &sha256_hex(parts.body))?;
    let sts = string_to_sign(amz_date, &scope, &creq);
    let sig = signature(
        &signing_key(&creds.secret_access_key, date, region, service),
        &sts,
    );
    Some(format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
        creds.access_key_id,
        signed.join(";")
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn parse_authorization(value: &str) -> Result<Authorization, VerifyError> {
    let rest = value
        .trim()
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            VerifyError::Incomplete(format!(
                "Unsupported authorization type; expected {ALGORITHM}."
            ))
        })?;
    let (mut credential, mut signed, mut sig) = (None, None, None);
    for item in rest.split(',') {
        let item = item.trim();
        if let Some(v) = item.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = item.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = item.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let missing = |what: &str| {
        VerifyError::Incomplete(format!(
            "Authorization header requires '{what}' parameter. Authorization={value}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let sig = sig.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, terminator] = scope[..] else {
        return Err(VerifyError::Incomplete(format!(
            "Credential should have 5 slash-separated parts: {credential}"
        )));
    };
    if terminator != "aws4_request" {
        return Err(VerifyError::Scope(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        )));
    }
    Ok(Authorization {
        access_key_id: key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: signed.split(';').map(|s| s.to_ascii_lowercase()).collect(),
        signature: sig.to_string(),
    })
}

/// Why a request was refused; maps to AWS's error types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    Missing,
    Incomplete(String),
    UnknownAccessKey,
    BadSecurityToken,
    Scope(String),
    Expired(String),
    PayloadHash,
    Mismatch {
        canonical_request: String,
        string_to_sign: String,
    },
}

pub const MISMATCH_MESSAGE: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

impl VerifyError {
    pub fn error_type(&self) -> &'static str {
        match self {
            VerifyError::Missing => "MissingAuthenticationTokenException",
            VerifyError::Incomplete(_) => "IncompleteSignatureException",
            VerifyError::UnknownAccessKey | VerifyError::BadSecurityToken => {
                "UnrecognizedClientException"
            }
            VerifyError::Scope(_)
            | VerifyError::Expired(_)
            | VerifyError::PayloadHash
            | VerifyError::Mismatch { .. } => "InvalidSignatureException",
        }
    }

    pub fn message(&self) -> String {
        match self {
            VerifyError::Missing => "Missing Authentication Token".into(),
            VerifyError::Incomplete(m) | VerifyError::Scope(m) | VerifyError::Expired(m) => {
                m.clone()
            }
            VerifyError::UnknownAccessKey | VerifyError::BadSecurityToken => {
                "The security token included in the request is invalid.".into()
            }
            VerifyError::PayloadHash => {
                "The provided 'x-amz-content-sha256' header does not match what was computed."
                    .into()
            }
            VerifyError::Mismatch { .. } => MISMATCH_MESSAGE.into(),
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Parse `YYYYMMDDTHHMMSSZ` into Unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

pub fn format_amz_date(epoch: i64) -> String {
    let (y, m, d) = civil_from_days(epoch.div_euclid(86_400));
    let s = epoch.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verify a header-signed request against `creds` at time `now` (Unix s).
pub fn verify(
    parts: &RequestParts<'_>,
    creds: &Credentials,
    service: &str,
    now: i64,
) -> Result<(), VerifyError> {
    let auth = parse_authorization(parts.header("authorization").ok_or(VerifyError::Missing)?)?;
    if auth.access_key_id != creds.access_key_id {
        return Err(VerifyError::UnknownAccessKey);
    }
    if parts.header("x-amz-security-token") != creds.session_token.as_deref() {
        return Err(VerifyError::BadSecurityToken);
    }
    if auth.service != service {
        return Err(VerifyError::Scope(format!(
            "Credential should be scoped to correct service: '{service}'. "
        )));
    }
    let amz_date = parts.header("x-amz-date").ok_or_else(|| {
        VerifyError::Incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .into(),
        )
    })?;
    let when = parse_amz_date(amz_date).ok_or_else(|| {
        VerifyError::Incomplete(format!(
            "Invalid X-Amz-Date '{amz_date}'; expected YYYYMMDD'T'HHMMSS'Z'."
        ))
    })?;
    if amz_date.get(..8) != Some(auth.date.as_str()) {
        return Err(VerifyError::Scope(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.",
            auth.date,
            amz_date.get(..8).unwrap_or_default()
        )));
    }
    if when < now - MAX_SKEW_SECS {
        return Err(VerifyError::Expired(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
            format_amz_date(now - MAX_SKEW_SECS),
            format_amz_date(now)
        )));
    }
    if when > now + MAX_SKEW_SECS {
        return Err(VerifyError::Expired(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
            format_amz_date(now + MAX_SKEW_SECS),
            format_amz_date(now)
        )));
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(VerifyError::Incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    let payload_hash = sha256_hex(parts.body);
    if let Some(claimed) = parts.header("x-amz-content-sha256")
        && !claimed.eq_ignore_ascii_case(&payload_hash)
    {
        return Err(VerifyError::PayloadHash);
    }
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let creq = canonical_request(parts, &auth.signed_headers, &payload_hash).unwrap_or_default();
    let sts = string_to_sign(amz_date, &scope, &creq);
    let expected = signature(
        &signing_key(
            &creds.secret_access_key,
            &auth.date,
            &auth.region,
            &auth.service,
        ),
        &sts,
    );
    if constant_time_eq(
        expected.as_bytes(),
        auth.signature.to_ascii_lowercase().as_bytes(),
    ) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch {
            canonical_request: creq,
            string_to_sign: sts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS SigV4 test suite, `get-vanilla`.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";
    const VANILLA_CREQ: &str = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const VANILLA_CREQ_HASH: &str =
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63";
    const VANILLA_SIG: &str = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

    fn creds() -> Credentials {
        Credentials {
            access_key_id: AKID.into(),
            secret_access_key: SECRET.into(),
            session_token: None,
        }
    }

    fn signed(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn vanilla(auth: Option<&str>) -> RequestParts<'static> {
        let mut headers = vec![
            ("host".to_string(), "example.amazonaws.com".to_string()),
            ("x-amz-date".to_string(), DATE.to_string()),
        ];
        if let Some(a) = auth {
            headers.push(("authorization".into(), a.to_string()));
        }
        RequestParts {
            method: "GET",
            raw_path: "/",
            raw_query: "",
            headers,
            body: b"",
        }
    }

    fn now() -> i64 {
        parse_amz_date(DATE).unwrap()
    }

    #[test]
    fn get_vanilla_known_vector() {
        let parts = vanilla(None);
        let hl = signed(&["host", "x-amz-date"]);
        let creq = canonical_request(&parts, &hl, &sha256_hex(b"")).unwrap();
        assert_eq!(creq, VANILLA_CREQ);
        assert_eq!(sha256_hex(creq.as_bytes()), VANILLA_CREQ_HASH);
        let sts = string_to_sign(DATE, "20150830/us-east-1/service/aws4_request", &creq);
        assert_eq!(
            sts,
            format!(
                "AWS4-HMAC-SHA256\n{DATE}\n20150830/us-east-1/service/aws4_request\n{VANILLA_CREQ_HASH}"
            )
        );
        let sig = signature(
            &signing_key(SECRET, "20150830", "us-east-1", "service"),
            &sts,
        );
        assert_eq!(sig, VANILLA_SIG);
        let header =
            authorization_header(&parts, &creds(), DATE, "us-east-1", "service", &hl).unwrap();
        assert_eq!(
            header,
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={VANILLA_SIG}"
            )
        );
    }

    #[test]
    fn verifier_accepts_the_documented_vanilla_request() {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={VANILLA_SIG}"
        );
        assert_eq!(
            verify(&vanilla(Some(&auth)), &creds(), "service", now()),
            Ok(())
        );
        // Within the skew window either way.
        assert_eq!(
            verify(&vanilla(Some(&auth)), &creds(), "service", now() + 899),
            Ok(())
        );
        assert_eq!(
            verify(&vanilla(Some(&auth)), &creds(), "service", now() - 899),
            Ok(())
        );
    }

    #[test]
    fn verifier_rejects_tampering() {
        let good = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={VANILLA_SIG}"
        );
        let c = creds();
        // Wrong secret.
        let mut wrong = creds();
        wrong.secret_access_key.push('x');
        assert!(matches!(
            verify(&vanilla(Some(&good)), &wrong, "service", now()),
            Err(VerifyError::Mismatch { .. })
        ));
        // Changed path / method / body.
        let mut p = vanilla(Some(&good));
        p.raw_path = "/other";
        assert!(matches!(
            verify(&p, &c, "service", now()),
            Err(VerifyError::Mismatch { .. })
        ));
        let mut p = vanilla(Some(&good));
        p.method = "POST";
        assert!(matches!(
            verify(&p, &c, "service", now()),
            Err(VerifyError::Mismatch { .. })
        ));
        let mut p = vanilla(Some(&good));
        p.body = b"x";
        assert!(matches!(
            verify(&p, &c, "service", now()),
            Err(VerifyError::Mismatch { .. })
        ));
        // Claimed payload hash differs from the body.
        let mut p = vanilla(Some(&good));
        p.headers
            .push(("x-amz-content-sha256".into(), sha256_hex(b"other")));
        assert_eq!(
            verify(&p, &c, "service", now()),
            Err(VerifyError::PayloadHash)
        );
        // Skew.
        let e = verify(&vanilla(Some(&good)), &c, "service", now() + 901).unwrap_err();
        assert!(
            matches!(&e, VerifyError::Expired(m) if m.starts_with("Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z")),
            "{e:?}"
        );
        assert_eq!(e.error_type(), "InvalidSignatureException");
        assert!(matches!(
            verify(&vanilla(Some(&good)), &c, "service", now() - 901),
            Err(VerifyError::Expired(_))
        ));
        // Wrong service, key, token, missing header.
        assert!(matches!(
            verify(&vanilla(Some(&good)), &c, "bedrock", now()),
            Err(VerifyError::Scope(_))
        ));
        let mut other_key = creds();
        other_key.access_key_id = "AKIDOTHER".into();
        assert_eq!(
            verify(&vanilla(Some(&good)), &other_key, "service", now()),
            Err(VerifyError::UnknownAccessKey)
        );
        let mut with_token = creds();
        with_token.session_token = Some("tok".into());
        assert_eq!(
            verify(&vanilla(Some(&good)), &with_token, "service", now()),
            Err(VerifyError::BadSecurityToken)
        );
        assert_eq!(
            verify(&vanilla(None), &c, "service", now()),
            Err(VerifyError::Missing)
        );
        assert!(matches!(
            verify(&vanilla(Some("Bearer x")), &c, "service", now()),
            Err(VerifyError::Incomplete(_))
        ));
        let no_host = good.replace("host;x-amz-date", "x-amz-date");
        assert!(matches!(
            verify(&vanilla(Some(&no_host)), &c, "service", now()),
            Err(VerifyError::Incomplete(_))
        ));
        let e = VerifyError::Mismatch {
            canonical_request: String::new(),
            string_to_sign: String::new(),
        };
        assert!(e.message().starts_with(
            "The request signature we calculated does not match the signature you provided"
        ));
    }

    #[test]
    fn session_token_is_signed_and_checked() {
        let mut c = creds();
        c.session_token = Some("FQoGZXIvYXdzEXAMPLE".into());
        let mut p = vanilla(None);
        p.headers
            .push(("x-amz-security-token".into(), "FQoGZXIvYXdzEXAMPLE".into()));
        let hl = signed(&["host", "x-amz-date", "x-amz-security-token"]);
        let auth = authorization_header(&p, &c, DATE, "us-east-1", "bedrock", &hl).unwrap();
        p.headers.push(("authorization".into(), auth));
        assert_eq!(verify(&p, &c, "bedrock", now()), Ok(()));
        // Token header altered: rejected.
        p.headers[2].1 = "other".into();
        assert_eq!(
            verify(&p, &c, "bedrock", now()),
            Err(VerifyError::BadSecurityToken)
        );
    }

    /// A Bedrock Converse request signed by botocore (AWS's Python SDK) at
    /// a fixed time: proves the double-encoded model id in the canonical URI
    /// and the session-token handling against an independent signer.
    #[test]
    fn botocore_signed_bedrock_request() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"What is 847*293+156?"}]}]}"#;
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240501/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature=db565663d8c09ffd19d50feeecfd52bfae4f1d057cd3b981291c30fb1b28fd11";
        let parts = RequestParts {
            method: "POST",
            raw_path: "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            raw_query: "",
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-amz-date".into(), "20240501T120000Z".into()),
                ("x-amz-security-token".into(), "SESSIONTOKENEXAMPLE".into()),
                ("authorization".into(), auth.into()),
                ("host".into(), "127.0.0.1:8100".into()),
                ("content-length".into(), body.len().to_string()),
            ],
            body,
        };
        let mut c = creds();
        c.session_token = Some("SESSIONTOKENEXAMPLE".into());
        let now = parse_amz_date("20240501T120500Z").unwrap();
        assert_eq!(verify(&parts, &c, "bedrock", now), Ok(()));
        // Our signer produces the same header.
        let hl = signed(&["content-type", "host", "x-amz-date", "x-amz-security-token"]);
        assert_eq!(
            authorization_header(&parts, &c, "20240501T120000Z", "us-east-1", "bedrock", &hl)
                .as_deref(),
            Some(auth)
        );
        // Single-encoding the model id (a common client bug) does not verify.
        let mut single = parts.clone();
        single.raw_path = "/model/anthropic.claude-3-haiku-20240307-v1:0/converse";
        assert!(matches!(
            verify(&single, &c, "bedrock", now),
            Err(VerifyError::Mismatch { .. })
        ));
    }

    #[test]
    fn canonical_uri_double_encodes_segments() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(
            canonical_uri("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"),
            "/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse"
        );
        assert_eq!(canonical_uri("/a b/c~d"), "/a%20b/c~d");
    }

    #[test]
    fn canonical_query_sorts_and_encodes() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(
            canonical_query("Param2=value2&Param1=value1"),
            "Param1=value1&Param2=value2"
        );
        assert_eq!(canonical_query("b=2&a=%7e&a=1&c"), "a=1&a=~&b=2&c=");
        assert_eq!(canonical_query("k=a%2Fb c"), "k=a%2Fb%20c");
    }

    #[test]
    fn header_values_are_trimmed_and_joined() {
        let p = RequestParts {
            method: "GET",
            raw_path: "/",
            raw_query: "",
            headers: vec![
                ("my-header1".into(), "  value1  a   b ".into()),
                ("my-header1".into(), "value2".into()),
            ],
            body: b"",
        };
        assert_eq!(
            canonical_headers(&p, &signed(&["my-header1"])).unwrap(),
            "my-header1:value1 a b,value2\n"
        );
        assert_eq!(canonical_headers(&p, &signed(&["absent"])), None);
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date(DATE), Some(1_440_938_160));
        assert_eq!(format_amz_date(1_440_938_160), DATE);
        assert_eq!(format_amz_date(951_782_400), "20000229T000000Z");
        for bad in [
            "20150830T123600",
            "2015-08-30T12:36Z",
            "20151330T123600Z",
            "2015083xT123600Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab%zz%4"), b"a:b%zz%4");
    }
}
