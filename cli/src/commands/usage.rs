//! `hostplane usage`: what each tenant uses, as the controller last sampled it (status.usage).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use hostplane_crds::{ControlPlane, UsageStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;

const COLUMNS: &str = "\
Columns:
  NAME       the ControlPlane
  CPU(s)     CPU seconds its control plane components (kube-apiserver, kube-controller-manager,
             kube-scheduler, Kine or its etcd) have used since they last started; in the pods
             runtime the metrics API's rate added up over the sampling intervals
  MEMORY     their resident memory now (0 while hibernated; the pods' working set in the pods
             runtime)
  STORAGE    bytes of live keys and values it keeps in its datastore: what a storage limit
             (spec.limits.maxStorageBytes) is measured against
  DATASTORE  the datastore's own size for it (its Postgres database, SQLite file or dedicated
             etcd's file, history and free pages included); - where it shares one (shared etcd)
  OBJECTS    objects (keys) its API server stores
  REQUESTS   requests its API server has served since it last started (its own components'
             and the controller's health checks included)
  REQ/S      requests per second over the last sampling interval
  SAMPLED    how long ago the controller sampled these (every --usage-interval-seconds)

Sizes are in powers of 1024 (Ki, Mi, Gi). A tenant not sampled yet shows - throughout.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// The usage objects keyed by ControlPlane name (null when not sampled yet).
    Json,
}

#[derive(Args, Debug)]
#[command(after_help = COLUMNS)]
pub struct UsageArgs {
    /// Only this ControlPlane.
    pub name: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the host cluster (set KUBECONFIG; `hostplane up` prints it)")?;
    let api = Api::<ControlPlane>::all(client);
    let cps = match &args.name {
        Some(name) => match api.get_opt(name).await? {
            Some(cp) => vec![cp],
            None => bail!("controlplane {name} not found"),
        },
        None => api.list(&Default::default()).await?.items,
    };
    let usages: BTreeMap<String, Option<UsageStatus>> = cps
        .into_iter()
        .map(|cp| {
            let name = cp.metadata.name.unwrap_or_default();
            (name, cp.status.and_then(|s| s.usage))
        })
        .collect();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&usages)?),
        Output::Table => print!("{}", table(&usages, Timestamp::now())),
    }
    Ok(())
}

const HEADER: [&str; 9] = [
    "NAME",
    "CPU(s)",
    "MEMORY",
    "STORAGE",
    "DATASTORE",
    "OBJECTS",
    "REQUESTS",
    "REQ/S",
    "SAMPLED",
];

/// The table, columns as wide as their widest cell.
fn table(usages: &BTreeMap<String, Option<UsageStatus>>, now: Timestamp) -> String {
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| h.to_string()).collect()];
    for (name, usage) in usages {
        let mut row = vec![name.clone()];
        match usage {
            Some(u) => row.extend([
                format!("{:.1}", u.cpu_seconds),
                bytes(u.memory_bytes),
                bytes(u.storage_bytes),
                u.datastore_bytes.map_or("-".into(), bytes),
                u.objects.to_string(),
                u.api_requests.to_string(),
                format!("{:.2}", u.api_request_rate),
                age(now, u.sampled_time.0),
            ]),
            None => row.extend(std::iter::repeat_n("-".to_string(), HEADER.len() - 1)),
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Bytes in powers of 1024 the way kubectl prints quantities: `980`, `1.5Ki`, `12.3Mi`.
fn bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if n.abs() < 1024 {
        return n.to_string();
    }
    let mut value = n as f64;
    let mut unit = "";
    for u in UNITS {
        if value.abs() < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1}{unit}")
}

/// How long ago, in the largest whole unit kubectl's AGE uses (`45s`, `3m`, `2h`, `4d`).
fn age(now: Timestamp, then: Timestamp) -> String {
    let seconds = now.duration_since(then).as_secs().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn sizes_read_like_kubectl_quantities() {
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(980), "980");
        assert_eq!(bytes(1024), "1.0Ki");
        assert_eq!(bytes(1536), "1.5Ki");
        assert_eq!(bytes(12_897_485), "12.3Mi");
        assert_eq!(bytes(3 << 30), "3.0Gi");
        assert_eq!(bytes(i64::MAX), "8.0Ei");
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let now: Timestamp = "2026-11-30T00:00:00Z".parse().unwrap();
        let ago = |s: i64| age(now, now - k8s_openapi::jiff::SignedDuration::from_secs(s));
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(45), "45s");
        assert_eq!(ago(600), "10m");
        assert_eq!(ago(3 * 3600), "3h");
        assert_eq!(ago(5 * 86400), "5d");
        // A clock behind the controller's does not print negative ages.
        assert_eq!(ago(-5), "0s");
    }

    #[test]
    fn the_table_has_a_row_per_tenant_and_dashes_where_unknown() {
        let now: Timestamp = "2026-11-30T00:00:30Z".parse().unwrap();
        let usages = BTreeMap::from([
            (
                "alpha".to_string(),
                Some(UsageStatus {
                    sampled_time: Time("2026-11-30T00:00:18Z".parse().unwrap()),
                    cpu_seconds: 64.21,
                    memory_bytes: 301_334_528,
                    storage_bytes: 1_258_291,
                    datastore_bytes: Some(8_912_896),
                    objects: 240,
                    api_requests: 4182,
                    api_request_rate: 1.5,
                }),
            ),
            (
                "beta".to_string(),
                Some(UsageStatus {
                    sampled_time: Time("2026-11-30T00:00:25Z".parse().unwrap()),
                    cpu_seconds: 0.0,
                    memory_bytes: 0,
                    storage_bytes: 0,
                    datastore_bytes: None,
                    objects: 0,
                    api_requests: 0,
                    api_request_rate: 0.0,
                }),
            ),
            ("gamma".to_string(), None),
        ]);
        assert_eq!(
            table(&usages, now),
            "\
NAME    CPU(s)   MEMORY    STORAGE   DATASTORE   OBJECTS   REQUESTS   REQ/S   SAMPLED
alpha   64.2     287.4Mi   1.2Mi     8.5Mi       240       4182       1.50    12s
beta    0.0      0         0         -           0         0          0.00    5s
gamma   -        -         -         -           -         -          -       -
"
        );
    }
}
