//! Target `secret_parsing`: the token and caller-key formats.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::auth::key::{self, KeyDigest, MalformedKey};
use crate::token::{
    self, MalformedToken, SecretFormat, TokenDigest, CALLER_KEY_PREFIX, TOKEN_PREFIX,
};

/// Checks the input as text, and the secret its first 32 bytes make with
/// the rest applied as edits, against both formats: parsing never panics,
/// a string that parses spells its secret the one canonical way and yields
/// the digest of its own text, no string parses as both a token and a
/// caller key, and each names the other when sent in its place.
///
/// The second string exists because a random string almost never carries a
/// valid CRC-32: built from the input's bytes and then edited by it, the
/// fuzzer reaches valid secrets and near misses of every kind.
pub fn secret_parsing(data: &[u8]) {
    check_text(&String::from_utf8_lossy(data));
    let Some((secret, edits)) = data.split_first_chunk::<32>() else {
        return;
    };
    for prefix in [TOKEN_PREFIX, CALLER_KEY_PREFIX] {
        let mut text = SecretFormat { prefix }.encode(secret).into_bytes();
        // Each pair of bytes overwrites one position (or, past the end,
        // appends): typos, truncations, foreign and multibyte characters.
        for edit in edits.chunks_exact(2) {
            let at = usize::from(edit[0]);
            match text.get_mut(at) {
                Some(byte) => *byte = edit[1],
                None if edit[1] == 0 => text.truncate(at % (text.len() + 1)),
                None => text.push(edit[1]),
            }
        }
        let resealed = resealed(prefix, &text);
        for text in [text, resealed] {
            let text = String::from_utf8_lossy(&text);
            check_text(&text);
            check_text(&format!("Bearer {text}"));
            check_text(&format!(" {text}\n"));
        }
    }
}

/// `text` with its checksum recomputed over whatever its secret part now
/// holds, so edits inside the secret reach the checks after the checksum.
fn resealed(prefix: &str, text: &[u8]) -> Vec<u8> {
    let end = (prefix.len() + 43).min(text.len());
    let mut out = text[..end].to_vec();
    let checksum = crc32fast::hash(&text[prefix.len().min(end)..end]);
    out.extend_from_slice(URL_SAFE_NO_PAD.encode(checksum.to_be_bytes()).as_bytes());
    out
}

/// The properties of one presented string.
fn check_text(text: &str) {
    let as_token = token::parse(text);
    let as_key = key::parse(text);
    assert!(
        !(as_token.is_ok() && as_key.is_ok()),
        "a string parsed as both a token and a caller key"
    );
    if let Ok(digest) = as_token {
        assert_eq!(
            digest,
            TokenDigest::of(text),
            "token digest is not of its text"
        );
        assert_canonical(TOKEN_PREFIX, text);
        assert_eq!(
            as_key.unwrap_err(),
            MalformedKey::CredentialToken,
            "a token sent as a caller key is not named as a token"
        );
    }
    if let Ok(digest) = as_key {
        assert_eq!(digest, KeyDigest::of(text), "key digest is not of its text");
        assert_canonical(CALLER_KEY_PREFIX, text);
        assert_eq!(
            as_token.unwrap_err(),
            MalformedToken::CallerKey,
            "a caller key sent as a token is not named as a key"
        );
    }
}

/// A parsed secret decodes to 32 bytes that encode back to exactly `text`:
/// one spelling per secret, so one digest per secret.
fn assert_canonical(prefix: &'static str, text: &str) {
    let body = &text[prefix.len()..prefix.len() + 43];
    let secret: [u8; 32] = URL_SAFE_NO_PAD
        .decode(body)
        .expect("a parsed secret is base64")
        .try_into()
        .expect("a parsed secret holds 32 bytes");
    assert_eq!(
        SecretFormat { prefix }.encode(&secret),
        text,
        "a parsed secret is not the canonical spelling of its bytes"
    );
}
