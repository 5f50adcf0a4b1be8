//! Verify: fetch each patch's signed metadata and check it before a byte of the patch is fetched.
//!
//! With no `[security] public_keys` this step only re-checks the download hosts. Otherwise every
//! patch of the chain needs `<url>.meta.json`, signed by one of the keys, naming this package,
//! this file and this very version step; what it says of the patch and of the patched file is
//! recorded, and the download and apply steps hold the bytes to it. A patch that fails here is
//! "patch k failed" of rule 3: the ones before it still install, it is reported `2` and the ones
//! after it `3`.
//!
//! Facts recorded under another config are checked again: a patch verified with a key that has
//! since been dropped, or offered from a host no longer allowed, does not get through.

use ota_signing::{Expected, Metadata, PublicKey, meta_url, sig_url};

use super::{Agent, CycleError, Outcome, Transition, chain_codes};
use crate::client::ClientError;
use crate::config::{Package, Security};
use crate::store::{Failure, Signed};

pub(super) async fn run(agent: &mut Agent, pkg: &Package) -> Result<Transition, CycleError> {
    let keys = agent.config.security.keys();
    let require = agent.config.security.require_signatures;
    let key = pkg.key();
    let language = agent.config.language(pkg).to_owned();
    let model = agent.config.robot.version.clone();
    let update = agent.update(&key).clone();
    let ids = update.ids();
    agent.events.step(&key, crate::events::Step::Verify, &ids);
    let usable = update.usable();
    let mut from = update.from_version.clone();
    for index in 0..usable {
        agent.notifier.alive();
        let p = &update.patches[index];
        let expected_from = std::mem::replace(&mut from, p.to_version.clone());
        if !host_allowed(&agent.config.security, &p.url) {
            let reason = format!(
                "update {} is offered from {}, which is not in allowed_download_hosts",
                p.id,
                crate::redact::url(&p.url)
            );
            return refuse(agent, pkg, index, reason);
        }
        if keys.is_empty() {
            continue;
        }
        let signer = p.signed.as_ref().map(|s| s.key.as_str());
        if agent.config.security.lets_through(signer, p.unsigned) {
            continue;
        }
        let expected = Expected {
            package: &pkg.name,
            file_name: &pkg.file_name,
            language: &language,
            robot_version: &model,
            from_version: expected_from.parse().unwrap_or_default(),
            to_version: p.to_version.parse().unwrap_or_default(),
        };
        let fetched = match fetch_both(agent, &p.url).await {
            Ok(f) => f,
            // A 4xx other than "not found" is not a file that is there: missing, when
            // signatures are not required; a refusal when they are.
            Err(e) if e.is_client_error() && !require => None,
            Err(e) if e.is_client_error() || matches!(e, ClientError::TooLarge { .. }) => {
                let reason = format!(
                    "update {} is refused: its signed metadata cannot be fetched: {}",
                    p.id,
                    crate::error_chain(&e)
                );
                return refuse(agent, pkg, index, reason);
            }
            Err(e) => return give_up_or_retry(agent, pkg, index, e),
        };
        let verdict = match fetched {
            None if require => Err("it has no signed metadata, and signatures are required".into()),
            None => {
                log::warn!(
                    "{key}: update {} has no signed metadata; it is downloaded unauthenticated",
                    p.id
                );
                record(agent, &key, index, None);
                agent.save()?;
                continue;
            }
            Some((json, sig)) => ota_signing::verify_signed(&keys, &json, &sig)
                .and_then(|(meta, signer)| meta.check(&expected).map(|()| (meta, signer)))
                .map_err(|e| crate::error_chain(&e)),
        };
        let facts = verdict
            .map_err(|problem| format!("update {} is refused: {problem}", p.id))
            .and_then(|(meta, signer)| signed_facts(agent, &key, &p.id, meta, signer));
        let signed = match facts {
            Ok(signed) => signed,
            Err(reason) => return refuse(agent, pkg, index, reason),
        };
        record(agent, &key, index, Some(signed));
        agent.save()?;
    }
    check_bases(agent, pkg)
}

/// The facts signed metadata vouches for, when it holds under this config; `Err` is the reason
/// the update is refused.
fn signed_facts(
    agent: &Agent,
    key: &str,
    id: &str,
    meta: Metadata,
    signer: PublicKey,
) -> Result<Signed, String> {
    let require = agent.config.security.require_signatures;
    if !meta.binds_target() {
        // Format 1 names no language nor robot model: its signature holds for another
        // language's or model's build whenever the versions match.
        if require {
            return Err(format!(
                "update {id} is refused: its signed metadata is format {}, which names no language or robot model, and signatures are required",
                meta.format
            ));
        }
        log::warn!(
            "{key}: update {id}: the signed metadata is format {}, which names no language or robot model; accepted since signatures are not required",
            meta.format
        );
    }
    let max = agent.config.agent.max_patch_size;
    if meta.patch_size > max {
        return Err(format!(
            "update {id} is {} bytes, more than max_patch_size ({max})",
            meta.patch_size
        ));
    }
    log::info!(
        "{key}: update {id}: good signature for version {} → {} ({} bytes, sha256 {})",
        meta.from_version,
        meta.to_version,
        meta.patch_size,
        meta.patch_sha256
    );
    Ok(Signed {
        key: signer.to_text(),
        patch_size: meta.patch_size,
        patch_sha256: meta.patch_sha256,
        result_size: meta.result_size,
        result_sha256: meta.result_sha256,
        from_sha256: meta.from_sha256,
    })
}

/// With signed bases (format 3), before a byte of a patch is fetched: the first patch must
/// apply to the file as it is, and each next one to the result of the one before. A file that
/// is not the first base is another version (the signatures may say which); a chain whose
/// signed links do not meet has a bad patch where they part.
fn check_bases(agent: &mut Agent, pkg: &Package) -> Result<Transition, CycleError> {
    let key = pkg.key();
    let update = agent.update(&key).clone();
    let signed = |k: usize| update.patches[k].signed.as_ref();
    if let Some(base) = signed(0).and_then(|s| s.from_sha256.as_deref()) {
        if base != update.from_sha256 {
            let problem = format!(
                "update {} is signed for a file with sha256 {base}, not {} (sha256 {})",
                update.patches[0].id,
                pkg.path.display(),
                update.from_sha256
            );
            return super::identify::by_signatures(agent, pkg, &update, &problem);
        }
    }
    for k in 1..update.usable() {
        let (Some(before), Some(base)) = (
            signed(k - 1),
            signed(k).and_then(|s| s.from_sha256.as_deref()),
        ) else {
            continue;
        };
        if base != before.result_sha256 {
            let reason = format!(
                "update {} is refused: it is signed for a file with sha256 {base}, but update {} makes sha256 {}",
                update.patches[k].id,
                update.patches[k - 1].id,
                before.result_sha256
            );
            return refuse(agent, pkg, k, reason);
        }
    }
    Ok(Transition::Download)
}

/// The metadata and its signature; `None` when either is missing on the server.
async fn fetch_both(agent: &Agent, url: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, ClientError> {
    let Some(json) = agent.client.sidecar(&meta_url(url)).await? else {
        return Ok(None);
    };
    let Some(sig) = agent.client.sidecar(&sig_url(url)).await? else {
        return Ok(None);
    };
    Ok(Some((json, sig)))
}

fn record(agent: &mut Agent, key: &str, index: usize, signed: Option<Signed>) {
    let p = &mut agent.update_mut(key).patches[index];
    p.unsigned = signed.is_none();
    p.signed = signed;
    p.attempts = 0;
}

/// A failure that may pass (a timeout, a 500, an untrusted certificate, a host that cannot be
/// reached) is retried at the next cycle, but only `download_attempts` times, so that an update
/// cannot hang without a result.
fn give_up_or_retry(
    agent: &mut Agent,
    pkg: &Package,
    index: usize,
    e: ClientError,
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    if matches!(e, ClientError::Stopped { .. }) {
        return Err(e.into());
    }
    let limit = agent.config.agent.download_attempts;
    let p = &mut agent.update_mut(&key).patches[index];
    p.attempts += 1;
    let (attempts, id) = (p.attempts, p.id.clone());
    agent.save()?;
    if attempts < limit {
        return Err(e.into());
    }
    let reason = format!(
        "update {id} is refused: its signed metadata could not be fetched in {attempts} attempts: {}",
        crate::error_chain(&e)
    );
    refuse(agent, pkg, index, reason)
}

/// Records patch `index` as failed for good. When it is the first, nothing is left to install
/// and the update ends here; otherwise the download step stops before it, once the bases of
/// the patches before it are checked.
fn refuse(
    agent: &mut Agent,
    pkg: &Package,
    index: usize,
    reason: String,
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    log::error!("{key}: {reason}");
    if index == 0 {
        let ids = agent.update(&key).ids();
        agent.finish(pkg, &chain_codes(&ids, 0, Some(0)), None)?;
        return Ok(Transition::Report(Outcome::Failed { reason }));
    }
    agent.update_mut(&key).failed = Some(Failure { index, reason });
    agent.save()?;
    // The patches before it are still to install: their bases are checked all the same.
    check_bases(agent, pkg)
}

/// `allowed_download_hosts` lists `host` (any port) or `host:port`; absent, any host will do.
fn host_allowed(security: &Security, url: &str) -> bool {
    let Some(allowed) = &security.allowed_download_hosts else {
        return true;
    };
    crate::client::host_forms(url).is_some_and(|h| crate::client::host_in(allowed, &h))
}

#[cfg(test)]
mod tests {
    use super::{Security, host_allowed};

    #[test]
    fn allowed_hosts() {
        let open = Security::default();
        assert!(host_allowed(&open, "http://anywhere/x.patch"));
        let security = Security {
            allowed_download_hosts: Some(vec![
                "Updates.Example.com".into(),
                "10.0.0.1:8080".into(),
            ]),
            ..Security::default()
        };
        assert!(host_allowed(
            &security,
            "https://updates.example.com/a--2--f.patch"
        ));
        assert!(host_allowed(
            &security,
            "http://updates.example.com:81/a--2--f.patch"
        ));
        assert!(host_allowed(
            &security,
            "http://10.0.0.1:8080/a--2--f.patch"
        ));
        assert!(!host_allowed(&security, "http://10.0.0.1/a--2--f.patch"));
        assert!(!host_allowed(
            &security,
            "http://updates.example.com.evil/a--2--f.patch"
        ));
        assert!(!host_allowed(&security, "http://user@evil/a--2--f.patch"));
        assert!(!host_allowed(&security, "not a url"));
        // Decided on the parsed URL: a scheme's case, userinfo that reads like a host, an
        // IPv6 literal and a percent-encoded host are what the parser says they are.
        assert!(host_allowed(
            &security,
            "HTTPS://UPDATES.example.com/a--2--f.patch"
        ));
        assert!(host_allowed(&security, "http:10.0.0.1:8080/a--2--f.patch"));
        assert!(!host_allowed(
            &security,
            "http://updates.example.com@evil/a--2--f.patch"
        ));
        assert!(!host_allowed(
            &security,
            "http://updates.example.com:443@evil:443/a--2--f.patch"
        ));
        assert!(host_allowed(
            &security,
            "https://%75pdates.example.com/a--2--f.patch"
        ));
        let v6 = Security {
            allowed_download_hosts: Some(vec!["[::1]:8443".into()]),
            ..Security::default()
        };
        assert!(host_allowed(&v6, "https://[::1]:8443/a--2--f.patch"));
        assert!(!host_allowed(&v6, "https://[::2]:8443/a--2--f.patch"));
    }
}
