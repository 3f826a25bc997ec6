//! Generated protobuf and gRPC types. Nothing else lives here: the rest of the workspace
//! converts these types into the domain types of `portcullis-shared` exactly once, at the
//! boundary, with `TryFrom` and a typed error.

#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("portcullis.v1");
}

/// The encoded `FileDescriptorSet` of every Portcullis proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/portcullis_descriptor.bin"));
