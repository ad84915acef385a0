//! The `processes` runtime: a tenant's Kine, kube-apiserver and kube-controller-manager run as
//! supervised local child processes, one state directory per tenant.
//!
//! - Supervised: a process that exits is started again with exponential backoff.
//! - Adopted, never duplicated: every process's pid is kept in `<name>.pid`; after a controller
//!   restart a live process whose argv matches exactly is adopted instead of started again.
//! - Fingerprinted: when a tenant's files or flags change (say, a new CA) its processes are
//!   restarted with the new ones. A renewed leaf certificate restarts at most the process that
//!   would re-read it only after the one it holds expired (`restarts_for_renewal`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::build::processes::{ControlPlaneBundle, ProcessSpec, ReloadedPair, TenantPorts};
use crate::runtime::cgroup::CpuGroups;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("tenant state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("allocating loopback ports: {0}")]
    Ports(std::io::Error),
}

impl RuntimeError {
    /// The condition and Event reason: a full disk is named as such, since the fix (free space
    /// under the state dir) is the operator's and nothing is wrong with the tenant itself.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::StateDir { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                "StateDirFull"
            }
            _ => "RuntimeFailed",
        }
    }
}

/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting starts over from the smallest backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

struct TenantProcesses {
    fingerprint: String,
    api_ready: watch::Sender<bool>,
    /// In start order (datastore, API server, its clients), each with its own stop signal:
    /// stopped in reverse, since an API server whose datastore went first hangs in its
    /// shutdown until it is killed.
    supervisors: Vec<Supervisor>,
    /// The CPU limit, applied once the API server is ready (see `ensure`).
    cpu_millicores: Option<u32>,
}

/// The task keeping one process running, and its stop signal.
struct Supervisor {
    process: &'static str,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Supervises the processes of every tenant this controller runs.
pub struct ProcessRuntime {
    root: PathBuf,
    tenants: Mutex<HashMap<String, TenantProcesses>>,
    /// One `ensure` or `stop` at a time per tenant: they write the tenant's files and pid files.
    /// Per tenant, not global: a stop waits for the tenant's processes to exit (seconds), and
    /// with one lock every other tenant's start or wake waited behind each hibernation.
    changes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Where tenants' CPU limits are enforced; `None` leaves processes in the controller's group.
    cpu: Option<CpuGroups>,
}

impl ProcessRuntime {
    /// `root` holds one directory per tenant (created as needed, mode 0700).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            tenants: Mutex::default(),
            changes: Mutex::default(),
            cpu: None,
        }
    }

    /// Enforces each bundle's `cpu_millicores` with a control group per tenant.
    pub fn with_cpu_groups(mut self, groups: CpuGroups) -> Self {
        self.cpu = Some(groups);
        self
    }

    /// Creates or updates the tenant's CPU group; a failure is logged, never fatal (the tenant
    /// runs, unlimited, and says so in the log).
    fn limit_cpu(&self, key: &str, millicores: Option<u32>) -> Option<TenantGroup> {
        let groups = self.cpu.as_ref()?;
        match groups.limit(key, millicores) {
            Ok(()) => Some(TenantGroup {
                groups: groups.clone(),
                tenant: key.to_string(),
            }),
            Err(e) => {
                warn!(tenant = key, error = %e, "cannot set the tenant's CPU limit; its processes run without one");
                None
            }
        }
    }

    fn tenant_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.changes.lock().expect("runtime lock");
        locks.entry(key.to_string()).or_default().clone()
    }

    pub fn tenant_dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
        move |source| RuntimeError::StateDir {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The tenant's ports: allocated on first use, then read back from `ports.json` so that a
    /// controller restart keeps every endpoint where it was.
    pub fn ports(&self, key: &str) -> Result<TenantPorts, RuntimeError> {
        let dir = self.tenant_dir(key);
        create_private_dir(&dir).map_err(Self::io_err(&dir))?;
        let path = dir.join("ports.json");
        let kept = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<TenantPorts>(&bytes).ok());
        let ports = match kept {
            Some(ports) if ports.etcd_client != 0 && ports.etcd_peer != 0 => return Ok(ports),
            // Written before dedicated etcd existed: keep its ports, add the etcd ones.
            Some(old) => {
                let taken = [old.kine, old.apiserver, old.controller_manager];
                let [etcd_client, etcd_peer] = loop {
                    let pair = free_ports::<2>().map_err(RuntimeError::Ports)?;
                    if pair.iter().all(|p| !taken.contains(p)) {
                        break pair;
                    }
                };
                TenantPorts {
                    etcd_client,
                    etcd_peer,
                    ..old
                }
            }
            None => {
                let [kine, apiserver, controller_manager, etcd_client, etcd_peer] =
                    free_ports::<5>().map_err(RuntimeError::Ports)?;
                TenantPorts {
                    kine,
                    apiserver,
                    controller_manager,
                    etcd_client,
                    etcd_peer,
                }
            }
        };
        write_private_file(&path, &serde_json::to_vec(&ports).expect("ports serialize"))
            .map_err(Self::io_err(&path))?;
        Ok(ports)
    }

    /// Makes the tenant's processes run `bundle`: writes its files, then starts, adopts or
    /// restarts processes as needed. Returns once supervisors are in place; readiness is the
    /// caller's to check (through the tenant API server).
    pub async fn ensure(&self, key: &str, bundle: &ControlPlaneBundle) -> Result<(), RuntimeError> {
        let lock = self.tenant_lock(key);
        let _serialized = lock.lock().await;
        let fingerprint = bundle.fingerprint();
        // Decided before the renewed files replace the ones the processes hold.
        let renewal_restarts =
            bundle.restarts_for_renewal(&self.pairs_on_disk(key, bundle), SystemTime::now());
        let kept = {
            let mut tenants = self.tenants.lock().expect("runtime lock");
            match tenants.get_mut(key) {
                Some(t)
                    if t.fingerprint == fingerprint
                        && t.supervisors.iter().all(|s| !s.task.is_finished()) =>
                {
                    let changed = std::mem::replace(&mut t.cpu_millicores, bundle.cpu_millicores)
                        != bundle.cpu_millicores;
                    Ok(changed && *t.api_ready.borrow())
                }
                _ => Err(tenants.remove(key)),
            }
        };
        let previous = match kept {
            // The same processes; renewed leaves go to disk for them to re-read (restarting
            // only those that would re-read them too late), and a changed CPU limit applies at
            // once, without restarting anything.
            Ok(limit_changed) => {
                if limit_changed {
                    self.limit_cpu(key, bundle.cpu_millicores);
                }
                self.write_files(key, bundle)?;
                self.restart_for_renewal(key, bundle, &renewal_restarts)
                    .await;
                return Ok(());
            }
            Err(previous) => previous,
        };
        // Starting is not limited: kube-apiserver's start takes several CPU-seconds, which a
        // small limit would stretch to tens of seconds of wall time. The limit applies once the
        // API server is ready (`mark_api_ready`).
        let cpu_group = self.limit_cpu(key, None);
        if let Some(old) = previous {
            info!(
                tenant = key,
                "tenant files or flags changed: restarting its processes"
            );
            stop_supervisors(old).await;
        }
        let dir = self.tenant_dir(key);
        self.write_files(key, bundle)?;
        for sub in ["kine", "logs"] {
            let p = dir.join(sub);
            create_private_dir(&p).map_err(Self::io_err(&p))?;
        }
        let fingerprint_path = dir.join("fingerprint");
        let adoptable = std::fs::read_to_string(&fingerprint_path).ok().as_deref()
            == Some(fingerprint.as_str());
        // Only when it changed: adopting running processes needs no free space.
        if !adoptable {
            write_private_file(&fingerprint_path, fingerprint.as_bytes())
                .map_err(Self::io_err(&fingerprint_path))?;
        }

        let (api_ready, api_ready_rx) = watch::channel(false);
        let supervisors = bundle
            .processes
            .iter()
            .map(|spec| {
                // A running process holding a certificate it would not replace in time (a
                // controller restart missed the renewal) is started again, not adopted.
                let renew = adoptable && renewal_restarts.contains(spec.name);
                if renew {
                    info!(tenant = key, process = spec.name, "{RENEWAL_RESTART}");
                }
                let adoptable = adoptable && !renew;
                start_supervisor(key, spec, &dir, adoptable, &cpu_group, &api_ready_rx)
            })
            .collect();
        self.tenants.lock().expect("runtime lock").insert(
            key.to_string(),
            TenantProcesses {
                fingerprint,
                api_ready,
                supervisors,
                cpu_millicores: bundle.cpu_millicores,
            },
        );
        Ok(())
    }

    /// The bundle's renewable pairs as the tenant's state dir holds them now.
    fn pairs_on_disk(&self, key: &str, bundle: &ControlPlaneBundle) -> BTreeMap<PathBuf, Vec<u8>> {
        let dir = self.tenant_dir(key);
        bundle
            .reloaded
            .iter()
            .flat_map(ReloadedPair::files)
            .filter_map(|rel| Some((rel.clone(), std::fs::read(dir.join(&rel)).ok()?)))
            .collect()
    }

    /// Restarts `processes` of a running tenant, its renewed files written: each would re-read
    /// a renewed certificate only after the one it holds expired. The others keep running.
    async fn restart_for_renewal(
        &self,
        key: &str,
        bundle: &ControlPlaneBundle,
        processes: &BTreeSet<&'static str>,
    ) {
        let dir = self.tenant_dir(key);
        let cpu_group = self.cpu.as_ref().map(|groups| TenantGroup {
            groups: groups.clone(),
            tenant: key.to_string(),
        });
        for spec in bundle
            .processes
            .iter()
            .filter(|p| processes.contains(p.name))
        {
            // Out of the tenant's list while it stops (this tenant's lock keeps every other
            // change out meanwhile), back in its place after: the stop order stays.
            let taken = {
                let mut tenants = self.tenants.lock().expect("runtime lock");
                tenants.get_mut(key).and_then(|t| {
                    let at = t.supervisors.iter().position(|s| s.process == spec.name)?;
                    Some((at, t.supervisors.remove(at), t.api_ready.subscribe()))
                })
            };
            let Some((at, old, api_ready)) = taken else {
                continue;
            };
            info!(tenant = key, process = spec.name, "{RENEWAL_RESTART}");
            let _ = old.stop.send(true);
            let _ = old.task.await;
            let new = start_supervisor(key, spec, &dir, false, &cpu_group, &api_ready);
            if let Some(t) = self.tenants.lock().expect("runtime lock").get_mut(key) {
                t.supervisors.insert(at.min(t.supervisors.len()), new);
            }
        }
    }

    /// Writes the bundle's files that differ on disk, each atomically (a renamed-in file is
    /// what kube-apiserver's certificate watch expects).
    fn write_files(&self, key: &str, bundle: &ControlPlaneBundle) -> Result<(), RuntimeError> {
        let dir = self.tenant_dir(key);
        create_private_dir(&dir).map_err(Self::io_err(&dir))?;
        for (rel, data) in &bundle.files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                create_private_dir(parent).map_err(Self::io_err(parent))?;
            }
            if std::fs::read(&path).ok().as_deref() != Some(data.as_slice()) {
                write_private_file(&path, data).map_err(Self::io_err(&path))?;
            }
        }
        Ok(())
    }

    /// Lets processes that wait for the tenant API server (kube-controller-manager) start.
    /// Also applies the tenant's CPU limit, which starting is spared.
    pub fn mark_api_ready(&self, key: &str) {
        let became_ready = self
            .tenants
            .lock()
            .expect("runtime lock")
            .get(key)
            .filter(|t| {
                t.api_ready
                    .send_if_modified(|ready| !std::mem::replace(ready, true))
            })
            .map(|t| t.cpu_millicores);
        if let Some(millicores) = became_ready {
            self.limit_cpu(key, millicores);
        }
    }

    /// The pids of a tenant's running processes, by process name (for metering and tests).
    pub fn pids(&self, key: &str) -> Vec<(String, u32)> {
        let dir = self.tenant_dir(key);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return vec![];
        };
        let mut pids: Vec<_> = entries
            .flatten()
            .filter_map(|e| {
                let name = e
                    .file_name()
                    .to_string_lossy()
                    .strip_suffix(".pid")?
                    .to_string();
                let pid = std::fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                is_alive(pid).then_some((name, pid))
            })
            .collect();
        pids.sort();
        pids
    }

    /// Stops the tenant's processes (also ones a previous controller started) and removes its
    /// state dir. Safe to call again after a crash half way.
    pub async fn remove(&self, key: &str) -> Result<(), RuntimeError> {
        self.stop(key).await;
        if let Some(groups) = &self.cpu
            && let Err(e) = groups.remove(key)
        {
            warn!(tenant = key, error = %e, "cannot remove the tenant's CPU group");
        }
        let dir = self.tenant_dir(key);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::StateDir {
                path: dir,
                source: e,
            }),
        }
    }

    /// Stops the tenant's processes, keeping its state (hibernation, shutdown of `hostplane up`).
    pub async fn stop(&self, key: &str) {
        let lock = self.tenant_lock(key);
        let _serialized = lock.lock().await;
        let supervised = self.tenants.lock().expect("runtime lock").remove(key);
        if let Some(t) = supervised {
            stop_supervisors(t).await;
        }
        // Processes a previous controller started and this one never adopted (the datastore
        // last, as in `stop_supervisors`), then any it was killed too early to record in a pid
        // file (all of them run in the tenant dir).
        let mut recorded = self.pids(key);
        recorded.sort_by_key(|(name, _)| match name.as_str() {
            "kine" | "etcd" => 2,
            "kube-apiserver" => 1,
            _ => 0,
        });
        let unrecorded = processes_in(&self.tenant_dir(key));
        for pid in recorded.into_iter().map(|(_, pid)| pid).chain(unrecorded) {
            terminate_pid(pid).await;
        }
    }

    /// Forgets every supervised process without stopping it: what a crashed controller leaves.
    #[cfg(test)]
    fn abandon(&self) {
        for (_, t) in self.tenants.lock().expect("runtime lock").drain() {
            t.supervisors.iter().for_each(|s| s.task.abort());
        }
    }

    /// Stops every tenant this runtime supervises, keeping their state.
    pub async fn stop_all(&self) {
        let keys: Vec<String> = self
            .tenants
            .lock()
            .expect("runtime lock")
            .keys()
            .cloned()
            .collect();
        for key in keys {
            self.stop(&key).await;
        }
    }
}

async fn stop_supervisors(t: TenantProcesses) {
    for s in t.supervisors.into_iter().rev() {
        let _ = s.stop.send(true);
        let _ = s.task.await;
    }
}

const RENEWAL_RESTART: &str =
    "restarting it: the certificate it holds expires before it would re-read the renewed one";

/// Starts supervising one process of a tenant.
fn start_supervisor(
    key: &str,
    spec: &ProcessSpec,
    dir: &Path,
    adoptable: bool,
    cpu_group: &Option<TenantGroup>,
    api_ready: &watch::Receiver<bool>,
) -> Supervisor {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(supervise(
        key.to_string(),
        spec.clone(),
        dir.to_path_buf(),
        adoptable,
        cpu_group.clone(),
        stop_rx,
        api_ready.clone(),
    ));
    Supervisor {
        process: spec.name,
        stop,
        task,
    }
}

enum Running {
    Own(Child),
    Adopted(u32),
}

/// A tenant's CPU group, for its supervisors to move their processes into.
#[derive(Clone)]
struct TenantGroup {
    groups: CpuGroups,
    tenant: String,
}

impl TenantGroup {
    fn place(&self, process: &str, pid: u32) {
        if let Err(e) = self.groups.place(&self.tenant, pid) {
            warn!(tenant = %self.tenant, process, pid, error = %e, "cannot move the process into the tenant's CPU group");
        }
    }
}

/// Keeps one process running until told to stop.
async fn supervise(
    tenant: String,
    spec: ProcessSpec,
    dir: PathBuf,
    adoptable: bool,
    cpu_group: Option<TenantGroup>,
    mut stop: watch::Receiver<bool>,
    mut api_ready: watch::Receiver<bool>,
) {
    let place = |pid: u32| {
        if let Some(group) = &cpu_group {
            group.place(spec.name, pid);
        }
    };
    let pidfile = dir.join(format!("{}.pid", spec.name));
    // A controller killed between starting a process and writing its pid file leaves it
    // running unrecorded: found by its argv and working dir, so it is never started twice.
    let running = read_pid(&pidfile)
        .filter(|pid| is_alive(*pid) && argv_matches(*pid, &spec))
        .or_else(|| {
            processes_in(&dir)
                .into_iter()
                .find(|pid| argv_matches(*pid, &spec))
        });
    let mut current = match running {
        Some(pid) if adoptable => {
            info!(%tenant, process = spec.name, pid, "adopted running process");
            place(pid);
            if read_pid(&pidfile) != Some(pid) {
                let _ = write_private_file(&pidfile, pid.to_string().as_bytes());
            }
            Some(Running::Adopted(pid))
        }
        Some(pid) => {
            // Same argv but other files: it must restart to read them.
            terminate_pid(pid).await;
            None
        }
        None => None,
    };
    if current.is_none() && spec.after_api_ready {
        let ready = async {
            let _ = api_ready.wait_for(|r| *r).await;
        };
        tokio::select! {
            _ = ready => {}
            _ = stop.changed() => {
                let _ = std::fs::remove_file(&pidfile);
                return;
            }
        }
    }
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            break;
        }
        match current.take() {
            None => match spawn(&spec, &dir) {
                Ok(mut child) => {
                    let pid = child.id().unwrap_or_default();
                    if let Err(e) = write_private_file(&pidfile, pid.to_string().as_bytes()) {
                        // Unrecorded, the next controller would not find it by its pid file:
                        // stopped rather than left to be started a second time.
                        warn!(%tenant, process = spec.name, error = %e, "cannot record its pid; stopping it and retrying in {backoff:?}");
                        terminate_child(&mut child).await;
                        if wait_or_stop(&mut stop, backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    info!(%tenant, process = spec.name, pid, "started");
                    place(pid);
                    current = Some(Running::Own(child));
                }
                Err(e) => {
                    warn!(%tenant, process = spec.name, error = %e, "cannot start; retrying in {backoff:?}");
                    if wait_or_stop(&mut stop, backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
            Some(Running::Own(mut child)) => {
                let started = Instant::now();
                tokio::select! {
                    status = child.wait() => {
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        if started.elapsed() > HEALTHY_RUN {
                            backoff = Duration::from_secs(1);
                        }
                        warn!(%tenant, process = spec.name, %status, "exited; restarting in {backoff:?}");
                        if wait_or_stop(&mut stop, backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    _ = stop.changed() => {
                        terminate_child(&mut child).await;
                        break;
                    }
                }
            }
            Some(Running::Adopted(pid)) => {
                if !is_alive(pid) {
                    warn!(%tenant, process = spec.name, pid, "adopted process is gone; starting it again");
                    continue;
                }
                current = Some(Running::Adopted(pid));
                if wait_or_stop(&mut stop, Duration::from_secs(1)).await {
                    if let Some(Running::Adopted(pid)) = current.take() {
                        terminate_pid(pid).await;
                    }
                    break;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&pidfile);
}

/// Sleeps for `d`; true when told to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

fn spawn(spec: &ProcessSpec, dir: &Path) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join("logs").join(format!("{}.log", spec.name)))?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Own process group: a Ctrl-C meant for the controller does not reach tenants, and a
        // controller restart leaves them running to be adopted.
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn()
}

async fn terminate_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(TERMINATE_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Stops a process that is not our child (adopted after a restart).
async fn terminate_pid(pid: u32) {
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + TERMINATE_GRACE;
    while is_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if is_alive(pid) {
        let _ = kill(target, Signal::SIGKILL);
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Alive and not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Live processes whose working directory is `dir` (every tenant process runs in its tenant
/// dir, which the controller alone creates).
fn processes_in(dir: &Path) -> Vec<u32> {
    // /proc names the working dir by its canonical path.
    let (Ok(dir), Ok(entries)) = (dir.canonicalize(), std::fs::read_dir("/proc")) else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == *dir)
                && is_alive(*pid)
        })
        .collect()
}

/// True when the process runs exactly this program with exactly these arguments: a pid that
/// was recycled for something else is never adopted.
fn argv_matches(pid: u32, spec: &ProcessSpec) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
    let expected: Vec<Vec<u8>> = std::iter::once(spec.program.to_string_lossy().into_owned())
        .chain(spec.args.iter().cloned())
        .map(String::into_bytes)
        .collect();
    argv.len() == expected.len() && argv.iter().zip(&expected).all(|(a, b)| *a == b.as_slice())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file, with
/// mode 0600 (these are private keys and kubeconfigs).
fn write_private_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    // `x.crt` and `x.key` must not share a temporary name.
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // On a full disk a half-written temporary file would hold on to the space it took.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// N distinct free loopback ports, held open together so they differ from each other.
fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0u16; N];
    for (slot, l) in ports.iter_mut().zip(&listeners) {
        *slot = l.local_addr()?.port();
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path, seconds: &str) -> ControlPlaneBundle {
        ControlPlaneBundle {
            files: [(PathBuf::from("conf/x"), b"one".to_vec())]
                .into_iter()
                .collect(),
            processes: vec![ProcessSpec {
                name: "sleeper",
                program: "/bin/sleep".into(),
                args: vec![seconds.into()],
                env: vec![("SECRET".into(), dir.display().to_string())],
                after_api_ready: false,
            }],
            cpu_millicores: None,
            reloaded: vec![],
        }
    }

    async fn pid_of(rt: &ProcessRuntime, key: &str) -> u32 {
        for _ in 0..100 {
            if let Some((_, pid)) = rt.pids(key).into_iter().next() {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no process for {key}");
    }

    #[tokio::test]
    async fn restarts_a_killed_process_and_adopts_after_a_new_runtime() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(tmp.path());
        let bundle = sleeper(tmp.path(), "300");
        rt.ensure("t1", &bundle).await.unwrap();
        let first = pid_of(&rt, "t1").await;
        assert_eq!(std::fs::read(tmp.path().join("t1/conf/x")).unwrap(), b"one");
        let mode = std::fs::metadata(tmp.path().join("t1/conf/x"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
        let mut second = first;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            second = rt.pids("t1").first().map(|p| p.1).unwrap_or(first);
            if second != first {
                break;
            }
        }
        assert_ne!(first, second, "killed process was not restarted");

        // A new runtime (a restarted controller) adopts instead of starting another copy.
        let rt2 = ProcessRuntime::new(tmp.path());
        rt.abandon();
        rt2.ensure("t1", &bundle).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rt2.pids("t1"), vec![("sleeper".to_string(), second)]);

        rt2.remove("t1").await.unwrap();
        assert!(!is_alive(second));
        assert!(!tmp.path().join("t1").exists());
    }

    #[tokio::test]
    async fn a_process_whose_pid_was_never_recorded_is_adopted_and_stopped_not_duplicated() {
        let tmp = tempfile::tempdir().unwrap();
        let bundle = sleeper(tmp.path(), "300");
        let pidfile = tmp.path().join("t6/sleeper.pid");
        let rt = ProcessRuntime::new(tmp.path());
        rt.ensure("t6", &bundle).await.unwrap();
        let pid = pid_of(&rt, "t6").await;

        // A controller killed between starting the process and writing its pid file.
        rt.abandon();
        std::fs::remove_file(&pidfile).unwrap();
        let rt2 = ProcessRuntime::new(tmp.path());
        rt2.ensure("t6", &bundle).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rt2.pids("t6"), vec![("sleeper".to_string(), pid)]);
        assert_eq!(processes_in(&tmp.path().join("t6")), vec![pid]);

        // And the same crash before a teardown: the process still goes with its tenant.
        rt2.abandon();
        std::fs::remove_file(&pidfile).unwrap();
        ProcessRuntime::new(tmp.path()).remove("t6").await.unwrap();
        assert!(!is_alive(pid));
    }

    #[test]
    fn a_full_disk_is_named_in_the_reason() {
        let error = |kind| RuntimeError::StateDir {
            path: "/state/t1/ports.json".into(),
            source: std::io::Error::from(kind),
        };
        assert_eq!(
            error(std::io::ErrorKind::StorageFull).reason(),
            "StateDirFull"
        );
        assert_eq!(
            error(std::io::ErrorKind::PermissionDenied).reason(),
            "RuntimeFailed"
        );
    }

    #[tokio::test]
    async fn changed_files_restart_the_process() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(tmp.path());
        let mut bundle = sleeper(tmp.path(), "300");
        rt.ensure("t2", &bundle).await.unwrap();
        let first = pid_of(&rt, "t2").await;
        bundle.files.insert("conf/x".into(), b"two".to_vec());
        rt.ensure("t2", &bundle).await.unwrap();
        let second = pid_of(&rt, "t2").await;
        assert_ne!(first, second);
        assert!(!is_alive(first));
        rt.remove("t2").await.unwrap();
    }

    /// Two sleepers: `polled` presents `pki/client.*`, re-read every 5 minutes; `watching`
    /// presents `pki/serving.*`, re-read at once.
    fn presenting(pki: &crate::pki::PkiFiles) -> ControlPlaneBundle {
        use crate::build::processes::{CLIENT_GO_CERT_POLL, Reload, ReloadedPair};
        let sleeper = |name, seconds: &str| ProcessSpec {
            name,
            program: "/bin/sleep".into(),
            args: vec![seconds.into()],
            env: vec![],
            after_api_ready: false,
        };
        let files = [
            ("pki/client.crt", "controller-manager.crt"),
            ("pki/client.key", "controller-manager.key"),
            ("pki/serving.crt", "apiserver.crt"),
            ("pki/serving.key", "apiserver.key"),
        ];
        ControlPlaneBundle {
            files: files
                .iter()
                .map(|(path, key)| (PathBuf::from(path), pki[*key].as_bytes().to_vec()))
                .collect(),
            processes: vec![sleeper("polled", "300"), sleeper("watching", "301")],
            cpu_millicores: None,
            reloaded: vec![
                ReloadedPair {
                    stem: "pki/client",
                    presented_by: Some(("polled", Reload::Polled(CLIENT_GO_CERT_POLL))),
                },
                ReloadedPair {
                    stem: "pki/serving",
                    presented_by: Some(("watching", Reload::AtOnce)),
                },
            ],
        }
    }

    async fn pids_of_both(rt: &ProcessRuntime, key: &str) -> Vec<(String, u32)> {
        for _ in 0..100 {
            let pids = rt.pids(key);
            if pids.len() == 2 {
                return pids;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not both processes of {key} run: {:?}", rt.pids(key));
    }

    #[tokio::test]
    async fn a_short_renewal_restarts_only_the_process_that_would_re_read_it_too_late() {
        use crate::pki::{PkiFiles, PkiRequest, ensure_pki};
        let req = PkiRequest {
            cluster_name: "t7".into(),
            apiserver_sans: vec![],
            ca_validity: Duration::from_secs(3650 * 24 * 3600),
            leaf_validity: Duration::from_secs(90),
        };
        let now = SystemTime::now();
        let issued = ensure_pki(&PkiFiles::new(), &req, now).unwrap();
        let renewed = ensure_pki(&issued, &req, now + Duration::from_secs(60)).unwrap();
        let again = ensure_pki(&renewed, &req, now + Duration::from_secs(120)).unwrap();
        let (first, second, third) = (
            presenting(&issued),
            presenting(&renewed),
            presenting(&again),
        );
        assert_eq!(first.fingerprint(), second.fingerprint());

        let tmp = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(tmp.path());
        rt.ensure("t7", &first).await.unwrap();
        let before = pids_of_both(&rt, "t7").await;
        rt.ensure("t7", &second).await.unwrap();
        let after = pids_of_both(&rt, "t7").await;
        assert_eq!(after[1], before[1], "the watching process was restarted");
        assert_ne!(
            after[0].1, before[0].1,
            "the polled process was not restarted"
        );
        assert!(!is_alive(before[0].1));
        assert_eq!(
            std::fs::read(tmp.path().join("t7/pki/client.crt")).unwrap(),
            second.files[Path::new("pki/client.crt")]
        );
        // Unchanged files restart nothing.
        rt.ensure("t7", &second).await.unwrap();
        assert_eq!(pids_of_both(&rt, "t7").await, after);

        // A controller that restarts after the renewal: the polled process is started again,
        // the other adopted.
        rt.abandon();
        let rt2 = ProcessRuntime::new(tmp.path());
        rt2.ensure("t7", &third).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let adopted = pids_of_both(&rt2, "t7").await;
        assert_eq!(adopted[1], after[1]);
        assert_ne!(adopted[0].1, after[0].1);
        assert!(!is_alive(after[0].1));
        rt2.remove("t7").await.unwrap();
    }

    #[tokio::test]
    async fn processes_waiting_for_the_api_start_only_once_it_is_ready() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(tmp.path());
        let mut bundle = sleeper(tmp.path(), "300");
        let mut late = bundle.processes[0].clone();
        late.name = "late";
        late.after_api_ready = true;
        bundle.processes.push(late);
        rt.ensure("t4", &bundle).await.unwrap();
        pid_of(&rt, "t4").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let names: Vec<String> = rt.pids("t4").into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["sleeper"]);
        rt.mark_api_ready("t4");
        for _ in 0..100 {
            if rt.pids("t4").len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let names: Vec<String> = rt.pids("t4").into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["late", "sleeper"]);
        rt.remove("t4").await.unwrap();
    }

    #[test]
    fn ports_are_allocated_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(tmp.path());
        let a = rt.ports("t3").unwrap();
        assert_eq!(ProcessRuntime::new(tmp.path()).ports("t3").unwrap(), a);
        let mut all = vec![
            a.kine,
            a.apiserver,
            a.controller_manager,
            a.etcd_client,
            a.etcd_peer,
        ];
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5, "{a:?}");
    }

    #[test]
    fn ports_of_an_older_tenant_are_kept_and_etcd_ports_added() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("t5")).unwrap();
        std::fs::write(
            tmp.path().join("t5/ports.json"),
            r#"{"kine":41001,"apiserver":41002,"controller_manager":41003}"#,
        )
        .unwrap();
        let rt = ProcessRuntime::new(tmp.path());
        let ports = rt.ports("t5").unwrap();
        assert_eq!(
            (ports.kine, ports.apiserver, ports.controller_manager),
            (41001, 41002, 41003)
        );
        assert!(
            ports.etcd_client != 0 && ports.etcd_peer != 0 && ports.etcd_client != ports.etcd_peer
        );
        assert_eq!(rt.ports("t5").unwrap(), ports);
    }
}
