//! nftables tables of VPN clients (Mullvad's `inet mullvad`, NordVPN's `inet nordvpn`, ...):
//! every base chain on the input and output hooks is walked on its own, because an accept in
//! one table's chain does not override a drop in another's. Reading and writing go through the
//! `nftables` crate (`nft -j`). The tables iptables-nft manages are left to the iptables side.

use super::walk::{self, Chain, Rule};
use super::{Direction, FirewallError, Repair, Scope, TAG};
use ipnet::Ipv4Net;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{self, NfCmd, NfListObject, NfObject, Nftables};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfFamily, NfHook};
use std::borrow::Cow;
use std::net::Ipv4Addr;

pub const BACKEND: &str = "nftables";

/// Tables that iptables-nft owns (its rules are judged through `iptables -S`).
fn iptables_nft_table(family: NfFamily, name: &str) -> bool {
    family == NfFamily::IP && matches!(name, "filter" | "raw" | "mangle" | "nat" | "security")
}

fn family_name(f: NfFamily) -> &'static str {
    match f {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

fn parse_family(s: &str) -> NfFamily {
    match s {
        "ip" => NfFamily::IP,
        _ => NfFamily::INet,
    }
}

fn ipv4_of(e: &Expression) -> Option<Ipv4Net> {
    match e {
        Expression::String(s) => s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from),
        Expression::Named(NamedExpression::Prefix(p)) => match p.addr.as_ref() {
            Expression::String(s) => Ipv4Net::new(s.parse().ok()?, u8::try_from(p.len).ok()?).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// One nftables rule in the walk's model.
fn to_rule(r: &schema::Rule) -> Rule {
    let mut out = Rule {
        chain: r.chain.to_string(),
        handle: r.handle.map(u64::from),
        comment: r.comment.as_ref().map(|c| c.to_string()),
        ..Default::default()
    };
    for st in r.expr.iter() {
        match st {
            Statement::Match(m) => {
                let neg = match m.op {
                    Operator::EQ | Operator::IN => false,
                    Operator::NEQ => true,
                    _ => {
                        out.other = true;
                        continue;
                    }
                };
                match (&m.left, &m.right) {
                    (
                        Expression::Named(NamedExpression::Meta(Meta { key })),
                        Expression::String(name),
                    ) if matches!(key, MetaKey::Oifname | MetaKey::Iifname) => {
                        let v = Some((neg, name.to_string()));
                        if *key == MetaKey::Oifname {
                            out.oif = v;
                        } else {
                            out.iif = v;
                        }
                    }
                    (
                        Expression::Named(NamedExpression::Payload(Payload::PayloadField(f))),
                        right,
                    ) if f.protocol == "ip" && matches!(f.field.as_ref(), "saddr" | "daddr") => {
                        match ipv4_of(right) {
                            Some(net) if f.field == "saddr" => out.src = Some((neg, net)),
                            Some(net) => out.dst = Some((neg, net)),
                            None => out.other = true, // a set, a range, ...
                        }
                    }
                    _ => out.other = true,
                }
            }
            Statement::Accept(_) => out.target = Some("ACCEPT".into()),
            Statement::Drop(_) => out.target = Some("DROP".into()),
            Statement::Reject(_) => out.target = Some("REJECT".into()),
            Statement::Return(_) => out.target = Some("RETURN".into()),
            Statement::Jump(t) | Statement::Goto(t) => out.target = Some(t.target.to_string()),
            _ => {}
        }
    }
    out
}

/// Per table: its chains in the walk's model, and its entry points (base chains on input/output).
struct Table {
    family: NfFamily,
    name: String,
    chains: Vec<Chain>,
    entries: Vec<(String, Direction)>,
}

fn tables(ruleset: &Nftables) -> Vec<Table> {
    let mut out: Vec<Table> = Vec::new();
    for obj in ruleset.objects.iter() {
        let NfObject::ListObject(o) = obj else {
            continue;
        };
        match o {
            NfListObject::Chain(c) if !iptables_nft_table(c.family, &c.table) => {
                if !matches!(c.family, NfFamily::IP | NfFamily::INet) {
                    continue;
                }
                let i = match out
                    .iter()
                    .position(|t| t.family == c.family && t.name == c.table)
                {
                    Some(i) => i,
                    None => {
                        out.push(Table {
                            family: c.family,
                            name: c.table.to_string(),
                            chains: Vec::new(),
                            entries: Vec::new(),
                        });
                        out.len() - 1
                    }
                };
                let t = &mut out[i];
                let policy = c.hook.map(|_| match c.policy {
                    Some(NfChainPolicy::Drop) => "DROP".to_string(),
                    _ => "ACCEPT".to_string(),
                });
                match c.hook {
                    Some(NfHook::Output) => t.entries.push((c.name.to_string(), Direction::Out)),
                    Some(NfHook::Input) => t.entries.push((c.name.to_string(), Direction::In)),
                    _ => {}
                }
                t.chains.push(Chain {
                    name: c.name.to_string(),
                    policy,
                    rules: Vec::new(),
                });
            }
            NfListObject::Rule(r) => {
                if let Some(t) = out
                    .iter_mut()
                    .find(|t| t.family == r.family && t.name == r.table)
                    && let Some(c) = t.chains.iter_mut().find(|c| c.name == r.chain)
                {
                    c.rules.push(to_rule(r));
                }
            }
            _ => {}
        }
    }
    out
}

/// Repairs needed (for `scope`) and dockroute's rules present, from `nft -j list ruleset`.
pub fn observe(ruleset: &Nftables, scope: Option<&Scope>) -> (Vec<Repair>, Vec<Repair>) {
    let mut desired = Vec::new();
    let mut owned = Vec::new();
    for t in tables(ruleset) {
        let table = format!("{} {}", family_name(t.family), t.name);
        if let Some(scope) = scope {
            let entries: Vec<(&str, Direction)> =
                t.entries.iter().map(|(c, d)| (c.as_str(), *d)).collect();
            desired.extend(walk::plan(BACKEND, &table, &t.chains, &entries, scope));
        }
        for c in &t.chains {
            owned.extend(
                c.rules
                    .iter()
                    .filter(|r| r.comment.as_deref() == Some(TAG))
                    .map(|r| walk::owned_repair(BACKEND, &table, &c.name, r)),
            );
        }
    }
    (desired, owned)
}

fn split_table(table: &str) -> (NfFamily, String) {
    match table.split_once(' ') {
        Some((f, n)) => (parse_family(f), n.to_string()),
        None => (NfFamily::INet, table.to_string()),
    }
}

/// The nftables command that inserts `r` at the top of its chain.
pub fn insert_cmd(r: &Repair) -> NfCmd<'static> {
    let (family, table) = split_table(&r.table);
    let (key, field) = match r.direction {
        Direction::Out => (MetaKey::Oifname, "daddr"),
        Direction::In => (MetaKey::Iifname, "saddr"),
    };
    let verdict = if r.verdict == "RETURN" {
        Statement::Return(None)
    } else {
        Statement::Accept(None)
    };
    let expr = vec![
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Meta(Meta { key })),
            right: Expression::String(Cow::Owned(r.ifname.clone())),
            op: Operator::EQ,
        }),
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                PayloadField {
                    protocol: Cow::Borrowed("ip"),
                    field: Cow::Borrowed(field),
                },
            ))),
            right: Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(Expression::String(Cow::Owned(r.net.network().to_string()))),
                len: u32::from(r.net.prefix_len()),
            })),
            op: Operator::EQ,
        }),
        verdict,
    ];
    NfCmd::Insert(NfListObject::Rule(schema::Rule {
        family,
        table: Cow::Owned(table),
        chain: Cow::Owned(r.chain.clone()),
        expr: Cow::Owned(expr),
        comment: Some(Cow::Borrowed(TAG)),
        ..Default::default()
    }))
}

/// The nftables command that deletes dockroute's rule `r` (by its handle).
pub fn delete_cmd(r: &Repair) -> NfCmd<'static> {
    let (family, table) = split_table(&r.table);
    NfCmd::Delete(NfListObject::Rule(schema::Rule {
        family,
        table: Cow::Owned(table),
        chain: Cow::Owned(r.chain.clone()),
        handle: r.handle.and_then(|h| u32::try_from(h).ok()),
        ..Default::default()
    }))
}

/// Run one command through `nft -j`.
pub fn run(cmd: NfCmd<'static>) -> Result<(), FirewallError> {
    let doc = Nftables {
        objects: Cow::Owned(vec![NfObject::CmdObject(cmd)]),
    };
    nftables::helper::apply_ruleset(&doc).map_err(|e| FirewallError::Run {
        program: "nft".into(),
        args: vec!["-j".into(), "-f".into(), "-".into()],
        msg: e.to_string().replace('\n', " "),
    })
}

/// The ruleset, through `nft -j list ruleset`.
pub fn ruleset() -> Result<Nftables<'static>, FirewallError> {
    let err = |msg: String| FirewallError::Run {
        program: "nft".into(),
        args: vec!["-j".into(), "list".into(), "ruleset".into()],
        msg: msg.replace('\n', " "),
    };
    let json = nftables::helper::get_current_ruleset_raw(
        nftables::helper::DEFAULT_NFT,
        nftables::helper::DEFAULT_ARGS,
    )
    .map_err(|e| err(e.to_string()))?;
    parse_ruleset(&json).map_err(|e| err(format!("got invalid json: {e}")))
}

/// Read what `nft -j list ruleset` printed. Pure; the fuzzer's entry point (tests/fuzz).
pub fn parse_ruleset(json: &str) -> Result<Nftables<'static>, serde_json::Error> {
    serde_json::from_str(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope {
            ifname: "vboxnet0".into(),
            nets: vec!["172.17.0.0/16".parse().unwrap()],
        }
    }

    /// What `nft -j list ruleset` prints for a Mullvad-like table (trimmed to what matters).
    const MULLVAD: &str = r#"{"nftables": [
      {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "vpn", "handle": 1}},
      {"chain": {"family": "inet", "table": "vpn", "name": "output", "handle": 1, "type": "filter", "hook": "output", "prio": 0, "policy": "drop"}},
      {"chain": {"family": "inet", "table": "vpn", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
      {"rule": {"family": "inet", "table": "vpn", "chain": "output", "handle": 3, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "lo"}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "vpn", "chain": "output", "handle": 4, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wg0-mullvad"}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "vpn", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "vpn", "chain": "output", "handle": 9, "comment": "dockroute", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "vboxnet0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "172.17.0.0", "len": 16}}}}, {"accept": null}]}},
      {"table": {"family": "ip", "name": "filter", "handle": 2}},
      {"chain": {"family": "ip", "table": "filter", "name": "OUTPUT", "handle": 1, "type": "filter", "hook": "output", "prio": 0, "policy": "drop"}}
    ]}"#;

    #[test]
    fn parse_ruleset_reads_nft_json() {
        let rs = parse_ruleset(MULLVAD).unwrap();
        assert_eq!(observe(&rs, Some(&scope())).0.len(), 2);
        assert!(parse_ruleset("{\"nftables\": [").is_err());
    }

    #[test]
    fn a_policy_drop_table_needs_accepts_in_both_base_chains() {
        let rs: Nftables = serde_json::from_str(MULLVAD).unwrap();
        let (desired, owned) = observe(&rs, Some(&scope()));
        let lines: Vec<String> = desired.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            lines,
            [
                "nftables -t inet vpn output -o vboxnet0 -d 172.17.0.0/16 -j ACCEPT (comment dockroute)",
                "nftables -t inet vpn input -i vboxnet0 -s 172.17.0.0/16 -j ACCEPT (comment dockroute)",
            ]
        );
        // the iptables-nft table is not judged here, and dockroute's rule is found with its handle
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].handle, Some(9));
        assert_eq!(owned[0].chain, "output");
    }

    #[test]
    fn insert_and_delete_commands_render_as_nft_json() {
        let rs: Nftables = serde_json::from_str(MULLVAD).unwrap();
        let (desired, owned) = observe(&rs, Some(&scope()));
        let json = serde_json::to_string(&insert_cmd(&desired[0])).unwrap();
        assert_eq!(
            json,
            r#"{"insert":{"rule":{"family":"inet","table":"vpn","chain":"output","expr":[{"match":{"left":{"meta":{"key":"oifname"}},"right":"vboxnet0","op":"=="}},{"match":{"left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"prefix":{"addr":"172.17.0.0","len":16}},"op":"=="}},{"accept":null}],"comment":"dockroute"}}}"#
        );
        let del = serde_json::to_string(&delete_cmd(&owned[0])).unwrap();
        assert!(del.contains(r#""handle":9"#), "{del}");
    }
}
