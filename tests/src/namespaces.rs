//! Network namespaces the tests create, and `ip` commands inside them.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use enforcer::netns;

/// A network namespace that is deleted (with the veths in it) when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Create it; name it uniquely (`palisade-<test>-<id>...`).
    pub fn new(name: String) -> Self {
        ip(None, &[format!("netns add {name}")]);
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        netns::path(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if netns::exists(&self.name) {
            let status = Command::new("ip")
                .args(["netns", "delete", &self.name])
                .status();
            if !status.is_ok_and(|s| s.success()) {
                eprintln!("could not delete netns {}", self.name);
            }
        }
    }
}

/// Run `ip -batch` with `commands`, inside `netns` when given; panic with its stderr.
pub fn ip(netns: Option<&str>, commands: &[String]) {
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ip");
    let mut input = commands.join("\n");
    input.push('\n');
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("writing to ip");
    let output = child.wait_with_output().expect("waiting for ip");
    assert!(
        output.status.success(),
        "ip {args:?} failed on\n{input}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
