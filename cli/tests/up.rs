//! `hostplane up`, as the README's first command runs it: a host API server, the controller
//! and a sample tenant that plain kubectl can use; Ctrl-C stops every process it started.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kubectl_with;
use hostplane_tests::Binaries;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn up_serves_a_sample_tenant_and_stops_cleanly() {
    let state = tempfile::tempdir().unwrap();
    let log_path = state.path().join("up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut up = Command::new(env!("CARGO_BIN_EXE_hostplane"))
        .arg("up")
        .env("HOSTPLANE_STATE_DIR", state.path())
        .env_remove("HOSTPLANE_POSTGRES_DSN")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let show_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let sample = state.path().join("sample.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !show_log().contains("hostplane is up") {
        if let Ok(Some(status)) = up.try_wait() {
            panic!("hostplane up exited with {status}:\n{}", show_log());
        }
        assert!(
            Instant::now() < deadline,
            "hostplane up not up after 300 s:\n{}",
            show_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = show_log();
    for expected in [
        "host API server ready at https://127.0.0.1:",
        "CRDs installed",
        "sample is Ready",
        "kubectl get controlplanes",
    ] {
        assert!(
            out.contains(expected),
            "progress output lacks {expected:?}:\n{out}"
        );
    }

    let kubectl = &Binaries::get().kubectl;
    let (ok, ns) = kubectl_with(kubectl, &sample, &["get", "ns"]);
    assert!(
        ok && ns.contains("kube-system"),
        "tenant kubectl failed: {ns}"
    );
    let host = state.path().join("host.kubeconfig");
    let (ok, cps) = kubectl_with(
        kubectl,
        &host,
        &[
            "get",
            "cp",
            "sample",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        ],
    );
    assert!(ok && cps == "True", "{cps}");

    // Every process `up` started, found through its pid files.
    let pids: Vec<i32> = walk_pidfiles(state.path());
    assert_eq!(
        pids.len(),
        6,
        "expected host and sample Kine, kube-apiserver, kube-controller-manager: {pids:?}"
    );
    kill(Pid::from_raw(up.id() as i32), Signal::SIGINT).unwrap();
    let status = up.wait().unwrap();
    assert!(
        status.success(),
        "hostplane up exited with {status}:\n{}",
        show_log()
    );
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "process {pid} outlived hostplane up"
        );
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

fn walk_pidfiles(dir: &std::path::Path) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_pidfiles(&p));
        } else if p.extension().is_some_and(|x| x == "pid")
            && let Ok(pid) = std::fs::read_to_string(&p)
                .unwrap_or_default()
                .trim()
                .parse()
        {
            out.push(pid);
        }
    }
    out
}
