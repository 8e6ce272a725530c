//! The size of a request's header list, counted as HTTP/2 counts it for
//! SETTINGS_MAX_HEADER_LIST_SIZE (RFC 7541 §4.1: name + value + 32 per
//! entry, the pseudo-headers included), so the application's limit and
//! h2's own are in the same unit.

use http::Request;

/// What RFC 7541 adds per entry for its bookkeeping.
const ENTRY_OVERHEAD: usize = 32;

/// The header list size of `request`: its pseudo-headers (as hyper keeps
/// them, in the method and URI) and every header value.
pub(super) fn header_list_size<B>(request: &Request<B>) -> usize {
    let entry = |name: &str, value: usize| ENTRY_OVERHEAD + name.len() + value;
    let uri = request.uri();
    let mut size = entry(":method", request.method().as_str().len())
        + entry(
            ":path",
            uri.path_and_query().map_or(0, |p| p.as_str().len()),
        );
    if let Some(scheme) = uri.scheme_str() {
        size += entry(":scheme", scheme.len());
    }
    if let Some(authority) = uri.authority() {
        size += entry(":authority", authority.as_str().len());
    }
    for (name, value) in request.headers() {
        size += entry(name.as_str(), value.len());
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: pseudo-headers left out, the 32 bytes per entry left out,
    /// or repeated headers counted once.
    #[test]
    fn counts_as_rfc_7541_does() {
        let request = Request::builder()
            .method("POST")
            .uri("http://h:1/a.B/C")
            .header("x", "12")
            .header("x", "345")
            .body(())
            .unwrap();
        let expected = (32 + 7 + 4)
            + (32 + 5 + 6)
            + (32 + 7 + 4)
            + (32 + 10 + 3)
            + (32 + 1 + 2)
            + (32 + 1 + 3);
        assert_eq!(header_list_size(&request), expected);
    }
}
