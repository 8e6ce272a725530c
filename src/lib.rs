//! credential-authority: mints, resolves and revokes the bearer credentials
//! that AI coding-agent sessions use to call a host's MCP tools.
//!
//! The crate is laid out one module per concern: [`pb`] is the generated
//! contract, [`token`] the token format, [`auth`] callers, their keys and
//! roles, [`state_dir`] where the callers file and the first admin key live,
//! [`clock`] injected time, [`store`] the embedded store, [`validate`]
//! request checking, [`error`] typed failures, [`service`] the gRPC service,
//! [`request_id`] per-call ids, [`config`] the command line, [`telemetry`]
//! logging, [`audit`] the audit trail, [`transport`] the TCP, TLS and Unix
//! listeners and the HTTP/2 connection loop, [`guard`] the per-call limits
//! (metadata size, calls in flight, deadline), and [`server`] the wiring
//! that `main` and the tests share.

pub mod allocator;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod request_id;
pub mod server;
pub mod service;
pub mod state_dir;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod transport;
pub mod validate;

/// The generated contract (`proto/`), with the descriptor set served by
/// reflection.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("credential_authority.v1");

    /// The encoded descriptors of the contract, the error-detail types and
    /// the well-known types they use.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("credential_authority_descriptor");
}
