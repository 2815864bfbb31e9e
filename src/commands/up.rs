//! `up`: route the container subnets through the VM (also the post-VPN-connect hook).

use super::{emit, hooks, load_settings, require_root, store};
use dockroute::cli::{Cli, UpArgs};
use dockroute::engine;
use dockroute::net::System;
use dockroute::report;
use dockroute::settings::Settings;

pub fn run(cli: &Cli, a: &UpArgs) -> anyhow::Result<()> {
    let settings = load_settings(cli, Some(a))?;
    let store = store(cli, &settings);
    // No reactor: netlink requests are blocking calls, and the D-Bus client starts a runtime of its
    // own when it is needed (dns::resolved). Nothing here waits on an event loop.
    futures_lite::future::block_on(async {
        let mut net = System::new()?;
        if !a.dry_run {
            require_root("up")?;
        }
        let o = engine::up(&mut net, &settings, &store, a.dry_run, hooks()).await?;
        let text = if cli.json {
            report::json(&o)
        } else {
            replay_note(&settings) + &report::outcome("up", &o)
        };
        emit(&text, applied(&o))?;
        match o.degraded() {
            Some(d) => Err(d.into()),
            None => Ok(()),
        }
    })
}

/// A bare `up` that re-applies the last `up`'s settings says so.
fn replay_note(settings: &Settings) -> String {
    match &settings.request.replayed {
        Some(flags) => format!(
            "settings: the last up's settings ({flags}), recorded in {}\n",
            settings.state_dir.display()
        ),
        None => String::new(),
    }
}

/// What `up` did before its report is written, for the error if it cannot be.
fn applied(o: &engine::Outcome) -> &'static str {
    match (o.dry_run, o.is_empty()) {
        (true, _) => "nothing was changed (dry run)",
        (false, true) => "up is complete (nothing needed changing)",
        (false, false) => {
            "up is complete: its changes are applied and recorded (dockroute status shows them)"
        }
    }
}
