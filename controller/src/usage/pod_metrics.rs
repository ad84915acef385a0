//! CPU and memory of a tenant's pods (pods runtime) from the resource metrics API
//! (`metrics.k8s.io/v1beta1` PodMetrics, served by metrics-server), when the host has it.
//!
//! PodMetrics give a rate (cores averaged over a short window) and the working set, not a
//! cumulative CPU time and RSS: the sampler integrates the rate over its interval, and the
//! working set stands in for RSS (it is what the kubelet and the OOM killer go by).

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::Value;

/// What a namespace's pods use right now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PodsUsage {
    pub cpu_cores: f64,
    pub memory_bytes: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PodMetricsError {
    /// No resource metrics API in the host (no metrics-server).
    #[error("the host serves no metrics.k8s.io API (is metrics-server installed?)")]
    Absent,
    #[error("listing PodMetrics in {namespace}: {source}")]
    List {
        namespace: String,
        source: kube::Error,
    },
}

fn pod_metrics_resource() -> ApiResource {
    ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    }
}

/// The sum over every container of every pod in `namespace`.
pub async fn namespace_usage(
    host: &kube::Client,
    namespace: &str,
) -> Result<PodsUsage, PodMetricsError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(host.clone(), namespace, &pod_metrics_resource());
    let list = match api.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(PodMetricsError::Absent);
        }
        Err(source) => {
            return Err(PodMetricsError::List {
                namespace: namespace.into(),
                source,
            });
        }
    };
    Ok(list
        .items
        .iter()
        .map(|pod| pod_usage(&pod.data))
        .fold(PodsUsage::default(), |sum, p| PodsUsage {
            cpu_cores: sum.cpu_cores + p.cpu_cores,
            memory_bytes: sum.memory_bytes + p.memory_bytes,
        }))
}

/// One PodMetrics object's containers, added up (unreadable quantities count as nothing).
pub fn pod_usage(pod_metrics: &Value) -> PodsUsage {
    let containers = pod_metrics["containers"].as_array().map(Vec::as_slice);
    containers
        .unwrap_or_default()
        .iter()
        .fold(PodsUsage::default(), |sum, c| {
            let quantity = |key: &str| c["usage"][key].as_str().and_then(quantity_value);
            PodsUsage {
                cpu_cores: sum.cpu_cores + quantity("cpu").unwrap_or(0.0),
                memory_bytes: sum.memory_bytes + quantity("memory").unwrap_or(0.0) as i64,
            }
        })
}

/// A Kubernetes quantity (`250m`, `12345n`, `1.5Gi`, `128974848`, `1e3`) as a number.
pub fn quantity_value(quantity: &str) -> Option<f64> {
    let quantity = quantity.trim();
    // `E` is both exa and an exponent's letter: as the last character it is exa.
    let (number, suffix) = match quantity.strip_suffix('E') {
        Some(number) => (number, "E"),
        None => {
            let split = quantity
                .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
                .unwrap_or(quantity.len());
            quantity.split_at(split)
        }
    };
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    value.is_finite().then_some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_every_suffix() {
        assert_eq!(quantity_value("250m"), Some(0.25));
        assert_eq!(quantity_value("12345678n"), Some(0.012345678));
        assert_eq!(quantity_value("1500u"), Some(0.0015));
        assert_eq!(quantity_value("2"), Some(2.0));
        assert_eq!(quantity_value("128974848"), Some(128974848.0));
        assert_eq!(quantity_value("123456Ki"), Some(123456.0 * 1024.0));
        assert_eq!(
            quantity_value("1.5Gi"),
            Some(1.5 * 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(quantity_value("1e3"), Some(1000.0));
        assert_eq!(quantity_value("2k"), Some(2000.0));
        assert_eq!(quantity_value("3M"), Some(3e6));
        assert_eq!(quantity_value("2E"), Some(2e18));
        assert_eq!(quantity_value("1.2e-3"), Some(0.0012));
        for bad in ["", "Ki", "12Qi", "1..2", "inf", "NaN"] {
            assert_eq!(quantity_value(bad), None, "{bad:?}");
        }
    }

    /// A PodMetrics object as metrics-server serves it, whole.
    #[test]
    fn a_pods_containers_add_up() {
        let pod: Value = serde_json::from_str(
            r#"{
              "kind": "PodMetrics",
              "apiVersion": "metrics.k8s.io/v1beta1",
              "metadata": {
                "name": "t1-7d9f8b6c5-x2k4q",
                "namespace": "t1-system",
                "creationTimestamp": "2026-11-29T23:40:12Z",
                "labels": {"app.kubernetes.io/name": "hostplane-control-plane"}
              },
              "timestamp": "2026-11-29T23:40:01Z",
              "window": "10.271s",
              "containers": [
                {"name": "kube-apiserver", "usage": {"cpu": "41237582n", "memory": "287372Ki"}},
                {"name": "kube-controller-manager", "usage": {"cpu": "3904113n", "memory": "61240Ki"}},
                {"name": "kine", "usage": {"cpu": "8m", "memory": "30Mi"}}
              ]
            }"#,
        )
        .unwrap();
        let usage = pod_usage(&pod);
        assert!((usage.cpu_cores - 0.053141695).abs() < 1e-9, "{usage:?}");
        assert_eq!(usage.memory_bytes, (287372 + 61240 + 30 * 1024) * 1024);
        assert_eq!(pod_usage(&serde_json::json!({})), PodsUsage::default());
    }
}
