//! One CNI invocation, from environment and stdin to stdout and exit code, without touching
//! the process (the binary wires it to the real environment; tests call it directly).

use std::io::Read;

use crate::client;
use crate::config::{FailurePolicy, LATEST_VERSION, NetConf, Settings};
use crate::env::{CniCommand, CniEnv};
use crate::error::{Error, Result, chain, code};
use crate::output::{error_json, version_json};
use crate::prev_result::{Attachment, attachment};
use crate::protocol::{Command, Request};

/// What the binary should print and exit with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The JSON for stdout (a result, an error object, or nothing).
    pub stdout: String,
    pub exit_code: i32,
    /// Lines for stderr, which runtimes keep in their logs: what the agent did, or what
    /// was forgiven.
    pub diagnostics: Vec<String>,
}

/// Runs the command named by `CNI_COMMAND` (read through `var`) on the configuration in
/// `stdin`.
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Outcome {
    let mut input = Vec::new();
    let read = stdin.read_to_end(&mut input).map_err(Error::ReadStdin);
    // Errors are reported in the configuration's version when it is one we speak.
    let reply_version = NetConf::parse(&input)
        .ok()
        .filter(|c| c.check_version().is_ok())
        .map_or_else(|| LATEST_VERSION.to_string(), |c| c.cni_version);
    let mut diagnostics = Vec::new();
    let result = read
        .and_then(|_| CniEnv::from_vars(var))
        .map_err(Failure::from)
        .and_then(|env| dispatch(&env, &input, &mut diagnostics));
    match result {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
            diagnostics,
        },
        Err(Failure { error, code }) => {
            diagnostics.push(format!("palisade-cni: {}", chain(&error)));
            Outcome {
                stdout: error_json(&reply_version, &error, code),
                exit_code: 1,
                diagnostics,
            }
        }
    }
}

/// An error with the code it is reported with (STATUS reports agent errors as 50).
struct Failure {
    error: Error,
    code: u32,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        let code = error.code();
        Failure { error, code }
    }
}

fn dispatch(
    env: &CniEnv,
    input: &[u8],
    diagnostics: &mut Vec<String>,
) -> std::result::Result<String, Failure> {
    if env.command == CniCommand::Version {
        return Ok(version_json());
    }
    let conf = NetConf::parse(input)?;
    conf.check_version()?;
    match env.command {
        CniCommand::Version => Ok(version_json()),
        CniCommand::Add => Ok(add(env, &conf, diagnostics)?),
        CniCommand::Del => {
            del(env, &conf, diagnostics)?;
            Ok(String::new())
        }
        CniCommand::Check => {
            check(env, &conf)?;
            Ok(String::new())
        }
        CniCommand::Status => status(&conf).map(|()| String::new()),
        CniCommand::Gc => {
            // The agent reconciles endpoints against the API server and the node's
            // interfaces on its own; there is nothing only the runtime could tell it here.
            Ok(String::new())
        }
    }
}

/// The request for one sandbox, with what the runtime and the previous result told us.
fn request(env: &CniEnv, command: Command, settings: &Settings, found: Attachment) -> Request {
    let mut request = Request::new(command, settings.timeout);
    request.container_id = env.container_id.clone().unwrap_or_default();
    request.netns = env.netns.clone().unwrap_or_default();
    request.ifname = env.ifname.clone().unwrap_or_default();
    request.pod = env.args.pod();
    request.ips = found.ips;
    request.host_interface = found.host_interface;
    request
}

/// What ADD and CHECK both need: the sandbox named in full by the runtime, the plugin's
/// settings, and the previous plugin's result (a chained plugin has one).
fn chained<'a>(
    env: &CniEnv,
    conf: &'a NetConf,
    command: &'static str,
) -> Result<(Settings, &'a serde_json::Value)> {
    CniEnv::require(&env.container_id, "CNI_CONTAINERID")?;
    CniEnv::require(&env.netns, "CNI_NETNS")?;
    CniEnv::require(&env.ifname, "CNI_IFNAME")?;
    let settings = conf.settings()?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or(Error::NotChained { command })?;
    Ok((settings, prev))
}

/// ADD: wait until the agent has programmed the endpoint, then pass the previous result on.
fn add(env: &CniEnv, conf: &NetConf, diagnostics: &mut Vec<String>) -> Result<String> {
    let (settings, prev) = chained(env, conf, "ADD")?;
    let mut result = prev
        .as_object()
        .cloned()
        .ok_or_else(|| Error::BadPrevResult {
            reason: "not a JSON object".into(),
        })?;
    let request = request(env, Command::Add, &settings, attachment(prev)?);
    match client::call(&settings.socket, &request, settings.timeout) {
        Ok(Some(programmed)) => diagnostics.push(format!(
            "palisade-cni: endpoint programmed (ifindex {}, mode {:?})",
            programmed.ifindex, programmed.mode
        )),
        Ok(None) => diagnostics.push("palisade-cni: the agent had nothing to program".into()),
        Err(error)
            if settings.failure_policy == FailurePolicy::Ignore && error.is_unavailability() =>
        {
            diagnostics.push(format!(
                "palisade-cni: failurePolicy Ignore, starting the pod without waiting: {}",
                chain(&error)
            ));
        }
        Err(error) => return Err(error),
    }
    // A chained plugin that changes nothing still returns the result, in its own
    // configuration's version.
    result.insert(
        "cniVersion".into(),
        serde_json::Value::String(conf.cni_version.clone()),
    );
    Ok(serde_json::Value::Object(result).to_string())
}

/// DEL: tell the agent, but never fail because of it: DEL must succeed repeatedly and while
/// the agent is down, or the runtime cannot tear the sandbox down.
fn del(env: &CniEnv, conf: &NetConf, diagnostics: &mut Vec<String>) -> Result<()> {
    CniEnv::require(&env.container_id, "CNI_CONTAINERID")?;
    CniEnv::require(&env.ifname, "CNI_IFNAME")?;
    let settings = match conf.settings() {
        Ok(settings) => settings,
        Err(error) => {
            diagnostics.push(format!("palisade-cni: DEL not sent: {}", chain(&error)));
            return Ok(());
        }
    };
    let found = match conf.prev_result.as_ref().map(attachment).transpose() {
        Ok(found) => found.unwrap_or_default(),
        Err(error) => {
            diagnostics.push(format!(
                "palisade-cni: DEL without addresses: {}",
                chain(&error)
            ));
            Attachment::default()
        }
    };
    let request = request(env, Command::Del, &settings, found);
    if let Err(error) = client::call(&settings.socket, &request, settings.timeout) {
        diagnostics.push(format!(
            "palisade-cni: the agent was not told about DEL (it forgets the endpoint when the \
             interface goes away): {}",
            chain(&error)
        ));
    }
    Ok(())
}

/// CHECK: the agent must confirm the endpoint is programmed.
fn check(env: &CniEnv, conf: &NetConf) -> Result<()> {
    if !conf.version_at_least("0.4.0") {
        return Err(Error::CommandNotInVersion {
            command: "CHECK",
            version: conf.cni_version.clone(),
            needs: "0.4.0",
        });
    }
    let (settings, prev) = chained(env, conf, "CHECK")?;
    let request = request(env, Command::Check, &settings, attachment(prev)?);
    client::call(&settings.socket, &request, settings.timeout).map(|_| ())
}

/// STATUS: the plugin can serve ADD only while the agent answers.
fn status(conf: &NetConf) -> std::result::Result<(), Failure> {
    let settings = conf.settings()?;
    let request = Request::new(Command::Status, settings.timeout);
    client::call(&settings.socket, &request, settings.timeout)
        .map(|_| ())
        .map_err(|error| Failure {
            error,
            code: code::NOT_AVAILABLE,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> Outcome {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(|k| vars.get(k).cloned(), &mut stdin.as_bytes())
    }

    fn error_code(outcome: &Outcome) -> u64 {
        let value: serde_json::Value = serde_json::from_str(&outcome.stdout).unwrap();
        value["code"].as_u64().unwrap()
    }

    const ADD_ENV: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn add_without_prev_result_is_not_chained() {
        let outcome = run_with(
            ADD_ENV,
            r#"{"cniVersion":"1.0.0","name":"n","type":"palisade-cni"}"#,
        );
        assert_eq!(outcome.exit_code, 1);
        assert_eq!(error_code(&outcome), u64::from(code::INVALID_CONFIG));
        assert!(outcome.stdout.contains("chained"), "{}", outcome.stdout);
    }

    #[test]
    fn add_without_netns_names_the_variable() {
        let outcome = run_with(
            &ADD_ENV[..2],
            r#"{"cniVersion":"1.0.0","prevResult":{"cniVersion":"1.0.0"}}"#,
        );
        assert_eq!(error_code(&outcome), u64::from(code::INVALID_ENVIRONMENT));
        assert!(outcome.stdout.contains("CNI_NETNS"), "{}", outcome.stdout);
    }

    #[test]
    fn unsupported_version_is_code_1_in_the_latest_version() {
        let outcome = run_with(ADD_ENV, r#"{"cniVersion":"0.1.0"}"#);
        assert_eq!(error_code(&outcome), 1);
        let value: serde_json::Value = serde_json::from_str(&outcome.stdout).unwrap();
        assert_eq!(value["cniVersion"], LATEST_VERSION);
    }

    #[test]
    fn check_is_refused_before_0_4_0() {
        let mut vars = ADD_ENV.to_vec();
        vars[0] = ("CNI_COMMAND", "CHECK");
        let outcome = run_with(&vars, r#"{"cniVersion":"0.3.1","prevResult":{}}"#);
        assert_eq!(error_code(&outcome), 1);
        assert!(outcome.stdout.contains("0.4.0"));
    }

    #[test]
    fn garbage_config_is_a_decode_failure() {
        let outcome = run_with(ADD_ENV, "cniVersion: 1.0.0");
        assert_eq!(outcome.exit_code, 1);
        assert_eq!(error_code(&outcome), u64::from(code::DECODE_FAILURE));
    }

    #[test]
    fn gc_succeeds_silently() {
        let outcome = run_with(&[("CNI_COMMAND", "GC")], r#"{"cniVersion":"1.1.0"}"#);
        assert_eq!((outcome.exit_code, outcome.stdout.as_str()), (0, ""));
    }
}
