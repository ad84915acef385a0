//! hostplane benchmarks. Every figure is a ratio of two measurements taken side by side in the
//! same run on the same machine, so it says something about hostplane rather than the machine.
//!
//!   cargo run --release -p hostplane-bench -- ready --runs 3
//!
//! `ready`: time from `kubectl apply` of a ControlPlane to the first successful tenant
//! `kubectl get ns`, divided by the time a bare Kine + kube-apiserver (on the same Postgres)
//! takes from spawn to its first `kubectl get ns`; plus idle RSS per tenant.
//!
//! `wake`: a hibernated tenant's first response through the proxy ÷ a bare apiserver start.
//!
//! `proxy`: throughput and latency of TLS through hostplane's SNI proxy beside a direct
//! connection and HAProxy (see proxy.rs).

mod datastores;
mod proxy;
mod wake;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use hostplane_tests::{Binaries, Kine, KubeApiserver, Postgres, Storage, start_apiserver_on_etcd};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

#[derive(Parser)]
#[command(about = "hostplane benchmarks (ratios measured side by side)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Where to write the results table.
    #[arg(long, default_value_os_t = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md"))]
    results: PathBuf,
}

#[derive(Subcommand)]
enum Scenario {
    /// Tenant ready time ÷ bare kube-apiserver+Kine start time, and idle RSS per tenant.
    Ready {
        /// Alternating runs of each side; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// How long a tenant idles before its RSS is read.
        #[arg(long, default_value_t = 20)]
        idle_seconds: u64,
    },
    /// Wake-on-connect: a hibernated tenant's first `kubectl get ns` through the proxy ÷ a bare
    /// kube-apiserver+Kine start, and the memory hibernation gives back.
    Wake {
        /// Hibernate/wake cycles; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Idle seconds before the tenant hibernates.
        #[arg(long, default_value_t = 5)]
        idle_after_seconds: u64,
    },
    /// TLS through hostplane's SNI proxy vs direct vs HAProxy: throughput, p50/p99 latency.
    Proxy {
        /// Interleaved runs of each mode; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Size of the bulk download per mode and run.
        #[arg(long, default_value_t = 256)]
        transfer_mib: u64,
        /// Small request/response round trips per mode and run.
        #[arg(long, default_value_t = 20_000)]
        round_trips: usize,
        /// Persistent connections the round trips take turns on.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// New connections (TCP + TLS handshake + one round trip) per mode and run.
        #[arg(long, default_value_t = 2_000)]
        handshakes: usize,
    },
    /// Tenant request latency (p50/p99) on shared Postgres vs dedicated etcd vs shared etcd.
    Datastores {
        /// ConfigMaps created per tenant (each create timed).
        #[arg(long, default_value_t = 300)]
        creates: usize,
        /// Lists of those ConfigMaps per tenant.
        #[arg(long, default_value_t = 100)]
        lists: usize,
        /// Updates per tenant, each timed until an open watch delivers it.
        #[arg(long, default_value_t = 300)]
        updates: usize,
    },
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> bool {
    Command::new(&Binaries::get().kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Bare side: spawn Kine and kube-apiserver on a fresh Postgres database (created beforehand,
/// untimed, as a person launching them by hand would), until the first `kubectl get ns`.
async fn bare_start(postgres: &Postgres, run: usize) -> anyhow::Result<f64> {
    let database = format!("bare_{run}");
    postgres
        .client()
        .await
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await?;
    let started = Instant::now();
    let kine = Kine::start_postgres(&postgres.url_for_database(&database)).await;
    let api = KubeApiserver::start(Storage::Kine(kine)).await;
    while !kubectl_ok(api.kubeconfig_path(), &["get", "ns"]) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct HostplaneSide {
    host: KubeApiserver,
    controller: std::process::Child,
    state: tempfile::TempDir,
}

impl Drop for HostplaneSide {
    fn drop(&mut self) {
        let _ = self.controller.kill();
        let _ = self.controller.wait();
        // Tenants outlive the controller by design; stop them here.
        let rt = hostplane_controller::runtime::processes::ProcessRuntime::new(
            self.state.path().join("tenants"),
        );
        for e in std::fs::read_dir(self.state.path().join("tenants"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for (_, pid) in rt.pids(&e.file_name().to_string_lossy()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

async fn hostplane_side(
    postgres: &Postgres,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<HostplaneSide> {
    let host = start_apiserver_on_etcd().await;
    hostplane_controller::embedded::install_crds(&host.client()).await?;
    let state = tempfile::tempdir()?;
    let exe = std::env::current_exe()?.with_file_name("hostplane");
    if !exe.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release -p hostplane)",
            exe.display()
        );
    }
    let controller = Command::new(exe)
        .arg("controller")
        .env("KUBECONFIG", host.kubeconfig_path())
        .env("HOSTPLANE_STATE_DIR", state.path())
        .env("HOSTPLANE_POSTGRES_DSN", postgres.admin_dsn())
        .env("HOSTPLANE_LOG", "warn")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(state.path().join("controller.log"))?)
        .spawn()?;
    Ok(HostplaneSide {
        host,
        controller,
        state,
    })
}

/// hostplane side: `kubectl apply` of a ControlPlane until the first tenant `kubectl get ns`.
async fn tenant_ready(side: &HostplaneSide, name: &str) -> anyhow::Result<(f64, PathBuf)> {
    let yaml = format!(
        "apiVersion: tenancy.hostplane.io/v1alpha1\nkind: ControlPlane\nmetadata:\n  name: {name}\nspec:\n  type: k8s\n"
    );
    let manifest = side.state.path().join(format!("{name}.yaml"));
    std::fs::write(&manifest, yaml)?;
    let kubeconfig = side.state.path().join(format!("{name}.kubeconfig"));
    let secrets = Api::<Secret>::namespaced(side.host.client(), &format!("{name}-system"));
    let started = Instant::now();
    if !kubectl_ok(
        side.host.kubeconfig_path(),
        &["apply", "-f", &manifest.display().to_string()],
    ) {
        bail!("kubectl apply of {name} failed");
    }
    loop {
        if let Ok(Some(s)) = secrets.get_opt("admin-kubeconfig").await
            && let Some(k) = s.data.as_ref().and_then(|d| d.get("kubeconfig"))
        {
            std::fs::write(&kubeconfig, &k.0)?;
            if kubectl_ok(&kubeconfig, &["get", "ns"]) {
                return Ok((started.elapsed().as_secs_f64(), kubeconfig));
            }
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("tenant {name} not ready after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(runs: usize, idle: Duration) -> anyhow::Result<String> {
    let postgres = Postgres::start().await;
    let side = hostplane_side(&postgres, &[]).await?;
    let (mut bare, mut tenant) = (vec![], vec![]);
    for run in 0..runs {
        bare.push(bare_start(&postgres, run).await?);
        let (t, _) = tenant_ready(&side, &format!("bench-{run}")).await?;
        tenant.push(t);
        eprintln!(
            "run {run}: bare {:.2}s, tenant {:.2}s",
            bare[run], tenant[run]
        );
    }
    eprintln!("idling {idle:?} before reading RSS");
    tokio::time::sleep(idle).await;
    let rt = hostplane_controller::runtime::processes::ProcessRuntime::new(
        side.state.path().join("tenants"),
    );
    let mut per_tenant = vec![];
    let mut per_process: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for e in std::fs::read_dir(side.state.path().join("tenants"))
        .context("tenant dirs")?
        .flatten()
    {
        let pids = rt.pids(&e.file_name().to_string_lossy());
        let mut sum = 0;
        for (name, pid) in pids {
            let kib = rss_kib(pid);
            per_process
                .entry(name)
                .or_default()
                .push(kib as f64 / 1024.0);
            sum += kib;
        }
        per_tenant.push(sum as f64 / 1024.0);
    }
    let (b, t) = (median(bare), median(tenant));
    let rss = median(per_tenant);
    let mut table = String::new();
    table.push_str("| figure | value | goal |\n| --- | --- | --- |\n");
    table.push_str(&format!("| bare Kine+kube-apiserver start → first `kubectl get ns` (median of {runs}) | {b:.2} s | |\n"));
    table.push_str(&format!("| `kubectl apply` ControlPlane → first tenant `kubectl get ns` (median of {runs}) | {t:.2} s | |\n"));
    table.push_str(&format!(
        "| **ready ratio** (tenant ÷ bare) | **{:.2}×** | ≤ 1.2× |\n",
        t / b
    ));
    table.push_str(&format!("| idle RSS per tenant (Kine + kube-apiserver + kube-controller-manager, median) | {rss:.0} MiB | ≤ 200 MiB |\n"));
    for (name, v) in per_process {
        table.push_str(&format!("| … of which {name} | {:.0} MiB | |\n", median(v)));
    }
    Ok(table)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cpus} CPUs, {} GiB RAM, Kubernetes {}",
        mem / 1024 / 1024,
        Binaries::get().kube_version
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (title, command, table) = match cli.scenario {
        Scenario::Ready { runs, idle_seconds } => (
            "Tenant ready time and idle memory",
            format!(
                "cargo build --release -p hostplane -p hostplane-bench && target/release/hostplane-bench ready --runs {runs} --idle-seconds {idle_seconds}"
            ),
            ready(runs, Duration::from_secs(idle_seconds)).await?,
        ),
        Scenario::Wake {
            runs,
            idle_after_seconds,
        } => (
            "Wake-on-connect",
            format!(
                "cargo build --release -p hostplane -p hostplane-bench && target/release/hostplane-bench wake --runs {runs} --idle-after-seconds {idle_after_seconds}"
            ),
            wake::run(runs, idle_after_seconds).await?,
        ),
        Scenario::Proxy {
            runs,
            transfer_mib,
            round_trips,
            connections,
            handshakes,
        } => (
            "SNI proxy throughput and latency",
            format!(
                "cargo run --release -p hostplane-bench -- proxy --runs {runs} --transfer-mib {transfer_mib} --round-trips {round_trips} --connections {connections} --handshakes {handshakes}"
            ),
            proxy::run(proxy::Workload {
                runs,
                transfer_bytes: transfer_mib * 1024 * 1024,
                round_trips,
                connections,
                handshakes,
            })
            .await?,
        ),
        Scenario::Datastores {
            creates,
            lists,
            updates,
        } => (
            "Tenant request latency by datastore",
            format!(
                "cargo build --release -p hostplane -p hostplane-bench && target/release/hostplane-bench datastores --creates {creates} --lists {lists} --updates {updates}"
            ),
            datastores::run(datastores::Workload {
                creates,
                lists,
                updates,
            })
            .await?,
        ),
    };
    let section = format!(
        "## {title}\n\nReproduce: `{command}`\n\nMachine: {}\n\n{table}\n",
        machine()
    );
    print!("{section}");
    let existing = std::fs::read_to_string(&cli.results)
        .unwrap_or_else(|_| "# hostplane benchmark results\n\n".into());
    let updated = match existing.find(&format!("## {title}")) {
        Some(start) => {
            let end = existing[start + 3..]
                .find("\n## ")
                .map(|i| start + 3 + i + 1)
                .unwrap_or(existing.len());
            format!("{}{}{}", &existing[..start], section, &existing[end..])
        }
        None => format!("{existing}{section}"),
    };
    std::fs::write(&cli.results, updated)?;
    Ok(())
}
