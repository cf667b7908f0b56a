//! The REST API end to end: the real server over HTTP against the mock WhatsApp
//! network, with simulated contacts on the other side.

mod common;

use common::{code, TestServer, ADMIN_KEY, DEADLINE, PASSWORD, USER};
use mock_whatsapp::MockNetwork;
use serde_json::{json, Value};
use std::time::Duration;
use warp::Filter;
use whatsapp_rust::wacore::types::events::Event;

/// A local HTTP server for media-by-URL (allow-listed 127.0.0.0/8 in the tests).
async fn media_server(files: Vec<(&'static str, Vec<u8>)>) -> String {
    let files = std::sync::Arc::new(files);
    let route = warp::path::param::<String>()
        .and(warp::get())
        .map(
            move |name: String| match files.iter().find(|(n, _)| *n == name) {
                Some((_, b)) => warp::http::Response::builder()
                    .status(200)
                    .body(b.clone())
                    .unwrap(),
                None => warp::http::Response::builder()
                    .status(404)
                    .body(Vec::new())
                    .unwrap(),
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    format!("http://{addr}")
}

fn decode_qr_png(png: &[u8]) -> String {
    let img = image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .expect("a PNG")
        .to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    grids[0].decode().expect("QR decodes").1
}

/// SUDEVWA's README flow, unchanged: login-jwt → login → qr → scan → send → check →
/// logout; plus media by upload and URL, by-number routing, listing and deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sudevwa_client_flow_end_to_end() {
    let net = MockNetwork::start().await.unwrap();
    let mut alice = net.add_contact("6281200000002", "Alice").await.unwrap();
    let srv = TestServer::start(&net, "flow", &[]).await;

    // login-jwt
    let (s, v) = srv
        .call(
            "POST",
            "/login-jwt",
            None,
            Some(json!({"username": USER, "password": "nope"})),
        )
        .await;
    assert_eq!((s, code(&v)), (401, "INVALID_CREDENTIALS"));
    let (s, v) = srv
        .call(
            "POST",
            "/login-jwt",
            None,
            Some(json!({"username": USER, "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let jwt = v["token"]
        .as_str()
        .expect("top-level token as SUDEVWA returns it")
        .to_string();
    let (s, v) = srv.call("GET", "/api/validate", Some(&jwt), None).await;
    assert_eq!(
        (s, v["message"].as_str(), v["username"].as_str()),
        (200, Some("Token is valid"), Some(USER))
    );

    // login (create) → qr
    let (s, v) = srv
        .call(
            "POST",
            "/api/login",
            Some(&jwt),
            Some(json!({"device_name": "Shop Till"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["status"], "qr_required");
    let id = v["data"]["instanceId"].as_str().unwrap().to_string();
    let token = v["data"]["token"].as_str().unwrap().to_string();
    assert!(v["data"]["nextStep"].as_str().unwrap().contains(&id));
    let (_, v) = srv
        .call("GET", &format!("/api/status/{id}"), Some(&token), None)
        .await;
    assert_eq!(v["data"]["status"], "qr_required");
    assert_eq!(v["data"]["isConnected"], false);
    assert_eq!(v["data"]["deviceName"], "Shop Till");

    let qr = srv.current_qr(&id, &token).await;
    let (s, v) = srv
        .call("GET", &format!("/api/qr/{id}"), Some(&token), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["status"], "generating");
    assert_eq!(v["data"]["timeout"], 180);
    // The PNG decodes back to the code on offer.
    let resp = srv
        .http
        .get(srv.url(&format!("/api/qr/{id}/image")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    let png = resp.bytes().await.unwrap();
    let in_image = decode_qr_png(&png);
    let (_, v) = srv
        .call("GET", &format!("/api/status/{id}"), Some(&token), None)
        .await;
    assert!(
        in_image == qr || v["data"]["status"] == "qr_pending",
        "image shows the current code"
    );
    assert!(in_image.contains(','), "a WhatsApp QR string: {in_image}");

    // scan → online
    net.scan_qr(&in_image, Some("6281100000001")).expect("scan");
    let st = srv
        .wait_status(&id, "online", |d| {
            d["status"] == "online" && d["isConnected"] == true
        })
        .await;
    assert_eq!(st["phoneNumber"], "6281100000001");
    assert!(st["jid"].as_str().unwrap().starts_with("6281100000001@"));
    let (s, v) = srv
        .call("GET", &format!("/api/qr/{id}"), Some(&token), None)
        .await;
    assert_eq!(
        (s, v["data"]["status"].as_str()),
        (200, Some("already_connected"))
    );

    // send (leading 0 becomes the default country code 62)
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send/{id}"),
            Some(&token),
            Some(json!({"to": "081200000002", "message": "hello from the API"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["verified"], true);
    assert!(!v["data"]["messageId"].as_str().unwrap().is_empty());
    let got = alice.next_text().await.unwrap();
    assert_eq!(got.text, "hello from the API");
    assert_eq!(got.message_id, v["data"]["messageId"].as_str().unwrap());

    // check
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/check/{id}"),
            Some(&token),
            Some(json!({"phone": "6281200000002"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["isRegistered"], true);
    assert!(v["data"]["jid"]
        .as_str()
        .unwrap()
        .starts_with("6281200000002@"));
    let (_, v) = srv
        .call(
            "POST",
            &format!("/api/check/{id}"),
            Some(&token),
            Some(json!({"phone": "19990000001"})),
        )
        .await;
    assert_eq!(v["data"]["isRegistered"], false);
    assert_eq!(v["data"]["jid"], Value::Null);

    // list
    let (_, v) = srv.call("GET", "/api/instances", Some(&jwt), None).await;
    assert_eq!(v["data"]["total"], 1);
    assert_eq!(v["data"]["instances"][0]["instanceId"], id.as_str());
    let (other, _) = srv.create_instance().await;
    let (_, v) = srv.call("GET", "/api/instances", Some(&jwt), None).await;
    assert_eq!(
        v["data"]["total"], 1,
        "only connected instances without all=true"
    );
    let (_, v) = srv
        .call("GET", "/api/instances?all=true", Some(&jwt), None)
        .await;
    assert_eq!(v["data"]["total"], 2);
    let (_, v) = srv
        .call("GET", "/api/instances?all=true", Some(&token), None)
        .await;
    assert_eq!(
        v["data"]["total"], 1,
        "an instance token sees its own instance only"
    );

    // by-number, both spellings
    for path in [
        "/api/by-number/6281100000001",
        "/api/send/by-number/6281100000001",
    ] {
        let (s, v) = srv
            .call(
                "POST",
                path,
                Some(&jwt),
                Some(json!({"to": "6281200000002", "message": format!("via {path}")})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["data"]["from"], "6281100000001");
        assert_eq!(alice.next_text().await.unwrap().text, format!("via {path}"));
    }

    // media by upload: the contact downloads exactly the bytes sent
    let pic: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let form = reqwest::multipart::Form::new()
        .text("to", "6281200000002")
        .text("caption", "uploaded")
        .part(
            "file",
            reqwest::multipart::Part::bytes(pic.clone()).file_name("photo.jpg"),
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
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["data"]["mediaType"].as_str(),
            v["data"]["fileSize"].as_u64()
        ),
        (Some("image"), Some(30_000))
    );
    let img = alice
        .wait("an image", |e| match e {
            Event::Messages(b) => b
                .messages
                .iter()
                .find_map(|m| m.message.image_message.as_option().cloned()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(img.caption.as_deref(), Some("uploaded"));
    assert_eq!(img.mimetype.as_deref(), Some("image/jpeg"));
    assert_eq!(alice.client.download(&img).await.unwrap(), pic);

    // media by URL (a local server on an allow-listed address)
    let doc: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
    let files = media_server(vec![("report.pdf", doc.clone())]).await;
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send/{id}/media-url"),
            Some(&token),
            Some(json!({"to": "6281200000002", "mediaUrl": format!("{files}/report.pdf"), "caption": "the report"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["mediaType"], "document");
    assert_eq!(v["data"]["fileName"], "report.pdf");
    let d = alice
        .wait("a document", |e| match e {
            Event::Messages(b) => b
                .messages
                .iter()
                .find_map(|m| m.message.document_message.as_option().cloned()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(d.file_name.as_deref(), Some("report.pdf"));
    assert_eq!(d.mimetype.as_deref(), Some("application/pdf"));
    assert_eq!(alice.client.download(&d).await.unwrap(), doc);
    // by-number media-url
    let (s, v) = srv
        .call(
            "POST",
            "/api/by-number/6281100000001/media-url",
            Some(&jwt),
            Some(json!({"to": "6281200000002", "mediaUrl": format!("{files}/report.pdf"), "mediaType": "document"})),
        )
        .await;
    assert_eq!(
        (s, v["data"]["from"].as_str()),
        (200, Some("6281100000001")),
        "{v}"
    );

    // delete is refused while online; logout keeps the instance, which can scan again
    let (s, v) = srv
        .call(
            "DELETE",
            &format!("/api/instances/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (400, "INSTANCE_STILL_CONNECTED"));
    let (s, v) = srv
        .call("POST", &format!("/api/logout/{id}"), Some(&token), None)
        .await;
    assert_eq!(
        (s, v["data"]["instanceId"].as_str()),
        (200, Some(id.as_str())),
        "{v}"
    );
    srv.wait_status(&id, "logged_out", |d| d["status"] == "logged_out")
        .await;
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send/{id}"),
            Some(&token),
            Some(json!({"to": "6281200000002", "message": "x"})),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "NOT_CONNECTED"));
    let again = srv.current_qr(&id, &token).await;
    assert_ne!(again, qr, "a fresh QR after logout");
    let (s, v) = srv
        .call(
            "DELETE",
            &format!("/api/qr-cancel/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (s, v["data"]["status"].as_str()),
        (200, Some("cancelled")),
        "{v}"
    );
    let (s, v) = srv
        .call(
            "DELETE",
            &format!("/api/instances/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = srv
        .call("GET", &format!("/api/status/{id}"), Some(ADMIN_KEY), None)
        .await;
    assert_eq!((s, code(&v)), (404, "SESSION_NOT_FOUND"));
    let (s, _) = srv
        .call("GET", &format!("/api/status/{id}"), Some(&token), None)
        .await;
    assert_eq!(s, 401, "the deleted instance's token is gone with it");
    let (s, _) = srv
        .admin("DELETE", &format!("/api/instances/{other}"), None)
        .await;
    assert_eq!(s, 200);
    srv.stop().await;
    let _ = DEADLINE;
    let _ = Duration::ZERO;
}

/// Every send-route check answers with its own code, in API.md's order, and bodies
/// are validated first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_checks_answer_in_documented_order() {
    let net = MockNetwork::start().await.unwrap();
    let _bob = net.add_contact("6281200000003", "Bob").await.unwrap();
    let dir = std::env::temp_dir().join(format!("sudevwa-api-order-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let timing = actors::instance::InstanceTiming {
        qr_timeout: Duration::from_secs(180),
        presence_interval: Duration::from_secs(300),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let srv = TestServer::start_with(
        &net,
        dir,
        &[("SUDEVWA_LIMITS_MAX_IMAGE_BYTES", "1000")],
        Some(timing),
    )
    .await;
    let send = |id: &str| format!("/api/send/{id}");
    let ok_body = json!({"to": "6281200000003", "message": "hi"});

    // Bodies first.
    let (s, v) = srv
        .admin("POST", &send("nope"), Some(json!({"to": "6281200000003"})))
        .await;
    assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"));
    let resp = srv
        .http
        .post(srv.url(&send("nope")))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        code(&resp.json::<Value>().await.unwrap()),
        "INVALID_REQUEST"
    );

    // instance exists → connected → logged in
    let (s, v) = srv
        .admin("POST", &send("no-such-instance"), Some(ok_body.clone()))
        .await;
    assert_eq!((s, code(&v)), (404, "SESSION_NOT_FOUND"));
    let (fresh, fresh_token) = srv.create_instance().await;
    let (s, v) = srv
        .admin("POST", &send(&fresh), Some(ok_body.clone()))
        .await;
    assert_eq!((s, code(&v)), (400, "NOT_CONNECTED"));
    srv.current_qr(&fresh, &fresh_token).await;
    let (s, v) = srv
        .admin("POST", &send(&fresh), Some(ok_body.clone()))
        .await;
    assert_eq!(
        (s, code(&v)),
        (400, "NOT_LOGGED_IN"),
        "socket up, waiting for the scan"
    );
    let (s, v) = srv
        .admin("GET", &format!("/api/groups/{fresh}"), None)
        .await;
    assert_eq!((s, code(&v)), (400, "NOT_LOGGED_IN"));

    // recipient valid → on WhatsApp
    let (id, _) = srv.paired_instance(&net, "6281100000009").await;
    for bad in ["12345", "62812abc0000", "+62 812 000 000 000 000"] {
        let (s, v) = srv
            .admin("POST", &send(&id), Some(json!({"to": bad, "message": "x"})))
            .await;
        assert_eq!((s, code(&v)), (400, "INVALID_PHONE"), "{bad}");
    }
    let (s, v) = srv
        .admin(
            "POST",
            &send(&id),
            Some(json!({"to": "19990000001", "message": "x"})),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "PHONE_NOT_REGISTERED"));
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/check/{id}"),
            Some(json!({"phone": "123"})),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "INVALID_PHONE"));

    // by-number: nobody online with that number
    let (s, v) = srv
        .admin(
            "POST",
            "/api/by-number/6281999999999",
            Some(ok_body.clone()),
        )
        .await;
    assert_eq!((s, code(&v)), (404, "NO_ACTIVE_INSTANCE"));

    // media: file required, size caps by type, download failures, SSRF refusals
    let form = reqwest::multipart::Form::new().text("to", "6281200000003");
    let resp = srv
        .http
        .post(srv.url(&format!("/api/send/{id}/media")))
        .bearer_auth(ADMIN_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(code(&resp.json::<Value>().await.unwrap()), "FILE_REQUIRED");
    let form = reqwest::multipart::Form::new()
        .text("to", "6281200000003")
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![7u8; 1001]).file_name("big.png"),
        );
    let resp = srv
        .http
        .post(srv.url(&format!("/api/send/{id}/media")))
        .bearer_auth(ADMIN_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(code(&resp.json::<Value>().await.unwrap()), "FILE_TOO_LARGE");
    let files = media_server(vec![
        ("big.png", vec![1u8; 5000]),
        ("small.txt", b"hello".to_vec()),
    ])
    .await;
    let media_url = |url: String| json!({"to": "6281200000003", "mediaUrl": url});
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/send/{id}/media-url"),
            Some(media_url(format!("{files}/big.png"))),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "FILE_TOO_LARGE"));
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/send/{id}/media-url"),
            Some(media_url(format!("{files}/missing.png"))),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "DOWNLOAD_FAILED"));
    for target in [
        "http://169.254.169.254/latest",
        "http://10.0.0.1/x.png",
        "http://[::ffff:10.0.0.1]/x",
        "file:///etc/passwd",
    ] {
        let (s, v) = srv
            .admin(
                "POST",
                &format!("/api/send/{id}/media-url"),
                Some(media_url(target.into())),
            )
            .await;
        assert_eq!((s, code(&v)), (400, "DOWNLOAD_FAILED"), "{target}: {v}");
    }
    let (s, v) = srv.admin("POST", &format!("/api/send/{id}/media-url"), Some(json!({"to": "6281200000003", "mediaUrl": format!("{files}/small.txt"), "mediaType": "hologram"}))).await;
    assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"));
    let (s, v) = srv
        .admin(
            "POST",
            &format!("/api/send/{id}/media-url"),
            Some(json!({"to": "6281200000003", "mediaUrl": format!("{files}/small.txt")})),
        )
        .await;
    assert_eq!(
        (s, v["data"]["mediaType"].as_str()),
        (200, Some("document")),
        "{v}"
    );

    // groups: the JID is checked before anything is sent
    for bad in ["12345@s.whatsapp.net", "abc@g.us", "120363-x@g.us"] {
        let (s, v) = srv
            .admin(
                "POST",
                &format!("/api/send-group/{id}"),
                Some(json!({"groupJid": bad, "message": "x"})),
            )
            .await;
        assert_eq!((s, code(&v)), (400, "INVALID_GROUP_JID"), "{bad}");
    }

    // QR errors
    let (s, v) = srv
        .admin("DELETE", &format!("/api/qr-cancel/{id}"), None)
        .await;
    assert_eq!((s, code(&v)), (404, "NO_QR_SESSION"));
    let (s, v) = srv.admin("GET", &format!("/api/qr/{id}/image"), None).await;
    assert_eq!((s, code(&v)), (404, "NO_QR_SESSION"));

    // The upload failing, then the send itself failing (a first message to a device
    // whose keys cannot be fetched).
    net.fail_uploads(true);
    let form = reqwest::multipart::Form::new()
        .text("to", "6281200000003")
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![1u8; 500]).file_name("tiny.png"),
        );
    let resp = srv
        .http
        .post(srv.url(&format!("/api/send/{id}/media")))
        .bearer_auth(ADMIN_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(code(&resp.json::<Value>().await.unwrap()), "UPLOAD_FAILED");
    net.fail_uploads(false);
    let _newcomer = net.add_contact("6281200000004", "New").await.unwrap();
    net.fail_prekey_fetch(true);
    let (s, v) = srv
        .admin(
            "POST",
            &send(&id),
            Some(json!({"to": "6281200000004", "message": "x"})),
        )
        .await;
    assert_eq!((s, code(&v)), (500, "SEND_FAILED"), "{v}");
    net.fail_prekey_fetch(false);

    // The number check itself failing (WhatsApp does not answer in time), for a
    // number not checked before...
    net.delay_frames(4_000);
    let (s, v) = srv
        .admin(
            "POST",
            &send(&id),
            Some(json!({"to": "6281200000009", "message": "x"})),
        )
        .await;
    assert_eq!((s, code(&v)), (500, "VERIFICATION_FAILED"), "{v}");
    // ...while a number checked before is answered from the instance's number cache:
    // no check round trip. The send itself then needs none either when the client
    // already holds the recipient's devices and session (keyed by the LID the number
    // check returned), and succeeds; if it does need one, the timeout is the send's own.
    let (s, v) = srv.admin("POST", &send(&id), Some(ok_body.clone())).await;
    if s == 200 {
        assert_eq!(v["data"]["verified"], true, "{v}");
    } else {
        assert_eq!((s, code(&v)), (500, "SEND_FAILED"), "{v}");
    }
    net.delay_frames(0);
    srv.stop().await;
}

/// Groups through the API: list, text and media to a group (by id and by number),
/// and a member's group message arriving as `incoming_message` with the group as chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_list_send_and_receive() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let net = MockNetwork::start().await.unwrap();
    let mut bea = net.add_contact("6281200000081", "Bea").await.unwrap();
    let mut cid = net.add_contact("6281200000082", "Cid").await.unwrap();
    let srv = TestServer::start(&net, "groups", &[]).await;
    let (id, token) = srv.paired_instance(&net, "6281100000081").await;
    let gid = net
        .create_group(
            "Shop staff",
            "6281100000081",
            &["6281200000081", "6281200000082"],
        )
        .unwrap();
    let _other = net
        .create_group("Not ours", "6281200000081", &["6281200000082"])
        .unwrap();

    let (s, v) = srv
        .call("GET", &format!("/api/groups/{id}"), Some(&token), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["total"], 1, "only the groups this number is in");
    let g = &v["data"]["groups"][0];
    assert_eq!(g["jid"], gid.as_str());
    assert_eq!(g["name"], "Shop staff");
    assert_eq!(g["participants"].as_array().unwrap().len(), 3);
    assert!(g["ownerJid"]
        .as_str()
        .unwrap()
        .starts_with("6281100000081@"));
    assert!(g["createdAt"].as_u64().unwrap() > 1_700_000_000);
    let (s, v) = srv
        .call(
            "GET",
            "/api/groups/by-number/6281100000081",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (s, v["data"]["total"].as_u64(), v["data"]["from"].as_str()),
        (200, Some(1), Some("6281100000081"))
    );

    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send-group/{id}"),
            Some(&token),
            Some(json!({"groupJid": gid, "message": "staff meeting at 9"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["groupJid"], gid.as_str());
    for c in [&mut bea, &mut cid] {
        let got = c.next_text().await.unwrap();
        assert_eq!(got.text, "staff meeting at 9");
        assert!(got.is_group);
        assert_eq!(got.chat, gid);
        assert_eq!(got.from, "6281100000081");
    }
    let (s, v) = srv
        .call(
            "POST",
            "/api/send-group/by-number/6281100000081",
            Some(&token),
            Some(json!({"groupJid": gid, "message": "by number"})),
        )
        .await;
    assert_eq!(
        (s, v["data"]["from"].as_str()),
        (200, Some("6281100000081")),
        "{v}"
    );
    assert_eq!(bea.next_text().await.unwrap().text, "by number");

    // Media to the group, by upload.
    let pic: Vec<u8> = (0..12_000u32).map(|i| (i % 239) as u8).collect();
    let form = reqwest::multipart::Form::new()
        .text("groupJid", gid.clone())
        .text("caption", "the new shelf")
        .part(
            "file",
            reqwest::multipart::Part::bytes(pic.clone()).file_name("shelf.png"),
        );
    let resp = srv
        .http
        .post(srv.url(&format!("/api/send-group/{id}/media")))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (s, v): (u16, Value) = (resp.status().as_u16(), resp.json().await.unwrap());
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["data"]["groupJid"].as_str(),
            v["data"]["mediaType"].as_str()
        ),
        (Some(gid.as_str()), Some("image"))
    );
    let img = cid
        .wait("a group image", |e| match e {
            Event::Messages(b) => b
                .messages
                .iter()
                .find_map(|m| m.message.image_message.as_option().cloned()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(cid.client.download(&img).await.unwrap(), pic);
    // ...and by URL.
    let files = media_server(vec![("menu.pdf", b"%PDF-1.4 menu".to_vec())]).await;
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send-group/{id}/media-url"),
            Some(&token),
            Some(json!({"groupJid": gid, "mediaUrl": format!("{files}/menu.pdf")})),
        )
        .await;
    assert_eq!(
        (s, v["data"]["mediaType"].as_str()),
        (200, Some("document")),
        "{v}"
    );

    // A member writes to the group: the instance's listeners see it as a group message.
    let mut req = format!("ws://{}/api/listen/{id}", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut listen, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mid = bea.send_group_text(&gid, "on my way").await.unwrap();
    let until = tokio::time::Instant::now() + DEADLINE;
    let d = loop {
        let m = tokio::time::timeout_at(until, listen.next())
            .await
            .expect("group message in time")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        if v["data"]["message_id"] == mid.as_str() {
            break v["data"].clone();
        }
    };
    assert_eq!(d["is_group"], true);
    assert_eq!(d["chat"], gid.as_str());
    assert_eq!(d["message"], "on my way");
    assert_eq!(d["from_phone"], "6281200000081");

    // Not a group JID, and a group the number is not in.
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send-group/{id}"),
            Some(&token),
            Some(json!({"groupJid": "6281200000081@s.whatsapp.net", "message": "x"})),
        )
        .await;
    assert_eq!((s, code(&v)), (400, "INVALID_GROUP_JID"));
    srv.stop().await;
}

/// A server restart on the same database: the paired instance is back online without a
/// QR, the instance that was waiting for a scan is ready for a new QR, tokens still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_brings_paired_and_qr_waiting_instances_back() {
    let net = MockNetwork::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("sudevwa-api-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let srv = TestServer::start_in(&net, dir.clone(), &[]).await;
    let (paired, paired_token) = srv.paired_instance(&net, "6281100000091").await;
    let (waiting, waiting_token) = srv.create_instance().await;
    let old_qr = srv.current_qr(&waiting, &waiting_token).await;
    let (_, v) = srv
        .admin("GET", &format!("/api/status/{waiting}"), None)
        .await;
    assert_eq!(v["data"]["status"], "qr_pending");
    srv.stop().await;

    let srv = TestServer::start_in(&net, dir, &[]).await;
    srv.wait_status(&paired, "paired instance online again", |d| {
        d["status"] == "online" && d["isConnected"] == true
    })
    .await;
    let (s, _) = srv
        .call(
            "GET",
            &format!("/api/status/{paired}"),
            Some(&paired_token),
            None,
        )
        .await;
    assert_eq!(s, 200, "instance tokens survive the restart");
    srv.wait_status(&waiting, "QR-waiting instance ready for a new QR", |d| {
        d["status"] == "qr_required"
    })
    .await;
    let new_qr = srv.current_qr(&waiting, &waiting_token).await;
    assert_ne!(new_qr, old_qr);
    net.scan_qr(&new_qr, Some("6281100000092"))
        .expect("the new code scans");
    srv.wait_status(&waiting, "online after the new scan", |d| {
        d["status"] == "online"
    })
    .await;
    srv.stop().await;
}

/// The mock drops every socket: all instances come back online by themselves, with no
/// new QR code, and keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mass_drop_every_instance_comes_back_without_a_qr() {
    let net = MockNetwork::start().await.unwrap();
    let mut hal = net.add_contact("6281200000111", "Hal").await.unwrap();
    let srv = TestServer::start(&net, "massdrop", &[]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            srv.paired_instance(&net, &format!("628110000011{i}"))
                .await
                .0,
        );
    }
    let mut ws = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}/ws", srv.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_KEY}").parse().unwrap(),
        );
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    let before: usize = net
        .accounts()
        .iter()
        .filter(|a| a.phone.starts_with("62811000001"))
        .map(|a| a.devices.len())
        .sum();
    assert!(
        net.drop_connections(None) >= 4,
        "instances and the contact lose their sockets"
    );
    // Each instance is seen going down and coming back.
    let mut back = std::collections::HashSet::new();
    let mut saw_down = std::collections::HashSet::new();
    let until = tokio::time::Instant::now() + DEADLINE;
    while back.len() < ids.len() {
        use futures_util::StreamExt;
        let m = tokio::time::timeout_at(until, ws.next())
            .await
            .expect("all back in time")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_ne!(v["event"], "QR_GENERATED", "no new QR after a drop: {v}");
        if v["event"] == "INSTANCE_STATUS_CHANGED" {
            let id = v["data"]["instance_id"].as_str().unwrap().to_string();
            if v["data"]["is_connected"] == false {
                saw_down.insert(id);
            } else if v["data"]["status"] == "online" && saw_down.contains(&id) {
                back.insert(id);
            }
        }
    }
    let after: usize = net
        .accounts()
        .iter()
        .filter(|a| a.phone.starts_with("62811000001"))
        .map(|a| a.devices.len())
        .sum();
    assert_eq!(before, after, "no device was re-paired");
    hal.connected().await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let (s, v) = srv
            .admin(
                "POST",
                &format!("/api/send/{id}"),
                Some(json!({"to": "6281200000111", "message": format!("back {i}")})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(hal.next_text().await.unwrap().text);
    }
    got.sort();
    assert_eq!(got, vec!["back 0", "back 1", "back 2"]);
    srv.stop().await;
}

/// The instance actor never waits on the network: while a media upload is held open at
/// the mock, the same instance answers its status, sends a text (in a chat of its own)
/// and takes in an incoming message; the upload then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_in_flight_does_not_hold_up_the_instance() {
    let net = MockNetwork::start().await.unwrap();
    let mut alice = net.add_contact("6281200000002", "Alice").await.unwrap();
    let bob = net.add_contact("6281200000003", "Bob").await.unwrap();
    let srv = TestServer::start(&net, "heldupload", &[]).await;
    let (id, token) = srv.paired_instance(&net, "6281100000001").await;

    net.hold_uploads(true);
    let upload = {
        let (http, url, token) = (
            srv.http.clone(),
            srv.url(&format!("/api/send/{id}/media")),
            token.clone(),
        );
        tokio::spawn(async move {
            let form = reqwest::multipart::Form::new()
                .text("to", "6281200000003")
                .text("caption", "held")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(vec![7u8; 200_000]).file_name("doc.pdf"),
                );
            let resp = http
                .post(url)
                .bearer_auth(&token)
                .multipart(form)
                .send()
                .await
                .unwrap();
            let s = resp.status().as_u16();
            (s, resp.json::<Value>().await.unwrap())
        })
    };
    let until = tokio::time::Instant::now() + DEADLINE;
    while net.uploads_held() < 1 {
        assert!(
            tokio::time::Instant::now() < until,
            "the upload never reached the mock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Status answers at once.
    let (s, v) = srv
        .call("GET", &format!("/api/status/{id}"), Some(&token), None)
        .await;
    assert_eq!(
        (s, v["data"]["status"].as_str()),
        (200, Some("online")),
        "{v}"
    );
    // A text to another chat goes out and arrives.
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/send/{id}"),
            Some(&token),
            Some(json!({"to": "6281200000002", "message": "while uploading"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(alice.next_text().await.unwrap().text, "while uploading");
    // An incoming message is taken in and logged.
    bob.send_text("6281100000001", "hello during upload")
        .await
        .unwrap();
    loop {
        let (s, v) = srv
            .call(
                "GET",
                &format!("/api/instances/{id}/messages?direction=in"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        if !v["data"]["messages"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "incoming message never logged: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // All of that happened with the upload still open.
    assert_eq!(net.uploads_held(), 1);
    assert!(!upload.is_finished(), "the media send is still waiting");

    net.hold_uploads(false);
    let (s, v) = upload.await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["mediaType"].as_str(), Some("document"));
}

/// Supervision you can see: an instance whose actor keeps failing (the test fault hook,
/// cast through the actor registry) is parked; the status route and `/ws` say
/// `crashed` with a reason, and `POST /api/instances/:id/resume` brings it back online.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashed_instance_is_visible_and_resumes_through_the_api() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "crash-resume", &[]).await;
    let (id, token) = srv.paired_instance(&net, "6281100000161").await;
    let mut req = format!("ws://{}/ws", srv.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/instances/{id}/resume"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (409, "INSTANCE_NOT_CRASHED"), "{v}");

    // Panic the actor until the supervisor gives up (default: 5 restarts in 60 s).
    let until = tokio::time::Instant::now() + DEADLINE;
    let mut last = None;
    loop {
        let (_, v) = srv
            .call("GET", &format!("/api/status/{id}"), Some(&token), None)
            .await;
        if v["data"]["status"] == "crashed" {
            break;
        }
        if let Some(actor) = ractor::registry::where_is(actors::actor_name(&id)) {
            let actor: ractor::ActorRef<actors::instance::InstanceMsg> = actor.into();
            if last != Some(actor.get_id()) {
                last = Some(actor.get_id());
                actor
                    .cast(actors::instance::InstanceMsg::Fault(
                        actors::instance::Fault::Panic,
                    ))
                    .unwrap();
            }
        }
        assert!(tokio::time::Instant::now() < until, "never parked: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, v) = srv
        .call("GET", &format!("/api/status/{id}"), Some(&token), None)
        .await;
    assert_eq!(v["data"]["isConnected"], false, "{v}");
    assert!(
        v["data"]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{v}"
    );
    assert_eq!(v["data"]["restarts"], 5, "{v}");
    // /ws says so too.
    let until = tokio::time::Instant::now() + DEADLINE;
    let (mut saw_status, mut saw_error) = (false, false);
    while !(saw_status && saw_error) {
        let frame = tokio::time::timeout_at(until, ws.next())
            .await
            .expect("crash announced on /ws")
            .unwrap()
            .unwrap();
        let Ok(text) = frame.into_text() else {
            continue;
        };
        let e: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if e["event"] == "INSTANCE_STATUS_CHANGED" && e["data"]["status"] == "crashed" {
            saw_status = true;
        }
        if e["event"] == "INSTANCE_ERROR" && e["data"]["code"] == "INSTANCE_CRASHED" {
            saw_error = true;
        }
    }
    // Resume: a fresh restart budget, and the paired session reconnects.
    let (s, v) = srv
        .call(
            "POST",
            &format!("/api/instances/{id}/resume"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    srv.wait_status(&id, "online again", |d| {
        d["status"] == "online" && d["isConnected"] == true
    })
    .await;
    let _ = ADMIN_KEY;
    srv.stop().await;
}

async fn pair_code(srv: &TestServer, id: &str, phone: &str) -> (u16, Value) {
    srv.admin(
        "POST",
        &format!("/api/pair-code/{id}"),
        Some(json!({"phone": phone})),
    )
    .await
}

/// Waits until the instance's event log holds an event `pred` accepts.
async fn wait_event(srv: &TestServer, id: &str, what: &str, pred: impl Fn(&Value) -> bool) {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, v) = srv
            .admin(
                "GET",
                &format!("/api/instances/{id}/events?limit=1000"),
                None,
            )
            .await;
        let events = v["data"]["events"].as_array().cloned().unwrap_or_default();
        if events.iter().any(&pred) {
            return;
        }
        assert!(tokio::time::Instant::now() < until, "no {what}: {events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Login by pairing code: the right code pairs (the `PAIR_CODE` notice carries it),
/// a wrong one is reported as `PAIR_CODE_FAILED` and a new code can be asked for;
/// cancel and timeout end the flow as for the QR; a paired instance refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pairing_by_code_right_wrong_cancel_and_timeout() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "pair-code", &[]).await;
    // The window running out is tried on a server with the shortest one.
    let short = TestServer::start(
        &net,
        "pair-code-short",
        &[("SUDEVWA_WHATSAPP_QR_TIMEOUT_SECS", "10")],
    )
    .await;

    // The right code.
    let (id, _) = srv.create_instance().await;
    let (s, v) = pair_code(&srv, &id, "6281100000051").await;
    assert_eq!(s, 200, "{v}");
    let code = v["data"]["code"].as_str().unwrap().to_string();
    assert_eq!(
        code.chars().filter(|c| c.is_ascii_alphanumeric()).count(),
        8,
        "{v}"
    );
    assert_eq!(v["data"]["phone"], "6281100000051");
    let st = srv
        .wait_status(&id, "qr_pending", |d| d["status"] == "qr_pending")
        .await;
    assert_eq!(st["status"], "qr_pending");
    // Asking again for the same number joins the same code; another number waits.
    let (s, again) = pair_code(&srv, &id, "6281100000051").await;
    assert_eq!(
        (s, again["data"]["code"].as_str()),
        (200, Some(code.as_str()))
    );
    let (s, other) = pair_code(&srv, &id, "6281100000059").await;
    assert_eq!((s, code_of(&other)), (409, "QR_IN_PROGRESS"), "{other}");
    wait_event(&srv, &id, "PAIR_CODE", |e| {
        e["event"] == "PAIR_CODE" && e["data"]["code"] == code.as_str()
    })
    .await;
    net.enter_pairing_code("6281100000051", &code).unwrap();
    let st = srv
        .wait_status(&id, "online", |d| {
            d["status"] == "online" && d["isConnected"] == true
        })
        .await;
    assert_eq!(st["phoneNumber"], "6281100000051", "{st}");
    let (s, v) = pair_code(&srv, &id, "6281100000051").await;
    assert_eq!((s, code_of(&v)), (409, "ALREADY_CONNECTED"), "{v}");

    // A wrong code: reported, nothing paired, a new code pairs.
    let (id, _) = srv.create_instance().await;
    let (s, v) = pair_code(&srv, &id, "6281100000052").await;
    assert_eq!(s, 200, "{v}");
    let code = v["data"]["code"].as_str().unwrap().to_string();
    let wrong: String = code
        .chars()
        .map(|c| if c == 'A' { 'B' } else { 'A' })
        .collect();
    net.enter_pairing_code("6281100000052", &wrong).unwrap();
    wait_event(&srv, &id, "PAIR_CODE_FAILED", |e| {
        e["event"] == "INSTANCE_ERROR" && e["data"]["code"] == "PAIR_CODE_FAILED"
    })
    .await;
    assert!(net
        .accounts()
        .iter()
        .find(|a| a.phone == "6281100000052")
        .is_none_or(|a| a.devices.is_empty()));
    let (s, v) = pair_code(&srv, &id, "6281100000052").await;
    assert_eq!(s, 200, "{v}");
    let fresh = v["data"]["code"].as_str().unwrap().to_string();
    net.enter_pairing_code("6281100000052", &fresh).unwrap();
    srv.wait_status(&id, "online", |d| d["status"] == "online")
        .await;

    // Cancel, then the window running out.
    let (id, _) = short.create_instance().await;
    let (s, v) = pair_code(&short, &id, "6281100000053").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = short
        .admin("DELETE", &format!("/api/qr-cancel/{id}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    wait_event(&short, &id, "QR_CANCELLED", |e| {
        e["event"] == "QR_CANCELLED"
    })
    .await;
    let (s, v) = pair_code(&short, &id, "6281100000053").await;
    assert_eq!(s, 200, "a new flow after a cancel: {v}");
    wait_event(&short, &id, "QR_TIMEOUT", |e| e["event"] == "QR_TIMEOUT").await;
    let st = short
        .wait_status(&id, "not pending", |d| d["status"] != "qr_pending")
        .await;
    assert_ne!(st["status"], "online");
    let (s, v) = pair_code(&short, &id, "").await;
    assert_eq!((s, code_of(&v)), (400, "VALIDATION_ERROR"), "{v}");
    let (s, v) = pair_code(&short, &id, "12").await;
    assert_eq!((s, code_of(&v)), (400, "INVALID_PHONE"), "{v}");
}

fn code_of(v: &Value) -> &str {
    code(v)
}

/// Group management through the API with three accounts (the instance and two
/// contacts' real clients): create, add, promote, settings, invite link and its
/// revocation, remove, join by link, leave; changes made by others arrive as
/// `group_update` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_management_round_trip_with_events() {
    use whatsapp_rust::features::GroupSubject;
    use whatsapp_rust::Jid;
    const ME: &str = "6281100000061";
    const ANN: &str = "6281200000061";
    const BEN: &str = "6281200000062";
    let net = MockNetwork::start().await.unwrap();
    let ann = net.add_contact(ANN, "Ann").await.unwrap();
    let ben = net.add_contact(BEN, "Ben").await.unwrap();
    let srv = TestServer::start(&net, "group-admin", &[]).await;
    let (id, token) = srv.paired_instance(&net, ME).await;
    let call = |method: &'static str, path: String, body: Option<Value>| {
        let (srv, token) = (&srv, token.clone());
        async move { srv.call(method, &path, Some(&token), body).await }
    };
    let base = format!("/api/instances/{id}/groups");
    let role = |v: &Value, phone: &str| {
        v["data"]["participants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phone"] == phone)
            .map(|p| p["role"].as_str().unwrap().to_string())
    };

    // Create with Ann; add Ben; promote Ann.
    let (s, v) = call(
        "POST",
        base.clone(),
        Some(json!({"name": "Trip", "participants": [ANN]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let gid = v["data"]["jid"].as_str().unwrap().to_string();
    assert_eq!(v["data"]["name"], "Trip");
    assert_eq!(role(&v, ME).as_deref(), Some("superadmin"), "{v}");
    let (s, v) = call(
        "POST",
        format!("{base}/{gid}/participants"),
        Some(json!({"action": "add", "participants": [BEN]})),
    )
    .await;
    assert_eq!(
        (s, &v["data"]["participants"][0]["ok"]),
        (200, &json!(true)),
        "{v}"
    );
    let (s, v) = call(
        "POST",
        format!("{base}/{gid}/participants"),
        Some(json!({"action": "promote", "participants": [format!("{ANN}@s.whatsapp.net")]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call("GET", format!("{base}/{gid}"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["participants"].as_array().unwrap().len(), 3);
    assert_eq!(role(&v, ANN).as_deref(), Some("admin"));
    assert_eq!(role(&v, BEN).as_deref(), Some("member"));

    // Settings: name, description, announce, locked.
    let (s, v) = call(
        "PATCH",
        format!("{base}/{gid}"),
        Some(json!({"name": "Trip 2", "description": "Bali in May", "announce": true, "locked": true})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            &v["data"]["name"],
            &v["data"]["topic"],
            &v["data"]["announce"],
            &v["data"]["locked"]
        ),
        (
            &json!("Trip 2"),
            &json!("Bali in May"),
            &json!(true),
            &json!(true)
        ),
        "{v}"
    );

    // Invite link; revoking it makes a new one.
    let (s, v) = call("GET", format!("{base}/{gid}/invite"), None).await;
    assert_eq!(s, 200, "{v}");
    let link = v["data"]["link"].as_str().unwrap().to_string();
    assert!(link.contains(v["data"]["code"].as_str().unwrap()), "{v}");
    let (s, v) = call("DELETE", format!("{base}/{gid}/invite"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["data"]["link"].as_str(), Some(link.as_str()));

    // Ann (an admin) renames it and removes Ben from her phone: the instance hears both.
    ann.client
        .groups()
        .set_subject(
            Jid::group(gid.trim_end_matches("@g.us")),
            GroupSubject::new("Ann's trip").unwrap(),
        )
        .await
        .unwrap();
    ann.client
        .groups()
        .remove_participants(Jid::group(gid.trim_end_matches("@g.us")), &[Jid::pn(BEN)])
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, v) = call(
            "GET",
            format!("/api/instances/{id}/events?limit=1000"),
            None,
        )
        .await;
        let ev: Vec<Value> = v["data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "group_update" && e["data"]["group"] == gid.as_str())
            .cloned()
            .collect();
        let subject = ev.iter().any(|e| {
            e["data"]["action"] == "subject"
                && e["data"]["subject"] == "Ann's trip"
                && e["data"]["author"] == format!("{ANN}@s.whatsapp.net")
        });
        let removed = ev.iter().any(|e| {
            e["data"]["action"] == "remove"
                && e["data"]["participants"] == json!([format!("{BEN}@s.whatsapp.net")])
        });
        if subject && removed {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "group events: {ev:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Join another group by its link, then leave it.
    let other = net.create_group("Ben's", BEN, &[ANN]).unwrap();
    let other_jid = Jid::group(other.trim_end_matches("@g.us"));
    let their_link = ben
        .client
        .groups()
        .get_invite_link(other_jid, false)
        .await
        .unwrap();
    let (s, v) = call(
        "POST",
        format!("/api/instances/{id}/join-group"),
        Some(json!({"invite": their_link})),
    )
    .await;
    assert_eq!(
        (s, v["data"]["jid"].as_str()),
        (200, Some(other.as_str())),
        "{v}"
    );
    let (s, _) = call("GET", format!("{base}/{other}"), None).await;
    assert_eq!(s, 200);
    let (s, v) = call("POST", format!("{base}/{other}/leave"), None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call("GET", format!("{base}/{other}"), None).await;
    assert_eq!((s, code(&v)), (502, "GROUP_REQUEST_FAILED"), "{v}");

    // Refusals.
    let (s, v) = call("GET", format!("{base}/123@s.whatsapp.net"), None).await;
    assert_eq!((s, code(&v)), (400, "INVALID_GROUP_JID"), "{v}");
    let (s, v) = call("PATCH", format!("{base}/{gid}"), Some(json!({}))).await;
    assert_eq!(
        (s, &v["data"]["name"]),
        (200, &json!("Ann's trip")),
        "nothing to change: {v}"
    );
    let (s, v) = call("PATCH", format!("{base}/{gid}"), Some(json!({"name": " "}))).await;
    assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"), "{v}");
    let (s, v) = call(
        "POST",
        format!("{base}/{gid}/participants"),
        Some(json!({"action": "kick", "participants": [BEN]})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"), "{v}");
}

/// Profiles and blocking through the API: a contact's about and picture; this
/// number's push name, about and picture (seen from the contact's side); blocking
/// stops a contact's messages, the block list names them, unblocking lets them through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn profiles_and_blocking() {
    use whatsapp_rust::Jid;
    const ME: &str = "6281100000071";
    const ANN: &str = "6281200000071";
    let net = MockNetwork::start().await.unwrap();
    let ann = net.add_contact(ANN, "Ann").await.unwrap();
    let srv = TestServer::start(&net, "profiles", &[]).await;
    let (id, token) = srv.paired_instance(&net, ME).await;
    let call = |method: &'static str, path: String, body: Option<Value>| {
        let (srv, token) = (&srv, token.clone());
        async move { srv.call(method, &path, Some(&token), body).await }
    };
    // A JPEG's worth of bytes, served locally for the picture URL.
    let jpeg: Vec<u8> = [0xFF, 0xD8, 0xFF, 0xE0]
        .iter()
        .copied()
        .chain((0..2000u32).map(|i| (i % 251) as u8))
        .collect();
    let served = jpeg.clone();
    let route = warp::path!("me.jpg").map(move || {
        warp::http::Response::builder()
            .header("content-type", "image/jpeg")
            .body(served.clone())
            .unwrap()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());

    // Ann's availability and typing, after subscribing to her presence.
    let (s, v) = call(
        "POST",
        format!("/api/instances/{id}/presence/subscribe"),
        Some(json!({"to": ANN})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    ann.client.presence().set_available().await.unwrap();
    wait_event(&srv, &id, "Ann's presence", |e| {
        e["event"] == "presence"
            && e["data"]["from"] == format!("{ANN}@s.whatsapp.net")
            && e["data"]["available"] == true
    })
    .await;
    ann.client
        .chatstate()
        .send_composing(&Jid::pn(ME))
        .await
        .unwrap();
    wait_event(&srv, &id, "Ann typing", |e| {
        e["event"] == "chat_presence" && e["data"]["state"] == "typing"
    })
    .await;

    // Ann's about and picture, as the instance sees them.
    ann.client
        .profile()
        .set_status_text("Hi there")
        .await
        .unwrap();
    ann.client
        .profile()
        .set_profile_picture(jpeg.clone())
        .await
        .unwrap();
    let (s, v) = call(
        "GET",
        format!("/api/instances/{id}/contacts/{ANN}/profile"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["about"], "Hi there", "{v}");
    assert!(
        v["data"]["pictureUrl"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://")),
        "{v}"
    );

    // This number's name, about and picture, as Ann sees them.
    let (s, v) = call(
        "PATCH",
        format!("/api/instances/{id}/profile"),
        Some(json!({"pushName": "Toko Maju", "about": "Open 9-5"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let info = ann
        .client
        .contacts()
        .get_user_info(&[Jid::pn(ME)])
        .await
        .unwrap();
    assert_eq!(
        info.values()
            .next()
            .and_then(|u| u.status.clone())
            .as_deref(),
        Some("Open 9-5")
    );
    let until = tokio::time::Instant::now() + DEADLINE;
    while net
        .accounts()
        .iter()
        .find(|a| a.phone == ME)
        .map(|a| a.push_name.clone())
        != Some("Toko Maju".into())
    {
        assert!(tokio::time::Instant::now() < until, "push name not set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = call(
        "POST",
        format!("/api/instances/{id}/profile/picture"),
        Some(json!({"url": format!("http://{addr}/me.jpg")})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let pic = ann
        .client
        .contacts()
        .get_profile_picture(&Jid::pn(ME), false)
        .await
        .unwrap();
    assert!(pic.is_some(), "Ann sees the new picture");
    let (s, v) = call(
        "DELETE",
        format!("/api/instances/{id}/profile/picture"),
        None,
    )
    .await;
    assert_eq!((s, &v["data"]["removed"]), (200, &json!(true)), "{v}");
    let pic = ann
        .client
        .contacts()
        .get_profile_picture(&Jid::pn(ME), false)
        .await
        .unwrap();
    assert!(pic.is_none(), "the picture is gone");

    // Block Ann: her message is not delivered; the list names her; unblock.
    let (s, v) = call(
        "POST",
        format!("/api/instances/{id}/contacts/{ANN}/block"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call("GET", format!("/api/instances/{id}/blocklist"), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["blocked"][0]["phone"], ANN, "{v}");
    ann.send_text(ME, "while blocked").await.unwrap();
    let (s, v) = call(
        "DELETE",
        format!("/api/instances/{id}/contacts/{ANN}/block"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = call("GET", format!("/api/instances/{id}/blocklist"), None).await;
    assert_eq!(v["data"]["blocked"], json!([]), "{v}");
    ann.send_text(ME, "after unblocking").await.unwrap();
    let until = tokio::time::Instant::now() + DEADLINE;
    let texts = loop {
        let (_, v) = call(
            "GET",
            format!("/api/instances/{id}/messages?direction=in"),
            None,
        )
        .await;
        let texts: Vec<String> = v["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["text"].as_str().map(str::to_string))
            .collect();
        if texts.iter().any(|t| t == "after unblocking") {
            break texts;
        }
        assert!(tokio::time::Instant::now() < until, "{texts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!texts.iter().any(|t| t == "while blocked"), "{texts:?}");

    // Refusals.
    let (s, v) = call(
        "PATCH",
        format!("/api/instances/{id}/profile"),
        Some(json!({"pushName": ""})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "VALIDATION_ERROR"), "{v}");
    let (s, v) = call(
        "POST",
        format!("/api/instances/{id}/contacts/12/block"),
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_PHONE"), "{v}");
}
