//! Config file + flags → [`Settings`]. Everything is validated here, before anything touches the
//! system; every error is one line that names the file and line when it comes from the config.

use crate::cli::UpArgs;
use crate::discover::{Request, VmIpSource};
use crate::validate;
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::net::SocketAddrV4;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_CONFIG: &str = "/etc/dockroute/config.toml";
pub const DEFAULT_SUBNET: &str = "172.17.0.0/16";
pub const DEFAULT_DOMAIN: &str = "docker";
pub const DEFAULT_RESOLVER_DIR: &str = "/etc/resolver";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DnsMode {
    Auto,
    Resolved,
    ResolvConf,
    ResolverDir,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FirewallMode {
    Auto,
    Off,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// The config file. Keys mirror the `up` flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    interface: Option<Spanned<String>>,
    vm_ip: Option<Spanned<String>>,
    machine: Option<Spanned<String>>,
    subnets: Option<Vec<Spanned<String>>>,
    domain: Option<Spanned<String>>,
    nameserver: Option<Spanned<String>>,
    dns: Option<DnsMode>,
    resolver_dir: Option<PathBuf>,
    firewall: Option<FirewallMode>,
    wait: Option<Spanned<f64>>,
}

/// Everything a command needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub json: bool,
    pub request: Request,
    pub domain: String,
    /// The VM's DNS server for the domain (port 53 unless given as IP:PORT).
    pub nameserver: SocketAddrV4,
    pub dns: DnsMode,
    pub resolver_dir: PathBuf,
    /// The resolv.conf the resolv-conf backend edits (always /etc/resolv.conf; a field so unit
    /// tests never touch the machine's).
    pub resolv_conf: PathBuf,
    pub firewall: FirewallMode,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn check<T>(
        &self,
        v: &Spanned<String>,
        f: fn(&str) -> Result<T, String>,
    ) -> Result<T, SettingsError> {
        f(v.get_ref()).map_err(|e| self.err(v.span().start, &e))
    }

    fn err(&self, offset: usize, msg: &str) -> SettingsError {
        SettingsError(format!(
            "{} line {}: {msg}",
            self.path.display(),
            line_of(self.text, offset)
        ))
    }
}

/// Read and parse the config file. `explicit` says whether the user named it (then it must exist).
fn read_config(path: &Path, explicit: bool) -> Result<(ConfigFile, String), SettingsError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok((ConfigFile::default(), String::new()));
        }
        Err(e) => {
            return Err(SettingsError(format!(
                "cannot read config file {}: {e}",
                path.display()
            )));
        }
    };
    // dockroute runs as root: a config file others can write is a way to steer it.
    if nix::unistd::geteuid().is_root() && (meta.uid() != 0 || meta.mode() & 0o022 != 0) {
        return Err(SettingsError(format!(
            "config file {} must be owned by root and not writable by others (chmod 644, chown root)",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| SettingsError(format!("cannot read config file {}: {e}", path.display())))?;
    let cfg = parse_config_text(path, &text)?;
    Ok((cfg, text))
}

/// Parse the config file's text (`path` only names it in errors).
fn parse_config_text(path: &Path, text: &str) -> Result<ConfigFile, SettingsError> {
    toml::from_str(text).map_err(|e| {
        let src = Source { path, text };
        let msg = e.message().trim().replace('\n', " ");
        src.err(e.span().map(|s| s.start).unwrap_or(0), &msg)
    })
}

impl Settings {
    /// Build settings from the global flags, the `up` flags (for `up`; `None` for other commands)
    /// and the environment's `DOCKER_HOST`.
    pub fn load(
        config: Option<&Path>,
        state_dir: Option<&Path>,
        json: bool,
        up: Option<&UpArgs>,
        docker_host: Option<String>,
    ) -> Result<Settings, SettingsError> {
        let config_path = config.unwrap_or(Path::new(DEFAULT_CONFIG)).to_path_buf();
        let (cfg, text) = read_config(&config_path, config.is_some())?;
        Self::build(config_path, cfg, &text, state_dir, json, up, docker_host)
    }

    /// The settings a config file's text gives without flags, touching nothing (`path` only names
    /// the file in errors). The fuzzer's entry point (tests/fuzz).
    pub fn parse_config(path: &Path, text: &str) -> Result<Settings, SettingsError> {
        let cfg = parse_config_text(path, text)?;
        Self::build(path.to_path_buf(), cfg, text, None, false, None, None)
    }

    fn build(
        config_path: PathBuf,
        cfg: ConfigFile,
        text: &str,
        state_dir: Option<&Path>,
        json: bool,
        up: Option<&UpArgs>,
        docker_host: Option<String>,
    ) -> Result<Settings, SettingsError> {
        let default_up = UpArgs::default();
        let up = up.unwrap_or(&default_up);
        let src = Source {
            path: &config_path,
            text,
        };

        let interface = match (&up.interface, &cfg.interface) {
            (Some(i), _) => Some(i.clone()),
            (None, Some(i)) => Some(src.check(i, validate::interface)?),
            _ => None,
        };
        let vm_ip = match (up.vm_ip, &cfg.vm_ip) {
            (Some(ip), _) => Some((ip, VmIpSource::Flag)),
            (None, Some(v)) => Some((
                src.check(v, validate::ipv4)?,
                VmIpSource::Config {
                    path: config_path.clone(),
                },
            )),
            _ => None,
        };
        let machine = match (&up.machine, &cfg.machine) {
            (Some(m), _) => Some(m.clone()),
            (None, Some(m)) => Some(src.check(m, validate::machine_name)?),
            _ => None,
        };
        let subnets: Vec<Ipv4Net> = if !up.subnets.is_empty() {
            up.subnets.clone()
        } else if let Some(list) = &cfg.subnets {
            list.iter()
                .map(|s| src.check(s, validate::subnet))
                .collect::<Result<_, _>>()?
        } else {
            vec![validate::subnet(DEFAULT_SUBNET).map_err(SettingsError)?]
        };
        if subnets.is_empty() {
            return Err(src.err(0, "subnets is empty: name at least one subnet"));
        }
        for (i, a) in subnets.iter().enumerate() {
            if let Some(b) = subnets[..i]
                .iter()
                .find(|b| a.contains(*b) || b.contains(a))
            {
                return Err(SettingsError(format!("subnets {b} and {a} overlap")));
            }
        }
        let domain = match (&up.domain, &cfg.domain) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => src.check(d, validate::domain)?,
            _ => DEFAULT_DOMAIN.to_string(),
        };
        let nameserver = match (up.nameserver, &cfg.nameserver) {
            (Some(n), _) => n,
            (None, Some(n)) => src.check(n, validate::nameserver)?,
            _ => SocketAddrV4::new(
                subnets[0].hosts().next().unwrap_or(subnets[0].network()),
                53,
            ),
        };
        let wait = match (up.wait, &cfg.wait) {
            (Some(w), _) => Some(w),
            (None, Some(w)) => Some(
                validate::wait_secs(&w.get_ref().to_string())
                    .map_err(|e| src.err(w.span().start, &e))?,
            ),
            _ => None,
        };
        let dns = up.dns.or(cfg.dns).unwrap_or(DnsMode::Auto);
        let firewall = up.firewall.or(cfg.firewall).unwrap_or(FirewallMode::Auto);
        let resolver_dir = up
            .resolver_dir
            .clone()
            .or(cfg.resolver_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RESOLVER_DIR));
        let state_dir = state_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(crate::record::DEFAULT_STATE_DIR));
        if state_dir.as_os_str().is_empty() {
            return Err(SettingsError("--state-dir is empty".into()));
        }

        Ok(Settings {
            config_path,
            state_dir,
            json,
            request: Request {
                interface,
                vm_ip,
                machine,
                docker_host: docker_host.filter(|d| !d.is_empty()),
                subnets,
                wait,
            },
            domain,
            nameserver,
            dns,
            resolver_dir,
            resolv_conf: PathBuf::from(crate::dns::RESOLV_CONF),
            firewall,
        })
    }

    pub fn wait(&self) -> Option<Duration> {
        self.request.wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_cfg(body: &str) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, body).unwrap();
        Settings::load(Some(&p), None, false, None, None)
    }

    #[test]
    fn defaults_without_a_default_config_file() {
        let s = Settings::load(
            Some(Path::new("/nonexistent/dockroute.toml")),
            None,
            false,
            None,
            None,
        );
        assert!(s.unwrap_err().0.contains("cannot read config file"));
        let dir = tempfile::tempdir().unwrap();
        let s = load_cfg("").unwrap();
        assert_eq!(
            s.request.subnets,
            vec![DEFAULT_SUBNET.parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(s.domain, "docker");
        assert_eq!(s.nameserver.to_string(), "172.17.0.1:53");
        assert_eq!(s.dns, DnsMode::Auto);
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/dockroute"));
        drop(dir);
    }

    #[test]
    fn config_values_are_used_and_flags_win() {
        let body = "vm_ip = \"192.168.99.100\"\ninterface = \"vboxnet0\"\nsubnets = [\"172.18.0.0/16\"]\nnameserver = \"172.18.42.1\"\nwait = 1.5\n";
        let s = load_cfg(body).unwrap();
        assert_eq!(s.request.interface.as_deref(), Some("vboxnet0"));
        assert!(matches!(
            s.request.vm_ip,
            Some((_, VmIpSource::Config { .. }))
        ));
        assert_eq!(s.nameserver.to_string(), "172.18.42.1:53");
        assert_eq!(s.wait(), Some(Duration::from_millis(1500)));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, body).unwrap();
        let up = UpArgs {
            vm_ip: Some("192.168.99.7".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::load(Some(&p), None, false, Some(&up), None).unwrap();
        assert_eq!(
            s.request.vm_ip.unwrap(),
            ("192.168.99.7".parse().unwrap(), VmIpSource::Flag)
        );
    }

    #[test]
    fn config_errors_name_file_and_line() {
        let e = load_cfg("interface = \"vboxnet0\"\n\nvm_ip = \"300.1.1.1\"\n")
            .unwrap_err()
            .0;
        assert!(
            e.contains("config.toml line 3: invalid IPv4 address '300.1.1.1'"),
            "{e}"
        );
        let e = load_cfg("subnets = [\n  \"172.17.0.0/16\",\n  \"10.1.2.3/8\",\n]\n")
            .unwrap_err()
            .0;
        assert!(e.contains("line 3: invalid subnet '10.1.2.3/8'"), "{e}");
        let e = load_cfg("vm-ip = 1\n").unwrap_err().0;
        assert!(e.contains("line 1:") && e.contains("unknown field"), "{e}");
        let e = load_cfg("a = [\n").unwrap_err().0;
        assert!(e.contains("config.toml line"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn parse_config_reads_only_the_text_it_is_given() {
        // the path only names the file in errors: nothing is read there
        let p = Path::new("/nonexistent/dockroute.toml");
        let s = Settings::parse_config(p, "vm_ip = \"192.168.99.100\"\ndns = \"off\"\n").unwrap();
        assert_eq!(s.config_path, p);
        assert_eq!(s.dns, DnsMode::Off);
        assert!(matches!(
            s.request.vm_ip,
            Some((_, VmIpSource::Config { .. }))
        ));
        let e = Settings::parse_config(p, "\nwait = 4000.0\n")
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("/nonexistent/dockroute.toml line 2: invalid --wait"),
            "{e}"
        );
    }

    #[test]
    fn overlapping_subnets_are_refused_and_firewall_repair_is_the_default() {
        let up = UpArgs {
            subnets: vec![
                "172.16.0.0/12".parse().unwrap(),
                "172.17.0.0/16".parse().unwrap(),
            ],
            ..Default::default()
        };
        let none = Path::new("/nonexistent-default");
        let e = Settings::load(None, Some(none), false, Some(&up), None);
        assert!(e.unwrap_err().0.contains("overlap"));
        let s = Settings::load(None, None, false, None, None).unwrap();
        assert_eq!(s.firewall, FirewallMode::Auto);
    }
}
