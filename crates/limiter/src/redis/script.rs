//! The Lua scripts, embedded at compile time, and how they are invoked: `EVALSHA`,
//! falling back to `EVAL` (which also caches the script) on `NOSCRIPT` after a
//! restart, a `SCRIPT FLUSH` or a failover to a node that never saw it.

use redis::{Cmd, ErrorKind, RedisResult, Value};

/// One embedded script.
pub(crate) struct LuaScript {
    pub(crate) name: &'static str,
    source: &'static str,
    sha: String,
}

macro_rules! script {
    ($name:literal, $file:literal) => {
        LuaScript::new(
            $name,
            concat!(
                include_str!("../../lua/common.lua"),
                include_str!(concat!("../../lua/", $file))
            ),
        )
    };
}

/// The scripts of one store, hashed once at start.
pub(crate) struct Scripts {
    pub(crate) acquire: LuaScript,
    pub(crate) reconcile: LuaScript,
    pub(crate) release: LuaScript,
    pub(crate) record: LuaScript,
    pub(crate) update: LuaScript,
    pub(crate) status: LuaScript,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            acquire: script!("sluice_acquire_v5", "acquire.lua"),
            reconcile: script!("sluice_reconcile_v3", "reconcile.lua"),
            release: script!("sluice_release_v2", "release.lua"),
            record: script!("sluice_record_v4", "record.lua"),
            update: script!("sluice_update_v1", "update.lua"),
            status: script!("sluice_status_v1", "status.lua"),
        }
    }
}

impl LuaScript {
    fn new(name: &'static str, source: &'static str) -> Self {
        let sha = redis::Script::new(source).get_hash().to_owned();
        Self { name, source, sha }
    }

    /// `EVALSHA <sha> <numkeys> <keys…> <args…>`.
    pub(crate) fn evalsha(&self, keys: &[String], args: &[String]) -> Cmd {
        self.command("EVALSHA", &self.sha, keys, args)
    }

    /// `EVAL <source> <numkeys> <keys…> <args…>`.
    fn eval(&self, keys: &[String], args: &[String]) -> Cmd {
        self.command("EVAL", self.source, keys, args)
    }

    fn command(&self, verb: &str, body: &str, keys: &[String], args: &[String]) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
        cmd
    }

    /// Runs the script on `conn`, reloading it when the server has forgotten it.
    pub(crate) async fn invoke<C>(
        &self,
        conn: &mut C,
        keys: &[String],
        args: &[String],
    ) -> RedisResult<Value>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        match self.evalsha(keys, args).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                tracing::info!(
                    script = self.name,
                    "script not cached on the server; loading it"
                );
                self.eval(keys, args).query_async(conn).await
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evalsha_command_is_pinned() {
        let scripts = Scripts::new();
        let cmd = scripts.acquire.evalsha(
            &["sluice:{g}:w:a".to_owned(), "sluice:{g}:s:a".to_owned()],
            &["".to_owned(), "0".to_owned()],
        );
        let packed = String::from_utf8(cmd.get_packed_command()).unwrap();
        let expected = format!(
            "*7\r\n$7\r\nEVALSHA\r\n$40\r\n{}\r\n$1\r\n2\r\n$14\r\nsluice:{{g}}:w:a\r\n$14\r\nsluice:{{g}}:s:a\r\n$0\r\n\r\n$1\r\n0\r\n",
            scripts.acquire.sha
        );
        assert_eq!(packed, expected);
    }

    #[test]
    fn the_scan_stops_where_the_in_process_store_stops() {
        let scripts = Scripts::new();
        let line = format!(
            "local GOOD_HEADROOM, GOOD_AFTER = {}, {}",
            crate::memory::GOOD_HEADROOM,
            crate::memory::GOOD_AFTER
        );
        assert!(scripts.acquire.source.contains(&line), "{line}");
    }

    #[test]
    fn every_script_starts_with_the_common_header_and_has_its_own() {
        let scripts = Scripts::new();
        for s in [
            &scripts.acquire,
            &scripts.reconcile,
            &scripts.release,
            &scripts.record,
            &scripts.update,
            &scripts.status,
        ] {
            assert!(s.source.starts_with("-- sluice common helpers v1"));
            assert!(
                s.source.contains(&format!("-- {}:", s.name)),
                "{} has no header",
                s.name
            );
            assert_eq!(s.sha.len(), 40);
        }
    }
}
