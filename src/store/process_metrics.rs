//! The `process_*` metrics of the exporter itself: the prometheus crate's process collector,
//! with `process_cpu_seconds_total` to the clock tick (1/100 s on Linux). The crate rounds it
//! down to whole seconds, so an exporter that uses a few milliseconds of CPU a second showed a
//! flat line or a staircase on the CPU panel.

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Opts};

const CPU_SECONDS: &str = "process_cpu_seconds_total";

pub struct ProcessMetrics {
    process: ProcessCollector,
    cpu_seconds: Counter,
}

impl ProcessMetrics {
    pub fn for_self() -> Self {
        let cpu_seconds = Counter::with_opts(Opts::new(
            CPU_SECONDS,
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("a valid counter");
        Self {
            process: ProcessCollector::for_self(),
            cpu_seconds,
        }
    }
}

/// User and system CPU time of this process so far, in seconds, to the clock tick.
fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

impl Collector for ProcessMetrics {
    /// The crate's descriptors: its CPU counter has the same name, help and labels.
    fn desc(&self) -> Vec<&Desc> {
        self.process.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.process.collect();
        if let Some(seconds) = cpu_seconds() {
            // Two scrapes at once may both read the time: add only what the counter lacks.
            let missing = seconds - self.cpu_seconds.get();
            if missing > 0.0 {
                self.cpu_seconds.inc_by(missing);
            }
            families.retain(|family| family.name() != CPU_SECONDS);
            families.extend(self.cpu_seconds.collect());
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_has_sub_second_precision_and_the_other_process_metrics_stay() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(ProcessMetrics::for_self()))
            .unwrap();
        // A scrape between two readings of a fractional CPU time within one second: the
        // crate's whole seconds would fall below the first reading.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let (before, families, after) = loop {
            let before = cpu_seconds().expect("/proc/self/stat");
            let families = registry.gather();
            let after = cpu_seconds().expect("/proc/self/stat");
            if before.fract() != 0.0 && before.floor() == after.floor() {
                break (before, families, after);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no fractional CPU time seen"
            );
            std::hint::black_box((0..1_000_000u64).sum::<u64>());
        };
        let cpu = families
            .iter()
            .find(|f| f.name() == CPU_SECONDS)
            .expect("process_cpu_seconds_total");
        assert_eq!(cpu.get_metric().len(), 1);
        let exposed = cpu.get_metric()[0].get_counter().get_value();
        assert!(
            (before..=after).contains(&exposed),
            "{exposed} not within {before}..={after}"
        );
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(families.iter().any(|f| f.name() == name), "{name} missing");
        }
    }
}
