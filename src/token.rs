//! Bearer tokens: generation, format checking and digests.
//!
//! A token is `mcpca_` + 43 URL-safe base64 characters (256 bits from a
//! CSPRNG) + 6 characters of CRC-32 over the secret part.
//! The fixed prefix lets secret scanners find leaked tokens; the checksum
//! rejects typos and garbage before any store lookup. The store never sees a
//! token, only its SHA-256 [`TokenDigest`].

use std::fmt;
use std::hash::{Hash, Hasher};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The fixed prefix of every token this service mints.
pub const TOKEN_PREFIX: &str = "mcpca_";
/// Characters of URL-safe base64 that encode the 32 secret bytes.
const SECRET_LEN: usize = 43;
/// Characters of URL-safe base64 that encode the 32-bit checksum.
const CHECKSUM_LEN: usize = 6;
/// The exact length of a well-formed token.
pub const TOKEN_LEN: usize = TOKEN_FORMAT.len();

/// A freshly generated bearer token. Deliberately not `Debug` or `Display`,
/// so it cannot be formatted into a log line by accident.
pub struct Token(String);

impl Token {
    /// Draws 256 bits from a CSPRNG and encodes them.
    ///
    /// `rand::rng()` is ChaCha12 seeded and periodically reseeded from the
    /// operating system: cryptographically secure, without a system call per
    /// token.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Token(TOKEN_FORMAT.encode(&secret))
    }

    /// The token text, to hand to the caller exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Consumes the token into its text, to hand to the caller exactly once.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The digest under which the store keeps this token.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.0)
    }
}

/// The format of tokens.
const TOKEN_FORMAT: SecretFormat = SecretFormat {
    prefix: TOKEN_PREFIX,
};

/// The fixed prefix of every caller key (see [`crate::auth::key`]): tokens
/// and keys share one format with different prefixes, so a secret scanner
/// finds both and each can be told from the other when sent in the wrong
/// place.
pub const CALLER_KEY_PREFIX: &str = "mcpck_";

/// How an HTTP `Authorization` value starts; a token pasted with it is the
/// most common wrong input.
const BEARER_PREFIX: &str = "Bearer ";

/// The shape shared by tokens and caller keys: a fixed prefix, 43 URL-safe
/// base64 characters carrying 256 secret bits, and 6 characters of CRC-32
/// over them. Written once for both so they cannot drift apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecretFormat {
    /// The fixed prefix.
    pub(crate) prefix: &'static str,
}

/// Why a string does not have a [`SecretFormat`]'s shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Wrong length.
    Length,
    /// Wrong prefix.
    Prefix,
    /// A character outside URL-safe base64.
    Alphabet,
    /// The checksum does not match.
    Checksum,
}

impl SecretFormat {
    /// The exact length of a well-formed secret.
    pub(crate) const fn len(&self) -> usize {
        self.prefix.len() + SECRET_LEN + CHECKSUM_LEN
    }

    /// The text of the secret `bytes`.
    pub(crate) fn encode(&self, bytes: &[u8; 32]) -> String {
        let mut text = String::with_capacity(self.len());
        text.push_str(self.prefix);
        URL_SAFE_NO_PAD.encode_string(bytes, &mut text);
        let checksum = crc32fast::hash(&text.as_bytes()[self.prefix.len()..]);
        URL_SAFE_NO_PAD.encode_string(checksum.to_be_bytes(), &mut text);
        debug_assert_eq!(text.len(), self.len());
        text
    }

    /// Checks length, prefix, alphabet and checksum, in that order, without
    /// any lookup. Never looks at more than the bytes it is given.
    pub(crate) fn check(&self, presented: &str) -> Result<(), Shape> {
        let bytes = presented.as_bytes();
        if bytes.len() != self.len() {
            return Err(Shape::Length);
        }
        if !bytes.starts_with(self.prefix.as_bytes()) {
            return Err(Shape::Prefix);
        }
        let body = &bytes[self.prefix.len()..];
        // OR of all values: has the marker's bits set iff some byte is foreign.
        let invalid = body
            .iter()
            .fold(0u8, |acc, &b| acc | (BASE64URL_VALUES[b as usize] & 0xC0));
        if invalid != 0 {
            return Err(Shape::Alphabet);
        }
        let (secret, checksum_text) = body.split_at(SECRET_LEN);
        // 43 characters carry 258 bits: the 256 secret ones, then 2 that
        // must be zero; 6 characters carry 36 bits: the 32-bit checksum,
        // then 4 that must be zero. So exactly one spelling of each secret
        // is accepted (found by fuzzing: the 2 bits went unchecked).
        let secret_padding = BASE64URL_VALUES[secret[SECRET_LEN - 1] as usize] & 0x3;
        let bits = checksum_text.iter().fold(0u64, |acc, &b| {
            (acc << 6) | u64::from(BASE64URL_VALUES[b as usize])
        });
        if secret_padding != 0 || bits & 0xF != 0 || (bits >> 4) as u32 != crc32fast::hash(secret) {
            return Err(Shape::Checksum);
        }
        Ok(())
    }
}

/// Why a presented string is not a token of this service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedToken {
    /// The string does not have the exact token length.
    #[error("token has the wrong length")]
    Length,
    /// The string does not start with the token prefix.
    #[error("token does not start with the `{TOKEN_PREFIX}` prefix")]
    Prefix,
    /// The string holds a character outside URL-safe base64.
    #[error("token holds a character outside the URL-safe base64 alphabet")]
    Alphabet,
    /// The checksum does not match the secret: a typo or a forged token.
    #[error("token checksum does not match")]
    Checksum,
    /// A token pasted with the `Bearer ` of an Authorization header.
    #[error(
        "token starts with `Bearer `: send the token alone, exactly as Mint returned it, \
         without the prefix of an Authorization header"
    )]
    BearerPrefix,
    /// A caller key sent where a token belongs.
    #[error(
        "this is a caller key (`{CALLER_KEY_PREFIX}`), not a credential token (`{TOKEN_PREFIX}`): \
         a caller authenticates with its key in the `authorization` metadata, and \
         Resolve's `token` field takes the agent's token"
    )]
    CallerKey,
}

/// Marks a byte outside URL-safe base64 in [`BASE64URL_VALUES`].
const NOT_BASE64URL: u8 = 0xFF;

/// The 6-bit value of each URL-safe base64 character, [`NOT_BASE64URL`] for
/// every other byte: one table lookup per character on the Resolve path.
const BASE64URL_VALUES: [u8; 256] = {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut table = [NOT_BASE64URL; 256];
    let mut i = 0;
    while i < alphabet.len() {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Checks the token's format and returns its digest, without any store access.
///
/// The error never contains the presented text.
pub fn parse(presented: &str) -> Result<TokenDigest, MalformedToken> {
    match TOKEN_FORMAT.check(presented) {
        Ok(()) => Ok(TokenDigest::of(presented)),
        Err(shape) => Err(misplaced(presented).unwrap_or(match shape {
            Shape::Length => MalformedToken::Length,
            Shape::Prefix => MalformedToken::Prefix,
            Shape::Alphabet => MalformedToken::Alphabet,
            Shape::Checksum => MalformedToken::Checksum,
        })),
    }
}

/// A well-known wrong input, named so the caller learns what to fix:
/// a token behind `Bearer `, or a caller key. Looked at only on failure.
fn misplaced(presented: &str) -> Option<MalformedToken> {
    let rest = presented.strip_prefix(BEARER_PREFIX);
    if rest.is_some_and(|token| TOKEN_FORMAT.check(token.trim()).is_ok()) {
        return Some(MalformedToken::BearerPrefix);
    }
    let candidate = rest.unwrap_or(presented).trim();
    let key = SecretFormat {
        prefix: CALLER_KEY_PREFIX,
    };
    key.check(candidate)
        .is_ok()
        .then_some(MalformedToken::CallerKey)
}

/// The SHA-256 of a token: what the store keeps instead of the token.
///
/// Equality runs in constant time, so a lookup leaks nothing about how much of
/// a stored digest a guess matched. Hashing takes the first 8 bytes as is:
/// SHA-256 output is already uniform, and only server-generated tokens are ever
/// inserted, so a keyed hash would add cost and no safety.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Digests the token text.
    pub fn of(token: &str) -> Self {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A digest read back from the store's journal, which holds only
    /// digests, never tokens.
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        TokenDigest(bytes)
    }
}

impl PartialEq for TokenDigest {
    fn eq(&self, other: &Self) -> bool {
        digests_equal(&self.0, &other.0)
    }
}

impl Eq for TokenDigest {}

impl Hash for TokenDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(leading_word(&self.0));
    }
}

/// Whether two SHA-256 digests (of tokens or of caller keys) are equal, in
/// constant time: the four 64-bit words are XORed and ORed together without
/// a branch, and only the combined difference is compared, so a lookup
/// leaks nothing about how much of a stored digest a guess matched.
pub(crate) fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a
        .chunks_exact(8)
        .zip(b.chunks_exact(8))
        .fold(0u64, |acc, (a, b)| {
            let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().expect("8 bytes"));
            acc | (word(a) ^ word(b))
        });
    difference.ct_eq(&0).into()
}

/// The first 8 bytes of a digest or random id, as the hash its tables use:
/// those bytes are uniform already, so no hash function is needed.
pub(crate) fn leading_word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// `N` bytes from exactly `2N` lowercase hex digits (the one spelling that
/// credential ids and digests in the callers file accept).
pub(crate) fn decode_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(bytes)
}

impl fmt::Debug for TokenDigest {
    /// Shows a short prefix only: enough to tell digests apart in a test
    /// failure, too little to matter if it ever reached a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TokenDigest({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// The non-secret handle of a credential: 128 random bits, shown as
/// `cred_` + 32 hex digits. Safe for logs, metrics and administration.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialId([u8; 16]);

impl CredentialId {
    /// A fresh random handle.
    pub fn generate() -> Self {
        CredentialId(rand::random())
    }

    /// A fresh handle whose last byte is `route` and whose other 120 bits
    /// are random: the store keeps the credential in the shard that byte
    /// names, so a lookup by id goes straight to it.
    pub fn generate_routed(route: u8) -> Self {
        let mut bytes: [u8; 16] = rand::random();
        bytes[15] = route;
        CredentialId(bytes)
    }

    /// The byte [`CredentialId::generate_routed`] was given.
    pub fn route(&self) -> u8 {
        self.0[15]
    }

    /// The handle's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A handle read back from the store's journal.
    pub(crate) fn from_bytes(bytes: [u8; 16]) -> Self {
        CredentialId(bytes)
    }

    /// Reads a handle in its display form (`cred_` + 32 lowercase hex).
    pub fn parse(text: &str) -> Option<Self> {
        decode_hex(text.strip_prefix("cred_")?.as_bytes()).map(CredentialId)
    }
}

impl CredentialId {
    /// The display form (`cred_` + 32 lowercase hex) on the stack: every
    /// Resolve answer and log line carries it, and going through `fmt` to
    /// build it cost more than the store lookup.
    pub fn text(&self) -> CredentialIdText {
        let mut text = [0u8; CREDENTIAL_ID_TEXT_LEN];
        text[..5].copy_from_slice(b"cred_");
        text[5..].copy_from_slice(&hex16(&self.0));
        CredentialIdText(text)
    }
}

/// The length of a credential id's display form.
const CREDENTIAL_ID_TEXT_LEN: usize = 5 + 32;

/// A credential id's display form, from [`CredentialId::text`]; always
/// ASCII.
#[derive(Clone, Copy)]
pub struct CredentialIdText([u8; CREDENTIAL_ID_TEXT_LEN]);

impl CredentialIdText {
    /// The text. Only ASCII is ever written into it, so the check cannot
    /// fail; were it to, an empty string is safer than a panic.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for CredentialId {
    /// Written in one call from the stack form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// 16 bytes as 32 lowercase hex digits, without the formatting machinery:
/// credential ids and generated request ids are written on every call.
pub(crate) fn hex16(bytes: &[u8; 16]) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, byte) in bytes.iter().enumerate() {
        text[2 * i] = HEX[usize::from(byte >> 4)];
        text[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    text
}

impl fmt::Debug for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_digest_consistently() {
        let token = Token::generate();
        assert_eq!(token.expose().len(), TOKEN_LEN);
        assert!(token.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(parse(token.expose()).unwrap(), token.digest());
    }

    #[test]
    fn tokens_are_distinct() {
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn every_single_character_typo_is_rejected() {
        let token = Token::generate().into_string();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for position in TOKEN_PREFIX.len()..token.len() {
            for &replacement in alphabet {
                let mut bytes = token.clone().into_bytes();
                if bytes[position] == replacement {
                    continue;
                }
                bytes[position] = replacement;
                let typo = String::from_utf8(bytes).unwrap();
                assert_eq!(
                    parse(&typo),
                    Err(MalformedToken::Checksum),
                    "typo at {position} accepted"
                );
            }
        }
    }

    /// Catches: a second spelling of a secret accepted, one whose last
    /// secret character sets the 2 bits past the 256 (its checksum, over
    /// the text, still matches); only the canonical spelling was minted.
    #[test]
    fn a_secret_with_stray_padding_bits_is_refused() {
        let token = Token::generate().into_string();
        let last = TOKEN_PREFIX.len() + SECRET_LEN - 1;
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for (value, &c) in alphabet.iter().enumerate() {
            let mut text = format!("{}{}", &token[..last], c as char);
            let checksum = crc32fast::hash(&text.as_bytes()[TOKEN_PREFIX.len()..]);
            URL_SAFE_NO_PAD.encode_string(checksum.to_be_bytes(), &mut text);
            let expected = if value & 0x3 == 0 {
                Ok(TokenDigest::of(&text))
            } else {
                Err(MalformedToken::Checksum)
            };
            assert_eq!(
                parse(&text),
                expected,
                "last secret character {}",
                c as char
            );
        }
    }

    #[test]
    fn garbage_is_classified() {
        let token = Token::generate().into_string();
        assert_eq!(parse(""), Err(MalformedToken::Length));
        assert_eq!(parse(&token[1..]), Err(MalformedToken::Length));
        assert_eq!(
            parse(&format!("xxxxx_{}", &token[6..])),
            Err(MalformedToken::Prefix)
        );
        let mut bad = token.clone().into_bytes();
        bad[10] = b'+';
        assert_eq!(
            parse(&String::from_utf8(bad).unwrap()),
            Err(MalformedToken::Alphabet)
        );
        let multibyte = format!("{}é", &token[..TOKEN_LEN - 2]);
        assert_eq!(parse(&multibyte), Err(MalformedToken::Alphabet));
    }

    #[test]
    fn a_token_behind_bearer_is_named_as_such() {
        let token = Token::generate().into_string();
        assert_eq!(
            parse(&format!("Bearer {token}")),
            Err(MalformedToken::BearerPrefix)
        );
        assert!(MalformedToken::BearerPrefix
            .to_string()
            .contains("without the prefix"));
        // Garbage behind `Bearer ` is just garbage.
        assert_eq!(
            parse(&format!("Bearer {}", &token[1..])),
            Err(MalformedToken::Length)
        );
    }

    #[test]
    fn errors_and_debug_never_show_the_token() {
        let token = Token::generate().into_string();
        let digest = parse(&token).unwrap();
        assert!(!format!("{digest:?}").contains(&token[6..]));
        let mut bad = token.clone();
        bad.push('x');
        let error = parse(&bad).unwrap_err().to_string();
        assert!(!error.contains(&token[6..]));
    }

    #[test]
    fn credential_ids_have_the_documented_shape_and_parse_back() {
        let id = CredentialId::generate();
        let text = id.to_string();
        assert_eq!(text.len(), 5 + 32);
        assert!(text.starts_with("cred_"));
        assert!(text[5..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(CredentialId::parse(&text), Some(id));
        assert_eq!(CredentialId::parse(&text.to_uppercase()), None);
        assert_eq!(CredentialId::parse(&text[..36]), None);
        assert_eq!(CredentialId::parse(&text.replace("cred_", "cred-")), None);
        assert_eq!(CredentialId::parse(&format!("{}g", &text[..36])), None);
    }
}
