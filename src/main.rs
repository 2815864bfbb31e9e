//! The CLI edge: parse, set up logging, run, turn errors into one `error: ...` line and an exit
//! status. anyhow lives here only.

// The entry point is the C `main` below, not std's: see there. (The test harness, which has no
// tests to run here, keeps its own.)
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

use anyhow::{Context, bail};
use clap::Parser;
use clap::error::ErrorKind;
use dockroute::cli::{Cli, Command, InstallArgs, WatchArgs};
use dockroute::engine::{self, Hooks};
use dockroute::hooks;
use dockroute::net::System;
use dockroute::record::Store;
use dockroute::report;
use dockroute::settings::Settings;
use dockroute::watch;
use std::ffi::c_int;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};

/// The process entry point.
///
/// std's start-up would also install its stack-overflow handler, and on glibc finding the main
/// thread's stack for it means reading and parsing /proc/self/maps: 8% of the instructions and 15
/// of the system calls of a routes-only `up`, which is mostly start-up (README, Benchmark). The
/// two things std's start-up does that matter here, [`start_up`] does. A stack overflow still
/// ends the process on the guard page, only without std's message. Arguments reach
/// `std::env::args` as before (glibc hands them to std before `main`).
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const std::ffi::c_char) -> c_int {
    use std::io::Write;
    start_up();
    let code = cli();
    // std flushes stdout when its `main` returns; a C `main` returning does not.
    let flushed = std::io::stdout().flush();
    match (code, flushed) {
        (0, Err(_)) => 1,
        (code, _) => code,
    }
}

/// What std's start-up does that dockroute relies on. Descriptors 0, 1 and 2 are open (on
/// /dev/null if they came closed), so that neither the netlink socket nor a file of ours can become
/// stdout or stderr and receive output. SIGPIPE is ignored, so that a closed pipe is a write error
/// rather than death half-way through a change.
fn start_up() {
    use nix::libc;
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three pollfd structures for the length given, and a zero
    // timeout makes poll return at once; it only reports on the descriptors (POLLNVAL: closed).
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    if polled > 0 {
        for p in fds {
            if p.revents & libc::POLLNVAL != 0 {
                // The lowest free descriptor is this one: the ones below it are open by now.
                // Not close-on-exec, as std does it: the programs dockroute runs inherit it too.
                match nix::fcntl::open(
                    "/dev/null",
                    nix::fcntl::OFlag::O_RDWR,
                    nix::sys::stat::Mode::empty(),
                ) {
                    Ok(fd) => {
                        let _ = fd.into_raw_fd();
                    }
                    // Nowhere to say it: the descriptors for that are what is missing.
                    Err(_) => std::process::exit(2),
                }
            }
        }
    }
    // SAFETY: SIG_IGN installs no handler code; nothing else in the process handles SIGPIPE.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
}

/// Parse, run, report; returns the exit status: 0, 1 (failed), 2 (usage).
fn cli() -> c_int {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    // `watch` is a daemon: its log is what it has to say (one line per change)
    init_logging(if matches!(cli.command, Command::Watch(_)) {
        tracing::level_filters::LevelFilter::INFO
    } else {
        tracing::level_filters::LevelFilter::WARN
    });
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            1
        }
    }
}

/// Help and version print as clap renders them; every usage error becomes one line.
fn clap_error(e: clap::Error) -> c_int {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            eprintln!(
                "error: missing command: up, down, status, watch, install or uninstall (see dockroute --help)"
            );
            2
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {first}");
            2
        }
    }
}

/// Logs to stderr at the level in `DOCKROUTE_LOG` (error, warn, info, debug, trace; default warn,
/// info for `watch`).
fn init_logging(default: tracing::level_filters::LevelFilter) {
    let level = std::env::var("DOCKROUTE_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::level_filters::LevelFilter>().ok())
        .unwrap_or(default);
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

/// `DOCKROUTE_TEST_BACKSTOP_SECS=S` shortens watch's backstop re-check (tests of what sends no
/// events, such as iptables-legacy); at least 0.1 s.
fn test_backstop() -> Option<std::time::Duration> {
    let secs: f64 = std::env::var("DOCKROUTE_TEST_BACKSTOP_SECS")
        .ok()?
        .parse()
        .ok()?;
    (secs.is_finite() && secs > 0.0)
        .then(|| std::time::Duration::from_secs_f64(secs.clamp(0.1, 3600.0)))
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

/// `watch`: runs until SIGTERM or SIGINT; the settings are read again on SIGHUP and when the
/// config file changes.
fn watch(cli: &Cli, a: &WatchArgs) -> anyhow::Result<()> {
    if a.up.dry_run {
        bail!("watch applies changes as they become needed; use `up --dry-run` to preview them");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("dockroute watch changes the routing tables: run it as root (sudo)");
    }
    let load = || {
        Settings::load(
            cli.config.as_deref(),
            cli.state_dir.as_deref(),
            cli.json,
            Some(&a.up),
            std::env::var("DOCKER_HOST").ok(),
        )
    };
    let opts = watch::Options {
        down_on_exit: a.down_on_exit,
        backstop: test_backstop(),
    };
    watch::run(load, opts)?;
    Ok(())
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
        Command::Watch(a) => return watch(&cli, a),
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
    // No reactor: netlink requests are blocking calls, and the D-Bus client starts a runtime of its
    // own when it is needed (dns::resolved). Nothing here waits on an event loop.
    futures_lite::future::block_on(async {
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
            // files only, or a loop of its own: handled before the runtime starts
            Command::Install(_) | Command::Uninstall(_) | Command::Watch(_) => String::new(),
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
