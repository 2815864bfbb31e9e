//! `nft -j list ruleset` JSON -> the ruleset (`firewall::nft::read`, object by object), and the
//! walk and ownership on it (`firewall::nft::observe`).
//! Beyond "no panic": `up` is stable. Once its changes are made (as nft makes them: its insert
//! command's rule at the top of the chain with a new handle, deletes by handle), listing the
//! ruleset as JSON and reading it again gives the same repairs, the same foreign rules and
//! nothing more to change.
#![no_main]

use dockroute::firewall::nft::{delete_cmd, insert_cmd, observe, read};
use dockroute::firewall::{FwChange, Scope, diff};
use libfuzzer_sys::fuzz_target;
use nftables::schema::{NfCmd, NfListObject};
use serde_json::Value;
use std::collections::HashSet;

fn scope() -> Scope {
    Scope {
        ifname: "vboxnet0".into(),
        nets: vec![
            "172.17.0.0/16".parse().unwrap(),
            "192.168.99.0/24".parse().unwrap(),
        ],
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// An object of the list as `nft::read` takes it: its first key and that key's value.
fn kind_body(o: &Value) -> Option<(&str, &Value)> {
    o.as_object()
        .and_then(|m| m.iter().next())
        .map(|(k, v)| (k.as_str(), v))
}

/// Whether the rule object `o` is in family/table/chain (and has `handle`, when given).
fn rule_in(o: &Value, family: &str, table: &str, chain: &str, handle: Option<u64>) -> bool {
    matches!(kind_body(o), Some(("rule", b))
        if text(b, "family") == family && text(b, "table") == table && text(b, "chain") == chain
            && handle.is_none_or(|h| b.get("handle").and_then(Value::as_u64) == Some(h)))
}

/// What nft never lists: a table twice, a chain twice in a table or before its table, a rule
/// before its chain, a rule without a handle (or one the nftables crate cannot name: over
/// u32), two rules with one handle in a table.
fn listable(objects: &[Value]) -> bool {
    let mut tables = HashSet::new();
    let mut chains = HashSet::new();
    let mut handles = HashSet::new();
    for o in objects {
        let Some((kind, b)) = kind_body(o) else {
            continue;
        };
        let family = text(b, "family");
        let ok = match kind {
            "table" => tables.insert((family, text(b, "name"))),
            "chain" => {
                tables.contains(&(family, text(b, "table")))
                    && chains.insert((family, text(b, "table"), text(b, "name")))
            }
            "rule" => {
                let h = b.get("handle").and_then(Value::as_u64);
                chains.contains(&(family, text(b, "table"), text(b, "chain")))
                    && h.is_some_and(|h| u32::try_from(h).is_ok())
                    && handles.insert((family, text(b, "table"), h))
            }
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Ok(text_in) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ruleset) = read(text_in) else {
        return;
    };
    let doc: Value = serde_json::from_str(text_in).expect("read it, so JSON");
    let mut objects = doc["nftables"].as_array().expect("read it").clone();
    if !listable(&objects) {
        return;
    }
    let scope = scope();
    let (desired, before, foreign) = observe(&ruleset, Some(&scope));
    for r in &before {
        serde_json::to_string(&delete_cmd(r)).expect("a delete command renders");
    }

    // `up`: its changes, applied the way nft applies them (an insert puts the rule at the top of
    // its chain and gives it a new handle, a delete removes the rule with that handle); then the
    // ruleset is listed as JSON and read again
    let mut handle = 1_000_000u64;
    let before: Vec<_> = before.into_iter().map(|r| (r, Vec::new())).collect();
    for change in diff(&desired, &before) {
        match change {
            FwChange::Insert { rule: r } => {
                let NfCmd::Insert(NfListObject::Rule(rule)) = insert_cmd(&r) else {
                    panic!("insert_cmd is not an insert of a rule");
                };
                let mut body = serde_json::to_value(&rule).expect("an insert command renders");
                body["handle"] = handle.into();
                handle += 1;
                let (f, t, c) = (
                    text(&body, "family"),
                    text(&body, "table"),
                    text(&body, "chain"),
                );
                let top = match objects.iter().position(|o| rule_in(o, f, t, c, None)) {
                    Some(i) => i,
                    None => {
                        objects
                            .iter()
                            .position(|o| {
                                matches!(kind_body(o), Some(("chain", b))
                                    if text(b, "family") == f && text(b, "table") == t
                                        && text(b, "name") == c)
                            })
                            .unwrap_or_else(|| panic!("an insert into a missing chain: {r}"))
                            + 1
                    }
                };
                let obj = serde_json::json!({ "rule": body });
                objects.insert(top, obj);
            }
            FwChange::Delete { rule: r, .. } => {
                let NfCmd::Delete(NfListObject::Rule(del)) = delete_cmd(&r) else {
                    panic!("delete_cmd is not a delete of a rule");
                };
                let del = serde_json::to_value(&del).expect("a delete command renders");
                let h = del.get("handle").and_then(Value::as_u64);
                assert!(h.is_some(), "a delete without a handle: {r}");
                let (f, t, c) = (
                    text(&del, "family"),
                    text(&del, "table"),
                    text(&del, "chain"),
                );
                let i = objects
                    .iter()
                    .position(|o| rule_in(o, f, t, c, h))
                    .unwrap_or_else(|| panic!("the delete names no listed rule: {r}"));
                objects.remove(i);
            }
        }
    }
    let listed = serde_json::to_string(&serde_json::json!({ "nftables": objects }))
        .expect("the ruleset renders");
    let after = read(&listed).unwrap_or_else(|e| panic!("{e}: {listed}"));
    let (desired_after, now, foreign_after) = observe(&after, Some(&scope));
    assert_eq!(desired_after, desired, "dockroute's rules changed the plan");
    assert_eq!(foreign_after, foreign, "dockroute's rules read as foreign");
    assert_eq!(after.warnings, ruleset.warnings);
    let now: Vec<_> = now.into_iter().map(|r| (r, Vec::new())).collect();
    let again = diff(&desired, &now);
    assert!(again.is_empty(), "a second up changes {again:?}");
});
