//! Problems with a user's spec or with what already exists in its namespace: not operator
//! errors (those are `error::Error` and retried with backoff) but conditions and Warning Events
//! that tell the user what to change. Validation, apply and status all speak this type, so it
//! lives on its own and imports nothing.

/// Reasons of `ConfigValid=False` (and of `Ready=False` while it is false).
pub mod reason {
    /// A referenced Secret or one of its keys does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The worker configuration the spec renders to is refused.
    pub const INVALID_CONFIG: &str = "InvalidConfig";
    /// A Secret would be sent to an endpoint that is not the provider's official API, and it does
    /// not carry the opt-in label.
    pub const SECRET_NOT_ALLOWED: &str = "SecretNotAllowed";
    /// An object named like one of the endpoint's children exists and is not controlled by it.
    pub const CHILD_CONFLICT: &str = "ChildConflict";
}

/// The first thing wrong with a spec, as a condition reason (CamelCase) and a message that names
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            reason: reason::INVALID_CONFIG,
            message: message.into(),
        }
    }
}
