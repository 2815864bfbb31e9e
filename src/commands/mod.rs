//! One file per command. `main.rs` parses the command line, sets up logging and turns errors into
//! exit statuses; each command's own work starts in its file here.

pub mod down;
pub mod install;
pub mod status;
pub mod up;
pub mod watch;

use anyhow::bail;
use dockroute::cli::Cli;
use dockroute::engine::Hooks;
use dockroute::record::Store;
use dockroute::settings::Settings;
use std::io::Write;

/// The command's output was written up to a failure (closed pipe, full disk): an ordinary
/// error, not a panic, and it says what was already done.
#[derive(Debug)]
pub struct OutputLost {
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
pub fn emit(text: &str, done: &'static str) -> Result<(), OutputLost> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|err| OutputLost { err, done })
}

/// Test hooks, in debug builds only (release builds have neither the hooks nor their variables):
/// `DOCKROUTE_TEST_STALL_AFTER=N` makes `up`/`down` stop before their Nth change, and
/// `DOCKROUTE_TEST_STALL_RENAME=NAME` before renaming a temporary file over a file named NAME
/// (tests kill it there to prove a half-applied run can be cleaned up).
#[cfg(debug_assertions)]
pub fn hooks() -> Hooks {
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
pub fn test_backstop() -> Option<std::time::Duration> {
    let secs: f64 = std::env::var("DOCKROUTE_TEST_BACKSTOP_SECS")
        .ok()?
        .parse()
        .ok()?;
    (secs.is_finite() && secs > 0.0)
        .then(|| std::time::Duration::from_secs_f64(secs.clamp(0.1, 3600.0)))
}

#[cfg(not(debug_assertions))]
pub fn test_backstop() -> Option<std::time::Duration> {
    None
}

#[cfg(not(debug_assertions))]
pub fn hooks() -> Hooks {
    Hooks::default()
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "dockroute {what} changes the routing tables: run it as root (sudo), or use --dry-run"
        );
    }
    Ok(())
}

/// The settings of a command: flags (`up` and `watch` pass theirs), the config file, the record.
pub fn load_settings(
    cli: &Cli,
    up: Option<&dockroute::cli::UpArgs>,
) -> Result<Settings, dockroute::settings::SettingsError> {
    Settings::load(
        cli.config.as_deref(),
        cli.state_dir.as_deref(),
        cli.json,
        up,
        std::env::var("DOCKER_HOST").ok(),
    )
}

/// The state directory, with the lock timeout the command line asks for.
/// The state directory, with the lock timeout the command line asks for.
pub fn store(cli: &Cli, settings: &Settings) -> Store {
    Store::new(&settings.state_dir).with_lock_timeout(
        cli.lock_timeout
            .unwrap_or(dockroute::record::DEFAULT_LOCK_TIMEOUT),
    )
}
