//! Per-tenant databases on the shared Postgres: one database and one LOGIN role per tenant,
//! the role owning only that database, never superuser, CONNECT revoked from PUBLIC.

use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("the admin DSN is not valid: {0}")]
    BadDsn(tokio_postgres::Error),
    #[error("cannot reach the shared Postgres at {target}: {}", detail(source))]
    Unreachable {
        target: String,
        source: tokio_postgres::Error,
    },
    #[error("Postgres refused `{statement}`: {}", detail(source))]
    Statement {
        statement: String,
        source: tokio_postgres::Error,
    },
}

/// tokio-postgres displays server errors as just "db error"; the server's message says why.
fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Why a connection failed, without calling the database shared (for the user's own).
pub fn connect_failure(e: &PostgresError) -> String {
    match e {
        PostgresError::Unreachable { target, source } => {
            format!("cannot connect to Postgres at {target}: {}", detail(source))
        }
        other => other.to_string(),
    }
}

/// How long a connection attempt to the shared Postgres may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The controller's admin connection settings for the shared Postgres.
#[derive(Clone, Debug)]
pub struct SharedPostgres {
    config: Config,
    /// host:port, for messages and for tenant DSNs.
    host: String,
    port: u16,
}

impl SharedPostgres {
    /// Parses a DSN in either form (`host=... user=...` or `postgres://...`).
    pub fn from_dsn(dsn: &str) -> Result<Self, PostgresError> {
        let mut config: Config = dsn.parse().map_err(PostgresError::BadDsn)?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        Ok(Self { config, host, port })
    }

    /// The admin connection settings for one tenant's database (usage metering reads it as
    /// admin, so that it never takes one of the connections the tenant role is limited to).
    pub fn database_config(&self, database: &str) -> Config {
        let mut config = self.config.clone();
        config.dbname(database);
        config
    }

    pub fn target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A fresh admin connection (one per pass: a restarted Postgres never leaves a dead client).
    pub async fn connect(&self) -> Result<Client, PostgresError> {
        let (client, connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|source| PostgresError::Unreachable {
                    target: self.target(),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "shared Postgres admin connection ended");
            }
        });
        Ok(client)
    }

    /// The URL Kine connects with, as the tenant's own role.
    pub fn tenant_url(&self, database: &str, password: &str) -> String {
        format!(
            "postgres://{database}:{password}@{}:{}/{database}?sslmode=disable",
            self.host, self.port
        )
    }
}

/// A random password for a tenant role: alphanumeric, so it never needs quoting in SQL or URLs.
pub fn new_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 40)
}

/// Identifiers here are always `hp_<hex>` (see `validate::database_name_for_uid`); quoting
/// them anyway keeps a future naming change from becoming an injection.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

async fn exec(client: &Client, statement: String) -> Result<(), PostgresError> {
    client
        .batch_execute(&statement)
        .await
        .map_err(|source| PostgresError::Statement {
            statement: redact(&statement),
            source,
        })
}

fn redact(statement: &str) -> String {
    match statement.find("PASSWORD") {
        Some(i) => format!("{}PASSWORD <redacted>", &statement[..i]),
        None => statement.to_string(),
    }
}

/// Creates (or repairs) the tenant's role and database. Idempotent; concurrent creation by
/// another pass is tolerated.
pub async fn ensure_database(
    client: &Client,
    name: &str,
    password: &str,
) -> Result<(), PostgresError> {
    let role = quote_ident(name);
    let role_exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .map_err(|source| PostgresError::Statement {
            statement: "SELECT FROM pg_roles".into(),
            source,
        })?
        .is_some();
    // INHERIT is needed: the owner's CREATE on the `public` schema comes through the implicit
    // pg_database_owner role (Postgres 15+); the role is a member of nothing else.
    let attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT";
    if !role_exists {
        match exec(
            client,
            format!(
                "CREATE ROLE {role} {attributes} PASSWORD {}",
                quote_literal(password)
            ),
        )
        .await
        {
            Err(PostgresError::Statement { source, .. })
                if source.code() == Some(&SqlState::DUPLICATE_OBJECT) => {}
            other => other?,
        }
        info!(role = name, "created tenant role");
    }
    // Repair drift every pass: attributes and password back to what the tenant's Kine uses.
    exec(
        client,
        format!(
            "ALTER ROLE {role} {attributes} PASSWORD {}",
            quote_literal(password)
        ),
    )
    .await?;

    let db_exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|source| PostgresError::Statement {
            statement: "SELECT FROM pg_database".into(),
            source,
        })?
        .is_some();
    if !db_exists {
        match exec(client, format!("CREATE DATABASE {role} OWNER {role}")).await {
            Err(PostgresError::Statement { source, .. })
                if source.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
            other => other?,
        }
        info!(database = name, "created tenant database");
    }
    exec(client, format!("ALTER DATABASE {role} OWNER TO {role}")).await?;
    // Only the owner may connect: other tenants' roles are PUBLIC to this database.
    exec(client, format!("REVOKE ALL ON DATABASE {role} FROM PUBLIC")).await?;
    Ok(())
}

/// Statements holding the tenant role to its limits: at most `connections` sessions (Postgres
/// answers more with "too many connections for role"), none running longer than
/// `statement_timeout_seconds`. Both apply to sessions opened after them.
pub fn role_limit_statements(
    name: &str,
    connections: i32,
    statement_timeout_seconds: i32,
) -> [String; 2] {
    let role = quote_ident(name);
    [
        format!("ALTER ROLE {role} CONNECTION LIMIT {connections}"),
        format!("ALTER ROLE {role} SET statement_timeout = '{statement_timeout_seconds}s'"),
    ]
}

/// Applies `role_limit_statements` (every pass: a role edited by hand is repaired).
pub async fn ensure_role_limits(
    client: &Client,
    name: &str,
    connections: i32,
    statement_timeout_seconds: i32,
) -> Result<(), PostgresError> {
    for statement in role_limit_statements(name, connections, statement_timeout_seconds) {
        exec(client, statement).await?;
    }
    Ok(())
}

/// Drops the tenant's database and role; a missing one is not an error (resumable teardown).
pub async fn drop_database(client: &Client, name: &str) -> Result<(), PostgresError> {
    let ident = quote_ident(name);
    // FORCE ends the tenant's Kine connections, in case its process outlived the runtime.
    exec(
        client,
        format!("DROP DATABASE IF EXISTS {ident} WITH (FORCE)"),
    )
    .await?;
    exec(client, format!("DROP ROLE IF EXISTS {ident}")).await?;
    info!(database = name, "dropped tenant database and role");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_url_uses_the_tenant_role_and_database() {
        let pg = SharedPostgres::from_dsn(
            "host=127.0.0.1 port=15432 user=postgres password=x dbname=postgres",
        )
        .unwrap();
        assert_eq!(
            pg.tenant_url("hp_ab", "pw"),
            "postgres://hp_ab:pw@127.0.0.1:15432/hp_ab?sslmode=disable"
        );
        let pg = SharedPostgres::from_dsn("postgres://admin:x@db.example:6543/postgres").unwrap();
        assert_eq!(pg.target(), "db.example:6543");
    }

    #[test]
    fn passwords_are_long_and_need_no_quoting() {
        let p = new_password();
        assert_eq!(p.len(), 40);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(p, new_password());
    }

    #[test]
    fn statements_with_passwords_are_redacted_in_errors() {
        assert_eq!(
            redact("ALTER ROLE \"x\" LOGIN PASSWORD 'secret'"),
            "ALTER ROLE \"x\" LOGIN PASSWORD <redacted>"
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn the_role_is_limited_in_connections_and_statement_time() {
        assert_eq!(
            role_limit_statements("hp_ab", 20, 60),
            [
                "ALTER ROLE \"hp_ab\" CONNECTION LIMIT 20",
                "ALTER ROLE \"hp_ab\" SET statement_timeout = '60s'"
            ]
        );
    }

    #[test]
    fn a_bad_dsn_is_a_clear_error() {
        let err = SharedPostgres::from_dsn("host=127.0.0.1 port=notaport").unwrap_err();
        assert!(
            err.to_string().starts_with("the admin DSN is not valid"),
            "{err}"
        );
    }
}
