//! The store: one SQL dialect for SQLite (default, WAL) and PostgreSQL, through
//! sqlx's `Any` driver. Every statement here is written to run unchanged on both
//! (`$N` parameters, `ON CONFLICT`, `BIGINT`/`TEXT` columns only; times are Unix
//! milliseconds, audit times Unix microseconds).
//!
//! Writes are single statements, so SQLite never has to upgrade a read transaction
//! to a write one (which fails instead of waiting), and a crash never leaves half a
//! change behind.

use crate::error::ControlError;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::collections::BTreeMap;
use std::time::Duration;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Migrations, applied in order; each entry is a list of statements. Append only.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, role TEXT NOT NULL, name TEXT NOT NULL,
  labels TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT,
  one_time BIGINT NOT NULL, used_at BIGINT, used_by TEXT);
CREATE TABLE IF NOT EXISTS machines (
  id TEXT PRIMARY KEY, public_key TEXT NOT NULL, hostname TEXT NOT NULL,
  labels TEXT NOT NULL, enrolled_at BIGINT NOT NULL, last_seen BIGINT,
  policy_held TEXT, revoked BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
  seq BIGINT PRIMARY KEY, name TEXT NOT NULL, version BIGINT NOT NULL,
  policy_id TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL,
  created_by TEXT NOT NULL, created_at BIGINT NOT NULL, note TEXT NOT NULL,
  UNIQUE (name, version));
CREATE TABLE IF NOT EXISTS audit_events (
  id TEXT PRIMARY KEY, time_us BIGINT NOT NULL, machine TEXT NOT NULL,
  session TEXT NOT NULL, usr TEXT NOT NULL, surface TEXT NOT NULL, action TEXT NOT NULL,
  target TEXT NOT NULL, decision TEXT NOT NULL, received_at BIGINT NOT NULL,
  body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time_us);
CREATE INDEX IF NOT EXISTS audit_events_machine ON audit_events (machine, time_us);
CREATE INDEX IF NOT EXISTS audit_events_session ON audit_events (session, time_us);
CREATE INDEX IF NOT EXISTS audit_events_surface ON audit_events (surface, time_us);
CREATE INDEX IF NOT EXISTS audit_events_decision ON audit_events (decision, time_us);
CREATE INDEX IF NOT EXISTS audit_events_target ON audit_events (target, time_us);
CREATE TABLE IF NOT EXISTS sessions (
  id TEXT PRIMARY KEY, machine TEXT NOT NULL, usr TEXT NOT NULL, agent TEXT NOT NULL,
  policy TEXT NOT NULL, started_at BIGINT, ended_at BIGINT, exit_status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (
  name TEXT PRIMARY KEY, value_enc TEXT NOT NULL, updated_at BIGINT NOT NULL,
  updated_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
  id TEXT PRIMARY KEY, machine TEXT NOT NULL, session TEXT NOT NULL, name TEXT NOT NULL,
  created_at BIGINT NOT NULL, revoked_at BIGINT);
CREATE INDEX IF NOT EXISTS leases_session ON leases (machine, session);
CREATE TABLE IF NOT EXISTS server_keys (
  id TEXT PRIMARY KEY, secret_enc TEXT NOT NULL, public_key TEXT NOT NULL,
  created_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS console_sessions (
  hash TEXT PRIMARY KEY, token_id TEXT NOT NULL, role TEXT NOT NULL, csrf TEXT NOT NULL,
  expires_at BIGINT NOT NULL)
"#];

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 of a Unix-milliseconds time.
pub fn fmt_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A row of `tokens`. `hash` never leaves the server.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub id: String,
    #[serde(skip)]
    pub hash: String,
    pub role: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub one_time: bool,
    pub used_at: Option<i64>,
    pub used_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MachineRow {
    pub id: String,
    pub public_key: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at: i64,
    pub last_seen: Option<i64>,
    pub policy_held: Option<String>,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyRow {
    pub seq: i64,
    pub name: String,
    pub version: i64,
    pub policy_id: String,
    pub source: String,
    pub target: String,
    pub created_by: String,
    pub created_at: i64,
    pub note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub id: String,
    pub machine: String,
    pub user: String,
    pub agent: String,
    pub policy: String,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub exit_status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretMeta {
    pub name: String,
    pub updated_at: i64,
    pub updated_by: String,
}

/// An audit event as stored, with the indexed columns split out.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: String,
    pub time_us: i64,
    pub machine: String,
    pub session: String,
    pub user: String,
    pub surface: String,
    pub action: String,
    pub target: String,
    pub decision: String,
    pub body: String,
}

/// A console login, joined with its token.
#[derive(Debug, Clone)]
pub struct ConsoleSession {
    pub token_id: String,
    pub role: String,
    pub csrf: String,
    /// The token's name: who is acting.
    pub name: String,
}

/// Audit query filters; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub surface: Option<String>,
    pub decision: Option<String>,
    pub session: Option<String>,
    pub machine: Option<String>,
    pub target: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub limit: i64,
    /// Ascending by time (export) instead of newest first.
    pub ascending: bool,
}

fn labels_of(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

impl Store {
    /// Open (and migrate) the database at `url`: `sqlite://PATH` or `postgres://…`.
    pub async fn open(url: &str) -> Result<Store, ControlError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(ControlError::Config(format!(
                "unsupported database URL scheme in {:?}: use sqlite://PATH or postgres://…",
                redact_url(url)
            )));
        };
        let max = if backend == Backend::Sqlite { 8 } else { 16 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA synchronous=FULL").await?;
                        conn.execute("PRAGMA busy_timeout=30000").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let store = Store {
            pool,
            backend,
            url: url.to_string(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL the store was opened with (for the PostgreSQL listener).
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn migrate(&self) -> Result<(), ControlError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            // Replicas starting together must not race on DDL.
            conn.execute("SELECT pg_advisory_lock(707007)").await?;
        }
        let result = async {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations \
                 (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .await?;
            let done: i64 =
                sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
                    .fetch_one(&mut *conn)
                    .await?
                    .try_get("v")?;
            for (i, m) in MIGRATIONS.iter().enumerate() {
                let version = i as i64 + 1;
                if version <= done {
                    continue;
                }
                for stmt in m.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    conn.execute(stmt).await?;
                }
                sqlx::query(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2) \
                     ON CONFLICT (version) DO NOTHING",
                )
                .bind(version)
                .bind(now_ms())
                .execute(&mut *conn)
                .await?;
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_unlock(707007)").await?;
        }
        result.map_err(ControlError::from)
    }

    /// Check the database answers.
    pub async fn ping(&self) -> Result<(), ControlError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- settings and keys ------------------------------------------------------

    pub async fn setting(&self, key: &str) -> Result<Option<String>, ControlError> {
        self.one(
            sqlx::query("SELECT value FROM settings WHERE key = $1").bind(key),
            |r| Ok(r.try_get("value")?),
        )
        .await
    }

    /// Insert a setting unless present; true when this call inserted it.
    pub async fn setting_insert(&self, key: &str, value: &str) -> Result<bool, ControlError> {
        let r = sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The stored server key `(secret_enc, public_key)`, inserting `candidate` first
    /// when there is none (the first replica to start wins).
    pub async fn server_key(
        &self,
        id: &str,
        candidate: (&str, &str),
    ) -> Result<(String, String), ControlError> {
        sqlx::query(
            "INSERT INTO server_keys (id, secret_enc, public_key, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(candidate.0)
        .bind(candidate.1)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let r = sqlx::query("SELECT secret_enc, public_key FROM server_keys WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok((r.try_get("secret_enc")?, r.try_get("public_key")?))
    }

    // ---- tokens -----------------------------------------------------------------

    fn token_row(r: &AnyRow) -> Result<TokenRow, ControlError> {
        Ok(TokenRow {
            id: r.try_get("id")?,
            hash: r.try_get("hash")?,
            role: r.try_get("role")?,
            name: r.try_get("name")?,
            labels: labels_of(&r.try_get::<String, _>("labels")?),
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            one_time: r.try_get::<i64, _>("one_time")? != 0,
            used_at: r.try_get("used_at")?,
            used_by: r.try_get("used_by")?,
        })
    }

    const TOKEN_INSERT: &str = "INSERT INTO tokens (id, hash, role, name, labels, created_at, \
        expires_at, one_time, used_at, used_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)";

    fn bind_token<'q>(q: AnyQuery<'q>, t: &'q TokenRow) -> AnyQuery<'q> {
        q.bind(&t.id)
            .bind(&t.hash)
            .bind(&t.role)
            .bind(&t.name)
            .bind(labels_text(&t.labels))
            .bind(t.created_at)
            .bind(t.expires_at)
            .bind(i64::from(t.one_time))
    }

    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), ControlError> {
        let q = sqlx::query(sqlx::AssertSqlSafe(Self::TOKEN_INSERT));
        self.affected(Self::bind_token(q, t)).await?;
        Ok(())
    }

    /// Insert or replace the token with this id (admin bootstrap from the
    /// environment). Replicas starting together may both run it: on PostgreSQL the
    /// loser of that race can fail on the token's other unique key (`hash`, which
    /// `ON CONFLICT (id)` does not arbitrate) instead of updating; once the winner has
    /// committed, a second attempt takes the update path.
    pub async fn upsert_token(&self, t: &TokenRow) -> Result<(), ControlError> {
        let sql = format!(
            "{} ON CONFLICT (id) DO UPDATE SET hash = excluded.hash, role = excluded.role, \
             name = excluded.name, expires_at = excluded.expires_at",
            Self::TOKEN_INSERT
        );
        let attempt = || {
            let q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            self.affected(Self::bind_token(q, t))
        };
        if attempt().await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            attempt().await?;
        }
        Ok(())
    }

    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, ControlError> {
        self.one(
            sqlx::query("SELECT * FROM tokens WHERE hash = $1").bind(hash),
            Self::token_row,
        )
        .await
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, ControlError> {
        self.all(
            sqlx::query("SELECT * FROM tokens ORDER BY created_at DESC"),
            Self::token_row,
        )
        .await
    }

    pub async fn delete_token(&self, id: &str) -> Result<bool, ControlError> {
        Ok(self
            .affected(sqlx::query("DELETE FROM tokens WHERE id = $1").bind(id))
            .await?
            > 0)
    }

    /// Atomically mark a one-time enrollment token used. `Some` only for the one
    /// caller that consumed a valid, unexpired, unused token.
    pub async fn consume_enroll_token(
        &self,
        hash: &str,
        machine: &str,
        now: i64,
    ) -> Result<Option<TokenRow>, ControlError> {
        let r = sqlx::query(
            "UPDATE tokens SET used_at = $1, used_by = $2 WHERE hash = $3 AND role = 'enroll' \
             AND used_at IS NULL AND (expires_at IS NULL OR expires_at > $1)",
        )
        .bind(now)
        .bind(machine)
        .bind(hash)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        self.token_by_hash(hash).await
    }

    // ---- machines ---------------------------------------------------------------

    fn machine_row(r: &AnyRow) -> Result<MachineRow, ControlError> {
        Ok(MachineRow {
            id: r.try_get("id")?,
            public_key: r.try_get("public_key")?,
            hostname: r.try_get("hostname")?,
            labels: labels_of(&r.try_get::<String, _>("labels")?),
            enrolled_at: r.try_get("enrolled_at")?,
            last_seen: r.try_get("last_seen")?,
            policy_held: r.try_get("policy_held")?,
            revoked: r.try_get::<i64, _>("revoked")? != 0,
        })
    }

    pub async fn insert_machine(&self, m: &MachineRow) -> Result<(), ControlError> {
        sqlx::query(
            "INSERT INTO machines (id, public_key, hostname, labels, enrolled_at, last_seen, \
             policy_held, revoked) VALUES ($1, $2, $3, $4, $5, $6, NULL, 0)",
        )
        .bind(&m.id)
        .bind(&m.public_key)
        .bind(&m.hostname)
        .bind(labels_text(&m.labels))
        .bind(m.enrolled_at)
        .bind(m.last_seen)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn machine(&self, id: &str) -> Result<Option<MachineRow>, ControlError> {
        self.one(
            sqlx::query("SELECT * FROM machines WHERE id = $1").bind(id),
            Self::machine_row,
        )
        .await
    }

    pub async fn list_machines(&self) -> Result<Vec<MachineRow>, ControlError> {
        self.all(
            sqlx::query("SELECT * FROM machines ORDER BY enrolled_at"),
            Self::machine_row,
        )
        .await
    }

    pub async fn count_machines(&self) -> Result<i64, ControlError> {
        self.count(sqlx::query(
            "SELECT COUNT(*) AS n FROM machines WHERE revoked = 0",
        ))
        .await
    }

    pub async fn revoke_machine(&self, id: &str) -> Result<bool, ControlError> {
        Ok(self
            .affected(sqlx::query("UPDATE machines SET revoked = 1 WHERE id = $1").bind(id))
            .await?
            > 0)
    }

    /// Record when machines were last seen and which policy they were served.
    pub async fn touch_machines(
        &self,
        seen: &[(String, i64, Option<String>)],
    ) -> Result<(), ControlError> {
        // One transaction per flush: after a push every machine is touched at once, and
        // one commit (one fsync on SQLite) per machine would hold the writer for seconds.
        for chunk in seen.chunks(1000) {
            let mut tx = self.pool.begin().await?;
            for (id, at, held) in chunk {
                sqlx::query(
                    "UPDATE machines SET last_seen = $1, policy_held = COALESCE($2, policy_held) \
                     WHERE id = $3",
                )
                .bind(*at)
                .bind(held.as_deref())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// The ids of every revoked machine.
    pub async fn revoked_machines(&self) -> Result<Vec<String>, ControlError> {
        let rows = sqlx::query("SELECT id FROM machines WHERE revoked = 1")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(ControlError::from))
            .collect()
    }

    // ---- policies ---------------------------------------------------------------

    fn policy_row(r: &AnyRow) -> Result<PolicyRow, ControlError> {
        Ok(PolicyRow {
            seq: r.try_get("seq")?,
            name: r.try_get("name")?,
            version: r.try_get("version")?,
            policy_id: r.try_get("policy_id")?,
            source: r.try_get("source")?,
            target: r.try_get("target")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
            note: r.try_get("note")?,
        })
    }

    /// Store a new version of policy `name`. Retries when another replica took the
    /// same sequence number at the same moment.
    pub async fn insert_policy(
        &self,
        name: &str,
        policy_id: &str,
        source: &str,
        target: &str,
        created_by: &str,
        note: &str,
    ) -> Result<PolicyRow, ControlError> {
        let mut last = None;
        for _ in 0..8 {
            let r = sqlx::query(
                "INSERT INTO policies (seq, name, version, policy_id, source, target, created_by, \
                 created_at, note) VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM policies), $1, \
                 (SELECT COALESCE(MAX(version), 0) + 1 FROM policies WHERE name = $1), $2, $3, $4, \
                 $5, $6, $7)",
            )
            .bind(name)
            .bind(policy_id)
            .bind(source)
            .bind(target)
            .bind(created_by)
            .bind(now_ms())
            .bind(note)
            .execute(&self.pool)
            .await;
            match r {
                Ok(_) => {
                    let row = sqlx::query(
                        "SELECT * FROM policies WHERE name = $1 ORDER BY version DESC LIMIT 1",
                    )
                    .bind(name)
                    .fetch_one(&self.pool)
                    .await?;
                    return Self::policy_row(&row);
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last.map_or_else(
            || ControlError::Corrupt("policy insert failed".into()),
            ControlError::from,
        ))
    }

    /// The latest version of every policy name.
    pub async fn active_policies(&self) -> Result<Vec<PolicyRow>, ControlError> {
        self.all(
            sqlx::query(
                "SELECT p.* FROM policies p WHERE p.version = \
             (SELECT MAX(q.version) FROM policies q WHERE q.name = p.name) ORDER BY p.name",
            ),
            Self::policy_row,
        )
        .await
    }

    pub async fn policy_history(&self, name: &str) -> Result<Vec<PolicyRow>, ControlError> {
        self.all(
            sqlx::query("SELECT * FROM policies WHERE name = $1 ORDER BY version DESC").bind(name),
            Self::policy_row,
        )
        .await
    }

    pub async fn policy_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Option<PolicyRow>, ControlError> {
        self.one(
            sqlx::query("SELECT * FROM policies WHERE name = $1 AND version = $2")
                .bind(name)
                .bind(version),
            Self::policy_row,
        )
        .await
    }

    /// The policy serial: the highest sequence number (0 with no policy).
    pub async fn max_seq(&self) -> Result<i64, ControlError> {
        let r = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS s FROM policies")
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get("s")?)
    }

    /// Tell the other replicas the serial changed (PostgreSQL only).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), ControlError> {
        if self.backend == Backend::Postgres {
            // pg_notify returns `void`, which the Any driver cannot decode: count instead.
            sqlx::query("SELECT COUNT(*) AS n FROM (SELECT pg_notify($1, $2)) AS notified")
                .bind(channel)
                .bind(payload)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    // ---- audit ------------------------------------------------------------------

    /// Store events; each id at most once. Returns how many were new.
    pub async fn insert_events(&self, rows: &[AuditRow]) -> Result<u64, ControlError> {
        let received = now_ms();
        let mut stored = 0;
        // One statement per chunk: atomic, and one fsync per chunk on SQLite.
        for chunk in rows.chunks(500) {
            let mut sql = String::from(
                "INSERT INTO audit_events (id, time_us, machine, session, usr, surface, action, \
                 target, decision, received_at, body) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 11;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                for k in 1..=11 {
                    if k > 1 {
                        sql.push_str(", ");
                    }
                    sql.push('$');
                    sql.push_str(&(b + k).to_string());
                }
                sql.push(')');
            }
            sql.push_str(" ON CONFLICT (id) DO NOTHING");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for r in chunk {
                q = q
                    .bind(&r.id)
                    .bind(r.time_us)
                    .bind(&r.machine)
                    .bind(&r.session)
                    .bind(&r.user)
                    .bind(&r.surface)
                    .bind(&r.action)
                    .bind(&r.target)
                    .bind(&r.decision)
                    .bind(received)
                    .bind(&r.body);
            }
            stored += q.execute(&self.pool).await?.rows_affected();
        }
        Ok(stored)
    }

    /// Events matching the query, as their stored JSON bodies.
    pub async fn query_events(&self, q: &AuditQuery) -> Result<Vec<String>, ControlError> {
        let mut sql = String::from("SELECT body FROM audit_events WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let mut n = 0;
        let mut text = |col: &str, v: &Option<String>, sql: &mut String| {
            if let Some(v) = v {
                n += 1;
                sql.push_str(&format!(" AND {col} = ${n}"));
                args.push(v.clone());
            }
        };
        text("surface", &q.surface, &mut sql);
        text("decision", &q.decision, &mut sql);
        text("session", &q.session, &mut sql);
        text("machine", &q.machine, &mut sql);
        text("target", &q.target, &mut sql);
        let mut ints = Vec::new();
        if let Some(s) = q.since_us {
            ints.push(s);
            sql.push_str(&format!(" AND time_us >= ${}", n + ints.len()));
        }
        if let Some(u) = q.until_us {
            ints.push(u);
            sql.push_str(&format!(" AND time_us < ${}", n + ints.len()));
        }
        let order = if q.ascending { "ASC" } else { "DESC" };
        sql.push_str(&format!(
            " ORDER BY time_us {order}, id {order} LIMIT {}",
            q.limit.clamp(1, 1_000_000)
        ));
        // Only column names and placeholders are formatted in; values are bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for a in &args {
            query = query.bind(a.as_str());
        }
        for i in ints {
            query = query.bind(i);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("body").map_err(ControlError::from))
            .collect()
    }

    pub async fn count_events(&self) -> Result<i64, ControlError> {
        self.count(sqlx::query("SELECT COUNT(*) AS n FROM audit_events"))
            .await
    }

    /// Retention: delete events older than `before_us`.
    pub async fn delete_events_before(&self, before_us: i64) -> Result<u64, ControlError> {
        let r = sqlx::query("DELETE FROM audit_events WHERE time_us < $1")
            .bind(before_us)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    // ---- sessions ---------------------------------------------------------------

    pub async fn session_started(&self, s: &SessionRow) -> Result<(), ControlError> {
        sqlx::query(
            "INSERT INTO sessions (id, machine, usr, agent, policy, started_at, ended_at, \
             exit_status) VALUES ($1, $2, $3, $4, $5, $6, NULL, '') ON CONFLICT (id) DO UPDATE \
             SET started_at = excluded.started_at, usr = excluded.usr, agent = excluded.agent, \
             policy = excluded.policy WHERE sessions.machine = excluded.machine",
        )
        .bind(&s.id)
        .bind(&s.machine)
        .bind(&s.user)
        .bind(&s.agent)
        .bind(&s.policy)
        .bind(s.started_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn session_ended(&self, s: &SessionRow) -> Result<(), ControlError> {
        sqlx::query(
            "INSERT INTO sessions (id, machine, usr, agent, policy, started_at, ended_at, \
             exit_status) VALUES ($1, $2, $3, $4, $5, NULL, $6, $7) ON CONFLICT (id) DO UPDATE \
             SET ended_at = excluded.ended_at, exit_status = excluded.exit_status \
             WHERE sessions.machine = excluded.machine",
        )
        .bind(&s.id)
        .bind(&s.machine)
        .bind(&s.user)
        .bind(&s.agent)
        .bind(&s.policy)
        .bind(s.ended_at)
        .bind(&s.exit_status)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn list_sessions(&self, limit: i64) -> Result<Vec<SessionRow>, ControlError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM sessions ORDER BY COALESCE(started_at, ended_at) DESC LIMIT {}",
            limit.clamp(1, 100_000)
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRow {
                    id: r.try_get("id")?,
                    machine: r.try_get("machine")?,
                    user: r.try_get("usr")?,
                    agent: r.try_get("agent")?,
                    policy: r.try_get("policy")?,
                    started_at: r.try_get("started_at")?,
                    ended_at: r.try_get("ended_at")?,
                    exit_status: r.try_get("exit_status")?,
                })
            })
            .collect()
    }

    // ---- secrets and leases -----------------------------------------------------

    pub async fn put_secret(&self, name: &str, sealed: &str, by: &str) -> Result<(), ControlError> {
        sqlx::query(
            "INSERT INTO secrets (name, value_enc, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET value_enc = excluded.value_enc, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(name)
        .bind(sealed)
        .bind(now_ms())
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn sealed_secret(&self, name: &str) -> Result<Option<String>, ControlError> {
        self.one(
            sqlx::query("SELECT value_enc FROM secrets WHERE name = $1").bind(name),
            |r| Ok(r.try_get("value_enc")?),
        )
        .await
    }

    pub async fn list_secrets(&self) -> Result<Vec<SecretMeta>, ControlError> {
        let rows = sqlx::query("SELECT name, updated_at, updated_by FROM secrets ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SecretMeta {
                    name: r.try_get("name")?,
                    updated_at: r.try_get("updated_at")?,
                    updated_by: r.try_get("updated_by")?,
                })
            })
            .collect()
    }

    pub async fn delete_secret(&self, name: &str) -> Result<bool, ControlError> {
        Ok(self
            .affected(sqlx::query("DELETE FROM secrets WHERE name = $1").bind(name))
            .await?
            > 0)
    }

    pub async fn insert_lease(
        &self,
        id: &str,
        machine: &str,
        session: &str,
        name: &str,
    ) -> Result<(), ControlError> {
        sqlx::query(
            "INSERT INTO leases (id, machine, session, name, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, NULL)",
        )
        .bind(id)
        .bind(machine)
        .bind(session)
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether this machine's session has been ended (its leases revoked).
    pub async fn session_closed(&self, machine: &str, session: &str) -> Result<bool, ControlError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM sessions WHERE id = $1 AND machine = $2 \
             AND ended_at IS NOT NULL",
        )
        .bind(session)
        .bind(machine)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    pub async fn revoke_leases(&self, machine: &str, session: &str) -> Result<u64, ControlError> {
        let r = sqlx::query(
            "UPDATE leases SET revoked_at = $1 WHERE machine = $2 AND session = $3 \
             AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(machine)
        .bind(session)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn active_leases(&self) -> Result<i64, ControlError> {
        self.count(sqlx::query(
            "SELECT COUNT(*) AS n FROM leases WHERE revoked_at IS NULL",
        ))
        .await
    }

    // ---- console sessions -------------------------------------------------------

    pub async fn insert_console_session(
        &self,
        hash: &str,
        token_id: &str,
        role: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), ControlError> {
        sqlx::query(
            "INSERT INTO console_sessions (hash, token_id, role, csrf, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash)
        .bind(token_id)
        .bind(role)
        .bind(csrf)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A live console session: its token still exists and has not expired.
    pub async fn console_session(
        &self,
        hash: &str,
    ) -> Result<Option<ConsoleSession>, ControlError> {
        let now = now_ms();
        let row = sqlx::query(
            "SELECT c.token_id, c.role, c.csrf, t.name FROM console_sessions c JOIN tokens t \
             ON t.id = c.token_id WHERE c.hash = $1 AND c.expires_at > $2 \
             AND (t.expires_at IS NULL OR t.expires_at > $3)",
        )
        .bind(hash)
        .bind(now)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(ConsoleSession {
                token_id: r.try_get("token_id")?,
                role: r.try_get("role")?,
                csrf: r.try_get("csrf")?,
                name: r.try_get("name")?,
            }),
            None => None,
        })
    }

    pub async fn delete_console_session(&self, hash: &str) -> Result<(), ControlError> {
        sqlx::query("DELETE FROM console_sessions WHERE hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

impl Store {
    /// The first row of `q`, converted.
    async fn one<T>(
        &self,
        q: AnyQuery<'_>,
        convert: fn(&AnyRow) -> Result<T, ControlError>,
    ) -> Result<Option<T>, ControlError> {
        q.fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(convert)
            .transpose()
    }

    /// Every row of `q`, converted.
    async fn all<T>(
        &self,
        q: AnyQuery<'_>,
        convert: fn(&AnyRow) -> Result<T, ControlError>,
    ) -> Result<Vec<T>, ControlError> {
        q.fetch_all(&self.pool).await?.iter().map(convert).collect()
    }

    /// Run a write; how many rows it changed.
    async fn affected(&self, q: AnyQuery<'_>) -> Result<u64, ControlError> {
        Ok(q.execute(&self.pool).await?.rows_affected())
    }

    /// The column `n` of a `SELECT COUNT(*) AS n …`.
    async fn count(&self, q: AnyQuery<'_>) -> Result<i64, ControlError> {
        Ok(q.fetch_one(&self.pool).await?.try_get("n")?)
    }
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
