//! The Redis backend's key names, built on the Rust side and passed to the
//! functions of `library.lua` as their KEYS, which follows the same layout.
//!
//! No key name holds a secret or a raw id: a credential is named by its
//! token's digest, threads, callers and instances by a digest of their ids.
//! The keys Resolve reads (the credential and its bucket's RevokeAll
//! generations) share a hash tag naming one of [`BUCKETS`] buckets, so the
//! whole check is one function on one Redis Cluster slot. The tag is hex
//! derived from the digest, never an id (a `}` in an id would move it).

use sha2::{Digest as _, Sha256};

use crate::token::{CredentialId, TokenDigest};

/// How many buckets the credentials are spread over. Each bucket holds a
/// copy of the RevokeAll generations, which RevokeAll writes all of: a
/// constant cost, whatever the number of credentials.
pub(super) const BUCKETS: u8 = 64;

/// The master copy of the generations (and the count keys' names).
pub(super) const MASTER_GENERATIONS: &str = "ca:g";

/// The bucket of a token digest: its first byte's top six bits, as
/// `bucket_of` in `library.lua` computes it from the digest's hex.
pub(super) fn bucket(digest: &TokenDigest) -> u8 {
    digest.as_bytes()[0] >> 2
}

/// The key of the credential whose token has `digest`.
pub(super) fn credential(digest: &TokenDigest) -> String {
    format!(
        "ca:{{b{:02x}}}:c:{}",
        bucket(digest),
        hex(digest.as_bytes())
    )
}

/// The generations of `bucket`.
pub(super) fn generations(bucket: u8) -> String {
    format!("ca:{{b{bucket:02x}}}:g")
}

/// The key that maps a credential id to its digest, in the bucket the id
/// carries in its route byte.
pub(super) fn credential_id(id: &CredentialId) -> String {
    format!("ca:{{b{:02x}}}:i:{id}", id.route() % BUCKETS)
}

/// The thread's listed credentials.
pub(super) fn thread(thread_id: &str) -> String {
    format!("ca:t:{}", name_digest(thread_id))
}

/// The thread's newest death.
pub(super) fn thread_tomb(thread_id: &str) -> String {
    format!("ca:td:{}", name_digest(thread_id))
}

/// The callers that claim an instance.
pub(super) fn instance_claims(instance_id: &str) -> String {
    format!("ca:ic:{}", name_digest(instance_id))
}

/// A caller-given id as 32 hex digits of its SHA-256: fixed length, no
/// character that Redis or a hash tag would read specially.
pub(super) fn name_digest(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    hex(&first)
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: a credential key and its generations in different hash
    /// tags (Resolve would be cross-slot on a Cluster), or a tag computed
    /// from anything but the digest.
    #[test]
    fn a_credential_and_its_generations_share_a_tag() {
        let digest = TokenDigest::of("ca1_example-token");
        let key = credential(&digest);
        let tag = &key[key.find('{').unwrap()..=key.find('}').unwrap()];
        assert!(generations(bucket(&digest)).contains(tag));
        assert!(!key.contains("example"), "no token text in a key name");
    }

    /// Catches: a raw id in a key name (a `}` would move the hash tag).
    #[test]
    fn ids_are_digested_in_key_names() {
        let key = thread("thr}{evil");
        assert!(!key.contains('}') && !key.contains('{') && !key.contains("evil"));
        assert_eq!(key.len(), "ca:t:".len() + 32);
    }
}
