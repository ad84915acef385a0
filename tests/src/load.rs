//! Bounded API load for tests and benchmarks: a paced workload whose every operation is timed,
//! and a write storm of many concurrent writers. Both are bounded in count and in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A client for a kubeconfig's current context that reports refusals instead of retrying them
/// (kube's default policy retries 429 and 503 for a long time, which would hide them).
pub async fn client_for_kubeconfig(yaml: &str) -> kube::Client {
    let parsed = Kubeconfig::from_yaml(yaml).expect("a kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    config.default_retry = false;
    kube::Client::try_from(config).expect("a client")
}

/// The `p`th percentile (nearest rank) of `samples`; zero when there are none.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn config_map(name: String, bytes: usize) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        data: Some([("v".to_string(), "x".repeat(bytes))].into()),
        ..Default::default()
    }
}

/// A steady, light workload: `ops` times, one create of a 1 KiB ConfigMap followed by one get
/// of it, `pace` apart; returns the latency of every request (2 × `ops`). Names start with
/// `prefix`, so that runs do not collide. Fails on the first refused request.
pub async fn paced_workload(
    client: kube::Client,
    namespace: &str,
    prefix: &str,
    ops: usize,
    pace: Duration,
) -> Result<Vec<Duration>, kube::Error> {
    let api = Api::<ConfigMap>::namespaced(client, namespace);
    let mut latencies = Vec::with_capacity(2 * ops);
    let mut tick = tokio::time::interval(pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..ops {
        tick.tick().await;
        let name = format!("{prefix}-{i}");
        let started = Instant::now();
        api.create(&PostParams::default(), &config_map(name.clone(), 1024))
            .await?;
        latencies.push(started.elapsed());
        let started = Instant::now();
        api.get(&name).await?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

/// What a write storm did.
#[derive(Clone, Debug, Default)]
pub struct StormReport {
    /// Writes the API server acknowledged.
    pub acknowledged: usize,
    /// Writes it refused (throttled with 429, or failed); the first error is kept.
    pub refused: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// `writers` concurrent writers creating ConfigMaps of `bytes` each (named `prefix-N`), as fast
/// as the server answers, until `max_writes` were attempted or `max_time` passed.
pub async fn write_storm(
    client: kube::Client,
    namespace: &str,
    prefix: &str,
    writers: usize,
    bytes: usize,
    max_writes: usize,
    max_time: Duration,
) -> StormReport {
    let api = Api::<ConfigMap>::namespaced(client, namespace);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + max_time;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let api = api.clone();
            let next = next.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut report = StormReport::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max_writes || Instant::now() >= deadline {
                        return report;
                    }
                    let cm = config_map(format!("{prefix}-{i}"), bytes);
                    match tokio::time::timeout_at(
                        deadline.into(),
                        api.create(&PostParams::default(), &cm),
                    )
                    .await
                    {
                        Ok(Ok(_)) => report.acknowledged += 1,
                        Ok(Err(e)) => {
                            report.refused += 1;
                            report.first_error.get_or_insert(e.to_string());
                        }
                        Err(_) => return report,
                    }
                }
            })
        })
        .collect();
    let mut total = StormReport::default();
    for task in tasks {
        let r = task.await.expect("a storm writer does not panic");
        total.acknowledged += r.acknowledged;
        total.refused += r.refused;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    total.elapsed = started.elapsed();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_the_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let samples = ms(&[5, 1, 4, 2, 3, 10, 9, 8, 7, 6]);
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(5));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(10));
        assert_eq!(percentile(&samples, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
