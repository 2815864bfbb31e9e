//! The CLI edge: parse, set up logging, run, turn errors into one `error: ...` line and an exit
//! status. anyhow lives here only.

// The entry point is the C `main` below, not std's: see there. (The test harness, which has no
// tests to run here, keeps its own.)
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

use anyhow::{Context, bail};
use clap::Parser;
use clap::error::ErrorKind;
use dockroute::cli::{Cli, Command, InstallArgs, UninstallArgs, WatchArgs, exit};
use dockroute::engine::{self, Hooks};
use dockroute::net::System;
use dockroute::record::Store;
use dockroute::report;
use dockroute::service::{self, Init};
use dockroute::settings::Settings;
use dockroute::watch;
use std::ffi::{OsString, c_int};
use std::io::Write;
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
    let cli = match Cli::try_parse_from(&args) {
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

/// The command's output was written up to a failure (closed pipe, full disk): an ordinary
/// error, not a panic, and it says what was already done.
#[derive(Debug)]
struct OutputLost {
    err: std::io::Error,
    /// What the command did before it tried to report it ("" if nothing worth saying).
    done: &'static str,
}

impl std::fmt::Display for OutputLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not write the output to stdout: {}", self.err)?;
        if !self.done.is_empty() {
            write!(f, "; {}", self.done)?;
        }
        Ok(())
    }
}

impl std::error::Error for OutputLost {}

/// Write `text` to stdout and flush it; a failure is an [`OutputLost`] naming `done`.
fn emit(text: &str, done: &'static str) -> Result<(), OutputLost> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|err| OutputLost { err, done })
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
    let msg = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let help = lines
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
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

/// Test hooks, in debug builds only (release builds have neither the hooks nor their variables):
/// `DOCKROUTE_TEST_STALL_AFTER=N` makes `up`/`down` stop before their Nth change, and
/// `DOCKROUTE_TEST_STALL_RENAME=NAME` before renaming a temporary file over a file named NAME
/// (tests kill it there to prove a half-applied run can be cleaned up).
#[cfg(debug_assertions)]
fn hooks() -> Hooks {
    if let Some(name) = std::env::var_os("DOCKROUTE_TEST_STALL_RENAME") {
        dockroute::fsutil::set_stall_before_rename(name);
    }
    Hooks {
        stall_before_change: std::env::var("DOCKROUTE_TEST_STALL_AFTER")
            .ok()
            .and_then(|v| v.parse().ok()),
    }
}

#[cfg(debug_assertions)]
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

#[cfg(not(debug_assertions))]
fn test_backstop() -> Option<std::time::Duration> {
    None
}

#[cfg(not(debug_assertions))]
fn hooks() -> Hooks {
    Hooks::default()
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "dockroute {what} changes the routing tables: run it as root (sudo), or use --dry-run"
        );
    }
    Ok(())
}

/// `install`: the boot job (and with --hooks the VPN hooks), then the service manager is told.
/// `--print` writes nothing.
fn install(cli: &Cli, a: &InstallArgs) -> anyhow::Result<()> {
    let init = a.init.unwrap_or_else(Init::native);
    let bin = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("finding the dockroute binary")?;
    let root = a.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let targets = service::targets(init, a.hooks, &bin)?;
    if a.print {
        if let Err(e) = service::check_binary(&bin) {
            tracing::warn!("{e}");
        }
        if a.hooks {
            hooks_note(cli, &root, true);
        }
        return print_targets(cli.json, init, &root, &targets);
    }
    let system = root == Path::new("/");
    if system && !nix::unistd::geteuid().is_root() {
        bail!("dockroute install writes to /etc: run it as root (sudo), or use --print");
    }
    if system && init != Init::native() {
        bail!(
            "--init {} is not this system's service manager: use it with --print or --root DIR",
            init_name(init)
        );
    }
    service::check_binary(&bin)?;
    let files = service::install(&root, &targets)?;
    let (ran, to_run) = if system && service::manager_running(init) {
        let reinstall = files[0].action != "installed";
        (service::activate(init, &root, reinstall)?, Vec::new())
    } else {
        (Vec::new(), init.manual_steps())
    };
    let report = InstallReport {
        files,
        ran,
        to_run,
        down: None,
    };
    let mut text = report.render(cli.json);
    if a.hooks {
        text += &hooks_note(cli, &root, false);
    }
    emit(
        &text,
        "the files are installed (dockroute install --print shows them)",
    )?;
    Ok(())
}

fn init_name(init: Init) -> &'static str {
    match init {
        Init::Systemd => "systemd",
        Init::Launchd => "launchd",
    }
}

/// `install --print`: exactly the job file on stdout (a unit, or a plist); with --hooks each hook
/// follows under a `# ==> PATH <==` line.
fn print_targets(
    json: bool,
    init: Init,
    root: &Path,
    targets: &[service::Target],
) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Printed<'a> {
        client: &'static str,
        path: PathBuf,
        text: &'a str,
    }
    if json {
        let all: Vec<Printed> = targets
            .iter()
            .map(|t| Printed {
                client: t.place.client,
                path: t.place.path(root),
                text: &t.body,
            })
            .collect();
        #[derive(serde::Serialize)]
        struct Out<'a> {
            init: Init,
            files: Vec<Printed<'a>>,
        }
        emit(&report::json(&Out { init, files: all }), "")?;
        return Ok(());
    }
    let mut text = String::new();
    for (i, t) in targets.iter().enumerate() {
        if i > 0 {
            text += &format!(
                "# ==> {} ({}) <==\n",
                t.place.path(root).display(),
                t.place.client
            );
        }
        text += &t.body;
    }
    emit(&text, "")?;
    Ok(())
}

/// What `install` and `uninstall` did.
#[derive(serde::Serialize)]
struct InstallReport {
    files: Vec<service::FileResult>,
    /// The service manager commands that ran.
    ran: Vec<String>,
    /// The commands to run by hand (no service manager was told).
    to_run: Vec<String>,
    /// uninstall: what `down` removed.
    down: Option<engine::Outcome>,
}

impl InstallReport {
    fn render(&self, json: bool) -> String {
        if json {
            return report::json(self);
        }
        let mut s = String::new();
        for r in &self.files {
            s += &format!("{}: {} ({})\n", r.action, r.path.display(), r.client);
        }
        for c in &self.ran {
            s += &format!("ran: {c}\n");
        }
        if !self.to_run.is_empty() {
            s += "the service manager was not told; to start the job on the target system, run as root:\n";
            for c in &self.to_run {
                s += &format!("  {c}\n");
            }
        }
        if let Some(d) = &self.down {
            s += &report::outcome("down", d);
        }
        s
    }
}

/// `uninstall`: stop the job (a running `watch` would put back what `down` removes), `down`,
/// then remove the job file and the hooks. With --root: files only.
fn uninstall(cli: &Cli, a: &UninstallArgs) -> anyhow::Result<()> {
    let root = a.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let system = root == Path::new("/");
    if system && !nix::unistd::geteuid().is_root() {
        bail!("dockroute uninstall removes files from /etc and runs down: run it as root (sudo)");
    }
    let init = Init::native();
    let mut ran = Vec::new();
    let mut down = None;
    let mut down_err = None;
    if system {
        let manager = service::manager_running(init);
        if manager && std::fs::symlink_metadata(init.place().path(&root)).is_ok() {
            ran.extend(service::deactivate(init)?);
        }
        match run_down(cli) {
            Ok(o) => down = Some(o),
            Err(e) => down_err = Some(e),
        }
    }
    let files = service::uninstall(&root, &service::places())?;
    if system
        && service::manager_running(init)
        && files
            .iter()
            .any(|f| f.action == "removed" && f.client == init.place().client)
    {
        ran.extend(service::forget(init)?);
    }
    let report = InstallReport {
        files,
        ran,
        to_run: Vec::new(),
        down,
    };
    let written = emit(
        &report.render(cli.json),
        "the files are removed (and down has run)",
    );
    match down_err {
        Some(e) => Err(e.context("the files are removed, but dockroute down failed")),
        None => Ok(written?),
    }
}

/// `down` as the `down` command runs it (for `uninstall`).
/// The state directory, with the lock timeout the command line asks for.
fn store(cli: &Cli, settings: &Settings) -> Store {
    Store::new(&settings.state_dir).with_lock_timeout(
        cli.lock_timeout
            .unwrap_or(dockroute::record::DEFAULT_LOCK_TIMEOUT),
    )
}

fn run_down(cli: &Cli) -> anyhow::Result<engine::Outcome> {
    let settings = Settings::load(
        cli.config.as_deref(),
        cli.state_dir.as_deref(),
        cli.json,
        None,
        std::env::var("DOCKER_HOST").ok(),
    )?;
    let store = store(cli, &settings);
    futures_lite::future::block_on(async {
        let mut net = System::new()?;
        Ok(engine::down(&mut net, &settings, &store, false, hooks()).await?)
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

/// `install --hooks`: which settings the hooks' bare `dockroute up` will use; a warning when it
/// has nothing to go by.
fn hooks_note(cli: &Cli, root: &Path, print: bool) -> String {
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    let config = cli
        .config
        .clone()
        .unwrap_or_else(|| under(dockroute::settings::DEFAULT_CONFIG));
    let state = cli
        .state_dir
        .clone()
        .unwrap_or_else(|| under(dockroute::record::DEFAULT_STATE_DIR));
    let found = dockroute::settings::HookSettings::find(&config, &state);
    if !found.vm_named {
        tracing::warn!("{found}");
    } else if print || cli.json {
        tracing::info!("{found}");
    } else {
        return format!("hooks: {found}\n");
    }
    String::new()
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
        Command::Uninstall(a) => return uninstall(&cli, a),
        Command::Completions(a) => {
            return Ok(emit(
                &String::from_utf8_lossy(&dockroute::cli::completions(a.shell)),
                "",
            )?);
        }
        Command::Manpage => {
            let page = dockroute::cli::manpage().context("rendering the manual page")?;
            return Ok(emit(&String::from_utf8_lossy(&page), "")?);
        }
        Command::Watch(a) => return watch(&cli, a),
        _ => {}
    }
    let up_args = match &cli.command {
        Command::Up(a) => Some(a),
        _ => None,
    };
    let mut settings = Settings::load(
        cli.config.as_deref(),
        cli.state_dir.as_deref(),
        cli.json,
        up_args,
        std::env::var("DOCKER_HOST").ok(),
    )?;
    // `down` takes only the place DNS was set at from its flags (the resolver dir); it replays
    // no recorded `up` settings.
    if let Command::Down(a) = &cli.command
        && let Some(dir) = &a.resolver_dir
    {
        settings.resolver_dir = dir.clone();
    }
    let store = store(&cli, &settings);
    // No reactor: netlink requests are blocking calls, and the D-Bus client starts a runtime of its
    // own when it is needed (dns::resolved). Nothing here waits on an event loop.
    let mut degraded = None;
    futures_lite::future::block_on(async {
        let mut net = System::new()?;
        let out = match &cli.command {
            Command::Up(a) => {
                if !a.dry_run {
                    require_root("up")?;
                }
                let o = engine::up(&mut net, &settings, &store, a.dry_run, hooks()).await?;
                degraded = o.degraded();
                let text = if cli.json {
                    report::json(&o)
                } else {
                    replay_note(&settings) + &report::outcome("up", &o)
                };
                (text, applied(&o, "up"))
            }
            Command::Down(a) => {
                if !a.dry_run {
                    require_root("down")?;
                }
                let o = engine::down(&mut net, &settings, &store, a.dry_run, hooks()).await?;
                let text = if cli.json {
                    report::json(&o)
                } else {
                    report::outcome("down", &o)
                };
                (text, applied(&o, "down"))
            }
            // files only, or a loop of its own: handled before the runtime starts
            Command::Install(_)
            | Command::Uninstall(_)
            | Command::Completions(_)
            | Command::Manpage
            | Command::Watch(_) => (String::new(), ""),
            Command::Status(a) => {
                let st =
                    engine::status(&mut net, &settings, &store, a.check_name.as_deref()).await?;
                degraded = st.degraded();
                let text = if cli.json {
                    report::json(&st)
                } else {
                    report::status(&st)
                };
                (text, "")
            }
        };
        emit(&out.0, out.1)?;
        match degraded {
            Some(d) => Err(d.into()),
            None => Ok(()),
        }
    })
}

/// What `up`/`down` did before their report is written, for the error if it cannot be.
fn applied(o: &engine::Outcome, cmd: &str) -> &'static str {
    let nothing =
        o.changes.is_empty() && o.firewall.is_empty() && !o.dns.as_ref().is_some_and(|d| d.changed);
    match (o.dry_run, nothing, cmd) {
        (true, _, _) => "nothing was changed (dry run)",
        (false, true, "up") => "up is complete (nothing needed changing)",
        (false, true, _) => "down is complete (nothing needed removing)",
        (false, false, "up") => {
            "up is complete: its changes are applied and recorded (dockroute status shows them)"
        }
        (false, false, _) => "down is complete: its changes are applied",
    }
}
