//! Names from the kernel reach the terminal escaped (issue 9, item 7): a link named with an ESC
//! sequence cannot recolour or rewrite the terminal through `status`, `up` or an error, and a
//! link name that is not UTF-8 does not make every command fail.
#![cfg(target_os = "linux")]

mod common;
use common::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

fn ip_raw(lab: &Lab, args: &[&OsStr]) {
    let out = Command::new("ip")
        .arg("-n")
        .arg(lab.host())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair named `name` (raw bytes) and `peer`, up, with `addr` on it.
fn odd_link(lab: &Lab, name: &[u8], addr: &str) {
    let name = OsStr::from_bytes(name);
    let s = OsStr::new;
    // a real tun device (status lists tunnels by their kind)
    ip_raw(
        lab,
        &[s("tuntap"), s("add"), s("dev"), name, s("mode"), s("tun")],
    );
    ip_raw(lab, &[s("addr"), s("add"), s(addr), s("dev"), name]);
    ip_raw(lab, &[s("link"), s("set"), name, s("up")]);
}

const ESC_NAME: &[u8] = b"tun\x1b[2J\x1b[31m";

#[test]
fn a_link_name_with_escape_sequences_is_shown_escaped() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    // The kernel accepts ESC in a link name (it refuses only '/', ':' and white space).
    odd_link(&lab, ESC_NAME, "10.66.0.2/24");
    let dev = OsStr::from_bytes(ESC_NAME);
    let s = OsStr::new;
    ip_raw(
        &lab,
        &[
            s("route"),
            s("add"),
            s("172.17.0.0/16"),
            s("dev"),
            dev,
            s("metric"),
            s("0"),
        ],
    );
    assert!(
        lab.ip("-br link").contains('\u{1b}'),
        "the lab has no such link"
    );

    let up = up(&lab);
    assert!(!up.stdout.contains('\u{1b}'), "{:?}", up.stdout);
    let st = lab.dockroute(&["status"]).ok();
    assert!(
        !st.stdout.contains('\u{1b}'),
        "raw ESC in:\n{:?}",
        st.stdout
    );
    for want in [
        r"vpn          tun\x1b[2J\x1b[31m (OpenVPN / OpenConnect (tun))",
        r"route 172.17.0.0/16 dev tun\x1b[2J\x1b[31m table main proto boot",
    ] {
        assert!(
            st.stdout.contains(want),
            "missing {want:?} in:\n{}",
            st.stdout
        );
    }
    // JSON keeps the exact name, JSON-escaped.
    let json = lab.dockroute(&["--json", "status"]).ok();
    assert!(!json.stdout.contains('\u{1b}'));
    assert!(
        json.stdout.contains(r"tun\u001b[2J\u001b[31m"),
        "{}",
        json.stdout
    );
    assert_eq!(
        json.json()["vpn"]["links"][0]["name"],
        "tun\u{1b}[2J\u{1b}[31m"
    );

    // An error quoting the name: escaped too.
    let run = lab.dockroute(&["up", "--interface", "tun\u{1b}[2J\u{1b}[31m"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        !run.stderr.contains('\u{1b}') && run.stderr.contains(r"tun\x1b[2J"),
        "{:?}",
        run.stderr
    );
}

#[test]
fn a_link_name_that_is_not_utf8_is_shown_and_breaks_nothing() {
    if !privileged() {
        return;
    }
    let lab = Lab::new();
    odd_link(&lab, b"tun\xff\xfe", "10.66.0.2/24");
    let s = OsStr::new;
    let dev = OsStr::from_bytes(b"tun\xff\xfe");
    ip_raw(
        &lab,
        &[
            s("rule"),
            s("add"),
            s("pref"),
            s("6000"),
            s("iif"),
            dev,
            s("lookup"),
            s("99"),
        ],
    );
    up(&lab);
    assert!(lab.reaches_container());
    let st = lab.dockroute(&["status"]).ok();
    assert!(
        st.stdout.contains(r"vpn          tun\x1a\x1a"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout
            .contains(r"rule 6000: from all iif tun\x1a\x1a lookup 99"),
        "{}",
        st.stdout
    );
    lab.dockroute(&["down"]).ok();
    assert_eq!(lab.tagged(), 0);
}
