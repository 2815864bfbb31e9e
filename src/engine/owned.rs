//! dockroute's own routes and rules as `up` observes and applies them: where a table is left
//! unread (Linux: main), from the record, made sure of by the apply.

use super::EngineError;
use super::Hooks;
use super::apply::{Applied, apply_checked};
use crate::net::{Change, Entry, Net, NetError, OwnedView, RouteSpec};
use crate::plan;
use crate::record::Record;

/// dockroute's entries as `up` plans from them.
pub(super) struct Seen {
    pub owned: Vec<Entry>,
    /// Wanted routes that the last `up` recorded in the table that was not read: `up` makes
    /// sure of them ([`Net::ensure`]).
    pub checks: Vec<RouteSpec>,
    /// The table whose dockroute routes were not read ([`OwnedView::unread`]).
    pub unread: Option<u32>,
}

/// dockroute's own entries. Where the platform leaves a table unread because finding them there
/// means walking everybody's routes (Linux: main, with a VPN's thousands), its entries there are
/// taken from the record of the last `up`: a wanted one is made sure of by adding it in ways the
/// kernel refuses when it is there ([`Net::ensure`]), and one no longer wanted is removed by its
/// exact shape, which touches nothing else. An add whose place something
/// unrecorded holds makes `up` read that table after all. A dry run changes nothing, so it
/// reads everything.
pub(super) async fn observe_owned<N: Net>(
    net: &mut N,
    desired: &[Entry],
    previous: Option<&Record>,
    dry_run: bool,
) -> Result<Seen, NetError> {
    let view = if dry_run {
        OwnedView {
            entries: net.owned().await?,
            unread: None,
        }
    } else {
        net.owned_cheaply().await?
    };
    let mut seen = Seen {
        owned: view.entries,
        checks: Vec::new(),
        unread: view.unread,
    };
    if let (Some(table), Some(record)) = (view.unread, previous) {
        for e in &record.entries {
            if let Entry::Route(r) = e
                && r.table == table
            {
                seen.owned.push(e.clone());
                if desired.contains(e) {
                    seen.checks.push(r.clone());
                }
            }
        }
    }
    Ok(seen)
}

/// Apply `changes`, planned from `seen`, and make sure of its checks. When something unrecorded
/// holds the place of an add in the table that was not read, the run's changes are undone, every
/// table is read, and the plan for `desired` is applied from that. Returns what was changed.
pub(super) async fn apply_routes<N: Net>(
    net: &mut N,
    desired: &[Entry],
    seen: &Seen,
    changes: &[Change],
    hooks: Hooks,
) -> Result<Vec<Change>, EngineError> {
    if let Applied::Done(changes) =
        apply_checked(net, changes, &seen.checks, seen.unread, hooks).await?
    {
        return Ok(changes);
    }
    tracing::debug!("a route of dockroute's shape without a record: reading every table");
    let changes = plan::diff(desired, &net.owned().await?);
    match apply_checked(net, &changes, &[], None, hooks).await? {
        Applied::Done(changes) => Ok(changes),
        Applied::Unseen => {
            Err(NetError::Conflict("a route dockroute cannot see is in the way".into()).into())
        }
    }
}
