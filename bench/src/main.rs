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
//!
//! `density`: awake tenants created one after another until a count or a memory margin (see
//! density.rs). `burst`: many ControlPlanes at once with hibernation on, and many registered
//! hibernated ones (see burst.rs).
//!
//! `all --profile quick|full`: every scenario in sequence, each section of RESULTS.md written
//! as soon as its scenario finishes, plots in `plots/` beside it.

mod burst;
mod datastores;
mod density;
mod plot;
mod proxy;
mod sys;
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

#[derive(Subcommand, Debug)]
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
    /// Awake tenants created one after another until --tenants or the memory margin: creation
    /// time, memory per tenant and host CPU idle at every step.
    Density {
        /// Stop once this many tenants are awake.
        #[arg(long, default_value_t = 60)]
        tenants: usize,
        /// Never start a tenant that could take MemAvailable below this many MiB.
        #[arg(long, default_value_t = DEFAULT_MARGIN_MIB)]
        margin_mib: u64,
        /// Seconds of host CPU idle sampling after each tenant.
        #[arg(long, default_value_t = 5)]
        cpu_window_seconds: u64,
    },
    /// Many ControlPlanes applied at once with hibernation on, then many registered hibernated
    /// ControlPlanes: time to Ready / to status, controller CPU and memory, falling behind.
    Burst {
        /// ControlPlanes applied at once.
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        /// Their spec.hibernation.idleAfterSeconds.
        #[arg(long, default_value_t = 20)]
        idle_after_seconds: u64,
        /// Paused ControlPlanes registered in the second part.
        #[arg(long, default_value_t = 1000)]
        registered: usize,
        /// The burst stops when MemAvailable falls below this many MiB.
        #[arg(long, default_value_t = DEFAULT_MARGIN_MIB)]
        margin_mib: u64,
        /// Longest the burst may take, in seconds.
        #[arg(long, default_value_t = 900)]
        limit_seconds: u64,
    },
    /// Every scenario in sequence with the profile's counts; RESULTS.md is updated after each.
    All {
        /// `quick`: small counts, about 10 minutes, for development on a shared machine.
        /// `full`: the published figures (about 60 minutes).
        #[arg(long, value_enum, default_value_t = Profile::Quick)]
        profile: Profile,
    },
}

/// Memory the benchmarks leave to the rest of the machine (other engineers' builds and tests).
const DEFAULT_MARGIN_MIB: u64 = 3 * 1024;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Profile {
    Quick,
    Full,
}

impl Profile {
    /// The scenarios of `all`, in order, with this profile's counts.
    fn scenarios(self) -> Vec<Scenario> {
        let full = self == Profile::Full;
        let pick = |quick: usize, full_count: usize| if full { full_count } else { quick };
        vec![
            Scenario::Ready {
                runs: pick(1, 5),
                idle_seconds: pick(10, 20) as u64,
            },
            Scenario::Wake {
                runs: pick(1, 3),
                idle_after_seconds: 5,
            },
            Scenario::Proxy {
                runs: pick(1, 5),
                transfer_mib: pick(64, 256) as u64,
                round_trips: pick(2_000, 20_000),
                connections: pick(2, 4),
                handshakes: pick(200, 2_000),
            },
            Scenario::Datastores {
                creates: pick(50, 300),
                lists: pick(20, 100),
                updates: pick(50, 300),
            },
            Scenario::Density {
                tenants: pick(5, 60),
                margin_mib: DEFAULT_MARGIN_MIB,
                cpu_window_seconds: pick(3, 5) as u64,
            },
            Scenario::Burst {
                tenants: pick(10, 100),
                idle_after_seconds: 20,
                registered: pick(50, 1000),
                margin_mib: DEFAULT_MARGIN_MIB,
                limit_seconds: pick(300, 900) as u64,
            },
        ]
    }

    /// What a person should expect before starting (measured on 2 cores, 24 GiB).
    fn expected_minutes(self) -> u64 {
        match self {
            Profile::Quick => 10,
            Profile::Full => 60,
        }
    }
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

/// Memory of every tenant that has processes running, by tenant directory: the sum over its
/// processes (Kine or etcd, kube-apiserver, kube-controller-manager).
fn tenants_memory(side: &HostplaneSide) -> std::collections::BTreeMap<String, sys::Memory> {
    let tenants = side.state.path().join("tenants");
    let rt = hostplane_controller::runtime::processes::ProcessRuntime::new(&tenants);
    std::fs::read_dir(&tenants)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let key = e.file_name().to_string_lossy().into_owned();
            let pids = rt.pids(&key);
            if pids.is_empty() {
                return None;
            }
            let mut sum = sys::Memory::default();
            for (_, pid) in pids {
                sum += sys::memory(pid);
            }
            Some((key, sum))
        })
        .collect()
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

/// One scenario's part of RESULTS.md.
struct Section {
    title: &'static str,
    command: String,
    table: String,
}

const BUILD: &str = "cargo build --release -p hostplane -p hostplane-bench";

async fn run_scenario(scenario: Scenario, plots: &Path) -> anyhow::Result<Section> {
    let bench = "target/release/hostplane-bench";
    Ok(match scenario {
        Scenario::Ready { runs, idle_seconds } => Section {
            title: "Tenant ready time and idle memory",
            command: format!(
                "{BUILD} && {bench} ready --runs {runs} --idle-seconds {idle_seconds}"
            ),
            table: ready(runs, Duration::from_secs(idle_seconds)).await?,
        },
        Scenario::Wake {
            runs,
            idle_after_seconds,
        } => Section {
            title: "Wake-on-connect",
            command: format!(
                "{BUILD} && {bench} wake --runs {runs} --idle-after-seconds {idle_after_seconds}"
            ),
            table: wake::run(runs, idle_after_seconds).await?,
        },
        Scenario::Proxy {
            runs,
            transfer_mib,
            round_trips,
            connections,
            handshakes,
        } => Section {
            title: "SNI proxy throughput and latency",
            command: format!(
                "cargo run --release -p hostplane-bench -- proxy --runs {runs} --transfer-mib {transfer_mib} --round-trips {round_trips} --connections {connections} --handshakes {handshakes}"
            ),
            table: proxy::run(proxy::Workload {
                runs,
                transfer_bytes: transfer_mib * 1024 * 1024,
                round_trips,
                connections,
                handshakes,
            })
            .await?,
        },
        Scenario::Datastores {
            creates,
            lists,
            updates,
        } => Section {
            title: "Tenant request latency by datastore",
            command: format!(
                "{BUILD} && {bench} datastores --creates {creates} --lists {lists} --updates {updates}"
            ),
            table: datastores::run(datastores::Workload {
                creates,
                lists,
                updates,
            })
            .await?,
        },
        Scenario::Density {
            tenants,
            margin_mib,
            cpu_window_seconds,
        } => Section {
            title: "Density: awake tenants on one machine",
            command: format!(
                "{BUILD} && {bench} density --tenants {tenants} --margin-mib {margin_mib} --cpu-window-seconds {cpu_window_seconds}"
            ),
            table: density::run(
                density::Options {
                    tenants,
                    margin_mib,
                    cpu_window: Duration::from_secs(cpu_window_seconds),
                },
                plots,
            )
            .await?,
        },
        Scenario::Burst {
            tenants,
            idle_after_seconds,
            registered,
            margin_mib,
            limit_seconds,
        } => Section {
            title: "Burst: many ControlPlanes at once",
            command: format!(
                "{BUILD} && {bench} burst --tenants {tenants} --idle-after-seconds {idle_after_seconds} --registered {registered} --margin-mib {margin_mib} --limit-seconds {limit_seconds}"
            ),
            table: burst::run(
                burst::Options {
                    tenants,
                    idle_after_seconds,
                    registered,
                    margin_mib,
                    limit: Duration::from_secs(limit_seconds),
                },
                plots,
            )
            .await?,
        },
        Scenario::All { .. } => bail!("`all` runs the other scenarios; it is not one itself"),
    })
}

/// What `all` says at the top of RESULTS.md, above the first section.
const PREAMBLE: &str = "Every section below, in one command (about 60 minutes on 2 cores; `--profile quick` takes about 10 with small counts):\n\n```sh\ncargo build --release -p hostplane -p hostplane-bench && target/release/hostplane-bench all --profile full\n```\n\nEach section names the command that reproduces it alone; plots are in [plots/](plots/).\n\n";

/// Writes `section` into the results file: in place of the section with the same title, or at
/// the end. Other sections keep their figures.
fn record(results: &Path, section: &Section) -> anyhow::Result<()> {
    let text = format!(
        "## {}\n\nReproduce: `{}`\n\nMachine: {}\n\n{}\n",
        section.title,
        section.command,
        machine(),
        section.table
    );
    print!("{text}");
    let existing = std::fs::read_to_string(results)
        .unwrap_or_else(|_| format!("# hostplane benchmark results\n\n{PREAMBLE}"));
    let updated = match existing.find(&format!("## {}\n", section.title)) {
        Some(start) => {
            let end = existing[start + 3..]
                .find("\n## ")
                .map(|i| start + 3 + i + 1)
                .unwrap_or(existing.len());
            format!("{}{}{}", &existing[..start], text, &existing[end..])
        }
        None => match existing.find("\n## Notes on the figures") {
            // New sections go before the notes, which stay last.
            Some(notes) => format!("{}\n{}{}", &existing[..notes], text, &existing[notes + 1..]),
            None => format!("{existing}{text}"),
        },
    };
    std::fs::write(results, updated)?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let plots = cli.results.parent().unwrap_or(Path::new(".")).join("plots");
    // Ctrl-C or SIGTERM drops the running scenario, whose guards stop every process it started
    // (controller, tenants, Postgres, API servers); exiting without that would leave them running.
    tokio::select! {
        result = run(cli, &plots) => result,
        signal = interrupted() => {
            bail!("interrupted by {signal}: stopped the running scenario and its processes")
        }
    }
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn run(cli: Cli, plots: &Path) -> anyhow::Result<()> {
    let Scenario::All { profile } = cli.scenario else {
        let section = run_scenario(cli.scenario, plots).await?;
        return record(&cli.results, &section);
    };
    let scenarios = profile.scenarios();
    eprintln!(
        "all --profile {}: {} scenarios, expected to take about {} minutes on 2 cores; each section of {} is written when its scenario ends",
        format!("{profile:?}").to_lowercase(),
        scenarios.len(),
        profile.expected_minutes(),
        cli.results.display()
    );
    let started = Instant::now();
    let mut failed = vec![];
    for scenario in scenarios {
        let name = format!("{scenario:?}");
        eprintln!(
            "\n=== {name} ({:.0} min elapsed)",
            started.elapsed().as_secs_f64() / 60.0
        );
        // One scenario failing (a port taken, a slow machine) must not lose the others' figures.
        match run_scenario(scenario, plots).await {
            Ok(section) => record(&cli.results, &section)?,
            Err(e) => {
                eprintln!("=== {name} failed: {e:#}");
                failed.push(name);
            }
        }
    }
    eprintln!(
        "all: done in {:.0} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join("; "));
    }
    Ok(())
}
