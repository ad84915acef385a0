//! End to end: tenant limits (`spec.limits`) through the `hostplane controller` binary, with real
//! Postgres, etcd, Kine and kube-apiserver processes on loopback — a tenant over its storage
//! quota turns read-only with a message that says why and what to do, and writable again when
//! it deletes; its API server runs with its inflight limits and its users' priority level; its
//! Postgres role is held to its connection limit.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use hostplane_crds::ControlPlane;
use hostplane_tests::{Binaries, Postgres};

/// From a write past the limit (or a delete under it) to the policy following it: a usage sample,
/// a pass, the API server's policy informer.
const QUOTA_TIMEOUT: Duration = Duration::from_secs(120);

/// Frequent passes and samples keep the scenario short.
const ENV: [(&str, &str); 2] = [
    ("HOSTPLANE_HEALTH_CHECK_SECONDS", "2"),
    ("HOSTPLANE_USAGE_INTERVAL_SECONDS", "2"),
];

async fn create_tenant(bed: &ControllerBed, name: &str, extra_spec: &str) -> ControlPlane {
    bed.apply_cp(name, extra_spec);
    let _logs = TenantLogsOnPanic(bed.controller.state_dir.join("tenants"));
    bed.available(name).await
}

/// Prints the tails of the tenant processes' logs when a test fails while it lives.
struct TenantLogsOnPanic(PathBuf);

impl Drop for TenantLogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for tenant in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            for log in std::fs::read_dir(tenant.path().join("logs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                eprintln!("---- {} (last 25 lines) ----", log.path().display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// kubectl against a tenant with its handed-out kubeconfig (the tenant's admin, one of its
/// users: the quota applies to it).
struct TenantKubectl {
    kubeconfig: PathBuf,
}

impl TenantKubectl {
    async fn of(bed: &ControllerBed, name: &str) -> Self {
        let (kubeconfig, _) = bed.tenant_kubeconfig(name).await;
        Self { kubeconfig }
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        kubectl_with(&Binaries::get().kubectl, &self.kubeconfig, args)
    }
}

/// The command line of one of the tenant's processes, from its pid file.
fn command_line(dir: &Path, process: &str) -> Vec<String> {
    let pid = std::fs::read_to_string(dir.join(format!("{process}.pid"))).unwrap();
    let raw = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Polls the ControlPlane until `check` accepts it.
async fn wait_cp(
    bed: &ControllerBed,
    name: &str,
    what: &str,
    mut check: impl FnMut(&ControlPlane) -> bool,
) -> ControlPlane {
    let deadline = Instant::now() + QUOTA_TIMEOUT;
    loop {
        let cp = bed.cps().get(name).await.unwrap();
        if check(&cp) {
            return cp;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {what} within {QUOTA_TIMEOUT:?}; conditions: {:?}, usage: {:?}",
            cp.status.as_ref().map(|s| &s.conditions),
            cp.status.as_ref().and_then(|s| s.usage.as_ref()),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Host Events about a ControlPlane with `reason`.
fn events(bed: &ControllerBed, name: &str, reason: &str) -> String {
    let (ok, out) = bed.kubectl(
        &[
            "get",
            "events",
            "-A",
            "--field-selector",
            &format!("reason={reason},involvedObject.name={name}"),
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
            "--no-headers",
        ],
        None,
    );
    assert!(ok, "{out}");
    out
}

/// The scenario both datastores share: fill the tenant with ConfigMaps of `filler_bytes` until
/// it refuses, check what users see, delete them and check it is writable again.
async fn fill_until_refused_then_free(
    bed: &ControllerBed,
    name: &str,
    limit: i64,
    filler_bytes: usize,
) {
    let tenant = TenantKubectl::of(bed, name).await;
    let filler = bed.controller.state_dir.join("filler");
    // Neither Kine nor etcd compresses: any letters will do.
    let letters: String = (0..filler_bytes)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    std::fs::write(&filler, letters).unwrap();
    let from_file = format!("--from-file=data={}", filler.display());

    // Bounded in count and time: the limit is a few fillers away.
    let started = Instant::now();
    let mut created: Vec<String> = Vec::new();
    let refusal = loop {
        assert!(
            created.len() < 80 && started.elapsed() < QUOTA_TIMEOUT,
            "{} ConfigMaps of {filler_bytes} bytes in {:?} and no refusal (limit {limit})",
            created.len(),
            started.elapsed()
        );
        let cm = format!("fill-{}", created.len());
        let (ok, out) = tenant.run(&["create", "configmap", &cm, &from_file]);
        if !ok {
            break out;
        }
        created.push(cm);
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    eprintln!(
        "refused after {} ConfigMaps ({:?}): {refusal}",
        created.len(),
        started.elapsed()
    );
    assert!(
        refusal.contains(&format!("tenant {name} is over its storage quota ("))
            && refusal.contains(&format!(
                " of {limit} bytes): delete objects to free space; reads and deletes still work"
            )),
        "unexpected refusal: {refusal}"
    );

    let cp = wait_cp(bed, name, "QuotaExceeded=True", |cp| {
        condition(cp, "QuotaExceeded").is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let (_, reason, message) = condition(&cp, "QuotaExceeded").unwrap();
    assert_eq!(reason, "StorageQuotaExceeded");
    assert!(
        message.contains("delete objects to free space"),
        "{message}"
    );
    assert_eq!(
        condition(&cp, "Ready").map(|c| c.0),
        Some("True".to_string()),
        "a read-only tenant is still Ready"
    );
    assert!(events(bed, name, "QuotaExceeded").contains("over its storage quota"));

    // Reads work; updates are refused like creates.
    let (ok, out) = tenant.run(&["get", "configmaps", "-o", "name"]);
    assert!(ok && out.contains("configmap/fill-0"), "{out}");
    let (ok, out) = tenant.run(&["label", "configmap", "fill-0", "touched=yes"]);
    assert!(
        !ok && out.contains("over its storage quota"),
        "an update went through: {out}"
    );

    // Deletes work, and bring the tenant back under the limit.
    let mut delete = vec!["delete", "configmap", "--wait=false"];
    delete.extend(created.iter().map(String::as_str));
    let (ok, out) = tenant.run(&delete);
    assert!(ok, "{out}");
    let freed = Instant::now();
    let cp = wait_cp(bed, name, "QuotaExceeded=False after deleting", |cp| {
        condition(cp, "QuotaExceeded").is_some_and(|(s, _, _)| s == "False")
    })
    .await;
    eprintln!(
        "writable again {:?} after the delete: {:?}",
        freed.elapsed(),
        condition(&cp, "QuotaExceeded")
    );
    assert!(events(bed, name, "QuotaRestored").contains("writable again"));
    // The policy is gone once the API server's informer has seen the delete.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = tenant.run(&["create", "configmap", "after-quota", "--from-literal=a=b"]);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_tenant_on_shared_postgres_over_its_storage_quota_is_read_only_until_it_deletes() {
    let postgres = Postgres::start().await;
    let bed = ControllerBed::with(Some(postgres.admin_dsn()), &ENV).await;
    let limit: i64 = 2 * 1024 * 1024;
    let cp = create_tenant(
        &bed,
        "quota-pg",
        &format!("  limits:\n    maxStorageBytes: {limit}\n"),
    )
    .await;
    assert_eq!(
        cp.status.unwrap().datastore.unwrap().kind,
        "postgres",
        "on the shared Postgres"
    );
    fill_until_refused_then_free(&bed, "quota-pg", limit, 200 * 1024).await;
}

#[tokio::test]
async fn a_tenant_on_a_dedicated_etcd_over_its_storage_quota_is_read_only_until_it_deletes() {
    let bed = ControllerBed::with(None, &ENV).await;
    let limit: i64 = 16 * 1024 * 1024;
    let cp = create_tenant(
        &bed,
        "quota-etcd",
        &format!("  backend: dedicated\n  limits:\n    maxStorageBytes: {limit}\n"),
    )
    .await;
    let dir = bed.tenant_dir(&cp);
    let etcd = command_line(&dir, "etcd");
    assert!(
        etcd.contains(&format!(
            "--quota-backend-bytes={}",
            limit + 64 * 1024 * 1024
        )),
        "{etcd:?}"
    );
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ports.json")).unwrap()).unwrap();
    let mut files = Vec::new();
    for key in [
        "etcd-ca.crt",
        "apiserver-etcd-client.crt",
        "apiserver-etcd-client.key",
    ] {
        let path = bed.controller.state_dir.join(key);
        std::fs::write(
            &path,
            secret_text(&bed.host.client(), "quota-etcd-system", "k8s-certs", key).await,
        )
        .unwrap();
        files.push(path);
    }
    let endpoint = format!("https://127.0.0.1:{}", ports["etcd_client"]);
    let files: [PathBuf; 3] = files.try_into().unwrap();
    // The etcd's data in use only falls once the deleted revisions are compacted: the
    // controller compacts a read-only tenant's etcd, so this does not wait for the API
    // server's 5-minute compaction.
    let started = Instant::now();
    fill_until_refused_then_free(&bed, "quota-etcd", limit, 900 * 1024).await;
    let [ca, cert, key] = &files;
    let old = std::process::Command::new(&Binaries::get().etcdctl)
        .arg(format!("--endpoints={endpoint}"))
        .arg(format!("--cacert={}", ca.display()))
        .arg(format!("--cert={}", cert.display()))
        .arg(format!("--key={}", key.display()))
        .args(["get", "/registry/namespaces/default", "--rev=2"])
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(300)
            && String::from_utf8_lossy(&old.stderr)
                .contains("required revision has been compacted"),
        "the controller did not compact the etcd: {}",
        String::from_utf8_lossy(&old.stderr)
    );
}

#[tokio::test]
async fn a_tenant_runs_with_its_inflight_limits_priority_level_and_connection_limit() {
    let postgres = Postgres::start().await;
    let bed = ControllerBed::with(Some(postgres.admin_dsn()), &ENV).await;
    let cp = create_tenant(
        &bed,
        "limited",
        "  limits:\n    maxRequestsInflight: 50\n    maxMutatingRequestsInflight: 25\n    maxDatastoreConnections: 10\n    statementTimeoutSeconds: 7\n",
    )
    .await;

    // The API server's flags, and Kine's pool below the role's 10 connections.
    let dir = bed.tenant_dir(&cp);
    let apiserver = command_line(&dir, "kube-apiserver");
    for flag in [
        "--max-requests-inflight=50",
        "--max-mutating-requests-inflight=25",
    ] {
        assert!(apiserver.contains(&flag.to_string()), "{apiserver:?}");
    }
    let kine = command_line(&dir, "kine");
    for flag in [
        "--datastore-max-open-connections=8",
        "--datastore-max-idle-connections=4",
    ] {
        assert!(kine.contains(&flag.to_string()), "{kine:?}");
    }

    // The tenant's users have a queued priority level, one flow per user; the admin's
    // requests are classified into it (the API server says so in response headers).
    let tenant = TenantKubectl::of(&bed, "limited").await;
    let (ok, out) = tenant.run(&[
        "get",
        "prioritylevelconfiguration",
        "hostplane-tenant-users",
        "-o",
        "jsonpath={.spec.type} {.spec.limited.limitResponse.type}",
    ]);
    assert_eq!((ok, out.as_str()), (true, "Limited Queue"), "{out}");
    let (ok, out) = tenant.run(&[
        "get",
        "flowschemas",
        "hostplane-tenant-admin",
        "hostplane-tenant-users",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.distinguisherMethod.type}/{.spec.matchingPrecedence} {end}",
    ]);
    assert_eq!(
        (ok, out.trim()),
        (
            true,
            "hostplane-tenant-admin=ByUser/850 hostplane-tenant-users=ByUser/8000"
        ),
        "{out}"
    );
    let (ok, level_uid) = tenant.run(&[
        "get",
        "prioritylevelconfiguration",
        "hostplane-tenant-users",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    assert!(ok, "{level_uid}");
    let (ok, verbose) = tenant.run(&["get", "namespaces", "-v=8"]);
    assert!(ok, "{verbose}");
    assert!(
        verbose
            .to_ascii_lowercase()
            .contains(&format!("x-kubernetes-pf-prioritylevel-uid: {level_uid}")),
        "the admin's request was not classified into the tenant users' level {level_uid}:\n{verbose}"
    );

    // The role's sessions: Kine holds some; past the limit of 10, Postgres refuses.
    let url = secret_text(&bed.host.client(), "limited-system", "datastore", "url").await;
    let mut sessions = Vec::new();
    let refusal = loop {
        assert!(
            sessions.len() < 15,
            "{} sessions of a role limited to 10",
            sessions.len()
        );
        match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                sessions.push(client);
            }
            Err(e) => break e,
        }
    };
    let message = refusal
        .as_db_error()
        .map(|db| db.message().to_string())
        .unwrap_or_else(|| refusal.to_string());
    assert!(
        message.starts_with("too many connections for role \"hp_"),
        "{message}"
    );
    assert!(!sessions.is_empty() && sessions.len() <= 10);
    let timeout: String = sessions[0]
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "7s");
}
