//! Fuzz target `callers_file`: see `credential_authority::fuzzing::callers_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credential_authority::fuzzing::callers_file(data));
