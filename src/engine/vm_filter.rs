//! The VM's own Docker filter in `up`, `down` and `status`: `--open-vm-firewall`'s accepts
//! opened, kept, re-applied or removed ([`docker::helper`]), and the diagnosis of a VM whose
//! Docker drops routed traffic.

use super::probe::Probe;
use crate::discover::Target;
use crate::docker::{self, helper, vmfilter::Diagnosis};
use crate::record::Record;
use crate::settings::Settings;
use ipnet::Ipv4Net;

/// `up`: open the VM's filter for every routed subnet (inserting what is missing: dockerd
/// rebuilt its chains, a network appeared), or remove what an earlier `up` opened when the
/// settings no longer ask for it. A failure is a warning: the routes stand. `watch`'s
/// reconciles that go by the record keep what it says.
pub(super) fn reconcile(
    settings: &Settings,
    target: &Target,
    docker: Option<&mut docker::Report>,
    previous: Option<&Record>,
) {
    let before = previous
        .and_then(|r| r.docker.as_ref())
        .and_then(|d| d.vm_firewall.clone());
    let Some(d) = docker else {
        return;
    };
    d.vm_firewall = before.clone();
    let Some(endpoint) = d.endpoint().cloned() else {
        return;
    };
    if d.unreached.is_some() || !settings.docker_listing.asks() {
        return;
    }
    match &settings.open_vm_firewall {
        Some(image) => {
            let host = target.host_addr.addr();
            match helper::open(&endpoint, image, host, &target.subnets, before.as_ref()) {
                Ok(o) => {
                    tracing::info!(
                        "VM firewall: {} accept(s) marked dockroute in the VM's {}",
                        o.rules.len(),
                        o.backend_name()
                    );
                    d.vm_firewall = Some(o);
                }
                Err(e) => tracing::warn!("VM firewall: not opened: {e}"),
            }
        }
        None => {
            if let Some(o) = &before {
                match helper::close(&endpoint, o) {
                    Ok(_) => d.vm_firewall = None,
                    Err(e) => {
                        tracing::warn!("VM firewall: could not remove dockroute's accepts: {e}")
                    }
                }
            }
        }
    }
}

/// `down`: remove exactly the accepts the record names; an error to report, if any.
pub(super) fn close(record: Option<&Record>, dry_run: bool) -> Option<String> {
    let d = record.and_then(|r| r.docker.as_ref())?;
    let opened = d.vm_firewall.as_ref()?;
    let Some(endpoint) = d.endpoint() else {
        return Some("the VM's firewall accepts were recorded without an engine".into());
    };
    if dry_run {
        tracing::info!(
            "would remove {} accept(s) marked dockroute from the VM's {}",
            opened.rules.len(),
            opened.backend_name()
        );
        return None;
    }
    match helper::close(endpoint, opened) {
        Ok(n) => {
            tracing::info!("VM firewall: removed {n} accept(s) marked dockroute");
            None
        }
        Err(e) => Some(format!(
            "the VM's firewall: dockroute's accepts could not be removed ({e}); they carry the comment dockroute"
        )),
    }
}

/// `up`'s [`diagnose`]: from the running containers its listing brought (`containers`), asking
/// the engine about its filter only when a probe found traffic dropped.
pub(super) fn diagnose_listed(
    docker: Option<&docker::Report>,
    containers: Option<Result<Vec<docker::containers::ListedContainer>, String>>,
    probes: &[Probe],
) -> Option<Diagnosis> {
    let d = docker?;
    let endpoint = d.endpoint()?;
    let running = match containers? {
        Ok(r) => r,
        Err(why) => {
            return Some(Diagnosis {
                unchecked: Some(why),
                ..Diagnosis::default()
            });
        }
    };
    let via_vm: Vec<Ipv4Net> = probes.iter().filter(|p| p.ok).map(|p| p.network).collect();
    Some(helper::diagnose_listed(
        endpoint,
        d.version.as_ref().and_then(|v| v.version.clone()),
        &running,
        move |ip| via_vm.iter().any(|n| n.contains(&ip)),
    ))
}

/// Ask the engine of `docker` and connect to its running containers whose networks the kernel
/// routes through the VM (`probes`): the second and third reason a container is not reached.
pub(super) fn diagnose(
    docker: Option<&docker::Report>,
    probes: &[Probe],
    facts: helper::Facts,
) -> Option<Diagnosis> {
    let endpoint = docker?.endpoint()?;
    let via_vm: Vec<Ipv4Net> = probes.iter().filter(|p| p.ok).map(|p| p.network).collect();
    Some(helper::diagnose(
        endpoint,
        move |ip| via_vm.iter().any(|n| n.contains(&ip)),
        facts,
    ))
}
