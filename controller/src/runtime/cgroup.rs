//! CPU limits for a tenant's processes (the processes runtime), through Linux control groups:
//! one group per tenant under `hostplane/`, with a CPU bandwidth limit (cgroup v2 `cpu.max`,
//! cgroup v1 `cpu.cfs_quota_us`). Every process of the tenant is moved into its group when it
//! starts or is adopted, so a tenant's write storm can use at most its share of the machine's
//! CPUs while the others keep theirs. The pods runtime gets the same from the kubelet through
//! the containers' CPU limits.

use std::path::{Path, PathBuf};

/// The bandwidth period: quotas are expressed per 100 ms, the kernel's default.
const PERIOD_US: u64 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    /// The unified hierarchy: `cpu.max` holds "QUOTA PERIOD" or "max PERIOD".
    V2,
    /// The legacy `cpu` controller: `cpu.cfs_period_us` and `cpu.cfs_quota_us` (-1 unlimited).
    V1,
}

/// The tenants' CPU groups.
#[derive(Clone, Debug)]
pub struct CpuGroups {
    version: Version,
    /// `<mount>/hostplane`: one directory per tenant below it.
    root: PathBuf,
}

/// What the files of a group must hold for a limit of `millicores` (`None`: unlimited).
fn bandwidth_files(version: Version, millicores: Option<u32>) -> Vec<(&'static str, String)> {
    let quota = millicores.map(|m| (u64::from(m) * PERIOD_US / 1000).max(1000));
    match version {
        Version::V2 => vec![(
            "cpu.max",
            match quota {
                Some(q) => format!("{q} {PERIOD_US}"),
                None => format!("max {PERIOD_US}"),
            },
        )],
        Version::V1 => vec![
            ("cpu.cfs_period_us", PERIOD_US.to_string()),
            (
                "cpu.cfs_quota_us",
                quota.map_or_else(|| "-1".to_string(), |q| q.to_string()),
            ),
        ],
    }
}

/// The burst file of either version and what it must hold: one period's quota, 0 unlimited.
fn burst_file(version: Version, millicores: Option<u32>) -> (&'static str, String) {
    let burst = millicores.map_or(0, |m| (u64::from(m) * PERIOD_US / 1000).max(1000));
    match version {
        Version::V2 => ("cpu.max.burst", burst.to_string()),
        Version::V1 => ("cpu.cfs_burst_us", burst.to_string()),
    }
}

impl CpuGroups {
    /// Finds a writable CPU controller: cgroup v2 at /sys/fs/cgroup (with `cpu` enabled for
    /// children), else cgroup v1's `cpu` hierarchy. The error says why limits cannot be enforced.
    pub fn detect() -> Result<Self, String> {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    fn detect_at(mount: &Path) -> Result<Self, String> {
        let controllers = std::fs::read_to_string(mount.join("cgroup.controllers"));
        let (version, root) = match controllers {
            Ok(c) if c.split_whitespace().any(|c| c == "cpu") => {
                (Version::V2, mount.join("hostplane"))
            }
            Ok(_) => {
                return Err(format!(
                    "the cgroup v2 hierarchy at {} offers no cpu controller",
                    mount.display()
                ));
            }
            Err(_) if mount.join("cpu/cpu.cfs_quota_us").exists() => {
                (Version::V1, mount.join("cpu/hostplane"))
            }
            Err(_) => {
                return Err(format!(
                    "no cpu controller under {} (neither cgroup v2 nor v1's cpu hierarchy)",
                    mount.display()
                ));
            }
        };
        let groups = Self { version, root };
        std::fs::create_dir_all(&groups.root)
            .map_err(|e| format!("cannot create {}: {e}", groups.root.display()))?;
        if version == Version::V2 {
            // Children of `hostplane/` get the cpu controller (the parent's own subtree_control
            // must already enable it: systemd does for delegated or root slices).
            std::fs::write(groups.root.join("cgroup.subtree_control"), "+cpu").map_err(|e| {
                format!(
                    "cannot enable the cpu controller in {}: {e}",
                    groups.root.display()
                )
            })?;
        }
        Ok(groups)
    }

    fn group(&self, tenant: &str) -> PathBuf {
        self.root.join(tenant)
    }

    /// Creates (or updates) the tenant's group with a limit of `millicores` (`None`: unlimited).
    ///
    /// The group may also burst by one period's quota saved while it was under its limit (kernels
    /// from 5.14; older ones have no burst file and simply throttle): a quiet tenant's short
    /// bursts (a request, a GC cycle) are less often cut into 100 ms slices, while a tenant using
    /// its whole quota all the time, as a storm does, has nothing saved to burst with. Measured
    /// (bench/RESULTS.md, noisy neighbour): a quiet tenant limited to 250 millicores has a p99 of
    /// 76–94 ms on its own where an unlimited one has 9–12 ms; the burst narrows that only a
    /// little.
    pub fn limit(&self, tenant: &str, millicores: Option<u32>) -> std::io::Result<()> {
        let group = self.group(tenant);
        std::fs::create_dir_all(&group)?;
        // The burst first: it must not exceed the quota, which may be about to shrink.
        let (burst_file, burst) = burst_file(self.version, millicores);
        let _ = std::fs::write(group.join(burst_file), "0");
        for (file, value) in bandwidth_files(self.version, millicores) {
            std::fs::write(group.join(file), value)?;
        }
        match std::fs::write(group.join(burst_file), burst) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Moves process `pid` (all its threads) into the tenant's group.
    pub fn place(&self, tenant: &str, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.group(tenant).join("cgroup.procs"), pid.to_string())
    }

    /// The processes in the tenant's group.
    pub fn members(&self, tenant: &str) -> Vec<u32> {
        std::fs::read_to_string(self.group(tenant).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Removes the tenant's group once its processes are gone (the kernel refuses while any is
    /// left; a group that does not exist is fine).
    pub fn remove(&self, tenant: &str) -> std::io::Result<()> {
        match std::fs::remove_dir(self.group(tenant)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_the_bandwidth_files_of_either_version() {
        assert_eq!(
            bandwidth_files(Version::V2, Some(500)),
            [("cpu.max", "50000 100000".to_string())]
        );
        assert_eq!(
            bandwidth_files(Version::V2, None),
            [("cpu.max", "max 100000".to_string())]
        );
        assert_eq!(
            bandwidth_files(Version::V1, Some(1500)),
            [
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "150000".to_string())
            ]
        );
        assert_eq!(
            bandwidth_files(Version::V1, None),
            [
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "-1".to_string())
            ]
        );
        // The kernel's minimum quota is 1 ms per period.
        assert_eq!(
            bandwidth_files(Version::V2, Some(1)),
            [("cpu.max", "1000 100000".to_string())]
        );
    }

    #[test]
    fn a_limited_group_may_burst_by_one_periods_quota() {
        assert_eq!(
            burst_file(Version::V1, Some(250)),
            ("cpu.cfs_burst_us", "25000".to_string())
        );
        assert_eq!(
            burst_file(Version::V2, Some(2000)),
            ("cpu.max.burst", "200000".to_string())
        );
        assert_eq!(
            burst_file(Version::V1, None),
            ("cpu.cfs_burst_us", "0".to_string())
        );
    }

    #[test]
    fn a_machine_without_a_cpu_controller_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = CpuGroups::detect_at(dir.path()).unwrap_err();
        assert!(err.contains("no cpu controller under"), "{err}");
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        let err = CpuGroups::detect_at(dir.path()).unwrap_err();
        assert!(err.contains("offers no cpu controller"), "{err}");
    }
}
