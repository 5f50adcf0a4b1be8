//! The HTTP endpoints: the contract's three, the patch files, and `/admin` for scripting.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::catalog::{Lookup, Served};
use crate::conn::ConnControl;
use crate::faults::{BodyFault, Endpoint, Fault, FaultBody, FaultKind};
use crate::range::{self, RangeRequest};
use crate::state::{AppState, CallbackRecord, now_ms};
use crate::tokens::TokenProblem;

type Shared = Arc<AppState>;
type Params = HashMap<String, String>;

const JSON: &str = "application/json;charset=UTF-8";
const FULL_AUTH: &str = "Full authentication is required to access this resource";

pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/oauth/token", get(token_get).post(token_post))
        .route("/file/download", get(download))
        .route("/file/callback", post(callback))
        .route("/version/{*rest}", get(patch))
        .route("/admin/callbacks", get(admin_callbacks))
        .route("/admin/requests", get(admin_requests))
        .route(
            "/admin/faults",
            post(admin_add_fault).delete(admin_clear_faults),
        )
        .route("/admin/revoke", post(admin_revoke))
        .route("/admin/token-get", post(admin_token_get))
        .route("/admin/advance-time", post(admin_advance_time))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .with_state(state)
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
        value.to_string(),
    )
        .into_response()
}

/// Spring Boot's error body, used for MVC errors such as a missing parameter.
fn spring_error(status: StatusCode, message: &str, path: &str) -> Response {
    json_response(
        status,
        &json!({
            "timestamp": now_ms(),
            "status": status.as_u16(),
            "error": status.canonical_reason().unwrap_or(""),
            "message": message,
            "path": path,
        }),
    )
}

/// Spring Security OAuth2's error body.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = json_response(
        status,
        &json!({"error": error, "error_description": description}),
    );
    if status == StatusCode::UNAUTHORIZED {
        let challenge = format!(
            "Bearer realm=\"oauth\", error=\"{error}\", error_description=\"{description}\""
        );
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

fn parse_params(query: Option<&str>, body: &[u8]) -> Params {
    let mut params = Params::new();
    let pairs =
        form_urlencoded::parse(query.unwrap_or("").as_bytes()).chain(form_urlencoded::parse(body));
    for (k, v) in pairs {
        // Like a servlet's getParameter, the first value of a repeated parameter wins.
        params
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    params
}

/// A parameter that is present and not empty.
fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// Records the request, applies any injected fault, and counts the body bytes sent.
async fn observe(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    let Some(control) = req.extensions().get::<Arc<ConnControl>>().cloned() else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path.starts_with("/admin/") || path == "/admin" {
        if !control.peer.ip().to_canonical().is_loopback() {
            return spring_error(StatusCode::FORBIDDEN, "Access Denied", &path);
        }
        return next.run(req).await;
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let record = state.record_request(method.as_str(), &path, &query, range);
    let target = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    let fault = Endpoint::of_path(&path).and_then(|e| state.faults().take(e, &target));
    log::debug!("{method} {path} fault={fault:?}");

    let response = match &fault {
        Some(FaultKind::Reset) => {
            log::info!("{method} {path}: resetting the connection (injected)");
            control.reset();
            return std::future::pending().await;
        }
        Some(FaultKind::Status {
            status,
            body,
            content_type,
        }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, body.clone()).into_response();
            if let Ok(value) = HeaderValue::from_str(content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        Some(FaultKind::Delay(delay)) => {
            tokio::time::sleep(*delay).await;
            next.run(req).await
        }
        Some(FaultKind::ServeInstead { path: instead }) => {
            log::info!("{method} {path}: serving {instead} instead (injected)");
            req.extensions_mut().insert(ServeInstead(instead.clone()));
            next.run(req).await
        }
        _ => next.run(req).await,
    };

    let status = response.status();
    record.status.store(status.as_u16(), Ordering::SeqCst);
    log::info!("{method} {path} -> {}", status.as_u16());
    let offset = response
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(content_range_start)
        .unwrap_or(0);
    let (parts, body) = response.into_parts();
    let body = FaultBody::new(
        body,
        fault.as_ref().and_then(BodyFault::of),
        offset,
        Arc::clone(&record.bytes_sent),
        control,
    );
    Response::from_parts(parts, Body::new(body))
}

fn content_range_start(value: &str) -> Option<u64> {
    let spec = value.strip_prefix("bytes ")?;
    let (first, _) = spec.split_once('-')?;
    first.parse().ok()
}

async fn not_found(req: Request) -> Response {
    spring_error(
        StatusCode::NOT_FOUND,
        "No message available",
        req.uri().path(),
    )
}

async fn token_get(State(state): State<Shared>, req: Request) -> Response {
    if !state.token_get_allowed() {
        let mut response = spring_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request method 'GET' not supported",
            "/oauth/token",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let params = parse_params(req.uri().query(), b"");
    token(&state, &params)
}

async fn token_post(State(state): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let params = parse_params(parts.uri.query(), &body);
    token(&state, &params)
}

fn token(state: &AppState, params: &Params) -> Response {
    let Some(client_id) = param(params, "client_id") else {
        return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", FULL_AUTH);
    };
    let secret = params.get("client_secret").map_or("", String::as_str);
    if state.catalog.client_secret_ok(client_id, secret) != Some(true) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Bad client credentials",
        );
    }
    let settings = &state.catalog.settings;
    let grant = match param(params, "grant_type") {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing grant_type",
            );
        }
        Some("password") => {
            let username = param(params, "username").unwrap_or("");
            let password = param(params, "password").unwrap_or("");
            if username.is_empty() || !state.catalog.user_ok(username, password) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad credentials");
            }
            state.tokens().password_grant(
                client_id,
                username,
                settings.expires_in,
                settings.refresh_expires_in,
            )
        }
        Some("refresh_token") => {
            let Some(refresh) = param(params, "refresh_token") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Missing refresh_token",
                );
            };
            let Some(grant) = state
                .tokens()
                .refresh_grant(client_id, refresh, settings.expires_in)
            else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    &format!("Invalid refresh token: {refresh}"),
                );
            };
            grant
        }
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            );
        }
    };
    let mut response = json_response(
        StatusCode::OK,
        &json!({
            "access_token": grant.access_token,
            "token_type": "bearer",
            "refresh_token": grant.refresh_token,
            "expires_in": grant.expires_in,
            "scope": "read write trust",
        }),
    );
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// Why a request's access token was refused.
#[derive(Debug)]
enum Unauthorized {
    Missing,
    Invalid(String),
    Expired(String),
}

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let (error, description) = match self {
            Unauthorized::Missing => ("unauthorized", FULL_AUTH.to_string()),
            Unauthorized::Invalid(token) => {
                ("invalid_token", format!("Invalid access token: {token}"))
            }
            Unauthorized::Expired(token) => {
                ("invalid_token", format!("Access token expired: {token}"))
            }
        };
        oauth_error(StatusCode::UNAUTHORIZED, error, &description)
    }
}

/// Checks the access token the way Spring's resource server filter does, before anything else.
fn authorize(state: &AppState, params: &Params) -> Result<(), Unauthorized> {
    let token = param(params, "access_token").ok_or(Unauthorized::Missing)?;
    state
        .tokens()
        .check(token)
        .map_err(|problem| match problem {
            TokenProblem::Invalid => Unauthorized::Invalid(token.to_string()),
            TokenProblem::Expired => Unauthorized::Expired(token.to_string()),
        })
}

/// The values of required parameters, or Spring MVC's answer naming the first one missing.
fn require<'a>(
    params: &'a Params,
    names: &[&'static str],
    path: &str,
) -> Result<Vec<&'a str>, Box<Response>> {
    names
        .iter()
        .map(|name| {
            param(params, name).ok_or_else(|| {
                Box::new(spring_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Required String parameter '{name}' is not present"),
                    path,
                ))
            })
        })
        .collect()
}

async fn download(State(state): State<Shared>, req: Request) -> Response {
    let params = parse_params(req.uri().query(), b"");
    if let Err(refusal) = authorize(&state, &params) {
        return refusal.into_response();
    }
    let values = match require(
        &params,
        &[
            "package_name",
            "version",
            "file_name",
            "language",
            "robot_version",
            "robot_id",
        ],
        "/file/download",
    ) {
        Ok(values) => values,
        Err(response) => return *response,
    };
    let [
        package,
        version,
        file_name,
        language,
        _robot_version,
        robot_id,
    ] = values[..]
    else {
        unreachable!("six names give six values");
    };
    let answer = |code: &str, data: String, id: String| {
        json_response(
            StatusCode::OK,
            &json!({"code": code, "data": data, "id": id}),
        )
    };
    match state
        .catalog
        .lookup(package, file_name, language, version, robot_id)
    {
        Lookup::NoSuchVersion => answer("102", String::new(), String::new()),
        Lookup::RobotNotAllowed => answer("103", String::new(), String::new()),
        Lookup::NoLanguage => answer("104", String::new(), String::new()),
        Lookup::Chain(chain) => {
            // A patch that vanished from disk is the server's own fault, which it reports as 500.
            let missing = chain.iter().any(|(_, path)| {
                state
                    .catalog
                    .patch_by_path(path)
                    .is_none_or(|p| !p.file.is_file())
            });
            if missing {
                log::error!("a patch file for {package}/{file_name} is missing on disk");
                return answer("500", String::new(), String::new());
            }
            let urls: Vec<String> = chain
                .iter()
                .map(|(_, path)| format!("{}{path}", state.base_url))
                .collect();
            let ids: Vec<&str> = chain.iter().map(|(id, _)| id.as_str()).collect();
            answer("100", urls.join(";"), ids.join(";"))
        }
    }
}

async fn callback(State(state): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let params = parse_params(parts.uri.query(), &body);
    if let Err(refusal) = authorize(&state, &params) {
        return refusal.into_response();
    }
    let values = match require(&params, &["id", "robot_id", "code"], "/file/callback") {
        Ok(values) => values,
        Err(response) => return *response,
    };
    let [id, robot_id, code] = values[..] else {
        unreachable!("three names give three values");
    };
    log::info!("callback: id {id} robot {robot_id} code {code}");
    state.record_callback(CallbackRecord {
        id: id.to_string(),
        robot_id: robot_id.to_string(),
        code: code.to_string(),
        time_ms: now_ms(),
    });
    if state.catalog.has_id(id) {
        json_response(
            StatusCode::OK,
            &json!({"code": "100", "data": "regisiter information"}),
        )
    } else {
        json_response(
            StatusCode::OK,
            &json!({"code": "102", "data": "no such update id"}),
        )
    }
}

/// The URL path of the file to answer a request under `/version/` with, set by a
/// [`FaultKind::ServeInstead`] fault.
#[derive(Debug, Clone)]
struct ServeInstead(String);

/// A patch or one of its sidecar files.
async fn patch(
    State(state): State<Shared>,
    method: Method,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let path = req.uri().path();
    let served_path = req
        .extensions()
        .get::<ServeInstead>()
        .map_or(path, |instead| instead.0.as_str());
    let info = match state.catalog.served(served_path) {
        Some(Served::Patch(info)) => info,
        Some(Served::Sidecar {
            bytes,
            content_type,
        }) => return sidecar(&method, bytes, content_type),
        None => return spring_error(StatusCode::NOT_FOUND, "No message available", path),
    };
    let mut file = match tokio::fs::File::open(&info.file).await {
        Ok(file) => file,
        Err(e) => {
            log::error!("cannot open patch {}: {e}", info.file.display());
            return spring_error(StatusCode::NOT_FOUND, "No message available", path);
        }
    };
    let len = match file.metadata().await {
        Ok(meta) => meta.len(),
        Err(e) => {
            log::error!("cannot stat patch {}: {e}", info.file.display());
            return spring_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read patch", path);
        }
    };
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == info.etag.as_bytes());
    let request = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if if_range_ok => range::parse(value, len),
        _ => RangeRequest::Full,
    };
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &info.etag)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let (status, start, count) = match request {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .header(header::CONTENT_LENGTH, 0)
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
    };
    let builder = builder.status(status).header(header::CONTENT_LENGTH, count);
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        if start > 0
            && let Err(e) = file.seek(SeekFrom::Start(start)).await
        {
            log::error!("cannot seek in patch {}: {e}", info.file.display());
            return spring_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read patch", path);
        }
        Body::from_stream(ReaderStream::with_capacity(file.take(count), 64 * 1024))
    };
    builder
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A small file served whole: signed metadata or its signature.
fn sidecar(method: &Method, bytes: &[u8], content_type: &'static str) -> Response {
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes.to_vec())
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn admin_callbacks(State(state): State<Shared>) -> Response {
    json_response(StatusCode::OK, &json!(state.callbacks()))
}

async fn admin_requests(State(state): State<Shared>) -> Response {
    json_response(StatusCode::OK, &json!(state.requests()))
}

/// A bad admin request, answered with 400 and the message.
#[derive(Debug)]
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        json_response(StatusCode::BAD_REQUEST, &json!({"error": self.0}))
    }
}

/// Parses an admin request's JSON body; `what` names it in the answer to a bad one.
fn admin_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|e| BadRequest(format!("bad {what}: {e}")))
}

fn ok() -> Response {
    json_response(StatusCode::OK, &json!({"ok": true}))
}

async fn admin_add_fault(State(state): State<Shared>, body: Bytes) -> Result<Response, BadRequest> {
    let fault: Fault = admin_body(&body, "fault")?;
    if let Err(e) = fault.check() {
        return Err(BadRequest(format!("bad fault: {e}")));
    }
    log::info!("injecting {fault:?}");
    state.faults().push(fault);
    Ok(ok())
}

async fn admin_clear_faults(State(state): State<Shared>) -> Response {
    state.faults().clear();
    ok()
}

#[derive(Debug, Deserialize)]
struct RevokeRequest {
    access_token: Option<String>,
}

async fn admin_revoke(State(state): State<Shared>, body: Bytes) -> Result<Response, BadRequest> {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeRequest { access_token: None }
    } else {
        admin_body(&body, "revoke request")?
    };
    Ok(match request.access_token {
        Some(token) => {
            let revoked = state.tokens().revoke(&token);
            json_response(StatusCode::OK, &json!({"ok": true, "revoked": revoked}))
        }
        None => {
            state.tokens().revoke_all();
            ok()
        }
    })
}

#[derive(Debug, Deserialize)]
struct TokenGetRequest {
    allowed: bool,
}

async fn admin_token_get(State(state): State<Shared>, body: Bytes) -> Result<Response, BadRequest> {
    let request: TokenGetRequest = admin_body(&body, "token-get request")?;
    state.set_token_get_allowed(request.allowed);
    Ok(ok())
}

#[derive(Debug, Deserialize)]
struct AdvanceRequest {
    seconds: u64,
}

async fn admin_advance_time(
    State(state): State<Shared>,
    body: Bytes,
) -> Result<Response, BadRequest> {
    let request: AdvanceRequest = admin_body(&body, "advance-time request")?;
    state.tokens().advance(Duration::from_secs(request.seconds));
    Ok(ok())
}
