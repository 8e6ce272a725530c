//! Fuzz target `secret_parsing`: see `credential_authority::fuzzing::secret_parsing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credential_authority::fuzzing::secret_parsing(data));
