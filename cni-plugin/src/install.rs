//! `palisade-cni install` / `uninstall`: put the binary where the runtime looks for
//! plugins and chain it into the network configuration the runtime uses.
//!
//! Every write is a temporary file in the same folder renamed over the target, because the
//! runtime reads these folders at any moment (containerd watches the configuration folder)
//! and must never see half a file. Temporary names end in `.tmp`, which libcni ignores.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::format_timeout;
use crate::error::{Error, Result};

/// The plugin's `type` in a conflist, which is also its file name in the bin folder.
pub const PLUGIN_TYPE: &str = "palisade-cni";

/// The extensions libcni (and so containerd and CRI-O) loads network configurations from.
const CONFIG_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// palisade-cni's entry in a conflist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl ChainEntry {
    fn fields(&self) -> [(&'static str, Value); 2] {
        [
            ("socket", json!(self.socket.display().to_string())),
            ("timeout", json!(format_timeout(self.timeout))),
        ]
    }
}

/// The result of [`chain_into`]: which file, and whether it had to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chained {
    pub path: PathBuf,
    pub changed: bool,
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies `source` (the running binary) to `bin_dir/palisade-cni`, replacing any older copy
/// in one rename so a runtime starting a sandbox meanwhile runs either the old or the new
/// binary, never a partial one.
pub fn install_binary(source: &Path, bin_dir: &Path) -> Result<PathBuf> {
    let target = bin_dir.join(PLUGIN_TYPE);
    let bytes = fs::read(source).map_err(file_error(source))?;
    if fs::read(&target).is_ok_and(|existing| existing == bytes) {
        return Ok(target);
    }
    write_atomic(&target, &bytes, 0o755)?;
    Ok(target)
}

/// Removes `bin_dir/palisade-cni`; `false` when it was not there.
pub fn remove_binary(bin_dir: &Path) -> Result<bool> {
    let target = bin_dir.join(PLUGIN_TYPE);
    match fs::remove_file(&target) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(file_error(&target)(e)),
    }
}

/// The network configuration files of `conf_dir` in the order libcni sorts them; the
/// runtime uses the first.
fn network_configs(conf_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(conf_dir).map_err(file_error(conf_dir))? {
        let path = entry.map_err(file_error(conf_dir))?.path();
        let loadable = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e));
        if loadable && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The configuration the runtime uses: the first by name, as kubelet's runtimes pick it.
pub fn runtime_config(conf_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(network_configs(conf_dir)?.into_iter().next())
}

/// Waits up to `wait` for the primary CNI to write its configuration (the DaemonSet's init
/// container can start before it), polling every `poll`.
pub fn wait_for_config(conf_dir: &Path, wait: Duration, poll: Duration) -> Result<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(path) = runtime_config(conf_dir)? {
            return Ok(path);
        }
        if Instant::now() >= deadline {
            return Err(Error::NoNetworkConfig {
                dir: conf_dir.to_path_buf(),
            });
        }
        std::thread::sleep(poll);
    }
}

fn read_conflist(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).map_err(file_error(path))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::DecodeConflist {
        path: path.to_path_buf(),
        source,
    })
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// Appends palisade-cni to the `plugins` of the runtime's configuration in `conf_dir`, or
/// brings an existing entry's `socket` and `timeout` up to date (other fields people added,
/// such as `failurePolicy`, stay). Writes nothing when the entry is already as asked.
pub fn chain_into(conf_dir: &Path, entry: &ChainEntry) -> Result<Chained> {
    let path = runtime_config(conf_dir)?.ok_or_else(|| Error::NoNetworkConfig {
        dir: conf_dir.to_path_buf(),
    })?;
    let mut conf = read_conflist(&path)?;
    let plugins = conf
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::NotAConflist { path: path.clone() })?;
    let before = plugins.clone();
    match plugins.iter().position(is_ours) {
        Some(first) => {
            // One entry is enough; a second (from a hand edit) would ask the agent twice.
            let mut index = 0;
            plugins.retain(|p| {
                let keep = index == first || !is_ours(p);
                index += 1;
                keep
            });
            let ours = plugins[first]
                .as_object_mut()
                .expect("an entry with a type is an object");
            for (key, value) in entry.fields() {
                ours.insert(key.into(), value);
            }
        }
        None => {
            let mut ours = serde_json::Map::new();
            ours.insert("type".into(), json!(PLUGIN_TYPE));
            ours.extend(entry.fields().map(|(k, v)| (k.to_string(), v)));
            plugins.push(Value::Object(ours));
        }
    }
    let changed = *plugins != before;
    if changed {
        write_json(&path, &conf)?;
    }
    Ok(Chained { path, changed })
}

/// Removes palisade-cni from every configuration in `conf_dir` (not only the first: the
/// first may have changed since install). Returns the files changed.
pub fn unchain_from(conf_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    for path in network_configs(conf_dir)? {
        let Ok(mut conf) = read_conflist(&path) else {
            // Not ours to judge: a file the runtime cannot read either.
            continue;
        };
        let Some(plugins) = conf.get_mut("plugins").and_then(Value::as_array_mut) else {
            continue;
        };
        let count = plugins.len();
        plugins.retain(|p| !is_ours(p));
        if plugins.len() != count {
            write_json(&path, &conf)?;
            changed.push(path);
        }
    }
    Ok(changed)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON values serialize");
    bytes.push(b'\n');
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomic(path, &bytes, mode)
}

/// Writes `bytes` to a temporary file next to `path`, syncs it, and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| PLUGIN_TYPE.into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&temp).map_err(file_error(&temp))?;
        file.write_all(bytes).map_err(file_error(&temp))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(file_error(&temp))?;
        file.sync_all().map_err(file_error(&temp))?;
        fs::rename(&temp, path).map_err(file_error(path))
    })();
    if result.is_err() {
        // Best effort: a leftover .tmp is harmless to the runtime but untidy.
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "ipam": {"type": "calico-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

    fn entry() -> ChainEntry {
        ChainEntry {
            socket: "/run/palisade/cni.sock".into(),
            timeout: Duration::from_secs(10),
        }
    }

    fn plugin_types(path: &Path) -> Vec<String> {
        read_conflist(path).unwrap()["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn chains_into_the_first_config_by_name_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("10-calico.conflist");
        fs::write(&first, CALICO).unwrap();
        fs::set_permissions(&first, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(dir.path().join("99-loopback.conflist"), CALICO).unwrap();
        fs::write(dir.path().join("00-notes.txt"), "not a config").unwrap();

        let chained = chain_into(dir.path(), &entry()).unwrap();
        assert_eq!(
            chained,
            Chained {
                path: first.clone(),
                changed: true
            }
        );
        assert_eq!(plugin_types(&first), ["calico", "portmap", "palisade-cni"]);
        let conf = read_conflist(&first).unwrap();
        assert_eq!(
            conf["plugins"][2],
            json!({"type": "palisade-cni", "socket": "/run/palisade/cni.sock", "timeout": "10s"})
        );
        assert_eq!(conf["cniVersion"], "0.3.1");
        assert_eq!(
            fs::metadata(&first).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            plugin_types(&dir.path().join("99-loopback.conflist")),
            ["calico", "portmap"]
        );

        let modified = fs::metadata(&first).unwrap().modified().unwrap();
        let again = chain_into(dir.path(), &entry()).unwrap();
        assert!(!again.changed);
        assert_eq!(fs::metadata(&first).unwrap().modified().unwrap(), modified);
        assert_eq!(plugin_types(&first), ["calico", "portmap", "palisade-cni"]);
        // No temporary file is left where the runtime looks.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn chaining_again_updates_settings_and_keeps_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10-net.conflist");
        fs::write(
            &path,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ptp"},
                {"type":"palisade-cni","socket":"/old.sock","failurePolicy":"Ignore"},
                {"type":"palisade-cni"}]}"#,
        )
        .unwrap();
        let mut newer = entry();
        newer.timeout = Duration::from_millis(2500);
        assert!(chain_into(dir.path(), &newer).unwrap().changed);
        let conf = read_conflist(&path).unwrap();
        assert_eq!(
            conf["plugins"],
            json!([{"type": "ptp"}, {"type": "palisade-cni", "socket": "/run/palisade/cni.sock",
                   "timeout": "2500ms", "failurePolicy": "Ignore"}])
        );
    }

    #[test]
    fn a_single_plugin_conf_first_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("05-bridge.conf"),
            r#"{"cniVersion":"0.4.0","name":"b","type":"bridge"}"#,
        )
        .unwrap();
        fs::write(dir.path().join("10-calico.conflist"), CALICO).unwrap();
        let err = chain_into(dir.path(), &entry()).unwrap_err();
        assert!(
            matches!(&err, Error::NotAConflist { path } if path.ends_with("05-bridge.conf")),
            "{err:?}"
        );
    }

    #[test]
    fn an_empty_conf_dir_says_so_after_waiting() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            chain_into(dir.path(), &entry()),
            Err(Error::NoNetworkConfig { .. })
        ));
        let started = Instant::now();
        let err = wait_for_config(
            dir.path(),
            Duration::from_millis(200),
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(matches!(err, Error::NoNetworkConfig { .. }));
        assert!(started.elapsed() >= Duration::from_millis(200));
        fs::write(dir.path().join("10-calico.conflist"), CALICO).unwrap();
        let found = wait_for_config(dir.path(), Duration::ZERO, Duration::from_millis(50)).unwrap();
        assert!(found.ends_with("10-calico.conflist"));
    }

    #[test]
    fn unchain_removes_every_entry_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("10-calico.conflist");
        fs::write(&first, CALICO).unwrap();
        let original = read_conflist(&first).unwrap();
        chain_into(dir.path(), &entry()).unwrap();
        assert_eq!(unchain_from(dir.path()).unwrap(), vec![first.clone()]);
        assert_eq!(read_conflist(&first).unwrap(), original);
        assert!(unchain_from(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn binary_install_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("build-output");
        fs::write(&source, b"\x7fELF plugin").unwrap();
        let bin_dir = dir.path().join("bin");
        fs::create_dir(&bin_dir).unwrap();
        fs::write(bin_dir.join(PLUGIN_TYPE), b"older").unwrap();

        let target = install_binary(&source, &bin_dir).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"\x7fELF plugin");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o755
        );
        install_binary(&source, &bin_dir).unwrap();
        assert_eq!(fs::read_dir(&bin_dir).unwrap().count(), 1);
        assert!(remove_binary(&bin_dir).unwrap());
        assert!(!remove_binary(&bin_dir).unwrap());
    }
}
