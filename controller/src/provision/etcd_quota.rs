//! Space upkeep of a dedicated etcd whose tenant is at its storage limit or whose own backstop
//! quota fired (NOSPACE alarm).
//!
//! Deleting objects frees nothing in etcd by itself: the deleted revisions stay until a
//! compaction (kube-apiserver compacts every 5 minutes, etcd's own periodic compaction after
//! 10), and the pages compaction frees stay in the file until a defragmentation. A tenant that
//! deleted objects to get its writes back would wait minutes for its usage to fall, and a
//! NOSPACE alarm, once raised, stays until someone disarms it — with it etcd refuses every
//! write, the control plane's leases included. So each pass compacts to the current revision
//! while the tenant is read-only (its deletes then count at the next sample), compacts and
//! defragments when the file nears etcd's quota or the alarm is raised, and disarms the alarm
//! once the file is under the quota again.

use etcd_client::{AlarmAction, AlarmType, CompactionOptions};
use tracing::info;

use crate::build::processes::EtcdClientTls;
use crate::provision::etcd::{EtcdError, connect, refused, request};

/// What a dedicated etcd looks like before upkeep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EtcdSpace {
    /// The tenant is read-only (`quota::StorageState::Exceeded`).
    pub read_only: bool,
    /// A NOSPACE alarm is raised.
    pub nospace_alarm: bool,
    /// The bbolt file's size, what `--quota-backend-bytes` is compared with.
    pub db_size: i64,
    pub quota_backend_bytes: i64,
}

/// What to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Upkeep {
    /// Compact to the current revision, physically (so freed pages count at once).
    pub compact: bool,
    /// Defragment: give freed pages back, shrinking the file.
    pub defragment: bool,
}

/// Defragment before etcd's quota is reached: at 90% of it.
const DEFRAG_AT_PERCENT: i64 = 90;

pub fn upkeep(space: &EtcdSpace) -> Upkeep {
    let near_quota = i128::from(space.db_size) * 100
        >= i128::from(space.quota_backend_bytes) * i128::from(DEFRAG_AT_PERCENT);
    Upkeep {
        compact: space.read_only || space.nospace_alarm || near_quota,
        defragment: space.nospace_alarm || near_quota,
    }
}

/// Disarm a raised alarm only with room under the quota: disarmed above it, etcd raises it
/// again at the next write.
pub fn should_disarm(nospace_alarm: bool, db_size_after: i64, quota_backend_bytes: i64) -> bool {
    nospace_alarm && db_size_after < quota_backend_bytes
}

/// What upkeep did, for the log and the tests.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UpkeepReport {
    pub compacted_to: Option<i64>,
    pub defragmented: bool,
    pub disarmed: bool,
    pub db_size: i64,
    pub db_size_in_use: i64,
}

/// Looks at the etcd and carries out `upkeep`. Cheap when nothing is due: one status and one
/// alarm list.
pub async fn maintain(
    endpoints: &[String],
    tls: &EtcdClientTls,
    read_only: bool,
    quota_backend_bytes: i64,
) -> Result<UpkeepReport, EtcdError> {
    let mut client = connect(endpoints, tls).await?;
    let op = "reading its status";
    let status = request(endpoints, op, client.status())
        .await?
        .map_err(|e| refused(endpoints, op, &e))?;
    let op = "listing alarms";
    let alarms = request(
        endpoints,
        op,
        client.alarm(AlarmAction::Get, AlarmType::None, None),
    )
    .await?
    .map_err(|e| refused(endpoints, op, &e))?;
    let nospace_alarm = alarms
        .alarms()
        .iter()
        .any(|a| a.alarm() == AlarmType::Nospace);
    let todo = upkeep(&EtcdSpace {
        read_only,
        nospace_alarm,
        db_size: status.db_size(),
        quota_backend_bytes,
    });
    let mut report = UpkeepReport {
        db_size: status.db_size(),
        db_size_in_use: status.raft_used_db_size(),
        ..UpkeepReport::default()
    };
    if todo == Upkeep::default() {
        return Ok(report);
    }
    if todo.compact {
        let revision = status.header().map_or(0, |h| h.revision());
        let op = format!("compacting to revision {revision}");
        match request(
            endpoints,
            &op,
            client.compact(revision, Some(CompactionOptions::new().with_physical())),
        )
        .await?
        {
            Ok(_) => report.compacted_to = Some(revision),
            // Compacted already (by the API server or an earlier pass): nothing to do.
            Err(e) if crate::provision::etcd::detail(&e).contains("compacted") => {}
            Err(e) => return Err(refused(endpoints, &op, &e)),
        }
    }
    if todo.defragment {
        let op = "defragmenting";
        request(endpoints, op, client.defragment())
            .await?
            .map_err(|e| refused(endpoints, op, &e))?;
        report.defragmented = true;
    }
    let op = "reading its status";
    let after = request(endpoints, op, client.status())
        .await?
        .map_err(|e| refused(endpoints, op, &e))?;
    report.db_size = after.db_size();
    report.db_size_in_use = after.raft_used_db_size();
    if should_disarm(nospace_alarm, after.db_size(), quota_backend_bytes) {
        let op = "disarming the NOSPACE alarm";
        // Member 0: every member's NOSPACE alarm (a dedicated etcd has one member).
        request(
            endpoints,
            op,
            client.alarm(AlarmAction::Deactivate, AlarmType::Nospace, None),
        )
        .await?
        .map_err(|e| refused(endpoints, op, &e))?;
        report.disarmed = true;
    }
    info!(
        endpoints = %endpoints.join(","),
        compacted_to = ?report.compacted_to,
        defragmented = report.defragmented,
        disarmed = report.disarmed,
        db_size = report.db_size,
        db_size_in_use = report.db_size_in_use,
        "dedicated etcd space upkeep"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: i64 = 100 << 20;

    fn space(read_only: bool, nospace_alarm: bool, db_size: i64) -> EtcdSpace {
        EtcdSpace {
            read_only,
            nospace_alarm,
            db_size,
            quota_backend_bytes: QUOTA,
        }
    }

    #[test]
    fn a_writable_tenant_without_alarm_is_left_alone() {
        assert_eq!(upkeep(&space(false, false, QUOTA / 2)), Upkeep::default());
    }

    #[test]
    fn a_read_only_tenant_is_compacted_and_any_file_near_the_quota_defragmented() {
        assert_eq!(
            [
                upkeep(&space(true, false, QUOTA / 2)),
                upkeep(&space(true, false, QUOTA / 10 * 9)),
                upkeep(&space(false, false, QUOTA / 10 * 9)),
            ],
            [
                Upkeep {
                    compact: true,
                    defragment: false
                },
                Upkeep {
                    compact: true,
                    defragment: true
                },
                Upkeep {
                    compact: true,
                    defragment: true
                },
            ]
        );
    }

    #[test]
    fn an_alarmed_etcd_is_compacted_defragmented_and_disarmed_once_under_its_quota() {
        assert_eq!(
            upkeep(&space(false, true, QUOTA + 5)),
            Upkeep {
                compact: true,
                defragment: true
            }
        );
        assert_eq!(
            [
                should_disarm(true, QUOTA - 1, QUOTA),
                should_disarm(true, QUOTA, QUOTA),
                should_disarm(false, 0, QUOTA),
            ],
            [true, false, false]
        );
    }
}
