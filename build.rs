//! `--version` names the git commit the binary was built from, when it was built from a git
//! checkout of this repository (not from a tarball, nor from a directory inside someone else's
//! repository). No git, no .git, or any failure: just the package version.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    // Rebuild when git appears or disappears here, and when HEAD moves (worktrees included:
    // --git-path names HEAD in the worktree's git dir and the branch ref in the common one).
    println!("cargo:rerun-if-changed=.git");
    let mut commit = String::new();
    let top = git(&dir, &["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    let ours = match (top.and_then(|t| t.canonicalize().ok()), dir.canonicalize()) {
        (Some(t), Ok(d)) => t == d,
        _ => false,
    };
    if ours {
        // Only files that exist: cargo reruns a build script on every build for a missing one.
        let watch = |p: &str| {
            if let Some(path) = git(&dir, &["rev-parse", "--git-path", p])
                && dir.join(&path).is_file()
            {
                println!("cargo:rerun-if-changed={}", dir.join(path).display());
            }
        };
        watch("HEAD");
        watch("packed-refs");
        if let Some(r) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
            watch(&r);
        }
        if let Some(hash) = git(&dir, &["rev-parse", "--short=12", "HEAD"])
            && hash.bytes().all(|b| b.is_ascii_hexdigit())
        {
            commit = format!(" (commit {hash})");
        }
    }
    println!("cargo:rustc-env=DOCKROUTE_COMMIT={commit}");
}
