//! Conformance suite for `WaStore`, whatsapp-rust's storage `Backend` on sea-orm.
//!
//! One scenario drives every trait method (batch variants, deletes, expiry sweeps at
//! their boundaries, overwrite and merge rules, not-found) and records what it
//! observes as a transcript. The transcript of wacore's `InMemoryBackend` is the
//! reference; `WaStore` on SQLite and on PostgreSQL must produce it line for line.
//! Then, on both databases: instance isolation and scoped wipe, racing writers
//! (`take_sent_message` hands a payload out once, tc-token and msg-secret merges
//! converge), migration down/up, and the footprint of a freshly created device with
//! its default pre-key window.
//!
//! PostgreSQL comes from `SUDEVWA_TEST_POSTGRES_URL` (tests/run.sh starts one); each
//! test creates its own database there. Without the variable those tests fail.
//!
//! Time: the suite installs a wacore time provider that reads a per-thread override,
//! so the scenario (on a current-thread runtime) stamps sent messages and pending
//! inbound rows at exact seconds and can probe the sweep cutoffs at the boundary.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use sudevwa::config::{DatabaseConfig, DbKind};
use sudevwa::store::db;
use sudevwa::store::wa::{wa_tables, WaStore, DEVICE_ID};
use wacore::appstate::hash::HashState;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::traits::{
    AppStateSyncKey, AppSyncStore, Backend, DeviceInfo, DeviceListRecord, DeviceStore,
    LidPnMappingEntry, MsgSecretEntry, MsgSecretStore, PendingInboundKey, PendingInboundRow,
    ProtocolStore, SignalStore, TcTokenEntry,
};
use wacore::store::{Device, InMemoryBackend};

// ---------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------

thread_local! {
    /// Wall-clock override (unix ms) for this thread; `None` = real time.
    static NOW_MS: Cell<Option<i64>> = const { Cell::new(None) };
}

/// wacore time provider honouring [`NOW_MS`].
struct TestClock;

impl wacore::time::TimeProvider for TestClock {
    fn now_millis(&self) -> i64 {
        NOW_MS
            .with(Cell::get)
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
    }
}

/// Installs [`TestClock`] (once per process; every test calls this before touching
/// wacore) and checks it is the provider in effect.
fn install_clock() {
    let _ = wacore::time::set_time_provider(TestClock);
    set_now(42);
    assert_eq!(
        wacore::time::now_secs(),
        42,
        "the test clock is not wacore's time provider"
    );
    NOW_MS.with(|c| c.set(None));
}

/// Pins this thread's wall clock to `secs`.
fn set_now(secs: i64) {
    NOW_MS.with(|c| c.set(Some(secs * 1000)));
}

// ---------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------

static DB_SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "sudevwa_storage_{name}_{}_{}_{nanos}",
        std::process::id(),
        DB_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Which database a test runs on.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Postgres,
}

/// A SQLite test file, removed (with its WAL and shm files) when the test ends.
struct DbFile(Option<PathBuf>);

impl Drop for DbFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A fresh, migrated database of `kind`, opened with the server's own pool settings.
/// PostgreSQL databases are left to the throw-away server (tests/run.sh).
async fn fresh_db(kind: Kind, name: &str) -> (DatabaseConnection, DbFile) {
    let mut file = DbFile(None);
    let cfg = match kind {
        Kind::Sqlite => {
            let path = std::env::temp_dir().join(format!("{}.db", unique(name)));
            file.0 = Some(path.clone());
            DatabaseConfig {
                url: format!("sqlite://{}?mode=rwc", path.display()),
                kind: DbKind::Sqlite,
                sqlite_path: Some(path),
                max_connections: 16,
                acquire_timeout: Duration::from_secs(30),
                fence_node: None,
            }
        }
        Kind::Postgres => {
            let admin_url = std::env::var("SUDEVWA_TEST_POSTGRES_URL").unwrap_or_else(|_| {
                panic!(
                    "SUDEVWA_TEST_POSTGRES_URL is not set: the PostgreSQL storage tests need a \
                     server (postgres://postgres@127.0.0.1:PORT/postgres, trust auth); \
                     tests/run.sh starts one and sets it"
                )
            });
            let db_name = unique(name);
            let admin = sea_orm::Database::connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{db_name}\""))
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {db_name}: {e}"));
            admin.close().await.ok();
            let (base, query) = match admin_url.split_once('?') {
                Some((b, q)) => (b, format!("?{q}")),
                None => (admin_url.as_str(), String::new()),
            };
            let server = base
                .rsplit_once('/')
                .map(|(s, _)| s)
                .filter(|s| s.contains("://") && !s.ends_with('/'))
                .unwrap_or(base);
            DatabaseConfig {
                url: format!("{server}/{db_name}{query}"),
                kind: DbKind::Postgres,
                sqlite_path: None,
                max_connections: 16,
                acquire_timeout: Duration::from_secs(30),
                fence_node: None,
            }
        }
    };
    let conn = db::connect(&cfg).await.expect("connect");
    Migrator::up(&conn, None).await.expect("migrate");
    (conn, file)
}

/// Runs one scalar query (first column as i64).
async fn scalar(conn: &DatabaseConnection, sql: &str) -> i64 {
    let row = conn
        .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: no row"));
    row.try_get_by_index::<Option<i64>>(0)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or(0)
}

/// Rows of `instance` in every whatsapp table, by table.
async fn rows_of(conn: &DatabaseConnection, instance: &str) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for t in wa_tables() {
        let n = scalar(
            conn,
            &format!("SELECT COUNT(*) FROM {t} WHERE instance_id = '{instance}'"),
        )
        .await;
        out.insert(t, n);
    }
    out
}

// ---------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------

/// What the scenario saw, one line per observation.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    fn rec(&mut self, step: &str, value: impl Debug) {
        self.0.push(format!("{step} => {value:?}"));
    }
}

/// Unwraps a store result, failing the test with the step and the error chain.
fn ok<T>(step: &str, r: wacore::store::error::Result<T>) -> T {
    r.unwrap_or_else(|e| {
        let mut msg = format!("{step}: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        panic!("{msg}")
    })
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// `HashState` with its map in a stable order.
fn hash_state(h: &HashState) -> (u64, String, BTreeMap<String, Vec<u8>>, bool) {
    (
        h.version,
        hex::encode(h.hash),
        h.index_value_map.clone().into_iter().collect(),
        h.mac_mismatch_fatal,
    )
}

fn lid(lid: &str, pn: &str, t: i64, source: &str) -> LidPnMappingEntry {
    LidPnMappingEntry {
        lid: lid.into(),
        phone_number: pn.into(),
        created_at: t,
        updated_at: t + 1,
        learning_source: source.into(),
    }
}

fn lid_key(e: &LidPnMappingEntry) -> String {
    format!("{e:?}")
}

fn secret(
    chat: &str,
    sender: &str,
    id: &str,
    s: u8,
    expires_at: i64,
    message_ts: i64,
) -> MsgSecretEntry {
    MsgSecretEntry {
        chat: chat.into(),
        sender: sender.into(),
        msg_id: id.into(),
        secret: [s; 32],
        expires_at,
        message_ts,
    }
}

fn mac(i: u8, v: u8) -> AppStateMutationMAC {
    AppStateMutationMAC {
        index_mac: vec![i; 32],
        value_mac: vec![v; 32],
    }
}

/// Drives every trait method of `b` and records the observable results.
/// Must run on a current-thread runtime (it pins the thread's clock).
async fn scenario(b: &dyn Backend, device: &Device) -> Vec<String> {
    let mut t = Transcript::default();

    // --- identities ---
    let (a, bb, c) = ("1555:1@s.whatsapp.net", "1555:2@s.whatsapp.net", "1666@lid");
    t.rec("load_identity absent", ok("li", b.load_identity(a).await));
    ok("pi", b.put_identity(a, [1; 32]).await);
    t.rec("load_identity", ok("li", b.load_identity(a).await));
    ok("pi", b.put_identity(a, [2; 32]).await);
    t.rec(
        "load_identity overwritten",
        ok("li", b.load_identity(a).await),
    );
    ok(
        "pib",
        b.put_identities_batch(&[
            (bb.into(), [3; 32]),
            (c.into(), [4; 32]),
            (bb.into(), [5; 32]),
        ])
        .await,
    );
    ok("pib empty", b.put_identities_batch(&[]).await);
    t.rec(
        "batch identity last wins",
        ok("li", b.load_identity(bb).await),
    );
    t.rec("batch identity", ok("li", b.load_identity(c).await));
    ok("di", b.delete_identity(c).await);
    ok("di absent", b.delete_identity("nobody@lid").await);
    t.rec("load_identity deleted", ok("li", b.load_identity(c).await));

    // --- sessions ---
    t.rec("get_session absent", ok("gs", b.get_session(a).await));
    t.rec("has_session absent", ok("hs", b.has_session(a).await));
    ok("ps", b.put_session(a, b"s1").await);
    ok("ps", b.put_session(a, b"s1-v2").await);
    t.rec("get_session overwritten", ok("gs", b.get_session(a).await));
    t.rec("has_session", ok("hs", b.has_session(a).await));
    ok(
        "psb",
        b.put_sessions_batch(&[
            (bb.into(), Bytes::from_static(b"s2")),
            (c.into(), Bytes::from_static(b"s3")),
            (bb.into(), Bytes::from_static(b"s2-v2")),
        ])
        .await,
    );
    ok("psb empty", b.put_sessions_batch(&[]).await);
    t.rec("batch session last wins", ok("gs", b.get_session(bb).await));
    t.rec("batch session", ok("gs", b.get_session(c).await));
    ok("ds", b.delete_session(c).await);
    ok("ds absent", b.delete_session("nobody@lid").await);
    t.rec("has_session deleted", ok("hs", b.has_session(c).await));

    // --- has_signal_state_for_user: prefix + separator, exact case, no wildcards ---
    ok("ps", b.put_session("abc@lid", b"x").await);
    ok("pi", b.put_identity("7777@s.whatsapp.net", [7; 32]).await);
    for user in [
        "1555", "155", "15", "1666", "7777", "777", "abc", "ABC", "ab_", "a%", "", "1555:1",
    ] {
        t.rec(
            &format!("has_signal_state_for_user {user:?}"),
            ok("hss", b.has_signal_state_for_user(user).await),
        );
    }

    // --- one-time pre-keys ---
    t.rec("max prekey empty", ok("max", b.get_max_prekey_id().await));
    t.rec("load_prekey absent", ok("lp", b.load_prekey(1).await));
    ok("sp", b.store_prekey(5, b"pk5", false).await);
    ok(
        "spb",
        b.store_prekeys_batch(
            &[
                (1, Bytes::from_static(b"pk1")),
                (2, Bytes::from_static(b"pk2")),
                (3, Bytes::from_static(b"pk3")),
                (2, Bytes::from_static(b"pk2-v2")),
            ],
            false,
        )
        .await,
    );
    ok("spb empty", b.store_prekeys_batch(&[], true).await);
    t.rec("max prekey", ok("max", b.get_max_prekey_id().await));
    t.rec(
        "load_prekeys_batch order/dups/missing",
        ok("lpb", b.load_prekeys_batch(&[3, 99, 1, 3, 2]).await),
    );
    t.rec(
        "load_prekeys_batch empty",
        ok("lpb", b.load_prekeys_batch(&[]).await),
    );
    ok("mark", b.mark_prekeys_uploaded(&[1, 77]).await);
    ok("mark empty", b.mark_prekeys_uploaded(&[]).await);
    t.rec("mark does not resurrect", ok("lp", b.load_prekey(77).await));
    t.rec("marked prekey unchanged", ok("lp", b.load_prekey(1).await));
    ok("sp overwrite", b.store_prekey(1, b"pk1-v2", true).await);
    t.rec("prekey overwritten", ok("lp", b.load_prekey(1).await));
    ok("rp", b.remove_prekey(5).await);
    ok("rp absent", b.remove_prekey(5).await);
    t.rec("max after remove", ok("max", b.get_max_prekey_id().await));
    ok("sp max", b.store_prekey(u32::MAX, b"pkmax", false).await);
    t.rec("max u32", ok("max", b.get_max_prekey_id().await));
    t.rec("load u32::MAX", ok("lp", b.load_prekey(u32::MAX).await));
    ok("rp", b.remove_prekey(u32::MAX).await);
    // A window larger than one INSERT statement.
    let big: Vec<(u32, Bytes)> = (1000..1700u32)
        .map(|i| (i, Bytes::from(format!("record-{i}").into_bytes())))
        .collect();
    ok("spb big", b.store_prekeys_batch(&big, false).await);
    let ids: Vec<u32> = (990..1710).collect();
    let loaded = ok("lpb big", b.load_prekeys_batch(&ids).await);
    t.rec(
        "big batch loaded",
        (
            loaded.len(),
            loaded.first().cloned(),
            loaded.last().cloned(),
        ),
    );
    t.rec("big batch equal", loaded == big);
    ok("mark big", b.mark_prekeys_uploaded(&ids).await);
    t.rec("max big", ok("max", b.get_max_prekey_id().await));

    // --- signed pre-keys ---
    t.rec(
        "load_signed absent",
        ok("lsp", b.load_signed_prekey(1).await),
    );
    t.rec(
        "load_all_signed empty",
        ok("lasp", b.load_all_signed_prekeys().await),
    );
    ok("ssp", b.store_signed_prekey(1, b"spk1").await);
    ok("ssp", b.store_signed_prekey(2, b"spk2").await);
    ok("ssp", b.store_signed_prekey(1, b"spk1-v2").await);
    t.rec("load_signed", ok("lsp", b.load_signed_prekey(1).await));
    t.rec(
        "load_all_signed",
        sorted(ok("lasp", b.load_all_signed_prekeys().await)),
    );
    ok("rsp", b.remove_signed_prekey(2).await);
    ok("rsp absent", b.remove_signed_prekey(2).await);
    t.rec(
        "load_all_signed after remove",
        sorted(ok("lasp", b.load_all_signed_prekeys().await)),
    );

    // --- sender keys ---
    let (g1, g2) = ("120363@g.us::1555:1", "120363@g.us::1666:0");
    t.rec(
        "get_sender_key absent",
        ok("gsk", b.get_sender_key(g1).await),
    );
    ok("psk", b.put_sender_key(g1, b"sk1").await);
    ok("psk", b.put_sender_key(g1, b"sk1-v2").await);
    t.rec(
        "sender key overwritten",
        ok("gsk", b.get_sender_key(g1).await),
    );
    ok(
        "pskb",
        b.put_sender_keys_batch(&[
            (g2.into(), Bytes::from_static(b"sk2")),
            (g1.into(), Bytes::from_static(b"sk1-v3")),
            (g2.into(), Bytes::from_static(b"sk2-v2")),
        ])
        .await,
    );
    t.rec(
        "batch sender keys",
        (
            ok("g", b.get_sender_key(g1).await),
            ok("g", b.get_sender_key(g2).await),
        ),
    );
    ok("dsk", b.delete_sender_key(g1).await);
    ok("dsk absent", b.delete_sender_key(g1).await);
    t.rec("sender key deleted", ok("gsk", b.get_sender_key(g1).await));

    // --- app-state sync keys ---
    let key = |d: u8, ts: i64| AppStateSyncKey {
        key_data: vec![d; 32],
        fingerprint: vec![d, d],
        timestamp: ts,
    };
    t.rec("get_sync_key absent", ok("gk", b.get_sync_key(b"k1").await));
    t.rec("latest absent", ok("lk", b.get_latest_sync_key_id().await));
    ok("sk", b.set_sync_key(b"k1", key(1, 10)).await);
    ok("sk", b.set_sync_key(b"k2", key(2, 20)).await);
    t.rec("latest", ok("lk", b.get_latest_sync_key_id().await));
    ok("sk", b.set_sync_key(b"k1", key(3, 30)).await);
    t.rec(
        "latest after re-set",
        ok("lk", b.get_latest_sync_key_id().await),
    );
    t.rec(
        "sync key overwritten",
        ok("gk", b.get_sync_key(b"k1").await),
    );
    t.rec("sync key", ok("gk", b.get_sync_key(b"k2").await));

    // --- app-state versions ---
    t.rec(
        "version absent",
        hash_state(&ok("gv", b.get_version("regular").await)),
    );
    let mut hs = HashState {
        version: 7,
        ..HashState::default()
    };
    hs.hash[0] = 0xAB;
    hs.hash[127] = 0xCD;
    hs.index_value_map.insert("idx-a".into(), vec![1, 2, 3]);
    hs.index_value_map.insert("idx-b".into(), vec![]);
    ok("sv", b.set_version("regular", hs.clone()).await);
    t.rec(
        "version",
        hash_state(&ok("gv", b.get_version("regular").await)),
    );
    hs.version = 8;
    hs.mac_mismatch_fatal = true;
    hs.index_value_map.remove("idx-a");
    ok("sv", b.set_version("regular", hs).await);
    t.rec(
        "version overwritten",
        hash_state(&ok("gv", b.get_version("regular").await)),
    );
    t.rec(
        "other version absent",
        hash_state(&ok("gv", b.get_version("critical_block").await)),
    );

    // --- mutation MACs ---
    t.rec(
        "mac absent",
        ok("gm", b.get_mutation_mac("regular", &[1; 32]).await),
    );
    ok(
        "pm",
        b.put_mutation_macs("regular", 1, &[mac(1, 10), mac(2, 20), mac(1, 11)])
            .await,
    );
    ok(
        "pm",
        b.put_mutation_macs("critical", 1, &[mac(1, 30)]).await,
    );
    ok("pm empty", b.put_mutation_macs("regular", 2, &[]).await);
    t.rec(
        "mac last wins",
        ok("gm", b.get_mutation_mac("regular", &[1; 32]).await),
    );
    t.rec(
        "mac other collection",
        ok("gm", b.get_mutation_mac("critical", &[1; 32]).await),
    );
    ok(
        "pm overwrite",
        b.put_mutation_macs("regular", 2, &[mac(2, 21)]).await,
    );
    let macs = ok(
        "gms",
        b.get_mutation_macs("regular", &[[1; 32], [2; 32], [9; 32]])
            .await,
    );
    t.rec(
        "get_mutation_macs",
        macs.into_iter().collect::<BTreeMap<_, _>>(),
    );
    t.rec(
        "get_mutation_macs empty",
        ok("gms", b.get_mutation_macs("regular", &[]).await),
    );
    ok(
        "dm",
        b.delete_mutation_macs("regular", &[vec![2; 32], vec![8; 32]])
            .await,
    );
    ok("dm empty", b.delete_mutation_macs("regular", &[]).await);
    t.rec(
        "mac deleted",
        ok("gm", b.get_mutation_mac("regular", &[2; 32]).await),
    );
    t.rec(
        "mac kept",
        ok("gm", b.get_mutation_mac("regular", &[1; 32]).await),
    );
    ok("cm", b.clear_mutation_macs("critical").await);
    t.rec(
        "cleared collection",
        ok("gm", b.get_mutation_mac("critical", &[1; 32]).await),
    );
    t.rec(
        "other collection kept",
        ok("gm", b.get_mutation_mac("regular", &[1; 32]).await),
    );
    let many: Vec<AppStateMutationMAC> = (0..300u32)
        .map(|i| AppStateMutationMAC {
            index_mac: {
                let mut m = vec![0xEE; 32];
                m[..4].copy_from_slice(&i.to_be_bytes());
                m
            },
            value_mac: i.to_le_bytes().to_vec(),
        })
        .collect();
    ok("pm big", b.put_mutation_macs("regular_low", 3, &many).await);
    let wanted: Vec<[u8; 32]> = many
        .iter()
        .map(|m| m.index_mac.as_slice().try_into().unwrap())
        .collect();
    t.rec(
        "big get_mutation_macs",
        ok("gms", b.get_mutation_macs("regular_low", &wanted).await).len(),
    );
    let doomed: Vec<Vec<u8>> = many.iter().take(280).map(|m| m.index_mac.clone()).collect();
    ok(
        "dm big",
        b.delete_mutation_macs("regular_low", &doomed).await,
    );
    t.rec(
        "big after delete",
        ok("gms", b.get_mutation_macs("regular_low", &wanted).await).len(),
    );
    ok("cm", b.clear_mutation_macs("regular_low").await);

    // --- sender-key device tracking ---
    let (gr1, gr2) = ("120363001@g.us", "120363002@g.us");
    t.rec("skd absent", ok("skd", b.get_sender_key_devices(gr1).await));
    ok(
        "sks",
        b.set_sender_key_status(
            gr1,
            &[
                ("1555:1@s.whatsapp.net", true),
                ("1666:0@lid", false),
                ("1555:1@s.whatsapp.net", false),
            ],
        )
        .await,
    );
    ok(
        "sks",
        b.set_sender_key_status(
            gr2,
            &[("1555:1@s.whatsapp.net", true), ("1777:2@lid", true)],
        )
        .await,
    );
    ok("sks empty", b.set_sender_key_status(gr2, &[]).await);
    t.rec(
        "skd g1",
        sorted(ok("skd", b.get_sender_key_devices(gr1).await)),
    );
    t.rec(
        "skd g2",
        sorted(ok("skd", b.get_sender_key_devices(gr2).await)),
    );
    ok(
        "dskr",
        b.delete_sender_key_device_rows(&["1555:1@s.whatsapp.net", "9999:9@lid"])
            .await,
    );
    ok("dskr empty", b.delete_sender_key_device_rows(&[]).await);
    t.rec(
        "skd rows deleted g1",
        sorted(ok("skd", b.get_sender_key_devices(gr1).await)),
    );
    t.rec(
        "skd rows deleted g2",
        sorted(ok("skd", b.get_sender_key_devices(gr2).await)),
    );
    ok("cskd", b.clear_sender_key_devices(gr1).await);
    t.rec(
        "skd cleared g1",
        ok("skd", b.get_sender_key_devices(gr1).await),
    );
    t.rec(
        "skd kept g2",
        sorted(ok("skd", b.get_sender_key_devices(gr2).await)),
    );
    ok(
        "sks",
        b.set_sender_key_status(gr1, &[("1888:1@lid", true)]).await,
    );
    ok("caskd", b.clear_all_sender_key_devices().await);
    t.rec(
        "skd all cleared",
        (
            ok("s", b.get_sender_key_devices(gr1).await),
            ok("s", b.get_sender_key_devices(gr2).await),
        ),
    );

    // --- LID ↔ PN ---
    t.rec(
        "lid absent",
        ok("gl", b.get_lid_mapping("100").await).map(|e| lid_key(&e)),
    );
    t.rec(
        "pn absent",
        ok("gp", b.get_pn_mapping("5511").await).map(|e| lid_key(&e)),
    );
    ok(
        "pl",
        b.put_lid_mapping(&lid("100", "5511", 1, "usync")).await,
    );
    t.rec(
        "lid",
        ok("gl", b.get_lid_mapping("100").await).map(|e| lid_key(&e)),
    );
    t.rec(
        "pn",
        ok("gp", b.get_pn_mapping("5511").await).map(|e| lid_key(&e)),
    );
    ok(
        "pl move",
        b.put_lid_mapping(&lid("100", "5522", 2, "peer_pn_message"))
            .await,
    );
    t.rec(
        "pn old phone after move",
        ok("gp", b.get_pn_mapping("5511").await).map(|e| lid_key(&e)),
    );
    t.rec(
        "pn new phone after move",
        ok("gp", b.get_pn_mapping("5522").await).map(|e| lid_key(&e)),
    );
    ok(
        "pl same phone",
        b.put_lid_mapping(&lid("200", "5522", 3, "usync")).await,
    );
    t.rec(
        "pn most recent lid",
        ok("gp", b.get_pn_mapping("5522").await).map(|e| lid_key(&e)),
    );
    t.rec(
        "older lid kept",
        ok("gl", b.get_lid_mapping("100").await).map(|e| lid_key(&e)),
    );
    ok(
        "pls",
        b.put_lid_mappings(&[
            lid("300", "5533", 4, "a"),
            lid("300", "5544", 5, "b"),
            lid("400", "5533", 6, "c"),
        ])
        .await,
    );
    ok("pls empty", b.put_lid_mappings(&[]).await);
    for pn in ["5533", "5544"] {
        t.rec(
            &format!("batch pn {pn}"),
            ok("gp", b.get_pn_mapping(pn).await).map(|e| lid_key(&e)),
        );
    }
    // Reference quirk kept on purpose: moving a LID off a phone clears that phone's
    // pointer even when another LID had claimed it since.
    ok("pl", b.put_lid_mapping(&lid("500", "5555", 7, "a")).await);
    ok("pl", b.put_lid_mapping(&lid("600", "5555", 8, "b")).await);
    ok("pl", b.put_lid_mapping(&lid("500", "5566", 9, "c")).await);
    t.rec(
        "pn pointer cleared by move",
        ok("gp", b.get_pn_mapping("5555").await).map(|e| lid_key(&e)),
    );
    t.rec(
        "pn pointer of moved lid",
        ok("gp", b.get_pn_mapping("5566").await).map(|e| lid_key(&e)),
    );
    let all = ok("gal", b.get_all_lid_mappings().await);
    t.rec(
        "all lid mappings",
        sorted(all.iter().map(lid_key).collect()),
    );

    // --- base keys ---
    t.rec(
        "base key absent",
        ok("hsbk", b.has_same_base_key(a, "m1", b"bk").await),
    );
    ok("sbk", b.save_base_key(a, "m1", b"bk").await);
    t.rec(
        "base key same",
        ok("hsbk", b.has_same_base_key(a, "m1", b"bk").await),
    );
    t.rec(
        "base key different",
        ok("hsbk", b.has_same_base_key(a, "m1", b"bk2").await),
    );
    t.rec(
        "base key other message",
        ok("hsbk", b.has_same_base_key(a, "m2", b"bk").await),
    );
    ok("sbk overwrite", b.save_base_key(a, "m1", b"bk2").await);
    t.rec(
        "base key overwritten",
        ok("hsbk", b.has_same_base_key(a, "m1", b"bk2").await),
    );
    ok("dbk", b.delete_base_key(a, "m1").await);
    ok("dbk absent", b.delete_base_key(a, "m1").await);
    t.rec(
        "base key deleted",
        ok("hsbk", b.has_same_base_key(a, "m1", b"bk2").await),
    );

    // --- device lists ---
    let record = |user: &str, n: u32, raw: Option<u32>, phash: Option<&str>| DeviceListRecord {
        user: user.into(),
        devices: (0..n)
            .map(|d| DeviceInfo::new(d, Some(d + 1)).with_hosting(d == 2))
            .chain(std::iter::once(DeviceInfo::new(99, None)))
            .collect(),
        timestamp: 1_700_000_000 + i64::from(n),
        phash: phash.map(Into::into),
        raw_id: raw,
    };
    t.rec("devices absent", ok("gd", b.get_devices("1555").await));
    ok(
        "udl",
        b.update_device_list(record("1555", 2, Some(7), Some("2:abc")))
            .await,
    );
    t.rec("devices", ok("gd", b.get_devices("1555").await));
    ok(
        "udl overwrite",
        b.update_device_list(record("1555", 3, None, None)).await,
    );
    t.rec("devices overwritten", ok("gd", b.get_devices("1555").await));
    ok(
        "udls",
        b.update_device_lists(vec![
            record("1666", 1, Some(u32::MAX), None),
            record("1777", 0, None, Some("x")),
            record("1666", 4, Some(1), Some("y")),
        ])
        .await,
    );
    ok("udls empty", b.update_device_lists(vec![]).await);
    t.rec(
        "devices batch last wins",
        ok("gd", b.get_devices("1666").await),
    );
    t.rec("devices batch", ok("gd", b.get_devices("1777").await));
    ok("dd", b.delete_devices("1555").await);
    ok("dd absent", b.delete_devices("1555").await);
    t.rec("devices deleted", ok("gd", b.get_devices("1555").await));

    // --- group metadata ---
    t.rec(
        "group metadata absent",
        ok("ggm", b.get_group_metadata(gr1).await),
    );
    ok("pgm", b.put_group_metadata(gr1, b"blob-v1").await);
    ok("pgm", b.put_group_metadata(gr1, b"blob-v2").await);
    t.rec(
        "group metadata overwritten",
        ok("ggm", b.get_group_metadata(gr1).await),
    );
    ok("dgm", b.delete_group_metadata(gr1).await);
    ok("dgm absent", b.delete_group_metadata(gr1).await);
    t.rec(
        "group metadata deleted",
        ok("ggm", b.get_group_metadata(gr1).await),
    );

    // --- tc-tokens ---
    let tc = |token: &[u8], ts: i64, sender: Option<i64>| TcTokenEntry {
        token: token.to_vec(),
        token_timestamp: ts,
        sender_timestamp: sender,
    };
    t.rec("tc absent", ok("gt", b.get_tc_token("j1@lid").await));
    ok("ptc", b.put_tc_token("j1@lid", &tc(b"a", 100, None)).await);
    t.rec("tc", ok("gt", b.get_tc_token("j1@lid").await));
    ok(
        "touch",
        b.touch_tc_token_sender_timestamp("j1@lid", 50).await,
    );
    t.rec(
        "tc touch sets sender",
        ok("gt", b.get_tc_token("j1@lid").await),
    );
    ok(
        "touch",
        b.touch_tc_token_sender_timestamp("j1@lid", 40).await,
    );
    t.rec(
        "tc touch never regresses",
        ok("gt", b.get_tc_token("j1@lid").await),
    );
    ok(
        "touch",
        b.touch_tc_token_sender_timestamp("j1@lid", 60).await,
    );
    t.rec(
        "tc touch advances",
        ok("gt", b.get_tc_token("j1@lid").await),
    );
    ok("srt", b.store_received_tc_token("j1@lid", b"b", 90).await);
    t.rec(
        "tc stale received ignored",
        ok("gt", b.get_tc_token("j1@lid").await),
    );
    ok("srt", b.store_received_tc_token("j1@lid", b"c", 100).await);
    t.rec(
        "tc equal received wins, sender kept",
        ok("gt", b.get_tc_token("j1@lid").await),
    );
    ok(
        "touch new",
        b.touch_tc_token_sender_timestamp("j2@lid", 70).await,
    );
    t.rec("tc placeholder", ok("gt", b.get_tc_token("j2@lid").await));
    ok("srt", b.store_received_tc_token("j2@lid", b"d", 10).await);
    t.rec(
        "tc placeholder replaced by older real token",
        ok("gt", b.get_tc_token("j2@lid").await),
    );
    ok(
        "srt new",
        b.store_received_tc_token("j3@lid", b"e", 30).await,
    );
    t.rec(
        "tc received new row",
        ok("gt", b.get_tc_token("j3@lid").await),
    );
    ok(
        "ptc overwrite",
        b.put_tc_token("j3@lid", &tc(b"", 31, Some(5))).await,
    );
    t.rec(
        "tc put overwrites all",
        ok("gt", b.get_tc_token("j3@lid").await),
    );
    ok("dtc", b.delete_tc_token("j3@lid").await);
    ok("dtc absent", b.delete_tc_token("j3@lid").await);
    t.rec(
        "tc jids",
        sorted(ok("gatj", b.get_all_tc_token_jids().await)),
    );
    ok("ptc", b.put_tc_token("t1@lid", &tc(b"x", 100, None)).await);
    ok(
        "ptc",
        b.put_tc_token("t2@lid", &tc(b"", 100, Some(200))).await,
    );
    ok(
        "ptc",
        b.put_tc_token("t3@lid", &tc(b"x", 99, Some(199))).await,
    );
    ok("ptc", b.put_tc_token("t4@lid", &tc(b"x", 99, None)).await);
    ok("ptc", b.put_tc_token("t5@lid", &tc(b"", 500, None)).await);
    t.rec(
        "tc expire (100, 200)",
        ok("det", b.delete_expired_tc_tokens(100, 200).await),
    );
    t.rec(
        "tc after expire",
        sorted(ok("gatj", b.get_all_tc_token_jids().await)),
    );
    t.rec(
        "tc expire again",
        ok("det", b.delete_expired_tc_tokens(100, 200).await),
    );
    t.rec(
        "tc expire (101, 201)",
        ok("det", b.delete_expired_tc_tokens(101, 201).await),
    );
    t.rec(
        "tc after second expire",
        sorted(ok("gatj", b.get_all_tc_token_jids().await)),
    );

    // --- sent messages ---
    set_now(1000);
    ok(
        "ssm",
        b.store_sent_message("c1@s.whatsapp.net", "m1", b"p1").await,
    );
    ok(
        "ssm",
        b.store_sent_message("c3@s.whatsapp.net", "m1", b"p-old")
            .await,
    );
    set_now(1001);
    ok(
        "ssm",
        b.store_sent_message("c1@s.whatsapp.net", "m2", b"p2").await,
    );
    set_now(1002);
    ok(
        "ssm",
        b.store_sent_message("c2@s.whatsapp.net", "m1", b"p3").await,
    );
    ok(
        "ssm overwrite",
        b.store_sent_message("c1@s.whatsapp.net", "m1", b"p1-v2")
            .await,
    );
    t.rec(
        "take",
        ok("tsm", b.take_sent_message("c1@s.whatsapp.net", "m2").await),
    );
    t.rec(
        "take twice",
        ok("tsm", b.take_sent_message("c1@s.whatsapp.net", "m2").await),
    );
    t.rec(
        "take other chat",
        ok("tsm", b.take_sent_message("c9@s.whatsapp.net", "m1").await),
    );
    t.rec(
        "sent expire at 1000",
        ok("des", b.delete_expired_sent_messages(1000).await),
    );
    t.rec(
        "sent expire at 1001",
        ok("des", b.delete_expired_sent_messages(1001).await),
    );
    t.rec(
        "take expired",
        ok("tsm", b.take_sent_message("c3@s.whatsapp.net", "m1").await),
    );
    t.rec(
        "sent expire at 1002",
        ok("des", b.delete_expired_sent_messages(1002).await),
    );
    t.rec(
        "take overwritten",
        ok("tsm", b.take_sent_message("c1@s.whatsapp.net", "m1").await),
    );
    t.rec(
        "sent expire at 1003",
        ok("des", b.delete_expired_sent_messages(1003).await),
    );
    t.rec(
        "take swept",
        ok("tsm", b.take_sent_message("c2@s.whatsapp.net", "m1").await),
    );

    // --- pending inbound ---
    let (ch, s1, s2) = ("120363@g.us", "1555:1@s.whatsapp.net", "1666:0@lid");
    set_now(2000);
    t.rec(
        "pending absent",
        ok("gpi", b.get_pending_inbound(ch, s1, "i1").await),
    );
    ok("spi", b.store_pending_inbound(ch, s1, "i1", b"msg1").await);
    t.rec(
        "pending",
        ok("gpi", b.get_pending_inbound(ch, s1, "i1").await),
    );
    t.rec(
        "pending other sender",
        ok("gpi", b.get_pending_inbound(ch, s2, "i1").await),
    );
    ok(
        "spi overwrite",
        b.store_pending_inbound(ch, s1, "i1", b"msg1-v2").await,
    );
    t.rec(
        "pending overwritten",
        ok("gpi", b.get_pending_inbound(ch, s1, "i1").await),
    );
    set_now(2001);
    ok(
        "spib",
        b.store_pending_inbound_batch(&[
            PendingInboundRow {
                chat: ch,
                sender: s2,
                id: "i2",
                message: b"msg2",
            },
            PendingInboundRow {
                chat: ch,
                sender: s1,
                id: "i3",
                message: b"msg3",
            },
            PendingInboundRow {
                chat: ch,
                sender: s2,
                id: "i2",
                message: b"msg2-v2",
            },
        ])
        .await,
    );
    ok("spib empty", b.store_pending_inbound_batch(&[]).await);
    t.rec(
        "pending batch last wins",
        ok("gpi", b.get_pending_inbound(ch, s2, "i2").await),
    );
    t.rec(
        "pending batch",
        ok("gpi", b.get_pending_inbound(ch, s1, "i3").await),
    );
    set_now(2002);
    ok("spi", b.store_pending_inbound(ch, s1, "i4", b"msg4").await);
    t.rec(
        "pending expire at 2000",
        ok("dep", b.delete_expired_pending_inbound(2000).await),
    );
    t.rec(
        "pending expire at 2001",
        ok("dep", b.delete_expired_pending_inbound(2001).await),
    );
    t.rec(
        "pending swept",
        ok("gpi", b.get_pending_inbound(ch, s1, "i1").await),
    );
    ok("dpi", b.delete_pending_inbound(ch, s2, "i2").await);
    ok("dpi absent", b.delete_pending_inbound(ch, s2, "i2").await);
    t.rec(
        "pending deleted",
        ok("gpi", b.get_pending_inbound(ch, s2, "i2").await),
    );
    ok(
        "dpib",
        b.delete_pending_inbound_batch(&[
            PendingInboundKey {
                chat: ch,
                sender: s1,
                id: "i3",
            },
            PendingInboundKey {
                chat: ch,
                sender: s1,
                id: "nope",
            },
        ])
        .await,
    );
    ok("dpib empty", b.delete_pending_inbound_batch(&[]).await);
    t.rec(
        "pending batch deleted",
        ok("gpi", b.get_pending_inbound(ch, s1, "i3").await),
    );
    t.rec(
        "pending kept",
        ok("gpi", b.get_pending_inbound(ch, s1, "i4").await),
    );
    t.rec(
        "pending expire at 2003",
        ok("dep", b.delete_expired_pending_inbound(2003).await),
    );
    t.rec(
        "pending all swept",
        ok("gpi", b.get_pending_inbound(ch, s1, "i4").await),
    );

    // --- message secrets ---
    let (mc, ms) = ("1555@s.whatsapp.net", "1666@s.whatsapp.net");
    t.rec(
        "secret absent",
        ok("gms", b.get_msg_secret(mc, ms, "x1").await),
    );
    t.rec(
        "secret with ts absent",
        ok("gmst", b.get_msg_secret_with_ts(mc, ms, "x1").await),
    );
    ok("pms", b.put_msg_secret(mc, ms, "x1", &[1; 32]).await);
    t.rec(
        "secret never expires",
        ok("gmst", b.get_msg_secret_with_ts(mc, ms, "x1").await),
    );
    t.rec(
        "secret other sender",
        ok("gms", b.get_msg_secret(mc, mc, "x1").await),
    );
    let steps: [(u8, i64, i64); 6] = [
        (2, 100, 10),
        (3, 50, 0),
        (4, 150, 20),
        (5, 0, 15),
        (6, 200, 30),
        (7, 100, 0),
    ];
    for (s, exp, ts) in steps {
        let n = ok(
            "pmss",
            b.put_msg_secrets(vec![secret(mc, ms, "x2", s, exp, ts)])
                .await,
        );
        t.rec(
            &format!("secret merge put s={s} exp={exp} ts={ts}"),
            (n, ok("gmst", b.get_msg_secret_with_ts(mc, ms, "x2").await)),
        );
    }
    t.rec(
        "secret batch with duplicates",
        ok(
            "pmss",
            b.put_msg_secrets(vec![
                secret(mc, ms, "x3", 8, 300, 5),
                secret(mc, ms, "x4", 9, 399, 0),
                secret(mc, ms, "x3", 10, 400, 0),
                secret(mc, ms, "x5", 11, 401, 1),
                secret(mc, ms, "x6", 12, 400, 2),
            ])
            .await,
        ),
    );
    t.rec(
        "secret empty batch",
        ok("pmss", b.put_msg_secrets(vec![]).await),
    );
    for id in ["x3", "x4", "x5", "x6"] {
        t.rec(
            &format!("secret {id}"),
            ok("gmst", b.get_msg_secret_with_ts(mc, ms, id).await),
        );
    }
    t.rec(
        "secret expire at 399",
        ok("dems", b.delete_expired_msg_secrets(399).await),
    );
    t.rec(
        "secret expire at 400",
        ok("dems", b.delete_expired_msg_secrets(400).await),
    );
    t.rec(
        "secret expire at 400 again",
        ok("dems", b.delete_expired_msg_secrets(400).await),
    );
    for id in ["x1", "x2", "x3", "x4", "x5", "x6"] {
        t.rec(
            &format!("secret {id} after expire"),
            ok("gms", b.get_msg_secret(mc, ms, id).await).is_some(),
        );
    }
    t.rec(
        "secret expire at max",
        ok("dems", b.delete_expired_msg_secrets(i64::MAX).await),
    );
    let big: Vec<MsgSecretEntry> = (0..600)
        .map(|i| {
            secret(
                "120363@g.us",
                ms,
                &format!("big{i}"),
                (i % 251) as u8,
                1000 + i,
                i,
            )
        })
        .collect();
    t.rec("secret big batch", ok("pmss", b.put_msg_secrets(big).await));
    t.rec(
        "secret big expire",
        ok("dems", b.delete_expired_msg_secrets(1299).await),
    );
    t.rec(
        "secret big kept",
        ok(
            "gmst",
            b.get_msg_secret_with_ts("120363@g.us", ms, "big300").await,
        ),
    );

    // --- device ---
    t.rec("device exists before create", ok("ex", b.exists().await));
    t.rec(
        "device load before create",
        ok("ld", b.load().await).is_some(),
    );
    t.rec("device create", ok("cr", b.create().await));
    t.rec("device exists after create", ok("ex", b.exists().await));
    t.rec(
        "device load after create",
        ok("ld", b.load().await).is_some(),
    );
    ok("sv", b.save(device).await);
    let loaded = ok("ld", b.load().await).expect("saved device loads");
    t.rec(
        "device round trip",
        serde_json::to_string(&loaded).expect("serialize loaded device"),
    );
    ok("snap", b.snapshot_db("x", None).await);
    t.rec("device after snapshot_db", ok("ex", b.exists().await));

    t.0
}

/// A device with non-default fields, shared by every backend's run.
fn sample_device() -> Device {
    let mut d = Device::new();
    d.push_name = "Conformance".into();
    d.next_pre_key_id = 813;
    d.first_unupload_pre_key_id = 813;
    d.server_has_prekeys = true;
    d.login_counter = 3;
    d.edge_routing_info = Some(vec![1, 2, 3]);
    d.props_hash = Some("hash".into());
    d.nct_salt = Some(vec![9; 16]);
    d.lid_migrated = true;
    d
}

/// The reference transcript: wacore's in-memory backend.
async fn reference(device: &Device) -> Vec<String> {
    scenario(&InMemoryBackend::new(), device).await
}

fn assert_same_transcript(expected: &[String], actual: &[String], what: &str) {
    let mismatches: Vec<String> = expected
        .iter()
        .zip(actual)
        .filter(|(e, a)| e != a)
        .map(|(e, a)| format!("  reference: {e}\n  {what}: {a}"))
        .collect();
    assert!(
        mismatches.is_empty() && expected.len() == actual.len(),
        "{what} differs from InMemoryBackend ({} vs {} lines):\n{}",
        expected.len(),
        actual.len(),
        mismatches.join("\n")
    );
}

async fn conformance(kind: Kind) {
    install_clock();
    let device = sample_device();
    let expected = reference(&device).await;
    assert!(
        expected.len() > 150,
        "the scenario recorded too little: {}",
        expected.len()
    );
    if std::env::var_os("SUDEVWA_STORAGE_TRANSCRIPT").is_some() {
        println!("{}", expected.join("\n"));
    }
    let (conn, _file) = fresh_db(kind, "conformance").await;
    let store = WaStore::new(conn, "conformance");
    let actual = scenario(&store, &device).await;
    assert_same_transcript(&expected, &actual, &format!("{kind:?}"));
}

#[tokio::test]
async fn sqlite_matches_in_memory_reference() {
    conformance(Kind::Sqlite).await;
}

#[tokio::test]
async fn postgres_matches_in_memory_reference() {
    conformance(Kind::Postgres).await;
}

// ---------------------------------------------------------------------------
// Isolation and wipe
// ---------------------------------------------------------------------------

/// Writes at least one row into every whatsapp table.
async fn fill_every_table(s: &WaStore, tag: u8) {
    let st = |r| ok("fill", r);
    st(s.create().await.map(|_| ()));
    st(s.put_identity("u@lid", [tag; 32]).await);
    st(s.put_session("u@lid", &[tag]).await);
    st(s.store_prekey(1, &[tag], false).await);
    st(s.store_signed_prekey(1, &[tag]).await);
    st(s.put_sender_key("g@g.us::u", &[tag]).await);
    st(s.set_sync_key(
        b"k",
        AppStateSyncKey {
            key_data: vec![tag],
            fingerprint: vec![],
            timestamp: 1,
        },
    )
    .await);
    st(s.set_version(
        "regular",
        HashState {
            version: u64::from(tag),
            ..HashState::default()
        },
    )
    .await);
    st(s.put_mutation_macs("regular", 1, &[mac(1, tag)]).await);
    st(s.set_sender_key_status("g@g.us", &[("u:1@lid", true)])
        .await);
    st(s.put_lid_mapping(&lid("100", "5511", 1, "usync")).await);
    st(s.save_base_key("u@lid", "m", &[tag]).await);
    st(s.update_device_list(DeviceListRecord {
        user: "u".into(),
        devices: vec![],
        timestamp: 1,
        phash: None,
        raw_id: None,
    })
    .await);
    st(s.put_group_metadata("g@g.us", &[tag]).await);
    st(s.touch_tc_token_sender_timestamp("u@lid", 1).await);
    st(s.store_sent_message("u@lid", "m", &[tag]).await);
    st(s.store_pending_inbound("u@lid", "u@lid", "m", &[tag]).await);
    st(s.put_msg_secret("u@lid", "u@lid", "m", &[tag; 32])
        .await
        .map(|_| ()));
}

async fn isolation(kind: Kind) {
    install_clock();
    let (conn, _file) = fresh_db(kind, "isolation").await;
    let a = WaStore::new(conn.clone(), "instance-a");
    let b = WaStore::new(conn.clone(), "instance-b");
    assert_eq!(a.instance_id(), "instance-a");

    fill_every_table(&a, 1).await;
    // B sees nothing of A.
    assert!(!ok("ex", b.exists().await));
    assert_eq!(ok("li", b.load_identity("u@lid").await), None);
    assert_eq!(ok("gs", b.get_session("u@lid").await), None);
    assert_eq!(ok("max", b.get_max_prekey_id().await), 0);
    assert!(ok("lasp", b.load_all_signed_prekeys().await).is_empty());
    assert_eq!(ok("lk", b.get_latest_sync_key_id().await), None);
    assert_eq!(ok("gv", b.get_version("regular").await).version, 0);
    assert!(ok("gal", b.get_all_lid_mappings().await).is_empty());
    assert_eq!(
        ok("gp", b.get_pn_mapping("5511").await).map(|e| e.lid),
        None
    );
    assert!(ok("gatj", b.get_all_tc_token_jids().await).is_empty());
    assert_eq!(ok("tsm", b.take_sent_message("u@lid", "m").await), None);
    assert!(!ok("hss", b.has_signal_state_for_user("u").await));
    // B's sweeps and clears never reach A's rows.
    assert_eq!(ok("des", b.delete_expired_sent_messages(i64::MAX).await), 0);
    assert_eq!(
        ok("dep", b.delete_expired_pending_inbound(i64::MAX).await),
        0
    );
    assert_eq!(ok("dems", b.delete_expired_msg_secrets(i64::MAX).await), 0);
    ok("caskd", b.clear_all_sender_key_devices().await);
    ok("cm", b.clear_mutation_macs("regular").await);
    ok("mark", b.mark_prekeys_uploaded(&[1]).await);

    fill_every_table(&b, 2).await;
    // Same keys, separate rows: each instance reads its own values.
    assert_eq!(ok("li", a.load_identity("u@lid").await), Some([1; 32]));
    assert_eq!(ok("li", b.load_identity("u@lid").await), Some([2; 32]));
    assert_eq!(ok("gv", a.get_version("regular").await).version, 1);
    assert_eq!(
        ok("gm", a.get_mutation_mac("regular", &[1; 32]).await),
        Some(vec![1; 32])
    );
    assert_eq!(ok("skd", a.get_sender_key_devices("g@g.us").await).len(), 1);

    let a_rows = rows_of(&conn, "instance-a").await;
    let b_rows = rows_of(&conn, "instance-b").await;
    for (table, n) in &a_rows {
        assert!(*n > 0, "fill_every_table left {table} empty for A");
    }
    assert_eq!(a_rows, b_rows);

    a.wipe().await.expect("wipe A");
    let a_after = rows_of(&conn, "instance-a").await;
    assert!(
        a_after.values().all(|n| *n == 0),
        "rows of A left after wipe: {a_after:?}"
    );
    assert_eq!(
        rows_of(&conn, "instance-b").await,
        b_rows,
        "wipe of A touched B"
    );
    assert!(!ok("ex", a.exists().await));
    assert!(ok("ex", b.exists().await));
    assert_eq!(
        ok("tsm", b.take_sent_message("u@lid", "m").await),
        Some(vec![2])
    );

    // A wiped instance is reusable from scratch.
    fill_every_table(&a, 3).await;
    assert_eq!(ok("li", a.load_identity("u@lid").await), Some([3; 32]));
}

#[tokio::test]
async fn sqlite_instances_are_isolated_and_wipe_is_scoped() {
    isolation(Kind::Sqlite).await;
}

#[tokio::test]
async fn postgres_instances_are_isolated_and_wipe_is_scoped() {
    isolation(Kind::Postgres).await;
}

async fn device_create(kind: Kind) {
    install_clock();
    let (conn, _file) = fresh_db(kind, "device").await;
    let s = WaStore::new(conn.clone(), "dev");
    assert_eq!(ok("cr", s.create().await), DEVICE_ID);
    let first = serde_json::to_string(&ok("ld", s.load().await).expect("created device")).unwrap();
    // A second create keeps the existing device (its keys) and answers the same id.
    assert_eq!(ok("cr", s.create().await), DEVICE_ID);
    let again = serde_json::to_string(&ok("ld", s.load().await).expect("device")).unwrap();
    assert_eq!(first, again, "create overwrote an existing device");
    s.save(&sample_device()).await.expect("save");
    assert_eq!(
        ok("ld", s.load().await).expect("device").push_name,
        "Conformance"
    );
    // A corrupt blob is a serialization error, not a panic or a silent None.
    let corrupt = match kind {
        Kind::Sqlite => "UPDATE wa_device SET data = CAST('not json' AS BLOB)",
        Kind::Postgres => "UPDATE wa_device SET data = convert_to('not json', 'UTF8')",
    };
    conn.execute_unprepared(corrupt)
        .await
        .expect("corrupt the blob");
    assert!(matches!(
        s.load().await,
        Err(wacore::store::error::StoreError::Serialization(_))
    ));
    assert!(ok("ex", s.exists().await));
}

#[tokio::test]
async fn sqlite_device_create_is_idempotent() {
    device_create(Kind::Sqlite).await;
}

#[tokio::test]
async fn postgres_device_create_is_idempotent() {
    device_create(Kind::Postgres).await;
}

// ---------------------------------------------------------------------------
// Concurrent writers
// ---------------------------------------------------------------------------

async fn concurrency(kind: Kind) {
    install_clock();
    let (conn, _file) = fresh_db(kind, "concurrency").await;
    let store = WaStore::new(conn, "racer");

    // take_sent_message: N takers per message, exactly one gets the payload.
    const MESSAGES: usize = 8;
    const TAKERS: usize = 12;
    for m in 0..MESSAGES {
        ok(
            "ssm",
            store
                .store_sent_message(
                    "chat@s.whatsapp.net",
                    &format!("m{m}"),
                    format!("payload-{m}").as_bytes(),
                )
                .await,
        );
    }
    let mut tasks = Vec::new();
    for m in 0..MESSAGES {
        for _ in 0..TAKERS {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                (
                    m,
                    s.take_sent_message("chat@s.whatsapp.net", &format!("m{m}"))
                        .await,
                )
            }));
        }
    }
    let mut taken: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    for task in tasks {
        let (m, r) = task.await.expect("taker task");
        if let Some(p) = ok("take race", r) {
            taken.entry(m).or_default().push(p);
        }
    }
    for m in 0..MESSAGES {
        assert_eq!(
            taken.get(&m).cloned().unwrap_or_default(),
            vec![format!("payload-{m}").into_bytes()],
            "message m{m} must be taken exactly once"
        );
    }

    // tc-token: racing touches and received tokens converge on the maxima.
    const WRITERS: i64 = 32;
    let mut tasks = Vec::new();
    for i in (1..=WRITERS).rev().chain(1..=WRITERS) {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                s.touch_tc_token_sender_timestamp("peer@lid", i * 10).await
            } else {
                s.store_received_tc_token("peer@lid", format!("tok-{i}").as_bytes(), i * 10)
                    .await
            }
        }));
    }
    for task in tasks {
        ok("tc race", task.await.expect("tc task"));
    }
    let entry = ok("gt", store.get_tc_token("peer@lid").await).expect("tc row");
    assert_eq!(
        entry.sender_timestamp,
        Some(WRITERS * 10),
        "sender timestamp is the max touched"
    );
    assert_eq!(
        entry.token_timestamp,
        (WRITERS - 1) * 10,
        "newest received token wins"
    );
    assert_eq!(entry.token, format!("tok-{}", WRITERS - 1).into_bytes());

    // msg secrets: racing merges of one key end at the merged expiry and max ts.
    let mut tasks = Vec::new();
    for i in 1..=24i64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.put_msg_secrets(vec![secret(
                "c@lid",
                "s@lid",
                "race",
                i as u8,
                1000 + (i * 7) % 24,
                i * 3 % 50,
            )])
            .await
        }));
    }
    for task in tasks {
        ok("secret race", task.await.expect("secret task"));
    }
    let (_, ts) = ok(
        "gmst",
        store.get_msg_secret_with_ts("c@lid", "s@lid", "race").await,
    )
    .expect("secret row");
    assert_eq!(ts, (1..=24i64).map(|i| i * 3 % 50).max().unwrap_or(0));
    let max_exp = (1..=24i64).map(|i| 1000 + (i * 7) % 24).max().unwrap_or(0);
    assert_eq!(
        ok("dems", store.delete_expired_msg_secrets(max_exp - 1).await),
        0
    );
    assert_eq!(
        ok("dems", store.delete_expired_msg_secrets(max_exp).await),
        1
    );

    // Overlapping batches in opposite orders: no deadlock, no busy error, and every
    // key ends with a value some writer wrote.
    let keys: Vec<Arc<str>> = (0..400).map(|i| Arc::from(format!("{i}:1@lid"))).collect();
    let mut tasks = Vec::new();
    for w in 0..8u8 {
        let s = store.clone();
        let mut batch: Vec<(Arc<str>, Bytes)> = keys
            .iter()
            .map(|k| (k.clone(), Bytes::from(vec![w])))
            .collect();
        if w % 2 == 1 {
            batch.reverse();
        }
        tasks.push(tokio::spawn(async move {
            s.put_sessions_batch(&batch).await?;
            let ids: Vec<(u32, Bytes)> =
                (0..300u32).map(|i| (i + 1, Bytes::from(vec![w]))).collect();
            s.store_prekeys_batch(&ids, false).await?;
            s.mark_prekeys_uploaded(&(1..=300).collect::<Vec<_>>())
                .await
        }));
    }
    for task in tasks {
        ok("batch race", task.await.expect("batch task"));
    }
    for k in &keys {
        let v = ok("gs", store.get_session(k).await).expect("session written");
        assert!(v.len() == 1 && v[0] < 8);
    }
    assert_eq!(ok("max", store.get_max_prekey_id().await), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_writers_converge() {
    concurrency(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_writers_converge() {
    concurrency(Kind::Postgres).await;
}

// ---------------------------------------------------------------------------
// Migration down / up
// ---------------------------------------------------------------------------

async fn migration_round_trip(kind: Kind) {
    install_clock();
    let (conn, _file) = fresh_db(kind, "migrate").await;
    Migrator::down(&conn, None).await.expect("down");
    Migrator::up(&conn, None).await.expect("up again");
    let s = WaStore::new(conn.clone(), "m");
    fill_every_table(&s, 1).await;
    assert!(rows_of(&conn, "m").await.values().all(|n| *n > 0));
}

#[tokio::test]
async fn sqlite_migration_down_and_up_again() {
    migration_round_trip(Kind::Sqlite).await;
}

#[tokio::test]
async fn postgres_migration_down_and_up_again() {
    migration_round_trip(Kind::Postgres).await;
}

// ---------------------------------------------------------------------------
// Footprint of a fresh device
// ---------------------------------------------------------------------------

/// whatsapp-rust's default upload window (`DEFAULT_WANTED_PRE_KEY_COUNT`).
const PREKEY_WINDOW: u32 = 812;

/// Stores what a fresh whatsapp-rust login leaves behind: the device row
/// (`PersistenceManager::new` → `create`), the first pre-key window generated with
/// real X25519 keys and encoded as whatsapp-rust does, marked uploaded, and the
/// device saved again with its advanced watermarks.
async fn fresh_login(s: &WaStore) {
    ok("cr", s.create().await);
    let mut rng = rand::make_rng::<rand::rngs::StdRng>();
    let mut batch = Vec::with_capacity(PREKEY_WINDOW as usize);
    for id in 1..=PREKEY_WINDOW {
        let kp = wacore::libsignal::protocol::KeyPair::generate(&mut rng);
        let mut buf = Vec::new();
        wacore::libsignal::store::record_helpers::encode_pre_key_record_to(id, &kp, &mut buf);
        batch.push((id, Bytes::from(buf)));
    }
    ok("spb", s.store_prekeys_batch(&batch, false).await);
    ok(
        "mark",
        s.mark_prekeys_uploaded(&(1..=PREKEY_WINDOW).collect::<Vec<_>>())
            .await,
    );
    let mut device = ok("ld", s.load().await).expect("created device");
    device.next_pre_key_id = PREKEY_WINDOW + 1;
    device.first_unupload_pre_key_id = PREKEY_WINDOW + 1;
    device.server_has_prekeys = true;
    ok("sv", s.save(&device).await);
}

/// A realistic instance id (UUID-sized): it is repeated in every row and index entry.
const FOOTPRINT_INSTANCE: &str = "3f2b6c1e-8d4a-4f7e-9b1a-2c5d8e7f6a90";

/// SQLite bytes of the relations matching `like` (tables and their indexes), by `dbstat`.
async fn sqlite_dbstat(conn: &DatabaseConnection, like: &[&str]) -> Option<i64> {
    let cond = like
        .iter()
        .map(|l| format!("name LIKE '{l}' ESCAPE '\\'"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!("SELECT SUM(pgsize) FROM dbstat WHERE {cond}"),
        ))
        .await
        .ok()??;
    row.try_get_by_index::<Option<i64>>(0).ok().flatten()
}

async fn footprint(kind: Kind) {
    install_clock();
    let (conn, _file) = fresh_db(kind, "footprint").await;
    let s = WaStore::new(conn.clone(), FOOTPRINT_INSTANCE);
    let page_bytes = "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()";
    let pages_before = match kind {
        Kind::Sqlite => scalar(&conn, page_bytes).await,
        Kind::Postgres => 0,
    };
    fresh_login(&s).await;

    let per_table = rows_of(&conn, FOOTPRINT_INSTANCE).await;
    let rows: i64 = per_table.values().sum();
    let expected = 1 + i64::from(PREKEY_WINDOW);
    let payload = scalar(
        &conn,
        "SELECT (SELECT COALESCE(SUM(length(data)), 0) FROM wa_device) \
         + (SELECT COALESCE(SUM(length(record)), 0) FROM wa_prekeys)",
    )
    .await;
    match kind {
        Kind::Sqlite => {
            let all = sqlite_dbstat(
                &conn,
                &["wa\\_%", "idx\\_wa\\_%", "sqlite\\_autoindex\\_wa\\_%"],
            )
            .await;
            let used = sqlite_dbstat(
                &conn,
                &[
                    "wa\\_prekeys",
                    "wa\\_device",
                    "sqlite\\_autoindex\\_wa\\_prekeys\\_%",
                    "sqlite\\_autoindex\\_wa\\_device\\_%",
                ],
            )
            .await;
            match (all, used) {
                (Some(all), Some(used)) => println!(
                    "sqlite: rows={rows} bytes={all} (dbstat: pages of all wa_* tables and \
                     indexes, empty ones included; wa_device+wa_prekeys with their indexes: \
                     {used}; payload bytes={payload})"
                ),
                _ => {
                    let after = scalar(&conn, page_bytes).await;
                    println!(
                        "sqlite: rows={rows} bytes={} (page_count*page_size delta, dbstat \
                         unavailable; payload bytes={payload})",
                        after - pages_before
                    );
                }
            }
        }
        Kind::Postgres => {
            let size_of = |filter: &str| {
                format!(
                    "SELECT SUM(pg_total_relation_size(c.oid))::BIGINT FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = current_schema() AND c.relkind = 'r' AND {filter}"
                )
            };
            let all = scalar(&conn, &size_of("c.relname LIKE 'wa\\_%'")).await;
            let used = scalar(&conn, &size_of("c.relname IN ('wa_device', 'wa_prekeys')")).await;
            let tuples = scalar(
                &conn,
                "SELECT ((SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM wa_device t) \
                 + (SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM wa_prekeys t))::BIGINT",
            )
            .await;
            println!(
                "postgres: rows={rows} bytes={all} (pg_total_relation_size of all wa_* tables \
                 incl. indexes and TOAST, empty ones included; wa_device+wa_prekeys: {used}; \
                 row data by pg_column_size={tuples}; payload bytes={payload})"
            );
        }
    }
    assert_eq!(
        rows, expected,
        "a fresh device is one device row plus {PREKEY_WINDOW} pre-keys: {per_table:?}"
    );
    let uploaded = scalar(
        &conn,
        "SELECT COUNT(*) FROM wa_prekeys WHERE uploaded = true",
    )
    .await;
    assert_eq!(uploaded, i64::from(PREKEY_WINDOW));
    let loaded = ok("ld", s.load().await).expect("device");
    assert_eq!(loaded.next_pre_key_id, PREKEY_WINDOW + 1);
}

#[tokio::test]
async fn sqlite_fresh_device_footprint() {
    footprint(Kind::Sqlite).await;
}

#[tokio::test]
async fn postgres_fresh_device_footprint() {
    footprint(Kind::Postgres).await;
}

/// `wa_tables()` names exactly the tables the migration creates.
#[tokio::test]
async fn wa_tables_match_the_migration() {
    install_clock();
    let (conn, _file) = fresh_db(Kind::Sqlite, "tables").await;
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'wa\\_%' ESCAPE '\\'",
        ))
        .await
        .expect("list tables");
    let created: BTreeSet<String> = rows
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("name"))
        .collect();
    let listed: BTreeSet<String> = wa_tables().into_iter().map(String::from).collect();
    assert_eq!(created, listed);
}

/// SQLite's automatic checkpoint is off on the server's connections (it would run
/// inside a writer's commit); the background checkpointer must copy the WAL back into
/// the database file while the pool stays open, or the data would live in an
/// ever-growing WAL. Written rows reach the main file without any connection closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_checkpointed_in_the_background() {
    let (conn, file) = fresh_db(Kind::Sqlite, "checkpoint").await;
    let path = file.0.clone().expect("sqlite file");
    let autockpt = scalar(&conn, "PRAGMA wal_autocheckpoint").await;
    assert_eq!(
        autockpt, 0,
        "automatic checkpoints are off on pooled connections"
    );
    conn.execute_unprepared("CREATE TABLE ckpt_probe (id INTEGER PRIMARY KEY, v BLOB)")
        .await
        .expect("create");
    let before = std::fs::metadata(&path).expect("db file").len();
    // About 2 MiB in many small commits, as the server writes.
    for i in 0..256 {
        conn.execute_unprepared(&format!(
            "INSERT INTO ckpt_probe (id, v) VALUES ({i}, randomblob(8192))"
        ))
        .await
        .expect("insert");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = std::fs::metadata(&path).expect("db file").len();
        if now >= before + 2 * 1024 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {now} bytes (from {before}): no checkpoint ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(scalar(&conn, "SELECT COUNT(*) FROM ckpt_probe").await, 256);
}

/// Group commit on SQLite: writers queued for the write turn share one transaction;
/// each finds its row committed (read through another pooled connection) once
/// `finish` returns; a writer whose single statement fails gets the error while the
/// others of its batch commit; an atomic writer that fails halfway rolls back its
/// whole batch, and every writer of that batch is told; and a writer that takes the
/// plain turn afterwards writes through the pool unhindered.
#[tokio::test]
async fn sqlite_group_commit_shares_one_transaction_and_isolates_failures() {
    let (conn, _file) = fresh_db(Kind::Sqlite, "group_commit").await;
    conn.execute_unprepared("CREATE TABLE gc_probe (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .await
        .expect("create probe table");
    conn.execute_unprepared("INSERT INTO gc_probe VALUES (-1, 'taken')")
        .await
        .expect("seed");

    // Round 1: single statements, every eighth failing on a taken key.
    const WRITERS: i64 = 64;
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let w = db::group_write(&conn).await.expect("join the group write");
            let batch = w.batch().expect("SQLite writers join a batch");
            let key = if i % 8 == 0 { -1 } else { i };
            let res = w
                .conn()
                .execute_unprepared(&format!("INSERT INTO gc_probe VALUES ({key}, 'x')"))
                .await;
            let res = match res {
                Ok(_) => w.finish().await,
                Err(e) => Err(e),
            };
            (i, batch, res)
        }));
    }
    let mut batches = BTreeSet::new();
    for t in tasks {
        let (i, batch, res) = t.await.expect("writer task");
        batches.insert(batch);
        let mine = scalar(
            &conn,
            &format!("SELECT COUNT(*) FROM gc_probe WHERE k = {i}"),
        )
        .await;
        if i % 8 == 0 {
            assert!(
                res.is_err(),
                "writer {i}: its failed statement is its error"
            );
            assert_eq!(mine, 0, "writer {i}: nothing stored");
        } else {
            res.unwrap_or_else(|e| panic!("writer {i}: {e}"));
            assert_eq!(mine, 1, "writer {i}: committed once finish returned");
        }
    }
    assert!(
        batches.len() < WRITERS as usize,
        "queued writers shared transactions ({} batches for {WRITERS} writers)",
        batches.len()
    );
    assert_eq!(
        scalar(&conn, "SELECT COUNT(*) FROM gc_probe").await,
        1 + WRITERS - WRITERS / 8,
        "the seed row and every succeeding writer's row"
    );

    // Round 2: writer 0 is atomic and fails after its first statement.
    let mut tasks = Vec::new();
    for i in 0..16i64 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = db::group_write(&conn).await.expect("join the group write");
            let batch = w.batch().expect("SQLite writers join a batch");
            let res: Result<(), sea_orm::DbErr> = async {
                if i == 0 {
                    w.atomic().await?;
                    w.conn()
                        .execute_unprepared("INSERT INTO gc_probe VALUES (1000, 'half')")
                        .await?;
                    w.conn()
                        .execute_unprepared("INSERT INTO gc_probe VALUES (-1, 'again')")
                        .await?;
                } else {
                    w.conn()
                        .execute_unprepared(&format!(
                            "INSERT INTO gc_probe VALUES ({}, 'x')",
                            1000 + i
                        ))
                        .await?;
                }
                Ok(())
            }
            .await;
            let res = match res {
                Ok(()) => w.finish().await,
                Err(e) => Err(e), // `w` is dropped unfinished here
            };
            (i, batch, res)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("writer task"));
    }
    let failed_batch = results[0].1;
    assert!(results[0].2.is_err(), "the atomic writer gets its error");
    let mut shared = 0;
    for (i, batch, res) in &results {
        let stored = scalar(
            &conn,
            &format!("SELECT COUNT(*) FROM gc_probe WHERE k = {}", 1000 + i),
        )
        .await;
        if *batch == failed_batch {
            assert!(
                res.is_err(),
                "writer {i} shared the rolled-back batch: told so"
            );
            assert_eq!(
                stored, 0,
                "writer {i}: nothing of the rolled-back batch stored"
            );
            shared += 1;
        } else {
            assert!(res.is_ok(), "writer {i} in another batch: {res:?}");
            assert_eq!(stored, 1, "writer {i}: stored");
        }
    }
    assert!(shared > 1, "the atomic writer shared its batch with others");

    // The plain turn commits any batch still open before its holder writes.
    let w = db::group_write(&conn).await.expect("join");
    w.conn()
        .execute_unprepared("INSERT INTO gc_probe VALUES (5000, 'last')")
        .await
        .expect("insert");
    drop(w); // gone without waiting for its commit (not atomic): the batch still commits
    {
        let _turn = db::sqlite_turn().await;
        conn.execute_unprepared("INSERT INTO gc_probe VALUES (5001, 'pool')")
            .await
            .expect("a pool write under the plain turn is not blocked by the batch");
    }
    assert_eq!(
        scalar(&conn, "SELECT COUNT(*) FROM gc_probe WHERE k >= 5000").await,
        2
    );
}

/// The checkpointer makes the WAL start over under steady writes. A passive checkpoint
/// alone never finds the WAL entirely copied back while commits keep coming, so the WAL
/// grew without bound under load (gigabytes in a benchmark's minute). Each time the WAL
/// starts over, SQLite bumps the checkpoint sequence number in its header: with a writer
/// committing without pause, it must advance several times, and the file must stay
/// bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_starts_over_under_steady_writes() {
    let (conn, file) = fresh_db(Kind::Sqlite, "wal_restart").await;
    let mut wal = file.0.clone().expect("sqlite file").into_os_string();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    conn.execute_unprepared("CREATE TABLE wal_probe (id INTEGER PRIMARY KEY, v BLOB)")
        .await
        .expect("create");
    // The WAL header's checkpoint sequence number (bytes 12..16, big-endian).
    let seq = || -> Option<u32> {
        let bytes = std::fs::read(&wal).ok()?;
        Some(u32::from_be_bytes(bytes.get(12..16)?.try_into().ok()?))
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (conn, stop) = (conn.clone(), stop.clone());
        tokio::spawn(async move {
            // One statement through the group write, returning once committed.
            let commit = |sql: &'static str| {
                let conn = conn.clone();
                async move {
                    let w = db::group_write(&conn).await.expect("join the group write");
                    w.conn().execute_unprepared(sql).await.expect(sql);
                    w.finish().await.expect("commit");
                }
            };
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // 64 KiB a commit, one after the other, as the server under load.
                commit("INSERT INTO wal_probe (v) VALUES (randomblob(65536))").await;
                n += 1;
                if n.is_multiple_of(256) {
                    // Keeps the database file small; the WAL sees the same churn.
                    commit("DELETE FROM wal_probe").await;
                }
            }
            n
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let first = loop {
        if let Some(s) = seq() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "no WAL appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut largest = 0;
    loop {
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        if seq().is_some_and(|s| s >= first + 3) {
            break;
        }
        // 16 MiB between restarts plus what a checkpoint interval adds: far below a WAL
        // that never starts over (it holds every commit, 64 KiB each).
        if largest >= 256 * 1024 * 1024 {
            stop.store(true, Ordering::Relaxed);
            panic!("the WAL grew to {largest} bytes: it does not start over under steady writes");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL never started over three times under steady writes (sequence {first} → {:?}, {largest} bytes)",
            seq()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let commits = writer.await.expect("writer");
    assert!(commits > 0);
}

/// A receipt can reach the client before the server's ack of the same message (they
/// travel separately). The journal then records and reports the ack first, and the
/// late real ack adds nothing, so the event log, the sockets and the webhook see
/// `server_ack`, `delivered`, `read` in that order. Rows written in one transaction
/// share their times; their outbox ids keep the order they were written in.
async fn receipts_before_acks(kind: Kind) {
    use actors::events::{MessageStatus, SentRecord};
    use sudevwa::store::instances::Instances;
    use sudevwa::store::journal::Journal;
    use sudevwa::webhook::Outbox;

    let (conn, _file) = fresh_db(kind, "receipt_order").await;
    let instances = Instances::new(conn.clone());
    instances.create("inst-a", "test").await.expect("create");
    instances
        .set_webhook("inst-a", Some("http://127.0.0.1:9/hook"), Some("s"))
        .await
        .expect("webhook");
    let journal = Journal::new(conn.clone(), true, Arc::new(tokio::sync::Notify::new()));
    journal
        .record_sent(&SentRecord {
            instance_id: "inst-a".into(),
            message_id: "3EB0AA".into(),
            chat: "6281500000042@s.whatsapp.net".into(),
            is_group: false,
            kind: "text".into(),
            body: "hello".into(),
            media: None,
            timestamp: 1_765_000_000,
            raw: None,
        })
        .await
        .expect("sent");
    let status = |s: &str| MessageStatus {
        instance_id: "inst-a".into(),
        message_ids: vec!["3EB0AA".into()],
        status: s.into(),
        chat: "6281500000042@s.whatsapp.net".into(),
        from: "6281500000042@s.whatsapp.net".into(),
        recipient: Some("6281500000042@s.whatsapp.net".into()),
        // None given: the time of recording (after `sent`'s), for the timeline's order.
        timestamp: 0,
    };
    let names = |events: &[actors::events::LiveEvent]| -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(&e.json).expect("json");
                v["data"]["status"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    };
    // The receipt first: the ack is reported before it, in the same call.
    let first = journal
        .record_statuses(&[status("delivered")])
        .await
        .expect("delivered");
    assert_eq!(names(&first), ["server_ack", "delivered"]);
    // The real ack and the read receipt, stored together: the ack adds nothing.
    let second = journal
        .record_statuses(&[
            MessageStatus {
                from: String::new(),
                recipient: None,
                ..status("server_ack")
            },
            status("read"),
        ])
        .await
        .expect("ack and read");
    assert_eq!(names(&second), ["read"]);
    // A server ack of a message the log does not know is ignored.
    let unknown = journal
        .record_status(&MessageStatus {
            message_ids: vec!["3EB0ZZ".into()],
            ..status("server_ack")
        })
        .await
        .expect("unknown ack");
    assert!(unknown.is_empty(), "{}", names(&unknown).join(","));

    let m = journal
        .get_message("inst-a", "3EB0AA")
        .await
        .expect("read back")
        .expect("logged");
    assert_eq!(m["status"], "read");
    let timeline: Vec<&str> = m["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .map(|s| s["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(timeline, ["sent", "server_ack", "delivered", "read"]);
    // The outbox, oldest first as the worker takes it: the order written, although
    // the ack and `delivered` rows were written in one transaction (same times).
    let mut rows = Outbox::new(conn.clone())
        .list("inst-a", 10)
        .await
        .expect("outbox");
    rows.reverse();
    let queued: Vec<String> = rows
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.payload).expect("payload");
            v["data"]["status"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(queued, ["server_ack", "delivered", "read"]);
    assert_eq!(rows[0].created_at, rows[1].created_at, "one transaction");
}

#[tokio::test]
async fn sqlite_receipt_before_its_ack_reports_the_ack_first() {
    receipts_before_acks(Kind::Sqlite).await;
}

#[tokio::test]
async fn postgres_receipt_before_its_ack_reports_the_ack_first() {
    receipts_before_acks(Kind::Postgres).await;
}
