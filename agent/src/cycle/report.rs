//! Report: send every queued callback, oldest first, removing each only once the server took it.

use super::{Agent, CycleError};
use crate::client::Ack;

pub(super) async fn run(agent: &mut Agent) -> Result<(), CycleError> {
    if !agent.state.outbox.is_empty() {
        agent.notifier.status(&format!(
            "sending {} update result(s) to the server",
            agent.state.outbox.len()
        ));
    }
    while let Some(cb) = agent.state.outbox.first().cloned() {
        if agent.shutdown.is_set() {
            return Err(CycleError::Stopped);
        }
        match agent.client.callback(&cb.id, cb.code).await? {
            Ack::Accepted => log::info!(
                "{}: reported result {} for update {}",
                cb.package,
                cb.code,
                cb.id
            ),
            Ack::Rejected(code) => log::warn!(
                "{}: the server refused result {} for update {} (code {code}); dropping it",
                cb.package,
                cb.code,
                cb.id
            ),
        }
        agent.state.outbox.remove(0);
        agent.save()?;
    }
    Ok(())
}
