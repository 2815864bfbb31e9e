//! `watch`: the daemon.

use super::test_backstop;
use anyhow::bail;
use dockroute::cli::{Cli, WatchArgs};
use dockroute::watch;

/// `watch`: runs until SIGTERM or SIGINT; the settings are read again on SIGHUP and when the
/// config file changes.
pub fn run(cli: &Cli, a: &WatchArgs) -> anyhow::Result<()> {
    if a.up.dry_run {
        bail!("watch applies changes as they become needed; use `up --dry-run` to preview them");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("dockroute watch changes the routing tables: run it as root (sudo)");
    }
    let load = || super::load_settings(cli, Some(&a.up));
    let opts = watch::Options {
        down_on_exit: a.down_on_exit,
        backstop: test_backstop(),
    };
    watch::run(load, opts)?;
    Ok(())
}
