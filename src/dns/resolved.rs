//! The resolved backend: per-link DNS on the host-only link through systemd-resolved's D-Bus API,
//! what `resolvectl domain vboxnet0 '~docker'; resolvectl dns vboxnet0 IP;
//! resolvectl default-route vboxnet0 false` does.

use super::{DnsError, LinkDns};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

const AF_INET: i32 = 2;
const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";

#[zbus::proxy(
    interface = "org.freedesktop.resolve1.Manager",
    default_service = "org.freedesktop.resolve1",
    default_path = "/org/freedesktop/resolve1"
)]
trait Manager {
    fn get_link(&self, ifindex: i32) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "SetLinkDNS")]
    fn set_link_dns(&self, ifindex: i32, addresses: Vec<(i32, Vec<u8>)>) -> zbus::Result<()>;
    #[zbus(name = "SetLinkDNSEx")]
    fn set_link_dns_ex(
        &self,
        ifindex: i32,
        addresses: Vec<(i32, Vec<u8>, u16, String)>,
    ) -> zbus::Result<()>;
    fn set_link_domains(&self, ifindex: i32, domains: Vec<(String, bool)>) -> zbus::Result<()>;
    fn set_link_default_route(&self, ifindex: i32, enable: bool) -> zbus::Result<()>;
    fn revert_link(&self, ifindex: i32) -> zbus::Result<()>;
    fn flush_caches(&self) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.resolve1.Link",
    default_service = "org.freedesktop.resolve1"
)]
trait Link {
    #[zbus(property, name = "DNSEx")]
    fn dns_ex(&self) -> zbus::Result<Vec<(i32, Vec<u8>, u16, String)>>;
    #[zbus(property)]
    fn domains(&self) -> zbus::Result<Vec<(String, bool)>>;
    #[zbus(property)]
    fn default_route(&self) -> zbus::Result<bool>;
}

/// Run one D-Bus conversation to its end on the command's D-Bus runtime.
///
/// zbus is async and needs a reactor; nothing else in a one-shot command does (netlink requests
/// are blocking calls), so the command runs without one and starts this runtime only when it
/// talks to resolved, once: later conversations reuse it. A runtime cannot be entered from inside
/// another, so a caller already inside one gets an error, not a panic.
fn on_bus<T>(conversation: impl Future<Output = Result<T, DnsError>>) -> Result<T, DnsError> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(DnsError::Bus(
            "the D-Bus client cannot run inside another tokio runtime".into(),
        ));
    }
    let rt = match RUNTIME.get() {
        Some(rt) => rt,
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DnsError::Bus(format!("starting the D-Bus runtime: {e}")))?;
            RUNTIME.get_or_init(|| rt)
        }
    };
    rt.block_on(conversation)
}

fn bus_err(what: &str, e: zbus::Error) -> DnsError {
    DnsError::Bus(format!("{what}: {e}"))
}

fn is_unknown_method(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == UNKNOWN_METHOD)
}

struct Session {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
}

/// The system bus's fixed socket. As root, dockroute talks to the system bus only there:
/// `DBUS_SYSTEM_BUS_ADDRESS` comes from whoever started it (sudo keeps it with `-E`, hooks
/// inherit it), and zbus would follow it anywhere, `unixexec:` (running a program) included.
pub const SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";

pub async fn system_bus() -> zbus::Result<zbus::Connection> {
    if crate::trust::enforced() {
        zbus::connection::Builder::address(SYSTEM_BUS)?
            .build()
            .await
    } else {
        zbus::Connection::system().await
    }
}

async fn session() -> Result<Session, DnsError> {
    let conn = system_bus()
        .await
        .map_err(|e| bus_err("cannot reach the system bus", e))?;
    let manager = ManagerProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| bus_err("systemd-resolved", e))?;
    Ok(Session { conn, manager })
}

impl Session {
    async fn link(&self, ifindex: u32) -> Result<LinkDns, DnsError> {
        let path = self
            .manager
            .get_link(ifindex as i32)
            .await
            .map_err(|e| bus_err("systemd-resolved does not answer for the link", e))?;
        let link = LinkProxy::builder(&self.conn)
            .path(path)
            .map_err(|e| bus_err("link object", e))?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| bus_err("link object", e))?;
        let servers = link
            .dns_ex()
            .await
            .map_err(|e| bus_err("reading the link's DNS servers", e))?
            .into_iter()
            .filter_map(|(family, bytes, port, _)| {
                let b: [u8; 4] = bytes.try_into().ok()?;
                (family == AF_INET).then(|| {
                    SocketAddrV4::new(Ipv4Addr::from(b), if port == 0 { 53 } else { port })
                })
            })
            .collect();
        let domains = link
            .domains()
            .await
            .map_err(|e| bus_err("reading the link's domains", e))?;
        Ok(LinkDns {
            servers,
            domains,
            default_route: link.default_route().await.ok(),
        })
    }
}

/// Check that resolved answers, before anything changes.
pub async fn check(ifindex: u32) -> Result<(), DnsError> {
    on_bus(async { session().await?.link(ifindex).await.map(|_| ()) })
}

/// What resolved has for the link now.
pub async fn current(ifindex: u32) -> Result<LinkDns, DnsError> {
    on_bus(async { session().await?.link(ifindex).await })
}

/// Route `domain` to `ns` on the link. Returns whether anything changed.
pub async fn apply(ifindex: u32, domain: &str, ns: SocketAddrV4) -> Result<bool, DnsError> {
    on_bus(set(ifindex, domain, ns))
}

async fn set(ifindex: u32, domain: &str, ns: SocketAddrV4) -> Result<bool, DnsError> {
    let s = session().await?;
    let wanted = LinkDns {
        servers: vec![ns],
        domains: vec![(domain.to_string(), true)],
        default_route: Some(false),
    };
    let now = s.link(ifindex).await?;
    if now.servers == wanted.servers
        && now.domains == wanted.domains
        && now.default_route != Some(true)
    {
        return Ok(false);
    }
    let idx = ifindex as i32;
    // Domains and default-route first, then the server: no moment where the server takes all names.
    s.manager
        .set_link_domains(idx, wanted.domains.clone())
        .await
        .map_err(|e| bus_err("SetLinkDomains", e))?;
    match s.manager.set_link_default_route(idx, false).await {
        Err(e) if is_unknown_method(&e) => {
            tracing::warn!("this systemd-resolved has no SetLinkDefaultRoute (older than v240)")
        }
        r => r.map_err(|e| bus_err("SetLinkDefaultRoute", e))?,
    }
    let octets = ns.ip().octets().to_vec();
    if ns.port() == 53 {
        s.manager
            .set_link_dns(idx, vec![(AF_INET, octets)])
            .await
            .map_err(|e| bus_err("SetLinkDNS", e))?;
    } else {
        s.manager
            .set_link_dns_ex(idx, vec![(AF_INET, octets, ns.port(), String::new())])
            .await
            .map_err(|e| {
                if is_unknown_method(&e) {
                    DnsError::Refused(format!(
                        "this systemd-resolved cannot use DNS port {} (SetLinkDNSEx needs v246); use port 53",
                        ns.port()
                    ))
                } else {
                    bus_err("SetLinkDNSEx", e)
                }
            })?;
    }
    if let Err(e) = s.manager.flush_caches().await {
        tracing::warn!("FlushCaches: {e}");
    }
    Ok(true)
}

/// Undo dockroute's settings on the link (`resolvectl revert`), but only while the link still
/// carries them: settings someone else made since are left alone. Returns whether it reverted.
pub async fn revert(ifindex: u32, domain: &str, ns: SocketAddrV4) -> Result<bool, DnsError> {
    on_bus(unset(ifindex, domain, ns))
}

async fn unset(ifindex: u32, domain: &str, ns: SocketAddrV4) -> Result<bool, DnsError> {
    let s = session().await?;
    let now = match s.link(ifindex).await {
        Ok(now) => now,
        Err(e) => {
            tracing::info!("nothing to revert on link {ifindex}: {e}");
            return Ok(false);
        }
    };
    if !now.carries(domain, ns) {
        return Ok(false);
    }
    s.manager
        .revert_link(ifindex as i32)
        .await
        .map_err(|e| bus_err("RevertLink", e))?;
    if let Err(e) = s.manager.flush_caches().await {
        tracing::warn!("FlushCaches: {e}");
    }
    Ok(true)
}
