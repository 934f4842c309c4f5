//! The metric names a collector exports (for the alert and dashboard checks).

use prometheus::core::Collector;
use prometheus::proto::MetricType;

/// The metric names `c` exports, with the series a histogram or summary adds to its name
/// (`_bucket`, `_sum`, `_count`), read from the collector itself so that no list is kept by
/// hand. The worker has the same helper (`funcscale_worker::metrics::series_names`): the
/// operator no longer depends on the worker crate, and the two binaries share no metrics
/// crate yet.
pub fn series_names(c: &dyn Collector) -> Vec<String> {
    c.collect()
        .iter()
        .flat_map(|family| {
            let name = family.name();
            let suffixes: &[&str] = match family.get_field_type() {
                MetricType::HISTOGRAM => &["", "_bucket", "_sum", "_count"],
                MetricType::SUMMARY => &["", "_sum", "_count"],
                _ => &[""],
            };
            suffixes.iter().map(move |s| format!("{name}{s}"))
        })
        .collect()
}
