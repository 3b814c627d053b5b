//! A child the API server refuses, as a status problem.
//!
//! Some apply failures will not go away by retrying: the API server found the object invalid (an
//! annotation key that is not a qualified name, a change to an immutable field) or the operator
//! may not make it. Those are shown where users look — `Ready=False`, reason `ApplyFailed`, with
//! the kind, the name and the API server's own message, plus a Warning Event — while the reconcile
//! still retries with backoff. Anything else (timeouts, conflicts, 5xx) stays an error.

use crate::error::{Error, Result};
use crate::problem::Problem;

/// Reason of the condition and of the Warning Event.
pub const APPLY_FAILED: &str = "ApplyFailed";

/// Whether an API answer means "this object, as written, will not be accepted": 400 Bad Request,
/// 403 Forbidden, 422 Invalid.
fn permanent(code: u16) -> bool {
    matches!(code, 400 | 403 | 422)
}

/// The problem a failed apply of `kind` `name` shows, or `None` if retrying may fix it.
pub fn problem(kind: &str, name: &str, err: &kube::Error) -> Option<Problem> {
    match err {
        kube::Error::Api(s) if permanent(s.code) => Some(Problem {
            reason: APPLY_FAILED,
            message: format!(
                "{kind} {name:?} was refused by the API server: {}",
                s.message
            ),
        }),
        _ => None,
    }
}

/// For the apply call site: a permanent refusal becomes the problem, anything else the error.
pub fn into_problem(kind: &str, name: &str, err: kube::Error) -> Result<Problem> {
    problem(kind, name, &err).ok_or(Error::Kube(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        let body = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Invalid", "code": code,
        });
        kube::Error::Api(serde_json::from_value(body).expect("a Status"))
    }

    #[test]
    fn an_invalid_object_is_shown_with_the_api_servers_message() {
        let msg = "Deployment.apps \"sc\" is invalid: spec.template.metadata.annotations: Invalid value: \"bad key!\": name part must consist of alphanumeric characters";
        let p = problem("Deployment", "sc", &api_error(422, msg)).unwrap();
        assert_eq!(p.reason, "ApplyFailed");
        assert_eq!(
            p.message,
            format!("Deployment \"sc\" was refused by the API server: {msg}")
        );
        assert!(problem("Service", "sc", &api_error(403, "forbidden")).is_some());
    }

    #[test]
    fn transient_failures_stay_errors() {
        for code in [409, 429, 500, 503] {
            assert!(
                problem("Deployment", "sc", &api_error(code, "x")).is_none(),
                "{code}"
            );
        }
        let e = into_problem("Deployment", "sc", api_error(500, "etcd timeout")).unwrap_err();
        assert!(matches!(e, Error::Kube(_)));
    }
}
