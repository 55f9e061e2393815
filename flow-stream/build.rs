//! Generates the collector's gRPC code from `proto/` without protoc: protox compiles the
//! .proto files (with model's `flow.proto`, which they import) to descriptors in Rust, and
//! tonic-prost-build writes the messages, client and server.
//!
//! The imported `palisade.flow.v1` types (FlowRecord, Endpoint, Counters and the enums) are
//! not generated again: each is mapped to the type `model::wire::v1` already has, so a
//! record has one Rust type from the agent to the learner.

use anyhow::Context as _;

const OWN_ROOT: &str = "proto";
const MODEL_ROOT: &str = "../model/proto";
const PROTOS: &[&str] = &["proto/palisade/flow/v1/collector.proto"];
/// Where model's types live, as prost-build names a Rust path.
const MODEL_WIRE: &str = "::model::wire::v1";

fn main() -> anyhow::Result<()> {
    for path in PROTOS
        .iter()
        .chain(&["../model/proto/palisade/flow/v1/flow.proto"])
    {
        println!("cargo:rerun-if-changed={path}");
    }
    let descriptors =
        protox::compile(PROTOS, [OWN_ROOT, MODEL_ROOT]).context("compiling the .proto files")?;

    let own: Vec<&str> = PROTOS
        .iter()
        .map(|p| {
            p.strip_prefix("proto/")
                .expect("own protos live under proto/")
        })
        .collect();
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // As in model: labels are ordered, so a record encodes the same way every time.
        .btree_map(".");
    // Every type of an imported file maps to model's, by its fully qualified name; a type
    // that one of them gains later maps without a change here.
    for file in descriptors.file.iter().filter(|f| !own.contains(&f.name())) {
        let package = file.package();
        let names = file
            .message_type
            .iter()
            .map(|m| m.name())
            .chain(file.enum_type.iter().map(|e| e.name()));
        for name in names {
            builder = builder.extern_path(
                format!(".{package}.{name}"),
                format!("{MODEL_WIRE}::{name}"),
            );
        }
    }
    // The imported files stay in the set (prost-build needs their messages to decide on
    // derives and boxing); it skips generating the types mapped above.
    builder
        .compile_fds(descriptors)
        .context("generating the collector's code")?;
    Ok(())
}
