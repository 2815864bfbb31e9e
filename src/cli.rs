//! The command-line contract (v1). Scripts and checks drive it: change it only on purpose.

use crate::options::{DnsMode, FirewallMode, UpFlags};
use crate::service::Init;
use crate::validate;
use clap::parser::ValueSource;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

/// `--version`: the package version, and the git commit it was built from when the build had
/// one (build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("DOCKROUTE_COMMIT"));

/// The exit statuses, the same for every command (`--help` shows them).
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// Failed: one `error:` line on stderr (`{"error": ...}` on stdout with --json).
    pub const ERROR: i32 = 1;
    /// The command line is wrong: nothing was run.
    pub const USAGE: i32 = 2;
    /// The command did its work (`up`/`down`: changes applied and recorded), but its report
    /// could not be written to stdout (closed pipe, full disk).
    pub const OUTPUT: i32 = 4;
    /// The command ran, but the containers are not reached (`up`, `status`): one `degraded:`
    /// line on stderr says what is in the way.
    pub const DEGRADED: i32 = 3;
}

const ABOUT_AFTER: &str = "\
Needs root: up and down (not with --dry-run), watch, install (not with --print or --root),
uninstall (not with --root). status, completions and manpage do not.

Logging: warnings on stderr; -v info, -vv debug, -q errors only; DOCKROUTE_LOG=LEVEL (error, warn,
info, debug, trace) when neither flag is given.

Exit status:
  0  done
  1  failed: one `error:` line on stderr (with --json, {\"error\": \"...\"} on stdout instead;
     stderr keeps the logs)
  2  usage error: nothing was run
  3  degraded: up or status ran, but the containers are not reached (one `degraded:` line on
     stderr says what is in the way)
  4  done (up, down: changes applied and recorded), but the output could not be written to stdout

Examples:
  dockroute up --vm-ip 192.168.99.100       boot2docker / docker-machine default
  dockroute status --check-name redis.docker
  dockroute down
  dockroute completions bash > /usr/share/bash-completion/completions/dockroute";

/// The heading of the options every command takes, shown after the command's own.
const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(
    name = "dockroute",
    version = VERSION,
    about = "Reach Docker containers inside a local VM: routes, per-domain DNS, VPN repair",
    long_about = None,
    after_help = ABOUT_AFTER
)]
pub struct Cli {
    /// Config file; a missing default file means built-in defaults [default:
    /// /etc/dockroute/config.toml]
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE", env = "DOCKROUTE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Ownership record and lock [default: /var/lib/dockroute]
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "DIR", env = "DOCKROUTE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Machine-readable output on stdout, errors included ({"error": "..."})
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    /// More log output on stderr: -v info, -vv debug, -vvv trace (instead of DOCKROUTE_LOG)
    #[arg(short, long, global = true, help_heading = GLOBAL, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Log only errors on stderr (instead of DOCKROUTE_LOG)
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
    /// Give up after SECS when another dockroute holds the lock (default 30)
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "SECS", value_parser = lock_timeout)]
    pub lock_timeout: Option<Duration>,
    #[command(subcommand)]
    pub command: Command,
}

/// Parse a command line, as clap does, and refuse a global option given to a command that has no
/// use for it: `completions` and `manpage` print the same text whatever the settings. (From the
/// environment, `DOCKROUTE_CONFIG` and `DOCKROUTE_STATE_DIR` are fine: they are set for every
/// command.)
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = Cli::command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    if let Some((name @ ("completions" | "manpage"), sub)) = matches.subcommand() {
        let given = cmd.get_arguments().filter(|a| a.is_global_set()).find(|a| {
            [&matches, sub]
                .iter()
                .any(|m| m.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        });
        if let Some(flag) = given.and_then(|a| a.get_long()) {
            return Err(cmd.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--{flag} does not apply to `{name}`, which prints the same text whatever the settings"
                ),
            ));
        }
    }
    Ok(cli)
}

fn lock_timeout(s: &str) -> Result<Duration, String> {
    validate::wait_secs(s).map_err(|_| {
        format!(
            "invalid --lock-timeout '{}': expected 0 to 3600 seconds",
            s.escape_default()
        )
    })
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Route the container subnets through the VM (idempotent; also the post-VPN-connect hook)
    #[command(after_help = UP_AFTER)]
    Up(UpArgs),
    /// Remove exactly what dockroute installed
    #[command(after_help = DOWN_AFTER)]
    Down(DownArgs),
    /// Run `up`, then again whenever links, routes, rules, the firewall or the config change
    /// (foreground; SIGTERM/SIGINT end it, SIGHUP re-reads the config)
    #[command(after_help = WATCH_AFTER)]
    Watch(WatchArgs),
    /// Show what is installed, what the kernel does with container addresses, and conflicts
    #[command(after_help = STATUS_AFTER)]
    Status(StatusArgs),
    /// Install the boot job that runs `dockroute watch` (systemd unit or launchd job), and with
    /// --hooks the VPN post-connect hooks
    #[command(after_help = INSTALL_AFTER)]
    Install(InstallArgs),
    /// Stop and remove the boot job, run `down`, remove the hooks
    #[command(after_help = UNINSTALL_AFTER)]
    Uninstall(UninstallArgs),
    /// Print a shell completion script on stdout
    #[command(after_help = COMPLETIONS_AFTER)]
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on stdout
    #[command(after_help = MANPAGE_AFTER)]
    Manpage,
}

const UP_AFTER: &str = "\
Needs root, except with --dry-run. A flag overrides the config file's key of the same name; the
defaults shown apply when neither sets it.

Examples:
  dockroute up --vm-ip 192.168.99.100       boot2docker / docker-machine default
  dockroute up --machine default            read the IP from docker-machine's store
  dockroute up --wait 30                    at boot: wait for vboxnet0 and its address
  dockroute up --dry-run                    print the changes, apply none
  dockroute up --nameserver 172.17.42.1     boot2docker's classic dnsdock/skydns address";

const WATCH_AFTER: &str = "\
Needs root. Runs until SIGTERM or SIGINT, which leave the setup in place (--down-on-exit removes
it); SIGHUP or a change of the config file re-reads the settings. Without settings flags it
re-applies what the last `up` recorded. The boot job (`dockroute install`) runs it. Logs one line
per change on stderr (info level by default).

Examples:
  dockroute watch                               keep the last `up`'s setup in place
  dockroute watch --vm-ip 192.168.99.100        set up and keep this VM's routes
  dockroute watch --down-on-exit                remove the setup when it stops";

const DOWN_AFTER: &str = "\
Needs root, except with --dry-run. Removes only routes and rules tagged with dockroute's route
protocol (100), the firewall rules commented `dockroute` and its DNS settings.

Examples:
  dockroute down
  dockroute down --dry-run";

const STATUS_AFTER: &str = "\
Does not need root, changes nothing.

Examples:
  dockroute status
  dockroute status --check-name redis.docker
  dockroute --json status";

const INSTALL_AFTER: &str = "\
Needs root, except with --print or --root. The job and the hooks run this binary as root, so it
must be one only root can replace (e.g. /usr/local/bin/dockroute).

Examples:
  dockroute install --hooks
  dockroute install --print --init launchd
  dockroute install --root /tmp/pkgroot";

const UNINSTALL_AFTER: &str = "\
Needs root, except with --root.

Examples:
  dockroute uninstall
  dockroute uninstall --root /tmp/pkgroot";

const COMPLETIONS_AFTER: &str = "\
Does not need root. Where to put the script:
  bash  /usr/share/bash-completion/completions/dockroute (or ~/.local/share/bash-completion/completions/dockroute)
  zsh   /usr/local/share/zsh/site-functions/_dockroute (a directory in $fpath)
  fish  /usr/share/fish/vendor_completions.d/dockroute.fish (or ~/.config/fish/completions/dockroute.fish)

Examples:
  dockroute completions bash > /usr/share/bash-completion/completions/dockroute";

const MANPAGE_AFTER: &str = "\
Does not need root.

Examples:
  dockroute manpage | man -l -
  dockroute manpage | gzip > /usr/local/share/man/man8/dockroute.8.gz";

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `dockroute completions SHELL`: the completion script.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dockroute", &mut out);
    out
}

/// `dockroute manpage`: dockroute(8) in roff. The global options, then a section per command
/// with its synopsis, options, and notes and examples; the notes keep their line layout.
pub fn manpage() -> std::io::Result<Vec<u8>> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    let mut top = Vec::new();
    man.render_title(&mut top)?;
    man.render_name_section(&mut top)?;
    man.render_synopsis_section(&mut top)?;
    man.render_description_section(&mut top)?;
    man.render_options_section(&mut top)?;
    man.render_extra_section(&mut top)?;
    man.render_version_section(&mut top)?;
    let mut out = man_sections(&top, false);
    for sub in cmd.get_subcommands() {
        let name = format!("dockroute {}", sub.get_name());
        let man = clap_mangen::Man::new(sub.clone().bin_name(&name)).section("8");
        let mut part = format!(".SH \"{}\"\n", name.to_uppercase()).into_bytes();
        man.render_description_section(&mut part)?;
        man.render_synopsis_section(&mut part)?;
        man.render_options_section(&mut part)?;
        if sub.get_after_help().is_some() {
            man.render_extra_section(&mut part)?;
        }
        out.extend(man_sections(&part, true));
    }
    Ok(out)
}

/// clap_mangen's `.SH EXTRA` (the after-help text) becomes "NOTES AND EXAMPLES" set without
/// filling (it is laid out by hand); with `nested`, every `.SH` after the first is a `.SS`.
fn man_sections(roff: &[u8], nested: bool) -> Vec<u8> {
    let mut out = String::new();
    let mut nofill = false;
    for (i, line) in String::from_utf8_lossy(roff).lines().enumerate() {
        if let Some(heading) = line.strip_prefix(".SH ") {
            if nofill {
                out += ".fi\n";
                nofill = false;
            }
            let mac = if nested && i > 0 { ".SS" } else { ".SH" };
            if heading == "EXTRA" {
                out += &format!("{mac} \"NOTES AND EXAMPLES\"\n.nf\n");
                nofill = true;
            } else {
                out += &format!("{mac} {heading}\n");
            }
        } else if !(nofill && line == ".br") {
            out += line;
            out.push('\n');
        }
    }
    if nofill {
        out += ".fi\n";
    }
    out.into_bytes()
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print the job file (and with --hooks the hooks) and write nothing
    #[arg(long)]
    pub print: bool,
    /// The service manager for the boot job (default: the running OS's)
    #[arg(long, value_enum, value_name = "INIT")]
    pub init: Option<Init>,
    /// Also install the post-connect hooks of the VPN clients whose directories exist
    #[arg(long)]
    pub hooks: bool,
    /// Install under DIR instead of / (packaging); no service manager is told
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Uninstall under DIR instead of / (no service manager, no `down`)
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

#[derive(Debug, Default, Args)]
pub struct StatusArgs {
    /// Also resolve NAME through the system resolver (getaddrinfo) and print the answer
    #[arg(long, value_name = "NAME", value_parser = validate::domain)]
    pub check_name: Option<String>,
}

#[derive(Debug, Default, Args)]
pub struct UpArgs {
    /// The host-only link [default: the link whose network contains the VM IP]
    #[arg(long, value_name = "IF", value_parser = validate::interface)]
    pub interface: Option<String>,
    /// The VM's IP on the host-only network [default: from --machine, DOCKER_HOST, or the one
    /// live neighbour on a host-only link]
    #[arg(long, value_name = "IP", value_parser = validate::ipv4)]
    pub vm_ip: Option<Ipv4Addr>,
    /// Read the VM IP from this docker-machine's store
    #[arg(long, value_name = "NAME", value_parser = validate::machine_name)]
    pub machine: Option<String>,
    /// A container subnet to route through the VM (repeatable) [default: 172.17.0.0/16]
    #[arg(long = "subnet", value_name = "CIDR", value_parser = validate::subnet)]
    pub subnets: Vec<Ipv4Net>,
    /// DNS domain served by the VM's DNS [default: docker]
    #[arg(long, value_name = "NAME", value_parser = validate::domain)]
    pub domain: Option<String>,
    /// The VM's DNS server for the domain [default: the first host address of the first subnet,
    /// port 53]
    #[arg(long, value_name = "IP[:PORT]", value_parser = validate::nameserver)]
    pub nameserver: Option<SocketAddrV4>,
    /// How to set per-domain DNS [default: auto]
    #[arg(long, value_enum, value_name = "MODE")]
    pub dns: Option<DnsMode>,
    /// Directory for resolver files (resolver-dir backend) [default: /etc/resolver]
    #[arg(long, value_name = "DIR")]
    pub resolver_dir: Option<PathBuf>,
    /// Whether to repair firewall rules that block the VM [default: auto]
    #[arg(long, value_enum, value_name = "MODE")]
    pub firewall: Option<FirewallMode>,
    /// The Docker engine whose bridge networks are routed too: tcp://IP[:PORT], unix:///PATH,
    /// or off [default: --machine's, DOCKER_HOST, the current Docker context, Colima or Lima]
    #[arg(long, value_name = "URL", value_parser = crate::docker::endpoint::parse_flag)]
    pub docker: Option<crate::docker::endpoint::Explicit>,
    /// Open the VM's own Docker filter for the routed subnets: a short-lived helper container
    /// (host networking, NET_ADMIN, NET_RAW, SYS_CHROOT) inserts accepts marked `dockroute` in
    /// the VM's iptables; `down` removes them [default: off]
    #[arg(long)]
    pub open_vm_firewall: bool,
    /// The helper container's image for --open-vm-firewall (it needs only `chroot`; pulled if
    /// missing) [default: busybox:latest]
    #[arg(long, value_name = "IMAGE", value_parser = crate::docker::vmfilter::helper_image)]
    pub helper_image: Option<String>,
    /// Wait up to SECS (0 to 3600, fractions allowed) for the link and its address to appear
    /// [default: 0, no waiting]
    #[arg(long, value_name = "SECS", value_parser = validate::wait_secs, allow_negative_numbers = true)]
    pub wait: Option<Duration>,
    /// Print the changes and apply none
    #[arg(long)]
    pub dry_run: bool,
}

impl UpArgs {
    /// The settings flags given, as the record keeps them (`--wait` and `--dry-run` are not
    /// settings).
    pub fn flags(&self) -> UpFlags {
        UpFlags {
            interface: self.interface.clone(),
            vm_ip: self.vm_ip,
            machine: self.machine.clone(),
            subnets: self.subnets.clone(),
            domain: self.domain.clone(),
            nameserver: self.nameserver,
            dns: self.dns,
            resolver_dir: self.resolver_dir.clone(),
            firewall: self.firewall,
            docker_host: None,
            docker: self.docker.clone(),
            open_vm_firewall: self.open_vm_firewall,
            helper_image: self.helper_image.clone(),
        }
    }
}

#[derive(Debug, Default, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub up: UpArgs,
    /// Remove the setup (as `down`) when ending on SIGTERM or SIGINT
    #[arg(long)]
    pub down_on_exit: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Print the changes and apply none
    #[arg(long)]
    pub dry_run: bool,
    /// Not needed: `down` removes the resolver file in the directory the last `up` wrote it to
    /// (accepted for older scripts)
    #[arg(long, value_name = "DIR")]
    pub resolver_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn contract_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_go_before_or_after_the_subcommand() {
        let a = Cli::try_parse_from(["dockroute", "--json", "status"]).unwrap();
        let b = Cli::try_parse_from(["dockroute", "status", "--json"]).unwrap();
        assert!(a.json && b.json);
        let c =
            Cli::try_parse_from(["dockroute", "up", "--state-dir", "/tmp/x", "--dry-run"]).unwrap();
        assert_eq!(c.state_dir.unwrap(), PathBuf::from("/tmp/x"));
    }

    #[test]
    fn up_flags_parse_and_validate() {
        let c = Cli::try_parse_from([
            "dockroute",
            "up",
            "--interface",
            "vboxnet0",
            "--vm-ip",
            "192.168.99.100",
            "--subnet",
            "172.17.0.0/16",
            "--subnet",
            "172.18.0.0/16",
            "--dns",
            "resolv-conf",
            "--firewall",
            "off",
            "--nameserver",
            "172.17.42.1:5353",
            "--wait",
            "2.5",
        ])
        .unwrap();
        let Command::Up(up) = c.command else {
            panic!("not up")
        };
        assert_eq!(up.subnets.len(), 2);
        assert_eq!(up.dns, Some(DnsMode::ResolvConf));
        assert_eq!(up.nameserver.unwrap().port(), 5353);
        assert_eq!(up.wait, Some(Duration::from_millis(2500)));
        let c = Cli::try_parse_from([
            "dockroute",
            "watch",
            "--vm-ip",
            "192.168.99.100",
            "--firewall",
            "off",
            "--down-on-exit",
        ])
        .unwrap();
        let Command::Watch(w) = c.command else {
            panic!("not watch")
        };
        assert!(w.down_on_exit);
        assert_eq!(w.up.firewall, Some(FirewallMode::Off));
        let c =
            Cli::try_parse_from(["dockroute", "install", "--print", "--init", "launchd"]).unwrap();
        let Command::Install(i) = c.command else {
            panic!("not install")
        };
        assert!(i.print && !i.hooks && i.init == Some(Init::Launchd));
        for bad in [
            vec!["up", "--vm-ip", "300.1.1.1"],
            vec!["up", "--subnet", "172.17.0.1/16"],
            vec!["up", "--interface", "way-too-long-name0"],
            vec!["up", "--dns", "bogus"],
            vec!["up", "--wait", "-1"],
            vec!["watch", "--vm-ip", "300.1.1.1"],
            vec!["watch", "--bogus"],
            vec!["install", "--init", "upstart"],
        ] {
            let args = std::iter::once("dockroute").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }
}
