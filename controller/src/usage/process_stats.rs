//! CPU time and resident memory of local processes, read from `/proc` (processes runtime).
//!
//! The parsers are pure functions over the files' text, so that the quirks of the formats (a
//! command name that contains spaces or parentheses, the fields' positions) are unit-tested on
//! whole captured files rather than on whatever this machine runs.

/// What one process has used so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessUsage {
    /// User plus system CPU time over the process's life, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// `AT_CLKTCK` of the ELF auxiliary vector: the kernel's `USER_HZ`, the unit of the CPU times in
/// `/proc/<pid>/stat`.
const AT_CLKTCK: usize = 17;

/// `USER_HZ` on every architecture Kubernetes runs on, for when `/proc/self/auxv` is unreadable.
const DEFAULT_CLOCK_TICKS: u64 = 100;

/// User plus system time of `/proc/<pid>/stat`, in clock ticks (fields 14 and 15).
pub fn cpu_ticks_from_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) is parenthesised and may itself hold ") " or spaces: the
    // fields after it start after its last ')'.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    // Field 3 (state) is the first after the name: utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes (the kernel writes it in kB, meaning KiB).
pub fn rss_bytes_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

/// The value of `key` in an ELF auxiliary vector (`/proc/self/auxv`): native-endian machine
/// words in (key, value) pairs, ending with key 0.
pub fn auxv_value(auxv: &[u8], key: usize) -> Option<usize> {
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |bytes: &[u8]| usize::from_ne_bytes(bytes.try_into().expect("chunk of WORD bytes"));
    auxv.chunks_exact(2 * WORD)
        .map(|pair| (word(&pair[..WORD]), word(&pair[WORD..])))
        .take_while(|(k, _)| *k != 0)
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times.
pub fn clock_ticks_per_second() -> u64 {
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| auxv_value(&auxv, AT_CLKTCK))
        .and_then(|ticks| u64::try_from(ticks).ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(DEFAULT_CLOCK_TICKS)
}

/// What process `pid` has used; `None` when it is gone (or not readable).
pub fn read(pid: u32, clock_ticks: u64) -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcessUsage {
        cpu_seconds: cpu_ticks_from_stat(&stat)? as f64 / clock_ticks as f64,
        // A zombie has no VmRSS line: it holds no memory.
        rss_bytes: rss_bytes_from_status(&status).unwrap_or(0),
    })
}

/// The sum over several processes; gone ones count as nothing.
pub fn total(pids: impl IntoIterator<Item = u32>) -> ProcessUsage {
    let ticks = clock_ticks_per_second();
    pids.into_iter()
        .filter_map(|pid| read(pid, ticks))
        .fold(ProcessUsage::default(), |sum, p| ProcessUsage {
            cpu_seconds: sum.cpu_seconds + p.cpu_seconds,
            rss_bytes: sum.rss_bytes + p.rss_bytes,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/<pid>/stat` of a kube-apiserver (Linux 6.x), whole.
    const APISERVER_STAT: &str = "48213 (kube-apiserver) S 48170 48213 48170 0 -1 1077936384 \
        118214 0 12 0 5234 1187 0 0 20 0 14 0 9345071 2214813696 71843 18446744073709551615 \
        4194304 73826965 140726403913728 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0 80355328 \
        81577024 93597696 140726403920513 140726403921911 140726403921911 140726403923937 0\n";

    /// A process whose name holds spaces and a closing parenthesis.
    const ODD_NAME_STAT: &str = "77 (we) ird (name) R 1 77 77 0 -1 4194560 10 0 0 0 \
        250 50 0 0 20 0 1 0 100 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 \
        0 0 0 0 0 0 0 0 0 0\n";

    const APISERVER_STATUS: &str = "Name:\tkube-apiserver\nUmask:\t0022\nState:\tS (sleeping)\n\
        Tgid:\t48213\nNgid:\t0\nPid:\t48213\nPPid:\t48170\nTracerPid:\t0\n\
        Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t128\nGroups:\t0 \nNStgid:\t48213\n\
        NSpid:\t48213\nNSpgid:\t48213\nNSsid:\t48170\nKthread:\t0\n\
        VmPeak:\t 2214813 kB\nVmSize:\t 2162904 kB\nVmLck:\t       0 kB\nVmPin:\t       0 kB\n\
        VmHWM:\t  301844 kB\nVmRSS:\t  287372 kB\nRssAnon:\t  201908 kB\nRssFile:\t   85464 kB\n\
        RssShmem:\t       0 kB\nVmData:\t  392376 kB\nVmStk:\t     132 kB\nVmExe:\t   67416 kB\n\
        VmLib:\t       8 kB\nVmPTE:\t     796 kB\nVmSwap:\t       0 kB\nThreads:\t14\n\
        SigQ:\t0/63304\nSigPnd:\t0000000000000000\nvoluntary_ctxt_switches:\t3120\n\
        nonvoluntary_ctxt_switches:\t211\n";

    /// A zombie's status has no Vm* lines.
    const ZOMBIE_STATUS: &str = "Name:\tkine\nState:\tZ (zombie)\nTgid:\t91\nPid:\t91\n\
        PPid:\t1\nThreads:\t1\nSigQ:\t0/63304\n";

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        assert_eq!(cpu_ticks_from_stat(APISERVER_STAT), Some(5234 + 1187));
        assert_eq!(cpu_ticks_from_stat(ODD_NAME_STAT), Some(300));
    }

    #[test]
    fn truncated_or_garbled_stat_is_none() {
        assert_eq!(cpu_ticks_from_stat(""), None);
        assert_eq!(cpu_ticks_from_stat("48213 (kube-apiserver"), None);
        // A prefix of a real file never panics; cut inside stime it reads a prefix of it.
        for end in 0..APISERVER_STAT.len() {
            let got = cpu_ticks_from_stat(&APISERVER_STAT[..end]);
            assert!(
                got.is_none_or(|t| (5234 + 1..=5234 + 1187).contains(&t)),
                "{end}"
            );
        }
        assert_eq!(
            cpu_ticks_from_stat("1 (x) S 1 2 3 4 5 6 7 8 9 10 a b"),
            None
        );
    }

    #[test]
    fn rss_comes_from_vmrss_in_kib() {
        assert_eq!(rss_bytes_from_status(APISERVER_STATUS), Some(287372 * 1024));
        assert_eq!(rss_bytes_from_status(ZOMBIE_STATUS), None);
        assert_eq!(rss_bytes_from_status("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn clock_ticks_come_from_the_auxiliary_vector() {
        let words: Vec<usize> = vec![
            33, 0x7ffd, 16, 0xbfebfbff, 6, 4096, 17, 250, 3, 0x400040, 0, 0,
        ];
        let auxv: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(auxv_value(&auxv, AT_CLKTCK), Some(250));
        assert_eq!(auxv_value(&auxv, 6), Some(4096));
        // Keys after the terminating pair are not read; a missing key is None.
        let mut after_end = auxv.clone();
        after_end.extend([99usize, 1].iter().flat_map(|w| w.to_ne_bytes()));
        assert_eq!(auxv_value(&after_end, 99), None);
        assert_eq!(auxv_value(&auxv[..auxv.len() - 3], 3), Some(0x400040));
        assert_eq!(auxv_value(&[], AT_CLKTCK), None);
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn this_process_has_used_some_cpu_and_memory() {
        let me = std::process::id();
        // Burn a little CPU so that at least one tick is accounted.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert_ne!(x, 1);
        let usage = total([me, u32::MAX]);
        assert!(usage.rss_bytes > 1024 * 1024, "{usage:?}");
        assert!(usage.cpu_seconds > 0.0, "{usage:?}");
    }
}
