//! What the plugin prints on stdout besides a passed-on result: the spec's error object and
//! the VERSION answer.

use serde_json::json;

use crate::config::{LATEST_VERSION, SUPPORTED_VERSIONS};
use crate::error::{Error, chain};

/// The CNI error object (`cniVersion`, `code`, `msg`, `details`) for `error`: `msg` is the
/// error itself, `details` the error with all its causes, so the runtime's one-line message
/// already names the socket, the timeout or the agent's reason.
pub fn error_json(cni_version: &str, error: &Error, code: u32) -> String {
    json!({
        "cniVersion": cni_version,
        "code": code,
        "msg": error.to_string(),
        "details": chain(error),
    })
    .to_string()
}

/// The answer to VERSION.
pub fn version_json() -> String {
    json!({
        "cniVersion": LATEST_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn error_object_has_the_spec_fields_and_the_causes() {
        let error = Error::Connect {
            socket: PathBuf::from("/run/palisade/cni.sock"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let value: serde_json::Value =
            serde_json::from_str(&error_json("1.0.0", &error, error.code())).unwrap();
        let object = value.as_object().unwrap();
        let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["cniVersion", "code", "details", "msg"]);
        assert_eq!(value["cniVersion"], "1.0.0");
        assert_eq!(value["code"], 100);
        let msg = value["msg"].as_str().unwrap();
        assert!(msg.contains("/run/palisade/cni.sock"), "{msg}");
        let details = value["details"].as_str().unwrap();
        assert!(details.starts_with(msg), "{details}");
        assert!(details.contains("entity not found"), "{details}");
    }

    #[test]
    fn version_lists_what_config_accepts() {
        let value: serde_json::Value = serde_json::from_str(&version_json()).unwrap();
        assert_eq!(value["cniVersion"], "1.1.0");
        assert_eq!(
            value["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}
