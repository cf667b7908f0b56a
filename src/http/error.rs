//! The one error shape of the API and the rejection handler that produces it.
//!
//! Every failure, including warp's own rejections (unknown route, wrong method, body
//! too large, bad JSON), leaves as
//! `{"success": false, "message": ..., "error": {"code": ..., "details": ...}}`.
//! Internal causes are logged by whoever produced them and never put in a response.

use serde_json::json;
use std::convert::Infallible;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

/// An API error: status, stable code and a message safe to show to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: String,
    /// Seconds for a `Retry-After` header (rate limiting).
    pub retry_after: Option<u64>,
    /// The methods for an `Allow` header (405).
    pub allow: Option<String>,
}

impl ApiError {
    /// A new error; `details` defaults to the message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            status,
            code,
            details: message.clone(),
            message,
            retry_after: None,
            allow: None,
        }
    }

    /// 405 with the methods the path takes (`Allow`).
    pub fn method_not_allowed(allow: String) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("Method not allowed; this path takes {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A 500 that reveals nothing (the cause is logged where it happened).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "Internal server error",
        )
    }

    /// The JSON reply for this error.
    pub fn into_response(self) -> warp::reply::Response {
        let body = json!({
            "success": false,
            "message": self.message,
            "error": {"code": self.code, "details": self.details},
        });
        let mut r = warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(v) = self
            .allow
            .as_deref()
            .and_then(|a| warp::http::HeaderValue::from_str(a).ok())
        {
            r.headers_mut().insert(warp::http::header::ALLOW, v);
        }
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(warp::http::header::RETRY_AFTER, secs.into());
        }
        r
    }
}

impl warp::reject::Reject for ApiError {}

/// Turns any rejection into the JSON error envelope.
pub async fn recover(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    let e = if let Some(api) = err.find::<ApiError>() {
        api.clone()
    } else if err.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "Route not found")
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "Method not allowed",
        )
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "Request body too large",
        )
    } else if err
        .find::<warp::filters::body::BodyDeserializeError>()
        .is_some()
    {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "Request body is not valid JSON for this route",
        )
    } else if err
        .find::<warp::filters::ws::MissingConnectionUpgrade>()
        .is_some()
    {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "This route needs a WebSocket upgrade",
        )
    } else if err.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "Unsupported content type",
        )
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "Content-Length required",
        )
    } else if err.find::<warp::reject::MissingHeader>().is_some()
        || err.find::<warp::reject::InvalidHeader>().is_some()
        || err.find::<warp::reject::InvalidQuery>().is_some()
    {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "Malformed request",
        )
    } else if err.find::<warp::filters::cors::CorsForbidden>().is_some() {
        // A browser on a foreign origin: an ordinary refusal, not a server fault.
        tracing::debug!(rejection = ?err, "CORS request refused");
        ApiError::new(
            StatusCode::FORBIDDEN,
            "CORS_FORBIDDEN",
            "This origin, method or header is not allowed by the server's CORS settings",
        )
    } else {
        tracing::error!(rejection = ?err, "unhandled rejection");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "Internal server error",
        )
    };
    Ok(e.into_response())
}

/// An actor's domain error: its API code with the status API.md gives it.
impl From<actors::instance::InstanceError> for ApiError {
    fn from(e: actors::instance::InstanceError) -> Self {
        use actors::instance::InstanceError as E;
        use actors::lifecycle::LifecycleError as L;
        let status = match &e {
            E::VerificationFailed | E::SendFailed | E::UploadFailed | E::Storage => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            E::Unavailable => return Self::internal(),
            E::Lifecycle(L::QrInProgress) | E::Lifecycle(L::AlreadyConnected) => {
                StatusCode::CONFLICT
            }
            E::Lifecycle(L::NoQrSession) => StatusCode::NOT_FOUND,
            E::Busy => StatusCode::SERVICE_UNAVAILABLE,
            E::MediaExpired => StatusCode::GONE,
            E::MediaUnavailable => StatusCode::NOT_FOUND,
            E::MediaDownloadFailed | E::PairCodeFailed | E::GroupRequestFailed => {
                StatusCode::BAD_GATEWAY
            }
            _ => StatusCode::BAD_REQUEST,
        };
        let message = match &e {
            E::Storage => "Internal server error".to_string(),
            other => capitalize(&other.to_string()),
        };
        let mut err = ApiError::new(status, e.code(), message);
        if matches!(e, E::Busy) {
            err.retry_after = Some(1);
        }
        err
    }
}

/// A failed database call: 503 `DATABASE_UNAVAILABLE` (the cause is logged).
impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        tracing::error!(error = %e, "database call failed");
        crate::metrics::db_error();
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            "The database is unavailable",
        )
    }
}

impl From<crate::runtime::RuntimeError> for ApiError {
    fn from(e: crate::runtime::RuntimeError) -> Self {
        use crate::runtime::RuntimeError as E;
        match e {
            E::Db(e) => e.into(),
            E::Instance(e) => e.into(),
            E::StillConnected => ApiError::bad_request(
                "INSTANCE_STILL_CONNECTED",
                "Log the instance out before deleting it",
            ),
        }
    }
}

/// A media error: its API code (`FILE_TOO_LARGE`, `SERVER_BUSY`, a fetch's own, ...).
impl From<crate::media::MediaError> for ApiError {
    fn from(e: crate::media::MediaError) -> Self {
        use crate::media::MediaError as M;
        let message = capitalize(&e.to_string());
        match e {
            M::TooLarge { .. } => ApiError::bad_request("FILE_TOO_LARGE", message),
            M::Invalid(_) => ApiError::bad_request("VALIDATION_ERROR", message),
            M::Unreadable => ApiError::bad_request("INVALID_REQUEST", message),
            M::FileRequired(_) => ApiError::bad_request("FILE_REQUIRED", message),
            M::Busy => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "SERVER_BUSY", message);
                e.retry_after = Some(5);
                e
            }
            M::Fetch(f) => ApiError::bad_request(f.api_code(), message),
        }
    }
}

/// `s` with its first letter upper-cased (error texts start lower-case).
pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
