//! Request checking, before any store access.
//!
//! Every violation is collected (not just the first), so one INVALID_ARGUMENT
//! answer names every bad field. Descriptions never echo the offending value:
//! a caller may have put a token in the wrong field.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{Labels, Scopes};
use crate::token::CredentialId;

/// The longest id (thread, provider instance, provider kind) accepted, in
/// bytes. Bounds memory per credential and log line length.
pub const MAX_ID_BYTES: usize = 256;
/// The most scopes one credential may hold.
pub const MAX_SCOPES: usize = 64;
/// The longest scope, in bytes.
pub const MAX_SCOPE_BYTES: usize = 128;
/// The most labels one credential may carry.
pub const MAX_LABELS: usize = 16;
/// The longest label key, in characters of `[a-z0-9_.-]`.
pub const MAX_LABEL_KEY_CHARS: usize = 63;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// What [`is_hidden`] refuses, as a violation says it.
const HIDDEN_RULE: &str = "must not contain control characters, or invisible or bidirectional \
                           formatting characters (U+200B-U+200F, U+2028-U+202E, \
                           U+2060-U+2069, U+FEFF)";

/// Whether `c` may not appear in an id, scope or label: control characters,
/// and the invisible and bidirectional formatting characters with which a
/// stored or echoed value could be made to display as something else (a
/// thread id that reads as another, a scope that hides a suffix).
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path as in the proto (`thread_id`, `scopes[2]`,
    /// `labels.env`, ...).
    pub field: std::borrow::Cow<'static, str>,
    /// Why it is bad, in words a caller can act on.
    pub description: String,
}

/// The violations found in one request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records a violation.
    pub fn add(&mut self, field: &'static str, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// `Ok(value)` when nothing was recorded, else every violation.
    pub fn into_result<T>(self, value: T) -> Result<T, Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    /// Checks an id field: at most [`MAX_ID_BYTES`], nothing [`is_hidden`],
    /// and present when required. Returns `None` for an absent optional id.
    pub fn id<'a>(
        &mut self,
        field: &'static str,
        value: &'a str,
        required: bool,
    ) -> Option<&'a str> {
        if value.is_empty() {
            if required {
                self.add(field, format!("{field} is required"));
            }
            return None;
        }
        let mut ok = true;
        if value.len() > MAX_ID_BYTES {
            self.add(
                field,
                format!(
                    "{field} must be at most {MAX_ID_BYTES} bytes, got {}",
                    value.len()
                ),
            );
            ok = false;
        }
        if value.chars().any(is_hidden) {
            self.add(field, format!("{field} {HIDDEN_RULE}"));
            ok = false;
        }
        ok.then_some(value)
    }

    /// Checks a required credential handle (`cred_` + 32 hex digits).
    pub fn credential_id(&mut self, field: &'static str, value: &str) -> Option<CredentialId> {
        if value.is_empty() {
            self.add(field, format!("{field} is required"));
            return None;
        }
        let parsed = CredentialId::parse(value);
        if parsed.is_none() {
            self.add(
                field,
                format!("{field} must be `cred_` followed by 32 lowercase hex digits, as Mint returns it"),
            );
        }
        parsed
    }

    /// Checks one scope name: 1 to [`MAX_SCOPE_BYTES`] bytes, no control
    /// characters. `field` names it in a violation.
    fn scope_ok(&mut self, field: impl FnOnce() -> String, value: &str) -> bool {
        let problem = if value.is_empty() {
            Some("must not be empty".to_owned())
        } else if value.len() > MAX_SCOPE_BYTES {
            Some(format!(
                "must be at most {MAX_SCOPE_BYTES} bytes, got {}",
                value.len()
            ))
        } else if value.chars().any(is_hidden) {
            Some(HIDDEN_RULE.to_owned())
        } else {
            None
        };
        match problem {
            Some(problem) => {
                let field = field();
                self.0.push(FieldViolation {
                    description: format!("{field} {problem}"),
                    field: field.into(),
                });
                false
            }
            None => true,
        }
    }

    /// Checks an optional scope a call requires.
    pub fn required_scope<'a>(&mut self, field: &'static str, value: &'a str) -> Option<&'a str> {
        if value.is_empty() {
            return None;
        }
        self.scope_ok(|| field.to_owned(), value).then_some(value)
    }

    /// Checks a credential's scopes: at most [`MAX_SCOPES`], each valid.
    /// Duplicates are dropped, first occurrence kept.
    pub fn scopes(&mut self, values: &[String]) -> Scopes {
        if values.len() > MAX_SCOPES {
            self.add(
                "scopes",
                format!(
                    "scopes must hold at most {MAX_SCOPES} entries, got {}",
                    values.len()
                ),
            );
            return Arc::from([]);
        }
        let mut kept: Vec<Box<str>> = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            if self.scope_ok(|| format!("scopes[{index}]"), value)
                && !kept.iter().any(|k| **k == **value)
            {
                kept.push(value.as_str().into());
            }
        }
        kept.into()
    }

    /// Checks a credential's labels: at most [`MAX_LABELS`]; keys 1 to
    /// [`MAX_LABEL_KEY_CHARS`] characters of `[a-z0-9_.-]`; values at most
    /// [`MAX_LABEL_VALUE_BYTES`] bytes without anything [`is_hidden`]. Returns
    /// them sorted by key.
    pub fn labels(&mut self, values: &HashMap<String, String>) -> Labels {
        if values.len() > MAX_LABELS {
            self.add(
                "labels",
                format!(
                    "labels must hold at most {MAX_LABELS} entries, got {}",
                    values.len()
                ),
            );
            return Arc::from([]);
        }
        let mut kept: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(values.len());
        for (key, value) in values {
            let key_ok = (1..=MAX_LABEL_KEY_CHARS).contains(&key.len())
                && key.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
                });
            if !key_ok {
                self.add(
                    "labels",
                    format!(
                        "label keys must be 1 to {MAX_LABEL_KEY_CHARS} characters of [a-z0-9_.-], got one of {} bytes",
                        key.len()
                    ),
                );
                continue;
            }
            let problem = if value.len() > MAX_LABEL_VALUE_BYTES {
                Some(format!(
                    "must be at most {MAX_LABEL_VALUE_BYTES} bytes, got {}",
                    value.len()
                ))
            } else if value.chars().any(is_hidden) {
                Some(HIDDEN_RULE.to_owned())
            } else {
                None
            };
            match problem {
                Some(problem) => {
                    let field = format!("labels.{key}");
                    self.0.push(FieldViolation {
                        description: format!("{field} {problem}"),
                        field: field.into(),
                    });
                }
                None => kept.push((key.as_str().into(), value.as_str().into())),
            }
        }
        kept.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        kept.into()
    }

    /// Checks an optional duration override: valid, at least 1 ms and at most
    /// `limit` (the server's configured value).
    pub fn duration(
        &mut self,
        field: &'static str,
        value: Option<&prost_types::Duration>,
        limit: Duration,
    ) -> Option<Duration> {
        let value = value?;
        let (seconds, nanos) = (value.seconds, value.nanos);
        if !(-999_999_999..=999_999_999).contains(&nanos)
            || (seconds > 0 && nanos < 0)
            || (seconds < 0 && nanos > 0)
        {
            self.add(
                field,
                format!("{field} is not a valid duration (seconds and nanos disagree)"),
            );
            return None;
        }
        if seconds < 0 || nanos < 0 {
            self.add(
                field,
                format!("{field} must be positive, got a negative duration"),
            );
            return None;
        }
        let duration = Duration::new(seconds as u64, nanos as u32);
        if duration.is_zero() {
            self.add(field, format!("{field} must be positive, got zero"));
            return None;
        }
        if duration < Duration::from_millis(1) {
            self.add(field, format!("{field} must be at least 1ms"));
            return None;
        }
        if duration > limit {
            self.add(
                field,
                format!(
                    "{field} must not exceed the server's {} ({}), got {}",
                    field.replace('_', " "),
                    humantime::format_duration(limit),
                    humantime::format_duration(duration)
                ),
            );
            return None;
        }
        Some(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn ids() {
        let mut v = Violations::default();
        assert_eq!(v.id("thread_id", "t-1", true), Some("t-1"));
        assert_eq!(v.id("provider_kind", "", false), None);
        assert!(v.0.is_empty());
        assert_eq!(v.id("thread_id", "", true), None);
        assert_eq!(v.id("thread_id", &"x".repeat(257), true), None);
        assert_eq!(
            v.id("thread_id", &"x".repeat(256), true).map(str::len),
            Some(256)
        );
        assert_eq!(v.id("thread_id", "a\nb", true), None);
        assert_eq!(v.id("thread_id", "a\u{7f}b", true), None);
        assert_eq!(v.0.len(), 4);
        assert!(v.0.iter().all(|f| f.field == "thread_id"));
    }

    /// Catches: ids, scopes or labels that can display as something else
    /// (bidi overrides, zero-width characters, a BOM) accepted, or plain
    /// non-ASCII text refused along with them.
    #[test]
    fn hidden_characters_are_refused_everywhere() {
        let hidden = [
            '\u{200B}', '\u{200F}', '\u{2028}', '\u{202A}', '\u{202E}', '\u{2060}', '\u{2066}',
            '\u{2069}', '\u{FEFF}', '\u{7}', '\u{85}',
        ];
        for c in hidden {
            let text = format!("thread{c}1");
            let mut v = Violations::default();
            assert_eq!(v.id("thread_id", &text, true), None, "{c:?}");
            assert_eq!(v.required_scope("required_scope", &text), None, "{c:?}");
            let scopes = v.scopes(std::slice::from_ref(&text));
            assert!(scopes.is_empty(), "{c:?}");
            v.labels(&HashMap::from([("env".to_owned(), text.clone())]));
            let fields: Vec<_> = v.0.iter().map(|f| f.field.to_string()).collect();
            assert_eq!(
                fields,
                ["thread_id", "required_scope", "scopes[0]", "labels.env"],
                "{c:?}"
            );
            assert!(v.0.iter().all(|f| f.description.contains("U+202E")));
        }
        // Ordinary text outside ASCII stays welcome.
        let mut v = Violations::default();
        for fine in ["thread-é", "会话-1", "a\u{200A}b", "x\u{2070}y", "מזהה"] {
            assert_eq!(v.id("thread_id", fine, true), Some(fine));
        }
        assert!(v.0.is_empty(), "{:?}", v.0);
    }

    #[test]
    fn durations() {
        let limit = Duration::from_secs(60);
        let mut v = Violations::default();
        assert_eq!(v.duration("idle_timeout", None, limit), None);
        assert_eq!(
            v.duration("idle_timeout", Some(&pb(60, 0)), limit),
            Some(limit)
        );
        assert_eq!(
            v.duration("idle_timeout", Some(&pb(0, 1_000_000)), limit),
            Some(Duration::from_millis(1))
        );
        assert!(v.0.is_empty());
        for bad in [
            pb(0, 0),
            pb(-1, 0),
            pb(0, -5),
            pb(61, 0),
            pb(60, 1),
            pb(0, 999),
            pb(1, -1),
            pb(0, 1_000_000_000),
        ] {
            assert_eq!(
                v.duration("idle_timeout", Some(&bad), limit),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(v.0.len(), 8);
    }

    #[test]
    fn scopes_are_bounded_and_deduplicated() {
        let mut v = Violations::default();
        let scopes = v.scopes(&["a".into(), "b".into(), "a".into()]);
        assert_eq!(&*scopes, ["a".into(), "b".into()] as [Box<str>; 2]);
        let full: Vec<String> = (0..64).map(|i| format!("s{i}")).collect();
        assert_eq!(v.scopes(&full).len(), 64);
        assert!(v.0.is_empty());
        let too_many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        v.scopes(&too_many);
        v.scopes(&[
            "ok".into(),
            String::new(),
            "x".repeat(129),
            "bell\u{7}".into(),
        ]);
        assert_eq!(v.scopes(&["x".repeat(128)]).len(), 1);
        let fields: Vec<_> = v.0.iter().map(|f| f.field.to_string()).collect();
        assert_eq!(fields, ["scopes", "scopes[1]", "scopes[2]", "scopes[3]"]);
    }

    #[test]
    fn labels_are_bounded_and_sorted() {
        let mut v = Violations::default();
        let labels = v.labels(&HashMap::from([
            ("zone".to_owned(), "b".to_owned()),
            ("env.id-1_x".to_owned(), "a".to_owned()),
            ("k".to_owned(), "v".repeat(256)),
            ("x".repeat(63), String::new()),
        ]));
        assert!(v.0.is_empty(), "{:?}", v.0);
        assert_eq!(&*labels[0].0, "env.id-1_x");
        assert_eq!(labels.len(), 4);
        let too_many: HashMap<_, _> = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        v.labels(&too_many);
        assert_eq!(v.0.last().unwrap().field, "labels");
        for bad_key in ["", "Upper", "sp ace", "ü", &"x".repeat(64)] {
            let mut v = Violations::default();
            v.labels(&HashMap::from([(bad_key.to_owned(), "v".to_owned())]));
            assert_eq!(v.0.len(), 1, "{bad_key:?}");
            assert_eq!(v.0[0].field, "labels");
        }
        for bad_value in ["v".repeat(257), "tab\there".to_owned()] {
            let mut v = Violations::default();
            v.labels(&HashMap::from([("env".to_owned(), bad_value)]));
            assert_eq!(v.0[0].field, "labels.env");
        }
    }
}
