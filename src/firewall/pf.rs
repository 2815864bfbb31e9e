//! pf (macOS): an anchor of dockroute's own, `com.apple/250.dockroute`, holding `pass quick`
//! rules for the VM's link and networks in both directions.
//!
//! Why this anchor: the stock `/etc/pf.conf` evaluates `anchor "com.apple/*"`, which runs every
//! child of `com.apple` in byte-wise order of the name (`250.dockroute` comes after
//! `250.ApplicationFirewall`, before `300.NetworkLinkConditioner`). A `quick` rule that matches
//! there ends the evaluation, so the pass wins over a VPN's block that comes later. The rules
//! also carry `tag cisco_anyconnect_vpn_pass`: Cisco AnyConnect's pf rule is
//! `block log quick inet all ! tagged cisco_anyconnect_vpn_pass`. pf sets a tag only when it
//! evaluates the rule that carries it (the tag of the last matching rule; a `quick` match ends
//! the evaluation), so the tag lets a packet past that block only when dockroute's anchor is
//! evaluated before the block rule, or the packet belongs to a state that one of dockroute's
//! rules created (a state keeps its rule's tag). A block rule that pf evaluates earlier (in the
//! main ruleset before `anchor "com.apple/*"`, or in an anchor sorted before `250.dockroute`)
//! stops the first packet of a connection whatever dockroute's rules say.
//!
//! What dockroute does with pf: loads this one anchor with `pfctl -a ANCHOR -f -` (the main
//! ruleset and every other anchor are never flushed or reloaded), and on `down` flushes the
//! anchor's rules (`pfctl -a ANCHOR -F rules`). Anchors live in kernel memory only: after a
//! reboot `up` (or `watch`) loads it again.
//!
//! pf's enable switch: dockroute never turns pf on and never turns it off (no `pfctl -e`, no
//! `pfctl -d`). It follows the convention Apple's /etc/pf.conf states (each component that uses
//! pf holds an enable reference, and pf goes off when the last one lets go), but only ever to
//! keep pf on, never to turn it on:
//! - `up` (and every reconcile of `watch`) reads `pfctl -s info`. When pf is enabled (by someone
//!   else: a VPN, the application firewall) and the record holds no token of dockroute's, it
//!   takes a reference (`pfctl -E`; pf is on already, so only the count changes) and records the
//!   token pfctl prints. When pf is disabled it takes none and forgets a recorded token:
//!   `pfctl -d` (DIOCSTOP) zeroes the count and invalidates every token.
//! - `down` (and `watch --down-on-exit`) releases the recorded token (`pfctl -X TOKEN`). A token
//!   pf no longer knows (pf was stopped meanwhile) counts as released.
//!
//! Why it is harmless: pf is on when the reference is taken, and dockroute's anchor only passes
//! traffic. The one effect is that pf stays on after the VPN lets go of its own reference, until
//! `down`: a VPN that removes its rules when it disconnects (as pf.conf's convention asks)
//! leaves nothing for pf to block but what others load; one that leaves its block rules in the
//! main ruleset keeps them in force until `down`. The token is in the record, so a `watch`
//! killed before `down` leaks nothing past the next `down`. Left open: between `pfctl -s info`
//! and `pfctl -E` (milliseconds) a `pfctl -d` by someone else would be undone by the `-E`.
//!
//! The only argument vectors dockroute gives pfctl are in [`args`], each scoped to its anchor,
//! read-only, or the reference's `-E`/`-X TOKEN` (a test holds that).
//!
//! Rendering and reading `pfctl -vsr` listings is pure and tested everywhere; running pfctl
//! (found as /sbin/pfctl, run by absolute path with an empty environment) is in [`run`], macOS
//! only.

use super::{Direction, Foreign, Repair, Scope};
use ipnet::Ipv4Net;
use serde::Serialize;
use std::fmt::Write;

/// dockroute's anchor, under the `com.apple/*` anchor point of the stock pf.conf.
pub const ANCHOR: &str = "com.apple/250.dockroute";
/// The backend name in [`Repair::backend`].
pub const BACKEND: &str = "pf";
/// The tag that Cisco AnyConnect's block rule lets through.
pub const VPN_TAG: &str = "cisco_anyconnect_vpn_pass";
/// [`Repair::verdict`] of dockroute's pf rules.
pub const VERDICT: &str = "pass quick";

/// What `status` says when pf is off.
pub const DISABLED_NOTE: &str = "pf is disabled, so no pf rule blocks the VM; dockroute leaves it off (taking no enable reference) and keeps its anchor loaded for when a VPN enables pf";

/// VPN clients that filter traffic in a system extension (a Network Extension content filter or
/// transparent proxy) rather than only in pf: an app bundle or install directory whose presence
/// says so, and the client's name.
pub const SYSTEM_EXTENSION_VPNS: &[(&str, &str)] = &[
    (
        "/Applications/Cisco/Cisco Secure Client.app",
        "Cisco Secure Client 5",
    ),
    ("/opt/cisco/secureclient", "Cisco Secure Client 5"),
    ("/Applications/GlobalProtect.app", "Palo Alto GlobalProtect"),
];

/// What `status` explains for each client found (by name, once): pf rules cannot override it,
/// and what to ask the VPN's administrator for.
pub fn system_extension_notes(found: &[&str]) -> Vec<String> {
    let mut names: Vec<&str> = Vec::new();
    for (path, name) in SYSTEM_EXTENSION_VPNS {
        if found.contains(path) && !names.contains(name) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .map(|n| {
            format!(
                "{n} is installed: it can filter traffic in a system extension, which pf rules (dockroute's anchor included) cannot override; if the VM stays unreachable while it is connected, ask the VPN administrator for local LAN access or a split-tunnel exclude of the VM's networks"
            )
        })
        .collect()
}

/// The rules for `scope`: to each network out of the link, from each network in on the link.
pub fn desired(scope: &Scope) -> Vec<Repair> {
    let mut out = Vec::new();
    for net in &scope.nets {
        for direction in [Direction::Out, Direction::In] {
            out.push(repair(direction, *net, &scope.ifname));
        }
    }
    out
}

fn repair(direction: Direction, net: Ipv4Net, ifname: &str) -> Repair {
    Repair {
        backend: BACKEND.into(),
        table: ANCHOR.into(),
        chain: String::new(),
        direction,
        net,
        ifname: ifname.into(),
        verdict: VERDICT.into(),
        handle: None,
        table_handle: None,
        misplaced: false,
    }
}

/// One rule in pf.conf syntax.
pub fn rule_text(r: &Repair) -> Result<String, String> {
    crate::validate::interface(&r.ifname)?;
    let (dir, from, to) = match r.direction {
        Direction::Out => ("out", "any".to_string(), r.net.to_string()),
        Direction::In => ("in", r.net.to_string(), "any".to_string()),
    };
    Ok(format!(
        "pass {dir} quick on {} inet from {from} to {to} flags any keep state tag {VPN_TAG}",
        r.ifname
    ))
}

/// The anchor's whole text, as `pfctl -a ANCHOR -f -` reads it.
pub fn render(rules: &[Repair]) -> Result<String, String> {
    let mut s = String::from(
        "# dockroute: traffic between this Mac and its VM (dockroute up loads this anchor, dockroute down empties it)\n",
    );
    for r in rules {
        let _ = writeln!(s, "{}", rule_text(r)?);
    }
    Ok(s)
}

/// A rule of the anchor with pf's counters for it (`pfctl -vsr`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub rule: String,
    pub evaluations: u64,
    pub packets: u64,
    pub bytes: u64,
    pub states: u64,
}

/// Read `pfctl -a ANCHOR -vsr` (or `-sr`): each rule line, with the counters of the bracketed
/// line that follows it. `@N` rule numbers (`-vvsr`) are dropped.
pub fn parse_listing(text: &str) -> Vec<Listed> {
    let mut out: Vec<Listed> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with("No ALTQ") || t.starts_with("ALTQ") {
            continue;
        }
        if let Some(inner) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            if let Some(last) = out.last_mut() {
                let words: Vec<&str> = inner.split_whitespace().collect();
                for pair in words.windows(2) {
                    let n = pair[1].parse().unwrap_or(0);
                    match pair[0] {
                        "Evaluations:" => last.evaluations = n,
                        "Packets:" => last.packets = n,
                        "Bytes:" => last.bytes = n,
                        "States:" => last.states = n,
                        _ => {}
                    }
                }
            }
            continue;
        }
        let rule = match t.strip_prefix('@') {
            Some(rest) => rest
                .split_once(char::is_whitespace)
                .map_or("", |(_, r)| r.trim_start()),
            None => t,
        };
        out.push(Listed {
            rule: rule.to_string(),
            ..Default::default()
        });
    }
    out
}

/// The rule as dockroute's, when it has its shape: `pass in|out quick on IF inet`, from a
/// network to any (in) or from any to a network (out), tagged for the VPN.
pub fn owned_rule(rule: &str) -> Option<Repair> {
    let w: Vec<&str> = rule.split_whitespace().collect();
    let after = |key: &str| {
        w.iter()
            .position(|x| *x == key)
            .and_then(|i| w.get(i + 1).copied())
    };
    if w.first() != Some(&"pass") || !w.contains(&"quick") || !w.contains(&"inet") {
        return None;
    }
    if after("tag") != Some(VPN_TAG) {
        return None;
    }
    let ifname = after("on")?;
    let (from, to) = (after("from")?, after("to")?);
    let (direction, net) = match (w.get(1).copied()?, from, to) {
        ("out", "any", net) => (Direction::Out, net),
        ("in", net, "any") => (Direction::In, net),
        _ => return None,
    };
    let net = super::listed_net(net)?;
    crate::validate::interface(ifname).ok()?;
    Some(repair(direction, net, ifname))
}

/// Split the anchor's listing into dockroute's rules and others (someone put them there).
pub fn observe_listing(text: &str) -> (Vec<Repair>, Vec<Foreign>) {
    let mut owned = Vec::new();
    let mut foreign = Vec::new();
    for l in parse_listing(text) {
        match owned_rule(&l.rule) {
            Some(r) => owned.push(r),
            None => foreign.push(Foreign {
                backend: BACKEND.into(),
                table: ANCHOR.into(),
                chain: String::new(),
                rule: l.rule,
            }),
        }
    }
    (owned, foreign)
}

/// Whether pf is enabled, from `pfctl -s info` (`Status: Enabled for 0 days 00:10:02`).
pub fn enabled(info: &str) -> Option<bool> {
    info.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Status:")?.trim_start();
        if rest.starts_with("Enabled") {
            Some(true)
        } else if rest.starts_with("Disabled") {
            Some(false)
        } else {
            None
        }
    })
}

/// The anchor's rules after applying one change to `current` (pf loads an anchor whole). A
/// delete removes one rule (the last that is the same).
pub fn after_change(current: &[Repair], change: &super::FwChange) -> Vec<Repair> {
    let mut rules: Vec<Repair> = current.to_vec();
    match change {
        super::FwChange::Insert { rule } => {
            if !rules.iter().any(|r| super::same(r, rule)) {
                rules.push(rule.clone());
            }
        }
        // one rule: a delete of a duplicate must leave the copy `diff` matched
        super::FwChange::Delete { rule, .. } => {
            if let Some(i) = rules.iter().rposition(|r| super::same(r, rule)) {
                rules.remove(i);
            }
        }
    }
    rules
}

/// Every argument vector dockroute runs `/sbin/pfctl` with: reads, loads or flushes of its
/// own anchor, and taking and releasing its enable reference. Nothing here switches pf on or
/// off (`-e`, `-d`) or loads the main ruleset.
pub mod args {
    use super::ANCHOR;

    /// The anchor's rules with their counters.
    pub const LISTING: [&str; 3] = ["-a", ANCHOR, "-vsr"];
    /// Whether pf is enabled (`Status: Enabled ...`).
    pub const INFO: [&str; 2] = ["-s", "info"];
    /// Empty the anchor (`down`, or no rules left).
    pub const FLUSH: [&str; 4] = ["-a", ANCHOR, "-F", "rules"];
    /// Replace the anchor's rules with those read from standard input.
    pub const LOAD: [&str; 4] = ["-a", ANCHOR, "-f", "-"];
    /// Take an enable reference (only ever run while pf is enabled); prints `Token : N`.
    pub const TAKE_REFERENCE: [&str; 1] = ["-E"];

    pub const ALL: [&[&str]; 5] = [&LISTING, &INFO, &FLUSH, &LOAD, &TAKE_REFERENCE];

    /// Release the enable reference `token` (`-X TOKEN`).
    pub fn release(token: u64) -> [String; 2] {
        ["-X".to_string(), token.to_string()]
    }
}

/// The token `pfctl -E` printed (`Token : 1234567890`, on stderr; both streams are read). `None`
/// when there is no such line, or more than one different token.
pub fn parse_token(stdout: &str, stderr: &str) -> Option<u64> {
    let mut found: Option<u64> = None;
    for line in stdout.lines().chain(stderr.lines()) {
        let Some(rest) = line.trim().strip_prefix("Token") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let token: u64 = value.parse().ok()?;
        match found {
            Some(t) if t != token => return None,
            _ => found = Some(token),
        }
    }
    // a zero token is what DIOCSTARTREF returns when it failed to take one
    found.filter(|t| *t != 0)
}

/// Whether `pfctl -X TOKEN` failed because pf does not know the token, so that nothing is held:
/// DIOCSTOPREF's EINVAL ("token mismatch": pf restarted since, or rebooted), and its ENOENT,
/// which xnu's `pfioctl` returns before looking at the token at all when pf is not running (a
/// `pfctl -d` by anyone stopped pf and invalidated every token). pfctl prints the ioctl's name
/// with strerror (`DIOCSTOPREF: No such file or directory`), or "pf not enabled" as its `-d`
/// does for the same errno.
pub fn token_unknown(failure: &str) -> bool {
    let f = failure.to_ascii_lowercase();
    (f.contains("diocstopref")
        && (f.contains("invalid argument") || f.contains("no such file or directory")))
        || f.contains("token mismatch")
        || f.contains("token not found")
        // pfctl's own words for ENOENT from DIOCSTOP (`pfctl -d`), should its -X say the same
        || f.contains("pf not enabled")
}

/// What `up` does about dockroute's enable reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReferenceStep {
    /// The record's token (or none) stays: pf is on and dockroute holds a reference already,
    /// or whether pf is on could not be read.
    Keep,
    /// pf is on (someone else turned it on) and dockroute holds no reference: `pfctl -E`.
    Take,
    /// pf is off: take nothing, and forget a recorded token (stopping pf invalidated it).
    Forget,
}

/// The step for pf's state (`enabled`, from `pfctl -s info`) and the recorded token.
pub fn reference_step(enabled: Option<bool>, recorded: Option<u64>) -> ReferenceStep {
    match (enabled, recorded) {
        (Some(true), None) => ReferenceStep::Take,
        (Some(false), _) => ReferenceStep::Forget,
        (Some(true), Some(_)) | (None, _) => ReferenceStep::Keep,
    }
}

/// Whether dockroute holds a pf enable reference (`status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reference {
    pub held: bool,
    /// The recorded token (also when it lapsed: pf is off now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
}

/// What `status` reports, from the recorded token and whether pf is on now: on macOS always
/// (held or not); elsewhere only a recorded token. A token recorded while pf is off now is not
/// held (stopping pf invalidated it).
pub fn reference(macos: bool, token: Option<u64>, enabled: Option<bool>) -> Option<Reference> {
    (macos || token.is_some()).then_some(Reference {
        held: token.is_some() && enabled != Some(false),
        token,
    })
}

/// What `status` says about dockroute's enable reference.
pub fn reference_text(r: &Reference) -> String {
    match (r.held, r.token) {
        (true, Some(t)) => format!(
            "dockroute holds a pf enable reference (token {t}), taken while pf was on; `dockroute down` releases it"
        ),
        (false, Some(t)) => format!(
            "dockroute's recorded pf enable reference (token {t}) lapsed when pf was disabled; the next `dockroute up` forgets it"
        ),
        _ => "dockroute holds no pf enable reference".to_string(),
    }
}

#[cfg(target_os = "macos")]
pub mod run {
    use super::*;
    use crate::firewall::{FirewallError, FwChange};

    fn pfctl(args: &[&str], input: Option<&[u8]>) -> Result<String, FirewallError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Ok(crate::exec::run("pfctl", &args, input)?)
    }

    /// The anchor's rules with counters (`pfctl -a ANCHOR -vsr`; needs root). An anchor that
    /// was never loaded (pfctl: `DIOCGETRULES: Invalid argument`) is empty.
    pub fn listing() -> Result<String, FirewallError> {
        match pfctl(&args::LISTING, None) {
            Err(FirewallError::Exec(e))
                if e.failure_text().is_some_and(|t| {
                    t.contains("DIOCGETRULES") || t.contains("does not exist")
                }) =>
            {
                Ok(String::new())
            }
            r => r,
        }
    }

    /// The paths of [`SYSTEM_EXTENSION_VPNS`] that exist here.
    pub fn vpn_apps_present() -> Vec<&'static str> {
        SYSTEM_EXTENSION_VPNS
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| std::path::Path::new(p).exists())
            .collect()
    }

    /// Whether pf is on (`pfctl -s info`).
    pub fn is_enabled() -> Result<Option<bool>, FirewallError> {
        Ok(enabled(&pfctl(&args::INFO, None)?))
    }

    /// Load `rules` as the anchor's whole content, or empty it when there are none.
    pub fn load(rules: &[Repair]) -> Result<(), FirewallError> {
        if rules.is_empty() {
            return pfctl(&args::FLUSH, None).map(|_| ());
        }
        let text = render(rules).map_err(|msg| FirewallError::Parse {
            program: "pfctl".into(),
            msg,
        })?;
        pfctl(&args::LOAD, Some(text.as_bytes())).map(|_| ())
    }

    /// Apply one change: read the anchor, change it, load it back.
    pub fn apply(change: &FwChange) -> Result<(), FirewallError> {
        let (owned, _) = observe_listing(&listing()?);
        load(&after_change(&owned, change))
    }

    /// `pfctl -E`: take an enable reference, and its token. Only called while pf is enabled.
    pub fn take_reference() -> Result<u64, FirewallError> {
        let argv: Vec<String> = args::TAKE_REFERENCE.iter().map(|s| s.to_string()).collect();
        let out = crate::exec::output("pfctl", &argv, None)?;
        if out.code != Some(0) {
            return Err(crate::exec::ExecError::Failed {
                program: "pfctl".into(),
                args: argv,
                code: out.code,
                msg: crate::exec::one_line(&out.stderr),
            }
            .into());
        }
        parse_token(&out.stdout, &out.stderr).ok_or_else(|| FirewallError::Parse {
            program: "pfctl".into(),
            msg: format!(
                "`pfctl -E` printed no token ({}); the reference it took is released when pf is next disabled",
                crate::exec::one_line(&format!("{}\n{}", out.stdout, out.stderr))
            ),
        })
    }

    /// `pfctl -X TOKEN`: release dockroute's enable reference. `Ok(false)`: pf did not know the
    /// token (stopped since): nothing was held any more.
    pub fn release_reference(token: u64) -> Result<bool, FirewallError> {
        match crate::exec::run("pfctl", &args::release(token), None) {
            Ok(_) => Ok(true),
            Err(e) if e.failure_text().is_some_and(token_unknown) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::test_scope as scope;
    use crate::firewall::{FwChange, diff};

    #[test]
    fn renders_the_anchor_both_directions_tagged() {
        let text = render(&desired(&scope())).unwrap();
        assert_eq!(
            text,
            "# dockroute: traffic between this Mac and its VM (dockroute up loads this anchor, dockroute down empties it)\n\
             pass out quick on vboxnet0 inet from any to 172.17.0.0/16 flags any keep state tag cisco_anyconnect_vpn_pass\n\
             pass in quick on vboxnet0 inet from 172.17.0.0/16 to any flags any keep state tag cisco_anyconnect_vpn_pass\n\
             pass out quick on vboxnet0 inet from any to 192.168.99.0/24 flags any keep state tag cisco_anyconnect_vpn_pass\n\
             pass in quick on vboxnet0 inet from 192.168.99.0/24 to any flags any keep state tag cisco_anyconnect_vpn_pass\n"
        );
        // an interface name that could smuggle pf syntax is refused
        let mut s = scope();
        s.ifname = "en0 all pass".into();
        assert!(render(&desired(&s)).is_err());
        assert!(
            ANCHOR > "com.apple/250.ApplicationFirewall"
                && ANCHOR < "com.apple/300.NetworkLinkConditioner"
        );
    }

    /// `pfctl -a com.apple/250.dockroute -vsr` as pfctl prints the loaded anchor, plus a rule
    /// somebody else put there.
    const LISTING: &str = "\
No ALTQ support in kernel
ALTQ related functions disabled
pass out quick on vboxnet0 inet from any to 172.17.0.0/16 flags any keep state tag cisco_anyconnect_vpn_pass
  [ Evaluations: 120       Packets: 14        Bytes: 1680        States: 1     ]
pass in quick on vboxnet0 inet from 172.17.0.0/16 to any flags any keep state tag cisco_anyconnect_vpn_pass
  [ Evaluations: 118       Packets: 0         Bytes: 0           States: 0     ]
@2 pass out quick on vboxnet0 inet from any to 192.168.99.100 flags any keep state tag cisco_anyconnect_vpn_pass
  [ Evaluations: 3         Packets: 3         Bytes: 180         States: 0     ]
block drop quick on vboxnet0 inet from any to 172.17.0.0/16
  [ Evaluations: 0         Packets: 0         Bytes: 0           States: 0     ]
";

    /// The anchor pf would load for a target on `ifname` with host address `host`.
    fn anchor_for(ifname: &str, host: &str) -> Result<String, String> {
        let t = crate::discover::Target {
            ifname: ifname.into(),
            ifindex: 21,
            host_addr: host.parse().unwrap(),
            vm_ip: "10.0.0.7".parse().unwrap(),
            vm_ip_source: crate::discover::VmIpSource::DockerHost,
            subnets: vec!["172.17.0.0/16".parse().unwrap()],
            vm_lladdr: None,
            others: vec![],
        };
        let scope = Scope::for_target(&t).map_err(|e| e.to_string())?;
        render(&desired(&scope))
    }

    #[test]
    fn no_pass_rules_for_a_wide_network_or_on_a_tunnel() {
        let ok = anchor_for("bridge100", "10.0.0.1/24").unwrap();
        assert!(ok.contains("pass out quick on bridge100 inet from any to 10.0.0.0/24"));
        assert_eq!(ok.lines().filter(|l| l.starts_with("pass ")).count(), 4);
        let e = anchor_for("bridge100", "10.0.0.1/8").unwrap_err();
        assert!(e.contains("no ACCEPT rules for 10.0.0.0/8"), "{e}");
        assert!(anchor_for("bridge100", "10.0.0.1/16").is_ok());
        for tunnel in ["utun3", "ppp0", "tun0", "wg0"] {
            let e = anchor_for(tunnel, "10.0.0.1/24").unwrap_err();
            assert!(e.contains("looks like a VPN tunnel"), "{tunnel}: {e}");
        }
    }

    #[test]
    fn reads_the_listing_with_counters_and_tells_ours_apart() {
        let l = parse_listing(LISTING);
        assert_eq!(l.len(), 4);
        assert_eq!(
            (l[0].evaluations, l[0].packets, l[0].bytes, l[0].states),
            (120, 14, 1680, 1)
        );
        assert!(l[2].rule.starts_with("pass out quick"), "{}", l[2].rule);
        let (owned, foreign) = observe_listing(LISTING);
        assert_eq!(owned.len(), 3);
        assert_eq!(owned[0], desired(&scope())[0]);
        assert_eq!(owned[1], desired(&scope())[1]);
        assert_eq!(owned[2].net.to_string(), "192.168.99.100/32");
        assert_eq!(foreign.len(), 1);
        assert!(foreign[0].rule.starts_with("block drop"));
        // what up changes: the /24 pair is missing, the /32 rule is stale
        let owned: Vec<(Repair, Vec<String>)> = owned.into_iter().map(|r| (r, vec![])).collect();
        let c = diff(&desired(&scope()), &owned);
        assert_eq!(c.len(), 3);
        assert!(matches!(&c[0], FwChange::Delete { rule, .. } if rule.net.prefix_len() == 32));
    }

    #[test]
    fn shapes_that_are_not_dockroutes() {
        for r in [
            "pass out on vboxnet0 inet from any to 172.17.0.0/16 tag cisco_anyconnect_vpn_pass",
            "pass out quick on vboxnet0 inet from any to 172.17.0.0/16",
            "pass out quick on vboxnet0 inet from 10.0.0.0/8 to 172.17.0.0/16 tag cisco_anyconnect_vpn_pass",
            "block out quick on vboxnet0 inet from any to 172.17.0.0/16 tag cisco_anyconnect_vpn_pass",
            "pass in quick on vboxnet0 inet from any to 172.17.0.0/16 tag cisco_anyconnect_vpn_pass",
            "pass out quick inet from any to 172.17.0.0/16 tag cisco_anyconnect_vpn_pass",
        ] {
            assert_eq!(owned_rule(r), None, "{r}");
        }
    }

    #[test]
    fn one_change_at_a_time_keeps_the_rest_of_the_anchor() {
        let d = desired(&scope());
        let one = after_change(&d[..1], &FwChange::Insert { rule: d[1].clone() });
        assert_eq!(one, d[..2].to_vec());
        assert_eq!(
            after_change(&one, &FwChange::Insert { rule: d[1].clone() }),
            one
        );
        let gone = after_change(
            &one,
            &FwChange::Delete {
                rule: d[0].clone(),
                words: vec![],
            },
        );
        assert_eq!(gone, d[1..2].to_vec());
    }

    #[test]
    fn deleting_a_duplicate_keeps_the_rule() {
        // the anchor lists one of dockroute's rules twice: up deletes the duplicate, and the
        // rule itself must stay loaded
        let d = desired(&scope());
        let twice = vec![d[0].clone(), d[1].clone(), d[0].clone()];
        let owned: Vec<(Repair, Vec<String>)> = twice.iter().map(|r| (r.clone(), vec![])).collect();
        let changes = diff(&d[..2], &owned);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let after = after_change(&twice, &changes[0]);
        assert_eq!(after, d[..2].to_vec());
    }

    #[test]
    fn explains_vpns_that_filter_in_a_system_extension() {
        assert!(system_extension_notes(&[]).is_empty());
        let n = system_extension_notes(&[
            "/Applications/Cisco/Cisco Secure Client.app",
            "/opt/cisco/secureclient",
        ]);
        assert_eq!(n.len(), 1, "one note per client: {n:?}");
        assert!(
            n[0].starts_with("Cisco Secure Client 5 is installed")
                && n[0].contains("local LAN access")
        );
        let n = system_extension_notes(&["/Applications/GlobalProtect.app"]);
        assert!(n[0].contains("GlobalProtect") && n[0].contains("split-tunnel exclude"));
    }

    #[test]
    fn pfctl_never_switches_pf_or_touches_another_ruleset() {
        let release = args::release(1234567890);
        let release: Vec<&str> = release.iter().map(String::as_str).collect();
        assert_eq!(release, ["-X", "1234567890"]);
        let all: Vec<&[&str]> = args::ALL.iter().copied().chain([&release[..]]).collect();
        assert!(all.contains(&&["-E"][..]), "the reference is taken with -E");
        for a in all {
            for w in a {
                // -e/-d switch pf on and off for everyone
                assert!(!["-e", "-d"].contains(w), "{a:?} switches pf");
            }
            let writes = a.iter().any(|w| ["-f", "-F", "-k", "-K"].contains(w));
            let anchor = a.windows(2).any(|p| p == ["-a", ANCHOR]);
            assert!(!writes || anchor, "{a:?} writes outside dockroute's anchor");
            // the reference's options come alone (`-E -f pf.conf` would load the main ruleset)
            if a.iter().any(|w| ["-E", "-X"].contains(w)) {
                assert!(a.len() <= 2 && !anchor, "{a:?}");
            }
        }
    }

    #[test]
    fn reads_the_token_pfctl_e_prints_on_either_stream() {
        assert_eq!(
            parse_token(
                "",
                "No ALTQ support in kernel\nALTQ related functions disabled\npf enabled\nToken : 14348452843957520403\n"
            ),
            Some(14348452843957520403)
        );
        assert_eq!(parse_token("Token : 42\n", "pf enabled\n"), Some(42));
        assert_eq!(
            parse_token("Token : 42\n", "Token :42\n"),
            Some(42),
            "said twice"
        );
        for (out, err) in [
            ("", ""),
            ("", "pf enabled\n"),
            ("", "pfctl: DIOCSTARTREF: Permission denied\n"),
            ("", "Token : \n"),
            ("", "Token : abc\n"),
            ("", "Token : 12x\n"),
            ("", "Token : -5\n"),
            ("", "Token : 99999999999999999999999\n"),
            ("", "Token : 0\n"),
            ("Token : 1\n", "Token : 2\n"),
            ("", "Tokens: 7\n"),
            ("\u{0}\u{7f}garbage\n", "\u{fffd}Token\n"),
        ] {
            assert_eq!(parse_token(out, err), None, "{out:?} {err:?}");
        }
    }

    #[test]
    fn an_unknown_token_counts_as_released_other_failures_do_not() {
        assert!(token_unknown("pfctl: DIOCSTOPREF: Invalid argument"));
        assert!(token_unknown("pfctl: token mismatch"));
        // pf disabled since the token was taken: DIOCSTOPREF fails with ENOENT
        assert!(token_unknown(
            "pfctl: DIOCSTOPREF: No such file or directory"
        ));
        assert!(token_unknown("pfctl: pf not enabled"));
        // a missing /dev/pf is not a released token
        assert!(!token_unknown("pfctl: /dev/pf: No such file or directory"));
        assert!(!token_unknown("pfctl: DIOCSTOPREF: Permission denied"));
        assert!(!token_unknown("pfctl: /dev/pf: Operation not permitted"));
        assert!(!token_unknown(""));
    }

    #[test]
    fn a_reference_only_ever_keeps_pf_on() {
        use ReferenceStep::*;
        // pf on (a VPN enabled it), nothing held: take one
        assert_eq!(reference_step(Some(true), None), Take);
        assert_eq!(reference_step(Some(true), Some(7)), Keep);
        // pf off: never enable it, and a recorded token is void
        assert_eq!(reference_step(Some(false), None), Forget);
        assert_eq!(reference_step(Some(false), Some(7)), Forget);
        // unknown: change nothing
        assert_eq!(reference_step(None, None), Keep);
        assert_eq!(reference_step(None, Some(7)), Keep);
        let text = |token, enabled| reference_text(&reference(true, token, enabled).unwrap());
        assert!(
            text(Some(7), Some(true))
                .starts_with("dockroute holds a pf enable reference (token 7)")
        );
        assert!(text(Some(7), None).contains("holds a pf enable reference"));
        assert!(text(Some(7), Some(false)).contains("(token 7) lapsed"));
        assert!(text(None, Some(true)).contains("holds no pf enable reference"));
        assert_eq!(
            reference(false, None, None),
            None,
            "nothing to say off macOS"
        );
        assert_eq!(
            reference(true, None, Some(true)),
            Some(Reference {
                held: false,
                token: None
            })
        );
        assert_eq!(reference(false, Some(7), None).map(|r| r.held), Some(true));
    }

    #[test]
    fn reads_whether_pf_is_on() {
        assert_eq!(
            enabled(
                "No ALTQ support in kernel\nStatus: Enabled for 0 days 00:10:02           Debug: Urgent\n"
            ),
            Some(true)
        );
        assert_eq!(
            enabled("Status: Disabled for 0 days 00:00:00\n"),
            Some(false)
        );
        assert_eq!(enabled("garbage"), None);
    }
}
