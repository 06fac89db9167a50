// Placeholder replaced by the benchmark work; see bench/README.md.
fn main() {}
