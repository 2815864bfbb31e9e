//! A running `dockroute watch` in a lab, its log collected (tests/watch.rs, tests/docker_watch.rs).

use super::Lab;
use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `dockroute watch` in the lab's host namespace, its stderr collected. Killed on drop.
pub struct Watch {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Watch {
    pub fn start(lab: &Lab, args: &[&str]) -> Watch {
        Watch::start_env(lab, args, &[])
    }

    pub fn start_env(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Watch {
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        let mut env = env.to_vec();
        env.push(("DOCKROUTE_LOG", "debug"));
        Watch::collect(lab.spawn(&all, &env))
    }

    pub fn collect(mut child: Child) -> Watch {
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Watch { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Only the lines that are dockroute's own (not zbus' or tokio's debug output).
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// How many reconciles have run (each ends with a line `reconcile #N`).
    pub fn reconciles(&self) -> usize {
        self.log()
            .lines()
            .filter_map(|l| {
                let rest = &l[l.find("reconcile #")? + "reconcile #".len()..];
                let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                n.parse().ok()
            })
            .max()
            .unwrap_or(0)
    }

    pub fn wait_log(&self, needle: &str) {
        assert!(
            eventually(Duration::from_secs(5), || self.log().contains(needle)),
            "no '{needle}' in the log:\n{}",
            self.log()
        );
    }

    /// The reconciles settle: none for `quiet`, at most `within` after the count at the start.
    pub fn settles(&self, quiet: Duration) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = self.reconciles();
            std::thread::sleep(quiet);
            if self.reconciles() == n {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "reconciles never stop:\n{}",
                self.log()
            );
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
    }

    /// SIGTERM, and wait (up to 10 s) for a successful end.
    pub fn end(mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        match self.exits_within(Duration::from_secs(10)) {
            Some(st) => assert!(st.success(), "watch failed:\n{}", self.log()),
            None => panic!("watch did not end:\n{}", self.log()),
        }
    }

    /// Wait for the process to end, up to `limit`.
    pub fn exits_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
