//! Builds the kernel programs (`enforcer-ebpf`) with the nightly toolchain and bpf-linker,
//! into `OUT_DIR/datapath`, which `src/datapath/object.rs` embeds in the binary.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../enforcer-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "enforcer-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run scripts/setup.sh (nightly with rust-src and \
         bpf-linker built against the nightly's LLVM)",
    )
}
