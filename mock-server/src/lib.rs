//! A faithful, scriptable mock of the Alpha2 update server, for testing the OTA agent.
//!
//! What "faithful" means is written down in `docs/contract.md` at the repository's root: the
//! three endpoints with every parameter, the answers and their codes, the error shapes of the
//! Spring Security OAuth2 server behind them, and the rules the project decided where the
//! server's own document is silent, each with the tests that check it. A change to what this
//! server answers starts there.
//!
//! The modules:
//! - `catalog`: the TOML catalog of clients, users, packages and firmware versions, and the
//!   bsdiff patches made from it (cached on disk) or named by it, and their signed metadata;
//! - `server`: [`MockServer`], the running server;
//! - `state`: what the handlers share, and the records of the callbacks and requests received;
//! - `routes`: the endpoints of the wire contract (`/oauth/token`, `/file/download`,
//!   `/file/callback`), the patch files and their sidecars under `/version/`, and `/admin` for
//!   scripting;
//! - `faults`: [`Fault`]s that tests inject, and the response body that carries them out;
//! - `conn`: the TCP connection wrapper that lets a fault cut or reset a connection;
//! - `tls`: [`TlsConfig`], the certificate and key for serving HTTPS with rustls;
//! - `tokens`: access and refresh tokens with Spring Security OAuth2's lifecycle;
//! - `range`: parsing of single byte ranges;
//! - [`demo`]: a reproducible demo catalog with firmware-like files.
//!
//! # Faults as JSON
//!
//! `POST /admin/faults` takes a [`Fault`] as JSON. `path_contains` (matched against the path
//! and query) and `times` (default 1) are optional; durations are in milliseconds:
//!
//! ```json
//! {"endpoint": "patch", "path_contains": "--18--", "times": 1, "kind": {"truncate": {"after": 1000}}}
//! ```
//!
//! `endpoint` is one of `token`, `download`, `callback`, `patch` (the patch files) and
//! `metadata` (the signed metadata next to them, `<patch>.meta.json` and
//! `<patch>.meta.json.sig`; a `patch` fault never hits them, nor a `metadata` fault a patch);
//! `kind` is one of
//! `{"status": {"status": 500, "body": "...", "content_type": "text/html"}}` (the content type
//! defaults to JSON), `{"delay_ms": 1500}`, `{"truncate": {"after": 1000}}`,
//! `{"stall": {"after": 1000, "pause_ms": 2000}}`,
//! `{"stall_then_close": {"after": 1000, "pause_ms": 2000}}`, `{"corrupt": {"offset": 4096}}`,
//! `{"drip_ms": 1000}` (the body one byte at a time, each after that pause),
//! `"reset"`, or, for `patch` and `metadata` only,
//! `{"serve_instead": {"path": "/version/..."}}`, which answers with another file the server
//! serves, named by its URL path (another patch, metadata or signature), as if it were the one
//! asked for. On metadata, a `status` 404 plays a missing signature, `corrupt` a wrong one, and
//! `serve_instead` a replayed one:
//!
//! ```json
//! {"endpoint": "metadata", "path_contains": "--18--service5mic.patch.meta.json.sig",
//!  "kind": {"serve_instead": {"path": "/version/com.ubtechinc.alpha2services/CN/Alpha2Services-1.1.1.32--17--service5mic.patch.meta.json.sig"}}}
//! ```
//!
//! `path_contains` is a substring, so a `path_contains` of `<patch>.meta.json` also matches the
//! signature `<patch>.meta.json.sig`: to fault the two differently, inject the signature's fault
//! first. A fault that makes no sense (`serve_instead` on another endpoint or outside
//! `/version/`) is refused with 400 (and [`MockServer::inject`] panics).
//! [`MockServer::replay_patch`] injects the three faults of a whole replay.
//!
//! # Signed metadata
//!
//! When the catalog names a `signing_key` (see the `catalog` module), every patch comes with
//! `<patch>.meta.json` (`application/json`) and `<patch>.meta.json.sig` (`text/plain`), made at
//! load time with `ota_signing`; GET and HEAD, whole files, no ranges. Without a key both answer
//! 404. [`Catalog::public_key`] is the key to give the agent; [`PatchInfo::signed`] is what is
//! served. `ota-mock-server demo --dir DIR --sign` makes the key pair `DIR/vendor.key` and
//! `DIR/vendor.pub` (unless the secret key exists), names it in the catalog and prints on stderr
//! where the public key is.
//!
//! # HTTPS
//!
//! [`MockServer::start_tls`], [`MockServer::bind_tls`] and
//! [`MockServer::bind_tls_with_public_url`] serve HTTPS with rustls (the ring provider, HTTP/1.1
//! by ALPN) from a [`TlsConfig`] (DER or PEM); the binary takes `--tls-cert FILE --tls-key FILE`
//! in PEM. [`MockServer::uri`] and the patch URLs then begin with `https://`. Every fault works
//! as over plain HTTP: `truncate` and `stall_then_close` close the TCP connection without a TLS
//! close_notify, and `reset` resets it.
//!
//! # Other admin endpoints
//!
//! Only loopback peers may use them; others get 403. `GET /admin/requests` returns every query
//! string as it arrived, the clients' secrets, passwords and tokens included (tests compare
//! them): any local user can read them, so the mock server is for test credentials, never a
//! fleet's real ones.
//! - `GET /admin/callbacks`: a JSON array of [`CallbackRecord`]s;
//! - `GET /admin/requests`: a JSON array of [`RequestRecord`]s;
//! - `DELETE /admin/faults`: removes pending faults;
//! - `POST /admin/revoke`: revokes every token, or with `{"access_token": "..."}` that one
//!   (an access or refresh token) and its pair;
//! - `POST /admin/token-get` `{"allowed": false}`: `GET /oauth/token` answers 405;
//! - `POST /admin/advance-time` `{"seconds": 12000}`: moves the token clock forward.

mod catalog;
mod conn;
pub mod demo;
mod faults;
mod range;
mod routes;
mod server;
mod state;
mod tls;
mod tokens;

pub use catalog::{Catalog, CatalogError, PatchInfo, SignedMetadata};
pub use faults::{Endpoint, Fault, FaultError, FaultKind};
pub use server::{MockServer, ServerError};
pub use state::{CallbackRecord, RequestRecord};
pub use tls::{TestCertificates, TlsConfig, TlsError};
