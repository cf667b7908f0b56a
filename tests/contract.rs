//! The API contract, checked from outside: schemathesis (every check, a fixed seed)
//! against the OpenAPI document the server serves, with an online sandbox instance on
//! a real server. Every request the document calls valid must be accepted (or refused
//! only for auth, a missing resource, a conflict or a rate limit), every request it
//! calls invalid refused, and every answer documented (status, content type, schema).
//!
//! The two WebSocket routes (`events` tag) are left out: schemathesis speaks plain
//! HTTP, and a plain GET there is refused by design (they are covered by the auth
//! matrix and the realtime tests). Path identifiers are random, so instance routes
//! mostly answer 404: the run checks the validation that comes before the lookup,
//! the auth, methods and envelopes, not the WhatsApp side.
//!
//! schemathesis comes from PyPI: `tests/run.sh` installs a pinned version into a
//! virtualenv and points `SUDEVWA_SCHEMATHESIS` at it.

mod common;

use common::{TestServer, ADMIN_KEY};
use mock_whatsapp::MockNetwork;
use std::time::Duration;

/// The schemathesis executable (`SUDEVWA_SCHEMATHESIS`, else `schemathesis` on PATH).
fn schemathesis() -> String {
    std::env::var("SUDEVWA_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_contract_failures() {
    let net = MockNetwork::start().await.unwrap();
    let srv = TestServer::start(&net, "contract", &[]).await;
    let (id, _) = srv.paired_instance(&net, "6281100000001").await;
    let auth = format!("Authorization: Bearer {ADMIN_KEY}");
    let report = srv.dir.join("schemathesis.out");
    let file = std::fs::File::create(&report).unwrap();
    let mut child = std::process::Command::new(schemathesis())
        // Its cache (`.schemathesis/`) goes beside the test server's files, not into the
        // checkout.
        .current_dir(&srv.dir)
        .args(["run", &srv.url("/api/openapi.json"), "-H", &auth])
        .args(["--checks", "all", "--seed", "42", "--max-examples", "20"])
        .args(["--workers", "1", "--request-timeout", "30", "--no-color"])
        .args(["--exclude-tag", "events"])
        // Hypothesis' health checks judge the generator's speed, not the API: on a
        // loaded 2-core machine they can trip, so they are off.
        .args(["--suppress-health-check", "all"])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "schemathesis could not be started ({e}): run tests/run.sh, or pip install \
                 schemathesis and set SUDEVWA_SCHEMATHESIS"
            )
        });
    // The server runs on this runtime: wait without blocking it. The deadline is a
    // bound against a hung run, not a speed goal (a run takes seconds).
    let until = tokio::time::Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > until {
            let _ = child.kill();
            panic!("schemathesis did not end within 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stdout = std::fs::read_to_string(&report).unwrap_or_default();
    assert!(
        status.success(),
        "schemathesis found contract failures:\n{stdout}"
    );
    // It really ran: every selected operation tested, cases generated, none failing.
    assert!(stdout.contains("passed"), "{stdout}");
    assert!(!stdout.contains("Runtime Error"), "{stdout}");
    // The instance it ran beside is still online: the run broke nothing.
    let s = srv
        .wait_status(&id, "online", |d| d["status"] == "online")
        .await;
    assert_eq!(s["status"], "online");
    srv.stop().await;
}
