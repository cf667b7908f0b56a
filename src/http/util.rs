//! Small pure helpers of the API: phone numbers, group JIDs, the success envelope.

use super::error::ApiError;
use serde_json::{json, Value};
use warp::http::StatusCode;

/// `{"success": true, "message": ..., "data": ...}`.
pub fn ok(message: &str, data: Value) -> warp::reply::Response {
    use warp::Reply;
    warp::reply::json(&json!({"success": true, "message": message, "data": data})).into_response()
}

/// Normalises a phone number as SUDEVWA does: formatting characters (`+`, spaces,
/// `-`, `.`, parentheses) are dropped, a leading `0` becomes `country_code`, and the
/// result must be 10 to 15 digits.
pub fn normalize_phone(raw: &str, country_code: &str) -> Result<String, ApiError> {
    let mut digits = String::with_capacity(raw.len());
    for c in raw.trim().chars() {
        match c {
            '0'..='9' => digits.push(c),
            '+' | ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(invalid_phone()),
        }
    }
    if let Some(rest) = digits.strip_prefix('0') {
        digits = format!("{country_code}{rest}");
    }
    if digits.len() < 10 || digits.len() > 15 {
        return Err(invalid_phone());
    }
    Ok(digits)
}

fn invalid_phone() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "INVALID_PHONE",
        "Invalid phone number: digits only, at least 10 (country code included)",
    )
}

/// Is `jid` a group JID (`<digits>@g.us` or `<digits>-<digits>@g.us`)?
/// A person as the actors take them: `<digits>@lid` for a LID, else the digits of a
/// phone number (`<digits>@s.whatsapp.net` or a number in any usual notation).
pub fn person(raw: &str, country_code: &str) -> Result<String, ApiError> {
    if let Some(lid) = lid_jid(raw) {
        return Ok(lid);
    }
    if let Some(digits) = pn_jid_digits(raw) {
        return Ok(digits);
    }
    normalize_phone(raw, country_code)
}

/// The digits of `<10-15 digits>@s.whatsapp.net` (trimmed), if `raw` is a person's
/// phone-number JID.
pub fn pn_jid_digits(raw: &str) -> Option<String> {
    let user = raw.trim().strip_suffix("@s.whatsapp.net")?;
    ((10..=15).contains(&user.len()) && user.bytes().all(|b| b.is_ascii_digit()))
        .then(|| user.to_string())
}

/// `<digits>@lid` (trimmed), if `raw` is a LID JID.
pub fn lid_jid(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let user = raw.strip_suffix("@lid")?;
    (!user.is_empty() && user.len() <= 20 && user.bytes().all(|b| b.is_ascii_digit()))
        .then(|| raw.to_string())
}

pub fn is_group_jid(jid: &str) -> bool {
    let Some(user) = jid.strip_suffix("@g.us") else {
        return false;
    };
    let mut parts = user.split('-');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let first = parts.next();
    match (first, parts.next(), parts.next()) {
        (f, None, None) => ok(f),
        (f, s, None) => ok(f) && ok(s),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones() {
        assert_eq!(
            normalize_phone("081234567890", "62").unwrap(),
            "6281234567890"
        );
        assert_eq!(
            normalize_phone("+1 (555) 010-0000", "62").unwrap(),
            "15550100000"
        );
        assert!(normalize_phone("12345", "62").is_err());
        assert!(normalize_phone("1234567890a", "62").is_err());
        assert!(normalize_phone("1234567890123456", "62").is_err());
        assert_eq!(normalize_phone("1234567890", "62").unwrap(), "1234567890");
    }

    #[test]
    fn groups() {
        assert!(is_group_jid("120363021234567890@g.us"));
        assert!(is_group_jid("6281-1600000000@g.us"));
        assert!(!is_group_jid("abc@g.us"));
        assert!(!is_group_jid("123@s.whatsapp.net"));
        assert!(!is_group_jid("1-2-3@g.us"));
        assert!(!is_group_jid("@g.us"));
    }
}
