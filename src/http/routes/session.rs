//! Signing in: `POST /login-jwt` (username and password → JWT) and
//! `GET /api/validate`.

use super::table::{at0, Table};
use super::{json, parse, required, R};
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::openapi::{doc, Body};
use crate::http::schema;
use crate::http::{client_addr, respond, with_api, Shared};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

pub(super) fn routes(api: &Shared) -> Table {
    let mut t = Table::default();
    let login = doc(
        "post",
        "/login-jwt",
        "auth",
        "Exchange the login credentials for an admin JWT (public)",
        false,
        Body::Json(schema::of::<LoginBody>()),
        &["VALIDATION_ERROR", "INVALID_CREDENTIALS", "RATE_LIMITED"],
    );
    let filter = at0(&login)
        .and(json())
        .and(client_addr(api.clone()))
        .and(with_api(api.clone()))
        .then(login_jwt)
        .map(respond)
        .boxed();
    t.add(login, filter);
    declare!(
        t,
        api,
        at0,
        doc(
            "get",
            "/api/validate",
            "auth",
            "Check a token",
            true,
            Body::None,
            &[]
        ),
        validate
    );
    t
}

/// The login credentials.
#[derive(Deserialize, Default, ToSchema)]
struct LoginBody {
    #[schema(value_type = String, required = true, pattern = r"\S")]
    username: Option<String>,
    #[schema(value_type = String, required = true, min_length = 1)]
    password: Option<String>,
}

/// `POST /login-jwt`.
async fn login_jwt(body: Bytes, ip: std::net::IpAddr, api: Shared) -> R {
    api.auth_failures
        .peek(&ip)
        .map_err(crate::http::auth_throttled)?;
    let b: LoginBody = parse(&body)?;
    let username = required(&b.username, "username")?;
    let password = b.password.unwrap_or_default();
    if password.is_empty() {
        return Err(ApiError::bad_request(
            "VALIDATION_ERROR",
            "password is required",
        ));
    }
    account_not_throttled(&api, &username, ip)?;
    match api.auth.login(&username, &password).await {
        Some(token) => {
            api.login_backoff.succeeded(&username);
            Ok(logged_in(&api, token))
        }
        None => Err(login_failed(&api, &username, ip)),
    }
}

/// SUDEVWA's login answer: the token at the top level and in `data`.
fn logged_in(api: &Shared, token: String) -> Response {
    let data = json!({"token": token, "expires_in": api.config.auth.jwt_ttl.as_secs()});
    warp::reply::json(&json!({
        "success": true, "message": "Login successful", "token": token, "data": data,
    }))
    .into_response()
}

/// Per account, from any address: a spread-out guess at one password waits too.
fn account_not_throttled(
    api: &Shared,
    username: &str,
    ip: std::net::IpAddr,
) -> Result<(), ApiError> {
    api.login_backoff.check(username).map_err(|retry| {
        // Still a guess from this address: it counts against the address too.
        let _ = api.auth_failures.check(&ip);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "Too many failed logins for this account; try again later",
        );
        e.retry_after = Some(retry);
        e
    })
}

/// A wrong password: counted per address, and per account for the login user.
fn login_failed(api: &Shared, username: &str, ip: std::net::IpAddr) -> ApiError {
    let _ = api.auth_failures.check(&ip);
    if api.auth.is_login_user(username) {
        api.login_backoff.failed(username);
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
        "Invalid username or password",
    )
}

/// `GET /api/validate`.
async fn validate(p: Principal, _api: Shared) -> R {
    let username = p.username();
    let instance_id = match &p {
        Principal::Instance { instance_id } => Some(instance_id.clone()),
        Principal::Admin { .. } => None,
    };
    Ok(warp::reply::json(&json!({
        "success": true,
        "message": "Token is valid",
        "username": username,
        "data": {"username": username, "admin": p.is_admin(), "instanceId": instance_id},
    }))
    .into_response())
}
