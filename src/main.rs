//! The CLI edge: parse, set up logging, run, turn errors into one `error: ...` line and an exit
//! status. anyhow lives here only.

// The entry point is the C `main` below, not std's: see there. (The test harness, which has no
// tests to run here, keeps its own.)
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

mod commands;

use anyhow::Context;
use clap::error::ErrorKind;
use commands::{OutputLost, emit};
use dockroute::cli::{Cli, Command, exit};
use dockroute::engine;
use dockroute::report;
use std::ffi::{OsString, c_int};
use std::io::Write;
use std::os::fd::IntoRawFd;

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
    start_up();
    let code = cli();
    // std flushes stdout when its `main` returns; a C `main` returning does not. (Every output
    // is flushed where it is written, see [`emit`]; this is for anything that was not.)
    let flushed = std::io::stdout().flush();
    match (code, flushed) {
        (exit::OK, Err(_)) => exit::OUTPUT,
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

/// Parse, run, report; returns the exit status ([`exit`]: 0 done, 1 failed, 2 usage, 3 degraded,
/// 4 done but the output was lost).
fn cli() -> c_int {
    let args: Vec<OsString> = std::env::args_os().collect();
    // Known before parsing, so that a usage error can be JSON too.
    let json = wants_json(&args);
    let cli = match dockroute::cli::parse(&args) {
        Ok(cli) => cli,
        Err(e) => return clap_error(e, json),
    };
    // `watch` is a daemon: its log is what it has to say (one line per change)
    let default = if matches!(cli.command, Command::Watch(_)) {
        tracing::level_filters::LevelFilter::INFO
    } else {
        tracing::level_filters::LevelFilter::WARN
    };
    init_logging(cli.verbose, cli.quiet, default);
    match run(cli) {
        Ok(()) => exit::OK,
        Err(e) if e.downcast_ref::<engine::Degraded>().is_some() => {
            // the command ran: not an error, but the containers are not reached
            let _ = writeln!(
                std::io::stderr().lock(),
                "{}",
                report::escape_controls(&format!("{e}").replace('\n', " "))
            );
            exit::DEGRADED
        }
        Err(e) => match e.downcast_ref::<OutputLost>() {
            // stdout is what failed: the error goes to stderr, JSON or not
            Some(lost) => {
                error_line(&lost.to_string());
                exit::OUTPUT
            }
            None => {
                fail(json, &format!("{e:#}").replace('\n', " "), &[]);
                exit::ERROR
            }
        },
    }
}

/// Whether the command line asks for JSON: `--json` anywhere before a `--`.
fn wants_json(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

/// One `error: ...` line on stderr. A failing stderr has nowhere left to report to.
fn error_line(msg: &str) {
    // Errors quote link names, paths and values: shown, never obeyed by the terminal.
    let _ = writeln!(
        std::io::stderr().lock(),
        "error: {}",
        report::escape_controls(msg)
    );
}

/// Report a failure: with --json `{"error": MSG}` (and `"help"`: clap's tips, when there are any)
/// on stdout, else one line `error: MSG; TIP; ...` on stderr. If stdout cannot take the JSON,
/// stderr gets the line.
fn fail(json: bool, msg: &str, help: &[String]) {
    if json {
        let mut v = serde_json::json!({ "error": msg });
        if !help.is_empty() {
            v["help"] = serde_json::json!(help);
        }
        if emit(&format!("{v}\n"), "").is_ok() {
            return;
        }
    }
    let mut line = msg.to_string();
    for h in help {
        line += "; ";
        line += h;
    }
    error_line(&line);
}

/// Help and version print as clap renders them (exit 0); a usage error keeps clap's message and
/// tips (valid values, "a similar argument exists") without the usage footer (exit 2).
fn clap_error(e: clap::Error, json: bool) -> c_int {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            match emit(&e.render().to_string(), "") {
                Ok(()) => exit::OK,
                Err(lost) => {
                    error_line(&lost.to_string());
                    exit::OUTPUT
                }
            }
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            use clap::CommandFactory;
            let names: Vec<String> = Cli::command()
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            fail(
                json,
                &format!(
                    "missing command: one of {} (see dockroute --help)",
                    names.join(", ")
                ),
                &[],
            );
            exit::USAGE
        }
        _ => {
            let (msg, help) = usage_error(&e.render().to_string());
            fail(json, &msg, &help);
            exit::USAGE
        }
    }
}

/// Clap's rendered usage error as its first line (without `error: `) and the lines after it
/// up to the usage footer, trimmed, blank lines dropped.
fn usage_error(rendered: &str) -> (String, Vec<String>) {
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let mut msg = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let mut help: Vec<String> = lines
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    // "the following required arguments were not provided:" goes on with what they are
    if msg.ends_with(':') && !help.is_empty() {
        msg = format!("{msg} {}", help.join(", "));
        help.clear();
    }
    (msg, help)
}

/// Logs to stderr: -q errors only, -v info, -vv debug, -vvv trace; without either flag the level
/// in `DOCKROUTE_LOG` (error, warn, info, debug, trace); default warn (info for `watch`).
fn init_logging(verbose: u8, quiet: bool, default: tracing::level_filters::LevelFilter) {
    use tracing::level_filters::LevelFilter;
    let level = match (quiet, verbose) {
        (true, _) => LevelFilter::ERROR,
        (false, 1) => LevelFilter::INFO,
        (false, 2) => LevelFilter::DEBUG,
        (false, 3..) => LevelFilter::TRACE,
        (false, 0) => std::env::var("DOCKROUTE_LOG")
            .ok()
            .and_then(|v| v.parse::<LevelFilter>().ok())
            .unwrap_or(default),
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Hand the command to its file in `commands/`.
fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Up(a) => commands::up::run(&cli, a),
        Command::Down(a) => commands::down::run(&cli, a),
        Command::Status(a) => commands::status::run(&cli, a),
        Command::Watch(a) => commands::watch::run(&cli, a),
        Command::Install(a) => commands::install::install(&cli, a),
        Command::Uninstall(a) => commands::install::uninstall(&cli, a),
        Command::Completions(a) => Ok(emit(
            &String::from_utf8_lossy(&dockroute::cli::completions(a.shell)),
            "",
        )?),
        Command::Manpage => {
            let page = dockroute::cli::manpage().context("rendering the manual page")?;
            Ok(emit(&String::from_utf8_lossy(&page), "")?)
        }
    }
}
