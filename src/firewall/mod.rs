//! Firewall repair: find what drops traffic between the host and the VM (the host-only network
//! and the container subnets, on the host-only link) and insert narrowly scoped rules at the top
//! of the chain that drops, in the same backend, tagged with the comment `dockroute`. Never
//! delete, flush or reorder anyone else's rules.
//!
//! Backends: iptables with the nf_tables backend and iptables-legacy (a rule in one does not
//! override a drop in the other), and native nftables tables. The legacy backend is consulted
//! only when its filter table exists already: merely listing it would create it. On macOS: pf
//! (dockroute's anchor, and an enable reference while someone else keeps pf on) and, where
//! /sbin/ipfw exists (OS X 10.9 and older), ipfw. What those hold that has no tag of its own
//! (pf's token, ipfw's rule numbers) is kept in the record ([`Held`]).

pub mod ipfw;
pub mod iptables;
pub mod memo;
pub mod nfnl;
pub mod nft;
pub mod pf;
pub mod walk;

use crate::exec::{self, ExecError};
use ipnet::Ipv4Net;
pub use memo::Memo;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The comment that marks dockroute's firewall rules.
pub const TAG: &str = "dockroute";

/// What dockroute holds in firewalls that carry no tag of their own, kept in the record (macOS).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// pf: the token of dockroute's enable reference (`pfctl -E`), released on `down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pf_token: Option<u64>,
    /// ipfw: the numbers of the rules dockroute added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipfw_rules: Vec<u32>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.pf_token.is_none() && self.ipfw_rules.is_empty()
    }

    /// `None` when nothing is held (the record leaves the field out).
    pub fn nonempty(self) -> Option<Held> {
        (!self.is_empty()).then_some(self)
    }
}

/// The traffic to let through: to and from `nets` over `ifname`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub ifname: String,
    pub nets: Vec<Ipv4Net>,
}

/// The scope the backends' unit tests share: the containers' subnet and the VM's host-only
/// network, over vboxnet0.
#[cfg(test)]
pub(crate) fn test_scope() -> Scope {
    Scope {
        ifname: "vboxnet0".into(),
        nets: vec![
            "172.17.0.0/16".parse().unwrap(),
            "192.168.99.0/24".parse().unwrap(),
        ],
    }
}

impl Scope {
    /// Everything between the host and the target's VM: never on a link that may be a tunnel,
    /// nor for a host-only network wider than [`crate::discover::WIDEST_HOST_NET`] (discovery
    /// refuses both already; this holds for every backend, pf included, whatever the target
    /// came from).
    pub fn for_target(t: &crate::discover::Target) -> Result<Scope, FirewallError> {
        let net = t.host_net();
        if net.prefix_len() < crate::discover::WIDEST_HOST_NET {
            return Err(FirewallError::Refused(format!(
                "no ACCEPT rules for {net} on {}: wider than a /{}",
                t.ifname,
                crate::discover::WIDEST_HOST_NET
            )));
        }
        if crate::vpn::classify(&t.ifname).is_some() {
            return Err(FirewallError::Refused(format!(
                "no ACCEPT rules on {}: it looks like a VPN tunnel, not a VM's host-only link",
                t.ifname
            )));
        }
        Ok(Scope {
            ifname: t.ifname.clone(),
            nets: t.networks(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Host to VM (`-o IF -d NET`).
    Out,
    /// VM to host (`-i IF -s NET`).
    In,
}

/// One rule dockroute inserts (or found carrying its tag, in its shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    /// `iptables`, `iptables-legacy` or `nftables`.
    pub backend: String,
    /// iptables: the table (`filter`); nftables: family and table (`inet mullvad`).
    pub table: String,
    pub chain: String,
    pub direction: Direction,
    pub net: Ipv4Net,
    pub ifname: String,
    /// ACCEPT in a built-in chain, RETURN in a vendor's chain.
    pub verdict: String,
    pub handle: Option<u64>,
    /// nftables: the kernel's handle of the table the rule was seen in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_handle: Option<u64>,
    /// One of dockroute's rules that sits below a rule that drops the traffic it is for
    /// ([`walk::Plan::misplaced`]): it counts as missing, and is deleted and inserted again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub misplaced: bool,
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.backend == pf::BACKEND {
            let text = pf::rule_text(self).unwrap_or_else(|e| e.escape_debug().to_string());
            return write!(f, "pf -a {} {text}", self.table);
        }
        if self.backend == nft::BACKEND {
            return write!(f, "nft {}", nft::rule_text(self));
        }
        if self.backend == ipfw::BACKEND {
            let n = self
                .handle
                .map_or_else(|| "?".to_string(), |h| h.to_string());
            let body = ipfw::body(self.direction, self.net, &self.ifname);
            return write!(f, "ipfw {n} {}", body.escape_debug());
        }
        let (i, n) = match self.direction {
            Direction::Out => ("-o", "-d"),
            Direction::In => ("-i", "-s"),
        };
        write!(
            f,
            "{} -t {} {} {i} {} {n} {} -j {} (comment {TAG})",
            self.backend,
            self.table,
            self.chain,
            self.ifname.escape_debug(),
            self.net,
            self.verdict
        )
    }
}

/// A rule that carries dockroute's tag but not the shape of its rules: someone else's (an
/// admin's `--dport 22 -j DROP` commented `dockroute`). Never deleted; `status` warns about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Foreign {
    pub backend: String,
    pub table: String,
    pub chain: String,
    /// The rule as the backend prints it.
    pub rule: String,
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.backend == nft::BACKEND {
            // nft names a rule's place as `rule FAMILY TABLE CHAIN`
            return write!(
                f,
                "nft rule {} {}: {}",
                self.table.escape_debug(),
                self.chain.escape_debug(),
                self.rule.escape_debug()
            );
        }
        write!(
            f,
            "{} -t {} {}: {}",
            self.backend,
            self.table,
            self.chain,
            self.rule.escape_debug()
        )
    }
}

/// A firewall change: insert a repair, or delete one of dockroute's rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum FwChange {
    Insert {
        rule: Repair,
    },
    Delete {
        rule: Repair,
        #[serde(skip)]
        words: Vec<String>,
    },
}

impl fmt::Display for FwChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FwChange::Insert { rule } => write!(f, "+ firewall {rule}"),
            FwChange::Delete { rule, .. } => write!(f, "- firewall {rule}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("{program}: unreadable output: {msg}")]
    Parse { program: String, msg: String },
    /// Rules dockroute will not insert, whatever asked for them.
    #[error("firewall: {0}")]
    Refused(String),
}

fn run(program: &str, args: &[String]) -> Result<String, FirewallError> {
    Ok(exec::run(program, args, None)?)
}

#[cfg(not(target_os = "macos"))]
/// Whether `iptables` here is the legacy backend: the multi-call binary it resolves to says so
/// (xtables-legacy-multi or xtables-nft-multi), without running `iptables -V`.
fn iptables_is_legacy(path: &std::path::Path) -> Result<bool, FirewallError> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = real.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.contains("legacy") {
        return Ok(true);
    }
    if name.contains("nft") {
        return Ok(false);
    }
    Ok(run("iptables", &["-V".to_string()])?.contains("legacy"))
}

#[cfg(not(target_os = "macos"))]
fn list_filter(program: &str) -> Result<Vec<walk::Chain>, FirewallError> {
    let args: Vec<String> = ["-w", "-t", "filter", "-S"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    Ok(iptables::parse(&run(program, &args)?))
}

#[cfg(not(target_os = "macos"))]
fn not_found(program: &str, what: &str) -> String {
    format!(
        "{program} not found in {}: {what} NOT checked or repaired",
        exec::SYSTEM_PATH
    )
}

#[cfg(not(target_os = "macos"))]
/// The iptables programs in use here, each with whether its rules live in nftables
/// (iptables-nft). A missing program is a warning, a failing one an error; either way the other
/// backends are still read.
fn iptables_programs(o: &mut Observed) -> Vec<(&'static str, bool)> {
    let mut out = Vec::new();
    let mut main_is_legacy = false;
    match exec::find("iptables") {
        Ok(path) => match iptables_is_legacy(&path) {
            Ok(legacy) => {
                main_is_legacy = legacy;
                if !legacy || legacy_filter_exists() {
                    out.push(("iptables", !legacy));
                }
            }
            Err(e) => o.errors.push(e),
        },
        Err(ExecError::NotFound { .. }) => o
            .warnings
            .push(not_found("iptables", "iptables rules were")),
        Err(e) => o.errors.push(e.into()),
    }
    if !main_is_legacy && legacy_filter_exists() {
        match exec::find("iptables-legacy") {
            Ok(_) => out.push(("iptables-legacy", false)),
            Err(ExecError::NotFound { .. }) => o.warnings.push(not_found(
                "iptables-legacy",
                "the legacy iptables filter table exists, its rules were",
            )),
            Err(e) => o.errors.push(e.into()),
        }
    }
    out
}

#[cfg(not(target_os = "macos"))]
/// Whether the legacy (x_tables) filter table exists in this network namespace.
fn legacy_filter_exists() -> bool {
    std::fs::read_to_string("/proc/net/ip_tables_names")
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "filter"))
}

/// What the firewalls need (for `scope`; nothing when `None`) and what dockroute has there now.
/// Each backend is read on its own: one that fails is in `errors`, the others are still here.
#[derive(Debug, Default)]
pub struct Observed {
    pub desired: Vec<Repair>,
    pub owned: Vec<(Repair, Vec<String>)>,
    /// Rules with dockroute's tag but not its shape: left alone.
    pub foreign: Vec<Foreign>,
    /// What could not be checked (a missing program, a rule that could not be read).
    pub warnings: Vec<String>,
    pub errors: Vec<FirewallError>,
    /// pf: every rule of dockroute's anchor with its counters (`pfctl -vsr`).
    pub counters: Vec<pf::Listed>,
    /// pf: whether it is enabled (`pfctl -s info`); `None` elsewhere, or when unreadable.
    pub pf_enabled: Option<bool>,
}

/// Which firewalls to read. `watch` narrows a reconcile to the ones its events name; everything
/// else reads them all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Reading {
    /// Every backend; the nftables tables one by one, found over netlink (iptables-nft's own
    /// tables are not read twice).
    #[default]
    All,
    /// Every backend; nftables through `nft list ruleset` (`down`: whatever any table holds, and
    /// an nft that fails is reported even when no table needs it).
    Everything,
    Only {
        /// The iptables backends (iptables-nft's tables changed).
        iptables: bool,
        /// These nftables tables (`family name`).
        nft_tables: Vec<String>,
    },
}

pub fn observe(scope: Option<&Scope>) -> Observed {
    observe_only(scope, &Reading::All)
}

/// [`observe`], reading only what `reading` names; what is not read is neither desired nor owned
/// here, so a diff leaves it alone. pf on macOS (one anchor: always read whole), netfilter
/// elsewhere.
pub fn observe_only(scope: Option<&Scope>, reading: &Reading) -> Observed {
    observe_held(scope, reading, &Held::default(), None)
}

/// Read the firewalls ahead, on a thread of their own, for a plan that learns its scope later
/// (`up` while it waits for the Docker engine, whose networks are part of the scope): a read
/// with no scope, kept with nftables' generation id and its rules in a memo for one run, which
/// the plan judges again for its scope ([`memo::Recalled::Rules`]) if nftables did not change
/// meanwhile, and reads again otherwise. `None` where nothing is read ahead (macOS: pf is read
/// when the plan runs).
pub fn read_ahead() -> Option<std::thread::JoinHandle<Memo>> {
    #[cfg(target_os = "macos")]
    {
        None
    }
    #[cfg(not(target_os = "macos"))]
    {
        std::thread::Builder::new()
            .name("firewall-read".into())
            .spawn(|| {
                let mut memo = Memo::for_one_run();
                let _ = netfilter(None, &Reading::All, Some(&mut memo));
                memo
            })
            .map_err(|e| tracing::debug!("firewall: not read ahead: {e}"))
            .ok()
    }
}

/// [`observe_only`], knowing what the record says dockroute holds (macOS: its ipfw rule numbers);
/// with `memo` (`watch` on Linux, one process), a read of everything reuses the last one's
/// reading of what nftables holds (iptables-nft, the nftables tables) while nftables' generation
/// id is the one read before it ([`memo`]), and remembers a complete new one. iptables-legacy is
/// read every time.
pub fn observe_held(
    scope: Option<&Scope>,
    reading: &Reading,
    held: &Held,
    memo: Option<&mut Memo>,
) -> Observed {
    #[cfg(target_os = "macos")]
    {
        let _ = (reading, memo);
        let mut o = observe_pf(scope);
        observe_ipfw(scope, held, &mut o);
        o
    }
    #[cfg(not(target_os = "macos"))]
    {
        let _ = held;
        netfilter(scope, reading, memo)
    }
}

/// dockroute's pf anchor ([`pf`]): what it needs for `scope` and what it holds.
#[cfg(target_os = "macos")]
fn observe_pf(scope: Option<&Scope>) -> Observed {
    let mut o = Observed::default();
    match pf::run::listing() {
        Ok(text) => {
            o.counters = pf::parse_listing(&text);
            let (owned, foreign) = pf::observe_listing(&text);
            if let Some(scope) = scope {
                o.desired = pf::desired(scope);
            }
            o.owned = owned.into_iter().map(|r| (r, Vec::new())).collect();
            o.foreign = foreign;
        }
        Err(e) => o.errors.push(e),
    }
    o.pf_enabled = pf::run::is_enabled().ok().flatten();
    if o.pf_enabled == Some(false) {
        o.warnings.push(pf::DISABLED_NOTE.to_string());
    }
    o.warnings
        .extend(pf::system_extension_notes(&pf::run::vpn_apps_present()));
    for f in &o.foreign {
        o.warnings.push(format!(
            "a rule in dockroute's anchor that dockroute did not make is left alone: {f}"
        ));
    }
    o
}

/// ipfw ([`ipfw`]), where /sbin/ipfw exists (OS X 10.9 and older; on every macOS Rust builds
/// for it does not, and this finds nothing).
#[cfg(target_os = "macos")]
fn observe_ipfw(scope: Option<&Scope>, held: &Held, o: &mut Observed) {
    match exec::find("ipfw") {
        Ok(_) => {}
        Err(ExecError::NotFound { .. }) => return,
        Err(e) => return o.errors.push(e.into()),
    }
    let rules = match ipfw::run::list() {
        Ok(r) => r,
        Err(e) => return o.errors.push(e),
    };
    match ipfw::observe(&rules, &held.ipfw_rules, scope) {
        Ok(seen) => {
            o.desired.extend(seen.desired);
            o.owned
                .extend(seen.owned.into_iter().map(|r| (r, Vec::new())));
            o.warnings.extend(seen.warnings);
        }
        Err(msg) => o.errors.push(FirewallError::Parse {
            program: "ipfw".into(),
            msg,
        }),
    }
}

#[cfg(not(target_os = "macos"))]
/// iptables (both backends) and nftables, as much of them as `reading` names.
fn netfilter(scope: Option<&Scope>, reading: &Reading, mut memo: Option<&mut Memo>) -> Observed {
    let mut o = Observed::default();
    let (iptables, nft_tables) = match reading {
        Reading::All => (true, nft::Tables::Listed),
        Reading::Everything => (true, nft::Tables::Ruleset),
        Reading::Only {
            iptables,
            nft_tables,
        } => (*iptables, nft::Tables::Only(nft_tables.clone())),
    };
    let no_nft = matches!(&nft_tables, nft::Tables::Only(t) if t.is_empty());
    if no_nft && !iptables {
        return o;
    }
    if *reading != Reading::All {
        memo = None;
    }
    // Before the rules: a change that races with reading them makes the next comparison fail.
    let generation = memo.as_ref().and_then(|_| match nfnl::generation() {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::debug!("firewall: no nftables generation id ({e}): reading everything");
            None
        }
    });
    let programs = if iptables {
        iptables_programs(&mut o)
    } else {
        Vec::new()
    };
    // (an error finding nft is reported after the iptables backends' own, as it always was)
    let (nft_found, nft_error) = nft_present(no_nft, &mut o);
    let parts = memo::Parts {
        iptables_nft: programs.iter().any(|(_, in_nft)| *in_nft),
        nft: nft_found,
    };
    let recalled = memo.as_mut().and_then(|m| m.take(generation, parts, scope));
    if let (Some(r), Some(g)) = (&recalled, generation) {
        say_recalled(r, g, parts);
    }
    let (reused, mut covered, mut kept) = match recalled {
        Some(memo::Recalled::Judged(c)) => (true, c, memo::Rules::default()),
        Some(memo::Recalled::Rules(r)) => (false, memo::Covered::default(), r),
        None => (false, memo::Covered::default(), memo::Rules::default()),
    };
    // what this read judged from, for the memo
    let mut rules = memo::Rules::default();
    for (program, in_nft) in programs {
        if in_nft && reused {
            o.add(covered.iptables_nft.as_ref());
            continue;
        }
        let recalled = if in_nft {
            kept.iptables_nft.take()
        } else {
            None
        };
        let chains = match recalled {
            Some(chains) => Ok(chains),
            None => list_filter(program),
        };
        match chains {
            Ok(chains) => {
                let judged = judge_iptables(program, &chains, scope);
                o.add(Some(&judged));
                if in_nft {
                    covered.iptables_nft = Some(judged);
                    rules.iptables_nft = Some(chains);
                }
            }
            Err(e) => o.errors.push(e),
        }
    }
    o.errors.extend(nft_error);
    if nft_found && !reused {
        match judge_nft(&nft_tables, kept.nft.take(), scope) {
            Ok((judged, rs)) => {
                covered.nft = Some(judged);
                rules.nft = Some(rs);
            }
            Err(e) => o.errors.push(e),
        }
    }
    if !reused {
        covered.rules = memo.as_ref().and_then(|m| rules.at_most(m.keep()));
    }
    o.add(covered.nft.as_ref());
    if let Some(m) = memo {
        if o.errors.is_empty() {
            m.remember(generation, parts, scope, covered);
        } else {
            m.forget();
        }
    }
    for f in &o.foreign {
        o.warnings.push(format!(
            "a rule commented {TAG:?} that dockroute did not make is left alone: {f}"
        ));
    }
    o
}

#[cfg(not(target_os = "macos"))]
/// Whether nft is there to read (and is to be read: not `no_nft`); an error finding it.
fn nft_present(no_nft: bool, o: &mut Observed) -> (bool, Option<FirewallError>) {
    match exec::find("nft") {
        Ok(_) => (!no_nft, None),
        Err(ExecError::NotFound { .. }) => {
            o.warnings.push(not_found(
                "nft",
                "nftables tables (Mullvad, NordVPN, firewalld) were",
            ));
            (false, None)
        }
        Err(e) => (false, Some(FirewallError::from(e))),
    }
}

#[cfg(not(target_os = "macos"))]
/// The debug line for a reading the memo gave back (nftables' generation `g` unchanged).
fn say_recalled(r: &memo::Recalled, g: u32, parts: memo::Parts) {
    let what: Vec<&str> = [
        (parts.iptables_nft, "iptables-nft's filter table"),
        (parts.nft, "the nftables tables"),
    ]
    .iter()
    .filter_map(|(read, what)| read.then_some(*what))
    .collect();
    let how = match r {
        memo::Recalled::Judged(_) => "reusing the firewall reading",
        memo::Recalled::Rules(_) => "judging the rules read for the new scope again",
    };
    tracing::debug!(
        "firewall: nftables generation {g} unchanged: {how} ({})",
        what.join(", ")
    );
}

#[cfg(not(target_os = "macos"))]
/// The nftables tables (`kept` from the memo, else read now) judged for `scope`, and the rules
/// judged from.
fn judge_nft(
    tables: &nft::Tables,
    kept: Option<nft::Ruleset>,
    scope: Option<&Scope>,
) -> Result<(memo::Judged, nft::Ruleset), FirewallError> {
    let rs = match kept {
        Some(rs) => rs,
        None => nft::ruleset(tables)?,
    };
    let (desired, owned, foreign) = nft::observe(&rs, scope);
    let judged = memo::Judged {
        desired,
        owned: owned.into_iter().map(|r| (r, Vec::new())).collect(),
        foreign,
        warnings: rs.warnings.clone(),
    };
    Ok((judged, rs))
}

#[cfg(not(target_os = "macos"))]
/// What one iptables backend's filter table needs and holds.
fn judge_iptables(label: &str, chains: &[walk::Chain], scope: Option<&Scope>) -> memo::Judged {
    let plan = scope.map_or_else(walk::Plan::default, |scope| {
        iptables::plan(label, chains, scope)
    });
    memo::Judged {
        owned: iptables::owned(label, chains, &plan.misplaced),
        desired: plan.repairs,
        foreign: iptables::foreign(label, chains),
        warnings: Vec::new(),
    }
}

impl Observed {
    #[cfg(not(target_os = "macos"))]
    /// One firewall's part, when it was read.
    fn add(&mut self, judged: Option<&memo::Judged>) {
        let Some(j) = judged else { return };
        self.desired.extend(j.desired.iter().cloned());
        self.owned.extend(j.owned.iter().cloned());
        self.foreign.extend(j.foreign.iter().cloned());
        self.warnings.extend(j.warnings.iter().cloned());
    }
}

/// A network as pfctl and ipfw list it: `NET/LEN`, or a bare address for a host (a /32).
fn listed_net(text: &str) -> Option<Ipv4Net> {
    text.parse()
        .or_else(|_| text.parse::<std::net::Ipv4Addr>().map(Ipv4Net::from))
        .ok()
}

pub(crate) fn same(a: &Repair, b: &Repair) -> bool {
    a.backend == b.backend
        && a.table == b.table
        && a.chain == b.chain
        && a.direction == b.direction
        && a.net == b.net
        && a.ifname == b.ifname
        && a.verdict == b.verdict
        // an ipfw rule is its number: the same rule at another number is another rule
        && (a.backend != ipfw::BACKEND || a.handle == b.handle)
}

/// Delete what is owned but not desired (and duplicates), insert what is desired but missing.
/// A misplaced rule ([`Repair::misplaced`]) counts as missing; it is deleted, unless a rule that
/// is kept has the same words: iptables deletes the first rule with the given words, which
/// would be that one.
pub fn diff(desired: &[Repair], owned: &[(Repair, Vec<String>)]) -> Vec<FwChange> {
    let mut matched = vec![false; desired.len()];
    let mut kept = vec![false; owned.len()];
    for ((rule, _), kept) in owned.iter().zip(&mut kept) {
        if rule.misplaced {
            continue;
        }
        if let Some(i) = (0..desired.len()).find(|&i| !matched[i] && same(&desired[i], rule)) {
            matched[i] = true;
            *kept = true;
        }
    }
    let mut changes = Vec::new();
    for ((rule, words), _) in owned.iter().zip(&kept).filter(|(_, k)| !**k) {
        let shadows_a_kept_rule = rule.misplaced
            && !words.is_empty()
            && owned.iter().zip(&kept).any(|((_, w), k)| *k && w == words);
        if !shadows_a_kept_rule {
            changes.push(FwChange::Delete {
                rule: rule.clone(),
                words: words.clone(),
            });
        }
    }
    changes.extend(
        desired
            .iter()
            .zip(&matched)
            .filter(|(_, m)| !**m)
            .map(|(rule, _)| FwChange::Insert { rule: rule.clone() }),
    );
    changes
}

/// A pf or ipfw change: applied on macOS only (a record written on a Mac, read elsewhere, names
/// rules no firewall here holds).
#[cfg(target_os = "macos")]
fn macos_apply(c: &FwChange, backend: &str) -> Result<(), FirewallError> {
    if backend == pf::BACKEND {
        pf::run::apply(c)
    } else {
        ipfw::run::apply(c)
    }
}

#[cfg(not(target_os = "macos"))]
fn macos_apply(_c: &FwChange, backend: &str) -> Result<(), FirewallError> {
    Err(FirewallError::Parse {
        program: backend.into(),
        msg: format!("{backend} rules are only applied on macOS"),
    })
}

fn apply_one(c: &FwChange) -> Result<(), FirewallError> {
    match c {
        FwChange::Insert { rule } | FwChange::Delete { rule, .. }
            if rule.backend == pf::BACKEND || rule.backend == ipfw::BACKEND =>
        {
            macos_apply(c, &rule.backend)
        }
        FwChange::Insert { rule } if rule.backend == nft::BACKEND => {
            nft::run(vec![nft::insert_cmd(rule)])
        }
        FwChange::Insert { rule } => run(&rule.backend, &iptables::insert_args(rule)).map(|_| ()),
        FwChange::Delete { rule, .. } if rule.backend == nft::BACKEND => {
            if !nft::delete_checked(rule)? {
                tracing::info!("already gone (or no longer dockroute's): {rule}");
            }
            Ok(())
        }
        FwChange::Delete { rule, words } => {
            // `-D` with the exact words deletes only a rule of exactly that specification
            match run(&rule.backend, &iptables::delete_args(&rule.table, words)) {
                // gone already (the vendor flushed its chain): the goal is reached
                Err(FirewallError::Exec(e))
                    if e.failure_text().is_some_and(|t| {
                        t.contains("does a matching rule exist")
                            || t.contains("No chain/target/match")
                    }) =>
                {
                    Ok(())
                }
                r => r.map(|_| ()),
            }
        }
    }
}

/// The nftables rule `c` inserts, if it is an nftables insert.
fn nft_insert(c: &FwChange) -> Option<&Repair> {
    match c {
        FwChange::Insert { rule } if rule.backend == nft::BACKEND => Some(rule),
        _ => None,
    }
}

/// Apply `changes` in order; on a failure, undo the ones made and return the error. Consecutive
/// nftables inserts go in one transaction (one `nft` process, all or none).
pub fn apply(changes: &[FwChange]) -> Result<(), FirewallError> {
    let mut i = 0;
    while i < changes.len() {
        let inserts: Vec<&Repair> = changes[i..].iter().map_while(nft_insert).collect();
        let n = inserts.len().max(1);
        for c in &changes[i..i + n] {
            tracing::info!("{c}");
        }
        let result = if inserts.len() > 1 {
            nft::run(inserts.into_iter().map(nft::insert_cmd).collect())
        } else {
            apply_one(&changes[i])
        };
        if let Err(e) = result {
            undo(&changes[..i]);
            return Err(e);
        }
        i += n;
    }
    Ok(())
}

/// Apply every change, going on past failures (for `down`); returns the failures.
pub fn apply_all(changes: &[FwChange]) -> Vec<FirewallError> {
    changes
        .iter()
        .filter_map(|c| {
            tracing::info!("{c}");
            apply_one(c).err()
        })
        .collect()
}

/// Undo applied `changes`, last first, as far as possible (failures are logged).
pub fn undo(changes: &[FwChange]) {
    for done in changes.iter().rev() {
        let inverse = match done {
            FwChange::Insert { rule } if rule.backend == nft::BACKEND => {
                // nftables deletes by handle: find the rule just inserted
                let found = observe_only(None, &Reading::Everything)
                    .owned
                    .into_iter()
                    .map(|(r, _)| r)
                    .find(|r| same(r, rule));
                match found {
                    Some(rule) => FwChange::Delete {
                        rule,
                        words: Vec::new(),
                    },
                    None => continue,
                }
            }
            FwChange::Insert { rule } if rule.backend == ipfw::BACKEND => FwChange::Delete {
                rule: rule.clone(),
                words: Vec::new(),
            },
            FwChange::Insert { rule } => FwChange::Delete {
                rule: rule.clone(),
                words: iptables::rule_words(rule),
            },
            FwChange::Delete { rule, .. } => FwChange::Insert { rule: rule.clone() },
        };
        if let Err(e) = apply_one(&inverse) {
            tracing::warn!("could not undo {done}: {e}");
        }
    }
}

/// What `down` removes: every rule of dockroute's tag and shape, in every backend that could be
/// read (ipfw: the numbers `held` records); with what could not be read.
pub fn removals(held: &Held) -> (Vec<FwChange>, Observed) {
    let mut seen = observe_held(None, &Reading::Everything, held, None);
    let changes = diff(&[], &std::mem::take(&mut seen.owned));
    (changes, seen)
}

/// What dockroute holds once `up` applied its changes: the ipfw rules it wants (their
/// numbers), and a pf enable reference as [`pf::reference_step`] says (`pfctl -E` when pf is
/// on and none is held; a failure to take one is a warning: the anchor is loaded regardless).
/// `previous`: what the record held before.
pub fn hold(
    previous: &Held,
    seen_pf_enabled: Option<bool>,
    desired: &[Repair],
) -> (Held, Vec<String>) {
    let mut warnings = Vec::new();
    let mut ipfw_rules: Vec<u32> = desired
        .iter()
        .filter(|r| r.backend == ipfw::BACKEND)
        .filter_map(ipfw::number)
        .collect();
    ipfw_rules.sort_unstable();
    ipfw_rules.dedup();
    let pf_token = match pf::reference_step(seen_pf_enabled, previous.pf_token) {
        pf::ReferenceStep::Keep => previous.pf_token,
        pf::ReferenceStep::Forget => {
            if let Some(t) = previous.pf_token {
                tracing::debug!("pf is disabled: enable reference {t} lapsed with it");
            }
            None
        }
        pf::ReferenceStep::Take => match take_pf_reference() {
            Ok(t) => {
                tracing::info!("pf: took an enable reference (token {t}) while pf is on");
                Some(t)
            }
            Err(e) => {
                warnings.push(format!("pf: could not take an enable reference: {e}"));
                None
            }
        },
    };
    (
        Held {
            pf_token,
            ipfw_rules,
        },
        warnings,
    )
}

#[cfg(target_os = "macos")]
fn take_pf_reference() -> Result<u64, FirewallError> {
    pf::run::take_reference()
}

#[cfg(not(target_os = "macos"))]
fn take_pf_reference() -> Result<u64, FirewallError> {
    Err(FirewallError::Parse {
        program: "pfctl".into(),
        msg: "pf is only used on macOS".into(),
    })
}

/// `down`: release the pf enable reference `held` records (`pfctl -X TOKEN`). A token pf no
/// longer knows (pf was stopped since) counts as released. The ipfw rules go with
/// [`removals`].
pub fn release(held: &Held) -> Result<(), FirewallError> {
    let Some(token) = held.pf_token else {
        return Ok(());
    };
    if release_pf_reference(token)? {
        tracing::info!("- pf enable reference (token {token})");
    } else {
        tracing::debug!(
            "pf enable reference {token}: pf no longer knows it (pf was stopped since); released"
        );
    }
    Ok(())
}

/// Undo [`hold`]'s new reference when `up` is rolled back: release `now`'s token if `before`
/// did not hold it.
pub fn release_new(now: &Held, before: &Held) {
    if now.pf_token.is_some() && now.pf_token != before.pf_token {
        let new = Held {
            pf_token: now.pf_token,
            ipfw_rules: Vec::new(),
        };
        if let Err(e) = release(&new) {
            tracing::warn!("could not release the pf enable reference just taken: {e}");
        }
    }
}

#[cfg(target_os = "macos")]
fn release_pf_reference(token: u64) -> Result<bool, FirewallError> {
    pf::run::release_reference(token)
}

#[cfg(not(target_os = "macos"))]
fn release_pf_reference(token: u64) -> Result<bool, FirewallError> {
    // a record written on a Mac, read here: there is no pf to release it in
    tracing::debug!("pf enable reference {token} recorded, but pf exists only on macOS");
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repair(chain: &str, net: &str) -> Repair {
        Repair {
            backend: "iptables".into(),
            table: "filter".into(),
            chain: chain.into(),
            direction: Direction::Out,
            net: net.parse().unwrap(),
            ifname: "vboxnet0".into(),
            verdict: "RETURN".into(),
            handle: None,
            table_handle: None,
            misplaced: false,
        }
    }

    #[test]
    fn up_records_its_ipfw_numbers_and_never_takes_a_reference_while_pf_is_off() {
        let net: Ipv4Net = "172.17.0.0/16".parse().unwrap();
        let desired = vec![
            ipfw::repair(999, Direction::Out, net, "vboxnet0"),
            ipfw::repair(998, Direction::In, net, "vboxnet0"),
            repair("OUTPUT", "172.17.0.0/16"),
        ];
        let before = Held {
            pf_token: Some(7),
            ipfw_rules: vec![500],
        };
        // pf off: the recorded token lapsed with it, and no new one is taken
        let (held, warnings) = hold(&before, Some(false), &desired);
        assert_eq!(
            held,
            Held {
                pf_token: None,
                ipfw_rules: vec![998, 999]
            }
        );
        assert!(warnings.is_empty());
        // pf on with a reference held, or unreadable: the token stays
        assert_eq!(hold(&before, Some(true), &[]).0.pf_token, Some(7));
        assert_eq!(hold(&before, None, &[]).0.pf_token, Some(7));
        assert_eq!(hold(&Held::default(), None, &[]).0.nonempty(), None);
        // pf on and nothing held takes one (`pfctl -E`, macOS only: here it cannot, and says so)
        #[cfg(not(target_os = "macos"))]
        {
            let (held, warnings) = hold(&Held::default(), Some(true), &[]);
            assert_eq!(held.pf_token, None);
            assert!(warnings[0].contains("could not take an enable reference"));
        }
    }

    #[test]
    fn diff_inserts_missing_and_deletes_stale_and_duplicate_rules() {
        let want = vec![
            repair("ciscovpn", "172.17.0.0/16"),
            repair("ciscovpn", "192.168.99.0/24"),
        ];
        let have = vec![
            (repair("ciscovpn", "172.17.0.0/16"), vec!["a".into()]),
            (repair("ciscovpn", "172.17.0.0/16"), vec!["dup".into()]),
            (repair("OUTPUT", "172.17.0.0/16"), vec!["stale".into()]),
        ];
        let c = diff(&want, &have);
        let lines: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            [
                "- firewall iptables -t filter ciscovpn -o vboxnet0 -d 172.17.0.0/16 -j RETURN (comment dockroute)",
                "- firewall iptables -t filter OUTPUT -o vboxnet0 -d 172.17.0.0/16 -j RETURN (comment dockroute)",
                "+ firewall iptables -t filter ciscovpn -o vboxnet0 -d 192.168.99.0/24 -j RETURN (comment dockroute)",
            ]
        );
        assert!(diff(&want, &have[..1]).len() == 1);
        assert!(diff(&[], &[]).is_empty());
    }
}
