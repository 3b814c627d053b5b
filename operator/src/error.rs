//! The operator's error type. Problems with a user's spec (a missing Secret, an invalid config)
//! are not errors: they become conditions and Events (see `problem::Problem`). Errors here are
//! what the operator could not do, and are retried with backoff.

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{kind} {name:?} could not be serialized: {source}")]
    Serialize {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("worker configuration could not be rendered as YAML: {0}")]
    RenderConfig(#[source] serde_yaml::Error),
    #[error("the ScalingEndpoint has no {0} (the API server always sets it)")]
    MissingObjectKey(&'static str),
    #[error("the {0} watch stopped before its cache was filled")]
    CacheNotReady(&'static str),
    #[error("could not read random bytes for vLLM's API key: {0}")]
    RandomKey(#[source] std::io::Error),
}

impl Error {
    /// A short, bounded label for the `reason` of the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.is_conflict() => "ApiConflict",
            Error::Kube(kube::Error::Api(status)) if status.is_forbidden() => "ApiForbidden",
            Error::Kube(kube::Error::Api(_)) => "ApiError",
            Error::Kube(_) => "ApiUnreachable",
            Error::Serialize { .. } => "Serialize",
            Error::RenderConfig(_) => "RenderConfig",
            Error::MissingObjectKey(_) => "MissingObjectKey",
            Error::CacheNotReady(_) => "CacheNotReady",
            Error::RandomKey(_) => "RandomKey",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether an API error means "not found". Checks the HTTP code too: a group or kind that is not
/// served answers a plain-text 404 without a `NotFound` reason.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.is_not_found())
}
