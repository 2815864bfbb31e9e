//! Talking to the engine about its own filter: what it says (`/info`, network options), a real
//! probe of its running containers from the host, and `--open-vm-firewall`'s helper container.
//!
//! The helper runs on the engine's own network (host networking: the VM's namespace, never
//! this machine's), with the engine's root filesystem bound read-only at /host and the VM's
//! /run beside it (iptables' lock), and `chroot`s into it: the iptables that runs is the VM's
//! own, so the rules land in the backend dockerd uses (iptables, or Docker's own nftables
//! table, [`super::vmnft`]). It gets only NET_ADMIN, NET_RAW and
//! SYS_CHROOT (no `--privileged`), no new privileges, and is removed after each command. Its
//! image needs only a `chroot` program (busybox's by default).

use super::DockerError;
use super::client::Client;
use super::containers::ListedContainer;
use super::endpoint::Endpoint;
use super::vmfilter::{
    self, Backend, Diagnosis, EngineFilter, Opened, Outcome, Reach, VmRule, VmRules,
};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters as q;
use futures_lite::StreamExt;
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The longest one helper command may take (create, start, wait, logs, remove).
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a pull of the helper image may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// A probe's connect timeout: a container that answers does within milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// At most this many containers are probed (one per network first).
const MAX_PROBES: usize = 8;
/// The most of a helper's output read (iptables-save of a busy VM is tens of KiB).
const MAX_OUTPUT: usize = 2 << 20;

impl Client {
    /// `/info` and each network's options: what the engine says about its filter.
    pub async fn filter_facts(&mut self) -> Result<EngineFilter, DockerError> {
        let version = self.negotiate().await?;
        let info = self
            .docker
            .info()
            .await
            .map_err(super::client::engine_err)?;
        let nets = self
            .docker
            .list_networks(None::<q::ListNetworksOptions>)
            .await
            .map_err(super::client::engine_err)?;
        let direct = nets
            .into_iter()
            .filter(|n| {
                let opts: Vec<(String, String)> =
                    n.options.clone().unwrap_or_default().into_iter().collect();
                vmfilter::opens_direct_routing(&opts)
            })
            .filter_map(|n| n.name.as_deref().map(super::networks::shown))
            .collect();
        Ok(EngineFilter {
            version: version.version,
            firewall_backend: info
                .firewall_backend
                .and_then(|f| f.driver)
                .as_deref()
                .map(super::networks::shown),
            ip_forward: info.ipv4_forwarding,
            direct_routing_networks: direct,
        })
    }

    /// The helper image, pulled when the engine does not have it.
    async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        tracing::info!("pulling the helper image {image} in the VM");
        let (from, tag) = match image.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            _ if image.contains('@') => (image.to_string(), String::new()),
            Some((f, t)) => (f.to_string(), t.to_string()),
            None => (image.to_string(), "latest".to_string()),
        };
        let pull = async {
            let mut s = std::pin::pin!(self.docker.create_image(
                Some(q::CreateImageOptions {
                    from_image: Some(from),
                    tag: (!tag.is_empty()).then_some(tag),
                    ..Default::default()
                }),
                None,
                None,
            ));
            while let Some(step) = s.next().await {
                step.map_err(super::client::engine_err)?;
            }
            Ok::<(), DockerError>(())
        };
        let why = match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) if self.docker.inspect_image(image).await.is_ok() => return Ok(()),
            Ok(Ok(())) => "the engine pulled nothing".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", PULL_TIMEOUT.as_secs()),
        };
        Err(DockerError::Helper(format!(
            "the VM has no helper image {image} and could not pull it ({why}); name an image the VM has with --helper-image IMAGE (it needs only a `chroot` program)"
        )))
    }

    /// Run `argv` in the VM's root filesystem and network namespace; its standard output.
    async fn helper(&self, image: &str, argv: &[String]) -> Result<String, DockerError> {
        let mut cmd = vec!["chroot".to_string(), "/host".to_string()];
        cmd.extend(argv.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(cmd),
            entrypoint: Some(Vec::new()),
            env: Some(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()]),
            labels: Some(HashMap::from([("dockroute".into(), "helper".into())])),
            host_config: Some(HostConfig {
                network_mode: Some("host".into()),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(vec![
                    "NET_ADMIN".into(),
                    "NET_RAW".into(),
                    "SYS_CHROOT".into(),
                ]),
                binds: Some(vec!["/:/host:ro".into(), "/run:/host/run".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .docker
            .create_container(None::<q::CreateContainerOptions>, body)
            .await
            .map_err(super::client::engine_err)?
            .id;
        let run = self.run_created(&id);
        let result = tokio::time::timeout(HELPER_TIMEOUT, run).await;
        let removed = self
            .docker
            .remove_container(
                &id,
                Some(q::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        if let Err(e) = removed {
            tracing::warn!("could not remove the helper container {id}: {e}");
        }
        let (code, out, err) = result.map_err(|_| {
            DockerError::Helper(format!(
                "the helper did not finish within {} s",
                HELPER_TIMEOUT.as_secs()
            ))
        })??;
        if code != 0 {
            let err: String = err
                .chars()
                .take(300)
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let mut shown = argv.join(" ");
            if shown.chars().count() > 120 {
                shown = shown.chars().take(117).collect::<String>() + "...";
            }
            return Err(DockerError::Helper(format!(
                "`{shown}` in the VM exited with {code}: {}",
                err.trim()
            )));
        }
        Ok(out)
    }

    async fn run_created(&self, id: &str) -> Result<(i64, String, String), DockerError> {
        self.docker
            .start_container(id, None::<q::StartContainerOptions>)
            .await
            .map_err(super::client::engine_err)?;
        {
            let mut wait = std::pin::pin!(
                self.docker
                    .wait_container(id, None::<q::WaitContainerOptions>)
            );
            // a non-zero exit comes as an error of its own; the code is read below either way
            let _ = wait.next().await;
        }
        let code = self
            .docker
            .inspect_container(id, None::<q::InspectContainerOptions>)
            .await
            .map_err(super::client::engine_err)?
            .state
            .and_then(|s| s.exit_code)
            .unwrap_or(-1);
        let (mut out, mut err) = (String::new(), String::new());
        let mut logs = std::pin::pin!(self.docker.logs(
            id,
            Some(q::LogsOptions {
                stdout: true,
                stderr: true,
                ..Default::default()
            })
        ));
        while let Some(chunk) = logs.next().await {
            match chunk.map_err(super::client::engine_err)? {
                bollard::container::LogOutput::StdOut { message } => {
                    out.push_str(&String::from_utf8_lossy(&message))
                }
                other => err.push_str(&String::from_utf8_lossy(&other.into_bytes())),
            }
            if out.len() + err.len() > MAX_OUTPUT {
                return Err(DockerError::Helper(
                    "the helper's output is too long".into(),
                ));
            }
        }
        Ok((code, out, err))
    }

    /// The VM's rules in `backend` (its own `iptables-save` or `nft`).
    async fn read_vm(&self, image: &str, backend: Backend) -> Result<VmRules, DockerError> {
        let text = self.helper(image, &backend.list_argv()).await?;
        VmRules::read(backend, &text)
            .map_err(|e| DockerError::Helper(format!("the VM's {} rules: {e}", backend.name())))
    }

    /// Delete those of `rules` (the ones in `backend`) that are in the VM now: read just
    /// before, deleted by one command per rule (iptables) or one transaction (nftables); how many.
    async fn delete_present(
        &self,
        image: &str,
        backend: Backend,
        rules: &[&VmRule],
    ) -> Result<usize, DockerError> {
        let rules: Vec<&VmRule> = rules
            .iter()
            .copied()
            .filter(|r| r.backend == backend)
            .collect();
        if rules.is_empty() {
            return Ok(0);
        }
        let (argvs, n) = self.read_vm(image, backend).await?.deletion(&rules);
        for argv in argvs {
            self.helper(image, &argv).await?;
        }
        Ok(n)
    }

    /// Insert the accepts the VM needs for `subnets` (those not there already) in the backend
    /// dockerd uses, and delete the ones `previous` recorded that are no longer wanted (those
    /// that cannot be deleted now stay recorded, for the next run or `down`). Rules of this run
    /// are taken out again when a later insert fails.
    pub async fn open(
        &mut self,
        image: &str,
        host: Ipv4Addr,
        subnets: &[Ipv4Net],
        previous: Option<&Opened>,
    ) -> Result<Opened, DockerError> {
        let backend = Backend::of(&self.filter_facts().await?);
        self.ensure_image(image).await?;
        let route = self
            .helper(
                image,
                &["ip", "-o", "-4", "route", "get", &host.to_string()].map(String::from),
            )
            .await?;
        let interface = vmfilter::route_dev(&route).ok_or_else(|| {
            DockerError::Helper(format!(
                "the VM's route to {host} names no interface: {}",
                route.trim().escape_default()
            ))
        })?;
        let current = self.read_vm(image, backend).await?;
        let mut rules = current.wanted(host, &interface, subnets);
        if rules.is_empty() && !subnets.is_empty() {
            tracing::warn!(
                "VM firewall: nothing to open: {}",
                current.nothing_to_open()
            );
        }
        let mut inserted: Vec<&VmRule> = Vec::new();
        for r in rules.iter().filter(|r| !current.has(r)) {
            if let Err(e) = self.helper(image, &r.insert_argv()).await {
                if let Err(u) = self.delete_present(image, backend, &inserted).await {
                    tracing::warn!("VM firewall: this run's accepts could not be taken out: {u}");
                }
                return Err(DockerError::Helper(format!("{}: {e}", r.text())));
            }
            inserted.push(r);
        }
        let stale: Vec<VmRule> = previous
            .map(|p| {
                p.rules
                    .iter()
                    .filter(|r| !rules.contains(r))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let stale_refs: Vec<&VmRule> = stale.iter().collect();
        for b in Backend::ALL {
            if let Err(e) = self.delete_present(image, b, &stale_refs).await {
                tracing::warn!(
                    "VM firewall: earlier accepts no longer wanted could not be removed, and stay recorded: {e}"
                );
                rules.extend(stale.iter().filter(|r| r.backend == b).cloned());
            }
        }
        Ok(Opened {
            image: image.to_string(),
            rules,
        })
    }

    /// Delete exactly the recorded rules that are still in the VM (each backend tried, even
    /// when the other fails).
    pub async fn close(&mut self, opened: &Opened) -> Result<usize, DockerError> {
        // the record is a file: its image name is checked again
        vmfilter::helper_image(&opened.image).map_err(DockerError::Helper)?;
        self.negotiate().await?;
        self.ensure_image(&opened.image).await?;
        let rules: Vec<&VmRule> = opened.rules.iter().collect();
        let mut removed = 0;
        let mut failed = None;
        for backend in Backend::ALL {
            match self.delete_present(&opened.image, backend, &rules).await {
                Ok(n) => removed += n,
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// A TCP connect from this host to the engine's running containers whose addresses `via_vm`
    /// says the host routes through the VM, and what the engine says about its filter: always
    /// with [`Facts::Always`] (`status`), only when a probe found traffic dropped with
    /// [`Facts::WhenDropped`] (`/info` asks containerd and costs ten times what the rest does,
    /// and says nothing `up` needs unless something is dropped).
    pub async fn diagnose(
        &mut self,
        via_vm: &(dyn Fn(Ipv4Addr) -> bool + Sync),
        facts: Facts,
    ) -> Diagnosis {
        let mut d = Diagnosis::default();
        let asked = async {
            d.engine.version = self.negotiate().await?.version;
            self.list_containers().await
        };
        match asked.await {
            Ok(running) => d.probes = reach(targets(&running, via_vm)).await,
            Err(e) => {
                d.unchecked = Some(e.to_string());
                return d;
            }
        }
        self.facts_if(&mut d, facts).await;
        d
    }

    /// The engine's filter facts into `d`, unless `facts` says they are not needed.
    async fn facts_if(&mut self, d: &mut Diagnosis, facts: Facts) {
        if facts == Facts::WhenDropped && !d.blocked() {
            d.filter_unasked = true;
            return;
        }
        match self.filter_facts().await {
            Ok(f) => d.engine = f,
            Err(e) => d.unchecked = Some(e.to_string()),
        }
    }
}

/// A running container to probe: (name, network, address, port).
type Target = (String, String, Ipv4Addr, u16);

/// The running containers to probe: those whose address `via_vm` says the host routes through
/// the VM, one per network first, at most [`MAX_PROBES`]. The port is the first TCP port the
/// container exposes, otherwise 80 (a refusal proves the path as well as an answer).
fn targets(running: &[ListedContainer], via_vm: &(dyn Fn(Ipv4Addr) -> bool + Sync)) -> Vec<Target> {
    let mut picked: Vec<Target> = Vec::new();
    for c in running
        .iter()
        .filter(|c| c.state.as_deref().is_none_or(|s| s == "running"))
    {
        let name = c.names.first().map_or("", |n| n.trim_start_matches('/'));
        for a in &c.networks {
            let Some(ip) = a.address.as_deref().and_then(|a| a.parse().ok()) else {
                continue;
            };
            if via_vm(ip) && picked.len() < MAX_PROBES && !picked.iter().any(|p| p.1 == a.network) {
                picked.push((
                    name.to_string(),
                    a.network.clone(),
                    ip,
                    c.port.unwrap_or(80),
                ));
            }
        }
    }
    picked
}

/// Connect to each target at once (each waits up to [`PROBE_TIMEOUT`]).
async fn reach(targets: Vec<Target>) -> Vec<Reach> {
    let probes: Vec<_> = targets
        .into_iter()
        .map(|(container, network, ip, port)| {
            tokio::spawn(async move {
                let outcome = connect(SocketAddr::from((ip, port))).await;
                Reach {
                    container,
                    network,
                    ip,
                    port,
                    outcome,
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for p in probes {
        if let Ok(r) = p.await {
            out.push(r);
        }
    }
    out
}

/// Whether [`Client::diagnose`] asks the engine about its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Facts {
    Always,
    WhenDropped,
}

async fn connect(addr: SocketAddr) -> Outcome {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => Outcome::TimedOut,
        Ok(Ok(_)) => Outcome::Answered,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        Ok(Err(_)) => Outcome::Failed,
    }
}

/// Open the VM's filter for `subnets` through the engine at `endpoint` (blocking).
pub fn open(
    endpoint: &Endpoint,
    image: &str,
    host: Ipv4Addr,
    subnets: &[Ipv4Net],
    previous: Option<&Opened>,
) -> Result<Opened, DockerError> {
    let (image, subnets, previous) = (image.to_string(), subnets.to_vec(), previous.cloned());
    super::on_runtime(endpoint, move |mut c| async move {
        c.open(&image, host, &subnets, previous.as_ref()).await
    })
}

/// Remove the recorded accepts from the VM (blocking); how many were still there.
pub fn close(endpoint: &Endpoint, opened: &Opened) -> Result<usize, DockerError> {
    let opened = opened.clone();
    super::on_runtime(endpoint, move |mut c| async move { c.close(&opened).await })
}

/// `up`'s diagnosis (blocking), from the containers its listing brought ([`super::Fetched`]):
/// with none to probe, nothing more is asked; the engine's filter facts only when a probe
/// found traffic dropped.
pub fn diagnose_listed(
    endpoint: &Endpoint,
    version: Option<String>,
    running: &[ListedContainer],
    via_vm: impl Fn(Ipv4Addr) -> bool + Send + Sync + 'static,
) -> Diagnosis {
    let targets = targets(running, &via_vm);
    let mut d = Diagnosis {
        engine: EngineFilter {
            version,
            ..EngineFilter::default()
        },
        ..Diagnosis::default()
    };
    if targets.is_empty() {
        d.filter_unasked = true;
        return d;
    }
    let probed = super::on_runtime(endpoint, move |mut c| async move {
        tokio::time::timeout(super::TIMEOUT + PROBE_TIMEOUT, async {
            d.probes = reach(targets).await;
            c.facts_if(&mut d, Facts::WhenDropped).await;
            Ok(d)
        })
        .await
        .map_err(|_| DockerError::Timeout(super::TIMEOUT + PROBE_TIMEOUT))?
    });
    probed.unwrap_or_else(|e| Diagnosis {
        unchecked: Some(e.to_string()),
        ..Diagnosis::default()
    })
}

/// [`Client::diagnose`] for `status` (blocking).
pub fn diagnose(
    endpoint: &Endpoint,
    via_vm: impl Fn(Ipv4Addr) -> bool + Send + Sync + 'static,
    facts: Facts,
) -> Diagnosis {
    super::on_runtime(endpoint, move |mut c| async move {
        tokio::time::timeout(super::TIMEOUT + PROBE_TIMEOUT, c.diagnose(&via_vm, facts))
            .await
            .map_err(|_| DockerError::Timeout(super::TIMEOUT + PROBE_TIMEOUT))
    })
    .unwrap_or_else(|e| Diagnosis {
        unchecked: Some(e.to_string()),
        ..Diagnosis::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::containers::ListedAttachment;

    fn running(name: &str, nets: &[(&str, &str)], port: Option<u16>) -> ListedContainer {
        ListedContainer {
            names: vec![format!("/{name}")],
            state: Some("running".into()),
            networks: nets
                .iter()
                .map(|(network, address)| ListedAttachment {
                    network: network.to_string(),
                    address: Some(address.to_string()),
                    ..Default::default()
                })
                .collect(),
            port,
            ..Default::default()
        }
    }

    #[test]
    fn probes_one_container_per_network_routed_via_the_vm() {
        let via_vm = |ip: Ipv4Addr| ip.octets()[0] == 172;
        let list = vec![
            running("web", &[("bridge", "172.17.0.2")], Some(8080)),
            running("web2", &[("bridge", "172.17.0.3")], None),
            running(
                "db",
                &[("app_default", "172.18.0.2"), ("lan", "10.0.0.2")],
                None,
            ),
            running("odd", &[("odd", "not an address")], None),
            ListedContainer {
                state: Some("exited".into()),
                ..running("gone", &[("other", "172.19.0.2")], None)
            },
        ];
        let t = targets(&list, &via_vm);
        assert_eq!(
            t,
            vec![
                (
                    "web".into(),
                    "bridge".into(),
                    "172.17.0.2".parse().unwrap(),
                    8080
                ),
                (
                    "db".into(),
                    "app_default".into(),
                    "172.18.0.2".parse().unwrap(),
                    80
                ),
            ]
        );
        // at most MAX_PROBES
        let many: Vec<ListedContainer> = (0..20)
            .map(|i| {
                running(
                    &format!("c{i}"),
                    &[(&format!("n{i}"), &format!("172.20.0.{i}"))],
                    None,
                )
            })
            .collect();
        assert_eq!(targets(&many, &via_vm).len(), MAX_PROBES);
    }
}
