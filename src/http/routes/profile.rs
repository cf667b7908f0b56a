//! Profiles and blocking, under `/api/instances/:id`: a contact's about text and
//! picture URL; this number's push name, about and picture; block, unblock and the
//! block list. People are phone numbers, `<digits>@s.whatsapp.net` or `<digits>@lid`.

use super::media::MediaUrl;
use super::table::Table;
use super::{guard, instance, json as json_body, parse, ready, required, R};
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::openapi::{doc, Body};
use crate::http::util::{self, ok};
use crate::http::Shared;
use actors::instance::ProfileOp;
use bytes::Bytes;
use serde::Deserialize;
use utoipa::ToSchema;

const ERRORS: &[&str] = &[
    "VALIDATION_ERROR",
    "INVALID_REQUEST",
    "FORBIDDEN",
    "SESSION_NOT_FOUND",
    "NOT_CONNECTED",
    "NOT_LOGGED_IN",
    "INVALID_PHONE",
    "SEND_FAILED",
    "INSTANCE_BUSY",
];

const PICTURE_ERRORS: &[&str] = &[
    "VALIDATION_ERROR",
    "INVALID_REQUEST",
    "FORBIDDEN",
    "SESSION_NOT_FOUND",
    "NOT_CONNECTED",
    "NOT_LOGGED_IN",
    "DOWNLOAD_FAILED",
    "FILE_TOO_LARGE",
    "SEND_FAILED",
    "INSTANCE_BUSY",
    "SERVER_BUSY",
];

pub(super) fn routes(api: &Shared) -> Table {
    let mut t = Table::default();
    declare!(
        t,
        api,
        at2,
        doc(
            "get",
            "/api/instances/{id}/contacts/{phone}/profile",
            "profile",
            "A contact's about text and profile picture URL",
            true,
            Body::None,
            ERRORS
        ),
        contact
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "post",
            "/api/instances/{id}/contacts/{phone}/block",
            "profile",
            "Block a contact",
            true,
            Body::None,
            ERRORS
        ),
        block
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "delete",
            "/api/instances/{id}/contacts/{phone}/block",
            "profile",
            "Unblock a contact",
            true,
            Body::None,
            ERRORS
        ),
        unblock
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "get",
            "/api/instances/{id}/blocklist",
            "profile",
            "The people this number blocked",
            true,
            Body::None,
            ERRORS
        ),
        blocklist
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "patch",
            "/api/instances/{id}/profile",
            "profile",
            "Set this number's push name and/or about text",
            true,
            Body::Json(crate::http::schema::of::<ProfileBody>()),
            ERRORS
        ),
        set_profile,
        json_body()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/profile/picture",
            "profile",
            "Set this number's profile picture from an image URL (JPEG)",
            true,
            Body::Json(crate::http::schema::of::<PictureBody>()),
            PICTURE_ERRORS
        ),
        set_picture,
        json_body()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "delete",
            "/api/instances/{id}/profile/picture",
            "profile",
            "Remove this number's profile picture",
            true,
            Body::None,
            ERRORS
        ),
        remove_picture
    );
    t
}

/// Profile fields to set (none: nothing changes).
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ProfileBody {
    /// The name shown to people who have not saved this number (1-25 characters).
    #[schema(pattern = r"\S", max_length = 25)]
    push_name: Option<String>,
    /// The about text (at most 139 characters).
    #[schema(max_length = 139)]
    about: Option<String>,
}

/// Where to fetch the picture (under the same SSRF policy and caps as media URLs).
#[derive(Deserialize, Default, ToSchema)]
struct PictureBody {
    #[schema(value_type = String, required = true, pattern = "^https?://")]
    url: Option<String>,
}

fn invalid(message: &str) -> ApiError {
    ApiError::bad_request("VALIDATION_ERROR", message)
}

/// A person from the path: a LID, a person JID or a phone number.
fn person(api: &Shared, raw: &str) -> Result<String, ApiError> {
    let raw = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    util::person(&raw, &api.config.whatsapp.default_country_code)
}

async fn run(api: &Shared, p: &Principal, id: &str, op: ProfileOp, done: &str) -> R {
    let row = instance(api, p, id).await?;
    let handle = ready(api, &row).await?;
    Ok(ok(done, handle.profile(op).await?))
}

/// `GET /api/instances/:id/contacts/:phone/profile`.
async fn contact(id: String, who: String, p: Principal, api: Shared) -> R {
    guard(&p, &id)?;
    let who = person(&api, &who)?;
    run(&api, &p, &id, ProfileOp::Contact(who), "Profile").await
}

/// `POST /api/instances/:id/contacts/:phone/block`.
async fn block(id: String, who: String, p: Principal, api: Shared) -> R {
    guard(&p, &id)?;
    let who = person(&api, &who)?;
    run(&api, &p, &id, ProfileOp::Block(who), "Blocked").await
}

/// `DELETE /api/instances/:id/contacts/:phone/block`.
async fn unblock(id: String, who: String, p: Principal, api: Shared) -> R {
    guard(&p, &id)?;
    let who = person(&api, &who)?;
    run(&api, &p, &id, ProfileOp::Unblock(who), "Unblocked").await
}

/// `GET /api/instances/:id/blocklist`.
async fn blocklist(id: String, p: Principal, api: Shared) -> R {
    run(&api, &p, &id, ProfileOp::Blocklist, "Block list").await
}

/// `PATCH /api/instances/:id/profile`.
async fn set_profile(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let b: ProfileBody = parse(&body)?;
    let name = match b.push_name.map(|n| n.trim().to_string()) {
        Some(n) if n.is_empty() || n.chars().count() > 25 => {
            return Err(invalid("pushName must be 1-25 characters"))
        }
        n => n,
    };
    let about = match b.about {
        Some(a) if a.chars().count() > 139 => {
            return Err(invalid("about must be at most 139 characters"))
        }
        a => a,
    };
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    let mut data = serde_json::json!({});
    if let Some(n) = name {
        data["pushName"] = handle.profile(ProfileOp::SetPushName(n)).await?["pushName"].take();
    }
    if let Some(a) = about {
        data["about"] = handle.profile(ProfileOp::SetAbout(a)).await?["about"].take();
    }
    let done = if data.as_object().is_some_and(|o| o.is_empty()) {
        "Nothing to change"
    } else {
        "Profile updated"
    };
    Ok(ok(done, data))
}

/// `POST /api/instances/:id/profile/picture`.
async fn set_picture(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let url = required(&parse::<PictureBody>(&body)?.url, "url")?;
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    let source = MediaUrl {
        media_url: Some(url),
        media_type: Some("image".into()),
        ..Default::default()
    };
    let image = super::media::url_media(&api, &source).await?;
    let bytes = image.bytes.to_vec();
    let done = handle.profile(ProfileOp::SetPicture(bytes)).await?;
    Ok(ok("Profile picture set", done))
}

/// `DELETE /api/instances/:id/profile/picture`.
async fn remove_picture(id: String, p: Principal, api: Shared) -> R {
    run(
        &api,
        &p,
        &id,
        ProfileOp::SetPicture(Vec::new()),
        "Profile picture removed",
    )
    .await
}
