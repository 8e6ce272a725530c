//! Compiles the contract with `protox` (pure Rust, no system `protoc`) and
//! generates the tonic server and client with `tonic-prost-build`.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/credential_authority/v1/authority.proto",
        // Compiled only so that reflection can describe the error details
        // (ErrorInfo, BadRequest, RetryInfo) to generic clients like grpcurl.
        "proto/google/rpc/error_details.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;

    // `compile_fds` ignores `file_descriptor_set_path`, so the encoded set that
    // reflection serves is written by hand.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("credential_authority_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
