//! Post-connect hooks for VPN clients: `dockroute install --hooks` puts each one where its client
//! looks for it, if that directory exists; `dockroute uninstall` removes them. The scripts'
//! source is scripts/hooks/ (built into the binary); every installed file carries a header line
//! naming dockroute, and a file without it is never replaced or removed.

use super::{BIN, MARK, Place, ServiceError};
use std::path::Path;

pub struct Hook {
    /// For people: which client runs it.
    pub client: &'static str,
    /// The directory (relative to the root) that must exist for the hook to be installed.
    pub dir: &'static str,
    pub file: &'static str,
    pub mode: u32,
    template: &'static str,
}

pub const HOOKS: &[Hook] = &[
    Hook {
        client: "NetworkManager (vpn-up and up events)",
        dir: "etc/NetworkManager/dispatcher.d",
        file: "90-dockroute",
        mode: 0o755,
        template: include_str!("../../scripts/hooks/nm-dispatcher"),
    },
    Hook {
        client: "vpnc-script (openconnect, vpnc)",
        dir: "etc/vpnc/post-connect.d",
        file: "dockroute",
        mode: 0o644,
        template: include_str!("../../scripts/hooks/vpnc-post-connect"),
    },
    Hook {
        client: "OpenVPN (route-up; add it to the client config)",
        dir: "etc/openvpn",
        file: "dockroute-route-up",
        mode: 0o755,
        template: include_str!("../../scripts/hooks/openvpn-route-up"),
    },
];

/// The hook's text for the dockroute binary at `bin`.
pub fn render(h: &Hook, bin: &Path) -> Result<String, ServiceError> {
    let b = bin.to_str().unwrap_or("");
    if !bin.is_absolute() || b.is_empty() || b.contains(['\'', '\n', '\\']) {
        return Err(ServiceError::Refused(format!(
            "cannot write hooks for the binary path {}: use an absolute path without quotes",
            bin.display()
        )));
    }
    Ok(h.template.replace(BIN, b))
}

/// Whether a file's content says it is a dockroute hook.
pub fn is_ours(content: &str) -> bool {
    content.lines().take(2).any(|l| l.starts_with(MARK))
}

impl Hook {
    /// Where it goes: only where its client's directory exists.
    pub const fn place(&self) -> Place {
        Place {
            client: self.client,
            dir: self.dir,
            file: self.file,
            mode: self.mode,
            create_dir: false,
            is_ours,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_names_dockroute_and_gets_the_binary_path() {
        for h in HOOKS {
            let body = render(h, Path::new("/usr/local/bin/dockroute")).unwrap();
            assert!(is_ours(&body), "{}", h.file);
            assert!(body.contains("'/usr/local/bin/dockroute' up"), "{body}");
            assert!(!body.contains(BIN));
        }
        assert!(render(&HOOKS[0], Path::new("relative/dockroute")).is_err());
        assert!(render(&HOOKS[0], Path::new("/tmp/it's/dockroute")).is_err());
    }
}
