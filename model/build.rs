//! Generates `model::wire::v1` from `proto/` without protoc: protox compiles the .proto
//! files to descriptors in Rust, prost-build writes the code.

use std::error::Error;

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &["proto/palisade/flow/v1/flow.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, [PROTO_ROOT])?;
    prost_build::Config::new()
        // Labels as in `model::Peer`: ordered, so a record encodes the same way every time.
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
