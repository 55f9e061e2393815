//! The README's main command, end to end (root): `palisade lab demo` with a short learning
//! period. The demo checks its own summary, built from the agent's flow records (exit
//! status 1 if anything legitimate was denied or an attack was not); this test runs it and
//! reads the summary and the files it wrote.

use std::process::Command;

use tests::{
    lab::{leftovers, program},
    require_root, unique_id,
};

#[test]
fn the_demo_learns_reviews_monitors_enforces_and_blocks_every_attack() {
    require_root!();
    let name = unique_id();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(program())
        .args(["lab", "--name", &name, "demo", "--learn-for", "6s", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    let summary = &stdout[stdout.find("[6/6]").expect("a summary")..];
    assert!(
        summary.contains("ok   the shop's traffic")
            && summary.contains("nothing legitimate was denied"),
        "{summary}"
    );
    for attack in [
        "lateral movement",
        "port scan",
        "exfiltration over TCP",
        "exfiltration over UDP",
        "Log4Shell-style LDAP callback",
        "cryptominer",
        "DNS tunnel",
        "spoofed source address",
    ] {
        let line = summary
            .lines()
            .find(|l| l.contains(attack))
            .unwrap_or_else(|| panic!("{attack} in\n{summary}"));
        assert!(line.trim_start().starts_with("ok"), "{line}\n{summary}");
    }
    assert!(!summary.contains("FAIL"), "{summary}");
    for file in [
        "baseline.db",
        "review.html",
        "review.md",
        "proposal/NOTES.md",
    ] {
        assert!(
            out.path().join(file).exists(),
            "{file} in {}",
            out.path().display()
        );
    }
    assert!(
        out.path()
            .join("proposal/networkpolicies/shop/palisade-deployment-frontend.yaml")
            .exists()
    );
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}
