//! The API keys of the in-cluster vLLM servers: a random key in a Secret the operator owns
//! (`<name>-vllm-key` for the generator, `<name>-prm-key` for the process reward model), created
//! once and never changed by the operator. Rotating it is a deliberate act: delete the Secret (the
//! operator creates a new one) and restart vLLM and the workers (docs/operations.md).

use std::io::Read;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};

use crate::build::vllm::{self, VllmRole};
use crate::crd::ScalingEndpoint;
use crate::digest;
use crate::error::{Error, Result};
use crate::layout::Names;
use crate::problem::{Problem, reason};

/// Random bytes in a key: 256 bits.
const KEY_BYTES: usize = 32;

/// A fresh random key, hex-encoded (64 characters, safe in a header and a file).
fn random_key() -> std::io::Result<String> {
    // The kernel's CSPRNG; the operator image runs on Linux.
    let mut bytes = [0u8; KEY_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(digest::hex(&bytes))
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Created,
    Exists,
}

/// Makes sure the key Secret of one of `se`'s vLLM servers exists. An existing Secret of that
/// name that this endpoint does not control is a `ChildConflict`: it is neither used nor touched.
pub async fn ensure(
    client: &Client,
    se: &ScalingEndpoint,
    names: &Names,
    role: VllmRole,
) -> Result<Result<KeyState, Problem>> {
    let name = role.key_secret_name(names);
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    if let Some(existing) = api.get_metadata_opt(&name).await? {
        let uid = se.metadata.uid.as_deref();
        let ours = existing
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid);
        return Ok(if ours {
            Ok(KeyState::Exists)
        } else {
            Err(Problem {
                reason: reason::CHILD_CONFLICT,
                message: format!(
                    "Secret {name:?} already exists and is not controlled by this ScalingEndpoint"
                ),
            })
        });
    }
    let mut owner = se
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("uid"))?;
    owner.block_owner_deletion = Some(true);
    let key = random_key().map_err(Error::RandomKey)?;
    let secret = vllm::key_secret(names, &owner, role, key);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Ok(KeyState::Created)),
        // Created meanwhile (another reconcile of a restarted operator): check it next time.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Ok(KeyState::Exists)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hex() {
        let a = random_key().unwrap();
        let b = random_key().unwrap();
        assert_eq!(a.len(), 2 * KEY_BYTES);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
