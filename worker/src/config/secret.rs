//! Secrets in the configuration: inline text (the guide's style), a file path (a mounted Kubernetes
//! Secret) or an environment variable. File secrets are re-read when the file changes, so a rotated
//! Secret takes effect on the next request without a restart.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a secret value comes from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SecretValue {
    /// The secret itself, inline (as in the guide's `/configure` examples).
    Inline(String),
    /// A file holding the secret; surrounding whitespace is trimmed. Re-read when it changes.
    File {
        /// Absolute path of the file (for example a mounted Secret key).
        file: PathBuf,
    },
    /// An environment variable of the worker process holding the secret.
    Env {
        /// Name of the environment variable.
        env: String,
    },
}

impl fmt::Debug for SecretValue {
    // Never print the secret itself, only where it comes from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretValue::Inline(_) => f.write_str("SecretValue::Inline(<redacted>)"),
            SecretValue::File { file } => write!(f, "SecretValue::File({})", file.display()),
            SecretValue::Env { env } => write!(f, "SecretValue::Env({env})"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret file {path} cannot be read: {reason}")]
    File { path: String, reason: String },
    #[error("environment variable {0} is not set")]
    Env(String),
}

impl SecretValue {
    /// True when the value is an inline empty string (the guide sends `""` or null for "no key").
    pub fn is_empty_inline(&self) -> bool {
        matches!(self, SecretValue::Inline(s) if s.trim().is_empty())
    }

    /// Reads the value now. File and environment sources are checked, inline values returned.
    pub fn read_now(&self) -> Result<String, SecretError> {
        match self {
            SecretValue::Inline(s) => Ok(s.clone()),
            SecretValue::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim().to_owned())
                .map_err(|e| SecretError::File {
                    path: file.display().to_string(),
                    reason: e.kind().to_string(),
                }),
            SecretValue::Env { env } => std::env::var(env)
                .map(|s| s.trim().to_owned())
                .map_err(|_| SecretError::Env(env.clone())),
        }
    }
}

/// A resolved secret that notices when its file changes. Cheap to read on every request: a
/// `stat` of the file, and a re-read only when the modification time or size moved.
pub struct LiveSecret {
    source: SecretValue,
    cached: Mutex<Cached>,
}

struct Cached {
    stamp: Option<(SystemTime, u64)>,
    value: std::sync::Arc<str>,
}

impl fmt::Debug for LiveSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveSecret")
            .field("source", &self.source)
            .finish()
    }
}

impl LiveSecret {
    /// Resolves the secret once; fails when the file or variable is missing.
    pub fn new(source: SecretValue) -> Result<Self, SecretError> {
        let value: std::sync::Arc<str> = source.read_now()?.into();
        let stamp = file_stamp(&source);
        Ok(Self {
            source,
            cached: Mutex::new(Cached { stamp, value }),
        })
    }

    /// The current value. For a file source, re-reads the file if it changed since the last read;
    /// if the file has become unreadable the last good value is kept (Kubernetes swaps Secret
    /// volumes through a symlink, so a read can briefly race the swap).
    pub fn get(&self) -> std::sync::Arc<str> {
        let SecretValue::File { .. } = &self.source else {
            return self
                .cached
                .lock()
                .map(|c| c.value.clone())
                .unwrap_or_else(|p| p.into_inner().value.clone());
        };
        let stamp = file_stamp(&self.source);
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if stamp.is_some()
            && stamp != cached.stamp
            && let Ok(v) = self.source.read_now()
        {
            cached.value = v.into();
            cached.stamp = stamp;
        }
        cached.value.clone()
    }
}

fn file_stamp(source: &SecretValue) -> Option<(SystemTime, u64)> {
    let SecretValue::File { file } = source else {
        return None;
    };
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_three_forms() {
        let v: SecretValue = serde_json::from_str(r#""sk-1""#).unwrap();
        assert_eq!(v, SecretValue::Inline("sk-1".into()));
        let v: SecretValue = serde_json::from_str(r#"{"file": "/x"}"#).unwrap();
        assert_eq!(v, SecretValue::File { file: "/x".into() });
        let v: SecretValue = serde_json::from_str(r#"{"env": "K"}"#).unwrap();
        assert_eq!(v, SecretValue::Env { env: "K".into() });
    }

    #[test]
    fn debug_never_shows_inline_secret() {
        let v = SecretValue::Inline("sk-very-secret".into());
        assert!(!format!("{v:?}").contains("very-secret"));
    }

    #[test]
    fn file_secret_follows_rotation() {
        let dir = std::env::temp_dir().join(format!("inferscale-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "first\n").unwrap();
        let s = LiveSecret::new(SecretValue::File { file: path.clone() }).unwrap();
        assert_eq!(&*s.get(), "first");
        // A different length guarantees a different stamp even on coarse-mtime filesystems.
        std::fs::write(&path, "second-key").unwrap();
        assert_eq!(&*s.get(), "second-key");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
