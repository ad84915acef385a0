//! `density`: awake tenants on one machine. Tenants are created one after another, each timed
//! from `kubectl apply` to its first `kubectl get ns`, until `tenants` are awake or the machine's
//! available memory would fall below a safety margin (the benchmark stops there and says so; it
//! never pushes the machine into the OOM killer). After every tenant: memory per tenant (RSS and
//! PSS, summed over the tenant's processes), host CPU idle over a short window, and the shared
//! Postgres's connection count.

use std::path::Path;
use std::time::{Duration, Instant};

use hostplane_tests::Postgres;

use crate::plot::{Chart, Series, line_chart};
use crate::sys;
use crate::{hostplane_side, median, tenant_ready, tenants_memory};

pub struct Options {
    /// Stop once this many tenants are awake.
    pub tenants: usize,
    /// Never start a tenant that could take MemAvailable below this (MiB).
    pub margin_mib: u64,
    /// How long host CPU idle time is sampled after each tenant.
    pub cpu_window: Duration,
}

/// The figures after the Nth tenant.
struct Step {
    n: usize,
    creation_s: f64,
    rss_mib: f64,
    pss_mib: f64,
    cpu_idle: f64,
    available_mib: u64,
    /// Client connections to the shared Postgres: the tenants' roles (their Kines) and the
    /// superuser (the controller, this benchmark).
    connections: (i64, i64),
}

/// Memory a tenant is assumed to take before one has been measured (MiB): about twice the
/// idle figure, since a starting kube-apiserver peaks above its idle size.
const FIRST_TENANT_ESTIMATE_MIB: f64 = 800.0;

async fn postgres_connections(postgres: &Postgres) -> (i64, i64) {
    let client = postgres.client().await;
    client
        .query_one(
            "SELECT count(*) FILTER (WHERE usename <> current_user), \
                    count(*) FILTER (WHERE usename = current_user) \
             FROM pg_stat_activity WHERE backend_type = 'client backend'",
            &[],
        )
        .await
        .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1)))
        .unwrap_or((-1, -1))
}

/// Median of the last `k` over the median of the first `k` creation times (k = 10, or half the
/// steps when there are fewer than 20).
fn growth(creation: &[f64]) -> Option<(f64, usize)> {
    let k = (creation.len() / 2).min(10);
    if k == 0 {
        return None;
    }
    let first = median(creation[..k].to_vec());
    let last = median(creation[creation.len() - k..].to_vec());
    Some((last / first, k))
}

pub async fn run(opts: Options, plots: &Path) -> anyhow::Result<String> {
    let postgres = Postgres::start().await;
    let side = hostplane_side(&postgres, &[]).await?;
    let deadline = Instant::now() + Duration::from_secs(300) * opts.tenants as u32;
    let mut steps: Vec<Step> = vec![];
    let mut stopped = format!("reached {} awake tenants", opts.tenants);
    for n in 1..=opts.tenants {
        // Peak of a starting tenant ≈ 1.5× the current per-tenant RSS; before the first, a guess.
        let estimate = steps
            .last()
            .map_or(FIRST_TENANT_ESTIMATE_MIB, |s| s.rss_mib * 1.5);
        let available = sys::mem_available_mib();
        if (available as f64) - estimate < opts.margin_mib as f64 {
            stopped = format!(
                "memory ran out at {} tenants: MemAvailable {available} MiB, and another \
                 tenant (~{estimate:.0} MiB) would leave less than the {} MiB margin",
                n - 1,
                opts.margin_mib
            );
            eprintln!("density: {stopped}");
            break;
        }
        if Instant::now() > deadline {
            stopped = format!("time ran out at {} tenants", n - 1);
            break;
        }
        // A tenant that does not come up (say, the shared Postgres out of connections) ends the
        // run; the steps so far are still reported.
        let creation_s = match tenant_ready(&side, &format!("dense-{n}")).await {
            Ok((seconds, _)) => seconds,
            Err(e) => {
                stopped = format!("tenant {n} did not become ready: {e:#}");
                eprintln!("density: {stopped}");
                break;
            }
        };
        let cpu_idle = sys::cpu_idle_percent(opts.cpu_window).await;
        let memory = tenants_memory(&side);
        let awake = memory.len().max(1) as f64;
        let total = memory.values().fold(sys::Memory::default(), |mut sum, m| {
            sum += *m;
            sum
        });
        let step = Step {
            n,
            creation_s,
            rss_mib: total.rss as f64 / 1024.0 / awake,
            pss_mib: total.pss as f64 / 1024.0 / awake,
            cpu_idle,
            available_mib: sys::mem_available_mib(),
            connections: postgres_connections(&postgres).await,
        };
        eprintln!(
            "density: tenant {n}: created in {:.2}s; per tenant RSS {:.0} MiB, PSS {:.0} MiB; \
             host CPU idle {:.0}%; MemAvailable {} MiB; Postgres connections {} tenant / {} admin",
            step.creation_s,
            step.rss_mib,
            step.pss_mib,
            step.cpu_idle,
            step.available_mib,
            step.connections.0,
            step.connections.1
        );
        steps.push(step);
    }
    anyhow::ensure!(
        !steps.is_empty(),
        "density: no tenant was created ({stopped})"
    );

    let xy = |f: fn(&Step) -> f64| -> Vec<(f64, f64)> {
        steps.iter().map(|s| (s.n as f64, f(s))).collect()
    };
    line_chart(
        &plots.join("density-creation.png"),
        &Chart {
            title: "Creation time of the Nth tenant (apply → first kubectl get ns)",
            x_label: "awake tenants (N)",
            y_label: "seconds",
            y_range: None,
        },
        &[Series::new("creation time", xy(|s| s.creation_s))],
    )?;
    line_chart(
        &plots.join("density-memory.png"),
        &Chart {
            title: "Memory per awake tenant (Kine + kube-apiserver + kube-controller-manager)",
            x_label: "awake tenants (N)",
            y_label: "MiB per tenant",
            y_range: None,
        },
        &[
            Series::new("RSS (shared pages counted in full)", xy(|s| s.rss_mib)),
            Series::new("PSS (shared pages divided)", xy(|s| s.pss_mib)),
            Series::new("goal 200 MiB", xy(|_| 200.0)),
        ],
    )?;
    line_chart(
        &plots.join("density-cpu.png"),
        &Chart {
            title: "Host CPU idle with N awake tenants",
            x_label: "awake tenants (N)",
            y_label: "% idle",
            y_range: Some((0.0, 100.0)),
        },
        &[Series::new(
            format!("idle over {:?} after each tenant", opts.cpu_window),
            xy(|s| s.cpu_idle),
        )],
    )?;

    let first = &steps[0];
    let last = &steps[steps.len() - 1];
    let creation: Vec<f64> = steps.iter().map(|s| s.creation_s).collect();
    let mut table = String::from("| figure | value | goal |\n| --- | --- | --- |\n");
    table.push_str(&format!(
        "| awake tenants reached | **{}** ({stopped}) | |\n",
        last.n
    ));
    table.push_str(&format!(
        "| creation time, tenant 1 → tenant {} | {:.2} s → {:.2} s | |\n",
        last.n, first.creation_s, last.creation_s
    ));
    if let Some((ratio, k)) = growth(&creation) {
        table.push_str(&format!(
            "| **creation time growth** (median of last {k} ÷ median of first {k}) | **{ratio:.2}×** | |\n"
        ));
    }
    table.push_str(&format!(
        "| RSS per awake tenant at N = {} (mean; shared binary pages counted in every process) | {:.0} MiB | |\n",
        last.n, last.rss_mib
    ));
    table.push_str(&format!(
        "| **PSS per awake tenant** at N = {} (mean; shared pages divided among tenants) | **{:.0} MiB** | ≤ 200 MiB |\n",
        last.n, last.pss_mib
    ));
    table.push_str(&format!(
        "| host CPU idle after tenant 1 → tenant {} ({:?} window) | {:.0}% → {:.0}% | |\n",
        last.n, opts.cpu_window, first.cpu_idle, last.cpu_idle
    ));
    table.push_str(&format!(
        "| MemAvailable after tenant 1 → tenant {} | {} MiB → {} MiB | |\n",
        last.n, first.available_mib, last.available_mib
    ));
    table.push_str(&format!(
        "| shared Postgres connections at N = {}: tenants' roles (Kine) / superuser (controller) | {} / {} | |\n",
        last.n, last.connections.0, last.connections.1
    ));
    table.push_str(
        "\n![creation time vs N](plots/density-creation.png)\n![memory per tenant vs N](plots/density-memory.png)\n![host CPU idle vs N](plots/density-cpu.png)\n",
    );
    table.push_str("\n<details><summary>every step</summary>\n\n| N | creation (s) | RSS/tenant (MiB) | PSS/tenant (MiB) | CPU idle (%) | MemAvailable (MiB) | Postgres connections (tenants / superuser) |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for s in &steps {
        table.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.0} | {:.0} | {} | {} / {} |\n",
            s.n,
            s.creation_s,
            s.rss_mib,
            s.pss_mib,
            s.cpu_idle,
            s.available_mib,
            s.connections.0,
            s.connections.1
        ));
    }
    table.push_str("\n</details>\n");
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::growth;

    #[test]
    fn growth_compares_the_last_ten_with_the_first_ten() {
        let times: Vec<f64> = (1..=30).map(f64::from).collect();
        let (ratio, k) = growth(&times).unwrap();
        assert_eq!(k, 10);
        // medians of 1..=10 and 21..=30 (upper middle of an even count): 6 and 26
        assert!((ratio - 26.0 / 6.0).abs() < 1e-9);
        assert_eq!(growth(&[3.0, 6.0]).unwrap(), (2.0, 1));
        assert!(growth(&[1.0]).is_none());
    }
}
