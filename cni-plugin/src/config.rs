//! The network configuration the runtime writes on stdin: the spec's fields, the previous
//! plugin's result, and palisade-cni's own fields (`socket`, `timeout`, `failurePolicy`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::protocol::DEFAULT_SOCKET;

/// CNI versions this plugin accepts, oldest first. 0.3.x stays because many primary CNIs
/// still write `"cniVersion": "0.3.1"` conflists, which palisade-cni gets appended to; the
/// result shapes it reads (`interfaces`, `ips`) are the same in all of them.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version, used when the configuration's own is unknown.
pub const LATEST_VERSION: &str = "1.1.0";

/// How long ADD waits for the agent unless the configuration says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `timeout` accepted: kubelet gives a whole sandbox creation about four
/// minutes, and a plugin that waits longer than that only hides the failure.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(180);

/// The configuration as palisade-cni reads it; unknown fields (runtimeConfig, args, other
/// plugins' keys) are ignored, as the spec asks.
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<serde_json::Value>,
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(rename = "failurePolicy", default)]
    pub failure_policy: Option<String>,
}

/// What to do when the agent cannot be asked (down, hung, another version). An explicit
/// refusal from the agent always fails ADD: like a Kubernetes admission webhook's
/// failurePolicy, "Ignore" forgives unavailability, not a "no".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The pod does not start until its endpoint is programmed (the default).
    Fail,
    /// The pod starts anyway; the agent programs the endpoint when it sees it.
    Ignore,
}

/// palisade-cni's own settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub socket: PathBuf,
    pub timeout: Duration,
    pub failure_policy: FailurePolicy,
}

impl NetConf {
    /// Parses the configuration bytes from stdin.
    pub fn parse(bytes: &[u8]) -> Result<NetConf> {
        serde_json::from_slice(bytes).map_err(Error::DecodeConfig)
    }

    /// Refuses a `cniVersion` this plugin does not speak.
    pub fn check_version(&self) -> Result<()> {
        if SUPPORTED_VERSIONS.contains(&self.cni_version.as_str()) {
            Ok(())
        } else {
            Err(Error::IncompatibleVersion {
                version: self.cni_version.clone(),
                supported: SUPPORTED_VERSIONS.join(", "),
            })
        }
    }

    /// Whether the configuration's version is at least `version` (both `major.minor.patch`).
    pub fn version_at_least(&self, version: &str) -> bool {
        parse_version(&self.cni_version) >= parse_version(version)
    }

    /// The plugin's settings with their defaults.
    pub fn settings(&self) -> Result<Settings> {
        let timeout = match &self.timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => parse_timeout(text)?,
        };
        let failure_policy = match self.failure_policy.as_deref() {
            None => FailurePolicy::Fail,
            Some(p) if p.eq_ignore_ascii_case("fail") => FailurePolicy::Fail,
            Some(p) if p.eq_ignore_ascii_case("ignore") => FailurePolicy::Ignore,
            Some(other) => {
                return Err(Error::InvalidConfig {
                    field: "failurePolicy",
                    value: other.to_string(),
                    reason: "expected \"Fail\" or \"Ignore\"".into(),
                });
            }
        };
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if !socket.is_absolute() {
            return Err(Error::InvalidConfig {
                field: "socket",
                value: socket.display().to_string(),
                reason:
                    "must be an absolute path (the plugin runs in the runtime's working directory)"
                        .into(),
            });
        }
        Ok(Settings {
            socket,
            timeout,
            failure_policy,
        })
    }
}

/// `major.minor.patch` as numbers, missing or bad parts as 0 (only used to compare
/// versions that already passed [`NetConf::check_version`]).
fn parse_version(version: &str) -> (u32, u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Parses a `timeout` such as `10s`, `1500ms`, `1m30s`, bounded to (0, [`MAX_TIMEOUT`]].
pub fn parse_timeout(text: &str) -> Result<Duration> {
    let total = parse_duration(text, "timeout")?;
    let invalid = |reason: String| Error::InvalidConfig {
        field: "timeout",
        value: text.to_string(),
        reason,
    };
    if total.is_zero() {
        return Err(invalid("must be more than zero".into()));
    }
    if total > MAX_TIMEOUT {
        return Err(invalid(format!(
            "more than the maximum {}s (kubelet gives up on the sandbox long before)",
            MAX_TIMEOUT.as_secs()
        )));
    }
    Ok(total)
}

/// Parses a duration in Go's notation restricted to integer amounts and the units `ms`,
/// `s`, `m`, `h` (`10s`, `1m30s`); `0` alone is zero. Errors name `field`.
pub fn parse_duration(text: &str, field: &'static str) -> Result<Duration> {
    let invalid = |reason: &str| Error::InvalidConfig {
        field,
        value: text.to_string(),
        reason: reason.to_string(),
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid("empty; write e.g. \"10s\""));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid("expected a number followed by ms, s, m or h"));
        }
        let amount: u64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis_per_unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(invalid("missing unit (ms, s, m or h)")),
            _ => return Err(invalid("unknown unit (use ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        let part = amount
            .checked_mul(millis_per_unit)
            .ok_or_else(|| invalid("too large"))?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(|| invalid("too large"))?;
    }
    Ok(total)
}

/// Writes a duration the way [`parse_timeout`] reads it (`10s`, `1500ms`).
pub fn format_timeout(timeout: Duration) -> String {
    let millis = timeout.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_in_go_units() {
        assert_eq!(parse_timeout("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(
            parse_timeout("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_timeout("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(format_timeout(Duration::from_secs(90)), "90s");
        assert_eq!(format_timeout(Duration::from_millis(1500)), "1500ms");
        assert_eq!(parse_duration("0", "wait").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("2h", "wait").unwrap(),
            Duration::from_secs(7200)
        );
        for bad in [
            "",
            "10",
            "0",
            "s",
            "0s",
            "1h",
            "10x",
            "-1s",
            "1.5s",
            "99999999999999999999s",
        ] {
            let err = parse_timeout(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidConfig {
                        field: "timeout",
                        ..
                    }
                ),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn settings_defaults_and_fields() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"k8s","type":"palisade-cni"}"#)
            .unwrap();
        assert_eq!(
            conf.settings().unwrap(),
            Settings {
                socket: PathBuf::from(DEFAULT_SOCKET),
                timeout: DEFAULT_TIMEOUT,
                failure_policy: FailurePolicy::Fail,
            }
        );
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"palisade-cni",
                 "socket":"/tmp/x.sock","timeout":"2s","failurePolicy":"Ignore",
                 "runtimeConfig":{"portMappings":[]}}"#,
        )
        .unwrap();
        let settings = conf.settings().unwrap();
        assert_eq!(settings.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(settings.timeout, Duration::from_secs(2));
        assert_eq!(settings.failure_policy, FailurePolicy::Ignore);
    }

    #[test]
    fn settings_refuse_bad_fields() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","failurePolicy":"maybe"}"#).unwrap();
        assert!(matches!(
            conf.settings(),
            Err(Error::InvalidConfig {
                field: "failurePolicy",
                ..
            })
        ));
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","socket":"run/x.sock"}"#).unwrap();
        assert!(matches!(
            conf.settings(),
            Err(Error::InvalidConfig {
                field: "socket",
                ..
            })
        ));
    }

    #[test]
    fn versions() {
        let conf = NetConf::parse(br#"{"cniVersion":"0.3.1"}"#).unwrap();
        conf.check_version().unwrap();
        assert!(!conf.version_at_least("0.4.0"));
        let conf = NetConf::parse(br#"{"cniVersion":"1.1.0"}"#).unwrap();
        assert!(conf.version_at_least("0.4.0"));
        let conf = NetConf::parse(br#"{"cniVersion":"0.2.0"}"#).unwrap();
        assert!(matches!(
            conf.check_version(),
            Err(Error::IncompatibleVersion { .. })
        ));
        assert!(matches!(
            NetConf::parse(b"{not json"),
            Err(Error::DecodeConfig(_))
        ));
    }
}
