//! systemd-resolved restarting: a thread of its own follows D-Bus NameOwnerChanged for
//! org.freedesktop.resolve1 (zbus on a runtime of that thread) and writes a byte to a pipe the
//! loop polls whenever the name gets a new owner. Started only when DNS goes through resolved.

use crate::dns::{self, Backend};
use crate::settings::Settings;
use futures_lite::StreamExt;
use nix::fcntl::OFlag;
use std::os::fd::OwnedFd;

const RESOLVED: &str = "org.freedesktop.resolve1";

/// The read end of the pipe, or `None` when resolved is not dockroute's DNS backend.
pub fn start(settings: &Settings) -> Option<OwnedFd> {
    if dns::choose(settings.dns) != Some(Backend::Resolved) {
        return None;
    }
    let (read, write) = match nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("not following systemd-resolved restarts: pipe: {e}");
            return None;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("resolved-watch".into())
        .spawn(move || {
            if let Err(e) = follow(&write) {
                tracing::warn!(
                    "not following systemd-resolved restarts: {e} (the backstop re-check still re-applies DNS)"
                );
            }
            // dropping `write` tells the loop this source is gone
        });
    match spawned {
        Ok(_) => Some(read),
        Err(e) => {
            tracing::warn!("not following systemd-resolved restarts: {e}");
            None
        }
    }
}

fn follow(wake: &OwnedFd) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let conn = crate::dns::resolved::system_bus()
            .await
            .map_err(|e| format!("system bus: {e}"))?;
        let proxy = zbus::fdo::DBusProxy::new(&conn)
            .await
            .map_err(|e| e.to_string())?;
        let mut changes = proxy
            .receive_name_owner_changed_with_args(&[(0, RESOLVED)])
            .await
            .map_err(|e| e.to_string())?;
        while let Some(signal) = changes.next().await {
            let Ok(args) = signal.args() else { continue };
            if args.new_owner().is_some() {
                tracing::debug!("{RESOLVED} has a new owner");
                let _ = nix::unistd::write(wake, b"r");
            }
        }
        Err("the bus connection ended".to_string())
    })
}
