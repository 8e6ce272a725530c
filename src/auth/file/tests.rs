//! Tests of the callers file: parsing, every refusal, and edits.

use std::os::unix::fs::PermissionsExt as _;

use super::edit::HEADER;
use super::*;
use crate::auth::key::CallerKey;

/// The digest of a fresh key: real digests, so no test passes on a
/// hand-picked value that happens to look fine.
fn digest() -> KeyDigest {
    CallerKey::generate().unwrap().digest()
}

/// A caller with one key, as a hand-written block.
fn block(name: &str, id: &str, digest: &KeyDigest) -> String {
    format!(
        "[[caller]]\nname = \"{name}\"\nroles = [\"mint\"]\n[[caller.key]]\nid = \"{id}\"\nsha256 = \"{}\"\n",
        digest.to_hex()
    )
}

/// Every 64-hex-digit run in `text`: the digests a message must not show.
fn digests_in(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(63))
        .filter(|&i| bytes[i..i + 64].iter().all(u8::is_ascii_hexdigit))
        .map(|i| text[i..i + 64].to_owned())
        .collect()
}

/// Parses `text` expecting a refusal whose message holds every `needles`
/// and no digest (nor its first 16 digits) of the input.
fn refused(text: &str, needles: &[&str]) -> String {
    let message = parse(text)
        .expect_err("accepted an invalid file")
        .to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "`{needle}` missing from: {message}"
        );
    }
    for hex in digests_in(text) {
        assert!(!message.contains(&hex[..16]), "digest in: {message}");
    }
    message
}

/// The permission bits, to check what edits leave behind.
fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Catches: a field dropped or misread between the TOML and the structs
/// the caller set is built from (DNS SANs must come out lowercased).
#[test]
fn a_valid_file_parses_into_the_structs() {
    let (a, b) = (digest(), digest());
    let text = format!(
        "# who may call\n[[caller]]\nname = \"claude-adapter\"\nroles = [\"mint\", \"resolve\"]  # two\n\
         uri_sans = [\"spiffe://example.org/claude\"]\n[[caller.key]]\nid = \"key-1\"\nsha256 = \"{}\"\n\
         [[caller.key]]\nid = \"key-2\"\nsha256 = \"{}\"\n\n[[caller]]\nname = \"ops\"\nroles = [\"admin\"]\n\
         dns_sans = [\"Ops.Internal\"]\n",
        a.to_hex(),
        b.to_hex()
    );
    let file = parse(&text).unwrap();
    assert_eq!(
        file,
        CallersFile {
            callers: vec![
                CallerEntry {
                    name: "claude-adapter".into(),
                    roles: vec![Role::Mint, Role::Resolve],
                    keys: vec![
                        KeyEntry {
                            id: "key-1".into(),
                            digest: a
                        },
                        KeyEntry {
                            id: "key-2".into(),
                            digest: b
                        },
                    ],
                    uri_sans: vec!["spiffe://example.org/claude".into()],
                    dns_sans: vec![],
                    quota: QuotaSpec::default(),
                },
                CallerEntry {
                    name: "ops".into(),
                    roles: vec![Role::Admin],
                    keys: vec![],
                    uri_sans: vec![],
                    dns_sans: vec!["ops.internal".into()],
                    quota: QuotaSpec::default(),
                },
            ],
            defaults: QuotaSpec::default(),
        }
    );
    assert_eq!(parse("").unwrap(), CallersFile::default());
    assert_eq!(parse("# nobody yet\n").unwrap(), CallersFile::default());
}

/// Catches: a broken rule accepted (a duplicate that would make one key or
/// certificate name two callers), a refusal that does not say which
/// caller and line, or one that quotes a digest.
#[test]
fn every_rule_is_refused_naming_the_caller_and_never_a_digest() {
    let (a, b, c) = (digest(), digest(), digest());
    let one = block("one", "k1", &a);
    refused(
        &format!("{one}{}", block("one", "k2", &b)),
        &["caller `one`", "already used at line 2", "line 8"],
    );
    refused(
        &format!("{one}{}", block("two", "k1", &b)),
        &["caller `two`", "key id `k1`", "caller `one`"],
    );
    refused(
        &format!("{one}{}", block("two", "k2", &a)),
        &["caller `two`", "key `k2`", "same sha256", "`k1`"],
    );
    refused(
        &one.replace("\"mint\"", "\"minter\""),
        &["caller `one`", "unknown role `minter`", "line 3"],
    );
    refused(
        &one.replace("\"mint\"", "\"mint\", \"mint\""),
        &["caller `one`", "`mint` is listed twice"],
    );
    refused(
        &one.replace("roles = [\"mint\"]", "roles = []"),
        &["caller `one`", "no roles"],
    );
    refused(
        &one.replace("roles = [\"mint\"]\n", ""),
        &["caller `one`", "no roles"],
    );
    refused(
        &format!("{one}shoe = 1\n"),
        &["line 7", "caller `one`: unknown field `shoe`"],
    );
    refused(
        &one.replace("sha256", "sha265"),
        &["line 6", "caller `one`: unknown field `sha265`"],
    );
    refused(
        &format!("version = 2\n{one}"),
        &["line 1", "unknown field `version`"],
    );
    refused(
        "[[caller]]\nname = \"lonely\"\nroles = [\"mint\"]\n",
        &["caller `lonely`", "no key and no SAN", "never authenticate"],
    );
    let san = |name: &str, field: &str, value: &str| {
        format!("[[caller]]\nname = \"{name}\"\nroles = [\"mint\"]\n{field} = [\"{value}\"]\n")
    };
    let uri = "spiffe://example.org/a";
    refused(
        &format!("{}{}", san("x", "uri_sans", uri), san("y", "uri_sans", uri)),
        &["caller `y`", "caller `x` already lists it", "line 8"],
    );
    refused(
        &format!(
            "{}{}",
            san("x", "dns_sans", "a.example"),
            san("y", "dns_sans", "A.Example")
        ),
        &["caller `y`", "DNS SAN `A.Example`", "`x`"],
    );
    refused(
        &san("x", "uri_sans", "no-colon"),
        &["caller `x`", "URI SAN `no-colon`"],
    );
    refused(
        &san("x", "dns_sans", "bad_host"),
        &["caller `x`", "DNS SAN `bad_host`"],
    );
    refused(&san("x", "dns_sans", "a..b"), &["caller `x`", "DNS SAN"]);
    refused(
        &one.replace("name = \"one\"", "name = \"on e\""),
        &["caller `on e`", "the name must be", "line 2, column 8"],
    );
    refused(
        &one.replace("name = \"one\"", "name = \"\""),
        &["the name must be"],
    );
    refused(
        &one.replace("\"k1\"", "\"k 1\""),
        &["caller `one`", "key id `k 1`"],
    );
    refused(
        &one.replace(&a.to_hex(), &a.to_hex().to_uppercase()),
        &["caller `one`", "key `k1`", "64 lowercase hex"],
    );
    refused(
        &one.replace(&a.to_hex(), &a.to_hex()[..60]),
        &["key `k1`", "64 lowercase hex"],
    );
    refused(
        &one.replace("id = \"k1\"\n", ""),
        &["caller `one`", "no `id`"],
    );
    refused(
        &format!("{one}[[caller.key]]\nid = \"k2\"\n"),
        &["caller `one`", "key `k2` has no `sha256`"],
    );
    refused("[[caller]]\nroles = [\"mint\"]\n", &["line 1", "no `name`"]);
    // Digests where they do not belong are redacted, whatever the rule.
    let message = refused(
        &one.replace("name = \"one\"", &format!("name = \"{}!\"", b.to_hex())),
        &["<redacted>"],
    );
    assert!(!message.contains(&b.to_hex()[..16]));
    let hex_id = one.replace("\"k1\"", &format!("\"{}\"", b.to_hex()));
    refused(
        &format!(
            "{hex_id}{}",
            hex_id
                .replace("one", "two")
                .replace(&a.to_hex(), &c.to_hex())
        ),
        &["caller `two`", "<redacted>"],
    );
    // A syntax error on a digest's line: toml's `Display` would quote it.
    refused(
        &one.replace(&format!("\"{}\"", a.to_hex()), &format!("\"{}", a.to_hex())),
        &["line 6"],
    );
    refused(
        &format!("{one}{}", one.replace("[[caller]]\n", "")),
        &["line 7"],
    );
    let wrong_type = format!(
        "{one}{}",
        block("two", "k2", &b).replace("[\"mint\"]", "\"mint\"")
    );
    refused(&wrong_type, &["caller `two`", "line 9"]);
}

/// Catches: a load error (a SIGHUP log line) that does not say which file
/// or where in it.
#[test]
fn errors_from_load_name_the_path() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("callers.toml");
    let missing = load(&path).unwrap_err();
    assert!(
        matches!(&missing, CallersFileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    );
    assert!(
        missing.to_string().contains(&*path.to_string_lossy()),
        "{missing}"
    );
    fs::write(&path, "[[caller]]\nname = \"x\"\nroles = [\"mint\"]\n").unwrap();
    let invalid = load(&path).unwrap_err().to_string();
    assert!(
        invalid.contains(&format!("{}, line 2, column 8", path.display())),
        "{invalid}"
    );
}

/// A hand-edited file: comments everywhere, odd spacing, an unrelated caller.
fn hand_written(a: &KeyDigest, b: &KeyDigest, c: &KeyDigest) -> (String, String) {
    let other = format!(
        "# the host, do not touch\n[[caller]]\nname   =   \"host\"   # spaced\nroles = [ \"resolve\" ]\n\
         dns_sans = [\"host.internal\"]\n[[caller.key]]\nid = \"host-1\" # first\nsha256 = \"{}\"\n",
        c.to_hex()
    );
    let text = format!(
        "# Operators' notes: keep this comment.\n\n[[caller]]\nname = \"adapter\"  # the adapter\n\
         roles = [\"mint\"]\nuri_sans = [\"spiffe://x/adapter\"]\n\n# its first key\n[[caller.key]]\n\
         id = \"a-1\"\nsha256 = \"{}\"\n\n[[caller.key]]\nid = \"a-2\"\nsha256 = \"{}\"\n\n{other}\n# trailing note\n",
        a.to_hex(),
        b.to_hex()
    );
    (text, other)
}

/// Catches: `callers` edits that reformat a hand-edited file, lose its
/// comments, touch other callers, keep a removed digest, or leave the
/// file readable by others or a temporary file behind.
#[test]
fn edits_keep_comments_and_unrelated_callers_exactly() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("callers.toml");
    let (a, b, c, d, e) = (digest(), digest(), digest(), digest(), digest());
    let (text, other) = hand_written(&a, &b, &c);
    fs::write(&path, &text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

    add_key(&path, "adapter", "a-3", &d).unwrap();
    remove_key(&path, "adapter", "a-2").unwrap();
    add_caller(&path, "new", &[Role::Mint, Role::Resolve], "n-1", &e).unwrap();

    let edited = fs::read_to_string(&path).unwrap();
    assert!(
        edited.contains(&other),
        "unrelated caller changed:\n{edited}"
    );
    for comment in text.lines().filter_map(|l| l.find('#').map(|i| &l[i..])) {
        assert!(edited.contains(comment), "lost `{comment}`:\n{edited}");
    }
    assert!(
        edited.starts_with("# Operators' notes: keep this comment.\n"),
        "{edited}"
    );
    assert!(!edited.contains(&b.to_hex()), "{edited}");
    assert_eq!(mode(&path), 0o600);
    let file = parse(&edited).unwrap();
    let names: Vec<_> = file.callers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["adapter", "host", "new"]);
    let ids: Vec<_> = file.callers[0].keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, ["a-1", "a-3"]);
    assert_eq!(file.callers[0].keys[1].digest, d);
    assert_eq!(file.callers[2].roles, [Role::Mint, Role::Resolve]);
    assert_eq!(
        file.callers[2].keys,
        [KeyEntry {
            id: "n-1".into(),
            digest: e
        }]
    );
    assert_eq!(
        fs::read_dir(temp.path()).unwrap().count(),
        1,
        "a temporary file was left"
    );
}

/// Catches: a refused edit that writes anything (a half-done change would
/// be picked up by the next SIGHUP).
#[test]
fn refused_edits_leave_the_file_byte_identical() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("callers.toml");
    let (a, b, c) = (digest(), digest(), digest());
    let (text, _) = hand_written(&a, &b, &c);
    let only = block("only", "o-1", &digest());
    fs::write(&path, format!("{text}{only}")).unwrap();
    let before = fs::read(&path).unwrap();
    let refusals: Vec<(Result<(), CallersFileError>, &str)> = vec![
        (
            add_caller(&path, "host", &[Role::Mint], "x-1", &digest()),
            "a caller named `host` already exists",
        ),
        (
            add_caller(&path, "bad name", &[Role::Mint], "x-1", &digest()),
            "caller name `bad name`",
        ),
        (
            add_caller(&path, "fresh", &[], "x-1", &digest()),
            "at least one role",
        ),
        (
            add_caller(&path, "fresh", &[Role::Mint], "a-1", &digest()),
            "key id `a-1` is already used by caller `adapter`",
        ),
        (
            add_caller(&path, "fresh", &[Role::Mint], "x-1", &c),
            "already in the file as key `host-1` of caller `host`",
        ),
        (
            add_key(&path, "nobody", "x-1", &digest()),
            "no caller named `nobody`",
        ),
        (
            add_key(&path, "host", "a-2", &digest()),
            "key id `a-2` is already used",
        ),
        (
            add_key(&path, "host", "bad/id", &digest()),
            "key id `bad/id`",
        ),
        (
            remove_key(&path, "host", "nope"),
            "caller `host` has no key `nope`",
        ),
        (
            remove_key(&path, "nobody", "a-1"),
            "no caller named `nobody`",
        ),
        (
            remove_key(&path, "only", "o-1"),
            "last key of caller `only`, which has no SAN",
        ),
    ];
    for (result, needle) in refusals {
        let message = result.expect_err(needle).to_string();
        assert!(
            message.contains(needle) && message.contains("not changed"),
            "`{needle}` missing from: {message}"
        );
        for hex in [&a, &b, &c].map(KeyDigest::to_hex) {
            assert!(!message.contains(&hex[..16]), "digest in: {message}");
        }
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "changed by the refused `{needle}`"
        );
    }
    // An invalid file is refused as it is, before any change.
    fs::write(&path, format!("{text}{}", block("host", "h-9", &digest()))).unwrap();
    let before = fs::read(&path).unwrap();
    let error = add_key(&path, "adapter", "x-1", &digest()).unwrap_err();
    assert!(
        matches!(error, CallersFileError::Invalid { path: Some(_), .. }),
        "{error}"
    );
    assert_eq!(fs::read(&path).unwrap(), before);
}

/// Catches: a first `callers add` without the header that explains the
/// format, or `add-key`/`remove-key` creating a file.
#[test]
fn add_caller_creates_a_missing_file_with_the_header() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("callers.toml");
    let a = digest();
    add_caller(&path, "admin", &[Role::Admin], "key-1", &a).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(HEADER), "{text}");
    assert_eq!(mode(&path), 0o600);
    let file = parse(&text).unwrap();
    assert_eq!(file.callers.len(), 1);
    assert_eq!(
        file.callers[0].keys,
        [KeyEntry {
            id: "key-1".into(),
            digest: a
        }]
    );
    // add_key and remove_key never create one.
    let missing = temp.path().join("missing.toml");
    assert!(matches!(
        add_key(&missing, "admin", "k", &a),
        Err(CallersFileError::Io { .. })
    ));
    assert!(matches!(
        remove_key(&missing, "admin", "k"),
        Err(CallersFileError::Io { .. })
    ));
    assert!(!missing.exists());
}

/// Catches: edits that only handle the layout `callers add` writes, and
/// fail on inline key arrays or callers that began with SANs only.
#[test]
fn keys_of_san_callers_and_inline_key_arrays_are_edited_too() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("callers.toml");
    let (a, b, c) = (digest(), digest(), digest());
    let text = format!(
        "[[caller]]\nname = \"cert\"\nroles = [\"resolve\"]\nuri_sans = [\"spiffe://x/cert\"]\n\n\
         [[caller]]\nname = \"inline\"\nroles = [\"mint\"]\nkey = [{{ id = \"i-1\", sha256 = \"{}\" }}]\n",
        a.to_hex()
    );
    fs::write(&path, text).unwrap();
    add_key(&path, "cert", "c-1", &b).unwrap();
    add_key(&path, "inline", "i-2", &c).unwrap();
    let file = load(&path).unwrap();
    assert_eq!(
        file.callers[0].keys,
        [KeyEntry {
            id: "c-1".into(),
            digest: b
        }]
    );
    assert_eq!(
        file.callers[1].keys[1],
        KeyEntry {
            id: "i-2".into(),
            digest: c
        }
    );
    remove_key(&path, "inline", "i-1").unwrap();
    // The last key of a caller with a SAN may go: the certificate remains.
    remove_key(&path, "cert", "c-1").unwrap();
    let file = load(&path).unwrap();
    assert!(file.callers[0].keys.is_empty());
    assert_eq!(
        file.callers[1].keys,
        [KeyEntry {
            id: "i-2".into(),
            digest: c
        }]
    );
    assert!(!fs::read_to_string(&path).unwrap().contains("c-1"));
}

/// Catches: key ids that collide, or that the file's own rules refuse.
#[test]
fn key_ids_are_random_and_plain() {
    let id = new_key_id();
    assert_eq!(id.len(), 12);
    assert!(
        id.starts_with("key-")
            && id[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(is_ident(&id));
    assert_ne!(new_key_id(), new_key_id());
}

/// Catches: a role written in one spelling and read in another, which
/// would make `callers add --roles` write what `parse` refuses.
#[test]
fn roles_spell_the_same_both_ways() {
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        assert_eq!(role.to_string(), role.as_str());
    }
    assert!("Mint"
        .parse::<Role>()
        .unwrap_err()
        .to_string()
        .contains("mint, resolve and admin"));
}

/// Catches: a key (or token) pasted as a caller's name or key id accepted,
/// so that it would be written into every log line, or echoed by the
/// refusal itself.
#[test]
fn a_secret_pasted_as_a_name_or_key_id_is_refused_without_echoing_it() {
    let key = CallerKey::generate().unwrap();
    let token = crate::token::Token::generate();
    for secret in [key.expose(), token.expose()] {
        for text in [
            block(secret, "key-1", &digest()),
            block("adapter", secret, &digest()),
            // A syntax error on the same line must not quote it either.
            format!("[[caller]]\nname = \"{secret}\" oops\n"),
            // Nor the refusal of a role or a SAN that it was pasted into.
            block("adapter", "key-1", &digest()).replace("\"mint\"", &format!("\"{secret}\"")),
            format!(
                "{}uri_sans = [\"{secret}\"]\n",
                block("adapter", "key-1", &digest())
            )
            .replace(
                "[[caller.key]]",
                &format!("dns_sans = [\"{secret}\"]\n[[caller.key]]"),
            ),
        ] {
            let message = parse(&text).expect_err("accepted").to_string();
            assert!(
                !message.contains(&secret[6..18]),
                "the secret is echoed: {message}"
            );
        }
        let message = refused(
            &block(secret, "key-1", &digest()),
            &["looks like a caller key"],
        );
        assert!(message.contains("log line"), "{message}");
        refused(
            &block("adapter", secret, &digest()),
            &["caller `adapter`", "key id looks like a caller key"],
        );
    }
}

/// A directory in a fresh temp dir with `mode`, set explicitly (not left
/// to the umask).
fn dir_with_mode(temp: &tempfile::TempDir, name: &str, mode: u32) -> std::path::PathBuf {
    let dir = temp.path().join(name);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// A valid callers file at `path` with `mode`.
fn callers_with_mode(path: &Path, mode: u32) {
    fs::write(path, block("adapter", "key-1", &digest())).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `load`'s refusal of `path`, which must be `Insecure`, name `path` and
/// hold every `needles`.
fn insecure(path: &Path, needles: &[&str]) -> String {
    let error = load(path).expect_err("loaded an exposed callers file");
    assert!(
        matches!(&error, CallersFileError::Insecure { path: p, .. } if p == path),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    for needle in needles {
        assert!(message.contains(needle), "`{needle}` missing: {message}");
    }
    message
}

/// Catches: the server loading a callers file that group or others could
/// have added a caller to; or refusing one that is merely readable (it
/// holds digests only, and the integration tests write 0644 files).
#[test]
fn load_refuses_a_file_group_or_others_may_write() {
    let temp = tempfile::tempdir().unwrap();
    let dir = dir_with_mode(&temp, "etc", 0o755);
    let path = dir.join("callers.toml");
    for mode in [0o600, 0o640, 0o644, 0o444, 0o400] {
        callers_with_mode(&path, mode);
        assert_eq!(load(&path).unwrap().callers.len(), 1, "mode {mode:o}");
    }
    for mode in [0o620, 0o602, 0o664, 0o666, 0o777] {
        callers_with_mode(&path, mode);
        let fix = format!("chmod go-w {}", path.display());
        insecure(&path, &[&format!("mode {mode:04o}"), "add a caller", &fix]);
    }
}

/// Catches: a callers file trusted although whoever may write its
/// directory could rename it away and put their own in its place.
#[test]
fn load_refuses_a_directory_others_may_write_unless_it_is_sticky() {
    let temp = tempfile::tempdir().unwrap();
    for (mode, refused) in [
        (0o700, false),
        (0o755, false),
        (0o711, false),
        (0o1777, false),
        (0o1770, false),
        (0o777, true),
        (0o770, true),
        (0o730, true),
        (0o703, true),
    ] {
        let dir = dir_with_mode(&temp, &format!("d{mode:o}"), mode);
        let path = dir.join("callers.toml");
        callers_with_mode(&path, 0o600);
        if refused {
            let fix = format!("chmod go-w {}", dir.display());
            let message = insecure(&path, &[&format!("mode {mode:04o}"), &fix]);
            assert!(message.contains("its directory"), "{message}");
        } else {
            load(&path).unwrap_or_else(|e| panic!("mode {mode:o} refused: {e}"));
        }
    }
}

/// Catches: a FIFO hanging the reload, or a directory or device read as
/// configuration.
#[test]
fn load_refuses_what_is_not_a_regular_file() {
    let temp = tempfile::tempdir().unwrap();
    let fifo = temp.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no other precondition.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    insecure(&fifo, &["not a regular file"]);
    let dir = dir_with_mode(&temp, "callers.toml", 0o700);
    insecure(&dir, &["not a regular file"]);
    insecure(Path::new("/dev/null"), &["not a regular file"]);
}

/// Catches: a file or directory of another user trusted (that user could
/// rewrite who may call), or a root-owned one refused (config management
/// installs it so). Owners are plain values, so this runs without root.
#[test]
fn only_this_user_or_root_may_own_the_file_and_its_directory() {
    let (file, dir) = (Path::new("/srv/callers.toml"), Path::new("/srv"));
    for owner in [1000, 0] {
        assert_eq!(file_exposure(file, true, owner, 0o100644, 1000), None);
        assert_eq!(dir_exposure(dir, owner, 0o40755, 1000), None);
    }
    let other = file_exposure(file, true, 1001, 0o100600, 1000).unwrap();
    assert!(
        other.problem.contains("owned by uid 1001") && other.problem.contains("uid 1000"),
        "{other:?}"
    );
    assert!(
        other.fix.contains("chown 1000 /srv/callers.toml"),
        "{other:?}"
    );
    let other = dir_exposure(dir, 1001, 0o40700, 1000).unwrap();
    assert!(other
        .problem
        .contains("its directory /srv is owned by uid 1001"));
    assert!(other.fix.contains("chown 1000 /srv"), "{other:?}");
    // Another user's sticky directory is refused too: its owner may
    // remove anything in it.
    assert!(dir_exposure(dir, 1001, 0o41777, 1000).is_some());
    // Root needs no exception: root is this user.
    assert_eq!(file_exposure(file, true, 0, 0o100600, 0), None);
    assert!(file_exposure(file, true, 1000, 0o100600, 0).is_some());

    // For real, where the test may hand a file to someone else.
    if crate::state_dir::euid() == 0 {
        let temp = tempfile::tempdir().unwrap();
        let dir = dir_with_mode(&temp, "etc", 0o755);
        let path = dir.join("callers.toml");
        callers_with_mode(&path, 0o644);
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        insecure(&path, &["owned by uid 65534", "chown 0"]);
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        insecure(&path, &["its directory", "owned by uid 65534"]);
    }
}

/// Catches: a symlinked callers file (config management) refused, or its
/// target judged by the link's directory instead of its own.
#[test]
fn a_symlink_is_followed_and_its_target_and_real_directory_are_checked() {
    let temp = tempfile::tempdir().unwrap();
    let links = dir_with_mode(&temp, "links", 0o700);
    let store = dir_with_mode(&temp, "store", 0o755);
    let target = store.join("callers-v2.toml");
    callers_with_mode(&target, 0o444);
    let link = links.join("callers.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_eq!(load(&link).unwrap().callers.len(), 1);
    // Chains of links end at the same file.
    let second = links.join("again.toml");
    std::os::unix::fs::symlink(&link, &second).unwrap();
    assert_eq!(load(&second).unwrap().callers.len(), 1);

    // The target's own mode and directory decide, and are named.
    fs::set_permissions(&target, fs::Permissions::from_mode(0o666)).unwrap();
    let real = fs::canonicalize(&target).unwrap();
    insecure(&link, &[&format!("chmod go-w {}", real.display())]);
    fs::set_permissions(&target, fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(&store, fs::Permissions::from_mode(0o777)).unwrap();
    let real_dir = fs::canonicalize(&store).unwrap();
    insecure(&link, &[&format!("chmod go-w {}", real_dir.display())]);
    fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap();

    // The link's directory is the deployment tool's: not checked.
    fs::set_permissions(&links, fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(load(&link).unwrap().callers.len(), 1);

    let dangling = links.join("dangling.toml");
    std::os::unix::fs::symlink(store.join("gone.toml"), &dangling).unwrap();
    assert!(matches!(
        load(&dangling),
        Err(CallersFileError::Io { path, .. }) if path == dangling
    ));
}

/// Catches: `callers add-key` rewriting a file others could write into a
/// 0600 file of ours, which would make a planted caller trusted.
#[test]
fn edits_refuse_a_file_group_or_others_may_write() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("callers.toml");
    callers_with_mode(&path, 0o666);
    let before = fs::read(&path).unwrap();
    for error in [
        add_key(&path, "adapter", "key-2", &digest()).unwrap_err(),
        add_caller(&path, "new", &[Role::Mint], "key-3", &digest()).unwrap_err(),
        remove_key(&path, "adapter", "key-1").unwrap_err(),
    ] {
        assert!(
            matches!(error, CallersFileError::Insecure { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("chmod go-w"), "{error}");
    }
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(mode(&path), 0o666, "not ours to change");
}

/// Catches quota fields that are ignored, that do not fall back to
/// `[defaults]`, or whose defaults beat a caller's own setting.
#[test]
fn quotas_parse_and_fall_back_to_the_defaults() {
    let (a, b) = (digest(), digest());
    let own_block = block("own", "k1", &a).replace(
        "[[caller.key]]",
        "max_live_credentials = 7\nmint_rate = { per_second = 3 }\n[[caller.key]]",
    );
    let text = format!(
        "[defaults]\nmax_live_credentials = 100\nmint_rate = {{ per_second = 5, burst = 9 }}\n\n\
         {own_block}\n{}",
        block("plain", "k2", &b)
    );
    let file = parse(&text).unwrap();
    let own = file.quota_of(&file.callers[0]);
    assert_eq!(own.max_live_credentials, Some(7));
    assert_eq!(
        own.mint_rate,
        Some(crate::auth::quota::MintRate {
            per_second: 3,
            burst: 3
        }),
        "burst defaults to per_second, not to [defaults]' burst"
    );
    let plain = file.quota_of(&file.callers[1]);
    assert_eq!(plain.max_live_credentials, Some(100));
    assert_eq!(plain.mint_rate.unwrap().burst, 9);
}

/// Catches zero, negative or half-written quotas being accepted (a zero
/// rate would silently refuse every Mint) and unknown quota fields.
#[test]
fn bad_quotas_are_refused_naming_the_caller() {
    let d = digest();
    let with = |line: &str| {
        block("adapter", "k1", &d).replace("[[caller.key]]", &format!("{line}\n[[caller.key]]"))
    };
    refused(
        &with("max_live_credentials = 0"),
        &["adapter", "max_live_credentials", "from 1"],
    );
    refused(
        &with("max_live_credentials = -5"),
        &["adapter", "max_live_credentials"],
    );
    refused(
        &with("mint_rate = { burst = 5 }"),
        &["adapter", "per_second"],
    );
    refused(
        &with("mint_rate = { per_second = 0 }"),
        &["adapter", "mint_rate.per_second"],
    );
    refused(
        &with("mint_rate = { per_second = 5, burst = 0 }"),
        &["adapter", "mint_rate.burst"],
    );
    refused(
        &with("mint_rate = { per_second = 5, brust = 9 }"),
        &["adapter", "brust"],
    );
    refused(
        &format!(
            "[defaults]\nmint_rate = {{ per_second = 0 }}\n{}",
            block("adapter", "k1", &d)
        ),
        &["[defaults]", "per_second"],
    );
    refused(
        &format!("[defaults]\nmax_live = 5\n{}", block("adapter", "k1", &d)),
        &["max_live"],
    );
}
