//! The README is the entry: short, and every page of docs/ is reachable from it.

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn readme() -> String {
    std::fs::read_to_string(format!("{REPO}/README.md")).unwrap()
}

#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let readme = readme();
    let mut unlinked = Vec::new();
    for entry in std::fs::read_dir(format!("{REPO}/docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") && !readme.contains(&format!("](docs/{name})")) {
            unlinked.push(name);
        }
    }
    assert!(
        unlinked.is_empty(),
        "docs pages the README does not link: {unlinked:?}"
    );
}

#[test]
fn the_readme_is_an_entry_page_not_the_reference() {
    let lines = readme().lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines: move reference text to docs/"
    );
}
