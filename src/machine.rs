//! VM IP sources outside the kernel: the docker-machine store and `DOCKER_HOST`. Parsing is pure;
//! only [`machine_config_path`] and [`read_machine_ip`] look at the environment and the disk.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The IP a docker-machine `config.json` records for its VM (`Driver.IPAddress`).
pub fn parse_machine_config(json: &str) -> Result<Ipv4Addr, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not valid JSON ({e})"))?;
    let ip = v
        .get("Driver")
        .and_then(|d| d.get("IPAddress"))
        .and_then(|ip| ip.as_str())
        .unwrap_or("");
    if ip.is_empty() {
        return Err("it records no Driver.IPAddress (is the machine created and started?)".into());
    }
    crate::validate::ipv4(ip).map_err(|e| format!("Driver.IPAddress: {e}"))
}

/// What `DOCKER_HOST` says about the VM.
#[derive(Debug, PartialEq, Eq)]
pub enum DockerHost {
    /// `tcp://IP:PORT` (or `tcp://IP`): the daemon, hence the VM, is at IP.
    Ip(Ipv4Addr),
    /// Set, but not to a TCP address with an IPv4 literal (unix socket, ssh, a host name).
    NotAnIp(String),
}

pub fn parse_docker_host(value: &str) -> DockerHost {
    let not_ip = || DockerHost::NotAnIp(value.to_string());
    let Some(rest) = value.strip_prefix("tcp://") else {
        return not_ip();
    };
    let hostport = rest.split('/').next().unwrap_or("");
    let host = match hostport.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return not_ip(),
        None => hostport,
    };
    match crate::validate::ipv4(host) {
        Ok(ip) => DockerHost::Ip(ip),
        Err(_) => not_ip(),
    }
}

/// The host name in a `DOCKER_HOST=tcp://NAME[:PORT]` that names a host rather than an IP.
pub fn docker_host_name(value: &str) -> Option<&str> {
    let rest = value.strip_prefix("tcp://")?;
    let hostport = rest.split('/').next().unwrap_or("");
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let is_ip = crate::validate::ipv4(host).is_ok() || host.starts_with('[');
    (!host.is_empty() && !is_ip).then_some(host)
}

/// Where docker-machine keeps NAME's config: `$MACHINE_STORAGE_PATH/machines/NAME/config.json`,
/// else under `~/.docker/machine` of `$SUDO_USER` when run through sudo, else of the caller.
pub fn machine_config_path(name: &str) -> Result<PathBuf, String> {
    let store = match std::env::var_os("MACHINE_STORAGE_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => home_dir()?.join(".docker").join("machine"),
    };
    Ok(store.join("machines").join(name).join("config.json"))
}

fn home_dir() -> Result<PathBuf, String> {
    if let Ok(user) = std::env::var("SUDO_USER")
        && !user.is_empty()
    {
        return crate::nss::home_of(&user)
            .map_err(|e| format!("cannot find the home of SUDO_USER '{user}': {e}"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    crate::nss::home_of(&nix::unistd::getuid().to_string())
        .map_err(|e| format!("cannot find the home directory ({e}); set MACHINE_STORAGE_PATH"))
}

/// Read the VM IP of machine `name` from `path`.
pub fn read_machine_ip(name: &str, path: &Path) -> Result<Ipv4Addr, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "docker-machine '{name}': cannot read {}: {e}",
            path.display()
        )
    })?;
    parse_machine_config(&text)
        .map_err(|e| format!("docker-machine '{name}': {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_driver_ip_address() {
        let json = r#"{"ConfigVersion":3,"Driver":{"IPAddress":"192.168.99.100","MachineName":"default","SSHUser":"docker"},"DriverName":"virtualbox"}"#;
        assert_eq!(
            parse_machine_config(json).unwrap(),
            Ipv4Addr::new(192, 168, 99, 100)
        );
    }

    #[test]
    fn rejects_missing_or_bad_ip() {
        assert!(
            parse_machine_config(r#"{"Driver":{"IPAddress":""}}"#)
                .unwrap_err()
                .contains("no Driver.IPAddress")
        );
        assert!(parse_machine_config(r#"{"Driver":{}}"#).is_err());
        assert!(parse_machine_config(r#"{"Driver":{"IPAddress":"999.1.1.1"}}"#).is_err());
        assert!(
            parse_machine_config("{not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn docker_host_forms() {
        let ip = Ipv4Addr::new(192, 168, 99, 100);
        assert_eq!(
            parse_docker_host("tcp://192.168.99.100:2376"),
            DockerHost::Ip(ip)
        );
        assert_eq!(
            parse_docker_host("tcp://192.168.99.100"),
            DockerHost::Ip(ip)
        );
        assert_eq!(
            parse_docker_host("tcp://192.168.99.100:2376/"),
            DockerHost::Ip(ip)
        );
        for other in [
            "unix:///var/run/docker.sock",
            "ssh://me@vm",
            "tcp://dockervm:2376",
            "tcp://[::1]:2376",
            "tcp://1.2.3.4:x",
            "",
        ] {
            assert!(
                matches!(parse_docker_host(other), DockerHost::NotAnIp(_)),
                "{other}"
            );
        }
    }

    #[test]
    fn reads_a_machine_store() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"Driver":{"IPAddress":"10.0.5.2"}}"#).unwrap();
        assert_eq!(
            read_machine_ip("dev", &p).unwrap(),
            Ipv4Addr::new(10, 0, 5, 2)
        );
        let e = read_machine_ip("dev", &dir.path().join("nope.json")).unwrap_err();
        assert!(e.starts_with("docker-machine 'dev': cannot read"), "{e}");
    }
}
