//! The CLI edge: parse, set up logging, run, turn errors into one `error: ...` line and an exit
//! status. anyhow lives here only.

use anyhow::{Context, bail};
use clap::Parser;
use clap::error::ErrorKind;
use dockroute::cli::{Cli, Command, InstallArgs};
use dockroute::engine::{self, Hooks};
use dockroute::hooks;
use dockroute::net::System;
use dockroute::record::Store;
use dockroute::report;
use dockroute::settings::Settings;
use std::path::{Path, PathBuf};
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
            eprintln!(
                "error: missing command: up, down, status, install or uninstall (see dockroute --help)"
            );
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

/// `install --hooks` / `uninstall`: files only, no network.
fn install(cli: &Cli, a: &InstallArgs) -> anyhow::Result<()> {
    if !a.hooks {
        bail!(
            "installing the service (systemd unit, launchd job) is not built yet; `dockroute install --hooks` installs the VPN post-connect hooks"
        );
    }
    let root = a.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    if !a.print && root == Path::new("/") && !nix::unistd::geteuid().is_root() {
        bail!("dockroute install writes to /etc: run it as root (sudo), or use --print");
    }
    let bin = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("finding the dockroute binary")?;
    let results = hooks::install(&root, &bin, !a.print)?;
    if a.print && !cli.json {
        for (h, r) in hooks::HOOKS.iter().zip(&results) {
            if r.action != "skipped (no such directory)" {
                println!("# {} -> {}", h.client, r.path.display());
                print!("{}", hooks::render(h, &bin)?);
            }
        }
    }
    print_hooks(cli.json, &results);
    Ok(())
}

fn print_hooks(json: bool, results: &[hooks::HookResult]) {
    if json {
        print!("{}", report::json(&results));
    } else {
        for r in results {
            println!("{}: {} ({})", r.action, r.path.display(), r.client);
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Install(a) => return install(&cli, a),
        Command::Uninstall(a) => {
            let root = a.root.clone().unwrap_or_else(|| PathBuf::from("/"));
            if root == Path::new("/") && !nix::unistd::geteuid().is_root() {
                bail!("dockroute uninstall removes files from /etc: run it as root (sudo)");
            }
            print_hooks(cli.json, &hooks::uninstall(&root)?);
            return Ok(());
        }
        _ => {}
    }
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
    // No reactor, no timers: netlink requests block, and the D-Bus client brings its own runtime
    // (dns::resolved). What an async step would wait on here does not exist.
    let rt = tokio::runtime::Builder::new_current_thread()
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
            // files only: handled before the runtime starts
            Command::Install(_) | Command::Uninstall(_) => String::new(),
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
