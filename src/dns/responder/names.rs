//! The responder's records, built from what the Docker engine says about its containers (pure).
//!
//! Every container on a routed network gets, under the domain:
//! - `<container name>`;
//! - `<service>.<project>` from the compose labels (replicas share it: several A records);
//! - each network alias, naming the container's address on that network;
//! - each name in the label `dockroute.names` (comma-separated).
//!
//! A records carry only addresses inside a routed subnet; PTR records name each such address
//! with the container's first valid name. Everything here comes from the engine, so nothing is
//! trusted: a name is kept only when every label is a host-name label (lowercased), names per
//! container and records in all are capped, and each name left out comes back as a [`Skipped`]
//! the caller can log.

use crate::validate::dns_label;
use hickory_proto::rr::{LowerName, Name};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;

/// Compose's service label: `<service>.<project>.<domain>`.
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
/// Compose's project label.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
/// Extra names, comma-separated.
pub const LABEL_NAMES: &str = "dockroute.names";
/// The name server's own name under the domain (`ns.<domain>`): no container may take it.
pub const NS_LABEL: &str = "ns";
/// Names one container may have; the rest are skipped.
pub const MAX_NAMES_PER_CONTAINER: usize = 32;
/// A records one name may have (replicas of a service); the rest are skipped.
pub const MAX_ADDRESSES_PER_NAME: usize = 64;
/// A and PTR records in the whole table; names past it are skipped.
pub const MAX_RECORDS: usize = 50_000;
/// Skipped names reported one by one; past it, one line counts the rest.
pub const MAX_REPORTED: usize = 64;

/// One container as the Docker engine reports it (running ones only). Untrusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// The engine's name (a leading `/`, as the API reports it, is ignored).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub networks: Vec<Attachment>,
}

impl Container {
    /// A container from plain values (the id is the name): for tests, fuzzing and examples.
    pub fn new(name: &str, labels: &[(&str, &str)], networks: Vec<Attachment>) -> Container {
        Container {
            id: name.to_string(),
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            networks,
        }
    }
}

/// A container's place on one network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    /// The network's name (for messages).
    pub network: String,
    /// The container's IPv4 address there, if it has one.
    pub address: Option<Ipv4Addr>,
    /// Its aliases on that network; they name only this address.
    pub aliases: Vec<String>,
}

impl Attachment {
    pub fn new(network: &str, address: Ipv4Addr, aliases: &[&str]) -> Attachment {
        Attachment {
            network: network.to_string(),
            address: Some(address),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// The domain the responder answers, fixed for its lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// Lowercase, fully qualified (`docker.`).
    pub domain: Name,
    /// `ns.<domain>`, the name server named by NS and SOA.
    pub ns: Name,
    /// `hostmaster.<domain>`, the SOA's mailbox.
    pub hostmaster: Name,
    /// The A record of `ns.<domain>`: the responder's own address, when it is IPv4.
    pub ns_address: Option<Ipv4Addr>,
}

impl Zone {
    pub fn new(domain: &str, ns_address: Option<Ipv4Addr>) -> Result<Zone, String> {
        let d = crate::validate::domain(domain)?;
        let fqdn = |s: &str| {
            let mut n = Name::from_ascii(s).map_err(|e| format!("domain '{d}': {e}"))?;
            n.set_fqdn(true);
            Ok::<Name, String>(n)
        };
        Ok(Zone {
            domain: fqdn(&d)?,
            ns: fqdn(&format!("{NS_LABEL}.{d}"))?,
            hostmaster: fqdn(&format!("hostmaster.{d}"))?,
            ns_address,
        })
    }

    /// The domain without the final dot, as users write it.
    pub fn name(&self) -> String {
        self.domain.to_ascii().trim_end_matches('.').to_string()
    }
}

/// Why a name (or a whole container) was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// A label is empty, too long, or has a character other than a letter, digit or hyphen.
    BadLabel,
    /// The whole name is longer than DNS allows (253 characters with the domain).
    TooLong,
    /// `ns.<domain>` is the name server's.
    Reserved,
    /// The alias's network is not routed.
    NotRouted(String),
    /// The container has no address on a routed network.
    NoRoutedAddress,
    TooManyNames,
    TooManyAddresses,
    TableFull,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::BadLabel => {
                f.write_str("not a host name (labels of 1-63 letters, digits and hyphens, no '_')")
            }
            SkipReason::TooLong => f.write_str("longer than 253 characters with the domain"),
            SkipReason::Reserved => f.write_str("the name server's own name"),
            SkipReason::NotRouted(n) => write!(f, "network {} is not routed", shown(n)),
            SkipReason::NoRoutedAddress => f.write_str("no address on a routed network"),
            SkipReason::TooManyNames => write!(
                f,
                "more than {MAX_NAMES_PER_CONTAINER} names for one container"
            ),
            SkipReason::TooManyAddresses => {
                write!(
                    f,
                    "more than {MAX_ADDRESSES_PER_NAME} addresses for one name"
                )
            }
            SkipReason::TableFull => write!(f, "the table is full ({MAX_RECORDS} records)"),
        }
    }
}

/// A name left out of the table, for the caller's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The container's name, as the engine gave it.
    pub container: String,
    /// The name as given (`None`: the whole container).
    pub name: Option<String>,
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(
                f,
                "container {}: name {} skipped: {}",
                shown(&self.container),
                shown(n),
                self.reason
            ),
            None => write!(
                f,
                "container {}: no names: {}",
                shown(&self.container),
                self.reason
            ),
        }
    }
}

/// An untrusted string for a log line: escaped, and cut at 80 characters.
fn shown(s: &str) -> String {
    let mut e: String = s.escape_debug().take(80).collect();
    if s.escape_debug().nth(80).is_some() {
        e.push_str("...");
    }
    format!("'{e}'")
}

/// The records the responder answers from. Built whole, then swapped in whole.
#[derive(Clone, Debug)]
pub struct Table {
    pub(super) zone: Zone,
    /// name -> its addresses (sorted)
    pub(super) names: HashMap<LowerName, Vec<Ipv4Addr>>,
    /// names that exist only because names below them do (`myproject.docker`)
    pub(super) parents: HashSet<LowerName>,
    pub(super) reverse: HashMap<Ipv4Addr, Name>,
    pub(super) routed: Vec<Ipv4Net>,
    /// The SOA serial: the caller counts tables.
    pub serial: u32,
}

/// A table and what was left out of it.
#[derive(Debug)]
pub struct Built {
    pub table: Table,
    /// At most [`MAX_REPORTED`] entries.
    pub skipped: Vec<Skipped>,
    /// Skipped names not in `skipped`.
    pub more_skipped: usize,
}

impl Table {
    /// A table with no containers: only the domain's SOA and NS.
    pub fn empty(zone: &Zone) -> Table {
        Table::build(zone, &[], &[]).table
    }

    /// Names for `containers`, with A records for their addresses inside `routed`.
    pub fn build(zone: &Zone, containers: &[Container], routed: &[Ipv4Net]) -> Built {
        let mut b = Builder {
            table: Table {
                zone: zone.clone(),
                names: HashMap::new(),
                parents: HashSet::new(),
                reverse: HashMap::new(),
                routed: routed.to_vec(),
                serial: 0,
            },
            records: 0,
            skipped: Vec::new(),
            more_skipped: 0,
        };
        if let Some(a) = zone.ns_address {
            b.table.names.insert(LowerName::new(&zone.ns), vec![a]);
        }
        // The same input gives the same table, whatever order the engine listed it in.
        let mut sorted: Vec<&Container> = containers.iter().collect();
        sorted.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        for c in sorted {
            b.container(c);
        }
        for addrs in b.table.names.values_mut() {
            addrs.sort_unstable();
        }
        Built {
            table: b.table,
            skipped: b.skipped,
            more_skipped: b.more_skipped,
        }
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The addresses of a name (any case), for tests and `status`.
    pub fn lookup(&self, name: &Name) -> Option<&[Ipv4Addr]> {
        self.names.get(&LowerName::new(name)).map(Vec::as_slice)
    }

    /// The name an address has (its PTR).
    pub fn name_of(&self, addr: Ipv4Addr) -> Option<&Name> {
        self.reverse.get(&addr)
    }

    /// A and PTR records in the table.
    pub fn records(&self) -> usize {
        self.names.values().map(Vec::len).sum::<usize>() + self.reverse.len()
    }

    pub fn is_routed(&self, addr: Ipv4Addr) -> bool {
        self.routed.iter().any(|n| n.contains(&addr))
    }
}

struct Builder {
    table: Table,
    records: usize,
    skipped: Vec<Skipped>,
    more_skipped: usize,
}

impl Builder {
    fn skip(&mut self, container: &str, name: Option<&str>, reason: SkipReason) {
        if self.skipped.len() < MAX_REPORTED {
            self.skipped.push(Skipped {
                container: container.to_string(),
                name: name.map(str::to_string),
                reason,
            });
        } else {
            self.more_skipped += 1;
        }
    }

    fn container(&mut self, c: &Container) {
        let cname = c.name.strip_prefix('/').unwrap_or(&c.name);
        let mut all: Vec<Ipv4Addr> = c
            .networks
            .iter()
            .filter_map(|n| n.address)
            .filter(|a| self.table.is_routed(*a))
            .collect();
        all.sort_unstable();
        all.dedup();
        if all.is_empty() {
            self.skip(cname, None, SkipReason::NoRoutedAddress);
            return;
        }
        // (the name as given, the addresses it names), the PTR's name first
        let mut wanted: Vec<(String, Vec<Ipv4Addr>)> = vec![(cname.to_string(), all.clone())];
        if let (Some(s), Some(p)) = (c.labels.get(LABEL_SERVICE), c.labels.get(LABEL_PROJECT)) {
            // each must be one label: a dot in either would make a different name
            if s.contains('.') || p.contains('.') {
                self.skip(cname, Some(&format!("{s}.{p}")), SkipReason::BadLabel);
            } else {
                wanted.push((format!("{s}.{p}"), all.clone()));
            }
        }
        for n in &c.networks {
            for alias in &n.aliases {
                match n.address {
                    Some(a) if self.table.is_routed(a) => wanted.push((alias.clone(), vec![a])),
                    _ => self.skip(cname, Some(alias), SkipReason::NotRouted(n.network.clone())),
                }
            }
        }
        if let Some(extra) = c.labels.get(LABEL_NAMES) {
            for n in extra.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if wanted.len() > 2 * MAX_NAMES_PER_CONTAINER {
                    break; // enough candidates; the cap below reports the overflow
                }
                wanted.push((n.to_string(), all.clone()));
            }
        }

        let mut kept: Vec<Name> = Vec::new();
        let mut first: Option<Name> = None;
        for (given, addrs) in wanted {
            let name = match self.name(&given) {
                Ok(n) => n,
                Err(r) => {
                    self.skip(cname, Some(&given), r);
                    continue;
                }
            };
            if !kept.contains(&name) {
                if kept.len() == MAX_NAMES_PER_CONTAINER {
                    self.skip(cname, Some(&given), SkipReason::TooManyNames);
                    continue;
                }
                kept.push(name.clone());
            }
            if let Err(r) = self.add(&name, &addrs) {
                self.skip(cname, Some(&given), r);
                continue;
            }
            if first.is_none() {
                first = Some(name);
            }
        }
        if let Some(ptr) = first {
            for a in all {
                if self.records < MAX_RECORDS && !self.table.reverse.contains_key(&a) {
                    self.table.reverse.insert(a, ptr.clone());
                    self.records += 1;
                }
            }
        }
    }

    /// `given` under the domain, or why not. A name already ending in the domain is taken as
    /// the full name (`api.docker` means `api.docker`, not `api.docker.docker`).
    fn name(&self, given: &str) -> Result<Name, SkipReason> {
        let lower = given.to_ascii_lowercase();
        let domain = self.table.zone.name();
        let relative = lower
            .strip_suffix(&domain)
            .and_then(|r| r.strip_suffix('.'))
            .unwrap_or(&lower);
        if !relative.split('.').all(dns_label) {
            return Err(SkipReason::BadLabel);
        }
        if relative.len() + 1 + domain.len() > 253 {
            return Err(SkipReason::TooLong);
        }
        if relative == NS_LABEL {
            return Err(SkipReason::Reserved);
        }
        let mut name =
            Name::from_ascii(format!("{relative}.{domain}.")).map_err(|_| SkipReason::TooLong)?;
        name.set_fqdn(true);
        Ok(name)
    }

    fn add(&mut self, name: &Name, addrs: &[Ipv4Addr]) -> Result<(), SkipReason> {
        let key = LowerName::new(name);
        let have = self.table.names.get(&key).map_or(0, Vec::len);
        let new: Vec<Ipv4Addr> = {
            let old = self.table.names.get(&key);
            addrs
                .iter()
                .copied()
                .filter(|a| old.is_none_or(|o| !o.contains(a)))
                .collect()
        };
        if have + new.len() > MAX_ADDRESSES_PER_NAME {
            return Err(SkipReason::TooManyAddresses);
        }
        if self.records + new.len() > MAX_RECORDS {
            return Err(SkipReason::TableFull);
        }
        self.records += new.len();
        self.table.names.entry(key).or_default().extend(new);
        // the names between this one and the domain exist too (empty non-terminals)
        let top = self.table.zone.domain.num_labels();
        let mut parent = name.base_name();
        while parent.num_labels() > top {
            self.table.parents.insert(LowerName::new(&parent));
            parent = parent.base_name();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn zone() -> Zone {
        Zone::new("docker", Some(Ipv4Addr::new(127, 0, 0, 153))).unwrap()
    }

    fn routed() -> Vec<Ipv4Net> {
        vec![
            "172.17.0.0/16".parse().unwrap(),
            "172.18.0.0/16".parse().unwrap(),
        ]
    }

    fn on(net: &str, ip: [u8; 4], aliases: &[&str]) -> Attachment {
        Attachment::new(net, Ipv4Addr::from(ip), aliases)
    }

    fn addrs(t: &Table, name: &str) -> Vec<String> {
        t.lookup(&Name::from_ascii(name).unwrap())
            .unwrap_or_default()
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    #[test]
    fn container_service_alias_and_label_names() {
        let compose = [(LABEL_SERVICE, "web"), (LABEL_PROJECT, "shop")];
        let b = Table::build(
            &zone(),
            &[
                Container::new(
                    "/shop-web-1",
                    &compose,
                    vec![on("bridge", [172, 17, 0, 2], &["frontend"])],
                ),
                Container::new(
                    "shop-web-2",
                    &compose,
                    vec![on("bridge", [172, 17, 0, 3], &[])],
                ),
                Container::new(
                    "Redis",
                    &[(LABEL_NAMES, " cache , cache.shop.docker,,db.internal")],
                    vec![on("bridge", [172, 17, 0, 4], &[])],
                ),
            ],
            &routed(),
        );
        assert!(b.skipped.is_empty(), "{:?}", b.skipped);
        let t = b.table;
        assert_eq!(addrs(&t, "shop-web-1.docker."), ["172.17.0.2"]);
        assert_eq!(
            addrs(&t, "web.shop.docker."),
            ["172.17.0.2", "172.17.0.3"],
            "replicas"
        );
        assert_eq!(addrs(&t, "frontend.docker."), ["172.17.0.2"]);
        assert_eq!(addrs(&t, "REDIS.docker."), ["172.17.0.4"], "any case");
        assert_eq!(addrs(&t, "cache.docker."), ["172.17.0.4"]);
        assert_eq!(
            addrs(&t, "cache.shop.docker."),
            ["172.17.0.4"],
            "the domain is not doubled"
        );
        assert_eq!(addrs(&t, "db.internal.docker."), ["172.17.0.4"]);
        assert_eq!(addrs(&t, "ns.docker."), ["127.0.0.153"]);
        assert!(
            t.parents
                .contains(&LowerName::from_str("shop.docker.").unwrap())
        );
        assert_eq!(
            t.name_of(Ipv4Addr::new(172, 17, 0, 2)).unwrap().to_ascii(),
            "shop-web-1.docker.",
            "PTR: the container name"
        );
        assert_eq!(
            t.name_of(Ipv4Addr::new(172, 17, 0, 4)).unwrap().to_ascii(),
            "redis.docker."
        );
    }

    use std::str::FromStr;

    #[test]
    fn only_routed_addresses() {
        let b = Table::build(
            &zone(),
            &[
                Container::new(
                    "both",
                    &[],
                    vec![
                        on("bridge", [172, 17, 0, 2], &[]),
                        on("private", [10, 9, 0, 2], &["hidden"]),
                        on("second", [172, 18, 0, 2], &["seen"]),
                    ],
                ),
                Container::new("elsewhere", &[], vec![on("private", [10, 9, 0, 3], &[])]),
                Container::new("none", &[], vec![Attachment::default()]),
            ],
            &routed(),
        );
        let t = &b.table;
        assert_eq!(addrs(t, "both.docker."), ["172.17.0.2", "172.18.0.2"]);
        assert_eq!(
            addrs(t, "seen.docker."),
            ["172.18.0.2"],
            "an alias names its network's address"
        );
        assert!(
            t.lookup(&Name::from_ascii("hidden.docker.").unwrap())
                .is_none()
        );
        assert!(
            t.lookup(&Name::from_ascii("elsewhere.docker.").unwrap())
                .is_none()
        );
        assert!(t.name_of(Ipv4Addr::new(10, 9, 0, 2)).is_none());
        let why: Vec<String> = b.skipped.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            why,
            [
                "container 'both': name 'hidden' skipped: network 'private' is not routed",
                "container 'elsewhere': no names: no address on a routed network",
                "container 'none': no names: no address on a routed network",
            ]
        );
    }

    #[test]
    fn untrusted_names_are_skipped_with_a_reason() {
        let long = "a".repeat(64);
        let deep = vec!["abcdefghij"; 24].join(".");
        let names = format!("ok,bad_underscore,-dash,{long},{deep},ns,é,a..b,x.ns");
        let b = Table::build(
            &zone(),
            &[Container::new(
                "my_app",
                &[
                    (LABEL_NAMES, &names),
                    (LABEL_SERVICE, "a.b"),
                    (LABEL_PROJECT, "p"),
                ],
                vec![on("bridge", [172, 17, 0, 9], &[])],
            )],
            &routed(),
        );
        let t = &b.table;
        assert_eq!(addrs(t, "ok.docker."), ["172.17.0.9"]);
        assert_eq!(
            addrs(t, "x.ns.docker."),
            ["172.17.0.9"],
            "only ns itself is reserved"
        );
        assert_eq!(addrs(t, "ns.docker."), ["127.0.0.153"]);
        let reasons: Vec<(Option<String>, SkipReason)> =
            b.skipped.into_iter().map(|s| (s.name, s.reason)).collect();
        let s = |n: &str| Some(n.to_string());
        assert_eq!(
            reasons,
            [
                (s("a.b.p"), SkipReason::BadLabel),
                (s("my_app"), SkipReason::BadLabel),
                (s("bad_underscore"), SkipReason::BadLabel),
                (s("-dash"), SkipReason::BadLabel),
                (Some(long), SkipReason::BadLabel),
                (Some(deep), SkipReason::TooLong),
                (s("ns"), SkipReason::Reserved),
                (s("é"), SkipReason::BadLabel),
                (s("a..b"), SkipReason::BadLabel),
            ]
        );
        assert_eq!(
            t.name_of(Ipv4Addr::new(172, 17, 0, 9)).unwrap().to_ascii(),
            "ok.docker.",
            "PTR: the first valid name"
        );
    }

    #[test]
    fn caps_names_addresses_and_records() {
        let many: Vec<String> = (0..200).map(|i| format!("n{i}")).collect();
        let b = Table::build(
            &zone(),
            &[Container::new(
                "big",
                &[(LABEL_NAMES, &many.join(","))],
                vec![on("bridge", [172, 17, 0, 9], &[])],
            )],
            &routed(),
        );
        // the container name plus 31 label names
        assert_eq!(b.table.names.len(), 1 + MAX_NAMES_PER_CONTAINER);
        assert!(
            b.skipped
                .iter()
                .all(|s| s.reason == SkipReason::TooManyNames)
        );
        assert_eq!(
            b.skipped.len() + b.more_skipped,
            2 * MAX_NAMES_PER_CONTAINER + 1 - MAX_NAMES_PER_CONTAINER
        );

        let replicas: Vec<Container> = (0..100u8)
            .map(|i| {
                Container::new(
                    &format!("r{i}"),
                    &[(LABEL_SERVICE, "web"), (LABEL_PROJECT, "p")],
                    vec![on("bridge", [172, 17, 1, i], &[])],
                )
            })
            .collect();
        let b = Table::build(&zone(), &replicas, &routed());
        assert_eq!(
            addrs(&b.table, "web.p.docker.").len(),
            MAX_ADDRESSES_PER_NAME
        );
        assert_eq!(
            b.skipped.len() + b.more_skipped,
            100 - MAX_ADDRESSES_PER_NAME
        );
        assert!(b.skipped.len() <= MAX_REPORTED);

        let lots: Vec<Container> = (0..30_000u32)
            .map(|i| {
                let [_, _, x, y] = i.to_be_bytes();
                Container::new(
                    &format!("c{i}"),
                    &[],
                    vec![on("bridge", [172, 17, x, y], &[])],
                )
            })
            .collect();
        let b = Table::build(&zone(), &lots, &routed());
        assert!(
            b.table.records() <= MAX_RECORDS + 1,
            "{}",
            b.table.records()
        );
        assert!(b.more_skipped > 0);
        assert!(b.skipped.iter().all(|s| s.reason == SkipReason::TableFull));
    }

    #[test]
    fn same_input_same_table_in_any_order() {
        let a = Container::new(
            "a",
            &[(LABEL_NAMES, "shared")],
            vec![on("b", [172, 17, 0, 2], &[])],
        );
        let b = Container::new(
            "b",
            &[(LABEL_NAMES, "shared")],
            vec![on("b", [172, 17, 0, 3], &[])],
        );
        let one = Table::build(&zone(), &[a.clone(), b.clone()], &routed()).table;
        let two = Table::build(&zone(), &[b, a], &routed()).table;
        assert_eq!(one.names, two.names);
        assert_eq!(one.reverse, two.reverse);
        assert_eq!(addrs(&one, "shared.docker."), ["172.17.0.2", "172.17.0.3"]);
    }

    #[test]
    fn skipped_names_are_escaped_and_cut_for_the_log() {
        let s = Skipped {
            container: "x\n\u{1b}[31m".into(),
            name: Some("y".repeat(500)),
            reason: SkipReason::BadLabel,
        };
        let line = s.to_string();
        assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
        assert!(line.len() < 250, "{line}");
    }
}
