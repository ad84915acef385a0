//! A tenant's limits with the controller's defaults applied (`spec.limits` over
//! `hostplane controller --default-*`), and what each limit becomes in the processes the tenant
//! runs: API server flags, Kine's connection pool, a dedicated etcd's backend quota, the
//! Postgres role's settings. Pure; the quota decision itself is `crate::quota`.

use hostplane_crds::Limits;

const MIB: i64 = 1024 * 1024;

/// Connections Kine keeps open while idle (see `TenantLimits::kine_pool`).
const MAX_IDLE_CONNECTIONS: i32 = 4;

/// What one tenant may use. Every field is set: validation fills what the spec leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantLimits {
    /// Live keys and values the tenant may keep (`status.usage.storageBytes` is measured against
    /// it); at or over it the tenant is read-only.
    pub max_storage_bytes: i64,
    /// kube-apiserver `--max-requests-inflight`.
    pub max_requests_inflight: i32,
    /// kube-apiserver `--max-mutating-requests-inflight`.
    pub max_mutating_requests_inflight: i32,
    /// The tenant Postgres role's `CONNECTION LIMIT`; Kine's pool stays below it.
    pub max_datastore_connections: i32,
    /// The tenant Postgres role's `statement_timeout`.
    pub statement_timeout_seconds: i32,
    /// CPU bandwidth of the tenant's processes together, in millicores; `None` unlimited.
    pub max_cpu_millicores: Option<i32>,
}

impl Default for TenantLimits {
    /// The controller's defaults when no flag says otherwise: 1 GiB of data, the API server's own
    /// inflight limits of 100 and 50 (a quarter of the API server's own defaults, sized for a
    /// small tenant), 64 datastore connections, 60 s statements.
    ///
    /// The connections and the inflight limits go together: Kine on Postgres collapses (from
    /// hundreds of writes per second to a few, measured with 16 concurrent writers against a
    /// pool of 15) once concurrent writes approach its pool, so the pool (48 of the 64) stays
    /// well above what API Priority and Fairness lets the tenant's users run at once (their
    /// priority level's share of the 150 seats, see `build::tenant_limits`).
    fn default() -> Self {
        Self {
            max_storage_bytes: 1024 * MIB,
            max_requests_inflight: 100,
            max_mutating_requests_inflight: 50,
            max_datastore_connections: 64,
            statement_timeout_seconds: 60,
            max_cpu_millicores: None,
        }
    }
}

impl TenantLimits {
    /// The spec's limits, each unset one taken from `defaults`.
    pub fn resolve(spec: Option<&Limits>, defaults: &TenantLimits) -> Self {
        let Some(spec) = spec else {
            return *defaults;
        };
        Self {
            max_storage_bytes: spec.max_storage_bytes.unwrap_or(defaults.max_storage_bytes),
            max_requests_inflight: spec
                .max_requests_inflight
                .unwrap_or(defaults.max_requests_inflight),
            max_mutating_requests_inflight: spec
                .max_mutating_requests_inflight
                .unwrap_or(defaults.max_mutating_requests_inflight),
            max_datastore_connections: spec
                .max_datastore_connections
                .unwrap_or(defaults.max_datastore_connections),
            statement_timeout_seconds: spec
                .statement_timeout_seconds
                .unwrap_or(defaults.statement_timeout_seconds),
            max_cpu_millicores: spec.max_cpu_millicores.or(defaults.max_cpu_millicores),
        }
    }

    /// kube-apiserver flags. With API Priority and Fairness on (the default) the two together
    /// are the server's total concurrency, shared among priority levels.
    pub fn apiserver_args(&self) -> Vec<String> {
        vec![
            format!("--max-requests-inflight={}", self.max_requests_inflight),
            format!(
                "--max-mutating-requests-inflight={}",
                self.max_mutating_requests_inflight
            ),
        ]
    }

    /// Kine's pool on a Postgres it reaches as the tenant role.
    ///
    /// The pool is smaller than the role's `CONNECTION LIMIT` by a quarter (at least one): a
    /// second Kine overlaps the first for a while — the pods runtime's rolling update surges a
    /// new pod before the old one stops, and a restarted process's sessions take a moment to
    /// close — and the newcomer must still get connections while the old pool holds its own.
    /// At most 4 connections stay open while idle (fewer for a smaller pool): the role limit is
    /// a ceiling, not a reservation, and a shared Postgres's `max_connections` must hold every
    /// tenant's idle pool — 60 tenants idling on 24 each would need 1440 (the fault suite hit
    /// "too many clients" on a 300-connection Postgres with 20 tenants before this cap).
    pub fn kine_pool(&self) -> KinePool {
        let limit = self.max_datastore_connections.max(1);
        let reserve = (limit / 4).max(1);
        let max_open = (limit - reserve).max(1);
        KinePool {
            max_open,
            max_idle: max_open.min(MAX_IDLE_CONNECTIONS),
        }
    }

    /// A dedicated etcd's `--quota-backend-bytes`: `max_storage_bytes` plus a quarter, and at
    /// least 64 MiB above it (1 GiB → 1.25 GiB).
    ///
    /// Quota enforcement proper is the admission policy of `crate::quota`, which refuses writes
    /// once the tenant's data in use reaches `max_storage_bytes` and says why; etcd's own quota
    /// is the backstop behind it and must not fire first. etcd compares it with the whole bbolt
    /// file, which is more than the data in use: pages freed by compaction stay in the file
    /// until a defragmentation. The controller defragments any file at 90% of this quota
    /// (`provision::etcd_quota`), so the file stays near its data in use; the quarter covers
    /// what lands between two passes, and the 64 MiB floor the writes the policy lets through
    /// while a small tenant is read-only (leases, Events, the control plane's own). Not more:
    /// the pods runtime's etcd volume (2 Gi) and memory limit (1.5 Gi, bbolt maps the whole
    /// file) are sized for the default 1 GiB limit. When the backstop fires anyway (NOSPACE
    /// alarm: etcd refuses every write but deletes), the controller compacts, defragments and
    /// disarms it once the file is under the quota.
    pub fn etcd_quota_backend_bytes(&self) -> i64 {
        let limit = self.max_storage_bytes;
        limit.saturating_add((limit / 4).max(64 * MIB))
    }
}

/// Kine's `--datastore-max-open-connections` and `--datastore-max-idle-connections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KinePool {
    pub max_open: i32,
    pub max_idle: i32,
}

impl KinePool {
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--datastore-max-open-connections={}", self.max_open),
            format!("--datastore-max-idle-connections={}", self.max_idle),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_limits_take_the_controllers_defaults_field_by_field() {
        let defaults = TenantLimits {
            max_storage_bytes: 10 * MIB,
            ..TenantLimits::default()
        };
        assert_eq!(TenantLimits::resolve(None, &defaults), defaults);
        let spec = Limits {
            max_storage_bytes: Some(2 * MIB),
            max_mutating_requests_inflight: Some(50),
            statement_timeout_seconds: Some(5),
            ..Limits::default()
        };
        assert_eq!(
            TenantLimits::resolve(Some(&spec), &defaults),
            TenantLimits {
                max_storage_bytes: 2 * MIB,
                max_requests_inflight: 100,
                max_mutating_requests_inflight: 50,
                max_datastore_connections: 64,
                statement_timeout_seconds: 5,
                max_cpu_millicores: None,
            }
        );
    }

    #[test]
    fn the_api_server_gets_both_inflight_flags() {
        assert_eq!(
            TenantLimits::default().apiserver_args(),
            [
                "--max-requests-inflight=100",
                "--max-mutating-requests-inflight=50"
            ]
        );
    }

    #[test]
    fn kines_pool_leaves_a_quarter_of_the_role_limit_for_an_overlapping_kine() {
        let pool = |n| {
            TenantLimits {
                max_datastore_connections: n,
                ..TenantLimits::default()
            }
            .kine_pool()
        };
        assert_eq!(
            [pool(2), pool(3), pool(8), pool(20), pool(1000)],
            [
                KinePool {
                    max_open: 1,
                    max_idle: 1
                },
                KinePool {
                    max_open: 2,
                    max_idle: 2
                },
                KinePool {
                    max_open: 6,
                    max_idle: 4
                },
                KinePool {
                    max_open: 15,
                    max_idle: 4
                },
                KinePool {
                    max_open: 750,
                    max_idle: 4
                },
            ]
        );
        assert_eq!(
            pool(20).args(),
            [
                "--datastore-max-open-connections=15",
                "--datastore-max-idle-connections=4"
            ]
        );
    }

    #[test]
    fn etcds_quota_is_a_quarter_and_at_least_64_mib_above_the_storage_limit() {
        let quota = |bytes| {
            TenantLimits {
                max_storage_bytes: bytes,
                ..TenantLimits::default()
            }
            .etcd_quota_backend_bytes()
        };
        assert_eq!(
            [quota(2 * MIB), quota(64 * MIB), quota(1024 * MIB)],
            [66 * MIB, 128 * MIB, 1280 * MIB]
        );
    }
}
