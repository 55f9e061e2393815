//! The uplink prefilter: attaching it to a node uplink, the list of denied external CIDRs,
//! and its counters (`palisade prefilter ...`).
//!
//! Two pinned programs go on each uplink: `prefilter` (XDP) drops frames from denied CIDRs
//! before the stack, and `prefilter_out` (TCX egress) records the connections that leave,
//! whose replies the prefilter never drops (see `enforcer-ebpf/src/prefilter.rs` for why
//! there and not in `from_pod`). Their links are pinned like the endpoints' links
//! (`<root>/v1/links/<ifindex>_prefilter`, `<ifindex>_prefilter_out`), so they outlive the
//! agent; [`super::uninstall`] removes them with everything else. Attach it to every
//! uplink: a connection is recorded on the uplink it leaves through, its replies are
//! checked on the one they arrive on.
//!
//! The list is set as a whole: CIDRs that stay keep their rule id (and counters), new ones
//! are added before stale ones are removed, so a CIDR on both the old and the new list is
//! never let through in between. Rule ids are never reused while a counter of the old
//! rule may still exist.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    net::IpAddr,
    path::Path,
};

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuHashMap, PerCpuValues},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
        xdp::XdpLink,
    },
};
use aya_obj::programs::XdpAttachType;
use enforcer_common::{
    maps::{self, PROG_PREFILTER, PROG_PREFILTER_OUT},
    policy::CidrKey,
    prefilter::PrefilterCounter,
};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::{
    Pins,
    attach::{ifindex_of, require_tcx},
    rules::{ip_from_kernel, kernel_addr},
    stats,
    tables::{Pinned, PinnedLpm, Table, is_missing},
};
use crate::error::{Error, Result};

/// `PREFILTER`: (prefix length, CIDR) -> rule id.
pub type DenyTable = PinnedLpm<CidrKey, u32>;

/// How the XDP program runs on the uplink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// The driver's own XDP hook when it has one, else generic XDP (the kernel chooses).
    #[default]
    Auto,
    /// In the driver, before an skb exists: the point of a prefilter on a physical NIC.
    Native,
    /// Generic XDP, after the skb is built. For veths (the lab), where native XDP slows
    /// every TCP flow through the interface down (see DESIGN.md).
    Skb,
}

impl From<XdpMode> for aya::programs::XdpMode {
    fn from(mode: XdpMode) -> Self {
        match mode {
            XdpMode::Auto => Self::Default,
            XdpMode::Native => Self::Driver,
            XdpMode::Skb => Self::Skb,
        }
    }
}

// ----- The list -------------------------------------------------------------------------

/// Text that is not a CIDR.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not a CIDR (a.b.c.d/n, x:y::/n) or an address")]
pub struct CidrError {
    pub text: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// A bad line in a CIDR list file.
#[derive(Debug, thiserror::Error)]
#[error("line {line}")]
pub struct LineError {
    pub line: usize,
    #[source]
    pub source: CidrError,
}

/// A CIDR (`203.0.113.0/24`, `2001:db8::/32`) or a single address (a /32 or /128). Bits
/// past the prefix are cleared: the kernel's trie ignores them, and so does the list.
pub fn parse_cidr(text: &str) -> Result<IpNet, CidrError> {
    let text = text.trim();
    let error = |source: Box<dyn std::error::Error + Send + Sync>| CidrError {
        text: text.to_owned(),
        source,
    };
    if text.contains('/') {
        text.parse::<IpNet>()
            .map(|net| net.trunc())
            .map_err(|e| error(e.into()))
    } else {
        text.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|e| error(e.into()))
    }
}

/// A CIDR list: one CIDR or address per line; `#` starts a comment; blank lines are
/// ignored. Duplicates count once.
pub fn parse_list(text: &str) -> Result<BTreeSet<IpNet>, LineError> {
    let mut nets = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line
            .split_once('#')
            .map_or(line, |(before, _)| before)
            .trim();
        if line.is_empty() {
            continue;
        }
        let net = parse_cidr(line).map_err(|source| LineError {
            line: i + 1,
            source,
        })?;
        nets.insert(net);
    }
    Ok(nets)
}

/// [`parse_list`] of a file.
pub fn read_list(path: &Path) -> Result<BTreeSet<IpNet>> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_list(&text).map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// The `PREFILTER` key of `net` (see [`CidrKey::prefix_len`]).
pub fn cidr_key(net: &IpNet) -> (u32, CidrKey) {
    let family = if net.addr().is_ipv4() { 4 } else { 6 };
    let key = CidrKey {
        family,
        addr: kernel_addr(net.network()),
    };
    (CidrKey::prefix_len(family, net.prefix_len()), key)
}

/// The CIDR behind a `PREFILTER` key; `None` for a key no [`cidr_key`] makes.
pub fn net_of(&(prefix_len, key): &(u32, CidrKey)) -> Option<IpNet> {
    let ip = ip_from_kernel(&key.addr);
    let bits = match (key.family, ip) {
        (4, IpAddr::V4(_)) => prefix_len.checked_sub(8 + 96)?,
        (6, _) => prefix_len.checked_sub(8)?,
        _ => return None,
    };
    // An IPv6 CIDR over IPv4-mapped space reads back as IPv6, as it was given.
    let ip = match (key.family, ip) {
        (6, IpAddr::V4(_)) => IpAddr::V6(key.addr.into()),
        _ => ip,
    };
    IpNet::new(ip, u8::try_from(bits).ok()?).ok()
}

/// What [`plan`] decided: the edits that turn the current list into the desired one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New CIDRs, with the rule id each gets.
    pub add: Vec<(IpNet, u32)>,
    /// Entries to delete, with their rule ids.
    pub remove: Vec<((u32, CidrKey), u32)>,
    /// CIDRs that stay, with their rule ids.
    pub keep: Vec<(IpNet, u32)>,
}

/// The edits from `current` (the trie's entries) to `desired`. New rule ids are above every
/// id in use, by the trie or by a counter (`counter_ids`): a drop of a removed rule still
/// in flight must not land on a new rule's counter. Id 0 is never used.
pub fn plan(
    current: &[((u32, CidrKey), u32)],
    desired: &BTreeSet<IpNet>,
    counter_ids: &BTreeSet<u32>,
) -> Plan {
    let wanted: HashMap<(u32, CidrKey), IpNet> =
        desired.iter().map(|net| (cidr_key(net), *net)).collect();
    let mut present = HashSet::new();
    let mut plan = Plan::default();
    for &(key, id) in current {
        match wanted.get(&key) {
            Some(net) => {
                present.insert(key);
                plan.keep.push((*net, id));
            }
            None => plan.remove.push((key, id)),
        }
    }
    let mut ids = Ids::new(
        current
            .iter()
            .map(|(_, id)| *id)
            .chain(counter_ids.iter().copied()),
    );
    for net in desired {
        if !present.contains(&cidr_key(net)) {
            plan.add.push((*net, ids.next()));
        }
    }
    plan.keep.sort();
    plan
}

/// Rule ids not in use: above the highest one, or (after 2^32 - 1 of them) the lowest gap.
struct Ids {
    used: BTreeSet<u32>,
}

impl Ids {
    fn new(used: impl IntoIterator<Item = u32>) -> Self {
        let mut used: BTreeSet<u32> = used.into_iter().collect();
        used.insert(0);
        Self { used }
    }

    fn next(&mut self) -> u32 {
        let max = *self.used.last().expect("0 is always used");
        let id = match max.checked_add(1) {
            Some(id) => id,
            // The trie holds at most PREFILTER_MAX entries, so a gap exists.
            None => (1..).find(|id| !self.used.contains(id)).expect("a free id"),
        };
        self.used.insert(id);
        id
    }
}

/// What setting the list changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
    pub kept: usize,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} denied CIDRs: {} added, {} removed, {} unchanged",
            self.added.len() + self.kept,
            self.added.len(),
            self.removed.len(),
            self.kept
        )?;
        for net in &self.added {
            write!(f, "\n  + {net}")?;
        }
        for net in &self.removed {
            write!(f, "\n  - {net}")?;
        }
        Ok(())
    }
}

/// Make the trie deny exactly `desired`: add, then remove (see the module docs), then
/// forget the counters of removed rules.
pub fn set_denied(
    trie: &mut impl Table<(u32, CidrKey), u32>,
    drops: &mut impl Table<u32, u64>,
    desired: &BTreeSet<IpNet>,
) -> Result<Change> {
    // As the trie sees them: 203.0.113.7/24 is 203.0.113.0/24.
    let desired: BTreeSet<IpNet> = desired.iter().map(IpNet::trunc).collect();
    let current = trie.entries()?;
    let counter_ids = drops.entries()?.into_iter().map(|(id, _)| id).collect();
    let plan = plan(&current, &desired, &counter_ids);
    for (net, id) in &plan.add {
        trie.set(cidr_key(net), *id)?;
    }
    let mut removed = Vec::new();
    for (key, id) in &plan.remove {
        trie.remove(key)?;
        drops.remove(id)?;
        removed.extend(net_of(key));
    }
    removed.sort();
    Ok(Change {
        added: plan.add.iter().map(|(net, _)| *net).collect(),
        removed,
        kept: plan.keep.len(),
    })
}

// ----- Pinned maps ------------------------------------------------------------------------

/// `PREFILTER_DROPS`: packets dropped per rule, summed over CPUs.
pub type DropCounters = Pinned<PerCpuHashMap<MapData, u32, u64>>;

impl DropCounters {
    pub fn open_drops(pins: &Pins) -> Result<Self> {
        Self::open(pins, maps::PREFILTER_DROPS)
    }
}

impl Table<u32, u64> for DropCounters {
    fn get(&self, id: &u32) -> Result<Option<u64>> {
        match self.map.get(id, 0) {
            Ok(per_cpu) => Ok(Some(per_cpu.iter().sum())),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(self.error("lookup", e)),
        }
    }

    /// Sets the total: `value` on the first CPU, 0 on the others.
    fn set(&mut self, id: u32, value: u64) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(path, source)| Error::Io {
            path: path.into(),
            source,
        })?;
        let mut values = vec![0; cpus];
        values[0] = value;
        let values = PerCpuValues::try_from(values).map_err(|source| Error::Io {
            path: "/sys/devices/system/cpu/possible".into(),
            source,
        })?;
        self.map
            .insert(id, values, 0)
            .map_err(|e| self.error("update", e))
    }

    fn remove(&mut self, id: &u32) -> Result<bool> {
        match self.map.remove(id) {
            Ok(()) => Ok(true),
            // A rule that never dropped anything has no counter.
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(self.error("delete", e)),
        }
    }

    fn entries(&self) -> Result<Vec<(u32, u64)>> {
        self.map
            .iter()
            .map(|r| r.map(|(id, per_cpu)| (id, per_cpu.iter().sum())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error("iterate", e))
    }
}

/// Deny exactly `desired` (see [`set_denied`]).
pub fn set(pins: &Pins, desired: &BTreeSet<IpNet>) -> Result<Change> {
    let mut trie = DenyTable::open(pins, maps::PREFILTER)?;
    let mut drops = DropCounters::open_drops(pins)?;
    let change = set_denied(&mut trie, &mut drops, desired)?;
    info!(
        added = change.added.len(),
        removed = change.removed.len(),
        kept = change.kept,
        "prefilter list set"
    );
    Ok(change)
}

/// `palisade prefilter set`: deny exactly the CIDRs given with `--deny` and those in the
/// file (both may be used; an empty file clears the list).
pub fn set_from_args(pins: &Pins, deny: &[IpNet], file: Option<&Path>) -> Result<Change> {
    let mut desired: BTreeSet<IpNet> = deny.iter().copied().collect();
    if let Some(path) = file {
        desired.extend(read_list(path)?);
    }
    set(pins, &desired)
}

/// The denied CIDRs with their rule ids, most specific last.
pub fn denied(pins: &Pins) -> Result<Vec<(IpNet, u32)>> {
    let trie = DenyTable::open(pins, maps::PREFILTER)?;
    let mut list: Vec<(IpNet, u32)> = trie
        .entries()?
        .into_iter()
        .filter_map(|(key, id)| Some((net_of(&key)?, id)))
        .collect();
    list.sort();
    Ok(list)
}

/// `PREFILTER_STATS`, each counter summed over CPUs.
pub fn counters(pins: &Pins) -> Result<Vec<(PrefilterCounter, u64)>> {
    let slots: Vec<u32> = PrefilterCounter::ALL.iter().map(|&c| c as u32).collect();
    let totals = stats::per_cpu_totals(pins, maps::PREFILTER_STATS, &slots)?;
    Ok(PrefilterCounter::ALL.iter().copied().zip(totals).collect())
}

// ----- Attaching ----------------------------------------------------------------------------

/// The pinned `prefilter` program (for attaching it, and for tests that run it with
/// `BPF_PROG_TEST_RUN`).
pub fn program(pins: &Pins) -> Result<Xdp> {
    require_programs(pins)?;
    Xdp::from_pin(pins.program(PROG_PREFILTER), XdpAttachType::Interface)
        .map_err(|e| program_error(PROG_PREFILTER, "opening the pinned program", e))
}

/// The pinned `prefilter_out` program.
pub fn egress_program(pins: &Pins) -> Result<SchedClassifier> {
    require_programs(pins)?;
    SchedClassifier::from_pin(pins.program(PROG_PREFILTER_OUT))
        .map_err(|e| program_error(PROG_PREFILTER_OUT, "opening the pinned program", e))
}

/// Attach the prefilter to the uplink `interface` (in the calling thread's network
/// namespace): `prefilter_out` on its egress, then `prefilter` (XDP) in `mode`. Attaching
/// an uplink that has them already changes nothing (detach first to change the mode).
/// Returns its ifindex.
pub fn attach(pins: &Pins, interface: &str, mode: XdpMode) -> Result<u32> {
    require_programs(pins)?;
    require_tcx()?;
    let ifindex = ifindex_of(interface)?;
    // Egress first: a reply is recognised only once its connection was recorded going out.
    let egress_pin = pins.link(ifindex, PROG_PREFILTER_OUT);
    let egress_new = !egress_pin.exists();
    if egress_new {
        let mut program = egress_program(pins)?;
        let id = program
            .attach_with_options(
                interface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| attach_error(PROG_PREFILTER_OUT, interface, ifindex, e))?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|e| attach_error(PROG_PREFILTER_OUT, interface, ifindex, e))?
            .try_into()
            .map_err(|e: LinkError| pin_error(&egress_pin, e))?;
        link.pin(&egress_pin)
            .map_err(|e| pin_error(&egress_pin, e))?;
    }

    let xdp_pin = pins.link(ifindex, PROG_PREFILTER);
    if !xdp_pin.exists()
        && let Err(e) = attach_xdp(pins, interface, ifindex, mode)
    {
        if egress_new {
            // Leave the uplink as it was; the attach error is the one to report.
            let _ = detach_pinned_link(&egress_pin);
        }
        return Err(e);
    }
    info!(interface, ifindex, ?mode, "prefilter attached");
    Ok(ifindex)
}

fn attach_xdp(pins: &Pins, interface: &str, ifindex: u32, mode: XdpMode) -> Result<()> {
    let pin = pins.link(ifindex, PROG_PREFILTER);
    let mut program = program(pins)?;
    let id = program
        .attach_to_if_index(ifindex, mode.into())
        .map_err(|e| attach_error(PROG_PREFILTER, interface, ifindex, e))?;
    let link = program
        .take_link(id)
        .map_err(|e| attach_error(PROG_PREFILTER, interface, ifindex, e))?;
    // A bpf_link (Linux >= 5.9) can be pinned; a netlink attachment could not, and TCX
    // (required above) implies a newer kernel.
    let link: FdLink = link.try_into().map_err(|e: LinkError| pin_error(&pin, e))?;
    link.pin(&pin).map_err(|e| pin_error(&pin, e))?;
    Ok(())
}

/// Detach the prefilter from the uplink `interface`.
pub fn detach(pins: &Pins, interface: &str) -> Result<()> {
    let ifindex = ifindex_of(interface)?;
    if detach_ifindex(pins, ifindex)? {
        info!(interface, ifindex, "prefilter detached");
    } else {
        info!(interface, ifindex, "prefilter was not attached");
    }
    Ok(())
}

/// As [`detach`], by ifindex (works when the interface is already gone). `false` when
/// nothing was attached.
pub fn detach_ifindex(pins: &Pins, ifindex: u32) -> Result<bool> {
    let mut removed = false;
    // XDP first: it stops dropping before replies stop being recognised.
    for name in [PROG_PREFILTER, PROG_PREFILTER_OUT] {
        removed |= detach_pinned_link(&pins.link(ifindex, name))?;
    }
    Ok(removed)
}

/// Detach the link pinned at `path` at once, then remove the pin; `false` when nothing is
/// pinned there. Removing the pin alone detaches the link too, but later: the kernel drops
/// a pin's reference after an RCU grace period, from a work queue, and an XDP attach to
/// the interface in between would find it busy (`detach` then `attach --mode native`).
fn detach_pinned_link(path: &Path) -> Result<bool> {
    let pin_error = |source| Error::Pin {
        path: path.to_owned(),
        source,
    };
    let link = match bpf_syscall::obj_get(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(pin_error(e)),
    };
    if let Err(e) = bpf_syscall::link_detach(&link) {
        // Not fatal: removing the pin detaches it all the same, a moment later.
        debug!(path = %path.display(), error = %e, "BPF_LINK_DETACH failed");
    }
    drop(link);
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(pin_error(e)),
    }
}

/// The two `bpf(2)` commands aya 0.14 does not offer for a pinned link: opening it, and
/// detaching it explicitly.
mod bpf_syscall {
    use std::{
        ffi::CString,
        io,
        os::{
            fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
            unix::ffi::OsStrExt as _,
        },
        path::Path,
    };

    use aya_obj::generated::bpf_cmd;

    /// `union bpf_attr` for the commands below: every field they use fits in the first
    /// 20 bytes, and the kernel requires the rest to be zero.
    type Attr = [u8; 24];

    fn bpf(cmd: bpf_cmd, attr: &Attr) -> io::Result<i64> {
        // SAFETY: `attr` is a valid, initialised buffer of the size passed; the kernel
        // only reads it for these commands.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd as libc::c_int,
                attr.as_ptr(),
                attr.len() as libc::c_uint,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// `BPF_OBJ_GET`: a descriptor of the object pinned at `path`.
    pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut attr: Attr = [0; 24];
        // `pathname` (a u64 holding a pointer); `bpf_fd`, `file_flags` and `path_fd` 0.
        attr[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
        let fd = bpf(bpf_cmd::BPF_OBJ_GET, &attr)?;
        let fd = i32::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// `BPF_LINK_DETACH`: detach `link` from its hook now (it stays a defunct link until
    /// its last reference goes).
    pub fn link_detach(link: &OwnedFd) -> io::Result<()> {
        let mut attr: Attr = [0; 24];
        let fd = u32::try_from(link.as_raw_fd()).map_err(io::Error::other)?;
        attr[..4].copy_from_slice(&fd.to_ne_bytes());
        bpf(bpf_cmd::BPF_LINK_DETACH, &attr).map(drop)
    }
}

/// Load `prefilter` from the freshly loaded object, pin it in place of the old one and
/// switch every pinned XDP link to it (`BPF_LINK_UPDATE`: the uplink is never unfiltered).
/// For [`super::install`], which does the same for the TC programs (`prefilter_out`
/// among them). Returns (links upgraded, stale link pins removed).
pub fn install_program(ebpf: &mut Ebpf, pins: &Pins) -> Result<(usize, usize)> {
    let program: &mut Xdp = ebpf
        .program_mut(PROG_PREFILTER)
        .ok_or_else(|| {
            program_error(
                PROG_PREFILTER,
                "finding in the object",
                ProgramError::NotLoaded,
            )
        })?
        .try_into()
        .map_err(|e| program_error(PROG_PREFILTER, "typing", e))?;
    program
        .load()
        .map_err(|e| program_error(PROG_PREFILTER, "loading", e))?;
    let pin = pins.program(PROG_PREFILTER);
    match std::fs::remove_file(&pin) {
        Ok(()) => debug!(program = PROG_PREFILTER, "replacing pinned program"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Pin { path: pin, source }),
    }
    program.pin(&pin).map_err(|e| pin_error(&pin, e))?;

    let (mut upgraded, mut removed) = (0, 0);
    for (ifindex, name, path) in pins.links()? {
        if name != PROG_PREFILTER {
            continue;
        }
        match upgrade_link(program, &path) {
            Ok(()) => upgraded += 1,
            Err(reason) => {
                // The uplink went away: its link is defunct.
                warn!(ifindex, program = PROG_PREFILTER, %reason, "removing stale link pin");
                std::fs::remove_file(&path).map_err(|source| Error::Pin {
                    path: path.clone(),
                    source,
                })?;
                removed += 1;
            }
        }
    }
    Ok((upgraded, removed))
}

fn upgrade_link(program: &mut Xdp, path: &Path) -> Result<(), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
    // Dropping the link closes our descriptor only; the pin keeps the link alive.
    drop(program.take_link(id).map_err(|e| e.to_string())?);
    Ok(())
}

/// Were the prefilter's programs pinned (by an agent of this version)?
fn require_programs(pins: &Pins) -> Result<()> {
    pins.require_installed()?;
    if [PROG_PREFILTER, PROG_PREFILTER_OUT]
        .iter()
        .all(|name| pins.program(name).exists())
    {
        Ok(())
    } else {
        Err(Error::NotInstalled {
            path: pins.progs_dir(),
        })
    }
}

fn program_error(program: &'static str, action: &'static str, e: ProgramError) -> Error {
    Error::Program {
        program,
        action,
        source: Box::new(e),
    }
}

fn attach_error(program: &'static str, interface: &str, ifindex: u32, e: ProgramError) -> Error {
    Error::Attach {
        program,
        interface: interface.to_owned(),
        ifindex,
        source: Box::new(e),
    }
}

fn pin_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Pin {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    }
}

// ----- Status -------------------------------------------------------------------------------

/// One uplink the prefilter is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub ifindex: u32,
    /// Its name in the calling thread's namespace; `None` when it is gone.
    pub interface: Option<String>,
    /// `prefilter` (XDP) is attached.
    pub xdp: bool,
    /// `prefilter_out` (egress) is attached.
    pub egress: bool,
}

/// One denied CIDR and what it dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub net: IpNet,
    pub id: u32,
    pub dropped: u64,
}

/// `palisade prefilter show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub uplinks: Vec<Uplink>,
    pub rules: Vec<Rule>,
    pub counters: Vec<(PrefilterCounter, u64)>,
}

/// Where the prefilter is attached, what it denies, what it dropped.
pub fn status(pins: &Pins) -> Result<Status> {
    let mut uplinks: BTreeMap<u32, Uplink> = BTreeMap::new();
    for (ifindex, name, _) in pins.links()? {
        let xdp = name == PROG_PREFILTER;
        if !xdp && name != PROG_PREFILTER_OUT {
            continue;
        }
        let uplink = uplinks.entry(ifindex).or_insert_with(|| Uplink {
            ifindex,
            interface: nix::net::if_::if_indextoname(ifindex)
                .ok()
                .map(|n| n.to_string_lossy().into_owned()),
            xdp: false,
            egress: false,
        });
        if xdp {
            uplink.xdp = true;
        } else {
            uplink.egress = true;
        }
    }
    let drops: HashMap<u32, u64> = DropCounters::open_drops(pins)?
        .entries()?
        .into_iter()
        .collect();
    let rules = denied(pins)?
        .into_iter()
        .map(|(net, id)| Rule {
            net,
            id,
            dropped: drops.get(&id).copied().unwrap_or(0),
        })
        .collect();
    Ok(Status {
        uplinks: uplinks.into_values().collect(),
        rules,
        counters: counters(pins)?,
    })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "uplinks:")?;
        if self.uplinks.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for u in &self.uplinks {
            let name = u.interface.as_deref().unwrap_or("(gone)");
            let parts: Vec<&str> = [(u.xdp, "xdp"), (u.egress, "egress")]
                .iter()
                .filter_map(|(on, what)| on.then_some(*what))
                .collect();
            writeln!(f, "  {name} (ifindex {}): {}", u.ifindex, parts.join(", "))?;
        }
        writeln!(f, "denied ({}):", self.rules.len())?;
        for r in &self.rules {
            writeln!(
                f,
                "  {:<43} rule {:<6} dropped {}",
                r.net.to_string(),
                r.id,
                r.dropped
            )?;
        }
        writeln!(f, "counters:")?;
        for (counter, value) in &self.counters {
            writeln!(f, "  {:<27} {value}", counter.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::tables::MemTable;

    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|s| parse_cidr(s).unwrap()).collect()
    }

    #[test]
    fn keys_keep_the_families_apart() {
        let (v4_len, v4) = cidr_key(&"203.0.113.0/24".parse().unwrap());
        assert_eq!((v4.family, v4_len), (4, 8 + 96 + 24));
        assert_eq!(v4.addr[10..], [0xff, 0xff, 203, 0, 113, 0]);
        let (v6_len, v6) = cidr_key(&"2001:db8::/32".parse().unwrap());
        assert_eq!((v6.family, v6_len), (6, 8 + 32));
        assert_eq!(v6.addr[..4], [0x20, 0x01, 0x0d, 0xb8]);
        // ::/0 and 0.0.0.0/0 are different keys: IPv6's never covers IPv4-mapped addresses.
        assert_ne!(
            cidr_key(&"::/0".parse().unwrap()),
            cidr_key(&"0.0.0.0/0".parse().unwrap())
        );
    }

    #[test]
    fn keys_read_back_as_their_cidr() {
        for text in [
            "203.0.113.0/24",
            "0.0.0.0/0",
            "198.51.100.7/32",
            "2001:db8::/32",
            "::/0",
            "2001:db8::1/128",
            "::ffff:203.0.113.0/120",
        ] {
            let net: IpNet = text.parse().unwrap();
            assert_eq!(net_of(&cidr_key(&net)), Some(net), "{text}");
        }
        let mut bad = cidr_key(&"203.0.113.0/24".parse().unwrap());
        bad.1.family = 5;
        assert_eq!(net_of(&bad), None);
    }

    #[test]
    fn cidrs_and_addresses_parse_and_host_bits_are_cleared() {
        assert_eq!(
            parse_cidr(" 203.0.113.77/24 ").unwrap(),
            "203.0.113.0/24".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_cidr("198.51.100.7").unwrap(),
            "198.51.100.7/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_cidr("2001:db8::1").unwrap(),
            "2001:db8::1/128".parse::<IpNet>().unwrap()
        );
        for bad in ["", "example.com", "10.0.0.0/33", "10.0.0/8", "::/129"] {
            let e = parse_cidr(bad).unwrap_err();
            assert_eq!(e.text, bad.trim());
            assert!(std::error::Error::source(&e).is_some(), "{bad}");
        }
    }

    #[test]
    fn lists_skip_comments_and_blank_lines_and_name_bad_lines() {
        let text = "# denied\n203.0.113.0/24  # scanners\n\n2001:db8:1::/48\n203.0.113.9/24\n";
        assert_eq!(
            parse_list(text).unwrap(),
            nets(&["203.0.113.0/24", "2001:db8:1::/48"])
        );
        let e = parse_list("10.0.0.0/8\n  \nnot-a-cidr\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.source.text, "not-a-cidr");
        assert!(parse_list("").unwrap().is_empty());
    }

    #[test]
    fn a_plan_keeps_ids_adds_above_every_id_in_use_and_removes_the_rest() {
        let current = vec![
            (cidr_key(&"203.0.113.0/24".parse().unwrap()), 1),
            (cidr_key(&"198.51.100.0/24".parse().unwrap()), 4),
        ];
        let desired = nets(&["203.0.113.0/24", "2001:db8::/32", "192.0.2.0/24"]);
        // A counter of a removed rule (7) may still receive a drop in flight.
        let plan = plan(&current, &desired, &[1, 7].into());
        assert_eq!(plan.keep, [("203.0.113.0/24".parse().unwrap(), 1)]);
        assert_eq!(plan.remove, [current[1]]);
        assert_eq!(
            plan.add,
            [
                ("192.0.2.0/24".parse().unwrap(), 8),
                ("2001:db8::/32".parse().unwrap(), 9)
            ]
        );
    }

    #[test]
    fn the_same_list_again_changes_nothing() {
        let current = vec![(cidr_key(&"203.0.113.0/24".parse().unwrap()), 3)];
        let plan = plan(&current, &nets(&["203.0.113.0/24"]), &BTreeSet::new());
        assert!(plan.add.is_empty() && plan.remove.is_empty());
        assert_eq!(plan.keep.len(), 1);
    }

    #[test]
    fn ids_never_use_zero_and_fill_gaps_only_when_exhausted() {
        let mut ids = Ids::new([]);
        assert_eq!((ids.next(), ids.next()), (1, 2));
        let mut full = Ids::new([1, 2, 4, u32::MAX]);
        assert_eq!((full.next(), full.next()), (3, 5));
    }

    /// Records the order of edits, to check that adds come before removes.
    #[derive(Default)]
    struct Journal {
        table: MemTable<(u32, CidrKey), u32>,
        log: Vec<(&'static str, u32)>,
    }

    impl Table<(u32, CidrKey), u32> for Journal {
        fn get(&self, key: &(u32, CidrKey)) -> Result<Option<u32>> {
            self.table.get(key)
        }
        fn set(&mut self, key: (u32, CidrKey), id: u32) -> Result<()> {
            self.log.push(("set", id));
            self.table.set(key, id)
        }
        fn remove(&mut self, key: &(u32, CidrKey)) -> Result<bool> {
            let id = self.table.get(key)?.unwrap_or(0);
            self.log.push(("remove", id));
            self.table.remove(key)
        }
        fn entries(&self) -> Result<Vec<((u32, CidrKey), u32)>> {
            self.table.entries()
        }
    }

    #[test]
    fn setting_a_list_adds_before_it_removes_and_forgets_removed_counters() {
        let mut trie = Journal::default();
        let mut drops = MemTable::<u32, u64>::default();
        let first = set_denied(
            &mut trie,
            &mut drops,
            &nets(&["203.0.113.0/24", "198.51.100.0/24"]),
        )
        .unwrap();
        // Ids follow the list's order: 198.51.100.0/24 is 1, 203.0.113.0/24 is 2.
        assert_eq!(first.added.len(), 2);
        drops.set(1, 10).unwrap();
        drops.set(2, 20).unwrap();
        trie.log.clear();

        let second = set_denied(
            &mut trie,
            &mut drops,
            &nets(&["203.0.113.0/24", "2001:db8::/32"]),
        )
        .unwrap();
        assert_eq!(
            second,
            Change {
                added: vec!["2001:db8::/32".parse().unwrap()],
                removed: vec!["198.51.100.0/24".parse().unwrap()],
                kept: 1,
            }
        );
        assert_eq!(trie.log, [("set", 3), ("remove", 1)]);
        // The kept rule keeps its counter; the removed rule's is gone.
        assert_eq!(drops.0, [(2, 20)].into());
        let mut ids: Vec<u32> = trie.entries().unwrap().iter().map(|e| e.1).collect();
        ids.sort();
        assert_eq!(ids, [2, 3]);

        let cleared = set_denied(&mut trie, &mut drops, &BTreeSet::new()).unwrap();
        assert_eq!(cleared.removed.len(), 2);
        assert!(trie.entries().unwrap().is_empty() && drops.0.is_empty());
    }

    #[test]
    fn a_change_reads_as_a_summary() {
        let change = Change {
            added: vec!["203.0.113.0/24".parse().unwrap()],
            removed: vec![],
            kept: 2,
        };
        assert_eq!(
            change.to_string(),
            "3 denied CIDRs: 1 added, 0 removed, 2 unchanged\n  + 203.0.113.0/24"
        );
    }
}
