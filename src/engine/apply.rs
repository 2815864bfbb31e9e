//! Changes go to the kernel in one batch; when one fails, the others of the run are undone.

use crate::net::{Change, Net, NetError};

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

/// Apply `changes`; if one fails, undo the others that took effect and report the first failure.
pub(super) async fn apply_all<N: Net>(
    net: &mut N,
    changes: &[Change],
    hooks: Hooks,
) -> Result<(), EngineError> {
    let (err, applied) = match send(net, changes, hooks).await {
        Ok(results) => {
            let mut applied = Vec::new();
            let mut first = None;
            for (change, result) in changes.iter().zip(results) {
                match result {
                    Ok(()) => applied.push(change.clone()),
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
            match first {
                None => return Ok(()),
                Some(err) => (err, applied),
            }
        }
        // The answers were lost: undo them all (undoing what did not happen changes nothing).
        Err(err) => (err, changes.to_vec()),
    };
    let undo_failed = undo_all(net, &applied).await;
    Err(EngineError::Apply {
        err,
        done: applied.len(),
        undo_failed,
    })
}
