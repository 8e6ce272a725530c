//! A request id for every call: the caller's `x-request-id` when it sent a
//! sane one, else a fresh one. It is stored in the request's extensions for
//! the handlers, echoed in the response headers (gRPC response metadata, also
//! on failures), and written in the call's log line, so an operator can find
//! the log of any failure a user reports.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue};
use rand::RngCore as _;
use tower::{Layer, Service};

use crate::token::{CALLER_KEY_PREFIX, TOKEN_PREFIX};

/// The metadata key of the request id, in both directions.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest caller-supplied id that is kept; a longer or odd one is
/// replaced so that a caller cannot bloat or forge log lines.
const MAX_LEN: usize = 128;

/// A call's request id, as found in the request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id's text (always printable ASCII: checked once, when the id
    /// was made, not again on every log line).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.0.as_bytes()).unwrap_or("-")
    }

    /// A fresh random id: 16 random bytes as hex.
    fn generate() -> Self {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let text = crate::token::hex16(&bytes);
        RequestId(HeaderValue::from_bytes(&text).expect("hex is a valid header value"))
    }

    /// The caller's id when it is 1 to [`MAX_LEN`] characters of
    /// `[A-Za-z0-9._:-]` and holds no token or caller-key prefix anywhere:
    /// the id is echoed into log lines, audit records, response headers and
    /// ErrorInfo, so a secret pasted into `x-request-id` (both alphabets fit
    /// the one above) must be dropped, not repeated. Case-sensitive, as the
    /// prefixes are; an id refused here is replaced like any other.
    fn from_caller(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let sane = !bytes.is_empty()
            && bytes.len() <= MAX_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        // Checked on the bytes: only ASCII is left after the check above.
        let secret = [TOKEN_PREFIX, CALLER_KEY_PREFIX].iter().any(|prefix| {
            bytes
                .windows(prefix.len())
                .any(|window| window == prefix.as_bytes())
        });
        (sane && !secret).then(|| RequestId(value.clone()))
    }

    /// The id for an incoming request.
    fn for_request<B>(request: &http::Request<B>) -> Self {
        request
            .headers()
            .get(&HEADER)
            .and_then(Self::from_caller)
            .unwrap_or_else(Self::generate)
    }
}

/// Tags every call with a [`RequestId`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    /// The wrapped service (the routes, or the next layer), called with the
    /// id already in the request's extensions.
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestIdService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let id = RequestId::for_request(&request);
        let mut header = id.0.clone();
        // HPACK "never indexed": every response carries a different id, so
        // indexing it would only churn the connection's dynamic table (each
        // insert evicted an older entry after comparing the new value with
        // every id still there: about a tenth of a call's instructions).
        header.set_sensitive(true);
        request.extensions_mut().insert(id);
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            response.headers_mut().insert(HEADER, header);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_caller_ids_and_replaces_others() {
        let keep = HeaderValue::from_static("req-42.a:b_c");
        assert_eq!(
            RequestId::from_caller(&keep).unwrap().as_str(),
            "req-42.a:b_c"
        );
        for bad in ["", "has space", "quote\"", "x".repeat(129).as_str()] {
            assert!(RequestId::from_caller(&HeaderValue::from_str(bad).unwrap()).is_none());
        }
        let generated = RequestId::generate();
        assert_eq!(generated.as_str().len(), 32);
        assert_ne!(generated.as_str(), RequestId::generate().as_str());
    }

    /// Catches the echoed id going out as an ordinary (indexed) header:
    /// each would evict an older entry from the connection's HPACK table.
    #[tokio::test]
    async fn the_echoed_id_is_never_indexed_and_the_callers_own_is_kept() {
        let mut service = RequestIdLayer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
        for sent in [None, Some("req-42")] {
            let mut request = http::Request::builder();
            if let Some(id) = sent {
                request = request.header(HEADER, id);
            }
            let response = service.call(request.body(()).unwrap()).await.unwrap();
            let echoed = &response.headers()[HEADER];
            assert!(echoed.is_sensitive(), "indexed: {echoed:?}");
            if let Some(id) = sent {
                assert_eq!(echoed, id);
            }
        }
    }

    #[test]
    fn ids_holding_a_token_or_caller_key_prefix_are_replaced() {
        let token = crate::token::Token::generate();
        let key = crate::auth::key::CallerKey::generate().unwrap();
        for secret in [
            token.expose().to_owned(),
            key.expose().to_owned(),
            format!("req-1:{}", token.expose()),
            format!("trace.{}.x", key.expose()),
            "mcpca_".to_owned(),
            "xmcpck_".to_owned(),
        ] {
            let value = HeaderValue::from_str(&secret).unwrap();
            assert!(RequestId::from_caller(&value).is_none(), "kept {secret}");
            let request = http::Request::builder()
                .header(HEADER, value)
                .body(())
                .unwrap();
            let id = RequestId::for_request(&request);
            assert_eq!(id.as_str().len(), 32, "not a fresh id: {}", id.as_str());
            assert!(!id.as_str().contains("mcpc"), "{}", id.as_str());
        }
        // Case-sensitive like the prefixes, and near misses are kept.
        for kept in ["MCPCA_x", "Mcpck_x", "mcpca-x", "mcpck.x", "mcp_ca_x"] {
            let value = HeaderValue::from_static(kept);
            assert_eq!(RequestId::from_caller(&value).unwrap().as_str(), kept);
        }
    }
}
