//! Group listings: `GET /api/groups/:id` and `GET /api/groups/by-number/:phone`
//! (group sends run the one send path in `send.rs`); and group management under
//! `/api/instances/:id/groups`: create, info, participants, invite link (get, revoke),
//! join by link, leave, settings.

use super::table::Table;
use super::{by_number, guard, instance, json as json_body, parse, ready, required, R};
use crate::http::auth::Principal;
use crate::http::error::ApiError;
use crate::http::openapi::{doc, Body, BY_NUMBER, GROUP_ERRORS};
use crate::http::util::ok;
use crate::http::Shared;
use crate::runtime::InstanceHandle;
use actors::instance::{GroupOp, GroupSettings, ParticipantAction};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

pub(super) fn routes(api: &Shared) -> Table {
    let mut t = Table::default();
    declare!(
        t,
        api,
        at1,
        doc(
            "get",
            "/api/groups/by-number/{phone}",
            "groups",
            "Groups, by sender number",
            true,
            Body::None,
            BY_NUMBER
        ),
        groups_by_number
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "get",
            "/api/groups/{id}",
            "groups",
            "Groups the instance is in",
            true,
            Body::None,
            GROUP_ERRORS
        ),
        groups
    );
    let errors: &'static [&'static str] = &[
        "VALIDATION_ERROR",
        "INVALID_REQUEST",
        "FORBIDDEN",
        "SESSION_NOT_FOUND",
        "NOT_CONNECTED",
        "NOT_LOGGED_IN",
        "INVALID_PHONE",
        "INVALID_GROUP_JID",
        "INVALID_GROUP_SETTINGS",
        "GROUP_REQUEST_FAILED",
        "INSTANCE_BUSY",
    ];
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/groups",
            "groups",
            "Create a group",
            true,
            Body::Json(crate::http::schema::of::<CreateBody>()),
            errors
        ),
        create,
        json_body()
    );
    declare!(
        t,
        api,
        at1,
        doc(
            "post",
            "/api/instances/{id}/join-group",
            "groups",
            "Join a group by invite link or code",
            true,
            Body::Json(crate::http::schema::of::<JoinBody>()),
            errors
        ),
        join,
        json_body()
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "get",
            "/api/instances/{id}/groups/{groupJid}",
            "groups",
            "A group's info: name, description, settings, participants with roles",
            true,
            Body::None,
            errors
        ),
        info
    );
    declare!(t, api, at2, doc("patch", "/api/instances/{id}/groups/{groupJid}", "groups",
        "Change a group's name, description, announce (only admins send) or locked (only admins edit)",
        true, Body::Json(crate::http::schema::of::<SettingsBody>()), errors), settings, json_body());
    declare!(
        t,
        api,
        at2,
        doc(
            "post",
            "/api/instances/{id}/groups/{groupJid}/participants",
            "groups",
            "Add, remove, promote or demote participants",
            true,
            Body::Json(crate::http::schema::of::<ParticipantsBody>()),
            errors
        ),
        participants,
        json_body()
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "get",
            "/api/instances/{id}/groups/{groupJid}/invite",
            "groups",
            "The group's invite link",
            true,
            Body::None,
            errors
        ),
        invite
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "delete",
            "/api/instances/{id}/groups/{groupJid}/invite",
            "groups",
            "Revoke the invite link; answers the new one",
            true,
            Body::None,
            errors
        ),
        revoke_invite
    );
    declare!(
        t,
        api,
        at2,
        doc(
            "post",
            "/api/instances/{id}/groups/{groupJid}/leave",
            "groups",
            "Leave the group",
            true,
            Body::None,
            errors
        ),
        leave
    );
    t
}

/// A new group.
#[derive(Deserialize, Default, ToSchema)]
struct CreateBody {
    /// The group's name (1-100 characters).
    #[schema(value_type = String, required = true, pattern = r"\S", max_length = 100)]
    name: Option<String>,
    /// Members besides this number: phone numbers or person JIDs.
    #[schema(schema_with = crate::http::schema::people)]
    participants: Option<Vec<String>>,
}

/// An invite link (`https://chat.whatsapp.com/<code>`) or its code.
#[derive(Deserialize, Default, ToSchema)]
struct JoinBody {
    #[schema(value_type = String, required = true, pattern = r"^\S+$")]
    invite: Option<String>,
}

/// Settings to change; each only when present (none: the group as it is).
#[derive(Deserialize, Default, ToSchema)]
struct SettingsBody {
    #[schema(pattern = r"\S", max_length = 100)]
    name: Option<String>,
    /// The description; `""` deletes it.
    #[schema(max_length = 2048)]
    description: Option<String>,
    /// Only admins may send messages.
    announce: Option<bool>,
    /// Only admins may edit the group's info.
    locked: Option<bool>,
}

/// A participant change.
#[derive(Deserialize, Default, ToSchema)]
struct ParticipantsBody {
    /// `add`, `remove`, `promote` or `demote`.
    #[schema(value_type = String, required = true, pattern = "^(add|remove|promote|demote)$")]
    action: Option<String>,
    /// Phone numbers or person JIDs (1-256).
    #[schema(schema_with = crate::http::schema::some_people, required = true)]
    participants: Option<Vec<String>>,
}

fn invalid(message: &str) -> ApiError {
    ApiError::bad_request("VALIDATION_ERROR", message)
}

/// The group JID of a path (percent-decoded, checked).
fn group_of(raw: &str) -> Result<String, ApiError> {
    let jid = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .trim()
        .to_string();
    if crate::http::util::is_group_jid(&jid) {
        Ok(jid)
    } else {
        Err(actors::instance::InstanceError::InvalidGroupJid.into())
    }
}

/// People as the actor takes them: digits, `<digits>@s.whatsapp.net` or `<digits>@lid`.
fn people_of(api: &Shared, list: &[String]) -> Result<Vec<String>, ApiError> {
    use crate::http::util;
    if list.len() > 256 {
        return Err(invalid("at most 256 participants"));
    }
    let cc = &api.config.whatsapp.default_country_code;
    list.iter().map(|p| util::person(p, cc)).collect()
}

/// Runs `op` on a ready instance.
async fn run(api: &Shared, p: &Principal, id: &str, op: GroupOp, done: &str) -> R {
    let row = instance(api, p, id).await?;
    let handle = ready(api, &row).await?;
    Ok(ok(done, handle.group(op).await?))
}

/// `POST /api/instances/:id/groups`.
async fn create(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let b: CreateBody = parse(&body)?;
    let name = required(&b.name, "name")?;
    let participants = people_of(&api, &b.participants.unwrap_or_default())?;
    run(
        &api,
        &p,
        &id,
        GroupOp::Create { name, participants },
        "Group created",
    )
    .await
}

/// `POST /api/instances/:id/join-group`.
async fn join(id: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let invite = required(&parse::<JoinBody>(&body)?.invite, "invite")?;
    run(&api, &p, &id, GroupOp::Join(invite), "Joined").await
}

/// `GET /api/instances/:id/groups/:groupJid`.
async fn info(id: String, group: String, p: Principal, api: Shared) -> R {
    guard(&p, &id)?;
    let group = group_of(&group)?;
    run(&api, &p, &id, GroupOp::Info(group), "Group").await
}

/// `PATCH /api/instances/:id/groups/:groupJid`.
async fn settings(id: String, group: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let group = group_of(&group)?;
    let b: SettingsBody = parse(&body)?;
    let settings = GroupSettings {
        subject: match b.name {
            Some(n) if n.trim().is_empty() => return Err(invalid("name must not be blank")),
            n => n.map(|n| n.trim().to_string()),
        },
        description: b
            .description
            .map(|d| Some(d).filter(|d| !d.trim().is_empty())),
        announce: b.announce,
        locked: b.locked,
    };
    // Nothing to change: the group as it is.
    let op = if settings == GroupSettings::default() {
        GroupOp::Info(group)
    } else {
        GroupOp::Settings { group, settings }
    };
    run(&api, &p, &id, op, "Group updated").await
}

/// `POST /api/instances/:id/groups/:groupJid/participants`.
async fn participants(id: String, group: String, p: Principal, body: Bytes, api: Shared) -> R {
    guard(&p, &id)?;
    let group = group_of(&group)?;
    let b: ParticipantsBody = parse(&body)?;
    let action = match required(&b.action, "action")?.as_str() {
        "add" => ParticipantAction::Add,
        "remove" => ParticipantAction::Remove,
        "promote" => ParticipantAction::Promote,
        "demote" => ParticipantAction::Demote,
        _ => return Err(invalid("action must be add, remove, promote or demote")),
    };
    let participants = people_of(&api, &b.participants.unwrap_or_default())?;
    if participants.is_empty() {
        return Err(invalid("participants must list at least one person"));
    }
    let op = GroupOp::Participants {
        group,
        action,
        participants,
    };
    run(&api, &p, &id, op, "Participants changed").await
}

/// `GET /api/instances/:id/groups/:groupJid/invite`.
async fn invite(id: String, group: String, p: Principal, api: Shared) -> R {
    guard(&p, &id)?;
    let group = group_of(&group)?;
    let op = GroupOp::InviteLink {
        group,
        reset: false,
    };
    run(&api, &p, &id, op, "Invite link").await
}

/// `DELETE /api/instances/:id/groups/:groupJid/invite`.
async fn revoke_invite(id: String, group: String, p: Principal, api: Shared) -> R {
    guard(&p, &id)?;
    let group = group_of(&group)?;
    let op = GroupOp::InviteLink { group, reset: true };
    run(
        &api,
        &p,
        &id,
        op,
        "Invite link revoked; this is the new one",
    )
    .await
}

/// `POST /api/instances/:id/groups/:groupJid/leave`.
async fn leave(id: String, group: String, p: Principal, api: Shared) -> R {
    guard(&p, &id)?;
    let group = group_of(&group)?;
    run(&api, &p, &id, GroupOp::Leave(group), "Left the group").await
}

async fn list(handle: &InstanceHandle) -> Result<Value, ApiError> {
    let groups = handle.list_groups().await?;
    Ok(json!({"total": groups.len(), "groups": groups}))
}

/// `GET /api/groups/:id`.
async fn groups(id: String, p: Principal, api: Shared) -> R {
    let row = instance(&api, &p, &id).await?;
    let handle = ready(&api, &row).await?;
    Ok(ok("Groups", list(&handle).await?))
}

/// `GET /api/groups/by-number/:phone`.
async fn groups_by_number(phone: String, p: Principal, api: Shared) -> R {
    let (row, handle) = by_number(&api, &p, &phone).await?;
    let mut v = list(&handle).await?;
    v["from"] = json!(row.phone);
    v["instanceId"] = json!(row.id);
    Ok(ok("Groups", v))
}
