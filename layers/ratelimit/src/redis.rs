//! The Redis store: one budget per key for every Snakeway sharing the Redis.
//!
//! Each request runs one GCRA step as a Lua script on the server (`gcra.lua`: read the TAT,
//! decide, write it back with an expiry, atomically, on Redis' own clock so the fleet's clocks
//! need not agree). The script is sent once and then run by its SHA1 with `EVALSHA`; a server
//! that does not know it (`NOSCRIPT`, e.g. after a restart) gets it again (the `redis` crate's
//! `Script::invoke_async`).
//!
//! The connection is a `redis` [`ConnectionManager`]: one multiplexed connection, reconnected
//! in the background after a failure, with a connect and a response timeout. It runs on a
//! small runtime of its own (one thread, shared by every Redis store of the process), so the
//! connection never depends on a worker's runtime. The device defers its decision
//! ([`Flow::Defer`](snakeway_core::Flow::Defer)): the request waits for the answer, at most
//! `timeout`, without holding a worker thread. A call that does not answer in time is a store
//! error, and the device's `on_store_error` decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::gcra::{Decision, Quota};
use crate::key::redis_key;

/// Why the Redis store could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No answer within the timeout.
    #[error("no answer from redis within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The store's runtime is gone (the process is shutting down).
    #[error("the redis runtime is gone")]
    Closed,
}

/// The GCRA script.
const SCRIPT: &str = include_str!("gcra.lua");

/// The runtime Redis calls run on: one thread, started with the first Redis store.
fn runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("snakeway-redis")
        .enable_all()
        .build()?;
    // A racing thread's runtime is dropped here, before it ran anything.
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Every key's bucket for one quota, in Redis.
pub struct RedisStore {
    quota: Quota,
    connection: ConnectionManager,
    script: Arc<redis::Script>,
    /// Redis key names are this prefix plus the key's hash.
    prefix: String,
    timeout: Duration,
    handle: tokio::runtime::Handle,
}

// === impl RedisStore ===

impl RedisStore {
    /// A store for `quota` in the Redis at `url` (`redis://[user:password@]host[:port][/db]`),
    /// its keys named `prefix` + hash; each call waits at most `timeout`. Connects lazily: a
    /// Redis that is down now is not an error (requests meet `on_store_error` until it is up).
    pub fn open(
        quota: Quota,
        url: &str,
        prefix: String,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let runtime = runtime().map_err(redis::RedisError::from)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let connection = {
            let _entered = runtime.enter();
            ConnectionManager::new_lazy_with_config(client, config)?
        };
        Ok(Self {
            quota,
            connection,
            script: Arc::new(redis::Script::new(SCRIPT)),
            prefix,
            timeout,
            handle: runtime.handle().clone(),
        })
    }

    /// The quota the store counts against.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// Counts one request of `key`: the answer, or an error after at most the store's
    /// timeout. The call runs on the store's runtime; the returned future only waits for it,
    /// so the request waits without holding a worker thread.
    pub fn check(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send + use<> {
        let name = redis_key(&self.prefix, key);
        let interval = self.quota.interval(1000);
        let capacity = self.quota.capacity();
        let mut connection = self.connection.clone();
        let script = self.script.clone();
        let timeout = self.timeout;
        let call = self.handle.spawn(async move {
            let mut invocation = script.key(name);
            invocation.arg(interval).arg(capacity);
            let call = invocation.invoke_async::<(u8, u64, u64, u64)>(&mut connection);
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result.map_err(StoreError::from),
                Err(_) => Err(StoreError::Timeout(timeout)),
            }
        });
        async move {
            let (allowed, remaining, retry_after, reset) =
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(result)) => result?,
                    Ok(Err(_)) => return Err(StoreError::Closed),
                    Err(_) => return Err(StoreError::Timeout(timeout)),
                };
            Ok(Decision {
                allowed: allowed == 1,
                remaining,
                retry_after: Duration::from_micros(retry_after),
                reset: Duration::from_micros(reset),
            })
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("quota", &self.quota)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Lets one log line through per second: store errors are counted every time, logged at most
/// once a second.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last line let through, plus one (0: none yet).
    last: AtomicU64,
}

impl LogThrottle {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now.
    pub(crate) fn allow(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second() {
        let throttle = LogThrottle::new();
        assert!(throttle.allow());
        assert!(
            !throttle.allow(),
            "a second line in the same second is held back"
        );
    }

    #[test]
    fn a_redis_that_is_not_there_is_an_error_within_the_timeout() {
        // Port 1 on loopback: nothing listens there.
        let quota = Quota::new(1, Duration::from_secs(1), 0).expect("quota");
        let store = RedisStore::open(
            quota,
            "redis://127.0.0.1:1/0",
            "t:".into(),
            Duration::from_millis(20),
        )
        .expect("a lazy connection opens without the server");
        let answer = runtime().expect("runtime").block_on(store.check(b"k"));
        assert!(answer.is_err());
    }

    #[test]
    fn bad_urls_are_refused() {
        let quota = Quota::new(1, Duration::from_secs(1), 0).expect("quota");
        assert!(
            RedisStore::open(quota, "http://x", "t:".into(), Duration::from_millis(5)).is_err()
        );
    }
}
