//! Running system programs (iptables, iptables-legacy, nft, getent).
//!
//! A program is looked up only in a fixed list of system directories, never through `$PATH` (an
//! empty or user-chosen PATH would otherwise run `./iptables` as root). As root, the file found
//! must be one only root can change ([`crate::trust::check_file`]: root-owned, not writable by
//! others, all the way up; root-owned symlinks such as /etc/alternatives are followed and checked).
//! It runs with a cleared environment (only `LC_ALL=C` and `PATH` set to the same fixed
//! directories, since iptables-nft and friends may exec helpers), stdin from /dev/null unless
//! input is given, and an argument vector (no shell).

use crate::trust::{self, TrustError};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Where system programs are looked up, in order. On macOS these are all on the sealed system
/// volume; nothing user-writable (/usr/local, Homebrew) is added.
pub const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The `PATH` programs run with (the same directories).
pub const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{program}: not found in {SYSTEM_PATH}")]
    NotFound { program: String },
    #[error("{program}: refusing to run it: {source}")]
    Untrusted {
        program: String,
        #[source]
        source: TrustError,
    },
    #[error("{program}: cannot run {}: {msg}", .path.display())]
    Spawn {
        program: String,
        path: PathBuf,
        msg: String,
    },
    #[error("{program} {}: {msg}", .args.join(" "))]
    Failed {
        program: String,
        args: Vec<String>,
        /// The exit status (None: killed by a signal).
        code: Option<i32>,
        /// Its stderr, on one line.
        msg: String,
    },
}

impl ExecError {
    /// The program's own error text, when it ran and failed.
    pub fn failure_text(&self) -> Option<&str> {
        match self {
            ExecError::Failed { msg, .. } => Some(msg),
            _ => None,
        }
    }
}

/// What a finished program printed.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// The absolute path of `program` in [`SYSTEM_DIRS`] (a regular, executable file), checked with
/// [`trust::check_file`] when running as root.
pub fn find(program: &str) -> Result<PathBuf, ExecError> {
    use std::os::unix::fs::PermissionsExt;
    let not_found = || ExecError::NotFound {
        program: program.to_string(),
    };
    if program.is_empty() || program.contains('/') || program.starts_with('.') {
        return Err(not_found());
    }
    for dir in SYSTEM_DIRS {
        let path = PathBuf::from(dir).join(program);
        // metadata follows symlinks: a dangling link or a device is "not here"
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        if trust::enforced() {
            trust::check_file(&path).map_err(|source| ExecError::Untrusted {
                program: program.to_string(),
                source,
            })?;
        }
        return Ok(path);
    }
    Err(not_found())
}

/// Whether `program` is installed (found in the system directories, trusted or not).
pub fn installed(program: &str) -> bool {
    !matches!(find(program), Err(ExecError::NotFound { .. }))
}

/// Run `program ARGS` (stdin: `input`, or /dev/null) and return what it printed, whatever its
/// exit status.
pub fn output(program: &str, args: &[String], input: Option<&[u8]>) -> Result<Output, ExecError> {
    let path = find(program)?;
    let spawn_err = |e: std::io::Error| ExecError::Spawn {
        program: program.to_string(),
        path: path.clone(),
        msg: e.to_string(),
    };
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .env("PATH", SYSTEM_PATH)
        .current_dir("/")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let out = std::thread::scope(|s| {
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            // a writer of its own: the program may fill its output pipes before reading all input
            s.spawn(move || {
                let _ = stdin.write_all(data);
            });
        }
        child.wait_with_output()
    })
    .map_err(spawn_err)?;
    Ok(Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Run `program ARGS` (with `input` on stdin, if any); its stdout, or an error naming it with its
/// stderr when it fails.
pub fn run(program: &str, args: &[String], input: Option<&[u8]>) -> Result<String, ExecError> {
    let out = output(program, args, input)?;
    if out.code != Some(0) {
        return Err(ExecError::Failed {
            program: program.to_string(),
            args: args.to_vec(),
            code: out.code,
            msg: one_line(&out.stderr),
        });
    }
    Ok(out.stdout)
}

/// A program's stderr on one line, control characters escaped.
pub fn one_line(s: &str) -> String {
    let mut out = String::new();
    for (i, line) in s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push(' ');
        }
        for c in line.chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_a_path_are_never_looked_up() {
        for bad in ["", "./sh", "../bin/sh", "/bin/sh", "sub/sh", ".hidden"] {
            assert!(
                matches!(find(bad), Err(ExecError::NotFound { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn finds_system_programs_and_runs_them_with_a_clean_environment() {
        let sh = find("sh").unwrap();
        assert!(SYSTEM_DIRS.iter().any(|d| sh.starts_with(d)), "{sh:?}");
        let env = run("env", &[], None).unwrap();
        let mut lines: Vec<&str> = env.lines().collect();
        lines.sort();
        assert_eq!(lines, ["LC_ALL=C", &format!("PATH={SYSTEM_PATH}")]);
        let e = run("sh", &["-c".into(), "echo bad >&2; exit 3".into()], None).unwrap_err();
        assert_eq!(e.to_string(), "sh -c echo bad >&2; exit 3: bad");
        assert_eq!(e.failure_text(), Some("bad"));
        assert_eq!(
            run("cat", &[], Some(b"in")).unwrap(),
            "in",
            "input reaches stdin"
        );
        assert_eq!(run("cat", &[], None).unwrap(), "", "stdin is /dev/null");
        assert!(matches!(
            find("no-such-program-dockroute"),
            Err(ExecError::NotFound { .. })
        ));
    }
}
