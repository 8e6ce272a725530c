//! The callers file: who may call the authority, with which roles, keys and
//! client-certificate names.
//!
//! It is TOML an operator can edit by hand and `callers add` edits too:
//!
//! ```toml
//! [[caller]]
//! name = "claude-adapter"
//! roles = ["mint"]                            # mint | resolve | admin
//! uri_sans = ["spiffe://example.org/claude"]  # optional (mTLS)
//! dns_sans = ["claude-adapter.internal"]      # optional (mTLS)
//! [[caller.key]]
//! id = "key-3f9a1c2e"                         # non-secret, shown in logs
//! sha256 = "<64 lowercase hex>"
//! ```
//!
//! Only SHA-256 digests of keys are stored. [`parse`] checks everything a
//! running server relies on, and no error message ever holds a digest (runs
//! of 16 or more hex digits are redacted from every message), only key ids.
//! Edits go through `toml_edit`, so comments and layout survive; the result
//! is checked with [`parse`] and replaces the file atomically.
//!
//! Whoever can write the file, or replace it in its directory, decides who
//! may call, so [`load`] (the server's start and every SIGHUP) refuses a
//! file anyone but this user or root could have written (the rules are on
//! [`load`]; why symlinks are followed is on the private `read_trusted`).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read as _};
use std::ops::Range;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use toml::Spanned;

use super::key::KeyDigest;
use super::quota::QuotaSpec;
use crate::state_dir::euid;
use crate::token::{CALLER_KEY_PREFIX, TOKEN_PREFIX};

/// What a caller may do; the server decides which calls each role allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Mint credentials (provider adapters).
    Mint,
    /// Resolve tokens to their credential (the MCP host).
    Resolve,
    /// Administer credentials (operators).
    Admin,
}

/// The spellings are fixed here, in one place, for the file, the command
/// line and the messages alike.
impl Role {
    /// Every role, for help texts and exhaustive tests.
    pub const ALL: [Role; 3] = [Role::Mint, Role::Resolve, Role::Admin];

    /// The role as the file and the command line spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mint => "mint",
            Role::Resolve => "resolve",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    /// The file's spelling, so tables and messages match what is written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of [`Role::ALL`]; says which ones exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`: the roles are mint, resolve and admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    /// Names the word and the roles that exist, for clap and the file.
    type Err = UnknownRole;

    /// The file's spelling exactly (lowercase), so `--roles` and the file
    /// accept the same words.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| UnknownRole(scrub(text.to_owned())))
    }
}

/// A checked callers file: what the integrator's caller set is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallersFile {
    /// The callers, in file order; names, key ids, digests and SANs are
    /// unique across the file.
    pub callers: Vec<CallerEntry>,
    /// The `[defaults]` quotas, for callers that set none of their own.
    pub defaults: QuotaSpec,
}

/// One caller. It has at least one key or one SAN, so it can authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerEntry {
    /// Unique name, 1-64 of `[A-Za-z0-9_.-]`: shown in logs and audit lines.
    pub name: String,
    /// What it may do: non-empty, no duplicates.
    pub roles: Vec<Role>,
    /// Its keys; several during a rotation.
    pub keys: Vec<KeyEntry>,
    /// Client-certificate URI SANs that identify it, as written.
    pub uri_sans: Vec<String>,
    /// Client-certificate DNS SANs that identify it, lowercased (DNS names
    /// compare without case).
    pub dns_sans: Vec<String>,
    /// Its own quotas, as written; unset fields take the file's defaults.
    pub quota: QuotaSpec,
}

impl CallersFile {
    /// The quotas `caller` gets: its own, then the file's `[defaults]`;
    /// the built-in defaults fill what both leave unset.
    pub fn quota_of(&self, caller: &CallerEntry) -> QuotaSpec {
        caller.quota.or(self.defaults)
    }
}

/// One key of a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// Non-secret id, 1-64 of `[A-Za-z0-9_.-]`, unique across the file: what
    /// logs and audit lines name instead of the key.
    pub id: String,
    /// The SHA-256 of the key.
    pub digest: KeyDigest,
}

/// Why a callers file could not be read, parsed or edited. Messages name the
/// file, line and column where known, and the caller; never a digest.
#[derive(Debug, thiserror::Error)]
pub enum CallersFileError {
    /// The text is not a valid callers file.
    #[error("callers file{}: {message}", location(.path.as_deref(), *.at))]
    Invalid {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// Line and column (1-based), when known.
        at: Option<(usize, usize)>,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An edit was refused; the file was not changed.
    #[error("callers file {}: {message}; the file was not changed", .path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why, and what to do instead.
        message: String,
    },
    /// Someone other than this user or root could have written the file
    /// (or replaced it in its directory), so it cannot say who may call.
    #[error("refusing callers file {}: {problem}; {fix}", .path.display())]
    Insecure {
        /// The file, as it was named.
        path: PathBuf,
        /// Who could write what, naming the real file or directory.
        problem: String,
        /// The command that fixes it.
        fix: String,
    },
    /// Reading or writing failed.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. "read callers file".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

/// ` PATH, line L, column C`, as much as is known.
fn location(path: Option<&Path>, at: Option<(usize, usize)>) -> String {
    let mut text = String::new();
    if let Some(path) = path {
        text.push_str(&format!(" {}", path.display()));
    }
    if let Some((line, column)) = at {
        text.push_str(&format!(
            "{} line {line}, column {column}",
            if path.is_some() { "," } else { "" }
        ));
    }
    text
}

/// Replaces every run of 16 or more hex digits with `<redacted>`, so no
/// message can carry a digest (or a large part of one), whatever field the
/// operator pasted it into.
fn scrub(message: String) -> String {
    let message = redact_secrets(&message);
    let (mut out, mut rest) = (String::with_capacity(message.len()), message.as_str());
    while let Some(start) = rest.find(|c: char| c.is_ascii_hexdigit()) {
        let run = rest[start..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len() - start);
        out.push_str(&rest[..start]);
        out.push_str(if run >= 16 {
            "<redacted>"
        } else {
            &rest[start..start + run]
        });
        rest = &rest[start + run..];
    }
    out.push_str(rest);
    out
}

/// `text` with every run that starts like a caller key or a token (their
/// prefix and what follows of the URL-safe base64 alphabet) replaced: an
/// operator who pasted a key where a name or key id belongs must not find
/// it echoed in the refusal.
fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((start, prefix)) = [CALLER_KEY_PREFIX, TOKEN_PREFIX]
        .iter()
        .filter_map(|prefix| rest.find(prefix).map(|at| (at, prefix)))
        .min()
    {
        out.push_str(&rest[..start]);
        out.push_str("<redacted>");
        let after = &rest[start + prefix.len()..];
        let secret = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(after.len());
        rest = &after[secret..];
    }
    out.push_str(rest);
    out
}

/// Whether a name or key id looks like a secret pasted in the wrong place.
fn looks_secret(text: &str) -> bool {
    text.starts_with(CALLER_KEY_PREFIX) || text.starts_with(TOKEN_PREFIX)
}

/// The file as serde sees it; checked into [`CallersFile`] by [`parse`].
/// Fields are optional where a missing one deserves a message that names
/// the caller.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// `[[caller]]` tables, spanned so a refusal can give the line; none is
    /// a valid (if useless) file, so a fresh one can start empty.
    #[serde(default)]
    caller: Vec<Spanned<RawCaller>>,
    /// Quotas for every caller that sets none of its own.
    defaults: Option<Spanned<quota::RawQuota>>,
}

/// One `[[caller]]` as written. Unknown fields are refused, so a typo such
/// as `role = ...` is an error instead of a caller with no roles. Values
/// are strings here, checked by [`parse`], so a bad one is named with its
/// caller rather than by serde's generic message.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    /// Optional here so its absence gets a message of its own.
    name: Option<Spanned<String>>,
    /// Strings, parsed into [`Role`]s by [`parse`] to name the caller.
    #[serde(default)]
    roles: Vec<Spanned<String>>,
    /// Checked by [`is_uri`] and for duplicates across the file.
    #[serde(default)]
    uri_sans: Vec<Spanned<String>>,
    /// Checked by [`is_dns_name`], then lowercased.
    #[serde(default)]
    dns_sans: Vec<Spanned<String>>,
    /// `[[caller.key]]` tables or an inline array; optional, since a caller
    /// may authenticate by certificate alone.
    #[serde(default)]
    key: Vec<Spanned<RawKey>>,
    /// Overrides `[defaults]`; checked by [`quota::check`].
    max_live_credentials: Option<Spanned<i64>>,
    /// Overrides `[defaults]`; checked by [`quota::check`].
    mint_rate: Option<Spanned<quota::RawRate>>,
}

/// One `[[caller.key]]` as written; both fields optional so a missing one
/// is named with its caller.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    /// The key id, checked by [`is_ident`] and for uniqueness.
    id: Option<Spanned<String>>,
    /// The digest, parsed by [`KeyDigest::from_hex`].
    sha256: Option<Spanned<String>>,
}

/// Just the callers' names, read leniently to say which caller a schema
/// error (an unknown field, a wrong type) is in.
#[derive(serde::Deserialize)]
struct Outline {
    /// The callers' tables, spanned to find the one holding an error.
    #[serde(default)]
    caller: Vec<Spanned<OutlineCaller>>,
}

/// A caller reduced to its name; every other field is ignored, which is
/// what lets this reading succeed where the strict one failed.
#[derive(serde::Deserialize)]
struct OutlineCaller {
    /// Any type, so a name that is itself the schema error still parses.
    name: Option<toml::Value>,
}

/// The name of the caller whose tables hold byte `offset`: the last
/// `[[caller]]` that starts before it (its `[[caller.key]]` tables follow
/// it). None for a syntax error, which no lenient reading gets past.
fn caller_at(text: &str, offset: usize) -> Option<String> {
    let outline: Outline = toml::from_str(text).ok()?;
    let caller = outline
        .caller
        .iter()
        .rev()
        .find(|c| c.span().start <= offset)?;
    caller.get_ref().name.as_ref()?.as_str().map(str::to_owned)
}

/// Line and column (1-based, in characters) of byte `offset` of `text`;
/// never panics, whatever the offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |line| line.chars().count());
    (before.matches('\n').count() + 1, column + 1)
}

/// Builds [`CallersFileError::Invalid`] at a byte offset of `text`.
fn invalid(text: &str, span: Option<Range<usize>>, message: String) -> CallersFileError {
    let at = span.map(|span| line_column(text, span.start));
    CallersFileError::Invalid {
        path: None,
        at,
        message: scrub(message),
    }
}

/// 1-64 of `[A-Za-z0-9_.-]`: names and key ids end up in log lines and
/// audit records, so they are kept plain.
fn is_ident(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A plausible host name: 1-253 of `[A-Za-z0-9.-]`, labels of 1-63.
fn is_dns_name(text: &str) -> bool {
    (1..=253).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && text.split('.').all(|label| (1..=63).contains(&label.len()))
}

/// A plausible URI: a scheme before a `:`, no whitespace or control
/// characters.
fn is_uri(text: &str) -> bool {
    text.find(':').is_some_and(|colon| colon > 0)
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// [`is_ident`]'s rule in words, one text for every message that states it,
/// so the messages cannot drift from the check.
const IDENT_RULE: &str = "1-64 characters of A-Z a-z 0-9 _ . -";

/// Parses and checks a callers file. Pure: no I/O, any input is safe.
pub fn parse(text: &str) -> Result<CallersFile, CallersFileError> {
    // `message()`, not `Display`: the latter quotes the offending line,
    // which may hold a digest.
    let raw: RawFile = toml::from_str(text).map_err(|error| {
        let message = error.message().trim_end();
        let message = match error.span().and_then(|span| caller_at(text, span.start)) {
            Some(name) => format!("caller `{name}`: {message}"),
            None => message.to_owned(),
        };
        invalid(text, error.span(), message)
    })?;
    macro_rules! refuse {
        ($span:expr, $name:expr, $($message:tt)+) => {
            return Err(invalid(text, Some($span), format!("caller `{}`: {}", $name, format_args!($($message)+))))
        };
    }
    // Offsets, turned into lines only for a message: counting lines for
    // every entry would make parsing quadratic in the file's size.
    let line_of = |offset: usize| line_column(text, offset).0;
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut key_ids: HashMap<String, (String, usize)> = HashMap::new();
    let mut digests: HashMap<KeyDigest, (String, String)> = HashMap::new();
    let mut sans: HashMap<String, String> = HashMap::new();
    let mut callers = Vec::with_capacity(raw.caller.len());
    for raw_caller in raw.caller {
        let caller_span = raw_caller.span();
        let raw_caller = raw_caller.into_inner();
        let Some(name) = raw_caller.name else {
            let message = "a [[caller]] has no `name`: add name = \"...\"";
            return Err(invalid(text, Some(caller_span), message.into()));
        };
        let (name_span, name) = (name.span(), name.into_inner());
        if looks_secret(&name) {
            let message = "a caller's name looks like a caller key or a token: names are \
                           shown in every log line; put the key's digest in [[caller.key]] \
                           (`callers add` does) and give the caller a plain name";
            return Err(invalid(text, Some(name_span), message.into()));
        }
        if !is_ident(&name) {
            refuse!(name_span, name, "the name must be {IDENT_RULE}");
        }
        if let Some(first) = names.insert(name.clone(), name_span.start) {
            let line = line_of(first);
            refuse!(
                name_span,
                name,
                "the name is already used at line {line}; names must be unique"
            );
        }
        if raw_caller.roles.is_empty() {
            refuse!(
                name_span,
                name,
                "no roles: add roles = [\"mint\"] (mint, resolve or admin)"
            );
        }
        let mut roles = Vec::with_capacity(raw_caller.roles.len());
        for role in raw_caller.roles {
            match role.get_ref().parse::<Role>() {
                Err(error) => refuse!(role.span(), name, "{error}"),
                Ok(parsed) if roles.contains(&parsed) => {
                    refuse!(
                        role.span(),
                        name,
                        "role `{parsed}` is listed twice; list it once"
                    )
                }
                Ok(parsed) => roles.push(parsed),
            }
        }
        let mut keys = Vec::with_capacity(raw_caller.key.len());
        for key in raw_caller.key {
            let key_span = key.span();
            let key = key.into_inner();
            let Some(id) = key.id else {
                refuse!(
                    key_span,
                    name,
                    "a [[caller.key]] has no `id`: add id = \"key-...\""
                );
            };
            let (id_span, id) = (id.span(), id.into_inner());
            if looks_secret(&id) {
                refuse!(
                    id_span,
                    name,
                    "a key id looks like a caller key or a token: key ids are shown in \
                     every log line; the key's digest goes in `sha256`, and `id` is a \
                     plain label such as key-3f9a1c2e"
                );
            }
            if !is_ident(&id) {
                refuse!(
                    id_span,
                    name,
                    "key id `{id}`: a key id must be {IDENT_RULE}"
                );
            }
            if let Some((other, line)) = key_ids.insert(id.clone(), (name.clone(), id_span.start)) {
                let line = line_of(line);
                refuse!(id_span, name, "key id `{id}` is already used by caller `{other}` at line {line}; key ids must be unique across the file");
            }
            let Some(sha256) = key.sha256 else {
                refuse!(
                    key_span,
                    name,
                    "key `{id}` has no `sha256`: add the key's digest"
                );
            };
            let Some(digest) = KeyDigest::from_hex(sha256.get_ref()) else {
                refuse!(
                    sha256.span(),
                    name,
                    "key `{id}`: sha256 must be 64 lowercase hex digits"
                );
            };
            if let Some((other, other_id)) = digests.insert(digest, (name.clone(), id.clone())) {
                refuse!(sha256.span(), name, "key `{id}` has the same sha256 as key `{other_id}` of caller `{other}`; a key belongs to one caller (make a new one with `callers add-key`)");
            }
            keys.push(KeyEntry { id, digest });
        }
        let (mut uri_sans, mut dns_sans) = (Vec::new(), Vec::new());
        let uris = raw_caller.uri_sans.into_iter().map(|san| (san, false));
        for (san, dns) in uris.chain(raw_caller.dns_sans.into_iter().map(|san| (san, true))) {
            let (span, san) = (san.span(), san.into_inner());
            if dns && !is_dns_name(&san) {
                refuse!(span, name, "DNS SAN `{san}` is not a host name (1-253 of A-Z a-z 0-9 . -, no empty labels)");
            }
            if !dns && !is_uri(&san) {
                refuse!(
                    span,
                    name,
                    "URI SAN `{san}` is not a URI (scheme:..., no spaces)"
                );
            }
            let (kind, value) = if dns {
                ("DNS", san.to_ascii_lowercase())
            } else {
                ("URI", san.clone())
            };
            if let Some(other) = sans.insert(format!("{kind} {value}"), name.clone()) {
                let whose = if other == name {
                    "this caller".to_owned()
                } else {
                    format!("caller `{other}`")
                };
                refuse!(span, name, "{kind} SAN `{san}`: {whose} already lists it; a certificate must identify exactly one caller");
            }
            if dns {
                dns_sans.push(value)
            } else {
                uri_sans.push(value)
            }
        }
        let quota = quota::check(raw_caller.max_live_credentials, raw_caller.mint_rate).map_err(
            |(span, message)| invalid(text, Some(span), format!("caller `{name}`: {message}")),
        )?;
        if keys.is_empty() && uri_sans.is_empty() && dns_sans.is_empty() {
            refuse!(name_span, name, "no key and no SAN, so it could never authenticate: add a [[caller.key]] (`callers add-key`) or uri_sans/dns_sans");
        }
        callers.push(CallerEntry {
            name,
            roles,
            keys,
            uri_sans,
            dns_sans,
            quota,
        });
    }
    let defaults = match raw.defaults {
        None => QuotaSpec::default(),
        Some(defaults) => {
            let defaults = defaults.into_inner();
            quota::check(defaults.max_live_credentials, defaults.mint_rate).map_err(
                |(span, message)| invalid(text, Some(span), format!("[defaults]: {message}")),
            )?
        }
    };
    Ok(CallersFile { callers, defaults })
}

/// Reads and parses the file at `path`; errors name the path.
///
/// Refuses, as [`CallersFileError::Insecure`], a file that anyone but this
/// user or root could have written: one that is not a regular file, is
/// owned by another uid, or is writable by group or others; or one whose
/// real directory is owned by another uid, or writable by group or others
/// without the sticky bit. Readable by others is fine (digests only).
/// Symlinks are followed, and the final file and its real directory are
/// what is checked.
pub fn load(path: &Path) -> Result<CallersFile, CallersFileError> {
    let real = fs::canonicalize(path).map_err(|source| CallersFileError::Io {
        action: "read callers file",
        path: path.to_owned(),
        source,
    })?;
    let dir = real.parent().unwrap_or(&real);
    let meta = fs::metadata(dir).map_err(|source| CallersFileError::Io {
        action: "inspect the directory of callers file",
        path: path.to_owned(),
        source,
    })?;
    if let Some(exposure) = dir_exposure(dir, meta.uid(), meta.mode(), euid()) {
        return Err(exposure.refuse(path));
    }
    let text = read_trusted(path, &real)?;
    parse(&text).map_err(|error| with_path(error, path))
}

/// Why a callers file, or the directory it is in, cannot be trusted, and
/// the command that fixes it. Shared by [`load`], which refuses, and
/// `callers`, which warns before writing into such a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exposure {
    /// Who could write what, naming the file or directory.
    pub(crate) problem: String,
    /// What to run.
    pub(crate) fix: String,
}

/// The same exposure is a refusal from [`load`] and a warning from
/// `callers`; only the former becomes an error.
impl Exposure {
    /// The refusal of the callers file `path` (as the operator named it).
    fn refuse(self, path: &Path) -> CallersFileError {
        CallersFileError::Insecure {
            path: path.to_owned(),
            problem: self.problem,
            fix: self.fix,
        }
    }
}

/// Whether the callers file itself can be trusted, from its type, owner
/// and mode (plain values, so tests can try any owner without root).
///
/// Refused: anything but a regular file (a FIFO or device is no
/// configuration); an owner other than `euid` or root (that user could
/// rewrite it at will; root-owned is the config-management case, and root
/// can do anything anyway); group or other write permission (they could
/// add a caller). Readable by others is fine: the file holds digests and
/// key ids, not keys.
fn file_exposure(real: &Path, regular: bool, uid: u32, mode: u32, euid: u32) -> Option<Exposure> {
    let shown = real.display();
    let (problem, fix) = if !regular {
        (
            format!("{shown} is not a regular file"),
            "point --callers at a regular file (a symlink to one is fine)".to_owned(),
        )
    } else if uid != euid && uid != 0 {
        (
            format!(
                "{shown} is owned by uid {uid}, neither this server's user (uid {euid}) nor \
                 root, so that user could rewrite who may call"
            ),
            format!("run `chown {euid} {shown}`, or pick another file"),
        )
    } else if mode & 0o022 != 0 {
        (
            format!(
                "{shown} has mode {:04o}, so group or others may write it and add a caller",
                mode & 0o7777
            ),
            format!("run `chmod go-w {shown}`"),
        )
    } else {
        return None;
    };
    Some(Exposure { problem, fix })
}

/// Whether the directory holding the callers file can be trusted: who may
/// write a directory may rename the file away and put their own in its
/// place, whatever the file's own mode.
///
/// Refused: an owner other than `euid` or root; group or other write
/// permission without the sticky bit. With the sticky bit (`/tmp`), others
/// may add entries but not rename or remove ours, and a file they plant is
/// theirs, which [`file_exposure`] refuses.
pub(crate) fn dir_exposure(dir: &Path, uid: u32, mode: u32, euid: u32) -> Option<Exposure> {
    let shown = dir.display();
    let (problem, fix) = if uid != euid && uid != 0 {
        (
            format!(
                "its directory {shown} is owned by uid {uid}, neither this server's user \
                 (uid {euid}) nor root, so that user could replace the file"
            ),
            format!("run `chown {euid} {shown}`, or move the file to a directory of this user"),
        )
    } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        (
            format!(
                "its directory {shown} has mode {:04o}, so group or others may replace the file",
                mode & 0o7777
            ),
            format!("run `chmod go-w {shown}`"),
        )
    } else {
        return None;
    };
    Some(Exposure { problem, fix })
}

/// The text of `real` (the callers file `path`, its links resolved), once
/// [`file_exposure`] finds nothing wrong with it; errors name `path`.
///
/// Symlinks are followed, deliberately: config management often installs
/// the callers file as a link into a store or a versioned directory, and
/// refusing links would push operators to copies that go stale. What is
/// checked is what decides the contents: the final file and the directory
/// it really sits in ([`load`] canonicalizes, then checks that directory
/// with [`dir_exposure`]). The directories holding the links are not
/// checked: they are often the deployment tool's (a mount point, a
/// profile), and a link repointed by whoever controls one can only reach a
/// file that passes the same checks, one that this user or root wrote and
/// nobody else can change: they could swap one such list for another, but
/// never add a caller of their own.
///
/// The checked file is the file read: `real` is opened without following a
/// last link (it has none, unless it was swapped since) and without
/// blocking (a FIFO would otherwise hang the reload), and the checks run
/// on the open descriptor.
fn read_trusted(path: &Path, real: &Path) -> Result<String, CallersFileError> {
    let io = |action| {
        move |source| CallersFileError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let euid = euid();
    let check = |meta: &fs::Metadata| match file_exposure(
        real,
        meta.is_file(),
        meta.uid(),
        meta.mode(),
        euid,
    ) {
        Some(exposure) => Err(exposure.refuse(path)),
        None => Ok(()),
    };
    // Checked before opening too: opening a device can have side effects.
    check(&fs::metadata(real).map_err(io("read callers file"))?)?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(real)
        .map_err(io("read callers file"))?;
    check(&file.metadata().map_err(io("inspect callers file"))?)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(io("read callers file"))?;
    Ok(text)
}

/// Names `path` in an error from [`parse`].
fn with_path(error: CallersFileError, path: &Path) -> CallersFileError {
    match error {
        CallersFileError::Invalid { at, message, .. } => CallersFileError::Invalid {
            path: Some(path.to_owned()),
            at,
            message,
        },
        other => other,
    }
}

/// A new non-secret key id: `key-` + 8 random hex digits. Random rather than
/// derived from the key, so an id in a log line says nothing about the key.
pub fn new_key_id() -> String {
    format!("key-{:08x}", rand::random::<u32>())
}

mod edit;
mod quota;
pub use edit::{add_caller, add_key, remove_key};

#[cfg(test)]
mod tests;
