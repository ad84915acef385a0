//! Just enough of the Prometheus text exposition format (and OpenMetrics text, its superset for
//! what we read) to add up the samples of one metric family: a tenant API server's `/metrics`.
//!
//! A sample line is `name{label="value",...} value [timestamp]`; label values may hold any
//! character, `}`, `"` and `\` escaped or not as the format allows, so the label set is skipped
//! by scanning quotes, never by searching for `}`.

/// A sample line that names the metric asked for but cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    /// 1-based, as editors count.
    pub line: usize,
    pub problem: &'static str,
}

/// The sum of every sample of `metric` (all label sets); `Ok(None)` when the text has none.
pub fn sum(text: &str, metric: &str) -> Result<Option<f64>, ParseError> {
    let values = values(text, metric)?;
    Ok((!values.is_empty()).then(|| values.iter().sum()))
}

/// The value of every sample of `metric`, in the order served. Lines of other metrics are not
/// looked at beyond their name, so a quirk in one of them never hides the figure asked for.
pub fn values(text: &str, metric: &str) -> Result<Vec<f64>, ParseError> {
    let mut values = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_ascii_whitespace())
            .unwrap_or(line.len());
        if &line[..name_end] != metric {
            continue;
        }
        let problem = |problem| ParseError {
            line: index + 1,
            problem,
        };
        let rest = &line[name_end..];
        let rest = match rest.strip_prefix('{') {
            Some(labels) => after_label_set(labels).ok_or(problem("unterminated label set"))?,
            None => rest,
        };
        let value = rest
            .split_ascii_whitespace()
            .next()
            .ok_or(problem("no value"))?;
        let value = parse_value(value).ok_or(problem("value is not a number"))?;
        values.push(value);
    }
    Ok(values)
}

/// What follows the `}` closing a label set whose `{` was just consumed.
fn after_label_set(labels: &str) -> Option<&str> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(&labels[i + 1..]),
            _ => {}
        }
    }
    None
}

/// A sample value: a Go float (`1.5e+06`, `NaN`, `+Inf`, `-Inf`).
fn parse_value(value: &str) -> Option<f64> {
    match value {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => value.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant kube-apiserver 1.37's `/metrics` a minute after it started, whole families
    /// kept as served (help, type, every series) of the 1,500 it has: ours, and neighbours
    /// sharing their prefixes.
    const APISERVER_METRICS: &str = include_str!("testdata/apiserver_metrics.txt");

    #[test]
    fn request_totals_add_up_over_every_series() {
        let requests = sum(APISERVER_METRICS, "apiserver_request_total").unwrap();
        assert_eq!(requests, Some(939.0));
        assert_eq!(
            values(APISERVER_METRICS, "apiserver_request_total")
                .unwrap()
                .len(),
            56
        );
        // Families sharing the prefix are other metrics.
        assert_eq!(sum(APISERVER_METRICS, "apiserver_request").unwrap(), None);
        assert_eq!(
            values(
                APISERVER_METRICS,
                "apiserver_request_filter_duration_seconds_count"
            )
            .unwrap()
            .len(),
            5
        );
    }

    #[test]
    fn storage_figures_add_up_over_resources() {
        let objects = values(APISERVER_METRICS, "apiserver_resource_objects").unwrap();
        assert_eq!(objects.len(), 62);
        assert_eq!(objects.iter().sum::<f64>(), 137.0);
        assert_eq!(
            sum(APISERVER_METRICS, "apiserver_storage_size_bytes").unwrap(),
            Some(376_832.0)
        );
        assert_eq!(
            sum(APISERVER_METRICS, "process_resident_memory_bytes")
                .unwrap()
                .map(|b| b > 1e8),
            Some(true)
        );
    }

    #[test]
    fn an_absent_metric_is_none_and_empty_text_is_fine() {
        assert_eq!(sum(APISERVER_METRICS, "kine_sql_total").unwrap(), None);
        assert_eq!(sum("", "apiserver_request_total").unwrap(), None);
        assert_eq!(sum("# HELP x y\n# TYPE x counter\n", "x").unwrap(), None);
    }

    #[test]
    fn label_values_may_hold_braces_quotes_and_spaces() {
        let text = concat!(
            "m{path=\"/a}b\",q=\"say \\\"hi\\\" }\"} 2\n",
            "m{x=\"\\\\\"} 3 1700000000000\n",
            "m 5\n",
            "m{} 1e1\n",
            "other{path=\"m 100\"} 100\n",
        );
        assert_eq!(sum(text, "m").unwrap(), Some(20.0));
    }

    #[test]
    fn go_float_spellings_are_numbers() {
        assert_eq!(sum("m 1.5e+06\n", "m").unwrap(), Some(1.5e6));
        assert_eq!(sum("m +Inf\n", "m").unwrap(), Some(f64::INFINITY));
        assert!(sum("m NaN\n", "m").unwrap().unwrap().is_nan());
    }

    #[test]
    fn broken_lines_of_the_metric_are_errors_others_are_skipped() {
        assert_eq!(
            sum("ok 1\nm{a=\"b} 2\n", "m"),
            Err(ParseError {
                line: 2,
                problem: "unterminated label set"
            })
        );
        assert_eq!(
            sum("m{a=\"b\"}\n", "m"),
            Err(ParseError {
                line: 1,
                problem: "no value"
            })
        );
        assert_eq!(
            sum("m one\n", "m"),
            Err(ParseError {
                line: 1,
                problem: "value is not a number"
            })
        );
        assert_eq!(sum("other{a=\"b} 2\nm 4\n", "m").unwrap(), Some(4.0));
    }

    #[test]
    fn every_prefix_of_a_real_output_parses_or_errs_without_panicking() {
        let text = APISERVER_METRICS;
        for end in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
            let _ = sum(&text[..end], "apiserver_request_total");
        }
    }
}
