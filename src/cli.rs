//! The command-line contract (v1). Scripts and checks drive it: change it only on purpose.

use crate::service::Init;
use crate::settings::{DnsMode, FirewallMode};
use crate::validate;
use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "dockroute",
    version,
    about = "Reach Docker containers inside a local VM: routes, per-domain DNS, VPN repair",
    long_about = None
)]
pub struct Cli {
    /// Config file; a missing default file means built-in defaults
    #[arg(long, global = true, value_name = "FILE", env = "DOCKROUTE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Ownership record and lock
    #[arg(long, global = true, value_name = "DIR", env = "DOCKROUTE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Machine-readable output on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up after SECS when another dockroute holds the lock (default 30)
    #[arg(long, global = true, value_name = "SECS", value_parser = lock_timeout)]
    pub lock_timeout: Option<Duration>,
    #[command(subcommand)]
    pub command: Command,
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
    Up(UpArgs),
    /// Remove exactly what dockroute installed
    Down(DownArgs),
    /// Run `up`, then again whenever links, routes, rules, the firewall or the config change
    /// (foreground; SIGTERM/SIGINT end it, SIGHUP re-reads the config)
    Watch(WatchArgs),
    /// Show what is installed, what the kernel does with container addresses, and conflicts
    Status(StatusArgs),
    /// Install the boot job that runs `dockroute watch` (systemd unit or launchd job), and with
    /// --hooks the VPN post-connect hooks
    Install(InstallArgs),
    /// Stop and remove the boot job, run `down`, remove the hooks
    Uninstall(UninstallArgs),
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
    /// The host-only link (default: the link whose network contains the VM IP)
    #[arg(long, value_name = "IF", value_parser = validate::interface)]
    pub interface: Option<String>,
    /// The VM's IP on the host-only network
    #[arg(long, value_name = "IP", value_parser = validate::ipv4)]
    pub vm_ip: Option<Ipv4Addr>,
    /// Read the VM IP from this docker-machine's store
    #[arg(long, value_name = "NAME", value_parser = validate::machine_name)]
    pub machine: Option<String>,
    /// A container subnet to route through the VM (repeatable; default 172.17.0.0/16)
    #[arg(long = "subnet", value_name = "CIDR", value_parser = validate::subnet)]
    pub subnets: Vec<Ipv4Net>,
    /// DNS domain served by the VM's DNS (default docker)
    #[arg(long, value_name = "NAME", value_parser = validate::domain)]
    pub domain: Option<String>,
    /// The VM's DNS server for the domain (default: first host address of the first subnet)
    #[arg(long, value_name = "IP[:PORT]", value_parser = validate::nameserver)]
    pub nameserver: Option<SocketAddrV4>,
    /// How to set per-domain DNS
    #[arg(long, value_enum, value_name = "MODE")]
    pub dns: Option<DnsMode>,
    /// Directory for resolver files (resolver-dir backend; default /etc/resolver)
    #[arg(long, value_name = "DIR")]
    pub resolver_dir: Option<PathBuf>,
    /// Whether to repair firewall rules that block the VM
    #[arg(long, value_enum, value_name = "MODE")]
    pub firewall: Option<FirewallMode>,
    /// Wait up to SECS for the link and its address to appear
    #[arg(long, value_name = "SECS", value_parser = validate::wait_secs)]
    pub wait: Option<Duration>,
    /// Print the changes and apply none
    #[arg(long)]
    pub dry_run: bool,
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
    /// Directory of the resolver file to remove (as given to `up`; default /etc/resolver)
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
