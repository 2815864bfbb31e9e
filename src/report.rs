//! Rendering for people and for programs (`--json`).

use crate::engine::{Conflict, Outcome, Status};
use std::borrow::Cow;
use std::fmt::Write;

/// Characters a terminal acts on rather than shows: C0 controls (all but the newline), DEL, C1
/// controls (U+009B is a one-character CSI on many terminals), and the bidirectional overrides
/// and isolates that reorder what follows them.
fn is_terminal_control(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` for a terminal: every control character shown as an escape (`\x1b`, `\u{202e}`), so
/// that names from the kernel (links, route devices) or from files cannot move the cursor,
/// recolour or rewrite what is shown. Newlines stay. Link names that are not UTF-8 reach here
/// with each foreign byte as U+001A (net::rtnl), shown as `\x1a`.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_terminal_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !is_terminal_control(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// JSON text with the control characters that JSON allows raw inside strings (DEL, C1, the
/// bidirectional ones) written as `\uXXXX` too: still the same JSON, and safe on a terminal.
/// (serde_json escapes the C0 ones already; outside strings JSON has none of them.)
fn json_escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_terminal_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_terminal_control(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The result of `up` or `down`, for people (control characters escaped).
pub fn outcome(verb: &str, o: &Outcome) -> String {
    escape_controls(&outcome_text(verb, o)).into_owned()
}

fn outcome_text(verb: &str, o: &Outcome) -> String {
    let mut s = String::new();
    if let Some(t) = &o.target {
        let subnets: Vec<String> = t.subnets.iter().map(|n| n.to_string()).collect();
        // `down` discovers nothing: where the last up found the VM is not news there.
        let source = if verb == "up" {
            format!(" (VM IP from {})", t.vm_ip_source)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{} via VM {} on {}{source}",
            subnets.join(", "),
            t.vm_ip,
            t.ifname,
        );
    }
    let dns_changed = o.dns.as_ref().is_some_and(|d| d.changed);
    let n = o.changes.len() + o.firewall.len();
    if n == 0 {
        let what = if dns_changed {
            "routes up to date"
        } else {
            "nothing to change"
        };
        let _ = writeln!(s, "{verb}: {what}");
    } else {
        let head = if o.dry_run {
            format!("{verb} --dry-run: would apply {n} change(s):")
        } else {
            format!("{verb}: applied {n} change(s):")
        };
        let _ = writeln!(s, "{head}");
        for c in &o.changes {
            let _ = writeln!(s, "  {c}");
        }
        for c in &o.firewall {
            let _ = writeln!(s, "  {c}");
        }
    }
    if let Some(d) = &o.dns {
        let action = match (verb, o.dry_run, d.changed) {
            ("up", false, true) => "set",
            ("up", true, true) => "would set",
            ("up", _, false) => "already set:",
            (_, false, true) => "removed",
            (_, true, true) => "would remove",
            (_, _, false) => "nothing to remove for",
        };
        let _ = writeln!(s, "dns: {action} {}", d.state);
    }
    if let Some(d) = &o.docker {
        docker_text(&mut s, d, "docker:");
    }
    if let Some(d) = &o.vm_filter {
        vm_filter_text(&mut s, d, "vm filter:");
    }
    if let Some(e) = &o.firewall_unread {
        let _ = writeln!(s, "firewall: not checked ({e})");
    }
    for w in &o.firewall_warnings {
        let _ = writeln!(s, "firewall: WARNING {w}");
    }
    s
}

/// The Docker engine asked and what came of its networks, one row each, the first headed `head`.
fn docker_text(s: &mut String, d: &crate::docker::Report, head: &str) {
    use crate::docker::endpoint::Choice;
    let engine = match &d.engine {
        Choice::Off { source } => format!("off ({source})"),
        Choice::Unset { tried } => format!("no engine found (tried {})", tried.join(", ")),
        Choice::Invalid { source, .. } => format!("from {source}"),
        Choice::At { source, endpoint } => format!("{endpoint} (from {source})"),
    };
    let version = match d.version.as_ref().and_then(|v| v.version.as_deref()) {
        Some(v) => format!(", Docker {v}"),
        None => String::new(),
    };
    let _ = writeln!(s, "{head:<12} {engine}{version}");
    if let Some(why) = &d.unreached {
        let _ = writeln!(s, "{:<12} WARNING not reached: {why}; {}", "", d.fallback());
    }
    for n in &d.routed {
        let _ = writeln!(s, "{:<12} routed {n}", "");
    }
    for n in &d.skipped {
        let _ = writeln!(s, "{:<12} skipped {n}", "");
    }
    if let Some(o) = &d.vm_firewall {
        let _ = writeln!(
            s,
            "{:<12} VM firewall opened: {} accept(s) marked dockroute in the VM's {} (helper image {})",
            "",
            o.rules.len(),
            o.backend_name(),
            crate::docker::networks::shown(&o.image)
        );
    }
}

/// The VM's own Docker filter: what the engine says, and each container probed from the host.
fn vm_filter_text(s: &mut String, d: &crate::docker::vmfilter::Diagnosis, head: &str) {
    if let Some(why) = &d.unchecked {
        let _ = writeln!(s, "{head:<12} not checked: {why}");
        return;
    }
    let e = &d.engine;
    let firewall = match d.filter_unasked {
        true => String::new(),
        false => format!(
            " firewall {}",
            e.firewall_backend.as_deref().unwrap_or("iptables")
        ),
    };
    let _ = writeln!(
        s,
        "{head:<12} engine {}{firewall}{}",
        e.version.as_deref().unwrap_or("(version unknown)"),
        if d.probes.is_empty() {
            ", no running container routed via the VM to probe"
        } else {
            ""
        }
    );
    for p in &d.probes {
        let _ = writeln!(s, "{:<12} {p}", "");
    }
}

/// `status`, for people (control characters escaped).
pub fn status(st: &Status) -> String {
    escape_controls(&status_text(st)).into_owned()
}

fn status_text(st: &Status) -> String {
    let mut s = String::new();
    target_rows(&mut s, st);
    installed_rows(&mut s, st);
    dns_rows(&mut s, st);
    vpn_rows(&mut s, st);
    firewall_rows(&mut s, st);
    conflict_rows(&mut s, st);
    s
}

/// One `key  value` line of `status`.
fn row(s: &mut String, k: &str, v: &str) {
    let _ = writeln!(s, "{k:<12} {v}");
}

/// The VM: its link, its IP and where that came from, its subnets.
fn target_rows(s: &mut String, st: &Status) {
    match &st.target {
        Some(t) => {
            let link = match &st.link {
                Some(l) => {
                    let addrs: Vec<String> = l.addrs.iter().map(|a| a.to_string()).collect();
                    format!(
                        "{} ({}, {})",
                        l.name,
                        if l.up { "up" } else { "DOWN" },
                        if addrs.is_empty() {
                            "no IPv4 address".into()
                        } else {
                            addrs.join(", ")
                        }
                    )
                }
                None => format!("{} (MISSING)", t.ifname),
            };
            row(s, "link", &link);
            let from = match st.target_from {
                Some("record") => format!("{}, recorded by the last up", t.vm_ip_source),
                _ => t.vm_ip_source.to_string(),
            };
            row(s, "VM IP", &format!("{} (from {from})", t.vm_ip));
            let subnets: Vec<String> = t.subnets.iter().map(|n| n.to_string()).collect();
            row(s, "subnets", &subnets.join(", "));
        }
        None => row(
            s,
            "VM",
            &format!(
                "not found: {}",
                st.discovery_error.as_deref().unwrap_or("unknown")
            ),
        ),
    }
}

/// The record's state, and what is installed in the kernel.
fn installed_rows(s: &mut String, st: &Status) {
    if let Some(e) = &st.record_error {
        row(s, "record", &format!("ERROR {e}"));
    }
    if let Some(d) = &st.docker {
        docker_text(s, d, "docker");
    }
    if let Some(d) = &st.vm_filter {
        vm_filter_text(s, d, "vm filter");
    }
    let state = match (st.installed.is_empty(), st.in_sync) {
        (true, _) => "nothing (run dockroute up)".to_string(),
        (false, true) => format!("{} entries, up to date", st.installed.len()),
        (false, false) => format!(
            "{} entries, OUT OF DATE (run dockroute up)",
            st.installed.len()
        ),
    };
    row(s, "installed", &state);
    for e in &st.installed {
        let _ = writeln!(s, "  {e}");
    }
    for sp in &st.split {
        let _ = writeln!(s, "  split: {sp}");
    }
    if !st.tagged_not_owned.is_empty() {
        row(
            s,
            "tagged",
            &format!(
                "WARNING: {} entries tagged like dockroute's but not its shape (left alone)",
                st.tagged_not_owned.len()
            ),
        );
        for t in &st.tagged_not_owned {
            let _ = writeln!(s, "  {t}");
        }
    }
    if !st.probes.is_empty() {
        let _ = writeln!(s, "kernel picks");
        for p in &st.probes {
            let _ = writeln!(
                s,
                "  {:<15} {:<55} {}",
                p.address.to_string(),
                p.kernel.to_string(),
                if p.ok { "ok" } else { "NOT VIA THE VM" }
            );
        }
    }
}

/// Per-domain DNS, and `--check-name`'s answer.
fn dns_rows(s: &mut String, st: &Status) {
    match &st.dns {
        Some(d) => {
            let state = if d.in_place {
                "in place"
            } else {
                "NOT IN PLACE (run dockroute up)"
            };
            row(s, "dns", &format!("{}: {state}", d.state));
            let _ = writeln!(s, "  {}", d.detail);
            let _ = writeln!(s, "  answered by {}", d.server);
            match d.answers {
                Some(true) => {
                    let _ = writeln!(s, "  {} {}", d.state.nameserver, d.answer);
                }
                Some(false) => {
                    let _ = writeln!(s, "  {} DOES NOT ANSWER: {}", d.state.nameserver, d.answer);
                }
                None if !d.answer.is_empty() => {
                    let _ = writeln!(s, "  {}", d.answer);
                }
                None => {}
            }
        }
        None => row(s, "dns", "not set by dockroute"),
    }
    if let Some(n) = &st.name_check {
        let answer = match &n.error {
            Some(e) => format!("{}: NOT RESOLVED ({e})", n.name),
            None => {
                let ips: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
                format!("{} -> {}", n.name, ips.join(", "))
            }
        };
        row(s, "name", &answer);
    }
}

/// Tunnel links, their routes, and the policy rules.
fn vpn_rows(s: &mut String, st: &Status) {
    let v = &st.vpn;
    if v.links.is_empty() {
        row(s, "vpn", "no tunnel links");
    } else {
        let names: Vec<String> = v
            .links
            .iter()
            .map(|l| format!("{} ({})", l.name, l.client))
            .collect();
        row(s, "vpn", &names.join(", "));
        for r in &v.routes {
            let _ = writeln!(s, "  route {r}");
        }
    }
    for r in &v.rules {
        let _ = writeln!(s, "  rule {r}");
    }
}

/// What blocks the VM in the firewalls, and what dockroute repaired.
fn firewall_rows(s: &mut String, st: &Status) {
    let v = &st.vpn;
    if let Some(e) = &v.firewall_error {
        row(s, "firewall", &format!("not readable ({e})"));
    }
    match &v.firewall_error {
        Some(_) if v.firewall_blocking.is_empty() && v.firewall_repaired.is_empty() => {}
        None if v.firewall_blocking.is_empty() && v.firewall_repaired.is_empty() => {
            let state = if st.target.is_some() {
                "nothing blocks the VM"
            } else {
                "not checked: there is no VM to check it for"
            };
            row(s, "firewall", state)
        }
        _ => {
            let state = if v.firewall_blocking.is_empty() {
                "repaired by dockroute"
            } else {
                "BLOCKS the VM (run dockroute up)"
            };
            row(s, "firewall", state);
            for r in &v.firewall_repaired {
                let below = if r.misplaced {
                    " (below a rule that drops the traffic: it does nothing there)"
                } else {
                    ""
                };
                let _ = writeln!(s, "  repaired: {r}{below}");
            }
            for r in &v.firewall_blocking {
                let _ = writeln!(s, "  needed:   {r}");
            }
        }
    }
    for c in &v.firewall_counters {
        let _ = writeln!(
            s,
            "  pf {}: {} [evaluations {}, packets {}, bytes {}, states {}]",
            crate::firewall::pf::ANCHOR,
            c.rule,
            c.evaluations,
            c.packets,
            c.bytes,
            c.states
        );
    }
    if let Some(r) = &v.pf_reference {
        let _ = writeln!(s, "  pf: {}", crate::firewall::pf::reference_text(r));
    }
    for w in &v.firewall_warnings {
        let _ = writeln!(s, "  WARNING: {w}");
    }
    for h in &v.hints {
        let _ = writeln!(s, "  hint: {h}");
    }
}

/// Routes and rules not dockroute's that cover its networks.
fn conflict_rows(s: &mut String, st: &Status) {
    if st.conflicts.is_empty() {
        row(s, "conflicts", "none");
    } else {
        let _ = writeln!(s, "conflicts");
        for c in &st.conflicts {
            match c {
                Conflict::Route(r) => {
                    let _ = writeln!(s, "  route {r}");
                }
                Conflict::Rule {
                    rule,
                    before_dockroute,
                } => {
                    let when = if *before_dockroute {
                        "consulted BEFORE dockroute's rules"
                    } else {
                        "after dockroute's rules"
                    };
                    let _ = writeln!(s, "  rule {rule} ({when})");
                }
            }
        }
    }
}

/// Any serializable report as pretty JSON with a trailing newline.
pub fn json<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            let mut s = json_escape_controls(&s).into_owned();
            s.push('\n');
            s
        }
        Err(e) => format!("{{\"error\": \"cannot render JSON: {e}\"}}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(escape_controls("vboxnet0\n"), "vboxnet0\n");
        assert_eq!(
            escape_controls("tun\u{1b}[31mX\tY\u{7f}"),
            "tun\\x1b[31mX\\x09Y\\x7f"
        );
        assert_eq!(escape_controls("a\u{9b}2J"), "a\\x9b2J");
        assert_eq!(escape_controls("ab\u{202e}cd"), "ab\\u{202e}cd");
        assert_eq!(escape_controls("café"), "café");
    }

    #[test]
    fn json_stays_json() {
        let v = serde_json::json!({ "name": "t\u{1b}\u{9b}\u{202e}\u{7f}" });
        let out = json(&v);
        assert!(!out.chars().any(is_terminal_control), "{out:?}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, v);
    }
}
