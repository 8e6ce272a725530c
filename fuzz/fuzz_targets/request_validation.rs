//! Fuzz target `request_validation`: see `credential_authority::fuzzing::request_validation`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credential_authority::fuzzing::request_validation(data));
