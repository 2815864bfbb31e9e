//! Config file + flags → [`Settings`]. Everything is validated here, before anything touches the
//! system; every error is one line that names the file and line when it comes from the config.

use crate::cli::UpArgs;
use crate::discover::{Request, VmIpSource};
use crate::docker::endpoint::{self as docker_endpoint, Explicit, Source as DockerSource};
use crate::options::{DnsMode, FirewallMode, UpFlags};
use crate::validate;
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_CONFIG: &str = "/etc/dockroute/config.toml";
pub const DEFAULT_SUBNET: &str = "172.17.0.0/16";
pub const DEFAULT_DOMAIN: &str = "docker";
pub const DEFAULT_RESOLVER_DIR: &str = "/etc/resolver";
/// One-label domains `--domain` warns about: the big generic and country TLDs whose names a
/// developer reaches every day, `local` (mDNS) and `arpa` (reverse lookups). Not a full list of
/// TLDs (there are over a thousand, and it changes): the mistakes people make.
pub const TOP_LEVEL_DOMAINS: &[&str] = &[
    "com", "net", "org", "io", "dev", "app", "edu", "gov", "co", "ai", "me", "cloud", "local",
    "arpa", "de", "uk", "fr", "us", "eu",
];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read config file {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error(
        "config file {path} is not safe: {err}; it must be owned by root and not writable by others, all the way up (chown root, chmod 644)"
    )]
    Untrusted {
        path: PathBuf,
        err: crate::trust::TrustError,
    },
    #[error("{path} line {line}: {msg}")]
    At {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// About a file others may not read: its content (values, keys) is never quoted.
    #[error(
        "{path} line {line}: invalid setting (not shown: the file is not readable by other users)"
    )]
    Private { path: PathBuf, line: usize },
}

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
    /// The Docker engine: `tcp://IP[:PORT]`, `unix:///PATH` or `off`.
    docker: Option<Spanned<String>>,
    /// `--open-vm-firewall`.
    open_vm_firewall: Option<bool>,
    /// `--helper-image`.
    helper_image: Option<Spanned<String>>,
    /// A number of seconds; read as any value so that a string gets a message that says so.
    wait: Option<Spanned<toml::Value>>,
}

impl UpFlags {
    /// The recorded flags as `up` flags, validated again (the record is a file), leaving out
    /// what the config file sets: a key in the config file beats a recorded flag. The VM's
    /// sources (`vm_ip`, `machine`, `DOCKER_HOST`) go as one.
    fn replay(&self, up: &UpArgs, cfg: &ConfigFile) -> Result<UpArgs, String> {
        let vm_in_config = cfg.vm_ip.is_some() || cfg.machine.is_some();
        let mut a = UpArgs {
            wait: up.wait,
            dry_run: up.dry_run,
            ..Default::default()
        };
        if cfg.interface.is_none() {
            a.interface = self
                .interface
                .as_deref()
                .map(validate::interface)
                .transpose()?;
        }
        if !vm_in_config {
            a.vm_ip = self.vm_ip;
            a.machine = self
                .machine
                .as_deref()
                .map(validate::machine_name)
                .transpose()?;
        }
        if cfg.subnets.is_none() {
            a.subnets = self
                .subnets
                .iter()
                .map(|s| validate::subnet(&s.to_string()))
                .collect::<Result<_, _>>()?;
        }
        if cfg.domain.is_none() {
            a.domain = self.domain.as_deref().map(validate::domain).transpose()?;
        }
        if cfg.nameserver.is_none() {
            a.nameserver = self.nameserver;
        }
        if cfg.dns.is_none() {
            a.dns = self.dns;
        }
        if cfg.resolver_dir.is_none() {
            a.resolver_dir = self.resolver_dir.clone();
        }
        if cfg.firewall.is_none() {
            a.firewall = self.firewall;
        }
        if cfg.docker.is_none() {
            a.docker = self.docker.clone();
        }
        if cfg.open_vm_firewall.is_none() {
            a.open_vm_firewall = self.open_vm_firewall;
        }
        if cfg.helper_image.is_none() {
            a.helper_image = self
                .helper_image
                .as_deref()
                .map(crate::docker::vmfilter::helper_image)
                .transpose()?;
        }
        Ok(a)
    }
}

/// What a bare `dockroute up` (a VPN hook's) will go by, for `install --hooks`.
pub struct HookSettings {
    pub config: PathBuf,
    pub config_exists: bool,
    pub state_dir: PathBuf,
    /// The last `up`'s flags, from the record.
    pub recorded: Option<UpFlags>,
    /// Whether the config file or the recorded flags name the VM (`vm_ip`, `machine`,
    /// `DOCKER_HOST`). Without that, only the neighbour table can, which a VPN may flush.
    pub vm_named: bool,
}

impl HookSettings {
    pub fn find(config: &Path, state_dir: &Path) -> HookSettings {
        let recorded = crate::record::Store::new(state_dir)
            .load()
            .ok()
            .flatten()
            .and_then(|r| r.flags);
        let config_exists = std::fs::metadata(config).is_ok();
        let cfg_names_vm = read_config(config, false)
            .map(|(c, _, _)| c.vm_ip.is_some() || c.machine.is_some())
            // a config file that does not parse: `up` will say so; not this note's business
            .unwrap_or(true);
        let rec_names_vm = recorded
            .as_ref()
            .is_some_and(|r| r.vm_ip.is_some() || r.machine.is_some() || r.docker_host.is_some());
        HookSettings {
            config: config.to_path_buf(),
            config_exists,
            state_dir: state_dir.to_path_buf(),
            recorded,
            vm_named: cfg_names_vm || rec_names_vm,
        }
    }
}

impl std::fmt::Display for HookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the hooks run `dockroute up` with ")?;
        let mut parts = Vec::new();
        if self.config_exists {
            parts.push(format!("the config file {}", self.config.display()));
        }
        match &self.recorded {
            Some(r) => parts.push(format!(
                "the last up's settings ({r}), recorded in {}",
                self.state_dir.display()
            )),
            None => parts.push(format!(
                "no record of an up in {}",
                self.state_dir.display()
            )),
        }
        write!(f, "{}", parts.join(" and "))?;
        if !self.vm_named {
            write!(
                f,
                "; nothing there names the VM{}, so they can only find it in the neighbour table, which fails once a VPN flushes it: run `dockroute up --vm-ip IP` (or --machine NAME) once and the hooks repeat it, or set vm_ip in {}",
                if self.config_exists {
                    ""
                } else {
                    " (no config file)"
                },
                self.config.display()
            )?;
        }
        Ok(())
    }
}

/// Everything a command needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// `--docker`, the config key `docker`, or the engine the last `up` recorded; `None`: the
    /// other sources decide (docker::sources).
    pub docker: Option<(DockerSource, Explicit)>,
    /// Whether `up` asks the engine for its networks (`watch` asks when Docker's events say so,
    /// else goes by the record).
    pub docker_listing: crate::docker::Listing,
    /// `--open-vm-firewall` (or the config key `open_vm_firewall`): the helper image to open the
    /// VM's own Docker filter with; `None`: left alone (the default).
    pub open_vm_firewall: Option<String>,
    /// Whether the nameserver was given (flag or config file), not the default: only then does
    /// `watch`'s responder forward names it does not know there.
    pub nameserver_set: bool,
    /// `watch`'s DNS responder, while it runs: the DNS backends point the domain here instead of
    /// at `nameserver` (never read from a file or flag).
    pub responder: Option<SocketAddrV4>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    /// Others may not read the file: errors name the line only, never its content.
    private: bool,
}

impl Source<'_> {
    fn check<T>(
        &self,
        v: &Spanned<String>,
        f: fn(&str) -> Result<T, String>,
    ) -> Result<T, SettingsError> {
        f(v.get_ref()).map_err(|e| self.err(v.span().start, &e))
    }

    /// The flag's value, else the config file's key (checked), else none.
    fn pick<T: Clone>(
        &self,
        flag: Option<&T>,
        key: &Option<Spanned<String>>,
        f: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, SettingsError> {
        match (flag, key) {
            (Some(v), _) => Ok(Some(v.clone())),
            (None, Some(k)) => self.check(k, f).map(Some),
            _ => Ok(None),
        }
    }

    /// The flags' subnets, else the config file's, else the default; never empty, never
    /// overlapping.
    fn subnets(
        &self,
        flags: &[Ipv4Net],
        key: Option<&[Spanned<String>]>,
    ) -> Result<Vec<Ipv4Net>, SettingsError> {
        let subnets: Vec<Ipv4Net> = match key {
            _ if !flags.is_empty() => flags.to_vec(),
            Some(list) => list
                .iter()
                .map(|s| self.check(s, validate::subnet))
                .collect::<Result<_, _>>()?,
            None => vec![validate::subnet(DEFAULT_SUBNET).map_err(SettingsError::Invalid)?],
        };
        if subnets.is_empty() {
            return Err(self.err(0, "subnets is empty: name at least one subnet"));
        }
        if let Some((j, i)) = overlap(&subnets) {
            let msg = format!("subnets {} and {} overlap", subnets[j], subnets[i]);
            return Err(match key {
                Some(list) if flags.is_empty() => self.err(list[i].span().start, &msg),
                _ => SettingsError::Invalid(msg),
            });
        }
        Ok(subnets)
    }

    /// The VM's address: the flag's, else the config key's.
    fn vm_ip(
        &self,
        flag: Option<Ipv4Addr>,
        key: &Option<Spanned<String>>,
    ) -> Result<Option<(Ipv4Addr, VmIpSource)>, SettingsError> {
        Ok(match (flag, key) {
            (Some(ip), _) => Some((ip, VmIpSource::Flag)),
            (None, Some(v)) => Some((
                self.check(v, validate::ipv4)?,
                VmIpSource::Config {
                    path: self.path.to_path_buf(),
                },
            )),
            _ => None,
        })
    }

    /// The engine to ask: the flag's (or the record's, for a replayed `up`), else the config
    /// key's.
    fn docker(
        &self,
        flag: Option<&Explicit>,
        key: &Option<Spanned<String>>,
        replayed: bool,
    ) -> Result<Option<(DockerSource, Explicit)>, SettingsError> {
        Ok(match (flag, key) {
            (Some(d), _) if replayed => Some((DockerSource::Recorded, d.clone())),
            (Some(d), _) => Some((DockerSource::Flag, d.clone())),
            (None, Some(d)) => Some((
                DockerSource::Config {
                    path: self.path.to_path_buf(),
                },
                self.check(d, docker_endpoint::parse_flag)?,
            )),
            _ => None,
        })
    }

    /// `--open-vm-firewall` (or its config key): the helper image to use, if asked.
    fn open_vm_firewall(
        &self,
        up: &UpArgs,
        cfg: &ConfigFile,
    ) -> Result<Option<String>, SettingsError> {
        let helper_image = self
            .pick(
                up.helper_image.as_ref(),
                &cfg.helper_image,
                crate::docker::vmfilter::helper_image,
            )?
            .unwrap_or_else(|| crate::docker::vmfilter::DEFAULT_HELPER_IMAGE.to_string());
        Ok((up.open_vm_firewall || cfg.open_vm_firewall == Some(true)).then_some(helper_image))
    }

    /// The config file's `wait`: a number of seconds.
    fn wait(&self, key: Option<&Spanned<toml::Value>>) -> Result<Option<Duration>, SettingsError> {
        let Some(w) = key else { return Ok(None) };
        let secs = match w.get_ref() {
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                return Err(self.err(
                    w.span().start,
                    &format!(
                        "wait is a number of seconds (wait = 30), not a {}",
                        other.type_str()
                    ),
                ));
            }
        };
        validate::wait_secs(&secs)
            .map(Some)
            .map_err(|e| self.err(w.span().start, &e))
    }

    fn err(&self, offset: usize, msg: &str) -> SettingsError {
        let (path, line) = (self.path.to_path_buf(), line_of(self.text, offset));
        if self.private {
            SettingsError::Private { path, line }
        } else {
            // one line, and nothing of the file's that a terminal would act on (`\r`, escapes)
            let msg = msg
                .chars()
                .map(|c| match c {
                    '\n' => " ".to_string(),
                    c if c.is_control() => c.escape_debug().to_string(),
                    c => c.to_string(),
                })
                .collect();
            SettingsError::At { path, line, msg }
        }
    }
}

/// The first pair (earlier, later) of overlapping subnets.
fn overlap(subnets: &[Ipv4Net]) -> Option<(usize, usize)> {
    subnets.iter().enumerate().find_map(|(i, a)| {
        subnets[..i]
            .iter()
            .position(|b| a.contains(b) || b.contains(a))
            .map(|j| (j, i))
    })
}

/// Read and parse the config file. `explicit` says whether the user named it (then it must
/// exist). Returns the file, its text, and whether others may read it.
fn read_config(path: &Path, explicit: bool) -> Result<(ConfigFile, String, bool), SettingsError> {
    let read = |err| SettingsError::Read {
        path: path.to_path_buf(),
        err,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok((ConfigFile::default(), String::new(), true));
        }
        Err(e) => return Err(read(e)),
    };
    // dockroute runs as root: a config file others can change is a way to steer it.
    if crate::trust::enforced() {
        crate::trust::check_file(path).map_err(|err| SettingsError::Untrusted {
            path: path.to_path_buf(),
            err,
        })?;
    }
    let private = meta.mode() & 0o004 == 0;
    let text = std::fs::read_to_string(path).map_err(read)?;
    let cfg = parse_config_text(path, &text, private)?;
    Ok((cfg, text, private))
}

/// Parse the config file's text (`path` only names it in errors; `private`: quote nothing of it).
fn parse_config_text(path: &Path, text: &str, private: bool) -> Result<ConfigFile, SettingsError> {
    toml::from_str(text).map_err(|e| {
        let src = Source {
            path,
            text,
            private,
        };
        let msg = e.message().trim().replace('\n', " ");
        src.err(e.span().map(|s| s.start).unwrap_or(0), &msg)
    })
}

/// For a bare `up`: the flags the last successful `up` recorded (none if there is no record, it
/// cannot be read, or it predates recorded flags).
fn recorded_flags(up: &UpArgs, state_dir: &Path) -> Option<UpFlags> {
    if !up.flags().is_empty() {
        return None;
    }
    match crate::record::Store::new(state_dir).load() {
        Ok(r) => r.and_then(|r| r.flags),
        Err(e) => {
            tracing::warn!("not re-applying the last up's settings: {e}");
            None
        }
    }
}

/// A bare `up` (no settings flags: a VPN hook's, the boot job's, or a person's) does what the
/// last successful `up` did, unless the config file says otherwise.
struct Replay {
    /// The recorded flags as `up` flags (validated again).
    args: Option<UpArgs>,
    flags: Option<UpFlags>,
    /// The environment's `DOCKER_HOST`, else (replaying, no VM source in the config file) the
    /// recorded one.
    docker_host: Option<String>,
}

impl Replay {
    fn of(
        up: Option<&UpArgs>,
        cfg: &ConfigFile,
        state_dir: &Path,
        docker_host: Option<String>,
    ) -> Result<Replay, SettingsError> {
        let mut docker_host = docker_host.filter(|d| !d.is_empty());
        let Some((up, flags)) = up.and_then(|up| Some((up, recorded_flags(up, state_dir)?))) else {
            return Ok(Replay {
                args: None,
                flags: None,
                docker_host,
            });
        };
        let args = flags.replay(up, cfg).map_err(|e| {
            SettingsError::Invalid(format!(
                "the record in {} holds a bad flag: {e}",
                state_dir.display()
            ))
        })?;
        if docker_host.is_none() && cfg.vm_ip.is_none() && cfg.machine.is_none() {
            docker_host = flags.docker_host.clone();
        }
        Ok(Replay {
            args: Some(args),
            flags: Some(flags),
            docker_host,
        })
    }
}

/// The state directory is a directory (or not there yet).
fn check_state_dir(state_dir: &Path) -> Result<(), SettingsError> {
    if state_dir.as_os_str().is_empty() {
        return Err(SettingsError::Invalid("--state-dir is empty".into()));
    }
    if std::fs::metadata(state_dir).is_ok_and(|m| !m.is_dir()) {
        return Err(SettingsError::Invalid(format!(
            "--state-dir {} is a file, not a directory (dockroute keeps its record and lock in a directory)",
            state_dir.display()
        )));
    }
    Ok(())
}

/// `up`'s warnings about settings that are allowed but likely not meant.
fn warn_up(vm_ip_from: Option<&VmIpSource>, machine: Option<&str>, domain: &str) {
    if let (Some(from), Some(m)) = (vm_ip_from, machine) {
        tracing::warn!("--machine {m} is ignored: the VM IP comes from {from}");
    }
    if TOP_LEVEL_DOMAINS.contains(&domain.to_ascii_lowercase().as_str()) {
        tracing::warn!(
            "--domain '{domain}' is a top-level domain others use: every name under it would go to the VM's DNS server; use a name of your own (the default is {DEFAULT_DOMAIN})"
        );
    }
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
        let (cfg, text, private) = read_config(&config_path, config.is_some())?;
        Self::build(
            &config_path,
            cfg,
            &text,
            private,
            state_dir,
            json,
            up,
            docker_host,
        )
    }

    /// The settings a config file's text gives without flags, reading no file and no record
    /// (`path` only names the file in errors). The fuzzer's entry point (tests/fuzz).
    pub fn parse_config(path: &Path, text: &str) -> Result<Settings, SettingsError> {
        let cfg = parse_config_text(path, text, false)?;
        Self::build(path, cfg, text, false, None, false, None, None)
    }

    /// The settings from the parsed config file, the flags and `DOCKER_HOST`; for `up` without
    /// settings flags, the last `up`'s recorded flags.
    #[allow(clippy::too_many_arguments)]
    fn build(
        config_path: &Path,
        cfg: ConfigFile,
        text: &str,
        private: bool,
        state_dir: Option<&Path>,
        json: bool,
        up: Option<&UpArgs>,
        docker_host: Option<String>,
    ) -> Result<Settings, SettingsError> {
        let default_up = UpArgs::default();
        let is_up = up.is_some();
        let config_path = config_path.to_path_buf();
        let src = Source {
            path: &config_path,
            text,
            private,
        };
        let state_dir = state_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(crate::record::DEFAULT_STATE_DIR));
        let Replay {
            args,
            flags: replayed,
            docker_host,
        } = Replay::of(up, &cfg, &state_dir, docker_host)?;
        let up = args.as_ref().or(up).unwrap_or(&default_up);

        let interface = src.pick(up.interface.as_ref(), &cfg.interface, validate::interface)?;
        let vm_ip = src.vm_ip(up.vm_ip, &cfg.vm_ip)?;
        let machine = src.pick(up.machine.as_ref(), &cfg.machine, validate::machine_name)?;
        let subnets = src.subnets(&up.subnets, cfg.subnets.as_deref())?;
        let domain = src
            .pick(up.domain.as_ref(), &cfg.domain, validate::domain)?
            .unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
        let nameserver_set = up.nameserver.is_some() || cfg.nameserver.is_some();
        let nameserver = src
            .pick(
                up.nameserver.as_ref(),
                &cfg.nameserver,
                validate::nameserver,
            )?
            .unwrap_or_else(|| {
                SocketAddrV4::new(
                    subnets[0].hosts().next().unwrap_or(subnets[0].network()),
                    53,
                )
            });
        let wait = match up.wait {
            Some(w) => Some(w),
            None => src.wait(cfg.wait.as_ref())?,
        };
        let docker = src.docker(up.docker.as_ref(), &cfg.docker, replayed.is_some())?;
        let open_vm_firewall = src.open_vm_firewall(up, &cfg)?;
        let dns = up.dns.or(cfg.dns).unwrap_or(DnsMode::Auto);
        let firewall = up.firewall.or(cfg.firewall).unwrap_or(FirewallMode::Auto);
        let resolver_dir = up
            .resolver_dir
            .clone()
            .or(cfg.resolver_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RESOLVER_DIR));
        check_state_dir(&state_dir)?;
        if is_up {
            warn_up(
                vm_ip.as_ref().map(|(_, from)| from),
                machine.as_deref(),
                &domain,
            );
        }

        Ok(Settings {
            config_path,
            state_dir,
            json,
            request: Request {
                flags: {
                    let mut f = up.flags();
                    if vm_ip.is_none() && machine.is_none() {
                        f.docker_host = docker_host.clone();
                    }
                    f
                },
                replayed,
                interface,
                vm_ip,
                machine,
                docker_host,
                subnets,
                wait,
                pinned: None,
            },
            domain,
            nameserver,
            dns,
            resolver_dir,
            resolv_conf: PathBuf::from(crate::dns::RESOLV_CONF),
            firewall,
            docker,
            docker_listing: crate::docker::Listing::Ask,
            open_vm_firewall,
            nameserver_set,
            responder: None,
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
    fn open_vm_firewall_is_off_unless_asked_and_takes_a_checked_image() {
        assert_eq!(load_cfg("").unwrap().open_vm_firewall, None);
        assert_eq!(
            load_cfg("open_vm_firewall = true\n")
                .unwrap()
                .open_vm_firewall
                .as_deref(),
            Some(crate::docker::vmfilter::DEFAULT_HELPER_IMAGE)
        );
        let s = load_cfg("open_vm_firewall = true\nhelper_image = \"alpine:3\"\n").unwrap();
        assert_eq!(s.open_vm_firewall.as_deref(), Some("alpine:3"));
        let e = load_cfg("open_vm_firewall = true\nhelper_image = \"-x y\"\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn errors_quote_no_control_characters() {
        // toml's message quotes the value; a carriage return in it would let the config file
        // rewrite the line a terminal shows (found by the settings fuzz target)
        let path = Path::new("/etc/dockroute/config.toml");
        for text in ["firewall = \"a\\ro\"\n", "dns = \"x\\u001b[2Ky\"\n"] {
            let e = Settings::parse_config(path, text).unwrap_err().to_string();
            assert!(!e.contains(|c: char| c.is_control()), "{e:?}");
            assert!(
                e.starts_with("/etc/dockroute/config.toml line 1: "),
                "{e:?}"
            );
        }
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
        assert!(
            s.unwrap_err()
                .to_string()
                .contains("cannot read config file")
        );
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
            .to_string();
        assert!(
            e.contains("config.toml line 3: invalid IPv4 address '300.1.1.1'"),
            "{e}"
        );
        let e = load_cfg("subnets = [\n  \"172.17.0.0/16\",\n  \"10.1.2.3/8\",\n]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3: invalid subnet '10.1.2.3/8'"), "{e}");
        let e = load_cfg("\nwait = \"30\"\n").unwrap_err().to_string();
        assert!(
            e.contains("line 2: wait is a number of seconds (wait = 30), not a string"),
            "{e}"
        );
        assert_eq!(
            load_cfg("wait = 30\n").unwrap().wait(),
            Some(Duration::from_secs(30))
        );
        let e = load_cfg("vm-ip = 1\n").unwrap_err().to_string();
        assert!(e.contains("line 1:") && e.contains("unknown field"), "{e}");
        let e = load_cfg("a = [\n").unwrap_err().to_string();
        assert!(e.contains("config.toml line"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn errors_about_a_file_others_cannot_read_never_quote_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        for (body, line) in [
            ("interface = \"vboxnet0\"\nvm_ip = \"hunter2-secret\"\n", 2),
            ("hunter2_secret = 1\n", 1),
            ("vm_ip = hunter2-secret\n", 1),
            ("dns = \"hunter2-secret\"\n", 1),
            ("subnets = [\"10.0.0.0/8\",\n \"10.123.0.0/16\"]\n", 2),
        ] {
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = Settings::load(Some(&p), None, false, None, None)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("{} line {line}: ", p.display())),
                "{e}"
            );
            for secret in ["hunter2", "vm_ip", "dns", "10.123", "10.0.0.0"] {
                assert!(!e.contains(secret), "{secret} quoted: {e}");
            }
        }
        // readable by everyone anyway: the value helps
        std::fs::write(&p, "vm_ip = \"hunter2-secret\"\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Settings::load(Some(&p), None, false, None, None).unwrap_err();
        assert!(e.to_string().contains("'hunter2-secret'"), "{e}");
    }

    #[test]
    fn as_root_a_config_file_others_can_change_is_refused() {
        if !crate::trust::enforced() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "").unwrap();
        Settings::load(Some(&p), None, false, None, None).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let e = Settings::load(Some(&p), None, false, None, None).unwrap_err();
        assert!(matches!(e, SettingsError::Untrusted { .. }), "{e}");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
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
        assert!(e.unwrap_err().to_string().contains("overlap"));
        let s = Settings::load(None, None, false, None, None).unwrap();
        assert_eq!(s.firewall, FirewallMode::Auto);
    }

    #[test]
    fn the_docker_key_names_the_engine_or_turns_it_off() {
        let path = Path::new("/etc/dockroute/config.toml");
        let s = Settings::parse_config(path, "docker = \"tcp://192.168.99.100:2375\"\n").unwrap();
        let (source, explicit) = s.docker.unwrap();
        assert_eq!(source, DockerSource::Config { path: path.into() });
        assert_eq!(explicit.to_string(), "tcp://192.168.99.100:2375");
        let s = Settings::parse_config(path, "docker = \"off\"\n").unwrap();
        assert_eq!(s.docker.unwrap().1, Explicit::Off);
        assert!(Settings::parse_config(path, "").unwrap().docker.is_none());
        let e = Settings::parse_config(path, "\ndocker = \"ssh://me@vm\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/dockroute/config.toml line 2: ")
                && e.contains("not a Docker endpoint"),
            "{e}"
        );
    }
}
