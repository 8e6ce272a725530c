//! Target `callers_file`: the callers file parser.

use std::collections::HashSet;

use crate::auth::file::{self, CallerEntry};
use crate::token::{CALLER_KEY_PREFIX, TOKEN_PREFIX};

/// Parses the input as a callers file: never panics; a refusal never
/// carries a run of 16 or more hex digits (a digest, or most of one) nor a
/// caller-key or token prefix, whatever field they were pasted into; and an
/// accepted file holds only what a running server relies on.
pub fn callers_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match file::parse(&text) {
        Err(error) => {
            let message = error.to_string();
            assert!(
                longest_hex_run(&message) < 16,
                "a refusal carries a hex run: {message}"
            );
            for prefix in [CALLER_KEY_PREFIX, TOKEN_PREFIX] {
                assert!(
                    !message.contains(prefix),
                    "a refusal carries `{prefix}`: {message}"
                );
            }
        }
        Ok(parsed) => {
            let mut names = HashSet::new();
            let mut key_ids = HashSet::new();
            for caller in &parsed.callers {
                accepted_caller(caller);
                assert!(names.insert(&caller.name), "duplicate name accepted");
                for key in &caller.keys {
                    assert!(key_ids.insert(&key.id), "duplicate key id accepted");
                }
            }
        }
    }
}

/// What the authenticator and the log lines rely on in an accepted caller.
fn accepted_caller(caller: &CallerEntry) {
    let plain = |text: &str| {
        (1..=64).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            && !text.starts_with(CALLER_KEY_PREFIX)
            && !text.starts_with(TOKEN_PREFIX)
    };
    assert!(plain(&caller.name), "a bad name was accepted");
    assert!(
        !caller.roles.is_empty(),
        "a caller without roles was accepted"
    );
    for (i, role) in caller.roles.iter().enumerate() {
        assert!(
            !caller.roles[..i].contains(role),
            "a duplicate role was accepted"
        );
    }
    assert!(
        !(caller.keys.is_empty() && caller.uri_sans.is_empty() && caller.dns_sans.is_empty()),
        "a caller that cannot authenticate was accepted"
    );
    for key in &caller.keys {
        assert!(plain(&key.id), "a bad key id was accepted");
    }
    for san in &caller.dns_sans {
        assert_eq!(*san, san.to_ascii_lowercase(), "a DNS SAN kept its case");
    }
}

/// The length of the longest run of ASCII hex digits in `text`.
fn longest_hex_run(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0)
}
