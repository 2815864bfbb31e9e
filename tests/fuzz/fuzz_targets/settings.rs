//! The config file: TOML text -> Settings (pure: `Settings::parse_config`).
//! Beyond "no panic": an error is one line (no control character) naming the file and a line
//! that exists (two overlapping subnets too: at the later one's line); accepted settings satisfy
//! what `up` relies on, and written back as a config file they read back the same.
#![no_main]

use dockroute::options::{DnsMode, FirewallMode};
use dockroute::settings::{Settings, SettingsError};
use dockroute::validate;
use libfuzzer_sys::fuzz_target;
use std::fmt::Write;
use std::path::Path;

const PATH: &str = "/etc/dockroute/config.toml";

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => write!(out, "\\u{:04X}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn render(s: &Settings) -> String {
    let r = &s.request;
    let mut t = String::new();
    if let Some(i) = &r.interface {
        writeln!(t, "interface = {}", toml_str(i)).unwrap();
    }
    if let Some((ip, _)) = &r.vm_ip {
        writeln!(t, "vm_ip = \"{ip}\"").unwrap();
    }
    if let Some(m) = &r.machine {
        writeln!(t, "machine = {}", toml_str(m)).unwrap();
    }
    let nets: Vec<String> = r.subnets.iter().map(|n| format!("\"{n}\"")).collect();
    writeln!(t, "subnets = [{}]", nets.join(", ")).unwrap();
    writeln!(t, "domain = {}", toml_str(&s.domain)).unwrap();
    writeln!(t, "nameserver = \"{}\"", s.nameserver).unwrap();
    let dns = match s.dns {
        DnsMode::Auto => "auto",
        DnsMode::Resolved => "resolved",
        DnsMode::ResolvConf => "resolv-conf",
        DnsMode::ResolverDir => "resolver-dir",
        DnsMode::Off => "off",
    };
    writeln!(t, "dns = \"{dns}\"").unwrap();
    let dir = s
        .resolver_dir
        .to_str()
        .expect("a path read from TOML is UTF-8");
    writeln!(t, "resolver_dir = {}", toml_str(dir)).unwrap();
    let fw = match s.firewall {
        FirewallMode::Auto => "auto",
        FirewallMode::Off => "off",
    };
    writeln!(t, "firewall = \"{fw}\"").unwrap();
    if let Some(w) = r.wait {
        writeln!(t, "wait = {:?}", w.as_secs_f64()).unwrap();
    }
    t
}

/// Everything but `wait` (compared with a nanosecond of slack: seconds are an f64 in TOML).
fn key(s: &Settings) -> String {
    let mut r = s.request.clone();
    r.wait = None;
    format!(
        "{r:?} {} {} {:?} {:?} {:?}",
        s.domain, s.nameserver, s.dns, s.resolver_dir, s.firewall
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let s = match Settings::parse_config(Path::new(PATH), text) {
        Ok(s) => s,
        Err(e) => {
            let line = match &e {
                SettingsError::At { path, line, .. } => {
                    assert_eq!(path, Path::new(PATH));
                    *line
                }
                e => panic!("not an error at a line of the file: {e:?}"),
            };
            let e = e.to_string();
            assert!(
                !e.contains(|c: char| c.is_control()),
                "error is not one plain line: {e:?}"
            );
            assert!(e.starts_with(&format!("{PATH} line {line}: ")), "{e:?}");
            assert!(
                line >= 1 && line <= text.matches('\n').count() + 1,
                "line {line} does not exist: {e:?}"
            );
            return;
        }
    };
    let r = &s.request;
    assert!(!r.subnets.is_empty());
    for (i, a) in r.subnets.iter().enumerate() {
        assert_eq!(validate::subnet(&a.to_string()), Ok(*a));
        for b in &r.subnets[..i] {
            assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
        }
    }
    assert_eq!(
        validate::domain(&s.domain).as_deref(),
        Ok(s.domain.as_str())
    );
    assert_eq!(
        validate::nameserver(&s.nameserver.to_string()),
        Ok(s.nameserver)
    );
    if let Some(i) = &r.interface {
        assert_eq!(validate::interface(i).as_deref(), Ok(i.as_str()));
    }
    if let Some(m) = &r.machine {
        assert_eq!(validate::machine_name(m).as_deref(), Ok(m.as_str()));
    }
    if let Some((ip, _)) = &r.vm_ip {
        assert_eq!(validate::ipv4(&ip.to_string()), Ok(*ip));
    }
    if let Some(w) = r.wait {
        assert!(w.as_secs_f64() <= 3600.0);
    }

    let again_text = render(&s);
    let again = Settings::parse_config(Path::new(PATH), &again_text)
        .unwrap_or_else(|e| panic!("does not read back: {e}\n{again_text}"));
    assert_eq!(key(&again), key(&s), "\n{again_text}");
    match (again.request.wait, r.wait) {
        (None, None) => {}
        (Some(a), Some(b)) => assert!(a.abs_diff(b).as_nanos() <= 1, "wait {a:?} != {b:?}"),
        (a, b) => panic!("wait {a:?} != {b:?}"),
    }
});
