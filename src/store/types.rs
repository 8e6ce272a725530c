//! The store's public value types: what goes in, what comes out, and why a
//! call was refused. None of them knows a transport or a wire error.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Millis;
use crate::token::CredentialId;

/// The limits the store enforces, fixed when it starts.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long a credential may go unused before it dies (default and upper
    /// bound of a per-credential override).
    pub idle_timeout: Duration,
    /// How far each use pushes `expires_at` ahead: the backstop for unused
    /// credentials (default and upper bound of a per-credential override).
    pub max_lifetime: Duration,
    /// An optional hard limit counted from mint time that renewal never
    /// passes.
    pub absolute_lifetime: Option<Duration>,
    /// How long a dead credential's tombstone is kept.
    pub tombstone_retention: Duration,
    /// How many tombstones are kept at most; the oldest go first.
    pub tombstone_capacity: usize,
    /// How many live credentials one thread may hold (all callers and
    /// instances together); a Mint beyond it is refused unless its
    /// `replace_previous` frees the room.
    pub max_credentials_per_thread: u64,
    /// How many live credentials the store holds at most.
    pub max_credentials: u64,
    /// How many bytes the strings of live credentials (thread, instance,
    /// kind, scopes, labels) may take in all, counted as their lengths.
    pub max_credential_bytes: u64,
    /// How many entries Touch by thread returns at most; it renews them all.
    pub touch_reply_limit: usize,
}

impl Default for StoreConfig {
    /// The defaults of the reference registry: 30 minutes idle, 30 days max
    /// lifetime, no absolute lifetime; tombstones for 24 hours.
    fn default() -> Self {
        StoreConfig {
            idle_timeout: Duration::from_secs(30 * 60),
            max_lifetime: Duration::from_secs(30 * 24 * 60 * 60),
            absolute_lifetime: None,
            tombstone_retention: Duration::from_secs(24 * 60 * 60),
            tombstone_capacity: 1_000_000,
            max_credentials_per_thread: 1_000,
            max_credentials: 10_000_000,
            max_credential_bytes: 4 << 30,
            touch_reply_limit: 1_000,
        }
    }
}

/// Which credentials a call may act on. The store knows no roles: the
/// service decides, from the caller's role, whether a call reaches every
/// credential (an administrator) or only those its caller minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reach<'a> {
    /// Every credential, whoever minted it.
    #[default]
    All,
    /// Only the credentials minted by this caller.
    MintedBy(&'a str),
}

impl Reach<'_> {
    /// Whether a credential minted by `minted_by` is within reach.
    pub fn covers(&self, minted_by: &str) -> bool {
        match self {
            Reach::All => true,
            Reach::MintedBy(caller) => *caller == minted_by,
        }
    }
}

/// What Mint needs to know about the new credential, already validated.
#[derive(Debug, Clone, Default)]
pub struct NewCredential<'a> {
    /// The session thread the credential belongs to.
    pub thread_id: &'a str,
    /// The provider adapter instance that runs the session.
    pub provider_instance_id: &'a str,
    /// An optional provider label ("claude", "codex", ...).
    pub provider_kind: Option<&'a str>,
    /// A per-credential idle timeout; clamped to the store's.
    pub idle_timeout: Option<Duration>,
    /// A per-credential max lifetime; clamped to the store's.
    pub max_lifetime: Option<Duration>,
    /// Revoke every earlier live credential of the same thread and provider
    /// instance in the same atomic step.
    pub replace_previous: bool,
    /// What the credential may do.
    pub scopes: Scopes,
    /// Free-form context returned by Resolve.
    pub labels: Labels,
    /// The caller that mints it: its owner from now on.
    pub minted_by: &'a str,
    /// Which earlier credentials `replace_previous` may revoke: a Mint that
    /// would replace one outside it changes nothing and is refused.
    pub reach: Reach<'a>,
    /// How many live credentials `minted_by` may hold after this Mint, from
    /// its quota in the callers file; `None` is no quota.
    pub owner_quota: Option<u64>,
}

/// A credential's scopes, shared between the record and every Resolve answer.
pub type Scopes = Arc<[Box<str>]>;

/// A credential's labels (key, value), sorted by key, shared like [`Scopes`].
pub type Labels = Arc<[(Box<str>, Box<str>)]>;

/// The deadlines of a credential as of its mint or latest renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// When it dies even if used (slides forward on each use).
    pub expires_at: Millis,
    /// When it dies if not used again; never after `expires_at`.
    pub idle_expires_at: Millis,
}

/// A newly minted credential's public facts.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The non-secret handle.
    pub credential_id: CredentialId,
    /// The deadlines it starts with.
    pub deadlines: Deadlines,
    /// How many earlier credentials `replace_previous` revoked.
    pub replaced: u64,
}

/// A credential renewed by Touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touched {
    /// The non-secret handle.
    pub credential_id: CredentialId,
    /// The deadlines after the renewal.
    pub deadlines: Deadlines,
}

/// What Touch by thread did: every live credential of the thread within
/// reach is renewed, but the reply lists only the oldest
/// [`StoreConfig::touch_reply_limit`] of them, so its size stays bounded
/// whatever the thread holds; `total` says how many were renewed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadTouch {
    /// The renewed credentials, oldest first, at most
    /// [`StoreConfig::touch_reply_limit`].
    pub touched: Vec<Touched>,
    /// How many were renewed, listed or not.
    pub total: u64,
}

/// What RevokeThread did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadRevocation {
    /// Live credentials revoked.
    pub revoked: u64,
    /// Live credentials of the thread left alone because they are out of
    /// the call's reach (minted by another caller).
    pub not_owned: u64,
}

/// What RevokeCredential did, and whose credential it was (for the audit
/// line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialRevocation {
    /// 1 when a live credential was revoked, else 0.
    pub revoked: u64,
    /// Its thread, when the credential is known.
    pub thread_id: Option<Arc<str>>,
    /// Its provider instance, when its record was still there.
    pub provider_instance_id: Option<Arc<str>>,
}

/// What RevokeAll ends, in constant time whatever the number of
/// credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeAllTarget<'a> {
    /// Every credential (cause `all`).
    Everything,
    /// Every credential of one provider instance, whoever minted it (cause
    /// `provider_instance`).
    Instance(&'a str),
    /// Every credential one caller minted (cause `caller`).
    MintedBy(&'a str),
    /// One caller's credentials of one provider instance (cause
    /// `provider_instance`).
    MintedByForInstance {
        /// The caller.
        minted_by: &'a str,
        /// The provider instance.
        provider_instance_id: &'a str,
    },
}

/// Who a live credential belongs to, as a successful Resolve sees it:
/// borrowed from the record, so answering copies the strings once into the
/// response and touches no reference count shared with other credentials.
#[derive(Debug, Clone, Copy)]
pub struct CredentialView<'a> {
    /// The non-secret handle.
    pub credential_id: CredentialId,
    /// The thread it was minted for.
    pub thread_id: &'a str,
    /// The provider instance it was minted for.
    pub provider_instance_id: &'a str,
    /// The provider label given at mint time.
    pub provider_kind: Option<&'a str>,
    /// The caller that minted it.
    pub minted_by: &'a str,
    /// When it was minted.
    pub created_at: Millis,
    /// The deadlines after this use renewed them.
    pub deadlines: Deadlines,
    /// What it may do.
    pub scopes: &'a [Box<str>],
    /// Its labels, sorted by key.
    pub labels: &'a [(Box<str>, Box<str>)],
}

/// An owned copy of a [`CredentialView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The non-secret handle.
    pub credential_id: CredentialId,
    /// The thread it was minted for.
    pub thread_id: String,
    /// The provider instance it was minted for.
    pub provider_instance_id: String,
    /// The provider label given at mint time.
    pub provider_kind: Option<String>,
    /// The caller that minted it.
    pub minted_by: String,
    /// When it was minted.
    pub created_at: Millis,
    /// The deadlines after this use renewed them.
    pub deadlines: Deadlines,
    /// What it may do.
    pub scopes: Vec<String>,
    /// Its labels, sorted by key.
    pub labels: Vec<(String, String)>,
}

impl From<CredentialView<'_>> for Resolved {
    fn from(view: CredentialView<'_>) -> Self {
        Resolved {
            credential_id: view.credential_id,
            thread_id: view.thread_id.to_owned(),
            provider_instance_id: view.provider_instance_id.to_owned(),
            provider_kind: view.provider_kind.map(str::to_owned),
            minted_by: view.minted_by.to_owned(),
            created_at: view.created_at,
            deadlines: view.deadlines,
            scopes: view.scopes.iter().map(|s| s.to_string()).collect(),
            labels: view
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// Which revocation killed a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationCause {
    /// RevokeThread for its thread.
    Thread,
    /// RevokeAll for its provider instance.
    ProviderInstance,
    /// RevokeAll for everything its caller minted.
    Caller,
    /// RevokeAll for every credential.
    All,
    /// RevokeCredential for this one credential.
    Credential,
    /// A Mint with `replace_previous` for the same thread and instance.
    Replaced,
}

impl RevocationCause {
    /// The stable name used in `ErrorInfo` metadata and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationCause::Thread => "thread",
            RevocationCause::ProviderInstance => "provider_instance",
            RevocationCause::Caller => "caller",
            RevocationCause::All => "all",
            RevocationCause::Credential => "credential",
            RevocationCause::Replaced => "replaced",
        }
    }
}

/// Why a credential can never work again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// `expires_at` passed (max lifetime without use, or absolute lifetime).
    Expired,
    /// It went unused for its idle timeout.
    IdleTimeout,
    /// It was revoked.
    Revoked(RevocationCause),
}

/// A credential that is known and dead.
#[derive(Debug, Clone)]
pub struct DeadCredential {
    /// Why it died.
    pub reason: DeathReason,
    /// Its non-secret handle.
    pub credential_id: CredentialId,
    /// The thread it was minted for.
    pub thread_id: Arc<str>,
    /// The caller that minted it, so calls by other callers can be refused
    /// without saying more.
    pub minted_by: Arc<str>,
}

/// Why the store refused a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Rejection {
    /// Never minted here, or dead for longer than the tombstone retention.
    #[error("unknown credential")]
    Unknown,
    /// Known and dead.
    #[error("dead credential {}: {:?}", .0.credential_id, .0.reason)]
    Dead(DeadCredential),
    /// Live, but without the scope the caller required. Not terminal.
    #[error("credential {credential_id} lacks scope {scope:?}")]
    ScopeMissing {
        /// Its non-secret handle.
        credential_id: CredentialId,
        /// The thread it was minted for.
        thread_id: Arc<str>,
        /// The scope that was required.
        scope: Box<str>,
    },
    /// The call named credentials outside its reach (minted by another
    /// caller); nothing was changed.
    #[error("not the caller's credential")]
    NotOwned {
        /// The credential, when the call named one.
        credential_id: Option<CredentialId>,
    },
    /// Mint only: the thread holds its limit of live credentials.
    #[error("thread holds its limit of {limit} live credentials")]
    ThreadLimit {
        /// The thread.
        thread_id: Arc<str>,
        /// [`StoreConfig::max_credentials_per_thread`].
        limit: u64,
    },
    /// Mint only: the store holds its budget of live credentials or bytes.
    #[error("store holds its budget of {limit} {budget:?}")]
    StoreBudget {
        /// Which budget is full.
        budget: Budget,
        /// Its size.
        limit: u64,
    },
    /// Mint only: the minting caller holds its quota of live credentials.
    #[error("caller holds its quota of {limit} live credentials")]
    OwnerQuota {
        /// The minting caller.
        owner: Arc<str>,
        /// [`NewCredential::owner_quota`].
        limit: u64,
    },
    /// The store cannot make the change durable now (disk full, read-only,
    /// I/O error, a stalled disk): nothing was done that a restart would
    /// undo, except that a revocation stays in force in memory. Transient:
    /// the same call may succeed once the disk recovers.
    #[error("the store cannot write: {what}")]
    Unavailable {
        /// What failed, for the log; names no secret.
        what: &'static str,
    },
}

/// Which of the store's budgets a Mint found full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// [`StoreConfig::max_credentials`].
    Credentials,
    /// [`StoreConfig::max_credential_bytes`].
    Bytes,
}

impl Budget {
    /// The name in ErrorInfo metadata `budget`.
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::Credentials => "credentials",
            Budget::Bytes => "bytes",
        }
    }
}
