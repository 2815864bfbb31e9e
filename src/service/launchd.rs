//! The launchd job: `launchd/io.github.dockroute.plist` at the top of the repository is its source
//! of truth, built into the binary, parsed and rendered with the `plist` crate (so the binary's
//! path is escaped as XML wants it). The label is reverse-DNS, as launchd asks, under the project's
//! GitHub namespace (`io.github.`): dockroute owns no domain, and a name under `com.apple.` or a
//! domain somebody else owns could clash.

use super::{Place, ServiceError};
use std::path::Path;
use std::time::Duration;

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

/// How often and how long to ask whether a booted-out job is gone. `launchctl bootout` returns
/// before launchd has finished: it sends the job SIGTERM and, after the job's ExitTimeOut (20 s
/// unless the plist sets one), SIGKILL; a `bootstrap` of the label meanwhile fails with
/// "Bootstrap failed: 5: Input/output error", and a `down` meanwhile races the old `watch`.
pub const GONE_POLL: Duration = Duration::from_millis(200);
pub const GONE_TRIES: u32 = 125; // 25 s: ExitTimeOut and some

/// Ask `loaded` until it says no, calling `pause` between two asks, at most `tries` times after
/// the first. Whether the job is gone.
pub fn wait_gone(mut loaded: impl FnMut() -> bool, mut pause: impl FnMut(), tries: u32) -> bool {
    for _ in 0..tries {
        if !loaded() {
            return true;
        }
        pause();
    }
    !loaded()
}

/// `launchctl bootout system/LABEL`, then wait until launchd no longer lists the job
/// (`launchctl print system/LABEL` fails: 113, "Could not find service"). `Ok(None)`: the job
/// was not loaded.
#[cfg(target_os = "macos")]
fn bootout() -> Result<Option<String>, ServiceError> {
    let target = format!("system/{LABEL}");
    // not loaded (3: "No such process") is fine
    let Ok(step) = super::run_tool(LAUNCHCTL, &["bootout", &target]) else {
        return Ok(None);
    };
    let print = ["print".to_string(), target.clone()];
    let loaded = || crate::exec::output(LAUNCHCTL, &print, None).is_ok_and(|o| o.code == Some(0));
    if !wait_gone(loaded, || std::thread::sleep(GONE_POLL), GONE_TRIES) {
        return Err(ServiceError::Tool(format!(
            "{step}: launchd still lists {target} after {} s",
            (GONE_POLL * GONE_TRIES).as_secs()
        )));
    }
    Ok(Some(step))
}

/// `launchctl bootstrap system` the installed job (a re-install first boots out the old one and
/// waits until it is gone).
#[cfg(target_os = "macos")]
pub fn activate(path: &Path, reinstall: bool) -> Result<Vec<String>, ServiceError> {
    let target = format!("system/{LABEL}");
    let mut steps = Vec::new();
    if reinstall {
        steps.extend(bootout()?);
    }
    steps.push(super::run_tool(LAUNCHCTL, &["enable", &target])?);
    let p = path
        .to_str()
        .ok_or_else(|| bad(format!("{} is not UTF-8", path.display())))?;
    steps.push(super::run_tool(LAUNCHCTL, &["bootstrap", "system", p])?);
    Ok(steps)
}

/// `launchctl bootout` the job (before its file is removed and `down` runs) and wait until it
/// is gone. A job that is not loaded is fine.
#[cfg(target_os = "macos")]
pub fn deactivate() -> Result<Vec<String>, ServiceError> {
    Ok(bootout()?.into_iter().collect())
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
        // launchd's default process type: Background would throttle the watcher
        assert!(!d.contains_key("ProcessType"), "{xml}");
        assert!(render(Path::new("dockroute")).is_err());
        assert_eq!(format!("{}.plist", LABEL), PLACE.file);
    }

    #[test]
    fn a_reinstall_waits_until_the_old_job_is_gone() {
        // launchd lists the booted-out job for three more asks, then lets go
        let mut asks = 0;
        let mut pauses = 0;
        let gone = wait_gone(
            || {
                asks += 1;
                asks <= 3
            },
            || pauses += 1,
            GONE_TRIES,
        );
        assert!(gone);
        assert_eq!((asks, pauses), (4, 3));
        // a job that never goes: bounded, and reported
        let mut pauses = 0;
        assert!(!wait_gone(|| true, || pauses += 1, 5));
        assert_eq!(pauses, 5);
        assert!(GONE_POLL * GONE_TRIES > Duration::from_secs(20));
    }
}
