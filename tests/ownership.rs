//! dockroute owns only the routes and rules of the exact shapes it creates (issue 9, item 6):
//! anything else carrying its protocol tag (100) is left alone and reported by `status`.
#![cfg(target_os = "linux")]

mod common;
use common::*;

/// Entries tagged 100 that dockroute never creates: another table, another metric in main, a
/// blackhole in its table, rules at another preference, to another table, without a destination.
const LOOKALIKES: [&str; 6] = [
    "route add 10.77.0.0/16 via 192.168.99.100 proto 100 table 777",
    "route add 172.17.0.0/16 via 192.168.99.100 proto 100 metric 99",
    "route add blackhole 10.78.0.0/16 proto 100 table 5017",
    "rule add pref 5200 to 172.17.0.0/16 lookup 5017 proto 100",
    "rule add pref 5100 to 10.77.0.0/16 lookup 777 proto 100",
    "rule add pref 5100 from 10.0.0.0/8 lookup 5017 proto 100",
];

#[test]
fn tagged_entries_of_other_shapes_survive_up_and_down_byte_for_byte() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    for cmd in LOOKALIKES {
        lab.ip(cmd);
    }
    let before = lab.snapshot();

    let first = up(&lab);
    assert!(
        first.stdout.contains("applied 5 change(s)"),
        "{}",
        first.stdout
    );
    assert!(lab.reaches_container());
    let st = lab.dockroute(&["--json", "status"]).ok().json();
    assert_eq!(st["installed"].as_array().unwrap().len(), 5, "{st}");
    assert_eq!(st["in_sync"], true, "{st}");
    let tagged = st["tagged_not_owned"].as_array().unwrap();
    assert_eq!(tagged.len(), LOOKALIKES.len(), "{st}");
    assert!(
        tagged
            .iter()
            .any(|t| t["kind"] == "route" && t["table"] == 777 && t["dst"] == "10.77.0.0/16"),
        "{st}"
    );
    assert!(
        tagged
            .iter()
            .any(|t| t["kind"] == "rule" && t["pref"] == 5200),
        "{st}"
    );
    let warnings = st["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), LOOKALIKES.len(), "{st}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("tagged like dockroute's but not its shape"),
        "{st}"
    );
    let human = lab.dockroute(&["status"]).ok().stdout;
    for want in [
        "WARNING: 6 entries tagged like dockroute's but not its shape (left alone)",
        "route 10.77.0.0/16 via 192.168.99.100 dev vboxnet0 table 777 proto dockroute",
        "rule 5200: from all to 172.17.0.0/16 lookup dockroute proto dockroute",
    ] {
        assert!(human.contains(want), "missing {want:?} in:\n{human}");
    }

    let again = lab.dockroute(&["--json", "up", "--vm-ip", VM_IP]).ok();
    assert_eq!(again.json()["changes"], serde_json::json!([]));
    lab.dockroute(&["down"]).ok();
    assert_eq!(
        lab.snapshot(),
        before,
        "down removed or changed an entry that is not dockroute's"
    );
}

#[test]
fn a_tagged_rule_the_kernel_would_match_first_is_never_deleted_in_place_of_dockroutes() {
    if !privileged() {
        return;
    }
    // The kernel deletes the first rule matching the fields a request names: a tagged rule with
    // one more selector, ahead of dockroute's at the same preference, matches first.
    const AHEAD: &str = "rule add pref 5100 to 172.17.0.0/16 iif lo lookup 5017 proto 100";
    let lab = Lab::new();
    lab.ip(AHEAD);
    up(&lab);
    assert!(lab.reaches_container());
    let run = lab.dockroute(&["down"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("carries dockroute's tag but is not its own")
            && run.stderr.lines().count() == 1,
        "{}",
        run.stderr
    );
    let rules = lab.ip("rule show");
    assert!(
        rules.contains("from all to 172.17.0.0/16 iif lo lookup 5017 proto 100"),
        "the other rule was deleted:\n{rules}"
    );

    // Behind dockroute's rule it is safe: down removes dockroute's and leaves it.
    let lab = Lab::new();
    let before = lab.snapshot();
    up(&lab);
    lab.ip(AHEAD);
    lab.dockroute(&["down"]).ok();
    let rules = lab.ip("rule show");
    assert!(rules.contains("iif lo lookup 5017 proto 100"), "{rules}");
    assert!(
        !rules.contains("from all to 172.17.0.0/16 lookup"),
        "{rules}"
    );
    lab.ip("rule del pref 5100 to 172.17.0.0/16 iif lo lookup 5017 proto 100");
    assert_eq!(lab.snapshot(), before);
}
