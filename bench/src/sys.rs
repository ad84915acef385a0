//! What the machine and its processes use, read from /proc: available memory, host CPU idle
//! time, and per-process CPU time and memory (RSS, PSS, peak RSS).

use std::time::Duration;

/// Linux reports process CPU times in clock ticks of `USER_HZ`, which is 100 on every
/// architecture Linux runs on (the kernel converts from its internal HZ).
const USER_HZ: f64 = 100.0;

/// A field of a `Key:   value kB` file such as /proc/meminfo or /proc/PID/status, in KiB.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.split(':').next() == Some(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// `MemAvailable` of the whole machine, in MiB: what can be allocated without swapping.
pub fn mem_available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| kib_field(&s, "MemAvailable"))
        .unwrap_or(0)
        / 1024
}

/// Jiffies the host CPUs spent idle (idle + iowait) and in total, from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, fields.iter().sum()))
}

/// Share of host CPU time spent idle over `window`, in percent.
pub async fn cpu_idle_percent(window: Duration) -> f64 {
    let before = cpu_jiffies();
    tokio::time::sleep(window).await;
    match (before, cpu_jiffies()) {
        (Some((idle0, total0)), Some((idle1, total1))) if total1 > total0 => {
            100.0 * (idle1 - idle0) as f64 / (total1 - total0) as f64
        }
        _ => f64::NAN,
    }
}

/// CPU seconds (user + system) a process has used, its children excluded.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; the fields after it start past its ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the ')'.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / USER_HZ
}

/// Memory of one process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Resident set: every page mapped and resident, shared ones counted in full.
    pub rss: u64,
    /// Proportional set: shared pages (the upstream binaries' text, which all tenants map
    /// from the same files) divided among the processes sharing them. The honest cost of
    /// one more tenant.
    pub pss: u64,
}

impl std::ops::AddAssign for Memory {
    fn add_assign(&mut self, other: Memory) {
        self.rss += other.rss;
        self.pss += other.pss;
    }
}

pub fn memory(pid: u32) -> Memory {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Memory {
        rss: kib_field(&rollup, "Rss").unwrap_or_else(|| crate::rss_kib(pid)),
        pss: kib_field(&rollup, "Pss").unwrap_or(0),
    }
}

/// The largest RSS the process has had (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| kib_field(&s, "VmHWM"))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields_by_exact_key() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(kib_field(text, "MemAvailable"), Some(20_480_000));
        assert_eq!(kib_field(text, "MemFree"), Some(100));
        assert_eq!(kib_field(text, "Mem"), None);
    }

    #[test]
    fn own_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(cpu_seconds(pid) > 0.0);
        let m = memory(pid);
        assert!(m.rss > 0 && m.pss > 0 && m.pss <= m.rss, "{m:?}");
        assert!(peak_rss_kib(pid) >= m.rss / 2);
    }
}
