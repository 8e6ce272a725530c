//! What the journal and the snapshots hold: the store's changes as records,
//! and the codec that writes and reads them.
//!
//! Hand-written rather than serde with a binary format: each record is a tag
//! byte and fixed-width little-endian fields with length-prefixed strings,
//! a dozen lines per kind, no new dependency, and decoding is total (every
//! byte string either decodes or is a [`DecodeError`], which the fuzz
//! target for the journal checks). Framing, checksums and torn writes are
//! the journal's business ([`super::super::journal`]); a record that fails
//! to decode here passed its CRC, so it is a bug or a newer format, and the
//! store refuses to start rather than guess.
//!
//! Only digests of tokens are written, never a token.

use std::sync::Arc;

use super::super::revocation::ScopeName;
use super::super::types::{DeadCredential, DeathReason, RevocationCause};
use crate::clock::Millis;
use crate::token::{CredentialId, TokenDigest};

/// Why a journal record does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal record does not decode: {0}")]
pub struct DecodeError(&'static str);

impl DecodeError {
    /// A record that decodes but cannot be applied.
    pub(in crate::store) fn new(what: &'static str) -> Self {
        DecodeError(what)
    }
}

/// A credential's record as the journal holds it: everything a restart
/// needs to put it back exactly. Its strings borrow the record's bytes, so
/// decoding one allocates nothing but its lists (and those only when not
/// empty); replay copies what a new record keeps.
#[derive(Debug, Clone)]
pub(in crate::store) struct StoredCredential<'a> {
    pub(in crate::store) digest: TokenDigest,
    pub(in crate::store) credential_id: CredentialId,
    pub(in crate::store) created_at: Millis,
    pub(in crate::store) last_used: Millis,
    pub(in crate::store) minted_epoch: u64,
    pub(in crate::store) idle_timeout: Millis,
    pub(in crate::store) max_lifetime: Millis,
    pub(in crate::store) absolute_lifetime: Millis,
    /// Whether its pair claims the provider instance (see
    /// [`super::super::revocation::Revocations::pair`]).
    pub(in crate::store) claims: bool,
    pub(in crate::store) thread_id: &'a str,
    pub(in crate::store) minted_by: &'a str,
    pub(in crate::store) instance_id: &'a str,
    pub(in crate::store) provider_kind: Option<&'a str>,
    pub(in crate::store) scopes: Vec<&'a str>,
    pub(in crate::store) labels: Vec<(&'a str, &'a str)>,
    /// The bytes of the fields above that make its class.
    pub(in crate::store) class_key: ClassKey<'a>,
}

/// The encoded fields that decide a credential's class (lifetimes, claims
/// flag, owner, instance, kind, scopes and labels), as two spans of its
/// record: records with equal keys have equal classes, so replay can reuse
/// a class it built without decoding, hashing and interning those fields
/// again. (Two encodings of one class would only cost a second lookup.)
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(in crate::store) struct ClassKey<'a> {
    /// Idle timeout, max lifetime, absolute lifetime and the claims flag.
    pub(in crate::store) lifetimes: &'a [u8],
    /// Owner, instance, kind, scopes and labels.
    pub(in crate::store) strings: &'a [u8],
}

impl std::fmt::Debug for ClassKey<'_> {
    /// Opaque: the fields it spans are printed beside it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClassKey")
    }
}

/// One journal or snapshot record.
#[derive(Debug, Clone)]
pub(in crate::store) enum Event<'a> {
    /// A Mint, and the earlier credentials of its thread it replaced. Also
    /// a live record in a snapshot (with nothing replaced).
    Minted {
        credential: StoredCredential<'a>,
        replaced: Vec<(CredentialId, DeathReason)>,
    },
    /// Latest uses since the previous checkpoint.
    Renewed { uses: Vec<(CredentialId, Millis)> },
    /// RevokeCredential at `at`, and why the record it removed died
    /// (`None`: memory held none).
    CredentialRevoked {
        credential_id: CredentialId,
        at: Millis,
        reason: Option<DeathReason>,
    },
    /// RevokeThread at `at` within `reach` (`None`: everyone's), and the
    /// records it removed with why each died.
    ThreadRevoked {
        thread_id: Box<str>,
        reach: Option<Box<str>>,
        at: Millis,
        removed: Vec<(CredentialId, DeathReason)>,
    },
    /// RevokeAll: the latest stamp of each scope it names.
    ScopesStamped {
        stamps: Vec<(ScopeName, u64, Millis)>,
    },
    /// Snapshot: a scope's remembered stamps, oldest first.
    ScopeHistory {
        name: ScopeName,
        claims: bool,
        history: Vec<(u64, Millis)>,
    },
    /// Snapshot: the revocation epoch.
    Epoch { epoch: u64 },
    /// A start at `at`, after replay: a clean stop's record before it no
    /// longer says the journal ends cleanly.
    Opened {
        #[allow(dead_code)] // for a reader of the journal; replay needs only the kind
        at: Millis,
    },
    /// A clean stop at `at`: every use before it is in the journal.
    Closed {
        #[allow(dead_code)] // for a reader of the journal; replay needs only the kind
        at: Millis,
    },
    /// The sweeper removed a dead credential at `at`, leaving a tombstone.
    Swept {
        credential_id: CredentialId,
        at: Millis,
        reason: DeathReason,
    },
    /// Snapshot: a dead credential's tombstone, recorded at `recorded_at`.
    Tombstone {
        digest: TokenDigest,
        recorded_at: Millis,
        dead: DeadCredential,
    },
    /// Snapshot: a thread's newest death for one owner.
    ThreadDeath {
        thread_id: Box<str>,
        created_at: Millis,
        recorded_at: Millis,
        dead: DeadCredential,
    },
}

/// A Minted record's tag: replay finds Mints by it without decoding them.
pub(super) const MINTED: u8 = 1;
const RENEWED: u8 = 2;
const CREDENTIAL_REVOKED: u8 = 3;
const THREAD_REVOKED: u8 = 4;
const SCOPES_STAMPED: u8 = 5;
const SCOPE_HISTORY: u8 = 6;
const EPOCH: u8 = 7;
const TOMBSTONE: u8 = 8;
const THREAD_DEATH: u8 = 9;
const SWEPT: u8 = 10;
const CLOSED: u8 = 11;
const OPENED: u8 = 12;

/// Appends little-endian fields to a record.
pub(in crate::store) struct Writer<'a>(pub(in crate::store) &'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.u32(v.len() as u32);
        self.bytes(v.as_bytes());
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.str(v);
            }
            None => self.u8(0),
        }
    }
    fn removed(&mut self, removed: &[(CredentialId, DeathReason)]) {
        self.u32(removed.len() as u32);
        for (id, reason) in removed {
            self.bytes(id.as_bytes());
            self.u8(reason_code(*reason));
        }
    }
    fn scope(&mut self, name: &ScopeName) {
        match name {
            ScopeName::Global => self.u8(0),
            ScopeName::Owner(owner) => {
                self.u8(1);
                self.str(owner);
            }
            ScopeName::Pair { owner, instance } => {
                self.u8(2);
                self.str(owner);
                self.str(instance);
            }
        }
    }
    fn dead(&mut self, dead: &DeadCredential) {
        self.u8(reason_code(dead.reason));
        self.bytes(dead.credential_id.as_bytes());
        self.str(&dead.thread_id);
        self.str(&dead.minted_by);
    }

    /// A credential's fields, borrowed from wherever they live, so Mint
    /// writes its record without building a [`StoredCredential`].
    #[allow(clippy::too_many_arguments)]
    pub(in crate::store) fn minted<'s>(
        &mut self,
        credential: CredentialFields<'s>,
        scopes: impl ExactSizeIterator<Item = &'s str>,
        labels: impl ExactSizeIterator<Item = (&'s str, &'s str)>,
        replaced: &[(CredentialId, DeathReason)],
    ) {
        self.u8(MINTED);
        self.bytes(credential.digest.as_bytes());
        self.bytes(credential.credential_id.as_bytes());
        self.u64(credential.created_at);
        self.u64(credential.last_used);
        self.u64(credential.minted_epoch);
        self.u64(credential.idle_timeout);
        self.u64(credential.max_lifetime);
        self.u64(credential.absolute_lifetime);
        self.u8(u8::from(credential.claims));
        self.str(credential.thread_id);
        self.str(credential.minted_by);
        self.str(credential.instance_id);
        self.opt_str(credential.provider_kind);
        self.u32(scopes.len() as u32);
        for scope in scopes {
            self.str(scope);
        }
        self.u32(labels.len() as u32);
        for (key, value) in labels {
            self.str(key);
            self.str(value);
        }
        self.removed(replaced);
    }

    /// Latest uses.
    pub(in crate::store) fn renewed(&mut self, uses: &[(CredentialId, Millis)]) {
        self.u8(RENEWED);
        self.u32(uses.len() as u32);
        for (id, at) in uses {
            self.bytes(id.as_bytes());
            self.u64(*at);
        }
    }

    /// A RevokeCredential.
    pub(in crate::store) fn credential_revoked(
        &mut self,
        id: &CredentialId,
        at: Millis,
        reason: Option<DeathReason>,
    ) {
        self.u8(CREDENTIAL_REVOKED);
        self.bytes(id.as_bytes());
        self.u64(at);
        self.u8(reason.map_or(NO_REASON, reason_code));
    }

    /// A RevokeThread.
    pub(in crate::store) fn thread_revoked(
        &mut self,
        thread_id: &str,
        reach: Option<&str>,
        at: Millis,
        removed: &[(CredentialId, DeathReason)],
    ) {
        self.u8(THREAD_REVOKED);
        self.str(thread_id);
        self.opt_str(reach);
        self.u64(at);
        self.removed(removed);
    }

    /// A RevokeAll's stamps.
    pub(in crate::store) fn scopes_stamped<'s>(
        &mut self,
        stamps: impl ExactSizeIterator<Item = (&'s ScopeName, u64, Millis)>,
    ) {
        self.u8(SCOPES_STAMPED);
        self.u32(stamps.len() as u32);
        for (name, epoch, at) in stamps {
            self.scope(name);
            self.u64(epoch);
            self.u64(at);
        }
    }

    /// A scope's history.
    pub(in crate::store) fn scope_history(
        &mut self,
        name: &ScopeName,
        claims: bool,
        history: &[(u64, Millis)],
    ) {
        self.u8(SCOPE_HISTORY);
        self.scope(name);
        self.u8(u8::from(claims));
        self.u32(history.len() as u32);
        for (epoch, at) in history {
            self.u64(*epoch);
            self.u64(*at);
        }
    }

    /// A start.
    pub(in crate::store) fn opened(&mut self, at: Millis) {
        self.u8(OPENED);
        self.u64(at);
    }

    /// A clean stop.
    pub(in crate::store) fn closed(&mut self, at: Millis) {
        self.u8(CLOSED);
        self.u64(at);
    }

    /// A sweeper removal.
    pub(in crate::store) fn swept(&mut self, id: &CredentialId, at: Millis, reason: DeathReason) {
        self.u8(SWEPT);
        self.bytes(id.as_bytes());
        self.u64(at);
        self.u8(reason_code(reason));
    }

    /// The revocation epoch.
    pub(in crate::store) fn epoch(&mut self, epoch: u64) {
        self.u8(EPOCH);
        self.u64(epoch);
    }

    /// A tombstone.
    pub(in crate::store) fn tombstone(
        &mut self,
        digest: &TokenDigest,
        recorded_at: Millis,
        dead: &DeadCredential,
    ) {
        self.u8(TOMBSTONE);
        self.bytes(digest.as_bytes());
        self.u64(recorded_at);
        self.dead(dead);
    }

    /// A thread's newest death.
    pub(in crate::store) fn thread_death(
        &mut self,
        thread_id: &str,
        created_at: Millis,
        recorded_at: Millis,
        dead: &DeadCredential,
    ) {
        self.u8(THREAD_DEATH);
        self.str(thread_id);
        self.u64(created_at);
        self.u64(recorded_at);
        self.dead(dead);
    }
}

/// The fixed fields of a credential, borrowed.
#[derive(Debug, Clone, Copy)]
pub(in crate::store) struct CredentialFields<'a> {
    pub(in crate::store) digest: &'a TokenDigest,
    pub(in crate::store) credential_id: &'a CredentialId,
    pub(in crate::store) created_at: Millis,
    pub(in crate::store) last_used: Millis,
    pub(in crate::store) minted_epoch: u64,
    pub(in crate::store) idle_timeout: Millis,
    pub(in crate::store) max_lifetime: Millis,
    pub(in crate::store) absolute_lifetime: Millis,
    pub(in crate::store) claims: bool,
    pub(in crate::store) thread_id: &'a str,
    pub(in crate::store) minted_by: &'a str,
    pub(in crate::store) instance_id: &'a str,
    pub(in crate::store) provider_kind: Option<&'a str>,
}

/// [`Event::CredentialRevoked`]'s code for "memory held no record".
const NO_REASON: u8 = 0xFF;

fn reason_code(reason: DeathReason) -> u8 {
    match reason {
        DeathReason::Expired => 0,
        DeathReason::IdleTimeout => 1,
        DeathReason::Revoked(cause) => {
            2 + match cause {
                RevocationCause::Thread => 0,
                RevocationCause::ProviderInstance => 1,
                RevocationCause::Caller => 2,
                RevocationCause::All => 3,
                RevocationCause::Credential => 4,
                RevocationCause::Replaced => 5,
            }
        }
    }
}

fn reason_of(code: u8) -> Result<DeathReason, DecodeError> {
    let cause = match code {
        0 => return Ok(DeathReason::Expired),
        1 => return Ok(DeathReason::IdleTimeout),
        2 => RevocationCause::Thread,
        3 => RevocationCause::ProviderInstance,
        4 => RevocationCause::Caller,
        5 => RevocationCause::All,
        6 => RevocationCause::Credential,
        7 => RevocationCause::Replaced,
        _ => return Err(DecodeError("unknown death reason")),
    };
    Ok(DeathReason::Revoked(cause))
}

/// Reads fields back; every read checks the length left.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("record ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bad flag")),
        }
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count of items each at least `min_len` bytes long, checked against
    /// what is left so a forged count cannot make us allocate.
    fn count(&mut self, min_len: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_len) > self.0.len() {
            return Err(DecodeError("count exceeds the record"));
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<Box<str>, DecodeError> {
        self.str_ref().map(Box::from)
    }
    /// A string borrowed from the record.
    fn str_ref(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError("string is not UTF-8"))
    }
    fn opt_str(&mut self) -> Result<Option<Box<str>>, DecodeError> {
        Ok(self.opt_str_ref()?.map(Box::from))
    }
    fn opt_str_ref(&mut self) -> Result<Option<&'a str>, DecodeError> {
        Ok(if self.bool()? {
            Some(self.str_ref()?)
        } else {
            None
        })
    }
    /// What was read since the reader was at `start`.
    fn since(&self, start: &'a [u8]) -> &'a [u8] {
        &start[..start.len() - self.0.len()]
    }
    fn digest(&mut self) -> Result<TokenDigest, DecodeError> {
        Ok(TokenDigest::from_bytes(
            self.take(32)?.try_into().expect("32 bytes"),
        ))
    }
    fn id(&mut self) -> Result<CredentialId, DecodeError> {
        Ok(CredentialId::from_bytes(
            self.take(16)?.try_into().expect("16 bytes"),
        ))
    }
    fn removed(&mut self) -> Result<Vec<(CredentialId, DeathReason)>, DecodeError> {
        let n = self.count(17)?;
        (0..n)
            .map(|_| Ok((self.id()?, reason_of(self.u8()?)?)))
            .collect()
    }
    fn scope(&mut self) -> Result<ScopeName, DecodeError> {
        Ok(match self.u8()? {
            0 => ScopeName::Global,
            1 => ScopeName::Owner(Arc::from(self.str()?)),
            2 => ScopeName::Pair {
                owner: Arc::from(self.str()?),
                instance: Arc::from(self.str()?),
            },
            _ => return Err(DecodeError("unknown scope kind")),
        })
    }
    fn dead(&mut self) -> Result<DeadCredential, DecodeError> {
        Ok(DeadCredential {
            reason: reason_of(self.u8()?)?,
            credential_id: self.id()?,
            thread_id: Arc::from(self.str()?),
            minted_by: Arc::from(self.str()?),
        })
    }
}

impl<'a> Event<'a> {
    /// Reads one record; the whole payload must be used.
    pub(in crate::store) fn decode(payload: &'a [u8]) -> Result<Event<'a>, DecodeError> {
        let mut r = Reader(payload);
        let event = match r.u8()? {
            MINTED => {
                let digest = r.digest()?;
                let credential_id = r.id()?;
                let created_at = r.u64()?;
                let last_used = r.u64()?;
                let minted_epoch = r.u64()?;
                let start = r.0;
                let idle_timeout = r.u64()?;
                let max_lifetime = r.u64()?;
                let absolute_lifetime = r.u64()?;
                let claims = r.bool()?;
                let lifetimes = r.since(start);
                let thread_id = r.str_ref()?;
                let start = r.0;
                let minted_by = r.str_ref()?;
                let instance_id = r.str_ref()?;
                let provider_kind = r.opt_str_ref()?;
                let n = r.count(4)?;
                let scopes = (0..n).map(|_| r.str_ref()).collect::<Result<_, _>>()?;
                let n = r.count(8)?;
                let labels = (0..n)
                    .map(|_| Ok((r.str_ref()?, r.str_ref()?)))
                    .collect::<Result<_, DecodeError>>()?;
                let class_key = ClassKey {
                    lifetimes,
                    strings: r.since(start),
                };
                let replaced = r.removed()?;
                Event::Minted {
                    credential: StoredCredential {
                        digest,
                        credential_id,
                        created_at,
                        last_used,
                        minted_epoch,
                        idle_timeout,
                        max_lifetime,
                        absolute_lifetime,
                        claims,
                        thread_id,
                        minted_by,
                        instance_id,
                        provider_kind,
                        scopes,
                        labels,
                        class_key,
                    },
                    replaced,
                }
            }
            RENEWED => {
                let n = r.count(24)?;
                let uses = (0..n)
                    .map(|_| Ok((r.id()?, r.u64()?)))
                    .collect::<Result<_, DecodeError>>()?;
                Event::Renewed { uses }
            }
            CREDENTIAL_REVOKED => Event::CredentialRevoked {
                credential_id: r.id()?,
                at: r.u64()?,
                reason: match r.u8()? {
                    NO_REASON => None,
                    code => Some(reason_of(code)?),
                },
            },
            THREAD_REVOKED => Event::ThreadRevoked {
                thread_id: r.str()?,
                reach: r.opt_str()?,
                at: r.u64()?,
                removed: r.removed()?,
            },
            SCOPES_STAMPED => {
                let n = r.count(17)?;
                let stamps = (0..n)
                    .map(|_| Ok((r.scope()?, r.u64()?, r.u64()?)))
                    .collect::<Result<_, DecodeError>>()?;
                Event::ScopesStamped { stamps }
            }
            SCOPE_HISTORY => {
                let name = r.scope()?;
                let claims = r.bool()?;
                let n = r.count(16)?;
                let history = (0..n)
                    .map(|_| Ok((r.u64()?, r.u64()?)))
                    .collect::<Result<_, DecodeError>>()?;
                Event::ScopeHistory {
                    name,
                    claims,
                    history,
                }
            }
            EPOCH => Event::Epoch { epoch: r.u64()? },
            CLOSED => Event::Closed { at: r.u64()? },
            OPENED => Event::Opened { at: r.u64()? },
            SWEPT => Event::Swept {
                credential_id: r.id()?,
                at: r.u64()?,
                reason: reason_of(r.u8()?)?,
            },
            TOMBSTONE => Event::Tombstone {
                digest: r.digest()?,
                recorded_at: r.u64()?,
                dead: r.dead()?,
            },
            THREAD_DEATH => Event::ThreadDeath {
                thread_id: r.str()?,
                created_at: r.u64()?,
                recorded_at: r.u64()?,
                dead: r.dead()?,
            },
            _ => return Err(DecodeError("unknown record kind")),
        };
        if !r.0.is_empty() {
            return Err(DecodeError("bytes after the record"));
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead() -> DeadCredential {
        DeadCredential {
            reason: DeathReason::Revoked(RevocationCause::Replaced),
            credential_id: CredentialId::from_bytes([7; 16]),
            thread_id: Arc::from("thread"),
            minted_by: Arc::from("adapter"),
        }
    }

    /// Catches a field written in one order and read in another, and a
    /// reader that accepts trailing bytes or a truncated record.
    #[test]
    fn every_kind_round_trips_and_truncation_is_refused() {
        let credential = StoredCredential {
            digest: TokenDigest::from_bytes([1; 32]),
            credential_id: CredentialId::from_bytes([2; 16]),
            created_at: 3,
            last_used: 4,
            minted_epoch: 5,
            idle_timeout: 6,
            max_lifetime: 7,
            absolute_lifetime: u64::MAX,
            claims: true,
            thread_id: "t",
            minted_by: "m",
            instance_id: "i",
            provider_kind: Some("k"),
            scopes: vec!["a", "b"],
            labels: vec![("x", "y")],
            class_key: ClassKey::default(),
        };
        let replaced = vec![(CredentialId::from_bytes([9; 16]), DeathReason::IdleTimeout)];
        let id = replaced[0].0;
        let mut encoded = Vec::new();
        let mut buf = Vec::new();
        Writer(&mut buf).minted(
            CredentialFields {
                digest: &credential.digest,
                credential_id: &credential.credential_id,
                created_at: 3,
                last_used: 4,
                minted_epoch: 5,
                idle_timeout: 6,
                max_lifetime: 7,
                absolute_lifetime: u64::MAX,
                claims: true,
                thread_id: "t",
                minted_by: "m",
                instance_id: "i",
                provider_kind: Some("k"),
            },
            ["a", "b"].into_iter(),
            [("x", "y")].into_iter(),
            &replaced,
        );
        encoded.push((
            buf,
            Event::Minted {
                credential,
                replaced: replaced.clone(),
            },
        ));
        let uses = vec![(CredentialId::from_bytes([3; 16]), 11)];
        let mut buf = Vec::new();
        Writer(&mut buf).renewed(&uses);
        encoded.push((buf, Event::Renewed { uses }));
        let mut buf = Vec::new();
        Writer(&mut buf).credential_revoked(&id, 12, Some(DeathReason::Expired));
        encoded.push((
            buf,
            Event::CredentialRevoked {
                credential_id: id,
                at: 12,
                reason: Some(DeathReason::Expired),
            },
        ));
        let mut buf = Vec::new();
        Writer(&mut buf).credential_revoked(&id, 12, None);
        encoded.push((
            buf,
            Event::CredentialRevoked {
                credential_id: id,
                at: 12,
                reason: None,
            },
        ));
        let mut buf = Vec::new();
        Writer(&mut buf).thread_revoked("t", Some("m"), 13, &replaced);
        encoded.push((
            buf,
            Event::ThreadRevoked {
                thread_id: "t".into(),
                reach: Some("m".into()),
                at: 13,
                removed: replaced.clone(),
            },
        ));
        let pair = ScopeName::Pair {
            owner: Arc::from("m"),
            instance: Arc::from("i"),
        };
        let stamps = vec![
            (ScopeName::Global, 1, 2),
            (ScopeName::Owner(Arc::from("m")), 3, 4),
            (pair.clone(), 5, 6),
        ];
        let mut buf = Vec::new();
        Writer(&mut buf).scopes_stamped(stamps.iter().map(|(n, e, a)| (n, *e, *a)));
        encoded.push((buf, Event::ScopesStamped { stamps }));
        let mut buf = Vec::new();
        Writer(&mut buf).scope_history(&pair, true, &[(5, 6), (8, 9)]);
        encoded.push((
            buf,
            Event::ScopeHistory {
                name: pair,
                claims: true,
                history: vec![(5, 6), (8, 9)],
            },
        ));
        let mut buf = Vec::new();
        Writer(&mut buf).swept(&id, 45, DeathReason::Revoked(RevocationCause::All));
        encoded.push((
            buf,
            Event::Swept {
                credential_id: id,
                at: 45,
                reason: DeathReason::Revoked(RevocationCause::All),
            },
        ));
        let mut buf = Vec::new();
        Writer(&mut buf).opened(47);
        encoded.push((buf, Event::Opened { at: 47 }));
        let mut buf = Vec::new();
        Writer(&mut buf).closed(46);
        encoded.push((buf, Event::Closed { at: 46 }));
        let mut buf = Vec::new();
        Writer(&mut buf).epoch(44);
        encoded.push((buf, Event::Epoch { epoch: 44 }));
        let mut buf = Vec::new();
        Writer(&mut buf).tombstone(&TokenDigest::from_bytes([5; 32]), 15, &dead());
        let tombstone = Event::Tombstone {
            digest: TokenDigest::from_bytes([5; 32]),
            recorded_at: 15,
            dead: dead(),
        };
        encoded.push((buf, tombstone));
        let mut buf = Vec::new();
        Writer(&mut buf).thread_death("t", 16, 17, &dead());
        encoded.push((
            buf,
            Event::ThreadDeath {
                thread_id: "t".into(),
                created_at: 16,
                recorded_at: 17,
                dead: dead(),
            },
        ));
        for (bytes, event) in encoded {
            let decoded = Event::decode(&bytes).expect("decodes");
            assert_eq!(format!("{decoded:?}"), format!("{event:?}"));
            for cut in 0..bytes.len() {
                assert!(
                    Event::decode(&bytes[..cut]).is_err(),
                    "{event:?} cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Event::decode(&longer).is_err());
        }
    }

    /// A Minted record's class key with the given fields.
    fn minted(
        digest: u8,
        thread: &str,
        idle: Millis,
        claims: bool,
        strings: [&str; 4],
        labels: &[(&str, &str)],
    ) -> Vec<u8> {
        let [minted_by, instance_id, kind, scope] = strings;
        let mut buf = Vec::new();
        Writer(&mut buf).minted(
            CredentialFields {
                digest: &TokenDigest::from_bytes([digest; 32]),
                credential_id: &CredentialId::from_bytes([digest; 16]),
                created_at: u64::from(digest),
                last_used: u64::from(digest) + 1,
                minted_epoch: u64::from(digest) + 2,
                idle_timeout: idle,
                max_lifetime: 7,
                absolute_lifetime: u64::MAX,
                claims,
                thread_id: thread,
                minted_by,
                instance_id,
                provider_kind: Some(kind),
            },
            [scope].into_iter(),
            labels.iter().copied(),
            &[(CredentialId::from_bytes([digest; 16]), DeathReason::Expired)]
                [..usize::from(digest % 2)],
        );
        buf
    }

    /// Catches a class key that misses a field of the class (replay would
    /// give a credential another's scopes, labels, owner or lifetimes) or
    /// that covers a field of the credential's own (no reuse at all).
    #[test]
    fn class_keys_cover_exactly_the_class_fields() {
        let key = |bytes: &[u8]| match Event::decode(bytes).expect("decodes") {
            Event::Minted { credential, .. } => {
                let ClassKey { lifetimes, strings } = credential.class_key;
                (lifetimes.to_vec(), strings.to_vec())
            }
            _ => unreachable!("a Minted record"),
        };
        let base = ["m", "i", "k", "s"];
        let labels = [("x", "y")];
        let reference = key(&minted(1, "t1", 6, true, base, &labels));
        // Another credential of the same class: digest, id, times, thread
        // and replaced list differ.
        assert_eq!(
            key(&minted(2, "thread-2", 6, true, base, &labels)),
            reference
        );
        let others = [
            minted(1, "t1", 5, true, base, &labels),
            minted(1, "t1", 6, false, base, &labels),
            minted(1, "t1", 6, true, ["n", "i", "k", "s"], &labels),
            minted(1, "t1", 6, true, ["m", "j", "k", "s"], &labels),
            minted(1, "t1", 6, true, ["m", "i", "l", "s"], &labels),
            minted(1, "t1", 6, true, ["m", "i", "k", "r"], &labels),
            minted(1, "t1", 6, true, base, &[("x", "z")]),
            minted(1, "t1", 6, true, base, &[]),
        ];
        for other in others {
            assert_ne!(key(&other), reference);
        }
    }
}
