//! [`Consumer`]: reads the stream as one member of a consumer group, so that each
//! observation is applied once however many sidecars run, and claims the pending
//! observations of members that stopped acknowledging (a sidecar that died).

use std::time::Duration;

use redis::Value;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};

use crate::{Observation, ObserveError};

/// The longest a read blocks: under the 500 ms response timeout of the connection.
const MAX_BLOCK: Duration = Duration::from_millis(400);

/// How a consumer reads.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// The stream key.
    pub stream: String,
    /// The consumer group (one per fleet of sidecars).
    pub group: String,
    /// This consumer's unique name (e.g. the pod or host name and pid).
    pub name: String,
    /// The most observations read at once.
    pub count: usize,
    /// How long one read waits for new observations. Kept below the connection's
    /// response timeout (500 ms): a longer block would end every idle read in a timeout.
    pub block: Duration,
    /// How long an observation may stay unacknowledged before another member claims it.
    pub claim_after: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            stream: crate::DEFAULT_STREAM.to_owned(),
            group: "sluice-sidecar".to_owned(),
            name: format!("sidecar-{}", std::process::id()),
            count: 256,
            block: Duration::from_millis(250),
            claim_after: Duration::from_secs(10),
        }
    }
}

/// One observation read from the stream, to acknowledge once applied.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The stream entry id.
    pub id: String,
    /// The observation, or `None` when the entry could not be decoded (acknowledge it
    /// anyway: it will never decode).
    pub observation: Option<Observation>,
}

/// A member of the sidecars' consumer group.
pub struct Consumer {
    conn: sluice_limiter::RedisConnection,
    options: ConsumerOptions,
}

impl Consumer {
    /// Joins (creating if needed) the group on `url`.
    pub async fn join(url: &str, options: ConsumerOptions) -> Result<Self, ObserveError> {
        let mut conn =
            sluice_limiter::RedisConnection::connect(url, Duration::from_secs(5)).await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&options.stream)
            .arg(&options.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
        Ok(Self { conn, options })
    }

    /// Observations left pending by members idle longer than `claim_after`, claimed
    /// for this member.
    pub async fn claim_stale(&mut self) -> Result<Vec<Delivery>, ObserveError> {
        let o = &self.options;
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&o.stream)
            .arg(&o.group)
            .arg(&o.name)
            .arg(o.claim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(o.count)
            .query_async(&mut self.conn)
            .await?;
        Ok(reply
            .claimed
            .into_iter()
            .map(|e| decode(e.id, &e.map))
            .collect())
    }

    /// New observations (waiting up to `block` for some).
    pub async fn read(&mut self) -> Result<Vec<Delivery>, ObserveError> {
        let o = &self.options;
        let reply: StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&o.group)
            .arg(&o.name)
            .arg("COUNT")
            .arg(o.count)
            .arg("BLOCK")
            .arg(o.block.min(MAX_BLOCK).as_millis() as u64)
            .arg("STREAMS")
            .arg(&o.stream)
            .arg(">")
            .query_async(&mut self.conn)
            .await?;
        Ok(reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|e| decode(e.id, &e.map))
            .collect())
    }

    /// Acknowledges applied observations.
    pub async fn ack(&mut self, ids: &[String]) -> Result<(), ObserveError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: u64 = redis::cmd("XACK")
            .arg(&self.options.stream)
            .arg(&self.options.group)
            .arg(ids)
            .query_async(&mut self.conn)
            .await?;
        Ok(())
    }
}

fn decode(id: String, map: &std::collections::HashMap<String, Value>) -> Delivery {
    let observation = match map.get("v1") {
        Some(Value::BulkString(b)) => serde_json::from_slice(b).ok(),
        _ => None,
    };
    Delivery { id, observation }
}
