//! One audit line: an [`AuditEvent`] with its time (and, for a denial, the
//! counts suppressed before it) as one JSON object and a newline.
//!
//! The line is built by `serde_json`, so whatever a client sent (a thread id
//! with quotes, newlines or control characters) is escaped and cannot forge
//! a second line or field.

use serde::Serialize;

use super::limiter::Suppressed;
use super::AuditEvent;
use crate::clock::Millis;

/// The JSON object of one line. Field order is the order of the struct:
/// `time`, `request_id`, `rpc`, `outcome`, the optional fields that are
/// set, then `suppressed` (this peer's denials not written since its
/// previous line) and `suppressed_total` (any peer's denials refused by the
/// total budget since the previous denial line), each when non-zero.
#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    request_id: &'a str,
    rpc: &'a str,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_instance_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_owned: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaced: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    suppressed: u64,
    #[serde(skip_serializing_if = "is_zero")]
    suppressed_total: u64,
}

/// Whether a count is left out of the line.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The complete line for `event` at `now`, newline included, ready for one
/// `write_all`.
pub(super) fn encode(event: &AuditEvent<'_>, now: Millis, suppressed: Suppressed) -> Vec<u8> {
    // Destructured without `..`: a field added to the event that is not
    // added to the line is a compile error, not a silently missing field.
    let AuditEvent {
        request_id,
        rpc,
        outcome,
        caller,
        key_id,
        credential_id,
        thread_id,
        provider_instance_id,
        cause,
        revoked,
        not_owned,
        replaced,
        peer,
        detail,
    } = *event;
    let time = rfc3339_millis(now);
    let line = Line {
        time: &time,
        request_id,
        rpc,
        outcome,
        caller,
        key_id,
        credential_id,
        thread_id,
        provider_instance_id,
        cause,
        revoked,
        not_owned,
        replaced,
        peer,
        detail,
        suppressed: suppressed.peer,
        suppressed_total: suppressed.total,
    };
    let mut buf = Vec::with_capacity(256);
    serde_json::to_writer(&mut buf, &line)
        .expect("a line of strings and integers always serializes into memory");
    buf.push(b'\n');
    buf
}

/// `now` as RFC 3339 UTC with milliseconds, e.g. `2026-12-02T10:11:12.345Z`.
/// Written here rather than with a date crate: it is twenty lines, and the
/// audit trail must not depend on the local time zone database.
pub(super) fn rfc3339_millis(now: Millis) -> String {
    const DAY: u64 = 86_400_000;
    let (days, in_day) = (now / DAY, now % DAY);
    let (year, month, day) = civil_from_days(days);
    let (secs, millis) = (in_day / 1000, in_day % 1000);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian (year, month, day) of a count of days since
/// 1970-01-01: Howard Hinnant's `civil_from_days`, for non-negative days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shifted so that eras (400 years, 146097 days) start on 0000-03-01,
    // which puts the leap day at the end of the (March-based) year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
