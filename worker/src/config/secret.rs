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

/// Where a `POST /configure` body may take secrets from: files under some directories and some
/// environment variables, named by the operator at start-up. Default: nowhere. Without it, anyone
/// allowed to call `/configure` could have any file the worker can read, or any of its environment
/// variables, sent to an upstream of their choice as a Bearer token. The config file (written by
/// the operator) is not subject to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretAllowList {
    /// Canonical (symlink-free, absolute) directories.
    dirs: Vec<PathBuf>,
    envs: Vec<String>,
}

impl SecretAllowList {
    /// Resolves the directories now, so that `..` and symlinks cannot widen them later. A
    /// directory that cannot be resolved is an operator's mistake and is reported.
    pub fn new(dirs: &[PathBuf], envs: &[String]) -> Result<Self, SecretError> {
        let dirs = dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d).map_err(|e| SecretError::File {
                    path: d.display().to_string(),
                    reason: e.kind().to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            dirs,
            envs: envs.iter().filter(|e| !e.is_empty()).cloned().collect(),
        })
    }

    /// Whether a `/configure` body may use this source. Inline values always may. A file is
    /// judged by its canonical path (symlinks resolved, `..` removed); a path that cannot be
    /// resolved is refused exactly like one outside the list, so the answer says nothing about
    /// whether it exists.
    pub fn admits(&self, source: &SecretValue) -> bool {
        match source {
            SecretValue::Inline(_) => true,
            SecretValue::File { file } => {
                std::fs::canonicalize(file).is_ok_and(|canonical| is_within(&canonical, &self.dirs))
            }
            SecretValue::Env { env } => self.envs.iter().any(|allowed| allowed == env),
        }
    }
}

/// Whether a canonical path lies strictly inside one of the canonical directories.
fn is_within(canonical: &std::path::Path, dirs: &[PathBuf]) -> bool {
    dirs.iter()
        .any(|d| canonical != d.as_path() && canonical.starts_with(d))
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

    #[test]
    fn allow_list_resolves_dots_and_symlinks() {
        let root = std::env::temp_dir().join(format!("inferscale-allow-{}", std::process::id()));
        let allowed = root.join("allowed");
        let outside = root.join("outside");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(allowed.join("key"), "k").unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(outside.join("secret"), allowed.join("link")).unwrap();
        let list =
            SecretAllowList::new(std::slice::from_ref(&allowed), &["GOOD".to_owned()]).unwrap();
        let file = |p: PathBuf| SecretValue::File { file: p };
        assert!(list.admits(&file(allowed.join("key"))));
        assert!(list.admits(&file(outside.join("../allowed/key"))));
        assert!(!list.admits(&file(allowed.join("../outside/secret"))));
        assert!(!list.admits(&file(allowed.join("missing"))));
        assert!(!list.admits(&file(outside.join("secret"))));
        assert!(!list.admits(&file(allowed.clone())));
        #[cfg(unix)]
        assert!(!list.admits(&file(allowed.join("link"))));
        assert!(list.admits(&SecretValue::Env { env: "GOOD".into() }));
        assert!(!list.admits(&SecretValue::Env { env: "HOME".into() }));
        assert!(list.admits(&SecretValue::Inline("x".into())));
        assert!(!SecretAllowList::default().admits(&file(allowed.join("key"))));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn within_needs_a_path_below_the_directory() {
        let dirs = [PathBuf::from("/run/secrets")];
        assert!(is_within(std::path::Path::new("/run/secrets/a"), &dirs));
        assert!(!is_within(std::path::Path::new("/run/secrets"), &dirs));
        assert!(!is_within(
            std::path::Path::new("/run/secrets-other/a"),
            &dirs
        ));
    }
}
