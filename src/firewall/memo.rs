//! What `watch` remembers of its last complete firewall read, for the firewalls whose rules live
//! in nftables (iptables-nft's filter table, the native nftables tables): the reading itself, and
//! nftables' generation id taken *before* it. The kernel bumps that id on every committed
//! nftables transaction, so while it is unchanged those rules are the ones read last time, and a
//! read of everything (SIGHUP, link or address events, the backstop) need not run `iptables -S`
//! and `nft list table` again. What nftables does not cover (iptables-legacy) is always read.
//!
//! What is kept is the rules as read, not what they mean for the VM's link and networks: the
//! repairs are worked out again for the scope of each reconcile (a VM that moved, new subnets).
//! Pure: the caller reads the id ([`super::nfnl::generation`]).

use super::{nft, walk};

/// The firewalls read through nftables.
#[derive(Debug, Default)]
pub struct Covered {
    /// iptables-nft's filter table (when `iptables` is iptables-nft).
    pub iptables_nft: Option<Vec<walk::Chain>>,
    /// The native nftables tables (when `nft` is installed).
    pub nft: Option<nft::Ruleset>,
}

/// Which of [`Covered`]'s parts a read needs: a reading without one of them, or with one not
/// needed any more (`iptables` switched to the legacy backend), is no answer for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    pub iptables_nft: bool,
    pub nft: bool,
}

/// The last complete reading, with the generation id read before it. Empty at first, after a
/// read that failed, and after a read when the id could not be read.
#[derive(Debug, Default)]
pub struct Memo {
    last: Option<(u32, Parts, Covered)>,
}

impl Memo {
    /// The remembered reading, taken out, when it is for the generation id `generation` and has exactly
    /// `parts`; `None` (and the memo is left empty) otherwise. Put it back with
    /// [`Memo::remember`].
    pub fn take(&mut self, generation: Option<u32>, parts: Parts) -> Option<Covered> {
        match (self.last.take(), generation) {
            (Some((g, p, c)), Some(now)) if g == now && p == parts => Some(c),
            _ => None,
        }
    }

    /// Remember a complete reading of `parts` made after reading the id `generation`; with
    /// no id, forget instead.
    pub fn remember(&mut self, generation: Option<u32>, parts: Parts, covered: Covered) {
        self.last = generation.map(|g| (g, parts, covered));
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

    fn reading() -> Covered {
        let chain = walk::Chain {
            name: "OUTPUT".into(),
            policy: Some("DROP".into()),
            rules: Vec::new(),
        };
        Covered {
            iptables_nft: Some(vec![chain]),
            nft: Some(nft::Ruleset::default()),
        }
    }

    #[test]
    fn the_same_generation_and_parts_give_the_reading_back() {
        let mut m = Memo::default();
        m.remember(Some(7), BOTH, reading());
        let c = m.take(Some(7), BOTH).expect("a hit");
        assert_eq!(c.iptables_nft.unwrap()[0].policy.as_deref(), Some("DROP"));
        assert!(m.is_empty(), "taken out until remembered again");
    }

    #[test]
    fn anything_else_is_a_miss_and_forgets() {
        let misses = [
            (Some(8), BOTH, "another generation"),
            (None, BOTH, "the id could not be read"),
            (
                Some(7),
                Parts {
                    iptables_nft: false,
                    nft: true,
                },
                "iptables now legacy",
            ),
            (
                Some(7),
                Parts {
                    iptables_nft: true,
                    nft: false,
                },
                "nft gone",
            ),
        ];
        for (generation, parts, why) in misses {
            let mut m = Memo::default();
            m.remember(Some(7), BOTH, reading());
            assert!(m.take(generation, parts).is_none(), "{why}");
            assert!(m.is_empty(), "{why}: a miss leaves nothing to hit later");
            assert!(m.take(Some(7), BOTH).is_none(), "{why}");
        }
        // nothing remembered, or remembered without an id: a miss
        assert!(Memo::default().take(Some(7), BOTH).is_none());
        let mut m = Memo::default();
        m.remember(None, BOTH, reading());
        assert!(m.is_empty() && m.take(None, BOTH).is_none());
        m.remember(Some(7), BOTH, reading());
        m.forget();
        assert!(m.take(Some(7), BOTH).is_none(), "after a failed read");
    }
}
