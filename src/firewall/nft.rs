//! nftables tables of VPN clients (Mullvad's `inet mullvad`, NordVPN's `inet nordvpn`, ...):
//! every base chain on the input and output hooks is walked on its own, because an accept in
//! one table's chain does not override a drop in another's. Reading and writing go through the
//! `nftables` crate (`nft -j`). The tables iptables-nft manages are left to the iptables side.

use super::walk::{self, Chain, Rule};
use super::{Direction, FirewallError, Foreign, Repair, Scope, TAG};
use crate::exec;
use ipnet::Ipv4Net;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{self, NfCmd, NfListObject, NfObject, Nftables};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::NfFamily;
use serde_json::Value;
use std::borrow::Cow;
use std::net::Ipv4Addr;

pub const BACKEND: &str = "nftables";

/// Tables that iptables-nft owns (its rules are judged through `iptables -S`).
pub(crate) fn iptables_nft_table(family: &str, name: &str) -> bool {
    family == "ip" && matches!(name, "filter" | "raw" | "mangle" | "nat" | "security")
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

/// Fold one statement the nftables crate could read into the walk's model.
fn add_statement(out: &mut Rule, st: &Statement) {
    let verdict = |out: &mut Rule, t: String| out.extra |= out.target.replace(t).is_some();
    match st {
        Statement::Match(m) => {
            let neg = match m.op {
                Operator::EQ | Operator::IN => false,
                Operator::NEQ => true,
                _ => {
                    out.other = true;
                    return;
                }
            };
            match (&m.left, &m.right) {
                (
                    Expression::Named(NamedExpression::Meta(Meta { key })),
                    Expression::String(name),
                ) if matches!(key, MetaKey::Oifname | MetaKey::Iifname) => {
                    let v = Some((neg, name.to_string()));
                    let slot = if *key == MetaKey::Oifname {
                        &mut out.oif
                    } else {
                        &mut out.iif
                    };
                    out.extra |= std::mem::replace(slot, v).is_some();
                }
                (Expression::Named(NamedExpression::Payload(Payload::PayloadField(f))), right)
                    if f.protocol == "ip" && matches!(f.field.as_ref(), "saddr" | "daddr") =>
                {
                    match ipv4_of(right) {
                        Some(net) if f.field == "saddr" => {
                            out.extra |= out.src.replace((neg, net)).is_some()
                        }
                        Some(net) => out.extra |= out.dst.replace((neg, net)).is_some(),
                        None => out.other = true, // a set, a range, ...
                    }
                }
                _ => out.other = true,
            }
        }
        Statement::Accept(_) => verdict(out, "ACCEPT".into()),
        Statement::Drop(_) => verdict(out, "DROP".into()),
        Statement::Reject(_) => verdict(out, "REJECT".into()),
        Statement::Return(_) => verdict(out, "RETURN".into()),
        Statement::Jump(t) | Statement::Goto(t) => {
            out.extra = true;
            out.target = Some(t.target.to_string());
        }
        _ => out.extra = true, // counters, logs, marks, ...
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// One nftables rule (the JSON object inside `{"rule": ...}`) in the walk's model, statement by
/// statement: a statement the nftables crate cannot read (`ip option rr exists`, a newer
/// expression) makes only this rule "may match, not dockroute's shape", with a warning.
fn to_rule(body: &Value) -> (Rule, bool) {
    let expr = body.get("expr").and_then(Value::as_array);
    let mut out = Rule {
        chain: text(body, "chain").to_string(),
        handle: body.get("handle").and_then(Value::as_u64),
        comment: body
            .get("comment")
            .and_then(Value::as_str)
            .map(str::to_string),
        source: format!(
            "handle {} {}",
            body.get("handle").and_then(Value::as_u64).unwrap_or(0),
            expr.map(|e| Value::Array(e.clone()).to_string())
                .unwrap_or_default()
        ),
        ..Default::default()
    };
    let mut unreadable = false;
    for st in expr.into_iter().flatten() {
        match serde_json::from_value::<Statement<'static>>(st.clone()) {
            Ok(st) => add_statement(&mut out, &st),
            Err(_) => {
                out.other = true;
                out.extra = true;
                unreadable = true;
            }
        }
    }
    (out, unreadable)
}

/// Per table: its chains in the walk's model, and its entry points (base chains on input/output).
#[derive(Debug)]
pub struct Table {
    pub family: String,
    pub name: String,
    /// The kernel's handle of the table: a table re-created under the same name gets a new one
    /// (while its rule handles start again from 1).
    pub handle: Option<u64>,
    pub chains: Vec<Chain>,
    entries: Vec<(String, Direction)>,
}

/// The ruleset as read, and what could not be read in it.
#[derive(Debug, Default)]
pub struct Ruleset {
    pub tables: Vec<Table>,
    pub warnings: Vec<String>,
}

fn bad_output(msg: impl std::fmt::Display) -> FirewallError {
    FirewallError::Parse {
        program: "nft".into(),
        msg: msg.to_string(),
    }
}

/// Read `nft -j list ruleset` (or `list table`) output (pure; the fuzzer's entry point, tests/fuzz): object by object and rule by rule, so
/// that something this version does not know spoils only itself. Tables of families other than
/// ip and inet, and iptables-nft's own tables, are left out.
pub fn read(json: &str) -> Result<Ruleset, FirewallError> {
    let doc: Value = serde_json::from_str(json).map_err(bad_output)?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_output("no \"nftables\" list in its JSON output"))?;
    let mut rs = Ruleset::default();
    fn table_mut<'a>(rs: &'a mut Ruleset, body: &Value) -> Option<&'a mut Table> {
        let (family, name) = (text(body, "family"), text(body, "table"));
        rs.tables
            .iter_mut()
            .find(|t| t.family == family && t.name == name)
    }
    for obj in objects {
        let Some((kind, body)) = obj.as_object().and_then(|m| m.iter().next()) else {
            continue;
        };
        match kind.as_str() {
            "table" => {
                let family = text(body, "family");
                let name = text(body, "name");
                if !matches!(family, "ip" | "inet") || iptables_nft_table(family, name) {
                    continue;
                }
                rs.tables.push(Table {
                    family: family.to_string(),
                    name: name.to_string(),
                    handle: body.get("handle").and_then(Value::as_u64),
                    chains: Vec::new(),
                    entries: Vec::new(),
                });
            }
            "chain" => {
                let Some(t) = table_mut(&mut rs, body) else {
                    continue;
                };
                let name = text(body, "name").to_string();
                let hook = body.get("hook").and_then(Value::as_str);
                let policy = hook.map(|_| match text(body, "policy") {
                    "drop" => "DROP".to_string(),
                    _ => "ACCEPT".to_string(),
                });
                match hook {
                    Some("output") => t.entries.push((name.clone(), Direction::Out)),
                    Some("input") => t.entries.push((name.clone(), Direction::In)),
                    _ => {}
                }
                t.chains.push(Chain {
                    name,
                    policy,
                    rules: Vec::new(),
                });
            }
            "rule" => {
                let (rule, unreadable) = to_rule(body);
                let Some(t) = table_mut(&mut rs, body) else {
                    continue;
                };
                let warning = unreadable.then(|| {
                    format!(
                        "nftables {} {} {}: rule handle {} has an expression dockroute cannot read (judged as one that may match)",
                        t.family,
                        t.name,
                        rule.chain,
                        rule.handle.unwrap_or(0)
                    )
                });
                if let Some(c) = t.chains.iter_mut().find(|c| c.name == rule.chain) {
                    c.rules.push(rule);
                }
                rs.warnings.extend(warning);
            }
            _ => {}
        }
    }
    Ok(rs)
}

/// Repairs needed (for `scope`), dockroute's rules present (with their table's handle), and
/// rules that carry its tag but not its shape.
pub fn observe(rs: &Ruleset, scope: Option<&Scope>) -> (Vec<Repair>, Vec<Repair>, Vec<Foreign>) {
    let mut desired = Vec::new();
    let mut owned = Vec::new();
    let mut foreign = Vec::new();
    for t in &rs.tables {
        let table = format!("{} {}", t.family, t.name);
        let mut misplaced = Vec::new();
        if let Some(scope) = scope {
            let entries: Vec<(&str, Direction)> =
                t.entries.iter().map(|(c, d)| (c.as_str(), *d)).collect();
            let plan = walk::plan(BACKEND, &table, &t.chains, &entries, scope);
            desired.extend(plan.repairs);
            misplaced = plan.misplaced;
        }
        for c in &t.chains {
            let tagged = c.rules.iter().enumerate();
            for (i, r) in tagged.filter(|(_, r)| r.comment.as_deref() == Some(TAG)) {
                if walk::ours(r) {
                    let mut repair = walk::owned_repair(BACKEND, &table, &c.name, r);
                    repair.table_handle = t.handle;
                    repair.misplaced = misplaced.contains(&(c.name.clone(), i));
                    owned.push(repair);
                } else {
                    foreign.push(Foreign {
                        backend: BACKEND.into(),
                        table: table.clone(),
                        chain: c.name.clone(),
                        rule: r.source.clone(),
                    });
                }
            }
        }
    }
    (desired, owned, foreign)
}

fn split_table(table: &str) -> (NfFamily, String) {
    match table.split_once(' ') {
        Some((f, n)) => (parse_family(f), n.to_string()),
        None => (NfFamily::INet, table.to_string()),
    }
}

/// `r` in nft's own syntax, as `nft -a list ruleset` would show it with its place in front:
/// `rule inet mullvad input iifname "vboxnet0" ip saddr 192.168.99.0/24 accept comment
/// "dockroute" # handle 12` (the handle when known).
pub fn rule_text(r: &Repair) -> String {
    let (key, field) = match r.direction {
        Direction::Out => ("oifname", "daddr"),
        Direction::In => ("iifname", "saddr"),
    };
    let verdict = if r.verdict == "RETURN" {
        "return"
    } else {
        "accept"
    };
    let mut text = format!(
        "rule {} {} {key} \"{}\" ip {field} {} {verdict} comment \"{}\"",
        r.table.escape_debug(),
        r.chain.escape_debug(),
        r.ifname.escape_debug(),
        r.net,
        super::TAG
    );
    if let Some(h) = r.handle {
        text += &format!(" # handle {h}");
    }
    text
}

/// `left == right`.
fn equals(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

/// `iifname NAME` or `oifname NAME` (`key`).
pub(crate) fn ifname_is(key: MetaKey, name: &str) -> Statement<'static> {
    equals(
        Expression::Named(NamedExpression::Meta(Meta { key })),
        Expression::String(Cow::Owned(name.to_string())),
    )
}

/// `ip FIELD ADDRESS` (`saddr`, `daddr`).
pub(crate) fn ip_addr_is(field: &'static str, addr: Ipv4Addr) -> Statement<'static> {
    equals(
        ip_field(field),
        Expression::String(Cow::Owned(addr.to_string())),
    )
}

/// `ip FIELD NETWORK/LEN` (`saddr`, `daddr`).
pub(crate) fn ip_net_is(field: &'static str, net: Ipv4Net) -> Statement<'static> {
    equals(
        ip_field(field),
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
            len: u32::from(net.prefix_len()),
        })),
    )
}

fn ip_field(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip"),
            field: Cow::Borrowed(field),
        },
    )))
}

/// Insert a rule of `expr` marked with dockroute's comment at the top of `chain`.
pub(crate) fn insert_rule_cmd(
    family: NfFamily,
    table: &str,
    chain: &str,
    expr: Vec<Statement<'static>>,
) -> NfCmd<'static> {
    NfCmd::Insert(NfListObject::Rule(schema::Rule {
        family,
        table: Cow::Owned(table.to_string()),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(expr),
        comment: Some(Cow::Borrowed(TAG)),
        ..Default::default()
    }))
}

/// Delete the rule of `chain` at `handle`.
pub(crate) fn delete_rule_cmd(
    family: NfFamily,
    table: &str,
    chain: &str,
    handle: Option<u64>,
) -> NfCmd<'static> {
    NfCmd::Delete(NfListObject::Rule(schema::Rule {
        family,
        table: Cow::Owned(table.to_string()),
        chain: Cow::Owned(chain.to_string()),
        handle: handle.and_then(|h| u32::try_from(h).ok()),
        ..Default::default()
    }))
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
    let expr = vec![ifname_is(key, &r.ifname), ip_net_is(field, r.net), verdict];
    insert_rule_cmd(family, &table, &r.chain, expr)
}

/// The nftables command that deletes dockroute's rule `r` (by its handle).
pub fn delete_cmd(r: &Repair) -> NfCmd<'static> {
    let (family, table) = split_table(&r.table);
    delete_rule_cmd(family, &table, &r.chain, r.handle)
}

/// nft's own words for "no such table, chain or rule" (ENOENT), in `list` and `delete` alike:
/// `Error: Could not process rule: No such file or directory`, or `Error: No such file or
/// directory; did you mean table ...`.
pub fn is_gone(e: &FirewallError) -> bool {
    match e {
        FirewallError::Exec(e) => e
            .failure_text()
            .is_some_and(|t| t.contains("No such file or directory")),
        _ => false,
    }
}

/// Commands as one nft JSON document (nft applies it in one transaction).
pub(crate) fn batch(cmds: Vec<NfCmd<'static>>) -> Result<String, FirewallError> {
    let doc = Nftables {
        objects: Cow::Owned(cmds.into_iter().map(NfObject::CmdObject).collect()),
    };
    serde_json::to_string(&doc).map_err(bad_output)
}

/// Run commands through `nft -j -f -`, in one transaction.
pub fn run(cmds: Vec<NfCmd<'static>>) -> Result<(), FirewallError> {
    let json = batch(cmds)?;
    let args = ["-j", "-f", "-"].map(String::from);
    exec::run("nft", &args, Some(json.as_bytes()))?;
    Ok(())
}

/// Which nftables tables to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tables {
    /// `nft -j list ruleset`: everything, in one run.
    Ruleset,
    /// The ip and inet tables netlink lists, minus iptables-nft's, one `nft -j list table` each
    /// (none when there are none); `list ruleset` where netlink cannot list them.
    Listed,
    /// Only these (`family name`, e.g. `inet mullvad`).
    Only(Vec<String>),
}

/// The ruleset. `list ruleset` also reads (and renders as JSON) every rule of iptables-nft's
/// tables, which with a large iptables firewall is most of the time, so `up` reads table by table.
pub fn ruleset(tables: &Tables) -> Result<Ruleset, FirewallError> {
    let listed = match tables {
        Tables::Ruleset => None,
        _ => table_names(),
    };
    let names: Vec<String> = match (tables, listed) {
        (Tables::Only(o), Some(names)) => names.into_iter().filter(|t| o.contains(t)).collect(),
        (Tables::Only(o), None) => o.clone(),
        (Tables::Listed, Some(names)) => names,
        (Tables::Ruleset, _) | (Tables::Listed, None) => {
            let args = ["-j", "list", "ruleset"].map(String::from);
            return read(&exec::run("nft", &args, None)?);
        }
    };
    let mut rs = Ruleset::default();
    for t in names {
        let Some((family, name)) = t.split_once(' ') else {
            continue;
        };
        if !matches!(family, "ip" | "inet") || iptables_nft_table(family, name) {
            continue;
        }
        let args = ["-j", "list", "table", family, name].map(String::from);
        match exec::run("nft", &args, None).map_err(FirewallError::from) {
            Ok(json) => {
                let one = read(&json)?;
                rs.tables.extend(one.tables);
                rs.warnings.extend(one.warnings);
            }
            Err(e) if is_gone(&e) => {} // deleted since it was listed
            Err(e) => return Err(e),
        }
    }
    Ok(rs)
}

/// The ip and inet nftables tables (`family name`), or `None` when netlink cannot say.
#[cfg(target_os = "linux")]
fn table_names() -> Option<Vec<String>> {
    match super::nfnl::tables() {
        Ok(t) => Some(
            t.into_iter()
                .filter_map(|(family, name)| match family {
                    1 => Some(format!("inet {name}")), // NFPROTO_INET
                    2 => Some(format!("ip {name}")),   // NFPROTO_IPV4
                    _ => None,
                })
                .collect(),
        ),
        Err(e) => {
            tracing::debug!("listing nftables tables over netlink: {e}; running nft instead");
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn table_names() -> Option<Vec<String>> {
    None
}

/// Delete dockroute's rule `r`, but only while it is still there: right before the deletion, the
/// table is read again, and it must be the same table (its kernel handle: a VPN client that
/// re-creates its table reuses rule handles) holding, at `r`'s handle, a rule of dockroute's tag
/// and shape for the same link and network. Returns whether it deleted.
///
/// What remains is the time between that read and the deletion (two runs of nft, a few
/// milliseconds): nft offers no conditional deletion.
pub fn delete_checked(r: &Repair) -> Result<bool, FirewallError> {
    let (family, name) = r
        .table
        .split_once(' ')
        .unwrap_or(("inet", r.table.as_str()));
    let args = ["-j", "list", "table", family, name].map(String::from);
    let json = match exec::run("nft", &args, None) {
        Ok(j) => j,
        Err(e) => {
            let e = FirewallError::from(e);
            return if is_gone(&e) { Ok(false) } else { Err(e) };
        }
    };
    let now = read(&json)?;
    let Some(t) = now
        .tables
        .iter()
        .find(|t| t.family == family && t.name == name)
    else {
        return Ok(false);
    };
    if r.table_handle.is_none() || t.handle != r.table_handle {
        tracing::info!(
            "nftables table {} was re-created: its rules are not dockroute's to delete",
            r.table
        );
        return Ok(false);
    }
    let still = t
        .chains
        .iter()
        .find(|c| c.name == r.chain)
        .and_then(|c| c.rules.iter().find(|x| x.handle == r.handle))
        .is_some_and(|x| {
            walk::ours(x) && super::same(&walk::owned_repair(BACKEND, &r.table, &r.chain, x), r)
        });
    if !still {
        return Ok(false);
    }
    match run(vec![delete_cmd(r)]) {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) => Ok(false),
        Err(e) => Err(e),
    }
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
        let rs = read(MULLVAD).unwrap();
        assert_eq!(observe(&rs, Some(&scope())).0.len(), 2);
        assert!(read("{\"nftables\": [").is_err());
    }

    #[test]
    fn a_policy_drop_table_needs_accepts_in_both_base_chains() {
        let rs = read(MULLVAD).unwrap();
        let (desired, owned, foreign) = observe(&rs, Some(&scope()));
        assert!(foreign.is_empty() && rs.warnings.is_empty());
        let lines: Vec<String> = desired.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            lines,
            [
                "nft rule inet vpn output oifname \"vboxnet0\" ip daddr 172.17.0.0/16 accept comment \"dockroute\"",
                "nft rule inet vpn input iifname \"vboxnet0\" ip saddr 172.17.0.0/16 accept comment \"dockroute\"",
            ]
        );
        // the iptables-nft table is not judged here, and dockroute's rule is found with its handle
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].handle, Some(9));
        assert_eq!(owned[0].table_handle, Some(1));
        assert_eq!(owned[0].chain, "output");
        assert_eq!(
            owned[0].to_string(),
            "nft rule inet vpn output oifname \"vboxnet0\" ip daddr 172.17.0.0/16 accept comment \"dockroute\" # handle 9"
        );
    }

    /// MULLVAD with one more rule after its last one, in its output chain.
    fn with_rule(rule: &str) -> String {
        let last = r#"{"accept": null}]}},
      {"table": {"family": "ip""#;
        let at = MULLVAD.find(last).unwrap() + r#"{"accept": null}]}},"#.len();
        format!(
            r#"{}
      {{"rule": {{"family": "inet", "table": "vpn", "chain": "output", "handle": 10, {rule}}}}},{}"#,
            &MULLVAD[..at],
            &MULLVAD[at..]
        )
    }

    #[test]
    fn an_unknown_expression_spoils_only_its_own_rule() {
        // `ip option rr exists drop`: the nftables crate has no `ip option` expression
        let json = with_rule(
            r#""expr": [{"match": {"op": "==", "left": {"ip option": {"name": "rr"}}, "right": true}}, {"drop": null}]"#,
        );
        assert!(
            serde_json::from_str::<Nftables>(&json).is_err(),
            "the crate learnt it"
        );
        let rs = read(&json).unwrap();
        assert_eq!(rs.warnings.len(), 1, "{:?}", rs.warnings);
        assert!(rs.warnings[0].contains("inet vpn output: rule handle 10"));
        let (desired, owned, _) = observe(&rs, Some(&scope()));
        assert_eq!(desired.len(), 2);
        assert_eq!(owned.len(), 1);
        // the unknown rule is judged as one that may drop our traffic
        let chain = &rs.tables[0].chains[0];
        let r = chain.rules.iter().find(|r| r.handle == Some(10)).unwrap();
        assert!(r.other && r.target.as_deref() == Some("DROP"));
    }

    #[test]
    fn a_tagged_rule_of_another_shape_is_not_dockroutes() {
        for rule in [
            // tcp dport 25 drop comment "dockroute"
            r#""comment": "dockroute", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 25}}, {"drop": null}]"#,
            // dockroute's shape plus a counter
            r#""comment": "dockroute", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "vboxnet0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "172.17.0.0", "len": 16}}}}, {"counter": null}, {"accept": null}]"#,
            // a drop in dockroute's shape
            r#""comment": "dockroute", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "vboxnet0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "172.17.0.0", "len": 16}}}}, {"drop": null}]"#,
            // the wrong direction: out on the link, from the network
            r#""comment": "dockroute", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "vboxnet0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "172.17.0.0", "len": 16}}}}, {"accept": null}]"#,
        ] {
            let rs = read(&with_rule(rule)).unwrap();
            let (_, owned, foreign) = observe(&rs, None);
            assert_eq!(owned.len(), 1, "{rule}");
            assert_eq!(owned[0].handle, Some(9));
            assert_eq!(foreign.len(), 1, "{rule}");
            assert!(
                foreign[0].rule.starts_with("handle 10 "),
                "{:?}",
                foreign[0]
            );
        }
    }

    #[test]
    fn nfts_own_enoent_text_means_already_gone() {
        let failed = |msg: &str| {
            FirewallError::Exec(exec::ExecError::Failed {
                program: "nft".into(),
                args: vec![],
                code: Some(1),
                msg: msg.into(),
            })
        };
        // what nft 1.0.6 prints for a missing rule handle, and for a missing table
        assert!(is_gone(&failed(
            "internal:0:0-0: Error: Could not process rule: No such file or directory"
        )));
        assert!(is_gone(&failed(
            "Error: No such file or directory; did you mean table 'vpn' in family inet?"
        )));
        assert!(!is_gone(&failed(
            "Error: Could not process rule: Operation not permitted"
        )));
    }

    #[test]
    fn unreadable_output_is_an_error() {
        assert!(read("garbage").is_err());
        assert!(read("{}").is_err());
        assert!(read(r#"{"nftables": []}"#).unwrap().tables.is_empty());
    }

    #[test]
    fn insert_and_delete_commands_render_as_nft_json() {
        let rs = read(MULLVAD).unwrap();
        let (desired, owned, _) = observe(&rs, Some(&scope()));
        let json = serde_json::to_string(&insert_cmd(&desired[0])).unwrap();
        assert_eq!(
            json,
            r#"{"insert":{"rule":{"family":"inet","table":"vpn","chain":"output","expr":[{"match":{"left":{"meta":{"key":"oifname"}},"right":"vboxnet0","op":"=="}},{"match":{"left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"prefix":{"addr":"172.17.0.0","len":16}},"op":"=="}},{"accept":null}],"comment":"dockroute"}}}"#
        );
        let del = serde_json::to_string(&delete_cmd(&owned[0])).unwrap();
        assert!(del.contains(r#""handle":9"#), "{del}");
    }
}
