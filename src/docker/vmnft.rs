//! Docker's own nftables tables in the VM (an engine started with `firewall-backend: nftables`,
//! Docker 29): where its drops are, dockroute's accepts among them, and the `nft` command lines
//! the helper runs to insert and delete them. Pure: no `cfg`, no I/O.
//!
//! In nftables an accept ends only its own base chain: the packet still meets every other base
//! chain on the same hook, and a drop in any of them is final. So an accept in a table of
//! dockroute's own cannot beat Docker's drops (`filter-FORWARD`'s policy drop on a VM whose
//! forwarding dockerd had to turn on, each network's "UNPUBLISHED PORT DROP", and
//! `raw-PREROUTING`'s "DROP DIRECT ACCESS"). The accepts go at the top of Docker's own base
//! chains instead, marked with the comment `dockroute`. dockerd deletes its table when it
//! restarts, and the accepts with it: `up` (and `watch`, on the daemon's restart) inserts them
//! again.

use super::vmfilter::{Backend, MARK, VmRule};
use crate::firewall::nft;
use crate::firewall::walk::Rule;
use ipnet::Ipv4Net;
use nftables::expr::MetaKey;
use nftables::schema::NfCmd;
use nftables::stmt::Statement;
use nftables::types::NfFamily;
use std::net::Ipv4Addr;

/// Docker's IPv4 table (`table ip docker-bridges`).
pub const TABLE: &str = "docker-bridges";
/// Its base chain on the forward hook (the FORWARD policy, each network's drops).
pub const FORWARD: &str = "filter-FORWARD";
/// Its base chain on the prerouting hook at raw priority (Docker 28's direct-access drops).
pub const RAW: &str = "raw-PREROUTING";

/// `nft -j list ruleset ip`: every IPv4 table, Docker's among them (an engine that is not
/// running has none, which is not an error).
pub fn list_argv() -> Vec<String> {
    ["nft", "-j", "list", "ruleset", "ip"]
        .map(String::from)
        .to_vec()
}

/// What the VM's nftables hold, as far as dockroute cares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NftState {
    /// The chains of Docker's table (none: no such table).
    pub chains: Vec<String>,
    /// dockroute's accepts in Docker's table, with their handles.
    pub ours: Vec<(VmRule, u64)>,
}

/// Read `nft -j list ruleset ip` (untrusted: what does not parse is left out).
pub fn parse(json: &str) -> Result<NftState, String> {
    let rs = nft::read(json).map_err(|e| e.to_string())?;
    let mut s = NftState::default();
    for t in rs
        .tables
        .iter()
        .filter(|t| t.family == "ip" && t.name == TABLE)
    {
        for c in &t.chains {
            s.chains.push(c.name.clone());
            for r in &c.rules {
                if let (Some(rule), Some(handle)) = (ours(&c.name, r), r.handle) {
                    s.ours.push((rule, handle));
                }
            }
        }
    }
    Ok(s)
}

/// `r` as one of dockroute's accepts, if it has exactly their shape.
fn ours(chain: &str, r: &Rule) -> Option<VmRule> {
    if r.comment.as_deref() != Some(MARK)
        || r.target.as_deref() != Some("ACCEPT")
        || r.other
        || r.extra
        || r.oif.is_some()
    {
        return None;
    }
    let (Some((false, interface)), Some((false, src)), Some((false, subnet))) =
        (r.iif.clone(), r.src, r.dst)
    else {
        return None;
    };
    (src.prefix_len() == 32).then(|| VmRule {
        backend: Backend::Nftables,
        table: TABLE.into(),
        chain: chain.into(),
        host: src.addr(),
        subnet,
        interface,
    })
}

impl NftState {
    /// The handle of `rule` in the VM, if it is there.
    pub fn handle(&self, rule: &VmRule) -> Option<u64> {
        self.ours.iter().find(|(r, _)| r == rule).map(|(_, h)| *h)
    }
}

/// The accepts `--open-vm-firewall` wants in a VM whose nftables are `state`: one per routed
/// subnet at the top of each of Docker's base chains that exists. `raw-PREROUTING` gets them
/// even where it drops nothing yet (the drops come with the next published port); inserting
/// into a chain that exists creates nothing that would outlive the rule.
pub fn wanted(
    state: &NftState,
    host: Ipv4Addr,
    interface: &str,
    subnets: &[Ipv4Net],
) -> Vec<VmRule> {
    let mut out = Vec::new();
    for chain in [FORWARD, RAW] {
        if state.chains.iter().any(|c| c == chain) {
            out.extend(subnets.iter().map(|s| VmRule {
                backend: Backend::Nftables,
                table: TABLE.into(),
                chain: chain.into(),
                host,
                subnet: *s,
                interface: interface.into(),
            }));
        }
    }
    out
}

/// `nft -j JSON`: nft reads JSON commands given on its command line (no file, no stdin), and
/// applies them in one transaction.
fn command(cmds: Vec<NfCmd<'static>>) -> Vec<String> {
    // our own commands always serialise; an empty argument would only make nft fail
    let json = nft::batch(cmds).unwrap_or_default();
    vec!["nft".into(), "-j".into(), json]
}

/// Insert `r` at the top of its chain:
/// `iifname IF ip saddr HOST ip daddr SUBNET accept comment "dockroute"`.
pub fn insert_argv(r: &VmRule) -> Vec<String> {
    let expr = vec![
        nft::ifname_is(MetaKey::Iifname, &r.interface),
        nft::ip_addr_is("saddr", r.host),
        nft::ip_net_is("daddr", r.subnet),
        Statement::Accept(None),
    ];
    command(vec![nft::insert_rule_cmd(
        NfFamily::IP,
        &r.table,
        &r.chain,
        expr,
    )])
}

/// Delete each rule by the handle [`NftState::handle`] found it at, in one transaction (all or
/// none). Handles are only good for the table that was read: dockerd re-creating its table
/// between that reading and this command (a restart in the same fraction of a second) would
/// make them name its new rules, so the reading is always made just before.
pub fn delete_argv(found: &[(&VmRule, u64)]) -> Vec<String> {
    command(
        found
            .iter()
            .map(|(r, handle)| {
                nft::delete_rule_cmd(NfFamily::IP, &r.table, &r.chain, Some(*handle))
            })
            .collect(),
    )
}

/// The rule in nft's own words (for messages and the README's manual fix).
pub fn rule_text(r: &VmRule) -> String {
    format!(
        "nft insert rule ip {} {} iifname \"{}\" ip saddr {} ip daddr {} accept comment \"{MARK}\"",
        r.table, r.chain, r.interface, r.host, r.subnet
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker 29's table as `nft -j list ruleset ip` prints it (trimmed), with one accept of
    /// dockroute's in it, one rule that carries the mark but not the shape, and iptables-nft's
    /// filter table beside it.
    const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
 {"table": {"family": "ip", "name": "filter", "handle": 3}},
 {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
 {"table": {"family": "ip", "name": "docker-bridges", "handle": 7}},
 {"chain": {"family": "ip", "table": "docker-bridges", "name": "filter-FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
 {"chain": {"family": "ip", "table": "docker-bridges", "name": "raw-PREROUTING", "handle": 2, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}},
 {"chain": {"family": "ip", "table": "docker-bridges", "name": "filter-forward-in__docker0", "handle": 3}},
 {"rule": {"family": "ip", "table": "docker-bridges", "chain": "filter-FORWARD", "handle": 9, "comment": "dockroute", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "192.168.99.1"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "172.17.0.0", "len": 16}}}}, {"accept": null}]}},
 {"rule": {"family": "ip", "table": "docker-bridges", "chain": "filter-FORWARD", "handle": 10, "comment": "dockroute", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}},
 {"rule": {"family": "ip", "table": "docker-bridges", "chain": "filter-FORWARD", "handle": 4, "expr": [{"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@filter-forward-in-jumps"}}]}},
 {"rule": {"family": "ip", "table": "docker-bridges", "chain": "raw-PREROUTING", "handle": 5, "comment": "DROP DIRECT ACCESS", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "172.17.0.2"}}, {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "docker0"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}
]}"#;

    #[test]
    fn reads_dockers_table_and_finds_only_dockroutes_accepts() {
        let s = parse(LISTED).unwrap();
        assert_eq!(
            s.chains,
            vec![FORWARD, RAW, "filter-forward-in__docker0"],
            "only Docker's table"
        );
        assert_eq!(s.ours.len(), 1, "{:?}", s.ours);
        let host = "192.168.99.1".parse().unwrap();
        let nets = [
            "172.17.0.0/16".parse().unwrap(),
            "172.30.0.0/16".parse().unwrap(),
        ];
        let w = wanted(&s, host, "eth0", &nets);
        assert_eq!(w.len(), 4);
        assert_eq!(s.handle(&w[0]), Some(9));
        assert!(w[1..].iter().all(|r| s.handle(r).is_none()));
        assert_eq!((w[3].chain.as_str(), w[3].subnet), (RAW, nets[1]));
        assert_eq!(
            rule_text(&w[0]),
            "nft insert rule ip docker-bridges filter-FORWARD iifname \"eth0\" ip saddr 192.168.99.1 ip daddr 172.17.0.0/16 accept comment \"dockroute\""
        );
        // no Docker table (the engine is not running, or runs on iptables): nothing wanted
        let bare = parse(r#"{"nftables": [{"metainfo": {}}]}"#).unwrap();
        assert!(wanted(&bare, host, "eth0", &nets).is_empty());
        assert!(parse("{\"nftables\": 3}").is_err());
    }

    #[test]
    fn commands_are_one_json_argument_that_reads_back_as_the_rule() {
        let r = VmRule {
            backend: Backend::Nftables,
            table: TABLE.into(),
            chain: RAW.into(),
            host: "192.168.99.1".parse().unwrap(),
            subnet: "172.18.0.0/16".parse().unwrap(),
            interface: "eth1".into(),
        };
        let ins = insert_argv(&r);
        assert_eq!(ins[..2], ["nft", "-j"]);
        assert_eq!(ins.len(), 3);
        // the inserted rule, listed back, is found as dockroute's
        let body: serde_json::Value = serde_json::from_str(&ins[2]).unwrap();
        let rule = &body["nftables"][0]["insert"]["rule"];
        assert_eq!(rule["comment"], MARK);
        let listed = format!(
            r#"{{"nftables": [{{"table": {{"family": "ip", "name": "docker-bridges"}}}}, {{"chain": {{"family": "ip", "table": "docker-bridges", "name": "raw-PREROUTING", "hook": "prerouting"}}}}, {{"rule": {{"family": "ip", "table": "docker-bridges", "chain": "raw-PREROUTING", "handle": 12, "comment": "dockroute", "expr": {}}}}}]}}"#,
            rule["expr"]
        );
        let s = parse(&listed).unwrap();
        assert_eq!(s.handle(&r), Some(12));
        let other = VmRule {
            chain: FORWARD.into(),
            ..r.clone()
        };
        let del = delete_argv(&[(&r, 12), (&other, 3)]);
        assert_eq!(del.len(), 3, "one command for both");
        let body: serde_json::Value = serde_json::from_str(&del[2]).unwrap();
        for (i, (chain, handle)) in [(RAW, 12), (FORWARD, 3)].into_iter().enumerate() {
            let rule = &body["nftables"][i]["delete"]["rule"];
            assert_eq!(
                (&rule["table"], &rule["chain"], &rule["handle"]),
                (
                    &serde_json::json!(TABLE),
                    &serde_json::json!(chain),
                    &serde_json::json!(handle)
                )
            );
        }
    }
}
