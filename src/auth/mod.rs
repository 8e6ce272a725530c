//! Who is calling: caller keys, the callers file, and the roles that decide
//! what each caller may do.
//!
//! Every call but health and reflection names its caller, by a caller key
//! in `authorization: Bearer <key>` metadata or by a client certificate
//! whose URI or DNS SAN the callers file lists. The [`Authenticator`] holds
//! the current [`CallerSet`] behind an `ArcSwap`, so a reload (SIGHUP)
//! replaces it at once for new calls without dropping a connection or
//! touching a credential; nothing derived from it outlives the call that
//! looked it up.

pub mod cli;
pub mod file;
pub mod key;
pub mod quota;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use nohash_hasher::BuildNoHashHasher;

use file::CallersFile;
pub use file::Role;
use key::{KeyDigest, MalformedKey};
use quota::CallerQuota;

use crate::transport::ClientSan;

/// A set of [`Role`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    /// The roles of a callers-file entry.
    pub fn of(roles: &[Role]) -> Self {
        Roles(roles.iter().fold(0, |bits, &role| bits | Self::bit(role)))
    }

    fn bit(role: Role) -> u8 {
        match role {
            Role::Mint => 1,
            Role::Resolve => 2,
            Role::Admin => 4,
        }
    }

    /// Whether a call that needs `role` is allowed: `admin` allows
    /// everything.
    pub fn allow(self, role: Role) -> bool {
        self.0 & (Self::bit(role) | Self::bit(Role::Admin)) != 0
    }

    /// Whether these include `admin`, which reaches every credential.
    pub fn is_admin(self) -> bool {
        self.0 & Self::bit(Role::Admin) != 0
    }
}

/// An authenticated caller, as one of its keys or certificates names it.
#[derive(Debug)]
pub struct Principal {
    /// The caller's name: the owner of what it mints.
    pub name: Arc<str>,
    /// What it may do.
    pub roles: Roles,
    /// The non-secret id of the key it presented, for logs and audit lines;
    /// `None` when a client certificate alone named it.
    pub key_id: Option<Box<str>>,
    /// Its quotas, shared by all its keys and certificates.
    pub quota: Arc<CallerQuota>,
}

/// Why a call's caller is not authenticated. Every message says what to
/// fix and that no agent's token is concerned; none echoes what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No `authorization` metadata and no client certificate that names a
    /// caller.
    #[error(
        "no caller credentials: send the caller's key as `authorization: Bearer <key>` \
         metadata (or a client certificate the callers file lists)"
    )]
    Missing,
    /// The `authorization` metadata is not `Bearer <key>`.
    #[error("the `authorization` metadata must be `Bearer <caller key>`")]
    NotBearer,
    /// The key is not in the caller-key format.
    #[error("{0}")]
    Malformed(MalformedKey),
    /// A well-formed key that no caller has (never added, or removed).
    #[error("the caller key is not in the callers file (never added, or removed)")]
    UnknownKey,
    /// A client certificate and a key that name different callers.
    #[error("the client certificate and the caller key name different callers")]
    Mismatch,
    /// A client certificate whose SANs name more than one caller.
    #[error(
        "the client certificate's SANs name more than one caller in the callers file; \
         a certificate must name exactly one"
    )]
    AmbiguousCertificate,
}

/// The callers allowed in, as loaded from one callers file.
#[derive(Debug, Default)]
pub struct CallerSet {
    /// By key digest; digests are uniform already, so the map hashes their
    /// first 8 bytes as they are (see [`KeyDigest`]) instead of SipHash:
    /// this lookup is on every call.
    by_key: HashMap<KeyDigest, Arc<Principal>, BuildNoHashHasher<u64>>,
    by_san: HashMap<ClientSan, Arc<Principal>>,
    callers: usize,
}

impl CallerSet {
    /// The callers of a validated callers file.
    pub fn from_file(file: &CallersFile) -> Self {
        let mut set = CallerSet {
            callers: file.callers.len(),
            ..CallerSet::default()
        };
        for caller in &file.callers {
            let name: Arc<str> = Arc::from(caller.name.as_str());
            let roles = Roles::of(&caller.roles);
            let quota = Arc::new(CallerQuota::new(file.quota_of(caller)));
            for key in &caller.keys {
                set.by_key.insert(
                    key.digest,
                    Arc::new(Principal {
                        name: name.clone(),
                        roles,
                        key_id: Some(key.id.as_str().into()),
                        quota: quota.clone(),
                    }),
                );
            }
            let by_certificate = Arc::new(Principal {
                name: name.clone(),
                roles,
                key_id: None,
                quota,
            });
            let sans = (caller.uri_sans.iter().cloned().map(ClientSan::Uri))
                .chain(caller.dns_sans.iter().cloned().map(ClientSan::Dns));
            for san in sans {
                set.by_san.insert(san, by_certificate.clone());
            }
        }
        set
    }

    /// How many callers and keys it holds, for the reload log line.
    pub fn counts(&self) -> (usize, usize) {
        (self.callers, self.by_key.len())
    }

    /// The caller a call names. `authorization` is the metadata value, if
    /// any; `client_sans` those of a verified client certificate. A key is
    /// hashed and its digest looked up: never compared as text.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        client_sans: &[ClientSan],
    ) -> Result<Arc<Principal>, AuthFailure> {
        let mut named = client_sans.iter().filter_map(|san| self.by_san.get(san));
        let by_certificate = named.next();
        if let Some(first) = by_certificate {
            if named.any(|other| other.name != first.name) {
                return Err(AuthFailure::AmbiguousCertificate);
            }
        }
        let by_key = match authorization {
            None => None,
            Some(value) => Some(self.by_key(value)?),
        };
        match (by_key, by_certificate) {
            (Some(key), Some(certificate)) if key.name != certificate.name => {
                Err(AuthFailure::Mismatch)
            }
            (Some(key), _) => Ok(key),
            (None, Some(certificate)) => Ok(certificate.clone()),
            (None, None) => Err(AuthFailure::Missing),
        }
    }

    fn by_key(&self, authorization: &[u8]) -> Result<Arc<Principal>, AuthFailure> {
        let value = std::str::from_utf8(authorization).map_err(|_| AuthFailure::NotBearer)?;
        let (scheme, presented) = value.split_once(' ').ok_or(AuthFailure::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthFailure::NotBearer);
        }
        let digest = key::parse(presented.trim()).map_err(AuthFailure::Malformed)?;
        self.by_key
            .get(&digest)
            .cloned()
            .ok_or(AuthFailure::UnknownKey)
    }
}

/// How calls are authenticated, shared by every call and swapped whole on
/// reload.
#[derive(Clone)]
pub struct Authenticator {
    mode: Arc<Mode>,
}

enum Mode {
    /// Callers from the callers file.
    Callers(ArcSwap<CallerSet>),
    /// `--insecure-no-caller-auth`: every call is this administrator.
    Insecure(Arc<Principal>),
}

/// The caller every call is taken for under `--insecure-no-caller-auth`.
pub const INSECURE_CALLER: &str = "insecure-no-caller-auth";

impl Authenticator {
    /// Authenticates against `callers`.
    pub fn new(callers: CallerSet) -> Self {
        Authenticator {
            mode: Arc::new(Mode::Callers(ArcSwap::from_pointee(callers))),
        }
    }

    /// Lets every call in as an administrator named [`INSECURE_CALLER`],
    /// for experiments on loopback.
    pub fn insecure() -> Self {
        Authenticator {
            mode: Arc::new(Mode::Insecure(Arc::new(Principal {
                name: Arc::from(INSECURE_CALLER),
                roles: Roles::of(&[Role::Admin]),
                key_id: None,
                quota: Arc::new(CallerQuota::unlimited()),
            }))),
        }
    }

    /// Replaces the callers for every call from now on; returns false (and
    /// changes nothing) in insecure mode.
    pub fn replace(&self, callers: CallerSet) -> bool {
        match &*self.mode {
            Mode::Callers(current) => {
                current.store(Arc::new(callers));
                true
            }
            Mode::Insecure(_) => false,
        }
    }

    /// The caller a call names (see [`CallerSet::authenticate`]).
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        client_sans: &[ClientSan],
    ) -> Result<Arc<Principal>, AuthFailure> {
        match &*self.mode {
            Mode::Callers(current) => current.load().authenticate(authorization, client_sans),
            Mode::Insecure(everyone) => Ok(everyone.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::file::{CallerEntry, KeyEntry};
    use crate::auth::key::CallerKey;
    use crate::token::Token;

    fn entry(name: &str, roles: &[Role], key: &CallerKey, sans: &[&str]) -> CallerEntry {
        CallerEntry {
            name: name.into(),
            roles: roles.to_vec(),
            keys: vec![KeyEntry {
                id: format!("{name}-key"),
                digest: key.digest(),
            }],
            uri_sans: sans.iter().map(|s| s.to_string()).collect(),
            dns_sans: Vec::new(),
            quota: Default::default(),
        }
    }

    fn bearer(key: &CallerKey) -> Vec<u8> {
        format!("Bearer {}", key.expose()).into_bytes()
    }

    #[test]
    fn roles_allow_what_they_name_and_admin_allows_all() {
        let mint = Roles::of(&[Role::Mint]);
        assert!(mint.allow(Role::Mint));
        assert!(!mint.allow(Role::Resolve));
        assert!(!mint.allow(Role::Admin));
        assert!(!mint.is_admin());
        let admin = Roles::of(&[Role::Admin]);
        for role in [Role::Mint, Role::Resolve, Role::Admin] {
            assert!(admin.allow(role));
        }
        assert!(Roles::of(&[Role::Mint, Role::Resolve]).allow(Role::Resolve));
        assert!(!Roles::default().allow(Role::Resolve));
    }

    #[test]
    fn keys_and_certificates_name_callers() {
        let (a, b) = (
            CallerKey::generate().unwrap(),
            CallerKey::generate().unwrap(),
        );
        let set = CallerSet::from_file(&CallersFile {
            callers: vec![
                entry("adapter-a", &[Role::Mint], &a, &["spiffe://t/a"]),
                entry("host", &[Role::Resolve], &b, &[]),
            ],
            ..CallersFile::default()
        });
        assert_eq!(set.counts(), (2, 2));
        let found = set.authenticate(Some(&bearer(&a)), &[]).unwrap();
        assert_eq!(&*found.name, "adapter-a");
        assert_eq!(found.key_id.as_deref(), Some("adapter-a-key"));
        // Lower-case scheme and stray spaces are fine.
        let lower = format!("bearer  {} ", b.expose());
        assert_eq!(
            &*set.authenticate(Some(lower.as_bytes()), &[]).unwrap().name,
            "host"
        );
        let san = [ClientSan::Uri("spiffe://t/a".into())];
        let by_certificate = set.authenticate(None, &san).unwrap();
        assert_eq!(&*by_certificate.name, "adapter-a");
        assert_eq!(by_certificate.key_id, None);
        // Certificate and key agree, or the call is refused.
        assert!(set.authenticate(Some(&bearer(&a)), &san).is_ok());
        assert_eq!(
            set.authenticate(Some(&bearer(&b)), &san).unwrap_err(),
            AuthFailure::Mismatch
        );
        // A certificate naming two callers names none.
        let both = CallerSet::from_file(&CallersFile {
            callers: vec![
                entry("adapter-a", &[Role::Mint], &a, &["spiffe://t/a"]),
                entry("host", &[Role::Resolve], &b, &["spiffe://t/host"]),
            ],
            ..CallersFile::default()
        });
        let two = [
            ClientSan::Uri("spiffe://t/a".into()),
            ClientSan::Uri("spiffe://t/host".into()),
        ];
        assert_eq!(
            both.authenticate(None, &two).unwrap_err(),
            AuthFailure::AmbiguousCertificate
        );
        assert_eq!(
            both.authenticate(Some(&bearer(&a)), &two).unwrap_err(),
            AuthFailure::AmbiguousCertificate
        );
        // A SAN nobody lists is no identity.
        let stranger = [ClientSan::Dns("spiffe://t/a".into())];
        assert_eq!(
            set.authenticate(None, &stranger).unwrap_err(),
            AuthFailure::Missing
        );
    }

    #[test]
    fn bad_credentials_are_told_apart() {
        let key = CallerKey::generate().unwrap();
        let set = CallerSet::from_file(&CallersFile {
            callers: vec![entry("a", &[Role::Mint], &key, &[])],
            ..CallersFile::default()
        });
        let refuse = |value: &[u8]| set.authenticate(Some(value), &[]).unwrap_err();
        assert_eq!(
            set.authenticate(None, &[]).unwrap_err(),
            AuthFailure::Missing
        );
        assert_eq!(refuse(key.expose().as_bytes()), AuthFailure::NotBearer);
        assert_eq!(
            refuse(format!("Basic {}", key.expose()).as_bytes()),
            AuthFailure::NotBearer
        );
        assert_eq!(refuse(b"Bearer \xff\xfe"), AuthFailure::NotBearer);
        assert_eq!(
            refuse(format!("Bearer {}", Token::generate().expose()).as_bytes()),
            AuthFailure::Malformed(MalformedKey::CredentialToken)
        );
        let other = CallerKey::generate().unwrap();
        assert_eq!(refuse(&bearer(&other)), AuthFailure::UnknownKey);
        let typo = format!("Bearer {}x", &key.expose()[..key.expose().len() - 1]);
        assert_eq!(
            refuse(typo.as_bytes()),
            AuthFailure::Malformed(MalformedKey::Checksum)
        );
    }

    #[test]
    fn a_reload_replaces_the_callers_for_the_next_call() {
        let (old, new) = (
            CallerKey::generate().unwrap(),
            CallerKey::generate().unwrap(),
        );
        let auth = Authenticator::new(CallerSet::from_file(&CallersFile {
            callers: vec![entry("a", &[Role::Mint], &old, &[])],
            ..CallersFile::default()
        }));
        assert!(auth.authenticate(Some(&bearer(&old)), &[]).is_ok());
        assert!(auth.replace(CallerSet::from_file(&CallersFile {
            callers: vec![entry("a", &[Role::Mint], &new, &[])],
            ..CallersFile::default()
        })));
        assert_eq!(
            auth.authenticate(Some(&bearer(&old)), &[]).unwrap_err(),
            AuthFailure::UnknownKey
        );
        assert!(auth.authenticate(Some(&bearer(&new)), &[]).is_ok());
        let insecure = Authenticator::insecure();
        assert!(insecure.authenticate(None, &[]).unwrap().roles.is_admin());
        assert!(!insecure.replace(CallerSet::default()));
    }
}
