//! A pinned datapath of another layout is refused with a clear error, never reused. Root.

use enforcer::{
    Error,
    datapath::{self, Pins},
};
use enforcer_common::maps;
use tests::require_root;

#[test]
fn pinned_maps_of_another_layout_are_refused_by_name() {
    require_root!();
    let pins = Pins::new(format!(
        "/sys/fs/bpf/palisade-layout-{}",
        tests::unique_id()
    ));
    drop(datapath::install(&pins).unwrap());
    // Reinstalling over a compatible pinned datapath is how a restart works.
    drop(datapath::install(&pins).unwrap());
    // Make CONNTRACK's pin another map (COUNTERS), as an incompatible version would leave it.
    std::fs::remove_file(pins.map(maps::CONNTRACK)).unwrap();
    std::fs::rename(pins.map(maps::COUNTERS), pins.map(maps::CONNTRACK)).unwrap();
    let result = datapath::install(&pins);
    datapath::uninstall(&pins).unwrap();
    match result {
        Err(e @ Error::LayoutMismatch { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("CONNTRACK") && text.contains("palisade uninstall"),
                "{text}"
            );
        }
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("an incompatible pinned map was reused"),
    }
}

#[test]
fn conntrack_keeps_the_size_it_was_installed_with() {
    require_root!();
    let pins = Pins::new(format!(
        "/sys/fs/bpf/palisade-ctsize-{}",
        tests::unique_id()
    ));
    let small = datapath::Sizing {
        conntrack_max: 4096,
    };
    drop(datapath::install_with(&pins, small).unwrap());
    let info = aya::maps::MapInfo::from_pin(pins.map(maps::CONNTRACK)).unwrap();
    let resized = datapath::install(&pins).map(drop);
    let again = datapath::install_with(&pins, small).map(drop);
    datapath::uninstall(&pins).unwrap();
    assert_eq!(info.max_entries(), 4096);
    match resized {
        Err(e @ Error::ConntrackSize { .. }) => {
            let text = e.to_string();
            assert!(text.contains("--conntrack-max 4096"), "{text}");
        }
        other => panic!("a pinned CONNTRACK was resized or reused: {other:?}"),
    }
    again.unwrap();
}
