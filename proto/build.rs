//! Compiles the `.proto` files with protox (pure Rust), so no `protoc` install is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/portcullis/v1/config.proto",
        "proto/portcullis/v1/admin.proto",
        "proto/portcullis/v1/discovery.proto",
        "proto/portcullis/v1/runtime.proto",
        "proto/portcullis/v1/audit.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set also feeds gRPC server reflection.
    std::fs::write(
        out_dir.join("portcullis_descriptor.bin"),
        prost_encode(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

fn prost_encode(descriptors: &prost_types::FileDescriptorSet) -> Vec<u8> {
    use prost::Message;
    descriptors.encode_to_vec()
}
