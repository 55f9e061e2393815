//! The `palisade-cni` binary. Started by a container runtime (with `CNI_COMMAND` set) it is
//! a CNI plugin; started by hand or by the DaemonSet's init container it takes one of two
//! admin commands:
//!
//! ```text
//! palisade-cni install --bin-dir DIR --conf-dir DIR [--socket PATH] [--timeout 10s] [--wait 0]
//! palisade-cni uninstall --conf-dir DIR [--bin-dir DIR]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cni_plugin::config::{DEFAULT_TIMEOUT, parse_duration, parse_timeout};
use cni_plugin::error::{Error, Result, chain};
use cni_plugin::install::{self, ChainEntry};
use cni_plugin::{DEFAULT_SOCKET, plugin};

const USAGE: &str = "\
palisade-cni: Palisade's chained CNI plugin (run by the container runtime with CNI_COMMAND set)

admin commands:
  palisade-cni install --bin-dir DIR --conf-dir DIR [--socket PATH] [--timeout 10s] [--wait 0]
      copy this binary into DIR and chain it into the runtime's network configuration
      (--wait: how long to wait for the primary CNI to write its configuration)
  palisade-cni uninstall --conf-dir DIR [--bin-dir DIR]
      remove it from every configuration (and the binary, with --bin-dir)";

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        let outcome = plugin::run(|k| std::env::var(k).ok(), &mut std::io::stdin().lock());
        for line in &outcome.diagnostics {
            eprintln!("{line}");
        }
        println!("{}", outcome.stdout);
        return if outcome.exit_code == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("install") => Options::parse(&args[1..]).and_then(|o| install_cmd(&o)),
        Some("uninstall") => Options::parse(&args[1..]).and_then(|o| uninstall_cmd(&o)),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-cni: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The admin commands' flags.
#[derive(Debug, Default)]
struct Options {
    bin_dir: Option<PathBuf>,
    conf_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    timeout: Option<Duration>,
    wait: Duration,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options::default();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag.as_str(), None),
            };
            let value = match inline.or_else(|| args.next().cloned()) {
                Some(v) => v,
                None => {
                    return Err(Error::Usage {
                        reason: format!("{name} needs a value\n\n{USAGE}"),
                    });
                }
            };
            match name {
                "--bin-dir" => options.bin_dir = Some(value.into()),
                "--conf-dir" => options.conf_dir = Some(value.into()),
                "--socket" => options.socket = Some(value.into()),
                "--timeout" => options.timeout = Some(parse_timeout(&value)?),
                "--wait" => options.wait = parse_duration(&value, "--wait")?,
                _ => {
                    return Err(Error::Usage {
                        reason: format!("unknown argument {flag:?}\n\n{USAGE}"),
                    });
                }
            }
        }
        Ok(options)
    }

    fn required(value: &Option<PathBuf>, flag: &str) -> Result<PathBuf> {
        value.clone().ok_or_else(|| Error::Usage {
            reason: format!("{flag} is required\n\n{USAGE}"),
        })
    }
}

fn install_cmd(options: &Options) -> Result<()> {
    let bin_dir = Options::required(&options.bin_dir, "--bin-dir")?;
    let conf_dir = Options::required(&options.conf_dir, "--conf-dir")?;
    let socket = options
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    if !socket.is_absolute() {
        return Err(Error::Usage {
            reason: format!("--socket {} must be an absolute path", socket.display()),
        });
    }
    let entry = ChainEntry {
        socket,
        timeout: options.timeout.unwrap_or(DEFAULT_TIMEOUT),
    };
    let exe = std::env::current_exe().map_err(|source| Error::File {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    // The binary first: a conflist naming a plugin the runtime cannot find fails every pod.
    let target = install::install_binary(&exe, &bin_dir)?;
    eprintln!("palisade-cni: installed {}", target.display());
    install::wait_for_config(&conf_dir, options.wait, Duration::from_secs(1))?;
    let chained = install::chain_into(&conf_dir, &entry)?;
    if chained.changed {
        eprintln!("palisade-cni: chained into {}", chained.path.display());
    } else {
        eprintln!("palisade-cni: {} already chains it", chained.path.display());
    }
    Ok(())
}

fn uninstall_cmd(options: &Options) -> Result<()> {
    let conf_dir = Options::required(&options.conf_dir, "--conf-dir")?;
    // The configuration first: the runtime must stop calling the plugin before it goes.
    for path in install::unchain_from(&conf_dir)? {
        eprintln!("palisade-cni: removed from {}", path.display());
    }
    if let Some(bin_dir) = &options.bin_dir
        && install::remove_binary(bin_dir)?
    {
        eprintln!(
            "palisade-cni: removed {}",
            bin_dir.join(install::PLUGIN_TYPE).display()
        );
    }
    Ok(())
}
