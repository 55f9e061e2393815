//! The kernel object, built by `build.rs` (aya-build, nightly + bpf-linker) and embedded.

/// The ELF object holding `from_pod`, `to_pod` and their maps.
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath"))
}
