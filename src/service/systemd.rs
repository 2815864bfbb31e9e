//! The systemd unit: `systemd/dockroute.service` at the top of the repository is its source of
//! truth, built into the binary; `install` fills in the binary's absolute path.

use super::{Place, ServiceError};
use std::path::Path;

/// The unit's name, for systemctl.
pub const UNIT: &str = "dockroute.service";
const TEMPLATE: &str = include_str!("../../systemd/dockroute.service");

/// Where the unit goes, relative to the install root.
pub const PLACE: Place = Place {
    client: "systemd (dockroute watch from boot)",
    dir: "etc/systemd/system",
    file: UNIT,
    mode: 0o644,
    create_dir: true,
    is_ours,
};

/// The unit for the dockroute binary at `bin`.
pub fn render(bin: &Path) -> Result<String, ServiceError> {
    Ok(TEMPLATE.replace(super::BIN, super::job_binary(bin)?))
}

/// A unit is dockroute's when its first line is dockroute's header.
pub fn is_ours(content: &str) -> bool {
    content
        .lines()
        .next()
        .is_some_and(|l| l.starts_with(super::MARK))
}

/// systemd manages this boot (the test systemd itself uses, sd_booted).
#[cfg(target_os = "linux")]
pub fn running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// systemd's control program, run through [`crate::exec`] (system directories only, trusted).
#[cfg(target_os = "linux")]
const SYSTEMCTL: &str = "systemctl";

/// Load the unit, enable it and start it; a re-install restarts it (the binary may be new).
#[cfg(target_os = "linux")]
pub fn activate(reinstall: bool) -> Result<Vec<String>, ServiceError> {
    let mut steps = vec![
        super::run_tool(SYSTEMCTL, &["daemon-reload"])?,
        super::run_tool(SYSTEMCTL, &["enable", "--now", UNIT])?,
    ];
    if reinstall {
        steps.push(super::run_tool(SYSTEMCTL, &["try-restart", UNIT])?);
    }
    Ok(steps)
}

/// Whether systemd has the unit enabled or running, wherever its file lives (/etc/systemd/system
/// where `install` puts it, /lib/systemd/system where the Debian package does, a runtime or
/// vendor directory): `systemctl is-enabled` and `systemctl is-active` answer for the unit by
/// name. A unit systemd does not know is neither.
#[cfg(target_os = "linux")]
pub fn in_use() -> Result<bool, ServiceError> {
    let ask = |verb: &str| -> Result<String, ServiceError> {
        let args = [verb.to_string(), UNIT.to_string()];
        crate::exec::output(SYSTEMCTL, &args, None)
            .map(|o| o.stdout.trim().to_string())
            .map_err(|e| ServiceError::Tool(format!("systemctl {verb} {UNIT}: {e}")))
    };
    Ok(enabled(&ask("is-enabled")?) || active(&ask("is-active")?))
}

/// `systemctl is-enabled`'s answers that start the unit at boot (or name it by a link).
pub fn enabled(state: &str) -> bool {
    matches!(
        state,
        "enabled" | "enabled-runtime" | "linked" | "linked-runtime" | "alias"
    )
}

/// `systemctl is-active`'s answers for a unit that runs, is starting, stopping or waiting to
/// restart.
pub fn active(state: &str) -> bool {
    matches!(
        state,
        "active" | "activating" | "deactivating" | "reloading" | "refreshing"
    )
}

/// Stop and disable the unit (before its file is removed).
#[cfg(target_os = "linux")]
pub fn deactivate() -> Result<Vec<String>, ServiceError> {
    Ok(vec![super::run_tool(
        SYSTEMCTL,
        &["disable", "--now", UNIT],
    )?])
}

/// After the unit file is gone.
#[cfg(target_os = "linux")]
pub fn forget() -> Result<Vec<String>, ServiceError> {
    Ok(vec![super::run_tool(SYSTEMCTL, &["daemon-reload"])?])
}

/// What to run by hand when dockroute did not tell systemd.
pub fn manual_steps() -> Vec<String> {
    vec![
        "systemctl daemon-reload".into(),
        format!("systemctl enable --now {UNIT}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_watch_from_the_binary_after_the_network() {
        let u = render(Path::new("/usr/local/bin/dockroute")).unwrap();
        assert!(is_ours(&u));
        assert!(
            u.contains("\nExecStart=/usr/local/bin/dockroute watch\n"),
            "{u}"
        );
        for line in [
            "After=network-online.target",
            "Wants=network-online.target",
            "Restart=on-failure",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "SystemCallArchitectures=native",
            "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
            "StateDirectory=dockroute",
            "WantedBy=multi-user.target",
        ] {
            assert!(u.lines().any(|l| l.starts_with(line)), "{line}");
        }
        let caps = u
            .lines()
            .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
            .unwrap();
        // nothing under /run is writable (iptables-legacy's lock is made before the start and
        // opened read-only); IP traffic only to private networks, loopback and link-local
        let writable = u
            .lines()
            .filter_map(|l| l.strip_prefix("ReadWritePaths="))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            writable
                .split(' ')
                .all(|p| !p.trim_start_matches('-').starts_with("/run")),
            "{writable}"
        );
        assert!(u.contains("\nExecStartPre=+/usr/bin/touch -- /run/xtables.lock\n"));
        assert!(u.contains("\nIPAddressDeny=any\n"));
        assert!(u.contains(
            "\nIPAddressAllow=localhost link-local 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16\n"
        ));
        assert!(u.contains("\nUMask=0077\n"));
        assert!(caps.split(' ').any(|c| c == "CAP_NET_ADMIN"));
        assert!(!caps.contains("CAP_SYS_ADMIN"));
        assert!(!u.contains(super::super::BIN));
        for bad in [
            "relative/dockroute",
            "/opt/my dir/dockroute",
            "/opt/50%/dockroute",
            "/x\n/dockroute",
        ] {
            assert!(render(Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
