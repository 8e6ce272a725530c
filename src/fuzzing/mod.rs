//! The checks behind the fuzz targets (`fuzz/fuzz_targets/*.rs`) and the
//! replay of their committed corpora (`tests/fuzz_corpus.rs`).
//!
//! Each fuzz target's body is one call into this module, so a crash the
//! fuzzer finds replays as an ordinary `cargo test` once its input is
//! committed under `fuzz/corpus/<target>/`. The checks live in the library,
//! not in the fuzz crate, because they need crate-private parts (the secret
//! format behind tokens and caller keys) and must be the same code in both
//! places. Every check panics on a broken property; that is how libFuzzer
//! and the test harness both learn of it.
//!
//! Not part of the service: nothing outside fuzzing and its replay calls it.

mod callers_file;
mod journal;
mod requests;
mod rpc;
mod secrets;
mod seeds;

pub use callers_file::callers_file;
pub use journal::{journal_open_outcome, journal_records};
pub use requests::request_validation;
pub use rpc::rpc_bodies;
pub use secrets::secret_parsing;
pub use seeds::{seeds, Seed};

/// A fuzz target: its name (as `cargo fuzz` and the corpus folder call it)
/// and the check it runs on each input.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
    pub name: &'static str,
    /// Panics when the input breaks one of the target's properties.
    pub check: fn(&[u8]),
}

/// Every fuzz target, for the corpus replay and the seed generator.
pub const TARGETS: [Target; 5] = [
    Target {
        name: "secret_parsing",
        check: secret_parsing,
    },
    Target {
        name: "request_validation",
        check: request_validation,
    },
    Target {
        name: "callers_file",
        check: callers_file,
    },
    Target {
        name: "rpc_bodies",
        check: rpc_bodies,
    },
    Target {
        name: "journal_records",
        check: journal_records,
    },
];

/// Whether `c` is one of the characters no accepted id, scope or label may
/// hold: control characters and the invisible and bidirectional formatting
/// characters of the contract (U+200B-U+200F, U+2028-U+202E,
/// U+2060-U+2069, U+FEFF). Written here from the contract, not taken from
/// `validate`, so a mistake there cannot hide itself.
fn is_forbidden_in_ids(c: char) -> bool {
    c.is_control()
        || ('\u{200B}'..='\u{200F}').contains(&c)
        || ('\u{2028}'..='\u{202E}').contains(&c)
        || ('\u{2060}'..='\u{2069}').contains(&c)
        || c == '\u{FEFF}'
}
