//! The engine's running containers → the DNS responder's input (GET /containers/json). Pure.
//!
//! What the engine says is untrusted: this only bounds how much is taken (containers, networks
//! per container, aliases) and keeps running containers with an IPv4 address; which names are
//! valid DNS names and which addresses are routed is the responder's check
//! ([`crate::dns::responder::names`]).

use crate::dns::responder::names::{Attachment, Container};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The most containers one answer may list; past it, the answer is refused whole.
pub const MAX_CONTAINERS: usize = 10_000;
/// The most networks taken of one container (Docker allows ~1000; names past it are dropped).
pub const MAX_NETWORKS: usize = 64;
/// The most aliases taken of one container on one network.
pub const MAX_ALIASES: usize = 32;
/// The most labels looked at of one container (the responder reads three).
pub const MAX_LABELS: usize = 1000;

/// A container as the engine lists it, before any check (what [`super::Engine::containers`]
/// returns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListedContainer {
    pub id: Option<String>,
    /// As the API gives them (`/web`); the first is the container's name.
    pub names: Vec<String>,
    /// `running`, `exited`, ...
    pub state: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub networks: Vec<ListedAttachment>,
    /// The first TCP port it exposes, if any: where the VM filter's probe connects.
    pub port: Option<u16>,
}

/// A container's endpoint on one network, as the engine lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListedAttachment {
    pub network: String,
    /// The IPv4 address as given.
    pub address: Option<String>,
    /// The engine's list leaves these out (`null`); inspecting the container gives them.
    pub aliases: Vec<String>,
    /// Which endpoint: a new one (reconnected) may have other aliases.
    pub endpoint: Option<String>,
}

/// Aliases the engine adds by itself (the short id), which name nothing a user chose.
pub fn own_alias(id: &str, alias: &str) -> bool {
    id.len() >= 12 && alias == &id[..12]
}

/// The running containers of `listed`, as the responder takes them. `Err`: the answer is refused
/// whole (too many containers).
pub fn convert(listed: &[ListedContainer]) -> Result<Vec<Container>, String> {
    if listed.len() > MAX_CONTAINERS {
        return Err(format!(
            "the engine lists {} containers, more than the {MAX_CONTAINERS} dockroute names: refused",
            listed.len()
        ));
    }
    Ok(listed
        .iter()
        .filter(|c| c.state.as_deref().is_none_or(|s| s == "running"))
        .filter_map(|c| {
            let name = c.names.first()?;
            Some(Container {
                id: c.id.clone().unwrap_or_default(),
                name: name.clone(),
                labels: c
                    .labels
                    .iter()
                    .take(MAX_LABELS)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                networks: c
                    .networks
                    .iter()
                    .take(MAX_NETWORKS)
                    .map(|a| Attachment {
                        network: a.network.clone(),
                        address: a
                            .address
                            .as_deref()
                            .and_then(|a| a.parse::<Ipv4Addr>().ok()),
                        aliases: a
                            .aliases
                            .iter()
                            .filter(|al| !own_alias(c.id.as_deref().unwrap_or(""), al))
                            .take(MAX_ALIASES)
                            .cloned()
                            .collect(),
                    })
                    .collect(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, state: &str, addr: &str) -> ListedContainer {
        ListedContainer {
            id: Some(format!("{name}{}", "0".repeat(63))),
            names: vec![format!("/{name}")],
            state: Some(state.into()),
            labels: [("com.docker.compose.service".to_string(), "web".to_string())].into(),
            networks: vec![ListedAttachment {
                network: "bridge".into(),
                address: Some(addr.into()),
                aliases: vec!["w".into(), format!("{name}{}", "0".repeat(11))],
                endpoint: None,
            }],
            port: None,
        }
    }

    #[test]
    fn running_containers_with_their_addresses() {
        let l = [
            listed("a", "running", "172.17.0.2"),
            listed("b", "exited", "172.17.0.3"),
            listed("c", "running", "not an address"),
            ListedContainer::default(), // no name: left out
        ];
        let c = convert(&l).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name, "/a");
        assert_eq!(c[0].networks[0].address, Some([172, 17, 0, 2].into()));
        assert_eq!(c[0].networks[0].aliases, ["w"], "the short id is left out");
        assert_eq!(c[0].labels["com.docker.compose.service"], "web");
        assert_eq!(c[1].networks[0].address, None);
    }

    #[test]
    fn bounded() {
        let mut big = listed("a", "running", "172.17.0.2");
        big.networks = (0..1000)
            .map(|i| ListedAttachment {
                network: format!("n{i}"),
                aliases: vec!["x".into(); 100],
                ..Default::default()
            })
            .collect();
        let c = convert(&[big]).unwrap();
        assert_eq!(c[0].networks.len(), MAX_NETWORKS);
        assert_eq!(c[0].networks[0].aliases.len(), MAX_ALIASES);
        let many = vec![ListedContainer::default(); MAX_CONTAINERS + 1];
        assert!(convert(&many).unwrap_err().contains("refused"));
    }
}
