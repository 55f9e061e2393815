//! Default locations. Every one can be overridden on the command line (and by `PALISADE_*`
//! environment variables), which tests use to keep parallel runs apart.

/// bpffs folder holding everything the agent pins; the datapath's layout version is a
/// sub-folder (see [`crate::datapath::pins`]).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/palisade";

/// Where labs keep their state (one folder per lab).
pub const LAB_RUN_DIR: &str = "/run/palisade/lab";
