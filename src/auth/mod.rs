//! Who is calling: caller keys, the callers file, and the roles and
//! identities that decide what each caller may do.

pub mod cli;
pub mod file;
pub mod key;
