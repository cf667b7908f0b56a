//! The message log, the event log and idempotent sends over HTTP: paging and filters
//! of `GET /api/instances/:id/messages`, one message with its timeline, `events?after=`
//! returning exactly what came after a cursor, the webhook `events` filter, and
//! `Idempotency-Key` (concurrent repeats, a different body, a restart).

mod common;

use common::{code, TestServer, DEADLINE};
use mock_whatsapp::contact::Contact;
use mock_whatsapp::MockNetwork;
use serde_json::{json, Value};
use std::time::Duration;

async fn get(srv: &TestServer, token: &str, path: &str) -> (u16, Value) {
    srv.call("GET", path, Some(token), None).await
}

/// A contact that is ready to send. Contacts are added before the instance pairs: a
/// contact's client reconnects once right after its own pairing, and a message it
/// sends in that gap is lost on the contact's side (it never reaches the network).
async fn contact(net: &MockNetwork, phone: &str, name: &str) -> Contact {
    let c = net.add_contact(phone, name).await.unwrap();
    c.client.wait_for_connected(DEADLINE).await.unwrap();
    c
}

/// Waits for an event in the instance's event log whose `data` `pred` accepts.
async fn wait_event(
    srv: &TestServer,
    token: &str,
    id: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (s, v) = get(
            srv,
            token,
            &format!("/api/instances/{id}/events?limit=1000"),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        if let Some(e) = v["data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| pred(&e["data"]))
        {
            return e["data"].clone();
        }
        assert!(tokio::time::Instant::now() < until, "no such event: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the instance's log holds `n` incoming messages.
async fn wait_logged(srv: &TestServer, token: &str, id: &str, n: usize) {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (s, v) = get(
            srv,
            token,
            &format!("/api/instances/{id}/messages?direction=in&limit=500"),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        if v["data"]["messages"].as_array().unwrap().len() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "log never reached {n}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_log_pages_filters_and_shows_timelines() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "msglog", &[]).await;
    let mut kiki = contact(&net, "6281600000002", "Kiki").await;
    let lulu = contact(&net, "6281600000003", "Lulu").await;
    let (id, token) = srv.paired_instance(&net, "6281600000001").await;
    let mut sent_by_kiki = Vec::new();
    for i in 0..5 {
        sent_by_kiki.push(
            kiki.send_text("6281600000001", &format!("k{i}"))
                .await
                .unwrap(),
        );
    }
    for i in 0..3 {
        lulu.send_text("6281600000001", &format!("l{i}"))
            .await
            .unwrap();
    }
    wait_logged(&srv, &token, &id, 8).await;
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send/{id}"),
            Some(&token),
            Some(json!({"to": "6281600000002", "message": "out one"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let out_id = v["data"]["messageId"].as_str().unwrap().to_string();
    let got = kiki.next_text().await.unwrap();
    assert_eq!(got.message_id, out_id);

    // Three pages of 3 over 9 messages, newest first, no overlap, no gap.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..3 {
        let path = match &cursor {
            Some(c) => format!("/api/instances/{id}/messages?limit=3&cursor={c}"),
            None => format!("/api/instances/{id}/messages?limit=3"),
        };
        let (s, v) = get(&srv, &token, &path).await;
        assert_eq!(s, 200, "{v}");
        let msgs = v["data"]["messages"].as_array().unwrap().clone();
        assert_eq!(msgs.len(), 3, "page {page}: {v}");
        seen.extend(
            msgs.iter()
                .map(|m| m["messageId"].as_str().unwrap().to_string()),
        );
        cursor = v["data"]["nextCursor"].as_str().map(str::to_string);
        if page < 2 {
            assert!(cursor.is_some(), "page {page} has a next page");
        }
    }
    assert_eq!(cursor, None, "the third page is the last");
    assert_eq!(seen.len(), 9);
    assert_eq!(seen[0], out_id, "newest first");
    let uniq: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(uniq.len(), 9);

    // Filters.
    let (_, v) = get(
        &srv,
        &token,
        &format!("/api/instances/{id}/messages?direction=out"),
    )
    .await;
    let outs = v["data"]["messages"].as_array().unwrap();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0]["messageId"], out_id.as_str());
    let (_, v) = get(
        &srv,
        &token,
        &format!("/api/instances/{id}/messages?chat=6281600000003%40s.whatsapp.net"),
    )
    .await;
    let lulus = v["data"]["messages"].as_array().unwrap();
    assert_eq!(lulus.len(), 3, "{v}");
    assert!(lulus
        .iter()
        .all(|m| m["fromPhone"] == "6281600000003" && m["pushName"] == "Lulu"));
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, v) = get(
        &srv,
        &token,
        &format!("/api/instances/{id}/messages?since={}", urlenc(&future)),
    )
    .await;
    assert_eq!(v["data"]["messages"].as_array().unwrap().len(), 0);
    for bad in [
        "direction=sideways",
        "limit=0",
        "limit=501",
        "since=yesterday",
        "cursor=-1",
    ] {
        let (s, v) = get(&srv, &token, &format!("/api/instances/{id}/messages?{bad}")).await;
        assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"), "{bad}");
    }

    // One message, with its timeline: sent, delivered (Kiki's client acknowledges on
    // receipt), read (Kiki reads it).
    let chat: whatsapp_rust::Jid = got.chat.parse().unwrap();
    kiki.client
        .mark_as_read(&chat, None, &[out_id.as_str()])
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (s, v) = get(
            &srv,
            &token,
            &format!("/api/instances/{id}/messages/{out_id}"),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let statuses: Vec<&str> = v["data"]["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["status"].as_str().unwrap())
            .collect();
        if ["sent", "delivered", "read"]
            .iter()
            .all(|w| statuses.contains(w))
        {
            assert_eq!(v["data"]["text"], "out one");
            assert_eq!(v["data"]["direction"], "out");
            assert_eq!(v["data"]["status"], "read", "the furthest status");
            break;
        }
        assert!(tokio::time::Instant::now() < until, "timeline: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = get(&srv, &token, &format!("/api/instances/{id}/messages/NOPE")).await;
    assert_eq!((s, code(&v)), (404, "MESSAGE_NOT_FOUND"));
    let incoming = &sent_by_kiki[2];
    let (_, v) = get(
        &srv,
        &token,
        &format!("/api/instances/{id}/messages/{incoming}"),
    )
    .await;
    assert_eq!(v["data"]["text"], "k2");
    assert_eq!(v["data"]["status"], "received");
    srv.stop().await;
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_after_a_cursor_are_exactly_the_later_ones() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "evlog", &[]).await;
    let mimi = contact(&net, "6281600000012", "Mimi").await;
    let (id, token) = srv.paired_instance(&net, "6281600000011").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            mimi.send_text("6281600000011", &format!("e{i}"))
                .await
                .unwrap(),
        );
    }
    wait_logged(&srv, &token, &id, 6).await;
    let incoming = |v: &Value| -> Vec<String> {
        v["data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "incoming_message")
            .map(|e| e["data"]["message_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, all) = get(
        &srv,
        &token,
        &format!("/api/instances/{id}/events?limit=1000"),
    )
    .await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(incoming(&all), ids, "every incoming message, in order");
    let evs = all["data"]["events"].as_array().unwrap();
    let cursors: Vec<i64> = evs
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    // After the cursor of the third incoming message: exactly the last three.
    let third = evs
        .iter()
        .find(|e| e["data"]["message_id"] == ids[2].as_str())
        .unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, v) = get(
        &srv,
        &token,
        &format!("/api/instances/{id}/events?after={third}"),
    )
    .await;
    assert_eq!(incoming(&v), ids[3..].to_vec());
    // Paging with limit and nextCursor covers the same list.
    let mut after = "0".to_string();
    let mut paged = Vec::new();
    loop {
        let (_, v) = get(
            &srv,
            &token,
            &format!("/api/instances/{id}/events?after={after}&limit=2"),
        )
        .await;
        let n = v["data"]["events"].as_array().unwrap().len();
        paged.extend(incoming(&v));
        after = v["data"]["nextCursor"].as_str().unwrap().to_string();
        if n < 2 {
            break;
        }
    }
    assert_eq!(paged, ids);
    for bad in ["after=x", "limit=0", "limit=1001"] {
        let (s, v) = get(&srv, &token, &format!("/api/instances/{id}/events?{bad}")).await;
        assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"), "{bad}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_events_filter_is_validated_and_honoured() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "whfilter", &[("SUDEVWA_ENABLE_WEBHOOK", "true")]).await;
    let nana = contact(&net, "6281600000022", "Nana").await;
    let (id, token) = srv.paired_instance(&net, "6281600000021").await;
    let hits: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let h = hits.clone();
    use warp::Filter;
    let route = warp::post().and(warp::body::json()).map(move |v: Value| {
        h.lock().unwrap().push(v);
        warp::reply()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    let url = format!("http://{addr}/hook");
    let path = format!("/api/instances/{id}/webhook-setconfig");
    for bad in [
        json!([]),
        json!(["incoming_message", "nope"]),
        json!("incoming_message"),
    ] {
        let (s, v) = srv
            .call(
                "POST",
                &path,
                Some(&token),
                Some(json!({"url": url, "events": bad})),
            )
            .await;
        assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"), "{bad}");
    }
    let (s, v) = srv
        .call("POST", &path, Some(&token), Some(json!({"url": url})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["events"], json!(default_events()));
    // Only statuses: an incoming message is not delivered, a status is.
    let (s, v) = srv
        .call(
            "POST",
            &path,
            Some(&token),
            Some(json!({"url": url, "events": ["message_status"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["events"], json!(["message_status"]));
    let incoming = nana
        .send_text("6281600000021", "not for the webhook")
        .await
        .unwrap();
    wait_logged(&srv, &token, &id, 1).await;
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send/{id}"),
            Some(&token),
            Some(json!({"to": "6281600000022", "message": "statuses please"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let out = v["data"]["messageId"].as_str().unwrap().to_string();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = hits.lock().unwrap().clone();
        if got
            .iter()
            .any(|e| e["event"] == "message_status" && e["data"]["message_ids"][0] == out.as_str())
        {
            assert!(
                got.iter().all(|e| e["event"] == "message_status"),
                "only statuses: {got:?}"
            );
            assert!(!got
                .iter()
                .any(|e| e["data"]["message_id"] == incoming.as_str()));
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "no status delivered: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Lifecycle events can be subscribed to: a logout reaches the webhook.
    let (s, _) = srv
        .call(
            "POST",
            &path,
            Some(&token),
            Some(json!({"url": url, "events": ["INSTANCE_STATUS_CHANGED"]})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = srv
        .call("POST", &format!("/api/logout/{id}"), Some(&token), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let until = tokio::time::Instant::now() + DEADLINE;
    while !hits
        .lock()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "INSTANCE_STATUS_CHANGED" && e["data"]["status"] == "logged_out")
    {
        assert!(
            tokio::time::Instant::now() < until,
            "no lifecycle event delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Removing the webhook resets the filter to the default.
    let (s, v) = srv
        .call("POST", &path, Some(&token), Some(json!({"url": ""})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["webhookUrl"], Value::Null);
    assert_eq!(v["data"]["events"], json!(default_events()));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_sends_once_across_concurrency_and_restarts() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "idem", &[]).await;
    let mut oki = contact(&net, "6281600000032", "Oki").await;
    let (id, token) = srv.paired_instance(&net, "6281600000031").await;
    let send = |key: &str, text: &str| {
        let req = srv
            .http
            .post(srv.url(&format!("/api/send/{id}")))
            .bearer_auth(&token)
            .header("idempotency-key", key)
            .json(&json!({"to": "6281600000032", "message": text}));
        async move {
            let r = req.send().await.unwrap();
            let s = r.status().as_u16();
            let replayed = r
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true");
            (s, r.text().await.unwrap(), replayed)
        }
    };
    // Five at once with one key: five identical answers, one message.
    let answers =
        futures_util::future::join_all((0..5).map(|_| send("order-42", "your order shipped")))
            .await;
    for (s, body, _) in &answers {
        assert_eq!(*s, 200, "{body}");
    }
    assert!(
        answers.windows(2).all(|w| w[0].1 == w[1].1),
        "five byte-identical answers: {answers:?}"
    );
    let replays = answers.iter().filter(|a| a.2).count();
    assert_eq!(replays, 4, "all but the first are marked as replays");
    let datas: Vec<Value> = answers
        .iter()
        .map(|(_, b, _)| serde_json::from_str::<Value>(b).unwrap()["data"].clone())
        .collect();
    let mid = datas[0]["messageId"].as_str().unwrap().to_string();
    let got = oki.next_text().await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.message_id.as_str()),
        ("your order shipped", mid.as_str())
    );

    // Same key, another body: refused, nothing sent.
    let (s, body, _) = send("order-42", "something else").await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(
        code(&serde_json::from_str(&body).unwrap()),
        "IDEMPOTENCY_KEY_REUSED"
    );
    let (s, body, _) = send(&"x".repeat(300), "too long a key").await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(
        code(&serde_json::from_str(&body).unwrap()),
        "VALIDATION_ERROR"
    );
    let r = srv
        .http
        .post(srv.url(&format!("/api/send/{id}")))
        .bearer_auth(&token)
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .json(&json!({"to": "6281600000032", "message": "not ASCII"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code(&r.json().await.unwrap()), "VALIDATION_ERROR");

    // After a restart the key still answers the same, and sends nothing.
    let dir = srv.dir.clone();
    srv.stop().await;
    let srv = TestServer::start_in(&net, dir, &[]).await;
    srv.wait_status(&id, "online again", |d| d["status"] == "online")
        .await;
    let req = srv
        .http
        .post(srv.url(&format!("/api/send/{id}")))
        .bearer_auth(&token)
        .header("idempotency-key", "order-42")
        .json(&json!({"to": "6281600000032", "message": "your order shipped"}));
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let again = r.text().await.unwrap();
    assert_eq!(again, answers[0].1, "the stored answer, byte for byte");
    // A marker sent afterwards is the next thing Oki receives: nothing in between.
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send/{id}"),
            Some(&token),
            Some(json!({"to": "6281600000032", "message": "marker"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        oki.next_text().await.unwrap().text,
        "marker",
        "the repeat sent nothing"
    );
    // The log holds the message once.
    let (_, v) = get(
        &srv,
        &token,
        &format!("/api/instances/{id}/messages?direction=out"),
    )
    .await;
    let n = v["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["messageId"] == mid.as_str())
        .count();
    assert_eq!(n, 1);
    srv.stop().await;
}

/// Every outgoing kind of the message-kinds issue, sent through the REST API, arrives
/// at a contact's real client as that kind; reactions, edits, deletes, forwards and
/// read receipts refer to the right message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outgoing_kinds_arrive_as_what_they_are() {
    use whatsapp_rust::wacore::proto_helpers::MessageExt as _;
    use whatsapp_rust::wacore::types::events::Event;
    use whatsapp_rust::waproto::whatsapp as wa;
    const ME: &str = "6281100000043";
    const DANA: &str = "6281200000043";
    const EVE: &str = "6281200000044";
    let net = MockNetwork::start().await.unwrap();
    let mut dana = contact(&net, DANA, "Dana").await;
    let mut eve = contact(&net, EVE, "Eve").await;
    let srv = TestServer::start(&net, "compose", &[]).await;
    let (id, token) = srv.paired_instance(&net, ME).await;
    let post = |path: String, body: Value| {
        let (srv, token) = (&srv, token.clone());
        async move { srv.call("POST", &path, Some(&token), Some(body)).await }
    };
    let base = format!("/api/instances/{id}/messages");

    // Dana writes first; her message is in the log.
    let hello = dana.send_text(ME, "hello there").await.unwrap();
    wait_logged(&srv, &token, &id, 1).await;

    // A reply to it that mentions Eve.
    let (s, v) = post(
        format!("/api/instances/{id}/send/text"),
        json!({"to": DANA, "text": format!("@{EVE} meet Dana"), "mentions": [EVE], "quotedMessageId": hello}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mine = v["data"]["messageId"].as_str().unwrap().to_string();
    let (text, ctx) = dana
        .next_message("the reply", |m| {
            let x = m
                .message
                .get_base_message()
                .extended_text_message
                .as_option()?;
            Some((x.text.clone(), x.context_info.as_option()?.clone()))
        })
        .await
        .unwrap();
    assert_eq!(text.as_deref(), Some(format!("@{EVE} meet Dana").as_str()));
    assert_eq!(ctx.stanza_id.as_deref(), Some(hello.as_str()));
    assert_eq!(
        ctx.participant.as_deref(),
        Some(format!("{DANA}@s.whatsapp.net").as_str())
    );
    assert_eq!(
        ctx.quoted_message
            .as_option()
            .and_then(|q| q.conversation.clone())
            .as_deref(),
        Some("hello there")
    );
    assert_eq!(ctx.mentioned_jid, vec![format!("{EVE}@s.whatsapp.net")]);

    // A text with a link preview, read from the page through the safe fetcher.
    use warp::Filter as _;
    let page = warp::path!("news").map(|| {
        warp::http::Response::builder()
            .header("content-type", "text/html")
            .body(r#"<html><head><title>Fallback</title><meta property="og:title" content="Big news"><meta name="description" content="All about it"></head></html>"#)
            .unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(page).incoming(listener).run());
    let link = format!("http://{page_addr}/news");
    let (s, v) = post(
        format!("/api/instances/{id}/send/text"),
        json!({"to": DANA, "text": format!("read {link} now"), "linkPreview": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let x = dana
        .next_message("the preview", |m| {
            m.message
                .extended_text_message
                .as_option()
                .filter(|x| x.matched_text.is_some())
                .cloned()
        })
        .await
        .unwrap();
    assert_eq!(
        (
            x.matched_text.as_deref(),
            x.title.as_deref(),
            x.description.as_deref()
        ),
        (Some(link.as_str()), Some("Big news"), Some("All about it"))
    );

    // A location, two contact cards, a poll.
    let (s, v) = post(
        format!("/api/instances/{id}/send/location"),
        json!({"to": DANA, "latitude": -6.175, "longitude": 106.827, "name": "Monas", "address": "Jakarta"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let loc = dana
        .next_message("the location", |m| {
            m.message.location_message.as_option().cloned()
        })
        .await
        .unwrap();
    assert_eq!(
        (
            loc.degrees_latitude,
            loc.degrees_longitude,
            loc.name.as_deref()
        ),
        (Some(-6.175), Some(106.827), Some("Monas"))
    );
    let (s, v) = post(
        format!("/api/instances/{id}/send/contact"),
        json!({"to": DANA, "contacts": [{"name": "Eve", "phone": EVE}, {"name": "Fay", "phone": "6281200000045"}]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let cards = dana
        .next_message("the cards", |m| {
            m.message.contacts_array_message.as_option().cloned()
        })
        .await
        .unwrap();
    assert_eq!(cards.contacts.len(), 2);
    assert!(
        cards.contacts[0]
            .vcard
            .as_deref()
            .unwrap_or("")
            .contains(&format!("waid={EVE}")),
        "{:?}",
        cards.contacts[0].vcard
    );
    let (s, v) = post(
        format!("/api/instances/{id}/send/poll"),
        json!({"to": DANA, "name": "Lunch?", "options": ["Rice", "Noodles", "Soup"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let poll_id = v["data"]["messageId"].as_str().unwrap().to_string();
    let (poll, secret) = dana
        .next_message("the poll", |m| {
            let secret = m
                .message
                .message_context_info
                .as_option()
                .and_then(|c| c.message_secret.clone());
            Some((
                m.message.poll_creation_message_v3.as_option().cloned()?,
                secret?,
            ))
        })
        .await
        .unwrap();
    let names: Vec<_> = poll
        .options
        .iter()
        .map(|o| o.option_name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        (poll.name.as_deref(), names),
        (
            Some("Lunch?"),
            vec!["Rice".to_string(), "Noodles".into(), "Soup".into()]
        )
    );
    // Dana votes; the instance reads her choice.
    dana.client
        .polls()
        .vote(
            whatsapp_rust::Jid::pn(ME),
            &poll_id,
            &whatsapp_rust::Jid::pn(ME),
            &secret,
            &["Noodles".to_string()],
        )
        .await
        .unwrap();
    let d = wait_event(&srv, &token, &id, |d| d["type"] == "poll_vote").await;
    assert_eq!(
        d["poll_vote"],
        json!({"poll_message_id": poll_id, "selected_options": ["Noodles"]}),
        "{d}"
    );

    // A reaction to Dana's message, then its removal.
    let (s, v) = post(format!("{base}/{hello}/reaction"), json!({"emoji": "🎉"})).await;
    assert_eq!(s, 200, "{v}");
    let r = dana
        .next_message("the reaction", |m| {
            m.message.reaction_message.as_option().cloned()
        })
        .await
        .unwrap();
    let key = r.key.as_option().unwrap();
    assert_eq!(
        (key.id.as_deref(), key.from_me, r.text.as_deref()),
        (Some(hello.as_str()), Some(false), Some("🎉"))
    );
    let (s, _) = post(format!("{base}/{hello}/reaction"), json!({"emoji": ""})).await;
    assert_eq!(s, 200);
    let r = dana
        .next_message("the removal", |m| {
            m.message.reaction_message.as_option().cloned()
        })
        .await
        .unwrap();
    assert_eq!(r.text.as_deref(), Some(""));

    // Edit and delete our reply.
    let (s, v) = srv
        .call(
            "PATCH",
            &format!("{base}/{mine}"),
            Some(&token),
            Some(json!({"text": "meet Dana!"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let p = dana
        .next_message("the edit", |m| {
            let p = m.message.get_base_message().protocol_message.as_option()?;
            (p.r#type == Some(wa::message::protocol_message::Type::MESSAGE_EDIT)).then(|| p.clone())
        })
        .await
        .unwrap();
    assert_eq!(
        p.key.as_option().and_then(|k| k.id.as_deref()),
        Some(mine.as_str())
    );
    assert_eq!(
        p.edited_message
            .as_option()
            .and_then(|e| e.get_base_message().conversation.clone())
            .as_deref(),
        Some("meet Dana!")
    );
    let (s, v) = srv
        .call("DELETE", &format!("{base}/{mine}"), Some(&token), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let p = dana
        .next_message("the delete", |m| {
            let p = m.message.get_base_message().protocol_message.as_option()?;
            (p.r#type == Some(wa::message::protocol_message::Type::REVOKE)).then(|| p.clone())
        })
        .await
        .unwrap();
    assert_eq!(
        p.key.as_option().and_then(|k| k.id.as_deref()),
        Some(mine.as_str())
    );

    // Dana's message forwarded to Eve, marked forwarded.
    let (s, v) = post(format!("{base}/{hello}/forward"), json!({"to": EVE})).await;
    assert_eq!(s, 200, "{v}");
    let (text, forwarded) = eve
        .next_message("the forward", |m| {
            let b = m.message.get_base_message();
            let x = b.extended_text_message.as_option()?;
            Some((
                x.text.clone(),
                x.context_info.as_option().and_then(|c| c.is_forwarded),
            ))
        })
        .await
        .unwrap();
    assert_eq!(
        (text.as_deref(), forwarded),
        (Some("hello there"), Some(true))
    );

    // Read receipt for Dana's message.
    let (s, v) = post(format!("{base}/{hello}/read"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    dana.wait("the read receipt", |e| match e {
        Event::Receipt(r) => (r.r#type
            == whatsapp_rust::wacore::types::presence::ReceiptType::Read
            && r.message_ids.iter().any(|m| m.as_str() == hello))
        .then_some(()),
        _ => None,
    })
    .await
    .unwrap();

    // Typing in Dana's chat; then appear offline.
    let (s, v) = post(
        format!("/api/instances/{id}/chat-state"),
        json!({"to": DANA, "state": "typing"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    dana.wait("the typing state", |e| {
        matches!(e, Event::ChatPresence(_)).then_some(())
    })
    .await
    .unwrap();
    let (s, v) = post(
        format!("/api/instances/{id}/presence"),
        json!({"presence": "unavailable"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let until = tokio::time::Instant::now() + DEADLINE;
    while net.presences(ME).last().map(String::as_str) != Some("unavailable") {
        assert!(
            tokio::time::Instant::now() < until,
            "{:?}",
            net.presences(ME)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Refusals, each with its code.
    let (s, v) = srv
        .call(
            "PATCH",
            &format!("{base}/{hello}"),
            Some(&token),
            Some(json!({"text": "not mine"})),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "NOT_OWN_MESSAGE"), "{v}");
    let (s, v) = post(format!("{base}/nope/reaction"), json!({"emoji": "x"})).await;
    assert_eq!((s, code(&v)), (404, "MESSAGE_NOT_FOUND"), "{v}");
    let (s, v) = post(
        format!("/api/instances/{id}/send/poll"),
        json!({"to": DANA, "name": "?", "options": ["one"]}),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"), "{v}");
    let (s, v) = post(
        format!("/api/instances/{id}/send/location"),
        json!({"to": DANA, "latitude": 91, "longitude": 0}),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"), "{v}");
    let (s, v) = post(
        format!("/api/instances/{id}/send/text"),
        json!({"to": "12@g.us.x", "text": "x"}),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_PHONE"), "{v}");
    let (s, v) = post(
        format!("/api/instances/{id}/chat-state"),
        json!({"to": DANA, "state": "dancing"}),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"), "{v}");
}

/// A contact that writes by LID (a LID-migrated chat) is answered through the API at
/// that LID, on the old send route and the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contact_known_by_lid_can_be_answered() {
    const ME: &str = "6281100000046";
    const GIL: &str = "6281200000046";
    let net = MockNetwork::start().await.unwrap();
    net.lid_migration(true);
    let mut gil = contact(&net, GIL, "Gil").await;
    let srv = TestServer::start(&net, "lid-answer", &[]).await;
    let (id, token) = srv.paired_instance(&net, ME).await;
    gil.send_text(ME, "by lid").await.unwrap();
    wait_logged(&srv, &token, &id, 1).await;
    let (_, v) = get(
        &srv,
        &token,
        &format!("/api/instances/{id}/messages?direction=in"),
    )
    .await;
    let from = v["data"]["messages"][0]["from"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(from.ends_with("@lid"), "the contact wrote by LID: {v}");
    for (path, body) in [
        (
            format!("/api/send/{id}"),
            json!({"to": from, "message": "answer one"}),
        ),
        (
            format!("/api/instances/{id}/send/text"),
            json!({"to": from, "text": "answer two"}),
        ),
    ] {
        let (s, v) = srv.call("POST", &path, Some(&token), Some(body)).await;
        assert_eq!(s, 200, "{path}: {v}");
        let got = gil.next_text().await.unwrap();
        assert!(got.text.starts_with("answer"), "{got:?}");
    }
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send/{id}"),
            Some(&token),
            Some(json!({"to": "12ab@lid", "message": "x"})),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "INVALID_PHONE"), "{v}");
    // Lookups both ways, and the number check names the LID.
    let (s, v) = get(&srv, &token, &format!("/api/instances/{id}/phone/{from}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["data"]["phone"].as_str(), v["data"]["lid"].as_str()),
        (Some(GIL), Some(from.as_str()))
    );
    let (s, v) = get(&srv, &token, &format!("/api/instances/{id}/lid/{GIL}")).await;
    assert_eq!(
        (s, v["data"]["lid"].as_str()),
        (200, Some(from.as_str())),
        "{v}"
    );
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/check/{id}"),
            Some(&token),
            Some(json!({"phone": GIL})),
        )
        .await;
    assert_eq!(
        (s, v["data"]["lid"].as_str()),
        (200, Some(from.as_str())),
        "{v}"
    );
    let (s, v) = get(
        &srv,
        &token,
        &format!("/api/instances/{id}/phone/99999@lid"),
    )
    .await;
    assert_eq!((s, code(&v)), (404, "MAPPING_NOT_FOUND"), "{v}");
}

/// The events a webhook gets by default: the message events.
fn default_events() -> Vec<&'static str> {
    vec![
        "incoming_message",
        "message_status",
        "message_edited",
        "message_revoked",
        "message_undecryptable",
        "group_update",
    ]
}

/// Media a contact sent downloads through the API byte-exact, with its type and file
/// name; expired media is a 410, a text has no media.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn received_media_downloads_byte_exact() {
    use actors::instance::{media_message, MediaKind};
    use whatsapp_rust::download::MediaType;
    use whatsapp_rust::Jid;
    const ME: &str = "6281100000048";
    let net = MockNetwork::start().await.unwrap();
    let hal = contact(&net, "6281200000048", "Hal").await;
    // Incoming media is also saved to a directory, files over 50 000 bytes excepted.
    let media_dir = std::env::temp_dir().join(format!(
        "sudevwa-media-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let media_dir_s = media_dir.display().to_string();
    let srv = TestServer::start(
        &net,
        "media-download",
        &[
            ("SUDEVWA_MESSAGES_MEDIA_DIR", media_dir_s.as_str()),
            ("SUDEVWA_MESSAGES_MEDIA_DIR_MAX_FILE_BYTES", "50000"),
        ],
    )
    .await;
    let (id, token) = srv.paired_instance(&net, ME).await;
    // Not compressible, not all the same byte: a real file's worth of entropy.
    let image: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let doc = b"%PDF-1.4 minutes of the meeting".to_vec();
    let mut paths = Vec::new();
    let mut ids = Vec::new();
    for (kind, media_type, bytes, mime, name) in [
        (
            MediaKind::Image,
            MediaType::Image,
            image.clone(),
            "image/jpeg",
            None,
        ),
        (
            MediaKind::Document,
            MediaType::Document,
            doc.clone(),
            "application/pdf",
            Some("Minutes Q3 ü.pdf".to_string()),
        ),
    ] {
        let up = hal
            .client
            .upload(bytes, media_type, Default::default())
            .await
            .unwrap();
        paths.push(up.direct_path.clone());
        let m = media_message(&kind, up, mime.into(), Some("see".into()), name);
        ids.push(
            hal.client
                .send_message(Jid::pn(ME), m)
                .await
                .unwrap()
                .message_id,
        );
    }
    let text = hal.send_text(ME, "no media here").await.unwrap();
    wait_logged(&srv, &token, &id, 3).await;
    let fetch = |mid: String| {
        let (srv, token, id) = (&srv, token.clone(), id.clone());
        async move {
            let r = srv
                .http
                .get(srv.url(&format!("/api/instances/{id}/messages/{mid}/media")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
            let (ct, cd) = (header("content-type"), header("content-disposition"));
            (status, ct, cd, r.bytes().await.unwrap().to_vec())
        }
    };
    let (s, ct, cd, body) = fetch(ids[0].clone()).await;
    assert_eq!((s, ct.as_deref(), cd), (200, Some("image/jpeg"), None));
    assert!(
        body == image,
        "the image downloads byte-exact ({} bytes)",
        body.len()
    );
    let (s, ct, cd, body) = fetch(ids[1].clone()).await;
    assert_eq!((s, ct.as_deref()), (200, Some("application/pdf")));
    assert_eq!(body, doc);
    let cd = cd.unwrap();
    assert!(
        cd.starts_with("attachment; filename=\"Minutes Q3 _.pdf\""),
        "{cd}"
    );
    assert!(
        cd.contains("filename*=UTF-8''Minutes%20Q3%20%C3%BC%2Epdf"),
        "{cd}"
    );
    // The document was saved to the media directory; the image, over the cap, was not.
    let saved = media_dir.join(&id).join(format!("{}.pdf", ids[1]));
    let until = tokio::time::Instant::now() + DEADLINE;
    while !saved.exists() {
        assert!(
            tokio::time::Instant::now() < until,
            "{} not saved",
            saved.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read(&saved).unwrap(), doc);
    let files: Vec<_> = std::fs::read_dir(media_dir.join(&id))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(files.len(), 1, "only the document: {files:?}");
    let _ = std::fs::remove_dir_all(&media_dir);
    // Expired on WhatsApp's side; and a text.
    assert!(net.expire_media(&paths[0]));
    let (s, _, _, body) = fetch(ids[0].clone()).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((s, code(&v)), (410, "MEDIA_EXPIRED"), "{v}");
    let (s, _, _, body) = fetch(text).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((s, code(&v)), (400, "NO_MEDIA"), "{v}");
    let (s, _, _, body) = fetch("unknown".into()).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((s, code(&v)), (404, "MESSAGE_NOT_FOUND"), "{v}");
}

/// A voice note (with the length its Ogg/Opus file carries) and a sticker, uploaded
/// through the API, arrive at the contact as a push-to-talk audio and a sticker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voice_notes_and_stickers_arrive_as_such() {
    const ME: &str = "6281100000049";
    const IDA: &str = "6281200000049";
    let net = MockNetwork::start().await.unwrap();
    let mut ida = contact(&net, IDA, "Ida").await;
    let srv = TestServer::start(&net, "voice-sticker", &[]).await;
    let (id, token) = srv.paired_instance(&net, ME).await;
    // An Ogg/Opus file of 3 s: OpusHead (pre-skip 312), then a last page whose granule
    // position is 3 s of 48 kHz samples after the pre-skip.
    let page = |granule: u64, body: &[u8]| {
        let mut p = b"OggS\0\0".to_vec();
        p.extend_from_slice(&granule.to_le_bytes());
        p.extend_from_slice(&[0u8; 13]);
        p.extend_from_slice(body);
        p
    };
    let mut head = b"OpusHead\x01\x01".to_vec();
    head.extend_from_slice(&312u16.to_le_bytes());
    head.extend_from_slice(&[0x80, 0xBB, 0, 0, 0, 0, 0]);
    let mut ogg = page(0, &head);
    ogg.extend(page(0, &[1u8; 200]));
    ogg.extend(page(3 * 48_000 + 312, &[2u8; 200]));
    let webp: Vec<u8> = b"RIFF\x20\0\0\0WEBPVP8 "
        .iter()
        .copied()
        .chain([3u8; 500])
        .collect();
    for (media_type, name, bytes) in [("voice", "note.ogg", ogg), ("sticker", "smile.webp", webp)] {
        let form = reqwest::multipart::Form::new()
            .text("to", IDA)
            .text("mediaType", media_type)
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(name),
            );
        let resp = srv
            .http
            .post(srv.url(&format!("/api/send/{id}/media")))
            .bearer_auth(&token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let (s, v): (u16, Value) = (resp.status().as_u16(), resp.json().await.unwrap());
        assert_eq!(
            (s, v["data"]["mediaType"].as_str()),
            (200, Some(media_type)),
            "{v}"
        );
    }
    let voice = ida
        .next_message("the voice note", |m| {
            m.message.audio_message.as_option().cloned()
        })
        .await
        .unwrap();
    assert_eq!((voice.ptt, voice.seconds), (Some(true), Some(3)));
    let sticker = ida
        .next_message("the sticker", |m| {
            m.message.sticker_message.as_option().cloned()
        })
        .await
        .unwrap();
    assert_eq!(sticker.mimetype.as_deref(), Some("image/webp"));
    assert!(sticker.media_key.is_some(), "a real upload");
}

/// One series of a scrape, summed over the samples whose labels include `labels`.
fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.last().map_or(0.0, |c| c.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// `GET /metrics` is Prometheus text a parser reads, admin-only, and its series move
/// as messages come in and go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_parse_and_move_with_messages() {
    const ME: &str = "6281100000050";
    const JO: &str = "6281200000050";
    let net = MockNetwork::start().await.unwrap();
    let jo = contact(&net, JO, "Jo").await;
    let srv = TestServer::start(&net, "metrics", &[]).await;
    let (id, token) = srv.paired_instance(&net, ME).await;
    let scrape = || async {
        let r = srv
            .http
            .get(srv.url("/metrics"))
            .bearer_auth(common::ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let text = r.text().await.unwrap();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    };
    let before = scrape().await;
    let series = |s: &prometheus_parse::Scrape, dir: &str| {
        metric(
            s,
            "sudevwa_messages_total",
            &[("direction", dir), ("instance", id.as_str())],
        )
    };
    jo.send_text(ME, "count me").await.unwrap();
    wait_logged(&srv, &token, &id, 1).await;
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send/{id}"),
            Some(&token),
            Some(json!({"to": JO, "message": "and me"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = srv
        .call(
            "POST",
            &format!("/api/send/{id}"),
            Some(&token),
            Some(json!({"to": "6289999999999", "message": "nobody"})),
        )
        .await;
    assert_eq!(s, 400, "a number not on WhatsApp");
    let after = scrape().await;
    assert_eq!(series(&after, "in") - series(&before, "in"), 1.0);
    assert_eq!(series(&after, "out") - series(&before, "out"), 1.0);
    assert!(
        metric(&after, "sudevwa_send_duration_seconds_count", &[])
            + metric(&after, "sudevwa_send_duration_seconds", &[])
            > metric(&before, "sudevwa_send_duration_seconds_count", &[])
                + metric(&before, "sudevwa_send_duration_seconds", &[]),
        "the send was timed"
    );
    assert!(
        metric(
            &after,
            "sudevwa_send_errors_total",
            &[("code", "PHONE_NOT_REGISTERED")]
        ) > metric(
            &before,
            "sudevwa_send_errors_total",
            &[("code", "PHONE_NOT_REGISTERED")]
        )
    );
    assert!(metric(&after, "sudevwa_instances", &[("status", "online")]) >= 1.0);
    assert!(
        metric(&after, "sudevwa_connect_gate_wait_seconds_count", &[])
            + metric(&after, "sudevwa_connect_gate_wait_seconds", &[])
            >= 1.0,
        "the instance's connect passed the gate"
    );
    assert!(after
        .samples
        .iter()
        .any(|s| s.metric == "sudevwa_outbox_pending"));
    // An instance token may not read them.
    let r = srv
        .http
        .get(srv.url("/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}
