//! Target `request_validation`: the checks each RPC runs on its request
//! before any store access.

use std::time::Duration;

use prost::Message;

use crate::pb;
use crate::store::StoreConfig;
use crate::token;
use crate::validate::{
    FieldViolation, Violations, MAX_ID_BYTES, MAX_LABELS, MAX_LABEL_KEY_CHARS,
    MAX_LABEL_VALUE_BYTES, MAX_SCOPES, MAX_SCOPE_BYTES,
};

use super::is_forbidden_in_ids;

/// Decodes the input as each request message and validates it as the
/// service does (the same `Violations` calls with the same field names, in
/// the same order; see each handler in `service.rs`): nothing panics,
/// every violation names a field of its message, and every accepted id,
/// scope, label and duration is within the contract's bounds and holds no
/// control, invisible or bidirectional formatting character.
pub fn request_validation(data: &[u8]) {
    let limits = StoreConfig::default();
    if let Ok(request) = pb::MintRequest::decode(data) {
        mint(&request, &limits);
    }
    if let Ok(request) = pb::ResolveRequest::decode(data) {
        resolve(&request);
    }
    if let Ok(request) = pb::RevokeThreadRequest::decode(data) {
        let mut v = Violations::default();
        let mut refused = Vec::new();
        let thread_id = v.id("thread_id", &request.thread_id, true);
        accepted_id("thread_id", thread_id, true, &mut refused);
        finish(v, &["thread_id"], &refused);
    }
    if let Ok(request) = pb::RevokeAllRequest::decode(data) {
        let mut v = Violations::default();
        let instance = v.id("provider_instance_id", &request.provider_instance_id, false);
        accepted_id("provider_instance_id", instance, false, &mut Vec::new());
        finish(v, &["provider_instance_id"], &[]);
    }
    if let Ok(request) = pb::RevokeCredentialRequest::decode(data) {
        let mut v = Violations::default();
        let id = v.credential_id("credential_id", &request.credential_id);
        let refused = accepted_credential_id(id, &request.credential_id);
        finish(v, &["credential_id"], refused);
    }
    if let Ok(request) = pb::TouchRequest::decode(data) {
        touch(&request);
    }
}

/// Mint's checks, as `AuthorityService::mint` runs them.
fn mint(request: &pb::MintRequest, limits: &StoreConfig) {
    let mut v = Violations::default();
    let mut refused = Vec::new();
    let thread_id = v.id("thread_id", &request.thread_id, true);
    accepted_id("thread_id", thread_id, true, &mut refused);
    let instance = v.id("provider_instance_id", &request.provider_instance_id, true);
    accepted_id("provider_instance_id", instance, true, &mut refused);
    let kind = v.id("provider_kind", &request.provider_kind, false);
    accepted_id("provider_kind", kind, false, &mut refused);
    let idle = v.duration(
        "idle_timeout",
        request.idle_timeout.as_ref(),
        limits.idle_timeout,
    );
    accepted_duration(idle, limits.idle_timeout);
    let lifetime = v.duration(
        "max_lifetime",
        request.max_lifetime.as_ref(),
        limits.max_lifetime,
    );
    accepted_duration(lifetime, limits.max_lifetime);
    let scopes = v.scopes(&request.scopes);
    assert!(scopes.len() <= MAX_SCOPES, "more than MAX_SCOPES kept");
    for (i, scope) in scopes.iter().enumerate() {
        accepted_scope(scope);
        assert!(
            !scopes[..i].contains(scope),
            "a duplicate scope was kept: {scope:?}"
        );
        assert!(
            request.scopes.iter().any(|s| **s == **scope),
            "invented scope"
        );
    }
    let labels = v.labels(&request.labels);
    assert!(labels.len() <= MAX_LABELS, "more than MAX_LABELS kept");
    for (i, (key, value)) in labels.iter().enumerate() {
        assert!(
            (1..=MAX_LABEL_KEY_CHARS).contains(&key.len())
                && key
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-')),
            "a bad label key was kept: {key:?}"
        );
        assert!(
            value.len() <= MAX_LABEL_VALUE_BYTES && !value.chars().any(is_forbidden_in_ids),
            "a bad label value was kept: {value:?}"
        );
        assert!(
            i == 0 || labels[i - 1].0 < *key,
            "labels are not sorted by key"
        );
        assert_eq!(
            request.labels.get(&**key).map(String::as_str),
            Some(&**value),
            "a kept label is not the one sent"
        );
    }
    finish(
        v,
        &[
            "thread_id",
            "provider_instance_id",
            "provider_kind",
            "idle_timeout",
            "max_lifetime",
            "scopes",
            "labels",
        ],
        &refused,
    );
}

/// Resolve's checks: the token is required, the scope bounded, and then the
/// token's format is checked, which must not panic either.
fn resolve(request: &pb::ResolveRequest) {
    let mut v = Violations::default();
    if request.token.is_empty() {
        v.add("token", "token is required");
    }
    if let Some(scope) = v.required_scope("required_scope", &request.required_scope) {
        accepted_scope(scope);
    }
    let refused: &[&str] = if request.token.is_empty() {
        &["token"]
    } else {
        &[]
    };
    if finish(v, &["token", "required_scope"], refused) {
        let _ = token::parse(&request.token);
    }
}

/// Touch's checks: exactly one target, each checked as its own kind.
fn touch(request: &pb::TouchRequest) {
    use pb::touch_request::Target;
    let mut v = Violations::default();
    let mut refused = Vec::new();
    match &request.target {
        Some(Target::CredentialId(id)) => {
            let parsed = v.credential_id("credential_id", id);
            refused.extend(accepted_credential_id(parsed, id));
        }
        Some(Target::ThreadId(thread_id)) => {
            let parsed = v.id("thread_id", thread_id, true);
            accepted_id("thread_id", parsed, true, &mut refused);
        }
        // The handler answers this itself with a violation of `target`.
        None => {}
    }
    finish(v, &["credential_id", "thread_id"], &refused);
}

/// An accepted id is bounded and hides nothing; a required id that was
/// not accepted goes into `refused`, which [`finish`] holds to a violation.
fn accepted_id(field: &'static str, id: Option<&str>, required: bool, refused: &mut Vec<&str>) {
    match id {
        Some(id) => assert!(
            !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(is_forbidden_in_ids),
            "a bad {field} was accepted: {id:?}"
        ),
        None if required => refused.push(field),
        None => {}
    }
}

/// An accepted scope: 1 to [`MAX_SCOPE_BYTES`], nothing hidden.
fn accepted_scope(scope: &str) {
    assert!(
        !scope.is_empty()
            && scope.len() <= MAX_SCOPE_BYTES
            && !scope.chars().any(is_forbidden_in_ids),
        "a bad scope was accepted: {scope:?}"
    );
}

/// An accepted duration override: at least 1 ms and at most the server's.
fn accepted_duration(duration: Option<Duration>, limit: Duration) {
    if let Some(duration) = duration {
        assert!(
            duration >= Duration::from_millis(1) && duration <= limit,
            "a duration out of bounds was accepted: {duration:?}"
        );
    }
}

/// An accepted credential id is the one that was sent, in its only
/// spelling; a refused one must be named by a violation.
fn accepted_credential_id(
    parsed: Option<token::CredentialId>,
    sent: &str,
) -> &'static [&'static str] {
    match parsed {
        Some(id) => {
            assert_eq!(
                id.to_string(),
                sent,
                "a credential id parsed from another spelling"
            );
            &[]
        }
        None => &["credential_id"],
    }
}

/// Every violation names one of `fields` (or an element or key of one)
/// and says something, and each field in `refused` has one; returns
/// whether the request was accepted.
fn finish(violations: Violations, fields: &[&str], refused: &[&str]) -> bool {
    match violations.into_result(()) {
        Ok(()) => {
            assert!(
                refused.is_empty(),
                "{refused:?} refused without a violation"
            );
            true
        }
        Err(found) => {
            for field in refused {
                assert!(
                    found.iter().any(|f| f.field == *field),
                    "{field} refused, but no violation names it"
                );
            }
            assert!(!found.is_empty(), "a refusal without a violation");
            for FieldViolation { field, description } in &found {
                let root = field
                    .split(['.', '['])
                    .next()
                    .expect("split yields at least one part");
                assert!(
                    fields.contains(&root),
                    "violation of an unknown field {field:?}"
                );
                assert!(
                    !description.trim().is_empty(),
                    "violation of {field} says nothing"
                );
            }
            false
        }
    }
}
