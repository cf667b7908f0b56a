//! Schemas of the API's bodies, generated from the handlers' own types.
//!
//! Each request body type derives `utoipa::ToSchema`, its fields carrying the rules the
//! server enforces (patterns, lengths, formats, which fields are required) as attributes;
//! the reply envelopes ([`Success`], [`Failure`]) are the types the server serialises.
//! utoipa writes OpenAPI 3.1 schemas; [`to_30`] turns them into the 3.0 dialect of the
//! served document and fills in the phone pattern, which depends on the configured
//! default country code ([`PHONE`] marks where).

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// A body type's schema.
pub type SchemaFn = fn() -> RefOr<Schema>;

/// The schema of `T`, as a [`SchemaFn`].
pub const fn of<T: PartialSchema>() -> SchemaFn {
    T::schema
}

/// Stands for the phone pattern in a `pattern` attribute (see [`phone_pattern`]).
/// The other rules are written where the fields are: a group JID
/// `^[0-9]+(-[0-9]+)?@g\.us$`, a required text `\S` (one non-blank character), a media
/// type `image|video|audio|document|file|voice|ptt|sticker` (any case) or blank, a URL `^https?://`.
pub const PHONE: &str = "{phone}";

/// Stands for a recipient: a phone number, `<10-15 digits>@s.whatsapp.net`,
/// `<digits>@lid` or a group JID.
pub const RECIPIENT: &str = "{recipient}";

/// Stands for a person: a phone number, `<10-15 digits>@s.whatsapp.net` or
/// `<digits>@lid`.
pub const PERSON: &str = "{person}";

/// The JID forms a person may be given in.
const PERSON_JIDS: &str = r"^[0-9]{10,15}@s\.whatsapp\.net$|^[0-9]{1,20}@lid$";

/// A list of people (mentions): at most 256.
pub fn people() -> Schema {
    ArrayBuilder::new()
        .items(string(PERSON))
        .max_items(Some(256))
        .into()
}

/// A list of at least one person: 1-256.
pub fn some_people() -> Schema {
    ArrayBuilder::new()
        .items(string(PERSON))
        .min_items(Some(1))
        .max_items(Some(256))
        .into()
}

/// Poll options: 2-12 distinct non-blank texts.
pub fn poll_options() -> Schema {
    ArrayBuilder::new()
        .items(string(r"\S"))
        .min_items(Some(2))
        .max_items(Some(12))
        .unique_items(true)
        .into()
}

/// The pattern of a phone number when the default country code has `cc_len` digits:
/// digits with optional `+ -.()` and spaces, 10-15 digits, or a leading `0` and as many
/// digits as make 10-15 once the `0` becomes the country code.
pub fn phone_pattern(cc_len: usize) -> String {
    let sep = r"[ +\-.()]*";
    let (lo, hi) = (
        10usize.saturating_sub(cc_len),
        15usize.saturating_sub(cc_len),
    );
    format!(r"^{sep}(?:[1-9]{sep}(?:[0-9]{sep}){{9,14}}|0{sep}(?:[0-9]{sep}){{{lo},{hi}}})$")
}

fn string(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
}

/// A webhook URL the SSRF policy allows; blank turns the webhook off.
pub fn webhook_url() -> Schema {
    AnyOfBuilder::new()
        .item(string(r"^\s*$"))
        .item(
            string("^https?://").format(Some(utoipa::openapi::SchemaFormat::Custom("uri".into()))),
        )
        .description(Some(
            "http(s) URL the SSRF policy allows; empty turns the webhook off",
        ))
        .into()
}

/// A webhook secret: 16-256 characters, or blank to have one generated.
pub fn secret() -> Schema {
    AnyOfBuilder::new()
        .item(string(r"^\s*$"))
        .item(string(r"^\s*\S.{14,254}\S\s*$"))
        .description(Some("16-256 characters; empty or absent: one is generated"))
        .into()
}

/// Event names a webhook takes: `*` or known names, at least one.
pub fn events() -> Schema {
    use crate::store::journal::EVENT_NAMES;
    let names: Vec<&str> = ["*"].iter().chain(EVENT_NAMES).copied().collect();
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(names)),
        )
        .min_items(Some(1))
        .into()
}

/// Every successful JSON answer.
#[derive(Serialize, ToSchema)]
pub struct Success {
    pub success: bool,
    pub message: String,
    /// What the route answers with.
    #[schema(value_type = Object, required = false)]
    pub data: Value,
}

/// Every failure.
#[derive(Serialize, ToSchema)]
pub struct Failure {
    pub success: bool,
    pub message: String,
    #[schema(inline)]
    pub error: FailureDetail,
}

/// The stable code and the details of a failure.
#[derive(Serialize, ToSchema)]
pub struct FailureDetail {
    pub code: String,
    pub details: String,
}

/// `schema` as JSON in the OpenAPI 3.0 dialect, with the phone pattern for `cc_len`.
pub fn json_30(schema: RefOr<Schema>, cc_len: usize) -> Value {
    let mut v = serde_json::to_value(schema).unwrap_or(Value::Null);
    to_30(&mut v, &phone_pattern(cc_len));
    v
}

/// Rewrites a 3.1 schema for 3.0: `type: [T, "null"]` and `oneOf`/`anyOf` with a
/// `null` branch become `nullable`; properties a body may leave out take `null` (the
/// server reads it as absent); [`PHONE`] becomes `phone`.
pub fn to_30(v: &mut Value, phone: &str) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get("type").cloned() {
                let rest: Vec<Value> = types.into_iter().filter(|t| t != "null").collect();
                match rest.as_slice() {
                    [one] => {
                        map.insert("type".into(), one.clone());
                    }
                    _ => {
                        map.remove("type");
                    }
                }
            }
            for key in ["oneOf", "anyOf"] {
                let Some(Value::Array(branches)) = map.get(key).cloned() else {
                    continue;
                };
                let rest: Vec<Value> = branches
                    .into_iter()
                    .filter(|b| b.get("type") != Some(&Value::from("null")))
                    .collect();
                if rest.len() == 1 {
                    map.remove(key);
                    if let Value::Object(only) = &rest[0] {
                        for (k, x) in only {
                            map.entry(k.clone()).or_insert_with(|| x.clone());
                        }
                    }
                } else {
                    map.insert(key.into(), Value::Array(rest));
                }
            }
            match map.get("pattern").and_then(Value::as_str) {
                Some(PHONE) => {
                    map.insert("pattern".into(), Value::from(phone));
                }
                Some(PERSON) => {
                    map.insert("pattern".into(), format!("{phone}|{PERSON_JIDS}").into());
                }
                Some(RECIPIENT) => {
                    let group = r"^[0-9]+(-[0-9]+)?@g\.us$";
                    let all = format!("{phone}|{PERSON_JIDS}|{group}");
                    map.insert("pattern".into(), all.into());
                }
                _ => {}
            }
            map.remove("$schema");
            map.remove("default");
            let required = map_required(map.get("required"));
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for (name, p) in props.iter_mut() {
                    to_30(p, phone);
                    let binary = p.get("format") == Some(&Value::from("binary"));
                    if !required.contains(name) && !binary {
                        p["nullable"] = Value::Bool(true);
                    }
                }
            }
            for (k, x) in map.iter_mut() {
                if k != "properties" {
                    to_30(x, phone);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| to_30(x, phone)),
        _ => {}
    }
}

fn map_required(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
