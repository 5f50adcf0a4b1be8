//! Report: send every queued callback, oldest first, removing each only once the server took it.

use super::{Agent, CycleError};
use crate::client::Ack;

/// Callbacks the server took between two saves of the outbox. Saving after each one made a long
/// outbox cost its length squared in writes; a power loss before a save only sends a few
/// results twice, which the contract allows (never zero times).
const SAVE_EVERY: usize = 32;

/// Sends the outbox. A callback the server fails on is kept, and the ones after it for other ids
/// still go out (those for the same id wait, so its results arrive in order); the first error
/// is returned at the end. When the server cannot be reached at all, the rest waits too.
pub(super) async fn run(agent: &mut Agent) -> Result<(), CycleError> {
    let mut unsaved = 0;
    let result = send(agent, &mut unsaved).await;
    if unsaved > 0 {
        agent.save()?;
    }
    result
}

async fn send(agent: &mut Agent, unsaved: &mut usize) -> Result<(), CycleError> {
    if !agent.state.outbox.is_empty() {
        let doing = format!(
            "sending {} update result(s) to the server",
            agent.state.outbox.len()
        );
        log::info!("{doing}");
        agent.notifier.status(&doing);
        agent.events.reporting(&agent.state.outbox);
    }
    let mut held: Vec<String> = Vec::new();
    let mut first_error = None;
    let mut at = 0;
    while let Some(cb) = agent.state.outbox.get(at).cloned() {
        if agent.shutdown.is_set() {
            return Err(CycleError::Stopped);
        }
        agent.notifier.alive();
        if held.contains(&cb.id) {
            at += 1;
            continue;
        }
        match agent.client.callback(&cb.id, cb.code).await {
            Ok(Ack::Accepted) => log::info!(
                "{}: reported result {} for update {}",
                cb.package,
                cb.code,
                cb.id
            ),
            Ok(Ack::Rejected(code)) => log::warn!(
                "{}: the server refused result {} for update {} (code {code}); dropping it",
                cb.package,
                cb.code,
                cb.id
            ),
            Err(e) => {
                let unreachable = e.is_connect();
                log::warn!(
                    "{}: result {} for update {} stays queued: {}",
                    cb.package,
                    cb.code,
                    cb.id,
                    crate::error_chain(&e)
                );
                first_error.get_or_insert(e);
                if unreachable {
                    break;
                }
                held.push(cb.id);
                at += 1;
                continue;
            }
        }
        agent.state.outbox.remove(at);
        *unsaved += 1;
        if *unsaved >= SAVE_EVERY {
            agent.save()?;
            *unsaved = 0;
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
