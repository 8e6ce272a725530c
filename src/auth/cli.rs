//! `callers`: add callers and keys, rotate and remove keys, list callers.
//!
//! It edits the file the server reads: `--callers`, or else `callers.toml`
//! in the state directory, resolved exactly as the server resolves them. A
//! new key is printed once and only its digest is written; a running server
//! picks changes up on SIGHUP. Only `add` and `add-key` create anything (the
//! state directory with its admin key, as the first `serve` would, or an
//! explicit file's directory); `list` and `remove-key` need a file to exist.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use super::file::{self, CallersFile, CallersFileError, Role};
use super::key::CallerKey;
use super::quota::CallerQuota;
use crate::state_dir::{self, euid, parent_dir, StateDirError, CALLERS_FILE};

/// The `callers` subcommand: what to do, and which file to do it to.
#[derive(Debug, clap::Args)]
pub struct CallersArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CallersCommand,

    /// The callers file; takes precedence over --state-dir.
    #[arg(
        long,
        value_name = "PATH",
        env = "CREDENTIAL_AUTHORITY_CALLERS",
        global = true
    )]
    pub callers: Option<PathBuf>,

    /// The state directory, whose callers.toml is edited unless --callers
    /// is given [default: $XDG_STATE_HOME/credential-authority, else
    /// ~/.local/state/credential-authority].
    #[arg(
        long,
        value_name = "DIR",
        env = "CREDENTIAL_AUTHORITY_STATE_DIR",
        global = true
    )]
    pub state_dir: Option<PathBuf>,
}

/// The `callers` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CallersCommand {
    /// Add a caller with a new key, and print the key once.
    Add {
        /// The caller's name (1-64 of A-Z a-z 0-9 _ . -), shown in logs.
        name: String,
        /// What it may do: mint, resolve, admin (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<Role>,
    },
    /// Give an existing caller a new key, and print it once. To rotate: add
    /// a key, move the caller to it, then remove the old one.
    AddKey {
        /// The caller's name.
        name: String,
    },
    /// Remove one key of a caller.
    RemoveKey {
        /// The caller's name.
        name: String,
        /// The key's id, as `callers list` shows it.
        key_id: String,
    },
    /// List callers with their roles, key ids and SANs (never keys or
    /// digests).
    List,
}

/// Why a `callers` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The callers file could not be read, or the edit was refused.
    #[error(transparent)]
    File(#[from] CallersFileError),
    /// The state directory could not be found or is not private.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// `list` or `remove-key` found no callers file: those commands only
    /// read or shrink one, so they never create it (nor a state directory
    /// and an admin key) as a side effect.
    #[error("there is no callers file at {} yet: {how}", .path.display())]
    NoCallersFile {
        /// Where it was looked for.
        path: PathBuf,
        /// How to create one.
        how: String,
    },
    /// The operating system's random source failed.
    #[error("cannot generate a caller key: {0}")]
    KeyGeneration(rand::rand_core::OsError),
    /// The key was written to the file, but printing it failed: nobody has
    /// it, so it should be removed.
    #[error(
        "key `{key_id}` was added to caller `{name}` but could not be printed ({source}): \
         remove it with `callers remove-key {name} {key_id}` and add another"
    )]
    KeyNotShown {
        /// The caller.
        name: String,
        /// The id of the key nobody has.
        key_id: String,
        /// Why printing failed.
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
}

/// Runs a `callers` command, writing what it has to say (a new key, the
/// list, warnings) to `out`.
pub fn run(args: &CallersArgs, out: &mut dyn Write) -> Result<(), CliError> {
    match &args.command {
        CallersCommand::Add { name, roles } => {
            let path = callers_path(args, out)?;
            let key = CallerKey::generate().map_err(CliError::KeyGeneration)?;
            let key_id = file::new_key_id();
            file::add_caller(&path, name, roles, &key_id, &key.digest())?;
            show_key(out, name, &key_id, &key)
        }
        CallersCommand::AddKey { name } => {
            let path = callers_path(args, out)?;
            let key = CallerKey::generate().map_err(CliError::KeyGeneration)?;
            let key_id = file::new_key_id();
            file::add_key(&path, name, &key_id, &key.digest())?;
            show_key(out, name, &key_id, &key)
        }
        CallersCommand::RemoveKey { name, key_id } => {
            file::remove_key(&existing_callers_path(args)?, name, key_id)?;
            writeln!(
                out,
                "Removed key {key_id} of caller {name}. A running server stops accepting it on \
                 SIGHUP (kill -HUP <pid>)."
            )
            .map_err(CliError::Output)
        }
        CallersCommand::List => {
            let file = file::load(&existing_callers_path(args)?)?;
            list(&file, out).map_err(CliError::Output)
        }
    }
}

/// `--state-dir`, else the default the server uses too.
fn state_dir_of(args: &CallersArgs) -> Result<PathBuf, CliError> {
    match &args.state_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(state_dir::default_state_dir()?),
    }
}

/// The callers file for `add` and `add-key`, which write it: `--callers`,
/// else `callers.toml` in the state directory, which must be private (and
/// is created so). An explicit file's directory is created private if
/// missing; if it exists and is one [`load`](file::load) would refuse, a
/// warning goes to `out`.
fn callers_path(args: &CallersArgs, out: &mut dyn Write) -> Result<PathBuf, CliError> {
    let Some(path) = &args.callers else {
        let dir = state_dir_of(args)?;
        // The same first start as the server's: a state directory's callers
        // file always begins with its admin key, so that adding a caller
        // before the first `serve` does not leave the server without one.
        let bootstrap = state_dir::bootstrap(&dir)?;
        if let Some(admin_key) = &bootstrap.admin_key_path {
            writeln!(
                out,
                "First use of {}: wrote the admin caller key to {} (read it with \
                 `export CA_KEY=$(cat {})`).",
                dir.display(),
                admin_key.display(),
                admin_key.display()
            )
            .map_err(CliError::Output)?;
        }
        return Ok(bootstrap.callers_path);
    };
    // Through a link, the file written is its target, in its directory.
    let real = fs::canonicalize(path).unwrap_or_else(|_| path.clone());
    let dir = parent_dir(&real);
    match fs::metadata(dir) {
        Ok(meta) => {
            if let Some(exposure) = file::dir_exposure(dir, meta.uid(), meta.mode(), euid()) {
                writeln!(
                    out,
                    "warning: callers file {}: {}; {}. Until then the server refuses to load it.",
                    path.display(),
                    exposure.problem,
                    exposure.fix
                )
                .map_err(CliError::Output)?
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            state_dir::ensure_private_dir(dir)?
        }
        Err(source) => {
            return Err(StateDirError::Io {
                action: "inspect",
                path: dir.to_owned(),
                source,
            }
            .into())
        }
    }
    Ok(path.clone())
}

/// The callers file for `list` and `remove-key`, which must find one:
/// resolved like [`callers_path`], but nothing is created. A missing file
/// is [`CliError::NoCallersFile`], saying how to make one; the state
/// directory of an existing one must still be private.
fn existing_callers_path(args: &CallersArgs) -> Result<PathBuf, CliError> {
    let (path, dir) = match &args.callers {
        Some(path) => (path.clone(), None),
        None => {
            let dir = state_dir_of(args)?;
            (dir.join(CALLERS_FILE), Some(dir))
        }
    };
    // A dangling link is not "no file": `load` names it.
    match fs::symlink_metadata(&path) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let how = match &dir {
                Some(dir) => format!(
                    "add the first caller with `callers add NAME --roles ...`, which also \
                     creates the state directory {} and its admin key, or start the server \
                     once (`credential-authority serve`), which does the same",
                    dir.display()
                ),
                None => format!(
                    "create it with `callers add NAME --roles ... --callers {}`",
                    path.display()
                ),
            };
            return Err(CliError::NoCallersFile { path, how });
        }
        Err(source) => {
            return Err(CallersFileError::Io {
                action: "read callers file",
                path,
                source,
            }
            .into())
        }
    }
    if let Some(dir) = &dir {
        // It exists (it holds the file), so this creates nothing.
        state_dir::ensure_private_dir(dir)?;
    }
    Ok(path)
}

/// Prints a new key, the only time it is ever shown.
fn show_key(
    out: &mut dyn Write,
    name: &str,
    key_id: &str,
    key: &CallerKey,
) -> Result<(), CliError> {
    writeln!(
        out,
        "New key {key_id} for caller {name}:\n{}\nStore it now: it cannot be shown again (the \
         file keeps only its digest). A running server picks it up on SIGHUP (kill -HUP <pid>).",
        key.expose()
    )
    .and_then(|()| out.flush())
    .map_err(|source| CliError::KeyNotShown {
        name: name.to_owned(),
        key_id: key_id.to_owned(),
        source,
    })
}

/// One row per caller: name, roles, key ids, quotas in force, SANs (`URI:`/`DNS:` as
/// certificates show them). Never a key or a digest.
fn list(file: &CallersFile, out: &mut dyn Write) -> io::Result<()> {
    if file.callers.is_empty() {
        return writeln!(
            out,
            "No callers yet; add one with `callers add NAME --roles ...`."
        );
    }
    let join = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(",")
        }
    };
    let mut rows = vec![["NAME", "ROLES", "KEY IDS", "QUOTA", "SANS"].map(str::to_owned)];
    for caller in &file.callers {
        // What is in force, defaults included, so nobody has to work it out.
        let quota = CallerQuota::new(file.quota_of(caller));
        let quota = format!(
            "{} live, {}/s burst {}",
            quota.max_live_credentials, quota.mint_rate.per_second, quota.mint_rate.burst
        );
        let sans = caller.uri_sans.iter().map(|san| format!("URI:{san}"));
        let sans = sans.chain(caller.dns_sans.iter().map(|san| format!("DNS:{san}")));
        rows.push([
            caller.name.clone(),
            join(
                caller
                    .roles
                    .iter()
                    .map(|role| role.as_str().to_owned())
                    .collect(),
            ),
            join(caller.keys.iter().map(|key| key.id.clone()).collect()),
            quota,
            join(sans.collect()),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|row| row[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::key;
    use clap::Parser as _;
    use std::os::unix::fs::PermissionsExt as _;

    /// Only for parsing arguments in tests, as the binary will.
    #[derive(Debug, clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        args: CallersArgs,
    }

    fn args(path: &std::path::Path, command: CallersCommand) -> CallersArgs {
        CallersArgs {
            command,
            callers: Some(path.to_owned()),
            state_dir: None,
        }
    }

    /// Runs `command` and returns its output.
    fn output(path: &std::path::Path, command: CallersCommand) -> String {
        let mut out = Vec::new();
        run(&args(path, command), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The key printed in an `add`/`add-key` output, with its id.
    fn printed_key(text: &str) -> (String, String) {
        let key = text
            .lines()
            .find(|l| l.starts_with(key::CALLER_KEY_PREFIX))
            .expect("no key printed");
        let id = text
            .split_whitespace()
            .find(|w| w.starts_with("key-"))
            .expect("no key id printed");
        (key.to_owned(), id.to_owned())
    }

    #[test]
    fn add_prints_a_key_whose_digest_alone_is_in_the_file() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("callers.toml");
        let add = CallersCommand::Add {
            name: "claude".into(),
            roles: vec![Role::Mint, Role::Resolve],
        };
        let text = output(&path, add);
        let (key, key_id) = printed_key(&text);
        assert!(
            text.contains("cannot be shown again") && text.contains("kill -HUP <pid>"),
            "{text}"
        );
        let digest = key::parse(&key).expect("the printed key parses");
        let file = file::load(&path).unwrap();
        assert_eq!(file.callers[0].name, "claude");
        assert_eq!(file.callers[0].roles, [Role::Mint, Role::Resolve]);
        assert_eq!(
            file.callers[0].keys,
            [file::KeyEntry { id: key_id, digest }]
        );
        let stored = fs::read_to_string(&path).unwrap();
        assert!(!stored.contains(&key[6..]) && stored.contains(&digest.to_hex()));
    }

    #[test]
    fn list_shows_names_roles_key_ids_and_sans_but_no_digest() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("callers.toml");
        output(
            &path,
            CallersCommand::Add {
                name: "adapter".into(),
                roles: vec![Role::Mint],
            },
        );
        output(
            &path,
            CallersCommand::Add {
                name: "ops".into(),
                roles: vec![Role::Admin, Role::Resolve],
            },
        );
        let mut text = fs::read_to_string(&path).unwrap();
        text = text.replacen(
            "name = \"adapter\"",
            "name = \"adapter\"\ndns_sans = [\"adapter.internal\"]",
            1,
        );
        fs::write(&path, text).unwrap();
        let file = file::load(&path).unwrap();
        let listed = output(&path, CallersCommand::List);
        for needle in [
            "NAME",
            "adapter",
            "ops",
            "mint",
            "admin,resolve",
            "DNS:adapter.internal",
        ] {
            assert!(listed.contains(needle), "`{needle}` missing:\n{listed}");
        }
        for key in file.callers.iter().flat_map(|c| &c.keys) {
            assert!(listed.contains(&key.id), "{listed}");
            assert!(
                !listed.contains(&key.digest.to_hex()[..16]),
                "digest listed:\n{listed}"
            );
        }
        fs::write(&path, "").unwrap();
        assert!(output(&path, CallersCommand::List).contains("No callers yet"));
    }

    #[test]
    fn rotation_adds_a_key_then_removes_the_old_one() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("callers.toml");
        let (_, old_id) = printed_key(&output(
            &path,
            CallersCommand::Add {
                name: "a".into(),
                roles: vec![Role::Mint],
            },
        ));
        let (new_key, new_id) =
            printed_key(&output(&path, CallersCommand::AddKey { name: "a".into() }));
        assert_ne!(old_id, new_id);
        let removed = output(
            &path,
            CallersCommand::RemoveKey {
                name: "a".into(),
                key_id: old_id.clone(),
            },
        );
        assert!(removed.contains(&old_id), "{removed}");
        let keys = &file::load(&path).unwrap().callers[0].keys;
        assert_eq!(
            keys,
            &[file::KeyEntry {
                id: new_id.clone(),
                digest: key::parse(&new_key).unwrap()
            }]
        );
        // The last key stays: without it the caller could not authenticate.
        let last = CallersCommand::RemoveKey {
            name: "a".into(),
            key_id: new_id,
        };
        let error = run(&args(&path, last), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(error.contains("could no longer authenticate"), "{error}");
        let unknown = CallersCommand::AddKey { name: "b".into() };
        assert!(run(&args(&path, unknown), &mut Vec::new()).is_err());
    }

    #[test]
    fn the_state_dir_is_made_private_and_holds_the_file() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("state");
        let add = CallersArgs {
            command: CallersCommand::Add {
                name: "a".into(),
                roles: vec![Role::Mint],
            },
            callers: None,
            state_dir: Some(dir.clone()),
        };
        let mut out = Vec::new();
        run(&add, &mut out).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // The first use made the admin the server would have made, and said
        // where its key is.
        let callers = file::load(&dir.join(CALLERS_FILE)).unwrap().callers;
        let names: Vec<&str> = callers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["admin", "a"]);
        let admin_key = dir.join(crate::state_dir::ADMIN_KEY_FILE);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains(&admin_key.display().to_string()));
        // A second use adds only what it is asked to.
        let mut out = Vec::new();
        run(
            &CallersArgs {
                command: CallersCommand::Add {
                    name: "b".into(),
                    roles: vec![Role::Resolve],
                },
                callers: None,
                state_dir: Some(dir.clone()),
            },
            &mut out,
        )
        .unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("admin"));
        assert_eq!(
            file::load(&dir.join(CALLERS_FILE)).unwrap().callers.len(),
            3
        );
    }

    /// Catches: `callers list` or `remove-key` creating a state directory
    /// and an admin key (or an explicit file's directory) as a side effect
    /// of a command that only reads or shrinks the file.
    #[test]
    fn list_and_remove_key_create_nothing_and_say_how_to_start() {
        let temp = tempfile::tempdir().unwrap();
        let state = temp.path().join("state");
        let explicit = temp.path().join("etc/callers.toml");
        let commands = || {
            [
                CallersCommand::List,
                CallersCommand::RemoveKey {
                    name: "admin".into(),
                    key_id: "key-1".into(),
                },
            ]
        };
        for command in commands() {
            let by_state_dir = CallersArgs {
                command,
                callers: None,
                state_dir: Some(state.clone()),
            };
            let mut out = Vec::new();
            let error = run(&by_state_dir, &mut out).unwrap_err();
            assert!(matches!(error, CliError::NoCallersFile { .. }), "{error}");
            let message = error.to_string();
            for needle in [
                "no callers file",
                &state.join(CALLERS_FILE).display().to_string(),
                "callers add",
                "serve",
            ] {
                assert!(message.contains(needle), "`{needle}` missing: {message}");
            }
            assert!(out.is_empty());
            assert!(!state.exists(), "{message}");
        }
        for command in commands() {
            let error = run(&args(&explicit, command), &mut Vec::new()).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, CliError::NoCallersFile { .. }), "{message}");
            assert!(
                message.contains(&format!("--callers {}", explicit.display())),
                "{message}"
            );
            assert!(!temp.path().join("etc").exists(), "{message}");
        }
        // Once `add` made the state directory, both work on it.
        run(
            &CallersArgs {
                command: CallersCommand::Add {
                    name: "a".into(),
                    roles: vec![Role::Mint],
                },
                callers: None,
                state_dir: Some(state.clone()),
            },
            &mut Vec::new(),
        )
        .unwrap();
        let mut out = Vec::new();
        let list = CallersArgs {
            command: CallersCommand::List,
            callers: None,
            state_dir: Some(state.clone()),
        };
        run(&list, &mut out).unwrap();
        let listed = String::from_utf8(out).unwrap();
        assert!(
            listed.contains("admin") && listed.contains("mint"),
            "{listed}"
        );
        // ... and still refuse a state directory that is no longer private.
        fs::set_permissions(&state, fs::Permissions::from_mode(0o750)).unwrap();
        let error = run(&list, &mut Vec::new()).unwrap_err().to_string();
        assert!(error.contains("chmod 700"), "{error}");
    }

    #[test]
    fn an_explicit_file_in_an_open_directory_is_written_with_a_warning() {
        let temp = tempfile::tempdir().unwrap();
        let open = temp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let path = open.join("callers.toml");
        let text = output(
            &path,
            CallersCommand::Add {
                name: "a".into(),
                roles: vec![Role::Mint],
            },
        );
        assert!(
            text.starts_with("warning:") && text.contains("chmod go-w"),
            "{text}"
        );
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // The warning and the server apply one rule.
        assert!(text.contains("refuses to load it"), "{text}");
        let refused = file::load(&path).unwrap_err();
        assert!(
            matches!(refused, CallersFileError::Insecure { .. }),
            "{refused}"
        );
        // A sticky directory (/tmp) is fine for both.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        file::load(&path).unwrap();
        let sticky = output(&path, CallersCommand::AddKey { name: "a".into() });
        assert!(!sticky.contains("warning"), "{sticky}");
        let quiet = output(
            &temp.path().join("callers.toml"),
            CallersCommand::Add {
                name: "a".into(),
                roles: vec![Role::Mint],
            },
        );
        assert!(!quiet.contains("warning"), "{quiet}");
    }

    #[test]
    fn roles_are_given_comma_separated_or_repeated() {
        let parse = |argv: &[&str]| TestCli::try_parse_from(argv).map(|cli| cli.args.command);
        for argv in [
            &["t", "add", "x", "--roles", "mint,resolve"][..],
            &["t", "add", "x", "--roles", "mint", "--roles", "resolve"],
        ] {
            match parse(argv).unwrap() {
                CallersCommand::Add { name, roles } => assert_eq!(
                    (name.as_str(), roles),
                    ("x", vec![Role::Mint, Role::Resolve])
                ),
                other => panic!("{other:?}"),
            }
        }
        assert!(parse(&["t", "add", "x"]).is_err(), "roles are required");
        let error = parse(&["t", "add", "x", "--roles", "mint,root"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown role `root`"), "{error}");
        let cli =
            TestCli::try_parse_from(["t", "remove-key", "x", "key-1", "--callers", "/c.toml"])
                .unwrap();
        assert_eq!(
            cli.args.callers.as_deref(),
            Some(std::path::Path::new("/c.toml"))
        );
    }
}
