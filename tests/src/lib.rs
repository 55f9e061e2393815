//! Helpers for the end-to-end tests under `tests/tests/`: they load real eBPF and build
//! real network namespaces, so they need root; each test names what it creates uniquely.

use std::path::PathBuf;

/// Skip the calling test (return early, with a clear message) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("SKIPPED: needs root (eBPF and network namespaces)");
            return;
        }
    };
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A short id unique to this test run, for lab, namespace, interface and pin names
/// (interface names are at most 15 bytes: `pl-<id>-<n>`).
pub fn unique_id() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The `palisade` binary built next to the test binary (`target/<profile>/palisade`).
/// The README's test command builds it before running the tests.
pub fn palisade_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("palisade");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --bin palisade`)",
        bin.display()
    );
    bin
}

pub mod agent;
/// A fake Kubernetes API server for the Kubernetes agent's end-to-end test.
pub mod fake_apiserver;
pub mod frames;
pub mod kernel;
pub mod lab;
pub mod namespaces;
pub mod traffic;
