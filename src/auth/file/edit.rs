//! Edits of the callers file: through `toml_edit`, so every comment and
//! the layout of a hand-edited file survive; the result is checked with
//! [`parse`] and replaces the file atomically, or nothing is written.

use std::fs;
use std::io;
use std::path::Path;

use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use super::{
    is_ident, parse, read_trusted, scrub, with_path, CallersFile, CallersFileError, KeyDigest,
    Role, IDENT_RULE,
};
use crate::state_dir::write_private_atomic;

/// The header of a file `callers add` creates.
pub(super) const HEADER: &str = "\
# Who may call the credential authority. Keys are stored as SHA-256 digests only:
# a key is shown once, by `credential-authority callers add` or `add-key`, and
# cannot be shown again. A running server rereads this file on SIGHUP.
#
# [[caller]]
# name = \"claude-adapter\"                     # 1-64 of A-Z a-z 0-9 _ . -, unique
# roles = [\"mint\"]                            # mint | resolve | admin
# uri_sans = [\"spiffe://example.org/claude\"]  # optional: client-certificate URI SANs (mTLS)
# dns_sans = [\"claude-adapter.internal\"]      # optional: client-certificate DNS SANs
# [[caller.key]]
# id = \"key-3f9a1c2e\"                         # non-secret key id, shown in logs and audit lines
# sha256 = \"<64 lowercase hex digits>\"        # SHA-256 of the key
";

/// Adds caller `name` with `roles` and one key; creates the file (with a
/// header explaining the format) if it is missing. Refuses an existing name.
pub fn add_caller(
    path: &Path,
    name: &str,
    roles: &[Role],
    key_id: &str,
    digest: &KeyDigest,
) -> Result<(), CallersFileError> {
    edit(path, true, |doc, file| {
        if !is_ident(name) {
            return Err(format!("caller name `{name}`: a name must be {IDENT_RULE}"));
        }
        if file.callers.iter().any(|c| c.name == name) {
            return Err(format!("a caller named `{name}` already exists: pick another name, or give it a new key with `callers add-key`"));
        }
        if roles.is_empty() {
            return Err(format!(
                "caller `{name}` needs at least one role (mint, resolve or admin)"
            ));
        }
        check_new_key(file, key_id, digest)?;
        let mut role_array = Array::new();
        for (i, role) in roles.iter().enumerate() {
            if !roles[..i].contains(role) {
                role_array.push(role.as_str());
            }
        }
        let mut table = Table::new();
        table.insert("name", toml_edit::value(name));
        table.insert("roles", toml_edit::value(role_array));
        let mut keys = ArrayOfTables::new();
        keys.push(key_table(key_id, digest));
        table.insert("key", Item::ArrayOfTables(keys));
        let callers = callers_of(doc)?;
        if callers.is_empty() {
            // Comments of a file without tables trail the document; they
            // go above the first table instead of after it.
            let comments = doc.trailing().as_str().unwrap_or_default().to_owned();
            doc.set_trailing("");
            let prefix = if comments.trim().is_empty() {
                String::new()
            } else {
                format!("{}\n", comments.trim_end()) + "\n"
            };
            table.decor_mut().set_prefix(prefix);
        } else {
            table.decor_mut().set_prefix("\n");
        }
        callers_of(doc)?.push(table);
        Ok(())
    })
}

/// Adds a key to the existing caller `name` (rotation: add the new key, move
/// the caller over, remove the old one). Refuses an unknown name.
pub fn add_key(
    path: &Path,
    name: &str,
    key_id: &str,
    digest: &KeyDigest,
) -> Result<(), CallersFileError> {
    edit(path, false, |doc, file| {
        check_new_key(file, key_id, digest)?;
        let caller = caller_table(doc, file, name)?;
        match caller.get_mut("key") {
            None => {
                let mut keys = ArrayOfTables::new();
                keys.push(key_table(key_id, digest));
                caller.insert("key", Item::ArrayOfTables(keys));
            }
            Some(Item::ArrayOfTables(keys)) => keys.push(key_table(key_id, digest)),
            Some(Item::Value(Value::Array(keys))) => {
                let mut key = InlineTable::new();
                key.insert("id", key_id.into());
                key.insert("sha256", digest.to_hex().into());
                keys.push(key);
            }
            Some(_) => {
                return Err(format!(
                    "caller `{name}`: `key` is neither [[caller.key]] tables nor an array"
                ))
            }
        }
        Ok(())
    })
}

/// Removes key `key_id` from caller `name`. Refuses an unknown key id, and
/// removing the last key of a caller without SANs (it could no longer
/// authenticate).
pub fn remove_key(path: &Path, name: &str, key_id: &str) -> Result<(), CallersFileError> {
    edit(path, false, |doc, file| {
        let Some(entry) = file.callers.iter().find(|c| c.name == name) else {
            return Err(format!("no caller named `{name}` (see `callers list`)"));
        };
        if !entry.keys.iter().any(|k| k.id == key_id) {
            return Err(format!(
                "caller `{name}` has no key `{key_id}` (see `callers list`)"
            ));
        }
        if entry.keys.len() == 1 && entry.uri_sans.is_empty() && entry.dns_sans.is_empty() {
            return Err(format!("`{key_id}` is the last key of caller `{name}`, which has no SAN: without it the caller could no longer authenticate; add a new key first (`callers add-key {name}`)"));
        }
        let caller = caller_table(doc, file, name)?;
        let id_is = |item: Option<&Item>| item.and_then(Item::as_str) == Some(key_id);
        let empty = match caller.get_mut("key") {
            Some(Item::ArrayOfTables(keys)) => {
                keys.retain(|key| !id_is(key.get("id")));
                keys.is_empty()
            }
            Some(Item::Value(Value::Array(keys))) => {
                keys.retain(|key| {
                    key.as_inline_table()
                        .is_none_or(|k| k.get("id").and_then(Value::as_str) != Some(key_id))
                });
                keys.is_empty()
            }
            _ => {
                return Err(format!(
                    "caller `{name}`: cannot find the table of key `{key_id}`"
                ))
            }
        };
        if empty {
            caller.remove("key");
        }
        Ok(())
    })
}

/// Refuses a key id or digest the file already holds.
fn check_new_key(file: &CallersFile, key_id: &str, digest: &KeyDigest) -> Result<(), String> {
    if !is_ident(key_id) {
        return Err(format!("key id `{key_id}`: a key id must be {IDENT_RULE}"));
    }
    for caller in &file.callers {
        for key in &caller.keys {
            if key.id == key_id {
                return Err(format!(
                    "key id `{key_id}` is already used by caller `{}`; pick another",
                    caller.name
                ));
            }
            if key.digest == *digest {
                return Err(format!(
                    "this key is already in the file as key `{}` of caller `{}`",
                    key.id, caller.name
                ));
            }
        }
    }
    Ok(())
}

/// A `[[caller.key]]` table.
fn key_table(key_id: &str, digest: &KeyDigest) -> Table {
    let mut key = Table::new();
    key.insert("id", toml_edit::value(key_id));
    key.insert("sha256", toml_edit::value(digest.to_hex()));
    key
}

/// The `[[caller]]` tables, created if there are none yet.
fn callers_of(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, String> {
    let item = doc
        .entry("caller")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    if item.as_array().is_some_and(Array::is_empty) {
        *item = Item::ArrayOfTables(ArrayOfTables::new());
    }
    item.as_array_of_tables_mut()
        .ok_or_else(|| "callers are written as an inline array; write them as [[caller]] tables so `callers` can edit the file".to_owned())
}

/// The table of caller `name`, which `file` says exists.
fn caller_table<'d>(
    doc: &'d mut DocumentMut,
    file: &CallersFile,
    name: &str,
) -> Result<&'d mut Table, String> {
    if !file.callers.iter().any(|c| c.name == name) {
        return Err(format!(
            "no caller named `{name}` (see `callers list`, or create it with `callers add`)"
        ));
    }
    callers_of(doc)?
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(name))
        .ok_or_else(|| format!("cannot find the [[caller]] table of `{name}`"))
}

/// Reads the file (or starts from the header when `create` and it is
/// missing), checks it, applies `change`, checks the result and replaces the
/// file atomically. Nothing is written unless every check passes.
fn edit(
    path: &Path,
    create: bool,
    change: impl FnOnce(&mut DocumentMut, &CallersFile) -> Result<(), String>,
) -> Result<(), CallersFileError> {
    // Through a symlink, edit the file it points at instead of replacing
    // the link with a plain file.
    let target = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(|source| CallersFileError::Io {
                action: "resolve callers file link",
                path: path.to_owned(),
                source,
            })?
        }
        _ => path.to_owned(),
    };
    // The same checks of the file as the server's: rewriting a file that
    // someone else could have written would make its callers ours (the
    // new file is this user's, mode 0600), so such a file is refused too.
    let text = match read_trusted(&target, &target) {
        Ok(text) => text,
        Err(CallersFileError::Io { source, .. })
            if create && source.kind() == io::ErrorKind::NotFound =>
        {
            HEADER.to_owned()
        }
        Err(error) => return Err(error),
    };
    let file = parse(&text).map_err(|error| with_path(error, &target))?;
    let refused = |message: String| CallersFileError::Refused {
        path: target.clone(),
        message: scrub(message),
    };
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| refused(format!("cannot edit: {}", e.message())))?;
    change(&mut doc, &file).map_err(refused)?;
    let edited = doc.to_string();
    parse(&edited)
        .map_err(|error| refused(format!("the edited file would be invalid ({error})")))?;
    write_private_atomic(&target, edited.as_bytes()).map_err(|source| CallersFileError::Io {
        action: "write callers file",
        path: target,
        source,
    })
}
