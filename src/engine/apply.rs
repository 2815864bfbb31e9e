//! Changes go to the kernel in one batch; when one fails, the others of the run are undone.

use crate::net::{Change, Entry, Net, NetError, RouteSpec};

use super::{EngineError, Hooks};

fn stall(hooks: Hooks, i: usize) {
    if hooks.stall_before_change == Some(i) {
        tracing::warn!("test hook: stalling before change {i}");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Apply `changes` in one batch, or in two around the test hook's stall (so that a test can kill
/// the process between them). Each change's result, in order; `Err` when they are unknown.
pub(super) async fn send<N: Net>(
    net: &mut N,
    changes: &[Change],
    hooks: Hooks,
) -> Result<Vec<Result<(), NetError>>, NetError> {
    for change in changes {
        tracing::info!("{change}");
    }
    let at = hooks
        .stall_before_change
        .map_or(0, |i| i.min(changes.len()));
    let (before, after) = changes.split_at(at);
    let mut results = Vec::with_capacity(changes.len());
    if !before.is_empty() {
        results.extend(net.apply(before).await?);
    }
    stall(hooks, at);
    if !after.is_empty() {
        results.extend(net.apply(after).await?);
    }
    Ok(results)
}

/// Undo `done`, newest first, in one batch; returns what could not be undone.
pub(super) async fn undo_all<N: Net>(net: &mut N, done: &[Change]) -> Vec<String> {
    let undo: Vec<Change> = done.iter().rev().map(Change::inverse).collect();
    if undo.is_empty() {
        return Vec::new();
    }
    match net.apply(&undo).await {
        Ok(results) => undo
            .iter()
            .zip(results)
            .filter_map(|(change, r)| r.err().map(|e| format!("{change}: {e}")))
            .collect(),
        Err(e) => vec![format!("undoing {} change(s): {e}", undo.len())],
    }
}

/// What applying a plan made from a partial observation ([`super::Seen`]) came to.
pub(super) enum Applied {
    /// Everything took effect: `changes`, then the checked routes that were missing (added
    /// back).
    Done(Vec<Change>),
    /// An add found its place taken in the table that was not read: dockroute's route from a run
    /// that left no record, or somebody else's. Nothing of this run is left applied; the caller
    /// reads that table and plans again.
    Unseen,
}

/// Apply `changes`, then make sure of `checks`: routes believed present in the table that was
/// not read (`unread`), see [`Net::ensure`]. If one fails, the others that took effect are
/// undone and the first failure is reported.
pub(super) async fn apply_checked<N: Net>(
    net: &mut N,
    changes: &[Change],
    checks: &[RouteSpec],
    unread: Option<u32>,
    hooks: Hooks,
) -> Result<Applied, EngineError> {
    let results = match send(net, changes, hooks).await {
        Ok(results) => results,
        // The answers were lost: undo them all (undoing what did not happen changes nothing).
        Err(err) => {
            let undo_failed = undo_all(net, changes).await;
            return Err(EngineError::Apply {
                err,
                done: changes.len(),
                undo_failed,
            });
        }
    };
    let in_unread =
        |c: &Change| matches!(c, Change::Add(Entry::Route(r)) if Some(r.table) == unread);
    let mut applied = Vec::new();
    let mut first = None;
    let mut unseen = false;
    for (change, result) in changes.iter().zip(results) {
        match result {
            Ok(()) => applied.push(change.clone()),
            Err(NetError::Exists(_)) if in_unread(change) => unseen = true,
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    if first.is_none() && !unseen && !checks.is_empty() {
        match net.ensure(checks).await {
            Ok(answers) => {
                for (r, answer) in checks.iter().zip(answers) {
                    match answer {
                        Ok(true) => {
                            tracing::info!(
                                "{} (it was gone)",
                                Change::Add(Entry::Route(r.clone()))
                            );
                            applied.push(Change::Add(Entry::Route(r.clone())));
                        }
                        Ok(false) => {}
                        Err(e) => {
                            first.get_or_insert(e);
                        }
                    }
                }
            }
            Err(e) => first = Some(e),
        }
    }
    if first.is_none() && !unseen {
        return Ok(Applied::Done(applied));
    }
    let undo_failed = undo_all(net, &applied).await;
    match first {
        Some(err) => Err(EngineError::Apply {
            err,
            done: applied.len(),
            undo_failed,
        }),
        None if undo_failed.is_empty() => Ok(Applied::Unseen),
        None => Err(EngineError::Apply {
            err: NetError::Conflict(
                "a route of dockroute's shape is in the main table without a record of it".into(),
            ),
            done: applied.len(),
            undo_failed,
        }),
    }
}
