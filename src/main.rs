//! The CLI edge: parse, set up logging, run, turn errors into one `error: ...` line and an exit
//! status. anyhow lives here only.

use anyhow::{Context, bail};
use clap::Parser;
use clap::error::ErrorKind;
use dockroute::cli::{Cli, Command};
use dockroute::engine::{self, Hooks};
use dockroute::net::System;
use dockroute::record::Store;
use dockroute::report;
use dockroute::settings::Settings;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version print as clap renders them; every usage error becomes one line.
fn clap_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            eprintln!("error: missing command: up, down or status (see dockroute --help)");
            ExitCode::from(2)
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {first}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr at the level in `DOCKROUTE_LOG` (error, warn, info, debug, trace; default warn).
fn init_logging() {
    let level = std::env::var("DOCKROUTE_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::level_filters::LevelFilter>().ok())
        .unwrap_or(tracing::level_filters::LevelFilter::WARN);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// `DOCKROUTE_TEST_STALL_AFTER=N` makes `up`/`down` stop before their Nth change (tests kill it
/// there to prove a half-applied run can be cleaned up).
fn hooks() -> Hooks {
    Hooks {
        stall_before_change: std::env::var("DOCKROUTE_TEST_STALL_AFTER")
            .ok()
            .and_then(|v| v.parse().ok()),
    }
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "dockroute {what} changes the routing tables: run it as root (sudo), or use --dry-run"
        );
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let up_args = match &cli.command {
        Command::Up(a) => Some(a),
        _ => None,
    };
    let settings = Settings::load(
        cli.config.as_deref(),
        cli.state_dir.as_deref(),
        cli.json,
        up_args,
        std::env::var("DOCKER_HOST").ok(),
    )?;
    let store = Store::new(&settings.state_dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let mut net = System::new()?;
        let out = match &cli.command {
            Command::Up(a) => {
                if !a.dry_run {
                    require_root("up")?;
                }
                let o = engine::up(&mut net, &settings, &store, a.dry_run, hooks()).await?;
                if cli.json {
                    report::json(&o)
                } else {
                    report::outcome("up", &o)
                }
            }
            Command::Down(a) => {
                if !a.dry_run {
                    require_root("down")?;
                }
                let o = engine::down(&mut net, &settings, &store, a.dry_run, hooks()).await?;
                if cli.json {
                    report::json(&o)
                } else {
                    report::outcome("down", &o)
                }
            }
            Command::Status(a) => {
                let st =
                    engine::status(&mut net, &settings, &store, a.check_name.as_deref()).await?;
                if cli.json {
                    report::json(&st)
                } else {
                    report::status(&st)
                }
            }
        };
        print!("{out}");
        Ok(())
    })
}
