//! `install` and `uninstall`: the boot job and the VPN hooks.

use super::{down, emit};
use anyhow::{Context, bail};
use dockroute::cli::{Cli, InstallArgs, UninstallArgs};
use dockroute::engine;
use dockroute::report;
use dockroute::service::{self, Init};
use std::path::{Path, PathBuf};

/// `install`: the boot job (and with --hooks the VPN hooks), then the service manager is told.
/// `--print` writes nothing.
pub fn install(cli: &Cli, a: &InstallArgs) -> anyhow::Result<()> {
    let init = a.init.unwrap_or_else(Init::native);
    let bin = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("finding the dockroute binary")?;
    if a.print && a.root.is_some() {
        bail!(
            "--print writes nothing, so --root has no use with it: drop --root (the files are the same under any root)"
        );
    }
    let root = install_root(a.root.as_deref())?;
    let mut targets = service::targets(init, a.hooks, &bin)?;
    if a.print {
        if let Err(e) = service::check_binary(&bin) {
            // on stderr, and in each printed file, where `-q` or a redirection cannot hide it
            tracing::warn!("the printed files are not safe to install: {e}");
            for t in &mut targets {
                t.body = warned(&t.body, &e.to_string());
            }
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

/// `--root DIR` made absolute (relative to the working directory); it must be an existing
/// directory. Without it: `/`.
fn install_root(root: Option<&Path>) -> anyhow::Result<PathBuf> {
    let Some(dir) = root else {
        return Ok(PathBuf::from("/"));
    };
    let abs = std::path::absolute(dir)
        .with_context(|| format!("--root {}: cannot make it absolute", dir.display()))?;
    match std::fs::metadata(&abs) {
        Ok(m) if m.is_dir() => Ok(abs),
        Ok(_) => bail!("--root {}: not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--root {}: no such directory; the install root must exist (create it first: mkdir -p {})",
            dir.display(),
            abs.display()
        ),
        Err(e) => bail!("--root {}: {e}", dir.display()),
    }
}

/// `body` with a warning comment after its header (`#` files) or before `<plist` (a plist).
fn warned(body: &str, why: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in body.split_inclusive('\n') {
        if !done && line.starts_with("<plist") {
            out += &format!(
                "<!-- WARNING: not safe to install: {} -->\n",
                why.replace("--", "- -")
            );
            done = true;
        }
        out += line;
        if !done && line.starts_with(service::MARK) {
            out += &format!("# WARNING: not safe to install: {why}\n");
            done = true;
        }
    }
    out
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
pub fn uninstall(cli: &Cli, a: &UninstallArgs) -> anyhow::Result<()> {
    let root = install_root(a.root.as_deref())?;
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
        if manager && service::in_use(init, &root)? {
            ran.extend(service::deactivate(init)?);
        }
        match down::for_uninstall(cli) {
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
