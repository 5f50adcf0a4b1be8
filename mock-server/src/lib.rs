//! A faithful, scriptable mock of the Alpha2 update server, for testing the OTA agent.
//!
//! The modules:
//! - `catalog`: the TOML catalog of clients, users, packages and firmware versions, and the
//!   bsdiff patches made from it (cached on disk) or named by it;
//! - `server`: [`MockServer`], the running server and what it records;
//! - `routes`: the endpoints of the wire contract (`/oauth/token`, `/file/download`,
//!   `/file/callback`), the patch files under `/version/`, and `/admin` for scripting;
//! - `faults`: [`Fault`]s that tests inject, and the response body that carries them out;
//! - `conn`: the TCP connection wrapper that lets a fault cut or reset a connection;
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
//! `endpoint` is one of `token`, `download`, `callback`, `patch`; `kind` is one of
//! `{"status": {"status": 500, "body": "...", "content_type": "text/html"}}` (the content type
//! defaults to JSON), `{"delay_ms": 1500}`, `{"truncate": {"after": 1000}}`,
//! `{"stall": {"after": 1000, "pause_ms": 2000}}`,
//! `{"stall_then_close": {"after": 1000, "pause_ms": 2000}}`, `{"corrupt": {"offset": 4096}}`
//! or `"reset"`.
//!
//! # Other admin endpoints
//!
//! Only loopback peers may use them; others get 403.
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
mod tokens;

pub use catalog::{Catalog, CatalogError, PatchInfo};
pub use faults::{Endpoint, Fault, FaultKind};
pub use server::{CallbackRecord, MockServer, RequestRecord, ServerError};
