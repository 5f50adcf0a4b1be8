//! Verify: fetch each patch's signed metadata and check it before a byte of the patch is fetched.
//!
//! With no `[security] public_keys` this step does nothing. Otherwise every patch of the chain
//! needs `<url>.meta.json`, signed by one of the keys, naming this package, this file and this
//! very version step; what it says of the patch and of the patched file is recorded, and the
//! download and apply steps hold the bytes to it. A patch that fails here is "patch k failed"
//! of rule 3: the ones before it still install, it is reported `2` and the ones after it `3`.

use ota_signing::{Expected, meta_url, sig_url};

use super::{Agent, CycleError, Step};
use crate::config::Package;
use crate::store::{Failure, Signed};

pub(super) async fn run(agent: &mut Agent, pkg: &Package) -> Result<Step, CycleError> {
    let keys = agent.config.security.keys();
    if keys.is_empty() {
        return Ok(Step::Download);
    }
    let require = agent.config.security.require_signatures;
    let key = pkg.key();
    let update = agent.state.packages[&key]
        .update
        .clone()
        .expect("verify runs with an update");
    let usable = update
        .failed
        .as_ref()
        .map_or(update.patches.len(), |f| f.index);
    let mut from = update.from_version.clone();
    for index in 0..usable {
        let p = &update.patches[index];
        let expected_from = from.clone();
        from.clone_from(&p.to_version);
        if p.signed.is_some() || (p.unsigned && !require) {
            continue;
        }
        let expected = Expected {
            package: &pkg.name,
            file_name: &pkg.file_name,
            from_version: expected_from.parse().unwrap_or_default(),
            to_version: p.to_version.parse().unwrap_or_default(),
        };
        let fetched = match fetch_both(agent, &p.url).await {
            Ok(f) => f,
            // A refusal that asking again cannot change (a 403, an oversized file) is as bad as a
            // missing signature; anything else (a timeout, a 500) is retried later.
            Err(CycleError::Client(e)) if e.is_permanent() => {
                let reason = format!(
                    "update {} is refused: its signed metadata cannot be fetched: {}",
                    p.id,
                    crate::error_chain(&e)
                );
                return refuse(agent, &key, index, reason);
            }
            Err(e) => return Err(e),
        };
        let verdict = match fetched {
            None if require => Err("it has no signed metadata, and signatures are required".into()),
            None => {
                log::warn!(
                    "{key}: update {} has no signed metadata; it is downloaded unauthenticated",
                    p.id
                );
                set(agent, &key, index, None);
                agent.save()?;
                continue;
            }
            Some((json, sig)) => ota_signing::verify(&keys, &json, &sig)
                .and_then(|meta| meta.check(&expected).map(|()| meta))
                .map_err(|e| crate::error_chain(&e)),
        };
        match verdict {
            Ok(meta) if meta.patch_size > agent.config.agent.max_patch_size => {
                let reason = format!(
                    "update {} is {} bytes, more than max_patch_size ({})",
                    p.id, meta.patch_size, agent.config.agent.max_patch_size
                );
                return refuse(agent, &key, index, reason);
            }
            Ok(meta) => {
                log::info!(
                    "{key}: update {}: good signature for version {} → {} ({} bytes, sha256 {})",
                    p.id,
                    meta.from_version,
                    meta.to_version,
                    meta.patch_size,
                    meta.patch_sha256
                );
                let signed = Signed {
                    patch_size: meta.patch_size,
                    patch_sha256: meta.patch_sha256,
                    result_size: meta.result_size,
                    result_sha256: meta.result_sha256,
                };
                set(agent, &key, index, Some(signed));
                agent.save()?;
            }
            Err(problem) => {
                let reason = format!("update {} is refused: {problem}", p.id);
                return refuse(agent, &key, index, reason);
            }
        }
    }
    Ok(Step::Download)
}

/// The metadata and its signature; `None` when either is missing on the server.
async fn fetch_both(agent: &Agent, url: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, CycleError> {
    let Some(json) = agent.client.sidecar(&meta_url(url)).await? else {
        return Ok(None);
    };
    let Some(sig) = agent.client.sidecar(&sig_url(url)).await? else {
        return Ok(None);
    };
    Ok(Some((json, sig)))
}

fn set(agent: &mut Agent, key: &str, index: usize, signed: Option<Signed>) {
    let p = &mut agent
        .pkg_state(key)
        .update
        .as_mut()
        .expect("update")
        .patches[index];
    p.unsigned = signed.is_none();
    p.signed = signed;
}

/// Records patch `index` as failed for good; the download step then stops before it.
fn refuse(agent: &mut Agent, key: &str, index: usize, reason: String) -> Result<Step, CycleError> {
    log::error!("{key}: {reason}");
    agent.pkg_state(key).update.as_mut().expect("update").failed = Some(Failure { index, reason });
    agent.save()?;
    Ok(Step::Download)
}
