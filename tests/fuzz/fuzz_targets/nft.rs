//! `nft -j list ruleset` JSON -> the ruleset (`firewall::nft::parse_ruleset`), and the walk and
//! ownership on it (`firewall::nft::observe`).
//! Beyond "no panic": `up` is stable. Once its changes are made (as nft makes them: its insert
//! command's rule at the top of the chain with a new handle, deletes by handle), listing the
//! ruleset as JSON and reading it again gives the same repairs and nothing more to change.
#![no_main]

use dockroute::firewall::nft::{delete_cmd, insert_cmd, observe, parse_ruleset};
use dockroute::firewall::{FwChange, Scope, diff};
use libfuzzer_sys::fuzz_target;
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables};
use std::borrow::Cow;

fn scope() -> Scope {
    Scope {
        ifname: "vboxnet0".into(),
        nets: vec![
            "172.17.0.0/16".parse().unwrap(),
            "192.168.99.0/24".parse().unwrap(),
        ],
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ruleset) = parse_ruleset(text) else {
        return;
    };
    // what nft never lists: two chains of one name in a table, a rule before its chain, two
    // rules with one handle
    let mut chains = std::collections::HashSet::new();
    let mut orphans = std::collections::HashSet::new();
    let mut handles = std::collections::HashSet::new();
    for o in ruleset.objects.iter() {
        let ok = match o {
            NfObject::ListObject(NfListObject::Chain(c)) => {
                let key = (c.family, c.table.clone(), c.name.clone());
                !orphans.contains(&key) && chains.insert(key)
            }
            NfObject::ListObject(NfListObject::Rule(r)) => {
                let key = (r.family, r.table.clone(), r.chain.clone());
                if !chains.contains(&key) {
                    orphans.insert(key);
                }
                handles.insert((r.family, r.table.clone(), r.handle))
            }
            _ => true,
        };
        if !ok {
            return;
        }
    }
    let scope = scope();
    let (desired, before) = observe(&ruleset, Some(&scope));
    for r in &before {
        serde_json::to_string(&delete_cmd(r)).expect("a delete command renders");
    }

    // `up`: its changes, applied the way nft applies them (an insert puts the rule at the top of
    // its chain and gives it a new handle, a delete removes the rule with that handle); then the
    // ruleset is listed as JSON and read again
    let mut objects: Vec<NfObject<'static>> = ruleset.objects.to_vec();
    let mut handle = 1_000_000;
    let before: Vec<_> = before.into_iter().map(|r| (r, Vec::new())).collect();
    for change in diff(&desired, &before) {
        match change {
            FwChange::Insert { rule: r } => {
                let NfCmd::Insert(NfListObject::Rule(mut rule)) = insert_cmd(&r) else {
                    panic!("insert_cmd is not an insert of a rule");
                };
                rule.handle = Some(handle);
                handle += 1;
                let top = objects
                    .iter()
                    .position(|o| {
                        matches!(o, NfObject::ListObject(NfListObject::Rule(x))
                            if x.family == rule.family && x.table == rule.table && x.chain == rule.chain)
                    })
                    .unwrap_or(objects.len());
                objects.insert(top, NfObject::ListObject(NfListObject::Rule(rule)));
            }
            FwChange::Delete { rule: r, .. } => {
                let NfCmd::Delete(NfListObject::Rule(del)) = delete_cmd(&r) else {
                    panic!("delete_cmd is not a delete of a rule");
                };
                let Some(h) = del.handle else {
                    return; // no handle: not something nft lists
                };
                let i = objects
                    .iter()
                    .position(|o| {
                        matches!(o, NfObject::ListObject(NfListObject::Rule(x))
                            if x.family == del.family && x.table == del.table
                                && x.chain == del.chain && x.handle == Some(h))
                    })
                    .unwrap_or_else(|| panic!("the delete names no listed rule: {r}"));
                objects.remove(i);
            }
        }
    }
    let listed = serde_json::to_string(&Nftables {
        objects: Cow::Owned(objects),
    })
    .expect("the ruleset renders");
    let after = parse_ruleset(&listed).unwrap_or_else(|e| panic!("{e}: {listed}"));
    let (desired_after, now) = observe(&after, Some(&scope));
    assert_eq!(desired_after, desired, "dockroute's rules changed the plan");
    let now: Vec<_> = now.into_iter().map(|r| (r, Vec::new())).collect();
    let again = diff(&desired, &now);
    assert!(again.is_empty(), "a second up changes {again:?}");
});
