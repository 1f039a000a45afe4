//! `portd check`: validates the policy and inspects the host: which
//! sysctl.d file sets each key at boot and whether portd's drop-in would be
//! overridden, parity, listening services inside the range or the span the
//! policy may open, and (`--plan`) what the daemon would do now.
//!
//! Exit status: 0 fine, 1 warnings, 2 errors.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::act::actuator::{self, DropinFile};
use crate::act::state::State;
use crate::base::host::Host;
use crate::base::kernel;
use crate::base::ports::{PortRange, PortSet};
use crate::judge::assess;
use crate::judge::level::{Exit, Level};
use crate::judge::planner::{self, Action, Bounds};
use crate::observe::census::{KernelSettings, SocketSource};
use crate::observe::sysctld::{self, Scan};
use crate::observe::usage::{self, UsageOptions};
use crate::policy::file::PolicyError;
use crate::policy::{Floor, Policy};
use crate::publish::live;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingSeverity {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub severity: FindingSeverity,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct BootKey {
    pub key: &'static str,
    /// Every assignment in application order: `file:line: value`.
    pub assignments: Vec<String>,
    /// The one that wins at boot, if any.
    pub winner: Option<String>,
    /// Assignments after portd's drop-in: they would override it.
    pub overrides_dropin: Vec<String>,
}

/// `check --json`'s `schema_version`: changes only when a field is removed
/// or changes type; fields may be added (portd(8), `check --json`).
pub const CHECK_SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// [`CHECK_SCHEMA_VERSION`], first in the object.
    pub schema_version: u32,
    pub policy_file: String,
    pub policy_found: bool,
    /// `PATH:LINE:COLUMN: message` lines of a rejected policy file.
    pub policy_errors: Vec<String>,
    pub range: Option<PortRange>,
    pub reserved_ports: Option<String>,
    pub unprivileged_port_start: Option<u16>,
    pub boot: Vec<BootKey>,
    /// Span the policy may open: (low, high) pairs outside the current range.
    pub may_open: Vec<PortRange>,
    pub listeners_in_range: Vec<u16>,
    pub listeners_in_span: Vec<u16>,
    pub findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<planner::Decision>,
    /// What the running daemon knows (live.rs), or why nothing.
    #[serde(serialize_with = "daemon_report")]
    pub daemon: live::DaemonView,
    /// With the plan, at the warning level or above: what else closes the
    /// gap (remedy.rs), the first whose effect closes it first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remedies: Vec<crate::judge::remedy::Remedy>,
}

fn daemon_report<S: serde::Serializer>(d: &live::DaemonView, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&d.report(), s)
}

impl CheckReport {
    /// 0 fine, 1 warnings, 2 errors.
    pub fn exit(&self) -> Exit {
        if !self.policy_errors.is_empty() {
            return Exit::Critical;
        }
        match self.findings.iter().map(|f| f.severity).max() {
            Some(FindingSeverity::Error) => Exit::Critical,
            Some(FindingSeverity::Warning) => Exit::Warning,
            _ => Exit::Ok,
        }
    }

    fn add(&mut self, severity: FindingSeverity, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            message: message.into(),
        });
    }
}

pub struct CheckOptions {
    pub plan: bool,
}

/// `policy` is the loaded policy, or the error that refused it (then the
/// host is inspected against the defaults and the result is an error).
pub fn run(
    host: &Host,
    policy_file: &Path,
    policy: Result<(Policy, bool), PolicyError>,
    source: &dyn SocketSource,
    opts: &CheckOptions,
) -> CheckReport {
    let mut report = CheckReport::new(policy_file);
    let policy = report.policy(policy_file, policy);
    report.daemon = live::read(host, SystemTime::now());
    // One scan for every question asked of sysctl.d; an error is reported
    // once, here.
    let scan = scan_sysctld(host, &mut report);
    if let Some(scan) = &scan {
        boot_config(scan, &policy, &mut report);
    }
    let settings = match KernelSettings::read(host) {
        Ok(s) => s,
        Err(e) => {
            report.add(FindingSeverity::Error, e.to_string());
            return report;
        }
    };
    report.kernel(&settings);
    let state = load_state(host, &mut report);
    dropin(host, scan.as_ref(), &policy, &state, &mut report);
    yielded_finding(&state, &mut report);
    let bounds = Bounds::of(
        &policy,
        state.initial_range,
        settings.port_range,
        settings.unprivileged_port_start,
    );
    bounds_findings(&policy, &settings, bounds, &mut report);

    let options = UsageOptions {
        tcp_pool_in_headline: policy.tcp_pool_alerts,
    };
    let usage = match usage::take_census(source, settings.clone(), options) {
        Ok(u) => u,
        Err(e) => {
            report.add(FindingSeverity::Error, format!("census failed: {e}"));
            return report;
        }
    };
    usage_findings(&usage, &mut report);
    if !report.may_open.is_empty() {
        reservations_in_span(
            &policy,
            &settings,
            &usage.listening_ports,
            bounds,
            &mut report,
        );
    }
    if opts.plan {
        let (decision, remedies) = plan_now(host, scan.as_ref(), &policy, &state, &usage);
        report.plan = Some(decision);
        report.remedies = remedies;
    }
    report
}

/// sysctl.d read once for every question asked of it; an error is reported
/// once, here.
fn scan_sysctld(host: &Host, report: &mut CheckReport) -> Option<Scan> {
    match sysctld::scan(host) {
        Ok(s) => Some(s),
        Err(e) => {
            report.add(FindingSeverity::Error, format!("cannot read sysctl.d: {e}"));
            None
        }
    }
}

/// portd's state, or the defaults with an error when it cannot be read.
fn load_state(host: &Host, report: &mut CheckReport) -> State {
    match State::load(host) {
        Ok(s) => s,
        Err(e) => {
            report.add(
                FindingSeverity::Error,
                format!("{e} (portd run would only advise until this is fixed)"),
            );
            State::default()
        }
    }
}

/// A yield to the admin leaves portd advising only.
fn yielded_finding(state: &State, report: &mut CheckReport) {
    if let Some(y) = &state.yielded {
        report.add(
            FindingSeverity::Warning,
            format!(
                "portd yielded to the admin ({}); it only advises until `systemctl reload portd`",
                y.reason
            ),
        );
    }
}

impl CheckReport {
    /// The live kernel values the report shows.
    fn kernel(&mut self, settings: &KernelSettings) {
        self.range = Some(settings.port_range);
        self.reserved_ports = Some(settings.reserved_ports.to_sysctl_list());
        self.unprivileged_port_start = Some(settings.unprivileged_port_start);
    }

    fn new(policy_file: &Path) -> CheckReport {
        CheckReport {
            schema_version: CHECK_SCHEMA_VERSION,
            policy_file: policy_file.display().to_string(),
            policy_found: false,
            policy_errors: Vec::new(),
            range: None,
            reserved_ports: None,
            unprivileged_port_start: None,
            boot: Vec::new(),
            may_open: Vec::new(),
            listeners_in_range: Vec::new(),
            listeners_in_span: Vec::new(),
            findings: Vec::new(),
            plan: None,
            daemon: live::DaemonView::NotRunning(live::NotRunning::Absent),
            remedies: Vec::new(),
        }
    }

    /// The policy to check the host against: the loaded one, or the
    /// defaults when the file was refused (its errors recorded).
    fn policy(
        &mut self,
        policy_file: &Path,
        policy: Result<(Policy, bool), PolicyError>,
    ) -> Policy {
        match policy {
            Ok((p, found)) => {
                self.policy_found = found;
                if !found {
                    self.add(
                        FindingSeverity::Info,
                        format!(
                            "{} does not exist: the built-in defaults apply",
                            policy_file.display()
                        ),
                    );
                }
                p
            }
            Err(e) => {
                self.policy_errors = e.to_string().lines().map(str::to_string).collect();
                Policy::default()
            }
        }
    }
}

/// The policy's bounds against the range: a floor the kernel refuses, a
/// range portd leaves alone, and else the span portd may open.
fn bounds_findings(
    policy: &Policy,
    settings: &KernelSettings,
    bounds: Bounds,
    report: &mut CheckReport,
) {
    let range = settings.port_range;
    let unprivileged = settings.unprivileged_port_start;
    if let Floor::Port(p) = policy.floor
        && p < unprivileged
    {
        report.add(
            FindingSeverity::Warning,
            format!(
                "widen.floor {p} is below ip_unprivileged_port_start {unprivileged}: the kernel refuses such a range, so portd stops at {unprivileged}"
            ),
        );
    }
    if bounds.outside(range) {
        report.add(
            FindingSeverity::Warning,
            format!(
                "the range {range} lies outside the policy's bounds {}-{}: portd will not change it",
                bounds.floor, bounds.ceiling
            ),
        );
    }
    report.may_open = bounds.may_open(range);
}

/// What the census judged ([`usage::Hazard`]) about the range's setup,
/// listeners in the span portd may open, and a range with no usable port.
fn usage_findings(usage: &usage::Usage, report: &mut CheckReport) {
    report.listeners_in_range = usage.listeners_in_range.clone();
    report.listeners_in_span = usage
        .listening_ports
        .iter()
        .filter(|p| report.may_open.iter().any(|r| r.contains(*p)))
        .collect();
    // The range's setup; how busy one destination is now is `status`'s to say.
    for hazard in &usage.hazards {
        if matches!(
            hazard,
            usage::Hazard::SameParity { .. } | usage::Hazard::ListenersInRange { .. }
        ) {
            report.add(FindingSeverity::Warning, hazard.to_string());
        }
    }
    if !report.listeners_in_span.is_empty() {
        report.add(
            FindingSeverity::Info,
            format!(
                "services listen on {} port(s) inside the span the policy may open ({}); portd reserves them before the range grows over them",
                report.listeners_in_span.len(),
                usage::abbreviate(&report.listeners_in_span, 10)
            ),
        );
    }
    if let usage::Cause::NoUsablePorts { .. } = &usage.headline.cause {
        report.add(
            FindingSeverity::Error,
            format!(
                "{}: every connect() fails with EADDRNOTAVAIL; remove ports of the range from \
                 ip_local_reserved_ports or widen the range",
                usage.headline.cause
            ),
        );
    }
}

/// What the daemon would do on a poll now, with the level already held,
/// and the remedies at the warning level or above: the daemon's own
/// judgement (judge/assess.rs) of a single look.
fn plan_now(
    host: &Host,
    scan: Option<&Scan>,
    policy: &Policy,
    state: &State,
    usage: &usage::Usage,
) -> (planner::Decision, Vec<crate::judge::remedy::Remedy>) {
    let pin = scan.and_then(|scan| actuator::pin(scan, &policy.dropin_name));
    let authority = crate::judge::authority::Authority::of(
        policy.mode,
        false,
        None,
        state.yielded.as_ref().map(|y| y.reason.as_str()),
    );
    let assessment = assess::assess(
        &mut assess::Memory::default(),
        &assess::Evidence {
            usage,
            processes: None,
            policy,
            history: &state.history(),
            pin: pin.as_ref(),
            foreign_dropin: actuator::foreign_dropin(host, policy.persist, &policy.dropin_name),
            now: SystemTime::now(),
            authority: &authority,
            single: true,
        },
    );
    (assessment.decision, assessment.remedies)
}

/// portd's drop-in: whether portd may write it (it never overwrites a file
/// it did not write), an old one left by an earlier `persist.file`, and
/// the reserved ports it sets (none said when sysctl.d could not be read:
/// `run` reported that).
fn dropin(
    host: &Host,
    scan: Option<&Scan>,
    policy: &Policy,
    state: &State,
    report: &mut CheckReport,
) {
    if !policy.persist {
        return;
    }
    let dir = host.path(sysctld::DROPIN_DIR);
    let path = dir.join(&policy.dropin_name);
    let current = match actuator::dropin_file(host, &policy.dropin_name) {
        DropinFile::Foreign(why) => {
            report.add(
                FindingSeverity::Error,
                format!(
                    "persist.file names {}, which portd did not write: {why}; portd refuses to overwrite it, so a change it makes would not survive a reboot (set persist.file to another name, or move the file aside)",
                    path.display()
                ),
            );
            return;
        }
        DropinFile::Portd(text) => Some(text),
        DropinFile::Absent => None,
    };
    if let Some(old) = state.dropin.as_deref().filter(|o| *o != policy.dropin_name)
        && matches!(actuator::dropin_file(host, old), DropinFile::Portd(_))
    {
        report.add(
            FindingSeverity::Info,
            format!(
                "{} is portd's drop-in of an earlier persist.file: portd removes it when it next writes {}",
                dir.join(old).display(),
                path.display()
            ),
        );
    }
    let (Some(scan), Some(_)) = (scan, &state.last_written) else {
        return;
    };
    let key = kernel::KEY_RESERVED_PORTS;
    let reserved = match actuator::dropin_reserved(scan, &policy.dropin_name, &state.added_reserved)
    {
        Ok(r) => r,
        Err(e) => {
            report.add(FindingSeverity::Error, format!("cannot read sysctl.d: {e}"));
            return;
        }
    };
    let wanted = if reserved.is_empty() {
        report.add(
            FindingSeverity::Info,
            format!(
                "portd's drop-in {} does not set {key}: portd reserved no ports, so the other sysctl.d files and runtime reservations stand",
                path.display()
            ),
        );
        None
    } else {
        report.add(
            FindingSeverity::Info,
            format!(
                "portd's drop-in {} sets {key} = {} (the other sysctl.d files' reservations and portd's {})",
                path.display(),
                reserved.to_sysctl_list(),
                state.added_reserved
            ),
        );
        Some(reserved.to_sysctl_list())
    };
    if let Some(text) = current {
        stale_dropin(&path, &text, wanted, report);
    }
}

/// portd's drop-in on disk no longer sets the reserved ports it should.
fn stale_dropin(path: &Path, text: &str, wanted: Option<String>, report: &mut CheckReport) {
    let key = kernel::KEY_RESERVED_PORTS;
    let on_disk = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| sysctld::normalize_key(k) == key)
        .map(|(_, v)| v.trim().to_string());
    if on_disk != wanted {
        report.add(
            FindingSeverity::Info,
            format!(
                "{} sets {key} = {:?}, no longer what it should: the running portd rewrites it at its next poll",
                path.display(),
                on_disk.unwrap_or_default()
            ),
        );
    }
}

/// What the planner refuses (a plan that leaves fewer usable ports than
/// now, [`planner::Blocked::FewerUsablePorts`]), found before it happens: the
/// ports a plan must reserve (protected, listening) measured over the widest
/// range the policy allows.
fn reservations_in_span(
    policy: &Policy,
    settings: &KernelSettings,
    listening: &PortSet,
    bounds: Bounds,
    report: &mut CheckReport,
) {
    let range = settings.port_range;
    let Some(widest) = bounds.widest(range) else {
        return;
    };
    let mut span = PortSet::new();
    span.insert_range(widest);
    let keep_out = planner::keep_out(listening, &policy.protected);
    let reserved = settings
        .reserved_ports
        .union(&keep_out.intersection_of(&span));
    let now = planner::usable_ports(range, &settings.reserved_ports, listening);
    let widest_usable = planner::usable_ports(widest, &reserved, listening);
    if widest_usable == now && widest != range {
        report.add(
            FindingSeverity::Warning,
            format!(
                "widening cannot add a usable port: every port of the span the policy may open \
                 (outside {range}, up to {widest}) is reserved, protected or listened on"
            ),
        );
    }
    if widest_usable >= now {
        return;
    }
    let what = if policy.protected.is_empty() {
        "the listening services inside it".to_string()
    } else {
        let entries: Vec<String> = policy
            .protected
            .iter()
            .map(|r| match r.len() {
                1 => r.low().to_string(),
                _ => r.to_string(),
            })
            .collect();
        format!("widen.protected [{}]", entries.join(", "))
    };
    report.add(
        FindingSeverity::Error,
        format!(
            "{what} would leave {widest_usable} usable ephemeral ports in {widest}, the widest \
             range the policy allows, against the {now} now: portd will not widen (reserving \
             them would make connect() fail); protect only the ports services listen on"
        ),
    );
}

fn boot_config(scan: &Scan, policy: &Policy, report: &mut CheckReport) {
    for w in &scan.warnings {
        report.add(
            FindingSeverity::Info,
            format!("systemd-sysctl will warn: {w}"),
        );
    }
    for s in &scan.skipped {
        report.add(FindingSeverity::Warning, format!("sysctl.d entry {s}"));
    }
    for key in [kernel::KEY_RESERVED_PORTS, kernel::KEY_PORT_RANGE] {
        let overrides: Vec<String> = scan
            .later_overrides(&policy.dropin_name, key)
            .iter()
            .map(|a| format!("{}:{}: {}", a.file.display(), a.line, a.value))
            .collect();
        if !overrides.is_empty() {
            report.add(
                FindingSeverity::Warning,
                format!(
                    "{key} is set after portd's drop-in {} by {}: a change portd makes would not survive a reboot, so portd will only advise",
                    policy.dropin_name,
                    overrides.join("; ")
                ),
            );
        }
        report.boot.push(BootKey {
            key,
            assignments: scan
                .assignments_for(key)
                .iter()
                .map(|a| format!("{}:{}: {}", a.file.display(), a.line, a.value))
                .collect(),
            winner: scan
                .winning(key)
                .map(|a| format!("{}:{}: {}", a.file.display(), a.line, a.value)),
            overrides_dropin: overrides,
        });
    }
}

pub fn render_human(r: &CheckReport) -> String {
    let mut out = String::new();
    for e in &r.policy_errors {
        let _ = writeln!(out, "{e}");
    }
    let _ = writeln!(
        out,
        "policy     {}{}",
        r.policy_file,
        if !r.policy_errors.is_empty() {
            " (rejected: the host is checked against the built-in defaults)"
        } else if r.policy_found {
            ""
        } else {
            " (absent: built-in defaults)"
        }
    );
    if let Some(range) = r.range {
        let _ = writeln!(
            out,
            "range      {range} ({} ports), reserved {:?}, ip_unprivileged_port_start {}",
            range.len(),
            r.reserved_ports.as_deref().unwrap_or(""),
            r.unprivileged_port_start.unwrap_or(0)
        );
    }
    for b in &r.boot {
        let _ = writeln!(
            out,
            "at boot    {}: {}",
            b.key,
            b.winner
                .as_deref()
                .unwrap_or("not set by any sysctl.d file (kernel default)")
        );
        for a in b
            .assignments
            .iter()
            .filter(|a| Some(*a) != b.winner.as_ref())
        {
            let _ = writeln!(out, "             overridden: {a}");
        }
    }
    if !r.may_open.is_empty() {
        let spans: Vec<String> = r.may_open.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "may open   {}", spans.join(", "));
    }
    render_plan(r, &mut out);
    let _ = writeln!(out, "{}", r.daemon.line());
    for f in &r.findings {
        let label = match f.severity {
            FindingSeverity::Info => "note",
            FindingSeverity::Warning => "WARNING",
            FindingSeverity::Error => "ERROR",
        };
        let _ = writeln!(out, "{label}: {}", f.message);
    }
    let _ = writeln!(
        out,
        "{}",
        match r.exit() {
            Exit::Ok => "check: OK",
            Exit::Warning => "check: warnings",
            Exit::Critical | Exit::Unknown => "check: errors",
        }
    );
    out
}

/// The plan and the remedies of `check --plan`.
fn render_plan(r: &CheckReport, out: &mut String) {
    if let Some(d) = &r.plan {
        let usage = match d.raw_level {
            Level::Ok => "usage below the warning level",
            Level::Warning => "usage at the warning level",
            Level::Critical => "usage at the critical level",
            Level::Unknown => "usage not known",
        };
        let _ = writeln!(out, "plan       {usage}: {}", describe(&d.action));
    }
    for remedy in &r.remedies {
        let _ = writeln!(
            out,
            "remedy     {} ({} ports{}): {}",
            remedy.id,
            remedy.effect,
            if remedy.closes_gap {
                ", closes the gap"
            } else {
                ""
            },
            remedy.advice
        );
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::Nothing => "nothing to do (usage below the warning level)".into(),
        Action::Apply { plan } => {
            format!("widen {plan}; expected usage {}", plan.expected_usage)
        }
        Action::Hold {
            plan: Some(plan),
            reason,
        } => format!("would widen {plan}, but {reason}"),
        Action::Hold { plan: None, reason } => format!("cannot widen: {reason}"),
    }
}
