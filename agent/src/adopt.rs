//! `ota-agent adopt PACKAGE VERSION`: a person says which version a managed file is, after
//! changing it by hand or after the agent lost track of it (see `cycle::identify`).
//!
//! The file's sha256 is recorded as that version twice: in the file's own record, which
//! outlives the state, and in the state, which makes the agent patch it again. The daemon
//! must be stopped: its lock on the state directory keeps two writers apart.

use crate::config::{Config, Package};
use crate::managed::InstallError;
use crate::store::{Store, StoreError, VersionSource};

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(
        "no configured package is `{0}` (name it as name/file_name, as `ota-agent status` shows)"
    )]
    UnknownPackage(String),
    #[error("package `{0}` manages several files; name one as name/file_name")]
    Ambiguous(String),
    #[error("`{0}` is not a version code (an integer up to 18446744073709551615)")]
    NotAVersion(String),
    #[error(
        "the agent is running (its state directory {0} is locked); stop it first: systemctl stop ota-agent"
    )]
    Running(std::path::PathBuf),
    #[error(
        "an update of {0} is under way; let it end (`ota-agent status` shows it) before adopting the file"
    )]
    UpdateUnderWay(String),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("cannot use the state directory")]
    Store(#[source] StoreError),
}

/// What `adopt` recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub package: String,
    pub version: String,
    pub sha256: String,
    /// False on a file system without extended attributes: only the state remembers it.
    pub recorded_on_file: bool,
}

/// Records the file of `package` as it is now as `version`.
pub fn adopt(config: &Config, package: &str, version: &str) -> Result<Adopted, AdoptError> {
    let pkg = find(config, package)?;
    if version.parse::<u64>().is_err() {
        return Err(AdoptError::NotAVersion(version.to_owned()));
    }
    let dir = &config.agent.state_dir;
    let store = Store::open(dir).map_err(|e| match e {
        StoreError::Locked { path } => AdoptError::Running(path),
        e => AdoptError::Store(e),
    })?;
    let loaded = store.load().map_err(AdoptError::Store)?;
    let mut state = loaded.state;
    // After a lost state, the other packages keep that knowledge: their config versions stay
    // no knowledge of what the agent did before (see `Agent::reconcile`).
    for p in &config.packages {
        state.packages.entry(p.key()).or_insert_with(|| {
            let mut ps = crate::store::PackageState::new(&p.version);
            ps.after_state_loss = loaded.lost.is_some();
            ps
        });
    }
    let key = pkg.key();
    let ps = state.packages.get_mut(&key).expect("inserted above");
    if ps.update.is_some() {
        return Err(AdoptError::UpdateUnderWay(key));
    }
    let (sha256, recorded_on_file) =
        crate::managed::record_as(&pkg.path, config.owner(pkg), version)?;
    ps.version = version.to_owned();
    ps.sha256 = Some(sha256.clone());
    ps.source = VersionSource::Adopted;
    ps.unidentified = None;
    ps.after_state_loss = false;
    ps.configured_version = Some(pkg.version.clone());
    store.save(&state).map_err(AdoptError::Store)?;
    Ok(Adopted {
        package: key,
        version: version.to_owned(),
        sha256,
        recorded_on_file,
    })
}

fn find<'a>(config: &'a Config, package: &str) -> Result<&'a Package, AdoptError> {
    if let Some(p) = config.packages.iter().find(|p| p.key() == package) {
        return Ok(p);
    }
    let mut named = config.packages.iter().filter(|p| p.name == package);
    match (named.next(), named.next()) {
        (Some(p), None) => Ok(p),
        (Some(_), Some(_)) => Err(AdoptError::Ambiguous(package.to_owned())),
        (None, _) => Err(AdoptError::UnknownPackage(package.to_owned())),
    }
}
