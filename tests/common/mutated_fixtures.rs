//! Payload fixtures for the parsers' property tests, as they are and with a few bytes changed.
//! Included by path (`#[path = "common/mutated_fixtures.rs"]`): the property tests need nothing
//! else of `common`.

use proptest::prelude::*;

/// The bytes of `tests/fixtures/<dir>/<name>`.
pub fn fixture(dir: &str, name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{dir}/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One of the fixtures `names` of `dir` with a few bytes replaced, removed or inserted.
pub fn mutated(dir: &'static str, names: Vec<&'static str>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(names),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..8),
    )
        .prop_map(move |(name, edits)| {
            let mut bytes = fixture(dir, name);
            for (at, byte, kind) in edits {
                let at = at.index(bytes.len().max(1)).min(bytes.len());
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, byte),
                }
            }
            bytes
        })
}

/// Random bytes, or a mutated fixture.
pub fn any_bytes(dir: &'static str, names: Vec<&'static str>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        mutated(dir, names)
    ]
}
