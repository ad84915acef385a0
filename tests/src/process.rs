//! One upstream server as a child process, logged to a file and never outliving its test.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How many log lines a failing test shows per process.
const FAILURE_LOG_LINES: usize = 80;

/// A child process whose stdout and stderr go to a log file.
///
/// Dropping it kills the process (SIGKILL) and reaps it; when the drop happens because a test
/// panicked, the last lines of the log are printed to stderr, so the failure shows what the
/// server said. All methods take `&self`, so a test can kill or restart a server it only borrows.
pub struct ManagedProcess {
    name: String,
    log_path: PathBuf,
    state: Mutex<ProcessState>,
}

struct ProcessState {
    /// Kept to spawn the same program again on [`ManagedProcess::restart`].
    command: Command,
    child: Option<Child>,
}

impl ManagedProcess {
    /// Spawns `command` with stdin closed and its output appended to `log_path`. `name` is the
    /// component name used in messages (e.g. "kube-apiserver"). Panics when it cannot start.
    pub fn spawn(name: &str, command: Command, log_path: impl Into<PathBuf>) -> Self {
        let process = ManagedProcess {
            name: name.to_string(),
            log_path: log_path.into(),
            state: Mutex::new(ProcessState {
                command,
                child: None,
            }),
        };
        process.spawn_child(&mut process.lock());
        process
    }

    fn lock(&self) -> MutexGuard<'_, ProcessState> {
        // A panic while holding the lock leaves the state usable: it is only a Child handle.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_child(&self, state: &mut ProcessState) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path.display()));
        // A header per start makes restarts visible in the log.
        let _ = writeln!(
            log,
            "==== hostplane-tests: starting {}: {:?}",
            self.name, state.command
        );
        let stderr = log.try_clone().expect("duplicating the log file handle");
        state
            .command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let child = state.command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({:?}): {e}",
                self.name,
                state.command.get_program()
            )
        });
        state.child = Some(child);
    }

    /// The component name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id while the process runs (or has exited but was not yet noticed).
    pub fn pid(&self) -> Option<u32> {
        self.lock().child.as_ref().map(Child::id)
    }

    /// The file holding the process's stdout and stderr (appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status if the process has exited (it is reaped then), `None` while it runs.
    /// Also `None` after [`kill`](Self::kill) or [`stop`](Self::stop): nothing runs then.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut state = self.lock();
        let child = state.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                state.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// True while the process runs.
    pub fn is_running(&self) -> bool {
        let mut state = self.lock();
        match state.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                state.child = None;
                false
            }
            None => false,
        }
    }

    /// Sends `signal` to the process (nothing when it is not running).
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }

    /// Kills the process with SIGKILL and reaps it, as a crash would end it.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock().child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. SIGTERM) and waits up to `grace` for the process to exit, then
    /// kills it. Returns the exit status when it exited by itself.
    pub fn stop(&self, signal: Signal, grace: Duration) -> Option<ExitStatus> {
        self.signal(signal);
        let deadline = Instant::now() + grace;
        let mut state = self.lock();
        let mut child = state.child.take()?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// Starts the same command again, killing the current process first if it still runs.
    pub fn restart(&self) {
        let mut state = self.lock();
        if let Some(mut child) = state.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn_child(&mut state);
    }

    /// Polls `probe` until it returns `Ok`, failing fast when the process exits and, after
    /// `timeout`, with the last probe error and the log tail. `what` names the wait in messages.
    pub async fn wait_ready(
        &self,
        timeout: Duration,
        what: &str,
        mut probe: impl AsyncFnMut() -> Result<(), String>,
    ) {
        let started = Instant::now();
        loop {
            let last_error = match probe().await {
                Ok(()) => return,
                Err(e) => e,
            };
            if let Some(status) = self.exit_status() {
                panic!(
                    "{} exited ({status}) while waiting for {what}; last probe error: {last_error}\n\
                     ---- {} log tail ({}) ----\n{}",
                    self.name,
                    self.name,
                    self.log_path.display(),
                    self.log_tail(FAILURE_LOG_LINES)
                );
            }
            if started.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last probe error: {last_error}\n\
                     ---- {} log tail ({}) ----\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(FAILURE_LOG_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} log, last {FAILURE_LOG_LINES} lines ({}) ----\n{}\n---- end of {} log ----",
                self.name,
                self.log_path.display(),
                self.log_tail(FAILURE_LOG_LINES),
                self.name
            );
        }
    }
}

impl std::fmt::Debug for ManagedProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedProcess")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("log_path", &self.log_path)
            .finish()
    }
}
