//! Users and host names through the system's name service switch (NSS), as applications see them.
//!
//! On Linux dockroute is one static glibc binary (.cargo/config.toml). A static glibc that calls
//! getpwnam or getaddrinfo may load NSS modules (libnss_systemd, libnss_mdns, ...) into the
//! process, which is only safe with the exact glibc it was linked against, so after a glibc
//! upgrade it can crash. Here the lookups run in `getent`, glibc's own NSS front end, as a
//! separate (dynamically linked) process, with an argument vector, found and run as
//! [`crate::exec`] does (system directories only, a cleared environment). Only `--machine` under sudo
//! and `status --check-name` need them. On macOS the binary is dynamic: libc answers in-process.

use std::net::IpAddr;
use std::path::PathBuf;

/// The home directory of `user` (a name or a numeric uid).
pub fn home_of(user: &str) -> Result<PathBuf, String> {
    check_key(user, "user")?;
    platform::home_of(user)?.ok_or_else(|| format!("no user '{user}'"))
}

/// The addresses `name` resolves to (getaddrinfo, any family), without duplicates.
pub fn addresses(name: &str) -> Result<Vec<IpAddr>, String> {
    check_key(name, "name")?;
    platform::addresses(name)
}

/// A lookup key is one argument, never an option.
fn check_key(key: &str, what: &str) -> Result<(), String> {
    if key.is_empty()
        || key.starts_with('-')
        || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("invalid {what} '{}'", key.escape_debug()));
    }
    Ok(())
}

/// The home field of a passwd line (`name:pw:uid:gid:gecos:home:shell`).
pub fn parse_passwd_home(line: &str) -> Option<PathBuf> {
    let home = line.trim_end_matches('\n').split(':').nth(5)?;
    (!home.is_empty()).then(|| PathBuf::from(home))
}

/// The addresses in `getent ahosts` output (`ADDRESS SOCKTYPE [NAME]` per line), in order,
/// without duplicates.
pub fn parse_ahosts(out: &str) -> Vec<IpAddr> {
    unique(
        out.lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok()),
    )
}

/// `ips` in order, each once (resolvers list an address once per socket type).
fn unique(ips: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

#[cfg(target_os = "linux")]
mod platform {
    use std::net::IpAddr;
    use std::path::PathBuf;

    /// `getent DATABASE -- KEY` (the system's getent, see [`crate::exec`]): Ok(None) when the
    /// key is not found (exit status 2).
    fn getent(database: &str, key: &str) -> Result<Option<String>, String> {
        let args = [database, "--", key].map(String::from);
        let out = crate::exec::output("getent", &args, None).map_err(|e| e.to_string())?;
        match out.code {
            Some(0) => Ok(Some(out.stdout)),
            Some(2) => Ok(None),
            _ => Err(format!(
                "getent {database} {key}: {}",
                crate::exec::one_line(&out.stderr)
            )),
        }
    }

    pub fn home_of(user: &str) -> Result<Option<PathBuf>, String> {
        Ok(getent("passwd", user)?.and_then(|l| super::parse_passwd_home(&l)))
    }

    pub fn addresses(name: &str) -> Result<Vec<IpAddr>, String> {
        match getent("ahosts", name)? {
            Some(out) => Ok(super::parse_ahosts(&out)),
            None => Err(format!("{name}: not found")),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    use std::net::{IpAddr, ToSocketAddrs};
    use std::path::PathBuf;

    pub fn home_of(user: &str) -> Result<Option<PathBuf>, String> {
        let found = match user.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(user),
        };
        Ok(found.map_err(|e| e.to_string())?.map(|u| u.dir))
    }

    pub fn addresses(name: &str) -> Result<Vec<IpAddr>, String> {
        let addrs = (name, 0u16).to_socket_addrs().map_err(|e| e.to_string())?;
        Ok(super::unique(addrs.map(|a| a.ip())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_home_is_the_sixth_field() {
        assert_eq!(
            parse_passwd_home("dev:x:1000:1000:Dev,,,:/home/dev:/bin/zsh\n"),
            Some(PathBuf::from("/home/dev"))
        );
        assert_eq!(parse_passwd_home("dev:x:1000:1000::"), None);
        assert_eq!(parse_passwd_home("garbage"), None);
    }

    #[test]
    fn ahosts_addresses_once_each_in_order() {
        let out = "172.17.0.2      STREAM redis.docker\n172.17.0.2      DGRAM  \n\
                   172.17.0.2      RAW    \nfd00::2         STREAM \nnot-an-ip RAW\n";
        assert_eq!(
            parse_ahosts(out),
            vec![
                "172.17.0.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn keys_that_could_be_options_are_refused() {
        for bad in ["", "-s", "--help", "a b", "a\nb"] {
            assert!(addresses(bad).is_err(), "{bad:?}");
            assert!(home_of(bad).is_err(), "{bad:?}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn finds_root_and_localhost() {
        assert_eq!(home_of("root").unwrap(), PathBuf::from("/root"));
        assert_eq!(home_of("0").unwrap(), PathBuf::from("/root"));
        assert!(home_of("no-such-user-dockroute").is_err());
        assert!(
            addresses("localhost")
                .unwrap()
                .contains(&"127.0.0.1".parse::<IpAddr>().unwrap())
        );
    }
}
