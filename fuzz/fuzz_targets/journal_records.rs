//! Fuzz target `journal_records`: see `credential_authority::fuzzing::journal_records`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credential_authority::fuzzing::journal_records(data));
