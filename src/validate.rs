//! Request checking, before any store access.
//!
//! Every violation is collected (not just the first), so one INVALID_ARGUMENT
//! answer names every bad field. Descriptions never echo the offending value:
//! a caller may have put a token in the wrong field.

use std::time::Duration;

/// The longest id (thread, provider instance, provider kind) accepted, in
/// bytes. Bounds memory per credential and log line length.
pub const MAX_ID_BYTES: usize = 256;

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name as in the proto (`thread_id`, `idle_timeout`, ...).
    pub field: &'static str,
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
            field,
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

    /// Checks an id field: at most [`MAX_ID_BYTES`], no control characters,
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
        if value.chars().any(char::is_control) {
            self.add(
                field,
                format!("{field} must not contain control characters"),
            );
            ok = false;
        }
        ok.then_some(value)
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
}
