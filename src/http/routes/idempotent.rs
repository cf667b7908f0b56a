//! Sends at most once per `Idempotency-Key`: the key's stored answer is replayed,
//! another request with the same key is refused, a repeat while the first is still
//! sending waits for it; and the per-instance send governor paces new sends.

use crate::http::error::ApiError;
use crate::http::util::ok;
use crate::http::Shared;
use serde_json::Value;
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;

/// How long a repeat waits for the first request with its key (media sends included).
const WAIT_FOR_FIRST: Duration = Duration::from_secs(300);

/// A send's `Idempotency-Key` (checked) and the instance it is scoped to.
pub struct Idem {
    pub instance_id: String,
    key: Option<String>,
}

impl Idem {
    /// `raw`: the header value, if any: 1-255 printable ASCII characters.
    pub fn new(instance_id: &str, raw: Option<String>) -> Result<Self, ApiError> {
        if let Some(k) = &raw {
            if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(ApiError::bad_request(
                    "VALIDATION_ERROR",
                    "Idempotency-Key must be 1-255 printable ASCII characters",
                ));
            }
        }
        Ok(Self {
            instance_id: instance_id.to_string(),
            key: raw,
        })
    }
}

/// SHA-256 (hex) over the parts of a request, each length-prefixed.
pub(super) fn request_hash(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// What a send answered: its `data`, and whether it is the stored answer of an earlier
/// request with the same `Idempotency-Key` (then nothing was sent).
pub struct Outcome {
    pub data: Value,
    replayed: bool,
}

impl Outcome {
    /// The same outcome with its `data` changed by `f`.
    pub(super) fn map(self, f: impl FnOnce(Value) -> Value) -> Self {
        Self {
            data: f(self.data),
            replayed: self.replayed,
        }
    }

    /// The success envelope; replays carry `Idempotent-Replayed: true`.
    pub(super) fn reply(self, message: &str) -> Response {
        let mut r = ok(message, self.data);
        if self.replayed {
            r.headers_mut().insert(
                "idempotent-replayed",
                warp::http::HeaderValue::from_static("true"),
            );
        }
        r
    }
}

/// Runs `send` at most once per `Idempotency-Key`: the first request sends (with the
/// message id the key derives) and stores the answer; repeats with the same request
/// get that answer, repeats with another request 409 `IDEMPOTENCY_KEY_REUSED`, and
/// repeats while the first is still sending wait for it. Without a key: just `send`.
pub(super) async fn idempotent<F, Fut>(
    api: &Shared,
    idem: &Idem,
    to: &str,
    hash: String,
    send: F,
) -> Result<Outcome, ApiError>
where
    F: FnOnce(Option<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Value, ApiError>> + Send + 'static,
{
    let fresh = |data| Outcome {
        data,
        replayed: false,
    };
    let Some(key) = &idem.key else {
        paced(api, &idem.instance_id, to)?;
        return send(None).await.map(fresh);
    };
    match claim(api, idem, key, to, &hash).await? {
        Claim::Replay(data) => Ok(Outcome {
            data,
            replayed: true,
        }),
        Claim::Send(message_id) => send_keyed(api, idem, key, message_id, send)
            .await
            .map(fresh),
    }
}

/// What the key's row says to do.
enum Claim {
    /// Send, with this message id.
    Send(String),
    /// Answer with the stored answer.
    Replay(Value),
}

/// Claims `key` for this request, waiting (bounded) while an earlier request with it
/// is still sending; a new send must also pass the governor.
async fn claim(
    api: &Shared,
    idem: &Idem,
    key: &str,
    to: &str,
    hash: &str,
) -> Result<Claim, ApiError> {
    use crate::store::idempotency::Begin;
    let keys = &api.idempotency;
    let until = tokio::time::Instant::now() + WAIT_FOR_FIRST;
    loop {
        match keys.begin(&idem.instance_id, key, hash).await? {
            Begin::Send(id) => {
                if let Err(e) = paced(api, &idem.instance_id, to) {
                    if let Err(err) = keys.forget(&idem.instance_id, key).await {
                        tracing::warn!(error = %err, "releasing an idempotency key failed");
                    }
                    return Err(e);
                }
                return Ok(Claim::Send(id));
            }
            Begin::Replay(body) => {
                let data = serde_json::from_str(&body).map_err(|e| {
                    tracing::error!(error = %e, "a stored idempotent answer is not JSON");
                    ApiError::internal()
                })?;
                return Ok(Claim::Replay(data));
            }
            Begin::Conflict => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "IDEMPOTENCY_KEY_REUSED",
                    "This Idempotency-Key was used for a different request",
                ))
            }
            Begin::Pending if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Begin::Pending => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "IDEMPOTENCY_KEY_IN_PROGRESS",
                    "A request with this Idempotency-Key is still being processed",
                ))
            }
        }
    }
}

/// Sends under a claimed key and stores the answer (or releases the key on failure).
/// The send runs in its own task: a client that hangs up mid-send (and retries with
/// the same key) does not cancel it, so its answer is still stored and the retry gets
/// it instead of waiting for the pending row to go stale.
async fn send_keyed<F, Fut>(
    api: &Shared,
    idem: &Idem,
    key: &str,
    message_id: String,
    send: F,
) -> Result<Value, ApiError>
where
    F: FnOnce(Option<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Value, ApiError>> + Send + 'static,
{
    let keys = api.idempotency.clone();
    let (instance_id, key) = (idem.instance_id.clone(), key.to_string());
    let task = tokio::spawn(async move {
        let r = send(Some(message_id)).await;
        let stored = match &r {
            // Sent, but if the answer is not stored a repeat waits for the
            // stale-pending takeover and sends again with the same message id.
            Ok(v) => keys.finish(&instance_id, &key, &v.to_string()).await,
            Err(_) => keys.forget(&instance_id, &key).await,
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, "storing or releasing an idempotency key failed");
        }
        r
    });
    task.await.map_err(|e| {
        tracing::error!(error = %e, "an idempotent send task failed");
        ApiError::internal()
    })?
}

/// The send governor's verdict for one new send (replays are not sends).
fn paced(api: &Shared, instance_id: &str, to: &str) -> Result<(), ApiError> {
    api.governor.admit(instance_id, to).map_err(|p| {
        let message = match p {
            crate::http::ratelimit::Paced::Rate(_) => "Send rate limit of this instance reached",
            crate::http::ratelimit::Paced::NewChats(_) => {
                "New-chat limit of this instance reached (limits.new_chats_per_hour)"
            }
        };
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message);
        e.retry_after = Some(p.retry_after());
        e
    })
}
