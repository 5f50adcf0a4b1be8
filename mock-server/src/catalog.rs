//! The catalog: who may log in, which firmware versions exist and the patches between them.
//!
//! A catalog is one TOML file; paths in it are relative to its directory:
//!
//! ```toml
//! [server]
//! expires_in = 11999            # optional, seconds an access token lives
//! refresh_expires_in = 2592000  # optional, seconds a refresh token lives (30 days)
//! token_get = true              # optional; false makes GET /oauth/token answer 405
//! cache_dir = "cache"           # optional, where made patches are kept
//! signing_key = "keys/vendor.key"  # optional, signs the metadata served next to every patch,
//!                               # and each file's statement of its newest version at
//!                               # /version/<package>/<language>/<file_name>--<robot_version>.latest.json
//!                               # (and .sig), made when the catalog loads
//! statement_lifetime = 86400    # optional, seconds a statement holds (default a day)
//! metadata_format = 3           # optional, the signed metadata's format: 3 (default) names
//!                               # the sha256 of the file each patch applies to, 2 does not
//!
//! [[client]]
//! id = "mobile_1"
//! secret = "secret_1"
//!
//! [[user]]
//! username = "aa"
//! password = "aa"
//!
//! [[package]]
//! name = "com.ubtechinc.alpha2services"
//! label = "Alpha2Services"      # <Name> in patch file names; defaults to the package name
//! robots = ["15ae48ecs171faef35fafa5feafew"]  # optional; absent lets every robot upgrade
//!
//! [[package.file]]
//! file_name = "service5mic"
//! language = "CN"
//! robot_version = "1"           # the robot model its signed metadata names (default "1"); checks
//!                               # are not filtered by it
//!
//! [[package.file.version]]
//! code = 16
//! name = "1.1.0.32"
//! file = "versions/16"          # the full file
//!
//! [[package.file.version]]
//! code = 17
//! name = "1.1.1.32"
//! id = "23"                     # update id of the patch to this version; assigned if absent
//! file = "versions/17"          # a patch from version 16 is made with qbsdiff and cached
//! # patch = "patches/17.patch"  # or a ready bsdiff patch from the previous version, served as is
//! ```
//!
//! Version codes increase strictly within a file, ids are unique across the catalog, the first
//! version needs a full file, and a version needs a patch unless it and the one before have
//! full files. Made patches are cached under the SHA-256 of the two versions.
//!
//! # Signed metadata
//!
//! `signing_key` names a secret key file as `ota_signing::release::keygen` (or `ota-sign
//! keygen`) writes it. With it, the server also serves, next to every patch `<path>`,
//! `<path>.meta.json` (an [`ota_signing::Metadata`] of the package, the file name, the version
//! step, and the size and SHA-256 of the patch and of the version it produces) and
//! `<path>.meta.json.sig` (its ed25519 signature), both made once at load time. The result of a
//! ready-made patch whose version has no full file is found by applying the patch to the
//! previous version. Without a key those paths answer 404, as the real server, which knows
//! nothing of signatures, does. [`Catalog::public_key`] is the key an agent must trust;
//! [`PatchInfo::signed`] holds what is served.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ota_signing::{Expected, Metadata, PublicKey, SecretKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Default lifetime of an access token, as in the contract's example answer.
pub const DEFAULT_EXPIRES_IN: u64 = 11999;

/// Default lifetime of a refresh token: Spring Security OAuth2's default of 30 days.
pub const DEFAULT_REFRESH_EXPIRES_IN: u64 = 30 * 24 * 3600;

/// Errors met while loading a catalog; every message names the catalog file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot parse catalog {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("catalog {}: {entry}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        entry: String,
        problem: String,
    },
    #[error("catalog {}: {entry}: cannot read {}: {source}", path.display(), file.display())]
    File {
        path: PathBuf,
        entry: String,
        file: PathBuf,
        source: io::Error,
    },
    #[error("catalog {}: {entry}: cannot make patch: {source}", path.display())]
    Diff {
        path: PathBuf,
        entry: String,
        source: io::Error,
    },
    #[error("catalog {}: cannot write patch cache {}: {source}", path.display(), dir.display())]
    Cache {
        path: PathBuf,
        dir: PathBuf,
        source: io::Error,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    server: RawServer,
    #[serde(default, rename = "client")]
    clients: Vec<RawClient>,
    #[serde(default, rename = "user")]
    users: Vec<RawUser>,
    #[serde(default, rename = "package")]
    packages: Vec<RawPackage>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    expires_in: Option<u64>,
    refresh_expires_in: Option<u64>,
    token_get: Option<bool>,
    cache_dir: Option<PathBuf>,
    signing_key: Option<PathBuf>,
    statement_lifetime: Option<u64>,
    metadata_format: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    id: String,
    secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    name: String,
    label: Option<String>,
    robots: Option<Vec<String>>,
    #[serde(default, rename = "file")]
    files: Vec<RawFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    file_name: String,
    language: String,
    /// The robot model its patches are signed for.
    #[serde(default = "default_robot_version")]
    robot_version: String,
    #[serde(default, rename = "version")]
    versions: Vec<RawVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    code: u64,
    name: String,
    id: Option<String>,
    file: Option<PathBuf>,
    patch: Option<PathBuf>,
}

/// The contract's example robot model.
fn default_robot_version() -> String {
    "1".to_owned()
}

/// Server-wide settings from the catalog's `[server]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) expires_in: u64,
    pub(crate) refresh_expires_in: u64,
    pub(crate) token_get: bool,
}

#[derive(Debug, Clone)]
struct Package {
    name: String,
    robots: Option<Vec<String>>,
    files: Vec<FileEntry>,
}

#[derive(Debug, Clone)]
struct FileEntry {
    file_name: String,
    language: String,
    versions: Vec<Version>,
}

#[derive(Debug, Clone)]
struct Version {
    code: u64,
    /// The update id and URL path of the patch that leads to this version; `None` for the first.
    patch: Option<(String, String)>,
}

/// The signed metadata served next to a patch when the catalog names a signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedMetadata {
    /// What the metadata states.
    pub metadata: Metadata,
    /// The bytes served as `<patch>.meta.json`.
    pub json: Vec<u8>,
    /// The text served as `<patch>.meta.json.sig`.
    pub signature: String,
}

/// One patch file that the server serves under `/version/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchInfo {
    /// The update id of the patch.
    pub id: String,
    /// The path part of the patch's URL, e.g. `/version/pkg/CN/Name-1.1.1.32--17--file.patch`.
    pub url_path: String,
    /// Where the patch lives on disk.
    pub file: PathBuf,
    /// The size of the patch in bytes.
    pub len: u64,
    /// The strong, quoted entity tag of the patch.
    pub etag: String,
    /// The version code the patch applies to.
    pub from_code: u64,
    /// The version code the patch produces.
    pub to_code: u64,
    /// The metadata and signature served next to the patch; `None` without a signing key.
    pub signed: Option<SignedMetadata>,
}

impl PatchInfo {
    /// The path of the patch's metadata, `<url_path>.meta.json`.
    pub fn meta_url_path(&self) -> String {
        ota_signing::meta_url(&self.url_path)
    }

    /// The path of the signature of the patch's metadata, `<url_path>.meta.json.sig`.
    pub fn sig_url_path(&self) -> String {
        ota_signing::sig_url(&self.url_path)
    }
}

/// A file the server serves under `/version/...`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Served<'a> {
    Patch(&'a PatchInfo),
    Sidecar {
        bytes: &'a [u8],
        content_type: &'static str,
    },
}

/// What `/file/download` answers for one robot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The patches, as (id, URL path), leading from the robot's version to the newest one.
    Chain(Vec<(String, String)>),
    NoSuchVersion,
    RobotNotAllowed,
    NoLanguage,
}

/// A loaded catalog with every patch ready on disk.
#[derive(Clone)]
pub struct Catalog {
    path: PathBuf,
    pub(crate) settings: Settings,
    clients: HashMap<String, String>,
    users: HashMap<String, String>,
    packages: Vec<Package>,
    patches: HashMap<String, PatchInfo>,
    /// The signed statements of each file's newest version, by URL path: (JSON, signature).
    statements: HashMap<String, (Vec<u8>, String)>,
    public_key: Option<PublicKey>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets stay out of debug output.
        f.debug_struct("Catalog")
            .field("path", &self.path)
            .field("settings", &self.settings)
            .field("clients", &self.clients.len())
            .field("users", &self.users.len())
            .field("packages", &self.packages.len())
            .field("patches", &self.patches.len())
            .field("public_key", &self.public_key)
            .finish()
    }
}

impl Catalog {
    /// Loads a catalog file, checks it, and makes or finds every patch it needs.
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text = fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawCatalog = toml::from_str(&text).map_err(|e| CatalogError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Loader {
            path: path.to_path_buf(),
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        }
        .build(raw)
    }

    /// The file the catalog was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes the lifetime of newly issued access tokens, in seconds.
    pub fn set_expires_in(&mut self, seconds: u64) {
        self.settings.expires_in = seconds;
    }

    /// Changes the lifetime of newly issued refresh tokens, in seconds.
    pub fn set_refresh_expires_in(&mut self, seconds: u64) {
        self.settings.refresh_expires_in = seconds;
    }

    /// Chooses whether `GET /oauth/token` works (`true`) or answers 405 like newer servers.
    pub fn set_token_get(&mut self, allowed: bool) {
        self.settings.token_get = allowed;
    }

    /// Every patch the server serves, ordered by update id.
    pub fn patches(&self) -> Vec<PatchInfo> {
        let mut all: Vec<PatchInfo> = self.patches.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The patch with the given update id.
    pub fn patch_by_id(&self, id: &str) -> Option<PatchInfo> {
        self.patches.values().find(|p| p.id == id).cloned()
    }

    /// The public key of the catalog's signing key, which an agent must trust; `None` when the
    /// catalog names no key and the server serves no signed metadata.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.public_key
    }

    pub(crate) fn patch_by_path(&self, url_path: &str) -> Option<&PatchInfo> {
        self.patches.get(url_path)
    }

    /// The patch or sidecar file served at `url_path`, if any.
    pub(crate) fn served(&self, url_path: &str) -> Option<Served<'_>> {
        if let Some(patch) = self.patches.get(url_path) {
            return Some(Served::Patch(patch));
        }
        if let Some((json, _)) = self.statements.get(url_path) {
            return Some(Served::Sidecar {
                bytes: json,
                content_type: "application/json",
            });
        }
        if let Some((_, sig)) = url_path
            .strip_suffix(".sig")
            .and_then(|s| self.statements.get(s))
        {
            return Some(Served::Sidecar {
                bytes: sig.as_bytes(),
                content_type: "text/plain",
            });
        }
        if let Some(patch) = url_path.strip_suffix(".meta.json.sig") {
            let signed = self.patches.get(patch)?.signed.as_ref()?;
            return Some(Served::Sidecar {
                bytes: signed.signature.as_bytes(),
                content_type: "text/plain",
            });
        }
        let patch = url_path.strip_suffix(".meta.json")?;
        let signed = self.patches.get(patch)?.signed.as_ref()?;
        Some(Served::Sidecar {
            bytes: &signed.json,
            content_type: "application/json",
        })
    }

    pub(crate) fn has_id(&self, id: &str) -> bool {
        self.patches.values().any(|p| p.id == id)
    }

    /// `None` for an unknown client, else whether the secret matches.
    pub(crate) fn client_secret_ok(&self, id: &str, secret: &str) -> Option<bool> {
        self.clients.get(id).map(|s| s == secret)
    }

    pub(crate) fn user_ok(&self, username: &str, password: &str) -> bool {
        self.users.get(username).is_some_and(|p| p == password)
    }

    pub(crate) fn lookup(
        &self,
        package: &str,
        file_name: &str,
        language: &str,
        version: &str,
        robot_id: &str,
    ) -> Lookup {
        let Some(package) = self.packages.iter().find(|p| p.name == package) else {
            return Lookup::NoSuchVersion;
        };
        if let Some(robots) = &package.robots
            && !robots.iter().any(|r| r == robot_id)
        {
            return Lookup::RobotNotAllowed;
        }
        let files: Vec<&FileEntry> = package
            .files
            .iter()
            .filter(|f| f.file_name == file_name)
            .collect();
        if files.is_empty() {
            return Lookup::NoSuchVersion;
        }
        let Some(file) = files.iter().find(|f| f.language == language) else {
            return Lookup::NoLanguage;
        };
        let Ok(code) = version.trim().parse::<u64>() else {
            return Lookup::NoSuchVersion;
        };
        let Some(at) = file.versions.iter().position(|v| v.code == code) else {
            return Lookup::NoSuchVersion;
        };
        Lookup::Chain(
            file.versions[at + 1..]
                .iter()
                .filter_map(|v| v.patch.clone())
                .collect(),
        )
    }
}

struct Loader {
    path: PathBuf,
    dir: PathBuf,
}

fn url_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What the `[server]` table decides for the rest of the catalog.
struct ServerSection {
    settings: Settings,
    cache_dir: PathBuf,
    /// `None` when the catalog names no signing key.
    signing: Option<Signing>,
}

/// How the metadata of patches and the statements of files are signed.
struct Signing {
    key: SecretKey,
    metadata_format: u32,
    /// Seconds a statement holds.
    statement_lifetime: u64,
}

/// The update ids in use, and the next number to try for a version that names none.
struct Ids {
    used: HashSet<String>,
    next_auto: u64,
}

impl Ids {
    /// The smallest number, above the ones assigned before, that no version uses.
    fn assign(&mut self) -> String {
        loop {
            let candidate = self.next_auto.to_string();
            self.next_auto += 1;
            if self.used.insert(candidate.clone()) {
                return candidate;
            }
        }
    }
}

/// The file a version belongs to, as its patches and statements name it.
struct FileRef<'a> {
    package: &'a str,
    label: &'a str,
    raw: &'a RawFile,
}

impl FileRef<'_> {
    fn target(&self) -> ota_signing::Target<'_> {
        ota_signing::Target {
            package: self.package,
            file_name: &self.raw.file_name,
            language: &self.raw.language,
            robot_version: &self.raw.robot_version,
        }
    }

    fn expected(&self, from_version: u64, to_version: u64) -> Expected<'_> {
        Expected {
            package: self.package,
            file_name: &self.raw.file_name,
            language: &self.raw.language,
            robot_version: &self.raw.robot_version,
            from_version,
            to_version,
        }
    }
}

/// The version before the one being built, in a file's order.
struct Previous {
    code: u64,
    /// Its full file, if the catalog gives one.
    data: Option<Vec<u8>>,
    /// Its whole content, kept only when signing, since a signature covers the result of a patch.
    content: Option<Vec<u8>>,
}

impl Previous {
    /// A version just built (`code`, with the patch that leads to it), and what the next one
    /// needs of it.
    fn built(
        code: u64,
        patch: Option<(String, String)>,
        data: Option<Vec<u8>>,
        content: Option<Vec<u8>>,
    ) -> (Version, Previous) {
        let previous = Previous {
            code,
            data,
            content,
        };
        (Version { code, patch }, previous)
    }
}

/// The packages, and every file served for them under `/version/`.
struct Packages {
    packages: Vec<Package>,
    patches: HashMap<String, PatchInfo>,
    statements: HashMap<String, (Vec<u8>, String)>,
}

impl Loader {
    fn invalid(&self, entry: impl Into<String>, problem: impl Into<String>) -> CatalogError {
        CatalogError::Invalid {
            path: self.path.clone(),
            entry: entry.into(),
            problem: problem.into(),
        }
    }

    fn read(&self, entry: &str, file: &Path) -> Result<Vec<u8>, CatalogError> {
        let full = self.dir.join(file);
        fs::read(&full).map_err(|source| CatalogError::File {
            path: self.path.clone(),
            entry: entry.to_string(),
            file: full,
            source,
        })
    }

    /// Builds the catalog section by section, in the order of the file.
    fn build(self, raw: RawCatalog) -> Result<Catalog, CatalogError> {
        let server = self.build_server(&raw.server)?;
        let clients = raw.clients.into_iter().map(|c| (c.id, c.secret));
        let clients =
            self.secrets_by_name("client", clients, ("empty id", "duplicate client id"))?;
        let users = raw.users.into_iter().map(|u| (u.username, u.password));
        let users =
            self.secrets_by_name("user", users, ("empty username", "duplicate username"))?;
        let ids = self.collect_ids(&raw.packages)?;
        let built = PackageBuilder::new(&self, &server, ids).build(raw.packages)?;
        Ok(Catalog {
            path: self.path,
            settings: server.settings,
            clients,
            users,
            packages: built.packages,
            patches: built.patches,
            statements: built.statements,
            public_key: server.signing.as_ref().map(|s| s.key.public()),
        })
    }

    /// The `[server]` table: the token settings, the patch cache and how to sign.
    fn build_server(&self, raw: &RawServer) -> Result<ServerSection, CatalogError> {
        let settings = Settings {
            expires_in: raw.expires_in.unwrap_or(DEFAULT_EXPIRES_IN),
            refresh_expires_in: raw.refresh_expires_in.unwrap_or(DEFAULT_REFRESH_EXPIRES_IN),
            token_get: raw.token_get.unwrap_or(true),
        };
        let cache_dir = self
            .dir
            .join(raw.cache_dir.as_deref().unwrap_or(Path::new("cache")));
        let key = match &raw.signing_key {
            Some(file) => Some(self.signing_key(file)?),
            None => None,
        };
        let metadata_format = raw.metadata_format.unwrap_or(ota_signing::FORMAT);
        if ![ota_signing::FORMAT_2, ota_signing::FORMAT].contains(&metadata_format) {
            return Err(self.invalid(
                "server metadata_format",
                format!("is {metadata_format}; the server writes format 2 or 3"),
            ));
        }
        let signing = key.map(|key| Signing {
            key,
            metadata_format,
            statement_lifetime: raw.statement_lifetime.unwrap_or(86_400),
        });
        Ok(ServerSection {
            settings,
            cache_dir,
            signing,
        })
    }

    /// Secrets by name, from the `[[client]]` (`table` "client") or `[[user]]` tables: every
    /// name given, and given once.
    fn secrets_by_name(
        &self,
        table: &str,
        entries: impl IntoIterator<Item = (String, String)>,
        (empty, duplicate): (&str, &str),
    ) -> Result<HashMap<String, String>, CatalogError> {
        let mut by_name = HashMap::new();
        for (name, secret) in entries {
            if name.is_empty() {
                return Err(self.invalid(table, empty));
            }
            if by_name.insert(name.clone(), secret).is_some() {
                return Err(self.invalid(format!("{table} \"{name}\""), duplicate));
            }
        }
        Ok(by_name)
    }

    /// The update ids the versions name, checked before any package is built.
    fn collect_ids(&self, packages: &[RawPackage]) -> Result<Ids, CatalogError> {
        // Explicit ids are collected first so that auto-assigned ones never collide with them.
        let mut used = HashSet::new();
        for p in packages {
            for f in &p.files {
                for v in &f.versions {
                    if let Some(id) = &v.id {
                        let entry = format!(
                            "package \"{}\" file \"{}\" language \"{}\" version {}",
                            p.name, f.file_name, f.language, v.code
                        );
                        if id.is_empty() || id.contains(';') {
                            return Err(self.invalid(entry, format!("bad id \"{id}\"")));
                        }
                        if !used.insert(id.clone()) {
                            return Err(self.invalid(entry, format!("duplicate id \"{id}\"")));
                        }
                    }
                }
            }
        }
        Ok(Ids { used, next_auto: 1 })
    }

    fn signing_key(&self, file: &Path) -> Result<SecretKey, CatalogError> {
        let entry = "server signing_key";
        let full = self.dir.join(file);
        let text = fs::read_to_string(&full).map_err(|source| CatalogError::File {
            path: self.path.clone(),
            entry: entry.to_string(),
            file: full.clone(),
            source,
        })?;
        SecretKey::from_text(&text).map_err(|e| {
            self.invalid(
                entry,
                format!("{} is not a secret key file: {e}", full.display()),
            )
        })
    }

    /// The version a ready-made patch produces from the previous one, to sign it.
    fn apply(
        &self,
        entry: &str,
        prev_code: u64,
        patch: &[u8],
        old: Option<&[u8]>,
    ) -> Result<Vec<u8>, CatalogError> {
        let Some(old) = old else {
            return Err(self.invalid(
                entry,
                format!(
                    "the content of version {prev_code} is unknown, so the patch cannot be signed"
                ),
            ));
        };
        let mut new = Vec::new();
        qbsdiff::Bspatch::new(patch)
            .and_then(|p| p.apply(old, io::Cursor::new(&mut new)))
            .map_err(|e| {
                self.invalid(
                    entry,
                    format!(
                        "cannot apply the patch to version {prev_code} to sign its result: {e}"
                    ),
                )
            })?;
        Ok(new)
    }

    /// Finds the patch from `old` to `new` in the cache, or makes it with qbsdiff and stores it.
    fn cached_patch(
        &self,
        entry: &str,
        cache_dir: &Path,
        old: &[u8],
        new: &[u8],
    ) -> Result<PathBuf, CatalogError> {
        let mut hasher = Sha256::new();
        hasher.update((old.len() as u64).to_le_bytes());
        hasher.update(old);
        hasher.update(new);
        let key = hex(&hasher.finalize());
        let target = cache_dir.join(format!("{key}.patch"));
        if let Ok(bytes) = fs::read(&target)
            && bytes.starts_with(b"BSDIFF40")
        {
            log::debug!("reusing cached patch {}", target.display());
            return Ok(target);
        }
        let mut patch = Vec::new();
        qbsdiff::Bsdiff::new(old, new)
            .compare(io::Cursor::new(&mut patch))
            .map_err(|source| CatalogError::Diff {
                path: self.path.clone(),
                entry: entry.to_string(),
                source,
            })?;
        let cache_error = |source| CatalogError::Cache {
            path: self.path.clone(),
            dir: cache_dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(cache_dir).map_err(cache_error)?;
        // A unique temporary name and a rename keep concurrent loaders from seeing half a patch.
        let tmp = cache_dir.join(format!(
            ".{key}.{}.{}.tmp",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::write(&tmp, &patch).map_err(cache_error)?;
        fs::rename(&tmp, &target).map_err(cache_error)?;
        log::info!(
            "made patch {} ({} bytes) for {entry}",
            target.display(),
            patch.len()
        );
        Ok(target)
    }
}

/// Builds the `[[package]]` tables in turn, with the patches and statements served for them.
struct PackageBuilder<'a> {
    loader: &'a Loader,
    server: &'a ServerSection,
    ids: Ids,
    /// When the statements are made, in seconds since the Unix epoch.
    now: u64,
    patches: HashMap<String, PatchInfo>,
    statements: HashMap<String, (Vec<u8>, String)>,
}

impl<'a> PackageBuilder<'a> {
    fn new(loader: &'a Loader, server: &'a ServerSection, ids: Ids) -> PackageBuilder<'a> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PackageBuilder {
            loader,
            server,
            ids,
            now,
            patches: HashMap::new(),
            statements: HashMap::new(),
        }
    }

    /// Builds every package, in the catalog's order.
    fn build(mut self, raw: Vec<RawPackage>) -> Result<Packages, CatalogError> {
        let mut packages = Vec::new();
        let mut names = HashSet::new();
        for p in raw {
            packages.push(self.build_package(p, &mut names)?);
        }
        Ok(Packages {
            packages,
            patches: self.patches,
            statements: self.statements,
        })
    }

    /// One `[[package]]` table and its files; `names` holds the packages before it.
    fn build_package(
        &mut self,
        p: RawPackage,
        names: &mut HashSet<String>,
    ) -> Result<Package, CatalogError> {
        let pentry = format!("package \"{}\"", p.name);
        if !url_safe(&p.name) {
            return Err(self.loader.invalid(
                pentry,
                "name must be non-empty and use only letters, digits, '.', '_' and '-'",
            ));
        }
        if !names.insert(p.name.clone()) {
            return Err(self.loader.invalid(pentry, "duplicate package"));
        }
        let label = p.label.clone().unwrap_or_else(|| p.name.clone());
        if !url_safe(&label) {
            return Err(self.loader.invalid(
                pentry,
                "label must use only letters, digits, '.', '_' and '-'",
            ));
        }
        let mut files = Vec::new();
        let mut seen_files = HashSet::new();
        for f in p.files {
            files.push(self.build_file(&p.name, &label, f, &mut seen_files)?);
        }
        Ok(Package {
            name: p.name,
            robots: p.robots,
            files,
        })
    }

    /// One `[[package.file]]` table and its versions; `seen` holds the package's files before it.
    fn build_file(
        &mut self,
        package: &str,
        label: &str,
        f: RawFile,
        seen: &mut HashSet<(String, String)>,
    ) -> Result<FileEntry, CatalogError> {
        let fentry = format!(
            "package \"{}\" file \"{}\" language \"{}\"",
            package, f.file_name, f.language
        );
        if !url_safe(&f.file_name) || !url_safe(&f.language) {
            return Err(self.loader.invalid(
                fentry,
                "file_name and language must be non-empty and use only letters, digits, '.', '_' and '-'",
            ));
        }
        if !seen.insert((f.file_name.clone(), f.language.clone())) {
            return Err(self.loader.invalid(fentry, "duplicate file and language"));
        }
        if f.versions.is_empty() {
            return Err(self.loader.invalid(fentry, "no versions"));
        }
        let file = FileRef {
            package,
            label,
            raw: &f,
        };
        let mut versions = Vec::new();
        let mut previous = None;
        for v in &f.versions {
            let ventry = format!("{fentry} version {}", v.code);
            let (version, this) = self.build_version(&file, v, previous.take(), &ventry)?;
            versions.push(version);
            previous = Some(this);
        }
        if let Some(latest) = versions.last() {
            self.sign_statement(&file, latest.code);
        }
        Ok(FileEntry {
            file_name: f.file_name,
            language: f.language,
            versions,
        })
    }

    /// One `[[package.file.version]]` table, after the file's `previous` version if any.
    fn build_version(
        &mut self,
        file: &FileRef<'_>,
        v: &RawVersion,
        previous: Option<Previous>,
        ventry: &str,
    ) -> Result<(Version, Previous), CatalogError> {
        if !url_safe(&v.name) {
            return Err(self.loader.invalid(
                ventry,
                "name must be non-empty and use only letters, digits, '.', '_' and '-'",
            ));
        }
        if v.file.is_none() && v.patch.is_none() {
            return Err(self.loader.invalid(ventry, "neither file nor patch given"));
        }
        let data = match &v.file {
            Some(file) => Some(self.loader.read(ventry, file)?),
            None => None,
        };
        match previous {
            None => self.first_version(v, data, ventry),
            Some(previous) => self.next_version(file, v, data, previous, ventry),
        }
    }

    /// The first version of a file, which no patch leads to.
    fn first_version(
        &self,
        v: &RawVersion,
        data: Option<Vec<u8>>,
        ventry: &str,
    ) -> Result<(Version, Previous), CatalogError> {
        if v.patch.is_some() && data.is_none() {
            return Err(self.loader.invalid(
                ventry,
                "the first version needs a full file, since no patch leads to it",
            ));
        }
        if let Some(id) = &v.id {
            return Err(self.loader.invalid(
                ventry,
                format!("the first version has no patch, so it cannot have id \"{id}\""),
            ));
        }
        let content = if self.server.signing.is_some() {
            data.clone()
        } else {
            None
        };
        Ok(Previous::built(v.code, None, data, content))
    }

    /// A later version of a file, with the patch that leads to it from `previous`.
    fn next_version(
        &mut self,
        file: &FileRef<'_>,
        v: &RawVersion,
        data: Option<Vec<u8>>,
        previous: Previous,
        ventry: &str,
    ) -> Result<(Version, Previous), CatalogError> {
        if v.code <= previous.code {
            return Err(self.loader.invalid(
                ventry,
                format!(
                    "version codes must increase strictly, but {} follows {}",
                    v.code, previous.code
                ),
            ));
        }
        let id = v.id.clone().unwrap_or_else(|| self.ids.assign());
        let url_path = format!(
            "/version/{}/{}/{}-{}--{}--{}.patch",
            file.package, file.raw.language, file.label, v.name, v.code, file.raw.file_name
        );
        let patch_file = self.patch_file(v, &previous, data.as_deref(), ventry)?;
        let patch = fs::read(&patch_file).map_err(|source| CatalogError::File {
            path: self.loader.path.clone(),
            entry: ventry.to_string(),
            file: patch_file.clone(),
            source,
        })?;
        let (signed, content) = match &self.server.signing {
            Some(signing) => {
                let expected = file.expected(previous.code, v.code);
                let (signed, result) = self.sign_patch(
                    signing,
                    &expected,
                    previous.content,
                    data.as_deref(),
                    &patch,
                    ventry,
                )?;
                (Some(signed), Some(result))
            }
            None => (None, None),
        };
        self.patches.insert(
            url_path.clone(),
            PatchInfo {
                id: id.clone(),
                url_path: url_path.clone(),
                file: patch_file,
                len: patch.len() as u64,
                etag: etag(&patch),
                from_code: previous.code,
                to_code: v.code,
                signed,
            },
        );
        Ok(Previous::built(v.code, Some((id, url_path)), data, content))
    }

    /// The patch to a version from `previous`: the catalog's own, or one made from the two full
    /// files.
    fn patch_file(
        &self,
        v: &RawVersion,
        previous: &Previous,
        new: Option<&[u8]>,
        ventry: &str,
    ) -> Result<PathBuf, CatalogError> {
        match (&v.patch, &previous.data, new) {
            (Some(patch), _, _) => {
                let bytes = self.loader.read(ventry, patch)?;
                if !bytes.starts_with(b"BSDIFF40") {
                    return Err(self.loader.invalid(
                        ventry,
                        format!(
                            "{} is not a bsdiff 4.x patch (no BSDIFF40 header)",
                            patch.display()
                        ),
                    ));
                }
                Ok(self.loader.dir.join(patch))
            }
            (None, Some(old), Some(new)) => {
                self.loader
                    .cached_patch(ventry, &self.server.cache_dir, old, new)
            }
            (None, None, _) => Err(self.loader.invalid(
                ventry,
                format!(
                    "needs a patch, since version {} has no full file",
                    previous.code
                ),
            )),
            (None, Some(_), None) => unreachable!("a version without file has a patch"),
        }
    }

    /// The signed metadata of `patch`, and the content it produces, which the next patch
    /// applies to.
    fn sign_patch(
        &self,
        signing: &Signing,
        expected: &Expected<'_>,
        base: Option<Vec<u8>>,
        new: Option<&[u8]>,
        patch: &[u8],
        ventry: &str,
    ) -> Result<(SignedMetadata, Vec<u8>), CatalogError> {
        let prev_code = expected.from_version;
        // Format 3 names the base: the content the patch applies to.
        let Some(base) = base else {
            return Err(self.loader.invalid(
                ventry,
                format!(
                    "the content of version {prev_code} is unknown, so the patch cannot be signed"
                ),
            ));
        };
        let result = match new {
            Some(new) => new.to_vec(),
            None => self.loader.apply(ventry, prev_code, patch, Some(&base))?,
        };
        let mut metadata = Metadata::describe(expected, &base, patch, &result);
        if signing.metadata_format == ota_signing::FORMAT_2 {
            (metadata.format, metadata.from_sha256) = (signing.metadata_format, None);
        }
        let (json, signature) = metadata.sign(&signing.key);
        let signed = SignedMetadata {
            metadata,
            json,
            signature,
        };
        Ok((signed, result))
    }

    /// Signs the statement that `latest` is the file's newest version, when the catalog has a key.
    fn sign_statement(&mut self, file: &FileRef<'_>, latest: u64) {
        let Some(signing) = &self.server.signing else {
            return;
        };
        let target = file.target();
        let statement =
            ota_signing::Statement::new(&target, latest, self.now, signing.statement_lifetime);
        let (json, signature) = statement.sign(&signing.key);
        let path = format!("/version/{}", ota_signing::statement_path(&target));
        self.statements.insert(path, (json, signature));
    }
}

/// The strong entity tag of a patch: part of its SHA-256, quoted.
fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", hex(&Sha256::digest(bytes)[..16]))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
