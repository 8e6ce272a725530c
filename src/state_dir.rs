//! The state directory: where the callers file and the first admin key
//! live, private to the user the authority runs as.
//!
//! The server and `callers` resolve it the same way
//! ([`default_state_dir`]), so `callers add` edits the file the server
//! reads. On a first start, [`bootstrap`] creates an admin key and a callers
//! file naming it, so a fresh install is usable without hand-editing.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use crate::auth::file::{add_caller, new_key_id, CallersFileError, Role};
use crate::auth::key::{self, CallerKey, MalformedKey};

/// The callers file's name inside the state directory.
pub const CALLERS_FILE: &str = "callers.toml";
/// The first admin key's file inside the state directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// The directory under `$XDG_STATE_HOME` (or `~/.local/state`).
const APP_DIR: &str = "credential-authority";

/// Why the state directory cannot be found, made private or bootstrapped.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Neither `XDG_STATE_HOME` nor `HOME` is an absolute path.
    #[error(
        "no state directory: neither XDG_STATE_HOME nor HOME is an absolute path; set one, \
         or pass --state-dir"
    )]
    NoHome,
    /// A file-system operation failed.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. "create".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The path exists and is not a directory.
    #[error("state directory {} is not a directory", .path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Someone else owns the directory, so they could swap its files.
    #[error(
        "state directory {} is owned by uid {owner}, not by this process's user (uid {euid}): \
         chown it, or pick another directory",
        .path.display()
    )]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// Group or others may enter the directory, so they could read keys or
    /// swap the callers file.
    #[error(
        "state directory {} has mode {mode:04o}, so group or others may use it: \
         run `chmod 700 {}`",
        .path.display(), .path.display()
    )]
    NotPrivate {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The operating system's random source failed.
    #[error("cannot generate the admin key: {0}")]
    KeyGeneration(rand::rand_core::OsError),
    /// A leftover admin key file does not hold a key (never its contents).
    #[error(
        "{} holds no valid caller key ({source}); remove it to have a new admin key generated",
        .path.display()
    )]
    AdminKey {
        /// The admin key file.
        path: PathBuf,
        /// What is wrong with its contents.
        source: MalformedKey,
    },
    /// Writing the first callers file failed.
    #[error(transparent)]
    Callers(#[from] CallersFileError),
}

/// `$XDG_STATE_HOME/credential-authority` when `XDG_STATE_HOME` is set and
/// absolute (the XDG spec says to ignore a relative one), else
/// `$HOME/.local/state/credential-authority`.
pub fn default_state_dir() -> Result<PathBuf, StateDirError> {
    state_dir_from(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

/// [`default_state_dir`] from given values, so tests need not change the
/// process environment.
fn state_dir_from(
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, StateDirError> {
    let absolute = |value: Option<OsString>| value.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(state) = absolute(xdg_state_home) {
        return Ok(state.join(APP_DIR));
    }
    absolute(home)
        .map(|home| home.join(".local").join("state").join(APP_DIR))
        .ok_or(StateDirError::NoHome)
}

/// Creates `path` if missing (parents as usual, the directory itself with
/// mode 0700), then refuses it unless this process's effective user owns
/// it and group and others have no access.
///
/// The parents are created here, not in the shared `private_dir`: the state
/// directory's default lives under `~/.local/state`, which a fresh account
/// may not have yet, while a socket directory must not grow a tree of
/// directories from a typo.
pub fn ensure_private_dir(path: &Path) -> Result<(), StateDirError> {
    if let Err(error) = fs::metadata(path) {
        if error.kind() == io::ErrorKind::NotFound {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(|source| StateDirError::Io {
                    action: "create the parents of",
                    path: path.to_owned(),
                    source,
                })?;
            }
        }
    }
    private_dir(path)
        .map(drop)
        .map_err(|problem| StateDirError::from_dir(path, problem))
}

impl StateDirError {
    /// The state directory's wording of a [`DirProblem`] at `path`.
    fn from_dir(path: &Path, problem: DirProblem) -> StateDirError {
        let path = path.to_owned();
        match problem {
            DirProblem::Io { action, source } => StateDirError::Io {
                action,
                path,
                source,
            },
            DirProblem::NotADirectory => StateDirError::NotADirectory { path },
            DirProblem::NotOwned { owner, euid } => StateDirError::NotOwned { path, owner, euid },
            DirProblem::NotPrivate { mode } => StateDirError::NotPrivate { path, mode },
        }
    }
}

/// Why [`private_dir`] refused a directory; each user (the state directory,
/// the socket directory) words it in its own error type, so the message
/// says which directory it is and what it is for.
#[derive(Debug)]
pub(crate) enum DirProblem {
    /// Inspecting or creating it failed.
    Io {
        /// What was being done, e.g. "create".
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// The path exists and is not a directory.
    NotADirectory,
    /// Another uid owns it, so it could swap or read the entries.
    NotOwned {
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// Group or others have some access to it.
    NotPrivate {
        /// Its permission bits (with setuid, setgid and sticky).
        mode: u32,
    },
}

/// Makes `path` a directory only this process's effective uid may use:
/// creates its last component with mode 0700 if it is missing (never the
/// parents, see [`ensure_private_dir`]), then refuses it unless it is a
/// directory owned by the effective uid with `mode & 0o077 == 0`. Returns
/// whether it created the directory, for callers that log it.
///
/// The rule is strict on purpose (no group access, not even a root-owned
/// directory unless we are root): what these directories guard (the admin
/// key, the socket) is reached by whoever can enter them, and binding or
/// writing inside a directory that is already private leaves no window a
/// chmod afterwards would. A directory someone else created first (the
/// mkdir lost a race) is checked like any other.
pub(crate) fn private_dir(path: &Path) -> Result<bool, DirProblem> {
    let io = |action| move |source| DirProblem::Io { action, source };
    let created = match fs::metadata(path) {
        Ok(_) => false,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            match DirBuilder::new().mode(0o700).create(path) {
                // Explicitly, in case the umask took owner bits away.
                Ok(()) => {
                    fs::set_permissions(path, Permissions::from_mode(0o700))
                        .map_err(io("set the mode of"))?;
                    true
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => false,
                Err(error) => return Err(io("create")(error)),
            }
        }
        Err(error) => return Err(io("inspect")(error)),
    };
    let meta = fs::metadata(path).map_err(io("inspect"))?;
    if !meta.is_dir() {
        return Err(DirProblem::NotADirectory);
    }
    let euid = euid();
    if meta.uid() != euid {
        return Err(DirProblem::NotOwned {
            owner: meta.uid(),
            euid,
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(DirProblem::NotPrivate {
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(created)
}

/// This process's effective uid: the one owner every private directory
/// and callers file is compared with. The one `unsafe` block for it.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What [`bootstrap`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// The callers file to load.
    pub callers_path: PathBuf,
    /// The admin key file, when its key has not been announced yet: this
    /// call created it, or recovered it after a crash before the callers
    /// file was written. The caller logs this path (never the key).
    pub admin_key_path: Option<PathBuf>,
}

/// Makes the state directory ready: private, with a callers file. A
/// present callers file is used as is; otherwise an admin key is generated
/// into `admin.key` (0600) and a callers file is written with caller
/// `admin` (role admin) holding its digest. Never logs or prints the key.
pub fn bootstrap(state_dir: &Path) -> Result<Bootstrap, StateDirError> {
    ensure_private_dir(state_dir)?;
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| StateDirError::Io {
            action,
            path,
            source,
        }
    };
    let callers_path = state_dir.join(CALLERS_FILE);
    let key_path = state_dir.join(ADMIN_KEY_FILE);
    match fs::symlink_metadata(&callers_path) {
        Ok(_) => {
            return Ok(Bootstrap {
                callers_path,
                admin_key_path: None,
            })
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io("inspect", &callers_path)(error)),
    }
    let digest = match fs::read_to_string(&key_path) {
        // A crash came between the two writes: the key was never announced.
        Ok(text) => key::parse(text.trim_end()).map_err(|source| StateDirError::AdminKey {
            path: key_path.clone(),
            source,
        })?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let key = CallerKey::generate().map_err(StateDirError::KeyGeneration)?;
            let mut text = key.expose().to_owned();
            text.push('\n');
            write_new_private(&key_path, text.as_bytes()).map_err(io("write", &key_path))?;
            sync_dir(state_dir).map_err(io("fsync", state_dir))?;
            key.digest()
        }
        Err(error) => return Err(io("read", &key_path)(error)),
    };
    add_caller(
        &callers_path,
        "admin",
        &[Role::Admin],
        &new_key_id(),
        &digest,
    )?;
    sync_dir(state_dir).map_err(io("fsync", state_dir))?;
    Ok(Bootstrap {
        callers_path,
        admin_key_path: Some(key_path),
    })
}

/// Creates `path` (refusing an existing one) with mode 0600 and `bytes`,
/// fsynced.
fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replaces `path` with `bytes` atomically: a 0600 temporary file in the
/// same directory, written and fsynced, renamed over the target, then the
/// directory fsynced. A reader sees the old file or the new one, never
/// half of one; on failure the target is untouched.
pub(crate) fn write_private_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path.file_name().ok_or(io::ErrorKind::InvalidInput)?;
    let temp = dir.join(format!(
        ".{}.{:08x}.tmp",
        name.to_string_lossy(),
        rand::random::<u32>()
    ));
    let written = write_new_private(&temp, bytes).and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written.and_then(|()| sync_dir(dir))
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Makes a directory's entries (a new file, a rename) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::file::load;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn xdg_state_home_wins_when_absolute_else_home() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            state_dir_from(os("/xdg/state"), os("/home/u")).unwrap(),
            PathBuf::from("/xdg/state/credential-authority")
        );
        let from_home = PathBuf::from("/home/u/.local/state/credential-authority");
        assert_eq!(state_dir_from(None, os("/home/u")).unwrap(), from_home);
        assert_eq!(
            state_dir_from(os("relative"), os("/home/u")).unwrap(),
            from_home
        );
        assert_eq!(state_dir_from(os(""), os("/home/u")).unwrap(), from_home);
        assert!(matches!(
            state_dir_from(None, None),
            Err(StateDirError::NoHome)
        ));
        assert!(matches!(
            state_dir_from(os("x"), os("home")),
            Err(StateDirError::NoHome)
        ));
    }

    #[test]
    fn private_dirs_are_created_0700_and_open_ones_refused() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("a/b/state");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        ensure_private_dir(&dir).unwrap();

        let open = temp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, Permissions::from_mode(0o755)).unwrap();
        let error = ensure_private_dir(&open).unwrap_err();
        assert!(
            matches!(error, StateDirError::NotPrivate { mode: 0o755, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("chmod 700"), "{error}");

        let file = temp.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            ensure_private_dir(&file),
            Err(StateDirError::NotADirectory { .. })
        ));
    }

    #[test]
    fn the_shared_check_creates_only_the_last_component_and_says_so() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("run");
        assert!(private_dir(&dir).unwrap(), "created");
        assert_eq!(mode(&dir), 0o700);
        assert!(!private_dir(&dir).unwrap(), "already there");
        let deep = temp.path().join("a/b");
        assert!(matches!(
            private_dir(&deep),
            Err(DirProblem::Io {
                action: "create",
                ..
            })
        ));
        assert!(!temp.path().join("a").exists());
        fs::set_permissions(&dir, Permissions::from_mode(0o710)).unwrap();
        assert!(matches!(
            private_dir(&dir),
            Err(DirProblem::NotPrivate { mode: 0o710 })
        ));
        fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
        // Only root can hand a directory to another uid.
        if euid() == 0 {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            assert!(matches!(
                private_dir(&dir),
                Err(DirProblem::NotOwned {
                    owner: 65534,
                    euid: 0
                })
            ));
            let error = ensure_private_dir(&dir).unwrap_err().to_string();
            assert!(error.contains("owned by uid 65534"), "{error}");
        }
    }

    #[test]
    fn bootstrap_creates_an_admin_key_and_its_caller_then_changes_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let state = temp.path().join("state");
        let first = bootstrap(&state).unwrap();
        let key_path = state.join(ADMIN_KEY_FILE);
        assert_eq!(first.callers_path, state.join(CALLERS_FILE));
        assert_eq!(first.admin_key_path.as_deref(), Some(key_path.as_path()));
        assert_eq!(
            (mode(&state), mode(&key_path), mode(&first.callers_path)),
            (0o700, 0o600, 0o600)
        );

        let key_text = fs::read_to_string(&key_path).unwrap();
        assert!(key_text.ends_with('\n'));
        let digest = key::parse(key_text.trim_end()).unwrap();
        let file = load(&first.callers_path).unwrap();
        assert_eq!(file.callers.len(), 1);
        let admin = &file.callers[0];
        assert_eq!(
            (admin.name.as_str(), admin.roles.as_slice()),
            ("admin", &[Role::Admin][..])
        );
        assert_eq!(admin.keys.len(), 1);
        assert_eq!(admin.keys[0].digest, digest);
        assert!(admin.keys[0].id.starts_with("key-"));

        let callers_before = fs::read(&first.callers_path).unwrap();
        let second = bootstrap(&state).unwrap();
        assert_eq!(second.admin_key_path, None);
        assert_eq!(fs::read(&first.callers_path).unwrap(), callers_before);
        assert_eq!(fs::read_to_string(&key_path).unwrap(), key_text);
    }

    #[test]
    fn bootstrap_recovers_when_only_the_admin_key_was_written() {
        let temp = tempfile::tempdir().unwrap();
        let state = temp.path().join("state");
        ensure_private_dir(&state).unwrap();
        let key = CallerKey::generate().unwrap();
        let key_path = state.join(ADMIN_KEY_FILE);
        write_new_private(&key_path, format!("{}\n", key.expose()).as_bytes()).unwrap();

        let recovered = bootstrap(&state).unwrap();
        assert_eq!(
            recovered.admin_key_path.as_deref(),
            Some(key_path.as_path())
        );
        let file = load(&recovered.callers_path).unwrap();
        assert_eq!(file.callers[0].keys[0].digest, key.digest());
        assert_eq!(
            fs::read_to_string(&key_path).unwrap().trim_end(),
            key.expose()
        );
    }

    #[test]
    fn a_corrupt_admin_key_is_refused_without_showing_it() {
        let temp = tempfile::tempdir().unwrap();
        let state = temp.path().join("state");
        ensure_private_dir(&state).unwrap();
        let key = CallerKey::generate().unwrap();
        let truncated = &key.expose()[..30];
        write_new_private(&state.join(ADMIN_KEY_FILE), truncated.as_bytes()).unwrap();
        let error = bootstrap(&state).unwrap_err();
        assert!(matches!(error, StateDirError::AdminKey { .. }), "{error}");
        assert!(!error.to_string().contains(truncated), "{error}");
        assert!(!state.join(CALLERS_FILE).exists());
    }

    #[test]
    fn atomic_writes_replace_the_file_at_0600_and_leave_no_temporary() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("f");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        write_private_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_dir(temp.path()).unwrap().count(), 1);
    }
}
