//! Fuzz target `rpc_bodies`: see `credential_authority::fuzzing::rpc_bodies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credential_authority::fuzzing::rpc_bodies(data));
