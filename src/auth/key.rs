//! Caller keys: the secrets adapters, hosts and operators present to the
//! authority as `authorization: Bearer <key>`.
//!
//! A key has the token format with its own prefix ([`CALLER_KEY_PREFIX`]):
//! secret scanners find leaked keys, the checksum rejects garbage before any
//! hashing or lookup, and a token sent as a key (or a key as a token) is told
//! apart and named in the error. The authority keeps only a key's SHA-256
//! [`KeyDigest`], in the callers file and in memory; a presented key is
//! hashed and its digest looked up, never compared as text.

use std::fmt;
use std::hash::{Hash, Hasher};

use rand::TryRngCore as _;
use sha2::{Digest as _, Sha256};

pub use crate::token::CALLER_KEY_PREFIX;
use crate::token::{decode_hex, digests_equal, leading_word, SecretFormat, Shape, TOKEN_PREFIX};

/// The format of caller keys.
const KEY_FORMAT: SecretFormat = SecretFormat {
    prefix: CALLER_KEY_PREFIX,
};

/// A freshly generated caller key. Not `Debug` or `Display`, so it cannot be
/// formatted into a log line by accident; it is printed once, by
/// `callers add` and on the first start.
pub struct CallerKey(String);

impl CallerKey {
    /// Draws 256 bits straight from the operating system's CSPRNG (keys are
    /// made rarely, so the system call per key costs nothing that matters).
    pub fn generate() -> Result<Self, rand::rand_core::OsError> {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut secret)?;
        Ok(CallerKey(KEY_FORMAT.encode(&secret)))
    }

    /// The key's text, to show exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The digest the callers file keeps.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.0)
    }
}

/// Why a presented string is not a caller key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    /// Wrong length.
    #[error("caller key has the wrong length")]
    Length,
    /// Wrong prefix.
    #[error("caller key does not start with the `{CALLER_KEY_PREFIX}` prefix")]
    Prefix,
    /// A character outside URL-safe base64.
    #[error("caller key holds a character outside the URL-safe base64 alphabet")]
    Alphabet,
    /// The checksum does not match: a typo or a truncated copy.
    #[error("caller key checksum does not match (a typo or an incomplete copy)")]
    Checksum,
    /// A credential token where the caller's own key belongs.
    #[error(
        "the authorization metadata holds a credential token (`{TOKEN_PREFIX}`), not a caller \
         key (`{CALLER_KEY_PREFIX}`): an agent's token goes in the request's `token` field, \
         and the caller authenticates with its own key"
    )]
    CredentialToken,
}

/// Checks a presented key's format and returns its digest; no lookup.
/// The error never contains the presented text.
pub fn parse(presented: &str) -> Result<KeyDigest, MalformedKey> {
    match KEY_FORMAT.check(presented) {
        Ok(()) => Ok(KeyDigest::of(presented)),
        Err(_) if crate::token::parse(presented).is_ok() => Err(MalformedKey::CredentialToken),
        Err(Shape::Length) => Err(MalformedKey::Length),
        Err(Shape::Prefix) => Err(MalformedKey::Prefix),
        Err(Shape::Alphabet) => Err(MalformedKey::Alphabet),
        Err(Shape::Checksum) => Err(MalformedKey::Checksum),
    }
}

/// The SHA-256 of a caller key. Equality runs in constant time; the hash
/// takes the first 8 bytes (SHA-256 output is uniform already).
#[derive(Clone, Copy)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Digests the key text.
    pub fn of(key: &str) -> Self {
        KeyDigest(Sha256::digest(key.as_bytes()).into())
    }

    /// A digest as the callers file writes it (64 lowercase hex digits).
    pub fn from_hex(text: &str) -> Option<Self> {
        decode_hex(text.as_bytes()).map(KeyDigest)
    }

    /// The digest as the callers file writes it.
    pub fn to_hex(&self) -> String {
        let (high, low) = self.0.split_at(16);
        let mut text = String::with_capacity(64);
        for half in [high, low] {
            let half: &[u8; 16] = half.try_into().expect("16 bytes");
            text.push_str(std::str::from_utf8(&crate::token::hex16(half)).expect("hex"));
        }
        text
    }
}

impl PartialEq for KeyDigest {
    fn eq(&self, other: &Self) -> bool {
        digests_equal(&self.0, &other.0)
    }
}

impl Eq for KeyDigest {}

impl Hash for KeyDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(leading_word(&self.0));
    }
}

impl fmt::Debug for KeyDigest {
    /// Never the digest itself: a digest of a key is as good as the key to
    /// whoever can write the callers file, and it has no place in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Token;

    #[test]
    fn generated_keys_parse_to_their_digest() {
        let key = CallerKey::generate().unwrap();
        assert!(key.expose().starts_with(CALLER_KEY_PREFIX));
        assert_eq!(key.expose().len(), crate::token::TOKEN_LEN);
        assert_eq!(parse(key.expose()).unwrap(), key.digest());
        assert_ne!(
            CallerKey::generate().unwrap().expose(),
            key.expose(),
            "fresh randomness per key"
        );
    }

    #[test]
    fn tokens_and_keys_are_told_apart_both_ways() {
        let token = Token::generate();
        assert_eq!(parse(token.expose()), Err(MalformedKey::CredentialToken));
        let key = CallerKey::generate().unwrap();
        assert_eq!(
            crate::token::parse(key.expose()),
            Err(crate::token::MalformedToken::CallerKey)
        );
        assert_eq!(
            crate::token::parse(&format!("Bearer {}", key.expose())),
            Err(crate::token::MalformedToken::CallerKey)
        );
    }

    #[test]
    fn typos_and_garbage_are_refused() {
        let key = CallerKey::generate().unwrap().expose().to_owned();
        let mut typo = key.clone().into_bytes();
        typo[20] = if typo[20] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            parse(std::str::from_utf8(&typo).unwrap()),
            Err(MalformedKey::Checksum)
        );
        assert_eq!(parse(&key[1..]), Err(MalformedKey::Length));
        assert_eq!(
            parse(&format!("xxxxx_{}", &key[6..])),
            Err(MalformedKey::Prefix)
        );
        assert_eq!(parse(""), Err(MalformedKey::Length));
    }

    #[test]
    fn digests_round_trip_as_hex_and_never_debug_print() {
        let key = CallerKey::generate().unwrap();
        let hex = key.digest().to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(KeyDigest::from_hex(&hex), Some(key.digest()));
        assert_eq!(KeyDigest::from_hex(&hex.to_uppercase()), None);
        assert_eq!(KeyDigest::from_hex(&hex[1..]), None);
        assert!(!format!("{:?}", key.digest()).contains(&hex[..8]));
    }
}
