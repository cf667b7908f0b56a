//! Auth, limits and the API description, over HTTP against the real server:
//! the auth matrix (every route × every kind of credential), rate limiting, body
//! limits, the one error envelope, CORS, and the OpenAPI document.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{code, TestServer, ADMIN_KEY, JWT_SECRET, PASSWORD, USER};
use hmac::{Hmac, Mac};
use mock_whatsapp::MockNetwork;
use serde_json::{json, Value};
use sha2::Sha256;

fn jwt(secret: &str, username: &str, exp: i64) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let b = URL_SAFE_NO_PAD
        .encode(json!({"username": username, "exp": exp, "iat": exp - 60}).to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{h}.{b}").as_bytes());
    let s = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{h}.{b}.{s}")
}

/// Who a route belongs to.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Scope {
    /// Acts on the instance in the path.
    Instance,
    /// Needs an admin token.
    AdminOnly,
    /// Any valid token (results filtered to what it may see).
    Any,
}

/// Every authenticated route, read from the OpenAPI document the server serves (the
/// one list of routes: the router is built from the same declarations), with its
/// path parameters filled in: `{id}` is instance `a`.
fn routes(doc: &Value, a: &str) -> Vec<(String, String, Scope)> {
    let mut out = Vec::new();
    for (templ, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("operations") {
            let public = op["security"].as_array().is_some_and(|s| s.is_empty());
            if public {
                continue;
            }
            let scope = if op["x-admin-only"] == true {
                Scope::AdminOnly
            } else if templ.contains("{id}") {
                Scope::Instance
            } else {
                Scope::Any
            };
            let path = templ
                .replace("{id}", a)
                .replace("{phone}", "6281100000001")
                .replace("{delivery}", "d1")
                .replace("{messageId}", "M1")
                .replace("{node}", "node-x");
            out.push((method.to_uppercase(), path, scope));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_matrix_every_route_every_credential() {
    let net = MockNetwork::start().await.unwrap();
    // Hundreds of deliberate bad credentials from one IP: the brute-force limit (tested
    // on its own below) is turned off here so every answer is the authentication verdict.
    let srv = TestServer::start(
        &net,
        "authmatrix",
        &[("SUDEVWA_LIMITS_AUTH_FAILURES_PER_MIN", "0")],
    )
    .await;
    let (a, ta) = srv.create_instance().await;
    let (b, tb) = srv.create_instance().await;
    let now = chrono::Utc::now().timestamp();
    let (s, v) = srv
        .call(
            "POST",
            "/login-jwt",
            None,
            Some(json!({"username": USER, "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, 200);
    let login = v["token"].as_str().unwrap().to_string();
    let (s, doc) = srv.admin("GET", "/api/openapi.json", None).await;
    assert_eq!(s, 200);
    let all = routes(&doc, &a);
    // The document lists what API.md promises (spot checks of each scope).
    for (m, p, scope) in [
        ("POST", "/api/login".to_string(), Scope::AdminOnly),
        ("GET", format!("/api/status/{a}"), Scope::Instance),
        (
            "POST",
            "/api/by-number/6281100000001".to_string(),
            Scope::Any,
        ),
        ("GET", "/ws".to_string(), Scope::Any),
        ("GET", format!("/api/listen/{a}"), Scope::Instance),
    ] {
        assert!(all.contains(&(m.to_string(), p.clone(), scope)), "{m} {p}");
    }
    assert!(all.len() >= 39, "{} authenticated routes", all.len());

    // Credentials that must all be refused with 401.
    let refused: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("malformed", Some("Basic dXNlcjpwYXNz".into())),
        ("empty bearer", Some("Bearer ".into())),
        ("garbage", Some("Bearer not-a-token".into())),
        (
            "expired",
            Some(format!("Bearer {}", jwt(JWT_SECRET, USER, now - 10))),
        ),
        (
            "wrong secret",
            Some(format!(
                "Bearer {}",
                jwt("another-secret-another-secret-another", USER, now + 3600)
            )),
        ),
        (
            "alg none",
            Some(format!(
                "Bearer {}.{}.",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
                URL_SAFE_NO_PAD.encode(json!({"username": USER, "exp": now + 3600}).to_string())
            )),
        ),
        (
            "unknown instance token",
            Some(format!("Bearer swa_{}", "0".repeat(64))),
        ),
        (
            "admin key with a typo",
            Some(format!("Bearer {}x", ADMIN_KEY)),
        ),
    ];
    let mut checked = 0;
    for (method, path, scope) in all {
        let method = method.as_str();
        let body = if method == "POST" {
            Some(json!({}))
        } else {
            None
        };
        for (what, header) in &refused {
            let mut r = srv.http.request(method.parse().unwrap(), srv.url(&path));
            if let Some(h) = header {
                r = r.header("authorization", h);
            }
            if let Some(b) = &body {
                r = r.json(b);
            }
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            assert_eq!(
                (status, code(&v)),
                (401, "UNAUTHORIZED"),
                "{method} {path} with {what}"
            );
            checked += 1;
        }
        // Another instance's token never acts on this instance.
        let (s, v) = srv.call(method, &path, Some(&tb), body.clone()).await;
        match scope {
            Scope::Instance | Scope::AdminOnly => {
                assert_eq!(
                    (s, code(&v)),
                    (403, "FORBIDDEN"),
                    "{method} {path} with B's token"
                )
            }
            Scope::Any => assert!(
                s != 401 && s != 403,
                "{method} {path} with B's token: {s} {v}"
            ),
        }
        // Own instance token, login JWT and admin key are let in (whatever the route
        // then answers), except admin-only routes for the instance token.
        for (who, token) in [
            ("own token", ta.as_str()),
            ("login jwt", login.as_str()),
            ("admin key", ADMIN_KEY),
        ] {
            if method == "DELETE"
                && (path.ends_with("/token") || path.starts_with("/api/instances/"))
            {
                // Destructive (revokes the token or deletes the instance the rest of
                // the matrix uses): checked once, at the end.
                continue;
            }
            let (s, v) = srv.call(method, &path, Some(token), body.clone()).await;
            if scope == Scope::AdminOnly && who == "own token" {
                assert_eq!(
                    (s, code(&v)),
                    (403, "FORBIDDEN"),
                    "{method} {path} with {who}"
                );
            } else {
                assert!(s != 401 && s != 403, "{method} {path} with {who}: {s} {v}");
            }
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked} combinations checked");

    // The destructive routes, last: the own token may delete its (unpaired) instance.
    let (s, v) = srv
        .call("DELETE", &format!("/api/instances/{b}"), Some(&ta), None)
        .await;
    assert_eq!((s, code(&v)), (403, "FORBIDDEN"));
    let (c, tc) = srv.create_instance().await;
    let (s, v) = srv
        .call("DELETE", &format!("/api/instances/{c}"), Some(&tc), None)
        .await;
    assert_eq!(s, 200, "{v}");

    // B's token did nothing to A along the way: A still exists, its token still works.
    let (s, v) = srv
        .call("GET", &format!("/api/status/{a}"), Some(&ta), None)
        .await;
    assert_eq!(s, 200, "{v}");
    // ...and A's token cannot see B.
    let (s, _) = srv
        .call("GET", &format!("/api/status/{b}"), Some(&ta), None)
        .await;
    assert_eq!(s, 403);
    // Revocation: the old token stops working, a new one works.
    let (s, v) = srv
        .admin("POST", &format!("/api/instances/{b}/token"), None)
        .await;
    assert_eq!(s, 200);
    let tb2 = v["data"]["token"].as_str().unwrap().to_string();
    let (s, v) = srv
        .admin("DELETE", &format!("/api/instances/{b}/token"), None)
        .await;
    assert_eq!((s, v["data"]["revoked"].as_u64()), (200, Some(2)));
    for t in [&tb, &tb2] {
        let (s, _) = srv
            .call("GET", &format!("/api/status/{b}"), Some(t), None)
            .await;
        assert_eq!(s, 401);
    }
    // Public routes need nothing.
    let (s, v) = srv.call("GET", "/", None, None).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (200, Some("WhatsApp API is running"))
    );
    let resp = srv.http.get(srv.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("/api/openapi.json"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_the_one_error_envelope() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(
        &net,
        "limits",
        &[
            ("SUDEVWA_LIMITS_RATE_LIMIT_PER_SEC", "1"),
            ("SUDEVWA_LIMITS_RATE_LIMIT_BURST", "40"),
            ("SUDEVWA_SERVER_CORS_ORIGINS", "https://app.example.com"),
        ],
    )
    .await;
    // Unknown route, wrong method, body too large (with and without Content-Length).
    let (s, v) = srv.admin("GET", "/api/nothing-here", None).await;
    assert_eq!((s, code(&v)), (404, "NOT_FOUND"));
    let (s, v) = srv.admin("PUT", "/api/send/x", Some(json!({}))).await;
    assert_eq!((s, code(&v)), (405, "METHOD_NOT_ALLOWED"));
    // A 405 says what the path takes.
    for (method, path, allow) in [
        ("PUT", "/api/send/x", "POST"),
        ("POST", "/api/instances", "GET"),
        ("PUT", "/api/instances/x/token", "POST, DELETE"),
        ("DELETE", "/", "GET"),
    ] {
        let r = srv
            .http
            .request(method.parse().unwrap(), srv.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
    }
    // The server answers 413 without reading the rest of the body, so the client may
    // still be writing when the connection closes (a broken pipe instead of the answer).
    // Each case is tried a few times and must be answered 413 with the envelope at least
    // once; no attempt may get any other answer.
    for chunked in [false, true] {
        let mut answered = false;
        for _ in 0..5 {
            let req = srv.http.post(srv.url("/api/send/x")).bearer_auth(ADMIN_KEY);
            let req = if chunked {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                    (0..9).map(|_| Ok(vec![b' '; 8192])).collect();
                req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                )))
            } else {
                req.json(&json!({"to": "6281200000002", "message": "x".repeat(70_000)}))
            };
            match req.send().await {
                Ok(resp) => {
                    assert_eq!(resp.status(), 413, "chunked: {chunked}");
                    let v: Value = resp.json().await.unwrap();
                    assert_eq!(code(&v), "PAYLOAD_TOO_LARGE");
                    answered = true;
                    break;
                }
                Err(e) => assert!(e.is_request(), "only a cut-off write may fail: {e}"),
            }
        }
        assert!(answered, "413 seen (chunked: {chunked})");
    }
    // CORS for the configured origin only.
    let resp = srv
        .http
        .request(reqwest::Method::OPTIONS, srv.url("/api/validate"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let resp = srv
        .http
        .get(srv.url("/api/validate"))
        .bearer_auth(ADMIN_KEY)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    // Rate limit: the burst is spent, then 429 with Retry-After; health is exempt.
    let mut limited = None;
    for i in 0..60 {
        let resp = srv
            .http
            .get(srv.url("/api/validate"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            let retry = resp.headers()["retry-after"].to_str().unwrap().to_string();
            limited = Some((i, retry, resp.json::<Value>().await.unwrap()));
            break;
        }
    }
    let (i, retry, v) = limited.expect("rate limited within 60 requests");
    assert!(
        i >= 25,
        "the burst of 40 was allowed first (limited at {i})"
    );
    assert_eq!(code(&v), "RATE_LIMITED");
    assert!(retry.parse::<u64>().unwrap() >= 1);
    let (s, _) = srv.call("GET", "/", None, None).await;
    assert_eq!(s, 200, "health is not rate limited");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_validates_and_lists_every_route() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "openapi", &[]).await;
    let (a, _) = srv.create_instance().await;
    let (s, doc) = srv.admin("GET", "/api/openapi.json", None).await;
    assert_eq!(s, 200);
    // Structure: it parses as an OpenAPI 3.0 document...
    let parsed: openapiv3::OpenAPI =
        serde_json::from_value(doc.clone()).expect("valid OpenAPI 3.0");
    assert!(parsed.openapi.starts_with("3.0"));
    // ...every $ref resolves, and every path parameter is declared.
    let text = doc.to_string();
    for r in text.match_indices("#/components/schemas/") {
        let name: String = text[r.0 + 21..]
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect();
        assert!(
            doc["components"]["schemas"][&name].is_object(),
            "dangling $ref {name}"
        );
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            let declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter(|x| x["in"] == "path")
                        .map(|x| x["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            let in_path: Vec<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            assert_eq!(declared, in_path, "{path}");
            assert!(op["responses"]["200"].is_object(), "{path}");
        }
    }
    // Every documented route is served (the router and the document come from the
    // same declarations; this checks the declarations are all wired).
    let mut all = routes(&doc, &a);
    all.extend([
        ("GET".to_string(), "/".to_string(), Scope::Any),
        ("GET".to_string(), "/docs".to_string(), Scope::Any),
        ("POST".to_string(), "/login-jwt".to_string(), Scope::Any),
    ]);
    for (method, path, _) in all {
        let method = method.as_str();
        let body = if method == "POST" {
            Some(json!({}))
        } else {
            None
        };
        let (s, v) = srv.admin(method, &path, body).await;
        assert!(
            !(s == 404 && v["error"]["code"] == "NOT_FOUND") && s != 405,
            "{method} {path} is not served: {s} {v}"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_limits_admit_integrators_and_stop_guessers() {
    let net = MockNetwork::start().await.unwrap();
    // The shipped defaults: no per-IP limit for authenticated callers, failures limited.
    let srv = TestServer::start(&net, "defaults", &[]).await;
    let (id, token) = srv.create_instance().await;
    // A plain integration flow: 100 authenticated calls from one IP within about a
    // second (10 callers, 10 calls each), none refused.
    let started = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for c in 0..10 {
        let (http, base, id, token) = (srv.http.clone(), srv.url(""), id.clone(), token.clone());
        calls.spawn(async move {
            let mut codes = Vec::new();
            for i in 0..10 {
                let path = match (c + i) % 3 {
                    0 => "/api/validate".to_string(),
                    1 => format!("/api/status/{id}"),
                    _ => format!("/api/instances/{id}/messages"),
                };
                let resp = http
                    .get(format!("{base}{path}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("answered");
                codes.push(resp.status().as_u16());
            }
            codes
        });
    }
    let mut codes = Vec::new();
    while let Some(r) = calls.join_next().await {
        codes.extend(r.unwrap());
    }
    assert_eq!(codes.len(), 100);
    assert!(
        codes.iter().all(|c| *c == 200),
        "no call refused: {codes:?} (in {:?})",
        started.elapsed()
    );
    // 20 wrong passwords in a row from one IP: the first ones 401, then 429.
    let mut seen = Vec::new();
    for _ in 0..20 {
        let (s, v) = srv
            .call(
                "POST",
                "/login-jwt",
                None,
                Some(json!({"username": USER, "password": "guess"})),
            )
            .await;
        seen.push((s, code(&v).to_string()));
    }
    assert_eq!(seen[0], (401, "INVALID_CREDENTIALS".to_string()));
    assert_eq!(
        seen[19],
        (429, "RATE_LIMITED".to_string()),
        "wrong passwords are limited: {seen:?}"
    );
    assert!(
        seen.iter().filter(|(s, _)| *s == 401).count() <= 10,
        "at most the burst of 10 failures is judged: {seen:?}"
    );
    // The address is now refused on authenticated routes too, even with a valid key,
    // until the bucket refills (Retry-After says when).
    let resp = srv
        .http
        .get(srv.url("/api/validate"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "retry after {retry}s");
    let (s, _) = srv.call("GET", "/", None, None).await;
    assert_eq!(s, 200, "health is never limited");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_governor_paces_an_instance_when_configured() {
    let net = MockNetwork::start().await.unwrap();
    let _alice = net.add_contact("6281200000002", "Alice").await.unwrap();
    let _bob = net.add_contact("6281200000003", "Bob").await.unwrap();
    let srv = TestServer::start(
        &net,
        "governor",
        &[
            ("SUDEVWA_LIMITS_SEND_PER_MIN", "3"),
            ("SUDEVWA_LIMITS_NEW_CHATS_PER_HOUR", "1"),
        ],
    )
    .await;
    let (id, token) = srv.paired_instance(&net, "6281100000001").await;
    let send = |to: &'static str| {
        let (srv, id, token) = (&srv, id.clone(), token.clone());
        async move {
            srv.call(
                "POST",
                &format!("/api/send/{id}"),
                Some(&token),
                Some(json!({"to": to, "message": "hi"})),
            )
            .await
        }
    };
    let (s, v) = send("6281200000002").await;
    assert_eq!(s, 200, "{v}");
    // A second new chat within the hour is over the first-contact limit.
    let (s, v) = send("6281200000003").await;
    assert_eq!((s, code(&v)), (429, "RATE_LIMITED"), "{v}");
    // The known chat still gets its sends, up to 3 a minute.
    let (s, v) = send("6281200000002").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = send("6281200000002").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = send("6281200000002").await;
    assert_eq!((s, code(&v)), (429, "RATE_LIMITED"), "{v}");
    srv.stop().await;
}
