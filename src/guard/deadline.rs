//! The per-request deadline: the server's `--request-timeout`, or the
//! client's `grpc-timeout` when that is sooner.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::error::Failure;

/// When a call must be done, and the budget it was given.
#[derive(Clone, Copy, Debug)]
pub(super) struct Deadline {
    /// The instant the call is cut off.
    pub(super) at: Instant,
    /// The time it was given, for the failure's message.
    pub(super) budget: Duration,
}

impl Deadline {
    /// The deadline of a call starting now, with `headers` and the
    /// server's `timeout`. A malformed `grpc-timeout` is ignored: the
    /// server's deadline still holds.
    pub(super) fn for_request(headers: &HeaderMap, timeout: Duration) -> Deadline {
        let budget = match headers.get("grpc-timeout").and_then(parse_grpc_timeout) {
            Some(client) if client < timeout => client,
            _ => timeout,
        };
        Deadline {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// The failure of a call cut off at this deadline.
    pub(super) fn exceeded(self) -> Failure {
        Failure::DeadlineExceeded {
            deadline: self.budget,
        }
    }
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n), as the
/// gRPC over HTTP/2 spec writes it.
fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: a unit misread (milliseconds as seconds), a client allowed
    /// past the server's deadline, or a malformed value trusted.
    #[test]
    fn the_sooner_deadline_wins_and_bad_values_are_ignored() {
        let parse = |s: &'static str| parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let server = Duration::from_secs(10);
        let mut headers = HeaderMap::new();
        assert_eq!(Deadline::for_request(&headers, server).budget, server);
        headers.insert("grpc-timeout", HeaderValue::from_static("250m"));
        assert_eq!(
            Deadline::for_request(&headers, server).budget,
            Duration::from_millis(250)
        );
        headers.insert("grpc-timeout", HeaderValue::from_static("1M"));
        assert_eq!(Deadline::for_request(&headers, server).budget, server);
    }
}
