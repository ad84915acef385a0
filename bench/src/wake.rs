//! `wake`: a hibernated tenant's first `kubectl get ns` through the proxy (wake-on-connect),
//! divided by a bare Kine + kube-apiserver's start on the same Postgres; plus the memory a
//! hibernated tenant gives back.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hostplane_crds::ControlPlane;
use hostplane_tests::Postgres;
use kube::api::Api;

use crate::{HostplaneSide, bare_start, hostplane_side, kubectl_ok, median, rss_kib, tenant_ready};

/// Kills the proxy when the benchmark ends, however it ends.
pub(crate) struct ProxyChild(std::process::Child);

impl Drop for ProxyChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start_proxy(side: &HostplaneSide, address: &str) -> anyhow::Result<ProxyChild> {
    let exe = std::env::current_exe()?.with_file_name("hostplane");
    let child = Command::new(exe)
        .args([
            "proxy",
            "--listen",
            address,
            "--tenant-domain",
            "tenants.bench",
            "--no-download",
            "--activity-interval-seconds",
            "1",
        ])
        .env("KUBECONFIG", side.host.kubeconfig_path())
        .env("HOSTPLANE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(side.state.path().join("proxy.log"))?)
        .spawn()?;
    Ok(ProxyChild(child))
}

async fn wait_hibernated(api: &Api<ControlPlane>, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let cp = api.get(name).await?;
        if cp
            .status
            .as_ref()
            .and_then(|s| s.hibernated_at.as_ref())
            .is_some()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} did not hibernate within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tenant_rss_mib(side: &HostplaneSide) -> f64 {
    let rt = hostplane_controller::runtime::processes::ProcessRuntime::new(
        side.state.path().join("tenants"),
    );
    let kib: u64 = std::fs::read_dir(side.state.path().join("tenants"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| rt.pids(&e.file_name().to_string_lossy()))
        .map(|(_, pid)| rss_kib(pid))
        .sum();
    kib as f64 / 1024.0
}

pub async fn run(runs: usize, idle_after: u64) -> anyhow::Result<String> {
    let postgres = Postgres::start().await;
    let address = format!("127.0.0.1:{}", hostplane_tests::free_port());
    let side = hostplane_side(
        &postgres,
        &[
            ("HOSTPLANE_PROXY_ADDRESS", address.as_str()),
            ("HOSTPLANE_TENANT_DOMAIN", "tenants.bench"),
            ("HOSTPLANE_IDLE_AFTER_SECONDS", &idle_after.to_string()),
        ],
    )
    .await?;
    let _proxy = start_proxy(&side, &address)?;
    let (_, kubeconfig) = tenant_ready(&side, "sleeper").await?;
    if !points_at_proxy(&kubeconfig, &address)? {
        bail!("the tenant kubeconfig does not go through the proxy at {address}");
    }
    let api = Api::<ControlPlane>::all(side.host.client());
    let awake_rss = tenant_rss_mib(&side);
    let (mut bare, mut wake, mut asleep_rss) = (vec![], vec![], vec![]);
    for run in 0..runs {
        bare.push(bare_start(&postgres, run).await?);
        wait_hibernated(&api, "sleeper").await?;
        // Processes stop right after status says so; give them a moment to exit.
        tokio::time::sleep(Duration::from_millis(500)).await;
        asleep_rss.push(tenant_rss_mib(&side));
        let started = Instant::now();
        if !kubectl_ok(&kubeconfig, &["get", "ns", "--request-timeout=60s"]) {
            bail!("the hibernated tenant did not answer through the proxy");
        }
        wake.push(started.elapsed().as_secs_f64());
        eprintln!(
            "run {run}: bare start {:.2}s, wake-on-connect {:.2}s",
            bare[run], wake[run]
        );
    }
    let (b, w) = (median(bare), median(wake));
    let asleep = median(asleep_rss);
    let mut table = String::new();
    table.push_str("| figure | value | goal |\n| --- | --- | --- |\n");
    table.push_str(&format!("| bare Kine+kube-apiserver start → first `kubectl get ns` (median of {runs}) | {b:.2} s | |\n"));
    table.push_str(&format!("| hibernated tenant: `kubectl get ns` through the proxy → first response (median of {runs}) | {w:.2} s | ≤ 3 s |\n"));
    table.push_str(&format!(
        "| **wake ratio** (wake ÷ bare start) | **{:.2}×** | |\n",
        w / b
    ));
    table.push_str(&format!(
        "| tenant RSS awake → hibernated | {awake_rss:.0} MiB → {asleep:.0} MiB | |\n"
    ));
    Ok(table)
}

/// The kubeconfig the benchmark uses must go through the proxy, or nothing wakes the tenant.
fn points_at_proxy(kubeconfig: &Path, address: &str) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(kubeconfig).context("reading the tenant kubeconfig")?;
    Ok(text.contains(address))
}
