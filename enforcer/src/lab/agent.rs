//! The lab's agent as commands meet it: what it answered to a change (read from its log),
//! restarting it with another default, and the modes of the pods' endpoints.
//!
//! The agent re-reads the policy folder, the cluster file and the names file whenever one
//! of them changes, and logs one line per attempt: `policy applied ...` or `policy not
//! applied ...` with the error. A command that wrote those files marks the log first
//! ([`LogMark`]), then waits (bounded) for the answer, so that a probe run right after it
//! sees what it asked for.

use std::{
    fmt,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use model::{Mode, netpol::evaluate::DefaultAction};

use super::{
    Lab,
    error::{Error, Result},
    in_node,
    process::Process,
    start_agent,
    state::{Layout, State},
};
use crate::datapath::{attach::ifindex_of, rules, tables::Endpoints};

/// How long a command waits for the agent to answer a change.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The agent re-reads its files once per change it sees: a command that wrote several
/// files waits this long after an answer for another, so the answer it reports covers
/// every file it wrote.
const QUIET: Duration = Duration::from_millis(150);
const POLL: Duration = Duration::from_millis(10);

const APPLIED: &str = "policy applied";
const NOT_APPLIED: &str = "policy not applied";

/// What the agent made of a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentOutcome {
    /// Applied: what it changed and how long it took, summed over the times it re-read
    /// its files for the change (once per file written).
    Applied(String),
    /// Refused: the last good policy stays enforced; the log line names the error.
    NotApplied(String),
    /// No answer in time.
    NoAnswer { waited: Duration, log: PathBuf },
    /// No agent runs in this lab: nothing enforces policy.
    NoAgent,
}

impl AgentOutcome {
    pub fn is_applied(&self) -> bool {
        matches!(self, Self::Applied(_))
    }
}

impl fmt::Display for AgentOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Applied(line) => write!(f, "the agent applied it: {line}"),
            Self::NotApplied(line) => write!(
                f,
                "the agent did NOT apply it, the last good policy stays enforced: {line}"
            ),
            Self::NoAnswer { waited, log } => write!(
                f,
                "no answer from the agent within {waited:?}; see {}",
                log.display()
            ),
            Self::NoAgent => write!(f, "no agent runs in this lab: nothing enforces policy"),
        }
    }
}

/// A position in the agent's log: answers after it are answers to what came after it.
#[derive(Clone, Debug)]
pub struct LogMark {
    log: PathBuf,
    offset: u64,
}

impl LogMark {
    /// The end of the log now.
    pub fn new(log: &Path) -> Self {
        Self {
            log: log.to_owned(),
            offset: std::fs::metadata(log).map_or(0, |m| m.len()),
        }
    }

    /// Wait (at most `timeout`) until the agent answered what was written since the mark,
    /// and then until it has been quiet for a moment.
    pub fn wait(&self, agent: Option<&Process>, timeout: Duration) -> AgentOutcome {
        let Some(agent) = agent.filter(|a| a.is_running()) else {
            return AgentOutcome::NoAgent;
        };
        let start = Instant::now();
        let mut seen = 0;
        let mut last_at = start;
        loop {
            let count = self.answers().len();
            let now = Instant::now();
            if count > seen {
                seen = count;
                last_at = now;
            }
            if (seen > 0 && now - last_at >= QUIET) || now - start >= timeout {
                break;
            }
            if seen == 0 && !agent.is_running() {
                return AgentOutcome::NoAgent;
            }
            std::thread::sleep(POLL);
        }
        summarize(&self.answers()).unwrap_or_else(|| AgentOutcome::NoAnswer {
            waited: timeout,
            log: self.log.clone(),
        })
    }

    /// The agent's answers after the mark, from their message on (the timestamp and level
    /// are left out).
    fn answers(&self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.log) else {
            return Vec::new();
        };
        let len = file.metadata().map_or(0, |m| m.len());
        // A log that shrank was replaced: read it whole.
        let offset = if len < self.offset { 0 } else { self.offset };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        // Only whole lines: the agent may be writing the last one.
        let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        String::from_utf8_lossy(&bytes[..end])
            .lines()
            .filter_map(|line| {
                let at = line.find(APPLIED).or_else(|| line.find(NOT_APPLIED))?;
                Some(line[at..].trim_end().to_owned())
            })
            .collect()
    }
}

/// The outcome of a series of answers: the last refusal if the agent ended refusing, else
/// what all of them changed together (`endpoints=1 writes=3 ...` summed).
fn summarize(answers: &[String]) -> Option<AgentOutcome> {
    let last = answers.last()?;
    if last.starts_with(NOT_APPLIED) {
        return Some(AgentOutcome::NotApplied(last.clone()));
    }
    let fields = ["endpoints", "writes", "deletes", "ms"];
    let mut sums = [0.0f64; 4];
    for answer in answers.iter().filter(|a| a.starts_with(APPLIED)) {
        for token in answer.split_whitespace() {
            let Some((key, value)) = token.split_once('=') else {
                continue;
            };
            if let Some(i) = fields.iter().position(|f| *f == key)
                && let Ok(v) = value.trim_matches('"').parse::<f64>()
            {
                sums[i] += v;
            }
        }
    }
    let [endpoints, writes, deletes, ms] = sums;
    let times = answers.len();
    Some(AgentOutcome::Applied(format!(
        "{APPLIED}: endpoints={endpoints} writes={writes} deletes={deletes} in {ms:.1} ms{}",
        if times > 1 {
            format!(" (read its files {times} times)")
        } else {
            String::new()
        }
    )))
}

/// Which pods a mode change is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModeTarget {
    /// Every pod, and the pods created later.
    All,
    /// The pods of a namespace, and those created in it later.
    Namespace(String),
    /// One pod (`ns/pod`).
    Pod(String),
}

impl Lab {
    /// Put pods' endpoints in `mode` (learn, monitor, enforce); their live connections are
    /// judged again under it. Returns the pods changed.
    pub fn set_mode(&mut self, mode: Mode, target: &ModeTarget) -> Result<Vec<String>> {
        let _lock = self.lock()?;
        self.reload()?;
        if self.state.agent_mode.is_none() {
            return Err(Error::NoAgent {
                name: self.layout.name.clone(),
                what: "endpoint modes",
            });
        }
        let chosen: Vec<usize> = match target {
            ModeTarget::All => (0..self.state.pods.len()).collect(),
            ModeTarget::Namespace(ns) => {
                self.namespace(ns)?;
                self.pod_indexes(|p| p.namespace == *ns)
            }
            ModeTarget::Pod(name) => {
                self.pod(name)?;
                self.pod_indexes(|p| p.name == *name)
            }
        };
        let interfaces: Vec<String> = chosen
            .iter()
            .map(|i| self.state.pods[*i].host_interface.clone())
            .collect();
        in_node(&self.layout, |pins| {
            let mut endpoints =
                Endpoints::open_endpoints(pins).map_err(|source| Error::Datapath {
                    action: "opening the endpoints of",
                    interface: self.layout.node_netns(),
                    source,
                })?;
            for interface in &interfaces {
                let datapath_error = |source| Error::Datapath {
                    action: "setting the mode of",
                    interface: interface.clone(),
                    source,
                };
                let ifindex = ifindex_of(interface).map_err(datapath_error)?;
                rules::set_mode(&mut endpoints, ifindex, mode).map_err(datapath_error)?;
            }
            Ok(())
        })?;
        match target {
            ModeTarget::All => {
                self.state.agent_mode = Some(mode);
                self.state.namespace_modes.clear();
            }
            ModeTarget::Namespace(ns) => {
                self.state.namespace_modes.insert(ns.clone(), mode);
            }
            ModeTarget::Pod(_) => {}
        }
        for i in &chosen {
            self.state.pods[*i].mode = Some(mode);
        }
        self.state.save(&self.layout)?;
        Ok(chosen
            .iter()
            .map(|i| self.state.pods[*i].name.clone())
            .collect())
    }

    /// Change what pods no policy selects get, lab-wide: the agent is restarted with the
    /// new `--default` (enforcement stays pinned meanwhile; the new agent swaps the new
    /// rules in before it reports ready). Namespaces labelled `palisade.io/default` keep
    /// theirs.
    pub fn set_default(&mut self, default: DefaultAction) -> Result<AgentOutcome> {
        let _lock = self.lock()?;
        self.reload()?;
        self.state.default = default;
        self.state.save(&self.layout)?;
        if self.state.agent_mode.is_none() {
            return Ok(AgentOutcome::NoAgent);
        }
        let mark = LogMark::new(&self.layout.agent_log());
        restart_agent(&self.layout, &mut self.state, super::AGENT_TIMEOUT)?;
        // The new agent applied its policy before it reported ready.
        Ok(mark.wait(self.state.agent.as_ref(), ANSWER_TIMEOUT))
    }

    /// The lab's default (see [`Lab::set_default`]).
    pub fn default_action(&self) -> DefaultAction {
        self.state.default
    }

    fn pod_indexes(&self, wanted: impl Fn(&super::Pod) -> bool) -> Vec<usize> {
        (0..self.state.pods.len())
            .filter(|i| wanted(&self.state.pods[*i]))
            .collect()
    }

    /// Wait for the agent's answer to what was written since `mark`.
    pub(super) fn agent_answer(&self, mark: &LogMark) -> AgentOutcome {
        if self.state.agent_mode.is_none() {
            return AgentOutcome::NoAgent;
        }
        mark.wait(self.state.agent.as_ref(), ANSWER_TIMEOUT)
    }
}

/// Stop the agent (the datapath stays pinned and enforcing) and start it again with what
/// the state says now.
pub(super) fn restart_agent(layout: &Layout, state: &mut State, timeout: Duration) -> Result<()> {
    if let Some(agent) = state.agent.take() {
        agent.stop("agent")?;
    }
    state.save(layout)?;
    start_agent(layout, state, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_after_the_mark_only_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        std::fs::write(
            &log,
            "2025-01-01T00:00:00Z  INFO enforcer::policy_source: policy applied endpoints=1\n",
        )
        .unwrap();
        let mark = LogMark::new(&log);
        assert!(mark.answers().is_empty());
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str("2025-01-01T00:00:01Z  WARN x: pod interface not found\n");
        text.push_str(
            "2025-01-01T00:00:02Z  WARN enforcer::policy_source: policy not applied; the last good policy stays enforced error=bad.yaml: x\n",
        );
        text.push_str("2025-01-01T00:00:03Z  INFO enforcer::policy_source: policy app");
        std::fs::write(&log, text).unwrap();
        let answers = mark.answers();
        assert_eq!(answers.len(), 1);
        assert!(
            answers[0].starts_with("policy not applied;") && answers[0].ends_with("x"),
            "{answers:?}"
        );
    }

    #[test]
    fn answers_add_up_unless_the_last_is_a_refusal() {
        let applied =
            |e, w, ms| format!("policy applied endpoints={e} writes={w} deletes=0 ms=\"{ms}\"");
        let refused = "policy not applied; the last good policy stays enforced error=x".to_owned();
        assert_eq!(summarize(&[]), None);
        assert_eq!(
            summarize(&[applied(1, 3, "1.5"), applied(0, 2, "2.0")]),
            Some(AgentOutcome::Applied(
                "policy applied: endpoints=1 writes=5 deletes=0 in 3.5 ms (read its files 2 times)"
                    .into()
            ))
        );
        assert_eq!(
            summarize(&[applied(1, 3, "1.5"), refused.clone()]),
            Some(AgentOutcome::NotApplied(refused.clone()))
        );
        assert!(summarize(&[refused, applied(0, 0, "1")]).is_some_and(|o| o.is_applied()));
    }

    #[test]
    fn without_an_agent_nothing_is_awaited() {
        let mark = LogMark::new(Path::new("/nonexistent/agent.log"));
        assert_eq!(
            mark.wait(None, Duration::from_secs(5)),
            AgentOutcome::NoAgent
        );
    }
}
