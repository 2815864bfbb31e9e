//! Firewall repair: find what drops traffic between the host and the VM (the host-only network
//! and the container subnets, on the host-only link) and insert narrowly scoped rules at the top
//! of the chain that drops, in the same backend, tagged with the comment `dockroute`. Never
//! delete, flush or reorder anyone else's rules.
//!
//! Backends: iptables with the nf_tables backend and iptables-legacy (a rule in one does not
//! override a drop in the other), and native nftables tables. The legacy backend is consulted
//! only when its filter table exists already: merely listing it would create it.

pub mod iptables;
pub mod nft;
pub mod walk;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::process::Command;

/// The comment that marks dockroute's firewall rules.
pub const TAG: &str = "dockroute";

/// The traffic to let through: to and from `nets` over `ifname`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub ifname: String,
    pub nets: Vec<Ipv4Net>,
}

impl Scope {
    /// Everything between the host and the target's VM.
    pub fn for_target(t: &crate::discover::Target) -> Scope {
        Scope {
            ifname: t.ifname.clone(),
            nets: t.networks(),
        }
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

/// One rule dockroute inserts (or found carrying its tag).
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
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (i, n) = match self.direction {
            Direction::Out => ("-o", "-d"),
            Direction::In => ("-i", "-s"),
        };
        write!(
            f,
            "{} -t {} {} {i} {} {n} {} -j {} (comment {TAG})",
            self.backend, self.table, self.chain, self.ifname, self.net, self.verdict
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
    #[error("{program} {}: {msg}", .args.join(" "))]
    Run {
        program: String,
        args: Vec<String>,
        msg: String,
    },
}

fn run(program: &str, args: &[String]) -> Result<String, FirewallError> {
    let err = |msg: String| FirewallError::Run {
        program: program.to_string(),
        args: args.to_vec(),
        msg,
    };
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " ")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where `program` is on PATH.
fn find_program(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

fn has_program(program: &str) -> bool {
    find_program(program).is_some()
}

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

/// The iptables backends in use here: (label = program, its filter table).
fn iptables_backends() -> Result<Vec<(String, Vec<walk::Chain>)>, FirewallError> {
    let mut out = Vec::new();
    let list = |program: &str| -> Result<Vec<walk::Chain>, FirewallError> {
        let args: Vec<String> = ["-w", "-t", "filter", "-S"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Ok(iptables::parse(&run(program, &args)?))
    };
    let mut main_is_legacy = false;
    if let Some(path) = find_program("iptables") {
        main_is_legacy = iptables_is_legacy(&path)?;
        if !main_is_legacy || legacy_filter_exists() {
            out.push(("iptables".to_string(), list("iptables")?));
        }
    }
    if !main_is_legacy && has_program("iptables-legacy") && legacy_filter_exists() {
        out.push(("iptables-legacy".to_string(), list("iptables-legacy")?));
    }
    Ok(out)
}

/// Whether the legacy (x_tables) filter table exists in this network namespace.
fn legacy_filter_exists() -> bool {
    std::fs::read_to_string("/proc/net/ip_tables_names")
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "filter"))
}

/// What the firewalls need (for `scope`; nothing when `None`) and what dockroute has there now.
#[derive(Debug, Default)]
pub struct Observed {
    pub desired: Vec<Repair>,
    pub owned: Vec<(Repair, Vec<String>)>,
}

pub fn observe(scope: Option<&Scope>) -> Result<Observed, FirewallError> {
    let mut o = Observed::default();
    for (label, chains) in iptables_backends()? {
        if let Some(scope) = scope {
            o.desired.extend(iptables::plan(&label, &chains, scope));
        }
        o.owned.extend(iptables::owned(&label, &chains));
    }
    if has_program("nft") {
        let (desired, owned) = nft::observe(&nft::ruleset()?, scope);
        o.desired.extend(desired);
        o.owned.extend(owned.into_iter().map(|r| (r, Vec::new())));
    }
    Ok(o)
}

fn same(a: &Repair, b: &Repair) -> bool {
    a.backend == b.backend
        && a.table == b.table
        && a.chain == b.chain
        && a.direction == b.direction
        && a.net == b.net
        && a.ifname == b.ifname
        && a.verdict == b.verdict
}

/// Delete what is owned but not desired (and duplicates), insert what is desired but missing.
pub fn diff(desired: &[Repair], owned: &[(Repair, Vec<String>)]) -> Vec<FwChange> {
    let mut matched = vec![false; desired.len()];
    let mut changes = Vec::new();
    for (rule, words) in owned {
        match (0..desired.len()).find(|&i| !matched[i] && same(&desired[i], rule)) {
            Some(i) => matched[i] = true,
            None => changes.push(FwChange::Delete {
                rule: rule.clone(),
                words: words.clone(),
            }),
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

fn apply_one(c: &FwChange) -> Result<(), FirewallError> {
    match c {
        FwChange::Insert { rule } if rule.backend == nft::BACKEND => {
            nft::run(nft::insert_cmd(rule))
        }
        FwChange::Insert { rule } => run(&rule.backend, &iptables::insert_args(rule)).map(|_| ()),
        FwChange::Delete { rule, .. } if rule.backend == nft::BACKEND => {
            match nft::run(nft::delete_cmd(rule)) {
                // gone already (the VPN re-created its table): the goal is reached
                Err(FirewallError::Run { msg, .. })
                    if msg.contains("No such file or directory") =>
                {
                    Ok(())
                }
                r => r,
            }
        }
        FwChange::Delete { rule, words } => {
            match run(&rule.backend, &iptables::delete_args(&rule.table, words)) {
                // gone already (the vendor flushed its chain): the goal is reached
                Err(FirewallError::Run { msg, .. })
                    if msg.contains("does a matching rule exist")
                        || msg.contains("No chain/target/match") =>
                {
                    Ok(())
                }
                r => r.map(|_| ()),
            }
        }
    }
}

/// Apply `changes` in order; on a failure, undo the ones made and return the error.
pub fn apply(changes: &[FwChange]) -> Result<(), FirewallError> {
    for (i, c) in changes.iter().enumerate() {
        tracing::info!("{c}");
        if let Err(e) = apply_one(c) {
            undo(&changes[..i]);
            return Err(e);
        }
    }
    Ok(())
}

/// Undo applied `changes`, last first, as far as possible (failures are logged).
pub fn undo(changes: &[FwChange]) {
    for done in changes.iter().rev() {
        let inverse = match done {
            FwChange::Insert { rule } if rule.backend == nft::BACKEND => {
                // nftables deletes by handle: find the rule just inserted by its tag
                let found = observe(None)
                    .ok()
                    .and_then(|o| o.owned.into_iter().map(|(r, _)| r).find(|r| same(r, rule)));
                match found {
                    Some(rule) => FwChange::Delete {
                        rule,
                        words: Vec::new(),
                    },
                    None => continue,
                }
            }
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

/// The changes that remove every rule carrying dockroute's tag, in every backend.
pub fn removals() -> Result<Vec<FwChange>, FirewallError> {
    Ok(diff(&[], &observe(None)?.owned))
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
