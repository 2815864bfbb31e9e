//! What `watch` remembers of its last complete firewall read, for the firewalls whose rules live
//! in nftables (iptables-nft's filter table, the native nftables tables): what that read found
//! there for the VM's link and networks (the repairs needed, dockroute's rules, warnings), with
//! nftables' generation id taken *before* it and the scope it was judged for. The kernel bumps
//! that id on every committed nftables transaction, so while it and the scope are unchanged the
//! result stands, and a read of everything (SIGHUP, link or address events, the backstop) need
//! not run `iptables -S` and `nft list table` again. What nftables does not cover
//! (iptables-legacy) is always read.
//!
//! The result is kept, and the rules it came from only when they are few ([`KEEP_RULES`]): then
//! a new scope under the same generation (a Docker network created: one subnet more) is judged
//! again from them instead of running `iptables -S` again, which is most of what routing a new
//! network costs; a firewall of thousands of rules is not held in a resident process. Pure: the
//! caller reads the id ([`super::nfnl::generation`]).

use super::walk::Chain;
use super::{Foreign, Repair, Scope, nft::Ruleset};

/// The most rules (iptables-nft's and nftables' together) kept to be judged again.
pub const KEEP_RULES: usize = 2000;

/// What one firewall's rules mean for a scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    pub desired: Vec<Repair>,
    pub owned: Vec<(Repair, Vec<String>)>,
    pub foreign: Vec<Foreign>,
    /// What could not be read in them (nftables: an expression dockroute does not know).
    pub warnings: Vec<String>,
}

/// The firewalls read through nftables.
#[derive(Debug, Default)]
pub struct Covered {
    /// iptables-nft's filter table (when `iptables` is iptables-nft).
    pub iptables_nft: Option<Judged>,
    /// The native nftables tables (when `nft` is installed).
    pub nft: Option<Judged>,
    /// The rules they were judged from, when few.
    pub rules: Option<Rules>,
}

/// The rules a result was judged from.
#[derive(Debug, Default)]
pub struct Rules {
    pub iptables_nft: Option<Vec<Chain>>,
    pub nft: Option<Ruleset>,
}

impl Rules {
    /// These rules, if there are at most `cap` of them.
    pub fn at_most(self, cap: usize) -> Option<Rules> {
        let chains = |c: &[Chain]| c.iter().map(|c| c.rules.len()).sum::<usize>();
        let n = self.iptables_nft.as_deref().map_or(0, chains)
            + self
                .nft
                .as_ref()
                .map_or(0, |rs| rs.tables.iter().map(|t| chains(&t.chains)).sum());
        (n <= cap).then_some(self)
    }
}

/// What the memo gives back for a read.
#[derive(Debug)]
pub enum Recalled {
    /// The result for the same scope: nothing to read or judge.
    Judged(Covered),
    /// The rules (the same generation, another scope): judge them, nothing to read.
    Rules(Rules),
}

/// Which of [`Covered`]'s parts a read needs: a result without one of them, or with one not
/// needed any more (`iptables` switched to the legacy backend), is no answer for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    pub iptables_nft: bool,
    pub nft: bool,
}

/// The last complete result, with the generation id read before it and its scope. Empty at
/// first, after a read that failed, and after a read when the id could not be read.
#[derive(Debug)]
pub struct Memo {
    last: Option<Remembered>,
    /// The most rules kept with a result ([`KEEP_RULES`] in `watch`'s resident memo).
    keep: usize,
}

impl Default for Memo {
    fn default() -> Self {
        Memo {
            last: None,
            keep: KEEP_RULES,
        }
    }
}

#[derive(Debug)]
struct Remembered {
    generation: u32,
    parts: Parts,
    scope: Option<Scope>,
    covered: Covered,
}

impl Memo {
    /// A memo for one run (`up`'s read ahead, [`super::read_ahead`]): it keeps the rules
    /// whatever their number, for the one plan that follows.
    pub fn for_one_run() -> Memo {
        Memo {
            last: None,
            keep: usize::MAX,
        }
    }

    /// The most rules a result keeps.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// The remembered result, taken out, when it is for the generation id `generation` and has
    /// exactly `parts`: itself when it was judged for `scope`, its rules (if they were kept)
    /// for another scope; `None` (and the memo is left empty) otherwise. Put a result back
    /// with [`Memo::remember`].
    pub fn take(
        &mut self,
        generation: Option<u32>,
        parts: Parts,
        scope: Option<&Scope>,
    ) -> Option<Recalled> {
        let last = self.last.take()?;
        if Some(last.generation) != generation || last.parts != parts {
            return None;
        }
        if last.scope.as_ref() == scope {
            return Some(Recalled::Judged(last.covered));
        }
        last.covered.rules.map(Recalled::Rules)
    }

    /// Remember a complete result for `parts` and `scope`, read after reading the generation id
    /// `generation`; with no id, forget instead.
    pub fn remember(
        &mut self,
        generation: Option<u32>,
        parts: Parts,
        scope: Option<&Scope>,
        covered: Covered,
    ) {
        self.last = generation.map(|generation| Remembered {
            generation,
            parts,
            scope: scope.cloned(),
            covered,
        });
    }

    pub fn forget(&mut self) {
        self.last = None;
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Parts = Parts {
        iptables_nft: true,
        nft: true,
    };

    fn result() -> Covered {
        let scope = super::super::test_scope();
        let rs = super::super::nft::read(
            r#"{"nftables": [
              {"table": {"family": "inet", "name": "vpn", "handle": 1}},
              {"chain": {"family": "inet", "table": "vpn", "name": "output", "handle": 1, "type": "filter", "hook": "output", "prio": 0, "policy": "drop"}}
            ]}"#,
        )
        .unwrap();
        let (desired, _, _) = super::super::nft::observe(&rs, Some(&scope));
        Covered {
            iptables_nft: Some(Judged::default()),
            nft: Some(Judged {
                desired,
                ..Default::default()
            }),
            rules: None,
        }
    }

    fn judged(r: Option<Recalled>) -> Option<Covered> {
        match r? {
            Recalled::Judged(c) => Some(c),
            Recalled::Rules(_) => None,
        }
    }

    #[test]
    fn the_same_generation_parts_and_scope_give_the_result_back() {
        let scope = super::super::test_scope();
        let mut m = Memo::default();
        m.remember(Some(7), BOTH, Some(&scope), result());
        let c = judged(m.take(Some(7), BOTH, Some(&scope))).expect("a hit");
        assert_eq!(c.nft.unwrap().desired.len(), 2);
        assert!(m.is_empty(), "taken out until remembered again");
    }

    #[test]
    fn anything_else_is_a_miss_and_forgets() {
        let scope = super::super::test_scope();
        let mut moved = scope.clone();
        moved.ifname = "vboxnet1".into();
        let mut more = scope.clone();
        more.nets.push("172.18.0.0/16".parse().unwrap());
        let misses = [
            (Some(8), BOTH, Some(&scope), "another generation"),
            (None, BOTH, Some(&scope), "the id could not be read"),
            (
                Some(7),
                Parts {
                    iptables_nft: false,
                    nft: true,
                },
                Some(&scope),
                "iptables now legacy",
            ),
            (
                Some(7),
                Parts {
                    iptables_nft: true,
                    nft: false,
                },
                Some(&scope),
                "nft gone",
            ),
            (Some(7), BOTH, Some(&moved), "another link"),
            (Some(7), BOTH, Some(&more), "another subnet"),
            (Some(7), BOTH, None, "no scope"),
        ];
        for (generation, parts, asked, why) in misses {
            let mut m = Memo::default();
            m.remember(Some(7), BOTH, Some(&scope), result());
            assert!(judged(m.take(generation, parts, asked)).is_none(), "{why}");
            assert!(m.is_empty(), "{why}: a miss leaves nothing to hit later");
            assert!(m.take(Some(7), BOTH, Some(&scope)).is_none(), "{why}");
        }
        // with its rules kept, another scope gets the rules to judge again; another generation
        // or other parts still nothing
        let kept = || Covered {
            rules: Rules {
                iptables_nft: Some(vec![Chain::default()]),
                nft: None,
            }
            .at_most(KEEP_RULES),
            ..result()
        };
        let mut m = Memo::default();
        m.remember(Some(7), BOTH, Some(&scope), kept());
        assert!(matches!(
            m.take(Some(7), BOTH, Some(&more)),
            Some(Recalled::Rules(Rules {
                iptables_nft: Some(_),
                ..
            }))
        ));
        m.remember(Some(7), BOTH, Some(&scope), kept());
        assert!(m.take(Some(8), BOTH, Some(&more)).is_none());
        // many rules are not kept
        let many = Chain {
            rules: vec![Default::default(); KEEP_RULES + 1],
            ..Chain::default()
        };
        let rules = Rules {
            iptables_nft: Some(vec![many]),
            nft: None,
        };
        assert!(rules.at_most(KEEP_RULES).is_none());
        // nothing remembered, or remembered without an id: a miss
        assert!(Memo::default().take(Some(7), BOTH, Some(&scope)).is_none());
        let mut m = Memo::default();
        m.remember(None, BOTH, Some(&scope), result());
        assert!(m.is_empty());
        m.remember(Some(7), BOTH, Some(&scope), result());
        m.forget();
        assert!(
            m.take(Some(7), BOTH, Some(&scope)).is_none(),
            "after a failed read"
        );
    }
}
