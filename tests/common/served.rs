//! A small server on a unix socket for the tests' engines (the fake engine of docker_engine.rs,
//! the relay of [`super::relay`]): a thread accepts, a thread per connection serves, `Drop`
//! stops it and removes the socket. It keeps the API paths it was asked for.

use std::io::BufRead;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The paths a server was asked for, in order.
pub type Asked = Arc<Mutex<Vec<String>>>;

pub struct Served {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    asked: Asked,
}

impl Served {
    /// Listen at `path`; `serve` gets each connection (on a thread of its own) and the list
    /// of paths to add to.
    pub fn start(
        path: PathBuf,
        serve: impl Fn(UnixStream, &Mutex<Vec<String>>) + Clone + Send + 'static,
    ) -> Served {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("binding the test engine's socket");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let asked: Asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (serve, log) = (serve.clone(), log.clone());
                std::thread::spawn(move || serve(conn, &log));
            }
        });
        Served { path, stop, asked }
    }

    /// How many times `path` (`/events`, `/networks`) was asked for; with `forget`, the list
    /// starts again.
    pub fn times_asked(&self, path: &str, forget: bool) -> usize {
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        let n = asked.iter().filter(|p| *p == path).count();
        if forget {
            asked.clear();
        }
        n
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path); // wake the accept loop
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The API path of a request line (`GET /v1.41/networks?filters=... HTTP/1.1` -> `/networks`),
/// and it is added to `asked`.
pub fn api_path(request_line: &str, asked: &Mutex<Vec<String>>) -> String {
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or("");
    let path = match path.strip_prefix("/v") {
        Some(rest) => rest.find('/').map_or(path, |i| &rest[i..]),
        None => path,
    }
    .to_string();
    asked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.clone());
    path
}

/// One request's head: its request line and header lines, each as read (with its CRLF), without
/// the blank line that ends it; `None` when the connection ends first.
pub fn read_head(reader: &mut impl BufRead) -> Option<Vec<String>> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" && !head.is_empty() {
            return Some(head);
        }
        head.push(line);
    }
}
