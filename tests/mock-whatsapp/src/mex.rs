//! MEX, WhatsApp's GraphQL over an iq: `<iq xmlns="w:mex" type="get">` with
//! `<query query_id="…">{"variables":{…}}</query>`, answered with
//! `<result>{"data":{…}}</result>` or `{"errors":[…]}`. The persisted-query ids are the
//! ones the client sends (`wacore/src/iq/mex_operations.rs`); the answer parser is
//! `MexQuerySpec::parse_response` in `wacore/src/iq/mex.rs` (an error with
//! `is_summary` or an `error_code` is fatal to the call). Unknown queries get a
//! GraphQL error, not silence.

use crate::conn::{attr, iq_error, iq_result};
use crate::Shared;
use serde_json::{json, Value};
use whatsapp_rust::wacore::iq::mex_operations as ops;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Node, NodeContent};

/// A query's `data`, or an error code and message.
pub(crate) type MexResult = Result<Value, (i32, String)>;

fn reply(id: &str, payload: Value) -> Node {
    iq_result(
        id,
        vec![NodeBuilder::new("result")
            .bytes(payload.to_string().into_bytes())
            .build()],
    )
}

/// Answers a `w:mex` query of the account `me` (phone, device).
pub(crate) fn query(shared: &Shared, me: Option<&(String, u32)>, node: &Node, id: &str) -> Node {
    let Some((phone, _)) = me else {
        return iq_error(id, "401", "not-authorized");
    };
    let Some(query) = node.get_optional_child("query") else {
        return iq_error(id, "400", "bad-request");
    };
    let doc = attr(query, "query_id").unwrap_or_default();
    let body: Value = match &query.content {
        Some(NodeContent::Bytes(b)) => serde_json::from_slice(b).unwrap_or(Value::Null),
        Some(NodeContent::String(s)) => serde_json::from_str(s).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let vars = &body["variables"];
    let mut reg = shared.registry.lock().expect("registry lock");
    let reg = &mut *reg;
    use crate::newsletters as nl;
    let data = match doc.as_str() {
        ops::create_newsletter::DOC_ID => nl::create(reg, phone, vars),
        ops::fetch_newsletter::DOC_ID => {
            Ok(json!({"xwa2_newsletter": nl::fetch(reg, phone, vars)}))
        }
        ops::fetch_all_newsletters_metadata::DOC_ID => {
            Ok(json!({"xwa2_newsletter_subscribed": nl::subscribed(reg, phone)}))
        }
        ops::join_newsletter::DOC_ID => nl::follow(reg, phone, vars, true),
        ops::leave_newsletter::DOC_ID => nl::follow(reg, phone, vars, false),
        ops::update_newsletter::DOC_ID => nl::update(reg, phone, vars),
        ops::update_newsletter_user_setting::DOC_ID => nl::setting(reg, phone, vars),
        ops::fetch_all_subgroups::DOC_ID => {
            crate::communities::subgroups(reg, phone, vars["group_id"].as_str(), false)
        }
        ops::query_subgroup_participant_count::DOC_ID => {
            crate::communities::subgroups(reg, phone, vars["input"]["group_jid"].as_str(), true)
        }
        _ => Err((400, format!("unknown query (doc_id {doc})"))),
    };
    match data {
        Ok(data) => reply(id, json!({ "data": data })),
        Err((code, message)) => reply(
            id,
            json!({"errors": [{"message": message,
                "extensions": {"error_code": code, "is_summary": true, "severity": "CRITICAL"}}]}),
        ),
    }
}
