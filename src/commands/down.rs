//! `down`: remove exactly what dockroute installed.

use super::{emit, hooks, load_settings, require_root, store};
use dockroute::cli::{Cli, DownArgs};
use dockroute::engine;
use dockroute::net::System;
use dockroute::report;

pub fn run(cli: &Cli, a: &DownArgs) -> anyhow::Result<()> {
    let mut settings = load_settings(cli, None)?;
    // `down` replays no recorded `up` settings; it removes a resolver file in the directory
    // the record names (`--resolver-dir` is only compared with it).
    if let Some(dir) = &a.resolver_dir {
        settings.resolver_dir = dir.clone();
    }
    let store = store(cli, &settings);
    futures_lite::future::block_on(async {
        let mut net = System::new()?;
        if !a.dry_run {
            require_root("down")?;
        }
        let o = engine::down(&mut net, &settings, &store, a.dry_run, hooks()).await?;
        let text = if cli.json {
            report::json(&o)
        } else {
            report::outcome("down", &o)
        };
        let done = match (o.dry_run, o.is_empty()) {
            (true, _) => "nothing was changed (dry run)",
            (false, true) => "down is complete (nothing needed removing)",
            (false, false) => "down is complete: its changes are applied",
        };
        emit(&text, done)?;
        Ok(())
    })
}

/// `down` as `uninstall` runs it: no flags, no output of its own.
pub fn for_uninstall(cli: &Cli) -> anyhow::Result<engine::Outcome> {
    let settings = load_settings(cli, None)?;
    let store = store(cli, &settings);
    futures_lite::future::block_on(async {
        let mut net = System::new()?;
        Ok(engine::down(&mut net, &settings, &store, false, hooks()).await?)
    })
}
