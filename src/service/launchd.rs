//! The launchd job: `launchd/io.github.dockroute.plist` at the top of the repository is its source
//! of truth, built into the binary, parsed and rendered with the `plist` crate (so the binary's
//! path is escaped as XML wants it). The label is reverse-DNS, as launchd asks, under the project's
//! GitHub namespace (`io.github.`): dockroute owns no domain, and a name under `com.apple.` or a
//! domain somebody else owns could clash.

use super::{Place, ServiceError};
use std::path::Path;

pub const LABEL: &str = "io.github.dockroute";
const TEMPLATE: &str = include_str!("../../launchd/io.github.dockroute.plist");
/// The comment that marks the file as dockroute's (the `plist` crate writes no comments; it goes
/// after the XML declaration).
const HEADER: &str = "<!-- dockroute: the launchd job (dockroute install writes it; dockroute uninstall removes it) -->";
/// Where launchd logs the job's output (StandardOutPath, StandardErrorPath).
pub const LOG: &str = "/var/log/dockroute.log";

pub const PLACE: Place = Place {
    client: "launchd (dockroute watch from boot)",
    dir: "Library/LaunchDaemons",
    file: "io.github.dockroute.plist",
    mode: 0o644,
    create_dir: true,
    is_ours,
};

fn bad(what: impl std::fmt::Display) -> ServiceError {
    ServiceError::Refused(format!("launchd/{LABEL}.plist: {what}"))
}

/// The job for the dockroute binary at `bin`.
pub fn render(bin: &Path) -> Result<String, ServiceError> {
    let bin = super::job_binary(bin)?;
    let mut v = plist::Value::from_reader_xml(TEMPLATE.as_bytes()).map_err(bad)?;
    let job = v
        .as_dictionary_mut()
        .ok_or_else(|| bad("not a dictionary"))?;
    let args = job
        .get_mut("ProgramArguments")
        .and_then(plist::Value::as_array_mut)
        .ok_or_else(|| bad("no ProgramArguments"))?;
    for a in args.iter_mut() {
        if a.as_string() == Some(super::BIN) {
            *a = plist::Value::String(bin.to_string());
        }
    }
    let mut out = Vec::new();
    v.to_writer_xml(&mut out).map_err(bad)?;
    let xml = String::from_utf8(out).map_err(bad)?;
    let (decl, rest) = xml
        .split_once('\n')
        .ok_or_else(|| bad("no XML declaration"))?;
    Ok(format!("{decl}\n{HEADER}\n{rest}\n"))
}

/// A job file is dockroute's when its header comes right after the XML declaration.
pub fn is_ours(content: &str) -> bool {
    content.lines().nth(1) == Some(HEADER)
}

/// launchd's control program (/bin/launchctl), run through [`crate::exec`].
#[cfg(target_os = "macos")]
const LAUNCHCTL: &str = "launchctl";

/// `launchctl bootstrap system` the installed job (a re-install first boots out the old one).
#[cfg(target_os = "macos")]
pub fn activate(path: &Path, reinstall: bool) -> Result<Vec<String>, ServiceError> {
    let target = format!("system/{LABEL}");
    let mut steps = Vec::new();
    if reinstall {
        // not loaded is fine
        if let Ok(s) = super::run_tool(LAUNCHCTL, &["bootout", &target]) {
            steps.push(s);
        }
    }
    steps.push(super::run_tool(LAUNCHCTL, &["enable", &target])?);
    let p = path
        .to_str()
        .ok_or_else(|| bad(format!("{} is not UTF-8", path.display())))?;
    steps.push(super::run_tool(LAUNCHCTL, &["bootstrap", "system", p])?);
    Ok(steps)
}

/// `launchctl bootout` the job (before its file is removed). A job that is not loaded is fine.
#[cfg(target_os = "macos")]
pub fn deactivate() -> Result<Vec<String>, ServiceError> {
    match super::run_tool(LAUNCHCTL, &["bootout", &format!("system/{LABEL}")]) {
        Ok(s) => Ok(vec![s]),
        Err(e) => {
            tracing::warn!("{e}");
            Ok(Vec::new())
        }
    }
}

/// What to run by hand when dockroute did not tell launchd.
pub fn manual_steps() -> Vec<String> {
    vec![format!(
        "launchctl bootstrap system /{}/{}",
        PLACE.dir, PLACE.file
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_parses_back_with_every_key() {
        let xml = render(Path::new("/usr/local/bin/dock&route")).unwrap();
        assert!(is_ours(&xml), "{xml}");
        assert!(xml.contains("/usr/local/bin/dock&amp;route"), "{xml}");
        let v = plist::Value::from_reader_xml(xml.as_bytes()).unwrap();
        let d = v.as_dictionary().unwrap();
        assert_eq!(d["Label"].as_string(), Some(LABEL));
        let args: Vec<&str> = d["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_string().unwrap())
            .collect();
        assert_eq!(args, ["/usr/local/bin/dock&route", "watch"]);
        assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
        assert_eq!(d["KeepAlive"].as_boolean(), Some(true));
        assert_eq!(d["StandardOutPath"].as_string(), Some(LOG));
        assert_eq!(d["StandardErrorPath"].as_string(), Some(LOG));
        assert!(render(Path::new("dockroute")).is_err());
        assert_eq!(format!("{}.plist", LABEL), PLACE.file);
    }
}
