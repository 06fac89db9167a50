//! What both fuzz targets share: the time they record at, the small limits of the metrics that
//! live for the whole run, and the exposition's sample parser of the test suite.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use nuki_exporter::store::{Limits, Metrics};

#[path = "../../tests/common/exposition.rs"]
mod exposition;
pub use exposition::parse_sample;

pub const NOW: f64 = 1_700_000_000.0;

pub const LIMITS: Limits = Limits {
    max_smartlocks: 50,
    max_operations: 8,
    max_series: 1_000_000,
    max_series_per_lock: 10_000,
};

/// Recorded into by every input; scraped and checked against [`LIMITS`] every 4096 inputs.
pub static LONG_LIVED: LazyLock<Metrics> = LazyLock::new(|| Metrics::new(LIMITS));
/// Inputs run so far.
pub static INPUTS: AtomicU64 = AtomicU64::new(0);
