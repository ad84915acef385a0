//! How much a tenant keeps in its datastore, measured where it lives:
//!
//! - Kine on Postgres (the shared one, or the user's): `pg_database_size` of its database, and
//!   the newest row of every live key in Kine's `kine` table;
//! - Kine on SQLite (embedded default): the same keys read through Kine's own etcd API (the
//!   controller has no SQLite client, and wants no C library for one), and the file's size;
//! - a dedicated etcd: its status (db size, and the part of it in use) and a count of keys;
//! - the shared etcd: the keys under the tenant's prefix.
//!
//! Everywhere the keys counted are the tenant API server's (under its prefix, `/registry/`
//! unless it has its own on the shared etcd): never Kine's bookkeeping rows
//! (`compact_rev_key`, `gap-<revision>` fillers), which live outside it.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use tokio_postgres::NoTls;

/// The tenant API server's key prefix where it has no `--etcd-prefix` (Kine, dedicated etcd).
pub const APISERVER_PREFIX: &str = "/registry/";

/// How long connecting, and each statement or request, may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Keys per page when reading values: etcd allows values up to 1.5 MiB, so a page stays under
/// the client's message limit below even when every value is that big.
const PAGE_KEYS: i64 = 50;
const MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// What a datastore holds for one tenant; `None` where it cannot tell.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoreFigures {
    /// Bytes of live keys and values.
    pub storage_bytes: Option<i64>,
    /// Live keys.
    pub objects: Option<i64>,
    /// The datastore's own size for this tenant (database, etcd db file).
    pub datastore_bytes: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error("Postgres at {target}: {detail}")]
    Postgres { target: String, detail: String },
    #[error("etcd at {endpoint}: {detail}")]
    Etcd { endpoint: String, detail: String },
    #[error("{0}")]
    SharedEtcd(#[from] crate::provision::etcd::EtcdError),
}

/// The live keys of Kine's table under the API server's prefix: the newest row of each name,
/// unless that row records a deletion.
const KINE_LIVE_KEYS_SQL: &str = "\
    SELECT count(*)::bigint, \
           COALESCE(sum(octet_length(name) + COALESCE(octet_length(value), 0)), 0)::bigint \
    FROM (SELECT DISTINCT ON (name) name, deleted, value \
          FROM kine WHERE name >= $1 AND name < $2 \
          ORDER BY name, id DESC) AS newest \
    WHERE deleted = 0";

/// The end of the key range under `prefix`: the prefix with its last byte incremented (what
/// etcd's `WithPrefix` does), so `/registry/` ends at `/registry0`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// Connection settings from a DSN in either form (`host=... user=...` or `postgres://...`).
pub fn postgres_config(dsn: &str) -> Result<tokio_postgres::Config, DatastoreError> {
    dsn.parse()
        .map_err(|e: tokio_postgres::Error| DatastoreError::Postgres {
            target: "the tenant's DSN".into(),
            detail: e.to_string(),
        })
}

/// Kine's database on Postgres: its size, and Kine's live keys. One short-lived connection per
/// sample.
pub async fn kine_on_postgres(
    mut config: tokio_postgres::Config,
) -> Result<StoreFigures, DatastoreError> {
    config.connect_timeout(TIMEOUT);
    let target = match (config.get_hosts().first(), config.get_ports().first()) {
        (Some(tokio_postgres::config::Host::Tcp(host)), Some(port)) => format!("{host}:{port}"),
        (Some(tokio_postgres::config::Host::Tcp(host)), None) => format!("{host}:5432"),
        _ => "the tenant's DSN".into(),
    };
    let failed = |e: tokio_postgres::Error| DatastoreError::Postgres {
        target: target.clone(),
        detail: match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        },
    };
    let (client, connection) = config.connect(NoTls).await.map_err(failed)?;
    let connection = tokio::spawn(connection);
    let figures = async {
        client
            .batch_execute(&format!("SET statement_timeout = {}", TIMEOUT.as_millis()))
            .await?;
        let database_bytes: i64 = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await?
            .get(0);
        let end = String::from_utf8(prefix_end(APISERVER_PREFIX)).expect("ASCII prefix");
        let (objects, storage_bytes) = match client
            .query_one(KINE_LIVE_KEYS_SQL, &[&APISERVER_PREFIX, &end])
            .await
        {
            Ok(row) => (row.get::<_, i64>(0), row.get::<_, i64>(1)),
            // Kine creates its table when it first starts: nothing stored yet.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => (0, 0),
            Err(e) => return Err(e),
        };
        Ok(StoreFigures {
            storage_bytes: Some(storage_bytes),
            objects: Some(objects),
            datastore_bytes: Some(database_bytes),
        })
    }
    .await;
    drop(client);
    connection.abort();
    figures.map_err(failed)
}

/// Live keys under `prefix` and the bytes of their keys and values, read page by page at one
/// revision (a consistent snapshot, however long the read takes).
pub async fn live_keys(client: &Client, prefix: &str) -> Result<(i64, i64), etcd_client::Error> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let end = prefix_end(prefix);
    let mut start = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let (mut keys, mut bytes) = (0i64, 0i64);
    let mut last: Option<Vec<u8>> = None;
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE_KEYS);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let page = kv.get(start.clone(), Some(options)).await?;
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        for pair in page.kvs() {
            // A server that treats the start key as inclusive repeats the last key: once only.
            if last.as_deref().is_some_and(|l| pair.key() <= l) {
                continue;
            }
            keys += 1;
            bytes += (pair.key().len() + pair.value().len()) as i64;
            last = Some(pair.key().to_vec());
        }
        match (&last, page.more()) {
            (Some(key), true) if page.kvs().last().is_some_and(|p| p.key() == key) => {
                // The next page starts just after the last key: the key plus a zero byte.
                start = key.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok((keys, bytes))
}

fn etcd_failed(endpoint: &str) -> impl Fn(etcd_client::Error) -> DatastoreError + '_ {
    move |e| DatastoreError::Etcd {
        endpoint: endpoint.to_string(),
        detail: crate::provision::etcd::detail(&e),
    }
}

/// Kine's live keys through its etcd API (plain gRPC on loopback, as the tenant API server
/// reaches it), and the size of its SQLite files.
pub async fn kine_on_sqlite(
    kine_port: u16,
    kine_dir: &Path,
) -> Result<StoreFigures, DatastoreError> {
    let endpoint = format!("http://127.0.0.1:{kine_port}");
    let options = ConnectOptions::new()
        .with_connect_timeout(TIMEOUT)
        .with_timeout(TIMEOUT);
    let failed = etcd_failed(&endpoint);
    let client = Client::connect([endpoint.as_str()], Some(options))
        .await
        .map_err(&failed)?;
    let (objects, storage_bytes) = live_keys(&client, APISERVER_PREFIX)
        .await
        .map_err(&failed)?;
    Ok(StoreFigures {
        storage_bytes: Some(storage_bytes),
        objects: Some(objects),
        datastore_bytes: sqlite_file_bytes(kine_dir),
    })
}

/// Kine's SQLite database with its write-ahead log (`state.db`, `state.db-wal`): what the
/// tenant takes on disk. Readable while the tenant is hibernated.
pub fn sqlite_file_bytes(kine_dir: &Path) -> Option<i64> {
    files_bytes(&[kine_dir.join("state.db"), kine_dir.join("state.db-wal")])
}

/// A dedicated etcd's bbolt file (`member/snap/db` of its data dir), for when it is stopped.
pub fn etcd_file_bytes(data_dir: &Path) -> Option<i64> {
    files_bytes(&[data_dir.join("member/snap/db")])
}

/// The sum of the sizes of those of `files` that exist; `None` when none does.
fn files_bytes(files: &[std::path::PathBuf]) -> Option<i64> {
    let sizes: Vec<u64> = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .collect();
    (!sizes.is_empty()).then(|| sizes.iter().sum::<u64>() as i64)
}

/// A dedicated etcd: its db size and the part in use (what its quota and a compaction move),
/// and how many keys the tenant API server keeps in it.
pub async fn dedicated_etcd(
    endpoint: &str,
    tls: &crate::build::processes::EtcdClientTls,
) -> Result<StoreFigures, DatastoreError> {
    let endpoints = [endpoint.to_string()];
    let mut client = crate::provision::etcd::connect(&endpoints, tls).await?;
    let failed = etcd_failed(endpoint);
    let status = tokio::time::timeout(TIMEOUT, client.status())
        .await
        .map_err(|_| DatastoreError::Etcd {
            endpoint: endpoint.into(),
            detail: format!("status: no answer within {TIMEOUT:?}"),
        })?
        .map_err(&failed)?;
    let count = tokio::time::timeout(
        TIMEOUT,
        client.get(
            APISERVER_PREFIX,
            Some(GetOptions::new().with_prefix().with_count_only()),
        ),
    )
    .await
    .map_err(|_| DatastoreError::Etcd {
        endpoint: endpoint.into(),
        detail: format!("count: no answer within {TIMEOUT:?}"),
    })?
    .map_err(&failed)?;
    Ok(StoreFigures {
        storage_bytes: Some(status.raft_used_db_size()),
        objects: Some(count.count()),
        datastore_bytes: Some(status.db_size()),
    })
}

/// The tenant's keys on the shared etcd (its prefix), read with the controller's root client.
/// The database is everyone's: no size of its own.
pub async fn shared_etcd(
    shared: &crate::provision::etcd::SharedEtcd,
    key_prefix: &str,
) -> Result<StoreFigures, DatastoreError> {
    let client = shared.root_client().await?;
    let endpoint = shared.endpoints().join(",");
    let (objects, storage_bytes) =
        tokio::time::timeout(TIMEOUT * 3, live_keys(&client, key_prefix))
            .await
            .map_err(|_| DatastoreError::Etcd {
                endpoint: endpoint.clone(),
                detail: format!("reading {key_prefix}: no answer within {:?}", TIMEOUT * 3),
            })?
            .map_err(etcd_failed(&endpoint))?;
    Ok(StoreFigures {
        storage_bytes: Some(storage_bytes),
        objects: Some(objects),
        datastore_bytes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_increment_the_last_byte() {
        assert_eq!(prefix_end("/registry/"), b"/registry0");
        assert_eq!(prefix_end("/hostplane/0f8e/"), b"/hostplane/0f8e0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn file_sizes_add_up_and_missing_files_are_none() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(sqlite_file_bytes(tmp.path()), None);
        std::fs::write(tmp.path().join("state.db"), vec![0u8; 4096]).unwrap();
        assert_eq!(sqlite_file_bytes(tmp.path()), Some(4096));
        std::fs::write(tmp.path().join("state.db-wal"), vec![0u8; 100]).unwrap();
        assert_eq!(sqlite_file_bytes(tmp.path()), Some(4196));
        assert_eq!(etcd_file_bytes(tmp.path()), None);
    }
}
