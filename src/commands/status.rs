//! `status`: what is installed and what the kernel really does with a container address.

use super::{emit, load_settings, store};
use dockroute::cli::{Cli, StatusArgs};
use dockroute::engine;
use dockroute::net::System;
use dockroute::report;

pub fn run(cli: &Cli, a: &StatusArgs) -> anyhow::Result<()> {
    let settings = load_settings(cli, None)?;
    let store = store(cli, &settings);
    futures_lite::future::block_on(async {
        let mut net = System::new()?;
        let st = engine::status(&mut net, &settings, &store, a.check_name.as_deref()).await?;
        let text = if cli.json {
            report::json(&st)
        } else {
            report::status(&st)
        };
        emit(&text, "")?;
        match st.degraded() {
            Some(d) => Err(d.into()),
            None => Ok(()),
        }
    })
}
